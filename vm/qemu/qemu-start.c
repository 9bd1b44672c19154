/* qemu-start.c: making a qemu VM: launching QEMU as a child, or adopting a running one. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "vm/qemu/qemu-internal.h"

/* How long one connect attempt waits for the greeting while QEMU starts. */
#define CONNECT_MS 2000
/* How long a QEMU whose QMP connection broke at start is given to exit (for its stderr). */
#define EXIT_AT_START_MS 3000

static int64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static struct qemu_vm *vm_new(void)
{
    struct qemu_vm *v = calloc(1, sizeof *v);
    if (!v)
        return NULL;
    v->vm.ops = &qemu_vm_ops;
    v->errfd = -1;
    v->status = -1;
    pthread_mutex_init(&v->mu, NULL);
    return v;
}

void qemu_vm_free(struct qemu_vm *v)
{
    if (!v)
        return;
    if (v->mon_ok)
        qemu_mon_destroy(&v->mon);
    if (v->errfd >= 0)
        close(v->errfd);
    pthread_mutex_destroy(&v->mu);
    qemu_cmdline_free(v->cl);
    free(v->argv);
    free(v->disks);
    free(v);
}

/* ---- the child ---- */

bool qemu_vm_drain_stderr(struct qemu_vm *v, bool pass)
{
    char buf[4096];
    for (;;) {
        ssize_t n = v->errfd >= 0 ? read(v->errfd, buf, sizeof buf) : 0;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno == EAGAIN;
        if (n == 0)
            return false;
        if (pass) {
            ssize_t w = write(STDERR_FILENO, buf, (size_t)n);
            (void)w; /* nowhere to say that stderr failed */
            continue;
        }
        /* Keep the last QEMU_STDERR_TAIL bytes. */
        size_t m = (size_t)n > QEMU_STDERR_TAIL ? QEMU_STDERR_TAIL : (size_t)n;
        if (v->tail_len + m > QEMU_STDERR_TAIL) {
            size_t drop = v->tail_len + m - QEMU_STDERR_TAIL;
            memmove(v->tail, v->tail + drop, v->tail_len - drop);
            v->tail_len -= drop;
        }
        memcpy(v->tail + v->tail_len, buf + (size_t)n - m, m);
        v->tail_len += m;
        v->tail[v->tail_len] = '\0';
    }
}

/* How the child ended, as a shell says it. */
static void note_exit(struct qemu_vm *v, int ws)
{
    char how[64];
    int st = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
    if (WIFEXITED(ws))
        snprintf(how, sizeof how, "exited with status %d", st);
    else
        snprintf(how, sizeof how, "was killed by signal %d", WTERMSIG(ws));
    pthread_mutex_lock(&v->mu);
    v->gone = true;
    v->status = st;
    v->dead = true;
    snprintf(v->why, sizeof v->why, "QEMU (pid %d) %s%s%s%s", (int)v->pid, how,
             v->shutdown_seen ? " after shutting down (" : "", v->shutdown_reason,
             v->shutdown_seen ? ")" : "");
    pthread_mutex_unlock(&v->mu);
}

bool qemu_vm_wait_child(struct qemu_vm *v, int ms)
{
    pthread_mutex_lock(&v->mu);
    bool gone = v->gone;
    pthread_mutex_unlock(&v->mu);
    if (gone)
        return true;
    int64_t deadline = now_ms() + ms;
    for (;;) {
        int ws;
        pid_t r = waitpid(v->pid, &ws, ms < 0 ? 0 : WNOHANG);
        if (r == v->pid) {
            note_exit(v, ws);
            return true;
        }
        if (r < 0 && errno != EINTR)
            return false; /* not our child (cannot happen for a launched QEMU) */
        if (ms >= 0 && now_ms() >= deadline)
            return false;
        if (r == 0)
            poll(NULL, 0, 20); /* no pidfd in glibc 2.36's headers: a short wait */
    }
}

/* exec's failure comes back through a close-on-exec pipe: nothing read means QEMU runs. */
static void child(char *const *argv, int errw, int execw)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    /* Its own process group: a ^C at blkmig's terminal is blkmig's to handle (it ends QEMU
     * with quit), not QEMU's. */
    setpgid(0, 0);
    if (dup2(errw, STDERR_FILENO) < 0)
        _exit(127);
    execvp(argv[0], argv);
    int e = errno;
    ssize_t w = write(execw, &e, sizeof e);
    (void)w;
    _exit(127);
}

static int spawn(struct qemu_vm *v, char *const *argv, char *err, size_t errlen)
{
    int ep[2], xp[2];
    if (pipe2(ep, O_CLOEXEC) < 0 || pipe2(xp, O_CLOEXEC) < 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        return -errno;
    }
    pid_t pid = fork();
    if (pid == 0)
        child(argv, ep[1], xp[1]);
    int fe = errno;
    close(ep[1]);
    close(xp[1]);
    if (pid < 0) {
        close(ep[0]);
        close(xp[0]);
        snprintf(err, errlen, "fork: %s", strerror(fe));
        return -fe;
    }
    v->pid = pid;
    v->errfd = ep[0];
    fcntl(v->errfd, F_SETFL, O_NONBLOCK);
    int e = 0;
    ssize_t n;
    while ((n = read(xp[0], &e, sizeof e)) < 0 && errno == EINTR)
        ;
    close(xp[0]);
    if (n == (ssize_t)sizeof e) {
        qemu_vm_wait_child(v, -1);
        snprintf(err, errlen, "cannot run %s: %s", argv[0], strerror(e));
        return -e;
    }
    return 0;
}

/* ---- QMP ---- */

static int take_mon(struct qemu_vm *v, struct bm_qmp *q, char *err, size_t errlen)
{
    char name[64];
    snprintf(name, sizeof name, "QEMU (pid %d)", (int)v->pid);
    bm_qmp_version(q, &v->major, &v->minor, &v->micro);
    if (qemu_mon_init(&v->mon, q, name) < 0) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    v->mon_ok = true;
    return 0;
}

/* QEMU's stderr (in) as one line of an error (out): newlines become "; ", trailing ones go. */
static void one_line(const char *in, char *out, size_t len)
{
    size_t n = strlen(in), k = 0;
    while (n && (in[n - 1] == '\n' || in[n - 1] == '\r'))
        n--;
    for (size_t i = 0; i < n && k + 3 < len; i++) {
        if (in[i] == '\n') {
            out[k++] = ';';
            out[k++] = ' ';
        } else if (in[i] != '\r') {
            out[k++] = in[i];
        }
    }
    if (len)
        out[k < len ? k : len - 1] = '\0';
}

/* The child answers on QMP: connect as soon as its socket listens, while watching it (a QEMU
 * that fails at start exits, and its stderr says why). */
static int connect_child(struct qemu_vm *v, int timeout_ms, char *err, size_t errlen)
{
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        qemu_vm_drain_stderr(v, false);
        struct bm_qmp *q;
        int left = (int)(deadline - now_ms()), r = -ETIMEDOUT;
        if (left > 0)
            r = bm_qmp_connect(v->qmp_path, left < CONNECT_MS ? left : CONNECT_MS, &q, err, errlen);
        if (r == 0)
            return take_mon(v, q, err, errlen);
        /* Not yet listening, or not yet in its main loop (no greeting): try again. */
        bool early = r == -ENOENT || r == -ECONNREFUSED || r == -ETIMEDOUT;
        if (qemu_vm_wait_child(v, early ? 0 : EXIT_AT_START_MS)) {
            qemu_vm_drain_stderr(v, false);
            char tail[QEMU_STDERR_TAIL + 64];
            one_line(v->tail, tail, sizeof tail);
            snprintf(err, errlen, "%s at start%s%s", v->why, tail[0] ? ": " : "", tail);
            return -ECHILD;
        }
        if (early && now_ms() >= deadline) {
            snprintf(err, errlen, "QEMU (pid %d) did not answer on QMP at %s within %d ms",
                     (int)v->pid, v->qmp_path, timeout_ms);
            return -ETIMEDOUT;
        }
        if (!early)
            return r;
        struct pollfd pf = {.fd = v->errfd, .events = POLLIN};
        poll(&pf, 1, 50); /* the socket appears soon; its stderr may say why not */
    }
}

/* The disks, from three queries, and the run state. */
static int discover(struct qemu_vm *v, char *err, size_t errlen)
{
    struct json_object *b = NULL, *s = NULL, *n = NULL;
    int r = qemu_mon_exec_type(&v->mon, "query-block", NULL, json_type_array, &b, err, errlen);
    if (r == 0)
        r = qemu_mon_exec_type(&v->mon, "query-blockstats", NULL, json_type_array, &s, err, errlen);
    if (r == 0)
        r = qemu_mon_exec_type(&v->mon, "query-named-block-nodes",
                               qemu_obj("flat", json_object_new_boolean(true), NULL),
                               json_type_array, &n, err, errlen);
    if (r == 0)
        r = qemu_disks_parse(b, s, n, &v->disks, &v->ndisks, err, errlen);
    json_object_put(b);
    json_object_put(s);
    json_object_put(n);
    /* A QEMU started with -S, or paused by hand, is paused from the start. */
    struct json_object *st, *running;
    if (r == 0 && (r = qemu_mon_exec_type(&v->mon, "query-status", NULL, json_type_object, &st, err,
                                          errlen)) == 0) {
        v->vm.paused = !(json_object_object_get_ex(st, "running", &running) &&
                         json_object_get_boolean(running));
        json_object_put(st);
    }
    return r;
}

/* blkmig's QMP socket path: one left by a QEMU that is gone is removed, one a live process
 * listens on (another blkmig's QEMU in the same run directory) is refused. */
static int claim_socket(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -errno;
    }
    int r = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 ? 0 : -errno;
    close(fd);
    if (r == 0) {
        snprintf(err, errlen,
                 "%s: a running process listens there (another QEMU in this run "
                 "directory?)",
                 path);
        return -EADDRINUSE;
    }
    if (r != -ENOENT && unlink(path) < 0 && errno != ENOENT) {
        snprintf(err, errlen, "cannot remove the stale socket %s: %s", path, strerror(errno));
        return -errno;
    }
    return 0;
}

/* The user's line, kept for describe: joined and split into one allocation. */
static int keep_argv(struct qemu_vm *v, int argc, const char *const *argv)
{
    size_t len = 0;
    for (int i = 0; i < argc; i++)
        len += strlen(argv[i]) + 1;
    char *buf = malloc(len ? len : 1);
    if (!buf)
        return -ENOMEM;
    char *p = buf;
    for (int i = 0; i < argc; i++)
        p = stpcpy(p, argv[i]) + 1;
    int r = qemu_proc_cmdline_split(buf, len, &v->argc, &v->argv);
    free(buf);
    return r;
}

/* QEMU runs qargv, answers on QMP, and its disks are known. */
static int start(struct qemu_vm *v, char *const *qargv, int timeout_ms, char *err, size_t errlen)
{
    int r = spawn(v, qargv, err, errlen);
    if (r == 0)
        r = connect_child(v, timeout_ms, err, errlen);
    if (r == 0)
        r = discover(v, err, errlen);
    return r;
}

static int launch(struct qemu_vm *v, int argc, const char *const *argv, const char *rundir,
                  int timeout_ms, char *err, size_t errlen)
{
    int r = qemu_cmdline_parse(argc, argv, &v->cl, err, errlen);
    if (r < 0)
        return r;
    char **qargv = NULL;
    if ((size_t)snprintf(v->qmp_path, sizeof v->qmp_path, "%s/qmp.sock", rundir) >=
        sizeof v->qmp_path) {
        snprintf(err, errlen, "the run directory's path is too long for a socket: %s", rundir);
        r = -ENAMETOOLONG;
    } else if ((r = claim_socket(v->qmp_path, err, errlen)) == 0) {
        r = qemu_cmdline_source_argv(v->cl, v->qmp_path, &qargv, err, errlen);
    }
    if (r == 0 && (r = keep_argv(v, argc, argv)) < 0)
        snprintf(err, errlen, "out of memory");
    if (r == 0)
        r = start(v, qargv, timeout_ms, err, errlen);
    free(qargv);
    return r;
}

/* After launch or launch_incoming: QEMU's warnings shown, the watcher started; on failure
 * QEMU ended and v freed. */
static int launched(struct qemu_vm *v, int r, struct qemu_vm **out, char *err, size_t errlen)
{
    if (r == 0) {
        qemu_vm_drain_stderr(v, false);
        if (v->tail_len)
            fputs(v->tail, stderr); /* QEMU's warnings at start: the user's to see */
        r = qemu_vm_start_watcher(v, err, errlen);
    }
    if (r < 0) {
        if (v->pid > 0 && !qemu_vm_wait_child(v, 0)) {
            v->vm.ops->destroy(&v->vm); /* quit, SIGTERM, SIGKILL */
        } else {
            qemu_vm_free(v);
        }
        return r;
    }
    *out = v;
    return 0;
}

/* A new VM for launch or launch_incoming (NULL, err filled, when out of memory). */
static struct qemu_vm *new_launched(char *err, size_t errlen)
{
    struct qemu_vm *v = vm_new();
    if (!v)
        snprintf(err, errlen, "out of memory");
    else
        v->launched = true;
    return v;
}

int qemu_vm_launch(int argc, const char *const *argv, const char *rundir, int timeout_ms,
                   struct qemu_vm **out, char *err, size_t errlen)
{
    struct qemu_vm *v = new_launched(err, errlen);
    if (!v)
        return -ENOMEM;
    return launched(v, launch(v, argc, argv, rundir, timeout_ms, err, errlen), out, err, errlen);
}

static int launch_incoming(struct qemu_vm *v, int argc, const char *const *argv,
                           const char *qmp_path, bool paused, int timeout_ms, char *err,
                           size_t errlen)
{
    if ((size_t)snprintf(v->qmp_path, sizeof v->qmp_path, "%s", qmp_path) >= sizeof v->qmp_path) {
        snprintf(err, errlen, "the QMP socket's path is too long: %s", qmp_path);
        return -ENAMETOOLONG;
    }
    unlink(v->qmp_path);
    const char **qargv = calloc((size_t)argc + 2, sizeof *qargv);
    if (!qargv || keep_argv(v, argc, argv) < 0) {
        free(qargv);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    memcpy(qargv, argv, (size_t)argc * sizeof *qargv);
    if (paused)
        qargv[argc] = "-S";
    /* Kept parsed, as for a launch: the VM may migrate on from here. */
    int r = qemu_cmdline_parse(argc, argv, &v->cl, err, errlen);
    if (r == 0)
        r = start(v, (char *const *)qargv, timeout_ms, err, errlen);
    free(qargv);
    return r;
}

int qemu_vm_launch_incoming(int argc, const char *const *argv, const char *qmp_path, bool paused,
                            int timeout_ms, struct qemu_vm **out, char *err, size_t errlen)
{
    struct qemu_vm *v = new_launched(err, errlen);
    if (!v)
        return -ENOMEM;
    return launched(v,
                    launch_incoming(v, argc, argv, qmp_path, paused, timeout_ms, err, errlen),
                    out, err, errlen);
}

/* ---- attach ---- */

/* The peer's command line, read whole. */
static int read_cmdline(struct qemu_vm *v, char *err, size_t errlen)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/cmdline", (int)v->pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -ESRCH;
    }
    size_t cap = QEMU_CMDLINE_MAX_TOTAL + 1, len = 0;
    char *buf = malloc(cap);
    ssize_t n = 1;
    while (buf && len < cap && (n = read(fd, buf + len, cap - len)) > 0)
        len += (size_t)n;
    close(fd);
    int r = !buf ? -ENOMEM : n < 0 ? -errno : qemu_proc_cmdline_split(buf, len, &v->argc, &v->argv);
    free(buf);
    if (r < 0)
        snprintf(err, errlen, "%s: %s", path,
                 r == -E2BIG ? "longer than a QEMU command line may be" : strerror(-r));
    return r;
}

static int adopt(struct qemu_vm *v, const char *qmp_path, int timeout_ms, char *err, size_t errlen)
{
    struct bm_qmp *q;
    int r = bm_qmp_connect(qmp_path, timeout_ms, &q, err, errlen);
    if (r < 0)
        return r;
    struct ucred cr;
    socklen_t crl = sizeof cr;
    if (getsockopt(bm_qmp_fd(q), SOL_SOCKET, SO_PEERCRED, &cr, &crl) < 0 || cr.pid <= 0) {
        snprintf(err, errlen, "%s: cannot tell which process serves it", qmp_path);
        bm_qmp_close(q);
        return -ESRCH;
    }
    v->pid = cr.pid;
    snprintf(v->qmp_path, sizeof v->qmp_path, "%s", qmp_path);
    if ((r = take_mon(v, q, err, errlen)) < 0 || (r = read_cmdline(v, err, errlen)) < 0)
        return r;
    char why[QEMU_CMDLINE_ERRLEN];
    r = qemu_cmdline_parse(v->argc, (const char *const *)v->argv, &v->cl, why, sizeof why);
    if (r < 0) {
        snprintf(err, errlen, "the command line of QEMU (pid %d) is refused: %s", (int)v->pid, why);
        return r;
    }
    return discover(v, err, errlen);
}

int qemu_vm_attach(const char *qmp_path, int timeout_ms, struct qemu_vm **out, char *err,
                   size_t errlen)
{
    struct qemu_vm *v = vm_new();
    if (!v) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int r = adopt(v, qmp_path, timeout_ms, err, errlen);
    if (r == 0)
        r = qemu_vm_start_watcher(v, err, errlen);
    if (r < 0) {
        qemu_vm_free(v);
        return r;
    }
    *out = v;
    return 0;
}
