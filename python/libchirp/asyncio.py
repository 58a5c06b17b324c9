"""The asyncio interface: an ``async def handler`` on your event loop, awaitable sends.

.. code-block:: python

    import asyncio
    from libchirp.asyncio import Chirp, Config, Loop, Message

    class Echo(Chirp):
        async def handler(self, msg):
            await self.send(msg)

    loop = Loop(); config = Config()
    config.DISABLE_ENCRYPTION = True
    aio_loop = asyncio.new_event_loop()
    try:
        chirp = Echo(loop, config, aio_loop)
        aio_loop.run_forever()
    finally:
        chirp.stop()
        loop.stop()

Received messages are handed to the asyncio loop's thread (``run_coroutine_threadsafe``);
``send``, ``request`` and ``release`` return asyncio futures, so call them from that
thread.
"""

import asyncio
import logging

from libchirp import ChirpBase, Config, Loop, MessageThread

__all__ = ("Chirp", "Config", "Message", "Loop")

_log = logging.getLogger("libchirp")


class Message(MessageThread):
    """A chirp message (see :class:`libchirp.MessageBase`); releasing it is awaitable."""

    __slots__ = ()

    def release_slot(self):
        """Release the message's slot; awaitable, with the result of
        :meth:`libchirp.MessageThread.release_slot`. Call it from the asyncio loop's
        thread."""
        return asyncio.wrap_future(MessageThread.release_slot(self))

    release = release_slot


async def _handle(chirp, msg):
    try:
        await chirp.handler(msg)
    except Exception:
        _log.exception("libchirp.asyncio: the handler raised for %r", msg)
    finally:
        if chirp._auto_release:
            msg._release_quietly()


class Chirp(ChirpBase):
    """A chirp node whose handler is a coroutine run on an asyncio event loop.

    Subclass it and implement ``async def handler(self, msg)``. With
    ``Config.AUTO_RELEASE`` (the default) a message is released when its handler finishes.

    :param Loop loop: the loop (see :class:`libchirp.Loop`)
    :param Config config: the configuration
    :param asyncio.AbstractEventLoop asyncio_loop: where handlers run
    """

    _message_class = Message

    def __init__(self, loop, config, asyncio_loop):
        if not isinstance(asyncio_loop, asyncio.AbstractEventLoop):
            raise TypeError("asyncio_loop must be an asyncio event loop, not %s" % type(asyncio_loop).__name__)
        self._asyncio_loop = asyncio_loop
        ChirpBase.__init__(self, loop, config)

    async def handler(self, msg):
        """Called for every message that arrives (not for answers to requests).

        Implement it. Without an implementation, messages are released whatever
        ``AUTO_RELEASE`` says.
        """
        if not self._auto_release:
            msg._release_quietly()

    def _ch_deliver(self, msg):
        aio = self._asyncio_loop
        if aio.is_closed():
            return  # nobody will handle it: dropping it releases it
        try:
            asyncio.run_coroutine_threadsafe(_handle(self, msg), aio)
        except RuntimeError:
            pass  # the loop closed meanwhile

    def send(self, msg):
        """Send a message; awaitable (see :meth:`libchirp.ChirpBase.send`)."""
        return asyncio.wrap_future(ChirpBase.send(self, msg))

    def request(self, msg, auto_release=True):
        """Send a message and await its answer (see :meth:`libchirp.ChirpBase.request`).

        The returned future also has ``send_result()``, awaitable, for the send itself.
        With ``auto_release`` the answer's slot is released as it arrives.
        """
        base = ChirpBase.request(self, msg, auto_release=False)
        if auto_release:
            def release(f):
                if not f.cancelled() and f.exception() is None:
                    f.result()._release_quietly()
            base.add_done_callback(release)
        answer = asyncio.wrap_future(base)
        send_fut = base._send_fut
        answer.send_result = lambda: asyncio.wrap_future(send_fut)
        return answer
