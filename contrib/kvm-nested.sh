#!/usr/bin/env bash
# kvm-nested.sh: run a command on a machine with a working /dev/kvm when this one has none.
# It boots a Debian 12 kernel under QEMU with TCG and a CPU that has AMD SVM (QEMU emulates it,
# nested paging included), loads kvm-amd there, and runs COMMAND in a chroot of the host's
# own filesystem (shared read-only over virtio-9p, with writes kept in the VM's RAM), as root,
# with /dev/kvm. Everything the nested guest does is emulated, so it is slow (expect 10x or
# more), but it is real KVM: the ioctls, the dirty log, the vCPU state. The kernel and busybox
# come from Debian's packages (apt-get download, cached: see contrib/debian-kernel.sh; default
# /var/cache/blkmig-nested). Exit status: COMMAND's; 77 if this cannot be set up here (no
# qemu-system-x86_64, no packages); 124 on timeout.
#
# Usage: contrib/kvm-nested.sh [--mem MIB] [--cpus N] [--timeout S] [--env VAR=VALUE]...
#                              [--out DIR] [--monitor SOCKET] [--append ARGS] [--] COMMAND...
#   e.g. contrib/kvm-nested.sh -- tests/integration/kvm-guest.sh
# COMMAND runs in the current directory (it must be on the host's filesystem). --out DIR
# (created if missing) is shared writable at the same path: what COMMAND writes there stays.
# --monitor SOCKET: QEMU's human monitor on a unix socket, to look into a nested VM that hangs
# (e.g. `info registers -a`; `sendkey alt-sysrq-l` prints every CPU's backtrace on the console).
# --append ARGS: more nested-kernel arguments, for diagnosis (e.g. page_poison=1).
set -euo pipefail
MEM=6144 CPUS=1 TIMEOUT=3600 OUT= MONITOR= APPEND=
ENVS=()
while [ $# -gt 0 ]; do
    case $1 in
    --mem) MEM=$2; shift 2 ;;
    --cpus) CPUS=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --env) ENVS+=("$2"); shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --monitor) MONITOR=$2; shift 2 ;;
    --append) APPEND=$2; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) break ;;
    esac
done
[ $# -gt 0 ] || { echo "kvm-nested: no command (see --help)" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "kvm-nested: needs root (apt-get download, 9p passthrough)" >&2; exit 77; }
command -v qemu-system-x86_64 >/dev/null || { echo "kvm-nested: qemu-system-x86_64 missing (qemu-system-x86)" >&2; exit 77; }

. "$(dirname "$0")/debian-kernel.sh"
bm_debian_kernel || exit 77

WORK=$(mktemp -d /tmp/kvm-nested.XXXXXX)
QPID=
cleanup() {
    [ -z "$QPID" ] || kill "$QPID" 2>/dev/null || true
    [ -z "$QPID" ] || wait "$QPID" 2>/dev/null || true
    rm -rf "$WORK"
    [ -z "$MONITOR" ] || rm -f "$MONITOR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The modules, each after those it depends on.
mkdir -p "$WORK/root/"{bin,proc,sys,dev,host,new,mods,mnt}
bm_kernel_modules "$WORK/root/mods" kvm-amd 9p 9pnet_virtio virtio_pci overlay veth sch_tbf || exit 77
cp "$BM_BUSYBOX" "$WORK/root/bin/busybox"
OUTFS=()
if [ -n "$OUT" ]; then
    case $OUT in *,*) echo "kvm-nested: --out $OUT: a comma cannot go into QEMU's -virtfs path" >&2; exit 2 ;; esac
    mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
    echo "$OUT" >"$WORK/root/outdir"
    OUTFS=(-virtfs "local,path=$OUT,mount_tag=out,security_model=none")
fi
{
    printf 'cd %q\n' "$PWD"
    for e in "${ENVS[@]:-}"; do [ -z "$e" ] || printf 'export %q\n' "$e"; done
    printf 'exec'
    printf ' %q' "$@"
    printf '\n'
} >"$WORK/root/cmd"
cat >"$WORK/root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod /mods/$m.ko 2>/dev/null || echo "kvm-nested: insmod $m failed"; done
[ -c /dev/kvm ] || echo "kvm-nested: no /dev/kvm in the VM"
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288 hostroot /host ||
    { echo "kvm-nested: cannot mount the host's filesystem"; poweroff -f; }
mount -t tmpfs -o size=90% ram /mnt
mkdir -p /mnt/upper /mnt/work
mount -t overlay -o lowerdir=/host,upperdir=/mnt/upper,workdir=/mnt/work overlay /new ||
    { echo "kvm-nested: overlay mount failed"; poweroff -f; }
for d in proc sys dev; do mount --bind /$d /new/$d; done
mount -t tmpfs run /new/run
mount -t devpts devpts /new/dev/pts 2>/dev/null
if [ -s /outdir ]; then
    o=$(cat /outdir)
    mkdir -p "/new$o" && mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 out "/new$o" ||
        echo "kvm-nested: cannot mount the output directory $o"
fi
ip link set lo up
cp /cmd /new/run/kvm-nested.cmd
# One idle KVM VM (irqchip, one vCPU that never runs) held open for the whole run: KVM turns
# static keys on with the first VM and vCPU (preempt notifiers, the LAPIC's) and off with the
# last, and each turn patches the kernel's code with int3 and IPIs. Under TCG with two vCPUs
# that patching has hung the nested kernel for good (both CPUs looping in finish_task_switch,
# soft lockups; seen at a KVM_CREATE_VM). Held, the counts never return to zero: no patching.
if [ -x /new/usr/bin/python3 ] && [ -c /dev/kvm ]; then
    chroot /new /usr/bin/python3 -c '
import fcntl, os, signal
kvm = os.open("/dev/kvm", os.O_RDWR)
vm = fcntl.ioctl(kvm, 0xae01, 0)  # KVM_CREATE_VM
fcntl.ioctl(vm, 0xae60, 0)        # KVM_CREATE_IRQCHIP
fcntl.ioctl(vm, 0xae41, 0)        # KVM_CREATE_VCPU 0
signal.pause()' </dev/null &
    HOLDER=$!
fi
echo "kvm-nested: running in the VM ($(uname -r), $(nproc) vCPUs)"
chroot /new /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root TERM=dumb /bin/bash /run/kvm-nested.cmd </dev/null
rc=$?
[ -z "${HOLDER:-}" ] || kill "$HOLDER" 2>/dev/null
echo "kvm-nested: exit $rc"
poweroff -f
INIT
chmod +x "$WORK/root/init"
(cd "$WORK/root" && find . | "$BM_BUSYBOX" cpio -o -H newc 2>/dev/null | gzip -1 >"$WORK/initrd.gz")

: >"$WORK/console" # before tail follows it
echo "kvm-nested: booting $BM_KV under QEMU TCG (-cpu max: SVM with nested paging), $MEM MiB, $CPUS vCPUs" >&2
timeout "$TIMEOUT" qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp "$CPUS" -m "$MEM" \
    -kernel "$BM_VMLINUZ" -initrd "$WORK/initrd.gz" \
    -append "console=ttyS0 quiet panic=-1 mitigations=off sysrq_always_enabled${APPEND:+ $APPEND}" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    "${OUTFS[@]}" ${MONITOR:+-monitor "unix:$MONITOR,server=on,wait=off"} \
    -nographic -no-reboot -nodefaults -serial stdio </dev/null >"$WORK/console" 2>&1 &
QPID=$!
# Show the command's output as it comes (the console, less QEMU's terminal escapes).
tail -n +1 -f --pid "$QPID" "$WORK/console" 2>/dev/null | sed -u 's/\x1b\[[0-9;?]*[a-zA-Z]//g; s/\r$//' &
TPID=$!
rc=0
wait "$QPID" || rc=$?
QPID=
wait "$TPID" 2>/dev/null || true
[ $rc -ne 124 ] || { echo "kvm-nested: timed out after $TIMEOUT s" >&2; exit 124; }
st=$(sed -n 's/.*kvm-nested: exit \([0-9]*\).*/\1/p' "$WORK/console" | tail -1)
[ -n "$st" ] || { echo "kvm-nested: the command did not finish in the VM (QEMU exit $rc)" >&2; exit 1; }
exit "$st"
