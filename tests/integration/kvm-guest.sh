#!/usr/bin/env bash
# Integration: the KVM micro-VM (`blkmig run --kvm`) with the test guest (vm/guest), on a
# usable /dev/kvm (or in a nested VM that has one, below). Boot: the guest's status lines reach the console
# file with host timestamps, its heartbeat and RAM/disk writes advance, 0 data errors; stop and
# cont pause and resume it; its whole state saved and loaded back in one process
# (x-state-roundtrip) leaves it running, clean, and its clock counts a stop with a round trip
# in it. --console unix:PATH sends the timestamped lines
# to a socket the test listens on (and one nobody listens on is refused). Then live migration
# --with-disk --verify between two hosts
# (namespaces when root), idle and moderate: completed and verified, the guest runs on the
# destination with clean self-checks, the source exits. A destination killed during the bulk
# copy leaves the KVM guest running on the source, clean; then migrate-faults.sh's cases with
# the KVM guest (MIG_GUEST=kvm), and `blkmig demo --kvm`, end to end.
# Without /dev/kvm it checks that run --kvm and demo --kvm refuse with the reason, then runs
# itself in a VM with KVM (contrib/kvm-nested.sh: QEMU TCG emulating SVM, nested KVM inside),
# with fewer fault cases (KVM_FAULT_CASES, default "a c e" there); it skips only when that
# cannot be set up (KVM_NESTED=0: skip at once).
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/migrate-lib.sh"

if [ ! -c /dev/kvm ]; then
    # Without KVM, asking for it fails at once with the reason (and leaves nothing behind).
    set +e
    "$BLKMIG" run --kvm --ram 64M --control "$TMP/vm.sock" >"$TMP/run.out" 2>&1
    rc_run=$?
    "$BLKMIG" demo --kvm --loopback >"$TMP/demo.out" 2>&1
    rc_demo=$?
    set -e
    [ $rc_run -eq 1 ] && grep -q '/dev/kvm' "$TMP/run.out" ||
        fail "run --kvm without /dev/kvm: exit $rc_run: $(cat "$TMP/run.out")"
    [ $rc_demo -eq 1 ] && grep -q '/dev/kvm.*leave out --kvm' "$TMP/demo.out" ||
        fail "demo --kvm without /dev/kvm: exit $rc_demo: $(cat "$TMP/demo.out")"
    [ ! -e "$TMP/vm.sock" ] || fail "run --kvm without /dev/kvm left its control socket"
    log "no /dev/kvm here: run --kvm and demo --kvm refuse with the reason"
    # Then the real test, on real KVM, in a VM that has it: QEMU with TCG emulating AMD SVM
    # runs Debian's kernel with kvm-amd and the host's filesystem (contrib/kvm-nested.sh;
    # 77 from it = it cannot be set up here). KVM_NESTED=0 skips instead.
    [ "${KVM_NESTED:-1}" != 0 ] || skip "no /dev/kvm here (KVM_NESTED=0: not trying a nested VM)"
    [ "${KVM_NESTED:-1}" != inside ] || skip "no /dev/kvm in the nested VM either (kvm-amd did not load)"
    log "running this test in a nested VM with KVM (contrib/kvm-nested.sh; slow: everything is emulated)"
    "$top_srcdir/contrib/kvm-nested.sh" --timeout 1500 \
        --env "top_srcdir=$top_srcdir" --env "top_builddir=$top_builddir" --env "BLKMIG=$BLKMIG" \
        --env "ASAN_OPTIONS=${ASAN_OPTIONS:-}" --env "UBSAN_OPTIONS=${UBSAN_OPTIONS:-}" \
        --env KVM_NESTED=inside --env "KVM_FAULT_CASES=${KVM_FAULT_CASES:-a c e}" \
        -- bash "$top_srcdir/tests/integration/kvm-guest.sh" >"$TMP/nested.log" 2>&1 &
    track_pid $!
    rc=0
    wait $! || rc=$?
    grep -E '^(# |FAIL|SKIP|kvm-nested:)|Kernel panic' "$TMP/nested.log" >&2 || true
    [ $rc -ne 77 ] || skip "no /dev/kvm here, and no nested VM with KVM either ($(grep '^kvm-nested:' "$TMP/nested.log" | tail -1))"
    [ $rc -eq 0 ] || { tail -n 40 "$TMP/nested.log" >&2; fail "the test in the nested VM with KVM: exit $rc"; }
    log "ok (in the nested VM)"
    exit 0
fi
{ exec 9<>/dev/kvm; } 2>/dev/null || skip "/dev/kvm is not usable by $(id -un)"
exec 9>&-
ELF=$top_builddir/vm/guest/blkmig-guest.elf
[ -f "$ELF" ] || skip "no test guest at $ELF (x86-64 builds only)"
export BLKMIG_GUEST=$ELF
MIG_GUEST=kvm # mig_start_source: --kvm, console in $CASE_DIR/src-console.log

LIMIT_MS=300
if [ "$MIG_SANITIZED" = 1 ]; then MARGIN_MS=${MARGIN_MS:-700}; else MARGIN_MS=${MARGIN_MS:-200}; fi
MIG_RAM=256M
MIG_DISK=256M
MIG_FILL=ram-fill=64M,disk-fill=64M
MODERATE=mem=32M/s,hot=64M,disk=4M/s
IDLE=mem=0,disk=0

mig_hosts_up
t_start=$SECONDS

# ---- boot, status lines, stop/cont ----
mig_case boot
log "boot: blkmig run --kvm with $MODERATE"
mig_start_source "$MODERATE"
deadline=$((SECONDS + 30))
until grep -q 'BMG status' "$CASE_DIR/src-console.log" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || fail "no status line from the guest in 30 s: $(mig_tail "$CASE_DIR/src-console.log" 5) $(mig_tail "$SRC_LOG" 5)"
    sleep 0.2
done
grep -Eq '^\[ *[0-9]+\.[0-9]{6}\] BMG boot .*disks=1 .*\(cmdline\)' "$CASE_DIR/src-console.log" ||
    soft_fail "boot: no timestamped boot line with one disk and the TSC rate from the command line: $(mig_tail "$CASE_DIR/src-console.log" 5)"
assert_guest_healthy "boot" "$SRC_SOCK" writes || true
timeout 30 "$BLKMIG" control "$SRC_SOCK" stop >/dev/null || soft_fail "stop failed"
vm_status "$SRC_SOCK" || true
hb0=$VM_HB
sleep 0.5
vm_status "$SRC_SOCK" || true
[ "$VM_RUNNING" = false ] || soft_fail "after stop: running '$VM_RUNNING'"
[ "$VM_HB" = "$hb0" ] || soft_fail "after stop: the heartbeat still advances ($hb0 -> $VM_HB)"
timeout 30 "$BLKMIG" control "$SRC_SOCK" cont >/dev/null || soft_fail "cont failed"
sleep 0.5
assert_guest_healthy "after cont" "$SRC_SOCK" writes || true
# x-query-vcpus (debugging, no pause): the running workload is 64-bit ring 3, its code readable
# at RIP; stopped, two dumps agree.
vcpus_check() { # LABEL WANT_STATE: prints "rip" of vCPU 0
    local out
    out=$(timeout 30 "$BLKMIG" control "$SRC_SOCK" x-query-vcpus 2>&1) || { soft_fail "$1: x-query-vcpus failed: $out"; return 1; }
    "$PY3" - "$2" "$out" <<'PY' || { soft_fail "$1: x-query-vcpus: $out"; return 1; }
import json, sys
v = json.loads(sys.argv[2])["return"]["vcpus"][0]
ok = (v["state"] == sys.argv[1] and v["cs"]["dpl"] == 3 and v["cs"]["l"] and
      int(v["rip"], 16) >= 0x100000 and len(v.get("code", "")) == 32 and int(v["cr3"], 16) > 0)
print(v["rip"] if ok else "bad")
sys.exit(0 if ok else 1)
PY
}
vcpus_check "running" running >/dev/null || true
timeout 30 "$BLKMIG" control "$SRC_SOCK" stop >/dev/null || soft_fail "stop (vcpus) failed"
rip1=$(vcpus_check "stopped" paused) || true
rip2=$(vcpus_check "stopped, again" paused) || true
[ -n "$rip1" ] && [ "$rip1" = "$rip2" ] || soft_fail "x-query-vcpus: a stopped vCPU moved ($rip1 -> $rip2)"
timeout 30 "$BLKMIG" control "$SRC_SOCK" cont >/dev/null || soft_fail "cont (vcpus) failed"
# query-status counts the vCPU's exits (the console's MMIO) and the I/O thread's notifications
# (virtio QueueNotify through an ioeventfd: the disk workload's requests, no exit).
exits=$(timeout 30 "$BLKMIG" control "$SRC_SOCK" query-status | "$PY3" -c 'import json,sys; g=json.load(sys.stdin)["return"]["guest"]; v=g["vcpus"][0]; io=g["iothread"]; print(v["mmio_exits"], v["exits"], int(io["running"]), io["notifies"])') || exits="0 0 0 0"
read -r mmio_exits all_exits io_running io_notifies <<<"$exits"
[ "${mmio_exits:-0}" -gt 0 ] && [ "${all_exits:-0}" -ge "${mmio_exits:-0}" ] ||
    soft_fail "query-status: vCPU exit counts '$exits' (MMIO exits expected: the console)"
[ "${io_running:-0}" = 1 ] && [ "${io_notifies:-0}" -gt 0 ] ||
    soft_fail "query-status: I/O thread '$exits' (running, with notifications served, expected)"
state_roundtrip "boot" "$SRC_SOCK" || true # vCPU, VM and device state, in one process
# The guest's clock counts a stop that a state round trip falls in: the TSC goes into the state
# as it was when the VM stopped, paired with the time then (docs/vmm.md "TSC"). Where the host's
# TSC is unstable (nested), KVM freezes a stopped vCPU's TSC, and a TSC taken at the save was
# paired with the save's time: the guest's clock came out the whole stop behind the host's.
timeout 30 "$BLKMIG" control "$SRC_SOCK" stop >/dev/null || soft_fail "stop (clock) failed"
sleep 1.5
timeout 60 "$BLKMIG" control "$SRC_SOCK" x-state-roundtrip >/dev/null || soft_fail "x-state-roundtrip while stopped failed"
timeout 30 "$BLKMIG" control "$SRC_SOCK" cont >/dev/null || soft_fail "cont (clock) failed"
sleep 1
clock=$("$PY3" - "$CASE_DIR/src-console.log" <<'PY'
import re, sys
pts = [(float(m.group(1)), int(m.group(2))) for m in
       (re.match(r"\[ *([0-9.]+)\] BMG status t_ms=([0-9]+)", l) for l in open(sys.argv[1])) if m]
# The stop: the largest host-clock gap between two consecutive status lines.
i = max(range(1, len(pts)), key=lambda j: pts[j][0] - pts[j - 1][0])
host = (pts[i][0] - pts[i - 1][0]) * 1000
print("%d %d" % (host, pts[i][1] - pts[i - 1][1]))
PY
) || clock=""
read -r host_ms guest_ms <<<"${clock:-0 0}"
log "boot: across a 1.5 s stop with a state round trip: host clock ${host_ms} ms, guest clock ${guest_ms} ms"
[ "$host_ms" -ge 1500 ] || soft_fail "boot: no 1.5 s gap in the status lines around the stop (host ${host_ms} ms)"
[ $((host_ms - guest_ms)) -lt 500 ] && [ $((guest_ms - host_ms)) -lt 500 ] ||
    soft_fail "boot: the guest's clock did not count the stop: ${guest_ms} ms against ${host_ms} ms on the host's"
mig_quit_vm "boot" "$SRC_SOCK" "$SRC_PID"
mig_check_logs

# ---- the console on a unix socket (--console unix:PATH) ----
mig_case console-socket
log "console-socket: blkmig run --kvm --console unix:PATH, and a socket nobody listens on"
"$PY3" - "$CASE_DIR/con.sock" "$CASE_DIR/con.out" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1]); s.listen(1); s.settimeout(120)
c, _ = s.accept()
with open(sys.argv[2], "wb") as f:
    while True:
        d = c.recv(65536)
        if not d:
            break
        f.write(d); f.flush()
PY
con_pid=$!
mig_track "$con_pid"
wait_unix "$CASE_DIR/con.sock"
"$BLKMIG" run --kvm --ram 32M --workload mem=1M/s --console "unix:$CASE_DIR/con.sock" \
    --append blkmig.status_ms=100 --control "$CASE_DIR/con-vm.sock" </dev/null \
    >"$CASE_DIR/con-vm.out" 2>"$CASE_DIR/con-vm.log" &
con_vm=$!
mig_track "$con_vm"
deadline=$((SECONDS + 60))
until grep -q 'BMG status' "$CASE_DIR/con.out" 2>/dev/null; do
    kill -0 "$con_vm" 2>/dev/null || fail "console-socket: blkmig run exited: $(mig_tail "$CASE_DIR/con-vm.log")"
    [ $SECONDS -lt $deadline ] || fail "console-socket: no status line on the socket in 60 s: $(mig_tail "$CASE_DIR/con-vm.log")"
    sleep 0.2
done
grep -Eq '^\[ *[0-9]+\.[0-9]{6}\] BMG boot ' "$CASE_DIR/con.out" ||
    soft_fail "console-socket: no timestamped boot line on the socket: $(mig_tail "$CASE_DIR/con.out" 3)"
mig_quit_vm "console-socket" "$CASE_DIR/con-vm.sock" "$con_vm"
mig_wait "$con_pid" 20
[ "$WAIT_RC" -eq 0 ] || soft_fail "console-socket: the listener did not see the end of the stream (exit $WAIT_RC)"
rc=0
"$BLKMIG" run --kvm --ram 32M --console "unix:$CASE_DIR/nobody.sock" \
    --control "$CASE_DIR/con-vm2.sock" </dev/null >/dev/null 2>"$CASE_DIR/con-vm2.log" || rc=$?
[ $rc -ne 0 ] && grep -q "console" "$CASE_DIR/con-vm2.log" ||
    soft_fail "console-socket: a socket nobody listens on: exit $rc, $(mig_tail "$CASE_DIR/con-vm2.log" 2)"
mig_check_logs

# ---- live migration, idle and moderate ----
for scen in idle moderate; do
    wl=$IDLE
    [ $scen = moderate ] && wl=$MODERATE
    mig_case "$scen"
    log "$scen ($wl): migrate --with-disk --verify"
    mig_start_source "$wl"
    mig_start_dest
    sleep 1
    mig_migrate 180 --with-disk --verify
    log "  $scen: exit $MIG_RC after $MIG_MS ms: $(mig_summary)"
    [ "$MIG_RC" -eq 0 ] || fail "$scen: blkmig migrate exited $MIG_RC: $(mig_tail "$MIG_ERR") $(mig_report error)"
    [ "$(mig_report status)" = completed ] || soft_fail "$scen: status '$(mig_report status)'"
    [ "$(mig_report verified)" = true ] || soft_fail "$scen: verified '$(mig_report verified)'"
    dt=$(mig_report downtime_ms)
    [ -n "$dt" ] && "$PY3" -c "import sys; sys.exit(not float('$dt') < $((LIMIT_MS + MARGIN_MS)))" ||
        soft_fail "$scen: downtime_ms '$dt' not under $((LIMIT_MS + MARGIN_MS))"
    mig_wait "$SRC_PID" 20
    [ "$WAIT_RC" -eq 0 ] || soft_fail "$scen: the source exited $WAIT_RC"
    _mig_wait_start "$DST_PID" "$DST_SOCK" "$DST_LOG" "" 20 "$scen: the destination's VM"
    writes=
    [ $scen = moderate ] && writes=writes
    assert_guest_healthy "$scen (destination)" "$DST_SOCK" $writes || true
    grep -q 'BMG status' "$CASE_DIR/dst-console.log" 2>/dev/null ||
        soft_fail "$scen: no status line from the guest on the destination's console"
    mig_quit_vm "$scen: destination" "$DST_SOCK" "$DST_PID"
    mig_check_logs
done

# ---- the destination killed during the bulk copy ----
mig_case fault
log "fault: the destination killed during the bulk copy -> the guest keeps running on the source"
MIG_DISK=1G MIG_FILL=ram-fill=64M,disk-fill=768M mig_start_source "$MODERATE"
mig_start_dest
mig_migrate_bg --with-disk --verify --max-bandwidth 50M
wait_phase "$SRC_SOCK" disk-bulk 30 || soft_fail "fault: never saw the disk-bulk phase ($LAST_PHASE)"
sleep 1
mig_kill "$DST_PID"
mig_migrate_wait 120
[ "$MIG_RC" -ne 0 ] || soft_fail "fault: migrate exited 0 with the destination killed"
assert_guest_healthy "fault (source)" "$SRC_SOCK" writes || true
mig_quit_vm "fault: source" "$SRC_SOCK" "$SRC_PID"
mig_check_logs

# ---- a guest that stops for good is not migrated ----
# It exits by itself (blkmig.run) while a slow migration runs: the migration fails (the state of
# a stopped guest is not worth moving: after a triple fault KVM has reset its vCPU), the
# destination gives up without running it, and a new migrate is refused. libvirt refuses to
# migrate a crashed or shut-off domain too.
mig_case guest-exits
log "guest-exits: the guest exits during a migration -> it fails, the destination never runs it"
mig_start_source "$MODERATE" --append blkmig.run=4
mig_start_dest
mig_migrate_bg --with-disk --max-bandwidth 4M
mig_migrate_wait 180
[ "$MIG_RC" -ne 0 ] || soft_fail "guest-exits: migrate exited 0 though the guest exited during it"
grep -q 'the guest exited (status' "$MIG_ERR" "$MIG_JSON" "$SRC_LOG" ||
    soft_fail "guest-exits: nothing says the guest exited: $(mig_tail "$MIG_ERR") $(mig_tail "$SRC_LOG")"
assert_dest_failed "guest-exits"
if out=$(timeout 30 "$BLKMIG" control "$SRC_SOCK" migrate "{\"uri\": \"$DST_URI\"}" 2>&1); then
    soft_fail "guest-exits: a migrate of the exited guest was accepted: $out"
fi
case $out in *"nothing to migrate"*) ;; *) soft_fail "guest-exits: a new migrate was refused, but not as expected: $out" ;; esac
mig_quit_vm "guest-exits: source" "$SRC_SOCK" "$SRC_PID"
mig_check_logs

# ---- a destination that cannot give the guest its CPU is refused before anything moves ----
# The source describes the guest's CPUID (what it was shown at boot); the destination sets the
# same, after checking that its KVM supports every feature in it. BLKMIG_TEST_FAULT makes the
# source claim every leaf-7 feature, which no host has: the destination must refuse at once,
# naming the leaf, and the guest keeps running on the source.
mig_case cpuid
log "cpuid: a guest shown CPU features the destination lacks -> refused at the start, the guest stays"
export BLKMIG_TEST_FAULT=src-cpuid-unsupported
mig_start_source "$MODERATE"
unset BLKMIG_TEST_FAULT
mig_start_dest
t0=$SECONDS
mig_migrate 120 --with-disk --verify
[ "$MIG_RC" -ne 0 ] || soft_fail "cpuid: migrate exited 0 to a destination that lacks the guest's CPU features"
grep -q 'CPU features this host.s KVM cannot give it (leaf 0x7\.0 EBX' "$MIG_ERR" "$MIG_JSON" "$DST_LOG" ||
    soft_fail "cpuid: no error naming leaf 7 EBX: $(mig_tail "$MIG_ERR") $(mig_tail "$DST_LOG")"
[ $((SECONDS - t0)) -lt 60 ] || soft_fail "cpuid: the refusal took $((SECONDS - t0)) s (not at the start)"
assert_dest_failed "cpuid"
assert_guest_healthy "cpuid (source)" "$SRC_SOCK" writes || true
mig_quit_vm "cpuid: source" "$SRC_SOCK" "$SRC_PID"
mig_check_logs

# ---- the migration faults, with the KVM guest ----
# migrate-faults.sh's cases (the destination killed in the bulk copy and in the dirty rounds,
# dying on COMPLETE, refusing a bad digest, hanging after COMPLETE; the source killed), each
# on a fresh pair, with MIG_GUEST=kvm: the source's guest keeps running, clean.
KVM_FAULT_CASES=${KVM_FAULT_CASES:-a b c d e f}
log "faults with the KVM guest: migrate-faults.sh cases $KVM_FAULT_CASES"
set +e
MIG_GUEST=kvm MIG_CASES="$KVM_FAULT_CASES" bash "$top_srcdir/tests/integration/migrate-faults.sh" \
    >"$TMP/faults.log" 2>&1
rc=$?
set -e
grep -E '^# migrate-faults: \(|FAIL|soft' "$TMP/faults.log" >&2 || true
[ $rc -eq 0 ] || soft_fail "migrate-faults.sh with the KVM guest: exit $rc: $(tail -n 8 "$TMP/faults.log")"

# ---- the demo with the KVM guest: the whole job, end to end ----
log "blkmig demo --kvm"
set +e
timeout 300 "$BLKMIG" demo --kvm --guest "$ELF" --ram 256M --disk-size 512M --disk-fill 64M \
    >"$TMP/demo.out" 2>&1
rc=$?
set -e
tail -n 5 "$TMP/demo.out" >&2
[ $rc -eq 0 ] && grep -q '^blkmig demo: success' "$TMP/demo.out" ||
    soft_fail "demo --kvm: exit $rc: $(tail -n 8 "$TMP/demo.out")"

log "done in $((SECONDS - t_start)) s ($MIG_MODE)"
finish_test
