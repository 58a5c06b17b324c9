//! Gossip across namespaced hosts: `examples/gossip.rs` (this crate) and libchirp's own
//! `examples/gossip.py` (the C core through python-chirp) form one cluster.
//!
//! Four hosts are started one after another, each told only the host started before it;
//! every node must come to know all four records within [`CONVERGE`]. Each node's view is
//! read from what it prints (a line `Gossip`, then `IP, KERNEL, UPTIME` per known node).
//!
//! The example binary is built by `cargo test` (or `cargo build --examples`). The mixed
//! cluster needs the real libchirp from `scripts/install-peer.sh` (which also unpacks
//! libchirp's example programs beside it) and is `#[ignore]`d without saying so in the name:
//! `.ci/run` runs it with `--include-ignored`.
mod support;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::{pki, Net, Proc};

/// How long a cluster of four, gossiping every second, may take to converge.
const CONVERGE: Duration = Duration::from_secs(40);

/// One scenario at a time (they share the machine's two cores with the rest of the suite).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

/// target/<profile>/chirp -> target/<profile>/examples/gossip
fn rust_gossip() -> PathBuf {
    let chirp = Path::new(env!("CARGO_BIN_EXE_chirp"));
    let path = chirp.parent().unwrap().join("examples/gossip");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --examples` (cargo test does)",
        path.display()
    );
    path
}

/// The real libchirp's Python, from CHIRP_PEER_PYTHON or target/chirp-peer.
fn peer_python() -> PathBuf {
    let path = std::env::var_os("CHIRP_PEER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/chirp-peer/bin/python")
        });
    assert!(
        path.exists(),
        "the real libchirp is not installed at {}: run scripts/install-peer.sh",
        path.display()
    );
    path
}

/// The test's copy of libchirp's gossip.py with exactly two changes: the update period
/// (30 s) shortened to 1 s, and `json.loads(..., encoding=...)` without the argument Python
/// 3.9 removed (with it, the handler fails on every message).
fn patched_gossip_py(dir: &Path) -> PathBuf {
    let python = peer_python();
    let original = python
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("libchirp-examples/gossip.py");
    let text = std::fs::read_to_string(&original).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (scripts/install-peer.sh unpacks it)",
            original.display()
        )
    });
    let patched = text
        .replacen("update_delay = 30\n", "update_delay = 1\n", 1)
        .replacen(
            "json.loads(msg.data, encoding=\"UTF-8\")",
            "json.loads(msg.data)",
            1,
        );
    let changed: Vec<(&str, &str)> = text
        .lines()
        .zip(patched.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(
        changed.len(),
        2,
        "exactly the two documented lines change in gossip.py: {changed:?}"
    );
    let path = dir.join("gossip.py");
    std::fs::write(&path, patched).unwrap();
    path
}

/// A gossip node on a host, and the last complete view it printed.
struct Gossiper {
    proc: Proc,
    host: Ipv4Addr,
    view: Vec<String>,
    building: Option<Vec<String>>,
}

impl Gossiper {
    /// Reads what the node printed until `deadline`, or until a view is complete.
    fn read(&mut self, until: Instant) {
        while let Some(line) = self
            .proc
            .next_out(until.saturating_duration_since(Instant::now()))
        {
            // gossip.py clears the screen before the header; ours does only on a terminal.
            if line.ends_with("Gossip") {
                if let Some(done) = self.building.replace(Vec::new()) {
                    self.view = done;
                    return;
                }
            } else if let Some(v) = self.building.as_mut() {
                // A record line: "IP, KERNEL, UPTIME" (gossip.py also prints exceptions).
                let ip = line.split(", ").next().unwrap_or("");
                if line.matches(", ").count() >= 2 && (ip == "None" || ip.parse::<IpAddr>().is_ok())
                {
                    v.push(ip.to_string());
                }
            }
        }
    }

    /// The addresses this node knows records of (its own record may still say None).
    fn known(&self) -> BTreeSet<String> {
        self.view
            .iter()
            .map(|ip| {
                if ip == "None" {
                    self.host.to_string()
                } else {
                    ip.clone()
                }
            })
            .collect()
    }
}

/// Starts a cluster of four on `net`, each node told only the one before it, waiting for
/// each to print its first view before starting the next; `start(i, peer)` runs node `i`.
/// Returns the nodes once every one knows all four records, or panics with every view.
fn converge(net: &Net, mut start: impl FnMut(usize, Option<Ipv4Addr>) -> Proc) {
    let all: BTreeSet<String> = net.hosts.iter().map(|h| h.addr.to_string()).collect();
    let mut nodes: Vec<Gossiper> = Vec::new();
    for i in 0..net.hosts.len() {
        let peer = i.checked_sub(1).map(|p| net.hosts[p].addr);
        let mut g = Gossiper {
            proc: start(i, peer),
            host: net.hosts[i].addr,
            view: Vec::new(),
            building: None,
        };
        let first = Instant::now() + Duration::from_secs(20);
        while g.building.is_none() || g.view.is_empty() {
            assert!(
                Instant::now() < first,
                "node {i} printed no view within 20 s"
            );
            g.read(first);
        }
        nodes.push(g);
    }
    let started = Instant::now();
    let deadline = started + CONVERGE;
    loop {
        for g in nodes.iter_mut() {
            g.read(Instant::now() + Duration::from_millis(200));
        }
        if nodes.iter().all(|g| g.view.len() == 4 && g.known() == all) {
            eprintln!(
                "gossip: all four nodes know all four records {} ms after the last started",
                started.elapsed().as_millis()
            );
            return;
        }
        if Instant::now() > deadline {
            let views: Vec<String> = nodes
                .iter()
                .map(|g| format!("{} knows {:?}", g.host, g.view))
                .collect();
            panic!(
                "no convergence within {CONVERGE:?}: want {all:?} everywhere; {}",
                views.join("; ")
            );
        }
    }
}

#[test]
#[ignore = "needs root (network namespaces) and the real libchirp (scripts/install-peer.sh); .ci/run runs it"]
fn a_mixed_cluster_of_gossip_py_on_the_c_core_and_gossip_rs_converges() {
    let _g = serial();
    let net = Net::new(4);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("chirp-gossip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = patched_gossip_py(&dir);
    let (python, rust) = (peer_python(), rust_gossip());
    // Hosts 1 and 3 (indices 0 and 2) run gossip.py on the C core, 2 and 4 our example.
    converge(&net, |i, peer| {
        let peer = peer.map(|p| p.to_string());
        let mut args: Vec<&str> = Vec::new();
        if i % 2 == 0 {
            args.push(script.to_str().unwrap());
            args.extend(peer.as_deref());
            net.spawn_program(i, &python, &args, &[("PYTHONUNBUFFERED", "1")])
        } else {
            args.extend(["--interval", "1"]);
            args.extend(peer.as_deref());
            net.spawn_program(i, &rust, &args, &[("RUST_LOG", "warn")])
        }
    });
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
#[ignore = "needs root (network namespaces): cargo test -- --include-ignored"]
fn a_cluster_of_gossip_rs_over_tls_converges() {
    let _g = serial();
    let net = Net::new(4);
    let rust = rust_gossip();
    let (chain, dh) = (
        pki().node_v3.display().to_string(),
        pki().dh_params.display().to_string(),
    );
    converge(&net, |i, peer| {
        let peer = peer.map(|p| p.to_string());
        let mut args = vec![
            "--interval",
            "1",
            "--cert-chain",
            &chain,
            "--dh-params",
            &dh,
        ];
        args.extend(peer.as_deref());
        net.spawn_program(i, &rust, &args, &[("RUST_LOG", "warn")])
    });
}
