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
//! the node cleanly; SIGHUP reloads the certificate chain and DH parameters from their
//! files for new connections. `RUST_LOG=debug` shows the library's log.
//!
//! One module per group of subcommands: `serve` (echo, listen), `send` (send, request, and
//! the event-driven sender they share with the benchmarks) and `bench` (measurements only).

// Doc comments on the argument types are clap's help texts, not Markdown: `[::1]:2998`
// there is an address, not a link.
#![allow(rustdoc::broken_intra_doc_links)]

mod bench;
mod chaos;
mod latency;
mod send;
mod serve;

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use crossbeam_channel::Receiver;
use libchirp::{Config, Error, Node, SendError, Stats};

#[derive(Parser, Debug)]
#[command(
    name = "chirp",
    version = version(),
    about = "libchirp message passing from the command line"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Node settings every subcommand shares.
#[derive(Args, Debug, Clone)]
pub(crate) struct Common {
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
    /// Idle connections are closed after this many seconds (at least 3 × the timeout).
    #[arg(long, value_name = "SECS")]
    reuse_time: Option<f64>,
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
    /// Warn at start (and on reload) when the node certificate expires within DAYS days
    /// (default 30; 0 never warns). SIGHUP reloads --cert-chain and --dh-params for new
    /// connections without a restart.
    #[arg(long, value_name = "DAYS")]
    cert_expiry_warning: Option<u32>,
    /// Most connections at once (default: derived from the process's limits).
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Most accepted connections in their handshake at once (default: a quarter of
    /// --max-connections, at least 16).
    #[arg(long, value_name = "N")]
    max_handshaking: Option<usize>,
}

/// `chirp --version`: the tool's version and the OpenSSL it runs on (the library it loaded,
/// which is what TLS behaviour depends on, not the headers it was built against).
fn version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        format!(
            "{} ({})",
            env!("CARGO_PKG_VERSION"),
            openssl::version::version()
        )
    })
}

/// Shells `chirp completions` writes a completion script for.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Send every received message back to its sender.
    Echo {
        /// Print the node's statistics to stderr every SECS seconds.
        #[arg(long, value_name = "SECS")]
        stats: Option<f64>,
        #[command(flatten)]
        common: Common,
    },
    /// Print one line per received message: ADDRESS:PORT IDENTITY SERIAL DATA.
    Listen {
        /// Print the node's statistics to stderr every SECS seconds.
        #[arg(long, value_name = "SECS")]
        stats: Option<f64>,
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
        /// The streaming path: send in batches of N messages through one peer handle
        /// (libchirp's Peer::send_batch, one completion per batch); --window then counts
        /// messages outstanding in whole batches (at least one). Fastest for one-way
        /// streams, e.g. --async --batch 256 --window 1000.
        #[arg(long, value_name = "N", conflicts_with_all = ["echo", "report"])]
        batch: Option<u64>,
        /// Wait for every message to come back from an echo node and print the rate.
        #[arg(long)]
        echo: bool,
        /// One line per message instead of the rate, and go on after failures: `ok I T MS`
        /// or `err I T MS REASON` (message I, whose data is "I"; T: Unix time in ms when it
        /// completed; MS: how long it took); with --echo also `echo I T IDENTITY` or
        /// `noecho I T` (the answer and the answering node's identity). One at a time.
        #[arg(long)]
        report: bool,
        /// With --report: wait this many milliseconds between messages (a steady pace).
        #[arg(long, value_name = "MS", default_value_t = 0)]
        interval: u64,
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
    /// Capacity: an echo node in this process with N idle handshaken peers (held by helper
    /// processes); prints threads, descriptors and resident memory per connection and a good
    /// peer's round-trip latency. With --flood M, then floods it with M connections that
    /// never handshake and checks that the good peer is served and that threads and
    /// descriptors come back to their baseline.
    BenchIdle {
        /// Number of idle peers.
        #[arg(long, alias = "connections", default_value_t = 1000)]
        peers: usize,
        /// Connections that never handshake, opened after the idle peers have gone.
        #[arg(long, default_value_t = 0)]
        flood: usize,
    },
    /// One-way throughput sink: an asynchronous node that only counts received messages
    /// (released at once); after COUNT it prints the rate from the first to the last.
    BenchSink {
        /// Messages to wait for.
        #[arg(long)]
        count: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Measurement helper: writes a throwaway PKI (libchirp::pki::TestPki) into DIR and
    /// prints the paths of the node chain (X.509 v1 leaf) and the DH parameters.
    #[command(hide = true)]
    BenchPki { dir: PathBuf },
    /// Measurement helper for bench-idle: opens COUNT connections to ADDR (handshaken, or
    /// silent with --silent), prints "ready OPENED", holds them until stdin closes.
    #[command(hide = true)]
    BenchPeers {
        addr: String,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        silent: bool,
    },
    /// Open-loop latency against an echo node: message i is scheduled at i / RATE seconds
    /// and its latency runs from that time to its echo's arrival (a stalled sender is
    /// charged). Prints percentiles from an HDR histogram, in microseconds.
    BenchLatency {
        /// The echo node, e.g. 127.0.0.1:2998.
        addr: String,
        /// Messages per second offered (0: as fast as the node takes them, at most 1,000
        /// outstanding: the saturation rate).
        #[arg(long)]
        rate: f64,
        /// Number of messages.
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// Message size in bytes (at least 8: the message number).
        #[arg(long, default_value_t = 16)]
        size: usize,
        #[command(flatten)]
        common: Common,
    },
    /// Test helper for the randomized fault test (cli/tests/chaos.rs): serves, and sends
    /// to random peers for --send-for seconds, one line per event (see cli/src/chaos.rs).
    #[command(hide = true)]
    ChaosNode {
        /// This node's name in the event lines.
        #[arg(long)]
        name: String,
        /// Comma-separated peers, e.g. 10.0.0.1:7000,10.0.0.2:7000.
        #[arg(long)]
        peers: String,
        /// Sends per second.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// Stop sending after this many seconds (then serve until SIGTERM).
        #[arg(long, value_name = "SECS")]
        send_for: f64,
        /// Seed of the choice of peers and payloads.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Measurement helper for bench.sh: the bench-latency summary of latencies recorded
    /// by another program (FILE: nanoseconds, one per line).
    #[command(hide = true)]
    BenchHistogram {
        file: PathBuf,
        /// The offered rate, for the summary line.
        offered: f64,
        /// The run's duration in seconds, for the achieved rate.
        secs: f64,
    },
    /// Print a shell completion script to stdout, e.g.
    /// `chirp completions bash > /etc/bash_completion.d/chirp`.
    Completions {
        /// The shell: bash, zsh or fish.
        shell: Shell,
    },
    /// Write the manual pages, chirp(1) and one per subcommand (chirp-echo(1), …), into
    /// DIR, e.g. `chirp manpage /usr/local/share/man/man1`, then `man chirp`.
    Manpage {
        /// The directory to write the pages into (created if missing).
        dir: PathBuf,
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
pub(crate) struct Fail(pub(crate) String);

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
    // Documentation commands need no node, no logger and no signal handling.
    match cli.command {
        Command::Completions { shell } => return completions(shell),
        Command::Manpage { dir } => return manpage(&dir),
        _ => {}
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let signals = match stop_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chirp: cannot handle SIGINT/SIGTERM: {e}");
            return ExitCode::from(1);
        }
    };
    match run(cli, signals) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(msg)) => {
            eprintln!("chirp: {msg}");
            ExitCode::from(1)
        }
    }
}

/// `chirp completions SHELL`: the completion script clap_complete derives from the same
/// argument definitions as `--help`.
fn completions(shell: Shell) -> ExitCode {
    use clap::CommandFactory;
    use clap_complete::{generate, shells};
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    match shell {
        Shell::Bash => generate(shells::Bash, &mut cmd, "chirp", &mut out),
        Shell::Zsh => generate(shells::Zsh, &mut cmd, "chirp", &mut out),
        Shell::Fish => generate(shells::Fish, &mut cmd, "chirp", &mut out),
    }
    finish_stdout(out.flush())
}

/// `chirp manpage DIR`: writes chirp(1) and one page per subcommand (chirp-echo(1), …, the
/// pages chirp(1) refers to) into DIR, rendered by clap_mangen from the argument
/// definitions, and prints each path written.
fn manpage(dir: &std::path::Path) -> ExitCode {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let mut pages = vec![("chirp".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("chirp-{}", sub.get_name());
        let sub = sub
            .clone()
            .name(name.clone())
            .bin_name(format!("chirp {}", sub.get_name()))
            .version(version());
        pages.push((name, sub));
    }
    let write = |name: &str, page: clap::Command| -> std::io::Result<std::path::PathBuf> {
        let mut roff = Vec::new();
        clap_mangen::Man::new(page)
            .title(name.to_string())
            .render(&mut roff)?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, roff)?;
        Ok(path)
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("chirp: cannot create {}: {e}", dir.display());
        return ExitCode::from(1);
    }
    for (name, page) in pages {
        match write(&name, page) {
            Ok(path) => println!("{}", path.display()),
            Err(e) => {
                eprintln!("chirp: cannot write {name}.1 into {}: {e}", dir.display());
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}

/// Exit status of a command that only writes to stdout (a closed pipe is not an error).
fn finish_stdout(result: std::io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chirp: cannot write to stdout: {e}");
            ExitCode::from(1)
        }
    }
}

/// What the process was asked by signals: `stop` gets one message on SIGINT or SIGTERM,
/// `reload` one per SIGHUP (coalesced while one is pending).
pub(crate) struct Signals {
    pub(crate) stop: Receiver<()>,
    reload: Receiver<()>,
}

/// Signal-hook's self-pipe iterator, read by a small named thread.
fn stop_signals() -> std::io::Result<Signals> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let (stop_tx, stop) = crossbeam_channel::bounded(1);
    let (reload_tx, reload) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("chirp-signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    let _ = reload_tx.try_send(());
                } else {
                    let _ = stop_tx.send(());
                    return;
                }
            }
        })?;
    Ok(Signals { stop, reload })
}

/// SIGHUP: reads the node's certificate chain and DH parameters again from the files it was
/// started with and uses them for new connections (`Node::reload_tls`); says so on stderr.
pub(crate) fn reload_tls(node: &Node) {
    let c = node.config().config();
    let (Some(chain), Some(dh), false) = (&c.cert_chain, &c.dh_params, c.disable_encryption) else {
        eprintln!("chirp: SIGHUP: nothing to reload (this node does not encrypt)");
        return;
    };
    match node.reload_tls(chain, dh) {
        Ok(()) => {
            let cert = node.stats().certificate.map(|c| c.to_string());
            eprintln!(
                "chirp: SIGHUP: reloaded {} and {}; new connections present {}",
                chain.display(),
                dh.display(),
                cert.unwrap_or_default()
            );
        }
        Err(e) => {
            eprintln!("chirp: SIGHUP: reload failed, still using the previous certificate: {e}")
        }
    }
}

fn run(cli: Cli, signals: Signals) -> Result<(), Fail> {
    match cli.command {
        Command::Echo { stats, common } => {
            serve::echo(config(&common, 2998)?, period(stats)?, signals)
        }
        Command::Listen { stats, common } => {
            serve::listen(config(&common, 2998)?, period(stats)?, signals)
        }
        Command::Send {
            addr,
            data,
            size,
            count,
            window,
            batch,
            echo,
            report,
            interval,
            common,
        } => {
            if report {
                let pace = Duration::from_millis(interval);
                let to = parse_addr(&addr)?;
                return send::report(config(&common, 0)?, to, count, echo, pace, signals);
            }
            let payload = match (data, size) {
                (_, Some(n)) => pattern(n),
                (Some(d), None) => d.into_bytes(),
                (None, None) => b"hello".to_vec(),
            };
            let opts = send::Opts {
                to: parse_addr(&addr)?,
                payload,
                count,
                window: window.max(1),
                batch: batch.unwrap_or(0),
            };
            if opts.batch == 0 && batch.is_some() {
                return Err(Fail("--batch must be at least 1".into()));
            }
            send::send(config(&common, 0)?, opts, echo, signals)
        }
        Command::Request { addr, data, common } => {
            send::request(config(&common, 0)?, parse_addr(&addr)?, data, signals)
        }
        Command::Bench {
            window,
            size,
            count,
            tls,
            stream,
            common,
        } => bench::bench(&common, window.max(1), size, count, tls, stream, signals),
        Command::BenchIdle { peers, flood } => bench::idle(peers, flood),
        Command::BenchPki { dir } => {
            let pki = libchirp::pki::TestPki::generate(&dir)?;
            println!("{} {}", pki.node_v1.display(), pki.dh_params.display());
            Ok(())
        }
        Command::BenchSink { count, common } => bench::sink(config(&common, 0)?, count, signals),
        Command::BenchPeers {
            addr,
            count,
            silent,
        } => bench::peers(parse_addr(&addr)?, count, silent),
        Command::BenchRaw {
            size,
            count,
            stream,
        } => bench::raw(size, count, stream),
        Command::BenchLatency {
            addr,
            rate,
            count,
            size,
            common,
        } => latency::run(config(&common, 0)?, parse_addr(&addr)?, rate, count, size),
        Command::ChaosNode {
            name,
            peers,
            rate,
            send_for,
            seed,
            common,
        } => {
            let peers = peers
                .split(',')
                .filter(|p| !p.is_empty())
                .map(parse_addr)
                .collect::<Result<Vec<_>, _>>()?;
            let opts = chaos::Opts {
                name,
                peers,
                rate,
                send_for: Duration::from_secs_f64(send_for.clamp(0.0, 1e6)),
                seed,
            };
            chaos::run(config(&common, 0)?, opts, signals)
        }
        Command::BenchHistogram {
            file,
            offered,
            secs,
        } => latency::summarize(&file, offered, secs),
        // Handled in main before the node machinery starts.
        Command::Completions { .. } | Command::Manpage { .. } => Ok(()),
    }
}

/// The `--stats` period.
fn period(secs: Option<f64>) -> Result<Option<Duration>, Fail> {
    match secs {
        None => Ok(None),
        Some(s) if s.is_finite() && s >= 0.01 => Ok(Some(Duration::from_secs_f64(s.min(1e6)))),
        Some(s) => Err(Fail(format!(
            "--stats must be a number of seconds of at least 0.01, got {s}"
        ))),
    }
}

/// One line of statistics: `connections=N handshaking=N accepted=N refused=N closed=N
/// msgs_in=N msgs_out=N bytes_in=N bytes_out=N acks_in=N acks_out=N errors=N`, with TLS
/// `cert_expires_in_days=N`, then, given the previous snapshot and the time since, the
/// rates per second.
pub(crate) fn stats_line(s: &Stats, before: Option<(&Stats, Duration)>) -> String {
    let mut line = format!(
        "connections={} handshaking={} accepted={} refused={} closed={} msgs_in={} msgs_out={} bytes_in={} bytes_out={} acks_in={} acks_out={} errors={}",
        s.connections,
        s.handshaking,
        s.accepted,
        s.refused(),
        s.closed(),
        s.msgs_in,
        s.msgs_out,
        s.bytes_in,
        s.bytes_out,
        s.acks_in,
        s.acks_out,
        s.sends_failed,
    );
    if let Some(cert) = &s.certificate {
        // Whole days until the node certificate expires (negative once it has).
        let days = match cert.not_after.duration_since(std::time::SystemTime::now()) {
            Ok(left) => (left.as_secs() / 86_400) as i64,
            Err(past) => -((past.duration().as_secs() / 86_400) as i64) - 1,
        };
        line.push_str(&format!(" cert_expires_in_days={days}"));
    }
    if let Some((b, dt)) = before {
        let rate =
            |now: u64, then: u64| now.saturating_sub(then) as f64 / dt.as_secs_f64().max(1e-9);
        line.push_str(&format!(
            " msgs_in/s={:.0} msgs_out/s={:.0} bytes_in/s={:.0} bytes_out/s={:.0}",
            rate(s.msgs_in, b.msgs_in),
            rate(s.msgs_out, b.msgs_out),
            rate(s.bytes_in, b.bytes_in),
            rate(s.bytes_out, b.bytes_out),
        ));
    }
    line
}

/// Serves until SIGINT or SIGTERM, reloading the certificate on SIGHUP and printing a
/// statistics line to stderr every `period`.
pub(crate) fn serve_until_signal(node: &Node, period: Option<Duration>, signals: &Signals) {
    let mut before = (node.stats(), std::time::Instant::now());
    loop {
        let tick = match period {
            Some(p) => crossbeam_channel::after(p),
            None => crossbeam_channel::never(),
        };
        crossbeam_channel::select! {
            recv(signals.stop) -> _ => return,
            recv(signals.reload) -> _ => reload_tls(node),
            recv(tick) -> _ => {
                let now = (node.stats(), std::time::Instant::now());
                eprintln!(
                    "{}",
                    stats_line(&now.0, Some((&before.0, now.1 - before.1)))
                );
                before = now;
            }
        }
    }
}

/// The node configuration the common flags describe.
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
    if let Some(t) = common.reuse_time {
        if !(t.is_finite() && t > 0.0) {
            return Err(Fail(format!(
                "--reuse-time must be a positive number of seconds, got {t}"
            )));
        }
        c.reuse_time = Duration::from_secs_f64(t.min(1e6));
    }
    c.disable_encryption = common.no_encryption;
    c.cert_chain = common.cert_chain.clone();
    c.dh_params = common.dh_params.clone();
    c.always_encrypt = common.always_encrypt;
    if let Some(days) = common.cert_expiry_warning {
        c.cert_expiry_warning = Duration::from_secs(u64::from(days) * 86_400);
    }
    c.max_connections = common.max_connections.unwrap_or(0);
    c.max_handshaking = common.max_handshaking.unwrap_or(0);
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

/// Prints the line tests and scripts wait for.
pub(crate) fn announce(node: &Node) {
    println!("listening on {}", node.port());
    let _ = std::io::stdout().flush();
}

pub(crate) fn print_rate(count: u64, elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { count as f64 / secs } else { 0.0 };
    println!("{count} round trips in {secs:.3} s: {rate:.0}/s");
}

/// Closes the node when SIGINT or SIGTERM arrives, which fails whatever is pending;
/// reloads its certificate on SIGHUP.
pub(crate) fn watch_signals(node: &Arc<Node>, signals: Signals) {
    let node = Arc::downgrade(node);
    let _ = std::thread::Builder::new()
        .name("chirp-signal-close".into())
        .stack_size(64 * 1024)
        .spawn(move || loop {
            crossbeam_channel::select! {
                recv(signals.stop) -> r => {
                    if let (Ok(()), Some(n)) = (r, node.upgrade()) {
                        n.close();
                    }
                    return;
                }
                recv(signals.reload) -> r => match (r, node.upgrade()) {
                    (Ok(()), Some(n)) => reload_tls(&n),
                    _ => return,
                },
            }
        });
}

/// `n` bytes of a recognisable pattern.
pub(crate) fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}
