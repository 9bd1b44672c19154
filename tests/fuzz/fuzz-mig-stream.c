/* fuzz-mig-stream.c: the migration stream as a destination (and a source) receives it: the
 * stream header and frames through mig_recv (migration/stream.c) over a socketpair, then each
 * frame's record the way its receiver takes it: HELLO's VM description (disks: mig_disks_check,
 * the synthetic workload, a KVM CPUID, the VM factory of cli/vmproc.c, a QEMU VM's version,
 * command line and disks: mig_qemu_hello_check), RAM and RAM_ZLIB records
 * (ram/ram.c) into a 256 KiB synthetic VM, STATE blobs (the synthetic VM's load_state),
 * COMPLETE/ABORT/PING and the source's HELLO_ACK/RESUMED/REPORT/DURABLE. Input: u8 flags (bit 0: frames
 * carry their own trailer, else the harness checksums them; bit 1: the next 16 bytes are the stream
 * header, else a valid one), then frames, each u32 type | u32 length | up to length bytes of
 * payload [| 8 bytes of trailer]. */
#include <config.h>

#include "cli/vmproc.h"
#include "common/io.h"
#include "migration/migration.h"
#include "migration/qemu-migration.h"
#include "migration/stream.h"
#include "ram/ram.h"
#include "tests/fuzz/fuzz.h"
#include "vm/kvm/kvm.h"
#include "vm/synth/synth.h"

#define RAM_SIZE (256u << 10)

static struct vm *vm;

static void teardown(void)
{
    vm_destroy(vm);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_quiet();
    struct synth_workload w;
    synth_workload_default(&w);
    char err[256];
    if (synth_create(RAM_SIZE, NULL, 0, &w, false, NULL, NULL, &vm, err, sizeof err) < 0) {
        fprintf(stderr, "synth_create: %s\n", err);
        abort();
    }
    atexit(teardown);
    return 0;
}

/* The bytes on the wire for the input. */
static size_t wire_bytes(const uint8_t *data, size_t size, uint8_t *out)
{
    struct fuzz_in in = {data, size, false};
    uint8_t flags = fuzz_u8(&in);
    size_t n = MIG_STREAM_HDR;
    if (flags & 2)
        fuzz_take(&in, out, MIG_STREAM_HDR);
    else
        mig_stream_header_encode(out);
    while (in.left >= MIG_FRAME_HDR) {
        uint8_t *hdr = out + n;
        memcpy(hdr, in.p, MIG_FRAME_HDR);
        in.p += MIG_FRAME_HDR;
        in.left -= MIG_FRAME_HDR;
        uint32_t len = bm_get_be32(hdr + 4);
        size_t k = len < in.left ? len : in.left;
        memcpy(hdr + MIG_FRAME_HDR, in.p, k);
        in.p += k;
        in.left -= k;
        n += MIG_FRAME_HDR + k;
        if (flags & 1) {
            fuzz_take(&in, out + n, MIG_FRAME_TRAILER);
        } else {
            uint8_t h2[MIG_FRAME_HDR];
            mig_frame_encode(bm_get_be32(hdr), hdr + MIG_FRAME_HDR, (uint32_t)k, h2, out + n);
        }
        n += MIG_FRAME_TRAILER;
    }
    return n;
}

static const char *str(struct json_object *o, const char *key)
{
    struct json_object *x;
    return o && json_object_object_get_ex(o, key, &x) ? json_object_get_string(x) : NULL;
}

static int64_t num(struct json_object *o, const char *key)
{
    struct json_object *x;
    return o && json_object_object_get_ex(o, key, &x) ? json_object_get_int64(x) : 0;
}

/* HELLO: what the destination checks before it creates anything. */
static void hello(struct json_object *h)
{
    struct json_object *vmd, *x;
    char err[256] = "";
    if (!json_object_object_get_ex(h, "vm", &vmd) || !json_object_object_get_ex(vmd, "disks", &x))
        return;
    if (mig_disks_check(x, err, sizeof err) < 0 && !err[0])
        abort(); /* a refusal says why */
    (void)num(vmd, "ram");
    (void)str(vmd, "kind");
    struct synth_workload w;
    synth_workload_default(&w);
    if (json_object_object_get_ex(vmd, "workload", &x))
        synth_workload_from_json(x, &w, err, sizeof err);
    if (json_object_object_get_ex(vmd, "cpuid", &x))
        free(kvm_cpuid_from_json(x, err, sizeof err));
    /* A QEMU VM: the checks made before QEMU or an image is (migration/dest-qemu.c). */
    const char *kind = str(vmd, "kind");
    if (kind && strcmp(kind, "qemu") == 0) {
        err[0] = '\0';
        if (mig_qemu_hello_check(h, err, sizeof err) < 0 && !err[0])
            abort(); /* a refusal says why */
        return;
    }
    /* The destination's factory (cli/vmproc.c), but neither a KVM guest (it would open
     * /dev/kvm where there is one) nor a synthetic guest of more than 1 MiB. */
    if ((kind && strcmp(kind, "kvm") == 0) || (uint64_t)num(vmd, "ram") > (1u << 20))
        return;
    err[0] = '\0';
    struct vm *v = vmproc_factory(NULL, vmd, NULL, 0, err, sizeof err);
    if (!v && !err[0])
        abort(); /* a refusal says why */
    vm_destroy(v);
}

static void frame(uint32_t type, const uint8_t *pl, uint32_t len, struct bm_bitmap *loaded,
                  uint64_t *pages)
{
    struct json_object *o = NULL, *x;
    switch (type) {
    case MIG_RAM:
        ram_apply(vm, loaded, pl, len, pages);
        break;
    case MIG_RAM_ZLIB:
        ram_apply_zlib(vm, loaded, pl, len, pages);
        break;
    case MIG_STATE:
        vm->ops->load_state(vm, pl, len);
        break;
    case MIG_PING:
        if (len >= 8)
            (void)bm_get_be64(pl);
        break;
    case MIG_HELLO:
        if ((o = mig_parse_json(pl, len)))
            hello(o);
        break;
    case MIG_HELLO_ACK:
        if ((o = mig_parse_json(pl, len)) && json_object_object_get_ex(o, "exports", &x))
            (void)str(x, "vda");
        (void)num(o, "nbd_port");
        break;
    default: /* COMPLETE, RESUMED, ABORT, REPORT, DURABLE */
        o = mig_parse_json(pl, len);
        (void)num(o, "ram_pages");
        (void)num(o, "flush_ms");
        (void)str(o, "error");
        (void)num(o, "digest_ms");
        (void)num(o, "guest_gap_ns");
        (void)str(o, "reason");
        if (o && json_object_object_get_ex(o, "digests", &x))
            (void)str(x, "ram");
        break;
    }
    json_object_put(o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536)
        return -1;
    /* Each frame header read from the input gains a trailer on the wire at most. */
    uint8_t *wire = malloc(2 * size + MIG_STREAM_HDR + MIG_FRAME_TRAILER);
    if (!wire)
        abort();
    struct fuzz_peer source;
    int fd = fuzz_peer_start(&source, wire, wire_bytes(data, size, wire));
    /* A fresh destination: empty RAM, nothing loaded yet. */
    memset(vm->regions[0].host, 0, vm->regions[0].size);
    struct bm_bitmap *loaded = bm_bitmap_new(vm_ram_end(vm), VM_PAGE_SIZE);
    if (!loaded)
        abort();
    uint64_t pages = 0;
    struct mig_conn c;
    mig_conn_init(&c, fd);
    if (mig_recv_header(&c, 10000) == 0) {
        uint32_t type, len;
        uint8_t *pl;
        while (mig_recv(&c, 10000, &type, &pl, &len) == 0) {
            if (type == 0 || type > MIG_FRAME_TYPE_MAX || len > MIG_FRAME_MAX || pl[len] != 0)
                abort(); /* mig_recv let through what it promises not to */
            frame(type, pl, len, loaded, &pages);
        }
    }
    mig_conn_close(&c);
    fuzz_peer_join(&source);
    bm_bitmap_free(loaded);
    free(wire);
    return 0;
}
