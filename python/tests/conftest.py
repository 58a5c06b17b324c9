"""Fixtures for the Python package's tests.

The package under test is the one installed in the interpreter running pytest. The peers:

* ``CHIRP_PEER_PYTHON``: a Python with python-chirp 1.2.1 (C libchirp underneath), made by
  ``scripts/install-peer.sh`` (default: ``target/chirp-peer/bin/python``);
* ``CHIRP_BIN``: the ``chirp`` tool of this repository (default: ``target/debug/chirp``,
  else ``target/release/chirp``);
* ``CHIRP_EXAMPLES``: libchirp's example programs as published in its source package
  (default: ``target/chirp-peer/libchirp-examples``, unpacked by install-peer.sh).

The examples listen on and send to fixed ports (2992, 2998) on 127.0.0.1, unchanged; each
test that runs them does so inside a network namespace of its own (root and ``ip``
needed), so they cannot collide with anything on this machine or with each other. A test
whose peer or privileges are missing is skipped with the reason, never passed.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _first_existing(*paths):
    for p in paths:
        if p and os.path.exists(p):
            return p
    return None


def peer_python():
    return _first_existing(
        os.environ.get("CHIRP_PEER_PYTHON"),
        os.path.join(REPO, "target", "chirp-peer", "bin", "python"),
    )


def chirp_bin():
    return _first_existing(
        os.environ.get("CHIRP_BIN"),
        os.path.join(REPO, "target", "debug", "chirp"),
        os.path.join(REPO, "target", "release", "chirp"),
    )


def examples_dir():
    return _first_existing(
        os.environ.get("CHIRP_EXAMPLES"),
        os.path.join(REPO, "target", "chirp-peer", "libchirp-examples"),
    )


def child_env():
    """The environment of every child: no inherited log level or Python path surprises."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUST_LOG", "PYTHON"))}
    env["RUST_LOG"] = "warn"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run(args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=30, **kw)


class Netns:
    """A network namespace with loopback up and a veth interface holding ``addr``
    (a non-loopback address, so connections to it use TLS unless encryption is off)."""

    def __init__(self):
        self.name = "chirp-py-" + uuid.uuid4().hex[:8]
        self.addr = "10.251.0.1"
        _run(["ip", "netns", "add", self.name])
        try:
            self.ip("link", "set", "lo", "up")
            # A veth pair with both ends inside: an ordinary, non-loopback interface.
            self.ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
            self.ip("addr", "add", self.addr + "/24", "dev", "v0")
            self.ip("link", "set", "v0", "up")
            self.ip("link", "set", "v1", "up")
        except Exception:
            self.close()
            raise
        self.procs = []

    def ip(self, *args):
        _run(["ip", "-n", self.name] + list(args))

    def popen(self, args, stdin=subprocess.DEVNULL, cwd=None):
        p = subprocess.Popen(
            ["ip", "netns", "exec", self.name] + list(args),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
            cwd=cwd,
        )
        self.procs.append(p)
        return p

    def wait_listening(self, port, timeout=20.0):
        """Wait until something listens on ``port`` (IPv4) inside the namespace; fails
        early when the process started last exits first."""
        last = self.procs[-1] if self.procs else None
        want = ":%04X 00000000:0000 0A" % port
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["ip", "netns", "exec", self.name, "cat", "/proc/net/tcp"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            if want in out:
                return
            if last is not None and last.poll() is not None:
                raise AssertionError(
                    "the peer exited (%s) before port %d listened: %s"
                    % (last.returncode, port, last.stderr.read())
                )
            time.sleep(0.02)
        raise AssertionError("nothing listened on port %d within %.0f s" % (port, timeout))

    def close(self):
        for p in getattr(self, "procs", []):
            if p.poll() is None:
                p.kill()
                p.wait(10)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)


def _can_netns():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return "needs root and iproute2 (ip netns) to run the examples on their fixed ports"
    return None


@pytest.fixture
def netns():
    why = _can_netns()
    if why:
        pytest.skip(why)
    ns = Netns()
    try:
        yield ns
    finally:
        ns.close()


def _needed(found, why):
    """``found``, or the test is skipped (reported as skipped, never passed) saying ``why``."""
    if found is None:
        pytest.skip(why)
    return found


@pytest.fixture
def examples():
    return _needed(examples_dir(), "libchirp's example programs: run scripts/install-peer.sh")


@pytest.fixture
def peer():
    return _needed(peer_python(), "python-chirp 1.2.1 (the real C libchirp): run scripts/install-peer.sh")


@pytest.fixture
def chirp():
    return _needed(chirp_bin(), "the chirp tool: cargo build -p libchirp-cli")


# RFC 7919's ffdhe2048 group (public parameters; src/pki.rs carries the same for TestPki):
# a fixed group, because generating DH parameters takes seconds.
FFDHE2048 = """-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""


class Pki:
    """A CA, two node chains signed by it and one by a stranger CA (openssl CLI)."""

    def __init__(self, d):
        self.dir = d
        self.dh = os.path.join(d, "dh.pem")
        with open(self.dh, "w") as f:
            f.write(FFDHE2048)
        self._ca("ca")
        self._ca("stranger-ca")
        self.node_a = self._node("node-a", "ca")
        self.node_b = self._node("node-b", "ca")
        self.stranger = self._node("stranger", "stranger-ca")
        self.expired = self._expired("expired", "ca")

    def _p(self, name):
        return os.path.join(self.dir, name)

    def _ca(self, name):
        _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
              "-subj", "/CN=%s.libchirp.test" % name,
              "-keyout", self._p(name + ".key"), "-out", self._p(name + ".pem")])

    def _node(self, name, ca):
        key, csr, crt = self._p(name + ".key"), self._p(name + ".csr"), self._p(name + ".crt")
        _run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj",
              "/CN=%s.libchirp.test" % name, "-keyout", key, "-out", csr])
        _run(["openssl", "x509", "-req", "-in", csr, "-CA", self._p(ca + ".pem"),
              "-CAkey", self._p(ca + ".key"), "-CAcreateserial", "-days", "2", "-out", crt])
        return self._chain(name, key, crt, ca)

    def _chain(self, name, key, crt, ca):
        chain = self._p(name + ".chain.pem")
        with open(chain, "w") as out:
            for part in (key, crt, self._p(ca + ".pem")):
                with open(part) as f:
                    out.write(f.read())
        return chain

    def _expired(self, name, ca):
        """A chain signed by ``ca`` whose certificate expired in 2020 (``openssl ca`` sets
        the dates; ``openssl x509`` cannot)."""
        key, csr, crt = self._p(name + ".key"), self._p(name + ".csr"), self._p(name + ".crt")
        _run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj",
              "/CN=%s.libchirp.test" % name, "-keyout", key, "-out", csr])
        db = self._p(name + ".ca-db")
        os.makedirs(db, exist_ok=True)
        open(os.path.join(db, "index.txt"), "w").close()
        cfg = os.path.join(db, "ca.cnf")
        with open(cfg, "w") as f:
            f.write("[ca]\ndefault_ca = d\n[d]\ndatabase = %s\nnew_certs_dir = %s\n"
                    "default_md = sha256\npolicy = p\nrand_serial = yes\n"
                    "[p]\ncommonName = supplied\n"
                    % (os.path.join(db, "index.txt"), db))
        _run(["openssl", "ca", "-batch", "-notext", "-config", cfg, "-in", csr, "-out", crt,
              "-cert", self._p(ca + ".pem"), "-keyfile", self._p(ca + ".key"),
              "-startdate", "20200101000000Z", "-enddate", "20200201000000Z"])
        return self._chain(name, key, crt, ca)


@pytest.fixture(scope="session")
def pki():
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make test certificates")
    d = tempfile.mkdtemp(prefix="chirp-py-pki-")
    try:
        yield Pki(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def native_threads():
    """Threads of this process (Rust threads included, which threading does not list), as
    a set of thread ids: a test checks that the threads it started are gone
    (``eventually(lambda: not native_threads() - before)``), whatever an earlier test's
    threads (an idle executor's workers collected late) do meanwhile."""
    return set(os.listdir("/proc/self/task"))


def eventually(pred, timeout=10.0):
    """Poll ``pred`` until it holds or ``timeout`` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(0.01)


PY = sys.executable
