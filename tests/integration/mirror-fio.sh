#!/usr/bin/env bash
# Integration: `blkmig mirror` under a live fio writer (crc32c-verified random writes) to blkmig nbd-serve, qemu-nbd and nbdkit: completes, target identical.
. "$(dirname "$0")/../lib.sh"

need_cmd fio
need_cmd timeout coreutils
need_cmd python3
fio --enghelp=nbd >/dev/null 2>&1 || skip "this fio has no nbd ioengine"

MiB=$((1024 * 1024))
SIZE_MIB=256
FIO_MIB=120 # at 20 MiB/s: about 6 s of writes
FIO_OFF_MIB=64

# The source: 256 MiB, 64 MiB of random data in 4 extents, holes elsewhere.
MASTER=$TMP/master.img
truncate -s ${SIZE_MIB}M "$MASTER"
for off in 8 72 136 200; do
    dd if=/dev/urandom of="$MASTER" bs=1M count=16 seek=$off conv=notrunc status=none
done

# fio_args ENGINE-ARGS...: the writer's job; the same job with --verify_only checks a file.
# Offsets 64-184 MiB cover data extents and holes of the source.
FIO_JOB=(--name=w --rw=randwrite --bsrange=4k-64k --size=${FIO_MIB}m --offset=${FIO_OFF_MIB}m
    --verify=crc32c --verify_fatal=1 --randseed=4242 --output-format=json)

# check_fio JSON WHAT WRITE_BYTES READ_BYTES: job error 0 and the expected volumes.
check_fio() {
    "$PY3" - "$@" <<'PY'
import json, sys
path, what, wexp, rexp = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
j = json.load(open(path))["jobs"][0]
bad = []
if j["error"] != 0:
    bad.append("error %d" % j["error"])
if wexp >= 0 and j["write"]["io_bytes"] != wexp:
    bad.append("wrote %d bytes, expected %d" % (j["write"]["io_bytes"], wexp))
if j["read"]["io_bytes"] != rexp:
    bad.append("verified %d bytes, expected %d" % (j["read"]["io_bytes"], rexp))
if bad:
    sys.exit("%s: %s" % (what, "; ".join(bad)))
print("%.1f" % (j["write"]["bw_bytes"] / 1048576))
PY
}

# fio writes its verify state files into the working directory.
cd "$TMP"

# run_one KIND: mirror a fresh copy of the source to KIND while fio writes, then check.
run_one() {
    local kind=$1 t0=$SECONDS
    local src=$TMP/src-$kind.img tgt=$TMP/tgt-$kind.img
    local serve=$TMP/serve-$kind.sock ctl=$TMP/ctl-$kind.sock ev=$TMP/mirror-$kind.json
    cp --sparse=always "$MASTER" "$src"
    truncate -s ${SIZE_MIB}M "$tgt"
    start_target "$kind" "$tgt"
    start_mirror "mirror-$kind" --serve-unix "$serve" --on-ready wait --control "$ctl" \
        "$src" "$TARGET_URI"
    wait_unix "$serve"
    wait_unix "$ctl"

    log "[$kind] fio: random writes 4k-64k at 20 MiB/s (--rate=,20m: writes only), ${FIO_MIB} MiB, crc32c verify, into the served source"
    local rc=0 bw
    timeout 60 fio "${FIO_JOB[@]}" --ioengine=nbd --uri="nbd+unix:///?socket=$serve" \
        --iodepth=4 --rate=,20m --output="$TMP/fio-$kind.json" 2>"$TMP/fio-$kind.err" || rc=$?
    [ $rc -eq 0 ] || fail "[$kind] fio exited $rc: $(tail -3 "$TMP/fio-$kind.err")"
    ! grep -qiE 'verify|error' "$TMP/fio-$kind.err" ||
        fail "[$kind] fio reported: $(grep -m3 -iE 'verify|error' "$TMP/fio-$kind.err")"
    bw=$(check_fio "$TMP/fio-$kind.json" "[$kind] fio" $((FIO_MIB * MiB)) $((FIO_MIB * MiB))) ||
        fail "[$kind] fio saw an error"
    log "[$kind]   fio: no error, ${FIO_MIB} MiB written and read back verified, ${bw} MiB/s"
    kill -0 "$MIRROR_PID" 2>/dev/null ||
        fail "[$kind] blkmig mirror exited while the writer ran: $(tail -3 "$TMP/mirror-$kind.err")"

    log "[$kind] the writer stopped: the mirror reaches ready (--on-ready wait keeps it there)"
    local state="" deadline=$((SECONDS + 20))
    while [ $SECONDS -lt $deadline ]; do
        state=$("$BLKMIG" control "$ctl" query | "$PY3" -c 'import json,sys; print(json.load(sys.stdin)["return"]["state"])') ||
            fail "[$kind] control query failed"
        [ "$state" != ready ] || break
        sleep 0.2
    done
    [ "$state" = ready ] || fail "[$kind] state '$state' 20 s after the writer stopped, not ready"

    log "[$kind] control complete: exit 0 and a summary with result done"
    local reply
    reply=$("$BLKMIG" control "$ctl" complete) || fail "[$kind] control complete failed: $reply"
    [ "$reply" = '{"return":{}}' ] || fail "[$kind] complete replied $reply"
    wait_pid "$MIRROR_PID" 30
    [ "$WAIT_RC" -eq 0 ] ||
        fail "[$kind] blkmig mirror exited $WAIT_RC after complete: $(tail -3 "$TMP/mirror-$kind.err")"
    local result events
    result=$(json_get "$ev" summary result)
    [ "$result" = done ] || fail "[$kind] summary result '$result': $(tail -1 "$ev")"
    events=$(json_events "$ev" | grep -vx stats | tr '\n' ' ')
    [[ $events =~ setup\ bulk\ dirty\ ready\ .*completing\ done\ summary ]] ||
        fail "[$kind] events: $events"
    local bulk_total bulk_done sent rounds ttr
    bulk_total=$(json_get "$ev" summary bulk_total)
    bulk_done=$(json_get "$ev" summary bulk_done)
    sent=$(json_get "$ev" summary bytes_sent)
    rounds=$(json_get "$ev" summary rounds)
    ttr=$(json_get "$ev" summary time_to_ready_ms)
    [ "$bulk_total" -ge $((64 * MiB)) ] && [ "$bulk_done" -eq "$bulk_total" ] ||
        fail "[$kind] bulk_done $bulk_done of bulk_total $bulk_total (64 MiB of data)"
    [ "$sent" -ge $((64 * MiB)) ] || fail "[$kind] bytes_sent $sent < the 64 MiB of data"
    log "[$kind]   events: $events"
    log "[$kind]   bytes_sent $((sent / MiB)) MiB, $rounds dirty rounds, time to ready $ttr ms"

    log "[$kind] target stopped; md5 of the source file == md5 of the target file"
    stop_target
    local a b
    a=$(sum "$src")
    b=$(sum "$tgt")
    [ "$a" = "$b" ] || fail "[$kind] source md5 $a != target md5 $b (cmp: $(cmp "$src" "$tgt" | head -1))"

    log "[$kind] fio --verify_only on the target file: it holds what the writer wrote"
    rc=0
    timeout 60 fio "${FIO_JOB[@]}" --ioengine=psync --filename="$tgt" --verify_only \
        --output="$TMP/fio-$kind-v.json" 2>"$TMP/fio-$kind-v.err" || rc=$?
    [ $rc -eq 0 ] || fail "[$kind] fio --verify_only on the target exited $rc: $(head -3 "$TMP/fio-$kind-v.err")"
    check_fio "$TMP/fio-$kind-v.json" "[$kind] verify_only" -1 $((FIO_MIB * MiB)) >/dev/null ||
        fail "[$kind] verify_only on the target"

    check_sanitizer_log "$TMP/mirror-$kind.err" "$TMP/target.log"
    rm -f "$src" "$tgt"
    log "[$kind] ok ($((SECONDS - t0)) s)"
}

ran=0
for kind in blkmig qemu-nbd nbdkit; do
    case $kind in
    qemu-nbd) command -v qemu-nbd >/dev/null || { log "qemu-nbd not installed (qemu-utils): target skipped"; continue; } ;;
    nbdkit) command -v nbdkit >/dev/null || { log "nbdkit not installed: target skipped"; continue; } ;;
    esac
    run_one "$kind"
    ran=$((ran + 1))
done
cd /
log "$ran target kinds passed"
exit 0
