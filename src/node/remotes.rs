//! The remotes table: every peer the node knows, by address and advertised port.
//!
//! The table is split into shards, each behind its own read-write lock, so that sends to
//! different peers from different threads do not contend: a send takes one shard's read
//! lock for a lookup (readers never wait for each other) and then only its remote's lock.
//! A shard's write lock is taken only to add or remove a remote.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use super::remote::Remote;
use crate::proto::key::{key_of, RemoteKey};

const SHARDS: usize = 16;

pub(crate) struct Remotes {
    /// Keys are chosen by peers (address and advertised port): a hash keyed with a random
    /// seed per table keeps them from steering every remote into one shard or one bucket.
    /// (foldhash, not the standard SipHash: a send looks its remote up, and SipHash over an
    /// address cost about a fifth of a small message's send.)
    hasher: Hasher,
    pub(super) shards: [RwLock<Shard>; SHARDS],
}

type Hasher = foldhash::fast::RandomState;
type Shard = HashMap<RemoteKey, Arc<Remote>, Hasher>;

impl Remotes {
    pub(crate) fn new() -> Remotes {
        Remotes {
            hasher: Hasher::default(),
            shards: std::array::from_fn(|_| RwLock::new(HashMap::with_hasher(Hasher::default()))),
        }
    }

    pub(super) fn shard(&self, key: &RemoteKey) -> &RwLock<Shard> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// The remote for `key`, if known.
    pub(crate) fn get(&self, key: &RemoteKey) -> Option<Arc<Remote>> {
        let shard = self.shard(key).read().unwrap_or_else(|e| e.into_inner());
        shard.get(key).cloned()
    }

    /// The remote for `addr`'s key, created (with `addr` as its dial address) if missing.
    pub(crate) fn get_or_create(&self, addr: SocketAddr) -> Arc<Remote> {
        let key = key_of(&addr);
        if let Some(r) = self.get(&key) {
            return r;
        }
        let mut shard = self.shard(&key).write().unwrap_or_else(|e| e.into_inner());
        shard
            .entry(key)
            .or_insert_with(|| Arc::new(Remote::new(addr)))
            .clone()
    }

    /// Removes `remote` from the table (if it is still the one under its key).
    pub(crate) fn remove(&self, remote: &Arc<Remote>) {
        let mut shard = self
            .shard(&remote.key)
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if shard
            .get(&remote.key)
            .is_some_and(|r| Arc::ptr_eq(r, remote))
        {
            shard.remove(&remote.key);
        }
    }

    /// Every remote, for garbage collection and close (one shard locked at a time).
    pub(crate) fn all(&self) -> Vec<Arc<Remote>> {
        let mut out = Vec::new();
        for s in &self.shards {
            out.extend(
                s.read()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .cloned(),
            );
        }
        out
    }
}
