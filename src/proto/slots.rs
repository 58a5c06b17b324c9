//! A connection's receive slots and its park: which received message may go to the
//! application now, which waits (parked, in order) for a slot, and when the reader must stop
//! reading. No I/O: the connection supplies what delivering means. Built on
//! [`crate::sync`], so the loom models below (`scripts/loom.sh`) check this code itself.
//!
//! The rules:
//! * at most `max` messages hold a slot at once; a release frees one, from any thread;
//! * a message that finds no free slot — or finds earlier messages still parked — is parked
//!   (up to `limit` bytes of them), so the reader goes on reading the ACK and NOOP frames
//!   behind it;
//! * parked messages are delivered in arrival order, each exactly once, by whichever thread
//!   frees a slot or parks (one thread at a time);
//! * the reader sleeps only when the message can neither have a slot nor be parked, and a
//!   release or a delivery from the park always wakes it;
//! * after [`Slots::close`] nothing more is admitted, but what was parked is still
//!   delivered, in order, as slots free up: a message this node has read reaches the
//!   application even when its connection ends before (a sender that streams and then
//!   closes loses nothing).

use std::collections::VecDeque;

use crate::sync::{Condvar, Mutex, MutexGuard};

/// How a received data frame is taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// A slot was taken for it: deliver it now.
    Direct,
    /// Park it (no slot yet, or earlier messages are parked); it costs this much.
    Park(usize),
}

/// The connection was closed while admitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

struct State<M> {
    used: usize,
    /// The reader sleeps in [`Slots::admit`] (only then is a notification needed: it is a
    /// system call even with nobody waiting).
    reader_waiting: bool,
    /// Messages waiting for a slot, in order: (message, REQ_ACK flag, cost).
    parked: VecDeque<(M, bool, usize)>,
    parked_bytes: usize,
    /// A thread is delivering parked messages.
    draining: bool,
    closing: bool,
}

/// The slots and park of one connection.
pub(crate) struct Slots<M> {
    state: Mutex<State<M>>,
    reader_cv: Condvar,
    max: usize,
    limit: usize,
}

impl<M> Slots<M> {
    /// `max` slots; parked messages may cost up to `limit` in all.
    pub(crate) fn new(max: usize, limit: usize) -> Slots<M> {
        Slots {
            state: Mutex::new(State {
                used: 0,
                reader_waiting: false,
                parked: VecDeque::new(),
                parked_bytes: 0,
                draining: false,
                closing: false,
            }),
            reader_cv: Condvar::new(),
            max,
            limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<M>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Messages holding a slot now.
    pub(crate) fn used(&self) -> usize {
        self.lock().used
    }

    /// Received messages hold slots or wait in the park: the connection is held back by
    /// the application, not idle.
    pub(crate) fn held(&self) -> bool {
        let st = self.lock();
        st.used > 0 || !st.parked.is_empty()
    }

    /// The reader's decision for a message costing `cost`: a slot now, or the park. Waits
    /// only when neither is possible; `before_wait` runs (without the lock) just before it
    /// would, and if it changed nothing the reader sleeps until a slot is released, the park
    /// has room, or the connection closes; `after_wait` runs after each sleep.
    pub(crate) fn admit(
        &self,
        cost: usize,
        mut before_wait: impl FnMut(),
        mut after_wait: impl FnMut(),
    ) -> Result<Admit, Closed> {
        let mut st = self.lock();
        loop {
            if let Some(decided) = self.decide(&mut st, cost) {
                return decided;
            }
            drop(st);
            before_wait();
            st = self.lock();
            let queued = !st.parked.is_empty() || st.draining;
            if st.closing
                || (!queued && st.used < self.max)
                || st.parked_bytes.saturating_add(cost) <= self.limit
            {
                continue;
            }
            st.reader_waiting = true;
            st = self.reader_cv.wait(st).unwrap_or_else(|e| e.into_inner());
            st.reader_waiting = false;
            after_wait();
        }
    }

    /// The reader's decision for a message costing `cost` without waiting: `None` when it
    /// can neither have a slot nor be parked (the reader must stop reading until a release).
    #[cfg(test)]
    pub(crate) fn try_admit(&self, cost: usize) -> Option<Result<Admit, Closed>> {
        self.decide(&mut self.lock(), cost)
    }

    fn decide(&self, st: &mut State<M>, cost: usize) -> Option<Result<Admit, Closed>> {
        if st.closing {
            return Some(Err(Closed));
        }
        let queued = !st.parked.is_empty() || st.draining;
        if !queued && st.used < self.max {
            st.used += 1;
            return Some(Ok(Admit::Direct));
        }
        if st.parked_bytes.saturating_add(cost) <= self.limit {
            return Some(Ok(Admit::Park(cost)));
        }
        None
    }

    /// Parks `msg` (which [`Slots::admit`] said fits) and delivers what can be delivered.
    /// Also on a connection closed meanwhile: the message was read, so it is delivered.
    pub(crate) fn park(&self, msg: M, req_ack: bool, cost: usize, deliver: impl FnMut(M, bool)) {
        {
            let mut st = self.lock();
            st.parked.push_back((msg, req_ack, cost));
            st.parked_bytes += cost;
        }
        self.drain(deliver);
    }

    /// A slot is free again: wakes a reader waiting for one. Returns (the connection is
    /// open, messages are parked — the caller then calls [`Slots::drain`]).
    pub(crate) fn freed(&self) -> (bool, bool) {
        let mut st = self.lock();
        st.used = st.used.saturating_sub(1);
        if st.reader_waiting {
            self.reader_cv.notify_all();
        }
        (!st.closing, !st.parked.is_empty())
    }

    /// Delivers parked messages while slots are free, in order, one thread at a time: a
    /// thread that finds another draining leaves it to that one, which sees its slot.
    /// `deliver` runs without the lock, the slot already taken for the message.
    pub(crate) fn drain(&self, mut deliver: impl FnMut(M, bool)) {
        {
            let mut st = self.lock();
            if st.draining || st.parked.is_empty() {
                return;
            }
            st.draining = true;
        }
        loop {
            let (msg, req_ack) = {
                let mut st = self.lock();
                let ready = st.used < self.max;
                match if ready { st.parked.pop_front() } else { None } {
                    Some((msg, req_ack, cost)) => {
                        st.parked_bytes -= cost;
                        st.used += 1;
                        if st.reader_waiting {
                            // Room in the park again.
                            self.reader_cv.notify_all();
                        }
                        (msg, req_ack)
                    }
                    None => {
                        // Decided under the same lock a release frees its slot under: a
                        // release that found us draining is seen here.
                        st.draining = false;
                        return;
                    }
                }
            };
            deliver(msg, req_ack);
        }
    }

    /// The connection closes: nothing more is admitted and the reader wakes. Parked
    /// messages stay and are delivered as slots free up (releases call [`Slots::drain`]).
    pub(crate) fn close(&self) {
        self.lock().closing = true;
        self.reader_cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_connection_parks_in_order_and_delivers_on_release() {
        let s = Slots::new(1, 100);
        assert_eq!(s.admit(10, || {}, || {}), Ok(Admit::Direct));
        let mut out = Vec::new();
        for i in 0..3 {
            assert_eq!(s.admit(10, || {}, || {}), Ok(Admit::Park(10)));
            s.park(i, i == 1, 10, |m, a| out.push((m, a)));
        }
        assert!(out.is_empty(), "no slot free: {out:?}");
        for _ in 0..3 {
            let (open, parked) = s.freed();
            assert!(open && parked);
            s.drain(|m, a| out.push((m, a)));
        }
        assert_eq!(out, vec![(0, false), (1, true), (2, false)]);
        assert_eq!(s.used(), 1);
        s.close();
        assert_eq!(s.admit(1, || {}, || {}), Err(Closed));
    }
}

/// Loom models (`scripts/loom.sh`): a reader admitting and parking, releases from other
/// threads, and close, in every interleaving up to the preemption bound.
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use crate::sync::{Arc, AtomicUsize, Ordering};
    use loom::thread;

    /// Delivered messages, in delivery order, and how many slots are still to release.
    type Log = Arc<Mutex<Vec<usize>>>;

    /// The reader: admits `n` messages of `cost` each, delivering or parking them.
    fn reader(s: &Arc<Slots<usize>>, log: &Log, n: usize, cost: usize) -> Result<(), Closed> {
        for i in 0..n {
            let deliver = |m: usize, _| log.lock().unwrap().push(m);
            match s.admit(cost, || {}, || {})? {
                Admit::Direct => deliver(i, false),
                Admit::Park(c) => s.park(i, false, c, deliver),
            }
        }
        Ok(())
    }

    /// The application: releases each delivered message once, from this thread, until
    /// `n` were released (or the connection closed and nothing more will come).
    fn releaser(s: &Arc<Slots<usize>>, log: &Log, n: usize) {
        let mut seen = 0;
        while seen < n {
            let got = log.lock().unwrap().len();
            if got > seen {
                seen += 1;
                let (_, parked) = s.freed();
                if parked {
                    s.drain(|m, _| log.lock().unwrap().push(m));
                }
            } else if s.lock().closing {
                return;
            } else {
                thread::yield_now();
            }
        }
    }

    /// Three messages through one slot, released one by one on another thread, with a park
    /// that holds `limit` bytes (each message costs 10); every message must arrive exactly
    /// once and in order, and every slot come back.
    fn three_through_one_slot(limit: usize) {
        loom::model(move || {
            let s = Arc::new(Slots::new(1, limit));
            let log: Log = Arc::new(Mutex::new(Vec::new()));
            let (s2, l2) = (s.clone(), log.clone());
            let app = thread::spawn(move || releaser(&s2, &l2, 3));
            reader(&s, &log, 3, 10).unwrap();
            app.join().unwrap();
            assert_eq!(*log.lock().unwrap(), vec![0, 1, 2]);
            assert_eq!(s.used(), 0);
        });
    }

    /// Room to park everything: the reader never waits.
    #[test]
    fn loom_parked_messages_are_delivered_once_in_order() {
        three_through_one_slot(1000);
    }

    /// Room to park one message: the reader must sleep for the third until a release makes
    /// room. It never sleeps forever (loom reports a deadlock if every thread waits).
    #[test]
    fn loom_the_reader_waits_for_room_and_is_always_woken() {
        three_through_one_slot(10);
    }

    /// Two threads release at once (one drains, the other finds it draining): the two
    /// parked messages are delivered exactly once each, in order.
    #[test]
    fn loom_two_releases_race_to_drain() {
        loom::model(|| {
            let s = Arc::new(Slots::new(2, 1000));
            let log: Log = Arc::new(Mutex::new(Vec::new()));
            let deliver = |m: usize| log.lock().unwrap().push(m);
            for i in 0..2 {
                assert_eq!(s.admit(1, || {}, || {}), Ok(Admit::Direct));
                deliver(i);
            }
            s.park(2, false, 1, |m, _| deliver(m));
            s.park(3, false, 1, |m, _| deliver(m));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let (s, log) = (s.clone(), log.clone());
                    thread::spawn(move || {
                        if s.freed().1 {
                            s.drain(|m, _| log.lock().unwrap().push(m));
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(*log.lock().unwrap(), vec![0, 1, 2, 3]);
            assert_eq!(s.used(), 2);
        });
    }

    /// A message that counts its drops.
    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// close() races a reader that is parking and sleeping and a release that drains: every
    /// thread ends, and each message is delivered and dropped exactly once (a message parked
    /// when the connection closed is delivered by a later release).
    #[test]
    fn loom_close_races_admit_park_and_release() {
        loom::model(|| {
            let drops = Arc::new(AtomicUsize::new(0));
            let s: Arc<Slots<Counted>> = Arc::new(Slots::new(1, 10));
            let held: Arc<Mutex<Vec<Counted>>> = Arc::new(Mutex::new(Vec::new()));
            // One message holds the slot; the application releases it on its thread.
            assert_eq!(s.admit(10, || {}, || {}), Ok(Admit::Direct));
            held.lock().unwrap().push(Counted(drops.clone()));
            let (s2, h2) = (s.clone(), held.clone());
            let app = thread::spawn(move || {
                let m = h2.lock().unwrap().pop();
                drop(m);
                if s2.freed().1 {
                    s2.drain(|m, _| h2.lock().unwrap().push(m));
                }
            });
            let s3 = s.clone();
            let closer = thread::spawn(move || s3.close());
            // The reader: two more messages; the second may have to wait, until close.
            let (s4, h4, d4) = (s.clone(), held.clone(), drops.clone());
            for _ in 0..2 {
                let m = Counted(d4.clone());
                match s4.admit(10, || {}, || {}) {
                    Ok(Admit::Direct) => h4.lock().unwrap().push(m),
                    Ok(Admit::Park(c)) => s4.park(m, false, c, |m, _| h4.lock().unwrap().push(m)),
                    Err(Closed) => drop(m),
                }
            }
            app.join().unwrap();
            closer.join().unwrap();
            // The application releases what it still holds; a release delivers what waits
            // in the park (closing keeps parked messages: they were read).
            loop {
                let Some(m) = held.lock().unwrap().pop() else {
                    break;
                };
                drop(m);
                if s.freed().1 {
                    s.drain(|m, _| held.lock().unwrap().push(m));
                }
            }
            assert_eq!(
                drops.load(Ordering::SeqCst),
                3,
                "each message dropped exactly once"
            );
            assert_eq!(s.admit(1, || {}, || {}), Err(Closed));
        });
    }
}
