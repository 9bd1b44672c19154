/* cpuid.c: the vCPUs' CPUID. A booted VM gets this host's KVM_GET_SUPPORTED_CPUID; a migrated
 * one gets its source's, carried in the VM description (HELLO), after a check that this host's
 * KVM can give the guest every CPU feature it was shown there: a guest that saw AVX-512 on the
 * source and resumed on a host without it would fault at its next AVX-512 instruction, after
 * the source had let it go. The destination refuses such a VM before anything is copied, and
 * the guest keeps running on the source (docs/vmm.md "CPUID"). */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "common/log.h"
#include "vm/kvm/kvm-internal.h"

/* The registers whose bits are CPU features (a bit the guest saw must be there on the new
 * host), by leaf and subleaf; KVM sets the dynamic ones from guest state (masked out). */
static const struct feature_reg {
    uint32_t function, index;
    uint8_t reg; /* 0 eax, 1 ebx, 2 ecx, 3 edx */
    uint32_t dynamic;
} feature_regs[] = {
    {0x1, 0, 2, (1u << 27) | (1u << 3)}, /* OSXSAVE (CR4), MONITOR (MISC_ENABLE) */
    {0x1, 0, 3, 1u << 9},                /* APIC (APIC_BASE enable) */
    {0x6, 0, 0, 0},
    {0x7, 0, 1, 0},
    {0x7, 0, 2, 1u << 4}, /* OSPKE (CR4) */
    {0x7, 0, 3, 0},
    {0x7, 1, 0, 0},
    {0x7, 1, 3, 0},
    {0x7, 2, 3, 0},
    {0xd, 0, 0, 0}, /* XCR0 bits */
    {0xd, 0, 3, 0},
    {0xd, 1, 0, 0}, /* XSAVEOPT, XSAVEC, XGETBV1, XSAVES */
    {0xd, 1, 2, 0}, /* XSS bits */
    {0xd, 1, 3, 0},
    {0x14, 0, 1, 0},
    {0x14, 0, 2, 0},
    {0x40000001, 0, 0, 0}, /* KVM paravirtual features */
    {0x80000001, 0, 2, 0},
    {0x80000001, 0, 3, 0},
    {0x80000007, 0, 3, 0}, /* invariant TSC */
    {0x80000008, 0, 1, 0},
    {0x8000000a, 0, 3, 0}, /* SVM features */
    {0x80000021, 0, 0, 0},
};

static const char reg_name[4][4] = {"EAX", "EBX", "ECX", "EDX"};

static uint32_t reg_of(const struct kvm_cpuid_entry2 *e, unsigned r)
{
    return r == 0 ? e->eax : r == 1 ? e->ebx : r == 2 ? e->ecx : e->edx;
}

/* The entry for (function, index); index counts only where KVM says it does. */
static const struct kvm_cpuid_entry2 *find(const struct kvm_cpuid2 *c, uint32_t function,
                                           uint32_t index)
{
    for (uint32_t i = 0; i < c->nent; i++) {
        const struct kvm_cpuid_entry2 *e = &c->entries[i];
        if (e->function == function &&
            (!(e->flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX) || e->index == index))
            return e;
    }
    return NULL;
}

int kvm_cpuid_compatible(const struct kvm_cpuid2 *want, const struct kvm_cpuid2 *host, char *why,
                         size_t len)
{
    size_t n = 0;
    if (len)
        why[0] = 0;
    int bad = 0;
    for (size_t i = 0; i < sizeof feature_regs / sizeof feature_regs[0]; i++) {
        const struct feature_reg *f = &feature_regs[i];
        const struct kvm_cpuid_entry2 *w = find(want, f->function, f->index);
        if (!w)
            continue;
        const struct kvm_cpuid_entry2 *h = find(host, f->function, f->index);
        uint32_t missing = reg_of(w, f->reg) & ~f->dynamic & ~(h ? reg_of(h, f->reg) : 0);
        if (!missing)
            continue;
        bad++;
        if (n < len)
            n += (size_t)snprintf(
                why + n, len - n, "%sleaf 0x%" PRIx32 ".%" PRIu32 " %s bits 0x%08" PRIx32,
                bad > 1 ? "; " : "", f->function, f->index, reg_name[f->reg], missing);
    }
    /* The guest's physical address width: the new host's must be as wide. */
    const struct kvm_cpuid_entry2 *w = find(want, 0x80000008, 0), *h = find(host, 0x80000008, 0);
    if (w && (w->eax & 0xff) > (h ? h->eax & 0xff : 0)) {
        bad++;
        if (n < len)
            n += (size_t)snprintf(why + n, len - n, "%s%u physical address bits, here %u",
                                  bad > 1 ? "; " : "", (unsigned)(w->eax & 0xff),
                                  h ? (unsigned)(h->eax & 0xff) : 0u);
    }
    return bad ? -1 : 0;
}

struct json_object *kvm_cpuid_to_json(const struct kvm_cpuid2 *c)
{
    struct json_object *a = json_object_new_array();
    for (uint32_t i = 0; i < c->nent; i++) {
        const struct kvm_cpuid_entry2 *e = &c->entries[i];
        struct json_object *t = json_object_new_array();
        const uint32_t v[7] = {e->function, e->index, e->flags, e->eax, e->ebx, e->ecx, e->edx};
        for (unsigned j = 0; j < 7; j++)
            json_object_array_add(t, json_object_new_int64(v[j]));
        json_object_array_add(a, t);
    }
    return a;
}

struct kvm_cpuid2 *kvm_cpuid_from_json(struct json_object *a, char *err, size_t errlen)
{
    if (!json_object_is_type(a, json_type_array) || json_object_array_length(a) == 0 ||
        json_object_array_length(a) > KVM_CPUID_MAX) {
        snprintf(err, errlen, "the VM description's CPUID is not a list of 1 to %u entries",
                 KVM_CPUID_MAX);
        return NULL;
    }
    size_t n = json_object_array_length(a);
    struct kvm_cpuid2 *c = calloc(1, sizeof *c + n * sizeof c->entries[0]);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->nent = (uint32_t)n;
    for (size_t i = 0; i < n; i++) {
        struct json_object *t = json_object_array_get_idx(a, i);
        uint32_t v[7];
        bool ok = json_object_is_type(t, json_type_array) && json_object_array_length(t) == 7;
        for (unsigned j = 0; ok && j < 7; j++) {
            struct json_object *x = json_object_array_get_idx(t, j);
            int64_t y = json_object_get_int64(x);
            ok = json_object_is_type(x, json_type_int) && y >= 0 && y <= UINT32_MAX;
            v[j] = (uint32_t)y;
        }
        if (!ok) {
            snprintf(err, errlen,
                     "the VM description's CPUID entry %zu is not 7 numbers of "
                     "32 bits [function, index, flags, eax, ebx, ecx, edx]",
                     i);
            free(c);
            return NULL;
        }
        c->entries[i] = (struct kvm_cpuid_entry2){.function = v[0],
                                                  .index = v[1],
                                                  .flags = v[2],
                                                  .eax = v[3],
                                                  .ebx = v[4],
                                                  .ecx = v[5],
                                                  .edx = v[6]};
    }
    return c;
}

/* This host's KVM_GET_SUPPORTED_CPUID (malloc'd), or NULL with errno set. */
static struct kvm_cpuid2 *supported(int kvm_fd)
{
    for (unsigned nent = 64; nent <= KVM_CPUID_MAX; nent *= 2) {
        struct kvm_cpuid2 *c = calloc(1, sizeof *c + nent * sizeof c->entries[0]);
        if (!c)
            return NULL;
        c->nent = nent;
        if (ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, c) == 0)
            return c;
        int e = errno;
        free(c);
        errno = e;
        if (e != E2BIG)
            return NULL;
    }
    errno = E2BIG;
    return NULL;
}

int kvm_setup_cpuid(struct kvm_vmm *k, struct kvm_vcpu *c, char *err, size_t errlen)
{
    if (!k->cpuid) {
        struct kvm_cpuid2 *host = supported(k->kvm_fd);
        if (!host)
            return kvm_sys_fail(err, errlen, "KVM_GET_SUPPORTED_CPUID");
        if (k->cfg.cpuid) {
            char why[512];
            if (kvm_cpuid_compatible(k->cfg.cpuid, host, why, sizeof why) < 0) {
                free(host);
                return kvm_fail(err, errlen, ENOTSUP,
                                "kvm: the guest was shown CPU features this host's KVM cannot give "
                                "it (%s): migrate it to a host with the same CPU and kernel",
                                why);
            }
            free(host);
            size_t sz = sizeof *k->cpuid + k->cfg.cpuid->nent * sizeof k->cpuid->entries[0];
            if (!(k->cpuid = malloc(sz)))
                return kvm_fail(err, errlen, ENOMEM, "kvm: out of memory");
            memcpy(k->cpuid, k->cfg.cpuid, sz);
        } else {
            k->cpuid = host;
        }
        k->cfg.cpuid = NULL; /* the caller's: not kept */
    }
    if (ioctl(c->fd, KVM_SET_CPUID2, k->cpuid) < 0)
        return kvm_sys_fail(err, errlen, "KVM_SET_CPUID2");
    return 0;
}
