/* run.c: `blkmig run`, start a VM (the KVM micro-VM where KVM works, else the synthetic guest)
 * with its disks and a control socket, or take a QEMU VM (launched here or already running). */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/image.h"
#include "cli/vmproc.h"
#include "common/control.h"
#include "common/log.h"
#include "common/parse.h"
#include "vm/kvm/kvm.h"
#include "vm/qemu/cmdline.h"
#include "vm/qemu/qemu.h"

/* How long a launched QEMU has to answer on QMP, and an attach to get the greeting. */
#define QEMU_START_MS  30000
#define QEMU_ATTACH_MS 5000

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: blkmig run [--synthetic | --kvm [--guest ELF] [--console FILE|unix:PATH]\n"
            "                  [--append WORDS]]\n"
            "                  --ram SIZE\n"
            "                  [--disk NAME=PATH[,size=SIZE]]... [--workload SPEC]\n"
            "                  [--format raw] --control SOCKET [--json] [--log-level LEVEL]\n"
            "       blkmig run --qemu --control SOCKET [--run-dir DIR] [--json]\n"
            "                  [--log-level LEVEL] -- QEMU-BINARY QEMU-ARGS...\n"
            "       blkmig run --qemu-attach QMP-SOCKET --control SOCKET [--json]\n"
            "                  [--log-level LEVEL]\n"
            "\n"
            "Run a VM in this process until it quits or migrates away. Where KVM works (and the\n"
            "VM fits: RAM 16M..3G in 2M steps, at most 8 disks) the VM is the KVM micro-VM\n"
            "running the test guest (a PVH ELF) on one vCPU with virtio-mmio disks; elsewhere\n"
            "it is the synthetic guest: its \"vCPU\" dirties RAM, its device writes the disks.\n"
            "Both run the same workload, check every page and block they wrote, continuously,\n"
            "and keep a heartbeat. --kvm or --synthetic chooses.\n"
            "\n"
            "  --ram SIZE             guest RAM (e.g. 1G)\n"
            "  --disk NAME=PATH[,size=SIZE]\n"
            "                         a disk image (created sparse with size= when absent);\n"
            "                         repeat for more disks (at most %d); raw images only,\n"
            "                         locked as QEMU locks them\n"
            "  --format raw           run disks that start like another format (qcow2, vmdk,\n"
            "                         ...) as raw all the same (default: refuse them)\n"
            "  --workload SPEC        KEY=VALUE,... with keys mem=RATE (e.g. 64M/s), hot=SIZE,\n"
            "                         mem-pattern=uniform|hotspot|sequential, disk=RATE,\n"
            "                         disk-pattern=..., io=4K-64K, ram-fill=SIZE, disk-fill=SIZE,\n"
            "                         seed=N\n"
            "  --control SOCKET       the control socket (JSON lines; see blkmig-run(1))\n"
            "  --json                 print events on stdout as JSON lines\n"
            "  --synthetic            the synthetic guest (the default without KVM)\n"
            "  --kvm                  the KVM micro-VM (the default where it can run; needs\n"
            "                         /dev/kvm; RAM up to 3G, a multiple of 2M; at most 8 disks)\n"
            "  --guest ELF            the guest for --kvm (default: the installed test guest)\n"
            "  --console FILE         --kvm: append the guest's console there, one host-\n"
            "                         timestamped line per guest line (default: stderr);\n"
            "                         unix:PATH sends them to the unix socket listening there\n"
            "  --append WORDS         --kvm: words added at the end of the guest's command line\n"
            "                         (e.g. 'blkmig.run=60 blkmig.status_ms=10'; see docs/guest.md)\n"
            "  --qemu                 launch QEMU with the command line after '--' (the user's\n"
            "                         own; blkmig adds -qmp unix:DIR/qmp.sock,server=on,wait=off\n"
            "                         and drops -daemonize) and supervise it: this process ends\n"
            "                         when QEMU does, with QEMU's exit status; quit ends QEMU\n"
            "                         (QMP quit, then SIGTERM, then SIGKILL)\n"
            "  --run-dir DIR          --qemu: where blkmig's QMP socket goes (created if absent;\n"
            "                         default: a new directory in $TMPDIR or /tmp, removed after)\n"
            "  --qemu-attach QMP-SOCKET\n"
            "                         take over a running QEMU started with\n"
            "                         -qmp unix:QMP-SOCKET,server=on,wait=off (QEMU serves one\n"
            "                         client per QMP socket: give blkmig one of its own); its\n"
            "                         disks and state are not changed, and quit leaves it running\n"
            "  --log-level LEVEL      error, warn, info or debug (default warn)\n"
            "  -h, --help             show this help\n"
            "Commands on the socket: query-status, migrate, query-migrate, migrate-cancel,\n"
            "stop, cont, guest-check, x-state-roundtrip (testing), x-query-vcpus (debugging),\n"
            "quit. 'blkmig migrate' drives a migration (not yet of a QEMU VM).\n",
            VM_MAX_DISKS);
}

/* NAME=PATH[,size=SIZE]: open (creating when asked) the image. */
static int open_disk_arg(const char *arg, bool raw_only, struct vm_disk *out)
{
    char buf[4200];
    if (strlen(arg) >= sizeof buf) {
        bm_error("--disk %s: too long", arg);
        return -1;
    }
    strcpy(buf, arg);
    char *eq = strchr(buf, '=');
    if (!eq) {
        bm_error("--disk %s: expected NAME=PATH[,size=SIZE]", arg);
        return -1;
    }
    *eq = '\0';
    char *path = eq + 1, *opt = strstr(path, ",size=");
    uint64_t size = 0;
    if (opt) {
        *opt = '\0';
        if (bm_parse_size(opt + 6, &size) < 0 || size == 0 || size % 4096) {
            bm_error("--disk %s: size must be a positive multiple of 4 KiB", arg);
            return -1;
        }
    }
    if (!vm_disk_name_ok(buf) || !*path) {
        bm_error("--disk %s: NAME is 1-31 of [a-z0-9_-], and PATH must not be empty", arg);
        return -1;
    }
    struct stat sb;
    if (stat(path, &sb) < 0) {
        if (errno != ENOENT || !size) {
            bm_error("--disk %s: %s%s", arg, strerror(errno),
                     errno == ENOENT ? " (add ,size=SIZE to create it)" : "");
            return -1;
        }
        int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0 || ftruncate(fd, (off_t)size) < 0) {
            bm_error("--disk %s: cannot create: %s", arg, strerror(errno));
            if (fd >= 0)
                close(fd);
            return -1;
        }
        close(fd);
    } else if (size && S_ISREG(sb.st_mode) && (uint64_t)sb.st_size != size) {
        bm_error("--disk %s: the image exists with %lld bytes, not %llu", arg,
                 (long long)sb.st_size, (unsigned long long)size);
        return -1;
    }
    /* (vm_disk_name_ok bounds the name; the precision says so to the compiler, which at -O1
     * warned that 4 KiB might not fit.) */
    snprintf(out->name, sizeof out->name, "%.*s", (int)sizeof out->name - 1, buf);
    struct cli_image img = {.raw_only = raw_only};
    if (cli_open_image(path, &img, &out->disk) < 0)
        return -1;
    if (bm_disk_size(out->disk) % 4096) {
        bm_error("--disk %s: the image size must be a multiple of 4 KiB", arg);
        bm_disk_close(out->disk);
        return -1;
    }
    return 0;
}

/* --run-dir DIR (made if absent), or a new directory of our own (*made). */
static int make_run_dir(const char *want, char *dir, size_t len, bool *made)
{
    *made = false;
    if (want) {
        struct stat sb;
        if (mkdir(want, 0700) < 0 && errno != EEXIST) {
            bm_error("--run-dir %s: %s", want, strerror(errno));
            return -1;
        }
        if (stat(want, &sb) < 0 || !S_ISDIR(sb.st_mode)) {
            bm_error("--run-dir %s: not a directory", want);
            return -1;
        }
        snprintf(dir, len, "%s", want);
        return 0;
    }
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, len, "%s/blkmig-qemu.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        bm_error("cannot make a run directory %s: %s", dir, strerror(errno));
        return -1;
    }
    *made = true;
    return 0;
}

static void remove_run_dir(const char *dir, bool made)
{
    char sock[4200];
    snprintf(sock, sizeof sock, "%s/qmp.sock", dir);
    unlink(sock);
    if (made && rmdir(dir) < 0)
        bm_warn("cannot remove the run directory %s: %s", dir, strerror(errno));
}

/* The options of --qemu and --qemu-attach make sense together (own: an option of the other
 * VMs was given); QEMU's line is what follows "--". */
static bool qemu_args_ok(bool qemu, const char *attach, const char *rundir, bool own,
                         const char *control, int argc, char **argv)
{
    const char *bad = NULL;
    if (qemu && attach)
        bad = "--qemu and --qemu-attach exclude each other";
    else if (!qemu && !attach)
        bad = "--run-dir is for --qemu";
    else if (attach && rundir)
        bad = "--run-dir is for --qemu, not --qemu-attach";
    else if (own)
        bad = "--ram, --disk, --workload, --format, --kvm, --synthetic, --guest, --console and "
              "--append are not for a QEMU VM (its own command line says all that)";
    else if (!control)
        bad = "--control is required";
    else if (qemu && (optind >= argc || strcmp(argv[optind - 1], "--") != 0))
        bad = "--qemu needs QEMU's command line after '--'";
    else if (attach && optind != argc)
        bad = "--qemu-attach takes no command line";
    if (bad) {
        bm_error("%s", bad);
        usage(stderr);
    }
    return !bad;
}

/* QEMU's own events (STOP, RESUME, SHUTDOWN...) go to the control socket's clients and --json
 * as "qemu-event", with the QMP event as data. */
static void forward_event(void *opaque, struct json_object *ev)
{
    (void)opaque;
    vmproc_guest_event(NULL, "qemu-event", json_object_get(ev));
}

/* --qemu (argv: QEMU's line) or --qemu-attach: take the VM, then serve it as any other. */
static int run_qemu(const char *attach, const char *rundir, int argc, char **argv,
                    const char *control, bool json)
{
    char err[2600], dir[4096] = "";
    int claim = bm_control_claim(control, err, sizeof err);
    if (claim < 0) {
        bm_error("--control: %s", err);
        return 1;
    }
    struct qemu_vm *v = NULL;
    bool made = false;
    int r;
    if (!attach) {
        /* A refused line is said once, by the parser, before anything is made. */
        struct qemu_cmdline *cl;
        if (qemu_cmdline_parse(argc, (const char *const *)argv, &cl, NULL, 0) < 0) {
            bm_control_release(control, claim);
            return 1;
        }
        qemu_cmdline_free(cl);
    }
    if (!attach && make_run_dir(rundir, dir, sizeof dir, &made) < 0) {
        bm_control_release(control, claim);
        return 1;
    }
    if (attach)
        r = qemu_vm_attach(attach, QEMU_ATTACH_MS, &v, err, sizeof err);
    else
        r = qemu_vm_launch(argc, (const char *const *)argv, dir, QEMU_START_MS, &v, err,
                           sizeof err);
    if (r < 0) {
        bm_error("%s%s", attach ? "--qemu-attach: " : "--qemu: ", err);
        if (dir[0])
            remove_run_dir(dir, made);
        bm_control_release(control, claim);
        return 1;
    }
    unsigned n;
    qemu_vm_disks(v, &n);
    bm_info("QEMU (pid %d) %s, %u disk%s", (int)qemu_vm_pid(v), attach ? "attached" : "started",
            n, n == 1 ? "" : "s");
    qemu_vm_on_event(v, forward_event, NULL);
    int code = vmproc_serve(qemu_vm_base(v), NULL, 0, control, claim, json);
    if (dir[0])
        remove_run_dir(dir, made);
    return code;
}

int cmd_run(int argc, char **argv)
{
    enum {
        O_RAM = 256,
        O_DISK,
        O_WORKLOAD,
        O_CONTROL,
        O_JSON,
        O_SYNTH,
        O_KVM,
        O_GUEST,
        O_CONSOLE,
        OPT_APPEND,
        O_LOG,
        O_QEMU,
        O_ATTACH,
        O_RUNDIR
    };
    static const struct option opts[] = {
        {"ram", required_argument, NULL, O_RAM},
        {"disk", required_argument, NULL, O_DISK},
        {"workload", required_argument, NULL, O_WORKLOAD},
        {"control", required_argument, NULL, O_CONTROL},
        {"json", no_argument, NULL, O_JSON},
        {"synthetic", no_argument, NULL, O_SYNTH},
        {"kvm", no_argument, NULL, O_KVM},
        {"guest", required_argument, NULL, O_GUEST},
        {"console", required_argument, NULL, O_CONSOLE},
        {"append", required_argument, NULL, OPT_APPEND},
        {"log-level", required_argument, NULL, O_LOG},
        {"qemu", no_argument, NULL, O_QEMU},
        {"qemu-attach", required_argument, NULL, O_ATTACH},
        {"run-dir", required_argument, NULL, O_RUNDIR},
        {"help", no_argument, NULL, 'h'},
        {"format", required_argument, NULL, 'F'},
        {NULL, 0, NULL, 0},
    };
    bm_log_set_prefix("blkmig run");
    uint64_t ram = 0;
    const char *control = NULL, *disk_args[VM_MAX_DISKS], *guest = NULL, *console = NULL,
               *workload = NULL, *append = NULL, *attach = NULL, *rundir = NULL;
    enum { AUTO, SYNTH, KVM } kind = AUTO;
    unsigned ndisk_args = 0;
    bool json = false, raw_only = true, qemu = false;
    struct synth_workload w;
    synth_workload_default(&w);
    char err[512];
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            usage(stdout);
            return 0;
        case 'F':
            if (cli_parse_format(optarg) < 0)
                return 2;
            raw_only = false;
            break;
        case O_RAM:
            if (bm_parse_size(optarg, &ram) < 0 || ram < (1u << 20) || ram % 4096 ||
                ram > (1ull << 40)) {
                bm_error("--ram %s: a size from 1M to 1T, a multiple of 4 KiB", optarg);
                return 2;
            }
            break;
        case O_DISK:
            if (ndisk_args == VM_MAX_DISKS) {
                bm_error("at most %d disks", VM_MAX_DISKS);
                return 2;
            }
            disk_args[ndisk_args++] = optarg;
            break;
        case O_WORKLOAD:
            if (synth_workload_parse(optarg, &w, err, sizeof err) < 0) {
                bm_error("%s", err);
                return 2;
            }
            workload = optarg;
            break;
        case O_CONTROL:
            control = optarg;
            break;
        case O_JSON:
            json = true;
            break;
        case O_SYNTH:
            kind = SYNTH;
            break;
        case O_KVM:
            kind = KVM;
            break;
        case O_GUEST:
            guest = optarg;
            break;
        case O_CONSOLE:
            console = optarg;
            break;
        case OPT_APPEND:
            append = optarg;
            break;
        case O_LOG:
            if (cli_set_log_level(optarg) < 0)
                return 2;
            break;
        case O_QEMU:
            qemu = true;
            break;
        case O_ATTACH:
            attach = optarg;
            break;
        case O_RUNDIR:
            rundir = optarg;
            break;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (qemu || attach || rundir) {
        bool own = ram || ndisk_args || workload || kind != AUTO || guest || console || append ||
                   !raw_only;
        return qemu_args_ok(qemu, attach, rundir, own, control, argc, argv)
                   ? run_qemu(attach, rundir, argc - optind, argv + optind, control, json)
                   : 2;
    }
    if (optind != argc || !ram || !control) {
        if (optind != argc)
            bm_error("unexpected argument '%s'", argv[optind]);
        else
            bm_error("--ram and --control are required");
        usage(stderr);
        return 2;
    }
    if (kind == SYNTH && (guest || console || append)) {
        bm_error("--guest, --console and --append are for the KVM micro-VM, not --synthetic");
        return 2;
    }
    if (append && (strlen(append) > 1024 || strpbrk(append, "\n\r"))) {
        bm_error("--append: at most 1024 characters on one line");
        return 2;
    }
    if (kind == AUTO) {
        /* The KVM micro-VM where it can run this VM; the synthetic guest otherwise. */
        char why[256];
        if (guest || console || append || kvm_fits(ram, ndisk_args, guest, why, sizeof why) == 0) {
            kind = KVM;
            bm_info("the KVM micro-VM with the test guest (the default where KVM works)");
        } else {
            kind = SYNTH;
            bm_info("the synthetic guest: %s", why);
        }
    }
    /* Before anything starts: a path another VM serves on is refused, not taken over. */
    int claim = bm_control_claim(control, err, sizeof err);
    if (claim < 0) {
        bm_error("--control: %s", err);
        return 1;
    }
    bool kvm = kind == KVM;
    struct vm_disk disks[VM_MAX_DISKS];
    struct bm_disk *bd[VM_MAX_DISKS];
    unsigned nd = 0;
    for (unsigned i = 0; i < ndisk_args; i++) {
        if (open_disk_arg(disk_args[i], raw_only, &disks[nd]) < 0)
            goto fail;
        for (unsigned k = 0; k < nd; k++)
            if (strcmp(disks[k].name, disks[nd].name) == 0) {
                bm_error("disk %s given twice", disks[nd].name);
                bm_disk_close(disks[nd].disk);
                goto fail;
            }
        bd[nd] = disks[nd].disk;
        nd++;
    }
    struct vm *vm;
    if (kvm) {
        struct kvm_config kc = {.ram = ram,
                                .guest = guest ? guest : kvm_default_guest(),
                                .workload = workload,
                                .extra_cmdline = append,
                                .console = console};
        if (kvm_probe(err, sizeof err) < 0) {
            bm_error("--kvm: %s", err);
            goto fail;
        }
        if (kvm_create(&kc, disks, nd, true, vmproc_guest_event, NULL, &vm, err, sizeof err) < 0) {
            bm_error("%s", err);
            goto fail;
        }
    } else if (synth_create(ram, disks, nd, &w, true, vmproc_guest_event, NULL, &vm, err,
                            sizeof err) < 0) {
        bm_error("%s", err);
        goto fail;
    }
    return vmproc_serve(vm, bd, nd, control, claim, json);
fail:
    for (unsigned k = 0; k < nd; k++)
        bm_disk_close(disks[k].disk);
    bm_control_release(control, claim);
    return 1;
}
