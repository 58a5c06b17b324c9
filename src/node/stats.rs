//! The node's counters: relaxed atomics, each changed where the event happens, so that
//! observing a node costs nothing on the per-message path.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a node's counters (since it started) and gauges (now).
///
/// ```
/// use libchirp::{Config, Node};
/// let mut config = Config::default();
/// config.port = 0;
/// config.disable_encryption = true;
/// let node = Node::start(config, drop)?;
/// let stats = node.stats();
/// assert_eq!(stats.connections, 0);
/// assert_eq!(stats.refused_capacity, 0);
/// # Ok::<(), libchirp::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections now (accepted and dialed, set up or not).
    pub connections: u64,
    /// Accepted connections now still in their handshake.
    pub handshaking: u64,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections dialed since start.
    pub dialed: u64,
    /// Accepted sockets closed at once, and dials refused, because `max_connections` was
    /// reached.
    pub refused_capacity: u64,
    /// Accepted sockets closed at once because `max_handshaking` was reached.
    pub refused_handshaking: u64,
    /// Connections closed because a thread (or another resource) could not be had.
    pub refused_resources: u64,
    /// Failed `accept` calls (out of descriptors, memory, ...); the accept loop backs off.
    pub accept_errors: u64,
    /// Sends refused because the remote's queue held `max_queued` messages.
    pub queue_full: u64,
}

/// The live counters behind [`Stats`].
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) dialed: AtomicU64,
    pub(crate) refused_capacity: AtomicU64,
    pub(crate) refused_handshaking: AtomicU64,
    pub(crate) refused_resources: AtomicU64,
    pub(crate) accept_errors: AtomicU64,
    pub(crate) queue_full: AtomicU64,
}

/// Adds one to a counter.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self, connections: u64, handshaking: u64) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            connections,
            handshaking,
            accepted: get(&self.accepted),
            dialed: get(&self.dialed),
            refused_capacity: get(&self.refused_capacity),
            refused_handshaking: get(&self.refused_handshaking),
            refused_resources: get(&self.refused_resources),
            accept_errors: get(&self.accept_errors),
            queue_full: get(&self.queue_full),
        }
    }
}
