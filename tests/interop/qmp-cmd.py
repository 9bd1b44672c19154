#!/usr/bin/python3
"""qmp-cmd.py SOCKET COMMAND [ARGUMENTS-JSON]: run one QMP command on QEMU's QMP socket and
print its return value as JSON (exit 1 with QEMU's error on stderr). For tests that talk to a
QEMU through a monitor of their own, beside blkmig's."""
import json
import socket
import sys


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(sys.argv[1])
    f = s.makefile("rw")
    f.readline()  # the greeting

    def run(cmd, args=None):
        msg = {"execute": cmd}
        if args:
            msg["arguments"] = args
        f.write(json.dumps(msg) + "\n")
        f.flush()
        while True:
            line = json.loads(f.readline())
            if "event" not in line:
                return line

    run("qmp_capabilities")
    r = run(sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) == 4 else None)
    if "error" in r:
        sys.exit("QMP %s: %s" % (sys.argv[2], r["error"].get("desc")))
    print(json.dumps(r["return"]))


main()
