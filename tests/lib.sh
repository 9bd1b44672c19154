# tests/lib.sh: helpers shared by the shell tests (source it; do not run it).
# Every test: sources this, calls need_cmd for its peers, starts servers with start_server,
# and relies on the EXIT trap here to kill what it started (by PID) and remove its temp dir.
set -euo pipefail

: "${top_srcdir:=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
: "${top_builddir:=$top_srcdir}"
: "${BLKMIG:=$top_builddir/blkmig}"
export top_srcdir top_builddir BLKMIG

TEST_NAME=$(basename "$0" .sh)
TMP=$(mktemp -d "/tmp/blkmig-$TEST_NAME.XXXXXX")
_PIDS=()

_cleanup() {
    local rc=$?
    for pid in "${_PIDS[@]:-}"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    for pid in "${_PIDS[@]:-}"; do
        [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
    exit $rc
}
trap _cleanup EXIT
trap 'exit 130' INT TERM

fail() { echo "FAIL: $TEST_NAME: $*" >&2; exit 1; }
skip() { echo "SKIP: $TEST_NAME: $*" >&2; exit 77; }
log() { echo "# $TEST_NAME: $*" >&2; }

# need_cmd CMD [PACKAGE]: skip (77) when a peer tool is missing.
need_cmd() {
    command -v "$1" >/dev/null 2>&1 || skip "$1 not installed (Debian package ${2:-$1})"
}

# free_port: print a TCP port nobody listens on.
free_port() {
    python3 - <<'PY'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
PY
}

# wait_port PORT [SECONDS]: wait until something listens on 127.0.0.1:PORT.
wait_port() {
    local port=$1 deadline=$((SECONDS + ${2:-10}))
    while ! (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || fail "nothing listening on port $port"
        sleep 0.05
    done
}

# wait_unix PATH [SECONDS]: wait until a unix socket exists.
wait_unix() {
    local path=$1 deadline=$((SECONDS + ${2:-10}))
    while [ ! -S "$path" ]; do
        [ $SECONDS -lt $deadline ] || fail "no unix socket at $path"
        sleep 0.05
    done
}

# start_bg CMD...: run a command in the background, remember its PID in $BG_PID (killed on exit).
start_bg() {
    "$@" &
    BG_PID=$!
    _PIDS+=("$BG_PID")
}

# start_server ARGS...: `blkmig nbd-serve --foreground` on a fresh port; sets $PORT, $SERVER_PID
# and $URI (nbd://127.0.0.1:PORT). The server log goes to $TMP/server.log.
start_server() {
    PORT=$(free_port)
    "$BLKMIG" nbd-serve --foreground --bind 127.0.0.1 --port "$PORT" "$@" \
        >>"$TMP/server.log" 2>&1 &
    SERVER_PID=$!
    _PIDS+=("$SERVER_PID")
    wait_port "$PORT"
    URI="nbd://127.0.0.1:$PORT"
}

# stop_server: SIGTERM the server and check it exits 0 (a clean drain).
stop_server() {
    kill -TERM "$SERVER_PID"
    local rc=0
    wait "$SERVER_PID" || rc=$?
    [ $rc -eq 0 ] || fail "server exited $rc after SIGTERM (log: $(tail -5 "$TMP/server.log"))"
}

# make_sparse_image PATH SIZE_MIB: a sparse image with random data in a few scattered extents
# (and one all-zero allocated extent), so maps and sparseness can be checked.
make_sparse_image() {
    local path=$1 size=$2
    truncate -s "${size}M" "$path"
    local step=$((size / 8))
    [ $step -ge 2 ] || step=2
    for ((off = 1; off + 1 < size; off += step)); do
        dd if=/dev/urandom of="$path" bs=1M count=1 seek=$off conv=notrunc status=none
    done
    # An allocated run of zeroes: data as far as the filesystem knows.
    dd if=/dev/zero of="$path" bs=64K count=2 seek=2 conv=notrunc status=none
}

sum() { md5sum < "$1" | cut -d' ' -f1; }

# check_server_log: fail when $TMP/server.log holds a sanitizer report (ASan/UBSan/LSan).
check_server_log() {
    if grep -qE 'ERROR: (Address|Leak|Thread)Sanitizer|runtime error:|SUMMARY: .*Sanitizer' \
        "$TMP/server.log" 2>/dev/null; then
        fail "sanitizer report in server log: $(grep -m3 -E 'Sanitizer|runtime error:' "$TMP/server.log")"
    fi
}

# need_python_nbd: set $PYTHON_NBD to a python3 that can `import nbd` (python3-libnbd), or skip.
# (A pyenv/venv python3 first in PATH may lack the Debian module; /usr/bin/python3 has it.)
need_python_nbd() {
    local p
    for p in python3 /usr/bin/python3; do
        p=$(command -v "$p" 2>/dev/null) || continue
        if (cd "$TMP" && "$p" -c 'import nbd; nbd.NBD') >/dev/null 2>&1; then
            PYTHON_NBD=$p
            export PYTHON_NBD
            return 0
        fi
    done
    skip "no python3 can import nbd (Debian package python3-libnbd)"
}

# nbdsh_run ARGS...: nbdsh, run by the python3 that need_python_nbd found.
nbdsh_run() {
    PATH="$(dirname "$PYTHON_NBD"):$PATH" nbdsh "$@"
}

# track_pid PID: kill PID on exit too (e.g. a daemonised server, by the pid from its pid file).
track_pid() {
    _PIDS+=("$1")
}

# ---- helpers for the `blkmig mirror` tests ----

# A python3 for small JSON jobs: the system one when there is one (a pyenv shim first in PATH
# takes about half a second to start).
if [ -x /usr/bin/python3 ]; then PY3=/usr/bin/python3; else PY3=python3; fi

SANITIZER_RE='ERROR: (Address|Leak|Thread)Sanitizer|runtime error:|SUMMARY: .*Sanitizer'

# check_sanitizer_log FILE...: fail when a FILE holds a sanitizer report (ASan/UBSan/LSan).
check_sanitizer_log() {
    local f
    for f in "$@"; do
        if grep -qE "$SANITIZER_RE" "$f" 2>/dev/null; then
            fail "sanitizer report in $(basename "$f"): $(grep -m3 -E 'Sanitizer|runtime error:' "$f" | tr '\n' ' ')"
        fi
    done
}

# soft_fail MSG: report a failed check and carry on with the others; finish_test then exits 1.
SOFT_FAILS=0
soft_fail() {
    echo "FAIL: $TEST_NAME: $*" >&2
    SOFT_FAILS=$((SOFT_FAILS + 1))
}

# finish_test: exit 0, or 1 when soft_fail reported something.
finish_test() {
    [ "$SOFT_FAILS" -eq 0 ] || fail "$SOFT_FAILS check(s) failed (see FAIL lines above)"
    exit 0
}

# sparse_sum PATH: an MD5 digest of PATH's contents that reads only its allocated extents
# (SEEK_DATA/SEEK_HOLE) and skips all-zero 64 KiB chunks: two files get the same digest exactly
# when their contents are equal, whatever is allocated. Fast on large sparse images, where
# md5sum would read gigabytes of holes.
sparse_sum() {
    "$PY3" - "$1" <<'PY'
import hashlib, os, sys
CH = 65536
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
h = hashlib.md5(b"size %d\n" % size)
zero = bytes(CH)
pos = 0
while pos < size:
    try:
        data = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:  # ENXIO: only a hole is left
        break
    end = os.lseek(fd, data, os.SEEK_HOLE)
    # Whole chunks of a fixed grid, each read once: the digest cannot depend on where the
    # extents begin and end.
    off = max(pos, data - data % CH)
    stop = min(size, -(-end // CH) * CH)
    while off < stop:
        n = min(16 * CH, stop - off)
        buf = os.pread(fd, n, off)
        for i in range(0, len(buf), CH):
            chunk = buf[i:i + CH]
            if chunk != zero[:len(chunk)]:
                h.update(b"%d %d\n" % (off + i, len(chunk)))
                h.update(chunk)
        off += n
    pos = stop
print(h.hexdigest())
PY
}

# wait_pid PID SECONDS: wait at most SECONDS for the background child PID to exit; sets WAIT_RC
# to its exit status, or to 124 (after killing it with SIGKILL) when it was still running.
wait_pid() {
    local pid=$1 deadline=$((SECONDS + $2))
    while kill -0 "$pid" 2>/dev/null; do
        if [ $SECONDS -ge "$deadline" ]; then
            kill -KILL "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
            WAIT_RC=124
            return 0
        fi
        sleep 0.05
    done
    WAIT_RC=0
    wait "$pid" || WAIT_RC=$?
}

# start_target KIND IMAGE [ARGS...]: serve IMAGE on a fresh unix socket in $TMP with KIND:
# blkmig (`blkmig nbd-serve --foreground`, ARGS added), qemu-nbd (--persistent --shared=8
# -f raw --cache=writeback) or nbdkit (file plugin). Sets TARGET_PID, TARGET_SOCK and
# TARGET_URI; the log goes to $TMP/target.log.
start_target() {
    local kind=$1 img=$2
    shift 2
    TARGET_SOCK=$(mktemp -u "$TMP/target-XXXXXX.sock")
    case $kind in
    blkmig) "$BLKMIG" nbd-serve --foreground --unix "$TARGET_SOCK" "$@" "$img" \
        >>"$TMP/target.log" 2>&1 & ;;
    qemu-nbd) qemu-nbd --persistent --shared=8 -f raw --cache=writeback -k "$TARGET_SOCK" \
        "$@" "$img" >>"$TMP/target.log" 2>&1 & ;;
    nbdkit) nbdkit -f -U "$TARGET_SOCK" "$@" file "$img" >>"$TMP/target.log" 2>&1 & ;;
    *) fail "start_target: unknown kind $kind" ;;
    esac
    TARGET_PID=$!
    _PIDS+=("$TARGET_PID")
    wait_unix "$TARGET_SOCK"
    TARGET_URI="nbd+unix:///?socket=$TARGET_SOCK"
}

# stop_target: SIGTERM the target server and wait (at most 20 s); fail unless it exits 0.
stop_target() {
    kill -TERM "$TARGET_PID" 2>/dev/null || true
    wait_pid "$TARGET_PID" 20
    [ "$WAIT_RC" -eq 0 ] ||
        fail "target server exited $WAIT_RC after SIGTERM (log: $(tail -3 "$TMP/target.log"))"
}

# start_mirror NAME ARGS...: `blkmig mirror --json --no-progress ARGS` in the background; its
# JSON lines go to $TMP/NAME.json, its stderr to $TMP/NAME.err. Sets MIRROR_PID.
start_mirror() {
    local name=$1
    shift
    "$BLKMIG" mirror --json --no-progress "$@" >"$TMP/$name.json" 2>"$TMP/$name.err" &
    MIRROR_PID=$!
    _PIDS+=("$MIRROR_PID")
}

# json_events FILE [FROM_LINE [TO_LINE]]: the "event" of each JSON line of FILE after line
# FROM_LINE (default 0) up to line TO_LINE (default: the end), one per line, in order.
json_events() {
    "$PY3" - "$1" "${2:-0}" "${3:--1}" <<'PY'
import json, sys
lo, hi = int(sys.argv[2]), int(sys.argv[3])
for n, line in enumerate(open(sys.argv[1]), 1):
    if n > lo and (hi < 0 or n <= hi) and line.strip():
        print(json.loads(line).get("event", ""))
PY
}

# json_get FILE EVENT FIELD: FIELD of the last JSON line of FILE whose event is EVENT (empty
# when there is none).
json_get() {
    "$PY3" - "$@" <<'PY'
import json, sys
val = ""
for line in open(sys.argv[1]):
    if line.strip():
        o = json.loads(line)
        if o.get("event") == sys.argv[2] and sys.argv[3] in o:
            val = o[sys.argv[3]]
print(val)
PY
}

# wait_event FILE EVENT SECONDS: wait until FILE has a JSON line with that event; false on timeout.
wait_event() {
    local deadline=$((SECONDS + $3))
    until grep -qF "\"event\":\"$2\"" "$1" 2>/dev/null; do
        [ $SECONDS -lt "$deadline" ] || return 1
        sleep 0.05
    done
}
