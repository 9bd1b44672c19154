/* tcpinfo.c: the kernel's view of a TCP connection (kept apart from sock.c: <linux/tcp.h>,
 * which has the newer tcp_info fields, cannot share a file with <netinet/tcp.h>). */
#include <config.h>

#include <errno.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>

#include "common/sock.h"

int bm_tcp_min_rtt_us(int fd)
{
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    memset(&ti, 0, sizeof ti);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
        return -errno;
    /* An old kernel fills less than we asked for: no min_rtt then. */
    if (len < offsetof(struct tcp_info, tcpi_min_rtt) + sizeof ti.tcpi_min_rtt)
        return -ENOTSUP;
    /* ~0U: not measured yet. */
    return ti.tcpi_min_rtt == ~0u || ti.tcpi_min_rtt > 60000000u ? -EAGAIN : (int)ti.tcpi_min_rtt;
}
