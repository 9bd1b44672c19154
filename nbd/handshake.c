/* handshake.c: NBD fixed-newstyle negotiation (options phase) for one connection. */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>

#include "common/io.h"
#include "common/log.h"
#include "nbd/server-internal.h"

uint16_t nbd_export_tflags(const struct nbd_export *e, bool structured)
{
    uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
                 NBD_FLAG_CAN_MULTI_CONN | NBD_FLAG_SEND_CACHE;
    if (e->readonly)
        f |= NBD_FLAG_READ_ONLY;
    else
        f |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
    if (structured)
        f |= NBD_FLAG_SEND_DF;
    return f;
}

const struct nbd_export *nbd_server_find_export(const struct nbd_server *s, const char *name,
                                                uint32_t name_len)
{
    for (unsigned i = 0; i < s->nexports; i++) {
        const struct nbd_export *e = &s->exports[i];
        if (strlen(e->name) == name_len && memcmp(e->name, name, name_len) == 0)
            return e;
    }
    /* The default name reaches the only export, whatever it is called. */
    if (name_len == 0 && s->nexports == 1 && !s->cfg.hide_exports)
        return &s->exports[0];
    return NULL;
}

/* The export name that starts INFO/GO and meta-context payloads: a 32-bit length and the
 * name, followed by at least tail more bytes. Copies it NUL-terminated into name. */
static int parse_name(const uint8_t *data, uint32_t len, uint32_t tail, char *name,
                      uint32_t *name_len)
{
    if (len < 4 + tail)
        return -EINVAL;
    uint32_t nl = bm_get_be32(data);
    if (nl > NBD_MAX_STRING || nl > len - 4 - tail)
        return -EINVAL;
    memcpy(name, data + 4, nl);
    name[nl] = '\0';
    *name_len = nl;
    return 0;
}

int nbd_parse_info_opt(const uint8_t *data, uint32_t len, char *name, uint32_t *name_len,
                       uint16_t *reqs, uint16_t max_reqs, uint16_t *nreqs)
{
    if (parse_name(data, len, 2, name, name_len) < 0)
        return -EINVAL;
    uint32_t nl = *name_len;
    uint16_t n = bm_get_be16(data + 4 + nl);
    if ((uint64_t)4 + nl + 2 + 2 * (uint64_t)n != len)
        return -EINVAL;
    *nreqs = n;
    for (uint16_t i = 0; i < n && i < max_reqs; i++)
        reqs[i] = bm_get_be16(data + 4 + nl + 2 + 2 * i);
    return 0;
}

int nbd_parse_meta_opt(const uint8_t *data, uint32_t len, char *name, uint32_t *name_len,
                       uint32_t *nqueries, uint32_t *queries_off)
{
    if (parse_name(data, len, 4, name, name_len) < 0)
        return -EINVAL;
    uint32_t nl = *name_len;
    uint32_t n = bm_get_be32(data + 4 + nl);
    uint32_t off = 8 + nl;
    for (uint32_t i = 0; i < n; i++) {
        if (len - off < 4)
            return -EINVAL;
        uint32_t ql = bm_get_be32(data + off);
        if (ql > NBD_MAX_STRING || ql > len - off - 4)
            return -EINVAL;
        off += 4 + ql;
    }
    if (off != len)
        return -EINVAL;
    *nqueries = n;
    *queries_off = 8 + nl;
    return 0;
}

static int send_reply(struct nbd_conn *c, uint32_t opt, uint32_t type, const void *data,
                      uint32_t len)
{
    uint8_t hdr[20];
    bm_put_be64(hdr, NBD_REP_MAGIC);
    bm_put_be32(hdr + 8, opt);
    bm_put_be32(hdr + 12, type);
    bm_put_be32(hdr + 16, len);
    struct iovec iov[2] = {{hdr, sizeof hdr}, {(void *)data, len}};
    return bm_writev_full(c->fd, iov, len ? 2 : 1);
}

static int send_error(struct nbd_conn *c, uint32_t opt, uint32_t type, const char *msg)
{
    return send_reply(c, opt, type, msg, (uint32_t)strlen(msg));
}

static int send_info_export(struct nbd_conn *c, uint32_t opt, const struct nbd_export *e,
                            bool structured)
{
    uint8_t b[12];
    bm_put_be16(b, NBD_INFO_EXPORT);
    bm_put_be64(b + 2, bm_disk_size(e->disk));
    bm_put_be16(b + 10, nbd_export_tflags(e, structured));
    return send_reply(c, opt, NBD_REP_INFO, b, sizeof b);
}

static int send_info_string(struct nbd_conn *c, uint32_t opt, uint16_t type, const char *s)
{
    size_t n = strlen(s);
    uint8_t *b = malloc(2 + n);
    if (!b)
        return -ENOMEM;
    bm_put_be16(b, type);
    memcpy(b + 2, s, n);
    int r = send_reply(c, opt, NBD_REP_INFO, b, (uint32_t)(2 + n));
    free(b);
    return r;
}

static int send_info_block_size(struct nbd_conn *c, uint32_t opt)
{
    uint8_t b[14];
    bm_put_be16(b, NBD_INFO_BLOCK_SIZE);
    bm_put_be32(b + 2, 1);
    bm_put_be32(b + 6, NBD_SERVER_PREFERRED_BLOCK);
    bm_put_be32(b + 10, NBD_SERVER_MAX_PAYLOAD);
    return send_reply(c, opt, NBD_REP_INFO, b, sizeof b);
}

/* NBD_OPT_INFO and NBD_OPT_GO. Returns 1 when GO succeeded, 0 to keep negotiating. */
static int opt_info(struct nbd_conn *c, uint32_t opt, const uint8_t *data, uint32_t len)
{
    char name[NBD_MAX_STRING + 1];
    uint32_t name_len;
    uint16_t reqs[64], nreqs;
    if (nbd_parse_info_opt(data, len, name, &name_len, reqs, 64, &nreqs) < 0)
        return send_error(c, opt, NBD_REP_ERR_INVALID, "malformed NBD_OPT_INFO/GO payload");
    const struct nbd_export *e = nbd_server_find_export(c->server, name, name_len);
    if (!e) {
        char shown[128];
        bm_log(nbd_server_name_log_level(c->server),
               "nbd conn %llu: client asked for unknown export '%s'", (unsigned long long)c->id,
               bm_log_escape(name, shown, sizeof shown));
        return send_error(c, opt, NBD_REP_ERR_UNKNOWN, "no such export");
    }
    if (atomic_load(&c->server->stopping))
        return send_error(c, opt, NBD_REP_ERR_SHUTDOWN, "server is shutting down");
    int r = send_info_export(c, opt, e, c->structured);
    bool sent_name = false, sent_desc = false;
    for (uint16_t i = 0; r == 0 && i < nreqs && i < 64; i++) {
        if (reqs[i] == NBD_INFO_NAME && !sent_name) {
            r = send_info_string(c, opt, NBD_INFO_NAME, e->name);
            sent_name = true;
        } else if (reqs[i] == NBD_INFO_DESCRIPTION && !sent_desc && e->description) {
            r = send_info_string(c, opt, NBD_INFO_DESCRIPTION, e->description);
            sent_desc = true;
        }
    }
    if (r == 0)
        r = send_info_block_size(c, opt);
    if (r == 0)
        r = send_reply(c, opt, NBD_REP_ACK, NULL, 0);
    if (r < 0)
        return r;
    if (opt == NBD_OPT_GO) {
        if (c->meta_exp != e)
            c->base_allocation = false;
        c->exp = e;
        c->tflags = nbd_export_tflags(e, c->structured);
        return 1;
    }
    return 0;
}

static int opt_list(struct nbd_conn *c, uint32_t len)
{
    if (len != 0)
        return send_error(c, NBD_OPT_LIST, NBD_REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
    if (c->server->cfg.hide_exports)
        return send_error(c, NBD_OPT_LIST, NBD_REP_ERR_POLICY, "this server does not list exports");
    for (unsigned i = 0; i < c->server->nexports; i++) {
        const struct nbd_export *e = &c->server->exports[i];
        size_t nl = strlen(e->name), dl = e->description ? strlen(e->description) : 0;
        uint8_t *b = malloc(4 + nl + dl);
        if (!b)
            return -ENOMEM;
        bm_put_be32(b, (uint32_t)nl);
        memcpy(b + 4, e->name, nl);
        if (dl)
            memcpy(b + 4 + nl, e->description, dl);
        int r = send_reply(c, NBD_OPT_LIST, NBD_REP_SERVER, b, (uint32_t)(4 + nl + dl));
        free(b);
        if (r < 0)
            return r;
    }
    return send_reply(c, NBD_OPT_LIST, NBD_REP_ACK, NULL, 0);
}

static int send_meta_context(struct nbd_conn *c, uint32_t opt)
{
    uint8_t b[4 + sizeof NBD_META_BASE_ALLOCATION - 1];
    bm_put_be32(b, NBD_CONTEXT_BASE_ALLOCATION);
    memcpy(b + 4, NBD_META_BASE_ALLOCATION, sizeof NBD_META_BASE_ALLOCATION - 1);
    return send_reply(c, opt, NBD_REP_META_CONTEXT, b, sizeof b);
}

/* Does query (not NUL-terminated) select base:allocation? For LIST, "base:" selects every
 * context in the namespace. */
static bool query_matches(const uint8_t *q, uint32_t ql, bool list)
{
    const size_t full = sizeof NBD_META_BASE_ALLOCATION - 1;
    if (ql == full && memcmp(q, NBD_META_BASE_ALLOCATION, full) == 0)
        return true;
    return list && ql == 5 && memcmp(q, "base:", 5) == 0;
}

static int opt_meta(struct nbd_conn *c, uint32_t opt, const uint8_t *data, uint32_t len)
{
    bool list = opt == NBD_OPT_LIST_META_CONTEXT;
    if (!c->structured)
        return send_error(c, opt, NBD_REP_ERR_INVALID,
                          "negotiate NBD_OPT_STRUCTURED_REPLY before meta contexts");
    char name[NBD_MAX_STRING + 1];
    uint32_t name_len, nq, qoff;
    if (nbd_parse_meta_opt(data, len, name, &name_len, &nq, &qoff) < 0)
        return send_error(c, opt, NBD_REP_ERR_INVALID, "malformed meta context payload");
    const struct nbd_export *e = nbd_server_find_export(c->server, name, name_len);
    if (!e)
        return send_error(c, opt, NBD_REP_ERR_UNKNOWN, "no such export");
    bool selected = list && nq == 0;
    for (uint32_t i = 0; i < nq; i++) {
        uint32_t ql = bm_get_be32(data + qoff);
        if (query_matches(data + qoff + 4, ql, list))
            selected = true;
        qoff += 4 + ql;
    }
    if (!list) {
        c->base_allocation = selected;
        c->meta_exp = e;
    }
    if (selected) {
        int r = send_meta_context(c, opt);
        if (r < 0)
            return r;
    }
    return send_reply(c, opt, NBD_REP_ACK, NULL, 0);
}

static int opt_export_name(struct nbd_conn *c, const uint8_t *data, uint32_t len)
{
    const struct nbd_export *e = len <= NBD_MAX_STRING
                                     ? nbd_server_find_export(c->server, (const char *)data, len)
                                     : NULL;
    if (!e || atomic_load(&c->server->stopping)) {
        /* EXPORT_NAME cannot be refused politely: the spec says hang up. */
        bm_info("nbd conn %llu: NBD_OPT_EXPORT_NAME for an unknown export; disconnecting",
                (unsigned long long)c->id);
        return -ENOENT;
    }
    c->exp = e;
    if (c->meta_exp != e)
        c->base_allocation = false;
    c->tflags = nbd_export_tflags(e, c->structured);
    uint8_t b[10 + 124] = {0};
    bm_put_be64(b, bm_disk_size(e->disk));
    bm_put_be16(b + 8, c->tflags);
    return bm_write_full(c->fd, b, c->no_zeroes ? 10 : sizeof b);
}

/* Handle one option; 1 = transmission starts, 2 = client aborted, 0 = continue, <0 = drop. */
static int handle_option(struct nbd_conn *c, uint32_t opt, const uint8_t *data, uint32_t len)
{
    switch (opt) {
    case NBD_OPT_EXPORT_NAME: {
        int r = opt_export_name(c, data, len);
        return r < 0 ? r : 1;
    }
    case NBD_OPT_ABORT:
        send_reply(c, opt, NBD_REP_ACK, NULL, 0); /* best effort: the client may be gone */
        return 2;
    case NBD_OPT_LIST: return opt_list(c, len);
    case NBD_OPT_INFO:
    case NBD_OPT_GO: return opt_info(c, opt, data, len);
    case NBD_OPT_STRUCTURED_REPLY:
        if (len != 0)
            return send_error(c, opt, NBD_REP_ERR_INVALID, "option takes no data");
        c->structured = true;
        return send_reply(c, opt, NBD_REP_ACK, NULL, 0);
    case NBD_OPT_LIST_META_CONTEXT:
    case NBD_OPT_SET_META_CONTEXT: return opt_meta(c, opt, data, len);
    default:
        return send_error(c, opt, NBD_REP_ERR_UNSUP, "option not supported");
    }
}

static void set_recv_timeout(int fd, int64_t ms)
{
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t handshake_timeout_ms(const struct nbd_conn *c)
{
    unsigned t = c->server->cfg.handshake_timeout_ms;
    return t ? t : NBD_HANDSHAKE_TIMEOUT * 1000;
}

/* Reads time out when the whole handshake has taken its time, not per read. */
static int arm_deadline(struct nbd_conn *c, int64_t deadline)
{
    int64_t left = deadline - now_ms();
    if (left <= 0) {
        bm_info("nbd conn %llu: handshake took over %lld ms; disconnecting",
                (unsigned long long)c->id, (long long)handshake_timeout_ms(c));
        return -ETIMEDOUT;
    }
    set_recv_timeout(c->fd, left);
    return 0;
}

int nbd_handshake(struct nbd_conn *c)
{
    uint8_t b[18];
    bm_put_be64(b, NBD_MAGIC);
    bm_put_be64(b + 8, NBD_IHAVEOPT);
    bm_put_be16(b + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    int64_t deadline = now_ms() + handshake_timeout_ms(c);
    set_recv_timeout(c->fd, handshake_timeout_ms(c));
    int r = bm_write_full(c->fd, b, sizeof b);
    if (r < 0)
        return r;
    r = bm_read_full(c->fd, b, 4);
    if (r < 0)
        return r == -ENODATA ? 1 : r;
    uint32_t cflags = bm_get_be32(b);
    if (cflags & ~(uint32_t)(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
        bm_info("nbd conn %llu: unknown client flags 0x%x; disconnecting",
                (unsigned long long)c->id, cflags);
        return -EPROTO;
    }
    c->no_zeroes = cflags & NBD_FLAG_C_NO_ZEROES;
    atomic_store(&c->spoke, true);
    uint8_t *data = malloc(NBD_MAX_OPTION_DATA);
    if (!data)
        return -ENOMEM;
    r = -EPROTO;
    for (unsigned n = 0; n < NBD_MAX_OPTIONS; n++) {
        r = arm_deadline(c, deadline);
        if (r < 0)
            break;
        r = bm_read_full(c->fd, b, 16);
        if (r < 0) {
            r = r == -ENODATA ? 1 : r;
            break;
        }
        if (bm_get_be64(b) != NBD_IHAVEOPT) {
            bm_info("nbd conn %llu: bad option magic; disconnecting", (unsigned long long)c->id);
            r = -EPROTO;
            break;
        }
        uint32_t opt = bm_get_be32(b + 8), len = bm_get_be32(b + 12);
        if (len > NBD_MAX_OPTION_DATA) {
            if (len > NBD_MAX_OPTION_DISCARD || opt == NBD_OPT_EXPORT_NAME) {
                bm_info("nbd conn %llu: option %u with %u bytes of data; disconnecting",
                        (unsigned long long)c->id, opt, len);
                r = -EPROTO;
                break;
            }
            r = bm_discard_full(c->fd, len);
            if (r == 0)
                r = send_error(c, opt, opt == NBD_OPT_INFO || opt == NBD_OPT_GO ||
                                               opt == NBD_OPT_LIST_META_CONTEXT ||
                                               opt == NBD_OPT_SET_META_CONTEXT
                                           ? NBD_REP_ERR_TOO_BIG
                                           : NBD_REP_ERR_UNSUP,
                               "option data too large");
            if (r < 0)
                break;
            continue;
        }
        r = bm_read_full(c->fd, data, len);
        if (r < 0) {
            r = -ECONNRESET;
            break;
        }
        r = handle_option(c, opt, data, len);
        if (r == 1) {
            r = 0;
            break;
        }
        if (r == 2) {
            r = 1;
            break;
        }
        if (r < 0)
            break;
        r = -EPROTO; /* if the loop ends: too many options */
    }
    free(data);
    set_recv_timeout(c->fd, 0);
    return r;
}
