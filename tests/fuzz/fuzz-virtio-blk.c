/* fuzz-virtio-blk.c: the KVM micro-VM's virtio-mmio block device (vm/kvm/devices.c) driven by
 * a fuzzed guest without /dev/kvm, as tests/unit/test-kvm.c drives it: the guest pokes its RAM
 * (descriptor tables, rings, request headers), and reads and writes the device's registers
 * and the console's; a QueueNotify serves what the avail ring holds against a 64 KiB disk.
 * Input: operations, each u8 op, then
 *   0 poke:    u16 gpa | u8 n | n bytes into guest RAM
 *   1 write:   u16 register offset | u32 value      (a 4-byte MMIO write to disk 0)
 *   2 read:    u16 register offset | u8 length       (1-8)
 *   3 console: u8 register (0: serial, 0x04 exit, 0x10 line at gpa) | u32 value
 *   4 notify:  a QueueNotify of queue 0
 * Guest RAM is 64 KiB, zeroed (and the disk emptied) before each input. */
#include <config.h>

#include <fcntl.h>

#include "tests/fuzz/fuzz.h"
#include "vm/kvm/kvm-internal.h"

#define RAM  (64u << 10)
#define DISK (64u << 10)

static struct kvm_vmm k;
static int disk_fd = -1;

static void teardown(void)
{
    bm_disk_close(k.blk[0].disk);
    fclose(k.console);
    free(k.ram);
    bm_bitmap_free(k.vmm_dirty);
    close(disk_fd);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_quiet();
    const char *path = fuzz_tmp_file(0, "vda.img", DISK);
    struct bm_disk *d;
    k.ram_size = RAM;
    k.ram = calloc(1, RAM);
    k.vmm_dirty = bm_bitmap_new(RAM, VM_PAGE_SIZE);
    k.console = fopen("/dev/null", "w");
    disk_fd = open(path, O_RDWR | O_CLOEXEC);
    if (!k.ram || !k.vmm_dirty || !k.console || disk_fd < 0 || bm_disk_open(path, 0, &d) < 0)
        abort();
    pthread_mutex_init(&k.mu, NULL);
    pthread_mutex_init(&k.dev_mu, NULL);
    pthread_cond_init(&k.cv, NULL);
    k.io_wake_fd = -1;
    k.console_fd = -1;
    k.vcpus[0].fd = -1;
    k.vm.ndisks = 1;
    snprintf(k.vm.disks[0].name, sizeof k.vm.disks[0].name, "vda");
    k.vm.disks[0].disk = d;
    atexit(teardown);
    return 0;
}

/* Everything an input may have changed, back to a fresh VM's. */
static void reset(void)
{
    struct bm_disk *d = k.vm.disks[0].disk;
    memset(k.ram, 0, RAM);
    bm_bitmap_clear_range(k.vmm_dirty, 0, RAM);
    memset(&k.blk[0], 0, sizeof k.blk[0]);
    k.blk[0].disk = d;
    k.blk[0].size = DISK;
    k.irq_level[0] = false;
    k.exit_status = -1;
    k.halted = false;
    k.serial_len = 0;
    if (ftruncate(disk_fd, 0) < 0 || ftruncate(disk_fd, DISK) < 0)
        abort();
}

/*
 * The regression inputs (corpus/virtio-blk/regress-*) are three bugs this harness found in the
 * device: used and avail rings overlapping so that a notify looped for good
 * (regress-hang-ring-overlap), rings at addresses the virtio spec does not allow, once reached
 * through misaligned pointers (regress-misaligned-used), and an avail index more than a queue
 * ahead, once served round and round for one notify (regress-avail-far-ahead). The device now
 * refuses such rings at QueueReady and puts itself in NEEDS_RESET for a runaway index.
 */

static void mmio(uint64_t a, bool write, uint64_t v, uint32_t len)
{
    struct kvm_run run;
    memset(&run, 0, sizeof run);
    run.exit_reason = KVM_EXIT_MMIO;
    run.mmio.phys_addr = a;
    run.mmio.len = len;
    run.mmio.is_write = write;
    memcpy(run.mmio.data, &v, len);
    kvm_handle_mmio(&k, &run);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 16384)
        return -1;
    reset();
    struct fuzz_in in = {data, size, false};
    while (in.left) {
        uint8_t op = fuzz_u8(&in);
        switch (op % 5) {
        case 0: {
            uint16_t gpa = fuzz_u16(&in);
            uint8_t n = fuzz_u8(&in);
            size_t room = RAM - gpa < n ? RAM - gpa : n;
            fuzz_take(&in, k.ram + gpa, room);
            break;
        }
        case 1: {
            uint16_t off = fuzz_u16(&in);
            mmio(KVM_VIRTIO_GPA + (off & 0xfff), true, fuzz_u32(&in), 4);
            break;
        }
        case 2: {
            uint16_t off = fuzz_u16(&in);
            mmio(KVM_VIRTIO_GPA + (off & 0xfff), false, 0, 1 + fuzz_u8(&in) % 8);
            break;
        }
        case 3: {
            uint8_t reg = fuzz_u8(&in);
            mmio(KVM_CONSOLE_GPA + (reg & 0x1c), true, fuzz_u32(&in), 4);
            break;
        }
        default:
            mmio(KVM_VIRTIO_GPA + 0x050, true, 0, 4);
            break;
        }
    }
    return 0;
}
