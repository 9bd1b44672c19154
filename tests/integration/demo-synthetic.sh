#!/usr/bin/env bash
# Integration: `blkmig demo --synthetic --loopback`, small: the whole job ends in success, and
# the demo waits for the source process to end after the migration rather than looking once
# (BLKMIG_TEST_FAULT=source-slow-exit makes the source take 5 s to exit, as a KVM VM's
# teardown may).
. "$(dirname "$0")/../lib.sh"

need_cmd timeout coreutils
[ -x "$BLKMIG" ] || skip "no blkmig binary at $BLKMIG (build it first)"
SOFT_FAILS=0

run_demo() {
    local label=$1 rc=0
    shift
    timeout -k 5 300 env "$@" "$BLKMIG" demo --synthetic --loopback --ram 64M --disk-size 64M \
        --disk-fill 16M >"$TMP/$label.out" 2>&1 || rc=$?
    log "$label: exit $rc: $(grep 'the source process' "$TMP/$label.out" | sed 's/.*; //')"
    check_sanitizer_log "$TMP/$label.out"
    [ $rc -eq 0 ] || soft_fail "$label: demo exited $rc: $(tail -5 "$TMP/$label.out")"
    grep -q '^blkmig demo: success' "$TMP/$label.out" || soft_fail "$label: no success line"
    grep -q 'the source process has exited$' "$TMP/$label.out" ||
        soft_fail "$label: the demo does not say the source exited: $(grep 'source process' "$TMP/$label.out")"
}

run_demo plain
run_demo slow-source BLKMIG_TEST_FAULT=source-slow-exit
finish_test
