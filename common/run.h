/* run.h: run a helper program (qemu-img, qemu-system-x86_64 --version) and take its output. */
#ifndef BM_COMMON_RUN_H
#define BM_COMMON_RUN_H

#include <stddef.h>

/* Run argv (argv[0] looked up in PATH), stdin from /dev/null, stdout and stderr together into
 * out (at most outlen - 1 bytes kept, NUL-terminated; the rest read and dropped), for at most
 * timeout_ms (then it is killed). Returns its exit status (0-255), or -errno: -ENOENT (not
 * found), -ETIMEDOUT, -EINTR (killed by a signal), ... */
int bm_run(const char *const *argv, char *out, size_t outlen, int timeout_ms);

#endif
