#!/usr/bin/env python3
"""Round trips from Python: this repository's Python package against python-chirp 1.2.1.

The same program, written against python-chirp's API, runs on both: an echo node (a pool
chirp whose handler sends each message back and waits for that send) and a sender (a queue
chirp keeping WINDOW messages outstanding, taking each answer from its queue). Each
implementation talks to itself, in two processes on loopback; runs alternate between the two
implementations and medians are printed, with the CPU time (user + system, both processes)
per round trip.

    scripts/bench_python.py --ours PYTHON --theirs PYTHON [--count N] [--runs R]

PYTHON: an interpreter with the package installed (ours: scripts/python-tests.sh makes
target/py-test; theirs: scripts/install-peer.sh makes target/chirp-peer). Prints figures;
never fails for speed.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def config(port, synchronous):
    import libchirp

    c = libchirp.Config()
    c.PORT = port
    c.DISABLE_ENCRYPTION = True
    c.DISABLE_SIGNALS = True
    c.SYNCHRONOUS = synchronous
    c.TIMEOUT = 30
    c.REUSE_TIME = 120
    if not synchronous:
        c.MAX_SLOTS = 16
    return c


def role_echo(port, synchronous):
    import libchirp
    import libchirp.pool

    class Echo(libchirp.pool.Chirp):
        def handler(self, msg):
            self.send(msg).result()

    loop = libchirp.Loop()
    chirp = Echo(loop, config(port, synchronous), max_workers=4)
    print("listening", flush=True)
    try:
        sys.stdin.read()
    finally:
        chirp.stop()
        loop.stop()


def role_send(port, to, synchronous, window, count):
    import libchirp
    import libchirp.queue

    loop = libchirp.Loop()
    chirp = libchirp.queue.Chirp(loop, config(port, synchronous))
    try:
        def one():
            m = libchirp.queue.Message()
            m.address, m.port, m.data = "127.0.0.1", to, b"0123456789abcdef"
            return chirp.send(m)

        # Warm up: the connection is set up outside the measurement.
        one()
        chirp.get(timeout=30)
        pending = []
        start = time.perf_counter()
        sent = back = 0
        while back < count:
            while sent < count and sent - back < window:
                pending.append(one())
                sent += 1
            chirp.get(timeout=30)
            back += 1
            # Collect finished sends so no message object is sent twice.
            while pending and pending[0].done():
                pending.pop(0).result()
        elapsed = time.perf_counter() - start
        for f in pending:
            f.result(timeout=30)
        print("done %.6f" % elapsed, flush=True)
    finally:
        chirp.stop()
        loop.stop()


def role_request(port, to, synchronous, window, count):
    """The job-queue client: a pool chirp keeping WINDOW request()s outstanding, each
    answered by the echo (the worker)."""
    import libchirp
    import libchirp.pool

    loop = libchirp.Loop()
    chirp = libchirp.pool.Chirp(loop, config(port, synchronous))
    try:
        def one():
            m = libchirp.pool.Message()
            m.address, m.port, m.data = "127.0.0.1", to, b"0123456789abcdef"
            return chirp.request(m)

        one().result(timeout=30)  # warm up: the connection is set up outside
        pending = []
        start = time.perf_counter()
        sent = back = 0
        while back < count:
            while sent < count and sent - back < window:
                pending.append(one())
                sent += 1
            pending.pop(0).result(timeout=30)
            back += 1
        elapsed = time.perf_counter() - start
        print("done %.6f" % elapsed, flush=True)
    finally:
        chirp.stop()
        loop.stop()


def cpu_of(pid_status):
    _, _, ru = pid_status
    return ru.ru_utime + ru.ru_stime


def run_once(python, synchronous, window, count, role="send"):
    """One measured run: echo and sender processes of one implementation; returns
    (round trips per second, CPU seconds per round trip). ``role``: ``send`` (a queue
    chirp's sends, answers from its queue) or ``request`` (a pool chirp's requests)."""
    me = os.path.abspath(__file__)
    mode = "sync" if synchronous else "async"
    eport, sport = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUST_LOG")}
    echo = subprocess.Popen([python, me, "echo", str(eport), mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = echo.stdout.readline()
        if line.strip() != "listening":
            raise RuntimeError("echo printed %r" % line)
        send = subprocess.Popen([python, me, role, str(sport), str(eport), mode, str(window), str(count)],
                                stdout=subprocess.PIPE, text=True, env=env)
        out = send.stdout.read()
        s_status = os.wait4(send.pid, 0)
        send.returncode = os.waitstatus_to_exitcode(s_status[1])
        echo.stdin.close()
        e_status = os.wait4(echo.pid, 0)
        echo.returncode = os.waitstatus_to_exitcode(e_status[1])
    finally:
        if echo.returncode is None:
            echo.kill()
            echo.wait()
    if not out.startswith("done "):
        raise RuntimeError("sender printed %r (exit %s)" % (out, send.returncode))
    elapsed = float(out.split()[1])
    cpu = cpu_of(s_status) + cpu_of(e_status)
    return count / elapsed, cpu / (count + 1)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "echo":
        return role_echo(int(sys.argv[2]), sys.argv[3] == "sync")
    if len(sys.argv) > 1 and sys.argv[1] in ("send", "request"):
        role = role_send if sys.argv[1] == "send" else role_request
        return role(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "sync",
                    int(sys.argv[5]), int(sys.argv[6]))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ours", required=True)
    p.add_argument("--theirs", required=True)
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    print("Python round trips, 16-byte messages, %d per run, medians of %d alternating runs" % (args.count, args.runs))
    print("%-6s %6s %16s %16s %8s %18s %18s" % ("mode", "window", "ours rt/s", "python-chirp", "ratio",
                                                "ours CPU us/rt", "theirs CPU us/rt"))
    # The job queue: a pool worker in synchronous mode answering request()s, 50 outstanding.
    points = [(True, 1, "send"), (True, 16, "send"), (False, 1, "send"), (False, 16, "send"),
              (True, 50, "request")]
    for synchronous, window, role in points:
        if role == "request":
            print("job queue: a synchronous pool worker, a client with %d outstanding request()s"
                  % window)
        res = {"ours": [], "theirs": []}
        for _ in range(args.runs):
            for who in ("ours", "theirs"):
                try:
                    res[who].append(run_once(getattr(args, who), synchronous, window, args.count, role))
                except Exception as e:  # a figure missing is reported, not fatal
                    print("  %s %s window %d %s: run failed: %s" % (
                        who, "sync" if synchronous else "async", window, role, e))
        if not res["ours"] or not res["theirs"]:
            continue
        o = statistics.median(r for r, _ in res["ours"])
        t = statistics.median(r for r, _ in res["theirs"])
        oc = statistics.median(c for _, c in res["ours"]) * 1e6
        tc = statistics.median(c for _, c in res["theirs"]) * 1e6
        print("%-6s %6d %16.0f %16.0f %7.2fx %18.1f %18.1f" % (
            "sync" if synchronous else "async", window, o, t, o / t, oc, tc))
        print("%-6s %6s %16s %16s   (range of the runs)" % (
            "", "", "%.0f-%.0f" % (min(r for r, _ in res["ours"]), max(r for r, _ in res["ours"])),
            "%.0f-%.0f" % (min(r for r, _ in res["theirs"]), max(r for r, _ in res["theirs"]))))


if __name__ == "__main__":
    sys.exit(main())
