/* mon.c: the locked QMP connection of one QEMU. */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "vm/qemu/mon.h"

int qemu_mon_init(struct qemu_mon *m, struct bm_qmp *q, const char *name)
{
    memset(m, 0, sizeof *m);
    if (pthread_mutex_init(&m->mu, NULL) != 0) {
        bm_qmp_close(q);
        return -ENOMEM;
    }
    m->q = q;
    m->timeout_ms = QEMU_MON_TIMEOUT_MS;
    snprintf(m->name, sizeof m->name, "%s", name);
    return 0;
}

void qemu_mon_destroy(struct qemu_mon *m)
{
    if (!m->q)
        return;
    bm_qmp_close(m->q);
    m->q = NULL;
    pthread_mutex_destroy(&m->mu);
}

static int exec(struct qemu_mon *m, const char *command, struct json_object *args, bool typed,
                enum json_type want, struct json_object **ret, char *err, size_t errlen)
{
    char e[512] = "";
    if (ret)
        *ret = NULL;
    pthread_mutex_lock(&m->mu);
    int r = typed ? bm_qmp_exec_type(m->q, command, args, want, ret, m->timeout_ms, e, sizeof e)
                  : bm_qmp_exec(m->q, command, args, ret, m->timeout_ms, e, sizeof e);
    pthread_mutex_unlock(&m->mu);
    json_object_put(args);
    if (r < 0 && errlen > 0)
        snprintf(err, errlen, "%s: %s: %s", m->name, command, e);
    return r;
}

int qemu_mon_exec(struct qemu_mon *m, const char *command, struct json_object *args,
                  struct json_object **ret, char *err, size_t errlen)
{
    return exec(m, command, args, false, json_type_null, ret, err, errlen);
}

int qemu_mon_exec_type(struct qemu_mon *m, const char *command, struct json_object *args,
                       enum json_type want, struct json_object **ret, char *err, size_t errlen)
{
    return exec(m, command, args, true, want, ret, err, errlen);
}

int qemu_mon_getfd(struct qemu_mon *m, int fd, const char *name, char *err, size_t errlen)
{
    char e[512] = "";
    struct json_object *args = qemu_obj("fdname", json_object_new_string(name), NULL);
    pthread_mutex_lock(&m->mu);
    int r = bm_qmp_exec_fd(m->q, "getfd", args, fd, NULL, m->timeout_ms, e, sizeof e);
    pthread_mutex_unlock(&m->mu);
    json_object_put(args);
    if (r < 0 && errlen > 0)
        snprintf(err, errlen, "%s: getfd: %s", m->name, e);
    return r;
}

int qemu_mon_next_event(struct qemu_mon *m, int timeout_ms, struct json_object **ev, char *err,
                        size_t errlen)
{
    pthread_mutex_lock(&m->mu);
    int r = bm_qmp_next_event(m->q, timeout_ms, ev, err, errlen);
    pthread_mutex_unlock(&m->mu);
    return r;
}

struct json_object *qemu_obj(const char *key, ...)
{
    struct json_object *o = json_object_new_object();
    va_list ap;
    va_start(ap, key);
    for (const char *k = key; k; k = va_arg(ap, const char *)) {
        struct json_object *v = va_arg(ap, struct json_object *);
        if (!v)
            continue;
        if (!o || json_object_object_add(o, k, v) < 0)
            json_object_put(v);
    }
    va_end(ap);
    return o;
}
