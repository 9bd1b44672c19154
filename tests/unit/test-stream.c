/* test-stream.c: unit tests for the migration stream: header, frame codec, socket I/O, JSON. */
#include <config.h>

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/io.h"
#include "migration/migration.h"
#include "migration/stream.h"

/* ---- stream header ---- */

static void test_header_good(void **state)
{
    (void)state;
    uint8_t h[MIG_STREAM_HDR];
    memset(h, 0xee, sizeof h);
    mig_stream_header_encode(h);
    /* The documented layout: magic, then big-endian version and flags. */
    assert_memory_equal(h, "BLKMIGST", 8);
    assert_int_equal(bm_get_be32(h + 8), MIG_STREAM_VERSION);
    assert_int_equal(bm_get_be32(h + 12), 0);
    assert_int_equal(mig_stream_header_check(h), 0);
}

static void test_header_bad(void **state)
{
    (void)state;
    uint8_t h[MIG_STREAM_HDR];
    for (unsigned i = 0; i < 8; i++) {
        mig_stream_header_encode(h);
        h[i] ^= 0x20;
        assert_int_equal(mig_stream_header_check(h), -EPROTO);
    }
    mig_stream_header_encode(h);
    bm_put_be32(h + 8, MIG_STREAM_VERSION + 1);
    assert_int_equal(mig_stream_header_check(h), -EPROTONOSUPPORT);
    bm_put_be32(h + 8, 0);
    assert_int_equal(mig_stream_header_check(h), -EPROTONOSUPPORT);
    /* Flags this version does not know are refused, not ignored. */
    mig_stream_header_encode(h);
    bm_put_be32(h + 12, 1);
    assert_int_equal(mig_stream_header_check(h), -EPROTONOSUPPORT);
    bm_put_be32(h + 12, 0x80000000u);
    assert_int_equal(mig_stream_header_check(h), -EPROTONOSUPPORT);
    /* A bad magic is reported as such even with a bad version too. */
    memset(h, 0, sizeof h);
    assert_int_equal(mig_stream_header_check(h), -EPROTO);
}

/* ---- frame codec ---- */

static void test_frame_names(void **state)
{
    (void)state;
    assert_string_equal(mig_frame_name(MIG_HELLO), "HELLO");
    assert_string_equal(mig_frame_name(MIG_RAM_ZLIB), "RAM_ZLIB");
    assert_string_equal(mig_frame_name(MIG_REPORT), "REPORT");
    assert_string_equal(mig_frame_name(MIG_DURABLE), "DURABLE");
    assert_string_equal(mig_frame_name(0), "?");
    assert_string_equal(mig_frame_name(MIG_FRAME_TYPE_MAX + 1), "?");
    assert_string_equal(mig_frame_name(UINT32_MAX), "?");
}

/* The trailer as docs/migration-stream.md defines it, computed independently of stream.c. */
static uint64_t doc_sum(const uint8_t *hdr, const uint8_t *payload, uint32_t len)
{
    uint8_t *all = malloc(MIG_FRAME_HDR + (size_t)len);
    assert_non_null(all);
    memcpy(all, hdr, MIG_FRAME_HDR);
    if (len)
        memcpy(all + MIG_FRAME_HDR, payload, len);
    uint64_t h = XXH3_64bits(all, MIG_FRAME_HDR + (size_t)len);
    free(all);
    return h;
}

static void test_frame_round_trip(void **state)
{
    (void)state;
    static const uint32_t lens[] = {0, 1, 4096, MIG_FRAME_MAX};
    uint8_t *payload = malloc(MIG_FRAME_MAX);
    assert_non_null(payload);
    for (uint32_t i = 0; i < MIG_FRAME_MAX; i++)
        payload[i] = (uint8_t)(i * 131 + (i >> 12));
    for (uint32_t type = 1; type <= MIG_FRAME_TYPE_MAX; type++) {
        for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
            uint8_t hdr[MIG_FRAME_HDR], tr[MIG_FRAME_TRAILER];
            mig_frame_encode(type, payload, lens[k], hdr, tr);
            assert_int_equal(bm_get_be32(hdr), type);
            assert_int_equal(bm_get_be32(hdr + 4), lens[k]);
            uint32_t t = 0, l = 0;
            assert_int_equal(mig_frame_header_parse(hdr, &t, &l), 0);
            assert_int_equal(t, type);
            assert_int_equal(l, lens[k]);
            assert_int_equal(mig_frame_verify(hdr, payload, l, tr), 0);
            /* The checksum covers header and payload, once, big-endian. */
            if (lens[k] <= 4096)
                assert_int_equal(bm_get_be64(tr), doc_sum(hdr, payload, lens[k]));
        }
    }
    /* An empty frame may come with no payload pointer at all. */
    uint8_t hdr[MIG_FRAME_HDR], tr[MIG_FRAME_TRAILER];
    mig_frame_encode(MIG_PING, NULL, 0, hdr, tr);
    assert_int_equal(mig_frame_verify(hdr, NULL, 0, tr), 0);
    free(payload);
}

static void test_frame_header_malformed(void **state)
{
    (void)state;
    uint8_t hdr[MIG_FRAME_HDR];
    uint32_t t, l;
    bm_put_be32(hdr, 0);
    bm_put_be32(hdr + 4, 10);
    assert_int_equal(mig_frame_header_parse(hdr, &t, &l), -EPROTO);
    bm_put_be32(hdr, MIG_FRAME_TYPE_MAX + 1);
    assert_int_equal(mig_frame_header_parse(hdr, &t, &l), -EPROTO);
    bm_put_be32(hdr, UINT32_MAX);
    assert_int_equal(mig_frame_header_parse(hdr, &t, &l), -EPROTO);
    /* Length: the maximum itself is fine, one more is not. */
    bm_put_be32(hdr, MIG_RAM);
    bm_put_be32(hdr + 4, MIG_FRAME_MAX);
    assert_int_equal(mig_frame_header_parse(hdr, &t, &l), 0);
    bm_put_be32(hdr + 4, MIG_FRAME_MAX + 1);
    assert_int_equal(mig_frame_header_parse(hdr, &t, &l), -EMSGSIZE);
    bm_put_be32(hdr + 4, UINT32_MAX);
    assert_int_equal(mig_frame_header_parse(hdr, &t, &l), -EMSGSIZE);
}

static void test_frame_bit_flips(void **state)
{
    (void)state;
    static const uint32_t lens[] = {1, 64, 4096};
    uint8_t payload[4096];
    for (size_t i = 0; i < sizeof payload; i++)
        payload[i] = (uint8_t)(i ^ 0x5a);
    for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
        uint32_t len = lens[k];
        uint8_t hdr[MIG_FRAME_HDR], tr[MIG_FRAME_TRAILER];
        mig_frame_encode(MIG_RAM, payload, len, hdr, tr);
        assert_int_equal(mig_frame_verify(hdr, payload, len, tr), 0);
        for (unsigned bit = 0; bit < MIG_FRAME_HDR * 8; bit++) {
            hdr[bit / 8] ^= (uint8_t)(1u << (bit % 8));
            assert_int_equal(mig_frame_verify(hdr, payload, len, tr), -EBADMSG);
            hdr[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        }
        for (unsigned bit = 0; bit < MIG_FRAME_TRAILER * 8; bit++) {
            tr[bit / 8] ^= (uint8_t)(1u << (bit % 8));
            assert_int_equal(mig_frame_verify(hdr, payload, len, tr), -EBADMSG);
            tr[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        }
        /* One bit in every payload byte, cycling through the bit positions. */
        for (uint32_t i = 0; i < len; i++) {
            payload[i] ^= (uint8_t)(1u << (i % 8));
            assert_int_equal(mig_frame_verify(hdr, payload, len, tr), -EBADMSG);
            payload[i] ^= (uint8_t)(1u << (i % 8));
        }
        assert_int_equal(mig_frame_verify(hdr, payload, len, tr), 0);
        /* The same bytes verified as a shorter frame do not match either. */
        assert_int_equal(mig_frame_verify(hdr, payload, len - 1, tr), -EBADMSG);
    }
}

/* ---- over a socket ---- */

struct pair {
    struct mig_conn a, b; /* a sends, b receives (either may do both) */
};

static int pair_setup(void **state)
{
    struct pair *p = calloc(1, sizeof *p);
    int sv[2];
    if (!p || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        free(p);
        return -1;
    }
    mig_conn_init(&p->a, sv[0]);
    mig_conn_init(&p->b, sv[1]);
    *state = p;
    return 0;
}

static int pair_teardown(void **state)
{
    struct pair *p = *state;
    mig_conn_close(&p->a);
    mig_conn_close(&p->b);
    free(p);
    return 0;
}

static void write_raw(struct mig_conn *c, const void *buf, size_t len)
{
    assert_int_equal(bm_write_full(c->fd, buf, len), 0);
}

static void test_conn_header(void **state)
{
    struct pair *p = *state;
    assert_int_equal(mig_send_header(&p->a), 0);
    assert_int_equal(p->a.bytes_sent, MIG_STREAM_HDR);
    assert_int_equal(mig_recv_header(&p->b, 1000), 0);
    assert_int_equal(p->b.bytes_received, MIG_STREAM_HDR);
    /* A peer that is not blkmig. */
    write_raw(&p->a, "GET / HTTP/1.1\r\n", 16);
    assert_int_equal(mig_recv_header(&p->b, 1000), -EPROTO);
    /* Nothing at all. */
    assert_int_equal(mig_recv_header(&p->b, 30), -ETIMEDOUT);
}

static void test_conn_round_trip(void **state)
{
    struct pair *p = *state;
    uint32_t type, len;
    uint8_t *payload;
    assert_int_equal(mig_send(&p->a, MIG_HELLO, "hello", 5), 0);
    assert_int_equal(mig_send(&p->a, MIG_PING, NULL, 0), 0);
    uint8_t big[8192];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (uint8_t)(i * 7 + 1);
    assert_int_equal(mig_send(&p->a, MIG_RAM, big, sizeof big), 0);
    assert_int_equal(mig_send(&p->a, MIG_ABORT, "x", 1), 0);
    uint64_t want = 4 * (MIG_FRAME_HDR + MIG_FRAME_TRAILER) + 5 + 0 + sizeof big + 1;
    assert_int_equal(p->a.bytes_sent, want);

    assert_int_equal(mig_recv(&p->b, 1000, &type, &payload, &len), 0);
    assert_int_equal(type, MIG_HELLO);
    assert_int_equal(len, 5);
    assert_memory_equal(payload, "hello", 5);
    assert_int_equal(payload[5], '\0');
    assert_string_equal((char *)payload, "hello");

    assert_int_equal(mig_recv(&p->b, 1000, &type, &payload, &len), 0);
    assert_int_equal(type, MIG_PING);
    assert_int_equal(len, 0);
    assert_int_equal(payload[0], '\0');

    assert_int_equal(mig_recv(&p->b, 1000, &type, &payload, &len), 0);
    assert_int_equal(type, MIG_RAM);
    assert_int_equal(len, sizeof big);
    assert_memory_equal(payload, big, sizeof big);
    assert_int_equal(payload[len], '\0');

    /* The buffer is reused; a shorter payload is still terminated right after it. */
    assert_int_equal(mig_recv(&p->b, 1000, &type, &payload, &len), 0);
    assert_int_equal(type, MIG_ABORT);
    assert_int_equal(len, 1);
    assert_string_equal((char *)payload, "x");
    assert_int_equal(p->b.bytes_received, want);

    /* Both directions work on one connection. */
    assert_int_equal(mig_send(&p->b, MIG_HELLO_ACK, "ack", 3), 0);
    assert_int_equal(mig_recv(&p->a, 1000, &type, &payload, &len), 0);
    assert_int_equal(type, MIG_HELLO_ACK);
    assert_string_equal((char *)payload, "ack");
}

struct big_send {
    struct mig_conn *c;
    const uint8_t *buf;
    uint32_t len;
    int r;
};

static void *send_thread(void *arg)
{
    struct big_send *s = arg;
    s->r = mig_send(s->c, MIG_STATE, s->buf, s->len);
    return NULL;
}

/* A frame of the largest size, bigger than any socket buffer, with a concurrent sender. */
static void test_conn_max_frame(void **state)
{
    struct pair *p = *state;
    uint8_t *buf = malloc(MIG_FRAME_MAX);
    assert_non_null(buf);
    for (uint32_t i = 0; i < MIG_FRAME_MAX; i++)
        buf[i] = (uint8_t)(i >> 3);
    struct big_send s = {&p->a, buf, MIG_FRAME_MAX, -1};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, send_thread, &s), 0);
    uint32_t type, len;
    uint8_t *payload;
    int r = mig_recv(&p->b, 5000, &type, &payload, &len);
    pthread_join(t, NULL);
    assert_int_equal(s.r, 0);
    assert_int_equal(r, 0);
    assert_int_equal(type, MIG_STATE);
    assert_int_equal(len, MIG_FRAME_MAX);
    assert_memory_equal(payload, buf, MIG_FRAME_MAX);
    assert_int_equal(payload[len], '\0');
    assert_int_equal(p->b.bytes_received, MIG_FRAME_HDR + MIG_FRAME_MAX + MIG_FRAME_TRAILER);
    /* Over the maximum is refused before anything is written. */
    assert_int_equal(mig_send(&p->a, MIG_STATE, buf, MIG_FRAME_MAX + 1), -EMSGSIZE);
    assert_int_equal(p->a.bytes_sent, MIG_FRAME_HDR + MIG_FRAME_MAX + MIG_FRAME_TRAILER);
    assert_int_equal(mig_recv(&p->b, 30, &type, &payload, &len), -ETIMEDOUT);
    free(buf);
}

static void test_conn_json(void **state)
{
    struct pair *p = *state;
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "reason", json_object_new_string("disk \"vda\" failed"));
    json_object_object_add(o, "n", json_object_new_int(42));
    assert_int_equal(mig_send_json(&p->a, MIG_ABORT, o), 0);
    json_object_put(o);
    uint32_t type, len;
    uint8_t *payload;
    assert_int_equal(mig_recv(&p->b, 1000, &type, &payload, &len), 0);
    assert_int_equal(type, MIG_ABORT);
    struct json_object *got = mig_parse_json(payload, len);
    assert_non_null(got);
    struct json_object *v;
    assert_true(json_object_object_get_ex(got, "reason", &v));
    assert_string_equal(json_object_get_string(v), "disk \"vda\" failed");
    assert_true(json_object_object_get_ex(got, "n", &v));
    assert_int_equal(json_object_get_int(v), 42);
    json_object_put(got);
}

static void test_recv_timeout(void **state)
{
    struct pair *p = *state;
    uint32_t type, len;
    uint8_t *payload;
    assert_int_equal(mig_recv(&p->b, 50, &type, &payload, &len), -ETIMEDOUT);
    assert_int_equal(mig_recv(&p->b, 0, &type, &payload, &len), -ETIMEDOUT);
    /* A frame that starts but never finishes times out as well. */
    uint8_t hdr[MIG_FRAME_HDR], tr[MIG_FRAME_TRAILER];
    mig_frame_encode(MIG_HELLO, "abcdef", 6, hdr, tr);
    write_raw(&p->a, hdr, sizeof hdr);
    write_raw(&p->a, "abc", 3);
    assert_int_equal(mig_recv(&p->b, 50, &type, &payload, &len), -ETIMEDOUT);
}

static void test_recv_eof(void **state)
{
    struct pair *p = *state;
    uint32_t type, len;
    uint8_t *payload;
    assert_int_equal(mig_send(&p->a, MIG_PING, NULL, 0), 0);
    close(p->a.fd);
    p->a.fd = -1;
    assert_int_equal(mig_recv(&p->b, 1000, &type, &payload, &len), 0);
    assert_int_equal(type, MIG_PING);
    assert_int_equal(mig_recv(&p->b, 1000, &type, &payload, &len), -ECONNRESET);
}

static void test_recv_eof_mid_frame(void **state)
{
    struct pair *p = *state;
    uint32_t type, len;
    uint8_t *payload;
    uint8_t hdr[MIG_FRAME_HDR], tr[MIG_FRAME_TRAILER];
    mig_frame_encode(MIG_HELLO, "abcdef", 6, hdr, tr);
    write_raw(&p->a, hdr, sizeof hdr);
    write_raw(&p->a, "abcdef", 6);
    write_raw(&p->a, tr, 4); /* half the trailer */
    close(p->a.fd);
    p->a.fd = -1;
    assert_int_equal(mig_recv(&p->b, 1000, &type, &payload, &len), -ECONNRESET);
}

static void test_recv_corrupt(void **state)
{
    struct pair *p = *state;
    uint32_t type, len;
    uint8_t *payload;
    uint8_t frame[MIG_FRAME_HDR + 100 + MIG_FRAME_TRAILER];
    uint8_t body[100];
    memset(body, 'q', sizeof body);
    mig_frame_encode(MIG_RAM, body, sizeof body, frame, frame + MIG_FRAME_HDR + sizeof body);
    memcpy(frame + MIG_FRAME_HDR, body, sizeof body);
    /* Intact, it is received... */
    write_raw(&p->a, frame, sizeof frame);
    assert_int_equal(mig_recv(&p->b, 1000, &type, &payload, &len), 0);
    assert_int_equal(len, sizeof body);
    /* ...but one byte changed in transit is caught, wherever it is after the header. */
    static const size_t at[] = {MIG_FRAME_HDR, MIG_FRAME_HDR + 57, sizeof frame - 1};
    for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
        frame[at[i]] ^= 0x01;
        write_raw(&p->a, frame, sizeof frame);
        assert_int_equal(mig_recv(&p->b, 1000, &type, &payload, &len), -EBADMSG);
        frame[at[i]] ^= 0x01;
    }
}

static void test_recv_corrupt_type_bit(void **state)
{
    struct pair *p = *state;
    uint32_t type, len;
    uint8_t *payload;
    /* A flipped type bit that still names a valid type is caught by the checksum. */
    uint8_t frame[MIG_FRAME_HDR + 3 + MIG_FRAME_TRAILER];
    mig_frame_encode(MIG_RAM, "abc", 3, frame, frame + MIG_FRAME_HDR + 3);
    memcpy(frame + MIG_FRAME_HDR, "abc", 3);
    frame[3] ^= 0x04; /* MIG_RAM (3) -> MIG_RESUMED (7) */
    write_raw(&p->a, frame, sizeof frame);
    assert_int_equal(mig_recv(&p->b, 1000, &type, &payload, &len), -EBADMSG);
}

static void test_recv_oversized(void **state)
{
    struct pair *p = *state;
    uint32_t type, len;
    uint8_t *payload;
    uint8_t hdr[MIG_FRAME_HDR];
    bm_put_be32(hdr, MIG_RAM);
    bm_put_be32(hdr + 4, MIG_FRAME_MAX + 1);
    write_raw(&p->a, hdr, sizeof hdr);
    /* Refused from the header alone: nothing of that size is allocated or awaited. */
    assert_int_equal(mig_recv(&p->b, 1000, &type, &payload, &len), -EMSGSIZE);
    assert_true(p->b.rcap < MIG_FRAME_MAX);
    assert_int_equal(p->b.bytes_received, MIG_FRAME_HDR);
}

static void test_recv_bad_type(void **state)
{
    struct pair *p = *state;
    uint32_t type, len;
    uint8_t *payload;
    uint8_t hdr[MIG_FRAME_HDR];
    bm_put_be32(hdr, MIG_FRAME_TYPE_MAX + 1);
    bm_put_be32(hdr + 4, 0);
    write_raw(&p->a, hdr, sizeof hdr);
    assert_int_equal(mig_recv(&p->b, 1000, &type, &payload, &len), -EPROTO);
    bm_put_be32(hdr, 0);
    write_raw(&p->a, hdr, sizeof hdr);
    assert_int_equal(mig_recv(&p->b, 1000, &type, &payload, &len), -EPROTO);
}

/* ---- JSON payloads ---- */

static struct json_object *parse_str(const char *s)
{
    return mig_parse_json((const uint8_t *)s, (uint32_t)strlen(s));
}

static void test_parse_json(void **state)
{
    (void)state;
    struct json_object *o = parse_str("{\"token\":\"abc\",\"n\":[1,2,{\"x\":null}]}");
    assert_non_null(o);
    struct json_object *v;
    assert_true(json_object_object_get_ex(o, "token", &v));
    assert_string_equal(json_object_get_string(v), "abc");
    json_object_put(o);
    o = parse_str("{}");
    assert_non_null(o);
    json_object_put(o);

    /* Only the first len bytes count, whatever follows them in memory. */
    const char *s = "{\"a\":1}{\"b\":2}";
    o = mig_parse_json((const uint8_t *)s, 7);
    assert_non_null(o);
    assert_true(json_object_object_get_ex(o, "a", NULL));
    json_object_put(o);

    /* Whitespace around the object is JSON too. */
    o = parse_str(" {\"a\":1}\n");
    assert_non_null(o);
    json_object_put(o);

    assert_null(parse_str("{\"a\":1}x"));         /* trailing garbage */
    assert_null(parse_str("{\"a\":1}{\"b\":2}")); /* two objects */
    assert_null(mig_parse_json((const uint8_t *)"{}\0", 3));
    assert_null(parse_str("[1,2,3]")); /* not an object */
    assert_null(parse_str("\"str\""));
    assert_null(parse_str("42"));
    assert_null(parse_str("null"));
    assert_null(parse_str("{\"a\":"));     /* truncated */
    assert_null(parse_str("{\"a\":[1,2")); /* truncated */
    assert_null(parse_str("{"));
    assert_null(parse_str(""));
    assert_null(mig_parse_json((const uint8_t *)"", 0));
    assert_null(parse_str("}"));
    assert_null(parse_str("{a:1}x"));
}

/* ---- the VM description's disks (what a destination creates) ---- */

static int disks_check(const char *json)
{
    struct json_object *o = json_tokener_parse(json);
    char err[256] = "";
    int r = mig_disks_check(o, err, sizeof err);
    if (r < 0)
        assert_true(err[0] != '\0'); /* a refusal says why */
    json_object_put(o);
    return r;
}

static void test_disks_check(void **state)
{
    (void)state;
    assert_int_equal(disks_check("[]"), 0);
    assert_int_equal(disks_check("[{\"name\":\"vda\",\"size\":1048576},"
                                 "{\"name\":\"vdb\",\"size\":512}]"),
                     0);
    assert_int_equal(disks_check("{}"), -EPROTO);
    assert_int_equal(disks_check("[{\"name\":\"vda\"}]"), -EPROTO);
    assert_int_equal(disks_check("[{\"name\":\"vda\",\"size\":\"1\"}]"), -EPROTO);
    assert_int_equal(disks_check("[{\"name\":\"vda\",\"size\":1000}]"), -EPROTO);
    assert_int_equal(disks_check("[{\"name\":\"vda\",\"size\":0}]"), -EPROTO);
    assert_int_equal(disks_check("[{\"name\":\"../x\",\"size\":512}]"), -EPROTO);
    assert_int_equal(disks_check("[{\"name\":\"vda\",\"size\":512},"
                                 "{\"name\":\"vda\",\"size\":512}]"),
                     -EPROTO);
    /* A JSON null for the name (its string is NULL) is refused, not dereferenced. */
    assert_int_equal(disks_check("[{\"name\":null,\"size\":512}]"), -EPROTO);
    char many[2048] = "[";
    for (int i = 0; i <= VM_MAX_DISKS; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many),
                 "%s{\"name\":\"d%d\",\"size\":512}", i ? "," : "", i);
    strcat(many, "]");
    assert_int_equal(disks_check(many), -EPROTO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_good),
        cmocka_unit_test(test_header_bad),
        cmocka_unit_test(test_frame_names),
        cmocka_unit_test(test_frame_round_trip),
        cmocka_unit_test(test_frame_header_malformed),
        cmocka_unit_test(test_frame_bit_flips),
        cmocka_unit_test_setup_teardown(test_conn_header, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_conn_round_trip, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_conn_max_frame, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_conn_json, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_recv_timeout, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_recv_eof, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_recv_eof_mid_frame, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_recv_corrupt, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_recv_corrupt_type_bit, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_recv_oversized, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_recv_bad_type, pair_setup, pair_teardown),
        cmocka_unit_test(test_parse_json),
        cmocka_unit_test(test_disks_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
