//! Measurements only: `chirp bench` (round trips or one-way bandwidth between two nodes of
//! this process), `chirp bench-raw` (the raw-TCP baseline) and `chirp bench-idle` (memory
//! of idle connections). Nothing here is needed to use libchirp.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use libchirp::{Config, Identity, Node};

use crate::send::{echo_round_trips, plain_sends, Opts};
use crate::{pattern, print_rate, Common, Fail};

/// `chirp bench`: an echo node and a sender node in this process, on loopback.
pub(crate) fn bench(
    common: &Common,
    window: u64,
    size: usize,
    count: u64,
    tls: bool,
    stream: bool,
    signals: Receiver<()>,
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
    signals: Receiver<()>,
) -> Result<(), Fail> {
    let echo = Node::start_inline(c.clone(), |node, msg| drop(node.send(msg)))?;
    let opts = Opts {
        to: SocketAddr::from(([127, 0, 0, 1], echo.port())),
        payload: pattern(size),
        count,
        window,
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
    };
    let start = Instant::now();
    let r = plain_sends(&sender, &opts).and_then(|()| {
        done.recv_timeout(Duration::from_secs(60))
            .map_err(|_| Fail("the receiver did not get every message".into()))
    });
    let elapsed = start.elapsed();
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

/// Waits up to a minute for `cond`, polling every 5 ms (a measurement loop, not a test).
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

/// `chirp bench-idle`: opens `n` idle plaintext connections (raw clients that send a
/// handshake) to a node and reports the node's resident memory per connection (thread
/// stacks and buffers included).
pub(crate) fn idle(n: usize) -> Result<(), Fail> {
    // Two descriptors per connection in this process: raise the soft limit to the hard one.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("chirp: cannot raise the open-files limit: {e}");
    }
    let mut c = Config::default();
    c.port = 0;
    c.disable_encryption = true;
    c.bind_v6 = None;
    c.backlog = 127;
    let node = Node::start(c, drop)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], node.port()));
    let conns = |want: usize| {
        wait_for(|| {
            let have = node.connection_count();
            (have != want).then(|| format!("expected {want} connections, have {have}"))
        })
    };
    let io = |e: std::io::Error| Fail(format!("idle connection: {e}"));
    let open = |port: u16| -> Result<TcpStream, Fail> {
        let mut s = TcpStream::connect(addr).map_err(io)?;
        let hs = libchirp::wire::Handshake {
            port,
            identity: Identity::random(),
        }
        .encode();
        s.write_all(&hs).map_err(io)?;
        let mut theirs = [0u8; 18];
        s.read_exact(&mut theirs).map_err(io)?;
        Ok(s)
    };
    // Warm up one connection so that one-time allocations are not counted.
    let mut clients = Vec::with_capacity(n + 1);
    clients.push(open(1)?);
    conns(1)?;
    let before = resident_kib();
    let threads_before = node.thread_count();
    for i in 0..n {
        clients.push(open(2 + i as u16)?);
    }
    conns(n + 1)?;
    // Every connection set up: its reader thread running (writers start only when a write
    // would block).
    wait_for(|| {
        let started = node.thread_count() - threads_before;
        (started < n).then(|| format!("only {started} of {n} connection threads started"))
    })?;
    let after = resident_kib();
    let threads = node.thread_count() - threads_before;
    println!(
        "{n} idle connections: {:.1} KiB resident each ({} threads each)",
        (after.saturating_sub(before)) as f64 / n as f64,
        threads / n.max(1)
    );
    drop(clients);
    node.close();
    Ok(())
}
