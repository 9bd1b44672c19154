/* vcpu.c: the KVM micro-VM's vCPU threads and their run control: the KVM_RUN loop and its
 * exits, pause (kick every vCPU out of KVM_RUN, wait until all are parked, then take the
 * kvmclock/TSC snapshot the state saves: state.c kvm_clock_snapshot), resume, and
 * the throttle (a vCPU sleeps its share of every 10 ms slice; a ticker kicks a guest that never
 * exits by itself). Design: docs/vmm.md. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>

#include "common/log.h"
#include "vm/kvm/kvm-internal.h"

/* The signal that kicks a vCPU out of KVM_RUN (its handler does nothing). */
#define SIG_KICK          (SIGRTMIN + 3)
#define THROTTLE_SLICE_NS 10000000ull

static void kick_handler(int sig)
{
    (void)sig;
}

/* x-query-vcpus: what the vCPU is doing (its registers, pending events, the code at RIP).
 * Called by the vCPU's own thread outside KVM_RUN, or for a vCPU that has no thread yet. */
static void take_dump(struct kvm_vmm *k, struct kvm_vcpu *c, struct kvm_vcpu_dump *d)
{
    memset(d, 0, sizeof *d);
    if (ioctl(c->fd, KVM_GET_REGS, &d->regs) < 0 || ioctl(c->fd, KVM_GET_SREGS, &d->sregs) < 0 ||
        ioctl(c->fd, KVM_GET_VCPU_EVENTS, &d->ev) < 0) {
        d->err = -errno;
        return;
    }
    struct kvm_translation t = {.linear_address = d->regs.rip};
    if (ioctl(c->fd, KVM_TRANSLATE, &t) == 0 && t.valid) {
        d->rip_gpa = t.physical_address;
        const uint8_t *p = kvm_gpa(k, t.physical_address, sizeof d->code);
        if (p) {
            memcpy(d->code, p, sizeof d->code);
            d->code_ok = true;
        }
    }
}

/* Answers a pending dump request (mu held). */
static void serve_dump(struct kvm_vmm *k, struct kvm_vcpu *c)
{
    take_dump(k, c, &c->dump);
    c->dump_done = true;
    atomic_store(&c->dump_req, false);
    pthread_cond_broadcast(&k->cv);
}

static void park(struct kvm_vmm *k, struct kvm_vcpu *c)
{
    k->parked++;
    pthread_cond_broadcast(&k->cv);
    while ((k->want_pause || k->halted) && !k->quit) {
        if (atomic_load(&c->dump_req))
            serve_dump(k, c);
        pthread_cond_wait(&k->cv, &k->mu);
    }
    k->parked--;
}

static void count_exit(struct kvm_vcpu *c, uint64_t *which)
{
    __atomic_store_n(&c->exits, c->exits + 1, __ATOMIC_RELAXED);
    if (which)
        __atomic_store_n(which, *which + 1, __ATOMIC_RELAXED);
    __atomic_store_n(&c->last_exit, c->run->exit_reason, __ATOMIC_RELAXED);
}

static void vcpu_fatal(struct kvm_vmm *k, const char *what)
{
    bm_error("kvm: the guest stopped: %s", what);
    pthread_mutex_lock(&k->mu);
    k->halted = true;
    snprintf(k->halt_reason, sizeof k->halt_reason, "%s", what);
    if (!k->first_error[0])
        snprintf(k->first_error, sizeof k->first_error, "vCPU: %s", what);
    pthread_mutex_unlock(&k->mu);
    struct json_object *d = json_object_new_object();
    json_object_object_add(d, "error", json_object_new_string(what));
    kvm_event(k, "guest-error", d);
}

static void *vcpu_main(void *arg)
{
    struct kvm_vmm *k = arg;
    struct kvm_vcpu *c = &k->vcpus[0];
    pthread_setname_np(pthread_self(), "vcpu0"); /* as ps -L, top -H and /proc show it */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    sigemptyset(&set);
    sigaddset(&set, SIG_KICK);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    uint64_t slice_start = kvm_now_ns();
    bool io_pending = false;
    for (;;) {
        if (io_pending && (k->want_pause || k->quit || atomic_load(&c->dump_req))) {
            /* KVM finishes an I/O or MMIO instruction (e.g. stores a read's value) only on the
             * next KVM_RUN: enter once with immediate_exit so that the saved state is whole. */
            c->run->immediate_exit = 1;
            if (ioctl(c->fd, KVM_RUN, 0) < 0 && errno != EINTR)
                bm_warn("kvm: completing an I/O exit: %s", strerror(errno));
            io_pending = false;
        }
        pthread_mutex_lock(&k->mu);
        if (atomic_load(&c->dump_req))
            serve_dump(k, c);
        if (k->want_pause || k->halted)
            park(k, c);
        bool quit = k->quit;
        pthread_mutex_unlock(&k->mu);
        if (quit)
            break;
        unsigned thr = atomic_load(&k->throttle);
        if (thr) {
            uint64_t now = kvm_now_ns();
            if (now - slice_start >= THROTTLE_SLICE_NS * (100 - thr) / 100) {
                struct timespec ts = {0, (long)(THROTTLE_SLICE_NS * thr / 100)};
                nanosleep(&ts, NULL);
                slice_start = kvm_now_ns();
            }
        }
        c->run->immediate_exit = 0;
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (k->want_pause || k->quit || atomic_load(&c->dump_req))
            continue;
        int r = ioctl(c->fd, KVM_RUN, 0);
        io_pending = false;
        if (r < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            char msg[96];
            snprintf(msg, sizeof msg, "KVM_RUN: %s", strerror(errno));
            vcpu_fatal(k, msg);
            continue;
        }
        uint32_t why = c->run->exit_reason;
        count_exit(c, why == KVM_EXIT_MMIO ? &c->exits_mmio
                      : why == KVM_EXIT_IO ? &c->exits_io
                      : why == KVM_EXIT_INTR ? &c->exits_intr
                                             : NULL);
        switch (why) {
        case KVM_EXIT_IO:
            kvm_handle_io(k, c->run);
            io_pending = true;
            break;
        case KVM_EXIT_MMIO:
            kvm_handle_mmio(k, c->run);
            io_pending = true;
            break;
        case KVM_EXIT_INTR:
            break;
        case KVM_EXIT_HLT:
            vcpu_fatal(k, "the guest halted");
            break;
        case KVM_EXIT_SHUTDOWN:
            vcpu_fatal(k, "triple fault (shutdown)");
            break;
        case KVM_EXIT_FAIL_ENTRY: {
            char msg[96];
            snprintf(msg, sizeof msg, "entry failed (hardware reason 0x%llx)",
                     (unsigned long long)c->run->fail_entry.hardware_entry_failure_reason);
            vcpu_fatal(k, msg);
            break;
        }
        case KVM_EXIT_INTERNAL_ERROR: {
            char msg[96];
            snprintf(msg, sizeof msg, "KVM internal error %u", c->run->internal.suberror);
            vcpu_fatal(k, msg);
            break;
        }
        default: {
            char msg[64];
            snprintf(msg, sizeof msg, "unexpected exit %u", c->run->exit_reason);
            vcpu_fatal(k, msg);
            break;
        }
        }
    }
    return NULL;
}

/* Throttle ticker: kicks the vCPUs every slice so that the run loop can sleep its share even
 * when the guest never exits by itself (a polling guest in ring 3). Unthrottled it sleeps until
 * kvm_throttle or the end wakes it: no wakeups at all while nothing is throttled. */
static void *ticker_main(void *arg)
{
    struct kvm_vmm *k = arg;
    pthread_setname_np(pthread_self(), "vcpu-ticker");
    for (;;) {
        pthread_mutex_lock(&k->mu);
        while (!k->quit && !atomic_load(&k->throttle))
            pthread_cond_wait(&k->cv, &k->mu);
        bool quit = k->quit;
        pthread_mutex_unlock(&k->mu);
        if (quit)
            break;
        struct timespec ts = {0, (long)THROTTLE_SLICE_NS};
        nanosleep(&ts, NULL);
        if (atomic_load(&k->throttle))
            for (unsigned i = 0; i < k->nvcpus; i++)
                if (k->vcpus[i].started)
                    pthread_kill(k->vcpus[i].thread, SIG_KICK);
    }
    return NULL;
}

static void kick(struct kvm_vcpu *c)
{
    if (!c->run)
        return;
    c->run->immediate_exit = 1;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (c->started)
        pthread_kill(c->thread, SIG_KICK);
}

void kvm_kick_all(struct kvm_vmm *k)
{
    for (unsigned i = 0; i < k->nvcpus; i++)
        kick(&k->vcpus[i]);
}

/* Waits on k->cv (mu held) for at most 1 ms: the caller re-checks, and re-kicks. */
static void wait_1ms(struct kvm_vmm *k)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&k->cv, &k->mu, &ts);
}

static unsigned running_vcpus(struct kvm_vmm *k)
{
    unsigned n = 0;
    for (unsigned i = 0; i < k->nvcpus; i++)
        n += k->vcpus[i].started;
    return n;
}

int kvm_pause(struct vm *vm)
{
    struct kvm_vmm *k = K(vm);
    pthread_mutex_lock(&k->mu);
    k->want_pause = true;
    pthread_mutex_unlock(&k->mu);
    kvm_kick_all(k);
    pthread_mutex_lock(&k->mu);
    while (k->parked < running_vcpus(k)) {
        wait_1ms(k);
        if (k->parked < running_vcpus(k)) {
            pthread_mutex_unlock(&k->mu);
            kvm_kick_all(k); /* a kick that landed before KVM_RUN is re-sent */
            pthread_mutex_lock(&k->mu);
        }
    }
    pthread_mutex_unlock(&k->mu);
    kvm_io_pause(k); /* device I/O drained: what the vCPUs queued is served */
    vm->paused = true;
    kvm_clock_snapshot(k); /* failing, the save tries again (and reports) */
    return 0;
}

static int start_vcpus(struct kvm_vmm *k)
{
    for (unsigned i = 0; i < k->nvcpus; i++) {
        if (k->vcpus[i].started)
            continue;
        int r = pthread_create(&k->vcpus[i].thread, NULL, vcpu_main, k);
        if (r) {
            bm_error("kvm: cannot start a vCPU thread: %s", strerror(r));
            return -r;
        }
        k->vcpus[i].started = true;
    }
    if (!k->ticker_started) {
        int r = pthread_create(&k->ticker, NULL, ticker_main, k);
        if (r) {
            bm_error("kvm: cannot start the throttle thread: %s", strerror(r));
            return -r;
        }
        k->ticker_started = true;
    }
    return 0;
}

int kvm_resume(struct vm *vm)
{
    struct kvm_vmm *k = K(vm);
    kvm_io_resume(k);
    pthread_mutex_lock(&k->mu);
    k->want_pause = false;
    k->clock_snap.valid = false;
    k->resumed_pending = k->status_lines > 0 || k->loaded;
    pthread_cond_broadcast(&k->cv);
    pthread_mutex_unlock(&k->mu);
    int r = start_vcpus(k);
    if (r < 0)
        return r;
    vm->paused = false;
    return 0;
}

static void add_hex(struct json_object *o, const char *name, uint64_t v)
{
    char b[19];
    snprintf(b, sizeof b, "0x%" PRIx64, v);
    json_object_object_add(o, name, json_object_new_string(b));
}

static struct json_object *seg_json(const struct kvm_segment *s)
{
    struct json_object *o = json_object_new_object();
    add_hex(o, "selector", s->selector);
    add_hex(o, "base", s->base);
    json_object_object_add(o, "dpl", json_object_new_int(s->dpl));
    json_object_object_add(o, "l", json_object_new_boolean(s->l));
    json_object_object_add(o, "present", json_object_new_boolean(s->present));
    return o;
}

static struct json_object *dump_json(const struct kvm_vcpu_dump *d)
{
    struct json_object *o = json_object_new_object();
    if (d->err) {
        json_object_object_add(o, "error", json_object_new_string(strerror(-d->err)));
        return o;
    }
    const struct kvm_regs *r = &d->regs;
    const struct kvm_sregs *s = &d->sregs;
    struct json_object *g = json_object_new_object();
    const uint64_t gpr[] = {r->rax, r->rbx, r->rcx, r->rdx, r->rsi, r->rdi, r->rbp, r->r8,
                            r->r9,  r->r10, r->r11, r->r12, r->r13, r->r14, r->r15};
    static const char *const gname[] = {"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8",
                                        "r9",  "r10", "r11", "r12", "r13", "r14", "r15"};
    for (unsigned i = 0; i < sizeof gpr / sizeof gpr[0]; i++)
        add_hex(g, gname[i], gpr[i]);
    add_hex(o, "rip", r->rip);
    add_hex(o, "rsp", r->rsp);
    add_hex(o, "rflags", r->rflags);
    add_hex(o, "cr0", s->cr0);
    add_hex(o, "cr2", s->cr2);
    add_hex(o, "cr3", s->cr3);
    add_hex(o, "cr4", s->cr4);
    add_hex(o, "efer", s->efer);
    json_object_object_add(o, "cs", seg_json(&s->cs));
    json_object_object_add(o, "ss", seg_json(&s->ss));
    add_hex(o, "idt_base", s->idt.base);
    add_hex(o, "gdt_base", s->gdt.base);
    json_object_object_add(o, "gpr", g);
    struct json_object *e = json_object_new_object();
    json_object_object_add(e, "exception_injected", json_object_new_int(d->ev.exception.injected));
    json_object_object_add(e, "exception_nr", json_object_new_int(d->ev.exception.nr));
    json_object_object_add(e, "exception_error_code",
                           json_object_new_int64(d->ev.exception.has_error_code
                                                     ? (int64_t)d->ev.exception.error_code
                                                     : -1));
    json_object_object_add(e, "interrupt_injected", json_object_new_int(d->ev.interrupt.injected));
    json_object_object_add(e, "interrupt_nr", json_object_new_int(d->ev.interrupt.nr));
    json_object_object_add(e, "interrupt_shadow", json_object_new_int(d->ev.interrupt.shadow));
    json_object_object_add(e, "nmi_pending", json_object_new_int(d->ev.nmi.pending));
    json_object_object_add(o, "events", e);
    if (d->code_ok) {
        char hex[2 * sizeof d->code + 1];
        for (unsigned i = 0; i < sizeof d->code; i++)
            snprintf(hex + 2 * i, 3, "%02x", d->code[i]);
        add_hex(o, "rip_gpa", d->rip_gpa);
        json_object_object_add(o, "code", json_object_new_string(hex));
    }
    return o;
}

struct json_object *kvm_x_vcpus(struct vm *vm)
{
    struct kvm_vmm *k = K(vm);
    struct json_object *arr = json_object_new_array();
    for (unsigned i = 0; i < k->nvcpus; i++) {
        struct kvm_vcpu *c = &k->vcpus[i];
        struct kvm_vcpu_dump d;
        const char *how;
        pthread_mutex_lock(&k->mu);
        if (!c->started) {
            take_dump(k, c, &d); /* no thread yet: nothing else runs this vCPU */
            how = "not started";
        } else {
            c->dump_done = false;
            atomic_store(&c->dump_req, true);
            pthread_cond_broadcast(&k->cv);
            uint64_t deadline = kvm_now_ns() + 2000000000ull;
            while (!c->dump_done && !k->quit && kvm_now_ns() < deadline) {
                pthread_mutex_unlock(&k->mu);
                kick(c);
                pthread_mutex_lock(&k->mu);
                if (!c->dump_done)
                    wait_1ms(k);
            }
            if (c->dump_done) {
                d = c->dump;
                how = k->halted ? "halted" : k->want_pause ? "paused" : "running";
            } else {
                /* Stuck in KVM_RUN (the kick not answered in 2 s), or its thread is ending. */
                atomic_store(&c->dump_req, false);
                memset(&d, 0, sizeof d);
                d.err = k->quit ? -ESHUTDOWN : -ETIMEDOUT;
                how = k->quit ? "stopping" : "not answering";
            }
        }
        pthread_mutex_unlock(&k->mu);
        struct json_object *o = dump_json(&d);
        json_object_object_add(o, "index", json_object_new_int((int)i));
        json_object_object_add(o, "state", json_object_new_string(how));
        json_object_array_add(arr, o);
    }
    struct json_object *top = json_object_new_object();
    json_object_object_add(top, "vcpus", arr);
    return top;
}

void kvm_throttle(struct vm *vm, unsigned pct)
{
    struct kvm_vmm *k = K(vm);
    pthread_mutex_lock(&k->mu);
    atomic_store(&k->throttle, pct > 99 ? 99 : pct);
    pthread_cond_broadcast(&k->cv); /* the ticker waits for a throttle */
    pthread_mutex_unlock(&k->mu);
}

void kvm_vcpu_signals(void)
{
    struct sigaction sa = {.sa_handler = kick_handler};
    sigemptyset(&sa.sa_mask);
    sigaction(SIG_KICK, &sa, NULL);
}
