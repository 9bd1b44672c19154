/* imagelock.h: the image locks QEMU takes, so that blkmig and QEMU (qemu-img, qemu-io,
 * qemu-nbd, the VM) keep each other from writing an image the other one uses. */
#ifndef BM_COMMON_IMAGELOCK_H
#define BM_COMMON_IMAGELOCK_H

#include <stdbool.h>
#include <stddef.h>

/*
 * QEMU's scheme (block/file-posix.c): each permission a user of an image may take has a bit;
 * whoever holds permission bit b keeps a shared OFD byte-range lock (F_OFD_SETLK, F_RDLCK) on
 * byte BM_IMAGE_LOCK_PERM_BASE + b of the image file, and whoever does not let others take it
 * keeps one on byte BM_IMAGE_LOCK_SHARED_BASE + b. A new user first locks its own bytes, then tests
 * (F_OFD_GETLK) that no other open file holds the "denied" byte of a permission it takes nor
 * the "held" byte of one it denies; on a conflict it drops its locks and fails. All locks are
 * shared, so holders never block each other; they only see each other. The locks belong to the
 * open file description: they survive fork and go when its last descriptor closes.
 */
#define BM_IMAGE_LOCK_PERM_BASE   100
#define BM_IMAGE_LOCK_SHARED_BASE 200

/* QEMU's permission bits (its BLK_PERM_*). */
#define BM_PERM_CONSISTENT_READ 0x01u
#define BM_PERM_WRITE           0x02u
#define BM_PERM_WRITE_UNCHANGED 0x04u
#define BM_PERM_RESIZE          0x08u
#define BM_PERM_GRAPH_MOD       0x10u /* older QEMUs only; blkmig neither takes nor denies it */
#define BM_PERM_NBITS           5

enum bm_image_lock_mode {
    /* Read and write; deny others write and resize (QEMU's read-write open). */
    BM_IMAGE_LOCK_WRITE,
    /* Read; deny others write and resize (qemu-img without -U). */
    BM_IMAGE_LOCK_READ,
    /* Read and deny nothing: other processes may write (qemu-img -U, force-share). */
    BM_IMAGE_LOCK_SHARED,
};

/* The other user of the image when a lock conflicts. */
struct bm_image_holder {
    unsigned perm; /* the permission in conflict (one BM_PERM_* bit) */
    bool writer;   /* another open file holds the write permission */
    long pid;      /* a process with that open file; 0 when none was found (another user's) */
    char comm[32]; /* that process's command name; "" without a pid */
};

/*
 * Take the locks of mode on fd (an image file or block device opened for reading at least).
 * Returns 0; -EBUSY when another open file's locks conflict (h describes it; fd then holds
 * none of the locks); -ENOTSUP when the file system or kernel has no OFD locks (nothing is
 * locked; QEMU then does not lock either); other -errno from fcntl.
 */
int bm_image_lock(int fd, enum bm_image_lock_mode mode, struct bm_image_holder *h);

/* Drop every lock of this scheme fd holds. */
void bm_image_unlock(int fd);

/* "another process (qemu-nbd, pid 42)", or "another process (QEMU?)" when none was found,
 * or "this process (...)" when the image is open twice here. */
void bm_image_holder_describe(const struct bm_image_holder *h, char *buf, size_t len);

/* The name QEMU gives permission bit perm ("write", "consistent read", ...). */
const char *bm_image_perm_name(unsigned perm);

#endif
