/* sock.h: listening and connecting sockets (TCP over every resolved address, or unix). */
#ifndef BM_COMMON_SOCK_H
#define BM_COMMON_SOCK_H

#include <stddef.h>
#include <sys/types.h>

/* Listen on every address host (NULL = all) resolves to, port given as a string. Stores up to
 * max fds in fds; returns how many (>= 1) or -errno, after logging why. */
int bm_listen_tcp(const char *host, const char *port, int *fds, int max);
/* Listen on a unix socket path. A stale socket there (nobody listens) is replaced; a socket
 * that answers (-EADDRINUSE) or anything else (-EEXIST) is refused, after logging why.
 * Returns fd or -errno. */
int bm_listen_unix(const char *path);
/* The same, with err filled instead of a log line. With mode (not 0) the socket file is never
 * more open than mode, and is mode once this returns, whatever the umask (0: the umask
 * decides). */
int bm_listen_unix_mode(const char *path, mode_t mode, char *err, size_t errlen);
/* What is at path now: 0 nothing, 1 a stale socket (nobody listens: to be replaced), or -errno
 * with err filled: -EADDRINUSE a socket that answers, -EEXIST not a socket. */
int bm_unix_probe(const char *path, char *err, size_t errlen);
/* Connect to host:port (TCP) or, if host contains '/', to that unix path. Returns fd or -errno. */
int bm_connect(const char *host, const char *port);
/* The same, giving up with -ETIMEDOUT when a TCP connection is not made within timeout_ms
 * (per address tried; 0 = the kernel's timeout, minutes when packets are dropped). */
int bm_connect_timeout(const char *host, const char *port, unsigned timeout_ms);
/* Connect to the unix socket at path. Returns fd or -errno. */
int bm_connect_unix(const char *path);
/* The same, but never blocking: -EAGAIN when the listener's backlog is full (it does not
 * accept, e.g. a server that takes one client at a time and has one). The fd returned blocks. */
int bm_connect_unix_nowait(const char *path);
/* TCP_NODELAY where the socket is TCP (ignored otherwise). */
void bm_sock_nodelay(int fd);
/* The smallest round-trip time the kernel has seen on TCP socket fd, in microseconds (the path
 * without queueing), or -errno (-EAGAIN: none measured yet). */
int bm_tcp_min_rtt_us(int fd);

#endif
