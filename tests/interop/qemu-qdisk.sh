#!/usr/bin/env bash
# qemu-qdisk.sh: a live QEMU drive mirrored through its own primitives (vm/qemu/qdisk.c:
# QEMU's NBD export of the node, dirty bitmaps harvested by rotation) by
# tests/interop/qdisk-probe, while qemu-io writes to the drive through QEMU's block layer; the
# target is `blkmig nbd-serve` of a raw file. Checked: every byte read through QEMU equals the
# target's (in the probe, with the VM stopped), `qemu-img compare` of QEMU's image with the
# target afterwards, and no blkmig bitmap or export left in QEMU. Images: raw, and qcow2 over a
# backing file (the target gets the flattened chain).
. "$(dirname "$0")/../lib.sh"

need_cmd qemu-system-x86_64 qemu-system-x86
need_cmd qemu-img qemu-utils
PROBE=${QDISK_PROBE:-$top_builddir/tests/interop/qdisk-probe}
[ -x "$PROBE" ] || fail "$PROBE is not built (make check builds it, or set QDISK_PROBE)"

SIZE=64M

# run_case NAME FORMAT IMAGE: QEMU with IMAGE as drive d0, mirrored to a fresh raw target.
run_case() {
    local name=$1 fmt=$2 img=$3
    local qsock=$TMP/$name-qmp.sock nsock=$TMP/$name-nbd.sock target=$TMP/$name-target.raw
    truncate -s $SIZE "$target"
    start_target blkmig "$target"
    start_bg qemu-system-x86_64 -machine q35,accel=tcg -nodefaults -display none \
        -no-user-config -m 64 \
        -drive "if=none,id=d0,file=$img,format=$fmt" -device virtio-blk-pci,drive=d0,id=vd0 \
        -qmp "unix:$qsock,server=on,wait=off" >"$TMP/$name-qemu.out" 2>"$TMP/$name-qemu.err"
    local qpid=$BG_PID
    wait_unix "$qsock"
    local rc=0
    "$PROBE" "$qsock" "$nsock" d0 "$TARGET_URI" 3 >"$TMP/$name.out" 2>"$TMP/$name.err" || rc=$?
    cat "$TMP/$name.out" >&2
    check_sanitizer_log "$TMP/$name.err"
    [ $rc -eq 0 ] || fail "$name: qdisk-probe exited $rc: $(tail -5 "$TMP/$name.err")"
    grep -qx 'ok all' "$TMP/$name.out" || fail "$name: qdisk-probe did not finish its checks"
    grep -q '^written [1-9]' "$TMP/$name.out" || fail "$name: nothing was written while mirroring"
    wait_pid "$qpid" 20
    [ "$WAIT_RC" -eq 0 ] || fail "$name: QEMU exited $WAIT_RC: $(cat "$TMP/$name-qemu.err")"
    stop_target
    qemu-img compare -f "$fmt" -F raw "$img" "$target" >&2 ||
        fail "$name: qemu-img compare: QEMU's image and the target differ"
    log "$name: ok"
}

log "raw image"
truncate -s $SIZE "$TMP/a.raw"
qemu-io -f raw -c "write -P 0x11 1M 3M" -c "write -P 0x22 40M 1M" "$TMP/a.raw" >/dev/null
run_case raw raw "$TMP/a.raw"

log "qcow2 over a backing file"
qemu-img create -q -f qcow2 "$TMP/base.qcow2" $SIZE
qemu-io -f qcow2 -c "write -P 0x33 0 8M" -c "write -P 0x44 60M 2M" "$TMP/base.qcow2" >/dev/null
qemu-img create -q -f qcow2 -b "$TMP/base.qcow2" -F qcow2 "$TMP/top.qcow2"
qemu-io -f qcow2 -c "write -P 0x55 4M 1M" "$TMP/top.qcow2" >/dev/null
run_case qcow2 qcow2 "$TMP/top.qcow2"
finish_test
