#!/usr/bin/env bash
# Integration: a pivoting `blkmig mirror` holds its writers for the copy only, not for the target's final flush: against a target whose flushes take 1.5 s, a writer writing across completion never waits 1 s, `done` still comes after that flush, the target holds what the writer wrote; a final flush that fails ends the job failed, pivoted, exit 1.
. "$(dirname "$0")/../lib.sh"

need_cmd timeout coreutils
need_python_nbd

FLUSH_MS=1500
MiB=$((1024 * 1024))

# A target whose every flush takes FLUSH_MS: nbdkit's delay filter where it knows delay-flush
# (nbdkit >= 1.34), else blkmig's own server with a flush delay injected.
if command -v nbdkit >/dev/null && nbdkit --filter=delay null --help 2>&1 | grep -q delay-flush; then
    TARGET_KIND=nbdkit
else
    TARGET_KIND=blkmig
fi
start_slow_target() {
    case $TARGET_KIND in
    nbdkit)
        TARGET_SOCK=$TMP/target.sock
        nbdkit -f -U "$TARGET_SOCK" --filter=delay file "$1" delay-flush=${FLUSH_MS}ms \
            >>"$TMP/target.log" 2>&1 &
        TARGET_PID=$!
        track_pid "$TARGET_PID"
        wait_unix "$TARGET_SOCK"
        TARGET_URI="nbd+unix:///?socket=$TARGET_SOCK"
        ;;
    blkmig) start_target blkmig "$1" --inject "flush:delay=${FLUSH_MS}ms" ;;
    esac
}
log "target: $TARGET_KIND, every flush delayed ${FLUSH_MS} ms"

# The writer: 4 KiB writes (each a new pattern) spread over the disk, one at a time, each timed,
# until the file STOP exists; it keeps a copy of the disk as it must be (the source's initial
# content, then its writes) and writes to OUT its largest wait, when each write started, and the
# MD5 of that copy. It creates OUT.started after its first 10 writes. With "tolerant", failed
# writes are counted, not fatal.
cat >"$TMP/writer.py" <<'PY'
import hashlib, json, os, sys, time
import nbd
sock, initial, stop, out, mode = sys.argv[1:6]
h = nbd.NBD()
h.connect_unix(sock)
disk = bytearray(open(initial, "rb").read())
blocks = len(disk) // 4096
starts, worst, worst_at, errors, i = [], 0.0, 0.0, 0, 0
while not os.path.exists(stop):
    off = (i * 7919 % blocks) * 4096
    buf = (i + 1).to_bytes(8, "little") * 512
    t = time.time()
    try:
        h.pwrite(buf, off)
    except nbd.Error:
        if mode != "tolerant":
            raise
        errors += 1
        time.sleep(0.01)
    else:
        disk[off:off + 4096] = buf
        starts.append(t)
    lat = time.time() - t
    if lat > worst:
        worst, worst_at = lat, t
    i += 1
    if i == 10:
        open(out + ".started", "w").close()
    time.sleep(0.002)
h.shutdown()
json.dump({"worst": worst, "worst_at": worst_at, "starts": starts, "errors": errors,
           "md5": hashlib.md5(disk).hexdigest()}, open(out, "w"))
PY

# setup NAME: a source with some data, an empty target behind the slow flush, `blkmig mirror`
# (pivot, --on-ready wait) serving the source on serve-NAME.sock, and the writer on it.
setup() {
    local n=$1
    truncate -s 32M "$TMP/src-$n.img"
    for off in 2 20; do
        dd if=/dev/urandom of="$TMP/src-$n.img" bs=1M count=2 seek=$off conv=notrunc status=none
    done
    cp "$TMP/src-$n.img" "$TMP/initial-$n.img"
    truncate -s 32M "$TMP/tgt-$n.img"
    start_slow_target "$TMP/tgt-$n.img"
    start_mirror "$n" --serve-unix "$TMP/serve-$n.sock" --on-ready wait \
        --control "$TMP/ctl-$n.sock" -l debug "$TMP/src-$n.img" "$TARGET_URI"
    wait_unix "$TMP/serve-$n.sock"
    wait_unix "$TMP/ctl-$n.sock"
    "$PYTHON_NBD" "$TMP/writer.py" "$TMP/serve-$n.sock" "$TMP/initial-$n.img" "$TMP/stop-$n" \
        "$TMP/writer-$n.json" "${2:-strict}" 2>"$TMP/writer-$n.err" &
    WRITER_PID=$!
    track_pid "$WRITER_PID"
    wait_event "$TMP/$n.json" ready 30 || fail "$n: no ready event within 30 s"
    local deadline=$((SECONDS + 30))
    until [ -e "$TMP/writer-$n.json.started" ]; do
        kill -0 "$WRITER_PID" 2>/dev/null || fail "$n: the writer died: $(tail -3 "$TMP/writer-$n.err")"
        [ $SECONDS -lt $deadline ] || fail "$n: the writer wrote nothing within 30 s"
        sleep 0.05
    done
    sleep 0.5 # more writes before completion
}

# writer_field NAME EXPR: EXPR (Python, over the writer's result w) for the writer of NAME.
writer_field() {
    "$PY3" -c 'import json,sys; w=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' \
        "$TMP/writer-$1.json" "$2"
}

# ---- 1. completion with a writer running: no write waits for the flush, done does ----
log "pivot: a writer runs across completion; no write waits 1 s, done waits for the flush"
setup p
t_complete=$(date +%s.%N)
"$BLKMIG" control "$TMP/ctl-p.sock" complete >/dev/null || fail "p: control complete failed"
wait_event "$TMP/p.json" done 30 || fail "p: no done event within 30 s: $(tail -3 "$TMP/p.err")"
t_done=$(date +%s.%N)
sleep 1 # writes after done, on the target
touch "$TMP/stop-p"
wait_pid "$WRITER_PID" 30
[ "$WAIT_RC" -eq 0 ] || fail "p: the writer exited $WAIT_RC: $(tail -3 "$TMP/writer-p.err")"
wait_pid "$MIRROR_PID" 30
check_sanitizer_log "$TMP/p.err"
[ "$WAIT_RC" -eq 0 ] || soft_fail "p: blkmig mirror exited $WAIT_RC: $(tail -3 "$TMP/p.err")"
[ "$(json_get "$TMP/p.json" summary result)" = done ] ||
    soft_fail "p: summary result $(json_get "$TMP/p.json" summary result)"
[ "$(json_get "$TMP/p.json" summary on_complete)" = pivot ] ||
    soft_fail "p: summary on_complete $(json_get "$TMP/p.json" summary on_complete)"
grep -E 'writers held|final flush' "$TMP/p.err" | sed "s/^/# $TEST_NAME:   /" >&2 || true
worst=$(writer_field p 'round(w["worst"], 3)')
during=$(writer_field p "sum($t_complete <= s <= $t_done for s in w['starts'])")
log "  the longest write took $worst s; $during writes started between complete and done, $(writer_field p 'len(w["starts"])') in all"
[ "$during" -ge 20 ] || soft_fail "p: only $during writes between complete and done: the writer was not writing across completion"
"$PY3" -c 'import sys; sys.exit(float(sys.argv[1]) >= 1.0)' "$worst" ||
    soft_fail "p: a write waited $worst s across completion (the writers were held through the flush)"
held_to_done=$(( $(json_get "$TMP/p.json" done elapsed_ms) - $(json_get "$TMP/p.json" completing elapsed_ms) ))
log "  completing -> done: $held_to_done ms"
[ "$held_to_done" -ge "$FLUSH_MS" ] ||
    soft_fail "p: done came $held_to_done ms after completing: the final flush (${FLUSH_MS} ms) was not waited for"
stop_target
check_sanitizer_log "$TMP/target.log"
[ "$(sum "$TMP/tgt-p.img")" = "$(writer_field p 'w["md5"]')" ] ||
    soft_fail "p: the target does not hold what the writer wrote"
rm -f "$TMP"/*-p.img

# ---- 2. the final flush fails: failed, exit 1, the writers stay on the target ----
log "pivot: the target dies during the final flush -> failed, exit 1, the message says the target is served"
setup f tolerant
"$BLKMIG" control "$TMP/ctl-f.sock" complete >/dev/null || fail "f: control complete failed"
wait_event "$TMP/f.json" completing 30 || fail "f: no completing event within 30 s"
sleep 0.5 # inside the final flush (pivoted by now, ${FLUSH_MS} ms to go)
kill -KILL "$TARGET_PID"
wait "$TARGET_PID" 2>/dev/null || true
wait_event "$TMP/f.json" summary 30 || fail "f: no summary within 30 s: $(tail -3 "$TMP/f.err")"
kill -0 "$MIRROR_PID" 2>/dev/null || soft_fail "f: blkmig mirror exited with a writer connected"
touch "$TMP/stop-f"
wait_pid "$WRITER_PID" 30
wait_pid "$MIRROR_PID" 30
check_sanitizer_log "$TMP/f.err"
[ "$WAIT_RC" -eq 1 ] || soft_fail "f: blkmig mirror exited $WAIT_RC, expected 1: $(tail -3 "$TMP/f.err")"
! grep -q '"event":"done"' "$TMP/f.json" || soft_fail "f: a done event although the final flush failed"
[ "$(json_get "$TMP/f.json" summary result)" = failed ] ||
    soft_fail "f: summary result $(json_get "$TMP/f.json" summary result)"
[ "$(json_get "$TMP/f.json" summary on_complete)" = pivot ] ||
    soft_fail "f: summary on_complete $(json_get "$TMP/f.json" summary on_complete), expected pivot"
grep -q 'could not be made durable' "$TMP/f.err" ||
    soft_fail "f: the error does not say the target could not be made durable: $(tail -3 "$TMP/f.err")"
grep -q 'still serving the target' "$TMP/f.err" ||
    soft_fail "f: stderr does not say the target is still served: $(tail -3 "$TMP/f.err")"
! grep -q "still serving $TMP/src-f.img" "$TMP/f.err" ||
    soft_fail "f: stderr says SOURCE is still served after the pivot"
cmp -s "$TMP/src-f.img" "$TMP/initial-f.img" && soft_fail "f: no write reached SOURCE before the switch"
finish_test
