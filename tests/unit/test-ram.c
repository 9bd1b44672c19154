/* test-ram.c: unit tests for RAM pre-copy: page records, the loader, and a sender-to-loader run. */
#include <config.h>

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zlib.h>

#include "common/io.h"
#include "migration/stream.h"
#include "ram/ram.h"
#include "vm/synth/synth.h"

#define RAM_SIZE    (4u << 20)
#define NPAGES      (RAM_SIZE / VM_PAGE_SIZE)
#define REC_RAW_LEN (8 + VM_PAGE_SIZE)

static struct vm *new_vm(bool boot, const char *workload)
{
    struct synth_workload w;
    synth_workload_default(&w);
    char err[256];
    if (workload)
        assert_int_equal(synth_workload_parse(workload, &w, err, sizeof err), 0);
    struct vm *vm = NULL;
    int r = synth_create(RAM_SIZE, NULL, 0, &w, boot, NULL, NULL, &vm, err, sizeof err);
    if (r < 0)
        fail_msg("synth_create: %s", err);
    assert_non_null(vm);
    return vm;
}

static int vm_setup(void **state)
{
    *state = new_vm(false, NULL);
    return 0;
}

static int vm_teardown(void **state)
{
    vm_destroy(*state);
    return 0;
}

static uint8_t *host(struct vm *vm, uint64_t gpa)
{
    uint8_t *p = vm_gpa_to_host(vm, gpa);
    assert_non_null(p);
    return p;
}

static void fill_page(uint8_t *p, unsigned seed)
{
    for (unsigned i = 0; i < VM_PAGE_SIZE; i++)
        p[i] = (uint8_t)(seed * 37 + i * 11 + (i >> 8));
}

/* ---- page records ---- */

static void test_encode_zero(void **state)
{
    (void)state;
    uint8_t page[VM_PAGE_SIZE] = {0};
    uint8_t out[REC_RAW_LEN];
    memset(out, 0xaa, sizeof out);
    bool zero = false;
    assert_int_equal(ram_encode_page(out, 0x12345000, page, &zero), 8);
    assert_true(zero);
    static const uint8_t want[8] = {0, 0, 0, 0, 0x12, 0x34, 0x50, RAM_REC_ZERO};
    assert_memory_equal(out, want, 8);
    assert_int_equal(out[8], 0xaa); /* nothing written past the record */
    /* A high address keeps its top bits. */
    assert_int_equal(ram_encode_page(out, 0xfedcba9876543000ull, page, &zero), 8);
    assert_int_equal(bm_get_be64(out), 0xfedcba9876543000ull | RAM_REC_ZERO);
}

static void test_encode_raw(void **state)
{
    (void)state;
    uint8_t page[VM_PAGE_SIZE] = {0};
    uint8_t out[REC_RAW_LEN + 1];
    bool zero = true;
    /* One non-zero byte anywhere makes the page raw: the last byte here. */
    page[VM_PAGE_SIZE - 1] = 1;
    out[REC_RAW_LEN] = 0x77;
    assert_int_equal(ram_encode_page(out, 0x7000, page, &zero), REC_RAW_LEN);
    assert_false(zero);
    static const uint8_t want[8] = {0, 0, 0, 0, 0, 0, 0x70, RAM_REC_RAW};
    assert_memory_equal(out, want, 8);
    assert_memory_equal(out + 8, page, VM_PAGE_SIZE);
    assert_int_equal(out[REC_RAW_LEN], 0x77);
    fill_page(page, 3);
    assert_int_equal(ram_encode_page(out, 0, page, &zero), REC_RAW_LEN);
    assert_false(zero);
    assert_int_equal(bm_get_be64(out), RAM_REC_RAW);
    assert_memory_equal(out + 8, page, VM_PAGE_SIZE);
}

/* ---- the loader ---- */

static void test_apply_round_trip(void **state)
{
    struct vm *vm = *state;
    uint8_t *buf = malloc(4 * REC_RAW_LEN);
    uint8_t pa[VM_PAGE_SIZE], pb[VM_PAGE_SIZE], zero_page[VM_PAGE_SIZE] = {0};
    fill_page(pa, 1);
    fill_page(pb, 2);
    /* A page that a zero record must clear. */
    memset(host(vm, 0x3000), 0x5c, VM_PAGE_SIZE);
    size_t n = 0;
    bool z;
    n += ram_encode_page(buf + n, 0x1000, pa, &z);
    n += ram_encode_page(buf + n, 0x3000, zero_page, &z);
    n += ram_encode_page(buf + n, RAM_SIZE - VM_PAGE_SIZE, pb, &z); /* the last page */
    n += ram_encode_page(buf + n, 0x2000, zero_page, &z);           /* already zero */
    assert_int_equal(n, 2 * REC_RAW_LEN + 2 * 8);
    uint64_t pages = 0;
    assert_int_equal(ram_apply(vm, NULL, buf, n, &pages), 0);
    assert_int_equal(pages, 4);
    assert_memory_equal(host(vm, 0x1000), pa, VM_PAGE_SIZE);
    assert_memory_equal(host(vm, RAM_SIZE - VM_PAGE_SIZE), pb, VM_PAGE_SIZE);
    assert_memory_equal(host(vm, 0x3000), zero_page, VM_PAGE_SIZE);
    assert_memory_equal(host(vm, 0x2000), zero_page, VM_PAGE_SIZE);
    assert_memory_equal(host(vm, 0), zero_page, VM_PAGE_SIZE); /* untouched */
    /* The page count accumulates; an empty payload is fine and adds nothing. */
    assert_int_equal(ram_apply(vm, NULL, buf, 0, &pages), 0);
    assert_int_equal(pages, 4);
    /* A later record for the same page wins. */
    n = ram_encode_page(buf, 0x1000, pb, &z);
    n += ram_encode_page(buf + n, 0x1000, pa, &z);
    assert_int_equal(ram_apply(vm, NULL, buf, n, &pages), 0);
    assert_int_equal(pages, 6);
    assert_memory_equal(host(vm, 0x1000), pa, VM_PAGE_SIZE);
    free(buf);
}

static void test_apply_truncated(void **state)
{
    struct vm *vm = *state;
    uint8_t buf[2 * REC_RAW_LEN];
    uint8_t page[VM_PAGE_SIZE], zero_page[VM_PAGE_SIZE] = {0};
    fill_page(page, 9);
    uint64_t pages = 0;
    bool z;
    /* A header word cut short. */
    bm_put_be64(buf, 0x1000 | RAM_REC_ZERO);
    for (size_t len = 1; len < 8; len++)
        assert_int_equal(ram_apply(vm, NULL, buf, len, &pages), -EBADMSG);
    assert_int_equal(pages, 0);
    /* A good record, then a partial header word: the good one is applied, then it stops. */
    size_t n = ram_encode_page(buf, 0x5000, page, &z);
    bm_put_be64(buf + n, 0x6000 | RAM_REC_ZERO);
    assert_int_equal(ram_apply(vm, NULL, buf, n + 3, &pages), -EBADMSG);
    assert_int_equal(pages, 1);
    assert_memory_equal(host(vm, 0x5000), page, VM_PAGE_SIZE);
    /* A raw record missing data bytes changes nothing. */
    pages = 0;
    n = ram_encode_page(buf, 0x8000, page, &z);
    assert_int_equal(ram_apply(vm, NULL, buf, n - 1, &pages), -EBADMSG);
    assert_int_equal(ram_apply(vm, NULL, buf, 8, &pages), -EBADMSG);
    assert_int_equal(ram_apply(vm, NULL, buf, 8 + 100, &pages), -EBADMSG);
    assert_int_equal(pages, 0);
    assert_memory_equal(host(vm, 0x8000), zero_page, VM_PAGE_SIZE);
}

static void test_apply_bad_kind(void **state)
{
    struct vm *vm = *state;
    uint8_t buf[REC_RAW_LEN];
    memset(buf, 0x42, sizeof buf);
    uint8_t zero_page[VM_PAGE_SIZE] = {0};
    static const unsigned kinds[] = {0, 3, 4, 0x801, 0xfff};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        uint64_t pages = 0;
        bm_put_be64(buf, 0x4000 | kinds[i]);
        assert_int_equal(ram_apply(vm, NULL, buf, 8, &pages), -EBADMSG);
        /* Even with a page's worth of bytes behind it. */
        assert_int_equal(ram_apply(vm, NULL, buf, sizeof buf, &pages), -EBADMSG);
        assert_int_equal(pages, 0);
    }
    assert_memory_equal(host(vm, 0x4000), zero_page, VM_PAGE_SIZE);
}

static void test_apply_outside_ram(void **state)
{
    struct vm *vm = *state;
    uint8_t buf[REC_RAW_LEN];
    uint8_t page[VM_PAGE_SIZE];
    fill_page(page, 4);
    static const uint64_t bad[] = {RAM_SIZE, RAM_SIZE + VM_PAGE_SIZE, 1ull << 40,
                                   0xfffffffffffff000ull};
    bool z;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t pages = 0;
        size_t n = ram_encode_page(buf, bad[i], page, &z);
        assert_int_equal(ram_apply(vm, NULL, buf, n, &pages), -EBADMSG);
        bm_put_be64(buf, bad[i] | RAM_REC_ZERO);
        assert_int_equal(ram_apply(vm, NULL, buf, 8, &pages), -EBADMSG);
        assert_int_equal(pages, 0);
    }
}

/* A page that a region holds only in part is refused whole, raw or zero: nothing past the
 * region's end is touched. */
static void test_apply_partial_page(void **state)
{
    struct vm *vm = *state;
    uint8_t buf[REC_RAW_LEN], page[VM_PAGE_SIZE];
    fill_page(page, 5);
    uint64_t last = RAM_SIZE - VM_PAGE_SIZE, pages = 0;
    uint8_t *tail = host(vm, last);
    memset(tail, 0x5a, VM_PAGE_SIZE);
    vm->regions[0].size -= 100; /* the region ends 100 bytes short of its last page's end */
    bool z;
    size_t n = ram_encode_page(buf, last, page, &z);
    int r1 = ram_apply(vm, NULL, buf, n, &pages);
    bm_put_be64(buf, last | RAM_REC_ZERO);
    int r2 = ram_apply(vm, NULL, buf, 8, &pages);
    n = ram_encode_page(buf, last - VM_PAGE_SIZE, page, &z);
    int r3 = ram_apply(vm, NULL, buf, n, &pages);
    vm->regions[0].size += 100;
    assert_int_equal(r1, -EBADMSG);
    assert_int_equal(r2, -EBADMSG);
    assert_int_equal(r3, 0); /* the page before is whole */
    assert_int_equal(pages, 1);
    for (unsigned i = 0; i < VM_PAGE_SIZE; i++)
        assert_int_equal(tail[i], 0x5a);
}

/* With a loaded map, a zero record for a page the stream never wrote leaves fresh RAM alone;
 * raw records mark their page, and a later zero record for it clears it. */
static void test_apply_loaded(void **state)
{
    struct vm *vm = *state;
    struct bm_bitmap *loaded = bm_bitmap_new(vm_ram_end(vm), VM_PAGE_SIZE);
    assert_non_null(loaded);
    uint8_t buf[2 * REC_RAW_LEN];
    uint8_t page[VM_PAGE_SIZE], zero_page[VM_PAGE_SIZE] = {0};
    fill_page(page, 7);
    uint64_t pages = 0;
    bool z;

    /* A zero record for a fresh page: counted, nothing marked, the page not touched (the
     * marker byte shows it was not rewritten). */
    uint8_t *h = host(vm, 0x6000);
    h[5] = 0xee;
    size_t n = ram_encode_page(buf, 0x6000, zero_page, &z);
    assert_int_equal(ram_apply(vm, loaded, buf, n, &pages), 0);
    assert_int_equal(pages, 1);
    assert_int_equal(bm_bitmap_count(loaded), 0);
    assert_int_equal(h[5], 0xee);
    h[5] = 0;

    /* A raw record marks its page; a zero record then clears it. */
    n = ram_encode_page(buf, 0x7000, page, &z);
    assert_int_equal(ram_apply(vm, loaded, buf, n, &pages), 0);
    assert_true(bm_bitmap_test(loaded, 7));
    assert_int_equal(bm_bitmap_count(loaded), 1);
    assert_memory_equal(host(vm, 0x7000), page, VM_PAGE_SIZE);
    n = ram_encode_page(buf, 0x7000, zero_page, &z);
    assert_int_equal(ram_apply(vm, loaded, buf, n, &pages), 0);
    assert_memory_equal(host(vm, 0x7000), zero_page, VM_PAGE_SIZE);
    assert_int_equal(pages, 3);

    /* The same through zlib; a malformed batch marks nothing past the bad record. */
    n = ram_encode_page(buf, 0x8000, page, &z);
    bm_put_be64(buf + n, RAM_SIZE | RAM_REC_RAW);
    uLongf zlen = compressBound(n + 8);
    uint8_t *zp = malloc(4 + zlen);
    assert_non_null(zp);
    assert_int_equal(compress2(zp + 4, &zlen, buf, n + 8, 6), Z_OK);
    bm_put_be32(zp, (uint32_t)(n + 8));
    assert_int_equal(ram_apply_zlib(vm, loaded, zp, 4 + zlen, &pages), -EBADMSG);
    assert_true(bm_bitmap_test(loaded, 8));
    assert_int_equal(bm_bitmap_count(loaded), 2);
    free(zp);
    bm_bitmap_free(loaded);
}

/* ---- compressed batches ---- */

/* u32 raw length | zlib(raw): a MIG_RAM_ZLIB payload. Returns its length. */
static size_t zpack(const uint8_t *raw, size_t len, uint32_t declared, uint8_t **out)
{
    uLongf zlen = compressBound(len);
    *out = malloc(4 + zlen);
    assert_non_null(*out);
    assert_int_equal(compress2(*out + 4, &zlen, raw, len, 6), Z_OK);
    bm_put_be32(*out, declared);
    return 4 + zlen;
}

static void test_apply_zlib(void **state)
{
    struct vm *vm = *state;
    uint8_t *raw = malloc(3 * REC_RAW_LEN);
    uint8_t pa[VM_PAGE_SIZE], pb[VM_PAGE_SIZE], zero_page[VM_PAGE_SIZE] = {0};
    fill_page(pa, 5);
    memset(pb, 0x99, sizeof pb);
    memset(host(vm, 0x9000), 0x11, VM_PAGE_SIZE);
    bool z;
    size_t n = ram_encode_page(raw, 0xa000, pa, &z);
    n += ram_encode_page(raw + n, 0x9000, zero_page, &z);
    n += ram_encode_page(raw + n, 0xb000, pb, &z);
    uint8_t *zp;
    size_t zn = zpack(raw, n, (uint32_t)n, &zp);
    assert_true(zn < n);
    uint64_t pages = 0;
    assert_int_equal(ram_apply_zlib(vm, NULL, zp, zn, &pages), 0);
    assert_int_equal(pages, 3);
    assert_memory_equal(host(vm, 0xa000), pa, VM_PAGE_SIZE);
    assert_memory_equal(host(vm, 0xb000), pb, VM_PAGE_SIZE);
    assert_memory_equal(host(vm, 0x9000), zero_page, VM_PAGE_SIZE);
    free(zp);
    /* An empty batch. */
    zn = zpack(raw, 0, 0, &zp);
    assert_int_equal(ram_apply_zlib(vm, NULL, zp, zn, &pages), 0);
    assert_int_equal(pages, 3);
    free(zp);
    free(raw);
}

static void test_apply_zlib_bad(void **state)
{
    struct vm *vm = *state;
    uint8_t raw[2 * REC_RAW_LEN];
    uint8_t page[VM_PAGE_SIZE], zero_page[VM_PAGE_SIZE] = {0};
    fill_page(page, 6);
    bool z;
    size_t n = ram_encode_page(raw, 0xc000, page, &z);
    n += ram_encode_page(raw + n, 0xd000, page, &z);
    uint64_t pages = 0;
    uint8_t *zp;
    size_t zn = zpack(raw, n, (uint32_t)n, &zp);

    /* Too short to hold the length word. */
    for (size_t len = 0; len < 4; len++)
        assert_int_equal(ram_apply_zlib(vm, NULL, zp, len, &pages), -EBADMSG);
    /* Just the length word. */
    assert_int_equal(ram_apply_zlib(vm, NULL, zp, 4, &pages), -EBADMSG);
    /* The declared raw length must match what inflates, both ways. */
    bm_put_be32(zp, (uint32_t)n + 1);
    assert_int_equal(ram_apply_zlib(vm, NULL, zp, zn, &pages), -EBADMSG);
    bm_put_be32(zp, (uint32_t)n - 1);
    assert_int_equal(ram_apply_zlib(vm, NULL, zp, zn, &pages), -EBADMSG);
    bm_put_be32(zp, 0);
    assert_int_equal(ram_apply_zlib(vm, NULL, zp, zn, &pages), -EBADMSG);
    /* Larger than any frame could carry: refused before allocating it. */
    bm_put_be32(zp, MIG_FRAME_MAX + 1);
    assert_int_equal(ram_apply_zlib(vm, NULL, zp, zn, &pages), -EBADMSG);
    bm_put_be32(zp, UINT32_MAX);
    assert_int_equal(ram_apply_zlib(vm, NULL, zp, zn, &pages), -EBADMSG);
    bm_put_be32(zp, (uint32_t)n);
    /* The compressed stream cut short, or damaged. */
    assert_int_equal(ram_apply_zlib(vm, NULL, zp, zn - 1, &pages), -EBADMSG);
    assert_int_equal(ram_apply_zlib(vm, NULL, zp, zn / 2, &pages), -EBADMSG);
    zp[zn / 2] ^= 0xff;
    assert_int_equal(ram_apply_zlib(vm, NULL, zp, zn, &pages), -EBADMSG);
    free(zp);
    /* Not zlib at all. */
    uint8_t junk[256];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (uint8_t)(i * 73 + 5);
    bm_put_be32(junk, 100);
    assert_int_equal(ram_apply_zlib(vm, NULL, junk, sizeof junk, &pages), -EBADMSG);
    assert_int_equal(pages, 0);
    assert_memory_equal(host(vm, 0xc000), zero_page, VM_PAGE_SIZE);
    assert_memory_equal(host(vm, 0xd000), zero_page, VM_PAGE_SIZE);

    /* Good zlib around a malformed record list is still malformed. */
    bm_put_be64(raw, RAM_SIZE | RAM_REC_ZERO);
    zn = zpack(raw, 8, 8, &zp);
    assert_int_equal(ram_apply_zlib(vm, NULL, zp, zn, &pages), -EBADMSG);
    free(zp);
    zn = zpack(raw, 5, 5, &zp);
    assert_int_equal(ram_apply_zlib(vm, NULL, zp, zn, &pages), -EBADMSG);
    free(zp);
    assert_int_equal(pages, 0);
}

/* ---- sender to loader over a socket ---- */

struct rx {
    struct mig_conn c;
    struct vm *vm;
    struct bm_bitmap *loaded; /* as the destination keeps it */
    uint64_t pages, frames_raw, frames_zlib, completes;
    int r;
};

/* The destination: apply RAM frames until MIG_COMPLETE (or an error). */
static void *rx_main(void *arg)
{
    struct rx *x = arg;
    for (;;) {
        uint32_t type, len;
        uint8_t *pl;
        x->r = mig_recv(&x->c, 5000, &type, &pl, &len);
        if (x->r < 0)
            return NULL;
        if (type == MIG_RAM) {
            x->frames_raw++;
            x->r = ram_apply(x->vm, x->loaded, pl, len, &x->pages);
        } else if (type == MIG_RAM_ZLIB) {
            x->frames_zlib++;
            x->r = ram_apply_zlib(x->vm, x->loaded, pl, len, &x->pages);
        } else if (type == MIG_COMPLETE) {
            x->completes++;
            return NULL;
        } else {
            x->r = -EPROTO;
        }
        if (x->r < 0)
            return NULL;
    }
}

struct link {
    struct mig_conn tx;
    struct rx rx;
    pthread_t thread;
};

static void link_start(struct link *l, struct vm *dst)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    memset(l, 0, sizeof *l);
    mig_conn_init(&l->tx, sv[0]);
    mig_conn_init(&l->rx.c, sv[1]);
    l->rx.vm = dst;
    l->rx.loaded = bm_bitmap_new(vm_ram_end(dst), VM_PAGE_SIZE);
    assert_non_null(l->rx.loaded);
    assert_int_equal(pthread_create(&l->thread, NULL, rx_main, &l->rx), 0);
}

/* Mark the end of what was sent and wait until the destination applied all of it. */
static void link_sync(struct link *l)
{
    assert_int_equal(mig_send(&l->tx, MIG_COMPLETE, NULL, 0), 0);
    pthread_join(l->thread, NULL);
    assert_int_equal(l->rx.r, 0);
}

static void link_close(struct link *l)
{
    mig_conn_close(&l->tx);
    mig_conn_close(&l->rx.c);
    bm_bitmap_free(l->rx.loaded);
}

/* Send until the sender counts one more completed round, in steps of step_bytes. */
static void run_round(struct ram_sender *s, uint64_t step_bytes)
{
    struct ram_stats st;
    ram_sender_stats(s, &st);
    uint64_t want = st.rounds + 1;
    for (unsigned i = 0; i < 10000 && st.rounds < want; i++) {
        assert_int_equal(ram_sender_step(s, step_bytes), 0);
        ram_sender_stats(s, &st);
    }
    assert_int_equal(st.rounds, want);
}

static void assert_same_ram(struct vm *a, struct vm *b)
{
    assert_int_equal(a->nregions, 1);
    assert_int_equal(b->nregions, 1);
    assert_int_equal(a->regions[0].size, b->regions[0].size);
    assert_memory_equal(a->regions[0].host, b->regions[0].host, a->regions[0].size);
}

static void sender_round0(bool compress)
{
    struct vm *src = new_vm(true, "ram-fill=1M,mem=0");
    struct vm *dst = new_vm(false, NULL);
    assert_int_equal(vm_pause(src), 0);
    uint64_t nonzero = ram_count_nonzero(src);
    /* The fill, the superblock and the generation table. */
    assert_true(nonzero >= 256 + 2);
    assert_true(nonzero < NPAGES);
    assert_int_equal(ram_count_nonzero(dst), 0);

    struct link l;
    link_start(&l, dst);
    struct ram_sender *s = ram_sender_new(src, mig_send_ram, &l.tx, compress);
    assert_non_null(s);
    assert_int_equal(ram_sender_start(s, false), 0);
    struct ram_stats st;
    ram_sender_stats(s, &st);
    assert_int_equal(st.dirty_pages, NPAGES);
    assert_int_equal(st.rounds, 0);
    /* Small steps, so a round takes several calls and crosses batches. */
    run_round(s, 256 << 10);
    link_sync(&l);

    ram_sender_stats(s, &st);
    assert_int_equal(st.pages_normal + st.pages_zero, NPAGES);
    assert_int_equal(st.pages_normal, nonzero);
    assert_int_equal(st.dirty_pages, 0);
    assert_int_equal(st.bytes + MIG_FRAME_HDR + MIG_FRAME_TRAILER, l.tx.bytes_sent);
    assert_int_equal(l.rx.pages, NPAGES);
    assert_int_equal(l.rx.completes, 1);
    if (compress) {
        assert_true(l.rx.frames_zlib > 0);
        /* Zero pages and the regular fill compress well. */
        assert_true(st.bytes < st.pages_normal * VM_PAGE_SIZE);
    } else {
        assert_int_equal(l.rx.frames_zlib, 0);
        assert_int_equal(st.bytes, l.rx.frames_raw * (MIG_FRAME_HDR + MIG_FRAME_TRAILER) +
                                       st.pages_normal * REC_RAW_LEN + st.pages_zero * 8);
    }
    assert_same_ram(src, dst);

    /* With nothing dirtied, a harvest adds nothing and the next round sends nothing. */
    uint64_t bytes = st.bytes;
    assert_int_equal(ram_sender_harvest(s), 0);
    run_round(s, UINT64_MAX);
    ram_sender_stats(s, &st);
    assert_int_equal(st.bytes, bytes);
    assert_int_equal(st.pages_normal + st.pages_zero, NPAGES);

    ram_sender_free(s);
    link_close(&l);
    vm_destroy(src);
    vm_destroy(dst);
}

static void test_sender_round0(void **state)
{
    (void)state;
    sender_round0(false);
}

static void test_sender_round0_zlib(void **state)
{
    (void)state;
    sender_round0(true);
}

/* Round 0 while paused, then the guest runs and dirties pages, then the dirty round: the
 * destination ends with the source's RAM as it is after the second pause. */
static void test_sender_dirty_rounds(void **state)
{
    (void)state;
    struct vm *src = new_vm(true, "ram-fill=1M,mem=32M/s,hot=2M");
    struct vm *dst = new_vm(false, NULL);
    assert_int_equal(vm_pause(src), 0);
    struct link l;
    link_start(&l, dst);
    struct ram_sender *s = ram_sender_new(src, mig_send_ram, &l.tx, false);
    assert_non_null(s);
    assert_int_equal(ram_sender_start(s, false), 0);
    run_round(s, UINT64_MAX);

    struct json_object *q = src->ops->query(src);
    struct json_object *v;
    assert_true(json_object_object_get_ex(q, "ram_writes", &v));
    int64_t writes0 = json_object_get_int64(v);
    json_object_put(q);
    assert_int_equal(vm_resume(src), 0);
    for (int i = 0; i < 500; i++) {
        usleep(2000);
        q = src->ops->query(src);
        assert_true(json_object_object_get_ex(q, "ram_writes", &v));
        int64_t writes = json_object_get_int64(v);
        json_object_put(q);
        if (writes >= writes0 + 20)
            break;
    }
    assert_int_equal(vm_pause(src), 0);

    struct ram_stats st0, st;
    ram_sender_stats(s, &st0);
    assert_int_equal(st0.dirty_pages, 0);
    assert_int_equal(ram_sender_harvest(s), 0);
    ram_sender_stats(s, &st);
    /* The workload pages written, plus the generation-table page(s) that track them. */
    assert_true(st.dirty_pages >= 2);
    assert_true(st.dirty_pages < NPAGES);
    uint64_t dirty = st.dirty_pages;
    run_round(s, 64 << 10);
    link_sync(&l);
    ram_sender_stats(s, &st);
    assert_int_equal(st.dirty_pages, 0);
    assert_int_equal(st.pages_normal + st.pages_zero, NPAGES + dirty);
    assert_int_equal(l.rx.pages, NPAGES + dirty);
    assert_same_ram(src, dst);
    /* The copy is the guest's own consistent RAM: its self-check passes on it. */
    assert_int_equal(src->ops->check(src), 0);

    ram_sender_free(s);
    link_close(&l);
    vm_destroy(src);
    vm_destroy(dst);
}

/* Hot-set deferral: with the log running before round 0, pages written meanwhile go at the
 * end of round 0, not in its address order, and the copy still ends identical. */
static void test_sender_deferred_hot_set(void **state)
{
    (void)state;
    struct vm *src = new_vm(true, "ram-fill=1M,mem=0");
    struct vm *dst = new_vm(false, NULL);
    assert_int_equal(vm_pause(src), 0);
    assert_int_equal(src->ops->dirty_log_start(src), 0);
    /* "The guest" writes two pages while the log watches (as the VMM would mark them). */
    uint8_t *ram = src->regions[0].host;
    uint64_t hot1 = 40, hot2 = NPAGES - 3;
    memset(ram + hot1 * VM_PAGE_SIZE, 0xab, VM_PAGE_SIZE);
    memset(ram + hot2 * VM_PAGE_SIZE, 0xcd, VM_PAGE_SIZE);
    struct bm_bitmap *mark = bm_bitmap_new(src->regions[0].size, VM_PAGE_SIZE);
    assert_non_null(mark);
    bm_bitmap_set_bits(mark, hot1, 1);
    bm_bitmap_set_bits(mark, hot2, 1);
    /* Through the backend's own log: the synthetic guest marks its bitmap on every write, so
     * the pages it wrote itself during the boot fill are in the log too; clear it first. */
    struct bm_bitmap *sink = bm_bitmap_new(src->regions[0].size, VM_PAGE_SIZE);
    assert_int_equal(src->ops->dirty_log_sync(src, sink), 0);
    bm_bitmap_free(sink);

    struct link l;
    link_start(&l, dst);
    struct ram_sender *s = ram_sender_new(src, mig_send_ram, &l.tx, false);
    assert_non_null(s);
    /* Nothing in the log: behaves as a plain round 0. */
    assert_int_equal(ram_sender_start(s, true), 0);
    struct ram_stats st;
    ram_sender_stats(s, &st);
    assert_int_equal(st.dirty_pages, NPAGES);
    run_round(s, UINT64_MAX);
    link_sync(&l);
    assert_same_ram(src, dst);
    ram_sender_free(s);
    link_close(&l);
    bm_bitmap_free(mark);
    vm_destroy(src);
    vm_destroy(dst);
}

/* The pass that sends the hot set, then: every page went exactly once in all, the copy is
 * identical and the guest's self-check passes on it. Frees everything. */
static void finish_hot_set(struct ram_sender *s, struct link *l, struct vm *src, struct vm *dst)
{
    struct ram_stats st;
    run_round(s, UINT64_MAX);
    link_sync(l);
    ram_sender_stats(s, &st);
    assert_int_equal(st.dirty_pages, 0);
    assert_int_equal(st.pages_normal + st.pages_zero, NPAGES);
    assert_same_ram(src, dst);
    assert_int_equal(src->ops->check(src), 0);
    ram_sender_free(s);
    link_close(l);
    vm_destroy(src);
    vm_destroy(dst);
}

/* With real hot pages in the log: the deferred pages are counted as dirty, are sent once (at
 * the end of round 0), and the destination ends identical. */
static void test_sender_deferred_hot_set_running(void **state)
{
    (void)state;
    struct vm *src = new_vm(true, "ram-fill=1M,mem=32M/s,hot=256K");
    struct vm *dst = new_vm(false, NULL);
    assert_int_equal(src->ops->dirty_log_start(src), 0);
    usleep(100000); /* the guest dirties its hot set under the log */
    assert_int_equal(vm_pause(src), 0);
    struct link l;
    link_start(&l, dst);
    struct ram_sender *s = ram_sender_new(src, mig_send_ram, &l.tx, false);
    assert_non_null(s);
    assert_int_equal(ram_sender_start(s, true), 0);
    struct ram_stats st;
    ram_sender_stats(s, &st);
    assert_int_equal(st.dirty_pages, NPAGES); /* todo + deferred: every page, once */
    run_round(s, 64 << 10);
    ram_sender_stats(s, &st);
    /* Round 0 ended with the hot set merged back: it goes in the next pass. */
    assert_true(st.dirty_pages > 0);
    assert_true(st.pages_normal + st.pages_zero < NPAGES);
    finish_hot_set(s, &l, src, dst);
}

/* Round 0 with the hot set held back: pages written while round 0 runs join the hot set (none
 * is sent twice in round 0), the hold keeps round 0 at its end, and releasing it sends the
 * hot set; the destination ends identical. */
static void test_sender_hold_hot(void **state)
{
    (void)state;
    struct vm *src = new_vm(true, "ram-fill=1M,mem=32M/s,hot=256K");
    struct vm *dst = new_vm(false, NULL);
    assert_int_equal(vm_pause(src), 0);
    assert_int_equal(src->ops->dirty_log_start(src), 0);
    struct link l;
    link_start(&l, dst);
    struct ram_sender *s = ram_sender_new(src, mig_send_ram, &l.tx, false);
    assert_non_null(s);
    assert_int_equal(ram_sender_start(s, true), 0);
    ram_sender_hold_hot(s, true);
    /* The guest writes after round 0 started, before it reached the pages. */
    assert_int_equal(vm_resume(src), 0);
    usleep(50000);
    assert_int_equal(vm_pause(src), 0);
    assert_int_equal(ram_sender_harvest(s), 0);
    struct ram_stats st;
    ram_sender_stats(s, &st);
    assert_int_equal(st.dirty_pages, NPAGES); /* every page once: in round 0 or held back */
    for (int i = 0; i < 100000 && st.dirty_pages > 0; i++) {
        uint64_t before = st.bytes;
        assert_int_equal(ram_sender_step(s, 64 << 10), 0);
        ram_sender_stats(s, &st);
        if (st.bytes == before)
            break;
    }
    /* Held at the end of round 0, with the written pages unsent, each other page sent once. */
    assert_int_equal(st.rounds, 0);
    assert_true(st.dirty_pages > 0);
    assert_int_equal(st.pages_normal + st.pages_zero + st.dirty_pages, NPAGES);
    uint64_t held = st.dirty_pages;
    assert_int_equal(ram_sender_step(s, UINT64_MAX), 0);
    ram_sender_stats(s, &st);
    assert_int_equal(st.rounds, 0);
    assert_int_equal(st.pages_normal + st.pages_zero + st.dirty_pages, NPAGES);
    /* Released: round 0 completes at once (no step needed) and the next pass sends the hot
     * set. */
    ram_sender_hold_hot(s, false);
    ram_sender_stats(s, &st);
    assert_int_equal(st.rounds, 1);
    assert_int_equal(st.dirty_pages, held);
    finish_hot_set(s, &l, src, dst);
}

/* Step as the migration loop does: only while pages are dirty. Returns the stats after. */
static void step_while_dirty(struct ram_sender *s, uint64_t step_bytes, struct ram_stats *st)
{
    ram_sender_stats(s, st);
    for (unsigned i = 0; i < 100000 && st->dirty_pages > 0; i++) {
        assert_int_equal(ram_sender_step(s, step_bytes), 0);
        ram_sender_stats(s, st);
    }
    assert_int_equal(st->dirty_pages, 0);
}

/* A paused guest that writes nothing (1 MiB filled), a destination and a sender to it; with
 * log_running the log runs from before the start, with nothing in it (an empty hot set). */
struct idle {
    struct vm *src, *dst;
    struct link l;
    struct ram_sender *s;
};

static void idle_start(struct idle *t, bool log_running)
{
    t->src = new_vm(true, "ram-fill=1M,mem=0");
    t->dst = new_vm(false, NULL);
    assert_int_equal(vm_pause(t->src), 0);
    if (log_running) {
        assert_int_equal(t->src->ops->dirty_log_start(t->src), 0);
        struct bm_bitmap *sink = bm_bitmap_new(t->src->regions[0].size, VM_PAGE_SIZE);
        assert_non_null(sink);
        assert_int_equal(t->src->ops->dirty_log_sync(t->src, sink), 0); /* the boot fill */
        bm_bitmap_free(sink);
    }
    link_start(&t->l, t->dst);
    t->s = ram_sender_new(t->src, mig_send_ram, &t->l.tx, false);
    assert_non_null(t->s);
    assert_int_equal(ram_sender_start(t->s, log_running), 0);
}

/* The copy is identical; frees everything. */
static void idle_finish(struct idle *t)
{
    link_sync(&t->l);
    assert_same_ram(t->src, t->dst);
    ram_sender_free(t->s);
    link_close(&t->l);
    vm_destroy(t->src);
    vm_destroy(t->dst);
}

/* An idle guest under a hold: round 0 sends every page and waits at its end with an empty hot
 * set, so nothing is dirty and the loop steps no more. Releasing the hold must complete round
 * 0 by itself (it stayed at 0 rounds for good, and the migration never switched over). */
static void test_sender_hold_hot_idle(void **state)
{
    (void)state;
    struct idle t;
    idle_start(&t, true);
    ram_sender_hold_hot(t.s, true);
    struct ram_stats st;
    step_while_dirty(t.s, 64 << 10, &st);
    assert_int_equal(st.rounds, 0); /* held at its end */
    assert_int_equal(st.pages_normal + st.pages_zero, NPAGES);
    ram_sender_hold_hot(t.s, true); /* the loop renews the hold every tick: no change */
    ram_sender_stats(t.s, &st);
    assert_int_equal(st.rounds, 0);
    ram_sender_hold_hot(t.s, false);
    ram_sender_stats(t.s, &st);
    assert_int_equal(st.rounds, 1);
    assert_int_equal(st.dirty_pages, 0);
    ram_sender_hold_hot(t.s, false); /* released again (switchover): no second round */
    ram_sender_stats(t.s, &st);
    assert_int_equal(st.rounds, 1);
    idle_finish(&t);
}

/* A step whose budget runs out exactly at the pass's last page ends the pass: with nothing
 * dirtied after it, the loop would not step again to find the end. */
static void test_sender_pass_ends_at_budget(void **state)
{
    (void)state;
    struct idle t;
    idle_start(&t, false);
    uint64_t nonzero = ram_count_nonzero(t.src);
    /* Round 0 in one step of exactly its size. */
    assert_int_equal(ram_sender_step(t.s, nonzero * REC_RAW_LEN + (NPAGES - nonzero) * 8), 0);
    struct ram_stats st;
    ram_sender_stats(t.s, &st);
    assert_int_equal(st.pages_normal + st.pages_zero, NPAGES);
    assert_int_equal(st.dirty_pages, 0);
    assert_int_equal(st.rounds, 1);
    idle_finish(&t);
}

/* A peer that went away: the sender gets the stream's error, not a signal. */
static void test_sender_peer_gone(void **state)
{
    (void)state;
    struct vm *src = new_vm(true, "ram-fill=2M");
    assert_int_equal(vm_pause(src), 0);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    struct mig_conn tx;
    mig_conn_init(&tx, sv[0]);
    close(sv[1]);
    struct ram_sender *s = ram_sender_new(src, mig_send_ram, &tx, false);
    assert_non_null(s);
    assert_int_equal(ram_sender_start(s, false), 0);
    assert_int_equal(ram_sender_step(s, UINT64_MAX), -EPIPE);
    ram_sender_free(s);
    mig_conn_close(&tx);
    vm_destroy(src);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode_zero),
        cmocka_unit_test(test_encode_raw),
        cmocka_unit_test_setup_teardown(test_apply_round_trip, vm_setup, vm_teardown),
        cmocka_unit_test_setup_teardown(test_apply_truncated, vm_setup, vm_teardown),
        cmocka_unit_test_setup_teardown(test_apply_bad_kind, vm_setup, vm_teardown),
        cmocka_unit_test_setup_teardown(test_apply_outside_ram, vm_setup, vm_teardown),
        cmocka_unit_test_setup_teardown(test_apply_partial_page, vm_setup, vm_teardown),
        cmocka_unit_test_setup_teardown(test_apply_loaded, vm_setup, vm_teardown),
        cmocka_unit_test_setup_teardown(test_apply_zlib, vm_setup, vm_teardown),
        cmocka_unit_test_setup_teardown(test_apply_zlib_bad, vm_setup, vm_teardown),
        cmocka_unit_test(test_sender_round0),
        cmocka_unit_test(test_sender_round0_zlib),
        cmocka_unit_test(test_sender_dirty_rounds),
        cmocka_unit_test(test_sender_deferred_hot_set),
        cmocka_unit_test(test_sender_deferred_hot_set_running),
        cmocka_unit_test(test_sender_hold_hot),
        cmocka_unit_test(test_sender_hold_hot_idle),
        cmocka_unit_test(test_sender_pass_ends_at_budget),
        cmocka_unit_test(test_sender_peer_gone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
