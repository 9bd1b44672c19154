/* source-internal.h: the source migration job's state (source.c and switchover.c). */
#ifndef BM_MIGRATION_SOURCE_INTERNAL_H
#define BM_MIGRATION_SOURCE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "blockmirror/mirror.h"
#include "migration/migration.h"
#include "migration/stream.h"
#include "ram/ram.h"

struct mig_stats {
    enum mig_status status;
    const char *phase; /* static string */
    uint64_t elapsed_ms, setup_ms, total_ms, ram_start_ms;
    uint64_t downtime_ms, expected_downtime_ms;
    int64_t guest_downtime_us; /* -1 = not reported */
    uint64_t pause_ram_ms, pause_disk_ms, pause_state_ms, pause_resume_ms;
    uint64_t pre_pause_flush_ms; /* waiting for a periodic target flush before pausing */
    uint64_t src_digest_ms, dst_digest_ms;
    bool verified;
    /* After RESUMED: when it came and when DURABLE came (ms since the start; 0 = not yet),
     * whether the destination's disks are durable in place (-1 = no word), its flush. */
    uint64_t resumed_ms, durable_ms, dest_flush_ms;
    int durable;
    char durable_error[512];
    struct ram_stats ram;
    uint64_t ram_dirty_rate;
    uint64_t disk_size, disk_bulk_total, disk_bulk_done, disk_bytes, disk_zero_bytes,
        disk_active_bytes, disk_dirty, disk_rounds, disk_mode_switches, disk_unflushed;
    unsigned disks, disks_ready, disks_past_bulk, disks_write_blocking, disks_started;
    uint64_t throughput, stream_bytes, in_flight;
    unsigned throttle, throttle_max;
    uint64_t qemu_downtime_ms; /* a QEMU VM: QEMU's own figure */
    char error[512];
};

struct mig_source {
    struct vm *vm;
    struct mig_params p;
    mig_event_fn fn;
    void *opaque;
    pthread_t thread;
    bool started;
    atomic_bool want_cancel;

    pthread_mutex_t mu; /* protects st */
    struct mig_stats st;

    /* The rest belongs to the migration thread. */
    struct mig_conn c;
    struct ram_sender *ram;
    struct mirror_job *mj[VM_MAX_DISKS];
    unsigned nmj;
    bool paused, ram_started, complete_sent;
    bool log_running; /* the dirty log watches the guest from the start (hot-set detection) */
    uint64_t nonzero_pages; /* counted when the job starts: round 0's estimate */
    uint64_t t0_ns, last_send_ns, last_heard_ns;
    uint64_t peer_received; /* stream bytes the destination has applied (from its PINGs) */
    struct mig_stats w; /* working copy, published under mu */

    /* A QEMU VM (qemu-source.c): QEMU moves RAM and devices to qemu_uri; its disks are read
     * through QEMU's NBD server (qnbd, its socket in qdir). */
    bool qemu;
    struct qemu_nbd *qnbd;
    char qdir[64];
    char qemu_uri[300];
    bool qmig_started;
    int64_t qdowntime_set, qbw_set; /* the last downtime-limit and max-bandwidth set */
    uint64_t qbest_thr;             /* the disks' best copy rate seen, bytes/s */
    uint64_t t_pre_switchover;
};

/* qemu-source.c */
struct json_object *mig_qemu_describe(struct mig_source *m, char *err, size_t errlen);
int mig_qemu_open_disks(struct mig_source *m, char *err, size_t errlen);
void mig_qemu_close_disks(struct mig_source *m);
void mig_qemu_rollback(struct mig_source *m);
void mig_qemu_quit(struct mig_source *m);
int mig_qemu_set_uri(struct mig_source *m, struct json_object *ack, char *err, size_t errlen);
bool mig_qemu_converge(struct mig_source *m);
void mig_qemu_switchover(struct mig_source *m);
/* converge.c: a failed or cancelled mirror, with why. */
int mig_check_mirrors(struct mig_source *m, char *why, size_t whylen);
/* switchover.c: send COMPLETE c (taken), then wait for RESUMED, DURABLE and REPORT; ends in
 * COMPLETED, UNKNOWN or a rollback. */
void mig_complete(struct mig_source *m, struct json_object *c, uint64_t t_pause,
                  uint64_t src_digest_ms);
/* converge.c: the checks of every turn of a pre-copy loop: a cancel (rolled back: 1), the
 * destination's word, the mirrors, a dead guest (-errno, why filled); 0 to go on. */
int mig_turn_checks(struct mig_source *m, char *why, size_t whylen);

uint64_t mig_now_ns(void);
void mig_publish(struct mig_source *m);
void mig_set_status(struct mig_source *m, enum mig_status s, const char *phase);
/* Roll back: cancel the mirrors, resume the VM, tell the destination; ends in status s. */
void mig_rollback(struct mig_source *m, enum mig_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Read what the destination sent, without waiting. -errno on a broken or bad stream; an ABORT
 * from the peer is -ECONNABORTED with its reason in why. */
int mig_poll_peer(struct mig_source *m, char *why, size_t whylen);
/* Gather mirror and RAM figures into m->w. */
void mig_collect(struct mig_source *m);
/* Pause, send the rest, hand over; ends in COMPLETED, UNKNOWN or a rollback. */
void mig_switchover(struct mig_source *m);

#endif
