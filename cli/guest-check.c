/* guest-check.c: `blkmig guest-check`, check the test guest by content from a dump of its RAM
 * and its disk images (vm/guestcheck.c), e.g. a QEMU guest stopped and dumped with pmemsave. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/log.h"
#include "vm/blockfmt.h"
#include "vm/guestcheck.h"

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: blkmig guest-check [--json] RAM-DUMP [DISK-IMAGE]...\n"
            "\n"
            "Check the test guest (blkmig-guest.elf) by content, as its own final check does:\n"
            "every workload page in a dump of its RAM, and every block it wrote on its disks,\n"
            "must hold what the guest recorded for it (its generation, in the self-checking\n"
            "format). The guest keeps its layout in RAM at 0x%llx; a stop in the middle of a\n"
            "write is allowed for.\n"
            "\n"
            "  RAM-DUMP      guest-physical memory from address 0, taken with the guest stopped\n"
            "                (QEMU: 'stop', then 'pmemsave 0 SIZE FILE')\n"
            "  DISK-IMAGE    raw images of the guest's virtio disks, in their order (the order of\n"
            "                its virtio_mmio.device= entries); disks not given are not checked\n"
            "  --json        print the result as one JSON object\n"
            "  -h, --help    show this help\n"
            "Exit status: 0 clean, 1 mismatches found, 2 bad usage, an unreadable file or no\n"
            "valid layout record (not the test guest, or not booted far enough).\n",
            (unsigned long long)BM_LAYOUT_GPA);
}

int cmd_guest_check(int argc, char **argv)
{
    bm_log_set_prefix("blkmig guest-check");
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool json = false;
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'j') {
            json = true;
        } else if (c == 'h') {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    int nargs = argc - optind;
    if (nargs < 1) {
        usage(stderr);
        return 2;
    }
    if (nargs - 1 > (int)BM_LAYOUT_MAX_DISKS) {
        bm_error("at most %u disk images", BM_LAYOUT_MAX_DISKS);
        return 2;
    }
    const char *ram_path = argv[optind];
    int fd = open(ram_path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        bm_error("%s: %s", ram_path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return 2;
    }
    if (!S_ISREG(st.st_mode) || st.st_size == 0) {
        bm_error("%s: not a RAM dump (an empty or special file)", ram_path);
        close(fd);
        return 2;
    }
    uint64_t ram_size = (uint64_t)st.st_size;
    void *ram = mmap(NULL, ram_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (ram == MAP_FAILED) {
        bm_error("%s: mapping it: %s", ram_path, strerror(errno));
        return 2;
    }
    struct bm_disk *disks[BM_LAYOUT_MAX_DISKS] = {NULL};
    unsigned ndisks = 0;
    int rc = 2;
    for (int i = optind + 1; i < argc; i++) {
        int r = bm_disk_open(argv[i], BM_DISK_OPEN_READONLY, &disks[ndisks]);
        if (r < 0) {
            bm_error("%s: %s", argv[i], strerror(-r));
            goto out;
        }
        ndisks++;
    }
    struct bm_gcheck res;
    char err[256];
    int r = bm_guest_check(ram, ram_size, disks, ndisks, &res, err, sizeof err);
    if (r < 0) {
        bm_error("%s", err);
        goto out;
    }
    if (ndisks > res.ndisks)
        bm_warn("%u disk images given, the guest has %u disks: the rest were not checked", ndisks,
                res.ndisks);
    else if (ndisks < res.ndisks)
        bm_warn("the guest has %u disks, %u images given: disks %u.. were not checked", res.ndisks,
                ndisks, ndisks);
    rc = res.mismatches ? 1 : 0;
    if (json) {
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "pages", json_object_new_int64((int64_t)res.pages));
        json_object_object_add(o, "blocks", json_object_new_int64((int64_t)res.blocks));
        json_object_object_add(o, "skipped", json_object_new_int64((int64_t)res.skipped));
        json_object_object_add(o, "mismatches", json_object_new_int64((int64_t)res.mismatches));
        json_object_object_add(o, "guest_disks", json_object_new_int((int)res.ndisks));
        json_object_object_add(
            o, "disks_checked",
            json_object_new_int((int)(ndisks < res.ndisks ? ndisks : res.ndisks)));
        struct json_object *a = json_object_new_array();
        for (unsigned i = 0; i < res.nreports; i++)
            json_object_array_add(a, json_object_new_string(res.report[i]));
        json_object_object_add(o, "first_mismatches", a);
        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        json_object_put(o);
    } else {
        for (unsigned i = 0; i < res.nreports; i++)
            printf("mismatch: %s\n", res.report[i]);
        if (res.mismatches > res.nreports)
            printf("(%" PRIu64 " more mismatches not listed)\n", res.mismatches - res.nreports);
        printf("%" PRIu64 " pages and %" PRIu64 " blocks checked, %" PRIu64
               " skipped (being written), %" PRIu64 " mismatches\n",
               res.pages, res.blocks, res.skipped, res.mismatches);
    }
out:
    for (unsigned i = 0; i < ndisks; i++)
        bm_disk_close(disks[i]);
    munmap(ram, ram_size);
    return rc;
}
