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
