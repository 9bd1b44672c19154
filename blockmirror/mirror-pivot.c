/* mirror-pivot.c: after a pivoting completion, serve the source disk's users from the target. */
#include <config.h>

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

#include "blockmirror/mirror-internal.h"
#include "common/log.h"

/*
 * At the pivot the target has answered every write of what the source holds (some perhaps only
 * in its cache: the final flush comes after the pivot, see mirror_pivot_flush), and the
 * source's writers are held. A pivot makes the target their disk from then on: the source disk
 * is redirected (bm_disk redirect) to the functions below, so the held changes and every later
 * request go to the target and none to the source. The callers are the disk's users (the NBD
 * server's workers); each queues its request and waits, and the pivot thread, which owns the
 * target's connections as the job's thread did, submits it and answers it.
 *
 * A target connection that dies after the pivot is not reconnected: writes it acknowledged may
 * not be durable, and a flush on a new connection would claim they are. Every later request
 * fails with EIO instead, which the writer sees. A target that answers nothing for
 * PIVOT_STALL_NS while requests wait is given up on the same way (a cut link neither answers
 * nor resets): the writers waiting, and every later one, get EIO rather than hang.
 */

/* The largest read or write sent as one command: below every server's limit (32 MiB usually). */
#define DATA_CHUNK (4u << 20)
/* The largest zero or trim sent as one command. */
#define RANGE_CHUNK (1u << 30)
/* How long the target may answer nothing while commands are in flight. */
#define PIVOT_STALL_NS 30000000000ull

static void req_finish(struct pivot_req *r)
{
    struct mirror_job *j = r->j;
    pthread_mutex_lock(&j->busy_lock);
    r->done = true;
    pthread_cond_broadcast(&j->busy_cond);
    pthread_mutex_unlock(&j->busy_lock);
}

/* One target command of r answered (or, with parts counting the submitter's hold, the
 * submission over). After the last one a FUA request waits for a flush of the target, which
 * the pivot thread sends (not from here: this may run inside a libnbd callback, which must not
 * submit on its handle); any other request is answered. */
static void part_done(void *opaque, int err)
{
    struct pivot_req *r = opaque;
    if (err && !r->err)
        r->err = err;
    if (--r->parts > 0)
        return;
    if (r->fua && !r->flushing && !r->err) {
        r->flushing = true;
        r->next = r->j->pq_fua;
        r->j->pq_fua = r;
        return;
    }
    req_finish(r);
}

/* Send the flushes FUA requests wait for. */
static void flush_fua(struct mirror_job *j)
{
    while (j->pq_fua) {
        struct pivot_req *r = j->pq_fua;
        j->pq_fua = r->next;
        r->parts = 1;
        int rc = bm_target_flush(j->t, part_done, r);
        if (rc < 0) {
            r->err = -rc;
            req_finish(r);
        }
    }
}

static int submit_part(struct mirror_job *j, struct pivot_req *r, uint64_t off, uint64_t n,
                       unsigned wflags)
{
    switch (r->kind) {
    case PIVOT_READ:
        return bm_target_read(j->t, (uint8_t *)r->rbuf + (off - r->offset), (size_t)n, off,
                              part_done, r);
    case PIVOT_WRITE:
        return bm_target_write(j->t, (const uint8_t *)r->wbuf + (off - r->offset), (size_t)n, off,
                               wflags, part_done, r);
    case PIVOT_ZERO:
        return bm_target_zero(j->t, off, n, part_done, r);
    case PIVOT_TRIM:
        return bm_target_trim(j->t, off, n, part_done, r);
    case PIVOT_FLUSH:
        return bm_target_flush(j->t, part_done, r);
    }
    return -EINVAL;
}

/* Send r to the target in pieces the target takes. */
static void submit(struct mirror_job *j, struct pivot_req *r)
{
    r->parts = 1; /* held until every part is queued */
    if (bm_target_dead(j->t)) {
        part_done(r, EIO);
        return;
    }
    if (r->len == 0 && r->kind != PIVOT_FLUSH) {
        part_done(r, 0);
        return;
    }
    /* A write whose every part the target makes durable itself needs no flush after it. */
    unsigned wflags = 0;
    if (r->kind == PIVOT_WRITE && r->fua && bm_target_can_fua(j->t)) {
        wflags = BM_TARGET_FUA;
        r->fua = false;
    }
    uint64_t chunk = r->kind == PIVOT_READ || r->kind == PIVOT_WRITE ? DATA_CHUNK
                     : r->kind == PIVOT_ZERO && !bm_target_can_zero(j->t)
                         ? BM_TARGET_ZERO_FALLBACK_MAX
                         : RANGE_CHUNK;
    uint64_t end = r->offset + r->len;
    uint64_t off = r->offset;
    do { /* a flush has no range: one pass */
        uint64_t n = end - off < chunk ? end - off : chunk;
        r->parts++;
        int rc = submit_part(j, r, off, n, wflags);
        if (rc < 0) {
            r->parts--;
            if (!r->err)
                r->err = -rc;
        }
        off += n;
    } while (off < end && !r->err);
    part_done(r, 0);
}

/* The pivot thread answers nothing more: a request still waiting (queued, in flight, or
 * waiting for its FUA flush) and every later one fail with EIO. With commands in flight the
 * target is abandoned first, so that no answer can come for a request after its caller has
 * returned: an abandoned connection is never polled again, and closing it calls nothing back. */
static void pivot_over(struct mirror_job *j)
{
    if (bm_target_in_flight(j->t) > 0)
        bm_target_abandon(j->t);
    pthread_mutex_lock(&j->busy_lock);
    j->pivot_over = true;
    j->pq_head = j->pq_tail = NULL;
    pthread_cond_broadcast(&j->busy_cond);
    pthread_mutex_unlock(&j->busy_lock);
}

static void *pivot_main(void *arg)
{
    struct mirror_job *j = arg;
    uint64_t stop_ns = 0;
    uint64_t quiet_ns = mirror_now_ns(); /* since when the target answered nothing */
    for (;;) {
        pthread_mutex_lock(&j->busy_lock);
        struct pivot_req *q = j->pq_head;
        j->pq_head = j->pq_tail = NULL;
        bool stopping = j->pivot_stopping;
        pthread_mutex_unlock(&j->busy_lock);
        while (q) {
            struct pivot_req *next = q->next; /* q may be answered and gone after submit */
            submit(j, q);
            q = next;
        }
        flush_fua(j);
        unsigned in_flight = bm_target_in_flight(j->t);
        uint64_t now = mirror_now_ns();
        if (stopping && !stop_ns)
            stop_ns = now;
        if (stopping && in_flight == 0)
            break;
        if (stopping && now - stop_ns > CANCEL_WAIT_NS) {
            bm_warn("mirror: the target did not answer within %llu s; giving up on it",
                    CANCEL_WAIT_NS / 1000000000ull);
            break;
        }
        if (in_flight > 0 && now - quiet_ns > j->pivot_stall_ns) {
            bm_error("mirror: after the pivot the target answered nothing for %.1f s; giving "
                     "up on it: its writers get EIO",
                     (double)j->pivot_stall_ns / 1e9);
            break;
        }
        struct pollfd wake = {.fd = j->wake_fd, .events = POLLIN};
        bm_target_poll(j->t, &wake, 1, 100); /* a dead connection fails its commands itself */
        unsigned left = bm_target_in_flight(j->t);
        if (left == 0 || left < in_flight)
            quiet_ns = mirror_now_ns();
        flush_fua(j);
        if (wake.revents & POLLIN) {
            uint64_t v;
            ssize_t n = read(j->wake_fd, &v, sizeof v);
            (void)n;
        }
    }
    pivot_over(j);
    return NULL;
}

/* Queue r for the pivot thread and wait for its answer. */
static int call(struct mirror_job *j, struct pivot_req *r)
{
    r->j = j;
    pthread_mutex_lock(&j->busy_lock);
    if (j->pivot_stopping || j->pivot_over) {
        pthread_mutex_unlock(&j->busy_lock);
        return -EIO;
    }
    if (j->pq_tail)
        j->pq_tail->next = r;
    else
        j->pq_head = r;
    j->pq_tail = r;
    pthread_mutex_unlock(&j->busy_lock);
    mirror_wake(j);
    pthread_mutex_lock(&j->busy_lock);
    while (!r->done && !j->pivot_over)
        pthread_cond_wait(&j->busy_cond, &j->busy_lock);
    int err = r->done ? r->err : EIO;
    pthread_mutex_unlock(&j->busy_lock);
    return -err;
}

static int pivot_pread(void *opaque, void *buf, size_t len, uint64_t offset)
{
    struct pivot_req r = {.kind = PIVOT_READ, .rbuf = buf, .offset = offset, .len = len};
    return call(opaque, &r);
}

static int pivot_pwrite(void *opaque, const void *buf, size_t len, uint64_t offset, unsigned flags)
{
    struct pivot_req r = {
        .kind = PIVOT_WRITE, .wbuf = buf, .offset = offset, .len = len, .fua = flags & BM_DISK_FUA};
    return call(opaque, &r);
}

static int pivot_zero(void *opaque, uint64_t offset, uint64_t len, unsigned flags)
{
    /* Whether the target zeroes fast is not known: a writer asking for a fast zero writes its
     * own zeroes instead. */
    if (flags & BM_DISK_FAST)
        return -ENOTSUP;
    struct pivot_req r = {
        .kind = PIVOT_ZERO, .offset = offset, .len = len, .fua = flags & BM_DISK_FUA};
    return call(opaque, &r);
}

static int pivot_trim(void *opaque, uint64_t offset, uint64_t len, unsigned flags)
{
    struct pivot_req r = {
        .kind = PIVOT_TRIM, .offset = offset, .len = len, .fua = flags & BM_DISK_FUA};
    return call(opaque, &r);
}

/* A writer's flush covers every write answered before it, the mirror's copies included (all of
 * them were answered before the pivot), so a writer never needs the job's final flush:
 * bm_target_flush sends it on every connection, or, only when the target promises multi-conn
 * (a flush on one connection covers the writes answered on all), on one. Without multi-conn
 * the target is opened with one connection anyway, and no connection is added after the
 * pivot (a dead one fails every request instead). */
static int pivot_flush(void *opaque)
{
    struct pivot_req r = {.kind = PIVOT_FLUSH};
    return call(opaque, &r);
}

int mirror_pivot_flush(struct mirror_job *j)
{
    return pivot_flush(j);
}

int mirror_pivot_start(struct mirror_job *j)
{
    if (!j->pivot_stall_ns)
        j->pivot_stall_ns = PIVOT_STALL_NS;
    int r = pthread_create(&j->pivot_thread, NULL, pivot_main, j);
    if (r)
        return -r;
    j->pivoted = true;
    struct bm_disk_redirect rd = {.pread = pivot_pread,
                                  .pwrite = pivot_pwrite,
                                  .zero = pivot_zero,
                                  .trim = pivot_trim,
                                  .flush = pivot_flush,
                                  .opaque = j};
    bm_disk_redirect(j->src, &rd);
    return 0;
}

void mirror_pivot_stop(struct mirror_job *j)
{
    if (!j->pivoted)
        return;
    pthread_mutex_lock(&j->busy_lock);
    j->pivot_stopping = true;
    pthread_mutex_unlock(&j->busy_lock);
    mirror_wake(j);
    pthread_join(j->pivot_thread, NULL); /* it answered every request before it ended */
    j->pivoted = false;
}
