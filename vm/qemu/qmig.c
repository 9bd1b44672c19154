/* qmig.c: QEMU's migration of RAM and devices, steered over QMP (the sequence is in qmig.h). */
#include <config.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "vm/qemu/qmig.h"

/* QEMU's unlimited: the largest max-bandwidth it takes is SIZE_MAX; JSON integers here are
 * signed, and INT64_MAX bytes/s is unlimited enough. */
#define UNLIMITED INT64_MAX

static const char *const statuses[] = {
    "none",      "setup",      "cancelling", "cancelled",      "active",
    "postcopy-active", "postcopy-paused", "postcopy-recover", "completed", "failed",
    "colo",      "pre-switchover", "device", "wait-unplug",
};

bool qemu_mig_status_final(const char *status)
{
    return strcmp(status, "completed") == 0 || strcmp(status, "failed") == 0 ||
           strcmp(status, "cancelled") == 0;
}

static int bad(char *err, size_t errlen, const char *what)
{
    snprintf(err, errlen, "query-migrate: %s", what);
    return -EPROTO;
}

/* An optional non-negative integer member of o into *v (0 when absent). */
static bool get_u64(struct json_object *o, const char *key, uint64_t *v)
{
    struct json_object *x;
    *v = 0;
    if (!json_object_object_get_ex(o, key, &x))
        return true;
    if (!json_object_is_type(x, json_type_int) || json_object_get_int64(x) < 0)
        return false;
    *v = (uint64_t)json_object_get_int64(x);
    return true;
}

static int parse_ram(struct json_object *ram, struct qemu_mig_info *out, char *err,
                     size_t errlen)
{
    uint64_t page_size, dirty_pages_rate;
    if (!json_object_is_type(ram, json_type_object))
        return bad(err, errlen, "ram is not an object");
    if (!get_u64(ram, "total", &out->ram_total) ||
        !get_u64(ram, "remaining", &out->ram_remaining) ||
        !get_u64(ram, "transferred", &out->ram_transferred) ||
        !get_u64(ram, "dirty-sync-count", &out->ram_rounds) ||
        !get_u64(ram, "page-size", &page_size) ||
        !get_u64(ram, "dirty-pages-rate", &dirty_pages_rate))
        return bad(err, errlen, "a ram figure is not an integer >= 0");
    if (page_size > (1u << 30) || dirty_pages_rate > (UINT64_C(1) << 40))
        return bad(err, errlen, "ram.page-size or ram.dirty-pages-rate out of range");
    out->ram_dirty_rate = dirty_pages_rate * (page_size ? page_size : 4096);
    struct json_object *x;
    if (json_object_object_get_ex(ram, "mbps", &x)) {
        if (!json_object_is_type(x, json_type_double) && !json_object_is_type(x, json_type_int))
            return bad(err, errlen, "ram.mbps is not a number");
        double mbps = json_object_get_double(x);
        if (!isfinite(mbps) || mbps < 0 || mbps > 1e9)
            return bad(err, errlen, "ram.mbps out of range");
        out->ram_throughput = (uint64_t)(mbps * 1e6 / 8);
    }
    return 0;
}

int qemu_mig_parse(struct json_object *ret, struct qemu_mig_info *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (!json_object_is_type(ret, json_type_object))
        return bad(err, errlen, "not an object");
    struct json_object *x;
    const char *status = "none"; /* QEMU leaves it out before any migration */
    if (json_object_object_get_ex(ret, "status", &x)) {
        if (!json_object_is_type(x, json_type_string))
            return bad(err, errlen, "status is not a string");
        status = json_object_get_string(x);
    }
    size_t i = 0;
    while (i < sizeof statuses / sizeof statuses[0] && strcmp(statuses[i], status) != 0)
        i++;
    if (i == sizeof statuses / sizeof statuses[0])
        return bad(err, errlen, "unknown status");
    snprintf(out->status, sizeof out->status, "%s", statuses[i]);
    if (!get_u64(ret, "total-time", &out->total_time_ms) ||
        !get_u64(ret, "setup-time", &out->setup_time_ms) ||
        !get_u64(ret, "downtime", &out->downtime_ms) ||
        !get_u64(ret, "expected-downtime", &out->expected_downtime_ms))
        return bad(err, errlen, "a time is not an integer >= 0");
    if (json_object_object_get_ex(ret, "ram", &x)) {
        int r = parse_ram(x, out, err, errlen);
        if (r < 0)
            return r;
    }
    if (json_object_object_get_ex(ret, "error-desc", &x)) {
        if (!json_object_is_type(x, json_type_string))
            return bad(err, errlen, "error-desc is not a string");
        snprintf(out->error, sizeof out->error, "%s", json_object_get_string(x));
    }
    return 0;
}

int qemu_mig_incoming(struct qemu_mon *dst, const char *uri, char *err, size_t errlen)
{
    return qemu_mon_exec(dst, "migrate-incoming", qemu_obj("uri", json_object_new_string(uri),
                                                           NULL),
                         NULL, err, errlen);
}

static struct json_object *cap(const char *name)
{
    return qemu_obj("capability", json_object_new_string(name), "state",
                    json_object_new_boolean(true), NULL);
}

int qemu_mig_prepare(struct qemu_mon *src, uint64_t max_bandwidth, unsigned downtime_ms,
                     char *err, size_t errlen)
{
    struct json_object *caps = json_object_new_array();
    json_object_array_add(caps, cap("pause-before-switchover"));
    json_object_array_add(caps, cap("events"));
    int r = qemu_mon_exec(src, "migrate-set-capabilities", qemu_obj("capabilities", caps, NULL),
                          NULL, err, errlen);
    if (r == 0)
        r = qemu_mig_set(src, (int64_t)(max_bandwidth > INT64_MAX ? INT64_MAX : max_bandwidth),
                         downtime_ms, err, errlen);
    return r;
}

int qemu_mig_start(struct qemu_mon *src, const char *uri, char *err, size_t errlen)
{
    return qemu_mon_exec(src, "migrate", qemu_obj("uri", json_object_new_string(uri), NULL),
                         NULL, err, errlen);
}

int qemu_mig_query(struct qemu_mon *m, struct qemu_mig_info *out, char *err, size_t errlen)
{
    struct json_object *ret;
    int r = qemu_mon_exec_type(m, "query-migrate", NULL, json_type_object, &ret, err, errlen);
    if (r == 0) {
        char e[256];
        r = qemu_mig_parse(ret, out, e, sizeof e);
        if (r < 0)
            snprintf(err, errlen, "%s: %s", m->name, e);
        json_object_put(ret);
    }
    return r;
}

int qemu_mig_set(struct qemu_mon *src, int64_t max_bandwidth, int64_t downtime_ms, char *err,
                 size_t errlen)
{
    if (max_bandwidth < 0 && downtime_ms < 0)
        return 0;
    return qemu_mon_exec(
        src, "migrate-set-parameters",
        qemu_obj("max-bandwidth",
                 max_bandwidth < 0
                     ? NULL
                     : json_object_new_int64(max_bandwidth ? max_bandwidth : UNLIMITED),
                 "downtime-limit", downtime_ms < 0 ? NULL : json_object_new_int64(downtime_ms),
                 NULL),
        NULL, err, errlen);
}

int qemu_mig_continue(struct qemu_mon *src, char *err, size_t errlen)
{
    return qemu_mon_exec(src, "migrate-continue",
                         qemu_obj("state", json_object_new_string("pre-switchover"), NULL), NULL,
                         err, errlen);
}

int qemu_mig_cancel(struct qemu_mon *src, char *err, size_t errlen)
{
    return qemu_mon_exec(src, "migrate_cancel", NULL, NULL, err, errlen);
}
