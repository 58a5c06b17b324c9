//! `chirp chaos-node`: one node of the randomized fault test (cli/tests/chaos.rs,
//! scripts/chaos.sh). It serves, and for `--send-for` seconds sends messages to peers
//! picked at random (seeded), each carrying its origin, its number and a checksum of its
//! payload, and prints one line per event so that a checker can account for every message:
//!
//! ```text
//! try NAME SEQ TO            a send was started (message SEQ of node NAME, to TO)
//! ok NAME SEQ                it completed (synchronous: released by the peer; async: written)
//! err NAME SEQ REASON        it failed
//! recv NAME FROM SEQ good|bad   a message arrived (FROM: the sender's NAME), checksum checked
//! ```
//!
//! SIGUSR1 stalls the consumer: what arrives is logged but held, unreleased (slots fill,
//! the node stops reading and acknowledging), until SIGUSR2 releases it all.
//!
//! after `listening on PORT` a line `baseline threads=N fds=N connections=N` (before it
//! sends anything), and on stderr, every second, `status threads=N fds=N connections=N
//! sending=BOOL`.

use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libchirp::{Completion, Config, Message, Node, SendError};

use crate::{Fail, Signals};

/// FNV-1a, 64 bits: enough to see a corrupted payload.
fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// `NAME SEQ CHECKSUM PAYLOAD`.
fn encode(name: &str, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("{name} {seq} {:016x} ", checksum(payload)).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// (origin, seq, checksum good?) of a received message, or None if it is not one of ours.
fn decode(data: &[u8]) -> Option<(String, u64, bool)> {
    let mut parts = data.splitn(4, |&b| b == b' ');
    let name = std::str::from_utf8(parts.next()?).ok()?.to_string();
    let seq = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let sum = u64::from_str_radix(std::str::from_utf8(parts.next()?).ok()?, 16).ok()?;
    let payload = parts.next().unwrap_or(&[]);
    Some((name, seq, checksum(payload) == sum))
}

fn line(s: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

pub(crate) struct Opts {
    pub(crate) name: String,
    pub(crate) peers: Vec<SocketAddr>,
    pub(crate) rate: f64,
    pub(crate) send_for: Duration,
    pub(crate) seed: u64,
}

pub(crate) fn run(config: Config, o: Opts, signals: Signals) -> Result<(), Fail> {
    if o.peers.is_empty() || !o.rate.is_finite() || o.rate <= 0.0 {
        return Err(Fail(
            "chaos-node needs --peers and a positive --rate".into(),
        ));
    }
    let me = o.name.clone();
    let stalled = Arc::new(AtomicBool::new(false));
    let held: Arc<Mutex<Vec<Message>>> = Arc::default();
    consumer_stalls(stalled.clone(), held.clone())?;
    let node = Arc::new(Node::start(config, move |m: Message| {
        let from = m.address().map(|a| a.ip().to_string()).unwrap_or_default();
        match decode(m.data()) {
            Some((origin, seq, good)) => line(format!(
                "recv {me} {origin} {seq} {}",
                if good { "good" } else { "bad" }
            )),
            None => line(format!("recv {me} ? 0 bad from {from}")),
        }
        // Released when dropped, after the line is out: a synchronous sender's send
        // completes only once this node has logged the message. A stalled consumer holds
        // it instead (at most the slots of each connection).
        let mut h = held.lock().unwrap_or_else(|e| e.into_inner());
        if stalled.load(Ordering::Acquire) {
            h.push(m);
        }
    })?);
    let stop = Arc::new(AtomicBool::new(false));
    {
        // Status lines until the process ends: threads and descriptors, for the baseline.
        let node = Arc::downgrade(&node);
        let stop = stop.clone();
        let _ = std::thread::Builder::new()
            .name("chirp-chaos-status".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                while let Some(n) = node.upgrade() {
                    eprintln!(
                        "status threads={} fds={} connections={} sending={}",
                        count("/proc/self/task"),
                        count("/proc/self/fd"),
                        n.connection_count(),
                        !stop.load(Ordering::Relaxed)
                    );
                    drop(n);
                    std::thread::sleep(Duration::from_secs(1)); // a status period, not a wait for an event
                }
            });
    }
    // Listening, and the idle footprint before this node sends anything (a peer may have
    // connected already, except to the first node started).
    crate::announce(&node);
    line(format!(
        "baseline threads={} fds={} connections={}",
        count("/proc/self/task"),
        count("/proc/self/fd"),
        node.connection_count()
    ));
    let mut rng = fastrand_like(o.seed);
    let start = Instant::now();
    let mut seq = 0u64;
    let mut pending: VecDeque<(u64, Completion<Result<Message, SendError>>)> = VecDeque::new();
    let report = |seq: u64, r: Result<Message, SendError>| match r {
        Ok(_) => line(format!("ok {} {seq}", o.name)),
        Err(e) => line(format!("err {} {seq} {}", o.name, e.error())),
    };
    while !node.is_closed() {
        if signals.stop.try_recv().is_ok() {
            node.close();
            // Close completed every send still pending: report each.
            for (s, c) in pending.drain(..) {
                match c.wait_timeout(Duration::from_secs(5)) {
                    Ok(r) => report(s, r),
                    Err(_) => return Err(Fail(format!("send {s} had no outcome after close"))),
                }
            }
            break;
        }
        let now = start.elapsed();
        let sending = now < o.send_for;
        // Outcomes that arrived, in any order.
        let mut i = 0;
        while i < pending.len() {
            if pending[i].1.is_ready() {
                let (s, c) = pending.remove(i).expect("index in range");
                report(s, c.wait());
            } else {
                i += 1;
            }
        }
        if !sending {
            // "Not sending" only once every send has its outcome.
            if pending.is_empty() {
                stop.store(true, Ordering::Relaxed);
                break;
            }
            // Still waiting well past the bound: say on what (a checker that fails shows it).
            let late = now.saturating_sub(o.send_for);
            if late > Duration::from_secs(5) && late.as_millis() % 1000 < 20 {
                for r in node.remotes() {
                    eprintln!(
                        "waiting: {} sends pending; remote {} queued {} in flight {} slots {} \
                         connected {}",
                        pending.len(),
                        r.address,
                        r.queued,
                        r.in_flight,
                        r.slots_in_use,
                        r.connected_since.is_some()
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(20)); // polling the last outcomes
            continue;
        }
        let due = Duration::from_secs_f64(seq as f64 / o.rate);
        if due > now {
            std::thread::sleep((due - now).min(Duration::from_millis(20))); // the pace
            continue;
        }
        if pending.len() >= 256 {
            // Too many outstanding (peers down): wait for the oldest, with a deadline.
            let (s, c) = pending.pop_front().expect("non-empty");
            match c.wait_timeout(Duration::from_secs(30)) {
                Ok(r) => report(s, r),
                Err(_) => return Err(Fail(format!("send {s} had no outcome within 30 s"))),
            }
            continue;
        }
        seq += 1;
        let to = o.peers[(rng() % o.peers.len() as u64) as usize];
        let len = (rng() % 200) as usize;
        let payload: Vec<u8> = (0..len).map(|_| rng() as u8).collect();
        line(format!("try {} {seq} {to}", o.name));
        pending.push_back((
            seq,
            node.send(Message::to(to, encode(&o.name, seq, &payload))),
        ));
    }
    // Keep serving (and printing status) until SIGINT or SIGTERM.
    if !node.is_closed() {
        let _ = signals.stop.recv();
    }
    node.close();
    Ok(())
}

/// SIGUSR1 stalls the consumer, SIGUSR2 ends the stall and releases what it held (a small
/// named thread reads the signals).
fn consumer_stalls(stalled: Arc<AtomicBool>, held: Arc<Mutex<Vec<Message>>>) -> Result<(), Fail> {
    use signal_hook::consts::{SIGUSR1, SIGUSR2};
    let mut signals = signal_hook::iterator::Signals::new([SIGUSR1, SIGUSR2])
        .map_err(|e| Fail(format!("cannot handle SIGUSR1/SIGUSR2: {e}")))?;
    std::thread::Builder::new()
        .name("chirp-chaos-stall".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            for signal in signals.forever() {
                // Under the lock the handler checks the flag in: nothing is held after
                // the release.
                let mut h = held.lock().unwrap_or_else(|e| e.into_inner());
                stalled.store(signal == SIGUSR1, Ordering::Release);
                let released = if signal == SIGUSR2 {
                    std::mem::take(&mut *h)
                } else {
                    Vec::new()
                };
                drop(h);
                drop(released);
            }
        })
        .map_err(|e| Fail(format!("cannot start the signal thread: {e}")))?;
    Ok(())
}

/// A small seeded generator (splitmix64): the schedule of sends replays from the seed.
fn fastrand_like(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed;
    move || {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
