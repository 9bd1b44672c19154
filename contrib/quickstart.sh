#!/usr/bin/env bash
# contrib/quickstart.sh: install what is missing, build blkmig, and run the main job.
# Until live migration lands, the main job exports a demo disk image with `blkmig nbd-serve`,
# shows it with nbdinfo, copies it over NBD with nbdcopy and proves the copy identical.
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
cleanup() {
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
echo "== serving it: blkmig nbd-serve --bind 127.0.0.1 --port $port --pid-file ... $img"
"$BLKMIG" nbd-serve --bind 127.0.0.1 --port "$port" --pid-file "$work/server.pid" "$img"
server_pid=$(cat "$work/server.pid")
uri=nbd://127.0.0.1:$port

echo "== nbdinfo $uri"
nbdinfo "$uri"
echo "== nbdinfo --map $uri"
nbdinfo --map "$uri"

echo "== nbdcopy $uri -> local copy"
t0=$(date +%s.%N)
nbdcopy --progress=false "$uri" "$work/copy.img"
t1=$(date +%s.%N)
a=$(md5sum <"$img" | cut -d' ' -f1)
b=$(md5sum <"$work/copy.img" | cut -d' ' -f1)
alloc=$(du --block-size=1 "$work/copy.img" | cut -f1)

kill -TERM "$server_pid"
while kill -0 "$server_pid" 2>/dev/null; do sleep 0.05; done
server_pid=

echo
echo "== report"
printf '  export size        1 GiB (64 MiB allocated)\n'
printf '  copy time          %.2f s\n' "$(echo "$t1 - $t0" | bc -l 2>/dev/null || python3 -c "print($t1-$t0)")"
printf '  copy allocated     %d MiB (holes stayed holes)\n' $((alloc / 1048576))
printf '  source md5         %s\n  copy md5           %s\n' "$a" "$b"
if [ "$a" = "$b" ]; then
    echo "  result             identical: OK"
else
    echo "  result             MISMATCH" >&2
    exit 1
fi
