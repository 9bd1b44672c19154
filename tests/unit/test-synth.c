/* test-synth.c: unit tests for the synthetic guest: workloads, lifecycle, self-checks, state. */
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

#include "common/bitmap.h"
#include "vm/synth/synth-internal.h"
#include "vm/synth/synth.h"

#define RAM_SIZE  (8u << 20)
#define DISK_SIZE (8u << 20)

/* ---- workload strings ---- */

static void test_workload_parse_good(void **state)
{
    (void)state;
    struct synth_workload w;
    synth_workload_default(&w);
    assert_int_equal(w.mem_rate, 0);
    assert_int_equal(w.disk_rate, 0);
    assert_int_equal(w.hot, 256ull << 20);
    assert_int_equal(w.disk_min_io, 4096);
    assert_int_equal(w.disk_max_io, 65536);
    assert_int_equal(w.mem_pattern, SYNTH_UNIFORM);
    char err[256] = "";
    assert_int_equal(synth_workload_parse("mem=64M/s,hot=256M,disk=16M/s,io=4K-64K,"
                                          "mem-pattern=hotspot,disk-pattern=sequential,"
                                          "ram-fill=1M,disk-fill=1M,seed=7",
                                          &w, err, sizeof err),
                     0);
    assert_int_equal(w.mem_rate, 64ull << 20);
    assert_int_equal(w.hot, 256ull << 20);
    assert_int_equal(w.disk_rate, 16ull << 20);
    assert_int_equal(w.disk_min_io, 4096);
    assert_int_equal(w.disk_max_io, 65536);
    assert_int_equal(w.mem_pattern, SYNTH_HOTSPOT);
    assert_int_equal(w.disk_pattern, SYNTH_SEQUENTIAL);
    assert_int_equal(w.ram_fill, 1ull << 20);
    assert_int_equal(w.disk_fill, 1ull << 20);
    assert_int_equal(w.seed, 7);

    /* On top of what is there: only the keys given change. */
    assert_int_equal(
        synth_workload_parse("seed=9,mem=1G,io=8K,pattern=sequential", &w, err, sizeof err), 0);
    assert_int_equal(w.seed, 9);
    assert_int_equal(w.mem_rate, 1ull << 30); /* "/s" is optional */
    assert_int_equal(w.disk_min_io, 8192);    /* one size: both bounds */
    assert_int_equal(w.disk_max_io, 8192);
    assert_int_equal(w.mem_pattern, SYNTH_SEQUENTIAL);
    assert_int_equal(w.disk_rate, 16ull << 20);
    assert_int_equal(w.disk_pattern, SYNTH_SEQUENTIAL);
    assert_int_equal(
        synth_workload_parse("io=1M-1M,disk-pattern=uniform,mem=0", &w, err, sizeof err), 0);
    assert_int_equal(w.disk_max_io, 1u << 20);
    assert_int_equal(w.disk_pattern, SYNTH_UNIFORM);
    assert_int_equal(w.mem_rate, 0);
    assert_int_equal(synth_workload_parse("seed=18446744073709551615", &w, err, sizeof err), 0);
    assert_int_equal(w.seed, UINT64_MAX);
    /* Empty strings and empty items are nothing to do. */
    assert_int_equal(synth_workload_parse("", &w, err, sizeof err), 0);
    assert_int_equal(synth_workload_parse(",,", &w, err, sizeof err), 0);
    assert_string_equal(synth_pattern_name(SYNTH_HOTSPOT), "hotspot");
}

static void expect_bad(const char *s, const char *msg)
{
    struct synth_workload w;
    synth_workload_default(&w);
    char err[256] = "";
    int r = synth_workload_parse(s, &w, err, sizeof err);
    if (r != -EINVAL)
        fail_msg("'%s': got %d, wanted -EINVAL", s, r);
    if (!strstr(err, msg))
        fail_msg("'%s': message '%s' does not say '%s'", s, err, msg);
}

static void test_workload_parse_bad(void **state)
{
    (void)state;
    expect_bad("foo=1", "unknown key 'foo'");
    expect_bad("mem=1M,memory=1M", "unknown key 'memory'");
    expect_bad("=5", "unknown key ''");
    expect_bad("mem", "'mem' is not KEY=VALUE");
    expect_bad("mem=1M,hot", "'hot' is not KEY=VALUE");
    expect_bad("io=3K", "bad value '3K' for io"); /* under 4 KiB */
    expect_bad("io=6K", "bad value '6K' for io"); /* not a multiple of 4 KiB */
    expect_bad("io=64K-4K", "bad value '64K-4K' for io");
    expect_bad("io=4K-2M", "bad value '4K-2M' for io"); /* over 1 MiB */
    expect_bad("io=4K-", "bad value '4K-' for io");
    expect_bad("io=x", "bad value 'x' for io");
    expect_bad("mem-pattern=zigzag", "bad value 'zigzag' for mem-pattern");
    expect_bad("disk-pattern=random", "bad value 'random' for disk-pattern");
    expect_bad("disk-pattern=", "bad value '' for disk-pattern");
    expect_bad("mem=fast", "bad value 'fast' for mem");
    expect_bad("mem=", "bad value '' for mem");
    expect_bad("mem=/s", "bad value '/s' for mem");
    expect_bad("disk=-1M/s", "bad value '-1M/s' for disk");
    expect_bad("hot=1K", "bad value '1K' for hot");
    expect_bad("ram-fill=1Q", "bad value '1Q' for ram-fill");
    expect_bad("seed=abc", "bad value 'abc' for seed");
    expect_bad("seed=18446744073709551616", "bad value");
}

/* ---- workload JSON ---- */

static void assert_same_workload(const struct synth_workload *a, const struct synth_workload *b)
{
    assert_int_equal(a->mem_rate, b->mem_rate);
    assert_int_equal(a->hot, b->hot);
    assert_int_equal(a->mem_pattern, b->mem_pattern);
    assert_int_equal(a->disk_rate, b->disk_rate);
    assert_int_equal(a->disk_min_io, b->disk_min_io);
    assert_int_equal(a->disk_max_io, b->disk_max_io);
    assert_int_equal(a->disk_pattern, b->disk_pattern);
    assert_int_equal(a->seed, b->seed);
}

/* Through the text form too, as the destination receives it. */
static void round_trip(const char *spec)
{
    struct synth_workload w, back;
    synth_workload_default(&w);
    char err[256] = "";
    assert_int_equal(synth_workload_parse(spec, &w, err, sizeof err), 0);
    struct json_object *o = synth_workload_to_json(&w);
    assert_non_null(o);
    struct json_object *t = json_tokener_parse(json_object_to_json_string(o));
    assert_non_null(t);
    memset(&back, 0xa5, sizeof back);
    if (synth_workload_from_json(t, &back, err, sizeof err) != 0)
        fail_msg("%s: %s", spec, err);
    assert_same_workload(&w, &back);
    json_object_put(o);
    json_object_put(t);
}

static void test_workload_json_round_trip(void **state)
{
    (void)state;
    round_trip("");
    round_trip("mem=64M/s,hot=256M,disk=16M/s,io=4K-64K,mem-pattern=hotspot,"
               "disk-pattern=sequential,seed=7");
    round_trip("mem=1T,hot=4K,disk=1T,io=1M,mem-pattern=sequential,disk-pattern=hotspot");
    round_trip("seed=18446744073709551615");
    round_trip("seed=0");
}

static void expect_bad_json(const char *text)
{
    struct json_object *o = json_tokener_parse(text);
    assert_non_null(o);
    struct synth_workload w;
    char err[256] = "";
    if (synth_workload_from_json(o, &w, err, sizeof err) != -EINVAL)
        fail_msg("accepted %s", text);
    assert_string_equal(err, "bad synthetic workload description");
    json_object_put(o);
}

static void test_workload_json_bad(void **state)
{
    (void)state;
    /* A complete good description, then each field broken in turn. */
#define GOOD_REST                                                                                  \
    "\"disk_rate\":0,\"disk_min_io\":4096,\"disk_max_io\":65536,\"mem_pattern\":\"uniform\","      \
    "\"disk_pattern\":\"uniform\",\"seed\":1"
    struct json_object *o = json_tokener_parse("{\"mem_rate\":0,\"hot\":4096," GOOD_REST "}");
    struct synth_workload w;
    char err[256];
    assert_int_equal(synth_workload_from_json(o, &w, err, sizeof err), 0);
    json_object_put(o);
    expect_bad_json("[1,2]");
    expect_bad_json("\"mem=1M\"");
    expect_bad_json("{}");
    expect_bad_json("{\"hot\":4096," GOOD_REST "}");
    expect_bad_json("{\"mem_rate\":-1,\"hot\":4096," GOOD_REST "}");
    expect_bad_json("{\"mem_rate\":\"1M\",\"hot\":4096," GOOD_REST "}");
    expect_bad_json("{\"mem_rate\":1.5,\"hot\":4096," GOOD_REST "}");
    expect_bad_json("{\"mem_rate\":2199023255552,\"hot\":4096," GOOD_REST "}");
    expect_bad_json("{\"mem_rate\":0,\"hot\":100," GOOD_REST "}");
    expect_bad_json("{\"mem_rate\":0,\"hot\":4096,\"disk_rate\":0,\"disk_min_io\":3000,"
                    "\"disk_max_io\":65536,\"mem_pattern\":\"uniform\","
                    "\"disk_pattern\":\"uniform\",\"seed\":1}");
    expect_bad_json("{\"mem_rate\":0,\"hot\":4096,\"disk_rate\":0,\"disk_min_io\":65536,"
                    "\"disk_max_io\":4096,\"mem_pattern\":\"uniform\","
                    "\"disk_pattern\":\"uniform\",\"seed\":1}");
    expect_bad_json("{\"mem_rate\":0,\"hot\":4096,\"disk_rate\":0,\"disk_min_io\":4096,"
                    "\"disk_max_io\":65536,\"mem_pattern\":\"zigzag\","
                    "\"disk_pattern\":\"uniform\",\"seed\":1}");
    expect_bad_json("{\"mem_rate\":0,\"hot\":4096,\"disk_rate\":0,\"disk_min_io\":4096,"
                    "\"disk_max_io\":65536,\"mem_pattern\":\"uniform\",\"seed\":1}");
    expect_bad_json("{\"mem_rate\":0,\"hot\":4096,\"disk_rate\":0,\"disk_min_io\":4096,"
                    "\"disk_max_io\":65536,\"mem_pattern\":\"uniform\","
                    "\"disk_pattern\":\"uniform\"}");
#undef GOOD_REST
}

/* ---- a guest with a disk ---- */

struct fx {
    char dir[64], path[96], big_path[96];
    struct bm_disk *disk;
    struct vm_disk vd;
    struct vm *vm;
};

static int fx_setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    strcpy(f->dir, "/tmp/blkmig-test-synth.XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->path, sizeof f->path, "%s/vda", f->dir);
    snprintf(f->big_path, sizeof f->big_path, "%s/big", f->dir);
    int fd = open(f->path, O_RDWR | O_CREAT, 0600);
    if (fd < 0 || ftruncate(fd, DISK_SIZE) < 0)
        return -1;
    close(fd);
    if (bm_disk_open(f->path, 0, &f->disk) < 0)
        return -1;
    strcpy(f->vd.name, "vda");
    f->vd.disk = f->disk;
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    struct fx *f = *state;
    vm_destroy(f->vm);
    bm_disk_close(f->disk);
    unlink(f->path);
    unlink(f->big_path);
    rmdir(f->dir);
    free(f);
    return 0;
}

static struct vm *create(uint64_t ram, const struct vm_disk *disks, unsigned ndisks,
                         const char *workload, bool boot)
{
    struct synth_workload w;
    synth_workload_default(&w);
    char err[256] = "";
    if (workload)
        assert_int_equal(synth_workload_parse(workload, &w, err, sizeof err), 0);
    struct vm *vm = NULL;
    if (synth_create(ram, disks, ndisks, &w, boot, NULL, NULL, &vm, err, sizeof err) != 0)
        fail_msg("synth_create: %s", err);
    assert_non_null(vm);
    return vm;
}

static int64_t query_int(struct vm *vm, const char *key)
{
    struct json_object *q = vm->ops->query(vm);
    struct json_object *v;
    if (!json_object_object_get_ex(q, key, &v))
        fail_msg("query has no %s", key);
    int64_t x = json_object_get_int64(v);
    json_object_put(q);
    return x;
}

static void wait_for(struct vm *vm, const char *key, int64_t at_least)
{
    for (int i = 0; i < 2000; i++) {
        if (query_int(vm, key) >= at_least)
            return;
        usleep(1000);
    }
    fail_msg("%s never reached %lld", key, (long long)at_least);
}

static void test_create_too_small(void **state)
{
    struct fx *f = *state;
    struct synth_workload w;
    synth_workload_default(&w);
    struct vm *vm = NULL;
    char err[256];
    static const uint64_t bad[] = {
        0, 4096, 128 << 10, (256 << 10) - 4096, (256 << 10) + 100, 2ull << 40};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        assert_int_equal(synth_create(bad[i], NULL, 0, &w, false, NULL, NULL, &vm, err, sizeof err),
                         -EINVAL);
        assert_null(vm);
        assert_non_null(strstr(err, "between 256 KiB and 1 TiB"));
    }
    /* The smallest size is fine... */
    assert_int_equal(synth_create(256 << 10, NULL, 0, &w, true, NULL, NULL, &vm, err, sizeof err),
                     0);
    vm_destroy(vm);
    vm = NULL;
    /* ...but not with a disk whose bookkeeping does not fit in it (1 GiB: 256 pages). */
    int fd = open(f->big_path, O_RDWR | O_CREAT, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 1ull << 30), 0);
    close(fd);
    struct bm_disk *big;
    assert_int_equal(bm_disk_open(f->big_path, 0, &big), 0);
    struct vm_disk vd = {"vdb", big};
    err[0] = '\0';
    assert_int_equal(synth_create(256 << 10, &vd, 1, &w, false, NULL, NULL, &vm, err, sizeof err),
                     -EINVAL);
    assert_null(vm);
    assert_non_null(strstr(err, "guest RAM too small"));
    bm_disk_close(big);
    /* Too many disks. */
    struct vm_disk many[VM_MAX_DISKS + 1];
    for (unsigned i = 0; i <= VM_MAX_DISKS; i++)
        many[i] = f->vd;
    err[0] = '\0';
    assert_int_equal(
        synth_create(RAM_SIZE, many, VM_MAX_DISKS + 1, &w, false, NULL, NULL, &vm, err, sizeof err),
        -EINVAL);
    assert_null(vm);
    assert_true(err[0] != '\0');
}

static void test_describe(void **state)
{
    struct fx *f = *state;
    f->vm = create(RAM_SIZE, &f->vd, 1, "mem=8M/s,seed=3", false);
    struct json_object *d = f->vm->ops->describe(f->vm), *v;
    assert_true(json_object_object_get_ex(d, "kind", &v));
    assert_string_equal(json_object_get_string(v), "synth");
    assert_true(json_object_object_get_ex(d, "ram", &v));
    assert_int_equal(json_object_get_int64(v), RAM_SIZE);
    assert_true(json_object_object_get_ex(d, "workload", &v));
    struct synth_workload w;
    char err[256];
    assert_int_equal(synth_workload_from_json(v, &w, err, sizeof err), 0);
    assert_int_equal(w.mem_rate, 8u << 20);
    assert_int_equal(w.seed, 3);
    assert_true(json_object_object_get_ex(d, "disks", &v));
    assert_int_equal(json_object_array_length(v), 1);
    struct json_object *e = json_object_array_get_idx(v, 0), *x;
    assert_true(json_object_object_get_ex(e, "name", &x));
    assert_string_equal(json_object_get_string(x), "vda");
    assert_true(json_object_object_get_ex(e, "size", &x));
    assert_int_equal(json_object_get_int64(x), DISK_SIZE);
    json_object_put(d);
    /* A VM made for an incoming migration is paused and its RAM empty. */
    assert_true(f->vm->paused);
    assert_int_equal(query_int(f->vm, "hb_count"), 0);
    assert_int_equal(f->vm->ops->check(f->vm), 0);
    assert_int_equal(f->vm->nregions, 1);
    assert_int_equal(f->vm->regions[0].gpa, 0);
    assert_int_equal(f->vm->regions[0].size, RAM_SIZE);
    assert_int_equal(vm_ram_end(f->vm), RAM_SIZE);
    assert_int_equal(f->vm->ndisks, 1);
    assert_string_equal(f->vm->disks[0].name, "vda");
}

/* A running guest checks itself clean; damage to a RAM page or a disk block is found. */
static void test_run_check_corrupt(void **state)
{
    struct fx *f = *state;
    f->vm = create(RAM_SIZE, &f->vd, 1, "mem=8M/s,disk=2M/s,ram-fill=1M,disk-fill=1M", true);
    struct vm *vm = f->vm;
    assert_false(vm->paused);
    usleep(200 * 1000);
    assert_int_equal(vm_pause(vm), 0);
    assert_true(vm->paused);
    assert_int_equal(vm->ops->check(vm), 0);
    assert_true(query_int(vm, "hb_count") > 0);
    assert_true(query_int(vm, "ram_writes") > 256); /* the fill and then the workload */
    assert_true(query_int(vm, "disk_writes") > 256);
    assert_true(query_int(vm, "ram_checks") > 0);
    assert_int_equal(query_int(vm, "errors"), 0);
    struct json_object *q = vm->ops->query(vm), *v;
    assert_true(json_object_object_get_ex(q, "running", &v));
    assert_false(json_object_get_boolean(v));
    assert_true(json_object_object_get_ex(q, "first_error", &v));
    assert_string_equal(json_object_get_string(v), "");
    json_object_put(q);

    /* One byte of one written page of the workload area. */
    struct synth *s = (struct synth *)vm;
    uint8_t *ram = vm->regions[0].host, *page = NULL;
    for (uint64_t i = s->area_first; i < s->npages && !page; i++) {
        static const uint8_t zero8[8];
        if (memcmp(ram + i * VM_PAGE_SIZE, zero8, 8) != 0)
            page = ram + i * VM_PAGE_SIZE;
    }
    assert_non_null(page);
    page[100] ^= 0x01;
    int64_t bad = vm->ops->check(vm);
    assert_true(bad >= 1);
    assert_true(query_int(vm, "errors") > 0);
    q = vm->ops->query(vm);
    assert_true(json_object_object_get_ex(q, "first_error", &v));
    assert_non_null(strstr(json_object_get_string(v), "RAM page"));
    json_object_put(q);
    page[100] ^= 0x01;
    assert_int_equal(vm->ops->check(vm), 0);

    /* One byte of one written disk block. */
    uint64_t b = 0;
    while (b < s->dm[0].nblocks && s->dm[0].gen[b] == 0)
        b++;
    assert_true(b < s->dm[0].nblocks);
    uint8_t byte;
    assert_int_equal(bm_disk_pread(f->disk, &byte, 1, b * SYNTH_BLOCK + 200), 0);
    byte ^= 0x80;
    assert_int_equal(bm_disk_pwrite(f->disk, &byte, 1, b * SYNTH_BLOCK + 200, 0), 0);
    assert_int_equal(vm->ops->check(vm), 1);
}

/* ---- saved state ---- */

static void test_save_load(void **state)
{
    struct fx *f = *state;
    f->vm = create(RAM_SIZE, &f->vd, 1, "mem=8M/s,disk=1M/s,ram-fill=1M,disk-fill=256K", true);
    struct vm *a = f->vm;
    wait_for(a, "ram_writes", 256 + 50);
    assert_int_equal(vm_pause(a), 0);
    void *buf = NULL;
    size_t len = 0;
    assert_int_equal(a->ops->save_state(a, &buf, &len), 0);
    assert_non_null(buf);
    assert_true(len > 0);

    /* The destination: same size, same disk, RAM as the source left it. */
    struct vm *b = create(RAM_SIZE, &f->vd, 1, "mem=8M/s,disk=1M/s", false);
    memcpy(b->regions[0].host, a->regions[0].host, RAM_SIZE);
    assert_int_equal(b->ops->load_state(b, buf, len), 0);
    static const char *const same[] = {"hb_count", "ram_writes", "disk_writes",
                                       "errors",   "last_hb_ns", "max_gap_ns"};
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++)
        assert_int_equal(query_int(b, same[i]), query_int(a, same[i]));
    assert_int_equal(b->ops->check(b), 0);
    /* It runs on from there and stays consistent. */
    int64_t hb = query_int(b, "hb_count");
    assert_int_equal(vm_resume(b), 0);
    wait_for(b, "hb_count", hb + 20);
    assert_int_equal(vm_pause(b), 0);
    assert_int_equal(b->ops->check(b), 0);
    assert_int_equal(query_int(b, "errors"), 0);
    assert_true(query_int(b, "ram_writes") > query_int(a, "ram_writes"));
    vm_destroy(b);
    free(buf);
}

static void test_load_bad(void **state)
{
    struct fx *f = *state;
    f->vm = create(RAM_SIZE, NULL, 0, "ram-fill=1M", true);
    struct vm *a = f->vm;
    assert_int_equal(vm_pause(a), 0);
    void *buf = NULL;
    size_t len = 0;
    assert_int_equal(a->ops->save_state(a, &buf, &len), 0);

    struct vm *b = create(RAM_SIZE, NULL, 0, NULL, false);
    /* RAM that does not hold this guest: no superblock. */
    assert_int_equal(b->ops->load_state(b, buf, len), -EINVAL);
    memcpy(b->regions[0].host, a->regions[0].host, RAM_SIZE);
    /* Blobs that are not a saved state. */
    static const char *const junk[] = {
        "", "garbage", "{}", "[1,2,3]", "{\"synth_state\":1}", "\x01\x02\x03\xff"};
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++)
        assert_int_equal(b->ops->load_state(b, junk[i], strlen(junk[i])), -EINVAL);
    assert_int_equal(b->ops->load_state(b, buf, len / 2), -EINVAL);
    assert_int_equal(b->ops->load_state(b, buf, 0), -EINVAL);
    /* Another version of the state. */
    char *other = malloc(len + 1);
    memcpy(other, buf, len);
    other[len] = '\0';
    char *v = strstr(other, "\"synth_state\":1");
    assert_non_null(v);
    v[strlen("\"synth_state\":")] = '2';
    assert_int_equal(b->ops->load_state(b, other, len), -EINVAL);
    free(other);
    /* Too large to be a state. */
    char *huge = malloc(70000);
    memset(huge, ' ', 70000);
    memcpy(huge, buf, len);
    assert_int_equal(b->ops->load_state(b, huge, 70000), -EINVAL);
    free(huge);
    /* A JSON null where the first error's text belongs: loads, and is taken as no text. */
    char *nul = strndup(buf, len);
    struct json_object *js = json_tokener_parse(nul);
    assert_non_null(js);
    json_object_object_add(js, "first_error", NULL);
    const char *with_null = json_object_to_json_string(js);
    assert_int_equal(b->ops->load_state(b, with_null, strlen(with_null)), 0);
    struct json_object *q = b->ops->query(b), *fe;
    assert_true(json_object_object_get_ex(q, "first_error", &fe));
    assert_string_equal(json_object_get_string(fe), "");
    json_object_put(q);
    json_object_put(js);
    free(nul);
    /* And the real one still loads. */
    assert_int_equal(b->ops->load_state(b, buf, len), 0);
    vm_destroy(b);

    /* A guest of another size, even with the same RAM contents at the start, is refused. */
    struct vm *c = create(2 * RAM_SIZE, NULL, 0, NULL, false);
    memcpy(c->regions[0].host, a->regions[0].host, RAM_SIZE);
    assert_int_equal(c->ops->load_state(c, buf, len), -EINVAL);
    vm_destroy(c);
    /* And one with another number of disks. */
    struct vm *d = create(RAM_SIZE, &f->vd, 1, NULL, false);
    memcpy(d->regions[0].host, a->regions[0].host, RAM_SIZE);
    assert_int_equal(d->ops->load_state(d, buf, len), -EINVAL);
    vm_destroy(d);
    free(buf);
}

/* ---- dirty log ---- */

static void test_dirty_log(void **state)
{
    struct fx *f = *state;
    f->vm = create(RAM_SIZE, NULL, 0, "mem=32M/s,hot=2M", true);
    struct vm *vm = f->vm;
    struct synth *s = (struct synth *)vm;
    struct bm_bitmap *out = bm_bitmap_new(RAM_SIZE, VM_PAGE_SIZE);
    assert_non_null(out);

    /* Paused from the start of the log: nothing to harvest. */
    assert_int_equal(vm_pause(vm), 0);
    assert_int_equal(vm->ops->dirty_log_start(vm), 0);
    assert_int_equal(vm->ops->dirty_log_sync(vm, out), 0);
    assert_int_equal(bm_bitmap_count(out), 0);

    int64_t writes = query_int(vm, "ram_writes");
    assert_int_equal(vm_resume(vm), 0);
    wait_for(vm, "ram_writes", writes + 50);
    assert_int_equal(vm_pause(vm), 0);
    assert_int_equal(vm->ops->dirty_log_sync(vm, out), 0);
    uint64_t n = bm_bitmap_count(out);
    assert_true(n >= 2);
    /* Every written page is in the log, and so is the generation table that counts it. */
    assert_true(bm_bitmap_test(out, 1));
    uint8_t *ram = vm->regions[0].host;
    for (uint64_t p = bm_bitmap_next_set(out, s->area_first); p != UINT64_MAX;
         p = bm_bitmap_next_set(out, p + 1)) {
        assert_true(s->page_gen[p] > 0);
        static const uint8_t zero8[8];
        assert_memory_not_equal(ram + p * VM_PAGE_SIZE, zero8, 8);
    }
    assert_false(bm_bitmap_test(out, 0)); /* the superblock is written once, at boot */

    /* The harvest cleared the log: paused, a second one adds nothing. */
    struct bm_bitmap *again = bm_bitmap_new(RAM_SIZE, VM_PAGE_SIZE);
    assert_int_equal(vm->ops->dirty_log_sync(vm, again), 0);
    assert_int_equal(bm_bitmap_count(again), 0);
    /* Sync merges into what the caller already has. */
    bm_bitmap_set_bits(again, 0, 1);
    assert_int_equal(vm_resume(vm), 0);
    writes = query_int(vm, "ram_writes");
    wait_for(vm, "ram_writes", writes + 10);
    assert_int_equal(vm_pause(vm), 0);
    assert_int_equal(vm->ops->dirty_log_sync(vm, again), 0);
    assert_true(bm_bitmap_test(again, 0));
    assert_true(bm_bitmap_count(again) >= 2);
    /* Restarting the log throws away what was not harvested. */
    assert_int_equal(vm_resume(vm), 0);
    writes = query_int(vm, "ram_writes");
    wait_for(vm, "ram_writes", writes + 10);
    assert_int_equal(vm_pause(vm), 0);
    assert_int_equal(vm->ops->dirty_log_start(vm), 0);
    bm_bitmap_clear_range(again, 0, RAM_SIZE);
    assert_int_equal(vm->ops->dirty_log_sync(vm, again), 0);
    assert_int_equal(bm_bitmap_count(again), 0);
    /* A bitmap of another geometry is refused. */
    struct bm_bitmap *coarse = bm_bitmap_new(RAM_SIZE, 65536);
    assert_true(vm->ops->dirty_log_sync(vm, coarse) < 0);
    vm->ops->dirty_log_stop(vm);
    bm_bitmap_free(coarse);
    bm_bitmap_free(again);
    bm_bitmap_free(out);
}

/* ---- pause and resume ---- */

static void test_pause_resume(void **state)
{
    struct fx *f = *state;
    f->vm = create(RAM_SIZE, &f->vd, 1, "mem=4M/s,disk=1M/s,ram-fill=256K,disk-fill=256K", true);
    struct vm *vm = f->vm;
    /* A gap needs a heartbeat before the pause to be measured from. */
    wait_for(vm, "hb_count", 2);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(vm_pause(vm), 0);
        assert_int_equal(vm_pause(vm), 0); /* pausing a paused guest is harmless */
        assert_true(vm->paused);
        int64_t hb = query_int(vm, "hb_count");
        int64_t rw = query_int(vm, "ram_writes");
        usleep(10 * 1000);
        /* Paused means stopped: no heartbeat, no write. */
        assert_int_equal(query_int(vm, "hb_count"), hb);
        assert_int_equal(query_int(vm, "ram_writes"), rw);
        assert_int_equal(query_int(vm, "running"), 0);
        assert_int_equal(vm_resume(vm), 0);
        assert_false(vm->paused);
        assert_int_equal(query_int(vm, "running"), 1);
        wait_for(vm, "hb_count", hb + 3);
        /* The guest saw the pause as a gap in its heartbeat. */
        assert_true(query_int(vm, "last_resume_gap_ns") >= 10 * 1000 * 1000);
    }
    assert_int_equal(vm_resume(vm), 0); /* resuming a running guest is harmless */
    /* Throttling is clamped and reported. */
    vm->ops->throttle(vm, 150);
    assert_int_equal(query_int(vm, "throttle"), 99);
    vm->ops->throttle(vm, 0);
    assert_int_equal(query_int(vm, "throttle"), 0);
    assert_int_equal(vm_pause(vm), 0);
    assert_int_equal(vm->ops->check(vm), 0);
    assert_int_equal(query_int(vm, "errors"), 0);

    /* A guest that never ran pauses at once, and starts on resume. */
    struct vm *idle = create(RAM_SIZE, NULL, 0, NULL, false);
    assert_int_equal(vm_pause(idle), 0);
    assert_int_equal(vm_resume(idle), 0);
    wait_for(idle, "hb_count", 1);
    assert_int_equal(vm_pause(idle), 0);
    vm_destroy(idle);
    /* Destroying a running guest stops it. */
    struct vm *running = create(RAM_SIZE, NULL, 0, "mem=4M/s", true);
    vm_destroy(running);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_workload_parse_good),
        cmocka_unit_test(test_workload_parse_bad),
        cmocka_unit_test(test_workload_json_round_trip),
        cmocka_unit_test(test_workload_json_bad),
        cmocka_unit_test_setup_teardown(test_create_too_small, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_describe, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_run_check_corrupt, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_save_load, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_load_bad, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_dirty_log, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_pause_resume, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
