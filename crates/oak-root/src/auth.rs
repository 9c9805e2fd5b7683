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
    #[error(transparent)]
    Busy(#[from] Busy),
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

/// A job and where its answer goes (a tokio channel for requests, a std one at start-up,
/// where no runtime may be blocked).
enum HashJob {
    Hash(String, Box<dyn FnOnce(Result<String, AuthError>) + Send>),
    Verify(String, String, Box<dyn FnOnce(bool) + Send>),
}

/// Who waits for a hash: a login (anyone on the network, so its queue is short and refuses
/// the excess) or an authenticated request (creating a user, changing a password), which goes
/// first and never waits behind a login flood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    Login,
    Authenticated,
}

/// The hasher's queue is full: come back later.
#[derive(Debug, thiserror::Error)]
#[error("too many password checks are waiting; retry in {retry_after_secs} s")]
pub struct Busy {
    pub retry_after_secs: u64,
}

#[derive(Default)]
struct Queues {
    login: std::collections::VecDeque<HashJob>,
    authenticated: std::collections::VecDeque<HashJob>,
}

/// Runs every password hash and check on one dedicated thread, with one [`HashMemory`]. That
/// bounds the CPU an attack on login can take to one core, and the memory to one buffer. The
/// queue in front of it is bounded: logins beyond [`Hasher::MAX_LOGINS_WAITING`] are refused at
/// once (429), and authenticated work has its own queue; the two take turns.
#[derive(Clone)]
pub struct Hasher {
    queues: std::sync::Arc<(parking_lot::Mutex<Queues>, parking_lot::Condvar)>,
}

impl Hasher {
    /// At ~46 checks a second, a full login queue is under a second of waiting.
    pub const MAX_LOGINS_WAITING: usize = 32;
    pub const MAX_AUTHENTICATED_WAITING: usize = 64;

    pub fn spawn() -> Result<Self, AuthError> {
        let queues: std::sync::Arc<(parking_lot::Mutex<Queues>, parking_lot::Condvar)> = Default::default();
        let q = queues.clone();
        std::thread::Builder::new()
            .name("password-hasher".into())
            .spawn(move || {
                let mut memory = HashMemory::default();
                let mut login_turn = false;
                loop {
                    let job = {
                        let (lock, cv) = &*q;
                        let mut g = lock.lock();
                        loop {
                            // Turns, when both wait: authenticated work never waits behind a
                            // login flood, nor logins behind a tenant's password changes.
                            let next = if login_turn {
                                g.login.pop_front().or_else(|| g.authenticated.pop_front())
                            } else {
                                g.authenticated.pop_front().or_else(|| g.login.pop_front())
                            };
                            if let Some(j) = next {
                                login_turn = !login_turn;
                                break j;
                            }
                            // The last handle gone: nothing more can come.
                            if std::sync::Arc::strong_count(&q) == 1 {
                                return;
                            }
                            cv.wait_for(&mut g, std::time::Duration::from_secs(1));
                        }
                    };
                    match job {
                        HashJob::Hash(pw, reply) => reply(memory.hash(&pw)),
                        HashJob::Verify(pw, phc, reply) => reply(memory.verify(&pw, &phc)),
                    }
                }
            })
            .map_err(|e| AuthError::Hash(format!("cannot start the hasher thread: {e}")))?;
        Ok(Self { queues })
    }

    fn submit(&self, job: HashJob, priority: Priority) -> Result<(), Busy> {
        let (lock, cv) = &*self.queues;
        let mut g = lock.lock();
        let (queue, max) = match priority {
            Priority::Login => (&mut g.login, Self::MAX_LOGINS_WAITING),
            Priority::Authenticated => (&mut g.authenticated, Self::MAX_AUTHENTICATED_WAITING),
        };
        if queue.len() >= max {
            return Err(Busy { retry_after_secs: 1 });
        }
        queue.push_back(job);
        cv.notify_one();
        Ok(())
    }

    /// Hashes on the hasher thread, blocking the caller (start-up only).
    pub fn hash_blocking(&self, password: &str) -> Result<String, AuthError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let reply = Box::new(move |r| {
            let _ = tx.send(r);
        });
        self.submit(HashJob::Hash(password.to_owned(), reply), Priority::Authenticated)
            .map_err(|e| AuthError::Hash(e.to_string()))?;
        rx.recv().map_err(|_| AuthError::Hash("the hasher stopped".into()))?
    }

    /// Checks on the hasher thread, blocking the caller (start-up only). False on any failure.
    pub fn verify_blocking(&self, password: &str, phc: &str) -> bool {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let reply = Box::new(move |r| {
            let _ = tx.send(r);
        });
        if self.submit(HashJob::Verify(password.to_owned(), phc.to_owned(), reply), Priority::Authenticated).is_err() {
            return false;
        }
        rx.recv().unwrap_or(false)
    }

    pub async fn hash(&self, password: String) -> Result<String, AuthError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let reply = Box::new(move |r| {
            let _ = tx.send(r);
        });
        self.submit(HashJob::Hash(password, reply), Priority::Authenticated)?;
        rx.await.map_err(|_| AuthError::Hash("the hasher stopped".into()))?
    }

    /// Checks `password` against `phc` on the hasher thread, or refuses at once when too many
    /// checks of this priority wait already.
    pub async fn verify(&self, password: String, phc: String, priority: Priority) -> Result<bool, Busy> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let reply = Box::new(move |r| {
            let _ = tx.send(r);
        });
        self.submit(HashJob::Verify(password, phc, reply), priority)?;
        Ok(rx.await.unwrap_or(false))
    }
}

/// The hash compared against when a user does not exist, so that a wrong user name costs as
/// much time as a wrong password.
pub fn dummy_hash() -> &'static str {
    "$argon2id$v=19$m=7168,t=5,p=1$c29tZXNhbHRzb21lc2FsdA$Qd3vrHqMZ0MMs8jbh7d3JsBOTlMh2F9RRVJsjv8uq0M"
}

/// Failed logins, throttled per (user name, source address): after `MAX_FAILURES` failures
/// within `WINDOW_SECS`, that pair is refused for `BLOCK_SECS`, right password or not. An
/// attacker elsewhere cannot lock the owner out, since the owner's address has its own count;
/// an address that fails for many names (`MAX_ADDRESS_FAILURES` in a window) is refused for all
/// of them. Both tables hold at most `MAX_ENTRIES`; when full, the entry that changed least
/// recently goes first, so the limiter's memory is bounded whatever a flood sends.
pub struct LoginLimiter {
    inner: parking_lot::Mutex<LimiterTables>,
}

#[derive(Default)]
struct LimiterTables {
    pairs: BoundedTable<(String, std::net::IpAddr)>,
    addresses: BoundedTable<std::net::IpAddr>,
}

/// key → (failures in the window, start of the window, blocked until), with eviction of the
/// least recently touched key once `MAX_ENTRIES` are held.
struct BoundedTable<K> {
    map: std::collections::HashMap<K, (u32, f64, f64, u64)>,
    order: std::collections::BTreeMap<u64, K>,
    clock: u64,
}

impl<K> Default for BoundedTable<K> {
    fn default() -> Self {
        Self { map: Default::default(), order: Default::default(), clock: 0 }
    }
}

impl<K: std::hash::Hash + Eq + Clone> BoundedTable<K> {
    fn blocked(&self, k: &K, now: f64) -> Option<f64> {
        self.map.get(k).and_then(|&(_, _, until, _)| (until > now).then_some(until - now))
    }

    fn fail(&mut self, k: K, now: f64, max: u32, window: f64, block: f64) {
        if !self.map.contains_key(&k) && self.map.len() >= LoginLimiter::MAX_ENTRIES {
            // The least recently failed goes first, but not a block in force while an
            // unblocked entry is near the front: a flood of new names must not lift the
            // block on the one under attack.
            let victim = self
                .order
                .iter()
                .take(64)
                .find(|(_, key)| self.blocked(key, now).is_none())
                .or_else(|| self.order.iter().next())
                .map(|(stamp, _)| *stamp);
            if let Some(old) = victim.and_then(|stamp| self.order.remove(&stamp)) {
                self.map.remove(&old);
            }
        }
        self.clock += 1;
        let e = self.map.entry(k.clone()).or_insert((0, now, 0.0, 0));
        self.order.remove(&e.3);
        e.3 = self.clock;
        self.order.insert(self.clock, k);
        if now - e.1 > window {
            (e.0, e.1) = (0, now);
        }
        e.0 += 1;
        if e.0 >= max {
            e.2 = now + block;
            (e.0, e.1) = (0, now);
        }
    }

    fn forget(&mut self, k: &K) {
        if let Some(e) = self.map.remove(k) {
            self.order.remove(&e.3);
        }
    }

    /// Takes back one failure recorded for an attempt that succeeded.
    fn undo(&mut self, k: &K) {
        if let Some(e) = self.map.get_mut(k) {
            e.0 = e.0.saturating_sub(1);
        }
    }
}

impl Default for LoginLimiter {
    fn default() -> Self {
        Self { inner: parking_lot::Mutex::new(LimiterTables::default()) }
    }
}

impl LoginLimiter {
    pub const MAX_FAILURES: u32 = 5;
    pub const WINDOW_SECS: f64 = 60.0;
    pub const BLOCK_SECS: f64 = 30.0;
    pub const MAX_ADDRESS_FAILURES: u32 = 50;
    pub const ADDRESS_BLOCK_SECS: f64 = 60.0;
    pub const MAX_ENTRIES: usize = 16_384;

    fn source(from: std::net::IpAddr) -> std::net::IpAddr {
        oak_tls::serve::throttle_source(from)
    }

    fn key(user: &str, from: std::net::IpAddr) -> (String, std::net::IpAddr) {
        (crate::registry::normalize_user_name(user), Self::source(from))
    }

    /// `Err(seconds left)` while `user` is blocked from `from`.
    pub fn check(&self, user: &str, from: std::net::IpAddr, now: f64) -> Result<(), f64> {
        let t = self.inner.lock();
        match (t.pairs.blocked(&Self::key(user, from), now), t.addresses.blocked(&Self::source(from), now)) {
            (None, None) => Ok(()),
            (a, b) => Err(a.unwrap_or(0.0).max(b.unwrap_or(0.0))),
        }
    }

    /// A password check is about to run: refused while blocked, else counted as a failure
    /// at once (under one lock), so that concurrent guesses cannot all pass the check before
    /// any is counted. [`succeeded`](Self::succeeded) takes it back.
    pub fn attempt(&self, user: &str, from: std::net::IpAddr, now: f64) -> Result<(), f64> {
        let (pair, addr) = (Self::key(user, from), Self::source(from));
        let mut t = self.inner.lock();
        let (a, b) = (t.pairs.blocked(&pair, now), t.addresses.blocked(&addr, now));
        if a.is_some() || b.is_some() {
            return Err(a.unwrap_or(0.0).max(b.unwrap_or(0.0)));
        }
        t.pairs.fail(pair, now, Self::MAX_FAILURES, Self::WINDOW_SECS, Self::BLOCK_SECS);
        t.addresses.fail(addr, now, Self::MAX_ADDRESS_FAILURES, Self::WINDOW_SECS, Self::ADDRESS_BLOCK_SECS);
        Ok(())
    }

    pub fn failed(&self, user: &str, from: std::net::IpAddr, now: f64) {
        let mut t = self.inner.lock();
        t.pairs.fail(Self::key(user, from), now, Self::MAX_FAILURES, Self::WINDOW_SECS, Self::BLOCK_SECS);
        let from = Self::source(from);
        t.addresses.fail(from, now, Self::MAX_ADDRESS_FAILURES, Self::WINDOW_SECS, Self::ADDRESS_BLOCK_SECS);
    }

    /// The attempt was right: the name is in good standing from there, and the address loses
    /// the failure [`attempt`](Self::attempt) counted.
    pub fn succeeded(&self, user: &str, from: std::net::IpAddr) {
        let mut t = self.inner.lock();
        t.pairs.forget(&Self::key(user, from));
        t.addresses.undo(&Self::source(from));
    }

    /// Entries held (both tables), for tests.
    pub fn len(&self) -> usize {
        let t = self.inner.lock();
        t.pairs.map.len() + t.addresses.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_limiter_blocks_a_name_from_an_address_only() {
        let l = LoginLimiter::default();
        let (a, b): (std::net::IpAddr, std::net::IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        for i in 0..4 {
            l.failed("bob", a, f64::from(i));
        }
        assert!(l.check("bob", a, 4.0).is_ok());
        l.failed("BOB", a, 4.0);
        assert_eq!(l.check("bob", a, 5.0), Err(29.0), "names count without regard to case");
        assert!(l.check("bob", b, 5.0).is_ok(), "the owner elsewhere is not locked out");
        assert!(l.check("alice", a, 5.0).is_ok(), "other users are not affected");
        assert!(l.check("bob", a, 34.5).is_ok(), "the block ends");
        // Failures spread over more than the window do not add up.
        for i in 0..10 {
            l.failed("carol", a, 100.0 + f64::from(i) * 61.0);
        }
        assert!(l.check("carol", a, 800.0).is_ok());
        l.failed("dave", b, 0.0);
        l.succeeded("dave", b);
        assert!(l.check("dave", b, 0.0).is_ok());
    }

    #[test]
    fn an_address_spraying_names_is_blocked_for_all_of_them() {
        let l = LoginLimiter::default();
        let a: std::net::IpAddr = [10, 0, 0, 1].into();
        for i in 0..LoginLimiter::MAX_ADDRESS_FAILURES {
            l.failed(&format!("user{i}"), a, 1.0);
        }
        assert!(l.check("someone-else", a, 2.0).is_err());
        assert!(l.check("someone-else", [10, 0, 0, 9].into(), 2.0).is_ok());
    }

    #[test]
    fn the_limiter_holds_a_bounded_number_of_entries() {
        let l = LoginLimiter::default();
        for i in 0..(LoginLimiter::MAX_ENTRIES as u32 + 5_000) {
            let ip = std::net::IpAddr::from(i.to_be_bytes());
            l.failed(&format!("u{i}"), ip, 0.0);
        }
        assert!(l.len() <= 2 * LoginLimiter::MAX_ENTRIES, "{}", l.len());
        // The newest are kept.
        let last = LoginLimiter::MAX_ENTRIES as u32 + 4_999;
        for _ in 0..4 {
            l.failed(&format!("u{last}"), std::net::IpAddr::from(last.to_be_bytes()), 0.0);
        }
        assert!(l.check(&format!("u{last}"), std::net::IpAddr::from(last.to_be_bytes()), 1.0).is_err());
    }

    #[tokio::test]
    async fn a_login_flood_is_refused_at_once_and_authenticated_work_goes_first() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let h = Hasher::spawn().unwrap_or_else(|e| panic!("{e}"));
        let phc = h.hash("pw".into()).await.unwrap_or_default();
        let done = std::sync::Arc::new(AtomicUsize::new(0));
        let mut waiting = Vec::new();
        for _ in 0..(Hasher::MAX_LOGINS_WAITING + 40) {
            let (h, phc, done) = (h.clone(), phc.clone(), done.clone());
            waiting.push(tokio::spawn(async move {
                let r = h.verify("x".into(), phc, Priority::Login).await;
                if r.is_ok() {
                    done.fetch_add(1, Ordering::SeqCst);
                }
                r
            }));
        }
        tokio::task::yield_now().await;
        // Authenticated work is not refused while logins queue, and overtakes them: the queues
        // take turns, so at most the check under way and one login's turn come before it.
        assert_eq!(h.verify("pw".into(), phc.clone(), Priority::Authenticated).await.ok(), Some(true));
        let before = done.load(Ordering::SeqCst);
        assert!(before <= 3, "{before} logins were checked first");
        let mut busy = 0;
        for w in waiting {
            if w.await.ok().is_some_and(|r| r.is_err()) {
                busy += 1;
            }
        }
        // All but the queue (and the few the thread took meanwhile) are refused at once.
        assert!(busy >= 30, "only {busy} refused");
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
