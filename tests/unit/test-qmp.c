/* test-qmp.c: unit tests for vm/qemu/qmp (the QMP client) against a scripted fake QEMU on a
 * socketpair: greeting, commands, error replies, events, and hostile or broken servers. */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/io.h"
#include "common/sock.h"
#include "vm/qemu/qmp.h"

#define GREETING                                                                                   \
    "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 19, \"minor\": 2, \"major\": 7}, "             \
    "\"package\": \"Debian 1:7.2+dfsg-7\"}, \"capabilities\": [\"oob\"]}}"
#define EVENT(name, n)                                                                             \
    "{\"timestamp\": {\"seconds\": 1700000000, \"microseconds\": 5}, \"event\": \"" name           \
    "\", \"data\": {\"n\": " #n "}}"

/* ---- the fake QEMU: a script run by a thread on one end of a socketpair ---- */

struct fake {
    int fd;
    void (*script)(struct fake *);
    pthread_t thread;
    bool failed; /* the script saw something it did not expect */
};

static void srv_send(struct fake *f, const char *line)
{
    char *s;
    if (asprintf(&s, "%s\r\n", line) < 0)
        abort();
    bm_write_full(f->fd, s, strlen(s)); /* may fail once the client gave up: that is the test */
    free(s);
}

/* One command from the client: its id (-1 at EOF). name gets "execute". */
static int64_t srv_recv(struct fake *f, char *name, size_t namelen)
{
    char line[4096];
    size_t n = 0;
    while (n + 1 < sizeof line) {
        if (read(f->fd, &line[n], 1) != 1)
            return -1;
        if (line[n] == '\n')
            break;
        n++;
    }
    line[n] = '\0';
    struct json_object *o = json_tokener_parse(line), *x;
    int64_t id = -1;
    if (o && json_object_object_get_ex(o, "id", &x) && json_object_is_type(x, json_type_int))
        id = json_object_get_int64(x);
    else {
        fprintf(stderr, "fake QEMU: not a command with an integer id: '%s'\n", line);
        f->failed = true;
    }
    if (name && o && json_object_object_get_ex(o, "execute", &x))
        snprintf(name, namelen, "%s", json_object_get_string(x));
    json_object_put(o);
    return id;
}

static void srv_reply(struct fake *f, int64_t id, const char *ret)
{
    char s[512];
    snprintf(s, sizeof s, "{\"return\": %s, \"id\": %lld}", ret, (long long)id);
    srv_send(f, s);
}

/* Greeting and the capabilities negotiation. */
static void srv_greet(struct fake *f)
{
    char name[64] = "";
    srv_send(f, GREETING);
    int64_t id = srv_recv(f, name, sizeof name);
    if (strcmp(name, "qmp_capabilities") != 0)
        f->failed = true;
    srv_reply(f, id, "{}");
}

/* Read until the client hangs up. */
static void srv_drain(struct fake *f)
{
    char b[4096];
    while (read(f->fd, b, sizeof b) > 0)
        ;
}

static void *fake_main(void *arg)
{
    struct fake *f = arg;
    f->script(f);
    srv_drain(f);
    close(f->fd);
    return NULL;
}

static char err[512];

/* Start the fake with script, and the client on the other end: returns bm_qmp_open_fd's. */
static int start(struct fake *f, void (*script)(struct fake *), struct bm_qmp **q, int timeout)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    *f = (struct fake){.fd = sv[0], .script = script};
    assert_int_equal(pthread_create(&f->thread, NULL, fake_main, f), 0);
    err[0] = '\0';
    return bm_qmp_open_fd(sv[1], "fake", timeout, q, err, sizeof err);
}

static void finish(struct fake *f, struct bm_qmp *q)
{
    bm_qmp_close(q);
    pthread_join(f->thread, NULL);
    assert_false(f->failed);
}

/* ---- tests ---- */

static void script_status(struct fake *f)
{
    char name[64];
    srv_greet(f);
    int64_t id = srv_recv(f, name, sizeof name);
    if (strcmp(name, "query-status") != 0)
        f->failed = true;
    srv_reply(f, id, "{\"status\": \"running\", \"singlestep\": false, \"running\": true}");
}

static void test_greeting_and_exec(void **state)
{
    (void)state;
    struct fake f;
    struct bm_qmp *q;
    assert_int_equal(start(&f, script_status, &q, 2000), 0);
    int ma, mi, mc;
    bm_qmp_version(q, &ma, &mi, &mc);
    assert_int_equal(ma, 7);
    assert_int_equal(mi, 2);
    assert_int_equal(mc, 19);
    assert_true(bm_qmp_fd(q) >= 0);
    struct json_object *ret, *x;
    assert_int_equal(
        bm_qmp_exec_type(q, "query-status", NULL, json_type_object, &ret, 2000, err, sizeof err),
        0);
    assert_true(json_object_object_get_ex(ret, "status", &x));
    assert_string_equal(json_object_get_string(x), "running");
    json_object_put(ret);
    finish(&f, q);
}

static void script_error(struct fake *f)
{
    srv_greet(f);
    int64_t id = srv_recv(f, NULL, 0);
    char s[256];
    snprintf(s, sizeof s,
             "{\"id\": %lld, \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command "
             "nosuch has not been found\"}}",
             (long long)id);
    srv_send(f, s);
    srv_reply(f, srv_recv(f, NULL, 0), "[]");
}

static void test_error_reply(void **state)
{
    (void)state;
    struct fake f;
    struct bm_qmp *q;
    assert_int_equal(start(&f, script_error, &q, 2000), 0);
    struct json_object *ret = (void *)&f;
    assert_int_equal(bm_qmp_exec(q, "nosuch", NULL, &ret, 2000, err, sizeof err), -EREMOTEIO);
    assert_null(ret);
    assert_string_equal(err, "CommandNotFound: The command nosuch has not been found");
    /* The connection stays usable. */
    assert_int_equal(bm_qmp_exec(q, "query-block", NULL, &ret, 2000, err, sizeof err), 0);
    assert_true(json_object_is_type(ret, json_type_array));
    json_object_put(ret);
    finish(&f, q);
}

static void script_events(struct fake *f)
{
    srv_greet(f);
    int64_t id = srv_recv(f, NULL, 0);
    srv_send(f, EVENT("A", 1));
    srv_send(f, "");
    srv_send(f, EVENT("B", 2));
    srv_send(f, "{\"event\": \"C\", \"timestamp\": {\"seconds\": -1, \"microseconds\": -1}}");
    srv_reply(f, id, "{}");
    srv_send(f, EVENT("D", 4));
}

static void expect_event(struct bm_qmp *q, const char *name)
{
    struct json_object *ev, *x;
    assert_int_equal(bm_qmp_next_event(q, 2000, &ev, err, sizeof err), 0);
    assert_true(json_object_object_get_ex(ev, "event", &x));
    assert_string_equal(json_object_get_string(x), name);
    json_object_put(ev);
}

static void test_events_in_order(void **state)
{
    (void)state;
    struct fake f;
    struct bm_qmp *q;
    assert_int_equal(start(&f, script_events, &q, 2000), 0);
    assert_int_equal(bm_qmp_exec(q, "stop", NULL, NULL, 2000, err, sizeof err), 0);
    assert_int_equal(bm_qmp_events_queued(q), 3);
    expect_event(q, "A");
    expect_event(q, "B");
    expect_event(q, "C");
    expect_event(q, "D"); /* read from the socket: the queue was empty */
    struct json_object *ev = (void *)&f;
    assert_int_equal(bm_qmp_next_event(q, 50, &ev, err, sizeof err), -ETIMEDOUT);
    assert_null(ev);
    assert_int_equal(bm_qmp_events_dropped(q), 0);
    finish(&f, q);
}

static void script_flood(struct fake *f)
{
    srv_greet(f);
    int64_t id = srv_recv(f, NULL, 0);
    for (unsigned i = 0; i < BM_QMP_MAX_EVENTS + 6; i++) {
        char s[160];
        snprintf(s, sizeof s,
                 "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"E\", "
                 "\"data\": {\"n\": %u}}",
                 i);
        srv_send(f, s);
    }
    srv_reply(f, id, "{}");
}

static void test_event_queue_bound(void **state)
{
    (void)state;
    struct fake f;
    struct bm_qmp *q;
    assert_int_equal(start(&f, script_flood, &q, 2000), 0);
    assert_int_equal(bm_qmp_exec(q, "cont", NULL, NULL, 5000, err, sizeof err), 0);
    assert_int_equal(bm_qmp_events_queued(q), BM_QMP_MAX_EVENTS);
    assert_int_equal(bm_qmp_events_dropped(q), 6);
    struct json_object *ev, *d, *n;
    assert_int_equal(bm_qmp_next_event(q, 0, &ev, err, sizeof err), 0);
    assert_true(json_object_object_get_ex(ev, "data", &d));
    assert_true(json_object_object_get_ex(d, "n", &n));
    assert_int_equal(json_object_get_int(n), 6); /* the oldest six made room */
    json_object_put(ev);
    finish(&f, q);
}

/* A reply to an id never sent breaks the connection; a late one (its command timed out) is
 * dropped. */
static void script_ids(struct fake *f)
{
    srv_greet(f);
    int64_t a = srv_recv(f, NULL, 0); /* not answered before the next command */
    int64_t b = srv_recv(f, NULL, 0);
    srv_reply(f, a, "{\"late\": true}");
    srv_reply(f, b, "{\"late\": false}");
    int64_t c = srv_recv(f, NULL, 0);
    srv_reply(f, c + 100, "{}");
}

static void test_reply_ids(void **state)
{
    (void)state;
    struct fake f;
    struct bm_qmp *q;
    assert_int_equal(start(&f, script_ids, &q, 2000), 0);
    assert_int_equal(bm_qmp_exec(q, "slow", NULL, NULL, 100, err, sizeof err), -ETIMEDOUT);
    assert_non_null(strstr(err, "timed out waiting for the reply to slow"));
    struct json_object *ret, *x;
    assert_int_equal(bm_qmp_exec(q, "fast", NULL, &ret, 2000, err, sizeof err), 0);
    assert_true(json_object_object_get_ex(ret, "late", &x));
    assert_false(json_object_get_boolean(x));
    json_object_put(ret);
    assert_int_equal(bm_qmp_exec(q, "other", NULL, &ret, 2000, err, sizeof err), -EPROTO);
    assert_non_null(strstr(err, "never sent"));
    /* Broken for good. */
    assert_int_equal(bm_qmp_exec(q, "fast", NULL, &ret, 2000, err, sizeof err), -EPROTO);
    assert_non_null(strstr(err, "unusable"));
    finish(&f, q);
}

static void script_garbage(struct fake *f)
{
    srv_greet(f);
    srv_recv(f, NULL, 0);
    srv_send(f, "this is \x1b[31mnot JSON");
}

static void test_garbage_line(void **state)
{
    (void)state;
    struct fake f;
    struct bm_qmp *q;
    assert_int_equal(start(&f, script_garbage, &q, 2000), 0);
    assert_int_equal(bm_qmp_exec(q, "query-status", NULL, NULL, 2000, err, sizeof err), -EPROTO);
    assert_non_null(strstr(err, "bad line"));
    assert_non_null(strstr(err, "'this is \\x1b[31mnot JSON'")); /* quoted, escaped */
    struct json_object *ev;
    assert_int_equal(bm_qmp_next_event(q, 100, &ev, err, sizeof err), -EPROTO);
    finish(&f, q);
}

static void script_huge(struct fake *f)
{
    srv_greet(f);
    srv_recv(f, NULL, 0);
    size_t n = BM_QMP_MAX_LINE + 4096;
    char *s = malloc(n);
    if (!s)
        abort();
    memcpy(s, "{\"return\": \"", 12);
    memset(s + 12, 'a', n - 12);
    bm_write_full(f->fd, s, n); /* fails once the client gives up */
    free(s);
}

static void test_oversized_line(void **state)
{
    (void)state;
    struct fake f;
    struct bm_qmp *q;
    assert_int_equal(start(&f, script_huge, &q, 2000), 0);
    assert_int_equal(bm_qmp_exec(q, "query-block", NULL, NULL, 10000, err, sizeof err), -EMSGSIZE);
    assert_non_null(strstr(err, "longer than"));
    finish(&f, q);
}

static void script_eof(struct fake *f)
{
    srv_greet(f);
    srv_recv(f, NULL, 0);
    bm_write_full(f->fd, "{\"return\": {\"status\": \"runn", 27);
    shutdown(f->fd, SHUT_WR);
}

static void test_eof_mid_reply(void **state)
{
    (void)state;
    struct fake f;
    struct bm_qmp *q;
    assert_int_equal(start(&f, script_eof, &q, 2000), 0);
    assert_int_equal(bm_qmp_exec(q, "query-status", NULL, NULL, 2000, err, sizeof err),
                     -ECONNRESET);
    assert_non_null(strstr(err, "in the middle of a line"));
    assert_int_equal(bm_qmp_exec(q, "query-status", NULL, NULL, 2000, err, sizeof err),
                     -ECONNRESET);
    finish(&f, q);
}

static void script_mute(struct fake *f)
{
    srv_greet(f);
}

static void test_no_answer(void **state)
{
    (void)state;
    struct fake f;
    struct bm_qmp *q;
    assert_int_equal(start(&f, script_mute, &q, 2000), 0);
    assert_int_equal(bm_qmp_exec(q, "query-status", NULL, NULL, 100, err, sizeof err), -ETIMEDOUT);
    assert_non_null(strstr(err, "timed out"));
    finish(&f, q);
}

static void script_silent(struct fake *f)
{
    (void)f;
}

static void test_no_greeting(void **state)
{
    (void)state;
    struct fake f;
    struct bm_qmp *q = (void *)&f;
    assert_int_equal(start(&f, script_silent, &q, 100), -ETIMEDOUT);
    assert_null(q);
    assert_non_null(strstr(err, "waiting for the greeting"));
    pthread_join(f.thread, NULL);
}

static void script_ssh(struct fake *f)
{
    srv_send(f, "SSH-2.0-OpenSSH_9.2p1 Debian-2");
}

static void script_blkmig(struct fake *f)
{
    srv_send(f, "{\"blkmig\": {\"version\": \"0.1\", \"service\": \"run\", \"commands\": []}}");
}

static void script_bad_version(struct fake *f)
{
    srv_send(f, "{\"QMP\": {\"version\": {\"qemu\": {\"major\": \"7\", \"minor\": 2, \"micro\": "
                "0}}, \"capabilities\": []}}");
}

static void test_not_qmp(void **state)
{
    (void)state;
    struct fake f;
    struct bm_qmp *q;
    assert_int_equal(start(&f, script_ssh, &q, 2000), -EPROTO);
    assert_null(q);
    assert_non_null(strstr(err, "not a QMP server"));
    assert_non_null(strstr(err, "'SSH-2.0-OpenSSH_9.2p1 Debian-2'"));
    pthread_join(f.thread, NULL);
    assert_int_equal(start(&f, script_blkmig, &q, 2000), -EPROTO);
    assert_non_null(strstr(err, "no greeting"));
    pthread_join(f.thread, NULL);
    assert_int_equal(start(&f, script_bad_version, &q, 2000), -EPROTO);
    assert_non_null(strstr(err, "major,minor,micro"));
    pthread_join(f.thread, NULL);
}

static void script_type(struct fake *f)
{
    srv_greet(f);
    srv_reply(f, srv_recv(f, NULL, 0), "{}");
    srv_reply(f, srv_recv(f, NULL, 0), "null");
    srv_send(f, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error\"}}");
}

static void test_return_type(void **state)
{
    (void)state;
    struct fake f;
    struct bm_qmp *q;
    assert_int_equal(start(&f, script_type, &q, 2000), 0);
    struct json_object *ret = (void *)&f;
    assert_int_equal(
        bm_qmp_exec_type(q, "query-block", NULL, json_type_array, &ret, 2000, err, sizeof err),
        -EBADMSG);
    assert_null(ret);
    assert_non_null(strstr(err, "returned an object, expected array"));
    struct json_object *args = json_object_new_array();
    assert_int_equal(bm_qmp_exec(q, "x", args, &ret, 2000, err, sizeof err), -EINVAL);
    json_object_put(args);
    assert_int_equal(bm_qmp_exec(q, "x", NULL, &ret, 2000, err, sizeof err), 0);
    assert_null(ret); /* JSON null */
    /* An error with no id: QEMU could not read a command at all. */
    assert_int_equal(bm_qmp_exec(q, "y", NULL, &ret, 2000, err, sizeof err), -EPROTO);
    assert_non_null(strstr(err, "without an id"));
    assert_non_null(strstr(err, "JSON parse error"));
    finish(&f, q);
}

struct listener {
    int lfd;
    struct fake f;
};

/* Accept one client and run the fake on it. */
static void *accept_main(void *arg)
{
    struct listener *l = arg;
    l->f.fd = accept(l->lfd, NULL, NULL);
    if (l->f.fd < 0) {
        l->f.failed = true;
        return NULL;
    }
    return fake_main(&l->f);
}

/* The socket files of test_connect_path, removed whatever the test's outcome. */
static char dir[64], path[96], path2[96];

static int setup_dir(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/test-qmp.XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    snprintf(path, sizeof path, "%s/qmp.sock", dir);
    snprintf(path2, sizeof path2, "%s/full.sock", dir);
    return 0;
}

static int teardown_dir(void **state)
{
    (void)state;
    unlink(path);
    unlink(path2);
    return rmdir(dir);
}

static void test_connect_path(void **state)
{
    (void)state;
    struct bm_qmp *q;
    assert_int_equal(bm_qmp_connect(path, 1000, &q, err, sizeof err), -ENOENT);
    assert_non_null(strstr(err, "nothing listening"));
    struct listener l = {.lfd = bm_listen_unix(path), .f = {.script = script_status}};
    assert_true(l.lfd >= 0);
    /* Nobody accepts: the kernel queues the connection, and no greeting comes. */
    assert_int_equal(bm_qmp_connect(path, 100, &q, err, sizeof err), -ETIMEDOUT);
    assert_non_null(strstr(err, "waiting for the greeting"));
    int stale = accept(l.lfd, NULL, NULL);
    assert_true(stale >= 0);
    close(stale);
    /* A listener whose backlog is full: refused at once, not waited for. */
    int full = bm_listen_unix(path2);
    assert_true(full >= 0);
    assert_int_equal(listen(full, 0), 0);
    int first = bm_connect_unix(path2);
    assert_true(first >= 0);
    assert_int_equal(bm_qmp_connect(path2, 5000, &q, err, sizeof err), -EAGAIN);
    assert_non_null(strstr(err, "not accepting connections"));
    close(first);
    close(full);
    unlink(path2);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, accept_main, &l), 0);
    assert_int_equal(bm_qmp_connect(path, 2000, &q, err, sizeof err), 0);
    struct json_object *ret;
    assert_int_equal(bm_qmp_exec(q, "query-status", NULL, &ret, 2000, err, sizeof err), 0);
    json_object_put(ret);
    bm_qmp_close(q);
    pthread_join(t, NULL);
    assert_false(l.f.failed);
    close(l.lfd);
    unlink(path);
    assert_int_equal(bm_qmp_connect(path, 1000, &q, err, sizeof err), -ENOENT);
}

static void test_parse(void **state)
{
    (void)state;
    struct bm_qmp_msg m;
    char e[160];
    static const char *const bad[] = {
        "",
        "[1]",
        "{} {}",
        "{\"return\": {}} x",
        "{\"return\": {}, \"error\": {\"class\": \"a\", \"desc\": \"b\"}}",
        "{\"error\": {\"class\": 1, \"desc\": \"b\"}}",
        "{\"return\": {}, \"id\": -1}",
        "{\"return\": {}, \"id\": \"a\"}",
        "{\"event\": \"X\"}",
        "{\"event\": \"\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 1}}",
        /* A string read as a C string must not hide a NUL. */
        "{\"event\": \"\\u0000\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 1}}",
        "{\"event\": \"X\\u0000Y\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 1}}",
        "{\"error\": {\"class\": \"GenericError\\u0000\", \"desc\": \"b\"}}",
        "{\"error\": {\"class\": \"a\", \"desc\": \"b\\u0000c\"}}",
        "{\"event\": \"X\", \"data\": 1, \"timestamp\": {\"seconds\": 1, \"microseconds\": 1}}",
        "{\"QMP\": {\"version\": {\"qemu\": {\"major\": 7, \"minor\": 2, \"micro\": "
        "99999999999}}, \"capabilities\": []}}",
        "{\"QMP\": []}",
        "{\"return\": {},}",
        "{\"hello\": 1}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(bm_qmp_parse(bad[i], strlen(bad[i]), &m, e, sizeof e), -EPROTO);
        assert_null(m.obj);
    }
    assert_int_equal(bm_qmp_parse("{\"return\": 1}\0", 15, &m, e, sizeof e), -EPROTO);
    assert_non_null(strstr(e, "NUL"));
    char deep[256] = "{\"return\": ";
    memset(deep + strlen(deep), '[', 100); /* deeper than the parser allows */
    memset(deep + strlen(deep), ']', 100);
    strcat(deep, "}");
    assert_int_equal(bm_qmp_parse(deep, strlen(deep), &m, e, sizeof e), -EPROTO);

    const char *ok = "{\"return\": {\"a\": [1]}, \"id\": 18446744073709551615}\r";
    assert_int_equal(bm_qmp_parse(ok, strlen(ok), &m, e, sizeof e), 0);
    assert_int_equal(m.kind, BM_QMP_RETURN);
    assert_true(m.has_id);
    assert_true(m.id == UINT64_MAX);
    bm_qmp_msg_clear(&m);
    assert_null(m.obj);
    const char *ev = EVENT("SHUTDOWN", 1);
    assert_int_equal(bm_qmp_parse(ev, strlen(ev), &m, e, sizeof e), 0);
    assert_int_equal(m.kind, BM_QMP_EVENT);
    assert_string_equal(m.event, "SHUTDOWN");
    bm_qmp_msg_clear(&m);
    assert_int_equal(bm_qmp_parse(GREETING, strlen(GREETING), &m, e, sizeof e), 0);
    assert_int_equal(m.kind, BM_QMP_GREETING);
    assert_int_equal(m.major, 7);
    bm_qmp_msg_clear(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greeting_and_exec),
        cmocka_unit_test(test_error_reply),
        cmocka_unit_test(test_events_in_order),
        cmocka_unit_test(test_event_queue_bound),
        cmocka_unit_test(test_reply_ids),
        cmocka_unit_test(test_garbage_line),
        cmocka_unit_test(test_oversized_line),
        cmocka_unit_test(test_eof_mid_reply),
        cmocka_unit_test(test_no_answer),
        cmocka_unit_test(test_no_greeting),
        cmocka_unit_test(test_not_qmp),
        cmocka_unit_test(test_return_type),
        cmocka_unit_test_setup_teardown(test_connect_path, setup_dir, teardown_dir),
        cmocka_unit_test(test_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
