# contrib/debian-kernel.sh: Debian's own kernel and busybox for the test VMs that boot under
# QEMU (contrib/kvm-nested.sh, contrib/linux-guest/build.sh). Source it, then:
#   bm_debian_kernel || exit $?   fetch once into the cache (below) and set BM_KV (the kernel
#                                 version), BM_VMLINUZ, BM_MODDIR (its lib/modules/$BM_KV/kernel)
#                                 and BM_BUSYBOX; on failure print one line saying why on stderr
#                                 and return 77 (the tests' "skipped").
#   bm_kernel_modules DIR M...    copy modules M (and what they depend on, each before its users)
#                                 to DIR/M.ko, uncompressed; list their names in load order in
#                                 DIR/order; return 77 if one is missing from the kernel.
# The kernel is the package linux-image-amd64 depends on, busybox the statically linked one
# (busybox-static); both are downloaded with `apt-get download` and unpacked, never installed.
# The cache is $BLKMIG_KERNEL_CACHE, else $BLKMIG_NESTED_CACHE (its older name), else
# /var/cache/blkmig-nested for root and ~/.cache/blkmig-kernel for others. A lock on it keeps
# two scripts started together from unpacking over each other.
# shellcheck shell=bash

bm_debian_kernel() {
    local cache=${BLKMIG_KERNEL_CACHE:-${BLKMIG_NESTED_CACHE:-}}
    if [ -z "$cache" ]; then
        if [ "$(id -u)" -eq 0 ]; then cache=/var/cache/blkmig-nested; else cache=$HOME/.cache/blkmig-kernel; fi
    fi
    mkdir -p "$cache" 2>/dev/null || { echo "debian-kernel: cannot create the cache $cache" >&2; return 77; }
    if [ ! -f "$cache/ready" ]; then
        (
            flock 9
            [ ! -f "$cache/ready" ] || exit 0
            _bm_fetch_kernel "$cache"
        ) 9>"$cache/.lock" || return 77
    fi
    BM_KV=$(ls "$cache/k/lib/modules" | head -1)
    BM_VMLINUZ=$cache/k/boot/vmlinuz-$BM_KV
    BM_MODDIR=$cache/k/lib/modules/$BM_KV/kernel
    BM_BUSYBOX=$cache/bb/bin/busybox
    [ -n "$BM_KV" ] && [ -f "$BM_VMLINUZ" ] && [ -x "$BM_BUSYBOX" ] ||
        { echo "debian-kernel: the cache $cache is incomplete (remove it to fetch again)" >&2; return 77; }
}

# _bm_fetch_kernel CACHE: download and unpack (run under the cache's lock).
_bm_fetch_kernel() {
    local cache=$1 kpkg
    kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    # apt's package lists may not have been fetched yet on a fresh machine.
    if [ -z "$kpkg" ] && [ "$(id -u)" -eq 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >/dev/null 2>&1 || true
        kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    fi
    [ -n "$kpkg" ] || { echo "debian-kernel: cannot tell which kernel package linux-image-amd64 needs (apt-get update first?)" >&2; return 1; }
    rm -rf "$cache"/{deb,k,bb} && mkdir -p "$cache/deb"
    (cd "$cache/deb" && apt-get download "$kpkg" busybox-static </dev/null >/dev/null 2>&1) ||
        { echo "debian-kernel: apt-get download $kpkg busybox-static failed (apt-get update first?)" >&2; return 1; }
    dpkg-deb -x "$cache"/deb/linux-image-*.deb "$cache/k" &&
        dpkg-deb -x "$cache"/deb/busybox-static*.deb "$cache/bb" ||
        { echo "debian-kernel: cannot unpack the packages in $cache/deb" >&2; return 1; }
    rm -rf "$cache/deb"
    touch "$cache/ready"
}

bm_kernel_modules() {
    local dir=$1 m
    shift
    mkdir -p "$dir" && : >"$dir/order"
    for m in "$@"; do _bm_add_module "$dir" "$m" || return 77; done
}

_bm_add_module() {
    local dir=$1 m=$2 f d
    ! grep -qx "$m" "$dir/order" || return 0
    f=$(find "$BM_MODDIR" -name "$m.ko" -o -name "$m.ko.xz" | head -1)
    [ -n "$f" ] || { echo "debian-kernel: module $m not in $BM_KV" >&2; return 1; }
    for d in $(strings "$f" | sed -n 's/^depends=//p' | tr ',' ' '); do
        _bm_add_module "$dir" "$d" || return 1
    done
    case $f in *.xz) xz -dc "$f" >"$dir/$m.ko" ;; *) cp "$f" "$dir/$m.ko" ;; esac
    echo "$m" >>"$dir/order"
}
