//! A randomized fault schedule across four namespaced hosts (TLS between them, by the
//! default rule): every host runs `chirp chaos-node`, sending to random peers, while a
//! seeded nemesis cuts links, drops packets silently one way at random rates (nftables),
//! SIGKILLs and restarts nodes (a new identity each time), SIGSTOPs/SIGCONTs them and stalls
//! their consumers (the application holds what it receives, unreleased). Then
//! everything heals, and a checker reads every node's log:
//!
//! * both modes: no corrupted payload (checksums), no message received that was never sent,
//!   none received twice;
//! * synchronous mode: every send that completed was received exactly once;
//! * after the heal every node delivers to every peer again within [`HEAL_BOUND`];
//! * once sending stops, every node's threads and descriptors are back to their baseline
//!   (connections garbage-collected).
//!
//! The seed is printed; `CHIRP_CHAOS_SEED` replays it, `CHIRP_CHAOS_SECONDS` sets how long
//! the nemesis runs (default 20). `scripts/chaos.sh --seconds N --mode sync|async` runs one
//! mode for a soak. Needs root, iproute2 and nftables: `#[ignore]`d, run by CI.
mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::{pki, Line, Net, Proc};

const HOSTS: usize = 4;
/// The nodes' `--timeout`.
const TIMEOUT: Duration = Duration::from_secs(1);
const PORT: u16 = 7000;
/// After the last fault heals, every node must again complete a send to every peer within
/// this long: a timeout (1 s) and a reconnect debounce (≤ 0.55 s) per broken connection,
/// a TLS connect (≤ 2 s), and a host that was stopped catching up.
pub const HEAL_BOUND: Duration = Duration::from_secs(15);
/// Sending goes on this long after the heal (the heal check's window).
const AFTER_HEAL: Duration = Duration::from_secs(20);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

/// splitmix64, seeded: the whole schedule replays from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

/// A line as read, with when it was read.
struct Logged {
    at: Instant,
    text: String,
}

/// One node process (one generation of a host).
struct NodeProc {
    host: usize,
    /// The name it logs under (host and generation).
    name: String,
    proc: Proc,
    out: Vec<Logged>,
    status: Vec<String>,
}

impl NodeProc {
    fn drain(&mut self) {
        while let Ok(l) = self.proc.lines.try_recv() {
            match l {
                Line::Out(text) => self.out.push(Logged {
                    at: Instant::now(),
                    text,
                }),
                Line::Err(text) if text.starts_with("status ") => self.status.push(text),
                Line::Err(text) => eprintln!("  (host {} stderr) {text}", self.host),
            }
        }
    }
}

/// A fault in place, and when to undo it.
enum Fault {
    Cut(usize),
    Drop(usize),
    Stopped(usize),
    /// The node's application stops releasing what it receives (SIGUSR1; SIGUSR2 ends it):
    /// its slots fill, it stops reading and acknowledging, while its process runs on.
    Stalled(usize),
    Killed(usize),
}

struct Chaos {
    net: Net,
    synchronous: bool,
    rng: Rng,
    start: Instant,
    send_until: Instant,
    nodes: Vec<NodeProc>,
    /// The live process of each host (index into `nodes`), None while killed.
    live: Vec<Option<usize>>,
    generation: Vec<u32>,
    faults: Vec<(Instant, Fault)>,
    counts: HashMap<&'static str, u32>,
}

fn field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .split_whitespace()
        .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
}

impl Chaos {
    fn spawn(&mut self, host: usize) {
        let peers: Vec<String> = (0..HOSTS)
            .filter(|&h| h != host)
            .map(|h| format!("{}:{PORT}", self.net.hosts[h].addr))
            .collect();
        let name = format!("h{host}g{}", self.generation[host]);
        let send_for = self
            .send_until
            .saturating_duration_since(Instant::now())
            .as_secs_f64();
        let seed = self.rng.next().to_string();
        let mut args: Vec<String> = vec![
            "chaos-node".into(),
            "--name".into(),
            name.clone(),
            "--port".into(),
            PORT.to_string(),
            "--peers".into(),
            peers.join(","),
            "--rate".into(),
            "40".into(),
            "--send-for".into(),
            format!("{send_for:.3}"),
            "--seed".into(),
            seed,
            "--timeout".into(),
            TIMEOUT.as_secs().to_string(),
            "--reuse-time".into(),
            "3".into(),
            "--cert-chain".into(),
            pki().node_v3.display().to_string(),
            "--dh-params".into(),
            pki().dh_params.display().to_string(),
        ];
        if !self.synchronous {
            args.push("--async".into());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let proc = self.net.spawn_program(
            host,
            env!("CARGO_BIN_EXE_chirp").as_ref(),
            &refs,
            &[("RUST_LOG", "error")],
        );
        proc.listening();
        self.nodes.push(NodeProc {
            host,
            name,
            proc,
            out: Vec::new(),
            status: Vec::new(),
        });
        self.live[host] = Some(self.nodes.len() - 1);
    }

    fn signal(&self, host: usize, sig: &str) {
        if let Some(i) = self.live[host] {
            let pid = self.nodes[i].proc.child.id().to_string();
            let _ = std::process::Command::new("kill")
                .args([sig, &pid])
                .status();
        }
    }

    fn busy(&self, host: usize) -> bool {
        self.faults.iter().any(|(_, f)| {
            matches!(f, Fault::Cut(h) | Fault::Drop(h) | Fault::Stopped(h) | Fault::Stalled(h) | Fault::Killed(h) if *h == host)
        })
    }

    /// Starts one random fault on a host that has none.
    fn strike(&mut self) {
        let host = self.rng.below(HOSTS as u64) as usize;
        if self.busy(host) {
            return;
        }
        let until = Instant::now() + self.rng.millis(500, 3000);
        let fault = match self.rng.below(5) {
            0 => {
                self.net.cut(host);
                Fault::Cut(host)
            }
            1 => {
                // Packets from `host` to one peer vanish at 5–40 %, one way only.
                let to = (host + 1 + self.rng.below(HOSTS as u64 - 1) as usize) % HOSTS;
                let pct = 5 + self.rng.below(36);
                let dst = self.net.hosts[to].addr.to_string();
                let rule = format!(
                    "add table inet chaos; add chain inet chaos out {{ type filter hook output priority 0; }}; add rule inet chaos out ip daddr {dst} numgen random mod 100 < {pct} drop"
                );
                self.net
                    .exec(host, "nft", &[&rule])
                    .unwrap_or_else(|e| panic!("nftables (apt-get install nftables): {e}"));
                Fault::Drop(host)
            }
            2 => {
                self.signal(host, "-STOP");
                Fault::Stopped(host)
            }
            3 => {
                self.signal(host, "-USR1");
                Fault::Stalled(host)
            }
            _ => {
                self.signal(host, "-KILL");
                if let Some(i) = self.live[host].take() {
                    let _ = self.nodes[i].proc.child.wait();
                }
                Fault::Killed(host)
            }
        };
        let kind = match fault {
            Fault::Cut(_) => "link cut",
            Fault::Drop(_) => "packets dropped one way",
            Fault::Stopped(_) => "SIGSTOP",
            Fault::Stalled(_) => "consumer stalled",
            Fault::Killed(_) => "SIGKILL and restart",
        };
        *self.counts.entry(kind).or_default() += 1;
        self.faults.push((until, fault));
    }

    fn undo(&mut self, fault: Fault) {
        match fault {
            Fault::Cut(h) => self.net.heal(h),
            Fault::Drop(h) => {
                let _ = self.net.exec(h, "nft", &["delete table inet chaos"]);
            }
            Fault::Stopped(h) => self.signal(h, "-CONT"),
            Fault::Stalled(h) => self.signal(h, "-USR2"),
            Fault::Killed(h) => {
                self.generation[h] += 1;
                self.spawn(h);
            }
        }
    }

    fn drain(&mut self) {
        for n in &mut self.nodes {
            n.drain();
        }
    }
}

fn run(synchronous: bool) {
    let _g = serial();
    let seed: u64 = std::env::var("CHIRP_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let seconds: u64 = std::env::var("CHIRP_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mode = if synchronous { "sync" } else { "async" };
    eprintln!("chaos: mode {mode}, {seconds} s of faults, CHIRP_CHAOS_SEED={seed}");
    let net = Net::new(HOSTS);
    if let Err(e) = net.exec(0, "nft", &["list", "tables"]) {
        panic!("nftables is needed (apt-get install nftables): {e}");
    }
    let start = Instant::now();
    let nemesis_until = start + Duration::from_secs(seconds) + Duration::from_secs(3);
    let send_until = nemesis_until + AFTER_HEAL;
    let mut c = Chaos {
        net,
        synchronous,
        rng: Rng(seed),
        start,
        send_until,
        nodes: Vec::new(),
        live: vec![None; HOSTS],
        generation: vec![0; HOSTS],
        faults: Vec::new(),
        counts: HashMap::new(),
    };
    for h in 0..HOSTS {
        c.spawn(h);
    }
    // Let every node connect to every other before the first fault.
    std::thread::sleep(Duration::from_secs(3)); // part of the schedule, not a wait for an event
    let mut next_strike = Instant::now();
    while Instant::now() < nemesis_until {
        c.drain();
        let now = Instant::now();
        let (due, rest): (Vec<_>, Vec<_>) = c.faults.drain(..).partition(|(t, _)| *t <= now);
        c.faults = rest;
        for (_, f) in due {
            c.undo(f);
        }
        if now >= next_strike {
            c.strike();
            next_strike = now + c.rng.millis(300, 1500);
        }
        std::thread::sleep(Duration::from_millis(50)); // the nemesis's tick
    }
    // Heal everything.
    for (_, f) in std::mem::take(&mut c.faults) {
        c.undo(f);
    }
    let healed = Instant::now();
    eprintln!(
        "chaos: healed after {:?}; faults {:?}",
        healed - c.start,
        c.counts
    );
    // Sending goes on until `send_until`, then every node must come back to the idle
    // baseline: no connection, and the threads and descriptors of a node that has none.
    // Every node runs the same configuration, so that baseline is the first node's, taken
    // before any peer existed and before it sent anything.
    c.drain();
    let baseline = c.nodes[0]
        .out
        .iter()
        .find(|l| l.text.starts_with("baseline "))
        .map(|l| l.text.clone())
        .expect("the first node printed its baseline");
    assert_eq!(field(&baseline, "connections"), Some("0"), "{baseline}");
    let settle = send_until + Duration::from_secs(20);
    loop {
        c.drain();
        let done = c.live.iter().flatten().all(|&i| {
            let Some(last) = c.nodes[i].status.last() else {
                return false;
            };
            let num = |line: &str, key: &str| -> u64 {
                field(line, key)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(u64::MAX)
            };
            // Not above the baseline: nothing leaked (a descriptor the start-up had open
            // for a moment may be gone).
            field(last, "sending") == Some("false")
                && field(last, "connections") == Some("0")
                && num(last, "threads") <= num(&baseline, "threads")
                && num(last, "fds") <= num(&baseline, "fds")
        });
        if done {
            break;
        }
        if Instant::now() > settle {
            let last: Vec<String> = c
                .live
                .iter()
                .flatten()
                .map(|&i| format!("host {}: {:?}", c.nodes[i].host, c.nodes[i].status.last()))
                .collect();
            panic!("nodes did not come back to the baseline {baseline:?}: {last:#?} (seed {seed})");
        }
        std::thread::sleep(Duration::from_millis(200)); // polling status lines
    }
    for h in 0..HOSTS {
        c.signal(h, "-TERM");
    }
    for n in &mut c.nodes {
        let _ = n.proc.child.wait();
        // Whatever is left in the pipes.
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(l) = n
            .proc
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if let Line::Out(text) = l {
                n.out.push(Logged {
                    at: Instant::now(),
                    text,
                });
            }
        }
    }
    check(&c, synchronous, healed, seed);
}

fn check(c: &Chaos, synchronous: bool, healed: Instant, seed: u64) {
    let host_of_addr: HashMap<String, usize> = c
        .net
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (format!("{}:{PORT}", h.addr), i))
        .collect();
    let host_of_name = |name: &str| -> usize {
        name[1..name.find('g').expect("hNgM")]
            .parse()
            .expect("host number")
    };
    // (origin, seq) -> (destination host, read at)
    let mut tries: HashMap<(String, u64), (usize, Instant)> = HashMap::new();
    let mut oks: Vec<((String, u64), Instant)> = Vec::new();
    let mut outcomes: HashMap<(String, u64), Instant> = HashMap::new();
    let mut errs = 0usize;
    let mut recvs: HashMap<(String, u64), Vec<usize>> = HashMap::new();
    let mut bad = Vec::new();
    for n in &c.nodes {
        for l in &n.out {
            let f: Vec<&str> = l.text.split(' ').collect();
            match f.as_slice() {
                ["try", name, seq, to] => {
                    let to = *host_of_addr.get(*to).expect("a peer address");
                    tries.insert((name.to_string(), seq.parse().unwrap()), (to, l.at));
                }
                ["ok", name, seq] => {
                    let key = (name.to_string(), seq.parse().unwrap());
                    outcomes.insert(key.clone(), l.at);
                    oks.push((key, l.at));
                }
                ["err", name, seq, ..] => {
                    errs += 1;
                    outcomes.insert((name.to_string(), seq.parse().unwrap()), l.at);
                }
                ["recv", _me, origin, seq, status] => {
                    if *status != "good" {
                        bad.push(l.text.clone());
                    }
                    recvs
                        .entry((origin.to_string(), seq.parse().unwrap_or(0)))
                        .or_default()
                        .push(n.host);
                }
                _ if l.text.starts_with("listening on") || l.text.starts_with("baseline ") => {}
                _ => bad.push(l.text.clone()),
            }
        }
    }
    assert!(
        bad.is_empty(),
        "corrupted or unknown messages: {:?} (seed {seed})",
        &bad[..bad.len().min(5)]
    );
    for (key, at) in &recvs {
        let Some((to, _)) = tries.get(key) else {
            panic!("{key:?} was received but never sent (seed {seed})");
        };
        assert_eq!(
            at.len(),
            1,
            "{key:?} received {} times (seed {seed})",
            at.len()
        );
        assert_eq!(
            at[0], *to,
            "{key:?} arrived at host {} instead of {to} (seed {seed})",
            at[0]
        );
    }
    if synchronous {
        for (key, _) in &oks {
            assert!(
                recvs.contains_key(key),
                "synchronous send {key:?} completed but was never received (seed {seed})"
            );
        }
    }
    // Every send of a node that was not killed has its outcome, within 3 x timeout of the
    // later of its start and the heal (every peer makes progress again from the heal on),
    // plus the harness's slack in reading the lines. A SIGKILLed generation cannot report.
    let live: HashSet<String> = c
        .live
        .iter()
        .flatten()
        .map(|&i| c.nodes[i].name.clone())
        .collect();
    let bound = 3 * TIMEOUT + Duration::from_secs(2);
    let mut checked = 0usize;
    for (key, (to, tried)) in &tries {
        if !live.contains(&key.0) {
            continue;
        }
        checked += 1;
        let Some(at) = outcomes.get(key) else {
            panic!("send {key:?} to host {to} never had an outcome (seed {seed})");
        };
        let since = (*tried).max(healed);
        let took = at.saturating_duration_since(since);
        assert!(
            took <= bound,
            "send {key:?} to host {to} had its outcome {took:?} after it could be delivered \
             (bound {bound:?}, seed {seed})"
        );
    }
    // After the heal: every ordered pair delivers again, within the bound.
    let mut first_after: HashMap<(usize, usize), Instant> = HashMap::new();
    for (key, at) in &oks {
        let (to, tried) = tries[key];
        if tried >= healed {
            let from = host_of_name(&key.0);
            let e = first_after.entry((from, to)).or_insert(*at);
            *e = (*e).min(*at);
        }
    }
    let mut slowest = Duration::ZERO;
    for a in 0..HOSTS {
        for b in (0..HOSTS).filter(|&b| b != a) {
            let at = first_after.get(&(a, b)).unwrap_or_else(|| {
                panic!("host {a} never delivered to host {b} after the heal (seed {seed})")
            });
            let took = at.saturating_duration_since(healed);
            slowest = slowest.max(took);
            assert!(
                took <= HEAL_BOUND,
                "host {a} delivered to host {b} only {took:?} after the heal (bound {HEAL_BOUND:?}, seed {seed})"
            );
        }
    }
    let unique: HashSet<&(String, u64)> = recvs.keys().collect();
    eprintln!(
        "chaos ({}): {} sends, {} completed, {} failed ({checked} of the sends had to have \
         an outcome and had it within the bound), {} received (each once), {} node \
         generations; every pair delivering {:?} after the heal at most",
        if synchronous { "sync" } else { "async" },
        tries.len(),
        oks.len(),
        errs,
        unique.len(),
        c.nodes.len(),
        slowest
    );
}

#[test]
#[ignore = "needs root, iproute2 and nftables (network namespaces): cargo test -- --include-ignored"]
fn chaos_synchronous() {
    run(true);
}

#[test]
#[ignore = "needs root, iproute2 and nftables (network namespaces): cargo test -- --include-ignored"]
fn chaos_asynchronous() {
    run(false);
}
