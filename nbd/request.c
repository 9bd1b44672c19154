/* request.c: decoding and validating NBD transmission requests; errno to wire mapping. */
#include <config.h>

#include <errno.h>

#include "common/io.h"
#include "nbd/server-internal.h"

int nbd_request_decode(const uint8_t buf[NBD_REQUEST_SIZE], struct nbd_request *req)
{
    if (bm_get_be32(buf) != NBD_REQUEST_MAGIC)
        return -EPROTO;
    req->flags = bm_get_be16(buf + 4);
    req->type = bm_get_be16(buf + 6);
    req->cookie = bm_get_be64(buf + 8);
    req->offset = bm_get_be64(buf + 16);
    req->length = bm_get_be32(buf + 24);
    return 0;
}

const char *nbd_cmd_name(uint16_t type)
{
    switch (type) {
    case NBD_CMD_READ: return "READ";
    case NBD_CMD_WRITE: return "WRITE";
    case NBD_CMD_DISC: return "DISC";
    case NBD_CMD_FLUSH: return "FLUSH";
    case NBD_CMD_TRIM: return "TRIM";
    case NBD_CMD_CACHE: return "CACHE";
    case NBD_CMD_WRITE_ZEROES: return "WRITE_ZEROES";
    case NBD_CMD_BLOCK_STATUS: return "BLOCK_STATUS";
    default: return "UNKNOWN";
    }
}

static uint16_t allowed_flags(uint16_t type, bool structured)
{
    switch (type) {
    case NBD_CMD_READ: return structured ? NBD_CMD_FLAG_DF : 0;
    case NBD_CMD_WRITE: return NBD_CMD_FLAG_FUA;
    case NBD_CMD_TRIM: return NBD_CMD_FLAG_FUA;
    case NBD_CMD_WRITE_ZEROES:
        return NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
    case NBD_CMD_BLOCK_STATUS: return NBD_CMD_FLAG_REQ_ONE;
    case NBD_CMD_FLUSH: return NBD_CMD_FLAG_FUA;
    default: return 0;
    }
}

int nbd_request_validate(const struct nbd_request *req, const struct nbd_request_caps *caps)
{
    bool is_write = false, has_range = true, bounded_payload = false;
    switch (req->type) {
    case NBD_CMD_READ: bounded_payload = true; break;
    case NBD_CMD_WRITE: is_write = true; bounded_payload = true; break;
    case NBD_CMD_CACHE: bounded_payload = true; break;
    case NBD_CMD_TRIM: is_write = true; break;
    case NBD_CMD_WRITE_ZEROES: is_write = true; break;
    case NBD_CMD_BLOCK_STATUS:
        if (!caps->base_allocation)
            return EINVAL;
        break;
    case NBD_CMD_FLUSH:
    case NBD_CMD_DISC: has_range = false; break;
    default: return EINVAL;
    }
    if (req->flags & ~allowed_flags(req->type, caps->structured))
        return EINVAL;
    if (is_write && caps->readonly)
        return EPERM;
    if (!has_range)
        return 0;
    if (req->length == 0)
        return EINVAL;
    if (bounded_payload && req->length > NBD_SERVER_MAX_PAYLOAD)
        return EINVAL;
    if (req->offset > caps->size || req->length > caps->size - req->offset)
        return (req->type == NBD_CMD_WRITE || req->type == NBD_CMD_WRITE_ZEROES) ? ENOSPC
                                                                               : EINVAL;
    return 0;
}

uint32_t nbd_errno_to_wire(int err)
{
    if (err < 0)
        err = -err;
    switch (err) {
    case 0: return 0;
    case EPERM:
    case EROFS: return NBD_EPERM;
    case ENOMEM: return NBD_ENOMEM;
    case EINVAL: return NBD_EINVAL;
    case ENOSPC:
    case EDQUOT:
    case EFBIG: return NBD_ENOSPC;
    case EOVERFLOW: return NBD_EOVERFLOW;
    case ENOTSUP: return NBD_ENOTSUP;
    case ESHUTDOWN: return NBD_ESHUTDOWN;
    default: return NBD_EIO;
    }
}
