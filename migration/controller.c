/* controller.c: when to start RAM, when to switch over, when to throttle or give up. */
#include <config.h>

#include "migration/controller.h"

#define UNDER_LIMIT_WAIT_MS 5000

void mig_ctl_decide(const struct mig_ctl_in *in, struct mig_ctl_out *out)
{
    *out = (struct mig_ctl_out){0};
    double thr = in->throughput > 0 ? (double)in->throughput : 1.0;

    /* Order. Disk bulk data is dirtied slowly and RAM quickly: start RAM's round 0 when what is
     * left of the disks takes no longer than RAM will, so both streams end together. */
    if (!in->ram_started) {
        if (!in->with_disk)
            out->start_ram = true;
        else if (in->order == MIG_ORDER_DISK_FIRST)
            out->start_ram = in->disk_all_ready;
        else
            out->start_ram = in->disk_bulk_done || in->disk_remaining <= in->ram_remaining;
    }

    /* Switchover: what the pause must still move, over the link at the budgeted rate, plus
     * its fixed costs. */
    double bytes = (double)in->ram_dirty + (in->with_disk ? (double)in->disk_dirty : 0) +
                   (double)in->state_bytes;
    double pthr = in->pause_throughput > 0 ? (double)in->pause_throughput : thr;
    double ms = bytes / pthr * 1000.0 + in->fixed_ms;
    out->expected_downtime_ms = ms >= 1.8e19 ? UINT64_MAX : (uint64_t)ms;
    bool disks_ok = !in->with_disk || (in->order == MIG_ORDER_DISK_FIRST ? in->disk_all_ready
                                                                        : in->disk_bulk_done);
    /* Within the limit is enough to go, but while each pass still shortens the pause markedly,
     * a few more passes buy a shorter one: go once it is down to the target, or has stopped
     * improving for two passes, or has been within the limit for UNDER_LIMIT_WAIT_MS. */
    bool under = ms <= (double)in->downtime_limit_ms;
    bool settled = ms <= (double)in->target_ms || in->passes_no_progress >= 2 ||
                   in->under_limit_ms >= UNDER_LIMIT_WAIT_MS;
    out->switchover = in->ram_started && in->ram_pass0_done && disks_ok && in->throughput > 0 &&
                      under && settled;

    /* At the time bound, a pause that fits the limit goes now rather than give up. */
    bool over_time = in->max_time_ms > 0 && in->elapsed_ms >= in->max_time_ms;
    if (over_time && under && in->ram_started && in->ram_pass0_done && disks_ok &&
        in->throughput > 0)
        out->switchover = true;
    out->abort = over_time && !out->switchover;
}

bool mig_ctl_hold_hot(bool disk_bulk_done, uint64_t disk_dirty, uint64_t throughput,
                      unsigned stalled_ticks)
{
    if (!disk_bulk_done)
        return true;
    double backlog_ms = throughput > 0 ? (double)disk_dirty * 1000.0 / (double)throughput : 1e9;
    bool backlog = disk_dirty > 0 && backlog_ms > (double)HOLD_BACKLOG_MS;
    return backlog && stalled_ticks < HOLD_STALLED_TICKS;
}

unsigned mig_ctl_throttle(uint64_t prev_pass_dirty, uint64_t pass_dirty, uint64_t dirty_rate,
                          uint64_t throughput, unsigned passes, unsigned cur)
{
    /* Like QEMU's auto-converge: after a couple of passes, if a pass did not shrink the dirty
     * set by at least half, or the guest dirties at least half as fast as the link sends,
     * take more vCPU time: 20 % first, then 10 % more each pass, at most 99 %. */
    if (passes < 2)
        return cur;
    bool shrinking = pass_dirty * 2 <= prev_pass_dirty;
    bool fast = throughput > 0 && dirty_rate * 2 >= throughput;
    if (shrinking && !fast)
        return cur;
    unsigned next = cur == 0 ? 20 : cur + 10;
    return next > 99 ? 99 : next;
}
