"""libchirp's own example programs, as published in its source package, run unchanged.

Each pairing runs in a network namespace of its own: the examples listen on 2992 and 2998 and
send to 127.0.0.1:2998, as published. "ours" is the package under test (this interpreter),
"python-chirp" is python-chirp 1.2.1 on C libchirp, "chirp" is this repository's tool.
"""

import os

import pytest

from conftest import PY

SENDERS = ["queue_send.py", "pool_send.py", "pool_request.py"]
# (sender implementation, echo implementation)
PAIRS = [
    ("ours", "ours"),
    ("ours", "python-chirp"),
    ("python-chirp", "ours"),
    ("ours", "chirp"),
]


def _python(impl, peer):
    return PY if impl == "ours" else peer


def _finish(p, what, timeout=30):
    try:
        out, err = p.communicate(timeout=timeout)
    except Exception:
        p.kill()
        out, err = p.communicate()
        raise AssertionError("%s did not finish in %d s; stdout %r, stderr %r" % (what, timeout, out, err))
    return out, err


@pytest.mark.parametrize("sender", SENDERS)
@pytest.mark.parametrize("impls", PAIRS, ids=lambda p: "%s-to-%s" % p)
def test_sender_example_against_an_echo(netns, examples, peer, chirp, sender, impls):
    send_impl, echo_impl = impls
    if echo_impl == "chirp":
        echo = netns.popen([chirp, "echo", "--port", "2998", "--async", "--no-encryption"])
    else:
        echo = netns.popen([_python(echo_impl, peer), os.path.join(examples, "queue_echo.py")])
    netns.wait_listening(2998)
    s = netns.popen([_python(send_impl, peer), os.path.join(examples, sender)])
    out, err = _finish(s, sender)
    assert s.returncode == 0, "%s (%s) exited %d: stdout %r stderr %r" % (
        sender, send_impl, s.returncode, out, err)
    assert out.strip() == "b'hello'", "%s (%s) printed %r (stderr %r)" % (sender, send_impl, out, err)
    if echo_impl == "chirp":
        echo.terminate()
        _finish(echo, "chirp echo")
    else:
        # queue_echo answers one message, prints it and exits.
        eout, eerr = _finish(echo, "queue_echo.py")
        assert echo.returncode == 0, "queue_echo.py (%s) exited %d: %r" % (echo_impl, echo.returncode, eerr)
        assert eout.strip() == "b'hello'", "queue_echo.py (%s) printed %r" % (echo_impl, eout)


@pytest.mark.parametrize("sender_impl", ["chirp", "python-chirp"])
@pytest.mark.parametrize("synchronous", [True, False], ids=["sync", "async"])
def test_pool_echo_example_takes_messages_until_stdin_closes(netns, examples, peer, chirp, sender_impl, synchronous):
    import subprocess

    node = netns.popen([PY, os.path.join(examples, "pool_echo.py")], stdin=subprocess.PIPE)
    netns.wait_listening(2998)
    if sender_impl == "chirp":
        args = [chirp, "send", "--count", "100", "--no-encryption", "--port", "0", "127.0.0.1:2998"]
        if not synchronous:
            args.insert(2, "--async")
    else:
        args = [peer, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "interop", "peer.py"),
                "send", "--count", "100", "--port", "2992", "--to", "127.0.0.1:2998"]
        if not synchronous:
            args.append("--async")
    s = netns.popen(args, stdin=subprocess.PIPE)
    out, err = _finish(s, "the sender", timeout=60) if sender_impl == "chirp" else _sent(s)
    assert s.returncode in (0, None), "sender exited %r: %r %r" % (s.returncode, out, err)
    # communicate() closes its stdin: pool_echo.py's sys.stdin.read() returns, it stops.
    nout, nerr = _finish(node, "pool_echo.py")
    assert node.returncode == 0, "pool_echo.py exited %d: %r" % (node.returncode, nerr)


def _sent(p):
    """peer.py send prints "sent N in T" and then waits for stdin to close."""
    line = p.stdout.readline()
    assert line.startswith("sent 100"), "peer.py send printed %r (stderr %r)" % (line, p.stderr.read() if p.poll() is not None else "")
    out, err = p.communicate(timeout=30)  # closes stdin: peer.py stops
    return line + out, err


ECHO_PAIRS = [("ours", "ours"), ("ours", "python-chirp"), ("python-chirp", "ours")]


@pytest.mark.parametrize("sender", SENDERS)
@pytest.mark.parametrize("impls", ECHO_PAIRS, ids=lambda p: "%s-to-%s" % p)
def test_async_echo_example_answers_a_sender_example(netns, examples, peer, sender, impls):
    """async_echo.py (libchirp.asyncio) echoes one message, then stops its event loop."""
    send_impl, echo_impl = impls
    echo = netns.popen([_python(echo_impl, peer), os.path.join(examples, "async_echo.py")])
    netns.wait_listening(2998)
    s = netns.popen([_python(send_impl, peer), os.path.join(examples, sender)])
    out, err = _finish(s, sender)
    assert s.returncode == 0 and out.strip() == "b'hello'", "%s (%s): %d %r %r" % (
        sender, send_impl, s.returncode, out, err)
    eout, eerr = _finish(echo, "async_echo.py")
    assert echo.returncode == 0 and eout.strip() == "b'hello'", "async_echo.py (%s): %d %r %r" % (
        echo_impl, echo.returncode, eout, eerr)


@pytest.mark.parametrize("impls", ECHO_PAIRS, ids=lambda p: "%s-to-%s" % p)
def test_async_send_example_completes_ten_thousand_synchronous_sends(netns, examples, peer, impls):
    """async_send.py sends 100 rounds of 100 messages and awaits each (released by
    pool_echo.py: synchronous mode), then exits 0."""
    import subprocess

    send_impl, echo_impl = impls
    echo = netns.popen([_python(echo_impl, peer), os.path.join(examples, "pool_echo.py")], stdin=subprocess.PIPE)
    netns.wait_listening(2998)
    s = netns.popen([_python(send_impl, peer), os.path.join(examples, "async_send.py")])
    out, err = _finish(s, "async_send.py", timeout=120)
    assert s.returncode == 0, "async_send.py (%s) exited %d: %r %r" % (send_impl, s.returncode, out, err)
    _, eerr = _finish(echo, "pool_echo.py")
    assert echo.returncode == 0, "pool_echo.py (%s) exited %d: %r" % (echo_impl, echo.returncode, eerr)


def test_sigterm_ends_an_example_through_its_finally(netns, examples):
    """DISABLE_SIGNALS is False in the examples: SIGTERM raises SystemExit in the main
    thread, so queue_echo.py's `finally: chirp.stop(); loop.stop()` runs and it exits."""
    import signal

    echo = netns.popen([PY, os.path.join(examples, "queue_echo.py")])
    netns.wait_listening(2998)
    # `ip netns exec` execs the program: its pid is the program's.
    os.kill(echo.pid, signal.SIGTERM)
    out, err = _finish(echo, "queue_echo.py after SIGTERM")
    assert echo.returncode == 128 + signal.SIGTERM, "exit %d, stderr %r" % (echo.returncode, err)
    assert "Traceback" not in err, err

