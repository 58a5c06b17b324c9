"""The queue interface, and stop() with work pending."""
from libchirp.queue import Chirp as QChirp, Message as QMessage

from common import Loop, config, outcome, stop, to

loop = Loop()
rc, sc = config(), config(TIMEOUT=5.0)
recv, send = QChirp(loop, rc), QChirp(loop, sc)
try:
    fut = send.send(to(QMessage(), rc.PORT))
    got = recv.get(timeout=30)
    print("queue: got", len(got.data), "bytes; send", outcome(fut))
    rc2 = config(AUTO_RELEASE=False)
    hold = QChirp(loop, rc2)
    pending = send.send(to(QMessage(), rc2.PORT))
    held = hold.get(timeout=30)
    send.stop()
    print("stop() with a send pending: the send", outcome(pending, timeout=30).split()[0])
    stop(hold, "the node holding a message")
finally:
    send.stop()
    recv.stop()
    loop.stop()
