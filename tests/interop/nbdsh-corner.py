#!/usr/bin/env python3
# nbdsh-corner.py: NBD corner cases against `blkmig nbd-serve`, through libnbd's python API
# (the module nbdsh runs on) plus a few raw-socket handshake probes.
#
#   nbdsh-corner.py setup DIR   create the images: DIR/rw.img DIR/ro.img (same layout, 40 MiB,
#                               sparse), DIR/second.img (1 MiB pattern)
#   nbdsh-corner.py run         run every check; the environment names the servers:
#       NBD_RW_URI      read-write server: bare rw.img ("") and --export second=second.img
#       NBD_RW_FILE     its rw.img          NBD_SECOND_FILE  second.img
#       NBD_RO_URI      --readonly server of ro.img      NBD_RO_FILE  ro.img
#       NBD_SINGLE_URI  server whose only export is --export only=second.img
#       NBD_EXPORTS     JSON list of the export names of the read-write server
#
# Prints a "# check: ok" line per check; exits 1 if any check failed.

import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import json
import os
import random
import socket
import struct
import sys
import traceback

import nbd

MiB = 1024 * 1024
SIZE = 40 * MiB                      # > 32 MiB + 1, so oversized requests are in range
DATA = [(1 * MiB, 1 * MiB), (4 * MiB, 256 * 1024)]   # random data; the rest is holes
SECOND_SIZE = 1 * MiB
MAX_PAYLOAD = 32 * MiB

# Regions the write checks use (all holes at setup, apart from each other).
R_FUA = 8 * MiB
R_ZERO = 12 * MiB
R_NOHOLE = 16 * MiB
R_MULTI = 20 * MiB
R_TRIM = 24 * MiB
R_SIMPLE = 28 * MiB
R_FAST = 30 * MiB

EINVAL, ENOSPC, EPERM = errno.EINVAL, errno.ENOSPC, errno.EPERM


def layout_bytes(seed):
    rnd = random.Random(seed)
    return [rnd.randbytes(n) for _, n in DATA]


def setup(d):
    for name in ("rw.img", "ro.img"):
        path = os.path.join(d, name)
        with open(path, "wb") as f:
            f.truncate(SIZE)
            for (off, _), buf in zip(DATA, layout_bytes(1)):
                f.seek(off)
                f.write(buf)
    with open(os.path.join(d, "second.img"), "wb") as f:
        f.write(bytes(range(256)) * (SECOND_SIZE // 256))


# ---- helpers ----

def env(name):
    v = os.environ.get(name)
    if not v:
        sys.exit(f"nbdsh-corner.py: ${name} is not set")
    return v


def file_read(path, count, off):
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, count, off)
    finally:
        os.close(fd)


def file_map(path, off, count):
    """[(length, flags)] of [off, off+count) from SEEK_DATA/SEEK_HOLE: hole = 3, data = 0."""
    fd = os.open(path, os.O_RDONLY)
    out = []
    end = off + count
    try:
        while off < end:
            try:
                data = os.lseek(fd, off, os.SEEK_DATA)
            except OSError as e:
                if e.errno != errno.ENXIO:
                    raise
                data = end
            if data > off:
                n = min(data, end) - off
                flags = 3
            else:
                n = min(os.lseek(fd, off, os.SEEK_HOLE), end) - off
                flags = 0
            if out and out[-1][1] == flags:
                out[-1] = (out[-1][0] + n, flags)
            else:
                out.append((n, flags))
            off += n
    finally:
        os.close(fd)
    return out


FS_IOC_FIEMAP = 0xC020660B


def fiemap_covered(path, off, count):
    """Bytes of [off, off+count) backed by extents (written or unwritten), or None if the
    filesystem has no FIEMAP."""
    fd = os.open(path, os.O_RDONLY)
    try:
        n = 256
        buf = bytearray(struct.pack("=QQIIII", off, count, 1, 0, n, 0) + bytes(56 * n))
        try:
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
        except OSError:
            return None
        mapped = struct.unpack_from("=I", buf, 20)[0]
        covered = 0
        for i in range(mapped):
            lo, _, ln = struct.unpack_from("=QQQ", buf, 32 + 56 * i)
            a, b = max(lo, off), min(lo + ln, off + count)
            if b > a:
                covered += b - a
        return covered
    finally:
        os.close(fd)


def allocated(path, off, count):
    """(True/False, how): is all of [off, off+count) allocated in the file? SEEK_DATA first;
    ext4/xfs report unwritten (fallocated) extents as holes there, so FIEMAP decides then."""
    m = file_map(path, off, count)
    if m == [(count, 0)]:
        return True, "SEEK_DATA"
    cov = fiemap_covered(path, off, count)
    if cov is None:
        return False, f"SEEK_DATA map {m}, no FIEMAP"
    return cov == count, f"SEEK_DATA map {m}, FIEMAP covers {cov} of {count}"


def connect(uri, structured=True, meta=True, name=None):
    h = nbd.NBD()
    h.set_strict_mode(0)             # let bad requests through to the server
    h.set_request_structured_replies(structured)
    if meta and structured:
        h.add_meta_context("base:allocation")
    if name is not None:             # the URI's path is the export name
        scheme, rest = uri.split("//", 1)
        uri = f"{scheme}//{rest.split('/', 1)[0]}/{name}"
    h.connect_uri(uri)
    return h


def close(h):
    try:
        h.shutdown()
    except nbd.Error:
        pass


def expect_errno(want, what, fn, *args):
    try:
        fn(*args)
    except nbd.Error as e:
        if e.errnum != want:
            raise AssertionError(f"{what}: errno {e.errnum} ({e.string}), expected "
                                 f"{want} ({errno.errorcode.get(want)})")
        return
    raise AssertionError(f"{what}: succeeded, expected errno {want} "
                         f"({errno.errorcode.get(want)})")


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


def still_works(h, path, what):
    """The connection still answers: a read crossing hole and data matches the file."""
    off, n = 1 * MiB - 4096, 8192
    got = bytes(h.pread(n, off))
    expect(got == file_read(path, n, off), f"{what}: read after it returned wrong data")


def block_status(h, count, off, flags=0):
    """All base:allocation extents of one BLOCK_STATUS request as [(length, flags)]."""
    ext = []

    def cb(ctx, o, entries, err):
        if ctx == nbd.CONTEXT_BASE_ALLOCATION:
            ext.extend(zip(entries[0::2], entries[1::2]))
        return 0

    h.block_status(count, off, cb, flags)
    return ext


def merge(ext):
    out = []
    for n, f in ext:
        if out and out[-1][1] == f:
            out[-1] = (out[-1][0] + n, f)
        else:
            out.append((n, f))
    return out


# ---- checks ----

CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


@check
def handshake_info():
    h = connect(RW)
    try:
        expect(h.get_size() == SIZE, f"size {h.get_size()}, expected {SIZE}")
        sizes = (h.get_block_size(nbd.SIZE_MINIMUM), h.get_block_size(nbd.SIZE_PREFERRED),
                 h.get_block_size(nbd.SIZE_MAXIMUM))
        expect(sizes == (1, 4096, MAX_PAYLOAD), f"block sizes {sizes}, expected "
               f"(1, 4096, {MAX_PAYLOAD})")
        expect(h.get_structured_replies_negotiated(), "no structured replies")
        expect(h.can_meta_context("base:allocation"), "base:allocation not negotiated")
        for f in ("can_multi_conn", "can_fua", "can_flush", "can_trim", "can_zero",
                  "can_fast_zero", "can_cache", "can_df"):
            expect(getattr(h, f)(), f"{f}() is false")
        expect(not h.is_read_only(), "read-write export says read-only")
    finally:
        close(h)


@check
def out_of_range():
    h = connect(RW)
    try:
        z = b"\0" * 1024
        for off, n in ((SIZE, 512), (SIZE - 512, 1024), (SIZE + MiB, 512), (2**63, 512)):
            where = f"offset {off} length {n}"
            expect_errno(EINVAL, f"READ {where}", h.pread, n, off)
            expect_errno(ENOSPC, f"WRITE {where}", h.pwrite, z[:n], off)
            expect_errno(ENOSPC, f"WRITE_ZEROES {where}", h.zero, n, off)
            expect_errno(EINVAL, f"TRIM {where}", h.trim, n, off)
            expect_errno(EINVAL, f"CACHE {where}", h.cache, n, off)
            expect_errno(EINVAL, f"BLOCK_STATUS {where}", block_status, h, n, off)
        still_works(h, RW_FILE, "out-of-range requests")
        expect(file_read(RW_FILE, 512, SIZE - 512) == b"\0" * 512,
               "a refused out-of-range write changed the file's tail")
        expect(os.stat(RW_FILE).st_size == SIZE, "out-of-range write grew the file")
    finally:
        close(h)


@check
def zero_length():
    h = connect(RW)
    try:
        for off in (0, 1 * MiB):
            expect_errno(EINVAL, "READ length 0", h.pread, 0, off)
            expect_errno(EINVAL, "WRITE length 0", h.pwrite, b"", off)
            expect_errno(EINVAL, "WRITE_ZEROES length 0", h.zero, 0, off)
            expect_errno(EINVAL, "TRIM length 0", h.trim, 0, off)
            expect_errno(EINVAL, "CACHE length 0", h.cache, 0, off)
            expect_errno(EINVAL, "BLOCK_STATUS length 0", block_status, h, 0, off)
        still_works(h, RW_FILE, "zero-length requests")
    finally:
        close(h)


@check
def unknown_flags():
    h = connect(RW)
    try:
        expect_errno(EINVAL, "READ with FUA", h.pread, 512, 0, nbd.CMD_FLAG_FUA)
        expect_errno(EINVAL, "READ with REQ_ONE", h.pread, 512, 0, nbd.CMD_FLAG_REQ_ONE)
        expect_errno(EINVAL, "READ with flag bit 10", h.pread, 512, 0, 1 << 10)
        expect_errno(EINVAL, "WRITE with NO_HOLE", h.pwrite, b"x" * 512, R_FUA,
                     nbd.CMD_FLAG_NO_HOLE)
        expect_errno(EINVAL, "WRITE with DF", h.pwrite, b"x" * 512, R_FUA, nbd.CMD_FLAG_DF)
        expect_errno(EINVAL, "TRIM with NO_HOLE", h.trim, 512, R_TRIM, nbd.CMD_FLAG_NO_HOLE)
        expect_errno(EINVAL, "CACHE with FUA", h.cache, 512, 0, nbd.CMD_FLAG_FUA)
        expect_errno(EINVAL, "WRITE_ZEROES with REQ_ONE", h.zero, 512, R_ZERO,
                     nbd.CMD_FLAG_REQ_ONE)
        expect_errno(EINVAL, "BLOCK_STATUS with FUA", block_status, h, 512, 0,
                     nbd.CMD_FLAG_FUA)
        expect(file_read(RW_FILE, 512, R_FUA) == b"\0" * 512,
               "a WRITE refused for its flags changed the file")
        still_works(h, RW_FILE, "requests with unknown flags")
    finally:
        close(h)


@check
def oversized_requests():
    h = connect(RW)
    try:
        big = MAX_PAYLOAD + 1
        expect_errno(EINVAL, "READ of 32 MiB + 1", h.pread, big, 0)
        expect_errno(EINVAL, "WRITE of 32 MiB + 1 (in range: EINVAL, not ENOSPC)", h.pwrite,
                     b"\xaa" * big, 0)
        expect_errno(EINVAL, "CACHE of 32 MiB + 1", h.cache, big, 0)
        expect(file_read(RW_FILE, 4096, 0) == b"\0" * 4096,
               "a refused oversized WRITE changed the file")
        still_works(h, RW_FILE, "oversized requests")
        got = bytes(h.pread(MAX_PAYLOAD, 0))
        expect(got == file_read(RW_FILE, MAX_PAYLOAD, 0), "READ of exactly 32 MiB: wrong data")
    finally:
        close(h)


@check
def block_status_needs_meta_context():
    h = connect(RW, meta=False)
    try:
        expect(not h.can_meta_context("base:allocation"), "base:allocation negotiated "
               "although not asked for")
        expect_errno(EINVAL, "BLOCK_STATUS without SET_META_CONTEXT", block_status, h,
                     MiB, 0)
        still_works(h, RW_FILE, "BLOCK_STATUS without meta context")
    finally:
        close(h)


@check
def read_only_export():
    before = hashlib.sha256(file_read(RO_FILE, SIZE, 0)).hexdigest()
    h = connect(RO)
    try:
        expect(h.is_read_only(), "--readonly export is not flagged read-only")
        expect(not h.can_trim() and not h.can_zero(), "read-only export offers TRIM/ZEROES")
        expect_errno(EPERM, "WRITE (64 KiB) to read-only", h.pwrite, b"\x55" * 65536, MiB)
        still_works(h, RO_FILE, "refused WRITE (its payload must be consumed)")
        expect_errno(EPERM, "WRITE with FUA to read-only", h.pwrite, b"\x55" * 4096, 0,
                     nbd.CMD_FLAG_FUA)
        expect_errno(EPERM, "TRIM on read-only", h.trim, MiB, MiB)
        expect_errno(EPERM, "WRITE_ZEROES on read-only", h.zero, MiB, MiB)
        expect_errno(EPERM, "WRITE_ZEROES NO_HOLE on read-only", h.zero, 4096, 0,
                     nbd.CMD_FLAG_NO_HOLE)
        still_works(h, RO_FILE, "refused TRIM/WRITE_ZEROES")
        h.flush()
        h.cache(MiB, MiB)
    finally:
        close(h)
    after = hashlib.sha256(file_read(RO_FILE, SIZE, 0)).hexdigest()
    expect(before == after, "the read-only image changed")


@check
def fua_write_read_back():
    h = connect(RW)
    try:
        buf = random.Random(2).randbytes(65536 + 123)
        h.pwrite(buf, R_FUA + 7, nbd.CMD_FLAG_FUA)
        expect(bytes(h.pread(len(buf), R_FUA + 7)) == buf, "FUA write: read back differs")
        expect(file_read(RW_FILE, len(buf), R_FUA + 7) == buf,
               "FUA write: the file does not hold the data")
        h.flush()
    finally:
        close(h)


@check
def block_status_req_one():
    h = connect(RO)
    try:
        cases = [("hole at 0", 0, 3), ("data at 1 MiB", 1 * MiB, 0),
                 ("hole at 2 MiB", 2 * MiB, 3), ("data at 4 MiB + 4 KiB", 4 * MiB + 4096, 0)]
        for what, off, flags in cases:
            n = 6 * MiB
            ext = block_status(h, n, off, nbd.CMD_FLAG_REQ_ONE)
            expect(len(ext) == 1, f"REQ_ONE {what}: {len(ext)} extents {ext}, expected 1")
            length, f = ext[0]
            expect(f == flags, f"REQ_ONE {what}: flags {f}, expected {flags}")
            truth = file_map(RO_FILE, off, n)[0][0]
            expect(0 < length <= truth, f"REQ_ONE {what}: length {length}, the file's "
                   f"{'hole' if flags else 'data'} there is {truth} long")
    finally:
        close(h)


@check
def block_status_mixed():
    h = connect(RO)
    try:
        for off, n in ((0, 6 * MiB), (MiB - 4096, 3 * MiB + 8192), (0, SIZE)):
            got, pos = [], off
            while pos < off + n:         # the server may answer for less than asked
                ext = block_status(h, off + n - pos, pos)
                expect(ext and all(e[0] > 0 for e in ext), f"BLOCK_STATUS at {pos}: {ext}")
                got += ext
                pos += sum(e[0] for e in ext)
            expect(pos == off + n, f"BLOCK_STATUS [{off}, +{n}): extents run past the end")
            want = file_map(RO_FILE, off, n)
            expect(merge(got) == want, f"BLOCK_STATUS [{off}, +{n}): {merge(got)}, "
                   f"file has {want}")
        expect(len(file_map(RO_FILE, 0, 6 * MiB)) == 5, "test image is not sparse here?")
    finally:
        close(h)


@check
def list_exports():
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri(RW)
    try:
        names = []
        h.opt_list(lambda name, desc: names.append(name) or 0)
        expect(sorted(names) == sorted(EXPORTS), f"NBD_OPT_LIST gave {names}, "
               f"expected {EXPORTS}")
    finally:
        h.opt_abort()


@check
def info_unknown_and_known_export():
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri(RW)
    try:
        h.set_export_name("no-such-export")
        try:
            h.opt_info()
        except nbd.Error:
            pass
        else:
            raise AssertionError("NBD_OPT_INFO for an unknown export succeeded")
        h.set_export_name("second")
        h.opt_info()
        expect(h.get_size() == SECOND_SIZE, f"INFO second: size {h.get_size()}")
        h.set_export_name("")
        h.opt_info()
        expect(h.get_size() == SIZE, f"INFO '': size {h.get_size()}")
    finally:
        h.opt_abort()
    # GO on a named export reaches its own file.
    h = connect(RW, name="second")
    try:
        expect(h.get_size() == SECOND_SIZE, "export 'second': wrong size")
        expect(bytes(h.pread(4096, 4096)) == file_read(SECOND_FILE, 4096, 4096),
               "export 'second': wrong data")
    finally:
        close(h)
    # The default name reaches the only export of a one-export server.
    h = connect(SINGLE, name="")
    try:
        expect(h.get_size() == SECOND_SIZE, "'' on a one-export server: wrong size")
        expect(bytes(h.pread(512, 256)) == file_read(SECOND_FILE, 512, 256),
               "'' on a one-export server: wrong data")
    finally:
        close(h)


@check
def structured_sparse_read():
    h = connect(RO)
    try:
        for off, n in ((0, 6 * MiB), (MiB - 1000, 300000), (4 * MiB - 65536, 512 * 1024),
                       (2 * MiB, 2 * MiB), (7, 131072 + 5)):
            got = bytes(h.pread(n, off))
            expect(got == file_read(RO_FILE, n, off), f"READ [{off}, +{n}) wrong data")
            got = bytes(h.pread(n, off, nbd.CMD_FLAG_DF))
            expect(got == file_read(RO_FILE, n, off), f"READ DF [{off}, +{n}) wrong data")
        # The chunks themselves: holes may come as OFFSET_HOLE, everything covered once.
        seen = []

        def chunk(buf, off, status, err):
            seen.append((off, len(buf), status))
            return 0

        n = 6 * MiB
        buf = bytes(h.pread_structured(n, 0, chunk))
        expect(buf == file_read(RO_FILE, n, 0), "pread_structured: wrong data")
        seen.sort()
        pos = 0
        for off, ln, st in seen:
            expect(off == pos, f"chunks {seen}: gap or overlap at {pos}")
            pos += ln
        expect(pos == n, f"chunks cover {pos} of {n} bytes")
    finally:
        close(h)


@check
def simple_replies():
    h = connect(RW, structured=False)
    try:
        expect(not h.get_structured_replies_negotiated(), "structured replies negotiated")
        for off, n in ((0, 6 * MiB), (MiB - 1000, 300000)):
            expect(bytes(h.pread(n, off)) == file_read(RW_FILE, n, off),
                   f"simple READ [{off}, +{n}) wrong data")
        expect_errno(EINVAL, "simple READ out of range", h.pread, 4096, SIZE)
        expect_errno(EINVAL, "simple READ of 32 MiB + 1", h.pread, MAX_PAYLOAD + 1, 0)
        still_works(h, RW_FILE, "simple error replies (no payload after an error)")
        buf = random.Random(3).randbytes(8192)
        h.pwrite(buf, R_SIMPLE)
        expect(bytes(h.pread(8192, R_SIMPLE)) == buf, "simple replies: write/read back")
        expect_errno(EINVAL, "READ with DF without structured replies", h.pread, 512, 0,
                     nbd.CMD_FLAG_DF)
        h.zero(4096, R_SIMPLE)
        expect(bytes(h.pread(4096, R_SIMPLE)) == b"\0" * 4096, "simple replies: zero")
        h.flush()
    finally:
        close(h)


@check
def cache():
    h = connect(RW)
    try:
        expect(h.can_cache(), "CACHE not advertised")
        h.cache(MiB, MiB)
        h.cache(1, SIZE - 1)
        h.cache(MAX_PAYLOAD, 0)
        still_works(h, RW_FILE, "CACHE")
    finally:
        close(h)


@check
def write_zeroes_fast_zero():
    h = connect(RW)
    try:
        buf = random.Random(4).randbytes(MiB)
        h.pwrite(buf, R_FAST)
        try:
            h.zero(MiB, R_FAST, nbd.CMD_FLAG_FAST_ZERO)
        except nbd.Error as e:
            expect(e.errnum == errno.ENOTSUP, f"FAST_ZERO failed with errno {e.errnum} "
                   f"({e.string}), expected success or ENOTSUP")
            print("#   FAST_ZERO: ENOTSUP (allowed)")
        else:
            expect(bytes(h.pread(MiB, R_FAST)) == b"\0" * MiB,
                   "FAST_ZERO succeeded but the range does not read as zero")
        h.pwrite(buf[:65536], R_ZERO)
        h.zero(65536, R_ZERO, nbd.CMD_FLAG_FUA)
        expect(bytes(h.pread(65536, R_ZERO)) == b"\0" * 65536, "WRITE_ZEROES+FUA: not zero")
        expect(file_read(RW_FILE, 65536, R_ZERO) == b"\0" * 65536, "WRITE_ZEROES: file not zero")
    finally:
        close(h)


@check
def write_zeroes_no_hole():
    off, n = R_NOHOLE, MiB
    ok, how = allocated(RW_FILE, off, n)
    expect(not ok, f"control: the untouched region already counts as allocated ({how})")
    h = connect(RW)
    try:
        h.zero(n, off, nbd.CMD_FLAG_NO_HOLE)
        expect(bytes(h.pread(n, off)) == b"\0" * n, "NO_HOLE zero: not zero")
        h.flush()
    finally:
        close(h)
    ok, how = allocated(RW_FILE, off, n)
    expect(ok, f"WRITE_ZEROES with NO_HOLE left [{off}, +{n}) unallocated ({how})")
    print(f"#   NO_HOLE range allocated ({how})")
    expect(file_read(RW_FILE, n, off) == b"\0" * n, "NO_HOLE: file not zero")


@check
def trim():
    h = connect(RW)
    try:
        h.pwrite(b"\x77" * MiB, R_TRIM)
        h.trim(MiB, R_TRIM, nbd.CMD_FLAG_FUA)
        h.trim(4096, R_TRIM + 100)
        buf = random.Random(5).randbytes(4096)
        h.pwrite(buf, R_TRIM)
        expect(bytes(h.pread(4096, R_TRIM)) == buf, "write after TRIM: read back differs")
    finally:
        close(h)


@check
def multi_conn():
    hs = [connect(RW) for _ in range(3)]
    try:
        expect(all(h.can_multi_conn() for h in hs), "multi-conn not advertised")
        for i in range(3):
            buf = random.Random(10 + i).randbytes(65536)
            off = R_MULTI + i * 65536 + 512
            hs[i % 3].pwrite(buf, off)
            hs[(i + 1) % 3].flush()
            expect(bytes(hs[(i + 2) % 3].pread(65536, off)) == buf,
                   f"round {i}: write on one connection, flush on another, read on a third: "
                   "old data")
            expect(file_read(RW_FILE, 65536, off) == buf, f"round {i}: file lacks the data")
    finally:
        for h in hs:
            close(h)


# -- raw-socket handshake probes (things libnbd will not send) --

IHAVEOPT = 0x49484156454F5054
REP_MAGIC = 0x3E889045565A9


def raw_connect():
    host, port = RW.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    greet = recv_exact(s, 18)
    magic, opt, flags = struct.unpack(">QQH", greet)
    expect(magic == 0x4E42444D41474943 and opt == IHAVEOPT, f"bad greeting {greet!r}")
    expect(flags & 1, "server does not offer fixed newstyle")
    return s, flags


def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError(f"EOF after {len(b)} of {n} bytes")
        b += c
    return b


def closed_by_server(s):
    s.settimeout(5)
    try:
        while True:
            if not s.recv(4096):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def send_opt(s, opt, data=b""):
    s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)


def recv_rep(s):
    magic, opt, typ, ln = struct.unpack(">QIII", recv_exact(s, 20))
    expect(magic == REP_MAGIC, f"bad option reply magic {magic:#x}")
    return opt, typ, recv_exact(s, ln)


@check
def raw_handshake_corners():
    # Unadvertised client flags: the server hangs up.
    s, _ = raw_connect()
    s.sendall(struct.pack(">I", 1 | 2 | 0x80))
    expect(closed_by_server(s), "unknown client flag 0x80: connection not closed")
    s.close()
    # Bad option magic: the server hangs up.
    s, _ = raw_connect()
    s.sendall(struct.pack(">I", 3))
    s.sendall(struct.pack(">QII", 0x1122334455667788, 1, 0))
    expect(closed_by_server(s), "bad option magic: connection not closed")
    s.close()
    s, _ = raw_connect()
    s.sendall(struct.pack(">I", 3))
    # An unsupported option (STARTTLS) with data: ERR_UNSUP, data consumed, still talking.
    send_opt(s, 5, b"junk" * 10)
    opt, typ, _ = recv_rep(s)
    expect((opt, typ) == (5, 0x80000001), f"STARTTLS: reply {opt}/{typ:#x}, "
           "expected 5/NBD_REP_ERR_UNSUP")
    send_opt(s, 99, b"x" * 100)
    opt, typ, _ = recv_rep(s)
    expect((opt, typ) == (99, 0x80000001), f"option 99: reply {opt}/{typ:#x}, "
           "expected NBD_REP_ERR_UNSUP")
    # A name over 4096 bytes in INFO: an error reply, not a crash or hang.
    name = b"n" * 5000
    send_opt(s, 6, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
    opt, typ, _ = recv_rep(s)
    expect(opt == 6 and typ & 0x80000000, f"INFO with a 5000-byte name: reply {typ:#x}, "
           "expected an error")
    # LIST still works on the same connection.
    send_opt(s, 3)
    names = []
    while True:
        opt, typ, data = recv_rep(s)
        if typ == 1:
            break
        expect(typ == 2, f"LIST: reply type {typ:#x}")
        ln = struct.unpack(">I", data[:4])[0]
        names.append(data[4:4 + ln].decode())
    expect(sorted(names) == sorted(EXPORTS), f"raw LIST gave {names}")
    # GO on "", then a request with bad magic: the server hangs up.
    send_opt(s, 7, struct.pack(">IH", 0, 0))
    while True:
        opt, typ, data = recv_rep(s)
        expect(not typ & 0x80000000, f"GO: error reply {typ:#x}")
        if typ == 1:
            break
    # One good request first (simple reply, no structured negotiated).
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 42, MiB, 16))
    magic, err, cookie = struct.unpack(">IIQ", recv_exact(s, 16))
    expect((magic, err, cookie) == (0x67446698, 0, 42), f"simple reply {magic:#x} {err} {cookie}")
    expect(recv_exact(s, 16) == file_read(RW_FILE, 16, MiB), "raw READ: wrong data")
    s.sendall(struct.pack(">IHHQQI", 0xDEADBEEF, 0, 0, 43, 0, 512))
    expect(closed_by_server(s), "request with bad magic: connection not closed")
    s.close()


def main():
    global RW, RO, SINGLE, RW_FILE, RO_FILE, SECOND_FILE, EXPORTS
    if len(sys.argv) == 3 and sys.argv[1] == "setup":
        setup(sys.argv[2])
        return 0
    if len(sys.argv) != 2 or sys.argv[1] != "run":
        sys.exit("usage: nbdsh-corner.py setup DIR | run")
    RW, RO, SINGLE = env("NBD_RW_URI"), env("NBD_RO_URI"), env("NBD_SINGLE_URI")
    RW_FILE, RO_FILE, SECOND_FILE = env("NBD_RW_FILE"), env("NBD_RO_FILE"), env("NBD_SECOND_FILE")
    EXPORTS = json.loads(env("NBD_EXPORTS"))
    only = os.environ.get("NBD_ONLY")          # run a subset: comma-separated check names
    failed = []
    for fn in CHECKS:
        if only and fn.__name__ not in only.split(","):
            continue
        try:
            fn()
        except Exception as e:              # AssertionError, nbd.Error, OSError...
            failed.append(fn.__name__)
            print(f"# {fn.__name__}: FAIL: {type(e).__name__}: {e}")
            traceback.print_exc(limit=3, file=sys.stdout)
        else:
            print(f"# {fn.__name__}: ok")
        sys.stdout.flush()
    if failed:
        print(f"# {len(failed)} check(s) failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
