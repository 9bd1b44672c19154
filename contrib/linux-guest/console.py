#!/usr/bin/python3
"""console.py: the host's end of the Linux test guest's serial console (README.md beside this).

  console.py record SOCKET LOG [--ctl CTL] [--wait S]
      Connect to QEMU's serial chardev (-chardev socket,id=s0,path=SOCKET,server=on,wait=off
      -serial chardev:s0), waiting up to S seconds (default 10) for the socket to appear, and
      append every line the guest prints to LOG as "<host CLOCK_MONOTONIC in s> <line>". With
      --ctl, also listen on the unix socket CTL: each line a client writes there is sent to the
      guest (and logged as "<time> >>> <line>"). Ends when QEMU closes the console.
  console.py send CTL LINE [--log LOG --expect REGEX [--timeout S]]
      Send LINE to the guest through a recorder's CTL socket. With --expect, wait (default 30 s)
      for a line matching REGEX that LOG gains after the send, print it, and exit 1 on timeout.
  console.py gap LOG...
      Merge the logs (a migration's source and destination) by host time and print the largest
      gap between consecutive heartbeats: "GAP max-ms=M hbs=N after-seq=S guest-max-ms=G";
      exit 1 when there are fewer than two heartbeats.
"""
import argparse
import os
import re
import select
import socket
import sys
import time


# The terminal controls the firmware prints (clear screen, wrap off): no use in a log.
ESCAPES = re.compile(rb"\x1b(\[[0-9;?]*[A-Za-z]|[A-Za-z])")


def clean(line):
    return ESCAPES.sub(b"", line.rstrip(b"\r")).decode(errors="replace")


def stamp():
    return "%.6f" % (time.clock_gettime_ns(time.CLOCK_MONOTONIC) / 1e9)


def connect(path, wait):
    deadline = time.monotonic() + wait
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError as e:
            s.close()
            if time.monotonic() >= deadline:
                sys.exit("console: cannot connect to %s: %s" % (path, e))
            time.sleep(0.05)


def record(args):
    qemu = connect(args.socket, args.wait)
    log = open(args.log, "a", buffering=1)
    ctl = None
    if args.ctl:
        try:
            os.unlink(args.ctl)
        except FileNotFoundError:
            pass
        ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ctl.bind(args.ctl)
        ctl.listen(4)
    clients = {}  # socket -> bytes received not yet forming a line
    pending = b""
    try:
        while True:
            ready, _, _ = select.select([qemu] + ([ctl] if ctl else []) + list(clients), [], [])
            for s in ready:
                if s is qemu:
                    data = qemu.recv(65536)
                    if not data:
                        if pending:
                            log.write("%s %s\n" % (stamp(), clean(pending)))
                        return 0
                    now = stamp()
                    lines = (pending + data).split(b"\n")
                    pending = lines.pop()
                    for ln in lines:
                        log.write("%s %s\n" % (now, clean(ln)))
                elif s is ctl:
                    c, _ = ctl.accept()
                    clients[c] = b""
                else:
                    data = s.recv(4096)
                    lines = (clients[s] + data).split(b"\n")
                    clients[s] = lines.pop()
                    for ln in lines:
                        qemu.sendall(ln.rstrip(b"\r") + b"\n")
                        log.write("%s >>> %s\n" % (stamp(), ln.decode(errors="replace")))
                    if not data:
                        s.close()
                        del clients[s]
    finally:
        if ctl:
            ctl.close()
            try:
                os.unlink(args.ctl)
            except OSError:
                pass


def line_count(path):
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def send(args):
    if args.expect and not args.log:
        sys.exit("console: --expect needs --log")
    before = line_count(args.log) if args.log else 0
    s = connect(args.ctl, 5)
    s.sendall(args.line.encode() + b"\n")
    s.close()
    if not args.expect:
        return 0
    pat = re.compile(args.expect)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        with open(args.log, "rb") as f:
            lines = f.read().split(b"\n")
        # Only whole lines that came after the send (the last element is an unfinished line).
        for ln in lines[before:-1]:
            text = ln.decode(errors="replace").split(" ", 1)[-1]
            if pat.search(text):
                print(text)
                return 0
        time.sleep(0.1)
    print("console: no line matching %r in %s within %g s" % (args.expect, args.log,
                                                             args.timeout), file=sys.stderr)
    return 1


HB = re.compile(r"^(\d+\.\d+) HB (\d+) (\d+)$")


def gap(args):
    beats = []
    for path in args.logs:
        with open(path, errors="replace") as f:
            for ln in f:
                m = HB.match(ln.rstrip("\n"))
                if m:
                    beats.append((float(m.group(1)), int(m.group(2)), int(m.group(3))))
    beats.sort()
    if len(beats) < 2:
        print("GAP none hbs=%d" % len(beats))
        return 1
    worst, at, gworst = 0.0, beats[0][1], 0.0
    for (t0, s0, g0), (t1, _, g1) in zip(beats, beats[1:]):
        if t1 - t0 > worst:
            worst, at = t1 - t0, s0
        gworst = max(gworst, (g1 - g0) / 1000.0)
    print("GAP max-ms=%.1f hbs=%d after-seq=%d guest-max-ms=%.1f" % (worst * 1000, len(beats),
                                                                    at, gworst))
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("socket")
    r.add_argument("log")
    r.add_argument("--ctl")
    r.add_argument("--wait", type=float, default=10)
    s = sub.add_parser("send")
    s.add_argument("ctl")
    s.add_argument("line")
    s.add_argument("--log")
    s.add_argument("--expect")
    s.add_argument("--timeout", type=float, default=30)
    g = sub.add_parser("gap")
    g.add_argument("logs", nargs="+")
    args = p.parse_args()
    return {"record": record, "send": send, "gap": gap}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
