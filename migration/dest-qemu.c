/* dest-qemu.c: the destination of a QEMU VM: new images, the destination QEMU started with the
 * source's command line rewritten, its NBD server taking the disks, its incoming migration
 * taking RAM and devices (docs/architecture.md §8.9). */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <libnbd.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/run.h"
#include "common/sock.h"
#include "migration/dest-internal.h"
#include "migration/qemu-migration.h"
#include "migration/stream.h"
#include "vm/qemu/cmdline.h"
#include "vm/qemu/qdisk.h"
#include "vm/qemu/qemu.h"
#include "vm/qemu/qmig.h"

#define START_TIMEOUT_MS 30000
#define IMG_TIMEOUT_MS   60000
#define PING_NS          50000000ull

struct qimage {
    char name[VM_DISK_NAME_MAX];
    char drive[256];  /* the disk's name in the source's command line */
    char format[16];
    uint64_t size;
    char path[4096];
    bool created;
    char node[QEMU_DISK_NODE_MAX];
    char export[80];
};

struct qdest {
    const struct mig_incoming_opts *o;
    struct mig_conn *c;
    char *err;
    size_t errlen;
    bool verify;
    int major, minor, micro;  /* the source's QEMU */
    struct qemu_cmdline *cl;
    struct qimage img[VM_MAX_DISKS];
    unsigned n;
    char rundir[96];
    bool rundir_made; /* by this migration: removed with it if it failed */
    char qmp[128];
    struct qemu_vm *vm;
    int nbd_port;
    bool nbd_started;
    uint64_t last_ping_ns, last_heard_ns;
};

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int failq(struct qdest *q, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int failq(struct qdest *q, int r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(q->err, q->errlen, fmt, ap);
    va_end(ap);
    return r < 0 ? r : -EIO;
}

static const char *str_member(struct json_object *o, const char *key)
{
    struct json_object *x;
    return json_object_object_get_ex(o, key, &x) && json_object_is_type(x, json_type_string)
               ? json_object_get_string(x)
               : NULL;
}

/* ---- what the source sent ---- */

static int parse_disks(struct qdest *q, struct json_object *disks)
{
    int r = mig_disks_check(disks, q->err, q->errlen);
    if (r < 0)
        return r;
    q->n = (unsigned)json_object_array_length(disks);
    for (unsigned k = 0; k < q->n; k++) {
        struct json_object *e = json_object_array_get_idx(disks, k), *x;
        struct qimage *m = &q->img[k];
        const char *drive = str_member(e, "drive"), *fmt = str_member(e, "format");
        if (!drive || !fmt || strlen(drive) >= sizeof m->drive)
            return failq(q, -EPROTO, "disk %u of the QEMU VM has no drive or format", k);
        if (strcmp(fmt, "raw") != 0 && strcmp(fmt, "qcow2") != 0)
            return failq(q, -ENOTSUP, "disk %s: format %.32s is not one blkmig creates (raw, "
                         "qcow2)", drive, fmt);
        json_object_object_get_ex(e, "name", &x);
        snprintf(m->name, sizeof m->name, "%s", json_object_get_string(x));
        json_object_object_get_ex(e, "size", &x);
        m->size = (uint64_t)json_object_get_int64(x);
        snprintf(m->drive, sizeof m->drive, "%s", drive);
        snprintf(m->format, sizeof m->format, "%s", fmt);
        bool known = false;
        for (size_t i = 0; i < q->cl->ndisks; i++)
            known |= strcmp(q->cl->disks[i].name, drive) == 0;
        if (!known)
            return failq(q, -EPROTO, "disk %s is not on the VM's command line", drive);
    }
    return 0;
}

/* This host's QEMU: the one asked for, else the source's binary name looked up in PATH; its
 * version must be the source's (major and minor: the migration stream and machine types
 * change between them). */
static int check_qemu(struct qdest *q, const char **binary)
{
    const char *b = q->o->qemu_binary;
    if (!b) {
        /* The peer names the program this host runs: only a qemu-system-* by its base name,
         * looked up in PATH (--qemu-binary for anything else). */
        const char *slash = strrchr(q->cl->binary, '/');
        b = slash ? slash + 1 : q->cl->binary;
        size_t n = strlen(b);
        if (strncmp(b, "qemu-system-", 12) != 0 || n == 12 || n > 64 ||
            strspn(b + 12, "abcdefghijklmnopqrstuvwxyz0123456789_") != n - 12)
            return failq(q, -EPERM, "the source's QEMU binary is not a qemu-system-* name: "
                                    "--qemu-binary chooses the one to run here");
    }
    *binary = b;
    char out[512];
    const char *argv[] = {b, "--version", NULL};
    int r = bm_run(argv, out, sizeof out, 10000);
    if (r == -ENOENT)
        return failq(q, r, "no QEMU %s on the destination (--qemu-binary chooses one)", b);
    int ma, mi, mc;
    const char *v = strstr(out, "version ");
    if (r != 0 || !v || sscanf(v, "version %d.%d.%d", &ma, &mi, &mc) != 3)
        return failq(q, r < 0 ? r : -EINVAL, "%s --version did not tell its version", b);
    if (ma != q->major || mi != q->minor)
        return failq(q, -EPROTO,
                     "the destination's QEMU is %d.%d.%d, the source's %d.%d.%d: both hosts need "
                     "the same QEMU version",
                     ma, mi, mc, q->major, q->minor, q->micro);
    return 0;
}

/* ---- images ---- */

static int create_images(struct qdest *q)
{
    if (!q->o->disk_dir)
        return failq(q, -EINVAL, "a QEMU VM's disks need --disk-dir on the destination");
    uint64_t total = 0;
    for (unsigned k = 0; k < q->n; k++)
        total += q->img[k].size;
    struct statvfs sv;
    uint64_t avail = statvfs(q->o->disk_dir, &sv) == 0 ? (uint64_t)sv.f_bavail * sv.f_frsize : 0;
    uint64_t allowed = q->o->max_disk ? q->o->max_disk : avail;
    if (total > allowed)
        return failq(q, -ENOSPC, "the VM's disks need %llu bytes, %s has %llu (%s)",
                     (unsigned long long)total, q->o->disk_dir, (unsigned long long)allowed,
                     q->o->max_disk ? "--max-disk" : "free space");
    for (unsigned k = 0; k < q->n; k++) {
        struct qimage *m = &q->img[k];
        char name[VM_DISK_NAME_MAX];
        snprintf(name, sizeof name, "%s", m->name);
        if ((size_t)snprintf(m->path, sizeof m->path, "%s/%s.%s", q->o->disk_dir, name,
                             strcmp(m->format, "raw") == 0 ? "img" : "qcow2") >= sizeof m->path)
            return failq(q, -ENAMETOOLONG, "--disk-dir is too long");
        /* The name must be free: created here, exclusively, before qemu-img writes it. */
        int fd = open(m->path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0)
            return failq(q, -errno, "cannot create %s for disk %s: %s", m->path, m->name,
                         strerror(errno));
        close(fd);
        m->created = true;
        char size[32], out[1024];
        snprintf(size, sizeof size, "%llu", (unsigned long long)m->size);
        const char *argv[] = {"qemu-img", "create", "-q", "-f", m->format, m->path, size, NULL};
        int r = bm_run(argv, out, sizeof out, IMG_TIMEOUT_MS);
        if (r != 0)
            return failq(q, r < 0 ? r : -EIO, "qemu-img create of %s failed: %s", m->path,
                         r == -ENOENT ? "no qemu-img (package qemu-utils)" : out);
    }
    return 0;
}

static void remove_images(struct qdest *q)
{
    for (unsigned k = 0; k < q->n; k++)
        if (q->img[k].created && unlink(q->img[k].path) == 0)
            q->img[k].created = false;
}

/* ---- the destination QEMU ---- */

static int start_qemu(struct qdest *q, const char *binary)
{
    if (q->o->run_dir) {
        if ((size_t)snprintf(q->rundir, sizeof q->rundir, "%s", q->o->run_dir) >=
            sizeof q->rundir)
            return failq(q, -ENAMETOOLONG, "--run-dir %s: too long for QEMU's sockets",
                         q->o->run_dir);
        if (mkdir(q->rundir, 0700) == 0)
            q->rundir_made = true;
        else if (errno != EEXIST)
            return failq(q, -errno, "--run-dir %s: %s", q->rundir, strerror(errno));
    } else if (!mkdtemp(strcpy(q->rundir, "/tmp/blkmig-qemu-in.XXXXXX"))) {
        return failq(q, -errno, "cannot make a run directory: %s", strerror(errno));
    } else {
        q->rundir_made = true;
    }
    snprintf(q->qmp, sizeof q->qmp, "%s/qmp.sock", q->rundir);
    struct qemu_cmdline_image im[VM_MAX_DISKS];
    for (unsigned k = 0; k < q->n; k++)
        im[k] = (struct qemu_cmdline_image){q->img[k].drive, q->img[k].path, q->img[k].format};
    char **argv;
    char e[QEMU_CMDLINE_ERRLEN];
    int r = qemu_cmdline_dest_argv(q->cl, im, q->n, q->rundir, q->qmp, &argv, e, sizeof e);
    if (r < 0)
        return failq(q, r, "the VM's command line cannot be made for this host: %s", e);
    int argc = 0;
    while (argv[argc])
        argc++;
    argv[0] = (char *)binary;
    /* Held (-S) after its incoming migration: the guest runs only once RESUMED is sent, so
     * that it never runs on both hosts (a source that hears no RESUMED resumes its own). */
    r = qemu_vm_launch_incoming(argc, (const char *const *)argv, q->qmp, true, START_TIMEOUT_MS,
                                &q->vm, q->err, q->errlen);
    free(argv);
    return r;
}

/* The node of each new image in the destination QEMU (matched by file name). */
static int find_nodes(struct qdest *q)
{
    unsigned n;
    const struct qemu_disk_info *di = qemu_vm_disks(q->vm, &n);
    for (unsigned k = 0; k < q->n; k++) {
        struct qimage *m = &q->img[k];
        for (unsigned i = 0; i < n && !m->node[0]; i++)
            if (strcmp(di[i].file, m->path) == 0)
                snprintf(m->node, sizeof m->node, "%s", di[i].node);
        if (!m->node[0])
            return failq(q, -ENOENT, "the destination QEMU does not show the image %s", m->path);
    }
    return 0;
}

/* A listening socket for QEMU's NBD server on the migration's NBD port: the host asked for,
 * else every address (IPv6 with IPv4 mapped, or IPv4 alone). */
static int nbd_listener(struct qdest *q)
{
    if (q->o->host && *q->o->host) {
        int fds[8];
        int n = bm_listen_tcp(q->o->host, q->o->nbd_port, fds, 8);
        if (n < 0)
            return n;
        for (int i = 1; i < n; i++)
            close(fds[i]);
        return fds[0];
    }
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0), zero = 0, one = 1;
    if (fd >= 0) {
        struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = in6addr_any,
                                 .sin6_port = htons((uint16_t)atoi(q->o->nbd_port))};
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && listen(fd, 64) == 0)
            return fd;
        close(fd);
    }
    int fds[8];
    int n = bm_listen_tcp("0.0.0.0", q->o->nbd_port, fds, 8);
    return n < 0 ? n : fds[0];
}

static int serve_disks(struct qdest *q, struct json_object *exports)
{
    struct qemu_mon *mon = qemu_vm_mon(q->vm);
    int l = nbd_listener(q);
    if (l < 0)
        return failq(q, l, "cannot listen on NBD port %s: %s", q->o->nbd_port, strerror(-l));
    int r = qemu_mon_getfd(mon, l, "blkmig-nbd", q->err, q->errlen);
    close(l);
    if (r < 0)
        return r;
    struct json_object *addr =
        qemu_obj("type", json_object_new_string("fd"), "data",
                 qemu_obj("str", json_object_new_string("blkmig-nbd"), NULL), NULL);
    r = qemu_mon_exec(mon, "nbd-server-start", qemu_obj("addr", addr, NULL), NULL, q->err,
                      q->errlen);
    if (r < 0)
        return r;
    q->nbd_started = true;
    for (unsigned k = 0; k < q->n; k++) {
        struct qimage *m = &q->img[k];
        uint8_t rnd[16];
        if (getrandom(rnd, sizeof rnd, 0) != sizeof rnd)
            return failq(q, -EIO, "no randomness for the export names");
        for (int i = 0; i < 16; i++)
            snprintf(m->export + 2 * i, 3, "%02x", rnd[i]);
        char name[VM_DISK_NAME_MAX];
        snprintf(name, sizeof name, "%s", m->name);
        snprintf(m->export + 32, sizeof m->export - 32, "-%s", name);
        char id[96];
        snprintf(id, sizeof id, "blkmig-%s", m->name);
        r = qemu_mon_exec(mon, "block-export-add",
                          qemu_obj("type", json_object_new_string("nbd"), "id",
                                   json_object_new_string(id), "node-name",
                                   json_object_new_string(m->node), "name",
                                   json_object_new_string(m->export), "writable",
                                   json_object_new_boolean(true), NULL),
                          NULL, q->err, q->errlen);
        if (r < 0)
            return r;
        json_object_object_add(exports, m->name, json_object_new_string(m->export));
    }
    return 0;
}

static void stop_serving(struct qdest *q)
{
    if (!q->nbd_started)
        return;
    char e[512];
    struct qemu_mon *mon = qemu_vm_mon(q->vm);
    if (qemu_mon_exec(mon, "nbd-server-stop", NULL, NULL, e, sizeof e) < 0)
        bm_warn("incoming: %s", e);
    q->nbd_started = false;
}

/* QEMU's incoming migration on a port the kernel picks (QEMU reports it). */
static int incoming(struct qdest *q, int *port)
{
    char uri[300];
    const char *h = q->o->host && *q->o->host ? q->o->host : "0.0.0.0";
    snprintf(uri, sizeof uri, strchr(h, ':') ? "tcp:[%s]:0" : "tcp:%s:0", h);
    struct qemu_mon *mon = qemu_vm_mon(q->vm);
    int r = qemu_mig_incoming(mon, uri, q->err, q->errlen);
    if (r < 0)
        return r;
    struct json_object *ret, *sa, *p;
    r = qemu_mon_exec_type(mon, "query-migrate", NULL, json_type_object, &ret, q->err,
                           q->errlen);
    if (r < 0)
        return r;
    *port = 0;
    if (json_object_object_get_ex(ret, "socket-address", &sa) &&
        json_object_is_type(sa, json_type_array) && json_object_array_length(sa) > 0 &&
        json_object_object_get_ex(json_object_array_get_idx(sa, 0), "port", &p))
        *port = atoi(json_object_get_string(p));
    json_object_put(ret);
    if (*port <= 0 || *port > 65535)
        return failq(q, -EPROTO, "the destination QEMU did not say which port it listens on");
    return 0;
}

/* ---- the stream ---- */

/* Read the source's frames until COMPLETE (its QEMU has completed), keeping the link alive
 * and watching the destination QEMU. Returns the COMPLETE object. */
static int receive(struct qdest *q, struct json_object **complete)
{
    for (;;) {
        if (q->o->stop && *q->o->stop)
            return failq(q, -EINTR, "interrupted (signal) while receiving the VM");
        char why[256];
        if (vm_dead(qemu_vm_base(q->vm), why, sizeof why))
            return failq(q, -ECHILD, "the destination QEMU stopped: %s", why);
        uint64_t now = now_ns();
        if (now - q->last_ping_ns >= PING_NS) {
            q->last_ping_ns = now;
            if (mig_send(q->c, MIG_PING, NULL, 0) < 0)
                return failq(q, -ECONNRESET, "the source went away");
        }
        uint32_t type, len;
        uint8_t *pl;
        int r = mig_recv(q->c, 50, &type, &pl, &len);
        if (r == -ETIMEDOUT && !q->c->partial) {
            if (now_ns() - q->last_heard_ns <= (uint64_t)q->o->peer_timeout_ms * 1000000u)
                continue;
            return failq(q, r, "no word from the source for %u ms (link lost?)",
                         q->o->peer_timeout_ms);
        }
        if (r < 0)
            return failq(q, r, "the source's stream broke: %s",
                         r == -ECONNRESET ? "connection closed (source gone?)" : strerror(-r));
        q->last_heard_ns = now_ns();
        if (type == MIG_PING)
            continue;
        if (type == MIG_ABORT) {
            char reason[256];
            return failq(q, -ECONNABORTED, "the source gave up: %s",
                         mig_abort_reason(pl, len, reason, sizeof reason));
        }
        if (type != MIG_COMPLETE)
            return failq(q, -EPROTO, "an unexpected %s frame from the source",
                         mig_frame_name(type));
        *complete = mig_parse_json(pl, len);
        return *complete ? 0 : failq(q, -EPROTO, "a malformed COMPLETE from the source");
    }
}

/* The destination QEMU has loaded everything: its incoming migration completed. */
static int await_loaded(struct qdest *q)
{
    uint64_t end = now_ns() + (uint64_t)q->o->peer_timeout_ms * 1000000u;
    struct qemu_mig_info mi;
    for (;;) {
        int r = qemu_mig_query(qemu_vm_mon(q->vm), &mi, q->err, q->errlen);
        if (r < 0)
            return r;
        if (strcmp(mi.status, "completed") == 0)
            return 0;
        if (qemu_mig_status_final(mi.status) || now_ns() > end)
            return failq(q, -EIO, "the destination QEMU's incoming migration is %s%s%s",
                         mi.status, mi.error[0] ? ": " : "", mi.error);
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

static int compare_digests(struct qdest *q, struct json_object *want, uint64_t *ms)
{
    uint64_t t = now_ns();
    struct vm *vm = qemu_vm_base(q->vm);
    int r = 0;
    for (unsigned k = 0; k < q->n && r == 0; k++) {
        char uri[512];
        const char *h = q->o->host && *q->o->host ? q->o->host : "localhost";
        bool v6 = strchr(h, ':') != NULL; /* the listener's own address: it may be no other */
        snprintf(uri, sizeof uri, "nbd://%s%s%s:%d/%s", v6 ? "[" : "", h, v6 ? "]" : "",
                 q->nbd_port, q->img[k].export);
        snprintf(vm->disks[k].name, sizeof vm->disks[k].name, "%s", q->img[k].name);
        r = qemu_nbd_reader_open(uri, q->img[k].name, q->img[k].size, &vm->disks[k].disk,
                                 q->err, q->errlen);
        if (r == 0)
            vm->ndisks = k + 1;
    }
    struct json_object *have = r == 0 ? mig_digest_vm(vm) : NULL, *wd, *hd, *a, *b;
    for (unsigned k = 0; k < vm->ndisks; k++)
        bm_disk_close(vm->disks[k].disk);
    vm->ndisks = 0;
    *ms = (now_ns() - t) / 1000000u;
    if (r < 0)
        return r;
    if (!have || !json_object_object_get_ex(want, "disks", &wd) ||
        !json_object_object_get_ex(have, "disks", &hd))
        r = failq(q, -EILSEQ, "verify: no disk digests to compare");
    for (unsigned k = 0; k < q->n && r == 0; k++)
        if (!json_object_object_get_ex(wd, q->img[k].name, &a) ||
            !json_object_object_get_ex(hd, q->img[k].name, &b) ||
            !json_object_is_type(a, json_type_string) ||
            strcmp(json_object_get_string(a), json_object_get_string(b)) != 0)
            r = failq(q, -EILSEQ, "verify: disk %s differs from the source's", q->img[k].name);
    json_object_put(have);
    return r;
}

/* Durable, with the guest running: QEMU flushes each node (its caches, format metadata
 * included, then the file) for an NBD FLUSH on a read-only export of it, which can sit beside
 * the guest's device, unlike the writable ones (stopped before the resume: with them, QEMU
 * could not give the device its permissions back as it resumed). */
static int make_durable(struct qdest *q, char *err, size_t errlen)
{
    struct qemu_mon *mon = qemu_vm_mon(q->vm);
    char path[128];
    snprintf(path, sizeof path, "%s/flush.sock", q->rundir);
    struct json_object *addr =
        qemu_obj("type", json_object_new_string("unix"), "data",
                 qemu_obj("path", json_object_new_string(path), NULL), NULL);
    int r = qemu_mon_exec(mon, "nbd-server-start", qemu_obj("addr", addr, NULL), NULL, err,
                          errlen);
    if (r < 0)
        return r;
    q->nbd_started = true;
    for (unsigned k = 0; k < q->n && r == 0; k++) {
        char id[96], uri[256];
        snprintf(id, sizeof id, "blkmig-flush-%s", q->img[k].name);
        r = qemu_mon_exec(mon, "block-export-add",
                          qemu_obj("type", json_object_new_string("nbd"), "id",
                                   json_object_new_string(id), "node-name",
                                   json_object_new_string(q->img[k].node), "name",
                                   json_object_new_string(id), "writable",
                                   json_object_new_boolean(false), NULL),
                          NULL, err, errlen);
        if (r < 0)
            break;
        snprintf(uri, sizeof uri, "nbd+unix:///%s?socket=%s", id, path);
        struct nbd_handle *h = nbd_create();
        if (!h || nbd_connect_uri(h, uri) < 0 || nbd_flush(h, 0) < 0) {
            snprintf(err, errlen, "flushing disk %s (%s): %s", q->img[k].name, q->img[k].path,
                     nbd_get_error());
            r = -EIO;
        }
        if (h)
            nbd_close(h);
    }
    stop_serving(q);
    unlink(path);
    return r;
}

static void send_json(struct qdest *q, uint32_t type, struct json_object *o)
{
    mig_send_json(q->c, type, o);
    json_object_put(o);
}

/* ---- the whole ---- */

/* What HELLO says of the VM, checked (no side effect: the fuzz harness calls it too). */
static int parse_hello(struct qdest *q, struct json_object *h)
{
    struct json_object *vmd, *x, *argv, *wd, *vf;
    json_object_object_get_ex(h, "vm", &vmd);
    q->verify = json_object_object_get_ex(h, "verify", &vf) && json_object_get_boolean(vf);
    if (!json_object_object_get_ex(h, "with_disk", &wd) || !json_object_get_boolean(wd))
        return failq(q, -ENOTSUP, "a QEMU VM migrates --with-disk (shared storage is QEMU's own "
                     "migrate's job)");
    if (!json_object_object_get_ex(vmd, "version", &x) ||
        sscanf(json_object_get_string(x), "%d.%d.%d", &q->major, &q->minor, &q->micro) != 3)
        return failq(q, -EPROTO, "the QEMU VM's description has no QEMU version");
    if (!json_object_object_get_ex(vmd, "argv", &argv) ||
        !json_object_is_type(argv, json_type_array) || json_object_array_length(argv) < 1 ||
        json_object_array_length(argv) > QEMU_CMDLINE_MAX_ARGS)
        return failq(q, -EPROTO, "the QEMU VM's description has no command line");
    size_t argc = json_object_array_length(argv);
    const char **av = calloc(argc + 1, sizeof *av);
    if (!av)
        return failq(q, -ENOMEM, "out of memory");
    for (size_t i = 0; i < argc; i++) {
        struct json_object *a = json_object_array_get_idx(argv, i);
        av[i] = json_object_is_type(a, json_type_string) ? json_object_get_string(a) : NULL;
        if (!av[i] || strlen(av[i]) != (size_t)json_object_get_string_len(a)) {
            free(av);
            return failq(q, -EPROTO, "the QEMU VM's command line has a bad argument");
        }
    }
    char e[QEMU_CMDLINE_ERRLEN];
    int r = qemu_cmdline_parse((int)argc, av, &q->cl, e, sizeof e);
    free(av);
    if (r < 0)
        return failq(q, r, "the QEMU VM's command line is refused here: %s", e);
    json_object_object_get_ex(vmd, "disks", &x);
    return parse_disks(q, x);
}

int mig_qemu_hello_check(struct json_object *hello, char *err, size_t errlen)
{
    struct qdest q = {.err = err, .errlen = errlen};
    int r = parse_hello(&q, hello);
    qemu_cmdline_free(q.cl);
    return r;
}

static int setup(struct qdest *q, struct json_object *h, struct json_object *ack)
{
    const char *binary = NULL;
    int qport, r;
    struct json_object *exports = json_object_new_object();
    json_object_object_add(ack, "exports", exports);
    if ((r = parse_hello(q, h)) < 0 || (r = check_qemu(q, &binary)) < 0 ||
        (r = create_images(q)) < 0 || (r = start_qemu(q, binary)) < 0 ||
        (r = find_nodes(q)) < 0 || (r = serve_disks(q, exports)) < 0 ||
        (r = incoming(q, &qport)) < 0)
        return r;
    q->nbd_port = atoi(q->o->nbd_port);
    json_object_object_add(ack, "nbd_port", json_object_new_int(q->nbd_port));
    json_object_object_add(ack, "qemu_port", json_object_new_int(qport));
    return 0;
}

static void discard(struct qdest *q)
{
    if (q->c->fd >= 0) {
        struct json_object *a = json_object_new_object();
        json_object_object_add(a, "reason", json_object_new_string(q->err));
        struct timeval tv = {1, 0};
        setsockopt(q->c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        send_json(q, MIG_ABORT, a);
    }
    if (q->vm)
        vm_destroy(qemu_vm_base(q->vm)); /* launched here: QEMU is ended */
    q->vm = NULL;
    remove_images(q);
}

static void cleanup(struct qdest *q)
{
    qemu_cmdline_free(q->cl);
    if (q->rundir[0] && q->rundir_made && !q->vm) {
        unlink(q->qmp);
        rmdir(q->rundir); /* only if empty: a file QEMU made there stays */
    }
}

int mig_qemu_incoming(const struct mig_incoming_opts *o, struct mig_conn *c,
                      struct json_object *hello, struct mig_incoming_result *res, char *err,
                      size_t errlen)
{
    struct qdest q = {.o = o, .c = c, .err = err, .errlen = errlen};
    q.last_heard_ns = now_ns();
    uint64_t t0 = now_ns();
    struct json_object *ack = json_object_new_object(), *complete = NULL, *want;
    int r = setup(&q, hello, ack);
    json_object_put(hello);
    if (r == 0 && (r = mig_send_json(c, MIG_HELLO_ACK, ack)) < 0)
        failq(&q, r, "answering the source: %s", strerror(-r));
    json_object_put(ack);
    if (r == 0)
        r = receive(&q, &complete);
    if (r == 0)
        r = await_loaded(&q);
    uint64_t digest_ms = 0;
    bool verified = false;
    if (r == 0 && json_object_object_get_ex(complete, "digests", &want)) {
        r = compare_digests(&q, want, &digest_ms);
        verified = r == 0;
    }
    json_object_put(complete);
    if (r < 0) {
        discard(&q);
        cleanup(&q);
        return r;
    }
    /* The writable exports go before the guest resumes (make_durable says why). */
    stop_serving(&q);
    /* RESUMED goes first: if it cannot be sent, the VM does not run here. */
    struct json_object *rs = json_object_new_object();
    json_object_object_add(rs, "digest_ms", json_object_new_int64((int64_t)digest_ms));
    json_object_object_add(rs, "verified", json_object_new_boolean(verified));
    r = mig_send_json(c, MIG_RESUMED, rs);
    json_object_put(rs);
    if (r < 0) {
        failq(&q, r, "cannot tell the source RESUMED: %s", strerror(-r));
        discard(&q);
        cleanup(&q);
        return r;
    }
    struct vm *vm = qemu_vm_base(q.vm);
    if ((r = vm_resume(vm)) < 0)
        bm_error("incoming: RESUMED was sent but the VM does not resume: %s", strerror(-r));
    uint64_t t_res = now_ns();
    char derr[1024] = "";
    int dr = make_durable(&q, derr, sizeof derr);
    uint64_t flush_ms = (now_ns() - t_res) / 1000000u;
    if (dr < 0)
        bm_error("incoming: the VM runs, but its disks are not durable: %s", derr);
    struct json_object *du = json_object_new_object();
    json_object_object_add(du, "ok", json_object_new_boolean(dr == 0));
    json_object_object_add(du, "flush_ms", json_object_new_int64((int64_t)flush_ms));
    if (dr < 0)
        json_object_object_add(du, "error", json_object_new_string(derr));
    send_json(&q, MIG_DURABLE, du);
    send_json(&q, MIG_REPORT, json_object_new_object()); /* no heartbeat of its own to report */
    res->vm = vm;
    res->ndisks = 0; /* QEMU's own */
    res->stats = json_object_new_object();
    json_object_object_add(res->stats, "total_ms",
                           json_object_new_int64((int64_t)((now_ns() - t0) / 1000000u)));
    json_object_object_add(res->stats, "verified", json_object_new_boolean(verified));
    json_object_object_add(res->stats, "digest_ms", json_object_new_int64((int64_t)digest_ms));
    json_object_object_add(res->stats, "durable", json_object_new_boolean(dr == 0));
    json_object_object_add(res->stats, "durable_ms", json_object_new_int64((int64_t)flush_ms));
    cleanup(&q);
    return 0;
}
