/* server.c: NBD server lifecycle: exports, listening sockets, accepting, connection threads. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/sock.h"
#include "nbd/server-internal.h"

/* Milliseconds shutdown waits for in-flight requests by default. */
#define DRAIN_TIMEOUT_MS 30000u

struct nbd_server *nbd_server_new(const struct nbd_server_config *cfg)
{
    struct nbd_server *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->cfg = *cfg;
    if (!s->cfg.max_connections)
        s->cfg.max_connections = 64;
    if (!s->cfg.threads_per_conn)
        s->cfg.threads_per_conn = 16;
    if (pipe2(s->stop_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        free(s);
        return NULL;
    }
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    pthread_mutex_init(&s->mem_lock, NULL);
    pthread_cond_init(&s->mem_cond, NULL);
    return s;
}

int nbd_server_add_export(struct nbd_server *s, const char *name, const char *description,
                          struct bm_disk *disk, bool readonly)
{
    if (strlen(name) > NBD_MAX_STRING || (description && strlen(description) > NBD_MAX_STRING))
        return -EINVAL;
    for (unsigned i = 0; i < s->nexports; i++)
        if (strcmp(s->exports[i].name, name) == 0)
            return -EEXIST;
    struct nbd_export *e = realloc(s->exports, (s->nexports + 1) * sizeof *e);
    if (!e)
        return -ENOMEM;
    s->exports = e;
    e = &s->exports[s->nexports];
    e->name = strdup(name);
    e->description = description ? strdup(description) : NULL;
    if (!e->name || (description && !e->description)) {
        free(e->name);
        free(e->description);
        return -ENOMEM;
    }
    e->disk = disk;
    e->readonly = readonly || bm_disk_is_readonly(disk);
    s->nexports++;
    return 0;
}

int nbd_server_listen_tcp(struct nbd_server *s, const char *host, const char *port)
{
    int n = bm_listen_tcp(host, port, s->listen_fds + s->nlisten,
                          NBD_SERVER_MAX_LISTEN - s->nlisten);
    if (n < 0)
        return n;
    s->nlisten += n;
    return 0;
}

int nbd_server_listen_unix(struct nbd_server *s, const char *path)
{
    if (s->nlisten >= NBD_SERVER_MAX_LISTEN)
        return -ENOSPC;
    int fd = bm_listen_unix(path);
    if (fd < 0)
        return fd;
    free(s->unix_path);
    s->unix_path = strdup(path);
    s->listen_fds[s->nlisten++] = fd;
    return 0;
}

void nbd_server_shutdown(struct nbd_server *s)
{
    atomic_store(&s->stopping, true);
    char c = 1;
    ssize_t r = write(s->stop_pipe[1], &c, 1);
    (void)r;
}

int nbd_server_quiesce(struct nbd_server *s, unsigned timeout_ms)
{
    /* Sequentially consistent with the workers' side (transmission.c): a worker counts its
     * request, then looks at quiesced; if it saw false, this wait sees its count. */
    atomic_store(&s->quiesced, true);
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (atomic_load(&s->requests) > 0) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        int64_t ms = (int64_t)(now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000;
        if (ms >= (int64_t)timeout_ms)
            return -ETIMEDOUT;
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
    return 0;
}

unsigned nbd_server_connections(struct nbd_server *s)
{
    pthread_mutex_lock(&s->lock);
    unsigned n = s->nconns;
    pthread_mutex_unlock(&s->lock);
    return n;
}

const char *nbd_conn_export_label(const struct nbd_conn *c)
{
    return c->server->cfg.hide_exports && bm_log_get_level() < BM_LOG_DEBUG ? "(secret)"
                                                                            : c->exp->name;
}

enum bm_log_level nbd_server_name_log_level(const struct nbd_server *s)
{
    return s->cfg.hide_exports ? BM_LOG_DEBUG : BM_LOG_INFO;
}

static void conn_free(struct nbd_conn *c)
{
    close(c->fd);
    free(c->rbuf);
    pthread_mutex_destroy(&c->read_lock);
    pthread_mutex_destroy(&c->write_lock);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

void nbd_conn_thread_exit(struct nbd_conn *c)
{
    pthread_mutex_lock(&c->lock);
    bool last = --c->nthreads == 0;
    pthread_mutex_unlock(&c->lock);
    if (!last)
        return;
    struct nbd_server *s = c->server;
    pthread_mutex_lock(&s->lock);
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nconns--;
    bm_info("nbd conn %llu: closed", (unsigned long long)c->id);
    conn_free(c);
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

/* Negotiation is done: enter transmission, unless (with a separate pool for negotiating
 * connections) the established ones are already max_connections. */
static bool admit(struct nbd_conn *c)
{
    struct nbd_server *s = c->server;
    pthread_mutex_lock(&s->lock);
    unsigned established = 0;
    for (struct nbd_conn *o = s->conns; o; o = o->next)
        established += atomic_load(&o->transmitting);
    bool ok = !s->cfg.max_negotiating || established < s->cfg.max_connections;
    if (ok)
        atomic_store(&c->transmitting, true);
    pthread_mutex_unlock(&s->lock);
    if (!ok)
        bm_warn("nbd server: refusing conn %llu after negotiation: %u already serving",
                (unsigned long long)c->id, s->cfg.max_connections);
    return ok;
}

/* The first thread of a connection: negotiate, then serve. */
static void *conn_main(void *arg)
{
    struct nbd_conn *c = arg;
    int r = nbd_handshake(c);
    if (r != 0) {
        if (r < 0)
            bm_info("nbd conn %llu: handshake ended: %s", (unsigned long long)c->id,
                    strerror(-r));
        pthread_mutex_lock(&c->lock);
        c->closing = true;
        pthread_mutex_unlock(&c->lock);
        nbd_conn_thread_exit(c);
        return NULL;
    }
    /* A client that stops reading replies must not pin the workers forever. */
    struct timeval tv = {.tv_sec = NBD_SEND_TIMEOUT};
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (!admit(c)) {
        pthread_mutex_lock(&c->lock);
        c->closing = true;
        pthread_mutex_unlock(&c->lock);
        nbd_conn_thread_exit(c);
        return NULL;
    }
    bm_log(nbd_server_name_log_level(c->server), "nbd conn %llu: serving export '%s'%s",
           (unsigned long long)c->id, c->exp->name,
           c->structured ? " with structured replies" : "");
    return nbd_conn_worker(c);
}

static int spawn(void *(*fn)(void *), struct nbd_conn *c)
{
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    pthread_t t;
    int r = pthread_create(&t, &attr, fn, c);
    pthread_attr_destroy(&attr);
    return -r;
}

int nbd_conn_spawn_thread(struct nbd_conn *c)
{
    return spawn(nbd_conn_worker, c);
}

/* With a pool for negotiating connections (s->lock held): when it is full, shut down the
 * oldest connection that has sent nothing (else the oldest) to make room for a new one; its
 * thread leaves on its own. -EAGAIN when even evicted ones still fill the hard limit. */
static int make_room_locked(struct nbd_server *s)
{
    unsigned negotiating = 0;
    struct nbd_conn *oldest = NULL, *oldest_silent = NULL;
    for (struct nbd_conn *c = s->conns; c; c = c->next) {
        if (atomic_load(&c->transmitting) || c->evicted)
            continue;
        negotiating++;
        oldest = c; /* the list is newest first */
        if (!atomic_load(&c->spoke))
            oldest_silent = c;
    }
    if (negotiating >= s->cfg.max_negotiating) {
        struct nbd_conn *v = oldest_silent ? oldest_silent : oldest;
        v->evicted = true;
        shutdown(v->fd, SHUT_RDWR);
        bm_info("nbd conn %llu: dropped to make room (%s, %u negotiating)",
                (unsigned long long)v->id, v == oldest_silent ? "silent" : "oldest", negotiating);
    }
    return s->nconns >= s->cfg.max_connections + 2 * s->cfg.max_negotiating ? -EAGAIN : 0;
}

static void accept_one(struct nbd_server *s, int lfd)
{
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
        if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
            bm_warn("nbd server: accept: %s", strerror(errno));
        if (errno == EMFILE || errno == ENFILE) {
            /* Out of descriptors: back off instead of spinning. */
            struct timespec ts = {0, 50 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        return;
    }
    pthread_mutex_lock(&s->lock);
    if (s->cfg.max_negotiating ? make_room_locked(s) < 0
                               : s->nconns >= s->cfg.max_connections) {
        pthread_mutex_unlock(&s->lock);
        bm_warn("nbd server: refusing a connection: %u already open%s", s->nconns,
                s->cfg.max_negotiating ? "" : " (--shared)");
        close(fd);
        return;
    }
    struct nbd_conn *c = calloc(1, sizeof *c);
    if (!c) {
        pthread_mutex_unlock(&s->lock);
        close(fd);
        return;
    }
    bm_sock_nodelay(fd);
    c->server = s;
    c->fd = fd;
    c->id = ++s->next_conn_id;
    c->nthreads = 1;
    pthread_mutex_init(&c->read_lock, NULL);
    pthread_mutex_init(&c->write_lock, NULL);
    pthread_mutex_init(&c->lock, NULL);
    if (spawn(conn_main, c) < 0) {
        pthread_mutex_unlock(&s->lock);
        bm_warn("nbd server: cannot start a connection thread");
        conn_free(c);
        return;
    }
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    bm_info("nbd conn %llu: accepted", (unsigned long long)c->id);
    pthread_mutex_unlock(&s->lock);
}

/* Stop reading new requests on every connection and wait for them to finish. Connections in
 * transmission see the stop pipe between requests (so no request is cut in half); those still
 * negotiating are simply hung up on. Those still busy at the deadline (a request whose payload
 * stalls, a client that reads no replies) are shut down: what they had not sent in full is
 * never done. Returns once every connection thread has left: 0, or -ETIMEDOUT if some had to
 * be shut down. */
static int drain(struct nbd_server *s)
{
    int ret = 0;
    unsigned ms = s->cfg.drain_timeout_ms ? s->cfg.drain_timeout_ms : DRAIN_TIMEOUT_MS;
    pthread_mutex_lock(&s->lock);
    for (struct nbd_conn *c = s->conns; c; c = c->next)
        if (!atomic_load(&c->transmitting))
            shutdown(c->fd, SHUT_RDWR);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    long ns = deadline.tv_nsec + (long)(ms % 1000) * 1000000;
    deadline.tv_sec += (time_t)(ms / 1000) + ns / 1000000000;
    deadline.tv_nsec = ns % 1000000000;
    while (s->nconns > 0 && ret == 0) {
        if (pthread_cond_timedwait(&s->cond, &s->lock, &deadline) == ETIMEDOUT &&
            s->nconns > 0) {
            bm_error("nbd server: %u connections still busy after %u ms; shutting them down",
                     s->nconns, ms);
            for (struct nbd_conn *c = s->conns; c; c = c->next)
                shutdown(c->fd, SHUT_RDWR);
            ret = -ETIMEDOUT;
        }
    }
    /* Shut down, their threads leave once the disk call they may be in returns. */
    while (s->nconns > 0)
        pthread_cond_wait(&s->cond, &s->lock);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

int nbd_server_run(struct nbd_server *s)
{
    if (s->nlisten == 0)
        return -EINVAL;
    struct pollfd pfd[NBD_SERVER_MAX_LISTEN + 1];
    pfd[0] = (struct pollfd){.fd = s->stop_pipe[0], .events = POLLIN};
    for (int i = 0; i < s->nlisten; i++)
        pfd[i + 1] = (struct pollfd){.fd = s->listen_fds[i], .events = POLLIN};
    int err = 0;
    while (!atomic_load(&s->stopping)) {
        int r = poll(pfd, (nfds_t)s->nlisten + 1, -1);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            err = -errno;
            bm_error("nbd server: poll: %s", strerror(errno));
            break; /* and drain: no connection may outlive the server */
        }
        if (pfd[0].revents)
            break;
        for (int i = 1; i <= s->nlisten; i++)
            if (pfd[i].revents & POLLIN)
                accept_one(s, pfd[i].fd);
    }
    for (int i = 0; i < s->nlisten; i++)
        close(s->listen_fds[i]);
    s->nlisten = 0;
    int r = drain(s);
    return err ? err : r;
}

void nbd_server_free(struct nbd_server *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    unsigned busy = s->nconns;
    pthread_mutex_unlock(&s->lock);
    for (int i = 0; i < s->nlisten; i++)
        close(s->listen_fds[i]);
    s->nlisten = 0;
    if (s->unix_path) {
        unlink(s->unix_path);
        free(s->unix_path);
        s->unix_path = NULL;
    }
    if (busy)
        return; /* connection threads still use it: leak rather than free under them */
    for (unsigned i = 0; i < s->nexports; i++) {
        free(s->exports[i].name);
        free(s->exports[i].description);
    }
    free(s->exports);
    close(s->stop_pipe[0]);
    close(s->stop_pipe[1]);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->mem_lock);
    pthread_cond_destroy(&s->mem_cond);
    free(s);
}
