//! The remotes table: every peer the node knows, by address and advertised port.
//!
//! The table is split into shards, each behind its own read-write lock, so that sends to
//! different peers from different threads do not contend: a send takes one shard's read
//! lock for a lookup (readers never wait for each other) and then only its remote's lock.
//! A shard's write lock is taken only to add or remove a remote.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Arc;

use super::remote::{After, Dialer, Enqueued, Limits, Remote};
use crate::connection::Conn;
use crate::frame::Pending;
use crate::proto::key::{key_of, RemoteKey};
use crate::proto::remote::RemoteCore;
use crate::sync::RwLock;

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

    /// Queues the message in `p` on `remote` (found by the caller: from its cache or this
    /// table) for `addr`, taking it out of `p`. A remote removed meanwhile is looked up
    /// again here (a new remote is made): `remote` is then that one, for the caller to
    /// remember. Returns false, and leaves the message in `p`, if the remote's queue is
    /// full.
    #[inline]
    pub(crate) fn enqueue(
        &self,
        addr: SocketAddr,
        remote: &mut Arc<Remote>,
        lim: &Limits,
        p: &mut Option<Pending>,
        dial: Dialer,
        after: &mut After,
    ) -> bool {
        loop {
            match remote.enqueue(lim, p, dial, after) {
                Enqueued::Queued => return true,
                // Removed meanwhile: it is out of this table already (see `take_out_if`).
                Enqueued::Removed => *remote = self.get_or_create(addr),
                Enqueued::Full => return false,
            }
        }
    }

    /// Queues what fits of `batch` on `remote` (found by the caller) for `addr`, under one
    /// lock of the remote, as [`Remotes::enqueue`] does for one message: a remote removed
    /// meanwhile leaves the whole batch where it is and is looked up again here. What is
    /// left in `batch` afterwards did not fit under `max_queued`.
    pub(crate) fn enqueue_batch(
        &self,
        addr: SocketAddr,
        remote: &mut Arc<Remote>,
        lim: &Limits,
        batch: &mut Vec<Pending>,
        dial: Dialer,
        after: &mut After,
    ) {
        while remote.enqueue_batch(lim, batch, dial, after).is_err() {
            *remote = self.get_or_create(addr);
        }
    }

    /// Takes `remote` out of the table if `decide` says so. It decides under the remote's
    /// lock, and the remote leaves the table before that lock is let go: a send that
    /// finds the remote meanwhile either queued on it first (and `decide` sees the work),
    /// or finds it removed and no longer finds it here (a new remote is made). Garbage
    /// collection deciding and then removing under two lock holds failed a send queued in
    /// between. Lock order: a remote, then its shard; nothing takes a remote's lock while
    /// holding a shard's.
    pub(crate) fn take_out_if(
        &self,
        remote: &Arc<Remote>,
        decide: impl FnOnce(&mut RemoteCore<Arc<Conn>>) -> bool,
    ) -> bool {
        let mut core = remote.lock();
        if !decide(&mut core) {
            return false;
        }
        self.remove(remote);
        true
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

/// Loom model (`scripts/loom.sh`) of a send racing garbage collection of its remote, on
/// the production code of both: the send queues through [`Remotes::enqueue`] from the
/// remote its thread remembered, collection decides and removes through
/// [`Remotes::take_out_if`] with the core's own `collect`. Only the clock is fixed (the
/// remote has been unused for an hour) and the dial makes a connection that is never
/// started.
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use crate::completion::Completion;
    use crate::connection::testing::{settings, NoOwner};
    use crate::error::Error;
    use crate::frame::Done;
    use crate::message::Message;
    use crate::proto::remote::Action;
    use loom::thread;
    use std::time::{Duration, Instant};

    fn lim() -> Limits {
        Limits {
            timeout: Duration::from_secs(5),
            reuse_time: Duration::from_millis(1),
            synchronous: false,
            max_queued: 4,
        }
    }

    /// In every interleaving the message ends queued on a remote that is in the table and
    /// not removed, and garbage collection fails nothing.
    #[test]
    fn loom_garbage_collection_never_fails_a_send_racing_it() {
        model(1);
    }

    /// The same for a batch of two messages, queued through [`Remotes::enqueue_batch`]:
    /// both end on the remote in the table, none is failed.
    #[test]
    fn loom_garbage_collection_never_fails_a_batch_racing_it() {
        model(2);
    }

    /// One sender sends `n` messages (one plain send for 1, else one batch) while garbage
    /// collection runs.
    fn model(n: usize) {
        loom::model(move || {
            let remotes = Arc::new(Remotes::new());
            let addr: SocketAddr = "127.0.0.1:9".parse().expect("an address");
            // The remote a sending thread remembers from an earlier send.
            let remembered = remotes.get_or_create(addr);
            let sender = {
                let remotes = remotes.clone();
                thread::spawn(move || {
                    let mut batch: Vec<Pending> = (0..n)
                        .map(|_| {
                            let (_completion, completer) = Completion::pair();
                            Pending::new(Message::to(addr, &b"m"[..]), Done::Wait(completer))
                        })
                        .collect();
                    let dial: Dialer = &|_| {
                        Conn::dial(1, addr, false, settings(false), Arc::new(NoOwner))
                            .map(Arc::new)
                            .map_err(Error::io)
                    };
                    let mut after = After::default();
                    let mut remote = remembered;
                    if n == 1 {
                        let mut p = batch.pop();
                        let queued =
                            remotes.enqueue(addr, &mut remote, &lim(), &mut p, dial, &mut after);
                        assert!(queued && p.is_none(), "room in the queue");
                    } else {
                        remotes.enqueue_batch(
                            addr,
                            &mut remote,
                            &lim(),
                            &mut batch,
                            dial,
                            &mut after,
                        );
                        assert!(
                            batch.is_empty(),
                            "room in the queue for {} more",
                            batch.len()
                        );
                    }
                    remote
                })
            };
            let collector = {
                let remotes = remotes.clone();
                thread::spawn(move || {
                    let now = Instant::now() + Duration::from_secs(3600);
                    let mut after = After::default();
                    if let Some(remote) = remotes.get(&crate::proto::key::key_of(&addr)) {
                        remotes.take_out_if(&remote, |core| {
                            core.collect(&lim(), now, None, &mut after)
                        });
                    }
                    after
                })
            };
            let queued_on = sender.join().expect("the sender");
            let after = collector.join().expect("the collector");
            assert!(
                !after.0.iter().any(|a| matches!(a, Action::Send(_))),
                "garbage collection failed a send"
            );
            let core = queued_on.lock();
            let (queued, ..) = core.observe();
            assert!(
                queued == n && !core.is_removed(),
                "all {n} messages are queued ({queued} seen) on a remote that was not removed (removed: {})",
                core.is_removed()
            );
            drop(core);
            let listed = remotes.get(&queued_on.key);
            assert!(
                listed.is_some_and(|r| Arc::ptr_eq(&r, &queued_on)),
                "the remote holding the message is the one in the table"
            );
        });
    }
}
