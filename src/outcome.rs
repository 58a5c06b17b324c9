//! The outcome of a send that did not go through: [`SendError`] (one message) and
//! [`BatchError`] (a batch), each handing the undelivered messages back with their errors.
//! (Kept apart from `error`, which knows nothing of messages.)

use std::fmt;

use crate::error::Error;
use crate::message::Message;

/// A send or request that failed: the error and the message, handed back to the caller.
///
/// # Examples
///
/// ```no_run
/// # fn demo(node: &libchirp::Node, msg: libchirp::Message) {
/// match node.send(msg).wait() {
///     Ok(_sent) => {}
///     Err(failed) => {
///         eprintln!("send failed: {}", failed.error());
///         let _msg_again = failed.into_message();
///     }
/// }
/// # }
/// ```
pub struct SendError {
    pub(crate) error: Error,
    pub(crate) message: Message,
}

impl SendError {
    /// What went wrong.
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// The message that was not delivered.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The message that was not delivered, to retry or inspect.
    pub fn into_message(self) -> Message {
        self.message
    }

    /// Splits into the error and the message.
    pub fn into_parts(self) -> (Error, Message) {
        (self.error, self.message)
    }
}

impl fmt::Debug for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendError")
            .field("error", &self.error)
            .field("message", &self.message.identity())
            .finish()
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sending message {} failed: {}",
            self.message.identity(),
            self.error
        )
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<SendError> for Error {
    fn from(e: SendError) -> Error {
        e.error
    }
}

/// A batch send ([`Peer::send_batch`](crate::Peer::send_batch)) in which some messages
/// were not delivered: how many were, and each failed message with its error, in the order
/// they were given. Nothing is lost without an error: every message of the batch is either
/// counted in [`delivered`](BatchError::delivered) or handed back here.
///
/// ```no_run
/// # fn demo(peer: &libchirp::Peer, batch: Vec<libchirp::Message>) {
/// if let Err(failed) = peer.send_batch(batch).wait() {
///     eprintln!("{failed}"); // "2 of 100 messages not delivered: ..."
///     let retry: Vec<libchirp::Message> = failed.into_messages();
/// }
/// # }
/// ```
pub struct BatchError {
    pub(crate) delivered: usize,
    pub(crate) failures: Vec<SendError>,
}

impl BatchError {
    /// Messages of the batch that were delivered (synchronous mode: released by the peer;
    /// asynchronous mode: written).
    pub fn delivered(&self) -> usize {
        self.delivered
    }

    /// The first failure's error (every failed message has its own in
    /// [`failures`](BatchError::failures)).
    pub fn error(&self) -> &Error {
        &self.failures[0].error
    }

    /// Each message that was not delivered, with its error, in batch order.
    pub fn failures(&self) -> &[SendError] {
        &self.failures
    }

    /// The messages that were not delivered, in batch order, to retry or inspect.
    pub fn into_messages(self) -> Vec<Message> {
        self.failures.into_iter().map(|f| f.message).collect()
    }

    /// Each failed message with its error, in batch order.
    pub fn into_failures(self) -> Vec<SendError> {
        self.failures
    }
}

impl fmt::Debug for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchError")
            .field("delivered", &self.delivered)
            .field("failed", &self.failures.len())
            .field("error", self.error())
            .finish()
    }
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} messages not delivered: {}",
            self.failures.len(),
            self.failures.len() + self.delivered,
            self.error()
        )
    }
}

impl std::error::Error for BatchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.error())
    }
}
