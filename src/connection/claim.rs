//! Who owns a connection's write side: a sending thread writing directly, or the writer
//! thread. No I/O and no lock of its own: the connection calls these transitions under its
//! state lock, and the loom models below run them under a loom mutex.
//!
//! The rules, which the models check:
//! * one writer at a time: a direct write claims the side only when nobody holds it and no
//!   handoff waits; the writer thread takes it the same way;
//! * no kick is lost: frames queued while someone writes set `kick_pending`, and whoever
//!   gives the side back looks again (`end` says so) or leaves it to the writer thread;
//! * nothing is written twice: a direct write that fills the socket hands its unwritten rest
//!   to the writer thread, which finishes it before anything else.

/// The write side's state.
pub(crate) struct WriteState<H> {
    /// A thread has frames out of the owner's queues and is writing them.
    writing: bool,
    /// Frames were queued while someone was writing: the writer looks again.
    kick_pending: bool,
    /// A direct writer filled the socket: what the writer thread must finish first.
    handoff: Option<H>,
    /// The writer thread is blocked on its condition variable: only then does recording
    /// work for it need a wake-up (a system call for the waker).
    asleep: bool,
}

/// The writer thread's next step.
#[derive(Debug)]
pub(crate) enum Step<H> {
    /// Finish this handoff (the side is now the writer thread's).
    Finish(H),
    /// Take frames and write them (the side is now the writer thread's).
    Write,
    /// Nothing to do now: wait to be woken.
    Wait,
}

impl<H> WriteState<H> {
    pub(crate) const fn new() -> WriteState<H> {
        WriteState {
            writing: false,
            kick_pending: false,
            handoff: None,
            asleep: false,
        }
    }

    /// The writer thread is about to wait (`true`, after [`WriteState::next`] said
    /// [`Step::Wait`], in the same lock hold) or has woken (`false`).
    pub(crate) fn set_asleep(&mut self, asleep: bool) {
        self.asleep = asleep;
    }

    /// Whoever just recorded work for the writer thread (a deferral or a handoff) must
    /// wake it: it is waiting. When it is not, it looks at the state before it waits again.
    pub(crate) fn needs_wake(&self) -> bool {
        self.asleep
    }

    /// Someone holds the side, or a handoff waits for the writer thread.
    pub(crate) fn busy(&self) -> bool {
        self.writing || self.handoff.is_some()
    }

    /// A direct writer's rest waits for the writer thread.
    pub(crate) fn has_handoff(&self) -> bool {
        self.handoff.is_some()
    }

    /// Frames were queued. True when nobody holds the side (the caller writes them or wakes
    /// the writer); otherwise the holder is told to look again.
    pub(crate) fn kick(&mut self) -> bool {
        if self.busy() {
            self.kick_pending = true;
            false
        } else {
            true
        }
    }

    /// Claims the side for a direct write; `open`: handshaken and not closing.
    pub(crate) fn claim(&mut self, open: bool) -> bool {
        if !open || self.busy() {
            return false;
        }
        self.writing = true;
        self.kick_pending = false;
        true
    }

    /// Gives the side back. True when frames were queued meanwhile and the connection is
    /// `open`: the caller looks again.
    pub(crate) fn end(&mut self, open: bool) -> bool {
        self.writing = false;
        let again = self.kick_pending && open;
        self.kick_pending = false;
        again
    }

    /// The socket is full: the writer thread finishes `rest` (the caller wakes it).
    pub(crate) fn hand_off(&mut self, rest: H) {
        self.handoff = Some(rest);
        self.writing = false;
    }

    /// Frames are (or may be) queued that the writer thread is to write: after a direct
    /// writer's last round, and after each of the writer thread's bounded batches.
    pub(crate) fn defer(&mut self) {
        self.kick_pending = true;
    }

    /// The writer thread's next step; `tls_flush`: a TLS read left ciphertext to write.
    pub(crate) fn next(&mut self, tls_flush: bool) -> Step<H> {
        if let Some(h) = self.handoff.take() {
            self.writing = true;
            return Step::Finish(h);
        }
        if self.writing || !(self.kick_pending || tls_flush) {
            return Step::Wait;
        }
        self.writing = true;
        self.kick_pending = false;
        Step::Write
    }

    /// Nothing to do and nobody writing: an idle writer thread may end.
    pub(crate) fn idle(&self, tls_flush: bool) -> bool {
        !self.busy() && !self.kick_pending && !tls_flush
    }

    /// The connection closes: whether frames were in flight, and the handoff to fail.
    pub(crate) fn close(&mut self) -> (bool, Option<H>) {
        let h = self.handoff.take();
        (self.writing || h.is_some(), h)
    }
}

/// Loom models (`scripts/loom.sh`). The transitions above are the production code; the
/// loops around them mirror `writer::direct_write` (claim, take the queued frames, write
/// them — or, the first time, find the socket full and hand the rest over —, give the side
/// back and look again while `end` says so) and `writer::run` (take the next step, finish
/// or write, look again after each batch, wait when there is nothing), with a shared
/// vector for the socket and a counter for the owner's queue.
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use crate::sync::{Arc, AtomicUsize, Condvar, Mutex, Ordering};
    use loom::thread;

    struct Conn {
        state: Mutex<Model>,
        writer_cv: Condvar,
        /// Set while a thread writes to the "socket": never two at once.
        in_write: AtomicUsize,
    }

    struct Model {
        write: WriteState<Vec<u32>>,
        /// The owner's queue of frames not yet taken by a writer.
        queue: Vec<u32>,
        /// The "socket": frames in the order they were written.
        wire: Vec<u32>,
        closing: bool,
        /// The socket is full once, for the first direct write that meets it.
        full_once: bool,
    }

    impl Conn {
        fn write(&self, frames: &[u32]) {
            assert_eq!(
                self.in_write.fetch_add(1, Ordering::SeqCst),
                0,
                "two writers at once"
            );
            self.state.lock().unwrap().wire.extend_from_slice(frames);
            self.in_write.fetch_sub(1, Ordering::SeqCst);
        }

        /// A sender queues `frame` and kicks (`Conn::kick`, then `direct_write`).
        fn send(&self, frame: u32) {
            let write_now = {
                let mut st = self.state.lock().unwrap();
                st.queue.push(frame);
                st.write.kick()
            };
            if write_now {
                self.direct_write();
            }
        }

        fn direct_write(&self) {
            for _ in 0..2 {
                let frames = {
                    let mut st = self.state.lock().unwrap();
                    let open = !st.closing;
                    if !st.write.claim(open) {
                        return;
                    }
                    std::mem::take(&mut st.queue)
                };
                if frames.is_empty() {
                    let mut st = self.state.lock().unwrap();
                    let open = !st.closing;
                    if st.write.end(open) {
                        continue;
                    }
                    return;
                }
                let full = {
                    let mut st = self.state.lock().unwrap();
                    std::mem::take(&mut st.full_once)
                };
                if full {
                    // Socket full before anything went out: the writer finishes them.
                    let mut st = self.state.lock().unwrap();
                    st.write.hand_off(frames);
                    self.wake(st);
                    return;
                }
                self.write(&frames);
                let mut st = self.state.lock().unwrap();
                let open = !st.closing;
                st.write.end(open);
                // A batch is bounded: look again.
            }
            let mut st = self.state.lock().unwrap();
            st.write.defer();
            self.wake(st);
        }

        /// `Conn::wake_writer`: a wake-up only for a writer thread that waits.
        fn wake(&self, st: crate::sync::MutexGuard<'_, Model>) {
            let wake = st.write.needs_wake();
            drop(st);
            if wake {
                self.writer_cv.notify_all();
            }
        }

        /// The writer thread, until the connection closes.
        fn run(&self) {
            let mut st = self.state.lock().unwrap();
            loop {
                if st.closing {
                    return;
                }
                match st.write.next(false) {
                    Step::Finish(frames) => {
                        drop(st);
                        self.write(&frames);
                    }
                    Step::Write => {
                        let frames = std::mem::take(&mut st.queue);
                        drop(st);
                        if frames.is_empty() {
                            let mut st2 = self.state.lock().unwrap();
                            let open = !st2.closing;
                            if st2.write.end(open) {
                                st2.write.defer();
                            }
                            st = st2;
                            continue;
                        }
                        self.write(&frames);
                    }
                    Step::Wait => {
                        st.write.set_asleep(true);
                        st = self.writer_cv.wait(st).unwrap();
                        st.write.set_asleep(false);
                        continue;
                    }
                }
                let mut st2 = self.state.lock().unwrap();
                let open = !st2.closing;
                st2.write.end(open);
                st2.write.defer();
                st = st2;
            }
        }
    }

    /// Two senders and the writer thread; the first direct write finds the socket full and
    /// hands over. Every frame reaches the wire exactly once (never two writers at once),
    /// each sender's frames in order, and none waits forever: the main thread waits for the
    /// wire to hold all of them (loom reports a deadlock if a kick was lost).
    #[test]
    fn loom_direct_writes_and_the_writer_thread_share_the_socket() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(2);
        builder.check(|| {
            let conn = Arc::new(Conn {
                state: Mutex::new(Model {
                    write: WriteState::new(),
                    queue: Vec::new(),
                    wire: Vec::new(),
                    closing: false,
                    full_once: true,
                }),
                writer_cv: Condvar::new(),
                in_write: AtomicUsize::new(0),
            });
            let w = conn.clone();
            let writer = thread::spawn(move || w.run());
            let senders: Vec<_> = [[1, 2], [11, 12]]
                .into_iter()
                .map(|frames| {
                    let c = conn.clone();
                    thread::spawn(move || {
                        for f in frames {
                            c.send(f);
                        }
                    })
                })
                .collect();
            for s in senders {
                s.join().unwrap();
            }
            // Whatever is still queued is the writer thread's (or a claimant's) to write.
            loop {
                let mut st = conn.state.lock().unwrap();
                if st.wire.len() == 4 {
                    st.closing = true;
                    break;
                }
                if st.write.idle(false) && !st.queue.is_empty() {
                    panic!(
                        "frames queued, nobody writing and nobody told: {:?}",
                        st.queue
                    );
                }
                drop(st);
                thread::yield_now();
            }
            conn.writer_cv.notify_all();
            writer.join().unwrap();
            let wire = conn.state.lock().unwrap().wire.clone();
            let mut sorted = wire.clone();
            sorted.sort_unstable();
            assert_eq!(
                sorted,
                vec![1, 2, 11, 12],
                "each frame exactly once: {wire:?}"
            );
            let pos = |f| wire.iter().position(|&x| x == f).unwrap();
            assert!(
                pos(1) < pos(2) && pos(11) < pos(12),
                "a sender's frames in order: {wire:?}"
            );
        });
    }
}
