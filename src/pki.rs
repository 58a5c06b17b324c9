//! Throwaway PKIs for tests, benchmarks and trying TLS out: a CA, node certificates signed by
//! it (X.509 v1, as in libchirp's own test PKI, and v3), a foreign CA with its own node, and
//! DH parameters — written as the files libchirp expects.
//!
//! Never use these for production: the keys are written unencrypted to the directory given.
//!
//! Only with the cargo feature `pki` (off by default). This is test tooling, **not covered
//! by the crate's semver promise**: it may change in any release.
//!
//! # Examples
//!
//! ```
//! let dir = std::env::temp_dir().join(format!("chirp-pki-doc-{}", std::process::id()));
//! let pki = libchirp::pki::TestPki::generate(&dir)?;
//! let mut config = libchirp::Config::default();
//! config.cert_chain = Some(pki.node_v1.clone());
//! config.dh_params = Some(pki.dh_params.clone());
//! assert!(config.validate().is_ok());
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), libchirp::Error>(())
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::dh::Dh;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, SubjectKeyIdentifier,
};
use openssl::x509::{X509Name, X509};

use crate::error::Error;

/// RFC 7919 ffdhe2048 group.
const FFDHE2048: &str = "-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
";

/// Paths of a generated PKI. Each `node_*` file holds a private key, the node certificate
/// and the CA certificate, in that order — the layout libchirp's `CERT_CHAIN_PEM` expects.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// Node signed by the CA, X.509 v1 certificate (no extensions).
    pub node_v1: PathBuf,
    /// Another node signed by the same CA, X.509 v3 certificate.
    pub node_v3: PathBuf,
    /// A node whose certificate (and CA) belong to a different, foreign CA.
    pub foreign: PathBuf,
    /// The CA certificate alone (PEM), e.g. for `openssl s_client -CAfile`.
    pub ca_cert: PathBuf,
    /// DH parameters (RFC 7919 ffdhe2048).
    pub dh_params: PathBuf,
    /// The CA's private key, for [`TestPki::issue_node`].
    pub ca_key: PathBuf,
}

fn e(what: &str) -> impl Fn(openssl::error::ErrorStack) -> Error + '_ {
    move |err| Error::tls(format!("generating {what}: {err}"))
}

fn key() -> Result<PKey<Private>, Error> {
    let rsa = Rsa::generate(2048).map_err(e("RSA key"))?;
    PKey::from_rsa(rsa).map_err(e("RSA key"))
}

fn name(cn: &str) -> Result<X509Name, Error> {
    let mut b = X509Name::builder().map_err(e("name"))?;
    b.append_entry_by_text("CN", cn).map_err(e("name"))?;
    Ok(b.build())
}

fn serial() -> Result<openssl::asn1::Asn1Integer, Error> {
    let mut bn = BigNum::new().map_err(e("serial"))?;
    bn.rand(64, MsbOption::MAYBE_ZERO, false)
        .map_err(e("serial"))?;
    bn.to_asn1_integer().map_err(e("serial"))
}

fn ca(cn: &str) -> Result<(PKey<Private>, X509), Error> {
    let k = key()?;
    let mut b = X509::builder().map_err(e("CA"))?;
    b.set_version(2).map_err(e("CA"))?;
    b.set_serial_number(&*serial()?).map_err(e("CA"))?;
    let n = name(cn)?;
    b.set_subject_name(&n).map_err(e("CA"))?;
    b.set_issuer_name(&n).map_err(e("CA"))?;
    b.set_pubkey(&k).map_err(e("CA"))?;
    b.set_not_before(&*Asn1Time::days_from_now(0).map_err(e("CA"))?)
        .map_err(e("CA"))?;
    b.set_not_after(&*Asn1Time::days_from_now(3650).map_err(e("CA"))?)
        .map_err(e("CA"))?;
    b.append_extension(
        BasicConstraints::new()
            .critical()
            .ca()
            .build()
            .map_err(e("CA"))?,
    )
    .map_err(e("CA"))?;
    b.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()
            .map_err(e("CA"))?,
    )
    .map_err(e("CA"))?;
    let ski = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(None, None))
        .map_err(e("CA"))?;
    b.append_extension(ski).map_err(e("CA"))?;
    b.sign(&k, MessageDigest::sha256()).map_err(e("CA"))?;
    Ok((k, b.build()))
}

fn node(
    cn: &str,
    v1: bool,
    ca_key: &PKey<Private>,
    ca: &X509,
) -> Result<(PKey<Private>, X509), Error> {
    let now = SystemTime::now();
    node_valid(cn, v1, ca_key, ca, now, now + 3650 * DAY)
}

const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

fn asn1_time(t: SystemTime) -> Result<Asn1Time, Error> {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    Asn1Time::from_unix(secs as _).map_err(e("validity time"))
}

fn node_valid(
    cn: &str,
    v1: bool,
    ca_key: &PKey<Private>,
    ca: &X509,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<(PKey<Private>, X509), Error> {
    let k = key()?;
    let mut b = X509::builder().map_err(e("node certificate"))?;
    b.set_version(if v1 { 0 } else { 2 })
        .map_err(e("node certificate"))?;
    b.set_serial_number(&*serial()?)
        .map_err(e("node certificate"))?;
    b.set_subject_name(&*name(cn)?)
        .map_err(e("node certificate"))?;
    b.set_issuer_name(ca.subject_name())
        .map_err(e("node certificate"))?;
    b.set_pubkey(&k).map_err(e("node certificate"))?;
    b.set_not_before(&*asn1_time(not_before)?)
        .map_err(e("node certificate"))?;
    b.set_not_after(&*asn1_time(not_after)?)
        .map_err(e("node certificate"))?;
    if !v1 {
        b.append_extension(
            BasicConstraints::new()
                .build()
                .map_err(e("node certificate"))?,
        )
        .map_err(e("node certificate"))?;
        // Names the CA's key, so a verifier picks the right CA among several of the same
        // name (two generations of a CA while it is rolled).
        let akid = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&b.x509v3_context(Some(ca), None))
            .map_err(e("node certificate"))?;
        b.append_extension(akid).map_err(e("node certificate"))?;
    }
    b.sign(ca_key, MessageDigest::sha256())
        .map_err(e("node certificate"))?;
    Ok((k, b.build()))
}

fn chain_pem(k: &PKey<Private>, leaf: &X509, ca: &X509) -> Result<Vec<u8>, Error> {
    let mut out = k.private_key_to_pem_pkcs8().map_err(e("PEM"))?;
    out.extend(leaf.to_pem().map_err(e("PEM"))?);
    out.extend(ca.to_pem().map_err(e("PEM"))?);
    Ok(out)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    fs::write(path, bytes).map_err(|err| {
        Error::io(std::io::Error::new(
            err.kind(),
            format!("writing {}: {err}", path.display()),
        ))
    })
}

impl TestPki {
    /// Generates a fresh PKI into `dir` (created if missing).
    pub fn generate(dir: &Path) -> Result<TestPki, Error> {
        fs::create_dir_all(dir).map_err(|err| {
            Error::io(std::io::Error::new(
                err.kind(),
                format!("creating {}: {err}", dir.display()),
            ))
        })?;
        let (ca_key, ca_cert) = ca("libchirp test CA")?;
        let (fca_key, fca_cert) = ca("foreign test CA")?;
        let (k1, c1) = node("node-v1.libchirp.test", true, &ca_key, &ca_cert)?;
        let (k3, c3) = node("node-v3.libchirp.test", false, &ca_key, &ca_cert)?;
        let (kf, cf) = node("stranger.libchirp.test", false, &fca_key, &fca_cert)?;
        let pki = TestPki {
            node_v1: dir.join("node_v1.pem"),
            node_v3: dir.join("node_v3.pem"),
            foreign: dir.join("foreign.pem"),
            ca_cert: dir.join("ca.pem"),
            dh_params: dir.join("dh.pem"),
            ca_key: dir.join("ca_key.pem"),
        };
        write(
            &pki.ca_key,
            &ca_key.private_key_to_pem_pkcs8().map_err(e("PEM"))?,
        )?;
        write(&pki.node_v1, &chain_pem(&k1, &c1, &ca_cert)?)?;
        write(&pki.node_v3, &chain_pem(&k3, &c3, &ca_cert)?)?;
        write(&pki.foreign, &chain_pem(&kf, &cf, &fca_cert)?)?;
        write(&pki.ca_cert, &ca_cert.to_pem().map_err(e("PEM"))?)?;
        let dh = match Dh::params_from_pem(FFDHE2048.as_bytes()) {
            Ok(dh) => dh.params_to_pem().map_err(e("DH"))?,
            Err(_) => Dh::get_2048_256()
                .map_err(e("DH"))?
                .params_to_pem()
                .map_err(e("DH"))?,
        };
        write(&pki.dh_params, &dh)?;
        Ok(pki)
    }

    /// Issues another node certificate from this PKI's CA, valid from `not_before` to
    /// `not_after` (either may lie in the past or the future: expired and not yet valid
    /// certificates for tests), and writes it as a chain file `NAME.pem` (key, certificate,
    /// CA certificate) beside the others. Returns its path.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// let dir = std::env::temp_dir().join(format!("chirp-pki-issue-doc-{}", std::process::id()));
    /// let pki = libchirp::pki::TestPki::generate(&dir)?;
    /// let day = Duration::from_secs(86_400);
    /// let now = SystemTime::now();
    /// let expired = pki.issue_node("expired", now - 10 * day, now - day)?;
    /// let mut config = libchirp::Config::default();
    /// config.port = 0;
    /// config.cert_chain = Some(expired);
    /// config.dh_params = Some(pki.dh_params.clone());
    /// let err = libchirp::Node::start(config, drop).unwrap_err();
    /// assert!(err.to_string().contains("expired on"), "{err}");
    /// # std::fs::remove_dir_all(&dir).ok();
    /// # Ok::<(), libchirp::Error>(())
    /// ```
    pub fn issue_node(
        &self,
        name: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<PathBuf, Error> {
        let read = |p: &Path| {
            fs::read(p).map_err(|err| {
                Error::io(std::io::Error::new(
                    err.kind(),
                    format!("reading {}: {err}", p.display()),
                ))
            })
        };
        let ca_key = PKey::private_key_from_pem(&read(&self.ca_key)?).map_err(e("CA key"))?;
        let ca_cert = X509::from_pem(&read(&self.ca_cert)?).map_err(e("CA certificate"))?;
        let cn = format!("{name}.libchirp.test");
        let (k, c) = node_valid(&cn, false, &ca_key, &ca_cert, not_before, not_after)?;
        let dir = self.ca_cert.parent().unwrap_or(Path::new("."));
        let path = dir.join(format!("{name}.pem"));
        write(&path, &chain_pem(&k, &c, &ca_cert)?)?;
        Ok(path)
    }
}
