"""A handler that raises, a request to a peer that is down."""
import logging

from common import Chirp, Loop, Message, config, free_port, outcome, stop, to

logging.disable(logging.CRITICAL)  # the handler's exception is logged: not our output


class Bad(Chirp):
    def handler(self, msg):
        raise ValueError("handler exploded")


loop = Loop()
bc = config()
sc = config(TIMEOUT=1.0, REUSE_TIME=2.0)
bad, send = Bad(loop, bc), Chirp(loop, sc)
try:
    print("send to a handler that raises:", outcome(send.send(to(Message(), bc.PORT))))
    fut = send.request(to(Message(), free_port()))
    try:
        fut.result(timeout=60)
        print("request to a peer that is down: answered?")
    except TimeoutError:
        print("request to a peer that is down: except TimeoutError caught it")
    except Exception as e:
        print("request to a peer that is down: missed by except TimeoutError:",
              type(e).__name__)
finally:
    stop(send, "sender")
    stop(bad, "the failed handler's node")
    loop.stop()
