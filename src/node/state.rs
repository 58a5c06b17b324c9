//! The node's mutable state and every transition on it.
//!
//! Everything here runs with the node's state mutex held and never blocks, never calls user
//! code and never drops a message (a dropped received message releases its slot, which takes
//! the lock again). What must happen outside the lock — completing waiters, spawning a dial
//! thread, shutting a socket — is pushed onto an [`After`] list that the caller runs once it
//! has unlocked.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::completion::Completer;
use crate::connection::Conn;
use crate::error::{Error, SendError};
use crate::message::{Identity, Message};

/// Remotes are keyed by peer IP address and the port the peer advertises (PROTOCOL.md §0).
pub(crate) type RemoteKey = (IpAddr, u16);

pub(crate) fn key_of(addr: &SocketAddr) -> RemoteKey {
    (addr.ip(), addr.port())
}

pub(crate) type SendResult = Result<Message, SendError>;

/// What to do when an outgoing message is finished.
pub(crate) enum Done {
    /// Complete the caller's completion.
    Wait(Completer<SendResult>),
    /// The message is the outgoing half of a request: a failure fails the request, success
    /// just drops the message.
    Request(u64, Identity),
}

/// An outgoing user message and its completion. Dropping it unfinished fails it with
/// `Shutdown`, so no waiter is ever left pending.
pub(crate) struct Pending {
    pub(crate) msg: Option<Message>,
    pub(crate) done: Option<Done>,
}

impl Pending {
    pub(crate) fn new(msg: Message, done: Done) -> Pending {
        Pending {
            msg: Some(msg),
            done: Some(done),
        }
    }

    pub(crate) fn msg(&self) -> &Message {
        self.msg
            .as_ref()
            .expect("pending message present until finished")
    }

    /// Completes with the outcome. Must run without the state lock (see module docs).
    /// Returns a request that must be failed, if any.
    pub(crate) fn finish(mut self, result: Result<(), Error>) -> Option<(u64, Identity, Error)> {
        let msg = self.msg.take();
        let done = self.done.take();
        match (done, msg) {
            (Some(Done::Wait(c)), Some(msg)) => {
                c.complete(match result {
                    Ok(()) => Ok(msg),
                    Err(error) => Err(SendError {
                        error,
                        message: msg,
                    }),
                });
                None
            }
            (Some(Done::Request(id, identity)), msg) => {
                drop(msg);
                result.err().map(|e| (id, identity, e))
            }
            _ => None,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.done.is_some() {
            let msg = self.msg.take();
            let done = self.done.take();
            if let (Some(Done::Wait(c)), Some(msg)) = (done, msg) {
                c.complete(Err(SendError {
                    error: Error::Shutdown,
                    message: msg,
                }));
            }
        }
    }
}

/// The completion of a release, fired after the ACK was written (or could not be).
pub(crate) struct ReleaseDone {
    pub(crate) identity: Identity,
    pub(crate) serial: u32,
    pub(crate) done: Option<Completer<(Identity, u32)>>,
}

impl ReleaseDone {
    pub(crate) fn finish(mut self) {
        if let Some(c) = self.done.take() {
            c.complete((self.identity, self.serial));
        }
    }
}

impl Drop for ReleaseDone {
    fn drop(&mut self) {
        if let Some(c) = self.done.take() {
            c.complete((self.identity, self.serial));
        }
    }
}

/// ACK and NOOP frames; they overtake user messages.
pub(crate) enum Control {
    Ack(ReleaseDone),
    Noop,
}

/// The synchronous message written and waiting for its ACK (one per remote).
pub(crate) struct WaitAck {
    pub(crate) identity: Identity,
    pub(crate) conn: u64,
    /// The message, once its write finished.
    pub(crate) pending: Option<Pending>,
    /// The ACK arrived before the write was reported finished.
    pub(crate) acked: bool,
    /// Set when the write finished: the ACK must arrive before it.
    pub(crate) deadline: Option<Instant>,
}

/// Per-peer bookkeeping (PROTOCOL.md §0 "remote").
pub(crate) struct Remote {
    /// Where to dial (keeps an IPv6 scope id).
    pub(crate) dial_addr: SocketAddr,
    pub(crate) serial: u32,
    pub(crate) user: VecDeque<Pending>,
    pub(crate) control: VecDeque<Control>,
    pub(crate) wait_ack: Option<WaitAck>,
    pub(crate) conn: Option<u64>,
    pub(crate) blocked: bool,
    pub(crate) timestamp: Instant,
    pub(crate) ack_timer_armed: bool,
    pub(crate) noop_queued: bool,
}

/// A connection's entry: everything about it that changes, under the state lock.
pub(crate) struct ConnEntry {
    pub(crate) conn: Arc<Conn>,
    pub(crate) remote: Option<RemoteKey>,
    pub(crate) handshaken: bool,
    pub(crate) closing: bool,
    pub(crate) close_reason: Option<Error>,
    /// The writer has frames out of the queues and is writing them.
    pub(crate) writing: bool,
    pub(crate) slots_used: usize,
    /// The reader is blocked waiting for a slot (only then does a release notify it: a
    /// condition-variable notification is a system call even with nobody waiting).
    pub(crate) reader_waiting: bool,
    pub(crate) timestamp: Instant,
    pub(crate) tls_flush: bool,
    /// Threads of this connection still running; the entry goes when it reaches zero.
    pub(crate) threads: u8,
    /// Frames a direct writer could not finish without blocking: the writer thread writes
    /// `rest` and then reports the frames written.
    pub(crate) handoff: Option<Handoff>,
}

/// Frames whose bytes were partly written by a direct (non-blocking) write.
pub(crate) struct Handoff {
    pub(crate) frames: Vec<(Frame, u32)>,
    pub(crate) rest: Vec<u8>,
}

/// A pending request: its completion and deadline bookkeeping.
pub(crate) struct RequestEntry {
    pub(crate) id: u64,
    pub(crate) done: Completer<Result<Message, Error>>,
}

/// Work to do after the state lock is released.
pub(crate) enum Deferred {
    Send(Pending, Result<(), Error>),
    Release(ReleaseDone),
    Dial {
        conn: Arc<Conn>,
        addr: SocketAddr,
    },
    CloseSocket(Arc<Conn>),
    /// Frames are queued for this idle connection: write them from this thread.
    Write(Arc<Conn>),
    Request(Completer<Result<Message, Error>>, Result<Message, Error>),
    Timer(Instant, super::timer::Event),
}

/// A list of [`Deferred`] actions.
#[derive(Default)]
pub(crate) struct After(pub(crate) Vec<Deferred>);

impl After {
    pub(crate) fn push(&mut self, d: Deferred) {
        self.0.push(d);
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Hasher for connection ids: our own sequential numbers, never chosen by a peer, so a
/// keyed (DoS-resistant) hash buys nothing there; it was 14 % of a round trip's
/// instructions (callgrind).
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// All mutable node state.
pub(crate) struct State {
    pub(crate) remotes: HashMap<RemoteKey, Remote>,
    pub(crate) conns: HashMap<u64, ConnEntry, BuildHasherDefault<IdHasher>>,
    pub(crate) requests: HashMap<Identity, RequestEntry>,
    pub(crate) next_id: u64,
    pub(crate) closing: bool,
}

/// Node-wide constants the transitions need.
pub(crate) struct Limits {
    pub(crate) timeout: Duration,
    pub(crate) reuse_time: Duration,
    pub(crate) synchronous: bool,
    pub(crate) max_slots: usize,
}

/// Largest batch of user frames the writer takes at once (asynchronous mode).
pub(crate) const BATCH_BYTES: u64 = 256 * 1024;

impl State {
    pub(crate) fn new() -> State {
        State {
            remotes: HashMap::new(),
            conns: HashMap::default(),
            requests: HashMap::new(),
            next_id: 1,
            closing: false,
        }
    }

    pub(crate) fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn remote_entry(&mut self, addr: SocketAddr) -> &mut Remote {
        self.remotes.entry(key_of(&addr)).or_insert_with(|| Remote {
            dial_addr: addr,
            serial: crate::rand::u32(),
            user: VecDeque::new(),
            control: VecDeque::new(),
            wait_ack: None,
            conn: None,
            blocked: false,
            timestamp: Instant::now(),
            ack_timer_armed: false,
            noop_queued: false,
        })
    }

    /// Queues a user message for `addr` and gets it moving (PROTOCOL.md §3.2).
    pub(crate) fn enqueue(
        &mut self,
        lim: &Limits,
        addr: SocketAddr,
        p: Pending,
        after: &mut After,
    ) {
        let probe_after = lim.reuse_time / 4 * 3;
        let remote = self.remote_entry(addr);
        // Probe an idle connection before the real message (§2.5).
        if remote.conn.is_some() && !remote.noop_queued && remote.timestamp.elapsed() > probe_after
        {
            remote.control.push_back(Control::Noop);
            remote.noop_queued = true;
        }
        remote.user.push_back(p);
        self.process(key_of(&addr), after);
    }

    /// Makes progress on a remote's queues: dial if needed, or wake the writer.
    pub(crate) fn process(&mut self, key: RemoteKey, after: &mut After) {
        let closing = self.closing;
        let Some(remote) = self.remotes.get_mut(&key) else {
            return;
        };
        match remote.conn {
            Some(id) => self.kick(id, after),
            None => {
                if closing
                    || remote.blocked
                    || (remote.user.is_empty() && remote.control.is_empty())
                {
                    return;
                }
                let dial_addr = remote.dial_addr;
                let id = self.next_id;
                self.next_id += 1;
                match Conn::new_outgoing(id, dial_addr) {
                    Ok(conn) => {
                        let conn = Arc::new(conn);
                        self.conns.insert(
                            id,
                            ConnEntry {
                                conn: conn.clone(),
                                remote: Some(key),
                                handshaken: false,
                                closing: false,
                                close_reason: None,
                                writing: false,
                                slots_used: 0,
                                reader_waiting: false,
                                timestamp: Instant::now(),
                                tls_flush: false,
                                threads: 1,
                                handoff: None,
                            },
                        );
                        if let Some(r) = self.remotes.get_mut(&key) {
                            r.conn = Some(id);
                        }
                        after.push(Deferred::Dial {
                            conn,
                            addr: dial_addr,
                        });
                    }
                    Err(e) => {
                        // Could not even create a socket: fail one message, like a failed connect.
                        let err = Error::CannotConnect {
                            addr: dial_addr,
                            reason: e.to_string(),
                        };
                        if let Some(r) = self.remotes.get_mut(&key) {
                            if let Some(p) = r.user.pop_front() {
                                after.push(Deferred::Send(p, Err(err)));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Frames may be waiting for connection `id`: if nobody is writing on it, the caller
    /// writes them directly (after unlocking); otherwise the active writer picks them up.
    pub(crate) fn kick(&self, id: u64, after: &mut After) {
        if let Some(e) = self.conns.get(&id) {
            if e.handshaken && !e.closing && !e.writing && e.handoff.is_none() {
                after.push(Deferred::Write(e.conn.clone()));
            }
        }
    }

    /// Registers an accepted (not yet handshaken) connection.
    pub(crate) fn add_incoming(&mut self, conn: Arc<Conn>) {
        self.conns.insert(
            conn.id,
            ConnEntry {
                conn,
                remote: None,
                handshaken: false,
                closing: false,
                close_reason: None,
                writing: false,
                slots_used: 0,
                reader_waiting: false,
                timestamp: Instant::now(),
                tls_flush: false,
                threads: 1,
                handoff: None,
            },
        );
    }

    /// The peer's handshake arrived: attach the connection to its remote, the last
    /// handshake wins (§3.4). Returns false if the connection should not continue.
    pub(crate) fn handshake_done(&mut self, id: u64, key: RemoteKey, peer: SocketAddr) -> bool {
        if self.closing {
            return false;
        }
        match self.conns.get_mut(&id) {
            Some(e) if !e.closing => {
                e.handshaken = true;
                e.remote = Some(key);
                e.timestamp = Instant::now();
            }
            _ => return false,
        }
        let remote = self.remote_entry(SocketAddr::new(peer.ip(), key.1));
        remote.conn = Some(id);
        remote.blocked = false;
        remote.timestamp = Instant::now();
        true
    }

    /// The dial side of [`handshake_done`]: the connection belongs to the remote it was
    /// dialed for, whatever port the peer advertises (PROTOCOL.md §9 item 9 explains why
    /// re-keying it, as C does, strands the queue).
    pub(crate) fn outgoing_key(&self, id: u64) -> Option<RemoteKey> {
        self.conns.get(&id).and_then(|e| e.remote)
    }

    /// Takes the next frames to write on connection `id`: every control frame, then user
    /// messages (synchronous: one, and only when none awaits an ACK; asynchronous: up to
    /// [`BATCH_BYTES`]). Serials are assigned here, in wire order.
    pub(crate) fn take_frames(&mut self, lim: &Limits, id: u64, out: &mut Vec<(Frame, u32)>) {
        let Some(entry) = self.conns.get(&id) else {
            return;
        };
        if entry.closing || !entry.handshaken {
            return;
        }
        let Some(key) = entry.remote else { return };
        let Some(remote) = self.remotes.get_mut(&key) else {
            return;
        };
        if remote.conn != Some(id) {
            return;
        }
        while let Some(c) = remote.control.pop_front() {
            remote.serial = remote.serial.wrapping_add(1);
            let frame = match c {
                Control::Ack(r) => Frame::Ack(r),
                Control::Noop => {
                    remote.noop_queued = false;
                    Frame::Noop
                }
            };
            out.push((frame, remote.serial));
        }
        if lim.synchronous {
            if remote.wait_ack.is_none() {
                if let Some(p) = remote.user.pop_front() {
                    remote.wait_ack = Some(WaitAck {
                        identity: p.msg().identity,
                        conn: id,
                        pending: None,
                        acked: false,
                        deadline: None,
                    });
                    remote.serial = remote.serial.wrapping_add(1);
                    out.push((Frame::User(p), remote.serial));
                }
            }
        } else {
            let mut bytes = 0u64;
            while bytes < BATCH_BYTES {
                let Some(p) = remote.user.pop_front() else {
                    break;
                };
                bytes += 27 + p.msg().payload_len();
                remote.serial = remote.serial.wrapping_add(1);
                out.push((Frame::User(p), remote.serial));
            }
        }
    }

    /// The writer finished writing `frames` on `id` (successfully or not).
    pub(crate) fn frames_written(
        &mut self,
        lim: &Limits,
        id: u64,
        frames: &mut Vec<(Frame, u32)>,
        result: Result<(), Error>,
        after: &mut After,
    ) {
        let now = Instant::now();
        let (key, reason) = match self.conns.get_mut(&id) {
            Some(e) => {
                e.writing = false;
                if e.tls_flush {
                    // A TLS read left ciphertext while someone else was writing.
                    e.conn.writer_cv.notify_all();
                }
                if result.is_ok() {
                    e.timestamp = now;
                }
                (e.remote, e.close_reason.clone())
            }
            None => (None, Some(Error::Shutdown)),
        };
        match result {
            Ok(()) => {
                let mut arm = None;
                if let Some(remote) = key.and_then(|k| self.remotes.get_mut(&k)) {
                    remote.timestamp = now;
                    for (frame, _) in frames.drain(..) {
                        match frame {
                            Frame::User(p) if lim.synchronous => match &mut remote.wait_ack {
                                Some(w) if w.identity == p.msg().identity && w.conn == id => {
                                    if w.acked {
                                        remote.wait_ack = None;
                                        after.push(Deferred::Send(p, Ok(())));
                                    } else {
                                        let deadline = now + lim.timeout;
                                        w.pending = Some(p);
                                        w.deadline = Some(deadline);
                                        if !remote.ack_timer_armed {
                                            remote.ack_timer_armed = true;
                                            arm = Some(deadline);
                                        }
                                    }
                                }
                                _ => after.push(Deferred::Send(
                                    p,
                                    Err(reason.clone().unwrap_or(Error::Shutdown)),
                                )),
                            },
                            Frame::User(p) => after.push(Deferred::Send(p, Ok(()))),
                            Frame::Ack(r) => after.push(Deferred::Release(r)),
                            Frame::Noop => {}
                        }
                    }
                } else {
                    // The remote was garbage-collected or the node closed while writing.
                    for (frame, _) in frames.drain(..) {
                        match frame {
                            Frame::User(p) if lim.synchronous => {
                                after.push(Deferred::Send(p, Err(Error::Shutdown)))
                            }
                            Frame::User(p) => after.push(Deferred::Send(p, Ok(()))),
                            Frame::Ack(r) => after.push(Deferred::Release(r)),
                            Frame::Noop => {}
                        }
                    }
                }
                if let (Some(at), Some(k)) = (arm, key) {
                    after.push(Deferred::Timer(at, super::timer::Event::AckDeadline(k)));
                }
            }
            Err(e) => {
                let reason = reason.unwrap_or(e);
                for (frame, _) in frames.drain(..) {
                    match frame {
                        Frame::User(p) => {
                            if let Some(remote) = key.and_then(|k| self.remotes.get_mut(&k)) {
                                if matches!(&remote.wait_ack, Some(w) if w.identity == p.msg().identity && w.conn == id)
                                {
                                    remote.wait_ack = None;
                                }
                            }
                            after.push(Deferred::Send(p, Err(reason.clone())));
                        }
                        Frame::Ack(r) => after.push(Deferred::Release(r)),
                        Frame::Noop => {}
                    }
                }
                // The frames in flight took the failure; no queued message is failed.
                self.shutdown_conn(lim, id, reason, true, after);
            }
        }
    }

    /// An ACK for `identity` arrived on a connection of remote `key` (§2.2).
    pub(crate) fn ack_received(&mut self, key: RemoteKey, identity: Identity, after: &mut After) {
        let Some(remote) = self.remotes.get_mut(&key) else {
            return;
        };
        let Some(w) = &mut remote.wait_ack else {
            return;
        };
        if w.identity != identity {
            return; // ACKs for unknown identities are dropped silently (§1.4).
        }
        match w.pending.take() {
            Some(p) => {
                remote.wait_ack = None;
                after.push(Deferred::Send(p, Ok(())));
                // The next synchronous message may go now.
                if !remote.user.is_empty() {
                    if let Some(id) = remote.conn {
                        self.kick(id, after);
                    }
                }
            }
            None => w.acked = true,
        }
    }

    /// Received data or NOOP: refresh the connection's and the remote's timestamps.
    pub(crate) fn touch(&mut self, id: u64, key: RemoteKey) {
        let now = Instant::now();
        if let Some(e) = self.conns.get_mut(&id) {
            e.timestamp = now;
        }
        if let Some(r) = self.remotes.get_mut(&key) {
            r.timestamp = now;
        }
    }

    /// Releases a slot of connection `id`, queueing the ACK when one is due (§2.4).
    pub(crate) fn release_slot(
        &mut self,
        id: u64,
        req_ack: bool,
        done: ReleaseDone,
        after: &mut After,
    ) {
        let mut key = None;
        if let Some(e) = self.conns.get_mut(&id) {
            e.slots_used = e.slots_used.saturating_sub(1);
            if e.reader_waiting {
                e.conn.reader_cv.notify_all();
            }
            if req_ack && !e.closing && !self.closing {
                key = e.remote;
            }
        }
        match key.and_then(|k| self.remotes.get_mut(&k).map(|r| (k, r))) {
            Some((k, remote)) => {
                // Routed through the remote: written on its current connection (§2.4).
                remote.control.push_back(Control::Ack(done));
                self.process(k, after);
            }
            None => after.push(Deferred::Release(done)),
        }
    }

    /// The single failure path of a connection (PROTOCOL.md §3.6). `in_flight_failed` is
    /// true when the caller already failed the frames that were being written.
    pub(crate) fn shutdown_conn(
        &mut self,
        lim: &Limits,
        id: u64,
        reason: Error,
        in_flight_failed: bool,
        after: &mut After,
    ) {
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        if e.closing {
            return;
        }
        e.closing = true;
        e.close_reason = Some(reason.clone());
        let writing = e.writing;
        // Frames a direct writer left to the writer thread are in flight too: they fail
        // with the reason (and must not be dropped with the entry, under this lock).
        let handoff = e.handoff.take();
        e.conn.writer_cv.notify_all();
        e.conn.reader_cv.notify_all();
        after.push(Deferred::CloseSocket(e.conn.clone()));
        self.detach(id, reason.clone(), in_flight_failed || writing, after);
        if let Some(h) = handoff {
            let mut frames = h.frames;
            self.frames_written(lim, id, &mut frames, Err(reason), after);
        }
    }

    /// The remote's side of a connection failure (§3.6 steps 2–5).
    fn detach(&mut self, id: u64, reason: Error, in_flight: bool, after: &mut After) {
        let Some(key) = self.conns.get(&id).and_then(|e| e.remote) else {
            return;
        };
        let closing = self.closing;
        let Some(remote) = self.remotes.get_mut(&key) else {
            return;
        };
        if remote.conn == Some(id) {
            remote.conn = None;
        }
        let mut failed_one = in_flight;
        if matches!(&remote.wait_ack, Some(w) if w.conn == id) {
            let w = remote.wait_ack.take().expect("checked");
            if let Some(p) = w.pending {
                after.push(Deferred::Send(p, Err(reason.clone())));
            }
            // A message without `pending` is still with the writer, which fails it.
            failed_one = true;
        }
        if remote.conn.is_none() {
            // Queued ACKs are dropped (the peer will time out, as with C), but their
            // release completions fire; a queued NOOP is pointless on a new connection.
            for c in remote.control.drain(..) {
                if let Control::Ack(r) = c {
                    after.push(Deferred::Release(r));
                }
            }
            remote.noop_queued = false;
            if !failed_one {
                if let Some(p) = remote.user.pop_front() {
                    after.push(Deferred::Send(p, Err(reason)));
                }
            }
            if !closing {
                // Debounce the reconnect (50–549 ms).
                remote.blocked = true;
                let at = Instant::now() + Duration::from_millis(crate::rand::range(50, 550));
                after.push(Deferred::Timer(at, super::timer::Event::Debounce(key)));
            }
        }
    }

    /// A thread of connection `id` ends; the entry goes with the last one.
    pub(crate) fn conn_thread_exit(&mut self, id: u64) {
        if let Some(e) = self.conns.get_mut(&id) {
            e.threads = e.threads.saturating_sub(1);
            if e.threads == 0 {
                self.conns.remove(&id);
            }
        }
    }

    /// Debounce timer fired: unblock the remote and reconnect if anything is queued.
    pub(crate) fn unblock(&mut self, key: RemoteKey, after: &mut After) {
        if let Some(r) = self.remotes.get_mut(&key) {
            r.blocked = false;
            self.process(key, after);
        }
    }

    /// The ACK deadline check for a remote's waiting synchronous message.
    pub(crate) fn ack_deadline(&mut self, lim: &Limits, key: RemoteKey, after: &mut After) {
        let now = Instant::now();
        let Some(remote) = self.remotes.get_mut(&key) else {
            return;
        };
        remote.ack_timer_armed = false;
        let Some(w) = &remote.wait_ack else { return };
        match w.deadline {
            Some(d) if d <= now => {
                let conn = w.conn;
                let err = Error::timeout(format!(
                    "no release (ACK) from {}:{} within {:?}",
                    key.0, key.1, lim.timeout
                ));
                // Taking the connection down fails the waiting message with the reason.
                self.shutdown_conn(lim, conn, err, false, after);
            }
            Some(d) => {
                remote.ack_timer_armed = true;
                after.push(Deferred::Timer(d, super::timer::Event::AckDeadline(key)));
            }
            None => {}
        }
    }

    /// One garbage-collection run (§3.5).
    pub(crate) fn gc(&mut self, lim: &Limits, after: &mut After) {
        let now = Instant::now();
        let r = lim.reuse_time;
        let old: Vec<u64> = self
            .conns
            .iter()
            .filter(|(id, e)| {
                e.handshaken
                    && !e.closing
                    && now.duration_since(e.timestamp) > r
                    && e.remote
                        .and_then(|k| self.remotes.get(&k))
                        .map_or(true, |rem| rem.conn != Some(**id))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in old {
            self.shutdown_conn(lim, id, Error::Shutdown, false, after);
        }
        let idle: Vec<RemoteKey> = self
            .remotes
            .iter()
            .filter(|(_, rem)| !rem.blocked && now.duration_since(rem.timestamp) > r)
            .map(|(k, _)| *k)
            .collect();
        for key in idle {
            self.remove_remote(lim, key, after);
        }
    }

    /// Removes a remote: fails its queue with `Shutdown`, closes its connection.
    pub(crate) fn remove_remote(&mut self, lim: &Limits, key: RemoteKey, after: &mut After) {
        let Some(mut remote) = self.remotes.remove(&key) else {
            return;
        };
        for p in remote.user.drain(..) {
            after.push(Deferred::Send(p, Err(Error::Shutdown)));
        }
        for c in remote.control.drain(..) {
            if let Control::Ack(r) = c {
                after.push(Deferred::Release(r));
            }
        }
        if let Some(w) = remote.wait_ack.take() {
            if let Some(p) = w.pending {
                after.push(Deferred::Send(p, Err(Error::Shutdown)));
            }
        }
        let conns: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, e)| e.remote == Some(key))
            .map(|(id, _)| *id)
            .collect();
        for id in conns {
            self.shutdown_conn(lim, id, Error::Shutdown, false, after);
        }
    }

    /// Close: everything fails with `Shutdown`, every connection goes down.
    pub(crate) fn close_all(&mut self, lim: &Limits, after: &mut After) {
        self.closing = true;
        let keys: Vec<RemoteKey> = self.remotes.keys().copied().collect();
        for key in keys {
            self.remove_remote(lim, key, after);
        }
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            self.shutdown_conn(lim, id, Error::Shutdown, false, after);
        }
        for (_, r) in self.requests.drain() {
            after.push(Deferred::Request(r.done, Err(Error::Shutdown)));
        }
    }
}

/// A frame taken by a writer.
pub(crate) enum Frame {
    User(Pending),
    Ack(ReleaseDone),
    Noop,
}
