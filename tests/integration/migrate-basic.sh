#!/usr/bin/env bash
# Integration: `blkmig migrate` end to end between two hosts (network namespaces when root,
# loopback otherwise): idle and moderate guests with --with-disk --verify (completed, verified,
# source gone, destination guest running and clean, downtime within the limit), shared storage
# (no --with-disk, the destination opens the same image), --force over an old image (replaced
# once the migration has completed), and bad input (a bad URI, nobody
# listening, an existing image without --force, a VM over the destination's --max-ram or
# --max-disk): the source keeps running, untouched.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/migrate-lib.sh"

LIMIT_MS=300 # blkmig's default --downtime-limit
if [ "$MIG_SANITIZED" = 1 ]; then MARGIN_MS=${MARGIN_MS:-700}; else MARGIN_MS=${MARGIN_MS:-200}; fi
MODERATE=mem=32M/s,hot=64M,disk=8M/s
IDLE=mem=0,disk=0

mig_hosts_up
t_start=$SECONDS

# check_completed LABEL [writes]: the last migration completed and verified, the source process
# ended (exit 0), the destination runs a clean guest (with "writes": whose RAM and disk writes
# go on), downtimes within the limit.
check_completed() {
    local label=$1 writes=${2:-} st ver dt gdt
    st=$(mig_report status)
    ver=$(mig_report verified)
    dt=$(mig_report downtime_ms)
    gdt=$(mig_report guest_downtime_ms)
    log "  $label: migrate exit $MIG_RC after $MIG_MS ms: $(mig_summary)"
    [ "$MIG_RC" -eq 0 ] || fail "$label: blkmig migrate exited $MIG_RC: $(mig_tail "$MIG_ERR") $(mig_report error)"
    [ "$st" = completed ] || soft_fail "$label: the report says status '$st'"
    [ "$ver" = true ] || soft_fail "$label: the report says verified '$ver'"
    # The destination made its disks durable after the resume, and said so.
    local res dur
    res=$(mig_report resumed_ms)
    dur=$(mig_report durable_ms)
    [ "$(mig_report durable)" = true ] && [ -n "$res" ] && [ -n "$dur" ] && [ "$dur" -ge "$res" ] ||
        soft_fail "$label: durable '$(mig_report durable)', resumed_ms '$res', durable_ms '$dur' ($(mig_report durable_error))"
    [ -z "$(find "$DST_DIR" -maxdepth 1 -name '*.blkmig-tmp')" ] ||
        soft_fail "$label: temporary images left after DURABLE: $(ls -A "$DST_DIR")"
    local bound=$((LIMIT_MS + MARGIN_MS))
    [ -n "$dt" ] && "$PY3" -c "import sys; sys.exit(not float('$dt') < $bound)" ||
        soft_fail "$label: downtime_ms '$dt' not under $bound"
    [ -n "$gdt" ] && "$PY3" -c "import sys; sys.exit(not float('$gdt') < $bound)" ||
        soft_fail "$label: guest_downtime_ms '$gdt' not under $bound"
    mig_wait "$SRC_PID" 20
    [ "$WAIT_RC" -eq 0 ] ||
        soft_fail "$label: the source process exited $WAIT_RC after the migration (expected 0): $(mig_tail "$SRC_LOG")"
    grep -q 'the VM now runs on the destination' "$SRC_LOG" ||
        soft_fail "$label: the source's log does not say the VM left: $(mig_tail "$SRC_LOG")"
    _mig_wait_start "$DST_PID" "$DST_SOCK" "$DST_LOG" "" 20 "$label: the destination's VM"
    assert_guest_healthy "$label (destination)" "$DST_SOCK" $writes || true
}

# ---- bad input (quick) ----
mig_case bad
mig_start_source "$MODERATE"
log "bad input: blkmig migrate with a bad URI -> exit 2"
for uri in nonsense udp:127.0.0.1:7700 tcp:127.0.0.1 tcp::7700 tcp:127.0.0.1:port; do
    MIG_URI=$uri mig_migrate 20 --with-disk
    [ "$MIG_RC" -eq 2 ] || soft_fail "migrate to '$uri' exited $MIG_RC, expected 2"
    grep -q 'tcp:HOST:PORT' "$MIG_ERR" || soft_fail "migrate to '$uri': stderr does not say tcp:HOST:PORT: $(mig_tail "$MIG_ERR")"
done
MIG_URI=
vm_status "$SRC_SOCK" && [ "$VM_MIGRATING" = false ] || soft_fail "after bad URIs the VM says migrating '$VM_MIGRATING'"

log "bad input: nobody listens at the destination's port -> exit 1, the source keeps running"
mig_free_ports
MIG_URI=tcp:$DEST_ADDR:$DST_PORT mig_migrate 60 --with-disk --verify
log "  exit $MIG_RC after $MIG_MS ms: $(mig_report error)"
[ "$MIG_RC" -eq 1 ] || soft_fail "migrate to a closed port exited $MIG_RC, expected 1"
[ "$(mig_report status)" = failed ] || soft_fail "migrate to a closed port: status '$(mig_report status)'"
mig_report error | grep -q 'cannot connect' || soft_fail "migrate to a closed port: error '$(mig_report error)'"
MIG_URI=
assert_guest_healthy "closed port (source)" "$SRC_SOCK" writes || true

log "bad input: a destination that never answers the connection -> exit 1 within --peer-timeout"
# A listener whose accept queue is full drops further SYNs: connect() would wait for minutes.
"${IN_B[@]}" "$PY3" - "$TMP/blackhole.port" "$DEST_ADDR" <<'PY' &
import socket, sys, time
s = socket.socket()
s.bind((sys.argv[2], 0))
s.listen(0)
fill = [socket.create_connection(s.getsockname())]  # backlog 0: one pending fills the queue
open(sys.argv[1], "w").write(str(s.getsockname()[1]))
time.sleep(120)
PY
bh_pid=$!
mig_track "$bh_pid"
for _ in $(seq 100); do [ -s "$TMP/blackhole.port" ] && break; sleep 0.05; done
MIG_URI=tcp:$DEST_ADDR:$(cat "$TMP/blackhole.port") mig_migrate 30 --with-disk --peer-timeout 1500
log "  exit $MIG_RC after $MIG_MS ms: $(mig_report error)"
[ "$MIG_RC" -eq 1 ] || soft_fail "black hole: migrate exited $MIG_RC, expected 1"
mig_report error | grep -q 'cannot connect.*timed out' ||
    soft_fail "black hole: error '$(mig_report error)'"
[ "$MIG_MS" -le 8000 ] || soft_fail "black hole: took $MIG_MS ms (--peer-timeout 1500)"
MIG_URI=
mig_kill "$bh_pid" TERM
assert_guest_healthy "black hole (source)" "$SRC_SOCK" writes || true

log "the source's state saved and loaded back into it (x-state-roundtrip): the guest runs on, clean"
state_roundtrip "round trip" "$SRC_SOCK" || true

log "bad input: the destination's --disk-dir already holds vda.img (no --force) -> refused, file untouched"
mig_start_dest
truncate -s 64M "$DST_IMG"
dd if=/dev/urandom of="$DST_IMG" bs=1M count=2 seek=5 conv=notrunc status=none
sum_before=$(sum "$DST_IMG")
mig_migrate 60 --with-disk --verify
log "  exit $MIG_RC after $MIG_MS ms: $(mig_report error)"
[ "$MIG_RC" -eq 1 ] || soft_fail "existing image: migrate exited $MIG_RC, expected 1"
mig_report error | grep -qE 'refused.*(File exists|--force)' ||
    soft_fail "existing image: the error does not say why: '$(mig_report error)'"
mig_wait "$DST_PID" 20
[ "$WAIT_RC" -eq 1 ] || soft_fail "existing image: the destination exited $WAIT_RC, expected 1"
grep -qE 'migration failed.*File exists' "$DST_LOG" ||
    soft_fail "existing image: the destination's log lacks the reason: $(mig_tail "$DST_LOG")"
[ -f "$DST_IMG" ] || soft_fail "existing image: the destination removed the existing file"
[ -f "$DST_IMG" ] && [ "$(sum "$DST_IMG")" = "$sum_before" ] ||
    soft_fail "existing image: the existing file changed"
[ "$(stat -c %s "$DST_IMG")" -eq $((64 << 20)) ] || soft_fail "existing image: its size changed"
[ ! -e "$DST_SOCK" ] || soft_fail "existing image: the destination opened its control socket"
assert_guest_healthy "existing image (source)" "$SRC_SOCK" writes || true

for lim in max-ram max-disk; do
    log "bad input: a VM larger than the destination's --$lim 1M -> refused, nothing created"
    rm -f "$DST_IMG"
    mig_start_dest "--$lim" 1M
    mig_migrate 60 --with-disk
    log "  exit $MIG_RC after $MIG_MS ms: $(mig_report error)"
    [ "$MIG_RC" -eq 1 ] || soft_fail "--$lim: migrate exited $MIG_RC, expected 1"
    mig_report error | grep -qE "refused.*more than --$lim 1048576" ||
        soft_fail "--$lim: the error does not say why: '$(mig_report error)'"
    mig_wait "$DST_PID" 20
    [ "$WAIT_RC" -eq 1 ] || soft_fail "--$lim: the destination exited $WAIT_RC, expected 1"
    grep -qE "migration failed.*--$lim" "$DST_LOG" ||
        soft_fail "--$lim: the destination's log lacks the reason: $(mig_tail "$DST_LOG")"
    [ ! -e "$DST_IMG" ] || soft_fail "--$lim: the destination created $DST_IMG"
    assert_guest_healthy "--$lim (source)" "$SRC_SOCK" writes || true
done
rc=0
"$BLKMIG" incoming --listen 127.0.0.1:1 --disk-dir "$CASE_DIR" --control "$CASE_DIR/x.sock" \
    --max-ram 0 >/dev/null 2>"$CASE_DIR/maxram.err" </dev/null || rc=$?
[ "$rc" -eq 2 ] && grep -q 'max-ram 0: a size' "$CASE_DIR/maxram.err" ||
    soft_fail "--max-ram 0: exit $rc, $(cat "$CASE_DIR/maxram.err")"
mig_quit_vm "bad input: source" "$SRC_SOCK" "$SRC_PID"
mig_check_logs

# ---- idle and moderate, --with-disk --verify ----
for scen in idle moderate; do
    mig_case "$scen"
    if [ "$scen" = idle ]; then wl=$IDLE; else wl=$MODERATE; fi
    log "$scen ($wl; RAM $MIG_RAM, disk $MIG_DISK, $MIG_FILL): migrate --with-disk --verify"
    mig_start_source "$wl"
    if [ "$scen" = idle ]; then
        # --force over an old image of another size: the copy replaces it on completion.
        mig_start_dest --force
        head -c $((3 << 20)) /dev/urandom >"$DST_IMG"
    else
        mig_start_dest
    fi
    sleep 1 # let the workload run a while first
    mig_migrate 180 --with-disk --verify
    if [ "$scen" = idle ]; then check_completed "$scen"; else check_completed "$scen" writes; fi
    vm_status "$DST_SOCK" || true
    [ "$VM_DISK_PATH" = "$DST_IMG" ] ||
        soft_fail "$scen: the destination's disk is '$VM_DISK_PATH', expected $DST_IMG"
    [ "$(ls -A "$DST_DIR")" = vda.img ] ||
        soft_fail "$scen: the destination's disk folder holds $(ls -A "$DST_DIR" | tr '\n' ' ')"
    if [ "$scen" = idle ]; then
        # An idle guest writes no disk blocks after the switchover: the destination's image
        # must equal the source's (as of the switchover, when the source stopped), by content.
        a=$(sparse_sum "$SRC_IMG")
        b=$(sparse_sum "$DST_IMG")
        [ "$a" = "$b" ] || soft_fail "idle: the destination's image differs from the source's ($a vs $b)"
    fi
    mig_quit_vm "$scen: destination" "$DST_SOCK" "$DST_PID"
    mig_check_logs
done

# ---- shared storage: no --with-disk, the destination opens the source's image ----
mig_case shared
log "shared storage ($MODERATE): migrate --verify, destination --disk vda=<the source's image>"
mig_start_source "$MODERATE"
mig_start_dest --disk "vda=$SRC_IMG"
sleep 1
mig_migrate 180 --verify
check_completed "shared storage" writes
[ "$(mig_report disk.disks)" = 0 ] || soft_fail "shared storage: the report counts $(mig_report disk.disks) mirrored disks"
vm_status "$DST_SOCK" || true
[ "$VM_DISK_PATH" = "$SRC_IMG" ] ||
    soft_fail "shared storage: the destination's disk is '$VM_DISK_PATH', expected $SRC_IMG"
[ ! -e "$DST_IMG" ] || soft_fail "shared storage: the destination created $DST_IMG"
mig_quit_vm "shared storage: destination" "$DST_SOCK" "$DST_PID"
mig_check_logs
[ -s "$TMP/control.err" ] && check_sanitizer_log "$TMP/control.err"

log "done in $((SECONDS - t_start)) s ($MIG_MODE)"
finish_test
