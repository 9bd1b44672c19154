/* vm.h: the VM backend interface: what migration needs from any VM, and nothing more. */
#ifndef BM_VM_VM_H
#define BM_VM_VM_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blockmirror/disk.h"
#include "common/bitmap.h"

#define VM_PAGE_SIZE 4096u
#define VM_MAX_REGIONS 4
#define VM_MAX_DISKS 16
#define VM_DISK_NAME_MAX 32

/* Guest RAM: regions of host memory at guest-physical addresses. The dirty log is one bitmap
 * of VM_PAGE_SIZE granularity over [0, vm_ram_end()), indexed by guest-physical address. */
struct vm_ram_region {
    uint8_t *host;
    uint64_t gpa;
    uint64_t size;
};

struct vm_disk {
    char name[VM_DISK_NAME_MAX]; /* [a-z0-9_-], e.g. "vda" */
    struct bm_disk *disk;
};

struct vm;

/*
 * A backend fills these. Every call is made from one controlling thread at a time (the
 * migration thread or the control socket, never both at once: the VM process serialises them).
 * All return 0 or -errno unless said otherwise.
 *
 * A QEMU VM ("qemu", vm/qemu/qemu.h) moves its own RAM and device state: it has no RAM regions
 * nor bm_disks here, its dirty_log_*, save_state, load_state and check return -ENOTSUP and its
 * throttle does nothing; the migration engine must steer it through QMP instead.
 */
struct vm_ops {
    const char *kind; /* "synth", "kvm", "qemu" */
    /* Dirty log: start clears it (everything is sent in round 0 anyway); sync moves every page
     * written since the previous sync (or start) into out (out |= dirty, dirty = 0). A page
     * written by anyone (vCPU or the VMM itself) is marked after the write, so harvesting
     * before reading never misses one. */
    int (*dirty_log_start)(struct vm *vm);
    int (*dirty_log_sync)(struct vm *vm, struct bm_bitmap *out);
    void (*dirty_log_stop)(struct vm *vm);
    /* pause returns once no vCPU runs and no device I/O is in flight. */
    int (*pause)(struct vm *vm);
    int (*resume)(struct vm *vm);
    /* Take pct % (0-99) of the vCPUs' time away (auto-converge). */
    void (*throttle)(struct vm *vm, unsigned pct);
    /* vCPU, VM and device state of a paused VM, as one blob (the caller frees it). */
    int (*save_state)(struct vm *vm, void **buf, size_t *len);
    /* Load a blob from save_state into a paused VM whose RAM and disks hold the source's. */
    int (*load_state)(struct vm *vm, const void *buf, size_t len);
    /* What the destination needs to build the same VM (RAM size, disks, guest config):
     * a new JSON object. */
    struct json_object *(*describe)(struct vm *vm);
    /* Guest-side status (heartbeats, self-checks): a new JSON object. */
    struct json_object *(*query)(struct vm *vm);
    /* Check every page and block against what the guest wrote (paused VM). Returns the number
     * of mismatches found (>= 0) or -errno. */
    int64_t (*check)(struct vm *vm);
    /* Optional; unlike the rest, callable from any thread at any time: whether the guest has
     * stopped for good (it crashed, or exited by itself), with why in why[len] (why may be
     * NULL); a pause is not that. Such a guest is not migrated. NULL: never. */
    bool (*dead)(struct vm *vm, char *why, size_t len);
    /* Optional, for debugging (x-query-vcpus), callable from any thread at any time: each
     * vCPU's registers and pending events, taken without pausing the VM (it may be running, or
     * migrating): a new JSON object. */
    struct json_object *(*x_vcpus)(struct vm *vm);
    /* Optional, callable from any thread: for a VM that is a process of its own (QEMU), the
     * status the VM process passes on once that process has ended (0-255; 128+N for signal
     * N), or -1 while it runs. NULL: the guest lives in the VM process. */
    int (*exit_status)(struct vm *vm);
    /* Stop everything and free the VM (the disks are closed by their owner). */
    void (*destroy)(struct vm *vm);
};

struct vm {
    const struct vm_ops *ops;
    unsigned nregions;
    struct vm_ram_region regions[VM_MAX_REGIONS];
    unsigned ndisks;
    struct vm_disk disks[VM_MAX_DISKS];
    bool paused;
};

static inline uint64_t vm_ram_end(const struct vm *vm)
{
    uint64_t end = 0;
    for (unsigned i = 0; i < vm->nregions; i++)
        if (vm->regions[i].gpa + vm->regions[i].size > end)
            end = vm->regions[i].gpa + vm->regions[i].size;
    return end;
}

static inline uint64_t vm_ram_size(const struct vm *vm)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < vm->nregions; i++)
        n += vm->regions[i].size;
    return n;
}

/* Host pointer of the page at gpa, or NULL if no region holds all of it: the VM_PAGE_SIZE
 * bytes from there can be read and written without reaching past the VM's RAM. */
uint8_t *vm_gpa_to_host(struct vm *vm, uint64_t gpa);

/* The "disks" of a description: [{"name": .., "size": ..}, ...] (a new array). */
struct json_object *vm_describe_disks(const struct vm *vm);

/* The guest has stopped for good (vm_ops.dead); why (NULL: not wanted) says how. */
static inline bool vm_dead(struct vm *vm, char *why, size_t len)
{
    return vm->ops->dead && vm->ops->dead(vm, why, len);
}

int vm_pause(struct vm *vm);
int vm_resume(struct vm *vm);
void vm_destroy(struct vm *vm);

/* A valid disk name: 1-31 characters of [a-z0-9_-]. */
bool vm_disk_name_ok(const char *name);

#endif
