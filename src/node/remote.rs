//! One remote (a peer, keyed by its address and advertised port): its send queues, serial
//! counter, the synchronous message waiting for its ACK, and its current connection.
//!
//! Every transition runs with this remote's mutex held — and no other lock — and never
//! blocks, never calls user code and never drops a message or completion. What must happen
//! outside the lock (completing waiters, dialing, kicking a writer, shutting a connection
//! down) is pushed onto an [`After`] list that the caller runs once it has unlocked.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use smallvec::SmallVec;

use crate::connection::Conn;
use crate::error::Error;
use crate::frame::{Control, Frame, Pending};
use crate::message::{Identity, ReleaseDone};

use super::key::{key_of, RemoteKey};
use super::timer::Event;

/// Largest batch of user frames a writer takes at once (asynchronous mode).
const BATCH_BYTES: u64 = 256 * 1024;

/// Node-wide constants the transitions need.
pub(crate) struct Limits {
    pub(crate) timeout: Duration,
    pub(crate) reuse_time: Duration,
    pub(crate) synchronous: bool,
    pub(crate) max_queued: usize,
}

/// Work to do after the remote's lock is released.
pub(crate) enum Deferred {
    /// Complete a user message with the outcome. Boxed: the other variants are a few
    /// words, and every push and pop of an [`After`] moves the whole enum.
    Send(Box<(Pending, Result<(), Error>)>),
    Release(ReleaseDone),
    /// Dial this new connection (already the remote's current one).
    Dial(Arc<Conn>),
    /// Shut this connection down with the reason.
    Shutdown(Arc<Conn>, Error),
    /// Frames are queued for this connection.
    Kick(Arc<Conn>),
    Timer(Instant, Event),
}

impl Deferred {
    pub(crate) fn send(p: Pending, result: Result<(), Error>) -> Deferred {
        Deferred::Send(Box::new((p, result)))
    }
}

/// A list of [`Deferred`] actions. The first lives inline: a send's usual outcome is one
/// kick, and it should not cost an allocation.
#[derive(Default)]
pub(crate) struct After(pub(crate) SmallVec<[Deferred; 1]>);

impl After {
    pub(crate) fn push(&mut self, d: Deferred) {
        self.0.push(d);
    }

    /// Room for `n` more actions at once (a written batch completes each of its messages).
    pub(crate) fn reserve(&mut self, n: usize) {
        self.0.reserve(n);
    }
}

/// The synchronous message written and waiting for its ACK (one per remote).
struct WaitAck {
    identity: Identity,
    /// The connection it was written on.
    conn: Arc<Conn>,
    /// The message, once its write finished.
    pending: Option<Pending>,
    /// The ACK arrived before the write was reported finished.
    acked: bool,
    /// Set when the write finished: the ACK must arrive before it.
    deadline: Option<Instant>,
}

/// A remote's mutable state.
pub(crate) struct RemoteState {
    serial: u32,
    user: VecDeque<Pending>,
    control: VecDeque<Control>,
    wait_ack: Option<WaitAck>,
    /// The current connection: the one frames are written on.
    pub(crate) conn: Option<Arc<Conn>>,
    /// Reconnecting is held off for a moment after a failure (debounce).
    blocked: bool,
    /// Last use: created, frame written, data or NOOP received.
    timestamp: Instant,
    ack_timer_armed: bool,
    noop_queued: bool,
    /// Taken out of the remotes table (garbage-collected or the node closing): nothing
    /// may be queued here any more.
    pub(crate) removed: bool,
}

impl RemoteState {
    /// Before a user message is queued: a NOOP goes first if the connection has been idle
    /// for three quarters of the reuse time (a dead connection shows before the message is
    /// lost to it). Not when user messages are queued already: the first of them was
    /// checked, and goes out first — no clock read per message while streaming.
    fn probe_if_idle(&mut self, lim: &Limits) {
        if self.conn.is_none() || self.noop_queued || !self.user.is_empty() {
            return;
        }
        if self.timestamp.elapsed() > lim.reuse_time / 4 * 3 {
            self.control.push_back(Control::Noop);
            self.noop_queued = true;
        }
    }
}

/// One peer.
pub(crate) struct Remote {
    pub(crate) key: RemoteKey,
    /// Where to dial (keeps an IPv6 scope id).
    pub(crate) dial_addr: SocketAddr,
    state: Mutex<RemoteState>,
}

/// What a dial needs from the node: a new connection for this remote, or why not.
pub(crate) type Dialer<'a> = &'a dyn Fn(&Arc<Remote>) -> Result<Arc<Conn>, Error>;

/// What became of a message handed to [`Remote::enqueue`].
pub(crate) enum Enqueued {
    Queued,
    /// The remote was removed meanwhile: look it up again.
    Removed(Pending),
    /// The queue holds `max_queued` messages already.
    Full(Pending),
}

impl Remote {
    pub(crate) fn new(dial_addr: SocketAddr) -> Remote {
        Remote {
            key: key_of(&dial_addr),
            dial_addr,
            state: Mutex::new(RemoteState {
                serial: crate::rand::u32(),
                user: VecDeque::new(),
                control: VecDeque::new(),
                wait_ack: None,
                conn: None,
                blocked: false,
                timestamp: Instant::now(),
                ack_timer_armed: false,
                noop_queued: false,
                removed: false,
            }),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, RemoteState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a user message and gets it moving. Hands it back if the remote was removed
    /// meanwhile (the caller looks the remote up again).
    pub(crate) fn enqueue(
        self: &Arc<Self>,
        lim: &Limits,
        p: Pending,
        dial: Dialer,
        after: &mut After,
    ) -> Enqueued {
        let mut st = self.lock();
        if st.removed {
            return Enqueued::Removed(p);
        }
        if st.user.len() >= lim.max_queued {
            return Enqueued::Full(p);
        }
        st.probe_if_idle(lim);
        st.user.push_back(p);
        self.process(&mut st, dial, after);
        Enqueued::Queued
    }

    /// Queues a batch of user messages under one lock and gets them moving (one kick).
    /// Takes what it queued out of `batch`; left there are all of them if the remote was
    /// removed meanwhile (`Err`, look it up again), or those beyond `max_queued` (`Ok`).
    pub(crate) fn enqueue_batch(
        self: &Arc<Self>,
        lim: &Limits,
        batch: &mut Vec<Pending>,
        dial: Dialer,
        after: &mut After,
    ) -> Result<(), ()> {
        let mut st = self.lock();
        if st.removed {
            return Err(());
        }
        let room = lim.max_queued.saturating_sub(st.user.len());
        if room == 0 {
            return Ok(());
        }
        st.probe_if_idle(lim);
        let n = room.min(batch.len());
        st.user.extend(batch.drain(..n));
        self.process(&mut st, dial, after);
        Ok(())
    }

    /// Makes progress on the queues: dial if needed, or kick the current connection.
    fn process(self: &Arc<Self>, st: &mut RemoteState, dial: Dialer, after: &mut After) {
        if let Some(c) = &st.conn {
            // Synchronous, with a message awaiting its ACK and no control frame queued:
            // nothing can be written now, and the ACK's arrival kicks the next message.
            if st.wait_ack.is_none() || !st.control.is_empty() {
                after.push(Deferred::Kick(c.clone()));
            }
            return;
        }
        if st.removed || st.blocked || (st.user.is_empty() && st.control.is_empty()) {
            return;
        }
        match dial(self) {
            Ok(conn) => {
                st.conn = Some(conn.clone());
                after.push(Deferred::Dial(conn));
            }
            Err(err) => {
                // No connection to be had (no socket, or a limit): fail one message, like a
                // failed connect.
                if let Some(p) = st.user.pop_front() {
                    after.push(Deferred::send(p, Err(err)));
                }
            }
        }
    }

    /// The connection's handshake arrived: it becomes the current connection (the last
    /// handshake wins). False if the remote was removed meanwhile.
    pub(crate) fn attach(&self, conn: &Arc<Conn>, after: &mut After) -> bool {
        let mut st = self.lock();
        if st.removed {
            return false;
        }
        st.conn = Some(conn.clone());
        st.blocked = false;
        st.timestamp = Instant::now();
        after.push(Deferred::Kick(conn.clone()));
        true
    }

    /// Whether `conn` is the current connection.
    pub(crate) fn is_current(&self, conn: &Conn) -> bool {
        self.lock().conn.as_ref().is_some_and(|c| c.id == conn.id)
    }

    /// Takes the next frames to write on `conn`, if it is the current connection: every
    /// control frame, then user messages (synchronous: one, and only when none awaits an
    /// ACK; asynchronous: up to [`BATCH_BYTES`]). Serials are assigned here, in wire order.
    pub(crate) fn take_frames(&self, lim: &Limits, conn: &Arc<Conn>, out: &mut Vec<(Frame, u32)>) {
        let mut st = self.lock();
        let st = &mut *st;
        if st.removed || !st.conn.as_ref().is_some_and(|c| c.id == conn.id) {
            return;
        }
        while let Some(c) = st.control.pop_front() {
            st.serial = st.serial.wrapping_add(1);
            let frame = match c {
                Control::Ack(r) => Frame::Ack(r),
                Control::Noop => {
                    st.noop_queued = false;
                    Frame::Noop
                }
            };
            out.push((frame, st.serial));
        }
        if lim.synchronous {
            if st.wait_ack.is_none() {
                if let Some(p) = st.user.pop_front() {
                    st.wait_ack = Some(WaitAck {
                        identity: p.msg().identity,
                        conn: conn.clone(),
                        pending: None,
                        acked: false,
                        deadline: None,
                    });
                    st.serial = st.serial.wrapping_add(1);
                    out.push((Frame::User(p), st.serial));
                }
            }
        } else {
            // How many fit the batch, counted in place; then moved straight from the queue
            // into the writer's list (one move per message, not two).
            let mut bytes = 0u64;
            let n = st
                .user
                .iter()
                .take_while(|p| {
                    let fits = bytes < BATCH_BYTES;
                    bytes += 27 + p.msg().payload_len();
                    fits
                })
                .count();
            let mut serial = st.serial;
            out.extend(st.user.drain(..n).map(|p| {
                serial = serial.wrapping_add(1);
                (Frame::User(p), serial)
            }));
            st.serial = serial;
        }
    }

    /// The writer finished writing `frames` on `conn` (successfully or not).
    ///
    /// Frames whose outcome changes nothing here — every frame of a successful
    /// asynchronous batch, written ACKs and NOOPs — are left in `frames` for the caller to
    /// complete once the lock is released ([`finish_written`]); the rest are handled here
    /// and pushed onto `after`. (Moving each message of a batch through `after` was a
    /// third of the writer thread's work for small messages.)
    pub(crate) fn written(
        &self,
        lim: &Limits,
        conn: &Conn,
        frames: &mut Vec<(Frame, u32)>,
        result: Result<(), Error>,
        after: &mut After,
    ) {
        let now = Instant::now();
        let mut st = self.lock();
        let st = &mut *st;
        match result {
            Ok(()) => {
                st.timestamp = now;
                if !lim.synchronous {
                    return;
                }
                after.reserve(frames.len());
                // Synchronous user frames now wait for their ACK (or have it already);
                // ACK and NOOP frames stay in `frames`.
                let mut i = 0;
                while i < frames.len() {
                    if !matches!(frames[i].0, Frame::User(_)) {
                        i += 1;
                        continue;
                    }
                    let Frame::User(p) = frames.swap_remove(i).0 else {
                        unreachable!("checked above")
                    };
                    match &mut st.wait_ack {
                        Some(w) if w.identity == p.msg().identity && w.conn.id == conn.id => {
                            if w.acked {
                                st.wait_ack = None;
                                after.push(Deferred::send(p, Ok(())));
                            } else {
                                let deadline = now + lim.timeout;
                                w.pending = Some(p);
                                w.deadline = Some(deadline);
                                if !st.ack_timer_armed {
                                    st.ack_timer_armed = true;
                                    after.push(Deferred::Timer(
                                        deadline,
                                        Event::AckDeadline(self.key),
                                    ));
                                }
                            }
                        }
                        // The connection failed (or the remote went) while writing.
                        _ => after.push(Deferred::send(
                            p,
                            Err(conn.close_reason().unwrap_or(Error::Shutdown)),
                        )),
                    }
                }
            }
            Err(e) => {
                after.reserve(frames.len());
                for (frame, _) in frames.drain(..) {
                    match frame {
                        Frame::User(p) => {
                            let mut acked = false;
                            if let Some(w) = &st.wait_ack {
                                if w.identity == p.msg().identity && w.conn.id == conn.id {
                                    // An ACK proves the peer got all of it, whatever the
                                    // writer met after its bytes.
                                    acked = w.acked;
                                    st.wait_ack = None;
                                }
                            }
                            let outcome = if acked { Ok(()) } else { Err(e.clone()) };
                            after.push(Deferred::send(p, outcome));
                        }
                        Frame::Ack(r) => after.push(Deferred::Release(r)),
                        Frame::Noop => {}
                    }
                }
            }
        }
    }

    /// An ACK for `identity` arrived (on any connection of this remote).
    pub(crate) fn ack_received(&self, identity: Identity, after: &mut After) {
        let mut st = self.lock();
        let st = &mut *st;
        let Some(w) = &mut st.wait_ack else {
            return;
        };
        if w.identity != identity {
            return; // ACKs for unknown identities are dropped silently.
        }
        match w.pending.take() {
            Some(p) => {
                st.wait_ack = None;
                // The next synchronous message may go now. It is kicked before the acked
                // one completes: on a reader thread the kick writes it at once, while the
                // sender woken by the completion, often placed on this CPU, would otherwise
                // run first and hold that write back (seen in scheduler traces).
                if !st.user.is_empty() {
                    if let Some(c) = &st.conn {
                        after.push(Deferred::Kick(c.clone()));
                    }
                }
                after.push(Deferred::send(p, Ok(())));
            }
            None => w.acked = true,
        }
    }

    /// Received data or NOOP: refresh the time stamp.
    pub(crate) fn touch(&self) {
        self.lock().timestamp = Instant::now();
    }

    /// A released message asked for an ACK: queue it (it goes out on the current
    /// connection, whichever that is).
    pub(crate) fn queue_ack(self: &Arc<Self>, done: ReleaseDone, dial: Dialer, after: &mut After) {
        let mut st = self.lock();
        if st.removed {
            after.push(Deferred::Release(done));
            return;
        }
        st.control.push_back(Control::Ack(done));
        self.process(&mut st, dial, after);
    }

    /// `conn` was shut down with `reason`. `in_flight`: frames being written take the
    /// failure. Fails the message waiting for its ACK on it, or else exactly one queued
    /// message, and debounces the reconnect.
    pub(crate) fn conn_closed(
        &self,
        conn: &Conn,
        reason: &Error,
        in_flight: bool,
        closing: bool,
        after: &mut After,
    ) {
        let mut st = self.lock();
        let st = &mut *st;
        if st.removed {
            return;
        }
        if st.conn.as_ref().is_some_and(|c| c.id == conn.id) {
            st.conn = None;
        }
        let mut failed_one = in_flight;
        if let Some(w) = st.wait_ack.as_ref().filter(|w| w.conn.id == conn.id) {
            failed_one = true;
            // An acknowledged one (its ACK arrived while the writer was still reporting the
            // write) was delivered, whatever became of the connection since: it stays, and
            // the writer's report completes it. Any other fails; one without `pending` is
            // still with the writer, which fails it.
            if !w.acked {
                if let Some(p) = st.wait_ack.take().and_then(|w| w.pending) {
                    after.push(Deferred::send(p, Err(reason.clone())));
                }
            }
        }
        if st.conn.is_none() {
            // Queued ACKs are dropped (the peer will time out, as with C), but their
            // release completions fire; a queued NOOP is pointless on a new connection.
            for c in st.control.drain(..) {
                if let Control::Ack(r) = c {
                    after.push(Deferred::Release(r));
                }
            }
            st.noop_queued = false;
            if !failed_one {
                if let Some(p) = st.user.pop_front() {
                    after.push(Deferred::send(p, Err(reason.clone())));
                }
            }
            if !closing {
                // Debounce the reconnect (50–549 ms).
                st.blocked = true;
                let at = Instant::now() + Duration::from_millis(crate::rand::range(50, 550));
                after.push(Deferred::Timer(at, Event::Debounce(self.key)));
            }
        }
    }

    /// After an accepted connection closed: a remote left with no connection and nothing
    /// queued, awaiting an ACK or to be acknowledged is marked removed (the caller takes it
    /// out of the table) instead of waiting for garbage collection, so peers that come
    /// and go under new advertised ports do not pile up. True if it was.
    pub(crate) fn release_if_vacant(&self) -> bool {
        let mut st = self.lock();
        let vacant = !st.removed
            && st.conn.is_none()
            && st.user.is_empty()
            && st.control.is_empty()
            && st.wait_ack.is_none();
        if vacant {
            st.removed = true;
        }
        vacant
    }

    /// The debounce timer fired: reconnect if anything is queued.
    pub(crate) fn unblock(self: &Arc<Self>, dial: Dialer, after: &mut After) {
        let mut st = self.lock();
        st.blocked = false;
        self.process(&mut st, dial, after);
    }

    /// The ACK deadline check for the waiting synchronous message.
    pub(crate) fn ack_deadline(&self, lim: &Limits, after: &mut After) {
        let now = Instant::now();
        let mut st = self.lock();
        st.ack_timer_armed = false;
        let Some(w) = &st.wait_ack else { return };
        match w.deadline {
            Some(d) if d <= now => {
                let err = Error::timeout(format!(
                    "no release (ACK) from {}:{} within {:?}",
                    self.key.0, self.key.1, lim.timeout
                ));
                // Taking the connection down fails the waiting message with the reason.
                after.push(Deferred::Shutdown(w.conn.clone(), err));
            }
            Some(d) => {
                st.ack_timer_armed = true;
                after.push(Deferred::Timer(d, Event::AckDeadline(self.key)));
            }
            None => {}
        }
    }

    /// For observers: (queued, awaiting an ACK, current connection, last use).
    pub(crate) fn observe(&self) -> (usize, usize, Option<Arc<Conn>>, Instant) {
        let st = self.lock();
        (
            st.user.len(),
            usize::from(st.wait_ack.is_some()),
            st.conn.clone(),
            st.timestamp,
        )
    }

    /// Whether garbage collection may remove this remote: not blocked, idle longer than `r`.
    pub(crate) fn is_idle(&self, now: Instant, r: Duration) -> bool {
        let st = self.lock();
        !st.blocked && now.duration_since(st.timestamp) > r
    }

    /// Marks the remote removed and fails everything it holds with `Shutdown`. Its
    /// connections are the caller's to shut down.
    pub(crate) fn remove(&self, after: &mut After) {
        let mut st = self.lock();
        st.removed = true;
        for p in st.user.drain(..) {
            after.push(Deferred::send(p, Err(Error::Shutdown)));
        }
        for c in st.control.drain(..) {
            if let Control::Ack(r) = c {
                after.push(Deferred::Release(r));
            }
        }
        // An acknowledged message still with the writer stays: the writer's report
        // completes it as delivered.
        if st.wait_ack.as_ref().is_some_and(|w| !w.acked) {
            if let Some(p) = st.wait_ack.take().and_then(|w| w.pending) {
                after.push(Deferred::send(p, Err(Error::Shutdown)));
            }
        }
        if let Some(c) = st.conn.take() {
            after.push(Deferred::Shutdown(c, Error::Shutdown));
        }
    }
}

/// Completes the frames [`Remote::written`] left in `frames` (written successfully, nothing
/// more to track): user messages complete with success, ACKs finish their release. Runs
/// without any lock held.
pub(crate) fn finish_written(frames: &mut Vec<(Frame, u32)>) {
    for (frame, _) in frames.drain(..) {
        match frame {
            Frame::User(p) => {
                // A success never fails a request.
                let _ = p.finish(Ok(()));
            }
            Frame::Ack(r) => r.finish(),
            Frame::Noop => {}
        }
    }
}

#[cfg(test)]
mod tests {
    //! The transitions above on their own: no node, no threads; the connection is a
    //! socket that is never connected, its owner does nothing.
    use super::*;
    use crate::completion::Completion;
    use crate::connection::{Owner, Settings};
    use crate::frame::{Done, SendResult};
    use crate::message::Message;
    use crate::wire::Handshake;

    struct NoOwner;

    impl Owner for NoOwner {
        fn spawn(
            &self,
            _: &Arc<Conn>,
            _: String,
            _: usize,
            _: Box<dyn FnOnce() + Send + 'static>,
        ) -> std::io::Result<()> {
            Ok(())
        }
        fn connected(&self, _: &Arc<Conn>) -> Result<(), Error> {
            Ok(())
        }
        fn take_frames(&self, _: &Arc<Conn>, _: &mut Vec<(Frame, u32)>) {}
        fn written(&self, _: &Arc<Conn>, _: &mut Vec<(Frame, u32)>, _: Result<(), Error>) {}
        fn ack(&self, _: &Arc<Conn>, _: Identity) {}
        fn activity(&self, _: &Arc<Conn>) {}
        fn deliver(&self, _: &Arc<Conn>, _: Message) {}
        fn ack_due(&self, _: &Arc<Conn>, _: ReleaseDone) {}
        fn closed(&self, _: &Arc<Conn>, _: &Error, _: bool) {}
        fn ended(&self, _: &Arc<Conn>) {}
    }

    fn lim() -> Limits {
        Limits {
            timeout: Duration::from_secs(5),
            reuse_time: Duration::from_secs(30),
            synchronous: true,
            max_queued: 16,
        }
    }

    type Fixture = (
        Arc<Remote>,
        Arc<Conn>,
        Completion<SendResult>,
        Vec<(Frame, u32)>,
    );

    /// Queues a synchronous message on `remote` (which dials `conn` if it has no connection):
    /// its completion, and what the remote deferred.
    fn queue(
        remote: &Arc<Remote>,
        conn: &Arc<Conn>,
        data: &[u8],
    ) -> (Completion<SendResult>, After) {
        let dial: Dialer = &|_| Ok(conn.clone());
        let (completion, completer) = Completion::pair();
        let p = Pending::new(Message::to(conn.peer, data), Done::Wait(completer));
        let mut after = After::default();
        assert!(matches!(
            remote.enqueue(&lim(), p, dial, &mut after),
            Enqueued::Queued
        ));
        (completion, after)
    }

    /// A remote whose current connection is `conn` (dialed, never connected), and one
    /// synchronous message taken by the writer: it awaits its ACK.
    fn written_but_unreported() -> Fixture {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        let settings = Arc::new(Settings {
            handshake: Handshake {
                port: 1,
                identity: Identity::default(),
            },
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_slots: 1,
            buffer_size: 1024,
            max_msg_size: 1024,
            synchronous: true,
            tls: None,
        });
        let conn = Arc::new(Conn::dial(1, addr, false, settings, Arc::new(NoOwner)).unwrap());
        let remote = Arc::new(Remote::new(addr));
        let (completion, _dialed) = queue(&remote, &conn, b"x");
        let mut frames = Vec::new();
        remote.take_frames(&lim(), &conn, &mut frames);
        assert_eq!(frames.len(), 1, "the writer takes the one message");
        (remote, conn, completion, frames)
    }

    fn run(after: After) {
        for d in after.0 {
            if let Deferred::Send(b) = d {
                let (p, r) = *b;
                let _ = p.finish(r);
            }
        }
    }

    /// The writer reports its write with `result`; what the send completed with (its error,
    /// if it failed).
    fn report(
        remote: &Remote,
        conn: &Conn,
        mut frames: Vec<(Frame, u32)>,
        result: Result<(), Error>,
        completion: Completion<SendResult>,
    ) -> Result<(), Error> {
        let mut after = After::default();
        remote.written(&lim(), conn, &mut frames, result, &mut after);
        run(after);
        finish_written(&mut frames);
        let Ok(outcome) = completion.try_wait() else {
            panic!("the send never completed")
        };
        outcome.map(drop).map_err(|e| e.error)
    }

    fn ack_of(frames: &[(Frame, u32)]) -> Identity {
        match &frames[0].0 {
            Frame::User(p) => p.msg().identity,
            _ => panic!("a user frame was taken"),
        }
    }

    /// The ACK arrives before the writer reported its write, then the connection closes
    /// (the peer acknowledged and left), then the writer reports: delivered. (A race once
    /// lost by tests/deadlock.rs under load: the send failed with "peer closed the
    /// connection" although its ACK had arrived.)
    #[test]
    fn an_acknowledged_message_is_delivered_whatever_happens_to_its_connection_after() {
        for (writer_result, also_removed) in [
            (Ok(()), false),
            (
                Err(Error::Protocol {
                    reason: "peer closed the connection".into(),
                }),
                false,
            ),
            (Ok(()), true),
        ] {
            let (remote, conn, completion, frames) = written_but_unreported();
            let mut after = After::default();
            remote.ack_received(ack_of(&frames), &mut after);
            assert!(
                after.0.is_empty(),
                "nothing completes before the writer reports"
            );
            let reason = Error::Protocol {
                reason: "peer closed the connection".into(),
            };
            remote.conn_closed(&conn, &reason, false, false, &mut after);
            if also_removed {
                remote.remove(&mut after);
            }
            let failed = after
                .0
                .iter()
                .filter(|d| matches!(d, Deferred::Send(..)))
                .count();
            assert_eq!(
                failed, 0,
                "the closed connection failed the acknowledged message"
            );
            run(after);
            let failed_write = writer_result.is_err();
            let outcome = report(&remote, &conn, frames, writer_result, completion);
            assert!(
                outcome.is_ok(),
                "writer failed: {failed_write}, removed: {also_removed}: {outcome:?}"
            );
        }
    }

    /// What each deferred action is, in order.
    fn kinds(after: &After) -> Vec<&'static str> {
        after
            .0
            .iter()
            .map(|d| match d {
                Deferred::Send(..) => "send",
                Deferred::Kick(..) => "kick",
                Deferred::Release(..) => "release",
                Deferred::Dial(..) => "dial",
                Deferred::Shutdown(..) => "shutdown",
                Deferred::Timer(..) => "timer",
            })
            .collect()
    }

    /// Synchronous: while a message awaits its ACK, queueing another kicks nothing (nothing
    /// could be written); the ACK kicks the next message *before* completing the acked one
    /// (so a reader thread writes it before it wakes the sender).
    #[test]
    fn a_synchronous_stream_kicks_only_when_the_next_message_may_go() {
        let (remote, conn, completion, mut frames) = written_but_unreported();
        let mut after = After::default();
        remote.written(&lim(), &conn, &mut frames, Ok(()), &mut after);
        assert_eq!(kinds(&after), ["timer"], "written: the ACK deadline only");
        let (_next, after) = queue(&remote, &conn, b"y");
        assert_eq!(kinds(&after), Vec::<&str>::new(), "queued behind the ACK");
        assert!(
            frames.is_empty(),
            "written took the message to await its ACK"
        );
        let identity = remote
            .lock()
            .wait_ack
            .as_ref()
            .expect("awaits its ACK")
            .identity;
        let mut after = After::default();
        remote.ack_received(identity, &mut after);
        assert_eq!(
            kinds(&after),
            ["kick", "send"],
            "the ACK's effects, in order"
        );
        run(after);
        assert!(
            matches!(completion.try_wait(), Ok(Ok(_))),
            "the acked message did not complete as delivered"
        );
    }

    /// Without an ACK, a connection that closes fails the message the writer reports.
    #[test]
    fn an_unacknowledged_message_fails_with_its_connection() {
        let (remote, conn, completion, frames) = written_but_unreported();
        let mut after = After::default();
        let reason = Error::Protocol {
            reason: "peer closed the connection".into(),
        };
        remote.conn_closed(&conn, &reason, false, false, &mut after);
        run(after);
        let outcome = report(&remote, &conn, frames, Ok(()), completion);
        assert!(
            outcome.is_err(),
            "a message without its ACK was reported delivered"
        );
    }
}
