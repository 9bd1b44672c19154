/* qemu-migration.h: migrating a QEMU VM: QEMU moves RAM and devices, the mirrors move the
 * disks read through QEMU, the controller decides when (docs/architecture.md §8.9). */
#ifndef BM_MIGRATION_QEMU_MIGRATION_H
#define BM_MIGRATION_QEMU_MIGRATION_H

#include <json-c/json.h>
#include <stdbool.h>

#include "migration/migration.h"
#include "migration/stream.h"

/* Whether vm is a QEMU VM (vm/qemu/qemu.h). */
bool mig_vm_is_qemu(const struct vm *vm);

/* The destination's whole migration of a QEMU VM from its HELLO (taken) on: images, QEMU,
 * exports, HELLO_ACK, then until DURABLE and REPORT. 0 with res filled (its vm is the running
 * QEMU VM, ndisks 0), or -errno with err filled (ABORT sent, QEMU ended, images removed). */
int mig_qemu_incoming(const struct mig_incoming_opts *o, struct mig_conn *c,
                      struct json_object *hello, struct mig_incoming_result *res, char *err,
                      size_t errlen);

/* The checks the destination makes of a QEMU VM's HELLO before it makes anything (its kind,
 * version, command line and disks): 0, or -errno with why in err. No side effect. */
int mig_qemu_hello_check(struct json_object *hello, char *err, size_t errlen);

#endif
