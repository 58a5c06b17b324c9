//! The crate's error type, with its typed causes.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

/// Everything that can go wrong in libchirp, one variant per kind of failure.
///
/// Errors are `Clone` because one connection failure can fail several operations; an
/// operating-system error is kept whole (shared), and [`std::error::Error::source`] leads
/// to it, to the TLS problem ([`TlsError`]) or to the protocol violation
/// ([`ProtocolError`]).
///
/// ```
/// use std::error::Error as _;
/// use libchirp::{Config, Error, Message, Node};
/// let mut config = Config::default();
/// config.port = 0;
/// config.disable_encryption = true;
/// let node = Node::start(config, drop)?;
/// let nobody = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
/// let failed = node.send(Message::to(nobody, b"hi")).wait().unwrap_err();
/// let os = failed.error().source().expect("the OS error");
/// let os = os.downcast_ref::<std::io::Error>().expect("an io::Error");
/// assert_eq!(os.kind(), std::io::ErrorKind::ConnectionRefused);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
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
        /// The operating system's error.
        source: Arc<io::Error>,
    },
    /// A connection to a peer could not be established.
    CannotConnect {
        /// The peer that was dialed.
        addr: SocketAddr,
        /// The operating system's error.
        source: Arc<io::Error>,
    },
    /// An operation did not complete within its deadline.
    Timeout {
        /// What timed out.
        what: String,
    },
    /// A peer violated the protocol, or the connection to it broke or was closed by it.
    Protocol {
        /// What kind of failure (the error's source).
        kind: ProtocolError,
        /// What happened, in words.
        reason: String,
    },
    /// TLS setup or a TLS session failed.
    Tls {
        /// What went wrong (the error's source).
        kind: TlsError,
        /// What happened, in words (OpenSSL's own account included).
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
        /// The operating system's error.
        source: Arc<io::Error>,
    },
}

/// What kind of protocol failure an [`Error::Protocol`] is.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The peer closed the connection.
    Closed,
    /// Reading from or writing to the peer failed (the source is the OS error).
    Io(Arc<io::Error>),
    /// The peer sent a frame the protocol forbids.
    Frame(FrameError),
    /// Anything else the peer did wrong (a bad handshake, an unexpected frame).
    Violation,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::Closed => write!(f, "the peer closed the connection"),
            ProtocolError::Io(e) => write!(f, "the connection broke: {e}"),
            ProtocolError::Frame(e) => write!(f, "{e}"),
            ProtocolError::Violation => write!(f, "the peer violated the protocol"),
        }
    }
}

impl std::error::Error for ProtocolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProtocolError::Io(e) => Some(&**e),
            ProtocolError::Frame(e) => Some(e),
            _ => None,
        }
    }
}

/// Why a frame's preamble was refused. Each of these closes the connection it arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// `header_len + data_len` exceeds the receiver's maximum message size.
    TooLarge {
        /// The announced total size (computed without overflow).
        size: u64,
        /// The configured maximum.
        max: u64,
    },
    /// An ACK or NOOP carried a header or data.
    ControlWithPayload,
    /// An ACK or NOOP also had the REQ_ACK bit set.
    ControlWithReqAck,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { size, max } => write!(
                f,
                "peer announced a message of {size} bytes, more than the maximum of {max}"
            ),
            FrameError::ControlWithPayload => {
                write!(
                    f,
                    "peer sent an ACK or NOOP frame that carries header or data"
                )
            }
            FrameError::ControlWithReqAck => {
                write!(f, "peer sent an ACK or NOOP frame with the REQ_ACK bit set")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// What went wrong with TLS, for an [`Error::Tls`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsError {
    /// Our own certificate chain, key or DH parameters are missing or unusable (the reason
    /// names the file): fix the configuration.
    Setup,
    /// A certificate (ours, as the peer saw it, or the peer's) has expired: renew it.
    CertificateExpired,
    /// A certificate is not valid yet: check the clocks, or the certificate's dates.
    CertificateNotYetValid,
    /// A certificate is not signed by a CA the other side trusts: a stranger, or a CA
    /// missing from a chain file.
    UnknownIssuer,
    /// The peer presented no certificate, and one is required.
    NoCertificate,
    /// The TLS handshake failed for another reason (the peer may not speak TLS).
    Handshake,
    /// An established TLS session failed.
    Session,
}

impl TlsError {
    /// Classifies a handshake failure by what OpenSSL said.
    pub(crate) fn of_handshake(detail: &str) -> TlsError {
        let d = detail.to_ascii_lowercase();
        if d.contains("expired") {
            TlsError::CertificateExpired
        } else if d.contains("not yet valid") {
            TlsError::CertificateNotYetValid
        } else if d.contains("unknown ca")
            || d.contains("issuer")
            || d.contains("self-signed")
            || d.contains("self signed")
            || d.contains("certificate verify failed")
        {
            TlsError::UnknownIssuer
        } else if d.contains("did not return a certificate")
            || d.contains("certificate required")
            || d.contains("no certificate")
        {
            TlsError::NoCertificate
        } else {
            TlsError::Handshake
        }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsError::Setup => "the node's TLS configuration is unusable",
            TlsError::CertificateExpired => "a certificate has expired",
            TlsError::CertificateNotYetValid => "a certificate is not valid yet",
            TlsError::UnknownIssuer => "a certificate is not signed by a trusted CA",
            TlsError::NoCertificate => "the peer presented no certificate",
            TlsError::Handshake => "the TLS handshake failed",
            TlsError::Session => "the TLS session failed",
        })
    }
}

impl std::error::Error for TlsError {}

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

    /// A protocol failure described in words: the peer closing (when it says so) or a
    /// violation.
    pub(crate) fn protocol(reason: impl Into<String>) -> Error {
        let reason = reason.into();
        let kind = if reason.starts_with("peer closed") {
            ProtocolError::Closed
        } else {
            ProtocolError::Violation
        };
        Error::Protocol { kind, reason }
    }

    /// Reading from or writing to the peer failed: `what` was being done.
    pub(crate) fn broken(what: &str, e: io::Error) -> Error {
        Error::Protocol {
            reason: format!("{what} failed: {e}"),
            kind: ProtocolError::Io(Arc::new(e)),
        }
    }

    /// The peer sent a forbidden frame.
    pub(crate) fn frame(e: FrameError) -> Error {
        match e {
            FrameError::TooLarge { size, max } => Error::MessageTooLarge { size, max },
            other => Error::Protocol {
                reason: other.to_string(),
                kind: ProtocolError::Frame(other),
            },
        }
    }

    /// Our own TLS set-up failed.
    pub(crate) fn tls(reason: impl Into<String>) -> Error {
        Error::Tls {
            kind: TlsError::Setup,
            reason: reason.into(),
        }
    }

    /// A TLS handshake or session failed; `kind` classifies it.
    pub(crate) fn tls_kind(kind: TlsError, reason: impl Into<String>) -> Error {
        Error::Tls {
            kind,
            reason: reason.into(),
        }
    }

    /// An I/O error that is neither a connect nor a bind.
    pub(crate) fn io(e: io::Error) -> Error {
        Error::Io {
            source: Arc::new(e),
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
            Error::AddressInUse { addr, source } => {
                write!(f, "cannot listen on {addr}: {source}")
            }
            Error::CannotConnect { addr, source } => {
                write!(f, "cannot connect to {addr}: {source}")
            }
            Error::Timeout { what } => write!(f, "timed out: {what}"),
            Error::Protocol { reason, .. } => write!(f, "protocol error: {reason}"),
            Error::Tls { reason, .. } => write!(f, "TLS error: {reason}"),
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
            Error::Io { source } => write!(f, "I/O error ({:?}): {source}", source.kind()),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::AddressInUse { source, .. }
            | Error::CannotConnect { source, .. }
            | Error::Io { source } => Some(&**source),
            Error::Protocol { kind, .. } => Some(kind),
            Error::Tls { kind, .. } => Some(kind),
            _ => None,
        }
    }
}

/// Two errors are equal when they are the same failure in the same words; OS errors
/// compare by kind and message.
impl PartialEq for Error {
    fn eq(&self, other: &Error) -> bool {
        fn io_eq(a: &io::Error, b: &io::Error) -> bool {
            a.kind() == b.kind() && a.to_string() == b.to_string()
        }
        match (self, other) {
            (
                Error::AddressInUse { addr: a, source: x },
                Error::AddressInUse { addr: b, source: y },
            )
            | (
                Error::CannotConnect { addr: a, source: x },
                Error::CannotConnect { addr: b, source: y },
            ) => a == b && io_eq(x, y),
            (Error::Io { source: x }, Error::Io { source: y }) => io_eq(x, y),
            (Error::Tls { kind: a, reason: x }, Error::Tls { kind: b, reason: y }) => {
                a == b && x == y
            }
            (Error::Protocol { reason: x, .. }, Error::Protocol { reason: y, .. }) => x == y,
            _ => {
                std::mem::discriminant(self) == std::mem::discriminant(other)
                    && self.to_string() == other.to_string()
            }
        }
    }
}

impl Eq for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::io(e)
    }
}

/// Shorthand for results with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
