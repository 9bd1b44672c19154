/* log.h: leveled, thread-safe logging to stderr (one line per call). */
#ifndef BM_COMMON_LOG_H
#define BM_COMMON_LOG_H

#include <stddef.h>

enum bm_log_level { BM_LOG_ERROR = 0, BM_LOG_WARN, BM_LOG_INFO, BM_LOG_DEBUG };

/* Set the most verbose level that is printed (default BM_LOG_WARN). */
void bm_log_set_level(enum bm_log_level level);
enum bm_log_level bm_log_get_level(void);
/* Parse "error", "warn", "info", "debug"; returns 0 or -EINVAL. */
int bm_log_parse_level(const char *s, enum bm_log_level *out);
/* Prefix every line with this program name (default "blkmig"). */
void bm_log_set_prefix(const char *prefix);

/* Copy untrusted text (a peer's reason, a client's name) into out for a log line: backslash
 * becomes "\\", newline, carriage return and tab "\n", "\r", "\t", every other control
 * character and every byte from 0x7f up "\xNN", so that peer text can neither forge log lines
 * nor drive a terminal. out (outlen > 0) is NUL-terminated; text that does not fit is cut
 * before an escape, never inside one. Returns out. */
const char *bm_log_escape(const char *in, char *out, size_t outlen);

void bm_log(enum bm_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define bm_error(...) bm_log(BM_LOG_ERROR, __VA_ARGS__)
#define bm_warn(...) bm_log(BM_LOG_WARN, __VA_ARGS__)
#define bm_info(...) bm_log(BM_LOG_INFO, __VA_ARGS__)
#define bm_debug(...) bm_log(BM_LOG_DEBUG, __VA_ARGS__)

#endif
