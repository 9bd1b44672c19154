/* test-control.c: unit tests for common/control (claiming a path, the socket's mode, refusals,
 * stale sockets, idle clients). */
#include <config.h>

#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common/control.h"

static char dir[64], sock[96], lock_file[112];

static const char *const commands[] = {"ping", "slow", NULL};

static struct json_object *on_cmd(void *opaque, const char *cmd, struct json_object *args,
                                  const char **cls, char *desc, size_t desclen)
{
    (void)opaque, (void)args, (void)cls, (void)desc, (void)desclen;
    if (strcmp(cmd, "slow") == 0) { /* longer than the idle timeout the tests set */
        struct timespec t = {2, 0};
        nanosleep(&t, NULL);
    }
    return json_object_new_object();
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/test-control.XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(sock, sizeof sock, "%s/s.sock", dir);
    snprintf(lock_file, sizeof lock_file, "%s.lock", sock);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(sock);
    unlink(lock_file);
    rmdir(dir);
    return 0;
}

static struct bm_control *start(void)
{
    char err[512] = "";
    int claim = bm_control_claim(sock, err, sizeof err);
    assert_true(claim >= 0);
    struct bm_control *c =
        bm_control_start_claimed(claim, sock, "test", commands, on_cmd, NULL, err, sizeof err);
    assert_non_null(c);
    return c;
}

/* A bound socket file nobody listens on, as a killed process leaves it. */
static void make_stale(void)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    close(fd);
}

static void test_claim_once(void **state)
{
    (void)state;
    char err[512] = "";
    int a = bm_control_claim(sock, err, sizeof err);
    assert_true(a >= 0);
    /* A second claim, even by this process, is refused while the first holds the lock. */
    assert_int_equal(bm_control_claim(sock, err, sizeof err), -EADDRINUSE);
    assert_non_null(strstr(err, "in use"));
    bm_control_release(sock, a);
    assert_int_equal(access(lock_file, F_OK), -1);
    int b = bm_control_claim(sock, err, sizeof err);
    assert_true(b >= 0);
    bm_control_release(sock, b);
}

static void test_mode_and_live_path(void **state)
{
    (void)state;
    mode_t old = umask(0);
    struct bm_control *c = start();
    umask(old);
    struct stat st;
    assert_int_equal(stat(sock, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0600);
    char err[512] = "";
    assert_int_equal(bm_control_claim(sock, err, sizeof err), -EADDRINUSE);
    /* Lock file gone (a server of an older kind): the answering socket still refuses. */
    unlink(lock_file);
    assert_int_equal(bm_control_claim(sock, err, sizeof err), -EADDRINUSE);
    assert_non_null(strstr(err, "pid"));
    assert_int_equal(access(lock_file, F_OK), -1); /* the refused claim removed what it made */
    struct json_object *r = bm_control_call(sock, "ping", NULL, -1, err, sizeof err);
    assert_non_null(r);
    json_object_put(r);
    bm_control_stop(c);
    assert_int_equal(access(sock, F_OK), -1);
    /* A umask that masks the owner's bits: 0600 still, so that the owner can connect. */
    old = umask(0377);
    c = start();
    umask(old);
    assert_int_equal(stat(sock, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    r = bm_control_call(sock, "ping", NULL, -1, err, sizeof err);
    assert_non_null(r);
    json_object_put(r);
    bm_control_stop(c);
}

static void test_stale_and_foreign(void **state)
{
    (void)state;
    make_stale();
    int fd = open(lock_file, O_CREAT | O_WRONLY, 0600); /* an unheld lock file, too */
    assert_true(fd >= 0);
    close(fd);
    struct bm_control *c = start();
    char err[512] = "";
    struct json_object *r = bm_control_call(sock, "ping", NULL, -1, err, sizeof err);
    assert_non_null(r);
    json_object_put(r);
    bm_control_stop(c);
    assert_int_equal(access(sock, F_OK), -1);
    assert_int_equal(access(lock_file, F_OK), -1);
    /* Not a socket: refused and left alone. */
    fd = open(sock, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(bm_control_claim(sock, err, sizeof err), -EEXIST);
    assert_int_equal(access(sock, F_OK), 0);
    assert_int_equal(access(lock_file, F_OK), -1);
    unlink(sock);
}

/* Read from fd until end of file or timeout_ms; returns what was read (static). */
static const char *read_all(int fd, int timeout_ms, bool *eof)
{
    static char buf[4096];
    size_t have = 0;
    *eof = false;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, timeout_ms) <= 0)
            break;
        ssize_t n = read(fd, buf + have, sizeof buf - 1 - have);
        if (n <= 0) {
            *eof = n == 0;
            break;
        }
        have += (size_t)n;
    }
    buf[have] = '\0';
    return buf;
}

/* A server with a 1 s idle timeout, and n clients connected to it, past their greeting. */
static struct bm_control *start_with_clients(int *fds, int n)
{
    setenv("BLKMIG_CONTROL_IDLE_TIMEOUT", "1", 1);
    struct bm_control *c = start();
    unsetenv("BLKMIG_CONTROL_IDLE_TIMEOUT");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock);
    char buf[4096];
    for (int i = 0; i < n; i++) {
        fds[i] = socket(AF_UNIX, SOCK_STREAM, 0);
        assert_int_equal(connect(fds[i], (struct sockaddr *)&sa, sizeof sa), 0);
        assert_true(read(fds[i], buf, sizeof buf) > 0);
    }
    return c;
}

static void stop_with_clients(struct bm_control *c, int *fds, int n)
{
    for (int i = 0; i < n; i++)
        close(fds[i]);
    bm_control_stop(c);
}

static void test_idle_clients(void **state)
{
    (void)state;
    int fds[3];
    struct bm_control *c = start_with_clients(fds, 3);
    /* 0 says nothing, 1 leaves a line unfinished, 2 sends a command and then says nothing. */
    assert_int_equal(write(fds[1], "{\"exec", 6), 6);
    assert_int_equal(write(fds[2], "{\"execute\":\"ping\"}\n", 19), 19);
    bool eof;
    for (int i = 0; i < 2; i++) {
        const char *got = read_all(fds[i], 30000, &eof);
        assert_true(eof);
        assert_non_null(strstr(got, "idle timeout"));
    }
    /* The client that spoke was silent as long, and is still connected. */
    const char *got = read_all(fds[2], 100, &eof);
    assert_false(eof);
    assert_non_null(strstr(got, "\"return\""));
    stop_with_clients(c, fds, 3);
}

/* A command sent in time but left unread while a long one ran is served, not timed out. */
static void test_idle_behind_slow_command(void **state)
{
    (void)state;
    int fds[2];
    struct bm_control *c = start_with_clients(fds, 2);
    assert_int_equal(write(fds[0], "{\"execute\":\"slow\"}\n", 19), 19);
    /* While the slow one runs (not in the same wakeup as its command). */
    struct timespec t = {0, 500000000};
    nanosleep(&t, NULL);
    assert_int_equal(write(fds[1], "{\"execute\":\"ping\"}\n", 19), 19);
    bool eof;
    const char *got = read_all(fds[1], 10000, &eof);
    assert_non_null(strstr(got, "\"return\""));
    assert_null(strstr(got, "idle timeout"));
    stop_with_clients(c, fds, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_claim_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mode_and_live_path, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_and_foreign, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_clients, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_behind_slow_command, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
