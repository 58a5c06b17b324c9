//! # libchirp — message-passing for everyone
//!
//! A blocking, thread-per-connection implementation of [libchirp](https://github.com/concretecloud/chirp)
//! 1.2.1, byte-compatible with it on the wire (plaintext and TLS), so a Rust node can join an
//! existing libchirp deployment.
//!
//! You send a message to `address:port`; the node sets the connection up, reuses it and
//! garbage-collects it when idle. Received messages are delivered to your code and occupy
//! a *slot* until released. Every send, request and release returns a one-shot
//! [`Completion`] that you `wait()` on (or `wait_timeout`, `wait_deadline`, `try_wait`).
//!
//! This page is a guide in eight steps: [receiving](#three-ways-to-receive),
//! [modes](#synchronous-and-asynchronous-mode), [streams](#streams-many-messages-to-one-peer),
//! [slots](#slots-and-backpressure),
//! [TLS](#tls), [errors](#errors), [threads](#threads-and-what-a-handler-may-do) and
//! [observing a node](#observing-a-node).
//! The wire protocol, the connection rules and where this crate deliberately differs from
//! C libchirp are described in `docs/PROTOCOL.md` (in the package and the repository).
//!
//! ## Three ways to receive
//!
//! **A handler on a thread pool** ([`pool::Chirp`]): your closure runs on one of a fixed
//! number of threads and may block; the message is released when it returns. The node is
//! also an executor (`submit`, `map`, `shutdown`).
//!
//! ```
//! use libchirp::{pool::Chirp, Config, Message};
//!
//! let mut config = Config::default();
//! config.port = 0;                   // any free port
//! config.disable_encryption = true;  // see "TLS" below
//! let printer = Chirp::new(config.clone(), |_chirp, msg| {
//!     println!("got {:?}", String::from_utf8_lossy(msg.data()));
//!     Ok(())
//! })?;
//! let sender = Chirp::new(config, |_, _| Ok(()))?;
//! let to = format!("127.0.0.1:{}", printer.port()).parse()?;
//! sender.send(Message::to(to, b"hello")).wait()?; // completes once the handler returned
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! **A queue** ([`queue::Chirp`]): take messages when you want them with `recv`,
//! `recv_timeout`, `try_recv` or `iter`.
//!
//! ```
//! use std::time::Duration;
//! use libchirp::{queue::Chirp, Config, Message};
//!
//! let mut config = Config::default();
//! config.port = 0;
//! config.disable_encryption = true;
//! let inbox = Chirp::new(config.clone())?;
//! let sender = Chirp::new(config)?;
//! let to = format!("127.0.0.1:{}", inbox.port()).parse()?;
//! let sending = sender.send(Message::to(to, b"hello"));
//! let msg = inbox.recv_timeout(Duration::from_secs(5))?;
//! assert_eq!(msg.data(), b"hello");
//! sending.wait()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! **A closure on the connection's reader thread** ([`Node::start`], or
//! [`Node::start_inline`] when the closure needs to send): the fastest path, like C
//! libchirp's receive callback. It must not block — in particular it must not wait on a
//! completion — or that connection stops reading.
//!
//! ```
//! use libchirp::{Config, Message, Node};
//!
//! let mut config = Config::default();
//! config.port = 0;
//! config.disable_encryption = true;
//! // An echo: release the request, then send it back without waiting.
//! let echo = Node::start_inline(config.clone(), |node, mut msg| {
//!     let _ = msg.release();
//!     drop(node.send(msg));
//! })?;
//! let client = Node::start(config, drop)?;
//! let to = format!("127.0.0.1:{}", echo.port()).parse()?;
//! let answer = client.request(Message::to(to, b"ping")).wait()?;
//! assert_eq!(answer.data(), b"ping");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Synchronous and asynchronous mode
//!
//! * **Synchronous** (the default): a send completes when the remote application released the
//!   message (its ACK arrived), so nothing is lost without an error. One message is in flight
//!   per peer, and each connection has one slot.
//! * **Asynchronous** (`synchronous = false`): a send completes when the message was handed to
//!   the operating system — not when it was delivered. Many messages are in flight; each
//!   connection has 16 slots by default.
//!
//! ```
//! use libchirp::{queue::Chirp, Config, Message};
//!
//! let mut config = Config::default();
//! config.port = 0;
//! config.disable_encryption = true;
//! config.synchronous = false;
//! let inbox = Chirp::new(config.clone())?;
//! let sender = Chirp::new(config)?;
//! let to = format!("127.0.0.1:{}", inbox.port()).parse()?;
//! // Sixteen sends in flight at once; each completes once written.
//! let sends: Vec<_> = (0..16u8).map(|i| sender.send(Message::to(to, vec![i]))).collect();
//! for s in sends {
//!     s.wait()?;
//! }
//! let got: Vec<u8> = inbox.iter().take(16).map(|m| m.data()[0]).collect();
//! assert_eq!(got, (0..16).collect::<Vec<u8>>()); // in order
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Streams: many messages to one peer
//!
//! Every [`Node::send`] finds the peer and returns its own completion. For a stream of
//! messages to the same node, take a [`Peer`] handle once with [`Node::peer`] and send
//! batches with [`Peer::send_batch`]: the messages are queued together and the whole batch
//! has **one** completion, `Ok(n)` or a [`BatchError`] handing back, in order, exactly the
//! messages that were not delivered. Same guarantees, same wire protocol; one-way streams
//! of small messages run about three times as fast as with `send()`. Use `send()` when
//! messages go to many peers or each outcome matters on its own.
//!
//! Data of up to [`Payload::INLINE`] (16) bytes given as a slice or an array is stored
//! inside the [`Message`], without a heap allocation, and a small received message needs
//! none either: for small messages, build them from slices rather than fresh `Vec`s.
//!
//! ```
//! use libchirp::{queue::Chirp, Config, Message};
//!
//! let mut config = Config::default();
//! config.port = 0;
//! config.disable_encryption = true;
//! config.synchronous = false;
//! let inbox = Chirp::new(config.clone())?;
//! let node = Chirp::new(config)?;
//! let peer = node.peer(format!("127.0.0.1:{}", inbox.port()).parse()?)?;
//! for chunk in 0..4u8 {
//!     // Two bytes from an array: kept inside the message, no heap allocation.
//!     let batch = (0..250u8).map(|i| Message::new([chunk, i]));
//!     match peer.send_batch(batch).wait() {
//!         Ok(n) => assert_eq!(n, 250),
//!         Err(failed) => eprintln!("{failed}; {} to retry", failed.failures().len()),
//!     }
//! }
//! assert_eq!(inbox.iter().take(1000).count(), 1000);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Slots and backpressure
//!
//! Each connection has `max_slots` receive slots. A received message holds one until it is
//! released ([`Message::release`], or by dropping it). When all are taken the connection's
//! reader stops reading, TCP flow control pushes back, and the sender slows down. A
//! synchronous sender therefore waits for your application, not just for the network:
//!
//! ```
//! use std::time::Duration;
//! use libchirp::{queue::Chirp, Config, Message};
//!
//! let mut config = Config::default();
//! config.port = 0;
//! config.disable_encryption = true;
//! config.auto_release = false;       // we release ourselves
//! let inbox = Chirp::new(config.clone())?;
//! let sender = Chirp::new(config)?;
//! let to = format!("127.0.0.1:{}", inbox.port()).parse()?;
//! let sending = sender.send(Message::to(to, b"work"));
//! let mut msg = inbox.recv_timeout(Duration::from_secs(5))?;
//! // Not released yet: the synchronous send is still waiting.
//! let sending = sending.wait_timeout(Duration::from_millis(100)).unwrap_err();
//! msg.release().wait();              // the ACK goes out now ...
//! sending.wait()?;                   // ... and the send completes
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## TLS
//!
//! Connections are mutually authenticated TLS except on loopback (`127.0.0.1`, `::1`),
//! unless `disable_encryption` is set; `always_encrypt` encrypts loopback too. Give every
//! node `cert_chain` — one PEM file with its private key, its certificate and the CA
//! certificate(s), every certificate in it trusted — and `dh_params`. A peer without a
//! certificate from a trusted CA is refused. At start the node refuses its own certificate
//! when it is expired, not yet valid or not issued by a CA in the file, and warns when it
//! expires within [`Config::cert_expiry_warning`]; [`Stats::certificate`] shows its expiry
//! and [`Node::reload_tls`] puts a renewed one in place without a restart.
//! `pki::TestPki` (cargo feature `pki`, for tests and trials) makes a throwaway PKI:
//!
//! ```
//! use libchirp::{pki::TestPki, queue::Chirp, Config, Message};
//! use std::time::Duration;
//!
//! let dir = std::env::temp_dir().join(format!("chirp-doc-pki-{}", std::process::id()));
//! let pki = TestPki::generate(&dir)?;
//! let mut config = Config::default();
//! config.port = 0;
//! config.cert_chain = Some(pki.node_v3.clone());
//! config.dh_params = Some(pki.dh_params.clone());
//! config.always_encrypt = true;      // encrypt even on loopback, for this example
//! let inbox = Chirp::new(config.clone())?;
//! let sender = Chirp::new(config)?;
//! let to = format!("127.0.0.1:{}", inbox.port()).parse()?;
//! let sending = sender.send(Message::to(to, b"secret"));
//! assert_eq!(inbox.recv_timeout(Duration::from_secs(10))?.data(), b"secret");
//! sending.wait()?;
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Errors
//!
//! [`Error`] is one flat, `#[non_exhaustive]` enum with a variant per kind of failure. A
//! failed send gives a [`SendError`], which says why and hands the message back, so nothing
//! is lost: you can retry it, send it elsewhere or log it.
//!
//! ```
//! use libchirp::{Config, Error, Message, Node};
//!
//! let mut config = Config::default();
//! config.port = 0;
//! config.disable_encryption = true;
//! let node = Node::start(config, drop)?;
//! // A port nobody listens on.
//! let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
//! let failed = node.send(Message::to(closed, b"hello")).wait().unwrap_err();
//! assert!(matches!(failed.error(), Error::CannotConnect { .. }));
//! let message = failed.into_message();   // nothing lost
//! assert_eq!(message.data(), b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Each connection failure fails exactly one queued message (the one in flight, or else the
//! oldest queued one); the others wait for the next connection. But no send waits longer
//! than 2.5 × `timeout` after its peer last made progress (a handshake, bytes taken or sent,
//! an ACK): a peer that is unreachable, stalled or too slow fails everything queued for it
//! with [`Error::Timeout`]. [`Node::close`] completes everything still pending with
//! [`Error::Shutdown`].
//!
//! ## Threads, and what a handler may do
//!
//! Every connection has a reader thread; its writer thread starts only when a write could
//! not finish at once, and ends again after a short idle spell. Sends return a
//! [`Completion`] immediately. On an idle connection the sending thread writes the frame
//! itself with one non-blocking system call (no thread hand-off); while a write is under
//! way, frames queue and the active writer takes all of them into its next write; the
//! writer thread only finishes what the socket could not take at once. Sends made by a
//! handler on a reader thread ([`Node::start_inline`]) are gathered while that thread works
//! through a read buffer and written in about four writes (of at most 64 frames each), so
//! replies to a burst share system calls while the peer already gets work. The [`pool`]
//! interface runs your handler on a fixed thread pool; the [`queue`] interface hands
//! messages out through a blocking channel.
//!
//! When all of a connection's slots are taken, the reader *parks* further messages (up to
//! the read buffer's size) and goes on reading, so ACK and NOOP frames behind them are still
//! seen; a release delivers the oldest parked message — on the thread that released the
//! slot. So a [`Node::start`] handler normally runs on the reader thread, but after
//! backpressure it may run on the releasing thread. Beyond the park's bound the reader stops
//! reading and TCP flow control pushes back.
//!
//! **The trap: waiting for your answer while holding the request.** In synchronous mode a
//! send completes when the peer *released* the message. If your code answers a request and
//! waits for that answer's send while it still holds the request (its slot), it waits on the
//! peer; if the peer — like libchirp's own queue examples — waits for its request's send
//! before it reads your answer, it waits on you. Both time out. The safe patterns: release
//! the request first (`msg.release()`, then send and wait), or answer without waiting
//! (`drop(node.send(answer))`). The queue interface with `auto_release` (the default) hands
//! messages out already released; the pool interface with `auto_release` holds the slot
//! until your handler returns, so there, do not wait.
//!
//! ## Observing a node
//!
//! [`Node::stats`] is a cheap snapshot of counters since start — connections accepted,
//! dialed, refused and closed (each by reason), messages, bytes and ACKs each way, failed
//! sends by kind, requests answered and timed out — and of gauges: connections, connections
//! in the handshake, messages queued and in flight, slots in use, threads. The counters are
//! relaxed atomics kept where they change, so observing costs the per-message path nothing.
//! [`Node::remotes`] describes every peer; [`Node::events`] is a bounded channel of
//! [`Event`]s as connections come, go or are refused (a slow reader never slows the node:
//! what does not fit is dropped and counted). With the cargo feature `metrics`, the same
//! figures are published every second through the [`metrics`](https://docs.rs/metrics)
//! facade (`chirp_*_total` counters, `chirp_*` gauges), for any exporter. `chirp echo
//! --stats 5` prints them as a line every five seconds.
//!
//! ```
//! use std::time::Duration;
//! use libchirp::{queue::Chirp, Config, Event, Message};
//!
//! let mut config = Config::default();
//! config.port = 0;
//! config.disable_encryption = true;
//! let server = Chirp::new(config.clone())?;
//! let events = server.events();
//! let client = Chirp::new(config)?;
//! let to = format!("127.0.0.1:{}", server.port()).parse()?;
//! let sending = client.send(Message::to(to, b"observed"));
//! server.recv_timeout(Duration::from_secs(5))?;
//! sending.wait()?;
//! let s = server.stats();
//! assert_eq!((s.accepted, s.msgs_in, s.bytes_in, s.acks_out), (1, 1, 8, 1));
//! let first = events.recv_timeout(Duration::from_secs(5)).ok_or("no event within 5 s")?;
//! assert!(matches!(first, Event::Connected { incoming: true, .. }));
//! for remote in server.remotes() {
//!     println!("{} {:?}: {} in, {} out", remote.address, remote.identity, remote.msgs_in, remote.msgs_out);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## The public API in one place
//!
//! Covered by semver (a change is a breaking release unless it only adds):
//!
//! * nodes: [`Node`] (with [`Peer`] for one remote), and the two receiving front ends
//!   [`pool::Chirp`] and [`queue::Chirp`];
//! * configuration: [`Config`] and what a node made of it, [`Effective`];
//! * messages: [`Message`], [`Identity`], [`Payload`];
//! * outcomes: [`Completion`] and [`Completer`], [`Error`] with its causes [`TlsError`],
//!   [`ProtocolError`] and [`FrameError`], [`SendError`] and [`BatchError`] (both hand messages back), and
//!   [`Result`];
//! * observing: [`Stats`], [`RemoteInfo`], [`Event`] and the [`Events`] stream,
//!   [`Certificate`].
//!
//! Outside the promise: [`wire`] (the frame codec, for fuzzers and protocol tools) and
//! `pki` (a throwaway certificate authority for tests, only with the cargo feature `pki`).
//! Items marked `#[doc(hidden)]` are diagnostics for the crate's own tests. The repository
//! keeps a snapshot of this surface (`tests/public-api.txt`), and CI fails when the API
//! changes without it.
//!
//! ## Differences from C libchirp
//!
//! Deliberate divergences (all invisible on the wire): the 16-byte configured identity is
//! copied whole; every message has its own deadline; accepted connections must complete the
//! handshake within the connect timeout; the size check uses 64-bit arithmetic and a message
//! too large to send fails at once; queued ACKs dropped with a failing connection still
//! complete their release; `always_encrypt` is per node; no signal handlers are installed;
//! port 0 binds an ephemeral port; received messages are released when dropped; a dialed
//! connection stays with the remote it was dialed for. `docs/PROTOCOL.md` gives the reasons.

#![deny(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]

mod burst;
mod completion;
mod config;
mod connection;
mod error;
mod frame;
mod message;
mod node;
mod outcome;
#[cfg(feature = "pki")]
pub mod pki;
pub mod pool;
mod proto;
pub mod queue;
mod rand;
mod sync;
mod sys;
mod tls;
pub mod wire;

pub use completion::{Completer, Completion};
pub use config::{Config, Effective};
pub use error::{Error, FrameError, ProtocolError, Result, TlsError};
pub use message::{Identity, Message, Payload};
pub use node::{Event, Events, Node, Peer, RemoteInfo, Stats};
pub use outcome::{BatchError, SendError};
pub use tls::Certificate;

/// The README's example, compiled and run as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
