#!/usr/bin/env bash
# nbd-hostile.sh: hostile NBD clients must not crash, wedge, bloat or corrupt `blkmig nbd-serve`.
. "$(dirname "$0")/../lib.sh"

need_cmd nbdinfo libnbd-bin
need_cmd nbdcopy libnbd-bin
HOSTILE=${HOSTILE:-$top_builddir/tests/integration/nbd-hostile}
[ -x "$HOSTILE" ] || fail "hostile client $HOSTILE is not built (make $HOSTILE, or set HOSTILE)"

SAN_PATTERN='ERROR: [A-Za-z]*Sanitizer|runtime error:'

alive() {
    kill -0 "$SERVER_PID" 2>/dev/null || fail "server died $1 (log: $(tail -20 "$TMP/server.log"))"
}

# server_stat Threads|VmRSS|fds: from the server's /proc status (VmRSS in kB), or its open fds.
server_stat() {
    if [ "$1" = fds ]; then
        ls "/proc/$SERVER_PID/fd" | wc -l
    else
        awk -v f="$1:" '$1 == f { print $2 }' "/proc/$SERVER_PID/status"
    fi
}

img=$TMP/disk.img
make_sparse_image "$img" 64
cp --sparse=always "$img" "$TMP/expected.img"
"$HOSTILE" --apply-pattern "$TMP/expected.img" || fail "cannot apply the write pattern"

# ASan keeps freed memory in a 256 MiB quarantine, which the connection churn would fill and
# show as RSS growth; cap it so the RSS check below measures the server, not the sanitizer.
ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=16" start_server "$img"
timeout 20 nbdinfo "$URI" >/dev/null || fail "nbdinfo failed before the attack"
sleep 0.5 # let nbdinfo's connection thread go
base_threads=$(server_stat Threads) base_fds=$(server_stat fds) base_rss=$(server_stat VmRSS)
log "baseline: $base_threads threads, $base_fds fds, VmRSS $base_rss kB"

problems=()
rc=0
"$HOSTILE" 127.0.0.1 "$PORT" >"$TMP/hostile.out" 2>&1 || rc=$?
sed "s/^/# $TEST_NAME: /" "$TMP/hostile.out" >&2
[ $rc -eq 0 ] || problems+=("hostile client exited $rc: $(grep FAIL "$TMP/hostile.out" || true)")

alive "during the attack"
timeout 20 nbdinfo "$URI" >/dev/null || problems+=("nbdinfo failed after the attack")
if timeout 30 nbdcopy "$URI" "$TMP/after.img"; then
    cmp "$TMP/expected.img" "$TMP/after.img" >&2 ||
        problems+=("export content differs from the image plus the hostile client's writes")
else
    problems+=("nbdcopy failed after the attack")
fi
cmp "$TMP/expected.img" "$img" >&2 || problems+=("image file differs from what was written")

# Every hostile connection is gone: threads and fds settle back to the baseline.
alive "after the attack"
for ((i = 0; i < 100; i++)); do
    threads=$(server_stat Threads) fds=$(server_stat fds)
    [ "$threads" -le $((base_threads + 1)) ] && [ "$fds" -le $((base_fds + 1)) ] && break
    sleep 0.1
done
rss=$(server_stat VmRSS)
log "after: $threads threads, $fds fds, VmRSS $rss kB"
[ "$threads" -le $((base_threads + 1)) ] || problems+=("threads: $base_threads, then $threads")
[ "$fds" -le $((base_fds + 1)) ] || problems+=("open fds: $base_fds before, $fds after")
[ $((rss - base_rss)) -le 65536 ] || problems+=("VmRSS grew from $base_rss kB to $rss kB")
! grep -qE "$SAN_PATTERN" "$TMP/server.log" ||
    problems+=("sanitizer report: $(grep -A15 -E "$SAN_PATTERN" "$TMP/server.log" | head -30)")
[ ${#problems[@]} -eq 0 ] || fail "$(printf '%s\n' "${problems[@]}")"

stop_server
! grep -qE "$SAN_PATTERN" "$TMP/server.log" ||
    fail "sanitizer report at exit: $(grep -A15 -E "$SAN_PATTERN" "$TMP/server.log" | head -30)"
log "ok"
