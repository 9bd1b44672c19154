/* fuzz-control.c: the control socket's commands (common/control.c bm_control_reply) dispatched
 * to the VM process's handler (cli/vmproc.c on_control, included here for its static
 * functions) over a stub VM: every command and its arguments, without a real guest. The stub
 * guest is dead, so "migrate" checks all its arguments and then refuses to start (no network).
 * Input: u8 (bit 0: the VM has x-query-vcpus; bit 1: its load_state fails; bit 2: it starts
 * paused), then command lines separated by '\n', as a client sends them. */
#include "cli/vmproc.c"

#include "tests/fuzz/fuzz.h"

struct stub {
    struct vm vm;
    bool load_fails;
};

static int stub_pause(struct vm *vm)
{
    vm->paused = true;
    return 0;
}

static int stub_resume(struct vm *vm)
{
    vm->paused = false;
    return 0;
}

static void stub_throttle(struct vm *vm, unsigned pct)
{
}

static int stub_save(struct vm *vm, void **buf, size_t *len)
{
    *buf = strdup("{}");
    *len = 2;
    return *buf ? 0 : -ENOMEM;
}

static int stub_load(struct vm *vm, const void *buf, size_t len)
{
    return ((struct stub *)(void *)vm)->load_fails ? -EPROTO : 0;
}

static struct json_object *stub_query(struct vm *vm)
{
    return json_object_new_object();
}

static int64_t stub_check(struct vm *vm)
{
    return 0;
}

static bool stub_dead(struct vm *vm, char *why, size_t len)
{
    if (why)
        snprintf(why, len, "the stub guest");
    return true;
}

static struct json_object *stub_x_vcpus(struct vm *vm)
{
    return json_object_new_array();
}

/* x_vcpus is set per input (the optional operation present or not). */
static struct vm_ops stub_ops = {.kind = "stub",
                                 .pause = stub_pause,
                                 .resume = stub_resume,
                                 .throttle = stub_throttle,
                                 .save_state = stub_save,
                                 .load_state = stub_load,
                                 .query = stub_query,
                                 .check = stub_check,
                                 .dead = stub_dead};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_quiet();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 65536)
        return -1;
    stub_ops.x_vcpus = data[0] & 1 ? stub_x_vcpus : NULL;
    struct stub s = {.vm = {.ops = &stub_ops, .paused = data[0] & 4}, .load_fails = data[0] & 2};
    struct vmproc p = {.vm = &s.vm};
    pthread_mutex_init(&p.mu, NULL);
    pthread_cond_init(&p.cv, NULL);
    char *buf = malloc(size);
    if (!buf)
        abort();
    memcpy(buf, data + 1, size - 1);
    buf[size - 1] = '\0';
    /* As the server splits what it reads: lines, NUL bytes included (they end the string). */
    for (char *line = buf, *nl; line < buf + size - 1; line = nl + 1) {
        nl = memchr(line, '\n', (size_t)(buf + size - 1 - line));
        if (!nl)
            nl = buf + size - 1;
        *nl = '\0';
        if (nl == line)
            continue;
        struct json_object *reply = bm_control_reply(commands, on_control, &p, line);
        struct json_object *x;
        if (!reply || json_object_object_get_ex(reply, "return", &x) ==
                          json_object_object_get_ex(reply, "error", &x))
            abort(); /* exactly one of return and error */
        (void)json_object_to_json_string_ext(reply, JSON_C_TO_STRING_PLAIN);
        json_object_put(reply);
    }
    if (p.mig || p.migrating)
        abort(); /* a dead guest never migrates */
    pthread_mutex_destroy(&p.mu);
    pthread_cond_destroy(&p.cv);
    free(buf);
    return 0;
}
