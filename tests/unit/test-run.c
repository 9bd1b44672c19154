/* test-run.c: unit tests for common/run (running a helper program and taking its output). */
#include <config.h>

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "common/run.h"

/* stdout and stderr both land in out; the exit status comes back. */
static void test_output_and_status(void **state)
{
    (void)state;
    char out[64];
    const char *a[] = {"sh", "-c", "echo out; echo err >&2; exit 3", NULL};
    assert_int_equal(bm_run(a, out, sizeof out, 5000), 3);
    assert_string_equal(out, "out\nerr\n");
    const char *b[] = {"true", NULL};
    assert_int_equal(bm_run(b, out, sizeof out, 5000), 0);
    assert_string_equal(out, "");
}

/* More output than out holds: the start is kept, NUL-terminated, and the child is not stuck
 * on a full pipe. */
static void test_truncated(void **state)
{
    (void)state;
    char out[8];
    const char *a[] = {"sh", "-c", "yes | head -c 200000", NULL};
    assert_int_equal(bm_run(a, out, sizeof out, 5000), 0);
    assert_string_equal(out, "y\ny\ny\ny");
}

/* A missing program, a program that outlives the timeout, one killed by a signal. */
static void test_failures(void **state)
{
    (void)state;
    char out[64];
    const char *a[] = {"blkmig-no-such-program", NULL};
    assert_int_equal(bm_run(a, out, sizeof out, 5000), -ENOENT);
    const char *b[] = {"sleep", "10", NULL};
    assert_int_equal(bm_run(b, out, sizeof out, 200), -ETIMEDOUT);
    const char *c[] = {"sh", "-c", "kill -9 $$", NULL};
    assert_int_equal(bm_run(c, out, sizeof out, 5000), -EINTR);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_output_and_status),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
