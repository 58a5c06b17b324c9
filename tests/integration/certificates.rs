//! Certificate lifecycle in one process, over TLS on loopback (`always_encrypt`): what a
//! node checks of its own certificate at start, where expiry is visible, and rotation with
//! `Node::reload_tls` (new connections get the new certificate, old ones carry on, nothing
//! queued or in flight is lost, a bad file changes nothing, a CA is rolled in two steps).
//! The namespaced reload under a steady stream, driven through `chirp` and SIGHUP, is in
//! `cli/tests/certificates.rs`.
use crate::support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use libchirp::pki::TestPki;
use libchirp::{Config, Error, Message, Node};
use support::*;

const DAY: Duration = Duration::from_secs(86_400);

/// A PKI per purpose, made by the test itself; `n` names it.
fn pki(n: usize) -> &'static TestPki {
    static PKIS: [OnceLock<TestPki>; 2] = [OnceLock::new(), OnceLock::new()];
    PKIS[n].get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("chirp-cert-test-{}-{n}", std::process::id()));
        TestPki::generate(&dir).expect("generate PKI")
    })
}

fn tls_config(chain: &Path) -> Config {
    let mut c = config(true);
    c.disable_encryption = false;
    c.always_encrypt = true;
    c.cert_chain = Some(chain.to_path_buf());
    c.dh_params = Some(pki(0).dh_params.clone());
    c
}

/// A synchronous node that releases each message at once and passes its data on.
fn inbox(config: Config) -> (Node, crossbeam_channel::Receiver<Vec<u8>>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let node = Node::start(config, move |mut m: Message| {
        drop(m.release());
        let _ = tx.send(m.data().to_vec());
    })
    .expect("start node");
    (node, rx)
}

fn got(rx: &crossbeam_channel::Receiver<Vec<u8>>, what: &str) -> Vec<u8> {
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn start_err(chain: &Path) -> Error {
    match Node::start(tls_config(chain), drop) {
        Ok(_) => panic!("a node with {} started", chain.display()),
        Err(e) => e,
    }
}

/// `key + leaf` of one chain file followed by another file's CA certificate.
fn with_ca(node_chain: &Path, ca: &Path, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(node_chain).unwrap();
    let end = "-----END CERTIFICATE-----\n";
    let leaf_end = text.find(end).expect("a certificate") + end.len();
    let mut out = text[..leaf_end].to_string();
    out.push_str(&std::fs::read_to_string(ca).unwrap());
    let path = node_chain.with_file_name(format!("{name}.pem"));
    std::fs::write(&path, out).unwrap();
    path
}

/// `YYYY-MM-DD` of `t` (UTC), as the error messages print dates.
fn day_of(t: SystemTime) -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-d"])
        .arg(format!(
            "@{}",
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
        ))
        .arg("+%Y-%m-%d")
        .output()
        .expect("date(1)");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn an_expired_own_certificate_is_refused_at_start_with_its_dates() {
    let now = SystemTime::now();
    let (from, to) = (now - 40 * DAY, now - 2 * DAY);
    let chain = pki(0).issue_node("expired", from, to).unwrap();
    let e = start_err(&chain);
    let text = e.to_string();
    assert!(
        matches!(
            e,
            Error::Tls {
                kind: libchirp::TlsError::CertificateExpired,
                ..
            }
        ),
        "an expired certificate: {e:?}"
    );
    let cause = std::error::Error::source(&e).map(|c| c.to_string());
    assert_eq!(
        cause.as_deref(),
        Some("a certificate has expired"),
        "the source names the problem"
    );
    for part in [
        chain.display().to_string(),
        "CN=expired.libchirp.test".into(),
        "expired on".into(),
        day_of(to),
        day_of(from),
    ] {
        assert!(text.contains(&part), "the error names {part:?}: {text}");
    }
}

#[test]
fn a_not_yet_valid_own_certificate_is_refused_at_start_with_its_dates() {
    let now = SystemTime::now();
    let (from, to) = (now + 3 * DAY, now + 300 * DAY);
    let chain = pki(0).issue_node("future", from, to).unwrap();
    let text = start_err(&chain).to_string();
    for part in [
        "CN=future.libchirp.test".to_string(),
        "not valid yet".into(),
        day_of(from),
        day_of(to),
    ] {
        assert!(text.contains(&part), "the error names {part:?}: {text}");
    }
}

#[test]
fn an_own_certificate_from_a_foreign_ca_is_refused_at_start() {
    // The stranger's key and certificate (foreign CA), with our CA as the trusted one.
    let chain = with_ca(&pki(0).foreign, &pki(0).ca_cert, "foreign-leaf-our-ca");
    let text = start_err(&chain).to_string();
    for part in [
        "CN=stranger.libchirp.test",
        "issued by CN=foreign test CA",
        "does not verify against the CA certificates in this file",
    ] {
        assert!(text.contains(part), "the error says {part:?}: {text}");
    }
    // The same certificate with its own CA is fine: the check is about the pairing.
    let node = Node::start(tls_config(&pki(0).foreign), drop).expect("consistent file starts");
    node.close();
}

#[test]
fn the_own_certificate_and_the_peers_are_visible_in_stats_and_remotes() {
    let (a, rx) = inbox(tls_config(&pki(0).node_v1));
    let b = Node::start(tls_config(&pki(0).node_v3), drop).unwrap();
    let cert = a
        .stats()
        .certificate
        .expect("a TLS node reports its certificate");
    assert_eq!(cert.subject, "CN=node-v1.libchirp.test");
    assert_eq!(cert.issuer, "CN=libchirp test CA");
    let left = cert.remaining().expect("not expired");
    assert!(
        left > 3640 * DAY && left <= 3650 * DAY,
        "TestPki certificates last ten years: {left:?} left"
    );
    b.send(Message::to(v4(&a), b"hi".to_vec())).wait().unwrap();
    got(&rx, "the message");
    let on_b = b.remotes();
    assert_eq!(on_b.len(), 1, "{on_b:?}");
    let peer = on_b[0]
        .peer_certificate
        .clone()
        .expect("B saw A's certificate");
    assert_eq!(peer, cert, "B sees exactly A's own certificate");
    let on_a = a.remotes();
    let seen = on_a
        .iter()
        .find_map(|r| r.peer_certificate.clone())
        .expect("A saw B's certificate");
    assert_eq!(seen.subject, "CN=node-v3.libchirp.test");
    // Without encryption there is neither.
    let plain = Node::start(config(true), drop).unwrap();
    assert_eq!(plain.stats().certificate, None);
    let e = plain
        .reload_tls(&pki(0).node_v3, &pki(0).dh_params)
        .unwrap_err();
    assert!(
        e.to_string().contains("disable_encryption"),
        "a plaintext node says why it cannot reload: {e}"
    );
}

/// The subject of the certificate `node` presented on its connection from `peer`, as the
/// peer sees it (None when not connected).
fn presented(peer: &Node) -> Vec<String> {
    peer.remotes()
        .into_iter()
        .filter_map(|r| r.peer_certificate.map(|c| c.subject))
        .collect()
}

#[test]
fn reload_gives_new_connections_the_new_certificate_and_leaves_old_ones_alone() {
    let (a, rx) = inbox(tls_config(&pki(0).node_v1));
    let identity = a.identity();
    let old_peer = Node::start(tls_config(&pki(0).node_v3), drop).unwrap();
    old_peer
        .send(Message::to(v4(&a), b"before".to_vec()))
        .wait()
        .unwrap();
    got(&rx, "before");
    // A message in flight across the reload: the peer holds no slot yet, so it queues.
    a.reload_tls(&pki(0).node_v3, &pki(0).dh_params)
        .expect("reload to a good file");
    assert_eq!(a.identity(), identity, "the node keeps its identity");
    assert_eq!(
        a.stats().certificate.unwrap().subject,
        "CN=node-v3.libchirp.test"
    );
    // The old connection carries on with the old certificate.
    old_peer
        .send(Message::to(v4(&a), b"after".to_vec()))
        .wait()
        .unwrap();
    assert_eq!(got(&rx, "after"), b"after");
    assert_eq!(
        presented(&old_peer),
        ["CN=node-v1.libchirp.test"],
        "the existing connection was not touched"
    );
    // A new connection sees the new one.
    let new_peer = Node::start(tls_config(&pki(0).node_v1), drop).unwrap();
    new_peer
        .send(Message::to(v4(&a), b"new".to_vec()))
        .wait()
        .unwrap();
    got(&rx, "new");
    assert_eq!(presented(&new_peer), ["CN=node-v3.libchirp.test"]);

    // A broken file: an error naming it, and nothing changes.
    let broken = pki(0).dh_params.with_file_name("broken.pem");
    std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    let e = a.reload_tls(&broken, &pki(0).dh_params).unwrap_err();
    assert!(
        e.to_string().contains("broken.pem"),
        "the error names the file: {e}"
    );
    let missing = a
        .reload_tls(
            pki(0).dh_params.with_file_name("nope.pem"),
            &pki(0).dh_params,
        )
        .unwrap_err();
    assert!(missing.to_string().contains("nope.pem"), "{missing}");
    let expired = pki(0)
        .issue_node(
            "reload-expired",
            SystemTime::now() - 9 * DAY,
            SystemTime::now() - DAY,
        )
        .unwrap();
    let e = a.reload_tls(&expired, &pki(0).dh_params).unwrap_err();
    assert!(e.to_string().contains("expired on"), "{e}");
    assert_eq!(
        a.stats().certificate.unwrap().subject,
        "CN=node-v3.libchirp.test",
        "failed reloads changed nothing"
    );
    let third = Node::start(tls_config(&pki(0).node_v1), drop).unwrap();
    third
        .send(Message::to(v4(&a), b"third".to_vec()))
        .wait()
        .unwrap();
    got(&rx, "third");
    assert_eq!(presented(&third), ["CN=node-v3.libchirp.test"]);
}

#[test]
fn a_ca_is_rolled_by_trusting_both_then_switching() {
    let (old, new) = (pki(0), pki(1));
    let (a, rx) = inbox(tls_config(&old.node_v1));
    let old_peer = Node::start(tls_config(&old.node_v3), drop).unwrap();
    old_peer
        .send(Message::to(v4(&a), b"1".to_vec()))
        .wait()
        .unwrap();
    got(&rx, "1");

    // Straight to the new CA: new connections from peers of the old CA fail clearly, the
    // old connection lives on.
    a.reload_tls(&new.node_v1, &old.dh_params).unwrap();
    let stranger_now = Node::start(tls_config(&old.node_v1), drop).unwrap();
    let e = stranger_now
        .send(Message::to(v4(&a), b"x".to_vec()))
        .wait_timeout(Duration::from_secs(20))
        .expect("an outcome within 20 s")
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("certificate"),
        "a peer of the old CA is told about the certificate: {text}"
    );
    old_peer
        .send(Message::to(v4(&a), b"2".to_vec()))
        .wait()
        .expect("the old connection lives on");
    assert_eq!(got(&rx, "2"), b"2");

    // The way to roll without failures: every file trusts both CAs first.
    let both = |chain: &Path, other_ca: &Path, name: &str| {
        let path = with_ca(chain, other_ca, name);
        let mut text = std::fs::read_to_string(&path).unwrap();
        // with_ca kept only the other CA: add the chain's own CA back.
        let own = std::fs::read_to_string(chain).unwrap();
        let own_ca = &own[own.rfind("-----BEGIN CERTIFICATE-----").unwrap()..];
        text.push_str(own_ca);
        std::fs::write(&path, text).unwrap();
        path
    };
    // Step 1: A keeps an old-CA certificate and trusts both; peers trust both. (Both test
    // CAs have the same name; v3 certificates name their CA's key, which tells them apart.
    // A real new CA had better have a new name too.)
    a.reload_tls(both(&old.node_v3, &new.ca_cert, "a-step1"), &old.dh_params)
        .unwrap();
    let peer_both = Node::start(
        tls_config(&both(&old.node_v3, &new.ca_cert, "peer-both")),
        drop,
    )
    .unwrap();
    peer_both
        .send(Message::to(v4(&a), b"3".to_vec()))
        .wait()
        .expect("step 1: old certificates, both CAs trusted");
    got(&rx, "3");
    // Step 2: A switches to a new-CA certificate, still trusting both.
    a.reload_tls(both(&new.node_v3, &old.ca_cert, "a-step2"), &old.dh_params)
        .unwrap();
    let peer_both_again = Node::start(
        tls_config(&both(&old.node_v3, &new.ca_cert, "peer-both-2")),
        drop,
    )
    .unwrap();
    peer_both_again
        .send(Message::to(v4(&a), b"4".to_vec()))
        .wait()
        .expect("step 2: a new-CA certificate to a peer that trusts both");
    got(&rx, "4");
    let seen = peer_both_again.remotes()[0]
        .peer_certificate
        .clone()
        .unwrap();
    assert_eq!(
        Some(seen),
        a.stats().certificate,
        "the peer sees A's new-CA certificate"
    );
    let new_ca_cert = Node::start(tls_config(&new.node_v3), drop).unwrap();
    let new_cert = new_ca_cert.stats().certificate.unwrap();
    assert_eq!(
        a.stats().certificate.unwrap().sha256,
        new_cert.sha256,
        "A presents the new PKI's node certificate"
    );
}

#[test]
fn the_pool_and_queue_interfaces_reload_too() {
    let pool = libchirp::pool::Chirp::new(tls_config(&pki(0).node_v1), |_, _| Ok(())).unwrap();
    pool.reload_tls(&pki(0).node_v3, &pki(0).dh_params).unwrap();
    assert_eq!(
        pool.stats().certificate.unwrap().subject,
        "CN=node-v3.libchirp.test"
    );
    let queue = libchirp::queue::Chirp::new(tls_config(&pki(0).node_v1)).unwrap();
    assert!(queue
        .reload_tls(&pki(0).dh_params, &pki(0).dh_params)
        .is_err());
    queue
        .reload_tls(&pki(0).node_v3, &pki(0).dh_params)
        .unwrap();
    assert_eq!(
        queue.stats().certificate.unwrap().subject,
        "CN=node-v3.libchirp.test"
    );
}
