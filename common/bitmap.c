/* bitmap.c: lock-free atomic bitmap used for dirty-block tracking. */
#include <config.h>

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "common/bitmap.h"

struct bm_bitmap {
    uint64_t size;
    uint64_t nbits;
    uint64_t nwords;
    uint32_t granularity;
    unsigned shift;
    _Atomic uint64_t *words;
};

struct bm_bitmap *bm_bitmap_new(uint64_t size, uint32_t granularity)
{
    if (granularity < 512 || (granularity & (granularity - 1)) != 0) {
        errno = EINVAL;
        return NULL;
    }
    struct bm_bitmap *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->size = size;
    b->granularity = granularity;
    b->shift = (unsigned)__builtin_ctz(granularity);
    b->nbits = (size >> b->shift) + ((size & (granularity - 1)) ? 1 : 0);
    b->nwords = (b->nbits + 63) / 64;
    b->words = calloc(b->nwords ? b->nwords : 1, sizeof *b->words);
    if (!b->words) {
        free(b);
        errno = ENOMEM;
        return NULL;
    }
    return b;
}

void bm_bitmap_free(struct bm_bitmap *b)
{
    if (!b)
        return;
    free(b->words);
    free(b);
}

uint64_t bm_bitmap_size(const struct bm_bitmap *b)
{
    return b->size;
}

uint32_t bm_bitmap_granularity(const struct bm_bitmap *b)
{
    return b->granularity;
}

uint64_t bm_bitmap_nbits(const struct bm_bitmap *b)
{
    return b->nbits;
}

/* Mask of bits [lo, hi) within one word, 0 <= lo < hi <= 64. */
static inline uint64_t word_mask(unsigned lo, unsigned hi)
{
    uint64_t m = hi == 64 ? ~UINT64_C(0) : ((UINT64_C(1) << hi) - 1);
    return m & ~((UINT64_C(1) << lo) - 1);
}

static void apply_bits(struct bm_bitmap *b, uint64_t first, uint64_t count, bool set)
{
    if (first >= b->nbits || count == 0)
        return;
    if (count > b->nbits - first)
        count = b->nbits - first;
    uint64_t end = first + count;
    while (first < end) {
        uint64_t w = first / 64;
        unsigned lo = (unsigned)(first % 64);
        unsigned hi = (end - w * 64) >= 64 ? 64 : (unsigned)(end - w * 64);
        uint64_t m = word_mask(lo, hi);
        /* Always a full read-modify-write: skipping it when the bits look set already could
         * order the set before a racing clear and lose a dirty block. */
        if (set) {
            atomic_fetch_or(&b->words[w], m);
        } else {
            atomic_fetch_and(&b->words[w], ~m);
        }
        first = w * 64 + hi;
    }
}

void bm_bitmap_set_bits(struct bm_bitmap *b, uint64_t first, uint64_t count)
{
    apply_bits(b, first, count, true);
}

void bm_bitmap_clear_bits(struct bm_bitmap *b, uint64_t first, uint64_t count)
{
    apply_bits(b, first, count, false);
}

bool bm_bitmap_test(const struct bm_bitmap *b, uint64_t bit)
{
    if (bit >= b->nbits)
        return false;
    return (atomic_load(&b->words[bit / 64]) >> (bit % 64)) & 1;
}

static bool range_to_bits(const struct bm_bitmap *b, uint64_t offset, uint64_t len,
                          uint64_t *first, uint64_t *count)
{
    if (len == 0 || offset >= b->size)
        return false;
    if (len > b->size - offset)
        len = b->size - offset;
    uint64_t last = (offset + len - 1) >> b->shift;
    *first = offset >> b->shift;
    *count = last - *first + 1;
    return true;
}

void bm_bitmap_set_range(struct bm_bitmap *b, uint64_t offset, uint64_t len)
{
    uint64_t first, count;
    if (range_to_bits(b, offset, len, &first, &count))
        apply_bits(b, first, count, true);
}

void bm_bitmap_clear_range(struct bm_bitmap *b, uint64_t offset, uint64_t len)
{
    uint64_t first, count;
    if (range_to_bits(b, offset, len, &first, &count))
        apply_bits(b, first, count, false);
}

uint64_t bm_bitmap_count(const struct bm_bitmap *b)
{
    uint64_t n = 0;
    for (uint64_t w = 0; w < b->nwords; w++)
        n += (uint64_t)__builtin_popcountll(atomic_load_explicit(&b->words[w],
                                                                 memory_order_relaxed));
    return n;
}

uint64_t bm_bitmap_dirty_bytes(const struct bm_bitmap *b)
{
    uint64_t n = bm_bitmap_count(b) << b->shift;
    /* The last block may be short. */
    if (b->nbits && bm_bitmap_test(b, b->nbits - 1) && (b->size & (b->granularity - 1)))
        n -= b->granularity - (b->size & (b->granularity - 1));
    return n;
}

static uint64_t next_bit(const struct bm_bitmap *b, uint64_t from, bool want_set)
{
    if (from >= b->nbits)
        return UINT64_MAX;
    uint64_t w = from / 64;
    uint64_t word = atomic_load_explicit(&b->words[w], memory_order_relaxed);
    if (!want_set)
        word = ~word;
    word &= ~((UINT64_C(1) << (from % 64)) - 1);
    for (;;) {
        if (word) {
            uint64_t bit = w * 64 + (uint64_t)__builtin_ctzll(word);
            return bit < b->nbits ? bit : UINT64_MAX;
        }
        if (++w >= b->nwords)
            return UINT64_MAX;
        word = atomic_load_explicit(&b->words[w], memory_order_relaxed);
        if (!want_set)
            word = ~word;
    }
}

uint64_t bm_bitmap_next_set(const struct bm_bitmap *b, uint64_t from)
{
    return next_bit(b, from, true);
}

uint64_t bm_bitmap_next_clear(const struct bm_bitmap *b, uint64_t from)
{
    return next_bit(b, from, false);
}

bool bm_bitmap_next_run(const struct bm_bitmap *b, uint64_t *bit, uint64_t *count,
                        uint64_t max_bits)
{
    uint64_t start = next_bit(b, *bit, true);
    if (start == UINT64_MAX)
        return false;
    uint64_t end = next_bit(b, start, false);
    if (end == UINT64_MAX)
        end = b->nbits;
    uint64_t n = end - start;
    if (max_bits && n > max_bits)
        n = max_bits;
    *bit = start;
    *count = n;
    return true;
}

static bool same_geometry(const struct bm_bitmap *a, const struct bm_bitmap *b)
{
    return a->size == b->size && a->granularity == b->granularity;
}

int bm_bitmap_snapshot_and_clear(struct bm_bitmap *b, struct bm_bitmap *out)
{
    if (!same_geometry(b, out))
        return -EINVAL;
    for (uint64_t w = 0; w < b->nwords; w++) {
        if (atomic_load_explicit(&b->words[w], memory_order_relaxed) == 0)
            continue;
        uint64_t old = atomic_exchange(&b->words[w], 0);
        if (old)
            atomic_fetch_or(&out->words[w], old);
    }
    return 0;
}

int bm_bitmap_merge(struct bm_bitmap *out, const struct bm_bitmap *b)
{
    if (!same_geometry(b, out))
        return -EINVAL;
    for (uint64_t w = 0; w < b->nwords; w++) {
        uint64_t v = atomic_load(&b->words[w]);
        if (v)
            atomic_fetch_or(&out->words[w], v);
    }
    return 0;
}

int bm_bitmap_subtract(struct bm_bitmap *out, const struct bm_bitmap *b)
{
    if (!same_geometry(b, out))
        return -EINVAL;
    for (uint64_t w = 0; w < b->nwords; w++) {
        uint64_t v = atomic_load(&b->words[w]);
        if (v)
            atomic_fetch_and(&out->words[w], ~v);
    }
    return 0;
}
