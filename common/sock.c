/* sock.c: socket setup helpers shared by servers and clients. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/log.h"
#include "common/sock.h"

int bm_listen_tcp(const char *host, const char *port, int *fds, int max)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_ADDRCONFIG};
    struct addrinfo *res;
    int r = getaddrinfo(host, port, &hints, &res);
    if (r != 0) {
        bm_error("cannot resolve %s:%s: %s", host ? host : "*", port, gai_strerror(r));
        return -EINVAL;
    }
    int n = 0, last_err = 0;
    for (struct addrinfo *ai = res; ai && n < max; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            last_err = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (ai->ai_family == AF_INET6)
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 128) < 0) {
            last_err = errno;
            close(fd);
            continue;
        }
        fds[n++] = fd;
    }
    freeaddrinfo(res);
    if (n == 0) {
        bm_error("cannot listen on %s:%s: %s", host ? host : "*", port, strerror(last_err));
        return -(last_err ? last_err : EADDRNOTAVAIL);
    }
    return n;
}

int bm_unix_probe(const char *path, char *err, size_t errlen)
{
    struct stat st;
    if (lstat(path, &st) < 0) {
        if (errno == ENOENT)
            return 0;
        int e = errno;
        snprintf(err, errlen, "%s: %s", path, strerror(e));
        return -e;
    }
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, errlen, "%s exists and is not a socket; refusing to replace it", path);
        return -EEXIST;
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    /* Non-blocking: a server whose backlog is full answers EAGAIN instead of making us wait. */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "%s: socket: %s", path, strerror(e));
        return -e;
    }
    int r = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 ? 0 : -errno;
    struct ucred uc = {0};
    socklen_t len = sizeof uc;
    if (r == 0 && getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) < 0)
        uc.pid = 0;
    close(fd);
    if (r == -ECONNREFUSED)
        return 1;
    if (r == -ENOENT)
        return 0; /* gone meanwhile */
    if (r == 0 || r == -EAGAIN) {
        char who[32] = "";
        if (uc.pid > 0)
            snprintf(who, sizeof who, " (pid %ld)", (long)uc.pid);
        snprintf(err, errlen,
                 "%s is in use: another process%s serves a socket there (stop it, or choose "
                 "another path)",
                 path, who);
        return -EADDRINUSE;
    }
    snprintf(err, errlen, "%s: cannot tell whether the socket there is in use: %s", path,
             strerror(-r));
    return r;
}

int bm_listen_unix_mode(const char *path, mode_t mode, char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) {
        snprintf(err, errlen, "unix socket path too long (max %zu bytes): %s",
                 sizeof sa.sun_path - 1, path);
        return -ENAMETOOLONG;
    }
    strcpy(sa.sun_path, path);
    int r = bm_unix_probe(path, err, errlen);
    if (r < 0)
        return r;
    if (r == 1 && unlink(path) < 0 && errno != ENOENT) {
        r = -errno;
        snprintf(err, errlen, "cannot remove the stale socket %s: %s", path, strerror(-r));
        return r;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        r = -errno;
        snprintf(err, errlen, "%s: socket: %s", path, strerror(-r));
        return r;
    }
    /* Linux gives the socket file the mode of the socket's own inode less the umask: set on
     * the descriptor before bind, the file is never more open than mode, and no process-wide
     * umask change happens under the other threads' feet; chmod after bind gives back only
     * what the umask took. */
    r = 0;
    if ((mode && fchmod(fd, mode) < 0) || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
        (mode && chmod(path, mode) < 0) || listen(fd, 128) < 0)
        r = -errno;
    if (r < 0) {
        snprintf(err, errlen, "cannot listen on unix socket %s: %s", path, strerror(-r));
        close(fd);
        return r;
    }
    return fd;
}

int bm_listen_unix(const char *path)
{
    char err[512];
    int fd = bm_listen_unix_mode(path, 0, err, sizeof err);
    if (fd < 0)
        bm_error("%s", err);
    return fd;
}

/* connect() on a fresh socket, giving up after timeout_ms (0: the kernel's own timeout). */
static int connect_within(int s, const struct sockaddr *sa, socklen_t len, unsigned timeout_ms)
{
    if (timeout_ms == 0)
        return connect(s, sa, len) == 0 ? 0 : -errno;
    int fl = fcntl(s, F_GETFL);
    if (fl < 0 || fcntl(s, F_SETFL, fl | O_NONBLOCK) < 0)
        return -errno;
    int r = 0;
    if (connect(s, sa, len) < 0) {
        if (errno != EINPROGRESS)
            return -errno;
        struct pollfd p = {.fd = s, .events = POLLOUT};
        int n;
        do
            n = poll(&p, 1, (int)timeout_ms);
        while (n < 0 && errno == EINTR);
        if (n < 0)
            return -errno;
        if (n == 0)
            return -ETIMEDOUT;
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (getsockopt(s, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
            return -errno;
        r = -soerr;
    }
    if (r == 0 && fcntl(s, F_SETFL, fl) < 0)
        r = -errno;
    return r;
}

int bm_connect_timeout(const char *host, const char *port, unsigned timeout_ms)
{
    if (host && strchr(host, '/'))
        return bm_connect_unix(host);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res;
    if (getaddrinfo(host, port, &hints, &res) != 0)
        return -EINVAL;
    int fd = -ECONNREFUSED;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int s = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (s < 0)
            continue;
        int r = connect_within(s, ai->ai_addr, ai->ai_addrlen, timeout_ms);
        if (r == 0) {
            fd = s;
            break;
        }
        fd = r;
        close(s);
    }
    freeaddrinfo(res);
    if (fd >= 0)
        bm_sock_nodelay(fd);
    return fd;
}

int bm_connect(const char *host, const char *port)
{
    return bm_connect_timeout(host, port, 0);
}

static int connect_unix(const char *path, bool nowait)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path)
        return -ENAMETOOLONG;
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (nowait ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0)
        return -errno;
    /* A unix connect either completes at once or, non-blocking, fails with EAGAIN when the
     * listener's backlog is full: there is no connection in progress to wait for. */
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
        (nowait && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0)) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

int bm_connect_unix(const char *path)
{
    return connect_unix(path, false);
}

int bm_connect_unix_nowait(const char *path)
{
    return connect_unix(path, true);
}

void bm_sock_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}
