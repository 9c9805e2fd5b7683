#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn tokens_parse_and_render() {
    let t = JoinToken::parse(&format!("K10{}::s3cret", "ab".repeat(32))).unwrap();
    assert_eq!(t.ca_hash, Some([0xab; 32]));
    assert_eq!(t.secret, "s3cret");
    assert_eq!(JoinToken::parse(&t.render()).unwrap(), t);
    // A bare secret pins nothing.
    assert_eq!(JoinToken::parse("plain").unwrap(), JoinToken { ca_hash: None, secret: "plain".into() });
    // A K10 token whose hash is cut short, or not hex, is refused with the reason.
    let e = JoinToken::parse(&format!("K10{}::s", "ab".repeat(31))).unwrap_err();
    assert!(e.contains("64 hex digits"), "{e}");
    assert!(JoinToken::parse(&format!("K10{}::s", "zz".repeat(32))).is_err());
    assert!(JoinToken::parse(&format!("K10{}::", "ab".repeat(32))).is_err());
    assert!(JoinToken::parse("").is_err());
    assert!(JoinToken::parse("a b").is_err());
    // Debug never shows the secret.
    assert!(!format!("{t:?}").contains("s3cret"));
}

#[test]
fn the_ca_is_made_once_and_kept_private() {
    let dir = tempfile::tempdir().unwrap();
    let a = Authority::load_or_create(dir.path(), "oak test").unwrap();
    let b = Authority::load_or_create(dir.path(), "oak test").unwrap();
    assert_eq!(a.hash(), b.hash());
    assert!(a.token("x").starts_with("K10"));
    #[cfg(unix)]
    for f in [CA_CERT_FILE, CA_KEY_FILE] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    // A broken key is named, never silently replaced (the tokens pinning it would break).
    std::fs::write(dir.path().join(CA_KEY_FILE), "junk").unwrap();
    let e = Authority::load_or_create(dir.path(), "oak test").unwrap_err();
    assert!(e.contains(CA_KEY_FILE), "{e}");
}

/// Serves one TLS connection with `server` and says what a client with `client` got.
async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>, name: &str) -> Result<String, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        if let Ok(mut s) = tokio_rustls::TlsAcceptor::from(server).accept(tcp).await {
            let _ = s.write_all(b"hello").await;
            let _ = s.shutdown().await;
        }
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut s = tokio_rustls::TlsConnector::from(client).connect(name, tcp).await.map_err(|e| e.to_string())?;
    let mut got = String::new();
    s.read_to_string(&mut got).await.map_err(|e| e.to_string())?;
    Ok(got)
}

#[tokio::test]
async fn a_pinned_client_trusts_its_server_and_nobody_else() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ours = Authority::load_or_create(d1.path(), "ours").unwrap();
    let theirs = Authority::load_or_create(d2.path(), "theirs").unwrap();
    let names = vec!["localhost".to_owned()];
    let pinned = pinned_client_config(ours.hash()).unwrap();
    // The right server, under any name the client used.
    assert_eq!(handshake(ours.server_config(&names).unwrap(), pinned.clone(), "localhost").await.unwrap(), "hello");
    assert_eq!(handshake(ours.server_config(&names).unwrap(), pinned.clone(), "10.9.8.7").await.unwrap(), "hello");
    // A man in the middle with a CA of its own is refused.
    let e = handshake(theirs.server_config(&names).unwrap(), pinned.clone(), "localhost").await.unwrap_err();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    // So is one that sends our CA certificate along with a leaf it signed itself.
    let (mut chain, key) = theirs.serving(&names).unwrap();
    chain.push(ours.ca_der.clone());
    let forged = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    assert!(handshake(Arc::new(forged), pinned, "localhost").await.is_err());
    // A wrong hash in a token: refused.
    let wrong = pinned_client_config([7; 32]).unwrap();
    assert!(handshake(ours.server_config(&names).unwrap(), wrong, "localhost").await.is_err());
}
