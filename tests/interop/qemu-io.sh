#!/usr/bin/env bash
# Interop: qemu-io read/write/pattern, discard, write-zeroes (+unmap, +no-fallback), FUA, flush; file checked after.
. "$(dirname "$0")/../lib.sh"

need_cmd qemu-io qemu-utils
need_cmd python3

KIB=1024
MIB=$((1024 * 1024))
SIZE=$((8 * MIB))
IMG=$TMP/disk.img
EXP=$TMP/expected.img

# qio NAME CMD...: run qemu-io with one -c per CMD; output in $TMP/NAME.out; fail on non-zero exit.
qio() {
    local name=$1; shift
    local args=() c
    for c in "$@"; do args+=(-c "$c"); done
    qemu-io -f raw "$URI" "${args[@]}" >"$TMP/$name.out" 2>&1 \
        || fail "$name: qemu-io ${*} failed: $(tail -3 "$TMP/$name.out")"
    ! grep -q 'Pattern verification failed' "$TMP/$name.out" \
        || fail "$name: pattern mismatch: $(grep -m1 'Pattern verification failed' "$TMP/$name.out")"
}

# expect_fill OFF LEN BYTE: set that range of the expected image to BYTE.
expect_fill() {
    python3 - "$EXP" "$1" "$2" "$3" <<'PY'
import sys
path, off, length, byte = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4], 0)
with open(path, "r+b") as f:
    f.seek(off)
    f.write(bytes([byte]) * length)
PY
}

# check_range OFF LEN WHAT: the served file equals the expected image on that range.
check_range() {
    cmp -s -i "$1:$1" -n "$2" "$IMG" "$EXP" || fail "$3: file content at $1+$2 is wrong"
}

# data_bytes FILE OFF LEN: how many bytes of the range are allocated (SEEK_DATA/SEEK_HOLE).
data_bytes() {
    python3 - "$@" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
off, end = int(sys.argv[2]), int(sys.argv[2]) + int(sys.argv[3])
total = 0
while off < end:
    try:
        d = os.lseek(fd, off, os.SEEK_DATA)
    except OSError:
        break
    if d >= end:
        break
    h = min(os.lseek(fd, d, os.SEEK_HOLE), end)
    total += h - d
    off = h
print(total)
PY
}

head -c "$SIZE" /dev/urandom >"$IMG"
cp "$IMG" "$EXP"
start_server "$IMG"

# ---- write a pattern, read it back, and a wrong pattern must be detected ----
qio write-ab "write -P 0xab 0 64k" "read -P 0xab 0 64k"
expect_fill 0 $((64 * KIB)) 0xab
check_range 0 $((64 * KIB)) "write -P 0xab"
log "write -P 0xab 0 64k / read -P 0xab: ok, file holds 0xab"

rc=0
qemu-io -f raw "$URI" -c "read -P 0xcd 0 64k" >"$TMP/neg.out" 2>&1 || rc=$?
grep -q 'Pattern verification failed at offset 0' "$TMP/neg.out" \
    || fail "read -P 0xcd over 0xab data was not reported as a mismatch: $(cat "$TMP/neg.out")"
[ $rc -ne 0 ] || fail "qemu-io exited 0 after a failed pattern check"
log "read -P 0xcd over 0xab data: mismatch detected (rc $rc)"

qio read-v "read -v 0 32"
[ "$(grep -cE '^[0-9a-f]{8}:  (ab ){16}' "$TMP/read-v.out")" -eq 2 ] \
    || fail "read -v 0 32 should dump two lines of ab: $(head -3 "$TMP/read-v.out")"
log "read -v shows the 0xab bytes"

# Unaligned, odd-length write (no 512-byte alignment).
qio unaligned "write -P 0x11 4097 3000" "read -P 0x11 4097 3000"
expect_fill 4097 3000 0x11
check_range 0 $((64 * KIB)) "unaligned write"
log "unaligned write 4097+3000: ok"

# ---- discard (TRIM): the file-backed range is punched and reads back as zeroes ----
# (NBD leaves post-TRIM contents unspecified; a file export that punches holes reads zeroes.)
before=$(data_bytes "$IMG" $MIB $MIB)
qio discard "discard 1M 1M" "read -P 0 1M 1M"
expect_fill $MIB $MIB 0
check_range $MIB $MIB "discard 1M 1M"
after=$(data_bytes "$IMG" $MIB $MIB)
[ "$after" -lt "$before" ] || fail "discard 1M 1M did not deallocate anything ($before -> $after bytes)"
log "discard 1M 1M: reads zero, file range deallocated ($before -> $after bytes)"

# ---- write zeroes without unmap: zero and, per NO_HOLE, still provisioned ----
qio write-z "write -z 2M 1M" "read -P 0 2M 1M"
expect_fill $((2 * MIB)) $MIB 0
check_range $((2 * MIB)) $MIB "write -z 2M 1M"
a=$(data_bytes "$IMG" $((2 * MIB)) $MIB)
[ "$a" -eq $MIB ] || fail "write -z (WRITE_ZEROES+NO_HOLE) left only $a of $MIB bytes allocated"
log "write -z 2M 1M: reads zero, range stays allocated"

# ---- write zeroes with unmap ----
qio write-zu "write -z -u 3M 1M" "read -P 0 3M 1M"
expect_fill $((3 * MIB)) $MIB 0
check_range $((3 * MIB)) $MIB "write -z -u 3M 1M"
log "write -z -u 3M 1M: reads zero ($(data_bytes "$IMG" $((3 * MIB)) $MIB) bytes still allocated)"

# ---- fast zero (-n => NBD_CMD_FLAG_FAST_ZERO): either succeeds and zeroes, or fails with ENOTSUP ----
rc=0
qemu-io -f raw "$URI" -c "write -z -u -n 4M 512k" >"$TMP/fast.out" 2>&1 || rc=$?
if [ $rc -eq 0 ]; then
    expect_fill $((4 * MIB)) $((512 * KIB)) 0
    log "write -z -u -n (fast zero): done"
else
    grep -qi 'not supported' "$TMP/fast.out" \
        || fail "fast zero failed with something other than ENOTSUP: $(cat "$TMP/fast.out")"
    log "write -z -u -n (fast zero): refused with ENOTSUP"
fi
check_range $((4 * MIB)) $((512 * KIB)) "write -z -u -n"

# ---- FUA write, flush ----
qio fua "write -f -P 0x5a 5M 64k" "read -P 0x5a 5M 64k" "flush"
expect_fill $((5 * MIB)) $((64 * KIB)) 0x5a
check_range $((5 * MIB)) $((64 * KIB)) "write -f"
od -An -tx1 -j $((5 * MIB)) -N 16 "$IMG" | grep -q '^ 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a$' \
    || fail "od does not show 0x5a at 5M"
log "write -f (FUA) 0x5a 5M 64k and flush: ok, od shows 5a at 5M"

# Write zeroes with FUA on the last 4 KiB of the device.
qio tail "write -z -f $((SIZE - 4096)) 4096" "read -P 0 $((SIZE - 4096)) 4096" "flush"
expect_fill $((SIZE - 4096)) 4096 0
log "write -z -f on the last 4k: ok"

# ---- the whole file is exactly what the operations should have produced ----
cmp "$IMG" "$EXP" || fail "served file differs from the expected image"
log "whole file matches the expected image (cmp)"

stop_server

# ---- --readonly: reads work; writes/discards are refused (qemu will not open the
# READ_ONLY export read-write), the file is untouched ----
before=$(sum "$IMG")
start_server --readonly "$IMG"
qemu-io -r -f raw "$URI" -c "read -P 0x5a 5M 64k" >"$TMP/ro-read.out" 2>&1 \
    || fail "read from a read-only export failed: $(tail -2 "$TMP/ro-read.out")"
for cmd in "write -P 0x77 0 4k" "write -z 0 4k" "discard 0 4k"; do
    rc=0
    qemu-io -f raw "$URI" -c "$cmd" >"$TMP/ro.out" 2>&1 || rc=$?
    [ $rc -ne 0 ] || fail "'$cmd' on a read-only export succeeded"
done
[ "$(sum "$IMG")" = "$before" ] || fail "read-only export was modified"
log "--readonly: read ok, write / write -z / discard refused, file unchanged"
stop_server

check_server_log
exit 0
