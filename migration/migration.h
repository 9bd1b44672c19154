/* migration.h: live migration of a VM with its disks: the source job and the destination. */
#ifndef BM_MIGRATION_MIGRATION_H
#define BM_MIGRATION_MIGRATION_H

#include <json-c/json.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "vm/vm.h"

enum mig_order {
    MIG_ORDER_JOINT,      /* start RAM so that disk and RAM finish together (default) */
    MIG_ORDER_DISK_FIRST, /* QEMU/libvirt: every disk ready first, then RAM */
};

struct mig_params {
    char host[256], port[16]; /* the destination's migration listener */
    bool with_disk;
    unsigned downtime_limit_ms; /* default 300 */
    uint64_t max_bandwidth;     /* bytes/s shared by RAM and disks; 0 = unlimited */
    bool verify;                /* digest RAM and disks at switchover on both sides */
    bool compress;              /* zlib RAM batches */
    enum mig_order order;
    unsigned max_time_s;      /* abort cleanly after this long (default 600) */
    unsigned peer_timeout_ms; /* silence from the peer that counts as a lost link (10000) */
    unsigned connections;     /* NBD connections per disk (default 4) */
};

void mig_params_default(struct mig_params *p);
/* "tcp:HOST:PORT" -> host, port. 0 or -EINVAL. */
int mig_parse_uri(const char *uri, struct mig_params *p);

/* Events: "migration" {status, ...} on every status change, "migration-progress" periodically
 * (the same object as mig_source_query), on the migration thread. data is released by the
 * callee. */
typedef void (*mig_event_fn)(void *opaque, const char *event, struct json_object *data);

/* Statuses a source job goes through. */
enum mig_status {
    MIG_SETUP,
    MIG_ACTIVE,     /* pre-copy: disk bulk and/or RAM rounds */
    MIG_SWITCHOVER, /* paused, final copy */
    MIG_COMPLETED,  /* the destination runs the VM; this side must stop */
    MIG_FAILED,     /* rolled back: the VM runs here */
    MIG_CANCELLED,  /* rolled back on request */
    MIG_UNKNOWN,    /* COMPLETE sent, no answer: the VM stays paused here */
};
const char *mig_status_name(enum mig_status s);

struct mig_source;

/* Start migrating vm (running, not migrating already) on a new thread. */
int mig_source_start(struct vm *vm, const struct mig_params *p, mig_event_fn fn, void *opaque,
                     struct mig_source **out, char *err, size_t errlen);
void mig_source_cancel(struct mig_source *m);
/* Status and statistics as a new JSON object. */
struct json_object *mig_source_query(struct mig_source *m);
enum mig_status mig_source_status(struct mig_source *m);
/* Wait for the thread to end; returns the final status. */
enum mig_status mig_source_wait(struct mig_source *m);
void mig_source_free(struct mig_source *m);

/* ---- destination ---- */

/* Builds the VM described by the source (kind, RAM, guest config) over the given disks, paused
 * and empty; returns NULL with a message in err. */
typedef struct vm *(*mig_vm_factory)(void *opaque, struct json_object *desc,
                                     const struct vm_disk *disks, unsigned ndisks, char *err,
                                     size_t errlen);

struct mig_disk_map {
    char name[VM_DISK_NAME_MAX];
    char path[4096];
};

struct mig_incoming_opts {
    const char *host, *port; /* where to listen for the migration stream */
    const char *nbd_port;    /* where to serve the disks (default port + 1) */
    const char *disk_dir;    /* with_disk: create DIR/NAME.img for each announced disk, or: */
    const struct mig_disk_map *map; /* the only images opened without with_disk */
    unsigned nmap;
    bool force;               /* replace existing images once the migration has completed */
    uint64_t max_ram;         /* refuse a VM with more RAM (0 = the memory available) */
    uint64_t max_disk;        /* refuse disks larger in all (0 = each file system's free space) */
    const char *qemu_binary;  /* a QEMU VM: the QEMU to run (NULL: the source's binary name,
                                 looked up in PATH) */
    const char *run_dir;      /* a QEMU VM: where its QMP socket and its relocated host paths
                                 (chardev sockets, files) go (NULL: a new /tmp directory) */
    unsigned peer_timeout_ms; /* default 10000 */
    unsigned accept_timeout_s; /* 0 = wait for ever */
    mig_vm_factory factory;
    void *opaque;
    /* Called once listening (e.g. to print "ready"), may be NULL. */
    void (*listening)(void *opaque);
    /* Set (e.g. by a signal handler) to give up while waiting for or receiving from the
     * source: the migration then fails as any other (ABORT sent, images removed). May be
     * NULL. Looked at every 50-100 ms, until COMPLETE. */
    const volatile sig_atomic_t *stop;
    /* Called when COMPLETE arrives (from then on stop is not looked at), may be NULL. */
    void (*at_complete)(void *opaque);
};

/* The result of a successful incoming migration: a running VM and its disks (the caller
 * closes them after vm_destroy). */
struct mig_incoming_result {
    struct vm *vm;
    struct bm_disk *disks[VM_MAX_DISKS];
    unsigned ndisks;
    struct json_object *stats; /* what the destination measured */
};

/* Wait for one source, receive the VM, resume it. New images are received into temporary files
 * and renamed into place once the migration is complete, before RESUMED. On failure
 * everything received is discarded (the temporary files are removed, the names left as they
 * were) and -errno comes back with a message in err. */
int mig_incoming_run(const struct mig_incoming_opts *o, struct mig_incoming_result *res,
                     char *err, size_t errlen);

/* Check a VM description's "disks" (what a destination creates): an array of at most
 * VM_MAX_DISKS {"name": a vm_disk_name_ok name, "size": a multiple of 512 up to 2^50}, no name
 * twice. 0, or -EPROTO with why in err. */
int mig_disks_check(struct json_object *disks, char *err, size_t errlen);

/* Digests of a paused VM's RAM and disks, as {"ram": HEX, "disks": {NAME: HEX}}. */
struct json_object *mig_digest_vm(struct vm *vm);

#endif
