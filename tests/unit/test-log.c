/* test-log.c: unit tests for common/log (escaping peer text for log lines). */
#include <config.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>
#include <unistd.h>

#include "common/log.h"

static void test_escape_plain(void **state)
{
    (void)state;
    char out[64];
    assert_string_equal(bm_log_escape("disk vda: no space", out, sizeof out), "disk vda: no space");
    assert_string_equal(bm_log_escape("", out, sizeof out), "");
    assert_string_equal(bm_log_escape(NULL, out, sizeof out), "(null)");
}

static void test_escape_controls(void **state)
{
    (void)state;
    char out[128];
    /* A forged second log line and a terminal escape sequence stay on one inert line. */
    bm_log_escape("bad\n\x1b[2Jblkmig: error: fake\r\tx", out, sizeof out);
    assert_string_equal(out, "bad\\n\\x1b[2Jblkmig: error: fake\\r\\tx");
    assert_null(strchr(out, '\n'));
    assert_null(strchr(out, '\x1b'));
    assert_string_equal(bm_log_escape("a\\nb", out, sizeof out), "a\\\\nb");
    assert_string_equal(bm_log_escape("\x7f\x01\xc3\xa9", out, sizeof out), "\\x7f\\x01\\xc3\\xa9");
}

static void test_escape_truncates_whole(void **state)
{
    (void)state;
    char out[6];
    /* "ab" fits, the 4-byte escape of ESC would not: cut before it, never inside. */
    assert_string_equal(bm_log_escape("ab\033cd", out, sizeof out), "ab");
    assert_string_equal(bm_log_escape("abcdefgh", out, sizeof out), "abcde");
    char one[1];
    assert_string_equal(bm_log_escape("abc", one, sizeof one), "");
}

/* Whatever bm_log is given, it writes one line without control bytes. */
static void test_log_one_line(void **state)
{
    (void)state;
    int p[2], saved = dup(STDERR_FILENO);
    assert_int_equal(pipe(p), 0);
    assert_true(dup2(p[1], STDERR_FILENO) >= 0);
    bm_log_set_prefix("t");
    bm_error("peer said '%s'", "bad\n\x1b[2Jt: error: fake\r\tx\x7f");
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(p[1]);
    char buf[256];
    ssize_t n = read(p[0], buf, sizeof buf - 1);
    close(p[0]);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_string_equal(buf, "t: error: peer said 'bad??[2Jt: error: fake??x?'\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escape_plain),
        cmocka_unit_test(test_escape_controls),
        cmocka_unit_test(test_escape_truncates_whole),
        cmocka_unit_test(test_log_one_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
