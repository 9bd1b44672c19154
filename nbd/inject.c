/* inject.c: parsing and deciding --inject fault rules. */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/parse.h"
#include "nbd/inject.h"

static const struct {
    const char *name;
    unsigned bit;
} op_names[] = {
    {"read", NBD_INJ_READ},   {"write", NBD_INJ_WRITE}, {"flush", NBD_INJ_FLUSH},
    {"trim", NBD_INJ_TRIM},   {"zero", NBD_INJ_ZERO},   {"write-zeroes", NBD_INJ_ZERO},
    {"block-status", NBD_INJ_BLOCK_STATUS},             {"cache", NBD_INJ_CACHE},
    {"all", NBD_INJ_ALL},
};

static const struct {
    const char *name;
    int value;
} errno_names[] = {
    {"EIO", EIO},       {"ENOSPC", ENOSPC},       {"EPERM", EPERM},         {"EINVAL", EINVAL},
    {"ENOMEM", ENOMEM}, {"ENOTSUP", ENOTSUP},     {"EOVERFLOW", EOVERFLOW}, {"ESHUTDOWN", ESHUTDOWN},
};

int nbd_inject_errno_from_name(const char *name)
{
    for (size_t i = 0; i < sizeof errno_names / sizeof errno_names[0]; i++)
        if (strcasecmp(name, errno_names[i].name) == 0)
            return errno_names[i].value;
    return 0;
}

static int parse_ops(const char *s, size_t len, unsigned *ops)
{
    *ops = 0;
    for (;;) {
        const char *comma = memchr(s, ',', len);
        size_t n = comma ? (size_t)(comma - s) : len;
        if (n == 0)
            return -EINVAL;
        unsigned bit = 0;
        for (size_t i = 0; i < sizeof op_names / sizeof op_names[0]; i++)
            if (strlen(op_names[i].name) == n && strncmp(s, op_names[i].name, n) == 0)
                bit = op_names[i].bit;
        if (!bit)
            return -EINVAL;
        *ops |= bit;
        if (!comma)
            break;
        len -= n + 1;
        s = comma + 1;
    }
    return *ops ? 0 : -EINVAL;
}

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        snprintf(err, errlen, __VA_ARGS__);                                                        \
        free(copy);                                                                                \
        return -EINVAL;                                                                            \
    } while (0)

int nbd_inject_parse(struct nbd_inject *inj, const char *spec, char *err, size_t errlen)
{
    char *copy = NULL;
    if (inj->nrules >= NBD_INJECT_MAX_RULES)
        FAIL("too many --inject rules (at most %d)", NBD_INJECT_MAX_RULES);
    const char *colon = strchr(spec, ':');
    if (!colon)
        FAIL("'%s': expected OPS:key=value[:key=value]...", spec);
    struct nbd_inject_rule r = {.rate = 1.0};
    if (parse_ops(spec, (size_t)(colon - spec), &r.ops) < 0)
        FAIL("'%s': unknown operation (read, write, flush, trim, zero, block-status, cache, all)",
             spec);
    copy = strdup(colon + 1);
    if (!copy)
        FAIL("out of memory");
    char *save = NULL;
    for (char *kv = strtok_r(copy, ":", &save); kv; kv = strtok_r(NULL, ":", &save)) {
        char *eq = strchr(kv, '=');
        if (!eq)
            FAIL("'%s': expected key=value", kv);
        *eq = '\0';
        const char *v = eq + 1;
        if (strcmp(kv, "error") == 0) {
            r.error = nbd_inject_errno_from_name(v);
            if (!r.error)
                FAIL("error=%s: unknown (EIO, ENOSPC, EPERM, EINVAL, ENOMEM, ENOTSUP, "
                     "EOVERFLOW, ESHUTDOWN)", v);
        } else if (strcmp(kv, "delay") == 0) {
            if (bm_parse_duration(v, &r.delay_ns) < 0)
                FAIL("delay=%s: expected a duration such as 5ms", v);
        } else if (strcmp(kv, "rate") == 0) {
            if (bm_parse_probability(v, &r.rate) < 0)
                FAIL("rate=%s: expected a number from 0 to 1, or a percentage", v);
        } else if (strcmp(kv, "after") == 0) {
            if (bm_parse_u64(v, 0, UINT64_MAX, &r.after) < 0)
                FAIL("after=%s: expected a whole number", v);
        } else if (strcmp(kv, "count") == 0) {
            if (bm_parse_u64(v, 1, UINT64_MAX, &r.count) < 0)
                FAIL("count=%s: expected a whole number >= 1", v);
        } else {
            FAIL("unknown key '%s' (error, delay, rate, after, count)", kv);
        }
    }
    if (!r.error && !r.delay_ns)
        FAIL("'%s': a rule needs error= or delay=", spec);
    free(copy);
    struct nbd_inject_rule *dst = &inj->rules[inj->nrules++];
    dst->ops = r.ops;
    dst->error = r.error;
    dst->delay_ns = r.delay_ns;
    dst->rate = r.rate;
    dst->after = r.after;
    dst->count = r.count;
    atomic_init(&dst->seen, 0);
    atomic_init(&dst->fired, 0);
    return 0;
}

/* splitmix64: a well-mixed 64-bit hash of (seed, rule, k). */
static uint64_t mix(uint64_t x)
{
    x += UINT64_C(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
    return x ^ (x >> 31);
}

int nbd_inject_decide(struct nbd_inject *inj, unsigned op, uint64_t *delay_ns)
{
    *delay_ns = 0;
    if (!inj)
        return 0;
    int error = 0;
    for (unsigned i = 0; i < inj->nrules; i++) {
        struct nbd_inject_rule *r = &inj->rules[i];
        if (!(r->ops & op))
            continue;
        uint64_t k = atomic_fetch_add(&r->seen, 1);
        if (k < r->after)
            continue;
        if (r->rate < 1.0) {
            /* Seed and rule are mixed before k joins, so seeds differ in more than order. */
            double u = (double)(mix(mix(inj->seed ^ mix(i + 1)) ^ k) >> 11) * 0x1.0p-53;
            if (u >= r->rate)
                continue;
        }
        if (r->count) {
            uint64_t f = atomic_fetch_add(&r->fired, 1);
            if (f >= r->count)
                continue;
        } else {
            atomic_fetch_add(&r->fired, 1);
        }
        *delay_ns += r->delay_ns;
        if (!error)
            error = r->error;
    }
    return error;
}
