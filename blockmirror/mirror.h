/* mirror.h: the mirror job: copy a live bm_disk to an NBD target and keep it in sync. */
#ifndef BM_BLOCKMIRROR_MIRROR_H
#define BM_BLOCKMIRROR_MIRROR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blockmirror/disk.h"

/*
 * States: setup -> bulk -> dirty -> ready <-> dirty -> completing -> done, or cancelled or
 * failed from any state. The job runs on its own thread; the calls below may be made from any
 * thread. Events (state changes, mode switches, periodic stats) go to the event callback, on
 * the job's thread.
 */
enum mirror_state {
    MIRROR_SETUP,
    MIRROR_BULK,
    MIRROR_DIRTY,
    MIRROR_READY,
    MIRROR_COMPLETING,
    MIRROR_DONE,
    MIRROR_CANCELLED,
    MIRROR_FAILED,
};

enum mirror_copy_mode { MIRROR_MODE_BACKGROUND, MIRROR_MODE_WRITE_BLOCKING, MIRROR_MODE_AUTO };

struct mirror_opts {
    const char *target_uri;
    uint32_t granularity;  /* dirty-bitmap block size, power of two >= 512; 0 = automatic */
    uint32_t request_size; /* largest copy request */
    unsigned in_flight;    /* copy requests in flight at once */
    unsigned connections;  /* NBD connections (when the target allows multi-conn) */
    uint64_t speed;        /* bytes per second, 0 = unlimited */
    enum mirror_copy_mode mode;
    unsigned ready_ms;  /* ready when the dirty data could be copied within this long */
    unsigned retries;   /* consecutive target failures tolerated before failing */
    unsigned stats_ms;  /* period of "stats" events (0 = none) */
    bool direct;        /* read the source with O_DIRECT through libaio where aligned */
    bool pivot;         /* at done, make the target the source's disk (see mirror_complete) */
    /* At completion, leave the target unflushed: what was copied has arrived (every write is
     * answered) but may sit in the target's cache. For a caller that makes the target durable
     * itself, outside the hold (a migration's destination flushes after it resumes the VM). */
    bool skip_final_flush;
    /* At done, keep the target's connections open until mirror_free instead of closing them
     * as the job ends (a migration: their teardown, a round trip and the server's threads,
     * 1-2 ms a connection, would otherwise overlap the guest resuming on the destination). */
    bool linger;
};

void mirror_opts_default(struct mirror_opts *o);

struct mirror_stats {
    enum mirror_state state;
    bool write_blocking;      /* current copy mode */
    uint64_t disk_size;
    uint64_t bulk_total;      /* bytes the bulk pass covers (allocated data) */
    uint64_t bulk_done;
    uint64_t bytes_sent;      /* payload bytes written to the target */
    uint64_t zero_bytes;      /* bytes zeroed on the target with WRITE_ZEROES */
    uint64_t active_bytes;    /* payload bytes forwarded by write-blocking writers */
    uint64_t dirty_bytes;     /* dirty now, including copies in flight */
    uint64_t unflushed;       /* written to the target but not yet flushed there */
    uint64_t throughput;      /* bytes per second copied, recent average */
    uint64_t dirty_rate;      /* bytes per second newly dirtied, recent average */
    uint64_t rounds;          /* completed passes over the dirty bitmap */
    uint64_t retries;         /* failed target commands retried */
    uint64_t mode_switches;
    uint64_t elapsed_ms;
    uint64_t ready_ms;        /* time from start to the first ready, 0 if not yet */
    unsigned connections;
};

struct mirror_job;

typedef void (*mirror_event_fn)(void *opaque, const char *event, const struct mirror_stats *st,
                                const char *detail);

/* Prepare a job copying src (which must stay open until mirror_free) to o->target_uri.
 * Nothing happens until mirror_start. Returns 0 or -EINVAL with a message in err. */
int mirror_new(struct bm_disk *src, const struct mirror_opts *o, mirror_event_fn fn,
               void *opaque, struct mirror_job **out, char *err, size_t errlen);
/* Start the job's thread. */
int mirror_start(struct mirror_job *j);
/* Ask for completion: from ready (or as soon as it is), hold the source's writers and copy what
 * is left. With o.pivot the job then redirects the source disk to the target (bm_disk_redirect)
 * and lets the held writers go on, to the target only: from then on, every read, write, zero,
 * trim and flush of the source disk is served from the target until mirror_free, which its
 * users must not outlive; only then does it flush the target and end in done (or, if that flush
 * fails, in failed, still pivoted). Without o.pivot it flushes the target with the writers
 * held and ends in done; they stay held until mirror_release, which lets them go on to the
 * source only. */
void mirror_complete(struct mirror_job *j);
/* The same, without waiting for ready once the bulk pass is over: for a caller whose writers
 * are stopped already (a paused VM), so the last dirty blocks go at once. */
void mirror_complete_now(struct mirror_job *j);
/* quiet: start no more periodic flushes of the target (one in flight finishes): for a caller
 * about to complete, so that the completion, which writers wait for, does not queue behind
 * one. !quiet: start them again (the caller changed its mind). */
void mirror_quiet_flushes(struct mirror_job *j, bool quiet);
/* Whether a periodic flush of the target is in flight now. */
bool mirror_flush_busy(struct mirror_job *j);
/* Stop copying, flush what was written, end in cancelled. */
void mirror_cancel(struct mirror_job *j);
void mirror_set_speed(struct mirror_job *j, uint64_t bytes_per_second);
void mirror_query(struct mirror_job *j, struct mirror_stats *st);
/* Wait until the job has reached done, cancelled or failed, and return that state, without
 * waiting for it to close its target connections (a round trip each); for a short wait (it
 * polls). mirror_wait must still follow. */
enum mirror_state mirror_wait_ended(struct mirror_job *j);
/* Wait for the end. 0 = done, -ECANCELED = cancelled, other = failed (message in err). */
int mirror_wait(struct mirror_job *j, char *err, size_t errlen);
/* After mirror_wait: let the writers held by a completed job go on (to the source only). A
 * pivoted job released them to the target already: nothing to do. */
void mirror_release(struct mirror_job *j);
/* After mirror_wait: whether the job pivoted (the source disk now serves from the target): after
 * done, or after a failed final flush of the target. */
bool mirror_pivoted(struct mirror_job *j);
void mirror_free(struct mirror_job *j);

const char *mirror_state_name(enum mirror_state s);

#endif
