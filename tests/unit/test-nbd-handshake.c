/* test-nbd-handshake.c: unit tests for NBD option parsing and the handshake over a socketpair. */
#include <config.h>

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/io.h"
#include "nbd/server-internal.h"

/* ---- pure parsers ---- */

static size_t info_payload(uint8_t *b, const char *name, const uint16_t *reqs, uint16_t n)
{
    uint32_t nl = (uint32_t)strlen(name);
    bm_put_be32(b, nl);
    memcpy(b + 4, name, nl);
    bm_put_be16(b + 4 + nl, n);
    for (uint16_t i = 0; i < n; i++)
        bm_put_be16(b + 6 + nl + 2 * i, reqs[i]);
    return 6 + nl + 2u * n;
}

static void test_parse_info(void **state)
{
    (void)state;
    uint8_t b[64];
    char name[NBD_MAX_STRING + 1];
    uint32_t nl;
    uint16_t reqs[4], n;
    const uint16_t want[2] = {NBD_INFO_NAME, NBD_INFO_BLOCK_SIZE};
    size_t len = info_payload(b, "disk", want, 2);
    assert_int_equal(nbd_parse_info_opt(b, (uint32_t)len, name, &nl, reqs, 4, &n), 0);
    assert_string_equal(name, "disk");
    assert_int_equal(nl, 4);
    assert_int_equal(n, 2);
    assert_int_equal(reqs[1], NBD_INFO_BLOCK_SIZE);
    /* Truncated, padded, lying name length, lying request count. */
    assert_int_equal(nbd_parse_info_opt(b, (uint32_t)len - 1, name, &nl, reqs, 4, &n), -EINVAL);
    assert_int_equal(nbd_parse_info_opt(b, (uint32_t)len + 1, name, &nl, reqs, 4, &n), -EINVAL);
    bm_put_be32(b, 1000);
    assert_int_equal(nbd_parse_info_opt(b, (uint32_t)len, name, &nl, reqs, 4, &n), -EINVAL);
    bm_put_be32(b, 0xffffffffu);
    assert_int_equal(nbd_parse_info_opt(b, (uint32_t)len, name, &nl, reqs, 4, &n), -EINVAL);
    len = info_payload(b, "disk", want, 2);
    bm_put_be16(b + 8, 3);
    assert_int_equal(nbd_parse_info_opt(b, (uint32_t)len, name, &nl, reqs, 4, &n), -EINVAL);
    assert_int_equal(nbd_parse_info_opt(b, 3, name, &nl, reqs, 4, &n), -EINVAL);
}

static size_t meta_payload(uint8_t *b, const char *name, const char **q, uint32_t n)
{
    uint32_t nl = (uint32_t)strlen(name);
    bm_put_be32(b, nl);
    memcpy(b + 4, name, nl);
    bm_put_be32(b + 4 + nl, n);
    size_t off = 8 + nl;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t ql = (uint32_t)strlen(q[i]);
        bm_put_be32(b + off, ql);
        memcpy(b + off + 4, q[i], ql);
        off += 4 + ql;
    }
    return off;
}

static void test_parse_meta(void **state)
{
    (void)state;
    uint8_t b[256];
    char name[NBD_MAX_STRING + 1];
    uint32_t nl, nq, qoff;
    const char *q[2] = {"base:allocation", "qemu:dirty-bitmap:x"};
    size_t len = meta_payload(b, "", q, 2);
    assert_int_equal(nbd_parse_meta_opt(b, (uint32_t)len, name, &nl, &nq, &qoff), 0);
    assert_int_equal(nl, 0);
    assert_int_equal(nq, 2);
    assert_int_equal(qoff, 8);
    assert_int_equal(nbd_parse_meta_opt(b, (uint32_t)len - 1, name, &nl, &nq, &qoff), -EINVAL);
    assert_int_equal(nbd_parse_meta_opt(b, (uint32_t)len + 4, name, &nl, &nq, &qoff), -EINVAL);
    bm_put_be32(b + 8, 0x7fffffff); /* first query length lies */
    assert_int_equal(nbd_parse_meta_opt(b, (uint32_t)len, name, &nl, &nq, &qoff), -EINVAL);
    len = meta_payload(b, "", q, 2);
    bm_put_be32(b + 4, 0xffffffffu); /* query count lies */
    assert_int_equal(nbd_parse_meta_opt(b, (uint32_t)len, name, &nl, &nq, &qoff), -EINVAL);
}

/* ---- the handshake against a scripted client ---- */

struct hs {
    char path[64];
    struct bm_disk *disk;
    struct nbd_server *server;
    struct nbd_conn conn;
    int client;
    pthread_t thread;
    bool joined;
    int result;
};

/* Wait for the handshake to end; returns its result. */
static int finish(struct hs *h)
{
    pthread_join(h->thread, NULL);
    h->joined = true;
    return h->result;
}

static void *run_handshake(void *p)
{
    struct hs *h = p;
    h->result = nbd_handshake(&h->conn);
    shutdown(h->conn.fd, SHUT_WR);
    return NULL;
}

static int hs_setup(void **state)
{
    struct hs *h = calloc(1, sizeof *h);
    strcpy(h->path, "/tmp/blkmig-test-hs.XXXXXX");
    int fd = mkstemp(h->path);
    if (fd < 0 || ftruncate(fd, 1 << 20) < 0)
        return -1;
    close(fd);
    struct nbd_server_config cfg = {0};
    h->server = nbd_server_new(&cfg);
    if (!h->server || bm_disk_open(h->path, 0, &h->disk) < 0)
        return -1;
    if (nbd_server_add_export(h->server, "disk", "the test disk", h->disk, false) < 0 ||
        nbd_server_add_export(h->server, "other", NULL, h->disk, true) < 0)
        return -1;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
        return -1;
    h->conn.server = h->server;
    h->conn.fd = sv[1];
    h->client = sv[0];
    pthread_create(&h->thread, NULL, run_handshake, h);
    *state = h;
    return 0;
}

static int hs_teardown(void **state)
{
    struct hs *h = *state;
    close(h->client);
    if (!h->joined)
        pthread_join(h->thread, NULL);
    close(h->conn.fd);
    nbd_server_free(h->server);
    bm_disk_close(h->disk);
    unlink(h->path);
    free(h);
    return 0;
}

static void client_greeting(struct hs *h, uint32_t cflags)
{
    uint8_t b[18];
    assert_int_equal(bm_read_full(h->client, b, 18), 0);
    assert_int_equal(bm_get_be64(b), NBD_MAGIC);
    assert_int_equal(bm_get_be64(b + 8), NBD_IHAVEOPT);
    assert_int_equal(bm_get_be16(b + 16), NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    bm_put_be32(b, cflags);
    assert_int_equal(bm_write_full(h->client, b, 4), 0);
}

static void send_opt(struct hs *h, uint32_t opt, const void *data, uint32_t len)
{
    uint8_t b[16];
    bm_put_be64(b, NBD_IHAVEOPT);
    bm_put_be32(b + 8, opt);
    bm_put_be32(b + 12, len);
    assert_int_equal(bm_write_full(h->client, b, 16), 0);
    if (len)
        assert_int_equal(bm_write_full(h->client, data, len), 0);
}

/* Read one option reply; returns its type, payload into data (up to cap). */
static uint32_t read_rep(struct hs *h, uint32_t opt, uint8_t *data, uint32_t cap, uint32_t *len)
{
    uint8_t b[20];
    assert_int_equal(bm_read_full(h->client, b, 20), 0);
    assert_int_equal(bm_get_be64(b), NBD_REP_MAGIC);
    assert_int_equal(bm_get_be32(b + 8), opt);
    *len = bm_get_be32(b + 16);
    assert_true(*len <= cap);
    if (*len)
        assert_int_equal(bm_read_full(h->client, data, *len), 0);
    return bm_get_be32(b + 12);
}

static void test_full_negotiation(void **state)
{
    struct hs *h = *state;
    uint8_t d[512];
    uint32_t len;
    client_greeting(h, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);

    /* Unknown options are refused and negotiation goes on. */
    send_opt(h, 0x1234, "junk", 4);
    assert_int_equal(read_rep(h, 0x1234, d, sizeof d, &len), NBD_REP_ERR_UNSUP);
    send_opt(h, NBD_OPT_STARTTLS, NULL, 0);
    assert_int_equal(read_rep(h, NBD_OPT_STARTTLS, d, sizeof d, &len), NBD_REP_ERR_UNSUP);

    /* Meta contexts need structured replies first. */
    const char *q[1] = {"base:allocation"};
    size_t mlen = meta_payload(d, "disk", q, 1);
    send_opt(h, NBD_OPT_SET_META_CONTEXT, d, (uint32_t)mlen);
    assert_int_equal(read_rep(h, NBD_OPT_SET_META_CONTEXT, d, sizeof d, &len),
                     NBD_REP_ERR_INVALID);

    send_opt(h, NBD_OPT_STRUCTURED_REPLY, NULL, 0);
    assert_int_equal(read_rep(h, NBD_OPT_STRUCTURED_REPLY, d, sizeof d, &len), NBD_REP_ACK);

    mlen = meta_payload(d, "disk", q, 1);
    send_opt(h, NBD_OPT_SET_META_CONTEXT, d, (uint32_t)mlen);
    assert_int_equal(read_rep(h, NBD_OPT_SET_META_CONTEXT, d, sizeof d, &len),
                     NBD_REP_META_CONTEXT);
    assert_int_equal(bm_get_be32(d), NBD_CONTEXT_BASE_ALLOCATION);
    assert_memory_equal(d + 4, "base:allocation", 15);
    assert_int_equal(read_rep(h, NBD_OPT_SET_META_CONTEXT, d, sizeof d, &len), NBD_REP_ACK);

    /* LIST names both exports, with the description. */
    send_opt(h, NBD_OPT_LIST, NULL, 0);
    assert_int_equal(read_rep(h, NBD_OPT_LIST, d, sizeof d, &len), NBD_REP_SERVER);
    assert_int_equal(bm_get_be32(d), 4);
    assert_memory_equal(d + 4, "disk", 4);
    assert_memory_equal(d + 8, "the test disk", 13);
    assert_int_equal(read_rep(h, NBD_OPT_LIST, d, sizeof d, &len), NBD_REP_SERVER);
    assert_memory_equal(d + 4, "other", 5);
    assert_int_equal(read_rep(h, NBD_OPT_LIST, d, sizeof d, &len), NBD_REP_ACK);
    send_opt(h, NBD_OPT_LIST, "x", 1);
    assert_int_equal(read_rep(h, NBD_OPT_LIST, d, sizeof d, &len), NBD_REP_ERR_INVALID);

    /* INFO on an unknown export. */
    size_t ilen = info_payload(d, "nope", NULL, 0);
    send_opt(h, NBD_OPT_INFO, d, (uint32_t)ilen);
    assert_int_equal(read_rep(h, NBD_OPT_INFO, d, sizeof d, &len), NBD_REP_ERR_UNKNOWN);

    /* GO with name and block size requested. */
    const uint16_t reqs[2] = {NBD_INFO_NAME, NBD_INFO_DESCRIPTION};
    ilen = info_payload(d, "disk", reqs, 2);
    send_opt(h, NBD_OPT_GO, d, (uint32_t)ilen);
    bool saw_export = false, saw_name = false, saw_desc = false, saw_bs = false;
    for (;;) {
        uint32_t t = read_rep(h, NBD_OPT_GO, d, sizeof d, &len);
        if (t == NBD_REP_ACK)
            break;
        assert_int_equal(t, NBD_REP_INFO);
        switch (bm_get_be16(d)) {
        case NBD_INFO_EXPORT:
            saw_export = true;
            assert_int_equal(len, 12);
            assert_int_equal(bm_get_be64(d + 2), 1 << 20);
            uint16_t f = bm_get_be16(d + 10);
            assert_true(f & NBD_FLAG_CAN_MULTI_CONN);
            assert_true(f & NBD_FLAG_SEND_DF);
            assert_false(f & NBD_FLAG_READ_ONLY);
            break;
        case NBD_INFO_NAME:
            saw_name = true;
            assert_memory_equal(d + 2, "disk", 4);
            break;
        case NBD_INFO_DESCRIPTION: saw_desc = true; break;
        case NBD_INFO_BLOCK_SIZE:
            saw_bs = true;
            assert_int_equal(bm_get_be32(d + 2), 1);
            assert_int_equal(bm_get_be32(d + 10), NBD_SERVER_MAX_PAYLOAD);
            break;
        default: fail();
        }
    }
    assert_true(saw_export && saw_name && saw_desc && saw_bs);
    assert_int_equal(finish(h), 0);
    assert_true(h->conn.structured);
    assert_true(h->conn.base_allocation);
    assert_string_equal(h->conn.exp->name, "disk");
}

static void test_bad_client_flags(void **state)
{
    struct hs *h = *state;
    client_greeting(h, 0x80000001u);
    assert_true(finish(h) < 0);
}

static void test_export_name_unknown(void **state)
{
    struct hs *h = *state;
    client_greeting(h, NBD_FLAG_C_FIXED_NEWSTYLE);
    send_opt(h, NBD_OPT_EXPORT_NAME, "missing", 7);
    assert_true(finish(h) < 0);
}

static void test_export_name_zeroes(void **state)
{
    struct hs *h = *state;
    client_greeting(h, NBD_FLAG_C_FIXED_NEWSTYLE); /* no NO_ZEROES: 124 zero bytes follow */
    send_opt(h, NBD_OPT_EXPORT_NAME, "other", 5);
    uint8_t b[134];
    assert_int_equal(bm_read_full(h->client, b, sizeof b), 0);
    assert_int_equal(bm_get_be64(b), 1 << 20);
    assert_true(bm_get_be16(b + 8) & NBD_FLAG_READ_ONLY);
    for (int i = 10; i < 134; i++)
        assert_int_equal(b[i], 0);
    assert_int_equal(finish(h), 0);
}

static void test_abort(void **state)
{
    struct hs *h = *state;
    uint8_t d[64];
    uint32_t len;
    client_greeting(h, NBD_FLAG_C_FIXED_NEWSTYLE);
    send_opt(h, NBD_OPT_ABORT, NULL, 0);
    assert_int_equal(read_rep(h, NBD_OPT_ABORT, d, sizeof d, &len), NBD_REP_ACK);
    assert_int_equal(finish(h), 1);
}

static void test_bad_option_magic(void **state)
{
    struct hs *h = *state;
    client_greeting(h, NBD_FLAG_C_FIXED_NEWSTYLE);
    uint8_t b[16] = "NOTMAGIC";
    assert_int_equal(bm_write_full(h->client, b, 16), 0);
    assert_true(finish(h) < 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_info),
        cmocka_unit_test(test_parse_meta),
        cmocka_unit_test_setup_teardown(test_full_negotiation, hs_setup, hs_teardown),
        cmocka_unit_test_setup_teardown(test_bad_client_flags, hs_setup, hs_teardown),
        cmocka_unit_test_setup_teardown(test_export_name_unknown, hs_setup, hs_teardown),
        cmocka_unit_test_setup_teardown(test_export_name_zeroes, hs_setup, hs_teardown),
        cmocka_unit_test_setup_teardown(test_abort, hs_setup, hs_teardown),
        cmocka_unit_test_setup_teardown(test_bad_option_magic, hs_setup, hs_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
