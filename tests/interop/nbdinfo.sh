#!/usr/bin/env bash
# Interop: nbdinfo sees the right size, flags, export list and extent map (base:allocation).
. "$(dirname "$0")/../lib.sh"

need_cmd nbdinfo libnbd-bin
need_cmd python3

# info_fields URI OUT: `nbdinfo --json` of URI flattened to "KEY JSON-VALUE" lines in OUT.
info_fields() {
    nbdinfo --json "$1" >"$TMP/info.json" || fail "nbdinfo --json $1 failed"
    python3 - "$TMP/info.json" >"$2" <<'PY'
import json, sys
e = json.load(open(sys.argv[1]))["exports"][0]
for k, v in e.items():
    print(k, json.dumps(v))
PY
}

# field FILE KEY: one value from info_fields output ("missing" when absent).
field() {
    awk -v k="$2" '$1 == k { $1 = ""; sub(/^ /, ""); print; found = 1 } END { if (!found) print "missing" }' "$1"
}

# real_map FILE: the file's extent map from SEEK_DATA/SEEK_HOLE, adjacent same-type ranges
# merged, one "OFFSET LENGTH TYPE" line per range (data=0, hole=3).
real_map() {
    python3 - "$1" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
out, off = [], 0
while off < size:
    try:
        data = os.lseek(fd, off, os.SEEK_DATA)
    except OSError:            # ENXIO: only a hole is left
        data = size
    if data > off:
        out.append([off, min(data, size) - off, 3])
        off = min(data, size)
        continue
    hole = min(os.lseek(fd, off, os.SEEK_HOLE), size)
    out.append([off, hole - off, 0])
    off = hole
merged = []
for o, l, t in out:
    if merged and merged[-1][2] == t and merged[-1][0] + merged[-1][1] == o:
        merged[-1][1] += l
    else:
        merged.append([o, l, t])
for o, l, t in merged:
    print(o, l, t)
PY
}

# nbd_map URI: `nbdinfo --map` reduced to "OFFSET LENGTH TYPE", adjacent same-type ranges merged.
nbd_map() {
    nbdinfo --map "$1" | awk '
        { o = $1; l = $2; t = $3
          if (n && t == pt && po + pl == o) { pl += l; next }
          if (n) print po, pl, pt
          po = o; pl = l; pt = t; n = 1 }
        END { if (n) print po, pl, pt }'
}

# check_map URI FILE WHAT: the served map equals the file's real map and covers the whole file.
check_map() {
    local uri=$1 file=$2 what=$3
    real_map "$file" >"$TMP/map.real"
    nbd_map "$uri" >"$TMP/map.nbd"
    if ! cmp -s "$TMP/map.real" "$TMP/map.nbd"; then
        diff -u "$TMP/map.real" "$TMP/map.nbd" >&2 || true
        fail "$what: nbdinfo --map differs from the file's SEEK_DATA/SEEK_HOLE map"
    fi
    local covered
    covered=$(awk '{ s += $2 } END { print s + 0 }' "$TMP/map.nbd")
    [ "$covered" -eq "$(stat -c %s "$file")" ] || fail "$what: map covers $covered bytes"
    log "map of $what matches the file ($(wc -l <"$TMP/map.nbd") ranges)"
}

# ---- one read-write export: size, flags, map ----
make_sparse_image "$TMP/a.img" 32
start_server "$TMP/a.img"

info_fields "$URI" "$TMP/info"
size=$(field "$TMP/info" export-size)
[ "$size" = $((32 * 1024 * 1024)) ] || fail "export-size $size, expected $((32 * 1024 * 1024))"
log "export-size $size"

for flag in can_flush can_fua can_trim can_zero can_multi_conn can_df can_cache can_fast_zero; do
    v=$(field "$TMP/info" "$flag")
    [ "$v" = true ] || fail "$flag is $v, expected true"
done
v=$(field "$TMP/info" is_read_only)
[ "$v" = false ] || fail "is_read_only is $v on a writable export"
log "flags: flush fua trim zero multi_conn df cache fast_zero set, not read-only"

field "$TMP/info" contexts | grep -q '"base:allocation"' || fail "base:allocation missing from contexts"
log "base:allocation context advertised"

check_map "$URI" "$TMP/a.img" "sparse image"

# Rewrite the file under the server (allocate a hole, punch a data range): the map follows.
dd if=/dev/urandom of="$TMP/a.img" bs=64K count=3 seek=64 conv=notrunc status=none
fallocate --punch-hole --keep-size --offset $((5 * 1024 * 1024)) --length $((512 * 1024)) "$TMP/a.img"
check_map "$URI" "$TMP/a.img" "modified image"
stop_server

# ---- odd sizes and edge shapes: unaligned size with tail data / tail hole, all data, all hole, fragmented ----
truncate -s $((5 * 1024 * 1024 + 1000)) "$TMP/odd.img"
dd if=/dev/urandom of="$TMP/odd.img" bs=4096 count=1 seek=1280 conv=notrunc status=none
truncate -s $((5 * 1024 * 1024 + 1000)) "$TMP/odd.img"
truncate -s $((3 * 1024 * 1024 + 513)) "$TMP/odd2.img"
dd if=/dev/urandom of="$TMP/odd2.img" bs=4096 count=1 seek=256 conv=notrunc status=none
head -c $((3 * 1024 * 1024)) /dev/urandom >"$TMP/full.img"
truncate -s 8M "$TMP/empty.img"
# Fragmented: 512 data extents of 4 KiB alternating with 4 KiB holes.
truncate -s 4M "$TMP/frag.img"
python3 - "$TMP/frag.img" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
for i in range(0, 4 << 20, 8192):
    os.pwrite(fd, os.urandom(4096), i)
PY
for f in odd odd2 full empty frag; do
    start_server "$TMP/$f.img"
    nbdinfo --size "$URI" >"$TMP/size" || fail "nbdinfo --size ($f) failed"
    [ "$(cat "$TMP/size")" = "$(stat -c %s "$TMP/$f.img")" ] \
        || fail "$f.img: nbdinfo --size $(cat "$TMP/size"), file is $(stat -c %s "$TMP/$f.img")"
    check_map "$URI" "$TMP/$f.img" "$f.img"
    stop_server
done

# ---- --readonly ----
start_server --readonly "$TMP/a.img"
info_fields "$URI" "$TMP/info"
v=$(field "$TMP/info" is_read_only)
[ "$v" = true ] || fail "is_read_only is $v with --readonly"
log "--readonly: is_read_only true"
# Optional write-side flags may be advertised or not, but the size and map must still be right.
size=$(field "$TMP/info" export-size)
[ "$size" = "$(stat -c %s "$TMP/a.img")" ] || fail "readonly export-size $size"
check_map "$URI" "$TMP/a.img" "read-only export"
stop_server

# ---- --list of several named exports ----
truncate -s 1M "$TMP/one.img"
truncate -s 3M "$TMP/three.img"
start_server --export alpha="$TMP/one.img" --export beta="$TMP/three.img" --export gamma="$TMP/a.img"
nbdinfo --list --json "$URI" >"$TMP/list.json" || fail "nbdinfo --list failed"
python3 - "$TMP/list.json" >"$TMP/list.txt" <<'PY' || fail "cannot parse nbdinfo --list --json"
import json, sys
for e in json.load(open(sys.argv[1]))["exports"]:
    print(e["export-name"], e["export-size"])
PY
sort "$TMP/list.txt" >"$TMP/list.sorted"
printf '%s\n' "alpha $((1024 * 1024))" "beta $((3 * 1024 * 1024))" "gamma $((32 * 1024 * 1024))" \
    >"$TMP/list.expected"
if ! cmp -s "$TMP/list.expected" "$TMP/list.sorted"; then
    diff -u "$TMP/list.expected" "$TMP/list.sorted" >&2 || true
    fail "nbdinfo --list shows the wrong exports"
fi
log "--list: alpha beta gamma with the right sizes"

check_map "$URI/gamma" "$TMP/a.img" "named export gamma"
[ "$(nbdinfo --size "$URI/beta")" = $((3 * 1024 * 1024)) ] || fail "size of export beta"
if nbdinfo --size "$URI/nosuch" >/dev/null 2>&1; then
    fail "connecting to a nonexistent export name succeeded"
fi
log "named exports resolve; an unknown name is refused"
stop_server

check_server_log
exit 0
