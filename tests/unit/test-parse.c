/* test-parse.c: unit tests for common/parse (numbers, sizes, durations, probabilities). */
#include <config.h>

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/parse.h"

static void test_u64(void **state)
{
    (void)state;
    uint64_t v;
    assert_int_equal(bm_parse_u64("42", 0, 100, &v), 0);
    assert_int_equal(v, 42);
    assert_int_equal(bm_parse_u64("101", 0, 100, &v), -ERANGE);
    assert_int_equal(bm_parse_u64("0", 1, 100, &v), -ERANGE);
    assert_int_equal(bm_parse_u64("-1", 0, 100, &v), -EINVAL);
    assert_int_equal(bm_parse_u64("12x", 0, 100, &v), -EINVAL);
    assert_int_equal(bm_parse_u64("", 0, 100, &v), -EINVAL);
    assert_int_equal(bm_parse_u64("99999999999999999999999", 0, UINT64_MAX, &v), -ERANGE);
}

static void test_size(void **state)
{
    (void)state;
    uint64_t v;
    assert_int_equal(bm_parse_size("512", &v), 0);
    assert_int_equal(v, 512);
    assert_int_equal(bm_parse_size("64K", &v), 0);
    assert_int_equal(v, 65536);
    assert_int_equal(bm_parse_size("1MiB", &v), 0);
    assert_int_equal(v, 1 << 20);
    assert_int_equal(bm_parse_size("4g", &v), 0);
    assert_int_equal(v, UINT64_C(4) << 30);
    assert_int_equal(bm_parse_size("4X", &v), -EINVAL);
    assert_int_equal(bm_parse_size("4KK", &v), -EINVAL);
    assert_int_equal(bm_parse_size("99999999999P", &v), -ERANGE);
    assert_int_equal(bm_parse_size("K", &v), -EINVAL);
}

static void test_duration(void **state)
{
    (void)state;
    uint64_t ns;
    assert_int_equal(bm_parse_duration("5ms", &ns), 0);
    assert_int_equal(ns, 5000000);
    assert_int_equal(bm_parse_duration("100us", &ns), 0);
    assert_int_equal(ns, 100000);
    assert_int_equal(bm_parse_duration("2s", &ns), 0);
    assert_int_equal(ns, 2000000000);
    assert_int_equal(bm_parse_duration("1.5ms", &ns), 0);
    assert_int_equal(ns, 1500000);
    assert_int_equal(bm_parse_duration("7", &ns), 0);
    assert_int_equal(ns, 7000000);
    assert_int_equal(bm_parse_duration("5min", &ns), -EINVAL);
    assert_int_equal(bm_parse_duration("-5ms", &ns), -EINVAL);
}

static void test_probability(void **state)
{
    (void)state;
    double p;
    assert_int_equal(bm_parse_probability("0.01", &p), 0);
    assert_true(p > 0.0099 && p < 0.0101);
    assert_int_equal(bm_parse_probability("50%", &p), 0);
    assert_true(p > 0.499 && p < 0.501);
    assert_int_equal(bm_parse_probability("1", &p), 0);
    assert_int_equal(bm_parse_probability("2", &p), -ERANGE);
    assert_int_equal(bm_parse_probability("abc", &p), -EINVAL);
    assert_int_equal(bm_parse_probability("0.5x", &p), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_u64),
        cmocka_unit_test(test_size),
        cmocka_unit_test(test_duration),
        cmocka_unit_test(test_probability),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
