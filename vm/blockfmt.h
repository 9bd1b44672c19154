/* blockfmt.h: what the synthetic guest (vm/synth) and the test guest (vm/guest) share, so that
 * both run the same workload and write and verify the same bytes: the self-checking page and
 * disk-block format, and the workload's random choices.
 *
 * A 4 KiB page or block written by a guest holds a 32-byte header, four little-endian u64s
 * (index, generation, checksum, magic), then a body generated from (magic, index, generation)
 * with splitmix64; the checksum is XXH3-64 of the body. Generation 0 means "never written by
 * the guest": the page must then be all zero (RAM) or is not checked (disk).
 *
 * Freestanding (the guest has no libc): the guest defines XXH_INLINE_ALL (and XXH_VECTOR)
 * before including this file. */
#ifndef BM_VM_BLOCKFMT_H
#define BM_VM_BLOCKFMT_H

#include <stddef.h>
#include <stdint.h>
#include <xxhash.h>

#define BM_FMT_SIZE        4096u
#define BM_FMT_HDR         32u
#define BM_FMT_PAGE_MAGIC  0x4547415047534d42ull /* "BMSGPAGE" little-endian */
#define BM_FMT_BLOCK_MAGIC 0x4b4c424b53534d42ull /* "BMSSKBLK" */

struct bm_fmt_hdr {
    uint64_t index, gen, checksum, magic;
};

static inline void bm_fmt_fill_body(uint8_t *p, uint64_t salt, uint64_t index, uint64_t gen)
{
    uint64_t x = salt ^ (index * 0x9E3779B97F4A7C15ull) ^ (gen << 32) ^ gen;
    uint64_t *w = (uint64_t *)(void *)p;
    for (size_t i = 0; i < (BM_FMT_SIZE - BM_FMT_HDR) / 8; i++) {
        x += 0x9E3779B97F4A7C15ull;
        uint64_t z = x;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        w[i] = z ^ (z >> 31);
    }
}

/* Write page/block `index` at generation `gen` (>= 1) into p (BM_FMT_SIZE bytes). */
static inline void bm_fmt_format(uint8_t *p, uint64_t magic, uint64_t index, uint64_t gen)
{
    bm_fmt_fill_body(p + BM_FMT_HDR, magic, index, gen);
    struct bm_fmt_hdr h = {index, gen, XXH3_64bits(p + BM_FMT_HDR, BM_FMT_SIZE - BM_FMT_HDR),
                           magic};
    __builtin_memcpy(p, &h, sizeof h);
}

static inline int bm_fmt_all_zero(const uint8_t *p)
{
    const uint64_t *w = (const uint64_t *)(const void *)p;
    uint64_t acc = 0;
    for (size_t i = 0; i < BM_FMT_SIZE / 8; i++)
        acc |= w[i];
    return acc == 0;
}

/* NULL if p holds `index` at generation `gen` (all zero for gen 0), else a short reason. */
static inline const char *bm_fmt_verify(const uint8_t *p, uint64_t magic, uint64_t index,
                                        uint64_t gen)
{
    if (gen == 0)
        return bm_fmt_all_zero(p) ? NULL : "never written but not zero";
    struct bm_fmt_hdr h;
    __builtin_memcpy(&h, p, sizeof h);
    if (h.magic != magic)
        return "bad magic";
    if (h.index != index)
        return "wrong index";
    if (h.gen != gen)
        return h.gen < gen ? "stale generation" : "generation from the future";
    if (h.checksum != XXH3_64bits(p + BM_FMT_HDR, BM_FMT_SIZE - BM_FMT_HDR))
        return "checksum mismatch";
    return NULL;
}

/* The workload's generator: xorshift64*. */
static inline uint64_t bm_wl_rand(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* Access patterns (the numbering of enum synth_pattern). */
#define BM_WL_UNIFORM    0
#define BM_WL_HOTSPOT    1
#define BM_WL_SEQUENTIAL 2

/* The next of n pages or blocks to write: uniform over the first `hot` (all of them when hot
 * is 0 or > n); hotspot: 9 in 10 in the first `hot`, the rest over all n; sequential: cycles
 * through the first `hot` (*seq is the cursor). */
static inline uint64_t bm_wl_pick(int pattern, uint64_t n, uint64_t hot, uint64_t *seq,
                                  uint64_t *rng)
{
    if (hot == 0 || hot > n)
        hot = n;
    if (pattern == BM_WL_SEQUENTIAL) {
        if (*seq >= hot)
            *seq = 0;
        return (*seq)++;
    }
    if (pattern == BM_WL_HOTSPOT && bm_wl_rand(rng) % 10 == 0)
        return bm_wl_rand(rng) % n;
    return bm_wl_rand(rng) % hot;
}

/* The test guest's layout record (vm/guest, docs/guest.md): at a fixed guest-physical address
 * (the first page of its image), so that a host can check a paused guest's RAM and disks by
 * content (vm/guestcheck.c) under blkmig's VMM or from a QEMU memory dump. Little-endian
 * u64s. The guest writes `magic` last, once the rest holds. */
#define BM_LAYOUT_GPA       0x100000ull
#define BM_LAYOUT_MAGIC     0x315459414c474d42ull /* "BMGLAYT1" */
#define BM_LAYOUT_MAX_DISKS 8u

struct bm_guest_layout {
    uint64_t magic;
    uint64_t size;     /* sizeof(struct bm_guest_layout) */
    uint64_t page_gen; /* address of the pages' generations: u32 per page */
    uint64_t area;     /* address of workload page 0 */
    uint64_t npages;
    uint64_t ndisks;
    struct {
        uint64_t gen;     /* address of the blocks' generations: u32 per 4 KiB block */
        uint64_t nblocks; /* 4 KiB blocks */
        uint64_t mmio;    /* the device's virtio-mmio window (which disk it is) */
    } disk[BM_LAYOUT_MAX_DISKS];
    /* What the guest is changing right now: a pause can fall between writing a page or blocks
     * and recording their new generation. 1 + the page (0 = none); 1 + the disk (0 = none)
     * with the blocks [busy_first, busy_first + busy_count) of its write. */
    uint64_t busy_page;
    uint64_t busy_disk, busy_first, busy_count;
};

#endif
