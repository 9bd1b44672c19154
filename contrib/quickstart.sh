#!/usr/bin/env bash
# contrib/quickstart.sh: install what is missing, build blkmig, and run the main job: a live
# migration --with-disk of the built-in guest (the test guest in the KVM micro-VM where KVM works,
# else the synthetic guest) between two local hosts, with progress
# and a report (`blkmig demo`). As root the hosts are two network namespaces joined by veth;
# otherwise plain loopback. Extra arguments go to `blkmig demo` (e.g. --rate 1gbit, --ram 1G).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/contrib/deps.sh"
bm_install_deps test
echo "== building blkmig"
bm_build "$top" "$top/build/release"
BLKMIG=$BM_BUILD_DIR/blkmig
"$BLKMIG" --version
echo "== blkmig demo: a guest with 512 MiB of RAM and a 2 GiB disk (1 GiB written) migrates"
echo "   live, RAM and disk, while it keeps dirtying both; --verify proves the copy identical"
exec "$BLKMIG" demo "$@"
