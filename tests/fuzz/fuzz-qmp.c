/* fuzz-qmp.c: what QEMU sends to the QMP client (vm/qemu/qmp.c). Each line of the input goes
 * through bm_qmp_parse, checking what an accepted line promises; with flag bit 0 the whole
 * input is also the byte stream of a fake QEMU on a socketpair, against which the client
 * connects (greeting, qmp_capabilities as id 1), runs up to three commands (ids 2, 3, 4; with
 * bit 1 asking for an object return) and then takes events until the stream ends. A broken
 * client must stay broken, with the same error. An object returned also goes through
 * qemu_mig_parse (vm/qemu/qmig.c), query-migrate's parser.
 * Input: u8 flags, then the lines ('\n'-separated, as QEMU writes them, CRLF allowed). */
#include "tests/fuzz/fuzz.h"

#include "vm/qemu/qmig.h"
#include "vm/qemu/qmp.h"

#define TIMEOUT_MS 5000

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_quiet();
    return 0;
}

/* One line: an accepted one is exactly what its kind says. */
static void parse_line(const char *line, size_t len)
{
    struct bm_qmp_msg m;
    char err[160];
    int r = bm_qmp_parse(line, len, &m, err, sizeof err);
    if (r < 0) {
        if (m.obj || (r != -EPROTO && r != -EMSGSIZE && r != -ENOMEM) || !err[0])
            abort();
        return;
    }
    if (!json_object_is_type(m.obj, json_type_object))
        abort();
    switch (m.kind) {
    case BM_QMP_GREETING:
        if (m.major < 0 || m.minor < 0 || m.micro < 0)
            abort();
        break;
    case BM_QMP_EVENT:
        if (!m.event || !*m.event)
            abort();
        break;
    case BM_QMP_ERROR:
        if (!m.err_class || !m.err_desc)
            abort();
        break;
    case BM_QMP_RETURN:
        /* An object returned may be query-migrate's: its parser takes it or says why not. */
        if (json_object_is_type(m.ret, json_type_object)) {
            struct qemu_mig_info mi;
            char e[160] = "";
            int mr = qemu_mig_parse(m.ret, &mi, e, sizeof e);
            if (mr < 0 ? mr != -EPROTO || !e[0] : !mi.status[0])
                abort();
        }
        break;
    default:
        abort();
    }
    (void)json_object_to_json_string_ext(m.obj, JSON_C_TO_STRING_PLAIN);
    bm_qmp_msg_clear(&m);
}

static bool fatal_code(int r)
{
    return r == -EPROTO || r == -EMSGSIZE || r == -ECONNRESET;
}

static void run_client(const uint8_t *wire, size_t len, bool typed)
{
    struct fuzz_peer peer;
    int fd = fuzz_peer_start(&peer, wire, len);
    struct bm_qmp *q;
    char err[512];
    int r = bm_qmp_open_fd(fd, "fuzz", TIMEOUT_MS, &q, err, sizeof err);
    if (r < 0) {
        if (q || r == -ETIMEDOUT) /* the peer ends its stream: nothing may hang */
            abort();
        fuzz_peer_join(&peer);
        return;
    }
    int broken = 0;
    for (int i = 0; i < 3 && !broken; i++) {
        struct json_object *ret = NULL;
        r = typed ? bm_qmp_exec_type(q, "query-status", NULL, json_type_object, &ret, TIMEOUT_MS,
                                     err, sizeof err)
                  : bm_qmp_exec(q, "query-status", NULL, &ret, TIMEOUT_MS, err, sizeof err);
        if (r == 0 && typed && !json_object_is_type(ret, json_type_object))
            abort();
        if (r < 0 && ret)
            abort();
        json_object_put(ret);
        if (r == -ETIMEDOUT)
            abort();
        if (fatal_code(r))
            broken = r;
    }
    struct json_object *ev;
    while ((r = bm_qmp_next_event(q, TIMEOUT_MS, &ev, err, sizeof err)) == 0) {
        struct json_object *name;
        if (!json_object_object_get_ex(ev, "event", &name) ||
            !json_object_is_type(name, json_type_string))
            abort();
        json_object_put(ev);
    }
    if (!fatal_code(r) || (broken && r != broken))
        abort();
    /* Broken for good, with the same error. */
    if (bm_qmp_exec(q, "query-status", NULL, NULL, TIMEOUT_MS, err, sizeof err) != r)
        abort();
    bm_qmp_close(q);
    fuzz_peer_join(&peer);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 65536)
        return -1;
    const char *p = (const char *)data + 1, *end = (const char *)data + size;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = (size_t)((nl ? nl : end) - p);
        if (n > 0)
            parse_line(p, n);
        p += n + 1;
    }
    if (data[0] & 1)
        run_client(data + 1, size - 1, data[0] & 2);
    return 0;
}
