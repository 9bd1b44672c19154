#!/usr/bin/env bash
# qemu-migrate.sh: whole QEMU VMs migrated with their disks by blkmig, QEMU moving RAM and
# devices, between two local "hosts" (a source and a destination directory). The guest sits
# in its firmware (a Linux guest is the business of the guest tests); the disks are written
# during the bulk copy through a monitor of the test's own (qemu-io), so the dirty bitmaps
# carry something. Checked by content (qemu-img compare of the source's image with the
# destination's once both QEMUs are gone), by --verify, and by what QEMU says:
#   a) launched, qcow2 over a backing file (the destination's image is flat), --verify;
#   b) attached, two raw disks, --verify; the QEMU started by hand ends after the migration;
#   c) the destination QEMU killed during the bulk copy: the source VM runs on, nothing of
#      blkmig's is left in its QEMU (exports, bitmaps), the destination's images are gone;
#   d) a destination QEMU of another version: refused before anything is copied;
#   e) a source QEMU binary under another name than qemu-system-*: refused (the destination
#      runs no program the peer names but a QEMU).
. "$(dirname "$0")/../lib.sh"

need_cmd qemu-system-x86_64 qemu-system-x86
need_cmd qemu-img qemu-utils
[ -x /usr/bin/python3 ] || skip "no /usr/bin/python3 (for the test's QMP client)"
QMPC=(/usr/bin/python3 "$top_srcdir/tests/interop/qmp-cmd.py")
QEMU=(qemu-system-x86_64 -machine q35,accel=tcg -nodefaults -display none -no-user-config -m 64)
SIZE=48M

qmp() { "${QMPC[@]}" "$@"; }

# writes SOCKET DRIVE SECONDS: 64 KiB writes through QEMU's block layer (as a guest's go),
# for that long, in the background (WRITER_PID).
writes() {
    local sock=$1 drive=$2 secs=$3
    (
        end=$((SECONDS + secs)) i=0
        while [ $SECONDS -lt $end ]; do
            off=$(((i * 7919 % 700) * 65536))
            qmp "$sock" human-monitor-command \
                "{\"command-line\": \"qemu-io $drive \\\"write -P $((i % 250 + 1)) $off 64k\\\"\"}" \
                >/dev/null || exit 1
            i=$((i + 1))
        done
        echo "$i" >"$TMP/writes.$drive"
    ) &
    WRITER_PID=$!
    _PIDS+=("$WRITER_PID")
}

# incoming NAME [ARGS]: the destination (sets DPORT, DST_PID; its disks go to $TMP/NAME-dst).
incoming() {
    local name=$1
    shift
    mkdir -p "$TMP/$name-dst"
    DPORT=$(free_port)
    start_bg "$BLKMIG" incoming --listen "127.0.0.1:$DPORT" --nbd-port "$(free_port)" \
        --disk-dir "$TMP/$name-dst" --control "$TMP/$name-dst.ctl" --log-level info "$@" \
        >"$TMP/$name-dst.out" 2>"$TMP/$name-dst.err"
    DST_PID=$BG_PID
    local deadline=$((SECONDS + 20))
    until grep -q "listening on" "$TMP/$name-dst.err"; do
        kill -0 "$DST_PID" 2>/dev/null || fail "$name: blkmig incoming exited: $(cat "$TMP/$name-dst.err")"
        [ $SECONDS -lt $deadline ] || fail "$name: blkmig incoming is not listening"
        sleep 0.05
    done
}

# migrate NAME SRC_CTL [ARGS]: blkmig migrate --with-disk; MIG_RC its status.
migrate() {
    local name=$1 ctl=$2
    shift 2
    MIG_RC=0
    timeout 300 "$BLKMIG" migrate --with-disk "$@" "$ctl" "tcp:127.0.0.1:$DPORT" \
        >"$TMP/$name-mig.out" 2>"$TMP/$name-mig.err" || MIG_RC=$?
    cat "$TMP/$name-mig.out" >&2
}

# launch NAME IMAGE FORMAT: `blkmig run --qemu` of a VM with that one disk, with a QMP monitor of
# the test's own at $TMP/NAME-user.sock (sets SRC_PID).
launch() {
    local name=$1 img=$2 fmt=$3
    start_bg "$BLKMIG" run --qemu --control "$TMP/$name-src.ctl" -- "${QEMU[@]}" \
        -drive "if=none,id=d0,file=$img,format=$fmt" -device virtio-blk-pci,drive=d0,id=vd0 \
        -qmp "unix:$TMP/$name-user.sock,server=on,wait=off" \
        >"$TMP/$name-src.out" 2>"$TMP/$name-src.err"
    SRC_PID=$BG_PID
    wait_unix "$TMP/$name-src.ctl"
    wait_unix "$TMP/$name-user.sock"
}

# no_leftovers SOCKET: nothing of blkmig's in that QEMU (exports, bitmaps).
no_leftovers() {
    local ex nodes
    ex=$(qmp "$1" query-block-exports) || fail "query-block-exports on $1"
    [ "$ex" = "[]" ] || fail "exports left in the source QEMU: $ex"
    nodes=$(qmp "$1" query-named-block-nodes) || fail "query-named-block-nodes on $1"
    ! grep -q '"blkmig-' <<<"$nodes" || fail "blkmig bitmaps left in the source QEMU"
}

# ---- a) launched, qcow2 over a backing file ----
log "a) launch, qcow2 over a backing file, written during the bulk copy"
qemu-img create -q -f qcow2 "$TMP/base.qcow2" $SIZE
qemu-io -f qcow2 -c "write -P 0x33 0 40M" "$TMP/base.qcow2" >/dev/null
qemu-img create -q -f qcow2 -b "$TMP/base.qcow2" -F qcow2 "$TMP/a.qcow2"
incoming a
launch a "$TMP/a.qcow2" qcow2
writes "$TMP/a-user.sock" d0 2
# 8 MB/s: the 48 MiB bulk copy outlasts the writes, which end before QEMU's pre-copy starts.
migrate a "$TMP/a-src.ctl" --verify --max-bandwidth 8M
wait "$WRITER_PID" || fail "a: the writes through the source QEMU failed"
[ "$(cat "$TMP/writes.d0")" -gt 0 ] || fail "a: nothing was written during the migration"
[ $MIG_RC -eq 0 ] || fail "a: migrate exited $MIG_RC: $(tail -3 "$TMP/a-mig.err")"
grep -q 'verified .*identical' "$TMP/a-mig.out" || fail "a: not verified"
wait_pid "$SRC_PID" 30
[ "$WAIT_RC" -eq 0 ] || fail "a: the source blkmig exited $WAIT_RC: $(tail -3 "$TMP/a-src.err")"
st=$("$BLKMIG" control "$TMP/a-dst.ctl" query-status) || fail "a: the destination does not answer"
grep -q '"running":true' <<<"$st" || fail "a: the VM does not run on the destination: $st"
"$BLKMIG" control "$TMP/a-dst.ctl" quit >/dev/null
wait_pid "$DST_PID" 30
qemu-img info "$TMP/a-dst/disk0.qcow2" | grep -q '^backing file' &&
    fail "a: the destination's image has a backing file"
qemu-img compare -f qcow2 -F qcow2 "$TMP/a.qcow2" "$TMP/a-dst/disk0.qcow2" >&2 ||
    fail "a: the destination's disk differs from the source's"

# ---- b) attached, two raw disks ----
log "b) attach, two raw disks"
for d in 0 1; do
    truncate -s $SIZE "$TMP/b$d.raw"
    qemu-io -f raw -c "write -P $((d + 5)) $((d * 8))M 4M" "$TMP/b$d.raw" >/dev/null
done
start_bg "${QEMU[@]}" -drive "if=none,id=d0,file=$TMP/b0.raw,format=raw" \
    -device virtio-blk-pci,drive=d0,id=vd0 -drive "if=none,id=d1,file=$TMP/b1.raw,format=raw" \
    -device virtio-blk-pci,drive=d1,id=vd1 -qmp "unix:$TMP/b-qmp.sock,server=on,wait=off" \
    >"$TMP/b-qemu.out" 2>&1
QEMU_PID=$BG_PID
wait_unix "$TMP/b-qmp.sock"
incoming b
start_bg "$BLKMIG" run --qemu-attach "$TMP/b-qmp.sock" --control "$TMP/b-src.ctl" \
    >"$TMP/b-src.out" 2>"$TMP/b-src.err"
SRC_PID=$BG_PID
wait_unix "$TMP/b-src.ctl"
migrate b "$TMP/b-src.ctl" --verify
[ $MIG_RC -eq 0 ] || fail "b: migrate exited $MIG_RC: $(tail -3 "$TMP/b-mig.err")"
grep -q 'verified .*identical' "$TMP/b-mig.out" || fail "b: not verified"
wait_pid "$QEMU_PID" 30 # the QEMU started by hand ends: its guest runs on the destination
wait_pid "$SRC_PID" 30
"$BLKMIG" control "$TMP/b-dst.ctl" quit >/dev/null
wait_pid "$DST_PID" 30
for d in 0 1; do
    qemu-img compare -f raw -F raw "$TMP/b$d.raw" "$TMP/b-dst/disk$d.img" >&2 ||
        fail "b: disk $d differs"
done

# ---- c) the destination QEMU killed during the bulk copy ----
log "c) the destination QEMU killed during the bulk copy"
truncate -s $SIZE "$TMP/c.raw"
qemu-io -f raw -c "write -P 9 0 40M" "$TMP/c.raw" >/dev/null
sum_before=$(md5sum <"$TMP/c.raw")
incoming c
launch c "$TMP/c.raw" raw
(
    for _ in $(seq 100); do
        pid=$(pgrep -f "^qemu-system-x86_64 .*blkmig-qemu-in\\..*/qmp.sock" | head -n 1 || true)
        if [ -n "$pid" ]; then
            sleep 1
            log "c: killing the destination QEMU (pid $pid)"
            kill -KILL "$pid"
            exit 0
        fi
        sleep 0.1
    done
) &
KILLER=$!
migrate c "$TMP/c-src.ctl" --max-bandwidth 4M
wait "$KILLER" || true
[ $MIG_RC -ne 0 ] || fail "c: migrate succeeded with its destination QEMU killed"
log "c: migrate said: $(tail -n 1 "$TMP/c-mig.err")"
st=$(qmp "$TMP/c-user.sock" query-status) || fail "c: the source QEMU does not answer"
grep -q '"running": true' <<<"$st" || fail "c: the source VM does not run: $st"
no_leftovers "$TMP/c-user.sock"
wait_pid "$DST_PID" 30
[ "$WAIT_RC" -ne 0 ] || fail "c: the destination exited 0"
[ -z "$(ls -A "$TMP/c-dst")" ] || fail "c: the destination left images: $(ls "$TMP/c-dst")"
"$BLKMIG" control "$TMP/c-src.ctl" quit >/dev/null
wait_pid "$SRC_PID" 30
[ "$(md5sum <"$TMP/c.raw")" = "$sum_before" ] || fail "c: the source's disk changed"

# ---- d) a destination QEMU of another version ----
log "d) a destination QEMU of another version"
printf '#!/bin/sh\necho "QEMU emulator version 6.2.0"\n' >"$TMP/old-qemu"
chmod +x "$TMP/old-qemu"
truncate -s 8M "$TMP/d.raw"
incoming d --qemu-binary "$TMP/old-qemu"
launch d "$TMP/d.raw" raw
migrate d "$TMP/d-src.ctl"
[ $MIG_RC -ne 0 ] || fail "d: migrate succeeded towards another QEMU version"
grep -q "same QEMU version" "$TMP/d-mig.err" ||
    fail "d: the refusal does not say why: $(tail -n 2 "$TMP/d-mig.err")"
grep -q '"running": true' <<<"$(qmp "$TMP/d-user.sock" query-status)" ||
    fail "d: the source VM does not run"
no_leftovers "$TMP/d-user.sock"
[ -z "$(ls -A "$TMP/d-dst")" ] || fail "d: the destination made images: $(ls "$TMP/d-dst")"
"$BLKMIG" control "$TMP/d-src.ctl" quit >/dev/null
wait_pid "$SRC_PID" 30
# ---- e) a source binary that is no qemu-system-*: the destination runs nothing it names ----
log "e) a source QEMU under another name"
ln -s "$(command -v qemu-system-x86_64)" "$TMP/myqemu"
truncate -s 8M "$TMP/e.raw"
incoming e
start_bg "$BLKMIG" run --qemu --control "$TMP/e-src.ctl" -- "$TMP/myqemu" "${QEMU[@]:1}" \
    -drive "if=none,id=d0,file=$TMP/e.raw,format=raw" -device virtio-blk-pci,drive=d0,id=vd0 \
    >"$TMP/e-src.out" 2>"$TMP/e-src.err"
SRC_PID=$BG_PID
wait_unix "$TMP/e-src.ctl"
migrate e "$TMP/e-src.ctl"
[ $MIG_RC -ne 0 ] || fail "e: the destination ran a binary named by the source"
grep -q "not a qemu-system-\* name" "$TMP/e-mig.err" ||
    fail "e: the refusal does not say why: $(tail -n 2 "$TMP/e-mig.err")"
[ -z "$(ls -A "$TMP/e-dst")" ] || fail "e: the destination made images: $(ls "$TMP/e-dst")"
"$BLKMIG" control "$TMP/e-src.ctl" quit >/dev/null
wait_pid "$SRC_PID" 30
for f in "$TMP"/*-src.err "$TMP"/*-dst.err "$TMP"/*-mig.err; do
    check_sanitizer_log "$f"
done
finish_test
