/* synth.h: the synthetic guest: a userspace VM whose "vCPU" dirties RAM and writes disks. */
#ifndef BM_VM_SYNTH_H
#define BM_VM_SYNTH_H

#include <json-c/json.h>
#include <stdint.h>

#include "vm/vm.h"

enum synth_pattern { SYNTH_UNIFORM, SYNTH_HOTSPOT, SYNTH_SEQUENTIAL };

struct synth_workload {
    uint64_t mem_rate;       /* bytes of RAM written per second */
    uint64_t hot;            /* hot-set size (bytes) */
    enum synth_pattern mem_pattern;
    uint64_t disk_rate;      /* bytes written to each disk per second */
    uint32_t disk_min_io;    /* write sizes, multiples of 4 KiB */
    uint32_t disk_max_io;
    enum synth_pattern disk_pattern;
    uint64_t ram_fill;       /* bytes of RAM written once at first boot */
    uint64_t disk_fill;      /* bytes of each disk written once at first boot */
    uint64_t seed;
};

/* Defaults: idle (no rates), hot 256 MiB, uniform, 4-64 KiB, no fill. */
void synth_workload_default(struct synth_workload *w);
/* Parse "mem=64M/s,hot=256M,disk=16M/s,mem-pattern=hotspot,disk-pattern=uniform,io=4K-64K,
 * ram-fill=512M,disk-fill=2G,seed=N" on top of *w. Returns 0 or -EINVAL with a message. */
int synth_workload_parse(const char *s, struct synth_workload *w, char *err, size_t errlen);
struct json_object *synth_workload_to_json(const struct synth_workload *w);
int synth_workload_from_json(struct json_object *o, struct synth_workload *w, char *err,
                             size_t errlen);

/* Events from the guest (e.g. "guest-error" with a description), on the guest's threads. */
typedef void (*synth_event_fn)(void *opaque, const char *event, struct json_object *data);

/*
 * Create a synthetic VM with ram_size bytes of RAM (a multiple of 4 KiB) and the given disks
 * (opened by the caller, which keeps them open until destroy). boot = true fills RAM and disks
 * as the workload says and starts the guest running; boot = false leaves it paused and empty,
 * to receive an incoming migration (load_state, then resume). Returns 0 or -errno with err.
 */
int synth_create(uint64_t ram_size, const struct vm_disk *disks, unsigned ndisks,
                 const struct synth_workload *w, bool boot, synth_event_fn fn, void *opaque,
                 struct vm **out, char *err, size_t errlen);

const char *synth_pattern_name(enum synth_pattern p);

#endif
