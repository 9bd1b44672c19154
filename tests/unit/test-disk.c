/* test-disk.c: unit tests for blockmirror/disk (I/O, bounds, extents, write tracking). */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "blockmirror/disk.h"

#define SIZE (8u << 20)
#define GRAN 65536u

/* The library's fdatasync calls, counted: this definition wins over libc's at link time. */
static unsigned n_fdatasync;
int fdatasync(int fd);
int fdatasync(int fd)
{
    n_fdatasync++;
    return (int)syscall(SYS_fdatasync, fd);
}

struct fixture {
    char path[64];
    struct bm_disk *d;
    struct bm_bitmap *b;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    strcpy(f->path, "/tmp/blkmig-test-disk.XXXXXX");
    int fd = mkstemp(f->path);
    if (fd < 0 || ftruncate(fd, SIZE) < 0)
        return -1;
    close(fd);
    if (bm_disk_open(f->path, 0, &f->d) < 0)
        return -1;
    f->b = bm_bitmap_new(SIZE, GRAN);
    if (bm_disk_attach_bitmap(f->d, f->b) < 0)
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    bm_disk_close(f->d);
    bm_bitmap_free(f->b);
    unlink(f->path);
    free(f);
    return 0;
}

static void test_open_errors(void **state)
{
    (void)state;
    struct bm_disk *d;
    assert_int_equal(bm_disk_open("/nonexistent/blkmig", 0, &d), -ENOENT);
    assert_int_equal(bm_disk_open("/tmp", 0, &d), -EISDIR);
}

static void test_rw_and_tracking(void **state)
{
    struct fixture *f = *state;
    uint8_t buf[8192], back[8192];
    memset(buf, 0xab, sizeof buf);
    assert_int_equal(bm_disk_size(f->d), SIZE);
    assert_int_equal(bm_bitmap_count(f->b), 0);
    /* 8 KiB straddling the first block boundary dirties blocks 0 and 1. */
    assert_int_equal(bm_disk_pwrite(f->d, buf, sizeof buf, GRAN - 4096, 0), 0);
    assert_int_equal(bm_bitmap_count(f->b), 2);
    assert_true(bm_bitmap_test(f->b, 0) && bm_bitmap_test(f->b, 1));
    assert_int_equal(bm_disk_pread(f->d, back, sizeof back, GRAN - 4096), 0);
    assert_memory_equal(buf, back, sizeof buf);
    /* Reads do not dirty. */
    assert_int_equal(bm_disk_pread(f->d, back, sizeof back, 5 * GRAN), 0);
    assert_false(bm_bitmap_test(f->b, 5));
    /* FUA writes, zeroes and trims dirty too. */
    assert_int_equal(bm_disk_pwrite(f->d, buf, 512, 3 * GRAN, BM_DISK_FUA), 0);
    assert_true(bm_bitmap_test(f->b, 3));
    assert_int_equal(bm_disk_zero(f->d, 10 * GRAN, GRAN, 0), 0);
    assert_true(bm_bitmap_test(f->b, 10));
    assert_int_equal(bm_disk_trim(f->d, 20 * GRAN, 2 * GRAN, 0), 0);
    assert_true(bm_bitmap_test(f->b, 20) && bm_bitmap_test(f->b, 21));
    assert_int_equal(bm_bitmap_count(f->b), 6);
    /* Zeroed data reads back as zero. */
    assert_int_equal(bm_disk_zero(f->d, GRAN - 4096, 8192, BM_DISK_NO_HOLE), 0);
    assert_int_equal(bm_disk_pread(f->d, back, sizeof back, GRAN - 4096), 0);
    memset(buf, 0, sizeof buf);
    assert_memory_equal(buf, back, sizeof back);
    assert_int_equal(bm_disk_flush(f->d), 0);
}

/* A flush with nothing new since the last one is skipped (a device barrier buys nothing), but a
 * change made through the disk by any of its users makes the next flush real. A migration's
 * destination relies on this: the source's mirror writes its images through the same bm_disk
 * (the NBD server) as the guest later does, so a guest FLUSH after the resume is an fdatasync
 * that covers what the mirror wrote and was not yet flushed. */
static void test_flush_covers_every_user(void **state)
{
    struct fixture *f = *state;
    uint8_t buf[4096];
    memset(buf, 0x5a, sizeof buf);
    unsigned n0 = n_fdatasync;
    /* Freshly opened: what was done to the image before is not known to be durable. */
    assert_int_equal(bm_disk_flush(f->d), 0);
    assert_int_equal(n_fdatasync, n0 + 1);
    assert_int_equal(bm_disk_flush(f->d), 0); /* nothing since: skipped */
    assert_int_equal(n_fdatasync, n0 + 1);
    /* The "mirror" writes, the "destination" flushes periodically. */
    assert_int_equal(bm_disk_pwrite(f->d, buf, sizeof buf, 0, 0), 0);
    assert_int_equal(bm_disk_flush(f->d), 0);
    assert_int_equal(n_fdatasync, n0 + 2);
    assert_int_equal(bm_disk_flush(f->d), 0); /* clean: skipped */
    assert_int_equal(n_fdatasync, n0 + 2);
    /* More mirror writes, no flush; then the guest's FLUSH: real. */
    assert_int_equal(bm_disk_pwrite(f->d, buf, sizeof buf, GRAN, 0), 0);
    assert_int_equal(bm_disk_zero(f->d, 2 * GRAN, GRAN, 0), 0);
    assert_int_equal(bm_disk_flush(f->d), 0);
    assert_int_equal(n_fdatasync, n0 + 3);
    /* A trim counts as a change too. */
    assert_int_equal(bm_disk_trim(f->d, 4 * GRAN, GRAN, 0), 0);
    assert_int_equal(bm_disk_flush(f->d), 0);
    assert_int_equal(n_fdatasync, n0 + 4);
    assert_int_equal(bm_disk_flush(f->d), 0);
    assert_int_equal(n_fdatasync, n0 + 4);
}

static void test_bounds(void **state)
{
    struct fixture *f = *state;
    uint8_t buf[512] = {0};
    assert_int_equal(bm_disk_pread(f->d, buf, 512, SIZE - 256), -EINVAL);
    assert_int_equal(bm_disk_pwrite(f->d, buf, 512, SIZE, 0), -EINVAL);
    assert_int_equal(bm_disk_pwrite(f->d, buf, 512, UINT64_MAX - 10, 0), -EINVAL);
    assert_int_equal(bm_disk_zero(f->d, SIZE - 1, 2, 0), -EINVAL);
    assert_int_equal(bm_disk_trim(f->d, UINT64_MAX, 1, 0), -EINVAL);
    assert_int_equal(bm_bitmap_count(f->b), 0); /* rejected requests dirty nothing */
}

static void test_detach(void **state)
{
    struct fixture *f = *state;
    uint8_t buf[512] = {1};
    struct bm_bitmap *second = bm_bitmap_new(SIZE, 4096);
    assert_int_equal(bm_disk_attach_bitmap(f->d, second), 0);
    assert_int_equal(bm_disk_pwrite(f->d, buf, 512, 0, 0), 0);
    assert_true(bm_bitmap_test(second, 0) && bm_bitmap_test(f->b, 0));
    bm_disk_detach_bitmap(f->d, second);
    assert_int_equal(bm_disk_pwrite(f->d, buf, 512, 4096, 0), 0);
    assert_false(bm_bitmap_test(second, 1));
    assert_true(bm_bitmap_test(f->b, 0));
    bm_bitmap_free(second);
    struct bm_bitmap *small = bm_bitmap_new(SIZE / 2, 4096);
    assert_int_equal(bm_disk_attach_bitmap(f->d, small), -EINVAL);
    bm_bitmap_free(small);
}

static void test_extents(void **state)
{
    struct fixture *f = *state;
    uint8_t buf[65536];
    memset(buf, 7, sizeof buf);
    assert_int_equal(bm_disk_pwrite(f->d, buf, sizeof buf, 1 << 20, 0), 0);
    struct bm_extent e[16];
    size_t n;
    assert_int_equal(bm_disk_extents(f->d, 0, SIZE, e, 16, &n), 0);
    assert_int_equal(n, 3);
    assert_int_equal(e[0].offset, 0);
    assert_int_equal(e[0].length, 1 << 20);
    assert_int_equal(e[0].flags, BM_EXTENT_HOLE | BM_EXTENT_ZERO);
    assert_int_equal(e[1].offset, 1 << 20);
    assert_int_equal(e[1].length, 65536);
    assert_int_equal(e[1].flags, 0);
    assert_int_equal(e[2].offset + e[2].length, SIZE);
    /* At most max extents, starting at offset. */
    assert_int_equal(bm_disk_extents(f->d, 4096, SIZE - 4096, e, 1, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(e[0].offset, 4096);
    assert_int_equal(bm_disk_extents(f->d, 0, SIZE + 1, e, 16, &n), -EINVAL);
    /* Trim punches a hole back. */
    assert_int_equal(bm_disk_trim(f->d, 1 << 20, 65536, 0), 0);
    assert_int_equal(bm_disk_extents(f->d, 0, SIZE, e, 16, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(e[0].flags, BM_EXTENT_HOLE | BM_EXTENT_ZERO);
}

static void test_readonly(void **state)
{
    struct fixture *f = *state;
    struct bm_disk *ro;
    assert_int_equal(bm_disk_open(f->path, BM_DISK_OPEN_READONLY, &ro), 0);
    uint8_t buf[512] = {0};
    assert_true(bm_disk_is_readonly(ro));
    assert_int_equal(bm_disk_pwrite(ro, buf, 512, 0, 0), -EPERM);
    assert_int_equal(bm_disk_zero(ro, 0, 512, 0), -EPERM);
    assert_int_equal(bm_disk_trim(ro, 0, 512, 0), -EPERM);
    assert_int_equal(bm_disk_pread(ro, buf, 512, 0), 0);
    bm_disk_close(ro);
}

struct writer_arg {
    struct bm_disk *d;
    unsigned id;
};

static void *writer(void *p)
{
    struct writer_arg *a = p;
    uint8_t buf[4096];
    memset(buf, (int)a->id, sizeof buf);
    for (unsigned i = 0; i < 32; i++)
        bm_disk_pwrite(a->d, buf, sizeof buf, ((uint64_t)i * 4 + a->id) * GRAN, 0);
    return NULL;
}

/* Writers on four threads: every block any of them wrote is dirty, and nothing else. */
static void test_concurrent_writers(void **state)
{
    struct fixture *f = *state;
    pthread_t t[4];
    struct writer_arg a[4];
    for (unsigned i = 0; i < 4; i++) {
        a[i] = (struct writer_arg){f->d, i};
        pthread_create(&t[i], NULL, writer, &a[i]);
    }
    for (unsigned i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(bm_bitmap_count(f->b), 128);
    assert_int_equal(bm_bitmap_next_clear(f->b, 0), UINT64_MAX); /* all 128 blocks */
}

/* A redirect's store: the disk its users see once redirected. */
struct mem_disk {
    uint8_t *data;
    unsigned flushes, fua;
};

static int mem_pread(void *opaque, void *buf, size_t len, uint64_t offset)
{
    struct mem_disk *m = opaque;
    memcpy(buf, m->data + offset, len);
    return 0;
}

static int mem_pwrite(void *opaque, const void *buf, size_t len, uint64_t offset, unsigned flags)
{
    struct mem_disk *m = opaque;
    memcpy(m->data + offset, buf, len);
    m->fua += (flags & BM_DISK_FUA) != 0;
    return 0;
}

static int mem_zero(void *opaque, uint64_t offset, uint64_t len, unsigned flags)
{
    struct mem_disk *m = opaque;
    memset(m->data + offset, 0, len);
    m->fua += (flags & BM_DISK_FUA) != 0;
    return 0;
}

static int mem_trim(void *opaque, uint64_t offset, uint64_t len, unsigned flags)
{
    return mem_zero(opaque, offset, len, flags);
}

static int mem_flush(void *opaque)
{
    struct mem_disk *m = opaque;
    m->flushes++;
    return 0;
}

/* Redirected under the gate: changes held across it go to the redirect, as does every later
 * request; the image and the bitmap are never touched again; bounds are still checked. */
static void test_redirect(void **state)
{
    struct fixture *f = *state;
    struct mem_disk m = {.data = calloc(1, SIZE)};
    assert_non_null(m.data);
    memset(m.data, 0xee, SIZE);
    struct bm_disk_redirect rd = {mem_pread, mem_pwrite, mem_zero, mem_trim, mem_flush, &m};
    assert_false(bm_disk_is_redirected(f->d));
    bm_disk_hold(f->d);
    pthread_t t;
    struct writer_arg a = {f->d, 1};
    pthread_create(&t, NULL, writer, &a); /* waits at the gate */
    bm_disk_redirect(f->d, &rd);
    bm_disk_release(f->d);
    pthread_join(t, NULL);
    assert_true(bm_disk_is_redirected(f->d));
    assert_int_equal(m.data[(uint64_t)5 * GRAN], 1); /* the writer's block 1 */
    uint8_t buf[512];
    assert_int_equal(bm_disk_pread(f->d, buf, sizeof buf, 0), 0);
    assert_int_equal(buf[0], 0xee);
    assert_int_equal(bm_disk_pwrite(f->d, "x", 1, 0, BM_DISK_FUA), 0);
    assert_int_equal(bm_disk_zero(f->d, GRAN, 512, BM_DISK_FUA), 0);
    assert_int_equal(bm_disk_trim(f->d, 2 * GRAN, 512, 0), 0);
    assert_int_equal(bm_disk_flush(f->d), 0);
    assert_int_equal(m.data[0], 'x');
    assert_int_equal(m.data[GRAN], 0);
    assert_int_equal(m.data[2 * GRAN], 0);
    assert_int_equal(m.fua, 2);
    assert_int_equal(m.flushes, 1);
    assert_int_equal(bm_disk_pwrite(f->d, buf, sizeof buf, SIZE, 0), -EINVAL);
    struct bm_extent e[4];
    size_t n;
    assert_int_equal(bm_disk_extents(f->d, 0, SIZE, e, 4, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(e[0].length, SIZE);
    assert_int_equal(e[0].flags, 0);
    assert_int_equal(bm_bitmap_count(f->b), 0);
    int fd = open(f->path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, buf, sizeof buf, 0), (ssize_t)sizeof buf);
    assert_int_equal(buf[0], 0); /* the image was never written */
    assert_int_equal(pread(fd, buf, sizeof buf, (uint64_t)5 * GRAN), (ssize_t)sizeof buf);
    assert_int_equal(buf[0], 0);
    close(fd);
    struct bm_disk_redirect other = rd;
    other.opaque = NULL;
    bm_disk_redirect(f->d, &other); /* ignored: redirected once, for good */
    assert_int_equal(bm_disk_pread(f->d, buf, 1, 0), 0);
    assert_int_equal(buf[0], 'x');
    free(m.data);
}

/* A remote disk over an in-memory image whose "writes" are recorded as ranges to harvest. */
struct fake_remote {
    uint8_t data[4 * GRAN];
    uint64_t written[4][2];
    unsigned nwritten;
    int harvest_err;
    unsigned harvests, closes;
};

static int fr_pread(void *opaque, void *buf, size_t len, uint64_t offset)
{
    struct fake_remote *r = opaque;
    memcpy(buf, r->data + offset, len);
    return 0;
}

static int fr_extents(void *opaque, uint64_t offset, uint64_t len, struct bm_extent *ext,
                      size_t max, size_t *n)
{
    (void)opaque;
    (void)max;
    ext[0] = (struct bm_extent){offset, len, BM_EXTENT_ZERO};
    *n = 1;
    return 0;
}

static int fr_harvest(void *opaque, struct bm_disk *d,
                      void (*mark)(struct bm_disk *d, uint64_t offset, uint64_t len))
{
    struct fake_remote *r = opaque;
    r->harvests++;
    if (r->harvest_err)
        return r->harvest_err;
    for (unsigned i = 0; i < r->nwritten; i++)
        mark(d, r->written[i][0], r->written[i][1]);
    r->nwritten = 0;
    return 0;
}

static void fr_close(void *opaque)
{
    ((struct fake_remote *)opaque)->closes++;
}

/* A remote disk: reads and extents from the remote, writes refused, nothing marked until a
 * harvest, which marks every attached bitmap; locks, flushes and hints do nothing; closing
 * it closes the remote once. */
static void test_remote(void **state)
{
    (void)state;
    static struct fake_remote r;
    memset(r.data, 0xab, sizeof r.data);
    struct bm_disk_remote ops = {fr_pread, fr_extents, fr_harvest, fr_close, &r};
    struct bm_disk *d;
    assert_int_equal(bm_disk_open_remote("qemu:vda", sizeof r.data, &ops, &d), 0);
    assert_true(bm_disk_is_remote(d));
    assert_true(bm_disk_is_readonly(d));
    assert_int_equal(bm_disk_fd(d), -1);
    assert_string_equal(bm_disk_path(d), "qemu:vda");
    assert_int_equal(bm_disk_size(d), sizeof r.data);
    uint8_t buf[512];
    assert_int_equal(bm_disk_pread(d, buf, sizeof buf, GRAN), 0);
    assert_int_equal(buf[0], 0xab);
    assert_int_equal(bm_disk_pread(d, buf, sizeof buf, sizeof r.data), -EINVAL);
    assert_int_equal(bm_disk_pwrite(d, buf, sizeof buf, 0, 0), -EPERM);
    assert_int_equal(bm_disk_zero(d, 0, 512, 0), -EPERM);
    struct bm_extent e;
    size_t n;
    assert_int_equal(bm_disk_extents(d, 0, GRAN, &e, 1, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(e.flags, BM_EXTENT_ZERO);
    assert_int_equal(bm_disk_lock(d, BM_IMAGE_LOCK_WRITE, NULL), 0);
    assert_int_equal(bm_disk_flush(d), 0);
    assert_int_equal(bm_disk_cache(d, 0, GRAN), 0);
    assert_int_equal(bm_disk_open_direct(d), -ENOTSUP);

    struct bm_bitmap *b1 = bm_bitmap_new(sizeof r.data, GRAN);
    struct bm_bitmap *b2 = bm_bitmap_new(sizeof r.data, 4096);
    assert_int_equal(bm_disk_attach_bitmap(d, b1), 0);
    assert_int_equal(bm_disk_attach_bitmap(d, b2), 0);
    r.written[0][0] = GRAN + 100;
    r.written[0][1] = 10;
    r.written[1][0] = 3 * GRAN;
    r.written[1][1] = 8192;
    r.nwritten = 2;
    assert_int_equal(bm_bitmap_count(b1), 0); /* not seen until harvested */
    assert_int_equal(bm_disk_harvest(d), 0);
    assert_int_equal(bm_bitmap_count(b1), 2);
    assert_true(bm_bitmap_test(b1, 1) && bm_bitmap_test(b1, 3));
    assert_int_equal(bm_bitmap_count(b2), 3); /* 16 blocks in: bit 16; 48 and 49 */
    assert_true(bm_bitmap_test(b2, 16) && bm_bitmap_test(b2, 48) && bm_bitmap_test(b2, 49));
    r.harvest_err = -EPROTO;
    assert_int_equal(bm_disk_harvest(d), -EPROTO);
    assert_int_equal(r.harvests, 2);
    bm_disk_detach_bitmap(d, b1);
    bm_disk_detach_bitmap(d, b2);
    bm_disk_close(d);
    assert_int_equal(r.closes, 1);
    bm_bitmap_free(b1);
    bm_bitmap_free(b2);
}

/* A local disk has nothing to harvest: its writes mark as they happen. */
static void test_harvest_local(void **state)
{
    struct fixture *f = *state;
    assert_false(bm_disk_is_remote(f->d));
    assert_int_equal(bm_disk_harvest(f->d), 0);
    assert_int_equal(bm_bitmap_count(f->b), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_errors),
        cmocka_unit_test_setup_teardown(test_rw_and_tracking, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bounds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flush_covers_every_user, setup, teardown),
        cmocka_unit_test_setup_teardown(test_detach, setup, teardown),
        cmocka_unit_test_setup_teardown(test_extents, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readonly, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_writers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redirect, setup, teardown),
        cmocka_unit_test(test_remote),
        cmocka_unit_test_setup_teardown(test_harvest_local, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
