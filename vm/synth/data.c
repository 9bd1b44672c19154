/* data.c: the synthetic guest's self-checking page and block formats. */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "common/log.h"
#include "common/zero.h"
#include "vm/synth/synth-internal.h"

#define PAGE_MAGIC 0x4547415047534d42ull  /* "BMSGPAGE" little-endian */
#define BLOCK_MAGIC 0x4b4c424b53534d42ull /* "BMSSKBLK" */

struct hdr {
    uint64_t index, gen, checksum, magic;
};

uint64_t synth_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

uint64_t synth_rand(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* Fill a body deterministically from (salt, index, gen): splitmix64. */
static void fill_body(uint8_t *p, uint64_t salt, uint64_t index, uint64_t gen)
{
    uint64_t x = salt ^ (index * 0x9E3779B97F4A7C15ull) ^ (gen << 32) ^ gen;
    uint64_t *w = (uint64_t *)(void *)p;
    for (size_t i = 0; i < (SYNTH_BLOCK - SYNTH_HDR) / 8; i++) {
        x += 0x9E3779B97F4A7C15ull;
        uint64_t z = x;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        w[i] = z ^ (z >> 31);
    }
}

static void format(uint8_t *p, uint64_t magic, uint64_t index, uint64_t gen)
{
    fill_body(p + SYNTH_HDR, magic, index, gen);
    struct hdr h = {index, gen, XXH3_64bits(p + SYNTH_HDR, SYNTH_BLOCK - SYNTH_HDR), magic};
    memcpy(p, &h, sizeof h);
}

/* 0 = good; otherwise a short reason. */
static const char *verify(const uint8_t *p, uint64_t magic, uint64_t index, uint64_t gen)
{
    if (gen == 0)
        return bm_is_zero(p, SYNTH_BLOCK) ? NULL : "never written but not zero";
    struct hdr h;
    memcpy(&h, p, sizeof h);
    if (h.magic != magic)
        return "bad magic";
    if (h.index != index)
        return "wrong index";
    if (h.gen != gen)
        return h.gen < gen ? "stale generation" : "generation from the future";
    if (h.checksum != XXH3_64bits(p + SYNTH_HDR, SYNTH_BLOCK - SYNTH_HDR))
        return "checksum mismatch";
    return NULL;
}

void synth_record_error(struct synth *s, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&s->mu);
    if (atomic_fetch_add(&s->errors, 1) == 0)
        snprintf(s->first_error, sizeof s->first_error, "%s", msg);
    pthread_mutex_unlock(&s->mu);
    bm_warn("synthetic guest: %s", msg);
    if (s->fn) {
        struct json_object *d = json_object_new_object();
        json_object_object_add(d, "error", json_object_new_string(msg));
        s->fn(s->opaque, "guest-error", d);
    }
}

void synth_mark_gpa(struct synth *s, const void *p, size_t len)
{
    uint64_t off = (uint64_t)((const uint8_t *)p - s->ram);
    bm_bitmap_set_range(s->dirty, off, len);
}

void synth_write_page(struct synth *s, uint64_t idx)
{
    uint8_t *p = s->ram + idx * SYNTH_BLOCK;
    uint32_t gen = s->page_gen[idx] + 1;
    format(p, PAGE_MAGIC, idx, gen);
    s->page_gen[idx] = gen;
    /* Marked after the writes (the ordering invariant). */
    bm_bitmap_set_bits(s->dirty, idx, 1);
    synth_mark_gpa(s, &s->page_gen[idx], sizeof(uint32_t));
    atomic_fetch_add(&s->ram_writes, 1);
}

int synth_check_page(struct synth *s, uint64_t idx)
{
    atomic_fetch_add(&s->ram_checks, 1);
    const char *why = verify(s->ram + idx * SYNTH_BLOCK, PAGE_MAGIC, idx, s->page_gen[idx]);
    if (!why)
        return 0;
    synth_record_error(s, "RAM page %llu (generation %u): %s", (unsigned long long)idx,
                       s->page_gen[idx], why);
    return -1;
}

int synth_write_blocks(struct synth *s, unsigned k, uint64_t first, uint32_t n, uint8_t *buf)
{
    struct synth_disk_meta *m = &s->dm[k];
    for (uint32_t i = 0; i < n; i++)
        format(buf + (size_t)i * SYNTH_BLOCK, BLOCK_MAGIC, first + i, m->gen[first + i] + 1);
    int r = bm_disk_pwrite(s->vm.disks[k].disk, buf, (size_t)n * SYNTH_BLOCK,
                           first * SYNTH_BLOCK, 0);
    if (r < 0) {
        synth_record_error(s, "disk %s: write at block %llu: %s", s->vm.disks[k].name,
                           (unsigned long long)first, strerror(-r));
        return r;
    }
    for (uint32_t i = 0; i < n; i++)
        m->gen[first + i]++;
    synth_mark_gpa(s, &m->gen[first], (size_t)n * sizeof(uint32_t));
    atomic_fetch_add(&s->disk_writes, n);
    return 0;
}

int synth_check_block(struct synth *s, unsigned k, uint64_t block, uint8_t *buf)
{
    struct synth_disk_meta *m = &s->dm[k];
    uint32_t gen = m->gen[block];
    if (gen == 0)
        return 0; /* not the guest's data: whatever the image held */
    atomic_fetch_add(&s->disk_checks, 1);
    int r = bm_disk_pread(s->vm.disks[k].disk, buf, SYNTH_BLOCK, block * SYNTH_BLOCK);
    if (r < 0) {
        synth_record_error(s, "disk %s: read at block %llu: %s", s->vm.disks[k].name,
                           (unsigned long long)block, strerror(-r));
        return -1;
    }
    const char *why = verify(buf, BLOCK_MAGIC, block, gen);
    if (!why)
        return 0;
    synth_record_error(s, "disk %s block %llu (generation %u): %s", s->vm.disks[k].name,
                       (unsigned long long)block, gen, why);
    return -1;
}
