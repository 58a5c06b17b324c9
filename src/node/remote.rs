//! One remote (a peer, keyed by its address and advertised port) in the node: the
//! protocol core's [`RemoteCore`] behind this remote's own mutex. The rules live in
//! `proto/remote.rs`; this file only locks, reads the clock, and hands the core the
//! node's way to dial. What must happen outside the lock (completing waiters, dialing,
//! kicking a writer, shutting a connection down) comes back on an [`After`] list that the
//! caller runs once it has unlocked.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::connection::Conn;
use crate::error::Error;
use crate::frame::{Frame, Pending};
use crate::message::{Identity, ReleaseDone};
use crate::proto::key::{key_of, RemoteKey};
use crate::proto::remote::{Action, Actions, Ended, RemoteCore};
use crate::proto::ConnRef;
use crate::sync::{Mutex, MutexGuard};

pub(crate) use crate::proto::remote::{finish_written, Enqueued, Limits, Timer};

/// Work to do after the remote's lock is released.
pub(crate) type Deferred = Action<Arc<Conn>>;
/// A list of [`Deferred`] actions.
pub(crate) type After = Actions<Arc<Conn>>;

impl ConnRef for Arc<Conn> {
    fn id(&self) -> u64 {
        self.id
    }
    fn close_reason(&self) -> Option<Error> {
        Conn::close_reason(self)
    }
}

/// One peer.
pub(crate) struct Remote {
    pub(crate) key: RemoteKey,
    /// Where to dial (keeps an IPv6 scope id).
    pub(crate) dial_addr: SocketAddr,
    state: Mutex<RemoteCore<Arc<Conn>>>,
}

/// What a dial needs from the node: a new connection for this remote, or why not.
pub(crate) type Dialer<'a> = &'a dyn Fn(&Arc<Remote>) -> Result<Arc<Conn>, Error>;

impl Remote {
    pub(crate) fn new(dial_addr: SocketAddr) -> Remote {
        let key = key_of(&dial_addr);
        Remote {
            key,
            dial_addr,
            state: Mutex::new(RemoteCore::new(key, Instant::now(), crate::rand::u64())),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, RemoteCore<Arc<Conn>>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a user message and gets it moving (see [`RemoteCore::enqueue`]).
    #[inline]
    pub(crate) fn enqueue(
        self: &Arc<Self>,
        lim: &Limits,
        p: &mut Option<Pending>,
        dial: Dialer,
        after: &mut After,
    ) -> Enqueued {
        self.lock()
            .enqueue(lim, Instant::now, p, &mut || dial(self), after)
    }

    /// Queues a batch under one lock (see [`RemoteCore::enqueue_batch`]).
    pub(crate) fn enqueue_batch(
        self: &Arc<Self>,
        lim: &Limits,
        batch: &mut Vec<Pending>,
        dial: Dialer,
        after: &mut After,
    ) -> Result<(), ()> {
        self.lock()
            .enqueue_batch(lim, Instant::now, batch, &mut || dial(self), after)
    }

    /// The connection's handshake arrived (see [`RemoteCore::attach`]).
    pub(crate) fn attach(&self, conn: &Arc<Conn>, after: &mut After) -> bool {
        self.lock().attach(Instant::now(), conn, after)
    }

    /// Whether `conn` is the current connection.
    pub(crate) fn is_current(&self, conn: &Conn) -> bool {
        self.lock().is_current(conn.id)
    }

    /// The next frames to write on `conn` (see [`RemoteCore::take_frames`]).
    pub(crate) fn take_frames(&self, lim: &Limits, conn: &Arc<Conn>, out: &mut Vec<(Frame, u32)>) {
        self.lock().take_frames(lim, conn, out);
    }

    /// The writer finished writing `frames` on `conn` at `now` (see
    /// [`RemoteCore::written`]).
    pub(crate) fn written(
        &self,
        lim: &Limits,
        now: Instant,
        conn: &Arc<Conn>,
        frames: &mut Vec<(Frame, u32)>,
        result: Result<(), Error>,
        after: &mut After,
    ) {
        self.lock().written(lim, now, conn, frames, result, after);
    }

    /// An ACK for `identity` arrived.
    pub(crate) fn ack_received(&self, identity: Identity, after: &mut After) {
        let now = Instant::now();
        self.lock().ack_received(now, identity, after);
    }

    /// Received data or NOOP.
    pub(crate) fn touch(&self) {
        let now = Instant::now();
        self.lock().touch(now);
    }

    /// A released message asked for an ACK: queue it.
    /// Hands `done` back when this remote was taken out of the table (its ACK would never go
    /// out here): the caller queues it on the remote now in the table.
    pub(crate) fn queue_ack(
        self: &Arc<Self>,
        done: ReleaseDone,
        dial: Dialer,
        after: &mut After,
    ) -> Result<(), ReleaseDone> {
        let mut core = self.lock();
        if core.is_removed() {
            return Err(done);
        }
        core.queue_ack(done, &mut || dial(self), after);
        Ok(())
    }

    /// `conn` was shut down with `reason` (see [`RemoteCore::conn_closed`]).
    pub(crate) fn conn_closed(
        &self,
        lim: &Limits,
        conn: &Conn,
        reason: &Error,
        in_flight: bool,
        closing: bool,
        after: &mut After,
    ) {
        let ended = Ended {
            conn: conn.id,
            reason,
            in_flight,
            clean: conn.closed_cleanly(),
            closing,
        };
        let now = Instant::now();
        self.lock().conn_closed(lim, now, ended, after);
    }

    /// A timer of this remote fired.
    pub(crate) fn on_timer(
        self: &Arc<Self>,
        lim: &Limits,
        t: Timer,
        dial: Dialer,
        after: &mut After,
    ) {
        let now = Instant::now();
        let mut st = self.lock();
        match t {
            Timer::Debounce(_) => st.unblock(&mut || dial(self), after),
            Timer::AckDeadline(_) => st.ack_deadline(lim, now, after),
            Timer::Stall(_) => {
                let bytes = st.conn().map(|c| c.bytes_moved());
                st.stall_check(lim, now, bytes, after);
            }
        }
    }

    /// For observers: (queued, awaiting an ACK, current connection, last use).
    pub(crate) fn observe(&self) -> (usize, usize, Option<Arc<Conn>>, Instant) {
        self.lock().observe()
    }

    /// Marks the remote removed and fails everything it holds with `Shutdown` (see
    /// [`RemoteCore::remove`]).
    pub(crate) fn remove(&self, graceful: bool, after: &mut After) {
        self.lock().remove(graceful, after);
    }
}

#[cfg(test)]
mod tests {
    //! The transitions above on their own: no node, no threads; the connection is a
    //! socket that is never connected, its owner does nothing.
    use super::*;
    use crate::completion::{lent_pair, Completion};
    use crate::connection::testing::{settings, NoOwner};
    use crate::frame::SendResult;
    use crate::message::Message;
    use std::time::Duration;

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
        let (completion, lent) = lent_pair(Ok(Message::to(conn.peer, data)));
        let mut p = Some(Pending::lent(lent));
        let mut after = After::default();
        let got = remote.enqueue(&lim(), &mut p, dial, &mut after);
        assert_eq!(got, Enqueued::Queued, "queued on an open remote");
        (completion, after)
    }

    /// A remote whose current connection is `conn` (dialed, never connected), and one
    /// synchronous message taken by the writer: it awaits its ACK.
    fn written_but_unreported() -> Fixture {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        let conn = Arc::new(Conn::dial(1, addr, false, settings(true), Arc::new(NoOwner)).unwrap());
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
        conn: &Arc<Conn>,
        mut frames: Vec<(Frame, u32)>,
        result: Result<(), Error>,
        completion: Completion<SendResult>,
    ) -> Result<(), Error> {
        let mut after = After::default();
        remote.written(
            &lim(),
            Instant::now(),
            conn,
            &mut frames,
            result,
            &mut after,
        );
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
    /// lost by tests/integration/deadlock.rs under load: the send failed with "peer closed the
    /// connection" although its ACK had arrived.)
    #[test]
    fn an_acknowledged_message_is_delivered_whatever_happens_to_its_connection_after() {
        for (writer_result, also_removed) in [
            (Ok(()), false),
            (Err(Error::protocol("peer closed the connection")), false),
            (Ok(()), true),
        ] {
            let (remote, conn, completion, frames) = written_but_unreported();
            let mut after = After::default();
            remote.ack_received(ack_of(&frames), &mut after);
            assert!(
                after.0.is_empty(),
                "nothing completes before the writer reports"
            );
            let reason = Error::protocol("peer closed the connection");
            remote.conn_closed(&lim(), &conn, &reason, false, false, &mut after);
            if also_removed {
                remote.remove(false, &mut after);
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
                Deferred::Queued => "queued",
                Deferred::Release(..) => "release",
                Deferred::Dial(..) => "dial",
                Deferred::Shutdown(..) => "shutdown",
                Deferred::Retire(..) => "retire",
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
        remote.written(
            &lim(),
            Instant::now(),
            &conn,
            &mut frames,
            Ok(()),
            &mut after,
        );
        assert_eq!(kinds(&after), ["timer"], "written: the ACK deadline only");
        let (_next, after) = queue(&remote, &conn, b"y");
        assert_eq!(kinds(&after), Vec::<&str>::new(), "queued behind the ACK");
        assert!(
            frames.is_empty(),
            "written took the message to await its ACK"
        );
        let identity = remote.lock().awaiting().expect("awaits its ACK");
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

    /// Asynchronous: a streaming sender kicks the connection once, not once per message:
    /// until its writer takes frames, a kick is under way and covers what is queued after
    /// it. Once the writer has looked, the next message kicks again (a kick taken for
    /// pending after it was answered would leave messages waiting forever: the simulator's
    /// mutant `kick-lost`).
    #[test]
    fn a_stream_kicks_once_until_the_writer_takes_frames() {
        let lim = Limits {
            synchronous: false,
            ..lim()
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        let conn =
            Arc::new(Conn::dial(1, addr, false, settings(false), Arc::new(NoOwner)).unwrap());
        let remote = Arc::new(Remote::new(addr));
        let dial: Dialer = &|_| Ok(conn.clone());
        let mut completions = Vec::new();
        let mut enqueue = |data: &[u8]| {
            let (completion, lent) = lent_pair(Ok(Message::to(addr, data)));
            completions.push(completion);
            let mut p = Some(Pending::lent(lent));
            let mut after = After::default();
            let got = remote.enqueue(&lim, &mut p, dial, &mut after);
            assert_eq!(got, Enqueued::Queued, "queued on an open remote");
            let kicks: Vec<_> = kinds(&after)
                .into_iter()
                .filter(|k| *k != "timer")
                .collect();
            kicks
        };
        assert_eq!(enqueue(b"a"), ["dial"], "the first message dials");
        assert_eq!(enqueue(b"b"), ["kick"], "the connection exists: kicked");
        for m in [b"c", b"d", b"e"] {
            assert_eq!(enqueue(m), ["queued"], "kicked already: no kick for {m:?}");
        }
        let mut frames = Vec::new();
        remote.take_frames(&lim, &conn, &mut frames);
        assert_eq!(frames.len(), 5, "the writer takes everything queued");
        assert_eq!(
            enqueue(b"f"),
            ["kick"],
            "after the writer looked, a new message kicks"
        );
        assert_eq!(enqueue(b"g"), ["queued"], "and the next does not");
        let mut after = After::default();
        let reason = Error::protocol("peer closed the connection");
        remote.conn_closed(&lim, &conn, &reason, false, false, &mut after);
        drop(after);
        frames.clear();
        // A new connection is not covered by the old one's kick.
        let conn2 =
            Arc::new(Conn::dial(2, addr, false, settings(false), Arc::new(NoOwner)).unwrap());
        let mut after = After::default();
        assert!(remote.attach(&conn2, &mut after), "attached");
        assert_eq!(kinds(&after), ["kick"], "attaching kicks");
        drop(after);
        let mut after = After::default();
        let mut p = Some(Pending::lent(lent_pair(Ok(Message::to(addr, b"h"))).1));
        remote.enqueue(&lim, &mut p, dial, &mut after);
        assert_eq!(
            kinds(&after),
            ["kick"],
            "the new connection's first message kicks it"
        );
    }

    /// Without an ACK, a connection that closes fails the message the writer reports.
    #[test]
    fn an_unacknowledged_message_fails_with_its_connection() {
        let (remote, conn, completion, frames) = written_but_unreported();
        let mut after = After::default();
        let reason = Error::protocol("peer closed the connection");
        remote.conn_closed(&lim(), &conn, &reason, false, false, &mut after);
        run(after);
        let outcome = report(&remote, &conn, frames, Ok(()), completion);
        assert!(
            outcome.is_err(),
            "a message without its ACK was reported delivered"
        );
    }
}
