/* test-nbd-request.c: unit tests for NBD request decoding, validation and errno mapping. */
#include <config.h>

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/io.h"
#include "nbd/server-internal.h"

static const struct nbd_request_caps rw = {.size = 1 << 20, .structured = true,
                                           .base_allocation = true};
static const struct nbd_request_caps ro = {.size = 1 << 20, .readonly = true};

static int v(uint16_t type, uint16_t flags, uint64_t off, uint32_t len,
             const struct nbd_request_caps *caps)
{
    struct nbd_request r = {.type = type, .flags = flags, .offset = off, .length = len};
    return nbd_request_validate(&r, caps);
}

static void test_decode(void **state)
{
    (void)state;
    uint8_t b[NBD_REQUEST_SIZE];
    bm_put_be32(b, NBD_REQUEST_MAGIC);
    bm_put_be16(b + 4, NBD_CMD_FLAG_FUA);
    bm_put_be16(b + 6, NBD_CMD_WRITE);
    bm_put_be64(b + 8, 0x1122334455667788ull);
    bm_put_be64(b + 16, 4096);
    bm_put_be32(b + 24, 512);
    struct nbd_request r;
    assert_int_equal(nbd_request_decode(b, &r), 0);
    assert_int_equal(r.flags, NBD_CMD_FLAG_FUA);
    assert_int_equal(r.type, NBD_CMD_WRITE);
    assert_int_equal(r.cookie, 0x1122334455667788ull);
    assert_int_equal(r.offset, 4096);
    assert_int_equal(r.length, 512);
    b[0] ^= 1;
    assert_int_equal(nbd_request_decode(b, &r), -EPROTO);
}

static void test_valid(void **state)
{
    (void)state;
    assert_int_equal(v(NBD_CMD_READ, 0, 0, 4096, &rw), 0);
    assert_int_equal(v(NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 4096, &rw), 0);
    assert_int_equal(v(NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, (1 << 20) - 512, 512, &rw), 0);
    assert_int_equal(v(NBD_CMD_FLUSH, 0, 0, 0, &rw), 0);
    assert_int_equal(v(NBD_CMD_TRIM, NBD_CMD_FLAG_FUA, 0, 1 << 20, &rw), 0);
    assert_int_equal(v(NBD_CMD_WRITE_ZEROES,
                       NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO | NBD_CMD_FLAG_FUA, 0,
                       1 << 20, &rw), 0);
    assert_int_equal(v(NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_REQ_ONE, 0, 1 << 20, &rw), 0);
    assert_int_equal(v(NBD_CMD_CACHE, 0, 0, 1 << 20, &rw), 0);
    assert_int_equal(v(NBD_CMD_READ, 0, 0, 4096, &ro), 0);
}

static void test_out_of_range(void **state)
{
    (void)state;
    assert_int_equal(v(NBD_CMD_READ, 0, (1 << 20) - 511, 512, &rw), EINVAL);
    assert_int_equal(v(NBD_CMD_TRIM, 0, 1 << 20, 1, &rw), EINVAL);
    assert_int_equal(v(NBD_CMD_BLOCK_STATUS, 0, 1 << 20, 1, &rw), EINVAL);
    assert_int_equal(v(NBD_CMD_CACHE, 0, 1 << 20, 1, &rw), EINVAL);
    assert_int_equal(v(NBD_CMD_WRITE, 0, (1 << 20) - 1, 2, &rw), ENOSPC);
    assert_int_equal(v(NBD_CMD_WRITE_ZEROES, 0, 1 << 20, 1, &rw), ENOSPC);
    /* offset + length overflowing 64 bits */
    assert_int_equal(v(NBD_CMD_READ, 0, UINT64_MAX, 1, &rw), EINVAL);
    assert_int_equal(v(NBD_CMD_WRITE, 0, UINT64_MAX - 1, 4, &rw), ENOSPC);
}

static void test_lengths(void **state)
{
    (void)state;
    assert_int_equal(v(NBD_CMD_READ, 0, 0, 0, &rw), EINVAL);
    assert_int_equal(v(NBD_CMD_WRITE, 0, 0, 0, &rw), EINVAL);
    assert_int_equal(v(NBD_CMD_TRIM, 0, 0, 0, &rw), EINVAL);
    assert_int_equal(v(NBD_CMD_WRITE_ZEROES, 0, 0, 0, &rw), EINVAL);
    assert_int_equal(v(NBD_CMD_BLOCK_STATUS, 0, 0, 0, &rw), EINVAL);
    struct nbd_request_caps big = rw;
    big.size = UINT64_C(1) << 40;
    assert_int_equal(v(NBD_CMD_READ, 0, 0, NBD_SERVER_MAX_PAYLOAD, &big), 0);
    assert_int_equal(v(NBD_CMD_READ, 0, 0, NBD_SERVER_MAX_PAYLOAD + 1, &big), EINVAL);
    assert_int_equal(v(NBD_CMD_WRITE, 0, 0, 0xffffffffu, &big), EINVAL);
    assert_int_equal(v(NBD_CMD_CACHE, 0, 0, NBD_SERVER_MAX_PAYLOAD + 1, &big), EINVAL);
    /* No payload: big trims, zeroes and status queries are fine. */
    assert_int_equal(v(NBD_CMD_TRIM, 0, 0, 0xffffffffu, &big), 0);
    assert_int_equal(v(NBD_CMD_WRITE_ZEROES, 0, 0, 0xffffffffu, &big), 0);
    assert_int_equal(v(NBD_CMD_BLOCK_STATUS, 0, 0, 0xffffffffu, &big), 0);
}

static void test_flags_and_modes(void **state)
{
    (void)state;
    assert_int_equal(v(NBD_CMD_READ, NBD_CMD_FLAG_FUA, 0, 512, &rw), EINVAL);
    assert_int_equal(v(NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 512, &ro), EINVAL); /* not structured */
    assert_int_equal(v(NBD_CMD_WRITE, NBD_CMD_FLAG_NO_HOLE, 0, 512, &rw), EINVAL);
    assert_int_equal(v(NBD_CMD_WRITE, 0x8000, 0, 512, &rw), EINVAL);
    assert_int_equal(v(NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_FUA, 0, 512, &rw), EINVAL);
    assert_int_equal(v(NBD_CMD_BLOCK_STATUS, 0, 0, 512, &ro), EINVAL); /* no meta context */
    assert_int_equal(v(99, 0, 0, 512, &rw), EINVAL);
    assert_int_equal(v(NBD_CMD_WRITE, 0, 0, 512, &ro), EPERM);
    assert_int_equal(v(NBD_CMD_TRIM, 0, 0, 512, &ro), EPERM);
    assert_int_equal(v(NBD_CMD_WRITE_ZEROES, 0, 0, 512, &ro), EPERM);
    assert_int_equal(v(NBD_CMD_FLUSH, 0, 0, 0, &ro), 0);
}

static void test_errno_mapping(void **state)
{
    (void)state;
    assert_int_equal(nbd_errno_to_wire(0), 0);
    assert_int_equal(nbd_errno_to_wire(EPERM), NBD_EPERM);
    assert_int_equal(nbd_errno_to_wire(EROFS), NBD_EPERM);
    assert_int_equal(nbd_errno_to_wire(-EIO), NBD_EIO);
    assert_int_equal(nbd_errno_to_wire(ENOMEM), NBD_ENOMEM);
    assert_int_equal(nbd_errno_to_wire(EINVAL), NBD_EINVAL);
    assert_int_equal(nbd_errno_to_wire(ENOSPC), NBD_ENOSPC);
    assert_int_equal(nbd_errno_to_wire(EDQUOT), NBD_ENOSPC);
    assert_int_equal(nbd_errno_to_wire(EOVERFLOW), NBD_EOVERFLOW);
    assert_int_equal(nbd_errno_to_wire(EOPNOTSUPP), NBD_ENOTSUP);
    assert_int_equal(nbd_errno_to_wire(ESHUTDOWN), NBD_ESHUTDOWN);
    assert_int_equal(nbd_errno_to_wire(EBADF), NBD_EIO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode),        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_out_of_range),  cmocka_unit_test(test_lengths),
        cmocka_unit_test(test_flags_and_modes), cmocka_unit_test(test_errno_mapping),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
