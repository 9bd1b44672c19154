/* test-dest-images.c: unit tests for the destination's images: temp files, placing, undoing. */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blockmirror/disk.h"
#include "migration/dest-internal.h"

#define SIZE (1u << 20)

struct fixture {
    char dir[64], img[128];
    struct mig_disk_map map[2];
    struct mig_incoming_opts o;
    struct mig_images im;
    char err[512];
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/test-dest-images.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->img, sizeof f->img, "%s/vda.img", f->dir);
    f->o.disk_dir = f->dir;
    f->o.map = f->map;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

static void write_file(const char *path, uint8_t fill, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    memset(buf, fill, len);
    assert_int_equal(write(fd, buf, len), (ssize_t)len);
    free(buf);
    close(fd);
}

/* Every byte of path is fill, and it has len bytes. */
static void assert_file(const char *path, uint8_t fill, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    uint8_t *buf = malloc(len + 1);
    assert_non_null(buf);
    assert_int_equal(read(fd, buf, len + 1), (ssize_t)len);
    for (size_t i = 0; i < len; i++)
        if (buf[i] != fill)
            fail_msg("%s: byte %zu is 0x%02x, expected 0x%02x", path, i, buf[i], fill);
    free(buf);
    close(fd);
}

/* The entries of the directory (dot files included), "." and ".." aside. */
static unsigned count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    unsigned n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

static struct json_object *one_disk(uint64_t size)
{
    char js[128];
    snprintf(js, sizeof js, "[{\"name\":\"vda\",\"size\":%llu}]", (unsigned long long)size);
    return json_tokener_parse(js);
}

static int open_images(struct fixture *f, bool with_disk, uint64_t size)
{
    struct json_object *d = one_disk(size);
    int r = mig_images_open(&f->im, &f->o, with_disk, d, f->err, sizeof f->err);
    json_object_put(d);
    return r;
}

static void write_image(struct fixture *f, uint8_t fill)
{
    uint8_t *buf = malloc(SIZE);
    assert_non_null(buf);
    memset(buf, fill, SIZE);
    assert_int_equal(bm_disk_pwrite(f->im.img[0].disk, buf, SIZE, 0, 0), 0);
    free(buf);
}

/* --force: the old image is untouched while the new one arrives, and comes back on a discard,
 * even one after the new image was placed. */
static void test_force_discard_puts_old_back(void **state)
{
    struct fixture *f = *state;
    write_file(f->img, 0x11, SIZE);
    f->o.force = true;
    assert_int_equal(open_images(f, true, SIZE), 0);
    write_image(f, 0x22);
    assert_file(f->img, 0x11, SIZE);
    assert_int_equal(count_entries(f->dir), 2); /* the old image and the temporary file */
    assert_int_equal(mig_images_place(&f->im, f->err, sizeof f->err), 0);
    assert_file(f->img, 0x22, SIZE);
    mig_images_discard(&f->im);
    assert_file(f->img, 0x11, SIZE);
    assert_int_equal(count_entries(f->dir), 1);
}

/* --force, completed: RESUMED sent (keep), the old image is still in place; once durable the
 * new image replaces it, the old one is gone, and the disk has its name. */
static void test_force_keep_replaces(void **state)
{
    struct fixture *f = *state;
    write_file(f->img, 0x11, SIZE);
    f->o.force = true;
    assert_int_equal(open_images(f, true, SIZE), 0);
    write_image(f, 0x33);
    mig_images_keep(&f->im);
    assert_file(f->img, 0x11, SIZE);
    assert_int_equal(count_entries(f->dir), 2);
    assert_int_equal(mig_images_durable(&f->im, f->err, sizeof f->err), 0);
    assert_string_equal(bm_disk_path(f->im.img[0].disk), f->img);
    assert_int_equal(count_entries(f->dir), 1);
    assert_file(f->img, 0x33, SIZE);
    mig_images_discard(&f->im); /* after keep: closes only */
    assert_file(f->img, 0x33, SIZE);
}

/* Kept but never made durable (the destination died before DURABLE, or its VM did not resume):
 * the image name is untouched and the new image stays at its temporary name. */
static void test_keep_without_durable(void **state)
{
    struct fixture *f = *state;
    write_file(f->img, 0x11, SIZE);
    f->o.force = true;
    assert_int_equal(open_images(f, true, SIZE), 0);
    write_image(f, 0x44);
    mig_images_keep(&f->im);
    mig_images_discard(&f->im);
    assert_file(f->img, 0x11, SIZE);
    assert_int_equal(count_entries(f->dir), 2);
}

/* A rename that fails after the resume says where the image is. */
static void test_durable_failure_says_where(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(open_images(f, true, SIZE), 0);
    write_image(f, 0x55);
    mig_images_keep(&f->im);
    write_file(f->img, 0x66, SIZE); /* a file appears at the name meanwhile */
    assert_int_equal(mig_images_durable(&f->im, f->err, sizeof f->err), -EEXIST);
    assert_non_null(strstr(f->err, "disk vda is at "));
    assert_non_null(strstr(f->err, ".blkmig-tmp"));
    mig_images_discard(&f->im);
    assert_file(f->img, 0x66, SIZE);
    assert_int_equal(count_entries(f->dir), 2);
}

/* A new image: placed and then discarded, nothing is left; kept, it stays. */
static void test_new_image(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(open_images(f, true, SIZE), 0);
    assert_int_equal(access(f->img, F_OK), -1);
    write_image(f, 0x44);
    assert_int_equal(mig_images_place(&f->im, f->err, sizeof f->err), 0);
    mig_images_discard(&f->im);
    assert_int_equal(count_entries(f->dir), 0);
    memset(&f->im, 0, sizeof f->im);
    assert_int_equal(open_images(f, true, SIZE), 0);
    write_image(f, 0x55);
    assert_int_equal(mig_images_place(&f->im, f->err, sizeof f->err), 0);
    mig_images_keep(&f->im);
    mig_images_discard(&f->im);
    assert_int_equal(count_entries(f->dir), 1);
    assert_file(f->img, 0x55, SIZE);
}

/* Without --force an existing image is refused; one that appears while the migration runs is
 * not replaced either, and the new image then goes away. */
static void test_no_force(void **state)
{
    struct fixture *f = *state;
    write_file(f->img, 0x11, SIZE);
    assert_int_equal(open_images(f, true, SIZE), -EEXIST);
    assert_non_null(strstr(f->err, "--force"));
    mig_images_discard(&f->im);
    assert_int_equal(count_entries(f->dir), 1);
    assert_int_equal(unlink(f->img), 0);
    memset(&f->im, 0, sizeof f->im);
    assert_int_equal(open_images(f, true, SIZE), 0);
    write_file(f->img, 0x66, SIZE);
    assert_int_equal(mig_images_place(&f->im, f->err, sizeof f->err), -EEXIST);
    mig_images_discard(&f->im);
    assert_int_equal(count_entries(f->dir), 1);
    assert_file(f->img, 0x66, SIZE);
}

/* A symbolic link in the directory is never followed, with or without --force. */
static void test_symlink_refused(void **state)
{
    struct fixture *f = *state;
    char target[128];
    snprintf(target, sizeof target, "%s/outside", f->dir);
    write_file(target, 0x77, SIZE);
    assert_int_equal(symlink(target, f->img), 0);
    f->o.force = true;
    assert_int_equal(open_images(f, true, SIZE), -ELOOP);
    mig_images_discard(&f->im);
    assert_int_equal(count_entries(f->dir), 2);
    assert_file(target, 0x77, SIZE);
}

/* Shared storage opens only what --disk lists, and checks its size. */
static void test_shared_listed_only(void **state)
{
    struct fixture *f = *state;
    write_file(f->img, 0x11, SIZE);
    assert_int_equal(open_images(f, false, SIZE), -EPERM);
    assert_non_null(strstr(f->err, "--disk vda=PATH"));
    mig_images_discard(&f->im);
    f->o.nmap = 1;
    snprintf(f->map[0].name, sizeof f->map[0].name, "vda");
    snprintf(f->map[0].path, sizeof f->map[0].path, "%s", f->img);
    memset(&f->im, 0, sizeof f->im);
    assert_int_equal(open_images(f, false, 2 * SIZE), -EINVAL);
    mig_images_discard(&f->im);
    memset(&f->im, 0, sizeof f->im);
    assert_int_equal(open_images(f, false, SIZE), 0);
    assert_int_equal(mig_images_place(&f->im, f->err, sizeof f->err), 0);
    mig_images_discard(&f->im);
    assert_int_equal(count_entries(f->dir), 1);
    assert_file(f->img, 0x11, SIZE);
}

/* Limits: the free space by default, --max-disk instead; RAM likewise. */
static void test_limits(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(open_images(f, true, 1ull << 50), -EFBIG);
    assert_non_null(strstr(f->err, "bytes free there"));
    mig_images_discard(&f->im);
    assert_int_equal(count_entries(f->dir), 0);
    f->o.max_disk = SIZE - 512;
    memset(&f->im, 0, sizeof f->im);
    assert_int_equal(open_images(f, true, SIZE), -EFBIG);
    assert_non_null(strstr(f->err, "--max-disk"));
    mig_images_discard(&f->im);
    assert_int_equal(count_entries(f->dir), 0);

    struct json_object *vmd = json_tokener_parse("{\"ram\":1099511627776}");
    assert_int_equal(mig_dest_check_ram(&f->o, vmd, f->err, sizeof f->err), -EFBIG);
    assert_non_null(strstr(f->err, "memory available"));
    f->o.max_ram = 2ull << 40;
    assert_int_equal(mig_dest_check_ram(&f->o, vmd, f->err, sizeof f->err), 0);
    json_object_put(vmd);
    vmd = json_tokener_parse("{\"ram\":\"1099511627776\"}");
    assert_int_equal(mig_dest_check_ram(&f->o, vmd, f->err, sizeof f->err), -EPROTO);
    json_object_put(vmd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_force_discard_puts_old_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_force_keep_replaces, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keep_without_durable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_durable_failure_says_where, setup, teardown),
        cmocka_unit_test_setup_teardown(test_new_image, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_force, setup, teardown),
        cmocka_unit_test_setup_teardown(test_symlink_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shared_listed_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_limits, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
