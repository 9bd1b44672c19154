/* memory.c: the KVM micro-VM's guest RAM (one memslot) and its dirty log: KVM's
 * (KVM_GET_DIRTY_LOG) OR'd with the VMM's own marks for what it writes into guest RAM
 * (virtio). Design: docs/vmm.md. */
#include <config.h>

#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include "common/log.h"
#include "vm/kvm/kvm-internal.h"

void *kvm_gpa(struct kvm_vmm *k, uint64_t gpa, uint64_t len)
{
    if (gpa >= k->ram_size || len > k->ram_size - gpa)
        return NULL;
    return k->ram + gpa;
}

void kvm_mark_dirty(struct kvm_vmm *k, uint64_t gpa, uint64_t len)
{
    if (len && gpa < k->ram_size)
        bm_bitmap_set_range(k->vmm_dirty, gpa, len < k->ram_size - gpa ? len : k->ram_size - gpa);
}

/* Guest RAM: anonymous, 2 MiB aligned and madvised for transparent huge pages. The alignment
 * is what lets KVM map the guest with 2 MiB NPT/EPT entries (a huge page on the host backs a
 * 2 MiB-aligned guest range only if host and guest addresses agree modulo 2 MiB), so that a
 * destination's first touches after a migration fault once per 2 MiB instead of per page.
 * (Kernels before 6.7 do not align large anonymous mappings by themselves.) */
int kvm_map_ram(struct kvm_vmm *k)
{
    const size_t huge = 2u << 20;
    size_t len = k->ram_size + huge;
    uint8_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    uint8_t *a = (uint8_t *)(((uintptr_t)p + huge - 1) & ~(uintptr_t)(huge - 1));
    if (a > p)
        munmap(p, (size_t)(a - p));
    if (a + k->ram_size < p + len)
        munmap(a + k->ram_size, (size_t)(p + len - (a + k->ram_size)));
    k->ram = a;
    if (madvise(k->ram, k->ram_size, MADV_HUGEPAGE) < 0)
        bm_debug("kvm: MADV_HUGEPAGE: %s", strerror(errno));
    return 0;
}

int kvm_set_slot(struct kvm_vmm *k, bool log)
{
    struct kvm_userspace_memory_region m = {
        .slot = 0,
        .flags = log ? KVM_MEM_LOG_DIRTY_PAGES : 0,
        .guest_phys_addr = 0,
        .memory_size = k->ram_size,
        .userspace_addr = (uint64_t)(uintptr_t)k->ram,
    };
    return ioctl(k->vm_fd, KVM_SET_USER_MEMORY_REGION, &m) < 0 ? -errno : 0;
}

int kvm_dirty_start(struct vm *vm)
{
    struct kvm_vmm *k = K(vm);
    int r = kvm_set_slot(k, true);
    if (r < 0) {
        bm_error("kvm: enabling the dirty log: %s", strerror(-r));
        return r;
    }
    k->logging = true;
    bm_bitmap_clear_range(k->vmm_dirty, 0, k->ram_size);
    return 0;
}

int kvm_dirty_sync(struct vm *vm, struct bm_bitmap *out)
{
    struct kvm_vmm *k = K(vm);
    if (k->logging) {
        size_t words = (size_t)((k->ram_size / VM_PAGE_SIZE + 63) / 64);
        memset(k->log_buf, 0, words * sizeof(unsigned long));
        struct kvm_dirty_log d = {.slot = 0, .dirty_bitmap = k->log_buf};
        if (ioctl(k->vm_fd, KVM_GET_DIRTY_LOG, &d) < 0) {
            int e = errno;
            bm_error("kvm: KVM_GET_DIRTY_LOG: %s", strerror(e));
            return -e;
        }
        for (size_t w = 0; w < words; w++) {
            unsigned long v = k->log_buf[w];
            while (v) {
                unsigned b = (unsigned)__builtin_ctzl(v);
                v &= v - 1;
                bm_bitmap_set_bits(out, (uint64_t)w * 64 + b, 1);
            }
        }
    }
    return bm_bitmap_snapshot_and_clear(k->vmm_dirty, out);
}

void kvm_dirty_stop(struct vm *vm)
{
    struct kvm_vmm *k = K(vm);
    if (k->logging && kvm_set_slot(k, false) == 0)
        k->logging = false;
}
