#!/usr/bin/env bash
# Integration: `blkmig mirror` faults: target killed mid-bulk, target write errors (retried / fatal), SIGINT, SIGUSR1, bad input and control errors.
. "$(dirname "$0")/../lib.sh"

need_cmd fio
need_cmd timeout coreutils
need_cmd python3
need_cmd fallocate util-linux
fio --enghelp=nbd >/dev/null 2>&1 || skip "this fio has no nbd ioengine"

MiB=$((1024 * 1024))
cd "$TMP" # fio writes its verify state files here

# mirror_done NAME WANT_RC SECONDS: wait for the mirror started as NAME; check its exit status
# and its stderr for sanitizer reports.
mirror_done() {
    wait_pid "$MIRROR_PID" "$3"
    check_sanitizer_log "$TMP/$1.err"
    [ "$WAIT_RC" -ne 124 ] || fail "$1: blkmig mirror still running after $3 s"
    [ "$WAIT_RC" -eq "$2" ] || fail "$1: blkmig mirror exited $WAIT_RC, expected $2: $(tail -3 "$TMP/$1.err")"
}

query_state() {
    "$BLKMIG" control "$1" query | "$PY3" -c 'import json,sys; print(json.load(sys.stdin)["return"]["state"])'
}

# ---- 5. bad input (first: quick) ----
SMALL=$TMP/small.img
truncate -s 64M "$SMALL"
dd if=/dev/urandom of="$SMALL" bs=1M count=4 seek=8 conv=notrunc status=none
TINY=$TMP/tiny.img
truncate -s 32M "$TINY"
start_target blkmig "$TINY"

# bad_run WANT_RC MSG_RE ARGS...: `blkmig ARGS` exits WANT_RC within 20 s, says MSG_RE on stderr.
bad_run() {
    local want=$1 re=$2 rc=0
    shift 2
    timeout 20 "$BLKMIG" "$@" </dev/null >"$TMP/bad.out" 2>"$TMP/bad.err" || rc=$?
    check_sanitizer_log "$TMP/bad.err"
    [ $rc -ne 124 ] || { soft_fail "blkmig $*: still running after 20 s"; return; }
    [ $rc -eq "$want" ] || soft_fail "blkmig $*: exited $rc, expected $want"
    grep -qiE -- "$re" "$TMP/bad.err" ||
        soft_fail "blkmig $*: stderr lacks /$re/: $(head -c 300 "$TMP/bad.err")"
}

log "bad input: a missing source -> exit 1, names the file"
bad_run 1 'missing\.img.*No such file' mirror "$TMP/missing.img" "$TARGET_URI"
log "bad input: a target nobody listens on (TCP, unix) -> exit 1, cannot connect"
P=$(free_port)
bad_run 1 "cannot connect to nbd://127\.0\.0\.1:$P.*refused" mirror "$SMALL" "nbd://127.0.0.1:$P"
bad_run 1 "cannot connect.*nobody\.sock" mirror "$SMALL" "nbd+unix:///?socket=$TMP/nobody.sock"
log "a failing mirror prints its cause once on stderr (the summary's error line), also at -l info"
for lvl in warn info; do
    rc=0
    timeout 20 "$BLKMIG" mirror --no-progress -l $lvl "$SMALL" "nbd://127.0.0.1:$P" \
        </dev/null >/dev/null 2>"$TMP/once.err" || rc=$?
    check_sanitizer_log "$TMP/once.err"
    [ $rc -eq 1 ] || soft_fail "-l $lvl: a mirror to nobody exited $rc, expected 1"
    n=$(grep -c "cannot connect to nbd://127\.0\.0\.1:$P" "$TMP/once.err" || true)
    [ "$n" -eq 1 ] || soft_fail "-l $lvl: the cause is printed $n times, not once: $(cat "$TMP/once.err")"
done
log "bad input: a target (32 MiB) smaller than the source (64 MiB) -> exit 1, says so"
bad_run 1 'smaller than the source' mirror "$SMALL" "$TARGET_URI"
stop_target
truncate -s 32M "$TMP/zero32.img"
[ "$(sum "$TINY")" = "$(sum "$TMP/zero32.img")" ] || soft_fail "the too-small target was written to"

log "bad option values -> exit 2 with the option named"
U="nbd://127.0.0.1:$P"
bad_run 2 '--speed' mirror --speed abc "$SMALL" "$U"
bad_run 2 '--speed' mirror --speed -5 "$SMALL" "$U"
bad_run 2 '--copy-mode' mirror --copy-mode fast "$SMALL" "$U"
bad_run 2 '--on-ready' mirror --on-ready never "$SMALL" "$U"
bad_run 2 '--retries' mirror --retries -1 "$SMALL" "$U"
bad_run 2 '--retries' mirror --retries many "$SMALL" "$U"
bad_run 2 '--granularity' mirror --granularity 3000 "$SMALL" "$U"
bad_run 2 '--request-size' mirror --request-size 1k "$SMALL" "$U"
bad_run 2 '--in-flight' mirror --in-flight 0 "$SMALL" "$U"
bad_run 2 '--connections' mirror --connections 17 "$SMALL" "$U"
bad_run 2 '--serve-port' mirror --serve-port 0 "$SMALL" "$U"
bad_run 2 '--ready-ms' mirror --ready-ms 0 "$SMALL" "$U"
bad_run 2 'exclude' mirror --serve-unix "$TMP/x.sock" --serve-port "$P" "$SMALL" "$U"
bad_run 2 'SOURCE and TARGET' mirror "$SMALL"
bad_run 2 'unrecognized|unknown' mirror --bogus "$SMALL" "$U"
log "blkmig control to a missing socket -> exit 1, cannot connect"
bad_run 1 'nobody-ctl\.sock' control "$TMP/nobody-ctl.sock" query
bad_run 2 'JSON' control "$TMP/nobody-ctl.sock" set-speed 'not json'

# ---- 4. SIGUSR1 while ready with --on-ready wait; control errors on the way ----
TGT=$TMP/tgt-usr1.img
truncate -s 64M "$TGT"
start_target blkmig "$TGT"
start_mirror usr1 --on-ready wait --control "$TMP/ctl-usr1.sock" "$SMALL" "$TARGET_URI"
wait_unix "$TMP/ctl-usr1.sock"
wait_event "$TMP/usr1.json" ready 20 || fail "usr1: no ready event within 20 s"
log "control: an unknown command -> exit 1, error reply of class CommandNotFound"
rc=0
reply=$("$BLKMIG" control "$TMP/ctl-usr1.sock" frobnicate 2>"$TMP/ctl.err") || rc=$?
[ $rc -eq 1 ] || soft_fail "control frobnicate exited $rc"
cls=$("$PY3" -c 'import json,sys; print(json.loads(sys.argv[1])["error"]["class"])' "$reply" 2>/dev/null || true)
[ "$cls" = CommandNotFound ] || soft_fail "control frobnicate replied '$reply' (no CommandNotFound error)"
log "control: set-speed without a speed / with a bad one -> error class InvalidArgument"
for args in '{}' '{"speed":"fast"}' '{"speed":-1}'; do
    rc=0
    reply=$("$BLKMIG" control "$TMP/ctl-usr1.sock" set-speed "$args" 2>>"$TMP/ctl.err") || rc=$?
    cls=$("$PY3" -c 'import json,sys; print(json.loads(sys.argv[1])["error"]["class"])' "$reply" 2>/dev/null || true)
    [ $rc -eq 1 ] && [ "$cls" = InvalidArgument ] ||
        soft_fail "set-speed $args: exit $rc, reply '$reply'"
done
check_sanitizer_log "$TMP/ctl.err"
sleep 0.5
[ "$(query_state "$TMP/ctl-usr1.sock")" = ready ] || soft_fail "usr1: not staying ready with --on-ready wait"
log "SIGUSR1 while ready -> complete: exit 0, result done, target identical"
kill -USR1 "$MIRROR_PID"
mirror_done usr1 0 20
[ "$(json_get "$TMP/usr1.json" summary result)" = done ] ||
    soft_fail "usr1: summary result $(json_get "$TMP/usr1.json" summary result)"
stop_target
[ "$(sum "$SMALL")" = "$(sum "$TGT")" ] || soft_fail "usr1: target differs from the source"

# ---- 2. target write errors: retried at a moderate rate, fatal when every write fails ----
SRC=$TMP/src-inj.img
truncate -s 128M "$SRC"
for off in 4 40 80 120; do
    dd if=/dev/urandom of="$SRC" bs=1M count=8 seek=$off conv=notrunc status=none
done
TGT=$TMP/tgt-inj.img
truncate -s 128M "$TGT"
log "target --inject write:error=EIO:rate=0.3 --seed 1: retried (summary retries > 0), done, identical"
start_target blkmig "$TGT" --inject 'write:error=EIO:rate=0.3' --seed 1
start_mirror inj --retries 8 "$SRC" "$TARGET_URI"
mirror_done inj 0 40
retries=$(json_get "$TMP/inj.json" summary retries)
result=$(json_get "$TMP/inj.json" summary result)
log "  result $result, retries $retries"
[ "$result" = done ] || soft_fail "inject 0.3: result $result"
[ "$retries" -gt 0 ] || soft_fail "inject 0.3: summary retries $retries, expected > 0"
grep -q 'Input/output error' "$TMP/inj.err" || soft_fail "inject 0.3: no EIO warning on stderr"
stop_target
[ "$(sum "$SRC")" = "$(sum "$TGT")" ] || soft_fail "inject 0.3: target differs from the source"
check_sanitizer_log "$TMP/target.log"

log "target --inject write:error=EIO (every write), --retries 2: exit 1, a clear error"
rm -f "$TGT"
truncate -s 128M "$TGT"
start_target blkmig "$TGT" --inject 'write:error=EIO'
t0=$SECONDS
start_mirror injall --retries 2 "$SRC" "$TARGET_URI"
mirror_done injall 1 30
result=$(json_get "$TMP/injall.json" summary result)
err=$(json_get "$TMP/injall.json" summary error)
log "  exit 1 after $((SECONDS - t0)) s; error: $err"
[ "$result" = failed ] || soft_fail "inject always: result $result"
[[ $err =~ target.*(Input/output error) ]] || soft_fail "inject always: summary error '$err'"
grep -q 'error:.*Input/output error' "$TMP/injall.err" ||
    soft_fail "inject always: no error line on stderr: $(tail -2 "$TMP/injall.err")"
n=$(grep -cE 'the target failed [0-9]+ times in a row' "$TMP/injall.err" || true)
[ "$n" -eq 1 ] || soft_fail "inject always (--json): the cause is on stderr $n times, not once"
stop_target
check_sanitizer_log "$TMP/target.log"

# ---- 1 and 3: a 1 GiB source with 256 MiB of data, copied at 50 MiB/s (about 5 s of bulk) ----
MASTER=$TMP/master.img
truncate -s 1G "$MASTER"
dd if=/dev/urandom of="$MASTER" bs=1M count=256 seek=100 conv=notrunc status=none

log "SIGINT during bulk -> exit 3, result cancelled, source unchanged"
SRC=$TMP/src-int.img
cp --sparse=always "$MASTER" "$SRC"
TGT=$TMP/tgt-int.img
truncate -s 1G "$TGT"
start_target blkmig "$TGT"
start_mirror int --speed 50M --control "$TMP/ctl-int.sock" "$SRC" "$TARGET_URI"
wait_event "$TMP/int.json" bulk 20 || fail "int: no bulk event"
sleep 0.5
[ "$(query_state "$TMP/ctl-int.sock")" = bulk ] || soft_fail "int: not in bulk 0.5 s after it started"
kill -INT "$MIRROR_PID"
mirror_done int 3 20
[ "$(json_get "$TMP/int.json" summary result)" = cancelled ] ||
    soft_fail "int: summary result $(json_get "$TMP/int.json" summary result)"
grep -qx cancelled <<<"$(json_events "$TMP/int.json")" || soft_fail "int: no cancelled event"
stop_target
[ "$(sparse_sum "$SRC")" = "$(sparse_sum "$MASTER")" ] || soft_fail "int: the source changed"
rm -f "$SRC" "$TGT"

log "target killed (SIGKILL) mid-bulk, --retries 2, fio writing (crc32c) into the served source"
SRC=$TMP/src-kill.img
cp --sparse=always "$MASTER" "$SRC"
TGT=$TMP/tgt-kill.img
truncate -s 1G "$TGT"
start_target blkmig "$TGT"
start_mirror kill --speed 50M --retries 2 --serve-unix "$TMP/serve-kill.sock" \
    --control "$TMP/ctl-kill.sock" "$SRC" "$TARGET_URI"
wait_unix "$TMP/serve-kill.sock"
# The writer: 48 MiB at 20 MiB/s (about 2.5 s) in 900-948 MiB, a hole of the source.
FIO_JOB=(--name=w --rw=randwrite --bsrange=4k-64k --size=48m --offset=900m --verify=crc32c
    --verify_fatal=1 --randseed=99 --output-format=json)
# fio's nbd engine logs an error per poll, forever, once its connection is dead (fio 3.33), into
# --output: keep its output on a pipe capped at 1 MiB.
fio "${FIO_JOB[@]}" --ioengine=nbd --uri="nbd+unix:///?socket=$TMP/serve-kill.sock" \
    --iodepth=4 --rate=,20m > >(head -c 1048576 >"$TMP/fio-kill.json") 2>&1 &
FIO_PID=$!
track_pid $FIO_PID
sleep 0.7
state=$(query_state "$TMP/ctl-kill.sock")
[ "$state" = bulk ] || soft_fail "kill: state $state when the target is killed, not bulk"
kill -KILL "$TARGET_PID"
wait "$TARGET_PID" 2>/dev/null || true
t0=$SECONDS
mirror_done kill 1 30
log "  blkmig mirror exited 1 after $((SECONDS - t0)) s"
err=$(json_get "$TMP/kill.json" summary error)
result=$(json_get "$TMP/kill.json" summary result)
log "  summary: result $result, error: $err"
[ "$result" = failed ] || soft_fail "kill: summary result $result"
[[ $err =~ target ]] || soft_fail "kill: summary error '$err' does not mention the target"
grep -qE 'error: .*(target|connection)' "$TMP/kill.err" ||
    soft_fail "kill: no clear error line on stderr: $(tail -2 "$TMP/kill.err")"
# The writer's job takes about 2.5 s: it is over a few seconds after the mirror's exit.
wait_pid "$FIO_PID" 8
frc=$WAIT_RC
if [ $frc -eq 124 ]; then
    log "  fio was still running 8 s after the mirror exited (killed): its connection had died"
fi
# fio's stderr shares the file: parse from the first '{'.
read -r ferr fw < <("$PY3" -c 'import json,sys; t=open(sys.argv[1]).read(); j=json.JSONDecoder().raw_decode(t[t.index("{"):])[0]["jobs"][0]; print(j["error"], j["write"]["io_bytes"])' "$TMP/fio-kill.json" 2>/dev/null || echo "? ?")
log "  fio: exit $frc, job error $ferr, $fw bytes written"
log "the writer saw no error (its writes do not depend on the target)"
[ "$frc" -eq 0 ] && [ "$ferr" = 0 ] ||
    soft_fail "kill: the writer saw an error (fio exit $frc, job error $ferr): $(grep -m2 -iE 'error|poll' "$TMP/fio-kill.json" | tr '\n' ' ')"
if [ -f "$TMP/local-w-0-verify.state" ]; then
    log "the source is intact: fio --verify_only (psync, its saved state) passes on the source file"
    rc=0
    fio "${FIO_JOB[@]}" --ioengine=psync --filename="$SRC" --verify_only --verify_state_load=1 \
        --output="$TMP/fio-kill-v.json" 2>"$TMP/fio-kill-v.err" || rc=$?
    vr=$("$PY3" -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; print(j["error"], j["read"]["io_bytes"])' "$TMP/fio-kill-v.json" 2>/dev/null || echo "? 0")
    log "  verify_only: exit $rc, error/bytes verified: $vr"
    [ $rc -eq 0 ] && [ "${vr%% *}" = 0 ] && [ "${vr##* }" -gt 0 ] ||
        soft_fail "kill: the source does not hold what the writer wrote: $(head -3 "$TMP/fio-kill-v.err")"
else
    log "fio was cut off and left no verify state: the writer's data cannot be verified (see above)"
fi
log "the source is intact outside the writer's range (identical to the original)"
fallocate --punch-hole --offset $((900 * MiB)) --length $((48 * MiB)) "$SRC"
fallocate --punch-hole --offset $((900 * MiB)) --length $((48 * MiB)) "$MASTER"
[ "$(sparse_sum "$SRC")" = "$(sparse_sum "$MASTER")" ] || soft_fail "kill: the source changed outside the writer's range"
cd /
finish_test
