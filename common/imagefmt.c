/* imagefmt.c: disk image format detection by magic numbers (see imagefmt.h). */
#include <config.h>

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/imagefmt.h"

enum fmt_id {
    F_QCOW,
    F_QCOW2,
    F_QED,
    F_VMDK,
    F_VHDX,
    F_VPC,
    F_VDI,
    F_LUKS,
    F_PARALLELS,
    F_BOCHS,
    F_CLOOP,
    F_DMG,
};

static const struct bm_imagefmt formats[] = {
    [F_QCOW] = {"qcow", "QEMU copy-on-write v1"},
    [F_QCOW2] = {"qcow2", "QEMU copy-on-write v2"},
    [F_QED] = {"qed", "QEMU enhanced disk"},
    [F_VMDK] = {"vmdk", "VMware virtual disk"},
    [F_VHDX] = {"vhdx", "Hyper-V virtual hard disk v2"},
    [F_VPC] = {"vpc", "Virtual PC / Hyper-V VHD"},
    [F_VDI] = {"vdi", "VirtualBox disk image"},
    [F_LUKS] = {"luks", "LUKS encrypted volume"},
    [F_PARALLELS] = {"parallels", "Parallels disk"},
    [F_BOCHS] = {"bochs", "Bochs disk"},
    [F_CLOOP] = {"cloop", "compressed loop image"},
    [F_DMG] = {"dmg", "Apple disk image"},
};

/* A magic string at a fixed offset of the head. */
struct head_magic {
    enum fmt_id id;
    size_t offset;
    const char *magic;
    size_t len;
};

/* clang-format off */
#define M(id, off, s) {id, off, s, sizeof(s) - 1}
/* clang-format on */
static const struct head_magic head_magics[] = {
    M(F_QED, 0, "QED\0"),
    M(F_VMDK, 0, "KDMV"),                  /* hosted sparse extent */
    M(F_VMDK, 0, "COWD"),                  /* ESX sparse extent */
    M(F_VMDK, 0, "# Disk DescriptorFile"), /* text descriptor */
    M(F_VHDX, 0, "vhdxfile"),
    M(F_VPC, 0, "conectix"), /* dynamic VHD: a copy of the footer leads */
    M(F_VDI, 0x40, "\x7f\x10\xda\xbe"),
    M(F_LUKS, 0, "LUKS\xba\xbe"),
    M(F_PARALLELS, 0, "WithoutFreeSpace"),
    M(F_PARALLELS, 0, "WithouFreSpacExt"),
    M(F_BOCHS, 0, "Bochs Virtual HD Image"),
    M(F_CLOOP, 0, "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0"),
};
#undef M

static bool has(const uint8_t *buf, size_t len, size_t offset, const char *magic, size_t mlen)
{
    return offset <= len && mlen <= len - offset && memcmp(buf + offset, magic, mlen) == 0;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static const struct bm_imagefmt *detect_head(const uint8_t *head, size_t hlen)
{
    /* qcow and qcow2 share the magic; the version that follows tells them apart. */
    if (has(head, hlen, 0, "QFI\xfb", 4) && hlen >= 8) {
        uint32_t version = be32(head + 4);
        if (version == 1)
            return &formats[F_QCOW];
        if (version == 2 || version == 3)
            return &formats[F_QCOW2];
    }
    for (size_t i = 0; i < sizeof head_magics / sizeof head_magics[0]; i++) {
        const struct head_magic *m = &head_magics[i];
        if (has(head, hlen, m->offset, m->magic, m->len))
            return &formats[m->id];
    }
    return NULL;
}

/* The trailers that end a fixed VHD (its footer) and a DMG (its "koly" block), each 512
 * bytes. */
static const struct bm_imagefmt *detect_tail(const uint8_t *tail, size_t tlen)
{
    if (tlen < 512)
        return NULL;
    const uint8_t *t = tail + tlen - 512;
    if (has(t, 512, 0, "conectix", 8))
        return &formats[F_VPC];
    if (has(t, 512, 0, "koly", 4) && be32(t + 4) == 4 && be32(t + 8) == 512)
        return &formats[F_DMG];
    return NULL;
}

const struct bm_imagefmt *bm_imagefmt_detect(const uint8_t *head, size_t hlen, const uint8_t *tail,
                                             size_t tlen)
{
    const struct bm_imagefmt *f = head ? detect_head(head, hlen) : NULL;
    if (!f && tail)
        f = detect_tail(tail, tlen);
    return f;
}

static int read_at(int fd, uint8_t *buf, size_t len, uint64_t offset)
{
    size_t done = 0;
    while (done < len) {
        ssize_t r = pread(fd, buf + done, len - done, (off_t)(offset + done));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            break;
        done += (size_t)r;
    }
    return (int)done;
}

int bm_imagefmt_probe(int fd, uint64_t size, const struct bm_imagefmt **fmt)
{
    uint8_t head[BM_IMAGEFMT_HEAD], tail[BM_IMAGEFMT_TAIL];
    size_t hlen = size < sizeof head ? (size_t)size : sizeof head;
    int h = read_at(fd, head, hlen, 0);
    if (h < 0)
        return h;
    int t = 0;
    if (size >= sizeof tail) {
        t = read_at(fd, tail, sizeof tail, size - sizeof tail);
        if (t < 0)
            return t;
    }
    *fmt = bm_imagefmt_detect(head, (size_t)h, tail, (size_t)t);
    return 0;
}

void bm_imagefmt_advice(const struct bm_imagefmt *f, const char *path, bool serving, char *buf,
                        size_t len)
{
    if (f == &formats[F_LUKS]) {
        snprintf(buf, len, "decrypt it first (cryptsetup open %s NAME) and use /dev/mapper/NAME",
                 path);
        return;
    }
    snprintf(buf, len, "convert it (qemu-img convert -f %s -O raw %s %s.raw)%s%s%s", f->name, path,
             path, serving ? " or serve it with qemu-nbd -f " : "", serving ? f->name : "",
             serving ? " instead" : "");
}
