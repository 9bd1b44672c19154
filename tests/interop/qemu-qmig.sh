#!/usr/bin/env bash
# qemu-qmig.sh: QEMU's own migration of RAM and devices steered through vm/qemu/qmig.c by
# tests/interop/qmig-probe, between two real QEMUs (the destination with -incoming defer, the
# guest sitting in its firmware): with pause-before-switchover the source stops at
# pre-switchover with its guest paused; migrate-continue completes it and the destination
# runs (the source QEMU stays up, its guest stopped for good); migrate_cancel there resumes
# the source guest and the destination QEMU fails its load and exits by itself.
. "$(dirname "$0")/../lib.sh"

need_cmd qemu-system-x86_64 qemu-system-x86
PROBE=${QMIG_PROBE:-$top_builddir/tests/interop/qmig-probe}
[ -x "$PROBE" ] || fail "$PROBE is not built (make check builds it, or set QMIG_PROBE)"

QEMU=(qemu-system-x86_64 -machine q35,accel=tcg -nodefaults -display none -no-user-config -m 64)

# run_case NAME complete|cancel
run_case() {
    local name=$1 mode=$2
    start_bg "${QEMU[@]}" -qmp "unix:$TMP/$name-src.sock,server=on,wait=off" \
        >"$TMP/$name-src.out" 2>&1
    local spid=$BG_PID
    start_bg "${QEMU[@]}" -qmp "unix:$TMP/$name-dst.sock,server=on,wait=off" -incoming defer \
        >"$TMP/$name-dst.out" 2>&1
    local dpid=$BG_PID
    wait_unix "$TMP/$name-src.sock"
    wait_unix "$TMP/$name-dst.sock"
    local rc=0
    "$PROBE" "$TMP/$name-src.sock" "$TMP/$name-dst.sock" "unix:$TMP/$name-mig.sock" "$mode" \
        >"$TMP/$name.out" 2>"$TMP/$name.err" || rc=$?
    cat "$TMP/$name.out" >&2
    check_sanitizer_log "$TMP/$name.err"
    [ $rc -eq 0 ] || fail "$name: qmig-probe exited $rc: $(tail -5 "$TMP/$name.err")"
    grep -qx 'ok all' "$TMP/$name.out" || fail "$name: qmig-probe did not finish its checks"
    wait_pid "$spid" 20
    [ "$WAIT_RC" -eq 0 ] || fail "$name: the source QEMU exited $WAIT_RC: $(cat "$TMP/$name-src.out")"
    wait_pid "$dpid" 20
    if [ "$mode" = complete ]; then
        [ "$WAIT_RC" -eq 0 ] || fail "$name: the destination QEMU exited $WAIT_RC: $(cat "$TMP/$name-dst.out")"
    else
        [ "$WAIT_RC" -ne 0 ] || fail "$name: the destination QEMU exited 0 after a cancelled migration"
        grep -q 'load of migration failed' "$TMP/$name-dst.out" ||
            fail "$name: the destination QEMU did not say its load failed: $(cat "$TMP/$name-dst.out")"
    fi
    log "$name: ok"
}

run_case complete complete
run_case cancel cancel
finish_test
