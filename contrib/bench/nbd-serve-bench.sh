#!/usr/bin/env bash
# contrib/bench/nbd-serve-bench.sh: blkmig nbd-serve vs nbdkit file vs qemu-nbd, side by side.
#
# Same image, same client, same run, alternating servers each repetition; medians reported.
# Rows: fio (nbd engine) 4 KiB random read and write at QD 32, 1 MiB sequential read and write
# (QD 8), and nbdcopy of a 4 GiB image with 2 GiB allocated to the null sink.
# Cache settings (all three use the host page cache, no O_DIRECT):
#   blkmig nbd-serve: buffered pread/pwrite (its only mode)
#   nbdkit file:      cache=default (buffered), default thread model (parallel, 16 threads)
#   qemu-nbd:         --cache=writeback --aio=threads (its defaults), -f raw
# Knobs: QUICK=1 (1 rep, 5 s per fio job), FULL=1 (5 reps, 20 s), REPS, RUNTIME, FIO_SIZE,
# COPY_SIZE_G, BENCH_DIR (where images live; default /var/tmp), BLKMIG (binary to test; default
# a fresh optimised build in build/release).
# Last line: RESULT nbd-serve {json}.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
. "$top/contrib/deps.sh"

REPS=${REPS:-3}
RUNTIME=${RUNTIME:-10}
[ "${QUICK:-0}" = 1 ] && { REPS=1; RUNTIME=5; }
[ "${FULL:-0}" = 1 ] && { REPS=5; RUNTIME=20; }
FIO_SIZE=${FIO_SIZE:-1G}
COPY_SIZE_G=${COPY_SIZE_G:-4}
BENCH_DIR=${BENCH_DIR:-/var/tmp}

bm_install_deps test
if [ -z "${BLKMIG:-}" ]; then
    bm_build "$top" "$top/build/release"
    BLKMIG=$BM_BUILD_DIR/blkmig
    if grep -q -- '--enable-sanitizers' "$BM_BUILD_DIR/.bm-configure-args" 2>/dev/null ||
       grep -q 'fsanitize' "$BM_BUILD_DIR/Makefile" 2>/dev/null && \
       grep -q '^SAN_CFLAGS = -f' "$BM_BUILD_DIR/Makefile"; then
        echo "bench: $BLKMIG is a sanitizer build; set BLKMIG to an optimised binary" >&2
        exit 1
    fi
fi
for c in nbdkit qemu-nbd fio nbdcopy python3; do
    command -v $c >/dev/null || { echo "bench: $c missing" >&2; exit 1; }
done

work=$(mktemp -d "$BENCH_DIR/blkmig-bench.XXXXXX")
spid=
cleanup() {
    [ -n "$spid" ] && { kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null; } || true
    rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    local i
    for i in $(seq 200); do
        (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "bench: server did not start on port $1" >&2
    return 1
}

# start SERVER IMAGE: sets $spid and $uri.
start() {
    local p
    p=$(port)
    case $1 in
    blkmig) "$BLKMIG" nbd-serve --foreground --bind 127.0.0.1 --port "$p" "$2" 2>/dev/null & ;;
    nbdkit) nbdkit --foreground --exit-with-parent -i 127.0.0.1 -p "$p" file "$2" \
                cache=default 2>/dev/null & ;;
    qemu-nbd) qemu-nbd --persistent --shared=64 --bind 127.0.0.1 --port "$p" -f raw \
                --cache=writeback --aio=threads "$2" 2>/dev/null & ;;
    esac
    spid=$!
    wait_port "$p"
    uri=nbd://127.0.0.1:$p
}
stop() {
    kill "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    spid=
}

# fio_job RW BS QD -> MB/s (decimal MB, read+write)
fio_job() {
    fio --name=bench --ioengine=nbd --uri="$uri" --rw="$1" --bs="$2" --iodepth="$3" \
        --size="$FIO_SIZE" --runtime="$RUNTIME" --time_based --ramp_time=1 \
        --randrepeat=0 --norandommap --output-format=json --output="$work/fio.json" \
        >/dev/null 2>&1
    python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
print("%.1f" % ((j["read"]["bw_bytes"] + j["write"]["bw_bytes"]) / 1e6))' "$work/fio.json"
}

copy_job() {
    local t0 t1
    t0=$(date +%s.%N)
    nbdcopy "$uri" null:
    t1=$(date +%s.%N)
    python3 -c "print('%.1f' % ($COPY_ALLOC / ($t1 - $t0) / 1e6))"
}

echo "bench: preparing images in $work"
img=$work/fio.img
fio --name=fill --filename="$img" --rw=write --bs=1M --size="$FIO_SIZE" --refill_buffers \
    --output-format=terse >/dev/null
copy_img=$work/copy.img
truncate -s "${COPY_SIZE_G}G" "$copy_img"
# Half allocated: alternate 64 MiB data / 64 MiB hole.
n=$((COPY_SIZE_G * 1024 / 128))
for i in $(seq 0 $((n - 1))); do
    dd if=/dev/urandom of="$copy_img" bs=1M count=64 seek=$((i * 128)) conv=notrunc status=none
done
COPY_ALLOC=$((n * 64 * 1048576))
# Warm the page cache for all servers alike.
cat "$img" "$copy_img" >/dev/null

servers=(blkmig nbdkit qemu-nbd)
rows=("randread 4k 32" "randwrite 4k 32" "read 1M 8" "write 1M 8" "nbdcopy")
declare -A res
for rep in $(seq "$REPS"); do
    for row in "${rows[@]}"; do
        # Rotate the server order each repetition so none always goes first.
        for k in 0 1 2; do
            s=${servers[$(((k + rep) % 3))]}
            if [ "$row" = nbdcopy ]; then
                start "$s" "$copy_img"
                v=$(copy_job)
            else
                start "$s" "$img"
                # shellcheck disable=SC2086
                v=$(fio_job $row)
            fi
            stop
            res["$row|$s"]="${res["$row|$s"]:-} $v"
            echo "bench: rep $rep  $row  $s  $v MB/s"
        done
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

echo
printf '%-18s %12s %12s %12s %10s\n' "MB/s (median)" blkmig nbdkit qemu-nbd "ratio*"
json_rows=""
for row in "${rows[@]}"; do
    b=$(median <<<"${res["$row|blkmig"]}")
    k=$(median <<<"${res["$row|nbdkit"]}")
    q=$(median <<<"${res["$row|qemu-nbd"]}")
    ratio=$(python3 -c "print('%.2f' % ($b / max($k, $q)))")
    printf '%-18s %12s %12s %12s %10s\n' "$row" "$b" "$k" "$q" "$ratio"
    json_rows="$json_rows{\"row\":\"$row\",\"blkmig\":$b,\"nbdkit\":$k,\"qemu_nbd\":$q,\"ratio\":$ratio},"
done
echo "* ratio = blkmig / max(nbdkit, qemu-nbd); >= 1.00 meets the bar"
echo "RESULT nbd-serve {\"reps\":$REPS,\"runtime_s\":$RUNTIME,\"fio_size\":\"$FIO_SIZE\",\"copy_size_g\":$COPY_SIZE_G,\"copy_alloc_bytes\":$COPY_ALLOC,\"nproc\":$(nproc),\"rows\":[${json_rows%,}]}"
