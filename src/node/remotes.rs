//! The remotes table: every peer the node knows, by address and advertised port.
//!
//! The table is split into shards, each behind its own read-write lock, so that sends to
//! different peers from different threads do not contend: a send takes one shard's read
//! lock for a lookup (readers never wait for each other) and then only its remote's lock.
//! A shard's write lock is taken only to add or remove a remote.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use super::remote::{After, Dialer, Enqueued, Limits, Remote};
use crate::connection::Conn;
use crate::frame::Pending;
use crate::proto::key::{key_of, RemoteKey};
use crate::proto::remote::RemoteCore;
use crate::sync::{AtomicBool, Mutex, Ordering, RwLock};

/// Shards of the table. Loom models use two: what they check does not depend on how
/// many there are, and every shard is a lock that close and garbage collection take in
/// turn (each one more point for the model to interleave at).
const SHARDS: usize = if cfg!(loom) { 2 } else { 16 };

/// The remote this thread last sent to: the instance number of its table, the address
/// sent to, and the remote. A thread that sends to the same peer again and again finds it
/// here instead of hashing the address and taking the table shard's lock each time. Weak:
/// it keeps no remote (nor its connection) alive; a remote removed since is found out by
/// [`Remote::enqueue`], which leaves the message to be queued on a new one (see
/// [`Remotes::enqueue`]).
type Remembered = RefCell<Option<(u64, SocketAddr, Weak<Remote>)>>;

#[cfg(not(loom))]
thread_local! {
    static LAST_REMOTE: Remembered = const { RefCell::new(None) };
}

// Each loom thread has its own (std's would be shared by the model's threads).
#[cfg(loom)]
loom::thread_local! {
    static LAST_REMOTE: Remembered = RefCell::new(None);
}

/// The next table's instance number.
static NEXT_INSTANCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub(crate) struct Remotes {
    /// Keys are chosen by peers (address and advertised port): a hash keyed with a random
    /// seed per table keeps them from steering every remote into one shard or one bucket.
    /// (foldhash, not the standard SipHash: a send looks its remote up, and SipHash over an
    /// address cost about a fifth of a small message's send.)
    hasher: Hasher,
    pub(super) shards: [RwLock<Shard>; SHARDS],
    /// Unique among the tables (nodes) of this process, never reused (identities can be
    /// configured, and so be equal): what the per-thread remembered remote keys on.
    instance: u64,
    /// The node is closing: [`Remotes::close`] has taken (or is taking) every remote out,
    /// and a send that finds this after queueing takes its own remote out (see
    /// [`Remotes::enqueue`]).
    closed: AtomicBool,
    /// Whether [`Remotes::close`] ran (or runs): only it reads this.
    closing: Mutex<bool>,
}

/// Where [`Remotes::enqueue`] put a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placed {
    /// Queued on the remote (which is in the table).
    Queued,
    /// The remote's queue is full: the message is left where it was.
    Full,
    /// The node closes: the message was queued, then its remote was taken out and removed,
    /// which failed it (the failure is in the actions). The caller ends the remote's
    /// connections.
    Closed,
}

#[cfg(not(loom))]
type Hasher = foldhash::fast::RandomState;
/// Fixed under loom: every interleaving of a model must replay the same choices, and a
/// random seed would put a remote in a different shard (behind a different lock) each
/// time (models then ran for minutes, or passed, depending on the seed).
#[cfg(loom)]
type Hasher = foldhash::fast::FixedState;
type Shard = HashMap<RemoteKey, Arc<Remote>, Hasher>;

impl Remotes {
    pub(crate) fn new() -> Remotes {
        Remotes {
            hasher: Hasher::default(),
            shards: std::array::from_fn(|_| RwLock::new(HashMap::with_hasher(Hasher::default()))),
            closed: AtomicBool::new(false),
            closing: Mutex::new(false),
            instance: NEXT_INSTANCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// The remote for `addr`: the one this thread sent to last if it is for the same
    /// address of this table, else from the table (made if missing) and remembered. It may
    /// have been removed since: [`Remotes::enqueue`] finds that out.
    #[inline]
    pub(crate) fn remote_for(&self, addr: SocketAddr) -> Arc<Remote> {
        // `try_with`: a send from another thread-local's destructor, after this one is
        // gone, simply looks the remote up.
        let cached = LAST_REMOTE
            .try_with(|c| match &*c.borrow() {
                Some((table, a, r)) if *table == self.instance && *a == addr => r.upgrade(),
                _ => None,
            })
            .ok()
            .flatten();
        if let Some(r) = cached {
            return r;
        }
        let r = self.get_or_create(addr);
        self.remember(addr, &r);
        r
    }

    /// Makes `remote` (for `addr`) this thread's remembered one.
    pub(crate) fn remember(&self, addr: SocketAddr, remote: &Arc<Remote>) {
        let _ = LAST_REMOTE
            .try_with(|c| *c.borrow_mut() = Some((self.instance, addr, Arc::downgrade(remote))));
    }

    /// Whether the node closes (or has closed). Sequentially consistent, as the node's flag
    /// was before it moved here: admission and links check it too.
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Closes the table: marks it closed, then takes every remote out and removes it
    /// (which fails what it holds: the failures go into `after`). Returns the remotes
    /// taken out, for the caller to end their connections; `None` if it was closed
    /// already. A send racing this either queued on a remote before it was removed here
    /// (and is failed with it), or sees the mark after queueing and takes its remote out
    /// itself (see [`Remotes::enqueue`]): no message stays queued on a closed node.
    pub(crate) fn close(&self, after: &mut After) -> Option<Vec<Arc<Remote>>> {
        {
            // Decided under a lock, not by a swap of the flag: loom 0.7 trips over a
            // read-modify-write racing loads here (its issues 252 and 389), and close is
            // rare; the flag is only stored and loaded.
            let mut closing = self.closing.lock().unwrap_or_else(|e| e.into_inner());
            if *closing {
                return None;
            }
            *closing = true;
            self.closed.store(true, Ordering::SeqCst);
        }
        let all = self.all();
        for remote in &all {
            self.take_out(remote, after);
        }
        Some(all)
    }

    /// Takes `remote` out of the table and removes it, failing what it holds (close).
    pub(crate) fn take_out(&self, remote: &Arc<Remote>, after: &mut After) {
        self.remove(remote);
        remote.remove(false, after);
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
    /// remember. [`Placed::Full`] leaves the message in `p`. A send that finds the node
    /// closing after it queued takes its remote out itself ([`Placed::Closed`]): the remote
    /// was found or made before that check, so either [`Remotes::close`] removed it, or
    /// this does.
    #[inline]
    pub(crate) fn enqueue(
        &self,
        addr: SocketAddr,
        remote: &mut Arc<Remote>,
        lim: &Limits,
        p: &mut Option<Pending>,
        dial: Dialer,
        after: &mut After,
    ) -> Placed {
        loop {
            match remote.enqueue(lim, p, dial, after) {
                Enqueued::Queued => break,
                // Removed meanwhile: it is out of this table already (see `take_out_if`).
                Enqueued::Removed => *remote = self.get_or_create(addr),
                Enqueued::Full => return Placed::Full,
            }
        }
        self.closing_check(remote, after)
    }

    /// [`Remotes::enqueue`] from the remote this thread remembers for `addr` (or the
    /// table's): the remote it ended on becomes the remembered one if it changed (the
    /// remembered one was removed meanwhile). Returns where the message went and that
    /// remote.
    #[inline]
    pub(crate) fn enqueue_remembered(
        &self,
        addr: SocketAddr,
        lim: &Limits,
        p: &mut Option<Pending>,
        dial: Dialer,
        after: &mut After,
    ) -> (Placed, Arc<Remote>) {
        let mut remote = self.remote_for(addr);
        let first = Arc::as_ptr(&remote);
        let placed = self.enqueue(addr, &mut remote, lim, p, dial, after);
        if !std::ptr::eq(first, Arc::as_ptr(&remote)) {
            self.remember(addr, &remote);
        }
        (placed, remote)
    }

    /// After a send queued on `remote`: [`Placed::Closed`] (and `remote` taken out) if the
    /// node closes.
    #[inline]
    fn closing_check(&self, remote: &Arc<Remote>, after: &mut After) -> Placed {
        if self.is_closed() {
            self.take_out(remote, after);
            Placed::Closed
        } else {
            Placed::Queued
        }
    }

    /// Queues what fits of `batch` on `remote` (found by the caller) for `addr`, under one
    /// lock of the remote, as [`Remotes::enqueue`] does for one message: a remote removed
    /// meanwhile leaves the whole batch where it is and is looked up again here. What is
    /// left in `batch` afterwards did not fit under `max_queued`. Returns
    /// [`Placed::Closed`] if the node closes (see [`Remotes::enqueue`]), else
    /// [`Placed::Queued`] (even if nothing fitted).
    pub(crate) fn enqueue_batch(
        &self,
        addr: SocketAddr,
        remote: &mut Arc<Remote>,
        lim: &Limits,
        batch: &mut Vec<Pending>,
        dial: Dialer,
        after: &mut After,
    ) -> Placed {
        while remote.enqueue_batch(lim, batch, dial, after).is_err() {
            *remote = self.get_or_create(addr);
        }
        self.closing_check(remote, after)
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

/// Loom models (`scripts/loom.sh`) of a send racing garbage collection of its remote and
/// the node's close, on the production code of all three: the send queues through
/// [`Remotes::enqueue`] (or [`Remotes::enqueue_remembered`], from the remote its thread
/// remembers), collection decides and removes through [`Remotes::take_out_if`] with the
/// core's own `collect`, close through [`Remotes::close`]. Only the clock is fixed (the
/// remote has been unused for an hour) and the dial makes a connection that is never
/// started.
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use crate::completion::lent_pair;
    use crate::connection::testing::{settings, NoOwner};
    use crate::error::Error;
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
                        .map(|_| Pending::lent(lent_pair(Ok(Message::to(addr, &b"m"[..]))).1))
                        .collect();
                    let dial = dial(addr);
                    let mut after = After::default();
                    let mut remote = remembered;
                    if n == 1 {
                        let mut p = batch.pop();
                        let queued =
                            remotes.enqueue(addr, &mut remote, &lim(), &mut p, &dial, &mut after);
                        assert!(
                            queued == Placed::Queued && p.is_none(),
                            "room in the queue ({queued:?})"
                        );
                    } else {
                        remotes.enqueue_batch(
                            addr,
                            &mut remote,
                            &lim(),
                            &mut batch,
                            &dial,
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
            against_collection(&remotes, addr, n, sender);
        });
    }

    /// Runs one pass of garbage collection over `addr` (see [`collect`]) while `sender`
    /// runs, then checks what every such race must end with: collection failed no send,
    /// and the `n` messages are queued on the remote the sender returned, which is not
    /// removed and is the one in the table.
    fn against_collection(
        remotes: &Arc<Remotes>,
        addr: SocketAddr,
        n: usize,
        sender: thread::JoinHandle<Arc<Remote>>,
    ) {
        let collector = {
            let remotes = remotes.clone();
            thread::spawn(move || collect(&remotes, addr))
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
    }

    /// A send racing the node's close: to a peer the table does not know yet (the send
    /// makes its remote), to one it knows, and from a remote this thread remembered. The
    /// message is failed with `Shutdown` exactly once, by whichever side took the remote
    /// out, and nothing stays in the table.
    #[test]
    fn loom_close_never_leaves_a_send_queued() {
        for start in [Start::Unknown, Start::InTable, Start::Remembered] {
            close_model(start);
        }
    }

    /// Where the remote of the send in [`close_model`] is when the model starts.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Start {
        Unknown,
        InTable,
        Remembered,
    }

    fn close_model(start: Start) {
        loom::model(move || {
            let remotes = Arc::new(Remotes::new());
            let addr: SocketAddr = "127.0.0.1:9".parse().expect("an address");
            if start != Start::Unknown {
                remotes.get_or_create(addr);
            }
            let sender = {
                let remotes = remotes.clone();
                thread::spawn(move || {
                    if start == Start::Remembered {
                        // An earlier send of this thread, since written.
                        remotes.remote_for(addr);
                    }
                    let mut p = Some(Pending::lent(lent_pair(Ok(Message::to(addr, &b"m"[..]))).1));
                    let mut after = After::default();
                    let (placed, remote) =
                        remotes.enqueue_remembered(addr, &lim(), &mut p, &dial(addr), &mut after);
                    assert!(p.is_none(), "the message was taken ({placed:?})");
                    (placed, remote, after)
                })
            };
            let closer = {
                let remotes = remotes.clone();
                thread::spawn(move || {
                    let mut after = After::default();
                    let removed = remotes.close(&mut after).expect("the first close");
                    (removed, after)
                })
            };
            let (placed, queued_on, sent_after) = sender.join().expect("the sender");
            let (removed, closed_after) = closer.join().expect("the closer");
            let failures: Vec<String> = sent_after
                .0
                .iter()
                .chain(closed_after.0.iter())
                .filter_map(|a| match a {
                    Action::Send(b) => Some(format!("{:?}", b.1)),
                    _ => None,
                })
                .collect();
            assert!(
                failures.len() == 1 && failures[0].contains("Shutdown"),
                "the message failed once with Shutdown ({start:?}, placed {placed:?}; failures: {failures:?})"
            );
            assert!(
                queued_on.lock().is_removed(),
                "the remote it was queued on is removed (placed {placed:?}, {} taken out by close)",
                removed.len()
            );
            assert!(
                remotes.all().is_empty(),
                "no remote left in the closed table ({} left)",
                remotes.all().len()
            );
            assert!(
                remotes.close(&mut After::default()).is_none(),
                "closed once"
            );
        });
    }

    /// The per-thread remembered remote across garbage collection: a thread that sent to
    /// the peer before (its remote remembered, its message written) sends again while
    /// collection runs. The message is queued on the remote in the table, and that is the
    /// one the thread remembers afterwards.
    #[test]
    fn loom_the_remembered_remote_follows_garbage_collection() {
        loom::model(move || {
            let remotes = Arc::new(Remotes::new());
            let addr: SocketAddr = "127.0.0.1:9".parse().expect("an address");
            // Held past collection, as its connection's threads hold a remote: the
            // thread's weak memory of it still upgrades after it is removed.
            let held = remotes.get_or_create(addr);
            let sender = {
                let remotes = remotes.clone();
                thread::spawn(move || {
                    remotes.remote_for(addr);
                    let mut p = Some(Pending::lent(lent_pair(Ok(Message::to(addr, &b"m"[..]))).1));
                    let mut after = After::default();
                    let (placed, remote) =
                        remotes.enqueue_remembered(addr, &lim(), &mut p, &dial(addr), &mut after);
                    assert_eq!(placed, Placed::Queued, "room in the queue");
                    let now_remembered = remotes.remote_for(addr);
                    assert!(
                        Arc::ptr_eq(&now_remembered, &remote),
                        "the thread remembers the remote its message is on"
                    );
                    remote
                })
            };
            against_collection(&remotes, addr, 1, sender);
            drop(held);
        });
    }

    /// One pass of garbage collection over `addr`'s remote, an hour after its last use
    /// (the production decision and removal): the actions it produced.
    fn collect(remotes: &Remotes, addr: SocketAddr) -> After {
        let now = Instant::now() + Duration::from_secs(3600);
        let mut after = After::default();
        if let Some(remote) = remotes.get(&crate::proto::key::key_of(&addr)) {
            remotes.take_out_if(&remote, |core| core.collect(&lim(), now, None, &mut after));
        }
        after
    }

    /// A dialer that makes a connection (never started) to `addr`.
    fn dial(addr: SocketAddr) -> impl Fn(&Arc<Remote>) -> Result<Arc<Conn>, Error> {
        move |_| {
            Conn::dial(1, addr, false, settings(false), Arc::new(NoOwner))
                .map(Arc::new)
                .map_err(Error::io)
        }
    }
}
