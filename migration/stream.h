/* stream.h: the migration stream: a versioned header, then typed, checksummed frames. */
#ifndef BM_MIGRATION_STREAM_H
#define BM_MIGRATION_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <json-c/json.h>
#include <stdint.h>

/*
 * Byte layout (docs/migration-stream.md has the whole story):
 *   stream header, sent once by each side: "BLKMIGST" | u32 version | u32 flags  (16 bytes)
 *   frame: u32 type | u32 length | payload[length] | u64 XXH3-64(type, length, payload)
 * All integers big-endian. A frame of unknown type, a length over MIG_FRAME_MAX, or a bad
 * checksum is a protocol error: the receiver drops the connection.
 */
#define MIG_STREAM_MAGIC "BLKMIGST"
#define MIG_STREAM_VERSION 1u
#define MIG_STREAM_HDR 16u
#define MIG_FRAME_HDR 8u
#define MIG_FRAME_TRAILER 8u
#define MIG_FRAME_MAX (16u << 20)

enum mig_frame_type {
    MIG_HELLO = 1,     /* source -> dest: JSON {token, vm description, options} */
    MIG_HELLO_ACK = 2, /* dest -> source: JSON {nbd_port, exports {disk: export name}} */
    MIG_RAM = 3,       /* source -> dest: page records (ram/ram.h) */
    MIG_RAM_ZLIB = 4,  /* source -> dest: u32 raw length | zlib(MIG_RAM payload) */
    MIG_STATE = 5,     /* source -> dest: the VM's saved state blob */
    MIG_COMPLETE = 6,  /* source -> dest: JSON {digests?}: everything is sent, resume */
    MIG_RESUMED = 7,   /* dest -> source: JSON {digest_ms, verified}: the VM runs there */
    MIG_ABORT = 8,     /* either way: JSON {reason}: give up this migration */
    MIG_PING = 9,      /* either way: keepalive; from dest: u64 stream bytes applied */
    MIG_REPORT = 10,   /* dest -> source, after RESUMED: JSON {guest_gap_ns} */
    MIG_DURABLE = 11,  /* dest -> source, after RESUMED: JSON {ok, flush_ms, error?}: the
                        * new images are flushed and in place */
    MIG_FRAME_TYPE_MAX = 11,
};

const char *mig_frame_name(uint32_t type);

/* Codec (pure functions). */
void mig_stream_header_encode(uint8_t out[MIG_STREAM_HDR]);
/* 0, or -EPROTO (not a blkmig stream) / -EPROTONOSUPPORT (other version). */
int mig_stream_header_check(const uint8_t in[MIG_STREAM_HDR]);
void mig_frame_encode(uint32_t type, const void *payload, uint32_t len,
                      uint8_t hdr[MIG_FRAME_HDR], uint8_t trailer[MIG_FRAME_TRAILER]);
/* Parse a frame header: 0, or -EPROTO for an unknown type, -EMSGSIZE for a length over max. */
int mig_frame_header_parse(const uint8_t hdr[MIG_FRAME_HDR], uint32_t *type, uint32_t *len);
/* 0 if the trailer matches header and payload, -EBADMSG otherwise. */
int mig_frame_verify(const uint8_t hdr[MIG_FRAME_HDR], const void *payload, uint32_t len,
                     const uint8_t trailer[MIG_FRAME_TRAILER]);

/* A connection carrying the stream. Sends are blocking (with the socket's send timeout);
 * receives wait at most timeout_ms. Not thread-safe: one sender thread, one receiver thread. */
struct mig_conn {
    int fd;
    uint64_t bytes_sent, bytes_received;
    uint8_t *rbuf; /* the last received payload (owned; reused) */
    size_t rcap;
    int frame_timeout_ms; /* once a frame has started, the time it has to finish (0: the same
                           * as the wait for it to start) */
    bool partial;         /* the last -ETIMEDOUT came in the middle of a frame: the stream is
                           * out of step and must be dropped */
};

void mig_conn_init(struct mig_conn *c, int fd);
void mig_conn_close(struct mig_conn *c);
int mig_send_header(struct mig_conn *c);
/* Wait for and check the peer's header. */
int mig_recv_header(struct mig_conn *c, int timeout_ms);
int mig_send(struct mig_conn *c, uint32_t type, const void *payload, uint32_t len);
int mig_send_json(struct mig_conn *c, uint32_t type, struct json_object *o);
/*
 * Receive one frame: wait at most timeout_ms for it to start (-ETIMEDOUT, c->partial false),
 * then frame_timeout_ms for the rest (-ETIMEDOUT with c->partial true). On success *payload points into c->rbuf (valid until the next
 * call) and is NUL-terminated after len bytes. -ECONNRESET on end of stream.
 */
int mig_recv(struct mig_conn *c, int timeout_ms, uint32_t *type, uint8_t **payload,
             uint32_t *len);
/* A ram_send_fn (ram/ram.h) over a struct mig_conn *: MIG_RAM or MIG_RAM_ZLIB frames. */
int64_t mig_send_ram(void *conn, bool zlib, const void *buf, uint32_t len);
/* Parse a JSON payload (an object), or NULL. */
struct json_object *mig_parse_json(const uint8_t *payload, uint32_t len);
/* The reason of an ABORT payload, escaped for a log line (bm_log_escape), into buf: the peer's
 * text never reaches a log or a terminal raw. "(no reason)" when there is none. */
const char *mig_abort_reason(const uint8_t *payload, uint32_t len, char *buf, size_t buflen);

#endif
