"""A burst of 2,000 synchronous sends collected as futures, with no window."""
from common import Chirp, Loop, Message, config, outcome, to

loop = Loop()
rc, sc = config(), config(TIMEOUT=30.0, REUSE_TIME=60.0)
recv, send = Chirp(loop, rc), Chirp(loop, sc)
try:
    futs = [send.send(to(Message(), rc.PORT)) for _ in range(2000)]
    outcomes = [outcome(f) for f in futs]
    print("burst:", outcomes.count("ok"), "of 2000 ok")
finally:
    send.stop()
    recv.stop()
    loop.stop()
