#!/usr/bin/env bash
# Integration: `blkmig mirror --on-complete pivot` (the default) keeps serving its writers across completion, from the target: a verifying fio and a qemu-io never see an error, no acknowledged write is on one side only, SOURCE is not written after done; `--on-complete release` says the target is a point-in-time copy.
. "$(dirname "$0")/../lib.sh"

need_cmd fio
need_cmd qemu-io qemu-utils
need_cmd timeout coreutils
need_cmd python3
fio --enghelp=nbd >/dev/null 2>&1 || skip "this fio has no nbd ioengine"

MiB=$((1024 * 1024))
cd "$TMP" # fio writes its verify state files here

MASTER=$TMP/master.img
truncate -s 128M "$MASTER"
for off in 4 40 80; do
    dd if=/dev/urandom of="$MASTER" bs=1M count=8 seek=$off conv=notrunc status=none
done

# summary_field NAME FIELD: FIELD of the --json summary of the mirror started as NAME.
summary_field() { json_get "$TMP/$1.json" summary "$2"; }

# serve_and_mirror NAME [KIND]: a fresh source (src-NAME.img) and target (served by KIND, default
# blkmig), and `blkmig mirror` serving the source on serve-NAME.sock, with --on-ready wait and
# control socket ctl-NAME.sock.
serve_and_mirror() {
    cp --sparse=always "$MASTER" "$TMP/src-$1.img"
    truncate -s 128M "$TMP/tgt-$1.img"
    start_target "${2:-blkmig}" "$TMP/tgt-$1.img"
    start_mirror "$1" --serve-unix "$TMP/serve-$1.sock" --on-ready wait \
        --control "$TMP/ctl-$1.sock" "$TMP/src-$1.img" "$TARGET_URI"
    wait_unix "$TMP/serve-$1.sock"
    wait_unix "$TMP/ctl-$1.sock"
}

# ---- 1. qemu-io connected across complete: it keeps working, and its disk is the target ----
# expect FILE OFFSET_KIB BYTE: the 64 KiB at OFFSET_KIB are all BYTE.
expect() {
    "$PY3" -c 'import sys; d=open(sys.argv[1],"rb"); d.seek(int(sys.argv[2])*1024); sys.exit(d.read(65536) != bytes([int(sys.argv[3],16)])*65536)' "$@"
}

# qemu_io_across KIND: the target served by KIND (blkmig, qemu-nbd, nbdkit).
qemu_io_across() {
    local kind=$1 n=q-$1
    log "[$kind] pivot: qemu-io writes, complete, qemu-io writes/reads/zeroes/trims/flushes again"
    serve_and_mirror "$n" "$kind"
    mkfifo "$TMP/$n.in"
    timeout 60 qemu-io -f raw "nbd+unix:///?socket=$TMP/serve-$n.sock" <"$TMP/$n.in" \
        >"$TMP/$n.out" 2>&1 &
    QIO_PID=$!
    track_pid $QIO_PID
    exec 7>"$TMP/$n.in"
    echo "write -P 0xa1 0 64k" >&7
    wait_event "$TMP/$n.json" ready 30 || fail "$n: no ready event within 30 s"
    "$BLKMIG" control "$TMP/ctl-$n.sock" complete >/dev/null || fail "$n: control complete failed"
    wait_event "$TMP/$n.json" summary 30 || fail "$n: no summary within 30 s of complete"
    kill -0 "$MIRROR_PID" 2>/dev/null ||
        fail "$n: blkmig mirror exited at done with qemu-io still connected: $(tail -3 "$TMP/$n.err")"
    local src_at_done c
    src_at_done=$(sum "$TMP/src-$n.img")
    for c in "write -P 0xb2 64k 64k" "read -P 0xa1 0 64k" "read -P 0xb2 64k 64k" \
        "write -f -P 0xc3 128k 64k" "write -z 192k 64k" "discard 256k 64k" "flush" \
        "read -P 0xc3 128k 64k" "read -P 0 192k 64k" "quit"; do
        echo "$c" >&7
    done
    exec 7>&-
    wait_pid $QIO_PID 30
    [ "$WAIT_RC" -eq 0 ] || soft_fail "$n: qemu-io exited $WAIT_RC"
    ! grep -qiE 'error|fail|pattern|mismatch' "$TMP/$n.out" ||
        soft_fail "$n: qemu-io saw an error after the pivot: $(grep -m3 -iE 'error|fail|pattern|mismatch' "$TMP/$n.out" | tr '\n' ' ')"
    local answered
    answered=$(grep -cE '^(qemu-io> )?(wrote|read|discard) ' "$TMP/$n.out" || true)
    [ "$answered" -eq 8 ] ||
        soft_fail "$n: qemu-io completed $answered of 8 requests: $(tr '\n' ' ' <"$TMP/$n.out")"
    log "[$kind] pivot: the writer disconnected -> blkmig mirror exits 0; the summary says pivot"
    wait_pid "$MIRROR_PID" 30
    check_sanitizer_log "$TMP/$n.err"
    [ "$WAIT_RC" -eq 0 ] || soft_fail "$n: blkmig mirror exited $WAIT_RC: $(tail -3 "$TMP/$n.err")"
    [ "$(summary_field "$n" result)" = done ] || soft_fail "$n: result $(summary_field "$n" result)"
    [ "$(summary_field "$n" on_complete)" = pivot ] ||
        soft_fail "$n: on_complete $(summary_field "$n" on_complete)"
    [ "$(summary_field "$n" point_in_time)" = False ] ||
        soft_fail "$n: point_in_time $(summary_field "$n" point_in_time)"
    [ "$(summary_field "$n" writers_connected)" = 1 ] ||
        soft_fail "$n: writers_connected $(summary_field "$n" writers_connected), expected 1"
    stop_target
    check_sanitizer_log "$TMP/target.log"
    log "[$kind] pivot: the target holds every write (before and after done), SOURCE none of those after"
    expect "$TMP/tgt-$n.img" 0 a1 || soft_fail "$n: the target lacks the write made before done"
    expect "$TMP/tgt-$n.img" 64 b2 || soft_fail "$n: the target lacks the write made after done"
    expect "$TMP/tgt-$n.img" 128 c3 || soft_fail "$n: the target lacks the FUA write made after done"
    expect "$TMP/tgt-$n.img" 192 00 || soft_fail "$n: the target lacks the zero made after done"
    expect "$TMP/src-$n.img" 0 a1 || soft_fail "$n: SOURCE lacks the write made before done"
    [ "$(sum "$TMP/src-$n.img")" = "$src_at_done" ] || soft_fail "$n: SOURCE was written after done"
    rm -f "$TMP/src-$n.img" "$TMP/tgt-$n.img"
}

for kind in blkmig qemu-nbd nbdkit; do
    case $kind in
    qemu-nbd) command -v qemu-nbd >/dev/null || { log "qemu-nbd not installed (qemu-utils): target skipped"; continue; } ;;
    nbdkit) command -v nbdkit >/dev/null || { log "nbdkit not installed: target skipped"; continue; } ;;
    esac
    qemu_io_across "$kind"
done

log "[blkmig] pivot, then the target dies: the writer's next requests fail (EIO), SOURCE stays as at done"
serve_and_mirror d
mkfifo "$TMP/d.in"
timeout 60 qemu-io -f raw "nbd+unix:///?socket=$TMP/serve-d.sock" <"$TMP/d.in" >"$TMP/d.out" 2>&1 &
QIO_PID=$!
track_pid $QIO_PID
exec 7>"$TMP/d.in"
wait_event "$TMP/d.json" ready 30 || fail "d: no ready event within 30 s"
"$BLKMIG" control "$TMP/ctl-d.sock" complete >/dev/null || fail "d: control complete failed"
wait_event "$TMP/d.json" summary 30 || fail "d: no summary within 30 s of complete"
src_at_done=$(sum "$TMP/src-d.img")
kill -KILL "$TARGET_PID"
wait "$TARGET_PID" 2>/dev/null || true
printf '%s\n' "write -P 0xd4 0 64k" "flush" "read 0 64k" "quit" >&7
exec 7>&-
wait_pid $QIO_PID 30
grep -qE 'write failed: Input/output error' "$TMP/d.out" ||
    soft_fail "d: qemu-io's write after the target died did not fail with EIO: $(tr '\n' ' ' <"$TMP/d.out")"
! grep -qE '^(qemu-io> )?wrote ' "$TMP/d.out" || soft_fail "d: a write succeeded with the target dead"
wait_pid "$MIRROR_PID" 30
check_sanitizer_log "$TMP/d.err"
[ "$WAIT_RC" -eq 0 ] || soft_fail "d: blkmig mirror exited $WAIT_RC: $(tail -3 "$TMP/d.err")"
[ "$(sum "$TMP/src-d.img")" = "$src_at_done" ] || soft_fail "d: SOURCE was written after done"
rm -f "$TMP/src-d.img" "$TMP/tgt-d.img"

# ---- 2. a verifying fio that never stops across complete ----
# 96 MiB of random 4-64 KiB writes at 8 MiB/s (12 s at least), then fio reads all of it back and
# checks every block's crc32c: the reads after done come from the target.
FIO_JOB=(--name=w --rw=randwrite --bsrange=4k-64k --size=96m --offset=16m --verify=crc32c
    --verify_fatal=1 --randseed=777 --output-format=json)
log "pivot: fio (crc32c verify) writing at 8 MiB/s across complete"
serve_and_mirror f
wait_event "$TMP/f.json" ready 30 || fail "f: no ready event within 30 s"
timeout 120 fio "${FIO_JOB[@]}" --ioengine=nbd --uri="nbd+unix:///?socket=$TMP/serve-f.sock" \
    --iodepth=4 --rate=,8m --output="$TMP/fio-f.json" 2>"$TMP/fio-f.err" &
FIO_PID=$!
track_pid $FIO_PID
sleep 2 # some writes before the completion; the checks below do not depend on how many
"$BLKMIG" control "$TMP/ctl-f.sock" complete >/dev/null || fail "f: control complete failed"
wait_event "$TMP/f.json" summary 30 || fail "f: no summary within 30 s of complete"
src_at_done=$(sum "$TMP/src-f.img")
kill -0 $FIO_PID 2>/dev/null ||
    fail "f: fio is not running at done (dropped, or over too soon): $(tail -2 "$TMP/fio-f.err")"
kill -0 "$MIRROR_PID" 2>/dev/null ||
    fail "f: blkmig mirror exited at done with fio still connected: $(tail -3 "$TMP/f.err")"
wait_pid $FIO_PID 120
[ "$WAIT_RC" -eq 0 ] || soft_fail "f: fio exited $WAIT_RC: $(tail -3 "$TMP/fio-f.err")"
! grep -qiE 'verify|error' "$TMP/fio-f.err" ||
    soft_fail "f: fio reported: $(grep -m3 -iE 'verify|error' "$TMP/fio-f.err")"
read -r ferr fw fr < <("$PY3" -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; print(j["error"], j["write"]["io_bytes"], j["read"]["io_bytes"])' "$TMP/fio-f.json" 2>/dev/null || echo "? 0 0")
log "  fio: job error $ferr, wrote $fw bytes, verified $fr bytes"
[ "$ferr" = 0 ] && [ "$fw" -eq $((96 * MiB)) ] && [ "$fr" -eq $((96 * MiB)) ] ||
    soft_fail "f: fio job error $ferr, wrote $fw, verified $fr (expected 0, 96 MiB, 96 MiB)"
wait_pid "$MIRROR_PID" 30
check_sanitizer_log "$TMP/f.err"
[ "$WAIT_RC" -eq 0 ] || soft_fail "f: blkmig mirror exited $WAIT_RC: $(tail -3 "$TMP/f.err")"
log "pivot: SOURCE did not change after done"
[ "$(sum "$TMP/src-f.img")" = "$src_at_done" ] || soft_fail "f: SOURCE changed after done"
stop_target
check_sanitizer_log "$TMP/target.log"
log "pivot: fio --verify_only on the target file: it holds what fio wrote, before and after done"
rc=0
timeout 60 fio "${FIO_JOB[@]}" --ioengine=psync --filename="$TMP/tgt-f.img" --verify_only \
    --output="$TMP/fio-f-v.json" 2>"$TMP/fio-f-v.err" || rc=$?
vr=$("$PY3" -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; print(j["error"], j["read"]["io_bytes"])' "$TMP/fio-f-v.json" 2>/dev/null || echo "? 0")
[ $rc -eq 0 ] && [ "$vr" = "0 $((96 * MiB))" ] ||
    soft_fail "f: verify_only on the target: exit $rc, error/bytes $vr: $(head -3 "$TMP/fio-f-v.err")"
[ "$(sum "$TMP/src-f.img")" != "$(sum "$TMP/tgt-f.img")" ] ||
    soft_fail "f: SOURCE equals the target: no write came after done, the test proves nothing"
rm -f "$TMP/src-f.img" "$TMP/tgt-f.img"

# ---- 3. --on-complete release: today's behaviour, said plainly ----
log "release: exit 0, the summary (JSON and text) says the target is a point-in-time copy"
cp --sparse=always "$MASTER" "$TMP/src-r.img"
truncate -s 128M "$TMP/tgt-r.img"
start_target blkmig "$TMP/tgt-r.img"
start_mirror r --on-complete release "$TMP/src-r.img" "$TARGET_URI"
wait_pid "$MIRROR_PID" 30
check_sanitizer_log "$TMP/r.err"
[ "$WAIT_RC" -eq 0 ] || soft_fail "r: blkmig mirror exited $WAIT_RC: $(tail -3 "$TMP/r.err")"
[ "$(summary_field r on_complete)" = release ] || soft_fail "r: on_complete $(summary_field r on_complete)"
[ "$(summary_field r point_in_time)" = True ] ||
    soft_fail "r: point_in_time $(summary_field r point_in_time)"
rc=0
timeout 30 "$BLKMIG" mirror --no-progress --on-complete release "$TMP/src-r.img" "$TARGET_URI" \
    2>"$TMP/r-text.err" || rc=$?
check_sanitizer_log "$TMP/r-text.err"
[ $rc -eq 0 ] || soft_fail "r: blkmig mirror (text) exited $rc"
grep -q 'point-in-time copy' "$TMP/r-text.err" ||
    soft_fail "r: the summary does not say point-in-time: $(cat "$TMP/r-text.err")"
stop_target
[ "$(sum "$TMP/src-r.img")" = "$(sum "$TMP/tgt-r.img")" ] || soft_fail "r: the target differs from SOURCE"
log "bad value: --on-complete never -> exit 2, the option named"
rc=0
"$BLKMIG" mirror --on-complete never "$TMP/src-r.img" nbd://127.0.0.1:1 2>"$TMP/bad.err" || rc=$?
[ $rc -eq 2 ] && grep -q -- '--on-complete' "$TMP/bad.err" ||
    soft_fail "--on-complete never: exit $rc: $(cat "$TMP/bad.err")"
cd /
finish_test
