/* state.c: saving and loading the micro-VM's state (a paused VM). The blob is
 * "BMKVMST1" then sections: u32 tag, u32 length, payload (host-endian kernel structures: both
 * ends run the same blkmig on x86-64). Per vCPU: MP_STATE, REGS, SREGS, XSAVE, XCRS, DEBUGREGS,
 * LAPIC, MSRS, VCPU_EVENTS (loaded in this order, Firecracker's: CPUID was set at creation);
 * VM: the irqchip (PIC master, slave, IOAPIC), PIT2, CLOCK; devices: each virtio-blk's
 * registers and queue cursors, the serial line in progress. docs/vmm.md lists the tags. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "common/log.h"
#include "vm/kvm/kvm-internal.h"

#define MAGIC "BMKVMST1"

enum tag {
    T_MP_STATE = 1,
    T_REGS,
    T_SREGS,
    T_XSAVE,
    T_XCRS,
    T_DEBUGREGS,
    T_LAPIC,
    T_MSRS,
    T_EVENTS,
    T_IRQCHIP = 32,
    T_PIT2,
    T_CLOCK,
    T_TSC,
    T_VBLK = 64,
    T_SERIAL,
};

/* The MSRs that carry guest state worth keeping (the rest are derived or constant). Not the
 * TSC: that travels in its own section (T_TSC) and is set after kvmclock; see docs/vmm.md. */
static const uint32_t msr_list[] = {
    0x174,      /* SYSENTER_CS */
    0x175,      /* SYSENTER_ESP */
    0x176,      /* SYSENTER_EIP */
    0x277,      /* PAT */
    0xc0000081, /* STAR */
    0xc0000082, /* LSTAR */
    0xc0000083, /* CSTAR */
    0xc0000084, /* SFMASK */
    0xc0000102, /* KERNEL_GS_BASE */
    0xc0000103, /* TSC_AUX */
    0x1a0,      /* MISC_ENABLE */
};
#define NMSRS (sizeof msr_list / sizeof msr_list[0])

/* T_TSC: the guest's TSC (docs/vmm.md "TSC"): a header, then one entry per vCPU. */
#define MSR_IA32_TSC 0x10u

uint64_t kvm_tsc_offset_after(uint64_t ofs_src, uint64_t kvmclock_src, uint64_t kvmclock_dst,
                              uint64_t tsc_src, uint64_t tsc_dst, uint64_t khz)
{
    /* ofs_src - (kvmclock_src - kvmclock_dst) * freq + (tsc_src - tsc_dst), modulo 2^64: the
     * guest TSC at kvmclock 0 stays where it was (Documentation/virt/kvm/devices/vcpu.rst). */
    __int128 dns = (__int128)(int64_t)(kvmclock_dst - kvmclock_src);
    uint64_t ticks = (uint64_t)(int64_t)(dns * (__int128)khz / 1000000);
    return ofs_src + ticks + (tsc_src - tsc_dst);
}

uint64_t kvm_tsc_value_after(uint64_t tsc_src, uint64_t realtime_src, uint64_t realtime_dst,
                             uint64_t khz)
{
    if (realtime_dst <= realtime_src)
        return tsc_src; /* a clock that went back counts as no time */
    return tsc_src + (uint64_t)((unsigned __int128)(realtime_dst - realtime_src) * khz / 1000000);
}

struct buf {
    uint8_t *p;
    size_t len, cap;
    int err;
};

static bool reserve(struct buf *b, size_t need)
{
    if (b->err)
        return false;
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 65536;
        while (cap < need)
            cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) {
            b->err = -ENOMEM;
            return false;
        }
        b->p = p;
        b->cap = cap;
    }
    return true;
}

static void put(struct buf *b, uint32_t tag, const void *data, uint32_t len)
{
    size_t need = b->len + 8 + len;
    if (!reserve(b, need))
        return;
    memcpy(b->p + b->len, &tag, 4);
    memcpy(b->p + b->len + 4, &len, 4);
    memcpy(b->p + b->len + 8, data, len);
    b->len = need;
}

#define GET(fd, req, obj, what)                                                                    \
    do {                                                                                           \
        if (ioctl(fd, req, obj) < 0) {                                                             \
            r = -errno;                                                                            \
            bm_error("kvm: saving state: %s: %s", what, strerror(errno));                          \
            goto out;                                                                              \
        }                                                                                          \
    } while (0)

/* A vCPU's TSC (IA32_TSC as the guest reads it now); -EIO. */
static int read_tsc(int fd, uint64_t *tsc)
{
    struct {
        struct kvm_msrs h;
        struct kvm_msr_entry e;
    } m = {.h = {.nmsrs = 1}, .e = {.index = MSR_IA32_TSC}};
    if (ioctl(fd, KVM_GET_MSRS, &m) != 1)
        return -EIO;
    *tsc = m.e.data;
    return 0;
}

/* kvmclock and every vCPU's TSC offset and value, with the host's CLOCK_REALTIME, taken when the
 * VM pauses (kvm_pause) and saved with the state. Taken at the pause, not at the save: where
 * the host's TSC is unstable (e.g. nested under an emulator: "Marking TSC unstable"), KVM
 * freezes a vCPU's TSC while it does not run (each vCPU ioctl reloads it from the value at its
 * last exit), so a save 50-70 ms into the pause read the TSC at the pause with the time of the
 * save, and the destination's guest came out that much behind. The pair (TSC, time) at the
 * pause is right either way: the destination adds the time since. */
int kvm_clock_snapshot(struct kvm_vmm *k)
{
    struct kvm_clock_snap *c = &k->clock_snap;
    memset(c, 0, sizeof *c);
    if (ioctl(k->vm_fd, KVM_GET_CLOCK, &c->clock) < 0) {
        int e = errno;
        bm_error("kvm: reading the clock (KVM_GET_CLOCK): %s", strerror(e));
        return -e;
    }
    c->tsc.h = (struct tsc_hdr){
        .realtime_ns = (c->clock.flags & KVM_CLOCK_REALTIME) ? c->clock.realtime : kvm_now_ns(),
        .nvcpus = k->nvcpus,
        .flags = TSC_OFFSETS | TSC_VALUES};
    int khz = k->nvcpus ? ioctl(k->vcpus[0].fd, KVM_GET_TSC_KHZ, 0) : 0;
    c->tsc.h.khz = khz > 0 ? (uint64_t)khz : 0;
    for (unsigned i = 0; i < k->nvcpus; i++) {
        struct kvm_device_attr a = {.group = KVM_VCPU_TSC_CTRL,
                                    .attr = KVM_VCPU_TSC_OFFSET,
                                    .addr = (uint64_t)(uintptr_t)&c->tsc.v[i].offset};
        if (ioctl(k->vcpus[i].fd, KVM_GET_DEVICE_ATTR, &a) < 0)
            c->tsc.h.flags &= ~TSC_OFFSETS; /* before Linux 5.16, or not this KVM */
        if (read_tsc(k->vcpus[i].fd, &c->tsc.v[i].guest_tsc) < 0)
            c->tsc.h.flags &= ~TSC_VALUES;
    }
    c->valid = true;
    return 0;
}

int kvm_save(struct vm *vm, void **out, size_t *outlen)
{
    struct kvm_vmm *k = K(vm);
    struct buf b = {0};
    int r = 0;
    if (!reserve(&b, 8))
        return -ENOMEM;
    memcpy(b.p, MAGIC, 8);
    b.len = 8;
    struct kvm_msrs *msrs = calloc(1, sizeof *msrs + NMSRS * sizeof(struct kvm_msr_entry));
    struct kvm_xsave *xs = calloc(1, sizeof *xs);
    if (!msrs || !xs) {
        r = -ENOMEM;
        goto out;
    }
    for (unsigned i = 0; i < k->nvcpus; i++) {
        int fd = k->vcpus[i].fd;
        struct kvm_mp_state mp;
        struct kvm_regs regs;
        struct kvm_sregs sregs;
        struct kvm_xcrs xcrs;
        struct kvm_debugregs dr;
        struct kvm_lapic_state lapic;
        struct kvm_vcpu_events ev;
        GET(fd, KVM_GET_MP_STATE, &mp, "MP_STATE");
        GET(fd, KVM_GET_REGS, &regs, "REGS");
        GET(fd, KVM_GET_SREGS, &sregs, "SREGS");
        GET(fd, KVM_GET_XSAVE, xs, "XSAVE");
        GET(fd, KVM_GET_XCRS, &xcrs, "XCRS");
        GET(fd, KVM_GET_DEBUGREGS, &dr, "DEBUGREGS");
        GET(fd, KVM_GET_LAPIC, &lapic, "LAPIC");
        msrs->nmsrs = NMSRS;
        for (unsigned m = 0; m < NMSRS; m++)
            msrs->entries[m] = (struct kvm_msr_entry){.index = msr_list[m]};
        int n = ioctl(fd, KVM_GET_MSRS, msrs);
        if (n < 0) {
            r = -errno;
            bm_error("kvm: saving state: MSRS: %s", strerror(errno));
            goto out;
        }
        msrs->nmsrs = (uint32_t)n; /* the first n were read */
        GET(fd, KVM_GET_VCPU_EVENTS, &ev, "VCPU_EVENTS");
        put(&b, T_MP_STATE, &mp, sizeof mp);
        put(&b, T_REGS, &regs, sizeof regs);
        put(&b, T_SREGS, &sregs, sizeof sregs);
        put(&b, T_XSAVE, xs, sizeof *xs);
        put(&b, T_XCRS, &xcrs, sizeof xcrs);
        put(&b, T_DEBUGREGS, &dr, sizeof dr);
        put(&b, T_LAPIC, &lapic, sizeof lapic);
        put(&b, T_MSRS, msrs, (uint32_t)(sizeof *msrs + msrs->nmsrs * sizeof msrs->entries[0]));
        put(&b, T_EVENTS, &ev, sizeof ev);
    }
    for (uint32_t chip = 0; chip < 3; chip++) {
        struct kvm_irqchip ic = {.chip_id = chip};
        GET(k->vm_fd, KVM_GET_IRQCHIP, &ic, "IRQCHIP");
        put(&b, T_IRQCHIP, &ic, sizeof ic);
    }
    struct kvm_pit_state2 pit;
    GET(k->vm_fd, KVM_GET_PIT2, &pit, "PIT2");
    put(&b, T_PIT2, &pit, sizeof pit);
    /* kvmclock and the TSCs as they were when the VM paused (kvm_clock_snapshot). */
    if (!k->clock_snap.valid && (r = kvm_clock_snapshot(k)) < 0)
        goto out;
    put(&b, T_CLOCK, &k->clock_snap.clock, sizeof k->clock_snap.clock);
    put(&b, T_TSC, &k->clock_snap.tsc,
        (uint32_t)(sizeof k->clock_snap.tsc.h + k->nvcpus * sizeof k->clock_snap.tsc.v[0]));
    for (unsigned d = 0; d < vm->ndisks; d++) {
        struct kvm_vblk v = k->blk[d];
        v.disk = NULL;
        put(&b, T_VBLK, &v, sizeof v);
    }
    put(&b, T_SERIAL, k->serial_line, (uint32_t)k->serial_len);
    r = b.err;
out:
    free(msrs);
    free(xs);
    if (r < 0) {
        free(b.p);
        return r;
    }
    *out = b.p;
    *outlen = b.len;
    return 0;
}

/* Sections with a fixed size must have it exactly. */
static bool sized(uint32_t tag, uint32_t len)
{
    switch (tag) {
    case T_MP_STATE:
        return len == sizeof(struct kvm_mp_state);
    case T_REGS:
        return len == sizeof(struct kvm_regs);
    case T_SREGS:
        return len == sizeof(struct kvm_sregs);
    case T_XSAVE:
        return len == sizeof(struct kvm_xsave);
    case T_XCRS:
        return len == sizeof(struct kvm_xcrs);
    case T_DEBUGREGS:
        return len == sizeof(struct kvm_debugregs);
    case T_LAPIC:
        return len == sizeof(struct kvm_lapic_state);
    case T_EVENTS:
        return len == sizeof(struct kvm_vcpu_events);
    case T_IRQCHIP:
        return len == sizeof(struct kvm_irqchip);
    case T_PIT2:
        return len == sizeof(struct kvm_pit_state2);
    case T_CLOCK:
        return len == sizeof(struct kvm_clock_data);
    case T_TSC:
        return len >= sizeof(struct tsc_hdr) &&
               (len - sizeof(struct tsc_hdr)) % sizeof(struct tsc_vcpu) == 0 &&
               (len - sizeof(struct tsc_hdr)) / sizeof(struct tsc_vcpu) <= KVM_MAX_VCPUS;
    case T_VBLK:
        return len == sizeof(struct kvm_vblk);
    case T_MSRS:
        return len >= sizeof(struct kvm_msrs) &&
               len <= sizeof(struct kvm_msrs) + NMSRS * sizeof(struct kvm_msr_entry) &&
               (len - sizeof(struct kvm_msrs)) % sizeof(struct kvm_msr_entry) == 0;
    case T_SERIAL: /* a partial line, kept with room for its terminating NUL */
        return len < sizeof(((struct kvm_vmm *)0)->serial_line);
    default:
        return false;
    }
}

/* The section at *p: its payload (NULL, logged, if the header or the payload is cut short or
 * the size is wrong for the tag); *p moves past it. */
static const uint8_t *next_section(const uint8_t **p, const uint8_t *end, uint32_t *tag,
                                   uint32_t *len)
{
    if (end - *p < 8) {
        bm_error("kvm: loading state: a truncated section header");
        return NULL;
    }
    memcpy(tag, *p, 4);
    memcpy(len, *p + 4, 4);
    const uint8_t *obj = *p + 8;
    if ((size_t)(end - obj) < *len || !sized(*tag, *len)) {
        bm_error("kvm: loading state: bad section %u (%u bytes)", *tag, *len);
        return NULL;
    }
    *p = obj + *len;
    return obj;
}

int kvm_state_check(const void *buf, size_t len, unsigned nvcpus, unsigned ndisks,
                    uint64_t ram_size)
{
    const uint8_t *p = buf, *end = p + len;
    if (len < 8 || memcmp(p, MAGIC, 8) != 0) {
        bm_error("kvm: loading state: not a KVM micro-VM state (a different backend?)");
        return -EPROTO;
    }
    p += 8;
    unsigned vcpu = 0, disk = 0;
    bool seen_events = false;
    while (p < end) {
        uint32_t tag, l;
        const uint8_t *obj = next_section(&p, end, &tag, &l);
        if (!obj)
            return -EPROTO;
        if (tag < T_IRQCHIP && vcpu >= nvcpus) {
            bm_error("kvm: loading state: more vCPUs than this VM has");
            return -EPROTO;
        }
        if (tag == T_MSRS) {
            /* The kernel reads as many entries as the count says from kvm_load's copy. */
            uint32_t nmsrs;
            memcpy(&nmsrs, obj + offsetof(struct kvm_msrs, nmsrs), sizeof nmsrs);
            if (nmsrs != (l - sizeof(struct kvm_msrs)) / sizeof(struct kvm_msr_entry)) {
                bm_error("kvm: loading state: %u MSRs in a section of %u", nmsrs, l);
                return -EPROTO;
            }
        } else if (tag == T_TSC) {
            struct tsc_hdr h;
            memcpy(&h, obj, sizeof h);
            if (h.nvcpus != nvcpus || l != sizeof h + h.nvcpus * sizeof(struct tsc_vcpu)) {
                bm_error("kvm: loading state: TSC of %u vCPUs for %u", h.nvcpus, nvcpus);
                return -EPROTO;
            }
        } else if (tag == T_VBLK) {
            struct kvm_vblk v;
            memcpy(&v, obj, sizeof v);
            if (disk >= ndisks) {
                bm_error("kvm: loading state: more disks than this VM has");
                return -EPROTO;
            }
            if (v.qnum > KVM_QUEUE_MAX || (v.qnum & (v.qnum - 1))) {
                bm_error("kvm: loading state: disk %u: queue size %u", disk, v.qnum);
                return -EPROTO;
            }
            const char *why = v.qready ? kvm_vblk_rings_bad(ram_size, &v) : NULL;
            if (why) {
                bm_error("kvm: loading state: disk %u: %s", disk, why);
                return -EPROTO;
            }
            disk++;
        } else if (tag == T_EVENTS) {
            seen_events = true;
            vcpu++;
        }
    }
    if (!seen_events || vcpu != nvcpus || disk != ndisks) {
        bm_error("kvm: loading state: %u of %u vCPUs and %u of %u disks in the state", vcpu, nvcpus,
                 disk, ndisks);
        return -EPROTO;
    }
    return 0;
}

/* Set a vCPU's TSC to the source's advanced by the host time since it was taken, through its
 * TSC offset (KVM_VCPU_TSC_OFFSET, Linux 5.16+): the new offset is the current one moved by
 * what the TSC lacks. Not by writing IA32_TSC: KVM takes a host write that lands within a
 * second of the TSC it expects from the last write as an attempt to synchronise vCPUs and,
 * where the host's TSC is unstable, adds the time since that last write to it (Linux 6.1
 * kvm_synchronize_tsc); a guest whose state went out and back in (a round trip, or a short-lived
 * destination) then jumped ahead by that much (seen: 3.2 s). Setting the offset is not subject
 * to that. -errno where the offset cannot be read or set (the caller writes IA32_TSC). */
static int set_tsc_relative(int fd, const struct tsc_vcpu *v, const struct tsc_hdr *h)
{
    uint64_t now_tsc;
    if (read_tsc(fd, &now_tsc) < 0)
        return -EIO;
    /* The offset after the TSC: where the host's TSC is unstable each vCPU ioctl moves the
     * offset so that the TSC reads as at the vCPU's last exit; the later offset is the one
     * that goes with now. */
    uint64_t ofs = 0;
    struct kvm_device_attr a = {.group = KVM_VCPU_TSC_CTRL,
                                .attr = KVM_VCPU_TSC_OFFSET,
                                .addr = (uint64_t)(uintptr_t)&ofs};
    if (ioctl(fd, KVM_GET_DEVICE_ATTR, &a) < 0)
        return -errno;
    uint64_t want = kvm_tsc_value_after(v->guest_tsc, h->realtime_ns, kvm_now_ns(), h->khz);
    ofs += want - now_tsc; /* modulo 2^64, as the hardware adds it */
    if (ioctl(fd, KVM_SET_DEVICE_ATTR, &a) < 0)
        return -errno;
    return 0;
}

/* Set the guest's TSC so that it goes on from the source's, counting the time the VM was
 * stopped (docs/vmm.md "TSC"): by KVM_VCPU_TSC_OFFSET with the kvmclock/host-TSC pair where
 * both ends have them (Linux 5.16+, a stable host TSC); else to the source's TSC advanced by
 * the host's CLOCK_REALTIME, through the offset (set_tsc_relative) or, before Linux 5.16, by
 * writing IA32_TSC. Where none takes (kvm_pvm), the guest's TSC is this host's: a warning,
 * not a failure (the guest runs on; a TSC-timed guest sees a jump). */
static void load_tsc(struct kvm_vmm *k, const struct kvm_clock_data *src, bool have_clock,
                     const void *obj)
{
    struct tsc_hdr h; /* one entry per vCPU follows (kvm_state_check) */
    memcpy(&h, obj, sizeof h);
    if (h.khz) {
        int khz = ioctl(k->vcpus[0].fd, KVM_GET_TSC_KHZ, 0);
        for (unsigned i = 0; khz > 0 && (uint64_t)khz != h.khz && i < k->nvcpus; i++)
            if (ioctl(k->vcpus[i].fd, KVM_SET_TSC_KHZ, (unsigned long)h.khz) < 0)
                bm_warn("kvm: the guest's TSC ran at %" PRIu64 " kHz, this host's at %d kHz, "
                        "and KVM cannot scale it: %s",
                        h.khz, khz, strerror(errno));
    }
    struct kvm_clock_data now = {0};
    const uint32_t both = KVM_CLOCK_REALTIME | KVM_CLOCK_HOST_TSC;
    bool by_offset = (h.flags & TSC_OFFSETS) && have_clock && (src->flags & both) == both &&
                     h.khz && ioctl(k->vm_fd, KVM_GET_CLOCK, &now) == 0 &&
                     (now.flags & KVM_CLOCK_HOST_TSC);
    const uint8_t *p = (const uint8_t *)obj + sizeof h;
    for (unsigned i = 0; i < k->nvcpus; i++) {
        struct tsc_vcpu v;
        memcpy(&v, p + i * sizeof v, sizeof v);
        int fd = k->vcpus[i].fd;
        if (by_offset) {
            uint64_t ofs = kvm_tsc_offset_after(v.offset, src->clock, now.clock, src->host_tsc,
                                                now.host_tsc, h.khz);
            struct kvm_device_attr a = {.group = KVM_VCPU_TSC_CTRL,
                                        .attr = KVM_VCPU_TSC_OFFSET,
                                        .addr = (uint64_t)(uintptr_t)&ofs};
            if (ioctl(fd, KVM_SET_DEVICE_ATTR, &a) == 0)
                continue;
            bm_debug("kvm: setting the TSC offset: %s", strerror(errno));
        }
        if (h.khz && (h.flags & TSC_VALUES) && set_tsc_relative(fd, &v, &h) == 0)
            continue;
        struct {
            struct kvm_msrs h;
            struct kvm_msr_entry e;
        } m = {.h = {.nmsrs = 1},
               .e = {.index = MSR_IA32_TSC,
                     .data = kvm_tsc_value_after(v.guest_tsc, h.realtime_ns, kvm_now_ns(), h.khz)}};
        if (!h.khz || !(h.flags & TSC_VALUES) || ioctl(fd, KVM_SET_MSRS, &m) != 1)
            bm_warn("kvm: the guest's TSC could not be carried over (vCPU %u): it follows this "
                    "host's from here",
                    i);
    }
}

/* The sections that go into KVM by one ioctl as they are; the others are handled by kind. */
static const struct {
    unsigned long req;
    const char *what;
} set_ioctl[] = {
    [T_MP_STATE] = {KVM_SET_MP_STATE, "MP_STATE"},
    [T_REGS] = {KVM_SET_REGS, "REGS"},
    [T_SREGS] = {KVM_SET_SREGS, "SREGS"},
    [T_XSAVE] = {KVM_SET_XSAVE, "XSAVE"},
    [T_XCRS] = {KVM_SET_XCRS, "XCRS"},
    [T_DEBUGREGS] = {KVM_SET_DEBUGREGS, "DEBUGREGS"},
    [T_LAPIC] = {KVM_SET_LAPIC, "LAPIC"},
    [T_MSRS] = {KVM_SET_MSRS, "MSRS"},
    [T_EVENTS] = {KVM_SET_VCPU_EVENTS, "VCPU_EVENTS"},
    [T_IRQCHIP] = {KVM_SET_IRQCHIP, "IRQCHIP"},
    [T_PIT2] = {KVM_SET_PIT2, "PIT2"},
};

int kvm_load(struct vm *vm, const void *buf, size_t len)
{
    struct kvm_vmm *k = K(vm);
    /* The whole blob is checked before the first section goes into KVM: a malformed one
     * leaves the VM as it was. From here on only the kernel can refuse a section. */
    int rc = kvm_state_check(buf, len, k->nvcpus, vm->ndisks, k->ram_size);
    if (rc < 0)
        return rc;
    const uint8_t *p = (const uint8_t *)buf + 8, *end = (const uint8_t *)buf + len;
    k->clock_snap.valid = false; /* the TSCs are the loaded ones from here */
    unsigned vcpu = 0, disk = 0;
    bool have_clock = false;
    struct kvm_clock_data clock_src = {0};
    while (p < end) {
        uint32_t tag, l;
        const uint8_t *sec = next_section(&p, end, &tag, &l);
        /* Copies: the payload is not aligned. */
        void *obj = malloc(l ? l : 1);
        if (!obj)
            return -ENOMEM;
        memcpy(obj, sec, l);
        int fd = tag < T_IRQCHIP ? k->vcpus[vcpu].fd : k->vm_fd;
        bool plain = tag < sizeof set_ioctl / sizeof set_ioctl[0];
        unsigned long req = plain ? set_ioctl[tag].req : 0;
        const char *what = plain ? set_ioctl[tag].what : NULL;
        switch (tag) {
        case T_EVENTS: /* the last section of a vCPU */
            vcpu++;
            break;
        case T_CLOCK: {
            /* kvmclock goes on from the source's value advanced by the time since
             * (KVM_CLOCK_REALTIME), or from the value itself where that is refused. */
            struct kvm_clock_data *c = obj;
            clock_src = *c;
            have_clock = true;
            c->flags &= KVM_CLOCK_REALTIME;
            if (c->flags && ioctl(k->vm_fd, KVM_SET_CLOCK, c) == 0)
                break;
            c->flags = 0;
            req = KVM_SET_CLOCK, what = "CLOCK";
            break;
        }
        case T_TSC:
            load_tsc(k, &clock_src, have_clock, obj);
            break;
        case T_VBLK: {
            struct kvm_vblk *v = obj;
            v->disk = k->blk[disk].disk;
            v->size = k->blk[disk].size;
            k->blk[disk++] = *v;
            break;
        }
        case T_SERIAL:
            memcpy(k->serial_line, obj, l);
            k->serial_len = l;
            break;
        }
        int r = 0;
        if (what) {
            int n = ioctl(fd, req, obj);
            if (n < 0 || (tag == T_MSRS && (uint32_t)n != ((struct kvm_msrs *)obj)->nmsrs)) {
                r = n < 0 ? -errno : -EPROTO;
                bm_error("kvm: loading state: %s: %s", what,
                         n < 0 ? strerror(-r) : "not every MSR was set");
            }
        }
        free(obj);
        if (r < 0)
            return r;
    }
    kvm_devices_loaded(k);
    k->loaded = true;
    return 0;
}
