#!/usr/bin/env bash
# Integration: the Linux test guest (contrib/linux-guest/). First its workload run by hand on
# the host against odd disks (smaller than a block, not a multiple of it, absent): it says so and
# keeps beating; the image checker finds a corrupted sector. Then the real guest: built
# (Debian's kernel and busybox; skipped when they cannot be had), booted under QEMU (TCG, or KVM
# where a stock kernel can use it) with a 64 MiB raw disk and 256 MiB of RAM: heartbeats come,
# the workload writes, its own read-back `check` finds every sector it wrote intact (and, once
# quiesced, one sector zeroed by the host), `poweroff` ends QEMU, and the host-side checker
# finds the image's sectors sound. The largest heartbeat
# gap is printed (a loose bound: TCG's timing jitters).
. "$(dirname "$0")/../lib.sh"

need_cmd qemu-system-x86_64 qemu-system-x86
need_cmd gcc
[ -x /usr/bin/python3 ] || skip "no /usr/bin/python3 (Debian package python3)"
LG=$top_srcdir/contrib/linux-guest
CON=$LG/console.py
GUEST=$TMP/guest

rc=0
"$LG/build.sh" "$GUEST" >"$TMP/build.log" 2>&1 || rc=$?
[ $rc -ne 77 ] || skip "cannot build the guest here: $(tail -1 "$TMP/build.log")"
[ $rc -eq 0 ] || fail "build.sh: exit $rc: $(tail -5 "$TMP/build.log")"
W=$GUEST/workload

# ---- the workload by hand: odd disks, and the image checker ----
# run_by_hand NAME ARGS...: the workload for a second with ARGS, then `check` and `poweroff`.
run_by_hand() {
    local name=$1
    shift
    (sleep 1; echo check; echo poweroff) | timeout 20 "$W" bmw.hb=100 bmw.rate=1M bmw.ram=4M "$@" \
        >"$TMP/$name.out" 2>&1 || fail "$name: workload exit $?: $(tail -3 "$TMP/$name.out")"
    grep -q '^POWEROFF' "$TMP/$name.out" || fail "$name: no POWEROFF: $(tail -3 "$TMP/$name.out")"
    [ "$(grep -c '^HB ' "$TMP/$name.out")" -ge 5 ] || fail "$name: too few heartbeats: $(cat "$TMP/$name.out")"
}
truncate -s 3000 "$TMP/tiny.img"
run_by_hand tiny bmw.disk="$TMP/tiny.img" bmw.wrate=1M
grep -q 'less than one 65536-byte block: not writing' "$TMP/tiny.out" || fail "tiny disk: $(cat "$TMP/tiny.out")"
grep -q '^CHECK sectors=0 bad=0' "$TMP/tiny.out" || fail "tiny disk: check: $(cat "$TMP/tiny.out")"
run_by_hand absent bmw.disk="$TMP/none/disk.img" bmw.wrate=1M
grep -q 'cannot open: No such file' "$TMP/absent.out" || fail "absent disk: $(cat "$TMP/absent.out")"
truncate -s 1000000 "$TMP/odd.img"
run_by_hand odd bmw.disk="$TMP/odd.img" bmw.wrate=8M bmw.bs=16k
grep -q 'writing 61 blocks of 16384.*rest of the disk is left alone' "$TMP/odd.out" ||
    fail "odd-sized disk: $(cat "$TMP/odd.out")"
grep -q '^CHECK sectors=[1-9][0-9]* bad=0$' "$TMP/odd.out" || fail "odd-sized disk: check: $(cat "$TMP/odd.out")"
"$W" --check-image "$TMP/odd.img" >"$TMP/odd.chk" || fail "image check of odd.img: $(cat "$TMP/odd.chk")"
grep -q '^IMAGE sectors=[1-9][0-9]* bad=0 ' "$TMP/odd.chk" || fail "image check of odd.img: $(cat "$TMP/odd.chk")"
# spoil IMAGE flip|zero: change the first sector that carries the workload's header (one byte
# flipped, or the whole sector zeroed) and print its index.
spoil() {
    "$PY3" - "$@" <<'PY'
import sys
with open(sys.argv[1], "r+b") as f:
    data = f.read()
    for off in range(0, len(data) - 4095, 4096):
        if data[off:off + 8] == b"BWMSECT1":
            f.seek(off + 1000 if sys.argv[2] == "flip" else off)
            f.write(bytes([data[off + 1000] ^ 0xff]) if sys.argv[2] == "flip" else bytes(4096))
            print(off // 4096)
            break
PY
}
first=$(spoil "$TMP/odd.img" flip)
[ -n "$first" ] || fail "no sector with the workload's header in odd.img"
rc=0
"$W" --check-image "$TMP/odd.img" >"$TMP/odd.chk" || rc=$?
[ $rc -eq 1 ] && grep -q "^BAD sector=$first .*checksum mismatch" "$TMP/odd.chk" &&
    grep -q ' bad=1 ' "$TMP/odd.chk" || fail "a corrupted sector went unseen (exit $rc): $(cat "$TMP/odd.chk")"
log "by hand: odd disks handled, a corrupted sector found"

# ---- the guest under QEMU ----
# KVM only where it runs a stock kernel: not under kvm_pvm, whose /dev/kvm cannot.
ACCEL=(-accel tcg -cpu max)
if [ -c /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ] && { exec 9<>/dev/kvm; } 2>/dev/null; then
    exec 9>&-
    ACCEL=(-accel kvm -cpu host)
fi
# The uncompressed kernel boots quicker (PVH: no decompression under TCG) when build.sh made it.
KERNEL=$GUEST/vmlinuz
[ ! -f "$GUEST/vmlinux" ] || KERNEL=$GUEST/vmlinux
truncate -s 64M "$TMP/disk.img"
start_bg qemu-system-x86_64 "${ACCEL[@]}" -m 256 -smp 1 -nodefaults -display none -no-reboot \
    -kernel "$KERNEL" -initrd "$GUEST/initrd.img" \
    -append "console=ttyS0 quiet panic=-1 bmw.ram=64M bmw.rate=16M bmw.disk=/dev/vda bmw.wrate=4M bmw.bs=64k bmw.hb=100" \
    -drive "file=$TMP/disk.img,format=raw,if=none,id=d0" -device virtio-blk-pci,drive=d0 \
    -chardev "socket,id=s0,path=$TMP/con.sock,server=on,wait=off" -serial chardev:s0 \
    >"$TMP/qemu.log" 2>&1
QPID=$BG_PID
t_boot=$SECONDS
start_bg /usr/bin/python3 "$CON" record "$TMP/con.sock" "$TMP/con.log" --ctl "$TMP/ctl.sock"
until grep -q ' HB ' "$TMP/con.log" 2>/dev/null; do
    kill -0 "$QPID" 2>/dev/null || fail "QEMU exited before a heartbeat: $(cat "$TMP/qemu.log") $(tail -5 "$TMP/con.log" 2>/dev/null)"
    [ $((SECONDS - t_boot)) -lt 60 ] || fail "no heartbeat in 60 s: $(tail -5 "$TMP/con.log" 2>/dev/null)"
    sleep 0.2
done
log "first heartbeat $((SECONDS - t_boot)) s after QEMU started (${ACCEL[*]}, $(basename "$KERNEL"))"
grep -q '^[0-9.]* BMW disk /dev/vda: 67108864 bytes, writing 1024 blocks' "$TMP/con.log" ||
    sleep 2 # the disk's line may follow the first beat
grep -q '^[0-9.]* BMW disk /dev/vda: 67108864 bytes, writing 1024 blocks' "$TMP/con.log" ||
    fail "the guest does not write its disk: $(grep -v ' HB ' "$TMP/con.log" | tail -5)"
sleep 5

send() { /usr/bin/python3 "$CON" send "$TMP/ctl.sock" "$1" --log "$TMP/con.log" --expect "$2" --timeout 30; }
out=$(send check '^CHECK ') || fail "no answer to check: $(tail -5 "$TMP/con.log")"
log "guest: $out"
[[ $out =~ ^CHECK\ sectors=([0-9]+)\ bad=0$ ]] && [ "${BASH_REMATCH[1]}" -gt 0 ] ||
    fail "the guest's check: $out ($(grep 'BAD' "$TMP/con.log" | head -3))"
# Quiesced (its writes flushed), one of its sectors zeroed behind its back: its check sees it.
send quiesce '^QUIESCED ' >/dev/null || fail "no answer to quiesce: $(tail -5 "$TMP/con.log")"
zeroed=$(spoil "$TMP/disk.img" zero)
[ -n "$zeroed" ] || fail "no sector with the workload's header in the guest's image"
out=$(send check '^CHECK ') || fail "no answer to check: $(tail -5 "$TMP/con.log")"
[[ $out =~ ^CHECK\ sectors=[0-9]+\ bad=1$ ]] && grep -q "^[0-9.]* BAD sector=$zeroed .*no header" "$TMP/con.log" ||
    fail "sector $zeroed zeroed under the guest, its check says: $out"
send resume '^RESUMED ' >/dev/null || fail "no answer to resume: $(tail -5 "$TMP/con.log")"
log "guest: a sector zeroed under it found by its check; resumed"
sleep 1
send poweroff '^POWEROFF' >/dev/null || fail "no answer to poweroff: $(tail -5 "$TMP/con.log")"
wait_pid "$QPID" 30
[ "$WAIT_RC" -eq 0 ] || fail "QEMU exited $WAIT_RC after poweroff (124: still running): $(cat "$TMP/qemu.log")"

rc=0
"$W" --check-image "$TMP/disk.img" >"$TMP/disk.chk" || rc=$?
log "host: $(tail -1 "$TMP/disk.chk")"
[ $rc -eq 0 ] && grep -q '^IMAGE sectors=[1-9][0-9]* bad=0 ' "$TMP/disk.chk" ||
    fail "the image's check (exit $rc): $(cat "$TMP/disk.chk")"
gap=$(/usr/bin/python3 "$CON" gap "$TMP/con.log") || fail "no heartbeat gap: $gap"
log "heartbeats: $gap"
[[ $gap =~ max-ms=([0-9]+)\.[0-9]\ hbs=([0-9]+) ]] || fail "cannot read the gap: $gap"
[ "${BASH_REMATCH[1]}" -lt 2000 ] || fail "a heartbeat gap of ${BASH_REMATCH[1]} ms"
[ "${BASH_REMATCH[2]}" -ge 20 ] || fail "only ${BASH_REMATCH[2]} heartbeats in the run"
log "ok"
