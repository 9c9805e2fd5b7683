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
    let small = Candidate { id: "c1".into(), name: "small".into(), slots };
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
            exclude: vec![],
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
