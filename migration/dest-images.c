/* dest-images.c: the destination's images: where they go, the limits, temporary files, renames. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "blockmirror/disk.h"
#include "common/imagelock.h"
#include "common/log.h"
#include "migration/dest-internal.h"

#define MAX_DISK_SIZE (1ull << 50)

static int errf(char *err, size_t errlen, int r, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int errf(char *err, size_t errlen, int r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return r;
}

/* Why the image of disk name at path could not be locked as QEMU locks its images. */
static int lock_failed(char *err, size_t errlen, int r, const struct bm_image_holder *h,
                       const char *name, const char *path)
{
    if (r == -EBUSY) {
        char who[96];
        bm_image_holder_describe(h, who, sizeof who);
        return errf(err, errlen, r, "the image of disk %s at %s is in use by %s", name, path, who);
    }
    return errf(err, errlen, r, "cannot lock the image of disk %s at %s: %s", name, path,
                strerror(-r));
}

/* MemAvailable from /proc/meminfo, else the free pages; 0 when neither can be read. */
static uint64_t mem_available(void)
{
    FILE *f = fopen("/proc/meminfo", "re");
    char line[256];
    unsigned long long kb;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
            fclose(f);
            return (uint64_t)kb * 1024u;
        }
    if (f)
        fclose(f);
    long pages = sysconf(_SC_AVPHYS_PAGES), psize = sysconf(_SC_PAGESIZE);
    return pages > 0 && psize > 0 ? (uint64_t)pages * (uint64_t)psize : 0;
}

int mig_dest_check_ram(const struct mig_incoming_opts *o, struct json_object *vmd, char *err,
                       size_t errlen)
{
    struct json_object *jr;
    if (!json_object_object_get_ex(vmd, "ram", &jr) || !json_object_is_type(jr, json_type_int) ||
        json_object_get_int64(jr) <= 0)
        return errf(err, errlen, -EPROTO, "the VM description has no valid RAM size");
    uint64_t ram = (uint64_t)json_object_get_int64(jr);
    if (o->max_ram) {
        if (ram > o->max_ram)
            return errf(err, errlen, -EFBIG,
                        "the VM has %" PRIu64 " bytes of RAM, more than "
                        "--max-ram %" PRIu64,
                        ram, o->max_ram);
        return 0;
    }
    uint64_t avail = mem_available();
    if (ram > avail)
        return errf(err, errlen, -EFBIG,
                    "the VM has %" PRIu64 " bytes of RAM, more than the %" PRIu64
                    " bytes of memory available here (--max-ram sets another limit)",
                    ram, avail);
    return 0;
}

static const struct mig_disk_map *listed(const struct mig_incoming_opts *o, const char *name)
{
    for (unsigned i = 0; i < o->nmap; i++)
        if (strcmp(o->map[i].name, name) == 0)
            return &o->map[i];
    return NULL;
}

/* Open the directory of a new image and look at what its name holds now, never following a
 * symbolic link there. An operator's --disk path may lead to a block device (needs --force). */
static int look_new(struct mig_image *m, const struct mig_incoming_opts *o, bool is_listed,
                    char *err, size_t errlen)
{
    m->dirfd = open(m->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    struct stat sb;
    if (m->dirfd < 0 || fstat(m->dirfd, &sb) < 0)
        return errf(err, errlen, -errno, "disk %s: cannot open the directory %s: %s", m->name,
                    m->dir, strerror(errno));
    m->dir_dev = sb.st_dev;
    m->dir_ino = sb.st_ino;
    if (fstatat(m->dirfd, m->base, &sb, AT_SYMLINK_NOFOLLOW) < 0) {
        if (errno == ENOENT)
            return 0;
        return errf(err, errlen, -errno, "disk %s: %s: %s", m->name, m->path, strerror(errno));
    }
    if (is_listed && (S_ISBLK(sb.st_mode) ||
                      (S_ISLNK(sb.st_mode) && stat(m->path, &sb) == 0 && S_ISBLK(sb.st_mode)))) {
        m->kind = MIG_IMAGE_BLOCKDEV;
        if (!o->force)
            return errf(err, errlen, -EEXIST,
                        "disk %s: %s is a block device (use --force to "
                        "write the disk into it)",
                        m->name, m->path);
        return 0;
    }
    if (S_ISLNK(sb.st_mode))
        return errf(err, errlen, -ELOOP,
                    "disk %s: %s is a symbolic link, which is never "
                    "followed for a new image",
                    m->name, m->path);
    if (!S_ISREG(sb.st_mode))
        return errf(err, errlen, -EEXIST, "disk %s: %s exists and is not a regular file", m->name,
                    m->path);
    if (!o->force)
        return errf(err, errlen, -EEXIST,
                    "cannot create the image of disk %s at %s: %s (use "
                    "--force to replace it once the migration has completed)",
                    m->name, m->path, strerror(EEXIST));
    m->replace = true;
    /* The old image stays as it is until the migration has completed, but nobody (QEMU, its
     * tools) may hold it for writing now, nor take it meanwhile. */
    m->old_fd = openat(m->dirfd, m->base, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (m->old_fd < 0)
        return errf(err, errlen, -errno, "disk %s: %s: %s", m->name, m->path, strerror(errno));
    struct bm_image_holder h;
    int r = bm_image_lock(m->old_fd, BM_IMAGE_LOCK_WRITE, &h);
    if (r < 0 && r != -ENOTSUP)
        return lock_failed(err, errlen, r, &h, m->name, m->path);
    return 0;
}

/* Where disk m goes and what is there now; creates nothing. */
static int locate(struct mig_image *m, const struct mig_incoming_opts *o, bool with_disk, char *err,
                  size_t errlen)
{
    const struct mig_disk_map *l = listed(o, m->name);
    if (!with_disk) {
        if (!l)
            return errf(err, errlen, -EPERM,
                        "disk %s: without --with-disk (shared storage) "
                        "only an image listed with --disk %s=PATH is opened",
                        m->name, m->name);
        m->kind = MIG_IMAGE_SHARED;
        snprintf(m->path, sizeof m->path, "%s", l->path);
        return 0;
    }
    if (!l && !o->disk_dir)
        return errf(err, errlen, -ENOENT,
                    "no image path for disk %s (give --disk %s=PATH or "
                    "--disk-dir)",
                    m->name, m->name);
    m->kind = MIG_IMAGE_NEW;
    if (l) {
        snprintf(m->path, sizeof m->path, "%s", l->path);
        const char *slash = strrchr(l->path, '/');
        const char *base = slash ? slash + 1 : l->path;
        if (slash == l->path)
            snprintf(m->dir, sizeof m->dir, "/");
        else
            snprintf(m->dir, sizeof m->dir, "%.*s", slash ? (int)(slash - l->path) : 1,
                     slash ? l->path : ".");
        size_t len = strlen(base);
        if (len == 0 || len >= sizeof m->base || strcmp(base, ".") == 0 || strcmp(base, "..") == 0)
            return errf(err, errlen, -EINVAL, "disk %s: %s does not name a file", m->name, l->path);
        memcpy(m->base, base, len + 1);
    } else {
        size_t len = strlen(m->name); /* < VM_DISK_NAME_MAX */
        memcpy(m->base, m->name, len);
        memcpy(m->base + len, ".img", 5);
        snprintf(m->dir, sizeof m->dir, "%s", o->disk_dir);
        char name[VM_DISK_NAME_MAX];
        memcpy(name, m->name, sizeof name);
        snprintf(m->path, sizeof m->path, "%s/%s.img", o->disk_dir, name);
    }
    return look_new(m, o, l != NULL, err, errlen);
}

/* Two disks must not end in one image. */
static bool same_image(const struct mig_image *a, const struct mig_image *b)
{
    if (a->kind == MIG_IMAGE_NEW && b->kind == MIG_IMAGE_NEW)
        return a->dir_dev == b->dir_dev && a->dir_ino == b->dir_ino &&
               strcmp(a->base, b->base) == 0;
    struct stat sa, sb;
    return stat(a->path, &sa) == 0 && stat(b->path, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

/* --max-disk bounds every disk written over NBD; by default the new images on each file
 * system must fit in its free space (they are sparse, but the copy may fill them). */
static int check_space(struct mig_images *im, const struct mig_incoming_opts *o, bool with_disk,
                       char *err, size_t errlen)
{
    if (!with_disk)
        return 0;
    if (o->max_disk) {
        uint64_t total = 0;
        for (unsigned k = 0; k < im->n; k++)
            total += im->img[k].size; /* at most 16 x 2^50: no overflow */
        if (total > o->max_disk)
            return errf(err, errlen, -EFBIG,
                        "the VM's disks are %" PRIu64 " bytes in all, more "
                        "than --max-disk %" PRIu64,
                        total, o->max_disk);
        return 0;
    }
    for (unsigned k = 0; k < im->n; k++) {
        const struct mig_image *m = &im->img[k];
        if (m->kind != MIG_IMAGE_NEW)
            continue;
        uint64_t total = 0;
        bool first = true;
        for (unsigned j = 0; j < im->n; j++) {
            const struct mig_image *x = &im->img[j];
            if (x->kind == MIG_IMAGE_NEW && x->dir_dev == m->dir_dev) {
                first = first && j >= k;
                total += x->size;
            }
        }
        struct statvfs vfs;
        if (!first || fstatvfs(m->dirfd, &vfs) < 0)
            continue;
        uint64_t avail = (uint64_t)vfs.f_bavail * vfs.f_frsize;
        if (total > avail)
            return errf(err, errlen, -EFBIG,
                        "the VM's disks to create in %s are %" PRIu64
                        " bytes in all, more than the %" PRIu64 " bytes free there (--max-disk "
                        "sets another limit)",
                        m->dir, total, avail);
    }
    return 0;
}

/* Create the temporary file that receives new image m, sized, sparse; never follows a link. */
static int create_tmp(struct mig_image *m, char *err, size_t errlen)
{
    uint8_t rnd[8];
    if (getrandom(rnd, sizeof rnd, 0) != sizeof rnd)
        return errf(err, errlen, -EIO, "no randomness for a temporary name");
    char hex[17];
    for (int i = 0; i < 8; i++)
        snprintf(hex + 2 * i, 3, "%02x", rnd[i]);
    if ((size_t)snprintf(m->tmp, sizeof m->tmp, ".%s.%s.blkmig-tmp", m->base, hex) >= sizeof m->tmp)
        return errf(err, errlen, -ENAMETOOLONG, "disk %s: the name %s is too long", m->name,
                    m->base);
    int fd = openat(m->dirfd, m->tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return errf(err, errlen, -errno, "cannot create the image of disk %s in %s: %s", m->name,
                    m->dir, strerror(errno));
    m->tmp_ours = true;
    char where[8192];
    snprintf(where, sizeof where, "%s/%s", m->dir, m->tmp);
    if (ftruncate(fd, (off_t)m->size) < 0) {
        int e = errno;
        close(fd);
        return errf(err, errlen, -e, "cannot size the image of disk %s (%s): %s", m->name, where,
                    strerror(e));
    }
    int r = bm_disk_open_fd(fd, where, 0, &m->disk);
    if (r < 0)
        return errf(err, errlen, r, "cannot open %s: %s", where, strerror(-r));
    /* The lock goes with the file when it is renamed into place. */
    struct bm_image_holder h;
    if ((r = bm_disk_lock(m->disk, BM_IMAGE_LOCK_WRITE, &h)) < 0)
        return lock_failed(err, errlen, r, &h, m->name, where);
    return 0;
}

int mig_disks_check(struct json_object *disks, char *err, size_t errlen)
{
    if (!json_object_is_type(disks, json_type_array) ||
        json_object_array_length(disks) > VM_MAX_DISKS) {
        snprintf(err, errlen, "the VM description has a bad disk list");
        return -EPROTO;
    }
    size_t n = json_object_array_length(disks);
    for (size_t i = 0; i < n; i++) {
        struct json_object *e = json_object_array_get_idx(disks, i), *jn, *js;
        if (!json_object_object_get_ex(e, "name", &jn) ||
            !json_object_object_get_ex(e, "size", &js) || !json_object_is_type(js, json_type_int)) {
            snprintf(err, errlen, "the VM description has a bad disk entry");
            return -EPROTO;
        }
        const char *name = json_object_get_string(jn);
        int64_t size = json_object_get_int64(js);
        if (!vm_disk_name_ok(name) || size <= 0 || (uint64_t)size > MAX_DISK_SIZE || size % 512) {
            snprintf(err, errlen, "the VM description has a bad disk (name or size)");
            return -EPROTO;
        }
        for (size_t k = 0; k < i; k++) {
            json_object_object_get_ex(json_object_array_get_idx(disks, k), "name", &jn);
            if (strcmp(json_object_get_string(jn), name) == 0) {
                snprintf(err, errlen, "the VM description names disk %s twice", name);
                return -EPROTO;
            }
        }
    }
    return 0;
}

/* One entry of a disk list mig_disks_check passed. */
static void parse_disk(struct mig_images *im, struct json_object *e)
{
    struct json_object *jn, *js;
    json_object_object_get_ex(e, "name", &jn);
    json_object_object_get_ex(e, "size", &js);
    struct mig_image *m = &im->img[im->n++];
    memset(m, 0, sizeof *m);
    m->dirfd = -1;
    m->old_fd = -1;
    snprintf(m->name, sizeof m->name, "%s", json_object_get_string(jn));
    m->size = (uint64_t)json_object_get_int64(js);
}

int mig_images_open(struct mig_images *im, const struct mig_incoming_opts *o, bool with_disk,
                    struct json_object *disks, char *err, size_t errlen)
{
    int r = mig_disks_check(disks, err, errlen);
    if (r < 0)
        return r;
    for (size_t i = 0; i < json_object_array_length(disks); i++)
        parse_disk(im, json_object_array_get_idx(disks, i));
    for (unsigned k = 0; k < im->n && r == 0; k++) {
        r = locate(&im->img[k], o, with_disk, err, errlen);
        for (unsigned j = 0; j < k && r == 0; j++)
            if (same_image(&im->img[j], &im->img[k]))
                r = errf(err, errlen, -EINVAL, "disks %s and %s would have the same image %s",
                         im->img[j].name, im->img[k].name, im->img[k].path);
    }
    if (r == 0)
        r = check_space(im, o, with_disk, err, errlen);
    for (unsigned k = 0; k < im->n && r == 0; k++) {
        struct mig_image *m = &im->img[k];
        if (m->kind == MIG_IMAGE_NEW) {
            r = create_tmp(m, err, errlen);
            continue;
        }
        r = bm_disk_open(m->path, 0, &m->disk);
        if (r < 0)
            return errf(err, errlen, r, "cannot open the image of disk %s at %s: %s", m->name,
                        m->path, strerror(-r));
        struct bm_image_holder h;
        if (m->kind == MIG_IMAGE_BLOCKDEV &&
            (r = bm_disk_lock(m->disk, BM_IMAGE_LOCK_WRITE, &h)) < 0)
            return lock_failed(err, errlen, r, &h, m->name, m->path);
        if (bm_disk_size(m->disk) != m->size)
            r = errf(err, errlen, -EINVAL,
                     "the image %s has %" PRIu64 " bytes, the source's "
                     "disk %s %" PRIu64,
                     m->path, bm_disk_size(m->disk), m->name, m->size);
    }
    return r;
}

/* Move new image m from its temporary name to its path: over an old image by exchanging the
 * two (so that a discard can put the old one back), else only if the name is still free. */
static int place_one(struct mig_image *m)
{
    if (m->replace) {
        if (renameat2(m->dirfd, m->tmp, m->dirfd, m->base, RENAME_EXCHANGE) == 0) {
            m->exchanged = true;
            return 0;
        }
        if (errno != ENOENT && errno != EINVAL)
            return -errno;
        if (errno == EINVAL) { /* a file system that cannot exchange: replace for good */
            bm_warn("%s: cannot keep the old image until the VM runs here (no RENAME_EXCHANGE)",
                    m->path);
            if (renameat(m->dirfd, m->tmp, m->dirfd, m->base) < 0)
                return -errno;
            m->tmp_ours = false;
            return 0;
        }
        /* the old image went away meanwhile: take a free name as below */
    }
    if (renameat2(m->dirfd, m->tmp, m->dirfd, m->base, RENAME_NOREPLACE) == 0) {
        m->tmp_ours = false;
        return 0;
    }
    if (errno != EINVAL)
        return -errno;
    if (linkat(m->dirfd, m->tmp, m->dirfd, m->base, 0) < 0)
        return -errno;
    m->tmp_ours = false;
    unlinkat(m->dirfd, m->tmp, 0);
    return 0;
}

int mig_images_place(struct mig_images *im, char *err, size_t errlen)
{
    for (unsigned k = 0; k < im->n; k++) {
        struct mig_image *m = &im->img[k];
        if (m->kind == MIG_IMAGE_SHARED)
            continue;
        /* What the source's mirror wrote has arrived but may sit in the page cache: an image
         * takes its name only once it is durable (bm_disk_flush is a no-op on a flushed one). */
        int r = bm_disk_flush(m->disk);
        if (r < 0)
            return errf(err, errlen, r, "cannot flush the image of disk %s: %s", m->name,
                        strerror(-r));
        if (m->kind != MIG_IMAGE_NEW)
            continue;
        r = place_one(m);
        if (r < 0)
            return errf(err, errlen, r, "cannot rename the image of disk %s to %s: %s%s", m->name,
                        m->path, strerror(-r),
                        r == -EEXIST ? " (a file appeared there meanwhile)" : "");
        m->placed = true;
        if ((r = bm_disk_set_path(m->disk, m->path)) < 0)
            return errf(err, errlen, r, "disk %s: %s", m->name, strerror(-r));
    }
    /* The renames are durable once their directories are synced: each directory once. */
    for (unsigned k = 0; k < im->n; k++) {
        const struct mig_image *m = &im->img[k];
        bool seen = m->kind != MIG_IMAGE_NEW;
        for (unsigned j = 0; j < k && !seen; j++)
            seen = im->img[j].kind == MIG_IMAGE_NEW && im->img[j].dir_dev == m->dir_dev &&
                   im->img[j].dir_ino == m->dir_ino;
        if (!seen && fsync(m->dirfd) < 0)
            return errf(err, errlen, -errno, "cannot sync the directory %s: %s", m->dir,
                        strerror(errno));
    }
    return 0;
}

int mig_images_lock_shared(struct mig_images *im, char *err, size_t errlen)
{
    for (unsigned k = 0; k < im->n; k++) {
        struct mig_image *m = &im->img[k];
        struct bm_image_holder h;
        int r;
        if (m->kind == MIG_IMAGE_SHARED &&
            (r = bm_disk_lock(m->disk, BM_IMAGE_LOCK_WRITE, &h)) < 0)
            return lock_failed(err, errlen, r, &h, m->name, m->path);
    }
    return 0;
}

static void close_old(struct mig_image *m)
{
    if (m->old_fd >= 0)
        close(m->old_fd);
    m->old_fd = -1;
}

void mig_images_keep(struct mig_images *im)
{
    im->kept = true;
}

int mig_images_durable(struct mig_images *im, char *err, size_t errlen)
{
    int r = mig_images_place(im, err, errlen);
    if (r < 0) {
        /* The VM runs on: say where its disks are. */
        for (unsigned k = 0; k < im->n; k++) {
            const struct mig_image *m = &im->img[k];
            size_t n = strlen(err);
            if (m->kind == MIG_IMAGE_NEW && !m->placed && n + 1 < errlen)
                snprintf(err + n, errlen - n, "; disk %s is at %s/%s", m->name, m->dir, m->tmp);
        }
        return r;
    }
    for (unsigned k = 0; k < im->n; k++) {
        struct mig_image *m = &im->img[k];
        if (m->dirfd < 0)
            continue;
        if (m->exchanged && m->tmp_ours && unlinkat(m->dirfd, m->tmp, 0) == 0)
            fsync(m->dirfd);
        close_old(m);
        m->tmp_ours = false;
        close(m->dirfd);
        m->dirfd = -1;
    }
    return 0;
}

/* Take back what place_one did; the new image then sits at tmp again. */
static void unplace(struct mig_image *m)
{
    if (m->exchanged) {
        if (renameat2(m->dirfd, m->tmp, m->dirfd, m->base, RENAME_EXCHANGE) < 0)
            bm_error("%s: cannot put the old image back (it is at %s/%s): %s", m->path, m->dir,
                     m->tmp, strerror(errno));
        else
            m->exchanged = false;
        return;
    }
    if (unlinkat(m->dirfd, m->base, 0) < 0)
        bm_error("cannot remove %s: %s", m->path, strerror(errno));
}

void mig_images_discard(struct mig_images *im)
{
    for (unsigned k = 0; k < im->n; k++) {
        struct mig_image *m = &im->img[k];
        bm_disk_close(m->disk);
        m->disk = NULL;
        if (!im->kept && m->placed)
            unplace(m);
        close_old(m);
        if (!im->kept && m->tmp_ours && !m->exchanged && unlinkat(m->dirfd, m->tmp, 0) < 0)
            bm_error("cannot remove %s/%s: %s", m->dir, m->tmp, strerror(errno));
        if (m->dirfd >= 0) {
            fsync(m->dirfd);
            close(m->dirfd);
        }
    }
    im->n = 0;
}
