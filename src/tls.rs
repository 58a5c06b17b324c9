//! Mutual TLS exactly as libchirp sets it up (PROTOCOL.md §4), on the `openssl` crate.
//!
//! Every connection runs its OpenSSL session on memory buffers (like libchirp's BIO pair):
//! the reader thread feeds ciphertext it read from the socket and takes plaintext out; the
//! writer thread puts plaintext in and writes the ciphertext out. The session's mutex is held
//! only while OpenSSL works on memory, never across a socket call. Ciphertext that a read
//! produces (TLS 1.3 tickets, key updates) is left in the outgoing buffer and the writer
//! thread is asked to flush it, so all socket writes stay in one thread and in order.

use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::dh::Dh;
use openssl::pkey::PKey;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions, SslStream,
    SslVerifyMode, SslVersion,
};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509NameRef, X509Ref, X509StoreContext, X509};

use crate::error::{Error, TlsError};

/// libchirp's TLS ≤ 1.2 cipher list: finite-field DHE only.
pub(crate) const CIPHER_LIST: &str =
    "-ALL:DHE-DSS-AES256-GCM-SHA384:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-AES256-SHA256:DHE-DSS-AES256-SHA256:";

/// A certificate's subject, issuer and validity: this node's own
/// ([`Stats::certificate`](crate::Stats::certificate)) or a peer's
/// ([`RemoteInfo::peer_certificate`](crate::RemoteInfo::peer_certificate)).
///
/// ```
/// use std::time::Duration;
/// let dir = std::env::temp_dir().join(format!("chirp-cert-doc-{}", std::process::id()));
/// let pki = libchirp::pki::TestPki::generate(&dir)?;
/// let mut config = libchirp::Config::default();
/// config.port = 0;
/// config.cert_chain = Some(pki.node_v3.clone());
/// config.dh_params = Some(pki.dh_params.clone());
/// let node = libchirp::Node::start(config, drop)?;
/// let cert = node.stats().certificate.expect("a TLS node has a certificate");
/// assert_eq!(cert.subject, "CN=node-v3.libchirp.test");
/// assert!(cert.remaining().unwrap() > Duration::from_secs(365 * 86_400));
/// println!("{cert}"); // CN=node-v3.libchirp.test (issued by CN=libchirp test CA), valid … to …
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), libchirp::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Certificate {
    /// The subject's distinguished name, e.g. `CN=node-1.example, O=Example`.
    pub subject: String,
    /// The issuer's distinguished name (the CA that signed it).
    pub issuer: String,
    /// Valid from.
    pub not_before: SystemTime,
    /// Valid until: after this, peers refuse it.
    pub not_after: SystemTime,
    /// SHA-256 fingerprint of the certificate, upper-case hex pairs joined by `:` (as
    /// `openssl x509 -noout -fingerprint -sha256` prints it): tells two certificates
    /// with the same subject apart.
    pub sha256: String,
}

impl Certificate {
    pub(crate) fn of(cert: &X509Ref) -> Certificate {
        Certificate {
            subject: name_text(cert.subject_name()),
            issuer: name_text(cert.issuer_name()),
            not_before: system_time(cert.not_before()),
            not_after: system_time(cert.not_after()),
            sha256: cert
                .digest(openssl::hash::MessageDigest::sha256())
                .map(|d| {
                    d.iter()
                        .map(|b| format!("{b:02X}"))
                        .collect::<Vec<_>>()
                        .join(":")
                })
                .unwrap_or_default(),
        }
    }

    /// Time left until it expires; `None` once it has.
    pub fn remaining(&self) -> Option<Duration> {
        self.not_after.duration_since(SystemTime::now()).ok()
    }
}

impl std::fmt::Display for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (issued by {}), valid {} to {}",
            self.subject,
            self.issuer,
            utc(self.not_before),
            utc(self.not_after)
        )
    }
}

/// `CN=a, O=b`: the name's entries in order, short names where OpenSSL has them.
fn name_text(name: &X509NameRef) -> String {
    name.entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            let value = e.data().to_string().unwrap_or_else(|_| "?".into());
            format!("{key}={value}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn system_time(t: &Asn1TimeRef) -> SystemTime {
    let diff = Asn1Time::from_unix(0).and_then(|epoch| epoch.diff(t));
    match diff {
        Ok(d) => {
            let secs = i64::from(d.days) * 86_400 + i64::from(d.secs);
            if secs >= 0 {
                UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
            } else {
                UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
            }
        }
        Err(_) => UNIX_EPOCH,
    }
}

/// `2027-12-01 04:00:00 UTC`.
pub(crate) fn utc(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The per-node TLS context.
#[derive(Clone)]
pub(crate) struct TlsContext {
    ctx: SslContext,
    /// The node certificate it presents.
    pub(crate) cert: Certificate,
}

/// The context new connections use, replaceable while the node runs
/// ([`Node::reload_tls`](crate::Node::reload_tls)). A connection takes a copy (a reference
/// count) when its TLS handshake starts and keeps it; replacing it touches no connection.
pub(crate) struct TlsCurrent(RwLock<TlsContext>);

impl TlsCurrent {
    pub(crate) fn new(ctx: TlsContext) -> TlsCurrent {
        TlsCurrent(RwLock::new(ctx))
    }

    /// The context for a connection starting now.
    pub(crate) fn get(&self) -> TlsContext {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Makes `ctx` the one for new connections.
    pub(crate) fn replace(&self, ctx: TlsContext) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = ctx;
    }
}

fn file_error(path: &Path, what: &str, reason: impl std::fmt::Display) -> Error {
    Error::tls(format!("{} ({what}): {reason}", path.display()))
}

/// Checks the node certificate (`certs[0]`) before the node uses it: valid now, and issued
/// by a CA in the same file (the CAs the node trusts, so the ones its peers must trust too).
/// Logs a warning when it expires within `warn_within`.
fn check_own_certificate(
    path: &Path,
    certs: &[X509],
    warn_within: Duration,
) -> Result<Certificate, Error> {
    let fail = |reason: String| file_error(path, "certificate chain", reason);
    let cert = Certificate::of(&certs[0]);
    let now = SystemTime::now();
    let with_kind = |e: Error, k: TlsError| match e {
        Error::Tls { reason, .. } => Error::tls_kind(k, reason),
        other => other,
    };
    if now < cert.not_before {
        return Err(with_kind(fail(format!(
            "the node certificate ({}) is not valid yet: valid from {} to {}; use one that is valid now, or check this machine's clock",
            cert.subject,
            utc(cert.not_before),
            utc(cert.not_after)
        )), TlsError::CertificateNotYetValid));
    }
    if now > cert.not_after {
        return Err(with_kind(fail(format!(
            "the node certificate ({}) expired on {} (valid from {}); peers refuse an expired certificate: renew it",
            cert.subject,
            utc(cert.not_after),
            utc(cert.not_before)
        )), TlsError::CertificateExpired));
    }
    // Verify as a peer would: every certificate in the file is trusted (as the TLS context
    // trusts them), the ones after the node certificate also form its chain.
    let ssl_err = |e: openssl::error::ErrorStack| fail(format!("checking the chain: {e}"));
    let mut store = X509StoreBuilder::new().map_err(ssl_err)?;
    for c in certs {
        store.add_cert(c.clone()).map_err(ssl_err)?;
    }
    let store = store.build();
    let mut chain = Stack::new().map_err(ssl_err)?;
    for c in &certs[1..] {
        chain.push(c.clone()).map_err(ssl_err)?;
    }
    let mut ctx = X509StoreContext::new().map_err(ssl_err)?;
    let (verified, error, at) = ctx
        .init(&store, &certs[0], &chain, |c| {
            let ok = c.verify_cert()?;
            let at = c.current_cert().map(|x| name_text(x.subject_name()));
            Ok((ok, c.error(), at))
        })
        .map_err(ssl_err)?;
    if !verified {
        return Err(fail(format!(
            "the node certificate ({}, issued by {}) does not verify against the CA certificates in this file: {} (at {}); peers trusting these CAs would refuse it",
            cert.subject,
            cert.issuer,
            error.error_string(),
            at.unwrap_or_else(|| "?".into())
        )));
    }
    if let Some(left) = cert.remaining().filter(|left| *left < warn_within) {
        log::warn!(
            "{}: the node certificate ({}) expires on {}, in {} days: renew it and reload it (Node::reload_tls, or SIGHUP to the chirp tool)",
            path.display(),
            cert.subject,
            utc(cert.not_after),
            left.as_secs() / 86_400
        );
    }
    Ok(cert)
}

impl TlsContext {
    /// Builds the context from the certificate-chain file (key, certificate, CA) and the
    /// DH-parameters file. Each failure names the file and the reason. The node certificate
    /// must be valid now and verify against the CAs in the file; one that expires within
    /// `warn_within` is accepted with a logged warning.
    pub(crate) fn new(
        cert_chain: &Path,
        dh_params: &Path,
        warn_within: Duration,
    ) -> Result<TlsContext, Error> {
        let chain_pem =
            fs::read(cert_chain).map_err(|e| file_error(cert_chain, "certificate chain", e))?;
        let dh_pem = fs::read(dh_params).map_err(|e| file_error(dh_params, "DH parameters", e))?;
        // Parse up front so that errors say which part of which file is wrong.
        let certs = X509::stack_from_pem(&chain_pem)
            .map_err(|e| file_error(cert_chain, "certificate chain", format!("bad PEM: {e}")))?;
        if certs.is_empty() {
            return Err(file_error(
                cert_chain,
                "certificate chain",
                "no certificate found (expected private key, node certificate, CA certificate)",
            ));
        }
        let key = PKey::private_key_from_pem(&chain_pem).map_err(|e| {
            file_error(
                cert_chain,
                "certificate chain",
                format!("no usable private key in the file: {e}"),
            )
        })?;
        let dh = Dh::params_from_pem(&dh_pem)
            .map_err(|e| file_error(dh_params, "DH parameters", format!("bad PEM: {e}")))?;
        let cert = check_own_certificate(cert_chain, &certs, warn_within)?;

        let ctx_err = |e: openssl::error::ErrorStack| Error::tls(format!("TLS context: {e}"));
        let mut b = SslContextBuilder::new(SslMethod::tls()).map_err(ctx_err)?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(ctx_err)?;
        b.set_mode(SslMode::AUTO_RETRY | SslMode::ENABLE_PARTIAL_WRITE);
        b.set_options(SslOptions::NO_COMPRESSION);
        b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        b.set_verify_depth(5);
        b.set_ca_file(cert_chain)
            .map_err(|e| file_error(cert_chain, "certificate chain", format!("CA load: {e}")))?;
        b.set_certificate(&certs[0])
            .map_err(|e| file_error(cert_chain, "certificate chain", e))?;
        for extra in certs.iter().skip(1) {
            b.add_extra_chain_cert(extra.clone())
                .map_err(|e| file_error(cert_chain, "certificate chain", e))?;
        }
        let mismatch = |_| {
            file_error(
                cert_chain,
                "certificate chain",
                "the private key does not match the node certificate (the first certificate in the file)",
            )
        };
        b.set_private_key(&key).map_err(mismatch)?;
        b.check_private_key().map_err(|_| {
            file_error(
                cert_chain,
                "certificate chain",
                "the private key does not match the node certificate (the first certificate in the file)",
            )
        })?;
        b.set_tmp_dh(&dh)
            .map_err(|e| file_error(dh_params, "DH parameters", e))?;
        b.set_cipher_list(CIPHER_LIST).map_err(ctx_err)?;
        Ok(TlsContext {
            ctx: b.build(),
            cert,
        })
    }
}

/// Memory "socket" under the TLS engine.
#[derive(Default)]
pub(crate) struct MemBio {
    incoming: Vec<u8>,
    read_pos: usize,
    outgoing: Vec<u8>,
    /// Plaintext gathered into one record before encryption (kept for its capacity).
    stage: Vec<u8>,
}

/// The largest TLS record payload.
const MAX_RECORD: usize = 16 * 1024;
/// Parts at least this large are encrypted in place rather than gathered.
const GATHER_LIMIT: usize = 4 * 1024;

/// Encrypts `parts` in order: small ones gathered in `stage` into records of up to
/// `MAX_RECORD` bytes, large ones on their own.
fn gather_and_write(
    s: &mut SslStream<MemBio>,
    stage: &mut Vec<u8>,
    parts: &[std::io::IoSlice],
) -> Result<(), Error> {
    for part in parts {
        if part.len() >= GATHER_LIMIT || stage.len() + part.len() > MAX_RECORD {
            ssl_write_all(s, stage)?;
            stage.clear();
        }
        if part.len() >= GATHER_LIMIT {
            ssl_write_all(s, part)?;
        } else {
            stage.extend_from_slice(part);
        }
    }
    ssl_write_all(s, stage)
}

/// Encrypts all of `buf` (the memory BIO takes everything, so this never waits).
fn ssl_write_all(s: &mut SslStream<MemBio>, mut buf: &[u8]) -> Result<(), Error> {
    while !buf.is_empty() {
        match s.ssl_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) => return Err(ssl_error(e)),
        }
    }
    Ok(())
}

impl Read for MemBio {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = &self.incoming[self.read_pos..];
        if avail.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.read_pos += n;
        if self.read_pos == self.incoming.len() {
            self.incoming.clear();
            self.read_pos = 0;
        }
        Ok(n)
    }
}

impl Write for MemBio {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outgoing.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One connection's TLS session.
pub(crate) struct TlsSession {
    stream: Mutex<SslStream<MemBio>>,
    /// The certificate the peer presented.
    peer: Option<Certificate>,
}

fn ssl_detail(e: openssl::ssl::Error) -> String {
    match e.ssl_error() {
        Some(stack) => stack.to_string(),
        None => e.to_string(),
    }
}

/// A failure of an established session.
fn ssl_error(e: openssl::ssl::Error) -> Error {
    Error::tls_kind(TlsError::Session, ssl_detail(e))
}

/// What one decrypt step produced.
pub(crate) struct Decrypted {
    /// Plaintext bytes written into the destination.
    pub(crate) plain: usize,
    /// The session has ciphertext to send (the writer must flush it).
    pub(crate) wants_flush: bool,
}

impl TlsSession {
    fn lock(&self) -> MutexGuard<'_, SslStream<MemBio>> {
        self.stream.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Performs the TLS handshake over `sock` (client when `client`), giving up at
    /// `deadline`. Runs before the connection's reader and writer threads exist.
    pub(crate) fn handshake(
        ctx: &TlsContext,
        sock: &TcpStream,
        client: bool,
        deadline: Instant,
    ) -> Result<TlsSession, Error> {
        let mut ssl = Ssl::new(&ctx.ctx).map_err(|e| Error::tls(e.to_string()))?;
        if client {
            ssl.set_connect_state();
        } else {
            ssl.set_accept_state();
        }
        let mut stream =
            SslStream::new(ssl, MemBio::default()).map_err(|e| Error::tls(e.to_string()))?;
        let mut buf = vec![0u8; 17 * 1024];
        loop {
            let r = stream.do_handshake();
            flush_outgoing(stream.get_mut(), sock, deadline)?;
            match r {
                Ok(()) => break,
                Err(e) if e.code() == ErrorCode::WANT_READ => {
                    let n = crate::sys::read_until(sock, &mut buf, deadline)
                        .map_err(|e| match e {
                            Error::Protocol { .. } => Error::tls_kind(
                                TlsError::Handshake,
                                "peer closed the connection during the TLS handshake (is it speaking TLS, with a certificate from our CA?)",
                            ),
                            other => other,
                        })?;
                    stream.get_mut().incoming.extend_from_slice(&buf[..n]);
                }
                Err(e) if e.code() == ErrorCode::WANT_WRITE => continue,
                Err(e) => {
                    let verify = stream.ssl().verify_result();
                    let mut reason = ssl_detail(e);
                    if verify != openssl::x509::X509VerifyResult::OK {
                        reason.push_str(&format!(" (peer certificate: {})", verify));
                    }
                    return Err(Error::tls_kind(TlsError::of_handshake(&reason), reason));
                }
            }
        }
        let peer = stream.ssl().peer_certificate().map(|c| Certificate::of(&c));
        Ok(TlsSession {
            stream: Mutex::new(stream),
            peer,
        })
    }

    /// The certificate the peer presented in the handshake.
    pub(crate) fn peer_certificate(&self) -> Option<&Certificate> {
        self.peer.as_ref()
    }

    /// Encrypts all of `parts` and appends the resulting ciphertext (plus any ciphertext
    /// the reader left behind) to `out`.
    ///
    /// Small parts are gathered into records of up to 16 KiB first: a batch of small frames
    /// becomes one TLS record instead of one per preamble and payload, which saves the
    /// per-record work (and 22 bytes on the wire) on both ends.
    pub(crate) fn encrypt(
        &self,
        parts: &[std::io::IoSlice],
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let mut s = self.lock();
        let mut stage = std::mem::take(&mut s.get_mut().stage);
        let r = gather_and_write(&mut s, &mut stage, parts);
        stage.clear();
        s.get_mut().stage = stage;
        r?;
        out.append(&mut s.get_mut().outgoing);
        Ok(())
    }

    /// Appends pending ciphertext (produced by reads) to `out`.
    pub(crate) fn take_outgoing(&self, out: &mut Vec<u8>) {
        out.append(&mut self.lock().get_mut().outgoing);
    }

    /// Feeds `cipher` (may be empty) and decrypts as much plaintext as fits into `plain`.
    pub(crate) fn decrypt(&self, cipher: &[u8], plain: &mut [u8]) -> Result<Decrypted, Error> {
        let mut s = self.lock();
        s.get_mut().incoming.extend_from_slice(cipher);
        let mut filled = 0;
        while filled < plain.len() {
            match s.ssl_read(&mut plain[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.code() == ErrorCode::WANT_READ => break,
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                    if filled > 0 {
                        break;
                    }
                    return Err(Error::protocol("peer closed the TLS session"));
                }
                Err(e) => return Err(ssl_error(e)),
            }
        }
        answer_key_update(&mut s);
        let wants_flush = !s.get_ref().outgoing.is_empty();
        Ok(Decrypted {
            plain: filled,
            wants_flush,
        })
    }
}

extern "C" {
    // libssl (linked through openssl-sys); the openssl crate has no binding for these.
    fn SSL_get_key_update_type(ssl: *const openssl_sys::SSL) -> std::ffi::c_int;
    fn SSL_key_update(ssl: *mut openssl_sys::SSL, updatetype: std::ffi::c_int) -> std::ffi::c_int;
}

/// OpenSSL answers a peer's TLS 1.3 KeyUpdate request only on our next write. A node with
/// nothing to send would never answer, so send the answer now: schedule it and let the
/// handshake function write it into the outgoing buffer (the writer thread flushes it).
fn answer_key_update(s: &mut SslStream<MemBio>) {
    use foreign_types::ForeignTypeRef;
    let ssl = s.ssl().as_ptr();
    // SAFETY: `ssl` is the live SSL object owned by `s`, which we hold exclusively.
    let pending = unsafe { SSL_get_key_update_type(ssl) };
    if pending < 0 {
        return; // SSL_KEY_UPDATE_NONE
    }
    // SAFETY: as above; SSL_key_update only schedules, do_handshake writes to memory.
    if unsafe { SSL_key_update(ssl, pending) } == 1 {
        if let Err(e) = s.do_handshake() {
            log::debug!("answering a TLS key update failed: {e}");
        }
    }
}

fn flush_outgoing(bio: &mut MemBio, mut sock: &TcpStream, deadline: Instant) -> Result<(), Error> {
    if bio.outgoing.is_empty() {
        return Ok(());
    }
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(Error::timeout("TLS handshake"));
    }
    sock.set_write_timeout(Some(remaining))?;
    let r = sock.write_all(&bio.outgoing);
    bio.outgoing.clear();
    r.map_err(|e| {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            Error::timeout("TLS handshake write")
        } else {
            Error::tls_kind(
                TlsError::Handshake,
                format!("writing the TLS handshake failed: {e}"),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::IoSlice;
    use std::net::TcpListener;
    use std::time::Duration;

    /// Two ends of a real TLS session over loopback, with the test PKI.
    fn pair() -> (TlsSession, TlsSession) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("chirp-tls-unit-{}-{n}", std::process::id()));
        let pki = crate::pki::TestPki::generate(&dir).unwrap();
        let ctx = TlsContext::new(&pki.node_v1, &pki.dh_params, Duration::ZERO).unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let c_ctx = ctx.clone();
        let client = std::thread::spawn(move || {
            let s = TcpStream::connect(addr).unwrap();
            TlsSession::handshake(&c_ctx, &s, true, deadline).unwrap()
        });
        let (s, _) = l.accept().unwrap();
        let server = TlsSession::handshake(&ctx, &s, false, deadline).unwrap();
        let client = client.join().unwrap();
        std::fs::remove_dir_all(&dir).ok();
        (client, server)
    }

    /// Walks the TLS record headers of `cipher`; returns the number of application-data
    /// records, checking that the records exactly cover the bytes.
    fn records(cipher: &[u8]) -> usize {
        let (mut off, mut n) = (0, 0);
        while off < cipher.len() {
            assert!(off + 5 <= cipher.len(), "truncated record header");
            let len = usize::from(u16::from_be_bytes([cipher[off + 3], cipher[off + 4]]));
            if cipher[off] == 23 {
                n += 1;
            }
            off += 5 + len;
        }
        assert_eq!(off, cipher.len(), "records do not cover the ciphertext");
        n
    }

    fn decrypt_all(s: &TlsSession, cipher: &[u8], len: usize) -> Vec<u8> {
        let mut plain = vec![0u8; len];
        let mut got = s.decrypt(cipher, &mut plain).unwrap().plain;
        while got < len {
            let d = s.decrypt(&[], &mut plain[got..]).unwrap();
            assert!(d.plain > 0, "plaintext missing after {got} of {len} bytes");
            got += d.plain;
        }
        plain
    }

    #[test]
    fn utc_dates_are_civil_dates() {
        let at = |s: u64| utc(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(at(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(at(1_796_097_599), "2026-12-01 03:59:59 UTC");
        assert_eq!(at(4_107_542_400), "2100-03-01 00:00:00 UTC");
        assert_eq!(
            utc(UNIX_EPOCH - Duration::from_secs(1)),
            "1969-12-31 23:59:59 UTC"
        );
    }

    #[test]
    fn small_parts_are_gathered_into_one_record() {
        let (client, server) = pair();
        // Sixteen frames' worth of preamble + payload slices, as the writer passes them.
        let chunks: Vec<Vec<u8>> = (0..32u8)
            .map(|i| vec![i; 27 + usize::from(i % 2) * 16])
            .collect();
        let parts: Vec<IoSlice> = chunks.iter().map(|c| IoSlice::new(c)).collect();
        let mut cipher = Vec::new();
        client.encrypt(&parts, &mut cipher).unwrap();
        assert_eq!(records(&cipher), 1, "32 small parts must make one record");
        let expect: Vec<u8> = chunks.concat();
        assert_eq!(decrypt_all(&server, &cipher, expect.len()), expect);
    }

    #[test]
    fn large_and_many_parts_keep_their_order_and_record_limit() {
        let (client, server) = pair();
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        for i in 0..600u32 {
            // Mostly small parts (more than one record's worth), some large ones between.
            let len = if i % 97 == 0 {
                40_000
            } else {
                27 + (i as usize % 50)
            };
            chunks.push((0..len).map(|j| (i as usize * 7 + j) as u8).collect());
        }
        let parts: Vec<IoSlice> = chunks.iter().map(|c| IoSlice::new(c)).collect();
        let mut cipher = Vec::new();
        client.encrypt(&parts, &mut cipher).unwrap();
        let total: usize = chunks.iter().map(Vec::len).sum();
        let n = records(&cipher);
        // At most one record per 16 KiB, plus one per switch between gathered and large.
        assert!(
            n <= total / MAX_RECORD + 2 * 7 + 2,
            "{n} records for {total} bytes"
        );
        let expect: Vec<u8> = chunks.concat();
        assert_eq!(decrypt_all(&server, &cipher, expect.len()), expect);
    }
}
