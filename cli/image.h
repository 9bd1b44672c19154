/* image.h: how the subcommands open the images they use (QEMU's locks, the raw-only check). */
#ifndef BM_CLI_IMAGE_H
#define BM_CLI_IMAGE_H

#include <stdbool.h>

#include "blockmirror/disk.h"

struct cli_image {
    bool readonly;    /* open read-only, denying others write (as qemu-img without -U) */
    bool force_share; /* --force-share: read-only, and other processes may write */
    bool offer_share; /* the command has --force-share: a lock conflict message suggests it */
    bool raw_only;    /* refuse an image that starts like another format (no --format raw) */
    bool serving;     /* for a refused format, suggest serving it with qemu-nbd instead */
};

/* Open the image at path as o says, with QEMU's image locks (write locks unless read-only).
 * Says why on failure (one line) and returns -errno: -EBUSY when another process holds the
 * image, -EMEDIUMTYPE for a format other than raw. */
int cli_open_image(const char *path, const struct cli_image *o, struct bm_disk **out);

/* --format FMT: 0 for "raw" (the only format blkmig handles), else -1 with a message. */
int cli_parse_format(const char *arg);

#endif
