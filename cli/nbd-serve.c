/* nbd-serve.c: `blkmig nbd-serve`, export files and block devices over NBD. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blockmirror/disk.h"
#include "cli/cli.h"
#include "cli/image.h"
#include "common/log.h"
#include "common/parse.h"
#include "nbd/inject.h"
#include "nbd/server.h"

#define MAX_EXPORTS 64

static struct nbd_server *the_server;

static void on_signal(int sig)
{
    (void)sig;
    if (the_server)
        nbd_server_shutdown(the_server);
}

static void usage(FILE *f)
{
    fprintf(f,
        "Usage: blkmig nbd-serve [OPTIONS] [PATH]\n"
        "       blkmig nbd-serve [OPTIONS] --export NAME=PATH [--export NAME=PATH]...\n"
        "\n"
        "Serve files or block devices over the NBD protocol (fixed newstyle, structured\n"
        "replies, base:allocation, multi-conn). A bare PATH is the default export (\"\").\n"
        "\n"
        "Where to listen:\n"
        "  -p, --port N          TCP port (default 10809)\n"
        "  -b, --bind ADDR       address to listen on (default: all)\n"
        "  -u, --unix PATH       listen on a unix socket instead of TCP\n"
        "Exports:\n"
        "  -e, --export NAME=PATH  export PATH under NAME (repeatable)\n"
        "  -r, --readonly, --read-only\n"
        "                        refuse writes on every export\n"
        "  -U, --force-share     with --readonly: serve images other processes (QEMU) hold\n"
        "                        for writing (default: refuse them, as qemu-img without -U)\n"
        "      --format raw      serve images that start like another format (qcow2, vmdk,\n"
        "                        ...) writable as raw all the same (default: refuse them)\n"
        "Limits:\n"
        "  -s, --shared N        serve at most N connections at once (default 64)\n"
        "  -t, --threads N       worker threads per connection (default 16)\n"
        "Process:\n"
        "  -f, --foreground      stay in the foreground (default: detach once listening)\n"
        "  -P, --pid-file FILE   write the server's process id to FILE\n"
        "  -l, --log-level L     error, warn, info or debug (default warn)\n"
        "Fault injection (for testing NBD clients):\n"
        "  -i, --inject SPEC     OPS:key=value[:key=value]..., for example\n"
        "                          write:error=EIO:rate=0.01   read:delay=5ms\n"
        "                          flush:error=EIO:after=100   all:error=EIO:count=3\n"
        "                        OPS: read write flush trim zero block-status cache all\n"
        "                        keys: error delay rate after count (see the man page)\n"
        "      --seed N          seed for --inject rates (default 0): same seed, same faults\n"
        "  -h, --help            show this help\n"
        "\n"
        "SIGTERM or SIGINT stop accepting, finish in-flight requests and exit 0.\n");
}

struct export_arg {
    char *name;
    const char *path;
    struct bm_disk *disk;
    bool disk_shared; /* another export's disk: the same image (opened, locked once) */
};

static int write_pid_file(const char *path, pid_t pid)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        bm_error("cannot write pid file %s: %s", path, strerror(errno));
        return -1;
    }
    fprintf(f, "%ld\n", (long)pid);
    if (fclose(f) != 0) {
        bm_error("cannot write pid file %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* Detach: the parent reports the child's pid and exits; the child carries on serving. */
static int daemonize(const char *pid_file)
{
    pid_t pid = fork();
    if (pid < 0) {
        bm_error("fork: %s", strerror(errno));
        return -1;
    }
    if (pid > 0) {
        if (pid_file && write_pid_file(pid_file, pid) < 0) {
            kill(pid, SIGTERM);
            _exit(1);
        }
        _exit(0);
    }
    setsid();
    if (chdir("/") < 0)
        return -1;
    int fd = open("/dev/null", O_RDWR);
    if (fd >= 0) {
        dup2(fd, STDIN_FILENO);
        dup2(fd, STDOUT_FILENO);
        if (fd > STDERR_FILENO)
            close(fd);
    }
    return 0;
}

/* The server detaches into "/", so paths it removes at exit must not be relative. */
static char *absolute_path(const char *path)
{
    if (path[0] == '/')
        return strdup(path);
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd))
        return NULL;
    char *abs;
    if (asprintf(&abs, "%s/%s", cwd, path) < 0)
        return NULL;
    return abs;
}

static int parse_export(const char *arg, struct export_arg *e)
{
    const char *eq = strchr(arg, '=');
    if (!eq || eq[1] == '\0') {
        bm_error("--export %s: expected NAME=PATH", arg);
        return -1;
    }
    e->name = strndup(arg, (size_t)(eq - arg));
    e->path = eq + 1;
    return e->name ? 0 : -1;
}

/* Open export i's image, locked; an image an earlier export serves already (the same file) is
 * shared with it: opened twice, it would conflict with its own lock. */
static int open_export(struct export_arg *exports, unsigned i, bool readonly, bool force_share,
                       bool format_raw)
{
    struct stat a, b;
    for (unsigned j = 0; j < i; j++) {
        if (stat(exports[i].path, &a) == 0 && stat(exports[j].path, &b) == 0 &&
            a.st_dev == b.st_dev && a.st_ino == b.st_ino && a.st_rdev == b.st_rdev) {
            exports[i].disk = exports[j].disk;
            exports[i].disk_shared = true;
            return 0;
        }
    }
    struct cli_image img = {.readonly = readonly,
                            .force_share = force_share,
                            .offer_share = true,
                            .raw_only = !readonly && !format_raw,
                            .serving = true};
    return cli_open_image(exports[i].path, &img, &exports[i].disk);
}

int cmd_nbd_serve(int argc, char **argv)
{
    static const struct option opts[] = {
        {"port", required_argument, NULL, 'p'},     {"bind", required_argument, NULL, 'b'},
        {"unix", required_argument, NULL, 'u'},     {"export", required_argument, NULL, 'e'},
        {"readonly", no_argument, NULL, 'r'},       {"read-only", no_argument, NULL, 'r'},
        {"shared", required_argument, NULL, 's'},   {"threads", required_argument, NULL, 't'},
        {"foreground", no_argument, NULL, 'f'},     {"pid-file", required_argument, NULL, 'P'},
        {"log-level", required_argument, NULL, 'l'}, {"inject", required_argument, NULL, 'i'},
        {"seed", required_argument, NULL, 'S'},     {"help", no_argument, NULL, 'h'},
        {"force-share", no_argument, NULL, 'U'},    {"format", required_argument, NULL, 'F'},
        {NULL, 0, NULL, 0},
    };
    bm_log_set_prefix("blkmig nbd-serve");
    const char *port = NULL, *bind_addr = NULL, *unix_path = NULL, *pid_file = NULL;
    bool readonly = false, foreground = false, force_share = false, format_raw = false;
    uint64_t shared = 64, threads = 16, seed = 0;
    struct export_arg exports[MAX_EXPORTS];
    unsigned nexports = 0;
    static struct nbd_inject inject;
    char err[256];
    char *abs_unix = NULL, *abs_pid = NULL;
    int status = 2;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "p:b:u:e:rUs:t:fP:l:i:h", opts, NULL)) != -1) {
        switch (c) {
        case 'p': {
            uint64_t v;
            if (bm_parse_u64(optarg, 1, 65535, &v) < 0) {
                bm_error("--port %s: expected a port number from 1 to 65535", optarg);
                goto usage_error;
            }
            port = optarg;
            break;
        }
        case 'b': bind_addr = optarg; break;
        case 'u': unix_path = optarg; break;
        case 'e':
            if (nexports >= MAX_EXPORTS) {
                bm_error("too many exports (at most %d)", MAX_EXPORTS);
                goto usage_error;
            }
            if (parse_export(optarg, &exports[nexports]) < 0)
                goto usage_error;
            nexports++;
            break;
        case 'r': readonly = true; break;
        case 'U': force_share = true; break;
        case 'F':
            if (cli_parse_format(optarg) < 0)
                goto usage_error;
            format_raw = true;
            break;
        case 's':
            if (bm_parse_u64(optarg, 1, 4096, &shared) < 0) {
                bm_error("--shared %s: expected a number from 1 to 4096", optarg);
                goto usage_error;
            }
            break;
        case 't':
            if (bm_parse_u64(optarg, 1, 256, &threads) < 0) {
                bm_error("--threads %s: expected a number from 1 to 256", optarg);
                goto usage_error;
            }
            break;
        case 'f': foreground = true; break;
        case 'P': pid_file = optarg; break;
        case 'l':
            if (cli_set_log_level(optarg) < 0)
                goto usage_error;
            break;
        case 'i':
            if (nbd_inject_parse(&inject, optarg, err, sizeof err) < 0) {
                bm_error("--inject %s", err);
                goto usage_error;
            }
            break;
        case 'S':
            if (bm_parse_u64(optarg, 0, UINT64_MAX, &seed) < 0) {
                bm_error("--seed %s: expected a whole number", optarg);
                goto usage_error;
            }
            break;
        case 'h':
            usage(stdout);
            status = 0;
            goto usage_error;
        default: usage(stderr); goto usage_error;
        }
    }
    for (int i = optind; i < argc; i++) {
        if (nexports >= MAX_EXPORTS) {
            bm_error("too many exports (at most %d)", MAX_EXPORTS);
            goto usage_error;
        }
        exports[nexports].name = strdup("");
        exports[nexports].path = argv[i];
        nexports++;
    }
    if (nexports == 0) {
        bm_error("nothing to export: give a PATH or --export NAME=PATH (see --help)");
        goto usage_error;
    }
    if (unix_path && (port || bind_addr)) {
        bm_error("--unix cannot be combined with --port or --bind");
        goto usage_error;
    }
    if (force_share && !readonly) {
        bm_error("--force-share needs --readonly: an export that others may write must not be "
                 "written through blkmig too");
        goto usage_error;
    }
    inject.seed = seed;
    status = 1;
    if ((unix_path && !(abs_unix = absolute_path(unix_path))) ||
        (pid_file && !(abs_pid = absolute_path(pid_file)))) {
        bm_error("cannot resolve the current directory: %s", strerror(errno));
        goto usage_error;
    }
    unix_path = abs_unix;
    pid_file = abs_pid;

    struct nbd_server_config cfg = {.max_connections = (unsigned)shared,
                                    .threads_per_conn = (unsigned)threads,
                                    .inject = inject.nrules ? &inject : NULL};
    struct nbd_server *s = nbd_server_new(&cfg);
    if (!s) {
        bm_error("cannot create the server: %s", strerror(errno));
        status = 1;
        goto usage_error;
    }
    for (unsigned i = 0; i < nexports; i++) {
        exports[i].disk = NULL;
        exports[i].disk_shared = false;
    }
    for (unsigned i = 0; i < nexports; i++) {
        int r = open_export(exports, i, readonly, force_share, format_raw);
        if (r < 0 && (r == -EACCES || r == -EROFS) && !readonly) {
            bm_error("%s: open it with --readonly to serve it read-only", exports[i].path);
            goto out;
        }
        if (r < 0)
            goto out;
        r = nbd_server_add_export(s, exports[i].name, NULL, exports[i].disk, readonly);
        if (r == -EEXIST) {
            bm_error("export name '%s' given twice", exports[i].name);
            goto out;
        }
        if (r < 0) {
            bm_error("export '%s': %s", exports[i].name, strerror(-r));
            goto out;
        }
    }
    /* Handlers first, so a signal that arrives while starting up still ends cleanly. */
    the_server = s;
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    int r = unix_path ? nbd_server_listen_unix(s, unix_path)
                      : nbd_server_listen_tcp(s, bind_addr, port ? port : "10809");
    if (r < 0)
        goto out;

    if (!foreground) {
        if (daemonize(pid_file) < 0)
            goto out;
    } else if (pid_file && write_pid_file(pid_file, getpid()) < 0) {
        goto out;
    }
    bm_info("serving %u export%s", nexports, nexports == 1 ? "" : "s");
    status = nbd_server_run(s) < 0 ? 1 : 0;
    if (pid_file)
        unlink(pid_file);
out:
    the_server = NULL;
    if (nbd_server_connections(s) > 0)
        return status; /* threads still running after the drain timeout: exit leaves it */
    nbd_server_free(s);
    for (unsigned i = 0; i < nexports; i++)
        if (!exports[i].disk_shared)
            bm_disk_close(exports[i].disk);
usage_error:
    for (unsigned i = 0; i < nexports; i++)
        free(exports[i].name);
    free(abs_unix);
    free(abs_pid);
    return status;
}
