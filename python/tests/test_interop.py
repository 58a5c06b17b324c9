"""The repository's python-chirp peer program (tests/interop/peer.py, written against
python-chirp's API) run unchanged on this package, against python-chirp 1.2.1 (C libchirp)
and the chirp tool: patterned messages up to 1 MiB with headers, both modes, plaintext on
loopback and TLS across a non-loopback address; strangers refused.
"""

import os
import subprocess

import pytest

from conftest import PY, REPO

PEER_PY = os.path.join(REPO, "tests", "interop", "peer.py")


def _python(impl, peer):
    return PY if impl == "ours" else peer


def _line(p, what, prefix):
    line = p.stdout.readline()
    if not line.startswith(prefix):
        p.kill()
        raise AssertionError("%s printed %r, expected %r...; stderr %r" % (what, line, prefix, p.stderr.read()))
    return line.strip()


def _tls(pki, chain):
    return ["--cert-chain", chain, "--dh-params", pki.dh]


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("impls", [("ours", "python-chirp"), ("python-chirp", "ours"), ("ours", "ours")],
                         ids=lambda p: "%s-to-%s" % p)
def test_patterned_messages_arrive_intact(netns, peer, impls, mode):
    send_impl, sink_impl = impls
    count = 200  # includes two 1 MiB messages, empty ones and 64 KiB+ ones, all with headers
    extra = ["--async"] if mode == "async" else []
    sink = netns.popen([_python(sink_impl, peer), PEER_PY, "sink", "--port", "2998", "--count", str(count), "--timeout", "30"] + extra,
                       stdin=subprocess.PIPE)
    _line(sink, "sink", "listening")
    send = netns.popen([_python(send_impl, peer), PEER_PY, "send", "--port", "2992", "--count", str(count),
                        "--to", "127.0.0.1:2998", "--timeout", "30"] + extra, stdin=subprocess.PIPE)
    _line(send, "sender (%s)" % send_impl, "sent %d" % count)
    assert _line(sink, "sink (%s)" % sink_impl, "checked") == "checked %d" % count
    for p in (send, sink):
        p.communicate(timeout=30)
        assert p.returncode == 0, "peer.py exited %d" % p.returncode


@pytest.mark.parametrize("impls", [("ours", "python-chirp"), ("python-chirp", "ours"), ("ours", "chirp"),
                                   ("chirp", "ours"), ("ours", "ours")], ids=lambda p: "%s-to-%s" % p)
def test_request_over_tls(netns, peer, chirp, pki, impls):
    req_impl, echo_impl = impls
    if echo_impl == "chirp":
        echo = netns.popen([chirp, "echo", "--port", "2998"] + _tls(pki, pki.node_a))
        netns.wait_listening(2998)
    else:
        echo = netns.popen([_python(echo_impl, peer), PEER_PY, "echo", "--port", "2998"] + _tls(pki, pki.node_a),
                           stdin=subprocess.PIPE)
        _line(echo, "echo (%s)" % echo_impl, "listening")
    to = "%s:2998" % netns.addr  # not loopback: TLS, mutually authenticated
    if req_impl == "chirp":
        r = netns.popen([chirp, "request", "--port", "0", "--data", "over tls", to] + _tls(pki, pki.node_b))
        out, err = r.communicate(timeout=60)
        assert r.returncode == 0 and out.strip() == "over tls", "chirp request: %r %r" % (out, err)
    else:
        r = netns.popen([_python(req_impl, peer), PEER_PY, "request", "--port", "2992", "--data", "over tls",
                         "--to", to] + _tls(pki, pki.node_b))
        out, err = r.communicate(timeout=60)
        assert out.strip() == "answer over tls", "request (%s) printed %r, stderr %r" % (req_impl, out, err)
    echo.terminate()
    echo.communicate(timeout=30)


@pytest.mark.parametrize("stranger_impl", ["python-chirp", "chirp", "ours"])
def test_a_stranger_is_refused(netns, peer, chirp, pki, stranger_impl):
    """Our TLS echo refuses a client whose certificate another CA signed."""
    echo = netns.popen([PY, PEER_PY, "echo", "--port", "2998", "--timeout", "2"] + _tls(pki, pki.node_a),
                       stdin=subprocess.PIPE)
    _line(echo, "echo (ours)", "listening")
    to = "%s:2998" % netns.addr
    if stranger_impl == "chirp":
        r = netns.popen([chirp, "request", "--port", "0", "--timeout", "2", "--data", "let me in", to]
                        + _tls(pki, pki.stranger))
        out, err = r.communicate(timeout=60)
        assert r.returncode != 0 and "let me in" not in out, "the stranger got an answer: %r %r" % (out, err)
    else:
        r = netns.popen([_python(stranger_impl, peer), PEER_PY, "request", "--port", "2992", "--timeout", "2",
                         "--data", "let me in", "--to", to] + _tls(pki, pki.stranger))
        out, err = r.communicate(timeout=60)
        assert out.startswith("error"), "the stranger (%s) was not refused: %r %r" % (stranger_impl, out, err)
    echo.terminate()
    echo.communicate(timeout=30)


def test_our_tls_requester_refuses_a_stranger_echo(netns, peer, pki):
    """And our requester refuses an echo whose certificate another CA signed."""
    echo = netns.popen([peer, PEER_PY, "echo", "--port", "2998", "--timeout", "2"] + _tls(pki, pki.stranger),
                       stdin=subprocess.PIPE)
    _line(echo, "echo (python-chirp, stranger)", "listening")
    r = netns.popen([PY, PEER_PY, "request", "--port", "2992", "--timeout", "2", "--data", "hi",
                     "--to", "%s:2998" % netns.addr] + _tls(pki, pki.node_a))
    out, err = r.communicate(timeout=60)
    # RequestError: ours, both a ConnectionError and a TimeoutError.
    assert out.startswith("error") and any(
        k in out for k in ("ConnectionError", "TimeoutError", "RequestError")), \
        "expected a ConnectionError or TimeoutError, got %r %r" % (out, err)
    echo.terminate()
    echo.communicate(timeout=30)
