//! One peer connection: set-up (connect or accept, TLS, chirp handshake), then a reader
//! thread and a writer thread over the same socket.
//!
//! The thread that sets a connection up becomes its reader; it starts the writer once the
//! peer's handshake arrived. Both end when the connection is shut down: the socket is shut
//! down, which unblocks whichever call they are in.

mod reader;
mod writer;

pub(crate) use writer::kick;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, OnceLock};
use std::time::Instant;

use crate::completion::Completion;
use crate::error::Error;
use crate::message::Identity;
use crate::node::state::ReleaseDone;
use crate::node::{Inner, WRITER_STACK};
use crate::tls::TlsSession;
use crate::wire::{Handshake, HANDSHAKE_SIZE};

/// What the peer said in its handshake.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerInfo {
    pub(crate) port: u16,
    pub(crate) identity: Identity,
}

/// The parts of a connection that do not change, shared by its threads and its slots.
pub(crate) struct Conn {
    pub(crate) id: u64,
    pub(crate) stream: TcpStream,
    /// For a dialed connection the address dialed; for an accepted one the TCP peer.
    pub(crate) peer: SocketAddr,
    pub(crate) outgoing: bool,
    pub(crate) closed: AtomicBool,
    pub(crate) writer_cv: Condvar,
    pub(crate) reader_cv: Condvar,
    pub(crate) tls: OnceLock<TlsSession>,
    pub(crate) info: OnceLock<PeerInfo>,
}

impl Conn {
    pub(crate) fn new_outgoing(id: u64, addr: SocketAddr) -> io::Result<Conn> {
        Ok(Conn::new(id, crate::sys::unconnected(&addr)?, addr, true))
    }

    pub(crate) fn new_incoming(id: u64, stream: TcpStream, peer: SocketAddr) -> Conn {
        Conn::new(id, stream, peer, false)
    }

    fn new(id: u64, stream: TcpStream, peer: SocketAddr, outgoing: bool) -> Conn {
        Conn {
            id,
            stream,
            peer,
            outgoing,
            closed: AtomicBool::new(false),
            writer_cv: Condvar::new(),
            reader_cv: Condvar::new(),
            tls: OnceLock::new(),
            info: OnceLock::new(),
        }
    }

    /// Shuts the socket down, which unblocks the reader and writer threads. No TLS
    /// close_notify is sent: like C libchirp, connections are closed abruptly (§9 item 23).
    pub(crate) fn close_socket(&self) {
        self.closed.store(true, Ordering::Release);
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// A received message's claim on its connection's slot pool. Released explicitly through
/// [`Message::release`](crate::Message::release) or when dropped; never twice.
pub(crate) struct Slot {
    inner: Arc<Inner>,
    conn: u64,
    req_ack: bool,
    identity: Identity,
    serial: u32,
    released: bool,
}

impl Slot {
    pub(crate) fn release(mut self) -> Completion<(Identity, u32)> {
        let (completion, done) = Completion::pair();
        self.do_release(Some(done));
        completion
    }

    fn do_release(&mut self, done: Option<crate::completion::Completer<(Identity, u32)>>) {
        self.released = true;
        let rd = ReleaseDone {
            identity: self.identity,
            serial: self.serial,
            done,
        };
        let (conn, req_ack) = (self.conn, self.req_ack);
        self.inner
            .with_state(|st, _, after| st.release_slot(conn, req_ack, rd, after));
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.released {
            self.do_release(None);
        }
    }
}

/// A connection's read buffer: `buf[start..end]` holds bytes read but not parsed yet. It
/// starts small and grows up to the configured buffer size only when reads fill it, so idle
/// connections stay cheap.
#[derive(Default)]
pub(crate) struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max: usize,
}

const INITIAL_READ_BUF: usize = 4096;

impl ReadBuf {
    pub(crate) fn new(max: usize) -> ReadBuf {
        ReadBuf {
            buf: vec![0; INITIAL_READ_BUF.min(max)],
            start: 0,
            end: 0,
            max,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.end - self.start
    }

    pub(crate) fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Free space to read into, after moving unparsed bytes to the front and growing the
    /// buffer when it is full.
    pub(crate) fn space(&mut self) -> &mut [u8] {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() && self.buf.len() < self.max {
                let new_len = (self.buf.len() * 4).min(self.max);
                self.buf.resize(new_len, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    pub(crate) fn filled(&mut self, n: usize) {
        self.end += n;
    }
}

/// One read from `sock` bounded by `deadline`: the number of bytes read (never 0).
pub(crate) fn read_until(
    mut sock: &TcpStream,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<usize, Error> {
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(Error::timeout(
                "waiting for the peer during connection set-up",
            ));
        }
        sock.set_read_timeout(Some(remaining))?;
        match sock.read(buf) {
            Ok(0) => return Err(Error::protocol("peer closed the connection during set-up")),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => {
                return Err(Error::protocol(format!(
                    "reading from the peer failed: {e}"
                )))
            }
        }
    }
}

/// Body of a connection's first thread: set up, then read until the connection ends.
pub(crate) fn run(inner: Arc<Inner>, conn: Arc<Conn>) {
    let deadline = Instant::now() + inner.cfg.connect_timeout;
    let mut source = reader::Source::new(&inner, &conn);
    let result = establish(&inner, &conn, &mut source, deadline);
    let id = conn.id;
    let (hs, key) = match result {
        Ok(v) => v,
        Err(e) => {
            log::debug!("connection {} {}: set-up failed: {e}", id, conn.peer);
            inner.with_state(|st, lim, after| {
                st.shutdown_conn(lim, id, e, false, after);
                st.conn_thread_exit(id);
            });
            return;
        }
    };
    let _ = conn.info.set(PeerInfo {
        port: hs.port,
        identity: hs.identity,
    });
    let ok = inner.with_state(|st, lim, after| {
        if !st.handshake_done(id, key, conn.peer) {
            st.shutdown_conn(lim, id, crate::error::Error::Shutdown, false, after);
            return false;
        }
        if let Some(e) = st.conns.get_mut(&id) {
            e.threads += 1;
        }
        true
    });
    if !ok {
        inner.with_state(|st, _, _| st.conn_thread_exit(id));
        return;
    }
    log::debug!(
        "connection {} {} {}: peer {} advertises port {}{}",
        id,
        if conn.outgoing { "to" } else { "from" },
        conn.peer,
        hs.identity,
        hs.port,
        if conn.tls.get().is_some() {
            " (TLS)"
        } else {
            ""
        }
    );
    let wconn = conn.clone();
    if let Err(e) = inner.spawn(
        format!("chirp-writer-{}", conn.peer),
        WRITER_STACK,
        move |inner| writer::run(&inner, &wconn),
    ) {
        inner.with_state(|st, lim, after| {
            st.conn_thread_exit(id);
            st.shutdown_conn(
                lim,
                id,
                Error::protocol(format!("cannot start writer thread: {e}")),
                false,
                after,
            );
        });
    } else {
        // Let the writer see anything queued while the connection was set up.
        inner.with_state(|st, _, after| st.process(key, after));
    }
    let reason = reader::run(&inner, &conn, key, &mut source);
    log::debug!("connection {} {}: closed: {reason}", id, conn.peer);
    inner.with_state(|st, lim, after| {
        st.shutdown_conn(lim, id, reason, false, after);
        st.conn_thread_exit(id);
    });
}

fn establish(
    inner: &Arc<Inner>,
    conn: &Arc<Conn>,
    source: &mut reader::Source,
    deadline: Instant,
) -> Result<(Handshake, crate::node::state::RemoteKey), Error> {
    if conn.outgoing {
        crate::sys::connect(&conn.stream, &conn.peer, deadline, &conn.closed).map_err(
            |e| match e.kind() {
                io::ErrorKind::TimedOut => Error::timeout(format!("connecting to {}", conn.peer)),
                io::ErrorKind::Interrupted => Error::Shutdown,
                _ => Error::CannotConnect {
                    addr: conn.peer,
                    reason: e.to_string(),
                },
            },
        )?;
    }
    crate::sys::configure_stream(&conn.stream)?;
    if inner.should_encrypt(conn.peer.ip()) {
        let ctx = inner
            .tls
            .as_ref()
            .expect("TLS context exists unless encryption is disabled");
        let session = TlsSession::handshake(ctx, &conn.stream, conn.outgoing, deadline)?;
        let _ = conn.tls.set(session);
    }
    // Our handshake: one write, or one TLS record.
    let hs = Handshake {
        port: inner.port,
        identity: inner.identity,
    }
    .encode();
    let mut cipher;
    let bytes: &[u8] = match conn.tls.get() {
        Some(tls) => {
            cipher = Vec::with_capacity(64);
            tls.encrypt(&[std::io::IoSlice::new(&hs)], &mut cipher)?;
            &cipher
        }
        None => &hs,
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(Error::timeout("connection set-up"));
    }
    conn.stream.set_write_timeout(Some(remaining))?;
    (&conn.stream)
        .write_all(bytes)
        .map_err(|e| Error::protocol(format!("writing the handshake failed: {e}")))?;
    // Steady state: a write that makes no progress for `timeout` fails the connection.
    conn.stream.set_write_timeout(Some(inner.lim.timeout))?;
    // Theirs: tolerate it arriving in pieces.
    while source.buf.len() < HANDSHAKE_SIZE {
        source.fill(Some(deadline))?;
    }
    let mut raw = [0u8; HANDSHAKE_SIZE];
    raw.copy_from_slice(&source.buf.data()[..HANDSHAKE_SIZE]);
    source.buf.consume(HANDSHAKE_SIZE);
    let peer = Handshake::decode(&raw);
    let key = if conn.outgoing {
        let st = inner.lock();
        st.outgoing_key(conn.id)
            .unwrap_or((conn.peer.ip(), conn.peer.port()))
    } else {
        (conn.peer.ip(), peer.port)
    };
    if conn.outgoing && peer.port != conn.peer.port() {
        log::warn!(
            "{} advertises port {} but was dialed on {}; keeping the connection for the dialed address",
            conn.peer,
            peer.port,
            conn.peer.port()
        );
    }
    Ok((peer, key))
}
