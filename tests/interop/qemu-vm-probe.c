/* qemu-vm-probe.c: the qemu VM's C API (vm/qemu/qemu.h) against a real QEMU, as the migration
 * will use it: launch, describe (the user's argv and the disks), the parsed command line, the
 * monitor, pause and resume with QEMU's events through the hook, and destroy ending QEMU.
 *   qemu-vm-probe RUNDIR QEMU-ARGS...   (QEMU-ARGS: a line with exactly one disk, drive id d0)
 * Exits 0 when every check passed, 1 at the first that did not (with a FAIL line). */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vm/qemu/cmdline.h"
#include "vm/qemu/qemu.h"

__attribute__((format(printf, 1, 2), noreturn)) static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("FAIL: qemu-vm-probe: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

/* The events the hook saw, as "STOP RESUME ...". */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char seen[512];

static void on_event(void *opaque, struct json_object *ev)
{
    struct json_object *name;
    (void)opaque;
    pthread_mutex_lock(&mu);
    if (json_object_object_get_ex(ev, "event", &name) &&
        strlen(seen) + strlen(json_object_get_string(name)) + 2 < sizeof seen)
        strcat(strcat(seen, json_object_get_string(name)), " ");
    pthread_mutex_unlock(&mu);
}

/* Wait up to 5 s for want in the events seen. */
static void await_events(const char *want)
{
    for (int i = 0; i < 100; i++) {
        pthread_mutex_lock(&mu);
        bool ok = strstr(seen, want) != NULL;
        pthread_mutex_unlock(&mu);
        if (ok)
            return;
        nanosleep(&(struct timespec){0, 50000000}, NULL);
    }
    fail("events: want '%s', saw '%s'", want, seen);
}

static void check_describe(struct vm *vm, int argc, char **argv)
{
    struct json_object *d = vm->ops->describe(vm), *a, *disks, *kind;
    if (!json_object_object_get_ex(d, "kind", &kind) ||
        strcmp(json_object_get_string(kind), "qemu") != 0)
        fail("describe: kind");
    if (!json_object_object_get_ex(d, "argv", &a) || (int)json_object_array_length(a) != argc)
        fail("describe: argv is not the user's %d arguments", argc);
    for (int i = 0; i < argc; i++)
        if (strcmp(json_object_get_string(json_object_array_get_idx(a, (size_t)i)), argv[i]))
            fail("describe: argv[%d] is %s, not %s", i,
                 json_object_get_string(json_object_array_get_idx(a, (size_t)i)), argv[i]);
    if (!json_object_object_get_ex(d, "disks", &disks) || json_object_array_length(disks) != 1)
        fail("describe: not one disk");
    json_object_put(d);
}

int main(int argc, char **argv)
{
    if (argc < 3)
        fail("usage: qemu-vm-probe RUNDIR QEMU-ARGS...");
    char err[2600];
    struct qemu_vm *v;
    int r = qemu_vm_launch(argc - 2, (const char *const *)argv + 2, argv[1], 30000, &v, err,
                           sizeof err);
    if (r < 0)
        fail("launch: %s", err);
    struct vm *vm = qemu_vm_base(v);
    qemu_vm_on_event(v, on_event, NULL);
    if (!qemu_vm_launched(v) || qemu_vm_pid(v) <= 0 || kill(qemu_vm_pid(v), 0) < 0)
        fail("launched, pid");
    check_describe(vm, argc - 2, argv + 2);
    const struct qemu_cmdline *cl = qemu_vm_cmdline(v);
    if (!cl || cl->ndisks != 1 || strcmp(cl->disks[0].name, "d0") != 0)
        fail("the parsed command line has not the one disk d0");
    unsigned n;
    const struct qemu_disk_info *d = qemu_vm_disks(v, &n);
    if (n != 1 || strcmp(d[0].drive, "d0") != 0)
        fail("qemu_vm_disks: not the one disk d0");
    struct json_object *ret;
    if (qemu_mon_exec_type(qemu_vm_mon(v), "query-version", NULL, json_type_object, &ret, err,
                           sizeof err) < 0)
        fail("the monitor: %s", err);
    json_object_put(ret);
    if (vm_pause(vm) < 0 || !vm->paused)
        fail("pause");
    if (vm_resume(vm) < 0 || vm->paused)
        fail("resume");
    await_events("STOP RESUME");
    void *buf;
    size_t len;
    if (vm->ops->save_state(vm, &buf, &len) != -ENOTSUP || vm->ops->check(vm) != -ENOTSUP ||
        vm->ops->dirty_log_start(vm) != -ENOTSUP || vm->nregions || vm->ndisks)
        fail("the RAM side must be -ENOTSUP, with no regions nor bm_disks");
    char why[256];
    if (vm_dead(vm, why, sizeof why))
        fail("dead while running: %s", why);
    pid_t pid = qemu_vm_pid(v);
    vm_destroy(vm);
    if (kill(pid, 0) == 0 || errno != ESRCH)
        fail("QEMU (pid %d) still there after destroy", (int)pid);
    puts("ok all");
    return 0;
}
