/* test-inject.c: unit tests for --inject rule parsing and deterministic decisions. */
#include <config.h>

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "nbd/inject.h"

static int parse(struct nbd_inject *inj, const char *spec)
{
    char err[256];
    return nbd_inject_parse(inj, spec, err, sizeof err);
}

static void test_parse_good(void **state)
{
    (void)state;
    struct nbd_inject inj = {0};
    assert_int_equal(parse(&inj, "write:error=EIO:rate=0.01"), 0);
    assert_int_equal(inj.rules[0].ops, NBD_INJ_WRITE);
    assert_int_equal(inj.rules[0].error, EIO);
    assert_true(inj.rules[0].rate > 0.0099 && inj.rules[0].rate < 0.0101);
    assert_int_equal(parse(&inj, "read:delay=5ms"), 0);
    assert_int_equal(inj.rules[1].delay_ns, 5000000);
    assert_int_equal(inj.rules[1].error, 0);
    assert_int_equal(parse(&inj, "flush:error=EIO:after=100"), 0);
    assert_int_equal(inj.rules[2].after, 100);
    assert_int_equal(parse(&inj, "write,zero:error=ENOSPC:count=3:rate=50%"), 0);
    assert_int_equal(inj.rules[3].ops, NBD_INJ_WRITE | NBD_INJ_ZERO);
    assert_int_equal(inj.rules[3].count, 3);
    assert_int_equal(parse(&inj, "all:error=eio"), 0);
    assert_int_equal(inj.rules[4].ops, NBD_INJ_ALL);
    assert_int_equal(inj.nrules, 5);
}

static void test_parse_bad(void **state)
{
    (void)state;
    struct nbd_inject inj = {0};
    char err[256];
    const char *bad[] = {
        "write",                 /* no key */
        "bogus:error=EIO",       /* unknown op */
        "write:error=EWHAT",     /* unknown errno */
        "write:rate=2:error=EIO", /* rate > 1 */
        "write:error",           /* no value */
        "write:colour=red",      /* unknown key */
        "write:rate=0.5",        /* no action */
        "write:delay=5min",      /* bad unit */
        "write:error=EIO:count=0",
        ":error=EIO",
        "write,:error=EIO",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        assert_int_equal(nbd_inject_parse(&inj, bad[i], err, sizeof err), -EINVAL);
        assert_true(strlen(err) > 0);
    }
    assert_int_equal(inj.nrules, 0);
    for (int i = 0; i < NBD_INJECT_MAX_RULES; i++)
        assert_int_equal(parse(&inj, "read:delay=1us"), 0);
    assert_int_equal(parse(&inj, "read:delay=1us"), -EINVAL);
}

static void test_after_and_count(void **state)
{
    (void)state;
    struct nbd_inject inj = {0};
    uint64_t delay;
    assert_int_equal(parse(&inj, "flush:error=EIO:after=3"), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(nbd_inject_decide(&inj, NBD_INJ_FLUSH, &delay), 0);
    assert_int_equal(nbd_inject_decide(&inj, NBD_INJ_READ, &delay), 0); /* other ops pass */
    assert_int_equal(nbd_inject_decide(&inj, NBD_INJ_FLUSH, &delay), EIO);
    assert_int_equal(nbd_inject_decide(&inj, NBD_INJ_FLUSH, &delay), EIO);

    struct nbd_inject c = {0};
    assert_int_equal(parse(&c, "all:error=ENOSPC:count=2"), 0);
    assert_int_equal(nbd_inject_decide(&c, NBD_INJ_WRITE, &delay), ENOSPC);
    assert_int_equal(nbd_inject_decide(&c, NBD_INJ_READ, &delay), ENOSPC);
    assert_int_equal(nbd_inject_decide(&c, NBD_INJ_WRITE, &delay), 0);
    assert_int_equal(nbd_inject_decide(NULL, NBD_INJ_WRITE, &delay), 0);
}

static void test_delay(void **state)
{
    (void)state;
    struct nbd_inject inj = {0};
    uint64_t delay;
    assert_int_equal(parse(&inj, "read:delay=5ms"), 0);
    assert_int_equal(nbd_inject_decide(&inj, NBD_INJ_READ, &delay), 0);
    assert_int_equal(delay, 5000000);
    assert_int_equal(nbd_inject_decide(&inj, NBD_INJ_WRITE, &delay), 0);
    assert_int_equal(delay, 0);
}

static unsigned pattern(uint64_t seed, char *out, unsigned n)
{
    struct nbd_inject inj = {.seed = seed};
    uint64_t delay;
    parse(&inj, "write:error=EIO:rate=0.5");
    unsigned fired = 0;
    for (unsigned i = 0; i < n; i++) {
        out[i] = nbd_inject_decide(&inj, NBD_INJ_WRITE, &delay) ? 'x' : '.';
        fired += out[i] == 'x';
    }
    out[n] = '\0';
    return fired;
}

static void test_rate_deterministic(void **state)
{
    (void)state;
    char a[1001], b[1001], c[1001];
    unsigned fa = pattern(42, a, 1000);
    pattern(42, b, 1000);
    pattern(43, c, 1000);
    assert_string_equal(a, b);
    assert_string_not_equal(a, c);
    assert_in_range(fa, 420, 580); /* about half */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_good),      cmocka_unit_test(test_parse_bad),
        cmocka_unit_test(test_after_and_count), cmocka_unit_test(test_delay),
        cmocka_unit_test(test_rate_deterministic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
