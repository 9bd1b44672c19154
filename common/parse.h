/* parse.h: strict parsers for numbers, sizes and durations given on command lines. */
#ifndef BM_COMMON_PARSE_H
#define BM_COMMON_PARSE_H

#include <stdint.h>

/* A whole decimal number in [min, max]. Returns 0 or -EINVAL / -ERANGE. */
int bm_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out);
/* A size with an optional binary suffix: 512, 64K, 1M, 4G, 1T (also KiB, MiB ...). */
int bm_parse_size(const char *s, uint64_t *out);
/* A duration with a unit: 10ns, 5us, 5ms, 2s (a bare number is milliseconds). Nanoseconds out. */
int bm_parse_duration(const char *s, uint64_t *out_ns);
/* A probability: a decimal in [0, 1], or a percentage "1%". */
int bm_parse_probability(const char *s, double *out);

#endif
