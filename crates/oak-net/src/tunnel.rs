//! The encrypted and authenticated worker-to-worker tunnel: WireGuard, as implemented by
//! `boringtun`'s `noise` module (the library only: no device, no FFI).
//!
//! Why WireGuard rather than a protocol of our own: it is established and formally analysed
//! (Noise IKpsk2 handshake, X25519, ChaCha20-Poly1305, BLAKE2s), and it brings what a home-made
//! tunnel tends to miss: a sliding replay window per session, rekeying every 2 minutes and
//! keys forgotten after 3, handshake retries, cookies against handshake floods, and a wire
//! format other implementations (the kernel's `wg`) understand. Keys are X25519 key pairs in
//! the form `wg` prints; a worker's public key travels with its registration and with every
//! table that names it (`TableInstance::host_key`).
//!
//! One [`Tunnel`] per worker holds its static key and one `boringtun::noise::Tunn` per peer
//! (peer = public key; endpoint = the underlay `SocketAddrV4` other workers send to).
//!
//! - **Who is a peer.** Keys come from the tables ([`Tunnel::set_peers`]: host → key) and from
//!   [`Tunnel::trust`]. A handshake from any other key is never answered blindly: it is kept
//!   (at most [`PENDING_MAX`] of them, for [`PENDING_AGE`]) and the `unknown_peer` callback hears
//!   of the key once, so the worker can ask its cluster; once trusted, the kept handshake is
//!   answered at once, so the first connection does not wait for the initiator's 5 s retry.
//!   A peer neither in the current tables nor active for [`IDLE`] is forgotten.
//! - **Revocation.** [`Tunnel::revoke`] drops the peer's sessions at once; its key is then
//!   ignored (in tables, and its handshakes are dropped without asking) until it is trusted again.
//! - **Data path.** Egress: [`Tunnel::seal`] encrypts a packet straight into the caller's send
//!   buffer (one data message per datagram; a TCP super-packet's segments are sealed one after
//!   the other into one buffer and sent with one UDP GSO call). Messages are not padded (neither
//!   does boringtun pad; padding is optional, the receiver truncates to the IP length): full
//!   segments then have equal sizes on the wire, as GSO requires, and decrypt back into
//!   equal-size slots that [`crate::offload::coalesce`] glues without copying. Ingress:
//!   [`Tunnel::open`] decrypts the datagrams of one GRO read into those slots and answers
//!   handshakes. Everything that fails (not WireGuard, bad MAC or tag, replayed, unknown session,
//!   untrusted or revoked key) is dropped and counted in [`TunnelStats`] by [`Reject`] reason.
//! - **Roaming and keepalives.** An authenticated message from a new source address moves the
//!   peer's endpoint there (WireGuard semantics, for NAT); every session sends a persistent
//!   keepalive every [`KEEPALIVE_SECS`] so NAT mappings stay open.
//! - **Timers.** [`Tunnel::tick`], every [`TICK`], runs boringtun's timers (handshake retries,
//!   keepalives, rekeys, expiry) and sends what they produce.
//!
//! No lock is held across a system call: what is to be sent is written into the caller's
//! buffer under the peer's lock and sent after. The per-packet path allocates nothing;
//! boringtun copies the packets it queues while a handshake is in progress.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Bytes a data message adds to a packet: type, receiver index and counter (16), tag (16).
pub const OVERHEAD: usize = 32;
/// The largest packet [`Tunnel::seal`] takes (anything that passes the TUN's MTU does).
pub const MAX_SEALED: usize = 2048;
/// Room every buffer that receives tunnel output must have: a sealed packet or a handshake.
pub const MIN_OUT: usize = MAX_SEALED + OVERHEAD;
/// Persistent keepalive of every session, in seconds: keeps NAT mappings open.
pub const KEEPALIVE_SECS: u16 = 25;
/// How often [`Tunnel::tick`] should run.
pub const TICK: Duration = Duration::from_millis(100);
/// Handshakes from unknown keys kept until the worker decides, and for how long.
pub const PENDING_MAX: usize = 64;
pub const PENDING_AGE: Duration = Duration::from_secs(5);
/// A peer neither in the tables nor sending or receiving data this long is forgotten
/// (WireGuard's REJECT_AFTER_TIME: its session keys are useless by then).
pub const IDLE: Duration = Duration::from_secs(180);
/// Handshake messages per second this worker verifies before it asks for cookies.
const HANDSHAKE_RATE: u64 = 100;
const HANDSHAKE_INIT_LEN: usize = 148;
const DATA: u8 = 4;

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("bad tunnel public key {0:?}: expected 32 bytes in standard base64 (44 characters, as `wg` prints)")]
    BadPublicKey(String),
    #[error("bad tunnel secret key: expected 32 bytes in standard base64 (44 characters, as `wg genkey` prints)")]
    BadSecretKey,
    #[error("cannot read random bytes for a tunnel key: {0}")]
    Random(String),
}

fn decode32(s: &str) -> Option<[u8; 32]> {
    if !oak_api::node::valid_tunnel_key(s) {
        return None;
    }
    STANDARD.decode(s).ok()?.try_into().ok()
}

/// A worker's tunnel public key (X25519).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// From the form `wg pubkey` prints (what [`oak_api::node::valid_tunnel_key`] accepts).
    pub fn from_base64(s: &str) -> Result<Self, TunnelError> {
        decode32(s).map(Self).ok_or_else(|| TunnelError::BadPublicKey(s.to_owned()))
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl std::str::FromStr for PublicKey {
    type Err = TunnelError;
    fn from_str(s: &str) -> Result<Self, TunnelError> {
        Self::from_base64(s)
    }
}

/// A worker's static tunnel key pair. The secret is stored as its 32 bytes
/// ([`to_bytes`](Self::to_bytes)) or in `wg genkey`'s base64 form; `Debug` shows only the
/// public half. The secret is wiped from memory when the value is dropped (x25519-dalek).
#[derive(Clone)]
pub struct TunnelKey {
    secret: x25519::StaticSecret,
    public: PublicKey,
}

impl TunnelKey {
    /// A new key from the operating system's random source, clamped as `wg genkey` does.
    pub fn generate() -> Result<Self, TunnelError> {
        use rand::TryRngCore;
        let mut b = [0u8; 32];
        rand::rngs::OsRng.try_fill_bytes(&mut b).map_err(|e| TunnelError::Random(e.to_string()))?;
        b[0] &= 248;
        b[31] = (b[31] & 127) | 64;
        Ok(Self::from_bytes(b))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let secret = x25519::StaticSecret::from(bytes);
        let public = PublicKey(x25519::PublicKey::from(&secret).to_bytes());
        Self { secret, public }
    }

    /// The secret's 32 bytes, to store (mode 0600).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.secret.to_bytes()
    }

    pub fn from_base64(s: &str) -> Result<Self, TunnelError> {
        decode32(s).map(Self::from_bytes).ok_or(TunnelError::BadSecretKey)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.secret.to_bytes())
    }

    pub fn public_key(&self) -> PublicKey {
        self.public
    }
}

impl std::fmt::Debug for TunnelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelKey").field("public", &self.public).finish_non_exhaustive()
    }
}

/// Why a tunnel datagram was dropped (or, for [`NoKey`](Self::NoKey), a packet not sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Not a WireGuard message: garbage, or a plaintext packet while encryption is on.
    NotWireGuard,
    /// A WireGuard message while encryption is off.
    Encrypted,
    /// A MAC, tag or handshake that does not verify: tampered, or from a key that does not
    /// match the session.
    BadAuth,
    /// A data message whose counter was seen already or fell out of the window, or a
    /// handshake older than the peer's last one.
    Replay,
    /// A message for a session this worker does not hold (unknown index, expired, revoked).
    UnknownSession,
    /// A handshake from a key neither in the tables nor trusted: kept while the worker asks.
    Untrusted,
    /// A handshake from a revoked key.
    Revoked,
    /// A handshake answered with a cookie because too many arrived.
    RateLimited,
    /// Egress: no key is known for the destination worker.
    NoKey,
}

impl Reject {
    pub const ALL: [Reject; 9] = [
        Reject::NotWireGuard,
        Reject::Encrypted,
        Reject::BadAuth,
        Reject::Replay,
        Reject::UnknownSession,
        Reject::Untrusted,
        Reject::Revoked,
        Reject::RateLimited,
        Reject::NoKey,
    ];

    /// A stable name, for reports and logs.
    pub fn name(self) -> &'static str {
        match self {
            Reject::NotWireGuard => "not_wireguard",
            Reject::Encrypted => "encrypted",
            Reject::BadAuth => "bad_auth",
            Reject::Replay => "replay",
            Reject::UnknownSession => "unknown_session",
            Reject::Untrusted => "untrusted",
            Reject::Revoked => "revoked",
            Reject::RateLimited => "rate_limited",
            Reject::NoKey => "no_key",
        }
    }

    fn of(e: &WireGuardError) -> Self {
        use WireGuardError as E;
        match e {
            E::InvalidMac | E::InvalidAeadTag | E::WrongKey | E::UnexpectedPacket => Reject::BadAuth,
            E::DuplicateCounter | E::InvalidCounter | E::InvalidTai64nTimestamp | E::WrongTai64nTimestamp => {
                Reject::Replay
            }
            E::WrongIndex | E::NoCurrentSession | E::ConnectionExpired => Reject::UnknownSession,
            E::UnderLoad => Reject::RateLimited,
            _ => Reject::NotWireGuard,
        }
    }
}

/// The tunnel's counters (part of [`crate::proxy::Stats`]).
#[derive(Default, Debug)]
pub struct TunnelStats {
    rejected: [AtomicU64; Reject::ALL.len()],
    /// Handshakes answered or completed.
    pub handshakes: AtomicU64,
    /// Unknown keys reported to the worker.
    pub unknown_peers: AtomicU64,
}

impl TunnelStats {
    pub fn count(&self, r: Reject) {
        self.rejected[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self, r: Reject) -> u64 {
        self.rejected[r as usize].load(Ordering::Relaxed)
    }

    pub fn rejected_total(&self) -> u64 {
        Reject::ALL.iter().map(|r| self.rejected(*r)).sum()
    }
}

/// One peer as reports show it.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerStatus {
    pub key: String,
    /// Where its datagrams go (its last authenticated source address).
    pub endpoint: SocketAddrV4,
    /// Age of the current session; `None` before the first handshake or after expiry.
    pub last_handshake: Option<Duration>,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    /// Named by the current tables (else admitted by [`Tunnel::trust`]).
    pub in_tables: bool,
}

fn pack(a: SocketAddrV4) -> u64 {
    (u64::from(u32::from(*a.ip())) << 16) | u64::from(a.port())
}

fn unpack(v: u64) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from((v >> 16) as u32), v as u16)
}

/// A peer of the tunnel; the data path holds it while it seals for it.
pub struct Peer {
    key: PublicKey,
    /// Upper 24 bits of every receiver index of its sessions.
    index: u32,
    tunn: Mutex<Tunn>,
    endpoint: AtomicU64,
    tx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    /// Milliseconds since the tunnel's epoch of the last data packet either way.
    active_ms: AtomicU64,
    /// boringtun may hold packets for this peer until a session exists.
    queued: AtomicBool,
    /// Set by revocation: the peer's sessions are dropped, nothing is sealed any more.
    revoked: AtomicBool,
}

impl Peer {
    pub fn endpoint(&self) -> SocketAddrV4 {
        unpack(self.endpoint.load(Ordering::Relaxed))
    }

    fn roam(&self, from: SocketAddrV4) {
        let v = pack(from);
        if self.endpoint.load(Ordering::Relaxed) != v {
            self.endpoint.store(v, Ordering::Relaxed);
        }
    }
}

/// What [`Tunnel::seal`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sealed {
    /// A data message of this length.
    Data(usize),
    /// No session yet: the packet is queued and a handshake initiation of this length was
    /// written instead, to be sent to the peer.
    Handshake(usize),
    /// No session yet: the packet is queued, a handshake is already under way.
    Queued,
    /// Not sealed: too large for the output, or the peer was revoked.
    Refused,
}

#[derive(Default)]
struct Peers {
    by_key: HashMap<PublicKey, Arc<Peer>>,
    by_index: HashMap<u32, Arc<Peer>>,
    /// Egress: the host address a table names → its peer.
    by_host: HashMap<SocketAddrV4, Arc<Peer>>,
    /// Host → key of the current tables.
    tables: HashMap<SocketAddrV4, PublicKey>,
    /// Host → key admitted by [`Tunnel::trust`].
    trusted: HashMap<SocketAddrV4, PublicKey>,
    revoked: HashSet<PublicKey>,
}

struct PendingInit {
    key: PublicKey,
    from: SocketAddrV4,
    at: Instant,
    msg: [u8; HANDSHAKE_INIT_LEN],
}

/// The `unknown_peer` callback: `(key in base64, source address)`.
pub type UnknownPeer = Box<dyn Fn(&str, SocketAddrV4) + Send + Sync>;

/// This worker's end of every tunnel (see the module documentation).
pub struct Tunnel {
    secret: x25519::StaticSecret,
    public: x25519::PublicKey,
    key: PublicKey,
    sock: UdpSocket,
    /// Verifies handshake MACs (and asks for cookies under load) before the Diffie-Hellman
    /// that identifies an initiator.
    limiter: RateLimiter,
    peers: RwLock<Peers>,
    pending: Mutex<Vec<PendingInit>>,
    next_index: AtomicU32,
    epoch: Instant,
    stats: Arc<TunnelStats>,
    unknown_peer: UnknownPeer,
}

impl Tunnel {
    /// `sock`: the tunnel socket (a handle of the one the data plane uses), for what the tunnel
    /// sends on its own (handshake answers, timers). `unknown_peer(key, source)` hears of a
    /// handshake from a key neither in the tables nor trusted, once per key while it waits;
    /// it runs on the receive thread and must not block. Answer with [`trust`](Self::trust).
    pub fn new(
        key: &TunnelKey,
        sock: UdpSocket,
        stats: Arc<TunnelStats>,
        unknown_peer: impl Fn(&str, SocketAddrV4) + Send + Sync + 'static,
    ) -> Self {
        let public = x25519::PublicKey::from(key.public.0);
        let start = {
            use rand::RngCore;
            rand::rng().next_u32()
        };
        Self {
            secret: key.secret.clone(),
            public,
            key: key.public,
            sock,
            limiter: RateLimiter::new(&public, HANDSHAKE_RATE),
            peers: RwLock::default(),
            pending: Mutex::default(),
            next_index: AtomicU32::new(start),
            epoch: Instant::now(),
            stats,
            unknown_peer: Box::new(unknown_peer),
        }
    }

    pub fn public_key(&self) -> PublicKey {
        self.key
    }

    pub fn stats(&self) -> &TunnelStats {
        &self.stats
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn add_peer(&self, ps: &mut Peers, key: PublicKey, endpoint: SocketAddrV4) -> Arc<Peer> {
        if let Some(p) = ps.by_key.get(&key) {
            return p.clone();
        }
        let index = loop {
            let i = self.next_index.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
            if !ps.by_index.contains_key(&i) {
                break i;
            }
        };
        let tunn =
            Tunn::new(self.secret.clone(), x25519::PublicKey::from(key.0), None, Some(KEEPALIVE_SECS), index, None);
        let p = Arc::new(Peer {
            key,
            index,
            tunn: Mutex::new(tunn),
            endpoint: AtomicU64::new(pack(endpoint)),
            tx_bytes: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            rx_packets: AtomicU64::new(0),
            active_ms: AtomicU64::new(self.now_ms()),
            queued: AtomicBool::new(false),
            revoked: AtomicBool::new(false),
        });
        ps.by_key.insert(key, p.clone());
        ps.by_index.insert(index, p.clone());
        p
    }

    fn remove_peer(ps: &mut Peers, key: &PublicKey) {
        if let Some(p) = ps.by_key.remove(key) {
            ps.by_index.remove(&p.index);
        }
        ps.trusted.retain(|_, k| k != key);
        Self::rebuild_hosts(ps);
    }

    /// Tables first: they name the worker that hosts an instance now.
    fn rebuild_hosts(ps: &mut Peers) {
        let Peers { by_key, by_host, tables, trusted, .. } = ps;
        by_host.clear();
        for (host, key) in trusted.iter().chain(tables.iter()) {
            if let Some(p) = by_key.get(key) {
                by_host.insert(*host, p.clone());
            }
        }
    }

    /// The peers the tables name (host → key), replacing the last set. A peer that is no
    /// longer named stays while it is active (see [`IDLE`]); revoked keys are skipped.
    pub fn set_peers(&self, peers: impl IntoIterator<Item = (SocketAddrV4, PublicKey)>) {
        let mut ps = self.peers.write();
        let tables: HashMap<SocketAddrV4, PublicKey> =
            peers.into_iter().filter(|(_, k)| *k != self.key && !ps.revoked.contains(k)).collect();
        for (host, key) in &tables {
            self.add_peer(&mut ps, *key, *host);
        }
        ps.tables = tables;
        Self::rebuild_hosts(&mut ps);
    }

    /// Admits `key` (e.g. after the cluster confirmed it belongs to a live worker), reachable
    /// at `endpoint`, lifting a revocation. Handshakes it sent meanwhile are answered now.
    pub fn trust(&self, key: PublicKey, endpoint: SocketAddrV4) {
        if key == self.key {
            return;
        }
        let peer = {
            let mut ps = self.peers.write();
            ps.revoked.remove(&key);
            let p = self.add_peer(&mut ps, key, endpoint);
            ps.trusted.insert(endpoint, key);
            Self::rebuild_hosts(&mut ps);
            p
        };
        let waiting: Vec<PendingInit> = {
            let mut pending = self.pending.lock();
            let (mine, rest) = pending.drain(..).partition(|w| w.key == key);
            *pending = rest;
            mine
        };
        let fresh: Vec<PendingInit> = waiting.into_iter().filter(|w| w.at.elapsed() < PENDING_AGE).collect();
        if fresh.is_empty() {
            return;
        }
        let mut scratch = vec![0u8; MIN_OUT * 4];
        for w in fresh {
            self.answer(&peer, w.from, &w.msg, &mut scratch);
        }
    }

    /// Drops `key`'s sessions at once: its messages then fail. The key is no longer admitted
    /// from tables, nor reported as unknown, until [`trust`](Self::trust) admits it again.
    pub fn revoke(&self, key: PublicKey) {
        let mut ps = self.peers.write();
        ps.revoked.insert(key);
        if let Some(p) = ps.by_key.get(&key) {
            p.revoked.store(true, Ordering::Relaxed);
        }
        Self::remove_peer(&mut ps, &key);
        drop(ps);
        self.pending.lock().retain(|w| w.key != key);
    }

    /// Every peer, ordered by key.
    pub fn peers(&self) -> Vec<PeerStatus> {
        let (list, named): (Vec<Arc<Peer>>, HashSet<PublicKey>) = {
            let ps = self.peers.read();
            (ps.by_key.values().cloned().collect(), ps.tables.values().copied().collect())
        };
        let mut out: Vec<PeerStatus> = list
            .iter()
            .map(|p| PeerStatus {
                key: p.key.to_base64(),
                endpoint: p.endpoint(),
                last_handshake: p.tunn.lock().time_since_last_handshake(),
                tx_bytes: p.tx_bytes.load(Ordering::Relaxed),
                tx_packets: p.tx_packets.load(Ordering::Relaxed),
                rx_bytes: p.rx_bytes.load(Ordering::Relaxed),
                rx_packets: p.rx_packets.load(Ordering::Relaxed),
                in_tables: named.contains(&p.key),
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// The peer that packets for `host` (an underlay address from the tables) go to; `None`
    /// (counted as [`Reject::NoKey`]) when no key is known for it.
    pub fn peer_for(&self, host: SocketAddrV4) -> Option<Arc<Peer>> {
        let p = self.peers.read().by_host.get(&host).cloned();
        if p.is_none() {
            self.stats.count(Reject::NoKey);
        }
        p
    }

    fn peer_by_index(&self, receiver_index: u32) -> Option<Arc<Peer>> {
        self.peers.read().by_index.get(&(receiver_index >> 8)).cloned()
    }

    /// Encrypts `pkt` for `peer` into `out` (see [`Sealed`]); the datagram goes to
    /// [`Peer::endpoint`]. `out` must hold `pkt.len() + OVERHEAD` bytes, and `pkt` at most
    /// [`MAX_SEALED`].
    pub fn seal(&self, peer: &Peer, pkt: &[u8], out: &mut [u8]) -> Sealed {
        if pkt.len() > MAX_SEALED || out.len() < (pkt.len() + OVERHEAD).max(HANDSHAKE_INIT_LEN) {
            return Sealed::Refused;
        }
        if peer.revoked.load(Ordering::Relaxed) {
            return Sealed::Refused;
        }
        let len = match peer.tunn.lock().encapsulate(pkt, out) {
            TunnResult::WriteToNetwork(m) => m.len(),
            _ => 0,
        };
        if len == pkt.len() + OVERHEAD && out[0] == DATA {
            peer.tx_bytes.fetch_add(pkt.len() as u64, Ordering::Relaxed);
            peer.tx_packets.fetch_add(1, Ordering::Relaxed);
            peer.active_ms.store(self.now_ms(), Ordering::Relaxed);
            return Sealed::Data(len);
        }
        peer.queued.store(true, Ordering::Relaxed);
        if len > 0 { Sealed::Handshake(len) } else { Sealed::Queued }
    }

    /// Seals `pkt` for the worker at `host` and sends it at once (the slow path: packets that
    /// waited for a table). `scratch` must hold [`MIN_OUT`] bytes.
    pub fn send(&self, host: SocketAddrV4, pkt: &[u8], scratch: &mut [u8]) -> bool {
        let Some(peer) = self.peer_for(host) else { return false };
        match self.seal(&peer, pkt, scratch) {
            Sealed::Data(n) | Sealed::Handshake(n) => self.sock.send_to(&scratch[..n], peer.endpoint()).is_ok(),
            Sealed::Queued => true,
            Sealed::Refused => false,
        }
    }

    /// Opens the datagrams of one GRO read from `from`: `buf` holds datagrams of `seg` bytes
    /// each (the last may be shorter). Data message `k` is decrypted into `out` at
    /// `k * (seg - OVERHEAD)`, so the packets lie back to back in slots of that size, as
    /// [`crate::offload::coalesce`] takes them; `ok[k]` (cleared first) tells which slots hold
    /// a packet. Handshake messages are answered (`out` serves as scratch for them: it must
    /// hold `buf.len() + MIN_OUT` bytes). Returns (slot size, bytes of `out` in use).
    pub fn open(
        &self,
        from: SocketAddrV4,
        buf: &[u8],
        seg: usize,
        out: &mut [u8],
        ok: &mut Vec<bool>,
    ) -> (usize, usize) {
        ok.clear();
        let seg = seg.max(1);
        let slot = seg.saturating_sub(OVERHEAD);
        let n = buf.len().div_ceil(seg);
        let total = buf.chunks(seg).map(|c| c.len().saturating_sub(OVERHEAD)).sum::<usize>();
        if out.len() < total + MIN_OUT {
            ok.resize(n, false);
            return (slot, 0);
        }
        let mut flush: Option<Arc<Peer>> = None;
        for (k, msg) in buf.chunks(seg).enumerate() {
            let good = if msg.len() >= OVERHEAD && msg[..4] == [DATA, 0, 0, 0] {
                let dst = &mut out[k * slot..k * slot + msg.len() - 16];
                self.open_data(from, msg, dst, &mut flush)
            } else {
                self.control(from, msg, &mut out[total..]);
                false
            };
            ok.push(good);
        }
        if let Some(p) = flush {
            self.flush(&p, &mut out[total..]);
        }
        (slot, total)
    }

    fn open_data(&self, from: SocketAddrV4, msg: &[u8], dst: &mut [u8], flush: &mut Option<Arc<Peer>>) -> bool {
        let index = u32::from_le_bytes([msg[4], msg[5], msg[6], msg[7]]);
        let Some(peer) = self.peer_by_index(index) else {
            self.stats.count(Reject::UnknownSession);
            return false;
        };
        let r = match peer.tunn.lock().decapsulate(Some(std::net::IpAddr::V4(*from.ip())), msg, dst) {
            TunnResult::WriteToTunnelV4(p, _) => Ok(p.len()),
            TunnResult::WriteToTunnelV6(p, _) => Ok(p.len()),
            TunnResult::Done => Ok(0),
            TunnResult::WriteToNetwork(_) => Ok(0),
            TunnResult::Err(e) => Err(e),
        };
        match r {
            Ok(len) => {
                peer.roam(from);
                if peer.queued.load(Ordering::Relaxed) {
                    *flush = Some(peer.clone());
                }
                if len == 0 {
                    return false; // a keepalive
                }
                peer.rx_bytes.fetch_add(len as u64, Ordering::Relaxed);
                peer.rx_packets.fetch_add(1, Ordering::Relaxed);
                peer.active_ms.store(self.now_ms(), Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.stats.count(Reject::of(&e));
                false
            }
        }
    }

    /// A message that is not a data message: handshakes and cookies, or garbage.
    fn control(&self, from: SocketAddrV4, msg: &[u8], scratch: &mut [u8]) {
        let ip = Some(std::net::IpAddr::V4(*from.ip()));
        let peer = match self.limiter.verify_packet(ip, msg, scratch) {
            Err(TunnResult::WriteToNetwork(cookie)) => {
                let _ = self.sock.send_to(cookie, from);
                self.stats.count(Reject::RateLimited);
                return;
            }
            Err(TunnResult::Err(e)) => return self.stats.count(Reject::of(&e)),
            Err(_) => return self.stats.count(Reject::NotWireGuard),
            Ok(Packet::HandshakeInit(init)) => {
                let Ok(half) = parse_handshake_anon(&self.secret, &self.public, &init) else {
                    return self.stats.count(Reject::BadAuth);
                };
                let key = PublicKey(half.peer_static_public);
                let known = {
                    let ps = self.peers.read();
                    if ps.revoked.contains(&key) {
                        drop(ps);
                        return self.stats.count(Reject::Revoked);
                    }
                    ps.by_key.get(&key).cloned()
                };
                match known {
                    Some(p) => p,
                    None => return self.hold(key, from, msg),
                }
            }
            Ok(Packet::HandshakeResponse(r)) => match self.peer_by_index(r.receiver_idx) {
                Some(p) => p,
                None => return self.stats.count(Reject::UnknownSession),
            },
            Ok(Packet::PacketCookieReply(c)) => match self.peer_by_index(c.receiver_idx) {
                Some(p) => p,
                None => return self.stats.count(Reject::UnknownSession),
            },
            // Shorter than a data message can be: `open` took every other.
            Ok(Packet::PacketData(_)) => return self.stats.count(Reject::NotWireGuard),
        };
        self.answer(&peer, from, msg, scratch);
    }

    /// Keeps a handshake from an unknown key and tells the worker, once per key.
    fn hold(&self, key: PublicKey, from: SocketAddrV4, msg: &[u8]) {
        self.stats.count(Reject::Untrusted);
        if key == self.key {
            return;
        }
        let Ok(msg) = <[u8; HANDSHAKE_INIT_LEN]>::try_from(msg) else { return };
        let now = Instant::now();
        let first = {
            let mut pending = self.pending.lock();
            pending.retain(|w| now.duration_since(w.at) < PENDING_AGE);
            let first = !pending.iter().any(|w| w.key == key);
            // The newest handshake of a key replaces the one kept: the initiator only accepts
            // an answer to its latest.
            pending.retain(|w| w.key != key);
            if pending.len() >= PENDING_MAX {
                pending.remove(0);
            }
            pending.push(PendingInit { key, from, at: now, msg });
            first
        };
        if first {
            self.stats.unknown_peers.fetch_add(1, Ordering::Relaxed);
            (self.unknown_peer)(&key.to_base64(), from);
        }
    }

    /// Hands a handshake message to its peer's session and sends the answer, then what
    /// waited for the session.
    fn answer(&self, peer: &Arc<Peer>, from: SocketAddrV4, msg: &[u8], scratch: &mut [u8]) {
        let ip = Some(std::net::IpAddr::V4(*from.ip()));
        let r = match peer.tunn.lock().decapsulate(ip, msg, scratch) {
            TunnResult::WriteToNetwork(m) => Ok(m.len()),
            TunnResult::Err(e) => Err(e),
            _ => Ok(0),
        };
        match r {
            Ok(n) => {
                peer.roam(from);
                if msg.first() != Some(&3) {
                    self.stats.handshakes.fetch_add(1, Ordering::Relaxed);
                }
                if n > 0 {
                    let _ = self.sock.send_to(&scratch[..n], from);
                }
                // An answered initiation leaves the session unusable until the initiator's
                // first message arrives (`open` flushes then); a response completes it.
                if msg.first() == Some(&2) {
                    self.flush(peer, scratch);
                }
            }
            Err(e) => self.stats.count(Reject::of(&e)),
        }
    }

    /// Sends the packets boringtun queued for `peer` while it had no session, a scratchful at
    /// a time (the lock is released before sending).
    fn flush(&self, peer: &Peer, scratch: &mut [u8]) {
        if !peer.queued.load(Ordering::Relaxed) {
            return;
        }
        let mut lens = [0usize; 32];
        loop {
            let (mut count, mut off, mut done) = (0, 0, false);
            {
                let mut t = peer.tunn.lock();
                // Without a current session boringtun would only queue them again.
                if t.time_since_last_handshake().is_none() {
                    return;
                }
                while count < lens.len() && scratch.len() - off >= MIN_OUT.max(HANDSHAKE_INIT_LEN) {
                    match t.decapsulate(None, &[], &mut scratch[off..]) {
                        TunnResult::WriteToNetwork(m) => {
                            lens[count] = m.len();
                            off += m.len();
                            count += 1;
                        }
                        _ => {
                            done = true;
                            break;
                        }
                    }
                }
            }
            let to = peer.endpoint();
            let mut at = 0;
            for &n in &lens[..count] {
                let m = &scratch[at..at + n];
                if m.len() > OVERHEAD && m[0] == DATA {
                    peer.tx_bytes.fetch_add((n - OVERHEAD) as u64, Ordering::Relaxed);
                    peer.tx_packets.fetch_add(1, Ordering::Relaxed);
                }
                let _ = self.sock.send_to(m, to);
                at += n;
            }
            if done {
                peer.queued.store(false, Ordering::Relaxed);
                return;
            }
            if count == 0 {
                return;
            }
        }
    }

    /// Runs every session's timers and sends what they produce (handshake retries,
    /// keepalives, rekeys); forgets expired pending handshakes and idle peers. Call every
    /// [`TICK`]; `scratch` must hold [`MIN_OUT`] bytes.
    pub fn tick(&self, scratch: &mut [u8]) {
        self.limiter.reset_count();
        let peers: Vec<Arc<Peer>> = self.peers.read().by_key.values().cloned().collect();
        for p in &peers {
            let n = match p.tunn.lock().update_timers(scratch) {
                TunnResult::WriteToNetwork(m) => m.len(),
                _ => 0,
            };
            if n > 0 {
                let _ = self.sock.send_to(&scratch[..n], p.endpoint());
            }
            self.flush(p, scratch);
        }
        let now = Instant::now();
        self.pending.lock().retain(|w| now.duration_since(w.at) < PENDING_AGE);
        let now_ms = self.now_ms();
        let idle = |p: &Peer| now_ms.saturating_sub(p.active_ms.load(Ordering::Relaxed)) > IDLE.as_millis() as u64;
        if peers.iter().any(|p| idle(p)) {
            let mut ps = self.peers.write();
            let named: HashSet<PublicKey> = ps.tables.values().copied().collect();
            let gone: Vec<PublicKey> =
                ps.by_key.values().filter(|p| !named.contains(&p.key) && idle(p)).map(|p| p.key).collect();
            for k in gone {
                Self::remove_peer(&mut ps, &k);
            }
        }
    }
}

/// True when a datagram looks like a WireGuard message (a message type 1 to 4 with zero
/// reserved bytes), which no IPv4 packet does: with encryption off, such datagrams are dropped
/// as [`Reject::Encrypted`].
pub fn looks_encrypted(datagram: &[u8]) -> bool {
    matches!(datagram, [1..=4, 0, 0, 0, ..])
}

#[cfg(test)]
pub(crate) mod tests;
