//! The `chirp` binary, end to end: every subcommand against real nodes on loopback.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_chirp")
}

/// A running `chirp echo`/`listen`, killed on drop.
struct Daemon {
    child: Child,
    port: u16,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn daemon(bin: &str, args: &[&str]) -> Daemon {
    let mut child = Command::new(bin)
        .args(args)
        .args(["--port", "0", "--no-encryption"])
        // The tests read the tool's output: the caller's RUST_LOG must not add to it.
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn chirp");
    let out = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = lines
        .recv_timeout(Duration::from_secs(20))
        .expect("listening line");
    let port = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .parse()
        .unwrap();
    Daemon { child, port, lines }
}

fn run(bin: &str, args: &[&str]) -> Output {
    let mut child = Command::new(bin)
        .args(args)
        // Tests count the lines on stderr: the caller's RUST_LOG must not add log lines.
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chirp");
    // Bounded wait: never hang the suite.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chirp {args:?} did not finish within 60 s");
        }
        std::thread::park_timeout(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_rate_line(out: &str, n: u64) {
    let line = out.lines().last().unwrap_or("");
    let rest = line
        .strip_prefix(&format!("{n} round trips in "))
        .unwrap_or_else(|| panic!("bad rate line {line:?}"));
    let (secs, rate) = rest.split_once(" s: ").expect("' s: '");
    let (whole, frac) = secs.split_once('.').expect("decimals");
    assert!(
        whole.parse::<u64>().is_ok() && frac.len() == 3 && frac.parse::<u64>().is_ok(),
        "{line}"
    );
    let rate = rate.strip_suffix("/s").expect("/s");
    assert!(rate.parse::<u64>().is_ok(), "{line}");
    assert_eq!(out.lines().count(), 1, "exactly one line: {out:?}");
}

#[test]
fn echo_and_send_sync_async_ipv4_ipv6() {
    let bin = bin();
    for mode in [&[][..], &["--async"][..]] {
        let echo = daemon(bin, &[&["echo"][..], mode].concat());
        for host in ["127.0.0.1", "[::1]"] {
            let to = format!("{host}:{}", echo.port);
            let o = run(
                bin,
                &[
                    &[
                        "send",
                        &to,
                        "--no-encryption",
                        "--count",
                        "200",
                        "--window",
                        "8",
                        "--echo",
                    ][..],
                    mode,
                ]
                .concat(),
            );
            assert!(o.status.success(), "{}", stderr(&o));
            assert_rate_line(&stdout(&o), 200);
            // On a pipe: no progress line, only the closing summary of the statistics.
            let err = stderr(&o);
            assert!(!err.contains('\r'), "no progress on a pipe: {err:?}");
            assert_eq!(err.lines().count(), 1, "{err:?}");
            let summary = parse_stats(err.strip_prefix("summary: ").expect("summary line"));
            assert_eq!(summary["msgs_out"], 200, "{err}");
            assert_eq!(summary["msgs_in"], 200, "{err}");
            assert_eq!(summary["errors"], 0, "{err}");
        }
        // Without --echo: waits for the sends, prints nothing.
        let o = run(
            bin,
            &[
                &[
                    "send",
                    &format!("127.0.0.1:{}", echo.port),
                    "--no-encryption",
                    "--size",
                    "100000",
                    "--count",
                    "5",
                ][..],
                mode,
            ]
            .concat(),
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stdout(&o), "");
    }
}

#[test]
fn echo_and_request() {
    let bin = bin();
    let echo = daemon(bin, &["echo"]);
    let o = run(
        bin,
        &[
            "request",
            &format!("127.0.0.1:{}", echo.port),
            "--data",
            "how are you",
            "--no-encryption",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "how are you\n");
}

#[test]
fn listen_prints_one_line_per_message() {
    let bin = bin();
    let listen = daemon(bin, &["listen"]);
    let o = run(
        bin,
        &[
            "send",
            &format!("127.0.0.1:{}", listen.port),
            "--data",
            "héllo wörld",
            "--count",
            "3",
            "--no-encryption",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let mut serials = Vec::new();
    for _ in 0..3 {
        let line = listen
            .lines
            .recv_timeout(Duration::from_secs(10))
            .expect("a line per message");
        let parts: Vec<&str> = line.splitn(4, ' ').collect();
        assert_eq!(parts.len(), 4, "{line}");
        assert!(parts[0].starts_with("127.0.0.1:"), "{line}");
        assert!(parts[0][10..].parse::<u16>().is_ok(), "{line}");
        assert_eq!(parts[1].len(), 32);
        assert!(parts[1].chars().all(|c| c.is_ascii_hexdigit()));
        serials.push(parts[2].parse::<u32>().expect("serial"));
        assert_eq!(parts[3], "héllo wörld");
    }
    assert_eq!(serials[1], serials[0].wrapping_add(1));
    assert_eq!(serials[2], serials[1].wrapping_add(1));
}

/// `chirp send --batch N`, the streaming path, asynchronous and synchronous: every message
/// arrives once, with its serials in order (a batch that does not divide the count, and a
/// window of several batches).
#[test]
fn send_batch_delivers_every_message_once_in_order() {
    let bin = bin();
    for mode in [&["--async"][..], &[][..]] {
        let listen = daemon(bin, &["listen"]);
        let to = format!("127.0.0.1:{}", listen.port);
        let mut args = vec![
            "send",
            &to,
            "--data",
            "batched",
            "--count",
            "50",
            "--batch",
            "7",
            "--window",
            "21",
            "--no-encryption",
        ];
        args.extend_from_slice(mode);
        let o = run(bin, &args);
        assert!(o.status.success(), "{mode:?}: {}", stderr(&o));
        let serials: Vec<u32> = (0..50)
            .map(|i| {
                let line = listen
                    .lines
                    .recv_timeout(Duration::from_secs(10))
                    .unwrap_or_else(|_| panic!("{mode:?}: only {i} of 50 messages arrived"));
                let parts: Vec<&str> = line.splitn(4, ' ').collect();
                assert_eq!(parts.get(3), Some(&"batched"), "{mode:?}: {line}");
                parts[2].parse().expect("serial")
            })
            .collect();
        for w in serials.windows(2) {
            assert_eq!(w[1], w[0].wrapping_add(1), "{mode:?}: serials {serials:?}");
        }
        assert!(
            listen
                .lines
                .recv_timeout(Duration::from_millis(200))
                .is_err(),
            "{mode:?}: a message arrived twice"
        );
    }
}

#[test]
fn bench_prints_the_rate_plain_and_tls() {
    let bin = bin();
    for args in [
        &["bench", "--count", "300"][..],
        &["bench", "--async", "--window", "16", "--count", "2000"][..],
        &["bench", "--tls", "--count", "100"][..],
        &[
            "bench", "--tls", "--async", "--window", "4", "--size", "70000", "--count", "50",
        ][..],
    ] {
        let o = run(bin, args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        let n: u64 = args[args.iter().position(|a| *a == "--count").unwrap() + 1]
            .parse()
            .unwrap();
        assert_rate_line(&stdout(&o), n);
    }
}

#[test]
fn bad_arguments_fail_with_one_line() {
    let bin = bin();
    for args in [
        &["send"][..],
        &["send", "not-an-address", "--no-encryption"][..],
        &["frobnicate"][..],
        &["echo", "--port", "0"][..], // encryption needs files
        &["echo", "--port", "80", "--no-encryption"][..],
        &["send", "127.0.0.1:1", "--count", "x"][..],
        &[
            "echo",
            "--port",
            "0",
            "--cert-chain",
            "/nonexistent.pem",
            "--dh-params",
            "/x",
        ][..],
    ] {
        let o = run(bin, args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err:?}");
    }
    let o = run(bin, &["echo", "--port", "0"]);
    assert!(stderr(&o).contains("--no-encryption"), "says what to do");
}

#[test]
fn unreachable_peer_fails_with_one_line() {
    let bin = bin();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let o = run(
        bin,
        &[
            "send",
            &closed.to_string(),
            "--no-encryption",
            "--timeout",
            "1",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot connect"), "{err}");
}

#[test]
fn sigterm_and_sigint_close_cleanly() {
    let bin = bin();
    for sig in [libc_sig::TERM, libc_sig::INT] {
        let mut echo = daemon(bin, &["echo"]);
        let pid = echo.child.id();
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(st.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = echo.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "chirp echo did not exit on SIG{sig}"
            );
            std::thread::park_timeout(Duration::from_millis(10));
        };
        assert!(status.success(), "exit status after SIG{sig}: {status:?}");
    }
}

mod libc_sig {
    pub const TERM: &str = "TERM";
    pub const INT: &str = "INT";
}

/// A synchronous `chirp echo` answers an asynchronous sender that keeps 16 messages
/// outstanding (before, the echo's one slot was held while the ACK it waited for sat in the
/// socket behind the next message: "1 of 300 came back").
#[test]
fn synchronous_echo_answers_a_pipelining_asynchronous_sender() {
    let bin = bin();
    let echo = daemon(bin, &["echo"]);
    let o = run(
        bin,
        &[
            "send",
            &format!("127.0.0.1:{}", echo.port),
            "--no-encryption",
            "--async",
            "--window",
            "16",
            "--echo",
            "--count",
            "10000",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_rate_line(&stdout(&o), 10000);
}

/// A synchronous sender that sends, waits for the send, and only then reads the answer (as
/// libchirp's queue examples do) gets every answer from `chirp echo`.
#[test]
fn echo_answers_a_sender_that_waits_before_it_receives() {
    let bin = bin();
    let echo = daemon(bin, &["echo"]);
    let mut c = libchirp::Config::default();
    c.port = 0;
    c.disable_encryption = true;
    let sender = libchirp::queue::Chirp::new(c).unwrap();
    let to: std::net::SocketAddr = format!("127.0.0.1:{}", echo.port).parse().unwrap();
    for i in 0..100u32 {
        match sender
            .send(libchirp::Message::to(to, i.to_be_bytes().to_vec()))
            .wait_timeout(Duration::from_secs(10))
        {
            Ok(r) => drop(r.unwrap()),
            Err(_) => panic!("round {i}: deadlock"),
        }
        let answer = sender.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(answer.data(), i.to_be_bytes());
    }
    sender.close();
}

/// Out of descriptors on accept (EMFILE): the node backs off instead of spinning, logs once
/// per burst, does not die, and serves again once descriptors are free.
#[test]
fn out_of_descriptors_on_accept_the_node_backs_off_and_recovers() {
    let bin = bin();
    let mut child = Command::new("sh")
        .args([
            "-c",
            r#"ulimit -n 40 && exec "$0" "$@""#,
            bin,
            "echo",
            "--port",
            "0",
            "--no-encryption",
            "--max-connections",
            "1000",
            "--max-handshaking",
            "1000",
        ])
        // The test counts the warning the node logs: set the level it depends on, whatever
        // the caller's RUST_LOG says.
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chirp under ulimit");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port: u16 = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .parse()
        .unwrap();
    let to: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Far more connections than descriptors: the kernel completes them, the node cannot
    // accept most of them.
    let flood: Vec<std::net::TcpStream> = (0..120)
        .map(|_| std::net::TcpStream::connect(to).unwrap())
        .collect();
    // Give the accept loop a whole second of EMFILE (it must back off, not spin or die).
    let waited = Instant::now();
    while waited.elapsed() < Duration::from_secs(1) {
        assert!(child.try_wait().unwrap().is_none(), "the node died");
        std::thread::park_timeout(Duration::from_millis(50));
    }
    drop(flood);
    // Descriptors come back as the node sees the flood close; then a real peer is served.
    let mut c = libchirp::Config::default();
    c.port = 0;
    c.disable_encryption = true;
    let (tx, rx) = std::sync::mpsc::channel();
    let peer = libchirp::Node::start(c, move |m| {
        let _ = tx.send(m.data().to_vec());
    })
    .unwrap();
    let mut served = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !served && Instant::now() < deadline {
        let sent = peer
            .send(libchirp::Message::to(to, b"back".to_vec()))
            .wait_timeout(Duration::from_secs(10));
        served = matches!(sent, Ok(Ok(_))) && rx.recv_timeout(Duration::from_secs(10)).is_ok();
    }
    assert!(served, "the node serves again once descriptors are free");
    peer.close();
    assert!(child.try_wait().unwrap().is_none(), "the node is alive");
    let _ = child.kill();
    let _ = child.wait();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let accept_lines = err.lines().filter(|l| l.contains("accept failed")).count();
    assert!(accept_lines >= 1, "the exhaustion is logged: {err}");
    assert!(
        accept_lines <= 5,
        "once per burst, not per failure: {accept_lines} lines"
    );
}

/// The `key=value` fields of a statistics line.
fn parse_stats(line: &str) -> std::collections::HashMap<String, u64> {
    line.split_whitespace()
        .filter(|f| !f.contains("/s="))
        .map(|f| {
            let (k, v) = f
                .split_once('=')
                .unwrap_or_else(|| panic!("field {f:?} in {line:?}"));
            (
                k.to_string(),
                v.parse()
                    .unwrap_or_else(|_| panic!("value {v:?} in {line:?}")),
            )
        })
        .collect()
}

/// `chirp echo --stats SECS` prints one line of statistics per interval to stderr; the
/// counters move with the traffic.
#[test]
fn echo_prints_statistics_lines_that_parse() {
    let bin = bin();
    let mut child = Command::new(bin)
        .args(["echo", "--port", "0", "--no-encryption", "--stats", "0.2"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    let (tx, lines) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let o = run(
        bin,
        &[
            "send",
            &format!("127.0.0.1:{port}"),
            "--no-encryption",
            "--count",
            "50",
            "--echo",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = None;
    while Instant::now() < deadline {
        let Ok(l) = lines.recv_timeout(Duration::from_secs(5)) else {
            break;
        };
        let s = parse_stats(&l);
        for key in [
            "connections",
            "handshaking",
            "accepted",
            "refused",
            "closed",
            "msgs_in",
            "msgs_out",
            "bytes_in",
            "bytes_out",
            "acks_in",
            "acks_out",
            "errors",
        ] {
            assert!(s.contains_key(key), "{key} missing in {l:?}");
        }
        assert!(l.contains("msgs_in/s="), "rates beside the totals: {l:?}");
        if s["msgs_in"] == 50 && s["acks_in"] == 50 {
            last = Some(s);
            break;
        }
    }
    let s = last.expect("a statistics line counting the 50 messages");
    assert_eq!((s["msgs_out"], s["accepted"], s["errors"]), (50, 1, 0));
    let _ = child.kill();
    let _ = child.wait();
}

/// An asynchronous `chirp echo` answers every message of a sender that sends as fast as it
/// can (`bench-latency --rate 0`: only the echo's backpressure holds it back). The echo
/// used to release each request before answering it, so its send queue grew faster than
/// it wrote until `max_queued` refused echoes, which were lost ("only 19014 of 50000
/// echoes came back"); the request now keeps its slot until its echo is written.
#[test]
fn asynchronous_echo_answers_a_sender_that_sends_as_fast_as_it_can() {
    let bin = bin();
    let echo = daemon(bin, &["echo", "--async"]);
    let o = run(
        bin,
        &[
            "bench-latency",
            &format!("127.0.0.1:{}", echo.port),
            "--no-encryption",
            "--async",
            "--rate",
            "0",
            "--count",
            "50000",
        ],
    );
    assert!(
        o.status.success(),
        "the sender did not get every echo back: {}",
        stderr(&o)
    );
    let out = stdout(&o);
    assert!(
        out.contains("received=50000 "),
        "every echo received: {out}"
    );
}
