/* test-mirror.c: unit tests for the mirror job against an in-process NBD server. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blockmirror/mirror-internal.h"
#include "nbd/server.h"

#define SIZE (8u << 20)

struct fx {
    char dir[64], src_path[96], dst_path[96], sock[96], uri[160];
    struct bm_disk *src, *dst;
    struct nbd_server *server;
    pthread_t server_thread;
    /* events seen, in order */
    char events[512];
    pthread_mutex_t ev_lock;
    /* ordering test */
    int injections;
    uint64_t inject_off;
};

static void *serve(void *arg)
{
    nbd_server_run(arg);
    return NULL;
}

static void fill(struct bm_disk *d, uint64_t off, uint64_t len, uint8_t v)
{
    uint8_t *b = malloc(len);
    memset(b, v, len);
    assert_int_equal(bm_disk_pwrite(d, b, len, off, 0), 0);
    free(b);
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    strcpy(f->dir, "/tmp/blkmig-test-mirror.XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->src_path, sizeof f->src_path, "%s/src", f->dir);
    snprintf(f->dst_path, sizeof f->dst_path, "%s/dst", f->dir);
    snprintf(f->sock, sizeof f->sock, "%s/sock", f->dir);
    snprintf(f->uri, sizeof f->uri, "nbd+unix:///?socket=%s", f->sock);
    for (int i = 0; i < 2; i++) {
        int fd = open(i ? f->dst_path : f->src_path, O_RDWR | O_CREAT, 0600);
        if (fd < 0 || ftruncate(fd, SIZE) < 0)
            return -1;
        close(fd);
    }
    if (bm_disk_open(f->src_path, 0, &f->src) < 0 || bm_disk_open(f->dst_path, 0, &f->dst) < 0)
        return -1;
    fill(f->src, 1 << 20, 1 << 20, 0x11);
    fill(f->src, 5 << 20, 512 << 10, 0x22);
    struct nbd_server_config cfg = {0};
    f->server = nbd_server_new(&cfg);
    if (!f->server || nbd_server_add_export(f->server, "", NULL, f->dst, false) < 0 ||
        nbd_server_listen_unix(f->server, f->sock) < 0)
        return -1;
    pthread_create(&f->server_thread, NULL, serve, f->server);
    pthread_mutex_init(&f->ev_lock, NULL);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    nbd_server_shutdown(f->server);
    pthread_join(f->server_thread, NULL);
    nbd_server_free(f->server);
    bm_disk_close(f->src);
    bm_disk_close(f->dst);
    unlink(f->src_path);
    unlink(f->dst_path);
    rmdir(f->dir);
    free(f);
    return 0;
}

static void on_event(void *opaque, const char *event, const struct mirror_stats *st,
                     const char *detail)
{
    struct fx *f = opaque;
    (void)st;
    (void)detail;
    if (strcmp(event, "stats") == 0)
        return;
    pthread_mutex_lock(&f->ev_lock);
    size_t n = strlen(f->events);
    snprintf(f->events + n, sizeof f->events - n, "%s%s", n ? "," : "", event);
    pthread_mutex_unlock(&f->ev_lock);
}

static bool use_direct;

static struct mirror_job *new_job(struct fx *f, const char *uri)
{
    struct mirror_opts o;
    mirror_opts_default(&o);
    o.target_uri = uri;
    o.direct = use_direct;
    o.stats_ms = 0;
    struct mirror_job *j;
    char err[256];
    assert_int_equal(mirror_new(f->src, &o, on_event, f, &j, err, sizeof err), 0);
    return j;
}

static void wait_state(struct mirror_job *j, enum mirror_state want)
{
    for (int i = 0; i < 3000; i++) {
        struct mirror_stats st;
        mirror_query(j, &st);
        if (st.state == want)
            return;
        usleep(2000);
    }
    fail_msg("state %s never reached", mirror_state_name(want));
}

static void assert_same(struct fx *f)
{
    uint8_t *a = malloc(SIZE), *b = malloc(SIZE);
    assert_int_equal(bm_disk_pread(f->src, a, SIZE, 0), 0);
    assert_int_equal(bm_disk_pread(f->dst, b, SIZE, 0), 0);
    assert_memory_equal(a, b, SIZE);
    free(a);
    free(b);
}

static void test_states_and_copy(void **state)
{
    struct fx *f = *state;
    struct mirror_job *j = new_job(f, f->uri);
    assert_int_equal(mirror_start(j), 0);
    wait_state(j, MIRROR_READY);
    /* Writes after ready are tracked and copied. */
    fill(f->src, 3 << 20, 64 << 10, 0x33);
    mirror_complete(j);
    char err[256];
    assert_int_equal(mirror_wait(j, err, sizeof err), 0);
    struct mirror_stats st;
    mirror_query(j, &st);
    assert_int_equal(st.bulk_total, (1 << 20) + (512 << 10));
    assert_true(st.bytes_sent >= st.bulk_total);
    /* Only the allocated data travelled: the holes were zero on the target already. */
    assert_true(st.bytes_sent <= st.bulk_total + (64 << 10) + (64 << 10));
    mirror_release(j);
    mirror_free(j);
    assert_string_equal(f->events, "setup,bulk,dirty,ready,completing,done");
    assert_same(f);
}

/* Inject a write into a block the mirror just read during a dirty copy. With clear-before-read
 * the write's dirty bit survives and the block is copied again; were the bit cleared after the
 * read, the target would keep the stale data and this test would fail. */
static void inject(void *opaque, uint64_t off, uint64_t len, bool bulk)
{
    struct fx *f = opaque;
    if (bulk || f->injections >= 3)
        return;
    f->injections++;
    f->inject_off = off;
    fill(f->src, off, len < 4096 ? len : 4096, (uint8_t)(0x80 + f->injections));
}

static void test_ordering_invariant(void **state)
{
    struct fx *f = *state;
    struct mirror_job *j = new_job(f, f->uri);
    mirror_set_test_hook(j, inject, f);
    assert_int_equal(mirror_start(j), 0);
    wait_state(j, MIRROR_READY);
    fill(f->src, 2 << 20, 4096, 0x44); /* one dirty block for the hook to race */
    for (int i = 0; i < 1000 && f->injections < 3; i++)
        usleep(2000);
    assert_int_equal(f->injections, 3);
    wait_state(j, MIRROR_READY);
    mirror_complete(j);
    char err[256];
    assert_int_equal(mirror_wait(j, err, sizeof err), 0);
    mirror_release(j);
    mirror_free(j);
    assert_same(f);
}

/* The same with O_DIRECT source reads through libaio, the ordering test included. */
static void test_direct(void **state)
{
    use_direct = true;
    test_states_and_copy(state);
    use_direct = false;
}

static void test_direct_ordering(void **state)
{
    use_direct = true;
    test_ordering_invariant(state);
    use_direct = false;
}

/* Writes landing ahead of the bulk pass: into data the pass has yet to read (the bulk copy
 * carries them; no second, dirty copy), into a hole (only a dirty copy can carry it), and into
 * the range the pass just read (clear-before-read: copied again). */
static void ahead(void *opaque, uint64_t off, uint64_t len, bool bulk)
{
    struct fx *f = opaque;
    (void)len;
    if (!bulk || f->injections > 0 || off != (1u << 20))
        return;
    f->injections++;
    fill(f->src, (5u << 20) + (128u << 10), 64u << 10, 0x66); /* data not read yet */
    fill(f->src, 7u << 20, 4096, 0x77);                     /* a hole */
    fill(f->src, (1u << 20) + 8192, 4096, 0x88);            /* just read */
}

static void test_bulk_covers_dirty(void **state)
{
    struct fx *f = *state;
    struct mirror_job *j = new_job(f, f->uri);
    mirror_set_test_hook(j, ahead, f);
    assert_int_equal(mirror_start(j), 0);
    wait_state(j, MIRROR_READY);
    assert_int_equal(f->injections, 1);
    mirror_complete(j);
    char err[256];
    assert_int_equal(mirror_wait(j, err, sizeof err), 0);
    struct mirror_stats st;
    mirror_query(j, &st);
    assert_int_equal(st.bulk_total, (1 << 20) + (512 << 10));
    /* The bulk pass, then one dirty block each for the hole and the re-read range. */
    assert_int_equal(st.bytes_sent, st.bulk_total + 2 * 4096);
    mirror_release(j);
    mirror_free(j);
    assert_same(f);
}

static void test_cancel(void **state)
{
    struct fx *f = *state;
    struct mirror_job *j = new_job(f, f->uri);
    assert_int_equal(mirror_start(j), 0);
    mirror_cancel(j);
    char err[256];
    assert_int_equal(mirror_wait(j, err, sizeof err), -ECANCELED);
    mirror_free(j);
    assert_non_null(strstr(f->events, "cancelled"));
    /* The source's writers were never held or hooked afterwards. */
    fill(f->src, 0, 4096, 0x55);
}

static void test_bad_target(void **state)
{
    struct fx *f = *state;
    char uri[200];
    snprintf(uri, sizeof uri, "nbd+unix:///?socket=%s/nobody", f->dir);
    struct mirror_job *j = new_job(f, uri);
    assert_int_equal(mirror_start(j), 0);
    char err[256] = "";
    int r = mirror_wait(j, err, sizeof err);
    assert_true(r < 0 && r != -ECANCELED);
    assert_non_null(strstr(err, "connect"));
    mirror_free(j);
    assert_string_equal(f->events, "setup,failed");
}

static void test_bad_options(void **state)
{
    struct fx *f = *state;
    struct mirror_opts o;
    mirror_opts_default(&o);
    o.target_uri = f->uri;
    struct mirror_job *j;
    char err[256];
    o.granularity = 3000;
    assert_int_equal(mirror_new(f->src, &o, NULL, NULL, &j, err, sizeof err), -EINVAL);
    o.granularity = 65536;
    o.request_size = 4096;
    assert_int_equal(mirror_new(f->src, &o, NULL, NULL, &j, err, sizeof err), -EINVAL);
    o.request_size = 1 << 20;
    o.in_flight = 0;
    assert_int_equal(mirror_new(f->src, &o, NULL, NULL, &j, err, sizeof err), -EINVAL);
}

/* A writer that keeps writing a counter into one block of the source, through the bm_disk. */
struct counter_writer {
    struct bm_disk *d;
    _Atomic bool stop;
    _Atomic uint64_t last; /* the last value whose write succeeded */
    _Atomic bool ended;    /* by a failed write, or stop */
};

static void *counter_main(void *arg)
{
    struct counter_writer *w = arg;
    uint8_t buf[4096];
    for (uint64_t v = 1; !atomic_load(&w->stop); v++) {
        memset(buf, 0, sizeof buf);
        memcpy(buf, &v, sizeof v);
        if (bm_disk_pwrite(w->d, buf, sizeof buf, 3 << 20, 0) != 0)
            break;
        atomic_store(&w->last, v);
    }
    atomic_store(&w->ended, true);
    return NULL;
}

static uint64_t counter_at(int fd)
{
    uint64_t v = 0;
    assert_int_equal(pread(fd, &v, sizeof v, 3 << 20), (ssize_t)sizeof v);
    return v;
}

/* A pivot: a writer running across completion never loses a write it was told succeeded, and
 * after done every request of the source disk is served from the target, none from the image. */
static void test_pivot(void **state)
{
    struct fx *f = *state;
    struct mirror_job *j = new_job(f, f->uri);
    j->o.pivot = true;
    char err[256];
    assert_int_equal(mirror_start(j), 0);
    struct counter_writer w = {.d = f->src};
    pthread_t wt;
    pthread_create(&wt, NULL, counter_main, &w);
    wait_state(j, MIRROR_READY);
    mirror_complete(j);
    assert_int_equal(mirror_wait(j, err, sizeof err), 0);
    assert_true(mirror_pivoted(j));
    assert_true(bm_disk_is_redirected(f->src));
    /* Let the writer go on past the pivot, then stop it. */
    int raw = open(f->src_path, O_RDONLY);
    assert_true(raw >= 0);
    uint64_t at_pivot = counter_at(raw);
    while (atomic_load(&w.last) < at_pivot + 20 && !atomic_load(&w.ended))
        usleep(1000);
    atomic_store(&w.stop, true);
    pthread_join(wt, NULL);
    uint64_t last = atomic_load(&w.last);
    assert_true(last >= at_pivot + 20); /* no write failed after the pivot */
    /* The target holds the last acknowledged write; the image stopped at the pivot. */
    uint64_t v = 0;
    assert_int_equal(bm_disk_pread(f->dst, &v, sizeof v, 3 << 20), 0);
    assert_int_equal(v, last);
    assert_int_equal(counter_at(raw), at_pivot);
    assert_int_equal(bm_disk_pread(f->src, &v, sizeof v, 3 << 20), 0);
    assert_int_equal(v, last);
    /* Zero, trim, flush and FUA go to the target too; a fast zero is refused. */
    fill(f->src, 6 << 20, 8192, 0x66);
    assert_int_equal(bm_disk_pwrite(f->src, "fua", 3, 7 << 20, BM_DISK_FUA), 0);
    assert_int_equal(bm_disk_zero(f->src, 6 << 20, 4096, BM_DISK_FUA), 0);
    assert_int_equal(bm_disk_zero(f->src, 6 << 20, 4096, BM_DISK_FAST), -ENOTSUP);
    assert_int_equal(bm_disk_trim(f->src, 1 << 20, 4096, 0), 0);
    assert_int_equal(bm_disk_flush(f->src), 0);
    uint8_t b[8192];
    assert_int_equal(bm_disk_pread(f->dst, b, sizeof b, 6 << 20), 0);
    assert_int_equal(b[0], 0);
    assert_int_equal(b[4096], 0x66);
    assert_int_equal(bm_disk_pread(f->dst, b, 3, 7 << 20), 0);
    assert_memory_equal(b, "fua", 3);
    assert_int_equal(pread(raw, b, sizeof b, 6 << 20), (ssize_t)sizeof b);
    assert_int_equal(b[4096], 0); /* never written to the image */
    close(raw);
    mirror_free(j);
    assert_string_equal(f->events, "setup,bulk,dirty,ready,completing,done");
}

/* After a pivot, a target that stops answering is given up on: a writer waiting on it gets
 * EIO once the stall limit passes, and so does every later request, instead of hanging; the
 * job is then freed at once. */
static void test_pivot_target_hangs(void **state)
{
    struct fx *f = *state;
    struct mirror_job *j = new_job(f, f->uri);
    j->o.pivot = true;
    j->pivot_stall_ns = 300000000ull;
    assert_int_equal(mirror_start(j), 0);
    wait_state(j, MIRROR_READY);
    mirror_complete(j);
    char err[256];
    assert_int_equal(mirror_wait(j, err, sizeof err), 0);
    assert_true(mirror_pivoted(j));
    uint8_t b[4096];
    memset(b, 0x77, sizeof b);
    assert_int_equal(bm_disk_pwrite(f->src, b, sizeof b, 0, 0), 0); /* the target answers */
    bm_disk_hold(f->dst); /* from now on the target's server answers no write */
    uint64_t t0 = mirror_now_ns();
    assert_int_equal(bm_disk_pwrite(f->src, b, sizeof b, 4096, BM_DISK_FUA), -EIO);
    uint64_t waited = mirror_now_ns() - t0;
    assert_true(waited >= 300000000ull);
    assert_true(waited < 10000000000ull);
    assert_int_equal(bm_disk_pread(f->src, b, sizeof b, 0), -EIO);
    assert_int_equal(bm_disk_flush(f->src), -EIO);
    t0 = mirror_now_ns();
    mirror_free(j);
    assert_true(mirror_now_ns() - t0 < 1000000000ull);
    bm_disk_release(f->dst);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_states_and_copy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ordering_invariant, setup, teardown),
        cmocka_unit_test_setup_teardown(test_direct, setup, teardown),
        cmocka_unit_test_setup_teardown(test_direct_ordering, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bulk_covers_dirty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_target, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_options, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pivot, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pivot_target_hangs, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
