/* qemu.h: a QEMU VM handed to blkmig: launched as its child (run --qemu) or adopted (attach). */
#ifndef BM_VM_QEMU_QEMU_H
#define BM_VM_QEMU_QEMU_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "vm/qemu/cmdline.h"
#include "vm/qemu/mon.h"
#include "vm/vm.h"

/*
 * QEMU moves its own RAM and devices; blkmig moves the disks and decides when. So a qemu VM
 * has no RAM regions and no bm_disk of its own (nregions = ndisks = 0): its dirty_log_*,
 * save_state, load_state and check return -ENOTSUP and throttle does nothing. pause and resume
 * are QMP stop and cont; query, describe and dead say what QEMU says. The disks are described
 * by qemu_vm_disks, found over QMP when the VM is made.
 */

#define QEMU_VM_MAX_DISKS  64
#define QEMU_DISK_NODE_MAX 128 /* node names: QEMU allows 31 bytes; paths of devices more */
#define QEMU_DISK_PATH_MAX 4096

/* One disk as QEMU runs it (query-block, query-blockstats, query-named-block-nodes). */
struct qemu_disk_info {
    char device[QEMU_DISK_NODE_MAX]; /* query-block "qdev": the guest device's QOM path, what
                                      * block_set_io_throttle's "id" takes ("" without one) */
    char drive[QEMU_DISK_NODE_MAX];  /* the -drive id ("" for -blockdev) */
    char node[QEMU_DISK_NODE_MAX];   /* the top (format) node's name, possibly generated
                                      * ("#block123"): bitmaps and exports take it */
    char format[16];                 /* the top node's driver: "raw", "qcow2"... */
    char file[QEMU_DISK_PATH_MAX];   /* the image's filename */
    uint64_t size;                   /* virtual size in bytes */
    bool backing;                    /* has a backing file */
    bool readonly;
};

struct qemu_vm;

/* launch: `QEMU ARGS` (argv[0] any path or a name looked up in PATH) with blkmig's QMP socket
 * added (qemu_cmdline_source_argv) in rundir, which must exist; QEMU's stderr is passed on to
 * blkmig's. Returns once QEMU answers on QMP and its disks are known, within timeout_ms.
 * Errors (-errno, err filled): the line refused by qemu_cmdline_parse (-ENOTSUP, -EINVAL...),
 * -ENOENT/-EACCES the binary cannot be run, -ECHILD QEMU exited at start (err quotes the end of
 * its stderr), -ETIMEDOUT no QMP greeting in time, a refused disk (qemu_disks_parse). QEMU is
 * ended (and reaped) on every error. */
int qemu_vm_launch(int argc, const char *const *argv, const char *rundir, int timeout_ms,
                   struct qemu_vm **out, char *err, size_t errlen);

/* A destination's QEMU: argv is the final line (qemu_cmdline_dest_argv's, whose -qmp is
 * qmp_path, with -incoming defer), run as it is, plus -S when paused (the guest then runs only
 * on vm_resume, after the incoming migration). Returns, errors and ending as qemu_vm_launch. */
int qemu_vm_launch_incoming(int argc, const char *const *argv, const char *qmp_path, bool paused,
                            int timeout_ms, struct qemu_vm **out, char *err, size_t errlen);

/* attach: take over the QEMU serving QMP at qmp_path (its pid from SO_PEERCRED, its command
 * line from /proc/PID/cmdline, parsed), changing nothing in it. Errors: those of bm_qmp_connect
 * (-ENOENT, -ECONNREFUSED: nothing there; -EPROTO: not QEMU; -ETIMEDOUT: another client has
 * the socket), -ESRCH the peer's command line cannot be read, a refused command line or disk.
 * Destroying an attached VM only disconnects: QEMU runs on, in the state it is in. */
int qemu_vm_attach(const char *qmp_path, int timeout_ms, struct qemu_vm **out, char *err,
                   size_t errlen);

static inline struct vm *qemu_vm_base(struct qemu_vm *v)
{
    return (struct vm *)v; /* struct vm is the first member */
}

const struct qemu_disk_info *qemu_vm_disks(struct qemu_vm *v, unsigned *n);
struct qemu_mon *qemu_vm_mon(struct qemu_vm *v);
pid_t qemu_vm_pid(const struct qemu_vm *v);
/* Its command line (launch: the user's; attach: /proc's), and QEMU's version. */
const char *const *qemu_vm_argv(const struct qemu_vm *v, int *argc);
void qemu_vm_version(const struct qemu_vm *v, int *major, int *minor, int *micro);
/* QEMU's command line, parsed (for qemu_cmdline_dest_argv): the user's for a launch (without
 * blkmig's additions), /proc's for an attach. */
const struct qemu_cmdline *qemu_vm_cmdline(const struct qemu_vm *v);
/* Launched by blkmig (true) or attached (false). */
bool qemu_vm_launched(const struct qemu_vm *v);

/* QEMU's QMP events are taken by the VM's watcher thread (every 100 ms; a SHUTDOWN marks the
 * VM dead), so qemu_mon_next_event finds none: whoever needs them (a migration following
 * MIGRATION or BLOCK_JOB_* events) registers fn, which the watcher calls for each event in
 * order, with the whole event object (borrowed: json_object_get it to keep it). fn must not
 * block nor call qemu_vm_on_event; NULL removes it. */
typedef void (*qemu_vm_event_fn)(void *opaque, struct json_object *ev);
void qemu_vm_on_event(struct qemu_vm *v, qemu_vm_event_fn fn, void *opaque);

/* ---- pure parsing of what QEMU and /proc give (unit tests and the fuzz harness call these) */

/* The disks of a QEMU from the return values of query-block, query-blockstats and
 * query-named-block-nodes {"flat": true} (borrowed). A drive without a medium (an empty
 * cdrom) is skipped, with a note logged. Refused (-ENOTSUP, err says which drive and why): a
 * network protocol (nbd, iscsi, rbd, ssh, http(s), gluster...) anywhere in a disk's chain, a
 * format or protocol driver blkmig does not handle (filters included), a drive without a node
 * name or whose protocol node cannot be found. -EBADMSG for replies of the wrong shape,
 * -E2BIG past QEMU_VM_MAX_DISKS. On success *out (n entries; NULL when n is 0) is the
 * caller's to free. */
int qemu_disks_parse(struct json_object *block, struct json_object *stats,
                     struct json_object *nodes, struct qemu_disk_info **out, unsigned *n, char *err,
                     size_t errlen);

/* The disks as JSON: [{"device", "drive", "node", "format", "file", "size", "backing",
 * "readonly"}, ...] (a new array). */
struct json_object *qemu_disks_json(const struct qemu_disk_info *d, unsigned n);

/* /proc/PID/cmdline's bytes (len; arguments each ending with a NUL) as an argv: *argv_out is
 * NULL-terminated, in ONE allocation (free(*argv_out)), *argc_out its count. -EINVAL for an
 * empty buffer or one not ending with a NUL, -E2BIG past QEMU_CMDLINE_MAX_ARGS or
 * QEMU_CMDLINE_MAX_TOTAL bytes, -ENOMEM. */
int qemu_proc_cmdline_split(const char *buf, size_t len, int *argc_out, char ***argv_out);

#endif
