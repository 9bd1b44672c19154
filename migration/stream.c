/* stream.c: migration stream framing: encode, check, send and receive frames. */
#include <config.h>

#include <errno.h>
#include <stdbool.h>
#include <json-c/json.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include "common/io.h"
#include "common/log.h"
#include "migration/stream.h"

const char *mig_frame_name(uint32_t type)
{
    static const char *const names[] = {"?",     "HELLO",    "HELLO_ACK", "RAM",   "RAM_ZLIB",
                                        "STATE", "COMPLETE", "RESUMED",   "ABORT", "PING", "REPORT",
                                        "DURABLE"};
    return type <= MIG_FRAME_TYPE_MAX ? names[type] : "?";
}

void mig_stream_header_encode(uint8_t out[MIG_STREAM_HDR])
{
    memcpy(out, MIG_STREAM_MAGIC, 8);
    bm_put_be32(out + 8, MIG_STREAM_VERSION);
    bm_put_be32(out + 12, 0);
}

int mig_stream_header_check(const uint8_t in[MIG_STREAM_HDR])
{
    if (memcmp(in, MIG_STREAM_MAGIC, 8) != 0)
        return -EPROTO;
    if (bm_get_be32(in + 8) != MIG_STREAM_VERSION || bm_get_be32(in + 12) != 0)
        return -EPROTONOSUPPORT;
    return 0;
}

static uint64_t frame_sum(const uint8_t hdr[MIG_FRAME_HDR], const void *payload, uint32_t len)
{
    XXH3_state_t st;
    XXH3_64bits_reset(&st);
    XXH3_64bits_update(&st, hdr, MIG_FRAME_HDR);
    if (len)
        XXH3_64bits_update(&st, payload, len);
    return XXH3_64bits_digest(&st);
}

void mig_frame_encode(uint32_t type, const void *payload, uint32_t len,
                      uint8_t hdr[MIG_FRAME_HDR], uint8_t trailer[MIG_FRAME_TRAILER])
{
    bm_put_be32(hdr, type);
    bm_put_be32(hdr + 4, len);
    bm_put_be64(trailer, frame_sum(hdr, payload, len));
}

int mig_frame_header_parse(const uint8_t hdr[MIG_FRAME_HDR], uint32_t *type, uint32_t *len)
{
    *type = bm_get_be32(hdr);
    *len = bm_get_be32(hdr + 4);
    if (*type == 0 || *type > MIG_FRAME_TYPE_MAX)
        return -EPROTO;
    if (*len > MIG_FRAME_MAX)
        return -EMSGSIZE;
    return 0;
}

int mig_frame_verify(const uint8_t hdr[MIG_FRAME_HDR], const void *payload, uint32_t len,
                     const uint8_t trailer[MIG_FRAME_TRAILER])
{
    return bm_get_be64(trailer) == frame_sum(hdr, payload, len) ? 0 : -EBADMSG;
}

void mig_conn_init(struct mig_conn *c, int fd)
{
    memset(c, 0, sizeof *c);
    c->fd = fd;
}

void mig_conn_close(struct mig_conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    free(c->rbuf);
    c->rbuf = NULL;
    c->rcap = 0;
}

int mig_send_header(struct mig_conn *c)
{
    uint8_t h[MIG_STREAM_HDR];
    mig_stream_header_encode(h);
    int r = bm_write_full(c->fd, h, sizeof h);
    if (r == 0)
        c->bytes_sent += sizeof h;
    return r;
}

static uint64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000u + (uint64_t)t.tv_nsec / 1000000u;
}

/* Read exactly len bytes before the deadline. */
static int read_by(struct mig_conn *c, void *buf, size_t len, uint64_t deadline)
{
    uint8_t *p = buf;
    size_t done = 0;
    while (done < len) {
        uint64_t now = now_ms();
        if (now >= deadline)
            return -ETIMEDOUT;
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        int n = poll(&pfd, 1, (int)(deadline - now));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return -ETIMEDOUT;
        ssize_t r = recv(c->fd, p + done, len - done, 0);
        if (r < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return -errno;
        }
        if (r == 0)
            return -ECONNRESET;
        done += (size_t)r;
        c->bytes_received += (uint64_t)r;
    }
    return 0;
}

int mig_recv_header(struct mig_conn *c, int timeout_ms)
{
    uint8_t h[MIG_STREAM_HDR];
    int r = read_by(c, h, sizeof h, now_ms() + (uint64_t)timeout_ms);
    return r < 0 ? r : mig_stream_header_check(h);
}

int mig_send(struct mig_conn *c, uint32_t type, const void *payload, uint32_t len)
{
    uint8_t hdr[MIG_FRAME_HDR], tr[MIG_FRAME_TRAILER];
    if (len > MIG_FRAME_MAX)
        return -EMSGSIZE;
    mig_frame_encode(type, payload, len, hdr, tr);
    struct iovec iov[3] = {{hdr, sizeof hdr}, {(void *)payload, len}, {tr, sizeof tr}};
    int r = bm_writev_full(c->fd, iov, 3);
    if (r == -EAGAIN || r == -EWOULDBLOCK)
        r = -ETIMEDOUT; /* the socket's send timeout */
    if (r == 0)
        c->bytes_sent += MIG_FRAME_HDR + len + MIG_FRAME_TRAILER;
    return r;
}

int mig_send_json(struct mig_conn *c, uint32_t type, struct json_object *o)
{
    const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
    return mig_send(c, type, s, (uint32_t)strlen(s));
}

int mig_recv(struct mig_conn *c, int timeout_ms, uint32_t *type, uint8_t **payload,
             uint32_t *len)
{
    uint8_t hdr[MIG_FRAME_HDR], tr[MIG_FRAME_TRAILER];
    c->partial = false;
    /* Wait for the first byte; then the frame gets its own time to arrive whole. */
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    int n;
    do
        n = poll(&pfd, 1, timeout_ms);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    if (n == 0)
        return -ETIMEDOUT;
    int ft = c->frame_timeout_ms > 0 ? c->frame_timeout_ms : timeout_ms;
    uint64_t deadline = now_ms() + (uint64_t)ft;
    int r = read_by(c, hdr, sizeof hdr, deadline);
    if (r == -ETIMEDOUT)
        c->partial = true;
    if (r < 0)
        return r;
    r = mig_frame_header_parse(hdr, type, len);
    if (r < 0)
        return r;
    if (c->rcap < (size_t)*len + 1) {
        size_t cap = (size_t)*len + 1 < 65536 ? 65536 : (size_t)*len + 1;
        uint8_t *nb = realloc(c->rbuf, cap);
        if (!nb)
            return -ENOMEM;
        c->rbuf = nb;
        c->rcap = cap;
    }
    deadline = now_ms() + (uint64_t)ft;
    if ((r = read_by(c, c->rbuf, *len, deadline)) < 0 ||
        (r = read_by(c, tr, sizeof tr, deadline)) < 0) {
        c->partial = r == -ETIMEDOUT;
        return r;
    }
    c->rbuf[*len] = '\0';
    if (mig_frame_verify(hdr, c->rbuf, *len, tr) < 0)
        return -EBADMSG;
    *payload = c->rbuf;
    return 0;
}

int64_t mig_send_ram(void *conn, bool zlib, const void *buf, uint32_t len)
{
    struct mig_conn *c = conn;
    int r = mig_send(c, zlib ? MIG_RAM_ZLIB : MIG_RAM, buf, len);
    return r < 0 ? r : (int64_t)MIG_FRAME_HDR + len + MIG_FRAME_TRAILER;
}

struct json_object *mig_parse_json(const uint8_t *payload, uint32_t len)
{
    struct json_tokener *tok = json_tokener_new();
    if (!tok)
        return NULL;
    struct json_object *o = json_tokener_parse_ex(tok, (const char *)payload, (int)len);
    bool complete = json_tokener_get_error(tok) == json_tokener_success &&
                    json_tokener_get_parse_end(tok) == len;
    json_tokener_free(tok);
    if (o && (!complete || !json_object_is_type(o, json_type_object))) {
        json_object_put(o);
        return NULL;
    }
    return o;
}

const char *mig_abort_reason(const uint8_t *payload, uint32_t len, char *buf, size_t buflen)
{
    struct json_object *o = mig_parse_json(payload, len), *x;
    bool has = o && json_object_object_get_ex(o, "reason", &x) &&
               json_object_is_type(x, json_type_string);
    bm_log_escape(has ? json_object_get_string(x) : "(no reason)", buf, buflen);
    json_object_put(o);
    return buf;
}
