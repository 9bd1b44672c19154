/* mirror-active.c: write-blocking mode: writers forward their own changes to the target. */
#include <config.h>

#include <errno.h>
#include <string.h>

#include "blockmirror/mirror-internal.h"
#include "common/log.h"

/*
 * In write-blocking mode a change locks its blocks in the busy map (waiting for any copy of
 * them in flight), is made in the source image and marked dirty, is forwarded to the target by
 * the job's thread, and only then is the writer answered. Blocks the change covered whole are
 * then clean: no copy of them was in flight, no other writer could touch them, and the target
 * now holds what the source holds. Blocks it covered in part stay dirty for the background copy.
 */

static void block_span(const struct mirror_job *j, uint64_t offset, uint64_t len, uint64_t *first,
                       uint64_t *count)
{
    *first = offset >> j->shift;
    *count = ((offset + len - 1) >> j->shift) - *first + 1;
}

int mirror_hook_before(void *opaque, uint64_t offset, uint64_t len)
{
    struct mirror_job *j = opaque;
    if (!atomic_load(&j->write_blocking) || len == 0)
        return 0;
    uint64_t first, count;
    block_span(j, offset, len, &first, &count);
    pthread_mutex_lock(&j->busy_lock);
    while (!j->stopped && bm_bitmap_next_set(j->busy, first) < first + count)
        pthread_cond_wait(&j->busy_cond, &j->busy_lock);
    if (j->stopped) {
        pthread_mutex_unlock(&j->busy_lock);
        return 0;
    }
    bm_bitmap_set_bits(j->busy, first, count);
    pthread_mutex_unlock(&j->busy_lock);
    return 1;
}

void mirror_hook_after(void *opaque, int token, enum bm_disk_change kind, const void *buf,
                       uint64_t offset, uint64_t len, int result)
{
    struct mirror_job *j = opaque;
    if (!token)
        return;
    struct active_req r = {.kind = kind, .buf = buf, .offset = offset, .len = len};
    /* A trim may or may not have changed the source (a device or filesystem that cannot
     * discard ignores it): leave its blocks dirty for the background copy, which sends what
     * the source really holds. */
    bool forward = result == 0 && kind != BM_CHANGE_TRIM;
    pthread_mutex_lock(&j->busy_lock);
    if (forward && !j->stopped) {
        if (j->aq_tail)
            j->aq_tail->next = &r;
        else
            j->aq_head = &r;
        j->aq_tail = &r;
        pthread_mutex_unlock(&j->busy_lock);
        mirror_wake(j);
        pthread_mutex_lock(&j->busy_lock);
        /* The job answers every request it queued before it stops, even when failing. */
        while (!r.done)
            pthread_cond_wait(&j->busy_cond, &j->busy_lock);
        if (r.err == 0) {
            uint64_t first = (offset + (1u << j->shift) - 1) >> j->shift;
            uint64_t end = offset + len == j->size ? bm_bitmap_nbits(j->dirty)
                                                   : (offset + len) >> j->shift;
            uint64_t frontier = atomic_load(&j->bulk_frontier);
            if (frontier != UINT64_MAX && end > frontier >> j->shift)
                end = frontier >> j->shift;
            if (end > first)
                bm_bitmap_clear_bits(j->dirty, first, end - first);
            if (kind == BM_CHANGE_WRITE)
                atomic_fetch_add(&j->active_bytes, len);
        }
    }
    uint64_t first, count;
    block_span(j, offset, len, &first, &count);
    bm_bitmap_clear_bits(j->busy, first, count);
    pthread_cond_broadcast(&j->busy_cond);
    pthread_mutex_unlock(&j->busy_lock);
}

static void active_done(void *opaque, int err)
{
    struct active_req *r = opaque;
    struct mirror_job *j = r->j;
    if (err)
        bm_warn("mirror: forwarding a write at 0x%llx to the target failed: %s; the background "
                "copy will retry it", (unsigned long long)r->offset, strerror(err));
    pthread_mutex_lock(&j->busy_lock);
    r->err = err;
    r->done = true;
    pthread_cond_broadcast(&j->busy_cond);
    pthread_mutex_unlock(&j->busy_lock);
}

void mirror_active_submit(struct mirror_job *j)
{
    pthread_mutex_lock(&j->busy_lock);
    struct active_req *r = j->aq_head;
    j->aq_head = j->aq_tail = NULL;
    pthread_mutex_unlock(&j->busy_lock);
    while (r) {
        struct active_req *next = r->next;
        r->j = j;
        int rc;
        if (r->kind == BM_CHANGE_WRITE)
            rc = bm_target_write(j->t, r->buf, (size_t)r->len, r->offset, 0, active_done, r);
        else if (bm_target_can_zero(j->t) || r->len <= (1u << 20))
            rc = bm_target_zero(j->t, r->offset, r->len, active_done, r);
        else
            rc = -ENOTSUP; /* left dirty: the background copy sends it */
        if (rc < 0)
            active_done(r, -rc);
        r = next;
    }
}

void mirror_active_stop(struct mirror_job *j)
{
    pthread_mutex_lock(&j->busy_lock);
    for (struct active_req *r = j->aq_head; r; r = r->next) {
        r->err = ECANCELED;
        r->done = true;
    }
    j->aq_head = j->aq_tail = NULL;
    j->stopped = true;
    pthread_cond_broadcast(&j->busy_cond);
    pthread_mutex_unlock(&j->busy_lock);
}
