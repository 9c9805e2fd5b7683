//! A synthetic latency space with the structure of a real one, for tests, simulations and
//! benchmarks: nodes grouped around cities of a Europe-sized map, RTTs from the great-circle
//! distance (≈ 1 ms per 100 km, light in fibre, there and back) times a path-inflation
//! factor of 1.2–2, plus each node's access delay (its "height"), and a share of pairs whose
//! route is a detour, which violates the triangle inequality as real routes do.
//!
//! Pair values are derived from a hash of the pair, not stored, so a space of 100,000 nodes
//! takes a few MB.

use crate::rng;
use oak_api::net::distance_km;

/// Cities the first sites are placed at, in this order; further sites fall at random in
/// the same area.
const CITIES: [(f64, f64); 24] = [
    (48.14, 11.58), // Munich
    (52.52, 13.40), // Berlin
    (48.86, 2.35),  // Paris
    (51.51, -0.13), // London
    (40.42, -3.70), // Madrid
    (41.90, 12.50), // Rome
    (48.21, 16.37), // Vienna
    (52.23, 21.01), // Warsaw
    (59.33, 18.07), // Stockholm
    (52.37, 4.90),  // Amsterdam
    (45.46, 9.19),  // Milan
    (41.39, 2.17),  // Barcelona
    (50.08, 14.44), // Prague
    (38.72, -9.14), // Lisbon
    (53.35, -6.26), // Dublin
    (55.68, 12.57), // Copenhagen
    (47.37, 8.54),  // Zurich
    (47.50, 19.04), // Budapest
    (37.98, 23.73), // Athens
    (60.17, 24.94), // Helsinki
    (44.43, 26.10), // Bucharest
    (50.11, 8.68),  // Frankfurt
    (59.91, 10.75), // Oslo
    (50.85, 4.35),  // Brussels
];
/// The area random sites fall in: (lat, lon) corners.
const AREA: ((f64, f64), (f64, f64)) = ((37.0, -9.0), (60.0, 27.0));
/// RTT per km of great-circle distance, in ms: 100 km of fibre there and back.
const MS_PER_KM: f64 = 0.01;
/// Smallest RTT between two distinct nodes, in ms.
pub const MIN_RTT_MS: f64 = 0.1;
const KM_PER_DEGREE: f64 = 111.2;

/// How a [`Space`] is made.
#[derive(Clone, Debug, PartialEq)]
pub struct SpaceParams {
    /// Nodes in the space.
    pub nodes: usize,
    /// Cities the nodes are grouped around (at least one).
    pub sites: usize,
    /// Share of pairs routed over a detour: propagation × 1.2–2, plus 1–5 ms.
    pub tiv_share: f64,
    /// Mean queueing delay of one sample, relative to the base RTT (exponentially
    /// distributed, so a sample is never below the base).
    pub jitter: f64,
    /// Share of samples hit by a heavy-tailed spike (× 1.5 and more).
    pub spike_share: f64,
    /// Radius around its city a node falls within, in km.
    pub site_radius_km: f64,
    /// Share of nodes with a slow access link (5–15 ms instead of 0.5–3 ms).
    pub slow_access_share: f64,
}

impl Default for SpaceParams {
    fn default() -> Self {
        Self {
            nodes: 100,
            sites: 12,
            tiv_share: 0.05,
            jitter: 0.05,
            spike_share: 0.01,
            site_radius_km: 40.0,
            slow_access_share: 0.1,
        }
    }
}

#[derive(Clone, Debug)]
struct Node {
    lat: f64,
    lon: f64,
    site: usize,
    /// Access delay, counted once per end of a path, in ms.
    height: f64,
    /// How roundabout this node's routes are; a pair takes the mean of both ends.
    inflation: f64,
}

/// A synthetic latency space (see the module documentation).
#[derive(Clone, Debug)]
pub struct Space {
    nodes: Vec<Node>,
    sites: Vec<(f64, f64)>,
    /// Key of the per-pair hash.
    pair_key: u64,
    tiv_share: f64,
    jitter: f64,
    spike_share: f64,
}

fn unit_or(v: f64, dflt: f64) -> f64 {
    if v.is_finite() { v.clamp(0.0, 1.0) } else { dflt }
}

impl Space {
    /// A space made from `p` and `seed`; the same inputs give the same space. Out-of-range
    /// parameters are clamped.
    pub fn generate(p: &SpaceParams, seed: u64) -> Space {
        let d = SpaceParams::default();
        let mut s = seed;
        let sites: Vec<(f64, f64)> = (0..p.sites.max(1))
            .map(|i| {
                CITIES.get(i).copied().unwrap_or_else(|| {
                    let ((la0, lo0), (la1, lo1)) = AREA;
                    (la0 + (la1 - la0) * rng::next_f64(&mut s), lo0 + (lo1 - lo0) * rng::next_f64(&mut s))
                })
            })
            .collect();
        // Each site's routes are more or less direct; its nodes share that, with a little
        // variation of their own.
        let site_inflation: Vec<f64> = sites.iter().map(|_| 1.25 + 0.6 * rng::next_f64(&mut s)).collect();
        let radius = if p.site_radius_km.is_finite() { p.site_radius_km.clamp(0.0, 1000.0) } else { d.site_radius_km };
        let slow = unit_or(p.slow_access_share, d.slow_access_share);
        let nodes = (0..p.nodes)
            .map(|_| {
                let site = rng::next_below(&mut s, sites.len());
                let (lat0, lon0) = sites.get(site).copied().unwrap_or(CITIES[0]);
                let r = radius * rng::next_f64(&mut s).sqrt();
                let a = rng::next_f64(&mut s) * std::f64::consts::TAU;
                let lat = lat0 + r * a.sin() / KM_PER_DEGREE;
                let lon = lon0 + r * a.cos() / (KM_PER_DEGREE * lat0.to_radians().cos().max(0.1));
                let height = if rng::next_f64(&mut s) < slow {
                    5.0 + 10.0 * rng::next_f64(&mut s)
                } else {
                    0.5 + 2.5 * rng::next_f64(&mut s)
                };
                let base = site_inflation.get(site).copied().unwrap_or(1.5);
                let inflation = (base + 0.1 * (rng::next_f64(&mut s) - 0.5)).clamp(1.2, 2.0);
                Node { lat, lon, site, height, inflation }
            })
            .collect();
        Space {
            nodes,
            sites,
            pair_key: rng::next_u64(&mut s),
            tiv_share: unit_or(p.tiv_share, d.tiv_share),
            jitter: if p.jitter.is_finite() { p.jitter.clamp(0.0, 10.0) } else { d.jitter },
            spike_share: unit_or(p.spike_share, d.spike_share),
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when the space has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The true base RTT between `a` and `b`, in ms: symmetric, 0 from a node to itself, at
    /// least [`MIN_RTT_MS`] between distinct nodes; NaN when an index is out of range.
    pub fn rtt(&self, a: usize, b: usize) -> f64 {
        // In index order, so that the float arithmetic is the same both ways.
        let (lo, hi) = (a.min(b), a.max(b));
        let (Some(na), Some(nb)) = (self.nodes.get(lo), self.nodes.get(hi)) else {
            return f64::NAN;
        };
        if a == b {
            return 0.0;
        }
        let (lo, hi) = (lo as u64, hi as u64);
        let mut h = rng::mix(self.pair_key ^ lo.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ hi.rotate_left(32));
        let u_route = rng::next_f64(&mut h);
        let u_detour = rng::next_f64(&mut h);
        let u_factor = rng::next_f64(&mut h);
        let inflation = ((na.inflation + nb.inflation) / 2.0 * (1.0 + 0.1 * (u_route - 0.5))).clamp(1.2, 2.0);
        let mut prop = distance_km((na.lat, na.lon), (nb.lat, nb.lon)) * MS_PER_KM * inflation;
        if u_detour < self.tiv_share {
            // A detour adds a stretch of path: a millisecond or more even between neighbours.
            prop = prop * (1.2 + 0.8 * u_factor) + 1.0 + 4.0 * u_factor;
        }
        (prop + na.height + nb.height).max(MIN_RTT_MS)
    }

    /// One noisy measurement of the RTT between `a` and `b`: the base RTT plus queueing
    /// (exponential, mean `jitter` × base), and with probability `spike_share` a heavy-tailed
    /// spike. Advances `rng_state`. NaN when an index is out of range.
    pub fn sample(&self, a: usize, b: usize, rng_state: &mut u64) -> f64 {
        let base = self.rtt(a, b);
        let queueing = -(1.0 - rng::next_f64(rng_state)).ln() * self.jitter;
        let mut v = base * (1.0 + queueing);
        if rng::next_f64(rng_state) < self.spike_share {
            // Pareto with shape 1.5, capped: most spikes are mild, a few are huge.
            let pareto = (1.0 - rng::next_f64(rng_state)).powf(-1.0 / 1.5).min(40.0);
            v *= 0.5 + pareto;
        }
        v
    }

    /// Where node `a` is, (lat, lon) in degrees; NaN when out of range.
    pub fn location(&self, a: usize) -> (f64, f64) {
        self.nodes.get(a).map_or((f64::NAN, f64::NAN), |n| (n.lat, n.lon))
    }

    /// The site (city) node `a` belongs to.
    pub fn site(&self, a: usize) -> Option<usize> {
        self.nodes.get(a).map(|n| n.site)
    }

    /// The access delay of node `a`, in ms (its true height).
    pub fn height(&self, a: usize) -> Option<f64> {
        self.nodes.get(a).map(|n| n.height)
    }

    /// Where the sites are, (lat, lon) in degrees.
    pub fn sites(&self) -> &[(f64, f64)] {
        &self.sites
    }
}

#[cfg(test)]
mod tests;
