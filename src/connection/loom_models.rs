//! Loom models (`scripts/loom.sh`) of a connection's write side, run on the production
//! code: [`Conn::kick`] and `writer::direct_write` on the sending threads, `writer::run`
//! on the writer thread the connection starts through its owner when it needs one,
//! [`Conn::shutdown`] from another thread. Only the socket and the owner are stand-ins:
//! an in-memory socket that is full once (the first direct write hands its batch to the
//! writer thread) and fails after shutdown, and an owner whose queue holds frame numbers
//! and which records what was written or failed. The writer's linger runs out when a
//! model's clock thread says so (`Conn::linger_elapsed`).
//!
//! Checked in every interleaving: one writer at a time on the socket; every frame a
//! writer took is reported exactly once (written or failed); without a close every frame
//! is written, each sender's in order, and none is left queued with nobody to write it
//! (loom reports a deadlock when the model waits for a frame nobody will write); after
//! the close every thread of the connection has ended and the owner heard `ended` once.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::sync::Arc;

use loom::thread;

use super::{Conn, Owner, Socket};
use crate::error::Error;
use crate::frame::Frame;
use crate::message::{Identity, Message, ReleaseDone};
use crate::sync::{AtomicBool, AtomicUsize, Condvar, Mutex, Ordering};

/// The in-memory socket.
struct Sock {
    /// Threads inside a send or write now: never more than one.
    inside: AtomicUsize,
    /// The next non-blocking send finds the socket full (once).
    full_once: AtomicBool,
    shut: AtomicBool,
}

impl Sock {
    fn enter(&self) -> io::Result<()> {
        let before = self.inside.fetch_add(1, Ordering::SeqCst);
        assert_eq!(before, 0, "two threads write to the socket at once");
        if self.shut.load(Ordering::SeqCst) {
            self.inside.fetch_sub(1, Ordering::SeqCst);
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        Ok(())
    }

    fn leave(&self, n: usize) -> io::Result<usize> {
        self.inside.fetch_sub(1, Ordering::SeqCst);
        Ok(n)
    }
}

impl Socket for Sock {
    fn send_vectored(&self, bufs: &[IoSlice], blocking: bool) -> io::Result<usize> {
        self.enter()?;
        if !blocking && self.full_once.swap(false, Ordering::SeqCst) {
            self.inside.fetch_sub(1, Ordering::SeqCst);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.leave(bufs.iter().map(|b| b.len()).sum())
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        self.enter()?;
        self.leave(buf.len())
    }

    fn shutdown(&self, _how: Shutdown) -> io::Result<()> {
        self.shut.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn peer_progress(&self) -> Option<u64> {
        None
    }
}

/// What the owner saw.
#[derive(Default)]
struct Seen {
    /// Frames not yet taken by a writer.
    queue: VecDeque<u32>,
    written: Vec<u32>,
    failed: Vec<u32>,
    closed: usize,
    ended: usize,
    threads: Vec<thread::JoinHandle<()>>,
}

#[derive(Default)]
struct ModelOwner {
    seen: Mutex<Seen>,
    /// Notified when frames were written.
    progress: Condvar,
}

impl ModelOwner {
    fn seen(&self) -> crate::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap()
    }
}

impl Owner<Sock> for ModelOwner {
    fn spawn(
        &self,
        _conn: &Arc<Conn<Sock>>,
        _name: String,
        _stack: usize,
        f: Box<dyn FnOnce() + Send + 'static>,
    ) -> io::Result<()> {
        let t = thread::spawn(f);
        self.seen().threads.push(t);
        Ok(())
    }

    fn connected(&self, _conn: &Arc<Conn<Sock>>) -> Result<(), Error> {
        Ok(())
    }

    fn take_frames(&self, _conn: &Arc<Conn<Sock>>, out: &mut Vec<(Frame, u32)>) {
        out.extend(self.seen().queue.drain(..).map(|n| (Frame::Noop, n)));
    }

    fn written(
        &self,
        _conn: &Arc<Conn<Sock>>,
        frames: &mut Vec<(Frame, u32)>,
        result: Result<(), Error>,
        _now: std::time::Instant,
    ) {
        let mut seen = self.seen();
        let numbers = frames.drain(..).map(|(_, n)| n);
        match result {
            Ok(()) => seen.written.extend(numbers),
            Err(_) => seen.failed.extend(numbers),
        }
        drop(seen);
        self.progress.notify_all();
    }

    fn ack(&self, _conn: &Arc<Conn<Sock>>, _identity: Identity) {}

    fn activity(&self, _conn: &Arc<Conn<Sock>>) {}

    fn deliver(&self, _conn: &Arc<Conn<Sock>>, _msg: Message) {}

    fn ack_due(&self, _conn: &Arc<Conn<Sock>>, done: ReleaseDone) {
        done.finish();
    }

    fn closed(&self, _conn: &Arc<Conn<Sock>>, _reason: &Error, _in_flight: bool) {
        self.seen().closed += 1;
    }

    fn ended(&self, _conn: &Arc<Conn<Sock>>) {
        self.seen().ended += 1;
    }
}

/// A set-up connection over the in-memory socket (full once if `full_once`), and its owner.
fn connection(full_once: bool) -> (Arc<Conn<Sock>>, Arc<ModelOwner>) {
    let owner = Arc::new(ModelOwner::default());
    let settings = super::testing::settings(false);
    let sock = Sock {
        inside: AtomicUsize::new(0),
        full_once: AtomicBool::new(full_once),
        shut: AtomicBool::new(false),
    };
    let addr = "127.0.0.1:1".parse().expect("an address");
    let conn = Arc::new(Conn::new(
        1,
        sock,
        addr,
        true,
        false,
        settings,
        owner.clone(),
    ));
    conn.set_up_for_model();
    (conn, owner)
}

/// A sender queues frame `n` on the owner and kicks the connection (`Conn::kick`).
fn send(conn: &Arc<Conn<Sock>>, owner: &ModelOwner, n: u32) {
    owner.seen().queue.push_back(n);
    conn.kick();
}

/// Waits until `count` frames were written: loom reports a deadlock if a frame is left
/// queued with nobody to write it (every thread then waits).
fn wait_written(owner: &ModelOwner, count: usize) {
    let mut seen = owner.seen();
    while seen.written.len() < count {
        seen = owner.progress.wait(seen).unwrap();
    }
}

/// Ends the connection's first thread (the reader, played by the model) after a close,
/// and joins every thread the connection started.
fn end_and_join(conn: &Arc<Conn<Sock>>, owner: &ModelOwner) {
    conn.abandon();
    loop {
        let t = owner.seen().threads.pop();
        match t {
            Some(t) => t.join().expect("a connection thread"),
            None => break,
        }
    }
}

/// Closes the connection as its first thread does when it ends, and joins every thread
/// the connection started; the owner heard `closed` and `ended` once each.
fn close_and_join(conn: &Arc<Conn<Sock>>, owner: &ModelOwner) {
    conn.shutdown(Error::Shutdown, false);
    end_and_join(conn, owner);
    let seen = owner.seen();
    assert_eq!(seen.closed, 1, "the owner hears of the close once");
    assert_eq!(
        seen.ended, 1,
        "the owner hears `ended` once, after the last thread"
    );
}

/// Runs the model in every interleaving up to `LOOM_MAX_PREEMPTIONS` preemptions (3
/// unless set); prints how many it ran.
fn check(name: &str, f: impl Fn() + Send + Sync + 'static) {
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = runs.clone();
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound.get_or_insert(3);
    builder.check(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f()
    });
    println!(
        "{name}: {} interleavings",
        runs.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// Two senders. The first direct write finds the socket full and hands its batch to the
/// writer thread, which the connection starts then; a send right after a write counts
/// as streaming and is left to the writer thread. Every frame is written exactly once,
/// each sender's in order.
#[test]
fn loom_senders_and_the_writer_thread_they_start_share_the_socket() {
    check("senders and the writer thread", || {
        let (conn, owner) = connection(true);
        let senders: Vec<_> = [[1, 2], [11, 12]]
            .into_iter()
            .map(|frames| {
                let (c, o) = (conn.clone(), owner.clone());
                thread::spawn(move || {
                    for n in frames {
                        send(&c, &o, n);
                    }
                })
            })
            .collect();
        for s in senders {
            s.join().expect("a sender");
        }
        wait_written(&owner, 4);
        let wire = owner.seen().written.clone();
        let mut sorted = wire.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![1, 2, 11, 12], "each frame once: {wire:?}");
        let pos = |n| wire.iter().position(|&x| x == n).expect("written");
        assert!(
            pos(1) < pos(2) && pos(11) < pos(12),
            "a sender's frames in order: {wire:?}"
        );
        close_and_join(&conn, &owner);
        assert!(owner.seen().failed.is_empty(), "nothing failed");
    });
}

/// The writer thread's linger runs out (the model's clock) while a sender sends: it ends
/// only when idle, and a frame queued as it ends is written, by the sender itself or by
/// a writer thread started again.
#[test]
fn loom_the_writer_threads_idle_exit_races_a_send() {
    check("idle exit racing a send", || {
        let (conn, owner) = connection(false);
        // A direct write, then one that streams: the writer thread is started for it.
        send(&conn, &owner, 1);
        send(&conn, &owner, 2);
        let clock = {
            let c = conn.clone();
            thread::spawn(move || {
                c.linger_elapsed.store(true, Ordering::SeqCst);
                c.writer_cv.notify_all();
            })
        };
        let sender = {
            let (c, o) = (conn.clone(), owner.clone());
            thread::spawn(move || send(&c, &o, 3))
        };
        clock.join().expect("the clock");
        sender.join().expect("the sender");
        wait_written(&owner, 3);
        assert_eq!(owner.seen().written, vec![1, 2, 3], "in order, once each");
        close_and_join(&conn, &owner);
    });
}

/// The connection is shut down while a sender sends and the writer thread finishes a
/// handoff: every frame a writer took is reported once, written or failed, and frames no
/// writer took stay queued for the owner (who moves them to the next connection); every
/// thread ends.
#[test]
fn loom_a_close_races_a_send_and_the_writer_thread() {
    check("close racing a send", || {
        let (conn, owner) = connection(true);
        // The socket is full: frame 1 goes to a writer thread as a handoff.
        send(&conn, &owner, 1);
        let sender = {
            let (c, o) = (conn.clone(), owner.clone());
            thread::spawn(move || {
                send(&c, &o, 2);
                send(&c, &o, 3);
            })
        };
        conn.shutdown(Error::Shutdown, false);
        sender.join().expect("the sender");
        end_and_join(&conn, &owner);
        let seen = owner.seen();
        let mut all: Vec<u32> = seen
            .written
            .iter()
            .chain(&seen.failed)
            .chain(&seen.queue)
            .copied()
            .collect();
        all.sort_unstable();
        assert_eq!(
            all,
            vec![1, 2, 3],
            "each frame written, failed or still queued, once: written {:?}, failed {:?}, queued {:?}",
            seen.written,
            seen.failed,
            seen.queue
        );
        assert_eq!(seen.closed, 1, "the owner hears of the close once");
        assert_eq!(seen.ended, 1, "the owner hears `ended` once");
    });
}
