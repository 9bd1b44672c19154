#!/usr/bin/env bash
# contrib/bench/guest-migrate-bench.sh: blkmig against QEMU with the test guest. The same test guest
# (vm/guest/blkmig-guest.elf), workload and disk migrated between two hosts
# (contrib/netns-hosts.sh namespaces, unshaped or tc tbf RATE) by
#   (a) blkmig: `blkmig run --kvm` -> `blkmig migrate --with-disk` -> `blkmig incoming`
#       (needs a usable /dev/kvm; skipped, and said so, without one);
#   (b) QEMU 7.2 `-M microvm` in libvirt's order: destination `-incoming defer -S`,
#       `nbd-server-start` + `nbd-server-add`; source `blockdev-add` (nbd) + `blockdev-mirror
#       sync=full`, wait for BLOCK_JOB_READY, `migrate` with pause-before-switchover; at
#       "pre-switchover" `block-job-cancel` (waiting for the job to end) and `migrate-continue`;
#       then `nbd-server-stop` and `cont` on the destination. Accelerator: kvm where usable,
#       else tcg (the guest runs its ring-0 setup fast under TCG, and its workload too).
#   (c) blkmig driving QEMU ("blkmig-qemu"): side (b)'s very QEMU command line under
#       `blkmig run --qemu`; `blkmig incoming` on host B starts the destination QEMU from it;
#       `blkmig migrate --with-disk --verify`: blkmig moves the disk (QEMU's NBD export and
#       dirty bitmaps), QEMU RAM and devices, blkmig decides when. Same accelerator as (b).
# Per run: total time (mirror start -> the guest runs on the destination), QEMU's own downtime
# figure, the guest-observed gap (host timestamps on the guest's console lines, which it
# prints every STATUS_MS or 4x the time a line takes to print, whichever is longer: QEMU's
# 8250 makes that ~120 ms on nested KVM; from the last line on the source to the first on the destination;
# and the guest's own largest TSC gap), RAM bytes, bytes on the wire (host B's veth received:
# RAM stream, NBD and headers), the guest's RAM write rate before.
# Integrity: the destination's image equals the source's at the switchover (QEMU side: sha256
# of both, compared while both VMs are paused, its time left out of total and gap; blkmig side:
# --verify), and the guest's own full self-check on the destination (it runs RUN_S seconds in
# all, then checks every page and block and exits) finds nothing. Under TCG the guest's TSC
# stops while QEMU has the VM stopped, so its own largest gap does not show QEMU's pause; the
# host-clock gap does.
# Knobs: RAM_M=512 RAM_FILL_M=128 DISK_M=1024 DISK_FILL_M=256 WORKLOAD (mem=32M/s,hot=64M,
# disk=4M/s) WARM_S=5 RUN_S=90 STATUS_MS=10 SHAPED=0|1 RATE=1gbit MTU=1500 REPS=1
# SIDES="blkmig qemu" (blkmig-qemu: side c) ACCEL=auto|kvm|tcg NETNS_NAME=bmgm RAM_CHECK=1 (QEMU side: also compare
# both VMs' RAM, page by page, at the switchover, and check each VM's RAM dump and image by
# content with blkmig guest-check) BLKMIG (binary; default a fresh
# optimised build) MIG_ARGS (more `blkmig migrate` options, e.g. "--order disk-first")
# QEMU_ARGS (more options for both QEMUs, e.g. "-name debug-threads=on" to name the vCPU thread)
# LOG_DIR (keep each run's consoles, and blkmig's migrate --json output and logs, there, written
# as the run goes) LOG_LEVEL
# (blkmig run/incoming --log-level, e.g. info) PERF=1 (with LOG_DIR: perf record -a -g of the
# whole machine from the start of each migration to its pause, as SIDE-REP-perf.data).
# Needs root (namespaces). Last line: RESULT guest-migrate {json}.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
. "$top/contrib/deps.sh"
[ "$(id -u)" -eq 0 ] || { echo "guest-migrate-bench: needs root (network namespaces)" >&2; exit 77; }

RAM_M=${RAM_M:-512}; RAM_FILL_M=${RAM_FILL_M:-128}
DISK_M=${DISK_M:-1024}; DISK_FILL_M=${DISK_FILL_M:-256}
WORKLOAD=${WORKLOAD:-mem=32M/s,hot=64M,disk=4M/s}
WARM_S=${WARM_S:-5}; RUN_S=${RUN_S:-90}; STATUS_MS=${STATUS_MS:-10}
SHAPED=${SHAPED:-0}; RATE=${RATE:-1gbit}; MTU=${MTU:-1500}; REPS=${REPS:-1}
SIDES=${SIDES:-blkmig qemu}; ACCEL=${ACCEL:-auto}
NETNS_NAME=${NETNS_NAME:-bmgm}

if [ -z "${BLKMIG:-}" ]; then
    bm_install_deps build
    bm_build "$top" "$top/build/release" CFLAGS='-O2 -g' >/dev/null
    BLKMIG=$BM_BUILD_DIR/blkmig
fi
GUEST=${GUEST:-$(dirname "$BLKMIG")/vm/guest/blkmig-guest.elf}
[ -f "$GUEST" ] || { echo "guest-migrate-bench: no test guest at $GUEST" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || bm_install_deps test
kvm_ok=0
if [ -c /dev/kvm ] && { exec 9<>/dev/kvm; } 2>/dev/null; then kvm_ok=1; exec 9>&-; fi
if [ "$ACCEL" = auto ]; then
    if [ $kvm_ok = 1 ]; then ACCEL=kvm; else ACCEL=tcg; fi
fi

work=$(mktemp -d /tmp/guest-migrate-bench.XXXXXX)
pids=()
hosts=$top/contrib/netns-hosts.sh
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    "$hosts" down --name "$NETNS_NAME" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
if [ "$SHAPED" = 1 ]; then
    "$hosts" up --name "$NETNS_NAME" --rate "$RATE" --mtu "$MTU" >/dev/null
else
    "$hosts" up --name "$NETNS_NAME" >/dev/null
fi
A=${NETNS_NAME}A B=${NETNS_NAME}B
dA=/var/tmp/$NETNS_NAME-A dB=/var/tmp/$NETNS_NAME-B
append="blkmig.workload=$WORKLOAD,ram-fill=${RAM_FILL_M}M,disk-fill=${DISK_FILL_M}M"
append="$append blkmig.run=$RUN_S blkmig.status_ms=$STATUS_MS"
echo "guest-migrate-bench: accel $ACCEL (blkmig side: $([ $kvm_ok = 1 ] && echo kvm || echo 'skipped, no usable /dev/kvm')), link $([ "$SHAPED" = 1 ] && echo "$RATE mtu $MTU" || echo unshaped)" >&2

drv=$work/drv.py
sed -n '/^: <<.END_OF_DRIVER.$/,/^END_OF_DRIVER$/p' "$0" | sed '1d;$d' >"$drv"

: >"$work/runs.jsonl"
for rep in $(seq "$REPS"); do
    for side in $SIDES; do
        if [ "$side" = blkmig ] && [ $kvm_ok = 0 ]; then
            echo "guest-migrate-bench: blkmig side skipped: no usable /dev/kvm" >&2
            echo "{\"side\": \"blkmig\", \"rep\": $rep, \"skipped\": \"no usable /dev/kvm\"}" >>"$work/runs.jsonl"
            continue
        fi
        rm -f "$dA"/*.img "$dB"/*.img "$work"/*.sock
        echo "# rep $rep side $side" >&2
        # In the background, by PID: if this script is stopped, cleanup() sends the driver
        # SIGTERM and the driver ends the VMs it started before it exits.
        python3 "$drv" "$side" --blkmig "$BLKMIG" --guest "$GUEST" --ns-a "$A" --ns-b "$B" \
            --dir-a "$dA" --dir-b "$dB" --work "$work" --ram "$RAM_M" --disk "$DISK_M" \
            --append "$append" --warm "$WARM_S" --accel "$ACCEL" --rep "$rep" \
            --workload "$WORKLOAD,ram-fill=${RAM_FILL_M}M,disk-fill=${DISK_FILL_M}M" \
            --run-s "$RUN_S" --status-ms "$STATUS_MS" >>"$work/runs.jsonl" &
        drv_pid=$!
        pids+=("$drv_pid")
        wait "$drv_pid"
        unset 'pids[-1]'
        tail -n 1 "$work/runs.jsonl" >&2
    done
done
python3 "$drv" report "$work/runs.jsonl" --shaped "$SHAPED" --rate "$RATE" --mtu "$MTU" \
    --accel "$ACCEL" --workload "$WORKLOAD" --ram "$RAM_M" --disk "$DISK_M"
exit 0

: <<'END_OF_DRIVER'
import argparse, hashlib, json, os, socket, statistics, subprocess, sys, threading, time

ADDR_B = "10.77.0.2"

def log(*a):
    print("guest-migrate-bench:", *a, file=sys.stderr, flush=True)

class Console:
    """Reads a guest console (a unix socket QEMU serves, "socket"; one this script listens on
    and blkmig connects to, "listen"; or a file, "file") and keeps (host time, line) for
    every line. Readers block for data (a file is polled): on a one-CPU machine polling
    readers took a tenth of the CPU from the migration they measure."""
    all = []  # every console of this run, for the failure report
    def __init__(self, path, kind, live=None):
        self.lines, self.path, self.kind, self.stop = [], path, kind, False
        self.connected = False
        # LOG_DIR: every line also goes to this file as it comes (a run that hangs inside a
        # nested VM can be read from outside).
        self.live = open(live, "w", buffering=1) if live else None
        self.cv = threading.Condition()
        Console.all.append(self)
        if kind == "listen":  # listening before the VM that connects to it starts
            if os.path.exists(path):
                os.unlink(path)
            self.ls = socket.socket(socket.AF_UNIX)
            self.ls.bind(path)
            self.ls.listen(1)
            self.ls.settimeout(0.5)
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()
    def add(self, now, l):
        with self.cv:
            self.lines.append((now, l))
            self.cv.notify_all()
        if self.live:
            self.live.write("%.6f %s\n" % (now, l))
    def recv_lines(self, s, strip_cr):
        buf = b""
        s.settimeout(0.5)
        while not self.stop:
            try:
                d = s.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not d:
                break
            now = time.time()
            buf += d
            while b"\n" in buf:
                l, buf = buf.split(b"\n", 1)
                l = l.decode(errors="replace")
                self.add(now, l.rstrip("\r") if strip_cr else l)
    def run(self):
        # A line's host time is when this thread reads it: keep the reader prompt on a busy
        # machine (real-time priority for this thread only; never for what it would start).
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(10))
        except (OSError, AttributeError):
            pass
        buf = b""
        if self.kind == "socket":
            for _ in range(200):
                try:
                    s = socket.socket(socket.AF_UNIX); s.connect(self.path); break
                except OSError:
                    time.sleep(0.05)
            else:
                return
            self.connected = True
            self.recv_lines(s, True)
        elif self.kind == "listen":
            while not self.stop:
                try:
                    s, _ = self.ls.accept()
                except socket.timeout:
                    continue
                self.recv_lines(s, False)
                s.close()
        else:
            while not os.path.exists(self.path) and not self.stop:
                time.sleep(0.01)
            f = open(self.path, "rb")
            while not self.stop:
                d = f.read(65536)
                if not d:
                    time.sleep(0.002)
                    continue
                now = time.time()
                buf += d
                while b"\n" in buf:
                    l, buf = buf.split(b"\n", 1)
                    self.add(now, l.decode(errors="replace"))
    def wait_for(self, prefix, timeout, dead=None):
        # dead(): the reason the guest stopped for good, or None (asked once a second).
        end, i, warns, look = time.time() + timeout, 0, 0, 0.0
        while time.time() < end:
            with self.cv:
                n = len(self.lines)
                if i == n:
                    self.cv.wait(min(0.5, max(0.0, end - time.time())))
                    n = len(self.lines)
            for t, l in self.lines[i:n]:
                if prefix in l:
                    return t, l
                warns += "BMG warn" in l
            i = n
            if dead and time.time() >= look:
                look = time.time() + 1
                why = dead()
                if why:
                    # Lines the guest printed before it stopped (its final check, then its
                    # exit) may still be on their way: look once more.
                    time.sleep(1)
                    with self.cv:
                        rest = self.lines[i:]
                    for t, l in rest:
                        if prefix in l:
                            return t, l
                    raise SystemExit("the guest stopped (console %s): %s" % (self.path, why))
            # A disk that answers nothing any more (the guest re-notifies once a second).
            if warns >= 5:
                raise SystemExit("the guest's disk stopped completing requests (console %s): %s"
                                 % (self.path, self.lines[-2:]))
        raise SystemExit("no '%s' on console %s in %d s: %s" % (prefix, self.path, timeout,
                                                                 self.lines[-3:]))
    def status(self):
        st = [l for _, l in self.lines if "BMG status" in l]
        if not st:
            return {}
        return dict(kv.split("=", 1) for kv in st[-1].split("BMG status", 1)[1].split())

class QMP:
    """A QMP client: a reader thread files events (with their arrival time) and answers."""
    def __init__(self, path):
        import queue
        for _ in range(400):
            try:
                self.s = socket.socket(socket.AF_UNIX); self.s.connect(path); break
            except OSError:
                time.sleep(0.05)
        else:
            raise SystemExit("no QMP socket at " + path)
        self.f = self.s.makefile("rb")
        self.events, self.answers, self.cv = [], queue.Queue(), threading.Condition()
        json.loads(self.f.readline())
        threading.Thread(target=self.reader, daemon=True).start()
        self.cmd("qmp_capabilities")
    def reader(self):
        try:
            for line in self.f:
                r = json.loads(line)
                if "event" in r:
                    with self.cv:
                        self.events.append((time.time(), r))
                        self.cv.notify_all()
                else:
                    self.answers.put(r)
        except OSError:
            pass
        # QEMU quit or died: whoever waits for an answer gets this one.
        self.answers.put({"error": {"desc": "the QMP connection closed (QEMU exited)"}})
    def cmd(self, name, **args):
        self.s.sendall(json.dumps({"execute": name, "arguments": args}).encode() + b"\n")
        try:
            r = self.answers.get(timeout=120)
        except Exception:
            raise SystemExit("QEMU did not answer QMP %s within 120 s" % name)
        if "error" in r:
            raise SystemExit("QMP %s: %s" % (name, r["error"]))
        return r.get("return")
    def wait_event(self, names, timeout):
        names = names.split("|")
        end = time.time() + timeout
        with self.cv:  # woken by each event (no polling: see Console)
            while time.time() < end:
                for t, e in self.events:
                    if e["event"] in names:
                        return t, e
                self.cv.wait(min(0.5, max(0.0, end - time.time())))
        raise SystemExit("no QMP event %s in %d s" % ("|".join(names), timeout))

def wire_bytes(ns):
    """Bytes host B's end of the link has received (RAM stream, NBD, headers: all of it)."""
    out = subprocess.run(["ip", "netns", "exec", ns, "cat",
                          "/sys/class/net/veth-B/statistics/rx_bytes"],
                         capture_output=True, text=True)
    return int(out.stdout.strip() or 0)

def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 22)
            if not b:
                return h.hexdigest()
            h.update(b)

def gap_across(src, dst, t_switch):
    """Host-observed guest gap: last source line before the switch -> first destination line."""
    before = [t for t, l in src.lines if l.startswith("BMG status") or "] BMG status" in l]
    after = [t for t, l in dst.lines if "BMG status" in l]
    if not before or not after:
        return None
    return (min(after) - max(before)) * 1000

def common_fields(st_d, line, warm):
    """What both sides report the same way: the guest's own figures and its final check."""
    st0, t0, st1, t1 = warm
    return {"guest_max_gap_us": int(st_d.get("max_gap_us", 0)),
            "guest_check": line.split("BMG ", 1)[1],
            "guest_ok": "mismatches=0 errors=0" in line,
            # disk requests the guest had to notify again (a completion slow or lost)
            "guest_warnings": sum("BMG warn" in l for c in Console.all for _, l in c.lines),
            "ram_writes_per_s_before": round((int(st1.get("ram_writes", 0)) -
                                              int(st0.get("ram_writes", 0))) / (t1 - t0)),
            # the guest's disk writes (requests) a second: how fast its VMM completes them
            "disk_writes_per_s_before": round((int(st1.get("disk_writes", 0)) -
                                               int(st0.get("disk_writes", 0))) / (t1 - t0), 1)}

def threads(pid):
    """Each thread of a process: name, state and where in the kernel it waits (a run that
    hangs inside a nested VM says no more than this)."""
    out = []
    for t in sorted(os.listdir("/proc/%d/task" % pid), key=int):
        d = "/proc/%d/task/%s/" % (pid, t)
        try:
            comm = open(d + "comm").read().strip()
            state = open(d + "stat").read().rsplit(")", 1)[1].split()[0]
            stack = [l.split()[-1] for l in open(d + "stack").read().splitlines()][:6]
        except OSError:
            continue
        out.append("%s %s %s [%s]" % (t, comm, state, " < ".join(stack)))
    return "; ".join(out)

def stop_all(procs, work=None):
    failing = sys.exc_info()[0] is not None
    for p in procs:
        if p.poll() is None:
            if failing:
                try:
                    log("%s (in %s) still running, its threads: %s" % (
                        os.path.basename(str(p.args[4])), p.args[3], threads(p.pid)))
                    if BLKMIG_CONTROL.get(p.pid):
                        q = subprocess.run([BLKMIG_CONTROL[p.pid][0], "control",
                                            BLKMIG_CONTROL[p.pid][1], "query-status"],
                                           capture_output=True, text=True, timeout=10)
                        log("  its query-status: %s" % (q.stdout.strip() or q.stderr.strip()))
                        # what its vCPU is doing, twice: is it moving at all?
                        for _ in range(2):
                            q = subprocess.run([BLKMIG_CONTROL[p.pid][0], "control",
                                                BLKMIG_CONTROL[p.pid][1], "x-query-vcpus"],
                                               capture_output=True, text=True, timeout=10)
                            log("  its x-query-vcpus: %s" % (q.stdout.strip() or q.stderr.strip()))
                            time.sleep(0.5)
                except (OSError, subprocess.SubprocessError) as e:
                    log("  (%s)" % e)
            p.kill()
            p.wait()
        elif failing:  # it ended by itself: how (a guest's isa-debug-exit, a signal, ...)
            log("%s (in %s) exited by itself with status %s" % (
                os.path.basename(str(p.args[4])), p.args[3], p.returncode))
    if failing:  # the guests' last words (status lines left out)
        for c in Console.all:
            last = [l for _, l in c.lines if "BMG status" not in l][-5:]
            log("console %s, last lines: %s" % (os.path.basename(c.path), last))
    if work and failing:  # failing: show what the processes said
        for n in sorted(os.listdir(work)):
            if n.endswith(".err"):
                tail = open(os.path.join(work, n), errors="replace").read()[-1500:]
                if tail.strip():
                    log("%s:\n%s" % (n, tail))

def warm_up(console, seconds):
    """Wait for the guest's first-boot fill, then measure its write rate for a while."""
    console.wait_for("BMG boot", 180)  # a guest that never starts fails here, not in 10 min
    t_ready, _ = console.wait_for("BMG ready", 600)
    # The first status line after the fill: an earlier one (or none) would count the fill.
    end = time.time() + 60
    with console.cv:
        while not any(t > t_ready and "BMG status" in l for t, l in console.lines):
            if time.time() > end:
                raise SystemExit("no status line after 'BMG ready' in 60 s on " + console.path)
            console.cv.wait(0.5)
    st0, t0 = console.status(), time.time()
    time.sleep(seconds)
    return st0, t0, console.status(), time.time()

def qemu_argv(a, img, qmp, con):
    """The VM's QEMU command line (both QEMU sides: the same guest, devices and cache mode)."""
    return ["qemu-system-x86_64", "-M", "microvm,acpi=off",
            "-accel", a.accel, "-m", "%dM" % a.ram, "-nodefaults", "-no-user-config",
            "-display", "none", "-kernel", a.guest, "-append", a.append,
            "-global", "virtio-mmio.force-legacy=false",
            "-drive", "id=vda,file=%s,format=raw,if=none,cache=writeback,aio=threads" % img,
            "-device", "virtio-blk-device,drive=vda",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
            "-chardev", "socket,id=con,path=%s,server=on,wait=off" % con,
            "-serial", "chardev:con", "-qmp", "unix:%s,server=on,wait=off" % qmp] + \
           os.environ.get("QEMU_ARGS", "").split()

def run_qemu(a):
    sock = lambda n: os.path.join(a.work, n)
    src_img, dst_img = os.path.join(a.dir_a, "vda.img"), os.path.join(a.dir_b, "vda.img")
    for p in (src_img, dst_img):
        with open(p, "wb") as f:
            f.truncate(a.disk << 20)
    def qemu(ns, img, qmp, con, extra):
        cmd = ["ip", "netns", "exec", ns] + qemu_argv(a, img, qmp, con) + extra
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                stderr=open(os.path.join(a.work, os.path.basename(qmp) + ".err"), "w"))
    src = qemu(a.ns_a, src_img, sock("src.qmp"), sock("src.con"), ["-S"])
    dst = qemu(a.ns_b, dst_img, sock("dst.qmp"), sock("dst.con"), ["-incoming", "defer", "-S"])
    procs = [src, dst]
    csrc = Console(sock("src.con"), "socket", live(a, "src-console.log"))
    cdst = Console(sock("dst.con"), "socket", live(a, "dst-console.log"))
    try:
        qs, qd = QMP(sock("src.qmp")), QMP(sock("dst.qmp"))
        # Frozen (-S) until its console is read: the guest's first lines come at once.
        for _ in range(200):
            if csrc.connected:
                break
            time.sleep(0.05)
        qs.cmd("cont")
        warm = warm_up(csrc, a.warm)
        # Destination: NBD export of its empty image; incoming migration.
        qd.cmd("nbd-server-start", addr={"type": "inet", "data": {"host": ADDR_B, "port": "10809"}})
        qd.cmd("nbd-server-add", device="vda", writable=True)
        qd.cmd("migrate-incoming", uri="tcp:%s:7700" % ADDR_B)
        # Source: mirror the disk into it, wait for READY, then migrate RAM.
        w0 = wire_bytes(a.ns_b)
        perf = perf_start(a)
        t_start = time.time()
        qs.cmd("blockdev-add", driver="nbd", **{"node-name": "mig-vda"},
               server={"type": "inet", "host": ADDR_B, "port": "10809"}, export="vda")
        qs.cmd("blockdev-mirror", **{"job-id": "mig-vda"}, device="vda", target="mig-vda",
               sync="full")
        t_ready, _ = qs.wait_event("BLOCK_JOB_READY", 1800)
        # libvirt's way with a QEMU that has it: pause-before-switchover. QEMU stops the guest
        # when RAM has converged and waits in "pre-switchover"; libvirt then cancels the (ready)
        # mirror, which drains it with the guest stopped and ends it with BLOCK_JOB_COMPLETED,
        # and lets the migration go on with migrate-continue; the device state follows and the
        # source's disks are inactivated only then. (Cancelling the mirror after "completed"
        # instead made QEMU 7.2 abort in 3 of 7 runs: a mirror write to an inactivated disk.)
        qs.cmd("migrate-set-capabilities",
               capabilities=[{"capability": "events", "state": True},
                             {"capability": "pause-before-switchover", "state": True}])
        qs.cmd("migrate", uri="tcp:%s:7700" % ADDR_B)
        continued = False
        while True:
            m = qs.cmd("query-migrate")
            st = m.get("status")
            if st == "pre-switchover" and not continued:
                qs.cmd("block-job-cancel", device="mig-vda")
                qs.wait_event("BLOCK_JOB_COMPLETED|BLOCK_JOB_CANCELLED", 600)
                qs.cmd("migrate-continue", state="pre-switchover")
                continued = True
            if st in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.005 if st == "pre-switchover" else 0.02)
        if m["status"] != "completed":
            raise SystemExit("QEMU migration %s: %s" % (m["status"], m.get("error-desc")))
        if not continued:
            raise SystemExit("QEMU migration completed without stopping at pre-switchover")
        w1 = wire_bytes(a.ns_b)
        # Then the destination: its NBD server stops and it starts.
        while (qd.cmd("query-migrate").get("status") != "completed" or
               qd.cmd("query-status")["status"] != "paused"):
            time.sleep(0.01)
        perf = perf_stop(perf)
        # Both paused: the destination's image must equal the source's. (This check is ours,
        # not libvirt's: its time is taken out of the guest's gap below.)
        t_v = time.time()
        same = sha(src_img) == sha(dst_img)
        ram_diff = guest_check = None
        if os.environ.get("RAM_CHECK") == "1":  # and their RAM, page by page
            dumps = [os.path.join(a.work, n) for n in ("src.ram", "dst.ram")]
            for q, f in zip((qs, qd), dumps):
                q.cmd("pmemsave", val=0, size=a.ram << 20, filename=f)
            ram_diff, where = [], ""
            with open(dumps[0], "rb") as fs, open(dumps[1], "rb") as fd:
                for page in range(a.ram << 8):
                    ps, pd = fs.read(4096), fd.read(4096)
                    if ps != pd:
                        if not ram_diff:  # which bytes of the first such page
                            offs = [i for i in range(4096) if ps[i] != pd[i]]
                            where = " (first page: %d bytes differ, offsets 0x%x-0x%x)" % (
                                len(offs), offs[0], offs[-1])
                        ram_diff.append(page)
            # And each side by content: every page and block against the guest's own tables
            # (blkmig guest-check, from the layout record the guest keeps in RAM).
            content = []
            for f, img in zip(dumps, (src_img, dst_img)):
                r = subprocess.run([a.blkmig, "guest-check", "--json", f, img],
                                   capture_output=True, text=True)
                try:
                    content.append(json.loads(r.stdout)["mismatches"])
                except (ValueError, KeyError):
                    content.append("exit %d: %s" % (r.returncode, r.stderr.strip()[-200:]))
            log("content check (blkmig guest-check) at the switchover: source %s, destination "
                "%s mismatches" % tuple(content))
            guest_check = {"src": content[0], "dst": content[1]}
            for f in dumps:
                os.unlink(f)
            log("RAM at the switchover: %d pages differ%s%s" % (
                len(ram_diff), (", first: " + " ".join("0x%x" % (p << 12) for p in ram_diff[:8]))
                if ram_diff else "", where))
        verify_s = time.time() - t_v
        qd.cmd("nbd-server-stop")
        qd.cmd("cont")
        t_running = time.time()
        cdst.wait_for("BMG status", 60)
        time.sleep(2)
        st_d = cdst.status()
        gap = gap_across(csrc, cdst, t_running)
        if gap is not None:
            gap -= verify_s * 1000
        # The guest's own full check at RUN_S, then exit through isa-debug-exit.
        t_chk, line = cdst.wait_for("BMG check", a.run_s + 600)
        dst.wait(timeout=60)
        qs.cmd("quit")
        src.wait(timeout=30)
        return {"side": "qemu", "accel": a.accel, "rep": a.rep, "status": "completed",
                "total_s": round(t_running - verify_s - t_start, 3),
                "verify_ms": round(verify_s * 1000),
                "ready_s": round(t_ready - t_start, 3),
                "downtime_ms": m.get("downtime"),
                "guest_gap_ms": round(gap, 1) if gap is not None else None,
                "ram_bytes": m["ram"]["transferred"], "wire_bytes": w1 - w0,
                "images_equal": same, "ram_pages_differing": None if ram_diff is None
                else len(ram_diff), "guest_check_mismatches": guest_check,
                **common_fields(st_d, line, warm)}
    finally:
        stop_all(procs, a.work)
        for n, c in (("src-console.log", csrc), ("dst-console.log", cdst)):
            if not c.live:  # else written as the lines came
                keep(a, n, "".join("%.6f %s\n" % (t, l) for t, l in c.lines))

def perf_start(a):
    """With PERF=1 and LOG_DIR, profile the whole machine (perf record -a -g) from here."""
    d = os.environ.get("LOG_DIR")
    if os.environ.get("PERF") != "1" or not d:
        return None
    os.makedirs(d, exist_ok=True)
    p = subprocess.Popen(["perf", "record", "-a", "-g", "-F", "499", "-q", "-o",
                          os.path.join(d, "%s-%d-perf.data" % (a.side, a.rep))],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    PERF_PROCS.append(p)
    time.sleep(1)
    return p

def perf_stop(p):
    if p and p.poll() is None:
        p.send_signal(2)
        p.wait()
    return None

PERF_PROCS = []  # ended in main() whatever happens

BLKMIG_CONTROL = {}  # pid -> (blkmig binary, its control socket), for a failing run's report

def live(a, name):
    """With LOG_DIR set, the path SIDE-REP-NAME there (written as the run goes), else None."""
    d = os.environ.get("LOG_DIR")
    if not d:
        return None
    os.makedirs(d, exist_ok=True)
    return os.path.join(d, "%s-%d-%s" % (a.side, a.rep, name))

def keep(a, name, text):
    """With LOG_DIR set, keep a run's output there as SIDE-REP-NAME."""
    d = os.environ.get("LOG_DIR")
    if d:
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "%s-%d-%s" % (a.side, a.rep, name)), "w") as f:
            f.write(text)

def blkmig_dead(a, control):
    """Why the blkmig VM behind control stopped for good (query-status: halted), or None."""
    try:
        q = subprocess.run([a.blkmig, "control", control, "query-status"], capture_output=True,
                           text=True, timeout=10)
        g = json.loads(q.stdout)["return"]["guest"]
    except (subprocess.SubprocessError, ValueError, KeyError, TypeError):
        return None
    if not g.get("halted"):
        return None
    return g.get("first_error") or "the guest exited (status %s)" % g.get("exit_status")


def run_blkmig(a):
    # LOG_DIR: blkmig's logs (stderr) go straight there.
    sock = lambda n: (live(a, n) if n.endswith(".err") else None) or os.path.join(a.work, n)
    # The consoles: sockets this script listens on and each VM connects to (unix:PATH).
    csrc = Console(sock("src.con"), "listen", live(a, "src-console.log"))
    cdst = Console(sock("dst.con"), "listen", live(a, "dst-console.log"))
    env = dict(os.environ, BLKMIG_CONSOLE="unix:" + sock("dst.con"), BLKMIG_GUEST=a.guest)
    lv = ["--log-level", os.environ["LOG_LEVEL"]] if os.environ.get("LOG_LEVEL") else []
    dst = subprocess.Popen(["ip", "netns", "exec", a.ns_b, a.blkmig, "incoming", "--listen",
                            ADDR_B + ":7700", "--disk-dir", a.dir_b, "--force", "--control",
                            sock("dst.sock")] + lv, env=env, stderr=open(sock("dst.err"), "w"))
    src = subprocess.Popen(["ip", "netns", "exec", a.ns_a, a.blkmig, "run", "--kvm", "--guest",
                            a.guest, "--ram", "%dM" % a.ram, "--disk", "vda=%s/vda.img,size=%dM"
                            % (a.dir_a, a.disk), "--workload", a.workload, "--console",
                            "unix:" + sock("src.con"), "--control", sock("src.sock"),
                            "--append", "blkmig.run=%d blkmig.status_ms=%d" % (a.run_s,
                                                                              a.status_ms)] + lv,
                           env=env, stderr=open(sock("src.err"), "w"))
    procs = [src, dst]
    BLKMIG_CONTROL.update({src.pid: (a.blkmig, sock("src.sock")),
                           dst.pid: (a.blkmig, sock("dst.sock"))})
    cons = [csrc, cdst]
    try:
        return blkmig_migrate(a, sock, cons, lambda: cdst, "blkmig", "kvm")
    finally:
        stop_all(procs, a.work)
        keep_logs(a, sock, cons)

def keep_logs(a, sock, consoles):
    for n, c in zip(("src-console.log", "dst-console.log"), consoles):
        if c and not c.live:  # else written as the lines came
            keep(a, n, "".join("%.6f %s\n" % (t, l) for t, l in c.lines))
    for n in ("src.err", "dst.err"):
        if not live(a, n) and os.path.exists(sock(n)):
            keep(a, n, open(sock(n), errors="replace").read())

def blkmig_migrate(a, sock, cons, dst_console, side, accel):
    """blkmig migrate --with-disk --verify from src.sock to host B, measured: the row. cons
    holds the source's console and, once dst_console() gives it (called as the migration
    starts), the destination's."""
    csrc = cons[0]
    warm = warm_up(csrc, a.warm)
    w0 = wire_bytes(a.ns_b)
    t_start = time.time()
    perf = perf_start(a)
    mp = subprocess.Popen([a.blkmig, "migrate", "--with-disk", "--verify", "--json",
                           "--no-progress"] + os.environ.get("MIG_ARGS", "").split() +
                          [sock("src.sock"), "tcp:%s:7700" % ADDR_B],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cons[1] = cdst = dst_console()
    lines = []
    mlive = live(a, "migrate.jsonl")
    mlive = open(mlive, "w", buffering=1) if mlive else None
    for l in mp.stdout:  # the profile ends at the pause (before the --verify digests)
        lines.append(l)
        if mlive:
            mlive.write(l)
        if perf and '"status":"switchover"' in l:
            perf = perf_stop(perf)
    err_text = mp.stderr.read()
    mp.wait()
    perf_stop(perf)
    out = subprocess.CompletedProcess(mp.args, mp.returncode, "".join(lines), err_text)
    t_end = time.time()
    keep(a, "migrate.jsonl", out.stdout)
    w1 = wire_bytes(a.ns_b)
    rep = {}
    for l in out.stdout.splitlines():
        if l.startswith("{") and '"report"' in l:
            rep = json.loads(l)["report"]
    if out.returncode != 0:
        raise SystemExit("blkmig migrate exited %d: %s" % (out.returncode, out.stderr[-500:]))
    dst_dead = lambda: blkmig_dead(a, sock("dst.sock"))
    cdst.wait_for("BMG status", 60, dead=dst_dead)
    time.sleep(2)
    st_d = cdst.status()
    # --verify's digests are taken with the guest paused (both sides): like the QEMU side's
    # check, they are left out of the total and of the guest's gap (blkmig's own downtime
    # figure leaves them out already).
    verify_ms = (rep.get("source_digest_ms") or 0) + (rep.get("dest_digest_ms") or 0)
    gap = gap_across(csrc, cdst, t_end)
    if gap is not None:
        gap -= verify_ms
    t_chk, line = cdst.wait_for("BMG check", a.run_s + 600, dead=dst_dead)
    subprocess.run([a.blkmig, "control", sock("dst.sock"), "quit"], capture_output=True)
    ram, disk = rep.get("ram", {}), rep.get("disk", {})
    return {"side": side, "accel": accel, "rep": a.rep, "status": rep.get("status"),
            "total_s": round((rep.get("total_ms", 0) - verify_ms) / 1000, 3),
            "verify_ms": verify_ms, "ready_s": None,
            "downtime_ms": rep.get("downtime_ms"),
            "qemu_downtime_ms": rep.get("qemu_downtime_ms"),
            "guest_gap_ms": round(gap, 1) if gap is not None else None,
            "guest_downtime_ms": rep.get("guest_downtime_ms"),
            "ram_bytes": ram.get("transferred"), "wire_bytes": w1 - w0,
            "images_equal": rep.get("verified"), **common_fields(st_d, line, warm)}

def run_blkmig_qemu(a):
    """blkmig driving QEMU: the QEMU side's very VM under `blkmig run --qemu`, its disk moved
    by blkmig, its RAM and devices by QEMU, to the QEMU `blkmig incoming` starts on host B
    (its console socket in --run-dir, under the source's base name)."""
    sock = lambda n: (live(a, n) if n.endswith(".err") else None) or os.path.join(a.work, n)
    src_img = os.path.join(a.dir_a, "vda.img")
    with open(src_img, "wb") as f:
        f.truncate(a.disk << 20)
    for f in os.listdir(a.dir_b):  # the destination creates its image: the name must be free
        if f.startswith("disk"):
            os.unlink(os.path.join(a.dir_b, f))
    run_dir = os.path.join(a.work, "dst-run")
    lv = ["--log-level", os.environ["LOG_LEVEL"]] if os.environ.get("LOG_LEVEL") else []
    dst = subprocess.Popen(["ip", "netns", "exec", a.ns_b, a.blkmig, "incoming", "--listen",
                            ADDR_B + ":7700", "--disk-dir", a.dir_b, "--run-dir", run_dir,
                            "--control", sock("dst.sock")] + lv,
                           stderr=open(sock("dst.err"), "w"))
    # Frozen (-S) until its console is read: the guest's first lines come at once.
    src = subprocess.Popen(["ip", "netns", "exec", a.ns_a, a.blkmig, "run", "--qemu",
                            "--control", sock("src.sock")] + lv + ["--"] +
                           qemu_argv(a, src_img, sock("src.qmp"), sock("src.con")) + ["-S"],
                           stdout=subprocess.DEVNULL, stderr=open(sock("src.err"), "w"))
    procs = [src, dst]
    BLKMIG_CONTROL.update({src.pid: (a.blkmig, sock("src.sock")),
                           dst.pid: (a.blkmig, sock("dst.sock"))})
    cons = [Console(sock("src.con"), "socket", live(a, "src-console.log")), None]
    try:
        for _ in range(200):
            if cons[0].connected and os.path.exists(sock("src.sock")):
                break
            time.sleep(0.05)
        subprocess.run([a.blkmig, "control", sock("src.sock"), "cont"], check=True,
                       capture_output=True, timeout=30)
        return blkmig_migrate(a, sock, cons, lambda: Console(
            os.path.join(run_dir, "src.con"), "socket", live(a, "dst-console.log")),
                              "blkmig-qemu", a.accel)
    finally:
        stop_all(procs, a.work)
        keep_logs(a, sock, cons)

def report(a):
    runs = [json.loads(l) for l in open(a.runs)]
    rows = {}
    for r in runs:
        if r.get("skipped"):
            rows.setdefault(r["side"], {"skipped": r["skipped"]})
            continue
        rows.setdefault(r["side"], {"runs": []})["runs"].append(r)
    out = {}
    print("| side | accel | total s | downtime ms (own figure) | guest gap ms (host clock) | guest max TSC gap ms | RAM MiB | on the wire MiB | guest RAM / disk writes per s before | images equal | guest self-check |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for side, v in rows.items():
        if "skipped" in v:
            print("| %s | - | skipped: %s |" % (side, v["skipped"]))
            out[side] = v
            continue
        failed = [x for x in v["runs"] if x.get("status") != "completed"]
        rs = [x for x in v["runs"] if x.get("status") == "completed"]
        if not rs:
            print("| %s | %s | all %d runs failed: %s |" % (side, failed[0]["accel"], len(failed),
                                                        failed[0].get("error")))
            out[side] = {"failed": len(failed), "n": 0}
            continue
        med = lambda k: statistics.median([x[k] for x in rs if x.get(k) is not None]) if any(x.get(k) is not None for x in rs) else None
        m = {k: med(k) for k in ("total_s", "downtime_ms", "guest_gap_ms", "guest_max_gap_us", "ram_bytes", "wire_bytes",
                                  "ram_writes_per_s_before", "disk_writes_per_s_before")}
        m["n"] = len(rs)
        m["failed"] = len(failed)
        m["all_ok"] = all(x["guest_ok"] and x["images_equal"] for x in rs)
        out[side] = m
        f = lambda x, s=1, p=1: "-" if x is None else "%.*f" % (p, x / s)
        print("| %s | %s | %s | %s | %s | %s | %s | %s | %s / %s | %s | %s |" % (
            side, rs[0]["accel"], f(m["total_s"], 1, 2), f(m["downtime_ms"], 1, 0),
            f(m["guest_gap_ms"]), f(m["guest_max_gap_us"], 1000), f(m["ram_bytes"], 2**20),
            f(m["wire_bytes"], 2**20), f(m["ram_writes_per_s_before"], 1, 0),
            f(m["disk_writes_per_s_before"]), all(x["images_equal"] for x in rs),
            "; ".join(x["guest_check"] for x in rs) +
            ("; %d more run(s) failed: %s" % (len(failed), failed[0].get("error")) if failed else "")))
    params = {k: getattr(a, k) for k in ("shaped", "rate", "mtu", "accel", "workload", "ram", "disk")}
    print("RESULT guest-migrate " + json.dumps({"params": params, "sides": out, "runs": runs}))

def main():
    import signal
    # SIGTERM (the script's cleanup) unwinds like an error: the runs' `finally` ends their VMs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("guest-migrate-bench: terminated"))
    if sys.argv[1] == "report":
        p = argparse.ArgumentParser()
        p.add_argument("runs")
        for k in ("shaped", "rate", "mtu", "accel", "workload", "ram", "disk"):
            p.add_argument("--" + k)
        report(p.parse_args(sys.argv[2:]))
        return
    p = argparse.ArgumentParser()
    p.add_argument("side")
    for k in ("blkmig", "guest", "ns-a", "ns-b", "dir-a", "dir-b", "work", "append", "accel",
              "workload"):
        p.add_argument("--" + k)
    for k in ("ram", "disk", "warm", "rep", "run-s", "status-ms"):
        p.add_argument("--" + k, type=int)
    a = p.parse_args()
    try:
        row = {"qemu": run_qemu, "blkmig-qemu": run_blkmig_qemu}.get(a.side, run_blkmig)(a)
    except BaseException as e:  # a wedged or failed run is a result too: record it, go on
        import traceback
        traceback.print_exc()
        row = {"side": a.side, "rep": a.rep, "accel": "kvm" if a.side == "blkmig" else a.accel,
               "status": "failed", "error": "%s: %s" % (type(e).__name__, e)}
    finally:
        for p in PERF_PROCS:
            perf_stop(p)
    print(json.dumps(row), flush=True)

main()
END_OF_DRIVER
