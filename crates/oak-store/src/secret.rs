//! Secrets kept next to a store: tokens generated on first start into the data dir, readable
//! by the owner only, and compared in constant time.

use std::path::Path;

/// `bytes` random bytes as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::fill(&mut b[..]);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The secret in `path`, or a new random one written there (mode 0600) when the file is
/// missing or empty.
pub fn read_or_create(path: &Path) -> std::io::Result<String> {
    if let Ok(s) = std::fs::read_to_string(path) {
        let s = s.trim().to_owned();
        if !s.is_empty() {
            return Ok(s);
        }
    }
    let s = random_hex(24);
    crate::datadir::write_private(path, s.as_bytes())?;
    Ok(s)
}

/// A join token kept in `path` in the form `render` gives its secret (e.g. a K10 token that
/// also names the server's CA): the secret of the token already there (the text after the
/// last `::`, or all of it), else a new random one; the file is rewritten, in one step and
/// mode 0600, only when its text changes. Returns the secret.
pub fn token_file(path: &Path, render: impl Fn(&str) -> String) -> std::io::Result<String> {
    let old = std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let secret = match &old {
        Some(t) => t.rsplit("::").next().unwrap_or(t).to_owned(),
        None => random_hex(24),
    };
    let text = render(&secret);
    if old.as_deref() != Some(text.as_str()) {
        crate::datadir::write_private(path, text.as_bytes())?;
    }
    Ok(secret)
}

/// sha256 of `secret`, lowercase hex: how every tier keeps a secret it only has to check
/// (join tokens, node and cluster secrets, MQTT passwords).
pub fn sha256_hex(secret: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two secrets without leaking, through timing, how much of them matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("token");
        let a = read_or_create(&p).unwrap_or_default();
        assert_eq!(a.len(), 48);
        assert_eq!(read_or_create(&p).unwrap_or_default(), a);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
            assert_eq!(mode, 0o600);
        }
        // A token file: written once in its final form, its secret kept when the form changes.
        let t = dir.path().join("join");
        let s1 = token_file(&t, |s| format!("K10aa::{s}")).unwrap_or_default();
        assert_eq!(std::fs::read_to_string(&t).unwrap_or_default(), format!("K10aa::{s1}"));
        let s2 = token_file(&t, |s| format!("K10bb::{s}")).unwrap_or_default();
        assert_eq!(s1, s2);
        assert_eq!(std::fs::read_to_string(&t).unwrap_or_default(), format!("K10bb::{s1}"));
        assert_eq!(token_file(&t, str::to_owned).unwrap_or_default(), s1, "a bare form keeps the secret too");
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
