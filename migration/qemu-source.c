/* qemu-source.c: the source of a QEMU VM: QEMU moves RAM and devices to the destination QEMU
 * (vm/qemu/qmig.c), the mirrors move the disks read through QEMU (vm/qemu/qdisk.c), and the
 * loop here decides when QEMU may stop iterating (docs/architecture.md §8.9). */
#include <config.h>

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "migration/qemu-migration.h"
#include "migration/source-internal.h"
#include "vm/qemu/cmdline.h"
#include "vm/qemu/qdisk.h"
#include "vm/qemu/qemu.h"
#include "vm/qemu/qmig.h"

#define TICK_NS     100000000ull /* the controller looks every 100 ms */
#define PING_NS     1000000000ull
#define PROGRESS_NS 500000000ull
/* QEMU's downtime-limit while the disks are not ready: it keeps iterating (qmig.h). */
#define HOLD_MS 1
/* The pause's costs besides RAM and the disks' drain: QEMU's device state, the destination's
 * load and resume, COMPLETE and RESUMED (measured on an idle guest: 7-12 ms). */
#define QEMU_FIXED_MS 12
/* QEMU's dirty bitmaps track 4 KiB blocks, as the mirror does: at 64 KiB a guest's 4 KiB random
 * writes made 16 times their size dirty (44 MB left at a pause for 4 MB/s of writes, measured
 * with the test guest). The bitmap costs QEMU 32 KiB per GiB of disk. */
#define QEMU_BITMAP_GRANULARITY 4096

bool mig_vm_is_qemu(const struct vm *vm)
{
    return strcmp(vm->ops->kind, "qemu") == 0;
}

static struct qemu_vm *qvm(struct mig_source *m)
{
    return (struct qemu_vm *)m->vm;
}

/* ---- the description ---- */

/* The disks as the destination needs them: a name of blkmig's ("disk0"...), size, format,
 * and its name on the command line (matched by image file). */
static struct json_object *describe_disks(struct mig_source *m, char *err, size_t errlen)
{
    const struct qemu_cmdline *cl = qemu_vm_cmdline(qvm(m));
    unsigned n;
    const struct qemu_disk_info *di = qemu_vm_disks(qvm(m), &n);
    struct json_object *a = json_object_new_array();
    for (unsigned i = 0; i < n && a; i++) {
        const char *drive = NULL;
        for (size_t k = 0; k < cl->ndisks && !drive; k++)
            if (cl->disks[k].file && strcmp(cl->disks[k].file, di[i].file) == 0)
                drive = cl->disks[k].name;
        if (!drive) {
            snprintf(err, errlen, "the image %s QEMU has open is not on its command line",
                     di[i].file);
            json_object_put(a);
            a = NULL;
            break;
        }
        char name[16];
        snprintf(name, sizeof name, "disk%u", i);
        json_object_array_add(
            a, qemu_obj("name", json_object_new_string(name), "size",
                        json_object_new_int64((int64_t)di[i].size), "format",
                        json_object_new_string(di[i].format), "drive",
                        json_object_new_string(drive), NULL));
    }
    return a;
}

struct json_object *mig_qemu_describe(struct mig_source *m, char *err, size_t errlen)
{
    struct json_object *disks = describe_disks(m, err, errlen);
    if (!disks)
        return NULL;
    int argc, ma, mi, mc;
    const char *const *argv = qemu_vm_argv(qvm(m), &argc);
    qemu_vm_version(qvm(m), &ma, &mi, &mc);
    char ver[48];
    snprintf(ver, sizeof ver, "%d.%d.%d", ma, mi, mc);
    struct json_object *av = json_object_new_array();
    for (int i = 0; i < argc; i++)
        json_object_array_add(av, json_object_new_string(argv[i]));
    return qemu_obj("kind", json_object_new_string("qemu"), "version",
                    json_object_new_string(ver), "argv", av, "disks", disks, NULL);
}

/* ---- the disks ---- */

/* QEMU's disks as remote bm_disks, the VM's disks for this migration. */
int mig_qemu_open_disks(struct mig_source *m, char *err, size_t errlen)
{
    unsigned n;
    const struct qemu_disk_info *di = qemu_vm_disks(qvm(m), &n);
    if (n == 0 || n > VM_MAX_DISKS) {
        snprintf(err, errlen, n ? "the VM has more than %d disks" : "the VM has no disks",
                 VM_MAX_DISKS);
        return -EINVAL;
    }
    if (!mkdtemp(strcpy(m->qdir, "/tmp/blkmig-qemu-out.XXXXXX"))) {
        snprintf(err, errlen, "cannot make a run directory: %s", strerror(errno));
        m->qdir[0] = '\0';
        return -errno;
    }
    char path[128];
    snprintf(path, sizeof path, "%s/nbd.sock", m->qdir);
    int r = qemu_nbd_start(qemu_vm_mon(qvm(m)), path, &m->qnbd, err, errlen);
    struct vm *vm = m->vm;
    for (unsigned i = 0; i < n && r == 0; i++) {
        char label[160];
        snprintf(vm->disks[i].name, sizeof vm->disks[i].name, "disk%u", i);
        snprintf(label, sizeof label, "QEMU drive %s", di[i].node);
        r = qemu_disk_open(m->qnbd, di[i].node, vm->disks[i].name, label, di[i].size,
                           QEMU_BITMAP_GRANULARITY,
                           &vm->disks[i].disk, err, errlen);
        if (r == 0)
            vm->ndisks = i + 1;
    }
    return r;
}

/* Close the remote disks (their bitmaps and exports go from QEMU) and QEMU's NBD server. */
void mig_qemu_close_disks(struct mig_source *m)
{
    struct vm *vm = m->vm;
    unsigned n = vm->ndisks;
    vm->ndisks = 0;
    for (unsigned i = 0; i < n; i++) {
        bm_disk_close(vm->disks[i].disk);
        vm->disks[i].disk = NULL;
    }
    qemu_nbd_stop(m->qnbd);
    m->qnbd = NULL;
    if (m->qdir[0]) {
        char path[128];
        snprintf(path, sizeof path, "%s/nbd.sock", m->qdir);
        unlink(path);
        rmdir(m->qdir);
        m->qdir[0] = '\0';
    }
}

/* A rollback: QEMU's migration cancelled (QEMU resumes the guest), the disks closed. */
void mig_qemu_rollback(struct mig_source *m)
{
    char err[512];
    struct qemu_mon *mon = qemu_vm_mon(qvm(m));
    if (m->qmig_started) {
        if (qemu_mig_cancel(mon, err, sizeof err) < 0)
            bm_warn("migration: %s", err);
        /* Cancelled or failed, QEMU resumes the guest itself; completed (the destination
         * never resumed it), the guest needs a cont, which takes the images back. */
        struct qemu_mig_info mi = {.status = ""};
        for (int i = 0; i < 5000 && !qemu_mig_status_final(mi.status); i++) {
            if (qemu_mig_query(mon, &mi, err, sizeof err) < 0)
                break;
            if (!qemu_mig_status_final(mi.status))
                usleep(1000);
        }
        if (strcmp(mi.status, "cancelled") == 0 || strcmp(mi.status, "failed") == 0)
            m->paused = false;
        m->qmig_started = false;
    }
    mig_qemu_close_disks(m);
}

/* After a completed migration: QEMU ends (a QEMU attached to as well: its guest runs on the
 * destination, and what it holds is a stale copy, as libvirt ends its source QEMU). */
void mig_qemu_quit(struct mig_source *m)
{
    char err[512];
    if (qemu_mon_exec(qemu_vm_mon(qvm(m)), "quit", NULL, NULL, err, sizeof err) < 0)
        bm_warn("migration: ending the source QEMU: %s", err);
}

/* ---- the loop ---- */

int mig_qemu_set_uri(struct mig_source *m, struct json_object *ack, char *err, size_t errlen)
{
    struct json_object *p;
    if (!json_object_object_get_ex(ack, "qemu_port", &p) || !json_object_is_type(p, json_type_int) ||
        json_object_get_int(p) <= 0 || json_object_get_int(p) > 65535) {
        snprintf(err, errlen, "the destination's HELLO_ACK has no QEMU port");
        return -EPROTO;
    }
    bool v6 = strchr(m->p.host, ':') != NULL;
    snprintf(m->qemu_uri, sizeof m->qemu_uri, "tcp:%s%s%s:%d", v6 ? "[" : "", m->p.host,
             v6 ? "]" : "", json_object_get_int(p));
    return 0;
}

/* The disks' copy rate now: the mirrors' own figures (converge.c measures the link for
 * blkmig's RAM stream; here QEMU's RAM has its own connection). */
static uint64_t disk_throughput(struct mig_source *m)
{
    uint64_t t = 0;
    for (unsigned i = 0; i < m->nmj; i++) {
        struct mirror_stats st;
        mirror_query(m->mj[i], &st);
        t += st.throughput;
    }
    return t;
}

static void take_qemu_figures(struct mig_source *m, const struct qemu_mig_info *mi)
{
    struct mig_stats *w = &m->w;
    w->ram.bytes = mi->ram_transferred;
    w->ram.rounds = mi->ram_rounds;
    w->ram.dirty_pages = mi->ram_remaining / VM_PAGE_SIZE;
    w->ram_dirty_rate = mi->ram_dirty_rate;
    w->qemu_downtime_ms = mi->downtime_ms;
}

/* The disks' drain at the pause, in ms, at the best rate they have copied at: an idle
 * mirror's current rate is near 0 and says nothing of what the link can do (with it, a
 * 1 KB/s lull made the drain look like seconds and held QEMU iterating pass after pass). */
static uint64_t disk_drain_ms(const struct mig_source *m)
{
    if (m->w.disk_dirty == 0)
        return 0;
    uint64_t thr = m->qbest_thr ? m->qbest_thr : 100u << 20;
    return m->w.disk_dirty * 1000 / thr + 1;
}

/* One look: figures, and QEMU's knobs set as the disks allow. Returns 1 at pre-switchover,
 * 0 to go on, -errno (why set) when QEMU's migration failed. */
static int steer(struct mig_source *m, char *why, size_t whylen)
{
    struct mig_stats *w = &m->w;
    struct qemu_mon *mon = qemu_vm_mon(qvm(m));
    mig_collect(m);
    w->throughput = disk_throughput(m);
    if (w->throughput > m->qbest_thr)
        m->qbest_thr = w->throughput;
    bool ready = w->disks_ready == m->nmj;
    if (!m->qmig_started) {
        w->phase = "disk-bulk";
        if (!ready)
            return 0;
        /* The disks are nearly done: QEMU's pre-copy may start, held from stopping. */
        int r = qemu_mig_prepare(mon, m->p.max_bandwidth, HOLD_MS, why, whylen);
        if (r == 0)
            r = qemu_mig_start(mon, m->qemu_uri, why, whylen);
        if (r < 0)
            return r;
        m->qmig_started = true;
        m->qdowntime_set = HOLD_MS;
        /* QEMU may pause the guest at any pass end from now on: a periodic flush of a
         * target in flight then (a device barrier on the destination) would be waited for in
         * the pause. The destination makes the disks durable after the resume instead. */
        for (unsigned i = 0; i < m->nmj; i++)
            mirror_quiet_flushes(m->mj[i], true);
        w->ram_start_ms = (mig_now_ns() - m->t0_ns) / 1000000u;
        bm_info("migration: QEMU's RAM pre-copy starts at %llu ms to %s",
                (unsigned long long)w->ram_start_ms, m->qemu_uri);
        return 0;
    }
    struct qemu_mig_info mi;
    int r = qemu_mig_query(mon, &mi, why, whylen);
    if (r < 0)
        return r;
    take_qemu_figures(m, &mi);
    w->phase = mi.ram_rounds <= 1 ? "ram-round0" : "dirty-rounds";
    if (strcmp(mi.status, "pre-switchover") == 0)
        return 1;
    if (qemu_mig_status_final(mi.status)) {
        snprintf(why, whylen, "QEMU's migration is %s%s%s", mi.status, mi.error[0] ? ": " : "",
                 mi.error);
        return -EIO;
    }
    /* QEMU may stop iterating once its own pause fits what the disks leave of the limit. */
    uint64_t drain = disk_drain_ms(m) + QEMU_FIXED_MS;
    int64_t want = !ready || drain >= m->p.downtime_limit_ms
                       ? HOLD_MS
                       : (int64_t)(m->p.downtime_limit_ms - drain);
    w->expected_downtime_ms = mi.expected_downtime_ms + drain;
    if (want != m->qdowntime_set) {
        r = qemu_mig_set(mon, -1, want, why, whylen);
        if (r < 0)
            return r;
        m->qdowntime_set = want;
    }
    /* One bandwidth for both: QEMU gets what the disks leave, at least a tenth. */
    if (m->p.max_bandwidth) {
        uint64_t b = m->p.max_bandwidth, d = w->throughput < b ? w->throughput : b;
        uint64_t share = b - d < b / 10 ? b / 10 : b - d;
        if (share * 10 < (uint64_t)m->qbw_set * 9 || share * 10 > (uint64_t)m->qbw_set * 11) {
            if ((r = qemu_mig_set(mon, (int64_t)share, -1, why, whylen)) < 0)
                return r;
            m->qbw_set = (int64_t)share;
        }
    }
    return 0;
}

/* Until QEMU waits at pre-switchover (true), or a rollback (false). */
bool mig_qemu_converge(struct mig_source *m)
{
    uint64_t last_tick = 0, last_progress = mig_now_ns();
    char why[512];
    for (;;) {
        uint64_t now = mig_now_ns();
        int r = mig_turn_checks(m, why, sizeof why);
        if (r == 1)
            return false;
        if (r == 0 && m->p.max_time_s && now - m->t0_ns > (uint64_t)m->p.max_time_s * 1000000000u) {
            snprintf(why, sizeof why, "did not converge within %u s", m->p.max_time_s);
            r = -ETIMEDOUT;
        }
        /* Near the end, look often: QEMU's guest sits paused at pre-switchover until seen. */
        uint64_t period = m->qmig_started ? 2000000ull : TICK_NS;
        if (r == 0 && now - last_tick >= period) {
            last_tick = now;
            r = steer(m, why, sizeof why);
            if (r == 1) {
                m->t_pre_switchover = mig_now_ns();
                return true;
            }
        }
        if (r < 0) {
            mig_rollback(m, MIG_FAILED, "%s", why);
            return false;
        }
        mig_publish(m);
        if (m->fn && now - last_progress >= PROGRESS_NS) {
            last_progress = now;
            m->fn(m->opaque, "migration-progress", mig_source_query(m));
        }
        if (now - m->last_send_ns >= PING_NS) {
            if (mig_send(&m->c, MIG_PING, NULL, 0) < 0) {
                mig_rollback(m, MIG_FAILED, "the link to the destination broke");
                return false;
            }
            m->last_send_ns = now;
        }
        struct pollfd pfd = {.fd = m->c.fd, .events = POLLIN};
        poll(&pfd, 1, m->qmig_started ? 1 : 20);
    }
}

/* ---- the switchover ---- */

/* QEMU paused the guest at pre-switchover: the disks' last blocks, then QEMU's last RAM and
 * devices, then COMPLETE; the destination resumes the guest once its QEMU has loaded. */
void mig_qemu_switchover(struct mig_source *m)
{
    mig_set_status(m, MIG_SWITCHOVER, "switchover");
    struct qemu_mon *mon = qemu_vm_mon(qvm(m));
    uint64_t t_pause = m->t_pre_switchover, t = mig_now_ns();
    m->paused = true; /* a rollback cancels QEMU's migration, which resumes the guest */
    for (unsigned i = 0; i < m->nmj; i++)
        mirror_complete_now(m->mj[i]);
    for (unsigned i = 0; i < m->nmj; i++) {
        char err[256];
        int r = mirror_wait_ended(m->mj[i]) == MIRROR_DONE ? 0
                                                           : mirror_wait(m->mj[i], err, sizeof err);
        if (r < 0) {
            mig_rollback(m, MIG_FAILED, "the last copy of disk %s failed: %s",
                         m->vm->disks[i].name, err);
            return;
        }
    }
    m->w.pause_disk_ms = (mig_now_ns() - t) / 1000000u;
    mig_collect(m);
    struct json_object *c = json_object_new_object();
    uint64_t src_digest_ms = 0;
    if (m->p.verify) {
        t = mig_now_ns();
        struct json_object *d = mig_digest_vm(m->vm);
        src_digest_ms = m->w.src_digest_ms = (mig_now_ns() - t) / 1000000u;
        if (!d) {
            json_object_put(c);
            mig_rollback(m, MIG_FAILED, "cannot digest the disks for --verify");
            return;
        }
        json_object_object_add(c, "digests", d);
    }
    /* QEMU's last RAM and its devices; it inactivates its images as it completes. */
    char why[512];
    t = mig_now_ns();
    struct qemu_mig_info mi;
    int r = qemu_mig_continue(mon, why, sizeof why);
    /* QEMU sends the rest; a link that stops carrying it stops QEMU too (TCP's own timeout is
     * many minutes): no progress for the peer timeout gives up, and the rollback cancels. */
    uint64_t last_bytes = 0, last_progress = mig_now_ns();
    while (r == 0) {
        r = qemu_mig_query(mon, &mi, why, sizeof why);
        if (r < 0 || strcmp(mi.status, "completed") == 0)
            break;
        if (qemu_mig_status_final(mi.status)) {
            snprintf(why, sizeof why, "QEMU's migration is %s%s%s", mi.status,
                     mi.error[0] ? ": " : "", mi.error);
            r = -EIO;
            break;
        }
        if (mi.ram_transferred != last_bytes) {
            last_bytes = mi.ram_transferred;
            last_progress = mig_now_ns();
        } else if (mig_now_ns() - last_progress > (uint64_t)m->p.peer_timeout_ms * 1000000u) {
            snprintf(why, sizeof why, "QEMU's migration made no progress for %u ms after "
                                      "migrate-continue (status %s)",
                     m->p.peer_timeout_ms, mi.status);
            r = -ETIMEDOUT;
            break;
        }
        usleep(500);
    }
    if (r < 0) {
        json_object_put(c);
        mig_rollback(m, MIG_FAILED, "%s", why);
        return;
    }
    take_qemu_figures(m, &mi);
    m->w.pause_state_ms = (mig_now_ns() - t) / 1000000u;
    mig_complete(m, c, t_pause, src_digest_ms);
}
