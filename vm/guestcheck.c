/* guestcheck.c: the host's check of the test guest by content (guestcheck.h, docs/guest.md
 * "Layout record"). */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vm/blockfmt.h"
#include "vm/guestcheck.h"

/* docs/guest.md gives the record byte by byte. */
_Static_assert(sizeof(struct bm_guest_layout) == 272, "the layout record's size is its version");
_Static_assert(offsetof(struct bm_guest_layout, busy_page) == 240, "layout record offsets");

#define WINDOW 256u /* blocks read at once (1 MiB) */

static void report(struct bm_gcheck *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void report(struct bm_gcheck *c, const char *fmt, ...)
{
    c->mismatches++;
    if (c->nreports == BM_GCHECK_REPORTS)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->report[c->nreports++], sizeof c->report[0], fmt, ap);
    va_end(ap);
}

/* [gpa, gpa + len) lies in RAM. */
static bool in_ram(uint64_t ram_size, uint64_t gpa, uint64_t len)
{
    return gpa <= ram_size && len <= ram_size - gpa;
}

static uint32_t gen_at(const uint8_t *ram, uint64_t table, uint64_t i)
{
    uint32_t g;
    memcpy(&g, ram + table + 4 * i, 4);
    return g;
}

static int bad_layout(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int bad_layout(char *err, size_t errlen, const char *fmt, ...)
{
    int n = snprintf(err, errlen, "the guest's layout record is not valid: ");
    va_list ap;
    va_start(ap, fmt);
    if (n >= 0 && (size_t)n < errlen)
        vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return -EPROTO;
}

static int check_layout(const struct bm_guest_layout *l, uint64_t ram_size, char *err,
                        size_t errlen)
{
    if (l->size != sizeof *l)
        return bad_layout(err, errlen, "size %" PRIu64 ", expected %zu (a different guest build?)",
                          l->size, sizeof *l);
    if (l->ndisks > BM_LAYOUT_MAX_DISKS)
        return bad_layout(err, errlen, "%" PRIu64 " disks", l->ndisks);
    if (l->npages > ram_size / BM_FMT_SIZE || !in_ram(ram_size, l->page_gen, 4 * l->npages) ||
        l->area % BM_FMT_SIZE || !in_ram(ram_size, l->area, l->npages * BM_FMT_SIZE))
        return bad_layout(err, errlen,
                          "%" PRIu64 " pages at 0x%" PRIx64 " (generations at 0x%" PRIx64
                          ") do not fit in %" PRIu64 " bytes of RAM",
                          l->npages, l->area, l->page_gen, ram_size);
    if (l->busy_page > l->npages || l->busy_disk > l->ndisks)
        return bad_layout(err, errlen, "busy page %" PRIu64 ", busy disk %" PRIu64, l->busy_page,
                          l->busy_disk);
    for (unsigned k = 0; k < l->ndisks; k++)
        if (l->disk[k].nblocks > (UINT64_MAX >> 13) ||
            !in_ram(ram_size, l->disk[k].gen, 4 * l->disk[k].nblocks))
            return bad_layout(err, errlen,
                              "disk %u: %" PRIu64 " generations at 0x%" PRIx64 " do not fit in RAM",
                              k, l->disk[k].nblocks, l->disk[k].gen);
    return 0;
}

static int check_disk(const uint8_t *ram, const struct bm_guest_layout *l, unsigned k,
                      struct bm_disk *d, uint8_t *buf, struct bm_gcheck *c, char *err,
                      size_t errlen)
{
    uint64_t nblocks = l->disk[k].nblocks, table = l->disk[k].gen;
    bool busy = l->busy_disk == k + 1ull;
    uint64_t bfirst = l->busy_first, bend = l->busy_first + l->busy_count;
    if (bm_disk_size(d) < nblocks * BM_FMT_SIZE) {
        snprintf(err, errlen,
                 "disk %u: %" PRIu64 " bytes, but the guest knows it as %" PRIu64 " bytes", k,
                 bm_disk_size(d), nblocks * BM_FMT_SIZE);
        return -EINVAL;
    }
    for (uint64_t w = 0; w < nblocks; w += WINDOW) {
        uint64_t n = nblocks - w < WINDOW ? nblocks - w : WINDOW;
        bool any = busy && bfirst < w + n && bend > w;
        for (uint64_t b = w; b < w + n && !any; b++)
            any = gen_at(ram, table, b) != 0;
        if (!any)
            continue;
        int r = bm_disk_pread(d, buf, n * BM_FMT_SIZE, w * BM_FMT_SIZE);
        if (r < 0) {
            snprintf(err, errlen, "disk %u: reading block %" PRIu64 ": %s", k, w, strerror(-r));
            return r;
        }
        for (uint64_t b = w; b < w + n; b++) {
            uint32_t gen = gen_at(ram, table, b);
            const uint8_t *p = buf + (b - w) * BM_FMT_SIZE;
            if (busy && b >= bfirst && b < bend) {
                /* Written or not yet when the guest stopped: either generation will do. */
                if (!bm_fmt_verify(p, BM_FMT_BLOCK_MAGIC, b, gen + 1ull) ||
                    (gen && !bm_fmt_verify(p, BM_FMT_BLOCK_MAGIC, b, gen)))
                    c->blocks++;
                else if (gen == 0)
                    c->skipped++; /* the image's own bytes, not the guest's yet */
                else
                    report(c, "disk %u block %" PRIu64 " (generation %u or %u, being written)", k,
                           b, gen, gen + 1);
                continue;
            }
            if (gen == 0)
                continue; /* not the guest's data */
            c->blocks++;
            const char *why = bm_fmt_verify(p, BM_FMT_BLOCK_MAGIC, b, gen);
            if (why)
                report(c, "disk %u block %" PRIu64 " (generation %u): %s", k, b, gen, why);
        }
    }
    return 0;
}

int bm_guest_check(const uint8_t *ram, uint64_t ram_size, struct bm_disk *const *disks,
                   unsigned ndisks, struct bm_gcheck *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    struct bm_guest_layout l;
    if (!in_ram(ram_size, BM_LAYOUT_GPA, sizeof l)) {
        snprintf(err, errlen, "RAM (%" PRIu64 " bytes) ends before the guest's layout record",
                 ram_size);
        return -ENOENT;
    }
    memcpy(&l, ram + BM_LAYOUT_GPA, sizeof l);
    if (l.magic != BM_LAYOUT_MAGIC) {
        snprintf(err, errlen,
                 "no layout record at 0x%llx (not the test guest, or it has not laid out its "
                 "RAM yet)",
                 (unsigned long long)BM_LAYOUT_GPA);
        return -ENOENT;
    }
    int r = check_layout(&l, ram_size, err, errlen);
    if (r < 0)
        return r;
    out->ndisks = (unsigned)l.ndisks;
    for (uint64_t i = 0; i < l.npages; i++) {
        if (l.busy_page == i + 1) {
            out->skipped++; /* being formatted: neither generation is whole */
            continue;
        }
        uint32_t gen = gen_at(ram, l.page_gen, i);
        out->pages++;
        const char *why = bm_fmt_verify(ram + l.area + i * BM_FMT_SIZE, BM_FMT_PAGE_MAGIC, i, gen);
        if (why)
            report(out, "RAM page %" PRIu64 " at 0x%" PRIx64 " (generation %u): %s", i,
                   l.area + i * BM_FMT_SIZE, gen, why);
    }
    uint8_t *buf = NULL;
    for (unsigned k = 0; k < l.ndisks && k < ndisks; k++) {
        if (!disks[k])
            continue;
        if (!buf && !(buf = aligned_alloc(4096, (size_t)WINDOW * BM_FMT_SIZE))) {
            snprintf(err, errlen, "out of memory");
            return -ENOMEM;
        }
        if ((r = check_disk(ram, &l, k, disks[k], buf, out, err, errlen)) < 0)
            break;
    }
    free(buf);
    return r;
}
