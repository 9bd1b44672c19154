#!/usr/bin/env bash
# contrib/netns-hosts.sh: two "hosts" on one machine, for benchmarks (ARCHITECTURE.md §9).
#
#   contrib/netns-hosts.sh up [--rate RATE] [--mtu BYTES] [--name PREFIX]
#   contrib/netns-hosts.sh down [--name PREFIX]
#   contrib/netns-hosts.sh exec [--name PREFIX] A|B CMD [ARGS...]
#
# `up` makes two network namespaces, PREFIXA and PREFIXB (default bmA and bmB), joined by a veth
# pair (veth-A with 10.77.0.1/24 in A, veth-B with 10.77.0.2/24 in B; these addresses exist only
# inside the two namespaces), with `lo` up in each, and a disk folder per host
# (/var/tmp/PREFIX-A, /var/tmp/PREFIX-B). With --rate (e.g. 1gbit), both ends' egress is shaped
# with `tc tbf rate RATE burst 1mb latency 50ms` (a burst of 1 MiB lets tbf reach 1 Gbit/s with
# 64 KiB GSO packets; netem is not available on every kernel, tbf is). Without --rate, no
# shaping (an earlier --rate is removed). Measured at 1gbit: one TCP stream A -> B carries
# 119.5 MB/s (114 MiB/s) of payload, 95.6% of 125 MB/s (Ethernet/IP/TCP headers count against
# the rate), steady, never above it. --mtu sets both veth ends' MTU (default 1500, as on a
# plain Ethernet link; 9000 is a jumbo-frame link, where the headers cost 0.73% instead of 4.56%).
# `up` prints what it made as shell assignments (NETNS_A=... ADDR_A=... DISK_A=... RATE=...),
# so that `eval "$(contrib/netns-hosts.sh up)"` works.
# `down` removes exactly what `up` made (recorded in /run/blkmig-netns-hosts/PREFIX); files in
# the disk folders go with them. Both are idempotent. `exec` runs CMD inside host A or B.
# Requires root: exits 77 otherwise.
set -euo pipefail

usage() {
    sed -n '3,6p' "$0" | sed 's/^# *//' >&2
    exit 2
}

[ $# -ge 1 ] || usage
cmd=$1
shift
prefix=bm
rate=
mtu=1500
while [ $# -gt 0 ]; do
    case $1 in
    --name) [ $# -ge 2 ] || usage; prefix=$2; shift 2 ;;
    --name=*) prefix=${1#--name=}; shift ;;
    --rate) [ $# -ge 2 ] || usage; rate=$2; shift 2 ;;
    --rate=*) rate=${1#--rate=}; shift ;;
    --mtu) [ $# -ge 2 ] || usage; mtu=$2; shift 2 ;;
    --mtu=*) mtu=${1#--mtu=}; shift ;;
    -h|--help) usage ;;
    *) break ;;
    esac
done
case $prefix in
''|*[!A-Za-z0-9_-]*) echo "netns-hosts: --name: letters, digits, - and _ only" >&2; exit 2 ;;
esac
case $mtu in
''|*[!0-9]*) echo "netns-hosts: --mtu: a number of bytes (68-65535)" >&2; exit 2 ;;
esac
[ "$mtu" -ge 68 ] && [ "$mtu" -le 65535 ] ||
    { echo "netns-hosts: --mtu: a number of bytes (68-65535)" >&2; exit 2; }
[ ${#prefix} -le 12 ] || { echo "netns-hosts: --name: at most 12 characters" >&2; exit 2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "netns-hosts: needs root (network namespaces, veth, tc); skipping" >&2
    exit 77
fi
for c in ip tc; do
    command -v $c >/dev/null ||
        { echo "netns-hosts: $c missing (apt-get install iproute2)" >&2; exit 1; }
done

nsA=${prefix}A
nsB=${prefix}B
devA=veth-A
devB=veth-B
addrA=10.77.0.1
addrB=10.77.0.2
diskA=/var/tmp/$prefix-A
diskB=/var/tmp/$prefix-B
statedir=/run/blkmig-netns-hosts
state=$statedir/$prefix
# tbf parameters (see the header).
burst=1mb
latency=50ms

ns_exists() { ip netns list | awk '{print $1}' | grep -qx "$1"; }
recorded() { [ -f "$state" ] && grep -qx "$1" "$state"; }
record() { mkdir -p "$statedir"; recorded "$1" || echo "$1" >>"$state"; }

up() {
    local ns
    for ns in "$nsA" "$nsB"; do
        if ns_exists "$ns"; then
            recorded "netns $ns" || {
                echo "netns-hosts: network namespace $ns exists and was not made by" \
                     "$0; use --name" >&2
                exit 1
            }
        else
            ip netns add "$ns"
            record "netns $ns"
        fi
        ip -n "$ns" link set lo up
    done
    # The veth pair lives only inside the two namespaces (deleting either namespace deletes it).
    if ! ip -n "$nsA" link show "$devA" >/dev/null 2>&1 ||
       ! ip -n "$nsB" link show "$devB" >/dev/null 2>&1; then
        ip -n "$nsA" link del "$devA" 2>/dev/null || true
        ip -n "$nsB" link del "$devB" 2>/dev/null || true
        ip link add "$devA" netns "$nsA" type veth peer name "$devB" netns "$nsB"
    fi
    ip -n "$nsA" addr replace "$addrA/24" dev "$devA"
    ip -n "$nsB" addr replace "$addrB/24" dev "$devB"
    ip -n "$nsA" link set "$devA" mtu "$mtu" up
    ip -n "$nsB" link set "$devB" mtu "$mtu" up
    local pair
    for pair in "$nsA $devA" "$nsB $devB"; do
        set -- $pair
        if [ -n "$rate" ]; then
            ip netns exec "$1" tc qdisc replace dev "$2" root tbf rate "$rate" burst "$burst" \
                latency "$latency"
        else
            ip netns exec "$1" tc qdisc del dev "$2" root 2>/dev/null || true
        fi
    done
    local d
    for d in "$diskA" "$diskB"; do
        if [ ! -d "$d" ]; then
            mkdir -p "$d"
            record "dir $d"
        fi
    done
    # The veth link comes up asynchronously: wait for carrier on both ends.
    local _
    for _ in $(seq 50); do
        ip -n "$nsA" link show "$devA" | grep -q LOWER_UP &&
            ip -n "$nsB" link show "$devB" | grep -q LOWER_UP && break
        sleep 0.1
    done
    echo "NETNS_A=$nsA ADDR_A=$addrA DEV_A=$devA DISK_A=$diskA"
    echo "NETNS_B=$nsB ADDR_B=$addrB DEV_B=$devB DISK_B=$diskB"
    echo "RATE=${rate:-none} MTU=$mtu"
}

down() {
    [ -f "$state" ] || return 0
    local kind what
    while read -r kind what; do
        case $kind in
        netns)
            # Processes still inside keep a namespace alive but not its name; say so.
            if ns_exists "$what"; then
                local pids
                pids=$(ip netns pids "$what" 2>/dev/null | tr '\n' ' ')
                [ -z "$pids" ] || echo "netns-hosts: warning: processes still in $what: $pids" >&2
                ip netns del "$what"
            fi
            ;;
        dir) rm -rf -- "$what" ;;
        esac
    done <"$state"
    rm -f "$state"
    rmdir "$statedir" 2>/dev/null || true
}

case $cmd in
up) up ;;
down) down ;;
exec)
    [ $# -ge 2 ] || usage
    case $1 in
    A|a) ns=$nsA ;;
    B|b) ns=$nsB ;;
    *) usage ;;
    esac
    shift
    ns_exists "$ns" || { echo "netns-hosts: $ns does not exist; run '$0 up' first" >&2; exit 1; }
    exec ip netns exec "$ns" "$@"
    ;;
*) usage ;;
esac
