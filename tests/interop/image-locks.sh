#!/usr/bin/env bash
# image-locks.sh: blkmig takes the image locks QEMU takes and refuses images in other formats.
# While `blkmig nbd-serve` serves an image writable (or `blkmig mirror` mirrors it) a qemu-io
# or qemu-nbd or QEMU write-open of the image fails with a lock error and the image is
# unchanged, while a force-share (-U) reader still reads it; while qemu-nbd or a QEMU VM holds
# an image for writing, blkmig nbd-serve, mirror and run refuse it naming the holder, and
# --force-share (read-only) lets nbd-serve and mirror read it. A qcow2 (qed, vmdk, vhdx, vdi,
# vpc) image is refused by run, nbd-serve and mirror naming its format, unchanged (qemu-img
# check clean), and --format raw lets it through.
. "$(dirname "$0")/../lib.sh"

need_cmd qemu-io qemu-utils
need_cmd qemu-img qemu-utils
need_cmd qemu-nbd qemu-utils

IMG=$TMP/disk.img
head -c $((8 << 20)) /dev/urandom >"$IMG"

# wait_locked PATH: wait (at most 60 s) until some process holds QEMU's "write" byte (101).
wait_locked() {
    local ino deadline=$((SECONDS + 60))
    ino=$(stat -c %i "$1")
    until awk -v ino=":$ino" '$2 == "OFDLCK" && substr($6, length($6) - length(ino) + 1) == ino &&
        $7 <= 101 && ($8 == "EOF" || $8 >= 101) { found = 1 } END { exit !found }' /proc/locks; do
        [ $SECONDS -lt $deadline ] || fail "nobody locked $1 for writing within 60 s"
        sleep 0.05
    done
}

# refused WHAT REGEX CMD...: CMD exits non-zero (within 60 s) and says something matching
# REGEX on stderr.
refused() {
    local what=$1 re=$2 rc=0
    shift 2
    timeout 60 "$@" >"$TMP/refused.out" 2>&1 </dev/null || rc=$?
    [ $rc -ne 0 ] || fail "$what: succeeded, expected a refusal"
    [ $rc -ne 124 ] || fail "$what: still running after 60 s, expected a refusal"
    grep -qE -- "$re" "$TMP/refused.out" ||
        fail "$what: exit $rc, but no '$re' in: $(head -c 600 "$TMP/refused.out")"
    check_sanitizer_log "$TMP/refused.out"
}

# ---- blkmig holds the image: QEMU's tools cannot write it ----
log "blkmig nbd-serve (writable): qemu-io and qemu-nbd cannot write-open the image, -U reads"
before=$(sum "$IMG")
start_target blkmig "$IMG"
refused "qemu-io write while blkmig serves the image" 'lock' \
    qemu-io -f raw -c 'write -P 0x55 0 1M' "$IMG"
refused "qemu-nbd while blkmig serves the image" 'lock' \
    qemu-nbd -f raw -k "$TMP/qemu-nbd.sock" "$IMG"
[ "$(sum "$IMG")" = "$before" ] || fail "the served image changed under blkmig"
qemu-io -r -U -f raw -c 'read 0 1M' "$IMG" >"$TMP/read.out" 2>&1 ||
    fail "qemu-io -r -U (force-share) could not read the served image: $(cat "$TMP/read.out")"
grep -q 'read 1048576/1048576' "$TMP/read.out" || fail "qemu-io -U read: $(cat "$TMP/read.out")"
# blkmig's own export still writes the image.
qemu-io -f raw -c 'write -P 0x5a 1M 64k' "$TARGET_URI" >/dev/null 2>&1 ||
    fail "a write through blkmig's export failed"
stop_target
check_sanitizer_log "$TMP/target.log"
cmp -s -n 65536 -i 0:$((1 << 20)) <(head -c 65536 /dev/zero | tr '\0' '\132') "$IMG" ||
    fail "the write through the export is not in the image"
# The locks went with the server.
qemu-io -f raw -c 'write -P 0x55 0 4k' "$IMG" >/dev/null 2>&1 ||
    fail "qemu-io cannot write the image after the server exited"
if command -v qemu-system-x86_64 >/dev/null; then
    log "blkmig nbd-serve (writable): QEMU refuses to start on the image"
    before=$(sum "$IMG")
    start_target blkmig "$IMG"
    refused "QEMU on an image blkmig serves" 'lock' \
        qemu-system-x86_64 -M microvm,acpi=off -accel tcg -nodefaults -no-user-config \
        -display none -S -drive "file=$IMG,format=raw,if=none,id=d0" \
        -device virtio-blk-device,drive=d0
    stop_target
    [ "$(sum "$IMG")" = "$before" ] || fail "the image changed"
fi

log "blkmig mirror (ready, waiting): qemu-io cannot write the source; the copy is exact"
truncate -s 8M "$TMP/dst.img"
start_target qemu-nbd "$TMP/dst.img"
start_mirror m1 --on-ready wait "$IMG" "$TARGET_URI"
wait_event "$TMP/m1.json" ready 120 || fail "the mirror did not get ready: $(cat "$TMP/m1.err")"
refused "qemu-io write to a mirrored source" 'lock' \
    qemu-io -f raw -c 'write -P 0x66 0 1M' "$IMG"
kill -USR1 "$MIRROR_PID"
wait_pid "$MIRROR_PID" 120
[ "$WAIT_RC" -eq 0 ] || fail "the mirror exited $WAIT_RC: $(tail -3 "$TMP/m1.err")"
stop_target
check_sanitizer_log "$TMP/m1.err"
[ "$(sum "$IMG")" = "$(sum "$TMP/dst.img")" ] || fail "the target differs from the source"

# ---- QEMU holds the image: blkmig refuses it, --force-share reads it ----
# holder_checks WHO: the refusals and force-share reads while WHO holds $IMG for writing.
holder_checks() {
    local who=$1 re="locked for writing by another process \\($1, pid [0-9]+\\)"
    before=$(sum "$IMG")
    refused "nbd-serve while $who holds the image" "$re.*--force-share" \
        "$BLKMIG" nbd-serve --foreground -u "$TMP/never.sock" "$IMG"
    refused "nbd-serve --readonly while $who holds the image" "$re" \
        "$BLKMIG" nbd-serve --foreground --readonly -u "$TMP/never.sock" "$IMG"
    refused "mirror while $who holds the image" "$re.*--force-share" \
        "$BLKMIG" mirror --no-progress "$IMG" "nbd+unix:///?socket=$TMP/never.sock"
    refused "run while $who holds the image" "$re" \
        "$BLKMIG" run --synthetic --ram 16M --disk "vda=$IMG" --control "$TMP/never.ctl"
    refused "nbd-serve --force-share without --readonly" 'needs --readonly' \
        "$BLKMIG" nbd-serve --foreground --force-share -u "$TMP/never.sock" "$IMG"
    # --force-share: read-only, allowed; what it serves and copies is the image.
    local sock=$TMP/shared.sock
    start_bg "$BLKMIG" nbd-serve --foreground --readonly --force-share -u "$sock" "$IMG" \
        2>>"$TMP/shared.log"
    local spid=$BG_PID
    wait_unix "$sock" 60
    out=$(qemu-img compare -U -f raw -F raw "nbd+unix:///?socket=$sock" "$IMG" 2>&1) ||
        fail "nbd-serve --force-share: compare failed: $out"
    kill -TERM "$spid"
    wait_pid "$spid" 20
    [ "$WAIT_RC" -eq 0 ] || fail "nbd-serve --force-share exited $WAIT_RC"
    truncate -s 0 "$TMP/dst2.img"
    truncate -s 8M "$TMP/dst2.img"
    start_target blkmig "$TMP/dst2.img"
    "$BLKMIG" mirror --no-progress --force-share "$IMG" "$TARGET_URI" 2>"$TMP/m2.err" ||
        fail "mirror --force-share while $who holds the image: $(tail -3 "$TMP/m2.err")"
    stop_target
    grep -q 'not tracked' "$TMP/m2.err" || fail "mirror --force-share did not warn"
    check_sanitizer_log "$TMP/m2.err" "$TMP/shared.log"
    [ "$(sum "$TMP/dst2.img")" = "$before" ] || fail "mirror --force-share: the copy differs"
    [ "$(sum "$IMG")" = "$before" ] || fail "the image changed while $who held it"
}

log "qemu-nbd holds the image: blkmig refuses it, --force-share reads it"
start_bg qemu-nbd -f raw -k "$TMP/qemu.sock" "$IMG"
QPID=$BG_PID
wait_unix "$TMP/qemu.sock" 60
holder_checks qemu-nbd
kill -TERM "$QPID"
wait_pid "$QPID" 20

if command -v qemu-system-x86_64 >/dev/null; then
    log "a QEMU VM (paused) has the image as its disk: blkmig refuses it"
    start_bg qemu-system-x86_64 -M microvm,acpi=off -accel tcg -nodefaults -no-user-config \
        -display none -S -drive "file=$IMG,format=raw,if=none,id=d0" \
        -device virtio-blk-device,drive=d0
    QPID=$BG_PID
    wait_locked "$IMG"
    holder_checks qemu-system-x86
    kill -TERM "$QPID"
    wait_pid "$QPID" 20
else
    log "qemu-system-x86_64 not installed: the QEMU VM case is skipped"
fi

# ---- other formats ----
FORMATS="qcow2 qed vmdk vhdx vdi vpc"
for fmt in $FORMATS; do
    log "$fmt: refused by nbd-serve, run and mirror naming the format, unchanged"
    x=$TMP/image.$fmt
    qemu-img create -q -f "$fmt" "$x" 8M || fail "qemu-img create -f $fmt failed"
    before=$(sum "$x")
    refused "nbd-serve $fmt" "is a $fmt image.*qemu-img convert -f $fmt -O raw.*qemu-nbd -f $fmt" \
        "$BLKMIG" nbd-serve --foreground -u "$TMP/never.sock" "$x"
    refused "run --disk vda=$fmt" "is a $fmt image.*qemu-img convert.*--format raw" \
        "$BLKMIG" run --synthetic --ram 16M --disk "vda=$x" --control "$TMP/never.ctl"
    refused "mirror $fmt" "is a $fmt image.*qemu-img convert.*--format raw" \
        "$BLKMIG" mirror --no-progress "$x" "nbd+unix:///?socket=$TMP/never.sock"
    [ "$(sum "$x")" = "$before" ] || fail "$fmt: the image changed"
    case $fmt in
    qcow2 | qed | vdi | vhdx | vmdk)
        qemu-img check -q -f "$fmt" "$x" || fail "$fmt: qemu-img check finds errors" ;;
    esac
done
# A read-only export of a container file is harmless (its bytes, unchanged): allowed.
x=$TMP/image.qcow2
start_bg "$BLKMIG" nbd-serve --foreground --readonly -u "$TMP/ro.sock" "$x"
wait_unix "$TMP/ro.sock" 60
out=$(qemu-img compare -U -f raw -F raw "nbd+unix:///?socket=$TMP/ro.sock" "$x" 2>&1) ||
    fail "a read-only export of a qcow2 file differs from it: $out"
kill -TERM "$BG_PID"
wait_pid "$BG_PID" 20

log "--format raw lets a qcow2 file through (as raw bytes)"
truncate -s 256K "$x" # whole 4 KiB blocks, as run wants (qemu-img check stays clean)
refused "--format qcow2" 'raw images only' \
    "$BLKMIG" nbd-serve --foreground --format qcow2 -u "$TMP/never.sock" "$x"
start_target blkmig "$x" --format raw
size=$(qemu-img info -f raw --output=json "$TARGET_URI" | sed -n 's/.*"virtual-size": *\([0-9]*\).*/\1/p')
[ "$size" = "$(stat -c %s "$x")" ] || fail "--format raw: served size '$size'"
stop_target
cp "$x" "$TMP/copy.qcow2"
start_bg "$BLKMIG" run --synthetic --ram 16M --disk "vda=$TMP/copy.qcow2" --format raw \
    --control "$TMP/run.ctl" 2>"$TMP/run.err"
RPID=$BG_PID
wait_unix "$TMP/run.ctl" 60
kill -0 "$RPID" 2>/dev/null || fail "run --format raw exited: $(tail -3 "$TMP/run.err")"
kill -KILL "$RPID"
wait "$RPID" 2>/dev/null || true
# A raw target the size of the qcow2 file gets its bytes.
truncate -s "$(stat -c %s "$x")" "$TMP/dst3.img"
start_target blkmig "$TMP/dst3.img"
"$BLKMIG" mirror --no-progress --format raw "$x" "$TARGET_URI" 2>"$TMP/m3.err" ||
    fail "mirror --format raw of a qcow2 file: $(tail -3 "$TMP/m3.err")"
stop_target
[ "$(sum "$TMP/dst3.img")" = "$(sum "$x")" ] || fail "mirror --format raw: the copy differs"
qemu-img check -q -f qcow2 "$x" || fail "qcow2: qemu-img check finds errors after all this"

log "ok"
