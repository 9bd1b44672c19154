/* disk.h: bm_disk, the one way anyone reads or writes a guest or exported disk image. */
#ifndef BM_BLOCKMIRROR_DISK_H
#define BM_BLOCKMIRROR_DISK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/bitmap.h"
#include "common/imagelock.h"

/*
 * A bm_disk wraps a local image (regular file or block device) opened once and shared by all
 * its users and threads.  Every operation that can change contents (write, zero, trim) marks the
 * blocks it touched in every attached dirty bitmap *after* the operation has returned, so a
 * mirror that clears a bit before reading the block never misses a write (the ordering
 * invariant).  All calls are thread-safe; they return 0 or -errno.
 */
struct bm_disk;

/* Open flags. */
#define BM_DISK_OPEN_READONLY 1u

/* Operation flags. */
#define BM_DISK_FUA 1u     /* data is on stable storage when the call returns */
#define BM_DISK_NO_HOLE 2u /* zero: leave the range allocated */
#define BM_DISK_FAST 4u    /* zero: fail with -ENOTSUP instead of writing zeroes slowly */

/* Extent flags (the NBD base:allocation bits). */
#define BM_EXTENT_HOLE 1u
#define BM_EXTENT_ZERO 2u

struct bm_extent {
    uint64_t offset;
    uint64_t length;
    uint32_t flags;
};

/* The most bitmaps one disk tracks into at once. */
#define BM_DISK_MAX_BITMAPS 8

int bm_disk_open(const char *path, unsigned open_flags, struct bm_disk **out);
/* The same over an open descriptor (read-write unless BM_DISK_OPEN_READONLY), which the disk
 * owns from then on, even on failure; path is only its name (bm_disk_path). */
int bm_disk_open_fd(int fd, const char *path, unsigned open_flags, struct bm_disk **out);
void bm_disk_close(struct bm_disk *d);

/* Take QEMU's image locks of mode on the image (common/imagelock.h), so that QEMU and its
 * tools refuse what would conflict, and fail if they hold conflicting ones: 0, -EBUSY with h
 * describing the other user, or -errno. Where the file system has no OFD locks this warns
 * and returns 0 (as QEMU, which then does not lock either). The locks go with the disk. */
int bm_disk_lock(struct bm_disk *d, enum bm_image_lock_mode mode, struct bm_image_holder *h);
/* Hand the locks over (a migration's switchover on shared storage, as QEMU inactivates its
 * images): drop them; bm_disk_relock takes the same ones back (0 when none were dropped). */
void bm_disk_unlock(struct bm_disk *d);
int bm_disk_relock(struct bm_disk *d, struct bm_image_holder *h);

uint64_t bm_disk_size(const struct bm_disk *d);
const char *bm_disk_path(const struct bm_disk *d);
/* The image's descriptor, for looking at the file as it was opened (its format, its locks);
 * never for I/O, which must go through bm_disk_* (the gate, the bitmaps, a redirect). */
int bm_disk_fd(const struct bm_disk *d);
/* Give the disk a new name (its file was renamed). A user may still hold the name returned by
 * bm_disk_path before: it stays valid until bm_disk_close (one rename; not for concurrent
 * callers of this function). */
int bm_disk_set_path(struct bm_disk *d, const char *path);
bool bm_disk_is_readonly(const struct bm_disk *d);
bool bm_disk_is_blockdev(const struct bm_disk *d);

/* Ranges must lie within [0, size): callers check bounds; these return -EINVAL otherwise. */
int bm_disk_pread(struct bm_disk *d, void *buf, size_t len, uint64_t offset);
int bm_disk_pwrite(struct bm_disk *d, const void *buf, size_t len, uint64_t offset,
                   unsigned flags);
int bm_disk_zero(struct bm_disk *d, uint64_t offset, uint64_t len, unsigned flags);
int bm_disk_trim(struct bm_disk *d, uint64_t offset, uint64_t len, unsigned flags);
/* Make every change done so far durable (fdatasync); a no-op when no change was made through
 * this bm_disk since the last flush that succeeded. */
int bm_disk_flush(struct bm_disk *d);
/* Hint that a range will be read soon. */
int bm_disk_cache(struct bm_disk *d, uint64_t offset, uint64_t len);

/* Describe [offset, offset + len) as consecutive extents starting at offset, at most max of
 * them (they may cover less than len). Sets *n (>= 1 on success). */
int bm_disk_extents(struct bm_disk *d, uint64_t offset, uint64_t len, struct bm_extent *ext,
                    size_t max, size_t *n);

/* Kinds of content change, as seen by hooks. */
enum bm_disk_change { BM_CHANGE_WRITE, BM_CHANGE_ZERO, BM_CHANGE_TRIM };

/*
 * Hooks around every content change, for an active mirror (write-blocking mode). before() runs
 * before the change touches the image; after() runs once it is in the image and marked dirty,
 * with the data for BM_CHANGE_WRITE (NULL otherwise) and the change's result; the writer is
 * answered only when after() returns. Both run on the writer's thread and must not fail the
 * write: whatever they do, the writer sees only the local result.
 */
struct bm_disk_hooks {
    /* Returns a token handed to after() for the same change. */
    int (*before)(void *opaque, uint64_t offset, uint64_t len);
    void (*after)(void *opaque, int token, enum bm_disk_change kind, const void *buf,
                  uint64_t offset, uint64_t len, int result);
    void *opaque;
};

/* Install (or with NULL remove) the hooks. Waits for changes in progress to finish, so once it
 * returns every later change sees the new hooks and none sees the old ones. Must not be called
 * from a thread that a hook waits for while changes are in progress. */
void bm_disk_set_hooks(struct bm_disk *d, const struct bm_disk_hooks *hooks);

/* Hold every new content change (writers block before touching anything); returns at once.
 * bm_disk_changes_in_progress tells when the changes already under way have finished.
 * bm_disk_quiesce holds and waits for that. bm_disk_release lets the held writers go on.
 * Any thread may release. Reads are never held. */
void bm_disk_hold(struct bm_disk *d);
unsigned bm_disk_changes_in_progress(struct bm_disk *d);
void bm_disk_quiesce(struct bm_disk *d);
void bm_disk_release(struct bm_disk *d);

/*
 * Redirection, for good: once bm_disk_redirect returns, reads, writes, zeroes, trims and flushes
 * go to these functions instead of the image (a mirror whose writers pivoted to its target),
 * and the image is never touched again through this disk. Changes still pass the gate (a held
 * change waits, then goes to the redirect) and run the hooks, but mark no bitmap: the image did
 * not change. Extents then report all data, and cache hints do nothing. Each function returns 0
 * or -errno; flags are the operation flags above.
 */
struct bm_disk_redirect {
    int (*pread)(void *opaque, void *buf, size_t len, uint64_t offset);
    int (*pwrite)(void *opaque, const void *buf, size_t len, uint64_t offset, unsigned flags);
    int (*zero)(void *opaque, uint64_t offset, uint64_t len, unsigned flags);
    int (*trim)(void *opaque, uint64_t offset, uint64_t len, unsigned flags);
    int (*flush)(void *opaque);
    void *opaque;
};

/* Redirect d (once; a second call is ignored). Call it with the gate held (bm_disk_hold), so that
 * no change is split between the image and the redirect; reads in progress may still finish on
 * the image. r->opaque must stay valid for as long as anyone uses d. */
void bm_disk_redirect(struct bm_disk *d, const struct bm_disk_redirect *r);
bool bm_disk_is_redirected(const struct bm_disk *d);

/* A new read-only O_DIRECT descriptor for the same image (the caller closes it), for readers
 * that bypass the page cache with aligned I/O. Returns the fd or -errno. */
int bm_disk_open_direct(struct bm_disk *d);

/*
 * A remote disk: a read-only bm_disk over an image someone else writes and serves (a QEMU
 * drive, read through QEMU's own NBD export of it). Reads and extents go to the functions
 * below. Its writers are not ours, so no write marks the attached bitmaps as it happens;
 * instead the remote keeps its own record of what was written (QEMU's dirty bitmaps) and
 * bm_disk_harvest moves that record into every attached bitmap. The ordering invariant holds
 * per harvest: a block written before the harvest began is marked by it, one written after is
 * left to the next harvest, and one read after its bit was cleared holds at least what the
 * harvest that marked it saw. Locks, hooks, the gate and flushes do nothing on a remote disk
 * (the writers are held, if at all, by whoever owns the remote: a paused QEMU), and
 * bm_disk_fd is -1, bm_disk_open_direct -ENOTSUP.
 */
struct bm_disk_remote {
    int (*pread)(void *opaque, void *buf, size_t len, uint64_t offset);
    /* As bm_disk_extents (within the disk, len > 0, max > 0). */
    int (*extents)(void *opaque, uint64_t offset, uint64_t len, struct bm_extent *ext,
                   size_t max, size_t *n);
    /* Call mark(d, offset, len) for every range written since the previous harvest (or since
     * the remote started recording); 0 or -errno. After a failure nothing is known of what
     * was written: the caller must not go on as if the copy were complete. */
    int (*harvest)(void *opaque, struct bm_disk *d,
                   void (*mark)(struct bm_disk *d, uint64_t offset, uint64_t len));
    /* Free the remote's side (bm_disk_close calls it once). */
    void (*close)(void *opaque);
    void *opaque;
};

/* A remote disk of size bytes named name (for messages). r is copied. */
int bm_disk_open_remote(const char *name, uint64_t size, const struct bm_disk_remote *r,
                        struct bm_disk **out);
bool bm_disk_is_remote(const struct bm_disk *d);
/* Harvest a remote disk's writes into its attached bitmaps (see above). One harvest at a time
 * per disk (callers serialise). 0 at once for a local disk, whose writes mark as they go. */
int bm_disk_harvest(struct bm_disk *d);

/* Dirty tracking. The bitmap must cover the disk's size; -ENOSPC if BM_DISK_MAX_BITMAPS are
 * attached already. A detached bitmap sees no further writes once detach returns. */
int bm_disk_attach_bitmap(struct bm_disk *d, struct bm_bitmap *b);
void bm_disk_detach_bitmap(struct bm_disk *d, struct bm_bitmap *b);

#endif
