/* synth.c: the synthetic guest's lifecycle: RAM, its two "vCPU" threads, and the vm_ops. */
#include <config.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "common/log.h"
#include "vm/blockfmt.h"
#include "vm/synth/synth-internal.h"

#define SUPER_MAGIC 0x314e5953474d4b42ull /* "BKMGSYN1" */
#define TICK_NS     1000000u              /* heartbeat period: 1 ms */

static struct synth *S(struct vm *vm)
{
    return (struct synth *)vm;
}

/* ---- the worker threads ---- */

/* Park here while a pause is asked for; returns false when the guest is quitting. */
static bool pause_point(struct synth *s)
{
    if (!atomic_load(&s->want_pause))
        return !atomic_load(&s->quit);
    pthread_mutex_lock(&s->mu);
    s->parked++;
    pthread_cond_broadcast(&s->cv);
    while (atomic_load(&s->want_pause) && !atomic_load(&s->quit))
        pthread_cond_wait(&s->cv, &s->mu);
    s->parked--;
    pthread_mutex_unlock(&s->mu);
    return !atomic_load(&s->quit);
}

static void sleep_until(uint64_t *next)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    uint64_t n = (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
    *next += TICK_NS;
    if (*next + 20 * TICK_NS < n)
        *next = n; /* we were descheduled or paused: do not try to catch up */
    struct timespec t = {(time_t)(*next / 1000000000u), (long)(*next % 1000000000u)};
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL);
}

static uint64_t mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void heartbeat(struct synth *s)
{
    uint64_t now = synth_now_ns();
    uint64_t last = atomic_load(&s->last_hb_ns);
    if (!last)
        atomic_store(&s->resumed_pending, false); /* first boot: no gap to measure */
    if (last && now > last) {
        uint64_t gap = now - last;
        if (gap > atomic_load(&s->max_gap_ns))
            atomic_store(&s->max_gap_ns, gap);
        if (atomic_exchange(&s->resumed_pending, false))
            atomic_store(&s->last_resume_gap_ns, gap);
    }
    atomic_store(&s->last_hb_ns, now);
    atomic_fetch_add(&s->hb_count, 1);
}

_Static_assert(SYNTH_UNIFORM == BM_WL_UNIFORM && SYNTH_HOTSPOT == BM_WL_HOTSPOT &&
                   SYNTH_SEQUENTIAL == BM_WL_SEQUENTIAL,
               "one pattern numbering");

static uint64_t pick(struct synth *s, enum synth_pattern p, uint64_t n, uint64_t hot, uint64_t *seq,
                     uint64_t *rng)
{
    (void)s;
    return bm_wl_pick((int)p, n, hot, seq, rng);
}

/* The "vCPU": heartbeats every millisecond, dirties RAM at the workload's rate, and re-checks
 * as many pages as it writes. */
/* Guest threads leave SIGINT/SIGTERM to the VM process's main thread. */
static void block_signals(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
}

static void *vcpu_main(void *arg)
{
    struct synth *s = arg;
    block_signals();
    uint64_t rng = s->w.seed * 2654435761u + 1, next = mono_ns();
    uint64_t area = s->npages - s->area_first, hot = s->w.hot / SYNTH_BLOCK;
    double credit = 0;
    while (pause_point(s)) {
        heartbeat(s);
        unsigned thr = atomic_load(&s->throttle);
        credit += (double)s->w.mem_rate / SYNTH_BLOCK / 1000.0 * (100 - thr) / 100.0;
        if (credit > 1000)
            credit = 1000;
        while (credit >= 1) {
            credit -= 1;
            uint64_t idx = s->area_first + pick(s, s->w.mem_pattern, area, hot, &s->mem_seq, &rng);
            synth_write_page(s, idx);
            synth_check_page(s, s->area_first + synth_rand(&rng) % area);
        }
        if (s->w.mem_rate == 0 && (atomic_load(&s->hb_count) & 63) == 0)
            synth_check_page(s, s->area_first + synth_rand(&rng) % area);
        sleep_until(&next);
    }
    return NULL;
}

/* The disk "device": writes each disk at the workload's rate and reads back as much. */
static void *io_main(void *arg)
{
    struct synth *s = arg;
    block_signals();
    uint64_t rng = s->w.seed * 40503u + 7, next = mono_ns();
    uint8_t *buf = aligned_alloc(4096, s->w.disk_max_io);
    uint8_t *rbuf = aligned_alloc(4096, SYNTH_BLOCK);
    double credit[VM_MAX_DISKS] = {0};
    if (!buf || !rbuf) {
        synth_record_error(s, "disk workload: out of memory");
        free(buf);
        free(rbuf);
        return NULL;
    }
    uint32_t nsizes = (s->w.disk_max_io - s->w.disk_min_io) / SYNTH_BLOCK + 1;
    while (pause_point(s)) {
        unsigned thr = atomic_load(&s->throttle);
        for (unsigned k = 0; k < s->vm.ndisks; k++) {
            struct synth_disk_meta *m = &s->dm[k];
            credit[k] += (double)s->w.disk_rate / 1000.0 * (100 - thr) / 100.0;
            if (credit[k] > 64.0 * 1048576)
                credit[k] = 64.0 * 1048576;
            for (;;) {
                uint32_t n = s->w.disk_min_io / SYNTH_BLOCK + (uint32_t)(synth_rand(&rng) % nsizes);
                if (credit[k] < (double)n * SYNTH_BLOCK || m->nblocks < n)
                    break;
                credit[k] -= (double)n * SYNTH_BLOCK;
                uint64_t span = m->nblocks - n + 1;
                /* hotspot: 9 writes in 10 to the first 1/16 of the disk; others: all of it */
                uint64_t hot = s->w.disk_pattern == SYNTH_HOTSPOT ? span / 16 + 1 : span;
                uint64_t first = pick(s, s->w.disk_pattern, span, hot, &m->seq, &rng);
                if (s->w.disk_pattern == SYNTH_SEQUENTIAL)
                    m->seq += n - 1;
                synth_write_blocks(s, k, first, n, buf);
                for (uint32_t i = 0; i < 4; i++)
                    synth_check_block(s, k, synth_rand(&rng) % m->nblocks, rbuf);
            }
        }
        sleep_until(&next);
    }
    free(buf);
    free(rbuf);
    return NULL;
}

static int start_threads(struct synth *s)
{
    void *(*mains[2])(void *) = {vcpu_main, io_main};
    for (unsigned i = 0; i < 2; i++) {
        int r = pthread_create(&s->threads[i], NULL, mains[i], s);
        if (r != 0) {
            bm_error("synthetic guest: cannot start a thread: %s", strerror(r));
            return -r;
        }
        s->nthreads++;
    }
    s->started = true;
    return 0;
}

/* ---- vm_ops ---- */

static int synth_dirty_start(struct vm *vm)
{
    bm_bitmap_clear_range(S(vm)->dirty, 0, S(vm)->ram_size);
    return 0;
}

static int synth_dirty_sync(struct vm *vm, struct bm_bitmap *out)
{
    return bm_bitmap_snapshot_and_clear(S(vm)->dirty, out);
}

static void synth_dirty_stop(struct vm *vm)
{
    (void)vm;
}

static int synth_pause(struct vm *vm)
{
    struct synth *s = S(vm);
    pthread_mutex_lock(&s->mu);
    atomic_store(&s->want_pause, true);
    while (s->parked < s->nthreads)
        pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
    vm->paused = true;
    return 0;
}

static int synth_resume(struct vm *vm)
{
    struct synth *s = S(vm);
    atomic_store(&s->resumed_pending, true);
    pthread_mutex_lock(&s->mu);
    atomic_store(&s->want_pause, false);
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    vm->paused = false;
    if (!s->started)
        return start_threads(s);
    return 0;
}

static void synth_throttle(struct vm *vm, unsigned pct)
{
    atomic_store(&S(vm)->throttle, pct > 99 ? 99 : pct);
}

static struct json_object *counters(struct synth *s)
{
    struct json_object *o = json_object_new_object();
#define ADD(name, v) json_object_object_add(o, name, json_object_new_int64((int64_t)(v)))
    ADD("last_hb_ns", atomic_load(&s->last_hb_ns));
    ADD("max_gap_ns", atomic_load(&s->max_gap_ns));
    ADD("last_resume_gap_ns", atomic_load(&s->last_resume_gap_ns));
    ADD("hb_count", atomic_load(&s->hb_count));
    ADD("ram_writes", atomic_load(&s->ram_writes));
    ADD("disk_writes", atomic_load(&s->disk_writes));
    ADD("ram_checks", atomic_load(&s->ram_checks));
    ADD("disk_checks", atomic_load(&s->disk_checks));
    ADD("errors", atomic_load(&s->errors));
    ADD("mem_seq", s->mem_seq);
#undef ADD
    pthread_mutex_lock(&s->mu);
    json_object_object_add(o, "first_error", json_object_new_string(s->first_error));
    pthread_mutex_unlock(&s->mu);
    return o;
}

static int synth_save(struct vm *vm, void **buf, size_t *len)
{
    struct json_object *o = counters(S(vm));
    json_object_object_add(o, "synth_state", json_object_new_int(1));
    const char *t = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
    *len = strlen(t);
    *buf = strdup(t);
    json_object_put(o);
    return *buf ? 0 : -ENOMEM;
}

static int get_u64(struct json_object *o, const char *key, uint64_t *out)
{
    struct json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
        return -EINVAL;
    *out = (uint64_t)json_object_get_int64(v);
    return 0;
}

static int synth_load(struct vm *vm, const void *buf, size_t len)
{
    struct synth *s = S(vm);
    struct json_tokener *tok = json_tokener_new();
    struct json_object *o = tok ? json_tokener_parse_ex(tok, buf, (int)len) : NULL;
    if (tok)
        json_tokener_free(tok);
    uint64_t v[10];
    static const char *const keys[] = {"last_hb_ns",  "max_gap_ns", "hb_count",    "ram_writes",
                                       "disk_writes", "ram_checks", "disk_checks", "errors",
                                       "mem_seq",     "synth_state"};
    int r = o && len < 65536 ? 0 : -EINVAL;
    for (unsigned i = 0; r == 0 && i < 10; i++)
        r = get_u64(o, keys[i], &v[i]);
    struct json_object *fe;
    if (r == 0 && json_object_object_get_ex(o, "first_error", &fe) &&
        json_object_is_type(fe, json_type_string))
        snprintf(s->first_error, sizeof s->first_error, "%s", json_object_get_string(fe));
    json_object_put(o);
    if (r < 0 || v[9] != 1) {
        bm_error("synthetic guest: the saved state is malformed");
        return -EINVAL;
    }
    uint64_t *sb = (uint64_t *)(void *)s->ram;
    if (sb[0] != SUPER_MAGIC || sb[1] != s->npages || sb[2] != s->vm.ndisks) {
        bm_error("synthetic guest: RAM does not hold this guest (bad superblock)");
        return -EINVAL;
    }
    atomic_store(&s->last_hb_ns, v[0]);
    atomic_store(&s->max_gap_ns, v[1]);
    atomic_store(&s->hb_count, v[2]);
    atomic_store(&s->ram_writes, v[3]);
    atomic_store(&s->disk_writes, v[4]);
    atomic_store(&s->ram_checks, v[5]);
    atomic_store(&s->disk_checks, v[6]);
    atomic_store(&s->errors, v[7]);
    s->mem_seq = v[8];
    return 0;
}

static struct json_object *synth_describe(struct vm *vm)
{
    struct synth *s = S(vm);
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "kind", json_object_new_string("synth"));
    json_object_object_add(o, "ram", json_object_new_int64((int64_t)s->ram_size));
    json_object_object_add(o, "workload", synth_workload_to_json(&s->w));
    json_object_object_add(o, "disks", vm_describe_disks(vm));
    return o;
}

static struct json_object *synth_query(struct vm *vm)
{
    struct synth *s = S(vm);
    struct json_object *o = counters(s);
    json_object_object_add(o, "running", json_object_new_boolean(!vm->paused));
    json_object_object_add(o, "throttle", json_object_new_int((int)atomic_load(&s->throttle)));
    return o;
}

static int64_t synth_check(struct vm *vm)
{
    struct synth *s = S(vm);
    int64_t bad = 0;
    for (uint64_t i = s->area_first; i < s->npages; i++)
        bad += synth_check_page(s, i) < 0;
    uint8_t *buf = aligned_alloc(4096, SYNTH_BLOCK);
    if (!buf)
        return -ENOMEM;
    for (unsigned k = 0; k < vm->ndisks; k++)
        for (uint64_t b = 0; b < s->dm[k].nblocks; b++)
            bad += synth_check_block(s, k, b, buf) < 0;
    free(buf);
    return bad;
}

static void synth_destroy(struct vm *vm)
{
    struct synth *s = S(vm);
    pthread_mutex_lock(&s->mu);
    atomic_store(&s->quit, true);
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    for (unsigned i = 0; i < s->nthreads; i++)
        pthread_join(s->threads[i], NULL);
    if (s->ram)
        munmap(s->ram, s->ram_size);
    bm_bitmap_free(s->dirty);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}

static const struct vm_ops synth_ops = {
    .kind = "synth",
    .dirty_log_start = synth_dirty_start,
    .dirty_log_sync = synth_dirty_sync,
    .dirty_log_stop = synth_dirty_stop,
    .pause = synth_pause,
    .resume = synth_resume,
    .throttle = synth_throttle,
    .save_state = synth_save,
    .load_state = synth_load,
    .describe = synth_describe,
    .query = synth_query,
    .check = synth_check,
    .destroy = synth_destroy,
};

/* ---- creation ---- */

static int layout(struct synth *s, char *err, size_t errlen)
{
    uint64_t page = 1 + (s->npages * 4 + SYNTH_BLOCK - 1) / SYNTH_BLOCK;
    s->page_gen = (uint32_t *)(void *)(s->ram + SYNTH_BLOCK);
    for (unsigned k = 0; k < s->vm.ndisks; k++) {
        struct synth_disk_meta *m = &s->dm[k];
        m->nblocks = bm_disk_size(s->vm.disks[k].disk) / SYNTH_BLOCK;
        m->gen_gpa = page * SYNTH_BLOCK;
        page += (m->nblocks * 4 + SYNTH_BLOCK - 1) / SYNTH_BLOCK;
        if (page >= s->npages)
            break;
        m->gen = (uint32_t *)(void *)(s->ram + m->gen_gpa);
    }
    if (page + 16 > s->npages) {
        snprintf(err, errlen,
                 "guest RAM too small: its bookkeeping needs %llu pages and the workload 16 more",
                 (unsigned long long)page);
        return -EINVAL;
    }
    s->area_first = page;
    return 0;
}

/* First boot: write the superblock and fill RAM and disks as the workload says. */
static int boot_fill(struct synth *s)
{
    uint64_t *sb = (uint64_t *)(void *)s->ram;
    sb[0] = SUPER_MAGIC;
    sb[1] = s->npages;
    sb[2] = s->vm.ndisks;
    uint64_t n = s->w.ram_fill / SYNTH_BLOCK;
    if (n > s->npages - s->area_first)
        n = s->npages - s->area_first;
    for (uint64_t i = 0; i < n; i++)
        synth_write_page(s, s->area_first + i);
    const uint32_t chunk = 256;
    uint8_t *buf = aligned_alloc(4096, (size_t)chunk * SYNTH_BLOCK);
    if (!buf)
        return -ENOMEM;
    for (unsigned k = 0; k < s->vm.ndisks; k++) {
        uint64_t blocks = s->w.disk_fill / SYNTH_BLOCK;
        if (blocks > s->dm[k].nblocks)
            blocks = s->dm[k].nblocks;
        for (uint64_t b = 0; b < blocks; b += chunk) {
            uint32_t c = blocks - b < chunk ? (uint32_t)(blocks - b) : chunk;
            int r = synth_write_blocks(s, k, b, c, buf);
            if (r < 0) {
                free(buf);
                return r;
            }
        }
    }
    free(buf);
    return 0;
}

int synth_create(uint64_t ram_size, const struct vm_disk *disks, unsigned ndisks,
                 const struct synth_workload *w, bool boot, synth_event_fn fn, void *opaque,
                 struct vm **out, char *err, size_t errlen)
{
    err[0] = '\0';
    if (ndisks > VM_MAX_DISKS) {
        snprintf(err, errlen, "at most %d disks", VM_MAX_DISKS);
        return -EINVAL;
    }
    if (ram_size < 64 * SYNTH_BLOCK || ram_size % SYNTH_BLOCK || ram_size > (1ull << 40)) {
        snprintf(err, errlen, "guest RAM must be a multiple of 4 KiB between 256 KiB and 1 TiB");
        return -EINVAL;
    }
    struct synth *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    s->vm.ops = &synth_ops;
    s->w = *w;
    s->fn = fn;
    s->opaque = opaque;
    s->ram_size = ram_size;
    s->npages = ram_size / SYNTH_BLOCK;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    atomic_store(&s->want_pause, true); /* no thread runs until resume */
    s->vm.paused = true;
    for (unsigned k = 0; k < ndisks; k++)
        s->vm.disks[k] = disks[k];
    s->vm.ndisks = ndisks;
    s->ram = mmap(NULL, ram_size, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (s->ram == MAP_FAILED) {
        s->ram = NULL;
        snprintf(err, errlen, "cannot map %llu bytes of guest RAM: %s",
                 (unsigned long long)ram_size, strerror(errno));
        synth_destroy(&s->vm);
        return -ENOMEM;
    }
    /* Huge pages where the kernel allows them (as QEMU does for guest RAM): the destination
     * fills fresh RAM at a page fault per 2 MiB instead of per 4 KiB. */
    madvise(s->ram, ram_size, MADV_HUGEPAGE);
    s->vm.nregions = 1;
    s->vm.regions[0] = (struct vm_ram_region){s->ram, 0, ram_size};
    s->dirty = bm_bitmap_new(ram_size, SYNTH_BLOCK);
    int r = s->dirty ? layout(s, err, errlen) : -ENOMEM;
    if (r == 0 && boot) {
        r = boot_fill(s);
        if (r < 0)
            snprintf(err, errlen, "filling the guest's disks: %s", strerror(-r));
        else
            r = synth_resume(&s->vm);
    }
    if (r < 0) {
        if (r == -ENOMEM && !err[0])
            snprintf(err, errlen, "out of memory");
        synth_destroy(&s->vm);
        return r;
    }
    *out = &s->vm;
    return 0;
}
