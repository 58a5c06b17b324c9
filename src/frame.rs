//! Outgoing frames and the completions they carry: what flows from a remote's queues to a
//! connection's writer and back. No I/O and no locks here.
//!
//! A frame that is dropped unfinished fails its waiter with [`Error::Shutdown`], so no
//! completion is ever left pending, whichever path loses it.

use crate::completion::Completer;
use crate::error::{Error, SendError};
use crate::message::{Identity, Message, ReleaseDone};

/// What a user send completes with.
pub(crate) type SendResult = Result<Message, SendError>;

/// What to do when an outgoing message is finished.
pub(crate) enum Done {
    /// Complete the caller's completion.
    Wait(Completer<SendResult>),
    /// The message is the outgoing half of a request (its number and identity): a failure
    /// fails the request, success just drops the message.
    Request(u64, Identity),
}

/// An outgoing user message and its completion.
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
            _ => None,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let (Some(Done::Wait(c)), Some(msg)) = (self.done.take(), self.msg.take()) {
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
