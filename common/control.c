/* control.c: JSON-lines control socket server (own thread, poll loop) and a small client. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "common/control.h"
#include "common/io.h"
#include "common/log.h"
#include "common/sock.h"

#define MAX_CLIENTS 16
#define MAX_LINE (64 * 1024)

struct client {
    int fd;
    char *buf;
    size_t len;
};

struct bm_control {
    char *path;
    char *greeting;
    const char *const *commands;
    bm_control_fn fn;
    void *opaque;
    int lfd;
    int stop_pipe[2];
    pthread_t thread;
    /* lock protects clients[] fds against emit() from other threads. */
    pthread_mutex_t lock;
    struct client clients[MAX_CLIENTS];
};

static int send_line(int fd, const char *s)
{
    size_t n = strlen(s);
    struct iovec iov[2] = {{(void *)s, n}, {(void *)"\n", 1}};
    return bm_writev_full(fd, iov, 2);
}

/* Server side: a whole line or nothing, without blocking (a client that does not read is
 * dropped, never waited for: the job's thread emits events under the same lock). */
static int send_line_nowait(int fd, const char *s)
{
    size_t n = strlen(s);
    struct iovec iov[2] = {{(void *)s, n}, {(void *)"\n", 1}};
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = 2};
    ssize_t w = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    return w == (ssize_t)(n + 1) ? 0 : -EAGAIN;
}

static void drop_client(struct bm_control *c, struct client *cl)
{
    close(cl->fd);
    cl->fd = -1;
    free(cl->buf);
    cl->buf = NULL;
    cl->len = 0;
}

static bool known(const char *const *commands, const char *cmd)
{
    for (const char *const *p = commands; *p; p++)
        if (strcmp(*p, cmd) == 0)
            return true;
    return false;
}

static void reply_error(struct json_object *reply, const char *cls, const char *desc)
{
    struct json_object *e = json_object_new_object();
    json_object_object_add(e, "class", json_object_new_string(cls));
    json_object_object_add(e, "desc", json_object_new_string(desc));
    json_object_object_add(reply, "error", e);
}

struct json_object *bm_control_reply(const char *const *commands, bm_control_fn fn, void *opaque,
                                     const char *line)
{
    struct json_object *reply = json_object_new_object();
    struct json_object *req = json_tokener_parse(line);
    struct json_object *cmd, *args = NULL, *id;
    if (!req || !json_object_is_type(req, json_type_object)) {
        reply_error(reply, "GenericError", "expected one JSON object per line");
    } else {
        if (json_object_object_get_ex(req, "id", &id))
            json_object_object_add(reply, "id", json_object_get(id));
        json_object_object_get_ex(req, "arguments", &args);
        if (!json_object_object_get_ex(req, "execute", &cmd) ||
            !json_object_is_type(cmd, json_type_string)) {
            reply_error(reply, "GenericError", "missing \"execute\"");
        } else if (!known(commands, json_object_get_string(cmd))) {
            char d[128];
            snprintf(d, sizeof d, "unknown command '%.64s'", json_object_get_string(cmd));
            reply_error(reply, "CommandNotFound", d);
        } else if (args && !json_object_is_type(args, json_type_object)) {
            reply_error(reply, "InvalidArgument", "\"arguments\" must be an object");
        } else {
            const char *cls = "Failed";
            char desc[256] = "";
            struct json_object *ret =
                fn(opaque, json_object_get_string(cmd), args, &cls, desc, sizeof desc);
            if (ret)
                json_object_object_add(reply, "return", ret);
            else
                reply_error(reply, cls, desc[0] ? desc : "failed");
        }
    }
    json_object_put(req);
    return reply;
}

static void handle_line(struct bm_control *c, struct client *cl, const char *line)
{
    struct json_object *reply = bm_control_reply(c->commands, c->fn, c->opaque, line);
    pthread_mutex_lock(&c->lock);
    if (cl->fd >= 0 && send_line_nowait(cl->fd, json_object_to_json_string_ext(
                                                    reply, JSON_C_TO_STRING_PLAIN)) < 0)
        drop_client(c, cl);
    pthread_mutex_unlock(&c->lock);
    json_object_put(reply);
}

static void client_readable(struct bm_control *c, struct client *cl)
{
    char tmp[4096];
    ssize_t n = read(cl->fd, tmp, sizeof tmp);
    if (n <= 0) {
        pthread_mutex_lock(&c->lock);
        drop_client(c, cl);
        pthread_mutex_unlock(&c->lock);
        return;
    }
    if (cl->len + (size_t)n > MAX_LINE) {
        pthread_mutex_lock(&c->lock);
        send_line_nowait(cl->fd, "{\"error\":{\"class\":\"GenericError\",\"desc\":\"line too long\"}}");
        drop_client(c, cl);
        pthread_mutex_unlock(&c->lock);
        return;
    }
    char *nb = realloc(cl->buf, cl->len + (size_t)n + 1);
    if (!nb) {
        /* Dropping the bytes would corrupt the line: drop the client instead. */
        pthread_mutex_lock(&c->lock);
        drop_client(c, cl);
        pthread_mutex_unlock(&c->lock);
        return;
    }
    cl->buf = nb;
    memcpy(cl->buf + cl->len, tmp, (size_t)n);
    cl->len += (size_t)n;
    cl->buf[cl->len] = '\0';
    char *start = cl->buf, *nl;
    while (cl->fd >= 0 && (nl = memchr(start, '\n', cl->len - (size_t)(start - cl->buf)))) {
        *nl = '\0';
        if (nl > start)
            handle_line(c, cl, start);
        start = nl + 1;
    }
    if (cl->fd < 0)
        return;
    cl->len -= (size_t)(start - cl->buf);
    memmove(cl->buf, start, cl->len);
}

static void accept_client(struct bm_control *c)
{
    int fd = accept4(c->lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        return;
    pthread_mutex_lock(&c->lock);
    for (int i = 0; i < MAX_CLIENTS; i++) {
        if (c->clients[i].fd < 0) {
            c->clients[i] = (struct client){.fd = fd};
            if (send_line_nowait(fd, c->greeting) < 0)
                drop_client(c, &c->clients[i]);
            pthread_mutex_unlock(&c->lock);
            return;
        }
    }
    pthread_mutex_unlock(&c->lock);
    send_line_nowait(fd, "{\"error\":{\"class\":\"GenericError\",\"desc\":\"too many clients\"}}");
    close(fd);
}

static void *control_main(void *arg)
{
    struct bm_control *c = arg;
    for (;;) {
        struct pollfd pfd[MAX_CLIENTS + 2];
        int map[MAX_CLIENTS + 2];
        nfds_t n = 0;
        pfd[n++] = (struct pollfd){.fd = c->stop_pipe[0], .events = POLLIN};
        pfd[n++] = (struct pollfd){.fd = c->lfd, .events = POLLIN};
        pthread_mutex_lock(&c->lock);
        for (int i = 0; i < MAX_CLIENTS; i++)
            if (c->clients[i].fd >= 0) {
                map[n] = i;
                pfd[n++] = (struct pollfd){.fd = c->clients[i].fd, .events = POLLIN};
            }
        pthread_mutex_unlock(&c->lock);
        if (poll(pfd, n, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (pfd[0].revents)
            break;
        if (pfd[1].revents & POLLIN)
            accept_client(c);
        for (nfds_t k = 2; k < n; k++)
            if (pfd[k].revents)
                client_readable(c, &c->clients[map[k]]);
    }
    return NULL;
}

struct bm_control *bm_control_start(const char *path, const char *service,
                                    const char *const *commands, bm_control_fn fn, void *opaque)
{
    struct bm_control *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    for (int i = 0; i < MAX_CLIENTS; i++)
        c->clients[i].fd = -1;
    c->commands = commands;
    c->fn = fn;
    c->opaque = opaque;
    pthread_mutex_init(&c->lock, NULL);
    struct json_object *g = json_object_new_object(), *inner = json_object_new_object();
    struct json_object *list = json_object_new_array();
    for (const char *const *p = commands; *p; p++)
        json_object_array_add(list, json_object_new_string(*p));
    json_object_object_add(inner, "version", json_object_new_string(PACKAGE_VERSION));
    json_object_object_add(inner, "service", json_object_new_string(service));
    json_object_object_add(inner, "commands", list);
    json_object_object_add(g, "blkmig", inner);
    c->greeting = strdup(json_object_to_json_string_ext(g, JSON_C_TO_STRING_PLAIN));
    json_object_put(g);
    c->path = strdup(path);
    c->lfd = bm_listen_unix(path);
    if (c->lfd < 0 || !c->greeting || !c->path || pipe2(c->stop_pipe, O_CLOEXEC) < 0 ||
        pthread_create(&c->thread, NULL, control_main, c) != 0) {
        int e = c->lfd < 0 ? -c->lfd : errno;
        if (c->lfd >= 0) {
            close(c->lfd);
            unlink(path);
        }
        free(c->greeting);
        free(c->path);
        free(c);
        errno = e;
        return NULL;
    }
    return c;
}

void bm_control_emit(struct bm_control *c, const char *event, struct json_object *data)
{
    if (!c) {
        json_object_put(data);
        return;
    }
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct json_object *e = json_object_new_object(), *ts = json_object_new_object();
    json_object_object_add(e, "event", json_object_new_string(event));
    json_object_object_add(e, "data", data ? data : json_object_new_object());
    json_object_object_add(ts, "seconds", json_object_new_int64(tv.tv_sec));
    json_object_object_add(ts, "microseconds", json_object_new_int64(tv.tv_usec));
    json_object_object_add(e, "timestamp", ts);
    const char *line = json_object_to_json_string_ext(e, JSON_C_TO_STRING_PLAIN);
    pthread_mutex_lock(&c->lock);
    for (int i = 0; i < MAX_CLIENTS; i++) {
        struct client *cl = &c->clients[i];
        if (cl->fd < 0)
            continue;
        /* A client too slow to take an event is dropped rather than stalling the job. */
        if (send_line_nowait(cl->fd, line) < 0)
            shutdown(cl->fd, SHUT_RDWR); /* the control thread sees it and drops the client */
    }
    pthread_mutex_unlock(&c->lock);
    json_object_put(e);
}

void bm_control_stop(struct bm_control *c)
{
    if (!c)
        return;
    ssize_t w = write(c->stop_pipe[1], "x", 1);
    (void)w;
    pthread_join(c->thread, NULL);
    for (int i = 0; i < MAX_CLIENTS; i++)
        if (c->clients[i].fd >= 0)
            drop_client(c, &c->clients[i]);
    close(c->lfd);
    unlink(c->path);
    close(c->stop_pipe[0]);
    close(c->stop_pipe[1]);
    pthread_mutex_destroy(&c->lock);
    free(c->greeting);
    free(c->path);
    free(c);
}

/* Read one line (without the newline) from fd into a malloc'd string. */
static char *read_line(int fd, char *buf, size_t *have, size_t cap)
{
    for (;;) {
        char *nl = memchr(buf, '\n', *have);
        if (nl) {
            size_t n = (size_t)(nl - buf);
            char *line = strndup(buf, n);
            memmove(buf, nl + 1, *have - n - 1);
            *have -= n + 1;
            return line;
        }
        if (*have >= cap)
            return NULL;
        ssize_t r = read(fd, buf + *have, cap - *have);
        if (r <= 0)
            return NULL;
        *have += (size_t)r;
    }
}

struct json_object *bm_control_call(const char *path, const char *cmd, struct json_object *args,
                                    int events_fd, char *err, size_t errlen)
{
    return bm_control_call_follow(path, cmd, args, events_fd, NULL, NULL, err, errlen);
}

struct json_object *bm_control_call_follow(const char *path, const char *cmd,
                                           struct json_object *args, int events_fd,
                                           bm_control_event_fn fn, void *opaque, char *err,
                                           size_t errlen)
{
    int fd = bm_connect_unix(path);
    if (fd < 0) {
        snprintf(err, errlen, "cannot connect to %s: %s", path, strerror(-fd));
        return NULL;
    }
    char *buf = malloc(MAX_LINE);
    size_t have = 0;
    struct json_object *result = NULL;
    char *line = buf ? read_line(fd, buf, &have, MAX_LINE) : NULL;
    if (!line) {
        snprintf(err, errlen, "%s: no greeting", path);
        goto out;
    }
    free(line);
    struct json_object *req = json_object_new_object();
    json_object_object_add(req, "execute", json_object_new_string(cmd));
    if (args)
        json_object_object_add(req, "arguments", json_object_get(args));
    int r = send_line(fd, json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN));
    json_object_put(req);
    if (r < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(-r));
        goto out;
    }
    /* Events may come before the reply (a job that ends at once): keep them for fn. */
    struct json_object *early[64];
    unsigned nearly = 0;
    bool done = false;
    while (!done && (line = read_line(fd, buf, &have, MAX_LINE)) != NULL) {
        struct json_object *o = json_tokener_parse(line);
        struct json_object *x;
        if (!result && o &&
            (json_object_object_get_ex(o, "return", &x) ||
             json_object_object_get_ex(o, "error", &x))) {
            free(line);
            result = o;
            if (!fn || !json_object_object_get_ex(o, "return", &x))
                break;
            for (unsigned i = 0; i < nearly && !done; i++)
                done = fn(opaque, early[i]);
            continue;
        }
        if (!result && fn && o && nearly < sizeof early / sizeof early[0]) {
            early[nearly++] = o;
            if (events_fd >= 0)
                dprintf(events_fd, "%s\n", line);
            free(line);
            continue;
        }
        if (result && fn) {
            done = o && fn(opaque, o);
            json_object_put(o);
            free(line);
            continue;
        }
        if (events_fd >= 0) {
            dprintf(events_fd, "%s\n", line);
        }
        json_object_put(o);
        free(line);
    }
    if (!result)
        snprintf(err, errlen, "%s: connection closed before the reply", path);
    else if (fn && !done && !line)
        fn(opaque, NULL); /* the connection ended */
    for (unsigned i = 0; i < nearly; i++)
        json_object_put(early[i]);
out:
    free(buf);
    close(fd);
    return result;
}
