#!/usr/bin/env python3
"""mig-peer.py: rude and fake peers of a blkmig migration, for migrate-listener.sh.

    mig-peer.py strays HOST PORT READY          silent and bogus connections to the listener
    mig-peer.py flood HOST PORT N READY         N idle TCP connections (an NBD port)
    mig-peer.py stall-proxy HOST PORTFILE DHOST DPORT DISK STATE
        a proxy between source and destination: when HELLO_ACK passes, a third party takes
        DISK's export name from it, negotiates it on the NBD port, sends a READ, then a WRITE
        whose payload stalls, writes the name to STATE, and only then lets HELLO_ACK through
    mig-peer.py fake-dest HOST PORTFILE HELLO REASON
        a destination that saves the source's HELLO payload to HELLO and answers ABORT REASON
    mig-peer.py fake-source HOST PORT HELLO abort REASON | complete-first
        a source that sends HELLO (the saved payload), waits for HELLO_ACK, then ABORT REASON
        or COMPLETE before any STATE; prints what the destination answered

REASON may hold \\e and \\n (an escape character, a newline). Each holds its connections open
until killed. Frames as docs/migration-stream.md: u32 type | u32 len | payload | XXH3-64.
"""
import json
import os
import socket
import struct
import sys
import threading
import time

from migstream import (ABORT, COMPLETE, HEADER as MAGIC, HELLO, HELLO_ACK, PING, frame,
                       read_exact, read_frame)


def ready(path):
    with open(path + ".tmp", "w") as f:
        f.write("ready\n")
    os.rename(path + ".tmp", path)


def hold():
    while True:
        time.sleep(60)


def reason_arg(s):
    return s.replace("\\e", "\x1b").replace("\\n", "\n")


def strays(host, port, readyf):
    keep = []
    for _ in range(20):  # silent: connect, say nothing
        keep.append(socket.create_connection((host, int(port))))
    s = socket.create_connection((host, int(port)))
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not blkmig
    keep.append(s)
    s = socket.create_connection((host, int(port)))
    s.sendall(MAGIC)  # a stream header, then nothing
    keep.append(s)
    s = socket.create_connection((host, int(port)))
    s.sendall(MAGIC + frame(PING, b""))  # a first frame that is no HELLO
    keep.append(s)
    ready(readyf)
    hold()


def flood(host, port, n, readyf):
    keep = [socket.create_connection((host, int(port))) for _ in range(int(n))]
    ready(readyf)
    hold()


def nbd_stall_write(host, port, name):
    """Negotiate export name, READ 512 bytes, then send a 64 KiB WRITE with 100 bytes of it."""
    s = socket.create_connection((host, port))
    greet = read_exact(s, 18)
    assert greet[:8] == b"NBDMAGIC", greet
    s.sendall(struct.pack(">I", 3))  # fixed newstyle, no zeroes
    nm = name.encode()
    data = struct.pack(">I", len(nm)) + nm + struct.pack(">H", 0)
    s.sendall(b"IHAVEOPT" + struct.pack(">II", 7, len(data)) + data)  # NBD_OPT_GO
    while True:
        magic, opt, rtype, n = struct.unpack(">QIII", read_exact(s, 20))
        read_exact(s, n)
        if rtype & 0x80000000:
            raise RuntimeError("NBD_OPT_GO refused: reply type 0x%x" % rtype)
        if rtype == 1:  # NBD_REP_ACK
            break
    req = struct.Struct(">IHHQQI")
    s.sendall(req.pack(0x25609513, 0, 0, 1, 0, 512))  # READ: the connection serves
    magic, err, cookie = struct.unpack(">IIQ", read_exact(s, 16))
    assert magic == 0x67446698 and err == 0 and cookie == 1, (magic, err, cookie)
    read_exact(s, 512)
    s.sendall(req.pack(0x25609513, 0, 1, 2, 0, 65536) + b"\xab" * 100)  # WRITE, stalled
    return s


def pump(src, dst):
    try:
        while True:
            b = src.recv(65536)
            if not b:
                break
            dst.sendall(b)
    except OSError:
        pass
    for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
        try:
            s.shutdown(how)
        except OSError:
            pass


def listen_on(host, portfile):
    """A listening socket on a free port of host; the port goes to portfile."""
    ls = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    ls.bind((host, 0))
    ls.listen(1)
    with open(portfile, "w") as f:
        f.write("%d\n" % ls.getsockname()[1])
    return ls


def stall_proxy(host, portfile, dhost, dport, disk, statef):
    ls = listen_on(host, portfile)
    src, _ = ls.accept()
    dst = socket.create_connection((dhost, int(dport)))
    threading.Thread(target=pump, args=(src, dst), daemon=True).start()
    src.sendall(read_exact(dst, 16))  # the source sends HELLO only once it has this
    ftype, payload, raw = read_frame(dst)
    keep = None
    if ftype == HELLO_ACK:
        ack = json.loads(payload)
        name = ack["exports"][disk]
        keep = nbd_stall_write(dhost, int(ack["nbd_port"]), name)
        with open(statef, "w") as f:
            f.write(name + "\n")
    src.sendall(raw)
    pump(dst, src)
    hold()


def fake_dest(host, portfile, hellof, reason):
    ls = listen_on(host, portfile)
    s, _ = ls.accept()
    s.sendall(MAGIC)
    read_exact(s, 16)
    ftype, payload, _ = read_frame(s)
    assert ftype == HELLO, ftype
    with open(hellof, "wb") as f:
        f.write(payload)
    s.sendall(frame(ABORT, json.dumps({"reason": reason_arg(reason)}).encode()))
    hold()


def fake_source(host, port, hellof, what, reason=None):
    s = socket.create_connection((host, int(port)))
    s.sendall(MAGIC)
    read_exact(s, 16)
    s.sendall(frame(HELLO, open(hellof, "rb").read()))
    while True:
        ftype, payload, _ = read_frame(s)
        if ftype != PING:
            break
    print("answer %d %s" % (ftype, payload.decode(errors="replace")), flush=True)
    if ftype != HELLO_ACK:
        hold()
    if what == "abort":
        s.sendall(frame(ABORT, json.dumps({"reason": reason_arg(reason)}).encode()))
    else:
        s.sendall(frame(COMPLETE, json.dumps({"ram_pages": 0, "pad": "x" * 700}).encode()))
    try:
        while True:
            ftype, payload, _ = read_frame(s)
            if ftype != PING:
                print("answer %d %s" % (ftype, payload.decode(errors="replace")), flush=True)
    except (EOFError, OSError):
        pass
    hold()


if __name__ == "__main__":
    cmds = {"strays": strays, "flood": flood, "stall-proxy": stall_proxy,
            "fake-dest": fake_dest, "fake-source": fake_source}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        sys.exit(__doc__)
    cmds[sys.argv[1]](*sys.argv[2:])
