/* mirror.c: the mirror job's thread: setup, bulk pass, dirty rounds, readiness, completion. */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "blockmirror/mirror-internal.h"
#include "common/log.h"
#include "common/zero.h"

#define TICK_MS       100
#define DIRTY_POLL_MS 10
#define HARVEST_MS    50
/* Hole ranges are zeroed on the target in pieces of at most this many bytes. */
#define MAX_ZERO_CHUNK (1u << 30)
/* Auto mode: how long the copy must fail to gain (or keep up easily) before switching. */
#define AUTO_SWITCH_TICKS 30

static const char *const state_names[] = {
    "setup", "bulk", "dirty", "ready", "completing", "done", "cancelled", "failed",
};

const char *mirror_state_name(enum mirror_state s)
{
    return (unsigned)s < sizeof state_names / sizeof state_names[0] ? state_names[s] : "?";
}

void mirror_opts_default(struct mirror_opts *o)
{
    *o = (struct mirror_opts){
        .granularity = 0, /* chosen from the disk size */
        /* nbdcopy's finding, and ours: 256 KiB x 64 copied 512 MiB into qemu-nbd in 0.8-1.1 s
         * where 1 MiB x 16 took 2.6-2.7 s (docs/architecture.md, "Mirror defaults"). */
        .request_size = 256 * 1024,
        .in_flight = 64,
        .connections = 4,
        .mode = MIRROR_MODE_BACKGROUND,
        .ready_ms = 50,
        .retries = 5,
        .stats_ms = 1000,
    };
}

uint64_t mirror_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void mirror_wake(struct mirror_job *j)
{
    uint64_t one = 1;
    ssize_t r = write(j->wake_fd, &one, sizeof one);
    (void)r;
}

static uint64_t dirty_bytes(struct mirror_job *j);

static void publish(struct mirror_job *j)
{
    j->cur.elapsed_ms = (mirror_now_ns() - j->start_ns) / 1000000;
    j->cur.dirty_bytes = dirty_bytes(j);
    j->cur.write_blocking = atomic_load(&j->write_blocking);
    j->cur.active_bytes = atomic_load(&j->active_bytes);
    j->cur.connections = j->t ? bm_target_connections(j->t) : 0;
    j->cur.unflushed = j->unflushed + j->flushing;
    pthread_mutex_lock(&j->stats_lock);
    j->st = j->cur;
    pthread_mutex_unlock(&j->stats_lock);
}

static void event(struct mirror_job *j, const char *name, const char *detail)
{
    publish(j);
    if (j->fn)
        j->fn(j->opaque, name, &j->cur, detail);
}

void mirror_set_state(struct mirror_job *j, enum mirror_state s, const char *detail)
{
    if (j->cur.state == s)
        return;
    j->cur.state = s;
    if (s == MIRROR_READY && !j->cur.ready_ms)
        j->cur.ready_ms = (mirror_now_ns() - j->start_ns) / 1000000 + 1;
    event(j, mirror_state_name(s), detail);
}

/* Record why the job fails (the first cause only). It is not logged here: the owner reports it
 * once, from the failed event or from mirror_wait's message. */
static void fail(struct mirror_job *j, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail(struct mirror_job *j, int err, const char *fmt, ...)
{
    if (j->err)
        return;
    j->err = err ? err : EIO;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->errmsg, sizeof j->errmsg, fmt, ap);
    va_end(ap);
}

int mirror_new(struct bm_disk *src, const struct mirror_opts *o, mirror_event_fn fn, void *opaque,
               struct mirror_job **out, char *err, size_t errlen)
{
    struct mirror_opts oo = *o;
    if (oo.granularity == 0) {
        /* 4 KiB blocks copy a small random write as itself (64 KiB ones sent 2.2 times the
         * data in our measurements); grow them only to keep the bitmap under 32 MiB. */
        uint64_t size = bm_disk_size(src);
        oo.granularity = 4096;
        while (size / oo.granularity > (UINT64_C(32) << 23) && oo.granularity < (1u << 26))
            oo.granularity <<= 1;
        if (oo.request_size < oo.granularity)
            oo.request_size = oo.granularity;
    }
    if (bm_disk_is_remote(src)) {
        /* Its writers are not ours: nothing to forward, nothing to pivot, no O_DIRECT. */
        if (oo.mode == MIRROR_MODE_WRITE_BLOCKING || oo.pivot) {
            snprintf(err, errlen, "%s: write-blocking mode and pivots need the disk's writers "
                                  "(this disk is written by its own VMM)",
                     bm_disk_path(src));
            return -EINVAL;
        }
        oo.mode = MIRROR_MODE_BACKGROUND;
        oo.direct = false;
    }
    o = &oo;
    if (o->granularity < 512 || (o->granularity & (o->granularity - 1))) {
        snprintf(err, errlen, "granularity must be a power of two of at least 512");
        return -EINVAL;
    }
    if (o->request_size < o->granularity || o->request_size > (32u << 20)) {
        snprintf(err, errlen, "request size must be between the granularity and 32 MiB");
        return -EINVAL;
    }
    if (o->in_flight < 1 || o->in_flight > 1024) {
        snprintf(err, errlen, "in-flight requests must be between 1 and 1024");
        return -EINVAL;
    }
    struct mirror_job *j = calloc(1, sizeof *j);
    if (!j) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    j->src = src;
    j->remote = bm_disk_is_remote(src);
    j->o = *o;
    j->fn = fn;
    j->opaque = opaque;
    j->size = bm_disk_size(src);
    j->shift = (unsigned)__builtin_ctz(o->granularity);
    j->uri = strdup(o->target_uri);
    j->dirty = bm_bitmap_new(j->size, o->granularity);
    j->busy = bm_bitmap_new(j->size, o->granularity);
    j->slots = calloc(o->in_flight, sizeof *j->slots);
    j->nslots = o->in_flight;
    j->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    j->aio_fd = -1;
    j->direct_fd = -1;
    if (!j->uri || !j->dirty || !j->busy || !j->slots || j->wake_fd < 0) {
        snprintf(err, errlen, "out of memory");
        mirror_free(j);
        return -ENOMEM;
    }
    for (unsigned i = 0; i < j->nslots; i++) {
        j->slots[i].j = j;
        if (posix_memalign((void **)&j->slots[i].buf, 4096, o->request_size) != 0) {
            snprintf(err, errlen, "out of memory");
            mirror_free(j);
            return -ENOMEM;
        }
    }
    atomic_store(&j->speed, o->speed);
    pthread_mutex_init(&j->busy_lock, NULL);
    pthread_cond_init(&j->busy_cond, NULL);
    pthread_mutex_init(&j->stats_lock, NULL);
    j->cur.state = MIRROR_SETUP;
    j->cur.disk_size = j->size;
    j->st = j->cur;
    *out = j;
    return 0;
}

/* ---- target zero map ---- */

static void add_zero_range(void *opaque, uint64_t off, uint64_t len)
{
    struct mirror_job *j = opaque;
    if (j->ntz && j->tz[j->ntz - 1].offset + j->tz[j->ntz - 1].len == off) {
        j->tz[j->ntz - 1].len += len;
        return;
    }
    if ((j->ntz & (j->ntz - 1)) == 0) { /* grow at powers of two */
        struct zero_range *n = realloc(j->tz, (j->ntz ? j->ntz * 2 : 16) * sizeof *n);
        if (!n)
            return; /* a smaller map only costs extra zeroing */
        j->tz = n;
    }
    j->tz[j->ntz++] = (struct zero_range){off, len};
}

/* How much of [off, off+len) from off on is known zero on the target (0 if off is not). When
 * not, *until is where the next known-zero range starts (or off+len). */
static uint64_t known_zero(const struct mirror_job *j, uint64_t off, uint64_t len, uint64_t *until)
{
    size_t lo = 0, hi = j->ntz;
    while (lo < hi) { /* first range ending after off */
        size_t mid = (lo + hi) / 2;
        if (j->tz[mid].offset + j->tz[mid].len <= off)
            lo = mid + 1;
        else
            hi = mid;
    }
    uint64_t end = off + len;
    *until = end;
    if (lo == j->ntz)
        return 0;
    const struct zero_range *z = &j->tz[lo];
    if (z->offset <= off) {
        uint64_t zend = z->offset + z->len;
        return (zend < end ? zend : end) - off;
    }
    if (z->offset < end)
        *until = z->offset;
    return 0;
}

/* ---- issuing copies ---- */

static struct slot *free_slot(struct mirror_job *j)
{
    if (j->nused >= j->nslots)
        return NULL;
    for (unsigned i = 0; i < j->nslots; i++)
        if (!j->slots[i].used)
            return &j->slots[i];
    return NULL;
}

static void slot_done(void *opaque, int err)
{
    struct slot *s = opaque;
    struct mirror_job *j = s->j;
    if (err && bm_target_dead(j->t)) {
        /* The connection died under it: the reconnect logic owns the retry budget. */
        if (s->redirty || s->bulk)
            bm_bitmap_set_range(j->dirty, s->offset, s->len);
    } else if (err) {
        if (s->redirty || s->bulk)
            bm_bitmap_set_range(j->dirty, s->offset, s->len);
        j->cur.retries++;
        j->consecutive_errors++;
        uint64_t backoff = 100000000ull << (j->consecutive_errors < 5 ? j->consecutive_errors : 5);
        j->backoff_until_ns = mirror_now_ns() + backoff;
        bm_warn("mirror: target %s at 0x%llx (%llu bytes) failed: %s (%d in a row)",
                s->zero ? "zero" : "write", (unsigned long long)s->offset,
                (unsigned long long)s->len, strerror(err), j->consecutive_errors);
        if ((unsigned)j->consecutive_errors > j->o.retries)
            fail(j, err, "the target failed %d times in a row, last: %s", j->consecutive_errors,
                 strerror(err));
    } else {
        j->consecutive_errors = 0;
        if (s->zero) {
            j->cur.zero_bytes += s->len;
        } else {
            j->cur.bytes_sent += s->len;
            j->unflushed += s->len;
        }
        if (s->bulk)
            j->cur.bulk_done += s->len;
        if (s->dirty_copy)
            j->cleared += s->len;
    }
    s->dirty_copy = false;
    pthread_mutex_lock(&j->busy_lock);
    bm_bitmap_clear_bits(j->busy, s->first_bit, s->nbits);
    pthread_cond_broadcast(&j->busy_cond);
    pthread_mutex_unlock(&j->busy_lock);
    s->used = false;
    j->nused--;
}

/* Claim blocks [first, first+count) in the busy map, shortened to stop before any block that
 * is busy already; returns how many were claimed (0 if first itself is busy). */
static uint64_t claim(struct mirror_job *j, uint64_t first, uint64_t count)
{
    pthread_mutex_lock(&j->busy_lock);
    uint64_t nb = bm_bitmap_next_set(j->busy, first);
    if (nb < first + count)
        count = nb - first;
    if (count)
        bm_bitmap_set_bits(j->busy, first, count);
    pthread_mutex_unlock(&j->busy_lock);
    return count;
}

static void unclaim(struct mirror_job *j, uint64_t first, uint64_t count)
{
    pthread_mutex_lock(&j->busy_lock);
    bm_bitmap_clear_bits(j->busy, first, count);
    pthread_cond_broadcast(&j->busy_cond);
    pthread_mutex_unlock(&j->busy_lock);
}

/* The speed limit, a token bucket in bytes: may another copy start now? If not, *wait_ms is
 * lowered to when it may. Copies spend what they send (spend()), so a small copy costs little. */
static bool may_send(struct mirror_job *j, int *wait_ms)
{
    uint64_t speed = atomic_load(&j->speed);
    if (!speed)
        return true;
    uint64_t now = mirror_now_ns();
    j->tokens += (double)(now - j->tokens_ns) * 1e-9 * (double)speed;
    j->tokens_ns = now;
    double cap = (double)speed / 10 + (double)j->o.request_size; /* 100 ms of burst */
    if (j->tokens > cap)
        j->tokens = cap;
    if (j->tokens < 0) {
        int ms = (int)(-j->tokens * 1000 / (double)speed) + 1;
        *wait_ms = ms < *wait_ms ? ms : *wait_ms;
        return false;
    }
    return true;
}

static void spend(struct mirror_job *j, uint64_t bytes)
{
    if (atomic_load(&j->speed))
        j->tokens -= (double)bytes;
}

/* Copy [off, off+len) (claimed blocks first..first+nbits) through slot s. */
/* The data of slot s is in its buffer: send it (as WRITE_ZEROES when all zero). */
static void send_copy(struct mirror_job *j, struct slot *s)
{
    if (j->test_after_read)
        j->test_after_read(j->test_opaque, s->offset, s->len, s->bulk);
    /* All-zero data goes as WRITE_ZEROES where the target has it; otherwise as the (zero)
     * data it is. */
    s->zero = bm_target_can_zero(j->t) && bm_is_zero(s->buf, (size_t)s->len);
    if (!s->zero)
        spend(j, s->len);
    int r = s->zero ? bm_target_zero(j->t, s->offset, s->len, slot_done, s)
                    : bm_target_write(j->t, s->buf, (size_t)s->len, s->offset, 0, slot_done, s);
    if (r < 0)
        slot_done(s, -r);
}

static void read_failed(struct mirror_job *j, struct slot *s, int err)
{
    fail(j, err, "reading the source %s at 0x%llx: %s", bm_disk_path(j->src),
         (unsigned long long)s->offset, strerror(err));
    unclaim(j, s->first_bit, s->nbits);
    s->used = false;
    s->dirty_copy = false;
    j->nused--;
}

/* Copy [off, off+len) (claimed blocks first..first+nbits) through slot s: with --direct and an
 * aligned range, an O_DIRECT read through libaio (sent when it completes, in reap_reads);
 * otherwise a pread from the page cache, sent at once. */
static int copy_range(struct mirror_job *j, struct slot *s, uint64_t off, uint64_t len, bool bulk)
{
    s->offset = off;
    s->len = len;
    s->bulk = bulk;
    s->redirty = !bulk;
    s->used = true;
    j->nused++;
    if (j->rd.inited) { /* a remote source: its readers' threads */
        mirror_readers_submit(j, s);
        return 0;
    }
    if (j->aio && (off | len) % 4096 == 0) {
        struct iocb *p = &s->iocb;
        io_prep_pread(p, j->direct_fd, s->buf, (size_t)len, (long long)off);
        io_set_eventfd(p, j->aio_fd);
        p->data = s;
        s->reading = true;
        if (io_submit(j->aio, 1, &p) == 1)
            return 0;
        s->reading = false; /* fall back to a buffered read */
    }
    int r = bm_disk_pread(j->src, s->buf, (size_t)len, off);
    if (r < 0) {
        read_failed(j, s, -r);
        return r;
    }
    send_copy(j, s);
    return 0;
}

/* Collect finished O_DIRECT reads (at least min of them) and send them, or with send false
 * (the job is ending) just let their slots go. */
static void reaped(struct mirror_job *j, struct slot *s, long res, bool send)
{
    s->reading = false;
    if (!send) {
        unclaim(j, s->first_bit, s->nbits);
        s->used = false;
        s->dirty_copy = false;
        j->nused--;
    } else if (res != (long)s->len) {
        read_failed(j, s, res < 0 ? (int)-res : EIO);
    } else {
        send_copy(j, s);
    }
}

static void reap_reads(struct mirror_job *j, long min, bool send)
{
    if (j->rd.inited) {
        struct slot *s;
        for (bool wait = min > 0; (s = mirror_readers_take(j, wait)) != NULL; wait = false)
            reaped(j, s, s->rres < 0 ? s->rres : (long)s->len, send);
        return;
    }
    if (!j->aio)
        return;
    struct io_event ev[64];
    struct timespec zero = {0, 0};
    for (;;) {
        int n = io_getevents(j->aio, min, 64, ev, min ? NULL : &zero);
        if (n <= 0)
            return;
        for (int i = 0; i < n; i++)
            reaped(j, ev[i].data, (long)ev[i].res, send);
        min = 0;
        if (n < 64)
            return;
    }
}

static unsigned reads_in_flight(const struct mirror_job *j)
{
    unsigned n = 0;
    for (unsigned i = 0; i < j->nslots; i++)
        n += j->slots[i].reading;
    return n;
}

/* One bulk step: the next piece of the allocated-extent walk. Returns false when the walk
 * is over. */
static bool bulk_step(struct mirror_job *j, struct slot *s)
{
    while (j->ext_idx < j->nexts) {
        const struct bm_extent *e = &j->exts[j->ext_idx];
        if (j->bulk_pos < e->offset)
            j->bulk_pos = e->offset;
        if (j->bulk_pos >= e->offset + e->length) {
            j->ext_idx++;
            continue;
        }
        uint64_t off = j->bulk_pos;
        uint64_t len = e->offset + e->length - off;
        bool hole = e->flags & BM_EXTENT_ZERO;
        if (hole) {
            uint64_t until, z = known_zero(j, off, len, &until);
            if (z) { /* the target reads zeroes there already */
                j->bulk_pos += z;
                atomic_store(&j->bulk_frontier, j->bulk_pos);
                continue;
            }
            len = until - off;
            if (len > MAX_ZERO_CHUNK)
                len = MAX_ZERO_CHUNK;
            if (!bm_target_can_zero(j->t) && len > BM_TARGET_ZERO_FALLBACK_MAX)
                len = BM_TARGET_ZERO_FALLBACK_MAX;
        } else if (len > j->o.request_size) {
            len = j->o.request_size;
        }
        uint64_t first = off >> j->shift;
        uint64_t last = (off + len - 1) >> j->shift;
        uint64_t got = claim(j, first, last - first + 1);
        if (got == 0)
            return true; /* a writer holds it: try again later */
        if (got < last - first + 1)
            len = ((first + got) << j->shift) - off;
        s->first_bit = first;
        s->nbits = got;
        j->bulk_pos = off + len;
        atomic_store(&j->bulk_frontier, j->bulk_pos);
        if (hole) {
            s->offset = off;
            s->len = len;
            s->bulk = false; /* zeroing holes is not bulk data */
            s->redirty = true;
            s->zero = true;
            s->used = true;
            j->nused++;
            int r = bm_target_zero(j->t, off, len, slot_done, s);
            if (r < 0)
                slot_done(s, -r);
            return true;
        }
        /* A block written since the job started is dirty; the bulk copy about to read it
         * sends the new data, so it need not travel again as a dirty copy. Clear before
         * reading, as dirty copies do: a write landing after this sets the bit again (a
         * failed copy sets the range again too). Only blocks the range covers whole: the
         * rest of a partly covered block may be a hole, which nothing reads. */
        uint64_t cfirst = (off + (1u << j->shift) - 1) >> j->shift;
        uint64_t cend = off + len == j->size ? bm_bitmap_nbits(j->dirty) : (off + len) >> j->shift;
        if (cend > cfirst)
            bm_bitmap_clear_bits(j->dirty, cfirst, cend - cfirst);
        copy_range(j, s, off, len, true);
        return true;
    }
    return false;
}

/* One dirty step: the next run of dirty blocks not busy. Returns false when none is left. */
static bool dirty_step(struct mirror_job *j, struct slot *s)
{
    uint64_t maxbits = j->o.request_size >> j->shift;
    uint64_t nbits = bm_bitmap_nbits(j->dirty);
    bool wrapped = false;
    uint64_t bit = j->dirty_cursor;
    for (;;) {
        uint64_t count;
        if (!bm_bitmap_next_run(j->dirty, &bit, &count, maxbits)) {
            if (wrapped || j->dirty_cursor == 0) {
                j->dirty_cursor = 0;
                return false;
            }
            wrapped = true;
            j->cur.rounds++;
            bit = 0;
            continue;
        }
        uint64_t got = claim(j, bit, count);
        if (got == 0) {
            bit++;
            if (bit >= nbits) {
                if (wrapped)
                    return false;
                wrapped = true;
                bit = 0;
            }
            continue;
        }
        /* The ordering invariant: clear before reading. A write landing after this sets the
         * bit again and the block is copied again. */
        bm_bitmap_clear_bits(j->dirty, bit, got);
        uint64_t off = bit << j->shift;
        uint64_t end = (bit + got) << j->shift;
        if (end > j->size)
            end = j->size;
        s->first_bit = bit;
        s->nbits = got;
        j->dirty_cursor = bit + got;
        s->dirty_copy = true;
        if (j->held) {
            j->hold_copies++;
            j->hold_last_copy_ns = mirror_now_ns();
            j->hold_reads_left = reads_in_flight(j);
            j->hold_cmds_left = bm_target_in_flight(j->t);
        }
        copy_range(j, s, off, end - off, false);
        return true;
    }
}

/* ---- periodic flushes ---- */

/* The target's final flush has to write back everything it caches; flushing every so often
 * during the copy spreads that work over the copy instead of the switchover. */
#ifndef FLUSH_EVERY /* (the three can be set at build time, to measure other policies) */
#define FLUSH_EVERY (256u << 20)
#endif

static void periodic_flush_done(void *opaque, int err)
{
    struct mirror_job *j = opaque;
    j->flush_in_flight = false;
    atomic_store(&j->flush_busy, false);
    j->flushing = 0;
    if (err)
        bm_warn("mirror: flushing the target failed: %s", strerror(err));
}

/* Flush the target every FLUSH_EVERY bytes or BUSY_FLUSH_NS, whichever comes first, and
 * whenever the job has nothing to copy (at most every IDLE_FLUSH_NS): the target then syncs in
 * the background while the copy goes on, so the flush at completion, which writers wait for,
 * finds at most ~BUSY_FLUSH_NS of copying left to write back (measured at 1 Gbit/s into
 * qemu-nbd: 256 MiB between flushes left a 0.29 s final flush). */
#ifndef IDLE_FLUSH_NS
#define IDLE_FLUSH_NS 100000000ull
#endif
#ifndef BUSY_FLUSH_NS
#define BUSY_FLUSH_NS 250000000ull
#endif
static void maybe_flush(struct mirror_job *j, bool idle)
{
    /* A pivoting completion holds the writers only once no flush is in flight (run_loop), and
     * flushes after the pivot anyway: start none that would delay the hold. */
    if (j->o.pivot && atomic_load(&j->want_complete))
        return;
    if (j->flush_in_flight || j->unflushed == 0 || bm_target_dead(j->t) ||
        atomic_load(&j->quiet_flushes))
        return;
    uint64_t now = mirror_now_ns();
    uint64_t every = idle ? IDLE_FLUSH_NS : BUSY_FLUSH_NS;
    if (j->unflushed < FLUSH_EVERY && now - j->last_flush_ns < every)
        return;
    j->last_flush_ns = now;
    j->flushing = j->unflushed;
    j->unflushed = 0;
    j->flush_in_flight = true;
    atomic_store(&j->flush_busy, true);
    if (bm_target_flush(j->t, periodic_flush_done, j) < 0) {
        j->flush_in_flight = false;
        atomic_store(&j->flush_busy, false);
    }
}

/* ---- the loop ---- */

static uint64_t dirty_bytes(struct mirror_job *j)
{
    uint64_t d = bm_bitmap_dirty_bytes(j->dirty);
    for (unsigned i = 0; i < j->nslots; i++)
        if (j->slots[i].used && j->slots[i].dirty_copy)
            d += j->slots[i].len;
    /* A remote source's writes since the last harvest are not in the bitmap yet: count them
     * at the recent rate, so that readiness and a controller's estimate see them. */
    if (j->remote && j->last_harvest_ns)
        d += (uint64_t)(j->dirty_rate * (double)(mirror_now_ns() - j->last_harvest_ns) * 1e-9);
    return d;
}

/* Harvest a remote source's writes into the dirty bitmap (see remote in mirror-internal.h). */
static int harvest(struct mirror_job *j)
{
    int r = bm_disk_harvest(j->src);
    j->last_harvest_ns = mirror_now_ns();
    if (r < 0)
        fail(j, -r, "cannot tell what was written to %s since the last pass: %s",
             bm_disk_path(j->src), strerror(-r));
    return r;
}

struct tick_state {
    uint64_t last_ns, last_sent, last_dirty, last_cleared, last_active;
    uint64_t capacity; /* best throughput seen, bytes/s */
    double thr, rate;  /* EWMAs */
    unsigned behind, ahead;
    uint64_t last_stats_ns;
};

static void set_mode(struct mirror_job *j, bool wb, const char *why)
{
    if (atomic_load(&j->write_blocking) == wb)
        return;
    atomic_store(&j->write_blocking, wb);
    j->cur.mode_switches++;
    event(j, wb ? "write-blocking" : "background", why);
}

/* Every TICK_MS: rates, readiness, auto mode, stats events. */
static void tick(struct mirror_job *j, struct tick_state *ts, bool bulk_over)
{
    uint64_t now = mirror_now_ns();
    double dt = (double)(now - ts->last_ns) * 1e-9;
    if (dt < TICK_MS * 1e-3)
        return;
    uint64_t sent = j->cur.bytes_sent; /* payload only: zeroing costs the link nothing */
    uint64_t active = atomic_load(&j->active_bytes);
    uint64_t dirty = dirty_bytes(j);
    double thr = (double)(sent - ts->last_sent + active - ts->last_active) / dt;
    double arate = (double)(active - ts->last_active) / dt; /* forwarded by writers */
    /* Newly dirtied = growth of the dirty set + what copies took out of it. */
    double newly = (double)dirty - (double)ts->last_dirty + (double)(j->cleared - ts->last_cleared);
    ts->last_cleared = j->cleared;
    double rate = (newly > 0 ? newly : 0) / dt;
    bool busy = j->nused > 0 || dirty > 0;
    if (busy || thr > 0)
        ts->thr = ts->thr == 0 ? thr : 0.7 * ts->thr + 0.3 * thr;
    ts->rate = 0.7 * ts->rate + 0.3 * rate;
    if (thr > (double)ts->capacity && busy)
        ts->capacity = (uint64_t)thr;
    ts->last_ns = now;
    ts->last_sent = sent;
    ts->last_active = active;
    ts->last_dirty = dirty;
    j->cur.throughput = (uint64_t)ts->thr;
    j->cur.dirty_rate = (uint64_t)ts->rate;
    j->dirty_rate = ts->rate;

    enum mirror_state s = j->cur.state;
    if (bulk_over && (s == MIRROR_DIRTY || s == MIRROR_READY)) {
        double budget = (double)j->o.ready_ms * 1e-3;
        double speed = ts->capacity ? (double)ts->capacity : ts->thr;
        bool fits = dirty == 0 || (speed > 0 && (double)dirty / speed <= budget);
        bool far = speed <= 0 || (double)dirty / speed > 4 * budget;
        if (s == MIRROR_DIRTY && fits)
            mirror_set_state(j, MIRROR_READY, NULL);
        else if (s == MIRROR_READY && far && dirty > 0)
            mirror_set_state(j, MIRROR_DIRTY, "fell behind");
        if (j->o.mode == MIRROR_MODE_AUTO) {
            bool wb = atomic_load(&j->write_blocking);
            /* Not converging: writers dirty as fast as we copy, and the set is not shrinking. */
            if (!wb && !fits && ts->rate >= 0.9 * ts->thr && ts->thr > 0)
                ts->behind++;
            else
                ts->behind = 0;
            /* Writers now need well under what the link can do: background copying will keep
             * up again. */
            if (wb && fits && arate + ts->rate < 0.5 * (double)ts->capacity)
                ts->ahead++;
            else
                ts->ahead = 0;
            if (ts->behind >= AUTO_SWITCH_TICKS) {
                set_mode(j, true, "not converging: writers dirty data as fast as it is copied");
                ts->behind = 0;
            } else if (ts->ahead >= AUTO_SWITCH_TICKS) {
                set_mode(j, false, "converging again: writers slower than the copy");
                ts->ahead = 0;
            }
        }
    }
    if (j->o.stats_ms && now - ts->last_stats_ns >= (uint64_t)j->o.stats_ms * 1000000u) {
        ts->last_stats_ns = now;
        event(j, "stats", NULL);
    } else {
        publish(j);
    }
}

static void flush_cb(void *opaque, int err)
{
    struct flush_wait *w = opaque;
    w->done = true;
    w->err = err;
}

/* Flush the target and wait for the answer (nothing else may be in flight). The record the
 * callback fills is the job's own: a cancelled job may stop waiting before the answer comes,
 * and the callback (run only inside bm_target_poll on this thread, or never once the target
 * is closed) must still find it alive. */
static int flush_target(struct mirror_job *j)
{
    struct flush_wait *w = &j->fw;
    *w = (struct flush_wait){0};
    int r = bm_target_flush(j->t, flush_cb, w);
    if (r < 0)
        return r;
    uint64_t t0 = mirror_now_ns();
    while (!w->done) {
        if (atomic_load(&j->want_cancel) && mirror_now_ns() - t0 > CANCEL_WAIT_NS)
            return -ETIMEDOUT;
        r = bm_target_poll(j->t, NULL, 0, 100);
        if (r < 0 && !w->done)
            return r;
    }
    return -w->err;
}

/* Wait for every command in flight (copies and forwarded writes) to be answered. A cancelled
 * job waits at most CANCEL_WAIT_NS: a target behind a cut link never answers nor resets, and
 * the canceller (a migration rolling back) must not hang on it. Returns false if it gave up. */
static bool drain_target(struct mirror_job *j)
{
    uint64_t t0 = mirror_now_ns();
    while (bm_target_in_flight(j->t) > 0) {
        if (atomic_load(&j->want_cancel) && mirror_now_ns() - t0 > CANCEL_WAIT_NS)
            return false;
        mirror_active_submit(j);
        if (bm_target_poll(j->t, NULL, 0, 100) < 0 && bm_target_in_flight(j->t) > 0 &&
            bm_target_dead(j->t))
            break; /* dead connections answered theirs already; the rest cannot come */
    }
    return true;
}

/* The target connection broke: wait for what is in flight, reconnect with backoff. */
static int recover_target(struct mirror_job *j)
{
    drain_target(j);
    for (unsigned attempt = 1; attempt <= j->o.retries; attempt++) {
        if (atomic_load(&j->want_cancel))
            return -ECANCELED;
        unsigned ms = 100u << (attempt < 5 ? attempt : 5);
        /* Back off, but wake at once for a cancel (mirror_cancel writes wake_fd). */
        struct pollfd pfd = {.fd = j->wake_fd, .events = POLLIN};
        uint64_t deadline = mirror_now_ns() + (uint64_t)ms * 1000000u;
        for (uint64_t now = mirror_now_ns(); now < deadline; now = mirror_now_ns()) {
            if (poll(&pfd, 1, (int)((deadline - now) / 1000000u) + 1) > 0) {
                uint64_t v;
                ssize_t n = read(j->wake_fd, &v, sizeof v);
                (void)n;
            }
            if (atomic_load(&j->want_cancel))
                return -ECANCELED;
        }
        char err[256];
        int r = bm_target_reconnect(j->t, err, sizeof err);
        j->cur.retries++;
        if (r == 0) {
            bm_warn("mirror: reconnected to the target (attempt %u)", attempt);
            event(j, "reconnected", NULL);
            return 0;
        }
        bm_warn("mirror: reconnect %u/%u: %s", attempt, j->o.retries, err);
    }
    fail(j, ECONNRESET, "lost the target %s and could not reconnect after %u attempts", j->uri,
         j->o.retries);
    return -ECONNRESET;
}

static void run_loop(struct mirror_job *j)
{
    struct tick_state ts = {.last_ns = mirror_now_ns()};
    bool bulk_over = false;
    j->tokens_ns = mirror_now_ns();
    mirror_set_state(j, MIRROR_BULK, NULL);
    for (;;) {
        if (j->err)
            return;
        if (atomic_load(&j->want_cancel))
            return;
        /* Past the bulk pass, look for new dirty blocks every DIRTY_POLL_MS (writers do not
         * wake the job): what waits in the bitmap is what a completion must copy last. */
        int wait_ms = bulk_over ? DIRTY_POLL_MS : TICK_MS;
        mirror_active_submit(j);

        /* Completion: from ready, hold the writers, then copy what is left. A pivot holds them
         * for the copy only, so not while a periodic flush is in flight either: the drain
         * below would wait for it, a device barrier as long as the target likes. */
        if (atomic_load(&j->want_complete) && !j->held &&
            (j->cur.state == MIRROR_READY ||
             (atomic_load(&j->complete_now) && j->cur.state == MIRROR_DIRTY)) &&
            !(j->o.pivot && j->flush_in_flight)) {
            bm_disk_hold(j->src);
            j->held = true;
            j->hold_ns = mirror_now_ns();
            j->hold_in_flight = bm_target_in_flight(j->t);
            j->hold_flushing = j->flush_in_flight;
            mirror_set_state(j, MIRROR_COMPLETING, NULL);
            /* A remote source's owner stopped its writers before completing (a QEMU paused
             * at pre-switchover): what they wrote since the last harvest is the rest. */
            if (j->remote && harvest(j) < 0)
                return;
            j->hold_dirty = bm_bitmap_dirty_bytes(j->dirty);
            if (j->remote)
                bm_debug("mirror: %s: last harvest at the hold: %.1f ms, %llu bytes dirty",
                         bm_disk_path(j->src), (double)(mirror_now_ns() - j->hold_ns) / 1e6,
                         (unsigned long long)j->hold_dirty);
        }
        /* A remote source past its bulk pass, out of dirty blocks: harvest what its writers
         * wrote meanwhile, at most every HARVEST_MS (each harvest costs the remote a few
         * commands). */
        if (j->remote && bulk_over && !j->held && j->nused == 0 &&
            bm_bitmap_count(j->dirty) == 0 &&
            mirror_now_ns() - j->last_harvest_ns >= HARVEST_MS * 1000000ull &&
            harvest(j) < 0)
            return;
        bool backoff = mirror_now_ns() < j->backoff_until_ns;
        struct slot *s;
        while (!backoff && !j->err && (s = free_slot(j)) != NULL) {
            if (!bulk_over) {
                if (!may_send(j, &wait_ms))
                    break;
                if (!bulk_step(j, s)) {
                    bulk_over = true;
                    atomic_store(&j->bulk_frontier, UINT64_MAX);
                    continue;
                }
                continue;
            }
            if (j->cur.state == MIRROR_BULK)
                mirror_set_state(j, MIRROR_DIRTY, NULL);
            if (!j->held && !may_send(j, &wait_ms))
                break;
            if (!dirty_step(j, s))
                break;
        }
        if (j->held && bm_disk_changes_in_progress(j->src) == 0 && j->nused == 0 &&
            bm_bitmap_count(j->dirty) == 0 && bm_target_in_flight(j->t) == 0) {
            /* A pivot releases the writers before the final flush (pivot()), a device barrier
             * as long as the target likes; a point-in-time copy flushes inside the hold, its
             * writers being held until the job's owner releases them anyway. */
            if (j->o.pivot) {
                j->drained_ns = mirror_now_ns();
                return;
            }
            uint64_t t_drained = mirror_now_ns();
            if (j->remote)
                bm_debug("mirror: %s: at the hold %u copies, the last sent %.1f ms after it, "
                         "%u reads and %u commands in flight then",
                         bm_disk_path(j->src), j->hold_copies,
                         (double)(j->hold_last_copy_ns - j->hold_ns) / 1e6, j->hold_reads_left,
                         j->hold_cmds_left);
            int r = j->o.skip_final_flush ? 0 : flush_target(j);
            bm_debug("mirror: completion: %.1f ms to copy and drain (at the hold: %llu dirty "
                     "bytes, %u commands in flight%s), final flush %.1f ms",
                     (double)(t_drained - j->hold_ns) / 1e6, (unsigned long long)j->hold_dirty,
                     j->hold_in_flight, j->hold_flushing ? " with a periodic flush" : "",
                     (double)(mirror_now_ns() - t_drained) / 1e6);
            if (r < 0)
                fail(j, -r, "flushing the target: %s", strerror(-r));
            return;
        }
        if (!j->held)
            maybe_flush(j, bulk_over && j->nused == 0 && bm_bitmap_count(j->dirty) == 0);
        if (backoff)
            wait_ms = 20;
        if (j->held && j->nused == 0)
            wait_ms = 1; /* writers that were mid-change are finishing */
        struct pollfd wake[2] = {{.fd = j->wake_fd, .events = POLLIN},
                                 {.fd = j->aio       ? j->aio_fd
                                        : j->rd.inited ? j->rd.fd
                                                       : -1,
                                  .events = POLLIN}};
        int r = bm_target_poll(j->t, wake, 2, wait_ms);
        for (int k = 0; k < 2; k++) {
            if (wake[k].revents & POLLIN) {
                uint64_t v;
                ssize_t n = read(wake[k].fd, &v, sizeof v);
                (void)n;
            }
        }
        if (wake[1].revents & POLLIN)
            reap_reads(j, 0, true);
        if (r < 0 && recover_target(j) < 0)
            return;
        tick(j, &ts, bulk_over);
    }
}

static int setup(struct mirror_job *j, bool *attached)
{
    char err[256];
    struct bm_target_opts to = {.uri = j->uri, .connections = j->o.connections};
    int r = bm_target_open(&to, &j->t, err, sizeof err);
    if (r < 0) {
        fail(j, -r, "%s", err);
        return r;
    }
    if (bm_target_size(j->t) < j->size) {
        fail(j, ENOSPC, "the target (%llu bytes) is smaller than the source (%llu bytes)",
             (unsigned long long)bm_target_size(j->t), (unsigned long long)j->size);
        return -ENOSPC;
    }
    /* Zero ranges of the target let the bulk pass skip zeroing what is zero already. */
    r = bm_target_zero_ranges(j->t, 0, j->size, add_zero_range, j);
    if (r < 0 && r != -ENOTSUP)
        bm_warn("mirror: the target's block status failed; zeroing every hole");
    /* Attach before listing the extents: a write that completes before the listing is in
     * it, one that completes after is in the bitmap. */
    r = bm_disk_attach_bitmap(j->src, j->dirty);
    if (r < 0) {
        fail(j, -r, "cannot track writes on the source: %s", strerror(-r));
        return r;
    }
    *attached = true;
    /* The extents the bulk pass walks, and how much data it copies (for progress). */
    uint64_t pos = 0, alloc = 0;
    size_t cap = 0;
    while (pos < j->size) {
        if (j->nexts == cap) {
            cap = cap ? cap * 2 : 64;
            struct bm_extent *n = realloc(j->exts, cap * sizeof *n);
            if (!n) {
                fail(j, ENOMEM, "out of memory listing the source's extents");
                return -ENOMEM;
            }
            j->exts = n;
        }
        size_t n;
        if (bm_disk_extents(j->src, pos, j->size - pos, j->exts + j->nexts, cap - j->nexts, &n) <
                0 ||
            n == 0) {
            j->exts[j->nexts++] = (struct bm_extent){pos, j->size - pos, 0};
            n = 1;
        } else {
            j->nexts += n;
        }
        for (size_t i = j->nexts - n; i < j->nexts; i++)
            if (!(j->exts[i].flags & BM_EXTENT_ZERO))
                alloc += j->exts[i].length;
        pos = j->exts[j->nexts - 1].offset + j->exts[j->nexts - 1].length;
    }
    j->cur.bulk_total = alloc;
    if (j->o.direct) {
        j->direct_fd = bm_disk_open_direct(j->src);
        if (j->direct_fd < 0) {
            fail(j, -j->direct_fd, "cannot open %s with O_DIRECT: %s", bm_disk_path(j->src),
                 strerror(-j->direct_fd));
            return j->direct_fd;
        }
        j->aio_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        r = j->aio_fd < 0 ? -errno : -io_setup((int)j->nslots, &j->aio);
        if (r < 0) {
            fail(j, -r, "cannot set up libaio: %s", strerror(-r));
            return r;
        }
    }
    if (j->remote && (r = mirror_readers_start(j)) < 0) {
        fail(j, -r, "cannot start the readers of %s: %s", bm_disk_path(j->src), strerror(-r));
        return r;
    }
    struct bm_disk_hooks h = {
        .before = mirror_hook_before, .after = mirror_hook_after, .opaque = j};
    bm_disk_set_hooks(j->src, &h);
    if (j->o.mode == MIRROR_MODE_WRITE_BLOCKING)
        atomic_store(&j->write_blocking, true);
    return 0;
}

/* Drained, pivoting: the writers held at completion, and every later request, go to the
 * target; then the target is flushed, and only then is the job done. Releasing the writers
 * before that flush loses nothing: SOURCE is never written after the pivot and holds every
 * write they were told was durable (their flushes went to it until then), and a flush of theirs
 * after the pivot covers the mirror's copies too (pivot_flush in mirror-pivot.c). */
static void pivot(struct mirror_job *j)
{
    int r = mirror_pivot_start(j);
    if (r < 0) {
        fail(j, -r, "cannot start serving the writers from the target: %s", strerror(-r));
        bm_disk_release(j->src); /* to the source: the target is not their disk */
        j->released = true;
        mirror_set_state(j, MIRROR_FAILED, j->errmsg);
        return;
    }
    bm_disk_release(j->src);
    j->released = true;
    uint64_t t_released = mirror_now_ns();
    r = mirror_pivot_flush(j);
    bm_debug("mirror: completion: writers held %.1f ms (%.1f ms to copy and drain; at the hold: "
             "%llu dirty bytes, %u commands in flight%s), final flush after the pivot %.1f ms",
             (double)(t_released - j->hold_ns) / 1e6, (double)(j->drained_ns - j->hold_ns) / 1e6,
             (unsigned long long)j->hold_dirty, j->hold_in_flight,
             j->hold_flushing ? " with a periodic flush" : "",
             (double)(mirror_now_ns() - t_released) / 1e6);
    if (r < 0) {
        /* The pivot stays: the writers may have written to the target since. */
        fail(j, -r,
             "the target could not be made durable (final flush after the pivot: %s); the "
             "writers' disk stays the target; SOURCE holds everything written up to the switch",
             strerror(-r));
        mirror_set_state(j, MIRROR_FAILED, j->errmsg);
        return;
    }
    mirror_set_state(j, MIRROR_DONE, "pivoted: the writers' disk is now the target");
}

static void *job_main(void *arg)
{
    struct mirror_job *j = arg;
    j->start_ns = mirror_now_ns();
    event(j, "setup", NULL);
    bool attached = false;
    if (setup(j, &attached) == 0)
        run_loop(j);
    /* Stop: let reads in flight land, answer every writer, wait for commands, detach. */
    while (reads_in_flight(j) > 0)
        reap_reads(j, 1, false);
    mirror_readers_stop(j);
    bool drained = j->t ? drain_target(j) : true;
    if (!drained) {
        bm_warn("mirror: the target did not answer within %llu s of the cancel; giving up on it",
                CANCEL_WAIT_NS / 1000000000ull);
        bm_target_abandon(j->t);
    }
    mirror_active_stop(j);
    if (attached) {
        bm_disk_set_hooks(j->src, NULL); /* harmless if never installed */
        bm_disk_detach_bitmap(j->src, j->dirty);
    }
    if (j->err) {
        if (j->held && !j->released) {
            bm_disk_release(j->src);
            j->released = true;
        }
        mirror_set_state(j, MIRROR_FAILED, j->errmsg);
    } else if (atomic_load(&j->want_cancel)) {
        if (j->held && !j->released) {
            bm_disk_release(j->src);
            j->released = true;
        }
        int r = drained && j->t && !bm_target_dead(j->t) ? flush_target(j) : 0;
        if (r == -ETIMEDOUT)
            bm_target_abandon(j->t);
        if (r < 0)
            bm_warn("mirror: flushing the target on cancel: %s", strerror(-r));
        mirror_set_state(j, MIRROR_CANCELLED, NULL);
    } else if (j->o.pivot) {
        pivot(j);
    } else {
        mirror_set_state(j, MIRROR_DONE, NULL);
    }
    if (j->t && !j->pivoted && !(j->o.linger && j->cur.state == MIRROR_DONE)) {
        uint64_t t0 = mirror_now_ns();
        bm_target_close(j->t);
        j->t = NULL;
        bm_debug("mirror: target closed in %.1f ms", (double)(mirror_now_ns() - t0) / 1e6);
    }
    return NULL;
}

void mirror_set_test_hook(struct mirror_job *j,
                          void (*fn)(void *opaque, uint64_t off, uint64_t len, bool bulk),
                          void *opaque)
{
    j->test_after_read = fn;
    j->test_opaque = opaque;
}

int mirror_start(struct mirror_job *j)
{
    int r = pthread_create(&j->thread, NULL, job_main, j);
    if (r)
        return -r;
    j->started = true;
    return 0;
}

void mirror_complete(struct mirror_job *j)
{
    atomic_store(&j->want_complete, true);
    mirror_wake(j);
}

void mirror_complete_now(struct mirror_job *j)
{
    atomic_store(&j->complete_now, true);
    mirror_complete(j);
}

void mirror_quiet_flushes(struct mirror_job *j, bool quiet)
{
    atomic_store(&j->quiet_flushes, quiet);
}

bool mirror_flush_busy(struct mirror_job *j)
{
    return atomic_load(&j->flush_busy);
}

void mirror_cancel(struct mirror_job *j)
{
    atomic_store(&j->want_cancel, true);
    mirror_wake(j);
}

void mirror_set_speed(struct mirror_job *j, uint64_t bytes_per_second)
{
    atomic_store(&j->speed, bytes_per_second);
    mirror_wake(j);
}

void mirror_query(struct mirror_job *j, struct mirror_stats *st)
{
    pthread_mutex_lock(&j->stats_lock);
    *st = j->st;
    pthread_mutex_unlock(&j->stats_lock);
}

enum mirror_state mirror_wait_ended(struct mirror_job *j)
{
    for (;;) {
        struct mirror_stats st;
        mirror_query(j, &st);
        if (st.state >= MIRROR_DONE || !j->started)
            return st.state;
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
}

int mirror_wait(struct mirror_job *j, char *err, size_t errlen)
{
    /* Joined, connections closed. (Returning before the close gains nothing: in the migration
     * benchmark it moved ~10 ms of the pause from the source's disk step to the wait for
     * RESUMED, the destination stopping its NBD server under closing connections.) */
    if (j->started) {
        pthread_join(j->thread, NULL);
        j->started = false;
    }
    if (j->cur.state == MIRROR_DONE)
        return 0;
    if (j->cur.state == MIRROR_CANCELLED)
        return -ECANCELED;
    snprintf(err, errlen, "%s", j->errmsg[0] ? j->errmsg : "the mirror job failed");
    return -(j->err ? j->err : EIO);
}

bool mirror_pivoted(struct mirror_job *j)
{
    return j->pivoted;
}

void mirror_release(struct mirror_job *j)
{
    if (j->held && !j->released) {
        bm_disk_release(j->src);
        j->released = true;
    }
}

void mirror_free(struct mirror_job *j)
{
    if (!j)
        return;
    if (j->started) {
        mirror_cancel(j);
        pthread_join(j->thread, NULL);
    }
    mirror_release(j);
    mirror_pivot_stop(j);
    bm_target_close(j->t);
    if (j->slots)
        for (unsigned i = 0; i < j->nslots; i++)
            free(j->slots[i].buf);
    free(j->slots);
    bm_bitmap_free(j->dirty);
    bm_bitmap_free(j->busy);
    free(j->tz);
    free(j->exts);
    free(j->uri);
    if (j->wake_fd >= 0)
        close(j->wake_fd);
    if (j->aio)
        io_destroy(j->aio);
    if (j->aio_fd >= 0)
        close(j->aio_fd);
    if (j->direct_fd >= 0)
        close(j->direct_fd);
    free(j);
}
