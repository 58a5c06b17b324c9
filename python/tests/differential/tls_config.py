"""TLS configuration: what starting with each set of TLS files does, and messages between
two nodes configured for TLS (on loopback, which neither implementation encrypts).

The test passes the directory of its throwaway PKI in CHIRP_DIFF_PKI. Missing files are
in ``config_checks``. Not covered: files OpenSSL refuses (a chain or DH parameters that are
not PEM, the CA's certificate alone as the chain), on which python-chirp 1.2.1b3 aborts the
whole process ("double free"); ours raises RuntimeError, ecode 6 (CH_TLS_ERROR).
"""
import os

from common import Chirp, Loop, Message, config, outcome, starts, stop, to

pki = os.environ["CHIRP_DIFF_PKI"]


def p(name):
    return os.path.join(pki, name)


def tls(chain, dh=None, **kw):
    return dict(DISABLE_ENCRYPTION=False, CERT_CHAIN_PEM=chain,
                DH_PARAMS_PEM=p("dh.pem") if dh is None else dh, **kw)


loop = Loop()
cases = [
    ("a chain and DH parameters", tls(p("node-a.chain.pem"))),
    ("a chain from another CA", tls(p("stranger.chain.pem"))),
    ("an expired chain", tls(p("expired.chain.pem"))),
]
starts(loop, cases)

# Two nodes set up for TLS talk (plaintext on loopback): a send each way.
ac = config(**tls(p("node-a.chain.pem")))
bc = config(**tls(p("node-b.chain.pem")))
a, b = Chirp(loop, ac), Chirp(loop, bc)
try:
    m = to(Message(), ac.PORT)
    m.data = b"from b"
    print("send from one TLS-configured node to the other:", outcome(b.send(m)))
    m = to(Message(), bc.PORT)
    m.data = b"from a"
    print("and back:", outcome(a.send(m)))
finally:
    stop(b, "b")
    stop(a, "a")
    loop.stop()
