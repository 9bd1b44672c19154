/* test-imagefmt.c: unit tests for common/imagefmt (image formats told by their magic). */
#include <config.h>

#include <errno.h>
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

#include "common/imagefmt.h"
#include "vm/blockfmt.h"

static uint8_t head[BM_IMAGEFMT_HEAD], tail[BM_IMAGEFMT_TAIL];

/* The name of what head (hlen bytes) shows, "raw" for nothing. */
static const char *name_of(size_t hlen)
{
    const struct bm_imagefmt *f = bm_imagefmt_detect(head, hlen, NULL, 0);
    return f ? f->name : "raw";
}

static void put(size_t offset, const void *magic, size_t len)
{
    memset(head, 0, sizeof head);
    memcpy(head + offset, magic, len);
}

static void put_be32(size_t offset, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    memcpy(head + offset, b, 4);
}

static void test_headers(void **state)
{
    (void)state;
    static const struct {
        const char *fmt;
        size_t offset;
        const char *bytes; /* a header: the magic (mlen bytes) and what may follow */
        size_t len, mlen;
    } cases[] = {
        {"qed", 0, "QED\0\x00\x00\x01\x00", 8, 4},
        {"vmdk", 0, "KDMV\x01\x00\x00\x00", 8, 4},
        {"vmdk", 0, "COWD\x01\x00\x00\x00", 8, 4},
        {"vmdk", 0, "# Disk DescriptorFile\nversion=1\n", 32, 21},
        {"vhdx", 0, "vhdxfile", 8, 8},
        {"vpc", 0, "conectix\x00\x00\x00\x02", 12, 8},
        {"vdi", 0x40, "\x7f\x10\xda\xbe\x01\x00\x01\x00", 8, 4},
        {"luks", 0, "LUKS\xba\xbe\x00\x01", 8, 6},
        {"luks", 0, "LUKS\xba\xbe\x00\x02", 8, 6},
        {"parallels", 0, "WithoutFreeSpace", 16, 16},
        {"parallels", 0, "WithouFreSpacExt", 16, 16},
        {"bochs", 0, "Bochs Virtual HD Image", 22, 22},
        {"cloop", 0, "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount", 54, 45},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        put(cases[i].offset, cases[i].bytes, cases[i].len);
        assert_string_equal(name_of(sizeof head), cases[i].fmt);
        assert_string_equal(name_of(cases[i].offset + cases[i].mlen), cases[i].fmt);
        /* A short image, its magic cut by one byte: raw. */
        assert_string_equal(name_of(cases[i].offset + cases[i].mlen - 1), "raw");
        /* One byte of the magic changed: raw. */
        head[cases[i].offset] ^= 0x20;
        assert_string_equal(name_of(sizeof head), "raw");
    }
}

static void test_qcow_versions(void **state)
{
    (void)state;
    put(0, "QFI\xfb", 4);
    put_be32(4, 3);
    assert_string_equal(name_of(sizeof head), "qcow2");
    put_be32(4, 2);
    assert_string_equal(name_of(sizeof head), "qcow2");
    put_be32(4, 1);
    assert_string_equal(name_of(sizeof head), "qcow");
    put_be32(4, 4); /* no such version: not taken for qcow2 */
    assert_string_equal(name_of(sizeof head), "raw");
    put_be32(4, 3);
    for (size_t n = 0; n < 8; n++) /* the version cut off: raw */
        assert_string_equal(name_of(n), "raw");
    assert_string_equal(name_of(8), "qcow2");
}

static const char *tail_name(size_t tlen)
{
    const struct bm_imagefmt *f = bm_imagefmt_detect(NULL, 0, tail, tlen);
    return f ? f->name : "raw";
}

static void test_trailers(void **state)
{
    (void)state;
    memset(tail, 0, sizeof tail);
    memcpy(tail, "conectix", 8); /* a fixed VHD's footer */
    assert_string_equal(tail_name(sizeof tail), "vpc");
    assert_string_equal(tail_name(sizeof tail - 1), "raw");
    memset(tail, 0, sizeof tail);
    memcpy(tail, "koly\x00\x00\x00\x04\x00\x00\x02\x00", 12); /* DMG: version 4, 512 bytes */
    assert_string_equal(tail_name(sizeof tail), "dmg");
    tail[7] = 5;
    assert_string_equal(tail_name(sizeof tail), "raw");
    /* The head wins over the tail; no head and no tail is raw. */
    put(0, "vhdxfile", 8);
    tail[7] = 4;
    assert_string_equal(bm_imagefmt_detect(head, sizeof head, tail, sizeof tail)->name, "vhdx");
    assert_null(bm_imagefmt_detect(NULL, 0, NULL, 0));
}

static uint64_t rnd_state = 42;
static uint64_t rnd(void)
{
    uint64_t z = (rnd_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void test_raw(void **state)
{
    (void)state;
    memset(head, 0, sizeof head);
    memset(tail, 0, sizeof tail);
    assert_null(bm_imagefmt_detect(head, sizeof head, tail, sizeof tail));
    assert_null(bm_imagefmt_detect(head, 0, tail, 0));
    for (int i = 0; i < 20000; i++) {
        for (size_t k = 0; k < sizeof head; k += 8) {
            uint64_t v = rnd();
            memcpy(head + k, &v, 8);
        }
        for (size_t k = 0; k < sizeof tail; k += 8) {
            uint64_t v = rnd();
            memcpy(tail + k, &v, 8);
        }
        assert_null(bm_imagefmt_detect(head, sizeof head, tail, sizeof tail));
    }
    /* What blkmig's own guests write into block 0 is raw data. */
    static uint8_t blk[BM_FMT_SIZE];
    for (uint64_t gen = 1; gen < 50; gen++) {
        bm_fmt_format(blk, BM_FMT_BLOCK_MAGIC, 0, gen);
        assert_null(bm_imagefmt_detect(blk, sizeof head, blk + BM_FMT_SIZE - 512, 512));
    }
    /* A partition table (an MBR) is raw data too. */
    memset(head, 0, sizeof head);
    head[510] = 0x55;
    head[511] = 0xaa;
    assert_null(bm_imagefmt_detect(head, sizeof head, NULL, 0));
}

/* bm_imagefmt_probe on files: short, empty, a header, a trailer, a bad descriptor. */
static void test_probe(void **state)
{
    (void)state;
    char path[] = "/tmp/test-imagefmt-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    const struct bm_imagefmt *f = (const void *)1;
    assert_int_equal(bm_imagefmt_probe(fd, 0, &f), 0);
    assert_null(f);
    assert_int_equal(pwrite(fd, "QFI", 3, 0), 3); /* a 3-byte file */
    f = (const void *)1;
    assert_int_equal(bm_imagefmt_probe(fd, 3, &f), 0);
    assert_null(f);
    assert_int_equal(pwrite(fd, "QFI\xfb\x00\x00\x00\x03", 8, 0), 8);
    assert_int_equal(bm_imagefmt_probe(fd, 8, &f), 0);
    assert_non_null(f);
    assert_string_equal(f->name, "qcow2");
    assert_int_equal(ftruncate(fd, 0), 0);
    assert_int_equal(ftruncate(fd, 1 << 20), 0);
    assert_int_equal(pwrite(fd, "conectix", 8, (1 << 20) - 512), 8);
    assert_int_equal(bm_imagefmt_probe(fd, 1 << 20, &f), 0);
    assert_non_null(f);
    assert_string_equal(f->name, "vpc");
    /* A size larger than the file (it shrank): the missing bytes are not there, raw. */
    assert_int_equal(bm_imagefmt_probe(fd, 2 << 20, &f), 0);
    assert_null(f);
    close(fd);
    assert_int_equal(bm_imagefmt_probe(-1, 4096, &f), -EBADF);
}

static void test_advice(void **state)
{
    (void)state;
    char buf[512];
    put(0, "QFI\xfb\x00\x00\x00\x03", 8);
    const struct bm_imagefmt *f = bm_imagefmt_detect(head, sizeof head, NULL, 0);
    bm_imagefmt_advice(f, "vm.img", false, buf, sizeof buf);
    assert_non_null(strstr(buf, "qemu-img convert -f qcow2 -O raw vm.img"));
    assert_null(strstr(buf, "qemu-nbd"));
    bm_imagefmt_advice(f, "vm.img", true, buf, sizeof buf);
    assert_non_null(strstr(buf, "qemu-nbd -f qcow2"));
    put(0, "LUKS\xba\xbe\x00\x02", 8);
    f = bm_imagefmt_detect(head, sizeof head, NULL, 0);
    bm_imagefmt_advice(f, "secret.img", true, buf, sizeof buf);
    assert_non_null(strstr(buf, "cryptsetup open secret.img"));
    bm_imagefmt_advice(f, "secret.img", true, buf, 8); /* truncated, terminated */
    assert_int_equal(strlen(buf), 7);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_headers),  cmocka_unit_test(test_qcow_versions),
        cmocka_unit_test(test_trailers), cmocka_unit_test(test_raw),
        cmocka_unit_test(test_probe),    cmocka_unit_test(test_advice),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
