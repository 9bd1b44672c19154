/* disk.c: local image I/O with write tracking into attached dirty bitmaps. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "blockmirror/disk.h"
#include "common/log.h"

struct bm_disk {
    int fd;
    uint64_t size;
    bool readonly;
    bool blockdev;
    char *path;
    /* The image locks taken (bm_disk_lock), and whether bm_disk_unlock dropped them for a
     * while. Set by the owner's thread only. */
    bool locked, lock_dropped;
    enum bm_image_lock_mode lock_mode;
    /* The gate: gate_lock protects held, changing and hooks. A content change waits while
     * held, then counts itself in changing for its whole length (I/O, marking, hooks). */
    pthread_mutex_t gate_lock;
    pthread_cond_t gate_cond;
    bool held;
    unsigned changing;
    struct bm_disk_hooks hooks;
    /* Protects bitmaps[] and nbitmaps; writers hold it shared while they mark. */
    pthread_rwlock_t bitmaps_lock;
    struct bm_bitmap *bitmaps[BM_DISK_MAX_BITMAPS];
    unsigned nbitmaps;
    /* Written once, under gate_lock, before redirected is set (release); read after an acquire
     * load of redirected. */
    struct bm_disk_redirect redir;
    atomic_bool redirected;
    /* Content changes made through this bm_disk (counted once each is done) and the count the
     * last successful bm_disk_flush covered: equal, a flush has nothing to make durable. */
    _Atomic uint64_t changes, flushed;
    char *old_path; /* the name before bm_disk_set_path */
    /* A remote disk (fd -1, read-only): its reads, extents and harvests. */
    bool remote;
    struct bm_disk_remote rem;
};

int bm_disk_open(const char *path, unsigned open_flags, struct bm_disk **out)
{
    bool ro = open_flags & BM_DISK_OPEN_READONLY;
    int fd = open(path, (ro ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        bm_error("cannot open %s%s: %s", path, ro ? " read-only" : "", strerror(e));
        return -e;
    }
    return bm_disk_open_fd(fd, path, open_flags, out);
}

static int alloc_disk(const char *path, struct bm_disk **out)
{
    struct bm_disk *d = calloc(1, sizeof *d);
    if (!d || !(d->path = strdup(path))) {
        free(d);
        return -ENOMEM;
    }
    /* Whatever was done to the image before it was opened here is not known to be durable. */
    atomic_init(&d->changes, 1);
    atomic_init(&d->flushed, 0);
    pthread_rwlock_init(&d->bitmaps_lock, NULL);
    pthread_mutex_init(&d->gate_lock, NULL);
    pthread_cond_init(&d->gate_cond, NULL);
    *out = d;
    return 0;
}

int bm_disk_open_remote(const char *name, uint64_t size, const struct bm_disk_remote *r,
                        struct bm_disk **out)
{
    struct bm_disk *d;
    int e = alloc_disk(name, &d);
    if (e < 0)
        return e;
    d->fd = -1;
    d->size = size;
    d->readonly = true;
    d->remote = true;
    d->rem = *r;
    *out = d;
    return 0;
}

bool bm_disk_is_remote(const struct bm_disk *d)
{
    return d->remote;
}

int bm_disk_open_fd(int fd, const char *path, unsigned open_flags, struct bm_disk **out)
{
    bool ro = open_flags & BM_DISK_OPEN_READONLY;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        bm_error("%s: %s", path, strerror(e));
        close(fd);
        return -e;
    }
    uint64_t size;
    bool blockdev = S_ISBLK(st.st_mode);
    if (blockdev) {
        if (ioctl(fd, BLKGETSIZE64, &size) < 0) {
            int e = errno;
            bm_error("%s: cannot read block device size: %s", path, strerror(e));
            close(fd);
            return -e;
        }
    } else if (S_ISREG(st.st_mode)) {
        size = (uint64_t)st.st_size;
    } else {
        bm_error("%s: not a regular file or block device", path);
        close(fd);
        return -EINVAL;
    }
    struct bm_disk *d;
    int e = alloc_disk(path, &d);
    if (e < 0) {
        close(fd);
        return e;
    }
    d->fd = fd;
    d->size = size;
    d->readonly = ro;
    d->blockdev = blockdev;
    *out = d;
    return 0;
}

void bm_disk_close(struct bm_disk *d)
{
    if (!d)
        return;
    if (d->remote)
        d->rem.close(d->rem.opaque);
    else
        close(d->fd);
    pthread_rwlock_destroy(&d->bitmaps_lock);
    pthread_mutex_destroy(&d->gate_lock);
    pthread_cond_destroy(&d->gate_cond);
    free(d->path);
    free(d->old_path);
    free(d);
}

int bm_disk_lock(struct bm_disk *d, enum bm_image_lock_mode mode, struct bm_image_holder *h)
{
    if (d->remote)
        return 0; /* its owner locks the image (QEMU does) */
    int r = bm_image_lock(d->fd, mode, h);
    if (r == -ENOTSUP) {
        bm_warn("%s: the file system has no OFD locks: the image is not locked", d->path);
        return 0;
    }
    if (r == 0) {
        d->locked = true;
        d->lock_dropped = false;
        d->lock_mode = mode;
    }
    return r;
}

void bm_disk_unlock(struct bm_disk *d)
{
    if (!d->locked)
        return;
    bm_image_unlock(d->fd);
    d->locked = false;
    d->lock_dropped = true;
}

int bm_disk_relock(struct bm_disk *d, struct bm_image_holder *h)
{
    if (!d->lock_dropped)
        return 0;
    return bm_disk_lock(d, d->lock_mode, h);
}

uint64_t bm_disk_size(const struct bm_disk *d)
{
    return d->size;
}

const char *bm_disk_path(const struct bm_disk *d)
{
    return d->path;
}

int bm_disk_fd(const struct bm_disk *d)
{
    return d->fd;
}

int bm_disk_set_path(struct bm_disk *d, const char *path)
{
    char *p = strdup(path);
    if (!p)
        return -ENOMEM;
    /* Users may be reading the old name (a running VM's messages): it lives until close. */
    free(d->old_path);
    d->old_path = d->path;
    d->path = p;
    return 0;
}

bool bm_disk_is_readonly(const struct bm_disk *d)
{
    return d->readonly;
}

bool bm_disk_is_blockdev(const struct bm_disk *d)
{
    return d->blockdev;
}

static bool in_range(const struct bm_disk *d, uint64_t offset, uint64_t len)
{
    return offset <= d->size && len <= d->size - offset;
}

/* Called after every content-changing operation, whatever its result: a failed write may
 * still have changed part of the range, so it is marked too. */
static void mark_dirty(struct bm_disk *d, uint64_t offset, uint64_t len)
{
    pthread_rwlock_rdlock(&d->bitmaps_lock);
    for (unsigned i = 0; i < d->nbitmaps; i++)
        bm_bitmap_set_range(d->bitmaps[i], offset, len);
    pthread_rwlock_unlock(&d->bitmaps_lock);
}

static bool redirected(const struct bm_disk *d)
{
    return atomic_load_explicit(&d->redirected, memory_order_acquire);
}

int bm_disk_pread(struct bm_disk *d, void *buf, size_t len, uint64_t offset)
{
    if (!in_range(d, offset, len))
        return -EINVAL;
    if (redirected(d))
        return d->redir.pread(d->redir.opaque, buf, len, offset);
    if (d->remote)
        return d->rem.pread(d->rem.opaque, buf, len, offset);
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t r = pread(d->fd, p, len, (off_t)offset);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0) {
            /* A file shrunk under us: what is past its end reads as zeroes. */
            memset(p, 0, len);
            return 0;
        }
        p += r;
        len -= (size_t)r;
        offset += (uint64_t)r;
    }
    return 0;
}

static int write_all(struct bm_disk *d, const void *buf, size_t len, uint64_t offset,
                     unsigned flags)
{
    const uint8_t *p = buf;
    int rwf = (flags & BM_DISK_FUA) ? RWF_DSYNC : 0;
    while (len > 0) {
        struct iovec iov = {.iov_base = (void *)p, .iov_len = len};
        ssize_t r = pwritev2(d->fd, &iov, 1, (off_t)offset, rwf);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += r;
        len -= (size_t)r;
        offset += (uint64_t)r;
    }
    return 0;
}

/* Enter and leave a content change: the gate, and the hooks around it. The hooks are copied
 * on entry so that a change sees one set from start to end. */
static int change_begin(struct bm_disk *d, uint64_t offset, uint64_t len,
                        struct bm_disk_hooks *hooks)
{
    pthread_mutex_lock(&d->gate_lock);
    while (d->held)
        pthread_cond_wait(&d->gate_cond, &d->gate_lock);
    d->changing++;
    *hooks = d->hooks;
    pthread_mutex_unlock(&d->gate_lock);
    return hooks->before ? hooks->before(hooks->opaque, offset, len) : 0;
}

static int change_end(struct bm_disk *d, const struct bm_disk_hooks *hooks, int token,
                      enum bm_disk_change kind, const void *buf, uint64_t offset, uint64_t len,
                      int result, bool changed)
{
    if (changed) {
        mark_dirty(d, offset, len);
        atomic_fetch_add(&d->changes, 1);
    }
    if (hooks->after)
        hooks->after(hooks->opaque, token, kind, buf, offset, len, result);
    pthread_mutex_lock(&d->gate_lock);
    if (--d->changing == 0)
        pthread_cond_broadcast(&d->gate_cond);
    pthread_mutex_unlock(&d->gate_lock);
    return result;
}

int bm_disk_pwrite(struct bm_disk *d, const void *buf, size_t len, uint64_t offset,
                   unsigned flags)
{
    if (d->readonly)
        return -EPERM;
    if (!in_range(d, offset, len))
        return -EINVAL;
    struct bm_disk_hooks h;
    int token = change_begin(d, offset, len, &h);
    bool redir = redirected(d);
    int r = redir ? d->redir.pwrite(d->redir.opaque, buf, len, offset, flags)
                  : write_all(d, buf, len, offset, flags);
    return change_end(d, &h, token, BM_CHANGE_WRITE, buf, offset, len, r, !redir);
}

static int write_zero_buffers(struct bm_disk *d, uint64_t offset, uint64_t len)
{
    static const uint8_t zeroes[1 << 16];
    while (len > 0) {
        size_t n = len > sizeof zeroes ? sizeof zeroes : (size_t)len;
        int r = write_all(d, zeroes, n, offset, 0);
        if (r < 0)
            return r;
        offset += n;
        len -= n;
    }
    return 0;
}

static int try_fallocate(struct bm_disk *d, int mode, uint64_t offset, uint64_t len)
{
    if (fallocate(d->fd, mode, (off_t)offset, (off_t)len) == 0)
        return 0;
    return -errno;
}

static bool unsupported(int r)
{
    return r == -EOPNOTSUPP || r == -ENOSYS || r == -EINVAL || r == -ENODEV;
}

static int do_zero(struct bm_disk *d, uint64_t offset, uint64_t len, unsigned flags)
{
    int r = -EOPNOTSUPP;
    if (!(flags & BM_DISK_NO_HOLE))
        r = try_fallocate(d, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len);
    /* On a block device only an unmap is sure to be fast; zero-range may write zeroes. */
    if (r < 0 && unsupported(r) && d->blockdev && (flags & BM_DISK_FAST))
        return -ENOTSUP;
    if (r < 0 && unsupported(r))
        r = try_fallocate(d, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, len);
    if (r < 0 && unsupported(r) && d->blockdev) {
        uint64_t range[2] = {offset, len};
        r = ioctl(d->fd, BLKZEROOUT, range) == 0 ? 0 : -errno;
    }
    if (r < 0 && unsupported(r)) {
        if (flags & BM_DISK_FAST)
            return -ENOTSUP;
        r = write_zero_buffers(d, offset, len);
    }
    if (r == 0 && (flags & BM_DISK_FUA) && fdatasync(d->fd) < 0)
        r = -errno;
    return r;
}

/* The checks every content change makes first: 0 to go on, 1 for nothing to do, or -errno. */
static int change_check(const struct bm_disk *d, uint64_t offset, uint64_t len)
{
    if (d->readonly)
        return -EPERM;
    if (!in_range(d, offset, len))
        return -EINVAL;
    return len == 0;
}

int bm_disk_zero(struct bm_disk *d, uint64_t offset, uint64_t len, unsigned flags)
{
    int c = change_check(d, offset, len);
    if (c)
        return c < 0 ? c : 0;
    struct bm_disk_hooks h;
    int token = change_begin(d, offset, len, &h);
    bool redir = redirected(d);
    int r =
        redir ? d->redir.zero(d->redir.opaque, offset, len, flags) : do_zero(d, offset, len, flags);
    /* A refused fast zero changed nothing. */
    return change_end(d, &h, token, BM_CHANGE_ZERO, NULL, offset, len, r, !redir && r != -ENOTSUP);
}

int bm_disk_trim(struct bm_disk *d, uint64_t offset, uint64_t len, unsigned flags)
{
    int c = change_check(d, offset, len);
    if (c)
        return c < 0 ? c : 0;
    struct bm_disk_hooks h;
    int token = change_begin(d, offset, len, &h);
    if (redirected(d)) {
        int rr = d->redir.trim(d->redir.opaque, offset, len, flags);
        return change_end(d, &h, token, BM_CHANGE_TRIM, NULL, offset, len, rr, false);
    }
    int r;
    if (d->blockdev) {
        uint64_t range[2] = {offset, len};
        r = ioctl(d->fd, BLKDISCARD, range) == 0 ? 0 : -errno;
    } else {
        r = try_fallocate(d, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len);
    }
    /* Trim is advisory: a device that cannot discard has done nothing wrong. */
    if (r < 0 && unsupported(r))
        r = 0;
    if (r == 0 && (flags & BM_DISK_FUA) && fdatasync(d->fd) < 0)
        r = -errno;
    return change_end(d, &h, token, BM_CHANGE_TRIM, NULL, offset, len, r, true);
}

void bm_disk_set_hooks(struct bm_disk *d, const struct bm_disk_hooks *hooks)
{
    pthread_mutex_lock(&d->gate_lock);
    bool was_held = d->held;
    d->held = true;
    while (d->changing > 0)
        pthread_cond_wait(&d->gate_cond, &d->gate_lock);
    if (hooks)
        d->hooks = *hooks;
    else
        memset(&d->hooks, 0, sizeof d->hooks);
    d->held = was_held;
    pthread_cond_broadcast(&d->gate_cond);
    pthread_mutex_unlock(&d->gate_lock);
}

void bm_disk_hold(struct bm_disk *d)
{
    pthread_mutex_lock(&d->gate_lock);
    d->held = true;
    pthread_mutex_unlock(&d->gate_lock);
}

unsigned bm_disk_changes_in_progress(struct bm_disk *d)
{
    pthread_mutex_lock(&d->gate_lock);
    unsigned n = d->changing;
    pthread_mutex_unlock(&d->gate_lock);
    return n;
}

void bm_disk_quiesce(struct bm_disk *d)
{
    pthread_mutex_lock(&d->gate_lock);
    d->held = true;
    while (d->changing > 0)
        pthread_cond_wait(&d->gate_cond, &d->gate_lock);
    pthread_mutex_unlock(&d->gate_lock);
}

void bm_disk_release(struct bm_disk *d)
{
    pthread_mutex_lock(&d->gate_lock);
    d->held = false;
    pthread_cond_broadcast(&d->gate_cond);
    pthread_mutex_unlock(&d->gate_lock);
}

int bm_disk_flush(struct bm_disk *d)
{
    if (redirected(d))
        return d->redir.flush(d->redir.opaque);
    if (d->remote)
        return 0; /* nothing was written through it */
    /* A change done before this call was counted before it: if the last flush covered the
     * count, the change is durable already, and a device barrier (milliseconds on a virtual
     * disk) would buy nothing. */
    uint64_t now = atomic_load(&d->changes);
    if (now == atomic_load(&d->flushed))
        return 0;
    if (fdatasync(d->fd) < 0)
        return -errno;
    uint64_t was = atomic_load(&d->flushed);
    while (was < now && !atomic_compare_exchange_weak(&d->flushed, &was, now))
        ;
    return 0;
}

int bm_disk_cache(struct bm_disk *d, uint64_t offset, uint64_t len)
{
    if (!in_range(d, offset, len))
        return -EINVAL;
    if (redirected(d) || d->remote)
        return 0;
    int r = posix_fadvise(d->fd, (off_t)offset, (off_t)len, POSIX_FADV_WILLNEED);
    return r == 0 || r == ESPIPE ? 0 : -r;
}

int bm_disk_extents(struct bm_disk *d, uint64_t offset, uint64_t len, struct bm_extent *ext,
                    size_t max, size_t *n)
{
    if (!in_range(d, offset, len) || len == 0 || max == 0)
        return -EINVAL;
    uint64_t end = offset + len;
    size_t k = 0;
    if (d->remote)
        return d->rem.extents(d->rem.opaque, offset, len, ext, max, n);
    if (d->blockdev || redirected(d)) {
        ext[0] = (struct bm_extent){offset, len, 0};
        *n = 1;
        return 0;
    }
    while (offset < end && k < max) {
        off_t data = lseek(d->fd, (off_t)offset, SEEK_DATA);
        if (data < 0) {
            if (errno == ENXIO) {
                /* No data from here to the end of the file. */
                ext[k++] = (struct bm_extent){offset, end - offset,
                                              BM_EXTENT_HOLE | BM_EXTENT_ZERO};
                break;
            }
            /* The filesystem cannot tell: everything is data. */
            ext[k++] = (struct bm_extent){offset, end - offset, 0};
            break;
        }
        if ((uint64_t)data > offset) {
            uint64_t hole_end = (uint64_t)data < end ? (uint64_t)data : end;
            ext[k++] = (struct bm_extent){offset, hole_end - offset,
                                          BM_EXTENT_HOLE | BM_EXTENT_ZERO};
            offset = hole_end;
            continue;
        }
        off_t hole = lseek(d->fd, (off_t)offset, SEEK_HOLE);
        uint64_t data_end = hole < 0 ? end : ((uint64_t)hole < end ? (uint64_t)hole : end);
        if (data_end <= offset)
            data_end = end;
        ext[k++] = (struct bm_extent){offset, data_end - offset, 0};
        offset = data_end;
    }
    *n = k;
    return 0;
}

void bm_disk_redirect(struct bm_disk *d, const struct bm_disk_redirect *r)
{
    pthread_mutex_lock(&d->gate_lock);
    if (!redirected(d)) {
        d->redir = *r;
        atomic_store_explicit(&d->redirected, true, memory_order_release);
    }
    pthread_mutex_unlock(&d->gate_lock);
}

bool bm_disk_is_redirected(const struct bm_disk *d)
{
    return redirected(d);
}

int bm_disk_open_direct(struct bm_disk *d)
{
    if (d->remote)
        return -ENOTSUP;
    int fd = open(d->path, O_RDONLY | O_DIRECT | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int bm_disk_attach_bitmap(struct bm_disk *d, struct bm_bitmap *b)
{
    if (bm_bitmap_size(b) < d->size)
        return -EINVAL;
    pthread_rwlock_wrlock(&d->bitmaps_lock);
    int r = -ENOSPC;
    if (d->nbitmaps < BM_DISK_MAX_BITMAPS) {
        d->bitmaps[d->nbitmaps++] = b;
        r = 0;
    }
    pthread_rwlock_unlock(&d->bitmaps_lock);
    return r;
}

void bm_disk_detach_bitmap(struct bm_disk *d, struct bm_bitmap *b)
{
    pthread_rwlock_wrlock(&d->bitmaps_lock);
    for (unsigned i = 0; i < d->nbitmaps; i++) {
        if (d->bitmaps[i] == b) {
            d->bitmaps[i] = d->bitmaps[--d->nbitmaps];
            break;
        }
    }
    pthread_rwlock_unlock(&d->bitmaps_lock);
}

int bm_disk_harvest(struct bm_disk *d)
{
    return d->remote ? d->rem.harvest(d->rem.opaque, d, mark_dirty) : 0;
}
