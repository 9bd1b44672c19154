/* parse.c: strict command-line value parsers (no silent truncation, no trailing junk). */
#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/parse.h"

int bm_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    if (!s || !isdigit((unsigned char)s[0]))
        return -EINVAL;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno == ERANGE)
        return -ERANGE;
    if (*end != '\0')
        return -EINVAL;
    if (v < min || v > max)
        return -ERANGE;
    *out = v;
    return 0;
}

int bm_parse_size(const char *s, uint64_t *out)
{
    if (!s || !isdigit((unsigned char)s[0]))
        return -EINVAL;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno == ERANGE)
        return -ERANGE;
    unsigned shift = 0;
    if (*end) {
        switch (toupper((unsigned char)*end)) {
        case 'B': shift = 0; break;
        case 'K': shift = 10; break;
        case 'M': shift = 20; break;
        case 'G': shift = 30; break;
        case 'T': shift = 40; break;
        case 'P': shift = 50; break;
        default: return -EINVAL;
        }
        end++;
        if (shift && (strcmp(end, "iB") == 0 || strcmp(end, "B") == 0 || strcmp(end, "ib") == 0))
            end += strlen(end);
        if (*end)
            return -EINVAL;
    }
    if (shift && v > (UINT64_MAX >> shift))
        return -ERANGE;
    *out = (uint64_t)v << shift;
    return 0;
}

/* A non-negative decimal number (no sign, no hex, no inf/nan) and what follows it. */
static int parse_decimal(const char *s, double *v, char **end)
{
    if (!s || !(isdigit((unsigned char)s[0]) || s[0] == '.'))
        return -EINVAL;
    errno = 0;
    *v = strtod(s, end);
    if (errno == ERANGE || !isfinite(*v))
        return -ERANGE;
    return 0;
}

int bm_parse_duration(const char *s, uint64_t *out_ns)
{
    double v;
    char *end;
    int r = parse_decimal(s, &v, &end);
    if (r < 0)
        return r;
    double mult;
    if (*end == '\0' || strcmp(end, "ms") == 0)
        mult = 1e6;
    else if (strcmp(end, "ns") == 0)
        mult = 1;
    else if (strcmp(end, "us") == 0)
        mult = 1e3;
    else if (strcmp(end, "s") == 0)
        mult = 1e9;
    else
        return -EINVAL;
    double ns = v * mult;
    if (ns > 3600e9 * 24)
        return -ERANGE;
    *out_ns = (uint64_t)(ns + 0.5);
    return 0;
}

int bm_parse_probability(const char *s, double *out)
{
    double v;
    char *end;
    int r = parse_decimal(s, &v, &end);
    if (r < 0)
        return r;
    if (strcmp(end, "%") == 0)
        v /= 100;
    else if (*end)
        return -EINVAL;
    if (v < 0 || v > 1)
        return -ERANGE;
    *out = v;
    return 0;
}
