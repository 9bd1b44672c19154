/* test-qemu-parse.c: unit tests for vm/qemu/qemu-parse: a QEMU's disks from query replies
 * captured from QEMU 7.2 (tests/unit/data/qemu72-*.json), altered to reach every refusal, and
 * /proc/PID/cmdline split into an argv. */
#include <config.h>

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vm/qemu/cmdline.h"
#include "vm/qemu/qemu.h"

/*
 * qemu72-drives.json: query-block, query-blockstats and query-named-block-nodes {flat} of
 *   -drive file=r.raw,format=raw,if=virtio
 *   -drive if=none,id=d0,file=top.qcow2,format=qcow2 -device virtio-blk-pci,drive=d0
 *     (top.qcow2 over the backing file base.raw)
 *   -drive if=none,id=cd,media=cdrom -device ide-cd,drive=cd,bus=ide.0
 * qemu72-nbd.json: the same of
 *   -blockdev driver=file,filename=top.qcow2,node-name=f1 -blockdev driver=qcow2,file=f1,
 *     node-name=n1 -device virtio-blk-pci,drive=n1,id=vd1
 *   -drive if=none,id=d2,file=nbd+unix:///?socket=...,format=raw -device ...,id=vd2
 */
static struct json_object *load(const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", TEST_DATA_DIR, name);
    struct json_object *o = json_object_from_file(path);
    assert_non_null(o);
    return o;
}

static struct json_object *part(struct json_object *o, const char *key)
{
    struct json_object *v;
    assert_true(json_object_object_get_ex(o, key, &v));
    return v;
}

static int parse(struct json_object *o, struct qemu_disk_info **d, unsigned *n, char *err,
                 size_t errlen)
{
    err[0] = '\0';
    return qemu_disks_parse(part(o, "query-block"), part(o, "query-blockstats"),
                            part(o, "query-named-block-nodes"), d, n, err, errlen);
}

/* The entry of reply (a part of o) whose key is name. */
static struct json_object *find(struct json_object *o, const char *reply, const char *key,
                                const char *name)
{
    struct json_object *a = part(o, reply);
    for (size_t i = 0; i < json_object_array_length(a); i++) {
        struct json_object *e = json_object_array_get_idx(a, i);
        if (strcmp(json_object_get_string(part(e, key)), name) == 0)
            return e;
    }
    fail_msg("no %s %s in %s", key, name, reply);
    return NULL;
}

static struct json_object *named_node(struct json_object *o, const char *name)
{
    return find(o, "query-named-block-nodes", "node-name", name);
}

static struct json_object *drive(struct json_object *o, const char *device)
{
    return find(o, "query-block", "device", device);
}

static void test_drives(void **state)
{
    (void)state;
    struct json_object *o = load("qemu72-drives.json");
    struct qemu_disk_info *d;
    unsigned n;
    char err[256];
    assert_int_equal(parse(o, &d, &n, err, sizeof err), 0);
    assert_int_equal(n, 2); /* the empty cdrom is skipped */
    assert_string_equal(d[0].drive, "virtio0");
    assert_string_equal(d[0].device, "/machine/peripheral-anon/device[2]/virtio-backend");
    assert_string_equal(d[0].node, "#block149");
    assert_string_equal(d[0].format, "raw");
    assert_string_equal(d[0].file, "/var/lib/images/r.raw");
    assert_int_equal(d[0].size, 4194304);
    assert_false(d[0].backing);
    assert_false(d[0].readonly);
    assert_string_equal(d[1].drive, "d0");
    assert_string_equal(d[1].node, "#block338");
    assert_string_equal(d[1].format, "qcow2");
    assert_int_equal(d[1].size, 16777216);
    assert_true(d[1].backing);
    struct json_object *j = qemu_disks_json(d, n);
    assert_string_equal(
        json_object_to_json_string_ext(json_object_array_get_idx(j, 1), JSON_C_TO_STRING_PLAIN),
        "{\"device\":\"\\/machine\\/peripheral-anon\\/device[0]\\/virtio-backend\","
        "\"drive\":\"d0\",\"node\":\"#block338\",\"format\":\"qcow2\","
        "\"file\":\"\\/var\\/lib\\/images\\/top.qcow2\",\"size\":16777216,"
        "\"backing\":true,\"readonly\":false}");
    json_object_put(j);
    free(d);
    json_object_put(o);
}

/* Parse o, expecting the error r with want in its message. */
static void refused(struct json_object *o, int r, const char *want)
{
    struct qemu_disk_info *d = (void *)1;
    unsigned n = 7;
    char err[256];
    assert_int_equal(parse(o, &d, &n, err, sizeof err), r);
    assert_null(d);
    assert_int_equal(n, 0);
    if (!strstr(err, want))
        fail_msg("'%s' not in '%s'", want, err);
    json_object_put(o);
}

static void test_nbd_refused(void **state)
{
    (void)state;
    refused(load("qemu72-nbd.json"), -ENOTSUP,
            "drive d2: node #block233 uses the network "
            "protocol nbd");
}

static void test_blockdev_only(void **state)
{
    (void)state;
    /* Without the NBD drive: the -blockdev disk has no drive name, and its device path. */
    struct json_object *o = load("qemu72-nbd.json");
    json_object_array_del_idx(part(o, "query-block"), 0, 1);
    struct qemu_disk_info *d;
    unsigned n;
    char err[256];
    assert_int_equal(parse(o, &d, &n, err, sizeof err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(d[0].drive, "");
    assert_string_equal(d[0].node, "n1");
    assert_string_equal(d[0].device, "/machine/peripheral/vd1/virtio-backend");
    assert_true(d[0].backing);
    free(d);
    json_object_put(o);
}

static void set_str(struct json_object *o, const char *key, const char *v)
{
    json_object_object_add(o, key, json_object_new_string(v));
}

/* One driver changed in the captured replies, and the refusal it must bring. */
static void test_bad_drivers(void **state)
{
    (void)state;
    static const struct {
        const char *node, *drv, *want;
    } cases[] = {
        /* The qcow2's file node, and its backing file's, on the network. */
        {"#block264", "http", "node #block264 uses the network protocol http"},
        {"#block435", "ssh", "node #block435 uses the network protocol ssh"},
        {"#block338", "throttle", "node #block338 has the driver throttle, which blkmig does"},
        {"#block023", "null-co", "drive virtio0: node #block023 has the driver null-co"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct json_object *o = load("qemu72-drives.json");
        set_str(named_node(o, cases[i].node), "drv", cases[i].drv);
        refused(o, -ENOTSUP, cases[i].want);
    }
}

static void test_refusals(void **state)
{
    (void)state;
    struct json_object *o = load("qemu72-drives.json");
    json_object_object_del(part(drive(o, "d0"), "inserted"), "node-name");
    refused(o, -ENOTSUP, "drive d0: QEMU reports no node name");

    o = load("qemu72-drives.json");
    set_str(part(drive(o, "d0"), "inserted"), "drv", "nbd");
    refused(o, -ENOTSUP, "drive d0: the network protocol nbd");

    o = load("qemu72-drives.json");
    json_object_object_del(json_object_array_get_idx(part(o, "query-blockstats"), 0), "parent");
    refused(o, -ENOTSUP, "drive virtio0: cannot find the protocol node under #block149");

    o = load("qemu72-drives.json");
    json_object_array_del_idx(part(o, "query-named-block-nodes"), 0, 6);
    refused(o, -ENOTSUP, "has no name or driver QEMU reports");

    o = load("qemu72-drives.json");
    json_object_array_del_idx(part(o, "query-blockstats"), 0, 3);
    refused(o, -ENOTSUP, "drive virtio0: cannot find the nodes under #block149");
}

static void test_bad_shapes(void **state)
{
    (void)state;
    struct json_object *o = load("qemu72-drives.json");
    json_object_object_add(part(part(drive(o, "d0"), "inserted"), "image"), "virtual-size",
                           json_object_new_string("16M"));
    refused(o, -EBADMSG, "drive d0: query-block lacks");

    o = load("qemu72-drives.json");
    json_object_object_del(drive(o, "d0"), "device");
    refused(o, -EBADMSG, "without \"device\"");

    o = load("qemu72-drives.json");
    json_object_object_add(o, "query-blockstats", json_object_new_object());
    refused(o, -EBADMSG, "must return arrays");

    o = load("qemu72-drives.json");
    struct json_object *a = part(o, "query-block");
    for (int i = 0; i < QEMU_VM_MAX_DISKS; i++)
        json_object_array_add(a, json_object_get(json_object_array_get_idx(a, 2)));
    refused(o, -E2BIG, "at most");

    /* A chain that loops (a backing entry that is its own parent) ends at the depth bound. */
    o = load("qemu72-drives.json");
    struct json_object *top = json_object_array_get_idx(part(o, "query-blockstats"), 1);
    struct json_object *loop = json_object_new_object();
    set_str(loop, "node-name", "#block338");
    struct json_object *cur = loop;
    for (int i = 0; i < 70; i++) {
        struct json_object *next = json_object_new_object();
        set_str(next, "node-name", "#block338");
        json_object_object_add(cur, "parent", next);
        cur = next;
    }
    json_object_object_add(top, "parent", loop);
    refused(o, -ENOTSUP, "a chain of more than 64 nodes");
}

static void test_empty(void **state)
{
    (void)state;
    struct json_object *e = json_object_new_array();
    struct qemu_disk_info *d = (void *)1;
    unsigned n = 3;
    char err[64];
    assert_int_equal(qemu_disks_parse(e, e, e, &d, &n, err, sizeof err), 0);
    assert_null(d);
    assert_int_equal(n, 0);
    json_object_put(e);
}

static void test_proc_cmdline(void **state)
{
    (void)state;
    static const char line[] = "qemu-system-x86_64\0-m\0"
                               "64\0\0-name\0a b\0";
    int argc;
    char **argv;
    assert_int_equal(qemu_proc_cmdline_split(line, sizeof line - 1, &argc, &argv), 0);
    assert_int_equal(argc, 6);
    assert_string_equal(argv[0], "qemu-system-x86_64");
    assert_string_equal(argv[2], "64");
    assert_string_equal(argv[3], ""); /* an empty argument stays one */
    assert_string_equal(argv[5], "a b");
    assert_null(argv[6]);
    free(argv);
    assert_int_equal(qemu_proc_cmdline_split("", 0, &argc, &argv), -EINVAL);
    assert_int_equal(qemu_proc_cmdline_split("qemu", 4, &argc, &argv), -EINVAL);
    assert_null(argv);
    size_t big = QEMU_CMDLINE_MAX_ARGS + 1;
    char *many = calloc(big, 2);
    assert_non_null(many);
    memset(many, 0, big * 2);
    for (size_t i = 0; i < big; i++)
        many[2 * i] = 'x';
    assert_int_equal(qemu_proc_cmdline_split(many, big * 2, &argc, &argv), -E2BIG);
    free(many);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_drives),        cmocka_unit_test(test_nbd_refused),
        cmocka_unit_test(test_blockdev_only), cmocka_unit_test(test_bad_drivers),
        cmocka_unit_test(test_refusals),      cmocka_unit_test(test_bad_shapes),
        cmocka_unit_test(test_empty),         cmocka_unit_test(test_proc_cmdline),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
