#!/usr/bin/env bash
# Integration: the blkmig / `blkmig nbd-serve` command line: help, bad input, unix socket, daemon mode, --readonly, --shared, SIGTERM, --export.
. "$(dirname "$0")/../lib.sh"

need_cmd nbdinfo libnbd-bin
need_cmd qemu-io qemu-utils
need_cmd timeout coreutils
need_python_nbd

SAN_RE='ERROR: (Address|Leak|Thread)Sanitizer|runtime error:|SUMMARY: .*Sanitizer'
BLKMIG_ABS=$(cd "$(dirname "$BLKMIG")" && pwd)/$(basename "$BLKMIG")
MiB=1048576
IMG=$TMP/disk.img
make_sparse_image "$IMG" 8

# Independent checks record failures with `bad` and carry on; the test fails at the end.
FAILS=0
bad() {
    echo "FAIL: $TEST_NAME: $*" >&2
    FAILS=$((FAILS + 1))
}

# gone PID SECONDS: wait until PID (not necessarily our child) has exited; false on timeout.
gone() {
    local i
    for ((i = 0; i < $2 * 20; i++)); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.05
    done
    return 1
}

# ---- help and version ----
log "blkmig --help / --version / nbd-serve --help exit 0 and describe the options"
out=$("$BLKMIG" --help) || bad "blkmig --help exited $?"
grep -q "nbd-serve" <<<"$out" || bad "blkmig --help does not list nbd-serve"
out=$("$BLKMIG" --version) || bad "blkmig --version exited $?"
[[ $out =~ ^blkmig\ [0-9]+\.[0-9]+ ]] || bad "blkmig --version printed '$out'"
out=$("$BLKMIG" nbd-serve --help) || bad "blkmig nbd-serve --help exited $?"
for opt in --port --bind --unix --export --readonly --shared --threads --foreground \
    --pid-file --log-level --inject --seed; do
    grep -q -- "$opt" <<<"$out" || bad "nbd-serve --help does not mention $opt"
done

# ---- bad input ----
# bad_args WANT_RC MSG_RE ARGS...: `blkmig nbd-serve --foreground ARGS` exits WANT_RC ("nonzero":
# any plain failure), says something matching MSG_RE on stderr, and has no sanitizer report.
bad_args() {
    local want=$1 re=$2 rc=0
    shift 2
    local what="nbd-serve $*"
    timeout 10 "$BLKMIG" nbd-serve --foreground "$@" </dev/null >"$TMP/bad.out" 2>"$TMP/bad.err" ||
        rc=$?
    if [ $rc -eq 124 ]; then
        bad "$what: still running after 10 s (bad input accepted)"
        return
    fi
    [ $rc -lt 128 ] || bad "$what: killed by signal $((rc - 128))"
    if grep -qE "$SAN_RE" "$TMP/bad.err"; then
        bad "$what: sanitizer report: $(grep -m2 -E 'Sanitizer|runtime error|#1 ' "$TMP/bad.err" | tr '\n' ' ')"
    fi
    if [ "$want" = nonzero ]; then
        [ $rc -ne 0 ] || bad "$what: exited 0"
    else
        [ $rc -eq "$want" ] || bad "$what: exited $rc, expected $want"
    fi
    grep -qiE -- "$re" "$TMP/bad.err" ||
        bad "$what: stderr lacks /$re/: $(head -c 300 "$TMP/bad.err")"
}

log "bad input: exit 2 (usage) or non-zero, a clear message, no crash or sanitizer report"
P=$(free_port)
L=(--bind 127.0.0.1 --port "$P")
bad_args 2 'nothing to export|PATH' "${L[@]}"
bad_args nonzero 'missing\.img.*(No such file|not found)' "${L[@]}" "$TMP/missing.img"
bad_args 2 '--port' --port 0 "$IMG"
bad_args 2 '--port' --port abc "$IMG"
bad_args 2 '--port' --port 65536 "$IMG"
bad_args 2 '--shared' "${L[@]}" --shared 0 "$IMG"
bad_args 2 '--shared' "${L[@]}" --shared many "$IMG"
bad_args 2 'noequals.*NAME=PATH|NAME=PATH.*noequals' "${L[@]}" --export noequals
bad_args nonzero "'a'.*(twice|duplicate)|(twice|duplicate).*'a'" "${L[@]}" \
    --export a="$IMG" --export a="$IMG"
bad_args nonzero 'twice|duplicate' "${L[@]}" "$IMG" "$IMG"
bad_args 2 'log-level.*bogus|bogus.*log-level' "${L[@]}" --log-level bogus "$IMG"
bad_args 2 'inject.*(operation|frobnicate)' "${L[@]}" --inject 'frobnicate:error=EIO' "$IMG"
bad_args 2 'inject.*(key|bogus)' "${L[@]}" --inject 'write:bogus=1' "$IMG"
bad_args 2 'inject.*EWHAT' "${L[@]}" --inject 'write:error=EWHAT' "$IMG"
bad_args 2 'inject.*rate' "${L[@]}" --inject 'write:error=EIO:rate=2' "$IMG"
bad_args 2 'inject' "${L[@]}" --inject 'write' "$IMG"
bad_args 2 'inject.*(error=|delay=)' "${L[@]}" --inject 'write:rate=0.5' "$IMG"
bad_args 2 '--seed' "${L[@]}" --seed -1 "$IMG"
bad_args 2 '--unix.*--port|--port.*--unix' --unix "$TMP/never.sock" --port "$P" "$IMG"
bad_args 2 'unrecognized|unknown|invalid' "${L[@]}" --no-such-option "$IMG"
# A usage error after an export was parsed must not leak it (LeakSanitizer makes the exit 1).
bad_args 2 '--port' --export a="$IMG" --port 0
bad_args 2 'noequals' "${L[@]}" --export a="$IMG" --export noequals
[ ! -e "$TMP/never.sock" ] || bad "a refused --unix ... --port run left $TMP/never.sock"
rc=0
"$BLKMIG" nosuchcommand >/dev/null 2>"$TMP/bad.err" || rc=$?
[ $rc -eq 2 ] || bad "blkmig nosuchcommand exited $rc, expected 2"
grep -q nosuchcommand "$TMP/bad.err" || bad "blkmig nosuchcommand: no message naming it"

# ---- unix socket ----
log "--unix: nbdinfo over the socket; the socket is removed after SIGTERM"
SOCK=$TMP/nbd.sock
start_bg "$BLKMIG" nbd-serve --foreground --unix "$SOCK" "$IMG" >>"$TMP/server.log" 2>&1
UPID=$BG_PID
wait_unix "$SOCK"
size=$(nbdinfo --size "nbd+unix:///?socket=$SOCK") || bad "nbdinfo over $SOCK failed"
[ "${size:-}" = $((8 * MiB)) ] || bad "size over the unix socket: '${size:-}'"
log "--unix: a second server on a socket that answers is refused; the first still serves"
truncate -s 1M "$TMP/other.img"
rc=0
timeout 20 "$BLKMIG" nbd-serve --foreground --unix "$SOCK" "$TMP/other.img" >"$TMP/second.out" 2>&1 || rc=$?
[ $rc -ne 0 ] || bad "a second nbd-serve on the live socket $SOCK exited 0"
grep -q 'in use' "$TMP/second.out" || bad "the second server did not say the socket is in use: $(head -c 300 "$TMP/second.out")"
size=$(nbdinfo --size "nbd+unix:///?socket=$SOCK") || bad "nbdinfo over $SOCK failed after a second server tried it"
[ "${size:-}" = $((8 * MiB)) ] || bad "size over the unix socket after a second server: '${size:-}'"
kill -TERM "$UPID"
rc=0
wait "$UPID" || rc=$?
[ $rc -eq 0 ] || bad "unix-socket server exited $rc after SIGTERM"
[ ! -e "$SOCK" ] || bad "unix socket $SOCK still there after exit"
log "--unix: a stale socket (nobody listens) is replaced"
python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])' "$SOCK"
[ -S "$SOCK" ] || fail "could not make a stale socket at $SOCK"
start_bg "$BLKMIG" nbd-serve --foreground --unix "$SOCK" "$IMG" >>"$TMP/server.log" 2>&1
UPID=$BG_PID
deadline=$((SECONDS + 20))
until size=$(nbdinfo --size "nbd+unix:///?socket=$SOCK" 2>/dev/null); do
    [ $SECONDS -lt $deadline ] || fail "nbd-serve did not take over the stale socket $SOCK"
    sleep 0.1
done
[ "$size" = $((8 * MiB)) ] || bad "size over the replaced socket: '$size'"
kill -TERM "$UPID"
wait "$UPID" || true

# ---- daemon mode ----
log "daemon mode: returns promptly, --pid-file names the serving process, SIGTERM ends it"
P=$(free_port)
PIDF=$TMP/daemon.pid
start=$SECONDS
rc=0
timeout 20 "$BLKMIG" nbd-serve --bind 127.0.0.1 --port "$P" --pid-file "$PIDF" "$IMG" \
    </dev/null >/dev/null 2>>"$TMP/server.log" || rc=$?
[ $rc -eq 0 ] || fail "daemon start exited $rc"
[ $((SECONDS - start)) -le 5 ] || bad "daemon start took $((SECONDS - start)) s"
[ -s "$PIDF" ] || fail "no pid file $PIDF after the daemon started"
dpid=$(cat "$PIDF")
[[ $dpid =~ ^[0-9]+$ ]] || fail "pid file holds '$dpid'"
track_pid "$dpid"
kill -0 "$dpid" 2>/dev/null || fail "pid $dpid from the pid file is not running"
grep -q blkmig "/proc/$dpid/cmdline" 2>/dev/null || bad "pid $dpid is not blkmig"
wait_port "$P"
size=$(nbdinfo --size "nbd://127.0.0.1:$P") || bad "nbdinfo against the daemon failed"
[ "${size:-}" = $((8 * MiB)) ] || bad "daemon: size '${size:-}'"
kill -TERM "$dpid"
gone "$dpid" 10 || fail "daemon $dpid still running 10 s after SIGTERM"
[ ! -e "$PIDF" ] || bad "pid file $PIDF not removed at exit"
(exec 3<>"/dev/tcp/127.0.0.1/$P") 2>/dev/null && bad "port $P still served after the daemon exited"

log "daemon mode with relative --pid-file and --unix paths: both removed at exit"
(cd "$TMP" && "$BLKMIG_ABS" nbd-serve --unix rel.sock --pid-file rel.pid disk.img \
    </dev/null >/dev/null 2>>"$TMP/server.log") || bad "daemon (relative paths) failed to start"
if [ -s "$TMP/rel.pid" ]; then
    dpid=$(cat "$TMP/rel.pid")
    track_pid "$dpid"
    wait_unix "$TMP/rel.sock"
    size=$(nbdinfo --size "nbd+unix:///?socket=$TMP/rel.sock") || bad "nbdinfo on rel.sock failed"
    kill -TERM "$dpid"
    gone "$dpid" 10 || fail "daemon $dpid still running 10 s after SIGTERM"
    [ ! -e "$TMP/rel.pid" ] || bad "relative --pid-file rel.pid not removed at exit (daemon chdir'd?)"
    [ ! -e "$TMP/rel.sock" ] || bad "relative --unix rel.sock not removed at exit (daemon chdir'd?)"
else
    bad "no pid file $TMP/rel.pid"
fi

# ---- --readonly ----
log "--readonly: nbdinfo says read-only, a qemu-io write fails, reads work, file unchanged"
before=$(sum "$IMG")
start_server --readonly "$IMG"
nbdinfo --json "$URI" >"$TMP/ro.json" || bad "nbdinfo --json on the read-only export failed"
grep -qE '"is_read_only": *true' "$TMP/ro.json" || bad "nbdinfo: is_read_only is not true"
if qemu-io -f raw "$URI" -c 'write -P 0x55 0 64k' >"$TMP/qemu-io.out" 2>&1; then
    bad "qemu-io write to the read-only export succeeded: $(cat "$TMP/qemu-io.out")"
fi
qemu-io -r -f raw "$URI" -c "read -P 0 0 64k" -c "read -P 0 $((2 * 65536)) 64k" \
    >"$TMP/qemu-io.out" 2>&1 || bad "qemu-io read of the read-only export: $(cat "$TMP/qemu-io.out")"
stop_server
[ "$(sum "$IMG")" = "$before" ] || bad "the --readonly image changed"

# A small libnbd client for --shared 1: the first client works, a second concurrent one is
# refused, the first keeps working, and a new client gets in once the first has left.
cat >"$TMP/shared.py" <<'PY'
import sys, time
import nbd
uri, path = sys.argv[1:3]
MiB = 1 << 20

def want(n, off):
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(n)

def conn():
    h = nbd.NBD()
    h.connect_uri(uri)
    return h

h1 = conn()
assert bytes(h1.pread(65536, MiB)) == want(65536, MiB), "first client: wrong data"
try:
    h2 = conn()
    h2.pread(512, 0)
except nbd.Error as e:
    print("# second client refused:", e.string)
else:
    sys.exit("a second concurrent client was served with --shared 1")
assert bytes(h1.pread(65536, MiB)) == want(65536, MiB), "first client broken after the refusal"
h1.shutdown()
for i in range(50):              # the slot frees once the server sees the first one leave
    try:
        h3 = conn()
        break
    except nbd.Error:
        time.sleep(0.1)
else:
    sys.exit("no client gets in after the first one left")
assert bytes(h3.pread(4096, MiB)) == want(4096, MiB), "later client: wrong data"
h3.shutdown()
PY

# ---- --shared 1 ----
log "--shared 1: a second concurrent client is refused, the first keeps working"
start_server --shared 1 "$IMG"
timeout 30 "$PYTHON_NBD" "$TMP/shared.py" "$URI" "$IMG" >&2 ||
    bad "--shared 1 client checks failed (rc $?)"
stop_server

# ---- SIGTERM with clients connected ----
log "SIGTERM with an idle and a busy client: the in-flight read completes, exit 0 within 10 s"
start_server --inject 'read:delay=2s' "$IMG"
cat >"$TMP/inflight.py" <<'PY'
import os, sys, time
import nbd
uri, path, d = sys.argv[1:4]
MiB = 1 << 20
idle = nbd.NBD()
idle.connect_uri(uri)
h = nbd.NBD()
h.connect_uri(uri)
open(os.path.join(d, "ready"), "w").close()
start = time.monotonic()
got = bytes(h.pread(65536, MiB))      # the server delays it 2 s; SIGTERM arrives meanwhile
with open(path, "rb") as f:
    f.seek(MiB)
    assert got == f.read(65536), "in-flight read returned wrong data"
print(f"# in-flight read completed after {time.monotonic() - start:.2f} s")
PY
rm -f "$TMP/ready"
start_bg timeout 30 "$PYTHON_NBD" "$TMP/inflight.py" "$URI" "$IMG" "$TMP"
CPID=$BG_PID
for ((i = 0; i < 200; i++)); do [ -e "$TMP/ready" ] && break; sleep 0.05; done
[ -e "$TMP/ready" ] || fail "client never got connected"
sleep 0.7
kill -TERM "$SERVER_PID"
t0=$SECONDS
gone "$SERVER_PID" 10 || bad "server still running 10 s after SIGTERM with clients connected"
rc=0
wait "$SERVER_PID" || rc=$?
[ $rc -eq 0 ] || bad "server exited $rc after SIGTERM with clients connected"
log "server exited $rc, $((SECONDS - t0)) s after SIGTERM"
rc=0
wait "$CPID" || rc=$?
[ $rc -eq 0 ] || bad "the in-flight read did not complete correctly across SIGTERM (rc $rc)"

# ---- several --export ----
log "--export a=... --export b=...: listed, and each name reaches its own file"
head -c $MiB /dev/zero | tr '\0' 'A' >"$TMP/a.img"
head -c $((2 * MiB)) /dev/zero | tr '\0' 'B' >"$TMP/b.img"
start_server --export a="$TMP/a.img" --export b="$TMP/b.img"
nbdinfo --list "$URI" >"$TMP/list.out" 2>&1 || bad "nbdinfo --list failed: $(cat "$TMP/list.out")"
for n in a b; do
    grep -q "export=\"$n\"" "$TMP/list.out" || bad "nbdinfo --list lacks export $n"
done
size=$(nbdinfo --size "$URI/a") || bad "nbdinfo $URI/a failed"
[ "${size:-}" = $MiB ] || bad "export a: size '${size:-}', expected $MiB"
size=$(nbdinfo --size "$URI/b") || bad "nbdinfo $URI/b failed"
[ "${size:-}" = $((2 * MiB)) ] || bad "export b: size '${size:-}', expected $((2 * MiB))"
qemu-io -r -f raw "$URI/a" -c 'read -P 0x41 0 64k' >/dev/null 2>&1 || bad "export a: not a.img's data"
qemu-io -r -f raw "$URI/b" -c "read -P 0x42 $((MiB + 4096)) 64k" >/dev/null 2>&1 ||
    bad "export b: not b.img's data"
if nbdinfo --size "$URI/nope" >/dev/null 2>&1; then bad "unknown export 'nope' was served"; fi
if nbdinfo --size "$URI/" >/dev/null 2>&1; then bad "'' was served although two exports exist"; fi
stop_server

check_server_log
[ $FAILS -eq 0 ] || fail "$FAILS check(s) failed (see above)"
exit 0
