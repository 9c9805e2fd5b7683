//! Latency probes between workers (LDP): a small UDP protocol of our own, its responder and
//! its prober, which feed this worker's Vivaldi coordinate.
//!
//! Wire format: every datagram is exactly [`PROBE_LEN`] bytes, a ping and its pong alike (an
//! answer is never larger than the question: no amplification).
//! ```text
//!  0..4   magic "OAKP"
//!  4      version (1)
//!  5      kind: 1 ping, 2 pong
//!  6..8   zero
//!  8..16  nonce (big endian), chosen by the pinger, echoed
//! 16..24  the pinger's send time (ns of its monotonic clock; opaque to the ponger), echoed
//! 24..40  pong: the responder's system coordinate x, y, h, error (f32, big endian); ping: zero
//! 40..48  zero
//! ```
//! Anything else (length, magic, version, kind, non-zero padding, an invalid coordinate) is
//! dropped without an answer.
//!
//! One socket serves both roles. The responder answers well-formed pings only, at most
//! [`PONGS_PER_S`] in all and [`PONGS_PER_SOURCE_PER_S`] per source address (a table of at
//! most [`MAX_SOURCES`] sources, the oldest forgotten first). The prober probes a few peers
//! per interval in turn, so that each is probed about every [`CYCLE`] and the whole stays
//! under [`MAX_PROBES_PER_S`]; it matches pongs to its outstanding nonces (at most
//! [`MAX_PENDING`], each for [`PROBE_TIMEOUT`]) and feeds each RTT with the peer's
//! coordinate to [`Vivaldi::observe`].

use oak_api::ldp::{Coord, MAX_COORD_MS, MAX_PEERS, MAX_REPORTED_RTTS, PeerRtt, ProbePeer, ProbePeers};
use oak_ldp::vivaldi::{Config as VivaldiConfig, Vivaldi};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

/// Size of every probe datagram.
pub(crate) const PROBE_LEN: usize = 48;
const MAGIC: [u8; 4] = *b"OAKP";
const VERSION: u8 = 1;
const KIND_PING: u8 = 1;
const KIND_PONG: u8 = 2;

/// The default UDP port of the probes (the tunnel's is 50103).
pub const PROBE_PORT: u16 = 50104;
/// The default time between two rounds of probes.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// The shortest interval accepted (shorter ones are raised to it).
pub(crate) const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// About how often each peer is probed.
pub(crate) const CYCLE: Duration = Duration::from_secs(15);
/// Most probes sent per second, whatever the interval and the number of peers.
pub(crate) const MAX_PROBES_PER_S: f64 = 16.0;
/// How long a ping waits for its pong.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most pings waiting for their pongs.
pub(crate) const MAX_PENDING: usize = 128;
/// Most pongs sent per second, in all and to one source address.
pub(crate) const PONGS_PER_S: f64 = 200.0;
pub(crate) const PONGS_PER_SOURCE_PER_S: f64 = 20.0;
/// Most source addresses the responder keeps a bucket for.
pub(crate) const MAX_SOURCES: usize = 1024;
/// Samples from one peer before this worker reports a coordinate.
pub(crate) const MIN_SAMPLES: u32 = 3;
/// How long a measured RTT to a user address is reported, and how many are kept.
pub(crate) const USER_RTT_TTL: Duration = Duration::from_secs(15 * 60);
pub(crate) const MAX_USER_RTTS: usize = MAX_REPORTED_RTTS;

// ------------------------------------------------------------------------------ the codec

/// A probe datagram.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Message {
    Ping {
        nonce: u64,
        sent_ns: u64,
    },
    /// The answer to a ping: its nonce and send time, and the responder's system coordinate.
    Pong {
        nonce: u64,
        sent_ns: u64,
        coord: Coord,
    },
}

/// The datagram of `m`. A coordinate is sent as f32: within [`MAX_COORD_MS`], at most a
/// few microseconds off.
pub(crate) fn encode(m: &Message) -> [u8; PROBE_LEN] {
    let mut b = [0u8; PROBE_LEN];
    b[..4].copy_from_slice(&MAGIC);
    b[4] = VERSION;
    let (kind, nonce, sent_ns) = match m {
        Message::Ping { nonce, sent_ns } => (KIND_PING, nonce, sent_ns),
        Message::Pong { nonce, sent_ns, coord } => {
            for (i, v) in [coord.x, coord.y, coord.h, coord.error].into_iter().enumerate() {
                b[24 + 4 * i..28 + 4 * i].copy_from_slice(&(v as f32).to_be_bytes());
            }
            (KIND_PONG, nonce, sent_ns)
        }
    };
    b[5] = kind;
    b[8..16].copy_from_slice(&nonce.to_be_bytes());
    b[16..24].copy_from_slice(&sent_ns.to_be_bytes());
    b
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn f32_at(b: &[u8], at: usize) -> Option<f64> {
    Some(f64::from(f32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?)))
}

fn zero(b: &[u8], range: std::ops::Range<usize>) -> bool {
    b.get(range).is_some_and(|r| r.iter().all(|&x| x == 0))
}

/// The message `b` carries, if it is exactly a well-formed one.
pub(crate) fn decode(b: &[u8]) -> Option<Message> {
    if b.len() != PROBE_LEN || b.get(..4)? != MAGIC || b[4] != VERSION || !zero(b, 6..8) || !zero(b, 40..48) {
        return None;
    }
    let (nonce, sent_ns) = (u64_at(b, 8)?, u64_at(b, 16)?);
    match b[5] {
        KIND_PING if zero(b, 24..40) => Some(Message::Ping { nonce, sent_ns }),
        KIND_PONG => {
            let coord = Coord::new(f32_at(b, 24)?, f32_at(b, 28)?, f32_at(b, 32)?, f32_at(b, 36)?);
            coord.is_valid().then_some(Message::Pong { nonce, sent_ns, coord })
        }
        _ => None,
    }
}

// ------------------------------------------------------------------------- rate limiting

/// A token bucket: `rate` tokens a second, at most `rate` held (one second's burst).
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: f64, now: Instant) -> Self {
        Self { tokens: rate, at: now }
    }

    fn refill(&mut self, rate: f64, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(rate);
        self.at = self.at.max(now);
    }
}

/// The responder's limits: a bucket for all pongs and one per source address, in a table of
/// at most `max_sources` (the oldest source is forgotten first; it then starts afresh, within
/// the overall bucket).
pub(crate) struct Limiter {
    rate: f64,
    per_source: f64,
    max_sources: usize,
    all: Bucket,
    sources: HashMap<IpAddr, Bucket>,
    /// Sources in the order they entered the table.
    order: VecDeque<IpAddr>,
}

impl Limiter {
    pub(crate) fn new(rate: f64, per_source: f64, max_sources: usize, now: Instant) -> Self {
        Self {
            rate,
            per_source,
            max_sources: max_sources.max(1),
            all: Bucket::full(rate, now),
            sources: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// True when a pong to `src` may go out now (and counts it).
    pub(crate) fn allow(&mut self, src: IpAddr, now: Instant) -> bool {
        self.all.refill(self.rate, now);
        if self.all.tokens < 1.0 {
            return false;
        }
        let per_source = self.per_source;
        let b = match self.sources.get_mut(&src) {
            Some(b) => b,
            None => {
                while self.sources.len() >= self.max_sources {
                    let Some(old) = self.order.pop_front() else { break };
                    self.sources.remove(&old);
                }
                self.order.push_back(src);
                self.sources.entry(src).or_insert(Bucket::full(per_source, now))
            }
        };
        b.refill(per_source, now);
        if b.tokens < 1.0 {
            return false;
        }
        b.tokens -= 1.0;
        self.all.tokens -= 1.0;
        true
    }

    #[cfg(test)]
    pub(crate) fn sources(&self) -> usize {
        self.sources.len()
    }
}

// ------------------------------------------------------------------------ pending pings

struct Outstanding {
    peer: String,
    sent_ns: u64,
    sent: Instant,
}

/// The pings waiting for their pongs, by nonce: at most `cap` (a new one pushes out the
/// oldest), each for `timeout`.
pub(crate) struct Pending {
    cap: usize,
    timeout: Duration,
    by_nonce: HashMap<u64, Outstanding>,
    /// Nonces in the order they were sent (some may be answered already).
    order: VecDeque<u64>,
}

impl Pending {
    pub(crate) fn new(cap: usize, timeout: Duration) -> Self {
        Self { cap: cap.max(1), timeout, by_nonce: HashMap::new(), order: VecDeque::new() }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_nonce.len()
    }

    /// Records a ping sent to `peer`. A nonce already waiting is not replaced (false).
    pub(crate) fn insert(&mut self, nonce: u64, peer: &str, sent_ns: u64, sent: Instant) -> bool {
        if self.by_nonce.contains_key(&nonce) {
            return false;
        }
        while self.by_nonce.len() >= self.cap {
            let Some(old) = self.order.pop_front() else { break };
            self.by_nonce.remove(&old);
        }
        // Answered nonces leave their place in `order` behind: keep it bounded too.
        while self.order.len() >= 2 * self.cap {
            let Some(old) = self.order.pop_front() else { break };
            self.by_nonce.remove(&old);
        }
        self.by_nonce.insert(nonce, Outstanding { peer: peer.to_owned(), sent_ns, sent });
        self.order.push_back(nonce);
        true
    }

    /// The peer and RTT of the ping a pong answers: its nonce waits, it echoes the send time,
    /// and it came within the timeout. The nonce is used up either way.
    pub(crate) fn answer(&mut self, nonce: u64, sent_ns: u64, now: Instant) -> Option<(String, Duration)> {
        let o = self.by_nonce.get(&nonce)?;
        if o.sent_ns != sent_ns {
            // Not an answer to this ping: leave it waiting for the real one.
            return None;
        }
        let o = self.by_nonce.remove(&nonce)?;
        let rtt = now.checked_duration_since(o.sent)?;
        (rtt <= self.timeout).then_some((o.peer, rtt))
    }

    /// Forgets the pings older than the timeout.
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some(n) = self.order.front() {
            match self.by_nonce.get(n) {
                Some(o) if now.saturating_duration_since(o.sent) <= self.timeout => break,
                _ => {
                    let n = *n;
                    self.order.pop_front();
                    self.by_nonce.remove(&n);
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------- peers

/// The peers a [`ProbePeers`] names that this worker probes: not itself, not an address no
/// probe can go to, each id once, at most [`MAX_PEERS`], sorted by id.
pub(crate) fn select_peers(me: &str, set: &ProbePeers) -> Vec<ProbePeer> {
    let mut out: Vec<ProbePeer> = Vec::new();
    for p in &set.peers {
        let ip = p.addr.ip();
        let usable = p.addr.port() != 0 && !ip.is_unspecified() && !ip.is_multicast() && !ip.is_broadcast();
        if p.id == me || p.id.is_empty() || p.id.len() > 64 || !usable || out.iter().any(|o| o.id == p.id) {
            continue;
        }
        out.push(p.clone());
        if out.len() == MAX_PEERS {
            break;
        }
    }
    out.sort();
    out
}

/// How many peers of `n` one round probes, so that each is probed about every [`CYCLE`]
/// and at most [`MAX_PROBES_PER_S`] go out a second.
pub(crate) fn per_round(n: usize, interval: Duration) -> usize {
    if n == 0 {
        return 0;
    }
    let s = interval.as_secs_f64();
    let want = (n as f64 * s / CYCLE.as_secs_f64()).ceil() as usize;
    let cap = ((MAX_PROBES_PER_S * s).floor() as usize).max(1);
    want.clamp(1, cap).min(n)
}

/// The peers in turn: each round takes the next few after the last one probed, by id, so a
/// new peer set (the cluster resends it) does not start the turn over.
#[derive(Default)]
pub(crate) struct Rotation {
    peers: Vec<ProbePeer>,
    last: Option<String>,
}

impl Rotation {
    /// Replaces the set (`peers` sorted by id, as [`select_peers`] gives it).
    pub(crate) fn set(&mut self, peers: Vec<ProbePeer>) {
        self.peers = peers;
    }

    pub(crate) fn len(&self) -> usize {
        self.peers.len()
    }

    pub(crate) fn next(&mut self, k: usize) -> Vec<ProbePeer> {
        let n = self.peers.len();
        if n == 0 || k == 0 {
            return Vec::new();
        }
        let start = match &self.last {
            Some(last) => self.peers.partition_point(|p| p.id <= *last) % n,
            None => 0,
        };
        let out: Vec<ProbePeer> = (0..k.min(n)).map(|i| self.peers[(start + i) % n].clone()).collect();
        self.last = out.last().map(|p| p.id.clone());
        out
    }
}

// ------------------------------------------------------------------------ shared state

/// What the prober and the measurer learnt, read by the worker's report.
pub(crate) struct State {
    vivaldi: Vivaldi,
    /// Samples per peer, until one has [`MIN_SAMPLES`].
    samples: HashMap<String, u32>,
    ready: bool,
    /// RTTs to user addresses (ms), and when they were measured.
    users: BTreeMap<IpAddr, (f64, Instant)>,
}

impl State {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            vivaldi: Vivaldi::new(VivaldiConfig::default(), seed),
            samples: HashMap::new(),
            ready: false,
            users: BTreeMap::new(),
        }
    }

    /// One RTT to `peer` and its coordinate, at `now` (s).
    pub(crate) fn observe(&mut self, peer: &str, rtt_ms: f64, coord: Coord, now: f64) {
        if !(rtt_ms.is_finite() && rtt_ms > 0.0 && rtt_ms <= MAX_COORD_MS && coord.is_valid()) {
            return;
        }
        self.vivaldi.observe(peer, rtt_ms, coord, now);
        if !self.ready {
            let n = self.samples.entry(peer.to_owned()).or_insert(0);
            *n += 1;
            if *n >= MIN_SAMPLES {
                self.ready = true;
                self.samples = HashMap::new();
            }
        }
    }

    /// Keeps the sample counts of these peers only.
    fn retain_peers(&mut self, peers: &[ProbePeer]) {
        self.samples.retain(|id, _| peers.iter().any(|p| p.id == *id));
    }

    pub(crate) fn system_coord(&self) -> Coord {
        self.vivaldi.system_coord()
    }

    /// The coordinate to report: once some peer gave [`MIN_SAMPLES`] samples.
    pub(crate) fn coord(&self) -> Option<Coord> {
        let c = self.vivaldi.coord();
        (self.ready && c.is_valid()).then_some(c)
    }

    pub(crate) fn forget_stale(&mut self, now: f64) {
        self.vivaldi.forget_stale(now);
    }

    /// An RTT to a user address (ms).
    pub(crate) fn user_rtt(&mut self, addr: IpAddr, ms: f64, at: Instant) {
        if !(ms.is_finite() && ms >= 0.0) {
            return;
        }
        self.users.insert(addr, (ms, at));
        while self.users.len() > MAX_USER_RTTS {
            let Some(oldest) = self.users.iter().min_by_key(|(_, (_, t))| *t).map(|(a, _)| *a) else { break };
            self.users.remove(&oldest);
        }
    }

    /// The RTTs to report: to peers (by id, at most [`MAX_PEERS`]), then to user addresses
    /// (newest first, measured within [`USER_RTT_TTL`]), [`MAX_REPORTED_RTTS`] in all.
    pub(crate) fn rtts(&mut self, now: Instant) -> Vec<PeerRtt> {
        let ok = |ms: f64| ms.is_finite() && (0.0..=MAX_COORD_MS).contains(&ms);
        let mut peers = self.vivaldi.rtts();
        peers.retain(|(_, ms)| ok(*ms));
        peers.sort_by(|a, b| a.0.cmp(&b.0));
        peers.truncate(MAX_PEERS);
        let mut out: Vec<PeerRtt> = peers.into_iter().map(|(peer, ms)| PeerRtt { peer, ms }).collect();
        self.users.retain(|_, (_, at)| now.saturating_duration_since(*at) <= USER_RTT_TTL);
        let mut users: Vec<(&IpAddr, &(f64, Instant))> = self.users.iter().collect();
        users.sort_by(|a, b| b.1.1.cmp(&a.1.1).then(a.0.cmp(b.0)));
        for (addr, (ms, _)) in users {
            if out.len() >= MAX_REPORTED_RTTS {
                break;
            }
            if ok(*ms) {
                out.push(PeerRtt { peer: format!("user:{addr}"), ms: *ms });
            }
        }
        out
    }
}

/// The state behind a lock no one holds across an await; a panic elsewhere does not
/// poison it for the rest.
pub(crate) fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---------------------------------------------------------------------- the socket task

/// Where and how often to probe.
#[derive(Clone, Debug)]
pub(crate) struct ProberConfig {
    pub bind: SocketAddrV4,
    pub interval: Duration,
}

/// A running prober and responder.
pub(crate) struct Prober {
    pub local: SocketAddrV4,
    pub peers: watch::Sender<Vec<ProbePeer>>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Binds the probe socket and starts answering and probing. A port in use by another
/// process gives way to an ephemeral one (the report says which), with a warning.
pub(crate) async fn start(config: ProberConfig, state: Arc<Mutex<State>>) -> std::io::Result<Prober> {
    let sock = match UdpSocket::bind(config.bind).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && config.bind.port() != 0 => {
            tracing::warn!(port = config.bind.port(), "the probe port is in use; probing from an ephemeral port");
            UdpSocket::bind(SocketAddrV4::new(*config.bind.ip(), 0)).await?
        }
        Err(e) => return Err(e),
    };
    let local = match sock.local_addr()? {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, a.port()),
    };
    let (peers, rx) = watch::channel(Vec::new());
    let task = tokio::spawn(run(sock, config, state, rx));
    Ok(Prober { local, peers, task })
}

async fn run(
    sock: UdpSocket,
    config: ProberConfig,
    state: Arc<Mutex<State>>,
    mut peers: watch::Receiver<Vec<ProbePeer>>,
) {
    let epoch = Instant::now();
    let interval = config.interval.max(MIN_INTERVAL);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut rotation = Rotation::default();
    let mut pending = Pending::new(MAX_PENDING, PROBE_TIMEOUT);
    let mut limiter = Limiter::new(PONGS_PER_S, PONGS_PER_SOURCE_PER_S, MAX_SOURCES, epoch);
    // Datagrams of another size are read whole and dropped.
    let mut buf = [0u8; 2 * PROBE_LEN];
    let secs = |t: Instant| t.saturating_duration_since(epoch).as_secs_f64();
    let mut peers_open = true;
    loop {
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let (n, from) = match r {
                    Ok(x) => x,
                    // ICMP errors of earlier sends (port unreachable) and the like.
                    Err(e) => {
                        tracing::trace!(error = %e, "probe socket");
                        continue;
                    }
                };
                let now = Instant::now();
                match decode(buf.get(..n).unwrap_or_default()) {
                    Some(Message::Ping { nonce, sent_ns }) => {
                        if !limiter.allow(from.ip(), now) {
                            continue;
                        }
                        let coord = lock(&state).system_coord();
                        let pong = encode(&Message::Pong { nonce, sent_ns, coord });
                        if let Err(e) = sock.send_to(&pong, from).await {
                            tracing::trace!(to = %from, error = %e, "cannot answer a probe");
                        }
                    }
                    Some(Message::Pong { nonce, sent_ns, coord }) => {
                        let Some((peer, rtt)) = pending.answer(nonce, sent_ns, now) else { continue };
                        let ms = rtt.as_secs_f64() * 1000.0;
                        tracing::trace!(peer = %peer, ms, "probe answered");
                        lock(&state).observe(&peer, ms, coord, secs(now));
                    }
                    None => {}
                }
            }
            _ = ticker.tick() => {
                let now = Instant::now();
                pending.expire(now);
                lock(&state).forget_stale(secs(now));
                for p in rotation.next(per_round(rotation.len(), interval)) {
                    let sent_ns = u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX);
                    let nonce: u64 = rand::random();
                    if !pending.insert(nonce, &p.id, sent_ns, now) {
                        continue;
                    }
                    let ping = encode(&Message::Ping { nonce, sent_ns });
                    if let Err(e) = sock.send_to(&ping, p.addr).await {
                        tracing::debug!(peer = %p.id, to = %p.addr, error = %e, "cannot send a probe");
                    }
                }
            }
            changed = peers.changed(), if peers_open => {
                if changed.is_err() {
                    // The handle is gone: keep answering with the peers there are.
                    peers_open = false;
                    continue;
                }
                let set = peers.borrow_and_update().clone();
                lock(&state).retain_peers(&set);
                rotation.set(set);
            }
        }
    }
}

#[cfg(test)]
mod tests;
