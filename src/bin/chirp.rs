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
        #[command(flatten)]
        common: Common,
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
            let (tx, inbox) = crossbeam_channel::unbounded();
            // Without --echo, whatever comes back is released at once (a synchronous echo
            // node's send, and so its release of ours, waits for that).
            let node = Node::start(config(&common, 0)?, move |m| {
                if echo {
                    let _ = tx.send(m);
                }
            })?;
            let node = Arc::new(node);
            watch_signals(&node, signals);
            let r = round_trips(&node, &inbox, to, &payload, count, window.max(1), echo);
            node.close();
            let elapsed = r?;
            if echo {
                print_rate(count, elapsed);
            }
            Ok(())
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
            common,
        } => bench(common, window.max(1), size, count, tls, signals),
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

/// Sends `count` messages with at most `window` outstanding. With `echo`, a message is
/// outstanding until it came back (and its send completed); otherwise until its send
/// completed. Returns the elapsed time.
fn round_trips(
    node: &Node,
    inbox: &Receiver<Message>,
    to: SocketAddr,
    payload: &[u8],
    count: u64,
    window: u64,
    echo: bool,
) -> Result<Duration, Fail> {
    let timeout = node.config().timeout();
    // Generous: a message may wait for a connection, the echo's own send, and our release.
    let patience = timeout * 3 + Duration::from_secs(1);
    let progress = std::io::stderr().is_terminal();
    let mut last_progress = Instant::now();
    let mut sends: VecDeque<Completion<Result<Message, SendError>>> = VecDeque::new();
    let (mut sent, mut back) = (0u64, 0u64);
    let start = Instant::now();
    while back < count || !sends.is_empty() {
        // Reap finished sends; fail on the first error.
        while let Some(front) = sends.pop_front() {
            match front.try_wait() {
                Ok(r) => {
                    r?;
                }
                Err(pending) => {
                    sends.push_front(pending);
                    break;
                }
            }
        }
        let outstanding = if echo {
            sent - back
        } else {
            sends.len() as u64
        };
        if sent < count && outstanding < window {
            sends.push_back(node.send(Message::to(to, payload.to_vec())));
            sent += 1;
            continue;
        }
        if echo && back < count {
            match inbox.recv_timeout(patience) {
                Ok(msg) => {
                    drop(msg); // release: lets the echo's send (and so our send) complete
                    back += 1;
                }
                Err(_) => {
                    if node.is_closed() {
                        return Err(Fail("interrupted".into()));
                    }
                    return Err(Fail(format!(
                        "no echo from {to} within {patience:?} ({back} of {count} came back)"
                    )));
                }
            }
        } else if let Some(front) = sends.pop_front() {
            match front.wait_timeout(patience) {
                Ok(r) => {
                    r?;
                }
                Err(_) => {
                    return Err(Fail(format!(
                        "send to {to} did not complete within {patience:?}"
                    )))
                }
            }
            if !echo {
                back += 1;
            }
        } else if !echo {
            back = sent;
        }
        if progress && last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            eprint!("\r{back}/{count} ");
        }
    }
    if progress {
        eprint!("\r");
    }
    Ok(start.elapsed())
}

fn bench(
    common: Common,
    window: u64,
    size: usize,
    count: u64,
    tls: bool,
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
    let echo = Node::start_inline(c.clone(), |node, msg| drop(node.send(msg)));
    let (tx, inbox): (Sender<Message>, Receiver<Message>) = crossbeam_channel::unbounded();
    let sender = echo.and_then(|echo| {
        Node::start(c, move |m| {
            let _ = tx.send(m);
        })
        .map(|s| (echo, s))
    });
    if tls {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let (echo, sender) = sender?;
    let sender = Arc::new(sender);
    watch_signals(&sender, signals);
    let to = SocketAddr::from(([127, 0, 0, 1], echo.port()));
    let r = round_trips(&sender, &inbox, to, &pattern(size), count, window, true);
    sender.close();
    echo.close();
    print_rate(count, r?);
    Ok(())
}
