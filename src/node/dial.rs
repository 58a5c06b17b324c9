//! Dialing: a new outgoing connection for a remote, registered and started on its reader
//! thread (which connects, does TLS and the handshake).

use super::*;

impl Inner {
    /// A new outgoing connection for `remote`, registered (called with the remote locked),
    /// unless `max_connections` is reached.
    pub(super) fn dial_conn(self: &Arc<Self>, remote: &Arc<Remote>) -> Result<Arc<Conn>, Error> {
        let addr = remote.dial_addr;
        let max = self.cfg.max_connections;
        let mut registry = self.conns.lock();
        if registry.len() >= max {
            drop(registry);
            bump(&self.counters.refused_capacity);
            if let Some(n) = self.logs.refusals.allow() {
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
        let id = self.conns.next_id();
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
            source: Arc::new(e),
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
    pub(super) fn start_dial(self: &Arc<Self>, conn: Arc<Conn>) {
        let addr = conn.peer;
        self.start_conn(conn, |e| {
            Error::io(std::io::Error::new(
                e.kind(),
                format!("cannot start the thread of the connection to {addr}: {e}"),
            ))
        });
    }

    /// Starts a connection's first thread (set-up, then reading); if that fails, the
    /// connection is shut down with the error `fail` makes.
    pub(super) fn start_conn(
        self: &Arc<Self>,
        conn: Arc<Conn>,
        fail: impl FnOnce(io::Error) -> Error,
    ) {
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
}
