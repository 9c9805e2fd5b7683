//! Scheduler benchmark: decision cost per candidate, and placements per second.
//! `cargo bench -p oak-sched --bench placement`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use oak_sched::{Candidate, Policy, Request, Resources, Slot, Snapshot};
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
            }
        })
        .collect()
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
}
