/* mon.h: one QMP connection shared by the threads that steer one QEMU (a lock around qmp.h). */
#ifndef BM_VM_QEMU_MON_H
#define BM_VM_QEMU_MON_H

#include <json-c/json.h>
#include <pthread.h>
#include <stddef.h>

#include "vm/qemu/qmp.h"

/*
 * The VM's control thread, a mirror's thread (harvesting dirty bitmaps) and the migration's
 * controller all talk to the same QEMU, through the one QMP socket it was given. Each call
 * below holds the monitor's lock for the whole command (send, wait for the reply), so commands
 * never interleave; events read meanwhile are queued in the client for whoever takes them.
 */
struct qemu_mon {
    pthread_mutex_t mu;
    struct bm_qmp *q;  /* owned */
    int timeout_ms;    /* for every command (default QEMU_MON_TIMEOUT_MS) */
    char name[128];    /* for messages: "QEMU (pid N)" or the socket's path */
};

#define QEMU_MON_TIMEOUT_MS 10000

/* Take q (owned from now on, also on failure). Returns 0 or -ENOMEM. */
int qemu_mon_init(struct qemu_mon *m, struct bm_qmp *q, const char *name);
void qemu_mon_destroy(struct qemu_mon *m);

/* Run command with args (an object, or NULL; the reference is *taken*, so that a call site can
 * build its arguments inline) and return its value in *ret (new reference; ret may be NULL).
 * Errors as bm_qmp_exec; err says "QEMU (pid N): COMMAND: ...". */
int qemu_mon_exec(struct qemu_mon *m, const char *command, struct json_object *args,
                  struct json_object **ret, char *err, size_t errlen);
/* The same, with the return value's type checked (-EBADMSG otherwise). */
int qemu_mon_exec_type(struct qemu_mon *m, const char *command, struct json_object *args,
                       enum json_type want, struct json_object **ret, char *err, size_t errlen);
/* Pass fd to QEMU under name (QMP getfd), for a later command to use (a listening socket for
 * nbd-server-start). The caller keeps and closes its copy. */
int qemu_mon_getfd(struct qemu_mon *m, int fd, const char *name, char *err, size_t errlen);
/* The next queued or arriving event within timeout_ms (0: only what is there), as
 * bm_qmp_next_event. The lock is held while waiting: callers that share the monitor wait with
 * short timeouts. */
int qemu_mon_next_event(struct qemu_mon *m, int timeout_ms, struct json_object **ev, char *err,
                        size_t errlen);

/* Build an object from "key", value pairs ending with NULL, each value a new reference (taken);
 * a NULL value leaves its key out. NULL when out of memory (every value put). E.g.
 * qemu_obj("node", json_object_new_string(n), "name", json_object_new_string(b), NULL). */
struct json_object *qemu_obj(const char *key, ...) __attribute__((sentinel));

#endif
