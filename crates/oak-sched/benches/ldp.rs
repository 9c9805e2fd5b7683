//! Latency and distance-aware placement (LDP) against resource-only matching (ROM), in the
//! setting of the paper's Fig. 10 (ATC'23 §5.4), simulated over a synthetic latency space.
//!
//! `cargo bench -p oak-sched --bench ldp [-- N ...]` (default: 10 50 100 500 10000 workers;
//! 5 runs, 3 at 10,000; `LDP_RUNS` and `LDP_EXPERIMENTS` (default 1000) override the runs and
//! the experiments per run and kind; `LDP_SIM_MIN` the simulated minutes of Vivaldi).
//!
//! Per run (seeded, deterministic but for the decision times):
//! 1. A space ([`oak_ldp::Space`]) of N workers and [`USERS`] users around [`SITES`] European
//!    cities; users are nodes that do not run Vivaldi.
//! 2. Vivaldi from a cold start, as the real workers probe (`crates/oak-worker/src/probe.rs`,
//!    `crates/oak-cluster/src/ldp.rs`): one round every [`PROBE_INTERVAL_S`], each round the
//!    next few peers in turn so that each is probed about every [`CYCLE_S`]; the cluster
//!    picks [`SAME_CLUSTER_PEERS`] random peers and picks again every [`PEER_EPOCH_S`]; a pong
//!    carries the peer's system coordinate; the scheduler sees the application-level one.
//!    [`SIM_S`] of simulated time. One cluster holds all N workers, so there are no foreign
//!    landmarks.
//! 3. Workers with heterogeneous capacity and a random background load.
//! 4. S2U experiments: a user located by multilateration from [`MEASURERS`] workers chosen
//!    farthest-point in the space (each the least of [`TRIES`] pings), a threshold of the
//!    best true RTT of a worker that fits × U(1, 2), one hard objective whose measured RTTs
//!    are the measurers' (they stand instead of predictions for those workers, as the cluster
//!    passes them). LDP places with it, ROM (best fit) without; both on the same snapshot,
//!    nothing reserved between experiments.
//! 5. S2S experiments: a target instance on a random worker, a dependent service within the
//!    best true RTT × U(1, 2) of the target's worker, with the RTTs the workers that probed it
//!    report as measured ones; the target's worker is excluded (else co-location makes the
//!    best RTT 0).
//!
//! What-ifs, each a change to what the system does, to see what it would give (see
//! [`WhatIf`]): `LDP_PEERS=near` (half the peers nearest by location), `LDP_LOCATE=refine`
//! (the workers predicted nearest to a user measure it too), `LDP_COORDS=system`.
//!
//! Prints a markdown table per N and writes CSV files under `target/ldp-bench/` (a what-if
//! run under `target/ldp-bench/what-if-NAME/`);
//! `scripts/plot-ldp.py` draws `docs/ldp-fig10.png`, `docs/ldp-decision-time.png` and
//! `docs/ldp-vivaldi.png` from them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use oak_api::ldp::{Coord, CoordCircle, GeoCircle};
use oak_ldp::rng::{next_below, next_f64, next_u64};
use oak_ldp::{Config, Space, SpaceParams, Vivaldi, multilaterate};
use oak_sched::{Candidate, Objective, Point, Policy, Request, Resources, Slot, Snapshot};
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
/// Peers of its own cluster a worker probes (`oak-cluster` `ldp::SAME_CLUSTER_PEERS`).
const SAME_CLUSTER_PEERS: usize = 16;
/// The cluster picks the peers again this often (`ldp::PEER_EPOCH_S`).
const PEER_EPOCH_S: f64 = 600.0;
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
/// Pings per user measurement, the least counts (`oak-worker` `measure::TRIES`).
const TRIES: usize = 3;
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

/// One experiment: what was asked and what the truth is.
#[derive(Clone, Debug)]
struct Case {
    run: usize,
    kind: Kind,
    threshold_ms: f64,
    /// True RTT of the nearest worker that fits.
    best_ms: f64,
    /// The RTT predicted for that worker from the coordinates.
    best_predicted_ms: f64,
    /// Some worker that fits is within the threshold (by the true RTT).
    feasible: bool,
    /// S2U: median relative error of the RTTs predicted from the located user.
    location_error: Option<f64>,
}

/// One placement of one experiment.
#[derive(Clone, Debug)]
struct Outcome {
    case: Case,
    sched: Sched,
    /// True RTT of the worker chosen; None when the scheduler found none.
    achieved_ms: Option<f64>,
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

/// `k` distinct random workers of `0..n` other than `me`, sorted (all others when fewer).
fn pick_peers(me: usize, n: usize, k: usize, s: &mut u64) -> Vec<usize> {
    let mut p: Vec<usize> = if k + 1 >= n {
        (0..n).filter(|&j| j != me).collect()
    } else {
        let mut p = Vec::with_capacity(k);
        while p.len() < k {
            let j = next_below(s, n);
            if j != me && !p.contains(&j) {
                p.push(j);
            }
        }
        p
    };
    p.sort_unstable();
    p
}

/// For each of the first `n` nodes, the [`SAME_CLUSTER_PEERS`] / 2 nearest others by
/// location (an equirectangular approximation is enough to rank them).
fn nearest_by_location(space: &Space, n: usize) -> Vec<Vec<usize>> {
    let loc: Vec<(f64, f64)> = (0..n).map(|i| space.location(i)).collect();
    let k = SAME_CLUSTER_PEERS / 2;
    loc.iter()
        .enumerate()
        .map(|(i, &(lat, lon))| {
            let c = lat.to_radians().cos();
            let mut d: Vec<(f64, usize)> = loc
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(j, &(la, lo))| ((la - lat).powi(2) + ((lo - lon) * c).powi(2), j))
                .collect();
            if d.len() > k {
                d.select_nth_unstable_by(k, |a, b| a.0.total_cmp(&b.0));
                d.truncate(k);
            }
            d.into_iter().map(|(_, j)| j).collect()
        })
        .collect()
}

/// The what-if peer set: the nearest by location, then random ones up to
/// [`SAME_CLUSTER_PEERS`], sorted.
fn mixed_peers(me: usize, n: usize, near: &[Vec<usize>], s: &mut u64) -> Vec<usize> {
    let mut p = near[me].clone();
    let k = SAME_CLUSTER_PEERS.min(n - 1);
    while p.len() < k {
        let j = next_below(s, n);
        if j != me && !p.contains(&j) {
            p.push(j);
        }
    }
    p.sort_unstable();
    p
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

/// The simulated time of Vivaldi, in seconds.
fn sim_s() -> f64 {
    std::env::var("LDP_SIM_MIN")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|m| *m > 0.0)
        .map_or(SIM_S, |m| m * 60.0)
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

/// Runs Vivaldi on the first `n` nodes of `space` for [`SIM_S`], as the workers probe.
fn converge(space: &Space, n: usize, seed: u64) -> Converged {
    let mut s = seed;
    let ids: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
    let mut nodes: Vec<Vivaldi> = (0..n).map(|i| Vivaldi::new(Config::default(), seed ^ ((i as u64) << 1))).collect();
    let pairs = error_pairs(n, &mut s);
    let rounds = (sim_s() / PROBE_INTERVAL_S).round() as usize;
    let epoch_rounds = (PEER_EPOCH_S / PROBE_INTERVAL_S).round() as usize;
    let check_rounds = (CHECK_EVERY_S / PROBE_INTERVAL_S).round() as usize;
    let mut peers: Vec<Vec<usize>> = Vec::new();
    // What-if: `LDP_PEERS=near` makes half the peers the nearest by location.
    let near = what_if(WhatIf::NearPeers).then(|| nearest_by_location(space, n));
    let mut last: Vec<Option<usize>> = vec![None; n];
    let mut pings = 0u64;
    let mut curve = Vec::new();
    for round in 0..rounds {
        let now = round as f64 * PROBE_INTERVAL_S;
        if round % epoch_rounds == 0 {
            peers = match &near {
                None => (0..n).map(|i| pick_peers(i, n, SAME_CLUSTER_PEERS, &mut s)).collect(),
                Some(near) => (0..n).map(|i| mixed_peers(i, n, near, &mut s)).collect(),
            };
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
                nodes[i].observe(&ids[j], rtt, at, when);
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

/// Places `req` with and without its objectives; one outcome each.
fn place_both(snap: &Snapshot, req: &Request, truth: &[f64], case: &Case) -> [Outcome; 2] {
    let rom = Request { objectives: Vec::new(), ..req.clone() };
    let out = |sched: Sched, r: &Request| {
        let t = Instant::now();
        let p = snap.place(r, Policy::BestFit);
        let decision_us = t.elapsed().as_secs_f64() * 1e6;
        Outcome { case: case.clone(), sched, achieved_ms: p.ok().map(|p| truth[p.candidate]), decision_us }
    };
    [out(Sched::Ldp, req), out(Sched::Rom, &rom)]
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

/// The RTTs measured to a user, as (worker id, ms).
fn measured_by(obs: &[(usize, Coord, f64)]) -> Vec<(String, f64)> {
    obs.iter().map(|(w, _, ms)| (format!("w{w}"), *ms)).collect()
}

/// One run at `n` workers: Vivaldi, then `experiments` S2U and as many S2S experiments.
fn run_once(n: usize, run: usize, experiments: usize) -> (Converged, Vec<Outcome>) {
    let seed = 0x0A4E_57A0_0000_0000 ^ ((n as u64) << 8) ^ run as u64;
    let mut s = seed;
    let params = SpaceParams { nodes: n + USERS, sites: SITES, ..SpaceParams::default() };
    let space = Space::generate(&params, next_u64(&mut s));
    let conv = converge(&space, n, next_u64(&mut s));
    // What-if: `LDP_COORDS=system` gives the scheduler the system coordinates instead.
    let coords = if what_if(WhatIf::SystemCoords) { &conv.sys } else { &conv.app };
    let snap = snapshot(&space, coords, &mut s);
    let fits: Vec<bool> = (0..n).map(|w| snap.free(w, 0).is_some_and(|f| f.fits(&REQUEST))).collect();
    let who = measurers(coords);
    let refine = what_if(WhatIf::Refine);
    let base = Request { resources: REQUEST, runtime: "container".into(), ..Request::default() };
    let mut out = Vec::with_capacity(4 * experiments);
    let mut truth = vec![0.0; n];
    let check_stride = n.div_ceil(LOCATION_CHECKS);
    for e in 0..experiments {
        // S2U: the next user, located from the measurers' pings.
        let user = n + e % USERS;
        let ping = |w: usize, s: &mut u64| (0..TRIES).map(|_| space.sample(w, user, s)).fold(f64::INFINITY, f64::min);
        let mut obs: Vec<(usize, Coord, f64)> = who.iter().map(|&w| (w, coords[w], ping(w, &mut s))).collect();
        let placed =
            |obs: &[(usize, Coord, f64)]| place_user(&obs.iter().map(|&(_, c, ms)| (c, ms)).collect::<Vec<_>>());
        let mut located = placed(&obs);
        // What-if: `LDP_LOCATE=refine` asks the 5 workers predicted nearest to measure as
        // well, and locates the user from all 10 answers.
        if refine && let Some(first) = located {
            let mut by_rtt: Vec<(f64, usize)> =
                (0..n).filter(|w| !who.contains(w)).map(|w| (first.rtt(&coords[w]), w)).collect();
            by_rtt.sort_by(|a, b| a.0.total_cmp(&b.0));
            for &(_, w) in by_rtt.iter().take(MEASURERS) {
                obs.push((w, coords[w], ping(w, &mut s)));
            }
            located = placed(&obs);
        }
        if let Some(at) = located {
            for (w, t) in truth.iter_mut().enumerate() {
                *t = space.rtt(w, user);
            }
            let location_error = median(
                (0..n).step_by(check_stride).map(|w| (at.rtt(&coords[w]) - truth[w]).abs() / truth[w]).collect(),
            );
            if let Some((wb, best)) = nearest(&truth, (0..n).filter(|&w| fits[w])) {
                let threshold_ms = best * (1.0 + next_f64(&mut s));
                let case = Case {
                    run,
                    kind: Kind::S2u,
                    threshold_ms,
                    best_ms: best,
                    best_predicted_ms: at.rtt(&coords[wb]),
                    feasible: (0..n).any(|w| fits[w] && truth[w] <= threshold_ms),
                    location_error: Some(location_error),
                };
                let measured = measured_by(&obs);
                let req = Request { objectives: vec![objective("user", at, threshold_ms, measured)], ..base.clone() };
                out.extend(place_both(&snap, &req, &truth, &case));
            }
        }
        // S2S: a target instance on a random worker; the dependent goes elsewhere.
        let target = next_below(&mut s, n);
        for (w, t) in truth.iter_mut().enumerate() {
            *t = space.rtt(w, target);
        }
        let others = || (0..n).filter(|&w| w != target && fits[w]);
        if let Some((wb, best)) = nearest(&truth, others()) {
            let threshold_ms = best * (1.0 + next_f64(&mut s));
            let case = Case {
                run,
                kind: Kind::S2s,
                threshold_ms,
                best_ms: best,
                best_predicted_ms: coords[target].rtt(&coords[wb]),
                feasible: others().any(|w| truth[w] <= threshold_ms),
                location_error: None,
            };
            let measured = conv.heard[target].iter().map(|&(w, ms)| (format!("w{w}"), ms)).collect();
            let req = Request {
                objectives: vec![objective("service target", coords[target], threshold_ms, measured)],
                exclude: vec![format!("w{target}")],
                ..base.clone()
            };
            out.extend(place_both(&snap, &req, &truth, &case));
        }
    }
    (conv, out)
}

/// The figures of one (kind, scheduler) at one N.
struct Row {
    kind: Kind,
    sched: Sched,
    experiments: usize,
    feasible: usize,
    met_share: f64,
    /// The met share per [`SLACK_CLASSES`].
    met_by_slack: [f64; 3],
    rejected_share: f64,
    ratio: [f64; 3],
    achieved: [f64; 3],
    decision: [f64; 2],
    /// Median of (predicted − true) / true for the truly nearest worker, and of its size.
    best_bias: f64,
    best_error: f64,
}

fn row(all: &[Outcome], kind: Kind, sched: Sched) -> Row {
    let xs: Vec<&Outcome> = all.iter().filter(|o| o.case.kind == kind && o.sched == sched).collect();
    let feasible: Vec<&&Outcome> = xs.iter().filter(|o| o.case.feasible).collect();
    let met = feasible.iter().filter(|o| o.met()).count();
    let rejected = xs.iter().filter(|o| o.achieved_ms.is_none()).count();
    let placed: Vec<(f64, f64)> = xs.iter().filter_map(|o| o.achieved_ms.map(|a| (a, a / o.case.best_ms))).collect();
    let ratios = sorted(placed.iter().map(|p| p.1).collect());
    let achieved = sorted(placed.iter().map(|p| p.0).collect());
    let decision = sorted(xs.iter().map(|o| o.decision_us).collect());
    let q = |v: &[f64]| [percentile(v, 0.25), percentile(v, 0.5), percentile(v, 0.9)];
    Row {
        kind,
        sched,
        experiments: xs.len(),
        feasible: feasible.len(),
        met_share: met as f64 / feasible.len().max(1) as f64,
        met_by_slack: std::array::from_fn(|c| {
            let lo = SLACK_CLASSES[c];
            let hi = SLACK_CLASSES.get(c + 1).copied().unwrap_or(f64::INFINITY);
            let band: Vec<&&&Outcome> =
                feasible.iter().filter(|o| (lo..hi).contains(&(o.case.threshold_ms / o.case.best_ms))).collect();
            band.iter().filter(|o| o.met()).count() as f64 / band.len().max(1) as f64
        }),
        rejected_share: rejected as f64 / xs.len().max(1) as f64,
        ratio: q(&ratios),
        achieved: q(&achieved),
        decision: [percentile(&decision, 0.5), percentile(&decision, 0.99)],
        best_bias: median(xs.iter().map(|o| o.case.best_predicted_ms / o.case.best_ms - 1.0).collect()),
        best_error: median(xs.iter().map(|o| (o.case.best_predicted_ms / o.case.best_ms - 1.0).abs()).collect()),
    }
}

/// Changes to what the system does, to see what they would give; none by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WhatIf {
    /// `LDP_PEERS=near`: half of each worker's peers are the nearest by location.
    NearPeers,
    /// `LDP_LOCATE=refine`: the 5 workers predicted nearest to a user measure it as well.
    Refine,
    /// `LDP_COORDS=system`: the scheduler sees system instead of application-level coordinates.
    SystemCoords,
}

impl WhatIf {
    const ALL: [WhatIf; 3] = [WhatIf::NearPeers, WhatIf::Refine, WhatIf::SystemCoords];

    /// The variable, its value, and the name of the variant.
    fn var(self) -> (&'static str, &'static str, &'static str) {
        match self {
            WhatIf::NearPeers => ("LDP_PEERS", "near", "near-peers"),
            WhatIf::Refine => ("LDP_LOCATE", "refine", "refine"),
            WhatIf::SystemCoords => ("LDP_COORDS", "system", "system-coords"),
        }
    }
}

fn what_if(w: WhatIf) -> bool {
    let (var, value, _) = w.var();
    std::env::var(var).is_ok_and(|v| v == value)
}

/// `as-is`, or the what-ifs in force joined by `+`.
fn variant() -> String {
    let on: Vec<&str> = WhatIf::ALL.into_iter().filter(|w| what_if(*w)).map(|w| w.var().2).collect();
    if on.is_empty() { "as-is".into() } else { on.join("+") }
}

/// `target/ldp-bench/`, or a subfolder named for the what-ifs in force.
fn out_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/ldp-bench");
    match variant().as_str() {
        "as-is" => dir,
        v => dir.join(format!("what-if-{v}")),
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
        pings.push(conv.pings_per_s);
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
    let location_error =
        median(all.iter().filter(|o| o.sched == Sched::Ldp).filter_map(|o| o.case.location_error).collect());

    let rows: Vec<Row> =
        [Kind::S2u, Kind::S2s].into_iter().flat_map(|k| [row(&all, k, Sched::Ldp), row(&all, k, Sched::Rom)]).collect();
    println!();
    println!(
        "### {n} workers: {runs} runs × {experiments} S2U + {experiments} S2S experiments ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    println!();
    println!(
        "| experiment | scheduler | met when feasible | met by slack < 1.2 / 1.2–1.5 / ≥ 1.5 | rejected | achieved/best p50 | p90 | achieved RTT ms p25 / p50 / p90 | decision µs p50 | p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
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
        "Vivaldi after {:.0} min (one round per {PROBE_INTERVAL_S} s, {pings_per_s:.2} pings/s per worker, peers re-picked every {:.0} min): median relative error {:.1} % (runs {:.1}–{:.1} %); located users: median relative error {:.1} %; probe traffic per worker, both ways: {payload_bps:.0} B/s of payload, {wire_bps:.0} B/s with IPv4/UDP headers. Wall time of the runs: {vivaldi_s:.0} s.",
        sim_s() / 60.0,
        PEER_EPOCH_S / 60.0,
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
    for r in rows.iter().filter(|r| r.sched == Sched::Ldp) {
        println!(
            "{}: the RTT predicted for the truly nearest worker that fits is off by {:.1} % (median of |error|; median signed error {:+.1} %).",
            r.kind.name(),
            100.0 * r.best_error,
            100.0 * r.best_bias,
        );
    }

    let dir = out_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let mut raw = String::from(
        "n,run,kind,scheduler,threshold_ms,best_ms,best_predicted_ms,achieved_ms,met,feasible,rejected,decision_us,location_error\n",
    );
    for o in &all {
        writeln!(
            raw,
            "{n},{},{},{},{:.4},{:.4},{:.4},{},{},{},{},{:.3},{}",
            o.case.run,
            o.case.kind.name(),
            o.sched.name(),
            o.case.threshold_ms,
            o.case.best_ms,
            o.case.best_predicted_ms,
            o.achieved_ms.map_or(String::new(), |a| format!("{a:.4}")),
            u8::from(o.met()),
            u8::from(o.case.feasible),
            u8::from(o.achieved_ms.is_none()),
            o.decision_us,
            o.case.location_error.map_or(String::new(), |e| format!("{e:.5}")),
        )
        .unwrap();
    }
    let mut summary = String::from(
        "n,runs,experiments,kind,scheduler,feasible,met_share,met_slack_lt1_2,met_slack_1_2_1_5,met_slack_ge1_5,rejected_share,ratio_p25,ratio_p50,ratio_p90,achieved_p25_ms,achieved_p50_ms,achieved_p90_ms,decision_p50_us,decision_p99_us,best_error,best_bias,vivaldi_error_lt5ms,vivaldi_error_5_10ms,vivaldi_error_10_20ms,vivaldi_error_ge20ms,vivaldi_error,vivaldi_error_min,vivaldi_error_max,location_error,pings_per_s,probe_payload_bps,probe_wire_bps\n",
    );
    for r in &rows {
        writeln!(
            summary,
            "{n},{runs},{},{},{},{},{:.5},{:.5},{:.5},{:.5},{:.5},{:.4},{:.4},{:.4},{:.3},{:.3},{:.3},{:.3},{:.3},{:.5},{:.5},{:.5},{:.5},{:.5},{:.5},{vivaldi_error:.5},{err_lo:.5},{err_hi:.5},{location_error:.5},{pings_per_s:.4},{payload_bps:.1},{wire_bps:.1}",
            r.experiments,
            r.kind.name(),
            r.sched.name(),
            r.feasible,
            r.met_share,
            r.met_by_slack[0],
            r.met_by_slack[1],
            r.met_by_slack[2],
            r.rejected_share,
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
            by_rtt[0],
            by_rtt[1],
            by_rtt[2],
            by_rtt[3],
        )
        .unwrap();
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
        "LDP vs ROM (best fit), simulated: {SITES} cities, {USERS} users, request {} mCPU / {} MiB, threshold = best true RTT × U(1, 2); variant: {}",
        REQUEST.millicpu,
        REQUEST.memory_mb,
        variant()
    );
    for n in sizes {
        bench(n);
    }
    println!();
    println!("CSV files: {}", out_dir().display());
}
