use super::*;
use proptest::prelude::*;

fn worker(id: &str, cpu: u64, mem: u64, gpus: u32) -> Candidate {
    Candidate {
        id: id.into(),
        name: format!("w-{id}"),
        slots: vec![Slot {
            arch: "amd64".into(),
            runtimes: vec!["container".into()],
            capacity: Resources::new(cpu, mem, gpus),
        }],
        ..Candidate::default()
    }
}

fn req(cpu: u64, mem: u64) -> Request {
    Request { resources: Resources::new(cpu, mem, 0), runtime: "container".into(), ..Request::default() }
}

#[test]
fn best_fit_and_spread() {
    let s = Snapshot::new(vec![worker("a", 4000, 1000, 0), worker("b", 4000, 4000, 0), worker("c", 4000, 2000, 0)]);
    assert_eq!(s.place(&req(1000, 1500), Policy::BestFit).map(|p| p.id), Ok("c".to_owned()));
    assert_eq!(s.place(&req(1000, 1500), Policy::Spread).map(|p| p.id), Ok("b".to_owned()));
    assert_eq!(s.place(&req(1000, 500), Policy::BestFit).map(|p| p.id), Ok("a".to_owned()));
}

#[test]
fn reservations_prevent_over_commit() {
    // Three requests for 60 % of a worker's memory never share a worker.
    let mut s = Snapshot::new(vec![worker("a", 4000, 1000, 0), worker("b", 4000, 1000, 0), worker("c", 4000, 1000, 0)]);
    let mut used = Vec::new();
    for _ in 0..3 {
        let p = s.place(&req(100, 600), Policy::BestFit).unwrap_or_else(|e| panic!("{e}"));
        s.reserve(p.candidate, p.slot, &Resources::new(100, 600, 0));
        used.push(p.id);
    }
    used.sort();
    assert_eq!(used, ["a", "b", "c"]);
    let e = s.place(&req(100, 600), Policy::BestFit).unwrap_err();
    assert_eq!(e.to_string(), "none of 3 candidates fits: 3 have less than 600 MiB memory free");
    s.release(1, 0, &Resources::new(100, 600, 0));
    assert_eq!(s.place(&req(100, 600), Policy::BestFit).map(|p| p.id), Ok("b".to_owned()));
}

#[test]
fn filters_and_their_explanations() {
    let mut gpu = worker("g", 8000, 8000, 2);
    gpu.slots[0].arch = "arm64".into();
    let mut uk = worker("u", 8000, 8000, 0);
    uk.slots[0].runtimes = vec!["unikernel".into()];
    let s = Snapshot::new(vec![worker("a", 1000, 1000, 0), gpu, uk]);
    let cases: Vec<(Request, Result<&str, &str>)> = vec![
        (Request { resources: Resources::new(0, 0, 1), ..req(0, 0) }, Ok("g")),
        (Request { arch: vec!["aarch64".into()], ..req(0, 0) }, Ok("g")),
        (Request { arch: vec!["amd64".into()], ..req(0, 0) }, Ok("a")),
        (Request { runtime: "docker".into(), direct: vec!["w-a".into()], ..req(0, 0) }, Ok("a")),
        (Request { runtime: "unikernel".into(), ..req(0, 0) }, Ok("u")),
        (Request { direct: vec!["w-x".into(), "g".into()], ..req(0, 0) }, Ok("g")),
        (
            Request { direct: vec!["w-u".into()], ..req(0, 0) },
            Err("none of 3 candidates fits: 2 are not named by the direct constraint (w-u), 1 lack runtime container"),
        ),
        (
            Request { arch: vec!["riscv64".into()], ..req(0, 0) },
            Err("none of 3 candidates fits: 1 lack runtime container, 2 have another architecture than riscv64"),
        ),
        (req(9000, 10), Err("none of 3 candidates fits: 1 lack runtime container, 2 have less than 9.00 vCPU free")),
        (
            Request { resources: Resources::new(0, 0, 3), ..req(0, 0) },
            Err("none of 3 candidates fits: 1 lack runtime container, 2 have fewer than 3 GPUs free"),
        ),
        (
            Request { exclude: vec!["g".into()], resources: Resources::new(0, 0, 1), ..req(0, 0) },
            Err(
                "none of 3 candidates fits: 1 refused it before, 1 lack runtime container, 1 have fewer than 1 GPUs free",
            ),
        ),
    ];
    for (r, expected) in cases {
        let got = s.place(&r, Policy::BestFit).map(|p| p.id).map_err(|e| e.to_string());
        assert_eq!(got, expected.map(str::to_owned).map_err(str::to_owned), "{r:?}");
    }
    assert_eq!(Snapshot::default().place(&req(0, 0), Policy::BestFit), Err(Rejection::NoCandidates));
}

#[test]
fn clusters_fit_when_one_slot_fits() {
    // A cluster with 4 workers of 1 GiB free each cannot take 3 GiB (the original's sums say it can).
    let slots = (0..4)
        .map(|_| Slot {
            arch: "amd64".into(),
            runtimes: vec!["container".into()],
            capacity: Resources::new(4000, 1024, 0),
        })
        .collect();
    let small = Candidate { id: "c1".into(), name: "small".into(), slots, ..Candidate::default() };
    let big = worker("c2", 4000, 4096, 0);
    let s = Snapshot::new(vec![small, big]);
    assert_eq!(s.place(&req(100, 3072), Policy::BestFit).map(|p| p.id), Ok("c2".to_owned()));
    assert_eq!(s.place(&req(100, 1024), Policy::BestFit).map(|p| p.id), Ok("c1".to_owned()));
}

fn arb_candidates() -> impl Strategy<Value = Vec<Candidate>> {
    prop::collection::vec((0u64..8000, 0u64..8192, 0u32..3, prop::bool::ANY, prop::bool::ANY), 0..24).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (cpu, mem, g, arm, uk))| {
                let mut c = worker(&format!("{i:03}"), cpu, mem, g);
                if arm {
                    c.slots[0].arch = "arm64".into();
                }
                if uk {
                    c.slots[0].runtimes.push("unikernel".into());
                }
                c
            })
            .collect()
    })
}

fn arb_request() -> impl Strategy<Value = Request> {
    (0u64..3000, 0u64..3000, 0u32..2, prop::bool::ANY, prop::option::of(0usize..24), prop::bool::ANY).prop_map(
        |(cpu, mem, g, uk, direct, arm)| Request {
            resources: Resources::new(cpu, mem, g),
            runtime: if uk { "unikernel".into() } else { "docker".into() },
            arch: if arm { vec!["arm64".into()] } else { vec![] },
            direct: direct.map(|d| vec![format!("w-{d:03}")]).unwrap_or_default(),
            ..Request::default()
        },
    )
}

proptest! {
    /// Whatever the order of requests, no slot is ever over-committed, and every placement
    /// honours runtime, architecture and direct constraints. A rejection is only given when
    /// truly nothing fits.
    #[test]
    fn never_over_commits_and_honours_constraints(cands in arb_candidates(), reqs in prop::collection::vec(arb_request(), 1..40), spread in prop::bool::ANY) {
        let policy = if spread { Policy::Spread } else { Policy::BestFit };
        let mut s = Snapshot::new(cands.clone());
        let mut used: Vec<Resources> = vec![Resources::default(); cands.len()];
        for r in &reqs {
            match s.place(r, policy) {
                Ok(p) => {
                    let c = &cands[p.candidate];
                    let slot = &c.slots[p.slot];
                    prop_assert!(slot.runtimes.iter().any(|x| normalize_runtime(x) == normalize_runtime(&r.runtime)));
                    prop_assert!(r.arch.is_empty() || r.arch.contains(&slot.arch));
                    prop_assert!(r.direct.is_empty() || r.direct.contains(&c.name));
                    used[p.candidate] = used[p.candidate].saturating_add(&r.resources);
                    prop_assert!(slot.capacity.fits(&used[p.candidate]), "over-committed {}", c.id);
                    s.reserve(p.candidate, p.slot, &r.resources);
                }
                Err(_) => {
                    // Brute force agrees that nothing fits.
                    for (i, c) in cands.iter().enumerate() {
                        let slot = &c.slots[0];
                        let ok = slot.runtimes.iter().any(|x| normalize_runtime(x) == normalize_runtime(&r.runtime))
                            && (r.arch.is_empty() || r.arch.contains(&slot.arch))
                            && (r.direct.is_empty() || r.direct.contains(&c.name))
                            && slot.capacity.saturating_sub(&used[i]).fits(&r.resources);
                        prop_assert!(!ok, "{} fits but the request was rejected", c.id);
                    }
                }
            }
        }
    }

    /// Placement is deterministic: the same snapshot and request give the same answer.
    #[test]
    fn placement_is_deterministic(cands in arb_candidates(), r in arb_request()) {
        let a = Snapshot::new(cands.clone()).place(&r, Policy::BestFit);
        let b = Snapshot::new(cands).place(&r, Policy::BestFit);
        prop_assert_eq!(a, b);
    }
}

// ---- Latency and distance (LDP) ----

use oak_api::ldp::{Coord, CoordCircle, GeoCircle};
use std::collections::HashMap;

const MUNICH: (f64, f64) = (48.14, 11.58);
const BERLIN: (f64, f64) = (52.52, 13.40);

/// A worker at coordinate `(x, 0)` (height 0), or with no coordinate.
fn at_ms(id: &str, mem: u64, x: Option<f64>) -> Candidate {
    let mut c = worker(id, 4000, mem, 0);
    c.space = x.map(|x| CoordCircle { coord: Coord::new(x, 0.0, 0.0, 0.1), radius_ms: 0.0 }).into_iter().collect();
    c
}

fn origin() -> Point {
    Point { coord: Some(Coord::new(0.0, 0.0, 0.0, 0.1)), location: None }
}

fn within_ms(label: &str, points: Vec<Point>, ms: f64, rigidness: f64) -> Objective {
    Objective { label: label.into(), points, max_ms: Some(ms), max_km: None, rigidness, measured: Vec::new() }
}

fn with(objectives: Vec<Objective>) -> Request {
    Request { objectives, ..req(100, 100) }
}

fn pick(s: &Snapshot, r: &Request, policy: Policy) -> Result<String, String> {
    s.place(r, policy).map(|p| p.id).map_err(|e| e.to_string())
}

#[test]
fn hard_objectives_filter_and_the_lowest_latency_wins() {
    // Without objectives BestFit would take d (least memory), Spread c (most).
    let s = Snapshot::new(vec![
        at_ms("a", 1000, Some(30.0)),
        at_ms("b", 2000, Some(10.0)),
        at_ms("c", 4000, Some(5.0)),
        at_ms("d", 500, Some(50.0)),
    ]);
    assert_eq!(pick(&s, &req(100, 100), Policy::BestFit), Ok("d".into()));
    for policy in [Policy::BestFit, Policy::Spread] {
        assert_eq!(pick(&s, &with(vec![within_ms("service db", vec![origin()], 20.0, 1.0)]), policy), Ok("c".into()));
        assert_eq!(pick(&s, &with(vec![within_ms("service db", vec![origin()], 40.0, 1.0)]), policy), Ok("c".into()));
    }
    // Near ANY point: a second instance of the target next to d makes d the nearest.
    let two = vec![origin(), Point { coord: Some(Coord::new(49.0, 0.0, 0.0, 0.1)), location: None }];
    assert_eq!(pick(&s, &with(vec![within_ms("service db", two, 20.0, 1.0)]), Policy::Spread), Ok("d".into()));
    // Other filters still apply: c has only 4000 MiB.
    let big =
        Request { resources: Resources::new(100, 3000, 0), ..with(vec![within_ms("db", vec![origin()], 20.0, 1.0)]) };
    assert_eq!(pick(&s, &big, Policy::BestFit), Ok("c".into()));
    let huge = Request { resources: Resources::new(100, 5000, 0), ..big };
    assert_eq!(
        pick(&s, &huge, Policy::BestFit),
        Err("none of 4 candidates fits: 4 have less than 5000 MiB memory free".into())
    );
}

#[test]
fn near_ties_are_broken_by_the_resource_policy() {
    // Scores 0.5, 0.515 and 0.6: a and b are within 5 % of each other, c is not (though it has
    // the most memory).
    let s =
        Snapshot::new(vec![at_ms("a", 1000, Some(10.0)), at_ms("b", 3000, Some(10.3)), at_ms("c", 5000, Some(12.0))]);
    let r = with(vec![within_ms("db", vec![origin()], 20.0, 1.0)]);
    assert_eq!(pick(&s, &r, Policy::BestFit), Ok("a".into()));
    assert_eq!(pick(&s, &r, Policy::Spread), Ok("b".into()));
    // Equal resources too: the index decides, as without objectives.
    let s = Snapshot::new(vec![at_ms("a", 1000, Some(10.0)), at_ms("b", 1000, Some(10.0))]);
    assert_eq!(pick(&s, &r, Policy::BestFit), pick(&s, &req(100, 100), Policy::BestFit));
    assert_eq!(pick(&s, &r, Policy::Spread), pick(&s, &req(100, 100), Policy::Spread));
}

#[test]
fn soft_objectives_are_relaxed_softest_first() {
    let p1 = origin();
    let p2 = Point { coord: Some(Coord::new(100.0, 0.0, 0.0, 0.1)), location: None };
    // a meets only the first objective, b only the second; nobody meets both.
    let s = Snapshot::new(vec![at_ms("a", 1000, Some(5.0)), at_ms("b", 2000, Some(95.0))]);
    let r = |w1: f64, w2: f64| with(vec![within_ms("one", vec![p1], 10.0, w1), within_ms("two", vec![p2], 10.0, w2)]);
    assert_eq!(pick(&s, &r(0.3, 0.7), Policy::BestFit), Ok("b".into()));
    assert_eq!(pick(&s, &r(0.7, 0.3), Policy::BestFit), Ok("a".into()));
    // Equal weights: the earlier one is relaxed first.
    assert_eq!(pick(&s, &r(0.5, 0.5), Policy::BestFit), Ok("b".into()));
    // A hard objective is never relaxed.
    assert_eq!(pick(&s, &r(1.0, 0.9), Policy::BestFit), Ok("a".into()));
    // Nobody meets a soft objective: it is relaxed, and still scores.
    let far = with(vec![within_ms("far", vec![p1], 1.0, 0.5)]);
    assert_eq!(pick(&s, &far, Policy::Spread), Ok("a".into()));

    // Meeting every soft objective beats a lower score that misses one: x scores 0.18 but is
    // 18 ms from p3; y scores 0.9 and meets both.
    let p3 = Point { coord: Some(Coord::new(18.0, 0.0, 0.0, 0.1)), location: None };
    let s = Snapshot::new(vec![at_ms("x", 1000, Some(0.0)), at_ms("y", 1000, Some(9.0))]);
    let r = with(vec![within_ms("one", vec![p1], 10.0, 0.9), within_ms("three", vec![p3], 10.0, 0.1)]);
    assert_eq!(pick(&s, &r, Policy::BestFit), Ok("y".into()));
}

#[test]
fn unknown_coordinates_fail_hard_objectives_and_miss_soft_ones() {
    let s = Snapshot::new(vec![at_ms("a", 1000, None), at_ms("b", 2000, Some(30.0))]);
    let hard = with(vec![within_ms("service db", vec![origin()], 20.0, 1.0)]);
    assert_eq!(
        pick(&s, &hard, Policy::BestFit),
        Err("none of 2 candidates fits: 2 are not within 20 ms of service db (best is w-b at 30.0 ms; w-a has no network coordinate yet)".into())
    );
    // The target's worker has no coordinate either.
    let blind = with(vec![within_ms("service db", vec![Point::default()], 20.0, 1.0)]);
    assert_eq!(
        pick(&s, &blind, Policy::BestFit),
        Err("none of 2 candidates fits: 2 are not within 20 ms of service db (service db has no network coordinate yet)".into())
    );
    // Known and near enough wins over unknown.
    let loose = with(vec![within_ms("service db", vec![origin()], 40.0, 1.0)]);
    assert_eq!(pick(&s, &loose, Policy::BestFit), Ok("b".into()));
    // Soft: nobody meets it; unknown counts as twice the bound, b's 30 ms as 1.5 times.
    let soft = with(vec![within_ms("service db", vec![origin()], 20.0, 0.5)]);
    assert_eq!(pick(&s, &soft, Policy::BestFit), Ok("b".into()));
    let s = Snapshot::new(vec![at_ms("a", 1000, None), at_ms("b", 2000, Some(50.0))]);
    assert_eq!(pick(&s, &soft, Policy::BestFit), Ok("a".into()));
    let s = Snapshot::new(vec![at_ms("a", 1000, None), at_ms("b", 2000, None)]);
    assert_eq!(pick(&s, &soft, Policy::Spread), Ok("b".into()));
}

#[test]
fn addons_are_a_filter() {
    let mut a = worker("a", 4000, 1000, 0);
    a.addons = vec!["gpu".into()];
    let mut b = worker("b", 4000, 2000, 0);
    b.addons = vec!["gpu".into(), "fpga".into()];
    let s = Snapshot::new(vec![a, b, worker("c", 4000, 500, 0)]);
    let needs = |addons: &[&str]| Request { addons: addons.iter().map(|&a| a.to_owned()).collect(), ..req(100, 100) };
    assert_eq!(pick(&s, &needs(&[]), Policy::BestFit), Ok("c".into()));
    assert_eq!(pick(&s, &needs(&["gpu"]), Policy::BestFit), Ok("a".into()));
    assert_eq!(pick(&s, &needs(&["fpga", "gpu"]), Policy::BestFit), Ok("b".into()));
    assert_eq!(
        pick(&s, &needs(&["tpu", "gpu"]), Policy::BestFit),
        Err("none of 3 candidates fits: 3 lack the addons it needs (tpu;gpu)".into())
    );
    // With objectives (the scanning path) as well.
    let scored =
        Request { objectives: vec![Objective { label: "any".into(), ..Objective::default() }], ..needs(&["fpga"]) };
    assert_eq!(pick(&s, &scored, Policy::BestFit), Ok("b".into()));
}

#[test]
fn distances_bound_and_score_like_latencies() {
    let located = |id: &str, mem: u64, at: (f64, f64)| {
        let mut c = worker(id, 4000, mem, 0);
        c.area = vec![GeoCircle { lat: at.0, lon: at.1, radius_km: 0.0 }];
        c
    };
    let s = Snapshot::new(vec![located("m", 4000, MUNICH), located("b", 1000, BERLIN), worker("x", 4000, 500, 0)]);
    let geo = |km: f64, rigidness: f64| {
        with(vec![Objective {
            label: "48.14,11.58".into(),
            points: vec![Point { coord: None, location: Some(MUNICH) }],
            max_km: Some(km),
            rigidness,
            ..Objective::default()
        }])
    };
    assert_eq!(pick(&s, &geo(50.0, 1.0), Policy::BestFit), Ok("m".into()));
    assert_eq!(pick(&s, &geo(1000.0, 1.0), Policy::BestFit), Ok("m".into()));
    let e = pick(&s, &geo(0.0, 1.0), Policy::BestFit);
    assert_eq!(e, Ok("m".into()));
    let s = Snapshot::new(vec![located("b", 1000, BERLIN), worker("x", 4000, 500, 0)]);
    let e = pick(&s, &geo(100.0, 1.0), Policy::BestFit).unwrap_err();
    assert!(
        e.starts_with("none of 2 candidates fits: 2 are not within 100 km of 48.14,11.58 (best is w-b at 50"),
        "{e}"
    );
    assert!(e.ends_with(" km; w-x has no location yet)"), "{e}");
    // Soft: unknown counts as twice the bound; Berlin is 5 times 100 km away but 1.7 times 300 km.
    assert_eq!(pick(&s, &geo(100.0, 0.5), Policy::BestFit), Ok("x".into()));
    assert_eq!(pick(&s, &geo(300.0, 0.5), Policy::BestFit), Ok("b".into()));
}

#[test]
fn rejections_name_the_constraint_and_the_best_value() {
    // The nearest candidate (n) lacks memory: the best value is among those that could take it.
    let s = Snapshot::new(vec![
        at_ms("n", 100, Some(1.0)),
        at_ms("a", 1000, Some(60.0)),
        at_ms("c", 1000, Some(34.2)),
        at_ms("d", 1000, Some(40.0)),
    ]);
    let r = Request {
        resources: Resources::new(100, 600, 0),
        ..with(vec![within_ms("service db", vec![origin()], 20.0, 1.0)])
    };
    assert_eq!(
        pick(&s, &r, Policy::BestFit),
        Err("none of 4 candidates fits: 1 have less than 600 MiB memory free, 3 are not within 20 ms of service db (best is w-c at 34.2 ms)".into())
    );
    // Two hard objectives: each candidate is counted at the first it fails; soft ones are
    // never the reason.
    let p = Point { coord: Some(Coord::new(60.0, 0.0, 0.0, 0.1)), location: None };
    let r = Request {
        objectives: vec![
            within_ms("users 192.0.2.7", vec![p], 100.0, 0.5),
            within_ms("service db", vec![origin()], 50.0, 1.0),
            within_ms("area east", vec![p], 10.0, 1.0),
        ],
        ..r
    };
    assert_eq!(
        pick(&s, &r, Policy::BestFit),
        Err("none of 4 candidates fits: 1 have less than 600 MiB memory free, 1 are not within 50 ms of service db (best is w-c at 34.2 ms), 2 are not within 10 ms of area east (best is w-a at 0.0 ms)".into())
    );
    // Both bounds on one objective.
    let both = with(vec![Objective {
        label: "area munich".into(),
        points: vec![Point { coord: Some(Coord::new(0.0, 0.0, 0.0, 0.1)), location: Some(MUNICH) }],
        max_ms: Some(20.0),
        max_km: Some(50.0),
        rigidness: 1.0,
        measured: Vec::new(),
    }]);
    let s = Snapshot::new(vec![at_ms("a", 1000, Some(25.0))]);
    assert_eq!(
        pick(&s, &both, Policy::BestFit),
        Err("none of 1 candidates fits: 1 are not within 20 ms and 50 km of area munich (best is w-a at 25.0 ms; w-a has no location yet)".into())
    );
}

#[test]
fn values_are_lower_bounds_over_balls_and_discs() {
    let ball = |x: f64, h: f64, r: f64| CoordCircle { coord: Coord::new(x, 0.0, h, 0.2), radius_ms: r };
    let cluster = Candidate {
        space: vec![ball(0.0, 1.0, 5.0), ball(100.0, 0.0, 10.0)],
        area: vec![GeoCircle { lat: MUNICH.0, lon: MUNICH.1, radius_km: 100.0 }],
        ..Candidate::default()
    };
    let pt = |x: f64, h: f64| Point { coord: Some(Coord::new(x, 0.0, h, 0.1)), location: None };
    assert_eq!(predicted_ms(&cluster, &pt(3.0, 0.0)), Some(0.0));
    assert_eq!(predicted_ms(&cluster, &pt(30.0, 2.0)), Some(28.0)); // 30 + 1 + 2 − 5
    assert_eq!(predicted_ms(&cluster, &pt(80.0, 0.0)), Some(10.0)); // the second ball
    assert_eq!(predicted_ms(&cluster, &Point::default()), None);
    assert_eq!(predicted_ms(&Candidate::default(), &pt(0.0, 0.0)), None);
    assert_eq!(
        predicted_ms(&cluster, &Point { coord: Some(Coord::new(f64::NAN, 0.0, 0.0, 0.0)), location: None }),
        None
    );
    let berlin = Point { coord: None, location: Some(BERLIN) };
    let d = distance_km(&cluster, &berlin).unwrap_or_default();
    assert!((d - 404.0).abs() < 10.0, "{d}");
    assert_eq!(distance_km(&cluster, &Point { coord: None, location: Some(MUNICH) }), Some(0.0));
    assert_eq!(distance_km(&cluster, &pt(0.0, 0.0)), None);
    assert_eq!(distance_km(&Candidate::default(), &berlin), None);
}

#[test]
fn requests_with_objectives_key_hash_maps() {
    let o = |ms: f64, rigidness: f64| within_ms("db", vec![origin()], ms, rigidness);
    let mut refused: HashMap<Request, &str> = HashMap::new();
    refused.insert(with(vec![o(20.0, 1.0)]), "a");
    refused.insert(with(vec![o(20.0, 0.5)]), "b");
    refused.insert(with(vec![o(f64::NAN, 1.0)]), "c");
    refused.insert(Request { addons: vec!["gpu".into()], ..with(vec![o(20.0, 1.0)]) }, "d");
    assert_eq!(refused.len(), 4);
    assert_eq!(refused.get(&with(vec![o(20.0, 1.0)])), Some(&"a"));
    assert_eq!(refused.get(&with(vec![o(f64::NAN, 1.0)])), Some(&"c"));
    assert_eq!(refused.get(&with(vec![o(21.0, 1.0)])), None);
    assert_ne!(Point { coord: None, location: Some((0.0, 0.0)) }, Point { coord: None, location: Some((-0.0, 0.0)) });
    assert_eq!(o(20.0, 1.0).to_string(), "within 20 ms of db");
    assert!(Objective::default().is_hard());
}

#[test]
fn odd_numbers_do_not_panic() {
    let weird = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, 0.0, 1e308];
    let mut cands = Vec::new();
    for (i, &v) in weird.iter().enumerate() {
        let mut c = at_ms(&format!("{i}"), 1000, Some(v));
        c.space.push(CoordCircle { coord: Coord::new(1.0, v, v, v), radius_ms: v });
        c.area = vec![GeoCircle { lat: v, lon: 1.0, radius_km: v }];
        cands.push(c);
    }
    let s = Snapshot::new(cands);
    for &v in &weird {
        let p = Point { coord: Some(Coord::new(v, 0.0, v, 0.0)), location: Some((v, v)) };
        for rigidness in weird.iter().copied().chain([0.5, 1.0]) {
            let o = Objective {
                label: "x".into(),
                points: vec![p],
                max_ms: Some(v),
                max_km: Some(v),
                rigidness,
                measured: Vec::new(),
            };
            for policy in [Policy::BestFit, Policy::Spread] {
                let a = s.place(&with(vec![o.clone()]), policy);
                assert_eq!(a, s.place(&with(vec![o.clone()]), policy));
            }
        }
    }
}

// Property tests: a brute force of the rules, from the public value functions.

fn arb_ldp_candidates() -> impl Strategy<Value = Vec<Candidate>> {
    let ball = (0.0f64..100.0, 0.0f64..100.0, 0.0f64..5.0, prop_oneof![Just(0.0), 0.0f64..10.0])
        .prop_map(|(x, y, h, r)| CoordCircle { coord: Coord::new(x, y, h, 0.1), radius_ms: r });
    let disc = (45.0f64..55.0, 5.0f64..15.0, prop_oneof![Just(0.0), 0.0f64..50.0])
        .prop_map(|(lat, lon, r)| GeoCircle { lat, lon, radius_km: r });
    prop::collection::vec(
        (0u64..4000, 0u64..4000, 0u8..4, prop::collection::vec(ball, 0..3), prop::collection::vec(disc, 0..3)),
        0..24,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (cpu, mem, addons, space, area))| {
                let mut c = worker(&format!("{i:03}"), cpu, mem, 0);
                c.addons = ["gpu", "fpga"]
                    .iter()
                    .enumerate()
                    .filter(|(b, _)| addons & (1 << b) != 0)
                    .map(|(_, a)| (*a).to_owned())
                    .collect();
                c.space = space;
                c.area = area;
                c
            })
            .collect()
    })
}

fn arb_objective() -> impl Strategy<Value = Objective> {
    let point = (
        prop::option::weighted(0.8, (0.0f64..100.0, 0.0f64..100.0, 0.0f64..5.0)),
        prop::option::weighted(0.8, (45.0f64..55.0, 5.0f64..15.0)),
    )
        .prop_map(|(c, l)| Point { coord: c.map(|(x, y, h)| Coord::new(x, y, h, 0.1)), location: l });
    (
        prop::collection::vec(point, 0..3),
        prop::option::of(5.0f64..80.0),
        prop::option::of(20.0f64..500.0),
        prop::sample::select(vec![1.0, 1.0, 0.25, 0.5, 0.75, 0.5]),
    )
        .prop_map(|(points, max_ms, max_km, rigidness)| Objective {
            label: "o".into(),
            points,
            max_ms,
            max_km,
            rigidness,
            measured: Vec::new(),
        })
}

fn arb_ldp_request() -> impl Strategy<Value = Request> {
    (0u64..3000, 0u64..3000, 0u8..4, prop::collection::vec(arb_objective(), 1..4)).prop_map(
        |(cpu, mem, addons, objectives)| Request {
            resources: Resources::new(cpu, mem, 0),
            runtime: "container".into(),
            addons: ["gpu", "fpga"]
                .iter()
                .enumerate()
                .filter(|(b, _)| addons & (1 << b) != 0)
                .map(|(_, a)| (*a).to_owned())
                .collect(),
            objectives,
            ..Request::default()
        },
    )
}

fn brute_values(c: &Candidate, o: &Objective) -> (Option<f64>, Option<f64>) {
    let min = |v: Vec<f64>| v.into_iter().reduce(f64::min);
    (
        min(o.points.iter().filter_map(|p| predicted_ms(c, p)).collect()),
        min(o.points.iter().filter_map(|p| distance_km(c, p)).collect()),
    )
}

fn brute_meets(c: &Candidate, o: &Objective) -> bool {
    let (ms, km) = brute_values(c, o);
    o.max_ms.is_none_or(|b| ms.is_some_and(|v| v <= b)) && o.max_km.is_none_or(|b| km.is_some_and(|v| v <= b))
}

fn brute_score(c: &Candidate, objectives: &[Objective]) -> f64 {
    let (mut sum, ratio) = (0.0, |b: Option<f64>, v: Option<f64>| match (b, v) {
        (None, _) => 0.0,
        (Some(_), None) => UNKNOWN_RATIO,
        (Some(b), Some(v)) => v / b,
    });
    for o in objectives {
        let (ms, km) = brute_values(c, o);
        let w = if o.rigidness >= 1.0 { 1.0 } else { o.rigidness };
        sum += w * (ratio(o.max_ms, ms) + ratio(o.max_km, km));
    }
    sum
}

fn brute_filters(c: &Candidate, r: &Request) -> bool {
    c.slots[0].capacity.fits(&r.resources) && r.addons.iter().all(|a| c.addons.contains(a))
}

/// The candidates the rules allow before near-ties: filters, hard objectives, then the soft
/// ones left after relaxing the softest first.
fn brute_qualifying(cands: &[Candidate], r: &Request) -> Vec<usize> {
    let hard_ok: Vec<usize> = (0..cands.len())
        .filter(|&i| {
            brute_filters(&cands[i], r)
                && r.objectives.iter().filter(|o| o.is_hard()).all(|o| brute_meets(&cands[i], o))
        })
        .collect();
    let mut soft: Vec<usize> = (0..r.objectives.len()).filter(|&j| !r.objectives[j].is_hard()).collect();
    soft.sort_by(|&a, &b| r.objectives[a].rigidness.total_cmp(&r.objectives[b].rigidness).then(a.cmp(&b)));
    for k in 0..=soft.len() {
        let kept: Vec<usize> = hard_ok
            .iter()
            .copied()
            .filter(|&i| soft[k..].iter().all(|&j| brute_meets(&cands[i], &r.objectives[j])))
            .collect();
        if !kept.is_empty() {
            return kept;
        }
    }
    vec![]
}

proptest! {
    /// Hard objectives and filters are never violated; whenever a candidate satisfies them, one
    /// is chosen; its score is the lowest among the qualifying up to the near-tie band, within
    /// which the resource policy decides; and the same input gives the same answer.
    #[test]
    fn ldp_placements_follow_the_rules(cands in arb_ldp_candidates(), r in arb_ldp_request(), spread in prop::bool::ANY) {
        let policy = if spread { Policy::Spread } else { Policy::BestFit };
        let s = Snapshot::new(cands.clone());
        let got = s.place(&r, policy);
        let qualifying = brute_qualifying(&cands, &r);
        match &got {
            Ok(p) => {
                let c = &cands[p.candidate];
                prop_assert!(brute_filters(c, &r), "{} fails a filter", c.id);
                for o in r.objectives.iter().filter(|o| o.is_hard()) {
                    prop_assert!(brute_meets(c, o), "{} violates hard {o}", c.id);
                }
                prop_assert!(qualifying.contains(&p.candidate), "{} was not among the qualifying {qualifying:?}", c.id);
                let best = qualifying.iter().map(|&i| brute_score(&cands[i], &r.objectives)).fold(f64::INFINITY, f64::min);
                let limit = best + (best * NEAR_TIE).max(1e-9);
                let score = brute_score(c, &r.objectives);
                prop_assert!(score <= limit, "score {score} of {} is not within 5 % of {best}", c.id);
                let band = qualifying.iter().copied().filter(|&i| brute_score(&cands[i], &r.objectives) <= limit);
                let key = |&i: &usize| (cands[i].slots[0].capacity.memory_mb, i);
                let expected = if spread { band.max_by_key(key) } else { band.min_by_key(key) };
                prop_assert_eq!(Some(p.candidate), expected);
            }
            Err(e) => {
                prop_assert!(qualifying.is_empty(), "{qualifying:?} qualify but: {e}");
                prop_assert!(cands.is_empty() == (*e == Rejection::NoCandidates));
            }
        }
        // Determinism: again on the same snapshot, and on a fresh one.
        prop_assert_eq!(&got, &s.place(&r, policy));
        prop_assert_eq!(&got, &Snapshot::new(cands).place(&r, policy));
    }

    /// Objectives that every candidate meets equally change nothing: ties break exactly as
    /// without objectives, for both policies and with reservations.
    #[test]
    fn objectives_without_bounds_change_nothing(cands in arb_candidates(), reqs in prop::collection::vec(arb_request(), 1..20), spread in prop::bool::ANY) {
        let policy = if spread { Policy::Spread } else { Policy::BestFit };
        let mut s = Snapshot::new(cands);
        for r in reqs {
            let scored = Request { objectives: vec![Objective { label: "anywhere".into(), ..Objective::default() }], ..r.clone() };
            let plain = s.place(&r, policy);
            prop_assert_eq!(plain.clone().map_err(|e| e.to_string()), s.place(&scored, policy).map_err(|e| e.to_string()));
            if let Ok(p) = plain {
                s.reserve(p.candidate, p.slot, &r.resources);
            }
        }
    }
}

/// An RTT a candidate measured to the point stands instead of the prediction, both ways: a
/// worker predicted near but measured far is not chosen, one predicted far but measured near
/// is.
#[test]
fn measured_rtts_stand_instead_of_predictions() {
    let user = Point { coord: Some(Coord::new(0.0, 0.0, 1.0, 0.1)), location: None };
    let near = |id: &str, x: f64| Candidate {
        id: id.into(),
        name: id.into(),
        slots: vec![Slot {
            arch: "amd64".into(),
            runtimes: vec!["container".into()],
            capacity: Resources::new(4000, 4000, 0),
        }],
        space: vec![CoordCircle { coord: Coord::new(x, 0.0, 1.0, 0.1), radius_ms: 0.0 }],
        ..Default::default()
    };
    let s = Snapshot::new(vec![near("a", 1.0), near("b", 30.0)]);
    let mut o = Objective { label: "user u".into(), points: vec![user], max_ms: Some(5.0), ..Default::default() };
    let req =
        |o: &Objective| Request { runtime: "container".into(), objectives: vec![o.clone()], ..Default::default() };
    assert_eq!(s.place(&req(&o), Policy::BestFit).map(|p| p.id), Ok("a".into()));
    o.measured = vec![("a".into(), 40.0), ("b".into(), 1.0)];
    assert_eq!(s.place(&req(&o), Policy::BestFit).map(|p| p.id), Ok("b".into()));
    o.measured = vec![("a".into(), 40.0)];
    assert!(s.place(&req(&o), Policy::BestFit).is_err(), "a measured too far, b predicted too far");
}
