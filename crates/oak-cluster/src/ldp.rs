//! The cluster's part of latency and distance-aware placement: which peers each worker
//! probes (some of its own cluster, a few landmarks of other clusters, and the workers of
//! the S2S targets it must watch), where users are in the coordinate space (measured by a
//! few workers and multilaterated), and the summary of its workers that the root sees.
//!
//! Pure bookkeeping: inputs are method calls with the time, outputs are messages to publish.

use crate::core::{Out, WorkerRec};
use oak_api::ldp::{
    Coord, LdpSummary, MAX_MEASURE_TARGETS, MAX_PEERS, MAX_SUMMARY_CIRCLES, MeasureReply, MeasureRequest, ProbePeer,
    ProbePeers,
};
use oak_api::net::parse_location;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// Peers of the worker's own cluster it probes.
pub const SAME_CLUSTER_PEERS: usize = 16;
/// Of those, the nearest by coordinates (the rest are random).
pub const NEAR_PEERS: usize = 8;
/// The nearest peers are chosen again this often (seconds).
const NEAR_EPOCH_S: f64 = 120.0;
/// Landmarks of other clusters it probes.
pub const FOREIGN_PEERS: usize = 4;
/// Workers of this cluster other clusters' workers probe.
pub const LANDMARKS: usize = 8;
/// The random choice of peers changes this often (seconds), so every pair is measured over
/// time without any worker probing more than [`MAX_PEERS`].
const PEER_EPOCH_S: f64 = 600.0;
/// A peer set is sent again after this long even if unchanged (a lost message is repaired).
const PEERS_RESEND_S: f64 = 300.0;
/// Workers asked to measure a user.
const MEASURERS: usize = 5;
/// A user's coordinate is measured again after this long.
const USER_TTL_S: f64 = 600.0;
/// Do not ask again for a user sooner than this.
const USER_ASK_EVERY_S: f64 = 5.0;
/// Users remembered.
const MAX_USERS: usize = 1024;
/// The summary is computed again after this long.
const SUMMARY_EVERY_S: f64 = 10.0;

/// FNV-1a: a stable hash for deterministic choices (no dependence on hash-map order).
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[derive(Clone, Debug, Default)]
struct UserLoc {
    coord: Option<Coord>,
    /// The latest RTT from each worker that measured it, with that worker's coordinate then
    /// and when it answered.
    obs: BTreeMap<String, (Coord, f64, f64)>,
    asked: f64,
    located: f64,
    /// When this round of locating it began (first ask, or the last refresh).
    round: f64,
    /// Workers predicted near it that were asked to measure it directly, and when.
    refine_asked: BTreeMap<String, f64>,
}

/// Workers predicted nearest to a user that measure it before an instance is placed near it.
pub const REFINERS: usize = 4;
/// How long a placement waits for their answers (seconds).
const REFINE_WAIT_S: f64 = 3.0;
/// Most workers asked to refine one user's location.
const MAX_REFINE_ASKS: usize = 3 * REFINERS;
/// Measurements kept per user (the oldest go first).
const MAX_OBS: usize = 2 * MEASURERS + MAX_REFINE_ASKS;
/// A user no worker could measure for this long is unreachable (seconds): its constraint is
/// relaxed when soft and refused (so that the root tries another cluster) when hard.
pub const UNREACHABLE_AFTER_S: f64 = 10.0;
/// Measurement requests awaiting an answer, at most; answers to no request are ignored.
const MAX_PENDING: usize = 4096;

#[derive(Debug, Default)]
pub struct Ldp {
    /// Landmarks of the other clusters, from the root.
    pub foreign: Vec<ProbePeer>,
    sent_peers: HashMap<String, (Vec<ProbePeer>, f64)>,
    /// Each worker's nearest peers, and the epoch they were chosen in.
    near: HashMap<String, (i64, Vec<String>)>,
    users: HashMap<IpAddr, UserLoc>,
    next_request: u64,
    /// Requests sent and not answered yet: number → (worker, targets).
    pending: BTreeMap<u64, (String, Vec<IpAddr>)>,
    summary: LdpSummary,
    summary_at: Option<f64>,
}

fn out<T: serde::Serialize>(topic: String, msg: &T) -> Option<Out> {
    match serde_json::to_vec(msg) {
        Ok(payload) => Some(Out { topic, payload }),
        Err(e) => {
            tracing::error!(topic, error = %e, "cannot encode an LDP message");
            None
        }
    }
}

fn probe_of(w: &WorkerRec) -> Option<ProbePeer> {
    w.info.as_ref().and_then(|i| i.probe).map(|addr| ProbePeer { id: w.id.clone(), addr })
}

fn coord_of(w: &WorkerRec) -> Option<Coord> {
    w.info.as_ref().and_then(|i| i.coord)
}

impl Ldp {
    /// The peers `node` should probe now, if they differ from what it was last sent (or that
    /// was long ago): `watch` first (the workers of the S2S targets of its instances), a few
    /// foreign landmarks, then same-cluster workers: half of them the nearest by the
    /// coordinates (chosen again every [`NEAR_EPOCH_S`]; Vivaldi predicts short RTTs well
    /// only from near neighbours), the rest in a pseudo-random order that changes every
    /// [`PEER_EPOCH_S`] (far neighbours keep the space in shape).
    pub fn peers_for<'a>(
        &mut self,
        node: &str,
        workers: impl Iterator<Item = &'a WorkerRec>,
        watch: &[ProbePeer],
        now: f64,
    ) -> Option<Out> {
        let epoch = ((now / PEER_EPOCH_S).floor() as i64).to_le_bytes();
        let near_epoch = (now / NEAR_EPOCH_S).floor() as i64;
        let workers: Vec<&WorkerRec> = workers.filter(|w| w.id != node || coord_of(w).is_some()).collect();
        let me = workers.iter().find(|w| w.id == node).and_then(|w| coord_of(w));
        let mut same: Vec<(u64, ProbePeer)> = workers
            .iter()
            .filter(|w| w.id != node)
            .filter_map(|w| probe_of(w))
            .map(|p| (fnv(&[node.as_bytes(), p.id.as_bytes(), &epoch]), p))
            .collect();
        same.sort();
        // The nearest, kept for an epoch (so that drift does not resend the set every tick).
        let near: Vec<String> = match (me, self.near.get(node)) {
            (_, Some((e, ids))) if *e == near_epoch => ids.clone(),
            (Some(c), _) => {
                let by_rtt: Vec<(f64, &str)> = workers
                    .iter()
                    .filter(|w| w.id != node && probe_of(w).is_some())
                    .filter_map(|w| Some((coord_of(w)?.rtt(&c), w.id.as_str())))
                    .filter(|(d, _)| d.is_finite())
                    .collect();
                let ids: Vec<String> = oak_ldp::least_k(by_rtt, NEAR_PEERS, |a, b| a.cmp(b))
                    .into_iter()
                    .map(|(_, id)| id.to_owned())
                    .collect();
                self.near.insert(node.to_owned(), (near_epoch, ids.clone()));
                ids
            }
            (None, _) => Vec::new(),
        };
        let mut foreign: Vec<(u64, &ProbePeer)> = self
            .foreign
            .iter()
            .filter(|p| p.id != node)
            .map(|p| (fnv(&[node.as_bytes(), p.id.as_bytes()]), p))
            .collect();
        foreign.sort();
        let mut peers: Vec<ProbePeer> = Vec::new();
        let push = |p: &ProbePeer, peers: &mut Vec<ProbePeer>| {
            if peers.len() < MAX_PEERS && p.id != node && !peers.iter().any(|q| q.id == p.id) {
                peers.push(p.clone());
            }
        };
        for p in watch {
            push(p, &mut peers);
        }
        for (_, p) in foreign.iter().take(FOREIGN_PEERS) {
            push(p, &mut peers);
        }
        let before = peers.len();
        for (_, p) in same.iter().filter(|(_, p)| near.contains(&p.id)) {
            push(p, &mut peers);
        }
        let limit = peers.len().max(before + SAME_CLUSTER_PEERS);
        for (_, p) in &same {
            if peers.len() >= limit {
                break;
            }
            push(p, &mut peers);
        }
        peers.sort();
        if let Some((last, at)) = self.sent_peers.get(node)
            && *last == peers
            && now - at < PEERS_RESEND_S
        {
            return None;
        }
        self.sent_peers.insert(node.to_owned(), (peers.clone(), now));
        out(oak_api::node::topic_peers(node), &ProbePeers { peers })
    }

    /// A worker went: forget what it was sent.
    pub fn forget(&mut self, node: &str) {
        self.sent_peers.remove(node);
        self.near.remove(node);
    }

    /// The workers other clusters probe: a stable choice of [`LANDMARKS`] among those with a
    /// probe address.
    pub fn landmarks<'a>(workers: impl Iterator<Item = &'a WorkerRec>) -> Vec<ProbePeer> {
        let mut all: Vec<(u64, ProbePeer)> =
            workers.filter_map(probe_of).map(|p| (fnv(&[p.id.as_bytes()]), p)).collect();
        all.sort();
        all.into_iter().take(LANDMARKS).map(|(_, p)| p).collect()
    }

    /// Where `user` is in the coordinate space, if it has been located.
    pub fn user_coord(&self, user: IpAddr) -> Option<Coord> {
        self.users.get(&user).and_then(|u| u.coord)
    }

    /// Where `user` is, and the RTTs workers measured to it (by worker id).
    pub fn user_with_measurements(&self, user: IpAddr) -> Option<(Coord, Vec<(String, f64)>)> {
        let u = self.users.get(&user)?;
        Some((u.coord?, u.obs.iter().map(|(w, (_, ms, _))| (w.clone(), *ms)).collect()))
    }

    /// The RTT `worker` itself measured to `user`, if it did.
    pub fn measured(&self, user: IpAddr, worker: &str) -> Option<f64> {
        self.users.get(&user).and_then(|u| u.obs.get(worker)).map(|(_, ms, _)| *ms)
    }

    /// Asks a few workers, spread over the coordinate space, to measure the users not located
    /// yet (or long ago); at most once per [`USER_ASK_EVERY_S`] per user.
    pub fn locate<'a>(&mut self, users: &[IpAddr], workers: impl Iterator<Item = &'a WorkerRec>, now: f64) -> Vec<Out> {
        let due: Vec<IpAddr> = users
            .iter()
            .copied()
            .filter(|u| {
                self.users.get(u).is_none_or(|l| {
                    (l.coord.is_none() || now - l.located > USER_TTL_S) && now - l.asked >= USER_ASK_EVERY_S
                })
            })
            .take(MAX_MEASURE_TARGETS)
            .collect();
        if due.is_empty() {
            return Vec::new();
        }
        let with_coords: Vec<(&WorkerRec, Coord)> = workers.filter_map(|w| coord_of(w).map(|c| (w, c))).collect();
        // Farthest-point choice: measurers far apart pin a user down best.
        let mut chosen: Vec<(&WorkerRec, Coord)> = Vec::new();
        if let Some(first) = with_coords.iter().min_by_key(|(w, _)| fnv(&[w.id.as_bytes()])) {
            chosen.push(*first);
        }
        while chosen.len() < MEASURERS.min(with_coords.len()) {
            let next = with_coords.iter().filter(|(w, _)| !chosen.iter().any(|(c, _)| c.id == w.id)).max_by(|a, b| {
                let d = |x: &Coord| chosen.iter().map(|(_, c)| c.rtt(x)).fold(f64::INFINITY, f64::min);
                d(&a.1).total_cmp(&d(&b.1)).then_with(|| b.0.id.cmp(&a.0.id))
            });
            match next {
                Some(n) => chosen.push(*n),
                None => break,
            }
        }
        if chosen.is_empty() {
            return Vec::new();
        }
        self.evict(due.len());
        for u in &due {
            let l = self.users.entry(*u).or_insert_with(|| UserLoc { round: f64::MIN, ..UserLoc::default() });
            l.asked = now;
            // A new round (first ask, or after a refresh) starts the unreachable clock.
            if l.round == f64::MIN {
                l.round = now;
            }
        }
        chosen.iter().filter_map(|(w, _)| self.measure_request(&w.id, due.clone())).collect()
    }

    /// A request to `worker` to measure `targets` (also used to watch the users of its
    /// instances).
    pub fn measure_request(&mut self, worker: &str, targets: Vec<IpAddr>) -> Option<Out> {
        self.next_request += 1;
        while self.pending.len() >= MAX_PENDING {
            self.pending.pop_first();
        }
        self.pending.insert(self.next_request, (worker.to_owned(), targets.clone()));
        let req = MeasureRequest { request_id: format!("m{}", self.next_request), targets };
        out(oak_api::node::topic_measure(worker), &req)
    }

    /// Whether no worker could measure `user` for [`UNREACHABLE_AFTER_S`].
    pub fn unreachable(&self, user: IpAddr, now: f64) -> bool {
        self.users
            .get(&user)
            .is_some_and(|l| l.obs.is_empty() && l.round > f64::MIN && now - l.round >= UNREACHABLE_AFTER_S)
    }

    fn evict(&mut self, room: usize) {
        while self.users.len() + room > MAX_USERS {
            let Some(oldest) = self.users.iter().min_by(|a, b| a.1.asked.total_cmp(&b.1.asked)).map(|(k, _)| *k) else {
                break;
            };
            self.users.remove(&oldest);
        }
    }

    /// A worker's measurements: users it was asked about are located again. Addresses this
    /// cluster never asked about are ignored (a worker cannot fill the table).
    pub fn on_measured(&mut self, node: &str, node_coord: Option<Coord>, reply: &MeasureReply, now: f64) {
        // Only the answer to a request this cluster sent to this worker, once, and only
        // about the addresses it asked for.
        let Some(n) = reply.request_id.strip_prefix('m').and_then(|n| n.parse::<u64>().ok()) else { return };
        let Some((worker, _)) = self.pending.get(&n) else { return };
        if worker != node {
            return;
        }
        let Some((_, targets)) = self.pending.remove(&n) else { return };
        let Some(wc) = node_coord else { return };
        let mut changed: Vec<IpAddr> = Vec::new();
        for m in reply.results.iter().take(MAX_MEASURE_TARGETS) {
            let addr = m.addr.to_canonical();
            let (Some(ms), true, Some(u)) = (m.ms, targets.contains(&addr), self.users.get_mut(&addr)) else {
                continue;
            };
            if !(ms.is_finite() && ms > 0.0 && ms <= oak_api::ldp::MAX_COORD_MS) {
                continue;
            }
            u.obs.insert(node.to_owned(), (wc, ms, now));
            while u.obs.len() > MAX_OBS {
                let Some(oldest) = u.obs.iter().min_by(|a, b| a.1.2.total_cmp(&b.1.2)).map(|(k, _)| k.clone()) else {
                    break;
                };
                u.obs.remove(&oldest);
            }
            if !changed.contains(&addr) {
                changed.push(addr);
            }
        }
        // Each user placed once per answer.
        for addr in changed {
            let Some(u) = self.users.get_mut(&addr) else { continue };
            let obs: Vec<(Coord, f64)> = u.obs.values().map(|(c, ms, _)| (*c, *ms)).collect();
            u.coord = place_user(&obs);
            u.located = now;
            tracing::debug!(user = %addr, measurements = obs.len(), coord = ?u.coord, "user located");
        }
    }

    /// Measure `users` again at the next chance (their RTT changed: a violation was seen).
    pub fn refresh(&mut self, users: &[IpAddr]) {
        for u in users {
            if let Some(l) = self.users.get_mut(u) {
                l.located = f64::MIN;
                l.asked = f64::MIN;
                l.round = f64::MIN;
                l.refine_asked.clear();
                // What was measured before the change no longer holds (the coordinate stays
                // until new answers come).
                l.obs.clear();
            }
        }
    }

    /// Before an instance is placed near `user`: the [`REFINERS`] workers predicted nearest to
    /// it measure it directly (a measurement stands instead of a prediction, and coordinates
    /// over-predict short RTTs). Returns the requests to send, and whether to wait for answers
    /// (at most [`REFINE_WAIT_S`]; a worker that does not answer is not waited for again).
    pub fn refine<'a>(
        &mut self,
        user: IpAddr,
        workers: impl Iterator<Item = &'a WorkerRec>,
        now: f64,
    ) -> (Vec<Out>, bool) {
        let Some(u) = self.users.get(&user) else { return (Vec::new(), false) };
        let Some(uc) = u.coord else { return (Vec::new(), false) };
        let near: Vec<(f64, &str)> = workers
            .filter_map(|w| Some((coord_of(w)?.rtt(&uc), w.id.as_str())))
            .filter(|(d, _)| d.is_finite())
            .collect();
        let missing: Vec<String> = oak_ldp::least_k(near, REFINERS, |a, b| a.cmp(b))
            .into_iter()
            .map(|(_, id)| id)
            .filter(|id| !u.obs.contains_key(*id))
            .map(str::to_owned)
            .collect();
        let pending =
            missing.iter().any(|w| u.refine_asked.get(w).is_some_and(|t| now - t < REFINE_WAIT_S && now >= *t));
        let fresh: Vec<String> = missing.into_iter().filter(|w| !u.refine_asked.contains_key(w)).collect();
        if fresh.is_empty() || u.refine_asked.len() >= MAX_REFINE_ASKS {
            return (Vec::new(), pending);
        }
        let mut outs = Vec::new();
        for w in fresh.iter().take(MAX_REFINE_ASKS - u.refine_asked.len()) {
            outs.extend(self.measure_request(w, vec![user]));
        }
        if let Some(u) = self.users.get_mut(&user) {
            for w in fresh {
                u.refine_asked.insert(w, now);
            }
        }
        (outs, true)
    }

    /// Whether any of `users` is being located again (after [`refresh`](Self::refresh)).
    pub fn relocating(&self, users: &[IpAddr], now: f64) -> bool {
        users.iter().any(|u| self.users.get(u).is_some_and(|l| l.located == f64::MIN) && !self.unreachable(*u, now))
    }

    /// Whether any of `users` was asked about (and so is being measured).
    pub fn asked(&self, users: &[IpAddr]) -> bool {
        users.iter().any(|u| self.users.get(u).is_some_and(|l| l.asked > f64::MIN))
    }

    /// The summary last computed by [`refresh_summary`](Self::refresh_summary).
    pub fn summary(&self) -> &LdpSummary {
        &self.summary
    }

    /// Computes the area and coordinate summary of `workers` again, at most every
    /// [`SUMMARY_EVERY_S`].
    pub fn refresh_summary<'a>(&mut self, workers: impl Iterator<Item = &'a WorkerRec>, now: f64) {
        if self.summary_at.is_none_or(|at| now - at >= SUMMARY_EVERY_S || now < at) {
            let (mut locations, mut coords) = (Vec::new(), Vec::new());
            for w in workers {
                if let Some(l) = w.reg.location.as_deref().and_then(parse_location) {
                    locations.push(l);
                }
                if let Some(c) = coord_of(w) {
                    coords.push(c);
                }
            }
            self.summary = oak_ldp::summary::summarize(&locations, &coords, MAX_SUMMARY_CIRCLES);
            self.summary_at = Some(now);
        }
    }
}

/// A user's coordinate from RTTs measured by workers at known coordinates: multilateration
/// with three or more; with fewer, the user sits at the nearest measurer, its height making
/// up the measured RTT (exact from that worker, a fair guess from the others).
pub fn place_user(obs: &[(Coord, f64)]) -> Option<Coord> {
    if obs.len() >= 3
        && let Some(c) = oak_ldp::locate::multilaterate(obs)
    {
        return Some(c);
    }
    let (c, ms) = obs.iter().min_by(|a, b| a.1.total_cmp(&b.1))?;
    Some(Coord::new(c.x, c.y, (ms - c.h).max(1e-3), 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oak_api::node::{NodeInfo, RegisterRequest};

    fn worker(id: &str, coord: Option<Coord>, port: u16) -> WorkerRec {
        let mut w = WorkerRec::new(id.into(), RegisterRequest { name: id.into(), ..Default::default() });
        w.info = Some(NodeInfo {
            probe: Some(format!("10.0.0.{}:{port}", port % 200 + 1).parse().unwrap()),
            coord,
            ..Default::default()
        });
        w
    }

    /// The answer of `worker` to the request it got in `outs`, with `ms` for `user`.
    fn answer(outs: &[Out], worker: &str, user: IpAddr, ms: f64) -> MeasureReply {
        let o = outs.iter().find(|o| o.topic == format!("nodes/{worker}/control/measure")).unwrap();
        let req: MeasureRequest = serde_json::from_slice(&o.payload).unwrap();
        MeasureReply {
            request_id: req.request_id,
            results: vec![oak_api::ldp::Measured { addr: user, ms: Some(ms), how: "icmp".into() }],
        }
    }

    fn asked(outs: &[Out]) -> Vec<String> {
        outs.iter()
            .filter_map(|o| Some(o.topic.strip_prefix("nodes/")?.strip_suffix("/control/measure")?.to_owned()))
            .collect()
    }

    #[test]
    fn peers_are_bounded_deterministic_and_sent_only_on_change() {
        let ws: Vec<WorkerRec> = (0..40).map(|i| worker(&format!("w{i:02}"), None, 1000 + i)).collect();
        let mut l = Ldp {
            foreign: (0..10).map(|i| worker(&format!("f{i}"), None, 2000 + i)).filter_map(|w| probe_of(&w)).collect(),
            ..Default::default()
        };
        let watch = vec![probe_of(&ws[39]).unwrap()];
        let o = l.peers_for("w00", ws.iter(), &watch, 0.0).unwrap();
        let p: ProbePeers = serde_json::from_slice(&o.payload).unwrap();
        assert_eq!(p.peers.len(), 1 + FOREIGN_PEERS + SAME_CLUSTER_PEERS);
        assert!(p.peers.iter().any(|x| x.id == "w39"), "the watched worker is probed");
        assert!(!p.peers.iter().any(|x| x.id == "w00"), "never itself");
        assert_eq!(p.peers.iter().filter(|x| x.id.starts_with('f')).count(), FOREIGN_PEERS);
        assert!(l.peers_for("w00", ws.iter(), &watch, 10.0).is_none(), "unchanged: not sent again");
        assert!(l.peers_for("w00", ws.iter(), &watch, PEERS_RESEND_S + 1.0).is_some(), "resent after a while");
        let mut l2 = Ldp { foreign: l.foreign.clone(), ..Default::default() };
        let o2 = l2.peers_for("w00", ws.iter(), &watch, 0.0).unwrap();
        assert_eq!(o.payload, o2.payload, "deterministic");
    }

    #[test]
    fn users_are_located_from_the_workers_that_measured_them() {
        let coords = [
            Coord::new(0.0, 0.0, 1.0, 0.1),
            Coord::new(40.0, 0.0, 1.0, 0.1),
            Coord::new(0.0, 40.0, 1.0, 0.1),
            Coord::new(40.0, 40.0, 1.0, 0.1),
        ];
        let ws: Vec<WorkerRec> =
            coords.iter().enumerate().map(|(i, c)| worker(&format!("w{i}"), Some(*c), 1000 + i as u16)).collect();
        let user: IpAddr = "192.0.2.9".parse().unwrap();
        let truth = Coord::new(10.0, 5.0, 2.0, 0.0);
        let mut l = Ldp::default();
        let asks = l.locate(&[user], ws.iter(), 0.0);
        assert_eq!(asks.len(), 4, "every worker with a coordinate (up to {MEASURERS}) is asked");
        assert!(l.locate(&[user], ws.iter(), 1.0).is_empty(), "not asked again at once");
        // A worker answering about an address nobody asked for, to a request it did not get,
        // or twice, changes nothing.
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        let mut r = answer(&asks, "w0", stranger, 5.0);
        l.on_measured("w0", Some(coords[0]), &r, 1.0);
        assert!(l.user_coord(stranger).is_none() && l.user_coord(user).is_none());
        r.request_id = "m999".into();
        r.results[0].addr = user;
        l.on_measured("w0", Some(coords[0]), &r, 1.0);
        assert!(l.user_coord(user).is_none());
        let asks = l.locate(&[user], ws.iter(), 6.0);
        for (i, c) in coords.iter().enumerate() {
            let w = format!("w{i}");
            l.on_measured(&w, Some(*c), &answer(&asks, &w, user, c.rtt(&truth)), 7.0);
            // The same answer again is ignored.
            l.on_measured(&w, Some(*c), &answer(&asks, &w, user, 0.01), 7.0);
        }
        let got = l.user_coord(user).unwrap();
        for c in &coords {
            let (p, t) = (got.rtt(c), truth.rtt(c));
            assert!((p - t).abs() / t < 0.2, "predicted {p}, true {t}");
        }
        assert_eq!(l.measured(user, "w1"), Some(coords[1].rtt(&truth)));
    }

    #[test]
    fn a_user_no_worker_can_measure_is_unreachable_after_a_while() {
        let ws: Vec<WorkerRec> = (0..3)
            .map(|i| worker(&format!("w{i}"), Some(Coord::new(f64::from(i) * 10.0, 0.0, 1.0, 0.1)), 1000 + i as u16))
            .collect();
        let user: IpAddr = "192.0.2.9".parse().unwrap();
        let mut l = Ldp::default();
        let asks = l.locate(&[user], ws.iter(), 100.0);
        for w in asked(&asks) {
            let mut r = answer(&asks, &w, user, 1.0);
            r.results[0].ms = None;
            l.on_measured(&w, Some(Coord::default()), &r, 100.5);
        }
        assert!(!l.unreachable(user, 105.0));
        assert!(l.unreachable(user, 100.0 + UNREACHABLE_AFTER_S));
        // An answer at last: reachable again.
        let asks = l.locate(&[user], ws.iter(), 111.0);
        let w = asked(&asks)[0].clone();
        l.on_measured(&w, Some(Coord::default()), &answer(&asks, &w, user, 4.0), 111.5);
        assert!(!l.unreachable(user, 112.0));
    }

    #[test]
    fn one_measurement_places_the_user_at_its_measurer() {
        let c = Coord::new(5.0, 5.0, 2.0, 0.1);
        let u = place_user(&[(c, 12.0)]).unwrap();
        assert!((u.rtt(&c) - 12.0).abs() < 1e-9);
        assert_eq!(place_user(&[]), None);
    }

    #[test]
    fn half_the_peers_are_the_nearest_by_coordinates() {
        // w00 at the origin; w01..w08 within 5 ms of it; 30 more far away.
        let mut ws: Vec<WorkerRec> = Vec::new();
        for i in 0..39u16 {
            let c = match i {
                0 => Coord::new(0.0, 0.0, 1.0, 0.1),
                1..=8 => Coord::new(f64::from(i) * 0.5, 0.0, 1.0, 0.1),
                _ => Coord::new(100.0 + f64::from(i), 50.0, 1.0, 0.1),
            };
            ws.push(worker(&format!("w{i:02}"), Some(c), 1000 + i));
        }
        let mut l = Ldp::default();
        let o = l.peers_for("w00", ws.iter(), &[], 0.0).unwrap();
        let p: ProbePeers = serde_json::from_slice(&o.payload).unwrap();
        assert_eq!(p.peers.len(), SAME_CLUSTER_PEERS);
        let near = p
            .peers
            .iter()
            .filter(|x| ["w01", "w02", "w03", "w04", "w05", "w06", "w07", "w08"].contains(&x.id.as_str()))
            .count();
        assert_eq!(near, NEAR_PEERS, "{:?}", p.peers);
        // Coordinates drift: the near set stays for its epoch, so nothing is resent.
        ws[3].info.as_mut().unwrap().coord = Some(Coord::new(300.0, 0.0, 1.0, 0.1));
        assert!(l.peers_for("w00", ws.iter(), &[], 10.0).is_none());
    }

    #[test]
    fn the_workers_predicted_nearest_measure_a_user_before_placement() {
        let coords: Vec<Coord> = (0..8).map(|i| Coord::new(f64::from(i) * 10.0, 0.0, 1.0, 0.1)).collect();
        let ws: Vec<WorkerRec> =
            coords.iter().enumerate().map(|(i, c)| worker(&format!("w{i}"), Some(*c), 1000 + i as u16)).collect();
        let user: IpAddr = "192.0.2.9".parse().unwrap();
        let mut l = Ldp::default();
        assert_eq!(l.refine(user, ws.iter(), 0.0), (Vec::new(), false), "not located: nothing to refine");
        let asks = l.locate(&[user], ws.iter(), 0.0);
        // The user is next to w6 (3 ms), 10 ms further per worker away from it.
        let truth = |i: usize| 3.0 + 10.0 * (i as f64 - 6.0).abs();
        let first = asked(&asks);
        for w in &first {
            let i: usize = w[1..].parse().unwrap();
            l.on_measured(w, Some(coords[i]), &answer(&asks, w, user, truth(i)), 0.5);
        }
        let (asks, wait) = l.refine(user, ws.iter(), 1.0);
        assert!(wait || asks.is_empty());
        let refiners = asked(&asks);
        for w in &refiners {
            assert!(!first.contains(w), "{w} had measured already");
            let i: usize = w[1..].parse().unwrap();
            assert!((4..=7).contains(&i), "{w} is not among the nearest");
        }
        if !refiners.is_empty() {
            assert_eq!(l.refine(user, ws.iter(), 2.0), (Vec::new(), true), "waits for them");
            assert_eq!(l.refine(user, ws.iter(), 4.5), (Vec::new(), false), "but not for ever");
        }
        for w in &refiners {
            let i: usize = w[1..].parse().unwrap();
            l.on_measured(w, Some(coords[i]), &answer(&asks, w, user, truth(i)), 5.0);
        }
        // Whoever measured first, the four workers nearest to the user have measured it now.
        let (_, m) = l.user_with_measurements(user).unwrap();
        for w in ["w4", "w5", "w6", "w7"] {
            assert!(m.iter().any(|(id, _)| id == w), "{w} never measured: {m:?}");
        }
        let (_, m) = l.user_with_measurements(user).unwrap();
        assert!(m.contains(&("w6".to_owned(), 3.0)), "{m:?}");
    }
}
