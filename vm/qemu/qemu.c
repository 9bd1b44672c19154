/* qemu.c: the vm_ops of a QEMU VM (QMP stop/cont/query), its watcher thread and its end. */
#include <config.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/log.h"
#include "vm/qemu/qemu-internal.h"

/* The bounds of ending a launched QEMU: quit, then SIGTERM, then SIGKILL. */
#define QUIT_WAIT_MS 5000
#define TERM_WAIT_MS 3000
/* How often the watcher looks at QEMU (events, the process). */
#define WATCH_MS 100

static struct qemu_vm *of(struct vm *vm)
{
    return (struct qemu_vm *)vm;
}

static void set_dead(struct qemu_vm *v, const char *why)
{
    pthread_mutex_lock(&v->mu);
    if (!v->dead) {
        v->dead = true;
        snprintf(v->why, sizeof v->why, "%s", why);
    }
    pthread_mutex_unlock(&v->mu);
}

/* ---- the ops ---- */

static int no_ram(struct vm *vm)
{
    (void)vm;
    return -ENOTSUP;
}

static int no_sync(struct vm *vm, struct bm_bitmap *out)
{
    (void)vm;
    (void)out;
    return -ENOTSUP;
}

static void no_stop(struct vm *vm)
{
    (void)vm;
}

static void no_throttle(struct vm *vm, unsigned pct)
{
    (void)vm;
    (void)pct;
}

static int no_save(struct vm *vm, void **buf, size_t *len)
{
    (void)vm;
    *buf = NULL;
    *len = 0;
    return -ENOTSUP;
}

static int no_load(struct vm *vm, const void *buf, size_t len)
{
    (void)vm;
    (void)buf;
    (void)len;
    return -ENOTSUP;
}

static int64_t no_check(struct vm *vm)
{
    (void)vm;
    return -ENOTSUP;
}

/* query-status' "status" ("running", "paused"...) into st; 0 or -errno (logged). */
static int run_state(struct qemu_vm *v, char *st, size_t len)
{
    char err[512];
    struct json_object *ret, *s;
    int r =
        qemu_mon_exec_type(&v->mon, "query-status", NULL, json_type_object, &ret, err, sizeof err);
    if (r < 0) {
        bm_error("%s", err);
        return r;
    }
    snprintf(st, len, "%s",
             json_object_object_get_ex(ret, "status", &s) &&
                     json_object_is_type(s, json_type_string)
                 ? json_object_get_string(s)
                 : "unknown");
    json_object_put(ret);
    return 0;
}

/* stop is synchronous in QEMU (vCPUs stopped, block I/O drained when it returns); the state
 * is read back all the same, so that pause means stopped whatever QEMU's version does. */
static int qemu_pause(struct vm *vm)
{
    struct qemu_vm *v = of(vm);
    char err[512], st[64];
    int r = qemu_mon_exec(&v->mon, "stop", NULL, NULL, err, sizeof err);
    if (r < 0) {
        bm_error("%s", err);
        return r;
    }
    if ((r = run_state(v, st, sizeof st)) < 0)
        return r;
    if (strcmp(st, "running") == 0) {
        bm_error("%s: still running after stop", v->mon.name);
        return -EAGAIN;
    }
    vm->paused = true;
    return 0;
}

static int qemu_resume(struct vm *vm)
{
    struct qemu_vm *v = of(vm);
    char err[512];
    int r = qemu_mon_exec(&v->mon, "cont", NULL, NULL, err, sizeof err);
    if (r < 0) {
        bm_error("%s", err);
        return r;
    }
    vm->paused = false;
    return 0;
}

static struct json_object *qemu_describe(struct vm *vm)
{
    struct qemu_vm *v = of(vm);
    struct json_object *o = json_object_new_object(), *a = json_object_new_array();
    for (int i = 0; a && i < v->argc; i++)
        json_object_array_add(a, json_object_new_string(v->argv[i]));
    json_object_object_add(o, "kind", json_object_new_string("qemu"));
    json_object_object_add(o, "argv", a);
    json_object_object_add(o, "disks", qemu_disks_json(v->disks, v->ndisks));
    return o;
}

static bool qemu_dead(struct vm *vm, char *why, size_t len)
{
    struct qemu_vm *v = of(vm);
    pthread_mutex_lock(&v->mu);
    bool dead = v->dead;
    if (dead && why && len)
        snprintf(why, len, "%s", v->why);
    pthread_mutex_unlock(&v->mu);
    return dead;
}

static int qemu_exit_status(struct vm *vm)
{
    struct qemu_vm *v = of(vm);
    pthread_mutex_lock(&v->mu);
    int st = v->gone ? v->status : -1;
    pthread_mutex_unlock(&v->mu);
    return st;
}

static struct json_object *qemu_query(struct vm *vm)
{
    struct qemu_vm *v = of(vm);
    char ver[48], st[64] = "gone", why[256];
    snprintf(ver, sizeof ver, "%d.%d.%d", v->major, v->minor, v->micro);
    bool dead = qemu_dead(vm, why, sizeof why);
    if (qemu_exit_status(vm) < 0 && run_state(v, st, sizeof st) < 0)
        snprintf(st, sizeof st, "unknown");
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "mode", json_object_new_string(v->launched ? "launch" : "attach"));
    json_object_object_add(o, "pid", json_object_new_int64(v->pid));
    json_object_object_add(o, "qemu", json_object_new_string(ver));
    json_object_object_add(o, "qmp", json_object_new_string(v->qmp_path));
    json_object_object_add(o, "status", json_object_new_string(st));
    json_object_object_add(o, "running", json_object_new_boolean(strcmp(st, "running") == 0));
    json_object_object_add(o, "disks", qemu_disks_json(v->disks, v->ndisks));
    if (dead)
        json_object_object_add(o, "dead", json_object_new_string(why));
    return o;
}

static void stop_watcher(struct qemu_vm *v)
{
    if (!v->watching)
        return;
    atomic_store(&v->stop, true);
    pthread_join(v->watcher, NULL);
    v->watching = false;
}

/* quit over QMP, then SIGTERM, then SIGKILL, each with its bound; always reaps. */
static void end_child(struct qemu_vm *v)
{
    if (qemu_vm_wait_child(v, 0))
        return;
    char err[512];
    if (v->mon_ok) {
        v->mon.timeout_ms = 2000;
        if (qemu_mon_exec(&v->mon, "quit", NULL, NULL, err, sizeof err) < 0)
            bm_warn("%s", err);
        if (qemu_vm_wait_child(v, QUIT_WAIT_MS))
            return;
        bm_warn("QEMU (pid %d) did not quit within %d ms: SIGTERM", (int)v->pid, QUIT_WAIT_MS);
    }
    kill(v->pid, SIGTERM);
    if (qemu_vm_wait_child(v, TERM_WAIT_MS))
        return;
    bm_warn("QEMU (pid %d) did not end within %d ms of SIGTERM: SIGKILL", (int)v->pid,
            TERM_WAIT_MS);
    kill(v->pid, SIGKILL);
    qemu_vm_wait_child(v, -1);
}

static void qemu_destroy(struct vm *vm)
{
    struct qemu_vm *v = of(vm);
    stop_watcher(v);
    if (v->launched) {
        end_child(v);
        qemu_vm_drain_stderr(v, true); /* what is left (a helper may hold the pipe open) */
    } else {
        bm_info("%s: left running, disconnected", v->mon.name);
    }
    qemu_vm_free(v);
}

const struct vm_ops qemu_vm_ops = {
    .kind = "qemu",
    .dirty_log_start = no_ram,
    .dirty_log_sync = no_sync,
    .dirty_log_stop = no_stop,
    .pause = qemu_pause,
    .resume = qemu_resume,
    .throttle = no_throttle,
    .save_state = no_save,
    .load_state = no_load,
    .describe = qemu_describe,
    .query = qemu_query,
    .check = no_check,
    .dead = qemu_dead,
    .exit_status = qemu_exit_status,
    .destroy = qemu_destroy,
};

/* ---- the watcher: QEMU's events, its stderr, its end ---- */

static void on_event(struct qemu_vm *v, struct json_object *ev)
{
    struct json_object *name, *data, *reason;
    const char *n =
        json_object_object_get_ex(ev, "event", &name) ? json_object_get_string(name) : "";
    if (strcmp(n, "SHUTDOWN") != 0) {
        bm_debug("%s: event %s", v->mon.name, n);
        return;
    }
    char why[200];
    const char *r = json_object_object_get_ex(ev, "data", &data) &&
                            json_object_object_get_ex(data, "reason", &reason)
                        ? json_object_get_string(reason)
                        : "no reason given";
    snprintf(why, sizeof why, "%s shut down (%s)", v->mon.name, r);
    bm_info("%s", why);
    pthread_mutex_lock(&v->mu);
    v->shutdown_seen = true;
    snprintf(v->shutdown_reason, sizeof v->shutdown_reason, "%s", r);
    pthread_mutex_unlock(&v->mu);
    set_dead(v, why);
}

/* Take the events that came; false once the connection has ended. */
static bool take_events(struct qemu_vm *v)
{
    for (;;) {
        struct json_object *ev;
        char err[512];
        int r = qemu_mon_next_event(&v->mon, 0, &ev, err, sizeof err);
        if (r == -ETIMEDOUT)
            return true;
        if (r < 0) {
            bm_info("%s: QMP: %s", v->mon.name, err);
            return false;
        }
        on_event(v, ev);
        pthread_mutex_lock(&v->mu);
        qemu_vm_event_fn fn = v->event_fn;
        void *opaque = v->event_opaque;
        pthread_mutex_unlock(&v->mu);
        if (fn)
            fn(opaque, ev);
        json_object_put(ev);
    }
}

/* An attached QEMU's end: the connection is gone (with it, as far as blkmig can tell, the
 * process); 0 when QEMU shut down, 1 when it went without a word. */
static void attached_gone(struct qemu_vm *v)
{
    pthread_mutex_lock(&v->mu);
    v->gone = true;
    v->status = v->shutdown_seen ? 0 : 1;
    v->dead = true;
    if (v->shutdown_seen)
        snprintf(v->why, sizeof v->why, "%s shut down (%s) and left", v->mon.name,
                 v->shutdown_reason);
    else
        snprintf(v->why, sizeof v->why, "%s: the QMP connection ended without a shutdown",
                 v->mon.name);
    pthread_mutex_unlock(&v->mu);
}

static void *watch(void *arg)
{
    struct qemu_vm *v = arg;
    bool connected = true, out = v->errfd >= 0;
    while (!atomic_load(&v->stop)) {
        struct pollfd pf = {.fd = out ? v->errfd : -1, .events = POLLIN};
        poll(&pf, 1, WATCH_MS);
        if (out && pf.revents)
            out = qemu_vm_drain_stderr(v, true);
        if (connected && !(connected = take_events(v)) && !v->launched)
            attached_gone(v);
        if (v->launched && qemu_vm_wait_child(v, 0))
            break;
    }
    return NULL;
}

int qemu_vm_start_watcher(struct qemu_vm *v, char *err, size_t errlen)
{
    /* The watcher takes no signal: the VM process waits for them in its main thread. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int r = pthread_create(&v->watcher, NULL, watch, v);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r != 0) {
        snprintf(err, errlen, "cannot start a thread: %s", strerror(r));
        return -r;
    }
    v->watching = true;
    return 0;
}

/* ---- accessors ---- */

void qemu_vm_on_event(struct qemu_vm *v, qemu_vm_event_fn fn, void *opaque)
{
    pthread_mutex_lock(&v->mu);
    v->event_fn = fn;
    v->event_opaque = opaque;
    pthread_mutex_unlock(&v->mu);
}

const struct qemu_disk_info *qemu_vm_disks(struct qemu_vm *v, unsigned *n)
{
    *n = v->ndisks;
    return v->disks;
}

struct qemu_mon *qemu_vm_mon(struct qemu_vm *v)
{
    return &v->mon;
}

const struct qemu_cmdline *qemu_vm_cmdline(const struct qemu_vm *v)
{
    return v->cl;
}

pid_t qemu_vm_pid(const struct qemu_vm *v)
{
    return v->pid;
}

const char *const *qemu_vm_argv(const struct qemu_vm *v, int *argc)
{
    *argc = v->argc;
    return (const char *const *)v->argv;
}

void qemu_vm_version(const struct qemu_vm *v, int *major, int *minor, int *micro)
{
    *major = v->major;
    *minor = v->minor;
    *micro = v->micro;
}

bool qemu_vm_launched(const struct qemu_vm *v)
{
    return v->launched;
}
