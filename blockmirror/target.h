/* target.h: the mirror's NBD client side: async writes to any NBD server over libnbd. */
#ifndef BM_BLOCKMIRROR_TARGET_H
#define BM_BLOCKMIRROR_TARGET_H

#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * A bm_target is one or more libnbd connections to the same export (several only when the
 * server advertises multi-conn). It is driven by one thread: submit calls queue commands,
 * bm_target_poll() moves bytes and runs completion callbacks on that same thread.
 */
struct bm_target;

struct bm_target_opts {
    const char *uri;      /* nbd://, nbd+unix:// ... as libnbd takes them */
    unsigned connections; /* wanted; 1 if the server does not advertise multi-conn */
};

/* Completion: err is 0 or a positive errno value. */
typedef void (*bm_target_cb)(void *opaque, int err);

/* Write flag: the data is durable once answered (only where bm_target_can_fua). */
#define BM_TARGET_FUA 1u

/* Connect. On failure returns -errno and writes why into err. */
int bm_target_open(const struct bm_target_opts *o, struct bm_target **out, char *err,
                   size_t errlen);
void bm_target_close(struct bm_target *t);
/* Give up on a target that does not answer: the next close drops the connections at once
 * instead of waiting for a polite disconnect. */
void bm_target_abandon(struct bm_target *t);

uint64_t bm_target_size(const struct bm_target *t);
unsigned bm_target_connections(const struct bm_target *t);
bool bm_target_can_zero(const struct bm_target *t);
bool bm_target_can_fua(const struct bm_target *t);
bool bm_target_multi_conn(const struct bm_target *t);

/* Queue a command; cb runs from bm_target_poll(). Returns 0 or -errno (then cb never runs). */
int bm_target_write(struct bm_target *t, const void *buf, size_t len, uint64_t offset,
                    unsigned flags, bm_target_cb cb, void *opaque);
/* Without WRITE_ZEROES support, bm_target_zero writes zeroes: at most this many bytes. */
#define BM_TARGET_ZERO_FALLBACK_MAX (1u << 20)
/* Zero a range; without WRITE_ZEROES support, writes zeroes (len at most
 * BM_TARGET_ZERO_FALLBACK_MAX then, -EINVAL beyond). */
int bm_target_zero(struct bm_target *t, uint64_t offset, uint64_t len, bm_target_cb cb,
                   void *opaque);
/* Read into buf (which must stay valid until cb runs). */
int bm_target_read(struct bm_target *t, void *buf, size_t len, uint64_t offset, bm_target_cb cb,
                   void *opaque);
/* Trim a range; a target without trim does nothing (cb runs at once with 0: trim is advice). */
int bm_target_trim(struct bm_target *t, uint64_t offset, uint64_t len, bm_target_cb cb,
                   void *opaque);
/* Flush the target (one connection when it advertises multi-conn, else each); cb runs once,
 * when all have answered. */
int bm_target_flush(struct bm_target *t, bm_target_cb cb, void *opaque);

unsigned bm_target_in_flight(const struct bm_target *t);

/* Wait up to timeout_ms for the target or for one of extra (their revents are filled in).
 * Returns 0, or -errno when a connection is dead (every command on it has been completed with
 * an error by then). */
int bm_target_poll(struct bm_target *t, struct pollfd *extra, unsigned nextra, int timeout_ms);
bool bm_target_dead(const struct bm_target *t);

/* Drop every connection and connect again (call with nothing in flight). */
int bm_target_reconnect(struct bm_target *t, char *err, size_t errlen);

/* Synchronously ask which parts of [offset, offset+len) read as zeroes (base:allocation).
 * cb is called for each zero range. Returns 0, -ENOTSUP if the server cannot tell, -errno.
 * Only with nothing in flight. */
int bm_target_zero_ranges(struct bm_target *t, uint64_t offset, uint64_t len,
                          void (*cb)(void *opaque, uint64_t off, uint64_t len), void *opaque);

#endif
