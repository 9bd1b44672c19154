/* qmig.h: steering QEMU's own migration (RAM and devices) over QMP, for blkmig's controller. */
#ifndef BM_VM_QEMU_QMIG_H
#define BM_VM_QEMU_QMIG_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vm/qemu/mon.h"

/*
 * QEMU moves a QEMU VM's RAM and device state itself, straight to the destination QEMU; blkmig
 * moves the disks and decides when to switch over. The sequence (QEMU 7.2):
 *   destination:  migrate-incoming {uri}                         (qemu_mig_incoming)
 *   source:       migrate-set-capabilities [pause-before-switchover, events]
 *                 migrate-set-parameters {downtime-limit, max-bandwidth}  (qemu_mig_prepare)
 *                 migrate {uri}                                  (qemu_mig_start)
 *                 query-migrate, as often as the controller looks  (qemu_mig_query)
 *                 migrate-set-parameters, as the controller decides (qemu_mig_set)
 *   QEMU pauses the guest and stops in status "pre-switchover" (its I/O drained): the disks'
 *   last blocks go now; then
 *                 migrate-continue {state: pre-switchover}       (qemu_mig_continue)
 *   or, to give up, migrate_cancel (qemu_mig_cancel): QEMU resumes the source guest (checked at
 *   pre-switchover and while active), the destination QEMU fails its load and must be ended.
 * QEMU's downtime-limit decides when QEMU stops iterating; blkmig holds it at 1 ms while the
 * disks are not ready, which keeps a guest that dirties anything iterating (an idle guest's
 * RAM converges at once: blkmig starts QEMU's migration only when the disks are nearly done).
 */

/* What query-migrate says, checked. Figures absent from the reply are 0. */
struct qemu_mig_info {
    char status[24];              /* none, setup, active, pre-switchover, device, completed,
                                     failed, cancelling, cancelled, ... (a known one) */
    uint64_t total_time_ms, setup_time_ms, downtime_ms, expected_downtime_ms;
    uint64_t ram_total, ram_remaining, ram_transferred;
    uint64_t ram_dirty_rate;      /* bytes/s: dirty-pages-rate x page-size */
    uint64_t ram_throughput;      /* bytes/s, from mbps */
    uint64_t ram_rounds;          /* dirty-sync-count */
    char error[256];              /* error-desc when failed */
};

/* Parse a query-migrate return value (an object; hostile until checked). 0, or -EPROTO with
 * err saying what is wrong. */
int qemu_mig_parse(struct json_object *ret, struct qemu_mig_info *out, char *err, size_t errlen);
/* Whether status is one where the migration is over (completed, failed, cancelled). */
bool qemu_mig_status_final(const char *status);

int qemu_mig_incoming(struct qemu_mon *dst, const char *uri, char *err, size_t errlen);
/* Capabilities and the first parameters (max_bandwidth 0: QEMU's unlimited, i.e. the largest
 * value it takes). */
int qemu_mig_prepare(struct qemu_mon *src, uint64_t max_bandwidth, unsigned downtime_ms,
                     char *err, size_t errlen);
int qemu_mig_start(struct qemu_mon *src, const char *uri, char *err, size_t errlen);
int qemu_mig_query(struct qemu_mon *m, struct qemu_mig_info *out, char *err, size_t errlen);
/* Change max-bandwidth (bytes/s; 0 = unlimited) and downtime-limit (ms); a negative value
 * leaves that one as it is. */
int qemu_mig_set(struct qemu_mon *src, int64_t max_bandwidth, int64_t downtime_ms, char *err,
                 size_t errlen);
int qemu_mig_continue(struct qemu_mon *src, char *err, size_t errlen);
int qemu_mig_cancel(struct qemu_mon *src, char *err, size_t errlen);

#endif
