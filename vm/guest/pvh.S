/* pvh.S: the test guest's entry. A PVH loader (QEMU's -kernel, blkmig's micro-VM) enters
 * pvh_entry in 32-bit protected mode, paging off, flat segments, %ebx = hvm_start_info.
 * We switch to long mode with static page tables that identity-map the first 4 GiB with 2 MiB
 * pages, all user-accessible (the workload runs in ring 3 and touches RAM and MMIO directly;
 * the top GiB, where the MMIO windows are, uncached), then call boot_main() in 64-bit ring 0.
 * Nothing here loops over memory: ring-0 code is emulated instruction by instruction under
 * kvm_pvm, so the tables are built by the assembler, not at run time. */

#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define EFER 0xc0000080

    /* The PVH note. QEMU reads its descriptor as a pointer-sized value in an ELF64 file and
     * aligns the name to the PT_NOTE's p_align, so: 8-byte descriptor, 4-byte alignment. */
    .section .note.pvh, "a", @note
    .balign 4
    .long 4                       /* namesz */
    .long 8                       /* descsz */
    .long XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .balign 4
    .quad pvh_entry

    .section .text.entry, "ax"
    .code32
    .globl pvh_entry
pvh_entry:
    cli
    cld
    mov %ebx, %esi                /* hvm_start_info, kept for boot_main */
    mov $boot_stack_top, %esp
    mov %cr4, %eax
    or $0x20, %eax                /* PAE */
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $EFER, %ecx
    rdmsr
    or $0x100, %eax               /* LME */
    wrmsr
    mov %cr0, %eax
    or $0x80000023, %eax          /* PG | NE | MP | PE */
    and $0x9ffffffb, %eax         /* clear EM, CD, NW */
    mov %eax, %cr0
    lgdt gdt_desc
    ljmp $0x08, $long_entry

    .code64
long_entry:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    mov $boot_stack_top, %rsp
    mov %esi, %edi
    call boot_main
1:  hlt
    jmp 1b

/* enter_user(entry, stack, arg): iretq to 64-bit ring 3 with IOPL 3 (port I/O from ring 3
 * where the hypervisor allows it: QEMU's TCG does, kvm_pvm does not) and interrupts off. */
    .globl enter_user
enter_user:
    mov %rdi, %rax
    mov %rdx, %rdi
    pushq $0x1b                   /* SS: user data | 3 */
    pushq %rsi                    /* RSP */
    pushq $0x3002                 /* RFLAGS: IOPL 3, IF 0 */
    pushq $0x23                   /* CS: user code | 3 */
    pushq %rax                    /* RIP */
    xor %eax, %eax
    mov %eax, %ds
    mov %eax, %es
    iretq

/* Exception stubs: push the vector (and a dummy error code where the CPU pushes none), then
 * call trap(frame). Only for diagnosis: a fault is always fatal to the guest. */
    .macro stub n, err
    .globl trap_stub_\n
trap_stub_\n:
    .if \err == 0
    pushq $0
    .endif
    pushq $\n
    jmp trap_common
    .endm
    stub 0,0; stub 1,0; stub 2,0; stub 3,0; stub 4,0; stub 5,0; stub 6,0; stub 7,0
    stub 8,1; stub 9,0; stub 10,1; stub 11,1; stub 12,1; stub 13,1; stub 14,1; stub 15,0
    stub 16,0; stub 17,1; stub 18,0; stub 19,0; stub 20,0; stub 21,1
trap_common:
    mov %rsp, %rdi
    and $-16, %rsp
    call trap
2:  hlt
    jmp 2b

    .section .rodata
    .globl trap_stubs
    .balign 8
trap_stubs:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21
    .quad trap_stub_\n
    .endr

    .section .data
    /* GDT: 0x08 kernel code64, 0x10 kernel data, 0x18 user data, 0x20 user code64,
     * 0x28 TSS (16 bytes, filled in by boot_main). */
    .balign 16
    .globl gdt
gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00cff2000000ffff
    .quad 0x00affa000000ffff
    .quad 0, 0
gdt_end:
    .balign 8
gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt

    /* Page tables: PML4 -> one PDPT -> four PDs of 2 MiB pages (P|RW|US|PS; +PWT|PCD above
     * 3 GiB). */
    .balign 4096
pml4:
    .quad pdpt + 0x7
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x7
    .quad pd + 0x1007
    .quad pd + 0x2007
    .quad pd + 0x3007
    .fill 508, 8, 0
pd:
    .set i, 0
    .rept 1536
    .quad (i << 21) | 0x87
    .set i, i + 1
    .endr
    .rept 512
    .quad (i << 21) | 0x9f
    .set i, i + 1
    .endr

    .section .bss
    .balign 16
    .globl boot_stack_top
boot_stack:
    .skip 16384
boot_stack_top:
