//! Gossip: every node learns a small record about every other node, speaking the same
//! protocol as the `gossip.py` example shipped with libchirp 1.2.1, so Rust and Python nodes
//! can form one cluster.
//!
//! ```text
//! cargo run --example gossip -- [--interval SECS] [--cert-chain FILE --dh-params FILE] [PEER_IP ...]
//! ```
//!
//! The node listens on port 2998 in asynchronous mode (timeout 10 s, connections reused for
//! 120 s) and knows the peers named on the command line. A record is the JSON array
//! `[id, time, ip, kernel release, uptime]`: `id` an integer naming the node (here, as in
//! gossip.py, taken from a network interface's hardware address), `time` the Unix time the
//! record was made, `ip` the node's address as its peers see it (`null` until it learned it).
//!
//! Every period (`--interval`, 30 s by default) a node refreshes its own record and sends each
//! known peer one record picked at random from all it knows. A peer whose send fails is
//! forgotten. On receipt, the sender's address becomes a peer, a record without an address
//! gets the sender's, the newest record (by `time`) per id wins, and the address in it becomes
//! a peer too; a node seeing its own id learns its own address. Records older than an hour
//! are dropped. Whenever its view changes the node prints it: a line `Gossip`, then one line
//! per known node, `IP, KERNEL, UPTIME`, ordered by id (on a terminal the screen is cleared
//! first, as gossip.py does).
//!
//! Without `--cert-chain`/`--dh-params` the node does not encrypt (as gossip.py, which sets
//! `DISABLE_ENCRYPTION`); with them, connections between hosts use mutual TLS.
use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libchirp::{Config, Message, Node};
use serde_json::{json, Value};

const PORT: u16 = 2998;
/// Records older than this are forgotten.
const MAX_AGE_SECS: f64 = 3600.0;

/// One node's record.
#[derive(Clone, Debug)]
struct Record {
    id: u64,
    time: f64,
    ip: Option<String>,
    kernel: String,
    uptime: String,
}

impl Record {
    fn to_json(&self) -> Vec<u8> {
        json!([self.id, self.time, self.ip, self.kernel, self.uptime])
            .to_string()
            .into_bytes()
    }

    /// Parses a received record; the network is not trusted, so anything else is an error.
    fn from_json(data: &[u8]) -> Result<Record, String> {
        let v: Value = serde_json::from_slice(data).map_err(|e| format!("not JSON: {e}"))?;
        let a = v
            .as_array()
            .filter(|a| a.len() == 5)
            .ok_or("not a 5-element array")?;
        let text = |i: usize| {
            a[i].as_str()
                .map(str::to_string)
                .ok_or(format!("field {i} is not a string"))
        };
        Ok(Record {
            id: a[0].as_u64().ok_or("id is not a non-negative integer")?,
            time: a[1]
                .as_f64()
                .filter(|t| t.is_finite())
                .ok_or("time is not a number")?,
            ip: match &a[2] {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                _ => return Err("ip is neither null nor a string".into()),
            },
            kernel: text(3)?,
            uptime: text(4)?,
        })
    }
}

/// What the node knows.
struct View {
    my_id: u64,
    my_ip: Option<String>,
    peers: BTreeSet<IpAddr>,
    records: BTreeMap<u64, Record>,
}

impl View {
    /// Takes in a received record from `from`; returns whether the view changed.
    fn receive(&mut self, from: IpAddr, mut r: Record) -> bool {
        self.peers.insert(from);
        if r.id == self.my_id {
            self.my_ip.clone_from(&r.ip);
        }
        if r.ip.is_none() {
            r.ip = Some(from.to_string());
        }
        let newer = self
            .records
            .get(&r.id)
            .map_or(true, |old| r.time > old.time);
        if newer {
            if let Some(ip) = r.ip.as_deref().and_then(|ip| ip.parse().ok()) {
                self.peers.insert(ip);
            }
            self.records.insert(r.id, r);
        }
        newer
    }

    fn print(&self) {
        let mut out = std::io::stdout().lock();
        if out.is_terminal() {
            let _ = write!(out, "\x1b[2J\x1b[1;1H");
        }
        let _ = writeln!(out, "Gossip");
        for r in self.records.values() {
            let ip = r.ip.as_deref().unwrap_or("None");
            let _ = writeln!(out, "{ip}, {}, {}", r.kernel, r.uptime);
        }
        let _ = out.flush();
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// This node's id: the hardware address of its first network interface that has one (as
/// Python's `uuid.getnode()`), else a random 48-bit number with the multicast bit set (the
/// same fallback, so it cannot collide with a real hardware address).
fn node_id() -> u64 {
    let mut names: Vec<_> = std::fs::read_dir("/sys/class/net")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    names.sort();
    for path in names {
        let Ok(mac) = std::fs::read_to_string(path.join("address")) else {
            continue;
        };
        let hex: String = mac.trim().split(':').collect();
        match u64::from_str_radix(&hex, 16) {
            Ok(id) if hex.len() == 12 && id != 0 => return id,
            _ => continue,
        }
    }
    (fastrand::u64(..) & 0xffff_ffff_ffff) | 0x0100_0000_0000
}

/// The kernel release and a human uptime, as `uname -r` and `uptime` would say.
fn host_facts() -> (String, String) {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let secs = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0) as u64;
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    (kernel, format!("up {d} days, {h}:{m:02}"))
}

struct Args {
    interval: Duration,
    tls: Option<(String, String)>,
    peers: Vec<IpAddr>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        interval: Duration::from_secs(30),
        tls: None,
        peers: Vec::new(),
    };
    let (mut chain, mut dh) = (None, None);
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--interval" => {
                let v = value("--interval")?;
                let secs: f64 = v
                    .parse()
                    .map_err(|_| format!("--interval {v:?} is not a number"))?;
                if !(secs.is_finite() && secs > 0.0) {
                    return Err(format!("--interval must be positive, got {v}"));
                }
                a.interval = Duration::from_secs_f64(secs);
            }
            "--cert-chain" => chain = Some(value("--cert-chain")?),
            "--dh-params" => dh = Some(value("--dh-params")?),
            ip => a.peers.push(
                ip.parse()
                    .map_err(|_| format!("{ip:?} is not an IP address"))?,
            ),
        }
    }
    a.tls = match (chain, dh) {
        (Some(c), Some(d)) => Some((c, d)),
        (None, None) => None,
        _ => return Err("give both --cert-chain and --dh-params, or neither".into()),
    };
    Ok(a)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args().map_err(|e| format!("{e}\nusage: gossip [--interval SECS] [--cert-chain FILE --dh-params FILE] [PEER_IP ...]"))?;
    let mut config = Config::default();
    config.port = PORT;
    config.synchronous = false;
    config.timeout = Duration::from_secs(10);
    config.reuse_time = Duration::from_secs(120);
    match &args.tls {
        Some((chain, dh)) => {
            config.cert_chain = Some(chain.into());
            config.dh_params = Some(dh.into());
        }
        None => config.disable_encryption = true,
    }

    let view = Arc::new(Mutex::new(View {
        my_id: node_id(),
        my_ip: None,
        peers: args.peers.into_iter().collect(),
        records: BTreeMap::new(),
    }));
    let in_view = Arc::clone(&view);
    // Received records are handled on the connection's reader thread: quick, no waiting.
    let node = Node::start(config, move |msg| {
        let Some(from) = msg.address().map(|a| a.ip()) else {
            return;
        };
        match Record::from_json(msg.data()) {
            Ok(r) => {
                let mut v = in_view.lock().unwrap_or_else(|e| e.into_inner());
                if v.receive(from, r) {
                    v.print();
                }
            }
            Err(e) => eprintln!("gossip: ignored a message from {from}: {e}"),
        }
    })?;

    loop {
        // Refresh our record and pick what to tell each peer.
        let (kernel, uptime) = host_facts();
        let sends: Vec<_> = {
            let mut v = view.lock().unwrap_or_else(|e| e.into_inner());
            let mine = Record {
                id: v.my_id,
                time: now(),
                ip: v.my_ip.clone(),
                kernel,
                uptime,
            };
            v.records.insert(mine.id, mine);
            v.print();
            let known: Vec<&Record> = v.records.values().collect();
            v.peers
                .iter()
                .map(|&peer| {
                    let r = known[fastrand::usize(..known.len())];
                    (
                        peer,
                        node.send(Message::to(SocketAddr::new(peer, PORT), r.to_json())),
                    )
                })
                .collect()
        };
        // A peer whose send failed (asynchronous mode: could not be written) is forgotten.
        let mut failed = Vec::new();
        for (peer, sending) in sends {
            match sending.wait_timeout(Duration::from_secs(30)) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    eprintln!("gossip: forgetting {peer}: {}", e.error());
                    failed.push(peer);
                }
                Err(_) => {
                    eprintln!("gossip: forgetting {peer}: no outcome within 30 s");
                    failed.push(peer);
                }
            }
        }
        {
            let mut v = view.lock().unwrap_or_else(|e| e.into_inner());
            for peer in failed {
                v.peers.remove(&peer);
            }
            let oldest = now() - MAX_AGE_SECS;
            v.records.retain(|_, r| r.time >= oldest);
        }
        std::thread::sleep(args.interval);
    }
}
