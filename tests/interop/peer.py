#!/usr/bin/env python3
"""A real libchirp 1.2.1 peer (C core, Python bindings) for the Rust conformance suite.

Usage: peer.py ROLE [options]. Events go to stdout as lines, commands come from stdin as
lines; closing stdin stops the peer. Roles:

  echo      pool node sending every message back (after which it is auto-released)
  sink      queue node checking COUNT pattern messages (headers, data, order), then
            printing "checked N" or "bad ..."
  send      pool node sending COUNT pattern messages to --to; prints "sent N"
  request   sends one request to --to and prints "answer DATA"
  hold      pool node that holds each message until the command "release" arrives;
            prints "holding" when it got one and "released" after releasing
  sendone   sends one message to --to and prints "done ELAPSED" when the send completed
  info      queue node printing "msg REMOTE_IDENTITY_HEX DATA" per message (released)
  sendrecv  queue node doing COUNT rounds of: send to --to, wait for the send to complete,
            then take the answer from the queue; prints "rounds N" (or "error ...")
  pipeline  queue node keeping 16 messages outstanding to an echo at --to until COUNT came
            back; prints "echoed N" (or "error ...")

Message i of the pattern: header b"h<i>", data PATTERN[i % 256 : i % 256 + size(i)].
"""

import argparse
import ctypes
import sys
import threading
import time

import libchirp
import libchirp.pool
import libchirp.queue

BASE = bytes(range(256)) * 4200  # 1 MiB + 256 bytes
SIZES = [0, 1, 16, 27, 100, 1024, 4000, 65535, 70000, 300]


def size_of(i):
    return 1 << 20 if i % 100 == 99 else SIZES[i % len(SIZES)]


def pattern(i):
    return b"h%d" % i, BASE[i % 256:i % 256 + size_of(i)]


def out(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def make_config(args):
    c = libchirp.Config()
    c.PORT = args.port
    c.SYNCHRONOUS = not args.asynchronous
    c.TIMEOUT = args.timeout
    c.DISABLE_SIGNALS = True
    if args.max_slots:
        c.MAX_SLOTS = args.max_slots
    if args.cert_chain:
        c.CERT_CHAIN_PEM = args.cert_chain
        c.DH_PARAMS_PEM = args.dh_params
        if args.always_encrypt:
            import _libchirp_cffi
            ctypes.CDLL(_libchirp_cffi.__file__).ch_chirp_set_always_encrypt()
    else:
        c.DISABLE_ENCRYPTION = True
    return c


def to_addr(args, msg):
    host, port = args.to.rsplit(":", 1)
    msg.address = host.strip("[]")
    msg.port = int(port)


def wait_stdin():
    for _ in sys.stdin:
        pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("role")
    p.add_argument("--port", type=int, default=2998)
    p.add_argument("--to")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--data", default="hello")
    p.add_argument("--async", dest="asynchronous", action="store_true")
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--max-slots", type=int, default=0)
    p.add_argument("--cert-chain")
    p.add_argument("--dh-params")
    p.add_argument("--always-encrypt", action="store_true")
    args = p.parse_args()
    loop = libchirp.Loop()
    config = make_config(args)
    role = args.role
    try:
        if role == "echo":
            class Echo(libchirp.pool.Chirp):
                def handler(self, msg):
                    self.send(msg).result()
            chirp = Echo(loop, config, max_workers=4)
            out("listening on %d" % args.port)
            wait_stdin()
        elif role == "sink":
            chirp = libchirp.queue.Chirp(loop, config)
            out("listening on %d" % args.port)
            bad = None
            for i in range(args.count):
                msg = chirp.get(timeout=60)
                header, data = pattern(i)
                if bytes(msg.header) != header or bytes(msg.data) != data:
                    bad = "bad message %d: header %r, %d data bytes (expected %r, %d)" % (
                        i, bytes(msg.header)[:20], len(msg.data), header, len(data))
                    break
            out(bad or "checked %d" % args.count)
            wait_stdin()
        elif role == "info":
            chirp = libchirp.queue.Chirp(loop, config)
            out("listening on %d" % args.port)

            def reader():
                while True:
                    msg = chirp.get()
                    out("msg %s %s" % (bytes(msg.remote_identity).hex(), bytes(msg.data).decode("utf-8", "replace")))
            threading.Thread(target=reader, daemon=True).start()
            for line in sys.stdin:
                if line.startswith("send "):
                    m = libchirp.queue.Message()
                    to_addr(args, m)
                    m.data = line[5:].strip().encode()
                    try:
                        chirp.send(m).result(timeout=30)
                        out("sent")
                    except Exception as e:  # noqa
                        out("send failed %r" % e)
        elif role == "send":
            chirp = libchirp.pool.Chirp(loop, config, max_workers=2)
            start = time.time()
            futures = []
            for i in range(args.count):
                m = libchirp.pool.Message()
                to_addr(args, m)
                m.header, m.data = pattern(i)
                f = chirp.send(m)
                if args.asynchronous:
                    futures.append(f)
                    if len(futures) >= 64:
                        futures.pop(0).result(timeout=60)
                else:
                    f.result(timeout=60)
            for f in futures:
                f.result(timeout=60)
            out("sent %d in %.3f" % (args.count, time.time() - start))
            wait_stdin()
        elif role == "request":
            chirp = libchirp.pool.Chirp(loop, config, max_workers=2)
            m = libchirp.pool.Message()
            to_addr(args, m)
            m.data = args.data.encode()
            answer = chirp.request(m).result(timeout=30)
            out("answer %s" % bytes(answer.data).decode())
        elif role == "hold":
            held = []
            ready = threading.Event()

            class Hold(libchirp.pool.Chirp):
                def handler(self, msg):
                    held.append(msg)
                    out("holding")
                    ready.set()
            config.AUTO_RELEASE = False
            chirp = Hold(loop, config, max_workers=2)
            out("listening on %d" % args.port)
            for line in sys.stdin:
                if line.strip() == "release":
                    ready.wait(30)
                    held.pop(0).release().result(timeout=30)
                    out("released")
        elif role == "sendrecv":
            chirp = libchirp.queue.Chirp(loop, config)
            for i in range(args.count):
                m = libchirp.queue.Message()
                to_addr(args, m)
                m.data = b"round %d" % i
                chirp.send(m).result(timeout=30)
                answer = chirp.get(timeout=30)
                if bytes(answer.data) != b"round %d" % i:
                    raise RuntimeError("round %d: got %r" % (i, bytes(answer.data)))
            out("rounds %d" % args.count)
            wait_stdin()
        elif role == "pipeline":
            chirp = libchirp.queue.Chirp(loop, config)
            sent = back = 0
            futures = []
            while back < args.count:
                while sent < args.count and sent - back < 16:
                    m = libchirp.queue.Message()
                    to_addr(args, m)
                    m.data = b"p%d" % sent
                    futures.append(chirp.send(m))
                    sent += 1
                chirp.get(timeout=30)
                back += 1
            for f in futures:
                f.result(timeout=30)
            out("echoed %d" % back)
            wait_stdin()
        elif role == "sendone":
            chirp = libchirp.pool.Chirp(loop, config, max_workers=2)
            m = libchirp.pool.Message()
            to_addr(args, m)
            m.data = args.data.encode()
            start = time.time()
            chirp.send(m).result(timeout=60)
            out("done %.3f" % (time.time() - start))
            wait_stdin()
        else:
            out("unknown role %s" % role)
            return 2
    except Exception as e:  # noqa
        out("error %r" % e)
        return 1
    finally:
        try:
            chirp.stop()
        except Exception:  # noqa
            pass
        loop.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
