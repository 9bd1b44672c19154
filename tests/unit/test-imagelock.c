/* test-imagelock.c: unit tests for common/imagelock (QEMU's image locks between open files). */
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

#include "common/imagelock.h"

static char path[] = "/tmp/test-imagelock-XXXXXX";

static int setup(void **state)
{
    (void)state;
    int fd = mkstemp(path);
    if (fd < 0)
        return -1;
    close(fd);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(path);
    return 0;
}

/* A new open file description of the image (each holds its own locks). */
static int ofd(void)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    assert_true(fd >= 0);
    return fd;
}

/* Whether an open file other than probe's holds a lock on byte. */
static bool held(int probe, long byte)
{
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};
    assert_int_equal(fcntl(probe, F_OFD_GETLK, &fl), 0);
    return fl.l_type != F_UNLCK;
}

/* The bytes among 100..104 and 200..204 that others than probe hold, as a bitmask
 * (bit b: byte 100 + b; bit 8 + b: byte 200 + b). */
static unsigned held_bytes(int probe)
{
    unsigned m = 0;
    for (int b = 0; b < BM_PERM_NBITS; b++) {
        m |= held(probe, BM_IMAGE_LOCK_PERM_BASE + b) ? 1u << b : 0;
        m |= held(probe, BM_IMAGE_LOCK_SHARED_BASE + b) ? 1u << (8 + b) : 0;
    }
    return m;
}

#define P(bit) (bit)
#define S(bit) ((bit) << 8)

/* The bytes each mode locks are QEMU's: what a read-write QEMU, qemu-img and qemu-img -U lock. */
static void test_bytes(void **state)
{
    (void)state;
    struct bm_image_holder h;
    int a = ofd(), probe = ofd();
    assert_int_equal(bm_image_lock(a, BM_IMAGE_LOCK_WRITE, &h), 0);
    assert_int_equal(held_bytes(probe), P(BM_PERM_CONSISTENT_READ) | P(BM_PERM_WRITE) |
                                            S(BM_PERM_WRITE) | S(BM_PERM_RESIZE));
    bm_image_unlock(a);
    assert_int_equal(held_bytes(probe), 0);
    assert_int_equal(bm_image_lock(a, BM_IMAGE_LOCK_READ, &h), 0);
    assert_int_equal(held_bytes(probe),
                     P(BM_PERM_CONSISTENT_READ) | S(BM_PERM_WRITE) | S(BM_PERM_RESIZE));
    bm_image_unlock(a);
    assert_int_equal(bm_image_lock(a, BM_IMAGE_LOCK_SHARED, &h), 0);
    assert_int_equal(held_bytes(probe), P(BM_PERM_CONSISTENT_READ));
    /* Closing the last descriptor of the open file drops its locks. */
    close(a);
    assert_int_equal(held_bytes(probe), 0);
    close(probe);
}

static void test_writer_excludes(void **state)
{
    (void)state;
    struct bm_image_holder h;
    int a = ofd(), b = ofd(), probe = ofd();
    assert_int_equal(bm_image_lock(a, BM_IMAGE_LOCK_WRITE, &h), 0);
    /* A second writer and a reader that denies writers are refused, and keep no lock. */
    assert_int_equal(bm_image_lock(b, BM_IMAGE_LOCK_WRITE, &h), -EBUSY);
    assert_true(h.writer);
    assert_int_equal(h.perm, BM_PERM_WRITE);
    assert_int_equal(h.pid, (long)getpid()); /* found through /proc/self/fdinfo */
    assert_true(h.comm[0] != '\0');
    close(a);
    a = ofd();
    assert_int_equal(bm_image_lock(a, BM_IMAGE_LOCK_WRITE, &h), 0);
    assert_int_equal(bm_image_lock(b, BM_IMAGE_LOCK_READ, &h), -EBUSY);
    assert_true(h.writer);
    /* b holds nothing after its failures: a's locks are all there is. */
    bm_image_unlock(a);
    assert_int_equal(held_bytes(probe), 0);
    assert_int_equal(bm_image_lock(a, BM_IMAGE_LOCK_WRITE, &h), 0);
    /* A force-share reader is let in, and does not keep the writer from going on. */
    assert_int_equal(bm_image_lock(b, BM_IMAGE_LOCK_SHARED, &h), 0);
    bm_image_unlock(a);
    assert_int_equal(bm_image_lock(a, BM_IMAGE_LOCK_WRITE, &h), 0);
    close(a);
    close(b);
    close(probe);
}

static void test_readers(void **state)
{
    (void)state;
    struct bm_image_holder h;
    int a = ofd(), b = ofd(), c = ofd();
    /* Readers share; a writer is refused by a reader that denies it (not a writer itself). */
    assert_int_equal(bm_image_lock(a, BM_IMAGE_LOCK_READ, &h), 0);
    assert_int_equal(bm_image_lock(b, BM_IMAGE_LOCK_READ, &h), 0);
    assert_int_equal(bm_image_lock(c, BM_IMAGE_LOCK_WRITE, &h), -EBUSY);
    assert_false(h.writer);
    assert_int_equal(h.perm, BM_PERM_WRITE);
    assert_int_equal(h.pid, (long)getpid());
    assert_int_equal(bm_image_lock(c, BM_IMAGE_LOCK_SHARED, &h), 0);
    close(a);
    close(b);
    /* With the readers gone the writer gets in; the force-share reader does not stop it. */
    int d = ofd();
    assert_int_equal(bm_image_lock(d, BM_IMAGE_LOCK_WRITE, &h), 0);
    close(c);
    close(d);
}

/* Somebody's exclusive lock on a byte of the scheme is a conflict too, not an error. */
static void test_foreign_exclusive(void **state)
{
    (void)state;
    struct bm_image_holder h;
    int a = ofd(), b = ofd();
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 100, .l_len = 1};
    assert_int_equal(fcntl(a, F_OFD_SETLK, &fl), 0);
    assert_int_equal(bm_image_lock(b, BM_IMAGE_LOCK_SHARED, &h), -EBUSY);
    close(a);
    assert_int_equal(bm_image_lock(b, BM_IMAGE_LOCK_SHARED, &h), 0);
    close(b);
}

static void test_describe(void **state)
{
    (void)state;
    char buf[96];
    struct bm_image_holder h = {.perm = BM_PERM_WRITE, .writer = true, .pid = 1};
    strcpy(h.comm, "qemu-nbd");
    bm_image_holder_describe(&h, buf, sizeof buf);
    assert_string_equal(buf, "another process (qemu-nbd, pid 1)");
    h.pid = 0;
    bm_image_holder_describe(&h, buf, sizeof buf);
    assert_string_equal(buf, "another process (QEMU?)");
    h.pid = (long)getpid();
    bm_image_holder_describe(&h, buf, sizeof buf);
    assert_non_null(strstr(buf, "this process"));
    assert_string_equal(bm_image_perm_name(BM_PERM_WRITE), "write");
    assert_string_equal(bm_image_perm_name(BM_PERM_CONSISTENT_READ), "consistent read");
    assert_int_equal(bm_image_lock(-1, BM_IMAGE_LOCK_WRITE, &h), -EBADF);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bytes),    cmocka_unit_test(test_writer_excludes),
        cmocka_unit_test(test_readers),  cmocka_unit_test(test_foreign_exclusive),
        cmocka_unit_test(test_describe),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
