"""Shared by the differential programs: runs unchanged on python-chirp and on ours.

Each program prints what a user would see (outcomes, exception classes, ``ecode``s);
the test masks what differs by nature (identities, ports) and compares the two outputs.
"""

import socket

from libchirp.pool import Chirp, Config, Loop, Message  # noqa: F401


def free_port():
    # python-chirp refuses PORT 0, so take one the system says is free now.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(**kw):
    c = Config()
    c.PORT = free_port()
    c.DISABLE_ENCRYPTION = True
    c.DISABLE_SIGNALS = True
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def to(msg, port):
    msg.address = "127.0.0.1"
    msg.port = port
    return msg


def outcome(fut, timeout=60):
    """What a future ended with, as a line: the exception's class and ecode, or ok."""
    try:
        fut.result(timeout=timeout)
        return "ok"
    except Exception as e:  # the class and the code are what programs test
        return "%s ecode=%s" % (classify(e), getattr(e, "ecode", None))


def classify(e):
    # The builtin classes a program's except clauses name, in python-chirp's order.
    for cls in (TimeoutError, ConnectionError, MemoryError, ValueError, RuntimeError, OSError):
        if isinstance(e, cls):
            return cls.__name__
    return type(e).__name__


def starts(loop, cases):
    """For each (name, Config settings): start a chirp and stop it; print "started", or
    the exception's class and ecode."""
    for name, kw in cases:
        try:
            c = Chirp(loop, config(**kw))
            c.stop()
            print(name + ": started")
        except Exception as e:
            print("%s: %s ecode=%s" % (name, type(e).__name__, getattr(e, "ecode", None)))


def stop(chirp, name):
    """Stop a chirp and say how that went (python-chirp raises RuntimeError when a
    received message was never released)."""
    try:
        chirp.stop()
        print("stop %s: ok" % name)
    except Exception as e:
        print("stop %s: %s" % (name, type(e).__name__))
