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

#include "common/io.h"
#include "common/log.h"
#include "common/sock.h"
#include "migration/migration.h"
#include "migration/stream.h"
#include "nbd/server.h"
#include "ram/ram.h"

#define MAX_DISK_SIZE (1ull << 50)
/* Extra patience while the peer digests RAM and disks for --verify. */
#define VERIFY_GRACE_MS 600000
/* Progress PINGs go at least every 50 ms and every ACK_BYTES of stream applied. */
#define ACK_BYTES (512u << 10)

struct dest {
    const struct mig_incoming_opts *o;
    struct mig_conn c;
    int lfds[8];
    int nl;
    struct nbd_server *nbd;
    pthread_t nbd_thread;
    bool nbd_running;
    struct vm *vm;
    struct vm_disk disks[VM_MAX_DISKS];
    char paths[VM_MAX_DISKS][4096];
    bool created[VM_MAX_DISKS];
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

static int accept_source(struct dest *d)
{
    struct pollfd pfd[8];
    for (int i = 0; i < d->nl; i++)
        pfd[i] = (struct pollfd){.fd = d->lfds[i], .events = POLLIN};
    uint64_t deadline = d->o->accept_timeout_s
                            ? now_ns() + (uint64_t)d->o->accept_timeout_s * 1000000000u
                            : UINT64_MAX;
    for (;;) {
        if (d->o->stop && *d->o->stop)
            return failf(d, -EINTR, "interrupted while waiting for the source");
        int n = poll(pfd, (nfds_t)d->nl, 100);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return failf(d, -errno, "waiting for the source: %s", strerror(errno));
        if (n == 0 && now_ns() >= deadline)
            return failf(d, -ETIMEDOUT, "no source connected within %u s",
                         d->o->accept_timeout_s);
        for (int i = 0; i < d->nl; i++) {
            if (!(pfd[i].revents & POLLIN))
                continue;
            int fd = accept4(d->lfds[i], NULL, NULL, SOCK_CLOEXEC);
            if (fd < 0)
                continue;
            /* One source per migration: nobody else gets in. */
            for (int k = 0; k < d->nl; k++)
                close(d->lfds[k]);
            d->nl = 0;
            bm_sock_nodelay(fd);
            unsigned t = d->o->peer_timeout_ms;
            struct timeval tv = {t / 1000, (t % 1000) * 1000};
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
            mig_conn_init(&d->c, fd);
            d->c.frame_timeout_ms = (int)t;
            d->last_heard_ns = now_ns();
            return 0;
        }
    }
}

static const char *disk_path(struct dest *d, const char *name, char *buf, size_t len)
{
    for (unsigned i = 0; i < d->o->nmap; i++)
        if (strcmp(d->o->map[i].name, name) == 0)
            return d->o->map[i].path;
    if (!d->o->disk_dir)
        return NULL;
    snprintf(buf, len, "%s/%s.img", d->o->disk_dir, name);
    return buf;
}

int mig_disks_check(struct json_object *disks, char *err, size_t errlen)
{
    if (!json_object_is_type(disks, json_type_array) ||
        json_object_array_length(disks) > VM_MAX_DISKS) {
        snprintf(err, errlen, "the VM description has a bad disk list");
        return -EPROTO;
    }
    size_t n = json_object_array_length(disks);
    for (size_t i = 0; i < n; i++) {
        struct json_object *e = json_object_array_get_idx(disks, i), *jn, *js;
        if (!json_object_object_get_ex(e, "name", &jn) ||
            !json_object_object_get_ex(e, "size", &js) || !json_object_is_type(js, json_type_int)) {
            snprintf(err, errlen, "the VM description has a bad disk entry");
            return -EPROTO;
        }
        const char *name = json_object_get_string(jn);
        int64_t size = json_object_get_int64(js);
        if (!vm_disk_name_ok(name) || size <= 0 || (uint64_t)size > MAX_DISK_SIZE || size % 512) {
            snprintf(err, errlen, "the VM description has a bad disk (name or size)");
            return -EPROTO;
        }
        for (size_t k = 0; k < i; k++) {
            json_object_object_get_ex(json_object_array_get_idx(disks, k), "name", &jn);
            if (strcmp(json_object_get_string(jn), name) == 0) {
                snprintf(err, errlen, "the VM description names disk %s twice", name);
                return -EPROTO;
            }
        }
    }
    return 0;
}

/* Create (with --with-disk) or open (shared storage) the image of each announced disk, once the
 * whole list is known good (nothing is created for a list that is refused). */
static int open_disks(struct dest *d, struct json_object *disks)
{
    int bad = mig_disks_check(disks, d->err, d->errlen);
    if (bad < 0)
        return bad;
    size_t n = json_object_array_length(disks);
    for (size_t i = 0; i < n; i++) {
        struct json_object *e = json_object_array_get_idx(disks, i), *jn, *js;
        json_object_object_get_ex(e, "name", &jn);
        json_object_object_get_ex(e, "size", &js);
        const char *name = json_object_get_string(jn);
        int64_t size = json_object_get_int64(js);
        char buf[4096];
        const char *path = disk_path(d, name, buf, sizeof buf);
        if (!path)
            return failf(d, -ENOENT, "no image path for disk %s (give --disk %s=PATH or "
                                     "--disk-dir)", name, name);
        unsigned k = d->ndisks;
        snprintf(d->paths[k], sizeof d->paths[k], "%s", path);
        if (d->with_disk) {
            int flags = O_RDWR | O_CREAT | O_CLOEXEC | (d->o->force ? 0 : O_EXCL);
            int fd = open(path, flags, 0600);
            if (fd < 0)
                return failf(d, -errno, "cannot create the image of disk %s at %s: %s%s", name,
                             path, strerror(errno),
                             errno == EEXIST ? " (use --force to overwrite it)" : "");
            struct stat sb;
            bool regular = fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode);
            d->created[k] = !d->o->force;
            if (regular && (ftruncate(fd, 0) < 0 || ftruncate(fd, size) < 0)) {
                int e2 = errno;
                close(fd);
                return failf(d, -e2, "cannot size the image %s: %s", path, strerror(e2));
            }
            close(fd);
        }
        struct bm_disk *disk;
        int r = bm_disk_open(path, 0, &disk);
        if (r < 0)
            return failf(d, r, "cannot open the image of disk %s at %s: %s", name, path,
                         strerror(-r));
        snprintf(d->disks[k].name, sizeof d->disks[k].name, "%s", name);
        d->disks[k].disk = disk;
        d->ndisks++;
        if (bm_disk_size(disk) != (uint64_t)size)
            return failf(d, -EINVAL, "the image %s has %llu bytes, the source's disk %s %lld",
                         path, (unsigned long long)bm_disk_size(disk), name, (long long)size);
    }
    return 0;
}

static void *nbd_main(void *arg)
{
    nbd_server_run(arg);
    return NULL;
}

static void stop_nbd(struct dest *d)
{
    if (d->nbd_running) {
        nbd_server_shutdown(d->nbd);
        pthread_join(d->nbd_thread, NULL);
        d->nbd_running = false;
    }
    if (d->nbd) {
        nbd_server_free(d->nbd);
        d->nbd = NULL;
    }
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
    int r = pthread_create(&d->nbd_thread, NULL, nbd_main, d->nbd);
    if (r != 0)
        return failf(d, -r, "cannot start the NBD server: %s", strerror(r));
    d->nbd_running = true;
    return 0;
}

/* --max-ram and --max-disk: what this host agreed to take, checked before anything is made. */
static int check_limits(struct dest *d, struct json_object *vmd, struct json_object *disks)
{
    struct json_object *jr, *e, *js;
    if (d->o->max_ram && json_object_object_get_ex(vmd, "ram", &jr) &&
        json_object_is_type(jr, json_type_int) &&
        (uint64_t)json_object_get_int64(jr) > d->o->max_ram)
        return failf(d, -EFBIG, "the VM has %lld bytes of RAM, more than --max-ram %llu",
                     (long long)json_object_get_int64(jr), (unsigned long long)d->o->max_ram);
    if (!d->o->max_disk || !d->with_disk || !json_object_is_type(disks, json_type_array))
        return 0;
    uint64_t total = 0;
    for (size_t i = 0; i < json_object_array_length(disks); i++) {
        e = json_object_array_get_idx(disks, i);
        if (json_object_object_get_ex(e, "size", &js) && json_object_is_type(js, json_type_int) &&
            json_object_get_int64(js) > 0) {
            uint64_t size = (uint64_t)json_object_get_int64(js);
            total = size > UINT64_MAX - total ? UINT64_MAX : total + size;
        }
    }
    if (total > d->o->max_disk)
        return failf(d, -EFBIG,
                     "the VM's disks are %llu bytes in all, more than --max-disk %llu",
                     (unsigned long long)total, (unsigned long long)d->o->max_disk);
    return 0;
}

static int hello(struct dest *d)
{
    uint32_t type, len;
    uint8_t *pl;
    int r = mig_send_header(&d->c);
    if (r == 0)
        r = mig_recv_header(&d->c, (int)d->o->peer_timeout_ms);
    if (r < 0)
        return failf(d, r, "the peer is not a blkmig source: %s", strerror(-r));
    r = mig_recv(&d->c, (int)d->o->peer_timeout_ms, &type, &pl, &len);
    if (r < 0)
        return failf(d, r, "no HELLO from the source: %s", strerror(-r));
    struct json_object *h = type == MIG_HELLO ? mig_parse_json(pl, len) : NULL, *vmd, *x;
    if (!h || !json_object_object_get_ex(h, "vm", &vmd) ||
        !json_object_object_get_ex(vmd, "disks", &x)) {
        json_object_put(h);
        return failf(d, -EPROTO, "the source's first frame is not a valid HELLO");
    }
    struct json_object *wd, *vf;
    d->with_disk = json_object_object_get_ex(h, "with_disk", &wd) && json_object_get_boolean(wd);
    d->verify = json_object_object_get_ex(h, "verify", &vf) && json_object_get_boolean(vf);
    r = check_limits(d, vmd, x);
    if (r == 0)
        r = open_disks(d, x);
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
            break;
        case MIG_COMPLETE:
            if (d->o->at_complete)
                d->o->at_complete(d->o->opaque);
            if (test_fault("dest-exit-on-complete"))
                _exit(9);
            while (test_fault("dest-hang-on-complete"))
                pause();
            *complete = mig_parse_json(pl, len);
            if (!*complete)
                return failf(d, -EPROTO, "a malformed COMPLETE from the source");
            if (!d->state)
                return failf(d, -EPROTO, "COMPLETE before the VM state");
            if (test_fault("dest-miss-ram-record"))
                d->pages--; /* as if one record had not arrived */
            return 0;
        case MIG_ABORT: {
            struct json_object *o = mig_parse_json(pl, len), *x;
            failf(d, -ECONNABORTED, "the source gave up: %s",
                  o && json_object_object_get_ex(o, "reason", &x) ? json_object_get_string(x)
                                                                  : "(no reason)");
            json_object_put(o);
            return -ECONNABORTED;
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
    for (unsigned k = 0; k < d->ndisks; k++) {
        bm_disk_close(d->disks[k].disk);
        if (d->created[k])
            unlink(d->paths[k]);
    }
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
    struct nbd_server_config cfg = {.max_connections = 64, .threads_per_conn = 16,
                                    .hide_exports = true};
    d.nbd = nbd_server_new(&cfg);
    r = d.nbd ? nbd_server_listen_tcp(d.nbd, o->host, o->nbd_port) : -ENOMEM;
    if (r < 0) {
        failf(&d, r, "cannot serve NBD on port %s: %s", o->nbd_port, strerror(-r));
        goto fail;
    }
    if (o->listening)
        o->listening(o->opaque);
    uint64_t t0 = 0;
    struct json_object *complete = NULL;
    if ((r = accept_source(&d)) < 0)
        goto fail;
    t0 = now_ns();
    if ((r = hello(&d)) < 0 || (r = receive(&d, &complete)) < 0)
        goto fail;
    /* The source's mirrors flushed and finished: no NBD writes after this. */
    uint64_t t_c = now_ns();
    stop_nbd(&d);
    uint64_t t_nbd = now_ns();
    r = d.vm->ops->load_state(d.vm, d.state, d.state_len);
    bm_info("incoming: COMPLETE: NBD server stopped in %.1f ms, state loaded in %.1f ms",
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
    r = vm_resume(d.vm);
    if (r < 0) {
        bm_error("incoming: RESUMED was sent but the VM does not resume: %s", strerror(-r));
        failf(&d, r, "the VM failed to resume");
        goto fail;
    }
    report_gap(&d);
    mig_conn_close(&d.c);
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
    free(d.state);
    bm_bitmap_free(d.loaded);
    return 0;
fail:
    bm_error("incoming: %s; discarding what was received", err);
    discard(&d);
    for (int k = 0; k < d.nl; k++)
        close(d.lfds[k]);
    mig_conn_close(&d.c);
    free(d.state);
    bm_bitmap_free(d.loaded);
    return r < 0 ? r : -EIO;
}
