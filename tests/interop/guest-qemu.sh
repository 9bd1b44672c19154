#!/usr/bin/env bash
# guest-qemu.sh: the test guest (vm/guest/blkmig-guest.elf) is a PVH ELF that QEMU boots too:
# under `qemu-system-x86_64 -M microvm,acpi=off -accel tcg` with a modern virtio-mmio block
# device it parses its command line (the virtio_mmio.device= entry QEMU appends and the
# synthetic guest's workload), fills RAM and disk, runs the workload with heartbeats and
# self-checks, then checks every page and block it wrote and exits through isa-debug-exit.
# The host then reads the disk image and checks, block by block, that what the guest wrote is
# there (index, magic, the generated body). `blkmig guest-check` checks a stopped guest from a
# RAM dump and the image, and finds corruption planted in copies of them; a bad command line
# fails cleanly with a message.
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

# The host's check by content (blkmig guest-check, vm/guestcheck.c) of a guest stopped in the
# middle of its workload: a RAM dump (QMP pmemsave) and the disk image hold, page by page and
# block by block, what the guest's tables (found through its layout record) say; a corrupted
# page or block in them is found and named.
log "host-side check of a stopped guest: RAM dump (pmemsave) and disk image"
truncate -s 0 "$img" && truncate -s 64M "$img"
: >"$TMP/console.log"
start_bg qemu-system-x86_64 -M microvm,acpi=off -accel tcg -m 160M -nodefaults \
    -no-user-config -display none -serial "file:$TMP/console.log" \
    -qmp "unix:$TMP/qmp.sock,server=on,wait=off" \
    -kernel "$ELF" -append "blkmig.workload=mem=8M/s,hot=16M,disk=4M/s,io=4K-64K,ram-fill=16M,disk-fill=4M,seed=3 blkmig.status_ms=250" \
    -global virtio-mmio.force-legacy=false \
    -drive "id=vda,file=$img,format=raw,if=none" -device virtio-blk-device,drive=vda \
    -device isa-debug-exit,iobase=0xf4,iosize=4 2>"$TMP/qemu.err"
QPID=$BG_PID
wait_unix "$TMP/qmp.sock" 30
deadline=$((SECONDS + 120))
until [ "$(grep -c '^BMG status' "$TMP/console.log" 2>/dev/null)" -ge 6 ]; do
    kill -0 "$QPID" 2>/dev/null || { cat "$TMP/qemu.err" "$TMP/console.log" >&2; fail "QEMU exited"; }
    [ $SECONDS -lt $deadline ] || fail "the guest did not run its workload for 1.5 s within 120 s"
    sleep 0.2
done
# qmp CMD [ARGS-JSON]...: run QMP commands in order on one connection; fail on an error.
qmp() {
    "$PY3" - "$TMP/qmp.sock" "$@" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
json.loads(f.readline())
def call(cmd, args=None):
    f.write(json.dumps({"execute": cmd, **({"arguments": args} if args else {})}) + "\n")
    f.flush()
    while True:
        r = json.loads(f.readline())
        if "return" in r:
            return
        if "error" in r:
            sys.exit("QMP %s: %s" % (cmd, r["error"]))
call("qmp_capabilities")
a = sys.argv[2:]
for i, c in enumerate(a):
    if not c.startswith("{"):
        call(c, json.loads(a[i + 1]) if i + 1 < len(a) and a[i + 1].startswith("{") else None)
PY
}
qmp stop pmemsave "{\"val\": 0, \"size\": $((160 << 20)), \"filename\": \"$TMP/ram.dump\"}" ||
    fail "QMP stop/pmemsave failed"
set +e
"$BLKMIG" guest-check --json "$TMP/ram.dump" "$img" >"$TMP/gc.json" 2>"$TMP/gc.err"
rc=$?
set -e
cat "$TMP/gc.json" "$TMP/gc.err" >&2
[ $rc -eq 0 ] || fail "blkmig guest-check of the stopped guest: exit $rc"
"$PY3" - "$TMP/gc.json" <<'PY' || fail "the host-side check did not cover the guest's data"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["mismatches"] == 0 and r["first_mismatches"] == [], r
assert r["guest_disks"] == 1 and r["disks_checked"] == 1, r
assert r["pages"] > 30000, r            # ~38000 workload pages in 160 MiB
assert r["blocks"] >= 1024, r           # at least the 4 MiB fill
assert r["skipped"] <= 1 + 16, r        # at most the page and the write in progress
PY
# Corrupt a copy of the dump and of the image: one byte in a written page's body, one in a
# written block's body; both named, exit 1.
"$PY3" - "$TMP/ram.dump" "$img" "$TMP/ram.bad" "$TMP/vda.bad" <<'PY' || fail "could not prepare the corrupted copies"
import shutil, struct, sys
ram = bytearray(open(sys.argv[1], "rb").read())
magic, size, page_gen, area, npages, ndisks = struct.unpack_from("<6Q", ram, 0x100000)
assert magic == 0x315459414c474d42, hex(magic)
disk_gen = struct.unpack_from("<Q", ram, 0x100000 + 48)[0]
page = next(i for i in range(npages) if struct.unpack_from("<I", ram, page_gen + 4 * i)[0] > 0)
ram[area + page * 4096 + 100] ^= 0x10
open(sys.argv[3], "wb").write(ram)
shutil.copyfile(sys.argv[2], sys.argv[4])
block = next(b for b in range(5, 16384) if struct.unpack_from("<I", ram, disk_gen + 4 * b)[0] > 0)
with open(sys.argv[4], "r+b") as f:
    f.seek(block * 4096 + 2000)
    c = f.read(1)
    f.seek(block * 4096 + 2000)
    f.write(bytes([c[0] ^ 0x01]))
print("corrupted page %d and block %d" % (page, block), file=sys.stderr)
PY
# The guest keeps running after the check (the copies above were taken while it was stopped).
qmp cont || fail "QMP cont failed"
set +e
"$BLKMIG" guest-check "$TMP/ram.bad" "$TMP/vda.bad" >"$TMP/gc.out" 2>&1
rc=$?
set -e
cat "$TMP/gc.out" >&2
[ $rc -eq 1 ] || fail "guest-check of corrupted copies: exit $rc, expected 1"
grep -q '^mismatch: RAM page .*checksum mismatch' "$TMP/gc.out" || fail "the corrupted page was not named"
grep -q '^mismatch: disk 0 block .*checksum mismatch' "$TMP/gc.out" || fail "the corrupted block was not named"
grep -q ' 2 mismatches$' "$TMP/gc.out" || fail "not exactly the two corruptions found"
# Not the test guest's RAM: a clear error, exit 2.
head -c 2M /dev/zero >"$TMP/zero.dump"
set +e
"$BLKMIG" guest-check "$TMP/zero.dump" >"$TMP/gc.out" 2>&1
rc=$?
set -e
[ $rc -eq 2 ] && grep -q 'no layout record' "$TMP/gc.out" || fail "a dump without the guest: exit $rc ($(cat "$TMP/gc.out"))"
# Still running after cont: a new status line arrives.
n=$(grep -c '^BMG status' "$TMP/console.log")
deadline=$((SECONDS + 60))
until [ "$(grep -c '^BMG status' "$TMP/console.log")" -gt "$n" ]; do
    [ $SECONDS -lt $deadline ] || fail "the guest did not run on after cont"
    sleep 0.2
done
! grep -q '^BMG error' "$TMP/console.log" || fail "the guest reported data errors"
qmp quit || true
wait_pid "$QPID" 30
rm -f "$TMP/ram.dump" "$TMP/ram.bad" "$TMP/vda.bad" "$TMP/zero.dump"

log "a bad command line fails cleanly"
run_guest "blkmig.workload=mem=8M/s,bogus=1"
[ "$RC" -eq 2 ] || fail "a bad workload key: exit $RC, expected 2"
grep -q "^BMG fatal: bad workload key" "$TMP/console.txt" || fail "no message for a bad key"

log "a legacy (version 1) virtio-mmio device is refused with the QEMU option to use"
run_guest "blkmig.run=1" -global virtio-mmio.force-legacy=true
[ "$RC" -eq 2 ] || fail "a legacy device: exit $RC, expected 2"
grep -q "force-legacy=false" "$TMP/console.txt" || fail "no hint for a legacy device"
log "ok"
