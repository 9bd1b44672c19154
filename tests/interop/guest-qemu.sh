#!/usr/bin/env bash
# guest-qemu.sh: the test guest (vm/guest/blkmig-guest.elf) is a PVH ELF that QEMU boots too:
# under `qemu-system-x86_64 -M microvm,acpi=off -accel tcg` with a modern virtio-mmio block
# device it parses its command line (the virtio_mmio.device= entry QEMU appends and the
# synthetic guest's workload), fills RAM and disk, runs the workload with heartbeats and
# self-checks, then checks every page and block it wrote and exits through isa-debug-exit.
# The host then reads the disk image and checks, block by block, that what the guest wrote is
# there (index, magic, the generated body); a bad command line fails cleanly with a message.
. "$(dirname "$0")/../lib.sh"

need_cmd qemu-system-x86_64 qemu-system-x86
ELF=${BLKMIG_GUEST:-$top_builddir/vm/guest/blkmig-guest.elf}
[ -f "$ELF" ] || skip "no test guest at $ELF (x86-64 builds only)"

img=$TMP/vda.img
truncate -s 64M "$img"

# run_guest APPEND [EXTRA QEMU ARGS...]: boots the guest; console in $TMP/console.log; sets RC
# to the guest's own exit status (isa-debug-exit makes QEMU exit with status*2+1).
run_guest() {
    local append=$1
    shift
    : >"$TMP/console.log"
    set +e
    timeout 300 qemu-system-x86_64 -M microvm,acpi=off -accel tcg -m 160M -nodefaults \
        -no-user-config -display none -serial "file:$TMP/console.log" \
        -kernel "$ELF" -append "$append" \
        -global virtio-mmio.force-legacy=false \
        -drive "id=vda,file=$img,format=raw,if=none" -device virtio-blk-device,drive=vda \
        -device isa-debug-exit,iobase=0xf4,iosize=4 "$@" 2>"$TMP/qemu.err"
    local q=$?
    set -e
    tr -d '\r' <"$TMP/console.log" >"$TMP/console.txt"
    if [ $((q & 1)) -eq 1 ] && [ $q -ne 124 ]; then
        RC=$((q >> 1))
    else
        cat "$TMP/qemu.err" "$TMP/console.txt" >&2
        fail "QEMU did not end through isa-debug-exit (exit status $q)"
    fi
}

log "boot + workload + final self-check (TCG)"
run_guest "blkmig.workload=mem=8M/s,hot=16M,disk=2M/s,io=4K-64K,ram-fill=32M,disk-fill=8M,seed=7 blkmig.run=4 blkmig.status_ms=500"
cat "$TMP/console.txt" >&2
[ "$RC" -eq 0 ] || fail "the guest exited with $RC"
grep -q '^BMG boot .*disks=1 ' "$TMP/console.txt" || fail "the guest did not find its virtio disk"
grep -q '^BMG disk 0 at 0x.*: 67108864 bytes' "$TMP/console.txt" || fail "wrong disk size"
grep -q '^BMG ready ram_writes=8192 disk_writes=2048' "$TMP/console.txt" ||
    fail "the first-boot fill is not what the workload asked for"
grep -Eq '^BMG check pages=[1-9][0-9]* blocks=[1-9][0-9]* mismatches=0 errors=0$' \
    "$TMP/console.txt" || fail "the final self-check did not pass"
! grep -q '^BMG error' "$TMP/console.txt" || fail "the guest reported data errors"
python3 - "$TMP/console.txt" <<'PY' || fail "the status lines do not show a running workload"
import re, sys
st = [dict(kv.split("=") for kv in l.split()[2:]) for l in open(sys.argv[1]) if l.startswith("BMG status")]
assert len(st) >= 4, "only %d status lines" % len(st)
hb = [int(s["hb"]) for s in st]
# (the last line repeats the one before, printed just before the final check)
assert all(b > a for a, b in zip(hb[:-1], hb[1:-1])), "heartbeats do not advance: %s" % hb
last = st[-1]
assert int(last["ram_writes"]) > 8192 + 4000, last     # ~8 MiB/s for 4 s on top of the fill
assert int(last["disk_writes"]) > 2048 + 500, last     # ~2 MiB/s for 4 s
assert int(last["ram_checks"]) >= 4000 and int(last["disk_checks"]) > 0, last
assert int(last["errors"]) == 0, last
print("status lines: %d, heartbeats %d, ram_writes %s, disk_writes %s, max gap %s us" % (
    len(st), hb[-1], last["ram_writes"], last["disk_writes"], last["max_gap_us"]), file=sys.stderr)
PY

# The host's view of the disk: every block the guest wrote carries its index and magic and the
# body generated from (index, generation): recompute and compare (the checksum is the guest's
# to check; this proves the bytes reached the image through virtio unchanged and in place).
python3 - "$img" <<'PY' || fail "the disk image does not hold what the guest wrote"
import struct, sys
MAGIC = 0x4b4c424b53534d42
M = (1 << 64) - 1
def body(salt, index, gen):
    x = (salt ^ (index * 0x9E3779B97F4A7C15) ^ (gen << 32) ^ gen) & M
    out = []
    for _ in range((4096 - 32) // 8):
        x = (x + 0x9E3779B97F4A7C15) & M
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        out.append(z ^ (z >> 31))
    return struct.pack("<%dQ" % len(out), *out)
data = open(sys.argv[1], "rb").read()
written = checked = 0
for b in range(len(data) // 4096):
    blk = data[b * 4096:(b + 1) * 4096]
    idx, gen, _csum, magic = struct.unpack_from("<4Q", blk)
    if magic != MAGIC:
        assert blk == bytes(4096), "block %d: neither guest data nor zero" % b
        continue
    written += 1
    assert idx == b, "block %d holds block %d" % (b, idx)
    assert gen >= 1
    if written % 7 == 1:     # the generated body of every 7th block (python is slow)
        assert blk[32:] == body(MAGIC, idx, gen), "block %d: body differs" % b
        checked += 1
assert written >= 2048, "only %d guest blocks on the image" % written
print("image: %d guest blocks, %d bodies recomputed and equal" % (written, checked), file=sys.stderr)
PY

log "a bad command line fails cleanly"
run_guest "blkmig.workload=mem=8M/s,bogus=1"
[ "$RC" -eq 2 ] || fail "a bad workload key: exit $RC, expected 2"
grep -q "^BMG fatal: bad workload key" "$TMP/console.txt" || fail "no message for a bad key"

log "a legacy (version 1) virtio-mmio device is refused with the QEMU option to use"
run_guest "blkmig.run=1" -global virtio-mmio.force-legacy=true
[ "$RC" -eq 2 ] || fail "a legacy device: exit $RC, expected 2"
grep -q "force-legacy=false" "$TMP/console.txt" || fail "no hint for a legacy device"
log "ok"
