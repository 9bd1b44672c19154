/* kvm.c: the KVM micro-VM: probing, creation and teardown, describe/query/check, and the
 * vm_ops glue. Guest RAM and the dirty log: memory.c; vCPU threads and run control (pause,
 * resume, throttle): vcpu.c; devices: devices.c; the PVH loader: boot.c; save/load: state.c.
 * Design: docs/vmm.md. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/sock.h"
#include "vm/guestcheck.h"
#include "vm/kvm/kvm-internal.h"

uint64_t kvm_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

void kvm_event(struct kvm_vmm *k, const char *event, struct json_object *data)
{
    if (k->fn)
        k->fn(k->opaque, event, data);
    else
        json_object_put(data);
}

int kvm_probe(char *why, size_t len)
{
    int fd = open(KVM_DEFAULT_DEVICE, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        snprintf(why, len, "%s: %s", KVM_DEFAULT_DEVICE, strerror(e));
        return -e;
    }
    int v = ioctl(fd, KVM_GET_API_VERSION, 0);
    int r = 0;
    if (v != KVM_API_VERSION) {
        snprintf(why, len, "%s: API version %d, need %d", KVM_DEFAULT_DEVICE, v, KVM_API_VERSION);
        r = -ENOTSUP;
    } else if (ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_IRQCHIP) <= 0 ||
               ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY) <= 0) {
        snprintf(why, len, "%s: no in-kernel irqchip or user memory", KVM_DEFAULT_DEVICE);
        r = -ENOTSUP;
    }
    close(fd);
    return r;
}

int kvm_check_shape(uint64_t ram, unsigned ndisks, char *why, size_t len)
{
    if (ram < (16u << 20) || ram > KVM_MAX_RAM || ram % (2u << 20)) {
        snprintf(why, len, "kvm: RAM must be 16 MiB to 3 GiB, a multiple of 2 MiB");
        return -EINVAL;
    }
    if (ndisks > KVM_MAX_DISKS) {
        snprintf(why, len, "kvm: at most %u disks", KVM_MAX_DISKS);
        return -EINVAL;
    }
    return 0;
}

int kvm_fits(uint64_t ram, unsigned ndisks, const char *guest, char *why, size_t len)
{
    int r = kvm_check_shape(ram, ndisks, why, len);
    if (r < 0)
        return r;
    if (!guest && !(guest = kvm_default_guest())) {
        snprintf(why, len, "no test guest installed (blkmig-guest.elf)");
        return -ENOENT;
    }
    if (access(guest, R_OK) != 0) {
        int e = errno;
        snprintf(why, len, "%s: %s", guest, strerror(e));
        return -e;
    }
    return kvm_probe(why, len);
}

const char *kvm_default_guest(void)
{
    static char path[4096];
    const char *env = getenv("BLKMIG_GUEST");
    if (env && *env)
        return env;
    /* A build tree: vm/guest/ next to the binary. */
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = 0;
        char *slash = strrchr(self, '/');
        if (slash) {
            *slash = 0;
            int m = snprintf(path, sizeof path, "%s/vm/guest/blkmig-guest.elf", self);
            if (m > 0 && (size_t)m < sizeof path && access(path, R_OK) == 0)
                return path;
        }
    }
    snprintf(path, sizeof path, "%s/blkmig-guest.elf", PKGLIBEXECDIR);
    return access(path, R_OK) == 0 ? path : NULL;
}

/* ---- the console ---- */

/* --console unix:PATH: a stream connection to a listening unix socket (the reader's, as with
 * QEMU's `-chardev socket,server=off`), write-only. Returns the socket or -errno. */
static int open_console_socket(const char *path)
{
    int fd = bm_connect_unix(path);
    if (fd >= 0) {
        shutdown(fd, SHUT_RD);
        /* A reader that stops reading (but keeps the socket open) would stall the vCPU: give
         * up on the console after 5 s of a full socket instead. */
        struct timeval tv = {5, 0};
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    return fd;
}

/* ---- interrupts ---- */

static void kvm_irq_line(struct kvm_vmm *k, unsigned gsi, bool level)
{
    struct kvm_irq_level l = {.irq = gsi, .level = level};
    if (ioctl(k->vm_fd, KVM_IRQ_LINE, &l) < 0)
        bm_warn("kvm: KVM_IRQ_LINE %u=%d: %s", gsi, level, strerror(errno));
}

/* An ioeventfd on disk idx's QueueNotify register, matching the value 0 (queue 0) in a 4-byte
 * write, as QEMU's virtio-mmio: KVM signals fd instead of exiting to user space. */
static int kvm_assign_notify(struct kvm_vmm *k, unsigned idx, int fd, bool assign)
{
    struct kvm_ioeventfd e = {
        .datamatch = 0,
        .addr = KVM_VIRTIO_GPA + 0x1000ull * idx + 0x050,
        .len = 4,
        .fd = fd,
        .flags = KVM_IOEVENTFD_FLAG_DATAMATCH | (assign ? 0 : KVM_IOEVENTFD_FLAG_DEASSIGN),
    };
    return ioctl(k->vm_fd, KVM_IOEVENTFD, &e) < 0 ? -errno : 0;
}

/* ---- describe, query, check ---- */

static struct json_object *kvm_describe(struct vm *vm)
{
    struct kvm_vmm *k = K(vm);
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "kind", json_object_new_string("kvm"));
    json_object_object_add(o, "ram", json_object_new_int64((int64_t)k->ram_size));
    json_object_object_add(o, "vcpus", json_object_new_int((int)k->nvcpus));
    json_object_object_add(o, "status_ms", json_object_new_int((int)k->cfg.status_ms));
    json_object_object_add(o, "disks", vm_describe_disks(vm));
    if (k->cpuid) {
        struct json_object *c = kvm_cpuid_to_json(k->cpuid);
        /* Fault injection for the test suite only: a guest shown every leaf-7 feature, which
         * no host's KVM supports (the destination must refuse it). */
        const char *f = getenv("BLKMIG_TEST_FAULT");
        if (f && strcmp(f, "src-cpuid-unsupported") == 0)
            for (size_t i = 0; i < json_object_array_length(c); i++) {
                struct json_object *e = json_object_array_get_idx(c, i);
                if (json_object_get_int64(json_object_array_get_idx(e, 0)) == 7)
                    json_object_array_put_idx(e, 4, json_object_new_int64(0xffffffffll));
            }
        json_object_object_add(o, "cpuid", c);
    }
    return o;
}

static struct json_object *kvm_query(struct vm *vm)
{
    struct kvm_vmm *k = K(vm);
    struct json_object *o = json_object_new_object();
    pthread_mutex_lock(&k->mu);
#define ADD(name, v) json_object_object_add(o, name, json_object_new_int64((int64_t)(v)))
    ADD("hb_count", k->hb);
    ADD("ram_writes", k->ram_writes);
    ADD("ram_checks", k->ram_checks);
    ADD("disk_writes", k->disk_writes);
    ADD("disk_checks", k->disk_checks);
    ADD("errors", k->errors + (k->first_error[0] && !k->errors ? 1 : 0));
    ADD("max_gap_ns", k->max_gap_us * 1000);
    ADD("last_resume_gap_ns", k->last_resume_gap_us * 1000);
    ADD("last_gap_ns", k->last_gap_us * 1000);
    ADD("status_lines", k->status_lines);
    ADD("max_console_gap_ns", k->max_line_gap_ns);
    ADD("exit_status", k->exit_status);
#undef ADD
    json_object_object_add(o, "first_error", json_object_new_string(k->first_error));
    json_object_object_add(o, "halted", json_object_new_boolean(k->halted));
    pthread_mutex_unlock(&k->mu);
    json_object_object_add(o, "running", json_object_new_boolean(!vm->paused));
    json_object_object_add(o, "throttle", json_object_new_int((int)atomic_load(&k->throttle)));
    /* Exits to user space so far, by reason: whether a guest that went quiet still exits. */
    struct json_object *a = json_object_new_array();
    for (unsigned i = 0; i < k->nvcpus; i++) {
        struct kvm_vcpu *c = &k->vcpus[i];
        struct json_object *v = json_object_new_object();
#define LD(x) json_object_new_int64((int64_t)__atomic_load_n(&c->x, __ATOMIC_RELAXED))
        json_object_object_add(v, "exits", LD(exits));
        json_object_object_add(v, "mmio_exits", LD(exits_mmio));
        json_object_object_add(v, "io_exits", LD(exits_io));
        json_object_object_add(v, "intr_exits", LD(exits_intr));
        json_object_object_add(v, "last_exit_reason", LD(last_exit));
#undef LD
        json_object_array_add(a, v);
    }
    json_object_object_add(o, "vcpus", a);
    struct json_object *io = json_object_new_object();
    json_object_object_add(io, "running", json_object_new_boolean(k->io_started));
    json_object_object_add(
        io, "notifies",
        json_object_new_int64((int64_t)__atomic_load_n(&k->io_notifies, __ATOMIC_RELAXED)));
    json_object_object_add(o, "iothread", io);
    return o;
}

/* Halted is for good: a vCPU error (triple fault, failed entry, ...) or the guest's own exit
 * (isa-debug-exit, the console's exit register). */
bool kvm_dead(struct vm *vm, char *why, size_t len)
{
    struct kvm_vmm *k = K(vm);
    pthread_mutex_lock(&k->mu);
    bool dead = k->halted;
    if (dead && why && len) {
        if (k->exit_status >= 0)
            snprintf(why, len, "the guest exited (status %d)", k->exit_status);
        else
            snprintf(why, len, "the guest stopped (vCPU: %s)",
                     k->halt_reason[0] ? k->halt_reason : "halted");
    }
    pthread_mutex_unlock(&k->mu);
    return dead;
}

/* The errors the guest reported on its console (it checks its data continuously) plus a sweep
 * of every page and block by the host, from the layout record the test guest keeps in RAM
 * (vm/guestcheck.c). A guest without one (another ELF, or not laid out yet) gets only the
 * former. */
static int64_t kvm_check(struct vm *vm)
{
    struct kvm_vmm *k = K(vm);
    pthread_mutex_lock(&k->mu);
    int64_t n = (int64_t)k->errors;
    pthread_mutex_unlock(&k->mu);
    struct bm_disk *disks[VM_MAX_DISKS];
    for (unsigned i = 0; i < vm->ndisks; i++)
        disks[i] = k->blk[i].disk;
    struct bm_gcheck c;
    char err[256];
    int r = bm_guest_check(k->ram, k->ram_size, disks, vm->ndisks, &c, err, sizeof err);
    if (r == -ENOENT) {
        bm_info("kvm: guest-check: %s; only the guest's own reports count", err);
        return n;
    }
    if (r < 0) {
        bm_error("kvm: guest-check: %s", err);
        return r;
    }
    for (unsigned i = 0; i < c.nreports; i++)
        bm_error("kvm: guest-check: %s", c.report[i]);
    bm_info("kvm: guest-check: %" PRIu64 " pages and %" PRIu64 " blocks checked (%" PRIu64
            " being written, skipped), %" PRIu64 " mismatches; the guest reported %" PRId64
            " errors",
            c.pages, c.blocks, c.skipped, c.mismatches, n);
    return n + (int64_t)c.mismatches;
}

static void kvm_destroy(struct vm *vm)
{
    struct kvm_vmm *k = K(vm);
    pthread_mutex_lock(&k->mu);
    k->quit = true;
    pthread_cond_broadcast(&k->cv);
    pthread_mutex_unlock(&k->mu);
    kvm_kick_all(k);
    for (unsigned i = 0; i < k->nvcpus; i++)
        if (k->vcpus[i].started)
            pthread_join(k->vcpus[i].thread, NULL);
    if (k->ticker_started)
        pthread_join(k->ticker, NULL);
    kvm_io_stop(k);
    for (unsigned i = 0; i < k->nvcpus; i++) {
        if (k->vcpus[i].run)
            munmap(k->vcpus[i].run, k->vcpus[i].run_size);
        if (k->vcpus[i].fd >= 0)
            close(k->vcpus[i].fd);
    }
    if (k->vm_fd >= 0)
        close(k->vm_fd);
    if (k->kvm_fd >= 0)
        close(k->kvm_fd);
    free(k->cpuid);
    if (k->ram)
        munmap(k->ram, k->ram_size);
    if (k->console_owned)
        fclose(k->console);
    if (k->console_fd >= 0)
        close(k->console_fd);
    bm_bitmap_free(k->vmm_dirty);
    free(k->log_buf);
    free(k->guest_path);
    free(k->workload);
    free(k->extra);
    pthread_mutex_destroy(&k->mu);
    pthread_mutex_destroy(&k->dev_mu);
    pthread_cond_destroy(&k->cv);
    free(k);
}

static const struct vm_ops kvm_ops = {
    .kind = "kvm",
    .dirty_log_start = kvm_dirty_start,
    .dirty_log_sync = kvm_dirty_sync,
    .dirty_log_stop = kvm_dirty_stop,
    .pause = kvm_pause,
    .resume = kvm_resume,
    .throttle = kvm_throttle,
    .save_state = kvm_save,
    .load_state = kvm_load,
    .describe = kvm_describe,
    .query = kvm_query,
    .check = kvm_check,
    .dead = kvm_dead,
    .x_vcpus = kvm_x_vcpus,
    .destroy = kvm_destroy,
};

/* ---- creation ---- */

int kvm_fail(char *err, size_t errlen, int e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -e;
}

int kvm_sys_fail(char *err, size_t errlen, const char *what)
{
    int e = errno;
    return kvm_fail(err, errlen, e, "kvm: %s: %s", what, strerror(e));
}

static int create_vcpu(struct kvm_vmm *k, unsigned i, char *err, size_t errlen)
{
    struct kvm_vcpu *c = &k->vcpus[i];
    c->fd = ioctl(k->vm_fd, KVM_CREATE_VCPU, i);
    if (c->fd < 0)
        return kvm_sys_fail(err, errlen, "KVM_CREATE_VCPU");
    int sz = ioctl(k->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (sz <= 0)
        return kvm_sys_fail(err, errlen, "KVM_GET_VCPU_MMAP_SIZE");
    c->run_size = (size_t)sz;
    c->run = mmap(NULL, c->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, c->fd, 0);
    if (c->run == MAP_FAILED) {
        c->run = NULL;
        return kvm_sys_fail(err, errlen, "mapping the vCPU run area");
    }
    return kvm_setup_cpuid(k, c, err, errlen);
}

int kvm_create(const struct kvm_config *cfg, const struct vm_disk *disks, unsigned ndisks,
               bool boot, kvm_event_fn fn, void *opaque, struct vm **out, char *err, size_t errlen)
{
    int r = kvm_check_shape(cfg->ram, ndisks, err, errlen);
    if (r < 0)
        return r;
    struct kvm_vmm *k = calloc(1, sizeof *k);
    if (!k) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    k->vm.ops = &kvm_ops;
    k->cfg = *cfg;
    k->kvm_fd = k->vm_fd = -1;
    for (unsigned i = 0; i < KVM_MAX_VCPUS; i++)
        k->vcpus[i].fd = -1;
    k->exit_status = -1;
    k->fn = fn;
    k->opaque = opaque;
    k->set_irq = kvm_irq_line;
    k->assign_notify = kvm_assign_notify;
    k->io_wake_fd = -1;
    k->io_paused = true; /* until the first resume */
    for (unsigned i = 0; i < VM_MAX_DISKS; i++)
        k->notify_fd[i] = -1;
    pthread_mutex_init(&k->mu, NULL);
    pthread_mutex_init(&k->dev_mu, NULL);
    pthread_cond_init(&k->cv, NULL);
    k->console = stderr;
    k->console_fd = -1;
    k->boot_ns = kvm_now_ns();
    if (!k->cfg.status_ms)
        k->cfg.status_ms = 100; /* the first line after a resume carries its gap */
    k->guest_path = cfg->guest ? strdup(cfg->guest) : NULL;
    k->workload = cfg->workload ? strdup(cfg->workload) : NULL;
    k->extra = cfg->extra_cmdline ? strdup(cfg->extra_cmdline) : NULL;
    k->cfg.guest = k->guest_path;
    k->cfg.workload = k->workload;
    k->cfg.extra_cmdline = k->extra;
    if (cfg->console && strncmp(cfg->console, "unix:", 5) == 0) {
        int fd = open_console_socket(cfg->console + 5);
        if (fd < 0) {
            errno = -fd;
            r = kvm_sys_fail(err, errlen, "connecting the console to its unix socket");
            goto fail;
        }
        k->console_fd = fd;
    } else if (cfg->console) {
        k->console = fopen(cfg->console, "ae");
        if (!k->console) {
            r = kvm_sys_fail(err, errlen, "opening the console file");
            k->console = stderr;
            goto fail;
        }
        k->console_owned = true;
    }

    kvm_vcpu_signals();

    k->kvm_fd = open(KVM_DEFAULT_DEVICE, O_RDWR | O_CLOEXEC);
    if (k->kvm_fd < 0) {
        r = kvm_sys_fail(err, errlen, "opening " KVM_DEFAULT_DEVICE);
        goto fail;
    }
    k->vm_fd = ioctl(k->kvm_fd, KVM_CREATE_VM, 0);
    if (k->vm_fd < 0) {
        r = kvm_sys_fail(err, errlen, "KVM_CREATE_VM");
        goto fail;
    }
    /* Intel needs these three pages out of the guest's way; elsewhere they are harmless. */
    if (ioctl(k->vm_fd, KVM_SET_TSS_ADDR, 0xfffbd000ul) < 0)
        bm_debug("kvm: KVM_SET_TSS_ADDR: %s", strerror(errno));
    uint64_t idmap = 0xfffbc000ull;
    if (ioctl(k->vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &idmap) < 0)
        bm_debug("kvm: KVM_SET_IDENTITY_MAP_ADDR: %s", strerror(errno));
    if (ioctl(k->vm_fd, KVM_CREATE_IRQCHIP, 0) < 0) {
        r = kvm_sys_fail(err, errlen, "KVM_CREATE_IRQCHIP");
        goto fail;
    }
    struct kvm_pit_config pit = {.flags = KVM_PIT_SPEAKER_DUMMY};
    if (ioctl(k->vm_fd, KVM_CREATE_PIT2, &pit) < 0) {
        r = kvm_sys_fail(err, errlen, "KVM_CREATE_PIT2");
        goto fail;
    }

    k->ram_size = cfg->ram;
    if ((r = kvm_map_ram(k)) < 0) {
        errno = -r;
        r = kvm_sys_fail(err, errlen, "allocating guest RAM");
        goto fail;
    }
    k->vmm_dirty = bm_bitmap_new(k->ram_size, VM_PAGE_SIZE);
    k->log_buf = calloc((size_t)((k->ram_size / VM_PAGE_SIZE + 63) / 64), sizeof(unsigned long));
    if (!k->vmm_dirty || !k->log_buf) {
        snprintf(err, errlen, "out of memory");
        r = -ENOMEM;
        goto fail;
    }
    if ((r = kvm_set_slot(k, false)) < 0) {
        errno = -r;
        r = kvm_sys_fail(err, errlen, "KVM_SET_USER_MEMORY_REGION");
        goto fail;
    }
    k->vm.nregions = 1;
    k->vm.regions[0] = (struct vm_ram_region){k->ram, 0, k->ram_size};
    k->vm.ndisks = ndisks;
    for (unsigned i = 0; i < ndisks; i++) {
        k->vm.disks[i] = disks[i];
        k->blk[i].disk = disks[i].disk;
        k->blk[i].size = bm_disk_size(disks[i].disk) & ~511ull;
    }
    k->nvcpus = 1;
    for (unsigned i = 0; i < k->nvcpus; i++)
        if ((r = create_vcpu(k, i, err, errlen)) < 0)
            goto fail;
    if (ndisks && (r = kvm_io_start(k)) < 0)
        bm_warn("kvm: no I/O thread (%s): the vCPU serves disk requests itself", strerror(-r));
    r = 0;
    k->vm.paused = true;
    if (boot) {
        if (!k->guest_path) {
            snprintf(err, errlen, "kvm: no guest ELF (--guest, or install blkmig-guest.elf)");
            r = -ENOENT;
            goto fail;
        }
        uint64_t entry = 0;
        if ((r = kvm_load_guest(k, &entry, err, errlen)) < 0 ||
            (r = kvm_setup_boot_vcpu(k, &k->vcpus[0], entry, err, errlen)) < 0)
            goto fail;
        if ((r = kvm_resume(&k->vm)) < 0) {
            snprintf(err, errlen, "kvm: cannot start the vCPU");
            goto fail;
        }
    }
    *out = &k->vm;
    return 0;
fail:
    kvm_destroy(&k->vm);
    return r;
}
