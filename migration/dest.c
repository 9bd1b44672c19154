/* dest.c: the destination: receive the VM description, its disks over NBD, RAM and state. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/imagelock.h"
#include "common/io.h"
#include "common/log.h"
#include "common/sock.h"
#include "migration/accept.h"
#include "migration/dest-internal.h"
#include "migration/qemu-migration.h"
#include "migration/migration.h"
#include "migration/stream.h"
#include "nbd/server.h"
#include "ram/ram.h"

/* Extra patience while the peer digests RAM and disks for --verify. */
#define VERIFY_GRACE_MS 600000
/* Progress PINGs go at least every 50 ms and every ACK_BYTES of stream applied. */
#define ACK_BYTES (128u << 10)

struct dest {
    const struct mig_incoming_opts *o;
    struct mig_conn c;
    int lfds[8];
    int nl;
    struct nbd_server *nbd;
    pthread_t nbd_thread;
    bool nbd_running;
    int nbd_result; /* nbd_server_run's, once nbd_thread is joined */
    struct vm *vm;
    struct mig_images images; /* they own the disks until the VM runs here */
    struct vm_disk disks[VM_MAX_DISKS];
    unsigned ndisks;
    bool with_disk, verify;
    uint8_t *state;
    uint32_t state_len;
    uint64_t pages, last_ping_ns, last_heard_ns, last_ping_bytes;
    struct bm_bitmap *loaded; /* RAM pages written by the stream so far */
    char *err;
    size_t errlen;
};

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int failf(struct dest *d, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int failf(struct dest *d, int r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->err, d->errlen, fmt, ap);
    va_end(ap);
    return r;
}

/* Per connection, the time to send the stream header and HELLO: a stray holds nothing for
 * longer than this (nor for longer than the peer timeout, as before). */
#define HELLO_TIMEOUT_MS 5000u
/* The migration's NBD server: a connection's time to negotiate, how many may negotiate at
 * once, and how long requests may still run after COMPLETE (the source has none then: its
 * mirrors flushed and finished; it is also kept under half the peer timeout, which the
 * source waits for RESUMED). */
#define NBD_HANDSHAKE_MS    10000u
#define NBD_MAX_NEGOTIATING 16u
#define NBD_DRAIN_MS        5000u

/* Wait for the source: the first connection that sends a valid HELLO (migration/accept.c);
 * strays are dropped and listening goes on. Then nobody else gets in. */
static int accept_source(struct dest *d, struct json_object **hello)
{
    unsigned t = d->o->peer_timeout_ms;
    struct mig_accept_opts ao = {
        .lfds = d->lfds,
        .nl = d->nl,
        .hello_timeout_ms = t < HELLO_TIMEOUT_MS ? t : HELLO_TIMEOUT_MS,
        .deadline_ns = d->o->accept_timeout_s
                           ? now_ns() + (uint64_t)d->o->accept_timeout_s * 1000000000u
                           : UINT64_MAX,
        .stop = d->o->stop,
    };
    int fd;
    uint64_t bytes_in;
    int r = mig_accept_hello(&ao, &fd, hello, &bytes_in, d->err, d->errlen);
    if (r == -ETIMEDOUT)
        return failf(d, r, "no source connected within %u s", d->o->accept_timeout_s);
    if (r < 0)
        return r;
    for (int k = 0; k < d->nl; k++)
        close(d->lfds[k]);
    d->nl = 0;
    bm_sock_nodelay(fd);
    struct timeval tv = {t / 1000, (t % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    mig_conn_init(&d->c, fd);
    d->c.frame_timeout_ms = (int)t;
    /* The source counts our progress in stream bytes, its header and HELLO included. */
    d->c.bytes_sent = MIG_STREAM_HDR;
    d->c.bytes_received = bytes_in;
    d->last_heard_ns = now_ns();
    return 0;
}

/* The images of the announced disks (dest-images.c), as the VM's disks. */
static int open_images(struct dest *d, struct json_object *disks)
{
    int r = mig_images_open(&d->images, d->o, d->with_disk, disks, d->err, d->errlen);
    if (r < 0)
        return r;
    for (unsigned k = 0; k < d->images.n; k++) {
        memcpy(d->disks[k].name, d->images.img[k].name, sizeof d->disks[k].name);
        d->disks[k].disk = d->images.img[k].disk;
    }
    d->ndisks = d->images.n;
    return 0;
}

static void *nbd_main(void *arg)
{
    struct dest *d = arg;
    d->nbd_result = nbd_server_run(d->nbd);
    return NULL;
}

/* Stop the NBD server: every connection shut down, its threads gone, its last request done
 * or dropped. -ETIMEDOUT when some request did not finish within the drain timeout (someone
 * other than the source, whose mirrors had flushed and finished, was still writing). */
static int stop_nbd(struct dest *d)
{
    int r = 0;
    if (d->nbd_running) {
        nbd_server_shutdown(d->nbd);
        pthread_join(d->nbd_thread, NULL);
        d->nbd_running = false;
        r = d->nbd_result;
    }
    if (d->nbd) {
        nbd_server_free(d->nbd);
        d->nbd = NULL;
    }
    return r;
}

static int serve_disks(struct dest *d, struct json_object *ack)
{
    struct json_object *ex = json_object_new_object();
    json_object_object_add(ack, "exports", ex);
    for (unsigned k = 0; k < d->ndisks; k++) {
        uint8_t rnd[16];
        if (getrandom(rnd, sizeof rnd, 0) != sizeof rnd)
            return failf(d, -EIO, "no randomness for the export names");
        char name[64];
        for (int i = 0; i < 16; i++)
            snprintf(name + 2 * i, 3, "%02x", rnd[i]);
        snprintf(name + 32, sizeof name - 32, "-%s", d->disks[k].name);
        int r = nbd_server_add_export(d->nbd, name, "blkmig incoming migration",
                                      d->disks[k].disk, false);
        if (r < 0)
            return failf(d, r, "cannot export disk %s: %s", d->disks[k].name, strerror(-r));
        json_object_object_add(ex, d->disks[k].name, json_object_new_string(name));
    }
    int r = pthread_create(&d->nbd_thread, NULL, nbd_main, d);
    if (r != 0)
        return failf(d, -r, "cannot start the NBD server: %s", strerror(r));
    d->nbd_running = true;
    return 0;
}

/* Act on the source's HELLO (checked by accept_source: it has vm.disks); puts h. */
static int hello(struct dest *d, struct json_object *h)
{
    struct json_object *vmd, *x;
    json_object_object_get_ex(h, "vm", &vmd);
    json_object_object_get_ex(vmd, "disks", &x);
    int r;
    struct json_object *wd, *vf;
    d->with_disk = json_object_object_get_ex(h, "with_disk", &wd) && json_object_get_boolean(wd);
    d->verify = json_object_object_get_ex(h, "verify", &vf) && json_object_get_boolean(vf);
    /* What this host agreed to take, checked before anything is made. */
    r = mig_dest_check_ram(d->o, vmd, d->err, d->errlen);
    if (r == 0)
        r = open_images(d, x);
    if (r == 0) {
        d->vm = d->o->factory(d->o->opaque, vmd, d->disks, d->ndisks, d->err, d->errlen);
        if (!d->vm)
            r = -EINVAL;
    }
    json_object_put(h);
    if (r < 0)
        return r;
    struct json_object *ack = json_object_new_object();
    json_object_object_add(ack, "nbd_port", json_object_new_int(atoi(d->o->nbd_port)));
    if (d->with_disk)
        r = serve_disks(d, ack);
    if (r == 0 && (r = mig_send_json(&d->c, MIG_HELLO_ACK, ack)) < 0)
        failf(d, r, "answering the source: %s", strerror(-r));
    json_object_put(ack);
    return r;
}

static bool hello_is_qemu(struct json_object *h)
{
    struct json_object *vmd, *k;
    return json_object_object_get_ex(h, "vm", &vmd) &&
           json_object_object_get_ex(vmd, "kind", &k) && json_object_is_type(k, json_type_string) &&
           strcmp(json_object_get_string(k), "qemu") == 0;
}

/* Fault injection for the test suite only: BLKMIG_TEST_FAULT names one. */
static bool test_fault(const char *name)
{
    const char *f = getenv("BLKMIG_TEST_FAULT");
    return f && strcmp(f, name) == 0;
}

/* Receive RAM and state until COMPLETE; returns the COMPLETE object. */
static int receive(struct dest *d, struct json_object **complete)
{
    for (;;) {
        if (d->o->stop && *d->o->stop)
            return failf(d, -EINTR, "interrupted (signal) while receiving the VM");
        /* Keepalive, and progress: how much of the stream is received and applied, so the
         * source knows what is still in flight in the socket buffers. */
        uint64_t now = now_ns();
        if (now - d->last_ping_ns >= 50000000ull ||
            d->c.bytes_received - d->last_ping_bytes >= ACK_BYTES) {
            d->last_ping_ns = now;
            d->last_ping_bytes = d->c.bytes_received;
            uint8_t got[8];
            bm_put_be64(got, d->c.bytes_received);
            if (mig_send(&d->c, MIG_PING, got, sizeof got) < 0)
                return failf(d, -ECONNRESET, "the source went away");
        }
        uint32_t type, len;
        uint8_t *pl;
        /* Wake every 50 ms to report progress even while the source is quiet; silence longer
         * than the peer timeout is a lost source. After STATE, a --verify source digests
         * everything before COMPLETE, silently. */
        uint64_t t = (uint64_t)d->o->peer_timeout_ms + (d->state && d->verify ? VERIFY_GRACE_MS : 0);
        int r = mig_recv(&d->c, 50, &type, &pl, &len);
        if (r == -ETIMEDOUT && !d->c.partial) {
            if (now_ns() - d->last_heard_ns <= t * 1000000u)
                continue;
            return failf(d, r, "no word from the source for %llu ms (link lost?)",
                         (unsigned long long)t);
        }
        if (r == -ETIMEDOUT)
            return failf(d, r, "a frame from the source stalled halfway for %u ms (link lost?)",
                         d->o->peer_timeout_ms);
        if (r == -EBADMSG)
            return failf(d, r, "a frame from the source failed its checksum");
        if (r < 0)
            return failf(d, r, "the source's stream broke: %s",
                         r == -ECONNRESET ? "connection closed (source gone?)" : strerror(-r));
        d->last_heard_ns = now_ns();
        switch (type) {
        case MIG_PING:
            break;
        case MIG_RAM:
        case MIG_RAM_ZLIB:
            if (!d->loaded && !(d->loaded = bm_bitmap_new(vm_ram_end(d->vm), VM_PAGE_SIZE)))
                return failf(d, -ENOMEM, "out of memory");
            r = type == MIG_RAM ? ram_apply(d->vm, d->loaded, pl, len, &d->pages)
                                : ram_apply_zlib(d->vm, d->loaded, pl, len, &d->pages);
            if (r < 0)
                return failf(d, r, "a malformed RAM frame from the source");
            break;
        case MIG_STATE:
            free(d->state);
            d->state = malloc(len ? len : 1);
            if (!d->state)
                return failf(d, -ENOMEM, "out of memory");
            memcpy(d->state, pl, len);
            d->state_len = len;
            /* Acknowledge it at once: a --verify source waits for this before it digests. */
            d->last_ping_ns = 0;
            break;
        case MIG_COMPLETE:
            if (d->o->at_complete)
                d->o->at_complete(d->o->opaque);
            if (test_fault("dest-exit-on-complete"))
                _exit(9);
            while (test_fault("dest-hang-on-complete"))
                pause();
            if (!d->state)
                return failf(d, -EPROTO, "COMPLETE before the VM state");
            *complete = mig_parse_json(pl, len);
            if (!*complete)
                return failf(d, -EPROTO, "a malformed COMPLETE from the source");
            if (test_fault("dest-miss-ram-record"))
                d->pages--; /* as if one record had not arrived */
            return 0;
        case MIG_ABORT: {
            char reason[256];
            return failf(d, -ECONNABORTED, "the source gave up: %s",
                         mig_abort_reason(pl, len, reason, sizeof reason));
        }
        default:
            return failf(d, -EPROTO, "an unexpected %s frame from the source",
                         mig_frame_name(type));
        }
    }
}

static int compare_digests(struct dest *d, struct json_object *want, uint64_t *ms)
{
    uint64_t t = now_ns();
    struct json_object *have = mig_digest_vm(d->vm);
    *ms = (now_ns() - t) / 1000000u;
    if (have && test_fault("dest-bad-digest"))
        json_object_object_add(have, "ram", json_object_new_string("0"));
    if (!have)
        return failf(d, -ENOMEM, "verify: out of memory");
    struct json_object *a, *b;
    int r = 0;
    /* want came from the source: a digest there may be null or not a string. */
    if (!json_object_object_get_ex(want, "ram", &a) ||
        !json_object_object_get_ex(have, "ram", &b) || !json_object_is_type(a, json_type_string) ||
        strcmp(json_object_get_string(a), json_object_get_string(b)) != 0)
        r = failf(d, -EILSEQ, "verify: guest RAM differs from the source's");
    struct json_object *wd, *hd;
    if (r == 0 && json_object_object_get_ex(want, "disks", &wd) &&
        json_object_object_get_ex(have, "disks", &hd)) {
        for (unsigned k = 0; k < d->ndisks && r == 0; k++) {
            if (!json_object_object_get_ex(wd, d->disks[k].name, &a) ||
                !json_object_object_get_ex(hd, d->disks[k].name, &b) ||
                strcmp(json_object_get_string(b), "read-error") == 0 ||
                !json_object_is_type(a, json_type_string) ||
                strcmp(json_object_get_string(a), json_object_get_string(b)) != 0)
                r = failf(d, -EILSEQ, "verify: disk %s differs from the source's",
                          d->disks[k].name);
        }
    }
    json_object_put(have);
    return r;
}

static void report_gap(struct dest *d)
{
    /* Wait (briefly: 1 s) for the guest's first heartbeat here, and pass its gap to the source.
     * The gap is the guest's own figure, so looking every 10 ms loses nothing; faster polling
     * only takes CPU from the guest just resumed. */
    int64_t gap = 0;
    for (int i = 0; i < 100 && gap == 0; i++) {
        struct json_object *q = d->vm->ops->query(d->vm), *x;
        if (json_object_object_get_ex(q, "last_resume_gap_ns", &x))
            gap = json_object_get_int64(x);
        json_object_put(q);
        if (gap == 0) {
            struct timespec ts = {0, 10000000};
            nanosleep(&ts, NULL);
        }
    }
    struct json_object *r = json_object_new_object();
    json_object_object_add(r, "guest_gap_ns", json_object_new_int64(gap));
    mig_send_json(&d->c, MIG_REPORT, r);
    json_object_put(r);
}

static void discard(struct dest *d)
{
    if (d->c.fd >= 0) {
        struct json_object *a = json_object_new_object();
        json_object_object_add(a, "reason", json_object_new_string(d->err));
        struct timeval tv = {1, 0};
        setsockopt(d->c.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        mig_send_json(&d->c, MIG_ABORT, a);
        json_object_put(a);
    }
    stop_nbd(d);
    vm_destroy(d->vm);
    d->vm = NULL;
    mig_images_discard(&d->images);
    d->ndisks = 0;
}

int mig_incoming_run(const struct mig_incoming_opts *o, struct mig_incoming_result *res,
                     char *err, size_t errlen)
{
    struct dest d = {.o = o, .err = err, .errlen = errlen};
    d.c.fd = -1;
    err[0] = '\0';
    int r = bm_listen_tcp(o->host, o->port, d.lfds, 8);
    if (r < 0)
        return failf(&d, r, "cannot listen on %s:%s: %s", o->host ? o->host : "*", o->port,
                     strerror(-r));
    d.nl = r;
    /* Only the source knows the export names: a connection that has negotiated one is the
     * source's, and those have the 64 slots; strangers that never get that far share a small
     * pool, oldest (silent first) evicted, and a short handshake time (docs/architecture.md). */
    struct nbd_server_config cfg = {
        .max_connections = 64,
        .threads_per_conn = 16,
        .hide_exports = true,
        .handshake_timeout_ms = NBD_HANDSHAKE_MS,
        .max_negotiating = NBD_MAX_NEGOTIATING,
        .drain_timeout_ms =
            o->peer_timeout_ms / 2 < NBD_DRAIN_MS ? o->peer_timeout_ms / 2 : NBD_DRAIN_MS,
    };
    d.nbd = nbd_server_new(&cfg);
    r = d.nbd ? nbd_server_listen_tcp(d.nbd, o->host, o->nbd_port) : -ENOMEM;
    if (r < 0) {
        failf(&d, r, "cannot serve NBD on port %s: %s", o->nbd_port, strerror(-r));
        goto fail;
    }
    if (o->listening)
        o->listening(o->opaque);
    uint64_t t0 = 0;
    struct json_object *complete = NULL, *h = NULL;
    if ((r = accept_source(&d, &h)) < 0)
        goto fail;
    t0 = now_ns();
    if (hello_is_qemu(h)) {
        /* QEMU serves the disks itself, on this port (dest-qemu.c). */
        stop_nbd(&d);
        r = mig_qemu_incoming(o, &d.c, h, res, err, errlen);
        mig_conn_close(&d.c);
        return r;
    }
    if ((r = hello(&d, h)) < 0 || (r = receive(&d, &complete)) < 0)
        goto fail;
    /* The source's mirrors finished, every write answered: no NBD request may run after this.
     * Quiescing is enough for that; the server is stopped once the guest runs (its
     * connections' threads take 1-2 ms each to end: a third of a pause on a fast link). */
    uint64_t t_c = now_ns();
    if ((r = d.nbd ? nbd_server_quiesce(d.nbd, cfg.drain_timeout_ms) : 0) < 0) {
        if (r == -ETIMEDOUT)
            failf(&d, r,
                  "a request on the migration's NBD port was still unfinished after the "
                  "source's COMPLETE (another client?); its connection was shut down");
        else
            failf(&d, r, "the migration's NBD server failed: %s", strerror(-r));
        json_object_put(complete);
        goto fail;
    }
    uint64_t t_nbd = now_ns();
    r = d.vm->ops->load_state(d.vm, d.state, d.state_len);
    bm_info("incoming: COMPLETE: NBD server quiesced in %.1f ms, state loaded in %.1f ms",
            (double)(t_nbd - t_c) / 1e6, (double)(now_ns() - t_nbd) / 1e6);
    if (r < 0) {
        failf(&d, r, "cannot load the VM state");
        json_object_put(complete);
        goto fail;
    }
    uint64_t digest_ms = 0;
    struct json_object *want, *rp;
    bool verified = false;
    /* Every RAM record the source sent was applied here (frames carry checksums; this catches
     * a frame lost or skipped as a whole). */
    if (json_object_object_get_ex(complete, "ram_pages", &rp) &&
        (!json_object_is_type(rp, json_type_int) ||
         (uint64_t)json_object_get_int64(rp) != d.pages)) {
        failf(&d, -EILSEQ, "the source sent %lld RAM records, %llu were applied here",
              (long long)json_object_get_int64(rp), (unsigned long long)d.pages);
        json_object_put(complete);
        goto fail;
    }
    if (json_object_object_get_ex(complete, "digests", &want)) {
        r = compare_digests(&d, want, &digest_ms);
        if (r < 0) {
            json_object_put(complete);
            goto fail;
        }
        verified = true;
    }
    json_object_put(complete);
    /* Everything the guest wrote has arrived (the mirrors' writes were all answered before
     * COMPLETE, and the NBD server has stopped): the guest may run on it. Making it durable
     * is a device barrier of unknown length, and waits until after the resume (DURABLE): the
     * source keeps its own, flushed images until then (docs/migration-stream.md, 7). */
    if ((r = mig_images_lock_shared(&d.images, err, errlen)) < 0)
        goto fail;
    struct json_object *rs = json_object_new_object();
    json_object_object_add(rs, "digest_ms", json_object_new_int64((int64_t)digest_ms));
    json_object_object_add(rs, "verified", json_object_new_boolean(verified));
    /* RESUMED goes first: if it cannot be sent, the VM does not run here. */
    r = mig_send_json(&d.c, MIG_RESUMED, rs);
    json_object_put(rs);
    if (r < 0) {
        failf(&d, r, "cannot tell the source RESUMED: %s", strerror(-r));
        goto fail;
    }
    mig_images_keep(&d.images); /* the VM is the source's no more: never remove its disks */
    if (test_fault("dest-exit-before-durable"))
        _exit(9); /* a crash after RESUMED, with the images not flushed nor in place */
    r = vm_resume(d.vm);
    if (r < 0) {
        bm_error("incoming: RESUMED was sent but the VM does not resume: %s", strerror(-r));
        failf(&d, r, "the VM failed to resume");
        goto fail;
    }
    uint64_t t_res = now_ns();
    /* Durable: flushed, and each new image at its name. A guest FLUSH meanwhile is a flush of
     * the same files, so it covers everything that arrived before it too. */
    char derr[1024] = "";
    int dr = mig_images_durable(&d.images, derr, sizeof derr);
    uint64_t flush_ms = (now_ns() - t_res) / 1000000u;
    if (dr < 0)
        bm_error("incoming: the VM runs, but its disks are not durable in place: %s", derr);
    else
        bm_info("incoming: disks durable and in place %llu ms after the resume",
                (unsigned long long)flush_ms);
    struct json_object *du = json_object_new_object();
    json_object_object_add(du, "ok", json_object_new_boolean(dr == 0));
    json_object_object_add(du, "flush_ms", json_object_new_int64((int64_t)flush_ms));
    if (dr < 0)
        json_object_object_add(du, "error", json_object_new_string(derr));
    mig_send_json(&d.c, MIG_DURABLE, du);
    json_object_put(du);
    report_gap(&d);
    mig_conn_close(&d.c);
    stop_nbd(&d); /* quiesced before the state loaded: only its connections are left to end */
    res->vm = d.vm;
    res->ndisks = d.ndisks;
    for (unsigned k = 0; k < d.ndisks; k++)
        res->disks[k] = d.disks[k].disk;
    res->stats = json_object_new_object();
    json_object_object_add(res->stats, "total_ms",
                           json_object_new_int64((int64_t)((now_ns() - t0) / 1000000u)));
    json_object_object_add(res->stats, "ram_pages", json_object_new_int64((int64_t)d.pages));
    json_object_object_add(res->stats, "verified", json_object_new_boolean(verified));
    json_object_object_add(res->stats, "digest_ms", json_object_new_int64((int64_t)digest_ms));
    json_object_object_add(res->stats, "durable", json_object_new_boolean(dr == 0));
    json_object_object_add(res->stats, "durable_ms", json_object_new_int64((int64_t)flush_ms));
    free(d.state);
    bm_bitmap_free(d.loaded);
    return 0;
fail:
    /* err is the caller's to report (once). */
    discard(&d);
    for (int k = 0; k < d.nl; k++)
        close(d.lfds[k]);
    mig_conn_close(&d.c);
    free(d.state);
    bm_bitmap_free(d.loaded);
    return r < 0 ? r : -EIO;
}
