#!/usr/bin/env bash
# Integration: strangers and rude peers cannot end, block or corrupt a migration.
# (a) silent and bogus connections to `blkmig incoming --listen` before the source: the
#     destination drops them and goes on listening; the migration completes and verifies.
# (b) 70 idle connections to the migration's NBD port before, and 70 more during, the
#     migration: the source's connections still get in; it completes and verifies.
# (c) a third party that knows an export name starts a WRITE on the NBD port and stalls its
#     payload: the destination does not resume; the source's VM runs on; the export name is in
#     no log line above debug.
# (d) ABORT reasons with an escape character and a newline, from a fake destination and a
#     fake source: logged escaped, on one line.
# (e) a fake source sends COMPLETE before STATE: the destination refuses, without a leak
#     (LeakSanitizer in sanitizer builds).
MIG_RAM=${MIG_RAM:-64M}
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/migrate-lib.sh"
IDLE=mem=0,disk=0
PEER=$top_srcdir/tests/integration/mig-peer.py
EVIL='evil\e[31mRED\nblkmig: error: forged line'
EVIL_SHOWN='evil\x1b[31mRED\nblkmig: error: forged line'

mig_hosts_up
t_start=$SECONDS

# peer_bg NAME ARGS...: mig-peer.py in host A (host B with PEER_IN=B: a listener on
# $DEST_ADDR), in the background; PEER_PID, its output in $CASE_DIR/NAME.out.
peer_bg() {
    local name=$1 in=("${IN_A[@]}")
    shift
    [ "${PEER_IN:-A}" = A ] || in=("${IN_B[@]}")
    "${in[@]}" "$PY3" "$PEER" "$@" </dev/null >"$CASE_DIR/$name.out" 2>"$CASE_DIR/$name.err" &
    PEER_PID=$!
    mig_track "$PEER_PID"
}

# wait_file PATH SECONDS WHAT: wait for PATH to be non-empty (the peer PEER_PID must live).
wait_file() {
    local deadline=$((SECONDS + $2))
    until [ -s "$1" ]; do
        kill -0 "$PEER_PID" 2>/dev/null || fail "$3: mig-peer.py exited: $(mig_tail "$CASE_DIR"/*.err 5)"
        [ $SECONDS -lt $deadline ] || fail "$3: not ready after $2 s"
        sleep 0.05
    done
}

# check_completed LABEL: the migration completed and verified, the source process ended, the
# destination runs a clean guest on an image equal to the source's (an idle guest).
check_completed() {
    local label=$1
    log "  $label: migrate exit $MIG_RC after $MIG_MS ms: $(mig_summary)"
    [ "$MIG_RC" -eq 0 ] || fail "$label: blkmig migrate exited $MIG_RC: $(mig_tail "$MIG_ERR") $(mig_report error)"
    [ "$(mig_report status)" = completed ] || soft_fail "$label: status '$(mig_report status)'"
    [ "$(mig_report verified)" = true ] || soft_fail "$label: verified '$(mig_report verified)'"
    mig_wait "$SRC_PID" 20
    [ "$WAIT_RC" -eq 0 ] || soft_fail "$label: the source process exited $WAIT_RC"
    _mig_wait_start "$DST_PID" "$DST_SOCK" "$DST_LOG" "" 20 "$label: the destination's VM"
    assert_guest_healthy "$label (destination)" "$DST_SOCK" || true
    [ "$(sparse_sum "$SRC_IMG")" = "$(sparse_sum "$DST_IMG")" ] ||
        soft_fail "$label: the destination's image differs from the source's"
    mig_quit_vm "$label: destination" "$DST_SOCK" "$DST_PID"
}

# ---- (a) strays on the migration port ----
mig_case strays
log "(a) 23 silent or bogus connections to the migration port, then the source"
mig_start_source "$IDLE"
mig_start_dest
peer_bg strays strays "$DEST_ADDR" "$DST_PORT" "$CASE_DIR/strays.ready"
wait_file "$CASE_DIR/strays.ready" 30 "(a)"
mig_migrate 180 --with-disk --verify
check_completed "(a) strays"
n=$(grep -c 'dropped a connection' "$DST_LOG" || true)
[ "$n" -ge 1 ] || soft_fail "(a): the destination logged no dropped connection: $(mig_tail "$DST_LOG")"
log "  (a): the destination dropped $n connections"
mig_kill "$PEER_PID" TERM
mig_check_logs

# ---- (b) idle connections fill the NBD port ----
mig_case flood
log "(b) 70 idle connections to the NBD port before the migration, 70 more during it"
mig_start_source "$IDLE"
mig_start_dest
peer_bg flood1 flood "$DEST_ADDR" "$DST_NBD_PORT" 70 "$CASE_DIR/flood1.ready"
wait_file "$CASE_DIR/flood1.ready" 30 "(b) first 70"
flood1=$PEER_PID
mig_migrate_bg --with-disk --verify
# The second burst once the mirror runs (its connections are in).
deadline=$((SECONDS + 60))
while ph=$(vm_phase "$SRC_SOCK"); [ $SECONDS -lt $deadline ]; do
    case $ph in disk-bulk | ram-round0 | dirty-rounds | completed | rolled-back | unknown) break ;; esac
    sleep 0.05
done
log "  (b): 70 more during phase '$ph'"
peer_bg flood2 flood "$DEST_ADDR" "$DST_NBD_PORT" 70 "$CASE_DIR/flood2.ready"
mig_migrate_wait 180
check_completed "(b) flood"
log "  (b): the NBD server dropped $(grep -c 'dropped to make room' "$DST_LOG" || true) idle connections"
mig_kill "$flood1" TERM
mig_kill "$PEER_PID" TERM
mig_check_logs

# ---- (c) a third party's stalled WRITE ----
mig_case stall
log "(c) a third party negotiates the export, sends a WRITE and stalls its payload"
mig_start_source "$IDLE"
mig_start_dest --log-level debug
PEER_IN=B peer_bg proxy stall-proxy "$DEST_ADDR" "$CASE_DIR/proxy.port" "$DEST_ADDR" "$DST_PORT" vda "$CASE_DIR/stall.name"
wait_file "$CASE_DIR/proxy.port" 30 "(c) proxy"
MIG_URI=tcp:$DEST_ADDR:$(cat "$CASE_DIR/proxy.port") mig_migrate 180 --with-disk --verify
MIG_URI=
log "  (c): migrate exit $MIG_RC after $MIG_MS ms: $(mig_report error)"
[ -s "$CASE_DIR/stall.name" ] || fail "(c): the third party did not get in: $(mig_tail "$CASE_DIR/proxy.err" 5)"
name=$(cat "$CASE_DIR/stall.name")
[ "$MIG_RC" -eq 1 ] || soft_fail "(c): migrate exited $MIG_RC, expected 1 (failed, the VM stays)"
[ "$(mig_report status)" = failed ] || soft_fail "(c): status '$(mig_report status)'"
mig_report error | grep -q 'refused to resume.*NBD' ||
    soft_fail "(c): the source's error does not give the destination's reason: '$(mig_report error)'"
assert_guest_healthy "(c) stall (source)" "$SRC_SOCK" || true
assert_dest_failed "(c) stall" 1 'still unfinished after the source.s COMPLETE'
grep -q ": debug: .*$name" "$DST_LOG" || soft_fail "(c): the debug log never shows the export name"
n=$(grep -v ': debug: ' "$DST_LOG" | grep -c -- "$name" || true)
[ "$n" -eq 0 ] || soft_fail "(c): the export name is in $n log lines above debug: $(grep -v ': debug: ' "$DST_LOG" | grep -m1 -- "$name")"
mig_kill "$PEER_PID" TERM
mig_quit_vm "(c): source" "$SRC_SOCK" "$SRC_PID"
mig_check_logs

# ---- (d) ABORT reasons that try to forge log lines ----
# no_raw LABEL FILE: FILE holds the reason escaped, and no escape character nor forged line.
no_raw() {
    grep -qF -- "$EVIL_SHOWN" "$2" || soft_fail "$1: the reason is not shown escaped: $(mig_tail "$2")"
    ! grep -q $'\x1b' "$2" || soft_fail "$1: a raw escape character reached the log"
    ! grep -q '^blkmig: error: forged line' "$2" || soft_fail "$1: a forged line reached the log"
}
mig_case abort
log "(d) a fake destination answers HELLO with ABORT '$EVIL'"
mig_start_source "$IDLE"
PEER_IN=B peer_bg fakedest fake-dest "$DEST_ADDR" "$CASE_DIR/fakedest.port" "$CASE_DIR/hello.bin" "$EVIL"
wait_file "$CASE_DIR/fakedest.port" 30 "(d) fake destination"
MIG_URI=tcp:$DEST_ADDR:$(cat "$CASE_DIR/fakedest.port") mig_migrate 60 --with-disk
MIG_URI=
[ "$MIG_RC" -eq 1 ] || soft_fail "(d): migrate exited $MIG_RC, expected 1"
no_raw "(d) source log" "$SRC_LOG"
mig_report error >"$CASE_DIR/report-error.txt"
no_raw "(d) migrate's report" "$CASE_DIR/report-error.txt"
mig_kill "$PEER_PID" TERM
[ -s "$CASE_DIR/hello.bin" ] || fail "(d): the fake destination saved no HELLO"

log "(d) a fake source sends HELLO, then ABORT '$EVIL'"
mig_start_dest
peer_bg fakesrc fake-source "$DEST_ADDR" "$DST_PORT" "$CASE_DIR/hello.bin" abort "$EVIL"
assert_dest_failed "(d) fake source" 1 'the source gave up'
no_raw "(d) destination log" "$DST_LOG"
mig_kill "$PEER_PID" TERM

# ---- (e) COMPLETE before STATE ----
log "(e) a fake source sends COMPLETE before STATE"
mig_start_dest
peer_bg fakesrc2 fake-source "$DEST_ADDR" "$DST_PORT" "$CASE_DIR/hello.bin" complete-first
assert_dest_failed "(e) COMPLETE before STATE" 1 'COMPLETE before the VM state'
check_sanitizer_log "$DST_LOG"
grep -q '^answer 8 ' "$CASE_DIR/fakesrc2.out" ||
    soft_fail "(e): the fake source got no ABORT: $(mig_tail "$CASE_DIR/fakesrc2.out")"
mig_kill "$PEER_PID" TERM
mig_quit_vm "(d): source" "$SRC_SOCK" "$SRC_PID"
mig_check_logs

log "done in $((SECONDS - t_start)) s ($MIG_MODE)"
finish_test
