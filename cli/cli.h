/* cli.h: the blkmig subcommands, each an entry point taking its own argv. */
#ifndef BM_CLI_CLI_H
#define BM_CLI_CLI_H

int cmd_nbd_serve(int argc, char **argv);
int cmd_mirror(int argc, char **argv);
int cmd_control(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_incoming(int argc, char **argv);
int cmd_migrate(int argc, char **argv);
int cmd_demo(int argc, char **argv);

#endif
