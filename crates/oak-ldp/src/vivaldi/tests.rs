use super::*;
use proptest::prelude::*;

fn at(x: f64, y: f64, h: f64, error: f64) -> Coord {
    Coord::new(x, y, h, error)
}

#[test]
fn a_new_node_is_at_the_origin_and_knows_nothing() {
    let v = Vivaldi::new(Config::default(), 1);
    let c = v.coord();
    assert_eq!((c.x, c.y), (0.0, 0.0));
    assert_eq!(c.error, 1.5);
    assert!(c.h >= 1e-5);
    assert_eq!(v.neighbours(), 0);
}

#[test]
fn bad_samples_and_peers_are_ignored() {
    let mut v = Vivaldi::new(Config::default(), 1);
    let ok = at(10.0, 0.0, 1.0, 0.5);
    for rtt in [f64::NAN, f64::INFINITY, -1.0, 0.0, 60_001.0] {
        assert!(!v.observe("a", rtt, ok, 0.0), "{rtt}");
    }
    for bad in [at(f64::NAN, 0.0, 1.0, 0.5), at(0.0, 0.0, -1.0, 0.5), at(1e9, 0.0, 0.0, 0.5)] {
        assert!(!v.observe("a", 10.0, bad, 0.0));
    }
    assert!(!v.observe("a", 10.0, ok, f64::NAN));
    assert_eq!(v.neighbours(), 0);
    assert_eq!(v.system_coord(), Vivaldi::new(Config::default(), 1).system_coord());
}

#[test]
fn coincident_nodes_are_pushed_apart_deterministically() {
    let run = |seed| {
        let mut v = Vivaldi::new(Config::default(), seed);
        assert!(v.observe("a", 20.0, at(0.0, 0.0, 1e-5, 1.5), 0.0));
        v.system_coord()
    };
    let c = run(7);
    assert!(c.x.hypot(c.y) > 1.0, "{c:?}");
    assert_eq!(run(7), c);
    assert_ne!(run(8), c);
}

#[test]
fn two_nodes_converge_to_their_rtt() {
    let (mut a, mut b) = (Vivaldi::new(Config::default(), 1), Vivaldi::new(Config::default(), 2));
    for i in 0..200 {
        let t = f64::from(i);
        let bc = b.system_coord();
        a.observe("b", 42.0, bc, t);
        let ac = a.system_coord();
        b.observe("a", 42.0, ac, t);
    }
    let predicted = a.system_coord().rtt(&b.system_coord());
    assert!((predicted - 42.0).abs() < 0.5, "{predicted}");
    assert!(a.system_coord().error < 0.05, "{:?}", a.system_coord());
    assert_eq!(a.rtts(), vec![("b".to_owned(), 42.0)]);
}

#[test]
fn the_mp_filter_takes_the_lower_quartile_of_the_window() {
    let mut v = Vivaldi::new(Config::default(), 1);
    let p = at(50.0, 0.0, 1.0, 0.2);
    for (i, rtt) in [30.0, 10.0, 80.0, 20.0, 90.0].into_iter().enumerate() {
        v.observe("p", rtt, p, i as f64);
    }
    // Window of 4: [10, 80, 20, 90]; the 25th percentile (nearest rank) is 10.
    assert_eq!(v.rtts(), vec![("p".to_owned(), 10.0)]);
    v.observe("p", 40.0, p, 5.0);
    assert_eq!(v.rtts(), vec![("p".to_owned(), 20.0)]);
}

#[test]
fn stale_neighbours_are_forgotten_and_memory_is_bounded() {
    let mut v = Vivaldi::new(Config::default(), 1);
    let p = at(5.0, 5.0, 1.0, 0.5);
    v.observe("old", 10.0, p, 0.0);
    v.observe("new", 10.0, p, 200.0);
    v.forget_stale(300.0);
    assert_eq!(v.neighbours(), 2);
    v.forget_stale(300.1);
    assert_eq!(v.rtts().into_iter().map(|(id, _)| id).collect::<Vec<_>>(), vec!["new"]);

    for i in 0..MAX_NEIGHBOURS + 10 {
        v.observe(&format!("n{i:04}"), 10.0, p, 1000.0 + i as f64);
    }
    assert_eq!(v.neighbours(), MAX_NEIGHBOURS);
    let ids: Vec<String> = v.rtts().into_iter().map(|(id, _)| id).collect();
    // The least recently heard went first: "new" and the ten oldest of the batch.
    assert!(!ids.contains(&"new".to_owned()));
    assert!(!ids.contains(&"n0009".to_owned()));
    assert!(ids.contains(&"n0010".to_owned()));
}

#[test]
fn nonsense_configuration_is_replaced_by_sane_values() {
    let cfg = Config {
        ce: f64::NAN,
        cc: 7.0,
        max_error: -1.0,
        min_height: f64::INFINITY,
        window: 0,
        percentile: f64::NAN,
        neighbour_ttl_s: f64::NAN,
        app_threshold: -3.0,
        app_window: 1_000_000,
    };
    let mut v = Vivaldi::new(cfg, 3);
    for i in 0..50 {
        v.observe("p", 25.0, at(3.0, 4.0, 2.0, 0.3), f64::from(i));
    }
    assert!(v.coord().is_valid());
    assert!(v.system_coord().is_valid());
}

#[test]
fn the_application_coordinate_is_stable_while_the_system_one_jitters() {
    // Four fixed anchors, noisy RTTs: the system coordinate wanders by a little all the time,
    // the application-level one changes far less often.
    let anchors =
        [at(0.0, 0.0, 2.0, 0.05), at(100.0, 0.0, 2.0, 0.05), at(0.0, 100.0, 2.0, 0.05), at(100.0, 100.0, 2.0, 0.05)];
    let me = at(30.0, 60.0, 3.0, 0.0);
    let mut v = Vivaldi::new(Config { window: 1, ..Config::default() }, 9);
    let mut s = 1u64;
    let (mut sys_moves, mut app_moves) = (0, 0);
    for i in 0..2000u32 {
        let k = i as usize % anchors.len();
        let rtt = me.rtt(&anchors[k]) * (1.0 + 0.05 * rng::next_f64(&mut s));
        let before = v.coord();
        if v.observe(&format!("a{k}"), rtt, anchors[k], f64::from(i)) && i >= 1000 {
            sys_moves += 1;
        }
        if i >= 1000 && (v.coord().x, v.coord().y) != (before.x, before.y) {
            app_moves += 1;
        }
    }
    assert!(sys_moves > 900, "{sys_moves}");
    assert!(app_moves * 10 < sys_moves, "{app_moves} of {sys_moves}");
    let err = (v.coord().rtt(&anchors[3]) - me.rtt(&anchors[3])).abs() / me.rtt(&anchors[3]);
    assert!(err < 0.1, "{err}");
}

proptest! {
    #[test]
    fn coordinates_stay_finite_under_any_input(
        samples in proptest::collection::vec(
            (0usize..4, any::<f64>(), any::<f64>(), any::<f64>(), any::<f64>(), any::<f64>(), any::<f64>()),
            1..60,
        ),
        seed: u64,
    ) {
        let mut v = Vivaldi::new(Config::default(), seed);
        for (i, (peer, rtt, x, y, h, e, now)) in samples.into_iter().enumerate() {
            // Half of the peer coordinates valid, so that updates really run.
            let c = if i % 2 == 0 {
                at(x % 60_000.0, y % 60_000.0, (h % 60_000.0).abs(), (e % 10.0).abs())
            } else {
                at(x, y, h, e)
            };
            let rtt = if i % 3 == 0 { rtt.abs() % 70_000.0 } else { rtt };
            v.observe(&format!("p{peer}"), rtt, c, now);
            prop_assert!(v.system_coord().is_valid(), "{:?}", v.system_coord());
            prop_assert!(v.coord().is_valid(), "{:?}", v.coord());
            prop_assert!(v.system_coord().h >= 1e-5);
            for (_, ms) in v.rtts() {
                prop_assert!(ms.is_finite() && ms > 0.0);
            }
        }
    }
}

mod accuracy {
    use super::Config;
    use crate::simulation::{converge, converge_with, median_relative_error};
    use crate::space::{Space, SpaceParams};

    fn space() -> Space {
        Space::generate(&SpaceParams { nodes: 100, ..SpaceParams::default() }, 11)
    }

    #[test]
    fn coordinates_predict_the_rtts_of_a_realistic_space() {
        let s = space();
        let nodes = converge(&s, 60, 0.0, 1);
        let sys: Vec<_> = nodes.iter().map(|v| v.system_coord()).collect();
        let app: Vec<_> = nodes.iter().map(|v| v.coord()).collect();
        let (e_sys, e_app) = (median_relative_error(&s, &sys), median_relative_error(&s, &app));
        eprintln!("median relative error: system {e_sys:.3}, application {e_app:.3}");
        assert!(e_sys <= 0.15, "{e_sys}");
        assert!(e_app <= 0.15, "{e_app}");
        let errors: Vec<f64> = sys.iter().map(|c| c.error).collect();
        assert!(crate::simulation::median(errors) < 0.5);
    }

    #[test]
    fn the_mp_filter_absorbs_outliers() {
        let s = space();
        let error = |cfg: &Config, outliers| {
            let nodes = converge_with(&s, s.len(), cfg, 60, outliers, 2);
            median_relative_error(&s, &nodes.iter().map(|v| v.system_coord()).collect::<Vec<_>>())
        };
        let clean = error(&Config::default(), 0.0);
        let spiky = error(&Config::default(), 0.1);
        let unfiltered = error(&Config { window: 1, ..Config::default() }, 0.1);
        eprintln!(
            "median relative error: clean {clean:.3}, 10 % outliers ×5 {spiky:.3}, the same unfiltered {unfiltered:.3}"
        );
        assert!(spiky <= 0.15, "{spiky}");
        assert!(spiky <= clean * 1.3 + 0.01, "{spiky} vs {clean}");
        assert!(unfiltered > 2.0 * spiky, "{unfiltered} vs {spiky}");
    }
}

/// The energy distance computed from scratch, as NSDI'07 defines it.
fn energy_from_scratch(a: &[Coord], b: &[Coord]) -> f64 {
    let (n, m) = (a.len() as f64, b.len() as f64);
    let sum =
        |p: &[Coord], q: &[Coord]| p.iter().flat_map(|x| q.iter().map(move |y| position_distance(x, y))).sum::<f64>();
    n * m / (n + m) * (2.0 * sum(a, b) / (n * m) - sum(a, a) / (n * n) - sum(b, b) / (m * m))
}

proptest! {
    #[test]
    fn running_sums_match_the_energy_distance(
        steps in proptest::collection::vec((-500.0..500.0f64, -500.0..500.0f64, 0.0..50.0f64), 1..200),
        window in 1usize..20,
        threshold in 0.0..100.0f64,
    ) {
        let mut app = AppLevel::new(Coord::default(), window, threshold);
        for (x, y, h) in steps {
            app.push(Coord::new(x, y, h, 0.0));
            if app.start.len() >= window {
                let current: Vec<Coord> = app.current.iter().copied().collect();
                let want = energy_from_scratch(&app.start, &current);
                prop_assert!((app.energy() - want).abs() <= 1e-6 * (1.0 + want.abs()), "{} vs {want}", app.energy());
            }
            prop_assert!(app.coord.is_valid());
        }
    }
}
