/* migrate.c: `blkmig migrate`, ask a running VM to migrate, show progress, report. */
#include <config.h>

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/vmproc.h"
#include "common/control.h"
#include "common/log.h"
#include "common/parse.h"
#include "migration/migration.h"

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: blkmig migrate [--with-disk] [--downtime-limit MS] [--max-bandwidth RATE]\n"
            "                      [--verify] [--compress] [--order joint|disk-first]\n"
            "                      [--max-time S] [--peer-timeout MS] [--connections N]\n"
            "                      [--json] [--no-progress] SOCKET tcp:HOST:PORT\n"
            "\n"
            "Migrate the VM whose control socket is SOCKET to `blkmig incoming` at HOST:PORT,\n"
            "live: disks mirrored over NBD and RAM pre-copied together, then one short pause.\n"
            "\n"
            "  --with-disk           copy the disks too (the destination has no shared storage)\n"
            "  --downtime-limit MS   the longest pause allowed (default 300)\n"
            "  --max-bandwidth RATE  one budget for RAM and disks together (e.g. 100M)\n"
            "  --verify              digest RAM and disks on both sides at the switchover; the\n"
            "                        destination refuses to resume on a mismatch\n"
            "  --compress            zlib-compress RAM batches\n"
            "  --order ORDER         joint (default: both streams end together) or disk-first\n"
            "                        (QEMU/libvirt: every disk ready, then RAM)\n"
            "  --max-time S          give up (cleanly) after S seconds (default 600)\n"
            "  --peer-timeout MS     silence that counts as a lost link (default 10000)\n"
            "  --connections N       NBD connections per disk (default 4)\n"
            "  --json                print events and the final report as JSON lines on stdout\n"
            "  --no-progress         no progress line on stderr\n"
            "  -h, --help            show this help\n"
            "Exit status: 0 migrated, 1 failed (the VM runs on the source), 2 usage,\n"
            "3 cancelled, 4 outcome unknown (the VM is paused on the source), 5 migrated\n"
            "but the destination did not confirm its disks durable.\n");
}

struct follow {
    bool json, progress, tty;
    const char *final_status;
    struct json_object *final;
};

static uint64_t geti(struct json_object *o, const char *a, const char *b)
{
    struct json_object *x;
    if (!json_object_object_get_ex(o, a, &x))
        return 0;
    if (b && !json_object_object_get_ex(x, b, &x))
        return 0;
    return (uint64_t)json_object_get_int64(x);
}

static void progress(struct follow *f, struct json_object *d)
{
    char ram[32], disk[32], thr[32];
    struct json_object *ph;
    cli_human(geti(d, "ram", "remaining"), ram, sizeof ram);
    cli_human(geti(d, "disk", "remaining"), disk, sizeof disk);
    cli_human(geti(d, "throughput", NULL), thr, sizeof thr);
    json_object_object_get_ex(d, "phase", &ph);
    fprintf(stderr,
            "%s%6.1fs %-12s RAM left %-10s (round %llu) disk left %-10s %s/s  expected "
            "downtime %llu ms  throttle %llu%%%s",
            f->tty ? "\r" : "", (double)geti(d, "elapsed_ms", NULL) / 1000.0,
            json_object_get_string(ph), ram, (unsigned long long)geti(d, "ram", "rounds"), disk,
            thr, (unsigned long long)geti(d, "expected_downtime_ms", NULL),
            (unsigned long long)geti(d, "throttle", NULL), f->tty ? "   " : "\n");
}

static bool on_event(void *opaque, struct json_object *ev)
{
    struct follow *f = opaque;
    if (!ev) {
        if (!f->final_status)
            bm_error("the VM process closed the connection before the migration ended");
        return true;
    }
    struct json_object *name, *data, *st;
    if (!json_object_object_get_ex(ev, "event", &name) ||
        !json_object_object_get_ex(ev, "data", &data))
        return false;
    const char *n = json_object_get_string(name);
    if (f->json)
        printf("%s\n", json_object_to_json_string_ext(ev, JSON_C_TO_STRING_PLAIN));
    if (strcmp(n, "migration-progress") == 0 && f->progress)
        progress(f, data);
    else if (strcmp(n, "throttle") == 0 && !f->json)
        fprintf(stderr, "%sRAM is not converging: vCPU throttle %llu%%\n", f->tty ? "\n" : "",
                (unsigned long long)geti(data, "throttle", NULL));
    else if (strcmp(n, "disk-mode") == 0 && !f->json)
        fprintf(stderr, "%sdisk copy mode: %s\n", f->tty ? "\n" : "",
                geti(data, "write_blocking", NULL) ? "write-blocking" : "background");
    if (strcmp(n, "migration") == 0 && json_object_object_get_ex(data, "status", &st)) {
        const char *s = json_object_get_string(st);
        if (strcmp(s, "completed") == 0 || strcmp(s, "failed") == 0 ||
            strcmp(s, "cancelled") == 0 || strcmp(s, "unknown") == 0) {
            f->final = json_object_get(data);
            f->final_status = json_object_get_string(json_object_object_get(f->final, "status"));
            return true;
        }
    }
    return false;
}

static void report(struct json_object *d)
{
    char a[32], b[32];
    struct json_object *x;
    /* (Why it failed is said once, on stderr: say_end.) */
    printf("Migration %s\n", json_object_get_string(json_object_object_get(d, "status")));
    printf("  total time            %.3f s (setup %llu ms, RAM started at %llu ms)\n",
           (double)geti(d, "total_ms", NULL) / 1000.0,
           (unsigned long long)geti(d, "setup_ms", NULL),
           (unsigned long long)geti(d, "ram_start_ms", NULL));
    printf("  downtime (source)     %llu ms (expected %llu ms; pause: RAM %llu, disk %llu, "
           "state %llu, resume %llu ms)\n",
           (unsigned long long)geti(d, "downtime_ms", NULL),
           (unsigned long long)geti(d, "expected_downtime_ms", NULL),
           (unsigned long long)geti(d, "pause", "ram_ms"),
           (unsigned long long)geti(d, "pause", "disk_ms"),
           (unsigned long long)geti(d, "pause", "state_ms"),
           (unsigned long long)geti(d, "pause", "resume_ms"));
    if (json_object_object_get_ex(d, "guest_downtime_ms", &x))
        printf("  downtime (guest)      %.2f ms (largest heartbeat gap)\n",
               json_object_get_double(x));
    if (json_object_object_get_ex(d, "resumed_ms", &x)) {
        struct json_object *du;
        if (json_object_object_get_ex(d, "durable", &du) && json_object_get_boolean(du))
            printf("  resumed / durable     at %llu ms / %llu ms (the destination's flush: "
                   "%llu ms, after the resume)\n",
                   (unsigned long long)geti(d, "resumed_ms", NULL),
                   (unsigned long long)geti(d, "durable_ms", NULL),
                   (unsigned long long)geti(d, "dest_flush_ms", NULL));
        else
            printf("  resumed / durable     at %llu ms / NOT CONFIRMED (see below)\n",
                   (unsigned long long)geti(d, "resumed_ms", NULL));
    }
    cli_human(geti(d, "ram", "transferred"), a, sizeof a);
    printf("  RAM                   %s sent, %llu normal + %llu zero pages, %llu rounds, "
           "dirty rate %llu KiB/s\n",
           a, (unsigned long long)geti(d, "ram", "normal_pages"),
           (unsigned long long)geti(d, "ram", "zero_pages"),
           (unsigned long long)geti(d, "ram", "rounds"),
           (unsigned long long)geti(d, "ram", "dirty_rate") / 1024);
    cli_human(geti(d, "disk", "transferred"), a, sizeof a);
    cli_human(geti(d, "disk", "zero_bytes"), b, sizeof b);
    printf("  disks                 %llu: %s sent, %s zeroed, %llu rounds, %llu mode switches\n",
           (unsigned long long)geti(d, "disk", "disks"), a, b,
           (unsigned long long)geti(d, "disk", "rounds"),
           (unsigned long long)geti(d, "disk", "mode_switches"));
    printf("  throttle (max)        %llu %%\n", (unsigned long long)geti(d, "throttle_max", NULL));
    if (json_object_object_get_ex(d, "verified", &x) && json_object_get_boolean(x))
        printf("  verified              RAM and disks identical (digests: source %llu ms, "
               "destination %llu ms, not in the downtime)\n",
               (unsigned long long)geti(d, "source_digest_ms", NULL),
               (unsigned long long)geti(d, "dest_digest_ms", NULL));
}

/* Whether a completed migration's destination confirmed its disks durable (a report without
 * the field comes from a migration without that step). */
static bool durable(struct json_object *d)
{
    struct json_object *x;
    return !json_object_object_get_ex(d, "durable", &x) || json_object_get_boolean(x);
}

/* A migration that did not complete: its recorded reason, once, on stderr. */
static void say_end(const char *status, struct json_object *d)
{
    struct json_object *x;
    const char *why = json_object_object_get_ex(d, "error", &x) ? json_object_get_string(x)
                                                                : "(no reason recorded)";
    if (strcmp(status, "cancelled") == 0)
        bm_error("migration cancelled; the VM keeps running on the source");
    else if (strcmp(status, "unknown") == 0)
        bm_error("migration: %s", why);
    else if (strcmp(status, "completed") != 0)
        bm_error("migration %s: %s", status, why);
    else if (!durable(d))
        bm_warn("migration completed, but %s",
                json_object_object_get_ex(d, "durable_error", &x) ? json_object_get_string(x)
                                                                  : "durability is unknown");
}

int cmd_migrate(int argc, char **argv)
{
    enum { O_DISK = 256, O_LIMIT, O_BW, O_VERIFY, O_COMPRESS, O_ORDER, O_MAXT, O_PEER, O_CONNS,
           O_JSON, O_NOPROG };
    static const struct option opts[] = {
        {"with-disk", no_argument, NULL, O_DISK},
        {"downtime-limit", required_argument, NULL, O_LIMIT},
        {"max-bandwidth", required_argument, NULL, O_BW},
        {"verify", no_argument, NULL, O_VERIFY},
        {"compress", no_argument, NULL, O_COMPRESS},
        {"order", required_argument, NULL, O_ORDER},
        {"max-time", required_argument, NULL, O_MAXT},
        {"peer-timeout", required_argument, NULL, O_PEER},
        {"connections", required_argument, NULL, O_CONNS},
        {"json", no_argument, NULL, O_JSON},
        {"no-progress", no_argument, NULL, O_NOPROG},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bm_log_set_prefix("blkmig migrate");
    struct json_object *args = json_object_new_object();
    struct follow f = {.progress = true, .tty = isatty(STDERR_FILENO)};
    uint64_t v;
    int c, rc = 2;
    optind = 1;
#define ARG(k, val) json_object_object_add(args, k, val)
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            usage(stdout);
            json_object_put(args);
            return 0;
        case O_DISK:
            ARG("with_disk", json_object_new_boolean(true));
            break;
        case O_VERIFY:
            ARG("verify", json_object_new_boolean(true));
            break;
        case O_COMPRESS:
            ARG("compress", json_object_new_boolean(true));
            break;
        case O_LIMIT:
            if (bm_parse_u64(optarg, 1, 600000, &v) < 0) {
                bm_error("--downtime-limit %s: milliseconds, 1-600000", optarg);
                goto out;
            }
            ARG("downtime_limit_ms", json_object_new_int64((int64_t)v));
            break;
        case O_BW:
            if (cli_parse_rate(optarg, &v) < 0 || v < 65536) {
                bm_error("--max-bandwidth %s: a rate of at least 64K (e.g. 100M)", optarg);
                goto out;
            }
            ARG("max_bandwidth", json_object_new_int64((int64_t)v));
            break;
        case O_ORDER:
            if (strcmp(optarg, "joint") != 0 && strcmp(optarg, "disk-first") != 0) {
                bm_error("--order %s: joint or disk-first", optarg);
                goto out;
            }
            ARG("order", json_object_new_string(optarg));
            break;
        case O_MAXT:
            if (bm_parse_u64(optarg, 1, 86400, &v) < 0) {
                bm_error("--max-time %s: seconds, 1-86400", optarg);
                goto out;
            }
            ARG("max_time_s", json_object_new_int64((int64_t)v));
            break;
        case O_PEER:
            if (bm_parse_u64(optarg, 100, 600000, &v) < 0) {
                bm_error("--peer-timeout %s: milliseconds, 100-600000", optarg);
                goto out;
            }
            ARG("peer_timeout_ms", json_object_new_int64((int64_t)v));
            break;
        case O_CONNS:
            if (bm_parse_u64(optarg, 1, 16, &v) < 0) {
                bm_error("--connections %s: 1-16", optarg);
                goto out;
            }
            ARG("connections", json_object_new_int64((int64_t)v));
            break;
        case O_JSON:
            f.json = true;
            f.progress = false;
            break;
        case O_NOPROG:
            f.progress = false;
            break;
        default:
            usage(stderr);
            goto out;
        }
    }
    if (argc - optind != 2) {
        bm_error("expected SOCKET and tcp:HOST:PORT");
        usage(stderr);
        goto out;
    }
    struct mig_params check;
    if (mig_parse_uri(argv[optind + 1], &check) < 0) {
        bm_error("%s: expected tcp:HOST:PORT", argv[optind + 1]);
        goto out;
    }
    ARG("uri", json_object_new_string(argv[optind + 1]));
#undef ARG
    char err[512];
    struct json_object *reply =
        bm_control_call_follow(argv[optind], "migrate", args, -1, on_event, &f, err, sizeof err);
    rc = 1;
    if (!reply) {
        bm_error("%s", err);
        goto out;
    }
    struct json_object *e;
    if (json_object_object_get_ex(reply, "error", &e)) {
        struct json_object *d;
        json_object_object_get_ex(e, "desc", &d);
        bm_error("the VM refused: %s", json_object_get_string(d));
        json_object_put(reply);
        goto out;
    }
    json_object_put(reply);
    if (f.progress && f.tty)
        fprintf(stderr, "\n");
    if (!f.final)
        goto out;
    if (f.json) {
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "report", json_object_get(f.final));
        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        json_object_put(o);
    } else {
        report(f.final);
    }
    fflush(stdout); /* the report first, then why it failed */
    say_end(f.final_status, f.final);
    rc = strcmp(f.final_status, "completed") == 0   ? (durable(f.final) ? 0 : 5)
         : strcmp(f.final_status, "cancelled") == 0 ? 3
         : strcmp(f.final_status, "unknown") == 0   ? 4
                                                    : 1;
    json_object_put(f.final);
out:
    json_object_put(args);
    return rc;
}
