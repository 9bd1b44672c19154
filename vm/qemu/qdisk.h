/* qdisk.h: a QEMU drive as a remote bm_disk: read through QEMU's NBD export of its node, its
 * writes harvested from QEMU's dirty bitmaps. */
#ifndef BM_VM_QEMU_QDISK_H
#define BM_VM_QEMU_QDISK_H

#include <stddef.h>
#include <stdint.h>

#include "blockmirror/disk.h"
#include "vm/qemu/mon.h"

/*
 * The QMP sequence (QEMU 7.2; docs/architecture.md §8.7):
 *   once per QEMU:  nbd-server-start {addr: {type: unix, data: {path}}}       (qemu_nbd_start)
 *   per drive:      block-dirty-bitmap-add {node, name: blkmig-TAG-1, granularity}
 *                   block-export-add {type: nbd, id: blkmig-TAG, node-name, name: blkmig-TAG,
 *                                     writable: false}      (reads, base:allocation)
 *   per harvest:    transaction [block-dirty-bitmap-add blkmig-TAG-(G+1),
 *                                block-dirty-bitmap-disable blkmig-TAG-G]
 *                   block-export-add {id: blkmig-TAG-h, name: blkmig-TAG-h,
 *                                     bitmaps: [blkmig-TAG-G]}
 *                   NBD_CMD_BLOCK_STATUS over qemu:dirty-bitmap:blkmig-TAG-G on a new
 *                   connection (meta contexts are chosen at the handshake)
 *                   block-export-del blkmig-TAG-h; block-dirty-bitmap-remove blkmig-TAG-G
 *   at close:       block-export-del blkmig-TAG; block-dirty-bitmap-remove of what is left
 * QEMU refuses to export an enabled bitmap read-only, and to change a bitmap while an export
 * holds it: hence an export per harvest rather than one exported bitmap merged into.
 */

struct qemu_nbd;

/* Start QEMU's NBD server on a unix socket at path (blkmig's run directory), for the exports
 * below. An NBD server QEMU already runs (the user's) is an error: QEMU has one. */
int qemu_nbd_start(struct qemu_mon *mon, const char *path, struct qemu_nbd **out, char *err,
                   size_t errlen);
/* Stop it (nbd-server-stop; best effort, a failure is logged) and free it. After every disk
 * opened on it is closed. NULL is fine. */
void qemu_nbd_stop(struct qemu_nbd *n);

/* Open QEMU's node (a node-name from query-block) as a read-only remote bm_disk named name,
 * tracking writes from now on with bitmaps of granularity bytes (a power of two, 512 B to
 * 64 MiB; 0: 64 KiB). tag ([a-z0-9_-], unique per QEMU) names blkmig's bitmaps and exports.
 * size is the drive's virtual size, checked against the export. bm_disk_close removes the
 * bitmaps and exports (best effort, logged). */
int qemu_disk_open(struct qemu_nbd *n, const char *node, const char *tag, const char *name,
                   uint64_t size, uint32_t granularity, struct bm_disk **out, char *err,
                   size_t errlen);

/* A read-only remote bm_disk over any NBD export (uri, libnbd's syntax) of size bytes, named
 * name, for reading only: its harvest is -ENOTSUP. For digests of a destination's disks
 * through its QEMU's export. */
int qemu_nbd_reader_open(const char *uri, const char *name, uint64_t size, struct bm_disk **out,
                         char *err, size_t errlen);

#endif
