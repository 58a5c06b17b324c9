//! Who owns a connection's write side: a sending thread writing directly, or the writer
//! thread. No I/O and no lock of its own: the connection calls these transitions under its
//! state lock. The loom models in `loom_models.rs` check them as the connection's
//! production code drives them.
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
