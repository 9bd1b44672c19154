/* source.c: the source side: handshake, disk mirrors and RAM pre-copy under the controller. */
#include <config.h>

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>

#include "common/io.h"
#include "common/log.h"
#include "common/sock.h"
#include "migration/controller.h"
#include "migration/qemu-migration.h"
#include "migration/source-internal.h"


void mig_params_default(struct mig_params *p)
{
    memset(p, 0, sizeof *p);
    p->downtime_limit_ms = 300;
    p->order = MIG_ORDER_JOINT;
    p->max_time_s = 600;
    p->peer_timeout_ms = 10000;
    p->connections = 4;
}

int mig_parse_uri(const char *uri, struct mig_params *p)
{
    if (!uri || strncmp(uri, "tcp:", 4) != 0)
        return -EINVAL;
    const char *hp = uri + 4, *colon = strrchr(hp, ':');
    if (!colon || colon == hp || (size_t)(colon - hp) >= sizeof p->host ||
        strlen(colon + 1) == 0 || strlen(colon + 1) >= sizeof p->port)
        return -EINVAL;
    for (const char *c = colon + 1; *c; c++)
        if (*c < '0' || *c > '9')
            return -EINVAL;
    memcpy(p->host, hp, (size_t)(colon - hp));
    p->host[colon - hp] = '\0';
    snprintf(p->port, sizeof p->port, "%s", colon + 1);
    return 0;
}

const char *mig_status_name(enum mig_status s)
{
    static const char *const n[] = {"setup",     "active",    "switchover", "completed",
                                    "failed",    "cancelled", "unknown"};
    return s <= MIG_UNKNOWN ? n[s] : "?";
}

uint64_t mig_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static uint64_t since_ms(uint64_t t0)
{
    return (mig_now_ns() - t0) / 1000000u;
}

void mig_publish(struct mig_source *m)
{
    m->w.elapsed_ms = since_ms(m->t0_ns);
    m->w.stream_bytes = m->c.bytes_sent;
    pthread_mutex_lock(&m->mu);
    m->st = m->w;
    pthread_mutex_unlock(&m->mu);
}

static struct json_object *stats_json(const struct mig_stats *s)
{
    struct json_object *o = json_object_new_object(), *r = json_object_new_object(),
                       *d = json_object_new_object(), *p = json_object_new_object();
#define I(obj, k, v) json_object_object_add(obj, k, json_object_new_int64((int64_t)(v)))
    json_object_object_add(o, "status", json_object_new_string(mig_status_name(s->status)));
    json_object_object_add(o, "phase", json_object_new_string(s->phase ? s->phase : ""));
    I(o, "elapsed_ms", s->elapsed_ms);
    I(o, "setup_ms", s->setup_ms);
    I(o, "total_ms", s->total_ms);
    I(o, "ram_start_ms", s->ram_start_ms);
    I(o, "downtime_ms", s->downtime_ms);
    I(o, "expected_downtime_ms", s->expected_downtime_ms);
    if (s->guest_downtime_us >= 0)
        json_object_object_add(o, "guest_downtime_ms",
                               json_object_new_double((double)s->guest_downtime_us / 1000.0));
    I(p, "ram_ms", s->pause_ram_ms);
    I(p, "disk_ms", s->pause_disk_ms);
    I(p, "state_ms", s->pause_state_ms);
    I(p, "resume_ms", s->pause_resume_ms);
    json_object_object_add(o, "pause", p);
    I(o, "pre_pause_flush_ms", s->pre_pause_flush_ms);
    I(o, "source_digest_ms", s->src_digest_ms);
    I(o, "dest_digest_ms", s->dst_digest_ms);
    json_object_object_add(o, "verified", json_object_new_boolean(s->verified));
    if (s->resumed_ms) {
        I(o, "resumed_ms", s->resumed_ms);
        json_object_object_add(o, "durable", json_object_new_boolean(s->durable == 1));
        if (s->durable_ms)
            I(o, "durable_ms", s->durable_ms);
        if (s->durable == 1)
            I(o, "dest_flush_ms", s->dest_flush_ms);
        if (s->durable_error[0])
            json_object_object_add(o, "durable_error", json_object_new_string(s->durable_error));
    }
    I(r, "transferred", s->ram.bytes);
    I(r, "normal_pages", s->ram.pages_normal);
    I(r, "zero_pages", s->ram.pages_zero);
    I(r, "rounds", s->ram.rounds);
    I(r, "dirty_pages", s->ram.dirty_pages);
    I(r, "remaining", s->ram.dirty_pages * VM_PAGE_SIZE);
    I(r, "dirty_rate", s->ram_dirty_rate);
    I(r, "nonzero_pages_at_start", s->ram.nonzero_pages);
    json_object_object_add(o, "ram", r);
    I(d, "disks", s->disks);
    I(d, "size", s->disk_size);
    I(d, "bulk_total", s->disk_bulk_total);
    I(d, "bulk_done", s->disk_bulk_done);
    I(d, "transferred", s->disk_bytes + s->disk_active_bytes);
    I(d, "zero_bytes", s->disk_zero_bytes);
    I(d, "active_bytes", s->disk_active_bytes);
    I(d, "remaining", s->disk_bulk_total - s->disk_bulk_done + s->disk_dirty);
    I(d, "dirty", s->disk_dirty);
    I(d, "unflushed", s->disk_unflushed);
    I(d, "rounds", s->disk_rounds);
    I(d, "ready", s->disks_ready);
    I(d, "write_blocking", s->disks_write_blocking);
    I(d, "mode_switches", s->disk_mode_switches);
    json_object_object_add(o, "disk", d);
    I(o, "throughput", s->throughput);
    I(o, "stream_bytes", s->stream_bytes);
    I(o, "in_flight", s->in_flight);
    I(o, "throttle", s->throttle);
    I(o, "throttle_max", s->throttle_max);
    if (s->qemu_downtime_ms)
        I(o, "qemu_downtime_ms", s->qemu_downtime_ms);
#undef I
    if (s->error[0])
        json_object_object_add(o, "error", json_object_new_string(s->error));
    return o;
}

struct json_object *mig_source_query(struct mig_source *m)
{
    struct mig_stats s;
    pthread_mutex_lock(&m->mu);
    s = m->st;
    pthread_mutex_unlock(&m->mu);
    return stats_json(&s);
}

enum mig_status mig_source_status(struct mig_source *m)
{
    pthread_mutex_lock(&m->mu);
    enum mig_status s = m->st.status;
    pthread_mutex_unlock(&m->mu);
    return s;
}

void mig_set_status(struct mig_source *m, enum mig_status s, const char *phase)
{
    bool changed = m->w.status != s;
    m->w.status = s;
    if (phase)
        m->w.phase = phase;
    if (s >= MIG_COMPLETED && !m->w.total_ms) /* completed: set at RESUMED */
        m->w.total_ms = since_ms(m->t0_ns);
    mig_publish(m);
    if (changed && m->fn)
        m->fn(m->opaque, "migration", stats_json(&m->w));
}

static void free_mirrors(struct mig_source *m)
{
    for (unsigned i = 0; i < m->nmj; i++) {
        char err[256];
        mirror_cancel(m->mj[i]);
        mirror_wait(m->mj[i], err, sizeof err);
        mirror_free(m->mj[i]); /* lets writers held by a completed job go on */
        m->mj[i] = NULL;
    }
    m->nmj = 0;
}

/* After ABORT: let the peer read it. Closing a socket with unread data in its receive buffer
 * (the destination's PINGs) sends a reset, and the reset discards what is still queued to
 * send, ABORT included (seen on a 100 Mbit/s link with the RAM window full: the destination
 * reported "the source's stream broke" instead of the reason). So read and drop what comes
 * until the peer closes its side, at most ms. */
#define ABORT_DRAIN_MS 1000
static void drain_until_closed(int fd, int ms)
{
    uint64_t end = mig_now_ns() + (uint64_t)ms * 1000000u;
    char buf[4096];
    for (;;) {
        uint64_t now = mig_now_ns();
        if (now >= end)
            return;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, (int)((end - now) / 1000000u) + 1) <= 0)
            return;
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            return;
    }
}

/* Take back the image locks the switchover handed to the destination (shared storage). */
static void relock_disks(struct mig_source *m)
{
    for (unsigned i = 0; i < m->vm->ndisks; i++) {
        struct bm_image_holder h;
        int r = bm_disk_relock(m->vm->disks[i].disk, &h);
        if (r == 0)
            continue;
        char who[96];
        if (r == -EBUSY)
            bm_image_holder_describe(&h, who, sizeof who);
        else
            snprintf(who, sizeof who, "%s", strerror(-r));
        bm_warn("migration: disk %s: its image locks cannot be taken back (%s): it goes on "
                "unlocked",
                m->vm->disks[i].name, who);
    }
}

void mig_rollback(struct mig_source *m, enum mig_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->w.error, sizeof m->w.error, fmt, ap);
    va_end(ap);
    /* Recorded, not logged: the final "migration" event carries it to whoever reports it. */
    free_mirrors(m);
    if (m->qemu)
        mig_qemu_rollback(m); /* cancels QEMU's migration: QEMU resumes the guest */
    m->vm->ops->throttle(m->vm, 0);
    m->w.throttle = 0;
    if (m->ram_started || m->log_running)
        m->vm->ops->dirty_log_stop(m->vm);
    relock_disks(m);
    if (m->paused) {
        vm_resume(m->vm);
        m->paused = false;
    }
    if (m->c.fd >= 0) {
        struct json_object *a = json_object_new_object();
        json_object_object_add(a, "reason", json_object_new_string(m->w.error));
        /* Best effort, and quickly: the link may be what failed. */
        struct timeval tv = {1, 0};
        setsockopt(m->c.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        mig_send_json(&m->c, MIG_ABORT, a);
        json_object_put(a);
        shutdown(m->c.fd, SHUT_WR);
        drain_until_closed(m->c.fd, ABORT_DRAIN_MS);
    }
    mig_set_status(m, s, "rolled-back");
}

int mig_poll_peer(struct mig_source *m, char *why, size_t whylen)
{
    for (;;) {
        struct pollfd pfd = {.fd = m->c.fd, .events = POLLIN};
        int n = poll(&pfd, 1, 0);
        if (n <= 0)
            break;
        uint32_t type, len;
        uint8_t *pl;
        int r = mig_recv(&m->c, (int)m->p.peer_timeout_ms, &type, &pl, &len);
        if (r < 0) {
            snprintf(why, whylen, "the destination's stream broke: %s",
                     r == -ECONNRESET ? "connection closed" : strerror(-r));
            return r;
        }
        m->last_heard_ns = mig_now_ns();
        if (type == MIG_PING) {
            if (len == 8)
                m->peer_received = bm_get_be64(pl);
            continue;
        }
        if (type == MIG_ABORT) {
            char reason[256];
            snprintf(why, whylen, "the destination gave up: %s",
                     mig_abort_reason(pl, len, reason, sizeof reason));
            return -ECONNABORTED;
        }
        snprintf(why, whylen, "the destination sent an unexpected %s frame",
                 mig_frame_name(type));
        return -EPROTO;
    }
    if (mig_now_ns() - m->last_heard_ns > (uint64_t)m->p.peer_timeout_ms * 1000000u) {
        snprintf(why, whylen, "no word from the destination for %u ms (link lost?)",
                 m->p.peer_timeout_ms);
        return -ETIMEDOUT;
    }
    return 0;
}

void mig_collect(struct mig_source *m)
{
    struct mig_stats *w = &m->w;
    w->disk_size = w->disk_bulk_total = w->disk_bulk_done = w->disk_bytes = 0;
    w->disk_zero_bytes = w->disk_active_bytes = w->disk_dirty = w->disk_rounds = 0;
    w->disk_mode_switches = w->disk_unflushed = 0;
    w->disks_started = 0;
    w->disks = m->nmj;
    w->disks_ready = w->disks_past_bulk = w->disks_write_blocking = 0;
    for (unsigned i = 0; i < m->nmj; i++) {
        struct mirror_stats s;
        mirror_query(m->mj[i], &s);
        w->disk_size += s.disk_size;
        w->disk_bulk_total += s.bulk_total;
        w->disk_bulk_done += s.bulk_done > s.bulk_total ? s.bulk_total : s.bulk_done;
        w->disk_bytes += s.bytes_sent;
        w->disk_zero_bytes += s.zero_bytes;
        w->disk_active_bytes += s.active_bytes;
        w->disk_dirty += s.dirty_bytes;
        w->disk_rounds += s.rounds;
        w->disk_mode_switches += s.mode_switches;
        w->disks_ready += s.state == MIRROR_READY || s.state == MIRROR_DONE;
        w->disks_write_blocking += s.write_blocking;
        w->disks_past_bulk += s.state >= MIRROR_DIRTY && s.state <= MIRROR_DONE;
        w->disks_started += s.state != MIRROR_SETUP;
        w->disk_unflushed += s.unflushed;
    }
    if (m->ram)
        ram_sender_stats(m->ram, &w->ram);
    w->ram.nonzero_pages = m->nonzero_pages;
}

/* ---- setup ---- */

static int handshake(struct mig_source *m, struct json_object **ack, char *err, size_t errlen)
{
    int fd = bm_connect_timeout(m->p.host, m->p.port, m->p.peer_timeout_ms);
    if (fd < 0) {
        snprintf(err, errlen, "cannot connect to %s:%s: %s", m->p.host, m->p.port,
                 strerror(-fd));
        return fd;
    }
    bm_sock_nodelay(fd);
    struct timeval tv = {m->p.peer_timeout_ms / 1000, (m->p.peer_timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    mig_conn_init(&m->c, fd);
    int r = mig_send_header(&m->c);
    if (r == 0)
        r = mig_recv_header(&m->c, (int)m->p.peer_timeout_ms);
    if (r < 0) {
        snprintf(err, errlen, "%s:%s is not a blkmig destination: %s", m->p.host, m->p.port,
                 strerror(-r));
        return r;
    }
    uint8_t tok[16];
    if (getrandom(tok, sizeof tok, 0) != sizeof tok)
        memset(tok, 0x5a, sizeof tok);
    char token[33];
    for (int i = 0; i < 16; i++)
        snprintf(token + 2 * i, 3, "%02x", tok[i]);
    struct json_object *h = json_object_new_object();
    json_object_object_add(h, "token", json_object_new_string(token));
    struct json_object *vmd = m->qemu ? mig_qemu_describe(m, err, errlen)
                                      : m->vm->ops->describe(m->vm);
    if (!vmd) {
        json_object_put(h);
        return -EINVAL;
    }
    json_object_object_add(h, "vm", vmd);
    json_object_object_add(h, "with_disk", json_object_new_boolean(m->p.with_disk));
    json_object_object_add(h, "verify", json_object_new_boolean(m->p.verify));
    r = mig_send_json(&m->c, MIG_HELLO, h);
    json_object_put(h);
    uint32_t type, len;
    uint8_t *pl;
    if (r == 0)
        r = mig_recv(&m->c, 60000, &type, &pl, &len);
    if (r < 0) {
        snprintf(err, errlen, "handshake with %s:%s: %s", m->p.host, m->p.port, strerror(-r));
        return r;
    }
    if (type == MIG_ABORT) {
        char reason[256];
        snprintf(err, errlen, "the destination refused: %s",
                 mig_abort_reason(pl, len, reason, sizeof reason));
        return -ECONNREFUSED;
    }
    struct json_object *o = mig_parse_json(pl, len);
    if (type != MIG_HELLO_ACK || !o) {
        snprintf(err, errlen, "the destination answered %s instead of HELLO_ACK",
                 mig_frame_name(type));
        json_object_put(o);
        return -EPROTO;
    }
    *ack = o;
    return 0;
}

static void mirror_event(void *opaque, const char *event, const struct mirror_stats *st,
                         const char *detail)
{
    struct mig_source *m = opaque;
    if (!m->fn || (strcmp(event, "write-blocking") != 0 && strcmp(event, "background") != 0))
        return;
    struct json_object *d = json_object_new_object();
    json_object_object_add(d, "write_blocking", json_object_new_boolean(st->write_blocking));
    if (detail)
        json_object_object_add(d, "reason", json_object_new_string(detail));
    m->fn(m->opaque, "disk-mode", d);
}

static int start_mirrors(struct mig_source *m, struct json_object *ack, char *err, size_t errlen)
{
    struct json_object *port, *exports;
    if (!json_object_object_get_ex(ack, "nbd_port", &port) ||
        !json_object_object_get_ex(ack, "exports", &exports) ||
        !json_object_is_type(exports, json_type_object)) {
        snprintf(err, errlen, "the destination's HELLO_ACK has no NBD exports");
        return -EPROTO;
    }
    for (unsigned i = 0; i < m->vm->ndisks; i++) {
        struct json_object *e;
        if (!json_object_object_get_ex(exports, m->vm->disks[i].name, &e) ||
            !json_object_is_type(e, json_type_string)) {
            snprintf(err, errlen, "the destination offers no export for disk %s",
                     m->vm->disks[i].name);
            return -EPROTO;
        }
        char uri[1024];
        const char *h = m->p.host;
        bool v6 = strchr(h, ':') != NULL;
        snprintf(uri, sizeof uri, "nbd://%s%s%s:%d/%s", v6 ? "[" : "", h, v6 ? "]" : "",
                 json_object_get_int(port), json_object_get_string(e));
        struct mirror_opts o;
        mirror_opts_default(&o);
        o.target_uri = uri;
        o.connections = m->p.connections;
        o.mode = MIRROR_MODE_AUTO;
        o.ready_ms = m->p.downtime_limit_ms / 2 ? m->p.downtime_limit_ms / 2 : 1;
        o.stats_ms = 0;
        o.speed = m->p.max_bandwidth / m->vm->ndisks; /* the controller re-splits it */
        /* Everything must have arrived before the destination resumes the guest; it makes
         * the images durable itself, right after (DURABLE), not inside the pause. */
        o.skip_final_flush = true;
        o.linger = true; /* closed by free_mirrors, once the guest runs there */
        int r = mirror_new(m->vm->disks[i].disk, &o, mirror_event, m, &m->mj[m->nmj], err,
                           errlen);
        if (r < 0)
            return r;
        m->nmj++;
        r = mirror_start(m->mj[m->nmj - 1]);
        if (r < 0) {
            snprintf(err, errlen, "cannot start the mirror of %s: %s", m->vm->disks[i].name,
                     strerror(-r));
            return r;
        }
    }
    return 0;
}

/* ---- the job ---- */

bool mig_converge(struct mig_source *m);

static void *source_main(void *arg)
{
    struct mig_source *m = arg;
    char err[512];
    struct json_object *ack = NULL;
    mig_set_status(m, MIG_SETUP, "setup");
    int r = handshake(m, &ack, err, sizeof err);
    if (r == 0 && m->qemu)
        r = mig_qemu_set_uri(m, ack, err, sizeof err);
    if (r == 0 && m->qemu)
        r = mig_qemu_open_disks(m, err, sizeof err);
    if (r == 0 && m->p.with_disk)
        r = start_mirrors(m, ack, err, sizeof err);
    json_object_put(ack);
    if (m->qemu) {
        if (r < 0) {
            mig_rollback(m, MIG_FAILED, "%s", err);
            return NULL;
        }
        m->last_heard_ns = m->last_send_ns = mig_now_ns();
        m->w.setup_ms = (mig_now_ns() - m->t0_ns) / 1000000u;
        mig_set_status(m, MIG_ACTIVE, "active");
        if (mig_qemu_converge(m))
            mig_qemu_switchover(m);
        if (m->w.status == MIG_COMPLETED) {
            free_mirrors(m);
            mig_qemu_close_disks(m);
            mig_qemu_quit(m); /* the guest runs there: this QEMU holds a stale copy */
        }
        return NULL;
    }
    if (r == 0) {
        m->ram = ram_sender_new(m->vm, mig_send_ram, &m->c, m->p.compress);
        if (!m->ram) {
            snprintf(err, sizeof err, "out of memory");
            r = -ENOMEM;
        }
    }
    if (r < 0) {
        mig_rollback(m, MIG_FAILED, "%s", err);
        return NULL;
    }
    /* With disks to copy first, watch which pages the guest writes meanwhile: round 0 leaves
     * that hot set for last. */
    if (m->p.with_disk && m->vm->ops->dirty_log_start(m->vm) == 0)
        m->log_running = true;
    m->last_heard_ns = m->last_send_ns = mig_now_ns();
    m->w.setup_ms = (mig_now_ns() - m->t0_ns) / 1000000u;
    mig_set_status(m, MIG_ACTIVE, "active");
    if (mig_converge(m))
        mig_switchover(m);
    if (m->w.status == MIG_COMPLETED)
        free_mirrors(m); /* done jobs: this frees them; the VM stays paused for good */
    return NULL;
}

int mig_source_start(struct vm *vm, const struct mig_params *p, mig_event_fn fn, void *opaque,
                     struct mig_source **out, char *err, size_t errlen)
{
    bool qemu = mig_vm_is_qemu(vm);
    if (qemu && !p->with_disk) {
        snprintf(err, errlen, "a QEMU VM migrates --with-disk (on shared storage, QEMU's own "
                              "migrate moves it)");
        return -EINVAL;
    }
    if (p->with_disk && vm->ndisks == 0 && !qemu) {
        snprintf(err, errlen, "--with-disk given but the VM has no disks");
        return -EINVAL;
    }
    struct mig_source *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    m->vm = vm;
    m->qemu = qemu;
    m->p = *p;
    m->fn = fn;
    m->opaque = opaque;
    m->c.fd = -1;
    m->t0_ns = mig_now_ns();
    m->w.guest_downtime_us = -1;
    m->w.phase = "setup";
    m->st = m->w;
    pthread_mutex_init(&m->mu, NULL);
    int r = pthread_create(&m->thread, NULL, source_main, m);
    if (r != 0) {
        snprintf(err, errlen, "cannot start the migration thread: %s", strerror(r));
        pthread_mutex_destroy(&m->mu);
        free(m);
        return -r;
    }
    m->started = true;
    *out = m;
    return 0;
}

void mig_source_cancel(struct mig_source *m)
{
    atomic_store(&m->want_cancel, true);
}

enum mig_status mig_source_wait(struct mig_source *m)
{
    if (m->started) {
        pthread_join(m->thread, NULL);
        m->started = false;
    }
    return m->w.status;
}

void mig_source_free(struct mig_source *m)
{
    if (!m)
        return;
    mig_source_wait(m);
    free_mirrors(m);
    ram_sender_free(m->ram);
    mig_conn_close(&m->c);
    pthread_mutex_destroy(&m->mu);
    free(m);
}
