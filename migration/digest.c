/* digest.c: content digests of a paused VM's RAM and disks, for --verify. */
#include <config.h>

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
        int r = 0;
        for (uint64_t off = 0; off < size && r == 0; off += chunk) {
            size_t n = size - off < chunk ? (size_t)(size - off) : chunk;
            r = bm_disk_pread(disk, buf, n, off);
            if (r == 0)
                XXH3_128bits_update(st, buf, n);
        }
        json_object_object_add(d, vm->disks[k].name,
                               r == 0 ? hex(XXH3_128bits_digest(st))
                                      : json_object_new_string("read-error"));
    }
    json_object_object_add(o, "disks", d);
    XXH3_freeState(st);
    free(buf);
    return o;
}
