//! `libchirp._native`: the extension module under the Python package `libchirp`.
//!
//! A thin layer over the [`libchirp`] crate. Each Python `Chirp` owns one [`Node`] and one
//! dispatcher thread (`chirp-py-dispatch`). The node's threads never touch the GIL: what
//! Python must learn of — a received message, a finished send, an answer, a release — is
//! posted to the dispatcher's mailbox by a [`Completion::on_complete`] callback or by the
//! node's sink, and the dispatcher, holding the GIL, builds the Python objects and completes
//! the `concurrent.futures.Future`s. So a busy Python program can delay its own futures but
//! never a socket.
//!
//! The mailbox is bounded by what can be outstanding: received messages by the receive
//! slots (a message holds its slot until Python releases it), completions by the sends,
//! requests and releases Python has started.
//!
//! Every call that can block (starting the node: binding, TLS setup; closing it: joining
//! its threads) runs with the GIL released.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Receiver;
use pyo3::exceptions::{
    PyConnectionError, PyMemoryError, PyOSError, PyRuntimeError, PyTimeoutError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use libchirp::{Completion, Config, Error, Identity, Message, Node};

/// What the node's threads tell Python.
enum Event {
    /// A message arrived (not an answer to a request).
    Received(Message),
    /// A send finished: complete `fut` with the Python message `msg`, or fail it.
    Sent {
        fut: Py<PyAny>,
        msg: Py<PyAny>,
        result: Result<(), Error>,
    },
    /// A request was answered, or failed.
    Answer {
        fut: Py<PyAny>,
        result: Result<Message, Error>,
    },
    /// A release finished (its ACK, if one was due, was written).
    Released {
        fut: Py<PyAny>,
        identity: Identity,
        serial: u32,
    },
}

/// The Python callables that turn a received message into a Python `Message` and hand it on.
struct Handlers {
    /// `factory(identity, serial, header, data, address, port, remote_identity, slot)`.
    factory: Py<PyAny>,
    /// `on_message(msg)`: the pool submits the handler, the queue puts the message.
    on_message: Py<PyAny>,
}

/// Where events go: the dispatcher's mailbox while the node is open. After close an event
/// is handled on the posting thread (then always a Python caller's thread: the node has no
/// threads left).
struct Outbox {
    mail: Mutex<Mail>,
    /// The dispatcher waits here when its mailbox is empty.
    mail_cv: Condvar,
    handlers: Mutex<Option<Handlers>>,
}

/// The dispatcher's mailbox: a plain queue under a mutex, with a condition variable that is
/// signalled only when the dispatcher sleeps. (A channel's receiver spins and yields before
/// it sleeps; at Python's pace the dispatcher waits often and briefly, and that spinning
/// took a core's worth of time from the threads doing the work: a profile of the sending
/// process spent two thirds of its samples in `sched_yield`.)
struct Mail {
    events: VecDeque<Event>,
    /// The dispatcher sleeps on `mail_cv`.
    waiting: bool,
    /// Until close: events are queued for the dispatcher.
    open: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Outbox {
    fn post(&self, ev: Event) {
        let mut mail = lock(&self.mail);
        if mail.open {
            mail.events.push_back(ev);
            let wake = mail.waiting;
            drop(mail);
            if wake {
                self.mail_cv.notify_one();
            }
            return;
        }
        drop(mail);
        Python::attach(|py| self.handle(py, ev));
    }

    /// The dispatcher's wait: the next events (swapped into `batch`), or false once the
    /// mailbox is closed and empty.
    fn next_batch(&self, batch: &mut VecDeque<Event>) -> bool {
        let mut mail = lock(&self.mail);
        while mail.events.is_empty() && mail.open {
            mail.waiting = true;
            mail = self.mail_cv.wait(mail).unwrap_or_else(|e| e.into_inner());
            mail.waiting = false;
        }
        if mail.events.is_empty() {
            return false;
        }
        std::mem::swap(&mut mail.events, batch);
        true
    }

    /// Close: the dispatcher hands over what is queued, then ends.
    fn close(&self) {
        lock(&self.mail).open = false;
        self.mail_cv.notify_all();
    }

    /// Hands one event to Python. Errors raised by Python code are printed (as Python
    /// prints an exception in a thread) and do not stop the dispatcher.
    fn handle(&self, py: Python<'_>, ev: Event) {
        let result = match ev {
            Event::Received(msg) => self.deliver(py, msg),
            Event::Sent { fut, msg, result } => {
                // The message may be sent again as soon as its future is done.
                let msg = msg.into_bound(py);
                if let Err(e) = msg.setattr("_fut", py.None()) {
                    e.print(py);
                }
                match result {
                    Ok(()) => set_result(py, &fut, msg),
                    Err(e) => set_exception(py, &fut, py_error(py, &e, false)),
                }
            }
            Event::Answer { fut, result } => match result {
                Ok(msg) => match self.build(py, msg) {
                    Ok(Some(m)) => set_result(py, &fut, m),
                    Ok(None) => set_exception(py, &fut, py_error(py, &Error::Shutdown, false)),
                    Err(e) => Err(e),
                },
                Err(e) => set_exception(py, &fut, py_error(py, &e, false)),
            },
            Event::Released {
                fut,
                identity,
                serial,
            } => {
                let key = (PyBytes::new(py, identity.as_bytes()), serial);
                match key.into_pyobject(py) {
                    Ok(k) => set_result(py, &fut, k.into_any()),
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = result {
            e.print(py);
        }
    }

    /// The Python message for `msg`, or `None` after close (the handlers are gone).
    fn build<'py>(&self, py: Python<'py>, mut msg: Message) -> PyResult<Option<Bound<'py, PyAny>>> {
        let factory = match &*lock(&self.handlers) {
            Some(h) => h.factory.clone_ref(py),
            None => return Ok(None),
        };
        let (address, port) = match msg.address() {
            Some(a) => (a.ip().to_string(), a.port()),
            None => (Ipv4Addr::UNSPECIFIED.to_string(), 0),
        };
        let identity = PyBytes::new(py, msg.identity().as_bytes());
        let remote = PyBytes::new(py, msg.remote_identity().as_bytes());
        let serial = msg.serial();
        let header = PyBytes::new(py, msg.header());
        let data = PyBytes::new(py, msg.data());
        // The data now lives in Python; the Rust message stays behind only as the slot.
        msg.set_data(Vec::new());
        msg.set_header(Vec::new());
        let slot = Py::new(
            py,
            Slot {
                msg: Mutex::new(Some(msg)),
            },
        )?;
        let m = factory
            .bind(py)
            .call1((identity, serial, header, data, address, port, remote, slot))?;
        Ok(Some(m))
    }

    fn deliver(&self, py: Python<'_>, msg: Message) -> PyResult<()> {
        let Some(m) = self.build(py, msg)? else {
            return Ok(()); // closed: dropping the message released it
        };
        let on_message = match &*lock(&self.handlers) {
            Some(h) => h.on_message.clone_ref(py),
            None => return Ok(()),
        };
        on_message.bind(py).call1((m,))?;
        Ok(())
    }
}

fn set_result(py: Python<'_>, fut: &Py<PyAny>, value: Bound<'_, PyAny>) -> PyResult<()> {
    if future_done(py, fut)? {
        return Ok(()); // cancelled by the caller: nobody wants the value
    }
    fut.bind(py).call_method1("set_result", (value,))?;
    Ok(())
}

fn set_exception(py: Python<'_>, fut: &Py<PyAny>, err: PyErr) -> PyResult<()> {
    if future_done(py, fut)? {
        return Ok(());
    }
    fut.bind(py)
        .call_method1("set_exception", (err.into_value(py),))?;
    Ok(())
}

fn future_done(py: Python<'_>, fut: &Py<PyAny>) -> PyResult<bool> {
    fut.bind(py).call_method0("done")?.is_truthy()
}

/// The Python exception python-chirp raises for this kind of failure, with this crate's
/// message and python-chirp's `ecode` attribute (libchirp's numeric error code).
fn py_error(py: Python<'_>, e: &Error, starting: bool) -> PyErr {
    let msg = e.to_string();
    let (err, code) = match e {
        Error::InvalidValue { .. } | Error::MessageTooLarge { .. } => {
            (PyValueError::new_err(msg), 1)
        }
        Error::AddressInUse { .. } => (PyOSError::new_err(msg), 4),
        Error::CannotConnect { .. } => (PyConnectionError::new_err(msg), 12),
        Error::Timeout { .. } => (PyTimeoutError::new_err(msg), 9),
        Error::Protocol { .. } if starting => (PyRuntimeError::new_err(msg), 3),
        Error::Protocol { .. } => (PyConnectionError::new_err(msg), 3),
        Error::Tls { .. } if starting => (PyRuntimeError::new_err(msg), 6),
        Error::Tls { .. } => (PyConnectionError::new_err(msg), 6),
        Error::Shutdown => (PyConnectionError::new_err(msg), 11),
        // A configured bound on queued messages or connections: resource exhaustion, which
        // python-chirp reports as MemoryError (CH_ENOMEM).
        Error::LimitReached { .. } => (PyMemoryError::new_err(msg), 10),
        Error::Io { .. } => (PyOSError::new_err(msg), 2),
        _ => (PyRuntimeError::new_err(msg), 5),
    };
    // Best effort: an exception that refuses attributes still carries its message.
    let _ = err.value(py).setattr("ecode", code);
    err
}

/// A received message's claim on its receive slot. Dropping it (the Python message was
/// garbage-collected unreleased) releases the slot.
#[pyclass(module = "libchirp._native", name = "Slot", frozen)]
struct Slot {
    msg: Mutex<Option<Message>>,
}

#[pymethods]
impl Slot {
    /// True while the message holds its slot.
    fn has_slot(&self) -> bool {
        lock(&self.msg).as_ref().is_some_and(Message::has_slot)
    }

    /// Frees the slot without an ACK (a handler failed): a synchronous sender times out,
    /// as with python-chirp, where the message stays unreleased.
    fn refuse(&self) {
        if let Some(mut msg) = lock(&self.msg).take() {
            msg.refuse();
        }
    }

    /// Releases the slot: `node`'s dispatcher completes `fut` with `(identity, serial)` once
    /// the ACK (if the sender asked for one) was written; with `fut` None nobody is told
    /// (an automatic release). Returns False when there was no slot to release (the caller
    /// completes its future with None).
    #[pyo3(signature = (node, fut=None))]
    fn release(&self, node: &PyNode, fut: Option<Py<PyAny>>) -> bool {
        let Some(mut msg) = lock(&self.msg).take() else {
            return false;
        };
        if !msg.has_slot() {
            return false;
        }
        let Some(fut) = fut else {
            drop(msg.release());
            return true;
        };
        let outbox = node.outbox.clone();
        msg.release().on_complete(move |(identity, serial)| {
            outbox.post(Event::Released {
                fut,
                identity,
                serial,
            })
        });
        true
    }
}

/// One node: what a Python `Chirp` drives.
#[pyclass(module = "libchirp._native", name = "Node", frozen)]
struct PyNode {
    node: RwLock<Option<Node>>,
    outbox: Arc<Outbox>,
    /// The dispatcher thread and the channel that disconnects when it ends.
    dispatcher: Mutex<Option<(JoinHandle<()>, Receiver<()>)>>,
    identity: [u8; 16],
    port: u16,
    timeout: Duration,
}

fn get<'py, T: pyo3::conversion::FromPyObjectOwned<'py>>(
    cfg: &Bound<'py, PyDict>,
    key: &str,
) -> PyResult<Option<T>> {
    match cfg.get_item(key)? {
        Some(v) if !v.is_none() => Ok(Some(v.extract().map_err(Into::into)?)),
        _ => Ok(None),
    }
}

fn secs(key: &str, v: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(v).map_err(|_| {
        PyValueError::new_err(format!(
            "Config: {key} must be a number of seconds >= 0 ({v})"
        ))
    })
}

/// Builds the crate's config from the dict the Python `Config` hands over (python-chirp's
/// names, in lower case; `None` or absent: the default).
fn config_from(cfg: &Bound<'_, PyDict>) -> PyResult<Config> {
    let mut c = Config::default();
    if let Some(v) = get::<f64>(cfg, "reuse_time")? {
        c.reuse_time = secs("REUSE_TIME", v)?;
    }
    if let Some(v) = get::<f64>(cfg, "timeout")? {
        c.timeout = secs("TIMEOUT", v)?;
    }
    if let Some(v) = get(cfg, "port")? {
        c.port = v;
    }
    if let Some(v) = get(cfg, "backlog")? {
        c.backlog = v;
    }
    if let Some(v) = get(cfg, "max_slots")? {
        c.max_slots = v;
    }
    if let Some(v) = get(cfg, "synchronous")? {
        c.synchronous = v;
    }
    if let Some(v) = get(cfg, "buffer_size")? {
        c.buffer_size = v;
    }
    if let Some(v) = get(cfg, "max_msg_size")? {
        c.max_msg_size = v;
    }
    if let Some(v) = get::<String>(cfg, "bind_v4")? {
        c.bind_v4 = Some(v.parse::<Ipv4Addr>().map_err(|_| {
            PyValueError::new_err(format!("Config: BIND_V4 is not an IPv4 address ({v})"))
        })?);
    }
    if let Some(v) = get::<String>(cfg, "bind_v6")? {
        c.bind_v6 = Some(v.parse::<Ipv6Addr>().map_err(|_| {
            PyValueError::new_err(format!("Config: BIND_V6 is not an IPv6 address ({v})"))
        })?);
    }
    if let Some(v) = get::<Vec<u8>>(cfg, "identity")? {
        let bytes: [u8; 16] = v.as_slice().try_into().map_err(|_| {
            PyValueError::new_err(format!(
                "Config: IDENTITY must be 16 bytes ({} given)",
                v.len()
            ))
        })?;
        c.identity = Identity::from_bytes(bytes);
    }
    if let Some(v) = get::<PathBuf>(cfg, "cert_chain_pem")? {
        c.cert_chain = Some(v);
    }
    if let Some(v) = get::<PathBuf>(cfg, "dh_params_pem")? {
        c.dh_params = Some(v);
    }
    if let Some(v) = get(cfg, "disable_encryption")? {
        c.disable_encryption = v;
    }
    if let Some(v) = get(cfg, "always_encrypt")? {
        c.always_encrypt = v;
    }
    // Python decides when to release (AUTO_RELEASE is the Python layer's business): the
    // crate never releases on its own before the message is dropped.
    c.auto_release = false;
    // As python-chirp: MAX_MSG_SIZE limits what is received; the peer judges what is sent.
    c.check_outgoing_size = false;
    // python-chirp queues without a bound; a burst of sends collected as futures must
    // complete. Bounded still (about a million messages per peer, each the size of its
    // data plus about 200 bytes), so a runaway program fails with MemoryError.
    c.max_queued = 1 << 20;
    Ok(c)
}

/// A Python message's fields as the crate's message.
fn message(
    address: &str,
    port: u16,
    identity: &[u8],
    header: &[u8],
    data: &[u8],
) -> PyResult<Message> {
    let ip: IpAddr = address.parse().map_err(|_| {
        PyValueError::new_err(format!("message address is not an IP address: {address}"))
    })?;
    let id: [u8; 16] = identity
        .try_into()
        .map_err(|_| PyValueError::new_err("message identity must be 16 bytes"))?;
    let mut m = Message::to(SocketAddr::new(ip, port), data);
    m.set_identity(Identity::from_bytes(id));
    if !header.is_empty() {
        m.set_header(header);
    }
    Ok(m)
}

impl PyNode {
    fn current(&self) -> Option<Node> {
        self.node.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Completes `fut` with the outcome of a send. A send that finished already (in
    /// asynchronous mode the sending thread usually writes the message itself) is
    /// completed here, holding the GIL we have: no hop through the dispatcher.
    fn sent(&self, py: Python<'_>, sent: Completion<SendOutcome>, fut: Py<PyAny>, msg: Py<PyAny>) {
        match sent.try_wait() {
            Ok(r) => self.outbox.handle(py, sent_event(fut, msg, r)),
            Err(pending) => {
                let outbox = self.outbox.clone();
                pending.on_complete(move |r| outbox.post(sent_event(fut, msg, r)));
            }
        }
    }
}

/// What the crate's send completes with.
type SendOutcome = Result<Message, libchirp::SendError>;

fn sent_event(fut: Py<PyAny>, msg: Py<PyAny>, r: SendOutcome) -> Event {
    Event::Sent {
        fut,
        msg,
        result: r.map(drop).map_err(|e| e.into_parts().0),
    }
}

#[pymethods]
impl PyNode {
    /// Starts a node with `config` (a dict); received messages are built by `factory` and
    /// handed to `on_message` on the dispatcher thread, holding the GIL.
    #[new]
    fn new(
        py: Python<'_>,
        config: &Bound<'_, PyDict>,
        factory: Py<PyAny>,
        on_message: Py<PyAny>,
    ) -> PyResult<PyNode> {
        let cfg = config_from(config)?;
        let timeout = cfg.timeout;
        let outbox = Arc::new(Outbox {
            mail: Mutex::new(Mail {
                events: VecDeque::new(),
                waiting: false,
                open: true,
            }),
            mail_cv: Condvar::new(),
            handlers: Mutex::new(Some(Handlers {
                factory,
                on_message,
            })),
        });
        let sink_box = outbox.clone();
        let started =
            py.detach(move || Node::start(cfg, move |msg| sink_box.post(Event::Received(msg))));
        let node = match started {
            Ok(n) => n,
            Err(e) => {
                lock(&outbox.handlers).take();
                return Err(py_error(py, &e, true));
            }
        };
        let d_box = outbox.clone();
        let (ended_tx, ended_rx) = crossbeam_channel::bounded::<()>(0);
        let dispatcher = std::thread::Builder::new()
            .name("chirp-py-dispatch".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let _ended = ended_tx;
                dispatch(d_box)
            })
            .map_err(|e| {
                node.close();
                PyRuntimeError::new_err(format!("cannot start the dispatcher thread: {e}"))
            })?;
        Ok(PyNode {
            identity: *node.identity().as_bytes(),
            port: node.port(),
            node: RwLock::new(Some(node)),
            outbox,
            dispatcher: Mutex::new(Some((dispatcher, ended_rx))),
            timeout,
        })
    }

    /// Sends; the dispatcher completes `fut` with `msg` (synchronous: once the peer released
    /// it; asynchronous: once written) or fails it.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        py: Python<'_>,
        fut: Py<PyAny>,
        msg: Py<PyAny>,
        address: &str,
        port: u16,
        identity: &[u8],
        header: &[u8],
        data: &[u8],
    ) -> PyResult<()> {
        let m = message(address, port, identity, header, data)?;
        let Some(node) = self.current() else {
            return set_exception(py, &fut, stopped());
        };
        self.sent(py, node.send(m), fut, msg);
        Ok(())
    }

    /// Sends a request: `send_fut` as [`PyNode::send`], `answer_fut` with the answer (the
    /// identity is registered before the message is queued, so no answer is missed).
    #[allow(clippy::too_many_arguments)]
    fn request(
        &self,
        py: Python<'_>,
        send_fut: Py<PyAny>,
        answer_fut: Py<PyAny>,
        msg: Py<PyAny>,
        address: &str,
        port: u16,
        identity: &[u8],
        header: &[u8],
        data: &[u8],
    ) -> PyResult<()> {
        let m = message(address, port, identity, header, data)?;
        let Some(node) = self.current() else {
            set_exception(py, &send_fut, stopped())?;
            return set_exception(py, &answer_fut, stopped());
        };
        let (sent, answer) = node.request_with_send(m);
        self.sent(py, sent, send_fut, msg);
        let outbox = self.outbox.clone();
        answer.on_complete(move |result| {
            outbox.post(Event::Answer {
                fut: answer_fut,
                result,
            })
        });
        Ok(())
    }

    /// The node's identity (16 bytes).
    fn identity<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.identity)
    }

    /// The port the node listens on (the bound one when the config said 0).
    #[getter]
    fn port(&self) -> u16 {
        self.port
    }

    /// Send timeout in seconds, as the node runs with it.
    #[getter]
    fn timeout(&self) -> f64 {
        self.timeout.as_secs_f64()
    }

    /// True until [`PyNode::close`].
    #[getter]
    fn running(&self) -> bool {
        self.current().is_some_and(|n| !n.is_closed())
    }

    /// Number of the node's threads (connections' readers and writers, accept, timers).
    fn thread_count(&self) -> usize {
        self.current().map_or(0, |n| n.thread_count())
    }

    /// Closes the node: every thread and socket ends, every pending send, request and
    /// release is completed (failed where unfinished), then the dispatcher ends. Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let node = self.node.write().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(node) = node {
            py.detach(|| node.close());
        }
        // The dispatcher ends when it has handed over everything queued before this.
        self.outbox.close();
        let handle = lock(&self.dispatcher).take();
        if let Some(h) = handle {
            if h.0.thread().id() == std::thread::current().id() {
                // Stopped from Python code the dispatcher runs (a future's done-callback):
                // it ends by itself when that returns.
                lock(&self.outbox.handlers).take();
                return Ok(());
            }
            let ok = py.detach(|| join_within(h, self.timeout.max(Duration::from_secs(5))));
            if !ok {
                return Err(PyRuntimeError::new_err(
                    "the chirp dispatcher thread did not end after close",
                ));
            }
        }
        // Break the cycle Python objects -> node -> handlers -> Python objects.
        lock(&self.outbox.handlers).take();
        Ok(())
    }
}

fn stopped() -> PyErr {
    PyConnectionError::new_err("this chirp instance is stopped: nothing can be sent any more")
}

/// Joins the dispatcher once it reported its end, giving up after `limit` (the thread is
/// then left to finish on its own).
fn join_within((h, ended): (JoinHandle<()>, Receiver<()>), limit: Duration) -> bool {
    // The sender is dropped as the thread ends, whether it returned or panicked; what is
    // left of the thread then is its exit.
    match ended.recv_timeout(limit) {
        Err(crossbeam_channel::RecvTimeoutError::Timeout) => false,
        _ => h.join().is_ok(),
    }
}

/// The dispatcher: waits for events without the GIL, then hands everything queued to Python
/// holding it (the interpreter still switches to other Python threads between bytecodes
/// when they wait for the GIL). It stays attached to the
/// interpreter for its whole life and only detaches to wait: attaching a thread afresh for
/// every event would create and destroy a Python thread state each time.
fn dispatch(outbox: Arc<Outbox>) {
    let mut batch = VecDeque::new();
    Python::attach(|py| {
        while py.detach(|| outbox.next_batch(&mut batch)) {
            for ev in batch.drain(..) {
                outbox.handle(py, ev);
            }
        }
    });
}

/// The extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyNode>()?;
    m.add_class::<Slot>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
