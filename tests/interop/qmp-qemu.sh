#!/usr/bin/env bash
# qmp-qemu.sh: the QMP client (vm/qemu/qmp.c) against a real QEMU, through
# tests/interop/qmp-probe: the greeting and its version, query-status, a second client turned
# away with a message (QEMU serves one at a time), QEMU's own errors (an unknown command, an
# unknown argument), a return of an unexpected type, query-block (one null-co drive), stop and
# cont with their STOP and RESUME events, and quit with SHUTDOWN and then EOF.
. "$(dirname "$0")/../lib.sh"

need_cmd qemu-system-x86_64 qemu-system-x86
PROBE=${QMP_PROBE:-$top_builddir/tests/interop/qmp-probe}
[ -x "$PROBE" ] || fail "$PROBE is not built (make check builds it, or set QMP_PROBE)"

# The major version the greeting must carry: what the binary itself says.
major=$(qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\)\..*/\1/p')
[ -n "$major" ] || fail "cannot read the version of qemu-system-x86_64"

sock=$TMP/qmp.sock
start_bg qemu-system-x86_64 -machine none -nodefaults -display none -no-user-config \
    -drive if=none,id=d0,driver=null-co,read-only=on \
    -qmp "unix:$sock,server=on,wait=off" 2>"$TMP/qemu.err"
QEMU_PID=$BG_PID
wait_unix "$sock"

rc=0
"$PROBE" "$sock" "$major" d0 >"$TMP/probe.out" 2>"$TMP/probe.err" || rc=$?
cat "$TMP/probe.out" >&2
check_sanitizer_log "$TMP/probe.err"
[ $rc -eq 0 ] || fail "qmp-probe exited $rc: $(cat "$TMP/probe.err")"
grep -qx 'ok all' "$TMP/probe.out" || fail "qmp-probe did not finish its checks"

# quit: QEMU ends by itself, with status 0.
wait_pid "$QEMU_PID" 10
[ "$WAIT_RC" -eq 0 ] || fail "QEMU exited $WAIT_RC after quit: $(cat "$TMP/qemu.err")"
