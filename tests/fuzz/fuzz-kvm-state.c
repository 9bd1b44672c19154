/* fuzz-kvm-state.c: the KVM micro-VM's saved-state blob as a destination's kvm_load checks it
 * (kvm_state_check, vm/kvm/state.c) before any section reaches KVM: framing, section sizes, the
 * counts inside MSRS and TSC, virtio queue sizes, the rings of ready queues (in 1 MiB of guest
 * RAM), and the vCPUs and disks it carries against the VM's. No /dev/kvm is needed.
 * Input: u8 (bits 0-4: the VM's disks, modulo 17; bit 7: the blob includes its magic, else
 * the harness puts "BMKVMST1" in front), then the blob. */
#include <config.h>

#include <errno.h>

#include "tests/fuzz/fuzz.h"
#include "vm/kvm/kvm-internal.h"

#define RAM_SIZE (1u << 20)

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_quiet();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return -1;
    unsigned ndisks = (data[0] & 31) % (VM_MAX_DISKS + 1);
    size_t len = size - 1 + (data[0] & 0x80 ? 0 : 8);
    /* A buffer of exactly the blob's size, so that ASan sees any read past it. */
    uint8_t *blob = malloc(len ? len : 1);
    if (!blob)
        abort();
    if (data[0] & 0x80) {
        memcpy(blob, data + 1, size - 1);
    } else {
        memcpy(blob, "BMKVMST1", 8);
        memcpy(blob + 8, data + 1, size - 1);
    }
    int r = kvm_state_check(blob, len, KVM_MAX_VCPUS, ndisks, RAM_SIZE);
    if (r != 0 && r != -EPROTO)
        abort();
    free(blob);
    return 0;
}
