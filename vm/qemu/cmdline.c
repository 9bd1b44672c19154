/* cmdline.c: parse a QEMU command line (hostile input) into the disks, monitors and host paths
 * blkmig needs, refusing what it cannot migrate yet (docs/architecture.md, 8.4). */
#include <config.h>

#include <errno.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "vm/qemu/cmdline-internal.h"

#define A   QOPT_ARG
#define KV  (QOPT_ARG | QOPT_KV)
#define LEG (QOPT_ARG | QOPT_LEGACY)
#define CHR (QOPT_ARG | QOPT_CHRSPEC)

/* QEMU 7.2's qemu-system-x86_64 options, sorted, and whether each takes an argument: every
 * name in `qemu-system-x86_64 -help`, each tried as `-version -NAME` (QEMU's first pass reports
 * "requires an argument" exactly for those that take one). A line with any other option is
 * refused: guessing wrong would misread every argument after it. */
/* clang-format off */
static const struct qemu_opt_def opt_defs[] = {
    {"D", A, NULL}, {"L", A, NULL}, {"M", KV, "type"}, {"S", 0, NULL}, {"accel", A, NULL},
    {"acpitable", A, NULL}, {"action", A, NULL}, {"add-fd", A, NULL}, {"append", A, NULL},
    {"async-teardown", 0, NULL}, {"audio", A, NULL}, {"audio-help", 0, NULL}, {"audiodev", A, NULL},
    {"bios", A, NULL}, {"blockdev", A, NULL}, {"boot", A, NULL}, {"cdrom", LEG, NULL},
    {"chardev", KV, "backend"}, {"chroot", A, NULL}, {"compat", A, NULL}, {"cpu", A, NULL},
    {"d", A, NULL}, {"daemonize", 0, NULL}, {"debugcon", CHR, NULL}, {"device", KV, "driver"},
    {"dfilter", A, NULL}, {"display", A, NULL}, {"drive", KV, NULL}, {"dtb", A, NULL},
    {"dump-vmstate", A, NULL}, {"echr", A, NULL}, {"enable-kvm", 0, NULL},
    {"enable-sync-profile", 0, NULL}, {"fda", LEG, NULL}, {"fdb", LEG, NULL}, {"fsdev", A, NULL},
    {"full-screen", 0, NULL}, {"fw_cfg", A, NULL}, {"g", A, NULL}, {"gdb", A, NULL},
    {"global", A, NULL}, {"h", 0, NULL}, {"hda", LEG, NULL}, {"hdb", LEG, NULL}, {"hdc", LEG, NULL},
    {"hdd", LEG, NULL}, {"help", 0, NULL}, {"icount", A, NULL}, {"incoming", A, NULL},
    {"initrd", A, NULL}, {"iscsi", A, NULL}, {"k", A, NULL}, {"kernel", A, NULL},
    {"loadvm", A, NULL}, {"m", A, NULL}, {"machine", KV, "type"}, {"mem-path", A, NULL},
    {"mem-prealloc", 0, NULL}, {"mon", KV, "chardev"}, {"monitor", CHR, NULL}, {"msg", A, NULL},
    {"mtdblock", LEG, NULL}, {"name", A, NULL}, {"net", A, NULL}, {"netdev", KV, "type"},
    {"nic", A, NULL}, {"no-acpi", 0, NULL}, {"no-fd-bootchk", 0, NULL}, {"no-hpet", 0, NULL},
    {"no-reboot", 0, NULL}, {"no-shutdown", 0, NULL}, {"no-user-config", 0, NULL},
    {"nodefaults", 0, NULL}, {"nographic", 0, NULL}, {"numa", A, NULL}, {"object", KV, "qom-type"},
    {"old-param", 0, NULL}, {"only-migratable", 0, NULL}, {"option-rom", A, NULL},
    {"overcommit", A, NULL}, {"parallel", CHR, NULL}, {"pflash", LEG, NULL}, {"pidfile", A, NULL},
    {"plugin", A, NULL}, {"portrait", 0, NULL}, {"preconfig", 0, NULL}, {"prom-env", A, NULL},
    {"qmp", CHR, NULL}, {"qmp-pretty", CHR, NULL}, {"qtest", A, NULL}, {"qtest-log", A, NULL},
    {"readconfig", A, NULL}, {"rotate", A, NULL}, {"rtc", A, NULL}, {"runas", A, NULL},
    {"s", 0, NULL}, {"sandbox", A, NULL}, {"sd", LEG, NULL}, {"seed", A, NULL},
    {"semihosting", 0, NULL}, {"semihosting-config", A, NULL}, {"serial", CHR, NULL},
    {"set", A, NULL}, {"singlestep", 0, NULL}, {"smbios", A, NULL}, {"smp", A, NULL},
    {"snapshot", 0, NULL}, {"spice", A, NULL}, {"tpmdev", A, NULL}, {"trace", A, NULL},
    {"usb", 0, NULL}, {"usbdevice", A, NULL}, {"uuid", A, NULL}, {"version", 0, NULL},
    {"vga", A, NULL}, {"virtfs", A, NULL}, {"vnc", A, NULL}, {"watchdog-action", A, NULL},
    {"win2k-hack", 0, NULL}, {"xen-attach", 0, NULL}, {"xen-domid", A, NULL},
    {"xen-domid-restrict", 0, NULL},
};
/* clang-format on */

static int def_cmp(const void *key, const void *elem)
{
    return strcmp(key, ((const struct qemu_opt_def *)elem)->name);
}

static const struct qemu_opt_def *opt_lookup(const char *name)
{
    return bsearch(name, opt_defs, sizeof opt_defs / sizeof opt_defs[0], sizeof opt_defs[0],
                   def_cmp);
}

static bool in_list(const char *s, const char *const *list)
{
    for (; s && *list; list++)
        if (strcmp(s, *list) == 0)
            return true;
    return false;
}

static const char *const format_drivers[] = {"raw",  "qcow2", "qcow", "qed",       "vmdk", "vdi",
                                             "vhdx", "vpc",   "luks", "parallels", NULL};
static const char *const file_drivers[] = {"file", "host_device", "host_cdrom", NULL};
static const char *const net_drivers[] = {"nbd",   "iscsi", "iser",   "rbd",     "ssh", "http",
                                          "https", "ftp",   "ftps",   "gluster", "nfs", "sheepdog",
                                          "vxhs",  "nvme",  "libnbd", NULL};

/* The parser's state: the line being built and where an error text goes. */
struct pstate {
    struct qemu_cmdline *cl;
    char *err;
    size_t errlen;
};

/* Untrusted text for a message: escaped and cut. */
#define ESC(s) bm_log_escape((s), (char[96]){0}, 96)

static int __attribute__((format(printf, 3, 4)))
fail(struct pstate *ps, int rc, const char *fmt, ...)
{
    char msg[QEMU_CMDLINE_ERRLEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    bm_error("qemu command line: %s", msg);
    if (ps->err && ps->errlen)
        snprintf(ps->err, ps->errlen, "%s", msg);
    return rc;
}

static int nomem(struct pstate *ps)
{
    return fail(ps, -ENOMEM, "out of memory");
}

/* Duplicates s into *dst (NULL stays NULL). */
static int dup_into(struct pstate *ps, char **dst, const char *s)
{
    free(*dst);
    *dst = NULL;
    if (s && !(*dst = strdup(s)))
        return nomem(ps);
    return 0;
}

static struct qemu_disk *disk_new(struct pstate *ps, enum qemu_disk_kind kind)
{
    struct qemu_cmdline *cl = ps->cl;
    if (!qemu_grow(&cl->disks, cl->ndisks, sizeof *cl->disks) ||
        !qemu_grow(&cl->dint, cl->ndisks, sizeof *cl->dint))
        return NULL;
    cl->dint[cl->ndisks] = (struct qemu_disk_internal){0};
    cl->disks[cl->ndisks] = (struct qemu_disk){.kind = kind};
    return &cl->disks[cl->ndisks++];
}

static int path_add(struct pstate *ps, enum qemu_hostpath_kind kind, const char *owner,
                    const char *path)
{
    struct qemu_cmdline *cl = ps->cl;
    if (!*path)
        return fail(ps, -EINVAL, "%s: an empty path", owner);
    if (cl->npaths == QEMU_CMDLINE_MAX_PATHS)
        return fail(ps, -E2BIG, "more than %d host paths", QEMU_CMDLINE_MAX_PATHS);
    if (!qemu_grow(&cl->paths, cl->npaths, sizeof *cl->paths))
        return nomem(ps);
    struct qemu_hostpath *p = &cl->paths[cl->npaths++];
    *p = (struct qemu_hostpath){.kind = kind};
    if (dup_into(ps, &p->owner, owner) < 0)
        return -ENOMEM;
    return dup_into(ps, &p->path, path);
}

/* A drive's filename: refuses QEMU's protocol prefixes ("nbd:", "iscsi://", "json:") but
 * "file:", and host fd sets, which cannot be reopened on another host. */
static int check_filename(struct pstate *ps, const char *opt, const char *f)
{
    size_t n = strcspn(f, ":/\\");
    if (f[n] == ':' && !(n == 4 && strncmp(f, "file", 4) == 0))
        return fail(ps, -ENOTSUP, "%s: %s is a network or non-file image, which cannot be migrated",
                    opt, ESC(f));
    if (strncmp(f, "/dev/fdset/", 11) == 0)
        return fail(ps, -ENOTSUP, "%s: %s is a file descriptor of this host", opt, ESC(f));
    return 0;
}

static int check_driver(struct pstate *ps, const char *opt, const char *drv, bool format_ok)
{
    if (!drv || in_list(drv, file_drivers) || (format_ok && in_list(drv, format_drivers)))
        return 0;
    if (in_list(drv, net_drivers))
        return fail(ps, -ENOTSUP, "%s: network block driver %s cannot be migrated", opt, ESC(drv));
    return fail(ps, -ENOTSUP, "%s: block driver %s is not supported", opt, ESC(drv));
}

static bool is_on(const char *v)
{
    return v && (strcmp(v, "on") == 0 || strcmp(v, "true") == 0 || strcmp(v, "yes") == 0);
}

static int parse_drive(struct pstate *ps, struct qemu_cmdline_arg *a)
{
    const struct qemu_kvlist *l = &a->kv;
    const char *file = qemu_kv_get(l, "file"), *ffile = qemu_kv_get(l, "file.filename");
    const char *format = qemu_kv_get(l, "format"), *driver = qemu_kv_get(l, "driver");
    const char *media = qemu_kv_get(l, "media");
    int r;
    if (is_on(qemu_kv_get(l, "snapshot")))
        return fail(ps, -ENOTSUP, "-drive snapshot=on: its writes are thrown away, not migrated");
    if (file && ffile)
        return fail(ps, -EINVAL, "-drive: both file= and file.filename=");
    if (!file)
        file = ffile;
    if (file && !*file)
        file = NULL; /* QEMU's "no medium" */
    if (format && driver)
        return fail(ps, -EINVAL, "-drive: both format= and driver=");
    if ((r = check_driver(ps, "-drive", format ? format : driver, true)) < 0 ||
        (r = check_driver(ps, "-drive", qemu_kv_get(l, "file.driver"), false)) < 0)
        return r;
    bool cdrom = media && strcmp(media, "cdrom") == 0;
    if (file && (r = check_filename(ps, "-drive", file)) < 0)
        return r;
    if (!file && !cdrom)
        return fail(ps, -EINVAL, "-drive without a file (only an empty cdrom may have none)");
    struct qemu_disk *d = disk_new(ps, QEMU_DISK_DRIVE);
    if (!d)
        return nomem(ps);
    a->disk = (int)(ps->cl->ndisks - 1);
    d->cdrom = cdrom;
    d->readonly = cdrom || is_on(qemu_kv_get(l, "readonly"));
    const char *id = qemu_kv_get(l, "id"), *node = qemu_kv_get(l, "node-name");
    if (dup_into(ps, &d->file, file) < 0 ||
        dup_into(ps, &d->format, format ? format : driver) < 0 ||
        dup_into(ps, &d->iface, qemu_kv_get(l, "if")) < 0 ||
        dup_into(ps, &d->node_name, node) < 0 || dup_into(ps, &d->name, id ? id : node) < 0 ||
        dup_into(ps, &d->cache, qemu_kv_get(l, "cache")) < 0 ||
        dup_into(ps, &d->aio, qemu_kv_get(l, "aio")) < 0)
        return -ENOMEM;
    return 0;
}

/* -hda FILE and its kin: QEMU's shorthands for -drive file=FILE,index=N,... */
static int parse_legacy(struct pstate *ps, struct qemu_cmdline_arg *a)
{
    const char *opt = a->def->name;
    bool cdrom = strcmp(opt, "cdrom") == 0;
    int r;
    if (!*a->value && !cdrom)
        return fail(ps, -EINVAL, "-%s: an empty file name", opt);
    if (*a->value && (r = check_filename(ps, opt, a->value)) < 0)
        return r;
    char name[32];
    unsigned same = 0;
    for (size_t i = 0; i < ps->cl->ndisks; i++)
        same += ps->cl->disks[i].kind == QEMU_DISK_LEGACY &&
                strncmp(ps->cl->disks[i].name, opt, strlen(opt)) == 0;
    /* -sd, -mtdblock and -pflash may repeat (QEMU numbers them); the others may not. */
    if (strcmp(opt, "sd") == 0 || strcmp(opt, "mtdblock") == 0 || strcmp(opt, "pflash") == 0)
        snprintf(name, sizeof name, "%s%u", opt, same);
    else
        snprintf(name, sizeof name, "%s", opt);
    struct qemu_disk *d = disk_new(ps, QEMU_DISK_LEGACY);
    if (!d)
        return nomem(ps);
    a->disk = (int)(ps->cl->ndisks - 1);
    d->cdrom = d->readonly = cdrom;
    if (dup_into(ps, &d->name, name) < 0 || dup_into(ps, &d->file, *a->value ? a->value : NULL) < 0)
        return -ENOMEM;
    return 0;
}

/* -blockdev in either syntax, as a JSON object (keyval's dotted keys become nested objects). */
static int parse_blockdev(struct pstate *ps, struct qemu_cmdline_arg *a)
{
    if (a->value[0] == '{') {
        a->bd_json = true;
        if (!(a->bd = qemu_json_parse_object(a->value)))
            return fail(ps, -EINVAL, "-blockdev: not one JSON object");
        return 0;
    }
    struct qemu_kvlist l;
    const char *msg;
    int r = qemu_kv_parse(a->value, "driver", &l, &msg);
    if (r < 0)
        return fail(ps, r, "-blockdev: %s", msg);
    if (!(a->bd = json_object_new_object()))
        r = nomem(ps);
    for (size_t i = 0; r == 0 && i < l.n; i++) {
        struct json_object *o = a->bd;
        char *key = l.v[i].key, *dot;
        if (!l.v[i].value) {
            r = fail(ps, -EINVAL, "-blockdev: %s without a value", ESC(key));
            break;
        }
        /* Walk (and make) the objects of "a.b.c"; a key that is both a value and an object
         * is malformed, as QEMU says too, and so is one with an empty part ("a..b", ".a",
         * "a."), which would come back from the destination's rewrite as another key. */
        for (const char *k = key; r == 0 && (dot = strchr(k, '.')); k = dot + 1)
            if (dot == k || dot[1] == '\0')
                r = fail(ps, -EINVAL, "-blockdev: %s has an empty part", ESC(l.v[i].key));
        if (r == 0 && key[0] == '\0')
            r = fail(ps, -EINVAL, "-blockdev: an empty key");
        for (; r == 0 && (dot = strchr(key, '.')); key = dot + 1) {
            *dot = '\0';
            struct json_object *c = NULL;
            if (!json_object_object_get_ex(o, key, &c)) {
                if (!(c = json_object_new_object()) || json_object_object_add(o, key, c) < 0)
                    r = nomem(ps);
            } else if (!json_object_is_type(c, json_type_object)) {
                r = fail(ps, -EINVAL, "-blockdev: %s is both a value and an object", ESC(key));
            }
            *dot = '.';
            o = c;
        }
        if (r == 0 && json_object_object_get_ex(o, key, NULL))
            r = fail(ps, -EINVAL, "-blockdev: %s given twice", ESC(l.v[i].key));
        else if (r == 0 && json_object_object_add(o, key, json_object_new_string(l.v[i].value)) < 0)
            r = nomem(ps);
    }
    qemu_kv_free(&l);
    return r;
}

static const char *bd_str(struct json_object *o, const char *key)
{
    struct json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || json_object_is_type(v, json_type_object) ||
        json_object_is_type(v, json_type_array) || json_object_is_type(v, json_type_null))
        return NULL;
    return json_object_get_string(v);
}

static bool bd_true(struct json_object *o, const char *key)
{
    struct json_object *v;
    if (!json_object_object_get_ex(o, key, &v))
        return false;
    return json_object_is_type(v, json_type_boolean) ? json_object_get_boolean(v)
                                                     : is_on(json_object_get_string(v));
}

/* The -blockdev argument whose node is called name, or -1. */
static long bd_find(const struct qemu_cmdline *cl, const char *name)
{
    for (size_t i = 0; i < cl->nargs; i++)
        if (cl->args[i].bd && name && strcmp(bd_str(cl->args[i].bd, "node-name") ?: "", name) == 0)
            return (long)i;
    return -1;
}

/* Follows one disk's node chain from o (hops "file" objects below argument arg) down to its
 * file, through at most one format node and 8 hops. */
static int bd_walk(struct pstate *ps, struct json_object *o, size_t arg, unsigned depth,
                   unsigned hops, struct qemu_disk *d, struct qemu_disk_internal *di)
{
    const char *drv = bd_str(o, "driver");
    struct json_object *v;
    int r;
    if (hops > 8)
        return fail(ps, -EINVAL, "-blockdev %s: a node chain deeper than 8", ESC(d->name));
    if (!drv)
        return fail(ps, -EINVAL, "-blockdev %s: a node without driver", ESC(d->name));
    if ((r = check_driver(ps, "-blockdev", drv, true)) < 0)
        return r;
    if (json_object_object_get_ex(o, "backing", &v) && !json_object_is_type(v, json_type_null))
        return fail(ps, -ENOTSUP, "-blockdev %s: backing chains are not migrated yet",
                    ESC(d->name));
    if (json_object_object_get_ex(o, "data-file", NULL))
        return fail(ps, -ENOTSUP, "-blockdev %s: data-file is not migrated yet", ESC(d->name));
    d->readonly |= bd_true(o, "read-only");
    if (in_list(drv, file_drivers)) {
        const char *f = bd_str(o, "filename");
        if (!f || !*f)
            return fail(ps, -EINVAL, "-blockdev %s: a %s node without filename", ESC(d->name), drv);
        d->cdrom |= strcmp(drv, "host_cdrom") == 0;
        di->leaf = (struct qemu_bd_loc){arg, depth};
        if (dup_into(ps, &d->file, f) < 0 || dup_into(ps, &d->aio, bd_str(o, "aio")) < 0)
            return -ENOMEM;
        return 0;
    }
    if (di->has_fmt)
        return fail(ps, -ENOTSUP, "-blockdev %s: a format node over a format node", ESC(d->name));
    di->has_fmt = true;
    di->fmt = (struct qemu_bd_loc){arg, depth};
    if (dup_into(ps, &d->format, drv) < 0)
        return -ENOMEM;
    if (!json_object_object_get_ex(o, "file", &v))
        return fail(ps, -EINVAL, "-blockdev %s: a %s node without file", ESC(d->name), drv);
    if (json_object_is_type(v, json_type_object))
        return bd_walk(ps, v, arg, depth + 1, hops + 1, d, di);
    long c =
        json_object_is_type(v, json_type_string) ? bd_find(ps->cl, json_object_get_string(v)) : -1;
    if (c < 0)
        return fail(ps, -EINVAL, "-blockdev %s: file names no node", ESC(d->name));
    return bd_walk(ps, ps->cl->args[c].bd, (size_t)c, 0, hops + 1, d, di);
}

/* Marks in ref[] the -blockdev argument that the chain of argument j (through inline objects)
 * names as its file, if any. */
static void bd_mark_child(const struct qemu_cmdline *cl, size_t j, bool *ref)
{
    struct json_object *o = cl->args[j].bd, *v = NULL;
    while (json_object_object_get_ex(o, "file", &v) && json_object_is_type(v, json_type_object))
        o = v;
    if (v && json_object_is_type(v, json_type_string)) {
        long c = bd_find(cl, json_object_get_string(v));
        if (c >= 0 && (size_t)c != j)
            ref[c] = true;
    }
}

/* Every -blockdev node that no other names as its file is a disk. */
static int resolve_blockdevs(struct pstate *ps)
{
    struct qemu_cmdline *cl = ps->cl;
    bool *ref = calloc(cl->nargs + 1, sizeof *ref);
    int r = ref ? 0 : nomem(ps);
    for (size_t i = 0; r == 0 && i < cl->nargs; i++) {
        if (!cl->args[i].bd)
            continue;
        const char *node = bd_str(cl->args[i].bd, "node-name");
        if (!node || !*node)
            r = fail(ps, -EINVAL, "-blockdev without node-name");
        else if (bd_find(cl, node) != (long)i)
            r = fail(ps, -EINVAL, "duplicate -blockdev node-name %s", ESC(node));
        else
            bd_mark_child(cl, i, ref);
    }
    for (size_t i = 0; r == 0 && i < cl->nargs; i++) {
        if (!cl->args[i].bd || ref[i])
            continue;
        const char *node = bd_str(cl->args[i].bd, "node-name");
        struct qemu_disk *d = disk_new(ps, QEMU_DISK_BLOCKDEV);
        if (!d)
            r = nomem(ps);
        else if (dup_into(ps, &d->name, node) < 0 || dup_into(ps, &d->node_name, node) < 0)
            r = -ENOMEM;
        else
            r = bd_walk(ps, cl->args[i].bd, i, 0, 0, d, &cl->dint[cl->ndisks - 1]);
    }
    free(ref);
    return r;
}

static int parse_chardev(struct pstate *ps, struct qemu_cmdline_arg *a)
{
    const char *backend = qemu_kv_get(&a->kv, "backend"), *id = qemu_kv_get(&a->kv, "id");
    const char *path = qemu_kv_get(&a->kv, "path"), *log = qemu_kv_get(&a->kv, "logfile");
    char owner[128];
    int r = 0;
    if (!backend || !id || !*id)
        return fail(ps, -EINVAL, "-chardev without a backend or an id");
    snprintf(owner, sizeof owner, "chardev %s", ESC(id));
    /* serial, tty, parallel and parport paths are host devices, shared by nature. */
    if (path && strcmp(backend, "socket") == 0)
        r = path_add(ps, QEMU_PATH_SOCKET, owner, path);
    else if (path && strcmp(backend, "file") == 0)
        r = path_add(ps, QEMU_PATH_FILE, owner, path);
    else if (path && strcmp(backend, "pipe") == 0)
        r = path_add(ps, QEMU_PATH_PIPE, owner, path);
    if (r == 0 && log)
        r = path_add(ps, QEMU_PATH_LOG, owner, log);
    return r;
}

static int add_monitor(struct pstate *ps, enum qemu_monitor_kind kind, const char *spec,
                       const char *chardev)
{
    struct qemu_cmdline *cl = ps->cl;
    if (cl->nmonitors == QEMU_CMDLINE_MAX_MONITORS)
        return fail(ps, -E2BIG, "more than %d monitors", QEMU_CMDLINE_MAX_MONITORS);
    if (!qemu_grow(&cl->monitors, cl->nmonitors, sizeof *cl->monitors))
        return nomem(ps);
    struct qemu_monitor *m = &cl->monitors[cl->nmonitors++];
    *m = (struct qemu_monitor){.kind = kind};
    if (dup_into(ps, &m->spec, spec) < 0 || dup_into(ps, &m->chardev, chardev) < 0)
        return -ENOMEM;
    int r = qemu_chrspec_path(spec, &m->socket_path);
    if (r == -ENOMEM)
        return nomem(ps);
    if (r != QEMU_PATH_SOCKET) {
        free(m->socket_path);
        m->socket_path = NULL;
    }
    return 0;
}

/* -serial, -parallel, -debugcon, -monitor, -qmp: a character device spec. */
static int parse_chrspec(struct pstate *ps, struct qemu_cmdline_arg *a)
{
    const char *opt = a->def->name;
    if (strcmp(opt, "qmp") == 0 || strcmp(opt, "qmp-pretty") == 0)
        return add_monitor(ps, QEMU_MON_QMP, a->value, NULL);
    if (strcmp(opt, "monitor") == 0)
        return add_monitor(ps, QEMU_MON_HMP, a->value,
                           strncmp(a->value, "chardev:", 8) == 0 ? a->value + 8 : NULL);
    char *path;
    int kind = qemu_chrspec_path(a->value, &path);
    if (kind == -ENOMEM)
        return nomem(ps);
    if (kind < 0)
        return 0;
    char owner[32];
    snprintf(owner, sizeof owner, "-%s", opt);
    int r = path_add(ps, (enum qemu_hostpath_kind)kind, owner, path);
    free(path);
    return r;
}

static int parse_one(struct pstate *ps, struct qemu_cmdline_arg *a)
{
    struct qemu_cmdline *cl = ps->cl;
    const char *opt = a->def->name;
    if ((a->def->flags & QOPT_KV) && a->value[0] == '{' &&
        (strcmp(opt, "device") == 0 || strcmp(opt, "object") == 0 || strcmp(opt, "netdev") == 0)) {
        /* QEMU 7.2 takes these three as JSON too; they are written back verbatim. */
        struct json_object *o = qemu_json_parse_object(a->value);
        if (!o)
            return fail(ps, -EINVAL, "-%s: not one JSON object", opt);
        int r = qemu_kv_from_json(o, &a->kv);
        json_object_put(o);
        if (r < 0)
            return nomem(ps);
    } else if (a->def->flags & QOPT_KV) {
        const char *msg;
        int r = qemu_kv_parse(a->value, a->def->implied, &a->kv, &msg);
        if (r < 0)
            return fail(ps, r, "-%s %s: %s", opt, ESC(a->value), msg);
    }
    if (strcmp(opt, "snapshot") == 0)
        return fail(ps, -ENOTSUP, "-snapshot: its writes are thrown away, not migrated");
    if (strcmp(opt, "readconfig") == 0 || strcmp(opt, "set") == 0)
        return fail(ps, -ENOTSUP, "-%s: its drives and devices would be hidden from blkmig", opt);
    if (strcmp(opt, "daemonize") == 0)
        cl->daemonize = true;
    else if (strcmp(opt, "S") == 0)
        cl->freeze = true;
    else if (strcmp(opt, "pidfile") == 0)
        return dup_into(ps, &cl->pidfile, a->value);
    else if (strcmp(opt, "incoming") == 0)
        return dup_into(ps, &cl->incoming, a->value);
    else if (strcmp(opt, "cpu") == 0)
        return dup_into(ps, &cl->cpu, a->value);
    else if (strcmp(opt, "machine") == 0 || strcmp(opt, "M") == 0)
        return qemu_kv_get(&a->kv, "type") ? dup_into(ps, &cl->machine, qemu_kv_get(&a->kv, "type"))
                                           : 0;
    else if (strcmp(opt, "drive") == 0)
        return parse_drive(ps, a);
    else if (strcmp(opt, "blockdev") == 0)
        return parse_blockdev(ps, a);
    else if (strcmp(opt, "chardev") == 0)
        return parse_chardev(ps, a);
    else if (strcmp(opt, "mon") == 0)
        return add_monitor(ps, QEMU_MON_MON, a->value, qemu_kv_get(&a->kv, "chardev"));
    else if (strcmp(opt, "D") == 0)
        return path_add(ps, QEMU_PATH_LOG, "-D", a->value);
    else if (a->def->flags & QOPT_LEGACY)
        return parse_legacy(ps, a);
    else if (a->def->flags & QOPT_CHRSPEC)
        return parse_chrspec(ps, a);
    return 0;
}

/* Each -device with drive= gives that disk its device (QEMU itself checks the rest). */
static int attach_devices(struct pstate *ps)
{
    struct qemu_cmdline *cl = ps->cl;
    for (size_t i = 0; i < cl->nargs; i++) {
        if (strcmp(cl->args[i].def->name, "device") != 0)
            continue;
        const char *drive = qemu_kv_get(&cl->args[i].kv, "drive");
        for (size_t k = 0; drive && k < cl->ndisks; k++) {
            struct qemu_disk *d = &cl->disks[k];
            if (strcmp(d->name, drive) != 0 && (!d->node_name || strcmp(d->node_name, drive) != 0))
                continue;
            if (d->device_driver)
                return fail(ps, -EINVAL, "-device: disk %s attached twice", ESC(drive));
            if (dup_into(ps, &d->device_driver, qemu_kv_get(&cl->args[i].kv, "driver")) < 0 ||
                dup_into(ps, &d->device_id, qemu_kv_get(&cl->args[i].kv, "id")) < 0)
                return -ENOMEM;
        }
    }
    return 0;
}

/* A name taken in its namespace: drive ids and node names share QEMU's block namespace. */
static bool name_taken(const struct qemu_cmdline *cl, const char *name, size_t self)
{
    for (size_t k = 0; k < cl->ndisks; k++)
        if (k != self && ((cl->disks[k].name && strcmp(cl->disks[k].name, name) == 0) ||
                          (cl->disks[k].node_name && strcmp(cl->disks[k].node_name, name) == 0)))
            return true;
    return false;
}

static int check_ids(struct pstate *ps)
{
    struct qemu_cmdline *cl = ps->cl;
    static const char *const spaces[] = {"device", "chardev", "netdev", "object"};
    for (size_t k = 0; k < cl->ndisks; k++) {
        const struct qemu_disk *d = &cl->disks[k];
        if ((d->name && name_taken(cl, d->name, k)) ||
            (d->node_name && name_taken(cl, d->node_name, k)))
            return fail(ps, -EINVAL, "duplicate drive id or node-name %s",
                        ESC(d->name ? d->name : d->node_name));
    }
    /* Each argument's id looked up once: an argument may have many keys. */
    const char **ids = calloc(cl->nargs + 1, sizeof *ids);
    if (!ids)
        return nomem(ps);
    for (size_t i = 0; i < cl->nargs; i++)
        ids[i] = qemu_kv_get(&cl->args[i].kv, "id");
    int r = 0;
    for (size_t s = 0; r == 0 && s < sizeof spaces / sizeof spaces[0]; s++)
        for (size_t i = 0; r == 0 && i < cl->nargs; i++) {
            if (!ids[i] || strcmp(cl->args[i].def->name, spaces[s]) != 0)
                continue;
            for (size_t j = i + 1; r == 0 && j < cl->nargs; j++)
                if (ids[j] && strcmp(ids[j], ids[i]) == 0 &&
                    strcmp(cl->args[j].def->name, spaces[s]) == 0)
                    r = fail(ps, -EINVAL, "duplicate -%s id %s", spaces[s], ESC(ids[i]));
        }
    free(ids);
    return r;
}

/* Names for -drive options without id or node-name: "driveN", skipping taken names. */
static int name_drives(struct pstate *ps)
{
    struct qemu_cmdline *cl = ps->cl;
    unsigned n = 0;
    for (size_t k = 0; k < cl->ndisks; k++) {
        if (cl->disks[k].name)
            continue;
        char name[32];
        do
            snprintf(name, sizeof name, "drive%u", n++);
        while (name_taken(cl, name, k));
        if (dup_into(ps, &cl->disks[k].name, name) < 0)
            return -ENOMEM;
    }
    return 0;
}

static int check_bounds(struct pstate *ps, int argc, const char *const *argv)
{
    size_t total = 0;
    if (argc < 1 || !argv || !argv[0] || !argv[0][0])
        return fail(ps, -EINVAL, "no QEMU binary");
    if (argc > QEMU_CMDLINE_MAX_ARGS)
        return fail(ps, -E2BIG, "%d arguments, more than %d", argc, QEMU_CMDLINE_MAX_ARGS);
    for (int i = 0; i < argc; i++) {
        if (!argv[i])
            return fail(ps, -EINVAL, "argument %d missing", i);
        size_t n = strnlen(argv[i], QEMU_CMDLINE_MAX_ARG + 1);
        if (n > QEMU_CMDLINE_MAX_ARG)
            return fail(ps, -E2BIG, "argument %d longer than %d bytes", i, QEMU_CMDLINE_MAX_ARG);
        total += n;
    }
    if (total > QEMU_CMDLINE_MAX_TOTAL)
        return fail(ps, -E2BIG, "more than %d bytes of arguments", QEMU_CMDLINE_MAX_TOTAL);
    return 0;
}

static int parse_args(struct pstate *ps, int argc, const char *const *argv)
{
    struct qemu_cmdline *cl = ps->cl;
    if (!(cl->args = calloc((size_t)argc, sizeof *cl->args)))
        return nomem(ps);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-' || !a[1])
            return fail(ps, -ENOTSUP, "%s: a positional disk image (give it with -drive)", ESC(a));
        const char *name = a + 1 + (a[1] == '-'); /* QEMU takes --opt as -opt */
        const struct qemu_opt_def *def = opt_lookup(name);
        if (!def)
            return fail(ps, -EINVAL, "%s: not an option of QEMU 7.2", ESC(a));
        struct qemu_cmdline_arg *arg = &cl->args[cl->nargs++];
        *arg = (struct qemu_cmdline_arg){.def = def, .disk = -1};
        if (def->flags & QOPT_ARG) {
            if (i + 1 >= argc)
                return fail(ps, -EINVAL, "-%s needs an argument", def->name);
            if (!(arg->value = strdup(argv[++i])))
                return nomem(ps);
        }
        int r = parse_one(ps, arg);
        if (r < 0)
            return r;
    }
    return 0;
}

int qemu_cmdline_parse(int argc, const char *const *argv, struct qemu_cmdline **out, char *err,
                       size_t errlen)
{
    struct pstate ps = {.err = err, .errlen = errlen};
    int r;
    *out = NULL;
    if (err && errlen)
        err[0] = '\0';
    if ((r = check_bounds(&ps, argc, argv)) < 0)
        return r;
    if (!(ps.cl = calloc(1, sizeof *ps.cl)) || !(ps.cl->binary = strdup(argv[0]))) {
        qemu_cmdline_free(ps.cl);
        return nomem(&ps);
    }
    if ((r = parse_args(&ps, argc, argv)) < 0 || (r = resolve_blockdevs(&ps)) < 0 ||
        (r = check_ids(&ps)) < 0 || (r = name_drives(&ps)) < 0 || (r = attach_devices(&ps)) < 0) {
        qemu_cmdline_free(ps.cl);
        return r;
    }
    *out = ps.cl;
    return 0;
}

void qemu_cmdline_free(struct qemu_cmdline *cl)
{
    if (!cl)
        return;
    for (size_t i = 0; i < cl->ndisks; i++) {
        struct qemu_disk *d = &cl->disks[i];
        free(d->name);
        free(d->file);
        free(d->format);
        free(d->iface);
        free(d->node_name);
        free(d->cache);
        free(d->aio);
        free(d->device_id);
        free(d->device_driver);
    }
    for (size_t i = 0; i < cl->nmonitors; i++) {
        free(cl->monitors[i].spec);
        free(cl->monitors[i].socket_path);
        free(cl->monitors[i].chardev);
    }
    for (size_t i = 0; i < cl->npaths; i++) {
        free(cl->paths[i].owner);
        free(cl->paths[i].path);
    }
    for (size_t i = 0; i < cl->nargs; i++) {
        free(cl->args[i].value);
        qemu_kv_free(&cl->args[i].kv);
        json_object_put(cl->args[i].bd);
    }
    free(cl->disks);
    free(cl->dint);
    free(cl->monitors);
    free(cl->paths);
    free(cl->args);
    free(cl->binary);
    free(cl->pidfile);
    free(cl->incoming);
    free(cl->machine);
    free(cl->cpu);
    free(cl);
}
