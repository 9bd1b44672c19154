/* io.h: whole-buffer reads and writes on file descriptors, retrying on EINTR and short I/O. */
#ifndef BM_COMMON_IO_H
#define BM_COMMON_IO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/* Read exactly len bytes. Returns 0, -errno, or -ECONNRESET on EOF before len bytes (an EOF
 * before the first byte gives -ENODATA, so callers can tell a clean close). */
int bm_read_full(int fd, void *buf, size_t len);
/* Read and throw away len bytes (bounded buffer, never allocates len). */
int bm_discard_full(int fd, uint64_t len);
/* Write exactly len bytes (MSG_NOSIGNAL on sockets). Returns 0 or -errno. */
int bm_write_full(int fd, const void *buf, size_t len);
/* Write the whole iovec array; iov is modified. */
int bm_writev_full(int fd, struct iovec *iov, int iovcnt);

/* Big-endian helpers for wire formats. */
static inline void bm_put_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static inline void bm_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}
static inline void bm_put_be64(uint8_t *p, uint64_t v)
{
    bm_put_be32(p, (uint32_t)(v >> 32));
    bm_put_be32(p + 4, (uint32_t)v);
}
static inline uint16_t bm_get_be16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}
static inline uint32_t bm_get_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t bm_get_be64(const uint8_t *p)
{
    return ((uint64_t)bm_get_be32(p) << 32) | bm_get_be32(p + 4);
}

#endif
