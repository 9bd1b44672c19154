/* switchover.c: pause, final RAM and disk drain, state, COMPLETE, and the wait for RESUMED. */
#include <config.h>

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "common/log.h"
#include "migration/source-internal.h"

static uint64_t ms_since(uint64_t t)
{
    return (mig_now_ns() - t) / 1000000u;
}

/* After RESUMED the destination makes its disks durable (flushed, in place) and says DURABLE;
 * then the guest's view of the pause comes, in REPORT. Until DURABLE the images here are the
 * only durable copy of what the guest wrote before the switchover: this process stays until it
 * comes, or DURABLE_WAIT_MS, or the connection ends. */
#define DURABLE_WAIT_MS 120000
#define REPORT_WAIT_MS 2000
static void await_durable(struct mig_source *m, uint64_t src_digest_ms)
{
    mig_set_status(m, MIG_SWITCHOVER, "durable");
    m->w.durable = -1;
    uint64_t t0 = mig_now_ns(), t_dur = 0;
    bool report = false;
    char why[64];
    snprintf(why, sizeof why, "no DURABLE within %d s", DURABLE_WAIT_MS / 1000);
    while (m->w.durable < 0 || !report) {
        uint64_t now = mig_now_ns();
        uint64_t deadline = m->w.durable < 0 ? t0 + DURABLE_WAIT_MS * 1000000ull
                                             : t_dur + REPORT_WAIT_MS * 1000000ull;
        if (now >= deadline)
            break;
        uint32_t type, len;
        uint8_t *pl;
        int r = mig_recv(&m->c, (int)((deadline - now) / 1000000u) + 1, &type, &pl, &len);
        if (r < 0) {
            if (r == -ECONNRESET || r == -EPIPE)
                snprintf(why, sizeof why, "the connection closed before DURABLE");
            else if (r != -ETIMEDOUT)
                snprintf(why, sizeof why, "the stream broke before DURABLE");
            break;
        }
        struct json_object *o = mig_parse_json(pl, len), *x;
        if (type == MIG_REPORT) {
            /* The guest sat paused through both digests too: leave them out, as above. A
             * guest with no heartbeat of blkmig's (a QEMU VM) reports no gap. */
            if (o && json_object_object_get_ex(o, "guest_gap_ns", &x)) {
                int64_t us = json_object_get_int64(x) / 1000 -
                             (int64_t)(src_digest_ms + m->w.dst_digest_ms) * 1000;
                m->w.guest_downtime_us = us > 0 ? us : 0;
            }
            report = true;
        } else if (type == MIG_DURABLE && m->w.durable < 0) {
            t_dur = mig_now_ns();
            m->w.durable_ms = (t_dur - m->t0_ns) / 1000000u;
            bool ok = o && json_object_object_get_ex(o, "ok", &x) && json_object_get_boolean(x);
            if (o && json_object_object_get_ex(o, "flush_ms", &x))
                m->w.dest_flush_ms = (uint64_t)json_object_get_int64(x);
            m->w.durable = ok ? 1 : 0;
            if (!ok) {
                const char *e = o && json_object_object_get_ex(o, "error", &x) &&
                                        json_object_is_type(x, json_type_string)
                                    ? json_object_get_string(x)
                                    : "(no reason)";
                char esc[400];
                bm_log_escape(e, esc, sizeof esc);
                snprintf(m->w.durable_error, sizeof m->w.durable_error,
                         "the destination could not make its disks durable in place: %s", esc);
            }
        }
        json_object_put(o);
    }
    if (m->w.durable < 0) {
        m->w.durable = 0;
        snprintf(m->w.durable_error, sizeof m->w.durable_error,
                 "the destination resumed the VM but did not confirm that its disks are "
                 "durable (%s). If it crashed, the images here hold the guest's disks as of the "
                 "switchover, with everything the guest was told was durable",
                 why);
    }
    if (m->w.durable == 1)
        bm_info("migration: the destination's disks are durable, %llu ms after RESUMED",
                (unsigned long long)(m->w.durable_ms - m->w.resumed_ms));
    else
        bm_warn("migration: %s", m->w.durable_error);
}

/* After COMPLETE: wait for the destination's word. */
static void mig_await_resumed(struct mig_source *m, uint64_t t_pause, uint64_t t_complete,
                              uint64_t src_digest_ms)
{
    for (;;) {
        uint32_t type, len;
        uint8_t *pl;
        /* With --verify the destination digests everything before it answers. */
        int r = mig_recv(&m->c, (int)m->p.peer_timeout_ms + (m->p.verify ? 600000 : 0), &type, &pl,
                         &len);
        if (r < 0 && r != -ECONNRESET && r != -EPIPE) {
            /* The destination may or may not run the VM: never risk two running copies. */
            snprintf(m->w.error, sizeof m->w.error,
                     "no RESUMED from the destination (%s) after COMPLETE: the outcome is "
                     "unknown, so the VM stays paused here (check the destination, then 'cont' "
                     "or 'quit')",
                     strerror(-r));
            mig_set_status(m, MIG_UNKNOWN, "unknown");
            return;
        }
        if (r < 0) {
            /* The destination closed without RESUMED: it resumes only after sending it, so it
             * is not running the VM. */
            m->complete_sent = false;
            mig_rollback(m, MIG_FAILED, "the destination went away before RESUMED (%s)",
                         r == -ECONNRESET ? "connection closed" : strerror(-r));
            return;
        }
        if (type == MIG_PING)
            continue;
        if (type == MIG_ABORT) {
            char reason[256];
            mig_rollback(m, MIG_FAILED, "the destination refused to resume: %s",
                         mig_abort_reason(pl, len, reason, sizeof reason));
            return;
        }
        struct json_object *o = mig_parse_json(pl, len), *x;
        if (type != MIG_RESUMED) {
            json_object_put(o);
            snprintf(m->w.error, sizeof m->w.error,
                     "the destination answered COMPLETE with %s: outcome unknown, the VM stays "
                     "paused here",
                     mig_frame_name(type));
            mig_set_status(m, MIG_UNKNOWN, "unknown");
            return;
        }
        uint64_t t_res = mig_now_ns();
        m->w.pause_resume_ms = (t_res - t_complete) / 1000000u;
        if (o && json_object_object_get_ex(o, "digest_ms", &x))
            m->w.dst_digest_ms = (uint64_t)json_object_get_int64(x);
        if (o && json_object_object_get_ex(o, "verified", &x))
            m->w.verified = json_object_get_boolean(x);
        json_object_put(o);
        uint64_t pause_ms = (t_res - t_pause) / 1000000u;
        uint64_t digest = src_digest_ms + m->w.dst_digest_ms;
        m->w.downtime_ms = pause_ms > digest ? pause_ms - digest : 0;
        m->w.resumed_ms = (t_res - m->t0_ns) / 1000000u;
        m->w.total_ms = m->w.resumed_ms;
        break;
    }
    await_durable(m, src_digest_ms);
    mig_set_status(m, MIG_COMPLETED, "completed");
}

/* --verify: the digests take seconds and are left out of the pause figures, and so would the
 * RAM and state still crossing the link while the source digests. Wait first until the
 * destination has applied everything (it acknowledges STATE at once). */
static int await_applied(struct mig_source *m, char *why, size_t whylen)
{
    uint64_t t0 = mig_now_ns();
    while (m->peer_received < m->c.bytes_sent) {
        struct pollfd pfd = {.fd = m->c.fd, .events = POLLIN};
        poll(&pfd, 1, 10);
        int r = mig_poll_peer(m, why, whylen);
        if (r < 0)
            return r;
        if (mig_now_ns() - t0 > (uint64_t)m->p.peer_timeout_ms * 1000000u) {
            snprintf(why, whylen, "the destination did not acknowledge the VM state within %u ms",
                     m->p.peer_timeout_ms);
            return -ETIMEDOUT;
        }
    }
    return 0;
}

void mig_switchover(struct mig_source *m)
{
    mig_set_status(m, MIG_SWITCHOVER, "switchover"); /* no target flush in flight (converge.c) */
    uint64_t t_pause = mig_now_ns(), t;
    int r = vm_pause(m->vm);
    if (r < 0) {
        mig_rollback(m, MIG_FAILED, "cannot pause the VM: %s", strerror(-r));
        return;
    }
    m->paused = true;
    /* The guest may have died between the loop's last look and the pause (a vCPU leaving
     * KVM_RUN for the kick can bring its triple fault with it): its state is not worth moving. */
    char why[300];
    if (vm_dead(m->vm, why, sizeof why)) {
        mig_rollback(m, MIG_FAILED, "%s", why);
        return;
    }

    /* Final disk copies and FLUSH, all disks at once, started first: the mirrors run on their
     * own threads and connections, so their drain overlaps the last RAM pages below instead
     * of following them (the pause is the longer of the two, not their sum). */
    uint64_t t_disk = mig_now_ns();
    for (unsigned i = 0; i < m->nmj; i++)
        mirror_complete_now(m->mj[i]);

    /* Final RAM: everything dirtied up to the pause (a hot set still held back goes too:
     * the loop below must be able to empty the sender). */
    t = mig_now_ns();
    ram_sender_hold_hot(m->ram, false);
    ram_sender_harvest(m->ram);
    struct ram_stats rs;
    for (ram_sender_stats(m->ram, &rs); rs.dirty_pages > 0; ram_sender_stats(m->ram, &rs)) {
        r = ram_sender_step(m->ram, UINT64_MAX);
        if (r < 0) {
            mig_rollback(m, MIG_FAILED, "sending the last RAM pages: %s", strerror(-r));
            return;
        }
    }
    m->w.pause_ram_ms = ms_since(t);

    /* Wait for the disks' final copies (started above): every write answered. Their
     * connections stay open (mirror_opts.linger) until free_mirrors, after the guest runs
     * there. */
    for (unsigned i = 0; i < m->nmj; i++) {
        char err[256];
        r = mirror_wait_ended(m->mj[i]) == MIRROR_DONE ? 0
                                                        : mirror_wait(m->mj[i], err, sizeof err);
        if (r < 0) {
            mig_rollback(m, MIG_FAILED, "the last copy of disk %s failed: %s", m->vm->disks[i].name,
                         err);
            return;
        }
    }
    /* Without --with-disk the destination opens these very images: make them stable first,
     * and hand it their locks (it takes them before it resumes the guest; a rollback takes them
     * back), as QEMU inactivates its images. */
    for (unsigned i = 0; !m->p.with_disk && i < m->vm->ndisks; i++) {
        r = bm_disk_flush(m->vm->disks[i].disk);
        if (r < 0) {
            mig_rollback(m, MIG_FAILED, "flushing disk %s: %s", m->vm->disks[i].name, strerror(-r));
            return;
        }
        bm_disk_unlock(m->vm->disks[i].disk);
    }
    m->w.pause_disk_ms = ms_since(t_disk); /* overlaps pause_ram_ms */
    mig_collect(m);

    /* Device and vCPU state. */
    t = mig_now_ns();
    void *state = NULL;
    size_t slen = 0;
    r = m->vm->ops->save_state(m->vm, &state, &slen);
    if (r == 0)
        r = mig_send(&m->c, MIG_STATE, state, (uint32_t)slen);
    free(state);
    if (r < 0) {
        mig_rollback(m, MIG_FAILED, "sending the VM state: %s", strerror(-r));
        return;
    }
    if (m->p.verify && (r = await_applied(m, why, sizeof why)) < 0) {
        mig_rollback(m, MIG_FAILED, "%s", why);
        return;
    }
    m->w.pause_state_ms = ms_since(t);

    struct json_object *c = json_object_new_object();
    uint64_t src_digest_ms = 0;
    if (m->p.verify) {
        t = mig_now_ns();
        struct json_object *d = mig_digest_vm(m->vm);
        src_digest_ms = ms_since(t);
        m->w.src_digest_ms = src_digest_ms;
        struct json_object *dd, *x;
        bool unreadable = false;
        if (d && json_object_object_get_ex(d, "disks", &dd))
            for (unsigned i = 0; i < m->vm->ndisks; i++)
                unreadable |= json_object_object_get_ex(dd, m->vm->disks[i].name, &x) &&
                              strcmp(json_object_get_string(x), "read-error") == 0;
        if (!d || unreadable) {
            json_object_put(c);
            json_object_put(d);
            mig_rollback(m, MIG_FAILED, "cannot digest the VM for --verify: %s",
                         d ? "a disk read failed" : "out of memory");
            return;
        }
        json_object_object_add(c, "digests", d);
    }
    json_object_object_add(c, "ram_pages",
                           json_object_new_int64((int64_t)(rs.pages_normal + rs.pages_zero)));
    mig_complete(m, c, t_pause, src_digest_ms);
}

void mig_complete(struct mig_source *m, struct json_object *c, uint64_t t_pause,
                  uint64_t src_digest_ms)
{
    uint64_t t = mig_now_ns();
    int r = mig_send_json(&m->c, MIG_COMPLETE, c);
    json_object_put(c);
    if (r < 0) {
        mig_rollback(m, MIG_FAILED, "sending COMPLETE: %s", strerror(-r));
        return;
    }
    m->complete_sent = true;
    mig_await_resumed(m, t_pause, t, src_digest_ms);
    if (m->w.status == MIG_COMPLETED) {
        mig_publish(m);
        bm_info("migration: completed, downtime %llu ms", (unsigned long long)m->w.downtime_ms);
    }
}
