/* cmdline-internal.h: what the QEMU command-line parser (cmdline.c) and its rewrites
 * (cmdline-rewrite.c) share: parsed options and QEMU's key=value syntax. */
#ifndef BM_VM_QEMU_CMDLINE_INTERNAL_H
#define BM_VM_QEMU_CMDLINE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>

#include "vm/qemu/cmdline.h"

struct json_object;

/* Makes room for element n of the array *pp (of elem-byte elements) that grows one element at
 * a time: reallocates, to twice the size, only when n is 0 or a power of two, so that reaching
 * n elements costs O(n) even where realloc always copies. false (array untouched) on ENOMEM. */
static inline bool qemu_grow(void *pp, size_t n, size_t elem)
{
    void **p = pp;
    if (n & (n - 1))
        return true;
    void *t = realloc(*p, (n ? 2 * n : 1) * elem);
    if (!t)
        return false;
    *p = t;
    return true;
}

/* One key=value of a QEMU option argument. value NULL: a bare flag ("server", QEMU's old
 * boolean form), kept as written. implied: the first item without "key=" (e.g. the backend
 * of "-chardev socket,..."). */
struct qemu_kv {
    char *key;
    char *value;
    bool implied;
};

struct qemu_kvlist {
    struct qemu_kv *v;
    size_t n;
};

enum qemu_opt_flags {
    QOPT_ARG = 1,     /* takes an argument */
    QOPT_KV = 2,      /* the argument is key=value,... (parsed into kv) */
    QOPT_LEGACY = 4,  /* a legacy disk option: the argument is the image */
    QOPT_CHRSPEC = 8, /* the argument is a character device spec ("file:PATH", "unix:...") */
};

struct qemu_opt_def {
    const char *name;
    unsigned flags;
    const char *implied; /* QOPT_KV: the implied first key, NULL if none */
};

struct qemu_cmdline_arg {
    const struct qemu_opt_def *def;
    char *value;            /* NULL for an option without argument */
    struct qemu_kvlist kv;  /* QOPT_KV options */
    struct json_object *bd; /* -blockdev, either syntax, as a JSON object */
    bool bd_json;           /* -blockdev was given as JSON (written back as JSON) */
    int disk;               /* the disk this -drive/legacy option is, or -1 */
};

/* Where a -blockdev disk's pieces are: the argument holding the node, and how many "file"
 * hops of inline children lead from that argument's object to it. */
struct qemu_bd_loc {
    size_t arg;
    unsigned depth;
};

struct qemu_disk_internal {
    struct qemu_bd_loc leaf, fmt;
    bool has_fmt;
};

/* Parses QEMU's "key=value,key=value" (",," an escaped comma in a value; the first item may
 * lack "key=" when implied is given). 0, -EINVAL (msg set), -ENOMEM. */
int qemu_kv_parse(const char *s, const char *implied, struct qemu_kvlist *out, const char **msg);
void qemu_kv_free(struct qemu_kvlist *l);
/* The scalar members of a JSON option argument (-device {...}) as a kvlist. 0 or -ENOMEM. */
int qemu_kv_from_json(struct json_object *o, struct qemu_kvlist *out);
/* s as one JSON object and nothing after it (QEMU's rule), or NULL. */
struct json_object *qemu_json_parse_object(const char *s);
const char *qemu_kv_get(const struct qemu_kvlist *l, const char *key);

/* Writes l back as an option argument, with keys[i] given values vals[i] (appended when l
 * lacks them); commas in values doubled. A malloc'd string or NULL (ENOMEM). */
char *qemu_kv_format(const struct qemu_kvlist *l, const char *const *keys, const char *const *vals,
                     size_t nset);

/* A malloc'd copy of s with every ',' doubled, or NULL. */
char *qemu_comma_escape(const char *s);

/* -blockdev written back from its (possibly modified) object, in the form it came in. */
char *qemu_bd_format(struct json_object *o, bool as_json);

/* The blockdev object depth hops of "file" below root, or NULL. */
struct json_object *qemu_bd_child(struct json_object *root, unsigned depth);

/* A character device spec's host path: "file:P", "pipe:P", "unix:P[,opts]", with "mon:" in
 * front allowed. Returns the kind and a malloc'd path in *path, or -1 (no path, *path NULL);
 * -ENOMEM. */
int qemu_chrspec_path(const char *spec, char **path);
/* The spec with its path replaced (same form); NULL on ENOMEM. */
char *qemu_chrspec_replace(const char *spec, const char *path);

#endif
