/* inject.h: deterministic fault injection for the NBD server (--inject, --seed). */
#ifndef BM_NBD_INJECT_H
#define BM_NBD_INJECT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Operations a rule can match (a bit mask). */
#define NBD_INJ_READ         (1u << 0)
#define NBD_INJ_WRITE        (1u << 1)
#define NBD_INJ_FLUSH        (1u << 2)
#define NBD_INJ_TRIM         (1u << 3)
#define NBD_INJ_ZERO         (1u << 4)
#define NBD_INJ_BLOCK_STATUS (1u << 5)
#define NBD_INJ_CACHE        (1u << 6)
#define NBD_INJ_ALL          0x7fu

#define NBD_INJECT_MAX_RULES 16

/*
 * A rule is "OPS:key=value[:key=value]...", OPS one or more of read, write, flush, trim, zero,
 * block-status, cache, all joined by ','. Keys:
 *   error=EIO|ENOSPC|EPERM|EINVAL|ENOMEM|ENOTSUP|EOVERFLOW|ESHUTDOWN  fail the request
 *   delay=TIME     delay the request (5ms, 100us, 1s)
 *   rate=P         probability per matching request, 0..1 or N% (default 1)
 *   after=N        leave the first N matching requests alone
 *   count=N        fire at most N times (default unlimited)
 * Whether the k-th matching request of a rule fires depends only on the seed, the rule's
 * position and k, so a run with the same --seed and the same request order repeats exactly.
 */
struct nbd_inject_rule {
    unsigned ops;
    int error;  /* errno value, 0 for none */
    uint64_t delay_ns;
    double rate;
    uint64_t after;
    uint64_t count; /* 0 = unlimited */
    _Atomic uint64_t seen;
    _Atomic uint64_t fired;
};

struct nbd_inject {
    struct nbd_inject_rule rules[NBD_INJECT_MAX_RULES];
    unsigned nrules;
    uint64_t seed;
};

/* Add one rule. On error returns -EINVAL and writes a message into err. */
int nbd_inject_parse(struct nbd_inject *inj, const char *spec, char *err, size_t errlen);

/* For one request of operation op (one NBD_INJ_* bit): the errno to fail it with (0 = none)
 * and the delay to apply first (*delay_ns, 0 = none). Thread-safe. */
int nbd_inject_decide(struct nbd_inject *inj, unsigned op, uint64_t *delay_ns);

/* errno value for a name such as "EIO", or 0 if unknown. */
int nbd_inject_errno_from_name(const char *name);

#endif
