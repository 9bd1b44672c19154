#!/usr/bin/env bash
# nested-pingpong.sh: migrate one running KVM test guest back and forth between two VM processes
# on this machine, ITER times, and after each migration check that the guest still runs (its
# console's status lines keep coming and its process lives). A stress rig for the VM platform
# more than a speed benchmark: on this project's nested KVM (contrib/kvm-nested.sh, SVM emulated
# by QEMU TCG) it reproduces in minutes the guest deaths that guest-migrate-bench.sh meets about
# once in ten migrations, for blkmig and for QEMU alike (contrib/bench/RESULTS.md).
#
# Needs a usable /dev/kvm; run it under contrib/kvm-nested.sh where there is none, e.g.
#   contrib/kvm-nested.sh --cpus 2 --timeout 900 --out /tmp/pp --env SIDE=qemu \
#     --env OUT=/tmp/pp/results.txt -- bash contrib/bench/nested-pingpong.sh
# Knobs (environment):
#   SIDE=blkmig|qemu  which VMM migrates (default blkmig)
#   ITER=12           migrations
#   MODE=disk|ram     blkmig: `migrate --with-disk` into a fresh image (default), or RAM only with
#                     both processes on one image (shared storage); QEMU always migrates RAM only
#   QEMU_ACCEL=kvm    QEMU's -accel (e.g. kvm,kernel-irqchip=on); QEMU_ARGS: more arguments
#   PIN=CPUS          keep every vCPU thread (blkmig's vcpu0, QEMU's "CPU 0/KVM") on these
#                     CPUs (a taskset list, e.g. 1)
#   BLKMIG, GUEST     the binary and the guest ELF (default: this checkout's build)
#   RAM_M=256 DISK_M=512 WORKLOAD=mem=32M/s,hot=64M,disk=4M/s,ram-fill=64M,disk-fill=128M
#   OUT=FILE          append result lines here too (e.g. in kvm-nested.sh's --out directory, so
#                     that they outlive a nested kernel that panics); the console of a dead guest
#                     and the kernel log's tail are saved beside it
# Output: a `start N` line before each migration (a run that ends without the next line died with
# the machine), one `RESULT {json}` line after it, and a `SUMMARY {json}` line at the end.
# Exit status: 0 when every migration left a running guest, 1 when one did not, 77 without KVM.
set -uo pipefail
case ${1:-} in -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
SIDE=${SIDE:-blkmig} ITER=${ITER:-12} MODE=${MODE:-disk} PIN=${PIN:-}
RAM_M=${RAM_M:-256} DISK_M=${DISK_M:-512}
WORKLOAD=${WORKLOAD:-mem=32M/s,hot=64M,disk=4M/s,ram-fill=64M,disk-fill=128M}
top=$(cd "$(dirname "$0")/../.." && pwd)
BLKMIG=${BLKMIG:-$top/blkmig} GUEST=${GUEST:-$top/vm/guest/blkmig-guest.elf}
OUT=${OUT:-/dev/null}
PY=/usr/bin/python3
[ "$SIDE" != qemu ] || MODE=ram # QEMU here migrates RAM only, both processes on one image
case $SIDE in blkmig|qemu) ;; *) echo "nested-pingpong: SIDE must be blkmig or qemu" >&2; exit 2 ;; esac
case $MODE in disk|ram) ;; *) echo "nested-pingpong: MODE must be disk or ram" >&2; exit 2 ;; esac
for v in ITER RAM_M DISK_M; do
    [[ ${!v} =~ ^[1-9][0-9]{0,5}$ ]] || { echo "nested-pingpong: $v must be a positive number, not '${!v}'" >&2; exit 2; }
done
# A CPU list for taskset; anything else would leave the vCPU free while the results say pinned.
[[ -z $PIN || $PIN =~ ^[0-9]+([-,][0-9]+)*$ ]] || { echo "nested-pingpong: PIN must be a CPU list (e.g. 1), not '$PIN'" >&2; exit 2; }
# The run's settings, JSON-quoted once, at the head of every RESULT and SUMMARY line.
CONF=$("$PY" -c 'import json, sys
k = ("side", "mode", "pin", "qemu_accel", "qemu_args")
print(json.dumps(dict(zip(k, sys.argv[1:])))[1:-1])' "$SIDE" "$MODE" "$PIN" "${QEMU_ACCEL:-kvm}" "${QEMU_ARGS:-}")
# What the run needs from this machine (77: it cannot run here).
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
qmp() { # SOCKET COMMAND [ARGS-JSON]; "wait-migrate" polls query-migrate to an end state
    "$PY" - "$@" <<'PY'
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX); s.settimeout(30); s.connect(sys.argv[1]); f = s.makefile("rw")
f.readline()
def cmd(c, **a):
    f.write(json.dumps({"execute": c, "arguments": a}) + "\n"); f.flush()
    while True:
        r = json.loads(f.readline())
        if "return" in r or "error" in r:
            return r
cmd("qmp_capabilities")
if sys.argv[2] == "wait-migrate":
    end = time.time() + 300
    while time.time() < end:
        r = cmd("query-migrate")["return"]
        if r.get("status") in ("completed", "failed", "cancelled"):
            print(json.dumps({"status": r["status"], "downtime_ms": r.get("downtime"),
                              "error": r.get("error-desc", "")}))
            break
        time.sleep(0.2)
    else:
        print(json.dumps({"status": "timeout"}))
else:
    print(json.dumps(cmd(sys.argv[2], **json.loads(sys.argv[3] if len(sys.argv) > 3 else "{}"))))
PY
}

# Side s (0 or 1) boots the guest, or waits for it (incoming) when $2 is a port.
start_vm() {
    local s=$1 port=${2:-}
    : > "$W/con$s"
    rm -f "$W/ctl$s"
    if [ "$SIDE" = qemu ]; then
        local inc=()
        [ -z "$port" ] || inc=(-incoming "tcp:127.0.0.1:$port")
        qemu-system-x86_64 -M microvm,acpi=off -accel "${QEMU_ACCEL:-kvm}" -m "${RAM_M}M" -nodefaults \
            -no-user-config -display none -no-reboot -name pingpong,debug-threads=on \
            -kernel "$GUEST" \
            -append "blkmig.workload=$WORKLOAD blkmig.run=100000 blkmig.status_ms=500" \
            -global virtio-mmio.force-legacy=false \
            -drive "id=vda,file=$W/vda0.img,format=raw,if=none,cache=writeback,aio=threads" \
            -device virtio-blk-device,drive=vda -device isa-debug-exit,iobase=0xf4,iosize=4 \
            -serial "file:$W/con$s" -qmp "unix:$W/ctl$s,server=on,wait=off" "${inc[@]}" \
            ${QEMU_ARGS:-} 2>> "$W/err" &
    elif [ -z "$port" ]; then
        "$BLKMIG" run --kvm --guest "$GUEST" --ram "${RAM_M}M" \
            --disk "vda=$W/vda$s.img,size=${DISK_M}M" --workload "$WORKLOAD" \
            --console "$W/con$s" --control "$W/ctl$s" \
            --append "blkmig.run=100000 blkmig.status_ms=500" 2>> "$W/err" &
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
        qmp "$W/ctl$cur" migrate-set-parameters '{"max-bandwidth": 1073741824}' >/dev/null
        qmp "$W/ctl$cur" migrate "{\"uri\": \"tcp:127.0.0.1:$port\"}" >/dev/null
        mig=$(qmp "$W/ctl$cur" wait-migrate)
        [ "$($PY -c 'import json,sys; print(json.loads(sys.argv[1])["status"])' "$mig")" = completed ]
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
    sleep 5
    b=$(hb "$W/con$live")
    sched=$(vcpu_sched "${PID[$live]}")
    proc=running
    kill -0 "${PID[$live]}" 2>/dev/null || { wait "${PID[$live]}"; proc="exited $?"; }
    state=ok
    [ "$proc" = running ] && [ "$b" -gt "$a" ] || state=dead
    say "RESULT {$CONF, \"iter\": $i, \"guest\": \"$state\", \"on\": \"$([ $live = $nxt ] && echo destination || echo source)\", \"process\": \"$proc\", \"status_lines_in_5s\": $((b - a)), $sched, \"ms\": $ms, \"migration\": $mig}"
    if [ $state = dead ]; then
        dead=$((dead + 1))
        [ "$OUT" = /dev/null ] || {
            cp "$W/con$live" "${OUT%.*}-dead-$SIDE-$i.console"
            dmesg 2>/dev/null | tail -40 > "${OUT%.*}-dead-$SIDE-$i.dmesg"
        }
        boot
        cur=0
    else
        cur=$live
    fi
done
say "SUMMARY {$CONF, \"migrations\": $ITER, \"guest_dead\": $dead}"
[ $dead = 0 ]
