/* accept.h: the destination's listener: wait for the one connection that is a blkmig source. */
#ifndef BM_MIGRATION_ACCEPT_H
#define BM_MIGRATION_ACCEPT_H

#include <json-c/json.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>

/* Connections waited on at once; one more arriving drops the oldest. */
#define MIG_ACCEPT_MAX_PENDING 16
/* The largest HELLO payload taken (a VM description is a few KiB). */
#define MIG_HELLO_MAX (1u << 20)

struct mig_accept_opts {
    const int *lfds; /* listening sockets */
    int nl;
    unsigned hello_timeout_ms;         /* each connection's time to send its header and HELLO */
    uint64_t deadline_ns;              /* CLOCK_MONOTONIC; UINT64_MAX: wait for ever */
    const volatile sig_atomic_t *stop; /* set: give up with -EINTR (may be NULL) */
};

/* Accept connections on o->lfds, several at once, each sent our stream header at once, until
 * one sends a valid stream header and a valid HELLO frame (checksummed, a JSON object with
 * vm.disks) within o->hello_timeout_ms. The others (silent, slow, not blkmig, a bad HELLO)
 * are logged and closed; so are those still pending when the source is found. The listening
 * sockets stay open (the caller closes them).
 * Returns 0 with *fd the source's connection (blocking), *hello the parsed HELLO (the caller
 * puts it) and *bytes_in what was read from it; -ETIMEDOUT past o->deadline_ns, -EINTR when
 * *o->stop is set, or another -errno from poll, with err set. */
int mig_accept_hello(const struct mig_accept_opts *o, int *fd, struct json_object **hello,
                     uint64_t *bytes_in, char *err, size_t errlen);

#endif
