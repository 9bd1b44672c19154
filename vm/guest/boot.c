/* boot.c: the guest's ring-0 part: descriptor tables, the TSC rate, then ring 3 for good.
 * Kept short on purpose: under kvm_pvm every ring-0 instruction is emulated (~1.5 us). */
#include "vm/guest/guest.h"

extern uint64_t gdt[];
extern const uint64_t trap_stubs[22];
extern char boot_stack_top[];
_Noreturn void enter_user(void (*entry)(const struct boot_info *), void *stack, const void *arg);
void boot_main(const struct hvm_start_info *si);
void trap(const uint64_t *frame);

struct tss {
    uint32_t reserved0;
    uint64_t rsp[3];
    uint64_t reserved1;
    uint64_t ist[7];
    uint64_t reserved2;
    uint16_t reserved3, iomap_base;
} __attribute__((packed));

struct idt_gate {
    uint16_t off0, sel;
    uint8_t ist, type;
    uint16_t off1;
    uint32_t off2, zero;
} __attribute__((packed));

static struct tss tss;
static struct idt_gate idt[22];
static struct boot_info bi;
static uint8_t user_stack[65536] __attribute__((aligned(16)));

/* The value of "key=" in the command line, or NULL; *len = its length. */
static const char *arg(const char *cmd, const char *key, size_t *len)
{
    size_t kl = strlen(key);
    const char *e;
    for (const char *p = cmd; (p = next_word(p, &e)); p = e)
        if ((size_t)(e - p) > kl && strncmp(p, key, kl) == 0) {
            *len = (size_t)(e - p) - kl;
            return p + kl;
        }
    return NULL;
}

/* PIT channel 0's current count (latched). */
static uint32_t pit_count(void)
{
    outb(0x43, 0x00);
    uint32_t lo = inb(0x40);
    return lo | (uint32_t)inb(0x40) << 8;
}

/* TSC ticks per ms, from PIT channel 0 (its gate is always on; channel 2's needs port 0x61,
 * which QEMU's microvm lacks) counting down ~10 ms in mode 2 from 65535; we never enable
 * interrupts, so reprogramming the timer channel disturbs nothing. 0 if there is no PIT (the
 * count does not move). */
static uint64_t pit_tsc_khz(void)
{
    const uint32_t want = 11932; /* 1193182 Hz x 10 ms */
    outb(0x43, 0x34);
    outb(0x40, 0xff);
    outb(0x40, 0xff);
    uint32_t c0 = pit_count(), elapsed = 0;
    uint64_t t0 = rdtsc();
    for (uint32_t i = 0; elapsed < want; i++) {
        if (i > 1000000)
            return 0;
        elapsed = (c0 - pit_count()) & 0xffff;
    }
    uint64_t t1 = rdtsc();
    return (t1 - t0) * 1193182 / ((uint64_t)elapsed * 1000);
}

void trap(const uint64_t *f)
{
    uint64_t cr2;
    __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
    cprintf("BMG fatal exception %u error 0x%lx rip 0x%lx cs 0x%lx rsp 0x%lx cr2 0x%lx\n",
            (unsigned)f[0], f[1], f[2], f[3], f[5], cr2);
    guest_exit(3);
}

void boot_main(const struct hvm_start_info *si)
{
    const char *cmd = si && si->magic == HVM_START_MAGIC && si->cmdline_paddr
                          ? (const char *)(uintptr_t)si->cmdline_paddr
                          : "";
    size_t len;
    const char *v = arg(cmd, "blkmig.console=", &len);
    uint64_t mmio = 0;
    if (v && parse_size(&v, v + len, &mmio) < 0)
        mmio = 0;
    console_init(mmio);
    if (!si || si->magic != HVM_START_MAGIC) {
        cprintf("BMG fatal: no PVH start info (magic 0x%x)\n", si ? si->magic : 0);
        guest_exit(2);
    }

    /* TSS (for the ring-0 stack of a fault taken in ring 3) and the exception gates. */
    uint64_t base = (uint64_t)(uintptr_t)&tss, limit = sizeof tss - 1;
    tss.rsp[0] = (uint64_t)(uintptr_t)boot_stack_top;
    tss.iomap_base = sizeof tss;
    gdt[5] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89ull << 40) |
             (((limit >> 16) & 0xf) << 48) | (((base >> 24) & 0xff) << 56);
    gdt[6] = base >> 32;
    __asm__ volatile("ltr %w0" : : "r"(0x28));
    for (unsigned i = 0; i < 22; i++) {
        uint64_t a = trap_stubs[i];
        idt[i] = (struct idt_gate){(uint16_t)a,         0x08, 0, 0x8e, (uint16_t)(a >> 16),
                                   (uint32_t)(a >> 32), 0};
    }
    struct {
        uint16_t limit;
        uint64_t base;
    } __attribute__((packed)) idtr = {sizeof idt - 1, (uint64_t)(uintptr_t)idt};
    __asm__ volatile("lidt %0" : : "m"(idtr));

    bi.si = si;
    bi.cmdline = cmd;
    v = arg(cmd, "tsc_khz=", &len);
    if (!v || parse_size(&v, v + len, &bi.tsc_khz) < 0 || bi.tsc_khz == 0) {
        bi.tsc_khz = pit_tsc_khz();
        bi.tsc_from_pit = true;
    }
    enter_user(guest_main, user_stack + sizeof user_stack, &bi);
}
