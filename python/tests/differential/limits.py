"""Message size, buffer size, messages that take attributes, the error constants."""
import weakref

from common import Chirp, Loop, Message, config, outcome, to

loop = Loop()
rc = config(BUFFER_SIZE=32 * 1024 * 1024)
sc = config(MAX_MSG_SIZE=1000)
recv, send = Chirp(loop, rc), Chirp(loop, sc)
try:
    m = to(Message(), rc.PORT)
    m.data = bytes(2000)
    print("over the sender's own MAX_MSG_SIZE:", outcome(send.send(m)))
    m = Message()
    m.tag = "mine"
    print("tag and weakref:", m.tag, weakref.ref(m)() is m)
    import libchirp.version
    print("version is a str:", isinstance(libchirp.version.__version__, str))
    from libchirp import lib
    print("CH_TIMEOUT CH_ENOMEM CH_CANNOT_CONNECT:", lib.CH_TIMEOUT, lib.CH_ENOMEM,
          lib.CH_CANNOT_CONNECT)
finally:
    send.stop()
    recv.stop()
    loop.stop()
