/* fuzz.h: what the libFuzzer harnesses share: quiet logs, a private temp dir, a byte reader,
 * a peer over a socketpair. */
#ifndef BM_TESTS_FUZZ_H
#define BM_TESTS_FUZZ_H

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Rejected input is the normal case: its log lines would only slow the run down.
 * FUZZ_VERBOSE=1 keeps them (to see why a reproducer is refused). */
static inline void fuzz_quiet(void)
{
    if (!getenv("FUZZ_VERBOSE"))
        bm_log_set_level((enum bm_log_level) - 1); /* below BM_LOG_ERROR: nothing */
}

/* A temp dir of the harness's own, removed (with the files named by fuzz_tmp_file) at exit. */
static char fuzz_dir[64];
static char fuzz_files[4][96];

static void fuzz_tmp_cleanup(void)
{
    for (int i = 0; i < 4; i++)
        if (fuzz_files[i][0])
            unlink(fuzz_files[i]);
    if (fuzz_dir[0])
        rmdir(fuzz_dir);
}

/* The path of a new empty file of size bytes in the temp dir (slot 0-3); aborts on failure
 * (a harness that cannot set up must not report a clean run). */
static inline const char *fuzz_tmp_file(int slot, const char *name, uint64_t size)
{
    if (!fuzz_dir[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(fuzz_dir, sizeof fuzz_dir, "%s/blkmig-fuzz.XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(fuzz_dir)) {
            perror("mkdtemp");
            abort();
        }
        atexit(fuzz_tmp_cleanup);
    }
    snprintf(fuzz_files[slot], sizeof fuzz_files[slot], "%s/%s", fuzz_dir, name);
    FILE *f = fopen(fuzz_files[slot], "w");
    if (!f || ftruncate(fileno(f), (off_t)size) < 0) {
        perror(fuzz_files[slot]);
        abort();
    }
    fclose(f);
    return fuzz_files[slot];
}

/* Consuming the input: reads past the end give zeros and set ->end. */
struct fuzz_in {
    const uint8_t *p;
    size_t left;
    bool end;
};

static inline void fuzz_take(struct fuzz_in *in, void *out, size_t n)
{
    size_t k = n < in->left ? n : in->left;
    memcpy(out, in->p, k);
    memset((uint8_t *)out + k, 0, n - k);
    in->p += k;
    in->left -= k;
    if (k < n)
        in->end = true;
}

static inline uint8_t fuzz_u8(struct fuzz_in *in)
{
    uint8_t v;
    fuzz_take(in, &v, 1);
    return v;
}

static inline uint16_t fuzz_u16(struct fuzz_in *in)
{
    uint8_t b[2];
    fuzz_take(in, b, 2);
    return (uint16_t)(b[0] | b[1] << 8);
}

static inline uint32_t fuzz_u32(struct fuzz_in *in)
{
    uint32_t lo = fuzz_u16(in);
    return lo | (uint32_t)fuzz_u16(in) << 16;
}

static inline uint64_t fuzz_u64(struct fuzz_in *in)
{
    uint64_t lo = fuzz_u32(in);
    return lo | (uint64_t)fuzz_u32(in) << 32;
}

/* The far end of a socketpair: a thread that writes the wire bytes while it reads (and drops)
 * what comes back, so that neither side can block the other, then half-closes and reads to
 * the end (or stops writing once the other end has gone). */
struct fuzz_peer {
    int fd;
    const uint8_t *wire;
    size_t len;
    pthread_t thread;
};

static inline void *fuzz_peer_main(void *arg)
{
    struct fuzz_peer *c = arg;
    size_t done = 0;
    char buf[4096];
    for (;;) {
        struct pollfd p = {.fd = c->fd, .events = POLLIN | (done < c->len ? POLLOUT : 0)};
        if (poll(&p, 1, -1) < 0)
            continue;
        if (p.revents & POLLOUT) {
            ssize_t w = send(c->fd, c->wire + done, c->len - done, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (w > 0)
                done += (size_t)w;
            else if (w < 0 && errno != EAGAIN && errno != EINTR)
                done = c->len; /* the other end hung up */
            if (done == c->len)
                shutdown(c->fd, SHUT_WR);
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r = recv(c->fd, buf, sizeof buf, MSG_DONTWAIT);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
                return NULL;
        }
    }
}

/* Starts the peer with len bytes of wire; returns the other end, for the code under test,
 * which the caller closes before fuzz_peer_join. Aborts where it cannot set up. */
static inline int fuzz_peer_start(struct fuzz_peer *c, const uint8_t *wire, size_t len)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        abort();
    *c = (struct fuzz_peer){.fd = sv[0], .wire = wire, .len = len};
    if (len == 0)
        shutdown(sv[0], SHUT_WR);
    if (pthread_create(&c->thread, NULL, fuzz_peer_main, c) != 0)
        abort();
    return sv[1];
}

static inline void fuzz_peer_join(struct fuzz_peer *c)
{
    pthread_join(c->thread, NULL);
    close(c->fd);
}

#endif
