//! `examples/prometheus.rs` as an operator uses it: start it, move traffic through the node,
//! scrape `/metrics` over HTTP and read the figures. (Feature `metrics`; the example binary
//! is built by `cargo test --features metrics`, or `cargo build --features metrics
//! --examples`.)
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use libchirp::{Config, Message, Node};

/// The example's process, killed on drop.
struct Example {
    child: Child,
    node: SocketAddr,
    metrics: SocketAddr,
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn example_path() -> PathBuf {
    // target/<profile>/deps/prometheus-<hash> -> target/<profile>/examples/prometheus
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/prometheus");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --features metrics --examples`",
        path.display()
    );
    path
}

fn start() -> Example {
    let mut child = Command::new(example_path())
        .args(["0", "0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the prometheus example");
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let line = || {
        rx.recv_timeout(Duration::from_secs(20))
            .expect("the example prints its two lines within 20 s")
    };
    let (first, second) = (line(), line());
    let node_port: u16 = first
        .strip_prefix("listening on ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("first line {first:?}"));
    let metrics: SocketAddr = second
        .strip_prefix("metrics on http://")
        .and_then(|a| a.strip_suffix("/metrics"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("second line {second:?}"));
    Example {
        child,
        node: SocketAddr::from(([127, 0, 0, 1], node_port)),
        metrics,
    }
}

/// One HTTP/1.0 GET; returns (status line, content type, body).
fn get(addr: SocketAddr, path: &str) -> (String, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("a whole response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("headers, then a body");
    let status = head.lines().next().unwrap_or("").to_string();
    let ctype = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, ctype, body.to_string())
}

/// `name{labels}` → value of every sample line.
fn samples(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("sample {l:?}"));
            let v = v.parse().unwrap_or_else(|_| panic!("value in {l:?}"));
            (k.to_string(), v)
        })
        .collect()
}

fn value(s: &HashMap<String, f64>, key: &str) -> f64 {
    *s.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in the scrape: {:?}", s.keys()))
}

/// A client node and `n` synchronous requests answered by the example's echo.
fn traffic(to: SocketAddr, n: usize) {
    let mut c = Config::default();
    c.port = 0;
    c.disable_encryption = true;
    let client = Node::start(c, drop).expect("client node");
    for i in 0..n {
        let answer = client
            .request(Message::to(to, format!("ping {i}").into_bytes()))
            .wait_timeout(Duration::from_secs(10))
            .expect("an answer within 10 s")
            .expect("the echo answers");
        assert_eq!(answer.data(), format!("ping {i}").as_bytes());
    }
    client.close();
}

#[test]
fn a_scrape_shows_the_node_figures_moving_with_traffic() {
    let ex = start();
    let (status, ctype, body) = get(ex.metrics, "/metrics");
    assert!(status.contains(" 200"), "status {status:?}");
    assert!(
        ctype.starts_with("text/plain") && ctype.contains("version=0.0.4"),
        "the exposition format's content type, got {ctype:?}"
    );
    let before = samples(&body);
    assert_eq!(value(&before, "chirp_messages_received_total"), 0.0);
    assert_eq!(value(&before, "chirp_connections"), 0.0);

    traffic(ex.node, 40);
    let (_, _, body) = get(ex.metrics, "/metrics");
    let after = samples(&body);
    assert_eq!(
        value(&after, "chirp_messages_received_total"),
        40.0,
        "40 requests received"
    );
    assert_eq!(
        value(&after, "chirp_messages_sent_total"),
        40.0,
        "40 answers sent"
    );
    // Message bytes (header and data): "ping 0".."ping 39".
    let data: usize = (0..40).map(|i| format!("ping {i}").len()).sum();
    assert_eq!(value(&after, "chirp_received_bytes_total"), data as f64);
    assert_eq!(value(&after, "chirp_sent_bytes_total"), data as f64);
    assert!(value(&after, "chirp_connections_accepted_total") >= 1.0);
    // Labels carry reasons and kinds; every one of them is exported, zero or not.
    for reason in ["capacity", "tls", "protocol", "handshake_timeout"] {
        value(
            &after,
            &format!("chirp_connections_refused_total{{reason=\"{reason}\"}}"),
        );
    }
    value(&after, "chirp_sends_failed_total{kind=\"timeout\"}");
    // Every metric has HELP and TYPE; counters end in _total, bytes in _bytes(_total).
    for line in body.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut f = line.split(' ').skip(2);
        let (name, kind) = (f.next().unwrap(), f.next().unwrap());
        assert!(
            body.contains(&format!("# HELP {name} ")),
            "{name} has a HELP line"
        );
        if kind == "counter" {
            assert!(name.ends_with("_total"), "counter {name} ends in _total");
        }
        if name.contains("bytes") {
            assert!(
                name.ends_with("_bytes") || name.ends_with("_bytes_total"),
                "{name}: the unit is a suffix"
            );
        }
    }
    let (status, _, _) = get(ex.metrics, "/nothing");
    assert!(status.contains(" 404"), "other paths: {status:?}");
}

/// `promtool check metrics` (Debian package `prometheus`) accepts the scrape: syntax and the
/// naming lints. Ignored where promtool is not installed; CI installs it and runs this.
#[test]
#[ignore = "needs promtool (apt-get install prometheus); .ci/run runs it"]
fn promtool_accepts_the_scrape() {
    let ex = start();
    traffic(ex.node, 5);
    let (_, _, body) = get(ex.metrics, "/metrics");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is on PATH (apt-get install prometheus)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics found problems ({:?}): {said}\nscrape:\n{body}",
        out.status
    );
}

/// The README's alert rules (examples/prometheus-alerts.yml) load in Prometheus and fire as
/// documented: `promtool check rules`, then the rules' unit tests
/// (examples/prometheus-alerts.test.yml: refused connections and failed sends alert after 5
/// minutes, not before, and resolve).
#[test]
#[ignore = "needs promtool (apt-get install prometheus); .ci/run runs it"]
fn promtool_accepts_the_alert_rules_and_their_unit_tests_pass() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for args in [
        ["check", "rules", "prometheus-alerts.yml"],
        ["test", "rules", "prometheus-alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool is on PATH (apt-get install prometheus)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
