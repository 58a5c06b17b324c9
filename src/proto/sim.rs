//! The deterministic simulator: several nodes of the real protocol core ([`RemoteCore`],
//! [`Slots`], [`Activity`]) in one thread, over a simulated network and clock, driven by a
//! seed. Faults: latency and jitter, partitions, connection resets, peers that never
//! handshake, never read, read slowly or never release, slow consumers, pauses, crash and
//! restart, node close. The workload mixes synchronous and asynchronous nodes, batches and
//! releases. Every run checks the properties in [`Sim::check_now`] and [`Sim::finish`];
//! a failing run names its seed, and the same seed replays the same run exactly (the
//! trace's hash is part of the report).
//!
//! The glue here plays the part of the node's threads (writer, reader, timer, garbage
//! collection, the application); every decision it acts on comes from the production
//! code. `scripts/sim.sh --seed S` replays one seed, `--seeds N` explores.

use std::cell::{Cell, RefCell};
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::completion::Completion;
use crate::error::Error;
use crate::frame::{Batch, Frame, Pending};
use crate::message::{Identity, Message, ReleaseDone};

use super::activity::Activity;
use super::key::RemoteKey;
use super::remote::{finish_written, Action, Actions, Ended, Enqueued, Limits, RemoteCore, Timer};
use super::slots::{Admit, Slots};
use super::ConnRef;

/// Simulated time, in microseconds.
type T = u64;
const MS: T = 1_000;
const SEC: T = 1_000_000;

/// The simulated network's bandwidth per connection (bytes per millisecond) and how many
/// unread bytes a connection holds before its writer blocks (the socket buffers).
const FAST: usize = 50_000;
const SLOW: usize = 20;
const WIRE_CAP: usize = 64 * 1024;
const CHUNK: usize = 16 * 1024;
/// Frame overhead on the wire (preamble).
const PREAMBLE: usize = 27;

#[derive(Clone)]
struct H {
    id: u64,
    reason: Rc<RefCell<Option<Error>>>,
}

impl ConnRef for H {
    fn id(&self) -> u64 {
        self.id
    }
    fn close_reason(&self) -> Option<Error> {
        self.reason.borrow().clone()
    }
}

/// How a node misbehaves while a fault lasts.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Behaviour {
    /// Accepts connections but never answers the handshake.
    no_handshake: bool,
    /// Stops reading its connections.
    no_read: bool,
    /// Reads at a trickle.
    slow_read: bool,
    /// Its application never releases what it received.
    no_release: bool,
    /// Its application releases slowly (longer than the timeout).
    slow_release: bool,
    /// A buggy peer: with each release it also acknowledges an identity it never got.
    bogus_acks: bool,
}

struct Held {
    conn: u64,
    end: usize,
    req_ack: bool,
    identity: Identity,
    serial: u32,
}

struct SimNode {
    gen: u32,
    alive: bool,
    closing: bool,
    lim: Limits,
    slots: usize,
    park: usize,
    remotes: BTreeMap<usize, RemoteCore<H>>,
    held: BTreeMap<u64, Held>,
    behaviour: Behaviour,
    paused_until: T,
    /// Sends of the workload still to make, and how many may be outstanding.
    to_send: usize,
    outstanding: usize,
    window: usize,
    /// Ever affected by a fault (its sends may fail).
    faulty: bool,
}

enum WFrame {
    Data(Message, bool),
    Ack(Identity),
    Noop,
    /// The writing end closed (FIN): everything before it is still read.
    Eof,
}

#[derive(Default)]
struct Wire {
    /// Frames and when they become readable.
    frames: VecDeque<(T, usize, WFrame)>,
    unread: usize,
}

struct Writing {
    frames: Vec<(Frame, u32)>,
    bytes: usize,
    done: usize,
}

struct End {
    node: usize,
    /// This side's handle: the connection's id, and this side's own close reason (each
    /// node has its own `Conn`).
    handle: H,
    /// Garbage collection retired it: it writes nothing more, has sent its end of stream,
    /// and reads until the peer's (or the timeout).
    retiring: bool,
    /// The end closed after the peer's orderly end of stream.
    ended_clean: bool,
    /// The peer's orderly end of stream met a write under way: it finishes (the peer
    /// reads until our end of stream), nothing new is written, then this end closes.
    draining: bool,
    gen: u32,
    writing: Option<Writing>,
    slots: Slots<Message>,
    /// The reader stopped: the next frame can neither have a slot nor be parked.
    blocked: bool,
    /// Bytes the peer took from this end or gave it (what TCP_INFO counts).
    moved: u64,
    activity: Activity,
    closed: bool,
}

struct SimConn {
    /// `ends[0]` dialed, `ends[1]` accepted.
    ends: [End; 2],
    /// `wires[e]` carries what `ends[e]` writes.
    wires: [Wire; 2],
    up: bool,
    /// Reset: nothing flows any more.
    dead: bool,
    /// Both ways cut (a partition) until healed.
    cut: bool,
    /// Ground truth: when the peer last took or sent bytes on it (or its handshake).
    active: T,
}

#[derive(Debug)]
struct SendRec {
    from: usize,
    to: usize,
    sync: bool,
    at: T,
    len: usize,
    done: Option<(T, Result<(), String>)>,
    delivered: u32,
    /// The receiver read its frame (it holds a slot or is parked).
    read: bool,
    /// Its receiver closed or crashed after reading it: it may be lost.
    receiver_gone: bool,
    /// Reported as waiting too long (once).
    late: bool,
    /// Its receiver's application released it.
    released: bool,
}

#[derive(Clone, Copy, Debug, Hash)]
enum Ev {
    Work(usize),
    Timer(usize, u32, Timer),
    Gc(usize, u32),
    Write(u64, usize),
    Read(u64, usize),
    Handshake(u64),
    ConnectTimeout(u64),
    Release(usize, u32, u64),
    Sweep,
    Fault(usize),
    Heal(usize),
    RetireDeadline(u64, usize),
    /// Connection, end: a draining end closes now, its write finished or not.
    DrainDeadline(u64, usize),
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Partition(usize, usize),
    Reset(usize, usize),
    Behave(usize, Behaviour),
    Pause(usize),
    Crash(usize),
    Close(usize),
}

struct Queued {
    at: T,
    seq: u64,
    ev: Ev,
}
impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// What one run found.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) seed: u64,
    pub(crate) trace: u64,
    pub(crate) messages: usize,
    pub(crate) events: u64,
    /// Sends that succeeded, failed; messages delivered to applications.
    pub(crate) ok: usize,
    pub(crate) failed: usize,
    pub(crate) delivered: usize,
    pub(crate) faults: usize,
    /// Sends refused for `max_queued`.
    pub(crate) refused: usize,
    pub(crate) violations: Vec<String>,
}

/// Outcomes reported by completions, drained after every event.
type Outbox = Arc<Mutex<Vec<(usize, Result<(), String>)>>>;

pub(crate) struct Sim {
    seed: u64,
    rng: fastrand::Rng,
    now: T,
    base: Instant,
    seq: u64,
    queue: BinaryHeap<Queued>,
    nodes: Vec<SimNode>,
    conns: BTreeMap<u64, SimConn>,
    next_conn: Cell<u64>,
    sends: Vec<SendRec>,
    /// Sends without an outcome yet (what the sweep looks at).
    open: std::collections::BTreeSet<usize>,
    by_identity: HashMap<Identity, usize>,
    outbox: Outbox,
    releases: Arc<Mutex<(u64, u64)>>,
    next_hold: u64,
    /// Ground truth: the last progress between two nodes (either way).
    progress: HashMap<(usize, usize), T>,
    faults: Vec<(Fault, T, T)>,
    /// Workload ends, faults heal, then the liveness probe.
    end_of_work: T,
    trace: DefaultHasher,
    events: u64,
    violations: Vec<String>,
    /// CHIRP_SIM_TRACE set: every event is printed (for replaying one seed).
    print_trace: bool,
    refused: usize,
}

fn key(n: usize) -> RemoteKey {
    (IpAddr::V4(Ipv4Addr::LOCALHOST), 2000 + n as u16)
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

/// The payload a message of `identity` carries (checked on delivery).
fn payload(identity: &Identity, len: usize) -> Vec<u8> {
    let b = identity.as_bytes();
    (0..len).map(|i| b[i % 16] ^ (i as u8)).collect()
}

impl Sim {
    pub(crate) fn new(seed: u64) -> Sim {
        let mut rng = fastrand::Rng::with_seed(seed);
        // Drawn from a stream of their own, so that the rest of each seed's plan is what it
        // was before the limits were drawn (the mutants' seeds stay comparable).
        let mut limits = fastrand::Rng::with_seed(seed ^ 0x6d61_785f_7175_6575);
        let n = rng.usize(2..=5);
        let nodes = (0..n)
            .map(|_| {
                let synchronous = rng.bool();
                let timeout = Duration::from_millis(rng.u64(300..1500));
                SimNode {
                    gen: 0,
                    alive: true,
                    closing: false,
                    lim: Limits {
                        timeout,
                        reuse_time: Duration::from_millis(rng.u64(400..3000)).max(timeout),
                        synchronous,
                        // A quarter of the nodes have a short queue, which their window
                        // fills: sends are refused (`max_queued`).
                        max_queued: if limits.u8(0..4) == 0 {
                            limits.usize(2..=24)
                        } else {
                            1024
                        },
                    },
                    slots: if synchronous { 1 } else { rng.usize(1..=16) },
                    park: rng.usize(256..=16 * 1024),
                    remotes: BTreeMap::new(),
                    held: BTreeMap::new(),
                    behaviour: Behaviour::default(),
                    paused_until: 0,
                    // A quarter of the nodes only receive.
                    to_send: if rng.u8(0..4) == 0 {
                        0
                    } else {
                        rng.usize(50..600)
                    },
                    outstanding: 0,
                    window: rng.usize(1..=200),
                    faulty: false,
                }
            })
            .collect();
        let mut sim = Sim {
            seed,
            rng,
            now: 0,
            base: Instant::now(),
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            conns: BTreeMap::new(),
            next_conn: Cell::new(1),
            sends: Vec::new(),
            open: Default::default(),
            by_identity: HashMap::new(),
            outbox: Arc::default(),
            releases: Arc::default(),
            next_hold: 0,
            progress: HashMap::new(),
            faults: Vec::new(),
            end_of_work: 0,
            trace: DefaultHasher::new(),
            events: 0,
            violations: Vec::new(),
            print_trace: std::env::var_os("CHIRP_SIM_TRACE").is_some(),
            refused: 0,
        };
        sim.plan();
        sim
    }

    /// The faults of this run and when they start and heal; the first events.
    fn plan(&mut self) {
        let n = self.nodes.len();
        self.end_of_work = self.rng.u64(3..12) * SEC;
        let faults = self.rng.usize(0..=5);
        for _ in 0..faults {
            let a = self.rng.usize(0..n);
            let b = (a + self.rng.usize(1..n)) % n;
            let behaviour = match self.rng.u8(0..6) {
                0 => Behaviour {
                    no_handshake: true,
                    ..Default::default()
                },
                1 => Behaviour {
                    no_read: true,
                    ..Default::default()
                },
                2 => Behaviour {
                    slow_read: true,
                    ..Default::default()
                },
                3 => Behaviour {
                    no_release: true,
                    ..Default::default()
                },
                4 => Behaviour {
                    slow_release: true,
                    ..Default::default()
                },
                _ => Behaviour {
                    bogus_acks: true,
                    ..Default::default()
                },
            };
            let fault = match self.rng.u8(0..8) {
                0 => Fault::Partition(a, b),
                1 => Fault::Reset(a, b),
                2..=4 => Fault::Behave(a, behaviour),
                5 => Fault::Pause(a),
                6 => Fault::Crash(a),
                _ => Fault::Close(a),
            };
            let start = self.rng.u64(0..self.end_of_work);
            let heal = (start + self.rng.u64(100 * MS..4 * SEC)).min(self.end_of_work);
            self.faults.push((fault, start, heal));
        }
        for i in 0..self.faults.len() {
            let (_, start, heal) = self.faults[i];
            self.at(start, Ev::Fault(i));
            self.at(heal, Ev::Heal(i));
        }
        for node in 0..n {
            let gen = self.nodes[node].gen;
            self.at(0, Ev::Work(node));
            let r = self.reuse(node);
            let first = self.rng.u64(r / 2..r);
            self.at(first, Ev::Gc(node, gen));
        }
        self.at(10 * MS, Ev::Sweep);
    }

    fn reuse(&self, node: usize) -> T {
        self.nodes[node].lim.reuse_time.as_micros() as T
    }

    fn instant(&self, t: T) -> Instant {
        self.base + Duration::from_micros(t)
    }

    fn sim_time(&self, at: Instant) -> T {
        at.saturating_duration_since(self.base).as_micros() as T
    }

    fn at(&mut self, at: T, ev: Ev) {
        self.seq += 1;
        self.queue.push(Queued {
            at: at.max(self.now),
            seq: self.seq,
            ev,
        });
    }

    fn violation(&mut self, what: String) {
        if self.violations.len() < 20 {
            self.violations
                .push(format!("t={}ms: {what}", self.now / MS));
        }
    }

    /// Runs the seed to the end and checks everything.
    pub(crate) fn run(mut self) -> Report {
        if std::env::var_os("CHIRP_SIM_VERBOSE").is_some() {
            for (i, n) in self.nodes.iter().enumerate() {
                println!(
                    "node {i}: {:?} slots {} park {} window {} to send {}",
                    n.lim, n.slots, n.park, n.window, n.to_send
                );
            }
            for f in &self.faults {
                println!("fault {:?} from {}ms to {}ms", f.0, f.1 / MS, f.2 / MS);
            }
        }
        let limit = self.end_of_work + 60 * SEC;
        while let Some(q) = self.queue.pop() {
            if q.at > limit {
                self.violation(format!("still busy {}s after the workload ended", 60));
                break;
            }
            self.step(q);
            if self.quiescent() {
                break;
            }
        }
        self.finish()
    }

    /// One event: the clock moves to it, it is hashed into the trace and handled, and the
    /// outcomes it caused are checked.
    fn step(&mut self, q: Queued) {
        self.now = q.at;
        self.events += 1;
        q.ev.hash(&mut self.trace);
        self.now.hash(&mut self.trace);
        if self.print_trace {
            println!("{:>9}us {:?}", self.now, q.ev);
        }
        self.handle(q.ev);
        self.collect_outcomes();
    }

    /// Everything was sent and completed after the end of the workload.
    fn quiescent(&self) -> bool {
        self.now > self.end_of_work
            && self
                .nodes
                .iter()
                .all(|n| !n.alive || (n.to_send == 0 && n.outstanding == 0))
            && self.nodes.iter().all(|n| n.held.is_empty())
    }

    fn paused(&self, node: usize) -> Option<T> {
        let until = self.nodes[node].paused_until;
        (until > self.now).then_some(until)
    }

    fn handle(&mut self, ev: Ev) {
        // A paused node does nothing until it resumes.
        let node_of = match ev {
            Ev::Work(n) | Ev::Timer(n, ..) | Ev::Gc(n, _) | Ev::Release(n, ..) => Some(n),
            Ev::Write(c, e) | Ev::Read(c, e) => self.conns.get(&c).map(|c| c.ends[e].node),
            _ => None,
        };
        if let Some(until) = node_of.and_then(|n| self.paused(n)) {
            self.at(until, ev);
            return;
        }
        match ev {
            Ev::Work(n) => self.work(n),
            Ev::Timer(n, gen, t) => self.timer(n, gen, t),
            Ev::Gc(n, gen) => self.gc(n, gen),
            Ev::Write(c, e) => self.write(c, e),
            Ev::Read(c, e) => self.read(c, e),
            Ev::Handshake(c) => self.handshake(c),
            Ev::ConnectTimeout(c) => {
                if self.conns.get(&c).is_some_and(|c| !c.up) {
                    let node = self.conns[&c].ends[0].node;
                    self.shutdown(c, node, Error::timeout("connect"), false);
                }
            }
            Ev::Release(n, gen, hold) => self.release(n, gen, hold),
            Ev::Sweep => {
                self.check_now();
                if self.now < self.end_of_work + 50 * SEC {
                    self.at(self.now + 10 * MS, Ev::Sweep);
                }
            }
            Ev::RetireDeadline(c, n) => self.shutdown(c, n, Error::Shutdown, false),
            Ev::DrainDeadline(c, e) => {
                if self.conns.get(&c).is_some_and(|c| c.ends[e].draining) {
                    self.end_of_stream(c, e);
                }
            }
            Ev::Fault(i) => self.fault(i, true),
            Ev::Heal(i) => self.fault(i, false),
        }
    }

    // --- the application -------------------------------------------------------------

    /// The node's application sends what its window allows: single messages, and on
    /// asynchronous nodes sometimes a batch.
    fn work(&mut self, n: usize) {
        let node = &self.nodes[n];
        if !node.alive || node.closing {
            return;
        }
        let peers = self.nodes.len();
        let mut room = node
            .window
            .saturating_sub(node.outstanding)
            .min(node.to_send);
        while room > 0 {
            let to = (n + self.rng.usize(1..peers)) % peers;
            let batch = !self.nodes[n].lim.synchronous && self.rng.u8(0..8) == 0;
            let count = if batch {
                self.rng.usize(1..=room.min(32))
            } else {
                1
            };
            self.send(n, to, count);
            room -= count;
        }
        if self.nodes[n].to_send > 0 {
            let pause = self.rng.u64(0..20 * MS);
            self.at(self.now + pause, Ev::Work(n));
        }
    }

    fn send(&mut self, from: usize, to: usize, count: usize) {
        let sync = self.nodes[from].lim.synchronous;
        let mut messages = Vec::with_capacity(count);
        for _ in 0..count {
            let index = self.sends.len();
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&self.rng.u64(..).to_le_bytes());
            bytes[8..].copy_from_slice(&(index as u64).to_le_bytes());
            let identity = Identity::from_bytes(bytes);
            let len = match self.rng.u8(0..20) {
                0 => self.rng.usize(20_000..120_000),
                1..=4 => self.rng.usize(17..2000),
                _ => self.rng.usize(0..17),
            };
            let mut msg = Message::new(payload(&identity, len));
            msg.identity = identity;
            self.sends.push(SendRec {
                from,
                to,
                sync,
                at: self.now,
                len,
                done: None,
                delivered: 0,
                read: false,
                receiver_gone: false,
                late: false,
                released: false,
            });
            self.by_identity.insert(identity, index);
            self.open.insert(index);
            messages.push((index, msg));
        }
        // A batch has one completion; each message's outcome is read off it.
        let batch = (count > 1).then(|| {
            let (completion, completer) = Completion::pair();
            let outbox = self.outbox.clone();
            let members: Vec<(usize, Identity)> =
                messages.iter().map(|(i, m)| (*i, m.identity)).collect();
            completion.on_complete(move |r: crate::frame::BatchResult| {
                let failures = r.err().map(|e| e.failures).unwrap_or_default();
                let mut o = outbox.lock().unwrap();
                for (i, identity) in members {
                    let failed = failures.iter().find(|f| f.message.identity == identity);
                    o.push((i, failed.map_or(Ok(()), |f| Err(f.error.to_string()))));
                }
            });
            completer
        });
        let mut pendings = Vec::with_capacity(count);
        // As `Peer::send_batch` and `Node::send` do: a batch holds its messages, a plain
        // send's message waits in its completion.
        let batch = match batch {
            Some(completer) => {
                let msgs = messages.into_iter().map(|(_, m)| Some(m)).collect();
                Some(Batch::build(completer, msgs, &mut pendings))
            }
            None => {
                for (index, msg) in messages {
                    let (completion, lent) = crate::completion::lent_pair(Ok(msg));
                    let outbox = self.outbox.clone();
                    completion.on_complete(move |r: crate::frame::SendResult| {
                        outbox
                            .lock()
                            .unwrap()
                            .push((index, r.map(drop).map_err(|e| e.error.to_string())));
                    });
                    pendings.push(Pending::lent(lent));
                }
                None
            }
        };
        let node = &mut self.nodes[from];
        node.to_send = node.to_send.saturating_sub(count);
        node.outstanding += count;
        let single = batch.is_none();
        self.on_core(from, to, true, |core, lim, now, dial, out| {
            if single {
                let mut p = pendings.pop();
                match core.enqueue(lim, || now, &mut p, dial, out) {
                    Enqueued::Queued => {}
                    Enqueued::Removed | Enqueued::Full => pendings.extend(p),
                }
            } else {
                let _ = core.enqueue_batch(lim, || now, &mut pendings, dial, out);
            }
        });
        // What could not be queued fails at once: the remote's queue is full (the
        // simulated table never holds a removed remote).
        let limit = self.nodes[from].lim.max_queued;
        for p in pendings.drain(..) {
            self.refused += 1;
            let _ = p.finish(Err(Error::LimitReached {
                limit: "max_queued",
                value: limit,
            }));
        }
        if let Some(b) = batch {
            b.built();
        }
    }

    /// Takes the outcomes completions reported and checks each.
    fn collect_outcomes(&mut self) {
        let outcomes = std::mem::take(&mut *self.outbox.lock().unwrap());
        for (i, r) in outcomes {
            self.outcome(i, r);
        }
    }

    fn outcome(&mut self, i: usize, r: Result<(), String>) {
        let s = &self.sends[i];
        if s.done.is_some() {
            self.violation(format!("send {i} completed twice"));
            return;
        }
        let (from, to, sync, at) = (s.from, s.to, s.sync, s.at);
        let node = &self.nodes[from];
        let closing = node.closing || !node.alive;
        let faulty = node.faulty || self.nodes[to].faulty;
        match &r {
            Ok(()) if sync && self.sends[i].delivered == 0 => self.violation(format!(
                "synchronous send {i} {from}->{to} succeeded but was never delivered"
            )),
            Ok(()) if sync && !self.sends[i].released => self.violation(format!(
                "synchronous send {i} {from}->{to} succeeded before its receiver released it"
            )),
            Err(e) if e.contains("shut down") && !closing => self.violation(format!(
                "send {i} {from}->{to} failed with a shutdown on an open node \
                 (garbage collection failed queued work): {e}"
            )),
            // Refused: the queue was full (`max_queued`), as the core decided.
            Err(e) if e.contains("max_queued") && node.lim.max_queued < 1024 => {}
            Err(e) if !faulty && !closing => self.violation(format!(
                "send {i} {from}->{to} failed without any fault after {}ms: {e}",
                (self.now - at) / MS
            )),
            _ => {}
        }
        self.sends[i].done = Some((self.now, r));
        self.open.remove(&i);
        let node = &mut self.nodes[from];
        node.outstanding = node.outstanding.saturating_sub(1);
        if node.to_send > 0 && node.alive {
            self.at(self.now, Ev::Work(from));
        }
    }

    /// The application at `n` receives `msg` (it holds a slot of `conn`'s end `end`).
    fn deliver(&mut self, n: usize, conn: u64, end: usize, msg: Message, req_ack: bool) {
        let Some(&i) = self.by_identity.get(&msg.identity) else {
            self.violation(format!(
                "node {n} received a phantom message {}",
                msg.identity
            ));
            return;
        };
        let s = &mut self.sends[i];
        s.delivered += 1;
        let (to, len, delivered) = (s.to, s.len, s.delivered);
        if to != n {
            self.violation(format!("send {i} for node {to} was delivered to node {n}"));
        }
        if delivered > 1 {
            self.violation(format!("send {i} was delivered {delivered} times"));
        }
        if msg.data() != payload(&msg.identity, len).as_slice() {
            self.violation(format!("send {i} arrived with a corrupted payload"));
        }
        let hold = self.next_hold;
        self.next_hold += 1;
        let node = &mut self.nodes[n];
        node.held.insert(
            hold,
            Held {
                conn,
                end,
                req_ack,
                identity: msg.identity,
                serial: msg.serial,
            },
        );
        let b = node.behaviour;
        let gen = node.gen;
        let timeout = node.lim.timeout.as_micros() as T;
        if b.no_release {
            return; // released when the fault heals
        }
        let delay = if b.slow_release {
            self.rng.u64(timeout..3 * timeout)
        } else {
            self.rng.u64(0..MS / 2)
        };
        self.at(self.now + delay, Ev::Release(n, gen, hold));
    }

    /// The application releases a message: its slot frees (a parked message may take it),
    /// and an ACK is queued if the sender asked for one.
    fn release(&mut self, n: usize, gen: u32, hold: u64) {
        if self.nodes[n].gen != gen {
            return;
        }
        let Some(h) = self.nodes[n].held.remove(&hold) else {
            return;
        };
        if let Some(&i) = self.by_identity.get(&h.identity) {
            self.sends[i].released = true;
        }
        let Some(c) = self.conns.get(&h.conn) else {
            return;
        };
        let (open, parked) = c.ends[h.end].slots.freed();
        let peer = c.ends[1 - h.end].node;
        let (completion, completer) = Completion::pair();
        let releases = self.releases.clone();
        releases.lock().unwrap().0 += 1;
        completion.on_complete(move |_| releases.lock().unwrap().1 += 1);
        let done = ReleaseDone::new(h.identity, h.serial, Some(completer));
        // An orderly end (retired here, or ended by the peer's end of stream) still sends
        // the ACK, through the remote, as `Conn::release_slot` does.
        // A closing node sends nothing more (its remotes are gone: the ACK would make one).
        let orderly = !open
            && (c.ends[h.end].retiring || c.ends[h.end].ended_clean)
            && !self.nodes[n].closing;
        if h.req_ack && (open || orderly) && self.nodes[n].alive {
            let bogus = self.nodes[n].behaviour.bogus_acks.then(|| {
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(&self.rng.u64(..).to_le_bytes());
                ReleaseDone::new(Identity::from_bytes(b), 0, None)
            });
            self.on_core(n, peer, true, |core, _, _, dial, out| {
                if let Some(b) = bogus {
                    core.queue_ack(b, dial, out);
                }
                core.queue_ack(done, dial, out)
            });
        } else {
            done.finish();
        }
        if parked {
            self.drain(h.conn, h.end);
        }
        // The reader may go on; a closed connection whose last slot this was is gone.
        self.at(self.now, Ev::Read(h.conn, h.end));
        self.gc_conn(h.conn);
    }

    fn drain(&mut self, conn: u64, end: usize) {
        let mut out = Vec::new();
        if let Some(c) = self.conns.get(&conn) {
            c.ends[end].slots.drain(|m, a| out.push((m, a)));
        }
        let n = self.conns[&conn].ends[end].node;
        for (m, a) in out {
            self.deliver_or_drop(n, conn, end, m, a);
        }
    }

    fn deliver_or_drop(&mut self, n: usize, conn: u64, end: usize, msg: Message, req_ack: bool) {
        let gen_now = self.nodes[n].gen;
        let gen_conn = self.conns[&conn].ends[end].gen;
        if !self.nodes[n].alive || self.nodes[n].closing || gen_now != gen_conn {
            // The node closed or crashed: what it had read is gone with it (a closing node
            // delivers nothing more, as `Link::deliver` does once the node is closed).
            if let Some(&i) = self.by_identity.get(&msg.identity) {
                self.sends[i].receiver_gone = true;
            }
            let (open, parked) = self.conns[&conn].ends[end].slots.freed();
            let _ = open;
            if parked {
                self.drain(conn, end);
            }
            return;
        }
        self.deliver(n, conn, end, msg, req_ack);
    }

    // --- the core's actions --------------------------------------------------------------

    fn run_actions(&mut self, n: usize, out: Actions<H>) {
        for a in out.0 {
            match a {
                Action::Send(b) => {
                    let (p, r) = *b;
                    let _ = p.finish(r);
                }
                Action::Release(r) => r.finish(),
                Action::Dial(h) => self.dial(n, h),
                Action::Shutdown(h, e) => self.shutdown(h.id, n, e, false),
                Action::Retire(h) => self.retire(h.id, n),
                Action::Kick(h) => self.kick(h.id, n),
                // The simulated writer takes frames until none are left: nothing to count.
                Action::Queued => {}
                Action::Timer(at, t) => {
                    let gen = self.nodes[n].gen;
                    let at = self.sim_time(at);
                    self.at(at, Ev::Timer(n, gen, t));
                }
            }
        }
    }

    /// Runs `f` on node `n`'s remote for `peer` (made first if `create`; else only if it
    /// exists) with the node's limits, the simulated time and a dialer, then carries out
    /// the actions it asked for.
    fn on_core<R>(
        &mut self,
        n: usize,
        peer: usize,
        create: bool,
        f: impl FnOnce(
            &mut RemoteCore<H>,
            &Limits,
            Instant,
            &mut dyn FnMut() -> Result<H, Error>,
            &mut Actions<H>,
        ) -> R,
    ) -> Option<R> {
        let mut out = Actions::default();
        let r = {
            let Sim {
                nodes,
                next_conn,
                now,
                base,
                rng,
                ..
            } = self;
            let now = *base + Duration::from_micros(*now);
            let node = &mut nodes[n];
            let lim = node.lim.clone();
            let core = if create {
                let new = || RemoteCore::new(key(peer), now, rng.u64(..));
                Some(node.remotes.entry(peer).or_insert_with(new))
            } else {
                node.remotes.get_mut(&peer)
            };
            core.map(|core| f(core, &lim, now, &mut || Ok(new_handle(next_conn)), &mut out))
        };
        self.run_actions(n, out);
        r
    }

    /// [`Sim::on_core`] on an existing remote.
    fn with_core(
        &mut self,
        n: usize,
        peer: usize,
        f: impl FnOnce(
            &mut RemoteCore<H>,
            &Limits,
            Instant,
            &mut dyn FnMut() -> Result<H, Error>,
            &mut Actions<H>,
        ),
    ) {
        self.on_core(n, peer, false, f);
    }

    fn timer(&mut self, n: usize, gen: u32, t: Timer) {
        if self.nodes[n].gen != gen || !self.nodes[n].alive {
            return;
        }
        let (Timer::Debounce(k) | Timer::AckDeadline(k) | Timer::Stall(k)) = t;
        let peer = (k.1 - 2000) as usize;
        let bytes = self.nodes[n]
            .remotes
            .get(&peer)
            .and_then(|c| c.conn())
            .and_then(|h| self.conns.get(&h.id))
            .map(|c| c.ends.iter().find(|e| e.node == n).map_or(0, |e| e.moved));
        self.with_core(n, peer, |core, lim, now, dial, out| match t {
            Timer::Debounce(_) => core.unblock(dial, out),
            Timer::AckDeadline(_) => core.ack_deadline(lim, now, out),
            Timer::Stall(_) => core.stall_check(lim, now, bytes, out),
        });
    }

    /// Garbage collection, as the node's timer runs it.
    fn gc(&mut self, n: usize, gen: u32) {
        if self.nodes[n].gen != gen || !self.nodes[n].alive {
            return;
        }
        let now = self.instant(self.now);
        let reuse = self.nodes[n].lim.reuse_time;
        let lim = self.nodes[n].lim.clone();
        // Each established connection's idleness is read once: connections that are not
        // their remote's current one and idle too long are retired; a remote is collected
        // only if all its connections are idle (the least idle of them decides).
        let mut cut = Vec::new();
        let mut least_idle: BTreeMap<usize, Duration> = BTreeMap::new();
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            let c = self.conns.get_mut(&id).expect("listed");
            let Some(e) = c
                .ends
                .iter()
                .position(|e| e.node == n && !e.closed && !e.retiring)
            else {
                continue;
            };
            if !c.up {
                continue;
            }
            let peer = c.ends[1 - e].node;
            let end = &mut c.ends[e];
            let idle = end.activity.idle_for(now, end.moved, end.slots.held());
            least_idle
                .entry(peer)
                .and_modify(|d| *d = (*d).min(idle))
                .or_insert(idle);
            let current = self.nodes[n]
                .remotes
                .get(&peer)
                .is_some_and(|r| r.is_current(id));
            if idle > reuse && !current {
                cut.push(id);
            }
        }
        for id in cut {
            self.retire(id, n);
        }
        let peers: Vec<usize> = self.nodes[n].remotes.keys().copied().collect();
        for peer in peers {
            let idle = least_idle.get(&peer).copied();
            let mut out = Actions::default();
            let core = self.nodes[n].remotes.get_mut(&peer).expect("listed");
            if core.collect(&lim, now, idle, &mut out) {
                self.nodes[n].remotes.remove(&peer);
                self.run_actions(n, out);
                let mine: Vec<u64> = self
                    .conns
                    .iter()
                    // As the node does: the connections attached to this remote (a
                    // handshake still under way belongs to no remote yet).
                    .filter(|(_, c)| {
                        c.up && c.ends.iter().any(|e| e.node == n && !e.closed)
                            && c.ends.iter().any(|e| e.node == peer)
                    })
                    .map(|(id, _)| *id)
                    .collect();
                for id in mine {
                    self.retire(id, n);
                }
            }
        }
        let r = self.reuse(n);
        let next = self.now + self.rng.u64(r / 2..r);
        self.at(next, Ev::Gc(n, gen));
    }

    // --- connections -------------------------------------------------------------------

    fn new_end(&self, node: usize, handle: H) -> End {
        let n = &self.nodes[node];
        End {
            node,
            handle,
            retiring: false,
            ended_clean: false,
            draining: false,
            gen: n.gen,
            writing: None,
            slots: Slots::new(n.slots, n.park),
            blocked: false,
            moved: 0,
            activity: Activity::new(self.instant(self.now), 0),
            closed: false,
        }
    }

    fn latency(&mut self) -> T {
        self.rng.u64(50..2 * MS)
    }

    fn dial(&mut self, n: usize, h: H) {
        let peer = self.nodes[n]
            .remotes
            .iter()
            .find(|(_, c)| c.conn().is_some_and(|c| c.id == h.id))
            .map(|(p, _)| *p);
        let Some(peer) = peer else { return };
        let accepted = H {
            id: h.id,
            reason: Rc::new(RefCell::new(None)),
        };
        let conn = SimConn {
            ends: [self.new_end(n, h.clone()), self.new_end(peer, accepted)],
            wires: Default::default(),
            up: false,
            dead: false,
            cut: self.partitioned(n, peer),
            active: self.now,
        };
        self.conns.insert(h.id, conn);
        let timeout = (self.nodes[n].lim.timeout * 2).as_micros() as T;
        self.at(self.now + timeout, Ev::ConnectTimeout(h.id));
        let p = &self.nodes[peer];
        if p.alive && !p.closing && !p.behaviour.no_handshake && !self.partitioned(n, peer) {
            let l = self.latency() * 2;
            self.at(self.now + l, Ev::Handshake(h.id));
        }
    }

    fn partitioned(&self, a: usize, b: usize) -> bool {
        self.faults.iter().enumerate().any(|(i, (f, start, heal))| {
            let _ = i;
            matches!(f, Fault::Partition(x, y) if pair(*x, *y) == pair(a, b))
                && *start <= self.now
                && self.now < *heal
        })
    }

    fn handshake(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.up || c.dead || c.ends[0].closed {
            return;
        }
        let (a, b) = (c.ends[0].node, c.ends[1].node);
        if !self.nodes[b].alive || self.nodes[b].closing || self.nodes[b].gen != c.ends[1].gen {
            return;
        }
        c.up = true;
        c.active = self.now;
        // As the node's connection does when its handshake completes.
        let t = self.base + Duration::from_micros(self.now);
        for end in &mut c.ends {
            end.activity.touch(t);
        }
        let handles = [c.ends[0].handle.clone(), c.ends[1].handle.clone()];
        self.progress.insert(pair(a, b), self.now);
        // Both sides attach: the dialer's remote, and the acceptor's remote for the dialer.
        for (n, peer) in [(a, b), (b, a)] {
            let h = &handles[usize::from(n == b)];
            let attached = self.on_core(n, peer, true, |core, _, now, _, out| {
                core.attach(now, h, out)
            });
            if attached == Some(false) {
                self.nodes[n].remotes.remove(&peer);
            }
        }
    }

    fn end_of(&self, id: u64, n: usize) -> Option<usize> {
        let c = self.conns.get(&id)?;
        c.ends.iter().position(|e| e.node == n && !e.closed)
    }

    /// Frames are queued: the end's writer takes them unless it is busy.
    fn kick(&mut self, id: u64, n: usize) {
        let Some(e) = self.end_of(id, n) else { return };
        let c = &self.conns[&id];
        if !c.up || c.ends[e].writing.is_some() {
            return;
        }
        if c.ends[e].retiring || c.ends[e].draining {
            return;
        }
        let peer = c.ends[1 - e].node;
        let h = c.ends[e].handle.clone();
        let mut frames = Vec::new();
        let lim = self.nodes[n].lim.clone();
        if let Some(core) = self.nodes[n].remotes.get_mut(&peer) {
            core.take_frames(&lim, &h, &mut frames);
        }
        if frames.is_empty() {
            return;
        }
        let bytes = frames
            .iter()
            .map(|(f, _)| match f {
                Frame::User(p) => PREAMBLE + p.msg().data().len(),
                _ => PREAMBLE,
            })
            .sum();
        let c = self.conns.get_mut(&id).expect("present");
        c.ends[e].writing = Some(Writing {
            frames,
            bytes,
            done: 0,
        });
        self.at(self.now, Ev::Write(id, e));
    }

    /// One chunk of the end's write goes out, as far as the peer's reading allows.
    fn write(&mut self, id: u64, e: usize) {
        let Some(c) = self.conns.get(&id) else { return };
        if c.ends[e].closed || c.dead {
            return;
        }
        let (a, b) = (c.ends[e].node, c.ends[1 - e].node);
        let reader = &self.nodes[b];
        let rate = if reader.behaviour.slow_read {
            SLOW
        } else {
            FAST
        };
        let stopped = c.cut || reader.behaviour.no_read || c.ends[1 - e].blocked;
        let c = self.conns.get_mut(&id).expect("present");
        let Some(w) = c.ends[e].writing.as_mut() else {
            return;
        };
        if c.wires[e].unread >= WIRE_CAP && stopped {
            return; // the socket buffers are full; a read resumes it
        }
        let chunk = CHUNK.min(w.bytes - w.done).min(rate * 50).max(1);
        w.done += chunk;
        c.wires[e].unread += chunk;
        if !stopped {
            // The peer's kernel takes the chunk: progress on both ends (as TCP_INFO counts
            // it). Bytes that only fill the wire while the peer does not read are not.
            c.ends[e].moved += chunk as u64;
            c.ends[1 - e].moved += chunk as u64;
            c.active = self.now;
            self.progress.insert(pair(a, b), self.now);
        }
        let finished = w.done >= w.bytes;
        let spent = (chunk as T * MS) / rate as T;
        if !finished {
            self.at(self.now + spent.max(1), Ev::Write(id, e));
            return;
        }
        // The whole batch is in the wire.
        let w = c.ends[e].writing.take().expect("writing");
        let draining = c.ends[e].draining;
        self.land(id, e, w, spent);
        if draining {
            self.end_of_stream(id, e);
        } else {
            self.kick(id, a);
        }
    }

    /// A write's whole batch is in the socket: it arrives after the latency (plus `spent`),
    /// in order, and the core hears that the write succeeded.
    fn land(&mut self, id: u64, e: usize, w: Writing, spent: T) {
        let c = &self.conns[&id];
        let (a, b) = (c.ends[e].node, c.ends[1 - e].node);
        let mut frames = w.frames;
        let lat = self.latency();
        let c = self.conns.get_mut(&id).expect("present");
        let last = c.wires[e].frames.back().map_or(0, |f| f.0);
        let arrive = (self.now + spent + lat).max(last);
        let mut wire = Vec::new();
        for (f, serial) in &frames {
            match f {
                Frame::User(p) => {
                    let mut m = Message::new(p.msg().data().to_vec());
                    m.identity = p.msg().identity;
                    m.serial = *serial;
                    let req_ack = self.nodes[a].lim.synchronous;
                    wire.push((PREAMBLE + m.data().len(), WFrame::Data(m, req_ack)));
                }
                Frame::Ack(r) => wire.push((PREAMBLE, WFrame::Ack(r.identity))),
                Frame::Noop => wire.push((PREAMBLE, WFrame::Noop)),
            }
        }
        // The bytes were counted as unread chunk by chunk; the frames carry them now.
        c.wires[e].unread -= w.done;
        for (size, f) in wire {
            c.wires[e].unread += size;
            c.wires[e].frames.push_back((arrive, size, f));
        }
        c.ends[e]
            .activity
            .touch(self.base + Duration::from_micros(self.now));
        let h = c.ends[e].handle.clone();
        self.at(arrive, Ev::Read(id, 1 - e));
        let peer = b;
        self.with_core(a, peer, |core, lim, now, _, out| {
            core.written(lim, now, &h, &mut frames, Ok(()), out)
        });
        finish_written(&mut frames);
    }

    /// The end reads what has arrived, as far as its slots and park allow.
    fn read(&mut self, id: u64, e: usize) {
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            if c.ends[e].closed || c.dead {
                return;
            }
            let n = c.ends[e].node;
            let peer = c.ends[1 - e].node;
            let node = &self.nodes[n];
            if c.cut || node.behaviour.no_read || !node.alive || node.gen != c.ends[e].gen {
                return;
            }
            let Some((at, size, f)) = c.wires[1 - e].frames.front() else {
                c.ends[e].blocked = false;
                return;
            };
            if *at > self.now {
                let at = *at;
                self.at(at, Ev::Read(id, e));
                return;
            }
            let (size, cost) = match f {
                WFrame::Data(m, _) => (*size, m.data().len()),
                _ => (*size, 0),
            };
            let admit = match f {
                WFrame::Data(..) => match c.ends[e].slots.try_admit(cost) {
                    Some(Ok(a)) => Some(a),
                    Some(Err(_)) => return,
                    None => {
                        c.ends[e].blocked = true;
                        return; // backpressure: a release wakes the reader
                    }
                },
                _ => None,
            };
            c.ends[e].blocked = false;
            let (_, _, f) = c.wires[1 - e].frames.pop_front().expect("front");
            c.wires[1 - e].unread -= size;
            c.ends[e].moved += size as u64;
            c.ends[1 - e].moved += size as u64;
            c.active = self.now;
            c.ends[e]
                .activity
                .touch(self.base + Duration::from_micros(self.now));
            self.progress.insert(pair(n, peer), self.now);
            // The writer on the other end may go on.
            if c.ends[1 - e].writing.is_some() {
                self.at(self.now, Ev::Write(id, 1 - e));
            }
            match f {
                WFrame::Data(m, req_ack) => {
                    if let Some(&i) = self.by_identity.get(&m.identity) {
                        self.sends[i].read = true;
                    }
                    self.with_core(n, peer, |core, _, now, _, _| core.touch(now));
                    match admit {
                        Some(Admit::Direct) => self.deliver_or_drop(n, id, e, m, req_ack),
                        Some(Admit::Park(cost)) => {
                            let mut out = Vec::new();
                            self.conns[&id].ends[e]
                                .slots
                                .park(m, req_ack, cost, |m, a| out.push((m, a)));
                            for (m, a) in out {
                                self.deliver_or_drop(n, id, e, m, a);
                            }
                        }
                        None => {}
                    }
                }
                WFrame::Ack(identity) => {
                    self.with_core(n, peer, |core, _, now, _, out| {
                        core.ack_received(now, identity, out)
                    });
                }
                WFrame::Noop => self.with_core(n, peer, |core, _, now, _, _| core.touch(now)),
                WFrame::Eof => {
                    // An orderly end: this end closes too (its own end of stream goes
                    // out, which a retiring peer waits for). A write under way finishes
                    // first, within the timeout, as the node's reader waits for it.
                    let c = self.conns.get_mut(&id).expect("present");
                    if c.ends[e].writing.is_some() {
                        c.ends[e].draining = true;
                        let timeout = self.nodes[n].lim.timeout.as_micros() as T;
                        self.at(self.now + timeout, Ev::DrainDeadline(id, e));
                    } else {
                        self.end_of_stream(id, e);
                    }
                    return;
                }
            }
        }
    }

    /// End `e` read the peer's orderly end of stream (and finished its write): it closes,
    /// and its own end of stream goes out.
    fn end_of_stream(&mut self, id: u64, e: usize) {
        let reason = Error::protocol("peer closed the connection");
        self.close_end(id, e, reason, true);
        self.send_eof(id, e, false);
    }

    /// `n` retires connection `id` (garbage collection): no more writes, its end of stream
    /// goes out after what it wrote, it reads until the peer's end of stream; after the
    /// timeout it is shut down.
    fn retire(&mut self, id: u64, n: usize) {
        let Some(e) = self.end_of(id, n) else { return };
        let c = &self.conns[&id];
        if c.ends[e].retiring {
            return;
        }
        // Garbage collection never cuts a connection that is making progress or is held
        // back by backpressure.
        let moved = self.now - c.active;
        let reuse = self.nodes[n].lim.reuse_time.as_micros() as T;
        if c.up && moved <= reuse {
            let what = format!(
                "node {n} retired connection {id}, whose peer moved bytes {}ms ago (reuse \
                 time {}ms)",
                moved / MS,
                reuse / MS
            );
            self.violation(what);
        }
        if self.conns[&id].ends[e].slots.held() {
            self.violation(format!(
                "node {n} retired connection {id}, whose received messages hold its slots"
            ));
        }
        let c = self.conns.get_mut(&id).expect("present");
        c.ends[e].retiring = true;
        self.send_eof(id, e, false);
        let timeout = self.nodes[n].lim.timeout.as_micros() as T;
        self.at(self.now + timeout, Ev::RetireDeadline(id, n));
    }

    /// `n` shuts connection `id` down: its end closes now, the other end reads an EOF
    /// after what is in flight (or at once, if `reset`).
    fn shutdown(&mut self, id: u64, n: usize, reason: Error, reset: bool) {
        let Some(e) = self.end_of(id, n) else { return };
        self.close_end(id, e, reason.clone(), false);
        self.send_eof(id, e, reset);
    }

    /// End `e` sends its end of stream after what it wrote (or resets the connection).
    fn send_eof(&mut self, id: u64, e: usize, reset: bool) {
        let lat = self.latency();
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if reset || !c.up {
            c.dead = true;
            c.wires = Default::default();
            if !c.ends[1 - e].closed {
                self.close_end(id, 1 - e, Error::protocol("connection reset"), false);
            }
            return;
        }
        let last = c.wires[e].frames.back().map_or(0, |f| f.0);
        c.wires[e]
            .frames
            .push_back(((self.now + lat).max(last), 0, WFrame::Eof));
        let at = (self.now + lat).max(last);
        self.at(at, Ev::Read(id, 1 - e));
    }

    /// One end of a connection closes with `reason`: its node's remote hears of it (and of
    /// the write that was in flight), nothing more is admitted, what was parked stays.
    fn close_end(&mut self, id: u64, e: usize, reason: Error, clean: bool) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.ends[e].closed {
            return;
        }
        c.ends[e].closed = true;
        c.ends[e].ended_clean = clean && c.up;
        c.ends[e]
            .handle
            .reason
            .borrow_mut()
            .get_or_insert(reason.clone());
        let clean = clean && c.up;
        c.ends[e].slots.close();
        let n = c.ends[e].node;
        let peer = c.ends[1 - e].node;
        let writing = c.ends[e].writing.take();
        let h = c.ends[e].handle.clone();
        let closing = self.nodes[n].closing || !self.nodes[n].alive;
        if self.nodes[n].gen != c.ends[e].gen {
            // A crashed incarnation's end: its node forgot it.
            self.gc_conn(id);
            return;
        }
        let in_flight = writing.is_some();
        let ended = Ended {
            conn: id,
            reason: &reason,
            in_flight,
            clean,
            closing,
        };
        self.with_core(n, peer, |core, lim, now, _, out| {
            core.conn_closed(lim, now, ended, out)
        });
        if let Some(w) = writing {
            let mut frames = w.frames;
            self.with_core(n, peer, |core, lim, now, _, out| {
                core.written(lim, now, &h, &mut frames, Err(reason.clone()), out)
            });
            // Frames of a removed remote: dropping fails them.
            drop(frames);
        }
        self.gc_conn(id);
    }

    fn gc_conn(&mut self, id: u64) {
        let done = self.conns.get(&id).is_some_and(|c| {
            c.ends
                .iter()
                .all(|e| e.closed && e.slots.used() == 0 && !e.slots.held())
        });
        if done {
            self.conns.remove(&id);
        }
    }

    // --- faults ----------------------------------------------------------------------

    fn fault(&mut self, i: usize, start: bool) {
        let (fault, ..) = self.faults[i];
        match fault {
            Fault::Partition(a, b) => {
                self.nodes[a].faulty = true;
                self.nodes[b].faulty = true;
                let ids: Vec<u64> = self.conns.keys().copied().collect();
                for id in ids {
                    let c = self.conns.get_mut(&id).expect("listed");
                    if pair(c.ends[0].node, c.ends[1].node) == pair(a, b) {
                        c.cut = start;
                        if !start {
                            self.at(self.now, Ev::Read(id, 0));
                            self.at(self.now, Ev::Read(id, 1));
                            self.at(self.now, Ev::Write(id, 0));
                            self.at(self.now, Ev::Write(id, 1));
                        }
                    }
                }
            }
            Fault::Reset(a, b) if start => {
                self.nodes[a].faulty = true;
                self.nodes[b].faulty = true;
                let ids: Vec<u64> = self.conns.keys().copied().collect();
                for id in ids {
                    let c = &self.conns[&id];
                    if pair(c.ends[0].node, c.ends[1].node) == pair(a, b) {
                        let reason = Error::protocol("connection reset by peer");
                        self.shutdown(id, a, reason, true);
                    }
                }
            }
            Fault::Reset(..) => {}
            Fault::Behave(n, b) => {
                self.nodes[n].faulty = true;
                self.nodes[n].behaviour = if start { b } else { Behaviour::default() };
                if !start {
                    self.resume(n);
                }
            }
            Fault::Pause(n) => {
                self.nodes[n].faulty = true;
                if start {
                    // Pauses may overlap: the node resumes when the last one ends (events
                    // deferred by the longer pause are not pulled forward by a shorter one).
                    let (_, s, h) = self.faults[i];
                    let until = self.now + (h - s);
                    let node = &mut self.nodes[n];
                    node.paused_until = node.paused_until.max(until);
                }
            }
            Fault::Crash(n) if start => self.stop_node(n, true),
            Fault::Close(n) if start => self.stop_node(n, false),
            Fault::Crash(n) | Fault::Close(n) => self.restart(n),
        }
    }

    /// After a fault heals: held messages are released, readers and writers go on.
    fn resume(&mut self, n: usize) {
        let gen = self.nodes[n].gen;
        let holds: Vec<u64> = self.nodes[n].held.keys().copied().collect();
        for h in holds {
            self.at(self.now, Ev::Release(n, gen, h));
        }
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            for e in 0..2 {
                self.at(self.now, Ev::Read(id, e));
                self.at(self.now, Ev::Write(id, e));
            }
        }
    }

    /// Close (orderly) or crash (abrupt) node `n`.
    fn stop_node(&mut self, n: usize, crash: bool) {
        if !self.nodes[n].alive {
            return;
        }
        self.nodes[n].faulty = true;
        self.nodes[n].closing = true;
        let peers: Vec<usize> = self.nodes[n].remotes.keys().copied().collect();
        for peer in peers {
            let mut core = self.nodes[n].remotes.remove(&peer).expect("listed");
            let mut out = Actions::default();
            core.remove(false, &mut out);
            self.run_actions(n, out);
        }
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            self.shutdown(id, n, Error::Shutdown, crash);
        }
        // What its application held is released with it (nothing more is delivered).
        let holds: Vec<u64> = self.nodes[n].held.keys().copied().collect();
        let gen = self.nodes[n].gen;
        for h in holds {
            self.release(n, gen, h);
        }
        self.nodes[n].alive = false;
        self.nodes[n].outstanding = 0;
    }

    fn restart(&mut self, n: usize) {
        if self.nodes[n].alive {
            return;
        }
        if !self.nodes[n].remotes.is_empty() {
            let peers: Vec<usize> = self.nodes[n].remotes.keys().copied().collect();
            self.violation(format!(
                "node {n} kept remotes {peers:?} across its stop: a stopped node makes none"
            ));
            self.nodes[n].remotes.clear();
        }
        let node = &mut self.nodes[n];
        node.gen += 1;
        node.alive = true;
        node.closing = false;
        node.behaviour = Behaviour::default();
        let gen = node.gen;
        self.at(self.now, Ev::Work(n));
        let r = self.reuse(n);
        self.at(self.now + r / 2, Ev::Gc(n, gen));
    }

    // --- properties ------------------------------------------------------------------

    /// Checked every 10 ms of simulated time: no remote queues more than `max_queued`, and
    /// no send waits longer than 2.5 × timeout without its peer making progress.
    fn check_now(&mut self) {
        // `max_queued` holds.
        let mut over = Vec::new();
        for (n, node) in self.nodes.iter().enumerate() {
            for (peer, core) in &node.remotes {
                let (queued, ..) = core.observe();
                if queued > node.lim.max_queued {
                    over.push(format!(
                        "node {n} queues {queued} messages for {peer}, over its max_queued of {}",
                        node.lim.max_queued
                    ));
                }
            }
        }
        for what in over.into_iter().take(3) {
            self.violation(what);
        }
        let mut late = Vec::new();
        for &i in &self.open {
            let s = &self.sends[i];
            if s.late || !self.nodes[s.from].alive || self.nodes[s.from].closing {
                continue;
            }
            // A paused sender cannot act: its sends' bound counts from its resumption.
            let from = &self.nodes[s.from];
            if from.paused_until > self.now {
                continue;
            }
            // The README's bound, 2.5 x timeout, and the sweep's own period.
            let bound = 5 * from.lim.timeout.as_micros() as T / 2 + 10 * MS;
            let progress = self.progress.get(&pair(s.from, s.to)).copied().unwrap_or(0);
            let since = s.at.max(progress).max(from.paused_until);
            if self.now > since + bound {
                late.push((i, s.from, s.to, (self.now - s.at) / MS));
            }
        }
        for (i, from, to, waited) in late.into_iter().take(3) {
            self.violation(format!(
                "send {i} {from}->{to} has waited {waited}ms, over 2.5 x timeout since its \
                 peer last made progress"
            ));
            self.sends[i].late = true;
        }
    }

    /// The end of the run: the workload is over and every fault healed. A probe from
    /// every live node to every other must be delivered; then every node closes. Checks
    /// what must hold at quiescence.
    fn finish(mut self) -> Report {
        // Liveness after healing: one synchronous-or-not probe per ordered pair.
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| self.nodes[n].alive)
            .collect();
        // Each ordered pair of live nodes must deliver again: a probe, retried (up to five
        // times) while the aftermath of the faults plays out.
        let pairs: Vec<(usize, usize)> = live
            .iter()
            .flat_map(|&a| live.iter().filter(move |&&b| b != a).map(move |&b| (a, b)))
            .collect();
        for &a in &live {
            self.nodes[a].behaviour = Behaviour::default();
            self.nodes[a].paused_until = 0;
        }
        for &a in &live {
            self.resume(a);
        }
        let deadline = self.now + 30 * SEC;
        let mut failed_pairs = Vec::new();
        for (a, b) in pairs {
            let mut delivered = false;
            for _ in 0..5 {
                let probe = self.sends.len();
                self.send(a, b, 1);
                while self.sends[probe].done.is_none() {
                    let Some(q) = self.queue.pop() else { break };
                    if q.at > deadline {
                        break;
                    }
                    self.step(q);
                }
                if matches!(self.sends[probe].done, Some((_, Ok(())))) {
                    delivered = true;
                    break;
                }
            }
            if !delivered {
                failed_pairs.push((a, b));
            }
        }
        // Let the network and the applications settle.
        while let Some(q) = self.queue.pop() {
            if q.at > deadline {
                break;
            }
            self.step(q);
            let idle_network = self.conns.values().all(|c| {
                c.dead
                    || c.wires.iter().all(|w| w.frames.is_empty())
                        && c.ends.iter().all(|e| e.writing.is_none())
            });
            if self
                .nodes
                .iter()
                .all(|n| n.held.is_empty() && (!n.alive || n.outstanding == 0))
                && idle_network
            {
                break;
            }
        }
        for (a, b) in failed_pairs {
            self.violation(format!(
                "after every fault healed, {a}->{b} did not deliver a probe in five tries"
            ));
        }
        // Nothing read is lost: every message a live receiver read reached its application.
        let lost: Vec<usize> = self
            .sends
            .iter()
            .enumerate()
            .filter(|(_, s)| s.read && s.delivered == 0 && !s.receiver_gone)
            .filter(|(_, s)| self.nodes[s.to].alive)
            .map(|(i, _)| i)
            .collect();
        for i in lost.into_iter().take(3) {
            let s = &self.sends[i];
            let what = format!(
                "send {i} {}->{} was read by its receiver but never delivered to the application",
                s.from, s.to
            );
            self.violation(what);
        }
        // Without a fault on either side, an asynchronous success was delivered.
        let lost: Vec<usize> = (0..self.sends.len())
            .filter(|&i| {
                let s = &self.sends[i];
                !s.sync
                    && matches!(s.done, Some((_, Ok(()))))
                    && s.delivered == 0
                    && !self.nodes[s.from].faulty
                    && !self.nodes[s.to].faulty
            })
            .collect();
        if let Some(&i) = lost.first() {
            let s = format!("{:?}", self.sends[i]);
            self.violation(format!(
                "{} asynchronous sends were written without a fault but never delivered, e.g. {s}",
                lost.len()
            ));
        }
        // Close every node, in order; everything must complete and nothing may remain.
        for n in 0..self.nodes.len() {
            self.stop_node(n, false);
        }
        while let Some(q) = self.queue.pop() {
            self.step(q);
            if self.now > deadline + 60 * SEC {
                break;
            }
        }
        let open: Vec<usize> = (0..self.sends.len())
            .filter(|&i| self.sends[i].done.is_none())
            .collect();
        if let Some(&i) = open.first() {
            let s = format!("{:?}", self.sends[i]);
            self.violation(format!("{} sends never completed, e.g. {s}", open.len()));
        }
        let (released, finished) = *self.releases.lock().unwrap();
        if released != finished {
            self.violation(format!("{released} releases, {finished} completed"));
        }
        if !self.conns.is_empty() {
            let left = self.conns.len();
            let (id, c) = self.conns.iter().next().expect("one");
            let what = format!(
                "e.g. {id}: up {} dead {} ends {:?}",
                c.up,
                c.dead,
                c.ends
                    .iter()
                    .map(|e| (
                        e.node,
                        e.closed,
                        e.slots.used(),
                        e.slots.held(),
                        e.writing.is_some()
                    ))
                    .collect::<Vec<_>>()
            );
            self.violation(format!("{left} connections left after close: {what}"));
        }
        let remotes: usize = self.nodes.iter().map(|n| n.remotes.len()).sum();
        if remotes > 0 {
            self.violation(format!("{remotes} remotes left after close"));
        }
        let ok = self
            .sends
            .iter()
            .filter(|s| matches!(s.done, Some((_, Ok(())))))
            .count();
        Report {
            seed: self.seed,
            trace: self.trace.finish(),
            messages: self.sends.len(),
            events: self.events,
            ok,
            failed: self.sends.len() - ok,
            delivered: self.sends.iter().map(|s| s.delivered as usize).sum(),
            faults: self.faults.len(),
            refused: self.refused,
            violations: self.violations,
        }
    }
}

fn new_handle(next: &Cell<u64>) -> H {
    let id = next.get();
    next.set(id + 1);
    H {
        id,
        reason: Rc::new(RefCell::new(None)),
    }
}

/// Runs `seed` and returns its report.
pub(crate) fn run_seed(seed: u64) -> Report {
    Sim::new(seed).run()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU time this thread has used (the simulator runs on one thread).
    fn thread_cpu() -> Duration {
        // SAFETY: an all-zero timespec is valid, and clock_gettime writes one through a
        // pointer to it that lives across the call.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: see above; CLOCK_THREAD_CPUTIME_ID is always available on Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    fn seeds_from_env() -> Option<Vec<u64>> {
        let one = std::env::var("CHIRP_SIM_SEED").ok()?;
        Some(vec![one.parse().expect("CHIRP_SIM_SEED is a number")])
    }

    /// What a set of seeds did: messages sent, of them refused for `max_queued`.
    #[derive(Default, Debug)]
    struct Totals {
        messages: usize,
        refused: usize,
    }

    /// Runs the seeds; panics with every failing seed's report. Returns what they did.
    fn check(seeds: impl IntoIterator<Item = u64>) -> Totals {
        let mut t = Totals::default();
        let mut failed = Vec::new();
        for seed in seeds {
            let r = run_seed(seed);
            if std::env::var_os("CHIRP_SIM_VERBOSE").is_some() {
                println!(
                    "seed {}: {} messages ({} ok, {} failed, {} delivered, {} refused), {} \
                     faults, {} events",
                    r.seed, r.messages, r.ok, r.failed, r.delivered, r.refused, r.faults, r.events
                );
            }
            t.messages += r.messages;
            t.refused += r.refused;
            if r.violations.is_empty() {
                continue;
            }
            let report = format!(
                "seed {} (replay: scripts/sim.sh --seed {}):\n  {}",
                r.seed,
                r.seed,
                r.violations.join("\n  ")
            );
            failed.push(report);
        }
        assert!(failed.is_empty(), "{}", failed.join("\n"));
        t
    }

    /// Seeds that fresh exploration found failing once, each with what it found; they run
    /// with every regression set.
    const FOUND: &[u64] = &[
        // A node closed while paused: releasing what its application held let a parked
        // message be delivered to the closing node, held across its restart, never released.
        714_397_003_424_035_058,
        // A connection replaced by the peer's own while its writer held a batch, then cut:
        // the stall check shut down only the current connection, and the replaced one's
        // messages waited for the partition to heal, past the outcome bound.
        6_102_522_731_837_709_846,
        // A synchronous send written on an idle connection just as the peer's garbage
        // collection retired it: the peer's end of stream crossed the message, which the
        // peer delivered but could not acknowledge on that connection, and the send failed
        // with "peer closed the connection". Now it waits for its ACK on a new connection.
        7_487_452_059_835_064_340,
        8_279_208_436_807_565_487,
        8_279_208_436_807_567_706,
        8_279_208_436_807_549_051,
        8_279_208_436_807_555_379,
        8_279_208_436_807_600_553,
        // The first attempt at that fix: a node crashing while its application held a
        // message released it with an ACK through a new remote, which outlived the crash
        // with a connection its new incarnation never heard of (its sends waited forever).
        11_293_403_243_967_242_318,
        // A bug of the simulator, not the core: a shorter pause overlapping a longer one
        // cut the node's pause short for the checker while its deferred events still
        // waited for the longer one, so its sends looked late.
        9_597_732_526_550_230_947,
        // A remote with no current connection (its own was cut by the stall check) was
        // collected while the peer's connection to it still moved bytes: garbage
        // collection retired a connection making progress.
        15_114_638_660_076_859_177,
        // The peer's garbage collection retired an idle connection just as a write began
        // on it: its end of stream failed the messages of the write under way ("peer
        // closed the connection"), asynchronous and synchronous, though the retiring peer
        // reads on until our end of stream. Now the write finishes first.
        14_464_242_961_216_277_400,
        12_787_895_056_629_684_146,
        // A bug of the simulator: a connection's activity did not count its handshake (the
        // node's does), so one whose handshake took long looked idle since its dial.
        3_346_147_127_099_436_323,
        // A peer partitioned away and its connections reset while they dialed: each stall
        // check met a new, still dialing connection and put its verdict off, so sends
        // waited past the outcome bound. A dialing connection no longer defers it.
        15_064_546_811_791_152_716,
        // A stall verdict that left a message awaiting its ACK (its connection had ended
        // cleanly) did not re-arm the check, and `wake` arms it only on a quiet remote:
        // sends queued after the verdict, while the peer was down, had no check at all.
        12_631_870_543_077_014_482,
        12_631_870_543_077_072_534,
    ];

    /// The fixed regression set: seeds 1..=40 on every `cargo test` (a debug build), all
    /// of 1..=`CHIRP_SIM_REGRESSION` in `scripts/sim.sh` (CI: 200, release build), and the
    /// seeds exploration found (`FOUND`).
    #[test]
    fn sim_regression_seeds_keep_every_property() {
        let replay = seeds_from_env();
        let whole_set = replay.is_none();
        let last: u64 = std::env::var("CHIRP_SIM_REGRESSION")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(40);
        let t = check(replay.unwrap_or_else(|| (1..=last).chain(FOUND.iter().copied()).collect()));
        if whole_set {
            assert!(
                t.messages > 10_000 && t.refused > 0,
                "the seeds sent only {} messages, {} refused for max_queued (a quarter of the \
                 nodes have a short queue)",
                t.messages,
                t.refused
            );
        }
    }

    /// Fresh seeds for as long as `CHIRP_SIM_SECONDS` says (scripts/sim.sh; CI runs it).
    #[test]
    #[ignore = "explores fresh seeds: scripts/sim.sh --seeds N or CHIRP_SIM_SECONDS"]
    fn sim_explore_fresh_seeds() {
        let secs: u64 = std::env::var("CHIRP_SIM_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10);
        let count: Option<u64> = std::env::var("CHIRP_SIM_SEEDS")
            .ok()
            .and_then(|s| s.parse().ok());
        let start = crate::rand::u64();
        let t0 = Instant::now();
        let cpu0 = thread_cpu();
        let mut n = 0u64;
        let mut messages = 0;
        // A survey (`scripts/sim.sh --survey`) goes on past failing seeds and lists them.
        let survey = std::env::var_os("CHIRP_SIM_SURVEY").is_some();
        let mut failing = 0u64;
        loop {
            let seed = start.wrapping_add(n);
            if survey {
                let r = run_seed(seed);
                messages += r.messages;
                if let Some(first) = r.violations.first() {
                    failing += 1;
                    println!("seed {seed}: {first}");
                }
            } else {
                messages += check([seed]).messages;
            }
            n += 1;
            let done = match count {
                Some(c) => n >= c,
                None => t0.elapsed() >= Duration::from_secs(secs),
            };
            if done {
                break;
            }
        }
        let cpu = (thread_cpu() - cpu0).as_secs_f64();
        let rate = messages as f64 / cpu;
        println!(
            "{n} fresh seeds from {start}: {messages} simulated messages in {cpu:.1} CPU-s, \
             {rate:.0} messages per CPU-second"
        );
        assert_eq!(failing, 0, "{failing} of {n} seeds failed (listed above)");
    }

    /// The same seed gives the same run: the traces of two runs hash alike.
    #[test]
    fn sim_a_seed_replays_exactly() {
        for seed in [7, 42, 1234] {
            let a = run_seed(seed);
            let b = run_seed(seed);
            assert_eq!(
                (a.trace, a.events, a.messages),
                (b.trace, b.events, b.messages),
                "seed {seed} ran differently twice"
            );
        }
        assert_ne!(run_seed(1).trace, run_seed(2).trace, "two seeds ran alike");
    }
}
