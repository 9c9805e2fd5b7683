use super::*;
use crate::rng;
use crate::simulation::{converge_with, median as median_of};
use crate::space::{Space, SpaceParams};
use crate::vivaldi::Config;
use proptest::prelude::*;

fn at(x: f64, y: f64, h: f64) -> Coord {
    Coord::new(x, y, h, 0.1)
}

#[test]
fn too_few_usable_observations_give_none() {
    let a = (at(0.0, 0.0, 1.0), 10.0);
    assert_eq!(multilaterate(&[]), None);
    assert_eq!(multilaterate(&[a, a]), None);
    let bad =
        [(Coord::new(f64::NAN, 0.0, 0.0, 0.0), 10.0), (at(1.0, 1.0, 1.0), -3.0), (at(1.0, 1.0, 1.0), f64::INFINITY)];
    assert_eq!(multilaterate(&[a, a, bad[0], bad[1], bad[2]]), None);
    assert_eq!(geometric_median(&[]), None);
    assert_eq!(geometric_median(&[Coord::new(0.0, 0.0, -1.0, 0.0)]), None);
}

#[test]
fn exact_rtts_give_the_point_back() {
    let truth = at(37.0, -12.0, 4.0);
    let anchors =
        [at(0.0, 0.0, 1.0), at(100.0, 0.0, 2.0), at(0.0, 80.0, 0.5), at(60.0, 60.0, 3.0), at(-40.0, 20.0, 1.5)];
    let obs: Vec<(Coord, f64)> = anchors.iter().map(|a| (*a, truth.rtt(a))).collect();
    let p = multilaterate(&obs).unwrap();
    assert!((p.x - truth.x).abs() < 1e-3 && (p.y - truth.y).abs() < 1e-3 && (p.h - truth.h).abs() < 1e-3, "{p:?}");
    assert!(p.error < 1e-6);
}

#[test]
fn the_height_stays_non_negative() {
    // RTTs smaller than the anchors' heights allow: the best point has h = 0.
    let anchors = [at(0.0, 0.0, 10.0), at(50.0, 0.0, 10.0), at(0.0, 50.0, 10.0)];
    let obs: Vec<(Coord, f64)> = anchors.iter().map(|a| (*a, 12.0)).collect();
    let p = multilaterate(&obs).unwrap();
    assert_eq!(p.h, 0.0);
    assert!(p.is_valid() && p.error > 0.0);
}

#[test]
fn results_are_deterministic() {
    let obs =
        [(at(0.0, 0.0, 1.0), 20.0), (at(30.0, 0.0, 1.0), 25.0), (at(0.0, 30.0, 1.0), 18.0), (at(20.0, 20.0, 1.0), 9.0)];
    assert_eq!(multilaterate(&obs), multilaterate(&obs));
}

#[test]
fn geometric_median_of_simple_sets() {
    // Three points: the median of a triangle with angles < 120° is its Fermat point; on a line
    // it is the middle point.
    let line = [at(0.0, 0.0, 1.0), at(10.0, 0.0, 2.0), at(30.0, 0.0, 9.0)];
    let m = geometric_median(&line).unwrap();
    assert!((m.x - 10.0).abs() < 1e-6 && m.y.abs() < 1e-6, "{m:?}");
    assert_eq!(m.h, 2.0);
    // Four corners of a square: the centre.
    let square = [at(0.0, 0.0, 1.0), at(2.0, 0.0, 1.0), at(0.0, 2.0, 1.0), at(2.0, 2.0, 1.0)];
    let m = geometric_median(&square).unwrap();
    assert!((m.x - 1.0).abs() < 1e-6 && (m.y - 1.0).abs() < 1e-6, "{m:?}");
    // A majority on one point: that point.
    let heavy = [at(5.0, 5.0, 1.0), at(5.0, 5.0, 1.0), at(5.0, 5.0, 1.0), at(100.0, 0.0, 1.0), at(0.0, 100.0, 1.0)];
    let m = geometric_median(&heavy).unwrap();
    assert!((m.x - 5.0).abs() < 1e-6 && (m.y - 5.0).abs() < 1e-6, "{m:?}");
}

#[test]
fn a_user_located_from_a_few_workers_predicts_its_rtts_to_all() {
    let e = locate_users(21, 4);
    eprintln!("users located from 4-6 workers: median relative error {e:.3}");
    assert!(e <= 0.20, "{e}");
}

/// Median relative error of RTTs predicted from users' located coordinates to every worker.
fn locate_users(space_seed: u64, seed: u64) -> f64 {
    // 100 workers run Vivaldi; 10 users (the last nodes of the space) do not. Each user is
    // measured by 4–6 random workers (the lowest of three pings) and placed from that.
    let workers = 100;
    let space = Space::generate(&SpaceParams { nodes: workers + 10, ..SpaceParams::default() }, space_seed);
    let coords: Vec<Coord> =
        converge_with(&space, workers, &Config::default(), 60, 0.0, seed).iter().map(|v| v.coord()).collect();
    let mut s = 99;
    let mut errors = Vec::new();
    for user in workers..space.len() {
        let k = 4 + rng::next_below(&mut s, 3);
        let mut probes = Vec::new();
        while probes.len() < k {
            let w = rng::next_below(&mut s, workers);
            if !probes.contains(&w) {
                probes.push(w);
            }
        }
        let obs: Vec<(Coord, f64)> = probes
            .iter()
            .map(|&w| (coords[w], (0..3).map(|_| space.sample(w, user, &mut s)).fold(f64::INFINITY, f64::min)))
            .collect();
        let p = multilaterate(&obs).unwrap();
        for (w, c) in coords.iter().enumerate() {
            let truth = space.rtt(w, user);
            errors.push((p.rtt(c) - truth).abs() / truth);
        }
    }
    median_of(errors)
}

fn coord() -> impl Strategy<Value = Coord> {
    (any::<f64>(), any::<f64>(), any::<f64>(), any::<f64>()).prop_map(|(x, y, h, e)| Coord::new(x, y, h, e))
}

fn sane_coord() -> impl Strategy<Value = Coord> {
    (-500.0..500.0f64, -500.0..500.0f64, 0.0..50.0f64).prop_map(|(x, y, h)| at(x, y, h))
}

proptest! {
    #[test]
    fn any_input_gives_a_valid_point_or_none(
        obs in proptest::collection::vec((coord(), any::<f64>()), 0..8),
        sane in proptest::collection::vec((sane_coord(), 0.01..1000.0f64), 0..8),
    ) {
        let all: Vec<(Coord, f64)> = obs.into_iter().chain(sane.iter().copied()).collect();
        if let Some(p) = multilaterate(&all) {
            prop_assert!(p.is_valid(), "{:?}", p);
        }
        if sane.len() >= 3 {
            prop_assert!(multilaterate(&sane).is_some());
        }
        let points: Vec<Coord> = all.iter().map(|(c, _)| *c).collect();
        if let Some(m) = geometric_median(&points) {
            prop_assert!(m.is_valid(), "{:?}", m);
        }
    }

    #[test]
    fn the_geometric_median_is_no_worse_than_any_input_point(points in proptest::collection::vec(sane_coord(), 1..20)) {
        let total = |p: &Coord| points.iter().map(|c| (c.x - p.x).hypot(c.y - p.y)).sum::<f64>();
        let m = geometric_median(&points).unwrap();
        for p in &points {
            prop_assert!(total(&m) <= total(p) + 1e-6 * (1.0 + total(p)));
        }
    }
}

/// A case proptest found (CI, 2026-12-02): Weiszfeld stalled above an input point's total.
#[test]
fn the_geometric_median_of_a_found_case_is_no_worse_than_its_points() {
    let points = [
        at(-370.15790290183, 242.9251646152659, 0.0),
        at(-388.6367884329069, 490.2852781387852, 0.0),
        at(-281.4591081606221, -433.06182038353535, 0.0),
        at(-381.5643484497569, 0.0, 0.0),
    ];
    let total = |p: &Coord| points.iter().map(|c| (c.x - p.x).hypot(c.y - p.y)).sum::<f64>();
    let m = geometric_median(&points).unwrap();
    for p in &points {
        assert!(total(&m) <= total(p) + 1e-6 * (1.0 + total(p)), "{} > {}", total(&m), total(p));
    }
}
