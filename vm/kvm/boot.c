/* boot.c: loading a PVH ELF (vm/guest) into guest RAM and the vCPU state PVH asks for.
 * The ELF (32- or 64-bit) is loaded by its PT_LOAD program headers at their physical
 * addresses; its entry is the XEN_ELFNOTE_PHYS32_ENTRY note (type 18, owner "Xen", a 4- or
 * 8-byte address). The hvm_start_info (version 1) with the command line and a one-entry memory
 * map goes at KVM_START_INFO_GPA; the vCPU starts in 32-bit protected mode with flat 4 GiB
 * segments, paging off, %ebx = the start info (Xen's PVH boot ABI; QEMU and Firecracker set the
 * same state). */
#include <config.h>

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "vm/kvm/kvm-internal.h"

#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define HVM_START_MAGIC          0x336ec578u

struct hvm_start_info {
    uint32_t magic, version, flags, nr_modules;
    uint64_t modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
    uint32_t memmap_entries, reserved;
};
struct hvm_memmap_entry {
    uint64_t addr, size;
    uint32_t type, reserved;
};

/* The PVH entry from the notes in [p, p + len). */
static bool find_note(const uint8_t *p, size_t len, uint64_t *entry)
{
    size_t off = 0;
    while (off + 12 <= len) {
        uint32_t namesz, descsz, type;
        memcpy(&namesz, p + off, 4);
        memcpy(&descsz, p + off + 4, 4);
        memcpy(&type, p + off + 8, 4);
        size_t name = off + 12, desc = name + ((namesz + 3u) & ~3u);
        if (desc + descsz > len || desc < name)
            return false;
        if (type == XEN_ELFNOTE_PHYS32_ENTRY && namesz == 4 && memcmp(p + name, "Xen", 4) == 0 &&
            (descsz == 4 || descsz == 8)) {
            uint64_t v = 0;
            memcpy(&v, p + desc, descsz);
            *entry = v;
            return true;
        }
        off = desc + ((descsz + 3u) & ~3u);
    }
    return false;
}

int kvm_load_guest(struct kvm_vmm *k, uint64_t *entry, char *err, size_t errlen)
{
    const char *path = k->guest_path;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return kvm_fail(err, errlen, errno, "guest %s: cannot open", path);
    struct stat st;
    uint8_t *img = NULL;
    int r = -EINVAL;
    if (fstat(fd, &st) < 0 || st.st_size < (off_t)sizeof(Elf64_Ehdr) || st.st_size > (64 << 20)) {
        kvm_fail(err, errlen, EINVAL, "guest %s: not a PVH ELF (size)", path);
        goto out;
    }
    img = malloc((size_t)st.st_size);
    if (!img || pread(fd, img, (size_t)st.st_size, 0) != st.st_size) {
        kvm_fail(err, errlen, EIO, "guest %s: cannot read", path);
        r = -EIO;
        goto out;
    }
    size_t size = (size_t)st.st_size;
    if (memcmp(img, ELFMAG, SELFMAG) != 0 || img[EI_DATA] != ELFDATA2LSB) {
        kvm_fail(err, errlen, EINVAL, "guest %s: not a little-endian ELF", path);
        goto out;
    }
    bool is64 = img[EI_CLASS] == ELFCLASS64;
    uint64_t phoff, phnum, phentsize;
    if (is64) {
        Elf64_Ehdr *e = (Elf64_Ehdr *)(void *)img;
        phoff = e->e_phoff, phnum = e->e_phnum, phentsize = e->e_phentsize;
    } else {
        Elf32_Ehdr *e = (Elf32_Ehdr *)(void *)img;
        phoff = e->e_phoff, phnum = e->e_phnum, phentsize = e->e_phentsize;
    }
    if (phentsize < (is64 ? sizeof(Elf64_Phdr) : sizeof(Elf32_Phdr)) ||
        phoff + phnum * phentsize > size) {
        kvm_fail(err, errlen, EINVAL, "guest %s: bad program headers", path);
        goto out;
    }
    bool have_entry = false, loaded = false;
    for (uint64_t i = 0; i < phnum; i++) {
        uint64_t type, off, filesz, memsz, paddr;
        const uint8_t *ph = img + phoff + i * phentsize;
        if (is64) {
            const Elf64_Phdr *p = (const void *)ph;
            type = p->p_type, off = p->p_offset, filesz = p->p_filesz, memsz = p->p_memsz,
            paddr = p->p_paddr;
        } else {
            const Elf32_Phdr *p = (const void *)ph;
            type = p->p_type, off = p->p_offset, filesz = p->p_filesz, memsz = p->p_memsz,
            paddr = p->p_paddr;
        }
        if (off + filesz > size || off + filesz < off || filesz > memsz) {
            kvm_fail(err, errlen, EINVAL, "guest %s: a segment lies outside the file", path);
            goto out;
        }
        if (type == PT_NOTE && !have_entry)
            have_entry = find_note(img + off, filesz, entry);
        if (type != PT_LOAD || memsz == 0)
            continue;
        uint8_t *dst = kvm_gpa(k, paddr, memsz);
        if (!dst || paddr < 0x100000) {
            kvm_fail(err, errlen, EINVAL,
                     "guest %s: a segment does not fit in guest RAM above 1 MiB (--ram too small?)",
                     path);
            goto out;
        }
        memcpy(dst, img + off, filesz);
        memset(dst + filesz, 0, memsz - filesz);
        kvm_mark_dirty(k, paddr, memsz);
        loaded = true;
    }
    if (!have_entry || !loaded) {
        kvm_fail(err, errlen, EINVAL,
                 "guest %s: no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) or nothing to load", path);
        goto out;
    }

    /* Command line: what the guest needs to find its devices, then the workload. */
    char *cmd = kvm_gpa(k, KVM_CMDLINE_GPA, KVM_CMDLINE_MAX);
    size_t n = (size_t)snprintf(cmd, KVM_CMDLINE_MAX, "blkmig.console=0x%llx",
                                (unsigned long long)KVM_CONSOLE_GPA);
    for (unsigned d = 0; d < k->vm.ndisks && n < KVM_CMDLINE_MAX; d++)
        n += (size_t)snprintf(cmd + n, KVM_CMDLINE_MAX - n, " virtio_mmio.device=%u@0x%llx:%u",
                              KVM_VIRTIO_SIZE, (unsigned long long)(KVM_VIRTIO_GPA + 0x1000ull * d),
                              KVM_VIRTIO_IRQ + d);
    uint32_t khz = 0;
    int kr = ioctl(k->vcpus[0].fd, KVM_GET_TSC_KHZ, 0);
    if (kr > 0)
        khz = (uint32_t)kr;
    if (khz && n < KVM_CMDLINE_MAX)
        n += (size_t)snprintf(cmd + n, KVM_CMDLINE_MAX - n, " tsc_khz=%u", khz);
    if (n < KVM_CMDLINE_MAX)
        n += (size_t)snprintf(cmd + n, KVM_CMDLINE_MAX - n, " blkmig.status_ms=%u",
                              k->cfg.status_ms ? k->cfg.status_ms : 1000);
    if (k->workload && n < KVM_CMDLINE_MAX)
        n += (size_t)snprintf(cmd + n, KVM_CMDLINE_MAX - n, " blkmig.workload=%s", k->workload);
    if (k->extra && n < KVM_CMDLINE_MAX)
        n += (size_t)snprintf(cmd + n, KVM_CMDLINE_MAX - n, " %s", k->extra);
    if (n >= KVM_CMDLINE_MAX) {
        kvm_fail(err, errlen, E2BIG, "guest %s: command line too long", path);
        goto out;
    }
    kvm_mark_dirty(k, KVM_CMDLINE_GPA, KVM_CMDLINE_MAX);

    struct hvm_memmap_entry *mm = kvm_gpa(k, KVM_MEMMAP_GPA, sizeof *mm);
    *mm = (struct hvm_memmap_entry){0, k->ram_size, 1, 0};
    struct hvm_start_info *si = kvm_gpa(k, KVM_START_INFO_GPA, sizeof *si);
    *si = (struct hvm_start_info){.magic = HVM_START_MAGIC,
                                  .version = 1,
                                  .cmdline_paddr = KVM_CMDLINE_GPA,
                                  .memmap_paddr = KVM_MEMMAP_GPA,
                                  .memmap_entries = 1};
    kvm_mark_dirty(k, KVM_START_INFO_GPA, 0x1000);
    bm_debug("kvm: guest %s entry 0x%" PRIx64 ", command line: %s", path, *entry, cmd);
    r = 0;
out:
    free(img);
    close(fd);
    return r;
}

static void seg(struct kvm_segment *s, uint16_t sel, uint8_t type)
{
    *s = (struct kvm_segment){.base = 0,
                              .limit = 0xffffffff,
                              .selector = sel,
                              .type = type,
                              .present = 1,
                              .dpl = 0,
                              .db = 1,
                              .s = 1,
                              .l = 0,
                              .g = 1};
}

int kvm_setup_boot_vcpu(struct kvm_vmm *k, struct kvm_vcpu *c, uint64_t entry, char *err,
                        size_t errlen)
{
    /* A GDT in guest RAM matching the hidden segment state (null, code, data, TSS). */
    uint64_t *gdt = kvm_gpa(k, KVM_GDT_GPA, 4 * 8);
    gdt[0] = 0;
    gdt[1] = 0x00cf9b000000ffffull;
    gdt[2] = 0x00cf93000000ffffull;
    gdt[3] = 0x00008b0000000067ull;
    kvm_mark_dirty(k, KVM_GDT_GPA, 32);

    struct kvm_sregs sr;
    if (ioctl(c->fd, KVM_GET_SREGS, &sr) < 0)
        return kvm_sys_fail(err, errlen, "KVM_GET_SREGS");
    seg(&sr.cs, 0x08, 0xb);
    seg(&sr.ds, 0x10, 0x3);
    sr.es = sr.fs = sr.gs = sr.ss = sr.ds;
    sr.tr = (struct kvm_segment){
        .base = 0, .limit = 0x67, .selector = 0x18, .type = 0xb, .present = 1, .s = 0};
    sr.ldt = (struct kvm_segment){.type = 0x2, .present = 1, .unusable = 1};
    sr.gdt.base = KVM_GDT_GPA;
    sr.gdt.limit = 4 * 8 - 1;
    sr.idt.base = 0;
    sr.idt.limit = 0;
    sr.cr0 = 0x11; /* PE | ET */
    sr.cr3 = 0;
    sr.cr4 = 0;
    sr.efer = 0;
    if (ioctl(c->fd, KVM_SET_SREGS, &sr) < 0)
        return kvm_sys_fail(err, errlen, "KVM_SET_SREGS");
    struct kvm_regs regs = {.rip = entry, .rbx = KVM_START_INFO_GPA, .rflags = 0x2};
    if (ioctl(c->fd, KVM_SET_REGS, &regs) < 0)
        return kvm_sys_fail(err, errlen, "KVM_SET_REGS");
    return 0;
}
