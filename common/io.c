/* io.c: full reads and writes with EINTR and short-count handling. */
#include <config.h>

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/io.h"

int bm_read_full(int fd, void *buf, size_t len)
{
    uint8_t *p = buf;
    size_t done = 0;
    while (done < len) {
        ssize_t r = read(fd, p + done, len - done);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            return done == 0 ? -ENODATA : -ECONNRESET;
        done += (size_t)r;
    }
    return 0;
}

int bm_discard_full(int fd, uint64_t len)
{
    uint8_t buf[65536];
    while (len > 0) {
        size_t n = len > sizeof buf ? sizeof buf : (size_t)len;
        int r = bm_read_full(fd, buf, n);
        if (r < 0)
            return r == -ENODATA ? -ECONNRESET : r;
        len -= n;
    }
    return 0;
}

int bm_write_full(int fd, const void *buf, size_t len)
{
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    return bm_writev_full(fd, &iov, 1);
}

int bm_writev_full(int fd, struct iovec *iov, int iovcnt)
{
    while (iovcnt > 0) {
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)iovcnt};
        ssize_t r = sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (r < 0 && errno == ENOTSOCK)
            r = writev(fd, iov, iovcnt);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        size_t n = (size_t)r;
        while (iovcnt > 0 && n >= iov->iov_len) {
            n -= iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + n;
            iov->iov_len -= n;
        }
    }
    return 0;
}
