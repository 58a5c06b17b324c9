//! Pending requests: the completion of each, by the identity its answer will carry.
//!
//! Every received message is checked against this table, so the check costs one atomic
//! load while no request is pending.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::completion::Completer;
use crate::error::Error;
use crate::message::{Identity, Message};

/// What a request completes with.
pub(crate) type Answer = Result<Message, Error>;

pub(super) struct Entry {
    /// Which request of this identity (a timed-out one must not fail its successor).
    id: u64,
    done: Completer<Answer>,
}

pub(crate) struct Requests {
    pub(super) map: Mutex<HashMap<Identity, Entry>>,
    pending: AtomicUsize,
}

impl Requests {
    pub(crate) fn new() -> Requests {
        Requests {
            map: Mutex::new(HashMap::new()),
            pending: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Identity, Entry>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers request `id` for `identity`; hands the completer back if one is pending
    /// for that identity already.
    pub(crate) fn insert(
        &self,
        identity: Identity,
        id: u64,
        done: Completer<Answer>,
    ) -> Result<(), Completer<Answer>> {
        let mut map = self.lock();
        if map.contains_key(&identity) {
            return Err(done);
        }
        map.insert(identity, Entry { id, done });
        self.pending.store(map.len(), Ordering::Release);
        Ok(())
    }

    /// The completer of the request `msg` answers, if any.
    pub(crate) fn take_answered(&self, identity: &Identity) -> Option<Completer<Answer>> {
        if self.pending.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut map = self.lock();
        let e = map.remove(identity)?;
        self.pending.store(map.len(), Ordering::Release);
        Some(e.done)
    }

    /// Fails request `id` of `identity` with `error`, if it is still pending (then true).
    pub(crate) fn fail(&self, id: u64, identity: Identity, error: Error) -> bool {
        let done = {
            let mut map = self.lock();
            match map.get(&identity) {
                Some(e) if e.id == id => {
                    let e = map.remove(&identity).expect("present");
                    self.pending.store(map.len(), Ordering::Release);
                    Some(e.done)
                }
                _ => None,
            }
        };
        match done {
            Some(d) => {
                d.complete(Err(error));
                true
            }
            None => false,
        }
    }

    /// Fails every pending request with `Shutdown` (the node closes).
    pub(crate) fn fail_all(&self) {
        let all: Vec<Entry> = {
            let mut map = self.lock();
            self.pending.store(0, Ordering::Relaxed);
            map.drain().map(|(_, e)| e).collect()
        };
        for e in all {
            e.done.complete(Err(Error::Shutdown));
        }
    }
}
