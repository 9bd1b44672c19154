/* test-bitmap.c: unit tests for common/bitmap (ranges, iteration, counting, snapshot, races). */
#include <config.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>

#include "common/bitmap.h"

static void test_geometry(void **state)
{
    (void)state;
    struct bm_bitmap *b = bm_bitmap_new(1000000, 65536);
    assert_non_null(b);
    assert_int_equal(bm_bitmap_nbits(b), 16); /* 15.26 blocks round up */
    assert_int_equal(bm_bitmap_granularity(b), 65536);
    bm_bitmap_free(b);
    assert_null(bm_bitmap_new(1 << 20, 1000)); /* not a power of two */
    assert_null(bm_bitmap_new(1 << 20, 256));  /* below 512 */
    b = bm_bitmap_new(0, 4096);
    assert_non_null(b);
    assert_int_equal(bm_bitmap_nbits(b), 0);
    bm_bitmap_set_range(b, 0, 100); /* harmless */
    assert_int_equal(bm_bitmap_count(b), 0);
    bm_bitmap_free(b);
}

static void test_set_clear_ranges(void **state)
{
    (void)state;
    struct bm_bitmap *b = bm_bitmap_new(1 << 30, 4096); /* 262144 bits */
    bm_bitmap_set_range(b, 4095, 2); /* touches blocks 0 and 1 */
    assert_true(bm_bitmap_test(b, 0));
    assert_true(bm_bitmap_test(b, 1));
    assert_false(bm_bitmap_test(b, 2));
    assert_int_equal(bm_bitmap_count(b), 2);
    /* A range across many words. */
    bm_bitmap_set_bits(b, 60, 200);
    assert_int_equal(bm_bitmap_count(b), 2 + 200);
    assert_true(bm_bitmap_test(b, 259));
    assert_false(bm_bitmap_test(b, 260));
    bm_bitmap_clear_bits(b, 100, 50);
    assert_int_equal(bm_bitmap_count(b), 152);
    assert_false(bm_bitmap_test(b, 100));
    assert_false(bm_bitmap_test(b, 149));
    assert_true(bm_bitmap_test(b, 150));
    /* Clipping at the end. */
    bm_bitmap_set_bits(b, 262140, 100);
    assert_int_equal(bm_bitmap_count(b), 156);
    bm_bitmap_clear_range(b, 0, UINT64_MAX);
    assert_int_equal(bm_bitmap_count(b), 0);
    bm_bitmap_free(b);
}

static void test_dirty_bytes_short_last_block(void **state)
{
    (void)state;
    struct bm_bitmap *b = bm_bitmap_new(10000, 4096); /* last block is 1808 bytes */
    bm_bitmap_set_range(b, 9000, 1);
    assert_int_equal(bm_bitmap_dirty_bytes(b), 10000 - 8192);
    bm_bitmap_set_range(b, 0, 1);
    assert_int_equal(bm_bitmap_dirty_bytes(b), 4096 + 10000 - 8192);
    bm_bitmap_free(b);
}

static void test_iterate_runs(void **state)
{
    (void)state;
    struct bm_bitmap *b = bm_bitmap_new(1000 * 512, 512);
    bm_bitmap_set_bits(b, 3, 4);
    bm_bitmap_set_bits(b, 63, 2); /* across a word boundary */
    bm_bitmap_set_bits(b, 999, 1);
    assert_int_equal(bm_bitmap_next_set(b, 0), 3);
    assert_int_equal(bm_bitmap_next_clear(b, 3), 7);
    assert_int_equal(bm_bitmap_next_set(b, 7), 63);
    uint64_t bit = 0, count = 0;
    assert_true(bm_bitmap_next_run(b, &bit, &count, 0));
    assert_int_equal(bit, 3);
    assert_int_equal(count, 4);
    bit += count;
    assert_true(bm_bitmap_next_run(b, &bit, &count, 0));
    assert_int_equal(bit, 63);
    assert_int_equal(count, 2);
    bit += count;
    assert_true(bm_bitmap_next_run(b, &bit, &count, 0));
    assert_int_equal(bit, 999);
    assert_int_equal(count, 1);
    bit += count;
    assert_false(bm_bitmap_next_run(b, &bit, &count, 0));
    assert_int_equal(bm_bitmap_next_set(b, 1000), UINT64_MAX);
    /* max_bits splits a long run. */
    bm_bitmap_set_bits(b, 100, 300);
    bit = 100;
    assert_true(bm_bitmap_next_run(b, &bit, &count, 128));
    assert_int_equal(bit, 100);
    assert_int_equal(count, 128);
    bm_bitmap_free(b);
}

static void test_next_clear_full(void **state)
{
    (void)state;
    struct bm_bitmap *b = bm_bitmap_new(128 * 512, 512);
    bm_bitmap_set_bits(b, 0, 128);
    assert_int_equal(bm_bitmap_next_clear(b, 0), UINT64_MAX);
    uint64_t bit = 0, count = 0;
    assert_true(bm_bitmap_next_run(b, &bit, &count, 0));
    assert_int_equal(count, 128);
    bm_bitmap_free(b);
}

static void test_snapshot_and_clear(void **state)
{
    (void)state;
    struct bm_bitmap *b = bm_bitmap_new(1 << 20, 4096);
    struct bm_bitmap *snap = bm_bitmap_new(1 << 20, 4096);
    struct bm_bitmap *other = bm_bitmap_new(1 << 21, 4096);
    bm_bitmap_set_bits(b, 5, 10);
    bm_bitmap_set_bits(snap, 200, 1); /* snapshot ORs into what it had */
    assert_int_equal(bm_bitmap_snapshot_and_clear(b, snap), 0);
    assert_int_equal(bm_bitmap_count(b), 0);
    assert_int_equal(bm_bitmap_count(snap), 11);
    assert_true(bm_bitmap_test(snap, 14));
    assert_int_equal(bm_bitmap_snapshot_and_clear(b, other), -EINVAL);
    assert_int_equal(bm_bitmap_merge(b, snap), 0);
    assert_int_equal(bm_bitmap_count(b), 11);
    /* Subtract: b &= ~x, bits outside x untouched. */
    struct bm_bitmap *x = bm_bitmap_new(1 << 20, 4096);
    bm_bitmap_set_bits(x, 10, 100);
    assert_int_equal(bm_bitmap_subtract(b, x), 0);
    assert_int_equal(bm_bitmap_count(b), 6); /* 5..9 and 200 */
    assert_true(bm_bitmap_test(b, 9) && !bm_bitmap_test(b, 10) && bm_bitmap_test(b, 200));
    assert_int_equal(bm_bitmap_count(x), 100);
    assert_int_equal(bm_bitmap_subtract(b, other), -EINVAL);
    bm_bitmap_free(x);
    bm_bitmap_free(b);
    bm_bitmap_free(snap);
    bm_bitmap_free(other);
}

#define SETTERS 4
#define PER_THREAD 20000

struct setter_arg {
    struct bm_bitmap *b;
    unsigned id;
};

static void *setter(void *p)
{
    struct setter_arg *a = p;
    /* Interleaved bits, so every thread hits every word. */
    for (uint64_t i = 0; i < PER_THREAD; i++)
        bm_bitmap_set_bits(a->b, i * SETTERS + a->id, 1);
    return NULL;
}

static void test_concurrent_setters(void **state)
{
    (void)state;
    struct bm_bitmap *b = bm_bitmap_new((uint64_t)SETTERS * PER_THREAD * 512, 512);
    pthread_t t[SETTERS];
    struct setter_arg a[SETTERS];
    for (unsigned i = 0; i < SETTERS; i++) {
        a[i] = (struct setter_arg){b, i};
        pthread_create(&t[i], NULL, setter, &a[i]);
    }
    for (unsigned i = 0; i < SETTERS; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(bm_bitmap_count(b), (uint64_t)SETTERS * PER_THREAD);
    bm_bitmap_free(b);
}

struct race {
    struct bm_bitmap *live;
    _Atomic int done;
};

static void *race_setter(void *p)
{
    struct race *r = p;
    for (uint64_t i = 0; i < 200000; i++)
        bm_bitmap_set_bits(r->live, i % 4096, 1);
    atomic_store(&r->done, 1);
    return NULL;
}

/* Every bit set while snapshots are being taken ends up in a snapshot or still in the live
 * map: none is lost. */
static void test_snapshot_races_setters(void **state)
{
    (void)state;
    struct race r = {.live = bm_bitmap_new(4096 * 512, 512)};
    struct bm_bitmap *acc = bm_bitmap_new(4096 * 512, 512);
    pthread_t t;
    pthread_create(&t, NULL, race_setter, &r);
    while (!atomic_load(&r.done))
        bm_bitmap_snapshot_and_clear(r.live, acc);
    pthread_join(t, NULL);
    bm_bitmap_snapshot_and_clear(r.live, acc);
    assert_int_equal(bm_bitmap_count(acc), 4096);
    bm_bitmap_free(r.live);
    bm_bitmap_free(acc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_geometry),
        cmocka_unit_test(test_set_clear_ranges),
        cmocka_unit_test(test_dirty_bytes_short_last_block),
        cmocka_unit_test(test_iterate_runs),
        cmocka_unit_test(test_next_clear_full),
        cmocka_unit_test(test_snapshot_and_clear),
        cmocka_unit_test(test_concurrent_setters),
        cmocka_unit_test(test_snapshot_races_setters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
