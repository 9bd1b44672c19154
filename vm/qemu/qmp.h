/* qmp.h: a client for QEMU's machine protocol (QMP) over a unix socket. */
#ifndef BM_VM_QEMU_QMP_H
#define BM_VM_QEMU_QMP_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * QMP is one JSON object per line (QEMU ends lines with CRLF):
 *   QEMU, on connect:  {"QMP": {"version": {"qemu": {"major": M, "minor": N, "micro": P},
 *                                           "package": "..."}, "capabilities": [...]}}
 *   client:            {"execute": "NAME", "arguments": {...}, "id": N}
 *   QEMU:              {"return": ANY, "id": N}
 *                   or {"error": {"class": "...", "desc": "..."}, "id": N}
 *   QEMU, any time:    {"event": "NAME", "data": {...},
 *                       "timestamp": {"seconds": S, "microseconds": U}}
 * Everything QEMU sends is checked before use (bm_qmp_parse): a line longer than
 * BM_QMP_MAX_LINE, one that is not a JSON object, one of no known shape, or a reply to a command
 * this client never sent is a protocol error.
 *
 * Errors: every call returns 0 or -errno and fills err (when errlen > 0) with one line saying
 * what happened, naming the socket:
 *   -EREMOTEIO   QEMU answered with an error; err is "CLASS: DESC" (e.g. "CommandNotFound: The
 *                command foo has not been found"); the connection stays usable.
 *   -EBADMSG     the return value is not of the type the caller asked for (bm_qmp_exec_type);
 *                the connection stays usable.
 *   -ETIMEDOUT   nothing (or not the awaited reply) came within timeout_ms; the connection
 *                stays usable, and the late reply to a command that timed out is dropped when
 *                it comes. Whether QEMU ran that command is unknown.
 *   -EPROTO      QEMU sent something that is not QMP (see above);
 *   -EMSGSIZE    a line longer than BM_QMP_MAX_LINE;
 *   -ECONNRESET  the connection ended (EOF, also in the middle of a line);
 *                after one of these three (or an error writing to the socket) the client is
 *                broken: every later call fails with the same code and message, and the
 *                caller's only move is bm_qmp_close.
 *   -ENOMEM, or the errno of a failed read or write.
 * timeout_ms < 0 waits without limit.
 *
 * Threads: a client has no lock of its own. One thread at a time may call the functions on
 * one client (the caller serialises, e.g. with its own mutex); distinct clients are
 * independent.
 */

/* The longest line accepted from QEMU, CRLF excluded: a query-* reply can be large (query-block
 * of many disks with long backing chains). A longer line breaks the connection (-EMSGSIZE). */
#define BM_QMP_MAX_LINE (16u << 20)
/* Events held for bm_qmp_next_event: at most this many, of at most BM_QMP_MAX_EVENT_BYTES in
 * all (their line lengths). Past either bound the oldest events are dropped (counted by
 * bm_qmp_events_dropped, one warning per run of drops): a caller that does not take events
 * loses old ones, never the connection nor the newest (SHUTDOWN, a migration's last state). */
#define BM_QMP_MAX_EVENTS      1024u
#define BM_QMP_MAX_EVENT_BYTES (16u << 20)

struct bm_qmp;

/* Connect to the QMP socket at path, read the greeting, keep QEMU's version, send
 * qmp_capabilities and wait for its return, all within timeout_ms. Returns 0 with *q set, or
 * -errno with err filled: -ENOENT or -ECONNREFUSED (nothing listening at path), -EAGAIN (the
 * socket's backlog is full: QEMU accepts one QMP client at a time on a socket, and one more
 * waits in the backlog without a greeting, which gives -ETIMEDOUT), -EPROTO (the first line is
 * not a QMP greeting: err quotes its start), -ETIMEDOUT, -ECONNRESET, ... The connect itself
 * never blocks. */
int bm_qmp_connect(const char *path, int timeout_ms, struct bm_qmp **q, char *err, size_t errlen);
/* The same over a connected stream socket fd, which the client owns from now on (also when this
 * fails: it is closed then). name is used in messages. */
int bm_qmp_open_fd(int fd, const char *name, int timeout_ms, struct bm_qmp **q, char *err,
                   size_t errlen);

/* QEMU's version from the greeting. */
void bm_qmp_version(const struct bm_qmp *q, int *major, int *minor, int *micro);

/* Run command with args (a JSON object, or NULL for none; borrowed) and wait for its reply,
 * queueing the events that come meanwhile. Returns 0 with *ret set to the return value (a new
 * reference the caller puts; ret may be NULL to drop it), or -errno as described above (*ret
 * NULL). args that are not an object give -EINVAL. */
int bm_qmp_exec(struct bm_qmp *q, const char *command, struct json_object *args,
                struct json_object **ret, int timeout_ms, char *err, size_t errlen);
/* The same, but a return value not of type want (json_type_object for most commands,
 * json_type_array for query-block and the like) gives -EBADMSG. */
int bm_qmp_exec_type(struct bm_qmp *q, const char *command, struct json_object *args,
                     enum json_type want, struct json_object **ret, int timeout_ms, char *err,
                     size_t errlen);

/* The same as bm_qmp_exec, with fd passed along (SCM_RIGHTS) for the command to take: getfd
 * {fdname} names it in QEMU, for later commands (nbd-server-start {addr: {type: fd, data:
 * {str: NAME}}}). The caller keeps its own copy of fd. -EBADF for a negative fd. */
int bm_qmp_exec_fd(struct bm_qmp *q, const char *command, struct json_object *args, int fd,
                   struct json_object **ret, int timeout_ms, char *err, size_t errlen);

/* The oldest queued event, or, when none is queued, the next one read from the socket within
 * timeout_ms (0: only what has already arrived). Returns 0 with *ev the whole event object (a
 * new reference the caller puts; "event" is a string, "data" an object when present,
 * "timestamp" an object), -ETIMEDOUT when none came, or another -errno as above. A reply
 * arriving here (late, to a command that timed out) is dropped. */
int bm_qmp_next_event(struct bm_qmp *q, int timeout_ms, struct json_object **ev, char *err,
                      size_t errlen);
/* Events dropped so far because the queue was full. */
uint64_t bm_qmp_events_dropped(const struct bm_qmp *q);
/* Events queued now. */
size_t bm_qmp_events_queued(const struct bm_qmp *q);

/* The socket, for a poll loop: readable means bm_qmp_next_event(q, 0, ...) may have an event.
 * Queued events do not make it readable: check bm_qmp_events_queued first. */
int bm_qmp_fd(const struct bm_qmp *q);

/* Close the socket and free the client (queued events included). NULL is fine. */
void bm_qmp_close(struct bm_qmp *q);

/* One received line, classified and checked (no socket: the fuzz harness calls it). */
enum bm_qmp_kind { BM_QMP_GREETING, BM_QMP_RETURN, BM_QMP_ERROR, BM_QMP_EVENT };

struct bm_qmp_msg {
    enum bm_qmp_kind kind;
    struct json_object *obj; /* the whole line; owned (bm_qmp_msg_clear puts it) */
    /* The fields below point into obj. */
    int major, minor, micro; /* GREETING */
    bool has_id;             /* RETURN, ERROR: an "id" that is an integer >= 0 */
    uint64_t id;             /*   (any other "id" is refused) */
    struct json_object *ret; /* RETURN: the value (may be JSON null) */
    const char *err_class;   /* ERROR */
    const char *err_desc;    /* ERROR */
    const char *event;       /* EVENT: its name */
};

/* Parse one line (len bytes, no newline; a trailing CR is allowed; need not be NUL-terminated)
 * into m. Returns 0, or -EPROTO with err saying what is wrong (m is then empty), or -ENOMEM.
 * Lines of more than BM_QMP_MAX_LINE bytes are refused (-EMSGSIZE). */
int bm_qmp_parse(const char *line, size_t len, struct bm_qmp_msg *m, char *err, size_t errlen);
/* Put m's object and empty it. */
void bm_qmp_msg_clear(struct bm_qmp_msg *m);

#endif
