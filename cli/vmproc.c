/* vmproc.c: the VM process: a running guest, its control socket, and outgoing migration. */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/vmproc.h"
#include "common/control.h"
#include "common/log.h"
#include "common/parse.h"
#include "migration/migration.h"
#include "vm/kvm/kvm.h"

struct vmproc {
    struct vm *vm;
    struct bm_disk *disks[VM_MAX_DISKS];
    unsigned ndisks;
    struct bm_control *ctl;
    bool json;
    pthread_mutex_t mu; /* protects everything below */
    pthread_cond_t cv;
    bool quit;
    int exit_code;
    struct mig_source *mig;
    bool migrating;
    bool migrated; /* the VM runs on the destination now */
};

struct vmproc *vmproc_current;

static const char *const commands[] = {
    "query-status", "migrate",     "query-migrate",     "migrate-cancel", "stop",
    "cont",         "guest-check", "x-state-roundtrip", "x-query-vcpus", "quit", NULL};

static void emit(struct vmproc *p, const char *event, struct json_object *data)
{
    if (p->json) {
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "event", json_object_new_string(event));
        json_object_object_add(o, "data", data ? json_object_get(data) : NULL);
        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        fflush(stdout);
        json_object_put(o);
    }
    if (p->ctl)
        bm_control_emit(p->ctl, event, data);
    else
        json_object_put(data);
}

void vmproc_guest_event(void *opaque, const char *event, struct json_object *data)
{
    (void)opaque;
    struct vmproc *p = vmproc_current;
    if (p)
        emit(p, event, data);
    else
        json_object_put(data);
}

static void finish(struct vmproc *p, int code)
{
    pthread_mutex_lock(&p->mu);
    p->quit = true;
    p->exit_code = code;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

/* The migration records why it ended (the "error" of its last event); this process says it,
 * once, in its log. */
static void log_mig_end(struct vmproc *p, const char *status, const char *why)
{
    if (strcmp(status, "cancelled") == 0)
        bm_warn("migration cancelled; the VM keeps running here");
    else if (strcmp(status, "failed") == 0)
        bm_error("migration failed: %s; the VM %s", why,
                 vm_dead(p->vm, NULL, 0) ? "stays here, stopped" : "keeps running here");
    else if (strcmp(status, "unknown") == 0)
        bm_error("migration: %s", why);
}

static void mig_event(void *opaque, const char *event, struct json_object *data)
{
    struct vmproc *p = opaque;
    struct json_object *st, *e;
    char status[32] = "", why[512] = "";
    if (strcmp(event, "migration") == 0 && json_object_object_get_ex(data, "status", &st))
        snprintf(status, sizeof status, "%s", json_object_get_string(st));
    if (status[0] && json_object_object_get_ex(data, "error", &e))
        snprintf(why, sizeof why, "%s", json_object_get_string(e));
    if (status[0])
        log_mig_end(p, status, why[0] ? why : "(no reason recorded)");
    emit(p, event, data);
    if (!status[0])
        return;
    if (strcmp(status, "completed") == 0) {
        bm_info("run: the VM now runs on the destination; this process ends");
        pthread_mutex_lock(&p->mu);
        p->migrated = true;
        pthread_mutex_unlock(&p->mu);
        finish(p, 0);
    } else if (strcmp(status, "failed") == 0 || strcmp(status, "cancelled") == 0 ||
               strcmp(status, "unknown") == 0) {
        pthread_mutex_lock(&p->mu);
        p->migrating = false;
        pthread_mutex_unlock(&p->mu);
    }
}

static struct json_object *status_json(struct vmproc *p)
{
    struct json_object *o = json_object_new_object(), *guest = p->vm->ops->query(p->vm), *r;
    bool running = !p->vm->paused;
    /* A VM in a process of its own may be paused or resumed by others (QEMU's own monitors,
     * the guest): its query says. */
    if (p->vm->ops->exit_status && json_object_object_get_ex(guest, "running", &r))
        running = json_object_get_boolean(r);
    json_object_object_add(o, "kind", json_object_new_string(p->vm->ops->kind));
    json_object_object_add(o, "running", json_object_new_boolean(running));
    json_object_object_add(o, "ram", json_object_new_int64((int64_t)vm_ram_size(p->vm)));
    struct json_object *d = json_object_new_array();
    for (unsigned k = 0; k < p->vm->ndisks; k++) {
        struct json_object *e = json_object_new_object();
        json_object_object_add(e, "name", json_object_new_string(p->vm->disks[k].name));
        json_object_object_add(e, "path",
                               json_object_new_string(bm_disk_path(p->vm->disks[k].disk)));
        json_object_object_add(
            e, "size", json_object_new_int64((int64_t)bm_disk_size(p->vm->disks[k].disk)));
        json_object_array_add(d, e);
    }
    json_object_object_add(o, "disks", d);
    json_object_object_add(o, "guest", guest);
    json_object_object_add(o, "migrating", json_object_new_boolean(p->migrating));
    return o;
}

/* A VM that is a process of its own (QEMU) keeps its RAM and state there: the commands that
 * work on them here are refused for it (true, the reply filled). */
static bool external(struct vmproc *p, const char *cmd, const char **cls, char *desc,
                     size_t dlen)
{
    if (!p->vm->ops->exit_status)
        return false;
    *cls = "Failed";
    snprintf(desc, dlen, "%s is not available for a %s VM in this version of blkmig", cmd,
             p->vm->ops->kind);
    return true;
}

static bool get_bool(struct json_object *args, const char *k)
{
    struct json_object *v;
    return args && json_object_object_get_ex(args, k, &v) && json_object_get_boolean(v);
}

static struct json_object *do_migrate(struct vmproc *p, struct json_object *args,
                                      const char **cls, char *desc, size_t dlen)
{
    struct mig_params mp;
    mig_params_default(&mp);
    struct json_object *v;
    *cls = "InvalidArgument";
    if (!args || !json_object_object_get_ex(args, "uri", &v) ||
        mig_parse_uri(json_object_get_string(v), &mp) < 0) {
        snprintf(desc, dlen, "migrate needs \"uri\": \"tcp:HOST:PORT\"");
        return NULL;
    }
    mp.with_disk = get_bool(args, "with_disk");
    mp.verify = get_bool(args, "verify");
    mp.compress = get_bool(args, "compress");
    if (json_object_object_get_ex(args, "downtime_limit_ms", &v)) {
        int64_t x = json_object_get_int64(v);
        if (x < 1 || x > 600000) {
            snprintf(desc, dlen, "downtime_limit_ms must be 1..600000");
            return NULL;
        }
        mp.downtime_limit_ms = (unsigned)x;
    }
    if (json_object_object_get_ex(args, "max_bandwidth", &v)) {
        uint64_t b;
        if (json_object_is_type(v, json_type_int) && json_object_get_int64(v) >= 0)
            b = (uint64_t)json_object_get_int64(v);
        else if (cli_parse_rate(json_object_get_string(v), &b) < 0) {
            snprintf(desc, dlen, "max_bandwidth: a rate such as 100M");
            return NULL;
        }
        mp.max_bandwidth = b;
    }
    if (json_object_object_get_ex(args, "order", &v)) {
        const char *o = json_object_get_string(v); /* NULL for a JSON null */
        if (o && strcmp(o, "joint") == 0)
            mp.order = MIG_ORDER_JOINT;
        else if (o && strcmp(o, "disk-first") == 0)
            mp.order = MIG_ORDER_DISK_FIRST;
        else {
            snprintf(desc, dlen, "order: joint or disk-first");
            return NULL;
        }
    }
    if (json_object_object_get_ex(args, "max_time_s", &v)) {
        int64_t x = json_object_get_int64(v);
        if (x < 1 || x > 86400) {
            snprintf(desc, dlen, "max_time_s must be 1..86400");
            return NULL;
        }
        mp.max_time_s = (unsigned)x;
    }
    if (json_object_object_get_ex(args, "peer_timeout_ms", &v)) {
        int64_t x = json_object_get_int64(v);
        if (x < 100 || x > 600000) {
            snprintf(desc, dlen, "peer_timeout_ms must be 100..600000");
            return NULL;
        }
        mp.peer_timeout_ms = (unsigned)x;
    }
    if (json_object_object_get_ex(args, "connections", &v)) {
        int64_t x = json_object_get_int64(v);
        if (x < 1 || x > 16) {
            snprintf(desc, dlen, "connections must be 1..16");
            return NULL;
        }
        mp.connections = (unsigned)x;
    }
    char why[300];
    if (vm_dead(p->vm, why, sizeof why)) {
        *cls = "Failed";
        snprintf(desc, dlen, "%s: there is nothing to migrate", why);
        return NULL;
    }
    pthread_mutex_lock(&p->mu);
    if (p->migrating || p->vm->paused) {
        pthread_mutex_unlock(&p->mu);
        *cls = "Failed";
        snprintf(desc, dlen, p->migrating ? "a migration is running already"
                                          : "the VM is stopped ('cont' it first)");
        return NULL;
    }
    if (p->mig) {
        mig_source_free(p->mig);
        p->mig = NULL;
    }
    int r = mig_source_start(p->vm, &mp, mig_event, p, &p->mig, desc, dlen);
    if (r == 0)
        p->migrating = true;
    pthread_mutex_unlock(&p->mu);
    if (r < 0) {
        *cls = "Failed";
        return NULL;
    }
    return json_object_new_object();
}

/* x-state-roundtrip (a testing command): save the paused VM's whole state and load it back
 * into the same VM, as a migration's destination would, then let it run on if it ran. The
 * guest must not notice (its checks stay clean); the state's size is returned. If the load
 * fails the VM stays paused. */
static struct json_object *state_roundtrip(struct vmproc *p, const char **cls, char *desc,
                                           size_t dlen)
{
    bool was_running = !p->vm->paused;
    if (was_running)
        vm_pause(p->vm);
    void *buf = NULL;
    size_t len = 0;
    int r = p->vm->ops->save_state(p->vm, &buf, &len);
    bool loading = r == 0;
    if (loading)
        r = p->vm->ops->load_state(p->vm, buf, len);
    free(buf);
    /* A load that failed may have set part of the state: that VM must not run on as if
     * nothing happened. It stays paused (a STOP event says so); a failed save changed nothing. */
    bool loaded_badly = r < 0 && loading;
    if (was_running && !loaded_badly)
        vm_resume(p->vm);
    else if (was_running)
        emit(p, "STOP", NULL);
    if (r < 0) {
        *cls = "Failed";
        snprintf(desc, dlen, "%s the VM's state: %s%s", loading ? "loading" : "saving",
                 strerror(-r),
                 loaded_badly ? " (the VM is left paused: its state may be partly loaded)" : "");
        return NULL;
    }
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "bytes", json_object_new_int64((int64_t)len));
    return o;
}

/* A command's failure, in the reply. */
static struct json_object *failed(const char **cls, char *desc, size_t dlen, const char *cmd,
                                  int r)
{
    *cls = "Failed";
    snprintf(desc, dlen, "%s: %s", cmd, strerror(-r));
    return NULL;
}

static struct json_object *on_control(void *opaque, const char *cmd, struct json_object *args,
                                      const char **cls, char *desc, size_t dlen)
{
    struct vmproc *p = opaque;
    if (strcmp(cmd, "query-status") == 0)
        return status_json(p);
    if (strcmp(cmd, "migrate") == 0)
        return do_migrate(p, args, cls, desc, dlen);
    if (strcmp(cmd, "query-migrate") == 0) {
        pthread_mutex_lock(&p->mu);
        struct json_object *o = p->mig ? mig_source_query(p->mig) : json_object_new_object();
        pthread_mutex_unlock(&p->mu);
        return o;
    }
    if (strcmp(cmd, "migrate-cancel") == 0) {
        pthread_mutex_lock(&p->mu);
        bool ok = p->migrating && p->mig;
        if (ok)
            mig_source_cancel(p->mig);
        pthread_mutex_unlock(&p->mu);
        if (!ok) {
            *cls = "Failed";
            snprintf(desc, dlen, "no migration is running");
            return NULL;
        }
        return json_object_new_object();
    }
    if (strcmp(cmd, "stop") == 0 || strcmp(cmd, "cont") == 0 || strcmp(cmd, "guest-check") == 0 ||
        strcmp(cmd, "x-state-roundtrip") == 0) {
        pthread_mutex_lock(&p->mu);
        bool busy = p->migrating;
        pthread_mutex_unlock(&p->mu);
        if (busy) {
            *cls = "Failed";
            snprintf(desc, dlen, "a migration is running");
            return NULL;
        }
        if ((strcmp(cmd, "guest-check") == 0 || strcmp(cmd, "x-state-roundtrip") == 0) &&
            external(p, cmd, cls, desc, dlen))
            return NULL;
        if (strcmp(cmd, "x-state-roundtrip") == 0)
            return state_roundtrip(p, cls, desc, dlen);
        bool stop = strcmp(cmd, "stop") == 0, cont = strcmp(cmd, "cont") == 0;
        /* Others may have paused or resumed a VM in a process of its own: always ask it. */
        bool ext = p->vm->ops->exit_status != NULL;
        if (stop && (!p->vm->paused || ext)) {
            int r = vm_pause(p->vm);
            if (r < 0)
                return failed(cls, desc, dlen, "stop", r);
            emit(p, "STOP", NULL);
        } else if (cont && (p->vm->paused || ext)) {
            /* After an unknown outcome the finished mirrors still hold the disks' writers:
             * the operator decided this copy runs, so drop that migration for good. */
            pthread_mutex_lock(&p->mu);
            if (p->mig && mig_source_status(p->mig) == MIG_UNKNOWN) {
                mig_source_free(p->mig);
                p->mig = NULL;
                p->vm->ops->throttle(p->vm, 0);
            }
            pthread_mutex_unlock(&p->mu);
            int r = vm_resume(p->vm);
            if (r < 0)
                return failed(cls, desc, dlen, "cont", r);
            emit(p, "RESUME", NULL);
        } else if (!stop && !cont) {
            /* A full sweep needs the guest still: pause around it if it runs. */
            bool was_running = !p->vm->paused;
            if (was_running)
                vm_pause(p->vm);
            int64_t bad = p->vm->ops->check(p->vm);
            if (was_running)
                vm_resume(p->vm);
            struct json_object *o = json_object_new_object();
            json_object_object_add(o, "mismatches", json_object_new_int64(bad));
            return o;
        }
        return json_object_new_object();
    }
    if (strcmp(cmd, "x-query-vcpus") == 0) {
        /* Debugging: no pause, so it is allowed during a migration too. */
        if (!p->vm->ops->x_vcpus) {
            *cls = "Failed";
            snprintf(desc, dlen, "a %s VM has no vCPUs to show", p->vm->ops->kind);
            return NULL;
        }
        return p->vm->ops->x_vcpus(p->vm);
    }
    if (strcmp(cmd, "quit") == 0) {
        finish(p, 0);
        return json_object_new_object();
    }
    *cls = "CommandNotFound";
    snprintf(desc, dlen, "unknown command %s", cmd);
    return NULL;
}

/* A VM that is a process of its own (QEMU) has ended: so does this one, with its status. */
static bool vm_exited(struct vmproc *p)
{
    int st = p->vm->ops->exit_status ? p->vm->ops->exit_status(p->vm) : -1;
    if (st < 0)
        return false;
    char why[300] = "";
    vm_dead(p->vm, why, sizeof why);
    bm_warn("%s; this process ends", why);
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "status", json_object_new_int(st));
    json_object_object_add(o, "reason", json_object_new_string(why));
    emit(p, "vm-exited", o);
    pthread_mutex_lock(&p->mu);
    p->exit_code = st;
    pthread_mutex_unlock(&p->mu);
    return true;
}

int vmproc_serve(struct vm *vm, struct bm_disk **disks, unsigned ndisks, const char *control,
                 int claim, bool json)
{
    struct vmproc *p = calloc(1, sizeof *p);
    if (!p) {
        bm_control_release(control, claim);
        return 1;
    }
    p->vm = vm;
    p->ndisks = ndisks;
    for (unsigned k = 0; k < ndisks; k++)
        p->disks[k] = disks[k];
    p->json = json;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    /* Signals go to this thread only (sigtimedwait below). */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    char err[512];
    p->ctl =
        bm_control_start_claimed(claim, control, "vm", commands, on_control, p, err, sizeof err);
    if (!p->ctl) {
        bm_error("cannot serve the control socket: %s", err);
        vm_destroy(vm);
        for (unsigned k = 0; k < ndisks; k++)
            bm_disk_close(disks[k]);
        free(p);
        return 1;
    }
    vmproc_current = p;
    emit(p, "vm-running", status_json(p));
    bm_info("VM running; control socket %s", control);
    for (;;) {
        struct timespec t = {0, 100000000};
        int sig = sigtimedwait(&set, NULL, &t);
        pthread_mutex_lock(&p->mu);
        if (sig == SIGINT || sig == SIGTERM) {
            if (p->migrating && p->mig) {
                bm_warn("signal %d: cancelling the migration first", sig);
                mig_source_cancel(p->mig);
            } else {
                p->quit = true;
                p->exit_code = 0;
            }
        }
        bool q = p->quit;
        pthread_mutex_unlock(&p->mu);
        if (q || vm_exited(p))
            break;
    }
    /* Let clients read the last events before the socket goes. */
    struct timespec linger = {0, 300000000};
    nanosleep(&linger, NULL);
    /* For the test suite only: a source that takes its time to end after the VM left, as a
     * KVM VM's teardown may (blkmig demo must wait for it, not check once). */
    const char *fault = getenv("BLKMIG_TEST_FAULT");
    if (p->migrated && fault && strcmp(fault, "source-slow-exit") == 0) {
        struct timespec slow = {5, 0};
        nanosleep(&slow, NULL);
    }
    if (p->mig) {
        mig_source_cancel(p->mig);
        mig_source_free(p->mig);
    }
    vmproc_current = NULL;
    bm_control_stop(p->ctl);
    vm_destroy(vm);
    for (unsigned k = 0; k < ndisks; k++)
        bm_disk_close(disks[k]);
    int code = p->exit_code;
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p);
    return code;
}

struct vm *vmproc_factory(void *opaque, struct json_object *desc, const struct vm_disk *disks,
                          unsigned ndisks, char *err, size_t errlen)
{
    (void)opaque;
    struct json_object *k, *ram, *w;
    /* From the network: "kind" may be missing, null or not a string. */
    const char *kind = json_object_object_get_ex(desc, "kind", &k) ? json_object_get_string(k)
                                                                   : NULL;
    if (kind && strcmp(kind, "kvm") == 0) {
        struct json_object *sm;
        struct kvm_config kc = {0};
        if (!json_object_object_get_ex(desc, "ram", &ram) ||
            !json_object_is_type(ram, json_type_int)) {
            snprintf(err, errlen, "bad VM description");
            return NULL;
        }
        kc.ram = (uint64_t)json_object_get_int64(ram);
        if (json_object_object_get_ex(desc, "status_ms", &sm))
            kc.status_ms = (unsigned)json_object_get_int(sm);
        kc.console = getenv("BLKMIG_CONSOLE");
        if (kvm_probe(err, errlen) < 0)
            return NULL;
        /* The source's CPUID: the guest keeps the CPU it was shown (a source without one in
         * its description gets this host's). */
        struct json_object *cj;
        struct kvm_cpuid2 *cpuid = NULL;
        if (json_object_object_get_ex(desc, "cpuid", &cj) &&
            !(cpuid = kvm_cpuid_from_json(cj, err, errlen)))
            return NULL;
        kc.cpuid = cpuid;
        struct vm *vm;
        int r = kvm_create(&kc, disks, ndisks, false, vmproc_guest_event, NULL, &vm, err, errlen);
        free(cpuid);
        return r < 0 ? NULL : vm;
    }
    if (!kind || strcmp(kind, "synth") != 0) {
        snprintf(err, errlen, "this destination runs synthetic or KVM guests only (the source "
                              "sent another kind)");
        return NULL;
    }
    struct synth_workload wl;
    if (!json_object_object_get_ex(desc, "ram", &ram) ||
        !json_object_is_type(ram, json_type_int) ||
        !json_object_object_get_ex(desc, "workload", &w) ||
        synth_workload_from_json(w, &wl, err, errlen) < 0) {
        if (!err[0])
            snprintf(err, errlen, "bad VM description");
        return NULL;
    }
    struct vm *vm;
    if (synth_create((uint64_t)json_object_get_int64(ram), disks, ndisks, &wl, false,
                     vmproc_guest_event, NULL, &vm, err, errlen) < 0)
        return NULL;
    return vm;
}
