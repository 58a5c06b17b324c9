//! Certificates through the `chirp` tool: the start-up check and its warning, expiry in
//! `--stats`, and rotation with SIGHUP between namespaced hosts under a steady synchronous
//! stream (TLS by the default rule: the hosts are not on loopback). The peer's view of the
//! rotated certificate is taken with `openssl s_client` from the other host.
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use support::{outcome, pki, Line, Net, Outcome, Proc};

const DAY: Duration = Duration::from_secs(86_400);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

fn scratch(what: &str) -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("chirp-cli-cert-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_certificate_inside_the_warning_window_starts_with_a_dated_warning() {
    let now = SystemTime::now();
    let chain = pki()
        .issue_node("soon", now - DAY, now + 9 * DAY + DAY / 2)
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chirp"));
    cmd.args(["echo", "--port", "0", "--stats", "0.1", "--cert-chain"])
        .arg(&chain)
        .arg("--dh-params")
        .arg(&pki().dh_params)
        .env("RUST_LOG", "warn");
    let proc = Proc::spawn(cmd);
    // The warning comes before the node listens; read both streams in order.
    let (mut listening, mut warning) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while listening.is_none() || warning.is_none() {
        match proc
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(Line::Out(l)) => listening = Some(l),
            Ok(Line::Err(l)) if l.contains("expires") => warning = Some(l),
            Ok(Line::Err(l)) => eprintln!("  (stderr) {l}"),
            Err(_) => {
                panic!("want a listening line and a warning, got {listening:?} and {warning:?}")
            }
        }
    }
    let (listening, warning) = (listening.unwrap(), warning.unwrap());
    assert!(
        listening.starts_with("listening on "),
        "the node starts: {listening}"
    );
    let date = String::from_utf8(
        Command::new("date")
            .args(["-u", "-d", "+9 days +12 hours", "+%Y-%m-%d"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    for part in [
        "soon.pem",
        "CN=soon.libchirp.test",
        "expires on",
        date.trim(),
        "in 9 days",
    ] {
        assert!(
            warning.contains(part),
            "the warning says {part:?}: {warning}"
        );
    }
    let stats = proc
        .next_err(Duration::from_secs(10))
        .expect("a statistics line");
    assert!(
        stats.contains(" cert_expires_in_days=9"),
        "--stats shows the days left: {stats}"
    );
    drop(proc);

    // The window is configurable: 5 days does not cover 9.
    let out = Command::new(env!("CARGO_BIN_EXE_chirp"))
        .args(["request", "127.0.0.1:9", "--data", "x", "--timeout", "0.2"])
        .args([
            "--cert-expiry-warning",
            "5",
            "--always-encrypt",
            "--cert-chain",
        ])
        .arg(&chain)
        .arg("--dh-params")
        .arg(&pki().dh_params)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("expires on"),
        "no warning outside the window: {err}"
    );
}

#[test]
fn an_expired_certificate_stops_the_tool_with_one_line_naming_it() {
    let now = SystemTime::now();
    let chain = pki().issue_node("old", now - 30 * DAY, now - DAY).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chirp"))
        .args(["echo", "--port", "0", "--cert-chain"])
        .arg(&chain)
        .arg("--dh-params")
        .arg(&pki().dh_params)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit status 1: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("old.pem") && err.contains("expired on"),
        "names the file and the expiry: {err}"
    );
}

/// What `openssl s_client` on host `from` sees of the certificate at `to`: Ok(subject line)
/// or Err(what it printed) when it does not verify against `ca`.
fn peer_certificate(
    net: &Net,
    from: usize,
    to: &str,
    chain: &Path,
    ca: &Path,
) -> Result<String, String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &net.hosts[from].ns, "openssl", "s_client"])
        .args(["-connect", to, "-brief", "-verify_return_error"])
        .arg("-cert")
        .arg(chain)
        .arg("-key")
        .arg(chain)
        .arg("-CAfile")
        .arg(ca)
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match text
        .lines()
        .find_map(|l| l.strip_prefix("Peer certificate: "))
    {
        Some(subject) if out.status.success() => Ok(subject.to_string()),
        _ => Err(text),
    }
}

/// Reads the listener until `stderr_wanted` shows on its stderr (data lines are counted into
/// `got`); returns that line.
fn until_err(listener: &Proc, got: &mut HashMap<u64, u32>, wanted: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match listener.lines.recv_timeout(left) {
            Ok(Line::Out(l)) => count(got, &l),
            Ok(Line::Err(l)) if l.contains(wanted) => return l,
            Ok(Line::Err(l)) => eprintln!("  (listener) {l}"),
            Err(_) => panic!("the listener never said {wanted:?}"),
        }
    }
}

fn count(got: &mut HashMap<u64, u32>, listen_line: &str) {
    if let Some(d) = listen_line.split(' ').nth(3).and_then(|d| d.parse().ok()) {
        *got.entry(d).or_default() += 1;
    }
}

fn sighup(p: &Proc) {
    let ok = Command::new("kill")
        .args(["-HUP", &p.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP");
}

#[test]
#[ignore = "needs root (network namespaces): cargo test -- --include-ignored"]
fn sighup_rotates_the_certificate_under_a_steady_synchronous_stream() {
    let _g = serial();
    let net = Net::new(2);
    let dir = scratch("rotate");
    let (ca, dh) = (&pki().ca_cert, &pki().dh_params);
    // B listens with a copy of node_v1; A streams to it with node_v3.
    let b_chain = dir.join("b.pem");
    std::fs::copy(&pki().node_v1, &b_chain).unwrap();
    let b = net.hosts[1].addr;
    let to = format!("{b}:7000");
    let tls = |chain: &Path| -> Vec<String> {
        vec![
            "--cert-chain".into(),
            chain.display().to_string(),
            "--dh-params".into(),
            dh.display().to_string(),
        ]
    };
    let mut largs = vec!["listen".to_string(), "--port".into(), "7000".into()];
    largs.extend(tls(&b_chain));
    let largs: Vec<&str> = largs.iter().map(String::as_str).collect();
    let listener = net.spawn(1, &largs);
    listener.listening();
    const COUNT: u64 = 3000;
    let mut sargs = vec!["send".to_string(), to.clone(), "--report".into()];
    sargs.extend([
        "--count".into(),
        COUNT.to_string(),
        "--interval".into(),
        "3".into(),
    ]);
    sargs.extend(tls(&pki().node_v3));
    let sargs: Vec<&str> = sargs.iter().map(String::as_str).collect();
    let sender = net.spawn(0, &sargs);
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut got = HashMap::new();
    let read_sender = |outcomes: &mut Vec<Outcome>, at_least: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while outcomes.len() < at_least {
            let l = sender
                .next_out(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|| panic!("the sender stalled after {} outcomes", outcomes.len()));
            outcomes.extend(outcome(&l));
        }
    };
    read_sender(&mut outcomes, 100);
    assert_eq!(
        peer_certificate(&net, 0, &to, &pki().node_v3, ca).as_deref(),
        Ok("CN = node-v1.libchirp.test"),
        "before: B presents node-v1"
    );

    // 1. A renewed certificate from the same CA.
    let now = SystemTime::now();
    let renewed = pki()
        .issue_node("renewed", now - DAY, now + 400 * DAY)
        .unwrap();
    std::fs::copy(&renewed, &b_chain).unwrap();
    sighup(&listener);
    let said = until_err(&listener, &mut got, "chirp: SIGHUP:");
    assert!(
        said.contains("reloaded") && said.contains("CN=renewed.libchirp.test"),
        "{said}"
    );
    assert_eq!(
        peer_certificate(&net, 0, &to, &pki().node_v3, ca).as_deref(),
        Ok("CN = renewed.libchirp.test"),
        "a connection made after the reload gets the new certificate"
    );
    read_sender(&mut outcomes, 1000);

    // 2. A broken file: the reload fails, says so and changes nothing.
    std::fs::write(&b_chain, "-----BEGIN PRIVATE KEY-----\ngarbage\n").unwrap();
    sighup(&listener);
    let said = until_err(&listener, &mut got, "chirp: SIGHUP:");
    assert!(
        said.contains("reload failed") && said.contains("b.pem"),
        "{said}"
    );
    assert_eq!(
        peer_certificate(&net, 0, &to, &pki().node_v3, ca).as_deref(),
        Ok("CN = renewed.libchirp.test"),
        "a failed reload changes nothing"
    );
    read_sender(&mut outcomes, 1500);

    // 3. A certificate from another CA (the file trusts only that one): new connections
    // from peers of the old CA fail with a clear error; the stream's connection lives on.
    let other = support::other_pki();
    std::fs::copy(&other.node_v3, &b_chain).unwrap();
    sighup(&listener);
    let said = until_err(&listener, &mut got, "chirp: SIGHUP:");
    assert!(said.contains("reloaded"), "{said}");
    let refused = peer_certificate(&net, 0, &to, &pki().node_v3, ca);
    assert!(
        refused.as_ref().is_err_and(|t| t.contains("verify")),
        "an old-CA peer cannot verify the new certificate: {refused:?}"
    );
    let mut one = vec![
        "send".to_string(),
        to.clone(),
        "--timeout".into(),
        "1".into(),
    ];
    one.extend(tls(&pki().node_v1));
    let one: Vec<&str> = one.iter().map(String::as_str).collect();
    let mut late = net.spawn(0, &one);
    let err = late
        .next_err(Duration::from_secs(20))
        .expect("the late sender explains its failure");
    assert!(
        err.contains("certificate") || err.contains("TLS"),
        "a clear error for a new connection across CAs: {err}"
    );
    late.kill();

    read_sender(&mut outcomes, COUNT as usize);
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.values().sum::<u32>() < COUNT as u32 && Instant::now() < deadline {
        if let Ok(Line::Out(l)) = listener.lines.recv_timeout(Duration::from_millis(200)) {
            count(&mut got, &l);
        }
    }
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.ok).collect();
    assert!(
        failed.is_empty(),
        "the stream never fails: {:?}",
        &failed[..failed.len().min(5)]
    );
    for o in &outcomes {
        assert_eq!(
            got.get(&o.index),
            Some(&1),
            "message {} received exactly once",
            o.index
        );
    }
    eprintln!(
        "rotation under load: {} synchronous sends over three reloads, none failed, slowest {} ms",
        outcomes.len(),
        outcomes.iter().map(|o| o.ms).max().unwrap_or(0)
    );
    let _ = std::fs::remove_dir_all(dir);
}
