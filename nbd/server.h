/* server.h: the NBD server API: exports bm_disks over TCP or unix sockets. */
#ifndef BM_NBD_SERVER_H
#define BM_NBD_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include "blockmirror/disk.h"
#include "nbd/inject.h"

struct nbd_server;

struct nbd_server_config {
    unsigned max_connections;  /* connections served at once; more are refused (default 64) */
    unsigned threads_per_conn; /* worker threads per connection, grown on demand (default 16) */
    struct nbd_inject *inject; /* fault injection rules, or NULL */
    bool hide_exports;         /* export names are secrets: refuse NBD_OPT_LIST, the
                                * default name does not reach a lone export, and names are
                                * logged at debug level only */
    unsigned handshake_timeout_ms; /* a connection's time to finish negotiating (default 30 s) */
    /* Connections still negotiating get their own pool of this many (0: they count against
     * max_connections, as established ones do). When it is full, a new connection evicts the
     * oldest that has sent nothing yet (else the oldest): strangers that never negotiate
     * cannot keep out a client that does; max_connections then bounds established ones. */
    unsigned max_negotiating;
    unsigned drain_timeout_ms; /* nbd_server_run's wait for in-flight requests (default 30 s) */
};

/* The largest READ/WRITE/CACHE payload served; larger requests get EINVAL. */
#define NBD_SERVER_MAX_PAYLOAD (32u * 1024 * 1024)
#define NBD_SERVER_PREFERRED_BLOCK 4096u

/* Returns NULL with errno on failure. */
struct nbd_server *nbd_server_new(const struct nbd_server_config *cfg);
/* Export disk under name ("" is the default export). The disk must outlive the server.
 * Returns 0, -EEXIST for a duplicate name, -EINVAL for a name over 4096 bytes. */
int nbd_server_add_export(struct nbd_server *s, const char *name, const char *description,
                          struct bm_disk *disk, bool readonly);
/* Listen on every address host resolves to (NULL = all), or on a unix socket path. */
int nbd_server_listen_tcp(struct nbd_server *s, const char *host, const char *port);
int nbd_server_listen_unix(struct nbd_server *s, const char *path);
/* Serve until nbd_server_shutdown(): then stop accepting, stop reading new requests, let
 * in-flight requests finish and reply, close every connection, and return 0. Requests still
 * unfinished after drain_timeout_ms have their connections shut down (a WRITE whose payload
 * has not all arrived is never done); returns -ETIMEDOUT then. A failed poll of the listening
 * sockets ends serving the same way, and returns its -errno. Either way every connection
 * thread has ended (its request with it) when this returns. */
int nbd_server_run(struct nbd_server *s);
/* Async-signal-safe: ask nbd_server_run() to drain and return. */
void nbd_server_shutdown(struct nbd_server *s);
/* No request runs from now on (one whose header arrives later, or whose payload is still
 * arriving, is answered ESHUTDOWN without touching its export); wait, at most timeout_ms,
 * until no request is between its header and its reply. 0: nothing reaches an export any
 * more; -ETIMEDOUT: a request is still unfinished (a payload that stalls, a disk call that
 * hangs). The server keeps its connections and threads until nbd_server_shutdown: for a caller
 * that must know the exports are left alone now, and can end the connections (1-2 ms each)
 * later. */
int nbd_server_quiesce(struct nbd_server *s, unsigned timeout_ms);
/* Connections open now. */
unsigned nbd_server_connections(struct nbd_server *s);
/* Free a server whose run has returned (or never started). Removes its unix socket file. */
void nbd_server_free(struct nbd_server *s);

#endif
