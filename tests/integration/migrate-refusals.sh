#!/usr/bin/env bash
# Integration: `blkmig incoming` against a hostile source (tests/integration/fake-source.py, which
# speaks the migration stream): nothing of the destination's is destroyed or opened for a peer
# before the migration completes. With --force an existing image is unchanged (by checksum)
# after a peer that sends HELLO and vanishes, and no temporary file is left; a symbolic link in
# --disk-dir is refused, its target unchanged; an image that cannot be sized leaves nothing
# behind; without --with-disk an unlisted DIR/NAME.img is refused, unchanged; a HELLO asking
# for 1 TiB of RAM or for 16 disks of 8 TiB is refused by default, before anything is created
# or mapped (no file, a small peak RSS).
. "$(dirname "$0")/../lib.sh"

FAKE="$top_srcdir/tests/integration/fake-source.py"
"$PY3" -c 'import ctypes; ctypes.CDLL("libxxhash.so.0")' 2>/dev/null ||
    skip "python3 cannot load libxxhash.so.0 (Debian package libxxhash0)"

WL='{"mem_rate":0,"hot":65536,"mem_pattern":"uniform","disk_rate":0,"disk_min_io":4096,"disk_max_io":4096,"disk_pattern":"uniform","seed":1}'
IMG_SIZE=$((4 << 20))

# hello RAM WITH_DISK DISKS-JSON: a HELLO payload for a synthetic guest.
hello() {
    printf '{"token":"00112233445566778899aabbccddeeff","vm":{"kind":"synth","ram":%s,"workload":%s,"disks":%s},"with_disk":%s,"verify":false}' \
        "$1" "$WL" "$3" "$2"
}
ONE_DISK='[{"name":"vda","size":'$IMG_SIZE'}]'

# start_dest CASE ARGS...: `blkmig incoming` on a fresh port, its peak RSS (KiB) written to
# $TMP/CASE.rss when it exits; sets DST_PID, DST_PORT, DST_LOG.
start_dest() {
    local c=$1
    shift
    DST_PORT=$(free_port)
    local nbd
    nbd=$(free_port)
    while [ "$nbd" = "$DST_PORT" ]; do nbd=$(free_port); done
    DST_LOG=$TMP/$c.log
    # DST_FSIZE (bytes): a file size limit, with SIGXFSZ ignored so that going past it fails
    # with EFBIG instead of killing the process.
    DST_FSIZE=${DST_FSIZE:-} "$PY3" -c '
import os, resource, signal, subprocess, sys
def limit():
    if os.environ.get("DST_FSIZE"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        n = int(os.environ["DST_FSIZE"])
        resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))
p = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, preexec_fn=limit)
_, status, ru = os.wait4(p.pid, 0)
open(sys.argv[1], "w").write("%d\n" % ru.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status) & 255)
' "$TMP/$c.rss" "$BLKMIG" incoming --listen "127.0.0.1:$DST_PORT" --nbd-port "$nbd" \
        --control "$TMP/$c.sock" --peer-timeout 60000 --log-level info "$@" 2>"$DST_LOG" &
    DST_PID=$!
    track_pid "$DST_PID"
    local deadline=$((SECONDS + 60))
    until grep -q "listening on" "$DST_LOG" 2>/dev/null; do
        kill -0 "$DST_PID" 2>/dev/null || fail "$c: blkmig incoming exited: $(tail -3 "$DST_LOG")"
        [ $SECONDS -lt $deadline ] || fail "$c: blkmig incoming does not listen after 60 s"
        sleep 0.05
    done
}

# fake CASE HELLO [ARGS...]: run the fake source against the destination; REPLY is its first line.
fake() {
    local c=$1 h=$2
    shift 2
    REPLY=$(timeout -k 5 150 "$PY3" "$FAKE" 127.0.0.1 "$DST_PORT" "$h" "$@" 2>"$TMP/$c.fake.err") ||
        fail "$c: the fake source failed: $(tail -3 "$TMP/$c.fake.err")"
    log "  $c: the destination answered: $REPLY"
}

# fake_bg CASE HELLO [ARGS...]: the same in the background, holding the connection until
# $TMP/CASE.release exists; waits for its answer (REPLY).
fake_bg() {
    local c=$1 h=$2
    shift 2
    timeout -k 5 150 "$PY3" "$FAKE" 127.0.0.1 "$DST_PORT" "$h" --hold "$TMP/$c.release" "$@" \
        >"$TMP/$c.fake.out" 2>"$TMP/$c.fake.err" &
    FAKE_PID=$!
    track_pid "$FAKE_PID"
    local deadline=$((SECONDS + 60))
    until [ -s "$TMP/$c.fake.out" ]; do
        kill -0 "$FAKE_PID" 2>/dev/null || break
        [ $SECONDS -lt $deadline ] || fail "$c: no answer to the HELLO within 60 s"
        sleep 0.05
    done
    REPLY=$(head -1 "$TMP/$c.fake.out")
    log "  $c: the destination answered: $REPLY"
}

# dest_exit CASE: wait for the destination to exit; it must exit 1 and say why it failed.
dest_exit() {
    wait_pid "$DST_PID" 60
    [ "$WAIT_RC" -eq 1 ] || soft_fail "$1: the destination exited $WAIT_RC, expected 1: $(tail -3 "$DST_LOG")"
    grep -q "migration failed" "$DST_LOG" || soft_fail "$1: the destination's log lacks 'migration failed'"
    check_sanitizer_log "$DST_LOG"
}

# no_tmp CASE DIR: nothing of a migration's temporary files is left in DIR.
no_tmp() {
    local left
    left=$(find "$2" -name '*.blkmig-tmp*' | head -3)
    [ -z "$left" ] || soft_fail "$1: temporary files left behind: $left"
}

# case_dir CASE [FILE]: D=$TMP/CASE, a new directory; with FILE, FILE gets random content and
# BEFORE its checksum.
case_dir() {
    D=$TMP/$1
    mkdir -p "$D"
    if [ -n "${2:-}" ]; then
        head -c $IMG_SIZE /dev/urandom >"$2"
        BEFORE=$(sum "$2")
    fi
}

# release CASE: let the held fake source close its connection; the destination must then fail.
release() {
    touch "$TMP/$1.release"
    wait_pid "$FAKE_PID" 30
    dest_exit "$1"
}

# ---- --force: an existing image survives a peer that sends HELLO and vanishes ----
log "--force: HELLO, then the source vanishes: the existing image is unchanged"
case_dir force "$TMP/force/vda.img"
start_dest force --disk-dir "$D" --force
fake_bg force "$(hello $((1 << 20)) true "$ONE_DISK")"
case $REPLY in HELLO_ACK*) ;; *) soft_fail "force: expected HELLO_ACK, got '$REPLY'" ;; esac
[ "$(sum "$D/vda.img")" = "$BEFORE" ] ||
    soft_fail "force: the existing image changed as soon as a HELLO arrived"
release force
[ "$(sum "$D/vda.img")" = "$BEFORE" ] ||
    soft_fail "force: the existing image changed after the source vanished"
no_tmp force "$D"

# ---- a symbolic link in --disk-dir is not followed ----
log "--disk-dir DIR/vda.img is a symbolic link to a file outside: refused, the file unchanged"
mkdir -p "$TMP/outside"
case_dir link "$TMP/outside/precious.img"
ln -s "$TMP/outside/precious.img" "$D/vda.img"
start_dest link --disk-dir "$D" --force
fake_bg link "$(hello $((1 << 20)) true "$ONE_DISK")"
case $REPLY in ABORT*symbolic\ link*) ;; *) soft_fail "link: expected an ABORT naming the link, got '$REPLY'" ;; esac
[ "$(sum "$TMP/outside/precious.img")" = "$BEFORE" ] ||
    soft_fail "link: the file the link points to changed"
release link
[ -L "$D/vda.img" ] || soft_fail "link: the link itself was replaced"
[ "$(sum "$TMP/outside/precious.img")" = "$BEFORE" ] ||
    soft_fail "link: the file the link points to changed"
no_tmp link "$D"

# ---- an image that cannot be sized leaves nothing behind ----
log "the image cannot be sized (file size limit 1 MiB): refused, nothing left in the directory"
case_dir efbig
DST_FSIZE=$((1 << 20)) start_dest efbig --disk-dir "$D"
fake efbig "$(hello $((1 << 20)) true "$ONE_DISK")"
case $REPLY in ABORT*) ;; *) soft_fail "efbig: expected ABORT, got '$REPLY'" ;; esac
dest_exit efbig
grep -q "cannot size" "$DST_LOG" || soft_fail "efbig: the destination's log does not say why"
left=$(ls -A "$D")
[ -z "$left" ] || soft_fail "efbig: left in the directory: $left"

# ---- shared storage opens only what the operator listed ----
log "no --with-disk, DIR/vda.img not listed with --disk: refused, the image unchanged"
case_dir shared "$TMP/shared/vda.img"
start_dest shared --disk-dir "$D"
fake_bg shared "$(hello $((1 << 20)) false "$ONE_DISK")"
case $REPLY in ABORT*--disk\ vda=PATH*) ;; *) soft_fail "shared: expected an ABORT saying --disk vda=PATH, got '$REPLY'" ;; esac
release shared
grep -q "without --with-disk" "$DST_LOG" || soft_fail "shared: the destination's log does not say why"
[ "$(sum "$D/vda.img")" = "$BEFORE" ] || soft_fail "shared: the unlisted image changed"

# ---- oversized requests, default limits ----
log "a HELLO asking for 1 TiB of RAM, default --max-ram: refused, nothing made, RSS small"
case_dir bigram
start_dest bigram --disk-dir "$D"
# Were it accepted, 512 RAM records 2 MiB apart would make it commit up to 1 GiB.
fake_bg bigram "$(hello $((1 << 40)) true "$ONE_DISK")" --ram-records 512
case $REPLY in ABORT*"bytes of memory available here"*) ;; *) soft_fail "bigram: expected an ABORT over the available memory, got '$REPLY'" ;; esac
[ -z "$(ls -A "$D")" ] || soft_fail "bigram: files were created: $(ls -A "$D")"
release bigram
rss=$(cat "$TMP/bigram.rss" 2>/dev/null || echo 0)
log "  bigram: the destination's peak RSS was $((rss / 1024)) MiB"
[ "$rss" -gt 0 ] && [ "$rss" -lt $((256 << 10)) ] ||
    soft_fail "bigram: the destination's peak RSS was $rss KiB (limit 256 MiB)"

log "a HELLO with 16 disks of 8 TiB, default --max-disk: refused, nothing created"
case_dir bigdisk
disks=$("$PY3" -c 'import json; print(json.dumps([{"name": "d%d" % i, "size": 8 << 40} for i in range(16)]))')
start_dest bigdisk --disk-dir "$D"
fake_bg bigdisk "$(hello $((1 << 20)) true "$disks")"
case $REPLY in ABORT*"bytes free there"*) ;; *) soft_fail "bigdisk: expected an ABORT over the free space, got '$REPLY'" ;; esac
[ -z "$(ls -A "$D")" ] || soft_fail "bigdisk: files were created: $(ls -A "$D" | head -3)"
release bigdisk
[ -z "$(ls -A "$D")" ] || soft_fail "bigdisk: files were left: $(ls -A "$D" | head -3)"

finish_test
