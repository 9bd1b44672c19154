/* log.c: leveled logging to stderr; each message is written with a single write(2). */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"

static _Atomic int log_level = BM_LOG_WARN;
static const char *log_prefix = "blkmig";

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void bm_log_set_level(enum bm_log_level level)
{
    atomic_store(&log_level, (int)level);
}

enum bm_log_level bm_log_get_level(void)
{
    return (enum bm_log_level)atomic_load(&log_level);
}

int bm_log_parse_level(const char *s, enum bm_log_level *out)
{
    for (unsigned i = 0; i < sizeof level_names / sizeof level_names[0]; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (enum bm_log_level)i;
            return 0;
        }
    }
    if (strcmp(s, "warning") == 0) {
        *out = BM_LOG_WARN;
        return 0;
    }
    return -EINVAL;
}

void bm_log_set_prefix(const char *prefix)
{
    log_prefix = prefix;
}

const char *bm_log_escape(const char *in, char *out, size_t outlen)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (!in)
        in = "(null)";
    for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
        char e[4];
        size_t n = 0;
        if (*p == '\\' || *p == '\n' || *p == '\r' || *p == '\t') {
            e[n++] = '\\';
            e[n++] = *p == '\\' ? '\\' : *p == '\n' ? 'n' : *p == '\r' ? 'r' : 't';
        } else if (*p < 0x20 || *p >= 0x7f) {
            e[n++] = '\\';
            e[n++] = 'x';
            e[n++] = hex[*p >> 4];
            e[n++] = hex[*p & 15];
        } else {
            e[n++] = (char)*p;
        }
        if (o + n >= outlen)
            break;
        memcpy(out + o, e, n);
        o += n;
    }
    out[o] = '\0';
    return out;
}

void bm_log(enum bm_log_level level, const char *fmt, ...)
{
    if ((int)level > atomic_load(&log_level))
        return;
    int saved_errno = errno;
    char line[1024];
    int n = snprintf(line, sizeof line, "%s: %s: ", log_prefix, level_names[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    /* One call, one line, whatever the arguments: a control byte in them (peer text that a
     * caller did not escape) can neither start a forged line nor drive a terminal. */
    for (size_t i = (size_t)n; i < len; i++)
        if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f)
            line[i] = '?';
    line[len++] = '\n';
    ssize_t r = write(STDERR_FILENO, line, len);
    (void)r;
    errno = saved_errno;
}
