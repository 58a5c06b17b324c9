//! Lifecycle: the node's threads (started, counted, waited for), the connection registry's
//! bookkeeping, timers (garbage collection, reconnect debounce, ACK and request deadlines),
//! removing a remote, and `close()`.

use super::*;
use std::sync::MutexGuard;

impl Inner {
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
        self.threads.started();
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

    pub(super) fn thread_done(&self) {
        self.threads.ended();
    }

    /// The connection's threads have all ended: its traffic joins the retired totals.
    pub(super) fn forget(&self, id: u64) {
        self.conns.forget(id);
    }

    /// A connection was shut down with `reason`: counted, and told to event listeners.
    pub(super) fn conn_ended(&self, conn: &Conn, reason: &Error) {
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
    pub(super) fn registered(&self) -> Vec<(Arc<Conn>, Arc<Link>)> {
        self.conns.all()
    }

    /// The connections attached to a removed `remote` are retired (`graceful`) or shut
    /// down.
    pub(super) fn end_connections_of(
        &self,
        remote: &Arc<Remote>,
        graceful: bool,
        after: &mut After,
    ) {
        for (conn, link) in self.registered() {
            if link.remote().is_some_and(|r| Arc::ptr_eq(r, remote)) {
                after.push(if graceful {
                    Deferred::Retire(conn)
                } else {
                    Deferred::Shutdown(conn, Error::Shutdown)
                });
            }
        }
    }

    pub(super) fn on_timer(self: &Arc<Self>, ev: Timed) {
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
            Timed::Remote(t) => {
                let (Timer::Debounce(key) | Timer::AckDeadline(key) | Timer::Stall(key)) = t;
                if let Some(r) = self.remotes.get(&key) {
                    r.on_timer(&self.lim, t, &|r| self.dial_conn(r), &mut after);
                }
            }
            Timed::Retire(id) => {
                let conn = self.conns.get(id);
                if let Some(conn) = conn {
                    conn.shutdown(Error::Shutdown, false);
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

    /// One garbage-collection run. Each connection's idleness is read once: connections
    /// that are not their remote's current one and idle longer than the reuse time are
    /// retired; a remote is collected only if all its connections are idle that long (the
    /// least idle one decides) and it has nothing to do.
    pub(super) fn gc(&self, after: &mut After) {
        let now = Instant::now();
        let r = self.lim.reuse_time;
        let mut least_idle: HashMap<*const Remote, Duration> = HashMap::new();
        for (conn, link) in self.registered() {
            let Some(idle) = conn.idle_for(now) else {
                continue;
            };
            let remote = link.remote();
            if let Some(rem) = remote {
                least_idle
                    .entry(Arc::as_ptr(rem))
                    .and_modify(|d| *d = (*d).min(idle))
                    .or_insert(idle);
            }
            if idle > r && !remote.is_some_and(|rem| rem.is_current(&conn)) {
                after.push(Deferred::Retire(conn));
            }
        }
        for remote in self.remotes.all() {
            let idle = least_idle.get(&Arc::as_ptr(&remote)).copied();
            // Decided and removed under one hold of the remote's lock: a send queued
            // meanwhile keeps it.
            let collected = self
                .remotes
                .take_out_if(&remote, |core| core.collect(&self.lim, now, idle, after));
            if collected {
                self.end_connections_of(&remote, true, after);
            }
        }
    }

    pub(super) fn close(self: &Arc<Self>) {
        let mut after = After::default();
        // Marks the node closed and takes every remote out (a send racing this takes its
        // own out: see `Remotes::enqueue`).
        let Some(removed) = self.remotes.close(&mut after) else {
            // Already closed or closing: still wait for the threads (another caller may be
            // closing right now), but do not redo the work.
            self.wait_threads();
            return;
        };
        log::debug!("closing node {} on port {}", self.identity, self.port);
        for remote in &removed {
            self.end_connections_of(remote, false, &mut after);
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
        // Every connection has ended and said so: no event follows.
        self.events.close();
    }

    pub(super) fn wait_threads(&self) {
        let own = NODE_THREAD.with(|c| c.get()) == self as *const Inner as usize;
        let target = usize::from(own);
        if let Err(left) = self.threads.wait_for(target, Instant::now() + CLOSE_WAIT) {
            log::error!(
                "close: {} node threads did not end within {CLOSE_WAIT:?}",
                left - target
            );
        }
    }
}

/// How many of the node's threads run, and a wait for them to end.
pub(super) struct ThreadCount {
    n: Mutex<usize>,
    ended: Condvar,
}

impl ThreadCount {
    pub(super) fn new() -> ThreadCount {
        ThreadCount {
            n: Mutex::new(0),
            ended: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, usize> {
        self.n.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Threads running now.
    pub(super) fn get(&self) -> usize {
        *self.lock()
    }

    /// A thread is about to start (counted before it runs).
    fn started(&self) {
        *self.lock() += 1;
    }

    /// A thread ended (or could not be started).
    fn ended(&self) {
        let mut n = self.lock();
        *n -= 1;
        drop(n);
        self.ended.notify_all();
    }

    /// Waits until at most `target` threads run, or `deadline`; then `Err` with how many
    /// still run.
    fn wait_for(&self, target: usize, deadline: Instant) -> Result<(), usize> {
        let mut n = self.lock();
        while *n > target {
            let now = Instant::now();
            if now >= deadline {
                return Err(*n);
            }
            n = self
                .ended
                .wait_timeout(n, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }
}

pub(super) struct ThreadGuard(Arc<Inner>);

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        self.0.thread_done();
    }
}
