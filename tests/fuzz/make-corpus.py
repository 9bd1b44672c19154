#!/usr/bin/env python3
"""tests/fuzz/make-corpus.py: write the fuzz harnesses' seed corpora (tests/fuzz/corpus/NAME/):
a handful of small valid inputs each, in the input formats the harnesses' headers describe.
Run it again after changing a format: it rewrites the seed-* files (regression inputs, named
after what they found, are left alone)."""
import json
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def write(name, seeds):
    d = os.path.join(HERE, "corpus", name)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        if f.startswith("seed-"):
            os.unlink(os.path.join(d, f))
    for label, data in seeds.items():
        with open(os.path.join(d, "seed-" + label), "wb") as f:
            f.write(data)


def be32(v):
    return struct.pack(">I", v)


def be64(v):
    return struct.pack(">Q", v)


# ---- nbd-request: u8 caps | u64 size | 28-byte requests ----
def nbd_req(ty, flags=0, off=0, length=4096, cookie=1):
    return be32(0x25609513) + struct.pack(">HHQQI", flags, ty, cookie, off, length)


write("nbd-request", {
    "read-write": bytes([6]) + be64(1 << 20) + nbd_req(0) + nbd_req(1, 1, 4096, 512),
    "readonly-trim": bytes([1]) + be64(1 << 20) + nbd_req(4, 0, 0, 4096) + nbd_req(3, 0, 0, 0),
    "block-status": bytes([6]) + be64(1 << 20) + nbd_req(7, 8, 0, 1 << 20) + nbd_req(2, 0, 0, 0),
    "zeroes-end": bytes([2]) + be64(1 << 20) + nbd_req(6, 0x13, (1 << 20) - 512, 512),
})


# ---- nbd-handshake: u8 mode | u32 client flags | (u32 opt | u32 len | data)* ----
def opt(o, data=b""):
    return be32(o) + be32(len(data)) + data


def info(name, reqs=()):
    n = name.encode()
    return be32(len(n)) + n + struct.pack(">H", len(reqs)) + b"".join(
        struct.pack(">H", r) for r in reqs)


def meta(name, queries):
    n = name.encode()
    out = be32(len(n)) + n + be32(len(queries))
    for q in queries:
        out += be32(len(q)) + q.encode()
    return out


CF = be32(3)  # FIXED_NEWSTYLE | NO_ZEROES
write("nbd-handshake", {
    "go": bytes([0]) + CF + opt(8) + opt(10, meta("disk", ["base:allocation"])) +
    opt(7, info("disk", (1, 2, 3))),
    "list-info": bytes([2]) + CF + opt(3) + opt(6, info("ro", (3,))) + opt(9, meta("ro", [])) +
    opt(2),
    "export-name": bytes([0]) + be32(1) + opt(1, b"disk"),
    "raw": bytes([1]) + CF + b"IHAVEOPT" + be32(7) + be32(6) + be32(0) + b"\0\0",
})


# ---- mig-stream: u8 flags | (u32 type | u32 len | payload)* ----
def frame(ty, payload):
    return be32(ty) + be32(len(payload)) + payload


def js(o):
    return json.dumps(o, separators=(",", ":")).encode()


def ram_zero(gpa):
    return be64(gpa | 1)


def ram_raw(gpa, byte):
    return be64(gpa | 2) + bytes([byte]) * 4096


HELLO = {"token": "t", "with_disk": True, "verify": False,
         "vm": {"kind": "synth", "ram": 262144, "cpuid": [],
                "workload": {"mem_rate": 0, "hot": 4096, "mem_pattern": "uniform", "disk_rate": 0,
                             "disk_min_io": 4096, "disk_max_io": 65536,
                             "disk_pattern": "hotspot", "seed": 1},
                "disks": [{"name": "vda", "size": 1048576}, {"name": "vdb", "size": 512}]}}
QEMU_HELLO = {"token": "t", "with_disk": True, "verify": True,
              "vm": {"kind": "qemu", "version": "7.2.22",
                     "argv": ["qemu-system-x86_64", "-machine", "q35", "-m", "64",
                              "-drive", "if=none,id=d0,file=/x/a.qcow2,format=qcow2",
                              "-device", "virtio-blk-pci,drive=d0,id=vd0",
                              "-chardev", "socket,id=c,path=/x/c.sock,server=on,wait=off",
                              "-serial", "chardev:c"],
                     "disks": [{"name": "disk0", "size": 67108864, "format": "qcow2",
                                "drive": "d0"}]}}
RAM = ram_zero(0) + ram_raw(4096, 0x5a) + ram_zero(8192)
STATE = js({"last_hb_ns": 1, "max_gap_ns": 2, "hb_count": 3, "ram_writes": 4, "disk_writes": 5,
            "ram_checks": 6, "disk_checks": 7, "errors": 0, "mem_seq": 9, "synth_state": 1})
write("mig-stream", {
    "dest": bytes([0]) + frame(1, js(HELLO)) + frame(3, RAM) + frame(9, be64(100)) +
    frame(5, STATE) + frame(6, js({"ram_pages": 3, "digests": {"ram": "0", "disks": {}}})),
    "zlib": bytes([0]) + frame(4, be32(len(RAM)) + zlib.compress(RAM)) +
    frame(8, js({"reason": "test"})),
    "source": bytes([0]) + frame(2, js({"nbd_port": 10809, "exports": {"vda": "x-vda"}})) +
    frame(7, js({"digest_ms": 1, "verified": True})) + frame(10, js({"guest_gap_ns": 5})),
    "header": bytes([2]) + b"BLKMIGST" + be32(1) + be32(0) + frame(9, be64(0)),
    "qemu": bytes([0]) + frame(1, js(QEMU_HELLO)) + frame(2, js({
        "nbd_port": 10809, "exports": {"disk0": "x-disk0"}, "qemu_port": 49152})),
})

# ---- control: u8 stub flags | command lines ----
CMDS = [
    {"execute": "query-status", "id": 1},
    {"execute": "migrate", "arguments": {"uri": "tcp:127.0.0.1:4444", "with_disk": True,
                                         "downtime_limit_ms": 300, "max_bandwidth": "100M",
                                         "order": "disk-first", "max_time_s": 60,
                                         "peer_timeout_ms": 1000, "connections": 2}},
    {"execute": "query-migrate"}, {"execute": "migrate-cancel"},
    {"execute": "stop"}, {"execute": "x-state-roundtrip"}, {"execute": "cont"},
    {"execute": "guest-check"}, {"execute": "x-query-vcpus"}, {"execute": "nope"},
    {"execute": "quit", "id": "q"},
]
lines = b"\n".join(js(c) for c in CMDS) + b"\n"
write("control", {
    "all": bytes([1]) + lines,
    "paused-failing": bytes([6]) + lines,
    "bad": bytes([0]) + b'{"execute":5}\n[1]\n{"execute":"stop","arguments":[]}\nnot json\n',
    "migrate-int-rate": bytes([0]) + js({"execute": "migrate", "arguments": {
        "uri": "tcp:h:1", "max_bandwidth": 1000, "order": "joint"}}) + b"\n",
})


# ---- qmp: u8 flags (bit 0: also a fake QEMU's stream; bit 1: typed returns) | lines ----
GREETING = {"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7},
                                "package": "Debian 1:7.2+dfsg-7"}, "capabilities": ["oob"]}}


def qev(name, data=None):
    e = {"timestamp": {"seconds": 1700000000, "microseconds": 5}, "event": name}
    if data is not None:
        e["data"] = data
    return e


def qlines(*objs):
    return b"".join(js(o) + b"\r\n" for o in objs)


write("qmp", {
    "session": bytes([1]) + qlines(
        GREETING, {"return": {}, "id": 1},
        qev("STOP"), {"return": {"status": "paused", "running": False}, "id": 2},
        {"error": {"class": "CommandNotFound", "desc": "no such command"}, "id": 3},
        qev("RESUME"), {"return": {"status": "running", "running": True}, "id": 4},
        qev("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})),
    "typed": bytes([3]) + qlines(GREETING, {"return": {}, "id": 1}, {"return": [], "id": 2},
                                 {"return": {}, "id": 7}),
    "not-qmp": bytes([1]) + b"SSH-2.0-OpenSSH_9.2p1\r\n",
    "query-migrate": bytes([0]) + qlines(
        {"return": {"expected-downtime": 1, "status": "pre-switchover", "setup-time": 2,
                    "total-time": 411, "ram": {"total": 134750208, "dirty-sync-count": 3,
                                               "page-size": 4096, "remaining": 0,
                                               "mbps": 31.60237037037037, "transferred": 799950,
                                               "dirty-pages-rate": 0, "normal": 123}}, "id": 5},
        {"return": {"status": "failed", "error-desc": "Unable to write to socket"}, "id": 6},
        {"return": {"socket-address": [{"port": "33289", "ipv4": True, "host": "127.0.0.1",
                                        "type": "inet"}]}, "id": 7}),
    "lines": bytes([0]) + qlines(GREETING, qev("BLOCK_JOB_READY", {"device": "d0"}),
                                 {"return": [{"device": "d0", "inserted": {"drv": "raw"}}],
                                  "id": 18446744073709551615},
                                 {"error": {"class": "GenericError", "desc": "x"}}) +
    b'{"return": {}} {}\n{"event": 1}\n[]\n',
})


# ---- kvm-state: u8 (disks, 0x80 = magic included) | sections (u32 tag | u32 len | payload),
# host-endian; x86-64 sizes of linux/kvm.h structures and of struct kvm_vblk.
def sec(tag, payload):
    return struct.pack("<II", tag, len(payload)) + payload


def vblk(qnum):
    b = bytearray(88)
    struct.pack_into("<I", b, 32, qnum)  # qnum
    struct.pack_into("<QQQ", b, 56, 0x10000, 0x11000, 0x12000)  # desc, avail, used
    return bytes(b)


EVENTS = sec(9, bytes(64))
MSRS = sec(8, struct.pack("<II", 2, 0) + bytes(32))
TSC = sec(35, struct.pack("<QQII", 2000000, 1, 1, 3) + bytes(16))
write("kvm-state", {
    "minimal": bytes([0]) + EVENTS,
    "vcpu": bytes([1]) + sec(1, bytes(4)) + sec(2, bytes(144)) + sec(3, bytes(312)) +
    sec(5, bytes(392)) + sec(6, bytes(128)) + MSRS + EVENTS + sec(34, bytes(48)) + TSC +
    sec(64, vblk(256)) + sec(65, b"hb 1"),
    "vm": bytes([2]) + EVENTS + sec(33, bytes(112)) + sec(64, vblk(8)) + sec(64, vblk(0)),
    "magic": bytes([0x80]) + b"BMKVMST1" + EVENTS,
})


# ---- virtio-blk: operations (0 poke, 1 write reg, 2 read reg, 3 console, 4 notify) ----
def poke(gpa, data):
    out = b""
    for i in range(0, len(data), 255):
        chunk = data[i:i + 255]
        out += bytes([0]) + struct.pack("<HB", gpa + i, len(chunk)) + chunk
    return out


def wr(off, v):
    return bytes([1]) + struct.pack("<HI", off, v)


def rd(off, n=4):
    return bytes([2]) + struct.pack("<HB", off, n - 1)


DESC, AVAIL, USED, HDR, STATUS, DATA, QN = 0x1000, 0x2000, 0x3000, 0x4000, 0x4100, 0x5000, 8
HANDSHAKE = (rd(0) + rd(4) + rd(8) + wr(0x70, 0) + wr(0x70, 1) + wr(0x70, 3) + wr(0x14, 1) +
             rd(0x10) + wr(0x24, 0) + wr(0x20, 0) + wr(0x24, 1) + wr(0x20, 1) + wr(0x70, 11) +
             wr(0x30, 0) + rd(0x34) + wr(0x38, QN) + wr(0x80, DESC) + wr(0x84, 0) +
             wr(0x90, AVAIL) + wr(0x94, 0) + wr(0xa0, USED) + wr(0xa4, 0) + wr(0x44, 1) +
             wr(0x70, 15))


def request(ty, sector, length, idx):
    d = struct.pack("<QIHH", HDR, 16, 1, 1)
    if length:
        d += struct.pack("<QIHH", DATA, length, 1 | (2 if ty in (0, 8) else 0), 2)
    d += struct.pack("<QIHH", STATUS, 1, 2, 0)
    return (poke(HDR, struct.pack("<IIQ", ty, 0, sector)) + poke(DESC, d) +
            poke(AVAIL + 4 + 2 * ((idx - 1) % QN), b"\0\0") + poke(AVAIL + 2, struct.pack("<H", idx)) +
            bytes([4]))


write("virtio-blk", {
    "write-read": HANDSHAKE + poke(DATA, b"\xab" * 512) + request(1, 2, 512, 1) +
    request(0, 2, 512, 2) + rd(0x60) + wr(0x64, 1),
    "flush-getid": HANDSHAKE + request(4, 0, 0, 1) + request(8, 0, 20, 2) + rd(0x100, 4) +
    rd(0x101, 1),
    "console": poke(0x100, b"hb 1 ram 2\n\0") + bytes([3, 0x10]) + struct.pack("<I", 0x100) +
    bytes([3, 0]) + struct.pack("<I", 0x41) + bytes([3, 0]) + struct.pack("<I", 10) +
    bytes([3, 4]) + struct.pack("<I", 0),
    "reset": HANDSHAKE + wr(0x70, 0) + request(0, 0, 512, 1),
})


# ---- qemu-cmdline: argv, NUL-separated ----
def argv(*args):
    return b"\0".join(a.encode() for a in ("qemu-system-x86_64",) + args)


write("qemu-cmdline", {
    "libvirt": argv(
        "-machine", "pc-q35-7.2,usb=off", "-cpu", "host", "-chardev",
        "socket,id=charmonitor,fd=23,server=on,wait=off", "-mon",
        "chardev=charmonitor,id=monitor,mode=control", "-blockdev",
        '{"driver":"file","filename":"/img/vm.qcow2","node-name":"s"}', "-blockdev",
        '{"node-name":"f","read-only":false,"driver":"qcow2","file":"s","backing":null}',
        "-device", "virtio-blk-pci,drive=f,id=virtio-disk0", "-S"),
    "drives": argv(
        "-M", "q35", "-drive", "file=disk.qcow2,if=virtio", "-drive",
        "file=/d/a,,b.raw,format=raw,if=none,id=data,cache=none,aio=native", "-device",
        "virtio-blk-pci,drive=data,id=vdb", "-cdrom", "/iso/x.iso", "-drive",
        "if=ide,media=cdrom,id=cd1,readonly=on"),
    "chardevs": argv(
        "-hda", "a.img", "-chardev", "socket,id=s0,path=/run/x.sock,server=on,wait=off",
        "-serial", "chardev:s0", "-chardev", "file,id=f0,path=/log/x.sock,logfile=/log/l",
        "-parallel", "unix:/tmp/p,,1.sock,server,nowait", "-serial", "file:/var/c.log",
        "-qmp", "unix:/run/q.sock,server=on,wait=off", "-monitor", "stdio",
        "-daemonize", "-pidfile", "/run/vm.pid", "-D", "/tmp/q.log"),
    "keyval": argv(
        "--blockdev", "qcow2,node-name=sys,file.driver=file,file.filename=/a/sys.qcow2",
        "-device", "scsi-hd,drive=sys,id=sd0", "-incoming", "tcp:0:4444", "-pflash", "/fw.fd"),
})


# ---- qemu-disks: query-block \0 query-blockstats \0 query-named-block-nodes (captured) ----
def qemu_replies(name):
    with open(os.path.join(HERE, "..", "unit", "data", name)) as f:
        o = json.load(f)
    return b"\0".join(json.dumps(o[k], separators=(",", ":")).encode()
                      for k in ("query-block", "query-blockstats", "query-named-block-nodes"))


write("qemu-disks", {
    "drives": qemu_replies("qemu72-drives.json"),
    "nbd": qemu_replies("qemu72-nbd.json"),
    "proc-cmdline": argv("-m", "64", "-drive", "file=a.raw,format=raw") + b"\0",
})
