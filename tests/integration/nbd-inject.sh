#!/usr/bin/env bash
# Integration: `blkmig nbd-serve --inject` fault injection: seeded rates, delay, after=, count=, errno on the wire.
. "$(dirname "$0")/../lib.sh"

need_cmd timeout coreutils
need_python_nbd

IMG=$TMP/disk.img
truncate -s 16M "$IMG"

# inj.py MODE URI [ARGS]: drive one connection, print results on stdout.
#   writes N      N sequential 4 KiB writes: one errno per write (0 = ok), comma-separated;
#                 successful writes must read back
#   readtime      seconds one 4 KiB read takes, then one write's time (unmatched by read rules)
#   flushes N     errno of N sequential flushes
#   ops N         errno of N mixed requests (read, write, flush, zero, trim, cache, ...)
cat >"$TMP/inj.py" <<'PY'
import sys, time
import nbd
mode, uri = sys.argv[1:3]
h = nbd.NBD()
h.connect_uri(uri)

def run(fn, *a):
    try:
        fn(*a)
        return 0
    except nbd.Error as e:
        return e.errnum

if mode == "writes":
    n = int(sys.argv[3])
    res = []
    for i in range(n):
        buf = bytes([(i * 7 + 1) & 255]) * 4096
        r = run(h.pwrite, buf, i * 4096)
        if r == 0 and bytes(h.pread(4096, i * 4096)) != buf:
            sys.exit(f"write {i} succeeded but reads back wrong")
        res.append(r)
    print(",".join(map(str, res)))
elif mode == "readtime":
    t = time.monotonic()
    h.pread(4096, 0)
    r = time.monotonic() - t
    t = time.monotonic()
    h.pwrite(b"x" * 4096, 0)
    print(f"{r:.4f} {time.monotonic() - t:.4f}")
elif mode == "flushes":
    h.pwrite(b"y" * 4096, 8192)
    print(",".join(str(run(h.flush)) for _ in range(int(sys.argv[3]))))
elif mode == "ops":
    ops = [lambda: h.pread(4096, 0), lambda: h.pwrite(b"z" * 4096, 4096), lambda: h.flush(),
           lambda: h.zero(4096, 8192), lambda: h.trim(4096, 12288), lambda: h.cache(4096, 0)]
    n = int(sys.argv[3])
    print(",".join(str(run(ops[i % len(ops)])) for i in range(n)))
h.shutdown()
PY

# client MODE ARGS...: run inj.py against $URI, output in $OUT.
client() {
    OUT=$(timeout 30 "$PYTHON_NBD" "$TMP/inj.py" "$1" "$URI" "${@:2}") ||
        fail "inj.py $* failed (rc $?)"
}

# count_of LIST VALUE: how many comma-separated entries of LIST equal VALUE.
count_of() { tr ',' '\n' <<<"$1" | grep -cx "$2" || true; }

N=48
log "write:error=EIO:rate=0.5 --seed 42: some writes fail with EIO (5), the rest succeed"
start_server --inject 'write:error=EIO:rate=0.5' --seed 42 "$IMG"
client writes $N
A=$OUT
stop_server
log "  seed 42 pattern: $A"
[ "$(tr ',' '\n' <<<"$A" | grep -cvxE '0|5' || true)" -eq 0 ] || fail "errnos other than 0/EIO: $A"
fails=$(count_of "$A" 5)
[ "$fails" -ge $((N / 8)) ] && [ "$fails" -le $((N - N / 8)) ] ||
    fail "rate=0.5 failed $fails of $N writes"

log "same seed after a restart: the same pattern"
start_server --inject 'write:error=EIO:rate=0.5' --seed 42 "$IMG"
client writes $N
B=$OUT
stop_server
[ "$A" = "$B" ] || fail "seed 42 gave two patterns: $A / $B"

log "another seed: a different pattern"
start_server --inject 'write:error=EIO:rate=0.5' --seed 43 "$IMG"
client writes $N
C=$OUT
stop_server
log "  seed 43 pattern: $C"
[ "$A" != "$C" ] || fail "seeds 42 and 43 gave the same pattern: $A"

log "seeds are independent: seed 43 is not seed 42 with the requests renumbered"
# If the seed were only XORed into the request number before hashing, seed 43 would decide at
# request k exactly as seed 42 does at request k ^ 1 (42 ^ 43 = 1): for independent seeds that
# happens with probability 2^-48. (Recorded; the remaining checks still run.)
SEED_BUG=
IFS=, read -ra a <<<"$A"
IFS=, read -ra c <<<"$C"
for ((k = 0; k < N; k++)); do
    [ "${c[k]}" = "${a[k ^ 1]}" ] || break
done
if [ $k -eq $N ]; then
    SEED_BUG="seed 43's fault pattern is seed 42's with requests k and k^1 swapped, for all $N writes: the seed only renumbers requests (seed s at request k = seed s^d at request k^d)"
    echo "FAIL: $TEST_NAME: $SEED_BUG" >&2
fi

log "no --inject: no write fails"
start_server "$IMG"
client writes 8
[ "$OUT" = "0,0,0,0,0,0,0,0" ] || fail "without --inject: $OUT"
stop_server

log "read:delay=50ms: a read takes >= 40 ms"
start_server --inject 'read:delay=50ms' "$IMG"
client readtime
read -r rt wt <<<"$OUT"
log "  read ${rt}s, write ${wt}s"
awk -v t="$rt" 'BEGIN { exit !(t >= 0.040) }' || fail "delayed read took only ${rt}s"
stop_server

log "flush:error=EIO:after=3: flushes 1-3 succeed, the 4th (and later) fail with EIO"
start_server --inject 'flush:error=EIO:after=3' "$IMG"
client flushes 5
[ "$OUT" = "0,0,0,5,5" ] || fail "flush errnos $OUT, expected 0,0,0,5,5"
stop_server

log "all:error=ENOSPC:count=2: exactly the first 2 requests fail with ENOSPC (28)"
start_server --inject 'all:error=ENOSPC:count=2' "$IMG"
client ops 8
[ "$OUT" = "28,28,0,0,0,0,0,0" ] || fail "errnos $OUT, expected 28,28,0,0,0,0,0,0"
stop_server

check_server_log
[ -z "$SEED_BUG" ] || fail "$SEED_BUG"
exit 0
