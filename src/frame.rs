//! Outgoing frames and the completions they carry: what flows from a remote's queues to a
//! connection's writer and back. No I/O and no locks here.
//!
//! A frame that is dropped unfinished fails its waiter with [`Error::Shutdown`], so no
//! completion is ever left pending, whichever path loses it.

use crate::sync::{Arc, AtomicUsize, Mutex, MutexGuard, Ordering, UnsafeCell};

use crate::completion::{Completer, Lent, Wake};
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
    /// The message is the outgoing half of a request (its number and identity): a failure
    /// fails the request, success just drops the message.
    Request(u64, Identity),
    /// A request whose sender also wants the outcome of the send itself: `.2` completes
    /// as a plain send's does, and a failure fails the request too.
    RequestSent(u64, Identity, Completer<SendResult>),
}

/// What a batch send completes with: how many were delivered, or the ones that were not.
pub(crate) type BatchResult = Result<usize, BatchError>;

/// The shared outcome of a batch send. Each message's outcome costs one atomic decrement
/// (and, for a failure, a short lock); the last one completes the batch.
///
/// `remaining` starts at 1, held by the code that builds the batch: it adds the queued
/// messages' count before queueing them ([`Batch::add`]) and lets go of its own with
/// [`Batch::built`], so no outcome can complete the batch early.
///
/// The batch also holds its messages, where they stay until each is finished: a queued
/// message is a small [`Pending`] that refers to its place here.
pub(crate) struct Batch {
    total: AtomicUsize,
    remaining: AtomicUsize,
    failed: Mutex<Vec<(usize, SendError)>>,
    done: Mutex<Option<Completer<BatchResult>>>,
    /// The messages, by index. Each cell is reached by one thread at a time: the builder's
    /// until [`Batch::build`] makes the cell's [`Pending`], then whoever holds that
    /// pending. Empty where a message failed before it was queued, or is finished.
    messages: Box<[UnsafeCell<Option<Message>>]>,
}

// SAFETY: every cell of `messages` is reached by one thread at a time (see the field),
// handed over with its `Pending` through the queue's lock; messages are `Send`. The
// other fields are `Sync` already.
unsafe impl Sync for Batch {}

impl Batch {
    /// A batch of `messages` completing `done`, held by its builder: a [`Pending`] for each
    /// message present is pushed onto `queued`, in order. `None` stands for a message that
    /// failed before it could be queued; report it with [`Batch::failed_early`].
    pub(crate) fn build(
        done: Completer<BatchResult>,
        messages: Vec<Option<Message>>,
        queued: &mut Vec<Pending>,
    ) -> Arc<Batch> {
        let batch = Arc::new(Batch {
            total: AtomicUsize::new(0),
            remaining: AtomicUsize::new(1),
            failed: Mutex::new(Vec::new()),
            done: Mutex::new(Some(done)),
            messages: messages.into_iter().map(UnsafeCell::new).collect(),
        });
        let before = queued.len();
        for (index, cell) in batch.messages.iter().enumerate() {
            // SAFETY: nothing else has the batch yet.
            let len = cell.with(|p| unsafe { (*p).as_ref().map(Message::payload_len) });
            if let Some(payload_len) = len {
                queued.push(Pending {
                    payload_len,
                    kind: Kind::Batch(batch.clone(), index as u32),
                });
            }
        }
        batch.add(queued.len() - before);
        batch
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
    fn add(&self, n: usize) {
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
    fn fail(&self, index: usize, msg: Message, error: Error) {
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
    fn succeed(&self) {
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

/// An outgoing user message and what to do when it is finished, small to move (queued,
/// taken by the writer, handed back): a plain send's message waits in its completion
/// ([`Lent`]); any other is boxed with its [`Done`]. Its payload's length is kept here,
/// so that sizing a write under the remote's lock reads no other memory. (Boxing every
/// message, plain sends too, was measured and lost: see docs/performance-history.md.)
pub(crate) struct Pending {
    payload_len: u64,
    kind: Kind,
}

enum Kind {
    /// A plain send: the message is in its completion, as `Ok`.
    Lent(Lent<SendResult>),
    Owned(Box<Owned>),
    /// Message `.1` of a batch, which holds it.
    Batch(Arc<Batch>, u32),
    /// Finished.
    Gone,
}

/// A message that is not a plain send, and what to do with it.
struct Owned {
    msg: Option<Message>,
    done: Option<Done>,
}

impl Pending {
    pub(crate) fn new(msg: Message, done: Done) -> Pending {
        Pending {
            payload_len: msg.payload_len(),
            kind: Kind::Owned(Box::new(Owned {
                msg: Some(msg),
                done: Some(done),
            })),
        }
    }

    /// A plain send: the message waits in its completion, `lent` (made by
    /// [`crate::completion::lent_pair`] from `Ok(message)`).
    pub(crate) fn lent(lent: Lent<SendResult>) -> Pending {
        let payload_len = match lent.get() {
            Ok(m) => m.payload_len(),
            Err(e) => e.message.payload_len(),
        };
        Pending {
            payload_len,
            kind: Kind::Lent(lent),
        }
    }

    #[inline]
    pub(crate) fn msg(&self) -> &Message {
        match &self.kind {
            Kind::Lent(l) => match l.get() {
                Ok(m) => m,
                Err(e) => &e.message,
            },
            Kind::Owned(o) => o
                .msg
                .as_ref()
                .expect("an owned message is present until finished"),
            Kind::Batch(b, i) => {
                // SAFETY: this pending has the cell (see `Batch::messages`), and the
                // reference lives no longer than the borrow of it.
                let m = b.messages[*i as usize].with(|p| unsafe { (*p).as_ref() });
                m.expect("a batch's message is present until finished")
            }
            Kind::Gone => unreachable!("a finished message is not used again"),
        }
    }

    /// The message's header and data length, without reading the message.
    #[inline]
    pub(crate) fn payload_len(&self) -> u64 {
        self.payload_len
    }

    /// Completes with success, like `finish(Ok(()))`, except that a waiter's wake-up (or
    /// callback) is handed back to be done later (see [`Lent::complete_later`]).
    #[inline]
    pub(crate) fn finish_ok_later(mut self) -> Option<Wake<SendResult>> {
        match std::mem::replace(&mut self.kind, Kind::Gone) {
            Kind::Lent(l) => l.complete_later(),
            Kind::Owned(o) => {
                // A success never fails a request.
                let _ = (*o).finish(Ok(()));
                None
            }
            Kind::Batch(b, i) => {
                finish_batched(&b, i, Ok(()));
                None
            }
            Kind::Gone => None,
        }
    }

    /// Completes with the outcome. Must run without any lock held: the waiter may run code
    /// that sends. Returns the request to fail, if the message was one's outgoing half.
    pub(crate) fn finish(mut self, result: Result<(), Error>) -> Option<(u64, Identity, Error)> {
        match std::mem::replace(&mut self.kind, Kind::Gone) {
            Kind::Lent(l) => {
                match result {
                    // The common case: a flag, not a move of the message.
                    Ok(()) => l.complete(),
                    Err(error) => l.complete_with(error, failed),
                }
                None
            }
            Kind::Owned(o) => (*o).finish(result),
            Kind::Batch(b, i) => {
                finish_batched(&b, i, result);
                None
            }
            Kind::Gone => None,
        }
    }
}

impl Owned {
    fn finish(mut self, result: Result<(), Error>) -> Option<(u64, Identity, Error)> {
        let msg = self.msg.take();
        let done = self.done.take();
        match (done, msg) {
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
            _ => None,
        }
    }
}

/// A plain send's result, `Ok(message)` until now, as a failure with `error`.
#[allow(clippy::result_large_err)] // the result type of `Node::send`, returned unboxed
fn failed(r: SendResult, error: Error) -> SendResult {
    match r {
        Ok(message) => Err(SendError { error, message }),
        failed => failed,
    }
}

/// Finishes message `index` of `batch`: dropped where it is on success, handed to the
/// batch's failures otherwise.
fn finish_batched(batch: &Batch, index: u32, result: Result<(), Error>) {
    let cell = &batch.messages[index as usize];
    match result {
        Ok(()) => {
            // SAFETY: the caller held this message's pending, and so the cell.
            cell.with_mut(|p| unsafe { *p = None });
            batch.succeed();
        }
        Err(e) => {
            // SAFETY: as above.
            if let Some(msg) = cell.with_mut(|p| unsafe { (*p).take() }) {
                batch.fail(index as usize, msg, e);
            }
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // An unfinished owned message fails in `Owned`'s `Drop`.
        match std::mem::replace(&mut self.kind, Kind::Gone) {
            Kind::Lent(l) => l.complete_with(Error::Shutdown, failed),
            Kind::Batch(b, i) => finish_batched(&b, i, Err(Error::Shutdown)),
            Kind::Owned(_) | Kind::Gone => {}
        }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        // A finished one (the usual case) has nothing left: return before the message is
        // moved out of its place.
        if self.done.is_none() {
            return;
        }
        if let (Some(Done::RequestSent(_, _, c)), Some(msg)) = (self.done.take(), self.msg.take()) {
            c.complete(Err(SendError {
                error: Error::Shutdown,
                message: msg,
            }));
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
            let mut queued = Vec::new();
            // Message 0 failed its checks while the batch was built.
            let batch = Batch::build(done, vec![None, Some(msg(1)), Some(msg(2))], &mut queued);
            batch.failed_early(0, msg(0), Error::Shutdown);
            let (p2, p1) = (queued.pop().unwrap(), queued.pop().unwrap());
            assert_eq!(p2.msg().data(), [2], "the batch holds message 2");
            let t1 = thread::spawn(move || p2.finish(Err(Error::Shutdown)));
            let t2 = thread::spawn(move || p1.finish(Ok(())));
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
            let mut queued = Vec::new();
            let batch = Batch::build(done, vec![Some(msg(0)), Some(msg(1))], &mut queued);
            let (p1, p0) = (queued.pop().unwrap(), queued.pop().unwrap());
            let t1 = thread::spawn(move || p0.finish(Ok(())));
            batch.built();
            // One outcome is still missing: whatever ran, the batch is not complete.
            let c = c
                .try_wait()
                .expect_err("not complete before the last outcome");
            // Unfinished and dropped (the node closed): it fails with a shutdown.
            drop(p1);
            let e = c.wait().expect_err("the dropped one failed");
            assert_eq!(e.delivered(), 1);
            assert_eq!(
                e.into_messages()[0].data(),
                [1],
                "the dropped message handed back"
            );
            t1.join().unwrap();
        });
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// A queued message is moved into the remote's queue and out to the writer under the
    /// remote's lock: it must stay a few words, whatever the size of a message.
    #[test]
    fn a_pending_message_is_small_to_move() {
        let (pending, message) = (
            std::mem::size_of::<Pending>(),
            std::mem::size_of::<Message>(),
        );
        assert!(
            pending <= 32,
            "a Pending is {pending} bytes (a Message is {message})"
        );
    }
}
