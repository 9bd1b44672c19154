/* image.c: open the images a subcommand uses, locked as QEMU locks them and checked raw. */
#include <config.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "cli/image.h"
#include "common/imagefmt.h"
#include "common/log.h"

static void say_locked(const char *path, const struct cli_image *o, const struct bm_image_holder *h)
{
    char who[96];
    bm_image_holder_describe(h, who, sizeof who);
    const char *hint =
        o->offer_share && !o->force_share ? "; use --force-share to open it read-only" : "";
    if (h->writer)
        bm_error("image %s is locked for writing by %s%s", path, who, hint);
    else
        bm_error("image %s is in use by %s, which denies others the \"%s\" permission%s", path, who,
                 bm_image_perm_name(h->perm), hint);
}

/* Refuse an image whose header is another format's: opened raw, it would be destroyed. */
static int check_raw(const char *path, struct bm_disk *d, const struct cli_image *o)
{
    const struct bm_imagefmt *f;
    int r = bm_imagefmt_probe(bm_disk_fd(d), bm_disk_size(d), &f);
    if (r < 0) {
        bm_error("image %s: cannot read its header: %s", path, strerror(-r));
        return r;
    }
    if (!f)
        return 0;
    char advice[512];
    bm_imagefmt_advice(f, path, o->serving, advice, sizeof advice);
    bm_error("image %s is a %s image (%s), not raw, and blkmig handles raw images only: %s; "
             "give --format raw if it is raw data that only starts like %s",
             path, f->name, f->desc, advice, f->name);
    return -EMEDIUMTYPE;
}

int cli_open_image(const char *path, const struct cli_image *o, struct bm_disk **out)
{
    bool ro = o->readonly || o->force_share;
    struct bm_disk *d;
    int r = bm_disk_open(path, ro ? BM_DISK_OPEN_READONLY : 0, &d);
    if (r < 0)
        return r;
    enum bm_image_lock_mode mode = o->force_share ? BM_IMAGE_LOCK_SHARED
                                   : ro           ? BM_IMAGE_LOCK_READ
                                                  : BM_IMAGE_LOCK_WRITE;
    struct bm_image_holder h;
    r = bm_disk_lock(d, mode, &h);
    if (r == -EBUSY)
        say_locked(path, o, &h);
    else if (r < 0)
        bm_error("image %s: cannot lock it: %s", path, strerror(-r));
    if (r == 0 && o->raw_only)
        r = check_raw(path, d, o);
    if (r < 0) {
        bm_disk_close(d);
        return r;
    }
    *out = d;
    return 0;
}

int cli_parse_format(const char *arg)
{
    if (strcmp(arg, "raw") == 0)
        return 0;
    bm_error("--format %s: blkmig handles raw images only (convert others with qemu-img "
             "convert -O raw)",
             arg);
    return -1;
}
