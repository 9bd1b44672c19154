#!/usr/bin/env bash
# Integration: `blkmig mirror` of sparse images: only the data is sent, holes stay holes, and garbage on a reused target is zeroed where the source has holes.
. "$(dirname "$0")/../lib.sh"

need_cmd timeout coreutils
need_cmd python3
need_cmd du coreutils

MiB=$((1024 * 1024))

# summary FILE: read the summary line's fields into S_RESULT, S_SENT, S_ZERO, S_ERROR.
summary() {
    local f=$1
    S_RESULT=$(json_get "$f" summary result)
    S_SENT=$(json_get "$f" summary bytes_sent)
    S_ZERO=$(json_get "$f" summary zero_bytes)
    [ -n "$S_SENT" ] || S_SENT=-1
    [ -n "$S_ZERO" ] || S_ZERO=-1
}

# ---- 1. a 4 GiB sparse image with 100 MiB of data, to an empty sparse target ----
SRC=$TMP/src4g.img
TGT=$TMP/tgt4g.img
truncate -s 4G "$SRC" "$TGT"
for off in 100 1100 2600 4000; do
    dd if=/dev/urandom of="$SRC" bs=1M count=25 seek=$off conv=notrunc status=none
done
DATA=$((100 * MiB))

log "4 GiB source, 100 MiB of data in 4 extents -> empty 4 GiB target (blkmig nbd-serve)"
start_target blkmig "$TGT"
t0=$SECONDS
start_mirror m4g "$SRC" "$TARGET_URI"
wait_pid "$MIRROR_PID" 50
[ "$WAIT_RC" -eq 0 ] || fail "blkmig mirror exited $WAIT_RC: $(tail -3 "$TMP/m4g.err")"
summary "$TMP/m4g.json"
[ "$S_RESULT" = done ] || fail "summary result '$S_RESULT'"
log "  exit 0 in $((SECONDS - t0)) s, result done, bytes_sent $S_SENT, zero_bytes $S_ZERO"

log "bytes_sent within 100 MiB +- 5%"
[ "$S_SENT" -ge $((DATA * 95 / 100)) ] && [ "$S_SENT" -le $((DATA * 105 / 100)) ] ||
    fail "bytes_sent $S_SENT is not within 5% of $DATA"

stop_target
log "target allocation (du --block-size=1) <= 110 MiB"
alloc=$(du --block-size=1 "$TGT" | cut -f1)
log "  target allocates $alloc bytes ($((alloc / MiB)) MiB)"
[ "$alloc" -le $((110 * MiB)) ] || fail "the target allocates $alloc bytes for 100 MiB of data"

log "checksums of source and target equal (sparse-aware md5 over the allocated extents)"
a=$(sparse_sum "$SRC")
b=$(sparse_sum "$TGT")
[ "$a" = "$b" ] || fail "source $a != target $b"
[ "$(stat -c %s "$TGT")" -eq $((4096 * MiB)) ] || fail "target size changed: $(stat -c %s "$TGT")"
check_sanitizer_log "$TMP/m4g.err" "$TMP/target.log"
rm -f "$SRC" "$TGT"

# ---- 2. a reused target: garbage where the source has holes ----
SRC=$TMP/src.img
TGT=$TMP/tgt.img
make_sparse_image "$SRC" 256 # 1 MiB data extents every 32 MiB, an allocated zero run at 128 KiB
head -c $((192 * MiB)) /dev/urandom >"$TGT" # garbage over 0-192 MiB, holes above
truncate -s 256M "$TGT"
src_data=$(du --block-size=1 "$SRC" | cut -f1)

log "256 MiB sparse source -> a target full of garbage over its first 192 MiB"
start_target blkmig "$TGT"
start_mirror mgarbage "$SRC" "$TARGET_URI"
wait_pid "$MIRROR_PID" 40
[ "$WAIT_RC" -eq 0 ] || fail "blkmig mirror exited $WAIT_RC: $(tail -3 "$TMP/mgarbage.err")"
summary "$TMP/mgarbage.json"
[ "$S_RESULT" = done ] || fail "summary result '$S_RESULT'"
log "  result done, bytes_sent $S_SENT, zero_bytes $S_ZERO (source allocates $src_data)"
log "holes are not sent as data: bytes_sent <= the source's allocation"
[ "$S_SENT" -le "$src_data" ] || fail "bytes_sent $S_SENT > the $src_data bytes the source allocates"
stop_target
log "the holes are zeroed on the target: md5 of source == md5 of target"
a=$(sum "$SRC")
b=$(sum "$TGT")
[ "$a" = "$b" ] || fail "source md5 $a != target md5 $b (cmp: $(cmp "$SRC" "$TGT" | head -1))"
check_sanitizer_log "$TMP/mgarbage.err" "$TMP/target.log"

# ---- 3. the same with a writer filling source holes during the bulk pass ----
# The bulk pass zeroes the target where the source had holes when the job started; data written
# there meanwhile must not be wiped by that zeroing, in either copy mode.
if ! "$PY3" -c 'import nbd' 2>/dev/null; then
    log "no python3 with the nbd module (python3-libnbd): writer-into-holes checks skipped"
    finish_test
fi
cat >"$TMP/fill.py" <<'PY'
import nbd, os, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
for off in sys.argv[2:]:
    h.pwrite(os.urandom(1 << 20), int(off) << 20)
h.flush()
h.shutdown()
PY
for mode in background write-blocking; do
    SRC=$TMP/src-$mode.img
    TGT=$TMP/tgt-$mode.img
    truncate -s 64M "$SRC"
    dd if=/dev/urandom of="$SRC" bs=1M count=16 conv=notrunc status=none
    head -c $((64 * MiB)) /dev/urandom >"$TGT"
    log "[$mode] 64 MiB source (16 MiB data: a 4 s bulk pass) -> garbage target, --speed 4M; 1 MiB writes into source holes at 40 and 60 MiB during bulk"
    start_target blkmig "$TGT"
    start_mirror "m-$mode" --copy-mode "$mode" --speed 4M --serve-unix "$TMP/serve-$mode.sock" \
        --on-ready wait --control "$TMP/ctl-$mode.sock" "$SRC" "$TARGET_URI"
    wait_unix "$TMP/serve-$mode.sock"
    wait_unix "$TMP/ctl-$mode.sock"
    timeout 20 "$PY3" "$TMP/fill.py" "nbd+unix:///?socket=$TMP/serve-$mode.sock" 40 60 ||
        fail "[$mode] the writer failed"
    state=$("$BLKMIG" control "$TMP/ctl-$mode.sock" query | "$PY3" -c 'import json,sys; print(json.load(sys.stdin)["return"]["state"])')
    log "[$mode]   writes done while the mirror is in state $state"
    [ "$state" = bulk ] || soft_fail "[$mode] the writes landed in state $state, not during bulk (test too slow?)"
    wait_event "$TMP/m-$mode.json" ready 30 || fail "[$mode] no ready event within 30 s"
    "$BLKMIG" control "$TMP/ctl-$mode.sock" complete >/dev/null || fail "[$mode] control complete failed"
    wait_pid "$MIRROR_PID" 30
    [ "$WAIT_RC" -eq 0 ] || fail "[$mode] blkmig mirror exited $WAIT_RC: $(tail -3 "$TMP/m-$mode.err")"
    summary "$TMP/m-$mode.json"
    [ "$S_RESULT" = done ] || soft_fail "[$mode] summary result '$S_RESULT'"
    stop_target
    log "[$mode] md5 of source == md5 of target (the written blocks survived the hole zeroing)"
    a=$(sum "$SRC")
    b=$(sum "$TGT")
    if [ "$a" != "$b" ]; then
        first=$(cmp "$SRC" "$TGT" | head -1 || true)
        nbad=$(cmp -l "$SRC" "$TGT" | wc -l || true)
        soft_fail "[$mode] mirror said done but the target differs: $first; $nbad bytes differ"
    fi
    check_sanitizer_log "$TMP/m-$mode.err" "$TMP/target.log"
done
finish_test
