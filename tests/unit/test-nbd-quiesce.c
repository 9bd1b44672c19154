/* test-nbd-quiesce.c: unit tests for nbd_server_quiesce against a real server and raw client. */
#include <config.h>

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "blockmirror/disk.h"
#include "common/io.h"
#include "nbd/server-internal.h"

#define SIZE  (16u << 20)
#define BLOCK 512u
/* Blocks the load test may write, each once: the sequence number is the block index. */
#define NBLOCKS (SIZE / BLOCK)
/* Requests the load test keeps in flight. */
#define WINDOW 8

/* The load test's client: one thread sends, one reads replies. */
struct load {
    pthread_t sender, receiver;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    /* Under lock. */
    uint64_t sent, replied, refused;
    bool stop, dead;
    /* ok[seq] / err[seq]: the reply to the write of block seq; written by the receiver only. */
    uint8_t *ok, *err;
    bool bad_reply; /* a reply the test did not expect (cookie, magic) */
};

struct fx {
    char dir[64], path[96], sock[96];
    struct bm_disk *disk;
    struct nbd_server *server;
    pthread_t server_thread;
    bool serving;
    int run_result;
    int fd; /* the client's socket, or -1 */
    struct load load;
    bool loading;
    struct nbd_inject inject; /* a slow disk: writes take a while once they run */
};

static void *serve(void *arg)
{
    struct fx *f = arg;
    f->run_result = nbd_server_run(f->server);
    return NULL;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* Connect and negotiate NBD_OPT_GO for the default export, without structured replies (every
 * reply is a simple one). */
static int client_connect(struct fx *f)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    f->fd = fd;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", f->sock);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        return -1;
    uint8_t b[64];
    if (bm_read_full(fd, b, 18) < 0 || bm_get_be64(b) != NBD_MAGIC ||
        bm_get_be64(b + 8) != NBD_IHAVEOPT)
        return -1;
    bm_put_be32(b, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    /* NBD_OPT_GO with an empty name and no information requests. */
    bm_put_be64(b + 4, NBD_IHAVEOPT);
    bm_put_be32(b + 12, NBD_OPT_GO);
    bm_put_be32(b + 16, 6);
    bm_put_be32(b + 20, 0);
    bm_put_be16(b + 24, 0);
    if (bm_write_full(fd, b, 26) < 0)
        return -1;
    for (;;) {
        if (bm_read_full(fd, b, 20) < 0 || bm_get_be64(b) != NBD_REP_MAGIC ||
            bm_get_be32(b + 8) != NBD_OPT_GO)
            return -1;
        uint32_t type = bm_get_be32(b + 12), len = bm_get_be32(b + 16);
        if (len && bm_discard_full(fd, len) < 0)
            return -1;
        if (type == NBD_REP_ACK)
            return 0;
        if (type != NBD_REP_INFO)
            return -1;
    }
}

static int setup_server(void **state, bool slow)
{
    struct fx *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    f->fd = -1;
    *state = f;
    strcpy(f->dir, "/tmp/blkmig-test-quiesce.XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->path, sizeof f->path, "%s/disk", f->dir);
    snprintf(f->sock, sizeof f->sock, "%s/sock", f->dir);
    int fd = open(f->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    int r = ftruncate(fd, SIZE);
    close(fd);
    if (r < 0 || bm_disk_open(f->path, 0, &f->disk) < 0)
        return -1;
    struct nbd_server_config cfg = {.drain_timeout_ms = 2000};
    if (slow) {
        char err[128];
        if (nbd_inject_parse(&f->inject, "write:delay=2ms", err, sizeof err) < 0)
            return -1;
        cfg.inject = &f->inject;
    }
    f->server = nbd_server_new(&cfg);
    if (!f->server || nbd_server_add_export(f->server, "", NULL, f->disk, false) < 0 ||
        nbd_server_listen_unix(f->server, f->sock) < 0)
        return -1;
    if (pthread_create(&f->server_thread, NULL, serve, f) != 0)
        return -1;
    f->serving = true;
    return client_connect(f);
}

static int setup(void **state)
{
    return setup_server(state, false);
}

static void load_stop(struct fx *f);

static int teardown(void **state)
{
    struct fx *f = *state;
    if (!f)
        return 0;
    if (f->loading)
        load_stop(f);
    if (f->serving) {
        /* A test that failed may have left a WRITE half sent: end it, or the server's drain
         * waits for the rest of its payload. */
        if (f->fd >= 0)
            shutdown(f->fd, SHUT_RDWR);
        nbd_server_shutdown(f->server);
        pthread_join(f->server_thread, NULL);
    }
    if (f->fd >= 0)
        close(f->fd);
    if (f->server)
        nbd_server_free(f->server);
    if (f->disk)
        bm_disk_close(f->disk);
    free(f->load.ok);
    free(f->load.err);
    unlink(f->path);
    unlink(f->sock);
    rmdir(f->dir);
    free(f);
    *state = NULL;
    return 0;
}

static void put_request(uint8_t *b, uint16_t type, uint64_t cookie, uint64_t off, uint32_t len)
{
    bm_put_be32(b, NBD_REQUEST_MAGIC);
    bm_put_be16(b + 4, 0);
    bm_put_be16(b + 6, type);
    bm_put_be64(b + 8, cookie);
    bm_put_be64(b + 16, off);
    bm_put_be32(b + 24, len);
}

static void send_request(struct fx *f, uint16_t type, uint64_t cookie, uint64_t off, uint32_t len,
                         const void *payload)
{
    uint8_t b[NBD_REQUEST_SIZE];
    put_request(b, type, cookie, off, len);
    assert_int_equal(bm_write_full(f->fd, b, sizeof b), 0);
    if (payload)
        assert_int_equal(bm_write_full(f->fd, payload, len), 0);
}

/* Read one simple reply to cookie; a successful READ's data goes to data. Returns its error. */
static uint32_t read_reply(struct fx *f, uint64_t cookie, void *data, uint32_t len)
{
    uint8_t b[NBD_SIMPLE_REPLY_SIZE];
    assert_int_equal(bm_read_full(f->fd, b, sizeof b), 0);
    assert_int_equal(bm_get_be32(b), NBD_SIMPLE_REPLY_MAGIC);
    assert_int_equal(bm_get_be64(b + 8), cookie);
    uint32_t err = bm_get_be32(b + 4);
    if (err == 0 && data)
        assert_int_equal(bm_read_full(f->fd, data, len), 0);
    return err;
}

static void file_read(struct fx *f, void *buf, size_t len, uint64_t off)
{
    assert_int_equal(bm_disk_pread(f->disk, buf, len, off), 0);
}

static void assert_filled(struct fx *f, uint64_t off, size_t len, uint8_t v)
{
    uint8_t *b = malloc(len), *want = malloc(len);
    assert_non_null(b);
    assert_non_null(want);
    memset(want, v, len);
    file_read(f, b, len, off);
    bool same = memcmp(b, want, len) == 0;
    free(b);
    free(want);
    assert_true(same);
}

/* The server stops serving: its run returns 0 (nothing was left unfinished), the thread joins
 * and the client sees the connection end. */
static void assert_shutdown_clean(struct fx *f)
{
    nbd_server_shutdown(f->server);
    pthread_join(f->server_thread, NULL);
    f->serving = false;
    assert_int_equal(f->run_result, 0);
    uint8_t b[1];
    assert_int_equal(bm_read_full(f->fd, b, 1), -ENODATA);
}

/* Nothing in flight: quiesce returns at once, and from then on requests are refused without
 * touching the export while the connection stays up. */
static void test_idle(void **state)
{
    struct fx *f = *state;
    uint8_t buf[4096];
    uint64_t t0 = now_ms();
    assert_int_equal(nbd_server_quiesce(f->server, 1000), 0);
    assert_true(now_ms() - t0 < 100);

    memset(buf, 0xab, sizeof buf);
    send_request(f, NBD_CMD_WRITE, 1, 8192, sizeof buf, buf);
    assert_int_equal(read_reply(f, 1, NULL, 0), ESHUTDOWN);
    assert_filled(f, 0, 64 << 10, 0);
    send_request(f, NBD_CMD_READ, 2, 0, sizeof buf, NULL);
    assert_int_equal(read_reply(f, 2, buf, sizeof buf), ESHUTDOWN);
    /* Still open: the client can go on sending and the server answers each request. */
    assert_int_equal(nbd_server_connections(f->server), 1);
    send_request(f, NBD_CMD_WRITE, 3, 0, sizeof buf, buf);
    assert_int_equal(read_reply(f, 3, NULL, 0), ESHUTDOWN);
    send_request(f, NBD_CMD_FLUSH, 4, 0, 0, NULL);
    assert_int_equal(read_reply(f, 4, NULL, 0), ESHUTDOWN);
    assert_filled(f, 0, 64 << 10, 0);
    assert_int_equal(nbd_server_connections(f->server), 1);
    /* A second quiesce is harmless. */
    assert_int_equal(nbd_server_quiesce(f->server, 1000), 0);
    assert_shutdown_clean(f);
}

/* Wait until the server has read a request header (its count is up). */
static void wait_requests(struct fx *f, unsigned n)
{
    uint64_t t0 = now_ms();
    while (atomic_load(&f->server->requests) < n) {
        assert_true(now_ms() - t0 < 2000);
        sleep_ms(1);
    }
}

/* A WRITE whose payload is still arriving holds quiesce off, and is refused when it is whole. */
static void test_payload_in_progress(void **state)
{
    struct fx *f = *state;
    uint8_t buf[8192], hdr[NBD_REQUEST_SIZE];
    memset(buf, 0xcd, sizeof buf);
    put_request(hdr, NBD_CMD_WRITE, 7, 4096, sizeof buf);
    assert_int_equal(bm_write_full(f->fd, hdr, sizeof hdr), 0);
    assert_int_equal(bm_write_full(f->fd, buf, sizeof buf / 2), 0);
    wait_requests(f, 1);

    uint64_t t0 = now_ms();
    assert_int_equal(nbd_server_quiesce(f->server, 200), -ETIMEDOUT);
    uint64_t waited = now_ms() - t0;
    /* quiesce counts whole milliseconds, and so do we: allow for rounding. */
    assert_true(waited >= 190 && waited < 1500);

    assert_int_equal(bm_write_full(f->fd, buf + sizeof buf / 2, sizeof buf / 2), 0);
    assert_int_equal(read_reply(f, 7, NULL, 0), ESHUTDOWN);
    assert_filled(f, 0, 64 << 10, 0);
    assert_int_equal(nbd_server_quiesce(f->server, 1000), 0);
    assert_filled(f, 0, 64 << 10, 0);
    assert_shutdown_clean(f);
}

/* Writes answered before the quiesce are in the file; quiesce has nothing to wait for. */
static void test_completed_writes(void **state)
{
    struct fx *f = *state;
    uint8_t buf[4096];
    for (unsigned i = 0; i < 8; i++) {
        memset(buf, 0x10 + i, sizeof buf);
        send_request(f, NBD_CMD_WRITE, 100 + i, (uint64_t)i * 2 * sizeof buf, sizeof buf, buf);
    }
    /* Workers may answer out of order. */
    unsigned seen = 0;
    for (unsigned i = 0; i < 8; i++) {
        uint8_t b[NBD_SIMPLE_REPLY_SIZE];
        assert_int_equal(bm_read_full(f->fd, b, sizeof b), 0);
        assert_int_equal(bm_get_be32(b), NBD_SIMPLE_REPLY_MAGIC);
        assert_int_equal(bm_get_be32(b + 4), 0);
        uint64_t cookie = bm_get_be64(b + 8);
        assert_in_range(cookie, 100, 107);
        seen |= 1u << (cookie - 100);
    }
    assert_int_equal(seen, 0xff);
    assert_int_equal(nbd_server_quiesce(f->server, 1000), 0);
    for (unsigned i = 0; i < 8; i++) {
        assert_filled(f, (uint64_t)i * 2 * sizeof buf, sizeof buf, 0x10 + i);
        assert_filled(f, (uint64_t)(i * 2 + 1) * sizeof buf, sizeof buf, 0);
    }
    assert_shutdown_clean(f);
}

/* ---- under load ---- */

/* Block seq carries seq in every 8 bytes, so the file says which writes landed. */
static void fill_block(uint8_t *b, uint64_t seq)
{
    for (unsigned i = 0; i < BLOCK; i += 8)
        memcpy(b + i, &seq, 8);
}

static void *load_send(void *arg)
{
    struct fx *f = arg;
    struct load *l = &f->load;
    uint8_t b[NBD_REQUEST_SIZE + BLOCK];
    for (uint64_t seq = 1; seq < NBLOCKS; seq++) {
        pthread_mutex_lock(&l->lock);
        while (!l->stop && !l->dead && l->sent - l->replied >= WINDOW)
            pthread_cond_wait(&l->cond, &l->lock);
        bool done = l->stop || l->dead;
        if (!done)
            l->sent++;
        /* Refusals come fast: slow down once they do, or the blocks run out too soon. */
        bool slow = l->refused > 0;
        pthread_mutex_unlock(&l->lock);
        if (done)
            break;
        if (slow)
            sleep_ms(1);
        put_request(b, NBD_CMD_WRITE, seq, seq * BLOCK, BLOCK);
        fill_block(b + NBD_REQUEST_SIZE, seq);
        if (bm_write_full(f->fd, b, sizeof b) < 0)
            break;
    }
    return NULL;
}

static void *load_receive(void *arg)
{
    struct fx *f = arg;
    struct load *l = &f->load;
    uint8_t b[NBD_SIMPLE_REPLY_SIZE];
    while (bm_read_full(f->fd, b, sizeof b) == 0) {
        uint64_t seq = bm_get_be64(b + 8);
        if (bm_get_be32(b) != NBD_SIMPLE_REPLY_MAGIC || seq == 0 || seq >= NBLOCKS) {
            l->bad_reply = true;
            break;
        }
        bool ok = bm_get_be32(b + 4) == 0;
        if (ok)
            l->ok[seq] = 1;
        else
            l->err[seq] = 1;
        pthread_mutex_lock(&l->lock);
        l->replied++;
        l->refused += !ok;
        pthread_cond_broadcast(&l->cond);
        pthread_mutex_unlock(&l->lock);
    }
    pthread_mutex_lock(&l->lock);
    l->dead = true;
    pthread_cond_broadcast(&l->cond);
    pthread_mutex_unlock(&l->lock);
    return NULL;
}

static void load_start(struct fx *f)
{
    struct load *l = &f->load;
    l->ok = calloc(NBLOCKS, 1);
    l->err = calloc(NBLOCKS, 1);
    assert_non_null(l->ok);
    assert_non_null(l->err);
    pthread_mutex_init(&l->lock, NULL);
    pthread_cond_init(&l->cond, NULL);
    assert_int_equal(pthread_create(&l->receiver, NULL, load_receive, f), 0);
    if (pthread_create(&l->sender, NULL, load_send, f) != 0) {
        shutdown(f->fd, SHUT_RDWR);
        pthread_join(l->receiver, NULL);
        fail_msg("pthread_create");
    }
    f->loading = true;
}

/* Stop sending, then end the server so that every reply is in: the receiver sees the end. */
static void load_stop(struct fx *f)
{
    struct load *l = &f->load;
    pthread_mutex_lock(&l->lock);
    l->stop = true;
    pthread_cond_broadcast(&l->cond);
    pthread_mutex_unlock(&l->lock);
    pthread_join(l->sender, NULL);
    if (f->serving) {
        nbd_server_shutdown(f->server);
        pthread_join(f->server_thread, NULL);
        f->serving = false;
    }
    shutdown(f->fd, SHUT_RDWR); /* the server's end may be gone already; this is for a failed run */
    pthread_join(l->receiver, NULL);
    pthread_mutex_destroy(&l->lock);
    pthread_cond_destroy(&l->cond);
    f->loading = false;
}

static void load_round(struct fx *f, unsigned delay_ms)
{
    struct load *l = &f->load;
    uint8_t *before = malloc(SIZE), *after = malloc(SIZE);
    assert_non_null(before);
    assert_non_null(after);
    load_start(f);
    /* Quiesce in full flow: after the first writes are answered (a slow disk takes a while). */
    pthread_mutex_lock(&l->lock);
    while (!l->dead && l->replied < WINDOW)
        pthread_cond_wait(&l->cond, &l->lock);
    pthread_mutex_unlock(&l->lock);
    sleep_ms(delay_ms);
    int q = nbd_server_quiesce(f->server, 2000);
    file_read(f, before, SIZE, 0);
    pthread_mutex_lock(&l->lock);
    uint64_t sent_at_quiesce = l->sent;
    pthread_mutex_unlock(&l->lock);
    sleep_ms(100);
    pthread_mutex_lock(&l->lock);
    uint64_t sent_later = l->sent;
    pthread_mutex_unlock(&l->lock);
    file_read(f, after, SIZE, 0);
    load_stop(f);
    bool unchanged = memcmp(before, after, SIZE) == 0;

    /* Every write answered with success is in the file; every refused one left no trace. */
    uint64_t oks = 0, errs = 0, missing = 0, refused_landed = 0;
    uint8_t want[BLOCK];
    for (uint64_t seq = 1; seq < NBLOCKS; seq++) {
        if (!l->ok[seq] && !l->err[seq])
            continue;
        fill_block(want, seq);
        bool landed = memcmp(after + seq * BLOCK, want, BLOCK) == 0;
        if (l->ok[seq]) {
            oks++;
            missing += !landed;
        } else {
            errs++;
            refused_landed += landed;
        }
    }
    free(before);
    free(after);
    print_message(
        "load: quiesce %u ms into the flow, %llu writes ok, %llu refused (%llu sent by the "
        "quiesce, %llu 100 ms later)\n",
        delay_ms, (unsigned long long)oks, (unsigned long long)errs,
        (unsigned long long)sent_at_quiesce, (unsigned long long)sent_later);
    assert_int_equal(q, 0);
    assert_false(l->bad_reply);
    assert_true(unchanged);
    assert_int_equal(missing, 0);
    assert_int_equal(refused_landed, 0);
    /* The load was real: writes landed before the quiesce and were refused after it. */
    assert_true(oks > 0);
    assert_true(errs > 0);
    assert_true(sent_later > sent_at_quiesce);
}

static void test_under_load(void **state)
{
    unsigned seed = (unsigned)time(NULL);
    print_message("load: seed %u\n", seed);
    srand(seed);
    /* Odd rounds run on a slow disk: writes are still running when the quiesce comes, so
     * one that stopped being counted before it was done would land afterwards. */
    for (unsigned round = 0; round < 6; round++) {
        if (round > 0) {
            teardown(state);
            assert_int_equal(setup_server(state, round % 2), 0);
        }
        load_round(*state, (unsigned)(rand() % 30));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_idle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_payload_in_progress, setup, teardown),
        cmocka_unit_test_setup_teardown(test_completed_writes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_under_load, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
