/* test-controller.c: unit tests for the convergence controller's decisions and auto-converge. */
#include <config.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdbool.h>

#include "migration/controller.h"

#define MiB (1ull << 20)

/*
 * Inputs where every switchover condition holds with a margin: 128 KiB to move at 1 MiB/s is
 * exactly 125 ms (powers of two keep the arithmetic exact), plus 10 ms flush and 1 ms slack.
 */
static struct mig_ctl_in ready_in(enum mig_order order)
{
    return (struct mig_ctl_in){
        .order = order,
        .with_disk = true,
        .ram_started = true,
        .ram_pass0_done = true,
        .disk_bulk_done = true,
        .disk_all_ready = true,
        .disk_remaining = 32 << 10,
        .disk_dirty = 32 << 10,
        .ram_remaining = 0,
        .ram_dirty = 64 << 10,
        .throughput = MiB,
        .state_bytes = 32 << 10,
        .fixed_ms = 11,
        .downtime_limit_ms = 300,
        .passes_no_progress = 2, /* settled: each pass no longer shortens the pause */
        .elapsed_ms = 1000,
        .max_time_ms = 600000,
    };
}

static struct mig_ctl_out decide(const struct mig_ctl_in *in)
{
    struct mig_ctl_out out;
    mig_ctl_decide(in, &out);
    return out;
}

/* ---- when RAM starts ---- */

static void test_start_without_disks(void **state)
{
    (void)state;
    struct mig_ctl_in in = {.order = MIG_ORDER_JOINT, .ram_remaining = 1ull << 30};
    assert_true(decide(&in).start_ram);
    in.order = MIG_ORDER_DISK_FIRST;
    assert_true(decide(&in).start_ram);
    /* Disk figures are irrelevant without disks. */
    in.disk_remaining = 1ull << 40;
    assert_true(decide(&in).start_ram);
    /* Once started, it is never asked to start again. */
    in.ram_started = true;
    assert_false(decide(&in).start_ram);
}

static void test_start_joint(void **state)
{
    (void)state;
    struct mig_ctl_in in = {
        .order = MIG_ORDER_JOINT,
        .with_disk = true,
        .ram_remaining = 512 * MiB,
        .disk_remaining = 4096 * MiB,
        .throughput = 100 * MiB,
    };
    assert_false(decide(&in).start_ram);
    in.disk_remaining = 512 * MiB + 1;
    assert_false(decide(&in).start_ram);
    in.disk_remaining = 512 * MiB; /* both streams now have as much left */
    assert_true(decide(&in).start_ram);
    in.disk_remaining = 1;
    assert_true(decide(&in).start_ram);
    /* The disks' bulk pass over starts RAM whatever the estimates say. */
    in.disk_remaining = 4096 * MiB;
    in.disk_bulk_done = true;
    assert_true(decide(&in).start_ram);
    /* Readiness alone is not the joint criterion. */
    in.disk_bulk_done = false;
    in.disk_all_ready = true;
    assert_false(decide(&in).start_ram);
    /* An idle guest with no RAM data: starts as soon as the disks have nothing left. */
    in.disk_all_ready = false;
    in.ram_remaining = 0;
    in.disk_remaining = 0;
    assert_true(decide(&in).start_ram);
    in.ram_started = true;
    assert_false(decide(&in).start_ram);
}

static void test_start_disk_first(void **state)
{
    (void)state;
    struct mig_ctl_in in = {
        .order = MIG_ORDER_DISK_FIRST,
        .with_disk = true,
        .ram_remaining = 512 * MiB,
        .disk_remaining = 0,
        .disk_bulk_done = true,
    };
    /* Neither the estimate nor the bulk pass is enough: every disk must be ready. */
    assert_false(decide(&in).start_ram);
    in.disk_all_ready = true;
    assert_true(decide(&in).start_ram);
    in.ram_started = true;
    assert_false(decide(&in).start_ram);
}

/* ---- switchover and the downtime estimate ---- */

static void test_switchover_boundary(void **state)
{
    (void)state;
    struct mig_ctl_in in = ready_in(MIG_ORDER_JOINT);
    /* (64K + 32K + 32K) / 1 MiB/s = 125 ms, + 11 ms fixed = 136 ms. */
    struct mig_ctl_out out = decide(&in);
    assert_int_equal(out.expected_downtime_ms, 136);
    assert_true(out.switchover);
    assert_false(out.abort);
    assert_false(out.start_ram);
    in.downtime_limit_ms = 136;
    assert_true(decide(&in).switchover);
    in.downtime_limit_ms = 135;
    out = decide(&in);
    assert_false(out.switchover);
    assert_int_equal(out.expected_downtime_ms, 136);
    /* One more byte of dirt tips it over at the exact limit. */
    in.downtime_limit_ms = 136;
    in.ram_dirty++;
    assert_false(decide(&in).switchover);
    in.downtime_limit_ms = 137;
    assert_true(decide(&in).switchover);

    /* The same for disk-first. */
    in = ready_in(MIG_ORDER_DISK_FIRST);
    in.downtime_limit_ms = 136;
    assert_true(decide(&in).switchover);
    in.downtime_limit_ms = 135;
    assert_false(decide(&in).switchover);
}

static void test_switchover_preconditions(void **state)
{
    (void)state;
    struct mig_ctl_in in = ready_in(MIG_ORDER_JOINT);
    assert_true(decide(&in).switchover);
    in.ram_pass0_done = false;
    assert_false(decide(&in).switchover);

    in = ready_in(MIG_ORDER_JOINT);
    in.ram_started = false;
    in.ram_pass0_done = false;
    assert_false(decide(&in).switchover);
    /* Even with nothing to move at all. */
    in.ram_dirty = in.disk_dirty = in.state_bytes = 0;
    in.fixed_ms = 0;
    assert_false(decide(&in).switchover);

    /* Joint: the disks must be past their bulk pass; readiness is not required. */
    in = ready_in(MIG_ORDER_JOINT);
    in.disk_bulk_done = false;
    assert_false(decide(&in).switchover);
    in.disk_bulk_done = true;
    in.disk_all_ready = false;
    assert_true(decide(&in).switchover);

    /* Disk-first: every disk ready; bulk done alone is not enough. */
    in = ready_in(MIG_ORDER_DISK_FIRST);
    in.disk_all_ready = false;
    assert_false(decide(&in).switchover);
    in.disk_all_ready = true;
    in.disk_bulk_done = false;
    assert_true(decide(&in).switchover);
}

static void test_switchover_no_throughput(void **state)
{
    (void)state;
    struct mig_ctl_in in = ready_in(MIG_ORDER_JOINT);
    in.throughput = 0;
    in.downtime_limit_ms = 1000000;
    assert_false(decide(&in).switchover);
    /* Not even when nothing is left to move: an unmeasured link proves nothing. */
    in.ram_dirty = in.disk_dirty = in.state_bytes = 0;
    in.fixed_ms = 0;
    assert_false(decide(&in).switchover);
    in.with_disk = false;
    assert_false(decide(&in).switchover);
}

static void test_switchover_without_disks(void **state)
{
    (void)state;
    struct mig_ctl_in in = {
        .order = MIG_ORDER_JOINT,
        .ram_started = true,
        .ram_pass0_done = true,
        .ram_dirty = 96 << 10,
        .state_bytes = 32 << 10,
        .throughput = MiB,
        .downtime_limit_ms = 126,
        .passes_no_progress = 2,
        /* Leftovers from a disk that is not part of this migration do not count. */
        .disk_dirty = 1ull << 30,
        .fixed_ms = 1,
    };
    struct mig_ctl_out out = decide(&in);
    assert_int_equal(out.expected_downtime_ms, 126);
    assert_true(out.switchover);
    in.downtime_limit_ms = 125;
    assert_false(decide(&in).switchover);
    /* Disk readiness flags do not matter either. */
    in.downtime_limit_ms = 126;
    in.order = MIG_ORDER_DISK_FIRST;
    assert_true(decide(&in).switchover);
}

/* Within the limit, the controller still waits while passes keep shortening the pause. */
static void test_switchover_settles(void **state)
{
    (void)state;
    struct mig_ctl_in in = ready_in(MIG_ORDER_JOINT); /* expected 136 ms, limit 300 */
    in.passes_no_progress = 0;
    in.target_ms = 30;
    assert_false(decide(&in).switchover); /* still improving, above the target */
    in.passes_no_progress = 1;
    assert_false(decide(&in).switchover);
    in.passes_no_progress = 2; /* stopped improving */
    assert_true(decide(&in).switchover);
    in.passes_no_progress = 0;
    in.under_limit_ms = 4999;
    assert_false(decide(&in).switchover);
    in.under_limit_ms = 5000; /* waited long enough within the limit */
    assert_true(decide(&in).switchover);
    in.under_limit_ms = 0;
    in.target_ms = 136; /* down to the target */
    assert_true(decide(&in).switchover);
    in.target_ms = 135;
    assert_false(decide(&in).switchover);
    /* Not settled, but at the time bound: a pause within the limit goes rather than abort. */
    in.elapsed_ms = in.max_time_ms;
    assert_true(decide(&in).switchover);
    assert_false(decide(&in).abort);
    in.elapsed_ms = 1000;
    /* Settled but over the limit: no. */
    in.passes_no_progress = 5;
    in.downtime_limit_ms = 135;
    assert_false(decide(&in).switchover);
}

static void test_expected_downtime(void **state)
{
    (void)state;
    struct mig_ctl_in in = ready_in(MIG_ORDER_JOINT);
    /* Nothing to move: the fixed costs alone (no flush: the destination's comes after). */
    in.ram_dirty = in.disk_dirty = in.state_bytes = 0;
    assert_int_equal(decide(&in).expected_downtime_ms, 11);
    in.fixed_ms = 0;
    assert_int_equal(decide(&in).expected_downtime_ms, 0);
    /* A disk's dirty blocks count only in a migration with disks. */
    in.throughput = 100000000;
    in.disk_dirty = 1000000000;
    assert_int_equal(decide(&in).expected_downtime_ms, 10000);
    in.with_disk = false;
    assert_int_equal(decide(&in).expected_downtime_ms, 0);
    in.with_disk = true;
    in.disk_dirty = 0;
    /* 1 GB at 100 MB/s = 10 s; each byte class counts the same. */
    in.ram_dirty = 1000000000;
    assert_int_equal(decide(&in).expected_downtime_ms, 10000);
    in.ram_dirty = 0;
    in.disk_dirty = 1000000000;
    assert_int_equal(decide(&in).expected_downtime_ms, 10000);
    in.disk_dirty = 0;
    in.state_bytes = 1000000000;
    assert_int_equal(decide(&in).expected_downtime_ms, 10000);
    /* The sum, and the fixed costs on top. */
    in.ram_dirty = in.disk_dirty = in.state_bytes = 500000000;
    in.fixed_ms = 250;
    assert_int_equal(decide(&in).expected_downtime_ms, 15000 + 250);
    /* The pause is budgeted at pause_throughput when given (a low percentile of the recent
     * rates), not at the average the order decisions use. */
    in.pause_throughput = 50000000;
    assert_int_equal(decide(&in).expected_downtime_ms, 30000 + 250);
    in.pause_throughput = 0;
    /* Fractions of a millisecond are dropped from the estimate. */
    in.disk_dirty = in.state_bytes = 0;
    in.fixed_ms = 1;
    in.throughput = 1000;
    in.ram_dirty = 1; /* 1 ms */
    assert_int_equal(decide(&in).expected_downtime_ms, 2);
    in.throughput = 3000; /* 0.33 ms */
    assert_int_equal(decide(&in).expected_downtime_ms, 1);
    /* A terabyte over a crawling link: large, exact, and no switchover. */
    in.ram_dirty = 1ull << 40;
    in.throughput = 1;
    struct mig_ctl_out out = decide(&in);
    assert_int_equal(out.expected_downtime_ms, (1ull << 40) * 1000 + 1);
    assert_false(out.switchover);
}

/* ---- giving up ---- */

static void test_abort(void **state)
{
    (void)state;
    struct mig_ctl_in in = ready_in(MIG_ORDER_JOINT);
    in.downtime_limit_ms = 50; /* cannot switch over */
    in.max_time_ms = 60000;
    in.elapsed_ms = 59999;
    assert_false(decide(&in).abort);
    in.elapsed_ms = 60000; /* the bound is reached */
    assert_true(decide(&in).abort);
    in.elapsed_ms = 60001;
    struct mig_ctl_out out = decide(&in);
    assert_true(out.abort);
    assert_false(out.switchover);
    /* A migration that can switch over now does so rather than give up. */
    in.downtime_limit_ms = 300;
    out = decide(&in);
    assert_true(out.switchover);
    assert_false(out.abort);
    /* Giving up does not depend on RAM having started. */
    in = ready_in(MIG_ORDER_DISK_FIRST);
    in.ram_started = in.ram_pass0_done = in.disk_all_ready = false;
    in.max_time_ms = 1000;
    in.elapsed_ms = 5000;
    out = decide(&in);
    assert_true(out.abort);
    assert_false(out.start_ram);
}

static void test_abort_unbounded(void **state)
{
    (void)state;
    struct mig_ctl_in in = ready_in(MIG_ORDER_JOINT);
    in.downtime_limit_ms = 1;
    in.max_time_ms = 0;
    in.elapsed_ms = 0;
    assert_false(decide(&in).abort);
    in.elapsed_ms = UINT64_MAX;
    assert_false(decide(&in).abort);
}

/* ---- auto-converge ---- */

/* The hot set waits for the disks: during the bulk copy always; after it while more than
 * HOLD_BACKLOG_MS of dirty blocks still drain, unless the drain stalls. */
static void test_hold_hot(void **state)
{
    (void)state;
    uint64_t thr = 100 * MiB; /* HOLD_BACKLOG_MS (100) of it: 10 MiB */
    assert_true(mig_ctl_hold_hot(false, 0, thr, 0));
    assert_true(mig_ctl_hold_hot(false, 0, thr, 99));
    assert_true(mig_ctl_hold_hot(true, 11 * MiB, thr, 0));
    assert_true(mig_ctl_hold_hot(true, 11 * MiB, thr, HOLD_STALLED_TICKS - 1));
    assert_false(mig_ctl_hold_hot(true, 11 * MiB, thr, HOLD_STALLED_TICKS));
    assert_false(mig_ctl_hold_hot(true, 10 * MiB, thr, 0));
    assert_false(mig_ctl_hold_hot(true, 0, thr, 0));
    /* No throughput measured yet: a backlog counts as one. */
    assert_true(mig_ctl_hold_hot(true, 1, 0, 0));
    assert_false(mig_ctl_hold_hot(true, 0, 0, 0));
}

static void test_throttle_first_passes(void **state)
{
    (void)state;
    /* Not shrinking at all, dirtying faster than the link: still no change before pass 2. */
    assert_int_equal(mig_ctl_throttle(100, 100, 10 * MiB, MiB, 0, 0), 0);
    assert_int_equal(mig_ctl_throttle(100, 100, 10 * MiB, MiB, 1, 0), 0);
    assert_int_equal(mig_ctl_throttle(100, 100, 10 * MiB, MiB, 1, 40), 40);
    assert_int_equal(mig_ctl_throttle(100, 100, 10 * MiB, MiB, 2, 0), 20);
}

static void test_throttle_converging(void **state)
{
    (void)state;
    /* Halved (exactly, or better) and the guest dirties under half the link rate: hold. */
    assert_int_equal(mig_ctl_throttle(1000, 500, MiB, 4 * MiB, 5, 0), 0);
    assert_int_equal(mig_ctl_throttle(1000, 100, MiB, 4 * MiB, 5, 30), 30);
    assert_int_equal(mig_ctl_throttle(1000, 0, 0, 4 * MiB, 5, 30), 30);
    /* Throughput unknown: only the shrink test counts. */
    assert_int_equal(mig_ctl_throttle(1000, 400, 100 * MiB, 0, 5, 0), 0);
    assert_int_equal(mig_ctl_throttle(1000, 600, 100 * MiB, 0, 5, 0), 20);
}

static void test_throttle_steps(void **state)
{
    (void)state;
    /* Not shrinking by half. */
    assert_int_equal(mig_ctl_throttle(1000, 501, MiB, 4 * MiB, 2, 0), 20);
    /* Shrinking, but the guest dirties at half the link rate or more. */
    assert_int_equal(mig_ctl_throttle(1000, 10, 2 * MiB, 4 * MiB, 2, 0), 20);
    assert_int_equal(mig_ctl_throttle(1000, 10, 2 * MiB - 1, 4 * MiB, 2, 0), 0);
    /* Then 10 more each pass, capped at 99. */
    unsigned cur = 0;
    static const unsigned want[] = {20, 30, 40, 50, 60, 70, 80, 90, 99, 99, 99};
    for (unsigned i = 0; i < sizeof want / sizeof want[0]; i++) {
        cur = mig_ctl_throttle(1000, 1000, MiB, MiB, 2 + i, cur);
        assert_int_equal(cur, want[i]);
    }
    assert_int_equal(mig_ctl_throttle(1000, 2000, MiB, MiB, 9, 95), 99);
    assert_int_equal(mig_ctl_throttle(1000, 2000, MiB, MiB, 9, 89), 99);
    assert_int_equal(mig_ctl_throttle(1000, 2000, MiB, MiB, 9, 85), 95);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_start_without_disks),
        cmocka_unit_test(test_start_joint),
        cmocka_unit_test(test_start_disk_first),
        cmocka_unit_test(test_switchover_boundary),
        cmocka_unit_test(test_switchover_preconditions),
        cmocka_unit_test(test_switchover_no_throughput),
        cmocka_unit_test(test_switchover_without_disks),
        cmocka_unit_test(test_expected_downtime),
        cmocka_unit_test(test_abort),
        cmocka_unit_test(test_abort_unbounded),
        cmocka_unit_test(test_switchover_settles),
        cmocka_unit_test(test_hold_hot),
        cmocka_unit_test(test_throttle_first_passes),
        cmocka_unit_test(test_throttle_converging),
        cmocka_unit_test(test_throttle_steps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
