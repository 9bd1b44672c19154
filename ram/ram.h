/* ram.h: guest-RAM pre-copy: page encodings, the sender (source) and the loader (destination). */
#ifndef BM_RAM_RAM_H
#define BM_RAM_RAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/bitmap.h"
#include "vm/vm.h"

/*
 * A MIG_RAM payload is a sequence of records, each starting with a big-endian u64:
 *   bits 63..12  the page's guest-physical address (page aligned)
 *   bits 11..0   kind: RAM_REC_ZERO (the page is all zero; nothing follows)
 *                      RAM_REC_RAW  (4096 bytes of page data follow)
 * A MIG_RAM_ZLIB payload is u32 raw-length | a zlib stream that inflates to a MIG_RAM payload.
 */
#define RAM_REC_ZERO 1u
#define RAM_REC_RAW 2u
#define RAM_BATCH (1u << 20)   /* bytes of records per batch */
#define RAM_RAW_MAX (16u << 20) /* the largest inflated zlib batch accepted */

/* How the sender hands a batch to the stream (migration/ frames it): zlib says the batch is
 * u32 raw-length | zlib data. Returns the bytes it put on the wire, or -errno. */
typedef int64_t (*ram_send_fn)(void *opaque, bool zlib, const void *buf, uint32_t len);

/* Encode one page (zero pages as a marker) at p; returns bytes written (8 or 8 + 4096). */
size_t ram_encode_page(uint8_t *p, uint64_t gpa, const uint8_t *page, bool *was_zero);

/* Apply a MIG_RAM payload to the VM's RAM: 0, or -EBADMSG for a malformed record or an address
 * outside guest RAM (nothing past the bad record is applied). loaded (may be NULL) marks the
 * pages written so far: a zero record for a page never loaded touches nothing (fresh RAM is
 * zero already, and reading it would make the kernel allocate and clear it). */
int ram_apply(struct vm *vm, struct bm_bitmap *loaded, const uint8_t *payload, size_t len,
              uint64_t *pages);
/* Inflate and apply a MIG_RAM_ZLIB payload. */
int ram_apply_zlib(struct vm *vm, struct bm_bitmap *loaded, const uint8_t *payload, size_t len,
                   uint64_t *pages);

struct ram_stats {
    uint64_t pages_normal, pages_zero;
    uint64_t bytes;          /* stream bytes of RAM frames */
    uint64_t rounds;         /* completed passes (round 0 = the full pass) */
    uint64_t dirty_pages;    /* pages waiting to be sent */
    uint64_t nonzero_pages;  /* counted at start: the round-0 estimate */
};

struct ram_sender;

/* Prepare to send vm's RAM through send(opaque, ...); compress = zlib batches. */
struct ram_sender *ram_sender_new(struct vm *vm, ram_send_fn send, void *opaque, bool compress);
void ram_sender_free(struct ram_sender *s);
/* Count non-zero pages (for the controller's estimate of round 0). */
uint64_t ram_count_nonzero(struct vm *vm);
/* Start the dirty log (unless log_running: the caller started it earlier to watch the guest)
 * and mark every page for round 0. With log_running, the pages written since the log started
 * are the hot set: round 0 leaves them for the end (merged in when it wraps), since sending
 * them early would only send them twice. Until then every harvest adds the pages written
 * meanwhile to the hot set. */
int ram_sender_start(struct ram_sender *s, bool log_running);
/* Move what the guest dirtied since the last harvest into the pages to send. */
int ram_sender_harvest(struct ram_sender *s);
/* Send up to max_bytes of pages. Returns 0, or -errno from the stream. Wraps to the start of
 * the bitmap when it reaches the end (that completes a round), in the step that sends the
 * last page of the pass too. */
int ram_sender_step(struct ram_sender *s, uint64_t max_bytes);
/* While hold is set, round 0 stops at its end with the hot set (see ram_sender_start) still
 * unsent: the migration holds it while the disks' bulk copy has the link, so that the pages
 * the guest rewrites fastest go when they can go fastest. Releasing it when round 0 waits at
 * its end completes round 0 (the hot set, if any, is then to send). */
void ram_sender_hold_hot(struct ram_sender *s, bool hold);
void ram_sender_stats(struct ram_sender *s, struct ram_stats *st);

#endif
