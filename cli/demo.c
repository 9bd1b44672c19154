/* demo.c: `blkmig demo`, a whole live migration with disks between two local "hosts". */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/vmproc.h"
#include "common/control.h"
#include "common/log.h"
#include "common/parse.h"
#include "vm/kvm/kvm.h"

extern char **environ;

struct demo {
    char self[PATH_MAX];
    char dir[64], ns[2][32];
    bool netns, keep;
    bool kvm;          /* the KVM micro-VM with the test guest, not the synthetic guest */
    bool kvm_auto;     /* ... chosen by default (where it can run), not by --kvm */
    const char *guest; /* --guest ELF (NULL: the installed test guest) */
    const char *addr_src, *addr_dst;
    pid_t src, dst;
};

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: blkmig demo [--ram SIZE] [--disk-size SIZE] [--disk-fill SIZE]\n"
            "                   [--workload SPEC] [--rate RATE] [--loopback] [--keep] [--json]\n"
            "                   [--kvm [--guest ELF] | --synthetic]\n"
            "\n"
            "Make two local hosts (network namespaces joined by veth when run as root, plain\n"
            "loopback otherwise), start `blkmig incoming` on one and a guest with a\n"
            "disk on the other, migrate it live with --with-disk --verify, check the guest on\n"
            "the destination, print the report, and clean everything up.\n"
            "\n"
            "The guest is the test guest in the KVM micro-VM where KVM works (falling back to\n"
            "the synthetic guest, with a warning, if it does not start), else the synthetic guest.\n"
            "  --kvm             the KVM micro-VM, or fail (needs /dev/kvm; RAM up to 3G, a\n"
            "                    multiple of 2M; the consoles go to the folder's *-console.log)\n"
            "  --synthetic       the synthetic guest even where KVM works\n"
            "  --guest ELF       the guest for the micro-VM (default: the installed test guest)\n"
            "  --ram SIZE        guest RAM (default 512M; half of it filled at boot)\n"
            "  --disk-size SIZE  the guest's disk (default 2G)\n"
            "  --disk-fill SIZE  data written to the disk at boot (default 1G)\n"
            "  --workload SPEC   what the guest does while migrating\n"
            "                    (default mem=32M/s,hot=128M,disk=8M/s; see blkmig run --help)\n"
            "  --rate RATE       shape the link with tc tbf (e.g. 1gbit; namespaces only)\n"
            "  --loopback        do not make namespaces even as root\n"
            "  --keep            keep the temporary folder with the images and logs\n"
            "  --json            the migration's events and report as JSON lines\n"
            "  -h, --help        show this help\n");
}

/* Run a command, wait, return its exit status (or -1). Output goes where ours goes, or nowhere. */
static int run(bool quiet, char *const argv[])
{
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    if (quiet) {
        posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
        posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    }
    pid_t pid;
    int r = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (r != 0)
        return -1;
    int st;
    if (waitpid(pid, &st, 0) < 0)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

#define RUN(quiet, ...) run(quiet, (char *const[]){__VA_ARGS__, NULL})

static void netns_down(struct demo *d)
{
    for (int i = 0; i < 2; i++)
        if (d->ns[i][0])
            RUN(true, "ip", "netns", "del", d->ns[i]);
}

static int netns_up(struct demo *d, char *rate)
{
    int id = (int)(getpid() % 100000);
    snprintf(d->ns[0], sizeof d->ns[0], "bmdemo%dA", id);
    snprintf(d->ns[1], sizeof d->ns[1], "bmdemo%dB", id);
    char *dev[2] = {"veth-A", "veth-B"}, *addr[2] = {"10.78.0.1/24", "10.78.0.2/24"};
    for (int i = 0; i < 2; i++)
        if (RUN(false, "ip", "netns", "add", d->ns[i]) != 0 ||
            RUN(false, "ip", "-n", d->ns[i], "link", "set", "lo", "up") != 0)
            return -1;
    if (RUN(false, "ip", "link", "add", "bmdemo-veth", "netns", d->ns[0], "type", "veth",
            "peer", "name", "veth-B", "netns", d->ns[1]) != 0 ||
        RUN(false, "ip", "-n", d->ns[0], "link", "set", "bmdemo-veth", "name", "veth-A") != 0)
        return -1;
    for (int i = 0; i < 2; i++) {
        if (RUN(false, "ip", "-n", d->ns[i], "addr", "add", addr[i], "dev", dev[i]) != 0 ||
            RUN(false, "ip", "-n", d->ns[i], "link", "set", dev[i], "up") != 0)
            return -1;
        if (rate && RUN(false, "ip", "netns", "exec", d->ns[i], "tc", "qdisc", "replace", "dev",
                        dev[i], "root", "tbf", "rate", rate, "burst", "1mb", "latency",
                        "50ms") != 0)
            return -1;
    }
    d->addr_src = "10.78.0.1";
    d->addr_dst = "10.78.0.2";
    /* Wait for the veth carrier (it comes up asynchronously). */
    for (int i = 0; i < 50; i++) {
        char cmd[160];
        snprintf(cmd, sizeof cmd,
                 "ip -n %s link show veth-A | grep -q LOWER_UP && "
                 "ip -n %s link show veth-B | grep -q LOWER_UP",
                 d->ns[0], d->ns[1]);
        if (RUN(true, "sh", "-c", cmd) == 0)
            break;
        struct timespec t = {0, 100000000};
        nanosleep(&t, NULL);
    }
    return 0;
}

/* Start ourselves with args (inside host h's namespace when there are namespaces), output to
 * log. */
static pid_t start_self(struct demo *d, int h, const char *log, char **args)
{
    char *argv[32];
    int n = 0;
    if (d->netns) {
        argv[n++] = "ip";
        argv[n++] = "netns";
        argv[n++] = "exec";
        argv[n++] = d->ns[h];
    }
    argv[n++] = d->self;
    for (int i = 0; args[i] && n < 31; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    /* The demo ignores SIGINT/SIGTERM (it must clean up); its children must not. */
    posix_spawnattr_t at;
    posix_spawnattr_init(&at);
    sigset_t def;
    sigemptyset(&def);
    sigaddset(&def, SIGINT);
    sigaddset(&def, SIGTERM);
    posix_spawnattr_setsigdefault(&at, &def);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGDEF);
    pid_t pid;
    int r = posix_spawnp(&pid, argv[0], &fa, &at, argv, environ);
    posix_spawnattr_destroy(&at);
    posix_spawn_file_actions_destroy(&fa);
    return r == 0 ? pid : -1;
}

static bool wait_socket(const char *path, pid_t pid)
{
    for (int i = 0; i < 600; i++) {
        struct stat sb;
        if (stat(path, &sb) == 0 && S_ISSOCK(sb.st_mode))
            return true;
        if (waitpid(pid, NULL, WNOHANG) == pid)
            return false;
        struct timespec t = {0, 50000000};
        nanosleep(&t, NULL);
    }
    return false;
}

/* Wait up to timeout_ms for a child to end (it may take a while after the event that ends it:
 * the VM process lingers for its clients, then tears its VM down). Returns its wait status, or
 * -1 if it is still there (*pid unchanged); *pid = 0 once reaped. */
#define SOURCE_EXIT_WAIT_MS 30000
static int wait_exit(pid_t *pid, unsigned timeout_ms)
{
    for (unsigned waited = 0; *pid > 0; waited += 50) {
        int st = 0;
        pid_t r = waitpid(*pid, &st, WNOHANG);
        if (r == *pid) {
            *pid = 0;
            return st;
        }
        if ((r < 0 && errno != EINTR) || waited >= timeout_ms)
            return -1;
        struct timespec t = {0, 50000000};
        nanosleep(&t, NULL);
    }
    return -1;
}

static void stop_child(pid_t *pid)
{
    if (*pid <= 0)
        return;
    kill(*pid, SIGTERM);
    if (wait_exit(pid, 5000) >= 0)
        return;
    kill(*pid, SIGKILL);
    waitpid(*pid, NULL, 0);
    *pid = 0;
}

static int64_t query_i(const char *sock, const char *cmd, const char *k1, const char *k2)
{
    char err[256];
    struct json_object *r = bm_control_call(sock, cmd, NULL, -1, err, sizeof err), *x;
    int64_t v = -1;
    if (r && json_object_object_get_ex(r, "return", &x) && json_object_object_get_ex(x, k1, &x) &&
        (!k2 || json_object_object_get_ex(x, k2, &x)))
        v = json_object_get_int64(x);
    json_object_put(r);
    return v;
}

static void dump_log(const char *what, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    fprintf(stderr, "---- %s (%s) ----\n", what, path);
    char line[1024];
    while (fgets(line, sizeof line, f))
        fputs(line, stderr);
    fclose(f);
}

/* On loopback: a port P with P and P + 1 (the NBD port) both free just now. */
static int free_port_pair(void)
{
    for (int tries = 0; tries < 50; tries++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof a;
        if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 ||
            getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
            if (fd >= 0)
                close(fd);
            return -1;
        }
        int port = ntohs(a.sin_port);
        int fd2 = socket(AF_INET, SOCK_STREAM, 0);
        a.sin_port = htons((uint16_t)(port + 1));
        bool ok = port < 65535 && fd2 >= 0 && bind(fd2, (struct sockaddr *)&a, sizeof a) == 0;
        close(fd);
        if (fd2 >= 0)
            close(fd2);
        if (ok)
            return port;
    }
    return -1;
}

/* Boot the guest on the source and wait for its first heartbeat (the test guest reports them
 * once its first-boot fill is done). A KVM guest chosen by default that does not get there is
 * replaced by the synthetic guest, with a warning; one asked for with --kvm is a failure. */
static int start_source(struct demo *d, const char *ram, const char *disk_size,
                        const char *disk_fill, const char *workload, char *wl, char *disk,
                        const char *img, const char *src_sock, const char *slog)
{
    for (;;) {
        printf("blkmig demo: booting the %s: %s RAM, disk %s (%s written), workload %s\n",
               d->kvm ? "test guest in the KVM micro-VM" : "synthetic guest", ram, disk_size,
               disk_fill, workload);
        fflush(stdout);
        char scon[128];
        snprintf(scon, sizeof scon, "%s/source-console.log", d->dir);
        char *rargv[16] = {"run",        d->kvm ? "--kvm" : "--synthetic",
                           "--ram",      (char *)ram,
                           "--disk",     disk,
                           "--workload", wl,
                           "--control",  (char *)src_sock};
        int ra = 10;
        if (d->kvm) {
            rargv[ra++] = "--console";
            rargv[ra++] = scon;
            if (d->guest) {
                rargv[ra++] = "--guest";
                rargv[ra++] = (char *)d->guest;
            }
        }
        rargv[ra] = NULL;
        d->src = start_self(d, 0, slog, rargv);
        int64_t hb = 0;
        if (d->src > 0 && wait_socket(src_sock, d->src)) {
            for (int i = 0; i < 1200; i++) {
                if ((hb = query_i(src_sock, "query-status", "guest", "hb_count")) > 0)
                    return 0;
                if (waitpid(d->src, NULL, WNOHANG) == d->src) {
                    d->src = 0;
                    break;
                }
                struct timespec poll = {0, 100000000};
                nanosleep(&poll, NULL);
            }
        }
        bm_error("the %s did not start its workload (within 120 s)",
                 d->kvm ? "KVM guest" : "synthetic guest");
        dump_log("source", slog);
        if (d->kvm)
            dump_log("source console (last lines above are the guest's)", scon);
        stop_child(&d->src);
        if (!d->kvm || !d->kvm_auto)
            return -1;
        bm_warn("falling back to the synthetic guest (--kvm insists on the KVM guest, "
                "--synthetic skips it)");
        d->kvm = false;
        unlink(img);
        unlink(src_sock);
    }
}

static int demo_main(struct demo *d, const char *ram, const char *disk_size,
                     const char *disk_fill, const char *workload, bool json)
{
    char src_sock[128], dst_sock[128], img[128], ddir[128], wl[512], disk[256], listen[64],
        uri[64], slog[128], dlog[128];
    snprintf(src_sock, sizeof src_sock, "%s/source.sock", d->dir);
    snprintf(dst_sock, sizeof dst_sock, "%s/destination.sock", d->dir);
    snprintf(img, sizeof img, "%s/source/vda.img", d->dir);
    snprintf(ddir, sizeof ddir, "%s/destination", d->dir);
    snprintf(slog, sizeof slog, "%s/source.log", d->dir);
    snprintf(dlog, sizeof dlog, "%s/destination.log", d->dir);
    uint64_t ramb = 0;
    bm_parse_size(ram, &ramb);
    snprintf(wl, sizeof wl, "%s,ram-fill=%llu,disk-fill=%s", workload,
             (unsigned long long)ramb / 2, disk_fill);
    snprintf(disk, sizeof disk, "vda=%s,size=%s", img, disk_size);
    int port = d->netns ? 7700 : free_port_pair();
    if (port < 0) {
        bm_error("no free pair of TCP ports on loopback");
        return 1;
    }
    snprintf(listen, sizeof listen, "%s:%d", d->addr_dst, port);
    snprintf(uri, sizeof uri, "tcp:%s:%d", d->addr_dst, port);
    char sdir[128];
    snprintf(sdir, sizeof sdir, "%s/source", d->dir);
    if (mkdir(sdir, 0700) < 0 || mkdir(ddir, 0700) < 0) {
        bm_error("cannot make the host folders in %s: %s", d->dir, strerror(errno));
        return 1;
    }
    printf("blkmig demo: two hosts: %s (source, %s) and %s (destination, %s); files in %s\n",
           d->netns ? d->ns[0] : "loopback", d->addr_src, d->netns ? d->ns[1] : "loopback",
           d->addr_dst, d->dir);
    if (d->kvm) { /* where `blkmig incoming` puts the console of the VM it receives */
        char dcon[128];
        snprintf(dcon, sizeof dcon, "%s/destination-console.log", d->dir);
        setenv("BLKMIG_CONSOLE", dcon, 1);
    }
    d->dst = start_self(d, 1, dlog,
                        (char *[]){"incoming", "--listen", listen, "--disk-dir", ddir,
                                   "--control", dst_sock, NULL});
    if (d->dst < 0) {
        bm_error("the destination did not start");
        return 1;
    }
    if (start_source(d, ram, disk_size, disk_fill, workload, wl, disk, img, src_sock, slog) < 0)
        return 1;
    struct timespec warm = {1, 0};
    nanosleep(&warm, NULL);
    printf("blkmig demo: guest running (%lld heartbeats so far); migrating with its disk\n",
           (long long)query_i(src_sock, "query-status", "guest", "hb_count"));
    fflush(stdout);
    char *margv[] = {d->self, "migrate", "--with-disk", "--verify", json ? "--json" : NULL,
                     src_sock, uri, NULL};
    if (!json) {
        margv[4] = src_sock;
        margv[5] = uri;
        margv[6] = NULL;
    }
    int rc = run(false, margv);
    if (rc != 0) {
        bm_error("the migration did not complete (exit %d); the logs:", rc);
        dump_log("source", slog);
        dump_log("destination", dlog);
        return 1;
    }
    if (!wait_socket(dst_sock, d->dst)) {
        bm_error("the destination does not run the VM");
        dump_log("destination", dlog);
        return 1;
    }
    /* The heartbeat must move on: within 0.5 s for the synthetic guest; the test guest's count
     * comes with its status lines (every 100 ms once it has caught up), so allow it up to 10 s. */
    int64_t hb0 = query_i(dst_sock, "query-status", "guest", "hb_count"), hb1 = hb0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    double waited = 0;
    do {
        struct timespec t = {0, d->kvm ? 100000000 : 500000000};
        nanosleep(&t, NULL);
        hb1 = query_i(dst_sock, "query-status", "guest", "hb_count");
        clock_gettime(CLOCK_MONOTONIC, &t1);
        waited = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    } while (d->kvm && hb1 <= hb0 && waited < 10);
    int64_t errors = query_i(dst_sock, "query-status", "guest", "errors");
    int64_t bad = query_i(dst_sock, "guest-check", "mismatches", NULL);
    /* The source ends by itself once the destination runs the VM, whatever the guest. */
    int src_status = wait_exit(&d->src, SOURCE_EXIT_WAIT_MS);
    char src_end[96];
    if (src_status < 0)
        snprintf(src_end, sizeof src_end, "is still there %u s later (!)",
                 SOURCE_EXIT_WAIT_MS / 1000);
    else if (WIFEXITED(src_status) && WEXITSTATUS(src_status) == 0)
        snprintf(src_end, sizeof src_end, "has exited");
    else if (WIFEXITED(src_status))
        snprintf(src_end, sizeof src_end, "has exited with status %d (!)", WEXITSTATUS(src_status));
    else
        snprintf(src_end, sizeof src_end, "was killed by signal %d (!)",
                 WIFSIGNALED(src_status) ? WTERMSIG(src_status) : 0);
    printf("blkmig demo: on the destination the guest runs (%lld heartbeats in %.1f s), "
           "self-check errors %lld, full check mismatches %lld; the source process %s\n",
           (long long)(hb1 - hb0), waited, (long long)errors, (long long)bad, src_end);
    RUN(true, d->self, "control", dst_sock, "quit");
    bool ok = hb1 > hb0 && errors == 0 && bad == 0 && src_status >= 0 && WIFEXITED(src_status) &&
              WEXITSTATUS(src_status) == 0;
    printf("blkmig demo: %s\n", ok ? "success" : "FAILED");
    return ok ? 0 : 1;
}

int cmd_demo(int argc, char **argv)
{
    enum {
        O_RAM = 256,
        O_DSIZE,
        O_DFILL,
        O_WL,
        O_RATE,
        O_LOOP,
        O_KEEP,
        O_JSON,
        O_KVM,
        O_SYNTH,
        O_GUEST
    };
    static const struct option opts[] = {
        {"ram", required_argument, NULL, O_RAM},
        {"disk-size", required_argument, NULL, O_DSIZE},
        {"disk-fill", required_argument, NULL, O_DFILL},
        {"workload", required_argument, NULL, O_WL},
        {"rate", required_argument, NULL, O_RATE},
        {"loopback", no_argument, NULL, O_LOOP},
        {"keep", no_argument, NULL, O_KEEP},
        {"json", no_argument, NULL, O_JSON},
        {"kvm", no_argument, NULL, O_KVM},
        {"synthetic", no_argument, NULL, O_SYNTH},
        {"guest", required_argument, NULL, O_GUEST},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bm_log_set_prefix("blkmig demo");
    const char *ram = "512M", *dsize = "2G", *dfill = "1G",
               *wl = "mem=32M/s,hot=128M,disk=8M/s";
    char *rate = NULL;
    bool loop = false, json = false, synthetic = false;
    struct demo d = {0};
    uint64_t v;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            usage(stdout);
            return 0;
        case O_RAM:
        case O_DSIZE:
        case O_DFILL:
            if (bm_parse_size(optarg, &v) < 0 || v % 4096) {
                bm_error("%s: a size, a multiple of 4 KiB", optarg);
                return 2;
            }
            *(c == O_RAM ? &ram : c == O_DSIZE ? &dsize : &dfill) = optarg;
            break;
        case O_WL: {
            struct synth_workload w;
            char err[256];
            synth_workload_default(&w);
            if (synth_workload_parse(optarg, &w, err, sizeof err) < 0) {
                bm_error("%s", err);
                return 2;
            }
            wl = optarg;
            break;
        }
        case O_RATE:
            rate = optarg;
            break;
        case O_LOOP:
            loop = true;
            break;
        case O_KEEP:
            d.keep = true;
            break;
        case O_JSON:
            json = true;
            break;
        case O_KVM:
            d.kvm = true;
            break;
        case O_SYNTH:
            synthetic = true;
            break;
        case O_GUEST:
            d.guest = optarg;
            break;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        bm_error("unexpected argument '%s'", argv[optind]);
        return 2;
    }
    if (synthetic && (d.kvm || d.guest)) {
        bm_error("--synthetic with %s", d.kvm ? "--kvm" : "--guest");
        return 2;
    }
    char why[256] = "";
    uint64_t ramv = 0;
    bm_parse_size(ram, &ramv);
    if (d.kvm) {
        /* Say now, not after the hosts are made, what stops the KVM guest here. */
        if (kvm_check_shape(ramv, 1, why, sizeof why) < 0) {
            bm_error("--kvm: --ram %s: %s", ram, why);
            return 2;
        }
        if (kvm_fits(ramv, 1, d.guest, why, sizeof why) < 0) {
            bm_error("--kvm: %s (without KVM, leave out --kvm: the synthetic guest)", why);
            return 1;
        }
    } else if (!synthetic) {
        /* The default: the KVM micro-VM where it can run this VM, else the synthetic guest. */
        if (kvm_fits(ramv, 1, d.guest, why, sizeof why) == 0) {
            d.kvm = d.kvm_auto = true;
        } else if (d.guest) {
            bm_error("--guest %s: the KVM micro-VM cannot run here: %s", d.guest, why);
            return 1;
        }
    }
    ssize_t n = readlink("/proc/self/exe", d.self, sizeof d.self - 1);
    if (n <= 0) {
        bm_error("cannot find my own binary: %s", strerror(errno));
        return 1;
    }
    d.self[n] = '\0';
    snprintf(d.dir, sizeof d.dir, "/var/tmp/blkmig-demo.XXXXXX");
    if (!mkdtemp(d.dir)) {
        bm_error("cannot make a folder under /var/tmp: %s", strerror(errno));
        return 1;
    }
    d.addr_src = d.addr_dst = "127.0.0.1";
    if (!loop && geteuid() == 0 && RUN(true, "ip", "netns", "list") == 0) {
        if (netns_up(&d, rate) == 0) {
            d.netns = true;
        } else {
            bm_warn("could not make network namespaces; using loopback%s",
                    rate ? " (--rate is ignored: loopback cannot be shaped)" : "");
            netns_down(&d);
            d.ns[0][0] = d.ns[1][0] = '\0';
            d.addr_src = d.addr_dst = "127.0.0.1";
        }
    } else if (rate) {
        bm_warn("--rate needs network namespaces (root): the link is not shaped");
    }
    /* Signals: clean up rather than leave namespaces and processes behind. */
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    if (!d.kvm && !synthetic)
        printf("blkmig demo: the synthetic guest (not the KVM micro-VM: %s)\n", why);
    int rc = demo_main(&d, ram, dsize, dfill, wl, json);
    stop_child(&d.src);
    stop_child(&d.dst);
    netns_down(&d);
    if (d.keep) {
        printf("blkmig demo: kept %s\n", d.dir);
    } else {
        RUN(true, "rm", "-rf", "--", d.dir);
    }
    return rc;
}
