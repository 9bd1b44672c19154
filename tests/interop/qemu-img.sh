#!/usr/bin/env bash
# Interop: qemu-img info/convert/compare against the server (both copy directions, mismatch detection).
. "$(dirname "$0")/../lib.sh"

need_cmd qemu-img qemu-utils

MIB=$((1024 * 1024))
SIZE=$((32 * MIB))
alloc() { du --block-size=1 "$1" | cut -f1; }

# poke FILE OFFSET: overwrite one byte of FILE in place with a value it does not hold.
poke() {
    local old new
    old=$(od -An -tu1 -j "$2" -N1 "$1" | tr -d ' ')
    new=$(((old + 1) % 256))
    printf "\\$(printf '%03o' "$new")" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# expect_mismatch OFFSET WHAT: qemu-img compare must exit 1 and name the changed sector.
expect_mismatch() {
    local off=$1 what=$2 rc=0 out got
    out=$(qemu-img compare -f raw -F raw "$URI" "$TMP/local.img" 2>&1) || rc=$?
    [ $rc -eq 1 ] || fail "$what: qemu-img compare exited $rc, expected 1 (output: $out)"
    got=$(sed -n 's/.*Content mismatch at offset \([0-9]*\).*/\1/p' <<<"$out")
    [ -n "$got" ] || fail "$what: no 'Content mismatch' in: $out"
    if [ "$got" -gt "$off" ] || [ "$got" -le $((off - 4096)) ]; then
        fail "$what: mismatch reported at $got, the changed byte is at $off"
    fi
    log "$what: compare reports a mismatch at $got (changed byte at $off), rc 1"
}

make_sparse_image "$TMP/src.img" 32
truncate -s "$SIZE" "$TMP/dst.img"
start_server --export dst="$TMP/dst.img" "$TMP/src.img"

# ---- qemu-img info ----
qemu-img info --output=json "$URI" >"$TMP/info.json" || fail "qemu-img info $URI failed"
vsize=$(sed -n 's/.*"virtual-size": *\([0-9]*\).*/\1/p' "$TMP/info.json")
[ "$vsize" = "$SIZE" ] || fail "qemu-img info: virtual-size '$vsize', expected $SIZE"
vsize=$(qemu-img info --output=json "$URI/dst" | sed -n 's/.*"virtual-size": *\([0-9]*\).*/\1/p')
[ "$vsize" = "$SIZE" ] || fail "qemu-img info (export dst): virtual-size '$vsize', expected $SIZE"
log "qemu-img info: virtual size $SIZE on both exports"

# ---- NBD -> local ----
qemu-img convert -f raw -O raw "$URI" "$TMP/local.img" || fail "qemu-img convert NBD -> local failed"
cmp "$TMP/src.img" "$TMP/local.img" || fail "NBD -> local: copy differs from the served file"
a=$(alloc "$TMP/local.img")
[ "$a" -lt $((SIZE / 2)) ] || fail "NBD -> local: copy not sparse ($a bytes allocated)"
log "convert NBD -> local: identical, $a bytes allocated"

out=$(qemu-img compare -f raw -F raw "$URI" "$TMP/local.img") || fail "qemu-img compare failed: $out"
[ "$out" = "Images are identical." ] || fail "qemu-img compare said: $out"
log "compare NBD vs local: identical"

# ---- local -> NBD (-n: existing, empty sparse export) ----
qemu-img convert -n -m 8 -W -f raw -O raw "$TMP/local.img" "$URI/dst" \
    || fail "qemu-img convert local -> NBD failed"
cmp "$TMP/local.img" "$TMP/dst.img" || fail "local -> NBD: the export's file differs"
a=$(alloc "$TMP/dst.img")
[ "$a" -lt $((SIZE / 2)) ] || fail "local -> NBD: target not sparse ($a bytes allocated)"
out=$(qemu-img compare -f raw -F raw "$URI/dst" "$TMP/local.img") || fail "compare dst: $out"
[ "$out" = "Images are identical." ] || fail "qemu-img compare (dst) said: $out"
log "convert local -> NBD: identical, $a bytes allocated"

# ---- negative compares: change the served file behind the server's back ----
off=$((5 * MIB + 12345))          # inside a data extent
poke "$TMP/src.img" "$off"
expect_mismatch "$off" "byte changed in a data extent"
cp --sparse=always "$TMP/src.img" "$TMP/local.img"
out=$(qemu-img compare -f raw -F raw "$URI" "$TMP/local.img") || fail "compare after resync: $out"

off=$((20 * MIB + 777))           # inside a hole: block status must now say data
poke "$TMP/src.img" "$off"
expect_mismatch "$off" "byte written into a hole"

stop_server
check_server_log
exit 0
