#!/usr/bin/env bash
# contrib/bench/migrate-bench.sh: `blkmig migrate --with-disk` on the standard scenarios, with the
# joint stream ordering and with QEMU/libvirt's ordering (every disk ready first, then RAM).
#
# Two hosts = contrib/netns-hosts.sh (namespaces NETNS_NAME-A/B joined by veth), unshaped and
# shaped with tc tbf RATE (default 1gbit). In host A `blkmig run` boots the synthetic guest
# (RAM_M MiB of RAM, RAM_FILL_M of it written at boot; a DISK_M MiB disk with DISK_FILL_M written
# at boot), in host B `blkmig incoming --disk-dir` waits; after WARM_S seconds of the scenario's
# workload (scenarios/migrate.conf), `blkmig migrate --with-disk --json --order ORDER` runs.
# Figures per run (from blkmig's report): total time, downtime as the source sees it (pause ->
# RESUMED) and as the guest sees it (its largest heartbeat gap around the switchover), bytes
# sent (RAM stream + disk payload), amplification = sent / (allocated disk + non-zero RAM at
# the start), RAM and disk rounds, the largest vCPU throttle, and the guest's RAM write rate
# during the migration vs before it. Lower bound (shaped) = (allocated disk + non-zero RAM) /
# nominal link rate (1gbit = 125,000,000 B/s). After every run the destination runs the guest's
# full self-check (every RAM page and disk block it ever wrote, by content): it must find 0
# mismatches, else the benchmark stops.
# Knobs: QUICK=1 (256 MiB RAM, 1 GiB disk, half filled), FULL=1 (REPS=3); defaults RAM_M=1024,
# RAM_FILL_M=512, DISK_M=4096, DISK_FILL_M=2048, REPS=1, SHAPED=both|0|1, RATE, MTU (of the shaped link,
# 1500; 9000 = jumbo frames), ORDERS="joint
# disk-first", SCENARIOS="idle moderate heavy", WARM_S=3, MAX_TIME=180, NETNS_NAME=bmmig,
# BLKMIG (binary; default a fresh optimised build in build/release), LOG_DIR (keep each run's
# logs and report there), LOG_LEVEL (of both sides, default warn), VERIFY=1 (migrate with
# --verify: the run fails unless every digest matched; the digests lengthen the total, not the
# pause figures), SLOW_FLUSH_MS=N (the destination's every fsync/fdatasync takes N ms longer,
# through the LD_PRELOAD shim slow-flush.c: a slow virtual disk's device barrier). Needs root
# (exit 77).
# Last line: RESULT migrate {json}.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
. "$top/contrib/deps.sh"
[ "$(id -u)" -eq 0 ] || { echo "migrate-bench: needs root (network namespaces)" >&2; exit 77; }

RAM_M=${RAM_M:-1024}; RAM_FILL_M=${RAM_FILL_M:-512}
DISK_M=${DISK_M:-4096}; DISK_FILL_M=${DISK_FILL_M:-2048}
REPS=${REPS:-1}
if [ "${QUICK:-0}" = 1 ]; then RAM_M=256; RAM_FILL_M=128; DISK_M=1024; DISK_FILL_M=512; fi
[ "${FULL:-0}" = 1 ] && REPS=3
SHAPED=${SHAPED:-both}; RATE=${RATE:-1gbit}; MTU=${MTU:-1500}
ORDERS=${ORDERS:-joint disk-first}
SCENARIOS=${SCENARIOS:-idle moderate heavy}
WARM_S=${WARM_S:-3}; MAX_TIME=${MAX_TIME:-180}
LOG_LEVEL=${LOG_LEVEL:-warn}
VERIFY=${VERIFY:-0}
verify_arg=()
[ "$VERIFY" = 1 ] && verify_arg=(--verify)
SLOW_FLUSH_MS=${SLOW_FLUSH_MS:-0}
NETNS_NAME=${NETNS_NAME:-bmmig}
conf=$top/contrib/bench/scenarios/migrate.conf

if [ -z "${BLKMIG:-}" ]; then
    bm_install_deps build
    bm_build "$top" "$top/build/release" CFLAGS='-O2 -g' >/dev/null
    BLKMIG=$BM_BUILD_DIR/blkmig
fi
work=$(mktemp -d /tmp/migrate-bench.XXXXXX)
pids=()
hosts=$top/contrib/netns-hosts.sh
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    "$hosts" down --name "$NETNS_NAME" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
dst_env=()
if [ "$SLOW_FLUSH_MS" != 0 ]; then
    cc -shared -fPIC -O2 -o "$work/slow-flush.so" "$top/contrib/bench/slow-flush.c" -ldl
    dst_env=(env "LD_PRELOAD=$work/slow-flush.so" "SLOW_FLUSH_MS=$SLOW_FLUSH_MS")
fi

wl_of() { awk -v n="$1" '$1 == n { print $2 }' "$conf"; }
q() { "$BLKMIG" control "$1" "$2" 2>/dev/null; }
jget() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval("d"+sys.argv[1]))' "$1"; }

# One migration; appends a JSON line to $work/runs.jsonl.
one_run() {
    local shaped=$1 scen=$2 order=$3 rep=$4
    local A=${NETNS_NAME}A B=${NETNS_NAME}B
    local dA=/var/tmp/$NETNS_NAME-A dB=/var/tmp/$NETNS_NAME-B
    local ssock=$work/src.sock dsock=$work/dst.sock
    rm -f "$ssock" "$dsock" "$dB"/*.img "$dA"/*.img # every run starts from a fresh image
    local wl
    wl="$(wl_of "$scen"),ram-fill=${RAM_FILL_M}M,disk-fill=${DISK_FILL_M}M"
    ip netns exec "$B" "${dst_env[@]}" "$BLKMIG" incoming --listen 10.77.0.2:7700 --disk-dir "$dB" --force \
        --control "$dsock" --log-level "$LOG_LEVEL" 2>"$work/dst.log" &
    local dpid=$!
    pids+=("$dpid")
    ip netns exec "$A" "$BLKMIG" run --synthetic --ram "${RAM_M}M" \
        --disk "vda=$dA/vda.img,size=${DISK_M}M" --workload "$wl" --control "$ssock" \
        --log-level "$LOG_LEVEL" 2>"$work/src.log" &
    local spid=$!
    pids+=("$spid")
    for _ in $(seq 600); do [ -S "$ssock" ] && break; sleep 0.1; done
    [ -S "$ssock" ] || { cat "$work/src.log" >&2; echo "source did not start" >&2; exit 1; }
    local w0 t0 w1 t1
    w0=$(q "$ssock" query-status | jget '["return"]["guest"]["ram_writes"]')
    t0=$(date +%s.%N)
    sleep "$WARM_S"
    w1=$(q "$ssock" query-status | jget '["return"]["guest"]["ram_writes"]')
    t1=$(date +%s.%N)
    local rc=0
    "$BLKMIG" migrate --with-disk "${verify_arg[@]}" --json --order "$order" --max-time "$MAX_TIME" "$ssock" \
        tcp:10.77.0.2:7700 >"$work/mig.json" 2>"$work/mig.err" || rc=$?
    local t2 w2=0 bad=-1
    t2=$(date +%s.%N)
    if [ "$rc" = 0 ]; then
        for _ in $(seq 100); do [ -S "$dsock" ] && break; sleep 0.05; done
        w2=$(q "$dsock" query-status | jget '["return"]["guest"]["ram_writes"]')
        bad=$(q "$dsock" guest-check | jget '["return"]["mismatches"]')
        q "$dsock" quit >/dev/null || true
    else
        bad=$(q "$ssock" guest-check | jget '["return"]["mismatches"]')
        q "$ssock" quit >/dev/null || true
    fi
    wait "$spid" 2>/dev/null || true
    wait "$dpid" 2>/dev/null || true
    pids=()
    if [ -n "${LOG_DIR:-}" ]; then
        local tag=$LOG_DIR/$shaped-$scen-$order-$rep
        cp "$work/src.log" "$tag.src.log"; cp "$work/dst.log" "$tag.dst.log"
        cp "$work/mig.json" "$tag.mig.json"
    fi
    if [ "$bad" != 0 ]; then
        echo "migrate-bench: the guest's self-check found $bad mismatches ($scen $order)" >&2
        tail -n 20 "$work/src.log" "$work/dst.log" >&2
        exit 1
    fi
    python3 - "$work/mig.json" "$shaped" "$scen" "$order" "$rep" "$rc" "$w0" "$t0" "$w1" "$t1" \
        "$w2" "$t2" "$RATE" >>"$work/runs.jsonl" <<'PY'
import json, sys
f, shaped, scen, order, rep, rc, w0, t0, w1, t1, w2, t2, rate = sys.argv[1:]
rep_ = None
for line in open(f):
    d = json.loads(line)
    if "report" in d:
        rep_ = d["report"]
r = rep_ or {}
ram, disk = r.get("ram", {}), r.get("disk", {})
alloc = disk.get("bulk_total", 0)
nonzero = ram.get("nonzero_pages_at_start", 0) * 4096
sent = ram.get("transferred", 0) + disk.get("transferred", 0)
base = alloc + nonzero
nominal = {"1gbit": 125e6, "10gbit": 1250e6, "100mbit": 12.5e6}.get(rate, 0)
total_s = r.get("total_ms", 0) / 1000
before = (int(w1) - int(w0)) / (float(t1) - float(t0)) if float(t1) > float(t0) else 0
during = (int(w2) - int(w1)) / (float(t2) - float(t1)) if int(rc) == 0 and int(w2) else 0
out = {
    "shaped": shaped == "1", "scenario": scen, "order": order, "rep": int(rep),
    "exit": int(rc), "status": r.get("status"), "total_s": round(total_s, 3),
    "downtime_ms": r.get("downtime_ms"), "guest_downtime_ms": r.get("guest_downtime_ms"),
    "expected_downtime_ms": r.get("expected_downtime_ms"), "pause": r.get("pause"),
    "expected_ratio": round(r["expected_downtime_ms"] / r["downtime_ms"], 3)
        if r.get("downtime_ms") else None,
    "durable": r.get("durable"), "dest_flush_ms": r.get("dest_flush_ms"),
    "verified": r.get("verified"),
    "guest_expected_ratio": round(r["expected_downtime_ms"] / r["guest_downtime_ms"], 3)
        if r.get("guest_downtime_ms") else None,
    "pre_pause_flush_ms": r.get("pre_pause_flush_ms"),
    "ram_start_s": r.get("ram_start_ms", 0) / 1000,
    "alloc_disk": alloc, "nonzero_ram": nonzero, "sent": sent,
    "amplification": round(sent / base, 3) if base else None,
    "lower_bound_s": round(base / nominal, 3) if shaped == "1" and nominal else None,
    "ratio_to_bound": round(total_s / (base / nominal), 3) if shaped == "1" and nominal and base else None,
    "ram_rounds": ram.get("rounds"), "disk_rounds": disk.get("rounds"),
    "throttle_max": r.get("throttle_max"), "disk_mode_switches": disk.get("mode_switches"),
    "guest_ram_writes_per_s_before": round(before), "guest_ram_writes_per_s_during": round(during),
}
print(json.dumps(out))
PY
    tail -n 1 "$work/runs.jsonl" >&2
    if [ "$VERIFY" = 1 ] && [ "$rc" = 0 ] && ! grep -q '"verified": true' <(tail -n 1 "$work/runs.jsonl"); then
        echo "migrate-bench: --verify did not report every digest matching ($scen $order)" >&2
        exit 1
    fi
}

case $SHAPED in both) shapes="0 1" ;; 0|1) shapes=$SHAPED ;; *) echo "SHAPED: both, 0 or 1" >&2; exit 2 ;; esac
: >"$work/runs.jsonl"
for shaped in $shapes; do
    if [ "$shaped" = 1 ]; then
        "$hosts" up --name "$NETNS_NAME" --rate "$RATE" --mtu "$MTU" >/dev/null
    else
        "$hosts" up --name "$NETNS_NAME" >/dev/null
    fi
    for rep in $(seq "$REPS"); do
        for scen in $SCENARIOS; do
            for order in $ORDERS; do
                echo "# shaped=$shaped scenario=$scen order=$order rep=$rep" >&2
                one_run "$shaped" "$scen" "$order" "$rep"
            done
        done
    done
done
python3 - "$work/runs.jsonl" "$RAM_M" "$DISK_M" "$DISK_FILL_M" "$RATE" "$REPS" "$MTU" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
ram_m, disk_m, fill_m, rate, reps, mtu = sys.argv[2:]
groups = {}
for r in runs:
    groups.setdefault((r["shaped"], r["scenario"], r["order"]), []).append(r)
rows = []
print("| link | scenario | order | status | runs | total s | bound s | total/bound (median, max) | pause ms, source (min / median / max) | pause ms, guest (min / median / max) | expected / actual within ±30 % (source, guest) | durable after resume ms (median, max) | amplification | RAM rounds | throttle max | guest RAM writes/s during/before |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
def vals(rs, k):
    return [x[k] for x in rs if x.get(k) is not None]
for (shaped, scen, order), rs in groups.items():
    med = lambda k: statistics.median(vals(rs, k)) if vals(rs, k) else None
    row = {k: med(k) for k in ("total_s", "lower_bound_s", "ratio_to_bound", "downtime_ms", "guest_downtime_ms", "amplification", "ram_rounds", "throttle_max", "guest_ram_writes_per_s_before", "guest_ram_writes_per_s_during", "dest_flush_ms")}
    for k in ("ratio_to_bound", "downtime_ms", "guest_downtime_ms", "dest_flush_ms"):
        v = vals(rs, k)
        row[k + "_min"], row[k + "_max"] = (min(v), max(v)) if v else (None, None)
    within = lambda k: sum(1 for x in rs if x.get(k) is not None and 0.7 <= x[k] <= 1.3) if vals(rs, k) else None
    row["expected_within_30pct"] = within("expected_ratio")
    row["guest_expected_within_30pct"] = within("guest_expected_ratio")
    row.update(shaped=shaped, scenario=scen, order=order, status=",".join(sorted({x["status"] or "?" for x in rs})), n=len(rs))
    rows.append(row)
    f = lambda v, p=2: "-" if v is None else (f"{v:.{p}f}" if isinstance(v, float) else str(v))
    link = rate + (" mtu " + mtu if mtu != "1500" else "") if shaped else "veth, unshaped"
    print(f"| {link} | {scen} | {order} | {row['status']} | {row['n']} | {f(row['total_s'])} | {f(row['lower_bound_s'])} | "
          f"{f(row['ratio_to_bound'], 3)}, {f(row['ratio_to_bound_max'], 3)} | "
          f"{f(row['downtime_ms_min'], 0)} / {f(row['downtime_ms'], 1)} / {f(row['downtime_ms_max'], 0)} | "
          f"{f(row['guest_downtime_ms_min'], 1)} / {f(row['guest_downtime_ms'], 1)} / {f(row['guest_downtime_ms_max'], 1)} | "
          f"{f(row['expected_within_30pct'])}/{row['n']}, {f(row['guest_expected_within_30pct'])}/{row['n']} | "
          f"{f(row['dest_flush_ms'], 0)}, {f(row['dest_flush_ms_max'], 0)} | "
          f"{f(row['amplification'], 3)} | {f(row['ram_rounds'], 0)} | {f(row['throttle_max'], 0)} | "
          f"{f(row['guest_ram_writes_per_s_during'], 0)}/{f(row['guest_ram_writes_per_s_before'], 0)} |")
print("RESULT migrate " + json.dumps({"ram_mib": int(ram_m), "disk_mib": int(disk_m), "disk_fill_mib": int(fill_m), "rate": rate, "mtu": int(mtu), "reps": int(reps), "rows": rows, "runs": runs}))
PY
