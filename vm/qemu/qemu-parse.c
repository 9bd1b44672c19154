/* qemu-parse.c: a QEMU's disks from its query replies, and its argv from /proc: pure parsing. */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "vm/qemu/cmdline.h"
#include "vm/qemu/qemu.h"

/* A backing chain longer than this is refused (QEMU's own limit is far higher, but a chain
 * comes from the peer and is walked recursively). */
#define CHAIN_MAX_DEPTH 64

static const char *const network_drivers[] = {
    "nbd",  "iscsi",   "iser", "rbd",      "ssh",  "http",   "https", "ftp",
    "ftps", "gluster", "nfs",  "sheepdog", "vxhs", "libnbd", "curl",  NULL};
static const char *const protocol_drivers[] = {"file", "host_device", "host_cdrom", NULL};
/* Formats whose data lives in their file child (and backing child, if any). */
static const char *const format_drivers[] = {"raw",  "qcow2", "qcow",      "qed",  "vmdk", "vdi",
                                             "vhdx", "vpc",   "parallels", "luks", NULL};

static bool in(const char *s, const char *const *set)
{
    for (; *set; set++)
        if (strcmp(s, *set) == 0)
            return true;
    return false;
}

/* A member of type t, or NULL. */
static struct json_object *get(struct json_object *o, const char *key, enum json_type t)
{
    struct json_object *v;
    if (!json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, key, &v) ||
        !json_object_is_type(v, t))
        return NULL;
    return v;
}

static const char *get_str(struct json_object *o, const char *key)
{
    struct json_object *v = get(o, key, json_type_string);
    return v ? json_object_get_string(v) : NULL;
}

/* The entry of an array (query-named-block-nodes, query-blockstats) whose "node-name" is
 * name, or NULL. */
static struct json_object *by_node(struct json_object *a, const char *name)
{
    size_t n = json_object_array_length(a);
    for (size_t i = 0; i < n; i++) {
        struct json_object *e = json_object_array_get_idx(a, i);
        const char *nn = get_str(e, "node-name");
        if (nn && strcmp(nn, name) == 0)
            return e;
    }
    return NULL;
}

/* Check the chain under one node (a query-blockstats entry: "parent" is its file child,
 * "backing" its backing): formats over file nodes only, no network anywhere. */
static int check_chain(struct json_object *entry, struct json_object *nodes, unsigned depth,
                       const char *disk, char *err, size_t errlen)
{
    if (depth > CHAIN_MAX_DEPTH) {
        snprintf(err, errlen, "drive %s: a chain of more than %d nodes", disk, CHAIN_MAX_DEPTH);
        return -ENOTSUP;
    }
    const char *name = get_str(entry, "node-name");
    const char *drv = name && *name ? get_str(by_node(nodes, name), "drv") : NULL;
    if (!drv) {
        snprintf(err, errlen,
                 "drive %s: a node of its chain (%s) has no name or driver QEMU "
                 "reports",
                 disk, name && *name ? name : "unnamed");
        return -ENOTSUP;
    }
    if (in(drv, network_drivers)) {
        snprintf(err, errlen,
                 "drive %s: node %s uses the network protocol %s (only local "
                 "images can be migrated)",
                 disk, name, drv);
        return -ENOTSUP;
    }
    if (in(drv, protocol_drivers))
        return 0;
    if (!in(drv, format_drivers)) {
        snprintf(err, errlen,
                 "drive %s: node %s has the driver %s, which blkmig does not "
                 "handle",
                 disk, name, drv);
        return -ENOTSUP;
    }
    struct json_object *file = get(entry, "parent", json_type_object);
    if (!file) {
        snprintf(err, errlen, "drive %s: cannot find the protocol node under %s", disk, name);
        return -ENOTSUP;
    }
    int r = check_chain(file, nodes, depth + 1, disk, err, errlen);
    struct json_object *backing = get(entry, "backing", json_type_object);
    if (r == 0 && backing)
        r = check_chain(backing, nodes, depth + 1, disk, err, errlen);
    return r;
}

static bool copy(char *dst, size_t size, const char *src)
{
    return (size_t)snprintf(dst, size, "%s", src ? src : "") < size;
}

/* The facts of one drive with a medium (ins: its "inserted"). */
static int fill_disk(struct json_object *ins, const char *disk, struct qemu_disk_info *d, char *err,
                     size_t errlen)
{
    const char *node = get_str(ins, "node-name"), *drv = get_str(ins, "drv");
    const char *file = get_str(ins, "file");
    struct json_object *image = get(ins, "image", json_type_object);
    struct json_object *size = get(image, "virtual-size", json_type_int);
    struct json_object *ro = get(ins, "ro", json_type_boolean);
    struct json_object *depth = get(ins, "backing_file_depth", json_type_int);
    if (!node || !*node) {
        snprintf(err, errlen, "drive %s: QEMU reports no node name for it", disk);
        return -ENOTSUP;
    }
    if (!drv || !file || !size || json_object_get_int64(size) < 0 || !ro) {
        snprintf(err, errlen, "drive %s: query-block lacks its driver, file, size or ro", disk);
        return -EBADMSG;
    }
    if (!copy(d->node, sizeof d->node, node) || !copy(d->format, sizeof d->format, drv) ||
        !copy(d->file, sizeof d->file, file)) {
        snprintf(err, errlen, "drive %s: a node name, driver or file name too long", disk);
        return -ENOTSUP;
    }
    d->size = (uint64_t)json_object_get_int64(size);
    d->readonly = json_object_get_boolean(ro);
    d->backing = (depth && json_object_get_int64(depth) > 0) || get_str(ins, "backing_file");
    return 0;
}

/* One query-block entry: 1 when it is a disk (d filled), 0 when skipped, or -errno. */
static int parse_drive(struct json_object *e, struct json_object *stats, struct json_object *nodes,
                       struct qemu_disk_info *d, char *err, size_t errlen)
{
    const char *dev = get_str(e, "device"), *qdev = get_str(e, "qdev");
    if (!dev) {
        snprintf(err, errlen, "query-block: an entry without \"device\"");
        return -EBADMSG;
    }
    const char *disk = *dev ? dev : qdev ? qdev : "(unnamed)";
    struct json_object *ins = get(e, "inserted", json_type_object);
    if (!ins) {
        bm_info("drive %s has no medium: skipped", disk);
        return 0;
    }
    memset(d, 0, sizeof *d);
    if (!copy(d->drive, sizeof d->drive, dev) || !copy(d->device, sizeof d->device, qdev)) {
        snprintf(err, errlen, "drive %s: its name or device path is too long", disk);
        return -ENOTSUP;
    }
    int r = fill_disk(ins, disk, d, err, errlen);
    if (r < 0)
        return r;
    if (in(d->format, network_drivers)) {
        snprintf(err, errlen,
                 "drive %s: the network protocol %s (only local images can be "
                 "migrated)",
                 disk, d->format);
        return -ENOTSUP;
    }
    struct json_object *top = by_node(stats, d->node);
    if (!top) {
        snprintf(err, errlen, "drive %s: cannot find the nodes under %s", disk, d->node);
        return -ENOTSUP;
    }
    r = check_chain(top, nodes, 0, disk, err, errlen);
    return r < 0 ? r : 1;
}

int qemu_disks_parse(struct json_object *block, struct json_object *stats,
                     struct json_object *nodes, struct qemu_disk_info **out, unsigned *n, char *err,
                     size_t errlen)
{
    *out = NULL;
    *n = 0;
    if (!json_object_is_type(block, json_type_array) ||
        !json_object_is_type(stats, json_type_array) ||
        !json_object_is_type(nodes, json_type_array)) {
        snprintf(err, errlen,
                 "query-block, query-blockstats and query-named-block-nodes must "
                 "return arrays");
        return -EBADMSG;
    }
    size_t nb = json_object_array_length(block);
    if (nb > QEMU_VM_MAX_DISKS) {
        snprintf(err, errlen, "%zu drives: at most %d", nb, QEMU_VM_MAX_DISKS);
        return -E2BIG;
    }
    struct qemu_disk_info *d = nb ? calloc(nb, sizeof *d) : NULL;
    if (nb && !d) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    unsigned k = 0;
    for (size_t i = 0; i < nb; i++) {
        int r = parse_drive(json_object_array_get_idx(block, i), stats, nodes, &d[k], err, errlen);
        if (r < 0) {
            free(d);
            return r;
        }
        k += (unsigned)r;
    }
    if (k == 0) {
        free(d);
        d = NULL;
    }
    *out = d;
    *n = k;
    return 0;
}

struct json_object *qemu_disks_json(const struct qemu_disk_info *d, unsigned n)
{
    struct json_object *a = json_object_new_array();
    for (unsigned i = 0; a && i < n; i++) {
        struct json_object *e = json_object_new_object();
        json_object_object_add(e, "device", json_object_new_string(d[i].device));
        json_object_object_add(e, "drive", json_object_new_string(d[i].drive));
        json_object_object_add(e, "node", json_object_new_string(d[i].node));
        json_object_object_add(e, "format", json_object_new_string(d[i].format));
        json_object_object_add(e, "file", json_object_new_string(d[i].file));
        json_object_object_add(e, "size", json_object_new_int64((int64_t)d[i].size));
        json_object_object_add(e, "backing", json_object_new_boolean(d[i].backing));
        json_object_object_add(e, "readonly", json_object_new_boolean(d[i].readonly));
        json_object_array_add(a, e);
    }
    return a;
}

int qemu_proc_cmdline_split(const char *buf, size_t len, int *argc_out, char ***argv_out)
{
    *argc_out = 0;
    *argv_out = NULL;
    if (len == 0 || buf[len - 1] != '\0')
        return -EINVAL;
    if (len > QEMU_CMDLINE_MAX_TOTAL)
        return -E2BIG;
    size_t argc = 0;
    for (size_t i = 0; i < len; i++)
        argc += buf[i] == '\0';
    if (argc > QEMU_CMDLINE_MAX_ARGS)
        return -E2BIG;
    /* Pointers, then the strings, in one block. */
    char **argv = malloc((argc + 1) * sizeof *argv + len);
    if (!argv)
        return -ENOMEM;
    char *s = (char *)(argv + argc + 1);
    memcpy(s, buf, len);
    for (size_t i = 0; i < argc; i++) {
        argv[i] = s;
        s += strlen(s) + 1;
    }
    argv[argc] = NULL;
    *argc_out = (int)argc;
    *argv_out = argv;
    return 0;
}
