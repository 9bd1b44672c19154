#!/usr/bin/env bash
# Integration: small idle guests (64 MiB RAM, 64 MiB disk, 16 MiB of each filled, no writes)
# migrated with --with-disk, several times over: each must complete (and verify) well within
# its --max-time. Such a guest is copied whole within a tick or two; the loop once left round 0
# uncounted when it had waited at its end for the disks (nothing was dirty, so no step came to
# end it), or kept a throughput measured in the first tick alone (a few KB/s: the expected
# pause stayed over the limit). Either way it never switched over.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/migrate-lib.sh"

MIG_RAM=64M
MIG_DISK=64M
MIG_FILL=ram-fill=16M,disk-fill=16M
RUNS=${RUNS:-8}
MAX_TIME=60 # an idle copy of this size takes about a second; a stuck one gives up at this bound

mig_hosts_up
for i in $(seq "$RUNS"); do
    mig_case "idle$i"
    mig_start_source mem=0,disk=0
    mig_start_dest
    mig_migrate $((MAX_TIME + 60)) --with-disk --verify --max-time "$MAX_TIME"
    log "run $i: migrate exit $MIG_RC after $MIG_MS ms: $(mig_summary)"
    if [ "$MIG_RC" -ne 0 ] || [ "$(mig_report status)" != completed ]; then
        soft_fail "run $i: exit $MIG_RC, status '$(mig_report status)', phase '$(vm_phase "$SRC_SOCK")': $(mig_report error) $(mig_tail "$MIG_ERR")"
        mig_kill "$SRC_PID"
        mig_kill "$DST_PID"
        break # each stuck run would take --max-time
    fi
    [ "$(mig_report verified)" = true ] || soft_fail "run $i: the report says verified '$(mig_report verified)'"
    mig_wait "$SRC_PID" 20
    [ "$WAIT_RC" -eq 0 ] || soft_fail "run $i: the source process exited $WAIT_RC after the migration"
    _mig_wait_start "$DST_PID" "$DST_SOCK" "$DST_LOG" "" 20 "run $i: the destination's VM"
    mig_quit_vm "run $i: destination" "$DST_SOCK" "$DST_PID"
    mig_check_logs
done
finish_test
