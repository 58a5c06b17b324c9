//! The node: listeners, the remotes table, the send path, timers, garbage collection and
//! close. It owns the remotes (`remote.rs`, one lock each, in the sharded table of
//! `remotes.rs`), the pending requests (`requests.rs`), the connections' registry and the
//! policy (when to encrypt, when to dial, when to collect); each connection reports to it
//! through its [`Link`].

mod admission;
mod dial;
mod lifecycle;
mod link;
#[cfg(feature = "metrics")]
mod metrics;
mod peer;
mod registry;
mod remote;
mod remotes;
mod requests;
mod send;
mod stats;
pub(crate) mod timer;

pub use peer::Peer;
pub use stats::{Event, Events, RemoteInfo, Stats};

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use crate::completion::Completion;
use crate::config::{Config, Effective};
use crate::connection::{self, Conn, Settings, Traffic, READER_STACK};
use crate::error::Error;
use crate::frame::{Done, Pending};
use crate::message::{Identity, Message};
use crate::outcome::SendError;
use crate::tls::{TlsContext, TlsCurrent};
use crate::wire::Handshake;

use crate::burst::{more, Burst};
use admission::{accept_loop, bind};
use lifecycle::ThreadCount;
use link::Link;
use registry::{Registered, Registry};
use remote::{After, Deferred, Limits, Remote, Timer};
use remotes::Remotes;
use requests::Requests;
use stats::{bump, Counters, EventHub};
use timer::{Event as Timed, Timers};

/// Where received messages go: called on the connection's reader thread, must not block for
/// long (the pool and queue interfaces hand the message to other threads).
pub(crate) type Sink = Box<dyn Fn(Message) + Send + Sync>;

const SERVICE_STACK: usize = 128 * 1024;

/// How long `close()` waits for the node's threads before giving up on them (they are all
/// unblocked by closing their sockets, so this is only reached on a bug).
const CLOSE_WAIT: Duration = Duration::from_secs(10);

thread_local! {
    /// The node whose thread this is (0 for foreign threads), so `close()` called from a
    /// node thread does not wait for itself.
    static NODE_THREAD: Cell<usize> = const { Cell::new(0) };
}

/// Floods the node logs once a second, with a count (`burst.rs`).
#[derive(Default)]
struct Logs {
    /// Connections refused or not dialed for a limit.
    refusals: Burst,
    /// Threads that could not be started.
    resources: Burst,
    /// Accept errors.
    accept: Burst,
}

pub(crate) struct Inner {
    pub(crate) cfg: Effective,
    pub(crate) lim: Limits,
    settings: Arc<Settings>,
    pub(crate) identity: Identity,
    pub(crate) port: u16,
    remotes: Remotes,
    /// Every connection whose threads have not all ended, with its counts.
    conns: Registry,
    requests: Requests,
    pub(crate) timers: Timers,
    pub(crate) sink: Sink,
    threads: ThreadCount,
    listeners: Mutex<Vec<Arc<TcpListener>>>,
    counters: Counters,
    events: EventHub,
    /// Rate-limited logging of refusals and resource failures.
    logs: Logs,
    /// Test hook: this many thread spawns fail as if the system had no threads left.
    #[cfg(test)]
    fail_spawns: std::sync::atomic::AtomicUsize,
}

impl Inner {
    /// Runs deferred effects; must be called without any lock held.
    pub(crate) fn run_after(self: &Arc<Self>, after: &mut After) {
        for d in after.0.drain(..) {
            match d {
                Deferred::Send(b) => {
                    let (p, r) = *b;
                    if let Err(e) = &r {
                        self.counters.send_failed(e);
                    }
                    if let Some((id, identity, e)) = p.finish(r) {
                        self.requests.fail(id, identity, e);
                    }
                }
                Deferred::Release(r) => r.finish(),
                Deferred::Dial(conn) => self.start_dial(conn),
                Deferred::Shutdown(conn, reason) => conn.shutdown(reason, false),
                Deferred::Retire(conn) => {
                    if conn.retire() {
                        let at = Instant::now() + self.lim.timeout;
                        self.timers.schedule(at, Timed::Retire(conn.id));
                    }
                }
                Deferred::Kick(conn) => conn.kick(),
                Deferred::Queued => crate::connection::queued(),
                Deferred::Timer(at, t) => self.timers.schedule(at, Timed::Remote(t)),
            }
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.remotes.is_closed()
    }

    /// A snapshot of the counters and gauges (see [`Node::stats`]).
    fn stats(&self) -> Stats {
        let mut s = self.counters.snapshot();
        let traffic = Traffic::default();
        let conns = self.conns.traffic(&traffic);
        s.connections = conns.len() as u64;
        for c in &conns {
            s.slots_in_use += c.slots_in_use() as u64;
        }
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        s.msgs_in = get(&traffic.msgs_in);
        s.msgs_out = get(&traffic.msgs_out);
        s.bytes_in = get(&traffic.bytes_in);
        s.bytes_out = get(&traffic.bytes_out);
        s.acks_in = get(&traffic.acks_in);
        s.acks_out = get(&traffic.acks_out);
        for r in self.remotes.all() {
            let (queued, in_flight, _, _) = r.observe();
            s.queued += queued as u64;
            s.in_flight += in_flight as u64;
        }
        s.handshaking = self.conns.handshaking() as u64;
        s.threads = self.threads.get() as u64;
        s.events_dropped = get(&self.events.dropped);
        s.certificate = self.settings.tls.as_ref().map(|t| t.get().cert);
        s
    }
}

/// Closes the node when the last user handle goes away.
struct CloseGuard(Arc<Inner>);

impl Drop for CloseGuard {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// A libchirp node: listens for peers, sends messages, delivers received ones.
///
/// The handle is cheap to clone and `Send + Sync`; the node closes when [`Node::close`] is
/// called or the last handle is dropped.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use libchirp::{Config, Message, Node};
///
/// let mut config = Config::default();
/// config.port = 0; // any free port
/// config.disable_encryption = true;
/// // An echo node: every received message goes back to its sender.
/// let echo = Node::start_inline(config.clone(), |node, msg| drop(node.send(msg)))?;
///
/// let (answers, inbox) = std::sync::mpsc::channel();
/// let sender = Node::start(config, move |msg| { let _ = answers.send(msg); })?;
/// let addr = format!("127.0.0.1:{}", echo.port()).parse()?;
/// let sending = sender.send(Message::to(addr, b"hello"));
/// let back = inbox.recv_timeout(Duration::from_secs(5))?;
/// assert_eq!(back.data(), b"hello");
/// // Synchronous mode: our send completes once the echo released our message, which it
/// // does when its own send completed, which needs us to release the echo.
/// drop(back);
/// sending.wait()?;
/// sender.close();
/// echo.close();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
    _guard: Option<Arc<CloseGuard>>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("identity", &self.inner.identity)
            .field("port", &self.inner.port)
            .field("closed", &self.inner.is_closed())
            .finish()
    }
}

/// A handle that does not keep the node open (given to handlers and sinks).
#[derive(Clone)]
pub(crate) struct WeakNode(Weak<Inner>);

impl WeakNode {
    pub(crate) fn upgrade(&self) -> Option<Node> {
        self.0.upgrade().map(|inner| Node {
            inner,
            _guard: None,
        })
    }
}

impl Node {
    /// Starts a node: validates `config`, sets up TLS, listens, and delivers every received
    /// message to `sink`, which runs on the connection's reader thread — or, for a message
    /// that had to wait for a slot, on the thread that released one (keep it short; the
    /// [`pool`](crate::pool) and [`queue`](crate::queue) interfaces are built on it).
    pub fn start(
        config: Config,
        sink: impl Fn(Message) + Send + Sync + 'static,
    ) -> Result<Node, Error> {
        Node::start_with(config, |_| Box::new(sink))
    }

    /// Like [`Node::start`], but the handler also gets a handle to the node, so it can send
    /// (for example reply) directly. It runs on the connection's reader thread, like C
    /// libchirp's receive callback: it must not block — in particular it must not wait on a
    /// completion — or that connection stops reading. The handle does not keep the node open.
    ///
    /// ```
    /// use libchirp::{Config, Node};
    /// let mut config = Config::default();
    /// config.port = 0;
    /// config.disable_encryption = true;
    /// // An echo node: release the request, then send it back without waiting (see the
    /// // crate docs for why the release comes first).
    /// let echo = Node::start_inline(config, |node, mut msg| {
    ///     let _ = msg.release();
    ///     drop(node.send(msg));
    /// })?;
    /// # Ok::<(), libchirp::Error>(())
    /// ```
    pub fn start_inline(
        config: Config,
        handler: impl Fn(&Node, Message) + Send + Sync + 'static,
    ) -> Result<Node, Error> {
        Node::start_with(config, move |weak| {
            Box::new(move |msg| {
                if let Some(node) = weak.upgrade() {
                    handler(&node, msg);
                }
            })
        })
    }

    /// Like [`Node::start`], with a sink built from a handle that does not keep the node open.
    pub(crate) fn start_with(
        config: Config,
        make_sink: impl FnOnce(WeakNode) -> Sink,
    ) -> Result<Node, Error> {
        let cfg = config.validate()?;
        let tls = if cfg.config.disable_encryption {
            None
        } else {
            let chain = cfg.config.cert_chain.as_deref().expect("validated");
            let dh = cfg.config.dh_params.as_deref().expect("validated");
            let warn = cfg.config.cert_expiry_warning;
            Some(TlsCurrent::new(TlsContext::new(chain, dh, warn)?))
        };
        let (listeners, port) = bind(&cfg)?;
        let lim = Limits {
            timeout: cfg.config.timeout,
            reuse_time: cfg.reuse_time,
            synchronous: cfg.config.synchronous,
            max_queued: cfg.max_queued,
        };
        let identity = cfg.identity;
        let encrypted = tls.is_some();
        let settings = Arc::new(Settings {
            handshake: Handshake { port, identity },
            timeout: cfg.config.timeout,
            connect_timeout: cfg.connect_timeout,
            max_slots: cfg.max_slots,
            buffer_size: cfg.buffer_size,
            max_msg_size: cfg.config.max_msg_size,
            synchronous: cfg.config.synchronous,
            tls,
        });
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| Inner {
            sink: make_sink(WeakNode(weak.clone())),
            cfg,
            lim,
            settings,
            identity,
            port,
            remotes: Remotes::new(),
            conns: Registry::new(),
            requests: Requests::new(),
            timers: Timers::new(),
            threads: ThreadCount::new(),
            listeners: Mutex::new(listeners.into_iter().map(Arc::new).collect()),
            counters: Counters::default(),
            events: EventHub::new(),
            logs: Logs::default(),
            #[cfg(test)]
            fail_spawns: std::sync::atomic::AtomicUsize::new(0),
        });
        let node = Node {
            _guard: Some(Arc::new(CloseGuard(inner.clone()))),
            inner,
        };
        node.start_threads()?;
        log::info!(
            "node {} listening on port {} ({}; at most {} connections, {} in the handshake, {} queued per remote)",
            identity,
            port,
            if encrypted {
                "TLS except loopback"
            } else {
                "no encryption"
            },
            node.inner.cfg.max_connections,
            node.inner.cfg.max_handshaking,
            node.inner.cfg.max_queued,
        );
        Ok(node)
    }

    fn start_threads(&self) -> Result<(), Error> {
        let inner = &self.inner;
        inner.spawn("chirp-timer".into(), SERVICE_STACK, |inner| {
            let weak = Arc::downgrade(&inner);
            let timers = &inner.timers;
            timers.run(|ev| {
                if let Some(i) = weak.upgrade() {
                    i.on_timer(ev);
                }
            });
        })?;
        #[cfg(feature = "metrics")]
        inner
            .timers
            .schedule(Instant::now() + Duration::from_secs(1), Timed::Metrics);
        let r = inner.lim.reuse_time.as_millis() as u64;
        inner.timers.schedule(
            Instant::now() + Duration::from_millis(crate::rand::range(r / 2, r)),
            Timed::Gc,
        );
        let listeners = inner
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for l in listeners {
            let family = if l.local_addr().map(|a| a.is_ipv6()).unwrap_or(false) {
                "v6"
            } else {
                "v4"
            };
            inner.spawn(
                format!("chirp-accept-{family}"),
                SERVICE_STACK,
                move |inner| accept_loop(&inner, &l),
            )?;
        }
        Ok(())
    }

    /// The node's identity (sent to every peer in the handshake).
    pub fn identity(&self) -> Identity {
        self.inner.identity
    }

    /// The port the node listens on and advertises (the bound port when configured as 0).
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// The effective configuration.
    pub fn config(&self) -> &Effective {
        &self.inner.cfg
    }

    /// True once [`Node::close`] was called (or the last handle dropped).
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Closes the node: stops listening, fails every queued and in-flight send and every
    /// pending request with [`Error::Shutdown`], closes every connection and ends every
    /// thread. Returns once they have ended. Calling it again does nothing.
    ///
    /// Received messages still held by the application can be dropped or released
    /// afterwards; no ACK is sent for them.
    pub fn close(&self) {
        self.inner.close();
    }

    /// The node's listening addresses.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        let listeners = self
            .inner
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Number of live threads owned by the node (for diagnostics and tests).
    #[doc(hidden)]
    pub fn thread_count(&self) -> usize {
        self.inner.threads.get()
    }

    /// Number of connections the node currently has (for diagnostics and tests).
    #[doc(hidden)]
    pub fn connection_count(&self) -> usize {
        self.inner.conns.len()
    }

    /// The node's counters since start and its gauges now (see [`Stats`]). Cheap: it reads
    /// relaxed atomics, and locks each connection and remote only long enough to read its
    /// gauges; the per-message path is untouched.
    ///
    /// ```
    /// use libchirp::{queue::Chirp, Config, Message};
    /// let mut config = Config::default();
    /// config.port = 0;
    /// config.disable_encryption = true;
    /// let a = Chirp::new(config.clone())?;
    /// let b = Chirp::new(config)?;
    /// let to = format!("127.0.0.1:{}", b.port()).parse()?;
    /// let sending = a.send(Message::to(to, b"hi"));
    /// b.recv_timeout(std::time::Duration::from_secs(5))?; // released when handed out
    /// sending.wait()?;
    /// let s = a.stats();
    /// assert_eq!((s.msgs_out, s.bytes_out, s.dialed), (1, 2, 1));
    /// println!("{} connections, {} messages out, {} failed", s.connections, s.msgs_out, s.sends_failed);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// Publishes the node's statistics through the `metrics` facade now (the node also
    /// does so every second): counters `chirp_*_total`, gauges `chirp_*`, with a `reason` or
    /// `kind` label where a counter is split. Names and labels are listed in the crate docs.
    #[cfg(feature = "metrics")]
    pub fn publish_metrics(&self) {
        metrics::publish(&self.inner.stats());
    }

    /// Replaces the certificate chain and DH parameters for **new** connections, without a
    /// restart: the node keeps its identity, its port and every queued and in-flight
    /// message, and existing connections carry on with the certificate they started with
    /// until they close (garbage collection ends idle ones after `reuse_time`).
    ///
    /// The files are checked first, as at start: readable PEM, a private key matching the
    /// node certificate, that certificate valid now and issued by a CA in the file. A bad
    /// file is an error ([`Error::Tls`] naming the file and what is wrong) and changes
    /// nothing. One that expires within `cert_expiry_warning` is used, with a warning.
    ///
    /// Every certificate in the chain file is trusted, so a CA is rolled without downtime
    /// in two reloads: first every node gets a file that trusts the old and the new CA (its
    /// certificate still from the old one), then every node gets its certificate from the
    /// new CA (still trusting both); the old CA can be dropped in a third round.
    ///
    /// Fails with [`Error::InvalidValue`] on a node started without encryption.
    ///
    /// ```
    /// let dir = std::env::temp_dir().join(format!("chirp-reload-doc-{}", std::process::id()));
    /// let pki = libchirp::pki::TestPki::generate(&dir)?;
    /// let mut config = libchirp::Config::default();
    /// config.port = 0;
    /// config.cert_chain = Some(pki.node_v1.clone());
    /// config.dh_params = Some(pki.dh_params.clone());
    /// let node = libchirp::Node::start(config, drop)?;
    /// let before = node.identity();
    /// node.reload_tls(&pki.node_v3, &pki.dh_params)?;
    /// assert_eq!(node.stats().certificate.unwrap().subject, "CN=node-v3.libchirp.test");
    /// assert_eq!(node.identity(), before);
    /// // A file that is not a certificate chain is refused, and the node keeps the last one.
    /// assert!(node.reload_tls(&pki.dh_params, &pki.dh_params).is_err());
    /// assert_eq!(node.stats().certificate.unwrap().subject, "CN=node-v3.libchirp.test");
    /// # std::fs::remove_dir_all(&dir).ok();
    /// # Ok::<(), libchirp::Error>(())
    /// ```
    pub fn reload_tls(
        &self,
        cert_chain: impl AsRef<std::path::Path>,
        dh_params: impl AsRef<std::path::Path>,
    ) -> Result<(), Error> {
        let Some(current) = self.inner.settings.tls.as_ref() else {
            return Err(Error::invalid(
                "disable_encryption",
                true,
                "a node started with encryption (cert_chain and dh_params) to reload its certificate",
            ));
        };
        let (chain, dh) = (cert_chain.as_ref(), dh_params.as_ref());
        let ctx = TlsContext::new(chain, dh, self.inner.cfg.config.cert_expiry_warning)?;
        log::info!(
            "node {}: new connections now present {} ({})",
            self.inner.identity,
            ctx.cert,
            chain.display()
        );
        current.replace(ctx);
        Ok(())
    }

    /// Every peer the node knows, with its connection's state and traffic (see
    /// [`RemoteInfo`]).
    pub fn remotes(&self) -> Vec<RemoteInfo> {
        let (now, wall) = (Instant::now(), std::time::SystemTime::now());
        let at = |t: Instant| wall - now.saturating_duration_since(t);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        self.inner
            .remotes
            .all()
            .into_iter()
            .map(|r| {
                let (queued, in_flight, conn, last) = r.observe();
                let live = conn.as_ref().filter(|c| c.connected_since().is_some());
                RemoteInfo {
                    address: SocketAddr::new(r.key.0, r.key.1),
                    identity: live.and_then(|c| c.peer_info()).map(|i| i.identity),
                    encrypted: live.is_some_and(|c| c.is_encrypted()),
                    peer_certificate: live.and_then(|c| c.peer_certificate()),
                    connected_since: live.and_then(|c| c.connected_since()).map(at),
                    last_activity: at(last),
                    queued: queued as u64,
                    in_flight: in_flight as u64,
                    slots_in_use: live.map_or(0, |c| c.slots_in_use() as u64),
                    msgs_in: live.map_or(0, |c| get(&c.traffic.msgs_in)),
                    msgs_out: live.map_or(0, |c| get(&c.traffic.msgs_out)),
                    bytes_in: live.map_or(0, |c| get(&c.traffic.bytes_in)),
                    bytes_out: live.map_or(0, |c| get(&c.traffic.bytes_out)),
                }
            })
            .collect()
    }

    /// Connection events from now on: connected, disconnected, refused. The channel is
    /// bounded (1,024); a slow or absent reader never blocks or slows the node — events
    /// that do not fit are dropped and counted (`Stats::events_dropped`). Events are only
    /// produced once this was called.
    ///
    /// ```
    /// use std::time::Duration;
    /// use libchirp::{Config, Event, Message, Node};
    /// let mut config = Config::default();
    /// config.port = 0;
    /// config.disable_encryption = true;
    /// let a = Node::start(config.clone(), drop)?;
    /// let events = a.events();
    /// let b = Node::start(config, drop)?;
    /// b.send(Message::to(format!("127.0.0.1:{}", a.port()).parse()?, b"hi")).wait()?;
    /// match events.recv_timeout(Duration::from_secs(5)).ok_or("no event within 5 s")? {
    ///     Event::Connected { identity, incoming, .. } => {
    ///         assert_eq!(identity, b.identity());
    ///         assert!(incoming);
    ///     }
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn events(&self) -> Events {
        self.inner.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn config(synchronous: bool) -> Config {
        Config {
            port: 0,
            disable_encryption: true,
            synchronous,
            bind_v6: None,
            ..Config::default()
        }
    }

    /// An echo node and its IPv4 address.
    fn echo(synchronous: bool) -> (Node, SocketAddr) {
        let echo = Node::start_inline(config(synchronous), |n, m| drop(n.send(m))).unwrap();
        let to = SocketAddr::from(([127, 0, 0, 1], echo.port()));
        (echo, to)
    }

    /// A node whose sink hands each message's data to the receiver.
    fn collecting(c: Config) -> (Node, mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = mpsc::channel();
        let node = Node::start(c, move |m| {
            let _ = tx.send(m.data().to_vec());
        })
        .unwrap();
        (node, rx)
    }

    /// With the connection registry locked, the request table locked, and every shard of
    /// the remotes table but the peer's write-locked by this thread, sends to that peer (and
    /// their ACKs, and the echo's replies) still complete: the per-message path takes only
    /// the peer's shard (shared) and the remote's and connection's own locks.
    #[test]
    fn the_send_path_takes_no_node_wide_lock() {
        for sync in [true, false] {
            let (echo, to) = echo(sync);
            let (node, rx) = collecting(config(sync));
            node.send(Message::to(to, b"warm-up".to_vec()))
                .wait()
                .unwrap();
            assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), b"warm-up");
            let inner = &node.inner;
            let mine = inner.remotes.shard(&crate::proto::key::key_of(&to)) as *const _;
            let held: Vec<_> = inner
                .remotes
                .shards
                .iter()
                .filter(|s| !std::ptr::eq(*s, mine))
                .map(|s| s.write().unwrap())
                .collect();
            assert_eq!(held.len(), 15);
            let registry = inner.conns.lock();
            let requests = inner.requests.map.lock().unwrap();
            let (done_tx, done_rx) = mpsc::channel();
            let sender = node.clone();
            std::thread::spawn(move || {
                for i in 0..100u32 {
                    let r = sender
                        .send(Message::to(to, i.to_be_bytes().to_vec()))
                        .wait();
                    let _ = done_tx.send(r.is_ok());
                }
            });
            for i in 0..100u32 {
                let ok = done_rx.recv_timeout(Duration::from_secs(10));
                assert_eq!(ok, Ok(true), "send {i} (synchronous: {sync})");
                let back = rx.recv_timeout(Duration::from_secs(10)).unwrap();
                assert_eq!(back, i.to_be_bytes());
            }
            drop((held, registry, requests));
            node.close();
            echo.close();
        }
    }

    /// This thread's last remote is remembered (no table lookup per send); once that remote
    /// was removed — here while this thread still holds it, so the remembered one is alive
    /// but no longer in the table — the next send finds a new one and is delivered.
    #[test]
    fn a_send_after_its_remembered_remote_was_removed_is_delivered() {
        for sync in [false, true] {
            let (echo, to) = echo(sync);
            let (node, rx) = collecting(config(sync));
            let inner = &node.inner;
            for round in 0..3u8 {
                node.send(Message::to(to, vec![round])).wait().unwrap();
                let back = rx.recv_timeout(Duration::from_secs(10));
                assert_eq!(back, Ok(vec![round]), "round {round} (synchronous: {sync})");
                let old = inner
                    .remotes
                    .get(&crate::proto::key::key_of(&to))
                    .expect("the remote of the send");
                let mut after = After::default();
                // What a send that finds the node closing does (`Remotes::enqueue`).
                inner.remotes.take_out(&old, &mut after);
                inner.end_connections_of(&old, false, &mut after);
                inner.run_after(&mut after);
                assert!(inner.remotes.get(&crate::proto::key::key_of(&to)).is_none());
                // `old` is still held: the remembered remote upgrades, and must be refused.
                node.send(Message::to(to, vec![round, 1])).wait().unwrap();
                let back = rx.recv_timeout(Duration::from_secs(10));
                assert_eq!(back, Ok(vec![round, 1]), "round {round} after the removal");
                let new = inner
                    .remotes
                    .get(&crate::proto::key::key_of(&to))
                    .expect("a new remote");
                assert!(
                    !Arc::ptr_eq(&old, &new),
                    "the removed remote was used again"
                );
            }
            node.close();
            echo.close();
        }
    }

    /// Two nodes of one process with the same configured identity, used by one thread to
    /// send to the same peer: each send goes out through its own node (the thread's
    /// remembered remote belongs to one node only), so each echo comes back to its sender.
    #[test]
    fn nodes_with_one_identity_keep_their_own_remotes() {
        let (echo, to) = echo(false);
        let mut c = config(false);
        c.identity = Identity::random();
        let (a, a_rx) = collecting(c.clone());
        let (b, b_rx) = collecting(c);
        for round in 0..3u8 {
            for (name, node, rx) in [("a", &a, &a_rx), ("b", &b, &b_rx)] {
                node.send(Message::to(to, vec![round])).wait().unwrap();
                let back = rx.recv_timeout(Duration::from_secs(10));
                assert_eq!(back, Ok(vec![round]), "round {round}: node {name}'s echo");
            }
        }
        assert!(
            a_rx.try_recv().is_err() && b_rx.try_recv().is_err(),
            "an echo too many"
        );
        a.close();
        b.close();
        echo.close();
    }

    /// When no thread can be started, the one connection involved is refused (counted,
    /// logged), and the node keeps serving: accepted and dialed connections alike.
    #[test]
    fn a_thread_that_cannot_be_started_refuses_one_connection_only() {
        use std::io::Read;
        let (echo, to) = echo(true);
        // Accepting side: the next reader thread cannot be started.
        echo.inner.fail_spawns.store(1, Ordering::SeqCst);
        let mut s = TcpStream::connect(to).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 18];
        let closed = match s.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
        };
        assert!(closed, "the connection without a thread is closed");
        let refused = || echo.stats().refused_resources;
        let deadline = Instant::now() + Duration::from_secs(10);
        while refused() != 1 && Instant::now() < deadline {
            thread::park_timeout(Duration::from_millis(5));
        }
        assert_eq!(refused(), 1);
        // Dialing side: the first send's connection has no thread; that one message
        // fails with a clear error, the next gets through.
        let (tx, rx) = mpsc::channel();
        let node = Node::start(config(true), move |m| {
            let _ = tx.send(m.data().to_vec());
        })
        .unwrap();
        node.inner.fail_spawns.store(1, Ordering::SeqCst);
        let e = node
            .send(Message::to(to, b"first".to_vec()))
            .wait()
            .unwrap_err();
        assert!(e.to_string().contains("cannot start"), "{e}");
        assert_eq!(e.into_message().data(), b"first");
        assert_eq!(node.stats().refused_resources, 1);
        // After the reconnect debounce the node dials again, and it works.
        node.send(Message::to(to, b"second".to_vec()))
            .wait()
            .unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), b"second");
        // And the echo served a good peer despite its refused connection.
        assert!(echo.stats().accepted >= 2);
        node.close();
        echo.close();
        assert_eq!(echo.thread_count(), 0);
    }

    /// A write that would block needs the writer thread; if it cannot be started, that
    /// connection fails (its in-flight send with a clear error) and the node goes on.
    #[test]
    fn a_writer_thread_that_cannot_be_started_fails_that_connection_only() {
        use std::io::{Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = listener.local_addr().unwrap();
        let node = Node::start(config(false), drop).unwrap();
        let sending = node.send(Message::to(to, b"hello".to_vec()));
        // A peer that handshakes and then never reads.
        let (mut peer, _) = listener.accept().unwrap();
        let mut hs = [0u8; 18];
        peer.read_exact(&mut hs).unwrap();
        peer.write_all(
            &Handshake {
                port: to.port(),
                identity: Identity::random(),
            }
            .encode(),
        )
        .unwrap();
        sending.wait().unwrap();
        assert_eq!(
            node.thread_count(),
            3,
            "timer, accept, one reader: no writer yet"
        );
        node.inner.fail_spawns.store(1, Ordering::SeqCst);
        let big = node.send(Message::to(to, vec![7u8; 32 << 20]));
        let e = big.wait().unwrap_err();
        assert!(e.to_string().contains("writer thread"), "{e}");
        assert_eq!(node.stats().refused_resources, 1);
        // The node still works: an echo elsewhere answers.
        let (echo, e_to) = echo(false);
        let (client, rx) = collecting(config(false));
        client
            .send(Message::to(e_to, b"ok".to_vec()))
            .wait()
            .unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), b"ok");
        node.close();
        client.close();
        echo.close();
        drop(peer);
    }
}
