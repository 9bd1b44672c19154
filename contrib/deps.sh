# contrib/deps.sh: install (with apt) whatever blkmig needs to build and test. Source it, then
# call `bm_install_deps build` (compiler, autotools, libraries) or `bm_install_deps test`
# (that plus the NBD/QEMU peers the tests drive). Safe to run with no stdin.

BM_BUILD_PKGS="gcc libc6-dev make autoconf automake libtool pkg-config libnbd-dev libaio-dev
zlib1g-dev libcmocka-dev libjson-c-dev libxxhash-dev"
# The Linux test guest (contrib/linux-guest/) also needs libc6-dev's libc.a, and downloads its
# kernel and busybox-static with apt-get download (not installed: busybox-static conflicts with
# busybox); its initramfs is packed with busybox's own cpio.
BM_TEST_PKGS="libnbd-bin python3-libnbd nbdkit qemu-utils qemu-system-x86 fio iproute2 python3
procps clang-14 libclang-rt-14-dev"

bm_install_deps() {
    local want="$BM_BUILD_PKGS"
    [ "${1:-build}" = test ] && want="$want $BM_TEST_PKGS"
    local missing=()
    for p in $want; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "blkmig: installing missing packages: ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            SUDO=sudo
        else
            echo "blkmig: not root and no sudo: install these packages first: ${missing[*]}" >&2
            return 1
        fi
    fi
    ${SUDO:-} env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null || return 1
    ${SUDO:-} env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" </dev/null || return 1
}

# bm_build TOP DIR [CONFIGURE ARGS...]: configure (once per set of args) and build blkmig in DIR. When the
# source tree itself is configured (a developer's in-tree build), DIR is the source tree.
bm_build() {
    local top=$1 dir=$2
    shift 2
    (cd "$top" && { [ -x configure ] || ./autogen.sh; }) || return 1
    if [ -f "$top/config.status" ]; then
        dir=$top
    fi
    mkdir -p "$dir"
    local want="$*"
    if [ ! -f "$dir/config.status" ] || [ "$(cat "$dir/.bm-configure-args" 2>/dev/null)" != "$want" ]; then
        (cd "$dir" && "$top/configure" "$@" >/dev/null) || return 1
        echo "$want" >"$dir/.bm-configure-args"
    fi
    make -C "$dir" -j"$(nproc)" >/dev/null || make -C "$dir" || return 1
    BM_BUILD_DIR=$dir
}
