/* guest.h: the test guest's internal interfaces (freestanding: no libc; see docs/guest.md). */
#ifndef BM_GUEST_H
#define BM_GUEST_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GUEST_MAX_DISKS 8

/* PVH boot information (Xen's public/arch-x86/hvm/start_info.h, version 1). */
struct hvm_start_info {
    uint32_t magic; /* 0x336ec578 */
    uint32_t version;
    uint32_t flags;
    uint32_t nr_modules;
    uint64_t modlist_paddr;
    uint64_t cmdline_paddr;
    uint64_t rsdp_paddr;
    uint64_t memmap_paddr; /* version >= 1 */
    uint32_t memmap_entries;
    uint32_t reserved;
};
struct hvm_memmap_entry {
    uint64_t addr, size;
    uint32_t type, reserved;
};
#define HVM_START_MAGIC 0x336ec578u

/* What ring 0 hands to ring 3. */
struct boot_info {
    const struct hvm_start_info *si;
    const char *cmdline;
    uint64_t tsc_khz; /* 0 = unknown */
    bool tsc_from_pit;
};

/* lib.c */
void *memcpy(void *d, const void *s, size_t n);
void *memset(void *d, int c, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strncmp(const char *a, const char *b, size_t n);
int vfmt(char *buf, size_t len, const char *fmt, va_list ap);
int fmt(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* The next space-separated word of a command line at or after p (NULL at the end); *end is
 * where it ends. */
const char *next_word(const char *p, const char **end);
/* Parse an unsigned number (decimal or 0x hex) with an optional K/M/G (binary) suffix from
 * [*p, end); advances *p. -1 on no digits or overflow. */
int parse_size(const char **p, const char *end, uint64_t *out);

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}
static inline void outb(uint16_t port, uint8_t v)
{
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}
static inline uint8_t inb(uint16_t port)
{
    uint8_t v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline void outl(uint16_t port, uint32_t v)
{
    __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port));
}
#define barrier() __asm__ volatile("" ::: "memory")
static inline void mmio_w32(uintptr_t a, uint32_t v)
{
    barrier();
    *(volatile uint32_t *)a = v;
    barrier();
}
static inline uint32_t mmio_r32(uintptr_t a)
{
    barrier();
    uint32_t v = *(volatile uint32_t *)a;
    barrier();
    return v;
}

/* console.c: the serial port 0x3f8 (QEMU), or blkmig's MMIO console page. */
void console_init(uint64_t mmio_base);
void cprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
_Noreturn void guest_exit(unsigned code);

/* virtio.c: polling virtio-mmio (version 2) block devices. */
struct vblk {
    uintptr_t base;
    uint64_t size; /* bytes */
    uint16_t qsize, avail_idx, used_seen;
    struct vq *vq;
    uint64_t kick_ticks; /* TSC ticks without a completion before notifying again (0: never) */
    uint64_t kicks;      /* notifications repeated so far */
};
/* 0, or -1 with a message on the console. */
int vblk_init(struct vblk *d, uintptr_t base, unsigned slot);
/* Synchronous read/write of len bytes (a multiple of 512) at off. 0 or -1. A request that
 * has not completed after kick_ticks is notified again, with a "BMG warn" line (a notification
 * lost by a device, e.g. across a migration, would otherwise hang the guest for good; a
 * device ignores one for a request it has already taken). */
int vblk_rw(struct vblk *d, bool write, void *buf, uint32_t len, uint64_t off);

/* main.c */
_Noreturn void guest_main(const struct boot_info *bi);

#endif
