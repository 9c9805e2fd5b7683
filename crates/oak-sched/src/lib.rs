//! Placement, shared by both tiers: the root picks a cluster, a cluster picks a worker.
//!
//! A [`Snapshot`] holds candidates (workers, or clusters described by a few free "slots") and
//! the resources already reserved on them. [`Snapshot::place`] filters (runtime, architecture,
//! `direct` names, addons, CPU, memory, GPUs), scores and picks one candidate, or says precisely
//! why none fits. [`Snapshot::reserve`] and [`Snapshot::release`] keep the accounting, so
//! concurrent requests never over-commit a candidate: the original compares requests with
//! the last telemetry sample only.
//!
//! **Latency and distance (LDP).** A request may carry [`Objective`]s: be within so many ms
//! (predicted RTT between network coordinates) and/or km (great-circle distance) of any one of
//! some points (an S2S target's instances, users, an area). A candidate says where it is as
//! balls in the coordinate space and discs on the map (radius 0 for a worker, a summary for a
//! cluster), so its values are lower bounds ([`predicted_ms`], [`distance_km`]). Hard objectives
//! filter; soft ones are kept while some candidate meets them and relaxed softest first
//! otherwise; the rest are scored by Σ weight × value / bound, the lowest score wins and the
//! resource policy breaks near-ties (within [`NEAR_TIE`]). A rejection names the constraint
//! and the best value found.
//!
//! Pure: no I/O, no clock, no randomness, and no dependence on hash-map order; equal inputs
//! give equal placements. Candidates are indexed by their largest free memory, so a placement
//! without objectives looks at few candidates even among 100,000; one with objectives scores
//! every candidate that has the memory.

use oak_api::ldp::{Coord, CoordCircle, GeoCircle};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};

/// Scores within this fraction of the best one are near-ties, which the resource policy breaks:
/// latency and distance decide first, resources second.
pub const NEAR_TIE: f64 = 0.05;

/// What an unknown value (no coordinate or location on one side) counts as in a score, as a
/// multiple of its bound: worse than meeting the bound, better than being known to be more
/// than twice as far.
pub const UNKNOWN_RATIO: f64 = 2.0;

/// Smallest bound a value is divided by when scoring (a bound of 0 asks for 0).
const MIN_BOUND: f64 = 1e-6;

/// Resources in the units the scheduler counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Resources {
    /// CPU in thousandths of a core.
    pub millicpu: u64,
    pub memory_mb: u64,
    pub gpus: u32,
}

impl Resources {
    pub fn new(millicpu: u64, memory_mb: u64, gpus: u32) -> Self {
        Self { millicpu, memory_mb, gpus }
    }

    /// Whether `req` fits into `self`.
    pub fn fits(&self, req: &Resources) -> bool {
        req.millicpu <= self.millicpu && req.memory_mb <= self.memory_mb && req.gpus <= self.gpus
    }

    pub fn saturating_sub(&self, o: &Resources) -> Resources {
        Resources {
            millicpu: self.millicpu.saturating_sub(o.millicpu),
            memory_mb: self.memory_mb.saturating_sub(o.memory_mb),
            gpus: self.gpus.saturating_sub(o.gpus),
        }
    }

    pub fn saturating_add(&self, o: &Resources) -> Resources {
        Resources {
            millicpu: self.millicpu.saturating_add(o.millicpu),
            memory_mb: self.memory_mb.saturating_add(o.memory_mb),
            gpus: self.gpus.saturating_add(o.gpus),
        }
    }
}

/// One place an instance could go: a worker, or (at the root) one of a cluster's workers as
/// the cluster reports them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Slot {
    pub arch: String,
    pub runtimes: Vec<String>,
    /// Resources this slot has in all.
    pub capacity: Resources,
}

/// A worker (one slot) or a cluster (one slot per distinct kind of free space it reports).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub id: String,
    pub name: String,
    pub slots: Vec<Slot>,
    /// Balls covering the candidate in the coordinate space: a worker is one ball of radius 0
    /// (its own coordinate); a cluster is its summary. Empty: unknown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub space: Vec<CoordCircle>,
    /// Discs covering its location(s): a worker is one disc of radius 0; a cluster its
    /// summary. Empty: unknown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub area: Vec<GeoCircle>,
    /// Addons it offers (a cluster: the union over its workers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addons: Vec<String>,
}

/// A point a requirement measures from: an S2S target's worker, a located user, an area
/// centre. Either part may be unknown.
///
/// Equality and hashing compare the floats bit for bit (`f64::to_bits`), so that a request
/// can key a hash map: `NaN` equals itself, `0.0` and `-0.0` differ.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Point {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coord: Option<Coord>,
    /// `(lat, lon)` in degrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<(f64, f64)>,
}

impl Point {
    /// The bits equality and hashing look at.
    fn bits(&self) -> (Option<[u64; 4]>, Option<[u64; 2]>) {
        (
            self.coord.map(|c| [c.x.to_bits(), c.y.to_bits(), c.h.to_bits(), c.error.to_bits()]),
            self.location.map(|(lat, lon)| [lat.to_bits(), lon.to_bits()]),
        )
    }
}

/// Bitwise on the floats (see [`Point`]).
impl PartialEq for Point {
    fn eq(&self, o: &Self) -> bool {
        self.bits() == o.bits()
    }
}

/// Bitwise equality is reflexive, NaN included.
impl Eq for Point {}

/// Hashes the same bits [`PartialEq`] compares.
impl Hash for Point {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.bits().hash(state);
    }
}

/// One latency/distance requirement, resolved to points by the caller.
///
/// Equality and hashing compare the floats bit for bit, like [`Point`]'s.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Objective {
    /// Human label for messages, e.g. "service db", "users 192.0.2.7", "area munich", "49.1,11.2".
    pub label: String,
    /// The candidate must be near ANY one of these points (S2S: any running instance of the
    /// target). Several users are several objectives.
    pub points: Vec<Point>,
    /// Bound on the predicted RTT, in ms (needs coordinates on both sides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<f64>,
    /// Bound on the great-circle distance, in km (needs locations on both sides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_km: Option<f64>,
    /// 1 (or more) = hard filter; below 1 = preference of that weight.
    pub rigidness: f64,
    /// RTTs measured from some candidates to the point (candidate id, ms): for those, the
    /// measurement stands instead of the prediction (a user's link can break the triangle
    /// inequality that coordinates assume). With several points, the least of the measurement
    /// and the predictions counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measured: Vec<(String, f64)>,
}

/// No points, no bounds, hard (the SLA's default rigidness).
impl Default for Objective {
    fn default() -> Self {
        Objective {
            label: String::new(),
            points: Vec::new(),
            max_ms: None,
            max_km: None,
            rigidness: 1.0,
            measured: Vec::new(),
        }
    }
}

/// Bitwise on the floats (see [`Objective`]).
impl PartialEq for Objective {
    fn eq(&self, o: &Self) -> bool {
        self.label == o.label
            && self.points == o.points
            && self.float_bits() == o.float_bits()
            && self.measured_bits().eq(o.measured_bits())
    }
}

/// Bitwise equality is reflexive, NaN included.
impl Eq for Objective {}

/// Hashes what [`PartialEq`] compares.
impl Hash for Objective {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.label.hash(state);
        self.points.hash(state);
        self.float_bits().hash(state);
        for m in self.measured_bits() {
            m.hash(state);
        }
    }
}

impl std::fmt::Display for Objective {
    /// `within 20 ms of service db`, `within 5 ms and 50 km of area munich`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.max_ms, self.max_km) {
            (Some(ms), Some(km)) => write!(f, "within {ms} ms and {km} km of {}", self.label),
            (Some(ms), None) => write!(f, "within {ms} ms of {}", self.label),
            (None, Some(km)) => write!(f, "within {km} km of {}", self.label),
            (None, None) => write!(f, "near {}", self.label),
        }
    }
}

/// An objective's values for one candidate: the minimum over its points (`None`: unknown, or
/// not asked for).
#[derive(Clone, Copy, Debug, Default)]
struct Value {
    ms: Option<f64>,
    km: Option<f64>,
}

impl Objective {
    /// Whether it filters (rigidness 1 or more).
    pub fn is_hard(&self) -> bool {
        self.rigidness >= 1.0
    }

    /// Its weight in a score: 1 when hard, else its rigidness (0 when negative or NaN).
    fn weight(&self) -> f64 {
        if self.is_hard() {
            1.0
        } else if self.rigidness > 0.0 {
            self.rigidness
        } else {
            0.0
        }
    }

    fn float_bits(&self) -> (Option<u64>, Option<u64>, u64) {
        (self.max_ms.map(f64::to_bits), self.max_km.map(f64::to_bits), self.rigidness.to_bits())
    }

    fn measured_bits(&self) -> impl Iterator<Item = (&str, u64)> {
        self.measured.iter().map(|(id, ms)| (id.as_str(), ms.to_bits()))
    }

    /// Its values for `c`: the nearest of its points, per bound it sets; an RTT measured from
    /// `c` stands instead of the prediction.
    fn value(&self, c: &Candidate) -> Value {
        let mut v = Value::default();
        for p in &self.points {
            if self.max_ms.is_some() {
                v.ms = min_known(v.ms, predicted_ms(c, p));
            }
            if self.max_km.is_some() {
                v.km = min_known(v.km, distance_km(c, p));
            }
        }
        if self.max_ms.is_some()
            && let Some((_, ms)) = self.measured.iter().find(|(id, ms)| *id == c.id && ms.is_finite() && *ms >= 0.0)
        {
            // With one point the measurement is to it and stands. With several, it is to one
            // of them (which is not said): another may still be nearer, so the least counts.
            v.ms = match (self.points.len(), v.ms) {
                (n, Some(p)) if n > 1 => Some(p.min(*ms)),
                _ => Some(*ms),
            };
        }
        v
    }

    /// Whether `v` meets every bound it sets (an unknown value does not).
    fn met(&self, v: Value) -> bool {
        self.max_ms.is_none_or(|b| v.ms.is_some_and(|x| x <= b))
            && self.max_km.is_none_or(|b| v.km.is_some_and(|x| x <= b))
    }

    /// Σ value / bound over the bounds it sets; an unknown value counts [`UNKNOWN_RATIO`].
    /// Never NaN.
    fn ratio(&self, v: Value) -> f64 {
        let one = |bound: Option<f64>, x: Option<f64>| match (bound, x) {
            (None, _) => 0.0,
            (Some(_), None) => UNKNOWN_RATIO,
            (Some(b), Some(x)) => {
                let q = x / b.max(MIN_BOUND);
                // Only ∞/∞ gives NaN here: an infinite value within an infinite bound.
                if q.is_nan() { 1.0 } else { q }
            }
        };
        one(self.max_ms, v.ms) + one(self.max_km, v.km)
    }

    /// Its weighted contribution to a candidate's score (never NaN).
    fn score(&self, v: Value) -> f64 {
        let w = self.weight();
        if w > 0.0 { w * self.ratio(v) } else { 0.0 }
    }
}

fn min_known(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// The smallest of the values that are numbers.
fn min_number(values: impl Iterator<Item = f64>) -> Option<f64> {
    values.filter(|v| !v.is_nan()).map(|v| v.max(0.0)).reduce(f64::min)
}

/// Predicted RTT from `c` to `p`, in ms: a lower bound, the minimum over the candidate's balls
/// of max(0, RTT to the ball's centre − its radius). `None` when either side has no coordinate.
pub fn predicted_ms(c: &Candidate, p: &Point) -> Option<f64> {
    let at = p.coord?;
    min_number(c.space.iter().map(|b| b.coord.rtt(&at) - b.radius_ms))
}

/// Great-circle distance from `c` to `p`, in km: a lower bound, the minimum over the
/// candidate's discs of max(0, distance to the disc's centre − its radius). `None` when either
/// side has no location.
pub fn distance_km(c: &Candidate, p: &Point) -> Option<f64> {
    let at = p.location?;
    min_number(c.area.iter().map(|d| oak_api::net::distance_km((d.lat, d.lon), at) - d.radius_km))
}

/// What an instance needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Request {
    pub resources: Resources,
    /// Runtime name as the SLA says it (`container` and `docker` are the same).
    pub runtime: String,
    /// Allowed architectures; empty means any.
    pub arch: Vec<String>,
    /// `direct` constraint: allowed candidate names (or ids); empty means any.
    pub direct: Vec<String>,
    /// Candidates not to use (they refused this instance before).
    pub exclude: Vec<String>,
    /// Addons the candidate must offer, every one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addons: Vec<String>,
    /// Latency and distance requirements (see [`Snapshot::place`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objectives: Vec<Objective>,
}

/// How to rank the candidates that fit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// The candidate with the least free memory that still fits: packs workers, keeps large
    /// holes for large requests (ROM, maximise utilisation).
    #[default]
    BestFit,
    /// The candidate with the most free memory: spreads load.
    Spread,
}

/// Why nothing fits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// There is no candidate at all.
    NoCandidates,
    /// Candidates exist; none passes every filter. `detail` says how many failed which filter.
    NoneFits { detail: String },
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::NoCandidates => f.write_str("no candidate is available"),
            Rejection::NoneFits { detail } => f.write_str(detail),
        }
    }
}

/// `container` and `docker` name the same runtime.
pub fn normalize_runtime(r: &str) -> &str {
    match r {
        "docker" => "container",
        other => other,
    }
}

/// Maps Rust's architecture names to the OCI/Go ones the SLA uses.
pub fn normalize_arch(a: &str) -> &str {
    match a {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[derive(Clone, Debug)]
struct Entry {
    cand: Candidate,
    reserved: Vec<Resources>,
    /// Largest free memory over the slots: the index key.
    key: u64,
}

impl Entry {
    fn free(&self, i: usize) -> Resources {
        self.cand.slots[i].capacity.saturating_sub(&self.reserved[i])
    }

    fn compute_key(&self) -> u64 {
        (0..self.cand.slots.len()).map(|i| self.free(i).memory_mb).max().unwrap_or(0)
    }
}

/// A placement: which candidate, and which of its slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub candidate: usize,
    pub slot: usize,
    pub id: String,
}

/// Candidates with their reservations, indexed for placement.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    entries: Vec<Entry>,
    /// (largest free memory, candidate index).
    index: BTreeSet<(u64, usize)>,
}

/// The first filter a candidate fails, in the order rejection messages list them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Miss {
    Excluded,
    Direct,
    Addons,
    Runtime,
    Arch,
    Memory,
    Cpu,
    Gpus,
}

/// What a rejection says about one hard objective: how many candidates it ruled out (those
/// that passed every filter and no earlier hard objective), and, over every candidate that
/// passed the filters, the nearest one and how many have no value.
#[derive(Clone, Debug, Default)]
struct Far<'a> {
    ruled_out: usize,
    best_ms: Option<(f64, &'a str)>,
    best_km: Option<(f64, &'a str)>,
    unknown_ms: (usize, &'a str),
    unknown_km: (usize, &'a str),
}

fn nearer<'a>(best: &mut Option<(f64, &'a str)>, value: f64, name: &'a str) {
    if best.is_none_or(|(b, _)| value < b) {
        *best = Some((value, name));
    }
}

impl Far<'_> {
    /// `(best is w3 at 34.2 ms; w7 has no network coordinate yet)`.
    fn notes(&self, o: &Objective) -> String {
        let mut notes = Vec::new();
        let metrics = [
            (
                o.max_ms,
                o.points.iter().any(|p| p.coord.is_some()),
                self.best_ms,
                self.unknown_ms,
                "ms",
                "network coordinate",
            ),
            (o.max_km, o.points.iter().any(|p| p.location.is_some()), self.best_km, self.unknown_km, "km", "location"),
        ];
        for (bound, known_point, best, unknown, unit, what) in metrics {
            if bound.is_none() {
                continue;
            }
            if !known_point {
                notes.push(format!("{} has no {what} yet", o.label));
                continue;
            }
            if let Some((v, name)) = best {
                notes.push(format!("best is {name} at {v:.1} {unit}"));
            }
            match unknown {
                (0, _) => {}
                (1, name) => notes.push(format!("{name} has no {what} yet")),
                (n, _) => notes.push(format!("{n} have no {what} yet")),
            }
        }
        if notes.is_empty() { String::new() } else { format!(" ({})", notes.join("; ")) }
    }
}

impl Snapshot {
    pub fn new(candidates: Vec<Candidate>) -> Self {
        let mut s = Snapshot::default();
        for c in candidates {
            s.add(c);
        }
        s
    }

    /// Adds a candidate with nothing reserved; returns its index.
    pub fn add(&mut self, cand: Candidate) -> usize {
        let reserved = vec![Resources::default(); cand.slots.len()];
        let mut e = Entry { cand, reserved, key: 0 };
        e.key = e.compute_key();
        let idx = self.entries.len();
        self.index.insert((e.key, idx));
        self.entries.push(e);
        idx
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn candidate(&self, idx: usize) -> Option<&Candidate> {
        self.entries.get(idx).map(|e| &e.cand)
    }

    pub fn find(&self, id: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.cand.id == id)
    }

    /// Free resources of one slot.
    pub fn free(&self, idx: usize, slot: usize) -> Option<Resources> {
        let e = self.entries.get(idx)?;
        (slot < e.cand.slots.len()).then(|| e.free(slot))
    }

    fn rekey(&mut self, idx: usize) {
        let Some(e) = self.entries.get_mut(idx) else { return };
        self.index.remove(&(e.key, idx));
        e.key = e.compute_key();
        self.index.insert((e.key, idx));
    }

    /// Reserves `res` on a slot (an instance was placed there, or already runs there).
    /// Reservations may exceed capacity (e.g. after a worker shrank); the slot then fits nothing.
    pub fn reserve(&mut self, idx: usize, slot: usize, res: &Resources) {
        if let Some(r) = self.entries.get_mut(idx).and_then(|e| e.reserved.get_mut(slot)) {
            *r = r.saturating_add(res);
            self.rekey(idx);
        }
    }

    /// Gives back what [`reserve`](Self::reserve) took.
    pub fn release(&mut self, idx: usize, slot: usize, res: &Resources) {
        if let Some(r) = self.entries.get_mut(idx).and_then(|e| e.reserved.get_mut(slot)) {
            *r = r.saturating_sub(res);
            self.rekey(idx);
        }
    }

    /// The first slot of a candidate that passes every filter, if any.
    fn fitting_slot(&self, idx: usize, req: &Request, runtime: &str) -> Option<usize> {
        let e = &self.entries[idx];
        if !req.exclude.is_empty() && req.exclude.iter().any(|x| *x == e.cand.id || *x == e.cand.name) {
            return None;
        }
        if !req.direct.is_empty() && !req.direct.iter().any(|d| *d == e.cand.name || *d == e.cand.id) {
            return None;
        }
        if !req.addons.is_empty() && !req.addons.iter().all(|a| e.cand.addons.contains(a)) {
            return None;
        }
        (0..e.cand.slots.len()).find(|&i| {
            let s = &e.cand.slots[i];
            s.runtimes.iter().any(|r| normalize_runtime(r) == runtime)
                && (req.arch.is_empty() || req.arch.iter().any(|a| normalize_arch(a) == normalize_arch(&s.arch)))
                && e.free(i).fits(&req.resources)
        })
    }

    /// Picks a candidate for `req`, or says why none fits. Does not reserve.
    ///
    /// Without objectives: among the candidates passing every filter (exclude, direct, addons,
    /// runtime, architecture, resources), BestFit takes the one with the least largest free
    /// memory, Spread the most, ties by index (BestFit the lower, Spread the higher).
    ///
    /// With objectives, every candidate that has the memory is scored:
    /// - hard objectives (rigidness ≥ 1) filter; an unknown value (no coordinate or location on
    ///   one side) fails them;
    /// - soft ones are kept while some candidate meets them all; otherwise the softest (lowest
    ///   rigidness, then the earlier) is relaxed, then the next, until some candidate remains;
    /// - score = Σ over all objectives of weight × value / bound (weight: 1 when hard, else the
    ///   rigidness; both bounds: both ratios; unknown: [`UNKNOWN_RATIO`]). The lowest score
    ///   wins; scores within [`NEAR_TIE`] of it are near-ties, broken as without objectives.
    pub fn place(&self, req: &Request, policy: Policy) -> Result<Placement, Rejection> {
        if self.entries.is_empty() {
            return Err(Rejection::NoCandidates);
        }
        let runtime = normalize_runtime(&req.runtime);
        if !req.objectives.is_empty() {
            return self.place_scored(req, policy, runtime);
        }
        let lo = (req.resources.memory_mb, 0usize);
        let hit = match policy {
            Policy::BestFit => {
                self.index.range(lo..).find_map(|&(_, idx)| self.fitting_slot(idx, req, runtime).map(|s| (idx, s)))
            }
            Policy::Spread => self
                .index
                .range(lo..)
                .rev()
                .find_map(|&(_, idx)| self.fitting_slot(idx, req, runtime).map(|s| (idx, s))),
        };
        match hit {
            Some((idx, slot)) => Ok(self.placement(idx, slot)),
            None => Err(Rejection::NoneFits { detail: self.explain(req, runtime) }),
        }
    }

    fn placement(&self, idx: usize, slot: usize) -> Placement {
        Placement { candidate: idx, slot, id: self.entries[idx].cand.id.clone() }
    }

    /// [`place`](Self::place) for a request with objectives: one pass over the candidates
    /// with enough memory, in storage order (sequential memory); hard objectives are judged
    /// first, so most candidates that fail one cost little.
    fn place_scored(&self, req: &Request, policy: Policy, runtime: &str) -> Result<Placement, Rejection> {
        let objs = &req.objectives;
        // Relaxation order of the soft objectives, softest first: rank[j] = 1 + position.
        let mut soft: Vec<usize> = (0..objs.len()).filter(|&j| !objs[j].is_hard()).collect();
        soft.sort_by(|&a, &b| objs[a].weight().total_cmp(&objs[b].weight()).then(a.cmp(&b)));
        let mut rank = vec![0usize; objs.len()];
        for (pos, &j) in soft.iter().enumerate() {
            rank[j] = pos + 1;
        }
        let mut values = vec![Value::default(); objs.len()];
        // (index key, slot, soft objectives to relax before it qualifies, score).
        let mut kept: Vec<((u64, usize), usize, usize, f64)> = Vec::new();
        'candidates: for (idx, e) in self.entries.iter().enumerate() {
            if e.key < req.resources.memory_mb {
                continue;
            }
            let Some(slot) = self.fitting_slot(idx, req, runtime) else { continue };
            for (o, v) in objs.iter().zip(values.iter_mut()).filter(|(o, _)| o.is_hard()) {
                *v = o.value(&e.cand);
                if !o.met(*v) {
                    continue 'candidates;
                }
            }
            let (mut relax, mut score) = (0usize, 0.0f64);
            for (j, (o, v)) in objs.iter().zip(values.iter_mut()).enumerate() {
                if !o.is_hard() {
                    *v = o.value(&e.cand);
                    if !o.met(*v) {
                        relax = relax.max(rank[j]);
                    }
                }
                score += o.score(*v);
            }
            kept.push(((e.key, idx), slot, relax, score));
        }
        let Some(relax) = kept.iter().map(|k| k.2).min() else {
            return Err(Rejection::NoneFits { detail: self.explain(req, runtime) });
        };
        let kept = kept.iter().filter(|k| k.2 == relax);
        let best = kept.clone().map(|k| k.3).fold(f64::INFINITY, f64::min);
        let limit = best + (best * NEAR_TIE).max(1e-9);
        // Near-ties break as without objectives: by (largest free memory, index).
        let band = kept.filter(|k| k.3 <= limit);
        let pick = match policy {
            Policy::BestFit => band.min_by_key(|k| k.0),
            Policy::Spread => band.max_by_key(|k| k.0),
        };
        match pick {
            Some(&((_, idx), slot, _, _)) => Ok(self.placement(idx, slot)),
            // Unreachable: the best score is in the band.
            None => Err(Rejection::NoneFits { detail: self.explain(req, runtime) }),
        }
    }

    /// The first filter the candidate fails, if any (no allocation).
    fn miss(&self, e: &Entry, req: &Request, runtime: &str) -> Option<Miss> {
        if req.exclude.iter().any(|x| *x == e.cand.id || *x == e.cand.name) {
            return Some(Miss::Excluded);
        }
        if !req.direct.is_empty() && !req.direct.iter().any(|d| *d == e.cand.name || *d == e.cand.id) {
            return Some(Miss::Direct);
        }
        if !req.addons.iter().all(|a| e.cand.addons.contains(a)) {
            return Some(Miss::Addons);
        }
        // The furthest filter any slot gets through decides the reason.
        let mut stage = Miss::Runtime;
        for (i, sl) in e.cand.slots.iter().enumerate() {
            if !sl.runtimes.iter().any(|r| normalize_runtime(r) == runtime) {
                continue;
            }
            stage = stage.max(Miss::Arch);
            if !(req.arch.is_empty() || req.arch.iter().any(|a| normalize_arch(a) == normalize_arch(&sl.arch))) {
                continue;
            }
            stage = stage.max(Miss::Memory);
            let f = e.free(i);
            if f.memory_mb < req.resources.memory_mb {
                continue;
            }
            stage = stage.max(Miss::Cpu);
            if f.millicpu < req.resources.millicpu {
                continue;
            }
            stage = Miss::Gpus;
            if f.gpus >= req.resources.gpus {
                return None;
            }
        }
        Some(stage)
    }

    /// Counts, for each filter, the candidates it ruled out (each candidate counted once, at
    /// the first filter it fails, in the order the message lists them), then, for each hard
    /// objective, those it ruled out among the rest, with the best value any candidate passing
    /// the filters has.
    fn explain(&self, req: &Request, runtime: &str) -> String {
        let mut m = [0usize; 8];
        let objs = &req.objectives;
        let mut far = vec![Far::default(); objs.len()];
        for e in &self.entries {
            if let Some(miss) = self.miss(e, req, runtime) {
                m[miss as usize] += 1;
                continue;
            }
            let c = &e.cand;
            let name = if c.name.is_empty() { c.id.as_str() } else { c.name.as_str() };
            let mut first_failed = None;
            for (j, o) in objs.iter().enumerate().filter(|(_, o)| o.is_hard()) {
                let v = o.value(c);
                let f = &mut far[j];
                for (bound, value, best, unknown) in [
                    (o.max_ms, v.ms, &mut f.best_ms, &mut f.unknown_ms),
                    (o.max_km, v.km, &mut f.best_km, &mut f.unknown_km),
                ] {
                    match (bound, value) {
                        (None, _) => {}
                        (Some(_), Some(x)) => nearer(best, x, name),
                        (Some(_), None) => {
                            if unknown.0 == 0 {
                                unknown.1 = name;
                            }
                            unknown.0 += 1;
                        }
                    }
                }
                if first_failed.is_none() && !o.met(v) {
                    first_failed = Some(j);
                }
            }
            if let Some(j) = first_failed {
                far[j].ruled_out += 1;
            }
        }
        let r = &req.resources;
        let mut parts = Vec::new();
        let mut say = |n: usize, what: String| {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        };
        say(m[Miss::Excluded as usize], "refused it before".into());
        say(m[Miss::Direct as usize], format!("are not named by the direct constraint ({})", req.direct.join(";")));
        say(m[Miss::Addons as usize], format!("lack the addons it needs ({})", req.addons.join(";")));
        say(m[Miss::Runtime as usize], format!("lack runtime {runtime}"));
        say(m[Miss::Arch as usize], format!("have another architecture than {}", req.arch.join("/")));
        say(m[Miss::Memory as usize], format!("have less than {} MiB memory free", r.memory_mb));
        say(m[Miss::Cpu as usize], format!("have less than {:.2} vCPU free", r.millicpu as f64 / 1000.0));
        say(m[Miss::Gpus as usize], format!("have fewer than {} GPUs free", r.gpus));
        for (o, f) in objs.iter().zip(&far) {
            say(f.ruled_out, format!("are not {o}{}", f.notes(o)));
        }
        format!("none of {} candidates fits: {}", self.entries.len(), parts.join(", "))
    }
}

pub mod objectives;

#[cfg(test)]
mod tests;
