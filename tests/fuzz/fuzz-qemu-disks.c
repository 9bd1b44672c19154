/* fuzz-qemu-disks.c: what a QEMU (and /proc) tells blkmig about a VM it launches or adopts
 * (vm/qemu/qemu-parse.c). The input's three NUL-separated parts are the return values of
 * query-block, query-blockstats and query-named-block-nodes; a part that is not JSON becomes
 * an empty array. qemu_disks_parse must accept them with disks whose strings fit, or refuse
 * them with an error and nothing allocated. The whole input is also /proc/PID/cmdline's bytes
 * for qemu_proc_cmdline_split, whose argv must cover it exactly.
 * Input: query-block JSON \0 query-blockstats JSON \0 query-named-block-nodes JSON. */
#include "tests/fuzz/fuzz.h"

#include "vm/qemu/cmdline.h"
#include "vm/qemu/qemu.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_quiet();
    return 0;
}

/* One part (len bytes) as JSON, or an empty array. */
static struct json_object *part(const uint8_t *p, size_t len)
{
    struct json_tokener *t = json_tokener_new_ex(64);
    struct json_object *o =
        t ? json_tokener_parse_ex(t, (const char *)p, (int)(len > INT32_MAX ? 0 : len)) : NULL;
    json_tokener_free(t);
    return o ? o : json_object_new_array();
}

static bool fits(const char *s, size_t size)
{
    return memchr(s, '\0', size) != NULL;
}

static void disks(const uint8_t *data, size_t size)
{
    struct json_object *p[3];
    size_t at = 0;
    for (int i = 0; i < 3; i++) {
        const uint8_t *z = at < size ? memchr(data + at, 0, size - at) : NULL;
        size_t end = z ? (size_t)(z - data) : size;
        p[i] = part(data + at, at < size ? end - at : 0);
        at = end + 1;
    }
    struct qemu_disk_info *d = (void *)1;
    unsigned n = 99;
    char err[256] = "";
    int r = qemu_disks_parse(p[0], p[1], p[2], &d, &n, err, sizeof err);
    if (r < 0) {
        if (d || n || !err[0] ||
            (r != -ENOTSUP && r != -EBADMSG && r != -E2BIG && r != -ENOMEM))
            abort();
    } else {
        if ((n == 0) != (d == NULL) || n > QEMU_VM_MAX_DISKS ||
            n > json_object_array_length(p[0]))
            abort();
        for (unsigned i = 0; i < n; i++)
            if (!fits(d[i].device, sizeof d[i].device) || !fits(d[i].node, sizeof d[i].node) ||
                !d[i].node[0] || !fits(d[i].format, sizeof d[i].format) ||
                !fits(d[i].file, sizeof d[i].file) || !fits(d[i].drive, sizeof d[i].drive))
                abort();
        struct json_object *j = qemu_disks_json(d, n);
        if (!j || json_object_array_length(j) != n)
            abort();
        json_object_put(j);
        free(d);
    }
    for (int i = 0; i < 3; i++)
        json_object_put(p[i]);
}

static void proc_cmdline(const uint8_t *data, size_t size)
{
    int argc;
    char **argv;
    int r = qemu_proc_cmdline_split((const char *)data, size, &argc, &argv);
    if (r < 0) {
        if (argv || argc || (r != -EINVAL && r != -E2BIG && r != -ENOMEM))
            abort();
        return;
    }
    size_t total = 0;
    for (int i = 0; i < argc; i++)
        total += strlen(argv[i]) + 1;
    if (argc < 1 || argv[argc] || total != size ||
        memcmp(argv[argc - 1], data + size - strlen(argv[argc - 1]) - 1,
               strlen(argv[argc - 1]) + 1) != 0)
        abort();
    free(argv);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    disks(data, size);
    proc_cmdline(data, size);
    return 0;
}
