//! Mutual TLS as libchirp does it (issue 4), against our own node and a hand-driven OpenSSL
//! client. Every test makes a throwaway PKI at test time.
use crate::support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libchirp::pki::TestPki;
use libchirp::wire::{Handshake, HANDSHAKE_SIZE, TYPE_REQ_ACK};
use libchirp::{Config, Error, Identity, Message, Node};
use openssl::ssl::{Ssl, SslContext, SslFiletype, SslMethod, SslStream, SslVerifyMode, SslVersion};
use support::*;

fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("libchirp-tls-test-{}", std::process::id()));
        TestPki::generate(&dir).expect("generate PKI")
    })
}

fn tls_config(sync: bool, chain: &Path) -> Config {
    let mut c = config(sync);
    c.disable_encryption = false;
    c.always_encrypt = true;
    c.cert_chain = Some(chain.to_path_buf());
    c.dh_params = Some(pki().dh_params.clone());
    c
}

/// A hand-driven TLS client presenting `chain` (or no certificate).
fn tls_client(
    addr: SocketAddr,
    chain: Option<&Path>,
    max: Option<SslVersion>,
) -> Result<SslStream<TcpStream>, String> {
    let mut b = SslContext::builder(SslMethod::tls_client()).unwrap();
    b.set_ca_file(&pki().ca_cert).unwrap();
    if let Some(chain) = chain {
        b.set_certificate_chain_file(chain).unwrap();
        b.set_private_key_file(chain, SslFiletype::PEM).unwrap();
    }
    b.set_verify(SslVerifyMode::PEER);
    b.set_max_proto_version(max).unwrap();
    if max == Some(SslVersion::TLS1_2) {
        b.set_cipher_list("DHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384")
            .unwrap();
    }
    let ctx = b.build();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let ssl = Ssl::new(&ctx).unwrap();
    let mut s = ssl.connect(sock).map_err(|e| e.to_string())?;
    // TLS 1.3: the server checks our certificate after its handshake finished; a refusal
    // shows on the first read.
    s.write_all(
        &Handshake {
            port: 4999,
            identity: Identity::random(),
        }
        .encode(),
    )
    .map_err(|e| e.to_string())?;
    Ok(s)
}

fn read_handshake(s: &mut SslStream<TcpStream>) -> Result<Handshake, String> {
    let mut buf = [0u8; 64];
    // One SSL_read returns at most one record: 18 bytes at once means one record.
    let n = s.read(&mut buf).map_err(|e| e.to_string())?;
    if n != HANDSHAKE_SIZE {
        return Err(format!(
            "first application data was {n} bytes, not one 18-byte record"
        ));
    }
    Ok(Handshake::decode(buf[..18].try_into().unwrap()))
}

#[test]
fn certificate_files_are_checked_at_start() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("libchirp-badpki-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage.pem");
    std::fs::write(
        &garbage,
        b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    // Key of one node with the certificate of another.
    let mismatched = dir.join("mismatch.pem");
    let v1 = std::fs::read_to_string(&pki().node_v1).unwrap();
    let v3 = std::fs::read_to_string(&pki().node_v3).unwrap();
    let key_v1 = &v1[..v1.find("-----BEGIN CERTIFICATE-----").unwrap()];
    let certs_v3 = &v3[v3.find("-----BEGIN CERTIFICATE-----").unwrap()..];
    std::fs::write(&mismatched, format!("{key_v1}{certs_v3}")).unwrap();
    let no_key = dir.join("nokey.pem");
    std::fs::write(&no_key, certs_v3).unwrap();
    let missing = dir.join("missing.pem");
    let cases: Vec<(PathBuf, PathBuf, &str, &str)> = vec![
        (
            missing.clone(),
            pki().dh_params.clone(),
            "missing.pem",
            "No such file",
        ),
        (
            garbage.clone(),
            pki().dh_params.clone(),
            "garbage.pem",
            "bad PEM",
        ),
        (
            mismatched.clone(),
            pki().dh_params.clone(),
            "mismatch.pem",
            "does not match",
        ),
        (
            no_key.clone(),
            pki().dh_params.clone(),
            "nokey.pem",
            "private key",
        ),
        (
            pki().node_v1.clone(),
            missing.clone(),
            "missing.pem",
            "No such file",
        ),
        (
            pki().node_v1.clone(),
            garbage.clone(),
            "garbage.pem",
            "bad PEM",
        ),
    ];
    for (chain, dh, file, reason) in cases {
        let mut c = config(true);
        c.disable_encryption = false;
        c.cert_chain = Some(chain);
        c.dh_params = Some(dh);
        let err = Node::start(c, drop).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(
                err,
                Error::Tls {
                    kind: libchirp::TlsError::Setup,
                    ..
                }
            ),
            "a configuration problem: {text}"
        );
        assert!(text.contains(file) && text.contains(reason), "{text}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sync_async_and_request_work_over_tls_with_v1_and_v3_certificates() {
    for sync in [true, false] {
        let echo = echo_node(tls_config(sync, &pki().node_v1));
        let (sender, inbox) = inbox_node(tls_config(sync, &pki().node_v3));
        for i in 0..50u32 {
            let sending = sender.send(Message::to(v4(&echo), vec![i as u8; (i * 997) as usize]));
            let back = recv(&inbox, "echo over TLS");
            assert_eq!(back.data().len(), (i * 997) as usize);
            drop(back);
            sending.wait().expect("send over TLS");
        }
        // Over IPv6 loopback too.
        let sending = sender.send(Message::to(v6(&echo), b"six".to_vec()));
        assert_eq!(recv(&inbox, "v6 echo").data(), b"six");
        sending.wait().unwrap();
        sender.close();
        echo.close();
    }
    let mut c = tls_config(true, &pki().node_v1);
    c.pool_threads = 2;
    let echo = libchirp::pool::Chirp::new(c, |chirp, msg| {
        chirp.send(msg).wait()?;
        Ok(())
    })
    .unwrap();
    let client =
        libchirp::pool::Chirp::new(tls_config(true, &pki().node_v3), |_, _| Ok(())).unwrap();
    let answer = client
        .request(Message::to(v4(&echo), b"question".to_vec()))
        .wait()
        .unwrap();
    assert_eq!(answer.data(), b"question");
}

#[test]
fn tls_versions_ciphers_and_handshake_record() {
    let (node, rx) = inbox_node(tls_config(false, &pki().node_v1));
    // Default: TLS 1.3.
    let mut s = tls_client(v4(&node), Some(&pki().node_v3), None).unwrap();
    assert_eq!(s.ssl().version_str(), "TLSv1.3");
    let hs = read_handshake(&mut s).unwrap();
    assert_eq!((hs.port, hs.identity), (node.port(), node.identity()));
    // TLS 1.2: libchirp's finite-field DHE suite, even though we offered ECDHE as well.
    let mut s12 = tls_client(v4(&node), Some(&pki().node_v3), Some(SslVersion::TLS1_2)).unwrap();
    assert_eq!(s12.ssl().version_str(), "TLSv1.2");
    assert_eq!(
        s12.ssl().current_cipher().unwrap().name(),
        "DHE-RSA-AES256-GCM-SHA384"
    );
    read_handshake(&mut s12).unwrap();
    // Messages flow over both.
    let id = Identity::random();
    let mut frame = libchirp::wire::Preamble {
        identity: id,
        serial: 1,
        data_len: 2,
        header_len: 0,
        kind_bits: 0,
    }
    .encode()
    .to_vec();
    frame.extend_from_slice(b"hi");
    s12.write_all(&frame).unwrap();
    assert_eq!(recv(&rx, "message over TLS 1.2").identity(), id);
    // TLS 1.1 and below: refused.
    let r = tls_client(v4(&node), Some(&pki().node_v3), Some(SslVersion::TLS1_1));
    assert!(r.is_err() || read_handshake(&mut r.unwrap()).is_err());
    node.close();
}

#[test]
fn strangers_are_refused_and_everyone_else_is_served() {
    let (node, rx) = inbox_node(tls_config(true, &pki().node_v1));
    let refused = |r: Result<SslStream<TcpStream>, String>| match r {
        Err(_) => true,
        Ok(mut s) => read_handshake(&mut s).is_err(),
    };
    // Foreign CA, no certificate.
    assert!(
        refused(tls_client(v4(&node), Some(&pki().foreign), None)),
        "foreign CA refused"
    );
    assert!(
        refused(tls_client(v4(&node), None, None)),
        "no certificate refused"
    );
    // Plaintext to a node that expects TLS.
    let mut plain = Raw18::connect(v4(&node));
    assert!(
        support::raw::closed_within(&mut plain.0, Duration::from_secs(10)),
        "plaintext refused"
    );
    // A foreign node sending to us fails in bounded time, with a TLS or protocol error.
    let mut fc = tls_config(true, &pki().foreign);
    fc.timeout = Duration::from_secs(1);
    let (stranger, _) = inbox_node(fc);
    let t = Instant::now();
    let err = stranger
        .send(Message::to(v4(&node), b"let me in".to_vec()))
        .wait()
        .unwrap_err();
    assert!(
        matches!(err.error(), Error::Tls { .. } | Error::Protocol { .. }),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    // We refuse to send to a foreign node as well.
    let (stranger_rx_node, srx) = inbox_node(tls_config(true, &pki().foreign));
    let (friend, _) = inbox_node(tls_config(true, &pki().node_v3));
    let err = friend
        .send(Message::to(v4(&stranger_rx_node), b"hello?".to_vec()))
        .wait()
        .unwrap_err();
    // Our side verified the stranger's certificate: the error says so, down its chain.
    let chain = error_chain(err.error());
    assert!(
        matches!(
            err.error(),
            Error::Tls {
                kind: libchirp::TlsError::UnknownIssuer,
                ..
            }
        ),
        "{chain}"
    );
    assert!(
        chain.contains("not signed by a trusted CA"),
        "the chain names the problem: {chain}"
    );
    assert!(srx.try_recv().is_err());
    // A plaintext node sending to a TLS node fails in bounded time too.
    let mut pc = config(true);
    pc.timeout = Duration::from_secs(1);
    let (plain_node, _) = inbox_node(pc);
    let err = plain_node
        .send(Message::to(v4(&node), b"plain".to_vec()))
        .wait()
        .unwrap_err();
    assert!(
        matches!(
            err.error(),
            Error::Tls { .. } | Error::Protocol { .. } | Error::Timeout { .. }
        ),
        "{err}"
    );
    // The node still serves a friend.
    let sending = friend.send(Message::to(v4(&node), b"friend".to_vec()));
    assert_eq!(recv(&rx, "friend's message").data(), b"friend");
    sending.wait().unwrap();
    for n in [node, stranger, stranger_rx_node, friend, plain_node] {
        n.close();
    }
}

/// A plaintext client that sends a chirp handshake.
struct Raw18(TcpStream);
impl Raw18 {
    fn connect(addr: SocketAddr) -> Raw18 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(
            &Handshake {
                port: 4998,
                identity: Identity::random(),
            }
            .encode(),
        )
        .unwrap();
        Raw18(s)
    }
}

#[test]
fn loopback_is_plaintext_unless_always_encrypt() {
    let mut c = tls_config(true, &pki().node_v1);
    c.always_encrypt = false;
    let (node, rx) = inbox_node(c);
    let mut raw = support::raw::Raw::connect(v4(&node), 4400);
    assert_eq!(
        raw.peer.identity,
        node.identity(),
        "plaintext handshake on loopback"
    );
    raw.send_frame(Identity::random(), 1, 0, b"", b"plain");
    assert_eq!(recv(&rx, "plaintext message").data(), b"plain");
    node.close();
    let (enc, _) = inbox_node(tls_config(true, &pki().node_v1));
    let mut s = TcpStream::connect(v4(&enc)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut b = [0u8; 18];
    assert!(
        s.read_exact(&mut b).is_err(),
        "an always-encrypt node does not talk plaintext"
    );
    enc.close();
}

#[test]
fn concurrent_reads_and_writes_share_one_session() {
    // Both directions at full speed at once over one TLS connection, large and small.
    let mut c = tls_config(false, &pki().node_v1);
    c.max_slots = 16;
    let (a, arx) = inbox_node(c.clone());
    let (b, brx) = inbox_node(c);
    // One connection first (simultaneous dials would make two, and C libchirp gives no
    // ordering across duplicate connections either: PROTOCOL.md §3.7).
    a.send(Message::to(v4(&b), b"warm-up".to_vec()))
        .wait()
        .unwrap();
    assert_eq!(recv(&brx, "warm-up").data(), b"warm-up");
    let n = 400usize;
    let ta = std::thread::spawn({
        let a = a.clone();
        let to = v4(&b);
        move || {
            (0..n)
                .map(|i| a.send(Message::to(to, vec![1u8; 1 + (i * 7919) % 70000])))
                .collect::<Vec<_>>()
        }
    });
    let tb = std::thread::spawn({
        let b = b.clone();
        let to = v4(&a);
        move || {
            (0..n)
                .map(|i| b.send(Message::to(to, vec![2u8; 1 + (i * 104729) % 70000])))
                .collect::<Vec<_>>()
        }
    });
    for i in 0..n {
        let m = recv(&brx, "a->b");
        assert_eq!(m.data().len(), 1 + (i * 7919) % 70000);
        assert!(m.data().iter().all(|&x| x == 1));
        let m = recv(&arx, "b->a");
        assert_eq!(m.data().len(), 1 + (i * 104729) % 70000);
    }
    for s in ta.join().unwrap().into_iter().chain(tb.join().unwrap()) {
        s.wait().unwrap();
    }
    a.close();
    b.close();
}

extern "C" {
    fn SSL_key_update(ssl: *mut std::ffi::c_void, updatetype: std::ffi::c_int) -> std::ffi::c_int;
}

#[test]
fn ciphertext_produced_by_a_read_is_written() {
    use foreign_types::ForeignTypeRef;
    let (node, rx) = inbox_node(tls_config(false, &pki().node_v1));
    let mut s = tls_client(v4(&node), Some(&pki().node_v3), None).unwrap();
    read_handshake(&mut s).unwrap();
    assert_eq!(s.ssl().version_str(), "TLSv1.3");
    // Ask the node to update its keys: its reader processes our KeyUpdate and OpenSSL
    // answers with its own KeyUpdate, produced inside a *read*. The node has no application
    // data to send, so bytes arrive only if the reader's ciphertext is flushed.
    // SAFETY: a valid SSL pointer; 1 = SSL_KEY_UPDATE_REQUESTED.
    assert_eq!(unsafe { SSL_key_update(s.ssl().as_ptr() as *mut _, 1) }, 1);
    // Sent with the next record: a NOOP, which the node answers with nothing.
    let noop = libchirp::wire::Preamble {
        identity: Identity::zero(),
        serial: 1,
        data_len: 0,
        header_len: 0,
        kind_bits: libchirp::wire::TYPE_NOOP,
    }
    .encode();
    s.write_all(&noop).unwrap();
    let mut peek = [0u8; 1];
    s.get_ref()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let n = s
        .get_ref()
        .peek(&mut peek)
        .expect("the node's KeyUpdate arrives");
    assert!(n > 0);
    // The session still works both ways afterwards.
    let id = Identity::random();
    let mut frame = libchirp::wire::Preamble {
        identity: id,
        serial: 1,
        data_len: 3,
        header_len: 0,
        kind_bits: TYPE_REQ_ACK,
    }
    .encode()
    .to_vec();
    frame.extend_from_slice(b"abc");
    s.write_all(&frame).unwrap();
    let m = recv(&rx, "message after key update");
    drop(m);
    let mut ack = [0u8; 27];
    s.read_exact(&mut ack).expect("ACK after key update");
    assert_eq!(&ack[..16], id.as_bytes());
    node.close();
}

#[test]
fn plaintext_listener_is_refused_by_a_tls_dialer() {
    // A peer that accepts and answers in plaintext: our TLS dialer fails, bounded.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let _ = s.write_all(
            &Handshake {
                port,
                identity: Identity::random(),
            }
            .encode(),
        );
        let mut b = [0u8; 1024];
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.read(&mut b);
    });
    let mut c = tls_config(true, &pki().node_v1);
    c.timeout = Duration::from_secs(1);
    let (node, _) = inbox_node(c);
    let started = Instant::now();
    let err = node
        .send(Message::to(
            format!("127.0.0.1:{port}").parse().unwrap(),
            b"x".to_vec(),
        ))
        .wait()
        .unwrap_err();
    assert!(matches!(err.error(), Error::Tls { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    node.close();
    t.join().unwrap();
}

/// An error and its sources, one per line, as `anyhow` or `eyre` would print them.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(&format!("\ncaused by: {c}"));
        cause = c.source();
    }
    out
}
