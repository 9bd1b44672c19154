/* control.h: the control socket: JSON lines over a unix socket (commands, replies, events). */
#ifndef BM_COMMON_CONTROL_H
#define BM_COMMON_CONTROL_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>

/*
 * Wire format (documented in docs/control-protocol.md): one JSON object per line.
 *   server, on connect: {"blkmig": {"version": "...", "service": "...", "commands": [...]}}
 *   client:             {"execute": "NAME", "arguments": {...}, "id": ANY}   (arguments, id optional)
 *   server:             {"return": {...}, "id": ANY}
 *                    or {"error": {"class": "...", "desc": "..."}, "id": ANY}
 *   server, any time:   {"event": "NAME", "data": {...}, "timestamp": {"seconds": S, "microseconds": U}}
 */
struct bm_control;

/* A command handler: returns the result object (reference passed to the caller), or NULL after
 * filling cls ("InvalidArgument", "CommandNotFound", "Failed"...) and desc. Runs on the control
 * socket's own thread. */
typedef struct json_object *(*bm_control_fn)(void *opaque, const char *cmd,
                                              struct json_object *args, const char **cls,
                                              char *desc, size_t desclen);

/* The server's reply to one line from a client (a new object; the caller puts it): an error
 * for a line that is not a command object, a command not in commands (NULL-terminated) or
 * arguments that are not an object; else fn's result. */
struct json_object *bm_control_reply(const char *const *commands, bm_control_fn fn, void *opaque,
                                     const char *line);

/* Reserve path for a control socket of this process: take the lock PATH.lock (flock; held
 * until bm_control_stop or bm_control_release) and look at what is there. A socket nobody
 * listens on (stale) is fine: it is replaced when the server starts. Returns the claim (>= 0)
 * or -errno with err filled: -EADDRINUSE when another process holds the lock or a socket there
 * answers, -EEXIST when path is not a socket, -ENAMETOOLONG, or the error of the lock file. */
int bm_control_claim(const char *path, char *err, size_t errlen);
/* Give up a claim that was not handed to bm_control_start_claimed (removes PATH.lock). */
void bm_control_release(const char *path, int claim);

/* Listen on path (claimed; the claim is the server's from now on, also when this fails) and
 * serve from a new thread. The socket is made 0600, whatever the umask; a client whose uid is
 * neither root nor this process's effective uid is refused (a PermissionDenied error line
 * instead of the greeting, and one log line); one that sends no command, or leaves a line
 * unfinished, for BLKMIG_CONTROL_IDLE_TIMEOUT seconds (default 60) is dropped. commands is a
 * NULL-terminated list of names the handler knows (for the greeting and for
 * CommandNotFound). Returns NULL with err filled and errno set. */
struct bm_control *bm_control_start_claimed(int claim, const char *path, const char *service,
                                            const char *const *commands, bm_control_fn fn,
                                            void *opaque, char *err, size_t errlen);
/* bm_control_claim, then bm_control_start_claimed: NULL with err filled and errno set. */
struct bm_control *bm_control_start(const char *path, const char *service,
                                    const char *const *commands, bm_control_fn fn, void *opaque,
                                    char *err, size_t errlen);
/* Send an event to every connected client (any thread). data may be NULL; it is released. */
void bm_control_emit(struct bm_control *c, const char *event, struct json_object *data);
/* Stop the thread, close clients, remove the socket file (if it is still this server's) and
 * the lock file. */
void bm_control_stop(struct bm_control *c);

/* Client side: connect, read the greeting (an error line in its place fails with its desc),
 * send one command, print events to events_fd (or drop them if -1) until the reply; returns
 * the reply object (caller puts it) or NULL. */
struct json_object *bm_control_call(const char *path, const char *cmd, struct json_object *args,
                                    int events_fd, char *err, size_t errlen);

/* The same, then keep reading events after a successful reply, handing each (a JSON object)
 * to fn until it returns true; fn(opaque, NULL) when the connection ends first. */
typedef bool (*bm_control_event_fn)(void *opaque, struct json_object *event);
struct json_object *bm_control_call_follow(const char *path, const char *cmd,
                                           struct json_object *args, int events_fd,
                                           bm_control_event_fn fn, void *opaque, char *err,
                                           size_t errlen);

#endif
