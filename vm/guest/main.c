/* main.c: the test guest's workload, in 64-bit ring 3: the synthetic guest's workload (same
 * parameters, same self-checking page and block format: vm/blockfmt.h) on real guest RAM and
 * virtio-mmio disks, with TSC heartbeats and a status line on the console every status period.
 * Command line (docs/guest.md): virtio_mmio.device=SIZE@ADDR:IRQ (one per disk),
 * blkmig.workload=KEY=VALUE,... , blkmig.run=SECONDS, blkmig.status_ms=MS, tsc_khz=N,
 * blkmig.console=ADDR. */
#define XXH_INLINE_ALL
#define XXH_VECTOR 0 /* XXH_SCALAR: the guest is built without SSE */
#include "vm/blockfmt.h"
#include "vm/guest/guest.h"

extern char __image_end[];

enum pattern { UNIFORM = BM_WL_UNIFORM, HOTSPOT = BM_WL_HOTSPOT, SEQUENTIAL = BM_WL_SEQUENTIAL };

struct disk {
    struct vblk v;
    uint64_t nblocks, seq, credit; /* credit in byte-microseconds per second */
    uint32_t *gen;                 /* in guest RAM */
};

static struct {
    /* workload */
    uint64_t mem_rate, hot, disk_rate, ram_fill, disk_fill, seed;
    uint32_t io_min, io_max;
    enum pattern mem_pattern, disk_pattern;
    uint64_t run_s, status_ms;
    /* layout */
    uint8_t *area;
    uint64_t npages;
    uint32_t *page_gen;
    struct disk disks[GUEST_MAX_DISKS];
    unsigned ndisks;
    /* time */
    uint64_t tsc_khz, us_mult; /* us = ticks * us_mult >> 32 */
    uint64_t last_hb, hb, max_gap, period_gap, elapsed, tsc_back;
    uint64_t print_us; /* what the last status line took to print */
    /* counters */
    uint64_t ram_writes, ram_checks, disk_writes, disk_checks, errors;
    uint64_t rng, mem_seq;
} g;

/* The layout record a host reads (vm/blockfmt.h): the first page of the image (guest.ld). */
struct bm_guest_layout guest_layout __attribute__((section(".layout"), aligned(4096)));

static uint8_t iobuf[65536] __attribute__((aligned(4096)));
static uint8_t rbuf[4096] __attribute__((aligned(4096)));

static uint64_t rnd(void)
{
    return bm_wl_rand(&g.rng);
}

static uint64_t ticks_us(uint64_t t)
{
    return (uint64_t)(((unsigned __int128)t * g.us_mult) >> 32);
}

/* The TSC can jump back when the VM moves to a host (or a hypervisor) whose TSC is behind:
 * such a step counts as no time, and time since start (g.elapsed) only moves forward. */
static void heartbeat(void)
{
    uint64_t now = rdtsc(), gap = now - g.last_hb;
    if (now < g.last_hb) {
        g.tsc_back++;
        gap = 0;
    }
    g.elapsed += gap;
    if (gap > g.max_gap)
        g.max_gap = gap;
    if (gap > g.period_gap)
        g.period_gap = gap;
    g.last_hb = now;
    g.hb++;
}

static void error(const char *what, uint64_t idx, uint64_t gen, const char *why)
{
    if (g.errors++ < 20)
        cprintf("BMG error %s %lu generation %lu: %s\n", what, idx, gen, why);
}

/* ---- the command line ---- */

static _Noreturn void bad(const char *what, const char *p, const char *e)
{
    char tmp[96];
    size_t n = (size_t)(e - p) < sizeof tmp - 1 ? (size_t)(e - p) : sizeof tmp - 1;
    memcpy(tmp, p, n);
    tmp[n] = 0;
    cprintf("BMG fatal: bad %s: '%s'\n", what, tmp);
    guest_exit(2);
}

static bool is(const char *p, const char *e, const char *word)
{
    size_t n = strlen(word);
    return (size_t)(e - p) == n && strncmp(p, word, n) == 0;
}

static enum pattern parse_pattern(const char *p, const char *e)
{
    if (is(p, e, "uniform"))
        return UNIFORM;
    if (is(p, e, "hotspot"))
        return HOTSPOT;
    if (is(p, e, "sequential"))
        return SEQUENTIAL;
    bad("pattern (uniform, hotspot, sequential)", p, e);
}

static uint64_t size_or_die(const char *what, const char *p, const char *e, bool rate)
{
    const char *q = p;
    uint64_t v;
    if (parse_size(&q, e, &v) < 0)
        bad(what, p, e);
    if (rate && e - q == 2 && q[0] == '/' && q[1] == 's')
        q += 2;
    if (q != e)
        bad(what, p, e);
    return v;
}

/* The synthetic guest's workload syntax: mem=64M/s,hot=256M,mem-pattern=hotspot,disk=16M/s,
 * disk-pattern=uniform,io=4K-64K,ram-fill=512M,disk-fill=2G,seed=N. */
static void parse_workload(const char *p, const char *end)
{
    while (p < end) {
        const char *e = p, *eq;
        while (e < end && *e != ',')
            e++;
        for (eq = p; eq < e && *eq != '='; eq++)
            ;
        if (eq == e)
            bad("workload item (KEY=VALUE)", p, e);
        const char *v = eq + 1;
        if (is(p, eq, "mem"))
            g.mem_rate = size_or_die("mem rate", v, e, true);
        else if (is(p, eq, "disk"))
            g.disk_rate = size_or_die("disk rate", v, e, true);
        else if (is(p, eq, "hot"))
            g.hot = size_or_die("hot", v, e, false);
        else if (is(p, eq, "mem-pattern") || is(p, eq, "pattern"))
            g.mem_pattern = parse_pattern(v, e);
        else if (is(p, eq, "disk-pattern"))
            g.disk_pattern = parse_pattern(v, e);
        else if (is(p, eq, "ram-fill"))
            g.ram_fill = size_or_die("ram-fill", v, e, false);
        else if (is(p, eq, "disk-fill"))
            g.disk_fill = size_or_die("disk-fill", v, e, false);
        else if (is(p, eq, "seed"))
            g.seed = size_or_die("seed", v, e, false);
        else if (is(p, eq, "io")) {
            const char *q = v, *dash = v;
            while (dash < e && *dash != '-')
                dash++;
            uint64_t lo = size_or_die("io", q, dash, false), hi = lo;
            if (dash < e)
                hi = size_or_die("io", dash + 1, e, false);
            if (lo < 4096 || hi > sizeof iobuf || lo > hi || lo % 4096 || hi % 4096)
                bad("io (4K..64K, multiples of 4K, MIN-MAX)", v, e);
            g.io_min = (uint32_t)lo;
            g.io_max = (uint32_t)hi;
        } else
            bad("workload key (mem, hot, mem-pattern, disk, disk-pattern, io, ram-fill, "
                "disk-fill, seed)",
                p, eq);
        p = e < end ? e + 1 : e;
    }
}

static void parse_cmdline(const char *cmd, uint64_t *dev_base, unsigned *ndev)
{
    const char *e;
    for (const char *p = cmd; (p = next_word(p, &e)); p = e) {
        const char *eq = p;
        while (eq < e && *eq != '=')
            eq++;
        const char *v = eq < e ? eq + 1 : e;
        if (is(p, eq, "virtio_mmio.device")) {
            /* SIZE@ADDR:IRQ */
            const char *q = v;
            uint64_t size, addr, irq;
            if (parse_size(&q, e, &size) < 0 || q >= e || *q++ != '@' ||
                parse_size(&q, e, &addr) < 0 ||
                (q < e && (*q++ != ':' || parse_size(&q, e, &irq) < 0)) || q != e)
                bad("virtio_mmio.device (SIZE@ADDR:IRQ)", v, e);
            if (*ndev >= GUEST_MAX_DISKS)
                bad("virtio_mmio.device: too many devices", v, e);
            dev_base[(*ndev)++] = addr;
        } else if (is(p, eq, "blkmig.workload")) {
            parse_workload(v, e);
        } else if (is(p, eq, "blkmig.run")) {
            g.run_s = size_or_die("blkmig.run (seconds)", v, e, false);
        } else if (is(p, eq, "blkmig.status_ms")) {
            g.status_ms = size_or_die("blkmig.status_ms", v, e, false);
            if (!g.status_ms)
                g.status_ms = 1;
        }
    }
}

/* ---- RAM and disks ---- */

static uint64_t pick(enum pattern pat, uint64_t n, uint64_t hot, uint64_t *seq)
{
    return bm_wl_pick((int)pat, n, hot, seq, &g.rng);
}

static void write_page(uint64_t i)
{
    uint32_t gen = g.page_gen[i] + 1;
    guest_layout.busy_page = i + 1;
    barrier();
    bm_fmt_format(g.area + i * BM_FMT_SIZE, BM_FMT_PAGE_MAGIC, i, gen);
    g.page_gen[i] = gen;
    barrier();
    guest_layout.busy_page = 0;
    g.ram_writes++;
}

static int check_page(uint64_t i)
{
    g.ram_checks++;
    const char *why = bm_fmt_verify(g.area + i * BM_FMT_SIZE, BM_FMT_PAGE_MAGIC, i, g.page_gen[i]);
    if (!why)
        return 0;
    error("RAM page", i, g.page_gen[i], why);
    return -1;
}

static int write_blocks(struct disk *d, uint64_t first, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        bm_fmt_format(iobuf + (size_t)i * BM_FMT_SIZE, BM_FMT_BLOCK_MAGIC, first + i,
                      d->gen[first + i] + 1);
    guest_layout.busy_first = first;
    guest_layout.busy_count = n;
    barrier();
    guest_layout.busy_disk = (uint64_t)(d - g.disks) + 1;
    barrier();
    if (vblk_rw(&d->v, true, iobuf, n * BM_FMT_SIZE, first * BM_FMT_SIZE) < 0) {
        /* The blocks may hold either generation now: they stay marked busy. */
        error("disk write at block", first, d->gen[first] + 1, "I/O error");
        return -1;
    }
    for (uint32_t i = 0; i < n; i++)
        d->gen[first + i]++;
    barrier();
    guest_layout.busy_disk = 0;
    g.disk_writes += n;
    return 0;
}

static int check_block(struct disk *d, uint64_t b)
{
    uint32_t gen = d->gen[b];
    if (gen == 0)
        return 0; /* not the guest's data */
    g.disk_checks++;
    if (vblk_rw(&d->v, false, rbuf, BM_FMT_SIZE, b * BM_FMT_SIZE) < 0) {
        error("disk read at block", b, gen, "I/O error");
        return -1;
    }
    const char *why = bm_fmt_verify(rbuf, BM_FMT_BLOCK_MAGIC, b, gen);
    if (!why)
        return 0;
    error("disk block", b, gen, why);
    return -1;
}

/* Guest RAM from the PVH memory map: the RAM entry holding the image; everything above the
 * image is ours: [generation tables][workload pages]. */
static void layout(const struct boot_info *bi, const uint64_t *dev_base, unsigned ndev)
{
    const struct hvm_start_info *si = bi->si;
    uint64_t lo = ((uint64_t)(uintptr_t)__image_end + 4095) & ~4095ull, hi = 0;
    if (si->version >= 1 && si->memmap_paddr) {
        const struct hvm_memmap_entry *m =
            (const struct hvm_memmap_entry *)(uintptr_t)si->memmap_paddr;
        for (uint32_t i = 0; i < si->memmap_entries; i++)
            if (m[i].type == 1 && m[i].addr <= lo && m[i].addr + m[i].size > lo)
                hi = (m[i].addr + m[i].size) & ~4095ull;
    }
    if (!hi) {
        cprintf("BMG fatal: no RAM above the image in the PVH memory map (version %u, %u "
                "entries)\n",
                si->version, si->memmap_entries);
        guest_exit(2);
    }
    if (hi > 0xc0000000ull)
        hi = 0xc0000000ull;
    uint64_t meta = 0;
    for (unsigned k = 0; k < ndev; k++) {
        struct disk *d = &g.disks[k];
        if (vblk_init(&d->v, (uintptr_t)dev_base[k], k) < 0)
            guest_exit(2);
        d->nblocks = d->v.size / BM_FMT_SIZE;
        meta += ((d->nblocks * 4 + 4095) & ~4095ull);
    }
    g.ndisks = ndev;
    uint64_t avail = hi - lo;
    if (avail < meta + 16 * 4096) {
        cprintf("BMG fatal: %lu KiB of RAM above the image, the disks' tables need %lu KiB\n",
                avail >> 10, meta >> 10);
        guest_exit(2);
    }
    g.npages = (avail - meta - 4096) / (BM_FMT_SIZE + 4);
    uint64_t pg_bytes = (g.npages * 4 + 4095) & ~4095ull;
    uint8_t *p = (uint8_t *)(uintptr_t)lo;
    g.page_gen = (uint32_t *)(void *)p;
    memset(p, 0, pg_bytes);
    p += pg_bytes;
    for (unsigned k = 0; k < ndev; k++) {
        struct disk *d = &g.disks[k];
        d->gen = (uint32_t *)(void *)p;
        uint64_t n = (d->nblocks * 4 + 4095) & ~4095ull;
        memset(p, 0, n);
        p += n;
    }
    g.area = p;
    if ((uint64_t)(uintptr_t)(g.area + g.npages * BM_FMT_SIZE) > hi)
        g.npages = (hi - (uint64_t)(uintptr_t)g.area) / BM_FMT_SIZE;

    struct bm_guest_layout *l = &guest_layout;
    l->size = sizeof *l;
    l->page_gen = (uint64_t)(uintptr_t)g.page_gen;
    l->area = (uint64_t)(uintptr_t)g.area;
    l->npages = g.npages;
    l->ndisks = g.ndisks;
    for (unsigned k = 0; k < g.ndisks; k++) {
        l->disk[k].gen = (uint64_t)(uintptr_t)g.disks[k].gen;
        l->disk[k].nblocks = g.disks[k].nblocks;
        l->disk[k].mmio = (uint64_t)g.disks[k].v.base;
    }
    barrier();
    l->magic = BM_LAYOUT_MAGIC;
}

/* Every page and every block the guest wrote, by content. Returns the mismatches. */
static uint64_t full_check(uint64_t *pages, uint64_t *blocks)
{
    uint64_t before = g.errors;
    *pages = *blocks = 0;
    for (uint64_t i = 0; i < g.npages; i++, (*pages)++) {
        check_page(i);
        if ((i & 255) == 0)
            heartbeat();
    }
    for (unsigned k = 0; k < g.ndisks; k++)
        for (uint64_t b = 0; b < g.disks[k].nblocks; b++) {
            if (g.disks[k].gen[b]) {
                check_block(&g.disks[k], b);
                (*blocks)++;
            }
            heartbeat();
        }
    return g.errors - before;
}

static void status(void)
{
    uint64_t t0 = rdtsc();
    cprintf("BMG status t_ms=%lu hb=%lu ram_writes=%lu ram_checks=%lu disk_writes=%lu "
            "disk_checks=%lu errors=%lu max_gap_us=%lu gap_us=%lu tsc_back=%lu\n",
            ticks_us(g.elapsed) / 1000, g.hb, g.ram_writes, g.ram_checks, g.disk_writes,
            g.disk_checks, g.errors, ticks_us(g.max_gap), ticks_us(g.period_gap), g.tsc_back);
    g.period_gap = 0;
    uint64_t t1 = rdtsc(), took = t1 > t0 ? ticks_us(t1 - t0) : 0;
    /* At most double (plus 1 ms) per line: a line during which the VM was paused (a migration's
     * switchover lands inside the console exit) took seconds, and would otherwise hold the
     * next line back for four times that. A slow console still gets there in a few lines. */
    g.print_us = took < 2 * g.print_us + 1000 ? took : 2 * g.print_us + 1000;
}

/* The status line once the status period is over (by the guest's clock, at the last heartbeat).
 * The period stretches to 4 times what the last line took to print, so that printing never
 * takes more than a fifth of the guest's time: a line is one exit on blkmig's MMIO console
 * page but ~150 port writes on an 8250 (QEMU), ~30 ms a line on nested KVM. */
static void status_if_due(uint64_t *next_us)
{
    uint64_t now_us = ticks_us(g.elapsed);
    if (now_us >= *next_us) {
        status();
        uint64_t period = g.status_ms * 1000;
        if (period < 4 * g.print_us)
            period = 4 * g.print_us;
        *next_us = now_us + period;
    }
}

_Noreturn void guest_main(const struct boot_info *bi)
{
    uint64_t dev_base[GUEST_MAX_DISKS];
    unsigned ndev = 0;
    g.hot = 256ull << 20;
    g.io_min = 4096;
    g.io_max = 65536;
    g.status_ms = 1000;
    parse_cmdline(bi->cmdline, dev_base, &ndev);
    g.tsc_khz = bi->tsc_khz ? bi->tsc_khz : 1000000;
    g.us_mult = (1000ull << 32) / g.tsc_khz;
    g.rng = g.seed * 2654435761u + 1;
    layout(bi, dev_base, ndev);
    cprintf("BMG boot pages=%lu area=0x%lx disks=%u tsc_khz=%lu (%s) mem=%lu hot=%lu disk=%lu "
            "io=%u-%u run_s=%lu\n",
            g.npages, (uint64_t)(uintptr_t)g.area, g.ndisks, g.tsc_khz,
            !bi->tsc_khz       ? "unknown: assumed 1 GHz"
            : bi->tsc_from_pit ? "PIT"
                               : "cmdline",
            g.mem_rate, g.hot, g.disk_rate, g.io_min, g.io_max, g.run_s);
    for (unsigned k = 0; k < g.ndisks; k++) {
        cprintf("BMG disk %u at 0x%lx: %lu bytes\n", k, (uint64_t)g.disks[k].v.base,
                g.disks[k].v.size);
        g.disks[k].v.kick_ticks = g.tsc_khz * 1000; /* a second without a completion */
    }

    /* First-boot fill. */
    uint64_t fill = g.ram_fill / BM_FMT_SIZE;
    for (uint64_t i = 0; i < fill && i < g.npages; i++)
        write_page(i);
    for (unsigned k = 0; k < g.ndisks; k++) {
        struct disk *d = &g.disks[k];
        uint64_t nb = g.disk_fill / BM_FMT_SIZE;
        if (nb > d->nblocks)
            nb = d->nblocks;
        for (uint64_t b = 0; b < nb; b += 16)
            if (write_blocks(d, b, (uint32_t)(nb - b < 16 ? nb - b : 16)) < 0)
                break;
    }
    cprintf("BMG ready ram_writes=%lu disk_writes=%lu\n", g.ram_writes, g.disk_writes);

    g.last_hb = rdtsc();
    uint64_t hot_pages = g.hot / BM_FMT_SIZE, last_us = 0, next_status_us = g.status_ms * 1000;
    uint64_t mem_credit = 0; /* byte-microseconds per second, as the disks' */
    uint32_t nsizes = (g.io_max - g.io_min) / BM_FMT_SIZE + 1;
    for (;;) {
        heartbeat();
        uint64_t now_us = ticks_us(g.elapsed), dt = now_us - last_us;
        last_us = now_us;
        if (dt > 1000000)
            dt = 1000000;
        const uint64_t page_units = (uint64_t)BM_FMT_SIZE * 1000000;
        mem_credit += dt * g.mem_rate;
        if (mem_credit > 1024 * page_units)
            mem_credit = 1024 * page_units;
        for (unsigned n = 0; mem_credit >= page_units && n < 256; n++) {
            mem_credit -= page_units;
            write_page(pick(g.mem_pattern, g.npages, hot_pages, &g.mem_seq));
            check_page(rnd() % g.npages);
            /* A heartbeat (and the status line when due) per page, not per batch: where the
             * guest runs slowly (nested or emulated CPUs) a batch of 256 pages takes tens of
             * ms, which would hide gaps shorter than that. */
            heartbeat();
            status_if_due(&next_status_us);
        }
        if (g.mem_rate == 0 && (g.hb & 4095) == 0)
            check_page(rnd() % g.npages);
        for (unsigned k = 0; k < g.ndisks; k++) {
            struct disk *d = &g.disks[k];
            d->credit += dt * g.disk_rate;
            if (d->credit > (64ull << 20) * 1000000)
                d->credit = (64ull << 20) * 1000000;
            uint32_t n = g.io_min / BM_FMT_SIZE + (uint32_t)(rnd() % nsizes);
            if (d->credit < (uint64_t)n * page_units || d->nblocks < n)
                continue;
            d->credit -= (uint64_t)n * page_units;
            uint64_t span = d->nblocks - n + 1;
            uint64_t hot = g.disk_pattern == HOTSPOT ? span / 16 + 1 : span;
            uint64_t first = pick(g.disk_pattern, span, hot, &d->seq);
            if (g.disk_pattern == SEQUENTIAL)
                d->seq += n - 1;
            write_blocks(d, first, n);
            heartbeat();
            status_if_due(&next_status_us);
            for (unsigned i = 0; i < 4; i++) {
                check_block(d, rnd() % d->nblocks);
                heartbeat();
            }
        }
        status_if_due(&next_status_us);
        if (g.run_s && now_us >= g.run_s * 1000000) {
            heartbeat();
            status();
            uint64_t pages, blocks, bad_n = full_check(&pages, &blocks);
            cprintf("BMG check pages=%lu blocks=%lu mismatches=%lu errors=%lu\n", pages, blocks,
                    bad_n, g.errors);
            guest_exit(g.errors ? 1 : 0);
        }
    }
}
