/* transmission.c: the NBD transmission phase: read, validate, run and answer requests. */
#include <config.h>

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/io.h"
#include "common/log.h"
#include "nbd/server-internal.h"

/* Reads below this size skip hole detection and go out as one data chunk. */
#define SPARSE_READ_MIN (128u * 1024)
/* A worker frees a request buffer larger than this once the request is answered. */
#define BUF_KEEP (1u << 20)
/* Most extents in one READ or BLOCK_STATUS reply. */
#define MAX_EXTENTS 512

/* A worker's request buffer, grown on demand and kept between requests. */
struct worker {
    struct nbd_conn *c;
    uint8_t *buf;
    size_t cap;
    struct bm_extent ext[MAX_EXTENTS];
};

static int ensure_buf(struct worker *w, size_t len)
{
    if (len <= w->cap)
        return 0;
    size_t cap = len < 65536 ? 65536 : len;
    void *p = realloc(w->buf, cap);
    if (!p)
        return -ENOMEM;
    w->buf = p;
    w->cap = cap;
    return 0;
}

static int send_simple(struct nbd_conn *c, uint64_t cookie, uint32_t err, const void *data,
                       size_t len)
{
    uint8_t hdr[NBD_SIMPLE_REPLY_SIZE];
    bm_put_be32(hdr, NBD_SIMPLE_REPLY_MAGIC);
    bm_put_be32(hdr + 4, err);
    bm_put_be64(hdr + 8, cookie);
    struct iovec iov[2] = {{hdr, sizeof hdr}, {(void *)data, len}};
    pthread_mutex_lock(&c->write_lock);
    int r = bm_writev_full(c->fd, iov, len ? 2 : 1);
    pthread_mutex_unlock(&c->write_lock);
    return r;
}

static void put_chunk_header(uint8_t *h, uint16_t flags, uint16_t type, uint64_t cookie,
                             uint32_t len)
{
    bm_put_be32(h, NBD_STRUCTURED_REPLY_MAGIC);
    bm_put_be16(h + 4, flags);
    bm_put_be16(h + 6, type);
    bm_put_be64(h + 8, cookie);
    bm_put_be32(h + 16, len);
}

static int send_structured_error(struct nbd_conn *c, uint64_t cookie, uint32_t err)
{
    static const char msg[] = "request failed";
    uint8_t b[NBD_STRUCTURED_REPLY_SIZE + 6 + sizeof msg - 1];
    put_chunk_header(b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, cookie, 6 + sizeof msg - 1);
    bm_put_be32(b + NBD_STRUCTURED_REPLY_SIZE, err);
    bm_put_be16(b + NBD_STRUCTURED_REPLY_SIZE + 4, sizeof msg - 1);
    memcpy(b + NBD_STRUCTURED_REPLY_SIZE + 6, msg, sizeof msg - 1);
    pthread_mutex_lock(&c->write_lock);
    int r = bm_write_full(c->fd, b, sizeof b);
    pthread_mutex_unlock(&c->write_lock);
    return r;
}

/* Reply with an error (err is an errno value), in the form the command needs. */
static int send_error_reply(struct nbd_conn *c, const struct nbd_request *req, int err)
{
    uint32_t wire = nbd_errno_to_wire(err);
    if (c->structured && (req->type == NBD_CMD_READ || req->type == NBD_CMD_BLOCK_STATUS))
        return send_structured_error(c, req->cookie, wire);
    return send_simple(c, req->cookie, wire, NULL, 0);
}

/* READ with structured replies: holes as OFFSET_HOLE chunks, data as OFFSET_DATA chunks, all
 * written in one go so the reply is never interleaved mid-chunk. */
static int do_read_sparse(struct worker *w, const struct nbd_request *req)
{
    struct nbd_conn *c = w->c;
    struct bm_disk *d = c->exp->disk;
    size_t n = 0;
    int r = bm_disk_extents(d, req->offset, req->length, w->ext, MAX_EXTENTS, &n);
    if (r < 0)
        n = 0;
    /* What the extents did not cover goes as data. */
    uint64_t covered = 0;
    for (size_t i = 0; i < n; i++)
        covered += w->ext[i].length;
    if (covered < req->length) {
        if (n == MAX_EXTENTS) {
            w->ext[n - 1].length += req->length - covered;
            w->ext[n - 1].flags = 0;
        } else {
            w->ext[n++] = (struct bm_extent){req->offset + covered, req->length - covered, 0};
        }
    }
    /* Per chunk: header (20) + offset (8) + hole size (4). */
    size_t hsize = NBD_STRUCTURED_REPLY_SIZE + 12;
    uint8_t *hdrs = malloc(n * hsize);
    struct iovec *iov = malloc(2 * n * sizeof *iov);
    if (!hdrs || !iov) {
        free(hdrs);
        free(iov);
        return send_error_reply(c, req, ENOMEM);
    }
    int iovcnt = 0;
    for (size_t i = 0; i < n; i++) {
        const struct bm_extent *e = &w->ext[i];
        uint8_t *h = hdrs + i * hsize;
        uint16_t fl = i + 1 == n ? NBD_REPLY_FLAG_DONE : 0;
        uint8_t *data = w->buf + (e->offset - req->offset);
        if (e->flags & BM_EXTENT_ZERO) {
            put_chunk_header(h, fl, NBD_REPLY_TYPE_OFFSET_HOLE, req->cookie, 12);
            bm_put_be64(h + NBD_STRUCTURED_REPLY_SIZE, e->offset);
            bm_put_be32(h + NBD_STRUCTURED_REPLY_SIZE + 8, (uint32_t)e->length);
            iov[iovcnt++] = (struct iovec){h, hsize};
            continue;
        }
        r = bm_disk_pread(d, data, e->length, e->offset);
        if (r < 0) {
            bm_error("nbd export '%s': read %llu bytes at 0x%llx: %s", nbd_conn_export_label(c),
                     (unsigned long long)e->length, (unsigned long long)e->offset,
                     strerror(-r));
            free(hdrs);
            free(iov);
            return send_error_reply(c, req, -r);
        }
        put_chunk_header(h, fl, NBD_REPLY_TYPE_OFFSET_DATA, req->cookie,
                         (uint32_t)(8 + e->length));
        bm_put_be64(h + NBD_STRUCTURED_REPLY_SIZE, e->offset);
        iov[iovcnt++] = (struct iovec){h, NBD_STRUCTURED_REPLY_SIZE + 8};
        iov[iovcnt++] = (struct iovec){data, e->length};
    }
    pthread_mutex_lock(&c->write_lock);
    r = bm_writev_full(c->fd, iov, iovcnt);
    pthread_mutex_unlock(&c->write_lock);
    free(hdrs);
    free(iov);
    return r;
}

static int do_read(struct worker *w, const struct nbd_request *req)
{
    struct nbd_conn *c = w->c;
    if (ensure_buf(w, req->length) < 0)
        return send_error_reply(c, req, ENOMEM);
    if (c->structured && !(req->flags & NBD_CMD_FLAG_DF) && req->length >= SPARSE_READ_MIN)
        return do_read_sparse(w, req);
    int r = bm_disk_pread(c->exp->disk, w->buf, req->length, req->offset);
    if (r < 0) {
        bm_error("nbd export '%s': read %u bytes at 0x%llx: %s", nbd_conn_export_label(c), req->length,
                 (unsigned long long)req->offset, strerror(-r));
        return send_error_reply(c, req, -r);
    }
    if (!c->structured)
        return send_simple(c, req->cookie, 0, w->buf, req->length);
    uint8_t h[NBD_STRUCTURED_REPLY_SIZE + 8];
    put_chunk_header(h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, req->cookie,
                     8 + req->length);
    bm_put_be64(h + NBD_STRUCTURED_REPLY_SIZE, req->offset);
    struct iovec iov[2] = {{h, sizeof h}, {w->buf, req->length}};
    pthread_mutex_lock(&c->write_lock);
    r = bm_writev_full(c->fd, iov, 2);
    pthread_mutex_unlock(&c->write_lock);
    return r;
}

static int do_block_status(struct worker *w, const struct nbd_request *req)
{
    struct nbd_conn *c = w->c;
    size_t max = (req->flags & NBD_CMD_FLAG_REQ_ONE) ? 1 : MAX_EXTENTS;
    size_t n = 0;
    int r = bm_disk_extents(c->exp->disk, req->offset, req->length, w->ext, max, &n);
    if (r < 0)
        return send_error_reply(c, req, -r);
    /* Merge neighbours with equal flags (the disk may report them split). */
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (m && w->ext[m - 1].flags == w->ext[i].flags)
            w->ext[m - 1].length += w->ext[i].length;
        else
            w->ext[m++] = w->ext[i];
    }
    size_t plen = 4 + 8 * m;
    if (ensure_buf(w, NBD_STRUCTURED_REPLY_SIZE + plen) < 0)
        return send_error_reply(c, req, ENOMEM);
    uint8_t *b = w->buf;
    put_chunk_header(b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, req->cookie,
                     (uint32_t)plen);
    bm_put_be32(b + NBD_STRUCTURED_REPLY_SIZE, NBD_CONTEXT_BASE_ALLOCATION);
    for (size_t i = 0; i < m; i++) {
        uint8_t *p = b + NBD_STRUCTURED_REPLY_SIZE + 4 + 8 * i;
        bm_put_be32(p, (uint32_t)w->ext[i].length);
        bm_put_be32(p + 4, w->ext[i].flags & (NBD_STATE_HOLE | NBD_STATE_ZERO));
    }
    pthread_mutex_lock(&c->write_lock);
    r = bm_write_full(c->fd, b, NBD_STRUCTURED_REPLY_SIZE + plen);
    pthread_mutex_unlock(&c->write_lock);
    return r;
}

static unsigned inject_op(uint16_t type)
{
    switch (type) {
    case NBD_CMD_READ: return NBD_INJ_READ;
    case NBD_CMD_WRITE: return NBD_INJ_WRITE;
    case NBD_CMD_FLUSH: return NBD_INJ_FLUSH;
    case NBD_CMD_TRIM: return NBD_INJ_TRIM;
    case NBD_CMD_WRITE_ZEROES: return NBD_INJ_ZERO;
    case NBD_CMD_BLOCK_STATUS: return NBD_INJ_BLOCK_STATUS;
    case NBD_CMD_CACHE: return NBD_INJ_CACHE;
    default: return 0;
    }
}

/* Run a validated request and send its reply. Returns <0 only when the socket failed. */
static int execute(struct worker *w, const struct nbd_request *req, int err, uint64_t delay)
{
    struct nbd_conn *c = w->c;
    struct bm_disk *d = c->exp->disk;
    if (delay) {
        struct timespec ts = {.tv_sec = (time_t)(delay / 1000000000u),
                              .tv_nsec = (long)(delay % 1000000000u)};
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
            ;
    }
    if (err) {
        bm_debug("nbd export '%s': injected %s into %s", c->exp->name, strerror(err),
                 nbd_cmd_name(req->type));
        return send_error_reply(c, req, err);
    }
    unsigned fua = (req->flags & NBD_CMD_FLAG_FUA) ? BM_DISK_FUA : 0;
    int r;
    switch (req->type) {
    case NBD_CMD_READ: return do_read(w, req);
    case NBD_CMD_BLOCK_STATUS: return do_block_status(w, req);
    case NBD_CMD_WRITE: r = bm_disk_pwrite(d, w->buf, req->length, req->offset, fua); break;
    case NBD_CMD_FLUSH: r = bm_disk_flush(d); break;
    case NBD_CMD_TRIM: r = bm_disk_trim(d, req->offset, req->length, fua); break;
    case NBD_CMD_CACHE: r = bm_disk_cache(d, req->offset, req->length); break;
    case NBD_CMD_WRITE_ZEROES: {
        unsigned f = fua;
        if (req->flags & NBD_CMD_FLAG_NO_HOLE)
            f |= BM_DISK_NO_HOLE;
        if (req->flags & NBD_CMD_FLAG_FAST_ZERO)
            f |= BM_DISK_FAST;
        r = bm_disk_zero(d, req->offset, req->length, f);
        break;
    }
    default: r = -EINVAL; break;
    }
    if (r < 0 && r != -ENOTSUP)
        bm_error("nbd export '%s': %s %u bytes at 0x%llx: %s", nbd_conn_export_label(c),
                 nbd_cmd_name(req->type), req->length, (unsigned long long)req->offset,
                 strerror(-r));
    if (r < 0)
        return send_error_reply(c, req, -r);
    return send_simple(c, req->cookie, 0, NULL, 0);
}

/* Read exactly len bytes of the request stream (read_lock held): first from the input
 * buffer, then large remainders straight into dst, small ones through the buffer so that one
 * recv picks up every request the client has pipelined. dst NULL discards. At a request
 * boundary it also returns -ESHUTDOWN once the server is stopping. Returns 0 or -errno
 * (-ENODATA for a clean EOF before the first byte). */
static int conn_read(struct nbd_conn *c, uint8_t *dst, uint64_t len, bool at_boundary)
{
    bool started = false;
    if (at_boundary && atomic_load(&c->server->stopping))
        return -ESHUTDOWN;
    if (at_boundary && c->rpos == c->rlen) {
        /* At a request boundary with nothing buffered: take what has arrived without waiting
         * (the common case under load costs one recv), else wait for the next request or for
         * the server to stop, so that a shutdown never cuts a request in half. */
        if (!c->rbuf && !(c->rbuf = malloc(NBD_CONN_RBUF_SIZE)))
            return -ENOMEM;
        ssize_t got = recv(c->fd, c->rbuf, NBD_CONN_RBUF_SIZE, MSG_DONTWAIT);
        if (got > 0) {
            c->rpos = 0;
            c->rlen = (size_t)got;
        } else if (got == 0) {
            return -ENODATA;
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            return -errno;
        }
    }
    if (at_boundary && c->rpos == c->rlen) {
        struct pollfd pfd[2] = {{.fd = c->fd, .events = POLLIN},
                                {.fd = c->server->stop_pipe[0], .events = POLLIN}};
        for (;;) {
            int r = poll(pfd, 2, -1);
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0)
                return -errno;
            if (pfd[1].revents)
                return -ESHUTDOWN;
            break;
        }
    }
    while (len > 0) {
        if (c->rpos < c->rlen) {
            size_t n = c->rlen - c->rpos;
            if (n > len)
                n = (size_t)len;
            if (dst) {
                memcpy(dst, c->rbuf + c->rpos, n);
                dst += n;
            }
            c->rpos += n;
            len -= n;
            started = true;
            continue;
        }
        if (dst && len >= NBD_CONN_RBUF_SIZE) {
            int r = bm_read_full(c->fd, dst, (size_t)len);
            return r == -ENODATA && started ? -ECONNRESET : r;
        }
        if (!c->rbuf && !(c->rbuf = malloc(NBD_CONN_RBUF_SIZE)))
            return -ENOMEM;
        ssize_t r = read(c->fd, c->rbuf, NBD_CONN_RBUF_SIZE);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            return started ? -ECONNRESET : -ENODATA;
        c->rpos = 0;
        c->rlen = (size_t)r;
    }
    return 0;
}

/* Payload bytes a request holds in its worker's buffer while it runs. */
static uint64_t req_mem(const struct nbd_request *req)
{
    return req->type == NBD_CMD_READ || req->type == NBD_CMD_WRITE ? req->length : 0;
}

/* Reserve n payload bytes for a request of c before its buffer is filled. Called with
 * read_lock held: while the connection's or the server's budget is spent, c reads no further
 * requests and the client's own send buffer fills (backpressure). Alone in flight, a request
 * always fits the connection's budget (n <= NBD_SERVER_MAX_PAYLOAD), and so the server's when
 * nothing else is in flight, so some request always makes progress; the bytes held are only
 * released by replies being written, which SO_SNDTIMEO bounds. */
static void mem_acquire(struct nbd_conn *c, uint64_t n)
{
    struct nbd_server *s = c->server;
    if (n == 0)
        return;
    pthread_mutex_lock(&s->mem_lock);
    bool waited = false;
    while ((c->mem_inflight && c->mem_inflight + n > NBD_CONN_MAX_INFLIGHT) ||
           (s->mem_inflight && s->mem_inflight + n > NBD_SERVER_MAX_INFLIGHT)) {
        if (!waited)
            bm_debug("nbd conn %llu: %llu bytes in flight here, %llu in the server: waiting",
                     (unsigned long long)c->id, (unsigned long long)c->mem_inflight,
                     (unsigned long long)s->mem_inflight);
        waited = true;
        pthread_cond_wait(&s->mem_cond, &s->mem_lock);
    }
    c->mem_inflight += n;
    s->mem_inflight += n;
    pthread_mutex_unlock(&s->mem_lock);
}

static void mem_release(struct nbd_conn *c, uint64_t n)
{
    struct nbd_server *s = c->server;
    if (n == 0)
        return;
    pthread_mutex_lock(&s->mem_lock);
    c->mem_inflight -= n;
    s->mem_inflight -= n;
    pthread_cond_broadcast(&s->mem_cond);
    pthread_mutex_unlock(&s->mem_lock);
}

enum read_outcome { REQ_RUN, REQ_REJECT, REQ_STOP };

/* Read one request (and its payload) under read_lock. */
static enum read_outcome read_request(struct worker *w, struct nbd_request *req, int *reject,
                                      int *inject_err, uint64_t *inject_delay)
{
    struct nbd_conn *c = w->c;
    uint8_t hdr[NBD_REQUEST_SIZE];
    int r = conn_read(c, hdr, sizeof hdr, true);
    if (r < 0) {
        if (r != -ENODATA && r != -ESHUTDOWN)
            bm_info("nbd conn %llu: read: %s", (unsigned long long)c->id, strerror(-r));
        return REQ_STOP;
    }
    if (nbd_request_decode(hdr, req) < 0) {
        bm_info("nbd conn %llu: bad request magic; disconnecting", (unsigned long long)c->id);
        return REQ_STOP;
    }
    if (req->type == NBD_CMD_DISC)
        return REQ_STOP;
    /* Counted until its reply (nbd_server_quiesce waits for none). */
    atomic_fetch_add(&c->server->requests, 1);
    struct nbd_request_caps caps = {.size = bm_disk_size(c->exp->disk),
                                    .readonly = c->exp->readonly,
                                    .structured = c->structured,
                                    .base_allocation = c->base_allocation};
    *reject = nbd_request_validate(req, &caps);
    if (*reject == 0)
        mem_acquire(c, req_mem(req));
    if (req->type == NBD_CMD_WRITE) {
        if (*reject == 0 && ensure_buf(w, req->length) < 0) {
            mem_release(c, req_mem(req));
            *reject = ENOMEM;
        }
        if (*reject == 0)
            r = conn_read(c, w->buf, req->length, false);
        else
            r = conn_read(c, NULL, req->length, false);
        if (r < 0) {
            bm_info("nbd conn %llu: write payload: %s", (unsigned long long)c->id,
                    strerror(r == -ENODATA ? ECONNRESET : -r));
            if (*reject == 0)
                mem_release(c, req_mem(req));
            atomic_fetch_sub(&c->server->requests, 1);
            return REQ_STOP;
        }
    }
    if (*reject)
        bm_debug("nbd conn %llu: %s offset 0x%llx length %u flags 0x%x rejected: %s",
                 (unsigned long long)c->id, nbd_cmd_name(req->type),
                 (unsigned long long)req->offset, req->length, req->flags, strerror(*reject));
    if (*reject)
        return REQ_REJECT;
    /* Decided here, under read_lock, so faults follow the order requests arrived in. */
    *inject_err = nbd_inject_decide(c->server->cfg.inject, inject_op(req->type), inject_delay);
    return REQ_RUN;
}

void *nbd_conn_worker(void *arg)
{
    struct worker w = {.c = arg};
    struct nbd_conn *c = w.c;
    for (;;) {
        pthread_mutex_lock(&c->read_lock);
        pthread_mutex_lock(&c->lock);
        bool closing = c->closing;
        pthread_mutex_unlock(&c->lock);
        if (closing) {
            pthread_mutex_unlock(&c->read_lock);
            break;
        }
        struct nbd_request req;
        int reject = 0, inject_err = 0;
        uint64_t inject_delay = 0;
        enum read_outcome o = read_request(&w, &req, &reject, &inject_err, &inject_delay);
        if (o == REQ_STOP) {
            pthread_mutex_lock(&c->lock);
            c->closing = true;
            pthread_mutex_unlock(&c->lock);
            /* Wake any reader blocked on the socket; replies still go out. */
            shutdown(c->fd, SHUT_RD);
            pthread_mutex_unlock(&c->read_lock);
            break;
        }
        pthread_mutex_lock(&c->lock);
        c->busy++;
        nbd_conn_maybe_grow_locked(c);
        pthread_mutex_unlock(&c->lock);
        pthread_mutex_unlock(&c->read_lock);

        /* Quiesced (after counting the request: see nbd_server_quiesce): refused, the export
         * is no longer touched. */
        if (o == REQ_RUN && atomic_load(&c->server->quiesced))
            reject = ESHUTDOWN;
        int r = reject ? send_error_reply(c, &req, reject)
                       : execute(&w, &req, inject_err, inject_delay);
        atomic_fetch_sub(&c->server->requests, 1);
        if (o == REQ_RUN)
            mem_release(c, req_mem(&req));
        if (w.cap > BUF_KEEP) {
            /* Keep at most BUF_KEEP per idle thread: big requests are rare. */
            free(w.buf);
            w.buf = NULL;
            w.cap = 0;
        }

        pthread_mutex_lock(&c->lock);
        c->busy--;
        if (r < 0 && !c->closing) {
            c->closing = true;
            shutdown(c->fd, SHUT_RDWR);
        }
        pthread_mutex_unlock(&c->lock);
        if (r < 0)
            break;
    }
    free(w.buf);
    nbd_conn_thread_exit(c);
    return NULL;
}

void nbd_conn_maybe_grow_locked(struct nbd_conn *c)
{
    if (c->closing || c->busy < c->nthreads || c->nthreads >= c->server->cfg.threads_per_conn)
        return;
    if (nbd_conn_spawn_thread(c) == 0)
        c->nthreads++;
}
