#!/usr/bin/env bash
# contrib/check.sh: install what is missing, build with ASan+UBSan, run the whole test suite.
# Exits non-zero on any failure. Works as root with no stdin (CI), or as a user with sudo.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/contrib/deps.sh"

start=$SECONDS
bm_install_deps test
bm_build "$top" "$top/build/check" --enable-sanitizers
echo "blkmig: built in $BM_BUILD_DIR with sanitizers; running the test suite"
rc=0
make -C "$BM_BUILD_DIR" -j"$(nproc)" check || rc=$?
if [ $rc -ne 0 ]; then
    echo "blkmig: test suite FAILED; logs of the failing tests follow" >&2
    for f in $(find "$BM_BUILD_DIR/tests" -name '*.log' ! -name 'test-suite.log'); do
        trs=${f%.log}.trs
        if [ -f "$trs" ] && grep -q '^:test-result: \(FAIL\|ERROR\)' "$trs"; then
            echo "===== $f" >&2
            tail -60 "$f" >&2
        fi
    done
fi
# The plain closing line, for readers of CI output.
trs=$(find "$BM_BUILD_DIR/tests" -name '*.trs' 2>/dev/null || true)
if [ -n "$trs" ]; then
    results=$(cat $trs | grep '^:test-result:' || true)
    pass=$(grep -c 'PASS' <<<"$results" || true)
    fail=$(grep -c 'FAIL\|ERROR' <<<"$results" || true)
    skip=$(grep -c 'SKIP' <<<"$results" || true)
    echo "check: $pass passed, $fail failed, $skip skipped"
fi
echo "blkmig: check took $((SECONDS - start)) s"
exit $rc
