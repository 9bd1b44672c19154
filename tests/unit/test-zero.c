/* test-zero.c: unit tests for common/zero (all-zero detection). */
#include <config.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "common/zero.h"

static void test_zero(void **state)
{
    (void)state;
    static unsigned char buf[1 << 20];
    assert_true(bm_is_zero(buf, 0));
    assert_true(bm_is_zero(buf, 1));
    assert_true(bm_is_zero(buf, 15));
    assert_true(bm_is_zero(buf, 16));
    assert_true(bm_is_zero(buf, 17));
    assert_true(bm_is_zero(buf, sizeof buf));
    /* A single non-zero byte anywhere is found: head, the 16-byte seam, middle, tail. */
    size_t pos[] = {0, 15, 16, 17, 4095, 4096, 500000, sizeof buf - 1};
    for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++) {
        buf[pos[i]] = 1;
        assert_false(bm_is_zero(buf, sizeof buf));
        assert_true(pos[i] == 0 || bm_is_zero(buf, pos[i]));
        buf[pos[i]] = 0;
    }
    /* A repeating non-zero pattern is not zero (the shifted compare alone would pass it). */
    memset(buf, 0xaa, 64);
    assert_false(bm_is_zero(buf, 64));
    memset(buf, 0, 64);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_zero)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
