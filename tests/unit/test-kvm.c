/* test-kvm.c: unit tests for the KVM micro-VM's parts that run without /dev/kvm: the PVH
 * loader (on the real test guest ELF and on bad files), the virtio-mmio block device driven
 * register by register as a guest driver would (handshake, writes, reads, flush, GET_ID, bad
 * descriptors, refused features) and by a hostile driver (rings that overlap, misaligned or
 * outside RAM, a runaway avail index: the device must not hang), the dirty marks of the VMM's own
 * writes into guest RAM, and the console (MMIO lines, the serial port, status lines feeding the
 * counters). */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/bitmap.h"
#include "vm/blockfmt.h"
#include "vm/kvm/kvm-internal.h"

#define RAM (32u << 20)
#define DISK (4u << 20)

struct fx {
    struct kvm_vmm k;
    char dir[64], disk_path[96], console_path[96];
    struct kvm_run run;
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/test-kvm.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->disk_path, sizeof f->disk_path, "%s/vda.img", f->dir);
    snprintf(f->console_path, sizeof f->console_path, "%s/console.log", f->dir);
    int fd = open(f->disk_path, O_RDWR | O_CREAT, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, DISK), 0);
    close(fd);
    struct kvm_vmm *k = &f->k;
    k->ram_size = RAM;
    k->ram = calloc(1, RAM);
    k->vmm_dirty = bm_bitmap_new(RAM, VM_PAGE_SIZE);
    assert_non_null(k->ram);
    assert_non_null(k->vmm_dirty);
    pthread_mutex_init(&k->mu, NULL);
    pthread_mutex_init(&k->dev_mu, NULL);
    pthread_cond_init(&k->cv, NULL);
    k->io_wake_fd = -1;
    k->console = fopen(f->console_path, "w+");
    assert_non_null(k->console);
    k->console_fd = -1;
    k->exit_status = -1;
    k->vcpus[0].fd = -1;
    struct bm_disk *d;
    assert_int_equal(bm_disk_open(f->disk_path, 0, &d), 0);
    k->vm.ndisks = 1;
    snprintf(k->vm.disks[0].name, sizeof k->vm.disks[0].name, "vda");
    k->vm.disks[0].disk = d;
    k->blk[0].disk = d;
    k->blk[0].size = DISK;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    kvm_io_stop(&f->k); /* a test that failed with the I/O thread running */
    bm_disk_close(f->k.blk[0].disk);
    fclose(f->k.console);
    free(f->k.ram);
    bm_bitmap_free(f->k.vmm_dirty);
    free(f->k.guest_path);
    unlink(f->disk_path);
    unlink(f->console_path);
    rmdir(f->dir);
    free(f);
    return 0;
}

/* ---- MMIO helpers: what a guest's access turns into ---- */

static void mmio_w(struct fx *f, uint64_t a, uint64_t v, uint32_t len)
{
    memset(&f->run, 0, sizeof f->run);
    f->run.exit_reason = KVM_EXIT_MMIO;
    f->run.mmio.phys_addr = a;
    f->run.mmio.len = len;
    f->run.mmio.is_write = 1;
    memcpy(f->run.mmio.data, &v, len);
    kvm_handle_mmio(&f->k, &f->run);
}

static uint32_t mmio_r(struct fx *f, uint64_t a)
{
    memset(&f->run, 0, sizeof f->run);
    f->run.exit_reason = KVM_EXIT_MMIO;
    f->run.mmio.phys_addr = a;
    f->run.mmio.len = 4;
    kvm_handle_mmio(&f->k, &f->run);
    uint32_t v;
    memcpy(&v, f->run.mmio.data, 4);
    return v;
}

#define VB KVM_VIRTIO_GPA
#define DESC 0x10000u
#define AVAIL 0x11000u
#define USED 0x12000u
#define HDR 0x13000u
#define STATUS 0x13100u
#define DATA 0x20000u
#define QN 8u

struct vdesc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags, next;
};

/* The driver's side of the handshake with its rings at desc, avail and used; returns the
 * final status register. */
static uint32_t handshake_at(struct fx *f, uint32_t feat_hi, uint64_t desc, uint64_t avail,
                             uint64_t used);

static uint32_t handshake(struct fx *f, uint32_t feat_hi)
{
    return handshake_at(f, feat_hi, DESC, AVAIL, USED);
}

static uint32_t handshake_at(struct fx *f, uint32_t feat_hi, uint64_t desc, uint64_t avail,
                             uint64_t used)
{
    assert_int_equal(mmio_r(f, VB + 0x000), 0x74726976);
    assert_int_equal(mmio_r(f, VB + 0x004), 2);
    assert_int_equal(mmio_r(f, VB + 0x008), 2);
    mmio_w(f, VB + 0x070, 0, 4);
    mmio_w(f, VB + 0x070, 1, 4);
    mmio_w(f, VB + 0x070, 3, 4);
    mmio_w(f, VB + 0x014, 1, 4);
    assert_true(mmio_r(f, VB + 0x010) & 1); /* VERSION_1 offered */
    mmio_w(f, VB + 0x024, 0, 4);
    mmio_w(f, VB + 0x020, 0, 4);
    mmio_w(f, VB + 0x024, 1, 4);
    mmio_w(f, VB + 0x020, feat_hi, 4);
    mmio_w(f, VB + 0x070, 11, 4);
    if (!(mmio_r(f, VB + 0x070) & 8))
        return mmio_r(f, VB + 0x070);
    mmio_w(f, VB + 0x030, 0, 4);
    assert_true(mmio_r(f, VB + 0x034) >= QN);
    mmio_w(f, VB + 0x038, QN, 4);
    mmio_w(f, VB + 0x080, (uint32_t)desc, 4);
    mmio_w(f, VB + 0x084, desc >> 32, 4);
    mmio_w(f, VB + 0x090, (uint32_t)avail, 4);
    mmio_w(f, VB + 0x094, avail >> 32, 4);
    mmio_w(f, VB + 0x0a0, (uint32_t)used, 4);
    mmio_w(f, VB + 0x0a4, used >> 32, 4);
    mmio_w(f, VB + 0x044, 1, 4);
    mmio_w(f, VB + 0x070, 15, 4);
    return mmio_r(f, VB + 0x070);
}

static uint16_t avail_idx;

/* Makes one request available (type, sector, data at data: len bytes, 0 = none) without
 * notifying the device. */
static void queue_request(struct fx *f, uint32_t type, uint64_t sector, uint64_t data,
                          uint32_t len)
{
    uint8_t *ram = f->k.ram;
    struct vdesc *d = (struct vdesc *)(void *)(ram + DESC);
    struct {
        uint32_t type, reserved;
        uint64_t sector;
    } h = {type, 0, sector};
    memcpy(ram + HDR, &h, sizeof h);
    ram[STATUS] = 0xee;
    unsigned n = 0;
    d[n++] = (struct vdesc){HDR, sizeof h, 1, 1};
    if (len)
        d[n++] = (struct vdesc){data, len, (uint16_t)(1 | (type == 0 || type == 8 ? 2 : 0)), 2};
    d[n - 1].next = (uint16_t)n;
    d[n++] = (struct vdesc){STATUS, 1, 2, 0};
    uint16_t *avail = (uint16_t *)(void *)(ram + AVAIL);
    avail[2 + avail_idx % QN] = 0;
    avail_idx++;
    avail[1] = avail_idx;
    bm_bitmap_clear_range(f->k.vmm_dirty, 0, RAM);
}

static uint16_t used_idx_now(struct fx *f)
{
    return __atomic_load_n((uint16_t *)(void *)(f->k.ram + USED + 2), __ATOMIC_ACQUIRE);
}

/* One request, notified by an MMIO write: returns the status byte. */
static uint8_t request(struct fx *f, uint32_t type, uint64_t sector, uint64_t data, uint32_t len)
{
    uint8_t *ram = f->k.ram;
    queue_request(f, type, sector, data, len);
    mmio_w(f, VB + 0x050, 0, 4);
    uint16_t used_idx;
    memcpy(&used_idx, ram + USED + 2, 2);
    assert_int_equal(used_idx, avail_idx);
    assert_true(bm_bitmap_test(f->k.vmm_dirty, STATUS / VM_PAGE_SIZE));
    assert_true(bm_bitmap_test(f->k.vmm_dirty, USED / VM_PAGE_SIZE));
    return ram[STATUS];
}

static void test_virtio_blk(void **state)
{
    struct fx *f = *state;
    avail_idx = 0;
    assert_int_equal(handshake(f, 1), 15);
    assert_int_equal(mmio_r(f, VB + 0x100), DISK / 512);
    assert_int_equal(mmio_r(f, VB + 0x104), 0);

    /* Write 64 KiB at sector 8, then read it back into another buffer. */
    uint8_t *ram = f->k.ram;
    for (unsigned i = 0; i < 65536; i++)
        ram[DATA + i] = (uint8_t)(i * 7 + 3);
    assert_int_equal(request(f, 1, 8, DATA, 65536), 0);
    uint8_t back[65536];
    assert_int_equal(bm_disk_pread(f->k.blk[0].disk, back, sizeof back, 4096), 0);
    assert_memory_equal(back, ram + DATA, sizeof back);
    /* A guest write does not dirty guest RAM (the data buffer stays clean). */
    assert_false(bm_bitmap_test(f->k.vmm_dirty, DATA / VM_PAGE_SIZE));

    assert_int_equal(request(f, 0, 8, DATA + 0x100000, 65536), 0);
    assert_memory_equal(ram + DATA + 0x100000, ram + DATA, 65536);
    /* A read is the VMM writing guest RAM: every page of the buffer is marked. */
    for (unsigned p = 0; p < 16; p++)
        assert_true(bm_bitmap_test(f->k.vmm_dirty, (DATA + 0x100000) / VM_PAGE_SIZE + p));

    assert_int_equal(request(f, 4, 0, 0, 0), 0);                        /* FLUSH */
    assert_int_equal(request(f, 8, 0, DATA + 0x200000, 20), 0);         /* GET_ID */
    assert_string_equal((char *)ram + DATA + 0x200000, "blkmig-vd0");
    assert_int_equal(request(f, 1, DISK / 512, DATA, 4096), 1);         /* past the end */
    assert_int_equal(request(f, 0, 0, RAM - 2048, 4096), 1);            /* buffer outside RAM */
    assert_int_equal(request(f, 99, 0, DATA, 512), 2);                  /* unsupported */

    /* Reset clears the queue; the device answers again after a new handshake. */
    mmio_w(f, VB + 0x070, 0, 4);
    assert_int_equal(mmio_r(f, VB + 0x070), 0);
    assert_int_equal(mmio_r(f, VB + 0x044), 0);
    avail_idx = 0;
    memset(ram + USED, 0, 4096);
    memset(ram + AVAIL, 0, 4096);
    assert_int_equal(handshake(f, 1), 15);
    assert_int_equal(request(f, 0, 8, DATA + 0x300000, 4096), 0);
    assert_memory_equal(ram + DATA + 0x300000, ram + DATA, 4096);
}

static void test_virtio_refuses_legacy_driver(void **state)
{
    struct fx *f = *state;
    /* A driver that does not accept VERSION_1: FEATURES_OK does not stick. */
    uint32_t st = handshake(f, 0);
    assert_int_equal(st & 8, 0);
    /* Unassigned MMIO reads as ones; a second (absent) disk slot is unassigned too. */
    assert_int_equal(mmio_r(f, VB + 0x1000), 0xffffffffu);
    assert_int_equal(mmio_r(f, 0xe0000000u), 0xffffffffu);
}

/* Interrupt lines as the device sets them. */
static unsigned irq_calls, irq_gsi;
static bool irq_level;

static void record_irq(struct kvm_vmm *k, unsigned gsi, bool level)
{
    (void)k;
    irq_calls++;
    irq_gsi = gsi;
    irq_level = level;
}

static void test_virtio_irq(void **state)
{
    struct fx *f = *state;
    f->k.set_irq = record_irq;
    irq_calls = 0;
    avail_idx = 0;
    uint16_t *avail_flags = (uint16_t *)(void *)(f->k.ram + AVAIL);
    assert_int_equal(handshake(f, 1), 15);
    assert_int_equal(irq_calls, 0);

    /* A driver that wants interrupts: a completion raises GSI 5 and sets InterruptStatus. */
    *avail_flags = 0;
    assert_int_equal(request(f, 4, 0, 0, 0), 0);
    assert_int_equal(irq_calls, 1);
    assert_int_equal(irq_gsi, KVM_VIRTIO_IRQ);
    assert_true(irq_level);
    assert_int_equal(mmio_r(f, VB + 0x060), 1);
    /* A second completion before the ack: the line is already high, no new call. */
    assert_int_equal(request(f, 4, 0, 0, 0), 0);
    assert_int_equal(irq_calls, 1);
    /* InterruptACK lowers it; acking a bit that is not set changes nothing. */
    mmio_w(f, VB + 0x064, 1, 4);
    assert_int_equal(irq_calls, 2);
    assert_false(irq_level);
    assert_int_equal(mmio_r(f, VB + 0x060), 0);
    mmio_w(f, VB + 0x064, 1, 4);
    assert_int_equal(irq_calls, 2);

    /* VRING_AVAIL_F_NO_INTERRUPT (what the test guest sets: it polls): no interrupt. */
    *avail_flags = 1;
    assert_int_equal(request(f, 4, 0, 0, 0), 0);
    assert_int_equal(irq_calls, 2);
    assert_int_equal(mmio_r(f, VB + 0x060), 0);
    /* A notification with nothing new available raises nothing either. */
    *avail_flags = 0;
    mmio_w(f, VB + 0x050, 0, 4);
    assert_int_equal(irq_calls, 2);

    /* A reset with the line high lowers it. */
    assert_int_equal(request(f, 4, 0, 0, 0), 0);
    assert_int_equal(irq_calls, 3);
    assert_true(irq_level);
    mmio_w(f, VB + 0x070, 0, 4);
    assert_int_equal(irq_calls, 4);
    assert_false(irq_level);

    /* After a load (the destination's lines start low): a pending isr raises its line. */
    f->k.blk[0].isr = 1;
    f->k.irq_level[0] = true; /* whatever the previous owner of this VMM left */
    kvm_devices_loaded(&f->k);
    assert_int_equal(irq_calls, 5);
    assert_true(irq_level);
    f->k.blk[0].isr = 0;
    kvm_devices_loaded(&f->k);
    assert_int_equal(irq_calls, 5); /* reset to low, nothing to raise */
}

/* The I/O thread, with a fake KVM_IOEVENTFD: what KVM would signal is written to the eventfd. */
static unsigned assigns, deassigns;
static int assign_result;

static int fake_assign(struct kvm_vmm *k, unsigned idx, int fd, bool assign)
{
    (void)k;
    assert_int_equal(idx, 0);
    assert_true(fd >= 0);
    if (assign_result < 0)
        return assign_result;
    if (assign)
        assigns++;
    else
        deassigns++;
    return 0;
}

/* Waits up to 5 s for the used index to reach want. */
static bool wait_used(struct fx *f, uint16_t want)
{
    for (unsigned i = 0; i < 5000 && used_idx_now(f) != want; i++)
        usleep(1000);
    return used_idx_now(f) == want;
}

static void notify_by_eventfd(struct fx *f)
{
    uint64_t one = 1;
    assert_int_equal(write(f->k.notify_fd[0], &one, sizeof one), sizeof one);
}

static void test_iothread(void **state)
{
    struct fx *f = *state;
    avail_idx = 0;
    assigns = deassigns = 0;

    /* KVM refuses the ioeventfd (as it does with one already on that address): no thread,
     * nothing left open, notifies stay MMIO exits. */
    f->k.assign_notify = fake_assign;
    assign_result = -EEXIST;
    assert_int_equal(kvm_io_start(&f->k), -EEXIST);
    assert_false(f->k.io_started);
    assert_int_equal(f->k.notify_fd[0], -1);
    assert_int_equal(f->k.io_wake_fd, -1);
    kvm_io_stop(&f->k); /* nothing to stop */

    assign_result = 0;
    assert_int_equal(kvm_io_start(&f->k), 0);
    assert_true(f->k.io_started);
    assert_int_equal(assigns, 1);
    assert_int_equal(handshake(f, 1), 15);

    /* A write notified through the eventfd is served by the thread, data and dirty marks as
     * in the vCPU thread. */
    uint8_t *ram = f->k.ram;
    memset(ram + DATA, 0x5a, 4096);
    queue_request(f, 1, 16, DATA, 4096);
    notify_by_eventfd(f);
    assert_true(wait_used(f, avail_idx));
    pthread_mutex_lock(&f->k.dev_mu); /* the thread is done with the request */
    pthread_mutex_unlock(&f->k.dev_mu);
    assert_int_equal(ram[STATUS], 0);
    assert_true(bm_bitmap_test(f->k.vmm_dirty, USED / VM_PAGE_SIZE));
    assert_int_equal(__atomic_load_n(&f->k.io_notifies, __ATOMIC_RELAXED), 1);
    uint8_t back[4096];
    assert_int_equal(bm_disk_pread(f->k.blk[0].disk, back, sizeof back, 16 * 512), 0);
    assert_memory_equal(back, ram + DATA, sizeof back);

    /* Queued but not yet served when the VM pauses: the pause serves it (the state saved
     * after it must not miss a request the guest already made). */
    queue_request(f, 0, 16, DATA + 0x10000, 4096);
    kvm_io_pause(&f->k);
    assert_int_equal(used_idx_now(f), avail_idx);
    assert_memory_equal(ram + DATA + 0x10000, ram + DATA, 4096);
    assert_true(bm_bitmap_test(f->k.vmm_dirty, (DATA + 0x10000) / VM_PAGE_SIZE));
    /* Paused, the thread leaves the devices alone, even for a request it is woken for. */
    queue_request(f, 4, 0, 0, 0);
    notify_by_eventfd(f);
    usleep(50000);
    assert_int_equal(used_idx_now(f), (uint16_t)(avail_idx - 1));
    assert_int_equal(__atomic_load_n(&f->k.io_notifies, __ATOMIC_RELAXED), 1);
    /* Resumed, the next notification serves it. */
    kvm_io_resume(&f->k);
    notify_by_eventfd(f);
    assert_true(wait_used(f, avail_idx));

    kvm_io_stop(&f->k);
    assert_false(f->k.io_started);
    assert_int_equal(deassigns, 1);
    assert_int_equal(f->k.notify_fd[0], -1);
    assert_false(atomic_load(&f->k.quit)); /* the vCPUs' flag is not the thread's */
}

/* ---- a hostile guest driver ---- */

/* A device that hangs fails the test instead of hanging it. */
static void hung(int sig)
{
    (void)sig;
    static const char msg[] = "FAIL: the virtio device did not return (hung)\n";
    ssize_t r = write(2, msg, sizeof msg - 1);
    (void)r;
    _exit(1);
}

static void watchdog(unsigned seconds)
{
    signal(SIGALRM, hung);
    alarm(seconds);
}

#define NEEDS_RESET 0x40u

/* Resets the device and makes the driver's ring memory all zeroes. */
static void reset_device(struct fx *f)
{
    mmio_w(f, VB + 0x070, 0, 4);
    assert_int_equal(mmio_r(f, VB + 0x070), 0);
    memset(f->k.ram + DESC, 0, USED + 0x1000 - DESC);
    avail_idx = 0;
}

/* The avail and used rings at the same address, and a first avail entry that names no
 * descriptor (the device skips it, so its used index trails its avail index by one): each
 * used index the device publishes lands on the avail index it compares with, one short of
 * the entry it has just taken, for ever. Served through the I/O thread, as on a real VM, whose
 * hang would take pause (kvm_io_pause: dev_mu) with it. */
static void test_virtio_rings_overlap(void **state)
{
    struct fx *f = *state;
    f->k.set_irq = record_irq;
    f->k.assign_notify = fake_assign;
    assign_result = 0;
    assert_int_equal(kvm_io_start(&f->k), 0);
    reset_device(f);
    uint8_t *ram = f->k.ram;
    uint16_t *ring = (uint16_t *)(void *)(ram + AVAIL);
    queue_request(f, 4, 0, 0, 0); /* descriptors 0 and 1: a FLUSH */
    ring[0] = 1;                  /* VRING_AVAIL_F_NO_INTERRUPT */
    ring[1] = 2;                  /* two entries available: */
    ring[2] = 0xffff;             /* no such descriptor */
    ring[3] = 0;                  /* the FLUSH */
    watchdog(20);
    uint32_t st = handshake_at(f, 1, DESC, AVAIL, AVAIL);
    notify_by_eventfd(f);
    mmio_w(f, VB + 0x050, 0, 4);
    kvm_io_pause(&f->k); /* waits for the I/O thread to be off the device */
    kvm_io_resume(&f->k);
    alarm(0);
    /* Refused when the queue was made ready: it stayed unready and the device needs a
     * reset; nothing was served, nothing written over the driver's ring. */
    assert_true(st & NEEDS_RESET);
    assert_int_equal(mmio_r(f, VB + 0x044), 0);
    assert_int_equal(ring[1], 2);
    assert_int_equal(ram[STATUS], 0xee);
    /* The driver cannot clear NEEDS_RESET by writing the status... */
    mmio_w(f, VB + 0x070, 15, 4);
    assert_true(mmio_r(f, VB + 0x070) & NEEDS_RESET);
    /* ...a reset does, and the device then works again, through the I/O thread. */
    reset_device(f);
    assert_int_equal(handshake(f, 1), 15);
    memset(ram + DATA, 0x3c, 4096);
    queue_request(f, 1, 24, DATA, 4096);
    notify_by_eventfd(f);
    assert_true(wait_used(f, avail_idx));
    pthread_mutex_lock(&f->k.dev_mu);
    pthread_mutex_unlock(&f->k.dev_mu);
    assert_int_equal(ram[STATUS], 0);
    uint8_t back[4096];
    assert_int_equal(bm_disk_pread(f->k.blk[0].disk, back, sizeof back, 24 * 512), 0);
    assert_memory_equal(back, ram + DATA, sizeof back);
    kvm_io_stop(&f->k);
}

/* Rings that pass the checks at QueueReady, and a driver index that then runs more than a
 * queue ahead of the device (which overlapping writes, or a broken driver, would make):
 * nothing is served, the device needs a reset and raises a configuration interrupt. */
static void test_virtio_avail_runaway(void **state)
{
    struct fx *f = *state;
    f->k.set_irq = record_irq;
    irq_calls = 0;
    reset_device(f);
    assert_int_equal(handshake(f, 1), 15);
    uint32_t gen = mmio_r(f, VB + 0x0fc);
    queue_request(f, 4, 0, 0, 0);
    uint16_t *avail = (uint16_t *)(void *)(f->k.ram + AVAIL);
    avail[0] = 1; /* no used-buffer interrupts: the one raised is the configuration's */
    avail[1] = QN + 1;
    watchdog(20);
    mmio_w(f, VB + 0x050, 0, 4);
    alarm(0);
    assert_int_equal(used_idx_now(f), 0);
    assert_true(mmio_r(f, VB + 0x070) & NEEDS_RESET);
    assert_int_equal(mmio_r(f, VB + 0x060), 2);
    assert_int_equal(mmio_r(f, VB + 0x0fc), gen + 1);
    assert_int_equal(irq_calls, 1);
    assert_true(irq_level);
    /* Stopped: a sane index now is not served either, until a reset. */
    avail[1] = 1;
    mmio_w(f, VB + 0x050, 0, 4);
    assert_int_equal(used_idx_now(f), 0);
    reset_device(f);
    assert_int_equal(handshake(f, 1), 15);
    assert_int_equal(request(f, 4, 0, 0, 0), 0);
}

/* Rings placed against the virtio rules are refused when the queue is made ready. */
static void test_virtio_rings_refused(void **state)
{
    struct fx *f = *state;
    static const struct {
        uint64_t desc, avail, used;
    } bad[] = {
        {DESC + 8, AVAIL, USED},              /* descriptor table not 16-byte aligned */
        {DESC, AVAIL + 1, USED},              /* driver area not 2-byte aligned */
        {DESC, AVAIL, USED + 2},              /* device area not 4-byte aligned */
        {DESC, AVAIL, RAM - 16},              /* device area past the end of RAM */
        {RAM, AVAIL, USED},                   /* descriptor table outside RAM */
        {0xfffffffffffffff0ull, AVAIL, USED}, /* wraps around */
        {DESC, DESC + 0x40, USED},            /* driver area inside the descriptor table */
        {DESC, AVAIL, AVAIL + 16},            /* device area over the driver area's end */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        reset_device(f);
        uint32_t st = handshake_at(f, 1, bad[i].desc, bad[i].avail, bad[i].used);
        assert_true(st & NEEDS_RESET);
        assert_int_equal(mmio_r(f, VB + 0x044), 0);
        assert_int_equal(f->k.blk[0].qready, 0);
    }
    /* Rings back to back, each as small as it may be, are fine. */
    reset_device(f);
    assert_int_equal(handshake_at(f, 1, DESC, DESC + 16 * QN, DESC + 16 * QN + 6 + 2 * QN + 2), 15);
    assert_int_equal(mmio_r(f, VB + 0x044), 1);
    /* While ready, the rings and the queue size do not move. */
    mmio_w(f, VB + 0x0a0, AVAIL, 4);
    mmio_w(f, VB + 0x038, 2, 4);
    assert_int_equal(f->k.blk[0].used, DESC + 16 * QN + 6 + 2 * QN + 2);
    assert_int_equal(f->k.blk[0].qnum, QN);
}

static char *slurp(FILE *fp)
{
    fflush(fp);
    static char buf[8192];
    size_t n = (size_t)pread(fileno(fp), buf, sizeof buf - 1, 0);
    buf[n] = 0;
    return buf;
}

static void test_console(void **state)
{
    struct fx *f = *state;
    const char *status = "BMG status t_ms=100 hb=42 ram_writes=7 ram_checks=6 disk_writes=5 "
                         "disk_checks=4 errors=0 max_gap_us=1234 gap_us=99\n";
    strcpy((char *)f->k.ram + 0x9000, status);
    mmio_w(f, KVM_CONSOLE_GPA + 0x10, 0x9000, 8);
    char *out = slurp(f->k.console);
    assert_non_null(strstr(out, "] BMG status t_ms=100 hb=42"));
    assert_int_equal(out[0], '[');
    assert_null(strstr(out, "gap_us=99\n\n")); /* the guest's newline is not doubled */
    assert_int_equal(f->k.hb, 42);
    assert_int_equal(f->k.ram_writes, 7);
    assert_int_equal(f->k.max_gap_us, 1234);
    assert_int_equal(f->k.last_gap_us, 99);
    assert_int_equal(f->k.errors, 0);

    /* The serial port: characters until a newline make one line. */
    const char *s = "BMG error RAM page 3 generation 2: bad magic\r\n";
    for (const char *p = s; *p; p++) {
        memset(&f->run, 0, sizeof f->run);
        f->run.exit_reason = KVM_EXIT_IO;
        f->run.io.direction = KVM_EXIT_IO_OUT;
        f->run.io.size = 1;
        f->run.io.port = 0x3f8;
        f->run.io.count = 1;
        f->run.io.data_offset = offsetof(struct kvm_run, s); /* spare bytes */
        *((uint8_t *)&f->run + f->run.io.data_offset) = (uint8_t)*p;
        kvm_handle_io(&f->k, &f->run);
    }
    out = slurp(f->k.console);
    assert_non_null(strstr(out, "] BMG error RAM page 3 generation 2: bad magic\n"));
    assert_non_null(strstr(f->k.first_error, "bad magic"));

    /* Exit through the console page and through isa-debug-exit. */
    mmio_w(f, KVM_CONSOLE_GPA + 0x04, 3, 4);
    assert_int_equal(f->k.exit_status, 3);
    assert_true(f->k.halted);
    memset(&f->run, 0, sizeof f->run);
    f->run.io.direction = KVM_EXIT_IO_OUT;
    f->run.io.size = 4;
    f->run.io.port = 0xf4;
    f->run.io.count = 1;
    f->run.io.data_offset = offsetof(struct kvm_run, s);
    uint32_t v = 0;
    memcpy((uint8_t *)&f->run + f->run.io.data_offset, &v, 4);
    kvm_handle_io(&f->k, &f->run);
    assert_int_equal(f->k.exit_status, 0);
    /* A line whose address is outside RAM prints what there is (nothing), no crash. */
    mmio_w(f, KVM_CONSOLE_GPA + 0x10, RAM + 4096, 8);
}

/* A guest that halted for good (its own exit, a vCPU error) is dead, and says how; a running
 * one is not (a migration refuses, or fails on, a dead guest). */
static void test_dead(void **state)
{
    struct fx *f = *state;
    char why[300] = "";
    assert_false(kvm_dead(&f->k.vm, why, sizeof why));
    mmio_w(f, KVM_CONSOLE_GPA + 0x04, 3, 4); /* the guest exits, status 3 */
    assert_true(kvm_dead(&f->k.vm, why, sizeof why));
    assert_string_equal(why, "the guest exited (status 3)");
    f->k.exit_status = -1; /* a vCPU error instead (vcpu.c vcpu_fatal), after a guest's report */
    snprintf(f->k.first_error, sizeof f->k.first_error, "BMG error RAM page 3: bad magic");
    snprintf(f->k.halt_reason, sizeof f->k.halt_reason, "triple fault (shutdown)");
    assert_true(kvm_dead(&f->k.vm, why, sizeof why));
    assert_string_equal(why, "the guest stopped (vCPU: triple fault (shutdown))");
    assert_true(kvm_dead(&f->k.vm, NULL, 0)); /* whether only */
}

/* --console unix:PATH: each line is one send on the socket; a reader gone away ends the
 * console (a warning, no SIGPIPE), and the VM goes on counting status lines. */
static void test_console_socket(void **state)
{
    struct fx *f = *state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    f->k.console_fd = sv[0];
    strcpy((char *)f->k.ram + 0x9000, "BMG status t_ms=5 hb=7 ram_writes=1 errors=0\n");
    mmio_w(f, KVM_CONSOLE_GPA + 0x10, 0x9000, 8);
    char buf[256];
    ssize_t n = recv(sv[1], buf, sizeof buf - 1, MSG_DONTWAIT);
    assert_true(n > 0);
    buf[n] = 0;
    assert_int_equal(buf[0], '[');
    assert_non_null(strstr(buf, "] BMG status t_ms=5 hb=7 ram_writes=1 errors=0\n"));
    assert_null(strchr(strchr(buf, '\n') + 1, '\n')); /* one line, the newline not doubled */
    assert_int_equal(f->k.hb, 7);
    /* The reader goes away: the next line fails to send, the console stops, the line still
     * counts; nothing is written to the file console instead. */
    close(sv[1]);
    strcpy((char *)f->k.ram + 0x9000, "BMG status t_ms=6 hb=8 ram_writes=2 errors=0\n");
    mmio_w(f, KVM_CONSOLE_GPA + 0x10, 0x9000, 8);
    assert_true(f->k.console_fd < -1);
    assert_int_equal(f->k.hb, 8);
    mmio_w(f, KVM_CONSOLE_GPA + 0x10, 0x9000, 8); /* and again: no crash, no output */
    char *out = slurp(f->k.console);
    assert_null(strstr(out, "BMG status"));
    f->k.console_fd = -1;
}

/* ---- the PVH loader ---- */

static const char *guest_elf(void)
{
    static char path[4096];
    const char *b = getenv("top_builddir");
    snprintf(path, sizeof path, "%s/vm/guest/blkmig-guest.elf", b ? b : ".");
    return path;
}

static void test_load_guest(void **state)
{
    struct fx *f = *state;
    if (access(guest_elf(), R_OK) != 0)
        skip();
    f->k.guest_path = strdup(guest_elf());
    f->k.workload = "mem=1M/s,hot=1M";
    f->k.cfg.status_ms = 250;
    uint64_t entry = 0;
    char err[256] = "";
    assert_int_equal(kvm_load_guest(&f->k, &entry, err, sizeof err), 0);
    /* The image is in RAM at 1 MiB: first the layout record's page (still empty: the guest
     * fills it), then the entry code (cli; cld). */
    assert_int_equal(entry, BM_LAYOUT_GPA + 0x1000);
    assert_true(bm_fmt_all_zero(f->k.ram + BM_LAYOUT_GPA));
    assert_int_equal(f->k.ram[entry], 0xfa);
    assert_int_equal(f->k.ram[entry + 1], 0xfc);
    const char *cmd = (const char *)f->k.ram + KVM_CMDLINE_GPA;
    assert_non_null(strstr(cmd, "blkmig.console=0xd0000000"));
    assert_non_null(strstr(cmd, "virtio_mmio.device=512@0xd0001000:5"));
    assert_non_null(strstr(cmd, "blkmig.status_ms=250"));
    assert_non_null(strstr(cmd, "blkmig.workload=mem=1M/s,hot=1M"));
    uint32_t magic, version, entries;
    uint64_t cmdline, memmap, mm[2];
    memcpy(&magic, f->k.ram + KVM_START_INFO_GPA, 4);
    memcpy(&version, f->k.ram + KVM_START_INFO_GPA + 4, 4);
    memcpy(&cmdline, f->k.ram + KVM_START_INFO_GPA + 24, 8);
    memcpy(&memmap, f->k.ram + KVM_START_INFO_GPA + 40, 8);
    memcpy(&entries, f->k.ram + KVM_START_INFO_GPA + 48, 4);
    memcpy(mm, f->k.ram + memmap, 16);
    assert_int_equal(magic, 0x336ec578);
    assert_int_equal(version, 1);
    assert_int_equal(cmdline, KVM_CMDLINE_GPA);
    assert_int_equal(entries, 1);
    assert_int_equal(mm[0], 0);
    assert_int_equal(mm[1], RAM);
    /* Everything the loader wrote is marked for the dirty log. */
    assert_true(bm_bitmap_test(f->k.vmm_dirty, 0x100000 / VM_PAGE_SIZE));
    assert_true(bm_bitmap_test(f->k.vmm_dirty, KVM_CMDLINE_GPA / VM_PAGE_SIZE));
    assert_true(bm_bitmap_test(f->k.vmm_dirty, KVM_START_INFO_GPA / VM_PAGE_SIZE));
    f->k.workload = NULL;
}

static void test_load_bad_files(void **state)
{
    struct fx *f = *state;
    char path[128], err[256];
    uint64_t entry;
    snprintf(path, sizeof path, "%s/bad.elf", f->dir);
    f->k.guest_path = path;
    /* Missing, not an ELF, an ELF with no PVH note. */
    assert_true(kvm_load_guest(&f->k, &entry, err, sizeof err) < 0);
    assert_non_null(strstr(err, "cannot open"));
    FILE *fp = fopen(path, "w");
    fputs("this is not an ELF file, just text that is long enough to be read as one.....", fp);
    fclose(fp);
    assert_int_equal(kvm_load_guest(&f->k, &entry, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "not a little-endian ELF"));
    if (access("/bin/true", R_OK) == 0) {
        f->k.guest_path = "/bin/true";
        assert_true(kvm_load_guest(&f->k, &entry, err, sizeof err) < 0);
        assert_non_null(strstr(err, "guest /bin/true"));
    }
    f->k.guest_path = NULL;
    unlink(path);
}

/* ---- the state loader refuses malformed blobs before any ioctl ---- */

static void put_section(uint8_t *b, size_t *n, uint32_t tag, const void *p, uint32_t len)
{
    memcpy(b + *n, &tag, 4);
    memcpy(b + *n + 4, &len, 4);
    memcpy(b + *n + 8, p, len);
    *n += 8 + len;
}

static void test_load_state_malformed(void **state)
{
    struct fx *f = *state;
    /* A vCPU whose fd is not KVM's: an ioctl reaching it fails with ENOTTY, not EPROTO. */
    f->k.nvcpus = 1;
    f->k.vcpus[0].fd = open("/dev/null", O_RDONLY);
    assert_true(f->k.vcpus[0].fd >= 0);
    static uint8_t b[4096];
    size_t n = 0;
    memcpy(b, "NOTKVMST", 8);
    assert_int_equal(kvm_load(&f->k.vm, b, 8), -EPROTO);
    memcpy(b, "BMKVMST1", 8);
    n = 8;
    /* An MSR section that claims 5 entries but holds 1. */
    struct {
        struct kvm_msrs h;
        struct kvm_msr_entry e[1];
    } m = {.h = {.nmsrs = 5}, .e = {{.index = 0x174}}};
    put_section(b, &n, 8 /* T_MSRS */, &m, sizeof m);
    assert_int_equal(kvm_load(&f->k.vm, b, n), -EPROTO);
    /* A section longer than the blob; a section of the wrong size. */
    n = 8;
    put_section(b, &n, 8, &m, sizeof m);
    assert_int_equal(kvm_load(&f->k.vm, b, n - 4), -EPROTO);
    n = 8;
    uint8_t junk[10] = {0};
    put_section(b, &n, 2 /* T_REGS */, junk, sizeof junk);
    assert_int_equal(kvm_load(&f->k.vm, b, n), -EPROTO);
    /* A virtio queue size that is not a power of two up to 256. */
    n = 8;
    struct kvm_vblk v = {.qnum = 1000};
    put_section(b, &n, 64 /* T_VBLK */, &v, sizeof v);
    assert_int_equal(kvm_load(&f->k.vm, b, n), -EPROTO);
    /* A ready queue whose rings overlap, or lie outside guest RAM. */
    v = (struct kvm_vblk){.qnum = 8, .qready = 1, .desc = DESC, .avail = AVAIL, .used = AVAIL};
    n = 8;
    put_section(b, &n, 64, &v, sizeof v);
    assert_int_equal(kvm_load(&f->k.vm, b, n), -EPROTO);
    assert_int_equal(f->k.blk[0].qready, 0); /* refused before it reached the device */
    v.used = RAM;
    n = 8;
    put_section(b, &n, 64, &v, sizeof v);
    assert_int_equal(kvm_load(&f->k.vm, b, n), -EPROTO);
    assert_int_equal(f->k.blk[0].qready, 0);
    /* A TSC section whose length is not a header and whole vCPU entries; one for 2 vCPUs in a
     * VM of 1; one that says 2 vCPUs but holds 1. */
    struct {
        uint64_t khz, realtime;
        uint32_t nvcpus, flags;
        uint64_t v[4];
    } t = {.khz = 1000000, .nvcpus = 1};
    n = 8;
    put_section(b, &n, 35 /* T_TSC */, &t, 24 + 16 + 5);
    assert_int_equal(kvm_load(&f->k.vm, b, n), -EPROTO);
    n = 8;
    put_section(b, &n, 35, &t, 24 + 32);
    assert_int_equal(kvm_load(&f->k.vm, b, n), -EPROTO);
    t.nvcpus = 2;
    n = 8;
    put_section(b, &n, 35, &t, 24 + 16);
    assert_int_equal(kvm_load(&f->k.vm, b, n), -EPROTO);
    /* The whole blob is checked before any of it is loaded: good sections ahead of a bad one
     * change nothing (the serial line stays) and reach no ioctl (EPROTO, not ENOTTY). */
    memcpy(f->k.serial_line, "before", 7);
    f->k.serial_len = 6;
    n = 8;
    put_section(b, &n, 65 /* T_SERIAL */, "xyz", 3);
    put_section(b, &n, 2, junk, sizeof junk);
    assert_int_equal(kvm_load(&f->k.vm, b, n), -EPROTO);
    assert_string_equal(f->k.serial_line, "before");
    assert_int_equal(f->k.serial_len, 6);
    struct kvm_mp_state mp = {0};
    n = 8;
    put_section(b, &n, 1 /* T_MP_STATE */, &mp, sizeof mp);
    put_section(b, &n, 2, junk, sizeof junk);
    assert_int_equal(kvm_load(&f->k.vm, b, n), -EPROTO);
    /* kvm_state_check alone: a VM of one vCPU and one disk takes its events and its disk,
     * and refuses a second disk, a missing one, or no vCPU events. */
    struct kvm_vcpu_events ev = {0};
    struct kvm_vblk q = {.qnum = 8};
    n = 8;
    put_section(b, &n, 9 /* T_EVENTS */, &ev, sizeof ev);
    assert_int_equal(kvm_state_check(b, n, 1, 0, RAM), 0);
    assert_int_equal(kvm_state_check(b, n, 1, 1, RAM), -EPROTO);
    assert_int_equal(kvm_state_check(b, n, 0, 0, RAM), -EPROTO);
    put_section(b, &n, 64, &q, sizeof q);
    assert_int_equal(kvm_state_check(b, n, 1, 1, RAM), 0);
    assert_int_equal(kvm_state_check(b, n - 1, 1, 1, RAM), -EPROTO);
    put_section(b, &n, 64, &q, sizeof q);
    assert_int_equal(kvm_state_check(b, n, 1, 1, RAM), -EPROTO);
    assert_int_equal(kvm_state_check(b, 16, 1, 0, RAM), -EPROTO);
    /* A ready queue's rings: inside the RAM given, apart, and aligned. */
    q = (struct kvm_vblk){.qnum = 8, .qready = 1, .desc = DESC, .avail = AVAIL, .used = USED};
    n = 8;
    put_section(b, &n, 9, &ev, sizeof ev);
    put_section(b, &n, 64, &q, sizeof q);
    assert_int_equal(kvm_state_check(b, n, 1, 1, RAM), 0);
    assert_int_equal(kvm_state_check(b, n, 1, 1, USED), -EPROTO); /* used past RAM's end */
    q.used = AVAIL;
    n = 8;
    put_section(b, &n, 9, &ev, sizeof ev);
    put_section(b, &n, 64, &q, sizeof q);
    assert_int_equal(kvm_state_check(b, n, 1, 1, RAM), -EPROTO);
    close(f->k.vcpus[0].fd);
    f->k.vcpus[0].fd = -1;
    f->k.nvcpus = 0;
}

/* The guest's TSC across hosts: guest TSC = host TSC + offset must go on from the source's,
 * plus the time that passed, whatever the two hosts' TSCs read. */
static void test_tsc_carry(void **state)
{
    (void)state;
    const uint64_t khz = 3000000; /* 3 GHz */
    const uint64_t clk_src = 5000000000ull, ofs_src = 123456789;
    const uint64_t tsc_src = 10000000000000ull; /* the source host's TSC when saved */
    uint64_t guest_src = tsc_src + ofs_src;
    /* 2 s later, on the same host: the offset does not change. */
    uint64_t tsc_dst = tsc_src + 6000000000ull;
    assert_int_equal(
        kvm_tsc_offset_after(ofs_src, clk_src, clk_src + 2000000000ull, tsc_src, tsc_dst, khz),
        ofs_src);
    /* On a host whose TSC is far behind (booted later) or ahead: the guest's TSC reads the
     * source's plus 2 s either way. */
    const int64_t skews[] = {-9000000000000ll, 7000000000000ll, 0};
    for (unsigned i = 0; i < 3; i++) {
        tsc_dst = tsc_src + (uint64_t)skews[i] + 6000000000ull;
        uint64_t ofs = kvm_tsc_offset_after(ofs_src, clk_src, clk_src + 2000000000ull, tsc_src,
                                            tsc_dst, khz);
        assert_int_equal(tsc_dst + ofs, guest_src + 6000000000ull);
    }
    /* A kvmclock read that comes out earlier (a clock step): the arithmetic is signed. */
    tsc_dst = tsc_src - 3000000ull;
    uint64_t ofs = kvm_tsc_offset_after(ofs_src, clk_src, clk_src - 1000000ull, tsc_src, tsc_dst,
                                        khz);
    assert_int_equal(tsc_dst + ofs, guest_src - 3000000ull);
    /* Without offsets: the value to write is the source's advanced by the host time. */
    assert_int_equal(kvm_tsc_value_after(guest_src, 1000, 1000 + 1500000000ull, 2000000),
                     guest_src + 3000000000ull);
    assert_int_equal(kvm_tsc_value_after(guest_src, 5000, 4000, 2000000), guest_src);
}

/* ---- CPUID: a migrated guest keeps its source's, on a host that can give it ---- */

static struct kvm_cpuid2 *cpuid_of(const struct kvm_cpuid_entry2 *e, unsigned n)
{
    struct kvm_cpuid2 *c = calloc(1, sizeof *c + n * sizeof *e);
    assert_non_null(c);
    c->nent = n;
    memcpy(c->entries, e, n * sizeof *e);
    return c;
}

static void test_cpuid(void **state)
{
    (void)state;
    /* A host: SSE3 and CX16 in leaf 1, AVX2 (bit 5) in 7.0 EBX, 7.1 EAX 0, 40 address bits. */
    const struct kvm_cpuid_entry2 host_e[] = {
        {.function = 0, .eax = 0xd},
        {.function = 1, .ecx = 0x2001, .edx = 0x078bfbff},
        {.function = 7, .index = 0, .flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX, .ebx = 1u << 5},
        {.function = 7, .index = 1, .flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX},
        {.function = 0x80000008, .eax = 0x3028},
    };
    struct kvm_cpuid2 *host = cpuid_of(host_e, 5), *want = cpuid_of(host_e, 5);
    char why[512];
    /* The same CPUID: compatible. */
    assert_int_equal(kvm_cpuid_compatible(want, host, why, sizeof why), 0);
    assert_string_equal(why, "");
    /* Bits KVM sets from guest state (OSXSAVE after CR4.OSXSAVE) do not count. */
    want->entries[1].ecx |= 1u << 27;
    assert_int_equal(kvm_cpuid_compatible(want, host, why, sizeof why), 0);
    /* A host with more than the guest saw: compatible. */
    want->entries[2].ebx = 0;
    assert_int_equal(kvm_cpuid_compatible(want, host, why, sizeof why), 0);
    /* The guest saw AVX-512F (7.0 EBX bit 16) and 7.1 EAX bit 4: refused, both named. */
    want->entries[2].ebx = (1u << 16) | (1u << 5);
    want->entries[3].eax = 1u << 4;
    assert_int_equal(kvm_cpuid_compatible(want, host, why, sizeof why), -1);
    assert_non_null(strstr(why, "leaf 0x7.0 EBX bits 0x00010000"));
    assert_non_null(strstr(why, "leaf 0x7.1 EAX bits 0x00000010"));
    /* A subleaf the host does not list counts as all zero; so does a missing leaf. */
    want->entries[2].ebx = 1u << 5;
    want->entries[3].eax = 0;
    want->entries[4].eax = 0x302e; /* 46 address bits, the host has 40 */
    assert_int_equal(kvm_cpuid_compatible(want, host, why, sizeof why), -1);
    assert_non_null(strstr(why, "46 physical address bits, here 40"));
    free(want);
    const struct kvm_cpuid_entry2 more[] = {{.function = 0x80000007, .edx = 1u << 8}};
    want = cpuid_of(more, 1);
    assert_int_equal(kvm_cpuid_compatible(want, host, why, sizeof why), -1);
    assert_non_null(strstr(why, "leaf 0x80000007.0 EDX bits 0x00000100"));
    /* A tiny why[] is not overrun. */
    char small[8];
    assert_int_equal(kvm_cpuid_compatible(want, host, small, sizeof small), -1);
    assert_true(strlen(small) < sizeof small);
    free(want);

    /* The description's form: a round trip keeps every field. */
    struct json_object *j = kvm_cpuid_to_json(host);
    char err[256] = "";
    struct kvm_cpuid2 *back = kvm_cpuid_from_json(j, err, sizeof err);
    assert_non_null(back);
    assert_int_equal(back->nent, host->nent);
    assert_memory_equal(back->entries, host->entries, host->nent * sizeof host->entries[0]);
    free(back);
    json_object_put(j);
    /* Malformed: not a list, empty, an entry of 6 numbers, a value over 32 bits, a string. */
    const char *bad[] = {"{}", "[]", "[[1,0,0,0,0,0]]", "[[1,0,0,4294967296,0,0,0]]",
                         "[[1,0,0,\"x\",0,0,0]]", "[[1,0,0,-1,0,0,0]]"};
    for (unsigned i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        j = json_tokener_parse(bad[i]);
        assert_non_null(j);
        err[0] = 0;
        assert_null(kvm_cpuid_from_json(j, err, sizeof err));
        assert_true(strstr(err, "CPUID") != NULL);
        json_object_put(j);
    }
    /* More entries than KVM takes. */
    j = json_object_new_array();
    for (unsigned i = 0; i <= KVM_CPUID_MAX; i++)
        json_object_array_add(j, json_tokener_parse("[1,0,0,0,0,0,0]"));
    assert_null(kvm_cpuid_from_json(j, err, sizeof err));
    json_object_put(j);
    free(host);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_virtio_blk, setup, teardown),
        cmocka_unit_test_setup_teardown(test_virtio_refuses_legacy_driver, setup, teardown),
        cmocka_unit_test_setup_teardown(test_virtio_irq, setup, teardown),
        cmocka_unit_test_setup_teardown(test_iothread, setup, teardown),
        cmocka_unit_test_setup_teardown(test_virtio_rings_overlap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_virtio_avail_runaway, setup, teardown),
        cmocka_unit_test_setup_teardown(test_virtio_rings_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_console_socket, setup, teardown),
        cmocka_unit_test_setup_teardown(test_console, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dead, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_guest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_bad_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_state_malformed, setup, teardown),
        cmocka_unit_test(test_tsc_carry),
        cmocka_unit_test(test_cpuid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
