#!/usr/bin/env bash
# Integration: the VM process's control socket is the job's own. Made under umask 000 it is
# 0600 all the same; another uid cannot steer the VM, even through a socket made world-writable
# (refused by its uid, logged); a second `blkmig run` or `blkmig incoming` on a path a live VM
# serves is refused with a clear message and the first VM stays managed; a stale socket (and
# lock file) left by a killed process is replaced; silent clients and unfinished lines are
# dropped after BLKMIG_CONTROL_IDLE_TIMEOUT seconds without holding up anyone else, while a
# client that has sent a command may stay silent for as long as it likes.
. "$(dirname "$0")/../lib.sh"

need_cmd timeout coreutils
need_cmd stat coreutils
[ -x "$BLKMIG" ] || skip "no blkmig binary at $BLKMIG (build it first)"
[ -x "$PY3" ] || command -v "$PY3" >/dev/null 2>&1 || skip "no python3"
SOFT_FAILS=0
IDLE_S=2

# The socket's folder must be reachable by another uid for the uid checks.
chmod 0711 "$TMP"
D=$TMP/pub
mkdir -m 0777 "$D"
chmod 0777 "$D"
SOCK=$D/vm.sock

# start_vm NAME [ENV...]: `blkmig run --synthetic` with disk $D/NAME.img on $SOCK, under umask
# 000, stderr in $TMP/NAME.log; sets VM_PID; returns once the socket is there.
start_vm() {
    local name=$1
    shift
    (
        umask 000
        exec env "$@" "$BLKMIG" run --synthetic --ram 64M --disk "vda=$D/$name.img,size=16M" \
            --workload mem=1M/s,disk=0 --control "$SOCK" --log-level info \
            </dev/null >/dev/null 2>"$TMP/$name.log"
    ) &
    VM_PID=$!
    _PIDS+=("$VM_PID")
    local deadline=$((SECONDS + 60))
    until [ -S "$SOCK" ] && disk_of_vm >/dev/null; do
        kill -0 "$VM_PID" 2>/dev/null || fail "$name: blkmig run exited: $(tail -3 "$TMP/$name.log")"
        [ $SECONDS -lt $deadline ] || fail "$name: no control socket after 60 s"
        sleep 0.1
    done
}

# disk_of_vm: the image path of the VM that answers on $SOCK (which VM it is).
disk_of_vm() {
    timeout 30 "$BLKMIG" control "$SOCK" query-status 2>>"$TMP/control.err" |
        "$PY3" -c 'import json,sys; print(json.load(sys.stdin)["return"]["disks"][0]["path"])' 2>/dev/null
}

# quit_vm NAME: quit the VM on $SOCK; it exits 0 and takes its socket and lock file along.
quit_vm() {
    timeout 30 "$BLKMIG" control "$SOCK" quit >/dev/null 2>>"$TMP/control.err" ||
        soft_fail "$1: quit failed"
    wait_pid "$VM_PID" 20 2>/dev/null
    [ "$WAIT_RC" -eq 0 ] || soft_fail "$1: blkmig run exited $WAIT_RC after quit"
    [ ! -e "$SOCK" ] || soft_fail "$1: the socket is still there after quit"
    [ ! -e "$SOCK.lock" ] || soft_fail "$1: the lock file is still there after quit"
    check_sanitizer_log "$TMP/$1.log"
}

log "a VM started under umask 000"
start_vm vm1 BLKMIG_CONTROL_IDLE_TIMEOUT=$IDLE_S
mode=$(stat -c %a "$SOCK")
[ "$mode" = 600 ] || soft_fail "the control socket's mode is $mode under umask 000, expected 600"
log "  socket mode $mode"

# ---- another uid ----
as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
if [ "$(id -u)" -ne 0 ] || ! command -v setpriv >/dev/null 2>&1; then
    log "another uid: skipped (needs root and setpriv, Debian package util-linux)"
elif ! as_nobody "$BLKMIG" control --help >/dev/null 2>&1; then
    log "another uid: skipped (uid 65534 cannot run $BLKMIG: a folder on its path is closed)"
else
    log "another uid (65534) sends quit: refused by the socket's mode"
    rc=0
    as_nobody timeout 30 "$BLKMIG" control "$SOCK" quit >"$TMP/nobody1.out" 2>"$TMP/nobody1.err" || rc=$?
    [ $rc -eq 1 ] || soft_fail "quit as uid 65534 through the 0600 socket exited $rc, expected 1: $(cat "$TMP/nobody1.out")"
    log "  exit $rc: $(head -c 200 "$TMP/nobody1.err")"
    log "the socket made world-writable (chmod 0666): the uid is refused all the same"
    chmod 0666 "$SOCK"
    rc=0
    as_nobody timeout 30 "$BLKMIG" control "$SOCK" quit >"$TMP/nobody2.out" 2>"$TMP/nobody2.err" || rc=$?
    [ $rc -eq 1 ] || soft_fail "quit as uid 65534 through a 0666 socket exited $rc, expected 1: $(cat "$TMP/nobody2.out")"
    grep -q 'refused' "$TMP/nobody2.err" || soft_fail "the refused client was not told: $(cat "$TMP/nobody2.err")"
    log "  exit $rc: $(head -c 200 "$TMP/nobody2.err")"
    grep -q 'refused a client with uid 65534' "$TMP/vm1.log" ||
        soft_fail "the VM did not log the refused uid: $(tail -3 "$TMP/vm1.log")"
    chmod 0600 "$SOCK"
    kill -0 "$VM_PID" 2>/dev/null || fail "the VM process is gone after another uid's quit"
    [ "$(disk_of_vm)" = "$D/vm1.img" ] || soft_fail "the VM no longer answers after another uid's quit"
fi

# ---- a second job on the same path ----
ino=$(stat -c %i "$SOCK")
log "a second blkmig run on the same --control path"
rc=0
timeout 60 "$BLKMIG" run --synthetic --ram 64M --disk "vda=$D/vm2.img,size=16M" --control "$SOCK" \
    </dev/null >/dev/null 2>"$TMP/second-run.err" || rc=$?
log "  exit $rc: $(head -c 300 "$TMP/second-run.err")"
[ $rc -eq 1 ] || soft_fail "a second run on a live VM's socket exited $rc, expected 1"
grep -q 'in use' "$TMP/second-run.err" || soft_fail "the second run does not say the socket is in use"
[ ! -e "$D/vm2.img" ] || soft_fail "the refused run created its disk image anyway"
log "blkmig incoming on the same --control path"
rc=0
timeout 60 "$BLKMIG" incoming --listen "127.0.0.1:$(free_port)" --disk-dir "$D" --control "$SOCK" \
    </dev/null >/dev/null 2>"$TMP/second-incoming.err" || rc=$?
log "  exit $rc: $(head -c 300 "$TMP/second-incoming.err")"
[ $rc -eq 2 ] || soft_fail "incoming on a live VM's socket exited $rc, expected 2"
grep -q 'in use' "$TMP/second-incoming.err" || soft_fail "incoming does not say the socket is in use"
log "blkmig mirror on the same --control path"
truncate -s 4M "$D/msrc.img" "$D/mdst.img"
start_server "$D/mdst.img"
rc=0
timeout 60 "$BLKMIG" mirror "$D/msrc.img" "$URI" --control "$SOCK" \
    </dev/null >/dev/null 2>"$TMP/second-mirror.err" || rc=$?
log "  exit $rc: $(head -c 300 "$TMP/second-mirror.err")"
[ $rc -ne 0 ] || soft_fail "a mirror on a live VM's socket exited 0"
grep -q 'in use: another process (pid' "$TMP/second-mirror.err" || soft_fail "the mirror does not name the process that holds the socket"
[ "$(stat -c %i "$SOCK" 2>/dev/null)" = "$ino" ] || soft_fail "the first VM's socket file was replaced"
[ "$(disk_of_vm)" = "$D/vm1.img" ] || soft_fail "the first VM no longer answers on its socket"
check_sanitizer_log "$TMP/second-run.err" "$TMP/second-incoming.err" "$TMP/second-mirror.err"

# ---- idle clients ----
log "silent clients and an unfinished line (BLKMIG_CONTROL_IDLE_TIMEOUT=$IDLE_S) beside a client that spoke"
"$PY3" - "$SOCK" "$BLKMIG" "$TMP/idle.out" <<'PY' || soft_fail "idle clients: $(tail -5 "$TMP/idle.out")"
import json, socket, subprocess, sys, time

path, blkmig, out = sys.argv[1], sys.argv[2], open(sys.argv[3], "w")
def say(*a):
    print(*a, file=out, flush=True)

def connect():
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    f = s.makefile("rb")
    greeting = json.loads(f.readline())
    assert "blkmig" in greeting, greeting
    return s, f

def query_cli():
    r = subprocess.run([blkmig, "control", path, "query-status"], capture_output=True,
                       timeout=30)
    return r.returncode == 0 and b'"return"' in r.stdout, r.stderr.decode()[:200]

ok = True
talker, tf = connect()
talker.sendall(b'{"execute":"query-status","id":1}\n')
assert json.loads(tf.readline()).get("id") == 1
# One silent client does not hold up another's query.
silent = [connect()]
good, err = query_cli()
if not good:
    say("a query with one silent client connected failed:", err)
    ok = False
# Fill every slot: 14 more silent clients, one of them with an unfinished line.
silent += [connect() for _ in range(14)]
silent[-1][0].sendall(b'{"execute": "quer')
t0 = time.monotonic()
dropped = 0
for s, f in silent:
    s.settimeout(max(0.1, 30 - (time.monotonic() - t0)))
    try:
        data = f.read()  # the idle-timeout error line, then end of file
        dropped += 1
        if b"idle timeout" not in data:
            say("a dropped client read", data[:200])
            ok = False
    except (socket.timeout, OSError) as e:
        say("a silent client was not dropped within 30 s:", e)
        ok = False
say("dropped %d of %d silent clients after %.1f s" % (dropped, len(silent), time.monotonic() - t0))
# The client that spoke was silent as long, and is still served.
talker.settimeout(30)
try:
    talker.sendall(b'{"execute":"query-status","id":2}\n')
    line = tf.readline()
    while line and b'"event"' in line:
        line = tf.readline()
    if json.loads(line).get("id") != 2:
        say("the client that spoke got", line[:200])
        ok = False
except (OSError, ValueError) as e:
    say("the client that spoke was dropped:", e)
    ok = False
good, err = query_cli()
if not good:
    say("a query after the silent clients were dropped failed:", err)
    ok = False
sys.exit(0 if ok else 1)
PY
log "  $(grep -m1 dropped "$TMP/idle.out" || true)"
grep -q 'dropped a client that sent no command' "$TMP/vm1.log" ||
    soft_fail "the VM did not log a dropped silent client"
grep -q 'dropped a client that left a line unfinished' "$TMP/vm1.log" ||
    soft_fail "the VM did not log the dropped unfinished line"
quit_vm vm1

# ---- stale socket and lock file ----
log "a stale socket and lock file at the path (nothing listens): replaced"
"$PY3" -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.close()' "$SOCK"
: >"$SOCK.lock"
[ -S "$SOCK" ] || fail "could not make a stale socket"
start_vm vm3
[ "$(disk_of_vm)" = "$D/vm3.img" ] || soft_fail "the VM on a stale socket's path does not answer"
log "the same after SIGKILL (the killed VM's socket and lock file stay behind)"
kill -KILL "$VM_PID"
wait_pid "$VM_PID" 10 2>/dev/null
[ -S "$SOCK" ] || soft_fail "a killed VM's socket is gone (nothing stale to test)"
start_vm vm4
[ "$(disk_of_vm)" = "$D/vm4.img" ] || soft_fail "the VM on a killed VM's path does not answer"
mode=$(stat -c %a "$SOCK")
[ "$mode" = 600 ] || soft_fail "the replacing socket's mode is $mode, expected 600"
quit_vm vm4

log "a path that is not a socket: refused, left alone"
echo keep >"$SOCK"
rc=0
timeout 60 "$BLKMIG" run --synthetic --ram 64M --control "$SOCK" </dev/null >/dev/null \
    2>"$TMP/notsock.err" || rc=$?
[ $rc -eq 1 ] || soft_fail "run on a regular file's path exited $rc, expected 1"
grep -q 'not a socket' "$TMP/notsock.err" || soft_fail "run on a regular file: $(cat "$TMP/notsock.err")"
[ "$(cat "$SOCK")" = keep ] || soft_fail "the regular file at the path was changed"
[ ! -e "$SOCK.lock" ] || soft_fail "the refused run left its lock file behind"

[ ! -s "$TMP/control.err" ] || check_sanitizer_log "$TMP/control.err"
finish_test
