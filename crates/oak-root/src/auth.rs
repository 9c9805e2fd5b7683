//! Passwords (argon2id) and tokens (HS256 JWTs signed with a per-deployment secret that is
//! generated on first start and kept in the store).
//!
//! Access tokens are short-lived; refresh tokens last longer and can only be exchanged for a
//! new access token. Both carry the user's credential generation, so changing a password
//! revokes every token issued before.

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Argon2, Block};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use oak_api::{OrganizationId, UserId};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid signing secret: {0}")]
    Secret(String),
    #[error("cannot hash password: {0}")]
    Hash(String),
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("a {0} token cannot be used here")]
    WrongKind(&'static str),
}

/// What a token is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    Access,
    Refresh,
}

impl TokenKind {
    fn name(self) -> &'static str {
        match self {
            TokenKind::Access => "access",
            TokenKind::Refresh => "refresh",
        }
    }
}

/// Claims of our tokens. `user`, `roles` and `organization` follow the original's claims;
/// roles are informational, the server re-reads them from the store on every request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: UserId,
    /// User name.
    pub user: String,
    pub roles: Vec<String>,
    pub organization: OrganizationId,
    pub kind: TokenKind,
    /// Credential generation of the user when the token was issued.
    pub generation: u64,
    pub iat: u64,
    pub exp: u64,
}

/// Whom a token is for.
#[derive(Clone, Debug)]
pub struct Subject {
    pub user: UserId,
    pub name: String,
    pub roles: Vec<String>,
    pub org: OrganizationId,
    pub generation: u64,
}

/// Issues and verifies tokens.
pub struct TokenService {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    access_ttl_secs: u64,
    refresh_ttl_secs: u64,
}

impl TokenService {
    pub fn new(secret: &[u8], access_ttl_secs: u64, refresh_ttl_secs: u64) -> Result<Self, AuthError> {
        let encoding = EncodingKey::from_secret(secret).map_err(|e| AuthError::Secret(e.to_string()))?;
        let decoding = DecodingKey::from_secret(secret).map_err(|e| AuthError::Secret(e.to_string()))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Self { encoding, decoding, validation, access_ttl_secs, refresh_ttl_secs })
    }

    /// Signs a token of `kind` for `subject`, valid from `now` (Unix seconds).
    pub fn issue(&self, kind: TokenKind, subject: &Subject, now: u64) -> Result<String, AuthError> {
        let ttl = match kind {
            TokenKind::Access => self.access_ttl_secs,
            TokenKind::Refresh => self.refresh_ttl_secs,
        };
        let claims = Claims {
            sub: subject.user.clone(),
            user: subject.name.clone(),
            roles: subject.roles.clone(),
            organization: subject.org.clone(),
            kind,
            generation: subject.generation,
            iat: now,
            exp: now + ttl,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::InvalidToken(e.to_string()))
    }

    /// Checks signature, expiry and kind.
    pub fn verify(&self, token: &str, kind: TokenKind) -> Result<Claims, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| AuthError::InvalidToken(e.to_string()))?;
        if data.claims.kind != kind {
            return Err(AuthError::WrongKind(data.claims.kind.name()));
        }
        Ok(data.claims)
    }
}

/// Argon2id with 7 MiB, 5 passes, 1 lane: one of OWASP's equivalent recommended settings
/// (like 19 MiB with 2 passes), chosen for its smaller memory, which matters on edge machines.
fn argon2() -> Argon2<'static> {
    match argon2::Params::new(7 * 1024, 5, 1, None) {
        Ok(p) => Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p),
        Err(_) => Argon2::default(),
    }
}

/// The largest memory cost (KiB) a stored hash may ask for. Hashes are ours, but a store
/// edited by hand must not make a login allocate gigabytes.
const MAX_M_COST_KIB: u32 = 256 * 1024;

/// The work memory of argon2, kept and reused across hashes. Allocating and freeing it per
/// hash (what `argon2`'s own `hash_password` does) leaves freed buffers in glibc's arenas: a
/// root grew by 21 MiB after three logins and kept it. One buffer, allocated at the first
/// hash, costs the same 7 MiB once.
#[derive(Default)]
pub struct HashMemory(Vec<Block>);

impl HashMemory {
    fn blocks(&mut self, n: usize) -> &mut [Block] {
        if self.0.len() < n {
            self.0.resize(n, Block::default());
        }
        &mut self.0[..n]
    }

    /// Hashes a password to an argon2id PHC string with a random salt. CPU- and memory-heavy:
    /// call it through a [`Hasher`].
    pub fn hash(&mut self, password: &str) -> Result<String, AuthError> {
        let err = |e: &dyn std::fmt::Display| AuthError::Hash(e.to_string());
        let argon = argon2();
        let salt = Salt::generate();
        let mut out = [0u8; 32];
        let blocks = self.blocks(argon.params().block_count());
        argon.hash_password_into_with_memory(password.as_bytes(), &salt, &mut out, blocks).map_err(|e| err(&e))?;
        let phc = PasswordHash {
            algorithm: argon2::Algorithm::Argon2id.ident(),
            version: Some(argon2::Version::V0x13.into()),
            params: ParamsString::try_from(argon.params()).map_err(|e| err(&e))?,
            salt: Some(salt),
            hash: Some(Output::new(&out).map_err(|e| err(&e))?),
        };
        Ok(phc.to_string())
    }

    /// True when `password` matches the PHC string, with the algorithm and parameters the
    /// string names (compared in constant time). A malformed stored hash never matches.
    pub fn verify(&mut self, password: &str, phc: &str) -> bool {
        self.try_verify(password, phc).unwrap_or(false)
    }

    fn try_verify(&mut self, password: &str, phc: &str) -> Option<bool> {
        let hash = PasswordHash::new(phc).ok()?;
        let algorithm = argon2::Algorithm::try_from(hash.algorithm.as_str()).ok()?;
        let version = match hash.version {
            Some(v) => argon2::Version::try_from(v).ok()?,
            None => argon2::Version::default(),
        };
        let params = argon2::Params::try_from(&hash).ok()?;
        if params.m_cost() > MAX_M_COST_KIB {
            return None;
        }
        let (salt, expected) = (hash.salt.as_ref()?, hash.hash.as_ref()?);
        let argon = Argon2::new(algorithm, version, params);
        let mut out = vec![0u8; expected.len()];
        let blocks = self.blocks(argon.params().block_count());
        argon.hash_password_into_with_memory(password.as_bytes(), salt, &mut out, blocks).ok()?;
        // `Output`'s equality is constant-time.
        Some(Output::new(&out).ok()? == *expected)
    }
}

enum HashJob {
    Hash(String, std::sync::mpsc::SyncSender<Result<String, AuthError>>),
    Verify(String, String, std::sync::mpsc::SyncSender<bool>),
}

/// Runs every password hash and check on one dedicated thread, with one [`HashMemory`]. That
/// bounds the CPU an attack on login can take to one core, and the memory to one buffer.
#[derive(Clone)]
pub struct Hasher {
    tx: std::sync::mpsc::SyncSender<HashJob>,
}

impl Hasher {
    pub fn spawn() -> Result<Self, AuthError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<HashJob>(64);
        std::thread::Builder::new()
            .name("password-hasher".into())
            .spawn(move || {
                let mut memory = HashMemory::default();
                for job in rx {
                    match job {
                        HashJob::Hash(pw, reply) => {
                            let _ = reply.send(memory.hash(&pw));
                        }
                        HashJob::Verify(pw, phc, reply) => {
                            let _ = reply.send(memory.verify(&pw, &phc));
                        }
                    }
                }
            })
            .map_err(|e| AuthError::Hash(format!("cannot start the hasher thread: {e}")))?;
        Ok(Self { tx })
    }

    /// Hashes on the hasher thread, blocking the caller (use from blocking contexts).
    pub fn hash_blocking(&self, password: &str) -> Result<String, AuthError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.tx
            .send(HashJob::Hash(password.to_owned(), tx))
            .map_err(|_| AuthError::Hash("the hasher stopped".into()))?;
        rx.recv().map_err(|_| AuthError::Hash("the hasher stopped".into()))?
    }

    /// Checks on the hasher thread, blocking the caller. False on any failure.
    pub fn verify_blocking(&self, password: &str, phc: &str) -> bool {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if self.tx.send(HashJob::Verify(password.to_owned(), phc.to_owned(), tx)).is_err() {
            return false;
        }
        rx.recv().unwrap_or(false)
    }

    pub async fn hash(&self, password: String) -> Result<String, AuthError> {
        let h = self.clone();
        tokio::task::spawn_blocking(move || h.hash_blocking(&password))
            .await
            .map_err(|e| AuthError::Hash(e.to_string()))?
    }

    pub async fn verify(&self, password: String, phc: String) -> bool {
        let h = self.clone();
        tokio::task::spawn_blocking(move || h.verify_blocking(&password, &phc)).await.unwrap_or(false)
    }
}

/// The hash compared against when a user does not exist, so that a wrong user name costs as
/// much time as a wrong password.
pub fn dummy_hash() -> &'static str {
    "$argon2id$v=19$m=7168,t=5,p=1$c29tZXNhbHRzb21lc2FsdA$Qd3vrHqMZ0MMs8jbh7d3JsBOTlMh2F9RRVJsjv8uq0M"
}

/// Throttles password guessing: after `MAX_FAILURES` failed logins for a user name within
/// `WINDOW_SECS`, that name is refused for `BLOCK_SECS`, right password or not.
#[derive(Default)]
pub struct LoginLimiter {
    /// user name → (failures, first failure of the window, blocked until)
    state: parking_lot::Mutex<std::collections::HashMap<String, (u32, f64, f64)>>,
}

impl LoginLimiter {
    pub const MAX_FAILURES: u32 = 5;
    pub const WINDOW_SECS: f64 = 60.0;
    pub const BLOCK_SECS: f64 = 30.0;

    /// `Err(seconds left)` while `user` is blocked.
    pub fn check(&self, user: &str, now: f64) -> Result<(), f64> {
        match self.state.lock().get(user) {
            Some(&(_, _, until)) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    pub fn failed(&self, user: &str, now: f64) {
        let mut st = self.state.lock();
        if st.len() > 100_000 {
            st.retain(|_, (_, start, until)| now - *start < Self::WINDOW_SECS || *until > now);
        }
        let e = st.entry(user.to_owned()).or_insert((0, now, 0.0));
        if now - e.1 > Self::WINDOW_SECS {
            *e = (0, now, 0.0);
        }
        e.0 += 1;
        if e.0 >= Self::MAX_FAILURES {
            e.2 = now + Self::BLOCK_SECS;
            e.0 = 0;
            e.1 = now;
        }
    }

    pub fn succeeded(&self, user: &str) {
        self.state.lock().remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_limiter_blocks_after_repeated_failures() {
        let l = LoginLimiter::default();
        for i in 0..4 {
            l.failed("bob", f64::from(i));
        }
        assert!(l.check("bob", 4.0).is_ok());
        l.failed("bob", 4.0);
        assert_eq!(l.check("bob", 5.0), Err(29.0));
        assert!(l.check("alice", 5.0).is_ok(), "other users are not affected");
        assert!(l.check("bob", 34.5).is_ok(), "the block ends");
        // Failures spread over more than the window do not add up.
        for i in 0..10 {
            l.failed("carol", 100.0 + f64::from(i) * 61.0);
        }
        assert!(l.check("carol", 800.0).is_ok());
        l.failed("dave", 0.0);
        l.succeeded("dave");
        assert!(l.state.lock().get("dave").is_none());
    }

    #[test]
    fn passwords_verify_and_differ_by_salt() {
        let mut m = HashMemory::default();
        let a = m.hash("s3cret").unwrap_or_default();
        let b = m.hash("s3cret").unwrap_or_default();
        assert_ne!(a, b);
        assert!(a.starts_with("$argon2id$v=19$m=7168,t=5,p=1$"), "{a}");
        assert!(m.verify("s3cret", &a));
        assert!(!m.verify("S3cret", &a));
        assert!(!m.verify("s3cret", "not a hash"));
        assert!(!m.verify("x", dummy_hash()));
        // A hash asking for absurd memory is refused before allocating it.
        assert!(!m.verify("s3cret", &a.replace("m=7168", "m=4000000")));
    }

    /// Our reused-memory hashing is argon2's: each side verifies the other's hashes, whatever
    /// parameters the hash names and whatever an earlier hash left in the memory.
    #[test]
    fn reused_memory_agrees_with_the_argon2_crate() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let mut m = HashMemory::default();
        let ours = m.hash("pw one").unwrap_or_default();
        assert!(argon2().verify_password(b"pw one", ours.as_str()).is_ok());
        let small = argon2::Params::new(1024, 2, 1, None).map(Argon2::from).expect("params");
        let theirs = [
            argon2().hash_password(b"pw two").map(|h| h.to_string()).unwrap_or_default(),
            small.hash_password(b"pw two").map(|h| h.to_string()).unwrap_or_default(),
        ];
        for h in &theirs {
            assert!(m.verify("pw two", h), "{h}");
            assert!(!m.verify("pw twO", h), "{h}");
        }
        assert!(m.verify("pw one", &ours), "after a smaller hash in the same memory");
    }

    #[test]
    fn tokens_check_kind_expiry_and_signature() {
        let t = TokenService::new(b"0123456789abcdef0123456789abcdef", 600, 3600).unwrap_or_else(|e| panic!("{e}"));
        let uid = UserId::from("u1");
        let sub = Subject {
            user: uid.clone(),
            name: "alice".into(),
            roles: vec![],
            org: OrganizationId::from("o1"),
            generation: 3,
        };
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        let access = t.issue(TokenKind::Access, &sub, now).unwrap_or_default();
        let refresh = t.issue(TokenKind::Refresh, &sub, now).unwrap_or_default();
        let c = t.verify(&access, TokenKind::Access).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.sub, c.generation), (uid.clone(), 3));
        assert!(matches!(t.verify(&access, TokenKind::Refresh), Err(AuthError::WrongKind("access"))));
        assert!(matches!(t.verify(&refresh, TokenKind::Access), Err(AuthError::WrongKind("refresh"))));
        let old = t.issue(TokenKind::Access, &sub, now - 700).unwrap_or_default();
        assert!(t.verify(&old, TokenKind::Access).is_err(), "expired");
        let other = TokenService::new(b"another secret of thirty-two b!!", 600, 3600).unwrap_or_else(|e| panic!("{e}"));
        assert!(other.verify(&access, TokenKind::Access).is_err(), "foreign signature");
        let mut tampered = access.clone();
        tampered.push('x');
        assert!(t.verify(&tampered, TokenKind::Access).is_err());
    }
}
