use super::*;
use crate::rng;
use crate::space::{Space, SpaceParams};
use proptest::prelude::*;

fn inside_disc(d: &GeoCircle, p: (f64, f64)) -> bool {
    distance_km((d.lat, d.lon), p) <= d.radius_km
}

fn inside_ball(b: &CoordCircle, c: &Coord) -> bool {
    c.h >= b.coord.h && planar(&b.coord, c) + (c.h - b.coord.h) <= b.radius_ms
}

#[test]
fn nothing_to_cover_gives_an_empty_summary() {
    assert!(summarize(&[], &[], 16).is_empty());
    assert!(summarize(&[(48.0, 11.0)], &[Coord::new(1.0, 2.0, 3.0, 0.1)], 0).is_empty());
    let bad = summarize(&[(f64::NAN, 1.0), (91.0, 0.0), (0.0, 181.0)], &[Coord::new(0.0, 0.0, -1.0, 0.0)], 4);
    assert!(bad.is_empty());
    assert_eq!(best_rtt(&[], &Coord::default()), None);
    assert_eq!(best_km(&[], 48.0, 11.0), None);
}

#[test]
fn one_point_is_a_circle_of_radius_zero() {
    let s = summarize(&[(48.14, 11.58), (48.14, 11.58)], &[Coord::new(5.0, -3.0, 2.0, 0.2)], 16);
    assert_eq!(s.area.len(), 1);
    assert!(s.area[0].radius_km < 1e-6);
    assert_eq!((s.area[0].lat, s.area[0].lon), (48.14, 11.58));
    assert_eq!(s.space, vec![CoordCircle { coord: Coord::new(5.0, -3.0, 2.0, 0.2), radius_ms: pad(0.0) }]);
}

#[test]
fn workers_in_a_few_cities_get_a_disc_per_city() {
    // 60 workers within 40 km of 5 cities: 5 discs, one per city, of about 40 km.
    let space = Space::generate(&SpaceParams { nodes: 60, sites: 5, ..SpaceParams::default() }, 3);
    let locations: Vec<(f64, f64)> = (0..space.len()).map(|i| space.location(i)).collect();
    let area = cover_locations(&locations, 5);
    assert_eq!(area.len(), 5, "{area:?}");
    for (i, d) in area.iter().enumerate() {
        assert!(d.radius_km <= 50.0, "{area:?}");
        let city = space.sites().iter().position(|c| distance_km(*c, (d.lat, d.lon)) < 40.0);
        assert!(city.is_some() && area[..i].iter().all(|o| distance_km((o.lat, o.lon), (d.lat, d.lon)) > 300.0));
    }
    // More circles than cities: they all get used, and are smaller.
    let fine = cover_locations(&locations, 16);
    assert_eq!(fine.len(), 16);
    assert!(largest(&fine, |d| d.radius_km) < largest(&area, |d| d.radius_km));
    let one = cover_locations(&locations, 1);
    assert_eq!(one.len(), 1);
    assert!(locations.iter().all(|p| inside_disc(&one[0], *p)));
}

#[test]
fn the_bounds_are_tight_for_a_tight_group() {
    let coords: Vec<Coord> = (0..10).map(|i| Coord::new(100.0 + f64::from(i) * 0.1, 50.0, 2.0, 0.1)).collect();
    let space = cover_coords(&coords, 16);
    let target = Coord::new(0.0, 50.0, 1.0, 0.1);
    let bound = best_rtt(&space, &target).unwrap();
    let truth = coords.iter().map(|c| c.rtt(&target)).fold(f64::INFINITY, f64::min);
    assert!(bound <= truth && truth - bound < 1.0, "{bound} {truth}");
    // Right on top of a worker: the bound is 0 (heights aside), never negative.
    assert!(best_rtt(&space, &Coord::new(100.0, 50.0, 0.0, 0.0)).unwrap() >= 0.0);
    let area = [GeoCircle { lat: 48.14, lon: 11.58, radius_km: 10.0 }];
    let km = best_km(&area, 52.52, 13.40).unwrap();
    assert!((km - 494.0).abs() < 10.0, "{km}");
    assert_eq!(best_km(&area, 48.14, 11.58), Some(0.0));
    assert_eq!(best_km(&area, f64::NAN, 11.58), None);
    assert_eq!(best_rtt(&space, &Coord::new(f64::INFINITY, 0.0, 0.0, 0.0)), None);
}

#[test]
fn malformed_circles_from_the_wire_are_skipped() {
    let good = CoordCircle { coord: Coord::new(0.0, 0.0, 1.0, 0.1), radius_ms: 2.0 };
    let nan = CoordCircle { coord: Coord::new(0.0, 0.0, 1.0, 0.1), radius_ms: f64::NAN };
    let huge = CoordCircle { coord: Coord::new(0.0, 0.0, 1.0, 0.1), radius_ms: f64::INFINITY };
    let to = Coord::new(30.0, 40.0, 1.0, 0.0);
    assert_eq!(best_rtt(&[nan, huge, good], &to), Some(50.0));
    assert_eq!(best_rtt(&[nan], &to), None);
    let disc = GeoCircle { lat: 0.0, lon: 0.0, radius_km: -5.0 };
    assert_eq!(best_km(&[disc], 0.0, 0.0), None);
}

#[test]
fn summaries_are_deterministic() {
    let mut s = 5;
    let coords: Vec<Coord> = (0..200)
        .map(|_| {
            Coord::new(rng::next_f64(&mut s) * 100.0, rng::next_f64(&mut s) * 100.0, rng::next_f64(&mut s) * 5.0, 0.1)
        })
        .collect();
    let locations: Vec<(f64, f64)> =
        (0..200).map(|_| (40.0 + rng::next_f64(&mut s) * 20.0, rng::next_f64(&mut s) * 30.0)).collect();
    assert_eq!(summarize(&locations, &coords, 8), summarize(&locations, &coords, 8));
}

fn coord() -> impl Strategy<Value = Coord> {
    (-1000.0..1000.0f64, -1000.0..1000.0f64, 0.0..100.0f64, 0.0..2.0f64).prop_map(|(x, y, h, e)| Coord::new(x, y, h, e))
}

fn location() -> impl Strategy<Value = (f64, f64)> {
    (-90.0..=90.0f64, -180.0..=180.0f64)
}

proptest! {
    #[test]
    fn every_point_is_covered_and_the_bounds_hold(
        coords in proptest::collection::vec(coord(), 0..60),
        locations in proptest::collection::vec(location(), 0..60),
        max in 1usize..20,
        targets in proptest::collection::vec((coord(), location()), 1..5),
    ) {
        let s = summarize(&locations, &coords, max);
        prop_assert!(s.area.len() <= max && s.space.len() <= max);
        prop_assert_eq!(s.area.is_empty(), locations.is_empty());
        prop_assert_eq!(s.space.is_empty(), coords.is_empty());
        for p in &locations {
            prop_assert!(s.area.iter().any(|d| inside_disc(d, *p)), "{:?} outside {:?}", p, s.area);
        }
        for c in &coords {
            prop_assert!(s.space.iter().any(|b| inside_ball(b, c)), "{:?} outside {:?}", c, s.space);
        }
        for (t, (lat, lon)) in targets {
            if let Some(bound) = best_rtt(&s.space, &t) {
                for c in &coords {
                    prop_assert!(bound <= c.rtt(&t) + 1e-9, "{} > {}", bound, c.rtt(&t));
                }
            }
            if let Some(bound) = best_km(&s.area, lat, lon) {
                for p in &locations {
                    prop_assert!(bound <= distance_km(*p, (lat, lon)) + 1e-6, "{} > {}", bound, distance_km(*p, (lat, lon)));
                }
            }
        }
    }

    #[test]
    fn garbage_in_is_skipped_not_a_panic(
        coords in proptest::collection::vec((any::<f64>(), any::<f64>(), any::<f64>(), any::<f64>()), 0..30),
        locations in proptest::collection::vec((any::<f64>(), any::<f64>()), 0..30),
        max in 0usize..5,
    ) {
        let coords: Vec<Coord> = coords.into_iter().map(|(x, y, h, e)| Coord::new(x, y, h, e)).collect();
        let s = summarize(&locations, &coords, max);
        prop_assert!(s.space.iter().all(|b| b.coord.is_valid() && b.radius_ms.is_finite()));
        prop_assert!(s.area.iter().all(|d| d.radius_km.is_finite()));
        for c in coords.iter().filter(|c| c.is_valid()) {
            prop_assert!(max == 0 || s.space.iter().any(|b| inside_ball(b, c)));
        }
    }
}

#[test]
fn least_k_is_the_head_of_the_full_sort() {
    let v: Vec<(f64, u32)> = (0..200u32).map(|i| (f64::from((i * 37) % 50), i)).collect();
    let mut sorted = v.clone();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    for k in [0, 1, 4, 8, 199, 200, 500] {
        let got = least_k(v.clone(), k, |a, b| a.cmp(b));
        assert_eq!(got, sorted[..k.min(200)].to_vec(), "k = {k}");
    }
}
