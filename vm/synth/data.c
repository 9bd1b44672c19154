/* data.c: the synthetic guest's page and block writes and checks (format: vm/blockfmt.h). */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "common/log.h"
#include "common/zero.h"
#include "vm/blockfmt.h"
#include "vm/synth/synth-internal.h"

uint64_t synth_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

uint64_t synth_rand(uint64_t *state)
{
    return bm_wl_rand(state);
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
    bm_fmt_format(p, BM_FMT_PAGE_MAGIC, idx, gen);
    s->page_gen[idx] = gen;
    /* Marked after the writes (the ordering invariant). */
    bm_bitmap_set_bits(s->dirty, idx, 1);
    synth_mark_gpa(s, &s->page_gen[idx], sizeof(uint32_t));
    atomic_fetch_add(&s->ram_writes, 1);
}

int synth_check_page(struct synth *s, uint64_t idx)
{
    atomic_fetch_add(&s->ram_checks, 1);
    const char *why =
        bm_fmt_verify(s->ram + idx * SYNTH_BLOCK, BM_FMT_PAGE_MAGIC, idx, s->page_gen[idx]);
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
        bm_fmt_format(buf + (size_t)i * SYNTH_BLOCK, BM_FMT_BLOCK_MAGIC, first + i,
                      m->gen[first + i] + 1);
    int r =
        bm_disk_pwrite(s->vm.disks[k].disk, buf, (size_t)n * SYNTH_BLOCK, first * SYNTH_BLOCK, 0);
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
    const char *why = bm_fmt_verify(buf, BM_FMT_BLOCK_MAGIC, block, gen);
    if (!why)
        return 0;
    synth_record_error(s, "disk %s block %llu (generation %u): %s", s->vm.disks[k].name,
                       (unsigned long long)block, gen, why);
    return -1;
}
