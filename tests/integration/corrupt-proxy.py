#!/usr/bin/python3
"""corrupt-proxy.py: a TCP proxy that corrupts one byte of a blkmig migration stream.

    corrupt-proxy.py [--raw] LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT N

Accepts connections on LISTEN_HOST:LISTEN_PORT and forwards each, both ways, to
TARGET_HOST:TARGET_PORT. In the client -> target direction of the first connection it flips
one byte (XOR 0xff) once N bytes have gone through: by default the first payload byte, at or
after offset N, of a RAM or RAM_ZLIB frame (it follows the stream's framing: a 16-byte stream
header, then frames of an 8-byte header {type, length} (big-endian u32s), the payload and an
8-byte checksum), so the frame is sure to fail its checksum; with --raw, exactly the byte at
offset N. It says "listening on HOST:PORT" on stderr once it listens, and names the byte it
flipped. Runs until killed.
"""
import socket
import struct
import sys
import threading

STREAM_HDR, FRAME_HDR, FRAME_TRAILER = 16, 8, 8
RAM_TYPES = (3, 4)  # MIG_RAM, MIG_RAM_ZLIB (migration/stream.h)


def say(msg):
    sys.stderr.write("corrupt-proxy: %s\n" % msg)
    sys.stderr.flush()


class Corrupter:
    """Follows the framing of one direction and flips one byte of it."""

    def __init__(self, after, raw):
        self.after, self.raw = after, raw
        self.off = 0                # stream offset of the next byte
        self.state, self.need = "stream-header", STREAM_HDR
        self.hbuf = b""
        self.ftype = self.flen = 0
        self.done = False

    def flip(self, data, i, what):
        data[i] ^= 0xFF
        self.done = True
        say("flipped the byte at stream offset %d (%s)" % (self.off + i, what))

    def feed(self, data):
        """data: a bytearray, changed in place."""
        if self.done:
            return
        if self.raw:
            if self.off <= self.after < self.off + len(data):
                self.flip(data, self.after - self.off, "raw")
            self.off += len(data)
            return
        base = self.off  # stream offset of data[0]
        i = 0
        while i < len(data) and not self.done:
            take = min(self.need, len(data) - i)
            if self.state == "frame-header":
                self.hbuf += bytes(data[i:i + take])
            elif (self.state == "payload" and self.ftype in RAM_TYPES
                  and base + i + take > self.after):
                k = max(self.after - (base + i), 0)
                self.off = base
                self.flip(data, i + k, "frame type %d, %d-byte payload" % (self.ftype, self.flen))
            i += take
            self.need -= take
            if self.need:
                continue
            if self.state in ("stream-header", "trailer"):
                self.state, self.need, self.hbuf = "frame-header", FRAME_HDR, b""
            elif self.state == "frame-header":
                self.ftype, self.flen = struct.unpack(">II", self.hbuf)
                self.state, self.need = "payload", self.flen
                if self.flen == 0:
                    self.state, self.need = "trailer", FRAME_TRAILER
            elif self.state == "payload":
                self.state, self.need = "trailer", FRAME_TRAILER
        self.off = base + len(data)


def pump(src, dst, corrupter):
    try:
        while True:
            buf = src.recv(1 << 16)
            if not buf:
                break
            if corrupter:
                buf = bytearray(buf)
                corrupter.feed(buf)
            dst.sendall(buf)
    except OSError:
        pass
    finally:
        # Pass the end (or the failure) on to the other side.
        for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                s.shutdown(how)
            except OSError:
                pass


def serve(client, target, corrupter):
    try:
        upstream = socket.create_connection(target)
    except OSError as e:
        say("cannot connect to %s:%d: %s" % (target[0], target[1], e))
        client.close()
        return
    for s in (client, upstream):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threads = [threading.Thread(target=pump, args=(client, upstream, corrupter), daemon=True),
               threading.Thread(target=pump, args=(upstream, client, None), daemon=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    upstream.close()


def main(argv):
    raw = False
    if argv and argv[0] == "--raw":
        raw, argv = True, argv[1:]
    if len(argv) != 5:
        sys.stderr.write(__doc__)
        return 2
    lhost, lport, thost, tport, after = argv[0], int(argv[1]), argv[2], int(argv[3]), int(argv[4])
    ls = socket.socket(socket.AF_INET6 if ":" in lhost else socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((lhost, lport))
    ls.listen(8)
    say("listening on %s:%d, forwarding to %s:%d, flipping a byte after %d bytes%s"
        % (lhost, lport, thost, tport, after, " (raw)" if raw else ""))
    first = True
    while True:
        client, peer = ls.accept()
        say("connection from %s:%d" % peer[:2])
        corrupter = Corrupter(after, raw) if first else None
        first = False
        threading.Thread(target=serve, args=(client, (thost, tport), corrupter),
                         daemon=True).start()


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(0)
