/* fuzz-qemu-cmdline.c: a QEMU command line as a destination receives it from its peer:
 * qemu_cmdline_parse (vm/qemu/cmdline.c), then, for a line it accepts, the destination's
 * rewrite (every disk given a new image) and the source's, and the destination's line parsed
 * again: what blkmig writes for QEMU must be a line it would accept itself, with the new
 * images in it.
 * Input: argv, its strings separated by NUL bytes (argv[0] the binary); at most 4,097 pieces
 * are taken, so that the argc bound is reached but the harness stays fast. */
#include <config.h>

#include <errno.h>

#include "tests/fuzz/fuzz.h"
#include "vm/qemu/cmdline.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_quiet();
    return 0;
}

/* The rewrite's own input: an image per disk, named after it. */
static void check_dest(const struct qemu_cmdline *cl)
{
    struct qemu_cmdline_image *img = calloc(cl->ndisks + 1, sizeof *img);
    char **paths = calloc(cl->ndisks + 1, sizeof *paths);
    char **argv = NULL;
    if (!img || !paths)
        abort();
    for (size_t i = 0; i < cl->ndisks; i++) {
        if (!(paths[i] = malloc(strlen(cl->disks[i].name) + 16)))
            abort();
        sprintf(paths[i], "/new/%s.img", cl->disks[i].name);
        img[i] = (struct qemu_cmdline_image){cl->disks[i].name, paths[i], i & 1 ? "raw" : NULL};
    }
    char err[QEMU_CMDLINE_ERRLEN];
    int r = qemu_cmdline_dest_argv(cl, img, cl->ndisks, "/run/fz", "/run/fz/qmp.sock", &argv, err,
                                   sizeof err);
    if (r == 0) {
        int n = 0;
        while (argv[n])
            n++;
        struct qemu_cmdline *again;
        r = qemu_cmdline_parse(n, (const char *const *)argv, &again, err, sizeof err);
        if (r != 0 && r != -E2BIG) {
            fprintf(stderr, "the destination's line does not parse: %s\n", err);
            abort();
        }
        if (r == 0) {
            if (again->ndisks != cl->ndisks || !again->incoming ||
                strcmp(again->incoming, "defer") != 0 || again->nmonitors != 1)
                abort();
            for (size_t i = 0; i < again->ndisks; i++)
                if (again->disks[i].file && strncmp(again->disks[i].file, "/new/", 5) != 0 &&
                    !again->disks[i].readonly)
                    abort();
            qemu_cmdline_free(again);
        }
        free(argv);
    } else if (argv) {
        abort();
    }
    for (size_t i = 0; i < cl->ndisks; i++)
        free(paths[i]);
    free(paths);
    free(img);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A copy with a NUL at the end, so that the last piece is a string too. */
    char *buf = malloc(size + 1);
    const char **argv = calloc(QEMU_CMDLINE_MAX_ARGS + 2, sizeof *argv);
    if (!buf || !argv)
        abort();
    memcpy(buf, data, size);
    buf[size] = '\0';
    int argc = 0;
    for (char *p = buf; p <= buf + size && argc < QEMU_CMDLINE_MAX_ARGS + 1; p += strlen(p) + 1)
        argv[argc++] = p;

    struct qemu_cmdline *cl;
    char err[QEMU_CMDLINE_ERRLEN];
    int r = qemu_cmdline_parse(argc, argv, &cl, err, sizeof err);
    if (r == 0) {
        check_dest(cl);
        char **src;
        if (qemu_cmdline_source_argv(cl, "/run/fz/src.sock", &src, err, sizeof err) == 0)
            free(src);
        qemu_cmdline_free(cl);
    } else if (r != -EINVAL && r != -ENOTSUP && r != -E2BIG) {
        abort();
    }
    free(argv);
    free(buf);
    return 0;
}
