#!/usr/bin/env bash
# Interop: with a multi-conn target, `blkmig mirror` copies over several connections but sends
# each flush on one of them only (a flush on one connection covers the writes completed on all,
# NBD_FLAG_CAN_MULTI_CONN), and the target ends up identical. Checked against nbdkit's file
# plugin (which advertises multi-conn) through its log filter, which records every request
# with the connection it came on.
. "$(dirname "$0")/../lib.sh"

need_cmd nbdkit nbdkit
nbdkit --filter=log null --dump-plugin >/dev/null 2>&1 || skip "nbdkit's log filter is missing"

head -c $((24 << 20)) /dev/urandom >"$TMP/src.img"
truncate -s 64M "$TMP/src.img"
truncate -s 64M "$TMP/dst.img"
TARGET_SOCK=$TMP/target.sock
nbdkit -f -U "$TARGET_SOCK" --filter=log file "$TMP/dst.img" logfile="$TMP/requests.log" \
    >>"$TMP/target.log" 2>&1 &
TARGET_PID=$!
track_pid "$TARGET_PID"
wait_unix "$TARGET_SOCK"
TARGET_URI="nbd+unix:///?socket=$TARGET_SOCK"
"$BLKMIG" mirror --no-progress --connections 4 "$TMP/src.img" "$TARGET_URI" \
    2>"$TMP/mirror.err" || fail "mirror failed: $(tail -3 "$TMP/mirror.err")"
stop_target
check_sanitizer_log "$TMP/mirror.err"

[ "$(sparse_sum "$TMP/src.img")" = "$(sparse_sum "$TMP/dst.img")" ] ||
    fail "the target differs from the source"
# Request lines look like "DATE TIME connection=N Write id=... offset=... count=...".
write_conns=$(awk '/ connection=[0-9]+ Write id=/ {print $3}' "$TMP/requests.log" | sort -u | wc -l)
flush_conns=$(awk '/ connection=[0-9]+ Flush id=/ {print $3}' "$TMP/requests.log" | sort -u | wc -l)
flushes=$(grep -c ' connection=[0-9]* Flush id=' "$TMP/requests.log" || true)
log "writes came on $write_conns connections; $flushes flushes on $flush_conns"
[ "$write_conns" -ge 2 ] || fail "the copy used $write_conns connection(s), expected several"
[ "$flushes" -ge 1 ] || fail "no flush reached the target"
[ "$flush_conns" -eq 1 ] || fail "flushes went to $flush_conns connections, expected one"
