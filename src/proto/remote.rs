//! One remote (a peer, keyed by its address and advertised port) as a state machine: its
//! send queues, serial counter, the synchronous message waiting for its ACK, its current
//! connection, the reconnect debounce, and the two promises it keeps about time:
//!
//! * **The outcome bound.** A queued send never waits longer than 2.5 times the timeout
//!   after its peer last made progress: a handshake, bytes the peer took or sent on the
//!   current connection (as the driver's kernel counts them), a frame received, an ACK. When the peer makes none for
//!   [`stall_bound`] (twice the timeout; checked every eighth of that), every message
//!   queued for it fails with a timeout that says so, and its connection is shut down. A peer that keeps making progress never fails a send for
//!   waiting, however long the queue.
//! * **Garbage collection never fails work.** A remote can be collected only when nothing
//!   is queued, awaiting an ACK or dialing, and its connection is idle
//!   ([`RemoteCore::collectable`]).
//!
//! Every transition takes the current time from its caller and pushes what must happen
//! next onto an [`Actions`] list; the caller carries those out (in the node, after
//! unlocking the remote). Nothing here blocks, calls user code, or drops a message or a
//! completion.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use smallvec::SmallVec;

use crate::error::Error;
use crate::frame::{Control, Frame, Pending};
use crate::message::{Identity, ReleaseDone};

use super::key::RemoteKey;
use super::ConnRef;

/// Largest batch of user frames a writer takes at once (asynchronous mode).
const BATCH_BYTES: u64 = 256 * 1024;

/// Node-wide constants the transitions need.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) timeout: Duration,
    pub(crate) reuse_time: Duration,
    pub(crate) synchronous: bool,
    pub(crate) max_queued: usize,
}

/// How long a remote's peer may make no progress while sends wait for it: as long as a
/// connect may take.
pub(crate) fn stall_bound(lim: &Limits) -> Duration {
    lim.timeout * 2
}

/// How often the stall check looks while sends wait. Bytes moved between two looks at the
/// same connection are progress, so a send waits at most the bound and two looks (one to
/// take a new connection's count, one to compare): 2.5 × timeout.
fn stall_interval(lim: &Limits) -> Duration {
    stall_bound(lim) / 8
}

/// The reconnect debounce: 50–549 ms, but at most half the timeout, so that a redial to a
/// peer that is back comes well within the stall bound.
fn debounce(lim: &Limits, rng: &mut fastrand::Rng) -> Duration {
    let cap = (lim.timeout.as_millis() as u64 / 2).max(1);
    Duration::from_millis(rng.u64(50..550).min(cap))
}

/// A timer a remote asks for; when it fires, the driver calls the matching transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Timer {
    /// [`RemoteCore::unblock`]: the reconnect debounce is over.
    Debounce(RemoteKey),
    /// [`RemoteCore::ack_deadline`].
    AckDeadline(RemoteKey),
    /// [`RemoteCore::stall_check`].
    Stall(RemoteKey),
}

/// What the driver must do after a transition.
pub(crate) enum Action<C> {
    /// Complete a user message with the outcome. Boxed: the other variants are a few
    /// words, and every push and pop of an [`Actions`] moves the whole enum.
    Send(Box<(Pending, Result<(), Error>)>),
    /// Finish a release (its ACK was written, or cannot be).
    Release(ReleaseDone),
    /// Start this new connection (already the remote's current one): connect, TLS,
    /// handshake.
    Dial(C),
    /// Shut this connection down with the reason.
    Shutdown(C, Error),
    /// Retire this idle connection (garbage collection): send no more, half-close it, and
    /// go on reading until the peer closes too (bounded by the timeout), so that nothing
    /// the peer sent meanwhile is discarded.
    Retire(C),
    /// Frames are queued for this connection.
    Kick(C),
    /// Another frame was queued for the current connection, which was kicked already and
    /// has not taken frames since: no kick is needed. A driver that writes in rounds of
    /// so many frames (a corked reader thread) counts it.
    Queued,
    /// Call the timer's transition at this time.
    Timer(Instant, Timer),
}

impl<C> Action<C> {
    pub(crate) fn send(p: Pending, result: Result<(), Error>) -> Action<C> {
        Action::Send(Box::new((p, result)))
    }
}

/// A list of [`Action`]s. The first lives inline: a send's usual outcome is one kick, and
/// it should not cost an allocation.
pub(crate) struct Actions<C>(pub(crate) SmallVec<[Action<C>; 1]>);

impl<C> Default for Actions<C> {
    fn default() -> Self {
        Actions(SmallVec::new())
    }
}

impl<C> Actions<C> {
    pub(crate) fn push(&mut self, a: Action<C>) {
        self.0.push(a);
    }

    /// Room for `n` more actions at once (a written batch completes each of its messages).
    pub(crate) fn reserve(&mut self, n: usize) {
        self.0.reserve(n);
    }
}

/// How a connection ended, as [`RemoteCore::conn_closed`] needs to know it.
pub(crate) struct Ended<'a> {
    pub(crate) conn: u64,
    pub(crate) reason: &'a Error,
    /// Frames being written take the failure.
    pub(crate) in_flight: bool,
    /// The peer closed the established connection in an orderly way (end of stream), as
    /// garbage collection does: nothing queued fails for it.
    pub(crate) clean: bool,
    /// The node is closing: no reconnect.
    pub(crate) closing: bool,
}

/// What a dial needs from the driver: a new connection for this remote (registered, not
/// started: [`Action::Dial`] starts it), or why there is none.
pub(crate) type Dialer<'a, C> = &'a mut dyn FnMut() -> Result<C, Error>;

/// What became of a message handed to [`RemoteCore::enqueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// Taken and queued.
    Queued,
    /// The remote was removed meanwhile: look it up again (the message stays with the
    /// caller).
    Removed,
    /// The queue holds `max_queued` messages already (the message stays with the caller).
    Full,
}

/// The synchronous message written and waiting for its ACK (one per remote).
struct WaitAck<C> {
    identity: Identity,
    /// The connection it was written on.
    conn: C,
    /// The message, once its write finished.
    pending: Option<Pending>,
    /// The ACK arrived before the write was reported finished.
    acked: bool,
    /// Set when the write finished: the ACK must arrive before it.
    deadline: Option<Instant>,
    /// Its connection ended cleanly and it waits on for its ACK (on another connection).
    orphaned: bool,
}

/// One remote's state.
pub(crate) struct RemoteCore<C> {
    pub(crate) key: RemoteKey,
    serial: u32,
    user: VecDeque<Pending>,
    control: VecDeque<Control>,
    wait_ack: Option<WaitAck<C>>,
    /// User messages taken by writers and not yet reported ([`RemoteCore::written`]).
    writing: usize,
    /// The connections whose writers hold those messages, with how many each: usually
    /// the current one; a connection replaced while its writer held a batch stays here
    /// until that writer reports, so that the stall check can end it too.
    holders: SmallVec<[(C, usize); 1]>,
    /// The current connection: the one frames are written on.
    conn: Option<C>,
    /// The current connection completed its handshake (false while dialing).
    attached: bool,
    /// The id of the connection kicked for queued frames whose writer has not taken frames
    /// since: a kick is already under way, so queueing more kicks nothing (a streaming
    /// sender kicks once per batch the writer takes, not once per message). A connection's
    /// write side, once kicked, takes frames until none are left, or the connection ends
    /// (and with it this id's meaning).
    kicked: Option<u64>,
    /// Reconnecting is held off for a moment after a failure (debounce).
    blocked: bool,
    /// Last use: created, a send queued on a quiet remote, frame written, data or NOOP
    /// received. Garbage collection and the NOOP probe go by it.
    timestamp: Instant,
    /// The peer's last progress (see the module's outcome bound).
    progress: Instant,
    /// The current connection's byte count at the last stall check: (connection, bytes).
    seen_bytes: Option<(u64, u64)>,
    ack_timer_armed: bool,
    stall_timer_armed: bool,
    noop_queued: bool,
    /// Taken out of the remotes table (garbage-collected or the node closing): nothing
    /// may be queued here any more.
    removed: bool,
    /// Seeded by the driver: the reconnect debounce's jitter.
    rng: fastrand::Rng,
}

impl<C: ConnRef> RemoteCore<C> {
    /// A new remote at `now`; `seed` draws its first serial and its debounce jitter.
    pub(crate) fn new(key: RemoteKey, now: Instant, seed: u64) -> RemoteCore<C> {
        let mut rng = fastrand::Rng::with_seed(seed);
        RemoteCore {
            key,
            serial: rng.u32(..),
            user: VecDeque::new(),
            control: VecDeque::new(),
            wait_ack: None,
            writing: 0,
            holders: SmallVec::new(),
            conn: None,
            attached: false,
            kicked: None,
            blocked: false,
            timestamp: now,
            progress: now,
            seen_bytes: None,
            ack_timer_armed: false,
            stall_timer_armed: false,
            noop_queued: false,
            removed: false,
            rng,
        }
    }

    /// The current connection.
    pub(crate) fn conn(&self) -> Option<&C> {
        self.conn.as_ref()
    }

    /// Nothing is queued, being written or awaiting its ACK.
    fn quiet(&self) -> bool {
        self.user.is_empty() && self.writing == 0 && self.wait_ack.is_none()
    }

    /// Before user messages are queued on a quiet remote: the peer's progress and the
    /// remote's use count from now (a send is not failed for the time nobody sent), the
    /// stall check is armed, and a NOOP goes first if the connection has been idle for
    /// three quarters of the reuse time (a dead connection shows before the message is lost
    /// to it). While messages are queued already this costs nothing: no clock read per
    /// message while streaming.
    fn wake(&mut self, lim: &Limits, now: impl Fn() -> Instant, out: &mut Actions<C>) {
        if !self.quiet() {
            // Whatever is queued keeps the check armed (a verdict that leaves a message
            // awaiting its ACK re-arms it); this only guards that promise.
            if !self.stall_timer_armed {
                self.arm_stall(lim, now(), out);
            }
            return;
        }
        let now = now();
        if self.conn.is_some()
            && !self.noop_queued
            && now.saturating_duration_since(self.timestamp) > lim.reuse_time / 4 * 3
        {
            self.control.push_back(Control::Noop);
            self.noop_queued = true;
        }
        self.timestamp = now;
        self.progress = now;
        self.arm_stall(lim, now, out);
    }

    fn arm_stall(&mut self, lim: &Limits, now: Instant, out: &mut Actions<C>) {
        if !self.stall_timer_armed {
            self.stall_timer_armed = true;
            out.push(Action::Timer(
                now + stall_interval(lim),
                Timer::Stall(self.key),
            ));
        }
    }

    /// Queues a user message and gets it moving: takes it out of `p` (which must hold
    /// one). Leaves it there if the remote was removed meanwhile (the caller looks the
    /// remote up again) or its queue is full.
    ///
    /// The message travels by reference through the layers of the send path instead of
    /// by value (each layer copied its ~200 bytes): 1,942 -> 1,874 instructions per
    /// plain send in callgrind. It is still copied a few times here (out of `p`, into
    /// the queue).
    pub(crate) fn enqueue(
        &mut self,
        lim: &Limits,
        now: impl Fn() -> Instant,
        p: &mut Option<Pending>,
        dial: Dialer<C>,
        out: &mut Actions<C>,
    ) -> Enqueued {
        if self.removed {
            return Enqueued::Removed;
        }
        if self.user.len() >= lim.max_queued {
            return Enqueued::Full;
        }
        let Some(p) = p.take() else {
            return Enqueued::Queued;
        };
        self.wake(lim, now, out);
        self.user.push_back(p);
        self.process(dial, out);
        Enqueued::Queued
    }

    /// Queues a batch of user messages and gets them moving (one kick). Takes what it
    /// queued out of `batch`; left there are all of them if the remote was removed
    /// meanwhile (`Err`, look it up again), or those beyond `max_queued` (`Ok`).
    pub(crate) fn enqueue_batch(
        &mut self,
        lim: &Limits,
        now: impl Fn() -> Instant,
        batch: &mut Vec<Pending>,
        dial: Dialer<C>,
        out: &mut Actions<C>,
    ) -> Result<(), ()> {
        if self.removed {
            return Err(());
        }
        let room = lim.max_queued.saturating_sub(self.user.len());
        if room == 0 || batch.is_empty() {
            return Ok(());
        }
        self.wake(lim, now, out);
        let n = room.min(batch.len());
        self.user.extend(batch.drain(..n));
        self.process(dial, out);
        Ok(())
    }

    /// Makes progress on the queues: dial if needed, or kick the current connection.
    fn process(&mut self, dial: Dialer<C>, out: &mut Actions<C>) {
        if let Some(c) = &self.conn {
            // Synchronous, with a message awaiting its ACK and no control frame queued:
            // nothing can be written now, and the ACK's arrival kicks the next message.
            if self.wait_ack.is_none() || !self.control.is_empty() {
                if self.kicked == Some(c.id()) {
                    out.push(Action::Queued);
                } else {
                    self.kicked = Some(c.id());
                    out.push(Action::Kick(c.clone()));
                }
            }
            return;
        }
        if self.removed || self.blocked || (self.user.is_empty() && self.control.is_empty()) {
            return;
        }
        match dial() {
            Ok(conn) => {
                self.conn = Some(conn.clone());
                self.attached = false;
                out.push(Action::Dial(conn));
            }
            Err(err) => {
                // No connection to be had (no socket, or a limit): fail one message, like a
                // failed connect.
                if let Some(p) = self.user.pop_front() {
                    out.push(Action::send(p, Err(err)));
                }
            }
        }
    }

    /// The connection's handshake arrived: it becomes the current connection (the last
    /// handshake wins). False if the remote was removed meanwhile.
    pub(crate) fn attach(&mut self, now: Instant, conn: &C, out: &mut Actions<C>) -> bool {
        if self.removed {
            return false;
        }
        self.conn = Some(conn.clone());
        self.attached = true;
        self.blocked = false;
        self.timestamp = now;
        self.progress = now;
        out.push(Action::Kick(conn.clone()));
        true
    }

    /// `conn`'s writer took `n` user messages.
    fn hold(&mut self, conn: &C, n: usize) {
        if n == 0 {
            return;
        }
        self.writing += n;
        match self.holders.iter_mut().find(|h| h.0.id() == conn.id()) {
            Some(h) => h.1 += n,
            None => self.holders.push((conn.clone(), n)),
        }
    }

    /// `conn`'s writer reported `n` user messages.
    fn unhold(&mut self, conn: &C, n: usize) {
        self.writing = self.writing.saturating_sub(n);
        if let Some(i) = self.holders.iter().position(|h| h.0.id() == conn.id()) {
            let h = &mut self.holders[i].1;
            *h = h.saturating_sub(n);
            if *h == 0 {
                self.holders.swap_remove(i);
            }
        }
    }

    /// Whether the connection `id` is the current connection.
    pub(crate) fn is_current(&self, id: u64) -> bool {
        self.conn.as_ref().is_some_and(|c| c.id() == id)
    }

    /// Takes the next frames to write on `conn`, if it is the current connection: every
    /// control frame, then user messages (synchronous: one, and only when none awaits an
    /// ACK; asynchronous: up to [`BATCH_BYTES`]). Serials are assigned here, in wire order.
    pub(crate) fn take_frames(&mut self, lim: &Limits, conn: &C, out: &mut Vec<(Frame, u32)>) {
        if self.removed || !self.is_current(conn.id()) {
            return;
        }
        // The kick (if any) has been answered: what is queued after this look kicks again.
        self.kicked = None;
        while let Some(c) = self.control.pop_front() {
            self.serial = self.serial.wrapping_add(1);
            let frame = match c {
                Control::Ack(r) => Frame::Ack(r),
                Control::Noop => {
                    self.noop_queued = false;
                    Frame::Noop
                }
            };
            out.push((frame, self.serial));
        }
        if lim.synchronous {
            if self.wait_ack.is_none() {
                if let Some(p) = self.user.pop_front() {
                    self.wait_ack = Some(WaitAck {
                        identity: p.msg().identity,
                        conn: conn.clone(),
                        pending: None,
                        acked: false,
                        deadline: None,
                        orphaned: false,
                    });
                    self.serial = self.serial.wrapping_add(1);
                    self.hold(conn, 1);
                    out.push((Frame::User(p), self.serial));
                }
            }
        } else {
            // How many fit the batch, counted in place; then moved straight from the queue
            // into the writer's list (one move per message).
            let mut bytes = 0u64;
            let n = self
                .user
                .iter()
                .take_while(|p| {
                    let fits = bytes < BATCH_BYTES;
                    bytes += 27 + p.payload_len();
                    fits
                })
                .count();
            let mut serial = self.serial;
            self.hold(conn, n);
            out.extend(self.user.drain(..n).map(|p| {
                serial = serial.wrapping_add(1);
                (Frame::User(p), serial)
            }));
            self.serial = serial;
        }
    }

    /// The writer finished writing `frames` on `conn` (successfully or not).
    ///
    /// Frames whose outcome changes nothing here — every frame of a successful
    /// asynchronous batch, written ACKs and NOOPs — are left in `frames` for the caller to
    /// complete ([`finish_written`], in the node once the lock is released); the rest are
    /// handled here and pushed onto `out`.
    pub(crate) fn written(
        &mut self,
        lim: &Limits,
        now: Instant,
        conn: &C,
        frames: &mut Vec<(Frame, u32)>,
        result: Result<(), Error>,
        out: &mut Actions<C>,
    ) {
        let users = frames
            .iter()
            .filter(|(f, _)| matches!(f, Frame::User(_)))
            .count();
        self.unhold(conn, users);
        match result {
            Ok(()) => {
                // In use; but not the peer's progress: a write succeeds as soon as our own
                // kernel buffered it (the stall check counts what the peer took).
                self.timestamp = now;
                if !lim.synchronous {
                    return;
                }
                out.reserve(frames.len());
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
                    match &mut self.wait_ack {
                        Some(w) if w.identity == p.msg().identity && w.conn.id() == conn.id() => {
                            if w.acked {
                                self.wait_ack = None;
                                out.push(Action::send(p, Ok(())));
                            } else {
                                let deadline = now + lim.timeout;
                                w.pending = Some(p);
                                w.deadline = Some(deadline);
                                if !self.ack_timer_armed {
                                    self.ack_timer_armed = true;
                                    out.push(Action::Timer(deadline, Timer::AckDeadline(self.key)));
                                }
                            }
                        }
                        // The connection failed (or the remote went) while writing.
                        _ => out.push(Action::send(
                            p,
                            Err(conn.close_reason().unwrap_or(Error::Shutdown)),
                        )),
                    }
                }
            }
            Err(e) => {
                out.reserve(frames.len());
                for (frame, _) in frames.drain(..) {
                    match frame {
                        Frame::User(p) => {
                            let mut acked = false;
                            if let Some(w) = &self.wait_ack {
                                if w.identity == p.msg().identity && w.conn.id() == conn.id() {
                                    // An ACK proves the peer got all of it, whatever the
                                    // writer met after its bytes.
                                    acked = w.acked;
                                    self.wait_ack = None;
                                }
                            }
                            let outcome = if acked { Ok(()) } else { Err(e.clone()) };
                            out.push(Action::send(p, outcome));
                        }
                        Frame::Ack(r) => out.push(Action::Release(r)),
                        Frame::Noop => {}
                    }
                }
            }
        }
    }

    /// An ACK for `identity` arrived (on any connection of this remote).
    pub(crate) fn ack_received(&mut self, now: Instant, identity: Identity, out: &mut Actions<C>) {
        let Some(w) = &mut self.wait_ack else {
            return;
        };
        if w.identity != identity {
            return; // ACKs for unknown identities are dropped silently.
        }
        self.progress = now;
        match w.pending.take() {
            Some(p) => {
                self.wait_ack = None;
                // The next synchronous message may go now. It is kicked before the acked
                // one completes: on a reader thread the kick writes it at once, before the
                // woken sender competes for the CPU.
                if !self.user.is_empty() {
                    if let Some(c) = &self.conn {
                        out.push(Action::Kick(c.clone()));
                    }
                }
                out.push(Action::send(p, Ok(())));
            }
            None => w.acked = true,
        }
    }

    /// Received data or NOOP: the peer is alive and the remote in use.
    pub(crate) fn touch(&mut self, now: Instant) {
        self.timestamp = now;
        self.progress = now;
    }

    /// A released message asked for an ACK: queue it (it goes out on the current
    /// connection, whichever that is).
    pub(crate) fn queue_ack(&mut self, done: ReleaseDone, dial: Dialer<C>, out: &mut Actions<C>) {
        if self.removed {
            out.push(Action::Release(done));
            return;
        }
        self.control.push_back(Control::Ack(done));
        self.process(dial, out);
    }

    /// A connection ended (see [`Ended`]). The message waiting for its ACK on it fails;
    /// else, after a failure, exactly one queued message does (a peer that cannot be
    /// reached fails one send per attempt, as in C libchirp), and after a clean close none
    /// (the queue waits for the next connection). Either way the reconnect is debounced
    /// (unless the node is closing).
    pub(crate) fn conn_closed(
        &mut self,
        lim: &Limits,
        now: Instant,
        ended: Ended,
        out: &mut Actions<C>,
    ) {
        let Ended {
            conn,
            reason,
            in_flight,
            clean,
            closing,
        } = ended;
        if self.removed {
            return;
        }
        if self.is_current(conn) {
            self.conn = None;
            self.attached = false;
        }
        let mut failed_one = in_flight || clean;
        if let Some(w) = self.wait_ack.as_ref().filter(|w| w.conn.id() == conn) {
            failed_one = true;
            // An acknowledged one (its ACK arrived while the writer was still reporting the
            // write) was delivered, whatever became of the connection since: it stays, and
            // the writer's report completes it.
            //
            // After a clean close (the peer's orderly end of stream: its garbage collection
            // retired the connection, or it closed) an unacknowledged one keeps waiting
            // until its ACK deadline: a retiring peer still reads and delivers what crossed
            // its end of stream, and sends the ACK on a new connection. A deadline already
            // past fails it now, as the ACK deadline would have.
            //
            // Any other fails with the connection; one without `pending` is still with the
            // writer, which fails it.
            let expired = w.deadline.is_some_and(|d| d <= now);
            if !w.acked && clean && !expired {
                let w = self.wait_ack.as_mut().expect("matched above");
                w.orphaned = true;
                if let Some(d) = w.deadline {
                    if !self.ack_timer_armed {
                        self.ack_timer_armed = true;
                        out.push(Action::Timer(d, Timer::AckDeadline(self.key)));
                    }
                }
            } else if !w.acked {
                let err = if clean {
                    self.ack_timeout(lim)
                } else {
                    reason.clone()
                };
                if let Some(p) = self.wait_ack.take().and_then(|w| w.pending) {
                    out.push(Action::send(p, Err(err)));
                }
            }
        }
        if self.conn.is_none() {
            // Queued ACKs are dropped (the peer will time out, as with C), but their
            // release completions fire; a queued NOOP is pointless on a new connection.
            for c in self.control.drain(..) {
                if let Control::Ack(r) = c {
                    out.push(Action::Release(r));
                }
            }
            self.noop_queued = false;
            if !failed_one {
                if let Some(p) = self.user.pop_front() {
                    out.push(Action::send(p, Err(reason.clone())));
                }
            }
            if !closing {
                // Debounce the reconnect.
                self.blocked = true;
                let at = now + debounce(lim, &mut self.rng);
                out.push(Action::Timer(at, Timer::Debounce(self.key)));
            }
        }
    }

    /// After an accepted connection closed: a remote left with no connection and nothing
    /// queued, awaiting an ACK or to be acknowledged is marked removed (the caller takes it
    /// out of the table) instead of waiting for garbage collection, so peers that come
    /// and go under new advertised ports do not pile up. True if it was.
    pub(crate) fn release_if_vacant(&mut self) -> bool {
        let vacant =
            !self.removed && self.conn.is_none() && self.quiet() && self.control.is_empty();
        if vacant {
            self.removed = true;
        }
        vacant
    }

    /// The debounce timer fired: reconnect if anything is queued.
    pub(crate) fn unblock(&mut self, dial: Dialer<C>, out: &mut Actions<C>) {
        self.blocked = false;
        self.process(dial, out);
    }

    fn ack_timeout(&self, lim: &Limits) -> Error {
        Error::timeout(format!(
            "no release (ACK) from {}:{} within {:?}",
            self.key.0, self.key.1, lim.timeout
        ))
    }

    /// Taken out of the remotes table: an ACK queued here would never go out.
    pub(crate) fn is_removed(&self) -> bool {
        self.removed
    }

    /// The ACK deadline check for the waiting synchronous message.
    pub(crate) fn ack_deadline(&mut self, lim: &Limits, now: Instant, out: &mut Actions<C>) {
        self.ack_timer_armed = false;
        let Some(w) = &self.wait_ack else { return };
        match w.deadline {
            Some(d) if d <= now && w.orphaned => {
                // Its connection ended cleanly before (see `conn_closed`): fail it here.
                let err = self.ack_timeout(lim);
                if let Some(p) = self.wait_ack.take().and_then(|w| w.pending) {
                    out.push(Action::send(p, Err(err)));
                }
                // The next synchronous message may go.
                if !self.user.is_empty() {
                    if let Some(c) = &self.conn {
                        out.push(Action::Kick(c.clone()));
                    }
                }
            }
            Some(d) if d <= now => {
                let err = self.ack_timeout(lim);
                // Taking the connection down fails the waiting message with the reason.
                out.push(Action::Shutdown(w.conn.clone(), err));
            }
            Some(d) => {
                self.ack_timer_armed = true;
                out.push(Action::Timer(d, Timer::AckDeadline(self.key)));
            }
            None => {}
        }
    }

    /// The stall timer fired. `conn_bytes`: the current connection's running byte count
    /// (see [`super::activity`]), if there is one. If the peer made no progress for
    /// [`stall_bound`], every queued message fails with a timeout and the connection is
    /// shut down (which fails the one in flight or awaiting its ACK); else the check looks
    /// again after [`stall_interval`].
    pub(crate) fn stall_check(
        &mut self,
        lim: &Limits,
        now: Instant,
        conn_bytes: Option<u64>,
        out: &mut Actions<C>,
    ) {
        self.stall_timer_armed = false;
        if self.removed || self.quiet() {
            return;
        }
        // Bytes moved since the last look at the same connection are progress. A
        // connection seen for the first time only gives the count to compare with next
        // time: what it moved before is unknown (its handshake already counted).
        let mut compared = false;
        if let (Some(c), Some(bytes)) = (&self.conn, conn_bytes) {
            if let Some((_, before)) = self.seen_bytes.filter(|(id, _)| *id == c.id()) {
                compared = true;
                if bytes != before {
                    self.progress = self.progress.max(now);
                }
            }
            self.seen_bytes = Some((c.id(), bytes));
        }
        let bound = stall_bound(lim);
        let stalled = now.saturating_duration_since(self.progress) >= bound;
        // An established connection seen for the first time gets one more period (its
        // bytes so far are unknown). One still dialing does not: until its handshake it
        // cannot have made progress, and a peer whose connections keep failing before
        // their handshake would put the verdict off for ever.
        if !stalled || (self.attached && self.conn.is_some() && !compared) {
            self.arm_stall(lim, now, out);
            return;
        }
        let err = Error::timeout(format!(
            "{}:{} made no progress for {bound:?} (no handshake, no bytes moved, no ACK): \
             the peer is unreachable, stalled or too slow for the timeout",
            self.key.0, self.key.1
        ));
        for p in self.user.drain(..) {
            out.push(Action::send(p, Err(err.clone())));
        }
        // A replaced connection whose writer still holds messages ends too: they fail
        // when its writer reports.
        for (c, _) in &self.holders {
            if !self.is_current(c.id()) {
                out.push(Action::Shutdown(c.clone(), err.clone()));
            }
        }
        if let Some(c) = &self.conn {
            out.push(Action::Shutdown(c.clone(), err));
        } else if let Some(w) = self.wait_ack.take() {
            // Its connection is gone and the writer's report will find nothing: it fails
            // now, unless its ACK came.
            if let Some(p) = w.pending {
                out.push(Action::send(p, if w.acked { Ok(()) } else { Err(err) }));
            }
        }
        // The verdict is given: what is queued from now on gets a whole bound. A message
        // still awaiting its ACK (on a connection that ended cleanly, or that the shutdown
        // above ends) keeps the remote busy, so the check stays armed for the sends
        // queued behind it: `wake` arms it only on a quiet remote.
        self.progress = now;
        if !self.quiet() {
            self.arm_stall(lim, now, out);
        }
    }

    /// For observers: (queued, awaiting an ACK, current connection, last use).
    pub(crate) fn observe(&self) -> (usize, usize, Option<C>, Instant) {
        (
            self.user.len(),
            usize::from(self.wait_ack.is_some()),
            self.conn.clone(),
            self.timestamp,
        )
    }

    /// Whether garbage collection may remove this remote at `now`: unused for longer than
    /// the reuse time, nothing queued, being written, awaiting an ACK or to be
    /// acknowledged, not dialing, not debouncing a reconnect, and its connections idle
    /// that long too (`conn_idle`: the least idle of its established connections, from
    /// [`super::activity::Activity::idle_for`], current or not; `None` when there is none,
    /// which keeps a remote that has a current connection).
    pub(crate) fn collectable(
        &self,
        lim: &Limits,
        now: Instant,
        conn_idle: Option<Duration>,
    ) -> bool {
        let r = lim.reuse_time;
        !self.removed
            && !self.blocked
            && self.quiet()
            && self.control.is_empty()
            && now.saturating_duration_since(self.timestamp) > r
            && match self.conn {
                // Connections that are not the current one (the peer's own, or one whose
                // writer failed) count too: one moving bytes keeps the remote.
                None => conn_idle.map_or(true, |d| d > r),
                Some(_) => self.attached && conn_idle.is_some_and(|d| d > r),
            }
    }

    /// Garbage collection: the remote is removed, gracefully, if it is
    /// [`collectable`](RemoteCore::collectable). True if it was.
    pub(crate) fn collect(
        &mut self,
        lim: &Limits,
        now: Instant,
        conn_idle: Option<Duration>,
        out: &mut Actions<C>,
    ) -> bool {
        let collect = self.collectable(lim, now, conn_idle);
        if collect {
            self.remove(true, out);
        }
        collect
    }

    /// Marks the remote removed and fails everything it holds with `Shutdown`; its current
    /// connection is retired (garbage collection, `graceful`) or shut down (close). Its
    /// other connections are the caller's.
    pub(crate) fn remove(&mut self, graceful: bool, out: &mut Actions<C>) {
        self.removed = true;
        for p in self.user.drain(..) {
            out.push(Action::send(p, Err(Error::Shutdown)));
        }
        for c in self.control.drain(..) {
            if let Control::Ack(r) = c {
                out.push(Action::Release(r));
            }
        }
        // An acknowledged message still with the writer stays: the writer's report
        // completes it as delivered.
        if self.wait_ack.as_ref().is_some_and(|w| !w.acked) {
            if let Some(p) = self.wait_ack.take().and_then(|w| w.pending) {
                out.push(Action::send(p, Err(Error::Shutdown)));
            }
        }
        if let Some(c) = self.conn.take() {
            out.push(if graceful {
                Action::Retire(c)
            } else {
                Action::Shutdown(c, Error::Shutdown)
            });
        }
    }

    /// The identity of the message awaiting its ACK (tests).
    #[cfg(test)]
    pub(crate) fn awaiting(&self) -> Option<Identity> {
        self.wait_ack.as_ref().map(|w| w.identity)
    }
}

/// Completes the frames [`RemoteCore::written`] left in `frames` (written successfully,
/// nothing more to track): user messages complete with success, ACKs finish their
/// release. The node runs it without any lock held.
///
/// Waiters are woken after the whole run is complete, not as each message is: a sender
/// waiting for the oldest of its sends then wakes to find the run ready, instead of
/// catching up with the writer and sleeping again on the next one.
pub(crate) fn finish_written(frames: &mut Vec<(Frame, u32)>) {
    let mut wakes: smallvec::SmallVec<[crate::completion::Wake<_>; 4]> = Default::default();
    for (frame, _) in frames.drain(..) {
        match frame {
            Frame::User(p) => wakes.extend(p.finish_ok_later()),
            Frame::Ack(r) => r.finish(),
            Frame::Noop => {}
        }
    }
    drop(wakes);
}
