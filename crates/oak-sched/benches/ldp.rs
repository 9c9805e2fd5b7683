//! Latency and distance-aware placement (LDP) against resource-only matching (ROM), in the
//! setting of the paper's Fig. 10 (ATC'23 §5.4), simulated over a synthetic latency space.
//!
//! `cargo bench -p oak-sched --bench ldp [-- N ...]` (default: 10 50 100 500 10000 workers;
//! 5 runs, 3 at 10,000; `LDP_RUNS` and `LDP_EXPERIMENTS` (default 1000) override the runs and
//! the experiments per run and kind; `LDP_SIM_MIN` the simulated minutes of Vivaldi;
//! `LDP_FIXED_MS` the fixed threshold, default [`FIXED_MS`]).
//!
//! Per run (seeded, deterministic but for the decision times), mirroring what the system does:
//! 1. A space ([`oak_ldp::Space`]) of N workers and [`USERS`] users around [`SITES`] European
//!    cities; users are nodes that do not run Vivaldi.
//! 2. Vivaldi from a cold start, as the real workers probe (`crates/oak-worker/src/probe.rs`):
//!    one round every [`PROBE_INTERVAL_S`], each round the next few peers in turn so that each
//!    is probed about every [`CYCLE_S`]; a pong carries the peer's system coordinate; a worker
//!    reports its application-level coordinate once some peer gave [`MIN_SAMPLES`] samples,
//!    and the cluster and the scheduler see that one. The peers are the cluster's choice
//!    (`crates/oak-cluster/src/ldp.rs`, `Ldp::peers_for`), made again whenever its tick
//!    reaches the worker ([`PEERS_PER_S`] workers a second): of [`SAME_CLUSTER_PEERS`],
//!    [`NEAR_PEERS`] are the nearest by the reported coordinates (chosen again every
//!    [`NEAR_EPOCH_S`]; none before the worker reports a coordinate), the rest the first of a
//!    random order drawn again every [`PEER_EPOCH_S`]. [`SIM_S`] of simulated time. One
//!    cluster holds all N workers, so there are no foreign landmarks.
//! 3. Workers with heterogeneous capacity and a random background load.
//! 4. S2U experiments: a user located as the cluster does (`Ldp::locate`, `Ldp::on_measured`):
//!    [`MEASURERS`] workers chosen farthest-point in the space each measure it (the least of
//!    [`TRIES`] pings), then multilateration. Then, before the placement (`Ldp::refine`,
//!    `Core::place`), the [`REFINERS`] workers predicted nearest to the user that have not
//!    measured it are asked to; with their answers (which come at once here) the user is
//!    multilaterated again from all measurements kept (at most [`MAX_USER_OBS`]; beyond, the
//!    first by worker id goes), and the predicted nearest [`REFINERS`] are checked again: more
//!    rounds while new workers enter them, at most [`MAX_REFINE_ASKS`] asked in all. One hard
//!    objective whose measured RTTs are the ones kept (they stand instead of predictions for
//!    those workers, as `objectives::resolve` passes them).
//! 5. S2S experiments: a target instance on a random worker, a dependent service near it, with
//!    the RTTs the workers that probed it report as measured ones; the target's worker is
//!    excluded (else co-location makes the best RTT 0).
//! 6. Two thresholds per experiment: *relative*, the best true RTT of a worker that fits ×
//!    U(1, 2) (always feasible; the primary, harder test), and *fixed*, [`FIXED_MS`] as the
//!    paper's SLAs (counted only where some worker that fits is within it). LDP places with the
//!    objective, ROM (best fit) without; both on the same snapshot, nothing reserved between
//!    experiments.
//!
//! Switches back to what the system did before, for comparison (see [`Variant`]):
//! `LDP_PEERS=random` (16 random peers), `LDP_LOCATE=plain` (no refinement: the measurers'
//! multilateration only); and a what-if, `LDP_COORDS=system` (the scheduler sees system
//! instead of application-level coordinates).
//!
//! Prints markdown tables per N and writes CSV files under `target/ldp-bench/` (a variant's
//! under `target/ldp-bench/variant-NAME/`); `scripts/plot-ldp.py` draws `docs/ldp-fig10.png`,
//! `docs/ldp-decision-time.png` and `docs/ldp-vivaldi.png` from them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use oak_api::ldp::{Coord, CoordCircle, GeoCircle, MAX_COORD_MS};
use oak_ldp::rng::{next_below, next_f64, next_u64};
use oak_ldp::{Config, Space, SpaceParams, Vivaldi, multilaterate};
use oak_sched::{Candidate, Objective, Point, Policy, Request, Resources, Slot, Snapshot};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

const SIZES: [usize; 5] = [10, 50, 100, 500, 10_000];
/// Users in each space (each S2U experiment takes the next).
const USERS: usize = 1000;
/// Cities the workers and users are grouped around (the 24 named ones of `oak_ldp::space`).
const SITES: usize = 24;
/// Size of a probe datagram, ping and pong alike (`oak-worker` `probe::PROBE_LEN`).
const PROBE_LEN: f64 = 48.0;
/// IPv4 and UDP headers of a datagram.
const IP_UDP_HEADERS: f64 = 28.0;
/// A round of probes (`probe::PROBE_INTERVAL`).
const PROBE_INTERVAL_S: f64 = 2.0;
/// About how often each peer is probed (`probe::CYCLE`).
const CYCLE_S: f64 = 15.0;
/// Most probes a second (`probe::MAX_PROBES_PER_S`).
const MAX_PROBES_PER_S: f64 = 16.0;
/// A ping unanswered this long is lost (`probe::PROBE_TIMEOUT`), in ms.
const PROBE_TIMEOUT_MS: f64 = 2000.0;
/// Samples from one peer before a worker reports a coordinate (`probe::MIN_SAMPLES`).
const MIN_SAMPLES: u32 = 3;
/// Peers of its own cluster a worker probes (`oak-cluster` `ldp::SAME_CLUSTER_PEERS`).
const SAME_CLUSTER_PEERS: usize = 16;
/// Of those, the nearest by the reported coordinates (`ldp::NEAR_PEERS`).
const NEAR_PEERS: usize = 8;
/// The nearest peers are chosen again this often (`ldp::NEAR_EPOCH_S`).
const NEAR_EPOCH_S: f64 = 120.0;
/// The random order of the other peers is drawn again this often (`ldp::PEER_EPOCH_S`).
const PEER_EPOCH_S: f64 = 600.0;
/// Workers whose peers the cluster's tick looks at per second (`monitor::PEERS_PER_TICK` = 64
/// per tick of 500 ms).
const PEERS_PER_S: f64 = 128.0;
/// Simulated time of Vivaldi before the experiments (`LDP_SIM_MIN` overrides it).
const SIM_S: f64 = 1200.0;
/// Lower ends of the slack classes (threshold / best true RTT) the met share is also given for.
const SLACK_CLASSES: [f64; 3] = [1.0, 1.2, 1.5];
/// Upper ends of the true-RTT classes the Vivaldi error is also given for, in ms.
const RTT_CLASSES: [f64; 3] = [5.0, 10.0, 20.0];
/// Workers whose pairs with every other worker make the per-class error, at most.
const CLASS_SOURCES: usize = 200;
/// The error of the coordinates is measured this often (for the convergence curve).
const CHECK_EVERY_S: f64 = 60.0;
/// Workers that measure a user (`ldp::MEASURERS`).
const MEASURERS: usize = 5;
/// Measurements the cluster keeps per user (`Ldp::on_measured`: 2 × `MEASURERS`).
const MAX_USER_OBS: usize = 2 * MEASURERS;
/// Workers predicted nearest to a user that measure it before a placement (`ldp::REFINERS`).
const REFINERS: usize = 4;
/// Most workers asked to refine one user's location (`ldp::MAX_REFINE_ASKS`).
const MAX_REFINE_ASKS: usize = 3 * REFINERS;
/// Pings per user measurement, the least counts (`oak-worker` `measure::TRIES`).
const TRIES: usize = 3;
/// A ping to a user unanswered this long is lost (`measure::TRY_TIMEOUT`), in ms.
const TRY_TIMEOUT_MS: f64 = 1000.0;
/// The fixed threshold (the paper's SLAs are fixed), in ms; `LDP_FIXED_MS` overrides it.
const FIXED_MS: f64 = 20.0;
/// Random worker pairs the Vivaldi error is measured over (all pairs when fewer).
const ERROR_PAIRS: usize = 20_000;
/// Workers a located user's predicted RTTs are compared with, at most.
const LOCATION_CHECKS: usize = 200;
/// What each experiment asks for: 1 CPU, 512 MiB (the paper's: 1 CPU, 100 MB).
const REQUEST: Resources = Resources { millicpu: 1000, memory_mb: 512, gpus: 0 };
/// Background load: up to this share of each worker's CPU and memory is in use.
const MAX_LOAD: f64 = 0.8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    S2u,
    S2s,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::S2u => "S2U",
            Kind::S2s => "S2S",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sched {
    Ldp,
    Rom,
}

impl Sched {
    fn name(self) -> &'static str {
        match self {
            Sched::Ldp => "LDP",
            Sched::Rom => "ROM",
        }
    }
}

/// How an experiment's threshold is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Threshold {
    /// The best true RTT of a worker that fits × U(1, 2).
    Relative,
    /// [`fixed_ms`].
    Fixed,
}

impl Threshold {
    fn name(self) -> &'static str {
        match self {
            Threshold::Relative => "relative",
            Threshold::Fixed => "fixed",
        }
    }
}

/// One experiment under one threshold: what was asked and what the truth is.
#[derive(Clone, Debug)]
struct Case {
    run: usize,
    kind: Kind,
    threshold: Threshold,
    threshold_ms: f64,
    /// True RTT of the nearest worker that fits.
    best_ms: f64,
    /// The RTT predicted for that worker from the coordinates.
    best_predicted_ms: f64,
    /// That worker has a measured RTT in the objective (which stands for the prediction).
    best_measured: bool,
    /// S2U: that worker measured the user, kept or not (see [`MAX_USER_OBS`]).
    best_answered: bool,
    /// Measured RTTs in the objective.
    measured: usize,
    /// Some worker that fits is within the threshold (by the true RTT).
    feasible: bool,
    /// S2U: median relative error of the RTTs predicted from the located user.
    location_error: Option<f64>,
    /// S2U: workers asked to refine, rounds of asking, measurements dropped (over
    /// [`MAX_USER_OBS`]).
    refine: Option<(usize, usize, usize)>,
}

/// One placement of one experiment.
#[derive(Clone, Debug)]
struct Outcome {
    case: Case,
    sched: Sched,
    /// True RTT of the worker chosen; None when the scheduler found none.
    achieved_ms: Option<f64>,
    /// LDP: the worker chosen had a measured RTT (else it was chosen by its prediction).
    by_measurement: bool,
    decision_us: f64,
}

impl Outcome {
    fn met(&self) -> bool {
        self.achieved_ms.is_some_and(|a| a <= self.case.threshold_ms)
    }
}

/// What one run's Vivaldi phase gave.
struct Converged {
    /// Application-level coordinates (what workers report and the scheduler sees).
    app: Vec<Coord>,
    /// System coordinates (what pongs carry).
    sys: Vec<Coord>,
    /// (seconds, median relative error of app-level, of system coordinates).
    curve: Vec<(f64, f64, f64)>,
    /// Median relative error of the app-level coordinates for pairs of true RTT below each
    /// of [`RTT_CLASSES`], and above the last.
    by_rtt: [f64; 4],
    /// Pings sent per worker per second, on average.
    pings_per_s: f64,
    /// For each worker, who reports an RTT to it, and that RTT (see [`heard_by`]).
    heard: Vec<Vec<(usize, f64)>>,
    /// Near peers at the end: the share of them among the worker's [`NEAR_PEERS`] truly
    /// nearest, and the median true RTT to them and to those (NaN without near peers).
    near_quality: (f64, f64, f64),
    /// The most workers that chose one worker as a near peer (0 without near peers).
    near_in_degree: usize,
}

/// How many of `n` peers one round probes (`probe::per_round`).
fn per_round(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let want = (n as f64 * PROBE_INTERVAL_S / CYCLE_S).ceil() as usize;
    let cap = ((MAX_PROBES_PER_S * PROBE_INTERVAL_S).floor() as usize).max(1);
    want.clamp(1, cap).min(n)
}

/// The first `k` of a random order of the workers of `0..n` other than `me` (all others when
/// fewer), as the cluster's pseudo-random order of a peer epoch.
fn random_order(me: usize, n: usize, k: usize, s: &mut u64) -> Vec<usize> {
    if k + 1 >= n {
        return (0..n).filter(|&j| j != me).collect();
    }
    let mut p = Vec::with_capacity(k);
    while p.len() < k {
        let j = next_below(s, n);
        if j != me && !p.contains(&j) {
            p.push(j);
        }
    }
    p
}

/// The `k` of `candidates` with the least `key`, ties by worker id as a string (as the
/// cluster sorts), in that order.
fn least_k(candidates: Vec<(f64, usize)>, k: usize, ids: &[String]) -> Vec<usize> {
    oak_ldp::least_k(candidates, k, |a, b| ids[*a].cmp(&ids[*b])).into_iter().map(|(_, j)| j).collect()
}

/// The cluster's choice of each worker's same-cluster peers (`Ldp::peers_for`), with what it
/// remembers between calls.
struct Peering {
    /// [`NEAR_PEERS`] of them are the nearest (else all are random: `LDP_PEERS=random`).
    near_on: bool,
    /// Each worker's nearest peers, and the near epoch they were chosen in.
    near: Vec<Option<(i64, Vec<usize>)>>,
    /// Each worker's random order (its first [`SAME_CLUSTER_PEERS`]), and its peer epoch.
    order: Vec<Option<(i64, Vec<usize>)>>,
    /// Where the tick goes on from.
    cursor: usize,
}

impl Peering {
    fn new(n: usize, near_on: bool) -> Self {
        Peering { near_on, near: vec![None; n], order: vec![None; n], cursor: 0 }
    }

    /// The workers whose peers the cluster's tick looks at in one round: all when few, else
    /// the next ones in turn.
    fn due(&mut self, n: usize) -> Vec<usize> {
        let per_round = (PEERS_PER_S * PROBE_INTERVAL_S).round() as usize;
        if n <= per_round {
            return (0..n).collect();
        }
        let due = (0..per_round).map(|k| (self.cursor + k) % n).collect();
        self.cursor = (self.cursor + per_round) % n;
        due
    }

    /// The same-cluster peers of `me` at `now`, sorted, from the coordinates the workers
    /// reported (None before they report one).
    fn peers_for(
        &mut self,
        me: usize,
        reported: &[Option<Coord>],
        ids: &[String],
        now: f64,
        s: &mut u64,
    ) -> Vec<usize> {
        let n = reported.len();
        let epoch = (now / PEER_EPOCH_S).floor() as i64;
        if self.order[me].as_ref().is_none_or(|(e, _)| *e != epoch) {
            self.order[me] = Some((epoch, random_order(me, n, SAME_CLUSTER_PEERS, s)));
        }
        let near_epoch = (now / NEAR_EPOCH_S).floor() as i64;
        let near: Vec<usize> = match (self.near_on, reported[me], &self.near[me]) {
            (false, _, _) => Vec::new(),
            (true, _, Some((e, ids))) if *e == near_epoch => ids.clone(),
            (true, Some(c), _) => {
                let by_rtt: Vec<(f64, usize)> = reported
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != me)
                    .filter_map(|(j, cj)| Some((cj.as_ref()?.rtt(&c), j)))
                    .filter(|(d, _)| d.is_finite())
                    .collect();
                let chosen = least_k(by_rtt, NEAR_PEERS, ids);
                self.near[me] = Some((near_epoch, chosen.clone()));
                chosen
            }
            (true, None, _) => Vec::new(),
        };
        let mut peers = near;
        let limit = peers.len().max(SAME_CLUSTER_PEERS);
        for &j in self.order[me].as_ref().map_or(&[][..], |(_, o)| o.as_slice()) {
            if peers.len() >= limit {
                break;
            }
            if !peers.contains(&j) {
                peers.push(j);
            }
        }
        peers.sort_unstable();
        peers
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn median(v: Vec<f64>) -> f64 {
    percentile(&sorted(v), 0.5)
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (sum, k) = v.fold((0.0, 0usize), |(s, k), x| (s + x, k + 1));
    if k == 0 { f64::NAN } else { sum / k as f64 }
}

/// Median of |predicted − true| / true over `pairs` (worker index pairs).
fn pair_error(space: &Space, coords: &[Coord], pairs: &[(usize, usize)]) -> f64 {
    median(
        pairs
            .iter()
            .map(|&(a, b)| {
                let truth = space.rtt(a, b);
                (coords[a].rtt(&coords[b]) - truth).abs() / truth
            })
            .collect(),
    )
}

/// All pairs of `0..n` when there are at most [`ERROR_PAIRS`], else that many random ones.
fn error_pairs(n: usize, s: &mut u64) -> Vec<(usize, usize)> {
    if n * (n - 1) / 2 <= ERROR_PAIRS {
        return (0..n).flat_map(|a| (a + 1..n).map(move |b| (a, b))).collect();
    }
    let mut v = Vec::with_capacity(ERROR_PAIRS);
    while v.len() < ERROR_PAIRS {
        let (a, b) = (next_below(s, n), next_below(s, n));
        if a != b {
            v.push((a, b));
        }
    }
    v
}

fn env_f64(name: &str) -> Option<f64> {
    std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok()).filter(|v| *v > 0.0 && v.is_finite())
}

/// The simulated time of Vivaldi, in seconds.
fn sim_s() -> f64 {
    env_f64("LDP_SIM_MIN").map_or(SIM_S, |m| m * 60.0)
}

/// The fixed threshold, in ms.
fn fixed_ms() -> f64 {
    env_f64("LDP_FIXED_MS").unwrap_or(FIXED_MS)
}

/// Median relative error per class of true RTT ([`RTT_CLASSES`]), over the pairs of up to
/// [`CLASS_SOURCES`] random workers with every other worker.
fn error_by_rtt(space: &Space, coords: &[Coord], s: &mut u64) -> [f64; 4] {
    let n = coords.len();
    let mut classes: [Vec<f64>; 4] = Default::default();
    for _ in 0..CLASS_SOURCES.min(n) {
        let a = next_below(s, n);
        for (b, cb) in coords.iter().enumerate().filter(|(b, _)| *b != a) {
            let truth = space.rtt(a, b);
            let class = RTT_CLASSES.iter().position(|&edge| truth < edge).unwrap_or(RTT_CLASSES.len());
            classes[class].push((coords[a].rtt(cb) - truth).abs() / truth);
        }
    }
    classes.map(median)
}

/// How good the near peers chosen last are, over up to [`CLASS_SOURCES`] random workers: the
/// share of them among the worker's [`NEAR_PEERS`] truly nearest, and the median true RTT to
/// them and to those.
fn near_quality(space: &Space, peering: &Peering, ids: &[String], s: &mut u64) -> (f64, f64, f64) {
    let n = peering.near.len();
    let (mut hits, mut total) = (0usize, 0usize);
    let (mut chosen_rtt, mut true_rtt) = (Vec::new(), Vec::new());
    for _ in 0..CLASS_SOURCES.min(n) {
        let a = next_below(s, n);
        let Some((_, near)) = &peering.near[a] else { continue };
        let truly = least_k((0..n).filter(|&b| b != a).map(|b| (space.rtt(a, b), b)).collect(), NEAR_PEERS, ids);
        hits += near.iter().filter(|j| truly.contains(j)).count();
        total += near.len();
        chosen_rtt.extend(near.iter().map(|&j| space.rtt(a, j)));
        true_rtt.extend(truly.iter().map(|&j| space.rtt(a, j)));
    }
    if total == 0 {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    (hits as f64 / total as f64, median(chosen_rtt), median(true_rtt))
}

/// Runs Vivaldi on the first `n` nodes of `space` for [`SIM_S`], as the workers probe the
/// peers the cluster gives them.
fn converge(space: &Space, n: usize, seed: u64) -> Converged {
    let mut s = seed;
    let ids: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
    let mut nodes: Vec<Vivaldi> = (0..n).map(|i| Vivaldi::new(Config::default(), seed ^ ((i as u64) << 1))).collect();
    let pairs = error_pairs(n, &mut s);
    let rounds = (sim_s() / PROBE_INTERVAL_S).round() as usize;
    let check_rounds = (CHECK_EVERY_S / PROBE_INTERVAL_S).round() as usize;
    let mut peering = Peering::new(n, !Variant::RandomPeers.on());
    // What each worker probes now (it has none until the cluster's tick reaches it).
    let mut peers: Vec<Vec<usize>> = vec![Vec::new(); n];
    // Samples per peer until a worker reports a coordinate (`probe::Ldp`).
    let mut samples: Vec<Vec<(usize, u32)>> = vec![Vec::new(); n];
    let mut ready = vec![false; n];
    let mut last: Vec<Option<usize>> = vec![None; n];
    let mut pings = 0u64;
    let mut curve = Vec::new();
    for round in 0..rounds {
        let now = round as f64 * PROBE_INTERVAL_S;
        // The coordinates the workers reported (once ready), as the cluster sees them.
        let reported: Vec<Option<Coord>> =
            nodes.iter().zip(&ready).map(|(v, r)| Some(v.coord()).filter(|c| *r && c.is_valid())).collect();
        for i in peering.due(n) {
            let new = peering.peers_for(i, &reported, &ids, now, &mut s);
            if new != peers[i] {
                samples[i].retain(|(j, _)| new.contains(j));
                peers[i] = new;
            }
        }
        for (i, mine) in peers.iter().enumerate() {
            nodes[i].forget_stale(now);
            if mine.is_empty() {
                continue;
            }
            // The next few after the last one probed, by id (`probe::Rotation`).
            let start = last[i].map_or(0, |l| mine.partition_point(|&x| x <= l) % mine.len());
            for step in 0..per_round(mine.len()) {
                let j = mine[(start + step) % mine.len()];
                last[i] = Some(j);
                pings += 1;
                // The pong comes back within this round, with the peer's coordinate then.
                let rtt = space.sample(i, j, &mut s);
                if rtt > PROBE_TIMEOUT_MS {
                    continue;
                }
                let at = nodes[j].system_coord();
                let when = now + PROBE_INTERVAL_S * (step as f64 + 0.5) / 16.0;
                if !(rtt.is_finite() && rtt > 0.0 && rtt <= MAX_COORD_MS && at.is_valid()) {
                    continue;
                }
                nodes[i].observe(&ids[j], rtt, at, when);
                if !ready[i] {
                    match samples[i].iter_mut().find(|(p, _)| *p == j) {
                        Some((_, k)) => *k += 1,
                        None => samples[i].push((j, 1)),
                    }
                    if samples[i].iter().any(|(_, k)| *k >= MIN_SAMPLES) {
                        ready[i] = true;
                        samples[i] = Vec::new();
                    }
                }
            }
        }
        if (round + 1) % check_rounds == 0 {
            let app: Vec<Coord> = nodes.iter().map(Vivaldi::coord).collect();
            let sys: Vec<Coord> = nodes.iter().map(Vivaldi::system_coord).collect();
            let t = (round + 1) as f64 * PROBE_INTERVAL_S;
            curve.push((t, pair_error(space, &app, &pairs), pair_error(space, &sys, &pairs)));
        }
    }
    let app: Vec<Coord> = nodes.iter().map(Vivaldi::coord).collect();
    Converged {
        sys: nodes.iter().map(Vivaldi::system_coord).collect(),
        curve,
        by_rtt: error_by_rtt(space, &app, &mut s),
        near_quality: near_quality(space, &peering, &ids, &mut s),
        near_in_degree: {
            let mut k = vec![0usize; n];
            for (_, near) in peering.near.iter().flatten() {
                for &j in near {
                    k[j] += 1;
                }
            }
            k.into_iter().max().unwrap_or(0)
        },
        app,
        pings_per_s: pings as f64 / (n as f64 * sim_s()),
        heard: heard_by(&nodes),
    }
}

/// For each worker, the workers that report an RTT to it (the filtered RTT to each peer heard
/// within the neighbour TTL, as the worker reports them) and that RTT.
fn heard_by(nodes: &[Vivaldi]) -> Vec<Vec<(usize, f64)>> {
    let mut heard = vec![Vec::new(); nodes.len()];
    for (w, v) in nodes.iter().enumerate() {
        for (peer, ms) in v.rtts() {
            if let Some(t) = peer.strip_prefix('w').and_then(|t| t.parse::<usize>().ok())
                && let Some(h) = heard.get_mut(t)
            {
                h.push((w, ms));
            }
        }
    }
    heard
}

/// FNV-1a, as the cluster uses it for its stable choices.
fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= 0xff;
    h.wrapping_mul(0x0100_0000_01b3)
}

/// The workers asked to measure users: the first by a stable hash of its id, then each the
/// farthest (in the coordinate space) from those chosen (`oak-cluster` `Ldp::locate`).
fn measurers(coords: &[Coord]) -> Vec<usize> {
    let n = coords.len();
    let mut chosen: Vec<usize> = (0..n).min_by_key(|&w| fnv(format!("w{w}").as_bytes())).into_iter().collect();
    while chosen.len() < MEASURERS.min(n) {
        let d = |w: usize| chosen.iter().map(|&c| coords[c].rtt(&coords[w])).fold(f64::INFINITY, f64::min);
        let next = (0..n).filter(|w| !chosen.contains(w)).max_by(|&a, &b| d(a).total_cmp(&d(b)).then(b.cmp(&a)));
        match next {
            Some(w) => chosen.push(w),
            None => break,
        }
    }
    chosen
}

/// Where the cluster puts a user measured by `obs` (`oak-cluster` `ldp::place_user`).
fn place_user(obs: &[(Coord, f64)]) -> Option<Coord> {
    if obs.len() >= 3
        && let Some(c) = multilaterate(obs)
    {
        return Some(c);
    }
    let (c, ms) = obs.iter().min_by(|a, b| a.1.total_cmp(&b.1))?;
    Some(Coord::new(c.x, c.y, (ms - c.h).max(1e-3), 1.0))
}

/// What a worker asked to measure a user answers (`oak-worker` `measure::icmp_rtt`): the
/// least of [`TRIES`] pings, each lost after [`TRY_TIMEOUT_MS`]; None when all are lost.
fn measure(space: &Space, w: usize, user: usize, s: &mut u64) -> Option<f64> {
    (0..TRIES).map(|_| space.sample(w, user, s)).filter(|ms| *ms <= TRY_TIMEOUT_MS).reduce(f64::min)
}

/// What the cluster knows of one user (`ldp::UserLoc`): the measurements kept, by worker id,
/// with the worker's coordinate then, and where that puts the user.
#[derive(Default)]
struct UserLoc {
    obs: BTreeMap<String, (usize, Coord, f64)>,
    coord: Option<Coord>,
    /// Measurements dropped beyond [`MAX_USER_OBS`].
    dropped: usize,
    /// Every worker that answered, kept or not.
    answered: Vec<usize>,
}

impl UserLoc {
    /// A worker's answer (`Ldp::on_measured`): kept (beyond [`MAX_USER_OBS`], the first by
    /// worker id goes), and the user placed again from all kept.
    fn on_measured(&mut self, w: usize, coord: Coord, ms: Option<f64>) {
        let Some(ms) = ms else { return };
        if !(ms.is_finite() && ms > 0.0 && ms <= MAX_COORD_MS) {
            return;
        }
        self.answered.push(w);
        self.obs.insert(format!("w{w}"), (w, coord, ms));
        if self.obs.len() > MAX_USER_OBS {
            self.obs.pop_first();
            self.dropped += 1;
        }
        let obs: Vec<(Coord, f64)> = self.obs.values().map(|&(_, c, ms)| (c, ms)).collect();
        self.coord = place_user(&obs);
    }

    /// The measured RTTs, as (worker id, ms).
    fn measured(&self) -> Vec<(String, f64)> {
        self.obs.iter().map(|(id, (_, _, ms))| (id.clone(), *ms)).collect()
    }

    fn has(&self, w: usize) -> bool {
        self.obs.values().any(|(x, _, _)| *x == w)
    }
}

/// Refinement before a placement near `user` (`Ldp::refine` called by `Core::place` until it
/// asks no one, the answers coming at once): the [`REFINERS`] workers predicted nearest that
/// have not measured it are asked, at most [`MAX_REFINE_ASKS`] in all. Returns the workers
/// asked and the rounds of asking.
fn refine(
    loc: &mut UserLoc,
    coords: &[Coord],
    ids: &[String],
    mut measure: impl FnMut(usize) -> Option<f64>,
) -> (usize, usize) {
    let mut asked: Vec<usize> = Vec::new();
    let (mut sent, mut rounds) = (0, 0);
    while let Some(uc) = loc.coord {
        let by_rtt: Vec<(f64, usize)> =
            coords.iter().enumerate().map(|(w, c)| (c.rtt(&uc), w)).filter(|(d, _)| d.is_finite()).collect();
        let missing: Vec<usize> = least_k(by_rtt, REFINERS, ids).into_iter().filter(|&w| !loc.has(w)).collect();
        let fresh: Vec<usize> = missing.into_iter().filter(|w| !asked.contains(w)).collect();
        if fresh.is_empty() || asked.len() >= MAX_REFINE_ASKS {
            break;
        }
        let room = MAX_REFINE_ASKS - asked.len();
        for &w in fresh.iter().take(room) {
            let ms = measure(w);
            loc.on_measured(w, coords[w], ms);
            sent += 1;
        }
        // All fresh ones count as asked (beyond the room too), as the cluster records them.
        asked.extend(fresh);
        rounds += 1;
    }
    (sent, rounds)
}

/// The cluster's candidates: the workers with their coordinates and locations, capacity of
/// 2, 4 or 8 cores and 2–16 GiB, up to [`MAX_LOAD`] of each in use already.
fn snapshot(space: &Space, coords: &[Coord], s: &mut u64) -> Snapshot {
    let mut snap = Snapshot::default();
    for (i, c) in coords.iter().enumerate() {
        let cores = [2u64, 4, 8][next_below(s, 3)];
        let gib = [2u64, 4, 8, 16][next_below(s, 4)];
        let capacity = Resources::new(cores * 1000, gib * 1024, 0);
        let (lat, lon) = space.location(i);
        let idx = snap.add(Candidate {
            id: format!("w{i}"),
            name: format!("w{i}"),
            slots: vec![Slot { arch: "amd64".into(), runtimes: vec!["container".into()], capacity }],
            space: vec![CoordCircle { coord: *c, radius_ms: 0.0 }],
            area: vec![GeoCircle { lat, lon, radius_km: 0.0 }],
            addons: Vec::new(),
        });
        let load = Resources::new(
            (capacity.millicpu as f64 * MAX_LOAD * next_f64(s)) as u64,
            (capacity.memory_mb as f64 * MAX_LOAD * next_f64(s)) as u64,
            0,
        );
        snap.reserve(idx, 0, &load);
    }
    snap
}

/// One placement, timed: the worker chosen, and the decision time in µs.
fn place_timed(snap: &Snapshot, req: &Request) -> (Option<usize>, f64) {
    let t = Instant::now();
    let p = snap.place(req, Policy::BestFit);
    (p.ok().map(|p| p.candidate), t.elapsed().as_secs_f64() * 1e6)
}

/// The nearest worker by `truth` among `candidates`, and its RTT.
fn nearest(truth: &[f64], candidates: impl Iterator<Item = usize>) -> Option<(usize, f64)> {
    candidates.map(|w| (w, truth[w])).min_by(|a, b| a.1.total_cmp(&b.1))
}

/// One hard latency objective, with the RTTs some workers measured to its point (they stand
/// instead of the prediction for those workers, as `oak_sched::objectives::resolve` passes
/// them).
fn objective(label: &str, at: Coord, max_ms: f64, measured: Vec<(String, f64)>) -> Objective {
    Objective {
        label: label.into(),
        points: vec![Point { coord: Some(at), location: None }],
        max_ms: Some(max_ms),
        max_km: None,
        rigidness: 1.0,
        measured,
    }
}

/// What one experiment is about, before a threshold is set.
struct Setup<'a> {
    run: usize,
    kind: Kind,
    /// The point the objective is about (a located user, the target's worker).
    at: Coord,
    /// The measured RTTs the objective carries.
    measured: Vec<(String, f64)>,
    /// The workers that measured, kept or not.
    answered: Vec<usize>,
    /// True RTT of every worker to the point.
    truth: &'a [f64],
    /// Whether each worker may be chosen (fits, and is not the target).
    eligible: &'a dyn Fn(usize) -> bool,
    location_error: Option<f64>,
    refine: Option<(usize, usize, usize)>,
    /// The request without objectives.
    base: Request,
}

/// Places one experiment under both thresholds, with LDP and ROM; ROM's placement does not
/// depend on the threshold, so it is made once. Consumes one random number (the relative
/// threshold's factor).
fn experiment(snap: &Snapshot, coords: &[Coord], e: &Setup<'_>, s: &mut u64) -> Vec<Outcome> {
    let n = coords.len();
    let Some((wb, best)) = nearest(e.truth, (0..n).filter(|&w| (e.eligible)(w))) else { return Vec::new() };
    let relative = best * (1.0 + next_f64(s));
    let measured_ids: Vec<usize> =
        e.measured.iter().filter_map(|(id, _)| id.strip_prefix('w')?.parse::<usize>().ok()).collect();
    let (rom, rom_us) = place_timed(snap, &e.base);
    let mut out = Vec::with_capacity(4);
    for (threshold, threshold_ms) in [(Threshold::Relative, relative), (Threshold::Fixed, fixed_ms())] {
        let case = Case {
            run: e.run,
            kind: e.kind,
            threshold,
            threshold_ms,
            best_ms: best,
            best_predicted_ms: e.at.rtt(&coords[wb]),
            best_measured: measured_ids.contains(&wb),
            best_answered: e.answered.contains(&wb),
            measured: e.measured.len(),
            feasible: (0..n).any(|w| (e.eligible)(w) && e.truth[w] <= threshold_ms),
            location_error: e.location_error,
            refine: e.refine,
        };
        let label = if e.kind == Kind::S2u { "user" } else { "service target" };
        let req =
            Request { objectives: vec![objective(label, e.at, threshold_ms, e.measured.clone())], ..e.base.clone() };
        let (ldp, ldp_us) = place_timed(snap, &req);
        out.push(Outcome {
            case: case.clone(),
            sched: Sched::Ldp,
            achieved_ms: ldp.map(|w| e.truth[w]),
            by_measurement: ldp.is_some_and(|w| measured_ids.contains(&w)),
            decision_us: ldp_us,
        });
        out.push(Outcome {
            case,
            sched: Sched::Rom,
            achieved_ms: rom.map(|w| e.truth[w]),
            by_measurement: false,
            decision_us: rom_us,
        });
    }
    out
}

/// One run at `n` workers: Vivaldi, then `experiments` S2U and as many S2S experiments.
fn run_once(n: usize, run: usize, experiments: usize) -> (Converged, Vec<Outcome>) {
    let seed = 0x0A4E_57A0_0000_0000 ^ ((n as u64) << 8) ^ run as u64;
    let mut s = seed;
    let params = SpaceParams { nodes: n + USERS, sites: SITES, ..SpaceParams::default() };
    let space = Space::generate(&params, next_u64(&mut s));
    let conv = converge(&space, n, next_u64(&mut s));
    // What-if: `LDP_COORDS=system` gives the scheduler the system coordinates instead.
    let coords = if Variant::SystemCoords.on() { &conv.sys } else { &conv.app };
    let snap = snapshot(&space, coords, &mut s);
    // The pings to users draw from a stream of their own, so that the users, targets and
    // thresholds are the same with and without refinement.
    let mut ps = next_u64(&mut s);
    let ids: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
    let fits: Vec<bool> = (0..n).map(|w| snap.free(w, 0).is_some_and(|f| f.fits(&REQUEST))).collect();
    let who = measurers(coords);
    let refining = !Variant::PlainLocate.on();
    let base = Request { resources: REQUEST, runtime: "container".into(), ..Request::default() };
    let mut out = Vec::with_capacity(8 * experiments);
    let mut truth = vec![0.0; n];
    let check_stride = n.div_ceil(LOCATION_CHECKS);
    for e in 0..experiments {
        // S2U: the next user, located from the measurers' pings, then refined.
        let user = n + e % USERS;
        let mut loc = UserLoc::default();
        for &w in &who {
            let ms = measure(&space, w, user, &mut ps);
            loc.on_measured(w, coords[w], ms);
        }
        let refined = refining.then(|| refine(&mut loc, coords, &ids, |w| measure(&space, w, user, &mut ps)));
        for (w, t) in truth.iter_mut().enumerate() {
            *t = space.rtt(w, user);
        }
        if let Some(at) = loc.coord {
            let location_error = median(
                (0..n).step_by(check_stride).map(|w| (at.rtt(&coords[w]) - truth[w]).abs() / truth[w]).collect(),
            );
            let eligible = |w: usize| fits[w];
            let setup = Setup {
                run,
                kind: Kind::S2u,
                at,
                measured: loc.measured(),
                answered: loc.answered.clone(),
                truth: &truth,
                eligible: &eligible,
                location_error: Some(location_error),
                refine: refined.map(|(asked, rounds)| (asked, rounds, loc.dropped)),
                base: base.clone(),
            };
            out.extend(experiment(&snap, coords, &setup, &mut s));
        }
        // S2S: a target instance on a random worker; the dependent goes elsewhere.
        let target = next_below(&mut s, n);
        for (w, t) in truth.iter_mut().enumerate() {
            *t = space.rtt(w, target);
        }
        let eligible = |w: usize| w != target && fits[w];
        let setup = Setup {
            run,
            kind: Kind::S2s,
            at: coords[target],
            measured: conv.heard[target].iter().map(|&(w, ms)| (format!("w{w}"), ms)).collect(),
            answered: conv.heard[target].iter().map(|&(w, _)| w).collect(),
            truth: &truth,
            eligible: &eligible,
            location_error: None,
            refine: None,
            base: Request { exclude: vec![format!("w{target}")], ..base.clone() },
        };
        out.extend(experiment(&snap, coords, &setup, &mut s));
    }
    (conv, out)
}

/// The figures of one (threshold, kind, scheduler) at one N.
struct Row {
    threshold: Threshold,
    kind: Kind,
    sched: Sched,
    experiments: usize,
    feasible: usize,
    met_share: f64,
    /// The met share per [`SLACK_CLASSES`].
    met_by_slack: [f64; 3],
    rejected_share: f64,
    /// Of the feasible experiments, the share not met: rejected, placed on a worker chosen by
    /// its prediction, by its measured RTT.
    misses: [f64; 3],
    ratio: [f64; 3],
    achieved: [f64; 3],
    decision: [f64; 2],
    /// Median of (predicted − true) / true for the truly nearest worker, and of its size.
    best_bias: f64,
    best_error: f64,
    /// Share of experiments where the truly nearest worker that fits has a measured RTT; where
    /// it measured but the measurement was dropped.
    best_measured: f64,
    best_dropped: f64,
    /// Measured RTTs per objective, on average.
    measured: f64,
    /// Share of placements made on a worker with a measured RTT.
    by_measurement: f64,
    /// S2U refinement: workers asked, rounds, share with more than one round, share that
    /// reached [`MAX_REFINE_ASKS`], measurements dropped (means; NaN without refinement).
    refine: [f64; 5],
}

fn row(all: &[Outcome], threshold: Threshold, kind: Kind, sched: Sched) -> Row {
    let xs: Vec<&Outcome> =
        all.iter().filter(|o| o.case.threshold == threshold && o.case.kind == kind && o.sched == sched).collect();
    let feasible: Vec<&&Outcome> = xs.iter().filter(|o| o.case.feasible).collect();
    let met = feasible.iter().filter(|o| o.met()).count();
    let share = |k: usize, of: usize| k as f64 / of.max(1) as f64;
    let missed =
        |f: &dyn Fn(&Outcome) -> bool| share(feasible.iter().filter(|o| !o.met() && f(o)).count(), feasible.len());
    let rejected = xs.iter().filter(|o| o.achieved_ms.is_none()).count();
    let placed: Vec<(f64, f64)> = xs.iter().filter_map(|o| o.achieved_ms.map(|a| (a, a / o.case.best_ms))).collect();
    let ratios = sorted(placed.iter().map(|p| p.1).collect());
    let achieved = sorted(placed.iter().map(|p| p.0).collect());
    let decision = sorted(xs.iter().map(|o| o.decision_us).collect());
    let q = |v: &[f64]| [percentile(v, 0.25), percentile(v, 0.5), percentile(v, 0.9)];
    let refined: Vec<(usize, usize, usize)> = xs.iter().filter_map(|o| o.case.refine).collect();
    Row {
        threshold,
        kind,
        sched,
        experiments: xs.len(),
        feasible: feasible.len(),
        met_share: share(met, feasible.len()),
        met_by_slack: std::array::from_fn(|c| {
            let lo = SLACK_CLASSES[c];
            let hi = SLACK_CLASSES.get(c + 1).copied().unwrap_or(f64::INFINITY);
            let band: Vec<&&&Outcome> =
                feasible.iter().filter(|o| (lo..hi).contains(&(o.case.threshold_ms / o.case.best_ms))).collect();
            share(band.iter().filter(|o| o.met()).count(), band.len())
        }),
        rejected_share: share(rejected, xs.len()),
        misses: [
            missed(&|o| o.achieved_ms.is_none()),
            missed(&|o| o.achieved_ms.is_some() && !o.by_measurement),
            missed(&|o| o.achieved_ms.is_some() && o.by_measurement),
        ],
        ratio: q(&ratios),
        achieved: q(&achieved),
        decision: [percentile(&decision, 0.5), percentile(&decision, 0.99)],
        best_bias: median(xs.iter().map(|o| o.case.best_predicted_ms / o.case.best_ms - 1.0).collect()),
        best_error: median(xs.iter().map(|o| (o.case.best_predicted_ms / o.case.best_ms - 1.0).abs()).collect()),
        best_measured: share(xs.iter().filter(|o| o.case.best_measured).count(), xs.len()),
        best_dropped: share(xs.iter().filter(|o| o.case.best_answered && !o.case.best_measured).count(), xs.len()),
        measured: mean(xs.iter().map(|o| o.case.measured as f64)),
        by_measurement: share(xs.iter().filter(|o| o.by_measurement).count(), placed.len()),
        refine: [
            mean(refined.iter().map(|r| r.0 as f64)),
            mean(refined.iter().map(|r| r.1 as f64)),
            mean(refined.iter().map(|r| f64::from(u8::from(r.1 > 1)))),
            mean(refined.iter().map(|r| f64::from(u8::from(r.0 >= MAX_REFINE_ASKS)))),
            mean(refined.iter().map(|r| r.2 as f64)),
        ],
    }
}

/// Departures from what the system does by default: back to what it did before (for
/// comparison) or a what-if.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// `LDP_PEERS=random`: all 16 same-cluster peers random (as before the near peers).
    RandomPeers,
    /// `LDP_LOCATE=plain`: no refinement; the user where the measurers put it (as before).
    PlainLocate,
    /// `LDP_COORDS=system`: the scheduler sees system instead of application-level
    /// coordinates (a what-if).
    SystemCoords,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::RandomPeers, Variant::PlainLocate, Variant::SystemCoords];

    /// The variable, its value, and the name of the variant.
    fn var(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Variant::RandomPeers => ("LDP_PEERS", "random", "random-peers"),
            Variant::PlainLocate => ("LDP_LOCATE", "plain", "plain-locate"),
            Variant::SystemCoords => ("LDP_COORDS", "system", "system-coords"),
        }
    }

    fn on(self) -> bool {
        let (var, value, _) = self.var();
        std::env::var(var).is_ok_and(|v| v == value)
    }
}

/// `as-is`, or the variants in force joined by `+`.
fn variant() -> String {
    let on: Vec<&str> = Variant::ALL.into_iter().filter(|v| v.on()).map(|v| v.var().2).collect();
    if on.is_empty() { "as-is".into() } else { on.join("+") }
}

/// `target/ldp-bench/`, or a subfolder named for the variants in force.
fn out_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/ldp-bench");
    match variant().as_str() {
        "as-is" => dir,
        v => dir.join(format!("variant-{v}")),
    }
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).filter(|&v| v > 0)
}

/// Runs and experiments per run and kind at `n` workers.
fn plan(n: usize) -> (usize, usize) {
    let runs = env_usize("LDP_RUNS").unwrap_or(if n >= 10_000 { 3 } else { 5 });
    let experiments = env_usize("LDP_EXPERIMENTS").unwrap_or(1000);
    (runs, experiments)
}

fn bench(n: usize) {
    let (runs, experiments) = plan(n);
    let started = Instant::now();
    let mut all = Vec::new();
    let mut curves = String::from("run,t_s,median_rel_err_app,median_rel_err_sys\n");
    let (mut errors, mut pings) = (Vec::new(), Vec::new());
    let mut by_rtt = [0.0; 4];
    let mut near = [0.0; 3];
    let mut in_degree = 0;
    let mut vivaldi_s = 0.0;
    for run in 0..runs {
        let t = Instant::now();
        let (conv, outcomes) = run_once(n, run, experiments);
        vivaldi_s += t.elapsed().as_secs_f64();
        for (ts, app, sys) in &conv.curve {
            writeln!(curves, "{run},{ts},{app:.5},{sys:.5}").unwrap();
        }
        errors.push(conv.curve.last().map_or(f64::NAN, |c| c.1));
        for (sum, e) in by_rtt.iter_mut().zip(conv.by_rtt) {
            *sum += e / runs as f64;
        }
        let (hit, chosen, truly) = conv.near_quality;
        for (sum, e) in near.iter_mut().zip([hit, chosen, truly]) {
            *sum += e / runs as f64;
        }
        pings.push(conv.pings_per_s);
        in_degree = in_degree.max(conv.near_in_degree);
        all.extend(outcomes);
    }
    let vivaldi_error = errors.iter().sum::<f64>() / errors.len() as f64;
    let (err_lo, err_hi) =
        errors.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), e| (lo.min(*e), hi.max(*e)));
    let pings_per_s = pings.iter().sum::<f64>() / pings.len() as f64;
    // Each worker sends its pings and answers as many of its peers' (on average), and
    // receives as many: 4 datagrams per ping in all, 2 each way.
    let payload_bps = 4.0 * pings_per_s * PROBE_LEN;
    let wire_bps = 4.0 * pings_per_s * (PROBE_LEN + IP_UDP_HEADERS);
    let location_error = median(
        all.iter()
            .filter(|o| o.sched == Sched::Ldp && o.case.threshold == Threshold::Relative)
            .filter_map(|o| o.case.location_error)
            .collect(),
    );

    let rows: Vec<Row> = [Threshold::Relative, Threshold::Fixed]
        .into_iter()
        .flat_map(|t| [Kind::S2u, Kind::S2s].map(|k| (t, k)))
        .flat_map(|(t, k)| [row(&all, t, k, Sched::Ldp), row(&all, t, k, Sched::Rom)])
        .collect();
    println!();
    println!(
        "### {n} workers: {runs} runs × {experiments} S2U + {experiments} S2S experiments ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    println!();
    println!("Threshold = best true RTT × U(1, 2):");
    println!();
    println!(
        "| experiment | scheduler | met when feasible | met by slack < 1.2 / 1.2–1.5 / ≥ 1.5 | rejected | achieved/best p50 | p90 | achieved RTT ms p25 / p50 / p90 | decision µs p50 | p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in rows.iter().filter(|r| r.threshold == Threshold::Relative) {
        println!(
            "| {} | {} | {:.1} % ({} of {}) | {:.0} / {:.0} / {:.0} % | {:.1} % | {:.3} | {:.3} | {:.1} / {:.1} / {:.1} | {:.1} | {:.1} |",
            r.kind.name(),
            r.sched.name(),
            100.0 * r.met_share,
            (r.met_share * r.feasible as f64).round(),
            r.feasible,
            100.0 * r.met_by_slack[0],
            100.0 * r.met_by_slack[1],
            100.0 * r.met_by_slack[2],
            100.0 * r.rejected_share,
            r.ratio[1],
            r.ratio[2],
            r.achieved[0],
            r.achieved[1],
            r.achieved[2],
            r.decision[0],
            r.decision[1],
        );
    }
    println!();
    println!(
        "Threshold = {} ms (fixed; only the experiments where a worker that fits is within it count):",
        fixed_ms()
    );
    println!();
    println!(
        "| experiment | scheduler | feasible | met when feasible | rejected | achieved RTT ms p25 / p50 / p90 | achieved/best p50 | p90 | decision µs p50 | p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in rows.iter().filter(|r| r.threshold == Threshold::Fixed) {
        println!(
            "| {} | {} | {:.1} % | {:.1} % ({} of {}) | {:.1} % | {:.1} / {:.1} / {:.1} | {:.3} | {:.3} | {:.1} | {:.1} |",
            r.kind.name(),
            r.sched.name(),
            100.0 * r.feasible as f64 / r.experiments.max(1) as f64,
            100.0 * r.met_share,
            (r.met_share * r.feasible as f64).round(),
            r.feasible,
            100.0 * r.rejected_share,
            r.achieved[0],
            r.achieved[1],
            r.achieved[2],
            r.ratio[1],
            r.ratio[2],
            r.decision[0],
            r.decision[1],
        );
    }
    println!();
    let peers = if Variant::RandomPeers.on() {
        format!("{SAME_CLUSTER_PEERS} random peers drawn again every {:.0} min", PEER_EPOCH_S / 60.0)
    } else {
        format!(
            "{NEAR_PEERS} of {SAME_CLUSTER_PEERS} peers the nearest by coordinates (again every {:.0} min), the rest random (again every {:.0} min)",
            NEAR_EPOCH_S / 60.0,
            PEER_EPOCH_S / 60.0
        )
    };
    println!(
        "Vivaldi after {:.0} min (one round per {PROBE_INTERVAL_S} s, {pings_per_s:.2} pings/s per worker, {peers}): median relative error {:.1} % (runs {:.1}–{:.1} %); located users: median relative error {:.1} %; probe traffic per worker, both ways: {payload_bps:.0} B/s of payload, {wire_bps:.0} B/s with IPv4/UDP headers. Wall time of the runs: {vivaldi_s:.0} s.",
        sim_s() / 60.0,
        100.0 * vivaldi_error,
        100.0 * err_lo,
        100.0 * err_hi,
        100.0 * location_error,
    );
    println!(
        "Vivaldi median relative error by true RTT: < {} ms {:.1} %, {}–{} ms {:.1} %, {}–{} ms {:.1} %, ≥ {} ms {:.1} % (NaN: no such pair).",
        RTT_CLASSES[0],
        100.0 * by_rtt[0],
        RTT_CLASSES[0],
        RTT_CLASSES[1],
        100.0 * by_rtt[1],
        RTT_CLASSES[1],
        RTT_CLASSES[2],
        100.0 * by_rtt[2],
        RTT_CLASSES[2],
        100.0 * by_rtt[3],
    );
    if near[0].is_finite() {
        println!(
            "Near peers at the end: {:.1} % of them among the worker's {NEAR_PEERS} truly nearest; median true RTT to them {:.2} ms (to the truly nearest {:.2} ms); the most workers that chose one worker as a near peer: {in_degree}.",
            100.0 * near[0],
            near[1],
            near[2],
        );
    }
    for r in rows.iter().filter(|r| r.sched == Sched::Ldp && r.threshold == Threshold::Relative) {
        println!(
            "{}: the RTT predicted for the truly nearest worker that fits is off by {:.1} % (median of |error|; median signed error {:+.1} %); that worker has a measured RTT in {:.1} % (measured but dropped: {:.1} %; {:.1} measured RTTs per objective); LDP's placements on a worker with a measured RTT: {:.1} %; not met of the feasible: {:.1} % rejected, {:.1} % on a worker chosen by its prediction, {:.1} % by its measurement.",
            r.kind.name(),
            100.0 * r.best_error,
            100.0 * r.best_bias,
            100.0 * r.best_measured,
            100.0 * r.best_dropped,
            r.measured,
            100.0 * r.by_measurement,
            100.0 * r.misses[0],
            100.0 * r.misses[1],
            100.0 * r.misses[2],
        );
        if let Some(f) =
            rows.iter().find(|f| f.sched == Sched::Ldp && f.threshold == Threshold::Fixed && f.kind == r.kind)
        {
            println!(
                "{} at {} ms: not met of the feasible: {:.1} % rejected, {:.1} % on a worker chosen by its prediction, {:.1} % by its measurement.",
                f.kind.name(),
                fixed_ms(),
                100.0 * f.misses[0],
                100.0 * f.misses[1],
                100.0 * f.misses[2],
            );
        }
        if r.refine[0].is_finite() {
            println!(
                "{}: refinement asked {:.2} workers per user in {:.2} rounds (more than one round: {:.1} %; the cap of {MAX_REFINE_ASKS} reached: {:.1} %); {:.2} measurements per user dropped beyond the {MAX_USER_OBS} kept.",
                r.kind.name(),
                r.refine[0],
                r.refine[1],
                100.0 * r.refine[2],
                100.0 * r.refine[3],
                r.refine[4],
            );
        }
    }

    let dir = out_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let mut raw = String::from(
        "n,run,threshold,kind,scheduler,threshold_ms,best_ms,best_predicted_ms,best_measured,best_answered,measured,achieved_ms,met,feasible,rejected,by_measurement,decision_us,location_error,refine_asked,refine_rounds,dropped\n",
    );
    let opt = |v: Option<usize>| v.map_or(String::new(), |v| v.to_string());
    for o in &all {
        writeln!(
            raw,
            "{n},{},{},{},{},{:.4},{:.4},{:.4},{},{},{},{},{},{},{},{},{:.3},{},{},{},{}",
            o.case.run,
            o.case.threshold.name(),
            o.case.kind.name(),
            o.sched.name(),
            o.case.threshold_ms,
            o.case.best_ms,
            o.case.best_predicted_ms,
            u8::from(o.case.best_measured),
            u8::from(o.case.best_answered),
            o.case.measured,
            o.achieved_ms.map_or(String::new(), |a| format!("{a:.4}")),
            u8::from(o.met()),
            u8::from(o.case.feasible),
            u8::from(o.achieved_ms.is_none()),
            u8::from(o.by_measurement),
            o.decision_us,
            o.case.location_error.map_or(String::new(), |e| format!("{e:.5}")),
            opt(o.case.refine.map(|r| r.0)),
            opt(o.case.refine.map(|r| r.1)),
            opt(o.case.refine.map(|r| r.2)),
        )
        .unwrap();
    }
    let mut summary = String::from(
        "n,runs,experiments,threshold,kind,scheduler,feasible,met_share,met_slack_lt1_2,met_slack_1_2_1_5,met_slack_ge1_5,rejected_share,miss_rejected,miss_predicted,miss_measured,ratio_p25,ratio_p50,ratio_p90,achieved_p25_ms,achieved_p50_ms,achieved_p90_ms,decision_p50_us,decision_p99_us,best_error,best_bias,best_measured,best_dropped,measured_mean,by_measurement,refine_asked,refine_rounds,refine_multi_round,refine_capped,refine_dropped,vivaldi_error_lt5ms,vivaldi_error_5_10ms,vivaldi_error_10_20ms,vivaldi_error_ge20ms,vivaldi_error,vivaldi_error_min,vivaldi_error_max,location_error,near_hit,near_rtt_ms,true_near_rtt_ms,near_in_degree_max,pings_per_s,probe_payload_bps,probe_wire_bps\n",
    );
    for r in &rows {
        let mut line = format!(
            "{n},{runs},{},{},{},{},{}",
            r.experiments,
            r.threshold.name(),
            r.kind.name(),
            r.sched.name(),
            r.feasible
        );
        let values = [
            r.met_share,
            r.met_by_slack[0],
            r.met_by_slack[1],
            r.met_by_slack[2],
            r.rejected_share,
            r.misses[0],
            r.misses[1],
            r.misses[2],
            r.ratio[0],
            r.ratio[1],
            r.ratio[2],
            r.achieved[0],
            r.achieved[1],
            r.achieved[2],
            r.decision[0],
            r.decision[1],
            r.best_error,
            r.best_bias,
            r.best_measured,
            r.best_dropped,
            r.measured,
            r.by_measurement,
            r.refine[0],
            r.refine[1],
            r.refine[2],
            r.refine[3],
            r.refine[4],
            by_rtt[0],
            by_rtt[1],
            by_rtt[2],
            by_rtt[3],
            vivaldi_error,
            err_lo,
            err_hi,
            location_error,
            near[0],
            near[1],
            near[2],
            in_degree as f64,
            pings_per_s,
            payload_bps,
            wire_bps,
        ];
        for v in values {
            // NaN (nothing to say) is left empty.
            if v.is_finite() {
                write!(line, ",{v:.5}").unwrap();
            } else {
                line.push(',');
            }
        }
        summary.push_str(&line);
        summary.push('\n');
    }
    std::fs::write(dir.join(format!("experiments-{n}.csv")), raw).unwrap();
    std::fs::write(dir.join(format!("summary-{n}.csv")), summary).unwrap();
    std::fs::write(dir.join(format!("vivaldi-{n}.csv")), curves).unwrap();
}

fn main() {
    // `cargo bench` passes `--bench`; numbers select the sizes.
    let mut sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).filter(|&n| n >= 2).collect();
    if sizes.is_empty() {
        sizes = SIZES.to_vec();
    }
    println!(
        "LDP vs ROM (best fit), simulated: {SITES} cities, {USERS} users, request {} mCPU / {} MiB, thresholds: best true RTT × U(1, 2) and {} ms; variant: {}",
        REQUEST.millicpu,
        REQUEST.memory_mb,
        fixed_ms(),
        variant()
    );
    for n in sizes {
        bench(n);
    }
    println!();
    println!("CSV files: {}", out_dir().display());
}
