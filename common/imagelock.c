/* imagelock.c: QEMU-compatible image locks (OFD byte-range locks) and finding their holder. */
#include <config.h>

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/imagelock.h"

/* The permissions each mode takes and those it denies to others. */
static void mode_perms(enum bm_image_lock_mode mode, unsigned *take, unsigned *deny)
{
    *take = BM_PERM_CONSISTENT_READ;
    *deny = BM_PERM_WRITE | BM_PERM_RESIZE;
    if (mode == BM_IMAGE_LOCK_WRITE)
        *take |= BM_PERM_WRITE;
    else if (mode == BM_IMAGE_LOCK_SHARED)
        *deny = 0;
}

static int lock_byte(int fd, short type, int cmd, long byte, short *found)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};
    if (fcntl(fd, cmd, &fl) < 0)
        return -errno;
    if (found)
        *found = fl.l_type;
    return 0;
}

/* Whether another open file than fd holds a lock on byte. */
static int byte_held(int fd, long byte, bool *held)
{
    short type = F_UNLCK;
    int r = lock_byte(fd, F_WRLCK, F_OFD_GETLK, byte, &type);
    if (r == 0)
        *held = type != F_UNLCK;
    return r;
}

void bm_image_unlock(int fd)
{
    struct flock fl = {.l_type = F_UNLCK, .l_whence = SEEK_SET, .l_len = BM_PERM_NBITS};
    fl.l_start = BM_IMAGE_LOCK_PERM_BASE;
    fcntl(fd, F_OFD_SETLK, &fl);
    fl.l_start = BM_IMAGE_LOCK_SHARED_BASE;
    fcntl(fd, F_OFD_SETLK, &fl);
}

static int apply(int fd, unsigned take, unsigned deny)
{
    for (int b = 0; b < BM_PERM_NBITS; b++) {
        int r = 0;
        if (take & (1u << b))
            r = lock_byte(fd, F_RDLCK, F_OFD_SETLK, BM_IMAGE_LOCK_PERM_BASE + b, NULL);
        if (r == 0 && (deny & (1u << b)))
            r = lock_byte(fd, F_RDLCK, F_OFD_SETLK, BM_IMAGE_LOCK_SHARED_BASE + b, NULL);
        if (r < 0)
            return r;
    }
    return 0;
}

/* The first conflicting byte (its permission in *perm), 0 for none, or -errno. */
static long check(int fd, unsigned take, unsigned deny, unsigned *perm)
{
    for (int pass = 0; pass < 2; pass++) {
        for (int b = 0; b < BM_PERM_NBITS; b++) {
            unsigned bit = 1u << b;
            /* What we take must not be denied; what we deny must not be taken. */
            if (!((pass == 0 ? take : deny) & bit))
                continue;
            long byte = (pass == 0 ? BM_IMAGE_LOCK_SHARED_BASE : BM_IMAGE_LOCK_PERM_BASE) + b;
            bool held = false;
            int r = byte_held(fd, byte, &held);
            if (r < 0)
                return r;
            if (held) {
                *perm = bit;
                return byte;
            }
        }
    }
    return 0;
}

/* Whether the "lock:" line of an fdinfo file is an OFD lock covering byte. */
static bool line_covers(char *line, long byte)
{
    /* "lock:\t1: OFDLCK ADVISORY  READ -1 fe:00:1234 100 101" (the end may be "EOF") */
    char *tok[10], *save = NULL;
    int n = 0;
    for (char *t = strtok_r(line, " \t\n", &save); t && n < 10; t = strtok_r(NULL, " \t\n", &save))
        tok[n++] = t;
    if (n != 9 || strcmp(tok[0], "lock:") != 0 || strcmp(tok[2], "OFDLCK") != 0)
        return false;
    char *end;
    long start = strtol(tok[7], &end, 10);
    if (*end)
        return false;
    long last = strcmp(tok[8], "EOF") == 0 ? -1 : strtol(tok[8], &end, 10);
    if (last != -1 && *end)
        return false;
    return start <= byte && (last == -1 || byte <= last);
}

static bool fd_holds(const char *pid, const char *fdname, long byte)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%.20s/fdinfo/%.20s", pid, fdname);
    FILE *f = fopen(path, "re");
    if (!f)
        return false;
    bool found = false;
    while (!found && fgets(line, sizeof line, f))
        found = strncmp(line, "lock:", 5) == 0 && line_covers(line, byte);
    fclose(f);
    return found;
}

static bool is_number(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s))
            return false;
    return true;
}

/* Whether process pid has an open file of the inode img that locks byte. (The caller's own
 * descriptor holds no lock by then: bm_image_lock dropped them.) */
static bool pid_holds(const char *pid, const struct stat *img, long byte)
{
    char dirpath[64];
    snprintf(dirpath, sizeof dirpath, "/proc/%.20s/fd", pid);
    DIR *dir = opendir(dirpath);
    if (!dir)
        return false;
    bool found = false;
    struct dirent *e;
    while (!found && (e = readdir(dir))) {
        if (!is_number(e->d_name))
            continue;
        char link[96];
        struct stat st;
        snprintf(link, sizeof link, "%s/%.20s", dirpath, e->d_name);
        if (stat(link, &st) < 0 || st.st_dev != img->st_dev || st.st_ino != img->st_ino)
            continue;
        found = fd_holds(pid, e->d_name, byte);
    }
    closedir(dir);
    return found;
}

/* Search /proc for the holder of byte: OFD locks report no pid, but each process's fdinfo
 * lists the locks of its open files. Only processes this one may inspect are found. */
static void find_holder(int fd, long byte, struct bm_image_holder *h)
{
    struct stat img;
    DIR *proc = opendir("/proc");
    if (fstat(fd, &img) < 0 || !proc) {
        if (proc)
            closedir(proc);
        return;
    }
    struct dirent *e;
    while ((e = readdir(proc))) {
        if (!is_number(e->d_name) || !pid_holds(e->d_name, &img, byte))
            continue;
        h->pid = atol(e->d_name);
        char path[64];
        snprintf(path, sizeof path, "/proc/%.20s/comm", e->d_name);
        FILE *f = fopen(path, "re");
        if (f) {
            if (fgets(h->comm, sizeof h->comm, f))
                h->comm[strcspn(h->comm, "\n")] = '\0';
            fclose(f);
        }
        break;
    }
    closedir(proc);
}

static bool no_ofd_locks(int r)
{
    return r == -EINVAL || r == -ENOLCK || r == -EOPNOTSUPP || r == -ENOSYS;
}

int bm_image_lock(int fd, enum bm_image_lock_mode mode, struct bm_image_holder *h)
{
    unsigned take, deny, perm = 0;
    memset(h, 0, sizeof *h);
    mode_perms(mode, &take, &deny);
    long byte = apply(fd, take, deny);
    if (byte == -EAGAIN || byte == -EACCES) {
        /* Someone holds an exclusive lock on one of the bytes: not QEMU's way, but a user. */
        perm = BM_PERM_WRITE;
        byte = BM_IMAGE_LOCK_PERM_BASE + 1;
    } else if (byte == 0) {
        byte = check(fd, take, deny, &perm);
    }
    if (byte == 0)
        return 0;
    bm_image_unlock(fd);
    if (byte < 0)
        return no_ofd_locks((int)byte) ? -ENOTSUP : (int)byte;
    h->perm = perm;
    bool writer = false;
    h->writer = byte_held(fd, BM_IMAGE_LOCK_PERM_BASE + 1, &writer) == 0 && writer;
    find_holder(fd, h->writer ? BM_IMAGE_LOCK_PERM_BASE + 1 : byte, h);
    return -EBUSY;
}

void bm_image_holder_describe(const struct bm_image_holder *h, char *buf, size_t len)
{
    if (h->pid == (long)getpid())
        snprintf(buf, len, "this process (it has the image open twice)");
    else if (h->pid)
        snprintf(buf, len, "another process (%s, pid %ld)", h->comm[0] ? h->comm : "?", h->pid);
    else
        snprintf(buf, len, "another process (QEMU?)");
}

const char *bm_image_perm_name(unsigned perm)
{
    switch (perm) {
    case BM_PERM_CONSISTENT_READ:
        return "consistent read";
    case BM_PERM_WRITE:
        return "write";
    case BM_PERM_WRITE_UNCHANGED:
        return "write unchanged";
    case BM_PERM_RESIZE:
        return "resize";
    case BM_PERM_GRAPH_MOD:
        return "graph modification";
    default:
        return "unknown";
    }
}
