/* cli.h: the blkmig subcommands, each an entry point taking its own argv. */
#ifndef BM_CLI_CLI_H
#define BM_CLI_CLI_H

#include <stddef.h>
#include <stdint.h>

/* "100M" or "100M/s": bytes per second. 0 or -EINVAL. */
int cli_parse_rate(const char *s, uint64_t *out);
/* --log-level LEVEL: set it, or say why not (0 or -1). */
int cli_set_log_level(const char *arg);
/* 1536 -> "1.5 KiB". */
void cli_human(uint64_t bytes, char *buf, size_t len);

int cmd_nbd_serve(int argc, char **argv);
int cmd_mirror(int argc, char **argv);
int cmd_control(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_incoming(int argc, char **argv);
int cmd_migrate(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_guest_check(int argc, char **argv);

#endif
