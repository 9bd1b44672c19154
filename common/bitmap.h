/* bitmap.h: an atomic dirty bitmap over a byte range, one bit per granularity-sized block. */
#ifndef BM_COMMON_BITMAP_H
#define BM_COMMON_BITMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Bits may be set and cleared from any number of threads at once without a lock: every word is
 * updated with an atomic read-modify-write.  A reader that clears a bit and then reads the block
 * it covers, racing a writer that writes the block and then sets the bit, always ends with the
 * bit set (the ordering invariant of docs/architecture.md, "Disks and the mirror").
 */
struct bm_bitmap;

/* A bitmap covering [0, size) bytes in blocks of granularity bytes (a power of two >= 512).
 * Returns NULL with errno EINVAL or ENOMEM. */
struct bm_bitmap *bm_bitmap_new(uint64_t size, uint32_t granularity);
void bm_bitmap_free(struct bm_bitmap *b);

uint64_t bm_bitmap_size(const struct bm_bitmap *b);
uint32_t bm_bitmap_granularity(const struct bm_bitmap *b);
uint64_t bm_bitmap_nbits(const struct bm_bitmap *b);

/* Bit operations on [first, first + count) bits; ranges beyond the end are clipped. */
void bm_bitmap_set_bits(struct bm_bitmap *b, uint64_t first, uint64_t count);
void bm_bitmap_clear_bits(struct bm_bitmap *b, uint64_t first, uint64_t count);
bool bm_bitmap_test(const struct bm_bitmap *b, uint64_t bit);

/* Byte-range forms: every block that [offset, offset + len) touches. */
void bm_bitmap_set_range(struct bm_bitmap *b, uint64_t offset, uint64_t len);
void bm_bitmap_clear_range(struct bm_bitmap *b, uint64_t offset, uint64_t len);

/* Number of set bits, and of dirty bytes (set bits times granularity, clipped to size). */
uint64_t bm_bitmap_count(const struct bm_bitmap *b);
uint64_t bm_bitmap_dirty_bytes(const struct bm_bitmap *b);

/* First set (clear) bit at or after from, or UINT64_MAX if none. */
uint64_t bm_bitmap_next_set(const struct bm_bitmap *b, uint64_t from);
uint64_t bm_bitmap_next_clear(const struct bm_bitmap *b, uint64_t from);

/* The next run of set bits starting at or after *bit, at most max_bits long (0 = unlimited).
 * Returns false when there is none; otherwise *bit and *count describe the run. */
bool bm_bitmap_next_run(const struct bm_bitmap *b, uint64_t *bit, uint64_t *count,
                        uint64_t max_bits);

/* Move every set bit of b into out (which must have the same geometry): out |= b, b = 0,
 * word by word with atomic exchange, so no bit set concurrently is lost. */
int bm_bitmap_snapshot_and_clear(struct bm_bitmap *b, struct bm_bitmap *out);

/* out |= b. Same geometry required (-EINVAL otherwise). */
int bm_bitmap_merge(struct bm_bitmap *out, const struct bm_bitmap *b);
/* out &= ~b. Same geometry required (-EINVAL otherwise). */
int bm_bitmap_subtract(struct bm_bitmap *out, const struct bm_bitmap *b);

#endif
