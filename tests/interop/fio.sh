#!/usr/bin/env bash
# Interop: fio's nbd engine, 4 concurrent connections of crc32c-verified random writes, then a verify-only pass.
. "$(dirname "$0")/../lib.sh"

need_cmd fio
need_cmd python3
fio --enghelp=nbd >/dev/null 2>&1 || skip "this fio has no nbd ioengine"

MIB=$((1024 * 1024))
JOBS=4
JOB_MIB=16
SIZE=$((JOBS * JOB_MIB * MIB))

# fio_job FILE: the job, each of the 4 jobs (one NBD connection each) owning its own 16 MiB slice.
fio_job() {
    cat >"$1" <<EOF
[global]
ioengine=nbd
uri=$URI
rw=randwrite
bsrange=4k-64k
iodepth=16
numjobs=$JOBS
size=${JOB_MIB}m
offset_increment=${JOB_MIB}m
verify=crc32c
verify_fatal=1
randseed=1234

[w]
EOF
}

# check_json FILE WHAT WRITE_BYTES READ_BYTES: every job error 0 with the expected I/O volume.
check_json() {
    python3 - "$@" <<'PY'
import json, sys
path, what, wexp, rexp = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
jobs = json.load(open(path))["jobs"]
bad = []
if len(jobs) != 4:
    bad.append("%d jobs reported" % len(jobs))
for j in jobs:
    w, r = j["write"]["io_bytes"], j["read"]["io_bytes"]
    if j["error"] != 0:
        bad.append("job %s error %d" % (j["jobname"], j["error"]))
    if wexp >= 0 and w != wexp:
        bad.append("job wrote %d bytes, expected %d" % (w, wexp))
    if r != rexp:
        bad.append("job read (verified) %d bytes, expected %d" % (r, rexp))
if bad:
    sys.exit("%s: %s" % (what, "; ".join(bad)))
PY
}

truncate -s "$SIZE" "$TMP/disk.img"
start_server --log-level info "$TMP/disk.img"
fio_job "$TMP/job.fio"

# fio writes *.state files into the working directory: run it inside $TMP.
cd "$TMP" || fail "cannot cd to $TMP"

# ---- pass 1: random writes, verified at the end of each job ----
rc=0
fio --output-format=json --output="$TMP/write.json" job.fio 2>"$TMP/write.err" || rc=$?
[ $rc -eq 0 ] || fail "fio write+verify exited $rc: $(tail -5 "$TMP/write.err")"
! grep -qi 'verify' "$TMP/write.err" || fail "fio reported verify problems: $(grep -i -m3 verify "$TMP/write.err")"
# One NBD connection per job (counted from the server's info log).
n=$(grep -c "serving export ''" "$TMP/server.log" || true)
[ "$n" -ge $JOBS ] || fail "server saw $n NBD connections for $JOBS fio jobs"
check_json "$TMP/write.json" "write+verify" $((JOB_MIB * MIB)) $((JOB_MIB * MIB)) || fail "fio write pass"
log "randwrite bs 4k-64k iodepth 16 over $JOBS connections: $((SIZE / MIB)) MiB written and verified"

# Every byte of the file was written (the random map covers each slice): no zero 4k block left.
zero_blocks=$(python3 - "$TMP/disk.img" <<'PY'
import sys
z, n = bytes(4096), 0
with open(sys.argv[1], "rb") as f:
    while True:
        b = f.read(4096)
        if not b:
            break
        n += b == z
print(n)
PY
)
[ "$zero_blocks" -eq 0 ] || fail "$zero_blocks 4k blocks of the file are still zero after the write pass"
log "served file fully written (no zero 4k block)"

# ---- pass 2: a separate verify-only run reads back everything over new connections ----
rc=0
fio --output-format=json --output="$TMP/verify.json" --verify_only job.fio 2>"$TMP/verify.err" || rc=$?
[ $rc -eq 0 ] || fail "fio --verify_only exited $rc: $(tail -5 "$TMP/verify.err")"
check_json "$TMP/verify.json" "verify-only" -1 $((JOB_MIB * MIB)) || fail "fio verify-only pass"
log "verify_only pass: $((SIZE / MIB)) MiB read back, crc32c ok"

# ---- negative: corrupt one byte in the file behind the server; verify_only must notice ----
off=$((JOB_MIB * MIB + 12345))
printf '\x5a\xa5' | dd of="$TMP/disk.img" bs=1 seek=$off conv=notrunc status=none
rc=0
fio --output-format=json --output="$TMP/bad.json" --verify_only job.fio 2>"$TMP/bad.err" || rc=$?
[ $rc -ne 0 ] || fail "fio --verify_only passed on a corrupted image"
grep -q 'verify failed' "$TMP/bad.err" || fail "fio failed without a verify error: $(tail -3 "$TMP/bad.err")"
log "corrupted byte at $off: verify_only fails (rc $rc)"

cd /
stop_server
check_server_log
exit 0
