//! Measurements only: `chirp bench` (round trips or one-way bandwidth between two nodes of
//! this process), `chirp bench-raw` (the raw-TCP baseline) and `chirp bench-idle` (memory
//! of idle connections). Nothing here is needed to use libchirp.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use libchirp::{Config, Identity, Node};

use crate::send::{echo_round_trips, plain_sends, Opts};
use crate::{pattern, print_rate, Common, Fail, Signals};

/// `chirp bench`: an echo node and a sender node in this process, on loopback.
pub(crate) fn bench(
    common: &Common,
    window: u64,
    size: usize,
    count: u64,
    tls: bool,
    stream: bool,
    signals: Signals,
) -> Result<(), Fail> {
    let mut c = Config::default();
    c.port = 0;
    c.synchronous = !common.asynchronous;
    c.bind_v6 = None;
    if let Some(s) = common.max_slots {
        c.max_slots = s;
    }
    if let Some(t) = common.timeout {
        c.timeout = Duration::from_secs_f64(t.clamp(0.1, 1200.0));
    }
    let dir = std::env::temp_dir().join(format!("chirp-bench-pki-{}", std::process::id()));
    if tls {
        let pki = libchirp::pki::TestPki::generate(&dir)?;
        c.cert_chain = Some(pki.node_v1);
        c.dh_params = Some(pki.dh_params);
        c.always_encrypt = true;
    } else {
        c.disable_encryption = true;
    }
    let r = if stream {
        one_way(c, size, count)
    } else {
        round_trips(c, window, size, count, signals)
    };
    if tls {
        let _ = std::fs::remove_dir_all(&dir);
    }
    r
}

fn round_trips(
    c: Config,
    window: u64,
    size: usize,
    count: u64,
    signals: Signals,
) -> Result<(), Fail> {
    // Released before it is answered, as `chirp echo` does (the safe pattern).
    let echo = Node::start_inline(c.clone(), |node, mut msg| {
        let _ = msg.release();
        drop(node.send(msg));
    })?;
    let opts = Opts {
        to: SocketAddr::from(([127, 0, 0, 1], echo.port())),
        payload: pattern(size),
        count,
        window,
        batch: 0,
    };
    let r = echo_round_trips(c, opts, signals);
    echo.close();
    print_rate(count, r?);
    Ok(())
}

/// One-way bandwidth between two nodes of this process: COUNT asynchronous messages of
/// SIZE bytes, timed until the receiver has them all.
fn one_way(mut c: Config, size: usize, count: u64) -> Result<(), Fail> {
    c.synchronous = false;
    let (done_tx, done) = crossbeam_channel::bounded(1);
    let got = AtomicU64::new(0);
    let receiver = Node::start(c.clone(), move |m| {
        drop(m);
        if got.fetch_add(1, Ordering::Relaxed) + 1 == count {
            let _ = done_tx.send(());
        }
    })?;
    let sender = Node::start(c, drop)?;
    let opts = Opts {
        to: SocketAddr::from(([127, 0, 0, 1], receiver.port())),
        payload: pattern(size),
        count,
        window: 16,
        batch: 0,
    };
    let start = Instant::now();
    let r = plain_sends(&sender, &opts).and_then(|()| {
        done.recv_timeout(Duration::from_secs(60))
            .map_err(|_| Fail("the receiver did not get every message".into()))
    });
    let elapsed = start.elapsed();
    if r.is_ok() {
        eprintln!("summary: {}", crate::stats_line(&sender.stats(), None));
    }
    sender.close();
    receiver.close();
    r?;
    print_bandwidth(size, count, elapsed);
    Ok(())
}

fn print_bandwidth(size: usize, count: u64, elapsed: Duration) {
    let mib = (size as u64 * count) as f64 / (1 << 20) as f64;
    println!(
        "{count} messages of {size} bytes in {:.3} s: {:.0} MiB/s",
        elapsed.as_secs_f64(),
        mib / elapsed.as_secs_f64()
    );
}

/// `chirp bench-raw`: raw TCP between two threads of this process, over loopback.
pub(crate) fn raw(size: usize, count: u64, stream: bool) -> Result<(), Fail> {
    let io = |e: std::io::Error| Fail(format!("raw TCP baseline: {e}"));
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io)?;
    let addr = listener.local_addr().map_err(io)?;
    let size = size.max(1);
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = vec![0u8; size.max(1 << 16)];
        if stream {
            let total = size as u64 * count;
            let mut got = 0u64;
            while got < total {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            s.write_all(b"k")?;
        } else {
            for _ in 0..count {
                s.read_exact(&mut buf[..size])?;
                s.write_all(&buf[..size])?;
            }
        }
        Ok(())
    });
    let mut c = TcpStream::connect(addr).map_err(io)?;
    c.set_nodelay(true).map_err(io)?;
    let msg = pattern(size);
    let mut buf = vec![0u8; size];
    let start = Instant::now();
    if stream {
        for _ in 0..count {
            c.write_all(&msg).map_err(io)?;
        }
        c.read_exact(&mut buf[..1]).map_err(io)?;
    } else {
        for _ in 0..count {
            c.write_all(&msg).map_err(io)?;
            c.read_exact(&mut buf).map_err(io)?;
        }
    }
    let elapsed = start.elapsed();
    server
        .join()
        .map_err(|_| Fail("raw TCP server thread panicked".into()))?
        .map_err(io)?;
    if stream {
        print_bandwidth(size, count, elapsed);
    } else {
        print_rate(count, elapsed);
    }
    Ok(())
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Waits up to a minute for `what` to say nothing is missing, polling every 5 ms (a
/// measurement loop, not a test).
fn wait_for(what: impl Fn() -> Option<String>) -> Result<(), Fail> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match what() {
            None => return Ok(()),
            Some(why) if Instant::now() > deadline => return Err(Fail(why)),
            Some(_) => std::thread::park_timeout(Duration::from_millis(5)),
        }
    }
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn os_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Helper processes holding connections to `addr`; dropped: they are told to go and
/// waited for.
struct Peers(Vec<std::process::Child>);

impl Peers {
    /// `count` connections in processes of at most 5,000 each; returns once all are open.
    fn start(addr: SocketAddr, count: usize, silent: bool) -> Result<Peers, Fail> {
        use std::io::BufRead;
        let exe = std::env::current_exe().map_err(|e| Fail(format!("own binary: {e}")))?;
        let mut children = Vec::new();
        let mut left = count;
        let per = 5000;
        while left > 0 {
            let n = left.min(per);
            left -= n;
            let mut cmd = std::process::Command::new(&exe);
            cmd.args(["bench-peers", &addr.to_string(), "--count", &n.to_string()]);
            if silent {
                cmd.arg("--silent");
            }
            let child = cmd
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| Fail(format!("starting a helper: {e}")))?;
            children.push(child);
        }
        let mut peers = Peers(children);
        for c in &mut peers.0 {
            let mut line = String::new();
            let out = c.stdout.take().expect("piped");
            std::io::BufReader::new(out)
                .read_line(&mut line)
                .map_err(|e| Fail(format!("helper: {e}")))?;
            if !line.starts_with("ready") {
                return Err(Fail(format!("helper failed: {line:?}")));
            }
        }
        Ok(peers)
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            drop(c.stdin.take());
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// `chirp bench-peers`: opens `count` connections (handshaken unless `silent`) and holds
/// them until stdin closes. A refused connection (closed by the node) counts as opened: the
/// point is the load on the node.
pub(crate) fn peers(addr: SocketAddr, count: usize, silent: bool) -> Result<(), Fail> {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("chirp: cannot raise the open-files limit: {e}");
    }
    let io = |e: std::io::Error| Fail(format!("peer connection: {e}"));
    if silent {
        return flood(addr, count);
    }
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let mut s = TcpStream::connect(addr).map_err(io)?;
        if !silent {
            let hs = libchirp::wire::Handshake {
                port: 1 + (i % 65535) as u16,
                identity: Identity::random(),
            }
            .encode();
            s.write_all(&hs).map_err(io)?;
            let mut theirs = [0u8; 18];
            s.read_exact(&mut theirs).map_err(io)?;
        }
        held.push(s);
    }
    println!("ready {count}");
    let _ = std::io::stdout().flush();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}

/// Opens `count` silent connections to `addr` with non-blocking connects (a SYN the
/// full accept queue dropped is retried by the kernel while the others proceed), waits up
/// to a minute until each is connected or refused, holds them until stdin closes.
fn flood(addr: SocketAddr, count: usize) -> Result<(), Fail> {
    use socket2::{Domain, Socket, Type};
    let io = |e: std::io::Error| Fail(format!("flood connection: {e}"));
    let mut socks = Vec::with_capacity(count);
    for _ in 0..count {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(io)?;
        s.set_nonblocking(true).map_err(io)?;
        match s.connect(&addr.into()) {
            Ok(()) => {}
            Err(e)
                if e.raw_os_error() == Some(115) || e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(io(e)),
        }
        socks.push(s);
    }
    // Settled: connected (peer address known) or failed (an error is pending).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pending: Vec<usize> = (0..socks.len()).collect();
    while !pending.is_empty() && Instant::now() < deadline {
        pending.retain(|&i| {
            let s = &socks[i];
            s.peer_addr().is_err() && !matches!(s.take_error(), Ok(Some(_)))
        });
        std::thread::sleep(Duration::from_millis(20)); // a measurement helper's poll
    }
    println!("ready {count} ({} still connecting)", pending.len());
    let _ = std::io::stdout().flush();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}

/// Sequential synchronous round trips of a good peer: (p50, p99) in milliseconds.
fn latency(
    client: &Node,
    inbox: &crossbeam_channel::Receiver<()>,
    to: SocketAddr,
    n: usize,
) -> Result<(f64, f64), Fail> {
    Ok(percentiles(good_peer_rtts(client, inbox, to, n)?))
}

/// The median and 99th percentile of `rtts`.
fn percentiles(mut rtts: Vec<f64>) -> (f64, f64) {
    if rtts.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    rtts.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| rtts[((rtts.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// `n` sequential synchronous round trips of a good peer, in milliseconds each.
fn good_peer_rtts(
    client: &Node,
    inbox: &crossbeam_channel::Receiver<()>,
    to: SocketAddr,
    n: usize,
) -> Result<Vec<f64>, Fail> {
    let mut rtts = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        client
            .send(libchirp::Message::to(to, (i as u32).to_be_bytes().to_vec()))
            .wait_timeout(Duration::from_secs(10))
            .map_err(|_| Fail("the good peer's send did not complete within 10 s".into()))??;
        inbox
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| Fail("the good peer's echo did not come back within 10 s".into()))?;
        rtts.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(rtts)
}

/// `chirp bench-idle`: capacity figures of an echo node with `n` idle peers, then (with
/// `flood`) a flood of silent connections.
pub(crate) fn idle(n: usize, flood: usize) -> Result<(), Fail> {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("chirp: cannot raise the open-files limit: {e}");
    }
    let mut c = Config::default();
    c.port = 0;
    c.disable_encryption = true;
    c.bind_v6 = None;
    c.backlog = 127;
    let echo = Node::start_inline(c.clone(), |node, mut msg| {
        let _ = msg.release();
        drop(node.send(msg));
    })?;
    let addr = SocketAddr::from(([127, 0, 0, 1], echo.port()));
    let (tx, inbox) = crossbeam_channel::unbounded();
    let client = Node::start(c, move |m| {
        drop(m);
        let _ = tx.send(());
    })?;
    // Warm up: the good peer's connection and one-time allocations are in the baseline.
    latency(&client, &inbox, addr, 200)?;
    let conns = |want: usize| {
        wait_for(|| {
            let have = echo.connection_count();
            (have != want).then(|| format!("expected {want} connections, have {have}"))
        })
    };
    conns(1)?;
    let base = (os_threads(), fd_count(), resident_kib());
    let eff = echo.config();
    println!(
        "limits: max_connections {}, max_handshaking {} (from RLIMIT_NOFILE, threads, vm.max_map_count)",
        eff.max_connections(),
        eff.max_handshaking()
    );
    if n > 0 {
        let t = Instant::now();
        let peers = Peers::start(addr, n, false)?;
        conns(n + 1)?;
        let setup = t.elapsed();
        let (threads, fds, rss) = (os_threads(), fd_count(), resident_kib());
        let (p50, p99) = latency(&client, &inbox, addr, 2000)?;
        println!(
            "{n} idle peers (set up in {:.1} s): {:.2} threads, {:.2} fds and {:.1} KiB resident per connection; good peer round trip p50 {p50:.3} ms, p99 {p99:.3} ms",
            setup.as_secs_f64(),
            (threads - base.0) as f64 / n as f64,
            (fds - base.1) as f64 / n as f64,
            rss.saturating_sub(base.2) as f64 / n as f64,
        );
        drop(peers);
        conns(1)?;
    }
    if flood > 0 {
        let before = echo.stats();
        let t = Instant::now();
        // The good peer's round trips go on while the flood is opened and held.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let measuring = {
            let (client, inbox, stop) = (client.clone(), inbox.clone(), stop.clone());
            std::thread::spawn(move || -> Result<Vec<f64>, Fail> {
                let mut all = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    all.extend(good_peer_rtts(&client, &inbox, addr, 50)?);
                }
                Ok(all)
            })
        };
        let peers = Peers::start(addr, flood, true);
        let opened = t.elapsed();
        let during = echo.stats();
        std::thread::sleep(Duration::from_secs(1)); // hold the flood a moment (a measurement)
        stop.store(true, Ordering::Relaxed);
        let rtts = measuring
            .join()
            .map_err(|_| Fail("latency thread panicked".into()))??;
        let peers = peers?;
        let (p50, p99) = percentiles(rtts);
        drop(peers);
        let after = echo.stats();
        println!(
            "flood of {flood} silent connections (opened in {:.1} s): {} held in the handshake (cap {}), {} refused by the half-open cap, {} by max_connections; good peer round trip while it was opened and held p50 {p50:.3} ms, p99 {p99:.3} ms",
            opened.as_secs_f64(),
            during.handshaking,
            eff.max_handshaking(),
            after.refused_handshaking - before.refused_handshaking,
            after.refused_capacity - before.refused_capacity,
        );
    }
    // Back to the baseline: every connection but the good peer's gone, threads and
    // descriptors as before.
    conns(1)?;
    wait_for(|| {
        let (t, f) = (os_threads(), fd_count());
        (t > base.0 || f > base.1).then(|| {
            format!(
                "threads {t} and descriptors {f} did not come back to {} and {}",
                base.0, base.1
            )
        })
    })?;
    println!(
        "afterwards: {} threads, {} descriptors (baseline {}, {})",
        os_threads(),
        fd_count(),
        base.0,
        base.1
    );
    client.close();
    echo.close();
    Ok(())
}

/// `chirp bench-sink`: counts `count` messages (asynchronous mode, released at once) and
/// prints "N messages in S s: R/s" from the first message to the last.
pub(crate) fn sink(mut c: Config, count: u64, signals: Signals) -> Result<(), Fail> {
    c.synchronous = false;
    let (tx, done) = crossbeam_channel::bounded(1);
    let first = std::sync::Mutex::new(None::<Instant>);
    let got = AtomicU64::new(0);
    let node = std::sync::Arc::new(Node::start(c, move |m| {
        drop(m);
        let n = got.fetch_add(1, Ordering::Relaxed) + 1;
        if n == 1 {
            *first.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        }
        if n == count {
            let start = first
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_else(Instant::now);
            let _ = tx.send(start.elapsed());
        }
    })?);
    crate::watch_signals(&node, signals);
    crate::announce(&node);
    let r = loop {
        match done.recv_timeout(Duration::from_millis(200)) {
            Ok(elapsed) => break Ok(elapsed),
            Err(_) if node.is_closed() => break Err(Fail("interrupted".into())),
            Err(_) => {}
        }
    };
    node.close();
    let elapsed = r?;
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "{count} messages in {secs:.3} s: {:.0}/s",
        count.saturating_sub(1) as f64 / secs
    );
    Ok(())
}
