#!/usr/bin/env bash
# nbd-memory.sh: clients that pipeline large READs and leave the replies unread must not grow
# `blkmig nbd-serve` beyond its in-flight bound; once they read, every reply is right.
. "$(dirname "$0")/../lib.sh"

need_cmd python3
CONNS=${CONNS:-6}
READS=${READS:-40}
# The server holds at most 64 MiB of payload per connection and 256 MiB in all (man page,
# Limits), plus 64 MiB for everything else; without a bound each connection grows by 16 threads
# x 32 MiB = 512 MiB.
LIMIT_KB=$(((256 + 64) * 1024))

img=$TMP/disk.img
dd if=/dev/urandom of="$img" bs=1M count=96 status=none
# ASan keeps freed memory in a 256 MiB quarantine; cap it so that RSS measures the server.
ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=16" start_server "$img"

rc=0
python3 - "$PORT" "$SERVER_PID" "$img" "$CONNS" "$READS" "$LIMIT_KB" <<'PY' || rc=$?
import socket, struct, sys, threading, time

port, pid, img, nconns, nreads, limit_kb = (sys.argv[1], int(sys.argv[2]), sys.argv[3],
                                            int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
LEN = 32 << 20
data = open(img, "rb").read()
MiB = 1 << 20

def say(msg):
    print("# nbd-memory: " + msg, file=sys.stderr, flush=True)

def rss_kb():
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("FAIL: server gone")

def recv_exact(s, n, buf=None):
    buf = buf if buf is not None else bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        r = s.recv_into(view[got:n])
        if r == 0:
            raise EOFError("connection closed after %d of %d bytes" % (got, n))
        got += r
    return buf

def connect():
    s = socket.create_connection(("127.0.0.1", int(port)))
    magic, opt, flags = struct.unpack(">QQH", recv_exact(s, 18))
    assert magic == 0x4e42444d41474943 and opt == 0x49484156454f5054 and flags & 3 == 3
    # FIXED_NEWSTYLE | NO_ZEROES, then NBD_OPT_EXPORT_NAME "" (no structured replies: every
    # READ comes back whole, its buffer filled).
    s.sendall(struct.pack(">IQII", 3, 0x49484156454f5054, 1, 0))
    size, _ = struct.unpack(">QH", recv_exact(s, 10))
    assert size == len(data), size
    return s

def offset(c, i):
    return ((c * nreads + i) * 7 * MiB) % (len(data) - LEN + 1)

conns = [connect() for _ in range(nconns)]
time.sleep(0.5)
base = rss_kb()
for c, s in enumerate(conns):
    s.sendall(b"".join(struct.pack(">IHHQQI", 0x25609513, 0, 0, c * nreads + i, offset(c, i), LEN)
                       for i in range(nreads)))

# The server reads what its bound lets it and then waits for us: sample its RSS until it has
# settled (no change for 2 s) or for 20 s, whichever comes first.
peak, last, still, t0 = base, base, time.time(), time.time()
while time.time() - t0 < 20 and time.time() - still < 2:
    time.sleep(0.1)
    now = rss_kb()
    peak = max(peak, now)
    if abs(now - last) > 1024:
        last, still = now, time.time()
say("%d connections x %d READs of 32 MiB unread: VmRSS %d kB before, peak %d kB (+%d MiB)"
    % (nconns, nreads, base, peak, (peak - base) // 1024))
bad = peak - base > limit_kb

# Now read every reply, all connections at once, and check each by content.
errors = []
def drain(c, s):
    buf = bytearray(LEN)
    seen = set()
    try:
        for _ in range(nreads):
            magic, err, cookie = struct.unpack(">IIQ", recv_exact(s, 16))
            if magic != 0x67446698 or err != 0:
                raise ValueError("reply magic 0x%x error %d" % (magic, err))
            i = cookie - c * nreads
            if not 0 <= i < nreads or i in seen:
                raise ValueError("unexpected cookie %d" % cookie)
            seen.add(i)
            recv_exact(s, LEN, buf)
            off = offset(c, i)
            if memoryview(buf) != memoryview(data)[off:off + LEN]:
                raise ValueError("READ at 0x%x: wrong data" % off)
    except Exception as e:
        errors.append("connection %d: %s" % (c, e))

threads = [threading.Thread(target=drain, args=(c, s)) for c, s in enumerate(conns)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors:
    raise SystemExit("FAIL: " + "; ".join(errors))
say("all %d replies read back and correct" % (nconns * nreads))
if bad:
    raise SystemExit("FAIL: VmRSS grew by %d kB (bound %d kB)" % (peak - base, limit_kb))
PY
[ $rc -eq 0 ] || fail "python client exited $rc (log: $(tail -5 "$TMP/server.log"))"
kill -0 "$SERVER_PID" 2>/dev/null || fail "server died"
stop_server
check_server_log
log "ok"
