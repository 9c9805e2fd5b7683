//! TLS configuration from PEM files, shared by the root (server), the cluster's link to the
//! root and the `oak` client. rustls with the ring provider; TLS 1.2 and 1.3; no system
//! roots: a client trusts exactly the CA it is given (the deployment's own CA, or the root's
//! self-signed certificate).
//!
//! [`serve`] is the HTTP servers' accept loop (the root's API, the cluster's worker
//! registration), plain or over TLS, with the timeouts and the connection bound that keep a
//! crowd of clients from holding the process's file descriptors.

mod handshake;
pub mod pki;
pub mod serve;

use rustls::crypto::ring::default_provider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

pub use rustls::{ClientConfig, ServerConfig};

/// An HTTP client builder. reqwest is built without a crypto provider of its own (its
/// default would be aws-lc, a C++ build): ring is made the process's provider first, which
/// every client built without a TLS configuration of its own needs. Build every HTTP client
/// through here.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    let _ = default_provider().install_default();
    reqwest::Client::builder()
}

/// [`http_client_builder`] that trusts what `tls` trusts (a CA file's [`client_config`], or a
/// pinned CA's [`pki::pinned_client_config`]) and nothing else.
pub fn http_client_trusting(tls: &ClientConfig) -> reqwest::ClientBuilder {
    http_client_builder().use_preconfigured_tls(tls.clone())
}

/// [`http_client_builder`] with the defaults.
pub fn http_client() -> reqwest::Client {
    // Building with defaults fails only without a usable TLS backend, which ring provides.
    http_client_builder().build().unwrap_or_default()
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

fn certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the {what} is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("the {what} holds no certificate"));
    }
    Ok(certs)
}

/// A server configuration from a certificate chain and its private key (PEM files).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain = certs(&read(cert, "certificate")?, "certificate")?;
    let key = PrivateKeyDer::from_pem_slice(&read(key, "private key")?)
        .map_err(|e| format!("the private key {} is not a PEM private key: {e}", key.display()))?;
    server_config_from(chain, key)
}

/// A server configuration serving `chain` with `key` (ring, TLS 1.2 and 1.3, no client auth).
pub fn server_config_from(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, String> {
    let cfg = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the certificate and key do not make a usable pair: {e}"))?;
    Ok(Arc::new(cfg))
}

/// A client configuration that trusts the CA certificates in `ca_pem` and nothing else.
pub fn client_config(ca_pem: &[u8]) -> Result<Arc<ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca_pem, "CA file")? {
        roots.add(c).map_err(|e| format!("the CA file holds an unusable certificate: {e}"))?;
    }
    let cfg = ClientConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// What a join token pins for a server that serves `chain_pem` (an operator's certificate
/// chain): the leaf itself. Never a CA of the chain: an operator's CA may be a public one,
/// and a pinned client does not check names, so any certificate that CA signs would pass.
/// (A renewed certificate makes new tokens.)
pub fn chain_pin(chain_pem: &[u8]) -> Result<Option<pki::CaHash>, String> {
    let chain = certs(chain_pem, "certificate")?;
    Ok(chain.first().map(|c| pki::cert_hash(c)))
}

/// [`client_config`] from a file.
pub fn client_config_file(ca: &Path) -> Result<Arc<ClientConfig>, String> {
    client_config(&read(ca, "CA file")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_is_named() {
        let e = client_config(b"not pem").err().unwrap_or_default();
        assert!(e.contains("CA file"), "{e}");
        let e = server_config(Path::new("/nonexistent/cert.pem"), Path::new("/nonexistent/key.pem"))
            .err()
            .unwrap_or_default();
        assert!(e.contains("/nonexistent/cert.pem"), "{e}");
    }
}
