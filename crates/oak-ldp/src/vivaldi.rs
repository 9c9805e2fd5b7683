//! A Vivaldi node (Dabek et al., SIGCOMM'04: 2-D Euclidean coordinates plus a height) with
//! the improvements of "Network Coordinates in the Wild" (Ledlie, Gardner, Seltzer,
//! NSDI'07):
//!
//! - a **moving-percentile (MP) filter** per neighbour: the sample fed to Vivaldi is a low
//!   percentile of the last few RTT samples to that neighbour, so queueing spikes are ignored;
//! - **application-level coordinates** (the ENERGY heuristic): the coordinate handed to the
//!   application changes only when the recent system coordinates are, by the energy distance,
//!   from another distribution than those seen since the last change; callers comparing
//!   coordinates over time then see a stable value instead of constant small drift;
//! - a weak **gravity** towards the origin, so the whole space does not drift away.
//!
//! Everything is bounded: at most [`MAX_NEIGHBOURS`] neighbours, at most [`MAX_WINDOW`]
//! samples and coordinates per window, coordinates within [`MAX_COORD_MS`].

use crate::rng;
use oak_api::ldp::{Coord, MAX_COORD_MS};
use std::collections::{BTreeMap, VecDeque};

/// Most neighbours a node keeps; the least recently heard goes first.
pub const MAX_NEIGHBOURS: usize = 256;
/// Largest window (MP filter and application-level windows) a node keeps.
pub const MAX_WINDOW: usize = 64;
/// Largest RTT sample accepted, in ms: anything above is a broken measurement.
pub const MAX_RTT_MS: f64 = 60_000.0;
/// Gravity's ρ: the pull towards the origin is `(|x| / ρ)²` ms per update,
/// negligible for coordinates of a few hundred ms and strong for runaway ones.
const GRAVITY_RHO_MS: f64 = 2048.0;
/// Below this Euclidean distance, in ms, two coordinates count as coincident.
const COINCIDENT_MS: f64 = 1e-9;

/// Tuning of a [`Vivaldi`] node. Out-of-range values are replaced by the defaults (or
/// clamped) when the node is made.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Weight of a new sample in the error estimate (`c_e`).
    pub ce: f64,
    /// Fraction of the way a sample moves the coordinate (`c_c`).
    pub cc: f64,
    /// Error estimate of a node that knows nothing; errors are clamped to it.
    pub max_error: f64,
    /// Smallest height, in ms.
    pub min_height: f64,
    /// RTT samples per neighbour kept for the MP filter.
    pub window: usize,
    /// Percentile of the window fed to Vivaldi (0.25: the lower quartile).
    pub percentile: f64,
    /// Seconds after which a silent neighbour is forgotten (see [`Vivaldi::forget_stale`]).
    pub neighbour_ttl_s: f64,
    /// ENERGY threshold τ, in ms: the application-level coordinate moves when the energy
    /// distance between the start window and the current window exceeds it.
    pub app_threshold: f64,
    /// Size of both application-level windows, in system coordinates.
    pub app_window: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ce: 0.25,
            cc: 0.25,
            max_error: 1.5,
            min_height: 1e-5,
            window: 4,
            percentile: 0.25,
            neighbour_ttl_s: 300.0,
            app_threshold: 8.0,
            app_window: 16,
        }
    }
}

impl Config {
    /// The same configuration with every field in its valid range.
    fn sanitized(self) -> Self {
        let d = Self::default();
        let unit = |v: f64, dflt: f64| if v.is_finite() { v.clamp(0.0, 1.0) } else { dflt };
        Self {
            ce: unit(self.ce, d.ce),
            cc: unit(self.cc, d.cc),
            max_error: if self.max_error.is_finite() && self.max_error > 0.0 {
                self.max_error.min(MAX_COORD_MS)
            } else {
                d.max_error
            },
            min_height: if self.min_height.is_finite() && self.min_height >= 0.0 {
                self.min_height.min(MAX_COORD_MS)
            } else {
                d.min_height
            },
            window: self.window.clamp(1, MAX_WINDOW),
            percentile: unit(self.percentile, d.percentile),
            neighbour_ttl_s: if self.neighbour_ttl_s >= 0.0 { self.neighbour_ttl_s } else { d.neighbour_ttl_s },
            app_threshold: if self.app_threshold.is_finite() && self.app_threshold >= 0.0 {
                self.app_threshold
            } else {
                d.app_threshold
            },
            app_window: self.app_window.clamp(1, MAX_WINDOW),
        }
    }
}

#[derive(Clone, Debug)]
struct Neighbour {
    /// The last `window` samples, oldest first.
    samples: VecDeque<f64>,
    last_heard: f64,
}

impl Neighbour {
    /// The configured percentile of the window (nearest rank).
    fn filtered(&self, percentile: f64) -> f64 {
        let mut s: Vec<f64> = self.samples.iter().copied().collect();
        s.sort_by(f64::total_cmp);
        let rank = (percentile * s.len() as f64).ceil() as usize;
        s.get(rank.saturating_sub(1).min(s.len().saturating_sub(1))).copied().unwrap_or(0.0)
    }
}

/// One node's Vivaldi state: its system coordinate, error estimate, neighbours' RTT windows
/// and application-level coordinate.
#[derive(Clone, Debug)]
pub struct Vivaldi {
    cfg: Config,
    /// The system coordinate; its `error` is the node's error estimate.
    sys: Coord,
    /// The application-level coordinate.
    app: AppLevel,
    neighbours: BTreeMap<String, Neighbour>,
    rng: u64,
}

impl Vivaldi {
    /// A node at the origin that knows nothing (error = `max_error`).
    pub fn new(cfg: Config, seed: u64) -> Self {
        let cfg = cfg.sanitized();
        let sys = Coord::new(0.0, 0.0, cfg.min_height, cfg.max_error);
        Self {
            sys,
            app: AppLevel::new(sys, cfg.app_window, cfg.app_threshold),
            neighbours: BTreeMap::new(),
            rng: seed,
            cfg,
        }
    }

    /// The application-level coordinate, with the current error estimate in `.error`.
    pub fn coord(&self) -> Coord {
        Coord { error: self.sys.error, ..self.app.coord }
    }

    /// The raw Vivaldi coordinate, with the current error estimate in `.error`.
    pub fn system_coord(&self) -> Coord {
        self.sys
    }

    /// One RTT sample to `peer` whose (system) coordinate is `peer_coord`, at time `now`
    /// (seconds, any epoch). Filters the sample through the peer's moving-percentile window,
    /// then runs one Vivaldi update with the filtered value. Ignores non-finite, non-positive
    /// and absurd (> [`MAX_RTT_MS`]) samples, invalid peer coordinates ([`Coord::is_valid`])
    /// and a non-finite `now`. Returns true when the system coordinate moved.
    pub fn observe(&mut self, peer: &str, rtt_ms: f64, peer_coord: Coord, now: f64) -> bool {
        let usable = rtt_ms.is_finite() && rtt_ms > 0.0 && rtt_ms <= MAX_RTT_MS;
        if !usable || !peer_coord.is_valid() || !now.is_finite() {
            return false;
        }
        let window = self.cfg.window;
        let n = self
            .neighbours
            .entry(peer.to_owned())
            .or_insert_with(|| Neighbour { samples: VecDeque::with_capacity(window), last_heard: now });
        n.samples.push_back(rtt_ms);
        while n.samples.len() > window {
            n.samples.pop_front();
        }
        n.last_heard = now;
        let filtered = n.filtered(self.cfg.percentile);
        self.evict_beyond_capacity(peer);
        let moved = self.update(filtered, &peer_coord);
        self.app.push(self.sys);
        moved
    }

    /// Drops the neighbours not heard from for more than `neighbour_ttl_s` before `now`.
    pub fn forget_stale(&mut self, now: f64) {
        if now.is_nan() {
            return;
        }
        let ttl = self.cfg.neighbour_ttl_s;
        self.neighbours.retain(|_, n| now - n.last_heard <= ttl);
    }

    /// The filtered RTT (the MP filter's value) to every neighbour kept, in ms, sorted by
    /// peer id.
    pub fn rtts(&self) -> Vec<(String, f64)> {
        self.neighbours.iter().map(|(id, n)| (id.clone(), n.filtered(self.cfg.percentile))).collect()
    }

    /// How many neighbours are kept.
    pub fn neighbours(&self) -> usize {
        self.neighbours.len()
    }

    /// Evicts the least recently heard neighbours (never `keep`) beyond [`MAX_NEIGHBOURS`].
    fn evict_beyond_capacity(&mut self, keep: &str) {
        while self.neighbours.len() > MAX_NEIGHBOURS {
            let oldest = self
                .neighbours
                .iter()
                .filter(|(id, _)| id.as_str() != keep)
                .min_by(|a, b| a.1.last_heard.total_cmp(&b.1.last_heard))
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => self.neighbours.remove(&id),
                None => break,
            };
        }
    }

    /// One Vivaldi step towards explaining `rtt` (> 0, finite) to a node at `peer`.
    fn update(&mut self, rtt: f64, peer: &Coord) -> bool {
        let cfg = &self.cfg;
        let before = self.sys;
        let local_err = self.sys.error;
        let peer_err = peer.error.min(cfg.max_error);
        let w = if local_err + peer_err > 0.0 { local_err / (local_err + peer_err) } else { 0.5 };
        let dist = self.sys.rtt(peer);
        let sample_err = ((dist - rtt).abs() / rtt).min(cfg.max_error);
        let error = sample_err * cfg.ce * w + local_err * (1.0 - cfg.ce * w);

        // The unit vector of the height model, [x_i - x_j, h_i + h_j] / (‖x_i - x_j‖ + h_i + h_j):
        // a node that is too far from everyone shrinks its height as well as moving.
        let (dx, dy) = (self.sys.x - peer.x, self.sys.y - peer.y);
        let e = dx.hypot(dy);
        let hs = self.sys.h + peer.h;
        let (ux, uy, de) = if e > COINCIDENT_MS {
            (dx / e, dy / e, e)
        } else {
            // Coincident: push apart in a random direction, at least half of it in the plane.
            let a = rng::next_f64(&mut self.rng) * std::f64::consts::TAU;
            (a.cos(), a.sin(), hs.max(1.0))
        };
        let force = cfg.cc * w * (rtt - dist);
        let norm = de + hs;
        let mut next = Coord::new(
            self.sys.x + force * ux * de / norm,
            self.sys.y + force * uy * de / norm,
            self.sys.h + force * hs / norm,
            error,
        );
        // Gravity: x -= (|x| / ρ)² · x / |x|.
        let g = next.x.hypot(next.y) / (GRAVITY_RHO_MS * GRAVITY_RHO_MS);
        next.x -= next.x * g;
        next.y -= next.y * g;

        next.x = next.x.clamp(-MAX_COORD_MS, MAX_COORD_MS);
        next.y = next.y.clamp(-MAX_COORD_MS, MAX_COORD_MS);
        next.h = next.h.clamp(cfg.min_height, MAX_COORD_MS);
        next.error = next.error.clamp(0.0, cfg.max_error);
        if !next.is_valid() {
            // Cannot happen with finite inputs; keep the old coordinate rather than poison it.
            return false;
        }
        self.sys = next;
        (before.x, before.y, before.h) != (next.x, next.y, next.h)
    }
}

/// The ENERGY heuristic of NSDI'07: the application-level coordinate moves to the centroid
/// of the last `window` system coordinates when their energy distance from the start window
/// (the first `window` system coordinates after the last move) exceeds `threshold`. Running
/// sums make one step cost O(window) instead of O(window²).
#[derive(Clone, Debug)]
struct AppLevel {
    window: usize,
    threshold: f64,
    coord: Coord,
    /// True until the first move: the coordinate follows the system one while the first
    /// start window fills.
    initial: bool,
    start: Vec<Coord>,
    current: VecDeque<Coord>,
    /// Σ d(a, b) over ordered pairs of the start window (once it is full).
    start_within: f64,
    /// Σ d(a, b) over ordered pairs of the current window.
    current_within: f64,
    /// Σ d(a, b), a in the start window (once it is full), b in the current window.
    cross: f64,
    /// Steps since the sums were last computed from scratch, to bound rounding drift.
    steps: u32,
}

impl AppLevel {
    fn new(c: Coord, window: usize, threshold: f64) -> Self {
        Self {
            window,
            threshold,
            coord: c,
            initial: true,
            start: Vec::with_capacity(window),
            current: VecDeque::with_capacity(window),
            start_within: 0.0,
            current_within: 0.0,
            cross: 0.0,
            steps: 0,
        }
    }

    fn push(&mut self, c: Coord) {
        let start_full = self.start.len() >= self.window;
        if self.current.len() >= self.window
            && let Some(old) = self.current.pop_front()
        {
            self.current_within -= 2.0 * sum_to(&old, self.current.iter());
            if start_full {
                self.cross -= sum_to(&old, self.start.iter());
            }
        }
        self.current_within += 2.0 * sum_to(&c, self.current.iter());
        self.current.push_back(c);
        if !start_full {
            self.start.push(c);
            if self.initial {
                self.coord = c;
            }
            if self.start.len() >= self.window {
                self.recompute();
            }
            return;
        }
        self.cross += sum_to(&c, self.start.iter());
        self.steps += 1;
        if self.steps >= 1024 {
            self.recompute();
        }
        if self.energy() > self.threshold {
            let n = self.current.len().max(1) as f64;
            let (x, y, h) = self.current.iter().fold((0.0, 0.0, 0.0), |(x, y, h), c| (x + c.x, y + c.y, h + c.h));
            self.coord = Coord::new(x / n, y / n, h / n, 0.0);
            self.start.clear();
            self.initial = false;
        }
    }

    fn recompute(&mut self) {
        self.start_within = self.start.iter().map(|a| sum_to(a, self.start.iter())).sum();
        self.current_within = self.current.iter().map(|a| sum_to(a, self.current.iter())).sum();
        self.cross = self.start.iter().map(|a| sum_to(a, self.current.iter())).sum();
        self.steps = 0;
    }

    /// The energy distance (Székely) between the windows, scaled by `nm / (n + m)` as in
    /// NSDI'07: `nm/(n+m) · (2/(nm) Σ|a−b| − 1/n² Σ|a−a'| − 1/m² Σ|b−b'|)`.
    fn energy(&self) -> f64 {
        let (n, m) = (self.start.len() as f64, self.current.len() as f64);
        if n == 0.0 || m == 0.0 {
            return 0.0;
        }
        n * m / (n + m) * (2.0 * self.cross / (n * m) - self.start_within / (n * n) - self.current_within / (m * m))
    }
}

fn sum_to<'a>(a: &Coord, others: impl Iterator<Item = &'a Coord>) -> f64 {
    others.map(|b| position_distance(a, b)).sum()
}

/// Distance between two positions of a node: Euclidean in the plane plus the height change.
fn position_distance(a: &Coord, b: &Coord) -> f64 {
    (a.x - b.x).hypot(a.y - b.y) + (a.h - b.h).abs()
}

#[cfg(test)]
mod tests;
