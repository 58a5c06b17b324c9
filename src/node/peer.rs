//! [`Peer`]: a handle bound to one remote, for applications that send many messages to the
//! same node — no table lookup per message, and batches with one completion.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::completion::Completion;
use crate::error::Error;
use crate::frame::{Batch, Pending};
use crate::message::Message;
use crate::outcome::{BatchError, SendError};

use super::remote::Remote;
use super::Node;

/// A handle for sending to one peer, from [`Node::peer`].
///
/// It finds the peer's state once, not per message, and adds
/// [`send_batch`](Peer::send_batch): many messages under one lock and one wake-up of the
/// connection, with **one** completion for the whole batch instead of one per message.
/// Use it for streams — many small messages to the same node — where the per-message
/// completion of [`Node::send`] costs more than the message itself; use `Node::send` for
/// messages to many different peers or when each send's outcome drives what you do next.
///
/// The guarantees are those of `Node::send`, message by message: synchronous mode still
/// sends one message at a time and waits for each one's release (ACK); asynchronous mode
/// completes once the batch was written. The wire protocol is the same.
///
/// A `Peer` is a node handle: cheap to clone, `Send + Sync`, and it keeps the node open
/// like a [`Node`] clone does. Every message sent through it goes to its address,
/// whatever address the message carried.
///
/// ```
/// use libchirp::{queue::Chirp, Config, Message};
///
/// let mut config = Config::default();
/// config.port = 0;
/// config.disable_encryption = true;
/// config.synchronous = false;
/// let inbox = Chirp::new(config.clone())?;
/// let sender = Chirp::new(config)?;
/// let peer = sender.peer(format!("127.0.0.1:{}", inbox.port()).parse()?)?;
/// // 500 messages, one completion: written in order, or handed back with their errors.
/// let batch = (0..500u32).map(|i| Message::new(i.to_be_bytes()));
/// assert_eq!(peer.send_batch(batch).wait()?, 500);
/// let got: Vec<Message> = inbox.iter().take(500).collect();
/// assert!(got.iter().enumerate().all(|(i, m)| m.data() == (i as u32).to_be_bytes()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Peer {
    node: Node,
    addr: SocketAddr,
    /// The remote last found for `addr` (replaced if garbage collection removed it).
    remote: Arc<Mutex<Arc<Remote>>>,
    /// The last batch's list, kept for its capacity: a fresh one of a few hundred
    /// messages is a large allocation, which costs malloc far more than a small one.
    scratch: Arc<Mutex<Vec<Pending>>>,
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peer").field("addr", &self.addr).finish()
    }
}

impl Node {
    /// A handle for sending to the node at `addr` (see [`Peer`]). Nothing is connected
    /// yet: the connection is set up by the first send, as with [`Node::send`].
    ///
    /// Fails with [`Error::InvalidValue`] for port 0.
    pub fn peer(&self, addr: SocketAddr) -> Result<Peer, Error> {
        if addr.port() == 0 {
            return Err(Error::invalid("peer port", 0, "1 ..= 65535"));
        }
        let remote = self.inner.remotes.get_or_create(addr);
        Ok(Peer {
            node: self.clone(),
            addr,
            remote: Arc::new(Mutex::new(remote)),
            scratch: Arc::new(Mutex::new(Vec::new())),
        })
    }
}

impl Peer {
    /// The peer's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one message to the peer, like [`Node::send`] without the lookup.
    pub fn send(&self, mut msg: Message) -> Completion<Result<Message, SendError>> {
        msg.address = Some(self.addr);
        let inner = &self.node.inner;
        if let Err(error) = self.node.check_outgoing(&msg).and_then(|_| {
            if inner.is_closed() {
                Err(Error::Shutdown)
            } else {
                Ok(())
            }
        }) {
            inner.counters.send_failed(&error);
            return Completion::ready(Err(SendError {
                error,
                message: msg,
            }));
        }
        let (completion, lent) = crate::completion::lent_pair(Ok(msg));
        let mut p = Some(Pending::lent(lent));
        inner.enqueue_via(Some(&self.remote), self.addr, &mut p);
        completion
    }

    /// Sends every message of `msgs` to the peer, in order, and completes once each has
    /// an outcome: `Ok(n)` when all `n` were delivered (synchronous mode: released by the
    /// peer; asynchronous mode: written), or a [`BatchError`] that counts the delivered
    /// ones and hands back exactly the others, in order, each with its error.
    ///
    /// The messages are queued together; at most `max_queued` (default 1,024) may wait
    /// for one peer, and the ones beyond fail at once with [`Error::LimitReached`] — so
    /// keep a batch below that, and wait for an earlier batch before the queue would
    /// overflow (two or three batches of a few hundred in flight keep a stream busy). An
    /// empty batch completes at once with `Ok(0)`.
    pub fn send_batch<I>(&self, msgs: I) -> Completion<Result<usize, BatchError>>
    where
        I: IntoIterator<Item = Message>,
    {
        let inner = &self.node.inner;
        let (completion, done) = Completion::pair();
        let closed = inner.is_closed();
        let msgs = msgs.into_iter();
        // The batch keeps its messages; the ones that fail their checks leave a gap.
        let mut messages = Vec::with_capacity(msgs.size_hint().0);
        let mut early = Vec::new();
        for (i, mut msg) in msgs.enumerate() {
            msg.address = Some(self.addr);
            let checked = match self.node.check_outgoing(&msg) {
                Ok(_) if closed => Err(Error::Shutdown),
                other => other.map(|_| ()),
            };
            match checked {
                Ok(()) => messages.push(Some(msg)),
                Err(e) => {
                    inner.counters.send_failed(&e);
                    messages.push(None);
                    early.push((i, msg, e));
                }
            }
        }
        // Another thread sending a batch through a clone of this handle has the scratch
        // list: then this one makes its own.
        let mut queued = self
            .scratch
            .try_lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        queued.reserve(messages.len());
        let batch = Batch::build(done, messages, &mut queued);
        for (i, msg, e) in early {
            batch.failed_early(i, msg, e);
        }
        if !queued.is_empty() {
            inner.enqueue_batch(&self.remote, self.addr, &mut queued);
        }
        if let Ok(mut s) = self.scratch.try_lock() {
            // Keep a modest list only (a huge batch should not pin its memory).
            if queued.capacity() <= 4096 && queued.capacity() > s.capacity() {
                *s = queued;
            }
        }
        // Completes here when nothing was queued (an empty batch: Ok(0)).
        batch.built();
        completion
    }
}
