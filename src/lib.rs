//! # libchirp — message-passing for everyone
//!
//! A blocking, thread-per-connection implementation of [libchirp](https://github.com/concretecloud/chirp)
//! 1.2.1, byte-compatible with it on the wire.
//!
//! You send a message to `address:port`; the node sets the connection up, reuses it and
//! garbage-collects it when idle. Received messages are delivered to your code and occupy
//! a *slot* until released.
//!
//! ## Modes of operation
//!
//! * **Synchronous** (default): a send completes when the remote application released the
//!   message (its ACK arrived), so nothing is lost without an error. One message is in flight
//!   per peer, and each connection has one slot.
//! * **Asynchronous**: a send completes when the message was handed to the operating system.
//!   Many messages are in flight; each connection has 16 slots by default.
//!
//! ## Slots and backpressure
//!
//! Each connection has `max_slots` receive slots. A received message holds one until it is
//! released ([`Message::release`], or by dropping it). When all are taken the connection's
//! reader stops reading, TCP flow control pushes back, and the sender slows down.
//!
//! ## Concurrency
//!
//! Every connection has a reader thread and a writer thread. Sends return a [`Completion`]
//! immediately. On an idle connection the sending thread writes the frame itself with one
//! non-blocking system call (no thread hand-off); while a write is under way, frames queue
//! and the active writer takes all of them into its next write; the writer thread only
//! finishes what the socket could not take at once. Sends made by a handler on a reader
//! thread ([`Node::start_inline`]) are gathered while that thread works through a read
//! buffer and written in about four writes of at most four frames each, so replies to a
//! burst share system calls while the peer already gets work. The [`pool`] interface runs your handler on a fixed thread pool; the [`queue`] interface
//! hands messages out through a blocking channel.
//!
//! ## Differences from C libchirp
//!
//! Deliberate divergences (all invisible on the wire): the 16-byte configured identity is
//! copied whole; every message has its own deadline; accepted connections must complete the
//! handshake within the connect timeout; the size check uses 64-bit arithmetic and a message
//! too large to send fails at once; queued ACKs dropped with a failing connection still
//! complete their release; `always_encrypt` is per node; no signal handlers are installed;
//! port 0 binds an ephemeral port; received messages are released when dropped.
//!
//! ## Example
//!
//! ```
//! use libchirp::{Config, Message, Node};
//!
//! let mut config = Config::default();
//! config.port = 0;
//! config.disable_encryption = true;
//! let node = Node::start(config, |msg| println!("got {:?}", msg.data()))?;
//! println!("listening on port {}", node.port());
//! node.close();
//! # Ok::<(), libchirp::Error>(())
//! ```

#![deny(missing_docs)]

mod completion;
mod config;
mod connection;
mod error;
mod message;
mod node;
pub mod pki;
pub mod pool;
pub mod queue;
mod rand;
mod sys;
mod tls;
pub mod wire;

pub use completion::{Completer, Completion};
pub use config::{Config, Effective};
pub use error::{Error, Result, SendError};
pub use message::{Identity, Message};
pub use node::Node;

/// The README's example, compiled and run as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
