/* util.c: small helpers shared by the subcommands (rates, human-readable sizes). */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "common/log.h"
#include "common/parse.h"

int cli_parse_rate(const char *s, uint64_t *out)
{
    if (!s) /* a JSON null */
        return -EINVAL;
    char buf[64];
    snprintf(buf, sizeof buf, "%s", s);
    size_t n = strlen(buf);
    if (n > 2 && strcmp(buf + n - 2, "/s") == 0)
        buf[n - 2] = '\0';
    return bm_parse_size(buf, out);
}

void cli_human(uint64_t bytes, char *buf, size_t len)
{
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)bytes;
    int i = 0;
    while (v >= 1024 && i < 4) {
        v /= 1024;
        i++;
    }
    snprintf(buf, len, i ? "%.1f %s" : "%.0f %s", v, u[i]);
}

int cli_set_log_level(const char *arg)
{
    enum bm_log_level l;
    if (bm_log_parse_level(arg, &l) < 0) {
        bm_error("--log-level %s: expected error, warn, info or debug", arg);
        return -1;
    }
    bm_log_set_level(l);
    return 0;
}
