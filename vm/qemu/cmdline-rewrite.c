/* cmdline-rewrite.c: a parsed QEMU command line written back for the source (launch) and for
 * the destination of a migration (new images, blkmig's monitor, host paths in the run dir). */
#include <config.h>

#include <errno.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "common/log.h"
#include "vm/qemu/cmdline-internal.h"

#define ESC(s) bm_log_escape((s), (char[96]){0}, 96)

/* The argv being built; err is the first error (the vector is then only freed). */
struct outv {
    char **v;
    size_t n;
    int err;
    char *errbuf;
    size_t errlen;
};

static int __attribute__((format(printf, 3, 4))) fail(struct outv *o, int rc, const char *fmt, ...)
{
    char msg[QEMU_CMDLINE_ERRLEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (o->err)
        return o->err;
    bm_error("qemu command line: %s", msg);
    if (o->errbuf && o->errlen)
        snprintf(o->errbuf, o->errlen, "%s", msg);
    o->err = rc;
    return rc;
}

/* Takes s (malloc'd, NULL meaning ENOMEM). */
static void out_take(struct outv *o, char *s)
{
    if (!s || o->err || !qemu_grow(&o->v, o->n, sizeof *o->v)) {
        free(s);
        if (!o->err)
            fail(o, -ENOMEM, "out of memory");
        return;
    }
    o->v[o->n++] = s;
}

static void out_str(struct outv *o, const char *s)
{
    out_take(o, strdup(s));
}

static void out_opt(struct outv *o, const char *name)
{
    char *s = malloc(strlen(name) + 2);
    if (s)
        sprintf(s, "-%s", name);
    out_take(o, s);
}

/* Packs the vector into one allocation: n+1 pointers, then the strings. */
static int out_finish(struct outv *o, char ***argv_out)
{
    size_t bytes = (o->n + 1) * sizeof(char *);
    char **argv = NULL;
    for (size_t i = 0; !o->err && i < o->n; i++)
        bytes += strlen(o->v[i]) + 1;
    if (!o->err && !(argv = malloc(bytes)))
        fail(o, -ENOMEM, "out of memory");
    if (argv) {
        char *p = (char *)(argv + o->n + 1);
        for (size_t i = 0; i < o->n; i++) {
            size_t n = strlen(o->v[i]) + 1;
            argv[i] = memcpy(p, o->v[i], n);
            p += n;
        }
        argv[o->n] = NULL;
    }
    for (size_t i = 0; i < o->n; i++)
        free(o->v[i]);
    free(o->v);
    *argv_out = argv;
    return o->err;
}

/* blkmig's own QMP monitor: "-qmp unix:PATH,server=on,wait=off". */
static void out_qmp(struct outv *o, const char *qmp_path)
{
    if (!qmp_path || !*qmp_path || strlen(qmp_path) >= sizeof((struct sockaddr_un *)0)->sun_path) {
        fail(o, -ENAMETOOLONG, "blkmig's QMP socket path is empty or too long for a socket");
        return;
    }
    char *esc = qemu_comma_escape(qmp_path);
    char *s = esc ? malloc(strlen(esc) + 32) : NULL;
    if (s)
        sprintf(s, "unix:%s,server=on,wait=off", esc);
    free(esc);
    out_str(o, "-qmp");
    out_take(o, s);
}

static void out_verbatim(struct outv *o, const struct qemu_cmdline_arg *a)
{
    out_opt(o, a->def->name);
    if (a->value)
        out_str(o, a->value);
}

/* ---- Host paths moved into the run directory ---- */

struct reloc {
    const char *from;
    char *to;
};

struct relocs {
    struct reloc *r;
    size_t n;
};

static const char *reloc_find(const struct relocs *rl, const char *from)
{
    for (size_t i = 0; from && i < rl->n; i++)
        if (strcmp(rl->r[i].from, from) == 0)
            return rl->r[i].to;
    return NULL;
}

static bool reloc_taken(const struct relocs *rl, const char *to, const char *qmp_path)
{
    for (size_t i = 0; i < rl->n; i++)
        if (strcmp(rl->r[i].to, to) == 0)
            return true;
    return strcmp(to, qmp_path) == 0;
}

/* rundir/BASE, or rundir/STEM-N.EXT when that is taken by another path or blkmig's socket. */
static char *reloc_name(struct outv *o, const struct relocs *rl, const char *rundir,
                        const char *from, const char *qmp_path)
{
    const char *base = strrchr(from, '/') ? strrchr(from, '/') + 1 : from;
    if (!*base || strcmp(base, ".") == 0 || strcmp(base, "..") == 0) {
        fail(o, -EINVAL, "%s: no file name to keep", ESC(from));
        return NULL;
    }
    const char *dot = strrchr(base, '.');
    size_t stem = dot && dot != base ? (size_t)(dot - base) : strlen(base);
    size_t dlen = strlen(rundir);
    while (dlen > 1 && rundir[dlen - 1] == '/')
        dlen--;
    size_t cap = dlen + strlen(base) + 32;
    char *to = malloc(cap);
    for (unsigned n = 0; to; n++) {
        if (n == 0)
            snprintf(to, cap, "%.*s/%s", (int)dlen, rundir, base);
        else
            snprintf(to, cap, "%.*s/%.*s-%u%s", (int)dlen, rundir, (int)stem, base, n, base + stem);
        if (!reloc_taken(rl, to, qmp_path))
            return to;
    }
    fail(o, -ENOMEM, "out of memory");
    return NULL;
}

static int relocate(struct outv *o, const struct qemu_cmdline *cl, const char *rundir,
                    const char *qmp_path, struct relocs *rl)
{
    *rl = (struct relocs){0};
    if (!rundir || !*rundir)
        return fail(o, -EINVAL, "no run directory");
    if (!(rl->r = calloc(cl->npaths + 1, sizeof *rl->r)))
        return fail(o, -ENOMEM, "out of memory");
    for (size_t i = 0; i < cl->npaths; i++) {
        const struct qemu_hostpath *p = &cl->paths[i];
        const char *to = reloc_find(rl, p->path);
        if (!to) {
            char *name = reloc_name(o, rl, rundir, p->path, qmp_path);
            if (!name)
                return o->err;
            rl->r[rl->n++] = (struct reloc){.from = p->path, .to = name};
            to = name;
        }
        if (p->kind == QEMU_PATH_SOCKET && strlen(to) >= sizeof((struct sockaddr_un *)0)->sun_path)
            return fail(o, -ENAMETOOLONG, "%s: %s is too long for a socket path", p->owner,
                        ESC(to));
    }
    return 0;
}

static void relocs_free(struct relocs *rl)
{
    for (size_t i = 0; i < rl->n; i++)
        free(rl->r[i].to);
    free(rl->r);
}

static void out_chardev(struct outv *o, const struct qemu_cmdline_arg *a, const struct relocs *rl)
{
    const char *keys[2], *vals[2];
    size_t n = 0;
    const char *path = reloc_find(rl, qemu_kv_get(&a->kv, "path"));
    const char *log = reloc_find(rl, qemu_kv_get(&a->kv, "logfile"));
    const char *backend = qemu_kv_get(&a->kv, "backend");
    /* Only the backends whose path the parser took as host-local (not serial, tty...). */
    if (path && (strcmp(backend, "socket") == 0 || strcmp(backend, "file") == 0 ||
                 strcmp(backend, "pipe") == 0)) {
        keys[n] = "path";
        vals[n++] = path;
    }
    if (log) {
        keys[n] = "logfile";
        vals[n++] = log;
    }
    out_opt(o, a->def->name);
    out_take(o, qemu_kv_format(&a->kv, keys, vals, n));
}

static void out_chrspec(struct outv *o, const struct qemu_cmdline_arg *a, const struct relocs *rl)
{
    char *path = NULL;
    int kind = qemu_chrspec_path(a->value, &path);
    if (kind == -ENOMEM)
        fail(o, -ENOMEM, "out of memory");
    const char *to = kind >= 0 ? reloc_find(rl, path) : NULL;
    free(path);
    out_opt(o, a->def->name);
    if (to)
        out_take(o, qemu_chrspec_replace(a->value, to));
    else
        out_str(o, a->value);
}

/* ---- Disks ---- */

/* Checks images[] against the disks: each entry names a disk once, with a path; *img[k] is
 * disk k's entry or NULL (only for a read-only disk, which keeps its file). */
static int match_images(struct outv *o, const struct qemu_cmdline *cl,
                        const struct qemu_cmdline_image *images, size_t nimages,
                        const struct qemu_cmdline_image **img)
{
    for (size_t i = 0; i < nimages; i++) {
        const struct qemu_cmdline_image *im = &images[i];
        size_t k = 0;
        while (k < cl->ndisks && (!im->disk || strcmp(cl->disks[k].name, im->disk) != 0))
            k++;
        if (k == cl->ndisks)
            return fail(o, -EINVAL, "an image for %s, which is no disk of the line",
                        im->disk ? ESC(im->disk) : "(null)");
        if (img[k])
            return fail(o, -EINVAL, "two images for disk %s", ESC(im->disk));
        if (!im->path || !*im->path)
            return fail(o, -EINVAL, "disk %s: an image without a path", ESC(im->disk));
        img[k] = im;
    }
    for (size_t k = 0; k < cl->ndisks; k++)
        if (!img[k] && !cl->disks[k].readonly)
            return fail(o, -ENOENT, "disk %s: no image given for the destination",
                        ESC(cl->disks[k].name));
    return 0;
}

static void out_drive(struct outv *o, const struct qemu_cmdline_arg *a,
                      const struct qemu_cmdline_image *im)
{
    const char *keys[2], *vals[2];
    size_t n = 0;
    keys[n] = qemu_kv_get(&a->kv, "file.filename") ? "file.filename" : "file";
    vals[n++] = im->path;
    if (im->format) {
        keys[n] = qemu_kv_get(&a->kv, "driver") ? "driver" : "format";
        vals[n++] = im->format;
    }
    out_opt(o, "drive");
    out_take(o, qemu_kv_format(&a->kv, keys, vals, n));
}

/* A legacy disk option with a new image: kept as is, or, to name the format, written as the
 * -drive QEMU makes of it (vl.c's drive_add: HD_OPTS, CDROM_OPTS, FD_OPTS...). */
static void out_legacy(struct outv *o, const struct qemu_cmdline_arg *a,
                       const struct qemu_cmdline_image *im)
{
    static const struct {
        const char *opt, *extra;
    } eq[] = {{"hda", "index=0,media=disk"},    {"hdb", "index=1,media=disk"},
              {"hdc", "index=2,media=disk"},    {"hdd", "index=3,media=disk"},
              {"cdrom", "index=2,media=cdrom"}, {"fda", "if=floppy,index=0"},
              {"fdb", "if=floppy,index=1"},     {"sd", "if=sd"},
              {"mtdblock", "if=mtd"},           {"pflash", "if=pflash"}};
    if (!im->format) {
        out_opt(o, a->def->name);
        out_str(o, im->path); /* QEMU takes the legacy argument verbatim, commas too */
        return;
    }
    const char *extra = "";
    for (size_t i = 0; i < sizeof eq / sizeof eq[0]; i++)
        if (strcmp(eq[i].opt, a->def->name) == 0)
            extra = eq[i].extra;
    char *p = qemu_comma_escape(im->path), *f = qemu_comma_escape(im->format);
    char *s = p && f ? malloc(strlen(p) + strlen(f) + strlen(extra) + 32) : NULL;
    if (s)
        sprintf(s, "file=%s,format=%s,%s", p, f, extra);
    free(p);
    free(f);
    out_opt(o, "drive");
    out_take(o, s);
}

static int bd_set(struct json_object *o, const char *key, const char *value)
{
    struct json_object *v = json_object_new_string(value);
    return v ? json_object_object_add(o, key, v) : -1;
}

/* A -blockdev with the file and format nodes of mapped disks changed, in its own syntax. */
static void out_blockdev(struct outv *o, const struct qemu_cmdline *cl, size_t arg,
                         const struct qemu_cmdline_image **img)
{
    const struct qemu_cmdline_arg *a = &cl->args[arg];
    struct json_object *copy = NULL;
    if (json_object_deep_copy(a->bd, &copy, NULL) < 0) {
        fail(o, -ENOMEM, "out of memory");
        return;
    }
    for (size_t k = 0; k < cl->ndisks; k++) {
        const struct qemu_disk_internal *di = &cl->dint[k];
        if (cl->disks[k].kind != QEMU_DISK_BLOCKDEV || !img[k])
            continue;
        if (di->leaf.arg == arg &&
            bd_set(qemu_bd_child(copy, di->leaf.depth), "filename", img[k]->path) < 0)
            fail(o, -ENOMEM, "out of memory");
        if (!img[k]->format)
            continue;
        if (!di->has_fmt && strcmp(img[k]->format, "raw") != 0)
            fail(o, -ENOTSUP, "disk %s: a %s image for a node without a format layer",
                 ESC(cl->disks[k].name), ESC(img[k]->format));
        else if (di->has_fmt && di->fmt.arg == arg &&
                 bd_set(qemu_bd_child(copy, di->fmt.depth), "driver", img[k]->format) < 0)
            fail(o, -ENOMEM, "out of memory");
    }
    out_opt(o, "blockdev");
    out_take(o, qemu_bd_format(copy, a->bd_json));
    json_object_put(copy);
}

/* ---- The whole line ---- */

/* Whether chardev id is used by anything but a monitor (a -device, a -serial chardev:ID...):
 * a monitor's own chardev goes with it on the destination, a shared one stays. */
static bool chardev_shared(const struct qemu_cmdline *cl, const char *id)
{
    for (size_t i = 0; i < cl->nargs; i++) {
        const struct qemu_cmdline_arg *a = &cl->args[i];
        const char *name = a->def->name;
        if (strcmp(name, "device") == 0 && strcmp(qemu_kv_get(&a->kv, "chardev") ?: "", id) == 0)
            return true;
        if ((a->def->flags & QOPT_CHRSPEC) && strcmp(name, "monitor") != 0 &&
            strncmp(a->value, "chardev:", 8) == 0 && strcmp(a->value + 8, id) == 0)
            return true;
    }
    return false;
}

static bool chardev_dropped(const struct qemu_cmdline *cl, const struct qemu_cmdline_arg *a)
{
    const char *id = qemu_kv_get(&a->kv, "id");
    for (size_t m = 0; id && m < cl->nmonitors; m++)
        if (cl->monitors[m].chardev && strcmp(cl->monitors[m].chardev, id) == 0)
            return !chardev_shared(cl, id);
    return false;
}

/* The options the destination drops: the user's monitors (blkmig's QMP replaces them, and a
 * second QEMU on the same host must not bind their sockets), detaching and its pid file
 * (blkmig is QEMU's parent and knows its pid), -incoming (replaced by "defer") and -S: a
 * destination under -incoming runs no vCPU until the migration completes, and then resumes
 * only if the source was running (QEMU carries the run state in its stream); blkmig's disks
 * are complete by then (the source pauses at pre-switchover for that), so there is nothing to
 * do between arrival and resume, and -S would only add a "cont" round trip to the pause. */
static bool dest_drops(const char *opt)
{
    static const char *const drop[] = {"qmp",     "qmp-pretty", "monitor",  "mon", "daemonize",
                                       "pidfile", "S",          "incoming", NULL};
    for (const char *const *d = drop; *d; d++)
        if (strcmp(*d, opt) == 0)
            return true;
    return false;
}

static void dest_arg(struct outv *o, const struct qemu_cmdline *cl, size_t i,
                     const struct qemu_cmdline_image **img, const struct relocs *rl)
{
    const struct qemu_cmdline_arg *a = &cl->args[i];
    const char *opt = a->def->name;
    if (dest_drops(opt))
        return;
    if (a->disk >= 0 && img[a->disk]) {
        if (strcmp(opt, "drive") == 0)
            out_drive(o, a, img[a->disk]);
        else
            out_legacy(o, a, img[a->disk]);
    } else if (a->bd) {
        out_blockdev(o, cl, i, img);
    } else if (strcmp(opt, "chardev") == 0) {
        if (!chardev_dropped(cl, a))
            out_chardev(o, a, rl);
    } else if (a->def->flags & QOPT_CHRSPEC) {
        out_chrspec(o, a, rl);
    } else if (strcmp(opt, "D") == 0) {
        const char *to = reloc_find(rl, a->value);
        out_opt(o, opt);
        out_str(o, to ? to : a->value);
    } else {
        out_verbatim(o, a);
    }
}

int qemu_cmdline_dest_argv(const struct qemu_cmdline *cl, const struct qemu_cmdline_image *images,
                           size_t nimages, const char *rundir, const char *qmp_path,
                           char ***argv_out, char *err, size_t errlen)
{
    struct outv o = {.errbuf = err, .errlen = errlen};
    struct relocs rl = {0};
    const struct qemu_cmdline_image **img = calloc(cl->ndisks + 1, sizeof *img);
    *argv_out = NULL;
    if (err && errlen)
        err[0] = '\0';
    if (!img)
        fail(&o, -ENOMEM, "out of memory");
    else if (match_images(&o, cl, images, nimages, img) == 0 &&
             relocate(&o, cl, rundir, qmp_path ? qmp_path : "", &rl) == 0) {
        out_str(&o, cl->binary);
        for (size_t i = 0; i < cl->nargs && !o.err; i++)
            dest_arg(&o, cl, i, img, &rl);
        out_qmp(&o, qmp_path);
        out_str(&o, "-incoming");
        out_str(&o, "defer");
    }
    relocs_free(&rl);
    free(img);
    return out_finish(&o, argv_out);
}

/* The source keeps the user's monitors: QEMU serves any number of QMP and HMP monitors, and
 * the operator's tooling (a libvirt-like manager, a console) keeps working beside blkmig's.
 * Commands there that change the VM under a migration (migrate_cancel, device_del, a second
 * migrate) are the operator's to avoid, as with libvirt's own monitor. -daemonize goes:
 * blkmig must stay QEMU's parent to supervise it, and a daemonized QEMU's exit could not be
 * waited for. -pidfile stays (harmless, and the operator's scripts may read it). */
int qemu_cmdline_source_argv(const struct qemu_cmdline *cl, const char *qmp_path, char ***argv_out,
                             char *err, size_t errlen)
{
    struct outv o = {.errbuf = err, .errlen = errlen};
    *argv_out = NULL;
    if (err && errlen)
        err[0] = '\0';
    if (cl->incoming)
        fail(&o, -EINVAL, "-incoming: a source line starts a running VM, not a destination");
    out_str(&o, cl->binary);
    for (size_t i = 0; i < cl->nargs && !o.err; i++)
        if (strcmp(cl->args[i].def->name, "daemonize") != 0)
            out_verbatim(&o, &cl->args[i]);
    out_qmp(&o, qmp_path);
    return out_finish(&o, argv_out);
}
