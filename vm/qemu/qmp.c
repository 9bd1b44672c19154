/* qmp.c: QMP client: the greeting, commands with ids, queued events, every line checked. */
#include <config.h>

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "common/io.h"
#include "common/log.h"
#include "common/sock.h"
#include "vm/qemu/qmp.h"

/* Nesting QEMU's replies need (query-block's backing chains nest one level per image), with
 * room; json-c's default is 32. */
#define PARSE_DEPTH 64
/* The read buffer starts at this and doubles up to a whole line (plus CR LF). */
#define BUF_MIN (64u * 1024)
#define BUF_MAX (BM_QMP_MAX_LINE + 2u)
/* How much of a bad line a message quotes. */
#define QUOTE_LEN 80

struct event {
    struct event *next;
    struct json_object *obj;
    size_t bytes; /* its line's length, for BM_QMP_MAX_EVENT_BYTES */
};

struct bm_qmp {
    int fd;
    char *name; /* the socket's path, for messages */
    int major, minor, micro;
    uint64_t next_id; /* ids below it were sent: a reply to one not awaited is a late one */
    /* Received bytes: buf[off, len) are not consumed yet; buf[off, scanned) hold no '\n'. */
    char *buf;
    size_t cap, off, len, scanned;
    int broken;           /* 0, or the -errno every call returns from now on */
    char broken_msg[512]; /* and its message */
    struct event *head, *tail;
    size_t nevents, event_bytes;
    uint64_t dropped;
    bool dropping; /* events were dropped since the queue was last empty: warned already */
};

static int64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int64_t deadline_of(int timeout_ms)
{
    return timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
}

static int remaining_ms(int64_t deadline)
{
    if (deadline < 0)
        return -1;
    int64_t left = deadline - now_ms();
    return left <= 0 ? 0 : left > INT_MAX ? INT_MAX : (int)left;
}

static void fmt_err(char *err, size_t errlen, const char *fmt, va_list ap)
{
    if (err && errlen > 0)
        vsnprintf(err, errlen, fmt, ap);
}

/* An error after which the connection is still in step: returns code. */
__attribute__((format(printf, 4, 5))) static int soft(int code, char *err, size_t errlen,
                                                      const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fmt_err(err, errlen, fmt, ap);
    va_end(ap);
    return code;
}

/* An error that leaves the stream out of step (or gone): the client is broken from now on. */
__attribute__((format(printf, 5, 6))) static int fatal(struct bm_qmp *q, int code, char *err,
                                                       size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(q->broken_msg, sizeof q->broken_msg, fmt, ap);
    va_end(ap);
    q->broken = code;
    if (err && errlen > 0)
        snprintf(err, errlen, "%s", q->broken_msg);
    return code;
}

static int check_broken(const struct bm_qmp *q, char *err, size_t errlen)
{
    if (q->broken)
        soft(0, err, errlen, "%s (the connection is unusable)", q->broken_msg);
    return q->broken;
}

/* The start of a received line, escaped, for a message. */
static const char *quote(const char *line, size_t len, char *out, size_t outlen)
{
    char raw[QUOTE_LEN + 1];
    size_t n = len < QUOTE_LEN ? len : QUOTE_LEN;
    memcpy(raw, line, n);
    raw[n] = '\0'; /* a NUL byte inside cuts the quote there: it is only for a human */
    bm_log_escape(raw, out, outlen);
    if (n < len && strlen(out) + 4 < outlen)
        strcat(out, "...");
    return out;
}

/* ---- parsing one line ---- */

static bool get_int(struct json_object *o, const char *key, int64_t lo, int64_t hi, int64_t *v)
{
    struct json_object *x;
    if (!json_object_object_get_ex(o, key, &x) || !json_object_is_type(x, json_type_int))
        return false;
    *v = json_object_get_int64(x);
    return *v >= lo && *v <= hi;
}

static struct json_object *get_type(struct json_object *o, const char *key, enum json_type t)
{
    struct json_object *x;
    return json_object_object_get_ex(o, key, &x) && json_object_is_type(x, t) ? x : NULL;
}

/* A string member this client reads as a C string: one with a \u0000 inside is refused, or
 * "Foo\u0000bar" would be read as "Foo". */
static struct json_object *get_cstr(struct json_object *o, const char *key)
{
    struct json_object *x = get_type(o, key, json_type_string);
    return x && strlen(json_object_get_string(x)) == (size_t)json_object_get_string_len(x) ? x
                                                                                           : NULL;
}

static int parse_greeting(struct bm_qmp_msg *m, struct json_object *g, char *err, size_t errlen)
{
    struct json_object *ver = get_type(g, "version", json_type_object);
    struct json_object *qemu = ver ? get_type(ver, "qemu", json_type_object) : NULL;
    int64_t v[3];
    if (!qemu || !get_int(qemu, "major", 0, INT_MAX, &v[0]) ||
        !get_int(qemu, "minor", 0, INT_MAX, &v[1]) || !get_int(qemu, "micro", 0, INT_MAX, &v[2]))
        return soft(-EPROTO, err, errlen,
                    "greeting without QMP.version.qemu.{major,minor,micro} as integers");
    struct json_object *x;
    if (json_object_object_get_ex(ver, "package", &x) && !json_object_is_type(x, json_type_string))
        return soft(-EPROTO, err, errlen, "greeting whose version.package is not a string");
    if (!get_type(g, "capabilities", json_type_array))
        return soft(-EPROTO, err, errlen, "greeting without a capabilities array");
    m->kind = BM_QMP_GREETING;
    m->major = (int)v[0];
    m->minor = (int)v[1];
    m->micro = (int)v[2];
    return 0;
}

static int parse_event(struct bm_qmp_msg *m, struct json_object *o, char *err, size_t errlen)
{
    struct json_object *name = get_cstr(o, "event"), *x;
    if (!name || json_object_get_string_len(name) == 0)
        return soft(-EPROTO, err, errlen, "event whose name is not a non-empty string without NUL");
    if (json_object_object_get_ex(o, "data", &x) && !json_object_is_type(x, json_type_object))
        return soft(-EPROTO, err, errlen, "event whose data is not an object");
    struct json_object *ts = get_type(o, "timestamp", json_type_object);
    int64_t s, us;
    if (!ts || !get_int(ts, "seconds", -1, INT64_MAX, &s) ||
        !get_int(ts, "microseconds", -1, 999999, &us))
        return soft(-EPROTO, err, errlen, "event without a timestamp {seconds, microseconds}");
    m->kind = BM_QMP_EVENT;
    m->event = json_object_get_string(name);
    return 0;
}

static int parse_reply(struct bm_qmp_msg *m, struct json_object *o, char *err, size_t errlen)
{
    struct json_object *id, *e;
    if (json_object_object_get_ex(o, "id", &id)) {
        /* This client sends integers from 1; QEMU echoes them as they were. */
        if (!json_object_is_type(id, json_type_int) || json_object_get_int64(id) < 0)
            return soft(-EPROTO, err, errlen, "reply whose id is not an integer >= 0");
        m->has_id = true;
        m->id = json_object_get_uint64(id);
    }
    if (json_object_object_get_ex(o, "return", &m->ret)) {
        m->kind = BM_QMP_RETURN;
        return 0;
    }
    json_object_object_get_ex(o, "error", &e);
    struct json_object *cls = e ? get_cstr(e, "class") : NULL;
    struct json_object *desc = e ? get_cstr(e, "desc") : NULL;
    if (!cls || !desc)
        return soft(-EPROTO, err, errlen,
                    "error reply without error.class and error.desc strings (without NUL)");
    m->kind = BM_QMP_ERROR;
    m->err_class = json_object_get_string(cls);
    m->err_desc = json_object_get_string(desc);
    return 0;
}

/* The whole line as one JSON object, strictly (nothing but white space after it). */
static int parse_object(const char *line, size_t len, struct json_object **out, char *err,
                        size_t errlen)
{
    if (memchr(line, '\0', len))
        return soft(-EPROTO, err, errlen, "a NUL byte in the line");
    struct json_tokener *tok = json_tokener_new_ex(PARSE_DEPTH);
    if (!tok)
        return soft(-ENOMEM, err, errlen, "out of memory");
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    struct json_object *o = json_tokener_parse_ex(tok, line, (int)len);
    enum json_tokener_error je = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    if (!o)
        return soft(-EPROTO, err, errlen, "not JSON: %s",
                    je == json_tokener_continue ? "the line ends inside a value"
                                                : json_tokener_error_desc(je));
    while (end < len && strchr(" \t\r", line[end]))
        end++;
    if (end < len || !json_object_is_type(o, json_type_object)) {
        json_object_put(o);
        return soft(-EPROTO, err, errlen,
                    end < len ? "more than one JSON value in the line" : "not a JSON object");
    }
    *out = o;
    return 0;
}

int bm_qmp_parse(const char *line, size_t len, struct bm_qmp_msg *m, char *err, size_t errlen)
{
    memset(m, 0, sizeof *m);
    if (len > 0 && line[len - 1] == '\r')
        len--;
    if (len > BM_QMP_MAX_LINE)
        return soft(-EMSGSIZE, err, errlen, "a line of more than %u bytes", BM_QMP_MAX_LINE);
    struct json_object *o = NULL;
    int r = parse_object(line, len, &o, err, errlen);
    if (r < 0)
        return r;
    static const char *const keys[] = {"QMP", "event", "return", "error"};
    int found = -1, n = 0;
    for (int i = 0; i < 4; i++)
        if (json_object_object_get_ex(o, keys[i], NULL)) {
            found = i;
            n++;
        }
    if (n != 1) {
        r = soft(-EPROTO, err, errlen,
                 n ? "more than one of QMP, event, return, error in one object"
                   : "an object that is no greeting, reply or event");
    } else if (found == 0) {
        struct json_object *g = get_type(o, "QMP", json_type_object);
        r = g ? parse_greeting(m, g, err, errlen)
              : soft(-EPROTO, err, errlen, "greeting whose QMP is not an object");
    } else if (found == 1) {
        r = parse_event(m, o, err, errlen);
    } else {
        r = parse_reply(m, o, err, errlen);
    }
    if (r < 0) {
        json_object_put(o);
        memset(m, 0, sizeof *m);
        return r;
    }
    m->obj = o;
    return 0;
}

void bm_qmp_msg_clear(struct bm_qmp_msg *m)
{
    json_object_put(m->obj);
    memset(m, 0, sizeof *m);
}

/* ---- the socket ---- */

/* Move the unconsumed bytes to the start of the buffer. */
static void compact(struct bm_qmp *q)
{
    if (q->off == 0)
        return;
    memmove(q->buf, q->buf + q->off, q->len - q->off);
    q->len -= q->off;
    q->scanned -= q->off;
    q->off = 0;
}

/* Room for at least one more read; the buffer never grows past a whole line. */
static int grow(struct bm_qmp *q)
{
    compact(q);
    if (q->len < q->cap)
        return 0;
    size_t cap = q->cap ? q->cap * 2 : BUF_MIN;
    if (cap > BUF_MAX)
        cap = BUF_MAX;
    if (cap <= q->len)
        return -EMSGSIZE;
    char *b = realloc(q->buf, cap);
    if (!b)
        return -ENOMEM;
    q->buf = b;
    q->cap = cap;
    return 0;
}

/* After a big reply, give the memory back once the buffer is nearly empty again. */
static void shrink(struct bm_qmp *q)
{
    if (q->cap <= BUF_MIN || q->len - q->off > BUF_MIN / 2)
        return;
    compact(q);
    char *b = realloc(q->buf, BUF_MIN);
    if (b) {
        q->buf = b;
        q->cap = BUF_MIN;
    }
}

/* The next line (without its CR LF or LF) in *line, valid until the next call; what: what the
 * caller waits for, for messages. */
static int read_line(struct bm_qmp *q, int64_t deadline, const char *what, const char **line,
                     size_t *len, char *err, size_t errlen)
{
    for (;;) {
        char *nl =
            q->len > q->scanned ? memchr(q->buf + q->scanned, '\n', q->len - q->scanned) : NULL;
        if (nl) {
            *line = q->buf + q->off;
            *len = (size_t)(nl - *line);
            if (*len > 0 && (*line)[*len - 1] == '\r')
                (*len)--;
            q->off = q->scanned = (size_t)(nl - q->buf) + 1;
            return 0;
        }
        q->scanned = q->len;
        int r = grow(q);
        if (r == -EMSGSIZE)
            return fatal(q, r, err, errlen, "QMP %s: a line longer than %u bytes %s", q->name,
                         BM_QMP_MAX_LINE, what);
        if (r < 0)
            return fatal(q, r, err, errlen, "QMP %s: out of memory %s", q->name, what);
        struct pollfd p = {.fd = q->fd, .events = POLLIN};
        r = poll(&p, 1, remaining_ms(deadline));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return fatal(q, -errno, err, errlen, "QMP %s: poll: %s", q->name, strerror(errno));
        if (r == 0)
            return soft(-ETIMEDOUT, err, errlen, "QMP %s: timed out %s", q->name, what);
        ssize_t n = read(q->fd, q->buf + q->len, q->cap - q->len);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n < 0)
            return fatal(q, -errno, err, errlen, "QMP %s: read %s: %s", q->name, what,
                         strerror(errno));
        if (n == 0)
            return fatal(q, -ECONNRESET, err, errlen, "QMP %s: connection closed %s%s", q->name,
                         what, q->len > q->off ? " (in the middle of a line)" : "");
        q->len += (size_t)n;
    }
}

static void drop_oldest(struct bm_qmp *q)
{
    struct event *e = q->head;
    q->head = e->next;
    if (!q->head)
        q->tail = NULL;
    q->nevents--;
    q->event_bytes -= e->bytes;
    json_object_put(e->obj);
    free(e);
}

/* Queue m's event (taking its object); the oldest make room when the queue is full. */
static int queue_event(struct bm_qmp *q, struct bm_qmp_msg *m, size_t bytes)
{
    struct event *e = malloc(sizeof *e);
    if (!e)
        return -ENOMEM;
    while (q->head &&
           (q->nevents >= BM_QMP_MAX_EVENTS || q->event_bytes + bytes > BM_QMP_MAX_EVENT_BYTES)) {
        if (!q->dropping)
            bm_warn("QMP %s: event queue full (%zu events, %zu bytes): dropping the oldest",
                    q->name, q->nevents, q->event_bytes);
        q->dropping = true;
        q->dropped++;
        drop_oldest(q);
    }
    *e = (struct event){.obj = m->obj, .bytes = bytes};
    m->obj = NULL;
    if (q->tail)
        q->tail->next = e;
    else
        q->head = e;
    q->tail = e;
    q->nevents++;
    q->event_bytes += bytes;
    return 0;
}

/* Read and handle one line: an event is queued (returns 0), the reply to want_id (0: none) is
 * moved to *reply (returns 1), a late reply is dropped (0). */
static int read_one(struct bm_qmp *q, int64_t deadline, const char *what, uint64_t want_id,
                    struct bm_qmp_msg *reply, char *err, size_t errlen)
{
    const char *line;
    size_t len;
    int r = read_line(q, deadline, what, &line, &len, err, errlen);
    if (r < 0)
        return r;
    if (len == 0)
        return 0; /* an empty line carries nothing */
    struct bm_qmp_msg m;
    char why[160], qt[4 * QUOTE_LEN + 8];
    r = bm_qmp_parse(line, len, &m, why, sizeof why);
    if (r < 0)
        return fatal(q, r, err, errlen, "QMP %s: bad line %s: %s: '%s'", q->name, what, why,
                     quote(line, len, qt, sizeof qt));
    switch (m.kind) {
    case BM_QMP_EVENT:
        r = queue_event(q, &m, len);
        bm_qmp_msg_clear(&m);
        return r < 0 ? fatal(q, r, err, errlen, "QMP %s: out of memory", q->name) : 0;
    case BM_QMP_GREETING:
        bm_qmp_msg_clear(&m);
        return fatal(q, -EPROTO, err, errlen, "QMP %s: a second greeting %s", q->name, what);
    default:
        break;
    }
    if (m.has_id && want_id != 0 && m.id == want_id) {
        *reply = m;
        return 1;
    }
    if (m.has_id && m.id != 0 && m.id < q->next_id) {
        bm_debug("QMP %s: dropped the late reply to command %llu", q->name,
                 (unsigned long long)m.id);
        bm_qmp_msg_clear(&m);
        return 0;
    }
    if (m.kind == BM_QMP_ERROR) {
        char c[64], d[256];
        fatal(q, -EPROTO, err, errlen, "QMP %s: an error reply %s %s: %s: %s", q->name,
              m.has_id ? "to a command never sent" : "without an id", what,
              bm_log_escape(m.err_class, c, sizeof c), bm_log_escape(m.err_desc, d, sizeof d));
    } else {
        fatal(q, -EPROTO, err, errlen, "QMP %s: a reply %s %s", q->name,
              m.has_id ? "to a command never sent" : "without an id", what);
    }
    bm_qmp_msg_clear(&m);
    return -EPROTO;
}

#define QMP_SEND_TIMEOUT_S 10

/* Send line[0, len) with fd attached to its first byte (SCM_RIGHTS: QEMU keeps the last fd
 * received for the command that reads it, e.g. getfd), the rest as a plain write. */
static int send_with_fd(int sock, const char *line, size_t len, int fd)
{
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    memset(&u, 0, sizeof u);
    struct iovec iov = {(void *)line, len};
    struct msghdr mh = {.msg_iov = &iov,
                        .msg_iovlen = 1,
                        .msg_control = u.buf,
                        .msg_controllen = sizeof u.buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    ssize_t n;
    do
        n = sendmsg(sock, &mh, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    struct iovec rest = {(void *)(line + n), len - (size_t)n};
    return rest.iov_len ? bm_writev_full(sock, &rest, 1) : 0;
}

static int send_command(struct bm_qmp *q, const char *command, struct json_object *args,
                        uint64_t id, int fd, char *err, size_t errlen)
{
    struct json_object *req = json_object_new_object();
    if (!req)
        return fatal(q, -ENOMEM, err, errlen, "QMP %s: out of memory", q->name);
    json_object_object_add(req, "execute", json_object_new_string(command));
    if (args)
        json_object_object_add(req, "arguments", json_object_get(args));
    json_object_object_add(req, "id", json_object_new_uint64(id));
    const char *s = json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN);
    char *line = NULL;
    int r = -ENOMEM;
    if (s && fd >= 0 && asprintf(&line, "%s\n", s) >= 0) {
        r = send_with_fd(q->fd, line, strlen(line), fd);
    } else if (s && fd < 0) {
        struct iovec iov[2] = {{(void *)s, strlen(s)}, {(void *)"\n", 1}};
        r = bm_writev_full(q->fd, iov, 2);
    }
    free(line);
    json_object_put(req);
    if (r == -EPIPE)
        r = -ECONNRESET;
    if (r == -EAGAIN || r == -EWOULDBLOCK)
        r = -ETIMEDOUT; /* QMP_SEND_TIMEOUT_S: QEMU stopped reading its monitor */
    if (r < 0)
        return fatal(q, r, err, errlen, "QMP %s: sending %s: %s", q->name, command, strerror(-r));
    return 0;
}

/* want < 0: any type. */
static int qmp_exec(struct bm_qmp *q, const char *command, struct json_object *args, int want,
                    int fd, struct json_object **ret, int timeout_ms, char *err, size_t errlen)
{
    if (ret)
        *ret = NULL;
    int r = check_broken(q, err, errlen);
    if (r < 0)
        return r;
    if (!command || !*command || (args && !json_object_is_type(args, json_type_object)))
        return soft(-EINVAL, err, errlen, "QMP %s: a command needs a name and object arguments",
                    q->name);
    shrink(q);
    int64_t deadline = deadline_of(timeout_ms);
    uint64_t id = q->next_id++;
    r = send_command(q, command, args, id, fd, err, errlen);
    if (r < 0)
        return r;
    char what[96];
    snprintf(what, sizeof what, "waiting for the reply to %.64s", command);
    struct bm_qmp_msg m;
    while ((r = read_one(q, deadline, what, id, &m, err, errlen)) == 0)
        ;
    if (r < 0)
        return r;
    r = 0;
    if (m.kind == BM_QMP_ERROR) {
        char c[64], d[384];
        r = soft(-EREMOTEIO, err, errlen, "%s: %s", bm_log_escape(m.err_class, c, sizeof c),
                 bm_log_escape(m.err_desc, d, sizeof d));
    } else if (want >= 0 && !json_object_is_type(m.ret, (enum json_type)want)) {
        const char *got = json_type_to_name(json_object_get_type(m.ret));
        r = soft(-EBADMSG, err, errlen, "QMP %s: %.64s returned %s %s, expected %s", q->name,
                 command, strchr("aeiou", got[0]) ? "an" : "a", got,
                 json_type_to_name((enum json_type)want));
    } else if (ret) {
        *ret = json_object_get(m.ret);
    }
    bm_qmp_msg_clear(&m);
    return r;
}

int bm_qmp_exec(struct bm_qmp *q, const char *command, struct json_object *args,
                struct json_object **ret, int timeout_ms, char *err, size_t errlen)
{
    return qmp_exec(q, command, args, -1, -1, ret, timeout_ms, err, errlen);
}

int bm_qmp_exec_fd(struct bm_qmp *q, const char *command, struct json_object *args, int fd,
                   struct json_object **ret, int timeout_ms, char *err, size_t errlen)
{
    if (fd < 0)
        return soft(-EBADF, err, errlen, "QMP %s: %s needs a file descriptor", q->name, command);
    return qmp_exec(q, command, args, -1, fd, ret, timeout_ms, err, errlen);
}

int bm_qmp_exec_type(struct bm_qmp *q, const char *command, struct json_object *args,
                     enum json_type want, struct json_object **ret, int timeout_ms, char *err,
                     size_t errlen)
{
    return qmp_exec(q, command, args, (int)want, -1, ret, timeout_ms, err, errlen);
}

int bm_qmp_next_event(struct bm_qmp *q, int timeout_ms, struct json_object **ev, char *err,
                      size_t errlen)
{
    *ev = NULL;
    int64_t deadline = deadline_of(timeout_ms);
    while (!q->head) {
        int r = check_broken(q, err, errlen);
        if (r < 0)
            return r;
        q->dropping = false;
        shrink(q);
        r = read_one(q, deadline, "waiting for an event", 0, NULL, err, errlen);
        if (r < 0)
            return r;
    }
    *ev = json_object_get(q->head->obj);
    drop_oldest(q);
    return 0;
}

uint64_t bm_qmp_events_dropped(const struct bm_qmp *q)
{
    return q->dropped;
}

size_t bm_qmp_events_queued(const struct bm_qmp *q)
{
    return q->nevents;
}

int bm_qmp_fd(const struct bm_qmp *q)
{
    return q->fd;
}

void bm_qmp_version(const struct bm_qmp *q, int *major, int *minor, int *micro)
{
    *major = q->major;
    *minor = q->minor;
    *micro = q->micro;
}

void bm_qmp_close(struct bm_qmp *q)
{
    if (!q)
        return;
    while (q->head)
        drop_oldest(q);
    if (q->fd >= 0)
        close(q->fd);
    free(q->buf);
    free(q->name);
    free(q);
}

/* The greeting: the first line, which tells a QMP server from anything else. */
static int read_greeting(struct bm_qmp *q, int64_t deadline, char *err, size_t errlen)
{
    const char *line;
    size_t len;
    int r;
    do
        r = read_line(q, deadline, "waiting for the greeting", &line, &len, err, errlen);
    while (r == 0 && len == 0);
    /* QEMU greets a client only once it has accepted it, and serves one at a time. */
    if (r == -ETIMEDOUT)
        return soft(r, err, errlen,
                    "QMP %s: timed out waiting for the greeting (QEMU serves one QMP client at a "
                    "time: is another one connected?)",
                    q->name);
    if (r < 0)
        return r;
    struct bm_qmp_msg m;
    char why[160], qt[4 * QUOTE_LEN + 8];
    r = bm_qmp_parse(line, len, &m, why, sizeof why);
    if (r == 0 && m.kind != BM_QMP_GREETING) {
        snprintf(why, sizeof why, "no greeting");
        bm_qmp_msg_clear(&m);
        r = -EPROTO;
    }
    if (r < 0)
        return fatal(q, r == -ENOMEM ? r : -EPROTO, err, errlen,
                     "QMP %s: not a QMP server: %s: the first line is '%s'", q->name, why,
                     quote(line, len, qt, sizeof qt));
    q->major = m.major;
    q->minor = m.minor;
    q->micro = m.micro;
    bm_qmp_msg_clear(&m);
    return 0;
}

int bm_qmp_open_fd(int fd, const char *name, int timeout_ms, struct bm_qmp **qp, char *err,
                   size_t errlen)
{
    *qp = NULL;
    struct bm_qmp *q = calloc(1, sizeof *q);
    if (q)
        q->name = strdup(name);
    if (!q || !q->name) {
        free(q);
        close(fd);
        return soft(-ENOMEM, err, errlen, "QMP %s: out of memory", name);
    }
    q->fd = fd;
    q->next_id = 1;
    /* A command is a few hundred bytes: a send that cannot go on for this long means QEMU no
     * longer reads its monitor, and must not block the caller for ever (the reply's timeout
     * covers only the wait for the reply). */
    struct timeval tv = {.tv_sec = QMP_SEND_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int64_t deadline = deadline_of(timeout_ms);
    int r = read_greeting(q, deadline, err, errlen);
    if (r == 0)
        r = qmp_exec(q, "qmp_capabilities", NULL, json_type_object, -1, NULL, remaining_ms(deadline),
                     err, errlen);
    if (r < 0) {
        bm_qmp_close(q);
        return r;
    }
    *qp = q;
    return 0;
}

int bm_qmp_connect(const char *path, int timeout_ms, struct bm_qmp **q, char *err, size_t errlen)
{
    *q = NULL;
    int fd = bm_connect_unix_nowait(path);
    if (fd == -ENOENT || fd == -ECONNREFUSED)
        return soft(fd, err, errlen, "QMP %s: nothing listening (%s)", path, strerror(-fd));
    if (fd == -EAGAIN)
        return soft(fd, err, errlen,
                    "QMP %s: not accepting connections (QEMU serves one QMP client at a time: "
                    "is another one connected?)",
                    path);
    if (fd < 0)
        return soft(fd, err, errlen, "QMP %s: cannot connect: %s", path, strerror(-fd));
    return bm_qmp_open_fd(fd, path, timeout_ms, q, err, errlen);
}
