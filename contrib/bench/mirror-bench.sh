#!/usr/bin/env bash
# contrib/bench/mirror-bench.sh: `blkmig mirror` vs QEMU's blockdev-mirror vs nbdcopy.
#
# The source image (alternate 64 MiB random data / 64 MiB hole: 50% allocated) is mirrored to
# the same target: `qemu-nbd --persistent --shared=8 -f raw --cache=writeback --aio=threads`
# on an empty sparse file of the same size.
#   blkmig:  blkmig mirror --serve-unix SOCK --on-ready wait --json --control CTL SRC nbd://T
#   QEMU:    qemu-storage-daemon (file+raw node src0, exported writable on SOCK over NBD, QMP);
#            blockdev-add {driver: nbd, node-name: tgt0, server: T}; blockdev-mirror
#            {job-id: m0, device: src0, target: tgt0, sync: full} with QEMU's defaults
#            (granularity 64 KiB, buf-size 16 MiB, copy-mode background)
#   nbdcopy: nbdcopy --flush nbd+unix:///?socket=SOCK nbd://T, the source served by
#            `blkmig nbd-serve -u SOCK` (no writer; --flush because both mirrors flush too)
# Scenarios: no writer ("idle") and a writer (fio, ioengine=nbd on SOCK, randwrite,
# bsrange=4k-64k, rate=20m, iodepth=4, norandommap); unshaped (target on 127.0.0.1, everything
# in this namespace) and shaped (contrib/netns-hosts.sh: source side in namespace A, target in B on
# 10.77.0.2, tc tbf RATE (1gbit) on both egresses).
# Writer procedure (both mirrors alike): fio alone for BASE_S seconds against the served source
# (blkmig: `blkmig nbd-serve -u SOCK`, the server code `blkmig mirror --serve-unix` runs; QEMU:
# its own export, before the mirror starts) = "before"; then the mirror starts and the writer
# runs from the start until the job is ready, for at least MIN_WRITE_S seconds, at most
# MAX_WRITE_S (if a mirror is not ready by then, the writer stops and the job gets to catch up),
# = "during"; fio is stopped (trigger file), then `complete` (blkmig control / QMP
# block-job-complete). Without a writer, `complete` follows ready at once.
# Figures per run: time to ready and total time (harness clock, from starting blkmig mirror /
# from QMP blockdev-add of the target (connecting is in the window for both), to the ready
# event, and to blkmig's "done" event / BLOCK_JOB_COMPLETED; nbdcopy: its run time; blkmig's
# process exit comes a little after "done" and is recorded as exit_s), time from complete to
# done, bytes sent = the payload the target wrote (qemu-nbd's /proc/PID/io wchar delta; it reads
# requests with recvmsg, which rchar does not count; write-zeroes are fallocate calls and count
# nothing), wire bytes = rx_bytes of B's veth (shaped only), blkmig's own bytes_sent +
# active_bytes, allocated bytes at the start (SEEK_DATA) and bytes the writer wrote during the
# mirror, the writer's IOPS and bandwidth during vs before.
# Lower bound (shaped) = (allocated + written) / nominal link rate (1gbit = 125,000,000 B/s);
# the TCP goodput that tbf allows (measured at setup, ~95% of it: headers) is reported too.
# After every run the target must equal the source (a hole-aware byte compare of the two files;
# md5 of both is printed on a mismatch, which aborts the benchmark); after writer runs the source
# is restored to the pristine image (only differing chunks rewritten, holes punched again).
# Knobs: QUICK=1 (512 MiB image, 1 rep: ~2 minutes), FULL=1 (a 4 GiB image, 3 reps:
# ~20 minutes); the default is a 2 GiB image (1 GiB allocated) x 3 reps, ~10 minutes on the
# 2-core machine (a rep is 10 mirror runs); SIZE_M (image size in MiB, a multiple of 128),
# REPS, SHAPED=0|1|both (default both; shaping needs root), RATE (1gbit), MTU (of the shaped
# link: 1500, a plain Ethernet link; 9000 = jumbo frames), WRITE_RATE (20m),
# WRITE_QD (4), BASE_S (5), MIN_WRITE_S (3), MAX_WRITE_S (120), MIRROR_OPTS (extra blkmig
# mirror options), BENCH_DIR (work files, and the images when SHAPED=0; else the images live in
# the hosts' folders /var/tmp/NETNS_NAME-A|B), NETNS_NAME (namespace prefix, default bmmirror
# so as not to touch contrib/netns-hosts.sh's default bmA/bmB), BLKMIG (binary to test;
# default a fresh optimised build in build/release).
# Last line: RESULT mirror {json}.
set -euo pipefail
t_start=$(date +%s)
top=$(cd "$(dirname "$0")/../.." && pwd)
. "$top/contrib/deps.sh"

REPS=${REPS:-3}
SIZE_M=${SIZE_M:-2048}
[ "${QUICK:-0}" = 1 ] && { REPS=1; SIZE_M=512; }
[ "${FULL:-0}" = 1 ] && { SIZE_M=4096; }
SHAPED=${SHAPED:-both}
RATE=${RATE:-1gbit}
MTU=${MTU:-1500}
WRITE_RATE=${WRITE_RATE:-20m}
WRITE_QD=${WRITE_QD:-4}
BASE_S=${BASE_S:-5}
MIN_WRITE_S=${MIN_WRITE_S:-3}
MAX_WRITE_S=${MAX_WRITE_S:-120}
MIRROR_OPTS=${MIRROR_OPTS:-}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
NETNS_NAME=${NETNS_NAME:-bmmirror}
[ $((SIZE_M % 128)) -eq 0 ] || { echo "bench: SIZE_M must be a multiple of 128" >&2; exit 2; }
case $SHAPED in 0|1|both) ;; *) echo "bench: SHAPED=0, 1 or both" >&2; exit 2 ;; esac

if [ "$(id -u)" -ne 0 ] && [ "$SHAPED" != 0 ]; then
    if [ "$SHAPED" = 1 ]; then
        echo "bench: shaping needs root (network namespaces)" >&2
        exit 77
    fi
    echo "bench: not root: unshaped runs only" >&2
    SHAPED=0
fi

BM_TEST_PKGS="$BM_TEST_PKGS qemu-system-common" bm_install_deps test
if [ -z "${BLKMIG:-}" ]; then
    bm_build "$top" "$top/build/release"
    BLKMIG=$BM_BUILD_DIR/blkmig
    if grep -q 'fsanitize' "$BM_BUILD_DIR/Makefile" 2>/dev/null &&
       grep -q '^SAN_CFLAGS = -f' "$BM_BUILD_DIR/Makefile"; then
        echo "bench: $BLKMIG is a sanitizer build; set BLKMIG to an optimised binary" >&2
        exit 1
    fi
fi
BLKMIG=$(readlink -f "$BLKMIG")
for c in qemu-nbd qemu-storage-daemon fio nbdcopy python3; do
    command -v $c >/dev/null || { echo "bench: $c missing" >&2; exit 1; }
done

work=$(mktemp -d "$BENCH_DIR/blkmig-mirror-bench.XXXXXX")
netns_up=
drv_pid=
cleanup() {
    local rc=$?
    set +e
    [ -n "$drv_pid" ] && kill "$drv_pid" 2>/dev/null && wait "$drv_pid" 2>/dev/null
    # Whatever the driver started and did not stop (it registers every child's PID).
    if [ -f "$work/pids" ]; then
        local p
        # Each is a process-group leader (fio's job processes are in its group), except the
        # target qemu-nbd, which daemonized itself.
        for p in $(cat "$work/pids"); do
            kill -- "-$p" 2>/dev/null || kill "$p" 2>/dev/null
        done
        sleep 0.5
        for p in $(cat "$work/pids"); do
            kill -9 -- "-$p" 2>/dev/null || kill -9 "$p" 2>/dev/null
        done
    fi
    [ -n "$netns_up" ] && "$top/contrib/netns-hosts.sh" down --name "$NETNS_NAME"
    rm -rf "$work"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

drv=$work/drv.py
# The per-run driver (stdlib Python): images, one run of one side, the report.
sed -n "/^: <<'END_OF_DRIVER'\$/,/^END_OF_DRIVER\$/p" "$0" | sed '1d;$d' >"$drv"

ns_args=()
dir_a=$work
dir_b=$work
rate_bytes=
goodput=
if [ "$SHAPED" != 0 ]; then
    netns_up=1
    eval "$("$top/contrib/netns-hosts.sh" up --rate "$RATE" --mtu "$MTU" --name "$NETNS_NAME")"
    dir_a=$DISK_A
    dir_b=$DISK_B
    ns_args=(--ns-a "$NETNS_A" --ns-b "$NETNS_B" --dev-b "$DEV_B" --target-host "$ADDR_B"
             --target-port 10809)
    rate_bytes=$(python3 - "$RATE" <<'EOF'
import re, sys
m = re.fullmatch(r"([0-9.]+)([kmg]?)(bit|bps)", sys.argv[1].lower())
if not m:
    sys.exit("bench: RATE: use e.g. 1gbit, 500mbit or 100mbps")
v = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]
print(int(v / 8 if m.group(3) == "bit" else v))
EOF
)
    goodput=$(python3 "$drv" calib "$NETNS_A" "$NETNS_B" "$ADDR_B" 3)
    echo "bench: link $RATE (tbf), MTU $MTU = $rate_bytes B/s nominal; TCP goodput measured $goodput B/s"
fi

size=$((SIZE_M * 1048576))
pristine=$dir_a/pristine.img
src=$dir_a/src.img
tgt=$dir_b/target.img
echo "bench: preparing a $SIZE_M MiB image, half allocated, in $dir_a"
python3 "$drv" make-image "$pristine" "$size"
cp --sparse=always "$pristine" "$src"
pristine_alloc=$(python3 "$drv" alloc "$pristine")
cat "$pristine" "$src" >/dev/null

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

mirror_opt=()
for o in $MIRROR_OPTS; do mirror_opt+=("--mirror-opt=$o"); done

shapes=()
case $SHAPED in 0) shapes=(0) ;; 1) shapes=(1) ;; both) shapes=(0 1) ;; esac
for rep in $(seq "$REPS"); do
    for shaped in "${shapes[@]}"; do
        for writer in 0 1; do
            if [ $writer = 0 ]; then sides=(blkmig qemu nbdcopy); else sides=(blkmig qemu); fi
            # Rotate the order each repetition so no side always goes first.
            n=${#sides[@]}
            for k in $(seq 0 $((n - 1))); do
                side=${sides[$(((k + rep - 1) % n))]}
                if [ "$shaped" = 1 ]; then
                    net=("${ns_args[@]}")
                else
                    net=(--target-host 127.0.0.1 --target-port "$(free_port)")
                fi
                python3 "$drv" run --side "$side" --tag "r$rep" --src "$src" --target "$tgt" \
                    --size "$size" --work "$work" --pidfile "$work/pids" --blkmig "$BLKMIG" \
                    --shaped "$shaped" --writer "$writer" --write-rate "$WRITE_RATE" \
                    --write-qd "$WRITE_QD" --base-s "$BASE_S" --min-write-s "$MIN_WRITE_S" \
                    --max-write-s "$MAX_WRITE_S" "${net[@]}" ${mirror_opt[@]+"${mirror_opt[@]}"} \
                    >"$work/run.json" &
                drv_pid=$!
                wait "$drv_pid" || true
                drv_pid=
                line=$(cat "$work/run.json")
                [ -n "$line" ] || { echo "bench: the driver printed nothing" >&2; exit 1; }
                echo "$line" >>"$work/runs.jsonl"
                if ! python3 "$drv" oneline "$rep" "$line"; then
                    echo "bench: *** run failed (see above); aborting ***" >&2
                    exit 1
                fi
                if [ $writer = 1 ]; then
                    python3 "$drv" restore "$pristine" "$src"
                    a=$(python3 "$drv" alloc "$src")
                    [ "$a" = "$pristine_alloc" ] || {
                        echo "bench: restoring the source failed" \
                             "($a != $pristine_alloc allocated)" >&2
                        exit 1
                    }
                fi
            done
        done
    done
done

SIZE=$size PRISTINE_ALLOC=$pristine_alloc REPS=$REPS SHAPED=$SHAPED RATE=$RATE MTU=$MTU \
RATE_BYTES=$rate_bytes GOODPUT=$goodput WRITE_RATE=$WRITE_RATE WRITE_QD=$WRITE_QD \
BASE_S=$BASE_S MIN_WRITE_S=$MIN_WRITE_S MAX_WRITE_S=$MAX_WRITE_S MIRROR_OPTS=$MIRROR_OPTS \
BLKMIG=$BLKMIG NPROC=$(nproc) QUICK=${QUICK:-0} FULL=${FULL:-0} \
ELAPSED_S=$(($(date +%s) - t_start)) python3 "$drv" report "$work/runs.jsonl"
exit 0
# The driver, written out to $work/drv.py by the sed near the top.
: <<'END_OF_DRIVER'
"""The per-run driver of contrib/bench/mirror-bench.sh (stdlib only), written out by it.

Subcommands:
  make-image PATH SIZE           SIZE bytes, alternate 64 MiB of random data / 64 MiB hole
  alloc PATH                     allocated bytes (SEEK_DATA/SEEK_HOLE)
  compare A B                    exit 0 when A and B have the same contents (hole-aware)
  restore PRISTINE SRC           make SRC equal PRISTINE again, holes included (rewrites only
                                 the chunks that differ, punches what PRISTINE has as holes)
  calib NS_A NS_B ADDR_B SECS    TCP goodput A -> B (bytes/s), one stream, after 1 s of warm-up
  run --side blkmig|qemu|nbdcopy ...   one mirror run; prints one JSON line
  oneline REP JSON               one line about a run; exit 1 when it failed
  report RUNS.jsonl              table of medians, ratios, bars, RESULT line (params from env)
"""
import argparse
import ctypes
import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

CHUNK = 1 << 20


def now():
    return time.monotonic()


def die(msg, code=1):
    print("mirror-drv: " + msg, file=sys.stderr, flush=True)
    sys.exit(code)


# ---------------------------------------------------------------- images

def extents(path):
    """Data extents [(off, len)] of path."""
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        off = 0
        while off < size:
            try:
                d = os.lseek(fd, off, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    break
                raise
            h = os.lseek(fd, d, os.SEEK_HOLE)
            out.append((d, h - d))
            off = h
    finally:
        os.close(fd)
    return out


def alloc(path):
    return sum(n for _, n in extents(path))


def union(a, b):
    ev = sorted(a + b)
    out = []
    for off, n in ev:
        if out and off <= out[-1][0] + out[-1][1]:
            o, m = out[-1]
            out[-1] = (o, max(o + m, off + n) - o)
        else:
            out.append((off, n))
    return out


def make_image(path, size):
    with open(path, "wb") as f, open("/dev/urandom", "rb") as r:
        f.truncate(size)
        step = 128 << 20
        for base in range(0, size, step):
            f.seek(base)
            left = min(64 << 20, size - base)
            while left > 0:
                n = min(4 << 20, left)
                f.write(r.read(n))
                left -= n
    os.sync()


class Chunks:
    """Reads the same ranges of two files into reused buffers (fresh buffers per read cost
    this VM more than the reading itself)."""

    def __init__(self, a, b):
        self.fds = [os.open(a, os.O_RDONLY), os.open(b, os.O_RDONLY)]
        self.bufs = [bytearray(CHUNK), bytearray(CHUNK)]

    def close(self):
        for fd in self.fds:
            os.close(fd)

    def same(self, off, k):
        """Read k <= CHUNK bytes at off from both; return (equal, first buffer's view)."""
        vs = [memoryview(b)[:k] if k != CHUNK else b for b in self.bufs]
        for fd, v in zip(self.fds, vs):
            got = 0
            while got < k:
                n = os.preadv(fd, [v[got:] if got else v], off + got)
                if n == 0:
                    break
                got += n
        if k == CHUNK:
            return self.bufs[0] == self.bufs[1], self.bufs[0]
        return self.bufs[0][:k] == self.bufs[1][:k], vs[0]


def compare(a, b):
    """None when equal, else the first differing offset."""
    sa, sb = os.path.getsize(a), os.path.getsize(b)
    if sa != sb:
        return min(sa, sb)
    c = Chunks(a, b)
    try:
        for off, n in union(extents(a), extents(b)):
            end = off + n
            while off < end:
                k = min(CHUNK, end - off)
                eq, _ = c.same(off, k)
                if not eq:
                    x, y = c.bufs[0][:k], c.bufs[1][:k]
                    for i in range(k):
                        if x[i] != y[i]:
                            return off + i
                off += k
    finally:
        c.close()
    return None


def md5(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        while True:
            b = f.read(4 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def punch(fd, off, n):
    if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, n) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def restore(pristine, src):
    pe = extents(pristine)
    se = extents(src)
    c = Chunks(pristine, src)
    fd = os.open(src, os.O_WRONLY)
    try:
        # Data where pristine has data: rewrite the chunks that differ.
        for off, n in pe:
            end = off + n
            while off < end:
                k = min(CHUNK, end - off)
                eq, v = c.same(off, k)
                if not eq:
                    os.pwrite(fd, v, off)
                off += k
        # Data where pristine has a hole: punch it.
        pos = 0
        holes = []
        for off, n in pe:
            if off > pos:
                holes.append((pos, off - pos))
            pos = off + n
        size = os.path.getsize(pristine)
        if pos < size:
            holes.append((pos, size - pos))
        for ho, hn in holes:
            for do, dn in se:
                lo, hi = max(ho, do), min(ho + hn, do + dn)
                if lo < hi:
                    punch(fd, lo, hi - lo)
    finally:
        os.close(fd)
        c.close()
    os.sync()


# ---------------------------------------------------------------- processes

class Procs:
    """Children, registered in a pid file the shell's trap also reads."""

    def __init__(self, pidfile):
        self.pidfile = pidfile
        self.items = []  # (name, Popen or None, pid)

    def _note(self, pid):
        if self.pidfile:
            with open(self.pidfile, "a") as f:
                f.write("%d\n" % pid)

    def start(self, name, argv, **kw):
        # Each child leads its own process group (fio forks its jobs): the group is signalled.
        p = subprocess.Popen(argv, start_new_session=True, **kw)
        self.items.append((name, p, p.pid))
        self._note(p.pid)
        return p

    def adopt(self, name, pid):
        self.items.append((name, None, pid))
        self._note(pid)

    @staticmethod
    def _signal(pid, group, sig):
        try:
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, pid, timeout=10):
        for name, p, q in self.items:
            if q != pid:
                continue
            group = p is not None
            self._signal(pid, group, signal.SIGTERM)
            t = now() + timeout
            while now() < t:
                if p is not None:
                    if p.poll() is not None:
                        break
                elif not os.path.exists("/proc/%d" % pid) or \
                        open("/proc/%d/stat" % pid).read().split(") ")[1][0] == "Z":
                    break
                time.sleep(0.02)
            else:
                self._signal(pid, group, signal.SIGKILL)
                if p is not None:
                    p.wait()
            if group:  # what is left of the group (fio's job processes)
                t = now() + 2
                while now() < t and _group_alive(pid):
                    time.sleep(0.02)
                self._signal(pid, True, signal.SIGKILL)
        self.items = [x for x in self.items if x[2] != pid]

    def stop_all(self):
        for _, _, pid in list(reversed(self.items)):
            self.stop(pid, timeout=5)


def _group_alive(pgid):
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                st = open("/proc/%s/stat" % d).read().rsplit(") ", 1)[1].split()
            except OSError:
                continue
            if int(st[2]) == pgid and st[0] != "Z":
                return True
    return False


def ns(name):
    return ["ip", "netns", "exec", name] if name else []


def wait_unix(path, timeout=20, proc=None):
    t = now() + timeout
    while now() < t:
        if proc is not None and proc.poll() is not None:
            return False
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            return True
        except OSError:
            time.sleep(0.02)
        finally:
            s.close()
    return False


def proc_io(pid, key="wchar"):
    for line in open("/proc/%d/io" % pid):
        k, v = line.split(":")
        if k == key:
            return int(v)
    raise KeyError(key)


def rx_bytes(netns, dev):
    if not netns:
        return None
    out = subprocess.check_output(
        ["ip", "netns", "exec", netns, "cat", "/sys/class/net/%s/statistics/rx_bytes" % dev])
    return int(out)


def tail(path, n=15):
    try:
        return "".join(open(path, errors="replace").readlines()[-n:])
    except OSError:
        return ""


# ---------------------------------------------------------------- fio

def fio_argv(a, uri, out, runtime, trigger):
    return ns(a.ns_a) + [
        "fio", "--name=writer", "--ioengine=nbd", "--uri=" + uri,
        "--rw=randwrite", "--bsrange=4k-64k", "--iodepth=%d" % a.write_qd,
        # norandommap: a long run would fill fio's random map, after which fio shrinks blocks
        # to fit the free gaps (IOPS up, block sizes down); randrepeat (the default) gives every
        # side the same offsets.
        "--rate=" + a.write_rate, "--size=%d" % a.size, "--norandommap", "--time_based",
        "--runtime=%d" % runtime, "--output-format=json", "--output=" + out] + \
        (["--trigger-file=" + trigger] if trigger else [])


def fio_result(path, rc, log):
    """The writer's figures; an I/O error fio reports is a figure (a bar), fio not running at
    all is a harness failure."""
    txt = open(path).read() if os.path.exists(path) else ""
    i = txt.find("{")
    try:
        j = json.loads(txt[i:])["jobs"][0] if i >= 0 else None
    except ValueError:
        j = None
    if j is None:
        raise RuntimeError("fio exit %s, no result: %s" % (rc, tail(log, 5).strip()))
    w = j["write"]
    err = j["error"] or (rc != 0 and "fio exit %d: %s" % (rc, tail(log, 3).strip())) or None
    return {"error": err, "iops": w["iops"], "bw": w["bw_bytes"],
            "io_bytes": w["io_bytes"], "runtime_ms": w["runtime"],
            "lat_mean_us": w["lat_ns"]["mean"] / 1000.0 if "lat_ns" in w else None}


def baseline(a, procs, uri, tag):
    out = os.path.join(a.work, "fio-base-%s.json" % tag)
    log = out + ".log"
    with open(log, "w") as lf:
        p = procs.start("fio-base", fio_argv(a, uri, out, a.base_s, None), stdout=lf,
                        stderr=subprocess.STDOUT)
        rc = p.wait()
    return fio_result(out, rc, log)


class Writer:
    def __init__(self, a, procs, uri, tag):
        self.out = os.path.join(a.work, "fio-during-%s.json" % tag)
        self.log = self.out + ".log"
        self.trigger = os.path.join(a.work, "fio-stop-%s" % tag)
        if os.path.exists(self.trigger):
            os.unlink(self.trigger)
        self.lf = open(self.log, "w")
        self.p = procs.start("fio", fio_argv(a, uri, self.out, a.max_write_s, self.trigger),
                             stdout=self.lf, stderr=subprocess.STDOUT)
        self.t0 = now()

    def running(self):
        return self.p.poll() is None

    def stop(self):
        open(self.trigger, "w").close()
        try:
            rc = self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait()
        self.lf.close()
        self.t1 = now()
        return fio_result(self.out, rc, self.log)


# ---------------------------------------------------------------- QMP

class QMP:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.f = self.s.makefile("rb")
        json.loads(self.f.readline())  # greeting
        self.cv = threading.Condition()
        self.replies = {}
        self.events = []
        self.n = 0
        threading.Thread(target=self._reader, daemon=True).start()
        self.cmd("qmp_capabilities")

    def _reader(self):
        try:
            for line in self.f:
                m = json.loads(line)
                with self.cv:
                    if "event" in m:
                        m["_t"] = now()
                        self.events.append(m)
                    elif "id" in m:
                        self.replies[m["id"]] = m
                    self.cv.notify_all()
        except OSError:  # qsd quit
            pass

    def cmd(self, name, args=None, timeout=60):
        with self.cv:
            self.n += 1
            i = self.n
        m = {"execute": name, "id": i}
        if args is not None:
            m["arguments"] = args
        self.s.sendall(json.dumps(m).encode() + b"\n")
        with self.cv:
            if not self.cv.wait_for(lambda: i in self.replies, timeout):
                raise RuntimeError("QMP %s: no reply" % name)
            r = self.replies.pop(i)
        if "error" in r:
            raise RuntimeError("QMP %s: %s" % (name, r["error"]))
        return r["return"]

    def event(self, name, timeout=None):
        """The first event NAME received so far (or within timeout), else None."""
        def find():
            for e in self.events:
                if e["event"] == name:
                    return e
            return None
        with self.cv:
            self.cv.wait_for(lambda: find() is not None, timeout)
            return find()


# ---------------------------------------------------------------- one run

def run(a):
    procs = Procs(a.pidfile)
    tag = "%s-%s-%s" % (a.side, "shaped" if a.shaped else "unshaped", a.tag)
    res = {"side": a.side, "shaped": a.shaped, "writer": a.writer, "ok": False}
    t_run = now()
    logs = []
    try:
        _run(a, procs, tag, res, logs)
        res["ok"] = res.get("error") is None
    except Exception as e:  # noqa: BLE001 - reported in the JSON line
        res["error"] = "%s: %s" % (type(e).__name__, e)
    finally:
        procs.stop_all()
    if res.get("error"):
        for lg in logs:
            t = tail(lg)
            if t:
                print("--- %s\n%s" % (lg, t), file=sys.stderr)
    # Verify: the target equals the source at completion (writers were stopped first).
    if res.get("done"):
        d = compare(a.src, a.target)
        res["verified"] = d is None
        if d is not None:
            res["error"] = "TARGET DIFFERS FROM SOURCE at byte %d (md5 %s vs %s)" % (
                d, md5(a.src), md5(a.target))
            res["ok"] = False
    res["wall_s"] = now() - t_run
    print(json.dumps(res), flush=True)


def _run(a, procs, tag, res, logs):
    # Target: qemu-nbd on an empty sparse file, in B when shaped.
    if os.path.exists(a.target):
        os.unlink(a.target)
    with open(a.target, "wb") as f:
        f.truncate(a.size)
    tlog = os.path.join(a.work, "target-%s.log" % tag)
    tpid = os.path.join(a.work, "target.pid")
    if os.path.exists(tpid):
        os.unlink(tpid)
    logs.append(tlog)
    with open(tlog, "w") as lf:
        r = subprocess.run(ns(a.ns_b) + [
            "qemu-nbd", "--fork", "--pid-file=" + tpid, "--persistent", "--shared=8",
            "-f", "raw", "--cache=writeback", "--aio=threads", "--bind", a.target_host,
            "--port", str(a.target_port), a.target], stdout=lf, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise RuntimeError("qemu-nbd (target) failed: " + tail(tlog, 3))
    target_pid = int(open(tpid).read())
    procs.adopt("qemu-nbd", target_pid)
    turi = "nbd://%s:%d" % (a.target_host, a.target_port)
    sock = os.path.join(a.work, "src-%s.sock" % tag)
    ctl = os.path.join(a.work, "ctl-%s.sock" % tag)
    for p in (sock, ctl):
        if os.path.exists(p):
            os.unlink(p)

    def counters():
        return proc_io(target_pid, "wchar"), rx_bytes(a.ns_b, a.dev_b)

    def final_counters(w0, r0):
        # Payload the target wrote to its file (NBD_CMD_WRITE data; write-zeroes are fallocate
        # calls and count nothing), and, shaped, the bytes B's veth received.
        w1, r1 = counters()
        res["target_bytes"] = w1 - w0
        res["wire_bytes"] = r1 - r0 if r0 is not None else None
        procs.stop(target_pid)

    writer = None
    if a.side in ("blkmig", "nbdcopy"):
        if a.writer or a.side == "nbdcopy":
            # blkmig nbd-serve: the same NBD server code `blkmig mirror --serve-unix` runs.
            slog = os.path.join(a.work, "serve-%s.log" % tag)
            logs.append(slog)
            lf = open(slog, "w")
            sp = procs.start("nbd-serve", ns(a.ns_a) + [a.blkmig, "nbd-serve", "-f", "-u", sock,
                                                        a.src], stdout=lf, stderr=subprocess.STDOUT)
            if not wait_unix(sock, proc=sp):
                raise RuntimeError("blkmig nbd-serve did not start: " + tail(slog, 3))
            if a.writer:
                res["before"] = baseline(a, procs, "nbd+unix:///?socket=" + sock, tag)
            if a.side == "nbdcopy":
                res["alloc"] = alloc(a.src)
                w0, r0 = counters()
                clog = os.path.join(a.work, "nbdcopy-%s.log" % tag)
                logs.append(clog)
                t0 = now()
                with open(clog, "w") as cf:
                    rc = subprocess.run(ns(a.ns_a) + ["nbdcopy", "--flush",
                                                      "nbd+unix:///?socket=" + sock, turi],
                                        stdout=cf, stderr=subprocess.STDOUT).returncode
                t1 = now()
                if rc != 0:
                    raise RuntimeError("nbdcopy exit %d: %s" % (rc, tail(clog, 3)))
                res["total_s"] = t1 - t0
                res["ready_s"] = None
                res["done"] = True
            procs.stop(sp.pid)
            lf.close()
            os.unlink(sock) if os.path.exists(sock) else None
            if a.side == "nbdcopy":
                final_counters(w0, r0)
                return
        res["alloc"] = alloc(a.src)
        w0, r0 = counters()
        mlog = os.path.join(a.work, "mirror-%s.log" % tag)
        mout = os.path.join(a.work, "mirror-%s.json" % tag)
        logs.append(mlog)
        lf = open(mlog, "w")
        events = {}
        summary = {}
        t0 = now()
        mp = procs.start("blkmig-mirror", ns(a.ns_a) + [
            a.blkmig, "mirror", "--serve-unix", sock, "--on-ready", "wait", "--json",
            "--control", ctl, "--no-progress"] + a.mirror_opt + [a.src, turi],
            stdout=subprocess.PIPE, stderr=lf)

        def reader():
            with open(mout, "w") as jf:
                for line in mp.stdout:
                    jf.write(line.decode())
                    try:
                        m = json.loads(line)
                    except ValueError:
                        continue
                    ev = m.get("event")
                    if ev == "summary":
                        summary.update(m)
                    elif ev and ev != "stats" and ev not in events:
                        events[ev] = now()
        rt = threading.Thread(target=reader, daemon=True)
        rt.start()
        if a.writer:
            if not wait_unix(sock, proc=mp):
                raise RuntimeError("blkmig mirror did not serve: " + tail(mlog, 3))
            writer = Writer(a, procs, "nbd+unix:///?socket=" + sock, tag)
        # Writer: from the start until the job is ready (and at least MIN_WRITE_S of writing).
        deadline = t0 + a.ready_timeout
        while True:
            if mp.poll() is not None:
                rt.join(5)
                raise RuntimeError("blkmig mirror exited %d before complete: %s %s" % (
                    mp.returncode, summary.get("error"), tail(mlog, 3)))
            ready = "ready" in events
            if writer and (ready and now() - writer.t0 >= a.min_write_s or
                           not writer.running()):
                res["during"] = writer.stop()
                res["write_s"] = writer.t1 - writer.t0
                res["ready_while_writing"] = ready
                writer = None
            if ready and writer is None:
                break
            if now() > deadline:
                raise RuntimeError("not ready after %d s" % a.ready_timeout)
            time.sleep(0.02)
        res["ready_s"] = events["ready"] - t0
        tc = now()
        r = subprocess.run([a.blkmig, "control", ctl, "complete"], capture_output=True)
        if r.returncode != 0:
            raise RuntimeError("control complete: %s" % r.stdout.decode() + r.stderr.decode())
        try:
            rc = mp.wait(timeout=a.ready_timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError("blkmig mirror did not finish after complete")
        t1 = now()
        rt.join(5)
        lf.close()
        # Done = the "done" event (the target is complete and flushed), like QEMU's
        # BLOCK_JOB_COMPLETED; the process exits a little later (exit_s).
        td = events.get("done", t1)
        res["total_s"] = td - t0
        res["complete_s"] = td - tc
        res["exit_s"] = t1 - t0
        res["summary"] = {k: summary.get(k) for k in (
            "result", "bytes_sent", "active_bytes", "zero_bytes", "rounds", "retries",
            "mode_switches", "elapsed_ms", "time_to_ready_ms", "connections", "mode")}
        res["tool_bytes"] = (summary.get("bytes_sent") or 0) + (summary.get("active_bytes") or 0)
        res["tool_ready_s"] = (summary.get("time_to_ready_ms") or 0) / 1000.0
        if rc != 0 or summary.get("result") != "done":
            raise RuntimeError("blkmig mirror exit %d, result %s, error %s" % (
                rc, summary.get("result"), summary.get("error")))
        res["done"] = True
        final_counters(w0, r0)
        return

    # QEMU: qemu-storage-daemon serving the source over NBD, blockdev-mirror to the target.
    qmp_path = os.path.join(a.work, "qmp-%s.sock" % tag)
    if os.path.exists(qmp_path):
        os.unlink(qmp_path)
    qlog = os.path.join(a.work, "qsd-%s.log" % tag)
    logs.append(qlog)
    lf = open(qlog, "w")
    qp = procs.start("qsd", ns(a.ns_a) + [
        "qemu-storage-daemon",
        "--blockdev", "driver=file,filename=%s,node-name=file0" % a.src,
        "--blockdev", "driver=raw,file=file0,node-name=src0",
        "--nbd-server", "addr.type=unix,addr.path=%s" % sock,
        "--export", "type=nbd,id=exp0,node-name=src0,writable=on",
        "--chardev", "socket,path=%s,server=on,wait=off,id=qmp0" % qmp_path,
        "--monitor", "chardev=qmp0"], stdout=lf, stderr=subprocess.STDOUT)
    if not wait_unix(qmp_path, proc=qp) or not wait_unix(sock, proc=qp):
        raise RuntimeError("qemu-storage-daemon did not start: " + tail(qlog, 3))
    q = QMP(qmp_path)
    quri = "nbd+unix:///src0?socket=" + sock  # qsd names the export after the node
    if a.writer:
        res["before"] = baseline(a, procs, quri, tag)
    res["alloc"] = alloc(a.src)
    w0, r0 = counters()
    # Connecting to the target is inside the timed window, as it is for blkmig mirror.
    t0 = now()
    q.cmd("blockdev-add", {"driver": "nbd", "node-name": "tgt0", "server": {
        "type": "inet", "host": a.target_host, "port": str(a.target_port)}})
    q.cmd("blockdev-mirror", {"job-id": "m0", "device": "src0", "target": "tgt0",
                              "sync": "full"})
    try:
        for n in q.cmd("query-named-block-nodes"):
            if n.get("node-name") == "src0" and n.get("dirty-bitmaps"):
                res["qemu_granularity"] = n["dirty-bitmaps"][0].get("granularity")
    except RuntimeError:
        pass
    if a.writer:
        writer = Writer(a, procs, quri, tag)
    deadline = t0 + a.ready_timeout
    while True:
        if qp.poll() is not None:
            raise RuntimeError("qemu-storage-daemon exited %d" % qp.returncode)
        c = q.event("BLOCK_JOB_COMPLETED", 0)
        if c is not None:
            raise RuntimeError("mirror ended before complete: %s" % c["data"])
        ready = q.event("BLOCK_JOB_READY", 0) is not None
        if writer and (ready and now() - writer.t0 >= a.min_write_s or not writer.running()):
            res["during"] = writer.stop()
            res["write_s"] = writer.t1 - writer.t0
            res["ready_while_writing"] = ready
            writer = None
        if ready and writer is None:
            break
        if now() > deadline:
            raise RuntimeError("not ready after %d s" % a.ready_timeout)
        q.event("BLOCK_JOB_READY", 0.02)
    res["ready_s"] = q.event("BLOCK_JOB_READY")["_t"] - t0
    tc = now()
    q.cmd("block-job-complete", {"device": "m0"})
    c = q.event("BLOCK_JOB_COMPLETED", a.ready_timeout)
    t1 = now()
    if c is None:
        raise RuntimeError("BLOCK_JOB_COMPLETED did not arrive")
    res["total_s"] = t1 - t0
    res["complete_s"] = t1 - tc
    res["qemu_job"] = {k: c["data"].get(k) for k in ("len", "offset", "speed", "error")}
    if c["data"].get("error"):
        raise RuntimeError("mirror failed: %s" % c["data"]["error"])
    res["done"] = True
    try:
        q.cmd("quit", timeout=10)
    except (RuntimeError, OSError):
        pass
    try:
        qp.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    lf.close()
    final_counters(w0, r0)


def main():
    if len(sys.argv) < 2:
        die(__doc__, 2)
    c = sys.argv[1]
    if c == "make-image":
        make_image(sys.argv[2], int(sys.argv[3]))
    elif c == "alloc":
        print(alloc(sys.argv[2]))
    elif c == "compare":
        d = compare(sys.argv[2], sys.argv[3])
        if d is not None:
            die("%s and %s differ at byte %d" % (sys.argv[2], sys.argv[3], d))
    elif c == "restore":
        restore(sys.argv[2], sys.argv[3])
    elif c == "oneline":
        r = json.loads(sys.argv[3])
        w = ""
        if r.get("during") and r.get("before"):
            w = "  writer %.0f -> %.0f IOPS" % (r["before"].get("iops") or 0,
                                              r["during"].get("iops") or 0)
        print("bench: rep %s %-8s %-6s %-8s ready %s total %s sent %.1f MiB%s (run %.0f s)%s" % (
            sys.argv[2], "shaped" if r["shaped"] else "unshaped",
            "writer" if r["writer"] else "idle", r["side"],
            "%.2f" % r["ready_s"] if r.get("ready_s") else "-",
            "%.2f" % r["total_s"] if r.get("total_s") else "-",
            (r.get("target_bytes") or 0) / 1048576.0, w, r.get("wall_s", 0),
            "" if r.get("ok") else "  ERROR: %s" % r.get("error")), flush=True)
        for k in ("before", "during"):
            if (r.get(k) or {}).get("error"):
                print("bench: *** writer error (%s the mirror): %s" % (k, r[k]["error"]),
                      flush=True)
        sys.exit(0 if r.get("ok") else 1)
    elif c == "report":
        report(sys.argv[2])
    elif c == "calib":
        calib(*sys.argv[2:6])
    elif c == "run":
        p = argparse.ArgumentParser()
        p.add_argument("--side", required=True, choices=["blkmig", "qemu", "nbdcopy"])
        p.add_argument("--tag", default="0")
        p.add_argument("--src", required=True)
        p.add_argument("--target", required=True)
        p.add_argument("--size", type=int, required=True)
        p.add_argument("--work", required=True)
        p.add_argument("--pidfile")
        p.add_argument("--blkmig", required=True)
        p.add_argument("--mirror-opt", action="append", default=[])
        p.add_argument("--shaped", type=int, default=0)
        p.add_argument("--ns-a", default="")
        p.add_argument("--ns-b", default="")
        p.add_argument("--dev-b", default="")
        p.add_argument("--target-host", default="127.0.0.1")
        p.add_argument("--target-port", type=int, required=True)
        p.add_argument("--writer", type=int, default=0)
        p.add_argument("--write-rate", default="20m")
        p.add_argument("--write-qd", type=int, default=4)
        p.add_argument("--base-s", type=int, default=5)
        p.add_argument("--min-write-s", type=float, default=3)
        p.add_argument("--max-write-s", type=int, default=120)
        p.add_argument("--ready-timeout", type=int, default=600)
        run(p.parse_args(sys.argv[2:]))
    else:
        die(__doc__, 2)


def calib(ns_a, ns_b, addr, secs):
    code = r'''
import socket, sys, time
if sys.argv[1] == "server":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[2], 5999)); s.listen(1); print("up", flush=True)
    c, _ = s.accept(); buf = bytearray(1 << 20); n = 0; t = None; n1 = 0
    while True:
        k = c.recv_into(buf)
        if not k: break
        n += k
        if t is None: t0 = time.monotonic(); t = t0
        if n1 == 0 and time.monotonic() - t0 >= 1: t1 = time.monotonic(); n1 = n
    print(int((n - n1) / (time.monotonic() - t1)))
else:
    c = socket.create_connection((sys.argv[2], 5999)); d = b"\xa5" * (1 << 20); t = time.monotonic()
    while time.monotonic() - t < float(sys.argv[3]): c.sendall(d)
    c.close()
'''
    srv = subprocess.Popen(ns(ns_b) + ["python3", "-c", code, "server", addr],
                           stdout=subprocess.PIPE, text=True)
    srv.stdout.readline()
    subprocess.run(ns(ns_a) + ["python3", "-c", code, "client", addr, secs], check=True)
    print(srv.stdout.readline().strip())
    srv.wait()


def median(v):
    v = sorted(x for x in v if x is not None)
    if not v:
        return None
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def report(path):
    E = os.environ
    rate_bytes = float(E.get("RATE_BYTES") or 0)
    goodput = float(E.get("GOODPUT") or 0)
    runs = [json.loads(x) for x in open(path) if x.strip()]
    rows = []
    for shaped in (0, 1):
        for writer in (0, 1):
            for side in ("blkmig", "qemu", "nbdcopy"):
                rs = [r for r in runs if r["shaped"] == shaped and r["writer"] == writer and
                      r["side"] == side]
                if not rs:
                    continue
                for r in rs:
                    r["written"] = (r.get("during") or {}).get("io_bytes", 0)
                    r["need"] = r["alloc"] + r["written"]
                    r["amp"] = r["target_bytes"] / r["need"]
                    if shaped and rate_bytes:
                        r["lower_s"] = r["need"] / rate_bytes
                        r["over_lower"] = r["total_s"] / r["lower_s"]
                        if goodput:
                            r["over_goodput"] = r["total_s"] / (r["need"] / goodput)
                    if writer:
                        b, d = r["before"], r["during"]
                        r["iops_ratio"] = d["iops"] / b["iops"] if b.get("iops") else None
                        r["bw_ratio"] = d["bw"] / b["bw"] if b.get("bw") else None
                        r["writer_errors"] = int(bool(b.get("error"))) + int(bool(d.get("error")))

                def m(k, sub=None):
                    return median([(r.get(sub) or {}).get(k) if sub else r.get(k) for r in rs])
                row = {"shaped": shaped, "writer": writer, "side": side, "n": len(rs),
                       "ready_s": m("ready_s"), "total_s": m("total_s"),
                       "complete_s": m("complete_s"), "alloc": m("alloc"),
                       "written": m("written"), "target_bytes": m("target_bytes"),
                       "wire_bytes": m("wire_bytes"), "amp": m("amp"),
                       "lower_s": m("lower_s"), "over_lower": m("over_lower"),
                       "over_goodput": m("over_goodput"),
                       "verified": all(r.get("verified") for r in rs)}
                if side == "blkmig":
                    row["tool_bytes"] = m("tool_bytes")
                    row["tool_ready_s"] = m("tool_ready_s")
                    row["rounds"] = m("rounds", "summary")
                    row["mode_switches"] = m("mode_switches", "summary")
                    row["connections"] = m("connections", "summary")
                if side == "qemu":
                    row["qemu_granularity"] = m("qemu_granularity")
                    row["qemu_job_len"] = m("len", "qemu_job")
                if writer:
                    row.update({"iops_before": m("iops", "before"),
                                "iops_during": m("iops", "during"),
                                "iops_ratio": m("iops_ratio"), "bw_ratio": m("bw_ratio"),
                                "write_s": m("write_s"),
                                "ready_while_writing": sum(1 for r in rs
                                                           if r.get("ready_while_writing")),
                                "writer_errors": sum(r["writer_errors"] for r in rs)})
                rows.append(row)

    def f(v, fmt):
        return "-" if v is None else fmt % v
    name = {(0, 0): "unshaped idle", (0, 1): "unshaped writer", (1, 0): "shaped idle",
            (1, 1): "shaped writer"}
    MiB = 1048576.0
    print()
    print("%-16s %-8s %6s %6s %5s %8s %8s %6s %6s %7s %6s %8s %8s %7s" % (
        "median", "side", "ready", "total", "compl", "sent MiB", "wire MiB", "amp", "lower",
        "tot/low", "tot/gp", "IOPS bef", "IOPS dur", "dur/bef"))
    for r in rows:
        print("%-16s %-8s %6s %6s %5s %8s %8s %6s %6s %7s %6s %8s %8s %7s" % (
            name[r["shaped"], r["writer"]], r["side"], f(r["ready_s"], "%.2f"),
            f(r["total_s"], "%.2f"), f(r["complete_s"], "%.2f"),
            f(r["target_bytes"] and r["target_bytes"] / MiB, "%.1f"),
            f(r["wire_bytes"] and r["wire_bytes"] / MiB, "%.1f"), f(r["amp"], "%.3f"),
            f(r["lower_s"], "%.2f"), f(r["over_lower"], "%.3f"), f(r["over_goodput"], "%.3f"),
            f(r.get("iops_before"), "%.0f"), f(r.get("iops_during"), "%.0f"),
            f(r.get("bw_ratio"), "%.3f")))
    print("seconds; sent = payload the target qemu-nbd wrote (its wchar); wire = bytes B's veth\n"
          "received; amp = sent / (allocated + written during the mirror); lower = (allocated +\n"
          "written) / nominal link rate; tot/gp = total / ((allocated + written) / measured TCP\n"
          "goodput); dur/bef = the writer's bytes/s during / before the mirror")
    ratios = []
    bars = []
    for shaped in (0, 1):
        for writer in (0, 1):
            g = {r["side"]: r for r in rows if r["shaped"] == shaped and r["writer"] == writer}
            b = g.get("blkmig")
            if not b:
                continue
            x = {"shaped": shaped, "writer": writer}
            for other in ("qemu", "nbdcopy"):
                o = g.get(other)
                if o and o["total_s"]:
                    x["total_vs_" + other] = b["total_s"] / o["total_s"]
                    x["sent_vs_" + other] = b["target_bytes"] / o["target_bytes"]
                    if o["ready_s"]:
                        x["ready_vs_" + other] = b["ready_s"] / o["ready_s"]
            ratios.append(x)
            sc = name[shaped, writer]
            if shaped:
                bars.append({"bar": "%s: total <= 1.05 x lower bound" % sc,
                             "value": b["over_lower"], "pass": b["over_lower"] <= 1.05})
            elif "total_vs_qemu" in x:
                bars.append({"bar": "%s: total <= 0.8 x QEMU" % sc,
                             "value": x["total_vs_qemu"], "pass": x["total_vs_qemu"] <= 0.8})
            bars.append({"bar": "%s: sent <= 1.05 x (allocated + written)" % sc,
                         "value": b["amp"], "pass": b["amp"] <= 1.05})
            if writer:
                bars.append({"bar": "%s: writer keeps >= 90%% of its throughput" % sc,
                             "value": b["bw_ratio"], "pass": (b["bw_ratio"] or 0) >= 0.9})
                bars.append({"bar": "%s: no writer error" % sc, "value": b["writer_errors"],
                             "pass": b["writer_errors"] == 0})
    print()
    for x in ratios:
        print("%-16s blkmig/QEMU: total %s, ready %s, sent %s;  blkmig/nbdcopy total %s" % (
            name[x["shaped"], x["writer"]], f(x.get("total_vs_qemu"), "%.3f"),
            f(x.get("ready_vs_qemu"), "%.3f"), f(x.get("sent_vs_qemu"), "%.3f"),
            f(x.get("total_vs_nbdcopy"), "%.3f")))
    print()
    for b in bars:
        print("bar %-4s %-62s %s" % ("PASS" if b["pass"] else "FAIL", b["bar"],
                                     f(b["value"], "%.3f")))
    params = {k.lower(): E.get(k) for k in (
        "SIZE", "PRISTINE_ALLOC", "REPS", "SHAPED", "RATE", "MTU", "RATE_BYTES", "GOODPUT",
        "WRITE_RATE", "WRITE_QD", "BASE_S", "MIN_WRITE_S", "MAX_WRITE_S", "MIRROR_OPTS",
        "BLKMIG", "NPROC", "QUICK", "FULL", "ELAPSED_S")}
    for k in ("size", "pristine_alloc", "reps", "mtu", "rate_bytes", "goodput", "write_qd",
              "base_s", "nproc", "elapsed_s"):
        if params.get(k):
            params[k] = int(float(params[k]))
    params["writer"] = "fio nbd randwrite bsrange=4k-64k rate=%s iodepth=%s" % (
        E.get("WRITE_RATE"), E.get("WRITE_QD"))
    params["qemu"] = "qemu-storage-daemon 7.2 blockdev-mirror sync=full, defaults " \
        "(granularity 64 KiB, buf-size 16 MiB, copy-mode background)"
    for k in ("min_write_s", "max_write_s"):
        if params.get(k):
            params[k] = float(params[k])

    def rnd(o):
        if isinstance(o, float):
            return round(o, 4)
        if isinstance(o, dict):
            return {k: rnd(v) for k, v in o.items()}
        if isinstance(o, list):
            return [rnd(v) for v in o]
        return o
    out = {"params": params, "rows": rows, "ratios": ratios, "bars": bars}
    print("RESULT mirror " + json.dumps(rnd(out), separators=(",", ":")))


if __name__ == "__main__":
    main()
END_OF_DRIVER
