/* digest.c: content digests of a paused VM's RAM and disks, for --verify. */
#include <config.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <xxhash.h>

#include "migration/migration.h"

static struct json_object *hex(XXH128_hash_t h)
{
    char s[33];
    snprintf(s, sizeof s, "%016llx%016llx", (unsigned long long)h.high64,
             (unsigned long long)h.low64);
    return json_object_new_string(s);
}

/* Hash the disk's whole content as one byte stream; ranges the image reports as holes or
 * zeroes are fed as zero bytes without reading them (reading a hole costs page-cache pages). */
static int digest_disk(XXH3_state_t *st, struct bm_disk *disk, uint8_t *buf, size_t chunk,
                       uint64_t size)
{
    static const uint8_t zeros[65536];
    uint64_t off = 0;
    while (off < size) {
        struct bm_extent ext[64];
        size_t n = 0;
        int r = bm_disk_extents(disk, off, size - off, ext, 64, &n);
        if (r < 0 || n == 0) {
            ext[0] = (struct bm_extent){off, size - off, 0}; /* no map: read it all */
            n = 1;
        }
        for (size_t i = 0; i < n && off < size; i++) {
            uint64_t end = ext[i].offset + ext[i].length;
            if (end > size)
                end = size;
            bool zero = ext[i].flags & (BM_EXTENT_HOLE | BM_EXTENT_ZERO);
            while (off < end) {
                size_t len = end - off < chunk ? (size_t)(end - off) : chunk;
                if (zero) {
                    len = len < sizeof zeros ? len : sizeof zeros;
                    XXH3_128bits_update(st, zeros, len);
                } else {
                    if ((r = bm_disk_pread(disk, buf, len, off)) < 0)
                        return r;
                    XXH3_128bits_update(st, buf, len);
                }
                off += len;
            }
        }
    }
    return 0;
}

struct json_object *mig_digest_vm(struct vm *vm)
{
    struct json_object *o = json_object_new_object();
    XXH3_state_t *st = XXH3_createState();
    const size_t chunk = 1u << 20;
    uint8_t *buf = malloc(chunk);
    if (!st || !buf) {
        XXH3_freeState(st);
        free(buf);
        json_object_put(o);
        return NULL;
    }
    XXH3_128bits_reset(st);
    for (unsigned i = 0; i < vm->nregions; i++)
        XXH3_128bits_update(st, vm->regions[i].host, vm->regions[i].size);
    json_object_object_add(o, "ram", hex(XXH3_128bits_digest(st)));
    struct json_object *d = json_object_new_object();
    for (unsigned k = 0; k < vm->ndisks; k++) {
        struct bm_disk *disk = vm->disks[k].disk;
        uint64_t size = bm_disk_size(disk);
        XXH3_128bits_reset(st);
        int r = digest_disk(st, disk, buf, chunk, size);
        json_object_object_add(d, vm->disks[k].name,
                               r == 0 ? hex(XXH3_128bits_digest(st))
                                      : json_object_new_string("read-error"));
    }
    json_object_object_add(o, "disks", d);
    XXH3_freeState(st);
    free(buf);
    return o;
}
