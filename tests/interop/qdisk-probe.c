/* qdisk-probe.c: mirror a live QEMU drive through vm/qemu/qdisk.c (QEMU's NBD export and
 * dirty-bitmap harvests) to an NBD target while QEMU writes to it, and check the result.
 *   qdisk-probe QMP_SOCKET NBD_SOCKET DEVICE TARGET_URI SECONDS
 * DEVICE is the -drive id QEMU's qemu-io writes to (through the block layer, as a guest's
 * writes go, dirtying QEMU's bitmaps) for SECONDS while the mirror copies. Then the VM is
 * stopped, the mirror completed, and every byte read through QEMU's export compared with the
 * target's. At the end no blkmig bitmap or export may be left in QEMU. Prints "ok all" and
 * exits 0 when every check passed; "FAIL: ..." and 1 at the first that did not. */
#include <config.h>

#include <errno.h>
#include <libnbd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "blockmirror/mirror.h"
#include "vm/qemu/qdisk.h"

static struct qemu_mon mon;
static char err[1024];
static const char *device;
static uint64_t disk_size;
static double seconds;
static unsigned writes;

__attribute__((format(printf, 1, 2), noreturn)) static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("FAIL: qdisk-probe: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static struct json_object *must(const char *cmd, struct json_object *args)
{
    struct json_object *ret;
    int r = qemu_mon_exec(&mon, cmd, args, &ret, err, sizeof err);
    if (r < 0)
        fail("%s (%s)", err, strerror(-r));
    return ret;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* qemu-io on the drive, through the HMP passthrough: the write goes through QEMU's block
 * layer and marks its dirty bitmaps as a guest's write would. */
static void qemu_io(const char *cmd)
{
    char line[256];
    snprintf(line, sizeof line, "qemu-io %s \"%s\"", device, cmd);
    struct json_object *ret = must("human-monitor-command",
                                   qemu_obj("command-line", json_object_new_string(line), NULL));
    const char *out = json_object_get_string(ret);
    if (!out || strstr(out, "error") || strstr(out, "failed"))
        fail("qemu-io %s: %s", cmd, out ? out : "(no output)");
    json_object_put(ret);
}

/* Random writes (and a few zeroes) across the disk, 4 KiB aligned, 4-256 KiB long. */
static void *writer(void *arg)
{
    (void)arg;
    unsigned seed = 12345;
    double end = now_s() + seconds;
    while (now_s() < end) {
        uint64_t len = (uint64_t)(1 + rand_r(&seed) % 64) * 4096;
        uint64_t off = (uint64_t)rand_r(&seed) % ((disk_size - len) / 4096 + 1) * 4096;
        char cmd[128];
        if (rand_r(&seed) % 8 == 0)
            snprintf(cmd, sizeof cmd, "write -z %llu %llu", (unsigned long long)off,
                     (unsigned long long)len);
        else
            snprintf(cmd, sizeof cmd, "write -P %u %llu %llu", 1 + rand_r(&seed) % 254,
                     (unsigned long long)off, (unsigned long long)len);
        qemu_io(cmd);
        writes++;
        usleep(2000);
    }
    return NULL;
}

/* The drive's node name and virtual size from query-block. */
static void find_drive(char *node, size_t nodelen)
{
    struct json_object *blocks = must("query-block", NULL);
    for (size_t i = 0; i < json_object_array_length(blocks); i++) {
        struct json_object *b = json_object_array_get_idx(blocks, i), *v, *ins, *img;
        if (!json_object_object_get_ex(b, "device", &v) ||
            strcmp(json_object_get_string(v), device) != 0 ||
            !json_object_object_get_ex(b, "inserted", &ins))
            continue;
        if (!json_object_object_get_ex(ins, "node-name", &v) ||
            !json_object_object_get_ex(ins, "image", &img))
            break;
        snprintf(node, nodelen, "%s", json_object_get_string(v));
        if (!json_object_object_get_ex(img, "virtual-size", &v))
            break;
        disk_size = (uint64_t)json_object_get_int64(v);
        json_object_put(blocks);
        return;
    }
    fail("query-block has no drive %s with a node name and a size", device);
}

/* Every byte through QEMU's export equals the target's. */
static void compare(struct bm_disk *d, const char *uri)
{
    struct nbd_handle *h = nbd_create();
    if (!h || nbd_connect_uri(h, uri) < 0)
        fail("connecting to %s: %s", uri, nbd_get_error());
    static uint8_t a[1 << 20], b[1 << 20];
    for (uint64_t off = 0; off < disk_size; off += sizeof a) {
        size_t n = disk_size - off < sizeof a ? (size_t)(disk_size - off) : sizeof a;
        int r = bm_disk_pread(d, a, n, off);
        if (r < 0)
            fail("reading the source at %llu: %s", (unsigned long long)off, strerror(-r));
        if (nbd_pread(h, b, n, off, 0) < 0)
            fail("reading the target at %llu: %s", (unsigned long long)off, nbd_get_error());
        if (memcmp(a, b, n) != 0)
            fail("source and target differ in [%llu, %llu)", (unsigned long long)off,
                 (unsigned long long)(off + n));
    }
    nbd_close(h);
}

/* Nothing of blkmig's is left in QEMU: no export, no bitmap named blkmig-*. */
static void check_clean(void)
{
    struct json_object *ex = must("query-block-exports", NULL);
    if (json_object_array_length(ex) != 0)
        fail("exports left in QEMU: %s", json_object_to_json_string(ex));
    json_object_put(ex);
    struct json_object *nodes = must("query-named-block-nodes", NULL);
    const char *s = json_object_to_json_string(nodes);
    if (strstr(s, "\"blkmig-"))
        fail("bitmaps left in QEMU: %s", s);
    json_object_put(nodes);
}

int main(int argc, char **argv)
{
    if (argc != 6)
        fail("usage: qdisk-probe QMP_SOCKET NBD_SOCKET DEVICE TARGET_URI SECONDS");
    device = argv[3];
    seconds = atof(argv[5]);
    struct bm_qmp *q;
    if (bm_qmp_connect(argv[1], 10000, &q, err, sizeof err) < 0)
        fail("%s", err);
    if (qemu_mon_init(&mon, q, "QEMU") < 0)
        fail("out of memory");
    char node[128];
    find_drive(node, sizeof node);

    struct qemu_nbd *n;
    struct bm_disk *d;
    if (qemu_nbd_start(&mon, argv[2], &n, err, sizeof err) < 0)
        fail("%s", err);
    if (qemu_disk_open(n, node, "d0", "vda", disk_size, 0, &d, err, sizeof err) < 0)
        fail("%s", err);
    qemu_io("write -P 7 0 64k"); /* before the mirror starts: the bulk pass or a harvest */

    struct mirror_opts o;
    mirror_opts_default(&o);
    o.target_uri = argv[4];
    struct mirror_job *j;
    if (mirror_new(d, &o, NULL, NULL, &j, err, sizeof err) < 0 || mirror_start(j) < 0)
        fail("mirror: %s", err);
    pthread_t wt;
    pthread_create(&wt, NULL, writer, NULL);
    pthread_join(wt, NULL);
    /* Likely after the last harvest: only the one at completion sees it. */
    qemu_io("write -P 9 0 4k");
    struct mirror_stats st;
    mirror_query(j, &st);
    printf("written %u times while mirroring; mirror %s, %llu rounds, %llu bytes sent\n", writes,
           mirror_state_name(st.state), (unsigned long long)st.rounds,
           (unsigned long long)st.bytes_sent);
    if (st.state != MIRROR_DIRTY && st.state != MIRROR_READY)
        fail("the mirror is %s after the writes, not dirty or ready", mirror_state_name(st.state));

    /* The writers stop (a paused VM), then the last harvest and copy. */
    json_object_put(must("stop", NULL));
    mirror_complete(j);
    if (mirror_wait(j, err, sizeof err) != 0)
        fail("mirror: %s", err);
    mirror_query(j, &st);
    printf("mirror done: %llu bytes sent, %llu zeroed\n", (unsigned long long)st.bytes_sent,
           (unsigned long long)st.zero_bytes);
    mirror_free(j);
    compare(d, argv[4]);
    printf("ok contents\n");

    bm_disk_close(d);
    qemu_nbd_stop(n);
    check_clean();
    printf("ok clean\n");
    json_object_put(must("quit", NULL));
    qemu_mon_destroy(&mon);
    printf("ok all\n");
    return 0;
}
