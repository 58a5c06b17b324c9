//! The queue interface: received messages wait in a channel until you take them — the shape
//! of libchirp's Python `libchirp.queue`.
//!
//! **Backpressure.** A message waiting in the queue still holds its connection slot, so a
//! peer can have at most `max_slots` messages waiting per connection (1 in synchronous
//! mode); after that its connection stops being read until you take one. With
//! `auto_release` on (the default) a message is released *when it is handed out* by
//! `recv`, as libchirp's queue does: a synchronous sender's send completes at that moment,
//! before you processed the message. Turn `auto_release` off to release it yourself
//! ([`Message::release`] or drop) once you are done with it.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use libchirp::{queue::Chirp, Config, Message};
//!
//! let mut config = Config::default();
//! config.port = 0;
//! config.disable_encryption = true;
//! let receiver = Chirp::new(config.clone())?;
//! let sender = Chirp::new(config)?;
//! let to = format!("127.0.0.1:{}", receiver.port()).parse()?;
//! let sending = sender.send(Message::to(to, b"hello"));
//! let msg = receiver.recv_timeout(Duration::from_secs(5))?;
//! assert_eq!(msg.data(), b"hello");
//! sending.wait()?; // released when handed out (auto_release)
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

use crate::config::Config;
use crate::error::Error;
use crate::message::Message;
use crate::node::Node;

/// A node whose received messages are taken from a queue. Dereferences to [`Node`] for
/// `send`, `request`, `port`, `identity` and `close`.
pub struct Chirp {
    node: Node,
    rx: Receiver<Message>,
    tx: Arc<Mutex<Option<Sender<Message>>>>,
    auto_release: bool,
}

impl Chirp {
    /// Starts a node whose received messages are queued.
    pub fn new(config: Config) -> Result<Chirp, Error> {
        let auto_release = config.auto_release;
        let (tx, rx) = crossbeam_channel::unbounded();
        let tx = Arc::new(Mutex::new(Some(tx)));
        let sink_tx = tx.clone();
        let node = Node::start(config, move |msg| {
            let guard = sink_tx.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(tx) = guard.as_ref() {
                // Cannot fail while we hold the receiver; if it did, the message is released.
                let _ = tx.send(msg);
            }
        })?;
        Ok(Chirp {
            node,
            rx,
            tx,
            auto_release,
        })
    }

    /// The underlying node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    fn hand_out(&self, mut msg: Message) -> Message {
        if self.auto_release {
            drop(msg.release());
        }
        msg
    }

    /// Waits for the next message. Fails with [`Error::Shutdown`] once the node is closed
    /// and the queue is empty.
    pub fn recv(&self) -> Result<Message, Error> {
        self.rx
            .recv()
            .map(|m| self.hand_out(m))
            .map_err(|_| Error::Shutdown)
    }

    /// Waits at most `timeout` for the next message.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Message, Error> {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.recv_deadline(deadline),
            None => self.recv(),
        }
    }

    /// Waits until `deadline` for the next message.
    pub fn recv_deadline(&self, deadline: Instant) -> Result<Message, Error> {
        match self.rx.recv_deadline(deadline) {
            Ok(m) => Ok(self.hand_out(m)),
            Err(RecvTimeoutError::Timeout) => Err(Error::timeout("no message arrived in time")),
            Err(RecvTimeoutError::Disconnected) => Err(Error::Shutdown),
        }
    }

    /// Takes a message if one is waiting: `Ok(None)` when the queue is empty.
    pub fn try_recv(&self) -> Result<Option<Message>, Error> {
        match self.rx.try_recv() {
            Ok(m) => Ok(Some(self.hand_out(m))),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(Error::Shutdown),
        }
    }

    /// Number of messages waiting.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// True when no message is waiting.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Iterates over received messages until the node is closed.
    pub fn iter(&self) -> impl Iterator<Item = Message> + '_ {
        std::iter::from_fn(move || self.recv().ok())
    }

    /// Closes the node. Messages still queued are released; `recv` then fails with
    /// [`Error::Shutdown`].
    pub fn close(&self) {
        self.node.close();
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        while self.rx.try_recv().is_ok() {}
    }
}

impl Deref for Chirp {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.node
    }
}

impl Drop for Chirp {
    fn drop(&mut self) {
        self.close();
    }
}

impl std::fmt::Debug for Chirp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("queue::Chirp")
            .field("node", &self.node)
            .field("waiting", &self.rx.len())
            .finish()
    }
}
