#!/usr/bin/env bash
# Interop: nbdcopy round trips of a sparse image (NBD->file, file->NBD, NBD->NBD), multi-conn, sparseness.
. "$(dirname "$0")/../lib.sh"

need_cmd nbdcopy libnbd-bin

MIB=$((1024 * 1024))
SIZE_MIB=64
SIZE=$((SIZE_MIB * MIB))

alloc() { du --block-size=1 "$1" | cut -f1; }

# check_copy FILE WHAT: FILE has the source's size and checksum.
check_copy() {
    local file=$1 what=$2
    [ "$(stat -c %s "$file")" -eq "$SIZE" ] || fail "$what: size $(stat -c %s "$file"), expected $SIZE"
    [ "$(sum "$file")" = "$SRC_SUM" ] || fail "$what: checksum differs from the source"
}

# check_sparse FILE WHAT: FILE's allocation is well below its size and near the source's.
check_sparse() {
    local file=$1 what=$2 a
    a=$(alloc "$file")
    [ "$a" -lt $((SIZE / 4)) ] || fail "$what: not sparse, $a bytes allocated of $SIZE"
    [ "$a" -le $((SRC_ALLOC + MIB)) ] || fail "$what: $a bytes allocated, source has $SRC_ALLOC"
    # The source's random data (8 MiB in 1 MiB extents) must really be there.
    [ "$a" -ge $((SRC_ALLOC - MIB)) ] || fail "$what: only $a bytes allocated, source has $SRC_ALLOC"
    log "$what: checksum matches, $a of $SIZE bytes allocated (source $SRC_ALLOC)"
}

make_sparse_image "$TMP/src.img" "$SIZE_MIB"
SRC_SUM=$(sum "$TMP/src.img")
SRC_ALLOC=$(alloc "$TMP/src.img")
[ "$SRC_ALLOC" -lt $((SIZE / 4)) ] || skip "filesystem of $TMP does not keep files sparse"

truncate -s "$SIZE" "$TMP/dst.img" "$TMP/dst2.img" "$TMP/dst3.img" "$TMP/dst4.img"
head -c "$SIZE" /dev/urandom >"$TMP/full.img"

start_server --log-level info \
    --export src="$TMP/src.img" --export dst="$TMP/dst.img" --export dst2="$TMP/dst2.img" \
    --export dst3="$TMP/dst3.img" --export dst4="$TMP/dst4.img" --export full="$TMP/full.img"

# ---- NBD -> local file ----
nbdcopy "$URI/src" "$TMP/out.img" || fail "nbdcopy NBD -> file failed"
check_copy "$TMP/out.img" "NBD -> file"
check_sparse "$TMP/out.img" "NBD -> file"

# ---- local file -> NBD (empty sparse target) ----
nbdcopy --flush "$TMP/src.img" "$URI/dst" || fail "nbdcopy file -> NBD failed"
check_copy "$TMP/dst.img" "file -> NBD"
check_sparse "$TMP/dst.img" "file -> NBD"

# ---- multi-conn: 4 connections, 64 requests in flight each ----
nbdcopy -v --threads 4 --connections 4 --requests 64 "$TMP/src.img" "$URI/dst2" 2>"$TMP/v.log" \
    || { tail -20 "$TMP/v.log" >&2; fail "nbdcopy --connections 4 --requests 64 failed"; }
grep -q 'connections=4 requests=64' "$TMP/v.log" \
    || fail "nbdcopy did not use 4 connections: $(grep -m1 'connections=' "$TMP/v.log")"
nconn=$(grep -oE 'debug: dst[0-9]+: nbd_(opt_go|connect_uri): leave: ret=0' "$TMP/v.log" \
    | cut -d: -f2 | sort -u | wc -l)
[ "$nconn" -eq 4 ] || fail "nbdcopy opened $nconn connections to the multi-conn export, expected 4"
check_copy "$TMP/dst2.img" "file -> NBD, 4 connections"
check_sparse "$TMP/dst2.img" "file -> NBD, 4 connections"

# NBD -> NBD with multi-conn on both ends.
nbdcopy --threads 4 --connections 4 --requests 64 "$URI/src" "$URI/dst3" \
    || fail "nbdcopy NBD -> NBD failed"
check_copy "$TMP/dst3.img" "NBD -> NBD, 4 connections"
check_sparse "$TMP/dst3.img" "NBD -> NBD, 4 connections"

# ---- into a fully allocated random target: the holes must be zeroed over NBD ----
nbdcopy --connections 4 --requests 64 "$TMP/src.img" "$URI/full" \
    || fail "nbdcopy into a non-empty target failed"
check_copy "$TMP/full.img" "file -> NBD over random data"
log "file -> NBD over random data: checksum matches ($(alloc "$TMP/full.img") bytes allocated)"

# ---- --allocated: zeroes sent with NO_HOLE must be fully provisioned ----
nbdcopy --allocated "$TMP/src.img" "$URI/dst4" || fail "nbdcopy --allocated failed"
check_copy "$TMP/dst4.img" "file -> NBD --allocated"
a=$(alloc "$TMP/dst4.img")
[ "$a" -ge "$SIZE" ] || fail "--allocated (WRITE_ZEROES+NO_HOLE): only $a of $SIZE bytes allocated"
log "file -> NBD --allocated: checksum matches, fully allocated ($a bytes)"

stop_server
check_server_log
exit 0
