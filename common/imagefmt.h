/* imagefmt.h: recognise disk image formats other than raw by their magic numbers. */
#ifndef BM_COMMON_IMAGEFMT_H
#define BM_COMMON_IMAGEFMT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * blkmig reads and writes images as raw bytes. An image in a container format (qcow2, vmdk,
 * ...) opened as raw shows the guest the container's metadata, and the guest's writes destroy
 * it. These helpers tell such an image by its header, the way `qemu-img info` probes it.
 */
struct bm_imagefmt {
    const char *name; /* QEMU's name for the format (qemu-img -f NAME): "qcow2", "vmdk", ... */
    const char *desc; /* what it is, for messages: "QEMU copy-on-write v2" */
};

/* How many bytes at the start and at the end of an image bm_imagefmt_detect looks at. */
#define BM_IMAGEFMT_HEAD 1024u
#define BM_IMAGEFMT_TAIL 512u

/*
 * The format whose header the image shows, or NULL when it shows none this knows (raw).
 * head: the image's first hlen bytes (fewer than BM_IMAGEFMT_HEAD for a short image);
 * tail: its last tlen bytes (tlen 0 when not read). A magic that does not fit wholly in the
 * bytes given is not matched: a short image is raw.
 */
const struct bm_imagefmt *bm_imagefmt_detect(const uint8_t *head, size_t hlen, const uint8_t *tail,
                                             size_t tlen);

/* Read the head and tail of the image open on fd, size bytes long, and detect its format.
 * 0 with *fmt set (NULL for raw), or -errno from the reads. */
int bm_imagefmt_probe(int fd, uint64_t size, const struct bm_imagefmt **fmt);

/* What to do with the image of format f at path instead of opening it as raw: which tool
 * converts it, and with serving, which serves it as raw instead (qemu-nbd). At most len bytes
 * to buf. */
void bm_imagefmt_advice(const struct bm_imagefmt *f, const char *path, bool serving, char *buf,
                        size_t len);

#endif
