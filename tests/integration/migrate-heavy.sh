#!/usr/bin/env bash
# Integration: `blkmig migrate --with-disk --verify --max-time 60` over a link shaped to 100 Mbit/s
# (tc tbf, network namespaces: root only) with a guest that dirties RAM faster than the link
# (64 MiB/s over a 128 MiB hot set) and writes its disk at 16 MiB/s. It must either complete
# (verified, with auto-converge throttling or disk write-blocking to get there) or give up cleanly
# at the bound (exit 1, the source guest running); either way the guest's self-check finds no
# mismatch wherever it runs.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/migrate-lib.sh"

[ "$(id -u)" -eq 0 ] || skip "needs root: a tbf-shaped link between two network namespaces"
[ "${MIG_HOSTS:-auto}" != loopback ] || skip "MIG_HOSTS=loopback: this test needs a shaped link"
RATE=${HEAVY_RATE:-100mbit}
MAX_TIME=${HEAVY_MAX_TIME:-60}
MIG_HOSTS=netns mig_hosts_up --rate "$RATE"
[ "$MIG_MODE" = netns ] || skip "no network namespaces"

# Smaller than the standard heavy scenario, so that the bulk copy (~80 MiB of disk and RAM data
# at ~11.5 MiB/s) leaves time for the dirty rounds within the bound.
MIG_RAM=256M
MIG_DISK=512M
MIG_FILL=ram-fill=32M,disk-fill=48M
HEAVY=mem=64M/s,hot=128M,disk=16M/s
t_start=$SECONDS

mig_case heavy
log "heavy: RAM $MIG_RAM ($HEAVY), disk $MIG_DISK ($MIG_FILL), link $RATE; migrate --with-disk --verify --max-time $MAX_TIME"
mig_start_source "$HEAVY"
mig_start_dest
sleep 1
vm_status "$SRC_SOCK" || fail "the source does not answer"
rw0=$VM_RAM_WRITES dw0=$VM_DISK_WRITES t0=$(now_ms)
sleep 1
vm_status "$SRC_SOCK" || fail "the source does not answer"
log "  guest before: $(( (VM_RAM_WRITES - rw0) * 1000 / ($(now_ms) - t0) )) RAM writes/s, $(( (VM_DISK_WRITES - dw0) * 1000 / ($(now_ms) - t0) )) disk writes/s"

mig_migrate $((MAX_TIME + 90)) --with-disk --verify --max-time "$MAX_TIME"
log "  migrate exit $MIG_RC after $MIG_MS ms: $(mig_summary)"
status=$(mig_report status)
throttle_max=$(mig_report throttle_max)
switches=$(mig_report disk.mode_switches)
wb=$(mig_report disk.write_blocking)
active=$(mig_report disk.active_bytes)
disk_mode_events=$(grep -c '"event":"disk-mode"' "$MIG_JSON" || true)
log "  throttle max ${throttle_max}%, disk mode switches $switches (write-blocking now: $wb; bytes forwarded by guest writes: $active; disk-mode events: $disk_mode_events)"

case $MIG_RC in
0)
    log "outcome: completed"
    [ "$status" = completed ] || soft_fail "exit 0 but status '$status'"
    [ "$(mig_report verified)" = true ] || soft_fail "completed but verified '$(mig_report verified)'"
    # A guest dirtying RAM faster than the link cannot converge on its own: something must have
    # held it back.
    if [ "${throttle_max:-0}" -gt 0 ] || [ "${switches:-0}" -gt 0 ] || [ "${active:-0}" -gt 0 ]; then
        used=
        [ "${throttle_max:-0}" -eq 0 ] || used="auto-converge (vCPU throttle up to ${throttle_max}%)"
        { [ "${switches:-0}" -eq 0 ] && [ "${active:-0}" -eq 0 ]; } ||
            used="${used:+$used and }disk write-blocking ($switches mode switches, $active bytes forwarded)"
        log "  converged with $used"
    else
        soft_fail "completed without throttling the vCPU or blocking disk writes (throttle_max $throttle_max, mode switches $switches)"
    fi
    mig_wait "$SRC_PID" 20
    [ "$WAIT_RC" -eq 0 ] || soft_fail "the source exited $WAIT_RC after the migration"
    _mig_wait_start "$DST_PID" "$DST_SOCK" "$DST_LOG" "" 20 "the destination's VM"
    assert_guest_healthy "heavy (destination)" "$DST_SOCK" writes || true
    vm_status "$DST_SOCK" || true
    [ "$VM_THROTTLE" = 0 ] || soft_fail "the guest on the destination is throttled ($VM_THROTTLE%)"
    mig_quit_vm "heavy: destination" "$DST_SOCK" "$DST_PID"
    ;;
1)
    log "outcome: gave up at the bound"
    [ "$status" = failed ] || soft_fail "exit 1 but status '$status'"
    err=$(mig_report error)
    [[ $err =~ did\ not\ converge\ within\ $MAX_TIME\ s ]] || soft_fail "exit 1 with error '$err' (expected: did not converge within $MAX_TIME s)"
    total=$(mig_report total_ms)
    [ "${total:-0}" -ge $((MAX_TIME * 1000)) ] && [ "${total:-0}" -le $(((MAX_TIME + 10) * 1000)) ] ||
        soft_fail "gave up after total_ms '$total', expected $MAX_TIME s to $((MAX_TIME + 10)) s"
    assert_guest_healthy "heavy (source)" "$SRC_SOCK" writes || true
    vm_status "$SRC_SOCK" || true
    [ "$VM_MIGRATING" = false ] || soft_fail "the source still says migrating"
    [ "$VM_THROTTLE" = 0 ] || soft_fail "the guest is still throttled ($VM_THROTTLE%) after the rollback"
    assert_dest_failed "heavy" 1 'migration failed: the source gave up: did not converge'
    mig_quit_vm "heavy: source" "$SRC_SOCK" "$SRC_PID"
    ;;
*)
    fail "blkmig migrate exited $MIG_RC (expected 0 or 1): $(mig_tail "$MIG_ERR") $(mig_report error)"
    ;;
esac
mig_check_logs
[ ! -s "$TMP/control.err" ] || check_sanitizer_log "$TMP/control.err"
log "done in $((SECONDS - t_start)) s"
finish_test
