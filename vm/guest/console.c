/* console.c: the guest's console. Two backends:
 *  - the 8250 serial port at 0x3f8 (QEMU; port I/O from ring 3 needs IOPL 3, which TCG honours),
 *    and QEMU's isa-debug-exit at 0xf4 to end the run with a status;
 *  - blkmig's MMIO console page (blkmig.console=ADDR on the command line): a u64 write of a
 *    line's guest-physical address to ADDR+0x10 prints that NUL-terminated line (one exit per
 *    line); a u32 write to ADDR+0x04 ends the run with that status. See docs/guest.md. */
#include "vm/guest/guest.h"

#define COM1       0x3f8
#define DEBUG_EXIT 0xf4
#define MMIO_EXIT  0x04
#define MMIO_LINE  0x10

static uint64_t mmio;
static char line[512];

void console_init(uint64_t mmio_base)
{
    mmio = mmio_base;
}

static void emit(const char *s, size_t n)
{
    if (mmio) {
        barrier();
        *(volatile uint64_t *)(uintptr_t)(mmio + MMIO_LINE) = (uint64_t)(uintptr_t)s;
        barrier();
        return;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\n')
            outb(COM1, '\r');
        outb(COM1, (uint8_t)s[i]);
    }
}

void cprintf(const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    int n = vfmt(line, sizeof line, f, ap);
    va_end(ap);
    if (n >= (int)sizeof line)
        n = sizeof line - 1;
    emit(line, (size_t)n);
}

_Noreturn void guest_exit(unsigned code)
{
    cprintf("BMG exit %u\n", code);
    if (mmio)
        mmio_w32((uintptr_t)(mmio + MMIO_EXIT), code);
    else
        outl(DEBUG_EXIT, code);
    for (;;)
        __asm__ volatile("pause");
}
