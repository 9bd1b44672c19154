/* server-internal.h: NBD server state shared by server.c, handshake.c and transmission.c. */
#ifndef BM_NBD_SERVER_INTERNAL_H
#define BM_NBD_SERVER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/log.h"
#include "nbd/protocol.h"
#include "nbd/server.h"

#define NBD_SERVER_MAX_LISTEN 16
/* Option payloads we parse are small; anything larger than this is refused. */
#define NBD_MAX_OPTION_DATA (64u * 1024)
/* Option payloads larger than this are a denial of service: disconnect. */
#define NBD_MAX_OPTION_DISCARD (16u * 1024 * 1024)
/* Options one connection may send before it is dropped. */
#define NBD_MAX_OPTIONS 1024
/* Seconds a reply may wait for the client to make room before the connection is dropped. */
#define NBD_SEND_TIMEOUT 60
/* Seconds a client may take over the handshake. */
#define NBD_HANDSHAKE_TIMEOUT 30
/* Size of a connection's input buffer. */
#define NBD_CONN_RBUF_SIZE (64u * 1024)
/* Request payload bytes (READ and WRITE buffers) one connection, and the whole server, may
 * hold at once; past either, a connection stops reading requests until replies drain. */
#define NBD_CONN_MAX_INFLIGHT   (64u * 1024 * 1024)
#define NBD_SERVER_MAX_INFLIGHT (256u * 1024 * 1024)
/* Context id for base:allocation. */
#define NBD_CONTEXT_BASE_ALLOCATION 1

struct nbd_export {
    char *name;
    char *description;
    struct bm_disk *disk;
    bool readonly;
};

struct nbd_server {
    struct nbd_server_config cfg;
    struct nbd_export *exports;
    unsigned nexports;
    int listen_fds[NBD_SERVER_MAX_LISTEN];
    int nlisten;
    char *unix_path;
    int stop_pipe[2];
    _Atomic bool stopping;
    /* nbd_server_quiesce: requests read from now on are refused, not run. requests counts
     * those between their header and their reply. */
    _Atomic bool quiesced;
    _Atomic unsigned requests;
    /* lock protects conns, nconns; cond signals nconns going down. */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct nbd_conn *conns;
    unsigned nconns;
    uint64_t next_conn_id;
    /* mem_lock protects mem_inflight and every conn's mem_inflight; mem_cond signals a
     * release. */
    pthread_mutex_t mem_lock;
    pthread_cond_t mem_cond;
    uint64_t mem_inflight;
};

/* One client connection. Negotiated fields are written by the handshake (one thread) before
 * any worker starts, then only read. */
struct nbd_conn {
    struct nbd_server *server;
    int fd;
    uint64_t id;
    /* Negotiated. */
    const struct nbd_export *exp;
    uint16_t tflags;
    bool no_zeroes;
    bool structured;
    bool base_allocation;
    const struct nbd_export *meta_exp; /* export the meta context was set for */
    _Atomic bool transmitting;         /* handshake done: readers watch the stop pipe */
    _Atomic bool spoke;                /* the client has sent its flags (not a silent stray) */
    bool evicted;                      /* shut down to make room; under server->lock */
    /* read_lock: one thread reads a request (header and payload) at a time.
     * write_lock: one reply is written whole at a time. */
    pthread_mutex_t read_lock;
    pthread_mutex_t write_lock;
    /* Input buffer, under read_lock: pipelined requests are parsed from one recv. */
    uint8_t *rbuf;
    size_t rpos, rlen;
    /* lock protects nthreads, busy, closing. */
    pthread_mutex_t lock;
    unsigned nthreads;
    unsigned busy;
    bool closing;
    uint64_t mem_inflight;        /* payload bytes of running requests, under server->mem_lock */
    struct nbd_conn *next, *prev; /* server->conns, under server->lock */
};

/* A decoded request header. */
struct nbd_request {
    uint16_t flags;
    uint16_t type;
    uint64_t cookie;
    uint64_t offset;
    uint32_t length;
};

/* What validation needs to know about the connection. */
struct nbd_request_caps {
    uint64_t size;
    bool readonly;
    bool structured;
    bool base_allocation;
};

/* request.c */
int nbd_request_decode(const uint8_t buf[NBD_REQUEST_SIZE], struct nbd_request *req);
/* 0 when the request may run, else the errno value to reply with. */
int nbd_request_validate(const struct nbd_request *req, const struct nbd_request_caps *caps);
/* The NBD wire error for an errno value (the one place errno meets the wire). */
uint32_t nbd_errno_to_wire(int err);
const char *nbd_cmd_name(uint16_t type);

/* handshake.c */
/* Run the fixed-newstyle handshake. 0: enter transmission with c->exp set; 1: the client
 * ended negotiation (ABORT or hang-up); negative: protocol violation or I/O error. */
int nbd_handshake(struct nbd_conn *c);
/* Parse the payload of NBD_OPT_INFO/GO. name gets the export name NUL-terminated (size
 * NBD_MAX_STRING + 1); reqs gets up to max_reqs info requests; *nreqs the count sent.
 * Returns 0 or -EINVAL on a malformed payload. */
int nbd_parse_info_opt(const uint8_t *data, uint32_t len, char *name, uint32_t *name_len,
                       uint16_t *reqs, uint16_t max_reqs, uint16_t *nreqs);
/* Check the payload of NBD_OPT_{LIST,SET}_META_CONTEXT; on success name/name_len as above,
 * *nqueries and *queries_off (offset of the first query in data). -EINVAL if malformed. */
int nbd_parse_meta_opt(const uint8_t *data, uint32_t len, char *name, uint32_t *name_len,
                       uint32_t *nqueries, uint32_t *queries_off);
const struct nbd_export *nbd_server_find_export(const struct nbd_server *s, const char *name,
                                                uint32_t name_len);
uint16_t nbd_export_tflags(const struct nbd_export *e, bool structured);

/* transmission.c: the worker loop (a thread start routine taking a struct nbd_conn *). */
void *nbd_conn_worker(void *arg);
/* Start one more worker for c if all are busy (c->lock held by the caller). */
void nbd_conn_maybe_grow_locked(struct nbd_conn *c);

/* server.c */
/* Export names as log lines may show them: hidden exports' names are secrets, so they appear
 * only at debug level; above it they read "(secret)". */
const char *nbd_conn_export_label(const struct nbd_conn *c);
enum bm_log_level nbd_server_name_log_level(const struct nbd_server *s);
/* A worker is leaving; the last one closes and frees the connection. */
void nbd_conn_thread_exit(struct nbd_conn *c);
int nbd_conn_spawn_thread(struct nbd_conn *c);

#endif
