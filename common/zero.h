/* zero.h: fast test for an all-zero buffer. */
#ifndef BM_COMMON_ZERO_H
#define BM_COMMON_ZERO_H

#include <stdbool.h>
#include <stddef.h>

/* True when every byte of [p, p+len) is zero (true for len 0). */
bool bm_is_zero(const void *p, size_t len);

#endif
