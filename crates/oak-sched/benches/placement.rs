//! Scheduler benchmark: decision cost per candidate, and placements per second.
//! `cargo bench -p oak-sched --bench placement`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use oak_api::ldp::{Coord, CoordCircle, GeoCircle};
use oak_sched::{Candidate, Objective, Point, Policy, Request, Resources, Slot, Snapshot};
use std::time::Instant;

/// A deterministic mix of workers: 1-16 cores, 1-32 GiB, a quarter of them arm64.
fn workers(n: usize) -> Vec<Candidate> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Candidate {
                id: format!("w{i}"),
                name: format!("worker-{i}"),
                slots: vec![Slot {
                    arch: if x.is_multiple_of(4) { "arm64".into() } else { "amd64".into() },
                    runtimes: vec!["container".into()],
                    capacity: Resources::new(1000 * (1 + x % 16), 1024 * (1 + (x >> 8) % 32), 0),
                }],
                ..Candidate::default()
            }
        })
        .collect()
}

/// [`workers`] with a coordinate (a 200 × 200 ms square, heights up to 5 ms) and a location
/// (Europe), each a ball or disc of radius 0.
fn located_workers(n: usize) -> Vec<Candidate> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    workers(n)
        .into_iter()
        .map(|mut c| {
            let coord = Coord::new(200.0 * next(), 200.0 * next(), 5.0 * next(), 0.2);
            c.space = vec![CoordCircle { coord, radius_ms: 0.0 }];
            c.area = vec![GeoCircle { lat: 35.0 + 25.0 * next(), lon: -10.0 + 40.0 * next(), radius_km: 0.0 }];
            c
        })
        .collect()
}

fn at(x: f64, y: f64) -> Point {
    Point { coord: Some(Coord::new(x, y, 1.0, 0.2)), location: None }
}

/// Three objectives: a hard S2S bound to two instances, a soft user bound, a soft geo bound.
fn objectives(s2s_ms: f64) -> Vec<Objective> {
    vec![
        Objective {
            label: "service db".into(),
            points: vec![at(50.0, 50.0), at(150.0, 120.0)],
            max_ms: Some(s2s_ms),
            ..Objective::default()
        },
        Objective {
            label: "users 192.0.2.7".into(),
            points: vec![at(60.0, 40.0)],
            max_ms: Some(30.0),
            rigidness: 0.5,
            ..Objective::default()
        },
        Objective {
            label: "48.1,11.6".into(),
            points: vec![Point { coord: None, location: Some((48.1, 11.6)) }],
            max_km: Some(500.0),
            rigidness: 0.3,
            ..Objective::default()
        },
    ]
}

/// Mean time of `f` over `rounds` calls, in µs.
fn micros(rounds: usize, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..rounds {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / rounds as f64
}

fn ldp() {
    println!();
    println!(
        "| candidates | with objectives: µs per placement | µs per rejection (explained) | placements/s (with reservation) |"
    );
    println!("|---|---|---|---|");
    for n in [500usize, 10_000, 100_000] {
        let mut snap = Snapshot::new(located_workers(n));
        let rounds = (200_000 / n).max(3);
        let fits = Request {
            resources: Resources::new(250, 256, 0),
            runtime: "container".into(),
            objectives: objectives(40.0),
            ..Request::default()
        };
        let place = micros(rounds, || assert!(snap.place(&fits, Policy::BestFit).is_ok()));
        let none = Request { objectives: objectives(0.5), ..fits.clone() };
        let reject = micros(rounds, || assert!(snap.place(&none, Policy::BestFit).is_err()));
        let target = 1_000usize.min(n);
        let t = Instant::now();
        for _ in 0..target {
            let p = snap.place(&fits, Policy::Spread).unwrap();
            snap.reserve(p.candidate, p.slot, &fits.resources);
        }
        let per_sec = target as f64 / t.elapsed().as_secs_f64();
        println!("| {n} | {place:.1} | {reject:.1} | {per_sec:.0} |");
    }
}

fn main() {
    println!("| candidates | full-scan cost per candidate (ns) | placements/s (with reservation) |");
    println!("|---|---|---|");
    for n in [10usize, 1_000, 10_000, 100_000] {
        let cands = workers(n);
        let mut snap = Snapshot::new(cands.clone());

        // Worst case: a request no candidate can take; every candidate is examined (and the
        // rejection explained).
        let none_fit =
            Request { resources: Resources::new(64_000, 512, 0), runtime: "container".into(), ..Request::default() };
        let rounds = (2_000_000 / n).max(3);
        let t = Instant::now();
        for _ in 0..rounds {
            assert!(snap.place(&none_fit, Policy::BestFit).is_err());
        }
        let per_candidate = t.elapsed().as_nanos() as f64 / (rounds * n) as f64;

        // Throughput: place and reserve small instances until 10,000 are placed (or 10 s).
        let small =
            Request { resources: Resources::new(250, 256, 0), runtime: "container".into(), ..Request::default() };
        let target = 10_000usize.min(n * 4);
        let t = Instant::now();
        let mut placed = 0usize;
        while placed < target {
            let p = snap.place(&small, Policy::BestFit).unwrap();
            snap.reserve(p.candidate, p.slot, &small.resources);
            placed += 1;
        }
        let per_sec = placed as f64 / t.elapsed().as_secs_f64();
        println!("| {n} | {per_candidate:.1} | {per_sec:.0} |");
    }
    ldp();
}
