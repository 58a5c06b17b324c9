"""Config checks at start: what each refused setting raises, and its ecode."""
import os
import tempfile

from common import Loop, starts

loop = Loop()
with tempfile.TemporaryDirectory() as d:
    present = os.path.join(d, "present.pem")
    open(present, "w").close()
    missing = os.path.join(d, "missing.pem")
    cases = [
        ("TIMEOUT 2000", dict(TIMEOUT=2000.0, REUSE_TIME=3000.0)),
        ("REUSE_TIME 0.1", dict(REUSE_TIME=0.1, TIMEOUT=0.1)),
        ("TIMEOUT > REUSE_TIME", dict(TIMEOUT=10.0, REUSE_TIME=5.0)),
        ("BACKLOG 200", dict(BACKLOG=200)),
        ("BUFFER_SIZE 100", dict(BUFFER_SIZE=100)),
        ("MAX_SLOTS 4 synchronous", dict(MAX_SLOTS=4)),
        ("missing CERT_CHAIN_PEM file",
         dict(DISABLE_ENCRYPTION=False, CERT_CHAIN_PEM=missing, DH_PARAMS_PEM=present)),
        ("missing DH_PARAMS_PEM file",
         dict(DISABLE_ENCRYPTION=False, CERT_CHAIN_PEM=present, DH_PARAMS_PEM=missing)),
    ]
    starts(loop, cases)
loop.stop()
