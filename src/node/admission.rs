//! Admission: the listeners (`bind`), the accept loop, and what happens to an accepted
//! socket before it becomes a connection — the capacity and handshake limits, refusals
//! (counted, logged at most once a second) and the encryption rule.

use super::*;

impl Inner {
    /// Whether a connection to/from `ip` uses TLS: unless disabled, always except with
    /// `127.0.0.1` and `::1` (and then too with `always_encrypt`).
    pub(super) fn should_encrypt(&self, ip: IpAddr) -> bool {
        if self.cfg.config.disable_encryption {
            return false;
        }
        if self.cfg.config.always_encrypt {
            return true;
        }
        !(ip == IpAddr::V4(Ipv4Addr::LOCALHOST) || ip == IpAddr::V6(Ipv6Addr::LOCALHOST))
    }

    /// An accepted socket: refused at once (closed) beyond `max_connections` or
    /// `max_handshaking`, else registered and started.
    pub(super) fn accept(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        if self.is_closed() {
            return;
        }
        let mut registry = self.conns.lock();
        let refused = if registry.len() >= self.cfg.max_connections {
            Some((
                "max_connections",
                self.cfg.max_connections,
                &self.counters.refused_capacity,
            ))
        } else if self.conns.handshaking() >= self.cfg.max_handshaking {
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
            if let Some(n) = self.logs.refusals.allow() {
                log::warn!(
                    "refused a connection from {peer}: {limit} ({value}) reached{}",
                    more(n)
                );
            }
            drop(stream);
            return;
        }
        let id = self.conns.next_id();
        self.conns.handshake_started();
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
        self.start_conn(conn, |e| {
            Error::io(io::Error::new(
                e.kind(),
                format!("cannot start the connection's thread: {e}"),
            ))
        });
    }

    /// A thread for `conn` could not be started: count and log (rate-limited); the caller
    /// refuses that one connection.
    pub(super) fn resources_failed(&self, conn: &Conn, e: &io::Error) {
        // Counted (refused_resources) when the connection is shut down with the Io error.
        if let Some(n) = self.logs.resources.allow() {
            log::error!(
                "cannot start a thread for the connection with {}: {e}; that connection is refused, the node goes on{}",
                conn.peer,
                more(n)
            );
        }
    }

    /// An accepted connection left its handshake (done or failed).
    pub(super) fn handshake_over(&self) {
        self.conns.handshake_over();
    }
}

pub(super) fn accept_loop(inner: &Arc<Inner>, listener: &TcpListener) {
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
                if let Some(n) = inner.logs.accept.allow() {
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

pub(super) fn bind(cfg: &Effective) -> Result<(Vec<TcpListener>, u16), Error> {
    let c = &cfg.config;
    let backlog = c.backlog;
    let in_use = |addr: SocketAddr, e: io::Error| Error::AddressInUse {
        addr,
        source: Arc::new(e),
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
