/* controller.h: the joint convergence controller's decisions, as pure functions of its inputs. */
#ifndef BM_MIGRATION_CONTROLLER_H
#define BM_MIGRATION_CONTROLLER_H

#include <stdbool.h>
#include <stdint.h>

#include "migration/migration.h"

struct mig_ctl_in {
    enum mig_order order;
    bool with_disk;
    bool ram_started;
    bool ram_pass0_done;   /* round 0 (every page) has been sent */
    bool disk_bulk_done;   /* every disk's bulk pass is over */
    bool disk_all_ready;   /* every disk job reports ready */
    uint64_t disk_remaining; /* bulk left + dirty, all disks */
    uint64_t disk_dirty;     /* dirty now, all disks */
    uint64_t ram_remaining;  /* bytes round 0 would still send (non-zero pages) */
    uint64_t ram_dirty;      /* bytes waiting to be sent */
    uint64_t throughput;     /* bytes/s the link carries, both streams together */
    uint64_t pause_throughput; /* the rate to budget the pause with: a low percentile of the
                                * recent rates (0 = throughput) */
    uint64_t state_bytes;    /* device + vCPU state size */
    unsigned fixed_ms; /* what the pause costs besides moving bytes: round trip, both sides' work
                          (the destination's disk flush is not in the pause) */
    unsigned downtime_limit_ms;
    unsigned target_ms;           /* the pause to aim for while it keeps getting shorter */
    unsigned passes_no_progress;  /* RAM passes since the expected pause last fell by 20 % */
    uint64_t under_limit_ms;      /* how long the expected pause has been within the limit */
    uint64_t elapsed_ms;
    uint64_t max_time_ms;
};

struct mig_ctl_out {
    bool start_ram;
    bool switchover;
    bool abort;               /* over the total-time bound */
    uint64_t expected_downtime_ms;
};

void mig_ctl_decide(const struct mig_ctl_in *in, struct mig_ctl_out *out);

/* Joint order, round 0 at its end: hold the hot set back (true) while the disks' bulk copy
 * runs, and after it while the dirty blocks it left behind still drain (more than
 * HOLD_BACKLOG_MS of link time, and not HOLD_STALLED_TICKS ticks in a row without shrinking):
 * the hot set, rewritten as it goes, costs least when it has the link to itself. */
#define HOLD_BACKLOG_MS 100
#define HOLD_STALLED_TICKS 3
bool mig_ctl_hold_hot(bool disk_bulk_done, uint64_t disk_dirty, uint64_t throughput,
                      unsigned stalled_ticks);

/* Auto-converge: given the dirty bytes left after the previous and this pass, the throttle now
 * and how many passes ran, the next throttle (0-99). */
unsigned mig_ctl_throttle(uint64_t prev_pass_dirty, uint64_t pass_dirty, uint64_t dirty_rate,
                          uint64_t throughput, unsigned passes, unsigned cur);

#endif
