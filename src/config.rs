//! Node configuration: every libchirp setting with its default and allowed range.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use crate::error::Error;
use crate::message::Identity;

/// Configuration of a node. Start from [`Config::default`] and change what you need.
///
/// | field | default | allowed |
/// |---|---|---|
/// | `reuse_time` | 30 s | raised to 3 × `timeout`, then 0.5 s ..= 3600 s |
/// | `timeout` | 5 s | 0.1 s ..= 1200 s |
/// | `port` | 2998 | 0 (ephemeral) or 1025 ..= 65535 |
/// | `backlog` | 100 | 0 ..= 127 |
/// | `max_slots` | 0 (= 16 async) | forced to 1 when synchronous; else 0 ..= 32 |
/// | `synchronous` | true | |
/// | `buffer_size` | 0 (= 65536) | 0 or 1024 ..= 16 MiB |
/// | `max_msg_size` | 100 MiB | any `u32` |
/// | `bind_v4` / `bind_v6` | 0.0.0.0 / :: | `None` switches that family off (not both) |
/// | `identity` | zero (= random) | |
/// | `cert_chain` / `dh_params` | none | required unless `disable_encryption` |
/// | `disable_encryption` | false | |
/// | `always_encrypt` | false | encrypt loopback connections too |
/// | `auto_release` | true | used by the pool and queue interfaces |
/// | `pool_threads` | 0 (= number of CPUs) | 0 ..= 1024 |
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use libchirp::Config;
///
/// let mut config = Config::default();
/// config.port = 0;
/// config.timeout = Duration::from_secs(2);
/// config.disable_encryption = true;
/// let effective = config.validate().unwrap();
/// assert_eq!(effective.reuse_time(), Duration::from_secs(30));
/// assert_eq!(effective.max_slots(), 1); // synchronous
///
/// config.timeout = Duration::from_secs(2000);
/// let err = config.validate().unwrap_err();
/// assert!(err.to_string().contains("timeout"));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// How long an idle connection is kept before it is garbage-collected.
    pub reuse_time: Duration,
    /// Send timeout (synchronous: until the peer released the message); the connect timeout
    /// is `min(2 × timeout, 60 s)`.
    pub timeout: Duration,
    /// The port to listen on and to advertise; 0 binds an ephemeral port.
    pub port: u16,
    /// Listen backlog.
    pub backlog: u8,
    /// Receive slots per connection (unreleased messages a peer may have outstanding).
    pub max_slots: u8,
    /// Synchronous mode: a send completes when the peer released the message.
    pub synchronous: bool,
    /// Read buffer size per connection (0 = 64 KiB).
    pub buffer_size: u32,
    /// Largest header + data accepted from a peer; by default also the largest this node
    /// sends (see `check_outgoing_size`).
    pub max_msg_size: u32,
    /// Refuse at `send` a message larger than `max_msg_size`, with
    /// [`Error::MessageTooLarge`] (default true). A peer's limit is its own: set this to
    /// false when peers accept larger messages than this node does (python-chirp and C
    /// libchirp check only on receipt; a peer that refuses a message closes the
    /// connection, which fails the send).
    pub check_outgoing_size: bool,
    /// IPv4 listen address, `None` to not listen on IPv4.
    pub bind_v4: Option<Ipv4Addr>,
    /// IPv6 listen address, `None` to not listen on IPv6.
    pub bind_v6: Option<Ipv6Addr>,
    /// Node identity; all zeros means "pick a random one".
    pub identity: Identity,
    /// PEM file with the node's private key, its certificate and the CA certificate(s).
    pub cert_chain: Option<PathBuf>,
    /// PEM file with Diffie-Hellman parameters.
    pub dh_params: Option<PathBuf>,
    /// Never use TLS.
    pub disable_encryption: bool,
    /// Use TLS on loopback connections too (libchirp's `ch_chirp_set_always_encrypt`, but
    /// per node).
    pub always_encrypt: bool,
    /// Release received messages automatically (pool: after the handler; queue: when handed
    /// out).
    pub auto_release: bool,
    /// Threads of the pool interface's handler pool (0 = number of CPUs).
    pub pool_threads: usize,
    /// Most connections (accepted and dialed, set up or not) the node holds at once; 0 =
    /// derived at start from the process's limits (open files, threads, memory mappings),
    /// with headroom. Beyond it an accepted socket is closed at once and a send that needs a
    /// new connection fails with [`Error::LimitReached`].
    pub max_connections: usize,
    /// Most accepted connections still in their handshake at once (0 = a quarter of the
    /// effective `max_connections`, at least 16), so that a flood of silent sockets cannot
    /// starve real peers.
    pub max_handshaking: usize,
    /// Most messages waiting in one remote's send queue (0 = 1,024). Beyond it a send fails
    /// at once with [`Error::LimitReached`] and hands the message back; wait for one of your
    /// earlier sends to that peer to complete, then send again.
    pub max_queued: usize,
    /// A node certificate that expires within this long is accepted at start (and by
    /// [`Node::reload_tls`](crate::Node::reload_tls)) with a logged warning naming the
    /// date. Default 30 days; `Duration::ZERO` never warns. An expired or not yet valid
    /// certificate is always refused.
    pub cert_expiry_warning: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            reuse_time: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            port: 2998,
            backlog: 100,
            max_slots: 0,
            synchronous: true,
            buffer_size: 0,
            max_msg_size: 100 * 1024 * 1024,
            check_outgoing_size: true,
            bind_v4: Some(Ipv4Addr::UNSPECIFIED),
            bind_v6: Some(Ipv6Addr::UNSPECIFIED),
            identity: Identity::zero(),
            cert_chain: None,
            dh_params: None,
            disable_encryption: false,
            always_encrypt: false,
            auto_release: true,
            pool_threads: 0,
            max_connections: 0,
            max_handshaking: 0,
            max_queued: 0,
            cert_expiry_warning: Duration::from_secs(30 * 86_400),
        }
    }
}

/// The values a node actually runs with, after defaults and libchirp's rewrites.
#[derive(Debug, Clone)]
pub struct Effective {
    pub(crate) config: Config,
    pub(crate) reuse_time: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_slots: usize,
    pub(crate) buffer_size: usize,
    pub(crate) identity: Identity,
    pub(crate) pool_threads: usize,
    pub(crate) max_connections: usize,
    pub(crate) max_handshaking: usize,
    pub(crate) max_queued: usize,
}

impl Effective {
    /// Effective reuse time: `max(reuse_time, 3 × timeout)`.
    pub fn reuse_time(&self) -> Duration {
        self.reuse_time
    }
    /// Send timeout.
    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }
    /// Connect timeout: `min(2 × timeout, 60 s)`.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
    /// Slots per connection: 1 when synchronous, 16 by default when asynchronous.
    pub fn max_slots(&self) -> usize {
        self.max_slots
    }
    /// Read buffer size per connection.
    pub fn buffer_size(&self) -> usize {
        self.buffer_size
    }
    /// The node identity (random if none was configured).
    pub fn identity(&self) -> Identity {
        self.identity
    }
    /// Number of handler threads for the pool interface.
    pub fn pool_threads(&self) -> usize {
        self.pool_threads
    }
    /// Most connections at once (derived from the process's limits unless configured).
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }
    /// Most accepted connections in their handshake at once.
    pub fn max_handshaking(&self) -> usize {
        self.max_handshaking
    }
    /// Most messages waiting in one remote's send queue.
    pub fn max_queued(&self) -> usize {
        self.max_queued
    }
    /// The configuration this was derived from.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

/// Connections the process's limits allow, with headroom: each connection needs a file
/// descriptor, one thread (two while a write is blocked) and about five memory mappings
/// per thread (stack, guard page, signal stack and its guard, allocator arenas).
pub(crate) fn derived_max_connections() -> usize {
    const HEADROOM_FDS: u64 = 64;
    const HEADROOM_THREADS: u64 = 64;
    const HEADROOM_MAPS: u64 = 2048;
    const MAPS_PER_CONNECTION: u64 = 5;
    let read_u64 = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let mut cap = u64::MAX;
    if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        cap = cap.min(soft.saturating_sub(HEADROOM_FDS));
    }
    let mut threads = read_u64("/proc/sys/kernel/threads-max").unwrap_or(u64::MAX);
    if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NPROC) {
        threads = threads.min(soft);
    }
    cap = cap.min(threads.saturating_sub(HEADROOM_THREADS));
    if let Some(maps) = read_u64("/proc/sys/vm/max_map_count") {
        cap = cap.min(maps.saturating_sub(HEADROOM_MAPS) / MAPS_PER_CONNECTION);
    }
    cap.clamp(16, 1 << 20) as usize
}

const MAX_BUFFER: u32 = 16 * 1024 * 1024;

fn secs(d: Duration) -> String {
    format!("{:?}", d)
}

impl Config {
    /// Checks every value and computes the effective settings. The error names the field,
    /// the value and the allowed range.
    pub fn validate(&self) -> Result<Effective, Error> {
        let timeout = self.timeout;
        if timeout < Duration::from_millis(100) || timeout > Duration::from_secs(1200) {
            return Err(Error::invalid("timeout", secs(timeout), "100ms ..= 1200s"));
        }
        // libchirp raises the reuse time before checking it (PROTOCOL.md §5, quirk 12).
        let reuse_time = self.reuse_time.max(timeout * 3);
        if reuse_time < Duration::from_millis(500) || reuse_time > Duration::from_secs(3600) {
            return Err(Error::invalid(
                "reuse_time",
                secs(self.reuse_time),
                "500ms ..= 3600s (after raising it to 3 × timeout)",
            ));
        }
        if self.port != 0 && self.port <= 1024 {
            return Err(Error::invalid(
                "port",
                self.port,
                "0 (ephemeral) or 1025 ..= 65535",
            ));
        }
        if self.backlog >= 128 {
            return Err(Error::invalid("backlog", self.backlog, "0 ..= 127"));
        }
        let max_slots = if self.synchronous {
            1
        } else if self.max_slots == 0 {
            16
        } else {
            self.max_slots as usize
        };
        if max_slots > 32 {
            return Err(Error::invalid(
                "max_slots",
                self.max_slots,
                "0 (default 16) ..= 32; always 1 when synchronous",
            ));
        }
        let buffer_size = match self.buffer_size {
            0 => 65536,
            n if !(1024..=MAX_BUFFER).contains(&n) => {
                return Err(Error::invalid(
                    "buffer_size",
                    n,
                    "0 (default 65536) or 1024 ..= 16777216",
                ))
            }
            n => n as usize,
        };
        if self.bind_v4.is_none() && self.bind_v6.is_none() {
            return Err(Error::invalid(
                "bind_v4/bind_v6",
                "both None",
                "at least one address family to listen on",
            ));
        }
        if !self.disable_encryption {
            if self.cert_chain.is_none() {
                return Err(Error::invalid(
                    "cert_chain",
                    "None",
                    "a PEM file with key, certificate and CA (or set disable_encryption)",
                ));
            }
            if self.dh_params.is_none() {
                return Err(Error::invalid(
                    "dh_params",
                    "None",
                    "a PEM file with DH parameters (or set disable_encryption)",
                ));
            }
        }
        if self.pool_threads > 1024 {
            return Err(Error::invalid(
                "pool_threads",
                self.pool_threads,
                "0 ..= 1024",
            ));
        }
        let pool_threads = if self.pool_threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        } else {
            self.pool_threads
        };
        let identity = if self.identity.is_zero() {
            Identity::random()
        } else {
            self.identity
        };
        let max_connections = match self.max_connections {
            0 => derived_max_connections(),
            n => n,
        };
        let max_handshaking = match self.max_handshaking {
            0 => (max_connections / 4).max(16).min(max_connections),
            n => n,
        };
        if max_handshaking > max_connections {
            return Err(Error::invalid(
                "max_handshaking",
                max_handshaking,
                format!("0 (default) ..= max_connections ({max_connections})").as_str(),
            ));
        }
        let max_queued = match self.max_queued {
            0 => 1024,
            n => n,
        };
        Ok(Effective {
            config: self.clone(),
            reuse_time,
            connect_timeout: (timeout * 2).min(Duration::from_secs(60)),
            max_slots,
            buffer_size,
            identity,
            pool_threads,
            max_connections,
            max_handshaking,
            max_queued,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain() -> Config {
        Config {
            disable_encryption: true,
            ..Config::default()
        }
    }

    fn field_of(e: Error) -> &'static str {
        match e {
            Error::InvalidValue { field, .. } => field,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn defaults_and_effective_values() {
        let e = plain().validate().unwrap();
        assert_eq!(e.reuse_time(), Duration::from_secs(30));
        assert_eq!(e.timeout(), Duration::from_secs(5));
        assert_eq!(e.connect_timeout(), Duration::from_secs(10));
        assert_eq!(e.max_slots(), 1);
        assert_eq!(e.buffer_size(), 65536);
        assert!(!e.identity().is_zero());
        let c = Config::default();
        assert_eq!(c.port, 2998);
        assert_eq!(c.backlog, 100);
        assert_eq!(c.max_msg_size, 100 * 1024 * 1024);
        assert!(c.synchronous && c.auto_release && !c.disable_encryption);
    }

    #[test]
    fn rewrites_happen_before_checks() {
        let mut c = plain();
        c.synchronous = false;
        assert_eq!(c.validate().unwrap().max_slots(), 16);
        c.max_slots = 5;
        assert_eq!(c.validate().unwrap().max_slots(), 5);
        c.synchronous = true;
        c.max_slots = 100; // forced to 1 in sync mode, as in libchirp
        assert_eq!(c.validate().unwrap().max_slots(), 1);
        c.reuse_time = Duration::from_millis(200);
        c.timeout = Duration::from_secs(1);
        assert_eq!(c.validate().unwrap().reuse_time(), Duration::from_secs(3));
        c.timeout = Duration::from_secs(100);
        assert_eq!(
            c.validate().unwrap().connect_timeout(),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn identity_is_copied_whole() {
        let mut c = plain();
        let mut id = [0u8; 16];
        id[15] = 5;
        c.identity = Identity::from_bytes(id);
        assert_eq!(c.validate().unwrap().identity(), Identity::from_bytes(id));
    }

    #[test]
    fn invalid_values_name_the_field() {
        type Change = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|c| c.timeout = Duration::from_millis(50)),
                "timeout",
            ),
            (
                Box::new(|c| c.timeout = Duration::from_secs(1201)),
                "timeout",
            ),
            (
                Box::new(|c| c.reuse_time = Duration::from_secs(4000)),
                "reuse_time",
            ),
            (Box::new(|c| c.port = 80), "port"),
            (Box::new(|c| c.backlog = 128), "backlog"),
            (
                Box::new(|c| {
                    c.synchronous = false;
                    c.max_slots = 33
                }),
                "max_slots",
            ),
            (Box::new(|c| c.buffer_size = 100), "buffer_size"),
            (
                Box::new(|c| {
                    c.bind_v4 = None;
                    c.bind_v6 = None
                }),
                "bind_v4/bind_v6",
            ),
            (Box::new(|c| c.disable_encryption = false), "cert_chain"),
            (Box::new(|c| c.pool_threads = 5000), "pool_threads"),
        ];
        for (change, field) in cases {
            let mut c = plain();
            change(&mut c);
            let err = c.validate().unwrap_err();
            let text = err.to_string();
            assert!(text.contains(field), "{text}");
            assert!(text.contains("allowed"), "{text}");
            assert_eq!(field_of(err), field);
        }
        let mut c = plain();
        c.disable_encryption = false;
        c.cert_chain = Some("x.pem".into());
        assert_eq!(field_of(c.validate().unwrap_err()), "dh_params");
        let mut c = plain();
        c.port = 0;
        assert!(c.validate().is_ok());
        c.port = 1025;
        assert!(c.validate().is_ok());
    }
}
