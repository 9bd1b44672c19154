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
import os
import socket
import struct
import sys
import time

from migstream import ABORT, HEADER, HELLO, HELLO_ACK, PING, RAM, frame, read_exact, read_frame


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("hello")
    ap.add_argument("--ram-records", type=int, default=0)
    ap.add_argument("--hold")
    a = ap.parse_args()
    s = socket.create_connection((a.host, a.port), timeout=120)
    try:
        s.sendall(HEADER)
        read_exact(s, 16)
        s.sendall(frame(HELLO, a.hello.encode()))
        while True:
            ftype, payload, _ = read_frame(s)
            if ftype in (HELLO_ACK, ABORT):
                break
    except (EOFError, ConnectionError):
        print("CLOSED", flush=True)
        return 0
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
