//! `chirp`: try, debug and benchmark libchirp from the command line.
//!
//! ```text
//! chirp echo --no-encryption                      # port 2998, sends every message back
//! chirp send 127.0.0.1:2998 --no-encryption --count 1000 --window 16 --echo
//! chirp listen --no-encryption                    # prints ADDRESS:PORT IDENTITY SERIAL DATA
//! chirp request 127.0.0.1:2998 --data hi --no-encryption
//! chirp bench --async --window 16
//! ```
//!
//! Exit status 0 on success; 1 with one line on stderr on failure. Ctrl-C and SIGTERM close
//! the node cleanly. `RUST_LOG=debug` shows the library's log.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use crossbeam_channel::{Receiver, Sender};
use libchirp::{Completion, Config, Error, Message, Node, SendError};

#[derive(Parser, Debug)]
#[command(
    name = "chirp",
    version,
    about = "libchirp message passing from the command line"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Own listening port (default 2998 for echo and listen, 0 = any free port otherwise).
    #[arg(long)]
    port: Option<u16>,
    /// Asynchronous mode (default synchronous: a send completes when the peer released it).
    #[arg(long = "async")]
    asynchronous: bool,
    /// Receive slots per connection (asynchronous mode; synchronous always uses 1).
    #[arg(long)]
    max_slots: Option<u8>,
    /// Timeout in seconds (sends; connecting takes up to twice this, at most 60 s).
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// Never use TLS.
    #[arg(long)]
    no_encryption: bool,
    /// PEM file with this node's private key, its certificate and the CA certificate(s).
    #[arg(long, value_name = "FILE")]
    cert_chain: Option<PathBuf>,
    /// PEM file with Diffie-Hellman parameters.
    #[arg(long, value_name = "FILE")]
    dh_params: Option<PathBuf>,
    /// Encrypt loopback connections too.
    #[arg(long)]
    always_encrypt: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Send every received message back to its sender.
    Echo {
        #[command(flatten)]
        common: Common,
    },
    /// Print one line per received message: ADDRESS:PORT IDENTITY SERIAL DATA.
    Listen {
        #[command(flatten)]
        common: Common,
    },
    /// Send messages to a node.
    Send {
        /// Destination, e.g. 127.0.0.1:2998 or [::1]:2998.
        addr: String,
        /// Message data.
        #[arg(long, conflicts_with = "size")]
        data: Option<String>,
        /// Send messages of this many bytes instead of --data.
        #[arg(long)]
        size: Option<usize>,
        /// Number of messages.
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Messages outstanding at once.
        #[arg(long, default_value_t = 1)]
        window: u64,
        /// Wait for every message to come back from an echo node and print the rate.
        #[arg(long)]
        echo: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Send one request and print the answer's data.
    Request {
        /// Destination, e.g. 127.0.0.1:2998.
        addr: String,
        /// Request data.
        #[arg(long)]
        data: String,
        #[command(flatten)]
        common: Common,
    },
    /// Run an echo node and a sender node in this process on loopback and print the rate.
    Bench {
        /// Messages outstanding at once.
        #[arg(long, default_value_t = 1)]
        window: u64,
        /// Message size in bytes.
        #[arg(long, default_value_t = 16)]
        size: usize,
        /// Number of round trips.
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// Use TLS with a throwaway PKI (always-encrypt).
        #[arg(long)]
        tls: bool,
        /// Measure one-way bandwidth (COUNT messages of SIZE bytes) instead of round trips.
        #[arg(long)]
        stream: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Resident memory of idle plaintext connections: opens N connections to a node.
    BenchIdle {
        /// Number of idle connections.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
    },
    /// Baseline: raw TCP on loopback, no libchirp. Ping-pong of SIZE-byte messages (one
    /// outstanding) or, with --stream, one-way bandwidth.
    BenchRaw {
        /// Message size in bytes.
        #[arg(long, default_value_t = 16)]
        size: usize,
        /// Number of round trips (or messages with --stream).
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// Measure one-way bandwidth instead of round trips.
        #[arg(long)]
        stream: bool,
    },
}

/// A failure: printed as one line, exit status 1.
struct Fail(String);

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail(e.to_string())
    }
}

impl From<SendError> for Fail {
    fn from(e: SendError) -> Fail {
        Fail(e.to_string())
    }
}

fn main() -> ExitCode {
    let signals = block_signals();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("{first} (see chirp --help)");
            return ExitCode::from(1);
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(cli, signals) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(msg)) => {
            eprintln!("chirp: {msg}");
            ExitCode::from(1)
        }
    }
}

/// Blocks SIGINT and SIGTERM in every thread (threads inherit the mask) and returns a
/// channel that receives one message when either arrives, from a thread waiting in sigwait.
fn block_signals() -> Receiver<()> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    // SAFETY: plain signal-mask manipulation before any other thread exists.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let waiter_set = set;
        std::thread::Builder::new()
            .name("chirp-signals".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut sig: libc::c_int = 0;
                if libc::sigwait(&waiter_set, &mut sig) == 0 {
                    let _ = tx.send(());
                }
            })
            .expect("spawn signal thread");
    }
    rx
}

fn config(common: &Common, default_port: u16) -> Result<Config, Fail> {
    let mut c = Config::default();
    c.port = common.port.unwrap_or(default_port);
    c.synchronous = !common.asynchronous;
    if let Some(s) = common.max_slots {
        c.max_slots = s;
    }
    if let Some(t) = common.timeout {
        if !(t.is_finite() && t > 0.0) {
            return Err(Fail(format!(
                "--timeout must be a positive number of seconds, got {t}"
            )));
        }
        c.timeout = Duration::from_secs_f64(t.min(1e6));
    }
    c.disable_encryption = common.no_encryption;
    c.cert_chain = common.cert_chain.clone();
    c.dh_params = common.dh_params.clone();
    c.always_encrypt = common.always_encrypt;
    if !c.disable_encryption && (c.cert_chain.is_none() || c.dh_params.is_none()) {
        return Err(Fail(
            "encryption needs --cert-chain FILE and --dh-params FILE (or pass --no-encryption)"
                .into(),
        ));
    }
    Ok(c)
}

fn parse_addr(s: &str) -> Result<SocketAddr, Fail> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    s.to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| {
            Fail(format!(
                "invalid address {s:?}: expected HOST:PORT, e.g. 127.0.0.1:2998 or [::1]:2998"
            ))
        })
}

fn run(cli: Cli, signals: Receiver<()>) -> Result<(), Fail> {
    match cli.command {
        Command::Echo { common } => {
            let node =
                Node::start_inline(config(&common, 2998)?, |node, msg| drop(node.send(msg)))?;
            announce(&node);
            let _ = signals.recv();
            node.close();
            Ok(())
        }
        Command::Listen { common } => {
            let node = Node::start(config(&common, 2998)?, |msg| {
                let line = format!(
                    "{} {} {} {}\n",
                    msg.address().map(|a| a.to_string()).unwrap_or_default(),
                    msg.identity(),
                    msg.serial(),
                    String::from_utf8_lossy(msg.data())
                );
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(line.as_bytes());
                let _ = out.flush();
            })?;
            announce(&node);
            let _ = signals.recv();
            node.close();
            Ok(())
        }
        Command::Send {
            addr,
            data,
            size,
            count,
            window,
            echo,
            common,
        } => {
            let to = parse_addr(&addr)?;
            let payload = match (data, size) {
                (_, Some(n)) => pattern(n),
                (Some(d), None) => d.into_bytes(),
                (None, None) => b"hello".to_vec(),
            };
            let config = config(&common, 0)?;
            if echo {
                let elapsed = echo_round_trips(config, to, payload, count, window.max(1), signals)?;
                print_rate(count, elapsed);
                return Ok(());
            }
            // Whatever comes back is released at once (a synchronous echo node's send, and
            // so its release of ours, waits for that).
            let node = Arc::new(Node::start(config, drop)?);
            watch_signals(&node, signals);
            let r = plain_sends(&node, to, &payload, count, window.max(1));
            node.close();
            r
        }
        Command::Request { addr, data, common } => {
            let to = parse_addr(&addr)?;
            let node = Arc::new(Node::start(config(&common, 0)?, drop)?);
            watch_signals(&node, signals);
            let answer = node.request(Message::to(to, data.into_bytes())).wait();
            let r = match answer {
                Ok(mut msg) => {
                    println!("{}", String::from_utf8_lossy(msg.data()));
                    // Release now, so a synchronous peer's send completes before we close.
                    let _ = msg.release().wait_timeout(node.config().timeout());
                    Ok(())
                }
                Err(e) => Err(Fail(e.to_string())),
            };
            node.close();
            r
        }
        Command::Bench {
            window,
            size,
            count,
            tls,
            stream,
            common,
        } => bench(common, window.max(1), size, count, tls, stream, signals),
        Command::BenchIdle { connections } => bench_idle(connections),
        Command::BenchRaw {
            size,
            count,
            stream,
        } => bench_raw(size, count, stream),
    }
}

fn announce(node: &Node) {
    println!("listening on {}", node.port());
    let _ = std::io::stdout().flush();
}

fn print_rate(count: u64, elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { count as f64 / secs } else { 0.0 };
    println!("{count} round trips in {secs:.3} s: {rate:.0}/s");
}

/// Closes the node when a signal arrives, which fails whatever is pending.
fn watch_signals(node: &Arc<Node>, signals: Receiver<()>) {
    let node = Arc::downgrade(node);
    let _ = std::thread::Builder::new()
        .name("chirp-signal-close".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            if signals.recv().is_ok() {
                if let Some(n) = node.upgrade() {
                    n.close();
                }
            }
        });
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Drives `send --echo` and `bench`: an event-driven sender. The handler (on the reader
/// thread, like a C libchirp callback) releases each echo and sends the next message, so the
/// round trip costs no extra thread wake-up; the main thread only watches for errors and the
/// end.
struct Driver {
    to: SocketAddr,
    payload: Vec<u8>,
    count: u64,
    window: u64,
    state: std::sync::Mutex<DriverState>,
    done: Sender<()>,
}

#[derive(Default)]
struct DriverState {
    sent: u64,
    back: u64,
    sends: VecDeque<Completion<Result<Message, SendError>>>,
}

impl Driver {
    /// Sends while fewer than `window` are outstanding.
    fn fill(&self, node: &Node) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while st.sent < self.count && st.sent - st.back < self.window {
            st.sent += 1;
            let c = node.send(Message::to(self.to, self.payload.clone()));
            st.sends.push_back(c);
        }
    }

    fn echoed(&self, node: &Node, msg: Message) {
        drop(msg); // release: lets the echo's send (and so our synchronous send) complete
        let back = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.back += 1;
            st.back
        };
        if back == self.count {
            let _ = self.done.send(());
        } else {
            self.fill(node);
        }
    }

    /// Takes finished sends off the front; the first failure is returned.
    fn reap(&self) -> Result<usize, Fail> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(front) = st.sends.pop_front() {
            match front.try_wait() {
                Ok(r) => {
                    r?;
                }
                Err(pending) => {
                    st.sends.push_front(pending);
                    break;
                }
            }
        }
        Ok(st.sends.len())
    }
}

/// Starts a node that sends `count` messages to an echo node at `to`, `window` outstanding,
/// and returns the time until all came back (and all sends completed).
fn echo_round_trips(
    config: Config,
    to: SocketAddr,
    payload: Vec<u8>,
    count: u64,
    window: u64,
    signals: Receiver<()>,
) -> Result<Duration, Fail> {
    let (done_tx, done) = crossbeam_channel::bounded(1);
    let driver = Arc::new(Driver {
        to,
        payload,
        count,
        window,
        state: Default::default(),
        done: done_tx,
    });
    let d = driver.clone();
    let node = Arc::new(Node::start_inline(config, move |node, msg| {
        d.echoed(node, msg)
    })?);
    watch_signals(&node, signals);
    let timeout = node.config().timeout();
    let patience = timeout * 3 + Duration::from_secs(1);
    let progress = std::io::stderr().is_terminal();
    let start = Instant::now();
    let result = (|| {
        if count == 0 {
            return Ok(());
        }
        driver.fill(&node);
        let mut last = (0u64, Instant::now());
        let mut shown = Instant::now();
        loop {
            match done.recv_timeout(Duration::from_millis(50)) {
                Ok(()) => break,
                Err(_) => {
                    driver.reap()?;
                    if node.is_closed() {
                        return Err(Fail("interrupted".into()));
                    }
                    let back = driver.state.lock().unwrap_or_else(|e| e.into_inner()).back;
                    if back != last.0 {
                        last = (back, Instant::now());
                    } else if last.1.elapsed() > patience {
                        return Err(Fail(format!(
                            "no echo from {to} within {patience:?} ({back} of {count} came back)"
                        )));
                    }
                    if progress && shown.elapsed() >= Duration::from_secs(1) {
                        shown = Instant::now();
                        eprint!("\r{back}/{count} ");
                    }
                }
            }
        }
        // Every send must also have completed.
        let deadline = Instant::now() + patience;
        while driver.reap()? > 0 {
            if Instant::now() > deadline {
                return Err(Fail(format!(
                    "sends to {to} did not complete within {patience:?}"
                )));
            }
            std::thread::park_timeout(Duration::from_millis(1));
        }
        Ok(())
    })();
    let elapsed = start.elapsed();
    if progress {
        eprint!("\r");
    }
    node.close();
    result.map(|()| elapsed)
}

/// Sends `count` messages with at most `window` sends outstanding (no echo expected).
fn plain_sends(
    node: &Node,
    to: SocketAddr,
    payload: &[u8],
    count: u64,
    window: u64,
) -> Result<(), Fail> {
    let patience = node.config().timeout() * 3 + Duration::from_secs(1);
    let mut sends: VecDeque<Completion<Result<Message, SendError>>> = VecDeque::new();
    for _ in 0..count {
        if sends.len() as u64 >= window {
            wait_send(sends.pop_front().expect("non-empty"), to, patience)?;
        }
        sends.push_back(node.send(Message::to(to, payload.to_vec())));
    }
    for s in sends {
        wait_send(s, to, patience)?;
    }
    Ok(())
}

fn wait_send(
    c: Completion<Result<Message, SendError>>,
    to: SocketAddr,
    patience: Duration,
) -> Result<(), Fail> {
    match c.wait_timeout(patience) {
        Ok(r) => r.map(drop).map_err(Fail::from),
        Err(_) => Err(Fail(format!(
            "send to {to} did not complete within {patience:?}"
        ))),
    }
}

fn bench(
    common: Common,
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
    if stream {
        let r = bench_stream(c, size, count);
        if tls {
            let _ = std::fs::remove_dir_all(&dir);
        }
        return r;
    }
    let echo = Node::start_inline(c.clone(), |node, msg| drop(node.send(msg)));
    let r = echo.map(|echo| {
        let to = SocketAddr::from(([127, 0, 0, 1], echo.port()));
        let r = echo_round_trips(c, to, pattern(size), count, window, signals);
        echo.close();
        r
    });
    if tls {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let r = r?;
    print_rate(count, r?);
    Ok(())
}

/// Raw TCP baselines between two threads of this process, over loopback.
fn bench_raw(size: usize, count: u64, stream: bool) -> Result<(), Fail> {
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
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
        let mib = (size as u64 * count) as f64 / (1 << 20) as f64;
        println!(
            "{count} messages of {size} bytes in {:.3} s: {:.0} MiB/s",
            elapsed.as_secs_f64(),
            mib / elapsed.as_secs_f64()
        );
    } else {
        print_rate(count, elapsed);
    }
    Ok(())
}

/// One-way bandwidth between two nodes of this process: COUNT asynchronous messages of
/// SIZE bytes, timed until the receiver has them all.
fn bench_stream(mut c: Config, size: usize, count: u64) -> Result<(), Fail> {
    c.synchronous = false;
    let (done_tx, done) = crossbeam_channel::bounded(1);
    let got = std::sync::atomic::AtomicU64::new(0);
    let receiver = Node::start(c.clone(), move |m| {
        drop(m);
        if got.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 == count {
            let _ = done_tx.send(());
        }
    })?;
    let sender = Node::start(c, drop)?;
    let to = SocketAddr::from(([127, 0, 0, 1], receiver.port()));
    let payload = pattern(size);
    let start = Instant::now();
    let r = plain_sends(&sender, to, &payload, count, 16);
    let r = r.and_then(|()| {
        done.recv_timeout(Duration::from_secs(60))
            .map_err(|_| Fail("the receiver did not get every message".into()))
    });
    let elapsed = start.elapsed();
    sender.close();
    receiver.close();
    r?;
    let mib = (size as u64 * count) as f64 / (1 << 20) as f64;
    println!(
        "{count} messages of {size} bytes in {:.3} s: {:.0} MiB/s",
        elapsed.as_secs_f64(),
        mib / elapsed.as_secs_f64()
    );
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

/// Opens `n` idle plaintext connections (raw clients that send a handshake) to a node and
/// reports the node's resident memory per connection (thread stacks and buffers included).
fn bench_idle(n: usize) -> Result<(), Fail> {
    use std::io::Read;
    // Two descriptors per connection in this process: raise the soft limit.
    // SAFETY: plain getrlimit/setrlimit on this process.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    let mut c = Config::default();
    c.port = 0;
    c.disable_encryption = true;
    c.bind_v6 = None;
    c.backlog = 127;
    let node = Node::start(c, drop)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], node.port()));
    let wait_conns = |want: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while node.connection_count() != want {
            if Instant::now() > deadline {
                return Err(Fail(format!(
                    "expected {want} connections, have {}",
                    node.connection_count()
                )));
            }
            std::thread::park_timeout(Duration::from_millis(5));
        }
        Ok(())
    };
    // Warm up one connection so that one-time allocations are not counted.
    let mut clients = Vec::with_capacity(n + 1);
    let io = |e: std::io::Error| Fail(format!("idle connection: {e}"));
    let open = |port: u16| -> Result<std::net::TcpStream, Fail> {
        let mut s = std::net::TcpStream::connect(addr).map_err(io)?;
        let hs = libchirp::wire::Handshake {
            port,
            identity: libchirp::Identity::random(),
        }
        .encode();
        s.write_all(&hs).map_err(io)?;
        let mut theirs = [0u8; 18];
        s.read_exact(&mut theirs).map_err(io)?;
        Ok(s)
    };
    clients.push(open(1)?);
    wait_conns(1)?;
    let before = resident_kib();
    let threads_before = node.thread_count();
    for i in 0..n {
        clients.push(open(2 + i as u16)?);
    }
    wait_conns(n + 1)?;
    // Every connection set up: its reader and writer threads both running.
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.thread_count() < threads_before + 2 * n {
        if Instant::now() > deadline {
            return Err(Fail(format!(
                "only {} of {} connection threads started",
                node.thread_count() - threads_before,
                2 * n
            )));
        }
        std::thread::park_timeout(Duration::from_millis(5));
    }
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
