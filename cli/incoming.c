/* incoming.c: `blkmig incoming`, the destination of a migration; then the VM process. */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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
            "Usage: blkmig incoming --listen ADDR:PORT [--nbd-port N]\n"
            "                       (--disk-dir DIR | --disk NAME=PATH ...) [--force]\n"
            "                       [--max-ram SIZE] [--max-disk SIZE]\n"
            "                       [--qemu-binary PATH] [--run-dir DIR]\n"
            "                       --control SOCKET [--json] [--peer-timeout MS]\n"
            "                       [--accept-timeout S] [--log-level LEVEL]\n"
            "\n"
            "Wait for one migration from a `blkmig run` process, receive the VM (its disks\n"
            "over NBD into new sparse local images, its RAM and state over the migration\n"
            "stream), resume it, and from then on be the VM process, with its control socket.\n"
            "\n"
            "  --listen ADDR:PORT   where the source connects (ADDR may be empty: all)\n"
            "  --nbd-port N         where the disks are served during the migration\n"
            "                       (default PORT + 1); export names are secret, per migration\n"
            "  --disk-dir DIR       with --with-disk, create DIR/NAME.img for each disk\n"
            "  --disk NAME=PATH     the image for disk NAME (repeatable; wins over --disk-dir);\n"
            "                       without --with-disk only these images are opened\n"
            "  --force              replace existing images once the migration has completed\n"
            "  --max-ram SIZE       refuse a VM with more RAM than SIZE (e.g. 8G; default:\n"
            "                       the memory available when the source connects)\n"
            "  --max-disk SIZE      refuse disks larger than SIZE in all (default: the free\n"
            "                       space of the file system each new image goes to)\n"
            "  --qemu-binary PATH   a QEMU VM: the QEMU to run here (default: the source's\n"
            "                       binary name, which must be qemu-system-*, looked up in\n"
            "                       PATH); its version must be the source's\n"
            "  --run-dir DIR        a QEMU VM: where its QMP socket and the chardev sockets\n"
            "                       and files of its command line go (created if absent;\n"
            "                       default: a new directory in /tmp)\n"
            "  --control SOCKET     the VM's control socket once it runs here\n"
            "  --json               once the VM runs here, print its events as JSON lines\n"
            "  --peer-timeout MS    silence that counts as a lost source (default 10000)\n"
            "  --accept-timeout S   give up if no source connects in time (default: wait)\n"
            "  --log-level LEVEL    error, warn, info or debug (default warn)\n"
            "  -h, --help           show this help\n"
            "Exit status: as `blkmig run` once the VM runs here; 1 if the migration failed\n"
            "(everything received is discarded), 2 for usage errors.\n");
}

static void on_listening(void *opaque)
{
    const char *where = opaque;
    bm_info("waiting for a migration on %s", where);
    fprintf(stderr, "blkmig incoming: listening on %s\n", where);
}

static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int sig)
{
    stop_requested = sig;
}

/* From COMPLETE on, giving up cleanly is no longer possible: SIGINT and SIGTERM end the
 * process at once again (the source, seeing the connection close before RESUMED, resumes its
 * VM), and one that came meanwhile does so now. */
static void at_complete(void *opaque)
{
    (void)opaque;
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    if (stop_requested)
        raise((int)stop_requested);
}

int cmd_incoming(int argc, char **argv)
{
    enum { O_LISTEN = 256, O_NBD, O_DIR, O_DISK, O_FORCE, O_CONTROL, O_JSON, O_PEER, O_ACCEPT,
           O_LOG, O_MAX_RAM, O_MAX_DISK, O_QEMU_BIN, O_RUN_DIR };
    static const struct option opts[] = {
        {"listen", required_argument, NULL, O_LISTEN},
        {"nbd-port", required_argument, NULL, O_NBD},
        {"disk-dir", required_argument, NULL, O_DIR},
        {"disk", required_argument, NULL, O_DISK},
        {"force", no_argument, NULL, O_FORCE},
        {"max-ram", required_argument, NULL, O_MAX_RAM},
        {"max-disk", required_argument, NULL, O_MAX_DISK},
        {"qemu-binary", required_argument, NULL, O_QEMU_BIN},
        {"run-dir", required_argument, NULL, O_RUN_DIR},
        {"control", required_argument, NULL, O_CONTROL},
        {"json", no_argument, NULL, O_JSON},
        {"peer-timeout", required_argument, NULL, O_PEER},
        {"accept-timeout", required_argument, NULL, O_ACCEPT},
        {"log-level", required_argument, NULL, O_LOG},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bm_log_set_prefix("blkmig incoming");
    static struct mig_disk_map map[VM_MAX_DISKS];
    struct mig_incoming_opts o = {.peer_timeout_ms = 10000, .factory = vmproc_factory,
                                  .map = map};
    const char *listen = NULL, *control = NULL;
    bool json = false;
    char host[256] = "", port[16] = "", nbd_port[16] = "";
    uint64_t v;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            usage(stdout);
            return 0;
        case O_LISTEN:
            listen = optarg;
            break;
        case O_QEMU_BIN:
            o.qemu_binary = optarg;
            break;
        case O_RUN_DIR:
            o.run_dir = optarg;
            break;
        case O_NBD:
            if (bm_parse_u64(optarg, 1, 65535, &v) < 0) {
                bm_error("--nbd-port %s: a port number 1-65535", optarg);
                return 2;
            }
            snprintf(nbd_port, sizeof nbd_port, "%llu", (unsigned long long)v);
            break;
        case O_DIR:
            o.disk_dir = optarg;
            break;
        case O_DISK: {
            const char *eq = strchr(optarg, '=');
            if (o.nmap == VM_MAX_DISKS || !eq || (size_t)(eq - optarg) >= VM_DISK_NAME_MAX ||
                !eq[1] || strlen(eq + 1) >= sizeof map[0].path) {
                bm_error("--disk %s: expected NAME=PATH (at most %d disks)", optarg,
                         VM_MAX_DISKS);
                return 2;
            }
            memcpy(map[o.nmap].name, optarg, (size_t)(eq - optarg));
            map[o.nmap].name[eq - optarg] = '\0';
            if (!vm_disk_name_ok(map[o.nmap].name)) {
                bm_error("--disk %s: NAME is 1-31 of [a-z0-9_-]", optarg);
                return 2;
            }
            snprintf(map[o.nmap].path, sizeof map[o.nmap].path, "%s", eq + 1);
            o.nmap++;
            break;
        }
        case O_FORCE:
            o.force = true;
            break;
        case O_MAX_RAM:
        case O_MAX_DISK:
            if (bm_parse_size(optarg, &v) < 0 || v == 0) {
                bm_error("--%s %s: a size such as 512M or 8G", c == O_MAX_RAM ? "max-ram" : "max-disk",
                         optarg);
                return 2;
            }
            if (c == O_MAX_RAM)
                o.max_ram = v;
            else
                o.max_disk = v;
            break;
        case O_CONTROL:
            control = optarg;
            break;
        case O_JSON:
            json = true;
            break;
        case O_PEER:
            if (bm_parse_u64(optarg, 100, 600000, &v) < 0) {
                bm_error("--peer-timeout %s: milliseconds, 100-600000", optarg);
                return 2;
            }
            o.peer_timeout_ms = (unsigned)v;
            break;
        case O_ACCEPT:
            if (bm_parse_u64(optarg, 1, 86400, &v) < 0) {
                bm_error("--accept-timeout %s: seconds, 1-86400", optarg);
                return 2;
            }
            o.accept_timeout_s = (unsigned)v;
            break;
        case O_LOG:
            if (cli_set_log_level(optarg) < 0)
                return 2;
            break;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc || !listen || !control || (!o.disk_dir && o.nmap == 0)) {
        if (optind != argc)
            bm_error("unexpected argument '%s'", argv[optind]);
        else
            bm_error("--listen, --control and --disk-dir or --disk are required");
        usage(stderr);
        return 2;
    }
    const char *colon = strrchr(listen, ':');
    if (!colon || (size_t)(colon - listen) >= sizeof host ||
        bm_parse_u64(colon + 1, 1, 65535, &v) < 0) {
        bm_error("--listen %s: expected ADDR:PORT", listen);
        return 2;
    }
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = '\0';
    snprintf(port, sizeof port, "%llu", (unsigned long long)v);
    if (!nbd_port[0]) {
        if (v == 65535) {
            bm_error("--listen port 65535: give --nbd-port");
            return 2;
        }
        snprintf(nbd_port, sizeof nbd_port, "%llu", (unsigned long long)v + 1);
    }
    struct stat sb;
    if (o.disk_dir && (stat(o.disk_dir, &sb) < 0 || !S_ISDIR(sb.st_mode))) {
        bm_error("--disk-dir %s: not a directory", o.disk_dir);
        return 2;
    }
    /* The control socket comes up only once the VM runs here, when failing would lose it:
     * reserve the path now (a path another process serves on is refused, never taken). */
    char err[512];
    int claim = bm_control_claim(control, err, sizeof err);
    if (claim < 0) {
        bm_error("--control: %s", err);
        return 2;
    }
    o.host = host[0] ? host : NULL;
    o.port = port;
    o.nbd_port = nbd_port;
    o.listening = on_listening;
    o.opaque = (void *)listen;
    /* Ctrl-C or SIGTERM before the VM runs here: give up cleanly (the source is told, the
     * images this run created are removed). */
    struct sigaction sa = {.sa_handler = on_stop_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    o.stop = &stop_requested;
    o.at_complete = at_complete;
    struct mig_incoming_result res = {0};
    int r = mig_incoming_run(&o, &res, err, sizeof err);
    sa.sa_handler = SIG_DFL; /* from here on the VM process handles them (vmproc_serve) */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (r < 0) {
        bm_error("migration failed: %s; what was received is discarded", err);
        bm_control_release(control, claim);
        return 1;
    }
    fprintf(stderr, "blkmig incoming: the VM runs here now (%s)\n",
            json_object_to_json_string_ext(res.stats, JSON_C_TO_STRING_PLAIN));
    json_object_put(res.stats);
    return vmproc_serve(res.vm, res.disks, res.ndisks, control, claim, json);
}
