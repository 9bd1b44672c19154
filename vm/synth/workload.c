/* workload.c: the synthetic guest's workload parameters: parsing, JSON, defaults. */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/parse.h"
#include "vm/synth/synth.h"

void synth_workload_default(struct synth_workload *w)
{
    memset(w, 0, sizeof *w);
    w->hot = 256ull << 20;
    w->mem_pattern = SYNTH_UNIFORM;
    w->disk_min_io = 4096;
    w->disk_max_io = 65536;
    w->disk_pattern = SYNTH_UNIFORM;
    w->seed = 1;
}

const char *synth_pattern_name(enum synth_pattern p)
{
    switch (p) {
    case SYNTH_UNIFORM:
        return "uniform";
    case SYNTH_HOTSPOT:
        return "hotspot";
    case SYNTH_SEQUENTIAL:
        return "sequential";
    }
    return "?";
}

static int parse_pattern(const char *s, enum synth_pattern *p)
{
    if (!s) /* a JSON null */
        return -EINVAL;
    for (int i = SYNTH_UNIFORM; i <= SYNTH_SEQUENTIAL; i++)
        if (strcmp(s, synth_pattern_name(i)) == 0) {
            *p = i;
            return 0;
        }
    return -EINVAL;
}

/* "64M/s" or "64M" (per second implied). */
static int parse_rate(const char *s, uint64_t *out)
{
    char buf[64];
    size_t n = strlen(s);
    if (n >= sizeof buf)
        return -EINVAL;
    memcpy(buf, s, n + 1);
    if (n > 2 && strcmp(buf + n - 2, "/s") == 0)
        buf[n - 2] = '\0';
    return bm_parse_size(buf, out);
}

static int parse_io(const char *s, uint32_t *lo, uint32_t *hi)
{
    char buf[64];
    if (strlen(s) >= sizeof buf)
        return -EINVAL;
    strcpy(buf, s);
    char *dash = strchr(buf, '-');
    uint64_t a, b;
    if (dash)
        *dash = '\0';
    if (bm_parse_size(buf, &a) < 0)
        return -EINVAL;
    b = a;
    if (dash && bm_parse_size(dash + 1, &b) < 0)
        return -EINVAL;
    if (a < 4096 || b < a || b > (1u << 20) || a % 4096 || b % 4096)
        return -EINVAL;
    *lo = (uint32_t)a;
    *hi = (uint32_t)b;
    return 0;
}

static int set_key(struct synth_workload *w, const char *key, const char *val)
{
    /* The same limits as synth_workload_from_json, so whatever runs can also migrate. */
    if (strcmp(key, "mem") == 0 || strcmp(key, "disk") == 0) {
        uint64_t *v = key[0] == 'm' ? &w->mem_rate : &w->disk_rate;
        int r = parse_rate(val, v);
        return r < 0 ? r : (*v > (1ull << 40) ? -EINVAL : 0);
    }
    if (strcmp(key, "hot") == 0) {
        int r = bm_parse_size(val, &w->hot);
        return r < 0 ? r : (w->hot < 4096 || w->hot > (1ull << 50) ? -EINVAL : 0);
    }
    if (strcmp(key, "mem-pattern") == 0 || strcmp(key, "pattern") == 0)
        return parse_pattern(val, &w->mem_pattern);
    if (strcmp(key, "disk-pattern") == 0)
        return parse_pattern(val, &w->disk_pattern);
    if (strcmp(key, "io") == 0)
        return parse_io(val, &w->disk_min_io, &w->disk_max_io);
    if (strcmp(key, "ram-fill") == 0)
        return bm_parse_size(val, &w->ram_fill);
    if (strcmp(key, "disk-fill") == 0)
        return bm_parse_size(val, &w->disk_fill);
    if (strcmp(key, "seed") == 0)
        return bm_parse_u64(val, 0, UINT64_MAX, &w->seed);
    return -ENOENT;
}

int synth_workload_parse(const char *s, struct synth_workload *w, char *err, size_t errlen)
{
    char *copy = strdup(s);
    if (!copy) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int r = 0;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        if (!eq) {
            snprintf(err, errlen, "workload: '%s' is not KEY=VALUE", tok);
            r = -EINVAL;
            break;
        }
        *eq = '\0';
        r = set_key(w, tok, eq + 1);
        if (r == -ENOENT) {
            snprintf(err, errlen,
                     "workload: unknown key '%s' (mem, hot, mem-pattern, disk, disk-pattern, io, "
                     "ram-fill, disk-fill, seed)",
                     tok);
            r = -EINVAL;
            break;
        }
        if (r < 0) {
            snprintf(err, errlen, "workload: bad value '%s' for %s", eq + 1, tok);
            r = -EINVAL;
            break;
        }
    }
    free(copy);
    return r;
}

struct json_object *synth_workload_to_json(const struct synth_workload *w)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "mem_rate", json_object_new_int64((int64_t)w->mem_rate));
    json_object_object_add(o, "hot", json_object_new_int64((int64_t)w->hot));
    json_object_object_add(o, "mem_pattern",
                           json_object_new_string(synth_pattern_name(w->mem_pattern)));
    json_object_object_add(o, "disk_rate", json_object_new_int64((int64_t)w->disk_rate));
    json_object_object_add(o, "disk_min_io", json_object_new_int64(w->disk_min_io));
    json_object_object_add(o, "disk_max_io", json_object_new_int64(w->disk_max_io));
    json_object_object_add(o, "disk_pattern",
                           json_object_new_string(synth_pattern_name(w->disk_pattern)));
    json_object_object_add(o, "seed", json_object_new_int64((int64_t)w->seed));
    return o;
}

static int get_u64(struct json_object *o, const char *key, uint64_t max, uint64_t *out)
{
    struct json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
        return -EINVAL;
    int64_t x = json_object_get_int64(v);
    if (x < 0 || (uint64_t)x > max)
        return -EINVAL;
    *out = (uint64_t)x;
    return 0;
}

int synth_workload_from_json(struct json_object *o, struct synth_workload *w, char *err,
                             size_t errlen)
{
    synth_workload_default(w);
    uint64_t lo, hi;
    struct json_object *v;
    if (!json_object_is_type(o, json_type_object) ||
        get_u64(o, "mem_rate", 1ull << 40, &w->mem_rate) < 0 ||
        get_u64(o, "hot", 1ull << 50, &w->hot) < 0 || w->hot < 4096 ||
        get_u64(o, "disk_rate", 1ull << 40, &w->disk_rate) < 0 ||
        get_u64(o, "disk_min_io", 1u << 20, &lo) < 0 ||
        get_u64(o, "disk_max_io", 1u << 20, &hi) < 0 || lo < 4096 || hi < lo || lo % 4096 ||
        hi % 4096 || !json_object_object_get_ex(o, "mem_pattern", &v) ||
        parse_pattern(json_object_get_string(v), &w->mem_pattern) < 0 ||
        !json_object_object_get_ex(o, "disk_pattern", &v) ||
        parse_pattern(json_object_get_string(v), &w->disk_pattern) < 0 ||
        !json_object_object_get_ex(o, "seed", &v)) {
        snprintf(err, errlen, "bad synthetic workload description");
        return -EINVAL;
    }
    w->seed = (uint64_t)json_object_get_int64(v);
    w->disk_min_io = (uint32_t)lo;
    w->disk_max_io = (uint32_t)hi;
    return 0;
}
