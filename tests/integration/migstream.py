"""migstream.py: the blkmig migration stream's framing, for the test peers that speak it
(fake-source.py, mig-peer.py). Layout as docs/migration-stream.md: a 16-byte stream header,
then frames of u32 type | u32 length | payload | XXH3-64 of type, length and payload."""
import ctypes
import struct

HEADER = b"BLKMIGST" + struct.pack(">II", 1, 0)
HELLO, HELLO_ACK, RAM, STATE, COMPLETE, ABORT, PING = 1, 2, 3, 5, 6, 8, 9

# XXH3-64 from the library blkmig itself links against.
_xxh = ctypes.CDLL("libxxhash.so.0")
_xxh.XXH3_64bits.restype = ctypes.c_uint64
_xxh.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]


def frame(ftype, payload):
    hdr = struct.pack(">II", ftype, len(payload))
    return hdr + payload + struct.pack(">Q", _xxh.XXH3_64bits(hdr + payload, len(hdr + payload)))


def read_exact(s, n):
    """n bytes from socket s; EOFError when the peer closes first."""
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("peer closed after %d of %d bytes" % (len(b), n))
        b += c
    return b


def read_frame(s):
    """(type, payload, raw bytes) of the next frame; the checksum is not checked."""
    hdr = read_exact(s, 8)
    ftype, n = struct.unpack(">II", hdr)
    rest = read_exact(s, n + 8)
    return ftype, rest[:n], hdr + rest
