use super::*;
use proptest::prelude::*;

fn small() -> Space {
    Space::generate(&SpaceParams { nodes: 60, ..SpaceParams::default() }, 42)
}

#[test]
fn the_same_seed_gives_the_same_space() {
    let (a, b) = (small(), small());
    let c = Space::generate(&SpaceParams { nodes: 60, ..SpaceParams::default() }, 43);
    assert_eq!(a.len(), 60);
    let pairs: Vec<(usize, usize)> = (0..60).flat_map(|i| (0..60).map(move |j| (i, j))).collect();
    assert!(pairs.iter().all(|&(i, j)| a.rtt(i, j) == b.rtt(i, j)));
    assert!(pairs.iter().any(|&(i, j)| a.rtt(i, j) != c.rtt(i, j)));
    assert_eq!(a.location(7), b.location(7));
}

#[test]
fn rtts_are_symmetric_positive_and_at_least_the_speed_of_light() {
    let s = small();
    for i in 0..s.len() {
        assert_eq!(s.rtt(i, i), 0.0);
        for j in 0..s.len() {
            if i == j {
                continue;
            }
            let r = s.rtt(i, j);
            assert_eq!(r, s.rtt(j, i));
            assert!(r >= MIN_RTT_MS);
            let light = distance_km(s.location(i), s.location(j)) * MS_PER_KM;
            assert!(r >= light * 1.2, "{i} {j}: {r} < {light}");
            assert!(r < 200.0, "{r}");
        }
    }
}

#[test]
fn nodes_sit_around_real_cities() {
    let s = small();
    assert_eq!(s.sites()[0], (48.14, 11.58));
    for i in 0..s.len() {
        let site = s.sites()[s.site(i).unwrap()];
        assert!(distance_km(site, s.location(i)) <= 40.5);
        let h = s.height(i).unwrap();
        assert!((0.5..=15.0).contains(&h));
    }
    // Munich – Berlin is about 504 km: 6–10 ms of propagation, plus access delays.
    let (m, b) =
        ((0..s.len()).find(|&i| s.site(i) == Some(0)).unwrap(), (0..s.len()).find(|&i| s.site(i) == Some(1)).unwrap());
    let prop = s.rtt(m, b) - s.height(m).unwrap() - s.height(b).unwrap();
    // (Unless the pair is a detour, which this seed's is not.)
    assert!((5.0..11.0).contains(&prop), "{prop}");
}

#[test]
fn out_of_range_is_nan_not_a_panic() {
    let s = small();
    assert!(s.rtt(0, 60).is_nan());
    assert!(s.sample(60, 0, &mut 1).is_nan());
    assert!(s.location(99).0.is_nan());
    assert_eq!(s.site(60), None);
    let empty = Space::generate(&SpaceParams { nodes: 0, sites: 0, ..SpaceParams::default() }, 1);
    assert!(empty.is_empty());
    assert_eq!(empty.sites().len(), 1);
}

/// Share of triangles (a, b, c) with rtt(a, c) > rtt(a, b) + rtt(b, c).
fn violations(s: &Space) -> f64 {
    let n = s.len();
    let (mut bad, mut all) = (0u32, 0u32);
    for a in 0..n {
        for b in 0..n {
            for c in 0..n {
                if a != b && b != c && a != c {
                    all += 1;
                    bad += u32::from(s.rtt(a, c) > s.rtt(a, b) + s.rtt(b, c));
                }
            }
        }
    }
    f64::from(bad) / f64::from(all)
}

#[test]
fn detours_violate_the_triangle_inequality() {
    let p = |tiv_share| SpaceParams { nodes: 30, tiv_share, ..SpaceParams::default() };
    let none = violations(&Space::generate(&p(0.0), 5));
    let some = violations(&Space::generate(&p(0.2), 5));
    eprintln!("violations: {none} without detours, {some} with 20 %");
    assert!(none < 0.01, "{none}");
    assert!(some > 0.01 && some > 10.0 * none, "{some} vs {none}");
}

#[test]
fn samples_are_noisy_but_never_below_the_base() {
    let s = small();
    let mut r = 3;
    let base = s.rtt(1, 2);
    let mut v: Vec<f64> = (0..2000).map(|_| s.sample(1, 2, &mut r)).collect();
    assert!(v.iter().all(|x| *x >= base));
    v.sort_by(f64::total_cmp);
    let median = v[1000] / base - 1.0;
    // Exponential queueing with mean 5 %: median ln 2 × 5 % ≈ 3.5 %.
    assert!((0.025..0.045).contains(&median), "{median}");
    let spikes = v.iter().filter(|x| **x > base * 1.5).count();
    assert!((5..60).contains(&spikes), "{spikes}");
    assert_eq!(s.sample(4, 4, &mut r), 0.0);
}

proptest! {
    #[test]
    fn any_parameters_give_a_usable_space(
        nodes in 0usize..40, sites in 0usize..40, tiv in any::<f64>(), jitter in any::<f64>(),
        spikes in any::<f64>(), radius in any::<f64>(), seed: u64,
    ) {
        let p = SpaceParams { nodes, sites, tiv_share: tiv, jitter, spike_share: spikes, site_radius_km: radius, slow_access_share: tiv };
        let s = Space::generate(&p, seed);
        let mut r = seed;
        for a in 0..nodes {
            let (lat, lon) = s.location(a);
            prop_assert!(lat.is_finite() && lon.is_finite());
            for b in 0..nodes {
                let v = s.rtt(a, b);
                prop_assert!(v.is_finite() && v >= 0.0);
                let x = s.sample(a, b, &mut r);
                prop_assert!(x.is_finite() && x >= v);
            }
        }
    }
}
