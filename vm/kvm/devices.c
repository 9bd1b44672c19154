/* devices.c: the micro-VM's devices, run in the vCPU thread at each I/O or MMIO exit:
 *  - the 8250 at 0x3f8 (output only: lines go to the console) and isa-debug-exit at 0xf4;
 *  - the MMIO console page at KVM_CONSOLE_GPA (docs/guest.md: +0x10 prints the NUL-terminated
 *    line at the written guest-physical address, +0x04 ends the run with a status);
 *  - virtio-mmio (version 2) block devices at KVM_VIRTIO_GPA + k * 0x1000, requests served
 *    at QueueNotify through bm_disk (so the dirty-block bitmap sees each write): by the I/O
 *    thread, which KVM wakes through an ioeventfd without the vCPU leaving KVM_RUN, or in the
 *    vCPU thread where there is no ioeventfd (devices under dev_mu either way);
 *    what the device writes into guest RAM (read data, status, used ring) is marked dirty;
 *    its interrupt line (GSI KVM_VIRTIO_IRQ + k) is high while InterruptStatus is non-zero,
 *    which a completion sets unless the driver asked for none (VRING_AVAIL_F_NO_INTERRUPT).
 * Console lines get a host timestamp; the guest's BMG status lines feed query(). */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/log.h"
#include "vm/kvm/kvm-internal.h"

/* ---- console ---- */

static uint64_t field(const char *line, const char *key)
{
    const char *p = strstr(line, key);
    return p ? strtoull(p + strlen(key), NULL, 10) : 0;
}

void kvm_console_line(struct kvm_vmm *k, const char *line)
{
    uint64_t now = kvm_now_ns();
    uint64_t t = now - k->boot_ns;
    char buf[600]; /* a guest line is at most 511 bytes */
    int n = snprintf(buf, sizeof buf, "[%5" PRIu64 ".%06" PRIu64 "] %s\n", t / 1000000000u,
                     t / 1000 % 1000000, line);
    if (n >= (int)sizeof buf) {
        n = (int)sizeof buf;
        buf[n - 1] = '\n';
    }
    if (k->console_fd >= 0) {
        /* A whole line per send; a reader gone away ends the socket console (no SIGPIPE). */
        for (int off = 0; n > 0 && off < n;) {
            ssize_t w = send(k->console_fd, buf + off, (size_t)(n - off), MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                bm_warn("kvm: the console socket failed (%s): no more console output",
                        strerror(errno));
                close(k->console_fd);
                k->console_fd = -2; /* ended: no output from here */
                break;
            }
            off += (int)w;
        }
    } else if (k->console_fd == -1) {
        fwrite(buf, 1, (size_t)n, k->console);
        fflush(k->console);
    }
    pthread_mutex_lock(&k->mu);
    if (k->last_line_ns && now - k->last_line_ns > k->max_line_gap_ns)
        k->max_line_gap_ns = now - k->last_line_ns;
    k->last_line_ns = now;
    bool status = strncmp(line, "BMG status ", 11) == 0;
    if (status) {
        k->status_lines++;
        k->hb = field(line, " hb=");
        k->ram_writes = field(line, " ram_writes=");
        k->ram_checks = field(line, " ram_checks=");
        k->disk_writes = field(line, " disk_writes=");
        k->disk_checks = field(line, " disk_checks=");
        k->errors = field(line, " errors=");
        k->max_gap_us = field(line, " max_gap_us=");
        k->last_gap_us = field(line, " gap_us=");
        if (k->resumed_pending) {
            k->resumed_pending = false;
            k->last_resume_gap_us = k->last_gap_us ? k->last_gap_us : 1;
        }
    }
    bool error = strncmp(line, "BMG error ", 10) == 0 || strncmp(line, "BMG fatal", 9) == 0;
    if (error && !k->first_error[0])
        snprintf(k->first_error, sizeof k->first_error, "%s", line);
    pthread_mutex_unlock(&k->mu);
    if (error) {
        struct json_object *d = json_object_new_object();
        json_object_object_add(d, "error", json_object_new_string(line));
        kvm_event(k, "guest-error", d);
    }
}

static void guest_exit(struct kvm_vmm *k, uint32_t status)
{
    pthread_mutex_lock(&k->mu);
    k->exit_status = (int)status;
    k->halted = true;
    pthread_mutex_unlock(&k->mu);
    struct json_object *d = json_object_new_object();
    json_object_object_add(d, "status", json_object_new_int((int)status));
    kvm_event(k, "guest-exit", d);
}

static void serial_out(struct kvm_vmm *k, uint8_t c)
{
    if (c == '\r')
        return;
    if (c == '\n' || k->serial_len == sizeof k->serial_line - 1) {
        k->serial_line[k->serial_len] = 0;
        kvm_console_line(k, k->serial_line);
        k->serial_len = 0;
        if (c == '\n')
            return;
    }
    k->serial_line[k->serial_len++] = (char)c;
}

void kvm_handle_io(struct kvm_vmm *k, struct kvm_run *run)
{
    uint8_t *data = (uint8_t *)run + run->io.data_offset;
    for (uint32_t i = 0; i < run->io.count; i++, data += run->io.size) {
        uint16_t port = run->io.port;
        if (run->io.direction == KVM_EXIT_IO_OUT) {
            if (port == 0x3f8)
                serial_out(k, data[0]);
            else if (port == 0xf4) {
                uint32_t v = 0;
                memcpy(&v, data, run->io.size < 4 ? run->io.size : 4);
                guest_exit(k, v);
            }
        } else {
            /* 8250 line status: transmitter empty; everything else floats high. */
            memset(data, port == 0x3fd ? 0x60 : 0xff, run->io.size);
        }
    }
}

/* ---- virtio-mmio block ---- */

#define VIRTIO_F_VERSION_1 (1ull << 32)
#define VIRTIO_BLK_F_FLUSH (1ull << 9)
#define DEV_FEATURES       (VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH)

struct vdesc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags, next;
};

static uint32_t blk_read(struct kvm_vblk *b, unsigned k, uint64_t off)
{
    switch (off) {
    case 0x000:
        return 0x74726976; /* "virt" */
    case 0x004:
        return 2;
    case 0x008:
        return b->disk ? 2 : 0; /* block; 0 = no device */
    case 0x00c:
        return 0x4d4b4c42; /* "BLKM" */
    case 0x010:
        return b->dev_feat_sel == 0   ? (uint32_t)DEV_FEATURES
               : b->dev_feat_sel == 1 ? (uint32_t)(DEV_FEATURES >> 32)
                                      : 0;
    case 0x034:
        return b->queue_sel == 0 ? KVM_QUEUE_MAX : 0;
    case 0x044:
        return b->queue_sel == 0 ? b->qready : 0;
    case 0x060:
        return b->isr;
    case 0x070:
        return b->status;
    case 0x0fc:
        return b->config_gen;
    case 0x100:
        return (uint32_t)(b->size / 512);
    case 0x104:
        return (uint32_t)(b->size / 512 >> 32);
    default:
        (void)k;
        return 0;
    }
}

/* The line follows isr != 0: level-triggered, as QEMU's virtio-mmio; an edge-triggered
 * IOAPIC pin sees the rising edge. */
static void blk_update_irq(struct kvm_vmm *k, struct kvm_vblk *b)
{
    unsigned idx = (unsigned)(b - k->blk);
    bool level = b->isr != 0;
    if (level == k->irq_level[idx])
        return;
    k->irq_level[idx] = level;
    if (k->set_irq)
        k->set_irq(k, KVM_VIRTIO_IRQ + idx, level);
}

void kvm_devices_loaded(struct kvm_vmm *k)
{
    for (unsigned i = 0; i < k->vm.ndisks; i++) {
        k->irq_level[i] = false;
        blk_update_irq(k, &k->blk[i]);
    }
}

#define VIRTIO_STATUS_DRIVER_OK   4u
#define VIRTIO_STATUS_NEEDS_RESET 0x40u

/* Whether two guest ranges [a, a + la) and [b, b + lb), both inside RAM, overlap. */
static bool overlaps(uint64_t a, uint64_t la, uint64_t b, uint64_t lb)
{
    return a < b + lb && b < a + la;
}

/* Whether [gpa, gpa + len) lies in guest RAM of ram_size bytes (kvm_gpa's test). */
static bool in_ram(uint64_t ram_size, uint64_t gpa, uint64_t len)
{
    return gpa < ram_size && len <= ram_size - gpa;
}

const char *kvm_vblk_rings_bad(uint64_t ram_size, const struct kvm_vblk *b)
{
    if (b->qnum == 0 || b->qnum > KVM_QUEUE_MAX || (b->qnum & (b->qnum - 1)))
        return "no valid queue size";
    /* The split virtqueue's areas (virtio 1.1, 2.6): descriptor table, driver area with its
     * flags, idx, ring and used_event, device area with its flags, idx, ring and avail_event. */
    uint64_t ld = 16ull * b->qnum, la = 6 + 2ull * b->qnum, lu = 6 + 8ull * b->qnum;
    if ((b->desc & 15) || (b->avail & 1) || (b->used & 3))
        return "a ring is misaligned";
    if (!in_ram(ram_size, b->desc, ld) || !in_ram(ram_size, b->avail, la) ||
        !in_ram(ram_size, b->used, lu))
        return "a ring is outside guest RAM";
    if (overlaps(b->desc, ld, b->avail, la) || overlaps(b->desc, ld, b->used, lu) ||
        overlaps(b->avail, la, b->used, lu))
        return "rings overlap";
    return NULL;
}

/* The driver broke the device's rules: stop serving the queue until it resets the device,
 * and tell it through a configuration change interrupt (what QEMU's virtio_error does). */
static void blk_needs_reset(struct kvm_vmm *k, struct kvm_vblk *b, const char *why)
{
    unsigned idx = (unsigned)(b - k->blk);
    if (b->status & VIRTIO_STATUS_NEEDS_RESET)
        return;
    /* One warning per disk: a guest that repeats the offence after each reset is not logged
     * again. */
    if (!k->blk_warned[idx])
        bm_warn("kvm: disk %s: the guest driver is broken (%s): the device needs a reset",
                k->vm.disks[idx].name, why);
    k->blk_warned[idx] = true;
    b->status |= VIRTIO_STATUS_NEEDS_RESET;
    if (b->status & VIRTIO_STATUS_DRIVER_OK) {
        b->config_gen++;
        b->isr |= 2; /* configuration change notification */
        blk_update_irq(k, b);
    }
}

static void blk_reset(struct kvm_vblk *b)
{
    struct bm_disk *d = b->disk;
    uint64_t size = b->size;
    memset(b, 0, sizeof *b);
    b->disk = d;
    b->size = size;
}

/* One request chain from head; returns the bytes written into guest memory. */
static uint32_t blk_request(struct kvm_vmm *k, struct kvm_vblk *b, uint16_t head)
{
    struct vdesc chain[KVM_QUEUE_MAX];
    unsigned n = 0;
    uint16_t i = head;
    for (;;) {
        struct vdesc *d = kvm_gpa(k, b->desc + (uint64_t)i * sizeof *d, sizeof *d);
        if (!d || n == b->qnum || n == KVM_QUEUE_MAX)
            return 0; /* a broken chain: dropped (a real device would mark itself broken) */
        chain[n++] = *d;
        if (!(d->flags & 1))
            break;
        i = d->next;
        if (i >= b->qnum)
            return 0;
    }
    if (n < 2)
        return 0;
    struct {
        uint32_t type, reserved;
        uint64_t sector;
    } hdr;
    void *hp = kvm_gpa(k, chain[0].addr, sizeof hdr);
    struct vdesc *st = &chain[n - 1];
    uint8_t *status = kvm_gpa(k, st->addr, 1);
    if (!hp || !status || !(st->flags & 2) || chain[0].len < sizeof hdr)
        return 0;
    memcpy(&hdr, hp, sizeof hdr);
    uint8_t s = 0; /* VIRTIO_BLK_S_OK */
    uint32_t written = 1;
    uint64_t off = hdr.sector * 512;
    for (unsigned j = 1; j + 1 < n && s == 0; j++) {
        struct vdesc *d = &chain[j];
        void *p = kvm_gpa(k, d->addr, d->len);
        if (!p) {
            s = 1; /* IOERR */
            break;
        }
        if (hdr.type == 0 || hdr.type == 1) {
            if (off + d->len > b->size || off + d->len < off) {
                s = 1;
                break;
            }
            int r;
            if (hdr.type == 0) {
                r = bm_disk_pread(b->disk, p, d->len, off);
                if (r >= 0) {
                    kvm_mark_dirty(k, d->addr, d->len);
                    written += d->len;
                }
            } else {
                r = bm_disk_pwrite(b->disk, p, d->len, off, 0);
            }
            if (r < 0)
                s = 1;
            off += d->len;
        } else if (hdr.type == 8) { /* GET_ID */
            size_t l = d->len < 20 ? d->len : 20;
            memset(p, 0, l);
            snprintf(p, l, "blkmig-vd%u", (unsigned)(b - k->blk));
            kvm_mark_dirty(k, d->addr, l);
            written += (uint32_t)l;
        } else {
            s = 2; /* UNSUPP */
        }
    }
    if (hdr.type == 4 && s == 0) /* FLUSH */
        s = bm_disk_flush(b->disk) < 0 ? 1 : 0;
    else if (hdr.type != 0 && hdr.type != 1 && hdr.type != 4 && hdr.type != 8)
        s = 2;
    *status = s;
    kvm_mark_dirty(k, st->addr, 1);
    return written;
}

/* Serves what the driver has made available. The driver's index is read once: everything the
 * device writes (used ring, read data) may land on the driver's ring if the guest put it
 * there, so re-reading it could chase the device's own writes for ever. */
static void blk_notify(struct kvm_vmm *k, struct kvm_vblk *b)
{
    if (!b->qready || !(b->status & VIRTIO_STATUS_DRIVER_OK) || b->qnum == 0 ||
        (b->status & VIRTIO_STATUS_NEEDS_RESET))
        return;
    volatile uint16_t *avail_flags = kvm_gpa(k, b->avail, 4);
    uint8_t *used = kvm_gpa(k, b->used, 4 + 8ull * b->qnum + 2);
    uint16_t *ring = kvm_gpa(k, b->avail + 4, 2ull * b->qnum);
    if (!avail_flags || !used || !ring) {
        blk_needs_reset(k, b, "a ring is outside guest RAM");
        return;
    }
    uint16_t avail_idx = __atomic_load_n(avail_flags + 1, __ATOMIC_ACQUIRE);
    if ((uint16_t)(avail_idx - b->last_avail) > b->qnum) {
        blk_needs_reset(k, b, "more buffers available than the queue holds");
        return;
    }
    bool served = false;
    while (b->last_avail != avail_idx) {
        uint16_t head = ring[b->last_avail % b->qnum];
        b->last_avail++;
        if (head >= b->qnum)
            continue;
        served = true;
        uint32_t len = blk_request(k, b, head);
        uint32_t *elem = (uint32_t *)(void *)(used + 4 + 8u * (b->used_idx % b->qnum));
        elem[0] = head;
        elem[1] = len;
        __atomic_thread_fence(__ATOMIC_RELEASE);
        b->used_idx++;
        memcpy(used + 2, &b->used_idx, 2);
        kvm_mark_dirty(k, b->used, 4 + 8ull * b->qnum);
    }
    /* The driver's flags are read after the used index is published (virtio 1.1, 2.6.7.2). */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (served && !(*avail_flags & 1)) { /* VRING_AVAIL_F_NO_INTERRUPT */
        b->isr |= 1;                     /* used buffer notification */
        blk_update_irq(k, b);
    }
}

static void blk_write(struct kvm_vmm *k, struct kvm_vblk *b, uint64_t off, uint32_t v)
{
    switch (off) {
    case 0x014:
        b->dev_feat_sel = v;
        break;
    case 0x020:
        if (b->drv_feat_sel < 2) {
            unsigned sh = 32 * b->drv_feat_sel;
            b->drv_features = (b->drv_features & ~(0xffffffffull << sh)) | ((uint64_t)v << sh);
        }
        break;
    case 0x024:
        b->drv_feat_sel = v;
        break;
    case 0x030:
        b->queue_sel = v;
        break;
    case 0x038:
        if (b->queue_sel == 0 && !b->qready && v && v <= KVM_QUEUE_MAX && !(v & (v - 1)))
            b->qnum = v;
        break;
    case 0x044:
        if (b->queue_sel != 0)
            break;
        /* The rings are checked once, here; while the queue is ready they cannot move. */
        if (v & 1) {
            const char *why = kvm_vblk_rings_bad(k->ram_size, b);
            if (why) {
                blk_needs_reset(k, b, why);
                break;
            }
        }
        b->qready = v & 1;
        break;
    case 0x050:
        if (v == 0)
            blk_notify(k, b);
        break;
    case 0x064:
        b->isr &= ~v;
        blk_update_irq(k, b);
        break;
    case 0x070:
        if (v == 0) {
            blk_reset(b);
            blk_update_irq(k, b);
        } else {
            /* FEATURES_OK only for features we offer, VERSION_1 included. */
            if ((v & 8) && !(b->status & 8) &&
                ((b->drv_features & ~DEV_FEATURES) || !(b->drv_features & VIRTIO_F_VERSION_1)))
                v &= ~8u;
            /* NEEDS_RESET is the device's to set, and only a reset clears it. */
            b->status = (v & ~VIRTIO_STATUS_NEEDS_RESET) | (b->status & VIRTIO_STATUS_NEEDS_RESET);
        }
        break;
    case 0x080:
    case 0x084:
    case 0x090:
    case 0x094:
    case 0x0a0:
    case 0x0a4: {
        uint64_t *q = off < 0x90 ? &b->desc : off < 0xa0 ? &b->avail : &b->used;
        if (b->queue_sel != 0 || b->qready)
            break;
        if (off & 4)
            *q = (*q & 0xffffffffull) | ((uint64_t)v << 32);
        else
            *q = (*q & ~0xffffffffull) | v;
        break;
    }
    default:
        break;
    }
}

/* ---- MMIO dispatch ---- */

void kvm_handle_mmio(struct kvm_vmm *k, struct kvm_run *run)
{
    uint64_t a = run->mmio.phys_addr, v = 0;
    uint32_t len = run->mmio.len;
    if (run->mmio.is_write)
        memcpy(&v, run->mmio.data, len < 8 ? len : 8);
    if (a >= KVM_CONSOLE_GPA && a < KVM_CONSOLE_GPA + 0x1000) {
        uint64_t off = a - KVM_CONSOLE_GPA;
        if (!run->mmio.is_write) {
            memset(run->mmio.data, 0, sizeof run->mmio.data);
            return;
        }
        if (off == 0x04) {
            guest_exit(k, (uint32_t)v);
        } else if (off == 0x10) {
            char line[512];
            const char *p = NULL;
            for (size_t n = 0; n < sizeof line - 1; n++) {
                p = kvm_gpa(k, v + n, 1);
                if (!p || !*p) {
                    line[n] = 0;
                    break;
                }
                line[n] = *p;
                line[n + 1] = 0;
            }
            size_t l = strlen(line);
            if (l && line[l - 1] == '\n')
                line[--l] = 0;
            kvm_console_line(k, line);
        } else if (off == 0x00) {
            serial_out(k, (uint8_t)v);
        }
        return;
    }
    if (a >= KVM_VIRTIO_GPA && a < KVM_VIRTIO_GPA + 0x1000ull * k->vm.ndisks) {
        unsigned idx = (unsigned)((a - KVM_VIRTIO_GPA) / 0x1000);
        uint64_t off = (a - KVM_VIRTIO_GPA) % 0x1000;
        struct kvm_vblk *b = &k->blk[idx];
        pthread_mutex_lock(&k->dev_mu);
        if (run->mmio.is_write) {
            if (len == 4)
                blk_write(k, b, off, (uint32_t)v);
        } else {
            uint32_t r = blk_read(b, idx, off & ~3ull);
            if (off >= 0x100 && (off & 3)) /* byte/word access to config space */
                r >>= 8 * (off & 3);
            memset(run->mmio.data, 0, sizeof run->mmio.data);
            memcpy(run->mmio.data, &r, len < 4 ? len : 4);
        }
        pthread_mutex_unlock(&k->dev_mu);
        return;
    }
    /* Unassigned: reads as all ones, writes ignored. */
    if (!run->mmio.is_write)
        memset(run->mmio.data, 0xff, sizeof run->mmio.data);
}

/* ---- the I/O thread ---- */

static void *io_main(void *arg)
{
    struct kvm_vmm *k = arg;
    pthread_setname_np(pthread_self(), "iothread");
    sigset_t set;
    sigfillset(&set);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    unsigned n = k->vm.ndisks;
    struct pollfd p[VM_MAX_DISKS + 1];
    for (unsigned i = 0; i < n; i++)
        p[i] = (struct pollfd){.fd = k->notify_fd[i], .events = POLLIN};
    p[n] = (struct pollfd){.fd = k->io_wake_fd, .events = POLLIN};
    while (!atomic_load(&k->io_quit)) {
        if (poll(p, n + 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            bm_error("kvm: the I/O thread's poll failed (%s): disk requests stop", strerror(errno));
            break;
        }
        for (unsigned i = 0; i < n; i++) {
            uint64_t v;
            if (!(p[i].revents & POLLIN) || read(p[i].fd, &v, sizeof v) != sizeof v)
                continue;
            pthread_mutex_lock(&k->dev_mu);
            if (!k->io_paused) { /* paused: kvm_io_pause served it already */
                blk_notify(k, &k->blk[i]);
                __atomic_store_n(&k->io_notifies, k->io_notifies + 1, __ATOMIC_RELAXED);
            }
            pthread_mutex_unlock(&k->dev_mu);
        }
    }
    return NULL;
}

int kvm_io_start(struct kvm_vmm *k)
{
    unsigned n = k->vm.ndisks, assigned = 0;
    int r = 0;
    for (unsigned i = 0; i < VM_MAX_DISKS; i++)
        k->notify_fd[i] = -1;
    if (!k->assign_notify || n == 0)
        return -ENOTSUP;
    k->io_wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (k->io_wake_fd < 0)
        return -errno;
    for (; assigned < n; assigned++) {
        int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (fd < 0) {
            r = -errno;
            break;
        }
        k->notify_fd[assigned] = fd;
        if ((r = k->assign_notify(k, assigned, fd, true)) < 0)
            break;
    }
    if (r == 0) {
        r = -pthread_create(&k->io_thread, NULL, io_main, k);
        k->io_started = r == 0;
    }
    if (r < 0) {
        for (unsigned i = 0; i < assigned; i++)
            k->assign_notify(k, i, k->notify_fd[i], false);
        for (unsigned i = 0; i <= assigned && i < n; i++)
            if (k->notify_fd[i] >= 0)
                close(k->notify_fd[i]);
        for (unsigned i = 0; i < VM_MAX_DISKS; i++)
            k->notify_fd[i] = -1;
        close(k->io_wake_fd);
        k->io_wake_fd = -1;
    }
    return r;
}

void kvm_io_stop(struct kvm_vmm *k)
{
    if (!k->io_started)
        return;
    atomic_store(&k->io_quit, true);
    uint64_t one = 1;
    if (write(k->io_wake_fd, &one, sizeof one) != sizeof one)
        bm_warn("kvm: waking the I/O thread: %s", strerror(errno));
    pthread_join(k->io_thread, NULL);
    k->io_started = false;
    for (unsigned i = 0; i < k->vm.ndisks; i++) {
        if (k->notify_fd[i] < 0)
            continue;
        k->assign_notify(k, i, k->notify_fd[i], false);
        close(k->notify_fd[i]);
        k->notify_fd[i] = -1;
    }
    close(k->io_wake_fd);
    k->io_wake_fd = -1;
    atomic_store(&k->io_quit, false);
}

void kvm_io_pause(struct kvm_vmm *k)
{
    pthread_mutex_lock(&k->dev_mu);
    k->io_paused = true;
    /* A notify the thread has not read yet: its requests are served now, before the state is
     * saved and the dirty logs are read (a later wake of the thread finds nothing to do). */
    for (unsigned i = 0; i < k->vm.ndisks; i++)
        blk_notify(k, &k->blk[i]);
    pthread_mutex_unlock(&k->dev_mu);
}

void kvm_io_resume(struct kvm_vmm *k)
{
    pthread_mutex_lock(&k->dev_mu);
    k->io_paused = false;
    pthread_mutex_unlock(&k->dev_mu);
}
