/* qdisk.c: a QEMU drive as a remote bm_disk (the QMP sequence is in qdisk.h). */
#include <config.h>

#include <errno.h>
#include <libnbd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "vm/qemu/qdisk.h"

#define MAX_STATUS       (UINT64_C(1) << 30) /* bytes asked per NBD_CMD_BLOCK_STATUS */
#define NAME_LEN         96
#define QDISK_CONNS      4

struct qemu_nbd {
    struct qemu_mon *mon;
    char path[108];
};

struct qdisk {
    struct qemu_nbd *nbd;
    struct qemu_mon *mon;
    char node[128];
    char tag[48];
    uint64_t size;
    uint32_t granularity;
    uint64_t gen;            /* the bitmap recording writes now is blkmig-TAG-gen */
    bool bitmap, frozen;     /* blkmig-TAG-gen exists; blkmig-TAG-(gen-1) exists too */
    bool exported, hexported; /* the reading export; a harvest's export */
    struct nbd_handle *h;    /* reads and base:allocation, on the reading export */
    /* More connections to it for reads, which a mirror makes on several threads at once
     * (blockmirror/mirror-readers.c): a read is a round trip, and each connection serves one
     * at a time. rh[0] is h. */
    struct nbd_handle *rh[QDISK_CONNS];
    unsigned nrh;
    atomic_uint next;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- QMP ---- */

static void bitmap_name(const struct qdisk *q, uint64_t gen, char *out)
{
    snprintf(out, NAME_LEN, "blkmig-%s-%llu", q->tag, (unsigned long long)gen);
}

static int export_add(struct qdisk *q, const char *id, const char *bitmap, char *err,
                      size_t errlen)
{
    struct json_object *bitmaps = NULL;
    if (bitmap) {
        bitmaps = json_object_new_array();
        json_object_array_add(bitmaps, json_object_new_string(bitmap));
    }
    return qemu_mon_exec(q->mon, "block-export-add",
                         qemu_obj("type", json_object_new_string("nbd"), "id",
                                  json_object_new_string(id), "node-name",
                                  json_object_new_string(q->node), "name",
                                  json_object_new_string(id), "writable",
                                  json_object_new_boolean(false), "bitmaps", bitmaps, NULL),
                         NULL, err, errlen);
}

static void export_del(struct qdisk *q, const char *id)
{
    char err[512];
    /* hard: the server closes a client still connected instead of waiting for it. */
    if (qemu_mon_exec(q->mon, "block-export-del",
                      qemu_obj("id", json_object_new_string(id), "mode",
                               json_object_new_string("hard"), NULL),
                      NULL, err, sizeof err) < 0)
        bm_warn("%s", err);
}

static int bitmap_remove(struct qdisk *q, uint64_t gen, char *err, size_t errlen)
{
    char name[NAME_LEN];
    bitmap_name(q, gen, name);
    return qemu_mon_exec(q->mon, "block-dirty-bitmap-remove",
                         qemu_obj("node", json_object_new_string(q->node), "name",
                                  json_object_new_string(name), NULL),
                         NULL, err, errlen);
}

static struct json_object *action(const char *type, struct json_object *data)
{
    return qemu_obj("type", json_object_new_string(type), "data", data, NULL);
}

/* Start recording in blkmig-TAG-(gen+1) and freeze blkmig-TAG-gen, in one step: a write is
 * in exactly one of the two. */
static int rotate(struct qdisk *q, char *err, size_t errlen)
{
    char cur[NAME_LEN], next[NAME_LEN];
    bitmap_name(q, q->gen, cur);
    bitmap_name(q, q->gen + 1, next);
    struct json_object *acts = json_object_new_array();
    json_object_array_add(
        acts, action("block-dirty-bitmap-add",
                     qemu_obj("node", json_object_new_string(q->node), "name",
                              json_object_new_string(next), "granularity",
                              json_object_new_int64(q->granularity), NULL)));
    json_object_array_add(acts, action("block-dirty-bitmap-disable",
                                       qemu_obj("node", json_object_new_string(q->node), "name",
                                                json_object_new_string(cur), NULL)));
    int r = qemu_mon_exec(q->mon, "transaction", qemu_obj("actions", acts, NULL), NULL, err,
                          errlen);
    if (r == 0) {
        q->gen++;
        q->frozen = true;
    }
    return r;
}

/* ---- NBD ---- */

static int nbd_fail(const char *what, const char *name, char *err, size_t errlen)
{
    int e = nbd_get_errno();
    snprintf(err, errlen, "%s %s: %s", what, name, nbd_get_error());
    return -(e ? e : EIO);
}

/* A connection to export name on QEMU's server, with meta context ctx. */
static int nbd_open(struct qdisk *q, const char *name, const char *ctx, struct nbd_handle **out,
                    char *err, size_t errlen)
{
    struct nbd_handle *h = nbd_create();
    if (!h) {
        snprintf(err, errlen, "libnbd: %s", nbd_get_error());
        return -ENOMEM;
    }
    int r = 0;
    if (nbd_set_export_name(h, name) < 0 || nbd_add_meta_context(h, ctx) < 0 ||
        nbd_connect_unix(h, q->nbd->path) < 0)
        r = nbd_fail("connecting to QEMU's NBD server for", name, err, errlen);
    else if (nbd_can_meta_context(h, ctx) != 1) {
        snprintf(err, errlen, "%s: QEMU's export %s does not offer %s", q->mon->name, name, ctx);
        r = -EPROTO;
    }
    if (r < 0) {
        nbd_close(h);
        return r;
    }
    *out = h;
    return 0;
}

struct status_ctx {
    const char *ctx;
    uint64_t pos, end; /* the next offset expected; the request's end */
    bool bad;
    /* Either: each extent whose flags match mask is passed to mark ... */
    uint32_t mask;
    struct bm_disk *d;
    void (*mark)(struct bm_disk *d, uint64_t offset, uint64_t len);
    /* ... or every extent is stored in ext[k < max]. */
    struct bm_extent *ext;
    size_t k, max;
};

static int status_cb(void *opaque, const char *metacontext, uint64_t offset, uint32_t *entries,
                     size_t nr_entries, int *error)
{
    struct status_ctx *c = opaque;
    (void)error;
    if (strcmp(metacontext, c->ctx) != 0)
        return 0;
    if (offset != c->pos) { /* extents start where asked: QEMU's answer is not NBD */
        c->bad = true;
        return 0;
    }
    for (size_t i = 0; i + 1 < nr_entries && c->pos < c->end; i += 2) {
        uint64_t len = entries[i];
        if (len == 0 || (c->ext && c->k == c->max))
            break;
        if (len > c->end - c->pos)
            len = c->end - c->pos; /* past what was asked: not believed */
        if (c->ext)
            c->ext[c->k++] = (struct bm_extent){c->pos, len, entries[i + 1] & 3u};
        else if (entries[i + 1] & c->mask)
            c->mark(c->d, c->pos, len);
        c->pos += len;
    }
    return 0;
}

/* Block status of [offset, end) on h through c (its ctx and consumer set), until the range is
 * covered or c's extent array is full. */
static int status(struct nbd_handle *h, const char *name, struct status_ctx *c, uint64_t offset,
                  uint64_t end, char *err, size_t errlen)
{
    c->pos = offset;
    while (c->pos < end && !(c->ext && c->k == c->max)) {
        uint64_t start = c->pos, n = end - start;
        c->end = start + (n > MAX_STATUS ? MAX_STATUS : n);
        nbd_extent_callback cb = {.callback = status_cb, .user_data = c};
        if (nbd_block_status(h, c->end - start, start, cb, 0) < 0)
            return nbd_fail("block status of", name, err, errlen);
        if (c->bad || c->pos == start) {
            snprintf(err, errlen, "QEMU's export %s: block status of %s at %llu did not describe "
                                  "the range asked",
                     name, c->ctx, (unsigned long long)start);
            return -EPROTO;
        }
    }
    return 0;
}

/* ---- the remote disk ---- */

static int q_pread(void *opaque, void *buf, size_t len, uint64_t offset)
{
    struct qdisk *q = opaque;
    if (len == 0)
        return 0;
    struct nbd_handle *h = q->nrh ? q->rh[atomic_fetch_add(&q->next, 1) % q->nrh] : q->h;
    if (nbd_pread(h, buf, len, offset, 0) < 0) {
        int e = nbd_get_errno();
        bm_error("reading %s through QEMU's export at %llu: %s", q->node,
                 (unsigned long long)offset, nbd_get_error());
        return -(e ? e : EIO);
    }
    return 0;
}

static int q_extents(void *opaque, uint64_t offset, uint64_t len, struct bm_extent *ext,
                     size_t max, size_t *n)
{
    struct qdisk *q = opaque;
    char err[512];
    struct status_ctx c = {.ctx = LIBNBD_CONTEXT_BASE_ALLOCATION, .ext = ext, .max = max};
    int r = status(q->h, q->node, &c, offset, offset + len, err, sizeof err);
    if (r < 0) {
        bm_error("%s", err);
        return r;
    }
    *n = c.k;
    return 0;
}

static int q_harvest(void *opaque, struct bm_disk *d,
                     void (*mark)(struct bm_disk *d, uint64_t offset, uint64_t len))
{
    struct qdisk *q = opaque;
    char err[512], frozen[NAME_LEN], ctx[NAME_LEN + 32], hid[NAME_LEN];
    uint64_t t[5] = {now_ns()};
    int r = rotate(q, err, sizeof err);
    t[1] = now_ns();
    if (r < 0)
        goto out;
    bitmap_name(q, q->gen - 1, frozen);
    snprintf(hid, sizeof hid, "blkmig-%s-h", q->tag);
    r = export_add(q, hid, frozen, err, sizeof err);
    if (r < 0)
        goto out;
    q->hexported = true;
    t[2] = now_ns();
    snprintf(ctx, sizeof ctx, "qemu:dirty-bitmap:%s", frozen);
    struct nbd_handle *h;
    r = nbd_open(q, hid, ctx, &h, err, sizeof err);
    if (r == 0) {
        struct status_ctx c = {.ctx = ctx, .mask = 1, .d = d, .mark = mark};
        r = status(h, hid, &c, 0, q->size, err, sizeof err);
        nbd_close(h);
    }
    t[3] = now_ns();
    export_del(q, hid);
    q->hexported = false;
    if (r < 0)
        goto out;
    /* Its blocks are marked: the frozen bitmap has served. */
    r = bitmap_remove(q, q->gen - 1, err, sizeof err);
    if (r == 0)
        q->frozen = false;
    t[4] = now_ns();
    bm_debug("%s: harvest %llu: rotate %.1f ms, export %.1f ms, read %.1f ms, clean up %.1f ms",
             q->node, (unsigned long long)q->gen - 1, (double)(t[1] - t[0]) / 1e6,
             (double)(t[2] - t[1]) / 1e6, (double)(t[3] - t[2]) / 1e6,
             (double)(t[4] - t[3]) / 1e6);
out:
    if (r < 0)
        bm_error("%s", err);
    return r;
}

static void q_close(void *opaque)
{
    struct qdisk *q = opaque;
    char err[512];
    for (unsigned i = 1; i < q->nrh; i++)
        nbd_close(q->rh[i]);
    if (q->h)
        nbd_close(q->h);
    if (!q->mon) { /* a plain reader: nothing of ours in QEMU */
        free(q);
        return;
    }
    char id[NAME_LEN];
    if (q->hexported) {
        snprintf(id, sizeof id, "blkmig-%s-h", q->tag);
        export_del(q, id);
    }
    if (q->exported) {
        snprintf(id, sizeof id, "blkmig-%s", q->tag);
        export_del(q, id);
    }
    if (q->frozen && bitmap_remove(q, q->gen - 1, err, sizeof err) < 0)
        bm_warn("%s", err);
    if (q->bitmap && bitmap_remove(q, q->gen, err, sizeof err) < 0)
        bm_warn("%s", err);
    free(q);
}

/* ---- opening ---- */

static bool tag_ok(const char *tag)
{
    size_t n = strlen(tag);
    return n > 0 && n < 40 && strspn(tag, "abcdefghijklmnopqrstuvwxyz0123456789_-") == n;
}

static int setup(struct qdisk *q, char *err, size_t errlen)
{
    char name[NAME_LEN], id[NAME_LEN];
    bitmap_name(q, q->gen, name);
    int r = qemu_mon_exec(q->mon, "block-dirty-bitmap-add",
                          qemu_obj("node", json_object_new_string(q->node), "name",
                                   json_object_new_string(name), "granularity",
                                   json_object_new_int64(q->granularity), NULL),
                          NULL, err, errlen);
    if (r < 0)
        return r;
    q->bitmap = true;
    snprintf(id, sizeof id, "blkmig-%s", q->tag);
    r = export_add(q, id, NULL, err, errlen);
    if (r < 0)
        return r;
    q->exported = true;
    r = nbd_open(q, id, LIBNBD_CONTEXT_BASE_ALLOCATION, &q->h, err, errlen);
    if (r < 0)
        return r;
    int64_t size = nbd_get_size(q->h);
    if (size < 0 || (uint64_t)size != q->size) {
        snprintf(err, errlen, "QEMU's export of %s is %lld bytes, not the drive's %llu",
                 q->node, (long long)size, (unsigned long long)q->size);
        return -EPROTO;
    }
    q->rh[0] = q->h;
    for (q->nrh = 1; q->nrh < QDISK_CONNS; q->nrh++)
        if (nbd_open(q, id, LIBNBD_CONTEXT_BASE_ALLOCATION, &q->rh[q->nrh], err, errlen) < 0)
            return -EIO;
    return 0;
}

static int no_harvest(void *opaque, struct bm_disk *d,
                      void (*mark)(struct bm_disk *d, uint64_t offset, uint64_t len));

/* The bm_disk over q once r says q is ready; q freed otherwise. */
static int finish_open(struct qdisk *q, int r, const char *name,
                       int (*harvest)(void *, struct bm_disk *,
                                      void (*)(struct bm_disk *, uint64_t, uint64_t)),
                       struct bm_disk **out)
{
    struct bm_disk_remote rem = {.pread = q_pread,
                                 .extents = q_extents,
                                 .harvest = harvest,
                                 .close = q_close,
                                 .opaque = q};
    if (r == 0)
        r = bm_disk_open_remote(name, q->size, &rem, out);
    if (r < 0)
        q_close(q);
    return r;
}

int qemu_disk_open(struct qemu_nbd *n, const char *node, const char *tag, const char *name,
                   uint64_t size, uint32_t granularity, struct bm_disk **out, char *err,
                   size_t errlen)
{
    if (granularity == 0)
        granularity = 64u << 10;
    if (granularity < 512 || granularity > (64u << 20) || (granularity & (granularity - 1))) {
        snprintf(err, errlen, "bitmap granularity %u: not a power of two from 512 B to 64 MiB",
                 granularity);
        return -EINVAL;
    }
    if (!tag_ok(tag) || strlen(node) >= sizeof ((struct qdisk *)0)->node || size == 0) {
        snprintf(err, errlen, "drive %s: bad tag, node name or size", node);
        return -EINVAL;
    }
    struct qdisk *q = calloc(1, sizeof *q);
    if (!q) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    q->nbd = n;
    q->mon = n->mon;
    snprintf(q->node, sizeof q->node, "%s", node);
    snprintf(q->tag, sizeof q->tag, "%s", tag);
    q->size = size;
    q->granularity = granularity;
    q->gen = 1;
    return finish_open(q, setup(q, err, errlen), name, q_harvest, out);
}

static int no_harvest(void *opaque, struct bm_disk *d,
                      void (*mark)(struct bm_disk *d, uint64_t offset, uint64_t len))
{
    (void)opaque;
    (void)d;
    (void)mark;
    return -ENOTSUP;
}

int qemu_nbd_reader_open(const char *uri, const char *name, uint64_t size, struct bm_disk **out,
                         char *err, size_t errlen)
{
    struct qdisk *q = calloc(1, sizeof *q);
    if (!q) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    snprintf(q->node, sizeof q->node, "%s", name);
    q->size = size;
    int r = 0;
    if (!(q->h = nbd_create()))
        r = nbd_fail("libnbd for", name, err, errlen);
    else if (nbd_add_meta_context(q->h, LIBNBD_CONTEXT_BASE_ALLOCATION) < 0 ||
             nbd_connect_uri(q->h, uri) < 0)
        r = nbd_fail("connecting to", uri, err, errlen);
    else if (nbd_get_size(q->h) != (int64_t)size) {
        snprintf(err, errlen, "%s is %lld bytes, not %llu", uri, (long long)nbd_get_size(q->h),
                 (unsigned long long)size);
        r = -EPROTO;
    }
    return finish_open(q, r, name, no_harvest, out);
}

int qemu_nbd_start(struct qemu_mon *mon, const char *path, struct qemu_nbd **out, char *err,
                   size_t errlen)
{
    struct qemu_nbd *n = calloc(1, sizeof *n);
    if (!n) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    if (strlen(path) >= sizeof n->path) {
        snprintf(err, errlen, "%s: path too long for a unix socket", path);
        free(n);
        return -ENAMETOOLONG;
    }
    n->mon = mon;
    snprintf(n->path, sizeof n->path, "%s", path);
    struct json_object *addr =
        qemu_obj("type", json_object_new_string("unix"), "data",
                 qemu_obj("path", json_object_new_string(path), NULL), NULL);
    int r = qemu_mon_exec(mon, "nbd-server-start", qemu_obj("addr", addr, NULL), NULL, err,
                          errlen);
    if (r < 0) {
        free(n);
        return r;
    }
    *out = n;
    return 0;
}

void qemu_nbd_stop(struct qemu_nbd *n)
{
    if (!n)
        return;
    char err[512];
    if (qemu_mon_exec(n->mon, "nbd-server-stop", NULL, NULL, err, sizeof err) < 0)
        bm_warn("%s", err);
    free(n);
}
