/* test-guestcheck.c: unit tests for the host's check of the test guest by content
 * (vm/guestcheck.c): a guest RAM image laid out as the test guest lays it out (layout record,
 * generation tables, workload pages) and a disk image, checked clean, then with stale,
 * corrupt and stray pages and blocks, with writes caught half-way, and with layout records
 * that do not fit. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vm/blockfmt.h"
#include "vm/guestcheck.h"

#define RAM      (8u << 20)
#define PAGE_GEN 0x200000u /* the page generation table */
#define DISK_GEN 0x201000u /* disk 0's block generation table */
#define AREA     0x210000u /* workload page 0 */
#define NPAGES   1024u
#define NBLOCKS  1024u /* a 4 MiB disk */

struct fx {
    uint8_t *ram;
    char dir[64], path[96];
    struct bm_disk *disk;
    struct bm_guest_layout *l;
};

static uint32_t *page_gen(struct fx *f)
{
    return (uint32_t *)(void *)(f->ram + PAGE_GEN);
}

static uint32_t *block_gen(struct fx *f)
{
    return (uint32_t *)(void *)(f->ram + DISK_GEN);
}

/* What the guest does: format at the next generation, then record it. */
static void write_page(struct fx *f, uint64_t i)
{
    bm_fmt_format(f->ram + AREA + i * BM_FMT_SIZE, BM_FMT_PAGE_MAGIC, i, ++page_gen(f)[i]);
}

static void write_block(struct fx *f, uint64_t b, uint32_t gen)
{
    uint8_t buf[BM_FMT_SIZE];
    bm_fmt_format(buf, BM_FMT_BLOCK_MAGIC, b, gen);
    assert_int_equal(bm_disk_pwrite(f->disk, buf, sizeof buf, b * BM_FMT_SIZE, 0), 0);
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->ram = calloc(1, RAM);
    assert_non_null(f->ram);
    snprintf(f->dir, sizeof f->dir, "/tmp/test-guestcheck.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/vda.img", f->dir);
    int fd = open(f->path, O_RDWR | O_CREAT, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)NBLOCKS * BM_FMT_SIZE), 0);
    close(fd);
    assert_int_equal(bm_disk_open(f->path, 0, &f->disk), 0);

    f->l = (struct bm_guest_layout *)(void *)(f->ram + BM_LAYOUT_GPA);
    *f->l = (struct bm_guest_layout){
        .magic = BM_LAYOUT_MAGIC,
        .size = sizeof *f->l,
        .page_gen = PAGE_GEN,
        .area = AREA,
        .npages = NPAGES,
        .ndisks = 1,
        .disk = {{.gen = DISK_GEN, .nblocks = NBLOCKS, .mmio = 0xd0001000}},
    };
    /* Half the pages written (some twice), the rest never (zero); blocks 0..63 written, 100
     * written twice; the rest of the image is the guest's "not mine" (zero here). */
    for (uint64_t i = 0; i < NPAGES / 2; i++)
        write_page(f, i);
    for (uint64_t i = 0; i < NPAGES / 2; i += 7)
        write_page(f, i);
    for (uint64_t b = 0; b < 64; b++)
        write_block(f, b, ++block_gen(f)[b]);
    block_gen(f)[100] = 2;
    write_block(f, 100, 2);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    bm_disk_close(f->disk);
    unlink(f->path);
    rmdir(f->dir);
    free(f->ram);
    free(f);
    return 0;
}

static int64_t check(struct fx *f, struct bm_gcheck *c)
{
    char err[256] = "";
    int r = bm_guest_check(f->ram, RAM, &f->disk, 1, c, err, sizeof err);
    if (r < 0)
        print_message("bm_guest_check: %s\n", err);
    return r;
}

static void test_clean(void **state)
{
    struct fx *f = *state;
    struct bm_gcheck c;
    assert_int_equal(check(f, &c), 0);
    assert_int_equal(c.pages, NPAGES);
    assert_int_equal(c.blocks, 65);
    assert_int_equal(c.mismatches, 0);
    assert_int_equal(c.skipped, 0);
    assert_int_equal(c.ndisks, 1);
    assert_int_equal(c.nreports, 0);
    /* Without the disk: the RAM alone. */
    char err[256];
    assert_int_equal(bm_guest_check(f->ram, RAM, NULL, 0, &c, err, sizeof err), 0);
    assert_int_equal(c.blocks, 0);
    assert_int_equal(c.pages, NPAGES);
}

static void test_mismatches(void **state)
{
    struct fx *f = *state;
    struct bm_gcheck c;
    /* A stale page (the table moved on, the page did not: a lost RAM write). */
    page_gen(f)[3]++;
    /* A flipped bit in a page's body. */
    f->ram[AREA + 10 * BM_FMT_SIZE + 1000] ^= 4;
    /* A never-written page that is not zero. */
    f->ram[AREA + (NPAGES - 1) * BM_FMT_SIZE + 17] = 1;
    /* A block holding another block's data; a block at an older generation. */
    write_block(f, 5, 9);
    uint8_t buf[BM_FMT_SIZE];
    assert_int_equal(bm_disk_pread(f->disk, buf, sizeof buf, 6 * BM_FMT_SIZE), 0);
    assert_int_equal(bm_disk_pwrite(f->disk, buf, sizeof buf, 7 * BM_FMT_SIZE, 0), 0);
    block_gen(f)[100] = 3;
    assert_int_equal(check(f, &c), 0);
    assert_int_equal(c.mismatches, 6);
    assert_int_equal(c.nreports, 6);
    assert_non_null(strstr(c.report[0], "RAM page 3 "));
    assert_non_null(strstr(c.report[0], "stale generation"));
    assert_non_null(strstr(c.report[1], "RAM page 10 "));
    assert_non_null(strstr(c.report[1], "checksum mismatch"));
    assert_non_null(strstr(c.report[2], "never written but not zero"));
    assert_non_null(strstr(c.report[3], "disk 0 block 5 "));
    assert_non_null(strstr(c.report[3], "generation from the future"));
    assert_non_null(strstr(c.report[4], "disk 0 block 7 "));
    assert_non_null(strstr(c.report[4], "wrong index"));
    assert_non_null(strstr(c.report[5], "disk 0 block 100 (generation 3): stale generation"));
}

static void test_many_mismatches(void **state)
{
    struct fx *f = *state;
    struct bm_gcheck c;
    for (uint64_t i = 0; i < 100; i++)
        page_gen(f)[i] = 0; /* written pages the table forgot: not zero */
    assert_int_equal(check(f, &c), 0);
    assert_int_equal(c.mismatches, 100);
    assert_int_equal(c.nreports, BM_GCHECK_REPORTS);
}

/* The guest stopped in the middle of a write: the data or the table may be ahead. */
static void test_busy(void **state)
{
    struct fx *f = *state;
    struct bm_gcheck c;
    /* A page half formatted: skipped, not a mismatch. */
    memset(f->ram + AREA + 20 * BM_FMT_SIZE + 2048, 0x5a, 100);
    f->l->busy_page = 21;
    /* Blocks 30..33 written at the next generation, the table not updated yet; blocks 200..201
     * (never written) written at generation 1; block 202 (never written) not yet. */
    for (uint64_t b = 30; b < 34; b++)
        write_block(f, b, block_gen(f)[b] + 1);
    f->l->busy_disk = 1;
    f->l->busy_first = 30;
    f->l->busy_count = 4;
    assert_int_equal(check(f, &c), 0);
    assert_int_equal(c.mismatches, 0);
    assert_int_equal(c.skipped, 1);
    assert_int_equal(c.pages, NPAGES - 1);
    assert_int_equal(c.blocks, 65);
    /* The same blocks with the table updated too: still fine. */
    for (uint64_t b = 30; b < 34; b++)
        block_gen(f)[b]++;
    assert_int_equal(check(f, &c), 0);
    assert_int_equal(c.mismatches, 0);
    write_block(f, 200, 1);
    write_block(f, 201, 1);
    f->l->busy_first = 200;
    f->l->busy_count = 3;
    assert_int_equal(check(f, &c), 0);
    assert_int_equal(c.mismatches, 0);
    assert_int_equal(c.blocks, 65 + 2);
    assert_int_equal(c.skipped, 1 + 1);
    /* A busy block that holds neither generation is still a mismatch. */
    block_gen(f)[200] = 5;
    assert_int_equal(check(f, &c), 0);
    assert_int_equal(c.mismatches, 1);
    assert_non_null(strstr(c.report[0], "disk 0 block 200 (generation 5 or 6, being written)"));
    /* Outside the busy range nothing is excused. */
    f->l->busy_page = 0;
    assert_int_equal(check(f, &c), 0);
    assert_int_equal(c.mismatches, 2);
}

static void test_bad_layout(void **state)
{
    struct fx *f = *state;
    struct bm_gcheck c;
    char err[256];
    /* No record: not the test guest, or not laid out yet. */
    f->l->magic = 0;
    assert_int_equal(bm_guest_check(f->ram, RAM, &f->disk, 1, &c, err, sizeof err), -ENOENT);
    assert_non_null(strstr(err, "no layout record at 0x100000"));
    f->l->magic = BM_LAYOUT_MAGIC;
    /* RAM that ends before the record. */
    assert_int_equal(bm_guest_check(f->ram, 0x100010, &f->disk, 1, &c, err, sizeof err), -ENOENT);
    /* A record from another build. */
    f->l->size = 64;
    assert_int_equal(bm_guest_check(f->ram, RAM, &f->disk, 1, &c, err, sizeof err), -EPROTO);
    assert_non_null(strstr(err, "a different guest build"));
    f->l->size = sizeof *f->l;
    /* Pages past the end of RAM; a table past the end; a page area not page-aligned. */
    f->l->npages = RAM / BM_FMT_SIZE;
    assert_int_equal(bm_guest_check(f->ram, RAM, &f->disk, 1, &c, err, sizeof err), -EPROTO);
    assert_non_null(strstr(err, "do not fit"));
    f->l->npages = NPAGES;
    f->l->page_gen = RAM - 8;
    assert_int_equal(bm_guest_check(f->ram, RAM, &f->disk, 1, &c, err, sizeof err), -EPROTO);
    f->l->page_gen = PAGE_GEN;
    f->l->area = AREA + 8;
    assert_int_equal(bm_guest_check(f->ram, RAM, &f->disk, 1, &c, err, sizeof err), -EPROTO);
    f->l->area = AREA;
    f->l->npages = UINT64_MAX / 2; /* the products overflow */
    assert_int_equal(bm_guest_check(f->ram, RAM, &f->disk, 1, &c, err, sizeof err), -EPROTO);
    f->l->npages = NPAGES;
    /* Too many disks; a disk table past RAM; a busy page past the pages. */
    f->l->ndisks = 9;
    assert_int_equal(bm_guest_check(f->ram, RAM, &f->disk, 1, &c, err, sizeof err), -EPROTO);
    f->l->ndisks = 1;
    f->l->disk[0].nblocks = UINT64_MAX / 4;
    assert_int_equal(bm_guest_check(f->ram, RAM, &f->disk, 1, &c, err, sizeof err), -EPROTO);
    f->l->disk[0].nblocks = NBLOCKS;
    f->l->busy_page = NPAGES + 1;
    assert_int_equal(bm_guest_check(f->ram, RAM, &f->disk, 1, &c, err, sizeof err), -EPROTO);
    f->l->busy_page = 0;
    /* A disk smaller than the guest knows it. */
    f->l->disk[0].nblocks = NBLOCKS + 1;
    assert_int_equal(bm_guest_check(f->ram, RAM, &f->disk, 1, &c, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "disk 0: 4194304 bytes, but the guest knows it as 4198400"));
    f->l->disk[0].nblocks = NBLOCKS;
    assert_int_equal(check(f, &c), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_clean, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mismatches, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_mismatches, setup, teardown),
        cmocka_unit_test_setup_teardown(test_busy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_layout, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
