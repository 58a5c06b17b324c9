"""The queue interface: received messages wait in a :class:`queue.Queue`.

.. code-block:: python

    from libchirp.queue import Chirp, Config, Loop, Message

    loop = Loop(); config = Config()
    config.DISABLE_ENCRYPTION = True
    try:
        chirp = Chirp(loop, config)
        msg = chirp.get()           # released as it is handed out (AUTO_RELEASE)
        chirp.send(msg).result()    # echo it back
    finally:
        chirp.stop()
        loop.stop()
"""

from queue import Queue

from libchirp import ChirpBase, Config, Loop, MessageThread

__all__ = ("Chirp", "Config", "Message", "Loop")


class Message(MessageThread):
    """A chirp message (see :class:`libchirp.MessageBase`). To answer a message, replace
    its data and send it."""

    __slots__ = ()


class Chirp(ChirpBase, Queue):
    """A chirp node that is a :class:`queue.Queue` of the messages it receives.

    ``get()`` and ``get_nowait()`` release the message they return when
    ``Config.AUTO_RELEASE`` is set (the default); otherwise release it yourself, or the
    sender (synchronous mode) waits and the connection's slots run out. Answers to
    :meth:`request` do not go through the queue.

    :param Loop loop: the loop (see :class:`libchirp.Loop`)
    :param Config config: the configuration
    """

    _message_class = Message

    def __init__(self, loop, config):
        self._disable_queue = False
        Queue.__init__(self)
        ChirpBase.__init__(self, loop, config)

    @property
    def disable_queue(self):
        """While True, received messages are released instead of queued."""
        return self._disable_queue

    @disable_queue.setter
    def disable_queue(self, value):
        self._disable_queue = bool(value)

    def _ch_deliver(self, msg):
        if self._disable_queue:
            msg.release()
        else:
            self.put(msg)

    def get(self, block=True, timeout=None):
        """Remove and return a message, as :meth:`queue.Queue.get` (``queue.Empty`` when
        none arrives in time); released first when ``AUTO_RELEASE`` is set."""
        msg = Queue.get(self, block, timeout)
        if self._auto_release:
            msg._release_quietly()
        return msg

    def get_nowait(self):
        """``get(False)``."""
        return self.get(False)

    def stop(self):
        """Stop the node. Messages still queued are dropped unreleased: their senders
        (synchronous mode) see the send fail rather than a false acknowledgement."""
        ChirpBase.stop(self)
        with self.mutex:
            self.queue.clear()
