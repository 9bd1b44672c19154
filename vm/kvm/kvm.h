/* kvm.h: the KVM micro-VM backend (ARCHITECTURE §3, §8; docs/vmm.md): one vCPU (the code keeps
 * an array), guest RAM below the 3 GiB MMIO hole, an in-kernel irqchip and PIT, a PVH ELF
 * guest (vm/guest), an MMIO console page plus the 8250 and isa-debug-exit ports, and
 * virtio-mmio block devices backed by bm_disk (so the dirty-block bitmap sees every write). */
#ifndef BM_VM_KVM_H
#define BM_VM_KVM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vm/vm.h"

#define KVM_DEFAULT_DEVICE "/dev/kvm"

/* Guest-physical map. */
#define KVM_MAX_RAM     (3ull << 30)  /* RAM is [0, ram) below this */
#define KVM_CONSOLE_GPA 0xd0000000ull /* the MMIO console page */
#define KVM_VIRTIO_GPA  0xd0001000ull /* virtio-mmio window k at + k * 0x1000 */
#define KVM_VIRTIO_SIZE 0x200u
#define KVM_VIRTIO_IRQ  5u /* + k: GSI of disk k (level: high while its isr is set) */
#define KVM_MAX_DISKS 8u

struct kvm_cpuid2;
struct json_object;

struct kvm_config {
    uint64_t ram;         /* bytes, a multiple of 2 MiB, at most KVM_MAX_RAM */
    const char *guest;    /* PVH ELF path */
    const char *workload; /* the guest's blkmig.workload= (may be NULL) */
    const char *extra_cmdline;
    const char *console; /* file for the console (NULL: stderr) */
    unsigned status_ms;  /* the guest's status period (0: 1000) */
    /* The vCPUs' CPUID: a migration source's (kvm_cpuid_from_json), refused unless this
     * host's KVM supports every feature in it; NULL: this host's KVM_GET_SUPPORTED_CPUID. */
    const struct kvm_cpuid2 *cpuid;
};

#define KVM_CPUID_MAX 256u /* entries (KVM's own limit, KVM_MAX_CPUID_ENTRIES) */

/* CPUID in a VM description: [[function, index, flags, eax, ebx, ecx, edx], ...]. */
struct json_object *kvm_cpuid_to_json(const struct kvm_cpuid2 *c);
/* Parses that (malloc'd; the caller frees), or NULL with the reason in err. */
struct kvm_cpuid2 *kvm_cpuid_from_json(struct json_object *a, char *err, size_t errlen);
/* Whether a guest shown want can run on a host whose KVM supports host: every CPU feature bit
 * of want (bar those KVM derives from guest state) is in host, and host's physical address
 * width is as wide. 0, or -1 with what is missing in why. */
int kvm_cpuid_compatible(const struct kvm_cpuid2 *want, const struct kvm_cpuid2 *host, char *why,
                         size_t len);

/* Whether KVM can run a VM here: 0, or -errno with the reason in why. */
int kvm_probe(char *why, size_t len);

/* The test guest installed with blkmig (or next to the binary in a build tree), or NULL. */
const char *kvm_default_guest(void);

/* Whether the micro-VM takes a VM of this shape (RAM 16M..3G in 2M steps, at most
 * KVM_MAX_DISKS disks): 0, or -EINVAL with the reason in why. kvm_fits checks this first. */
int kvm_check_shape(uint64_t ram, unsigned ndisks, char *why, size_t len);

/* Whether the micro-VM can run this VM here (what makes it the default guest of run and demo):
 * KVM usable, a guest ELF (guest, or the installed test guest), RAM 16M..3G in 2M multiples, at
 * most KVM_MAX_DISKS disks. 0, or -errno with the reason in why. */
int kvm_fits(uint64_t ram, unsigned ndisks, const char *guest, char *why, size_t len);

typedef void (*kvm_event_fn)(void *opaque, const char *event, struct json_object *data);

/* Create the VM with these disks (kept open by the caller until destroy). boot = true loads
 * the guest and runs it; boot = false leaves it paused, to receive a migration. */
int kvm_create(const struct kvm_config *cfg, const struct vm_disk *disks, unsigned ndisks,
               bool boot, kvm_event_fn fn, void *opaque, struct vm **out, char *err, size_t errlen);

#endif
