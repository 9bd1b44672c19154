#!/usr/bin/env bash
# incoming-locks.sh: `blkmig incoming --with-disk --force` does not truncate an image that
# qemu-nbd holds for writing: the destination refuses it, naming the holder, the migration
# fails, the image is unchanged and the source's guest runs on. Once the holder is gone, the
# same migration onto the same path completes. On shared storage the image's locks move with
# the guest: after the migration the destination holds them (qemu-io cannot write the image),
# and after a rollback the source holds them again.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/migrate-lib.sh"

need_cmd qemu-nbd qemu-utils

MIG_RAM=64M
MIG_DISK=64M
MIG_FILL=ram-fill=16M,disk-fill=16M
MIG_HOSTS=${MIG_HOSTS:-loopback} mig_hosts_up

mig_case held
held=$CASE_DIR/b/held.img
head -c $((4 << 20)) /dev/urandom >"$held"
truncate -s "$MIG_DISK" "$held"
before=$(sum "$held")
start_bg qemu-nbd -f raw -k "$CASE_DIR/qemu.sock" "$held"
QPID=$BG_PID
wait_unix "$CASE_DIR/qemu.sock" 60

log "qemu-nbd holds the destination's image: incoming --force refuses it, untouched"
mig_start_source mem=1M/s,disk=1M/s
mig_start_dest --force --disk "vda=$held"
mig_migrate 120 --with-disk
log "  exit $MIG_RC after $MIG_MS ms: $(mig_report error)"
[ "$MIG_RC" -eq 1 ] || fail "migrate onto a held image exited $MIG_RC, expected 1"
mig_report error | grep -qE "in use by another process \(qemu-nbd, pid $QPID\)" ||
    soft_fail "the error does not name the holder: '$(mig_report error)'"
assert_dest_failed "held image" 1 "in use by another process \(qemu-nbd"
[ "$(sum "$held")" = "$before" ] || fail "the held image changed (truncated by --force?)"
[ "$(stat -c %s "$held")" -eq $((64 << 20)) ] || fail "the held image's size changed"
assert_guest_healthy "held image (source)" "$SRC_SOCK" writes || true

log "the holder gone: the same migration completes onto that path"
kill -TERM "$QPID"
wait_pid "$QPID" 20
mig_start_dest --force --disk "vda=$held"
mig_migrate 120 --with-disk --verify
[ "$MIG_RC" -eq 0 ] || fail "migrate exited $MIG_RC: $(mig_tail "$MIG_ERR") $(mig_report error)"
[ "$(mig_report verified)" = true ] || soft_fail "not verified: $(mig_report verified)"
mig_wait "$SRC_PID" 20
# The destination has the image now: QEMU's tools cannot write it.
if qemu-io -f raw -c 'write 0 4k' "$held" >"$CASE_DIR/qemu-io.out" 2>&1; then
    soft_fail "qemu-io wrote the image the destination's VM runs on"
fi
grep -q 'lock' "$CASE_DIR/qemu-io.out" || soft_fail "qemu-io: $(cat "$CASE_DIR/qemu-io.out")"
log "  completed and verified; qemu-io cannot write the image the destination runs on"
mig_quit_vm "destination" "$DST_SOCK" "$DST_PID"
mig_check_logs

# qemu_io_refused LABEL IMAGE: a qemu-io write-open of IMAGE fails with a lock error.
qemu_io_refused() {
    if qemu-io -f raw -c 'write 0 4k' "$2" >"$CASE_DIR/qemu-io.out" 2>&1; then
        soft_fail "$1: qemu-io wrote the image"
    elif ! grep -q 'lock' "$CASE_DIR/qemu-io.out"; then
        soft_fail "$1: qemu-io: $(cat "$CASE_DIR/qemu-io.out")"
    fi
}

mig_case shared
log "shared storage: the destination takes the image's locks when the guest moves"
mig_start_source mem=1M/s,disk=1M/s
qemu_io_refused "shared storage, before (source)" "$SRC_IMG"
mig_start_dest --disk "vda=$SRC_IMG"
mig_migrate 120 --verify
[ "$MIG_RC" -eq 0 ] || fail "migrate exited $MIG_RC: $(mig_tail "$MIG_ERR") $(mig_report error)"
mig_wait "$SRC_PID" 20
qemu_io_refused "shared storage, after (destination)" "$SRC_IMG"
log "  completed; the destination holds the image's locks"
mig_quit_vm "shared storage: destination" "$DST_SOCK" "$DST_PID"
mig_check_logs

mig_case shared-rollback
log "shared storage, the destination refuses to resume: the source takes the locks back"
mig_start_source mem=1M/s,disk=1M/s
MIG_DEST_ENV=BLKMIG_TEST_FAULT=dest-bad-digest mig_start_dest --disk "vda=$SRC_IMG"
mig_migrate 120 --verify
[ "$MIG_RC" -eq 1 ] || fail "migrate with a bad digest exited $MIG_RC, expected 1"
mig_wait "$DST_PID" 30
qemu_io_refused "shared storage, rolled back (source)" "$SRC_IMG"
grep -q 'cannot be taken back' "$SRC_LOG" && soft_fail "the source did not retake its locks: $(mig_tail "$SRC_LOG")"
assert_guest_healthy "shared storage, rolled back (source)" "$SRC_SOCK" writes || true
log "  rolled back; the source holds the image's locks again"
mig_quit_vm "shared storage: source" "$SRC_SOCK" "$SRC_PID"
mig_check_logs
finish_test
