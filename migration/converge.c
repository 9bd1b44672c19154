/* converge.c: the source's pre-copy loop: both streams under the joint controller. */
#include <config.h>

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/sock.h"
#include "common/zero.h"
#include "migration/controller.h"
#include "migration/source-internal.h"

#define TICK_NS 100000000ull  /* controller period: 100 ms */
#define PING_NS 1000000000ull /* keepalive when nothing else is sent */
#define PROGRESS_NS 500000000ull
#define STEP_BYTES (1u << 20) /* RAM sent between two looks at the clock */
/* The pause's fixed costs besides the round trip: pausing, the destination's NBD stop, state
 * load and resume (measured: 0.2-1 ms together on the synthetic guest). */
#define PAUSE_FIXED_US 1500
/* The pause is budgeted at the THR_PCT-th percentile of the last THR_SAMPLES ticks' rates. */
#define THR_SAMPLES 20
#define THR_PCT 20
#define RAM_WINDOW (2u << 20) /* RAM stream bytes in flight at most */
/* After round 0 the pause may come at any pass end, and it must wait for what is in flight:
 * smaller frames (the destination acknowledges whole frames) and a smaller window then. At
 * 1 Gbit/s 2 MiB in flight is 17 ms of pause; 768 KiB in 256 KiB frames is 6 ms, and still
 * keeps the link busy (the destination acknowledges every frame it applies). */
#define LATE_STEP_BYTES (256u << 10)
#define LATE_RAM_WINDOW (768u << 10)

struct loop {
    uint64_t last_tick, last_progress;
    uint64_t last_ram_bytes, last_disk_bytes;
    uint64_t last_dirty_pages, last_pages_sent, newly_pages; /* dirty-rate bookkeeping */
    unsigned harvests;
    bool pass_ended;
    uint64_t last_disk_flush;
    uint64_t bw_disk_bytes, bw_last; /* --max-bandwidth bookkeeping */
    double thr;          /* link throughput, bytes/s, both streams */
    double thr_s[THR_SAMPLES]; /* the last ticks' rates, with a backlog (the link's) */
    unsigned nthr_s, thr_pos;
    double ram_rate;     /* RAM stream bytes/s */
    double dirty_rate;   /* RAM dirtied bytes/s */
    uint64_t last_rounds, prev_pass_dirty;
    double best_pass_ms;       /* shortest expected pause seen at a pass end */
    unsigned no_progress;      /* passes since it last fell by 20 % */
    uint64_t under_since_ns;   /* when the expected pause came within the limit (0 = not) */
    bool hot_released;         /* round 0 may end (the hot set is no longer held back) */
    uint64_t prev_disk_dirty;  /* disk dirty bytes at the previous tick */
    unsigned stalled_ticks;    /* ticks since the bulk copy in which they did not shrink */

    uint64_t tokens;     /* --max-bandwidth: RAM bytes allowed now */
    uint64_t nonzero;    /* non-zero pages counted so far */
    unsigned scan_region; /* the count goes on a slice per loop turn (not on the critical path) */
    uint64_t scan_off;
    bool scan_done;
    uint64_t quiet_since; /* the controller chose to switch over, and a target flush was in
                             flight: periodic flushes are held off until it ends (0 = not) */
};

/* Before the pause no target flush may be in flight: the destination stops its NBD server in
 * the pause, which waits for every request (a flush is a device barrier: 3-170 ms on a virtual
 * disk). Hold new ones off; true once none is in flight, or after FLUSH_WAIT_MS (then the
 * pause waits for it). */
#define FLUSH_WAIT_MS 2000
static bool any_flush_busy(struct mig_source *m)
{
    for (unsigned i = 0; i < m->nmj; i++)
        if (mirror_flush_busy(m->mj[i]))
            return true;
    return false;
}

static bool flushes_quiet(struct mig_source *m, struct loop *l, uint64_t now)
{
    if (!l->quiet_since) {
        l->quiet_since = now;
        for (unsigned i = 0; i < m->nmj; i++)
            mirror_quiet_flushes(m->mj[i], true);
    }
    if (any_flush_busy(m) && now - l->quiet_since < FLUSH_WAIT_MS * 1000000ull)
        return false;
    m->w.pre_pause_flush_ms = (now - l->quiet_since) / 1000000u;
    return true;
}

/* The controller changed its mind while a flush was in flight: flush along the way again. */
static void flushes_resume(struct mig_source *m, struct loop *l)
{
    if (!l->quiet_since)
        return;
    l->quiet_since = 0;
    for (unsigned i = 0; i < m->nmj; i++)
        mirror_quiet_flushes(m->mj[i], false);
}

/* Count non-zero pages, SCAN_BYTES per call, until every region is done. */
#define SCAN_BYTES (32u << 20)
static void scan_step(struct mig_source *m, struct loop *l)
{
    uint64_t budget = SCAN_BYTES;
    while (!l->scan_done && budget > 0) {
        if (l->scan_region >= m->vm->nregions) {
            l->scan_done = true;
            m->nonzero_pages = l->nonzero;
            break;
        }
        struct vm_ram_region *r = &m->vm->regions[l->scan_region];
        for (; l->scan_off < r->size && budget > 0; l->scan_off += VM_PAGE_SIZE) {
            l->nonzero += !bm_is_zero(r->host + l->scan_off, VM_PAGE_SIZE);
            budget -= VM_PAGE_SIZE;
        }
        if (l->scan_off >= r->size) {
            l->scan_region++;
            l->scan_off = 0;
        }
    }
}

/* Bytes RAM's round 0 will send, at least: the non-zero pages counted so far. RAM not counted
 * yet counts as nothing, so that round 0 never starts before the full count would start it
 * (counting the rest as non-zero started a 256 MiB guest with 64 MiB in use at once, beside a
 * 128 MiB disk, and sent its hot set over again); the count takes a few loop turns. */
static uint64_t ram_estimate(struct loop *l)
{
    return l->nonzero * VM_PAGE_SIZE;
}

/* Move what the guest dirtied into the RAM to send, and count how much was new. */
static void harvest(struct mig_source *m, struct loop *l)
{
    if (!m->ram_started)
        return;
    struct ram_stats a, b;
    ram_sender_stats(m->ram, &a);
    ram_sender_harvest(m->ram);
    ram_sender_stats(m->ram, &b);
    uint64_t sent = b.pages_normal + b.pages_zero;
    /* Newly dirtied: the growth of the set, plus what was sent out of it meanwhile. */
    double newly = (double)b.dirty_pages - (double)l->last_dirty_pages +
                   (double)(sent - l->last_pages_sent);
    (void)a;
    l->last_dirty_pages = b.dirty_pages;
    l->last_pages_sent = sent;
    if (l->harvests++ > 0 && newly > 0)
        l->newly_pages += (uint64_t)newly;
}

/* Every TICK_NS: rates over the last tick. */
static void measure(struct mig_source *m, struct loop *l, uint64_t now)
{
    double dt = (double)(now - l->last_tick) / 1e9;
    l->last_tick = now;
    struct mig_stats *w = &m->w;
    uint64_t disk_bytes = w->disk_bytes + w->disk_active_bytes;
    /* RAM counts as moved once the destination has applied it: what sits in socket buffers
     * and queues is still to come, and would land in the pause. */
    uint64_t ram_done = m->peer_received;
    double ram_d = (double)(ram_done - l->last_ram_bytes);
    double disk_d = (double)(disk_bytes - l->last_disk_bytes);
    l->last_ram_bytes = ram_done;
    l->last_disk_bytes = disk_bytes;
    bool backlog = (m->ram_started && (w->ram.dirty_pages > 0 || w->in_flight > (1u << 20))) ||
                   w->disks_past_bulk < m->nmj || w->disk_dirty > 0;
    if (dt > 0) {
        double t = (ram_d + disk_d) / dt;
        /* A tick that ends with a backlog kept the link busy: its rate is the link's. One that
         * drained it left the link idle for part of it: its rate is only a floor, taken when
         * the average is below it. A small guest is copied whole within one such tick, after
         * the only tick with a backlog moved next to nothing while the connections opened; its
         * few KB/s stayed the average, and an idle guest's expected pause over the limit. */
        if (backlog && t > 0) {
            l->thr = l->thr == 0 ? t : 0.7 * l->thr + 0.3 * t;
            l->thr_s[l->thr_pos] = t;
            l->thr_pos = (l->thr_pos + 1) % THR_SAMPLES;
            if (l->nthr_s < THR_SAMPLES)
                l->nthr_s++;
        }
        else if (t > l->thr) {
            l->thr = t;
            /* The link can do at least t: samples below it measured something else (the
             * connections opening, TCP's ramp), not the link. */
            unsigned n = 0;
            for (unsigned i = 0; i < l->nthr_s; i++)
                if (l->thr_s[i] >= t)
                    l->thr_s[n++] = l->thr_s[i];
            l->nthr_s = n;
            l->thr_pos = n % THR_SAMPLES;
        }
        l->ram_rate = 0.7 * l->ram_rate + 0.3 * ram_d / dt;
        if (l->harvests > 1)
            l->dirty_rate = 0.7 * l->dirty_rate + 0.3 * (double)l->newly_pages * VM_PAGE_SIZE / dt;
        l->newly_pages = 0;
    }
    /* Until a tick has moved something, the average since the start. Not a floor after that:
     * it remembers a fast start for long after the link has slowed, and an expected pause
     * taken from it would be too short. */
    double since_start = (double)(now - m->t0_ns) / 1e9;
    if (l->thr == 0 && since_start > 0)
        w->throughput = (uint64_t)((double)(ram_done + disk_bytes) / since_start);
    else
        w->throughput = (uint64_t)l->thr;
    w->ram_dirty_rate = (uint64_t)l->dirty_rate;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The rate to budget the pause with: a low percentile of the recent ticks' rates (a pause taken
 * on the average would be longer than expected whenever the link runs below it), never above
 * the average nor below half of it (one slow tick among few must not hold a small guest back
 * for ever). 0 (the average) until there are a few samples. */
static uint64_t pause_throughput(const struct loop *l)
{
    if (l->nthr_s < 3)
        return 0;
    double v[THR_SAMPLES];
    memcpy(v, l->thr_s, sizeof v[0] * l->nthr_s);
    qsort(v, l->nthr_s, sizeof v[0], cmp_double);
    double p = v[(l->nthr_s - 1) * THR_PCT / 100];
    if (p > l->thr)
        p = l->thr;
    if (p < l->thr / 2)
        p = l->thr / 2;
    return (uint64_t)p;
}

/* The pause's fixed costs: the round trip from COMPLETE to RESUMED (the path's smallest, as
 * queueing is the bytes' share) and both sides' work. */
static unsigned pause_fixed_ms(struct mig_source *m)
{
    int rtt = bm_tcp_min_rtt_us(m->c.fd);
    return (unsigned)(((rtt > 0 ? rtt : 0) + PAUSE_FIXED_US + 999) / 1000);
}

/* Harvest, gather the figures, and let the controller decide: every tick, and at the end of
 * each RAM pass (where the dirty set is smallest: deciding only on the 100 ms clock would
 * leave up to 100 ms of dirtying in every pause). */
static void decide(struct mig_source *m, struct loop *l, uint64_t now, bool timed,
                   struct mig_ctl_out *out)
{
    harvest(m, l);
    mig_collect(m);
    struct mig_stats *w = &m->w;
    w->in_flight = m->c.bytes_sent > m->peer_received ? m->c.bytes_sent - m->peer_received : 0;
    if (timed) {
        measure(m, l, now);
        /* Joint order: hold the hot set back while the disks need the link (once released,
         * for good). */
        if (m->ram_started && !l->hot_released) {
            bool bulk_done = m->nmj == 0 || w->disks_past_bulk == m->nmj;
            if (bulk_done && w->disk_dirty >= l->prev_disk_dirty)
                l->stalled_ticks++;
            else
                l->stalled_ticks = 0;
            l->hot_released = !mig_ctl_hold_hot(bulk_done, w->disk_dirty, w->throughput,
                                                l->stalled_ticks);
            ram_sender_hold_hot(m->ram, !l->hot_released);
        }
        l->prev_disk_dirty = w->disk_dirty;
    }
    uint64_t disk_bytes = w->disk_bytes + w->disk_active_bytes;
    double disk_d = (double)(disk_bytes - l->bw_disk_bytes);
    double dt = (double)(now - l->bw_last) / 1e9;
    l->bw_disk_bytes = disk_bytes;
    l->bw_last = now;

    /* One bandwidth budget for both streams. */
    if (m->p.max_bandwidth) {
        double b = (double)m->p.max_bandwidth, dr = disk_d / (dt > 0 ? dt : 1);
        double ram_share = m->ram_started ? b - dr : 0;
        if (ram_share < b / 10)
            ram_share = b / 10;
        l->tokens = (uint64_t)(ram_share * dt);
        double disk_share = b - (m->ram_started ? l->ram_rate : 0);
        if (disk_share < b / 10)
            disk_share = b / 10;
        for (unsigned i = 0; i < m->nmj; i++)
            mirror_set_speed(m->mj[i], (uint64_t)(disk_share / m->nmj));
    }

    unsigned fixed = pause_fixed_ms(m);
    struct mig_ctl_in in = {
        .order = m->p.order,
        .with_disk = m->nmj > 0,
        .ram_started = m->ram_started,
        .ram_pass0_done = w->ram.rounds >= 1,
        .disk_bulk_done = m->nmj > 0 && w->disks_past_bulk == m->nmj,
        .disk_all_ready = w->disks_ready == m->nmj,
        /* Until every mirror has listed its extents, the disks' size is unknown. */
        .disk_remaining = w->disks_started < m->nmj
                              ? UINT64_MAX
                              : w->disk_bulk_total - w->disk_bulk_done + w->disk_dirty,
        .disk_dirty = w->disk_dirty,
        .ram_remaining = m->ram_started ? 0 : ram_estimate(l),
        .ram_dirty = w->ram.dirty_pages * VM_PAGE_SIZE + w->in_flight,
        .throughput = w->throughput,
        .state_bytes = 4096,
        .pause_throughput = pause_throughput(l),
        .fixed_ms = fixed,
        .downtime_limit_ms = m->p.downtime_limit_ms,
        /* A twentieth of the limit (15 ms of the default 300), at least a little over the fixed
         * costs: the estimate never goes lower. */
        .target_ms = m->p.downtime_limit_ms / 20 > fixed + 5 ? m->p.downtime_limit_ms / 20
                                                              : fixed + 5,
        .passes_no_progress = l->no_progress,
        .under_limit_ms = l->under_since_ns ? (now - l->under_since_ns) / 1000000u : 0,
        .elapsed_ms = (now - m->t0_ns) / 1000000u,
        .max_time_ms = (uint64_t)m->p.max_time_s * 1000u,
    };
    mig_ctl_decide(&in, out);
    w->expected_downtime_ms = out->expected_downtime_ms;
    if (out->expected_downtime_ms <= m->p.downtime_limit_ms && m->ram_started &&
        w->ram.rounds >= 1) {
        if (!l->under_since_ns)
            l->under_since_ns = now;
    } else {
        l->under_since_ns = 0;
    }
    /* A pass ended: if the pause would still be too long, auto-converge looks at how much the
     * pass left behind. */
    if (w->ram.rounds != l->last_rounds) {
        uint64_t pass_dirty = w->ram.dirty_pages * VM_PAGE_SIZE;
        if (w->ram.rounds >= 2 && !out->switchover &&
            out->expected_downtime_ms > m->p.downtime_limit_ms) {
            unsigned t = mig_ctl_throttle(l->prev_pass_dirty, pass_dirty, w->ram_dirty_rate,
                                          w->throughput, (unsigned)w->ram.rounds, w->throttle);
            if (t != w->throttle) {
                w->throttle = t;
                if (t > w->throttle_max)
                    w->throttle_max = t;
                m->vm->ops->throttle(m->vm, t);
                bm_info("migration: RAM not converging, vCPU throttle %u%%", t);
                if (m->fn) {
                    struct json_object *d = json_object_new_object();
                    json_object_object_add(d, "throttle", json_object_new_int((int)t));
                    m->fn(m->opaque, "throttle", d);
                }
            }
        }
        double e = (double)out->expected_downtime_ms;
        if (l->best_pass_ms == 0 || e < 0.8 * l->best_pass_ms) {
            l->best_pass_ms = e > 0 ? e : 0.001;
            l->no_progress = 0;
        } else {
            l->no_progress++;
        }
        l->prev_pass_dirty = pass_dirty;
        l->last_rounds = w->ram.rounds;
    }

    if (!m->ram_started)
        w->phase = "disk-bulk";
    else if (w->ram.rounds == 0)
        w->phase = "ram-round0";
    else
        w->phase = "dirty-rounds";
    mig_publish(m);
    if (m->fn && now - l->last_progress >= PROGRESS_NS) {
        l->last_progress = now;
        m->fn(m->opaque, "migration-progress", mig_source_query(m));
    }
}

int mig_check_mirrors(struct mig_source *m, char *why, size_t whylen)
{
    for (unsigned i = 0; i < m->nmj; i++) {
        struct mirror_stats s;
        mirror_query(m->mj[i], &s);
        if (s.state == MIRROR_FAILED || s.state == MIRROR_CANCELLED) {
            char err[256];
            mirror_wait(m->mj[i], err, sizeof err);
            snprintf(why, whylen, "the mirror of disk %s failed: %s", m->vm->disks[i].name, err);
            return -EIO;
        }
    }
    return 0;
}

int mig_turn_checks(struct mig_source *m, char *why, size_t whylen)
{
    if (atomic_load(&m->want_cancel)) {
        mig_rollback(m, MIG_CANCELLED, "cancelled");
        return 1;
    }
    int r = mig_poll_peer(m, why, whylen);
    if (r == 0)
        r = mig_check_mirrors(m, why, whylen);
    if (r == 0 && vm_dead(m->vm, why, whylen))
        r = -ECANCELED; /* a dead guest is not moved: it stays here as it is */
    return r;
}

/* Returns true to go on to the switchover; false after a rollback. */
bool mig_converge(struct mig_source *m);
bool mig_converge(struct mig_source *m)
{
    struct loop l = {.last_tick = mig_now_ns()};
    l.bw_last = l.last_tick;
    /* The non-zero page count (round 0's size) is taken a slice per turn, while the disks
     * copy; a whole scan of a large guest would otherwise delay everything. */
    l.last_progress = l.last_tick;
    char why[512];
    for (;;) {
        uint64_t now = mig_now_ns();
        int r = mig_turn_checks(m, why, sizeof why);
        if (r == 1)
            return false;
        if (r < 0) {
            mig_rollback(m, MIG_FAILED, "%s", why);
            return false;
        }
        if (!l.scan_done)
            scan_step(m, &l);
        /* Shared storage: the handover flushes the images; flushing them as we go keeps that
         * flush (which the pause waits for) short. */
        if (!m->p.with_disk && now - l.last_disk_flush >= 200000000ull) {
            l.last_disk_flush = now;
            for (unsigned i = 0; i < m->vm->ndisks; i++)
                bm_disk_flush(m->vm->disks[i].disk);
        }
        bool timed = now - l.last_tick >= TICK_NS;
        /* Waiting for a flush before the pause: decide again as soon as it has ended, on
         * figures taken then (the guest went on dirtying meanwhile). */
        bool recheck = l.quiet_since != 0 && !any_flush_busy(m);
        if (timed || l.pass_ended || recheck) {
            struct mig_ctl_out out;
            l.pass_ended = false;
            decide(m, &l, now, timed, &out);
            if (out.switchover && flushes_quiet(m, &l, now))
                return true;
            if (!out.switchover)
                flushes_resume(m, &l);
            if (out.abort) {
                mig_rollback(m, MIG_FAILED,
                             "did not converge within %u s (expected downtime %llu ms, limit "
                             "%u ms)",
                             m->p.max_time_s, (unsigned long long)out.expected_downtime_ms,
                             m->p.downtime_limit_ms);
                return false;
            }
            if (out.start_ram && !m->ram_started) {
                r = ram_sender_start(m->ram, m->log_running);
                if (r < 0) {
                    mig_rollback(m, MIG_FAILED, "cannot start RAM dirty logging: %s",
                                 strerror(-r));
                    return false;
                }
                m->ram_started = true;
                /* Until the next tick decides, round 0 holds the hot set back. */
                ram_sender_hold_hot(m->ram, m->nmj > 0);
                m->w.ram_start_ms = (now - m->t0_ns) / 1000000u;
                bm_info("migration: RAM pre-copy starts at %llu ms",
                        (unsigned long long)m->w.ram_start_ms);
            }
        }
        /* Keep at most RAM_WINDOW bytes between what is sent and what the destination has
         * applied: more would only sit in socket buffers and qdiscs, where the pause would
         * have to wait for it. */
        bool sent = false;
        bool late = m->w.ram.rounds >= 1;
        bool window_full =
            m->c.bytes_sent - m->peer_received >= (late ? LATE_RAM_WINDOW : RAM_WINDOW);
        if (m->ram_started && !window_full && (!m->p.max_bandwidth || l.tokens > 0)) {
            struct ram_stats rs;
            ram_sender_stats(m->ram, &rs);
            if (rs.dirty_pages > 0) {
                uint64_t n = late ? LATE_STEP_BYTES : STEP_BYTES;
                if (m->p.max_bandwidth)
                    n = l.tokens < n ? l.tokens : n;
                uint64_t b0 = m->c.bytes_sent, rounds0 = rs.rounds;
                r = ram_sender_step(m->ram, n);
                if (r < 0) {
                    mig_rollback(m, MIG_FAILED, "sending RAM: %s", strerror(-r));
                    return false;
                }
                uint64_t d = m->c.bytes_sent - b0;
                if (m->p.max_bandwidth)
                    l.tokens = d >= l.tokens ? 0 : l.tokens - d;
                sent = d > 0;
                if (sent)
                    m->last_send_ns = mig_now_ns();
                ram_sender_stats(m->ram, &rs);
                l.pass_ended = rs.rounds != rounds0;
            }
        }
        if (!sent) {
            if (now - m->last_send_ns >= PING_NS) {
                r = mig_send(&m->c, MIG_PING, NULL, 0);
                if (r < 0) {
                    mig_rollback(m, MIG_FAILED, "the link to the destination broke: %s",
                                 strerror(-r));
                    return false;
                }
                m->last_send_ns = now;
            }
            /* Nothing to send: wait for the peer (its acknowledgement opens a full window) or
             * the next tick; at most 20 ms, for the other work of this loop. */
            uint64_t next = l.last_tick + TICK_NS;
            int ms = next > now ? (int)((next - now) / 1000000u) + 1 : 1;
            struct pollfd pfd = {.fd = m->c.fd, .events = POLLIN};
            poll(&pfd, 1, l.quiet_since ? 1 : ms > 20 ? 20 : ms);
        }
    }
}
