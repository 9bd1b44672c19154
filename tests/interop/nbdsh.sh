#!/usr/bin/env bash
# Interop: NBD protocol corner cases of `blkmig nbd-serve` via nbdsh / libnbd python (nbdsh-corner.py).
. "$(dirname "$0")/../lib.sh"

need_cmd nbdsh libnbd-bin
need_cmd timeout coreutils
need_python_nbd

CORNER=$top_srcdir/tests/interop/nbdsh-corner.py
[ -r "$CORNER" ] || fail "missing $CORNER"

"$PYTHON_NBD" "$CORNER" setup "$TMP" || fail "creating the test images failed"

# Three servers: read-write with two exports, read-only, and one with a single named export.
start_server "$TMP/rw.img" --export second="$TMP/second.img"
RW_URI=$URI RW_PID=$SERVER_PID
start_server --readonly "$TMP/ro.img"
RO_URI=$URI RO_PID=$SERVER_PID
# (second.img is served writable by the first server, which holds its image locks: a second
# process may only read it, with --force-share.)
start_server --readonly --force-share --export only="$TMP/second.img"
SINGLE_URI=$URI SINGLE_PID=$SERVER_PID

log "nbdsh connects and sees the size"
out=$(nbdsh_run --base-allocation -u "$RW_URI" -c 'print(h.get_size(), h.can_meta_context("base:allocation"))') ||
    fail "nbdsh -u $RW_URI failed"
[ "$out" = "41943040 True" ] || fail "nbdsh: got '$out', expected '41943040 True'"

log "corner cases (nbdsh-corner.py)"
rc=0
NBD_RW_URI=$RW_URI NBD_RO_URI=$RO_URI NBD_SINGLE_URI=$SINGLE_URI \
    NBD_RW_FILE=$TMP/rw.img NBD_RO_FILE=$TMP/ro.img NBD_SECOND_FILE=$TMP/second.img \
    NBD_EXPORTS='["", "second"]' \
    timeout 60 "$PYTHON_NBD" "$CORNER" run >"$TMP/corner.out" 2>&1 || rc=$?
sed "s/^# /# $TEST_NAME: /" "$TMP/corner.out" >&2
[ $rc -ne 124 ] || fail "nbdsh-corner.py timed out (a request hung?)"

log "servers exit 0 on SIGTERM, no sanitizer reports"
for SERVER_PID in "$RW_PID" "$RO_PID" "$SINGLE_PID"; do
    stop_server
done
check_server_log
[ $rc -eq 0 ] || fail "nbdsh-corner.py failed (rc $rc); see the FAIL lines above"
exit 0
