//! Translation state and logic of one worker: which semantic address leads to which instance,
//! the flows in progress, and the packets waiting for a table. No I/O: the data plane
//! threads call [`Proxy::egress`] and [`Proxy::ingress`] per packet, the worker's control
//! task feeds tables in and reads interests out.
//!
//! Rewriting (oakestra-net §3.6): a client dials a Service IP; on its worker the packet leaves
//! with `src = client's Instance IP, dst = chosen instance's namespace IP`. The server sees the
//! client's Instance IP and replies to it; the reply is translated the same way on the
//! server's worker, and the client's worker turns its source back into the Service IP the
//! client dialled (the reverse entry of the flow). So both ends see stable semantic peers.

use crate::packet::{self, Packet, TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use oak_api::net::{ServiceTable, distance_km, is_semantic, parse_location};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Where a chosen instance is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Target {
    pub instance_ip: Ipv4Addr,
    pub ns_ip: Ipv4Addr,
    pub host: SocketAddrV4,
    pub location: Option<(f64, f64)>,
    pub coord: Option<oak_api::ldp::Coord>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    RoundRobin,
    Closest,
    /// An Instance IP: its one instance.
    Instance,
}

struct Entry {
    policy: Policy,
    /// Ordered by instance number.
    targets: Arc<[Target]>,
    next: Arc<AtomicUsize>,
}

/// What to do with a packet read from the TUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Tunnel it to this worker.
    Send(SocketAddrV4),
    /// The target is on this worker: deliver it back through the TUN (hairpin).
    Local,
    /// Kept until a table for its destination arrives.
    Pending,
    Drop(DropReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    Malformed,
    NotSemantic,
    /// The source is no instance of this worker.
    UnknownSource,
    /// Too many packets already wait for that destination.
    QueueFull,
    /// Too large to keep while waiting (a TCP super-packet; TCP sends it again).
    TooLarge,
    /// Tunnel traffic for an address outside this worker's subnet.
    NotLocal,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct FlowKey {
    proto: u8,
    a: Ipv4Addr,
    ap: u16,
    b: Ipv4Addr,
    bp: u16,
}

struct Flow {
    target: Target,
    src_instance_ip: Ipv4Addr,
    last: Instant,
    closing: bool,
}

#[derive(Default)]
struct Flows {
    fwd: HashMap<FlowKey, Flow>,
    /// (proto, client ns IP, client port, target Instance IP, port) → the address dialled.
    rev: HashMap<FlowKey, Ipv4Addr>,
}

struct Waiting {
    since: Instant,
    packets: Vec<Vec<u8>>,
}

/// Timeouts of the flow table and of waiting packets.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub tcp_idle: Duration,
    pub tcp_closing: Duration,
    pub udp_idle: Duration,
    /// Packets waiting for a table are dropped after this.
    pub pending: Duration,
    /// An address no flow used this long is no longer of interest.
    pub interest: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_idle: Duration::from_secs(600),
            tcp_closing: Duration::from_secs(10),
            udp_idle: Duration::from_secs(60),
            pending: Duration::from_secs(3),
            interest: Duration::from_secs(10),
        }
    }
}

/// Counters, for logs and benchmarks.
#[derive(Default, Debug)]
pub struct Stats {
    pub egress: AtomicU64,
    pub ingress: AtomicU64,
    pub dropped: AtomicU64,
    pub misses: AtomicU64,
    /// Tunnel datagrams rejected, by reason, and handshakes (shared with the
    /// [`crate::tunnel::Tunnel`], which counts most of them).
    pub tunnel: Arc<crate::tunnel::TunnelStats>,
}

const MAX_WAITING: usize = 32;
const MAX_WAITING_LEN: usize = 2048;

/// What the closest policy knows of latency: this worker's coordinate, and the RTTs it
/// measured to other workers (by underlay address).
#[derive(Default)]
struct Latencies {
    coord: Option<oak_api::ldp::Coord>,
    measured: HashMap<Ipv4Addr, f64>,
}

pub struct Proxy {
    me: SocketAddrV4,
    my_location: Option<(f64, f64)>,
    latencies: RwLock<Latencies>,
    subnet: (u32, u32),
    pub timeouts: Timeouts,
    tables: RwLock<HashMap<Ipv4Addr, Entry>>,
    locals: RwLock<HashMap<Ipv4Addr, Ipv4Addr>>,
    flows: Mutex<Flows>,
    waiting: Mutex<HashMap<Ipv4Addr, Waiting>>,
    /// Told once per destination that starts waiting.
    misses: Box<dyn Fn(Ipv4Addr) + Send + Sync>,
    pub stats: Stats,
}

fn in_net(ip: Ipv4Addr, (base, mask): (u32, u32)) -> bool {
    u32::from(ip) & mask == base
}

impl Proxy {
    /// `me`: this worker's tunnel address; `subnet`: its /26 (base, prefix length).
    pub fn new(
        me: SocketAddrV4,
        location: Option<&str>,
        subnet: (Ipv4Addr, u8),
        misses: impl Fn(Ipv4Addr) + Send + Sync + 'static,
    ) -> Self {
        let mask = if subnet.1 == 0 { 0 } else { u32::MAX << (32 - u32::from(subnet.1.min(32))) };
        Self {
            me,
            my_location: location.and_then(parse_location),
            latencies: RwLock::default(),
            subnet: (u32::from(subnet.0) & mask, mask),
            timeouts: Timeouts::default(),
            tables: RwLock::default(),
            locals: RwLock::default(),
            flows: Mutex::default(),
            waiting: Mutex::default(),
            misses: Box::new(misses),
            stats: Stats::default(),
        }
    }

    /// This worker's network coordinate and the RTTs it measured to other workers (by
    /// underlay address), for the closest policy. New flows use them; flows keep their
    /// instance.
    pub fn set_latencies(&self, coord: Option<oak_api::ldp::Coord>, measured: HashMap<Ipv4Addr, f64>) {
        *self.latencies.write() = Latencies { coord: coord.filter(oak_api::ldp::Coord::is_valid), measured };
    }

    /// An instance of this worker: packets from `ns_ip` leave with `instance_ip` as source.
    pub fn add_local(&self, ns_ip: Ipv4Addr, instance_ip: Ipv4Addr) {
        self.locals.write().insert(ns_ip, instance_ip);
    }

    pub fn remove_local(&self, ns_ip: Ipv4Addr) {
        self.locals.write().remove(&ns_ip);
        let mut f = self.flows.lock();
        f.fwd.retain(|k, _| k.a != ns_ip);
        f.rev.retain(|k, _| k.a != ns_ip);
    }

    /// Replaces every table. Flows whose instance is gone are dropped (their next packet
    /// picks again); returns the waiting packets that can now go, for the caller to send.
    pub fn set_tables(&self, tables: &[ServiceTable]) -> Vec<Vec<u8>> {
        let mut new: HashMap<Ipv4Addr, Entry> = HashMap::new();
        {
            let old = self.tables.read();
            let counter =
                |ip: Ipv4Addr| old.get(&ip).map(|e| e.next.clone()).unwrap_or_else(|| Arc::new(AtomicUsize::new(0)));
            for t in tables {
                let mut instances = t.instances.clone();
                instances.sort_by_key(|i| i.instance_number);
                let targets: Vec<Target> = instances
                    .iter()
                    .filter_map(|i| {
                        let host = i.host_ip.parse::<Ipv4Addr>().ok()?;
                        Some(Target {
                            instance_ip: i.instance_ip,
                            ns_ip: i.ns_ip,
                            host: SocketAddrV4::new(host, i.host_port),
                            location: i.location.as_deref().and_then(parse_location),
                            coord: i.coord.filter(oak_api::ldp::Coord::is_valid),
                        })
                    })
                    .collect();
                for tg in &targets {
                    new.insert(
                        tg.instance_ip,
                        Entry { policy: Policy::Instance, targets: Arc::from([*tg]), next: counter(tg.instance_ip) },
                    );
                }
                let all: Arc<[Target]> = Arc::from(targets);
                for (ip, policy) in [(t.rr_ip, Policy::RoundRobin), (t.closest_ip, Policy::Closest)] {
                    if let Some(ip) = ip {
                        new.insert(ip, Entry { policy, targets: all.clone(), next: counter(ip) });
                    }
                }
            }
        }
        {
            let mut f = self.flows.lock();
            let Flows { fwd, rev } = &mut *f;
            fwd.retain(|k, flow| {
                let keep = new.get(&k.b).is_some_and(|e| e.targets.contains(&flow.target));
                if !keep {
                    rev.remove(&FlowKey { proto: k.proto, a: k.a, ap: k.ap, b: flow.target.instance_ip, bp: k.bp });
                }
                keep
            });
        }
        *self.tables.write() = new;
        let tables = self.tables.read();
        let mut w = self.waiting.lock();
        let ready: Vec<Ipv4Addr> =
            w.keys().filter(|ip| tables.get(ip).is_some_and(|e| !e.targets.is_empty())).copied().collect();
        ready.into_iter().filter_map(|ip| w.remove(&ip)).flat_map(|x| x.packets).collect()
    }

    /// The addresses this worker needs tables for: those of live flows and waiting packets.
    pub fn interests(&self, now: Instant) -> Vec<Ipv4Addr> {
        let mut out: Vec<Ipv4Addr> = self.waiting.lock().keys().copied().collect();
        let f = self.flows.lock();
        out.extend(
            f.fwd.iter().filter(|(_, fl)| now.duration_since(fl.last) < self.timeouts.interest).map(|(k, _)| k.b),
        );
        drop(f);
        out.sort();
        out.dedup();
        out
    }

    /// Expires idle flows and packets that waited too long.
    pub fn sweep(&self, now: Instant) {
        let t = self.timeouts;
        {
            let mut f = self.flows.lock();
            let Flows { fwd, rev } = &mut *f;
            fwd.retain(|k, fl| {
                let idle = now.duration_since(fl.last);
                let limit = match (k.proto, fl.closing) {
                    (TCP, true) => t.tcp_closing,
                    (TCP, false) => t.tcp_idle,
                    _ => t.udp_idle,
                };
                let keep = idle < limit;
                if !keep {
                    rev.remove(&FlowKey { proto: k.proto, a: k.a, ap: k.ap, b: fl.target.instance_ip, bp: k.bp });
                }
                keep
            });
        }
        let mut w = self.waiting.lock();
        let before: usize = w.values().map(|x| x.packets.len()).sum();
        w.retain(|_, x| now.duration_since(x.since) < t.pending);
        let after: usize = w.values().map(|x| x.packets.len()).sum();
        self.stats.dropped.fetch_add((before - after) as u64, Ordering::Relaxed);
    }

    pub fn flow_count(&self) -> usize {
        self.flows.lock().fwd.len()
    }

    fn choose(&self, e: &Entry) -> Option<Target> {
        let n = e.targets.len();
        if n == 0 {
            return None;
        }
        match e.policy {
            Policy::Instance => Some(e.targets[0]),
            Policy::RoundRobin => Some(e.targets[e.next.fetch_add(1, Ordering::Relaxed) % n]),
            Policy::Closest => {
                // This worker first; then the lowest RTT (measured by this worker, else
                // predicted by coordinates); only when no RTT is known for any instance, the
                // great-circle distance. Unknown counts as far. Round-robin among the nearest
                // (within 1 ms, or 1 km).
                let me = self.me;
                let lat = self.latencies.read();
                let rtt = |t: &Target| -> Option<f64> {
                    lat.measured.get(t.host.ip()).copied().or_else(|| Some(lat.coord?.rtt(&t.coord?)))
                };
                let by_rtt = e.targets.iter().any(|t| rtt(t).is_some());
                let d = |t: &Target| -> f64 {
                    if t.host == me {
                        return 0.0;
                    }
                    if by_rtt {
                        return rtt(t).unwrap_or(f64::INFINITY);
                    }
                    match (self.my_location, t.location) {
                        (Some(a), Some(b)) => distance_km(a, b),
                        _ => f64::INFINITY,
                    }
                };
                let best = e.targets.iter().map(d).fold(f64::INFINITY, f64::min);
                let near: Vec<&Target> =
                    e.targets.iter().filter(|t| d(t) <= best + 1.0 || best.is_infinite()).collect();
                Some(*near[e.next.fetch_add(1, Ordering::Relaxed) % near.len()])
            }
        }
    }

    fn wait(&self, dst: Ipv4Addr, pkt: &[u8], now: Instant) -> Verdict {
        if pkt.len() > MAX_WAITING_LEN {
            return Verdict::Drop(DropReason::TooLarge);
        }
        let mut w = self.waiting.lock();
        let first = !w.contains_key(&dst);
        let entry = w.entry(dst).or_insert_with(|| Waiting { since: now, packets: Vec::new() });
        if entry.packets.len() >= MAX_WAITING {
            return Verdict::Drop(DropReason::QueueFull);
        }
        entry.packets.push(pkt.to_vec());
        drop(w);
        if first {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            (self.misses)(dst);
        }
        Verdict::Pending
    }

    /// Translates a packet a local instance sent to a semantic address.
    pub fn egress(&self, pkt: &mut [u8], now: Instant) -> Verdict {
        let v = self.egress_inner(pkt, now);
        match v {
            Verdict::Send(_) | Verdict::Local => self.stats.egress.fetch_add(1, Ordering::Relaxed),
            Verdict::Drop(_) => self.stats.dropped.fetch_add(1, Ordering::Relaxed),
            Verdict::Pending => 0,
        };
        v
    }

    fn egress_inner(&self, pkt: &mut [u8], now: Instant) -> Verdict {
        let Some(p) = packet::parse(pkt) else { return Verdict::Drop(DropReason::Malformed) };
        if !is_semantic(p.dst) {
            return Verdict::Drop(DropReason::NotSemantic);
        }
        let key = FlowKey { proto: p.proto, a: p.src, ap: p.sport, b: p.dst, bp: p.dport };
        let closing = p.tcp_flags & (TCP_FIN | TCP_RST) != 0;
        // A new connection from a port whose last connection closed: a new flow, balanced
        // anew (the kernel reuses a client port at once when the server closed first).
        let new_conn = p.proto == TCP && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        let hit = {
            let mut f = self.flows.lock();
            if new_conn
                && f.fwd.get(&key).is_some_and(|fl| fl.closing)
                && let Some(old) = f.fwd.remove(&key)
            {
                let rev = FlowKey { proto: key.proto, a: key.a, ap: key.ap, b: old.target.instance_ip, bp: key.bp };
                f.rev.remove(&rev);
            }
            f.fwd.get_mut(&key).map(|fl| {
                fl.last = now;
                fl.closing |= closing;
                (fl.target, fl.src_instance_ip)
            })
        };
        let (target, src_iip) = match hit {
            Some(x) => x,
            None => {
                let Some(src_iip) = self.locals.read().get(&p.src).copied() else {
                    return Verdict::Drop(DropReason::UnknownSource);
                };
                let chosen = self.tables.read().get(&p.dst).and_then(|e| self.choose(e));
                let Some(target) = chosen else { return self.wait(p.dst, pkt, now) };
                let mut f = self.flows.lock();
                f.fwd.insert(key, Flow { target, src_instance_ip: src_iip, last: now, closing });
                f.rev.insert(
                    FlowKey { proto: p.proto, a: p.src, ap: p.sport, b: target.instance_ip, bp: p.dport },
                    p.dst,
                );
                (target, src_iip)
            }
        };
        packet::rewrite(pkt, &p, src_iip, target.ns_ip);
        if target.host == self.me { Verdict::Local } else { Verdict::Send(target.host) }
    }

    /// Translates a packet that arrived through the tunnel (or a hairpin). False: drop it.
    pub fn ingress(&self, pkt: &mut [u8]) -> bool {
        let ok = self.ingress_inner(pkt).is_some();
        let c = if ok { &self.stats.ingress } else { &self.stats.dropped };
        c.fetch_add(1, Ordering::Relaxed);
        ok
    }

    fn ingress_inner(&self, pkt: &mut [u8]) -> Option<()> {
        let p: Packet = packet::parse(pkt)?;
        // Only to an instance of this worker, and only from a semantic address: the tunnel
        // cannot be used to reach anything else.
        if !in_net(p.dst, self.subnet) || !is_semantic(p.src) {
            return None;
        }
        let key = FlowKey { proto: p.proto, a: p.dst, ap: p.dport, b: p.src, bp: p.sport };
        let dialled = self.flows.lock().rev.get(&key).copied();
        if let Some(svc) = dialled
            && svc != p.src
        {
            packet::rewrite(pkt, &p, svc, p.dst);
        }
        Some(())
    }
}

#[cfg(test)]
mod tests;
