/* accept.c: the destination's listener: a stray connection can neither end nor block it. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "migration/accept.h"
#include "migration/stream.h"

/* A connection that has not yet shown it is a source: what it sent so far. */
struct pending {
    int fd;
    uint64_t deadline_ns;
    char peer[80];
    uint8_t hdr[MIG_STREAM_HDR + MIG_FRAME_HDR];
    uint8_t *payload; /* HELLO payload and trailer, once the frame header is in */
    size_t have, want;
    uint32_t len;
};

static uint64_t mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void drop(struct pending *p, const char *why)
{
    bm_warn("incoming: dropped a connection from %s: %s", p->peer, why);
    close(p->fd);
    free(p->payload);
    *p = (struct pending){.fd = -1};
}

static void accept_one(int lfd, struct pending *pend, int *npend, unsigned timeout_ms)
{
    struct sockaddr_storage sa;
    socklen_t salen = sizeof sa;
    int fd = accept4(lfd, (struct sockaddr *)&sa, &salen, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0)
        return;
    if (*npend == MIG_ACCEPT_MAX_PENDING) {
        /* Full of connections that have not said HELLO: the oldest is the least likely to. */
        drop(&pend[0], "too many connections waiting; this one the longest");
        memmove(pend, pend + 1, (size_t)(*npend - 1) * sizeof *pend);
        (*npend)--;
    }
    struct pending *p = &pend[(*npend)++];
    *p = (struct pending){.fd = fd, .want = MIG_STREAM_HDR};
    p->deadline_ns = mono_ns() + (uint64_t)timeout_ms * 1000000u;
    char host[64] = "?", port[16] = "?";
    getnameinfo((struct sockaddr *)&sa, salen, host, sizeof host, port, sizeof port,
                NI_NUMERICHOST | NI_NUMERICSERV);
    snprintf(p->peer, sizeof p->peer, "%s port %s", host, port);
    bm_info("incoming: connection from %s", p->peer);
    /* Our header first: the source waits for it before it sends HELLO. 16 bytes always fit a
     * new socket's buffer. */
    uint8_t h[MIG_STREAM_HDR];
    mig_stream_header_encode(h);
    if (send(fd, h, sizeof h, MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t)sizeof h)
        drop(p, "cannot send the stream header");
}

/* The HELLO is whole: 0 and *hello when it is one a source sends, else -EPROTO and *why. */
static int check_hello(struct pending *p, struct json_object **hello, const char **why)
{
    const uint8_t *fh = p->hdr + MIG_STREAM_HDR;
    if (mig_frame_verify(fh, p->payload, p->len, p->payload + p->len) < 0) {
        *why = "its HELLO fails its checksum";
        return -EPROTO;
    }
    struct json_object *h = mig_parse_json(p->payload, p->len), *vm, *disks;
    if (!h || !json_object_object_get_ex(h, "vm", &vm) ||
        !json_object_object_get_ex(vm, "disks", &disks)) {
        json_object_put(h);
        *why = "its HELLO is not a VM description";
        return -EPROTO;
    }
    *hello = h;
    return 0;
}

/* Read what p has sent. 1: a valid HELLO is in (*hello); 0: more to come; -1: dropped. */
static int advance(struct pending *p, struct json_object **hello)
{
    const char *why = NULL;
    for (;;) {
        uint8_t *dst = p->payload ? p->payload : p->hdr;
        ssize_t n = recv(p->fd, dst + p->have, p->want - p->have, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            why = n == 0 ? "closed before HELLO" : strerror(errno);
            break;
        }
        if (n < 0)
            return 0;
        p->have += (size_t)n;
        if (p->have < p->want)
            continue;
        if (p->payload) {
            int r = check_hello(p, hello, &why);
            if (r == 0)
                return 1;
            break;
        }
        if (p->want == MIG_STREAM_HDR) {
            int r = mig_stream_header_check(p->hdr);
            if (r < 0) {
                why = r == -EPROTONOSUPPORT ? "another version of the blkmig stream"
                                            : "not a blkmig stream";
                break;
            }
            p->want += MIG_FRAME_HDR;
            continue;
        }
        uint32_t type;
        if (mig_frame_header_parse(p->hdr + MIG_STREAM_HDR, &type, &p->len) < 0 ||
            type != MIG_HELLO || p->len > MIG_HELLO_MAX) {
            why = "its first frame is not a HELLO";
            break;
        }
        p->payload = malloc((size_t)p->len + MIG_FRAME_TRAILER);
        if (!p->payload) {
            why = "out of memory";
            break;
        }
        p->have = 0;
        p->want = (size_t)p->len + MIG_FRAME_TRAILER;
    }
    drop(p, why);
    return -1;
}

static void compact(struct pending *pend, int *npend)
{
    int k = 0;
    for (int i = 0; i < *npend; i++)
        if (pend[i].fd >= 0)
            pend[k++] = pend[i];
    *npend = k;
}

static int wait_ms(const struct pending *pend, int npend, uint64_t now, uint64_t deadline)
{
    uint64_t next = now + 100000000u; /* the stop flag is looked at every 100 ms */
    if (deadline < next)
        next = deadline;
    for (int i = 0; i < npend; i++)
        if (pend[i].deadline_ns < next)
            next = pend[i].deadline_ns;
    return next <= now ? 0 : (int)((next - now + 999999u) / 1000000u);
}

int mig_accept_hello(const struct mig_accept_opts *o, int *fd, struct json_object **hello,
                     uint64_t *bytes_in, char *err, size_t errlen)
{
    struct pending pend[MIG_ACCEPT_MAX_PENDING];
    struct pollfd pfd[8 + MIG_ACCEPT_MAX_PENDING];
    int npend = 0, nl = o->nl < 8 ? o->nl : 8, r = 0;
    while (r == 0) {
        if (o->stop && *o->stop) {
            snprintf(err, errlen, "interrupted while waiting for the source");
            r = -EINTR;
            break;
        }
        uint64_t now = mono_ns();
        for (int i = 0; i < npend; i++)
            if (now >= pend[i].deadline_ns)
                drop(&pend[i], "no HELLO in time");
        compact(pend, &npend);
        if (now >= o->deadline_ns) {
            snprintf(err, errlen, "no source connected within the accept timeout");
            r = -ETIMEDOUT;
            break;
        }
        for (int i = 0; i < nl; i++)
            pfd[i] = (struct pollfd){.fd = o->lfds[i], .events = POLLIN};
        for (int i = 0; i < npend; i++)
            pfd[nl + i] = (struct pollfd){.fd = pend[i].fd, .events = POLLIN};
        int n = poll(pfd, (nfds_t)(nl + npend), wait_ms(pend, npend, now, o->deadline_ns));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = -errno;
            snprintf(err, errlen, "waiting for the source: %s", strerror(errno));
            break;
        }
        /* Pending ones first: their pfd slots are positional. */
        for (int i = 0; i < npend && r == 0; i++) {
            if (!pfd[nl + i].revents)
                continue;
            if (advance(&pend[i], hello) == 1) {
                *fd = pend[i].fd;
                *bytes_in = MIG_STREAM_HDR + MIG_FRAME_HDR + pend[i].len + MIG_FRAME_TRAILER;
                free(pend[i].payload);
                pend[i] = (struct pending){.fd = -1};
                r = 1;
            }
        }
        compact(pend, &npend);
        for (int i = 0; i < nl && r == 0; i++)
            if (pfd[i].revents & POLLIN)
                accept_one(o->lfds[i], pend, &npend, o->hello_timeout_ms);
    }
    for (int i = 0; i < npend; i++)
        drop(&pend[i], r == 1 ? "a source has connected" : "giving up");
    if (r < 0)
        return r;
    int fl = fcntl(*fd, F_GETFL);
    if (fl >= 0)
        fcntl(*fd, F_SETFL, fl & ~O_NONBLOCK);
    return 0;
}
