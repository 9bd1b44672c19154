/* mirror.c: `blkmig mirror`, live-mirror a disk in use to any NBD target. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>
#include <stdatomic.h>

#include "blockmirror/disk.h"
#include "blockmirror/mirror.h"
#include "cli/cli.h"
#include "cli/image.h"
#include "common/control.h"
#include "common/log.h"
#include "common/parse.h"
#include "nbd/server.h"

enum on_ready { ON_READY_COMPLETE, ON_READY_WAIT, ON_READY_CANCEL };

struct mirror_cli {
    struct mirror_job *job;
    struct bm_control *ctl;
    bool json;
    bool progress;
    enum on_ready on_ready;
    pthread_mutex_t out_lock; /* one writer of stdout/stderr lines at a time */
    bool progress_shown;
    _Atomic bool ready_seen;
    _Atomic bool cancel_requested; /* by the user, not by a failure */
    int end_pipe[2];               /* written when the job reaches an end state */
};

static void usage(FILE *f)
{
    fprintf(f,
        "Usage: blkmig mirror [OPTIONS] SOURCE TARGET-URI\n"
        "\n"
        "Mirror the disk image SOURCE, live, to the NBD export TARGET-URI (nbd://HOST[:PORT]/NAME\n"
        "or nbd+unix:///NAME?socket=PATH; blkmig nbd-serve, qemu-nbd and nbdkit all work).\n"
        "SOURCE is served over NBD to its writers while the copy runs; every write is tracked\n"
        "in a dirty bitmap and copied again until the target is in sync.\n"
        "\n"
        "Serving the source to its writers:\n"
        "      --serve-unix PATH    serve SOURCE on this unix socket\n"
        "      --serve-port N       serve SOURCE on this TCP port\n"
        "      --serve-bind ADDR    address for --serve-port (default 127.0.0.1)\n"
        "Copying:\n"
        "      --granularity SIZE   dirty-tracking block size (default 4K; larger for disks\n"
        "                           over 1 TiB, keeping the bitmap under 32 MiB)\n"
        "      --request-size SIZE  largest copy request (default 256K)\n"
        "      --in-flight N        copy requests in flight (default 64)\n"
        "      --connections N      NBD connections when the target allows multi-conn (4)\n"
        "      --speed RATE         limit the background copy, bytes/s (e.g. 100M; 0 = none)\n"
        "      --copy-mode MODE     background | write-blocking | auto (default background)\n"
        "      --ready-ms MS        ready when the dirty data fits in MS of copying (50)\n"
        "      --retries N          target failures in a row before giving up (5)\n"
        "      --source-io MODE     buffered (default): pread through the page cache;\n"
        "                           direct: O_DIRECT reads through libaio where aligned\n"
        "When ready:\n"
        "      --on-ready ACTION    complete (default): hold writers, copy the rest, then\n"
        "                           pivot or release (--on-complete), flush, exit;\n"
        "                           wait: stay in sync until `complete` (control) or SIGUSR1;\n"
        "                           cancel: stop; the target holds what was copied, flushed\n"
        "      --on-complete MODE   pivot (default): once the copy is over the writers'\n"
        "                           disk becomes the target: held and later requests are\n"
        "                           served from it until the writers disconnect; SOURCE is\n"
        "                           no longer written; the target is flushed after that;\n"
        "                           release: the target is flushed with the writers held,\n"
        "                           then held and later writes go to SOURCE only; the target\n"
        "                           is a point-in-time copy as of completion\n"
        "Reporting and control:\n"
        "      --control PATH       control socket (JSON lines: query, complete, cancel,\n"
        "                           set-speed)\n"
        "      --json               JSON-line events and a final summary on stdout\n"
        "      --no-progress        no progress line on stderr\n"
        "Opening SOURCE:\n"
        "  -U, --force-share        read SOURCE although another process (QEMU) holds it for\n"
        "                           writing: read-only, not served; its writes are not\n"
        "                           tracked (default: refuse it, as QEMU refuses blkmig's)\n"
        "      --format raw         mirror a SOURCE that starts like another format (qcow2,\n"
        "                           vmdk, ...) as raw all the same (default: refuse it)\n"
        "  -l, --log-level L        error, warn, info or debug (default warn)\n"
        "  -h, --help               show this help\n"
        "\n"
        "Exit status: 0 done, 1 failed, 2 usage error, 3 cancelled. Done (the event, status\n"
        "0, the --json summary) means: pivot: the target holds all of SOURCE's data, flushed,\n"
        "and the writers have been on the target since the pivot, which came before that\n"
        "flush; release: the target is identical to SOURCE as of the hold, flushed, and the\n"
        "writers stay held until exit. SIGINT/SIGTERM cancel; SIGUSR1 completes. A failed or\n"
        "cancelled mirror keeps serving SOURCE until its writers disconnect (or another\n"
        "signal); a pivoted one, done or failed (its final flush failed: SOURCE holds all up\n"
        "to the switch), serves them from the target the same way.\n");
}

static struct json_object *stats_json(const struct mirror_stats *st)
{
    struct json_object *o = json_object_new_object();
#define ADD_U64(name, v) json_object_object_add(o, name, json_object_new_int64((int64_t)(v)))
    json_object_object_add(o, "state", json_object_new_string(mirror_state_name(st->state)));
    json_object_object_add(o, "mode", json_object_new_string(st->write_blocking
                                                                 ? "write-blocking"
                                                                 : "background"));
    ADD_U64("disk_size", st->disk_size);
    ADD_U64("bulk_total", st->bulk_total);
    ADD_U64("bulk_done", st->bulk_done);
    ADD_U64("bytes_sent", st->bytes_sent);
    ADD_U64("zero_bytes", st->zero_bytes);
    ADD_U64("active_bytes", st->active_bytes);
    ADD_U64("dirty_bytes", st->dirty_bytes);
    ADD_U64("throughput", st->throughput);
    ADD_U64("dirty_rate", st->dirty_rate);
    ADD_U64("rounds", st->rounds);
    ADD_U64("retries", st->retries);
    ADD_U64("mode_switches", st->mode_switches);
    ADD_U64("elapsed_ms", st->elapsed_ms);
    ADD_U64("time_to_ready_ms", st->ready_ms ? st->ready_ms - 1 : 0);
    ADD_U64("connections", st->connections);
#undef ADD_U64
    return o;
}

static void show_progress(struct mirror_cli *m, const struct mirror_stats *st)
{
    char sent[32], dirty[32], rate[32];
    cli_human(st->bytes_sent + st->active_bytes, sent, sizeof sent);
    cli_human(st->dirty_bytes, dirty, sizeof dirty);
    cli_human(st->throughput, rate, sizeof rate);
    double pct = st->bulk_total ? 100.0 * (double)st->bulk_done / (double)st->bulk_total : 100;
    char eta[32] = "-";
    if (st->state == MIRROR_BULK && st->throughput)
        snprintf(eta, sizeof eta, "%llus",
                 (unsigned long long)((st->bulk_total - st->bulk_done) / st->throughput));
    pthread_mutex_lock(&m->out_lock);
    fprintf(stderr, "\r\033[K%-10s %5.1f%%  %s/s  sent %s  dirty %s  ETA %s  %s",
            mirror_state_name(st->state), pct > 100 ? 100 : pct, rate, sent, dirty, eta,
            st->write_blocking ? "write-blocking" : "background");
    m->progress_shown = true;
    pthread_mutex_unlock(&m->out_lock);
}

static void on_event(void *opaque, const char *event, const struct mirror_stats *st,
                     const char *detail)
{
    struct mirror_cli *m = opaque;
    if (m->json) {
        struct json_object *o = stats_json(st);
        json_object_object_add(o, "event", json_object_new_string(event));
        if (detail)
            json_object_object_add(o, "detail", json_object_new_string(detail));
        pthread_mutex_lock(&m->out_lock);
        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        fflush(stdout);
        pthread_mutex_unlock(&m->out_lock);
        json_object_put(o);
    } else if (strcmp(event, "stats") != 0 && bm_log_get_level() >= BM_LOG_INFO) {
        /* A failure's cause is printed once, with the summary. */
        bool say = detail && strcmp(event, "failed") != 0;
        bm_info("mirror: %s%s%s", event, say ? ": " : "", say ? detail : "");
    }
    if (strcmp(event, "stats") != 0) {
        struct json_object *d = stats_json(st);
        if (detail)
            json_object_object_add(d, "detail", json_object_new_string(detail));
        bm_control_emit(m->ctl, event, d);
    }
    if (strcmp(event, "done") == 0 || strcmp(event, "cancelled") == 0 ||
        strcmp(event, "failed") == 0) {
        ssize_t w = write(m->end_pipe[1], "x", 1);
        (void)w;
    }
    if (strcmp(event, "ready") == 0 && !atomic_exchange(&m->ready_seen, true)) {
        if (m->on_ready == ON_READY_COMPLETE)
            mirror_complete(m->job);
        else if (m->on_ready == ON_READY_CANCEL) {
            atomic_store(&m->cancel_requested, true);
            mirror_cancel(m->job);
        }
    }
}


static const char *const control_commands[] = {"query", "complete", "cancel", "set-speed",
                                               NULL};

static struct json_object *on_control(void *opaque, const char *cmd, struct json_object *args,
                                      const char **cls, char *desc, size_t desclen)
{
    struct mirror_cli *m = opaque;
    struct mirror_stats st;
    if (strcmp(cmd, "query") == 0) {
        mirror_query(m->job, &st);
        return stats_json(&st);
    }
    if (strcmp(cmd, "complete") == 0) {
        mirror_complete(m->job);
        return json_object_new_object();
    }
    if (strcmp(cmd, "cancel") == 0) {
        atomic_store(&m->cancel_requested, true);
        mirror_cancel(m->job);
        return json_object_new_object();
    }
    /* set-speed {"speed": BYTES | "100M"} */
    struct json_object *v;
    uint64_t speed;
    if (!args || !json_object_object_get_ex(args, "speed", &v)) {
        *cls = "InvalidArgument";
        snprintf(desc, desclen, "set-speed needs \"speed\" (bytes per second, or \"100M\")");
        return NULL;
    }
    if (json_object_is_type(v, json_type_int) && json_object_get_int64(v) >= 0) {
        speed = (uint64_t)json_object_get_int64(v);
    } else if (!json_object_is_type(v, json_type_string) ||
               cli_parse_rate(json_object_get_string(v), &speed) < 0) {
        *cls = "InvalidArgument";
        snprintf(desc, desclen, "speed: expected bytes per second, or a size such as \"100M\"");
        return NULL;
    }
    mirror_set_speed(m->job, speed);
    return json_object_new_object();
}

/* What completion made of the target, for the --json summary. */
static void add_completion_json(struct json_object *o, bool pivoted, unsigned writers)
{
    json_object_object_add(o, "on_complete", json_object_new_string(pivoted ? "pivot" : "release"));
    json_object_object_add(o, "point_in_time", json_object_new_boolean(!pivoted));
    json_object_object_add(o, "writers_connected", json_object_new_int64(writers));
}

/* The same, for people. */
static void print_completion(bool pivoted, unsigned writers)
{
    if (pivoted)
        fprintf(stderr,
                "  pivoted: the writers' disk is now the target; SOURCE is no longer written%s\n",
                writers ? "; serving the connected writers from the target until they disconnect"
                        : "");
    else
        fprintf(stderr, "  released: the target is a point-in-time copy of SOURCE as of "
                        "completion; SOURCE stays the writers' disk and kept being written\n");
}

struct server_thread {
    struct nbd_server *s;
    pthread_t t;
    bool running;
};

static void *serve_main(void *arg)
{
    struct server_thread *st = arg;
    nbd_server_run(st->s);
    return NULL;
}

static int parse_size_opt(const char *name, const char *v, uint64_t min, uint64_t max,
                          uint64_t *out)
{
    if (bm_parse_size(v, out) < 0 || *out < min || *out > max) {
        bm_error("--%s %s: expected a size from %llu to %llu bytes", name, v,
                 (unsigned long long)min, (unsigned long long)max);
        return -1;
    }
    return 0;
}

int cmd_mirror(int argc, char **argv)
{
    enum { O_SERVE_UNIX = 256, O_SERVE_PORT, O_SERVE_BIND, O_GRAN, O_REQ, O_INFLIGHT, O_CONNS,
           O_SPEED, O_MODE, O_READY_MS, O_RETRIES, O_ON_READY, O_CONTROL, O_JSON, O_NOPROG,
           O_SOURCE_IO, O_ON_COMPLETE };
    static const struct option opts[] = {
        {"serve-unix", required_argument, NULL, O_SERVE_UNIX},
        {"serve-port", required_argument, NULL, O_SERVE_PORT},
        {"serve-bind", required_argument, NULL, O_SERVE_BIND},
        {"granularity", required_argument, NULL, O_GRAN},
        {"request-size", required_argument, NULL, O_REQ},
        {"in-flight", required_argument, NULL, O_INFLIGHT},
        {"connections", required_argument, NULL, O_CONNS},
        {"speed", required_argument, NULL, O_SPEED},
        {"copy-mode", required_argument, NULL, O_MODE},
        {"ready-ms", required_argument, NULL, O_READY_MS},
        {"retries", required_argument, NULL, O_RETRIES},
        {"on-ready", required_argument, NULL, O_ON_READY},
        {"on-complete", required_argument, NULL, O_ON_COMPLETE},
        {"control", required_argument, NULL, O_CONTROL},
        {"json", no_argument, NULL, O_JSON},
        {"no-progress", no_argument, NULL, O_NOPROG},
        {"source-io", required_argument, NULL, O_SOURCE_IO},
        {"log-level", required_argument, NULL, 'l'},
        {"help", no_argument, NULL, 'h'},
        {"force-share", no_argument, NULL, 'U'},
        {"format", required_argument, NULL, 'F'},
        {NULL, 0, NULL, 0},
    };
    bm_log_set_prefix("blkmig mirror");
    struct mirror_opts mo;
    mirror_opts_default(&mo);
    mo.pivot = true;
    struct mirror_cli m = {.on_ready = ON_READY_COMPLETE, .progress = true};
    pthread_mutex_init(&m.out_lock, NULL);
    const char *serve_unix = NULL, *serve_port = NULL, *serve_bind = "127.0.0.1";
    const char *control = NULL;
    struct cli_image img = {.offer_share = true, .raw_only = true};
    uint64_t v;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "l:hU", opts, NULL)) != -1) {
        switch (c) {
        case 'U': img.force_share = true; break;
        case 'F':
            if (cli_parse_format(optarg) < 0)
                return 2;
            img.raw_only = false;
            break;
        case O_SERVE_UNIX: serve_unix = optarg; break;
        case O_SERVE_PORT:
            if (bm_parse_u64(optarg, 1, 65535, &v) < 0) {
                bm_error("--serve-port %s: expected a port from 1 to 65535", optarg);
                return 2;
            }
            serve_port = optarg;
            break;
        case O_SERVE_BIND: serve_bind = optarg; break;
        case O_GRAN:
            if (parse_size_opt("granularity", optarg, 512, 64 << 20, &v) < 0 || (v & (v - 1))) {
                bm_error("--granularity %s: expected a power of two from 512 to 64M", optarg);
                return 2;
            }
            mo.granularity = (uint32_t)v;
            break;
        case O_REQ:
            if (parse_size_opt("request-size", optarg, 4096, 32 << 20, &v) < 0)
                return 2;
            mo.request_size = (uint32_t)v;
            break;
        case O_INFLIGHT:
            if (bm_parse_u64(optarg, 1, 1024, &v) < 0) {
                bm_error("--in-flight %s: expected 1 to 1024", optarg);
                return 2;
            }
            mo.in_flight = (unsigned)v;
            break;
        case O_CONNS:
            if (bm_parse_u64(optarg, 1, 16, &v) < 0) {
                bm_error("--connections %s: expected 1 to 16", optarg);
                return 2;
            }
            mo.connections = (unsigned)v;
            break;
        case O_SPEED:
            if (cli_parse_rate(optarg, &mo.speed) < 0) {
                bm_error("--speed %s: expected bytes per second, such as 100M", optarg);
                return 2;
            }
            break;
        case O_MODE:
            if (strcmp(optarg, "background") == 0)
                mo.mode = MIRROR_MODE_BACKGROUND;
            else if (strcmp(optarg, "write-blocking") == 0)
                mo.mode = MIRROR_MODE_WRITE_BLOCKING;
            else if (strcmp(optarg, "auto") == 0)
                mo.mode = MIRROR_MODE_AUTO;
            else {
                bm_error("--copy-mode %s: expected background, write-blocking or auto", optarg);
                return 2;
            }
            break;
        case O_READY_MS:
            if (bm_parse_u64(optarg, 1, 600000, &v) < 0) {
                bm_error("--ready-ms %s: expected 1 to 600000", optarg);
                return 2;
            }
            mo.ready_ms = (unsigned)v;
            break;
        case O_RETRIES:
            if (bm_parse_u64(optarg, 0, 1000, &v) < 0) {
                bm_error("--retries %s: expected 0 to 1000", optarg);
                return 2;
            }
            mo.retries = (unsigned)v;
            break;
        case O_ON_READY:
            if (strcmp(optarg, "complete") == 0)
                m.on_ready = ON_READY_COMPLETE;
            else if (strcmp(optarg, "wait") == 0)
                m.on_ready = ON_READY_WAIT;
            else if (strcmp(optarg, "cancel") == 0)
                m.on_ready = ON_READY_CANCEL;
            else {
                bm_error("--on-ready %s: expected complete, wait or cancel", optarg);
                return 2;
            }
            break;
        case O_ON_COMPLETE:
            if (strcmp(optarg, "pivot") == 0)
                mo.pivot = true;
            else if (strcmp(optarg, "release") == 0)
                mo.pivot = false;
            else {
                bm_error("--on-complete %s: expected pivot or release", optarg);
                return 2;
            }
            break;
        case O_CONTROL: control = optarg; break;
        case O_JSON: m.json = true; break;
        case O_NOPROG: m.progress = false; break;
        case O_SOURCE_IO:
            if (strcmp(optarg, "buffered") == 0)
                mo.direct = false;
            else if (strcmp(optarg, "direct") == 0)
                mo.direct = true;
            else {
                bm_error("--source-io %s: expected buffered or direct", optarg);
                return 2;
            }
            break;
        case 'l':
            if (cli_set_log_level(optarg) < 0)
                return 2;
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (argc - optind != 2) {
        bm_error("expected SOURCE and TARGET-URI (see --help)");
        return 2;
    }
    if (serve_unix && serve_port) {
        bm_error("--serve-unix and --serve-port exclude each other");
        return 2;
    }
    if (img.force_share && (serve_unix || serve_port)) {
        bm_error("--force-share opens SOURCE read-only: it cannot be served to writers");
        return 2;
    }
    if (mo.granularity && mo.request_size < mo.granularity) {
        bm_error("--request-size must be at least --granularity");
        return 2;
    }
    const char *src_path = argv[optind];
    mo.target_uri = argv[optind + 1];
    if (!isatty(STDERR_FILENO))
        m.progress = false;

    /* Signals arrive on a signalfd read by this (main) thread. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    int sfd = signalfd(-1, &sigs, SFD_CLOEXEC);
    if (pipe2(m.end_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        bm_error("pipe: %s", strerror(errno));
        return 1;
    }

    int status = 1;
    struct bm_disk *disk = NULL;
    struct server_thread srv = {0};
    char err[256];
    if (cli_open_image(src_path, &img, &disk) < 0)
        goto out;
    if (img.force_share)
        bm_warn("--force-share: writes by other processes to %s are not tracked: the target "
                "is a consistent copy only if nobody writes it meanwhile", src_path);
    if (serve_unix || serve_port) {
        struct nbd_server_config cfg = {0};
        srv.s = nbd_server_new(&cfg);
        if (!srv.s || nbd_server_add_export(srv.s, "", NULL, disk, false) < 0)
            goto out;
        int r = serve_unix ? nbd_server_listen_unix(srv.s, serve_unix)
                           : nbd_server_listen_tcp(srv.s, serve_bind, serve_port);
        if (r < 0)
            goto out;
        if (pthread_create(&srv.t, NULL, serve_main, &srv) != 0)
            goto out;
        srv.running = true;
    }
    if (mirror_new(disk, &mo, on_event, &m, &m.job, err, sizeof err) < 0) {
        bm_error("%s", err);
        goto out;
    }
    if (control) {
        m.ctl = bm_control_start(control, "mirror", control_commands, on_control, &m, err,
                                 sizeof err);
        if (!m.ctl) {
            bm_error("control socket: %s", err);
            goto out;
        }
    }
    if (mirror_start(m.job) < 0)
        goto out;

    /* Wait for the end, showing progress and handling signals. */
    for (;;) {
        struct mirror_stats st;
        mirror_query(m.job, &st);
        if (st.state == MIRROR_DONE || st.state == MIRROR_CANCELLED || st.state == MIRROR_FAILED)
            break;
        if (m.progress)
            show_progress(&m, &st);
        struct pollfd pfd[2] = {{.fd = sfd, .events = POLLIN},
                                {.fd = m.end_pipe[0], .events = POLLIN}};
        if (poll(pfd, 2, 200) > 0 && (pfd[0].revents & POLLIN)) {
            struct signalfd_siginfo si;
            if (read(sfd, &si, sizeof si) == sizeof si) {
                if (si.ssi_signo == SIGUSR1) {
                    mirror_complete(m.job);
                } else {
                    bm_warn("signal %u: cancelling the mirror", si.ssi_signo);
                    atomic_store(&m.cancel_requested, true);
                    mirror_cancel(m.job);
                }
            }
        }
    }
    int r = mirror_wait(m.job, err, sizeof err);
    struct mirror_stats st;
    mirror_query(m.job, &st);
    if (m.progress && m.progress_shown)
        fprintf(stderr, "\r\033[K");
    const char *result = r == 0 ? "done" : r == -ECANCELED ? "cancelled" : "failed";
    /* A pivoted job that failed (its final flush did) pivoted all the same: the writers'
     * disk is the target. */
    bool pivoted = mirror_pivoted(m.job);
    unsigned writers = srv.running ? nbd_server_connections(srv.s) : 0;
    double secs = (double)st.elapsed_ms / 1000.0;
    uint64_t mean = st.elapsed_ms ? (st.bytes_sent + st.active_bytes) * 1000 / st.elapsed_ms : 0;
    if (m.json) {
        struct json_object *o = stats_json(&st);
        json_object_object_add(o, "event", json_object_new_string("summary"));
        json_object_object_add(o, "result", json_object_new_string(result));
        json_object_object_add(o, "mean_throughput", json_object_new_int64((int64_t)mean));
        if (r != 0 && r != -ECANCELED)
            json_object_object_add(o, "error", json_object_new_string(err));
        if (r == 0 || pivoted)
            add_completion_json(o, pivoted, writers);
        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        json_object_put(o);
        if (r != 0 && r != -ECANCELED)
            bm_error("mirror failed: %s", err); /* the one line on stderr that says why */
    } else {
        char a[32], b[32], c2[32], d[32];
        cli_human(st.bytes_sent, a, sizeof a);
        cli_human(st.zero_bytes, b, sizeof b);
        cli_human(st.active_bytes, c2, sizeof c2);
        cli_human(mean, d, sizeof d);
        fprintf(stderr,
                "mirror %s: %s -> %s\n"
                "  copied %s, zeroed %s, forwarded by writers %s, %llu dirty rounds\n"
                "  time to ready %.2f s, total %.2f s, mean %s/s, retries %llu, mode switches "
                "%llu\n",
                result, src_path, mo.target_uri, a, b, c2, (unsigned long long)st.rounds,
                st.ready_ms ? (double)(st.ready_ms - 1) / 1000.0 : 0.0, secs, d,
                (unsigned long long)st.retries, (unsigned long long)st.mode_switches);
        if (r != 0 && r != -ECANCELED)
            fprintf(stderr, "  error: %s\n", err);
        if (r == 0 || pivoted)
            print_completion(pivoted, writers);
    }
    fflush(stdout);
    status = r == 0 ? 0 : r == -ECANCELED ? 3 : 1;
    if ((r != 0 || pivoted) && srv.running && nbd_server_connections(srv.s) > 0) {
        /* The copy stopped, the disk did not: its writers keep it until they let go (after
         * a pivot the disk they keep is the target; the summary said so). */
        if (!pivoted)
            bm_warn("the mirror %s; still serving %s to its writers until they disconnect "
                    "(SIGINT or SIGTERM to stop now)", result, src_path);
        else if (r != 0)
            bm_warn("the mirror failed after the pivot; still serving the target %s to the "
                    "writers of %s until they disconnect (SIGINT or SIGTERM to stop now)",
                    mo.target_uri, src_path);
        while (nbd_server_connections(srv.s) > 0) {
            struct pollfd pfd = {.fd = sfd, .events = POLLIN};
            if (poll(&pfd, 1, 200) > 0) {
                struct signalfd_siginfo si;
                if (read(sfd, &si, sizeof si) == sizeof si && si.ssi_signo != SIGUSR1)
                    break;
            }
        }
    }
out:
    if (m.ctl)
        bm_control_stop(m.ctl);
    if (srv.running) {
        /* Stop reading new requests first; without a pivot the writes completion held then
         * go on, to the source only (the copy is complete as of the hold). After a pivot they
         * went on to the target at done, and the target serves the server's last requests:
         * the job is freed only once the server has stopped. */
        nbd_server_shutdown(srv.s);
        if (m.job)
            mirror_release(m.job);
        pthread_join(srv.t, NULL);
    } else if (m.job) {
        mirror_release(m.job);
    }
    mirror_free(m.job);
    if (srv.s)
        nbd_server_free(srv.s);
    bm_disk_close(disk);
    if (sfd >= 0)
        close(sfd);
    close(m.end_pipe[0]);
    close(m.end_pipe[1]);
    return status;
}
