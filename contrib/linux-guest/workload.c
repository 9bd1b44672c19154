/* workload.c: the Linux test guest's init workload, and the host-side checker of its disk
 * images (contrib/linux-guest/README.md says what it does, its parameters and its protocol). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define SECTOR      4096u
#define MAGIC       0x31544345534d5742ull /* "BWMSECT1" in memory */
#define GEN_UNKNOWN UINT32_MAX            /* a failed write left this sector undefined */
#define RUN_SECTORS 256u                  /* sectors read at a time by the checks */

/* The header at the start of every 4 KiB sector the workload writes; the rest of the sector is
 * a pseudo-random pattern drawn from (index, gen), and csum covers all of it but csum itself. */
struct sector_hdr {
    uint64_t magic;
    uint64_t index; /* the sector's own position: byte offset / 4096 */
    uint64_t gen;   /* the write that put it there, counted from 1 since boot */
    uint64_t csum;
};

static struct {
    uint64_t ram, rate, wrate, bs, span, hb_ms;
    const char *disk, *tty;
} par = {32 << 20, 8 << 20, 1 << 20, 64 << 10, 0, 100, "/dev/vda", "/dev/ttyS0"};

static int con_in = 0, con_out = 1;
static bool is_init;

/* Holds on the writers: `hold` counts the holders (quiesce, a check, poweroff); the disk
 * writer sets `busy` around each block it writes, so a holder waits only for that one. */
static pthread_mutex_t ctl_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ctl_cond = PTHREAD_COND_INITIALIZER;
static int hold;
static bool busy, quiesced;

/* The disk, once the writer has opened it (set under ctl_lock; gen_of's entries change only
 * while the writer is busy, so a holder may read them without the lock). */
static int disk_fd = -1;
static uint32_t *gen_of; /* latest generation of each sector written, 0 = never */
static uint64_t nsect;
static _Atomic uint64_t gen_last, blocks_written, write_errors, pages_dirtied;

/* ---- helpers ---- */

static void con_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void con_printf(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof buf - 2)
        n = sizeof buf - 2;
    buf[n++] = '\n';
    /* One write per line: the tty layer never interleaves two writes, so threads need no lock. */
    ssize_t w = write(con_out, buf, (size_t)n);
    (void)w;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_until(uint64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t sector_csum(const void *sector)
{
    const uint64_t *w = sector;
    uint64_t h = 0xcbf29ce484222325ull;
    for (unsigned i = 0; i < SECTOR / 8; i++) {
        if (i == offsetof(struct sector_hdr, csum) / 8)
            continue;
        h = (h ^ w[i]) * 0x100000001b3ull;
        h ^= h >> 32;
    }
    return h;
}

static void sector_fill(void *sector, uint64_t index, uint64_t gen)
{
    uint64_t *w = sector, s = index * 0x2545f4914f6cdd1dull ^ gen;
    struct sector_hdr *h = sector;
    for (unsigned i = sizeof *h / 8; i < SECTOR / 8; i++)
        w[i] = splitmix(&s);
    h->magic = MAGIC;
    h->index = index;
    h->gen = gen;
    h->csum = sector_csum(sector);
}

/* What is wrong with a sector found at position `index`, or NULL. */
static const char *sector_fault(const void *sector, uint64_t index)
{
    const struct sector_hdr *h = sector;
    if (h->magic != MAGIC)
        return "no header";
    if (h->index != index)
        return "header of another sector";
    if (h->csum != sector_csum(sector))
        return "checksum mismatch";
    return NULL;
}

/* A rate in units per second, spread evenly: how many units are due now. A backlog beyond
 * 100 ms worth (the VM or the writer was paused) is forgiven, so that no burst follows. */
struct pacer {
    double per_s;
    uint64_t t0, done;
};

static uint64_t pacer_due(struct pacer *p)
{
    double due = (double)(now_ns() - p->t0) * 1e-9 * p->per_s;
    double slack = p->per_s * 0.1 + 1;
    if (due - (double)p->done > slack)
        p->done = (uint64_t)(due - slack);
    return due > (double)p->done ? (uint64_t)due - p->done : 0;
}

/* Sleep until the next unit is due, but at least `min_ns`. */
static void pacer_sleep(struct pacer *p, uint64_t min_ns)
{
    uint64_t next = p->t0 + (uint64_t)((double)(p->done + 1) / p->per_s * 1e9);
    uint64_t earliest = now_ns() + min_ns;
    sleep_until(next > earliest ? next : earliest);
}

static void pacer_reset(struct pacer *p)
{
    p->t0 = now_ns();
    p->done = 0;
}

/* ---- holds ---- */

static void writers_hold(void)
{
    pthread_mutex_lock(&ctl_lock);
    hold++;
    while (busy)
        pthread_cond_wait(&ctl_cond, &ctl_lock);
    pthread_mutex_unlock(&ctl_lock);
}

static void writers_release(void)
{
    pthread_mutex_lock(&ctl_lock);
    hold--;
    pthread_cond_broadcast(&ctl_cond);
    pthread_mutex_unlock(&ctl_lock);
}

/* Wait while writers are held; true if the writer had to wait (its pacing restarts). */
static bool writer_wait(bool disk)
{
    bool waited = false;
    pthread_mutex_lock(&ctl_lock);
    while (disk ? hold > 0 : quiesced) {
        pthread_cond_wait(&ctl_cond, &ctl_lock);
        waited = true;
    }
    if (disk)
        busy = true;
    pthread_mutex_unlock(&ctl_lock);
    return waited;
}

/* ---- the three activities ---- */

static void *heartbeat(void *arg)
{
    (void)arg;
    uint64_t period = (uint64_t)par.hb_ms * 1000000u, next = now_ns();
    for (uint64_t seq = 0;; seq++) {
        uint64_t t = now_ns();
        con_printf("HB %" PRIu64 " %" PRIu64, seq, t / 1000);
        /* After a pause of the VM the missed beats are skipped, not caught up in a burst. */
        next += period;
        if (next < t)
            next = t + period;
        sleep_until(next);
    }
    return NULL;
}

static void *ram_dirtier(void *arg)
{
    (void)arg;
    uint64_t pages = par.ram / SECTOR;
    struct sysinfo si;
    /* A hot set the guest cannot hold would get PID 1 killed: keep it to 3/4 of what is free. */
    if (sysinfo(&si) == 0) {
        uint64_t room = (uint64_t)si.freeram * si.mem_unit / 4 * 3 / SECTOR;
        if (pages > room) {
            con_printf("BMW ram: %" PRIu64 " MiB do not fit, using %" PRIu64 " MiB", par.ram >> 20,
                       room * SECTOR >> 20);
            pages = room;
        }
    }
    if (pages == 0 || par.rate == 0)
        return NULL;
    volatile uint64_t *mem =
        mmap(NULL, pages * SECTOR, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        con_printf("BMW ram: cannot map %" PRIu64 " bytes: %s", pages * SECTOR, strerror(errno));
        return NULL;
    }
    struct pacer p = {(double)par.rate / SECTOR, 0, 0};
    pacer_reset(&p);
    for (uint64_t pg = 0;;) {
        if (writer_wait(false))
            pacer_reset(&p);
        for (uint64_t n = pacer_due(&p); n > 0; n--, p.done++) {
            mem[pg * (SECTOR / 8)] = ++pages_dirtied;
            pg = pg + 1 < pages ? pg + 1 : 0;
        }
        pacer_sleep(&p, 1000000);
    }
    return NULL;
}

static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Open the disk; as init, wait up to 10 s for it to appear (its driver may still be probing). */
static int disk_open(uint64_t *size)
{
    int fd = -1, tries = is_init ? 100 : 1;
    for (int i = 0; i < tries && fd < 0; i++) {
        fd = open(par.disk, O_RDWR | O_DIRECT);
        if (fd < 0 && errno == EINVAL) { /* a file on a filesystem without O_DIRECT */
            fd = open(par.disk, O_RDWR);
            if (fd >= 0)
                con_printf("BMW disk %s: no O_DIRECT here, using the page cache", par.disk);
        }
        if (fd < 0 && errno != ENOENT && errno != ENXIO)
            break;
        if (fd < 0 && i + 1 < tries)
            usleep(100000);
    }
    if (fd < 0) {
        con_printf("BMW disk %s: cannot open: %s: not writing", par.disk, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 ||
        (S_ISBLK(st.st_mode) ? ioctl(fd, BLKGETSIZE64, size) : (*size = (uint64_t)st.st_size, 0))) {
        con_printf("BMW disk %s: cannot get its size: %s: not writing", par.disk, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static void write_block(void *buf, uint64_t block)
{
    uint64_t per = par.bs / SECTOR, first = block * per, gen = ++gen_last;
    for (uint64_t i = 0; i < per; i++)
        sector_fill((char *)buf + i * SECTOR, first + i, gen);
    ssize_t n = pwrite(disk_fd, buf, par.bs, (off_t)(block * par.bs));
    int err = errno;
    pthread_mutex_lock(&ctl_lock);
    for (uint64_t i = 0; i < per; i++)
        gen_of[first + i] = n == (ssize_t)par.bs ? (uint32_t)gen : GEN_UNKNOWN;
    if (n == (ssize_t)par.bs)
        blocks_written++;
    else if (write_errors++ < 5)
        con_printf("BMW disk %s: write of block %" PRIu64 ": %s", par.disk, block,
                   n < 0 ? strerror(err) : "short write");
    busy = false;
    pthread_cond_broadcast(&ctl_cond);
    pthread_mutex_unlock(&ctl_lock);
}

static void *disk_writer(void *arg)
{
    (void)arg;
    uint64_t size;
    int fd = disk_open(&size);
    if (fd < 0)
        return NULL;
    uint64_t span = par.span && par.span < size ? par.span : size;
    uint64_t blocks = span / par.bs;
    if (blocks == 0) {
        con_printf("BMW disk %s: %" PRIu64 " bytes, less than one %" PRIu64
                   "-byte block: not writing",
                   par.disk, span, par.bs);
        close(fd);
        return NULL;
    }
    uint32_t *table = calloc(blocks * (par.bs / SECTOR), sizeof *table);
    void *buf = NULL;
    if (!table || posix_memalign(&buf, SECTOR, par.bs) != 0) {
        con_printf("BMW disk %s: out of memory for its table: not writing", par.disk);
        free(table);
        close(fd);
        return NULL;
    }
    pthread_mutex_lock(&ctl_lock);
    disk_fd = fd;
    gen_of = table;
    nsect = blocks * (par.bs / SECTOR);
    pthread_mutex_unlock(&ctl_lock);
    con_printf("BMW disk %s: %" PRIu64 " bytes, writing %" PRIu64 " blocks of %" PRIu64
               " at %" PRIu64 " bytes/s%s",
               par.disk, size, blocks, par.bs, par.wrate,
               blocks * par.bs < size ? " (the rest of the disk is left alone)" : "");
    if (par.wrate == 0)
        return NULL;
    struct pacer p = {(double)par.wrate / (double)par.bs, 0, 0};
    uint64_t rnd = now_ns() | 1;
    pacer_reset(&p);
    for (;;) {
        if (pacer_due(&p) == 0) {
            pacer_sleep(&p, 0);
            continue;
        }
        if (writer_wait(true))
            pacer_reset(&p);
        write_block(buf, xorshift(&rnd) % blocks);
        p.done++;
    }
    return NULL;
}

/* ---- commands ---- */

/* Read back every sector written so far and compare it with the table (writers held). */
static void check_disk(void)
{
    static char *buf;
    uint64_t sectors = 0, bad = 0;
    writers_hold();
    pthread_mutex_lock(&ctl_lock);
    int fd = disk_fd;
    uint64_t ns = nsect;
    pthread_mutex_unlock(&ctl_lock);
    if (!buf && posix_memalign((void **)&buf, SECTOR, RUN_SECTORS * SECTOR) != 0)
        buf = NULL;
    for (uint64_t s = 0; buf && s < ns;) {
        if (gen_of[s] == 0 || gen_of[s] == GEN_UNKNOWN) {
            s++;
            continue;
        }
        uint64_t run = 1;
        while (run < RUN_SECTORS && s + run < ns && gen_of[s + run] != 0 &&
               gen_of[s + run] != GEN_UNKNOWN)
            run++;
        ssize_t n = pread(fd, buf, run * SECTOR, (off_t)(s * SECTOR));
        for (uint64_t i = 0; i < run; i++, sectors++) {
            const struct sector_hdr *h = (void *)(buf + i * SECTOR);
            const char *why = n != (ssize_t)(run * SECTOR) ? "read failed" : sector_fault(h, s + i);
            if (!why && h->gen != gen_of[s + i])
                why = "stale generation";
            if (why && bad++ < 5)
                con_printf("BAD sector=%" PRIu64 " want-gen=%" PRIu32 " gen=%" PRIu64 ": %s", s + i,
                           gen_of[s + i], h->gen, why);
        }
        s += run;
    }
    writers_release();
    con_printf("CHECK sectors=%" PRIu64 " bad=%" PRIu64, sectors, bad);
}

static void power_off(void)
{
    writers_hold();
    if (disk_fd >= 0 && fsync(disk_fd) < 0)
        con_printf("BMW disk %s: flush: %s", par.disk, strerror(errno));
    sync();
    con_printf("POWEROFF");
    if (!is_init)
        exit(0);
    reboot(RB_POWER_OFF);
    con_printf("BMW poweroff failed: %s", strerror(errno));
    writers_release();
}

static void command(const char *line)
{
    if (strcmp(line, "check") == 0) {
        check_disk();
    } else if (strcmp(line, "quiesce") == 0 || strcmp(line, "resume") == 0) {
        /* Only this thread changes `quiesced`: reading it here needs no lock. */
        bool q = line[0] == 'q', was = quiesced;
        if (q && !was)
            writers_hold();
        pthread_mutex_lock(&ctl_lock);
        quiesced = q;
        pthread_cond_broadcast(&ctl_cond);
        pthread_mutex_unlock(&ctl_lock);
        if (!q && was)
            writers_release();
        /* Quiesced, what the disk holds is what a flush made durable: images can be compared. */
        if (q && disk_fd >= 0 && fsync(disk_fd) < 0)
            con_printf("BMW disk %s: flush: %s", par.disk, strerror(errno));
        con_printf("%s gen=%" PRIu64, q ? "QUIESCED" : "RESUMED", (uint64_t)gen_last);
    } else if (strcmp(line, "stats") == 0) {
        con_printf("STATS blocks=%" PRIu64 " write-errors=%" PRIu64 " gen=%" PRIu64
                   " pages=%" PRIu64 " quiesced=%d",
                   (uint64_t)blocks_written, (uint64_t)write_errors, (uint64_t)gen_last,
                   (uint64_t)pages_dirtied, quiesced);
    } else if (strcmp(line, "poweroff") == 0) {
        power_off();
    } else if (line[0]) {
        con_printf("BMW unknown command '%.40s' (check, quiesce, resume, stats, poweroff)", line);
    }
}

/* Read command lines from the console until it ends; a line longer than the buffer is dropped. */
static void command_loop(void)
{
    char line[128];
    size_t len = 0;
    bool overlong = false;
    for (;;) {
        char c;
        ssize_t n = read(con_in, &c, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        if (c == '\n' || c == '\r') {
            line[len] = 0;
            if (!overlong)
                command(line);
            len = 0;
            overlong = false;
        } else if (len + 1 < sizeof line) {
            line[len++] = c;
        } else {
            overlong = true;
        }
    }
}

/* ---- parameters ---- */

static bool parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *s == '-')
        return false;
    unsigned shift = 0;
    switch (*end) {
    case 'k':
    case 'K':
        shift = 10;
        end++;
        break;
    case 'm':
    case 'M':
        shift = 20;
        end++;
        break;
    case 'g':
    case 'G':
        shift = 30;
        end++;
        break;
    }
    if (*end || (v << shift) >> shift != v)
        return false;
    *out = v << shift;
    return true;
}

static void set_param(char *tok)
{
    static const struct {
        const char *key;
        uint64_t *dst, min, max;
    } nums[] = {
        {"ram", &par.ram, 0, UINT64_MAX},     {"rate", &par.rate, 0, UINT64_MAX},
        {"wrate", &par.wrate, 0, UINT64_MAX}, {"span", &par.span, 0, UINT64_MAX},
        {"bs", &par.bs, SECTOR, 4u << 20},    {"hb", &par.hb_ms, 10, 60000},
    };
    char *eq = strchr(tok, '=');
    if (strncmp(tok, "bmw.", 4) != 0 || !eq)
        return;
    *eq = 0;
    const char *key = tok + 4, *val = eq + 1;
    if (strcmp(key, "disk") == 0 || strcmp(key, "tty") == 0) {
        *(key[0] == 'd' ? &par.disk : &par.tty) = val;
        return;
    }
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        uint64_t v;
        if (strcmp(key, nums[i].key) == 0 && parse_size(val, &v) && v >= nums[i].min &&
            v <= nums[i].max && (nums[i].dst != &par.bs || v % SECTOR == 0)) {
            *nums[i].dst = v;
            return;
        }
    }
    con_printf("BMW ignoring bmw.%s=%s", key, val);
}

/* Parameters from the kernel command line, or from the arguments when run by hand. */
static void parse_params(int argc, char **argv)
{
    static char cmdline[4096];
    if (argc > 1) {
        for (int i = 1; i < argc; i++)
            set_param(argv[i]);
        return;
    }
    int fd = open("/proc/cmdline", O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, cmdline, sizeof cmdline - 1) : -1;
    if (fd >= 0)
        close(fd);
    if (n <= 0) {
        con_printf("BMW cannot read /proc/cmdline: using the defaults");
        return;
    }
    cmdline[n] = 0;
    for (char *save, *t = strtok_r(cmdline, " \t\n", &save); t; t = strtok_r(NULL, " \t\n", &save))
        set_param(t);
}

/* As init, talk on the serial port; by hand, on stdin and stdout. No echo: the host's log
 * should hold only what the guest says. */
static void console_open(void)
{
    if (is_init) {
        int fd = open(par.tty, O_RDWR | O_NOCTTY);
        if (fd >= 0)
            con_in = con_out = fd;
    }
    struct termios t;
    if (tcgetattr(con_in, &t) == 0) {
        t.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
        t.c_lflag |= ICANON;
        tcsetattr(con_in, TCSANOW, &t);
    }
}

/* ---- the host side ---- */

/* Check every sector of an image that carries a header; exit 0 when all are sound. */
static int check_image(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        fprintf(stderr, "workload: %s: %s\n", path, strerror(errno));
        return 2;
    }
    static char buf[RUN_SECTORS * SECTOR];
    uint64_t pos = 0, sectors = 0, bad = 0, maxgen = 0, partial = 0;
    for (;;) {
        ssize_t n = pread(fd, buf, sizeof buf, (off_t)pos);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fprintf(stderr, "workload: %s: read at %" PRIu64 ": %s\n", path, pos, strerror(errno));
            close(fd);
            return 2;
        }
        if (n == 0)
            break;
        partial += (uint64_t)n % SECTOR;
        for (uint64_t i = 0; i < (uint64_t)n / SECTOR; i++) {
            const struct sector_hdr *h = (void *)(buf + i * SECTOR);
            uint64_t index = pos / SECTOR + i;
            if (h->magic != MAGIC)
                continue;
            sectors++;
            const char *why = sector_fault(h, index);
            if (why && bad++ < 5)
                printf("BAD sector=%" PRIu64 " gen=%" PRIu64 ": %s\n", index, h->gen, why);
            if (!why && h->gen > maxgen)
                maxgen = h->gen;
        }
        pos += (uint64_t)n - (uint64_t)n % SECTOR;
        if ((uint64_t)n % SECTOR)
            break;
    }
    close(fd);
    printf("IMAGE sectors=%" PRIu64 " bad=%" PRIu64 " max-gen=%" PRIu64 "%s\n", sectors, bad,
           maxgen, partial ? " (a partial sector at the end is ignored)" : "");
    return bad ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--check-image") == 0)
        return check_image(argv[2]);
    if (argc > 1 && argv[1][0] == '-') {
        fprintf(stderr, "usage: workload [bmw.KEY=VALUE...]   (the guest's workload)\n"
                        "       workload --check-image IMAGE  (check an image it wrote)\n");
        return 2;
    }
    is_init = getpid() == 1;
    parse_params(argc, argv);
    console_open();
    con_printf("BMW start ram=%" PRIu64 " rate=%" PRIu64 " disk=%s wrate=%" PRIu64 " bs=%" PRIu64
               " span=%" PRIu64 " hb=%" PRIu64,
               par.ram, par.rate, par.disk, par.wrate, par.bs, par.span, par.hb_ms);
    pthread_t t;
    if (pthread_create(&t, NULL, heartbeat, NULL) || pthread_create(&t, NULL, ram_dirtier, NULL) ||
        pthread_create(&t, NULL, disk_writer, NULL))
        con_printf("BMW cannot start a thread");
    command_loop();
    /* The console is gone: by hand that is the end; as init there is nothing to exit to. */
    if (!is_init)
        return 0;
    for (;;)
        pause();
}
