/* cmdline-syntax.c: QEMU's option-argument syntax: "key=value,..." with ",," for a comma,
 * -blockdev's dotted keys and JSON, character device specs ("unix:PATH,server=on"). */
#include <config.h>

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vm/qemu/cmdline-internal.h"

/* Reads a value up to an unescaped ',' or the end, turning ",," into ','. Returns the
 * position after the value (at ',' or NUL); *out malloc'd to the value's size, so that many
 * short values in a long argument cost no more than the argument (NULL on ENOMEM). */
static const char *read_value(const char *p, char **out)
{
    size_t n = 0, len = 0;
    const char *end = p;
    while (*end && (*end != ',' || end[1] == ',')) {
        end += *end == ',' ? 2 : 1;
        len++;
    }
    char *v = malloc(len + 1);
    *out = v;
    if (!v)
        return p;
    while (p < end) {
        v[n++] = *p;
        p += *p == ',' ? 2 : 1;
    }
    v[n] = '\0';
    return end;
}

static int kv_push(struct qemu_kvlist *l, char *key, char *value, bool implied)
{
    if (!qemu_grow(&l->v, l->n, sizeof *l->v)) {
        free(key);
        free(value);
        return -ENOMEM;
    }
    l->v[l->n++] = (struct qemu_kv){.key = key, .value = value, .implied = implied};
    return 0;
}

int qemu_kv_parse(const char *s, const char *implied, struct qemu_kvlist *out, const char **msg)
{
    *out = (struct qemu_kvlist){0};
    const char *p = s;
    bool first = true;
    while (*p) {
        size_t len = strcspn(p, "=,");
        char *key, *value = NULL;
        bool imp = false;
        if (first && implied && p[len] != '=') {
            /* QEMU's rule: the first item names no key when it has no '=' before a ','. */
            key = strdup(implied);
            p = read_value(p, &value);
            if (!value) {
                free(key);
                goto nomem;
            }
            imp = true;
        } else {
            if (len == 0) {
                *msg = "an empty key";
                qemu_kv_free(out);
                return -EINVAL;
            }
            key = strndup(p, len);
            p += len;
            if (*p == '=') {
                p = read_value(p + 1, &value);
                if (!value) {
                    free(key);
                    goto nomem;
                }
            }
        }
        if (!key || kv_push(out, key, value, imp) < 0)
            goto nomem;
        first = false;
        if (*p == ',')
            p++; /* QEMU takes a trailing comma too */
    }
    return 0;
nomem:
    qemu_kv_free(out);
    *msg = "out of memory";
    return -ENOMEM;
}

int qemu_kv_from_json(struct json_object *o, struct qemu_kvlist *out)
{
    *out = (struct qemu_kvlist){0};
    json_object_object_foreach(o, key, val)
    {
        if (json_object_is_type(val, json_type_object) || json_object_is_type(val, json_type_array))
            continue;
        char *k = strdup(key), *v = strdup(json_object_get_string(val));
        if (!k || !v || kv_push(out, k, v, false) < 0) {
            if (!k || !v) {
                free(k);
                free(v);
            }
            qemu_kv_free(out);
            return -ENOMEM;
        }
    }
    return 0;
}

struct json_object *qemu_json_parse_object(const char *s)
{
    struct json_tokener *tok = json_tokener_new();
    size_t len = strlen(s);
    if (!tok)
        return NULL;
    struct json_object *o = json_tokener_parse_ex(tok, s, (int)len);
    bool whole = json_tokener_get_error(tok) == json_tokener_success &&
                 json_tokener_get_parse_end(tok) == len;
    json_tokener_free(tok);
    if (o && (!whole || !json_object_is_type(o, json_type_object))) {
        json_object_put(o);
        return NULL;
    }
    return o;
}

void qemu_kv_free(struct qemu_kvlist *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].key);
        free(l->v[i].value);
    }
    free(l->v);
    *l = (struct qemu_kvlist){0};
}

const char *qemu_kv_get(const struct qemu_kvlist *l, const char *key)
{
    /* QEMU takes the last of repeated keys. */
    for (size_t i = l->n; i-- > 0;)
        if (strcmp(l->v[i].key, key) == 0)
            return l->v[i].value ? l->v[i].value : "on";
    return NULL;
}

char *qemu_comma_escape(const char *s)
{
    size_t n = strlen(s), commas = 0;
    for (size_t i = 0; i < n; i++)
        commas += s[i] == ',';
    char *o = malloc(n + commas + 1), *q = o;
    if (!o)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        *q++ = s[i];
        if (s[i] == ',')
            *q++ = ',';
    }
    *q = '\0';
    return o;
}

/* A growing string; on ENOMEM it is freed and stays NULL. */
struct sbuf {
    char *s;
    size_t len, cap;
    size_t items; /* key=value items written, for the commas between them */
    bool oom;
};

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->len + n + 1) * 2;
        char *t = realloc(b->s, cap);
        if (!t) {
            free(b->s);
            *b = (struct sbuf){.oom = true};
            return;
        }
        b->s = t;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void sb_str(struct sbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

static void sb_escaped(struct sbuf *b, const char *s)
{
    for (const char *c; (c = strchr(s, ',')); s = c + 1) {
        sb_add(b, s, (size_t)(c - s) + 1);
        sb_add(b, ",", 1);
    }
    sb_str(b, s);
}

static void sb_item(struct sbuf *b, const char *key, const char *value, bool implied)
{
    if (b->items++)
        sb_add(b, ",", 1);
    /* An implied value with a '=' before its first ',' would read back as a key. */
    bool bare = implied && value && *value && value[strcspn(value, "=,")] != '=';
    if (!bare) {
        sb_str(b, key);
        if (!value)
            return;
        sb_add(b, "=", 1);
    }
    sb_escaped(b, value);
}

char *qemu_kv_format(const struct qemu_kvlist *l, const char *const *keys, const char *const *vals,
                     size_t nset)
{
    struct sbuf b = {0};
    bool used[8] = {false};
    if (nset > 8)
        return NULL;
    for (size_t i = 0; i < l->n; i++) {
        const struct qemu_kv *kv = &l->v[i];
        const char *value = kv->value;
        for (size_t k = 0; k < nset; k++)
            if (strcmp(kv->key, keys[k]) == 0) {
                value = vals[k];
                used[k] = true;
            }
        sb_item(&b, kv->key, value, kv->implied);
    }
    for (size_t k = 0; k < nset; k++)
        if (!used[k])
            sb_item(&b, keys[k], vals[k], false);
    if (!b.s && !b.oom)
        return strdup("");
    return b.s;
}

static void bd_flatten(struct sbuf *b, const char *prefix, struct json_object *o)
{
    json_object_object_foreach(o, key, val)
    {
        char name[512];
        if (snprintf(name, sizeof name, "%s%s%s", prefix, *prefix ? "." : "", key) >=
            (int)sizeof name) {
            free(b->s);
            *b = (struct sbuf){.oom = true};
            return;
        }
        if (json_object_is_type(val, json_type_object))
            bd_flatten(b, name, val);
        else
            sb_item(b, name, json_object_get_string(val), false);
    }
}

char *qemu_bd_format(struct json_object *o, bool as_json)
{
    if (as_json) {
        const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                                              JSON_C_TO_STRING_NOSLASHESCAPE);
        return s ? strdup(s) : NULL;
    }
    struct sbuf b = {0};
    bd_flatten(&b, "", o);
    return b.s;
}

struct json_object *qemu_bd_child(struct json_object *root, unsigned depth)
{
    while (root && depth--) {
        struct json_object *c = NULL;
        if (!json_object_object_get_ex(root, "file", &c) ||
            !json_object_is_type(c, json_type_object))
            return NULL;
        root = c;
    }
    return root;
}

/* The spec after an optional "mon:" (a serial port muxed with a monitor). */
static const char *chrspec_body(const char *spec)
{
    return strncmp(spec, "mon:", 4) == 0 ? spec + 4 : spec;
}

int qemu_chrspec_path(const char *spec, char **path)
{
    const char *s = chrspec_body(spec);
    *path = NULL;
    if (strncmp(s, "file:", 5) == 0 || strncmp(s, "pipe:", 5) == 0) {
        /* QEMU takes the rest verbatim: no option syntax after file: and pipe:. */
        if (!(*path = strdup(s + 5)))
            return -ENOMEM;
        return s[0] == 'f' ? QEMU_PATH_FILE : QEMU_PATH_PIPE;
    }
    if (strncmp(s, "unix:", 5) != 0)
        return -1;
    struct qemu_kvlist l;
    const char *msg;
    int r = qemu_kv_parse(s + 5, "path", &l, &msg);
    if (r < 0)
        return r == -ENOMEM ? r : -1;
    const char *p = qemu_kv_get(&l, "path");
    if (p && !(*path = strdup(p)))
        r = -ENOMEM;
    qemu_kv_free(&l);
    return r < 0 ? r : *path ? QEMU_PATH_SOCKET : -1;
}

char *qemu_chrspec_replace(const char *spec, const char *path)
{
    const char *s = chrspec_body(spec);
    struct sbuf b = {0};
    sb_add(&b, spec, (size_t)(s - spec));
    sb_add(&b, s, 5);
    if (strncmp(s, "unix:", 5) != 0) {
        sb_str(&b, path);
        return b.s;
    }
    struct qemu_kvlist l;
    const char *msg;
    const char *key = "path";
    if (qemu_kv_parse(s + 5, "path", &l, &msg) < 0) {
        free(b.s);
        return NULL;
    }
    char *rest = qemu_kv_format(&l, &key, &path, 1);
    qemu_kv_free(&l);
    if (!rest) {
        free(b.s);
        return NULL;
    }
    sb_str(&b, rest);
    free(rest);
    return b.s;
}
