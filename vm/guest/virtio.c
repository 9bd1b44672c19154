/* virtio.c: a polling virtio-mmio (version 2, "modern") block driver. One split virtqueue per
 * device, one request in flight, no interrupts (the ring asks for none): the guest runs in
 * ring 3 with interrupts off. Register offsets and the ring layout: the virtio 1.1 spec,
 * §4.2.2 (MMIO), §2.6 (split virtqueues), §5.2 (block device). */
#include "vm/guest/guest.h"

#define R_MAGIC               0x000
#define R_VERSION             0x004
#define R_DEVICE_ID           0x008
#define R_DEVICE_FEATURES     0x010
#define R_DEVICE_FEATURES_SEL 0x014
#define R_DRIVER_FEATURES     0x020
#define R_DRIVER_FEATURES_SEL 0x024
#define R_QUEUE_SEL           0x030
#define R_QUEUE_NUM_MAX       0x034
#define R_QUEUE_NUM           0x038
#define R_QUEUE_READY         0x044
#define R_QUEUE_NOTIFY        0x050
#define R_INTERRUPT_STATUS    0x060
#define R_INTERRUPT_ACK       0x064
#define R_STATUS              0x070
#define R_QUEUE_DESC          0x080
#define R_QUEUE_DRIVER        0x090
#define R_QUEUE_DEVICE        0x0a0
#define R_CONFIG              0x100

#define S_ACKNOWLEDGE 1
#define S_DRIVER      2
#define S_DRIVER_OK   4
#define S_FEATURES_OK 8
#define S_FAILED      128

#define F_VERSION_1_HI (1u << 0) /* feature bit 32 */

#define VRING_DESC_F_NEXT          1
#define VRING_DESC_F_WRITE         2
#define VRING_AVAIL_F_NO_INTERRUPT 1

#define BLK_T_IN  0
#define BLK_T_OUT 1

#define QSIZE 8

struct vdesc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags, next;
};

struct vq {
    struct vdesc desc[QSIZE]; /* 16-byte aligned */
    struct {
        uint16_t flags, idx, ring[QSIZE], used_event;
    } avail __attribute__((aligned(16)));
    struct {
        uint16_t flags, idx;
        struct {
            uint32_t id, len;
        } ring[QSIZE];
        uint16_t avail_event;
    } used __attribute__((aligned(16)));
    struct {
        uint32_t type, reserved;
        uint64_t sector;
    } hdr;
    volatile uint8_t status;
} __attribute__((aligned(4096)));

static struct vq queues[GUEST_MAX_DISKS];

static void w64(uintptr_t base, unsigned reg, uint64_t v)
{
    mmio_w32(base + reg, (uint32_t)v);
    mmio_w32(base + reg + 4, (uint32_t)(v >> 32));
}

int vblk_init(struct vblk *d, uintptr_t base, unsigned slot)
{
    if (slot >= GUEST_MAX_DISKS) {
        cprintf("BMG virtio: more than %u disks\n", GUEST_MAX_DISKS);
        return -1;
    }
    uint32_t magic = mmio_r32(base + R_MAGIC), version = mmio_r32(base + R_VERSION);
    uint32_t id = mmio_r32(base + R_DEVICE_ID);
    if (magic != 0x74726976 || id != 2) {
        cprintf("BMG virtio at 0x%lx: not a block device (magic 0x%x, device %u)\n", (uint64_t)base,
                magic, id);
        return -1;
    }
    if (version != 2) {
        cprintf("BMG virtio at 0x%lx: version %u, need 2 (QEMU: -global "
                "virtio-mmio.force-legacy=false)\n",
                (uint64_t)base, version);
        return -1;
    }
    mmio_w32(base + R_STATUS, 0);
    mmio_w32(base + R_STATUS, S_ACKNOWLEDGE);
    mmio_w32(base + R_STATUS, S_ACKNOWLEDGE | S_DRIVER);
    mmio_w32(base + R_DEVICE_FEATURES_SEL, 1);
    uint32_t hi = mmio_r32(base + R_DEVICE_FEATURES);
    if (!(hi & F_VERSION_1_HI)) {
        cprintf("BMG virtio at 0x%lx: no VIRTIO_F_VERSION_1\n", (uint64_t)base);
        mmio_w32(base + R_STATUS, S_FAILED);
        return -1;
    }
    mmio_w32(base + R_DRIVER_FEATURES_SEL, 0);
    mmio_w32(base + R_DRIVER_FEATURES, 0);
    mmio_w32(base + R_DRIVER_FEATURES_SEL, 1);
    mmio_w32(base + R_DRIVER_FEATURES, F_VERSION_1_HI);
    mmio_w32(base + R_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    if (!(mmio_r32(base + R_STATUS) & S_FEATURES_OK)) {
        cprintf("BMG virtio at 0x%lx: features refused\n", (uint64_t)base);
        mmio_w32(base + R_STATUS, S_FAILED);
        return -1;
    }
    struct vq *q = &queues[slot];
    memset(q, 0, sizeof *q);
    mmio_w32(base + R_QUEUE_SEL, 0);
    uint32_t max = mmio_r32(base + R_QUEUE_NUM_MAX);
    if (max < 3) {
        cprintf("BMG virtio at 0x%lx: queue too small (%u)\n", (uint64_t)base, max);
        mmio_w32(base + R_STATUS, S_FAILED);
        return -1;
    }
    d->qsize = max < QSIZE ? (uint16_t)max : QSIZE;
    mmio_w32(base + R_QUEUE_NUM, d->qsize);
    w64(base, R_QUEUE_DESC, (uint64_t)(uintptr_t)q->desc);
    w64(base, R_QUEUE_DRIVER, (uint64_t)(uintptr_t)&q->avail);
    w64(base, R_QUEUE_DEVICE, (uint64_t)(uintptr_t)&q->used);
    q->avail.flags = VRING_AVAIL_F_NO_INTERRUPT;
    mmio_w32(base + R_QUEUE_READY, 1);
    mmio_w32(base + R_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    uint64_t sectors = mmio_r32(base + R_CONFIG) | (uint64_t)mmio_r32(base + R_CONFIG + 4) << 32;
    d->base = base;
    d->size = sectors * 512;
    d->vq = q;
    d->avail_idx = 0;
    d->used_seen = 0;
    d->kick_ticks = 0;
    d->kicks = 0;
    return 0;
}

int vblk_rw(struct vblk *d, bool write, void *buf, uint32_t len, uint64_t off)
{
    struct vq *q = d->vq;
    if ((len | off) & 511 || off + len > d->size || len == 0)
        return -1;
    q->hdr.type = write ? BLK_T_OUT : BLK_T_IN;
    q->hdr.reserved = 0;
    q->hdr.sector = off / 512;
    q->status = 0xff;
    q->desc[0] = (struct vdesc){(uint64_t)(uintptr_t)&q->hdr, sizeof q->hdr, VRING_DESC_F_NEXT, 1};
    q->desc[1] =
        (struct vdesc){(uint64_t)(uintptr_t)buf, len,
                       (uint16_t)(VRING_DESC_F_NEXT | (write ? 0 : VRING_DESC_F_WRITE)), 2};
    q->desc[2] = (struct vdesc){(uint64_t)(uintptr_t)&q->status, 1, VRING_DESC_F_WRITE, 0};
    q->avail.ring[d->avail_idx % d->qsize] = 0;
    barrier();
    d->avail_idx++;
    *(volatile uint16_t *)&q->avail.idx = d->avail_idx;
    __asm__ volatile("mfence" ::: "memory");
    mmio_w32(d->base + R_QUEUE_NOTIFY, 0);
    uint64_t since = rdtsc();
    unsigned waits = 0;
    while (*(volatile uint16_t *)&q->used.idx == d->used_seen) {
        __asm__ volatile("pause" ::: "memory");
        uint64_t now = rdtsc();
        if (now < since) /* the TSC stepped back (a migration): start the wait again */
            since = now;
        if (d->kick_ticks && now - since >= d->kick_ticks) {
            waits++;
            d->kicks++;
            cprintf("BMG warn disk at 0x%lx: no completion after %u waits (avail %u, used %u), "
                    "notifying again\n",
                    (uint64_t)d->base, waits, d->avail_idx, *(volatile uint16_t *)&q->used.idx);
            mmio_w32(d->base + R_QUEUE_NOTIFY, 0);
            since = rdtsc();
        }
    }
    d->used_seen++;
    barrier();
    return q->status == 0 ? 0 : -1;
}
