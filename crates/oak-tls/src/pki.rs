//! Zero-configuration TLS: each server tier (the root, each cluster) keeps its own CA in its
//! data dir, created on first start, and serves with a certificate that CA signs. Whoever
//! joins it holds a join token that carries the hash of that CA ([`JoinToken`], K3s's
//! `K10<ca-hash>::<secret>` form), and trusts exactly the chain that ends in a certificate
//! with that hash ([`pinned_client_config`]); no CA file is copied anywhere.
//!
//! A pinned client does not check the server's name: the CA is private to one server and
//! signs nothing but that server's certificates, so the chain alone proves who answers,
//! whatever address the client used (a NAT, a port forward, a DNS name the operator never
//! listed). For an operator's own certificates the token pins the leaf itself
//! ([`crate::chain_pin`]), never a CA that may sign for others.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring::default_provider};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use sha2::Digest;
use std::path::Path;
use std::sync::Arc;

/// The prefix of a join token that pins a CA (K3s's "version 1" token prefix).
pub const TOKEN_PREFIX: &str = "K10";
/// The CA's certificate and key in a data dir.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// A CA lives 10 years; the serving certificate is made again at every start, and lives as
/// long (a long-running server must not lose its clients when a short-lived leaf expires;
/// the CA is private to this server and pinned, so no browser rule applies).
const CA_DAYS: i64 = 3650;
const LEAF_DAYS: i64 = 3650;

/// sha256 of a certificate's DER: what a join token pins.
pub type CaHash = [u8; 32];

pub fn cert_hash(der: &[u8]) -> CaHash {
    sha2::Sha256::digest(der).into()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A CA hash as 64 hex digits (as `hex` writes it, and K10 tokens carry it).
pub fn parse_hash(s: &str) -> Option<CaHash> {
    if s.len() != 64 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A join token: the secret that admits a cluster (or a worker), and, in the `K10` form, the
/// hash of the CA the server it joins must prove itself with.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_hash: Option<CaHash>,
    pub secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret: tokens must not reach logs.
        f.debug_struct("JoinToken").field("ca_hash", &self.ca_hash.map(|h| hex(&h))).finish_non_exhaustive()
    }
}

impl JoinToken {
    /// `K10<64 hex>::<secret>`, or a bare secret (which pins nothing: the client then needs a
    /// CA file, or plain HTTP behind an `--insecure-*` flag).
    pub fn parse(token: &str) -> Result<Self, String> {
        let token = token.trim();
        if let Some(rest) = token.strip_prefix(TOKEN_PREFIX)
            && let Some((hash, secret)) = rest.split_once("::")
        {
            let ca_hash = parse_hash(hash).ok_or_else(|| {
                format!(
                    "the join token's CA hash must be 64 hex digits after {TOKEN_PREFIX} (got {} characters)",
                    hash.len()
                )
            })?;
            return Self::secret_ok(secret).map(|secret| Self { ca_hash: Some(ca_hash), secret });
        }
        Self::secret_ok(token).map(|secret| Self { ca_hash: None, secret })
    }

    fn secret_ok(s: &str) -> Result<String, String> {
        if s.is_empty() || s.len() > 256 || !s.bytes().all(|c| c.is_ascii_graphic()) {
            return Err("the join token's secret must be 1-256 printable characters without spaces".into());
        }
        Ok(s.to_owned())
    }

    /// The token's text form.
    pub fn render(&self) -> String {
        match &self.ca_hash {
            Some(h) => format!("{TOKEN_PREFIX}{}::{}", hex(h), self.secret),
            None => self.secret.clone(),
        }
    }
}

/// A server tier's own certificate authority.
pub struct Authority {
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").field("hash", &hex(&self.hash())).finish_non_exhaustive()
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    // A leftover from a crash keeps its mode when opened: start afresh.
    let _ = std::fs::remove_file(&tmp);
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    o.mode(0o600);
    let mut f = o.open(&tmp).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn days(n: i64) -> time::Duration {
    time::Duration::days(n)
}

impl Authority {
    /// The CA kept in `dir` (`ca.pem`, `ca-key.pem`), created there (mode 0600) on first use.
    /// `name` goes into the CA's common name (e.g. "oak root", "oak cluster edge1").
    pub fn load_or_create(dir: &Path, name: &str) -> Result<Self, String> {
        let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
        if cert_path.exists() && key_path.exists() {
            let pem = std::fs::read_to_string(&cert_path)
                .map_err(|e| format!("cannot read the CA certificate {}: {e}", cert_path.display()))?;
            let key_pem = std::fs::read_to_string(&key_path)
                .map_err(|e| format!("cannot read the CA key {}: {e}", key_path.display()))?;
            let key = KeyPair::from_pem(&key_pem)
                .map_err(|e| format!("the CA key {} is not usable: {e}", key_path.display()))?;
            let der = CertificateDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| format!("the CA certificate {} is not PEM: {e}", cert_path.display()))?;
            let issuer = Issuer::from_ca_cert_der(&der, key)
                .map_err(|e| format!("the CA certificate {} cannot be read: {e}", cert_path.display()))?;
            return Ok(Self { ca_der: der, ca_pem: pem, issuer });
        }
        let key = KeyPair::generate().map_err(|e| format!("cannot generate a CA key: {e}"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{name} CA"));
        dn.push(DnType::OrganizationName, "oak");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - days(1);
        params.not_after = now + days(CA_DAYS);
        // Half a pair (a crash between the two writes) is made anew: nothing can have pinned
        // a CA whose certificate was never complete next to its key.
        let cert = params.self_signed(&key).map_err(|e| format!("cannot sign the CA certificate: {e}"))?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        write_private(&cert_path, cert.pem().as_bytes())?;
        Ok(Self { ca_der: cert.der().clone(), ca_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// sha256 of the CA certificate (DER): what join tokens pin.
    pub fn hash(&self) -> CaHash {
        cert_hash(&self.ca_der)
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A join token for `secret` that pins this CA.
    pub fn token(&self, secret: &str) -> String {
        JoinToken { ca_hash: Some(self.hash()), secret: secret.to_owned() }.render()
    }

    fn leaf(&self, params: CertificateParams, key: &KeyPair) -> Result<CertificateDer<'static>, String> {
        params
            .signed_by(key, &self.issuer)
            .map(|c| c.der().clone())
            .map_err(|e| format!("cannot sign a certificate: {e}"))
    }

    /// A serving certificate for `names` (DNS names or IP addresses), made now and signed by
    /// this CA, with its chain `[leaf, CA]` and key.
    pub fn serving(&self, names: &[String]) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
        let key = KeyPair::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(|e| format!("bad certificate name: {e}"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names.first().cloned().unwrap_or_else(|| "oak".into()));
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - days(1);
        params.not_after = now + days(LEAF_DAYS);
        let leaf = self.leaf(params, &key)?;
        Ok((vec![leaf, self.ca_der.clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))))
    }

    /// A server configuration with a fresh serving certificate for `names`.
    pub fn server_config(&self, names: &[String]) -> Result<Arc<ServerConfig>, String> {
        let (chain, key) = self.serving(names)?;
        crate::server_config_from(chain, key)
    }
}

/// The names a self-made serving certificate carries: loopback, the host name, the listen
/// address when it is a specific one, and whatever the operator adds (`--tls-san`).
pub fn default_names(listen: std::net::SocketAddr, extra: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            names.push(h.to_owned());
        }
    }
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    names.extend(extra.iter().cloned());
    names.sort();
    names.dedup();
    names
}

/// Trusts exactly the server whose chain holds a certificate with sha256 `ca_hash` and whose
/// leaf chains to it (or is it). The server's name is not checked (see the module's docs).
#[derive(Debug)]
struct Pinned {
    ca_hash: CaHash,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        if cert_hash(end_entity) == self.ca_hash {
            // The pinned certificate itself (a self-signed server).
            return Ok(ServerCertVerified::assertion());
        }
        let Some(anchor) = intermediates.iter().find(|c| cert_hash(c) == self.ca_hash) else {
            return Err(Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure));
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(anchor.clone().into_owned())?;
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A client configuration that trusts only a server proving itself with the CA `ca_hash`.
pub fn pinned_client_config(ca_hash: CaHash) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(default_provider());
    let cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { ca_hash, provider }))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// How a client trusts a server: the CA a join token pins, else a CA file, else nothing
/// (plain `http://` only).
pub fn client_config_for(token: &JoinToken, ca_file: Option<&Path>) -> Result<Option<Arc<ClientConfig>>, String> {
    match (token.ca_hash, ca_file) {
        (_, Some(file)) => crate::client_config_file(file).map(Some),
        (Some(h), None) => pinned_client_config(h).map(Some),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests;
