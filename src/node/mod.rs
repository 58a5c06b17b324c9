//! The node: listeners, the remotes table, the send path, timers, garbage collection and
//! close. It owns the remotes (`remote.rs`, one lock each, in the sharded table of
//! `remotes.rs`), the pending requests (`requests.rs`), the connections' registry and the
//! policy (when to encrypt, when to dial, when to collect); each connection reports to it
//! through its [`Link`](link::Link).

mod link;
#[cfg(feature = "metrics")]
mod metrics;
mod peer;
mod remote;
mod remotes;
mod requests;
mod stats;
pub(crate) mod timer;

pub use peer::Peer;
pub use stats::{Event, RemoteInfo, Stats};

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread;
use std::time::{Duration, Instant};

use crate::completion::Completion;
use crate::config::{Config, Effective};
use crate::connection::{self, Conn, Settings, Traffic, READER_STACK};
use crate::error::{Error, SendError};
use crate::frame::{Done, Pending};
use crate::message::{Identity, Message};
use crate::tls::{TlsContext, TlsCurrent};
use crate::wire::Handshake;

use crate::burst::{more, Burst};
use link::Link;
use remote::{After, Deferred, Enqueued, Limits, Remote};
use remotes::Remotes;
use requests::Requests;
use stats::{bump, Counters, Events};
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

/// A registered connection and the node's side of it.
struct Registered {
    conn: Arc<Conn>,
    link: Arc<Link>,
}

pub(crate) struct Inner {
    pub(crate) cfg: Effective,
    pub(crate) lim: Limits,
    settings: Arc<Settings>,
    pub(crate) identity: Identity,
    pub(crate) port: u16,
    remotes: Remotes,
    /// Every connection whose threads have not all ended: for garbage collection, close
    /// and counting. Never locked on the per-message path; may be locked while a remote is
    /// (when dialing), never the other way round.
    conns: Mutex<HashMap<u64, Registered>>,
    requests: Requests,
    pub(crate) timers: Timers,
    pub(crate) sink: Sink,
    threads: Mutex<usize>,
    threads_cv: Condvar,
    listeners: Mutex<Vec<Arc<TcpListener>>>,
    closed: AtomicBool,
    next_conn: AtomicU64,
    request_seq: AtomicU64,
    counters: Counters,
    events: Events,
    /// Traffic of connections that have ended.
    retired: Traffic,
    /// Accepted connections still in their handshake.
    handshaking: AtomicUsize,
    /// Rate-limited logging of refusals and resource failures.
    refusals_log: Burst,
    resources_log: Burst,
    accept_log: Burst,
    /// Test hook: this many thread spawns fail as if the system had no threads left.
    #[cfg(test)]
    fail_spawns: AtomicUsize,
}

impl Inner {
    fn registry(&self) -> MutexGuard<'_, HashMap<u64, Registered>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs deferred effects; must be called without any lock held.
    pub(crate) fn run_after(self: &Arc<Self>, after: &mut After) {
        for d in after.0.drain(..) {
            match d {
                Deferred::Send(p, r) => {
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
                Deferred::Kick(conn) => conn.kick(),
                Deferred::Timer(at, ev) => self.timers.schedule(at, ev),
            }
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Whether a connection to/from `ip` uses TLS: unless disabled, always except with
    /// `127.0.0.1` and `::1` (and then too with `always_encrypt`).
    fn should_encrypt(&self, ip: IpAddr) -> bool {
        if self.cfg.config.disable_encryption {
            return false;
        }
        if self.cfg.config.always_encrypt {
            return true;
        }
        !(ip == IpAddr::V4(Ipv4Addr::LOCALHOST) || ip == IpAddr::V6(Ipv6Addr::LOCALHOST))
    }

    /// Spawns a named node thread that is counted for `close()`.
    pub(crate) fn spawn(
        self: &Arc<Self>,
        name: String,
        stack: usize,
        f: impl FnOnce(Arc<Inner>) + Send + 'static,
    ) -> io::Result<()> {
        #[cfg(test)]
        if self
            .fail_spawns
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "Resource temporarily unavailable (injected by a test)",
            ));
        }
        *self.threads.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        let inner = self.clone();
        let r = thread::Builder::new()
            .name(name)
            .stack_size(stack)
            .spawn(move || {
                NODE_THREAD.with(|c| c.set(Arc::as_ptr(&inner) as usize));
                let guard = ThreadGuard(inner.clone());
                f(inner);
                drop(guard);
            });
        match r {
            Ok(_) => Ok(()),
            Err(e) => {
                self.thread_done();
                Err(e)
            }
        }
    }

    fn thread_done(&self) {
        let mut n = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        drop(n);
        self.threads_cv.notify_all();
    }

    /// A new outgoing connection for `remote`, registered (called with the remote locked),
    /// unless `max_connections` is reached.
    fn dial_conn(self: &Arc<Self>, remote: &Arc<Remote>) -> Result<Arc<Conn>, Error> {
        let addr = remote.dial_addr;
        let max = self.cfg.max_connections;
        let mut registry = self.registry();
        if registry.len() >= max {
            drop(registry);
            bump(&self.counters.refused_capacity);
            if let Some(n) = self.refusals_log.allow() {
                log::warn!(
                    "not dialing {addr}: max_connections ({max}) reached{}",
                    more(n)
                );
            }
            return Err(Error::LimitReached {
                limit: "max_connections",
                value: max,
            });
        }
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let link = Arc::new(Link::new(Arc::downgrade(self), Some(remote.clone()), false));
        let conn = Conn::dial(
            id,
            addr,
            self.should_encrypt(addr.ip()),
            self.settings.clone(),
            link.clone(),
        )
        .map_err(|e| Error::CannotConnect {
            addr,
            reason: e.to_string(),
        })?;
        let conn = Arc::new(conn);
        registry.insert(
            id,
            Registered {
                conn: conn.clone(),
                link,
            },
        );
        bump(&self.counters.dialed);
        Ok(conn)
    }

    /// Starts the thread that dials and then reads `conn`.
    fn start_dial(self: &Arc<Self>, conn: Arc<Conn>) {
        let addr = conn.peer;
        self.start_conn(conn, |e| Error::Io {
            kind: e.kind(),
            reason: format!("cannot start the thread of the connection to {addr}: {e}"),
        });
    }

    /// Starts a connection's first thread (set-up, then reading); if that fails, the
    /// connection is shut down with the error `fail` makes.
    fn start_conn(self: &Arc<Self>, conn: Arc<Conn>, fail: impl FnOnce(io::Error) -> Error) {
        let c = conn.clone();
        let r = self.spawn(
            format!("chirp-reader-{}", conn.peer),
            READER_STACK,
            move |_| connection::run(c),
        );
        if let Err(e) = r {
            self.resources_failed(&conn, &e);
            conn.shutdown(fail(e), false);
            conn.abandon();
        }
    }

    /// A thread for `conn` could not be started: count and log (rate-limited); the caller
    /// refuses that one connection.
    fn resources_failed(&self, conn: &Conn, e: &io::Error) {
        // Counted (refused_resources) when the connection is shut down with the Io error.
        if let Some(n) = self.resources_log.allow() {
            log::error!(
                "cannot start a thread for the connection with {}: {e}; that connection is refused, the node goes on{}",
                conn.peer,
                more(n)
            );
        }
    }

    /// An accepted socket: refused at once (closed) beyond `max_connections` or
    /// `max_handshaking`, else registered and started.
    fn accept(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        if self.is_closed() {
            return;
        }
        let mut registry = self.registry();
        let refused = if registry.len() >= self.cfg.max_connections {
            Some((
                "max_connections",
                self.cfg.max_connections,
                &self.counters.refused_capacity,
            ))
        } else if self.handshaking.load(Ordering::Relaxed) >= self.cfg.max_handshaking {
            Some((
                "max_handshaking",
                self.cfg.max_handshaking,
                &self.counters.refused_handshaking,
            ))
        } else {
            None
        };
        if let Some((limit, value, counter)) = refused {
            drop(registry);
            // Counted (and announced) before the socket closes: whoever sees it closed
            // also sees the refusal in the statistics.
            bump(counter);
            self.events.emit(|| Event::Refused {
                address: peer,
                reason: Error::LimitReached { limit, value },
            });
            if let Some(n) = self.refusals_log.allow() {
                log::warn!(
                    "refused a connection from {peer}: {limit} ({value}) reached{}",
                    more(n)
                );
            }
            drop(stream);
            return;
        }
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.handshaking.fetch_add(1, Ordering::Relaxed);
        let link = Arc::new(Link::new(Arc::downgrade(self), None, true));
        let conn = Arc::new(Conn::accepted(
            id,
            stream,
            peer,
            self.should_encrypt(peer.ip()),
            self.settings.clone(),
            link.clone(),
        ));
        registry.insert(
            id,
            Registered {
                conn: conn.clone(),
                link,
            },
        );
        drop(registry);
        bump(&self.counters.accepted);
        // Registered before the check: either close() sees it, or we see close().
        if self.is_closed() {
            conn.shutdown(Error::Shutdown, false);
            conn.abandon();
            return;
        }
        self.start_conn(conn, |e| Error::Io {
            kind: e.kind(),
            reason: format!("cannot start the connection's thread: {e}"),
        });
    }

    /// An accepted connection left its handshake (done or failed).
    fn handshake_over(&self) {
        self.handshaking.fetch_sub(1, Ordering::Relaxed);
    }

    /// The connection's threads have all ended: its traffic joins the retired totals.
    fn forget(&self, id: u64) {
        if let Some(r) = self.registry().remove(&id) {
            self.retired.add(&r.conn.traffic);
        }
    }

    /// A connection was shut down with `reason`: counted, and told to event listeners.
    fn conn_ended(&self, conn: &Conn, reason: &Error) {
        let info = conn.peer_info();
        let handshaken = conn.connected_since().is_some();
        self.counters
            .ended(reason, handshaken, !conn.outgoing, self.is_closed());
        match info {
            Some(i) if handshaken => self.events.emit(|| Event::Disconnected {
                address: SocketAddr::new(conn.peer.ip(), i.port),
                identity: i.identity,
                reason: reason.clone(),
            }),
            _ if !conn.outgoing => self.events.emit(|| Event::Refused {
                address: conn.peer,
                reason: reason.clone(),
            }),
            _ => {}
        }
    }

    /// A snapshot of the registry (the registry is not locked while using it).
    fn registered(&self) -> Vec<(Arc<Conn>, Arc<Link>)> {
        self.registry()
            .values()
            .map(|r| (r.conn.clone(), r.link.clone()))
            .collect()
    }

    /// Queues `p` for `addr` and gets it moving.
    fn enqueue(self: &Arc<Self>, addr: SocketAddr, mut p: Pending) {
        let mut after = After::default();
        let dial = |r: &Arc<Remote>| self.dial_conn(r);
        let remote = loop {
            let remote = self.remotes.get_or_create(addr);
            match remote.enqueue(&self.lim, p, &dial, &mut after) {
                Enqueued::Queued => break remote,
                // Garbage-collected meanwhile: look again (a new remote is made).
                Enqueued::Removed(back) => p = back,
                Enqueued::Full(back) => {
                    bump(&self.counters.queue_full);
                    bump(&self.counters.sends_failed_limit);
                    let e = Error::LimitReached {
                        limit: "max_queued",
                        value: self.lim.max_queued,
                    };
                    if let Some((id, identity, e)) = back.finish(Err(e)) {
                        self.requests.fail(id, identity, e);
                    }
                    return;
                }
            }
        };
        // The remote was found or made before this check: either close() removes it, or
        // we see that the node closes and remove it ourselves.
        if self.is_closed() {
            self.remove_remote(&remote, &mut after);
        }
        self.run_after(&mut after);
    }

    /// Queues `batch` for the remote at `addr`, starting from the remote in `cache` (updated
    /// when that one was garbage-collected meanwhile): one remote lock and one kick for
    /// the whole batch. What does not fit under `max_queued` fails with `LimitReached`.
    /// `batch` is left empty (its capacity is the caller's to reuse).
    fn enqueue_batch(
        self: &Arc<Self>,
        cache: &Mutex<Arc<Remote>>,
        addr: SocketAddr,
        batch: &mut Vec<Pending>,
    ) {
        let mut after = After::default();
        let dial = |r: &Arc<Remote>| self.dial_conn(r);
        let mut remote = cache.lock().unwrap_or_else(|e| e.into_inner()).clone();
        while remote
            .enqueue_batch(&self.lim, batch, &dial, &mut after)
            .is_err()
        {
            // Garbage-collected meanwhile: look again (a new remote is made).
            remote = self.remotes.get_or_create(addr);
            *cache.lock().unwrap_or_else(|e| e.into_inner()) = remote.clone();
        }
        if !batch.is_empty() {
            bump(&self.counters.queue_full);
            let e = Error::LimitReached {
                limit: "max_queued",
                value: self.lim.max_queued,
            };
            for p in batch.drain(..) {
                self.counters.send_failed(&e);
                let _ = p.finish(Err(e.clone()));
            }
        }
        if self.is_closed() {
            self.remove_remote(&remote, &mut after);
        }
        self.run_after(&mut after);
    }

    /// Takes `remote` out of the table, fails what it holds and shuts its connections down.
    fn remove_remote(&self, remote: &Arc<Remote>, after: &mut After) {
        self.remotes.remove(remote);
        remote.remove(after);
        for (conn, link) in self.registered() {
            if link.remote().is_some_and(|r| Arc::ptr_eq(r, remote)) {
                after.push(Deferred::Shutdown(conn, Error::Shutdown));
            }
        }
    }

    fn on_timer(self: &Arc<Self>, ev: Timed) {
        let mut after = After::default();
        match ev {
            #[cfg(feature = "metrics")]
            Timed::Metrics => {
                metrics::publish(&self.stats());
                self.timers
                    .schedule(Instant::now() + Duration::from_secs(1), Timed::Metrics);
            }
            Timed::Gc => {
                self.gc(&mut after);
                let r = self.lim.reuse_time.as_millis() as u64;
                let delay = crate::rand::range(r / 2, r);
                self.timers
                    .schedule(Instant::now() + Duration::from_millis(delay), Timed::Gc);
            }
            Timed::Debounce(key) => {
                if let Some(r) = self.remotes.get(&key) {
                    r.unblock(&|r| self.dial_conn(r), &mut after);
                }
            }
            Timed::AckDeadline(key) => {
                if let Some(r) = self.remotes.get(&key) {
                    r.ack_deadline(&self.lim, &mut after);
                }
            }
            Timed::Request(id, identity) => {
                let e = Error::timeout(format!(
                    "no answer to request {identity} within {:?}",
                    self.lim.timeout
                ));
                if self.requests.fail(id, identity, e) {
                    bump(&self.counters.requests_timed_out);
                }
            }
        }
        self.run_after(&mut after);
    }

    /// One garbage-collection run: connections that are no longer their remote's current
    /// one and idle longer than the reuse time, then remotes idle that long.
    fn gc(&self, after: &mut After) {
        let now = Instant::now();
        let r = self.lim.reuse_time;
        for (conn, link) in self.registered() {
            let idle = conn.idle_for(now).is_some_and(|idle| idle > r);
            if idle && !link.remote().is_some_and(|rem| rem.is_current(&conn)) {
                after.push(Deferred::Shutdown(conn, Error::Shutdown));
            }
        }
        for remote in self.remotes.all() {
            if remote.is_idle(now, r) {
                self.remove_remote(&remote, after);
            }
        }
    }

    /// A snapshot of the counters and gauges (see [`Node::stats`]).
    fn stats(&self) -> Stats {
        let mut s = self.counters.snapshot();
        let traffic = Traffic::default();
        traffic.add(&self.retired);
        let conns: Vec<Arc<Conn>> = self.registry().values().map(|r| r.conn.clone()).collect();
        s.connections = conns.len() as u64;
        for c in &conns {
            traffic.add(&c.traffic);
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
        s.handshaking = self.handshaking.load(Ordering::Relaxed) as u64;
        s.threads = *self.threads.lock().unwrap_or_else(|e| e.into_inner()) as u64;
        s.events_dropped = get(&self.events.dropped);
        s.certificate = self.settings.tls.as_ref().map(|t| t.get().cert);
        s
    }

    fn close(self: &Arc<Self>) {
        if self.closed.swap(true, Ordering::SeqCst) {
            // Already closed or closing: still wait for the threads (another caller may be
            // closing right now), but do not redo the work.
            self.wait_threads();
            return;
        }
        log::debug!("closing node {} on port {}", self.identity, self.port);
        let mut after = After::default();
        for remote in self.remotes.all() {
            self.remove_remote(&remote, &mut after);
        }
        for (conn, _) in self.registered() {
            after.push(Deferred::Shutdown(conn, Error::Shutdown));
        }
        self.run_after(&mut after);
        self.requests.fail_all();
        let listeners =
            std::mem::take(&mut *self.listeners.lock().unwrap_or_else(|e| e.into_inner()));
        for l in &listeners {
            crate::sys::shutdown_listener(l);
        }
        self.timers.stop();
        self.wait_threads();
        // The accept threads have ended: this closes the listening sockets.
        drop(listeners);
    }

    fn wait_threads(&self) {
        let own = NODE_THREAD.with(|c| c.get()) == self as *const Inner as usize;
        let target = usize::from(own);
        let deadline = Instant::now() + CLOSE_WAIT;
        let mut n = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        while *n > target {
            let now = Instant::now();
            if now >= deadline {
                log::error!(
                    "close: {} node threads did not end within {CLOSE_WAIT:?}",
                    *n - target
                );
                return;
            }
            n = self
                .threads_cv
                .wait_timeout(n, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

struct ThreadGuard(Arc<Inner>);

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        self.0.thread_done();
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
            conns: Mutex::new(HashMap::new()),
            requests: Requests::new(),
            timers: Timers::new(),
            threads: Mutex::new(0),
            threads_cv: Condvar::new(),
            listeners: Mutex::new(listeners.into_iter().map(Arc::new).collect()),
            closed: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
            request_seq: AtomicU64::new(1),
            counters: Counters::default(),
            events: Events::new(),
            retired: Traffic::default(),
            handshaking: AtomicUsize::new(0),
            refusals_log: Burst::new(),
            resources_log: Burst::new(),
            accept_log: Burst::new(),
            #[cfg(test)]
            fail_spawns: AtomicUsize::new(0),
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

    fn check_outgoing(&self, msg: &Message) -> Result<SocketAddr, Error> {
        let addr = msg.address.ok_or_else(|| {
            Error::invalid(
                "message address",
                "None",
                "the address and port of the receiving node",
            )
        })?;
        if addr.port() == 0 {
            return Err(Error::invalid("message port", 0, "1 ..= 65535"));
        }
        if msg.header.len() > usize::from(u16::MAX) {
            return Err(Error::invalid(
                "message header",
                format!("{} bytes", msg.header.len()),
                "at most 65535 bytes",
            ));
        }
        let max = u64::from(self.inner.cfg.config.max_msg_size);
        if msg.payload_len() > max || msg.data.len() as u64 > u64::from(u32::MAX) {
            return Err(Error::MessageTooLarge {
                size: msg.payload_len(),
                max,
            });
        }
        Ok(addr)
    }

    /// Sends `msg` to its address. The completion finishes — with the message handed back —
    /// when the peer released it (synchronous mode) or when it was written to the operating
    /// system (asynchronous mode), or with a [`SendError`] that also hands the message back.
    ///
    /// The connection is set up on demand, reused, and garbage-collected when idle.
    pub fn send(&self, msg: Message) -> Completion<Result<Message, SendError>> {
        let addr = match self.check_outgoing(&msg) {
            Ok(_) if self.inner.is_closed() => Err(Error::Shutdown),
            other => other,
        };
        let addr = match addr {
            Ok(a) => a,
            Err(error) => {
                self.inner.counters.send_failed(&error);
                return Completion::ready(Err(SendError {
                    error,
                    message: msg,
                }));
            }
        };
        let (completion, done) = Completion::pair();
        self.inner
            .enqueue(addr, Pending::new(msg, Done::Wait(done)));
        completion
    }

    /// Sends `msg` as a request and completes with the answer: the first message that
    /// arrives with the same identity (a peer answers by sending the received message back).
    /// The answer is not also given to the handler or queue; you decide when its slot is
    /// released. Fails with a timeout error when no answer arrives within the timeout; an
    /// answer arriving later is delivered as an ordinary message.
    pub fn request(&self, msg: Message) -> Completion<Result<Message, Error>> {
        let addr = match self.check_outgoing(&msg) {
            Ok(a) => a,
            Err(e) => return Completion::ready(Err(e)),
        };
        let inner = &self.inner;
        if inner.is_closed() {
            return Completion::ready(Err(Error::Shutdown));
        }
        let (completion, done) = Completion::pair();
        let identity = msg.identity;
        let id = inner.request_seq.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + inner.lim.timeout;
        if let Err(done) = inner.requests.insert(identity, id, done) {
            done.complete(Err(Error::invalid(
                "request identity",
                identity,
                "an identity without a pending request",
            )));
            return completion;
        }
        // Registered before the check: either close() fails it, or we see close() here.
        if inner.is_closed() {
            inner.requests.fail(id, identity, Error::Shutdown);
            return completion;
        }
        inner
            .timers
            .schedule(deadline, Timed::Request(id, identity));
        inner.enqueue(addr, Pending::new(msg, Done::Request(id, identity)));
        completion
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
        *self.inner.threads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of connections the node currently has (for diagnostics and tests).
    #[doc(hidden)]
    pub fn connection_count(&self) -> usize {
        self.inner.registry().len()
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
    /// match events.recv_timeout(Duration::from_secs(5))? {
    ///     Event::Connected { identity, incoming, .. } => {
    ///         assert_eq!(identity, b.identity());
    ///         assert!(incoming);
    ///     }
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn events(&self) -> crossbeam_channel::Receiver<Event> {
        self.inner.events.subscribe()
    }
}

fn accept_loop(inner: &Arc<Inner>, listener: &TcpListener) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                if inner.is_closed() {
                    return;
                }
                inner.accept(stream, peer);
            }
            Err(e) => {
                if inner.is_closed() {
                    return;
                }
                bump(&inner.counters.accept_errors);
                if let Some(n) = inner.accept_log.allow() {
                    log::warn!("accept failed: {e}{}", more(n));
                }
                // Out of file descriptors or similar: back off instead of spinning.
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE)
                        | Some(libc::ENFILE)
                        | Some(libc::ENOBUFS)
                        | Some(libc::ENOMEM)
                ) {
                    thread::park_timeout(Duration::from_millis(50));
                }
            }
        }
    }
}

fn bind(cfg: &Effective) -> Result<(Vec<TcpListener>, u16), Error> {
    let c = &cfg.config;
    let backlog = c.backlog;
    let in_use = |addr: SocketAddr, e: io::Error| Error::AddressInUse {
        addr,
        reason: e.to_string(),
    };
    let attempts = if c.port == 0 { 16 } else { 1 };
    let mut last_err = None;
    for _ in 0..attempts {
        let mut listeners = Vec::new();
        let mut port = c.port;
        if let Some(v4) = c.bind_v4 {
            let addr = SocketAddr::new(IpAddr::V4(v4), port);
            match crate::sys::listen(addr, backlog) {
                Ok(l) => {
                    port = l.local_addr().map_err(Error::from)?.port();
                    listeners.push(l);
                }
                Err(e) => return Err(in_use(addr, e)),
            }
        }
        if let Some(v6) = c.bind_v6 {
            let addr = SocketAddr::new(IpAddr::V6(v6), port);
            match crate::sys::listen(addr, backlog) {
                Ok(l) => {
                    port = l.local_addr().map_err(Error::from)?.port();
                    listeners.push(l);
                }
                Err(e) => {
                    // With an ephemeral port the IPv4 port may be taken on IPv6: try another.
                    last_err = Some(in_use(addr, e));
                    if c.port == 0 && c.bind_v4.is_some() {
                        continue;
                    }
                    return Err(last_err.expect("set"));
                }
            }
        }
        return Ok((listeners, port));
    }
    Err(last_err.unwrap_or_else(|| Error::invalid("port", c.port, "a free port")))
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

    /// With the connection registry locked, the request table locked, and every shard of
    /// the remotes table but the peer's write-locked by this thread, sends to that peer (and
    /// their ACKs, and the echo's replies) still complete: the per-message path takes only
    /// the peer's shard (shared) and the remote's and connection's own locks.
    #[test]
    fn the_send_path_takes_no_node_wide_lock() {
        for sync in [true, false] {
            let echo = Node::start_inline(config(sync), |n, m| drop(n.send(m))).unwrap();
            let (tx, rx) = mpsc::channel();
            let node = Node::start(config(sync), move |m| {
                let _ = tx.send(m.data().to_vec());
            })
            .unwrap();
            let to = SocketAddr::from(([127, 0, 0, 1], echo.port()));
            node.send(Message::to(to, b"warm-up".to_vec()))
                .wait()
                .unwrap();
            assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), b"warm-up");
            let inner = &node.inner;
            let mine = inner.remotes.shard(&remote::key_of(&to)) as *const _;
            let held: Vec<_> = inner
                .remotes
                .shards
                .iter()
                .filter(|s| !std::ptr::eq(*s, mine))
                .map(|s| s.write().unwrap())
                .collect();
            assert_eq!(held.len(), 15);
            let registry = inner.registry();
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

    /// When no thread can be started, the one connection involved is refused (counted,
    /// logged), and the node keeps serving: accepted and dialed connections alike.
    #[test]
    fn a_thread_that_cannot_be_started_refuses_one_connection_only() {
        use std::io::Read;
        let echo = Node::start_inline(config(true), |n, m| drop(n.send(m))).unwrap();
        let to = SocketAddr::from(([127, 0, 0, 1], echo.port()));
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
        let echo = Node::start_inline(config(false), |n, m| drop(n.send(m))).unwrap();
        let (tx, rx) = mpsc::channel();
        let client = Node::start(config(false), move |m| {
            let _ = tx.send(m.data().to_vec());
        })
        .unwrap();
        let e_to = SocketAddr::from(([127, 0, 0, 1], echo.port()));
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
