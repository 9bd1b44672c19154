/* synth-internal.h: the synthetic guest's state, shared by its lifecycle and data files. */
#ifndef BM_VM_SYNTH_INTERNAL_H
#define BM_VM_SYNTH_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "vm/synth/synth.h"

/*
 * Guest RAM layout (the guest's own bookkeeping lives in its RAM, so it migrates with it):
 *   page 0                 superblock (magic, page count, disk count)
 *   pages 1..              generation table of RAM pages: uint32_t per page
 *   then, per disk         generation table of 4 KiB disk blocks: uint32_t per block
 *   [area_first, npages)   workload pages
 * A page or block with generation 0 was never written by the guest; otherwise it holds a
 * 32-byte header (index, generation, checksum, magic) and a body generated from (index,
 * generation), and its checksum covers the body.
 */
#define SYNTH_BLOCK 4096u
#define SYNTH_HDR 32u

struct synth_disk_meta {
    uint32_t *gen;   /* in guest RAM */
    uint64_t gen_gpa;
    uint64_t nblocks;
    uint64_t seq;    /* next block of the sequential pattern */
};

struct synth {
    struct vm vm;
    struct synth_workload w;
    uint8_t *ram;
    uint64_t ram_size, npages, area_first;
    uint32_t *page_gen; /* in guest RAM */
    struct synth_disk_meta dm[VM_MAX_DISKS];
    struct bm_bitmap *dirty; /* pages written since the last harvest */
    synth_event_fn fn;
    void *opaque;

    pthread_t threads[2];
    unsigned nthreads;
    bool started;
    pthread_mutex_t mu; /* protects parked, want_pause (writes), first_error */
    pthread_cond_t cv;
    atomic_bool want_pause, quit;
    unsigned parked;
    atomic_uint throttle;

    /* Heartbeats (CLOCK_REALTIME ns, so two processes on one host agree). */
    atomic_uint_fast64_t last_hb_ns, max_gap_ns, last_resume_gap_ns, hb_count;
    atomic_bool resumed_pending;
    uint64_t mem_seq;

    atomic_uint_fast64_t ram_writes, disk_writes, ram_checks, disk_checks, errors;
    char first_error[256];
};

uint64_t synth_now_ns(void);
/* xorshift64* */
uint64_t synth_rand(uint64_t *state);

void synth_write_page(struct synth *s, uint64_t idx);
/* 0 if the page matches its generation, -1 (error recorded) otherwise. */
int synth_check_page(struct synth *s, uint64_t idx);
/* Write blocks [first, first + n) of disk k as one I/O. */
int synth_write_blocks(struct synth *s, unsigned k, uint64_t first, uint32_t n, uint8_t *buf);
int synth_check_block(struct synth *s, unsigned k, uint64_t block, uint8_t *buf);
void synth_record_error(struct synth *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void synth_mark_gpa(struct synth *s, const void *p, size_t len);

#endif
