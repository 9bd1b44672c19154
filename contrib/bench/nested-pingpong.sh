#!/usr/bin/env bash
# nested-pingpong.sh: migrate one running KVM test guest back and forth between two VM processes
# on one machine, ITER times, and after each migration check that the guest still runs (its
# console's status lines keep coming and its process lives). A stress rig for the VM platform
# more than a speed benchmark: on this project's nested KVM (contrib/kvm-nested.sh, SVM emulated
# by QEMU TCG) it reproduces in minutes the guest deaths that guest-migrate-bench.sh meets about
# once in ten migrations (docs/vmm.md, "Nested KVM under TCG"; figures in
# contrib/bench/RESULTS.md).
#
# Needs a usable /dev/kvm; run it under contrib/kvm-nested.sh where there is none, e.g.
#   contrib/kvm-nested.sh --cpus 2 --timeout 900 --out /tmp/pp --env SIDE=qemu \
#     --env OUT=/tmp/pp/results.txt -- bash contrib/bench/nested-pingpong.sh
# Knobs (environment):
#   SIDE=blkmig|qemu  which VMM migrates (default blkmig)
#   ITER=12           migrations
#   MODE=disk|ram     the disk too, into a fresh image (default: blkmig `migrate --with-disk`;
#                     QEMU in libvirt's order: the destination's NBD server, blockdev-mirror to
#                     it, migrate with pause-before-switchover, block-job-cancel, continue), or
#                     RAM only, both processes on one image (shared storage)
#   QEMU_ACCEL=kvm    QEMU's -accel (e.g. kvm,kernel-irqchip=on); QEMU_ARGS: more arguments
#   PIN=CPUS          keep every vCPU thread (blkmig's vcpu0, QEMU's "CPU 0/KVM") on these
#                     CPUs (a taskset list, e.g. 1)
#   BLKMIG, GUEST     the binary and the guest ELF (default: this checkout's build)
#   RAM_M=256 DISK_M=512 WORKLOAD=mem=32M/s,hot=64M,disk=4M/s,ram-fill=64M,disk-fill=128M
#   STATUS_MS=500     the guest's status period, at most 20000 (each line is one exit on
#                     blkmig's console page, ~150 port I/O exits on QEMU's 8250); a guest is
#                     alive when a line comes within 5 s, or 2.5 periods if longer
#   OUT=FILE          append result lines here too (e.g. in kvm-nested.sh's --out directory, so
#                     that they outlive a nested kernel that panics); the console of a dead guest,
#                     the kernel log's tail, the VMs' stderr and, of a VM that still runs, two
#                     dumps of its vCPU (x-query-vcpus; QEMU's info registers) beside it
# Output: a `start N` line before each migration (a run that ends without the next line died with
# the machine), one `RESULT {json}` line after it, and a `SUMMARY {json}` line at the end.
# Exit status: 0 when every migration left a running guest, 1 when one did not, 77 without KVM.
set -uo pipefail
case ${1:-} in -h|--help) sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
SIDE=${SIDE:-blkmig} ITER=${ITER:-12} MODE=${MODE:-disk} PIN=${PIN:-}
RAM_M=${RAM_M:-256} DISK_M=${DISK_M:-512} STATUS_MS=${STATUS_MS:-500}
WORKLOAD=${WORKLOAD:-mem=32M/s,hot=64M,disk=4M/s,ram-fill=64M,disk-fill=128M}
top=$(cd "$(dirname "$0")/../.." && pwd)
BLKMIG=${BLKMIG:-$top/blkmig} GUEST=${GUEST:-$top/vm/guest/blkmig-guest.elf}
OUT=${OUT:-/dev/null}
PY=/usr/bin/python3
case $SIDE in blkmig|qemu) ;; *) echo "nested-pingpong: SIDE must be blkmig or qemu" >&2; exit 2 ;; esac
case $MODE in disk|ram) ;; *) echo "nested-pingpong: MODE must be disk or ram" >&2; exit 2 ;; esac
for v in ITER RAM_M DISK_M STATUS_MS; do
    [[ ${!v} =~ ^[1-9][0-9]{0,5}$ ]] || { echo "nested-pingpong: $v must be a positive number, not '${!v}'" >&2; exit 2; }
done
[ "$STATUS_MS" -le 20000 ] || { echo "nested-pingpong: STATUS_MS must be at most 20000 (boot waits 120 s for 3 lines)" >&2; exit 2; }
WINDOW=$(((STATUS_MS * 5 + 1999) / 2000)) # 2.5 status periods, at least 5 s
[ "$WINDOW" -ge 5 ] || WINDOW=5
# A CPU list for taskset; anything else would leave the vCPU free while the results say pinned.
[[ -z $PIN || $PIN =~ ^[0-9]+([-,][0-9]+)*$ ]] || { echo "nested-pingpong: PIN must be a CPU list (e.g. 1), not '$PIN'" >&2; exit 2; }
# The run's settings, JSON-quoted once, at the head of every RESULT and SUMMARY line.
CONF=$("$PY" -c 'import json, sys
k = ("side", "mode", "pin", "qemu_accel", "qemu_args")
print(json.dumps(dict(zip(k, sys.argv[1:])))[1:-1])' "$SIDE" "$MODE" "$PIN" "${QEMU_ACCEL:-kvm}" "${QEMU_ARGS:-}")
# What the run needs from the machine it runs on (77: it cannot run here).
[ -r /dev/kvm ] && [ -w /dev/kvm ] || { echo "nested-pingpong: no usable /dev/kvm (try contrib/kvm-nested.sh)" >&2; exit 77; }
if [ "$SIDE" = blkmig ]; then
    [ -x "$BLKMIG" ] || { echo "nested-pingpong: no blkmig at $BLKMIG (make, or set BLKMIG)" >&2; exit 77; }
else
    command -v qemu-system-x86_64 >/dev/null || { echo "nested-pingpong: no qemu-system-x86_64" >&2; exit 77; }
fi
[ -r "$GUEST" ] || { echo "nested-pingpong: no guest ELF at $GUEST" >&2; exit 77; }

W=$(mktemp -d /tmp/nested-pingpong.XXXXXX)
declare -A PID=()
PINNER=
cleanup() {
    [ -z "$PINNER" ] || kill "$PINNER" 2>/dev/null
    for p in "${PID[@]}"; do kill "$p" 2>/dev/null; done
    sleep 1
    for p in "${PID[@]}"; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { echo "$*"; echo "$*" >> "$OUT"; }
hb() { # status lines so far (grep -c prints 0 for none, and fails)
    local n
    n=$(grep -c "BMG status" "$1" 2>/dev/null)
    echo "${n:-0}"
}
# The scheduler's counts for process $1's vCPU thread since it started (CONFIG_SCHED_DEBUG):
# CPU migrations, and context switches, as JSON fields; "null" where /proc does not say.
vcpu_sched() {
    local t m=null sw=null
    for t in /proc/"$1"/task/*; do
        case $(cat "$t/comm" 2>/dev/null) in
        vcpu0|"CPU 0/KVM")
            m=$(awk '/^se.nr_migrations/ {print $3}' "$t/sched" 2>/dev/null)
            sw=$(awk '/^nr_switches/ {print $3}' "$t/sched" 2>/dev/null) ;;
        esac
    done
    echo "\"vcpu_migrations\": ${m:-null}, \"vcpu_switches\": ${sw:-null}"
}
qmp() { # SOCKET COMMAND [ARGS-JSON], or SOCKET migrate DST-SOCKET PORT [NBD-SOCKET] (below)
    "$PY" - "$@" <<'PY'
import json, socket, sys, time
def connect(path):
    s = socket.socket(socket.AF_UNIX); s.settimeout(30); s.connect(path); f = s.makefile("rw")
    f.readline()
    cmd("qmp_capabilities", f=f)
    return f
def cmd(c, f=None, **a):
    f = f or src
    f.write(json.dumps({"execute": c, "arguments": a}) + "\n"); f.flush()
    while True:
        r = json.loads(f.readline())
        if "return" in r or "error" in r:
            return r
class Failed(Exception):
    pass
def ok(r, what):
    if "error" in r:
        raise Failed("%s: %s" % (what, r["error"].get("desc")))
    return r["return"]
src = connect(sys.argv[1])
if sys.argv[2] != "migrate":
    print(json.dumps(cmd(sys.argv[2], **json.loads(sys.argv[3] if len(sys.argv) > 3 else "{}"))))
    sys.exit(0)
# migrate DST PORT [NBD]: RAM at 1 GiB/s; with NBD, the disk first, in libvirt's order (as
# guest-migrate-bench.sh): the destination (started with -S) exports its empty image, the source
# mirrors into it, the migration stops before the switchover until the mirror is cancelled
# (drained), and the destination runs once its NBD server is gone. Prints {status, downtime_ms,
# error}; exit 0 only when it completed. A failed try ends its mirror and drops its node, so the
# next try can make its own.
nbd = sys.argv[5] if len(sys.argv) > 5 else None
job = "mig%d" % (time.time() * 1000)
end = time.time() + 300
out = {"status": "failed", "downtime_ms": None, "error": ""}
try:
    if nbd:
        dst = connect(sys.argv[3])
        ok(cmd("nbd-server-start", f=dst, addr={"type": "unix", "data": {"path": nbd}}), "nbd-server-start")
        ok(cmd("nbd-server-add", f=dst, device="vda", writable=True), "nbd-server-add")
        ok(cmd("blockdev-add", driver="nbd", **{"node-name": job},
               server={"type": "unix", "path": nbd}, export="vda"), "blockdev-add")
        ok(cmd("blockdev-mirror", **{"job-id": job}, device="vda", target=job, sync="full"), "blockdev-mirror")
        while not any(j.get("ready") for j in ok(cmd("query-block-jobs"), "query-block-jobs")):
            if time.time() > end:
                raise Failed("the mirror was not ready in 300 s")
            time.sleep(0.1)
        ok(cmd("migrate-set-capabilities", capabilities=[
            {"capability": "pause-before-switchover", "state": True}]), "migrate-set-capabilities")
    ok(cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 30}), "migrate-set-parameters")
    ok(cmd("migrate", uri="tcp:127.0.0.1:" + sys.argv[4]), "migrate")
    while True:
        r = ok(cmd("query-migrate"), "query-migrate")
        out = {"status": r.get("status"), "downtime_ms": r.get("downtime"), "error": r.get("error-desc", "")}
        if r.get("status") == "pre-switchover":
            ok(cmd("block-job-cancel", device=job), "block-job-cancel")
            while ok(cmd("query-block-jobs"), "query-block-jobs"):
                time.sleep(0.01)
            ok(cmd("migrate-continue", state="pre-switchover"), "migrate-continue")
        elif r.get("status") in ("completed", "failed", "cancelled"):
            break
        if time.time() > end:
            raise Failed("no end in 300 s (%s)" % r.get("status"))
        time.sleep(0.01)
    if out["status"] == "completed" and nbd:
        while (ok(cmd("query-migrate", f=dst), "query-migrate").get("status") != "completed" or
               ok(cmd("query-status", f=dst), "query-status")["status"] != "paused"):
            time.sleep(0.01)
        ok(cmd("nbd-server-stop", f=dst), "nbd-server-stop")
        ok(cmd("cont", f=dst), "cont")
except (Failed, OSError, ValueError) as e:
    out = {"status": "failed", "downtime_ms": None, "error": str(e) or type(e).__name__}
if out["status"] != "completed" and nbd:
    try:
        cmd("block-job-cancel", device=job, force=True)
        for _ in range(3000):
            if not cmd("query-block-jobs").get("return"):
                break
            time.sleep(0.01)
        cmd("blockdev-del", **{"node-name": job})
    except (OSError, ValueError):
        pass
print(json.dumps(out))
sys.exit(0 if out["status"] == "completed" else 1)
PY
}

# Side s (0 or 1) boots the guest, or waits for it (incoming) when $2 is a port.
start_vm() {
    local s=$1 port=${2:-}
    : > "$W/con$s"
    rm -f "$W/ctl$s" "$W/nbd$s"
    if [ "$SIDE" = qemu ]; then
        local inc=() img=$W/vda0.img
        [ -z "$port" ] || inc=(-incoming "tcp:127.0.0.1:$port")
        if [ -n "$port" ] && [ "$MODE" = disk ]; then # a fresh image; stopped until the disk is in
            img=$W/vda$s.img
            rm -f "$img" && truncate -s "${DISK_M}M" "$img"
            inc+=(-S)
        fi
        qemu-system-x86_64 -M microvm,acpi=off -accel "${QEMU_ACCEL:-kvm}" -m "${RAM_M}M" -nodefaults \
            -no-user-config -display none -no-reboot -name pingpong,debug-threads=on \
            -kernel "$GUEST" \
            -append "blkmig.workload=$WORKLOAD blkmig.run=100000 blkmig.status_ms=$STATUS_MS" \
            -global virtio-mmio.force-legacy=false \
            -drive "id=vda,file=$img,format=raw,if=none,cache=writeback,aio=threads" \
            -device virtio-blk-device,drive=vda -device isa-debug-exit,iobase=0xf4,iosize=4 \
            -serial "file:$W/con$s" -qmp "unix:$W/ctl$s,server=on,wait=off" "${inc[@]}" \
            ${QEMU_ARGS:-} 2>> "$W/err" &
    elif [ -z "$port" ]; then
        "$BLKMIG" run --kvm --guest "$GUEST" --ram "${RAM_M}M" \
            --disk "vda=$W/vda$s.img,size=${DISK_M}M" --workload "$WORKLOAD" \
            --console "$W/con$s" --control "$W/ctl$s" \
            --append "blkmig.run=100000 blkmig.status_ms=$STATUS_MS" 2>> "$W/err" &
    else
        local disk=(--disk-dir "$W/d$s" --force)
        [ "$MODE" = disk ] || disk=(--disk "vda=$W/vda0.img")
        mkdir -p "$W/d$s"
        BLKMIG_CONSOLE=$W/con$s "$BLKMIG" incoming --listen "127.0.0.1:$port" "${disk[@]}" \
            --control "$W/ctl$s" 2>> "$W/err" &
    fi
    PID[$s]=$!
}
boot() {
    for s in 0 1; do [ -z "${PID[$s]:-}" ] || { kill -9 "${PID[$s]}" 2>/dev/null; wait "${PID[$s]}" 2>/dev/null; unset "PID[$s]"; }; done
    rm -rf "$W/d0" "$W/d1" "$W/vda0.img"
    truncate -s "${DISK_M}M" "$W/vda0.img"
    start_vm 0
    local end=$((SECONDS + 120)) # boot and fill: wait for the first status lines
    while [ "$(hb "$W/con0")" -lt 3 ] && [ $SECONDS -lt $end ]; do sleep 1; done
}

if [ -n "$PIN" ]; then
    (while :; do
        for p in $(pgrep -f -- "$W/"); do # only the VMs this run started
            for t in /proc/"$p"/task/*; do
                case $(cat "$t/comm" 2>/dev/null) in
                vcpu0|"CPU 0/KVM") taskset -pc "$PIN" "${t##*/}" >/dev/null 2>&1 ;;
                esac
            done
        done
        sleep 0.2
    done) &
    PINNER=$!
fi

boot
cur=0 dead=0
for i in $(seq 1 "$ITER"); do
    nxt=$((1 - cur)) port=$((7700 + 2 * (1 - cur)))
    start_vm "$nxt" "$port"
    sleep 1
    say "start $i $(date +%T)"
    t0=$(date +%s%N)
    if [ "$SIDE" = qemu ]; then
        nbd=
        [ "$MODE" = ram ] || nbd=$W/nbd$nxt
        mig=$(qmp "$W/ctl$cur" migrate "$W/ctl$nxt" "$port" $nbd)
        ok=$?
    else
        wd=--with-disk
        [ "$MODE" = disk ] || wd=
        timeout 300 "$BLKMIG" migrate $wd --verify --json --no-progress "$W/ctl$cur" \
            "tcp:127.0.0.1:$port" > "$W/mig.json" 2>> "$W/err"
        ok=$?
        mig=$(tail -1 "$W/mig.json" | "$PY" -c 'import json,sys
d = json.load(sys.stdin); d = d.get("report") or d.get("data") or {}
print(json.dumps({"status": d.get("status"), "downtime_ms": d.get("downtime_ms"), "error": d.get("error", "")}))' 2>/dev/null || echo '{}')
    fi
    [ -n "$mig" ] || mig='{}' # no answer at all (a VM process gone)
    ms=$((($(date +%s%N) - t0) / 1000000))
    if [ "$ok" = 0 ]; then
        kill "${PID[$cur]}" 2>/dev/null # QEMU's source stays paused; blkmig's has ended
        wait "${PID[$cur]}" 2>/dev/null
        unset "PID[$cur]"
        live=$nxt
    else
        kill "${PID[$nxt]}" 2>/dev/null
        wait "${PID[$nxt]}" 2>/dev/null
        unset "PID[$nxt]"
        live=$cur
    fi
    a=$(hb "$W/con$live")
    sleep "$WINDOW"
    b=$(hb "$W/con$live")
    sched=$(vcpu_sched "${PID[$live]}")
    proc=running
    kill -0 "${PID[$live]}" 2>/dev/null || { wait "${PID[$live]}"; proc="exited $?"; }
    state=ok
    [ "$proc" = running ] && [ "$b" -gt "$a" ] || state=dead
    say "RESULT {$CONF, \"iter\": $i, \"guest\": \"$state\", \"on\": \"$([ $live = $nxt ] && echo destination || echo source)\", \"process\": \"$proc\", \"status_lines_in_${WINDOW}s\": $((b - a)), $sched, \"ms\": $ms, \"migration\": $mig}"
    if [ $state = dead ]; then
        dead=$((dead + 1))
        [ "$OUT" = /dev/null ] || {
            cp "$W/con$live" "${OUT%.*}-dead-$SIDE-$i.console"
            dmesg 2>/dev/null | tail -40 > "${OUT%.*}-dead-$SIDE-$i.dmesg"
            tail -40 "$W/err" > "${OUT%.*}-dead-$SIDE-$i.err" 2>/dev/null
            # A VM that still runs: where its vCPU is, twice, 1 s apart (a loop or a stall).
            if [ "$proc" = running ]; then
                for n in 1 2; do
                    if [ "$SIDE" = blkmig ]; then
                        timeout 10 "$BLKMIG" control "$W/ctl$live" x-query-vcpus 2>&1
                        timeout 10 "$BLKMIG" control "$W/ctl$live" query-status 2>&1
                    else
                        qmp "$W/ctl$live" human-monitor-command '{"command-line": "info registers"}'
                        qmp "$W/ctl$live" query-status
                    fi
                    sleep 1
                done > "${OUT%.*}-dead-$SIDE-$i.vcpus"
            fi
        }
        boot
        cur=0
    else
        cur=$live
    fi
done
say "SUMMARY {$CONF, \"migrations\": $ITER, \"guest_dead\": $dead}"
[ $dead = 0 ]
