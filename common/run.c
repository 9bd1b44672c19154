/* run.c: run a helper program and take its output. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/run.h"

extern char **environ;

static long long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* Read the child's output until EOF or the deadline; false at the deadline. */
static bool collect(int fd, char *out, size_t outlen, long long deadline)
{
    size_t n = 0;
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0)
            return false;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return r == 0 ? false : true;
        char buf[4096];
        ssize_t k = read(fd, buf, sizeof buf);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return true;
        size_t keep = outlen > 0 && n < outlen - 1 ? outlen - 1 - n : 0;
        if ((size_t)k < keep)
            keep = (size_t)k;
        memcpy(out + n, buf, keep);
        n += keep;
        if (outlen > 0)
            out[n] = '\0';
    }
}

int bm_run(const char *const *argv, char *out, size_t outlen, int timeout_ms)
{
    if (outlen > 0)
        out[0] = '\0';
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0)
        return -errno;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
    posix_spawn_file_actions_adddup2(&fa, pfd[1], 2);
    pid_t pid;
    int r = posix_spawnp(&pid, argv[0], &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(pfd[1]);
    if (r != 0) {
        close(pfd[0]);
        return -r;
    }
    bool done = collect(pfd[0], out, outlen, now_ms() + timeout_ms);
    close(pfd[0]);
    if (!done)
        kill(pid, SIGKILL);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (!done)
        return -ETIMEDOUT;
    if (WIFSIGNALED(st))
        return -EINTR;
    return WEXITSTATUS(st);
}
