//! The crate's error type.

use std::fmt;
use std::io;
use std::net::SocketAddr;

/// Everything that can go wrong in libchirp, one variant per kind of failure.
///
/// Errors are `Clone` because one connection failure can fail several operations.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A configuration or argument value is out of range.
    InvalidValue {
        /// The name of the offending field.
        field: &'static str,
        /// The value that was given.
        value: String,
        /// What would have been accepted.
        allowed: String,
    },
    /// The node could not bind or listen on its address.
    AddressInUse {
        /// The address that could not be bound.
        addr: SocketAddr,
        /// The operating system's explanation.
        reason: String,
    },
    /// A connection to a peer could not be established.
    CannotConnect {
        /// The peer that was dialed.
        addr: SocketAddr,
        /// The operating system's explanation.
        reason: String,
    },
    /// An operation did not complete within its deadline.
    Timeout {
        /// What timed out.
        what: String,
    },
    /// A peer violated the protocol or closed the connection.
    Protocol {
        /// What happened.
        reason: String,
    },
    /// TLS setup or a TLS session failed.
    Tls {
        /// What happened.
        reason: String,
    },
    /// A message is larger than the maximum message size.
    MessageTooLarge {
        /// Header plus data length of the message.
        size: u64,
        /// The configured maximum.
        max: u64,
    },
    /// A configured limit refused the operation: `limit` names the setting
    /// (`max_connections`, `max_handshaking` or `max_queued`), `value` is its effective value.
    /// Nothing was sent; a failed send hands the message back.
    LimitReached {
        /// The name of the limit that was hit.
        limit: &'static str,
        /// Its effective value.
        value: usize,
    },
    /// The node is closing or closed, or the connection was garbage-collected.
    Shutdown,
    /// A task submitted to the pool panicked.
    TaskPanicked {
        /// The panic message.
        message: String,
    },
    /// Another input/output error.
    Io {
        /// The kind of I/O error.
        kind: io::ErrorKind,
        /// The operating system's explanation.
        reason: String,
    },
}

impl Error {
    pub(crate) fn invalid(field: &'static str, value: impl fmt::Display, allowed: &str) -> Error {
        Error::InvalidValue {
            field,
            value: value.to_string(),
            allowed: allowed.to_string(),
        }
    }

    pub(crate) fn timeout(what: impl Into<String>) -> Error {
        Error::Timeout { what: what.into() }
    }

    pub(crate) fn protocol(reason: impl Into<String>) -> Error {
        Error::Protocol {
            reason: reason.into(),
        }
    }

    pub(crate) fn tls(reason: impl Into<String>) -> Error {
        Error::Tls {
            reason: reason.into(),
        }
    }

    /// True for [`Error::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// True for [`Error::Shutdown`].
    pub fn is_shutdown(&self) -> bool {
        matches!(self, Error::Shutdown)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidValue {
                field,
                value,
                allowed,
            } => write!(f, "invalid value for {field}: {value} (allowed: {allowed})"),
            Error::AddressInUse { addr, reason } => {
                write!(f, "cannot listen on {addr}: {reason}")
            }
            Error::CannotConnect { addr, reason } => {
                write!(f, "cannot connect to {addr}: {reason}")
            }
            Error::Timeout { what } => write!(f, "timed out: {what}"),
            Error::Protocol { reason } => write!(f, "protocol error: {reason}"),
            Error::Tls { reason } => write!(f, "TLS error: {reason}"),
            Error::MessageTooLarge { size, max } => write!(
                f,
                "message of {size} bytes (header + data) exceeds the maximum message size of {max} bytes"
            ),
            Error::LimitReached { limit, value } => write!(
                f,
                "{limit} ({value}) reached: refused (wait for earlier sends to complete, or raise the limit)"
            ),
            Error::Shutdown => write!(f, "the node is shutting down or the connection was closed by it"),
            Error::TaskPanicked { message } => write!(f, "task panicked: {message}"),
            Error::Io { kind, reason } => write!(f, "I/O error ({kind:?}): {reason}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io {
            kind: e.kind(),
            reason: e.to_string(),
        }
    }
}

/// Shorthand for results with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
