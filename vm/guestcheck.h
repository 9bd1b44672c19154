/* guestcheck.h: the host's check of the test guest (vm/guest) by content: from the layout
 * record the guest keeps at BM_LAYOUT_GPA (vm/blockfmt.h), every workload page in guest RAM
 * and every block the guest wrote on its disks is checked against the generation the guest
 * recorded for it, as the guest's own final check does. Used on a paused VM (the KVM
 * micro-VM's guest-check) and on a memory dump (`blkmig guest-check`, e.g. of QEMU). */
#ifndef BM_VM_GUESTCHECK_H
#define BM_VM_GUESTCHECK_H

#include <stdint.h>

#include "blockmirror/disk.h"

#define BM_GCHECK_REPORTS 8

struct bm_gcheck {
    uint64_t pages;      /* workload pages checked */
    uint64_t blocks;     /* disk blocks checked (those the guest wrote) */
    uint64_t skipped;    /* in the middle of a write when the guest stopped */
    uint64_t mismatches; /* pages and blocks that do not hold what the guest recorded */
    unsigned ndisks;     /* the guest's disks (from its layout) */
    unsigned nreports;
    char report[BM_GCHECK_REPORTS][160]; /* the first mismatches, described */
};

/* Check the guest whose RAM is ram[0, ram_size) (guest-physical; the guest stopped). disks[k]
 * is the guest's k-th virtio disk (NULL or k >= ndisks: its blocks are not checked). Returns 0
 * with the counts in *out, or -errno with err set when there is no valid layout record (not
 * the test guest, not booted yet, or a layout that does not fit in RAM). */
int bm_guest_check(const uint8_t *ram, uint64_t ram_size, struct bm_disk *const *disks,
                   unsigned ndisks, struct bm_gcheck *out, char *err, size_t errlen);

#endif
