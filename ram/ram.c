/* ram.c: RAM pre-copy: page records, the sender's passes over the dirty log, the loader. */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "common/io.h"
#include "common/log.h"
#include "common/zero.h"
#include "ram/ram.h"

size_t ram_encode_page(uint8_t *p, uint64_t gpa, const uint8_t *page, bool *was_zero)
{
    *was_zero = bm_is_zero(page, VM_PAGE_SIZE);
    bm_put_be64(p, gpa | (*was_zero ? RAM_REC_ZERO : RAM_REC_RAW));
    if (*was_zero)
        return 8;
    memcpy(p + 8, page, VM_PAGE_SIZE);
    return 8 + VM_PAGE_SIZE;
}

int ram_apply(struct vm *vm, struct bm_bitmap *loaded, const uint8_t *payload, size_t len,
              uint64_t *pages)
{
    size_t pos = 0;
    while (pos < len) {
        if (len - pos < 8)
            return -EBADMSG;
        uint64_t w = bm_get_be64(payload + pos);
        uint64_t gpa = w & ~(uint64_t)(VM_PAGE_SIZE - 1);
        unsigned kind = (unsigned)(w & (VM_PAGE_SIZE - 1));
        pos += 8;
        /* A whole page of one region: a record can never make this process touch (and so
         * commit) memory beyond the RAM the VM was built with. */
        uint8_t *host = vm_gpa_to_host(vm, gpa);
        if (!host)
            return -EBADMSG;
        uint64_t bit = gpa / VM_PAGE_SIZE;
        if (kind == RAM_REC_ZERO) {
            bool fresh = loaded && bit < bm_bitmap_nbits(loaded) && !bm_bitmap_test(loaded, bit);
            if (!fresh && !bm_is_zero(host, VM_PAGE_SIZE))
                memset(host, 0, VM_PAGE_SIZE);
        } else if (kind == RAM_REC_RAW) {
            if (len - pos < VM_PAGE_SIZE)
                return -EBADMSG;
            memcpy(host, payload + pos, VM_PAGE_SIZE);
            pos += VM_PAGE_SIZE;
            if (loaded && bit < bm_bitmap_nbits(loaded))
                bm_bitmap_set_bits(loaded, bit, 1);
        } else {
            return -EBADMSG;
        }
        (*pages)++;
    }
    return 0;
}

int ram_apply_zlib(struct vm *vm, struct bm_bitmap *loaded, const uint8_t *payload, size_t len,
                   uint64_t *pages)
{
    if (len < 4)
        return -EBADMSG;
    uint32_t raw = bm_get_be32(payload);
    if (raw > RAM_RAW_MAX)
        return -EBADMSG;
    uint8_t *buf = malloc(raw ? raw : 1);
    if (!buf)
        return -ENOMEM;
    uLongf out = raw;
    int r = uncompress(buf, &out, payload + 4, len - 4) == Z_OK && out == raw ? 0 : -EBADMSG;
    if (r == 0)
        r = ram_apply(vm, loaded, buf, raw, pages);
    free(buf);
    return r;
}

struct ram_sender {
    struct vm *vm;
    ram_send_fn send;
    void *opaque;
    bool compress;
    struct bm_bitmap *todo; /* pages to send, indexed by gpa / page */
    struct bm_bitmap *deferred; /* the hot set, left for the end of round 0 */
    bool hold_hot;          /* keep the hot set back even when round 0 reaches its end */
    uint64_t cursor;        /* next page of this pass */
    uint8_t *buf, *zbuf;
    size_t used, zcap;
    struct ram_stats st;
};

struct ram_sender *ram_sender_new(struct vm *vm, ram_send_fn send, void *opaque, bool compress)
{
    struct ram_sender *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->vm = vm;
    s->send = send;
    s->opaque = opaque;
    s->compress = compress;
    s->todo = bm_bitmap_new(vm_ram_end(vm), VM_PAGE_SIZE);
    s->buf = malloc(RAM_BATCH + 8 + VM_PAGE_SIZE);
    s->zcap = compressBound(RAM_BATCH + 8 + VM_PAGE_SIZE) + 4;
    s->zbuf = compress ? malloc(s->zcap) : NULL;
    if (!s->todo || !s->buf || (compress && !s->zbuf)) {
        ram_sender_free(s);
        return NULL;
    }
    return s;
}

void ram_sender_free(struct ram_sender *s)
{
    if (!s)
        return;
    bm_bitmap_free(s->todo);
    bm_bitmap_free(s->deferred);
    free(s->buf);
    free(s->zbuf);
    free(s);
}

uint64_t ram_count_nonzero(struct vm *vm)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < vm->nregions; i++)
        for (uint64_t off = 0; off < vm->regions[i].size; off += VM_PAGE_SIZE)
            n += !bm_is_zero(vm->regions[i].host + off, VM_PAGE_SIZE);
    return n;
}

int ram_sender_start(struct ram_sender *s, bool log_running)
{
    /* Start logging first, then mark everything: a page written from here on is in the log. */
    int r = log_running ? 0 : s->vm->ops->dirty_log_start(s->vm);
    if (r < 0)
        return r;
    for (unsigned i = 0; i < s->vm->nregions; i++)
        bm_bitmap_set_range(s->todo, s->vm->regions[i].gpa, s->vm->regions[i].size);
    s->cursor = 0;
    if (!log_running)
        return 0;
    /* Move the hot set out of this pass: harvest it (clearing the log), so any later write is
     * in the log again, and put it back when the pass ends. */
    s->deferred = bm_bitmap_new(vm_ram_end(s->vm), VM_PAGE_SIZE);
    if (!s->deferred)
        return -ENOMEM;
    r = s->vm->ops->dirty_log_sync(s->vm, s->deferred);
    if (r < 0)
        return r;
    uint64_t bit = 0, n;
    while (bm_bitmap_next_run(s->deferred, &bit, &n, 0)) {
        bm_bitmap_clear_bits(s->todo, bit, n);
        bit += n;
    }
    return 0;
}

int ram_sender_harvest(struct ram_sender *s)
{
    if (!s->deferred)
        return s->vm->ops->dirty_log_sync(s->vm, s->todo);
    /* Round 0 with a hot set: a page written now joins it, whether round 0 sent it already
     * (it must go again) or has yet to reach it (sending it now would send it twice). */
    int r = s->vm->ops->dirty_log_sync(s->vm, s->deferred);
    if (r == 0)
        r = bm_bitmap_subtract(s->todo, s->deferred);
    return r;
}

static int flush_batch(struct ram_sender *s)
{
    if (s->used == 0)
        return 0;
    int64_t r;
    uLongf zlen = s->zcap - 4;
    if (s->compress && compress2(s->zbuf + 4, &zlen, s->buf, s->used, 1) == Z_OK &&
        zlen + 4 < s->used) {
        bm_put_be32(s->zbuf, (uint32_t)s->used);
        r = s->send(s->opaque, true, s->zbuf, (uint32_t)zlen + 4);
    } else {
        r = s->send(s->opaque, false, s->buf, (uint32_t)s->used);
    }
    s->used = 0;
    if (r < 0)
        return (int)r;
    s->st.bytes += (uint64_t)r;
    return 0;
}

/* The pass has no page left: count it, and wrap (round 0 puts its hot set back). */
static void end_pass(struct ram_sender *s)
{
    s->cursor = 0;
    s->st.rounds++;
    if (s->deferred) {
        bm_bitmap_merge(s->todo, s->deferred);
        bm_bitmap_free(s->deferred);
        s->deferred = NULL;
    }
}

int ram_sender_step(struct ram_sender *s, uint64_t max_bytes)
{
    uint64_t sent = 0, npages = bm_bitmap_nbits(s->todo);
    /* The end of the pass is looked for before the budget: a step that sends the last page
     * also ends the pass. Callers step only while pages are dirty; a pass whose end were left
     * to a later call would never end when nothing more is dirtied (an idle guest). */
    for (;;) {
        uint64_t p = bm_bitmap_next_set(s->todo, s->cursor);
        if (p == UINT64_MAX || p >= npages) {
            if (s->deferred && s->hold_hot)
                s->cursor = npages; /* round 0 waits at its end */
            else
                end_pass(s);
            break;
        }
        if (sent >= max_bytes)
            break;
        /* Clear before reading (the ordering invariant): a write racing with the copy sets
         * the bit again and the page goes in the next pass. */
        bm_bitmap_clear_bits(s->todo, p, 1);
        s->cursor = p + 1;
        const uint8_t *host = vm_gpa_to_host(s->vm, p * VM_PAGE_SIZE);
        if (!host)
            continue;
        bool zero;
        size_t n = ram_encode_page(s->buf + s->used, p * VM_PAGE_SIZE, host, &zero);
        s->used += n;
        sent += n;
        if (zero)
            s->st.pages_zero++;
        else
            s->st.pages_normal++;
        if (s->used >= RAM_BATCH) {
            int r = flush_batch(s);
            if (r < 0)
                return r;
        }
    }
    return flush_batch(s);
}

void ram_sender_hold_hot(struct ram_sender *s, bool hold)
{
    s->hold_hot = hold;
    /* Round 0 waiting at its end: the release ends it (with an idle guest no page is dirty,
     * and no step would come to end it). */
    if (!hold && s->deferred && s->cursor >= bm_bitmap_nbits(s->todo))
        end_pass(s);
}

void ram_sender_stats(struct ram_sender *s, struct ram_stats *st)
{
    *st = s->st;
    st->dirty_pages = bm_bitmap_count(s->todo) + (s->deferred ? bm_bitmap_count(s->deferred) : 0);
}
