#!/usr/bin/env bash
# contrib/linux-guest/build.sh [OUTDIR]: build the Linux test guest (README.md beside this file):
# OUTDIR/vmlinuz (Debian's kernel), OUTDIR/vmlinux (the same uncompressed, for QEMU's quicker
# PVH boot; left out when it cannot be extracted), OUTDIR/initrd.img (busybox, the virtio
# modules the kernel lacks built in, and the workload as init's last step) and OUTDIR/workload
# (the same static program, which is also the host-side image checker: `workload
# --check-image IMAGE`).
# OUTDIR defaults to $BLKMIG_GUEST_CACHE, else /var/cache/blkmig/linux-guest (root) or
# ~/.cache/blkmig/linux-guest. Quick when nothing changed: the kernel and busybox downloads are
# cached (contrib/debian-kernel.sh), and OUTDIR is left alone while its sources are the same.
# Exit status: 0 built (or up to date); 77, with one line saying why, when the kernel, busybox
# or a static C library cannot be had here; 1 on other failures.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ "$(id -u)" -eq 0 ]; then dflt=/var/cache/blkmig/linux-guest; else dflt=$HOME/.cache/blkmig/linux-guest; fi
OUT=${1:-${BLKMIG_GUEST_CACHE:-$dflt}}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)

. "$here/../debian-kernel.sh"
bm_debian_kernel || exit 77
command -v gcc >/dev/null || { echo "linux-guest: no gcc (Debian package gcc)" >&2; exit 77; }

exec 9>"$OUT/.lock"
flock 9
stamp=$(cat "$0" "$here/workload.c" "$here/../debian-kernel.sh" "$BM_VMLINUZ" | md5sum | cut -d' ' -f1)
if [ "$(cat "$OUT/.stamp" 2>/dev/null)" = "$stamp" ] && [ -f "$OUT/vmlinuz" ] &&
    [ -f "$OUT/initrd.img" ] && [ -x "$OUT/workload" ]; then
    echo "linux-guest: $OUT is up to date ($BM_KV)"
    exit 0
fi
rm -f "$OUT/.stamp"

WORK=$(mktemp -d /tmp/linux-guest.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/root/"{bin,proc,sys,dev,mods}

# Static, so that the initramfs needs no libc, and so that the host can run the same binary.
nice gcc -static -O2 -std=gnu11 -Wall -Wextra -pthread -o "$WORK/root/bin/workload" \
    "$here/workload.c" 2>"$WORK/cc.log" || {
    if grep -q 'cannot find -lc\|cannot find -lpthread' "$WORK/cc.log"; then
        echo "linux-guest: gcc cannot link statically: no libc.a (Debian package libc6-dev)" >&2
        exit 77
    fi
    cat "$WORK/cc.log" >&2
    exit 1
}
cp "$BM_BUSYBOX" "$WORK/root/bin/busybox"

# The guest's disk is virtio-blk on PCI and its console the 8250 UART (built into Debian's
# kernel). Debian builds virtio, virtio_pci and virtio_blk as modules: those go into the
# initramfs, to be loaded in order before the workload starts.
config=${BM_VMLINUZ/vmlinuz-/config-}
mods=()
for m in virtio_pci virtio_blk; do
    opt=CONFIG_$(tr "[:lower:]" "[:upper:]" <<<"$m")
    grep -q "^$opt=y" "$config" 2>/dev/null || mods+=("$m")
done
grep -q '^CONFIG_SERIAL_8250_CONSOLE=y' "$config" ||
    echo "linux-guest: warning: $BM_KV has no built-in 8250 console: the guest may stay silent" >&2
bm_kernel_modules "$WORK/root/mods" "${mods[@]}" || exit 77

cat >"$WORK/root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
for m in $(/bin/busybox cat /mods/order); do
    /bin/busybox insmod /mods/$m.ko || echo "BMW init: insmod $m failed"
done
exec /bin/workload
echo "BMW init: cannot start /bin/workload"
/bin/busybox poweroff -f
INIT
chmod +x "$WORK/root/init"
(cd "$WORK/root" && find . | "$BM_BUSYBOX" cpio -o -H newc 2>/dev/null | gzip -6 >"$WORK/initrd.img")

# The kernel also as an uncompressed ELF, which QEMU boots through its PVH entry: the guest
# then skips decompressing itself, which under TCG takes seconds (a third of the boot).
rm -f "$OUT/vmlinux"
if grep -q '^CONFIG_PVH=y' "$config" && command -v xz >/dev/null; then
    off=$(LC_ALL=C grep -aob $'\xfd7zXZ' "$BM_VMLINUZ" | { read -r l || true; echo "${l%%:*}"; cat >/dev/null; })
    # (From a file, not a pipe: xz stops reading at the stream's end, which would fail tail.)
    if [ -n "$off" ] && tail -c +$((off + 1)) "$BM_VMLINUZ" >"$WORK/vmlinux.xz" &&
        xz -dc --single-stream "$WORK/vmlinux.xz" >"$WORK/vmlinux" 2>/dev/null &&
        [ "$(head -c 4 "$WORK/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
        mv "$WORK/vmlinux" "$OUT/vmlinux"
    fi
fi
cp "$BM_VMLINUZ" "$OUT/vmlinuz.tmp" && mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
mv "$WORK/initrd.img" "$OUT/initrd.img"
cp "$WORK/root/bin/workload" "$OUT/workload.tmp" && mv "$OUT/workload.tmp" "$OUT/workload"
echo "$stamp" >"$OUT/.stamp"
elf=
[ ! -f "$OUT/vmlinux" ] || elf=" (and uncompressed: vmlinux)"
echo "linux-guest: built $OUT/vmlinuz ($BM_KV)$elf and $OUT/initrd.img (modules: ${mods[*]:-none})"
