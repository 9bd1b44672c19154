/* dest-internal.h: the destination's disk images and limits (dest-images.c), for dest.c. */
#ifndef BM_MIGRATION_DEST_INTERNAL_H
#define BM_MIGRATION_DEST_INTERNAL_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "migration/migration.h"

enum mig_image_kind {
    MIG_IMAGE_NEW,      /* --with-disk: a new file, received as a temporary file beside it */
    MIG_IMAGE_BLOCKDEV, /* --with-disk, a block device listed with --disk and --force */
    MIG_IMAGE_SHARED,   /* no --with-disk: an image listed with --disk, opened as it is */
};

struct mig_image {
    char name[VM_DISK_NAME_MAX];
    uint64_t size;
    enum mig_image_kind kind;
    char path[4096]; /* where the image is once the migration has completed */
    /* MIG_IMAGE_NEW only: the directory (its fd, name and identity), the image's name in it,
     * and the temporary name that receives it until then. */
    int dirfd;
    char dir[4096], base[256], tmp[256];
    dev_t dir_dev;
    ino_t dir_ino;
    bool replace;   /* a regular file is at path already (--force): replaced on completion */
    bool tmp_ours;  /* tmp names a file this migration made (the new image, or the old one once
                       exchanged with it) */
    bool placed;    /* the new image is at path */
    bool exchanged; /* placed over an old image, which now sits at tmp */
    int old_fd;     /* replace: the old image, open and locked as QEMU locks images until the
                       migration ends, so that nobody takes it meanwhile */
    struct bm_disk *disk;
};

/* Every image of one incoming migration. Until mig_images_keep they belong to it: a discard
 * removes exactly what it made and puts back what it replaced. */
struct mig_images {
    struct mig_image img[VM_MAX_DISKS];
    unsigned n;
    bool kept;
};

/* The RAM a HELLO's VM description asks for, against --max-ram or, by default, the memory
 * available on this host. 0, or -errno with the reason in err. */
int mig_dest_check_ram(const struct mig_incoming_opts *o, struct json_object *vmd, char *err,
                       size_t errlen);

/* Validate the HELLO's disk list, find every image, check them against --max-disk or, by
 * default, the free space where they go, and only then create (temporary files, sparse, at
 * the announced size) or open them. On failure the caller still calls mig_images_discard. */
int mig_images_open(struct mig_images *im, const struct mig_incoming_opts *o, bool with_disk,
                    struct json_object *disks, char *err, size_t errlen);

/* Flush each image written over NBD, rename each new one to its path (exchanging it with an
 * image it replaces) and sync the directories. A discard after this, unless kept, still undoes
 * it. */
int mig_images_place(struct mig_images *im, char *err, size_t errlen);

/* Shared storage: take the images' locks (the source handed them over in its pause); before
 * RESUMED. 0, or -errno with the reason (the holder named) in err. */
int mig_images_lock_shared(struct mig_images *im, char *err, size_t errlen);

/* RESUMED is sent: the images belong to the VM; a later discard only closes them (a new image
 * not placed yet stays at its temporary name). */
void mig_images_keep(struct mig_images *im);

/* After keep, with the VM running on them: mig_images_place, then remove the images that were
 * replaced. Once this returns 0 every image is durable at its path. On failure nothing is
 * undone (an image may be left at its temporary name: err says which). */
int mig_images_durable(struct mig_images *im, char *err, size_t errlen);

/* Close every image; unless kept, remove what this migration made and put back what it
 * replaced. */
void mig_images_discard(struct mig_images *im);

#endif
