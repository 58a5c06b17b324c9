"""The asyncio interface: an async handler answers requests; sends and a request awaited."""
import asyncio

from libchirp.asyncio import Chirp, Loop, Message

from common import config, outcome, stop, to


class Echo(Chirp):
    async def handler(self, msg):
        await self.send(msg)


class Client(Chirp):
    async def handler(self, msg):
        pass


async def main(client, port):
    oks = 0
    for i in range(50):
        m = to(Message(), port)
        m.data = b"%d" % i
        await client.send(m)
        oks += 1
    print("asyncio sends:", oks, "of 50 ok")
    try:
        await client.send(to(Message(), 1))
        print("asyncio send to port 1: ok?")
    except Exception as e:
        print("asyncio send to port 1:", type(e).__name__, "ecode=%s" % getattr(e, "ecode", None))


loop = Loop()
aio = asyncio.new_event_loop()
asyncio.set_event_loop(aio)
ec, cc = config(), config(TIMEOUT=2.0, REUSE_TIME=4.0)
echo, client = Echo(loop, ec, aio), Client(loop, cc, aio)
try:
    aio.run_until_complete(main(client, ec.PORT))
finally:
    stop(client, "client")
    stop(echo, "echo")
    loop.stop()
