#!/usr/bin/env bash
# contrib/quickstart.sh: install what is missing, build blkmig, and run the main job.
# Until live migration lands, the main job is a live disk mirror: a demo disk image is served to
# a writer (fio) by `blkmig mirror`, which copies it to a `blkmig nbd-serve` target while it is
# being written, completes, and the target is proved identical.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/contrib/deps.sh"

bm_install_deps test
echo "== building blkmig"
bm_build "$top" "$top/build/release"
BLKMIG=$BM_BUILD_DIR/blkmig
"$BLKMIG" --version

work=$(mktemp -d /tmp/blkmig-quickstart.XXXXXX)
server_pid=
mirror_pid=
cleanup() {
    [ -n "$mirror_pid" ] && kill "$mirror_pid" 2>/dev/null || true
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "== making a 1 GiB demo image with 64 MiB of data in 8 extents"
img=$work/demo.img
truncate -s 1G "$img"
for i in 0 1 2 3 4 5 6 7; do
    dd if=/dev/urandom of="$img" bs=1M count=8 seek=$((i * 128 + 3)) conv=notrunc status=none
done

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target=$work/target.img
truncate -s 1G "$target"
echo "== the target host's disk: blkmig nbd-serve --port $port (an empty sparse 1 GiB image)"
"$BLKMIG" nbd-serve --bind 127.0.0.1 --port "$port" --pid-file "$work/server.pid" "$target"
server_pid=$(cat "$work/server.pid")
uri=nbd://127.0.0.1:$port
nbdinfo "$uri" | grep -E 'export-size|can_multi_conn|can_zero'

echo "== blkmig mirror: serve the demo disk to its writer and mirror it live to $uri"
"$BLKMIG" mirror --serve-unix "$work/src.sock" --control "$work/ctl.sock" --on-ready wait \
    "$img" "$uri" &
mirror_pid=$!
for _ in $(seq 100); do [ -S "$work/ctl.sock" ] && break; sleep 0.1; done
echo "== a writer: fio, 8 s of 4-64 KiB random writes at 20 MB/s, with crc32c verification"
fio --name=writer --ioengine=nbd --uri="nbd+unix:///?socket=$work/src.sock" --rw=randwrite \
    --bsrange=4k-64k --rate=20m --size=1G --runtime=8 --time_based --iodepth=8 \
    --verify=crc32c --verify_fatal=1 --verify_state_save=0 --output-format=terse \
    --output="$work/fio.txt" >/dev/null 2>&1 || { echo "fio failed" >&2; exit 1; }
echo "== blkmig control ... query"
"$BLKMIG" control "$work/ctl.sock" query
echo "== blkmig control ... complete"
"$BLKMIG" control "$work/ctl.sock" complete >/dev/null
wait "$mirror_pid"

kill -TERM "$server_pid"
while kill -0 "$server_pid" 2>/dev/null; do sleep 0.05; done
server_pid=
a=$(md5sum <"$img" | cut -d' ' -f1)
b=$(md5sum <"$target" | cut -d' ' -f1)
alloc=$(du --block-size=1 "$target" | cut -f1)
echo
echo "== report"
printf '  source             %s (1 GiB, written by fio during the mirror)\n' "$img"
printf '  target allocated   %d MiB (holes stayed holes)\n' $((alloc / 1048576))
printf '  source md5         %s\n  target md5         %s\n' "$a" "$b"
if [ "$a" = "$b" ]; then
    echo "  result             identical: OK"
else
    echo "  result             MISMATCH" >&2
    exit 1
fi
