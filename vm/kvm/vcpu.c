/* vcpu.c: the KVM micro-VM's vCPU threads and their run control: the KVM_RUN loop and its
 * exits, pause (kick every vCPU out of KVM_RUN, wait until all are parked, then take the
 * kvmclock/TSC snapshot the state saves: state.c kvm_clock_snapshot), resume, and
 * the throttle (a vCPU sleeps its share of every 10 ms slice; a ticker kicks a guest that never
 * exits by itself). Design: docs/vmm.md. */
#include <config.h>

#include <errno.h>
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

static void park(struct kvm_vmm *k)
{
    k->parked++;
    pthread_cond_broadcast(&k->cv);
    while ((k->want_pause || k->halted) && !k->quit)
        pthread_cond_wait(&k->cv, &k->mu);
    k->parked--;
}

static void vcpu_fatal(struct kvm_vmm *k, const char *what)
{
    bm_error("kvm: the guest stopped: %s", what);
    pthread_mutex_lock(&k->mu);
    k->halted = true;
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
        if (io_pending && (k->want_pause || k->quit)) {
            /* KVM finishes an I/O or MMIO instruction (e.g. stores a read's value) only on the
             * next KVM_RUN: enter once with immediate_exit so that the saved state is whole. */
            c->run->immediate_exit = 1;
            if (ioctl(c->fd, KVM_RUN, 0) < 0 && errno != EINTR)
                bm_warn("kvm: completing an I/O exit: %s", strerror(errno));
            io_pending = false;
        }
        pthread_mutex_lock(&k->mu);
        if (k->want_pause || k->halted)
            park(k);
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
        if (k->want_pause || k->quit)
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
        switch (c->run->exit_reason) {
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
 * when the guest never exits by itself (a polling guest in ring 3). */
static void *ticker_main(void *arg)
{
    struct kvm_vmm *k = arg;
    for (;;) {
        pthread_mutex_lock(&k->mu);
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

void kvm_kick_all(struct kvm_vmm *k)
{
    for (unsigned i = 0; i < k->nvcpus; i++) {
        if (!k->vcpus[i].run)
            continue;
        k->vcpus[i].run->immediate_exit = 1;
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (k->vcpus[i].started)
            pthread_kill(k->vcpus[i].thread, SIG_KICK);
    }
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
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&k->cv, &k->mu, &ts);
        if (k->parked < running_vcpus(k)) {
            pthread_mutex_unlock(&k->mu);
            kvm_kick_all(k); /* a kick that landed before KVM_RUN is re-sent */
            pthread_mutex_lock(&k->mu);
        }
    }
    pthread_mutex_unlock(&k->mu);
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

void kvm_throttle(struct vm *vm, unsigned pct)
{
    atomic_store(&K(vm)->throttle, pct > 99 ? 99 : pct);
}

void kvm_vcpu_signals(void)
{
    struct sigaction sa = {.sa_handler = kick_handler};
    sigemptyset(&sa.sa_mask);
    sigaction(SIG_KICK, &sa, NULL);
}
