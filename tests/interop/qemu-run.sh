#!/usr/bin/env bash
# qemu-run.sh: `blkmig run --qemu` and `--qemu-attach` against a real QEMU (no guest OS: the
# machine sits in its firmware). Launch: query over the control socket (kind, disks, running),
# stop and cont seen by QEMU itself and QEMU's events passed on, QMP facts the disk side relies
# on (a bitmap on a generated node name and its NBD export, throttling by the device path
# query-block gives), quit ends QEMU; QEMU ending by itself (quit on its own monitor, SIGKILL)
# ends blkmig with its status. Attach: a hand-started QEMU with a raw disk and a qcow2 one over
# a backing file, a second attach turned away, quit leaving QEMU running and answering on the
# same socket, an attached QEMU killed. A QEMU that ignores quit and SIGTERM is killed after
# the bounds. The C API through tests/interop/qemu-vm-probe. Bad input: not QEMU, nothing
# listening, network drives, a missing binary, a QEMU that fails at start, a run directory
# whose socket is in use.
. "$(dirname "$0")/../lib.sh"

need_cmd qemu-system-x86_64 qemu-system-x86
need_cmd qemu-img qemu-utils

MACHINE=(-machine q35,accel=tcg -nodefaults -display none -no-user-config -m 64)

# qmp SOCKET COMMAND [ARGS-JSON]: one QMP command on QEMU's own socket; prints the reply line.
qmp() {
    "$PY3" - "$@" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
f = s.makefile("rw")
f.readline()
def cmd(name, args=None):
    m = {"execute": name}
    if args:
        m["arguments"] = args
    f.write(json.dumps(m) + "\n")
    f.flush()
    while True:
        o = json.loads(f.readline())
        if "event" not in o:
            return o
cmd("qmp_capabilities")
print(json.dumps(cmd(sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else None)))
PY
}

# jget JSON EXPR: a Python expression over the parsed JSON `j`.
jget() {
    "$PY3" -c 'import json, sys; j = json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$1" "$2"
}

ctl() { "$BLKMIG" control "$TMP/ctl.sock" "$@"; }

wait_ctl() {
    local deadline=$((SECONDS + 30))
    until [ -S "$TMP/ctl.sock" ] && ctl query-status >/dev/null 2>&1; do
        kill -0 "$1" 2>/dev/null || fail "blkmig run exited early: $(cat "$TMP/run.err")"
        [ $SECONDS -lt $deadline ] || fail "the control socket never answered"
        sleep 0.1
    done
}

alive() { kill -0 "$1" 2>/dev/null; }

# qemu_events: the names of the QEMU events blkmig passed on in $TMP/run.json, in order.
qemu_events() {
    "$PY3" -c 'import json, sys
print(" ".join(o["data"]["event"] for o in map(json.loads, open(sys.argv[1]))
               if o["event"] == "qemu-event"))' "$TMP/run.json"
}

qemu-img create -q -f qcow2 "$TMP/a.qcow2" 16M
qemu-img create -q -f raw "$TMP/b.raw" 4M

# ---- launch ----
log "launch"
start_bg "$BLKMIG" run --qemu --control "$TMP/ctl.sock" --run-dir "$TMP/run" --json -- \
    qemu-system-x86_64 "${MACHINE[@]}" \
    -drive "if=none,id=d0,file=$TMP/a.qcow2,format=qcow2,node-name=n0" \
    -device virtio-blk-pci,drive=d0,id=vd0 \
    -drive "if=none,id=d1,file=$TMP/b.raw,format=raw" -device virtio-blk-pci,drive=d1 \
    -qmp "unix:$TMP/user.sock,server=on,wait=off" >"$TMP/run.json" 2>"$TMP/run.err"
RUN=$BG_PID
wait_ctl $RUN
[ -S "$TMP/run/qmp.sock" ] || fail "no QMP socket of blkmig's in the run directory"
# A second QEMU in the same run directory must not take the first one's socket.
rc=0
"$BLKMIG" run --qemu --control "$TMP/ctl2.sock" --run-dir "$TMP/run" -- \
    qemu-system-x86_64 "${MACHINE[@]}" 2>"$TMP/err2" || rc=$?
[ $rc -eq 1 ] && grep -q 'a running process listens there' "$TMP/err2" ||
    fail "a second launch in the same run directory: exit $rc: $(cat "$TMP/err2")"
q=$(ctl query-status)
[ "$(jget "$q" 'j["return"]["kind"]')" = qemu ] || fail "kind is not qemu: $q"
[ "$(jget "$q" 'j["return"]["guest"]["status"]')" = running ] || fail "not running: $q"
[ "$(jget "$q" 'j["return"]["guest"]["mode"]')" = launch ] || fail "not launch: $q"
QPID=$(jget "$q" 'j["return"]["guest"]["pid"]')
alive "$QPID" || fail "QEMU's pid $QPID is not alive"
d0=$(jget "$q" '[d for d in j["return"]["guest"]["disks"] if d["drive"] == "d0"][0]')
[ "$(jget "$q" 'len(j["return"]["guest"]["disks"])')" = 2 ] || fail "not two disks: $q"
[ "$d0" = "{'device': '/machine/peripheral/vd0/virtio-backend', 'drive': 'd0', 'node': 'n0', \
'format': 'qcow2', 'file': '$TMP/a.qcow2', 'size': 16777216, 'backing': False, \
'readonly': False}" ] || fail "disk d0: $d0"
n1=$(jget "$q" '[d["node"] for d in j["return"]["guest"]["disks"] if d["drive"] == "d1"][0]')
dev1=$(jget "$q" '[d["device"] for d in j["return"]["guest"]["disks"] if d["drive"] == "d1"][0]')
[[ $n1 == "#block"* ]] || fail "d1 without node-name= should have a generated node name: $n1"
[[ $dev1 == /machine/peripheral-anon/* ]] || fail "d1's device should be a QOM path: $dev1"

# The facts the disk side relies on: a bitmap on a generated node name, throttling by the
# device path query-block gives (the device's own path, without /virtio-backend, is refused).
r=$(qmp "$TMP/user.sock" block-dirty-bitmap-add "{\"node\": \"$n1\", \"name\": \"t\"}")
[ "$r" = '{"return": {}}' ] || fail "bitmap on $n1: $r"
# An NBD export of that node with the bitmap: refused while the bitmap records (QEMU 7.2), taken
# once it is disabled, as a rotation leaves it.
r=$(qmp "$TMP/user.sock" nbd-server-start \
    "{\"addr\": {\"type\": \"unix\", \"data\": {\"path\": \"$TMP/exp.sock\"}}}")
[ "$r" = '{"return": {}}' ] || fail "nbd-server-start: $r"
exp="{\"type\": \"nbd\", \"id\": \"e\", \"node-name\": \"$n1\", \"name\": \"x\", \"bitmaps\": [\"t\"]}"
r=$(qmp "$TMP/user.sock" block-export-add "$exp")
[[ $r == *'incompatible with readonly export'* ]] || fail "export of an enabled bitmap: $r"
qmp "$TMP/user.sock" block-dirty-bitmap-disable "{\"node\": \"$n1\", \"name\": \"t\"}" >/dev/null
r=$(qmp "$TMP/user.sock" block-export-add "$exp")
[ "$r" = '{"return": {}}' ] || fail "export of $n1 with its disabled bitmap: $r"
if command -v nbdinfo >/dev/null; then
    nbdinfo --map=qemu:dirty-bitmap:t "nbd+unix:///x?socket=$TMP/exp.sock" >"$TMP/map" ||
        fail "nbdinfo cannot read the bitmap of the export"
    grep -q clean "$TMP/map" || fail "the bitmap's map: $(cat "$TMP/map")"
fi
qmp "$TMP/user.sock" block-export-del '{"id": "e"}' >/dev/null
qmp "$TMP/user.sock" nbd-server-stop >/dev/null
thr='"bps": 1048576, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0'
r=$(qmp "$TMP/user.sock" block_set_io_throttle "{\"id\": \"$dev1\", $thr}")
[ "$r" = '{"return": {}}' ] || fail "throttle by $dev1: $r"
r=$(qmp "$TMP/user.sock" block_set_io_throttle "{\"id\": \"vd0\", $thr}")
[[ $r == *'"error"'* ]] || fail "throttle by the bare id vd0 was expected to fail: $r"

ctl stop >/dev/null || fail "stop failed"
r=$(qmp "$TMP/user.sock" query-status)
[ "$(jget "$r" 'j["return"]["status"]')" = paused ] || fail "QEMU not paused after stop: $r"
[ "$(jget "$(ctl query-status)" 'j["return"]["running"]')" = False ] || fail "query: running"
ctl cont >/dev/null || fail "cont failed"
# QEMU's own events reach --json (the watcher takes them every 100 ms).
deadline=$((SECONDS + 5))
until [[ $(qemu_events) == *"STOP RESUME"* ]]; do
    [ $SECONDS -lt $deadline ] || fail "QEMU's STOP and RESUME not passed on: $(qemu_events)"
    sleep 0.1
done
r=$(qmp "$TMP/user.sock" query-status)
[ "$(jget "$r" 'j["return"]["status"]')" = running ] || fail "QEMU not running after cont: $r"
# Paused behind blkmig's back (on QEMU's own monitor): query says so, and blkmig's cont works.
qmp "$TMP/user.sock" stop >/dev/null
[ "$(jget "$(ctl query-status)" 'j["return"]["running"]')" = False ] ||
    fail "query: running after a stop on QEMU's own monitor"
ctl cont >/dev/null || fail "cont after a stop on QEMU's own monitor"
r=$(qmp "$TMP/user.sock" query-status)
[ "$(jget "$r" 'j["return"]["status"]')" = running ] || fail "blkmig's cont did not resume: $r"
r=$(ctl migrate '{"uri": "tcp:127.0.0.1:1"}' || true)
[[ $r == *'a QEMU VM migrates --with-disk'* ]] || fail "migrate of a qemu VM without its disks: $r"
r=$(ctl guest-check || true)
[[ $r == *'guest-check is not available'* ]] || fail "guest-check of a qemu VM: $r"
r=$(ctl x-state-roundtrip || true)
[[ $r == *'x-state-roundtrip is not available'* ]] || fail "x-state-roundtrip: $r"
r=$(ctl x-query-vcpus || true)
[[ $r == *'"error"'* ]] || fail "x-query-vcpus of a qemu VM: $r"

ctl quit >/dev/null
wait_pid $RUN 20
[ "$WAIT_RC" -eq 0 ] || fail "blkmig run exited $WAIT_RC after quit: $(cat "$TMP/run.err")"
alive "$QPID" && fail "QEMU ($QPID) still runs after quit"
[ ! -e "$TMP/run/qmp.sock" ] || fail "the QMP socket is left behind"
check_sanitizer_log "$TMP/run.err"

# ---- QEMU ends by itself ----
launch_plain() {
    rm -f "$TMP/ctl.sock"
    start_bg "$BLKMIG" run --qemu --control "$TMP/ctl.sock" --json -- \
        qemu-system-x86_64 "${MACHINE[@]}" -qmp "unix:$TMP/user.sock,server=on,wait=off" \
        "$@" >"$TMP/run.json" 2>"$TMP/run.err"
    RUN=$BG_PID
    wait_ctl $RUN
    QPID=$(jget "$(ctl query-status)" 'j["return"]["guest"]["pid"]')
}

log "QEMU quits on its own monitor"
launch_plain -drive "if=none,id=d0,file=$TMP/a.qcow2,format=qcow2"
qmp "$TMP/user.sock" quit >/dev/null
wait_pid $RUN 20
[ "$WAIT_RC" -eq 0 ] || fail "blkmig run exited $WAIT_RC when QEMU quit: $(cat "$TMP/run.err")"
grep -q 'exited with status 0' "$TMP/run.err" || fail "no word of QEMU's exit: $(cat "$TMP/run.err")"
[ "$(json_events "$TMP/run.json" | tail -1)" = vm-exited ] || fail "no vm-exited event"
grep -q '"event":"qemu-event","data":{.*"event":"SHUTDOWN"' "$TMP/run.json" ||
    fail "QEMU's SHUTDOWN was not passed on: $(cat "$TMP/run.json")"
check_sanitizer_log "$TMP/run.err"

log "QEMU started frozen (-S), then killed"
launch_plain -S
q=$(ctl query-status)
[ "$(jget "$q" 'j["return"]["running"]')" = False ] || fail "-S: not paused: $q"
[ "$(jget "$q" 'j["return"]["guest"]["status"]')" = prelaunch ] || fail "-S: not prelaunch: $q"
ctl cont >/dev/null || fail "cont of a frozen QEMU failed"
r=$(qmp "$TMP/user.sock" query-status)
[ "$(jget "$r" 'j["return"]["status"]')" = running ] || fail "-S, cont: not running: $r"
kill -KILL "$QPID"
wait_pid $RUN 20
[ "$WAIT_RC" -eq 137 ] || fail "blkmig run exited $WAIT_RC when QEMU was killed (want 137)"
grep -q 'killed by signal 9' "$TMP/run.err" || fail "no word of the kill: $(cat "$TMP/run.err")"
check_sanitizer_log "$TMP/run.err"

# ---- attach ----
log "attach"
qemu-img create -q -f raw "$TMP/base.raw" 8M
qemu-img create -q -f qcow2 -b "$TMP/base.raw" -F raw "$TMP/top.qcow2" 16M
start_bg qemu-system-x86_64 "${MACHINE[@]}" \
    -drive "if=none,id=r0,file=$TMP/b.raw,format=raw" -device virtio-blk-pci,drive=r0,id=vr0 \
    -drive "if=none,id=q0,file=$TMP/top.qcow2,format=qcow2" \
    -device virtio-blk-pci,drive=q0,id=vq0 \
    -qmp "unix:$TMP/hand.sock,server=on,wait=off" 2>"$TMP/hand.err"
HAND=$BG_PID
wait_unix "$TMP/hand.sock"
rm -f "$TMP/ctl.sock"
start_bg "$BLKMIG" run --qemu-attach "$TMP/hand.sock" --control "$TMP/ctl.sock" \
    >"$TMP/run.json" 2>"$TMP/run.err"
RUN=$BG_PID
wait_ctl $RUN
q=$(ctl query-status)
[ "$(jget "$q" 'j["return"]["guest"]["mode"]')" = attach ] || fail "not attach: $q"
[ "$(jget "$q" 'j["return"]["guest"]["pid"]')" = "$HAND" ] || fail "pid is not $HAND: $q"
[ "$(jget "$q" '[(d["drive"], d["format"], d["size"], d["backing"]) for d in
    j["return"]["guest"]["disks"]]')" = "[('r0', 'raw', 4194304, False), \
('q0', 'qcow2', 16777216, True)]" ] || fail "attached disks: $q"

# QEMU serves one client per QMP socket: a second attach is turned away.
rc=0
"$BLKMIG" run --qemu-attach "$TMP/hand.sock" --control "$TMP/ctl2.sock" 2>"$TMP/err2" || rc=$?
[ $rc -eq 1 ] || fail "a second attach exited $rc: $(cat "$TMP/err2")"
grep -qi 'greeting\|another client' "$TMP/err2" || fail "second attach: $(cat "$TMP/err2")"

ctl stop >/dev/null
ctl quit >/dev/null
wait_pid $RUN 20
[ "$WAIT_RC" -eq 0 ] || fail "blkmig run (attach) exited $WAIT_RC: $(cat "$TMP/run.err")"
alive "$HAND" || fail "the attached QEMU did not survive blkmig's quit"
r=$(qmp "$TMP/hand.sock" query-status)
[ "$(jget "$r" 'j["return"]["status"]')" = paused ] ||
    fail "QEMU should answer on its socket, paused as blkmig left it: $r"
qmp "$TMP/hand.sock" quit >/dev/null
wait_pid "$HAND" 10
check_sanitizer_log "$TMP/run.err"

log "an attached QEMU killed"
start_bg qemu-system-x86_64 "${MACHINE[@]}" -qmp "unix:$TMP/hand3.sock,server=on,wait=off"
HAND3=$BG_PID
wait_unix "$TMP/hand3.sock"
rm -f "$TMP/ctl.sock"
start_bg "$BLKMIG" run --qemu-attach "$TMP/hand3.sock" --control "$TMP/ctl.sock" --json \
    >"$TMP/run.json" 2>"$TMP/run.err"
RUN=$BG_PID
wait_ctl $RUN
kill -KILL "$HAND3"
wait "$HAND3" 2>/dev/null || true
wait_pid $RUN 20
[ "$WAIT_RC" -eq 1 ] || fail "attach: blkmig run exited $WAIT_RC when QEMU was killed (want 1)"
grep -q 'connection ended without a shutdown' "$TMP/run.err" ||
    fail "attach: no word of QEMU's end: $(cat "$TMP/run.err")"
check_sanitizer_log "$TMP/run.err"

# ---- a QEMU that ignores quit and SIGTERM: SIGKILL after the bounds (5 s, then 3 s) ----
log "a QEMU that will not quit"
cat >"$TMP/stubborn-qemu" <<PY
#!$PY3
import json, signal, socket, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
path = sys.argv[sys.argv.index("-qmp") + 1][len("unix:"):].split(",")[0]
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(1)
c, _ = s.accept()
f = c.makefile("rw")
f.write('{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""}, '
        '"capabilities": []}}\r\n')
f.flush()
rets = {"query-status": {"status": "running", "running": True}}
for line in f:
    m = json.loads(line)
    r = rets.get(m["execute"], [] if m["execute"].startswith("query-") else {})
    f.write(json.dumps({"return": r, "id": m["id"]}) + "\r\n")
    f.flush()
signal.pause()
PY
chmod +x "$TMP/stubborn-qemu"
rm -f "$TMP/ctl.sock"
start_bg "$BLKMIG" run --qemu --control "$TMP/ctl.sock" -- "$TMP/stubborn-qemu" -nodefaults \
    >"$TMP/run.json" 2>"$TMP/run.err"
RUN=$BG_PID
wait_ctl $RUN
QPID=$(jget "$(ctl query-status)" 'j["return"]["guest"]["pid"]')
t0=$SECONDS
ctl quit >/dev/null
wait_pid $RUN 30
[ "$WAIT_RC" -eq 0 ] || fail "stubborn: blkmig run exited $WAIT_RC: $(cat "$TMP/run.err")"
[ $((SECONDS - t0)) -ge 7 ] || fail "stubborn: ended after $((SECONDS - t0)) s, before the bounds"
alive "$QPID" && fail "stubborn: the fake QEMU ($QPID) survived"
grep -q 'SIGTERM' "$TMP/run.err" && grep -q 'SIGKILL' "$TMP/run.err" ||
    fail "stubborn: no word of SIGTERM and SIGKILL: $(cat "$TMP/run.err")"
check_sanitizer_log "$TMP/run.err"

# ---- the C API the migration will use (tests/interop/qemu-vm-probe.c) ----
PROBE=${QEMU_VM_PROBE:-$top_builddir/tests/interop/qemu-vm-probe}
[ -x "$PROBE" ] || fail "$PROBE is not built (make check builds it, or set QEMU_VM_PROBE)"
log "the C API"
mkdir -p "$TMP/probe"
rc=0
"$PROBE" "$TMP/probe" qemu-system-x86_64 "${MACHINE[@]}" \
    -drive "if=none,id=d0,file=$TMP/a.qcow2,format=qcow2" -device virtio-blk-pci,drive=d0 \
    >"$TMP/probe.out" 2>"$TMP/probe.err" || rc=$?
check_sanitizer_log "$TMP/probe.err"
[ $rc -eq 0 ] && grep -qx 'ok all' "$TMP/probe.out" ||
    fail "qemu-vm-probe exited $rc: $(cat "$TMP/probe.err")"

# ---- bad input ----
# expect_fail RC PATTERN ARGS...: blkmig run ARGS exits RC with PATTERN in its stderr, and
# leaves no QEMU behind (none ran: each case fails before one would, or reaps it).
expect_fail() {
    local want=$1 pat=$2 rc=0
    shift 2
    rm -f "$TMP/ctl.sock"
    timeout 60 "$BLKMIG" run --control "$TMP/ctl.sock" "$@" >/dev/null 2>"$TMP/bad.err" || rc=$?
    [ $rc -eq "$want" ] || fail "run $* exited $rc, want $want: $(cat "$TMP/bad.err")"
    grep -q -- "$pat" "$TMP/bad.err" || fail "run $*: no '$pat' in: $(cat "$TMP/bad.err")"
    check_sanitizer_log "$TMP/bad.err"
    log "refused as expected: $(head -1 "$TMP/bad.err")"
}

# A listener that is not QEMU: it sends a line that is no QMP greeting.
"$PY3" - "$TMP/fake.sock" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(1)
c, _ = s.accept()
c.sendall(b"SSH-2.0-not-qemu\r\n")
c.recv(100)
PY
track_pid $!
wait_unix "$TMP/fake.sock"
expect_fail 1 'not a QMP server' --qemu-attach "$TMP/fake.sock"
expect_fail 1 'No such file\|nothing listening' --qemu-attach "$TMP/none.sock"
expect_fail 1 'nbd' --qemu -- qemu-system-x86_64 "${MACHINE[@]}" \
    -drive if=none,id=n,file=nbd://127.0.0.1:10809/x,format=raw
expect_fail 1 'nbd' --qemu -- qemu-system-x86_64 "${MACHINE[@]}" \
    -drive if=none,id=n,file.driver=nbd,file.host=127.0.0.1,file.export=x,format=raw
expect_fail 1 'cannot run /nonexistent/qemu-system-x86_64' --qemu -- \
    /nonexistent/qemu-system-x86_64 "${MACHINE[@]}"
expect_fail 1 'exited with status 1 at start.*missing.qcow2' --qemu -- \
    qemu-system-x86_64 "${MACHINE[@]}" -drive "if=none,id=m,file=$TMP/missing.qcow2,format=qcow2"
expect_fail 2 'needs QEMU' --qemu
expect_fail 2 'not for a QEMU VM' --qemu --ram 1G -- qemu-system-x86_64 "${MACHINE[@]}"
expect_fail 2 'exclude each other' --qemu --qemu-attach "$TMP/x" -- qemu-system-x86_64

# A hand-started QEMU whose disk is on NBD is refused, and left alone.
if command -v qemu-nbd >/dev/null; then
    start_bg qemu-nbd --persistent -f raw -k "$TMP/nbd.sock" "$TMP/b.raw"
    wait_unix "$TMP/nbd.sock"
    start_bg qemu-system-x86_64 "${MACHINE[@]}" \
        -drive "if=none,id=n0,file=nbd+unix:///?socket=$TMP/nbd.sock,format=raw" \
        -qmp "unix:$TMP/hand2.sock,server=on,wait=off" 2>"$TMP/hand2.err"
    HAND2=$BG_PID
    wait_unix "$TMP/hand2.sock"
    expect_fail 1 'nbd' --qemu-attach "$TMP/hand2.sock"
    alive "$HAND2" || fail "a refused attach ended the QEMU"
fi
log "ok"
