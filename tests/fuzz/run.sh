#!/bin/bash
# tests/fuzz/run.sh: build the libFuzzer harnesses (tests/fuzz/build.sh, clang) and run each
# for FUZZ_TIME seconds (default 15) over its seed corpus (tests/fuzz/corpus/NAME, regression
# inputs included); skipped (77) without clang and libFuzzer. Any crash, leak, sanitizer
# report or input slower than FUZZ_TIMEOUT seconds (default 25) fails the test, and the
# reproducer is kept under the build tree (tests/fuzz/artifacts/) with the command to rerun it.
#   FUZZ_TIME=600 FUZZ_HARNESSES="mig-stream control" tests/fuzz/run.sh    (docs/fuzzing.md)
. "$(dirname "$0")/../lib.sh"

fuzz_src=$top_srcdir/tests/fuzz
build=$top_builddir/tests/fuzz/build
artifacts=$top_builddir/tests/fuzz/artifacts
: "${FUZZ_TIME:=15}" "${FUZZ_TIMEOUT:=25}"

rc=0
nice "$fuzz_src/build.sh" "$build" >"$TMP/build.log" 2>&1 || rc=$?
if [ $rc -eq 77 ]; then
    skip "$(tail -n 1 "$TMP/build.log")"
elif [ $rc -ne 0 ]; then
    cat "$TMP/build.log" >&2
    fail "the fuzz harnesses do not build"
fi

if [ -z "${FUZZ_HARNESSES:-}" ]; then
    FUZZ_HARNESSES=$(cd "$fuzz_src" && ls fuzz-*.c | sed 's/^fuzz-//; s/\.c$//')
fi
mkdir -p "$artifacts"
failed=()
for h in $FUZZ_HARNESSES; do
    [ -x "$build/fuzz-$h" ] || fail "no harness $h"
    mkdir -p "$TMP/corpus/$h"
    dict=()
    [ -f "$fuzz_src/$h.dict" ] && dict=(-dict="$fuzz_src/$h.dict")
    log "fuzz-$h: ${FUZZ_TIME}s"
    # New inputs go to the first (scratch) directory; the tree's corpus is only read.
    if ! (cd "$TMP" && nice "$build/fuzz-$h" -max_total_time="$FUZZ_TIME" \
            -timeout="$FUZZ_TIMEOUT" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 \
            -error_exitcode=1 -timeout_exitcode=1 -artifact_prefix="$artifacts/$h-" \
            "${dict[@]}" "$TMP/corpus/$h" "$fuzz_src/corpus/$h" >"$TMP/$h.log" 2>&1); then
        grep -E 'runtime error|ERROR: |SUMMARY: ' "$TMP/$h.log" >&2 || true
        grep -v '^#[0-9]' "$TMP/$h.log" | tail -n 40 >&2
        repro=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$TMP/$h.log" | tail -n 1)
        echo "FAIL: fuzz-$h: reproducer ${repro:-(none written)}; rerun:" \
            "$build/fuzz-$h ${repro:-}" >&2
        failed+=("$h")
        continue
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$TMP/$h.log")
    log "fuzz-$h: ${runs:-?} inputs, no crash"
done
[ ${#failed[@]} -eq 0 ] || fail "crashed: ${failed[*]}"
