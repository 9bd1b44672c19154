/* mirror-internal.h: the mirror job's state, shared by mirror.c and mirror-active.c. */
#ifndef BM_BLOCKMIRROR_MIRROR_INTERNAL_H
#define BM_BLOCKMIRROR_MIRROR_INTERNAL_H

#include <libaio.h>
#include <pthread.h>
#include <stdatomic.h>

#include "blockmirror/mirror.h"
#include "blockmirror/target.h"
#include "common/bitmap.h"

/* One copy request in flight (background copy, bulk or dirty). */
struct slot {
    struct mirror_job *j;
    uint8_t *buf;
    uint64_t first_bit, nbits; /* blocks held busy */
    uint64_t offset, len;
    bool zero;       /* sent as WRITE_ZEROES */
    bool bulk;       /* counts toward bulk progress */
    bool redirty;    /* on failure, set the blocks dirty again */
    bool dirty_copy; /* taken from the dirty bitmap (counts as dirty while in flight) */
    bool used;
    bool reading; /* an O_DIRECT read (or a remote source's, mirror-readers.c) is in flight
                     into buf */
    struct iocb iocb;
    struct slot *rnext; /* mirror-readers.c: its queue, and the finished reads */
    int rres;           /* and the read's result */
};

/* A remote source's readers (mirror-readers.c). */
#define MIRROR_READERS 4
struct mirror_readers {
    bool inited, stop;
    pthread_t th[MIRROR_READERS];
    unsigned n;
    pthread_mutex_t mu; /* protects the queue, done and stop */
    pthread_cond_t cv;
    struct slot *head, *tail, *done;
    int fd; /* eventfd: a read finished */
};

/* A write-blocking writer's change, forwarded by the job's thread. */
struct active_req {
    struct mirror_job *j;
    enum bm_disk_change kind;
    const void *buf;
    uint64_t offset, len;
    bool done;
    int err;
    struct active_req *next;
};

/* A request of the source disk's users after a pivot, served from the target by the pivot
 * thread (mirror-pivot.c). It lives on the caller's stack until done. */
enum pivot_kind { PIVOT_READ, PIVOT_WRITE, PIVOT_ZERO, PIVOT_TRIM, PIVOT_FLUSH };
struct pivot_req {
    struct mirror_job *j;
    enum pivot_kind kind;
    void *rbuf;       /* read: into here */
    const void *wbuf; /* write: from here */
    uint64_t offset, len;
    bool fua;       /* flush the target once the request is done */
    bool flushing;  /* that flush is in flight */
    unsigned parts; /* target commands out, plus one while submitting */
    int err;        /* first error, positive errno */
    bool done;
    struct pivot_req *next;
};

/* Target ranges known to read as zeroes (from its block status at setup). */
struct zero_range {
    uint64_t offset, len;
};

/* A target flush being waited for (see flush_target in mirror.c). */
struct flush_wait {
    bool done;
    int err;
};

struct mirror_job {
    struct bm_disk *src;
    struct mirror_opts o;
    char *uri;
    mirror_event_fn fn;
    void *opaque;
    uint64_t size;
    unsigned shift; /* log2(granularity) */

    struct bm_bitmap *dirty;
    struct bm_target *t;
    pthread_t thread;
    bool started;
    int wake_fd; /* eventfd: control requests and active writes */
    /* --direct: libaio context, its completion eventfd, the O_DIRECT source fd */
    io_context_t aio;
    int aio_fd;
    int direct_fd;
    struct mirror_readers rd; /* a remote source's reads (rd.inited) */

    _Atomic bool want_complete, want_cancel, complete_now;
    _Atomic uint64_t speed;

    /* busy_lock protects busy (blocks with a copy or an active write in flight), the active
     * queue, and stopped; busy_cond signals a block going idle or an active request done. */
    pthread_mutex_t busy_lock;
    pthread_cond_t busy_cond;
    struct bm_bitmap *busy;
    struct active_req *aq_head, *aq_tail;
    bool stopped;
    _Atomic bool write_blocking;
    /* Where the bulk pass has issued up to (UINT64_MAX when it is over). A write-blocking
     * writer may call blocks clean only below it: above it the bulk pass may still zero a
     * range that was a hole at setup. */
    _Atomic uint64_t bulk_frontier;
    _Atomic uint64_t active_bytes;

    struct slot *slots;
    unsigned nslots, nused;

    /* Progress: cur is the job thread's own; publish() copies it into st under stats_lock,
     * which is what other threads read. */
    pthread_mutex_t stats_lock;
    struct mirror_stats cur;
    struct mirror_stats st;
    /* The bulk pass: the source's extents as they were at setup (later writes are tracked by
     * the dirty bitmap), walked from ext_idx/bulk_pos. */
    struct bm_extent *exts;
    size_t nexts, ext_idx;
    uint64_t bulk_pos;
    uint64_t dirty_cursor;
    uint64_t cleared; /* bytes of dirty copies completed */
    struct zero_range *tz;
    size_t ntz;
    uint64_t start_ns;
    int consecutive_errors;
    uint64_t backoff_until_ns;
    double tokens; /* speed limit bucket, bytes */
    uint64_t tokens_ns;
    uint64_t unflushed;     /* bytes written to the target since the last flush was issued */
    uint64_t last_flush_ns; /* when the last periodic or idle flush was issued */
    bool flush_in_flight;
    atomic_bool flush_busy;    /* flush_in_flight, for other threads (mirror_flush_busy) */
    atomic_bool quiet_flushes; /* start no more periodic flushes (mirror_quiet_flushes) */
    /* At the hold (completion): when, and what was left (for the debug log). */
    uint64_t hold_ns, hold_dirty;
    uint64_t drained_ns; /* pivot: when the copy was over and every command answered */
    unsigned hold_in_flight;
    bool hold_flushing;
    uint64_t flushing;    /* bytes the flush in flight makes durable */
    struct flush_wait fw; /* the completion flush's answer */
    bool held;            /* completion hold taken on the source */
    /* A remote source (bm_disk_is_remote): its writes reach the dirty bitmap only when
     * harvested, when the copy has run out of dirty blocks and once more at the hold. */
    bool remote;
    uint64_t last_harvest_ns;
    unsigned hold_copies, hold_reads_left, hold_cmds_left; /* debug: the copies after a hold */
    uint64_t hold_last_copy_ns;
    double dirty_rate; /* tick's estimate of bytes/s newly dirtied, for the unharvested part */
    bool released;
    /* The pivot (o.pivot): once done, the pivot thread owns t and serves the source disk's
     * users from it. busy_lock protects the queue, pivot_stopping and pivot_over (the thread
     * answers nothing more: every request waiting, and every later one, fails); busy_cond
     * signals a request done, or pivot_over. */
    bool pivoted;
    pthread_t pivot_thread;
    struct pivot_req *pq_head, *pq_tail;
    bool pivot_stopping, pivot_over;
    struct pivot_req *pq_fua; /* the pivot thread's own: FUA requests waiting for a flush */
    uint64_t pivot_stall_ns;  /* PIVOT_STALL_NS (mirror-pivot.c); tests shorten it */
    int err;
    char errmsg[256];
    /* Tests only: called on the job's thread right after a copy read its data. */
    void (*test_after_read)(void *opaque, uint64_t off, uint64_t len, bool bulk);
    void *test_opaque;
};

/* Tests only: install test_after_read (before mirror_start). */
void mirror_set_test_hook(struct mirror_job *j,
                          void (*fn)(void *opaque, uint64_t off, uint64_t len, bool bulk),
                          void *opaque);

/* mirror-readers.c: start the readers (0 or -errno); queue a slot's read (offset, len into
 * buf); take one finished read (NULL when none; with wait, wait for one); stop them, once the
 * job has taken every read it queued. */
int mirror_readers_start(struct mirror_job *j);
void mirror_readers_submit(struct mirror_job *j, struct slot *s);
struct slot *mirror_readers_take(struct mirror_job *j, bool wait);
void mirror_readers_stop(struct mirror_job *j);

/* mirror-active.c */
int mirror_hook_before(void *opaque, uint64_t offset, uint64_t len);
void mirror_hook_after(void *opaque, int token, enum bm_disk_change kind, const void *buf,
                       uint64_t offset, uint64_t len, int result);
/* On the job's thread: submit queued active requests to the target. */
void mirror_active_submit(struct mirror_job *j);
/* End of job: wake every waiting writer. */
void mirror_active_stop(struct mirror_job *j);

/* mirror-pivot.c */
/* On the job's thread, once drained with the source held: start the pivot thread and redirect
 * the source disk to it. Returns 0 or -errno (nothing changed then). */
int mirror_pivot_start(struct mirror_job *j);
/* On the job's thread, after mirror_pivot_start: flush the target through the pivot thread,
 * which owns its connections now, as a writer's flush is; wait for the answer. 0 or -errno. */
int mirror_pivot_flush(struct mirror_job *j);
/* Answer what is queued, wait for the target's answers (at most CANCEL_WAIT_NS; what is
 * still unanswered then fails with EIO), join. */
void mirror_pivot_stop(struct mirror_job *j);

/* mirror.c */
/* How long a cancelled job, or a stopping pivot, waits for a target that does not answer. */
#define CANCEL_WAIT_NS 2000000000ull
void mirror_wake(struct mirror_job *j);
void mirror_set_state(struct mirror_job *j, enum mirror_state s, const char *detail);
uint64_t mirror_now_ns(void);

#endif
