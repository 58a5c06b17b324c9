//! A test bed of real little hosts: network namespaces joined by veth links to a bridge in
//! a hub namespace, each running `chirp` processes. Everything it makes — namespaces, links,
//! processes — is removed when the [`Net`] is dropped, also when a test fails. Addresses
//! are private to the test's own namespaces; nothing leaves the machine.
//!
//! Creating namespaces needs root: the tests that use it are `#[ignore]`d (a plain `cargo
//! test` reports them as not run) and fail with a clear message when run without it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

static NEXT: AtomicUsize = AtomicUsize::new(1);

/// Runs `cmd` to completion; Err says what was run (`what`) and what it printed.
fn run(cmd: &mut Command, what: String) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    run(
        Command::new("ip").args(args),
        format!("ip {}", args.join(" ")),
    )
}

fn must(args: &[&str]) {
    ip(args).unwrap_or_else(|e| panic!("{e}"));
}

/// One host: a namespace with one interface on the test's network.
pub struct Host {
    pub ns: String,
    pub addr: Ipv4Addr,
    /// The hub's end of the host's link (cut by setting it down).
    hub_if: String,
}

/// A little network of hosts around a hub (a bridge in its own namespace).
pub struct Net {
    hub: String,
    pub hosts: Vec<Host>,
}

impl Net {
    /// `n` hosts at 10.201.K.1, 10.201.K.2, … (K: this net's number). Panics, saying why,
    /// where namespaces cannot be made.
    pub fn new(n: usize) -> Net {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}{k}", std::process::id() % 100_000);
        let hub = format!("chirp{tag}hub");
        if let Err(e) = ip(&["netns", "add", &hub]) {
            panic!("network namespaces cannot be made (these tests need root and iproute2): {e}");
        }
        let mut net = Net {
            hub: hub.clone(),
            hosts: Vec::new(),
        };
        must(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        must(&["-n", &hub, "link", "set", "br0", "up"]);
        for i in 0..n {
            let ns = format!("chirp{tag}h{i}");
            must(&["netns", "add", &ns]);
            let (host_if, hub_if) = (format!("c{tag}h{i}"), format!("c{tag}b{i}"));
            let addr = Ipv4Addr::new(10, 201, (k % 250) as u8, i as u8 + 1);
            net.hosts.push(Host {
                ns: ns.clone(),
                addr,
                hub_if: hub_if.clone(),
            });
            must(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", &hub_if,
            ]);
            must(&["link", "set", &host_if, "netns", &ns]);
            must(&["link", "set", &hub_if, "netns", &hub]);
            must(&["-n", &hub, "link", "set", &hub_if, "master", "br0", "up"]);
            must(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &host_if,
            ]);
            must(&["-n", &ns, "link", "set", &host_if, "up"]);
            must(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    /// Cuts host `i`'s link (both directions).
    pub fn cut(&self, i: usize) {
        must(&[
            "-n",
            &self.hub,
            "link",
            "set",
            &self.hosts[i].hub_if,
            "down",
        ]);
    }

    /// Heals host `i`'s link.
    pub fn heal(&self, i: usize) {
        must(&["-n", &self.hub, "link", "set", &self.hosts[i].hub_if, "up"]);
    }

    /// Host `from` can no longer send to host `to` (a blackhole route); `to` can still
    /// send to `from`.
    pub fn blackhole(&self, from: usize, to: usize) {
        let dst = format!("{}/32", self.hosts[to].addr);
        must(&[
            "-n",
            &self.hosts[from].ns,
            "route",
            "add",
            "blackhole",
            &dst,
        ]);
    }

    /// Removes the blackhole of [`Net::blackhole`].
    pub fn unblackhole(&self, from: usize, to: usize) {
        let dst = format!("{}/32", self.hosts[to].addr);
        must(&[
            "-n",
            &self.hosts[from].ns,
            "route",
            "del",
            "blackhole",
            &dst,
        ]);
    }

    /// Runs `PROGRAM ARGS` on host `i` to completion (e.g. `nft`); Err with what it said.
    pub fn exec(&self, i: usize, program: &str, args: &[&str]) -> Result<(), String> {
        run(
            Command::new("ip")
                .args(["netns", "exec", &self.hosts[i].ns, program])
                .args(args),
            format!("{program} {} on host {i}", args.join(" ")),
        )
    }

    /// Starts `chirp ARGS` on host `i`.
    pub fn spawn(&self, i: usize, args: &[&str]) -> Proc {
        self.spawn_program(i, env!("CARGO_BIN_EXE_chirp").as_ref(), args, &[])
    }

    /// Starts `PROGRAM ARGS` on host `i` with `env` added to the environment.
    pub fn spawn_program(
        &self,
        i: usize,
        program: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        let mut cmd = Command::new("ip");
        // The caller's RUST_LOG must not change what the tests read; `env` may set one.
        cmd.args(["netns", "exec", &self.hosts[i].ns])
            .arg(program)
            .args(args)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied());
        Proc::spawn(cmd)
    }
}

impl Proc {
    /// Starts `cmd` with its stdout and stderr read line by line (stdin closed).
    pub fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        let etx = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(Line::Out(l)).is_err() {
                    break;
                }
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if etx.send(Line::Err(l)).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Processes first (a namespace lives on while a process is in it), then the
        // namespaces; deleting them deletes their links.
        let mut all: Vec<&str> = self.hosts.iter().map(|h| h.ns.as_str()).collect();
        all.push(&self.hub);
        for ns in &all {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
        }
        for ns in all {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// A line a process printed.
#[derive(Debug, Clone)]
pub enum Line {
    Out(String),
    Err(String),
}

/// A `chirp` process on a host, killed on drop.
pub struct Proc {
    pub child: Child,
    pub lines: mpsc::Receiver<Line>,
}

impl Proc {
    /// The next stdout line, within `d` (stderr lines are passed over, and printed).
    pub fn next_out(&self, d: Duration) -> Option<String> {
        let deadline = Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(Line::Out(l)) => return Some(l),
                Ok(Line::Err(l)) => eprintln!("  (stderr) {l}"),
                Err(_) => return None,
            }
        }
    }

    /// The next stderr line, within `d` (stdout lines are passed over).
    pub fn next_err(&self, d: Duration) -> Option<String> {
        let deadline = Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(Line::Err(l)) => return Some(l),
                Ok(Line::Out(_)) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Waits for "listening on PORT".
    pub fn listening(&self) -> u16 {
        let l = self
            .next_out(Duration::from_secs(20))
            .expect("a listening line");
        l.strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected {l:?}"))
            .parse()
            .unwrap()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A second PKI with a CA of its own (a CA being rolled to).
pub fn other_pki() -> &'static libchirp::pki::TestPki {
    static PKI: std::sync::OnceLock<libchirp::pki::TestPki> = std::sync::OnceLock::new();
    PKI.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("chirp-hosts-pki2-{}", std::process::id()));
        libchirp::pki::TestPki::generate(&dir).expect("PKI")
    })
}

/// A throwaway PKI for the hosts (one CA; a stranger's CA too).
pub fn pki() -> &'static libchirp::pki::TestPki {
    static PKI: std::sync::OnceLock<libchirp::pki::TestPki> = std::sync::OnceLock::new();
    PKI.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("chirp-hosts-pki-{}", std::process::id()));
        libchirp::pki::TestPki::generate(&dir).expect("PKI")
    })
}

/// The TLS arguments for a node with `chain`.
pub fn tls(chain: &std::path::Path) -> Vec<String> {
    vec![
        "--cert-chain".into(),
        chain.display().to_string(),
        "--dh-params".into(),
        pki().dh_params.display().to_string(),
    ]
}

/// A `send --report` line.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub ok: bool,
    pub index: u64,
    /// Unix time in ms at completion.
    pub at: u128,
    pub ms: u128,
    pub text: String,
}

/// Parses `ok I T MS` / `err I T MS REASON`; None for other lines.
pub fn outcome(line: &str) -> Option<Outcome> {
    let mut f = line.splitn(5, ' ');
    let kind = f.next()?;
    if kind != "ok" && kind != "err" {
        return None;
    }
    Some(Outcome {
        ok: kind == "ok",
        index: f.next()?.parse().ok()?,
        at: f.next()?.parse().ok()?,
        ms: f.next()?.parse().ok()?,
        text: f.next().unwrap_or("").to_string(),
    })
}

pub fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}
