/* qmp-probe.c: drive a real QEMU through the QMP client (vm/qemu/qmp.c) and check each answer.
 *   qmp-probe SOCKET MAJOR DEVICE   (MAJOR: the QEMU major version the greeting must report;
 *                                    DEVICE: the id of the one -drive, a null-co one)
 * Exits 0 when every check passed, 1 at the first that did not (with a FAIL line). */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "vm/qemu/qmp.h"

#define TIMEOUT_MS 10000

static struct bm_qmp *q;
static char err[512];

__attribute__((format(printf, 1, 2), noreturn)) static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("FAIL: qmp-probe: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    bm_qmp_close(q);
    exit(1);
}

/* A command that must succeed with a return value of type want. */
static struct json_object *must(const char *cmd, struct json_object *args, enum json_type want)
{
    struct json_object *ret;
    int r = bm_qmp_exec_type(q, cmd, args, want, &ret, TIMEOUT_MS, err, sizeof err);
    if (r < 0)
        fail("%s: %s (%s)", cmd, err, strerror(-r));
    return ret;
}

static const char *str_field(struct json_object *o, const char *key)
{
    struct json_object *x;
    if (!json_object_object_get_ex(o, key, &x) || !json_object_is_type(x, json_type_string))
        fail("no string \"%s\" in %s", key, json_object_to_json_string(o));
    return json_object_get_string(x);
}

static void expect_status(const char *status)
{
    struct json_object *st = must("query-status", NULL, json_type_object);
    if (strcmp(str_field(st, "status"), status) != 0)
        fail("query-status: status %s, expected %s", str_field(st, "status"), status);
    json_object_put(st);
    printf("ok query-status %s\n", status);
}

static void expect_event(const char *name)
{
    struct json_object *ev;
    int r = bm_qmp_next_event(q, TIMEOUT_MS, &ev, err, sizeof err);
    if (r < 0)
        fail("waiting for %s: %s", name, err);
    if (strcmp(str_field(ev, "event"), name) != 0)
        fail("event %s, expected %s", str_field(ev, "event"), name);
    json_object_put(ev);
    printf("ok event %s\n", name);
}

/* A listening socket passed with getfd (SCM_RIGHTS) serves QEMU's NBD server: a client that
 * connects to its port is greeted with NBD's magic. */
static void pass_listener(void)
{
    if (bm_qmp_exec_fd(q, "getfd", NULL, -1, NULL, TIMEOUT_MS, err, sizeof err) != -EBADF)
        fail("getfd without an fd was not refused");
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 4) < 0 ||
        getsockname(l, (struct sockaddr *)&a, &alen) < 0)
        fail("cannot make a listening socket: %s", strerror(errno));
    struct json_object *args = json_object_new_object();
    json_object_object_add(args, "fdname", json_object_new_string("probe-l"));
    int r = bm_qmp_exec_fd(q, "getfd", args, l, NULL, TIMEOUT_MS, err, sizeof err);
    json_object_put(args);
    if (r < 0)
        fail("getfd: %s", err);
    close(l); /* QEMU has its own copy now */
    args = json_tokener_parse("{\"addr\": {\"type\": \"fd\", \"data\": {\"str\": \"probe-l\"}}}");
    json_object_put(must("nbd-server-start", args, json_type_object));
    json_object_put(args);
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    char magic[8];
    if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof a) < 0 ||
        recv(c, magic, sizeof magic, MSG_WAITALL) != (ssize_t)sizeof magic ||
        memcmp(magic, "NBDMAGIC", 8) != 0)
        fail("no NBD server on the listener passed to QEMU");
    close(c);
    json_object_put(must("nbd-server-stop", NULL, json_type_object));
    printf("ok getfd: QEMU's NBD server on a listener passed to it\n");
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: qmp-probe SOCKET MAJOR DEVICE\n");
        return 2;
    }
    int r = bm_qmp_connect(argv[1], TIMEOUT_MS, &q, err, sizeof err);
    if (r < 0)
        fail("connect: %s", err);
    int ma, mi, mc;
    bm_qmp_version(q, &ma, &mi, &mc);
    if (ma != atoi(argv[2]))
        fail("greeting says QEMU %d.%d.%d, expected major %s", ma, mi, mc, argv[2]);
    printf("ok version %d.%d.%d\n", ma, mi, mc);

    expect_status("running");

    /* QEMU serves one QMP client at a time: a second one gets no greeting (or no place in the
     * backlog), and is told why, quickly. */
    struct bm_qmp *q2 = NULL;
    r = bm_qmp_connect(argv[1], 300, &q2, err, sizeof err);
    if ((r != -ETIMEDOUT && r != -EAGAIN) || q2 || !strstr(err, "one QMP client at a time"))
        fail("a second client gave %d, \"%s\"", r, err);
    printf("ok second client: %s\n", err);
    expect_status("running");

    struct json_object *ret = NULL;
    r = bm_qmp_exec(q, "no-such-command", NULL, &ret, TIMEOUT_MS, err, sizeof err);
    if (r != -EREMOTEIO || ret || strncmp(err, "CommandNotFound: ", 17) != 0)
        fail("an unknown command gave %d, \"%s\"", r, err);
    printf("ok unknown command: %s\n", err);
    /* Wrong arguments are QEMU's error too, and the connection stays in step. */
    struct json_object *args = json_object_new_object();
    json_object_object_add(args, "no-such-argument", json_object_new_int(1));
    r = bm_qmp_exec(q, "query-status", args, &ret, TIMEOUT_MS, err, sizeof err);
    json_object_put(args);
    if (r != -EREMOTEIO || strncmp(err, "GenericError: ", 14) != 0)
        fail("an unknown argument gave %d, \"%s\"", r, err);
    printf("ok unknown argument: %s\n", err);
    /* A return of another type than asked for. */
    r = bm_qmp_exec_type(q, "query-block", NULL, json_type_object, &ret, TIMEOUT_MS, err,
                         sizeof err);
    if (r != -EBADMSG)
        fail("query-block as an object gave %d, \"%s\"", r, err);
    printf("ok wrong type: %s\n", err);

    struct json_object *blocks = must("query-block", NULL, json_type_array), *ins;
    if (json_object_array_length(blocks) != 1)
        fail("query-block: %zu devices, expected 1", json_object_array_length(blocks));
    struct json_object *dev = json_object_array_get_idx(blocks, 0);
    if (strcmp(str_field(dev, "device"), argv[3]) != 0 ||
        !json_object_object_get_ex(dev, "inserted", &ins) ||
        strcmp(str_field(ins, "drv"), "null-co"))
        fail("query-block: not the null-co drive %s: %s", argv[3], json_object_to_json_string(dev));
    printf("ok query-block: %s\n", argv[3]);
    json_object_put(blocks);

    pass_listener();

    json_object_put(must("stop", NULL, json_type_object));
    expect_event("STOP");
    expect_status("paused");
    json_object_put(must("cont", NULL, json_type_object));
    expect_event("RESUME");
    expect_status("running");
    if (bm_qmp_events_queued(q) != 0 || bm_qmp_events_dropped(q) != 0)
        fail("events left over: %zu queued, %llu dropped", bm_qmp_events_queued(q),
             (unsigned long long)bm_qmp_events_dropped(q));

    json_object_put(must("quit", NULL, json_type_object));
    expect_event("SHUTDOWN");
    struct json_object *ev = NULL;
    r = bm_qmp_next_event(q, TIMEOUT_MS, &ev, err, sizeof err);
    if (r != -ECONNRESET || ev)
        fail("after SHUTDOWN: %d (%s), expected the end of the connection", r, err);
    printf("ok end of connection: %s\n", err);
    r = bm_qmp_exec(q, "query-status", NULL, NULL, TIMEOUT_MS, err, sizeof err);
    if (r != -ECONNRESET)
        fail("a command after the end gave %d (%s)", r, err);
    bm_qmp_close(q);
    printf("ok all\n");
    return 0;
}
