/* zero.c: all-zero detection: check a short head, then compare the buffer with itself shifted. */
#include <config.h>

#include <string.h>

#include "common/zero.h"

bool bm_is_zero(const void *p, size_t len)
{
    static const unsigned char z[16];
    const unsigned char *b = p;
    if (len <= 16)
        return memcmp(b, z, len) == 0;
    /* If the first 16 bytes are zero and every byte equals the one 16 before it, all are. */
    return memcmp(b, z, 16) == 0 && memcmp(b, b + 16, len - 16) == 0;
}
