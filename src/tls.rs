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
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use openssl::dh::Dh;
use openssl::pkey::PKey;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions, SslStream,
    SslVerifyMode, SslVersion,
};
use openssl::x509::X509;

use crate::error::Error;

/// libchirp's TLS ≤ 1.2 cipher list: finite-field DHE only.
pub(crate) const CIPHER_LIST: &str =
    "-ALL:DHE-DSS-AES256-GCM-SHA384:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-AES256-SHA256:DHE-DSS-AES256-SHA256:";

/// The per-node TLS context.
#[derive(Clone)]
pub(crate) struct TlsContext {
    ctx: SslContext,
}

fn file_error(path: &Path, what: &str, reason: impl std::fmt::Display) -> Error {
    Error::tls(format!("{} ({what}): {reason}", path.display()))
}

impl TlsContext {
    /// Builds the context from the certificate-chain file (key, certificate, CA) and the
    /// DH-parameters file. Each failure names the file and the reason.
    pub(crate) fn new(cert_chain: &Path, dh_params: &Path) -> Result<TlsContext, Error> {
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
        Ok(TlsContext { ctx: b.build() })
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
}

fn ssl_error(e: openssl::ssl::Error) -> Error {
    let detail = match e.ssl_error() {
        Some(stack) => stack.to_string(),
        None => e.to_string(),
    };
    Error::tls(detail)
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
                            Error::Protocol { .. } => Error::tls(
                                "peer closed the connection during the TLS handshake (is it speaking TLS, with a certificate from our CA?)",
                            ),
                            other => other,
                        })?;
                    stream.get_mut().incoming.extend_from_slice(&buf[..n]);
                }
                Err(e) if e.code() == ErrorCode::WANT_WRITE => continue,
                Err(e) => {
                    let verify = stream.ssl().verify_result();
                    let mut err = ssl_error(e);
                    if let Error::Tls { reason } = &mut err {
                        if verify != openssl::x509::X509VerifyResult::OK {
                            reason.push_str(&format!(" (peer certificate: {})", verify));
                        }
                    }
                    return Err(err);
                }
            }
        }
        Ok(TlsSession {
            stream: Mutex::new(stream),
        })
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
            Error::tls(format!("writing the TLS handshake failed: {e}"))
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
        let ctx = TlsContext::new(&pki.node_v1, &pki.dh_params).unwrap();
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
