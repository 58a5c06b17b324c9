//! One peer connection: set-up (connect or accept, TLS, chirp handshake), then a reader
//! thread and a writer thread over the same socket.
//!
//! A connection knows its socket, its limits ([`Settings`]) and its [`Owner`], a narrow
//! interface through which it reports what happens (handshake done, frames written, ACK,
//! message received, slot released, closed) and from which its writer takes the frames to
//! write. It knows nothing of nodes, remotes or queues. What an owner may do to it:
//! [`Conn::kick`] (frames are waiting), [`Conn::shutdown`], and read its state.
//!
//! The thread that sets a connection up becomes its reader. Most writes are made by the
//! sending thread itself; a writer thread is started only when a write would block (or a
//! sender leaves a long queue to it) and ends after it has been idle for a while, so an idle
//! connection costs one thread. Both end when the connection is shut down: the socket is
//! shut down, which unblocks whichever call they are in.
//!
//! Locking: the connection's own state ([`ConnState`]) has one mutex, held only for a few
//! field updates and never while calling the owner or doing I/O.

mod claim;
#[cfg(all(test, loom))]
mod loom_models;
mod reader;
mod socket;
mod writer;

pub(crate) use socket::Socket;
pub(crate) use writer::queued;

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::frame::Frame;
use crate::message::{Identity, Message, ReleaseDone, Slot, SlotOwner};
use crate::proto::activity::Activity;
use crate::proto::slots::Slots;
use crate::sync::{Condvar, Mutex, MutexGuard};
use crate::tls::{Certificate, TlsCurrent, TlsSession};
use crate::wire::{Handshake, HANDSHAKE_SIZE};
use claim::WriteState;

/// Stack sizes, chosen deliberately: idle connections must stay small (only touched pages
/// become resident, but every thread costs memory mappings).
pub(crate) const READER_STACK: usize = 128 * 1024;
pub(crate) const WRITER_STACK: usize = 96 * 1024;

/// What one parked message costs beyond its header and data, for the park's bound.
pub(crate) const PARK_OVERHEAD: usize = 128;

/// A send this soon after the connection's previous write counts as streaming: a sender
/// that writes again that soon is better served by the writer thread, which takes
/// everything that queued meanwhile into one system call (see `Conn::kick`).
pub(crate) const STREAM_GAP: Duration = Duration::from_micros(20);

/// A writer thread with nothing to do for this long ends; the next write that would block
/// starts another. Idle connections so cost one thread (the reader), not two.
const WRITER_LINGER: Duration = Duration::from_secs(2);

/// What every connection of a node needs to know, shared by all of them.
pub(crate) struct Settings {
    /// Our handshake: the port we advertise and our identity.
    pub(crate) handshake: Handshake,
    /// Send timeout; also how long a write or a partly received frame may stall.
    pub(crate) timeout: Duration,
    /// Budget for TCP connect, TLS handshake and chirp handshake together.
    pub(crate) connect_timeout: Duration,
    pub(crate) max_slots: usize,
    pub(crate) buffer_size: usize,
    pub(crate) max_msg_size: u32,
    /// Data frames ask for an ACK (synchronous mode).
    pub(crate) synchronous: bool,
    /// The TLS context for new connections, unless encryption is disabled (replaceable:
    /// a connection keeps the one its handshake started with).
    pub(crate) tls: Option<TlsCurrent>,
}

/// Traffic of one connection: relaxed atomics bumped by its own threads as frames go
/// through, read by whoever observes the node. Bytes are payload bytes (header + data).
#[derive(Default, Debug)]
pub(crate) struct Traffic {
    pub(crate) msgs_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) acks_in: AtomicU64,
    pub(crate) msgs_out: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) acks_out: AtomicU64,
}

impl Traffic {
    /// Adds `other`'s counts to these.
    pub(crate) fn add(&self, other: &Traffic) {
        let pairs = [
            (&self.msgs_in, &other.msgs_in),
            (&self.bytes_in, &other.bytes_in),
            (&self.acks_in, &other.acks_in),
            (&self.msgs_out, &other.msgs_out),
            (&self.bytes_out, &other.bytes_out),
            (&self.acks_out, &other.acks_out),
        ];
        for (mine, theirs) in pairs {
            mine.fetch_add(theirs.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// Counts the frames of a successful write.
    fn written(&self, frames: &[(Frame, u32)]) {
        let (mut msgs, mut bytes, mut acks) = (0u64, 0u64, 0u64);
        for (f, _) in frames {
            match f {
                Frame::User(p) => {
                    msgs += 1;
                    bytes += p.payload_len();
                }
                Frame::Ack(_) => acks += 1,
                Frame::Noop => {}
            }
        }
        if msgs > 0 {
            self.msgs_out.fetch_add(msgs, Ordering::Relaxed);
            self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
        }
        if acks > 0 {
            self.acks_out.fetch_add(acks, Ordering::Relaxed);
        }
    }
}

/// Adds one to a counter.
pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// What the peer said in its handshake.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerInfo {
    pub(crate) port: u16,
    pub(crate) identity: Identity,
}

/// The interface from a connection to whoever owns it (the node). Every call is made
/// without any of the connection's locks held.
pub(crate) trait Owner<S = TcpStream>: Send + Sync {
    /// Starts a named thread for this connection (counted by the owner for `close()`).
    fn spawn(
        &self,
        conn: &Arc<Conn<S>>,
        name: String,
        stack: usize,
        f: Box<dyn FnOnce() + Send + 'static>,
    ) -> io::Result<()>;
    /// The peer's handshake arrived. An error refuses the connection (it is shut down).
    fn connected(&self, conn: &Arc<Conn<S>>) -> Result<(), Error>;
    /// Appends the frames to write now on `conn`, each with its serial.
    fn take_frames(&self, conn: &Arc<Conn<S>>, out: &mut Vec<(Frame, u32)>);
    /// `frames` (taken from `take_frames`) were written, or failed with the error; `now`
    /// is when the write ended (read once, for this and [`Conn::end_write`]).
    fn written(
        &self,
        conn: &Arc<Conn<S>>,
        frames: &mut Vec<(Frame, u32)>,
        result: Result<(), Error>,
        now: Instant,
    );
    /// An ACK for `identity` arrived.
    fn ack(&self, conn: &Arc<Conn<S>>, identity: Identity);
    /// Data arrived (a read that brought frames, or a NOOP): the peer is alive. Called
    /// once per socket read, not per message.
    fn activity(&self, conn: &Arc<Conn<S>>);
    /// A data message arrived; it holds one of the connection's slots.
    fn deliver(&self, conn: &Arc<Conn<S>>, msg: Message);
    /// A slot of a message that asked for an ACK was released: queue the ACK; `done`
    /// completes once it was written.
    fn ack_due(&self, conn: &Arc<Conn<S>>, done: ReleaseDone);
    /// The connection is shut down with `reason` (once). `in_flight`: frames being written
    /// take the failure (the owner should not fail another message for it).
    fn closed(&self, conn: &Arc<Conn<S>>, reason: &Error, in_flight: bool);
    /// The connection's threads have all ended.
    fn ended(&self, conn: &Arc<Conn<S>>);
}

/// Frames a direct writer could not finish without blocking: the writer thread writes
/// `rest` and then reports the frames written.
pub(crate) struct Handoff {
    pub(crate) frames: Vec<(Frame, u32)>,
    pub(crate) rest: Vec<u8>,
}

/// Everything about a connection that changes, under its mutex.
struct ConnState {
    handshaken: bool,
    closing: bool,
    close_reason: Option<Error>,
    /// Who owns the write side (a direct writer or the writer thread), whether frames were
    /// queued meanwhile, and a direct writer's unfinished rest (see `claim.rs`).
    write: WriteState<Handoff>,
    /// A TLS read produced ciphertext (a handshake reply) that must be written.
    tls_flush: bool,
    /// Last successful write or received frame, and bytes moved at the last look (for
    /// garbage collection).
    active: Activity,
    /// End of the last successful write.
    last_write: Instant,
    /// Threads of this connection still running.
    threads: u8,
    /// The writer thread runs (it is started on demand and ends when idle).
    writer_running: bool,
    /// Garbage collection retired it: half-closed, reading until the peer closes too.
    retiring: bool,
    /// The peer closed its side in an orderly way: nothing new is written, and the write
    /// under way (if any) finishes before the connection is shut down.
    draining: bool,
}

/// One connection: its socket, TLS session, limits, owner and state. `S` is the socket: a
/// [`TcpStream`], or the loom models' in-memory one.
pub(crate) struct Conn<S = TcpStream> {
    pub(crate) id: u64,
    stream: S,
    /// For a dialed connection the address dialed; for an accepted one the TCP peer.
    pub(crate) peer: SocketAddr,
    pub(crate) outgoing: bool,
    encrypt: bool,
    settings: Arc<Settings>,
    owner: Arc<dyn Owner<S>>,
    /// Set when the socket is shut down (abandons a pending connect).
    closed: AtomicBool,
    /// The peer ended the stream in an orderly way (its reader saw end of file).
    peer_eof: AtomicBool,
    state: Mutex<ConnState>,
    writer_cv: Condvar,
    /// Receive slots and the park of messages waiting for one (the reader parks them, up
    /// to the buffer size, to go on reading the ACK and NOOP frames behind them).
    slots: Slots<Message>,
    tls: OnceLock<TlsSession>,
    info: OnceLock<PeerInfo>,
    /// When the handshake completed.
    since: OnceLock<Instant>,
    pub(crate) traffic: Traffic,
    /// Loom models only: the writer's linger has run out (loom's condition variables never
    /// time out, so a model's clock says when time has passed).
    #[cfg(loom)]
    pub(crate) linger_elapsed: crate::sync::AtomicBool,
}

impl Conn {
    /// A connection to dial to `addr` (the socket exists, unconnected, so that it can be
    /// shut down from another thread while connecting).
    pub(crate) fn dial(
        id: u64,
        addr: SocketAddr,
        encrypt: bool,
        settings: Arc<Settings>,
        owner: Arc<dyn Owner>,
    ) -> io::Result<Conn> {
        let stream = crate::sys::unconnected(&addr)?;
        Ok(Conn::new(id, stream, addr, true, encrypt, settings, owner))
    }

    /// An accepted connection from `peer`.
    pub(crate) fn accepted(
        id: u64,
        stream: TcpStream,
        peer: SocketAddr,
        encrypt: bool,
        settings: Arc<Settings>,
        owner: Arc<dyn Owner>,
    ) -> Conn {
        Conn::new(id, stream, peer, false, encrypt, settings, owner)
    }
}

impl<S: Socket> Conn<S> {
    pub(crate) fn new(
        id: u64,
        stream: S,
        peer: SocketAddr,
        outgoing: bool,
        encrypt: bool,
        settings: Arc<Settings>,
        owner: Arc<dyn Owner<S>>,
    ) -> Conn<S> {
        let slots = Slots::new(settings.max_slots, settings.buffer_size);
        Conn {
            id,
            stream,
            peer,
            outgoing,
            encrypt,
            settings,
            owner,
            closed: AtomicBool::new(false),
            peer_eof: AtomicBool::new(false),
            state: Mutex::new(ConnState {
                handshaken: false,
                closing: false,
                close_reason: None,
                write: WriteState::new(),
                tls_flush: false,
                active: Activity::new(crate::sync::now(), 0),
                last_write: crate::sync::now()
                    .checked_sub(Duration::from_secs(1))
                    .unwrap_or_else(crate::sync::now),
                threads: 1,
                writer_running: false,
                retiring: false,
                draining: false,
            }),
            writer_cv: Condvar::new(),
            slots,
            tls: OnceLock::new(),
            info: OnceLock::new(),
            since: OnceLock::new(),
            traffic: Traffic::default(),
            #[cfg(loom)]
            linger_elapsed: crate::sync::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The peer's handshake, once it arrived.
    pub(crate) fn peer_info(&self) -> Option<PeerInfo> {
        self.info.get().copied()
    }

    /// How long the connection has been idle: no frame written or received, no bytes
    /// moved since the last look, no received message holding a slot or parked (see
    /// [`Activity`]). None while it is still being set up or already shutting down.
    pub(crate) fn idle_for(&self, now: Instant) -> Option<Duration> {
        let bytes = self.bytes_moved();
        let held = self.slots.held();
        let mut st = self.lock();
        (st.handshaken && !st.closing && !st.retiring).then(|| st.active.idle_for(now, bytes, held))
    }

    /// Bytes the peer has moved so far (see [`crate::sys::peer_progress`]): a slow
    /// transfer's progress before its frame is complete. One system call; made by the
    /// stall check and garbage collection, never per message. 0 if it cannot be told (no
    /// progress is then seen, and a stalled peer is still found).
    pub(crate) fn bytes_moved(&self) -> u64 {
        self.stream.peer_progress().unwrap_or(0)
    }

    /// Whether the connection is encrypted.
    pub(crate) fn is_encrypted(&self) -> bool {
        self.encrypt
    }

    /// The certificate the peer presented (encrypted connections, after the TLS handshake).
    pub(crate) fn peer_certificate(&self) -> Option<Certificate> {
        self.tls.get().and_then(|t| t.peer_certificate()).cloned()
    }

    /// When the handshake completed (None before).
    pub(crate) fn connected_since(&self) -> Option<Instant> {
        self.since.get().copied()
    }

    /// Received messages now holding one of this connection's slots.
    pub(crate) fn slots_in_use(&self) -> usize {
        self.slots.used()
    }

    /// Why the connection was shut down, once it was.
    pub(crate) fn close_reason(&self) -> Option<Error> {
        self.lock().close_reason.clone()
    }

    /// Frames are waiting for this connection: write them now from this thread (or when
    /// the thread's cork allows), or let the active writer pick them up.
    pub(crate) fn kick(self: &Arc<Self>) {
        let streaming = {
            let mut st = self.lock();
            if !st.handshaken || st.closing || st.retiring {
                return;
            }
            if !st.write.kick() {
                return; // the holder of the write side looks again
            }
            // Read under this lock: whether the last write ended so recently that this
            // sender is streaming (see `STREAM_GAP`).
            crate::sync::now().saturating_duration_since(st.last_write) < STREAM_GAP
        };
        writer::kick(self.clone(), streaming);
    }

    /// Shuts the connection down with `reason` (the first reason wins; later calls do
    /// nothing): the socket is shut down, which ends both threads, and the owner is told.
    /// `in_flight_failed`: the caller already failed the frames it was writing.
    pub(crate) fn shutdown(self: &Arc<Self>, reason: Error, in_flight_failed: bool) {
        let (writing, handoff, reason) = {
            let mut st = self.lock();
            if st.closing {
                return;
            }
            st.closing = true;
            // A retired connection ends by garbage collection, however its last read ended
            // (usually the peer's answering end of stream).
            let reason = if st.retiring { Error::Shutdown } else { reason };
            st.close_reason = Some(reason.clone());
            let (writing, handoff) = st.write.close();
            (writing, handoff, reason)
        };
        self.writer_cv.notify_all();
        // Nothing more is admitted; parked messages were read and are still delivered as
        // the application releases slots.
        self.slots.close();
        // No TLS close_notify: like C libchirp, connections are closed abruptly.
        self.closed.store(true, Ordering::Release);
        let _ = Socket::shutdown(&self.stream, Shutdown::Both);
        self.owner
            .closed(self, &reason, in_flight_failed || writing);
        // Frames a direct writer left to the writer thread were in flight: they fail too.
        if let Some(h) = handoff {
            let mut frames = h.frames;
            self.owner
                .written(self, &mut frames, Err(reason), crate::sync::now());
        }
    }

    /// The reader met the end of the stream: the peer closed its side in an orderly way.
    /// Returns the reason to shut down with.
    fn end_of_stream(&self) -> Error {
        self.peer_eof.store(true, Ordering::Release);
        Error::protocol("peer closed the connection")
    }

    /// Whether the peer closed this established connection in an orderly way (end of
    /// stream, not an error): it read everything we wrote before.
    pub(crate) fn closed_cleanly(&self) -> bool {
        self.peer_eof.load(Ordering::Acquire) && self.connected_since().is_some()
    }

    /// Retires an idle connection (garbage collection): nothing more is written, the
    /// sending side is half-closed (the peer reads an end of stream after everything we
    /// wrote), and the reader goes on until the peer closes too, delivering whatever the
    /// peer sent meanwhile — a peer that had just started to send on it loses nothing.
    /// The caller bounds the wait (a [`Conn::shutdown`] after the timeout). False if it
    /// was closing or retiring already.
    pub(crate) fn retire(self: &Arc<Self>) -> bool {
        {
            let mut st = self.lock();
            if st.closing || st.retiring {
                return false;
            }
            st.retiring = true;
        }
        let _ = Socket::shutdown(&self.stream, Shutdown::Write);
        true
    }

    /// The connection's first thread could not be started (or must not be): it counts as
    /// ended, so the owner hears `ended`. Call after [`Conn::shutdown`].
    pub(crate) fn abandon(self: &Arc<Self>) {
        self.thread_ended();
    }

    /// A thread of this connection ends; the owner hears of the last one.
    fn thread_ended(self: &Arc<Self>) {
        let last = {
            let mut st = self.lock();
            st.threads = st.threads.saturating_sub(1);
            st.threads == 0
        };
        if last {
            self.owner.ended(self);
        }
    }

    // --- the write side's claim on the socket -----------------------------------------

    /// Claims the write side if the connection is idle (nobody writing, no handoff).
    fn claim_write(&self) -> bool {
        let mut st = self.lock();
        let open = st.handshaken && !st.closing && !st.retiring && !st.draining;
        st.write.claim(open)
    }

    /// Gives the write side back; `wrote`: when a write succeeded (refreshes the activity
    /// time). Returns whether frames were queued meanwhile (the caller looks again).
    fn end_write(&self, wrote: Option<Instant>) -> bool {
        let mut st = self.lock();
        if let Some(now) = wrote {
            st.active.touch(now);
            st.last_write = now;
        }
        let open = !st.closing && !st.draining;
        let again = st.write.end(open);
        if st.draining {
            // The reader waits for the write under way to end (`drain_writes`).
            drop(st);
            self.writer_cv.notify_all();
        }
        again
    }

    /// The peer closed its side in an orderly way: its garbage collection retired the
    /// connection (it reads on until we close ours) or it is closing. Nothing new is
    /// written (what is queued goes out on the next connection), but a write under way
    /// finishes, bounded by the write timeout, so that what it carries reaches the peer
    /// instead of failing with the connection.
    fn drain_writes(&self) {
        let deadline = Instant::now() + self.settings.timeout;
        let mut st = self.lock();
        st.draining = true;
        while st.write.busy() && !st.closing {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = self
                .writer_cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Whether the writer thread is to write nothing new (the peer closed its side): it
    /// only finishes a direct writer's handoff.
    fn draining(st: &ConnState) -> bool {
        st.draining && !st.write.has_handoff()
    }

    /// The writer thread waits for work, at most `linger`; true if the wait timed out.
    fn wait_writer<'a>(
        &'a self,
        st: MutexGuard<'a, ConnState>,
        linger: Duration,
    ) -> (MutexGuard<'a, ConnState>, bool) {
        #[cfg(not(loom))]
        {
            let (st, r) = self
                .writer_cv
                .wait_timeout(st, linger)
                .unwrap_or_else(|e| e.into_inner());
            (st, r.timed_out())
        }
        #[cfg(loom)]
        {
            // Loom's waits never time out: until the model's clock says the linger has
            // run out, this waits to be woken; after, every wait times out at once (the
            // lock is let go and other threads run meanwhile).
            let _ = linger;
            if self.linger_elapsed.load(crate::sync::Ordering::SeqCst) {
                drop(st);
                loom::thread::yield_now();
                (self.lock(), true)
            } else {
                let st = self.writer_cv.wait(st).unwrap_or_else(|e| e.into_inner());
                (st, false)
            }
        }
    }

    /// Loom models: the connection is set up (its handshake done), as `establish` leaves it.
    #[cfg(all(test, loom))]
    pub(crate) fn set_up_for_model(&self) {
        self.lock().handshaken = true;
    }

    /// Leaves the write side to the writer thread (which is woken, or started).
    fn defer_to_writer(self: &Arc<Self>) {
        let mut st = self.lock();
        st.write.defer();
        self.wake_writer(st);
    }

    /// Wakes the writer thread for work just recorded in `st`, starting it if it is not
    /// running. If it cannot be started (resources exhausted), this one connection is shut
    /// down; nothing else is affected.
    fn wake_writer(self: &Arc<Self>, mut st: MutexGuard<'_, ConnState>) {
        if st.closing {
            return;
        }
        if st.writer_running {
            // Only a writer that waits needs the wake-up (a system call); a busy one
            // looks at the state before it waits again.
            let wake = st.write.needs_wake();
            drop(st);
            if wake {
                self.writer_cv.notify_all();
            }
            return;
        }
        st.writer_running = true;
        st.threads += 1;
        drop(st);
        let me = self.clone();
        let r = self.owner.spawn(
            self,
            format!("chirp-writer-{}", self.peer),
            WRITER_STACK,
            Box::new(move || {
                writer::run(&me);
                me.thread_ended();
            }),
        );
        if let Err(e) = r {
            {
                let mut st = self.lock();
                st.writer_running = false;
                st.threads -= 1;
            }
            self.shutdown(
                Error::io(io::Error::new(
                    e.kind(),
                    format!("cannot start the connection's writer thread: {e}"),
                )),
                false,
            );
        }
    }
}

impl<S: Socket> SlotOwner for Conn<S> {
    fn release_slot(self: Arc<Self>, req_ack: bool, done: ReleaseDone) {
        let (open, parked) = self.slots.freed();
        // An orderly end (we retired the connection, or the peer ended it cleanly) does
        // not cancel the ACK: the sender still waits for it, and it goes out on another
        // connection.
        let orderly = !open && (self.lock().retiring || self.closed_cleanly());
        if req_ack && (open || orderly) {
            // The ACK goes through the owner: it is written on the remote's current
            // connection, which need not be this one.
            self.owner.ack_due(&self, done);
        } else {
            done.finish();
        }
        if parked {
            self.slots.drain(|m, a| self.deliver_parked(m, a));
        }
    }
}

impl<S: Socket> Conn<S> {
    /// Parks a received message that has no slot yet (the reader made sure it fits).
    fn park(self: &Arc<Self>, msg: Message, req_ack: bool, cost: usize) {
        self.slots
            .park(msg, req_ack, cost, |m, a| self.deliver_parked(m, a));
    }

    /// Hands a message that waited in the park (its slot now taken) to the owner.
    fn deliver_parked(self: &Arc<Self>, mut msg: Message, req_ack: bool) {
        msg.slot = Some(Slot::new(self.clone(), req_ack, msg.identity, msg.serial));
        self.owner.deliver(self, msg);
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

/// Body of a connection's first thread: set up, start the writer, then read until the
/// connection ends. The caller counted this thread as the connection's first.
pub(crate) fn run(conn: Arc<Conn>) {
    let deadline = Instant::now() + conn.settings.connect_timeout;
    let mut source = reader::Source::new(&conn);
    let reason = match establish(&conn, &mut source, deadline) {
        Ok(()) => {
            log::debug!(
                "connection {} {} {}: peer {} advertises port {}{}",
                conn.id,
                if conn.outgoing { "to" } else { "from" },
                conn.peer,
                conn.info.get().map(|i| i.identity).unwrap_or_default(),
                conn.info.get().map(|i| i.port).unwrap_or_default(),
                if conn.tls.get().is_some() {
                    " (TLS)"
                } else {
                    ""
                }
            );
            // (Frames queued while the connection was set up went out when the owner
            // attached it: `connected` kicks it.)
            reader::run(&conn, &mut source)
        }
        Err(e) => {
            log::debug!("connection {} {}: set-up failed: {e}", conn.id, conn.peer);
            e
        }
    };
    if conn.peer_eof.load(Ordering::Acquire) {
        conn.drain_writes();
    }
    log::debug!("connection {} {}: closed: {reason}", conn.id, conn.peer);
    conn.shutdown(reason, false);
    conn.thread_ended();
}

/// Connects (when dialing), runs the TLS handshake (when encrypting), exchanges chirp
/// handshakes and tells the owner.
fn establish(
    conn: &Arc<Conn>,
    source: &mut reader::Source,
    deadline: Instant,
) -> Result<(), Error> {
    if conn.outgoing {
        crate::sys::connect(&conn.stream, &conn.peer, deadline, &conn.closed).map_err(
            |e| match e.kind() {
                io::ErrorKind::TimedOut => Error::timeout(format!("connecting to {}", conn.peer)),
                io::ErrorKind::Interrupted => Error::Shutdown,
                _ => Error::CannotConnect {
                    addr: conn.peer,
                    source: std::sync::Arc::new(e),
                },
            },
        )?;
    }
    crate::sys::configure_stream(&conn.stream)?;
    if conn.encrypt {
        let ctx = conn
            .settings
            .tls
            .as_ref()
            .ok_or_else(|| Error::tls("encryption is required but no TLS context exists"))?
            .get();
        let session = TlsSession::handshake(&ctx, &conn.stream, conn.outgoing, deadline)?;
        let _ = conn.tls.set(session);
    }
    // Our handshake: one write, or one TLS record.
    let hs = conn.settings.handshake.encode();
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
        .map_err(|e| Error::broken("writing the handshake", e))?;
    // Steady state: a write that makes no progress for `timeout` fails the connection.
    conn.stream.set_write_timeout(Some(conn.settings.timeout))?;
    // Theirs: tolerate it arriving in pieces.
    while source.buf.len() < HANDSHAKE_SIZE {
        source.fill(Some(deadline))?;
    }
    let mut raw = [0u8; HANDSHAKE_SIZE];
    raw.copy_from_slice(&source.buf.data()[..HANDSHAKE_SIZE]);
    source.buf.consume(HANDSHAKE_SIZE);
    let peer = Handshake::decode(&raw);
    let _ = conn.info.set(PeerInfo {
        port: peer.port,
        identity: peer.identity,
    });
    if conn.outgoing && peer.port != conn.peer.port() {
        log::warn!(
            "{} advertises port {} but was dialed on {}; keeping the connection for the dialed address",
            conn.peer,
            peer.port,
            conn.peer.port()
        );
    }
    {
        let mut st = conn.lock();
        if st.closing {
            return Err(st.close_reason.clone().unwrap_or(Error::Shutdown));
        }
        st.handshaken = true;
        st.active.touch(Instant::now());
    }
    let _ = conn.since.set(Instant::now());
    conn.owner.connected(conn)
}

/// Test helpers: an owner that does nothing and settings small enough for unit tests and
/// loom models.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// An owner that ignores everything its connection reports.
    pub(crate) struct NoOwner;

    impl<S: Socket> Owner<S> for NoOwner {
        fn spawn(
            &self,
            _: &Arc<Conn<S>>,
            _: String,
            _: usize,
            _: Box<dyn FnOnce() + Send + 'static>,
        ) -> io::Result<()> {
            Ok(())
        }
        fn connected(&self, _: &Arc<Conn<S>>) -> Result<(), Error> {
            Ok(())
        }
        fn take_frames(&self, _: &Arc<Conn<S>>, _: &mut Vec<(Frame, u32)>) {}
        fn written(
            &self,
            _: &Arc<Conn<S>>,
            _: &mut Vec<(Frame, u32)>,
            _: Result<(), Error>,
            _: Instant,
        ) {
        }
        fn ack(&self, _: &Arc<Conn<S>>, _: Identity) {}
        fn activity(&self, _: &Arc<Conn<S>>) {}
        fn deliver(&self, _: &Arc<Conn<S>>, _: Message) {}
        fn ack_due(&self, _: &Arc<Conn<S>>, _: ReleaseDone) {}
        fn closed(&self, _: &Arc<Conn<S>>, _: &Error, _: bool) {}
        fn ended(&self, _: &Arc<Conn<S>>) {}
    }

    /// Settings with a 5 s timeout, one slot and 1 KiB buffers, no TLS.
    pub(crate) fn settings(synchronous: bool) -> Arc<Settings> {
        Arc::new(Settings {
            handshake: Handshake {
                port: 1,
                identity: Identity::default(),
            },
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_slots: 1,
            buffer_size: 1024,
            max_msg_size: 1024,
            synchronous,
            tls: None,
        })
    }
}
