/* test-qemu-cmdline.c: unit tests for vm/qemu/cmdline (QEMU command lines parsed, refused and
 * rewritten for the source and the destination). */
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

#include "common/log.h"
#include "vm/qemu/cmdline.h"

#define Q "qemu-system-x86_64"

static char err[QEMU_CMDLINE_ERRLEN];

static int argc_of(const char *const *argv)
{
    int n = 0;
    while (argv[n])
        n++;
    return n;
}

static struct qemu_cmdline *parse_ok(const char *const *argv)
{
    struct qemu_cmdline *cl = NULL;
    int r = qemu_cmdline_parse(argc_of(argv), argv, &cl, err, sizeof err);
    if (r != 0)
        fail_msg("parse: %d %s", r, err);
    assert_non_null(cl);
    return cl;
}

/* The parse fails with rc and an error text containing what. */
static void parse_fails(const char *const *argv, int rc, const char *what)
{
    struct qemu_cmdline *cl = (void *)1;
    assert_int_equal(qemu_cmdline_parse(argc_of(argv), argv, &cl, err, sizeof err), rc);
    assert_null(cl);
    if (!strstr(err, what))
        fail_msg("error \"%s\" does not name \"%s\"", err, what);
}

static void expect_argv(char **got, const char *const *want)
{
    size_t i = 0;
    for (; want[i]; i++) {
        if (!got[i])
            fail_msg("argv ends at %zu, want %s", i, want[i]);
        if (strcmp(got[i], want[i]) != 0)
            fail_msg("argv[%zu] is \"%s\", want \"%s\"", i, got[i], want[i]);
    }
    if (got[i])
        fail_msg("argv has more: argv[%zu] \"%s\"", i, got[i]);
}

static const struct qemu_disk *disk(const struct qemu_cmdline *cl, const char *name)
{
    for (size_t i = 0; i < cl->ndisks; i++)
        if (strcmp(cl->disks[i].name, name) == 0)
            return &cl->disks[i];
    fail_msg("no disk %s", name);
    return NULL;
}

/* A libvirt-style line: -blockdev in JSON, file node under a format node, -device id. */
static const char *const libvirt_line[] = {
    Q,
    "-name",
    "guest=vm1,debug-threads=on",
    "-S",
    "-machine",
    "pc-q35-7.2,usb=off,dump-guest-core=off",
    "-accel",
    "kvm",
    "-cpu",
    "host,migratable=on",
    "-m",
    "1024",
    "-chardev",
    "socket,id=charmonitor,fd=23,server=on,wait=off",
    "-mon",
    "chardev=charmonitor,id=monitor,mode=control",
    "-blockdev",
    "{\"driver\":\"file\",\"filename\":\"/var/lib/libvirt/images/vm1.qcow2\",\"node-name\":"
    "\"libvirt-1-storage\",\"auto-read-only\":true,\"discard\":\"unmap\"}",
    "-blockdev",
    "{\"node-name\":\"libvirt-1-format\",\"read-only\":false,\"driver\":\"qcow2\",\"file\":"
    "\"libvirt-1-storage\",\"backing\":null}",
    "-device",
    "virtio-blk-pci,bus=pci.3,addr=0x0,drive=libvirt-1-format,id=virtio-disk0,"
    "bootindex=1",
    "-chardev",
    "pty,id=charserial0",
    "-device",
    "isa-serial,chardev=charserial0,id=serial0",
    "-msg",
    "timestamp=on",
    NULL};

static void test_libvirt(void **state)
{
    struct qemu_cmdline *cl = parse_ok(libvirt_line);
    assert_int_equal(cl->ndisks, 1);
    const struct qemu_disk *d = disk(cl, "libvirt-1-format");
    assert_int_equal(d->kind, QEMU_DISK_BLOCKDEV);
    assert_string_equal(d->file, "/var/lib/libvirt/images/vm1.qcow2");
    assert_string_equal(d->format, "qcow2");
    assert_string_equal(d->device_id, "virtio-disk0");
    assert_string_equal(d->device_driver, "virtio-blk-pci");
    assert_false(d->readonly);
    assert_string_equal(cl->machine, "pc-q35-7.2");
    assert_string_equal(cl->cpu, "host,migratable=on");
    assert_true(cl->freeze);
    assert_int_equal(cl->nmonitors, 1);
    assert_int_equal(cl->monitors[0].kind, QEMU_MON_MON);
    assert_string_equal(cl->monitors[0].chardev, "charmonitor");

    const struct qemu_cmdline_image img[] = {{"libvirt-1-format", "/dst/vm1,new.raw", "raw"}};
    char **argv;
    assert_int_equal(
        qemu_cmdline_dest_argv(cl, img, 1, "/run/b", "/run/b/qmp.sock", &argv, err, sizeof err), 0);
    /* The monitor and its own chardev go, -S goes, the JSON keeps its form and order. */
    const char *const want[] = {
        Q,
        "-name",
        "guest=vm1,debug-threads=on",
        "-machine",
        "pc-q35-7.2,usb=off,dump-guest-core=off",
        "-accel",
        "kvm",
        "-cpu",
        "host,migratable=on",
        "-m",
        "1024",
        "-blockdev",
        "{\"driver\":\"file\",\"filename\":\"/dst/vm1,new.raw\",\"node-name\":"
        "\"libvirt-1-storage\",\"auto-read-only\":true,\"discard\":\"unmap\"}",
        "-blockdev",
        "{\"node-name\":\"libvirt-1-format\",\"read-only\":false,\"driver\":\"raw\",\"file\":"
        "\"libvirt-1-storage\",\"backing\":null}",
        "-device",
        "virtio-blk-pci,bus=pci.3,addr=0x0,drive=libvirt-1-format,id=virtio-disk0,"
        "bootindex=1",
        "-chardev",
        "pty,id=charserial0",
        "-device",
        "isa-serial,chardev=charserial0,id=serial0",
        "-msg",
        "timestamp=on",
        "-qmp",
        "unix:/run/b/qmp.sock,server=on,wait=off",
        "-incoming",
        "defer",
        NULL};
    expect_argv(argv, want);
    free(argv);
    qemu_cmdline_free(cl);
}

/* Hand-written: two -drive disks (one unnamed), a cdrom, a chardev socket on the serial
 * port, a file chardev, -daemonize and -pidfile, the user's QMP socket. */
static const char *const hand_line[] = {
    Q,
    "-M",
    "q35",
    "-m",
    "512",
    "-drive",
    "file=disk.qcow2,if=virtio",
    "-drive",
    "file=/img/data,,v2.raw,format=raw,if=none,id=data,cache=none,aio=native",
    "-device",
    "virtio-blk-pci,drive=data,id=vdb",
    "-cdrom",
    "/iso/install.iso",
    "-chardev",
    "socket,id=ser0,path=/run/x.sock,server=on,wait=off",
    "-serial",
    "chardev:ser0",
    "-chardev",
    "file,id=log0,path=/var/log/vm/x.sock",
    "-device",
    "virtconsole,chardev=log0",
    "-qmp",
    "unix:/run/user-qmp.sock,server,nowait",
    "-daemonize",
    "-pidfile",
    "/run/vm.pid",
    "-display",
    "none",
    NULL};

static void test_hand_written(void **state)
{
    struct qemu_cmdline *cl = parse_ok(hand_line);
    assert_int_equal(cl->ndisks, 3);
    const struct qemu_disk *d0 = disk(cl, "drive0");
    assert_string_equal(d0->file, "disk.qcow2");
    assert_null(d0->format);
    assert_string_equal(d0->iface, "virtio");
    const struct qemu_disk *d1 = disk(cl, "data");
    assert_string_equal(d1->file, "/img/data,v2.raw"); /* ",," read as one comma */
    assert_string_equal(d1->format, "raw");
    assert_string_equal(d1->cache, "none");
    assert_string_equal(d1->aio, "native");
    assert_string_equal(d1->device_id, "vdb");
    const struct qemu_disk *cd = disk(cl, "cdrom");
    assert_true(cd->cdrom && cd->readonly);
    assert_int_equal(cd->kind, QEMU_DISK_LEGACY);
    assert_true(cl->daemonize);
    assert_string_equal(cl->pidfile, "/run/vm.pid");
    assert_string_equal(cl->machine, "q35");
    assert_int_equal(cl->nmonitors, 1);
    assert_string_equal(cl->monitors[0].socket_path, "/run/user-qmp.sock");
    assert_int_equal(cl->npaths, 2);
    assert_int_equal(cl->paths[0].kind, QEMU_PATH_SOCKET);
    assert_string_equal(cl->paths[0].path, "/run/x.sock");
    assert_int_equal(cl->paths[1].kind, QEMU_PATH_FILE);

    const struct qemu_cmdline_image img[] = {{"drive0", "/new/d0.qcow2", "qcow2"},
                                             {"data", "/new/da,ta.raw", NULL}};
    char **argv;
    assert_int_equal(
        qemu_cmdline_dest_argv(cl, img, 2, "/run/dst/", "/run/dst/qmp", &argv, err, sizeof err), 0);
    /* Both chardev paths are called x.sock: the second becomes x-1.sock. The cdrom has no
     * image and keeps its file. */
    const char *const want[] = {
        Q,
        "-M",
        "q35",
        "-m",
        "512",
        "-drive",
        "file=/new/d0.qcow2,if=virtio,format=qcow2",
        "-drive",
        "file=/new/da,,ta.raw,format=raw,if=none,id=data,cache=none,aio=native",
        "-device",
        "virtio-blk-pci,drive=data,id=vdb",
        "-cdrom",
        "/iso/install.iso",
        "-chardev",
        "socket,id=ser0,path=/run/dst/x.sock,server=on,wait=off",
        "-serial",
        "chardev:ser0",
        "-chardev",
        "file,id=log0,path=/run/dst/x-1.sock",
        "-device",
        "virtconsole,chardev=log0",
        "-display",
        "none",
        "-qmp",
        "unix:/run/dst/qmp,server=on,wait=off",
        "-incoming",
        "defer",
        NULL};
    expect_argv(argv, want);
    free(argv);

    /* The source: -daemonize goes, the user's QMP stays, blkmig's is added. */
    assert_int_equal(qemu_cmdline_source_argv(cl, "/run/src/q,mp", &argv, err, sizeof err), 0);
    size_t n = 0;
    while (argv[n])
        n++;
    assert_int_equal(n, (size_t)argc_of(hand_line) - 1 + 2);
    assert_string_equal(argv[n - 2], "-qmp");
    assert_string_equal(argv[n - 1], "unix:/run/src/q,,mp,server=on,wait=off");
    for (size_t i = 0; i < n; i++)
        assert_string_not_equal(argv[i], "-daemonize");
    assert_string_equal(argv[22], "unix:/run/user-qmp.sock,server,nowait");
    free(argv);
    qemu_cmdline_free(cl);
}

/* -blockdev key=value with an inline file child, -serial file: and unix: forms, -incoming. */
static void test_keyval_blockdev(void **state)
{
    const char *const line[] = {Q,
                                "--blockdev",
                                "qcow2,node-name=sys,file.driver=file,file.filename=/a/sys.qcow2",
                                "-device",
                                "scsi-hd,drive=sys,id=sd0",
                                "-serial",
                                "file:/var/log/console.log",
                                "-parallel",
                                "unix:/tmp/par,,1.sock,server=on,wait=off",
                                "-incoming",
                                "tcp:0:4444",
                                "-D",
                                "/tmp/qemu.log",
                                NULL};
    struct qemu_cmdline *cl = parse_ok(line);
    const struct qemu_disk *d = disk(cl, "sys");
    assert_string_equal(d->file, "/a/sys.qcow2");
    assert_string_equal(d->format, "qcow2");
    assert_string_equal(d->device_id, "sd0");
    assert_string_equal(cl->incoming, "tcp:0:4444");
    assert_int_equal(cl->npaths, 3);
    assert_string_equal(cl->paths[1].path, "/tmp/par,1.sock");

    const struct qemu_cmdline_image img[] = {{"sys", "/b/sys.qcow2", NULL}};
    char **argv;
    assert_int_equal(qemu_cmdline_dest_argv(cl, img, 1, "/r", "/r/qmp", &argv, err, sizeof err), 0);
    const char *const want[] = {
        Q,
        "-blockdev",
        "driver=qcow2,node-name=sys,file.driver=file,file.filename=/b/sys.qcow2",
        "-device",
        "scsi-hd,drive=sys,id=sd0",
        "-serial",
        "file:/r/console.log",
        "-parallel",
        "unix:/r/par,,1.sock,server=on,wait=off",
        "-D",
        "/r/qemu.log",
        "-qmp",
        "unix:/r/qmp,server=on,wait=off",
        "-incoming",
        "defer",
        NULL};
    expect_argv(argv, want);
    free(argv);
    assert_int_equal(qemu_cmdline_source_argv(cl, "/r/qmp", &argv, err, sizeof err), -EINVAL);
    assert_null(argv);
    assert_non_null(strstr(err, "-incoming"));
    qemu_cmdline_free(cl);
}

static void test_refusals(void **state)
{
    parse_fails((const char *const[]){Q, "-drive", "file=nbd:host:10809,if=virtio", NULL}, -ENOTSUP,
                "nbd:host");
    parse_fails((const char *const[]){Q, "-drive", "file=iscsi://h/iqn/0", NULL}, -ENOTSUP,
                "-drive");
    parse_fails((const char *const[]){Q, "-drive", "file.driver=rbd,file.pool=p", NULL}, -ENOTSUP,
                "network block driver rbd");
    parse_fails((const char *const[]){Q, "-blockdev",
                                      "{\"driver\":\"nbd\",\"node-name\":\"n\",\"server\":{}}",
                                      NULL},
                -ENOTSUP, "network block driver nbd");
    parse_fails((const char *const[]){Q, "-hda", "a.img", "-snapshot", NULL}, -ENOTSUP,
                "-snapshot");
    parse_fails((const char *const[]){Q, "-drive", "file=a.img,snapshot=on", NULL}, -ENOTSUP,
                "snapshot=on");
    parse_fails((const char *const[]){Q, "-m", "1G", "-frobnicate", NULL}, -EINVAL, "-frobnicate");
    parse_fails((const char *const[]){Q, "-m", "1G", "-drive", NULL}, -EINVAL,
                "-drive needs an argument");
    parse_fails((const char *const[]){Q, "-drive", "if=virtio", NULL}, -EINVAL, "without a file");
    parse_fails((const char *const[]){Q, "-drive", "file=a,id=x", "-drive", "file=b,id=x", NULL},
                -EINVAL, "duplicate drive id or node-name x");
    parse_fails((const char *const[]){Q, "-drive", "file=a,id=x", "-blockdev",
                                      "driver=file,node-name=x,filename=b", NULL},
                -EINVAL, "duplicate");
    parse_fails((const char *const[]){Q, "-chardev", "null,id=c", "-chardev", "null,id=c", NULL},
                -EINVAL, "duplicate -chardev id c");
    parse_fails((const char *const[]){Q, "-device", "e1000,id=n", "-device", "e1000,id=n", NULL},
                -EINVAL, "duplicate -device id n");
    parse_fails((const char *const[]){Q, "disk.img", NULL}, -ENOTSUP, "positional");
    parse_fails((const char *const[]){Q, "-readconfig", "vm.cfg", NULL}, -ENOTSUP, "-readconfig");
    parse_fails((const char *const[]){Q, "-blockdev",
                                      "{\"driver\":\"qcow2\",\"node-name\":\"t\",\"file\":"
                                      "{\"driver\":\"file\",\"filename\":\"/t\"},\"backing\":"
                                      "\"b\"}",
                                      NULL},
                -ENOTSUP, "backing");
    parse_fails((const char *const[]){Q, "-blockdev", "{\"driver\":", NULL}, -EINVAL, "JSON");
    parse_fails((const char *const[]){Q, "-blockdev",
                                      "{\"driver\":\"file\",\"node-name\":\"a\",\"filename\":"
                                      "\"/a\"} junk",
                                      NULL},
                -EINVAL, "one JSON object");
    parse_fails((const char *const[]){Q, "-blockdev", "driver=qcow2,node-name=a,file=nope", NULL},
                -EINVAL, "file names no node");
    parse_fails((const char *const[]){Q, "-drive", ",file=a", NULL}, -EINVAL, "an empty key");
    parse_fails((const char *const[]){Q, "-object", "secret,id=s,data=x", "-object",
                                      "{\"qom-type\":\"secret\",\"id\":\"s\",\"data\":\"y\"}",
                                      NULL},
                -EINVAL, "duplicate -object id s");
    parse_fails((const char *const[]){NULL}, -EINVAL, "binary");
}

static void test_bounds(void **state)
{
    const char **argv = calloc(QEMU_CMDLINE_MAX_ARGS + 2, sizeof *argv);
    assert_non_null(argv);
    argv[0] = Q;
    for (int i = 1; i <= QEMU_CMDLINE_MAX_ARGS; i++)
        argv[i] = "-nodefaults";
    parse_fails(argv, -E2BIG, "arguments");
    char *big = malloc(QEMU_CMDLINE_MAX_ARG + 2);
    assert_non_null(big);
    memset(big, 'a', QEMU_CMDLINE_MAX_ARG + 1);
    big[QEMU_CMDLINE_MAX_ARG + 1] = '\0';
    argv[1] = "-append";
    argv[2] = big;
    argv[3] = NULL;
    parse_fails(argv, -E2BIG, "longer");
    free(big);
    free(argv);
}

/* The destination rewrite's own refusals: missing or unknown images, a socket path too long
 * for sun_path. */
static void test_dest_refusals(void **state)
{
    struct qemu_cmdline *cl = parse_ok(hand_line);
    char **argv;
    const struct qemu_cmdline_image one[] = {{"data", "/n/data", NULL}};
    assert_int_equal(qemu_cmdline_dest_argv(cl, one, 1, "/r", "/r/q", &argv, err, sizeof err),
                     -ENOENT);
    assert_null(argv);
    assert_non_null(strstr(err, "drive0"));
    const struct qemu_cmdline_image bad[] = {
        {"drive0", "/n/0", NULL}, {"data", "/n/1", NULL}, {"vdz", "/n/2", NULL}};
    assert_int_equal(qemu_cmdline_dest_argv(cl, bad, 3, "/r", "/r/q", &argv, err, sizeof err),
                     -EINVAL);
    assert_non_null(strstr(err, "vdz"));
    char longdir[200];
    memset(longdir, 'd', sizeof longdir - 1);
    longdir[0] = '/';
    longdir[sizeof longdir - 1] = '\0';
    assert_int_equal(qemu_cmdline_dest_argv(cl, bad, 2, longdir, "/r/q", &argv, err, sizeof err),
                     -ENAMETOOLONG);
    assert_non_null(strstr(err, "chardev ser0"));
    qemu_cmdline_free(cl);
}

/* Legacy disks: kept as is without a format, written as their -drive with one; a bare file
 * node takes a raw image only; a monitor's chardev shared with a device stays. */
static void test_dest_forms(void **state)
{
    const char *const line[] = {Q,
                                "-hda",
                                "/a/x,y.img",
                                "-fdb",
                                "/a/f.img",
                                "-blockdev",
                                "driver=file,node-name=bare,filename=/a/bare.img",
                                "-chardev",
                                "socket,id=mux,path=/run/mux.sock,server=on,wait=off,mux=on",
                                "-mon",
                                "chardev=mux",
                                "-device",
                                "virtserialport,chardev=mux",
                                NULL};
    struct qemu_cmdline *cl = parse_ok(line);
    char **argv;
    const struct qemu_cmdline_image img[] = {
        {"hda", "/b/x,y.img", NULL}, {"fdb", "/b/f,2.qcow2", "qcow2"}, {"bare", "/b/bare", NULL}};
    assert_int_equal(
        qemu_cmdline_dest_argv(cl, img, 3, "/r", "/r/mux.sock", &argv, err, sizeof err), 0);
    const char *const want[] = {Q,
                                "-hda",
                                "/b/x,y.img",
                                "-drive",
                                "file=/b/f,,2.qcow2,format=qcow2,if=floppy,index=1",
                                "-blockdev",
                                "driver=file,node-name=bare,filename=/b/bare",
                                "-chardev",
                                "socket,id=mux,path=/r/mux-1.sock,server=on,wait=off,mux=on",
                                "-device",
                                "virtserialport,chardev=mux",
                                "-qmp",
                                "unix:/r/mux.sock,server=on,wait=off",
                                "-incoming",
                                "defer",
                                NULL};
    expect_argv(argv, want);
    free(argv);
    const struct qemu_cmdline_image q[] = {
        {"hda", "/b/x", NULL}, {"fdb", "/b/f", NULL}, {"bare", "/b/bare", "qcow2"}};
    assert_int_equal(qemu_cmdline_dest_argv(cl, q, 3, "/r", "/r/q", &argv, err, sizeof err),
                     -ENOTSUP);
    assert_non_null(strstr(err, "bare"));
    qemu_cmdline_free(cl);
}

/* An empty cdrom is kept (and needs no image), an empty file= is no file; a device may name
 * a drive by its node-name. */
static void test_drive_edges(void **state)
{
    const char *const line[] = {Q,
                                "-drive",
                                "if=ide,media=cdrom,id=cd",
                                "-drive",
                                "file=/a/r.img,id=r,node-name=rn,readonly=on",
                                "-device",
                                "virtio-blk-pci,drive=rn,id=vr",
                                NULL};
    struct qemu_cmdline *cl = parse_ok(line);
    assert_null(disk(cl, "cd")->file);
    assert_true(disk(cl, "cd")->cdrom);
    assert_true(disk(cl, "r")->readonly);
    assert_string_equal(disk(cl, "r")->device_id, "vr");
    char **argv;
    assert_int_equal(qemu_cmdline_dest_argv(cl, NULL, 0, "/r", "/r/q", &argv, err, sizeof err), 0);
    assert_string_equal(argv[2], "if=ide,media=cdrom,id=cd");
    assert_string_equal(argv[4], "file=/a/r.img,id=r,node-name=rn,readonly=on");
    free(argv);
    qemu_cmdline_free(cl);
    /* -device in JSON, and a trailing comma, as QEMU 7.2 takes them. */
    const char *const json[] = {
        Q,
        "-drive",
        "file=/a/j.img,if=none,id=j,",
        "-device",
        "{\"driver\":\"virtio-blk-pci\",\"drive\":\"j\",\"id\":\"vj\",\"x\":{}}",
        NULL};
    cl = parse_ok(json);
    assert_string_equal(disk(cl, "j")->device_id, "vj");
    assert_string_equal(disk(cl, "j")->device_driver, "virtio-blk-pci");
    qemu_cmdline_free(cl);
    parse_fails((const char *const[]){Q, "-drive", "file=,if=virtio", NULL}, -EINVAL,
                "without a file");
}

int main(void)
{
    bm_log_set_level((enum bm_log_level) - 1); /* the refusals are expected */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_libvirt),         cmocka_unit_test(test_hand_written),
        cmocka_unit_test(test_keyval_blockdev), cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_bounds),          cmocka_unit_test(test_dest_refusals),
        cmocka_unit_test(test_dest_forms),      cmocka_unit_test(test_drive_edges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
