/* fuzz-nbd-request.c: NBD transmission requests (nbd/request.c): decode and validate each
 * 28-byte request against the connection's capabilities, and check what an accepted request
 * promises the server (in range, allowed by the export, payload bounded).
 * Input: u8 caps flags | u64 export size | requests (28 bytes each, big-endian wire format). */
#include <config.h>

#include <errno.h>

#include "nbd/server-internal.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_quiet();
    return 0;
}

static void check_accepted(const struct nbd_request *r, const struct nbd_request_caps *caps)
{
    bool writes =
        r->type == NBD_CMD_WRITE || r->type == NBD_CMD_TRIM || r->type == NBD_CMD_WRITE_ZEROES;
    if (r->type > NBD_CMD_BLOCK_STATUS || (writes && caps->readonly) ||
        (r->type == NBD_CMD_BLOCK_STATUS && !caps->base_allocation))
        abort();
    if (r->type == NBD_CMD_FLUSH || r->type == NBD_CMD_DISC)
        return;
    if (r->length == 0 || r->offset > caps->size || r->length > caps->size - r->offset)
        abort();
    if ((r->type == NBD_CMD_READ || r->type == NBD_CMD_WRITE || r->type == NBD_CMD_CACHE) &&
        r->length > NBD_SERVER_MAX_PAYLOAD)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = {data, size, false};
    uint8_t f = fuzz_u8(&in);
    struct nbd_request_caps caps = {
        .readonly = f & 1, .structured = f & 2, .base_allocation = f & 4};
    caps.size = fuzz_u64(&in);
    while (in.left >= NBD_REQUEST_SIZE) {
        struct nbd_request r;
        int e = nbd_request_decode(in.p, &r);
        in.p += NBD_REQUEST_SIZE;
        in.left -= NBD_REQUEST_SIZE;
        if (e < 0) {
            if (e != -EPROTO)
                abort();
            continue;
        }
        (void)nbd_cmd_name(r.type);
        e = nbd_request_validate(&r, &caps);
        if (e == 0)
            check_accepted(&r, &caps);
        else if (nbd_errno_to_wire(e) == 0)
            abort(); /* a refusal must reach the client as an error */
    }
    return 0;
}
