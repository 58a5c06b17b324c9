//! Hostile input, faults and load, end to end (issue 8). The tests in this binary count the
//! process's threads and file descriptors, so they run one at a time (SERIAL).
// Its own test binary: these tests count the whole process's threads and descriptors.
#[path = "integration/support/mod.rs"]
mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libchirp::wire::{Handshake, Preamble, TYPE_ACK};
use libchirp::{Error, Identity, Message, Node};
use support::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits until the process's threads and descriptors are back to `base` (within a few
/// test-harness threads of slack for threads that are exiting right now).
fn back_to_baseline(base: (usize, usize)) {
    let ok = eventually(Duration::from_secs(15), || {
        thread_count() <= base.0 && fd_count() <= base.1
    });
    if !ok {
        let names: Vec<String> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
            .collect();
        panic!(
            "threads {} (baseline {}), fds {} (baseline {}); threads: {names:?}",
            thread_count(),
            base.0,
            fd_count(),
            base.1
        );
    }
}

/// SO_LINGER 0: closing the socket sends a reset instead of a FIN.
fn reset_on_close(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn hs(port: u16) -> Vec<u8> {
    Handshake {
        port,
        identity: Identity::random(),
    }
    .encode()
    .to_vec()
}

fn pre(kind: u8, header_len: u16, data_len: u32) -> Vec<u8> {
    Preamble {
        identity: Identity::random(),
        serial: 1,
        data_len,
        header_len,
        kind_bits: kind,
    }
    .encode()
    .to_vec()
}

#[test]
fn hostile_peers_do_not_disturb_a_good_one_and_leave_nothing_behind() {
    let _g = serial();
    let base = (thread_count(), fd_count());
    let mut c = config(true);
    c.timeout = Duration::from_millis(500); // partial frames and missing handshakes end in 1 s
    let echo = echo_node(c);
    let addr = v4(&echo);
    let (good, inbox) = inbox_node(config(true));
    let behaviours: Vec<Box<dyn Fn(u64) -> Vec<u8> + Send + Sync>> = vec![
        Box::new(|n| {
            (0..512)
                .map(|i| ((i * 7919 + n * 104729) % 256) as u8)
                .collect()
        }), // random bytes
        Box::new(|_| hs(4000)[..7].to_vec()), // partial handshake
        Box::new(|n| [hs(4001 + n as u16), pre(0, 1, u32::MAX)].concat()), // 1 + 0xFFFFFFFF
        Box::new(|n| [hs(4001 + n as u16), pre(0, 0, 200 * 1024 * 1024)].concat()), // oversized
        Box::new(|n| [hs(4001 + n as u16), pre(TYPE_ACK, 0, 5), b"xxxxx".to_vec()].concat()), // ACK with payload
        Box::new(|n| [hs(4001 + n as u16), pre(1, 0, 1000), vec![1; 100]].concat()), // partial frame, then nothing
        Box::new(|_| Vec::new()), // connect and reset
    ];
    let behaviours = Arc::new(behaviours);
    let served = Arc::new(AtomicUsize::new(0));
    let attackers: Vec<_> = (0..4)
        .map(|t| {
            let behaviours = behaviours.clone();
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for n in 0..75u64 {
                    let i = (n as usize + t) % behaviours.len();
                    if let Ok(mut s) = TcpStream::connect(addr) {
                        let bytes = behaviours[i](n + 100 * t as u64);
                        let _ = s.write_all(&bytes);
                        if bytes.is_empty() {
                            reset_on_close(&s); // reset at once
                        } else {
                            held.push(s); // keep it open: stalled peers
                        }
                    }
                }
                held
            })
        })
        .collect();
    // Meanwhile the good peer keeps getting answers.
    let mut answers = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while answers < 50 && Instant::now() < deadline {
        let s = good.send(Message::to(addr, b"still there?".to_vec()));
        let m = recv(&inbox, "echo for the good peer");
        assert_eq!(m.data(), b"still there?");
        drop(m);
        s.wait().expect("good peer served");
        answers += 1;
        served.fetch_add(1, Ordering::Relaxed);
    }
    let held: Vec<TcpStream> = attackers
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    // 300 attacks, one in seven resets at once; the others stay connected until closed.
    assert!(held.len() >= 250, "{} stalled attackers", held.len());
    // Stalled and partial peers are closed by the node (handshake/partial-frame deadlines).
    let stalled = held.len();
    let closed = held
        .into_iter()
        .filter(|s| {
            support::raw::closed_within(&mut s.try_clone().unwrap(), Duration::from_secs(10))
        })
        .count();
    assert_eq!(
        closed, stalled,
        "every stalled or hostile connection is closed by the node"
    );
    assert!(served.load(Ordering::Relaxed) >= 50);
    assert!(
        eventually(Duration::from_secs(10), || echo.connection_count() == 1),
        "only the good peer's connection remains: {}",
        echo.connection_count()
    );
    good.close();
    echo.close();
    back_to_baseline(base);
}

#[test]
fn a_peer_that_stops_reading_times_the_sender_out_and_close_is_prompt() {
    let _g = serial();
    let base = (thread_count(), fd_count());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut c = config(false);
    c.timeout = Duration::from_millis(500);
    let (node, _) = inbox_node(c);
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let first = node.send(Message::to(to, vec![0u8; 1 << 20]));
    let mut raw = support::raw::Raw::accept(&listener); // handshakes, then never reads
    let t = Instant::now();
    let mut sends = vec![first];
    for _ in 0..16 {
        sends.push(node.send(Message::to(to, vec![0u8; 1 << 20])));
    }
    // The write that cannot progress times out (socket buffers full, peer not reading).
    let mut rest = Vec::new();
    let mut first_error = None;
    for s in sends {
        if first_error.is_some() {
            rest.push(s);
            continue;
        }
        if let Err(e) = s.wait() {
            first_error = Some(e.error().clone());
        }
    }
    let first_error = first_error.expect("a send fails");
    assert!(first_error.is_timeout(), "{first_error}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // Another peer is unaffected.
    let echo = echo_node(config(false));
    let (other, inbox) = inbox_node(config(false));
    other
        .send(Message::to(v4(&echo), b"fine".to_vec()))
        .wait()
        .unwrap();
    assert_eq!(recv(&inbox, "echo").data(), b"fine");
    let t = Instant::now();
    node.close();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "close is prompt: {:?}",
        t.elapsed()
    );
    for s in rest {
        // Queued behind the stuck connection: failed by the close (or by a timeout).
        let e = s.wait().unwrap_err();
        assert!(
            matches!(e.error(), Error::Shutdown | Error::Timeout { .. }),
            "{e}"
        );
    }
    other.close();
    echo.close();
    drop(raw.stream.flush());
    drop(raw);
    drop(listener);
    back_to_baseline(base);
}

#[test]
fn load_32_senders_and_200_connections_exactly_once_in_order() {
    let _g = serial();
    let base = (thread_count(), fd_count());
    for sync in [false, true] {
        let mut rc = config(sync);
        rc.max_slots = 32;
        rc.timeout = Duration::from_secs(20);
        let (receiver, rx) = inbox_node(rc);
        let to = v4(&receiver);
        let mut sc = config(sync);
        sc.timeout = Duration::from_secs(20);
        // 32 threads × 65 outstanding sends to one peer through one node: more than the
        // default per-remote queue bound (1,024), which this load test is not about.
        sc.max_queued = 32 * 65;
        // Asynchronous: all 32 threads share one sender node. Synchronous: a node per
        // thread, since one node has one message in flight per peer.
        let shared = inbox_node(sc.clone()).0;
        let senders: Vec<Node> = (0..32)
            .map(|_| {
                if sync {
                    inbox_node(sc.clone()).0
                } else {
                    shared.clone()
                }
            })
            .collect();
        let per = 2000;
        let threads: Vec<_> = (0..32u32)
            .map(|t| {
                let sender = senders[t as usize].clone();
                std::thread::spawn(move || {
                    let mut pending = std::collections::VecDeque::new();
                    for i in 0..per as u32 {
                        let mut m = Message::to(to, [t.to_be_bytes(), i.to_be_bytes()].concat());
                        m.set_header(b"load".to_vec());
                        pending.push_back(sender.send(m));
                        if pending.len() > 64 {
                            pending.pop_front().unwrap().wait().expect("load send");
                        }
                    }
                    for p in pending {
                        p.wait().expect("load send");
                    }
                })
            })
            .collect();
        // 200 more connections from distinct peers, 5 messages each.
        let extra: Vec<_> = (0..200u16)
            .map(|p| {
                std::thread::spawn(move || {
                    let mut raw = support::raw::Raw::connect(to, 20000 + p);
                    for i in 0..5u32 {
                        raw.send_frame(
                            Identity::random(),
                            i,
                            0,
                            b"extra",
                            &[(p as u32).to_be_bytes(), i.to_be_bytes()].concat(),
                        );
                    }
                    raw
                })
            })
            .collect();
        let mut next = [0u32; 32];
        let mut extra_seen = vec![0u32; 200];
        let total = 32 * per + 200 * 5;
        for _ in 0..total {
            let m = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("every message delivered");
            let d = m.data();
            let a = u32::from_be_bytes(d[..4].try_into().unwrap()) as usize;
            let b = u32::from_be_bytes(d[4..8].try_into().unwrap());
            if m.header() == b"load" {
                assert_eq!(b, next[a], "sender thread {a}: order kept, nothing twice");
                next[a] += 1;
            } else {
                assert_eq!(b, extra_seen[a], "extra peer {a}: order kept");
                extra_seen[a] += 1;
            }
        }
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "nothing more than sent"
        );
        for t in threads {
            t.join().unwrap();
        }
        let raws: Vec<_> = extra.into_iter().map(|t| t.join().unwrap()).collect();
        drop(raws);
        for s in senders {
            s.close();
        }
        shared.close();
        receiver.close();
    }
    back_to_baseline(base);
}

#[test]
fn no_silent_loss_while_the_receiver_restarts_twice() {
    let _g = serial();
    let base = (thread_count(), fd_count());
    let mut rc = config(true);
    rc.timeout = Duration::from_secs(2);
    let received = Arc::new(Mutex::new(Vec::<u32>::new()));
    // The receiver records every message it gets (the sink runs before the release, so a
    // recorded message may still have its ACK lost when the node dies).
    let start_receiver = |rc: &libchirp::Config| -> Node {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let received = received.clone();
            match Node::start(rc.clone(), move |m: Message| {
                received
                    .lock()
                    .unwrap()
                    .push(u32::from_be_bytes(m.data().try_into().unwrap()));
            }) {
                Ok(node) => return node,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "cannot restart the receiver: {e}"
                    );
                    std::thread::park_timeout(Duration::from_millis(20));
                }
            }
        }
    };
    let mut receiver = start_receiver(&rc);
    rc.port = receiver.port();
    let to = SocketAddr::from(([127, 0, 0, 1], rc.port));
    let mut sc = config(true);
    sc.timeout = Duration::from_secs(2);
    let (sender, _) = inbox_node(sc);
    let n = 4_000u32;
    // The sender streams on its own thread while the receiver is killed under it.
    let streaming = {
        let sender = sender.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (Vec::new(), Vec::new());
            for i in 0..n {
                match sender
                    .send(Message::to(to, i.to_be_bytes().to_vec()))
                    .wait()
                {
                    Ok(_) => ok.push(i),
                    Err(e) => failed.push((i, e.error().clone())),
                }
            }
            (ok, failed)
        })
    };
    for k in 1..=2u32 {
        let mark = (k * n / 3) as usize;
        assert!(
            eventually(Duration::from_secs(60), || received.lock().unwrap().len()
                >= mark),
            "stream stalled before restart {k}"
        );
        receiver.close(); // mid-stream: a message is usually in flight
        receiver = start_receiver(&rc);
    }
    let (ok, failed) = streaming.join().unwrap();
    receiver.close();
    sender.close();
    let got = received.lock().unwrap().clone();
    let got_set: std::collections::HashSet<u32> = got.iter().copied().collect();
    // 1. Nothing completed is lost.
    for i in &ok {
        assert!(
            got_set.contains(i),
            "message {i} completed but was never received"
        );
    }
    // 2. Every send ended one way or the other.
    assert_eq!(ok.len() + failed.len(), n as usize);
    // 3. The library never resends, so nothing arrives twice. The one case the protocol
    //    allows is a message received whose ACK died with the receiver: its send reports an
    //    error although it arrived ("received but failed"), never a duplicate.
    assert_eq!(got.len(), got_set.len(), "no message received twice");
    let received_but_failed = failed.iter().filter(|(i, _)| got_set.contains(i)).count();
    assert!(
        failed.len() < n as usize / 10,
        "only messages around the restarts fail: {}",
        failed.len()
    );
    eprintln!(
        "no-silent-loss: {} completed, {} failed with an error ({} of them had arrived), {} received",
        ok.len(),
        failed.len(),
        received_but_failed,
        got.len()
    );
    back_to_baseline(base);
}

#[test]
fn close_leaves_no_thread_or_socket() {
    let _g = serial();
    let base = (thread_count(), fd_count());
    for _ in 0..3 {
        let echo = echo_node(config(true));
        let (sender, inbox) = inbox_node(config(true));
        for _ in 0..10 {
            let s = sender.send(Message::to(v6(&echo), b"x".to_vec()));
            drop(recv(&inbox, "echo"));
            s.wait().unwrap();
        }
        assert!(thread_count() > base.0);
        sender.close();
        echo.close();
        assert_eq!(sender.thread_count(), 0);
        assert_eq!(echo.thread_count(), 0);
    }
    back_to_baseline(base);
}

/// A small deterministic generator for the reader fuzz (seeded, so failures reproduce).
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Arbitrary bytes through real sockets into the real reader (issue 8, item 1, end to end):
/// CHIRP_FUZZ_CONNECTIONS connections (default 1,000; CI: 3,000) of structured random input — with or
/// without a valid handshake, random and mutated preambles with every type bit, random
/// lengths up to past the maximum, truncated anywhere. The node must not panic, must close
/// every such connection, must keep serving, and must end with no thread or socket left.
#[test]
fn fuzzed_streams_through_the_real_reader() {
    let _g = serial();
    let base = (thread_count(), fd_count());
    let n: u64 = std::env::var("CHIRP_FUZZ_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut c = config(false);
    c.timeout = Duration::from_millis(300);
    c.max_msg_size = 4096;
    c.max_slots = 4;
    let node = Node::start(c, drop).unwrap();
    let addr = v4(&node);
    let mut g = Gen(0x9E37_79B9_7F4A_7C15);
    let mut open = std::collections::VecDeque::new();
    for case in 0..n {
        let mut bytes = Vec::new();
        if g.below(4) != 0 {
            bytes.extend(hs(1 + g.below(60000) as u16));
        }
        for _ in 0..g.below(6) {
            match g.below(4) {
                0 => bytes.extend((0..g.below(300)).map(|_| g.next() as u8)),
                _ => {
                    let kind = [0u8, 1, 2, 4, 3, 5, 6, 0x80, g.next() as u8][g.below(9) as usize];
                    let header_len = [0u16, 1, 20, u16::MAX][g.below(4) as usize];
                    let data_len = [0u32, 5, 100, 4096, 5000, u32::MAX][g.below(6) as usize];
                    bytes.extend(pre(kind, header_len, data_len));
                    let payload = (u64::from(header_len) + u64::from(data_len)).min(600);
                    bytes.extend((0..g.below(payload + 1)).map(|_| g.next() as u8));
                }
            }
        }
        bytes.truncate(g.below(bytes.len() as u64 + 1) as usize);
        let mut s = TcpStream::connect(addr).expect("connect");
        let _ = s.write_all(&bytes);
        if g.below(3) == 0 {
            reset_on_close(&s);
        }
        if g.below(2) == 0 {
            drop(s); // gone at once
        } else {
            open.push_back(s); // left open: the node must close it (deadlines) or get EOF later
        }
        if open.len() > 64 {
            open.pop_front();
        }
        if case % 500 == 499 {
            assert!(!node.is_closed());
        }
    }
    drop(open);
    // Still serving.
    let (good, inbox) = inbox_node(config(false));
    good.send(Message::to(addr, b"after the fuzz".to_vec()))
        .wait()
        .expect("node still serves");
    drop(inbox);
    // Every fuzzed connection ends: a panicking reader would leave its entry (and writer) behind.
    assert!(
        eventually(Duration::from_secs(20), || node.connection_count() <= 1),
        "{} connections left",
        node.connection_count()
    );
    good.close();
    node.close();
    back_to_baseline(base);
}

// --- The protocol core's promises on real sockets (the simulator checks them on every
// seed: src/proto/sim.rs) ---------------------------------------------------------------

/// Asynchronous mode loses nothing without a fault: a receiver whose consumer takes
/// nothing until the sender has streamed, been told every message was written, and closed,
/// still gets every message (they waited in its park; the sender's close used to drop
/// them).
#[test]
fn a_parked_stream_is_delivered_after_its_sender_closed() {
    let _s = serial();
    const N: usize = 2000;
    let (receiver, rx) = inbox_node(config(false));
    let to = v4(&receiver);
    let mut c = config(false);
    c.max_queued = N;
    let sender = Node::start(c, drop).expect("sender");
    let sends: Vec<_> = (0..N)
        .map(|i| sender.send(Message::to(to, (i as u32).to_le_bytes().repeat(4))))
        .collect();
    for (i, s) in sends.into_iter().enumerate() {
        let Ok(outcome) = s.wait_timeout(Duration::from_secs(20)) else {
            panic!("send {i} never completed")
        };
        if let Err(e) = outcome {
            panic!("send {i} failed: {}", e.error());
        }
    }
    sender.close();
    // Nothing was taken yet: the receiver's slots are held, the rest is parked.
    let mut seen = vec![false; N];
    for got in 0..N {
        let msg = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("only {got} of {N} messages arrived"));
        let i = u32::from_le_bytes(msg.data()[..4].try_into().unwrap()) as usize;
        assert!(!seen[i], "message {i} arrived twice");
        seen[i] = true;
    }
    receiver.close();
}

/// A peer that never makes progress (never handshakes; handshakes but never reads) fails
/// every queued send within 2.5 x timeout of the peer's last progress (README; within the
/// issue's 3 x), wherever the send stands in the queue. (Each failed connection used to fail one message, then redial:
/// minutes for a queue.) The peer's last progress is when its kernel last took bytes: the
/// peer watches its own receive queue.
#[test]
fn every_send_to_a_stalled_peer_has_its_outcome_within_three_timeouts() {
    let _s = serial();
    for handshakes in [false, true] {
        // The stalled peer: accepts, maybe handshakes, then never reads or answers. Its
        // receive buffer is small and fixed, so its kernel soon stops taking bytes.
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        socket.listen(8).unwrap();
        let listener: TcpListener = socket.into();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let last_progress = Arc::new(Mutex::new(Instant::now()));
        let peer = {
            let (stop, last_progress) = (stop.clone(), last_progress.clone());
            std::thread::spawn(move || {
                let (mut s, _) = listener.accept().expect("accept");
                *last_progress.lock().unwrap() = Instant::now();
                if handshakes {
                    let hs = Handshake {
                        port: addr.port(),
                        identity: Identity::random(),
                    };
                    s.write_all(&hs.encode()).unwrap();
                }
                // Never reads; notes when its receive queue last grew.
                s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
                let mut buf = vec![0u8; 16 << 20];
                let mut queued = 0;
                while !stop.load(Ordering::Relaxed) {
                    match s.peek(&mut buf) {
                        Ok(n) if n != queued => {
                            queued = n;
                            *last_progress.lock().unwrap() = Instant::now();
                        }
                        Ok(0) => break, // the node closed
                        Ok(_) => std::thread::sleep(Duration::from_millis(10)),
                        Err(_) => {}
                    }
                }
            })
        };
        let mut c = config(false);
        c.timeout = Duration::from_millis(500);
        let node = Node::start(c, drop).expect("node");
        let started = Instant::now();
        let sends: Vec<_> = (0..200)
            .map(|_| node.send(Message::to(addr, vec![7u8; 64 * 1024])))
            .collect();
        let mut outcomes = Vec::new();
        for (i, s) in sends.into_iter().enumerate() {
            // Only so that a broken library cannot hang the test.
            let Ok(outcome) = s.wait_timeout(Duration::from_secs(20)) else {
                panic!("handshakes {handshakes}: send {i} had no outcome within 20 s")
            };
            assert!(
                outcome.is_err() || handshakes,
                "send {i} to a peer that never handshakes succeeded"
            );
            outcomes.push(Instant::now());
        }
        stop.store(true, Ordering::Relaxed);
        let last = (*last_progress.lock().unwrap()).max(started);
        // 2.5 x timeout, plus slack for the test's own scheduling (not the library's).
        let bound = Duration::from_millis(1250 + 500);
        for (i, at) in outcomes.iter().enumerate() {
            assert!(
                at.saturating_duration_since(last) <= bound,
                "handshakes {handshakes}: send {i} had its outcome {:?} after the peer's last \
                 progress ({:?} after queueing)",
                at.saturating_duration_since(last),
                at.duration_since(started)
            );
        }
        node.close();
        peer.join().unwrap();
    }
}

/// Garbage collection never cuts a connection that is moving bytes: one large message to a
/// peer that reads it slowly, over several reuse times, is delivered whole.
#[test]
fn a_slow_transfer_outlives_several_reuse_times() {
    let _s = serial();
    // Larger than the kernel's socket buffers on loopback can absorb.
    const LEN: usize = 16 * 1024 * 1024;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        let mut raw = raw::Raw::accept(&listener);
        // About 6 MB/s: the transfer takes about three seconds, several reuse times.
        let mut got = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        while got < LEN + libchirp::wire::PREAMBLE_SIZE {
            use std::io::Read;
            match raw.stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        got
    });
    let mut c = config(false);
    c.timeout = Duration::from_millis(200);
    c.reuse_time = Duration::from_millis(500);
    c.max_msg_size = 32 * 1024 * 1024;
    let node = Node::start(c, drop).expect("node");
    let started = Instant::now();
    let outcome = node
        .send(Message::to(addr, vec![1u8; LEN]))
        .wait_timeout(Duration::from_secs(30))
        .expect("the send never completed");
    let took = started.elapsed();
    if let Err(e) = outcome {
        panic!("cut after {took:?}: {}", e.error());
    }
    let got = reader.join().unwrap();
    assert_eq!(
        got,
        LEN + libchirp::wire::PREAMBLE_SIZE,
        "the peer read {got} bytes"
    );
    node.close();
}
