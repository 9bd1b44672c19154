/* cmdline.h: a QEMU command line parsed into what blkmig needs, and rewritten for the source
 * (launch) and the destination of a migration. Pure functions: no files, no processes. */
#ifndef BM_VM_QEMU_CMDLINE_H
#define BM_VM_QEMU_CMDLINE_H

#include <stdbool.h>
#include <stddef.h>

/* Bounds on a command line, which may come from another host in the migration stream. */
#define QEMU_CMDLINE_MAX_ARGS     4096        /* argc, argv[0] included */
#define QEMU_CMDLINE_MAX_ARG      (64 * 1024) /* one argument's bytes */
#define QEMU_CMDLINE_MAX_TOTAL    (1024 * 1024)
#define QEMU_CMDLINE_MAX_PATHS    256 /* host-local paths: the rewrite names each against all */
#define QEMU_CMDLINE_MAX_MONITORS 64
#define QEMU_CMDLINE_ERRLEN       256 /* an error text never needs more */

enum qemu_disk_kind {
    QEMU_DISK_DRIVE,    /* -drive */
    QEMU_DISK_BLOCKDEV, /* a -blockdev node no other node refers to, and its children */
    QEMU_DISK_LEGACY,   /* -hda..-hdd, -cdrom, -fda, -fdb, -sd, -mtdblock, -pflash */
};

/* One disk. Every string is owned by the qemu_cmdline; NULL where the line does not say. */
struct qemu_disk {
    char *name; /* the key a destination map uses: -drive id=, else node-name=, else a
                 * generated "driveN"; -blockdev: the top node-name; legacy: "hda", "cdrom",
                 * "fda", "sd0", "pflash0"... Unique within the line. */
    enum qemu_disk_kind kind;
    char *file;      /* the local image (file= / filename=), NULL for an empty cdrom */
    char *format;    /* format= or the format node's driver; NULL: QEMU probes it */
    char *iface;     /* -drive if= */
    char *node_name; /* -drive node-name=, the -blockdev top node */
    char *cache, *aio;
    bool readonly;
    bool cdrom;          /* media=cdrom, -cdrom, a host_cdrom node */
    char *device_id;     /* id= of the -device whose drive= names this disk */
    char *device_driver; /* that device's driver ("virtio-blk-pci") */
};

enum qemu_monitor_kind { QEMU_MON_QMP, QEMU_MON_HMP, QEMU_MON_MON };

/* A monitor of the user's: -qmp, -monitor or -mon. */
struct qemu_monitor {
    enum qemu_monitor_kind kind;
    char *spec;        /* the option's argument as given */
    char *socket_path; /* the unix: socket, NULL for other backends */
    char *chardev;     /* -mon chardev=, "-monitor chardev:ID" */
};

enum qemu_hostpath_kind { QEMU_PATH_SOCKET, QEMU_PATH_FILE, QEMU_PATH_PIPE, QEMU_PATH_LOG };

/* A host-local path that two QEMUs of one VM on one host must not share. */
struct qemu_hostpath {
    enum qemu_hostpath_kind kind;
    char *owner; /* "chardev ID", "-serial", "-D"... for messages */
    char *path;
};

struct qemu_cmdline_arg;   /* internal: one option and its parsed argument */
struct qemu_disk_internal; /* internal: where a -blockdev disk's nodes are */

struct qemu_cmdline {
    char *binary; /* argv[0] */
    struct qemu_disk *disks;
    size_t ndisks;
    struct qemu_monitor *monitors;
    size_t nmonitors;
    struct qemu_hostpath *paths;
    size_t npaths;
    bool daemonize;
    bool freeze; /* -S */
    char *pidfile;
    char *incoming;
    char *machine; /* the machine type (-machine type= or implied, -M) */
    char *cpu;
    /* internal */
    struct qemu_cmdline_arg *args;
    size_t nargs;
    struct qemu_disk_internal *dint; /* ndisks of them */
};

/* Parses argv (argc entries, argv[0] the QEMU binary). argv is hostile input: every option
 * must be one QEMU 7.2 knows, with its argument if it takes one, within the bounds above.
 * Refuses (-ENOTSUP) what blkmig cannot migrate yet: network or non-file block drivers,
 * -snapshot and snapshot=on, backing chains given on the line, -readconfig and -set (they
 * change drives behind the parser's back), positional disk images; -EINVAL for a malformed
 * line (unknown option, missing argument, bad syntax, duplicate ids, a drive without a
 * file), -E2BIG past the bounds, -ENOMEM. On error the reason, naming the option, is logged
 * once and, if err is not NULL, copied there (errlen bytes, NUL-terminated) for a peer.
 * On success *out is the caller's, freed with qemu_cmdline_free; it keeps no pointer into
 * argv. */
int qemu_cmdline_parse(int argc, const char *const *argv, struct qemu_cmdline **out, char *err,
                       size_t errlen);

void qemu_cmdline_free(struct qemu_cmdline *cl);

/* One disk's image on the destination. format NULL keeps the line's format. */
struct qemu_cmdline_image {
    const char *disk; /* qemu_disk.name */
    const char *path;
    const char *format;
};

/* The destination's command line: cl's, with every drive's file replaced by its image from
 * images[] (nimages; a read-only or cdrom disk with no entry keeps its file, any other disk
 * must have one, and an entry for no disk is an error), the user's -qmp, -monitor, -mon (and
 * a chardev only a -mon used), -daemonize, -pidfile, -S and -incoming removed, host-local
 * paths (qemu_cmdline.paths) moved into rundir under their base names (made unique), then
 * "-qmp unix:QMP_PATH,server=on,wait=off -incoming defer" appended.
 * On success *argv_out is a NULL-terminated argv in ONE allocation (pointers and strings):
 * free(*argv_out) frees it. Errors as qemu_cmdline_parse: -EINVAL, -ENOENT (no image for a
 * writable disk), -ENAMETOOLONG (a socket path past sun_path), -ENOTSUP, -ENOMEM. */
int qemu_cmdline_dest_argv(const struct qemu_cmdline *cl, const struct qemu_cmdline_image *images,
                           size_t nimages, const char *rundir, const char *qmp_path,
                           char ***argv_out, char *err, size_t errlen);

/* The source's command line for `blkmig run --qemu`: cl's with -daemonize removed and
 * "-qmp unix:QMP_PATH,server=on,wait=off" appended. -EINVAL if cl has -incoming. The user's
 * own monitors stay (cmdline-rewrite.c says why). *argv_out as for qemu_cmdline_dest_argv. */
int qemu_cmdline_source_argv(const struct qemu_cmdline *cl, const char *qmp_path, char ***argv_out,
                             char *err, size_t errlen);

#endif
