//! Outgoing frames and the completions they carry: what flows from a remote's queues to a
//! connection's writer and back. No I/O and no locks here.
//!
//! A frame that is dropped unfinished fails its waiter with [`Error::Shutdown`], so no
//! completion is ever left pending, whichever path loses it.

use crate::sync::{Arc, AtomicUsize, Mutex, MutexGuard, Ordering};

use crate::completion::Completer;
use crate::error::Error;
use crate::message::{Identity, Message, ReleaseDone};
use crate::outcome::{BatchError, SendError};

/// What a user send completes with.
pub(crate) type SendResult = Result<Message, SendError>;

#[cfg(not(loom))]
std::thread_local! {
    /// This thread's recycled send completions (see [`crate::completion::Pool`]).
    static SEND_COMPLETIONS: crate::completion::Pool<SendResult> =
        const { crate::completion::Pool::new() };
}

impl crate::completion::Pooled for SendResult {
    #[cfg(not(loom))]
    fn with_pool<R>(f: impl FnOnce(&crate::completion::Pool<Self>) -> R) -> Option<R> {
        SEND_COMPLETIONS.try_with(f).ok()
    }
    #[cfg(loom)]
    fn with_pool<R>(_f: impl FnOnce(&crate::completion::Pool<Self>) -> R) -> Option<R> {
        None
    }
}

/// What to do when an outgoing message is finished.
pub(crate) enum Done {
    /// Complete the caller's completion.
    Wait(Completer<SendResult>),
    /// The message is the outgoing half of a request (its number and identity): a failure
    /// fails the request, success just drops the message.
    Request(u64, Identity),
    /// A request whose sender also wants the outcome of the send itself: `.2` completes
    /// as [`Done::Wait`] does, and a failure fails the request too.
    RequestSent(u64, Identity, Completer<SendResult>),
    /// Message number `.1` of a batch: its outcome is counted there, and the batch's one
    /// completion fires with the last.
    Batch(Arc<Batch>, usize),
}

/// What a batch send completes with: how many were delivered, or the ones that were not.
pub(crate) type BatchResult = Result<usize, BatchError>;

/// The shared outcome of a batch send. Each message's outcome costs one atomic decrement
/// (and, for a failure, a short lock); the last one completes the batch.
///
/// `remaining` starts at 1, held by the code that builds the batch: it adds the queued
/// messages' count before queueing them ([`Batch::add`]) and lets go of its own with
/// [`Batch::built`], so no outcome can complete the batch early.
pub(crate) struct Batch {
    total: AtomicUsize,
    remaining: AtomicUsize,
    failed: Mutex<Vec<(usize, SendError)>>,
    done: Mutex<Option<Completer<BatchResult>>>,
}

impl Batch {
    /// An empty batch completing `done`, held by its builder.
    pub(crate) fn new(done: Completer<BatchResult>) -> Arc<Batch> {
        Arc::new(Batch {
            total: AtomicUsize::new(0),
            remaining: AtomicUsize::new(1),
            failed: Mutex::new(Vec::new()),
            done: Mutex::new(Some(done)),
        })
    }

    /// Message `index` failed before it was queued (the builder still holds the batch).
    pub(crate) fn failed_early(&self, index: usize, msg: Message, error: Error) {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.lock_failed().push((
            index,
            SendError {
                error,
                message: msg,
            },
        ));
    }

    /// `n` messages are about to be queued.
    pub(crate) fn add(&self, n: usize) {
        self.total.fetch_add(n, Ordering::Relaxed);
        self.remaining.fetch_add(n, Ordering::Relaxed);
    }

    /// The builder is done: the batch completes with its last outcome.
    pub(crate) fn built(&self) {
        self.count_down();
    }

    fn lock_failed(&self) -> MutexGuard<'_, Vec<(usize, SendError)>> {
        self.failed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a queued message's failure.
    pub(crate) fn fail(&self, index: usize, msg: Message, error: Error) {
        self.lock_failed().push((
            index,
            SendError {
                error,
                message: msg,
            },
        ));
        self.count_down();
    }

    /// Records a queued message's success (the caller has dropped the message).
    pub(crate) fn succeed(&self) {
        self.count_down();
    }

    fn count_down(&self) {
        // AcqRel: the last decrement sees every failure pushed before the others'.
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let mut failed = std::mem::take(&mut *self.lock_failed());
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(done) = done else { return };
        let total = self.total.load(Ordering::Relaxed);
        if failed.is_empty() {
            done.complete(Ok(total));
        } else {
            failed.sort_by_key(|(i, _)| *i);
            done.complete(Err(BatchError {
                delivered: total - failed.len(),
                failures: failed.into_iter().map(|(_, f)| f).collect(),
            }));
        }
    }
}

/// An outgoing user message and its completion. (Boxing it, to make its many moves
/// pointer copies, was measured and lost: see docs/performance-history.md.)
pub(crate) struct Pending {
    msg: Option<Message>,
    done: Option<Done>,
}

impl Pending {
    pub(crate) fn new(msg: Message, done: Done) -> Pending {
        Pending {
            msg: Some(msg),
            done: Some(done),
        }
    }

    pub(crate) fn msg(&self) -> &Message {
        self.msg
            .as_ref()
            .expect("pending message present until finished")
    }

    /// Completes with the outcome. Must run without any lock held: the waiter may run code
    /// that sends. Returns the request to fail, if the message was one's outgoing half.
    pub(crate) fn finish(mut self, result: Result<(), Error>) -> Option<(u64, Identity, Error)> {
        if let (Some(Done::Batch(batch, _)), Ok(())) = (&self.done, &result) {
            // The common streaming case: drop the message where it is (no move of it).
            self.msg = None;
            batch.succeed();
            self.done = None;
            return None;
        }
        let msg = self.msg.take();
        let done = self.done.take();
        match (done, msg) {
            (Some(Done::Wait(c)), Some(msg)) => {
                c.complete(match result {
                    Ok(()) => Ok(msg),
                    Err(error) => Err(SendError {
                        error,
                        message: msg,
                    }),
                });
                None
            }
            (Some(Done::Request(id, identity)), msg) => {
                drop(msg);
                result.err().map(|e| (id, identity, e))
            }
            (Some(Done::RequestSent(id, identity, c)), Some(msg)) => match result {
                Ok(()) => {
                    c.complete(Ok(msg));
                    None
                }
                Err(error) => {
                    c.complete(Err(SendError {
                        error: error.clone(),
                        message: msg,
                    }));
                    Some((id, identity, error))
                }
            },
            (Some(Done::Batch(batch, index)), Some(msg)) => {
                match result {
                    Ok(()) => {
                        drop(msg);
                        batch.succeed();
                    }
                    Err(e) => batch.fail(index, msg, e),
                }
                None
            }
            _ => None,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // A finished one (the usual case) has nothing left: return before the message is
        // moved out of its place.
        if self.done.is_none() {
            return;
        }
        match (self.done.take(), self.msg.take()) {
            (Some(Done::Wait(c)) | Some(Done::RequestSent(_, _, c)), Some(msg)) => {
                c.complete(Err(SendError {
                    error: Error::Shutdown,
                    message: msg,
                }))
            }
            (Some(Done::Batch(batch, index)), Some(msg)) => {
                batch.fail(index, msg, Error::Shutdown);
            }
            _ => {}
        }
    }
}

/// ACK and NOOP frames: they overtake user messages.
pub(crate) enum Control {
    Ack(ReleaseDone),
    Noop,
}

/// A frame taken by a writer, with the serial it goes out with.
pub(crate) enum Frame {
    User(Pending),
    Ack(ReleaseDone),
    Noop,
}

/// Loom models (`scripts/loom.sh`) of a batch's shared outcome: however its messages'
/// outcomes and its builder interleave, the batch completes exactly once, after every
/// outcome, with the delivered count and the failed messages in batch order.
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use crate::completion::Completion;
    use loom::thread;

    fn msg(i: u8) -> Message {
        let mut m = Message::new(vec![i]);
        m.identity = Identity::from([i; 16]);
        m
    }

    #[test]
    fn loom_batch_outcomes_race_the_builder_and_each_other() {
        loom::model(|| {
            let (c, done) = Completion::pair();
            let batch = Batch::new(done);
            // Message 0 failed its checks while the batch was built.
            batch.failed_early(0, msg(0), Error::Shutdown);
            batch.add(2);
            let b1 = batch.clone();
            let t1 = thread::spawn(move || b1.fail(2, msg(2), Error::Shutdown));
            let b2 = batch.clone();
            let t2 = thread::spawn(move || b2.succeed());
            batch.built();
            t1.join().unwrap();
            t2.join().unwrap();
            let e = c.wait().expect_err("two failed");
            assert_eq!(e.delivered(), 1);
            let order: Vec<u8> = e.into_messages().iter().map(|m| m.data()[0]).collect();
            assert_eq!(order, [0, 2], "failures in batch order");
        });
    }

    #[test]
    fn loom_a_batch_completes_only_after_its_last_outcome() {
        loom::model(|| {
            let (c, done) = Completion::pair();
            let batch = Batch::new(done);
            batch.add(2);
            let b1 = batch.clone();
            let t1 = thread::spawn(move || b1.succeed());
            batch.built();
            // One outcome is still missing: whatever ran, the batch is not complete.
            let c = c
                .try_wait()
                .expect_err("not complete before the last outcome");
            batch.succeed();
            assert_eq!(c.wait().expect("all delivered"), 2);
            t1.join().unwrap();
        });
    }
}
