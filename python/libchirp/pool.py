"""The thread-pool interface: a handler method runs on a ThreadPoolExecutor's threads.

.. code-block:: python

    from libchirp.pool import Chirp, Config, Loop, Message

    class Echo(Chirp):
        def handler(self, msg):
            self.send(msg).result()   # reply: same identity, back to the sender

    loop = Loop(); config = Config()
    config.DISABLE_ENCRYPTION = True
    try:
        chirp = Echo(loop, config)
        ...
    finally:
        chirp.stop()
        loop.stop()
"""

import logging
from concurrent.futures import ThreadPoolExecutor

from libchirp import ChirpBase, Config, Loop, MessageThread

__all__ = ("Chirp", "Config", "Message", "Loop")

_log = logging.getLogger("libchirp")


class Message(MessageThread):
    """A chirp message (see :class:`libchirp.MessageBase`). To answer a message, replace
    its data and send it."""

    __slots__ = ()


def _run_handler(chirp, msg):
    try:
        chirp.handler(msg)
    except Exception:
        # As python-chirp: a failed handler's message is not released, so a synchronous
        # sender is not told it was delivered (its send times out). Its slot is freed
        # without an acknowledgement rather than held until stop().
        _log.exception("libchirp.pool: the handler raised for %r", msg)
        msg._refuse()
        return
    if chirp._auto_release:
        msg._release_quietly()


class Chirp(ChirpBase, ThreadPoolExecutor):
    """A chirp node that is a :class:`concurrent.futures.ThreadPoolExecutor`.

    Subclass it and implement :meth:`handler`; it runs on the pool's threads, so share only
    thread-safe things between calls. With ``Config.AUTO_RELEASE`` (the default) a message
    is released when the handler returns. A handler that raises has the exception logged on
    the ``libchirp`` logger and its message is not released (as python-chirp): a
    synchronous sender's send fails with ``TimeoutError``. ``**kwargs`` go to ``ThreadPoolExecutor`` (``max_workers``,
    ``thread_name_prefix``, ...).

    :param Loop loop: the loop (see :class:`libchirp.Loop`)
    :param Config config: the configuration
    """

    _message_class = Message

    def __init__(self, loop, config, **kwargs):
        ThreadPoolExecutor.__init__(self, **kwargs)
        try:
            ChirpBase.__init__(self, loop, config)
        except BaseException:
            ThreadPoolExecutor.shutdown(self)
            raise

    def handler(self, msg):
        """Called for every message that arrives (not for answers to requests).

        Implement it. Without an implementation, messages are released whatever
        ``AUTO_RELEASE`` says.

        :param Message msg: the message
        """
        if not self._auto_release:
            msg.release()

    def _ch_deliver(self, msg):
        try:
            self.submit(_run_handler, self, msg)
        except RuntimeError:
            # Shut down (stop() is under way): nobody will handle it; release it.
            msg.release()

    def stop(self):
        """Stop: wait for running handlers (``shutdown()``), then stop the node."""
        self.shutdown()
        ChirpBase.stop(self)
