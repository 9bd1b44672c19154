# tests/integration/migrate-lib.sh: helpers shared by the `blkmig run/incoming/migrate` tests
# (migrate-basic.sh, migrate-faults.sh, migrate-heavy.sh). Source it after tests/lib.sh.
#
# Two "hosts": when root and network namespaces work, contrib/netns-hosts.sh makes a pair of
# namespaces joined by veth (a unique --name per test run), `blkmig run` (the source VM) runs in
# host A and `blkmig incoming` in host B (`ip netns exec`); otherwise both run on loopback.
# MIG_HOSTS=netns|loopback forces one (netns: skip when it cannot be had). Disks live in per-case
# folders under $TMP (one filesystem, so a "shared storage" destination can open the source's
# image by the same path). Control sockets are unix sockets in $TMP: `blkmig control` reaches
# them from the root namespace; every control call here has a timeout, so a wedged VM process
# fails the test instead of hanging it.
#
# Every process started here is remembered by PID; the EXIT trap (which replaces tests/lib.sh's)
# stops only those (SIGTERM, then SIGKILL after 5 s), tears the namespaces down and removes $TMP,
# also when the test fails. MIG_KEEP=1 keeps $TMP for a post-mortem.

need_cmd timeout coreutils
need_cmd md5sum coreutils
[ -x "$BLKMIG" ] || skip "no blkmig binary at $BLKMIG (build it first)"
[ -x "$PY3" ] || command -v "$PY3" >/dev/null 2>&1 || skip "no python3"

HOSTS_SH=$top_srcdir/contrib/netns-hosts.sh
MIG_MODE=loopback # or netns
MIG_NS=           # the netns-hosts.sh --name while namespaces may exist
IN_A=()           # command prefix that runs in host A / host B
IN_B=()
DEST_ADDR=127.0.0.1
MIG_PIDS=()       # PIDs this test started and has not reaped yet

# Defaults for the guest (tests scale them as they need).
MIG_RAM=${MIG_RAM:-256M}
# The guest `blkmig run` boots: synthetic (default) or kvm (the KVM micro-VM with the test
# guest, its console in $CASE_DIR/src-console.log; the destination's in dst-console.log).
MIG_GUEST=${MIG_GUEST:-synthetic}
MIG_DISK=${MIG_DISK:-512M}
MIG_FILL=${MIG_FILL:-ram-fill=128M,disk-fill=256M}

# Sanitizer builds are several times slower: loosen the timing bounds there.
if grep -qa '__asan_init\|__ubsan_handle' "$BLKMIG" 2>/dev/null; then
    MIG_SANITIZED=1
else
    MIG_SANITIZED=0
fi

_mig_cleanup() {
    local rc=$?
    set +e
    trap - INT TERM
    local pid deadline
    for pid in "${MIG_PIDS[@]:-}" "${_PIDS[@]:-}"; do
        [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null
    done
    deadline=$((SECONDS + 5))
    for pid in "${MIG_PIDS[@]:-}" "${_PIDS[@]:-}"; do
        [ -n "$pid" ] || continue
        while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.05; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if [ -n "$MIG_NS" ]; then
        "$HOSTS_SH" down --name "$MIG_NS" >/dev/null 2>"$TMP/netns-down.err" ||
            echo "# $TEST_NAME: warning: netns-hosts.sh down --name $MIG_NS: $(cat "$TMP/netns-down.err")" >&2
    fi
    if [ "${MIG_KEEP:-0}" = 1 ]; then
        echo "# $TEST_NAME: MIG_KEEP=1: logs kept in $TMP" >&2
    else
        rm -rf "$TMP"
    fi
    exit $rc
}
trap _mig_cleanup EXIT

# mig_track PID / mig_untrack PID: remember (forget, once reaped) a PID to stop at exit.
mig_track() { MIG_PIDS+=("$1"); }
mig_untrack() {
    local i
    for i in "${!MIG_PIDS[@]}"; do
        [ "${MIG_PIDS[$i]}" != "$1" ] || unset 'MIG_PIDS[i]'
    done
}

# mig_wait PID SECONDS: wait for a process this test started; WAIT_RC = its exit status, 124
# when it had to be killed (SIGKILL) after SECONDS. (stderr muted: bash's "Killed" job notices.)
mig_wait() {
    wait_pid "$1" "$2" 2>/dev/null
    mig_untrack "$1"
}

# mig_hosts_up [netns-hosts.sh up ARGS, e.g. --rate 100mbit]: choose and set up the two hosts.
mig_hosts_up() {
    local want=${MIG_HOSTS:-auto} why=
    case $want in auto|netns|loopback) ;; *) fail "MIG_HOSTS=$want: auto, netns or loopback" ;; esac
    if [ "$want" = loopback ]; then
        why="MIG_HOSTS=loopback"
    elif [ "$(id -u)" -ne 0 ]; then
        why="not root"
    elif ! command -v ip >/dev/null 2>&1 || ! command -v tc >/dev/null 2>&1; then
        why="ip/tc missing (iproute2)"
    elif ! ip netns list >/dev/null 2>&1; then
        why="ip netns does not work here"
    else
        # Interface and namespace names are short: netns-hosts.sh allows 12 characters.
        MIG_NS=m$$
        MIG_NS=${MIG_NS:0:10}
        local out rc=0
        out=$("$HOSTS_SH" up --name "$MIG_NS" "$@" 2>"$TMP/netns-up.err") || rc=$?
        if [ $rc -eq 0 ]; then
            eval "$out"
            MIG_MODE=netns
            IN_A=(ip netns exec "$NETNS_A")
            IN_B=(ip netns exec "$NETNS_B")
            DEST_ADDR=$ADDR_B
            log "hosts: network namespaces $NETNS_A ($ADDR_A) and $NETNS_B ($ADDR_B), veth $DEV_A-$DEV_B, rate $RATE"
            return 0
        fi
        why="netns-hosts.sh up failed ($rc): $(head -c 300 "$TMP/netns-up.err")"
        "$HOSTS_SH" down --name "$MIG_NS" >/dev/null 2>&1 || true
        MIG_NS=
    fi
    [ "$want" != netns ] || skip "MIG_HOSTS=netns but no network namespaces: $why"
    MIG_MODE=loopback
    IN_A=()
    IN_B=()
    DEST_ADDR=127.0.0.1
    log "hosts: loopback 127.0.0.1 ($why)"
}

# mig_tail FILE [N]: the last N (3) lines of FILE on one line, for failure messages.
mig_tail() { tail -n "${2:-3}" "$1" 2>/dev/null | tr '\n' '|' | cut -c1-600; }

now_ms() { date +%s%3N; }

# _mig_wait_start PID SOCK-OR-EMPTY LOG PATTERN SECONDS WHAT: wait until SOCK exists (or LOG
# matches PATTERN); fail, with the log, if the process exits first or time runs out.
_mig_wait_start() {
    local pid=$1 sock=$2 logf=$3 pat=$4 deadline=$((SECONDS + $5)) what=$6
    while :; do
        if [ -n "$sock" ]; then [ -S "$sock" ] && return 0
        else grep -q -- "$pat" "$logf" 2>/dev/null && return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            mig_wait "$pid" 1
            check_sanitizer_log "$logf"
            fail "$what exited ($WAIT_RC) before it was ready: $(mig_tail "$logf" 5)"
        fi
        [ $SECONDS -lt $deadline ] || fail "$what not ready after $5 s: $(mig_tail "$logf" 5)"
        sleep 0.05
    done
}

# mig_case NAME: a fresh folder $CASE_DIR = $TMP/NAME with a/ (host A's disks) and b/ (host B's).
mig_case() {
    CASE=$1
    CASE_DIR=$TMP/$1
    mkdir -p "$CASE_DIR/a" "$CASE_DIR/b"
}

# mig_start_source WORKLOAD [RUN-ARGS...]: `blkmig run` in host A: RAM $MIG_RAM, disk vda =
# $CASE_DIR/a/vda.img ($MIG_DISK), WORKLOAD plus $MIG_FILL. Sets SRC_PID, SRC_SOCK, SRC_LOG,
# SRC_IMG; returns when the control socket answers.
mig_start_source() {
    local wl=$1
    shift
    SRC_SOCK=$CASE_DIR/src.sock
    SRC_LOG=$CASE_DIR/src.log
    SRC_IMG=$CASE_DIR/a/vda.img
    local guest=(--synthetic)
    [ "$MIG_GUEST" != kvm ] || guest=(--kvm --console "$CASE_DIR/src-console.log")
    "${IN_A[@]}" "$BLKMIG" run "${guest[@]}" --ram "$MIG_RAM" --disk "vda=$SRC_IMG,size=$MIG_DISK" \
        --workload "$wl${MIG_FILL:+,$MIG_FILL}" --control "$SRC_SOCK" --log-level info "$@" \
        </dev/null >"$CASE_DIR/src.out" 2>"$SRC_LOG" &
    SRC_PID=$!
    mig_track "$SRC_PID"
    _mig_wait_start "$SRC_PID" "$SRC_SOCK" "$SRC_LOG" "" 60 "$CASE: blkmig run"
    if [ "$MIG_GUEST" = kvm ]; then
        # The test guest fills its RAM and disk after it boots, then prints status lines: a
        # migration started before that would not see the data (nor a disk bulk phase).
        local deadline=$((SECONDS + 300))
        until grep -q 'BMG status' "$CASE_DIR/src-console.log" 2>/dev/null; do
            kill -0 "$SRC_PID" 2>/dev/null || fail "$CASE: blkmig run --kvm exited: $(mig_tail "$SRC_LOG")"
            [ $SECONDS -lt $deadline ] || fail "$CASE: the KVM guest did not finish its fill in 300 s: $(mig_tail "$CASE_DIR/src-console.log")"
            sleep 0.2
        done
    fi
}

# mig_free_ports: DST_PORT and DST_NBD_PORT, two different free TCP ports.
mig_free_ports() {
    DST_PORT=$(free_port)
    DST_NBD_PORT=$(free_port)
    while [ "$DST_NBD_PORT" = "$DST_PORT" ]; do DST_NBD_PORT=$(free_port); done
}

# mig_start_dest [INCOMING-ARGS...]: `blkmig incoming` in host B, listening on
# $DEST_ADDR:$DST_PORT (NBD on $DST_NBD_PORT), --disk-dir $CASE_DIR/b (a --disk NAME=PATH in
# ARGS wins for that disk), control socket $DST_SOCK (it exists only once the VM runs there).
# MIG_DEST_ENV (e.g. BLKMIG_TEST_FAULT=dest-hang-on-complete) goes into its environment.
# Sets DST_PID, DST_SOCK, DST_LOG, DST_DIR, DST_IMG, DST_URI; returns once it listens.
mig_start_dest() {
    DST_SOCK=$CASE_DIR/dst.sock
    DST_LOG=$CASE_DIR/dst.log
    DST_DIR=$CASE_DIR/b
    DST_IMG=$DST_DIR/vda.img
    mig_free_ports
    DST_URI=tcp:$DEST_ADDR:$DST_PORT
    # shellcheck disable=SC2086 # MIG_DEST_ENV is a list of VAR=VALUE words
    env BLKMIG_CONSOLE="$CASE_DIR/dst-console.log" ${MIG_DEST_ENV:-} "${IN_B[@]}" "$BLKMIG" incoming --listen "$DEST_ADDR:$DST_PORT" \
        --nbd-port "$DST_NBD_PORT" --disk-dir "$DST_DIR" --control "$DST_SOCK" --log-level info \
        "$@" </dev/null >"$CASE_DIR/dst.out" 2>"$DST_LOG" &
    DST_PID=$!
    mig_track "$DST_PID"
    # The first connection that sends a HELLO is taken as the source; others are dropped.
    _mig_wait_start "$DST_PID" "" "$DST_LOG" "listening on" 30 "$CASE: blkmig incoming"
}

# mig_migrate SECONDS [MIGRATE-ARGS...]: `blkmig migrate --json --no-progress ARGS $SRC_SOCK
# URI` (URI = $MIG_URI or $DST_URI) in the foreground, at most SECONDS. Sets MIG_RC, MIG_MS
# (wall time), MIG_JSON (stdout) and MIG_ERR (stderr).
mig_migrate() {
    local t=$1
    shift
    MIG_JSON=$CASE_DIR/mig.json
    MIG_ERR=$CASE_DIR/mig.err
    MIG_RC=0
    local t0
    t0=$(now_ms)
    timeout -k 5 "$t" "$BLKMIG" migrate --json --no-progress "$@" "$SRC_SOCK" \
        "${MIG_URI:-$DST_URI}" </dev/null >"$MIG_JSON" 2>"$MIG_ERR" || MIG_RC=$?
    MIG_MS=$(($(now_ms) - t0))
    check_sanitizer_log "$MIG_ERR"
    [ "$MIG_RC" -ne 124 ] && [ "$MIG_RC" -ne 137 ] ||
        fail "$CASE: blkmig migrate still running after $t s: $(mig_tail "$MIG_ERR")"
}

# mig_migrate_bg [MIGRATE-ARGS...]: the same in the background; MIG_PID, MIG_T0.
mig_migrate_bg() {
    MIG_JSON=$CASE_DIR/mig.json
    MIG_ERR=$CASE_DIR/mig.err
    MIG_T0=$(now_ms)
    "$BLKMIG" migrate --json --no-progress "$@" "$SRC_SOCK" "${MIG_URI:-$DST_URI}" \
        </dev/null >"$MIG_JSON" 2>"$MIG_ERR" &
    MIG_PID=$!
    mig_track "$MIG_PID"
}

# mig_migrate_wait SECONDS: wait for the background migrate; MIG_RC, MIG_MS (since its start).
mig_migrate_wait() {
    mig_wait "$MIG_PID" "$1"
    MIG_RC=$WAIT_RC
    MIG_MS=$(($(now_ms) - MIG_T0))
    check_sanitizer_log "$MIG_ERR"
    [ "$MIG_RC" -ne 124 ] || fail "$CASE: blkmig migrate still running after $1 s: $(mig_tail "$MIG_ERR")"
}

# mig_report PATH: a field of the final {"report": {...}} line of $MIG_JSON, by a dotted path
# (e.g. status, verified, pause.disk_ms); strings bare, everything else as JSON; empty if absent.
mig_report() {
    "$PY3" - "$MIG_JSON" "$1" <<'PY'
import json, sys
rep = None
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("{"):
        try:
            o = json.loads(line)
        except ValueError:
            continue
        if "report" in o:
            rep = o["report"]
v = rep
for k in sys.argv[2].split("."):
    v = v.get(k) if isinstance(v, dict) else None
print("" if v is None else v if isinstance(v, str) else json.dumps(v))
PY
}

# mig_summary: one line about the last migration, for the test log.
mig_summary() {
    "$PY3" - "$MIG_JSON" <<'PY'
import json, sys
rep = {}
for line in open(sys.argv[1]):
    if line.startswith("{") and '"report"' in line:
        rep = json.loads(line)["report"]
if not rep:
    print("no report")
else:
    d, r = rep.get("disk", {}), rep.get("ram", {})
    print("status %s in %.2f s, downtime %s ms (guest %s ms), RAM rounds %s, disk %.0f MiB sent, "
          "throttle max %s%%, disk mode switches %s, verified %s%s" % (
          rep.get("status"), rep.get("total_ms", 0) / 1000, rep.get("downtime_ms"),
          rep.get("guest_downtime_ms", "-"), r.get("rounds"), d.get("transferred", 0) / 2**20,
          rep.get("throttle_max"), d.get("mode_switches"), rep.get("verified"),
          ("; error: " + rep["error"]) if rep.get("error") else ""))
PY
}

# vm_status SOCK: query-status; sets VM_RUNNING (true|false), VM_MIGRATING, VM_ERRORS, VM_HB
# (heartbeats), VM_MAX_GAP_MS, VM_THROTTLE, VM_FIRST_ERROR, VM_DISK_PATH (the first disk's
# image), VM_RAM_WRITES, VM_DISK_WRITES (the guest's counters). Returns 1 (VM_* empty) when the
# socket does not answer.
vm_status() {
    VM_RUNNING= VM_MIGRATING= VM_ERRORS= VM_HB= VM_MAX_GAP_MS= VM_THROTTLE= VM_FIRST_ERROR= VM_DISK_PATH=
    VM_RAM_WRITES= VM_DISK_WRITES=
    local out
    out=$(timeout 30 "$BLKMIG" control "$1" query-status 2>>"$TMP/control.err") || return 1
    eval "$("$PY3" - "$out" <<'PY'
import json, shlex, sys
r = json.loads(sys.argv[1])["return"]
g = r.get("guest", {})
disks = r.get("disks") or [{}]
vals = {
    "VM_RUNNING": "true" if r.get("running") else "false",
    "VM_MIGRATING": "true" if r.get("migrating") else "false",
    "VM_ERRORS": g.get("errors", ""),
    "VM_HB": g.get("hb_count", ""),
    "VM_MAX_GAP_MS": "%.1f" % (g.get("max_gap_ns", 0) / 1e6),
    "VM_THROTTLE": g.get("throttle", ""),
    "VM_FIRST_ERROR": g.get("first_error", ""),
    "VM_DISK_PATH": disks[0].get("path", ""),
    "VM_RAM_WRITES": g.get("ram_writes", ""),
    "VM_DISK_WRITES": g.get("disk_writes", ""),
}
for k, v in vals.items():
    print("%s=%s" % (k, shlex.quote(str(v))))
PY
)"
}

# vm_check SOCK: the guest's full self-check (guest-check); prints its mismatch count (empty
# when the command fails or takes over 60 s).
vm_check() {
    timeout 60 "$BLKMIG" control "$1" guest-check 2>>"$TMP/control.err" |
        "$PY3" -c 'import json,sys; print(json.load(sys.stdin)["return"]["mismatches"])' 2>/dev/null ||
        true
}

# vm_phase SOCK: the phase of the VM's current (or last) migration, from query-migrate.
vm_phase() {
    timeout 30 "$BLKMIG" control "$1" query-migrate 2>>"$TMP/control.err" |
        "$PY3" -c 'import json,sys; print(json.load(sys.stdin)["return"].get("phase",""))' 2>/dev/null ||
        true
}

# wait_phase SOCK PHASE SECONDS: poll query-migrate until the phase is PHASE; false on timeout
# or when the migration ended (any of completed, rolled-back, unknown). LAST_PHASE: the phases
# it saw, in order.
wait_phase() {
    local deadline=$((SECONDS + $3)) ph
    LAST_PHASE=
    while [ $SECONDS -lt $deadline ]; do
        ph=$(vm_phase "$1")
        [ "$ph" = "${LAST_PHASE##* }" ] || LAST_PHASE="${LAST_PHASE:+$LAST_PHASE }${ph:-?}"
        ph=${ph:-?}
        [ "$ph" != "$2" ] || return 0
        case $ph in completed|rolled-back|unknown) return 1 ;; esac
        sleep 0.1
    done
    return 1
}

# assert_guest_healthy LABEL SOCK [writes]: the VM behind SOCK runs (query-status running
# true), its guest counts no errors, its heartbeat advances over 0.5 s (with "writes": so do its
# RAM and disk write counters: nothing holds the guest's writes), and its full self-check
# (guest-check) finds 0 mismatches. Reports failures with soft_fail; false if any.
# state_roundtrip LABEL SOCK: x-state-roundtrip (the VM's whole state saved and loaded back into
# it, in one process), then the guest must run on, clean. False on failure (soft_fail).
state_roundtrip() {
    local label=$1 sock=$2 out bytes
    out=$(timeout 60 "$BLKMIG" control "$sock" x-state-roundtrip 2>>"$TMP/control.err") || {
        soft_fail "$label: x-state-roundtrip failed: $out"
        return 1
    }
    bytes=$("$PY3" -c 'import json,sys; print(json.loads(sys.argv[1])["return"]["bytes"])' "$out" 2>/dev/null)
    [ "${bytes:-0}" -gt 0 ] 2>/dev/null || { soft_fail "$label: x-state-roundtrip answered '$out'"; return 1; }
    log "  $label: state saved and loaded back in one process ($bytes bytes)"
    assert_guest_healthy "$label: after the state round trip" "$sock" writes
}

assert_guest_healthy() {
    local label=$1 sock=$2 writes=${3:-} hb0 rw0 dw0 bad ok=0
    if ! vm_status "$sock"; then
        soft_fail "$label: the VM's control socket does not answer"
        return 1
    fi
    [ "$VM_RUNNING" = true ] || { soft_fail "$label: query-status says running $VM_RUNNING"; ok=1; }
    [ "$VM_ERRORS" = 0 ] || { soft_fail "$label: the guest counts $VM_ERRORS errors (first: $VM_FIRST_ERROR)"; ok=1; }
    hb0=$VM_HB rw0=$VM_RAM_WRITES dw0=$VM_DISK_WRITES
    sleep 0.5
    vm_status "$sock" || true
    [ -n "$VM_HB" ] && [ "$VM_HB" -gt "$hb0" ] ||
        { soft_fail "$label: the heartbeat did not advance in 0.5 s ($hb0 -> $VM_HB)"; ok=1; }
    if [ -n "$writes" ]; then
        [ -n "$VM_RAM_WRITES" ] && [ "$VM_RAM_WRITES" -gt "$rw0" ] ||
            { soft_fail "$label: the guest's RAM writes did not advance in 0.5 s ($rw0 -> $VM_RAM_WRITES)"; ok=1; }
        [ -n "$VM_DISK_WRITES" ] && [ "$VM_DISK_WRITES" -gt "$dw0" ] ||
            { soft_fail "$label: the guest's disk writes did not advance in 0.5 s ($dw0 -> $VM_DISK_WRITES)"; ok=1; }
    fi
    local hb1=$VM_HB
    bad=$(vm_check "$sock")
    [ "$bad" = 0 ] || { soft_fail "$label: guest-check found '${bad:-no answer}' mismatches"; ok=1; }
    vm_status "$sock" || true
    [ "$VM_ERRORS" = 0 ] || { soft_fail "$label: the guest counts $VM_ERRORS errors after guest-check (first: $VM_FIRST_ERROR)"; ok=1; }
    [ "$VM_RUNNING" = true ] || { soft_fail "$label: not running after guest-check"; ok=1; }
    [ $ok -ne 0 ] || log "  $label: running, 0 guest errors, heartbeat $hb0 -> $hb1 in 0.5 s${writes:+, writes advancing}, guest-check 0 mismatches, max gap $VM_MAX_GAP_MS ms"
    return $ok
}

# mig_quit_vm LABEL SOCK PID: `quit` the VM process; it must exit 0 within 20 s.
mig_quit_vm() {
    timeout 30 "$BLKMIG" control "$2" quit >/dev/null 2>>"$TMP/control.err" || true
    mig_wait "$3" 20
    [ "$WAIT_RC" -eq 0 ] || soft_fail "$1: the VM process exited $WAIT_RC after quit"
}

# mig_kill PID [SIGNAL]: send SIGNAL (KILL) to a process this test started and reap it (at
# most 10 s, then SIGKILL); WAIT_RC as mig_wait.
mig_kill() {
    {
        kill -"${2:-KILL}" "$1" || true
        mig_wait "$1" 10
    } 2>/dev/null
}

# mig_check_logs: no sanitizer report in any log or stderr file of the current case.
mig_check_logs() {
    local f
    for f in "$CASE_DIR"/*.log "$CASE_DIR"/*.err "$CASE_DIR"/*.out; do
        [ -e "$f" ] && check_sanitizer_log "$f"
    done
    return 0
}

# assert_dest_failed LABEL [WANT_RC [MSG_RE]]: the destination process exits by itself (within
# 30 s) with WANT_RC (default: any non-zero status), says MSG_RE in its log, never served the
# VM (no control socket), and removed the image it created.
assert_dest_failed() {
    local label=$1 want=${2:-} re=${3:-}
    mig_wait "$DST_PID" 30
    if [ "$WAIT_RC" -eq 124 ]; then
        soft_fail "$label: the destination still runs 30 s later: $(mig_tail "$DST_LOG")"
    elif [ -n "$want" ] && [ "$WAIT_RC" -ne "$want" ]; then
        soft_fail "$label: the destination exited $WAIT_RC, expected $want: $(mig_tail "$DST_LOG")"
    elif [ "$WAIT_RC" -eq 0 ]; then
        soft_fail "$label: the destination exited 0"
    fi
    if [ -n "$re" ] && ! grep -qE -- "$re" "$DST_LOG"; then
        soft_fail "$label: the destination's log lacks /$re/: $(mig_tail "$DST_LOG")"
    fi
    # Its cause is said once, not also by the library before the command says it.
    local cause n
    cause=$(sed -n 's/.*migration failed: \(.*\); what was received is discarded$/\1/p' "$DST_LOG" | head -1)
    n=$(grep -oF -- "${cause:-migration failed}" "$DST_LOG" | wc -l || true)
    [ -n "$cause" ] && [ "$n" -eq 1 ] ||
        soft_fail "$label: the destination's log says its cause '${cause:-?}' $n times, expected once: $(mig_tail "$DST_LOG" 4)"
    [ ! -e "$DST_SOCK" ] || soft_fail "$label: the destination opened its control socket (the VM ran there)"
    [ ! -e "$DST_IMG" ] || soft_fail "$label: the destination left its image $DST_IMG behind"
    log "  $label: destination exited $WAIT_RC: $(grep -m1 -E 'error' "$DST_LOG" | cut -c1-200)"
}
