/* kvm-internal.h: the KVM micro-VM's state, shared by its files (creation and glue in kvm.c,
 * guest RAM and the dirty log in memory.c, vCPU threads and run control in vcpu.c, the PVH
 * loader and boot state in boot.c, devices in devices.c, save/load in state.c). */
#ifndef BM_VM_KVM_INTERNAL_H
#define BM_VM_KVM_INTERNAL_H

#include <linux/kvm.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

#include "vm/kvm/kvm.h"

#define KVM_MAX_VCPUS 1
/* Where the loader puts the PVH start info, memory map and command line. */
#define KVM_START_INFO_GPA 0x6000ull
#define KVM_MEMMAP_GPA     0x6100ull
#define KVM_CMDLINE_GPA    0x7000ull
#define KVM_CMDLINE_MAX    4096u
#define KVM_QUEUE_MAX      256u /* virtio queue size offered (and accepted in loaded state) */
#define KVM_GDT_GPA        0x5000ull

/* virtio-mmio block device state (what save_state carries). */
struct kvm_vblk {
    struct bm_disk *disk;
    uint64_t size;
    uint32_t status, dev_feat_sel, drv_feat_sel, queue_sel, qnum, qready, isr, config_gen;
    uint64_t drv_features, desc, avail, used;
    uint16_t last_avail, used_idx;
};

/* What x-query-vcpus shows of a vCPU (taken by its own thread, or by the asker while parked). */
struct kvm_vcpu_dump {
    int err; /* 0, or -errno of the first ioctl that failed */
    struct kvm_regs regs;
    struct kvm_sregs sregs;
    struct kvm_vcpu_events ev;
    bool code_ok;
    uint64_t rip_gpa;
    uint8_t code[16]; /* the bytes at RIP, when it translates to RAM */
};

struct kvm_vcpu {
    int fd;
    struct kvm_run *run;
    size_t run_size;
    pthread_t thread;
    bool started;
    /* Exit counts by reason (written by the vCPU thread only, read relaxed by query). */
    uint64_t exits, exits_mmio, exits_io, exits_intr, last_exit;
    /* x-query-vcpus: dump_req asks the vCPU thread for a dump; it fills dump and sets
     * dump_done (under mu, cv broadcast). */
    atomic_bool dump_req;
    bool dump_done;
    struct kvm_vcpu_dump dump;
};

/* The TSC section of the state (docs/vmm.md "TSC"). */
struct tsc_hdr {
    uint64_t khz;         /* the guest's TSC rate */
    uint64_t realtime_ns; /* host CLOCK_REALTIME when the TSCs were read */
    uint32_t nvcpus;
    uint32_t flags; /* TSC_OFFSETS, TSC_VALUES: every entry's offset, TSC was read */
};
struct tsc_vcpu {
    uint64_t offset;    /* KVM_VCPU_TSC_OFFSET: guest TSC = host TSC + offset */
    uint64_t guest_tsc; /* the guest's TSC (MSR IA32_TSC) */
};
#define TSC_OFFSETS 1u
#define TSC_VALUES  2u
struct kvm_clock_snap {
    bool valid; /* taken since the VM last paused */
    struct kvm_clock_data clock;
    struct {
        struct tsc_hdr h;
        struct tsc_vcpu v[KVM_MAX_VCPUS];
    } tsc;
};

struct kvm_vmm {
    struct vm vm;
    struct kvm_config cfg;
    char *guest_path, *workload, *extra;
    int kvm_fd, vm_fd;
    struct kvm_cpuid2 *cpuid; /* every vCPU's (cpuid.c) */
    uint8_t *ram;
    uint64_t ram_size;
    unsigned nvcpus;
    struct kvm_vcpu vcpus[KVM_MAX_VCPUS];
    kvm_event_fn fn;
    void *opaque;

    /* Dirty log: KVM's (when logging) OR'd with the VMM's own writes into guest RAM. */
    struct bm_bitmap *vmm_dirty;
    unsigned long *log_buf;
    bool logging;

    /* Run control (mu protects the flags and counts; cv signals changes). */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_bool want_pause, quit; /* also read without mu by the vCPU loop */
    bool halted;
    unsigned parked; /* vCPUs parked */
    atomic_uint throttle;
    pthread_t ticker;
    bool ticker_started;

    /* Devices: blk[] and irq_level[] are touched under dev_mu by the vCPU thread (register
     * accesses, and QueueNotify when it is not an ioeventfd) and by the I/O thread (requests),
     * or without it by the controlling thread while the VM is paused (save, load). */
    pthread_mutex_t dev_mu;
    struct kvm_vblk blk[VM_MAX_DISKS];
    /* The I/O thread (devices.c): KVM signals notify_fd[i] when the guest writes 0 to disk i's
     * QueueNotify (an ioeventfd: no exit to user space), and the thread serves the queue, so
     * that the vCPU never stops for disk I/O (QEMU's ioeventfd + I/O thread). io_paused (under
     * dev_mu) keeps it off the devices while the VM is paused. */
    int notify_fd[VM_MAX_DISKS];
    int io_wake_fd; /* eventfd that wakes the thread to quit; -1: no I/O thread */
    pthread_t io_thread;
    bool io_started, io_paused;
    atomic_bool io_quit;  /* kvm_io_stop: the thread ends */
    uint64_t io_notifies; /* notifications the I/O thread served (relaxed) */
    /* Registers (assign) or removes an ioeventfd for disk idx's QueueNotify (kvm.c:
     * KVM_IOEVENTFD; the unit tests fake it). NULL: no I/O thread, notifies exit to user space. */
    int (*assign_notify)(struct kvm_vmm *k, unsigned idx, int fd, bool assign);
    /* Each disk's interrupt line as last set (it follows isr != 0; not saved: a loaded VM
     * starts with its lines low and kvm_devices_loaded raises those whose isr is set). */
    bool irq_level[VM_MAX_DISKS];
    bool blk_warned[VM_MAX_DISKS]; /* a broken driver was logged for this disk (under dev_mu) */
    /* Sets an interrupt line of the in-kernel irqchip (kvm.c: KVM_IRQ_LINE; the unit tests
     * record the calls). NULL: no interrupts. */
    void (*set_irq)(struct kvm_vmm *k, unsigned gsi, bool level);
    FILE *console;
    bool console_owned;
    int console_fd; /* --console unix:PATH (else -1: lines go to console) */
    struct kvm_clock_snap clock_snap; /* kvmclock and TSCs at the last pause (state.c) */
    char serial_line[512];
    size_t serial_len;
    uint64_t boot_ns;
    /* Guest status from its console lines (under mu). */
    uint64_t hb, ram_writes, disk_writes, ram_checks, disk_checks, errors, max_gap_us, last_gap_us,
        status_lines, last_line_ns, max_line_gap_ns;
    bool loaded;          /* state came from load_state (a migration) */
    bool resumed_pending; /* the next status line's gap spans a resume */
    uint64_t last_resume_gap_us;
    int exit_status;      /* -1 = still running */
    char halt_reason[96]; /* why a vCPU stopped the guest (vcpu.c vcpu_fatal), "" if none */
    char first_error[256];
};

#define K(v) ((struct kvm_vmm *)(void *)(v))

uint64_t kvm_now_ns(void);
/* vm_ops.dead: halted for good (a vCPU error, or the guest's own exit), why in why[len]. */
bool kvm_dead(struct vm *vm, char *why, size_t len);
void kvm_event(struct kvm_vmm *k, const char *event, struct json_object *data);

/* memory.c */
/* Host pointer of [gpa, gpa + len) in guest RAM, or NULL if it is not all RAM. */
void *kvm_gpa(struct kvm_vmm *k, uint64_t gpa, uint64_t len);
/* Mark guest RAM the VMM wrote (after writing it). */
void kvm_mark_dirty(struct kvm_vmm *k, uint64_t gpa, uint64_t len);
/* Map k->ram_size bytes of guest RAM at k->ram; -errno. */
int kvm_map_ram(struct kvm_vmm *k);
/* (Re)register the RAM memslot, with or without KVM's dirty log; -errno. */
int kvm_set_slot(struct kvm_vmm *k, bool log);
int kvm_dirty_start(struct vm *vm);
int kvm_dirty_sync(struct vm *vm, struct bm_bitmap *out);
void kvm_dirty_stop(struct vm *vm);

/* vcpu.c */
/* Install the handler of the signal that kicks vCPUs out of KVM_RUN (once per process). */
void kvm_vcpu_signals(void);
/* Make every vCPU leave KVM_RUN (or not enter it) now. */
void kvm_kick_all(struct kvm_vmm *k);
int kvm_pause(struct vm *vm);
/* Starts the vCPU threads the first time. */
int kvm_resume(struct vm *vm);
void kvm_throttle(struct vm *vm, unsigned pct);
/* x-query-vcpus: each vCPU's registers, pending events and the code at RIP, taken without
 * pausing the VM (a running vCPU is kicked out of KVM_RUN, dumps itself and goes on). */
struct json_object *kvm_x_vcpus(struct vm *vm);

/* boot.c */
int kvm_load_guest(struct kvm_vmm *k, uint64_t *entry, char *err, size_t errlen);
int kvm_setup_boot_vcpu(struct kvm_vmm *k, struct kvm_vcpu *c, uint64_t entry, char *err,
                        size_t errlen);
/* Formats the reason into err[errlen] and returns -e. */
int kvm_fail(char *err, size_t errlen, int e, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* kvm_fail with "kvm: WHAT: strerror(errno)" and -errno (errno as set by the failed call). */
int kvm_sys_fail(char *err, size_t errlen, const char *what);
/* Give vCPU c the VM's CPUID (cpuid.c): the first call picks it (cfg.cpuid after
 * kvm_cpuid_compatible, else this host's KVM_GET_SUPPORTED_CPUID) into k->cpuid. */
int kvm_setup_cpuid(struct kvm_vmm *k, struct kvm_vcpu *c, char *err, size_t errlen);

/* devices.c: exits the vCPU thread hands over. */
void kvm_handle_io(struct kvm_vmm *k, struct kvm_run *run);
void kvm_handle_mmio(struct kvm_vmm *k, struct kvm_run *run);
void kvm_console_line(struct kvm_vmm *k, const char *line);
/* Why queue b's rings cannot be served (no valid size; not inside guest RAM of ram_size
 * bytes; misaligned; overlapping), or NULL when they can: checked at QueueReady and on
 * load_state (kvm_state_check). */
const char *kvm_vblk_rings_bad(uint64_t ram_size, const struct kvm_vblk *b);
/* After load_state: set each disk's interrupt line from its loaded isr. */
void kvm_devices_loaded(struct kvm_vmm *k);
/* Starts the I/O thread with one ioeventfd per disk (k->assign_notify). 0, or -errno (then
 * nothing is left registered and notifies are served in the vCPU thread). */
int kvm_io_start(struct kvm_vmm *k);
/* Ends the I/O thread and removes its ioeventfds (safe when it never started). */
void kvm_io_stop(struct kvm_vmm *k);
/* Pause (the vCPUs parked): serve what the guest queued and the thread did not get to yet, and
 * keep the thread off the devices until kvm_io_resume. */
void kvm_io_pause(struct kvm_vmm *k);
void kvm_io_resume(struct kvm_vmm *k);

/* state.c */
/* The TSC offset that makes a vCPU's TSC go on across hosts: the guest TSC at kvmclock 0
 * stays the same (Documentation/virt/kvm/devices/vcpu.rst, KVM_VCPU_TSC_OFFSET). */
uint64_t kvm_tsc_offset_after(uint64_t ofs_src, uint64_t kvmclock_src, uint64_t kvmclock_dst,
                              uint64_t tsc_src, uint64_t tsc_dst, uint64_t khz);
/* Without offsets: the TSC value to write, the source's advanced by the host time since. */
uint64_t kvm_tsc_value_after(uint64_t tsc_src, uint64_t realtime_src, uint64_t realtime_dst,
                             uint64_t khz);
/* Take kvmclock and every vCPU's TSC now, with the time (kvm_pause, after the vCPUs parked). */
int kvm_clock_snapshot(struct kvm_vmm *k);
int kvm_save(struct vm *vm, void **buf, size_t *len);
/* Check a saved state blob (framing, section sizes, counts inside sections, queue sizes, the
 * rings of ready queues against guest RAM of ram_size bytes, the vCPUs and disks it carries
 * against the VM's nvcpus and ndisks) without touching a VM: 0, or -EPROTO (logged). kvm_load
 * runs it first, and relies on it for everything but what the kernel refuses. */
int kvm_state_check(const void *buf, size_t len, unsigned nvcpus, unsigned ndisks,
                    uint64_t ram_size);
int kvm_load(struct vm *vm, const void *buf, size_t len);

#endif
