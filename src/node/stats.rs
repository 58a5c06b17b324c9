//! What an operator can read off a running node: [`Stats`] (counters since start and gauges
//! now), [`RemoteInfo`] per peer, and [`Event`]s as connections come and go.
//!
//! Counters are relaxed atomics kept where the event happens — traffic in each connection,
//! the rest in the node — so observing costs nothing on the per-message path; a snapshot adds
//! the live connections' traffic to what closed connections left behind.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::error::Error;
use crate::message::Identity;
use crate::tls::Certificate;

/// A snapshot of a node's counters (since it started) and gauges (now).
///
/// Bytes are payload bytes (header + data) of data messages.
///
/// ```
/// use libchirp::{Config, Node};
/// let mut config = Config::default();
/// config.port = 0;
/// config.disable_encryption = true;
/// let node = Node::start(config, drop)?;
/// let stats = node.stats();
/// assert_eq!(stats.connections, 0);
/// assert_eq!(stats.msgs_in, 0);
/// # Ok::<(), libchirp::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Gauge: connections now (accepted and dialed, set up or not).
    pub connections: u64,
    /// Gauge: accepted connections now still in their handshake.
    pub handshaking: u64,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections dialed since start.
    pub dialed: u64,
    /// Refused: `max_connections` reached (accepted sockets closed at once, and dials).
    pub refused_capacity: u64,
    /// Refused: `max_handshaking` reached.
    pub refused_handshaking: u64,
    /// Refused: an accepted connection's TLS handshake failed (a stranger, or plaintext).
    pub refused_tls: u64,
    /// Refused: an accepted connection broke the protocol, or closed, before its handshake.
    pub refused_protocol: u64,
    /// Refused: an accepted connection did not complete its handshake in time.
    pub refused_handshake_timeout: u64,
    /// Refused or closed because a thread (or another resource) for the connection could
    /// not be had, accepted, dialed or established.
    pub refused_resources: u64,
    /// Failed `accept` calls (out of descriptors, memory, ...); the accept loop backs off.
    pub accept_errors: u64,
    /// Closed: the peer closed or reset the connection.
    pub closed_peer: u64,
    /// Closed: a timeout (no ACK, a write or a frame that made no progress, a connect).
    pub closed_timeout: u64,
    /// Closed: garbage-collected (idle longer than the reuse time).
    pub closed_gc: u64,
    /// Closed: the peer broke the protocol (including a message over `max_msg_size`).
    pub closed_protocol: u64,
    /// Closed: a TLS error on an established connection.
    pub closed_tls: u64,
    /// Closed: the node closed.
    pub closed_node: u64,
    /// Closed for another reason (a dial that could not connect, ...).
    pub closed_other: u64,
    /// Data messages received.
    pub msgs_in: u64,
    /// Data messages written.
    pub msgs_out: u64,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Payload bytes written.
    pub bytes_out: u64,
    /// ACKs received.
    pub acks_in: u64,
    /// ACKs written.
    pub acks_out: u64,
    /// Sends that failed, all kinds together (the fields below split them).
    pub sends_failed: u64,
    /// Sends failed with a timeout.
    pub sends_failed_timeout: u64,
    /// Sends failed because the peer could not be reached.
    pub sends_failed_cannot_connect: u64,
    /// Sends failed with a protocol or TLS error of their connection.
    pub sends_failed_connection: u64,
    /// Sends failed because the node closed or the remote was garbage-collected.
    pub sends_failed_shutdown: u64,
    /// Sends refused by a limit (`max_queued`, `max_connections`).
    pub sends_failed_limit: u64,
    /// Sends refused for another reason (too large, invalid address, ...).
    pub sends_failed_other: u64,
    /// Sends refused because the remote's queue held `max_queued` messages.
    pub queue_full: u64,
    /// Remotes dropped as soon as the peer's (accepted) connection closed with nothing
    /// pending, instead of waiting for garbage collection.
    pub remotes_released: u64,
    /// Requests whose answer arrived.
    pub requests_answered: u64,
    /// Requests that timed out.
    pub requests_timed_out: u64,
    /// Gauge: messages waiting in send queues.
    pub queued: u64,
    /// Gauge: synchronous messages written and waiting for their ACK.
    pub in_flight: u64,
    /// Gauge: received messages holding a slot (not released yet).
    pub slots_in_use: u64,
    /// Gauge: threads of the node.
    pub threads: u64,
    /// Events that did not fit the events channel (nobody read them in time).
    pub events_dropped: u64,
    /// The certificate new connections present (None without encryption): watch
    /// `not_after`, and renew and [reload](crate::Node::reload_tls) before it passes.
    pub certificate: Option<Certificate>,
}

/// One peer as the node sees it, from [`Node::remotes`](crate::Node::remotes).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteInfo {
    /// The peer's address and the port it listens on.
    pub address: SocketAddr,
    /// The peer's identity from its handshake (None while not connected).
    pub identity: Option<Identity>,
    /// Whether the current connection is encrypted.
    pub encrypted: bool,
    /// The certificate the peer presented on the current connection (encrypted
    /// connections only): its subject and expiry.
    pub peer_certificate: Option<Certificate>,
    /// When the current connection completed its handshake (None while not connected).
    pub connected_since: Option<SystemTime>,
    /// Last use: a frame written, or data or a NOOP received.
    pub last_activity: SystemTime,
    /// Messages waiting in the send queue.
    pub queued: u64,
    /// Synchronous messages written and waiting for their ACK (0 or 1).
    pub in_flight: u64,
    /// Received messages of the current connection holding a slot.
    pub slots_in_use: u64,
    /// Data messages received on the current connection.
    pub msgs_in: u64,
    /// Data messages written on the current connection.
    pub msgs_out: u64,
    /// Payload bytes received on the current connection.
    pub bytes_in: u64,
    /// Payload bytes written on the current connection.
    pub bytes_out: u64,
}

/// A connection came, went or was refused; from [`Node::events`](crate::Node::events).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A connection completed its handshake.
    Connected {
        /// The peer's address and the port it listens on.
        address: SocketAddr,
        /// The peer's identity.
        identity: Identity,
        /// Whether the connection is encrypted.
        encrypted: bool,
        /// Whether the peer dialed us.
        incoming: bool,
    },
    /// An established connection ended.
    Disconnected {
        /// The peer's address and the port it listens on.
        address: SocketAddr,
        /// The peer's identity.
        identity: Identity,
        /// Why it ended.
        reason: Error,
    },
    /// An accepted connection was refused (a limit, a failed handshake, no thread).
    Refused {
        /// The TCP address it came from.
        address: SocketAddr,
        /// Why.
        reason: Error,
    },
}

/// The node's own counters (traffic lives in the connections).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) dialed: AtomicU64,
    pub(crate) refused_capacity: AtomicU64,
    pub(crate) refused_handshaking: AtomicU64,
    pub(crate) refused_tls: AtomicU64,
    pub(crate) refused_protocol: AtomicU64,
    pub(crate) refused_handshake_timeout: AtomicU64,
    pub(crate) refused_resources: AtomicU64,
    pub(crate) accept_errors: AtomicU64,
    pub(crate) closed_peer: AtomicU64,
    pub(crate) closed_timeout: AtomicU64,
    pub(crate) closed_gc: AtomicU64,
    pub(crate) closed_protocol: AtomicU64,
    pub(crate) closed_tls: AtomicU64,
    pub(crate) closed_node: AtomicU64,
    pub(crate) closed_other: AtomicU64,
    pub(crate) sends_failed_timeout: AtomicU64,
    pub(crate) sends_failed_cannot_connect: AtomicU64,
    pub(crate) sends_failed_connection: AtomicU64,
    pub(crate) sends_failed_shutdown: AtomicU64,
    pub(crate) sends_failed_limit: AtomicU64,
    pub(crate) sends_failed_other: AtomicU64,
    pub(crate) queue_full: AtomicU64,
    pub(crate) remotes_released: AtomicU64,
    pub(crate) requests_answered: AtomicU64,
    pub(crate) requests_timed_out: AtomicU64,
}

/// Adds one to a counter.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Counters {
    /// A send failed with `e`.
    pub(crate) fn send_failed(&self, e: &Error) {
        bump(match e {
            Error::Timeout { .. } => &self.sends_failed_timeout,
            Error::CannotConnect { .. } => &self.sends_failed_cannot_connect,
            Error::Protocol { .. } | Error::Tls { .. } | Error::Io { .. } => {
                &self.sends_failed_connection
            }
            Error::Shutdown => &self.sends_failed_shutdown,
            Error::LimitReached { .. } => &self.sends_failed_limit,
            _ => &self.sends_failed_other,
        });
    }

    /// A connection ended with `reason`: counted as refused (an accepted connection that
    /// never completed its handshake) or closed, by reason.
    pub(crate) fn ended(
        &self,
        reason: &Error,
        handshaken: bool,
        incoming: bool,
        node_closing: bool,
    ) {
        let peer_closed = matches!(
            reason,
            Error::Protocol {
                kind: crate::error::ProtocolError::Closed,
                ..
            }
        );
        if !handshaken && incoming && !node_closing {
            bump(match reason {
                Error::Tls { .. } => &self.refused_tls,
                Error::Timeout { .. } => &self.refused_handshake_timeout,
                Error::Io { .. } => &self.refused_resources,
                _ => &self.refused_protocol,
            });
            return;
        }
        bump(match reason {
            _ if node_closing => &self.closed_node,
            // No thread (or other resource) for it: counted with the refusals.
            Error::Io { .. } => &self.refused_resources,
            _ if peer_closed => &self.closed_peer,
            Error::Timeout { .. } => &self.closed_timeout,
            Error::Shutdown => &self.closed_gc,
            Error::Protocol { .. } | Error::MessageTooLarge { .. } => &self.closed_protocol,
            Error::Tls { .. } => &self.closed_tls,
            _ => &self.closed_other,
        });
    }

    /// Fills in the node's own counters; the caller fills in traffic and gauges.
    pub(crate) fn snapshot(&self) -> Stats {
        let sends = [
            &self.sends_failed_timeout,
            &self.sends_failed_cannot_connect,
            &self.sends_failed_connection,
            &self.sends_failed_shutdown,
            &self.sends_failed_limit,
            &self.sends_failed_other,
        ];
        Stats {
            accepted: get(&self.accepted),
            dialed: get(&self.dialed),
            refused_capacity: get(&self.refused_capacity),
            refused_handshaking: get(&self.refused_handshaking),
            refused_tls: get(&self.refused_tls),
            refused_protocol: get(&self.refused_protocol),
            refused_handshake_timeout: get(&self.refused_handshake_timeout),
            refused_resources: get(&self.refused_resources),
            accept_errors: get(&self.accept_errors),
            closed_peer: get(&self.closed_peer),
            closed_timeout: get(&self.closed_timeout),
            closed_gc: get(&self.closed_gc),
            closed_protocol: get(&self.closed_protocol),
            closed_tls: get(&self.closed_tls),
            closed_node: get(&self.closed_node),
            closed_other: get(&self.closed_other),
            sends_failed: sends.iter().map(|c| get(c)).sum(),
            sends_failed_timeout: get(&self.sends_failed_timeout),
            sends_failed_cannot_connect: get(&self.sends_failed_cannot_connect),
            sends_failed_connection: get(&self.sends_failed_connection),
            sends_failed_shutdown: get(&self.sends_failed_shutdown),
            sends_failed_limit: get(&self.sends_failed_limit),
            sends_failed_other: get(&self.sends_failed_other),
            queue_full: get(&self.queue_full),
            remotes_released: get(&self.remotes_released),
            requests_answered: get(&self.requests_answered),
            requests_timed_out: get(&self.requests_timed_out),
            ..Stats::default()
        }
    }
}

impl Stats {
    /// All refusals together.
    pub fn refused(&self) -> u64 {
        self.refused_capacity
            + self.refused_handshaking
            + self.refused_tls
            + self.refused_protocol
            + self.refused_handshake_timeout
            + self.refused_resources
    }

    /// All closed connections together.
    pub fn closed(&self) -> u64 {
        self.closed_peer
            + self.closed_timeout
            + self.closed_gc
            + self.closed_protocol
            + self.closed_tls
            + self.closed_node
            + self.closed_other
    }
}

/// Capacity of the events channel.
const EVENTS: usize = 1024;

/// The events channel: events are produced only once somebody asked for them, and never
/// block the node (what does not fit is dropped and counted). Closing the node ends it:
/// receivers take what is left, then learn that no more will come.
pub(crate) struct EventHub {
    tx: std::sync::Mutex<Option<Sender<Event>>>,
    rx: Receiver<Event>,
    closed: std::sync::Arc<AtomicBool>,
    subscribed: AtomicBool,
    pub(crate) dropped: AtomicU64,
}

impl EventHub {
    pub(crate) fn new() -> EventHub {
        let (tx, rx) = crossbeam_channel::bounded(EVENTS);
        EventHub {
            tx: std::sync::Mutex::new(Some(tx)),
            rx,
            closed: Default::default(),
            subscribed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        }
    }

    pub(crate) fn subscribe(&self) -> Events {
        self.subscribed.store(true, Ordering::Relaxed);
        Events {
            rx: self.rx.clone(),
            closed: self.closed.clone(),
        }
    }

    /// No event follows: receivers drain what is queued, then see the end.
    pub(crate) fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Emits the event `make` builds, if anybody listens.
    pub(crate) fn emit(&self, make: impl FnOnce() -> Event) {
        if !self.subscribed.load(Ordering::Relaxed) {
            return;
        }
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = tx.as_ref() else {
            return; // the node is closed
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(make()) {
            bump(&self.dropped);
        }
    }
}

/// A node's connection events, from [`Node::events`](crate::Node::events): blocking,
/// deadline and non-blocking receives, and iterators.
///
/// Every `Events` of a node sees each event once: clones share one stream (an event goes
/// to whichever receiver takes it first). Once the node is closed, the receives return
/// what was still queued, then `None`.
///
/// ```
/// use std::time::Duration;
/// use libchirp::{Config, Node};
/// let mut config = Config::default();
/// config.port = 0;
/// config.disable_encryption = true;
/// let node = Node::start(config, drop)?;
/// let events = node.events();
/// assert!(events.try_recv().is_none());
/// assert!(events.recv_timeout(Duration::from_millis(10)).is_none());
/// assert!(!events.is_closed());
/// node.close();
/// assert!(events.recv().is_none(), "a closed node's events end");
/// assert!(events.is_closed());
/// # Ok::<(), libchirp::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Events {
    rx: Receiver<Event>,
    closed: std::sync::Arc<AtomicBool>,
}

impl Events {
    /// Waits for the next event. `None` once the node is closed and every event was taken.
    ///
    /// This waits as long as the node is open and quiet; use [`Events::recv_timeout`] for
    /// a bounded wait.
    pub fn recv(&self) -> Option<Event> {
        self.rx.recv().ok()
    }

    /// The next event if one is queued, without waiting.
    pub fn try_recv(&self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// Waits up to `timeout` for the next event. `None` if none came in time or the node is
    /// closed and drained ([`Events::is_closed`] tells which).
    pub fn recv_timeout(&self, timeout: std::time::Duration) -> Option<Event> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Waits until `deadline` for the next event; `None` as for [`Events::recv_timeout`].
    pub fn recv_deadline(&self, deadline: std::time::Instant) -> Option<Event> {
        self.rx.recv_deadline(deadline).ok()
    }

    /// True once the node is closed and every event was taken: no receive will return an
    /// event again.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst) && self.rx.is_empty()
    }

    /// Events as they come, blocking; the iterator ends when the node is closed.
    pub fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        std::iter::from_fn(move || self.recv())
    }

    /// The events queued now, without waiting.
    pub fn try_iter(&self) -> impl Iterator<Item = Event> + '_ {
        std::iter::from_fn(move || self.try_recv())
    }
}
