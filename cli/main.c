/* main.c: the blkmig command: dispatch to subcommands. */
#include <config.h>

#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *summary;
} commands[] = {
    {"run", cmd_run, "run a VM: the test guest on KVM, the synthetic guest, or a QEMU"},
    {"migrate", cmd_migrate, "live-migrate a running VM, with --with-disk its disks too"},
    {"incoming", cmd_incoming, "receive a migrating VM, then run it"},
    {"demo", cmd_demo, "a live migration with disks between two local hosts, end to end"},
    {"mirror", cmd_mirror, "live-mirror a disk in use to any NBD target"},
    {"nbd-serve", cmd_nbd_serve, "serve disk images over NBD (fast, multi-connection)"},
    {"control", cmd_control, "send a command to a running job's control socket"},
    {"guest-check", cmd_guest_check, "check the test guest's RAM dump and disks by content"},
};

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: blkmig COMMAND [OPTIONS...]\n"
            "       blkmig --help | --version\n"
            "\n"
            "blkmig live-migrates virtual machines with their local disks, and mirrors and\n"
            "serves disk images over NBD.\n"
            "\n"
            "Commands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n'blkmig COMMAND --help' describes a command; man blkmig-COMMAND has more.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "-V") == 0) {
        printf("blkmig %s\n", PACKAGE_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(cmd, commands[i].name) == 0)
            return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "blkmig: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
