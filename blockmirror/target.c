/* target.c: libnbd connections to a mirror target, async commands, and a poll loop. */
#include <config.h>

#include <errno.h>
#include <poll.h>
#include <libnbd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blockmirror/target.h"
#include "common/log.h"

#define MAX_CONNS 16
/* Zero-writing fallback buffer, for targets without WRITE_ZEROES. */
#define ZERO_BUF BM_TARGET_ZERO_FALLBACK_MAX

struct conn {
    struct nbd_handle *h;
    unsigned in_flight;
    bool dead;
};

struct bm_target {
    char *uri;
    unsigned wanted;
    struct conn conns[MAX_CONNS];
    unsigned nconns;
    uint64_t size;
    bool can_zero, can_trim, can_fua, multi_conn, can_flush, base_allocation;
    unsigned in_flight;
    unsigned next; /* round-robin start */
    struct cmd *cmds; /* every command record not yet settled (freed at close if libnbd
                       * drops them: it does not call back for a handle closed with
                       * commands pending) */
};

/* One queued command. */
struct cmd {
    struct bm_target *t;
    struct conn *c;
    bm_target_cb cb;
    void *opaque;
    unsigned *pending; /* flush fan-out: completes when it reaches 0 */
    int *first_err;
    /* libnbd may run the completion callback inside the nbd_aio_* call that submits the
     * command (a connection dying there), even when that call then fails: such an early
     * completion is only recorded, and submitted() settles the command once. */
    bool submitting, early;
    int early_err;
    struct cmd *prev, *next;
};

static void cmd_free(struct cmd *cmd)
{
    if (cmd->prev)
        cmd->prev->next = cmd->next;
    else
        cmd->t->cmds = cmd->next;
    if (cmd->next)
        cmd->next->prev = cmd->prev;
    free(cmd);
}

static uint8_t zero_buf[ZERO_BUF];

static int connect_one(struct bm_target *t, struct nbd_handle **out, char *err, size_t errlen)
{
    struct nbd_handle *h = nbd_create();
    if (!h) {
        snprintf(err, errlen, "libnbd: %s", nbd_get_error());
        return -ENOMEM;
    }
    nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION);
    if (nbd_connect_uri(h, t->uri) < 0) {
        int e = nbd_get_errno();
        snprintf(err, errlen, "cannot connect to %s: %s", t->uri, nbd_get_error());
        nbd_close(h);
        return -(e ? e : ECONNREFUSED);
    }
    if (nbd_is_read_only(h) == 1) {
        snprintf(err, errlen, "%s is read-only", t->uri);
        nbd_close(h);
        return -EROFS;
    }
    *out = h;
    return 0;
}

/* Open connections 1..want-1 at the same time: each handshake waits on round trips (and on
 * some servers on delayed ACKs), so doing them one after another costs want times that. */
static int connect_more(struct bm_target *t, unsigned want, char *err, size_t errlen)
{
    if (want > MAX_CONNS)
        want = MAX_CONNS;
    unsigned first = t->nconns;
    for (unsigned i = first; i < want; i++) {
        struct nbd_handle *h = nbd_create();
        if (!h) {
            snprintf(err, errlen, "libnbd: %s", nbd_get_error());
            return -ENOMEM;
        }
        nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION);
        t->conns[t->nconns++] = (struct conn){.h = h};
        if (nbd_aio_connect_uri(h, t->uri) < 0) {
            snprintf(err, errlen, "cannot connect to %s: %s", t->uri, nbd_get_error());
            return -ECONNREFUSED;
        }
    }
    for (int rounds = 0; rounds < 1000; rounds++) { /* 10 s at most */
        struct pollfd pfd[MAX_CONNS];
        unsigned n = 0, pending = 0;
        for (unsigned i = first; i < t->nconns; i++) {
            struct nbd_handle *h = t->conns[i].h;
            if (nbd_aio_is_ready(h) == 1)
                continue;
            if (nbd_aio_is_dead(h) == 1 || nbd_aio_is_closed(h) == 1) {
                snprintf(err, errlen, "cannot connect to %s: %s", t->uri, nbd_get_error());
                return -ECONNREFUSED;
            }
            unsigned dir = nbd_aio_get_direction(h);
            pfd[n++] = (struct pollfd){
                .fd = nbd_aio_get_fd(h),
                .events = (short)(((dir & LIBNBD_AIO_DIRECTION_READ) ? POLLIN : 0) |
                                  ((dir & LIBNBD_AIO_DIRECTION_WRITE) ? POLLOUT : 0))};
            pending++;
        }
        if (!pending)
            return 0;
        if (poll(pfd, n, 10) < 0 && errno != EINTR)
            return -errno;
        n = 0;
        for (unsigned i = first; i < t->nconns; i++) {
            struct nbd_handle *h = t->conns[i].h;
            if (nbd_aio_is_ready(h) == 1 || nbd_aio_is_dead(h) == 1)
                continue;
            short re = pfd[n++].revents;
            if (re & (POLLIN | POLLHUP | POLLERR))
                nbd_aio_notify_read(h);
            else if (re & POLLOUT)
                nbd_aio_notify_write(h);
        }
    }
    snprintf(err, errlen, "connecting to %s timed out", t->uri);
    return -ETIMEDOUT;
}

static int connect_all(struct bm_target *t, char *err, size_t errlen)
{
    struct nbd_handle *h = NULL;
    int r = connect_one(t, &h, err, errlen);
    if (r < 0)
        return r;
    int64_t size = nbd_get_size(h);
    if (size < 0) {
        snprintf(err, errlen, "%s: cannot read the export size: %s", t->uri, nbd_get_error());
        nbd_close(h);
        return -EIO;
    }
    t->size = (uint64_t)size;
    t->can_zero = nbd_can_zero(h) == 1;
    t->can_trim = nbd_can_trim(h) == 1;
    t->can_fua = nbd_can_fua(h) == 1;
    t->can_flush = nbd_can_flush(h) == 1;
    t->multi_conn = nbd_can_multi_conn(h) == 1;
    t->base_allocation = nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
    t->conns[0] = (struct conn){.h = h};
    t->nconns = 1;
    unsigned want = t->multi_conn ? t->wanted : 1;
    return want > 1 ? connect_more(t, want, err, errlen) : 0;
}

static void close_all(struct bm_target *t)
{
    for (unsigned i = 0; i < t->nconns; i++) {
        if (!t->conns[i].dead)
            nbd_shutdown(t->conns[i].h, 0);
        nbd_close(t->conns[i].h);
    }
    /* Commands still unsettled belonged to the handles just closed: nothing calls back now. */
    while (t->cmds) {
        struct cmd *cmd = t->cmds;
        if (cmd->pending && --*cmd->pending == 0) {
            free(cmd->pending);
            free(cmd->first_err);
        }
        cmd_free(cmd);
    }
    t->nconns = 0;
    t->in_flight = 0;
}

int bm_target_open(const struct bm_target_opts *o, struct bm_target **out, char *err,
                   size_t errlen)
{
    struct bm_target *t = calloc(1, sizeof *t);
    if (!t || !(t->uri = strdup(o->uri))) {
        free(t);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    t->wanted = o->connections ? o->connections : 1;
    if (t->wanted > MAX_CONNS)
        t->wanted = MAX_CONNS;
    int r = connect_all(t, err, errlen);
    if (r < 0) {
        close_all(t);
        free(t->uri);
        free(t);
        return r;
    }
    *out = t;
    return 0;
}

void bm_target_close(struct bm_target *t)
{
    if (!t)
        return;
    close_all(t);
    free(t->uri);
    free(t);
}

void bm_target_abandon(struct bm_target *t)
{
    for (unsigned i = 0; i < t->nconns; i++)
        t->conns[i].dead = true; /* close_all then skips nbd_shutdown, which would wait */
}

int bm_target_reconnect(struct bm_target *t, char *err, size_t errlen)
{
    uint64_t old_size = t->size;
    close_all(t);
    int r = connect_all(t, err, errlen);
    if (r < 0) {
        close_all(t);
        return r;
    }
    if (t->size != old_size) {
        snprintf(err, errlen, "%s changed size on reconnect", t->uri);
        return -EIO;
    }
    return 0;
}

uint64_t bm_target_size(const struct bm_target *t)
{
    return t->size;
}

unsigned bm_target_connections(const struct bm_target *t)
{
    return t->nconns;
}

bool bm_target_can_zero(const struct bm_target *t)
{
    return t->can_zero;
}

bool bm_target_can_fua(const struct bm_target *t)
{
    return t->can_fua;
}

bool bm_target_multi_conn(const struct bm_target *t)
{
    return t->multi_conn;
}

unsigned bm_target_in_flight(const struct bm_target *t)
{
    return t->in_flight;
}

bool bm_target_dead(const struct bm_target *t)
{
    if (t->nconns == 0)
        return true;
    for (unsigned i = 0; i < t->nconns; i++)
        if (t->conns[i].dead)
            return true;
    return false;
}

/* The live connection with the fewest commands in flight. */
static struct conn *pick(struct bm_target *t)
{
    struct conn *best = NULL;
    for (unsigned k = 0; k < t->nconns; k++) {
        struct conn *c = &t->conns[(t->next + k) % t->nconns];
        if (!c->dead && (!best || c->in_flight < best->in_flight))
            best = c;
    }
    t->next++;
    return best;
}

/* Answer the command's owner and free it. */
static void finish(struct cmd *cmd, int err)
{
    if (cmd->pending) {
        if (err && !*cmd->first_err)
            *cmd->first_err = err;
        if (--*cmd->pending == 0) {
            int e = *cmd->first_err;
            cmd->cb(cmd->opaque, e);
            free(cmd->pending);
            free(cmd->first_err);
        }
    } else {
        cmd->cb(cmd->opaque, err);
    }
    cmd_free(cmd);
}

static int on_complete(void *user_data, int *error)
{
    struct cmd *cmd = user_data;
    if (cmd->submitting) {
        cmd->early = true;
        cmd->early_err = *error;
        return 1;
    }
    cmd->c->in_flight--;
    cmd->t->in_flight--;
    finish(cmd, *error);
    return 1; /* retire the command */
}

static struct cmd *new_cmd(struct bm_target *t, struct conn *c, bm_target_cb cb, void *opaque)
{
    struct cmd *cmd = calloc(1, sizeof *cmd);
    if (cmd)
        *cmd = (struct cmd){.t = t, .c = c, .cb = cb, .opaque = opaque, .submitting = true,
                            .next = t->cmds};
    if (cmd) {
        if (t->cmds)
            t->cmds->prev = cmd;
        t->cmds = cmd;
    }
    return cmd;
}

/* Account a submitted command, or clean up after a refused one. */
static int submitted(struct bm_target *t, struct cmd *cmd, int64_t cookie)
{
    cmd->submitting = false;
    if (cookie >= 0 && cmd->early) {
        finish(cmd, cmd->early_err); /* done already, inside the submission */
        return 0;
    }
    if (cookie < 0) {
        int e = nbd_get_errno();
        bm_error("mirror target %s: %s", t->uri, nbd_get_error());
        if (nbd_aio_is_dead(cmd->c->h) || nbd_aio_is_closed(cmd->c->h))
            cmd->c->dead = true;
        cmd_free(cmd);
        return -(e ? e : EIO);
    }
    cmd->c->in_flight++;
    t->in_flight++;
    return 0;
}

/* Pick a connection and a command record for one submission. */
static struct cmd *prepare(struct bm_target *t, bm_target_cb cb, void *opaque, int *err)
{
    struct conn *c = pick(t);
    struct cmd *cmd = c ? new_cmd(t, c, cb, opaque) : NULL;
    *err = !c ? -ENOTCONN : !cmd ? -ENOMEM : 0;
    return cmd;
}

int bm_target_write(struct bm_target *t, const void *buf, size_t len, uint64_t offset,
                    unsigned flags, bm_target_cb cb, void *opaque)
{
    int err;
    struct cmd *cmd = prepare(t, cb, opaque, &err);
    if (!cmd)
        return err;
    nbd_completion_callback cc = {.callback = on_complete, .user_data = cmd};
    int64_t cookie = nbd_aio_pwrite(cmd->c->h, buf, len, offset, cc,
                                    (flags & BM_TARGET_FUA) ? LIBNBD_CMD_FLAG_FUA : 0);
    return submitted(t, cmd, cookie);
}

int bm_target_zero(struct bm_target *t, uint64_t offset, uint64_t len, bm_target_cb cb,
                   void *opaque)
{
    if (!t->can_zero) {
        if (len > ZERO_BUF)
            return -EINVAL;
        return bm_target_write(t, zero_buf, (size_t)len, offset, 0, cb, opaque);
    }
    int err;
    struct cmd *cmd = prepare(t, cb, opaque, &err);
    if (!cmd)
        return err;
    nbd_completion_callback cc = {.callback = on_complete, .user_data = cmd};
    return submitted(t, cmd, nbd_aio_zero(cmd->c->h, len, offset, cc, 0));
}

int bm_target_read(struct bm_target *t, void *buf, size_t len, uint64_t offset, bm_target_cb cb,
                   void *opaque)
{
    int err;
    struct cmd *cmd = prepare(t, cb, opaque, &err);
    if (!cmd)
        return err;
    nbd_completion_callback cc = {.callback = on_complete, .user_data = cmd};
    return submitted(t, cmd, nbd_aio_pread(cmd->c->h, buf, len, offset, cc, 0));
}

int bm_target_trim(struct bm_target *t, uint64_t offset, uint64_t len, bm_target_cb cb,
                   void *opaque)
{
    if (!t->can_trim) {
        cb(opaque, 0);
        return 0;
    }
    int err;
    struct cmd *cmd = prepare(t, cb, opaque, &err);
    if (!cmd)
        return err;
    nbd_completion_callback cc = {.callback = on_complete, .user_data = cmd};
    return submitted(t, cmd, nbd_aio_trim(cmd->c->h, len, offset, cc, 0));
}

int bm_target_flush(struct bm_target *t, bm_target_cb cb, void *opaque)
{
    if (!t->can_flush) {
        cb(opaque, 0);
        return 0;
    }
    unsigned *pending = malloc(sizeof *pending);
    int *first_err = calloc(1, sizeof *first_err);
    if (!pending || !first_err) {
        free(pending);
        free(first_err);
        return -ENOMEM;
    }
    /* With multi-conn a flush on one connection covers the writes completed on every one (the
     * NBD spec's promise for NBD_FLAG_CAN_MULTI_CONN): one flush, on the first live
     * connection: each flush is a round trip and a sync on the target. */
    *pending = 1; /* held until every flush is queued */
    int r = 0;
    bool one = t->multi_conn;
    unsigned live = 0;
    while (one && live < t->nconns && t->conns[live].dead)
        live++;
    if (one && live == t->nconns)
        r = -ENOTCONN;
    unsigned end = one ? live + 1 : t->nconns;
    for (unsigned i = one ? live : 0; i < end && i < t->nconns && r == 0; i++) {
        struct conn *c = &t->conns[i];
        if (c->dead) {
            r = -ENOTCONN;
            break;
        }
        struct cmd *cmd = new_cmd(t, c, cb, opaque);
        if (!cmd) {
            r = -ENOMEM;
            break;
        }
        cmd->pending = pending;
        cmd->first_err = first_err;
        nbd_completion_callback cc = {.callback = on_complete, .user_data = cmd};
        (*pending)++;
        r = submitted(t, cmd, nbd_aio_flush(c->h, cc, 0));
        if (r < 0)
            (*pending)--;
    }
    if (r < 0 && !*first_err)
        *first_err = -r;
    if (--*pending == 0) {
        cb(opaque, *first_err);
        free(pending);
        free(first_err);
    }
    return 0;
}

int bm_target_poll(struct bm_target *t, struct pollfd *extra, unsigned nextra, int timeout_ms)
{
    struct pollfd pfd[MAX_CONNS + 8];
    unsigned n = 0;
    for (unsigned i = 0; i < nextra && i < 8; i++) {
        extra[i].revents = 0;
        pfd[n++] = extra[i];
    }
    unsigned base = n;
    for (unsigned i = 0; i < t->nconns; i++) {
        struct conn *c = &t->conns[i];
        short ev = 0;
        if (!c->dead) {
            unsigned dir = nbd_aio_get_direction(c->h);
            if (dir & LIBNBD_AIO_DIRECTION_READ)
                ev |= POLLIN;
            if (dir & LIBNBD_AIO_DIRECTION_WRITE)
                ev |= POLLOUT;
        }
        pfd[n++] = (struct pollfd){.fd = c->dead ? -1 : nbd_aio_get_fd(c->h), .events = ev};
    }
    int r = poll(pfd, n, timeout_ms);
    if (r < 0)
        return errno == EINTR ? 0 : -errno;
    for (unsigned i = 0; i < nextra && i < 8; i++)
        extra[i].revents = pfd[i].revents;
    int ret = 0;
    for (unsigned i = 0; i < t->nconns; i++) {
        struct conn *c = &t->conns[i];
        short re = pfd[base + i].revents;
        if (c->dead || !re)
            continue;
        if (re & (POLLIN | POLLHUP | POLLERR))
            nbd_aio_notify_read(c->h);
        else if (re & POLLOUT)
            nbd_aio_notify_write(c->h);
        if (nbd_aio_is_dead(c->h) || nbd_aio_is_closed(c->h)) {
            if (!c->dead) {
                const char *why = nbd_get_error();
                bm_error("mirror target %s: connection lost%s%s", t->uri, why ? ": " : "",
                         why ? why : "");
            }
            c->dead = true;
        }
    }
    for (unsigned i = 0; i < t->nconns; i++)
        if (t->conns[i].dead)
            ret = -ENOTCONN;
    return ret;
}

struct zero_ranges_ctx {
    uint64_t pos;
    void (*cb)(void *opaque, uint64_t off, uint64_t len);
    void *opaque;
};

static int extent_cb(void *user_data, const char *metacontext, uint64_t offset,
                     uint32_t *entries, size_t nr_entries, int *error)
{
    struct zero_ranges_ctx *z = user_data;
    if (strcmp(metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0)
        return 0;
    uint64_t pos = offset;
    for (size_t i = 0; i + 1 < nr_entries; i += 2) {
        if (entries[i + 1] & LIBNBD_STATE_ZERO)
            z->cb(z->opaque, pos, entries[i]);
        pos += entries[i];
    }
    z->pos = pos;
    return 0;
}

int bm_target_zero_ranges(struct bm_target *t, uint64_t offset, uint64_t len,
                          void (*cb)(void *opaque, uint64_t off, uint64_t len), void *opaque)
{
    if (!t->base_allocation)
        return -ENOTSUP;
    struct conn *c = &t->conns[0];
    uint64_t end = offset + len;
    while (offset < end) {
        uint64_t n = end - offset;
        if (n > (UINT64_C(1) << 31))
            n = UINT64_C(1) << 31;
        struct zero_ranges_ctx z = {.pos = offset, .cb = cb, .opaque = opaque};
        nbd_extent_callback ec = {.callback = extent_cb, .user_data = &z};
        if (nbd_block_status(c->h, n, offset, ec, 0) < 0) {
            int e = nbd_get_errno();
            bm_error("mirror target %s: block status: %s", t->uri, nbd_get_error());
            return -(e ? e : EIO);
        }
        if (z.pos <= offset)
            return -EIO; /* no progress: a broken server */
        offset = z.pos;
    }
    return 0;
}
