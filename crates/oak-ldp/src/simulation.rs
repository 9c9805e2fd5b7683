//! Test support: Vivaldi nodes converging over a synthetic space.

use crate::rng;
use crate::space::Space;
use crate::vivaldi::{Config, Vivaldi};

/// Every node of `space` probes each of its own 8–20 random neighbours once a round, for
/// `rounds` rounds (a round is ten seconds); with probability `outliers` a sample is replaced
/// by a spike of five times its value.
pub(crate) fn converge(space: &Space, rounds: u32, outliers: f64, seed: u64) -> Vec<Vivaldi> {
    converge_with(space, space.len(), &Config::default(), rounds, outliers, seed)
}

/// [`converge`] with nodes made from `cfg`, among the first `members` nodes of the space.
pub(crate) fn converge_with(
    space: &Space,
    members: usize,
    cfg: &Config,
    rounds: u32,
    outliers: f64,
    seed: u64,
) -> Vec<Vivaldi> {
    let n = members.min(space.len());
    let mut s = seed;
    let peers: Vec<Vec<usize>> = (0..n)
        .map(|i| {
            let k = 8 + rng::next_below(&mut s, 13);
            let mut p = Vec::with_capacity(k);
            while p.len() < k.min(n.saturating_sub(1)) {
                let j = rng::next_below(&mut s, n);
                if j != i && !p.contains(&j) {
                    p.push(j);
                }
            }
            p
        })
        .collect();
    let ids: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
    let mut nodes: Vec<Vivaldi> = (0..n).map(|i| Vivaldi::new(cfg.clone(), seed ^ i as u64)).collect();
    for round in 0..rounds {
        for i in 0..n {
            for &j in &peers[i] {
                let mut rtt = space.sample(i, j, &mut s);
                if rng::next_f64(&mut s) < outliers {
                    rtt *= 5.0;
                }
                let peer = nodes[j].system_coord();
                nodes[i].observe(&ids[j], rtt, peer, 10.0 * f64::from(round));
            }
        }
    }
    nodes
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Median over all pairs of |predicted − true| / true, predicting with `coord`.
pub(crate) fn median_relative_error(space: &Space, coords: &[oak_api::ldp::Coord]) -> f64 {
    let mut errs = Vec::new();
    for a in 0..coords.len() {
        for b in a + 1..coords.len() {
            let truth = space.rtt(a, b);
            errs.push((coords[a].rtt(&coords[b]) - truth).abs() / truth);
        }
    }
    median(errs)
}
