#!/usr/bin/env bash
# qemu-linux-migrate.sh: a real Linux guest (contrib/linux-guest: Debian's kernel, a busybox
# initramfs and a workload that beats every 10 ms, dirties RAM and writes self-describing
# sectors to its virtio disk) under `blkmig run --qemu`, migrated with `blkmig migrate
# --with-disk --verify` while it works, its qcow2 disk moved by blkmig and its RAM by QEMU.
# Checked: the digests at the switchover (--verify); the heartbeats go on on the destination
# (its console socket is in the destination's --run-dir); the guest's own read-back of every
# sector it wrote, on the destination, finds none bad; after its poweroff, the host-side check
# of the destination's image finds every sector sound; the source's blkmig and QEMU end. The
# largest heartbeat gap across the two consoles is logged (TCG's timing jitters: a loose
# bound). Skipped when the kernel or busybox cannot be had. The workload's RAM dirtier is off
# (its heartbeats and disk writes still dirty RAM): under TCG, QEMU 7.2's own migration loses
# pages of a guest that dirties RAM, with or without blkmig; at 256 KiB/s it crashed the guest in
# 2 of 4 runs (contrib/linux-guest/README.md, "Known problem", has plain QEMU's runs).
. "$(dirname "$0")/../lib.sh"

need_cmd qemu-system-x86_64 qemu-system-x86
need_cmd qemu-img qemu-utils
need_cmd gcc
[ -x /usr/bin/python3 ] || skip "no /usr/bin/python3 (Debian package python3)"
LG=$top_srcdir/contrib/linux-guest
CON=(/usr/bin/python3 "$LG/console.py")
GUEST=$TMP/guest

rc=0
"$LG/build.sh" "$GUEST" >"$TMP/build.log" 2>&1 || rc=$?
[ $rc -ne 77 ] || skip "cannot build the Linux guest here: $(tail -1 "$TMP/build.log")"
[ $rc -eq 0 ] || fail "build.sh: exit $rc: $(tail -5 "$TMP/build.log")"

# KVM only where it runs a stock kernel: not under kvm_pvm, whose /dev/kvm cannot.
ACCEL=(-accel tcg -cpu max)
if [ -c /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ] && { exec 9<>/dev/kvm; } 2>/dev/null; then
    exec 9>&-
    ACCEL=(-accel kvm -cpu host)
fi

qemu-img create -q -f qcow2 "$TMP/src.qcow2" 256M
start_bg "$BLKMIG" run --qemu --control "$TMP/src.ctl" -- qemu-system-x86_64 "${ACCEL[@]}" \
    -m 256 -smp 1 -nodefaults -display none -no-reboot \
    -kernel "$GUEST/vmlinux" -initrd "$GUEST/initrd.img" \
    -append "console=ttyS0 quiet panic=-1 bmw.ram=8M bmw.rate=0 bmw.wrate=2M bmw.bs=64k bmw.hb=10" \
    -drive "file=$TMP/src.qcow2,format=qcow2,if=none,id=d0" -device virtio-blk-pci,drive=d0,id=vd0 \
    -chardev "socket,id=s0,path=$TMP/con.sock,server=on,wait=off" -serial chardev:s0 \
    >"$TMP/src.out" 2>"$TMP/src.err"
SRC_PID=$BG_PID
start_bg "${CON[@]}" record "$TMP/con.sock" "$TMP/src-con.log" --ctl "$TMP/src-ctl.sock" --wait 20
t0=$SECONDS
until grep -q ' HB ' "$TMP/src-con.log" 2>/dev/null; do
    kill -0 "$SRC_PID" 2>/dev/null || fail "blkmig run exited: $(tail -5 "$TMP/src.err")"
    [ $((SECONDS - t0)) -lt 60 ] || fail "no heartbeat in 60 s: $(tail -5 "$TMP/src-con.log" 2>/dev/null)"
    sleep 0.2
done
sleep 3 # the workload writes its disk for a while: there is something to copy and to dirty

mkdir -p "$TMP/dst"
DPORT=$(free_port)
start_bg "$BLKMIG" incoming --listen "127.0.0.1:$DPORT" --nbd-port "$(free_port)" \
    --disk-dir "$TMP/dst" --run-dir "$TMP/dst-run" --control "$TMP/dst.ctl" \
    >"$TMP/dst.out" 2>"$TMP/dst.err"
DST_PID=$BG_PID
t0=$SECONDS
until grep -q "listening on" "$TMP/dst.err"; do
    [ $((SECONDS - t0)) -lt 20 ] || fail "blkmig incoming is not listening: $(cat "$TMP/dst.err")"
    sleep 0.05
done
# The destination QEMU's console (moved into --run-dir under its base name) appears when the
# migration starts; the recorder waits for it.
start_bg "${CON[@]}" record "$TMP/dst-run/con.sock" "$TMP/dst-con.log" --ctl "$TMP/dst-ctl.sock" \
    --wait 60
rc=0
timeout 300 "$BLKMIG" migrate --with-disk --verify "$TMP/src.ctl" "tcp:127.0.0.1:$DPORT" \
    >"$TMP/mig.out" 2>"$TMP/mig.err" || rc=$?
cat "$TMP/mig.out" >&2
[ $rc -eq 0 ] || fail "migrate exited $rc: $(tail -5 "$TMP/mig.err")"
grep -q 'verified .*identical' "$TMP/mig.out" || fail "not verified"
wait_pid "$SRC_PID" 30
[ "$WAIT_RC" -eq 0 ] || fail "the source blkmig exited $WAIT_RC: $(tail -5 "$TMP/src.err")"

t0=$SECONDS
until [ "$(grep -c ' HB ' "$TMP/dst-con.log" 2>/dev/null || true)" -ge 50 ]; do
    [ $((SECONDS - t0)) -lt 30 ] || fail "no heartbeats on the destination: $(tail -5 "$TMP/dst-con.log" 2>/dev/null)"
    sleep 0.2
done
send() { "${CON[@]}" send "$TMP/dst-ctl.sock" "$1" --log "$TMP/dst-con.log" --expect "$2" --timeout 60; }
out=$(send check '^CHECK ') || fail "no answer to check: $(tail -5 "$TMP/dst-con.log")"
log "the guest on the destination: $out"
[[ $out =~ ^CHECK\ sectors=([0-9]+)\ bad=0$ ]] && [ "${BASH_REMATCH[1]}" -gt 0 ] ||
    fail "the guest's check on the destination: $out ($(grep BAD "$TMP/dst-con.log" | head -3))"
gap=$("${CON[@]}" gap "$TMP/src-con.log" "$TMP/dst-con.log") || fail "no heartbeat gap: $gap"
log "heartbeats across the migration: $gap"
send poweroff '^POWEROFF' >/dev/null || fail "no answer to poweroff: $(tail -5 "$TMP/dst-con.log")"
wait_pid "$DST_PID" 60
[ "$WAIT_RC" -eq 0 ] || fail "the destination exited $WAIT_RC after the guest's poweroff: $(tail -5 "$TMP/dst.err")"
img=$(ls "$TMP"/dst/disk0.*)
qemu-img convert -O raw "$img" "$TMP/dst.raw"
rc=0
"$GUEST/workload" --check-image "$TMP/dst.raw" >"$TMP/dst.chk" || rc=$?
log "host check of the destination's image: $(tail -1 "$TMP/dst.chk")"
[ $rc -eq 0 ] && grep -q '^IMAGE sectors=[1-9][0-9]* bad=0 ' "$TMP/dst.chk" ||
    fail "the destination's image (exit $rc): $(tail -3 "$TMP/dst.chk")"
for f in src.err dst.err mig.err; do
    check_sanitizer_log "$TMP/$f"
done
finish_test
