#!/usr/bin/env bash
# Integration: `blkmig mirror` with a writer faster than the speed-limited copy: write-blocking and auto modes converge (writer keeps its rate), background mode cannot until the writer stops.
. "$(dirname "$0")/../lib.sh"

need_cmd fio
need_cmd timeout coreutils
need_cmd python3
fio --enghelp=nbd >/dev/null 2>&1 || skip "this fio has no nbd ioengine"

MiB=$((1024 * 1024))
RATE_MIB=16  # the writer, MiB/s
SPEED=4M     # the copy limit
FIO_SECS=8
MIN_PCT=80   # of the writer's rate, in write-blocking mode

# The source: 128 MiB, 8 MiB of data (a 2 s bulk pass at 4 MiB/s), holes elsewhere.
MASTER=$TMP/master.img
truncate -s 128M "$MASTER"
dd if=/dev/urandom of="$MASTER" bs=1M count=8 seek=16 conv=notrunc status=none

# fio_stats JSON: "ERROR WRITE_BYTES BW_BYTES" of the first job.
fio_stats() {
    "$PY3" -c '
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
print(j["error"], j["write"]["io_bytes"], j["write"]["bw_bytes"])' "$1"
}

query_state() {
    "$BLKMIG" control "$1" query | "$PY3" -c 'import json,sys; print(json.load(sys.stdin)["return"]["state"])'
}

cd "$TMP"
for mode in write-blocking auto background; do
    t0=$SECONDS
    src=$TMP/src-$mode.img tgt=$TMP/tgt-$mode.img
    serve=$TMP/serve-$mode.sock ctl=$TMP/ctl-$mode.sock ev=$TMP/m-$mode.json
    cp --sparse=always "$MASTER" "$src"
    truncate -s 128M "$tgt"
    start_target blkmig "$tgt"
    start_mirror "m-$mode" --copy-mode "$mode" --speed $SPEED --serve-unix "$serve" \
        --on-ready wait --control "$ctl" "$src" "$TARGET_URI"
    wait_unix "$serve"
    wait_unix "$ctl"
    n0=$(wc -l <"$ev")
    state=$(query_state "$ctl")
    log "[$mode] --speed $SPEED; fio random writes 4k-64k at ${RATE_MIB} MiB/s for ${FIO_SECS} s (mirror in state $state)"
    [ "$state" = bulk ] || [ "$state" = setup ] ||
        soft_fail "[$mode] the writer started in state $state, not during bulk"
    rc=0
    timeout 60 fio --name=w --ioengine=nbd --uri="nbd+unix:///?socket=$serve" --rw=randwrite \
        --bsrange=4k-64k --iodepth=4 --rate=,${RATE_MIB}m --time_based --runtime=$FIO_SECS \
        --randseed=77 --output-format=json --output="$TMP/fio-$mode.json" \
        2>"$TMP/fio-$mode.err" || rc=$?
    n1=$(wc -l <"$ev")
    [ $rc -eq 0 ] || fail "[$mode] fio exited $rc: $(tail -3 "$TMP/fio-$mode.err")"
    read -r ferr fbytes fbw < <(fio_stats "$TMP/fio-$mode.json")
    [ "$ferr" -eq 0 ] || fail "[$mode] fio job error $ferr"
    kill -0 "$MIRROR_PID" 2>/dev/null ||
        fail "[$mode] blkmig mirror exited while the writer ran: $(tail -3 "$TMP/m-$mode.err")"
    pct=$((fbw * 100 / (RATE_MIB * MiB)))
    during=$(json_events "$ev" "$n0" "$n1" | grep -vx stats | tr '\n' ' ' || true)
    log "[$mode]   fio: no error, $((fbytes / MiB)) MiB written, $(awk -v b="$fbw" 'BEGIN { printf "%.2f", b / 1048576 }') MiB/s = ${pct}% of ${RATE_MIB} MiB/s"
    log "[$mode]   events while the writer ran: $during"

    case $mode in
    write-blocking)
        log "[$mode] the writer keeps >= ${MIN_PCT}% of its ${RATE_MIB} MiB/s (writes wait for the target, not for the copy limit)"
        [ "$pct" -ge $MIN_PCT ] || soft_fail "[$mode] fio got only ${pct}% of ${RATE_MIB} MiB/s"
        m=$(json_get "$ev" bulk mode)
        [ "$m" = write-blocking ] || soft_fail "[$mode] the bulk event says mode '$m'"
        ;;
    auto)
        log "[$mode] the copy does not converge: auto switches to write-blocking (event \"write-blocking\")"
        grep -qx write-blocking <<<"$(json_events "$ev")" ||
            soft_fail "[$mode] no write-blocking event: $(json_events "$ev" | grep -vx stats | tr '\n' ' ')"
        ;;
    background)
        log "[$mode] no ready while the writer ran (a 4 MiB/s copy cannot keep up with ${RATE_MIB} MiB/s of writes)"
        ! grep -qx ready <<<"$(json_events "$ev" "$n0" "$n1")" ||
            soft_fail "[$mode] ready while the writer was running: $during"
        ;;
    esac

    # The limit only makes the test slow from here on: lift it (set-speed) and let it converge.
    if [ "$mode" != write-blocking ]; then
        reply=$("$BLKMIG" control "$ctl" set-speed '{"speed":"0"}') ||
            fail "[$mode] set-speed failed: $reply"
        [ "$reply" = '{"return":{}}' ] || fail "[$mode] set-speed replied $reply"
    fi
    log "[$mode] the writer stopped: ready, then complete -> exit 0, result done"
    wait_event "$ev" ready 30 || fail "[$mode] no ready within 30 s after the writer stopped"
    deadline=$((SECONDS + 20))
    until [ "$(query_state "$ctl")" = ready ]; do
        [ $SECONDS -lt $deadline ] || fail "[$mode] not ready 20 s after the writer stopped"
        sleep 0.1
    done
    "$BLKMIG" control "$ctl" complete >/dev/null || fail "[$mode] control complete failed"
    wait_pid "$MIRROR_PID" 30
    [ "$WAIT_RC" -eq 0 ] || fail "[$mode] blkmig mirror exited $WAIT_RC: $(tail -3 "$TMP/m-$mode.err")"
    result=$(json_get "$ev" summary result)
    [ "$result" = done ] || fail "[$mode] summary result '$result'"
    log "[$mode]   summary: $(json_get "$ev" summary bytes_sent) bytes sent, $(json_get "$ev" summary active_bytes) forwarded by writers, $(json_get "$ev" summary mode_switches) mode switches, time to ready $(json_get "$ev" summary time_to_ready_ms) ms"
    if [ "$mode" != background ]; then
        active=$(json_get "$ev" summary active_bytes)
        [ "$active" -gt 0 ] || soft_fail "[$mode] active_bytes $active: no write was forwarded by a writer"
    fi
    stop_target
    log "[$mode] md5 of source == md5 of target"
    a=$(sum "$src")
    b=$(sum "$tgt")
    [ "$a" = "$b" ] || soft_fail "[$mode] source md5 $a != target md5 $b (cmp: $(cmp "$src" "$tgt" | head -1))"
    check_sanitizer_log "$TMP/m-$mode.err" "$TMP/target.log"
    rm -f "$src" "$tgt"
    log "[$mode] done ($((SECONDS - t0)) s)"
done
cd /
finish_test
