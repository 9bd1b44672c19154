/* nbd-hostile.c: attack a running NBD server with bad clients, then check it still serves. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "common/io.h"
#include "common/sock.h"
#include "nbd/protocol.h"

#define IO_TIMEOUT    5           /* seconds one read or write may block before we call it a hang */
#define ANY_ERROR     0xffffffffu /* struct opt_reject: any NBD_REP_ERR_* will do */
#define MAX_CHUNK     (4u << 20)  /* largest reply payload this client accepts */
#define MIB           (1024u * 1024)
#define MIN_OPTIONS   1024 /* options a connection may send before the server may hang up */
#define PIPELINE_N    1000
#define PIPELINE_SPAN (4u * MIB) /* the pipelined READs land in the first 4 MiB */
#define NOREAD_N      4000
#define NOREAD_LEN    (64u * 1024)
#define UNUSED        __attribute__((unused))
#define fail(...)     note(-1, __VA_ARGS__)
#define ok(...)       note(0, __VA_ARGS__)

/* Bytes to send: n of them at b, then zeros zero bytes. */
struct raw {
    const char *b;
    uint32_t n, zeros;
};
// clang-format off
#define RAW(s)      {s, sizeof s - 1, 0}
#define RAWZ(s, z)  {s, sizeof s - 1, z}
// clang-format on

static const char *g_host, *g_port;
static unsigned g_churn = 2000;
static char g_note[512];
static uint8_t g_scratch[MAX_CHUNK];
static uint64_t g_cookie = 1;

/* Set the note printed after the case's result (it may quote the old note) and return ret. */
static int note(int ret, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int note(int ret, const char *fmt, ...)
{
    char b[sizeof g_note];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b, sizeof b, fmt, ap);
    va_end(ap);
    memcpy(g_note, b, sizeof b);
    return ret;
}

static const char *io_err(int r)
{
    if (r == -ENODATA || r == -ECONNRESET || r == -EPIPE)
        return "server closed the connection";
    return r == -EAGAIN ? "timed out (server hangs?)" : strerror(-r);
}

static int rd(int fd, void *buf, size_t len, const char *what)
{
    int r = bm_read_full(fd, buf, len);
    return r < 0 ? fail("reading %s: %s", what, io_err(r)) : 0;
}

static int wr(int fd, const void *buf, size_t len, const char *what)
{
    int r = bm_write_full(fd, buf, len);
    return r < 0 ? fail("writing %s: %s", what, io_err(r)) : 0;
}

static int wr_raw(int fd, const struct raw *p)
{
    static const uint8_t zeros[8192];
    int r = wr(fd, p->b, p->n, "frame");
    return r == 0 && p->zeros ? wr(fd, zeros, p->zeros, "frame padding") : r;
}

/* Close fd if open; pass r on. */
static int finish(int fd, int r)
{
    if (fd >= 0)
        close(fd);
    return r;
}

static int conn_open(void)
{
    int fd = bm_connect(g_host, g_port);
    if (fd < 0)
        return fail("connect %s:%s: %s", g_host, g_port, strerror(-fd));
    struct timeval tv = {.tv_sec = IO_TIMEOUT};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

/* Close with a RST instead of a FIN (rst), as a crashing client would. */
static void drop(int fd, bool rst)
{
    struct linger l = {.l_onoff = 1, .l_linger = 0};
    if (rst)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close(fd);
}

/* Connect and check the greeting; with flags, answer it. Returns fd or -1. */
static int hs_connect(bool flags)
{
    uint8_t b[18];
    int fd = conn_open(), r = fd < 0 ? -1 : rd(fd, b, sizeof b, "greeting");
    if (r == 0 && (bm_get_be64(b) != NBD_MAGIC || bm_get_be64(b + 8) != NBD_IHAVEOPT ||
                   !(bm_get_be16(b + 16) & NBD_FLAG_FIXED_NEWSTYLE)))
        r = fail("not a fixed-newstyle greeting");
    bm_put_be32(b, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    if (r == 0 && flags)
        r = wr(fd, b, 4, "client flags");
    if (r < 0)
        finish(fd, r);
    return r < 0 ? -1 : fd;
}

/* Option opt with payload p (NULL: none); len: the length claimed, p's when 0. */
static int send_opt(int fd, uint32_t opt, const struct raw *p, uint32_t len)
{
    uint8_t h[16];
    bm_put_be64(h, NBD_IHAVEOPT);
    bm_put_be32(h + 8, opt);
    bm_put_be32(h + 12, len ? len : p ? p->n + p->zeros : 0);
    if (wr(fd, h, sizeof h, "option header") < 0)
        return -1;
    return p ? wr_raw(fd, p) : 0;
}

struct rep {
    uint32_t opt, type, len; /* the payload is in g_scratch */
};

static int read_rep(int fd, struct rep *r)
{
    uint8_t h[20];
    if (rd(fd, h, sizeof h, "option reply") < 0)
        return -1;
    if (bm_get_be64(h) != NBD_REP_MAGIC)
        return fail("bad option reply magic 0x%016" PRIx64, bm_get_be64(h));
    r->opt = bm_get_be32(h + 8);
    r->type = bm_get_be32(h + 12);
    r->len = bm_get_be32(h + 16);
    if (r->len > MAX_CHUNK)
        return fail("option reply of %u bytes", r->len);
    return rd(fd, g_scratch, r->len, "option reply data");
}

/* Send opt; it must be answered by replies of type more (0: none) and an ACK. Returns how many
 * more replies came, or -1. With size, NBD_INFO_EXPORT replies set *size. */
static int opt_acked(int fd, uint32_t opt, const struct raw *p, uint32_t more, uint64_t *size)
{
    if (send_opt(fd, opt, p, 0) < 0)
        return -1;
    for (int n = 0;; n++) {
        struct rep r;
        if (read_rep(fd, &r) < 0)
            return fail("option %u: %.400s", opt, g_note);
        if (r.opt == opt && r.type == NBD_REP_ACK)
            return n;
        if (r.opt != opt || r.type != more || !more || n > 1000)
            return fail("option %u: reply for option %u, type 0x%x", opt, r.opt, r.type);
        if (size && r.type == NBD_REP_INFO && r.len >= 12 && !bm_get_be16(g_scratch))
            *size = bm_get_be64(g_scratch + 2);
    }
}

static int structured_on(int fd)
{
    return opt_acked(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0, NULL) < 0 ? -1 : 0;
}

/* NBD_OPT_LIST and NBD_OPT_ABORT are answered: the session is still in sync. */
static int still_usable(int fd)
{
    if (opt_acked(fd, NBD_OPT_LIST, NULL, NBD_REP_SERVER, NULL) < 0)
        return fail("afterwards, %.400s", g_note);
    return opt_acked(fd, NBD_OPT_ABORT, NULL, 0, NULL) < 0 ? -1 : 0;
}

/* Wait for the server to hang up; allow_data: it may send something (an error) first. */
static int expect_closed(int fd, bool allow_data)
{
    for (size_t total = 0;;) {
        ssize_t n = read(fd, g_scratch, sizeof g_scratch);
        if (n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE)))
            return 0;
        if (n < 0 && errno != EINTR)
            return fail("connection still open after %d s: %s", IO_TIMEOUT, io_err(-errno));
        total += n > 0 ? (size_t)n : 0;
        if (total && (!allow_data || total > MAX_CHUNK))
            return fail("server sent %zu bytes instead of hanging up", total);
    }
}

/* Structured replies, base:allocation, then GO on the default export. Returns fd or -1. */
static int negotiate_go(uint64_t *size)
{
    static const struct raw meta = RAW("\0\0\0\0\0\0\0\x01\0\0\0\x0f" NBD_META_BASE_ALLOCATION);
    static const struct raw go = RAWZ("", 6); /* the default export, no info requests */
    int fd = hs_connect(true), r = fd < 0 ? -1 : structured_on(fd);
    *size = 0;
    if (r == 0) /* the one context asked for must be granted */
        r = opt_acked(fd, NBD_OPT_SET_META_CONTEXT, &meta, NBD_REP_META_CONTEXT, NULL);
    if (r == 0 || r > 1)
        r = fail("SET_META_CONTEXT base:allocation: %d contexts granted", r);
    if (r == 1)
        r = opt_acked(fd, NBD_OPT_GO, &go, NBD_REP_INFO, size) < 0 ? -1 : 0;
    if (r == 0 && *size == 0)
        r = fail("GO: no NBD_INFO_EXPORT, or an empty export");
    if (r < 0)
        finish(fd, r);
    return r < 0 ? -1 : fd;
}

static void put_req(uint8_t *h, uint16_t flags, uint16_t type, uint64_t cookie, uint64_t off,
                    uint32_t len)
{
    bm_put_be32(h, NBD_REQUEST_MAGIC);
    bm_put_be16(h + 4, flags);
    bm_put_be16(h + 6, type);
    bm_put_be64(h + 8, cookie);
    bm_put_be64(h + 16, off);
    bm_put_be32(h + 24, len);
}

struct chunk {
    uint64_t cookie;
    bool simple, done;
    uint16_t type;
    uint32_t error;      /* NBD error, 0 if none */
    uint64_t offset;     /* OFFSET_DATA / OFFSET_HOLE */
    uint32_t len;        /* data bytes or hole length */
    const uint8_t *data; /* OFFSET_DATA payload, in g_scratch */
};

static int parse_chunk(struct chunk *ch, const uint8_t *p, uint32_t plen)
{
    switch (ch->type) {
    case NBD_REPLY_TYPE_NONE:
        return plen ? fail("NONE chunk of %u bytes", plen) : 0;
    case NBD_REPLY_TYPE_OFFSET_DATA:
    case NBD_REPLY_TYPE_OFFSET_HOLE:
        if (ch->type == NBD_REPLY_TYPE_OFFSET_DATA ? plen < 9 : plen != 12)
            return fail("chunk type %u of %u bytes", ch->type, plen);
        ch->offset = bm_get_be64(p);
        ch->len = ch->type == NBD_REPLY_TYPE_OFFSET_DATA ? plen - 8 : bm_get_be32(p + 8);
        ch->data = p + 8;
        return 0;
    case NBD_REPLY_TYPE_BLOCK_STATUS:
        return plen < 12 || (plen - 4) % 8 ? fail("BLOCK_STATUS chunk of %u bytes", plen) : 0;
    default:
        if (!(ch->type & 0x8000))
            return fail("unknown chunk type %u", ch->type);
        if (plen < 6 || bm_get_be16(p + 4) > plen - 6)
            return fail("malformed error chunk (%u bytes)", plen);
        ch->error = bm_get_be32(p);
        return ch->error ? 0 : fail("error chunk carrying error 0");
    }
}

/* Read one simple reply (taken to carry no data) or one structured chunk. */
static int read_chunk(int fd, struct chunk *ch)
{
    uint8_t h[NBD_STRUCTURED_REPLY_SIZE];
    memset(ch, 0, sizeof *ch);
    if (rd(fd, h, 4, "reply") < 0)
        return -1;
    uint32_t magic = bm_get_be32(h);
    if (magic == NBD_SIMPLE_REPLY_MAGIC) {
        if (rd(fd, h + 4, NBD_SIMPLE_REPLY_SIZE - 4, "simple reply") < 0)
            return -1;
        ch->simple = ch->done = true;
        ch->error = bm_get_be32(h + 4);
        ch->cookie = bm_get_be64(h + 8);
        return 0;
    }
    if (magic != NBD_STRUCTURED_REPLY_MAGIC)
        return fail("bad reply magic 0x%08x", magic);
    if (rd(fd, h + 4, sizeof h - 4, "chunk header") < 0)
        return -1;
    ch->done = bm_get_be16(h + 4) & NBD_REPLY_FLAG_DONE;
    ch->type = bm_get_be16(h + 6);
    ch->cookie = bm_get_be64(h + 8);
    uint32_t plen = bm_get_be32(h + 16);
    if (plen > sizeof g_scratch)
        return fail("chunk of %u bytes", plen);
    if (rd(fd, g_scratch, plen, "chunk payload") < 0)
        return -1;
    return parse_chunk(ch, g_scratch, plen);
}

/* Put a chunk of the reply to READ [off, off + len) into dst (if any); *got counts bytes. */
static int place_chunk(const struct chunk *ch, uint64_t off, uint32_t len, uint8_t *dst,
                       uint64_t *got)
{
    if (ch->simple)
        return fail("simple reply to a READ after structured replies were negotiated");
    if (ch->type != NBD_REPLY_TYPE_OFFSET_DATA && ch->type != NBD_REPLY_TYPE_OFFSET_HOLE)
        return ch->type == NBD_REPLY_TYPE_NONE ? 0 : fail("chunk type %u in a READ", ch->type);
    if (ch->offset < off || ch->len > len || ch->offset - off > len - ch->len)
        return fail("READ chunk [0x%" PRIx64 " +%u] outside the request", ch->offset, ch->len);
    if (dst && ch->type == NBD_REPLY_TYPE_OFFSET_DATA)
        memcpy(dst + (ch->offset - off), ch->data, ch->len);
    else if (dst)
        memset(dst + (ch->offset - off), 0, ch->len);
    *got += ch->len;
    return 0;
}

/* One request and its whole reply; *err gets the NBD error. READ data goes to dst, if any. */
static int xfer(int fd, uint16_t type, uint16_t flags, uint64_t off, uint32_t len,
                const void *wdata, void *dst, uint32_t *err)
{
    uint64_t cookie = g_cookie++ * UINT64_C(0x9E3779B97F4A7C15), got = 0;
    uint8_t h[NBD_REQUEST_SIZE];
    put_req(h, flags, type, cookie, off, len);
    if (wr(fd, h, sizeof h, "request") < 0 || (wdata && wr(fd, wdata, len, "payload") < 0))
        return -1;
    *err = 0;
    for (struct chunk ch = {.done = false}; !ch.done;) {
        if (read_chunk(fd, &ch) < 0)
            return -1;
        if (ch.cookie != cookie)
            return fail("reply cookie 0x%" PRIx64 ", expected 0x%" PRIx64, ch.cookie, cookie);
        *err = *err ? *err : ch.error;
        if (type == NBD_CMD_READ && !ch.error && place_chunk(&ch, off, len, dst, &got) < 0)
            return -1;
    }
    if (type == NBD_CMD_READ && !*err && got != len)
        return fail("READ reply covered %" PRIu64 " of %u bytes", got, len);
    return 0;
}

/* A successful READ over fd (what: context for the message). */
static int read_ok(int fd, uint64_t off, uint32_t len, void *dst, const char *what)
{
    uint32_t err;
    if (xfer(fd, NBD_CMD_READ, 0, off, len, NULL, dst, &err) < 0)
        return fail("READ %s: %.400s", what, g_note);
    return err ? fail("READ %s: NBD error %u", what, err) : 0;
}

static void disc_close(int fd)
{
    uint8_t h[NBD_REQUEST_SIZE];
    if (fd < 0)
        return;
    put_req(h, 0, NBD_CMD_DISC, 0, 0, 0);
    (void)bm_write_full(fd, h, sizeof h);
    close(fd);
}

/* A fresh well-behaved connection still gets data. */
static int probe_alive(const char *after)
{
    uint64_t size;
    int fd = negotiate_go(&size);
    if (fd < 0)
        return fail("new connection after %s: %.400s", after, g_note);
    int r = read_ok(fd, 0, 4096, g_scratch + MIB, after);
    disc_close(fd);
    return r;
}

/* ---- Handshake cases ---- */

/* Every option in opts (0-terminated) with every payload in pls (NULL-terminated) gets reply
 * type want, and the session stays in sync. */
struct opt_reject {
    bool structured;
    uint32_t want;
    uint32_t opts[5];
    struct raw pls[7];
};

// clang-format off
static const struct opt_reject info_name_overrun = {false, NBD_REP_ERR_INVALID,
    {NBD_OPT_INFO, NBD_OPT_GO},
    {RAW("\0\0\x03\xe8" "aaaaaa"),           /* name length 1000 in a 10-byte payload */
     RAW("\xff\xff\xff\xff\0\0"),          /* name length 0xffffffff */
     RAW("\0\0\0\x04" "bbbb"),             /* the name swallows the request count */
     RAW("\0\0\0")}};                      /* too short for anything */
static const struct opt_reject info_count_mismatch = {false, NBD_REP_ERR_INVALID,
    {NBD_OPT_GO, NBD_OPT_INFO},
    {RAW("\0\0\0\0\0\x05\0\x01"),          /* 5 info requests announced, 1 sent */
     RAW("\0\0\0\0\0\0\1\1\1"),            /* none announced, 3 bytes follow */
     RAW("\0\0\0\0\xff\xff\0\x01\0\x03")}};  /* 65535 announced, 2 sent */
static const struct opt_reject meta_bad_queries = {true, NBD_REP_ERR_INVALID,
    {NBD_OPT_SET_META_CONTEXT, NBD_OPT_LIST_META_CONTEXT},
    {RAW("\0\0\0\0\0\0\0\x01\0\0\x03\xe8" "qqqqqqqqqqqqqqq"),    /* query past the payload */
     RAW("\0\0\0\0\0\0\0\x03\0\0\0\x0f" NBD_META_BASE_ALLOCATION), /* 3 announced, 1 sent */
     RAW("\0\0\0\0\0\0\0\x01\0\0\0\x0f" NBD_META_BASE_ALLOCATION "xxxxx"), /* junk after */
     RAW("\xff\xff\xff\xf0\0\0\0\0"),     /* export name length past the payload */
     RAW("\0\0\0\0\0\0\0\x01\xff\xff\xff\xff" "qqqqqqqq"), /* query length 0xffffffff */
     RAW("\0\0\0")}};
/* Names over NBD_MAX_STRING bytes, all zero bytes (a server stopping at a NUL sees ""). */
static const struct opt_reject long_names_info = {true, ANY_ERROR, {NBD_OPT_GO, NBD_OPT_INFO},
    {RAWZ("\0\0\x10\x01", NBD_MAX_STRING + 1 + 2), RAWZ("\0\0\x13\x88", 5000 + 2)}};
static const struct opt_reject long_names_meta = {true, ANY_ERROR,
    {NBD_OPT_SET_META_CONTEXT, NBD_OPT_LIST_META_CONTEXT},
    {RAWZ("\0\0\x10\x01", NBD_MAX_STRING + 1 + 4), RAWZ("\0\0\x13\x88", 5000 + 4)}};
static const struct opt_reject unknown_options = {false, NBD_REP_ERR_UNSUP,
    {0x7777, NBD_OPT_STARTTLS, NBD_OPT_EXTENDED_HEADERS, 0xfffffffeu},
    {RAW(""), RAW("sixteen bytes!!!")}};
// clang-format on

static int case_opt_rejects(const void *arg)
{
    const struct opt_reject *c = arg;
    int fd = hs_connect(true), r = fd < 0 ? -1 : c->structured ? structured_on(fd) : 0;
    struct rep rep;
    for (int o = 0; r == 0 && c->opts[o]; o++) {
        for (int i = 0; r == 0 && c->pls[i].b; i++) {
            uint32_t opt = c->opts[o];
            if (send_opt(fd, opt, &c->pls[i], 0) < 0 || read_rep(fd, &rep) < 0)
                r = fail("option %u, payload %d: %.400s", opt, i, g_note);
            else if (rep.opt != opt ||
                     (c->want == ANY_ERROR ? !(rep.type & NBD_REP_ERR_BIT) : rep.type != c->want))
                r = fail("option %u, payload %d: reply for option %u, type 0x%x; expected 0x%x",
                         opt, i, rep.opt, rep.type, c->want);
        }
    }
    if (r == 0)
        r = still_usable(fd);
    return finish(fd, r);
}

/* Bytes sent after the greeting (after GO when go). Then the server must hang up (HANGUP_QUIET:
 * without sending anything first), or we hang up (CUT; CUT_RST: with a RST) and the server must
 * go on serving. */
enum frame_end { HANGUP, HANGUP_QUIET, CUT, CUT_RST };
struct frame {
    bool go;
    enum frame_end end;
    struct raw bytes;
};

#define FLAGS     "\0\0\0\x03" /* client flags: fixed newstyle, no zeroes */
#define REQ_MAGIC "\x25\x60\x95\x13"
// clang-format off
static const struct frame bad_option_magic = {false, HANGUP,
    RAW(FLAGS "IHAVEOPU\0\0\0\x03\0\0\0\0")};
static const struct frame unknown_client_flags = {false, HANGUP_QUIET, RAW("\x80\0\0\x03")};
static const struct frame export_name_unknown = {
    false, HANGUP_QUIET, RAW(FLAGS "IHAVEOPT\0\0\0\x01\0\0\0\x0e" "no-such-export")};
static const struct frame export_name_4097 = {
    false, HANGUP_QUIET, RAWZ(FLAGS "IHAVEOPT\0\0\0\x01\0\0\x10\x01", NBD_MAX_STRING + 1)};
static const struct frame cut_flags = {false, CUT, RAW("\0\0\0")};
static const struct frame cut_opt_header = {false, CUT, RAW(FLAGS "IHAVEOP")};
static const struct frame cut_opt_data = {false, CUT,
    RAW(FLAGS "IHAVEOPT\0\0\0\x07\0\0\0\x64" "40 bytes of a 100-byte GO payload.......")};
static const struct frame cut_opt_data_rst = {false, CUT_RST,
    RAW(FLAGS "IHAVEOPT\0\0\x77\x77\0\x01\x90\0" "40 bytes of a 100 KiB option...........")};
static const struct frame tx_bad_magic = {true, HANGUP, RAWZ("\x12\x34\x56\x78", 24)};
static const struct frame tx_cut_header = {true, CUT, RAW(REQ_MAGIC "\0\0\0\0\0\0")};
static const struct frame tx_cut_header_27 = {
    true, CUT, RAW(REQ_MAGIC "\0\0\0\0\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\0\0\0\x10")};
static const struct frame tx_cut_write_rst = {
    true, CUT_RST, RAW(REQ_MAGIC "\0\0\0\x01\0\0\0\0\0\0\0\x02\0\0\0\0\0\0\0\0\0\0\x10\0"
                       "40 bytes of a 4096-byte WRITE payload..")};
// clang-format on

static int case_frame(const void *arg)
{
    const struct frame *c = arg;
    uint64_t size;
    int fd = c->go ? negotiate_go(&size) : hs_connect(false);
    if (fd < 0)
        return -1;
    int r = wr_raw(fd, &c->bytes);
    if (c->end == CUT || c->end == CUT_RST) {
        drop(fd, c->end == CUT_RST);
        return probe_alive("a frame cut short");
    }
    return finish(fd, r < 0 ? r : expect_closed(fd, c->end == HANGUP));
}

/* Option with length 0xffffffff: an error reply or a hang-up, soon. */
static int case_option_len_4g(const void *arg UNUSED)
{
    static const uint8_t zeros[65536];
    const uint32_t opts[] = {NBD_OPT_GO, NBD_OPT_EXPORT_NAME, 0x7777};
    uint8_t b[20];
    for (int i = 0; i < 3; i++) {
        int fd = hs_connect(true), r = fd < 0 ? -1 : send_opt(fd, opts[i], NULL, 0xffffffffu);
        if (r < 0)
            return finish(fd, r);
        (void)bm_write_full(fd, zeros, sizeof zeros); /* fails once the server hangs up */
        ssize_t n = recv(fd, b, sizeof b, MSG_WAITALL);
        close(fd);
        if (n < 0 && errno == EAGAIN)
            return fail("option %u: no reply and no hang-up in %d s", opts[i], IO_TIMEOUT);
        if (n > 0 && (n != 20 || bm_get_be64(b) != NBD_REP_MAGIC ||
                      !(bm_get_be32(b + 12) & NBD_REP_ERR_BIT)))
            return fail("option %u: answered %zd bytes, no error reply", opts[i], n);
    }
    return probe_alive("options of 0xffffffff bytes");
}

static int case_option_100k_garbage(const void *arg UNUSED)
{
    static uint8_t junk[100 * 1024];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (uint8_t)(i * 131u + 7);
    struct rep rep;
    int fd = hs_connect(true), r = fd < 0 ? -1 : 0;
    if (r == 0 && bm_write_full(fd, "IHAVEOPT\0\0\x77\x77\0\x01\x90\0", 16) < 0)
        r = fail("writing the option header: %s", strerror(errno));
    if (r == 0 && bm_write_full(fd, junk, sizeof junk) < 0)
        r = expect_closed(fd, true) == 0 ? ok("server hung up") : -1;
    else if (r == 0 && read_rep(fd, &rep) < 0)
        r = strstr(g_note, "closed") ? ok("server hung up") : -1;
    else if (r == 0 && rep.type != NBD_REP_ERR_UNSUP && rep.type != NBD_REP_ERR_TOO_BIG)
        r = fail("reply type 0x%x, expected ERR_UNSUP or ERR_TOO_BIG", rep.type);
    else if (r == 0)
        r = still_usable(fd);
    return finish(fd, r) < 0 ? -1 : probe_alive("a 100 KiB option");
}

static int case_many_options(const void *arg UNUSED)
{
    enum { TOTAL = 1100 };
    int fd = hs_connect(true), r = 0;
    unsigned acks = 0;
    if (fd < 0)
        return -1;
    while (acks < TOTAL && opt_acked(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0, NULL) == 0)
        acks++;
    if (acks < MIN_OPTIONS)
        r = fail("only %u options answered: %.300s", acks, g_note);
    else if (acks >= TOTAL)
        r = still_usable(fd) == 0 ? ok("all %u options answered", acks) : -1;
    else
        r = expect_closed(fd, true) == 0 ? ok("server hung up after %u options", acks) : -1;
    close(fd);
    return r;
}

/* ---- Transmission cases ---- */

/* Requests that must fail with e1 or e2 (WRITEs carry len zero bytes), then a READ works. */
struct bad_req {
    uint16_t type, flags;
    uint64_t off; /* counted back from the end of the export when from_end */
    uint32_t len;
    bool from_end;
    uint32_t e1, e2;
};

#define U64MAX UINT64_MAX
static const struct bad_req unknown_command[] = {{99, 0, 0, 4096, false, NBD_EINVAL, NBD_EINVAL},
                                                 {0xffff, 0, 0, 0, false, NBD_EINVAL, NBD_EINVAL},
                                                 {0}};
static const struct bad_req read_len_4g[] = {
    {NBD_CMD_READ, 0, 0, 0xffffffffu, false, NBD_EINVAL, NBD_EOVERFLOW},
    {NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 0xffffffffu, false, NBD_EINVAL, NBD_EOVERFLOW},
    {NBD_CMD_CACHE, 0, 0, 0xffffffffu, false, NBD_EINVAL, NBD_EOVERFLOW},
    {0}};
static const struct bad_req offset_overflow[] = {
    {NBD_CMD_READ, 0, U64MAX, 1, false, NBD_EINVAL, NBD_ENOSPC},
    {NBD_CMD_WRITE, 0, U64MAX, 1, false, NBD_EINVAL, NBD_ENOSPC},
    {NBD_CMD_TRIM, 0, U64MAX - 4095, 8192, false, NBD_EINVAL, NBD_ENOSPC},
    {NBD_CMD_WRITE_ZEROES, 0, U64MAX - 4095, 8192, false, NBD_EINVAL, NBD_ENOSPC},
    {NBD_CMD_BLOCK_STATUS, 0, U64MAX, 1, false, NBD_EINVAL, NBD_ENOSPC},
    {NBD_CMD_CACHE, 0, U64MAX - 511, 1024, false, NBD_EINVAL, NBD_ENOSPC},
    {NBD_CMD_READ, 0, 0, 1, true, NBD_EINVAL, NBD_ENOSPC},  /* at the end */
    {NBD_CMD_WRITE, 0, 1, 2, true, NBD_EINVAL, NBD_ENOSPC}, /* across the end */
    {0}};
static const struct bad_req unknown_flags[] = {
    {NBD_CMD_READ, 0x8000, 0, 4096, false, NBD_EINVAL, NBD_EINVAL},
    {NBD_CMD_WRITE, 0x4000, 0, 512, false, NBD_EINVAL, NBD_EINVAL},
    {NBD_CMD_FLUSH, 0x0400, 0, 0, false, NBD_EINVAL, NBD_EINVAL},
    {NBD_CMD_BLOCK_STATUS, 0x0100, 0, 4096, false, NBD_EINVAL, NBD_EINVAL},
    {0}};

static int case_tx_rejects(const void *arg)
{
    static const uint8_t zeros[4096];
    uint64_t size;
    uint32_t err;
    int fd = negotiate_go(&size), r = fd < 0 ? -1 : 0;
    for (const struct bad_req *q = arg; r == 0 && q->e1; q++) {
        const void *wdata = q->type == NBD_CMD_WRITE ? zeros : NULL;
        uint64_t off = q->from_end ? size - q->off : q->off;
        if (xfer(fd, q->type, q->flags, off, q->len, wdata, NULL, &err) < 0)
            r = fail("type %u flags 0x%x length %u: %.400s", q->type, q->flags, q->len, g_note);
        else if (err != q->e1 && err != q->e2)
            r = fail("type %u flags 0x%x offset 0x%" PRIx64 " length %u: NBD error %u, "
                     "expected %u or %u",
                     q->type, q->flags, off, q->len, err, q->e1, q->e2);
    }
    if (r == 0)
        r = read_ok(fd, 0, 4096, g_scratch + MIB, "after the rejected requests");
    disc_close(fd);
    return r;
}

/* WRITE of 0xffffffff bytes, 24 MiB of it sent, then a RST: no 4 GiB buffer (the shell script
 * watches the server's RSS), and the server goes on. */
static int case_tx_write_4g_hangup(const void *arg UNUSED)
{
    static uint8_t junk[MIB];
    uint64_t size;
    int fd = negotiate_go(&size);
    if (fd < 0)
        return -1;
    put_req(junk, 0, NBD_CMD_WRITE, 42, 0, 0xffffffffu);
    for (int i = 0; i < 24; i++) {
        if (bm_write_full(fd, junk, sizeof junk) < 0)
            break; /* the server may hang up instead of discarding */
        memset(junk, 0xa5, NBD_REQUEST_SIZE);
    }
    drop(fd, true);
    return probe_alive("a WRITE of 0xffffffff bytes");
}

/* Pipelined READ i: its offset and its cookie. */
#define PIPE_OFF(i)    ((uint64_t)((i)*7919u % (PIPELINE_SPAN / 4096)) * 4096)
#define PIPE_COOKIE(i) (UINT64_C(0xC0DE000000000000) | (uint64_t)(i) << 16 | 0x5a5a)

static void *pipeline_writer(void *arg)
{
    static uint8_t b[PIPELINE_N * NBD_REQUEST_SIZE];
    for (unsigned i = 0; i < PIPELINE_N; i++)
        put_req(b + i * NBD_REQUEST_SIZE, 0, NBD_CMD_READ, PIPE_COOKIE(i), PIPE_OFF(i), 4096);
    return (void *)(intptr_t)bm_write_full(*(int *)arg, b, sizeof b);
}

/* Collect PIPELINE_N 4 KiB replies in any order into res; count those out of order. */
static int pipeline_collect(int fd, uint8_t *res, unsigned *reordered)
{
    static uint64_t got[PIPELINE_N];
    static bool done[PIPELINE_N];
    for (unsigned n = 0; n < PIPELINE_N;) {
        struct chunk ch;
        if (read_chunk(fd, &ch) < 0)
            return fail("after %u replies: %.400s", n, g_note);
        unsigned i = (unsigned)(ch.cookie >> 16) & 0xffffffffu;
        if (i >= PIPELINE_N || ch.cookie != PIPE_COOKIE(i) || done[i])
            return fail("reply with unexpected cookie 0x%" PRIx64, ch.cookie);
        if (ch.error)
            return fail("READ %u failed with NBD error %u", i, ch.error);
        if (place_chunk(&ch, PIPE_OFF(i), 4096, res + (size_t)i * 4096, &got[i]) < 0)
            return -1;
        if (ch.done && got[i] != 4096)
            return fail("READ %u: reply covered %" PRIu64 " bytes", i, got[i]);
        if (ch.done) {
            *reordered += i != n++;
            done[i] = true;
        }
    }
    return 0;
}

static int case_tx_pipelined_reads(const void *arg UNUSED)
{
    uint64_t size;
    unsigned reordered = 0;
    pthread_t t;
    void *wret;
    uint8_t *ref = malloc(PIPELINE_SPAN), *res = malloc((size_t)PIPELINE_N * 4096);
    int fd = ref && res ? negotiate_go(&size) : fail("out of memory");
    int r = fd < 0 ? -1 : size < PIPELINE_SPAN ? fail("export under 4 MiB") : 0;
    for (uint32_t off = 0; r == 0 && off < PIPELINE_SPAN; off += MIB)
        r = read_ok(fd, off, MIB, ref + off, "for reference");
    if (r == 0 && pthread_create(&t, NULL, pipeline_writer, &fd) != 0)
        r = fail("pthread_create failed");
    else if (r == 0) {
        r = pipeline_collect(fd, res, &reordered);
        if (r < 0)
            shutdown(fd, SHUT_RDWR); /* unblock the writer */
        pthread_join(t, &wret);
        if (r == 0 && wret)
            r = fail("sending the requests: %s", io_err((int)(intptr_t)wret));
    }
    for (unsigned i = 0; r == 0 && i < PIPELINE_N; i++)
        if (memcmp(res + (size_t)i * 4096, ref + PIPE_OFF(i), 4096) != 0)
            r = fail("READ %u at 0x%" PRIx64 " returned wrong data", i, PIPE_OFF(i));
    if (r == 0)
        ok("%u replies, %u out of order", PIPELINE_N, reordered);
    disc_close(fd);
    free(ref);
    free(res);
    return r;
}

/* Pile up READs without reading a single reply, then hang up. */
static int case_tx_never_read(const void *arg UNUSED)
{
    static uint8_t b[NOREAD_N * NBD_REQUEST_SIZE];
    struct timeval tv = {.tv_sec = 1};
    uint64_t size;
    int fd = negotiate_go(&size);
    if (fd < 0)
        return -1;
    for (unsigned i = 0; i < NOREAD_N; i++)
        put_req(b + i * NBD_REQUEST_SIZE, 0, NBD_CMD_READ, i,
                (uint64_t)i * NOREAD_LEN % (size - NOREAD_LEN + 1), NOREAD_LEN);
    /* The writes stall once the server stops reading (its replies stuck, as intended). */
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int r = bm_write_full(fd, b, sizeof b);
    close(fd);
    ok("%s", r == 0 ? "all requests sent" : "the server stopped reading requests");
    return probe_alive("a client that never read its replies");
}

/* ---- Churn ---- */

/* One connection dropped somewhere in the handshake. 1: the server hung up first. */
static int churn_one(unsigned i)
{
    static const unsigned greet[] = {0, 5, 17, 18, 18, 18, 18, 18, 18};
    static const unsigned sent[] = {0, 0, 0, 0, 2, 4 + 10, 4 + 16, 4 + 16 + 20, 4 + 16 + 6};
    unsigned mode = i % 9;
    uint8_t b[64] = {0};
    int fd = conn_open(), r = fd < 0 ? -1 : greet[mode] ? bm_read_full(fd, b, greet[mode]) : 0;
    if (fd < 0)
        return -1;
    bm_put_be32(b, NBD_FLAG_C_FIXED_NEWSTYLE);
    bm_put_be64(b + 4, NBD_IHAVEOPT);
    bm_put_be32(b + 12, mode == 6 ? NBD_OPT_LIST : NBD_OPT_GO);
    bm_put_be32(b + 16, mode == 6 ? 0 : mode == 8 ? 6 : 50);
    if (r == 0 && sent[mode])
        r = bm_write_full(fd, b, sent[mode]);
    if (r == 0 && (mode == 6 || mode == 8))
        r = bm_read_full(fd, b, 20); /* the first reply header, no more */
    if (r == 0 && mode == 8)
        r = bm_write_full(fd, b, NBD_REQUEST_SIZE / 2); /* half a request */
    drop(fd, i & 1);
    if (r == -ENODATA || r == -ECONNRESET || r == -EPIPE)
        return 1;
    return r < 0 ? fail("churn connection %u (mode %u): %s", i, mode, io_err(r)) : 0;
}

static int case_churn(const void *arg UNUSED)
{
    unsigned dropped = 0;
    for (unsigned i = 0; i < g_churn; i++) {
        int r = churn_one(i);
        if (r < 0)
            return -1;
        dropped += (unsigned)r;
    }
    if (probe_alive("connection churn") < 0)
        return -1;
    return ok("%u connections, %u dropped early by the server", g_churn, dropped);
}

/* ---- The final check ---- */

struct region {
    uint64_t off;
    uint32_t len;
};

/* The regions the final case writes (those that fit in size); returns how many. */
static size_t pattern_regions(uint64_t size, struct region *rg)
{
    const struct region all[] = {{0, 4096},
                                 {MIB + 123, 10000},
                                 {32 * MIB - 2048, 4096},
                                 {40 * MIB, MIB},
                                 {size - 4096, 4096}};
    size_t n = 0;
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (size >= 4096 && all[i].off <= size && all[i].len <= size - all[i].off)
            rg[n++] = all[i];
    return n;
}

static void pattern_fill(uint8_t *p, uint64_t off, uint32_t len)
{
    for (uint32_t i = 0; i < len; i++)
        p[i] = (uint8_t)(((off + i) * UINT64_C(0x9E3779B97F4A7C15)) >> 56) ^ 0x5a;
}

/* Read rg back over fd and compare with the pattern. */
static int pattern_check(int fd, const struct region *rg, uint8_t *want, uint8_t *got,
                         const char *conn)
{
    pattern_fill(want, rg->off, rg->len);
    if (read_ok(fd, rg->off, rg->len, got, conn) < 0)
        return -1;
    if (memcmp(want, got, rg->len) != 0)
        return fail("%s: data at 0x%" PRIx64 " is not what was written", conn, rg->off);
    return 0;
}

/* Write the pattern, read it back on this and a second connection, also via a 3 MiB READ. */
static int case_final_pattern(const void *arg UNUSED)
{
    uint64_t size;
    uint32_t err = 0;
    struct region rg[6];
    uint8_t *want = malloc(3 * MIB), *got = malloc(3 * MIB);
    int fd = want && got ? negotiate_go(&size) : fail("out of memory"), fd2 = -1;
    int r = fd < 0 ? -1 : 0;
    size_t n = r == 0 ? pattern_regions(size, rg) : 0;
    for (size_t i = 0; r == 0 && i < n; i++) {
        pattern_fill(want, rg[i].off, rg[i].len);
        uint16_t fl = i % 2 ? NBD_CMD_FLAG_FUA : 0;
        if (xfer(fd, NBD_CMD_WRITE, fl, rg[i].off, rg[i].len, want, NULL, &err) < 0 || err)
            r = fail("WRITE at 0x%" PRIx64 ": %.300s (NBD error %u)", rg[i].off, g_note, err);
    }
    if (r == 0 && (xfer(fd, NBD_CMD_FLUSH, 0, 0, 0, NULL, NULL, &err) < 0 || err))
        r = fail("FLUSH: %.300s (NBD error %u)", g_note, err);
    for (size_t i = 0; r == 0 && i < n; i++)
        r = pattern_check(fd, &rg[i], want, got, "same connection");
    if (r == 0 && (fd2 = negotiate_go(&size)) < 0)
        r = -1;
    for (size_t i = 0; r == 0 && i < n; i++)
        r = pattern_check(fd2, &rg[i], want, got, "second connection");
    /* A READ large enough for the server's hole-detecting path, around the 1 MiB region. */
    if (r == 0 && size >= 42 * MIB && read_ok(fd2, 39 * MIB, 3 * MIB, got, "of 3 MiB") < 0)
        r = -1;
    pattern_fill(want, 40 * MIB, MIB);
    if (r == 0 && size >= 42 * MIB && memcmp(got + MIB, want, MIB) != 0)
        r = fail("3 MiB READ: the middle MiB is not what was written");
    if (r == 0)
        ok("%zu regions written and read back on two connections", n);
    disc_close(fd);
    disc_close(fd2);
    free(want);
    free(got);
    return r;
}

/* --apply-pattern FILE: make FILE what the final case makes of the export. */
static int apply_pattern(const char *path)
{
    static uint8_t buf[MIB];
    struct region rg[6];
    struct stat st;
    int fd = open(path, O_RDWR);
    if (fd < 0 || fstat(fd, &st) < 0) {
        fprintf(stderr, "nbd-hostile: %s: %s\n", path, strerror(errno));
        return 1;
    }
    size_t n = pattern_regions((uint64_t)st.st_size, rg);
    for (size_t i = 0; i < n; i++) {
        pattern_fill(buf, rg[i].off, rg[i].len);
        if (pwrite(fd, buf, rg[i].len, (off_t)rg[i].off) != (ssize_t)rg[i].len) {
            fprintf(stderr, "nbd-hostile: writing %s: %s\n", path, strerror(errno));
            return 1;
        }
    }
    return close(fd) == 0 ? 0 : 1;
}

/* ---- Driver ---- */

struct hostile_case {
    const char *name;
    int (*run)(const void *arg);
    const void *arg;
};

static const struct hostile_case cases[] = {
    {"hs-bad-option-magic", case_frame, &bad_option_magic},
    {"hs-unknown-client-flags", case_frame, &unknown_client_flags},
    {"hs-option-len-4g", case_option_len_4g, NULL},
    {"hs-option-100k-garbage", case_option_100k_garbage, NULL},
    {"hs-info-name-overrun", case_opt_rejects, &info_name_overrun},
    {"hs-info-count-mismatch", case_opt_rejects, &info_count_mismatch},
    {"hs-meta-bad-queries", case_opt_rejects, &meta_bad_queries},
    {"hs-long-names-info-go", case_opt_rejects, &long_names_info},
    {"hs-long-names-meta", case_opt_rejects, &long_names_meta},
    {"hs-export-name-4097", case_frame, &export_name_4097},
    {"hs-export-name-unknown", case_frame, &export_name_unknown},
    {"hs-unknown-options", case_opt_rejects, &unknown_options},
    {"hs-cut-client-flags", case_frame, &cut_flags},
    {"hs-cut-option-header", case_frame, &cut_opt_header},
    {"hs-cut-option-data", case_frame, &cut_opt_data},
    {"hs-cut-option-data-rst", case_frame, &cut_opt_data_rst},
    {"hs-many-options", case_many_options, NULL},
    {"tx-bad-magic", case_frame, &tx_bad_magic},
    {"tx-unknown-command", case_tx_rejects, unknown_command},
    {"tx-write-4g-hangup", case_tx_write_4g_hangup, NULL},
    {"tx-read-len-4g", case_tx_rejects, read_len_4g},
    {"tx-offset-overflow", case_tx_rejects, offset_overflow},
    {"tx-unknown-flags", case_tx_rejects, unknown_flags},
    {"tx-cut-header", case_frame, &tx_cut_header},
    {"tx-cut-header-27", case_frame, &tx_cut_header_27},
    {"tx-cut-write-payload-rst", case_frame, &tx_cut_write_rst},
    {"tx-pipelined-reads", case_tx_pipelined_reads, NULL},
    {"tx-never-read", case_tx_never_read, NULL},
    {"churn", case_churn, NULL},
    {"final-pattern", case_final_pattern, NULL},
};

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--apply-pattern") == 0)
        return apply_pattern(argv[2]);
    char *end;
    bool good = argc == 3;
    if (argc == 5 && strcmp(argv[3], "--connections") == 0) {
        g_churn = (unsigned)strtoul(argv[4], &end, 10);
        good = *argv[4] && !*end;
    }
    if (!good) {
        fprintf(stderr, "usage: nbd-hostile HOST PORT [--connections N]\n"
                        "       nbd-hostile --apply-pattern FILE\n");
        return 2;
    }
    g_host = argv[1];
    g_port = argv[2];
    signal(SIGPIPE, SIG_IGN);
    unsigned failed = 0, n = sizeof cases / sizeof cases[0];
    for (unsigned i = 0; i < n; i++) {
        g_note[0] = '\0';
        int r = cases[i].run(cases[i].arg);
        failed += r < 0;
        printf("# %s: %s%s%s\n", cases[i].name, r < 0 ? "FAIL" : "ok", g_note[0] ? ": " : "",
               g_note);
        fflush(stdout);
    }
    printf("# %u of %u cases passed\n", n - failed, n);
    return failed ? 1 : 0;
}
