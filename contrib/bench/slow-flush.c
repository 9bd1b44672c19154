/* slow-flush.c: an LD_PRELOAD shim for the benchmarks that makes every fsync and fdatasync of
 * the process it is loaded into take SLOW_FLUSH_MS milliseconds longer, as a virtual disk's
 * device barrier can (3-170 ms measured on one, whatever the amount of data). It shows what a
 * slow barrier does to a migration's pause, on a machine whose disk is fast.
 *
 *   cc -shared -fPIC -O2 -o slow-flush.so slow-flush.c -ldl
 *   SLOW_FLUSH_MS=150 LD_PRELOAD=$PWD/slow-flush.so blkmig incoming ...
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

static void delay(void)
{
    const char *v = getenv("SLOW_FLUSH_MS");
    long ms = v ? strtol(v, NULL, 10) : 0;
    if (ms <= 0)
        return;
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

int fdatasync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    delay();
    return real(fd);
}

int fsync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    delay();
    return real(fd);
}
