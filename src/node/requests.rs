//! Pending requests: the completion of each, by the identity its answer will carry.
//!
//! Every received message is checked against this table, so the check costs one atomic
//! load while no request is pending. Built on [`crate::sync`]: the loom models below check
//! that an answer sent after its request was registered is never missed by that fast path,
//! and that an answer, a timeout and close() racing each other complete the request exactly
//! once.

use std::collections::HashMap;

use crate::sync::{AtomicU64, AtomicUsize, Mutex, MutexGuard, Ordering};

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
    /// Ids of requests (for their deadline timers), never reused by this node.
    next_id: AtomicU64,
}

impl Requests {
    pub(crate) fn new() -> Requests {
        Requests {
            map: Mutex::new(HashMap::new()),
            pending: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
        }
    }

    /// An id for a new request.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Identity, Entry>> {
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

/// Loom models (`scripts/loom.sh`).
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use crate::completion::Completion;
    use crate::sync::Arc;
    use loom::sync::atomic::AtomicBool;
    use loom::thread;

    fn answer(identity: Identity) -> Message {
        let mut m = Message::new(b"answer".to_vec());
        m.identity = identity;
        m
    }

    /// `request()` registers, then the message goes out; the peer's answer comes back on a
    /// reader thread. However the threads interleave, the reader's check (one atomic load
    /// when nothing is pending) finds the request: the answer is never taken for an
    /// ordinary message. (python-chirp 1.2.1 registers after sending, and loses answers.)
    #[test]
    fn loom_an_answer_after_registration_is_never_missed() {
        loom::model(|| {
            let requests = Arc::new(Requests::new());
            let on_wire = Arc::new(AtomicBool::new(false));
            let id = Identity::from_bytes([1; 16]);
            let (waiter, done) = Completion::pair();
            let (r2, w2) = (requests.clone(), on_wire.clone());
            let reader = thread::spawn(move || {
                // The answer can only arrive after the request was sent.
                while !w2.load(Ordering::Acquire) {
                    thread::yield_now();
                }
                let done = r2
                    .take_answered(&id)
                    .expect("a registered request is found by its answer");
                done.complete(Ok(answer(id)));
            });
            assert!(requests.insert(id, 1, done).is_ok());
            on_wire.store(true, Ordering::Release); // sent
            let got = waiter.wait().expect("answered");
            assert_eq!(got.identity, id);
            reader.join().unwrap();
        });
    }

    /// An answer, the request's timeout and close() race: the requester gets exactly one
    /// outcome (its wait ends), and a later request of the same identity is not failed by
    /// the old one's timer.
    #[test]
    fn loom_answer_timeout_and_close_complete_a_request_once() {
        loom::model(|| {
            let requests = Arc::new(Requests::new());
            let id = Identity::from_bytes([2; 16]);
            let (waiter, done) = Completion::pair();
            assert!(requests.insert(id, 1, done).is_ok());
            let r1 = requests.clone();
            let reader = thread::spawn(move || {
                if let Some(done) = r1.take_answered(&id) {
                    done.complete(Ok(answer(id)));
                }
            });
            let r2 = requests.clone();
            let timer = thread::spawn(move || {
                r2.fail(1, id, Error::timeout("request"));
            });
            requests.fail_all();
            let outcome = waiter.wait();
            match &outcome {
                Ok(m) => assert_eq!(m.identity, id),
                Err(e) => assert!(e.is_timeout() || e.is_shutdown(), "{e}"),
            }
            reader.join().unwrap();
            timer.join().unwrap();
            // Request 2 of the same identity: request 1's timer no longer touches it.
            let (w2, d2) = Completion::pair();
            assert!(requests.insert(id, 2, d2).is_ok());
            assert!(!requests.fail(1, id, Error::timeout("stale")));
            assert!(requests.take_answered(&id).is_some());
            drop(w2);
        });
    }

    /// `request()` registers and then checks whether the node closed; `close()` marks the
    /// node closed and then fails every pending request. In every interleaving the
    /// requester's wait ends.
    #[test]
    fn loom_close_racing_request_ends_every_wait() {
        loom::model(|| {
            let requests = Arc::new(Requests::new());
            let closed = Arc::new(AtomicBool::new(false));
            let (r2, c2) = (requests.clone(), closed.clone());
            let closer = thread::spawn(move || {
                c2.store(true, Ordering::SeqCst);
                r2.fail_all();
            });
            let id = Identity::from_bytes([3; 16]);
            let (waiter, done) = Completion::pair();
            // As Node::request does: registered before the check.
            assert!(requests.insert(id, 1, done).is_ok());
            if closed.load(Ordering::SeqCst) {
                requests.fail(1, id, Error::Shutdown);
            }
            // (otherwise the message is queued; close() fails it through the table)
            closer.join().unwrap();
            let err = waiter.wait().expect_err("closed before any answer");
            assert!(err.is_shutdown(), "{err}");
        });
    }
}
