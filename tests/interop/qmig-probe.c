/* qmig-probe.c: steer a real QEMU migration through vm/qemu/qmig.c and check each step.
 *   qmig-probe SRC_QMP DST_QMP URI complete|cancel
 * The destination QEMU runs with -incoming defer. Both: prepare (pause-before-switchover,
 * unlimited bandwidth, downtime-limit 1 ms), migrate-incoming, migrate, then wait for
 * pre-switchover with the source guest stopped. complete: migrate-continue, the source
 * completes and the destination runs. cancel: migrate_cancel, the source guest runs again.
 * Prints "ok all" and exits 0 when every check passed; "FAIL: ..." and 1 at the first that
 * did not. */
#include <config.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vm/qemu/qmig.h"

static char err[1024];

__attribute__((format(printf, 1, 2), noreturn)) static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("FAIL: qmig-probe: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static void open_mon(struct qemu_mon *m, const char *path, const char *name)
{
    struct bm_qmp *q;
    if (bm_qmp_connect(path, 10000, &q, err, sizeof err) < 0)
        fail("%s", err);
    if (qemu_mon_init(m, q, name) < 0)
        fail("out of memory");
}

static void ok(int r)
{
    if (r < 0)
        fail("%s", err);
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Poll query-migrate on m until its status is want (or a final other one, or 30 s). */
static void wait_status(struct qemu_mon *m, const char *want, struct qemu_mig_info *mi)
{
    double end = now_s() + 30;
    for (;;) {
        ok(qemu_mig_query(m, mi, err, sizeof err));
        if (strcmp(mi->status, want) == 0)
            return;
        if (qemu_mig_status_final(mi->status) || now_s() > end)
            fail("%s: migration status %s while waiting for %s (%s)", m->name, mi->status, want,
                 mi->error);
        usleep(2000);
    }
}

static const char *run_state(struct qemu_mon *m)
{
    static char st[64];
    struct json_object *ret, *s;
    ok(qemu_mon_exec_type(m, "query-status", NULL, json_type_object, &ret, err, sizeof err));
    if (!json_object_object_get_ex(ret, "status", &s))
        fail("query-status without status");
    snprintf(st, sizeof st, "%s", json_object_get_string(s));
    json_object_put(ret);
    return st;
}

int main(int argc, char **argv)
{
    if (argc != 5 || (strcmp(argv[4], "complete") != 0 && strcmp(argv[4], "cancel") != 0))
        fail("usage: qmig-probe SRC_QMP DST_QMP URI complete|cancel");
    struct qemu_mon src, dst;
    open_mon(&src, argv[1], "source QEMU");
    open_mon(&dst, argv[2], "destination QEMU");
    struct qemu_mig_info mi;
    ok(qemu_mig_query(&src, &mi, err, sizeof err));
    if (strcmp(mi.status, "none") != 0)
        fail("a fresh QEMU's migration status is %s, not none", mi.status);
    ok(qemu_mig_prepare(&src, 0, 1, err, sizeof err));
    ok(qemu_mig_set(&src, 100 << 20, -1, err, sizeof err));
    ok(qemu_mig_set(&src, 0, 300, err, sizeof err)); /* back to unlimited */
    ok(qemu_mig_incoming(&dst, argv[3], err, sizeof err));
    ok(qemu_mig_start(&src, argv[3], err, sizeof err));
    wait_status(&src, "pre-switchover", &mi);
    const char *st = run_state(&src);
    if (strcmp(st, "running") == 0)
        fail("the source guest runs at pre-switchover");
    printf("pre-switchover after %llu ms, %llu bytes of RAM sent, %llu rounds; source %s\n",
           (unsigned long long)mi.total_time_ms, (unsigned long long)mi.ram_transferred,
           (unsigned long long)mi.ram_rounds, st);
    if (mi.ram_transferred == 0 || mi.ram_rounds == 0)
        fail("no RAM figures at pre-switchover");

    if (strcmp(argv[4], "cancel") == 0) {
        ok(qemu_mig_cancel(&src, err, sizeof err));
        wait_status(&src, "cancelled", &mi);
        /* QEMU resumes the guest as the cancel lands. */
        double end = now_s() + 10;
        while (strcmp(st = run_state(&src), "running") != 0 && now_s() < end)
            usleep(10000);
        if (strcmp(st, "running") != 0)
            fail("the source guest is %s after migrate_cancel, not running", st);
        printf("cancelled; source running\n");
    } else {
        double t0 = now_s();
        ok(qemu_mig_continue(&src, err, sizeof err));
        wait_status(&src, "completed", &mi);
        double end = now_s() + 10;
        while (strcmp(st = run_state(&dst), "running") != 0 && now_s() < end)
            usleep(2000);
        if (strcmp(st, "running") != 0)
            fail("the destination guest is %s after the migration, not running", st);
        printf("completed: QEMU's downtime %llu ms; destination running %.1f ms after "
               "migrate-continue; source %s\n",
               (unsigned long long)mi.downtime_ms, (now_s() - t0) * 1e3, run_state(&src));
        ok(qemu_mon_exec(&dst, "quit", NULL, NULL, err, sizeof err));
    }
    ok(qemu_mon_exec(&src, "quit", NULL, NULL, err, sizeof err));
    qemu_mon_destroy(&src);
    qemu_mon_destroy(&dst);
    printf("ok all\n");
    return 0;
}
