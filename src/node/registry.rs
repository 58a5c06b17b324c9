//! The node's connections: every connection whose threads have not all ended (for garbage
//! collection, close and counting), the ids they get, the gauge of accepted connections
//! still in their handshake, and the traffic of those that ended. Never locked on the
//! per-message path; may be locked while a remote is (when dialing), never the other way
//! round.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::link::Link;
use crate::connection::{Conn, Traffic};

/// A registered connection and the node's side of it.
pub(super) struct Registered {
    pub(super) conn: Arc<Conn>,
    pub(super) link: Arc<Link>,
}

/// The connections' table and what is counted with it.
pub(super) struct Registry {
    map: Mutex<HashMap<u64, Registered>>,
    next_id: AtomicU64,
    handshaking: AtomicUsize,
    /// Traffic of connections that have ended.
    retired: Traffic,
}

impl Registry {
    pub(super) fn new() -> Registry {
        Registry {
            map: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            handshaking: AtomicUsize::new(0),
            retired: Traffic::default(),
        }
    }

    /// The table, locked (briefly: never across a blocking call).
    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<u64, Registered>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An id for a new connection, never reused by this node.
    pub(super) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Accepted connections still in their handshake.
    pub(super) fn handshaking(&self) -> usize {
        self.handshaking.load(Ordering::Relaxed)
    }

    /// An accepted connection starts its handshake.
    pub(super) fn handshake_started(&self) {
        self.handshaking.fetch_add(1, Ordering::Relaxed);
    }

    /// An accepted connection left its handshake (done or failed).
    pub(super) fn handshake_over(&self) {
        self.handshaking.fetch_sub(1, Ordering::Relaxed);
    }

    /// The connection's threads have all ended: it leaves the table, and its traffic joins
    /// the retired totals.
    pub(super) fn forget(&self, id: u64) {
        if let Some(r) = self.lock().remove(&id) {
            self.retired.add(&r.conn.traffic);
        }
    }

    /// The connection `id`, if registered.
    pub(super) fn get(&self, id: u64) -> Option<Arc<Conn>> {
        self.lock().get(&id).map(|r| r.conn.clone())
    }

    /// A snapshot (the table is not locked while the caller uses it).
    pub(super) fn all(&self) -> Vec<(Arc<Conn>, Arc<Link>)> {
        self.lock()
            .values()
            .map(|r| (r.conn.clone(), r.link.clone()))
            .collect()
    }

    /// How many connections are registered.
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    /// The traffic of every connection, ended or not, added into `into`; returns the
    /// connections registered now.
    pub(super) fn traffic(&self, into: &Traffic) -> Vec<Arc<Conn>> {
        into.add(&self.retired);
        let conns: Vec<Arc<Conn>> = self.lock().values().map(|r| r.conn.clone()).collect();
        for c in &conns {
            into.add(&c.traffic);
        }
        conns
    }
}
