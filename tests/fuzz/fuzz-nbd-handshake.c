/* fuzz-nbd-handshake.c: the NBD fixed-newstyle handshake (nbd/handshake.c) against a fuzzed
 * client over a socketpair: client flags, then options (INFO/GO, LIST, META_CONTEXT,
 * EXPORT_NAME, ...) with their payloads, against two exports (one read-only), with and without
 * hidden export names. A client thread feeds it and drops the replies.
 * Input: u8 mode (bit 0: the rest goes to the server as is; bit 1: hide_exports), then
 * u32 client flags | options, each u32 option | u32 length | up to length bytes of data. */
#include <config.h>

#include "common/io.h"
#include "nbd/server-internal.h"
#include "tests/fuzz/fuzz.h"

static struct bm_disk *disk;
static struct nbd_server *servers[2];

static void teardown(void)
{
    for (int i = 0; i < 2; i++)
        nbd_server_free(servers[i]);
    bm_disk_close(disk);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_quiet();
    if (bm_disk_open(fuzz_tmp_file(0, "disk.img", 1 << 20), 0, &disk) < 0)
        abort();
    for (int i = 0; i < 2; i++) {
        struct nbd_server_config cfg = {.hide_exports = i == 1};
        servers[i] = nbd_server_new(&cfg);
        if (!servers[i] ||
            nbd_server_add_export(servers[i], "disk", "the fuzz disk", disk, false) < 0 ||
            nbd_server_add_export(servers[i], "ro", NULL, disk, true) < 0)
            abort();
    }
    atexit(teardown);
    return 0;
}

/* The client's bytes: the input as is, or framed as options. */
static size_t client_bytes(const uint8_t *data, size_t size, bool raw, uint8_t *out)
{
    if (raw) {
        memcpy(out, data, size);
        return size;
    }
    struct fuzz_in in = {data, size, false};
    size_t n = 0;
    bm_put_be32(out, fuzz_u32(&in));
    n += 4;
    while (in.left >= 8) {
        uint32_t opt = fuzz_u32(&in), len = fuzz_u32(&in);
        size_t k = len < in.left ? len : in.left;
        bm_put_be64(out + n, NBD_IHAVEOPT);
        bm_put_be32(out + n + 8, opt);
        bm_put_be32(out + n + 12, len);
        memcpy(out + n + 16, in.p, k);
        n += 16 + k;
        in.p += k;
        in.left -= k;
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 65536)
        return -1;
    uint8_t mode = data[0];
    /* Framing adds 8 bytes per 8 of input at most. */
    uint8_t *wire = malloc(2 * size + 16);
    if (!wire)
        abort();
    struct fuzz_peer client;
    int fd = fuzz_peer_start(&client, wire, client_bytes(data + 1, size - 1, mode & 1, wire));
    struct nbd_conn c = {.server = servers[(mode >> 1) & 1], .fd = fd, .id = 1};
    int r = nbd_handshake(&c);
    if (r == 0 && !c.exp)
        abort(); /* transmission without an export */
    close(fd);
    fuzz_peer_join(&client);
    free(wire);
    return 0;
}
