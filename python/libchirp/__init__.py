"""libchirp: message-passing for everyone, from Python.

The API of python-chirp's ``libchirp.pool`` and ``libchirp.queue`` (its last release is
1.2.1), running on the libchirp Rust crate and speaking the same wire protocol, so programs
written for python-chirp run unchanged and talk to python-chirp, C libchirp and the Rust
crate's nodes alike.

Pick an interface::

    from libchirp.pool import Chirp, Config, Loop, Message    # handler on a thread pool
    from libchirp.queue import Chirp, Config, Loop, Message   # a queue.Queue of messages

What is the same as python-chirp: the names, the defaults and checks of :class:`Config`,
futures that complete when a message was released by the peer (synchronous mode) or written
(asynchronous mode), ``request()`` answered by identity, releasing as the backpressure
signal, the exceptions raised (``ConnectionError``, ``TimeoutError``, ``RuntimeError``,
``ValueError``, ``OSError``, ``MemoryError``; each carries libchirp's numeric ``ecode``).

What differs, on purpose:

* There is no libuv event loop underneath. :class:`Loop` keeps its methods (``run``,
  ``stop``, ``running``, ``call_soon``) so programs that start and stop one keep working;
  ``call_soon`` runs its functions on a thread of the loop's own.
* ``request()`` registers the answer's identity before the request is sent, so an answer
  that arrives at once is never lost.
* A received message that is garbage-collected without being released has its slot
  released (python-chirp would keep the slot until ``stop()``); ``stop()`` releases every
  message still held and fails what is pending instead of waiting ``TIMEOUT`` first.
* The GIL is released whenever this package waits; handlers run on the pool's threads.
* Additions: ``Config.ALWAYS_ENCRYPT`` (TLS on loopback too), ``Config.PORT = 0`` (an
  ephemeral port, read back from ``Chirp.port``).
"""

import ipaddress
import logging
import os
import signal
import sys
import threading
from concurrent.futures import Future

from libchirp import _native

__all__ = (
    "ChirpBase",
    "ChirpFuture",
    "Config",
    "Loop",
    "MessageBase",
    "MessageThread",
    "RequestError",
    "lib",
)

__version__ = _native.__version__

_log = logging.getLogger("libchirp")


class RequestError(ConnectionError, TimeoutError):
    """A request whose message could not be delivered: no answer will come.

    python-chirp reports this as ``TimeoutError`` once ``TIMEOUT`` has passed; here it comes
    as soon as the send failed, and is both a ``TimeoutError`` (so ``except TimeoutError``
    written for python-chirp catches it) and a ``ConnectionError``. ``ecode`` is the send's.
    """


class ChirpFuture(Future):
    """The future of a request: :meth:`result` is the answer, :meth:`send_result` the send.

    :param bool auto_release: release the answer's slot when :meth:`result` returns it
    """

    def __init__(self, auto_release=True):
        Future.__init__(self)
        self._auto_release = auto_release
        self._send_fut = None

    def result(self, timeout=None):
        """Wait for the answer and return it (a message).

        Like :meth:`concurrent.futures.Future.result`; with ``auto_release`` the answer's
        slot is released before it is returned.
        """
        answer = Future.result(self, timeout)
        if self._auto_release:
            answer._release_quietly()
        return answer

    def set_exception(self, exception):
        """As :meth:`concurrent.futures.Future.set_exception`; a connection failure becomes
        a :class:`RequestError`, which is also a ``TimeoutError``."""
        if isinstance(exception, ConnectionError) and not isinstance(exception, TimeoutError):
            wrapped = RequestError(*exception.args)
            wrapped.ecode = getattr(exception, "ecode", None)
            wrapped.__cause__ = exception
            exception = wrapped
        Future.set_exception(self, exception)

    def send_result(self, timeout=None):
        """Wait until the request was sent (synchronous: released by the peer) and return it.

        :param float timeout: seconds to wait at most
        """
        return self._send_fut.result(timeout)


_MAX_BUFFER = 16 * 1024 * 1024

# Config: name -> (kind, default, range or None). The kinds follow libchirp's C types.
_U8 = (0, 2**8 - 1)
_U16 = (0, 2**16 - 1)
_U32 = (0, 2**32 - 1)
_FIELDS = {
    "REUSE_TIME": ("float", 30.0, None),
    "TIMEOUT": ("float", 5.0, None),
    "PORT": ("int", 2998, _U16),
    "BACKLOG": ("int", 100, _U8),
    "MAX_SLOTS": ("int", 0, _U8),
    "SYNCHRONOUS": ("bool", True, None),
    "DISABLE_SIGNALS": ("bool", False, None),
    "BUFFER_SIZE": ("int", 0, _U32),
    "MAX_MSG_SIZE": ("int", 100 * 1024 * 1024, _U32),
    "BIND_V4": ("ipv4", "0.0.0.0", None),
    "BIND_V6": ("ipv6", "::", None),
    "IDENTITY": ("identity", bytes(16), None),
    "CERT_CHAIN_PEM": ("path", None, None),
    "DH_PARAMS_PEM": ("path", None, None),
    "DISABLE_ENCRYPTION": ("bool", False, None),
    "ALWAYS_ENCRYPT": ("bool", False, None),
    "AUTO_RELEASE": ("bool", True, None),
}


def _convert(name, kind, value, bounds):
    """Check and convert a Config value the way libchirp's C types would take it."""
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError("Config.%s takes a number of seconds, not %r" % (name, value))
        return float(value)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("Config.%s takes an integer, not %r" % (name, value))
        lo, hi = bounds
        if not lo <= value <= hi:
            raise OverflowError(
                "Config.%s must be between %d and %d (%d)" % (name, lo, hi, value)
            )
        return value
    if kind == "bool":
        if not isinstance(value, int):
            raise TypeError("Config.%s takes a bool, not %r" % (name, value))
        return bool(value)
    if kind in ("ipv4", "ipv6"):
        addr = ipaddress.ip_address(value)
        want = 4 if kind == "ipv4" else 6
        if addr.version != want:
            raise ValueError("Config.%s takes an IPv%d address, not %s" % (name, want, value))
        return addr.compressed
    if kind == "identity":
        if not isinstance(value, (bytes, bytearray)) or len(value) != 16:
            raise ValueError("Config.IDENTITY takes 16 bytes, not %r" % (value,))
        return bytes(value)
    if kind == "path":
        if not isinstance(value, str):
            raise TypeError("Config.%s takes a path (str), not %r" % (name, value))
        return value
    raise AssertionError(kind)


class Config(object):
    """Chirp configuration, with python-chirp's names, defaults and checks.

    * ``REUSE_TIME`` (30.0): seconds an idle connection is kept for reuse.
    * ``TIMEOUT`` (5.0): send timeout in seconds (synchronous: until the peer released the
      message); connecting may take ``min(2 * TIMEOUT, 60)``.
    * ``PORT`` (2998): the port to listen on and to advertise (0: an ephemeral port).
    * ``BACKLOG`` (100): listen backlog (below 128).
    * ``MAX_SLOTS`` (0): receive slots per connection; 0 means 1 when ``SYNCHRONOUS`` and
      16 otherwise; at most 32.
    * ``SYNCHRONOUS`` (True): a send completes when the peer released the message.
    * ``DISABLE_SIGNALS`` (False): by default SIGTERM ends the program like Ctrl-C does
      (raising in the main thread, so ``finally: chirp.stop()`` runs).
    * ``BUFFER_SIZE`` (0): read buffer per connection (0: 64 KiB).
    * ``MAX_MSG_SIZE`` (100 MiB): the largest header plus data accepted.
    * ``BIND_V4`` ("0.0.0.0"), ``BIND_V6`` ("::"): listen addresses.
    * ``IDENTITY`` (16 zero bytes: a random one): the node's identity.
    * ``CERT_CHAIN_PEM``, ``DH_PARAMS_PEM``: paths of the PEM files TLS needs (the chain
      holds the node's key, its certificate and the CA certificate).
    * ``DISABLE_ENCRYPTION`` (False): never use TLS. Loopback is never encrypted anyway.
    * ``ALWAYS_ENCRYPT`` (False, an addition): use TLS on loopback too.
    * ``AUTO_RELEASE`` (True): release a message when the pool's handler returns, or when
      the queue hands it out.

    A value of the wrong type raises ``TypeError``, an integer out of its C type's range
    ``OverflowError``; the remaining checks (ranges libchirp enforces, files that must
    exist) raise ``ValueError`` when a ``Chirp`` starts with the config. Once a ``Chirp``
    uses it, the config is read-only (``RuntimeError``).
    """

    def __init__(self):
        object.__setattr__(self, "_sealed", False)
        object.__setattr__(self, "_values", {k: v[1] for k, v in _FIELDS.items()})

    def __getattr__(self, name):
        values = object.__getattribute__(self, "_values")
        if name in values:
            return values[name]
        raise AttributeError("Config has no setting %r" % name)

    def __setattr__(self, name, value):
        if name not in _FIELDS:
            raise AttributeError(
                "Config has no setting %r (settings: %s)" % (name, ", ".join(sorted(_FIELDS)))
            )
        if self._sealed:
            raise RuntimeError("Config is used and therefore read-only.")
        kind, _, bounds = _FIELDS[name]
        self._values[name] = _convert(name, kind, value, bounds)

    def __dir__(self):
        return sorted(set(object.__dir__(self)) | set(_FIELDS))

    def __repr__(self):
        return "Config(%s)" % ", ".join("%s=%r" % kv for kv in sorted(self._values.items()))

    def _seal(self):
        object.__setattr__(self, "_sealed", True)

    def _native(self):
        """The settings as the extension module takes them."""
        v = self._values
        return {
            "reuse_time": v["REUSE_TIME"],
            "timeout": v["TIMEOUT"],
            "port": v["PORT"],
            "backlog": v["BACKLOG"],
            "max_slots": v["MAX_SLOTS"],
            "synchronous": v["SYNCHRONOUS"],
            # The read buffer is a size hint: python-chirp takes any size, the crate at
            # most 16 MiB (beyond, a larger buffer changes nothing a program can see).
            "buffer_size": min(v["BUFFER_SIZE"], _MAX_BUFFER),
            "max_msg_size": v["MAX_MSG_SIZE"],
            "bind_v4": v["BIND_V4"],
            "bind_v6": v["BIND_V6"],
            "identity": v["IDENTITY"],
            "cert_chain_pem": v["CERT_CHAIN_PEM"],
            "dh_params_pem": v["DH_PARAMS_PEM"],
            "disable_encryption": v["DISABLE_ENCRYPTION"],
            "always_encrypt": v["ALWAYS_ENCRYPT"],
        }


# Guards a message's "is it being sent" state (one short lock, never held while waiting).
_sending = threading.Lock()


class MessageBase(object):
    """A chirp message. To answer a message, replace its data and send it back.

    A new message has a random identity, no data, and needs ``address`` and ``port``
    before it is sent. A received message carries the sender's address, advertised port and
    identity, so sending it back is a reply the sender can match.
    """

    # ``__dict__`` and ``__weakref__``: programs tag messages (``msg.tag = ...``) and hold
    # weak references to them, as python-chirp's messages allow.
    __slots__ = (
        "__dict__",
        "__weakref__",
        "_identity",
        "_serial",
        "_header",
        "_data",
        "_address",
        "_port",
        "_remote_identity",
        "_slot",
        "_fut",
        "_chirp",
    )

    def __init__(self, cmsg=None):
        if cmsg is not None:
            raise TypeError("Message() takes no C message in this implementation")
        self._identity = os.urandom(16)
        self._serial = 0
        self._header = b""
        self._data = b""
        self._address = "0.0.0.0"
        self._port = 0
        self._remote_identity = bytes(16)
        self._slot = None
        self._fut = None
        self._chirp = None

    @classmethod
    def _received(cls, chirp, identity, serial, header, data, address, port, remote, slot):
        msg = cls.__new__(cls)
        msg._identity = identity
        msg._serial = serial
        msg._header = header
        msg._data = data
        msg._address = address  # compressed already
        msg._port = port
        msg._remote_identity = remote
        msg._slot = slot
        msg._fut = None
        msg._chirp = chirp
        return msg

    @property
    def identity(self):
        """The identity (16 bytes): answers carry the identity of what they answer.

        Use the (identity, serial) pair to tell messages apart. Read-only.
        """
        return self._identity

    @property
    def serial(self):
        """The serial the message arrived with (0 for a message created here). Read-only."""
        return self._serial

    @property
    def header(self):
        """The header bytes, for upper-layer protocols (at most 65,535 bytes)."""
        return self._header

    @header.setter
    def header(self, value):
        if not isinstance(value, bytes):
            raise TypeError("Message.header takes bytes, not %s" % type(value).__name__)
        self._header = value

    @property
    def data(self):
        """The data bytes."""
        return self._data

    @data.setter
    def data(self, value):
        if not isinstance(value, bytes):
            raise TypeError("Message.data takes bytes, not %s" % type(value).__name__)
        self._data = value

    @property
    def address(self):
        """The peer's IP address as a string: the sender of a received message, the
        destination of one to send (parsed by :func:`ipaddress.ip_address`)."""
        return self._address

    @address.setter
    def address(self, value):
        self._address = ipaddress.ip_address(value).compressed

    @property
    def port(self):
        """The peer's port: the sender's advertised port, or the destination port."""
        return self._port

    @port.setter
    def port(self, value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("Message.port takes an integer, not %r" % (value,))
        if not 0 <= value <= 65535:
            raise ValueError("Message.port must be between 0 and 65535 (%d)" % value)
        self._port = value

    @property
    def remote_identity(self):
        """The identity of the node the message came from (16 bytes; zeros for a message
        created here). It changes when that node restarts. Read-only."""
        return self._remote_identity

    @property
    def has_slot(self):
        """True while the received message holds a slot that was not released yet."""
        slot = self._slot
        return slot is not None and slot.has_slot()

    def __repr__(self):
        return "<%s identity=%s serial=%d address=%s port=%d data=%d bytes%s>" % (
            type(self).__name__,
            self._identity.hex(),
            self._serial,
            self._address,
            self._port,
            len(self._data),
            ", holds a slot" if self.has_slot else "",
        )


class MessageThread(MessageBase):
    """A message of the pool and queue interfaces: releasable from any thread."""

    __slots__ = ()

    def release_slot(self):
        """Release the message's slot; returns a Future.

        If the sender waits for it (synchronous mode) the acknowledgement is sent; the
        future's result is ``(identity, serial)`` once that was written. A message without a
        slot (created here, or released already) gives a future whose result is ``None``.
        A message may be released while it is being sent back (python-chirp refuses that
        with ``RuntimeError``; here the send has its own copy of the data).
        """
        slot = self._slot
        chirp = self._chirp
        if slot is not None and chirp is not None and slot.has_slot():
            fut = Future()
            if slot.release(chirp._ch_node, fut):
                return fut
        fut = Future()
        fut.set_result(None)
        return fut

    release = release_slot

    def _refuse(self):
        """Free the slot without an acknowledgement (a handler failed)."""
        slot = self._slot
        if slot is not None:
            slot.refuse()

    def _release_quietly(self):
        """Release without a future (AUTO_RELEASE: nobody waits for the outcome)."""
        slot = self._slot
        chirp = self._chirp
        if slot is not None and chirp is not None:
            slot.release(chirp._ch_node)


class Loop(object):
    """A stand-in for python-chirp's libuv loop, so programs that use one keep working.

    There is no event loop underneath: each ``Chirp`` runs its own threads. ``run()`` (done
    by the constructor unless ``run_loop=False``) marks the loop running; ``stop()`` ends it
    once the last ``Chirp`` using it stopped; a stopped loop cannot run again.
    ``call_soon(func, *args, **kwargs)`` runs ``func`` on the loop's thread, in order.

    :param bool run_loop: run the loop now (True)
    """

    def __init__(self, run_loop=True):
        self._lock = threading.Lock()
        self._started = False
        self._stopped = False
        self._refcnt = 1
        self._calls = []
        self._wake = threading.Condition(self._lock)
        self._thread = None
        if run_loop:
            self.run()

    def run(self):
        """Mark the loop running. Running it again is allowed; restarting a stopped loop
        raises ``RuntimeError``."""
        with self._lock:
            if self._stopped:
                raise RuntimeError("Cannot restart loop")
            self._started = True

    @property
    def running(self):
        """True between ``run()`` and ``stop()``."""
        with self._lock:
            return self._started and not self._stopped

    def call_soon(self, func, *args, **kwargs):
        """Call ``func(*args, **kwargs)`` on the loop's thread, soon (in call order)."""
        with self._lock:
            if self._refcnt <= 0:
                raise RuntimeError("the loop is stopped")
            self._calls.append((func, args, kwargs))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="chirp-loop", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def _serve(self):
        while True:
            with self._lock:
                while not self._calls and self._refcnt > 0:
                    self._wake.wait()
                if not self._calls:
                    return
                calls, self._calls = self._calls, []
            for func, args, kwargs in calls:
                try:
                    func(*args, **kwargs)
                except Exception:
                    _log.exception("Loop.call_soon: %r raised", func)

    def stop(self):
        """Stop the loop; the loop's thread ends once every ``Chirp`` using it stopped."""
        with self._lock:
            if not self._started or self._stopped:
                return
            self._stopped = True
        self._refdec()

    def _refinc(self):
        with self._lock:
            if self._stopped:
                raise RuntimeError("the loop is stopped: start a Chirp on a running Loop")
            self._refcnt += 1

    def _refdec(self):
        with self._lock:
            self._refcnt -= 1
            if self._refcnt > 0:
                return
            thread = self._thread
            self._wake.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join()


# SIGTERM handling for DISABLE_SIGNALS=False: installed while such a Chirp runs.
_signals_lock = threading.Lock()
_signals_users = 0
_signals_previous = None


def _on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def _signals_acquire():
    global _signals_users, _signals_previous
    if threading.current_thread() is not threading.main_thread():
        return False
    with _signals_lock:
        if _signals_users == 0:
            if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
                return False  # the program handles SIGTERM itself: leave it alone
            _signals_previous = signal.signal(signal.SIGTERM, _on_sigterm)
        _signals_users += 1
        return True


def _signals_release():
    global _signals_users
    with _signals_lock:
        _signals_users -= 1
        if _signals_users == 0 and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _signals_previous)


def _check_files(config):
    """The TLS files must exist (python-chirp: ``ValueError``, ``ecode`` 1)."""
    if config.DISABLE_ENCRYPTION:
        return
    for name in ("CERT_CHAIN_PEM", "DH_PARAMS_PEM"):
        path = getattr(config, name)
        if path is not None and not os.path.exists(path):
            e = ValueError("Config: %s %s does not exist." % (name, path))
            e.ecode = lib.CH_VALUE_ERROR
            raise e


class _Constants(object):
    """libchirp's error codes, as python-chirp's C binding exposes them (``lib.CH_*``):
    compare an exception's ``ecode`` with them."""

    CH_SUCCESS = 0
    CH_VALUE_ERROR = 1
    CH_UV_ERROR = 2
    CH_PROTOCOL_ERROR = 3
    CH_EADDRINUSE = 4
    CH_FATAL = 5
    CH_TLS_ERROR = 6
    CH_TIMEOUT = 9
    CH_ENOMEM = 10
    CH_SHUTDOWN = 11
    CH_CANNOT_CONNECT = 12
    CH_USED = 14
    CH_MORE = 15
    CH_BUSY = 16
    CH_EMPTY = 17
    CH_WRITE_ERROR = 18
    CH_INIT_FAIL = 19


#: libchirp's error codes (``lib.CH_TIMEOUT`` ...), as in python-chirp.
lib = _Constants()


class ChirpBase(object):
    """What the pool and queue interfaces share: starting, sending, requests, stopping.

    Starting raises ``ValueError`` for a config libchirp refuses (with what was wrong),
    ``OSError`` when the port cannot be bound, ``RuntimeError`` when TLS cannot be set up.

    :param Loop loop: the loop (see :class:`Loop`)
    :param Config config: the configuration; read-only from now on
    """

    _message_class = MessageThread

    def __init__(self, loop, config):
        if not isinstance(loop, Loop):
            raise TypeError("loop must be a libchirp Loop, not %s" % type(loop).__name__)
        if not isinstance(config, Config):
            raise TypeError("config must be a libchirp Config, not %s" % type(config).__name__)
        config._seal()
        _check_files(config)
        self._ch_loop = loop
        self._ch_config = config
        self._auto_release = config.AUTO_RELEASE
        self._ch_stopped = False
        self._ch_stop_lock = threading.Lock()
        cls = self._message_class

        def factory(identity, serial, header, data, address, port, remote, slot):
            return cls._received(self, identity, serial, header, data, address, port, remote, slot)

        loop._refinc()
        try:
            self._ch_node = _native.Node(config._native(), factory, self._ch_deliver)
        except BaseException:
            loop._refdec()
            raise
        self._ch_signals = not config.DISABLE_SIGNALS and _signals_acquire()

    def _ch_deliver(self, msg):
        """Called on the dispatcher thread for every received message (not answers)."""
        raise NotImplementedError

    @property
    def loop(self):
        """The :class:`Loop` this chirp was started with."""
        return self._ch_loop

    @property
    def port(self):
        """The port this chirp listens on (an addition: useful with ``Config.PORT = 0``)."""
        return self._ch_node.port

    def identity(self):
        """This node's identity (16 bytes)."""
        return self._ch_node.identity()

    def _claim(self, msg, fut):
        if not isinstance(msg, MessageThread):
            raise TypeError("send() takes a libchirp Message, not %s" % type(msg).__name__)
        with _sending:
            if msg._fut is not None:
                raise RuntimeError("Message still sending, please wait for the send() result")
            msg._fut = fut

    def send(self, msg):
        """Send a message; returns a :class:`concurrent.futures.Future`.

        Its result is the message, once the peer released it (synchronous mode) or once it
        was written (asynchronous mode). ``result()`` raises ``ConnectionError`` (cannot
        connect, connection lost, chirp stopped), ``TimeoutError``, ``ValueError`` (no
        address), or ``MemoryError`` (about a million messages already queued for that
        peer). A message larger than this node's ``MAX_MSG_SIZE`` is sent: the receiver
        judges it by its own limit (and closes the connection if it refuses it).
        Sending one message twice before the first send completed raises ``RuntimeError``.
        """
        fut = Future()
        self._claim(msg, fut)
        try:
            self._ch_node.send(
                fut, msg, msg._address, msg._port, msg._identity, msg._header, msg._data
            )
        except BaseException:
            msg._fut = None
            raise
        return fut

    def request(self, msg, auto_release=True):
        """Send a message and wait for its answer; returns a :class:`ChirpFuture`.

        ``result()`` is the answer (the first message that arrives with this message's
        identity), released on return unless ``auto_release`` is False;
        ``send_result()`` is what ``send()`` would give. If the request cannot be
        delivered, ``result()`` raises :class:`RequestError` at once (a ``TimeoutError``
        and a ``ConnectionError``). An answer that does not arrive
        within ``TIMEOUT`` fails with ``TimeoutError`` (and is delivered as an ordinary
        message should it arrive later). The identity is registered before sending.
        """
        fut = ChirpFuture(auto_release)
        send_fut = Future()
        fut._send_fut = send_fut
        self._claim(msg, send_fut)
        try:
            self._ch_node.request(
                send_fut, fut, msg, msg._address, msg._port, msg._identity, msg._header, msg._data
            )
        except BaseException:
            msg._fut = None
            raise
        return fut

    def stop(self):
        """Stop: close every connection, fail what is pending, end every thread. Messages
        still held are released. Stopping twice does nothing."""
        with self._ch_stop_lock:
            if self._ch_stopped:
                return
            self._ch_stopped = True
        try:
            self._ch_node.close()
        finally:
            if self._ch_signals:
                _signals_release()
            self._ch_loop._refdec()
