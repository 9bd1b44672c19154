#!/usr/bin/env python3
"""fake-source.py: a hostile migration source for `blkmig incoming` (docs/migration-stream.md).

Usage: fake-source.py HOST PORT HELLO-JSON [--ram-records N] [--hold FILE]

Connects, exchanges the stream headers, sends HELLO-JSON as the HELLO frame and prints the
destination's answer as one line, `HELLO_ACK {json}` or `ABORT {json}` (or `CLOSED`). After a
HELLO_ACK it sends N RAW page records (default 0), each 2 MiB after the last, and with --hold
keeps the connection open (an empty PING every 0.2 s) until FILE exists (at most 120 s), then
closes the connection without another word, as a source that died would.
"""
import argparse
import ctypes
import os
import socket
import struct
import sys
import time

MAGIC = b"BLKMIGST"
HELLO, HELLO_ACK, RAM, ABORT, PING = 1, 2, 3, 8, 9

# XXH3-64 from the library blkmig itself links against.
_xxh = ctypes.CDLL("libxxhash.so.0")
_xxh.XXH3_64bits.restype = ctypes.c_uint64
_xxh.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]


def frame(ftype, payload):
    hdr = struct.pack(">II", ftype, len(payload))
    return hdr + payload + struct.pack(">Q", _xxh.XXH3_64bits(hdr + payload, len(hdr) + len(payload)))


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def recv_frame(s):
    hdr = recv_exact(s, 8)
    if hdr is None:
        return None, None
    ftype, length = struct.unpack(">II", hdr)
    rest = recv_exact(s, length + 8)
    if rest is None:
        return None, None
    return ftype, rest[:length]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("hello")
    ap.add_argument("--ram-records", type=int, default=0)
    ap.add_argument("--hold")
    a = ap.parse_args()
    s = socket.create_connection((a.host, a.port), timeout=120)
    s.sendall(MAGIC + struct.pack(">II", 1, 0))
    if recv_exact(s, 16) is None:
        print("CLOSED", flush=True)
        return 0
    s.sendall(frame(HELLO, a.hello.encode()))
    while True:
        ftype, payload = recv_frame(s)
        if ftype is None:
            print("CLOSED", flush=True)
            return 0
        if ftype in (HELLO_ACK, ABORT):
            break
    print("%s %s" % ("HELLO_ACK" if ftype == HELLO_ACK else "ABORT", payload.decode(errors="replace")),
          flush=True)
    if ftype != HELLO_ACK:
        return 0
    page = b"\xa5" * 4096
    for i in range(a.ram_records):
        s.sendall(frame(RAM, struct.pack(">Q", (i << 21) | 2) + page))
    if a.hold:
        deadline = time.monotonic() + 120
        while not os.path.exists(a.hold) and time.monotonic() < deadline:
            s.sendall(frame(PING, b""))
            time.sleep(0.2)
    # Gone without a word: no ABORT, the connection simply closes.
    s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
