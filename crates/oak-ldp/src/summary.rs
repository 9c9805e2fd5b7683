//! A cluster's summary for the root: a few discs covering its workers' locations and a few
//! balls covering their network coordinates ([`LdpSummary`]), and the lower bounds a
//! scheduler computes from them.
//!
//! Covering is k-center clustering (Gonzalez's farthest-point traversal, a 2-approximation of
//! the smallest largest radius), followed by one recentring step kept only when it shrinks
//! the largest radius. Every valid input point is inside some circle, so the bounds
//! [`best_rtt`] and [`best_km`] never exceed the true value for any covered worker: a
//! cluster is never ruled out because of its summary.

use oak_api::ldp::{Coord, CoordCircle, GeoCircle, LdpSummary};
use oak_api::net::distance_km;

/// Added to every radius (relative and absolute) so that membership survives rounding in a
/// reader's own arithmetic.
const SLACK: f64 = 1e-9;

/// Covers the valid `locations` ((lat, lon) in degrees) with at most `max` discs and the
/// valid `coords` ([`Coord::is_valid`]) with at most `max` balls. Invalid entries are
/// skipped; `max` 0 gives an empty summary. Deterministic.
pub fn summarize(locations: &[(f64, f64)], coords: &[Coord], max: usize) -> LdpSummary {
    LdpSummary { area: cover_locations(locations, max), space: cover_coords(coords, max) }
}

/// At most `max` discs covering every valid location.
pub fn cover_locations(locations: &[(f64, f64)], max: usize) -> Vec<GeoCircle> {
    let points: Vec<(f64, f64)> = locations.iter().copied().filter(|&p| valid_location(p)).collect();
    let dist = |a: &(f64, f64), b: &(f64, f64)| distance_km(*a, *b);
    let Some(groups) = k_center(&points, max, dist) else { return Vec::new() };
    let disc = |centre: (f64, f64), members: &[(f64, f64)]| {
        let r = members.iter().map(|m| distance_km(centre, *m)).fold(0.0, f64::max);
        GeoCircle { lat: centre.0, lon: centre.1, radius_km: pad(r) }
    };
    let as_drawn: Vec<GeoCircle> = groups.iter().map(|(c, m)| disc(*c, m)).collect();
    let recentred: Vec<GeoCircle> = regroup(&groups, spherical_mean, dist).iter().map(|(c, m)| disc(*c, m)).collect();
    if largest(&recentred, |d| d.radius_km) < largest(&as_drawn, |d| d.radius_km) { recentred } else { as_drawn }
}

/// At most `max` balls covering every valid coordinate. A ball's `coord.h` is the smallest
/// height of its members and its radius covers each member's planar distance plus the
/// member's extra height, so `rtt(ball.coord, t) - radius ≤ rtt(member, t)` for any `t`.
pub fn cover_coords(coords: &[Coord], max: usize) -> Vec<CoordCircle> {
    let points: Vec<Coord> = coords.iter().copied().filter(Coord::is_valid).collect();
    let dist = |a: &Coord, b: &Coord| planar(a, b) + (a.h - b.h).abs();
    let Some(groups) = k_center(&points, max, dist) else { return Vec::new() };
    let ball = |centre: &Coord, members: &[Coord]| {
        let h = members.iter().map(|m| m.h).fold(f64::INFINITY, f64::min);
        let h = if h.is_finite() { h } else { centre.h };
        let error = members.iter().map(|m| m.error).fold(0.0, f64::max);
        let r = members.iter().map(|m| planar(centre, m) + (m.h - h)).fold(0.0, f64::max);
        CoordCircle { coord: Coord::new(centre.x, centre.y, h, error), radius_ms: pad(r) }
    };
    let as_drawn: Vec<CoordCircle> = groups.iter().map(|(c, m)| ball(c, m)).collect();
    let mean = |m: &[Coord]| {
        let n = m.len().max(1) as f64;
        let (x, y, h) = m.iter().fold((0.0, 0.0, 0.0), |(x, y, h), c| (x + c.x, y + c.y, h + c.h));
        Some(Coord::new(x / n, y / n, h / n, 0.0))
    };
    let recentred: Vec<CoordCircle> = regroup(&groups, mean, dist).iter().map(|(c, m)| ball(c, m)).collect();
    if largest(&recentred, |b| b.radius_ms) < largest(&as_drawn, |b| b.radius_ms) { recentred } else { as_drawn }
}

/// A lower bound of the RTT from any worker a ball of `space` covers to `to`, in ms: the
/// smallest `max(0, rtt(ball, to) − radius)`. None when no ball is usable or `to` is invalid.
pub fn best_rtt(space: &[CoordCircle], to: &Coord) -> Option<f64> {
    if !to.is_valid() {
        return None;
    }
    space
        .iter()
        .filter(|b| b.coord.is_valid() && b.radius_ms.is_finite() && b.radius_ms >= 0.0)
        .map(|b| (b.coord.rtt(to) - b.radius_ms).max(0.0))
        .min_by(f64::total_cmp)
}

/// A lower bound of the distance from any worker a disc of `area` covers to (lat, lon), in
/// km: the smallest `max(0, distance − radius)`. None when no disc is usable or the point is
/// invalid.
pub fn best_km(area: &[GeoCircle], lat: f64, lon: f64) -> Option<f64> {
    if !valid_location((lat, lon)) {
        return None;
    }
    area.iter()
        .filter(|d| valid_location((d.lat, d.lon)) && d.radius_km.is_finite() && d.radius_km >= 0.0)
        .map(|d| (distance_km((d.lat, d.lon), (lat, lon)) - d.radius_km).max(0.0))
        .min_by(f64::total_cmp)
}

fn valid_location((lat, lon): (f64, f64)) -> bool {
    lat.is_finite() && lon.is_finite() && lat.abs() <= 90.0 && lon.abs() <= 180.0
}

fn planar(a: &Coord, b: &Coord) -> f64 {
    (a.x - b.x).hypot(a.y - b.y)
}

fn pad(r: f64) -> f64 {
    r * (1.0 + SLACK) + SLACK
}

fn largest<T>(v: &[T], radius: impl Fn(&T) -> f64) -> f64 {
    v.iter().map(radius).fold(0.0, f64::max)
}

/// Gonzalez's farthest-point traversal: up to `k` centres, each the point farthest from those
/// chosen so far (ties: the first in input order), then each point joins its nearest centre. Returns (centre, members) per non-empty group; None
/// when there is nothing to cover or `k` is 0.
fn k_center<T: Copy>(points: &[T], k: usize, dist: impl Fn(&T, &T) -> f64) -> Option<Vec<(T, Vec<T>)>> {
    let first = *points.first()?;
    if k == 0 {
        return None;
    }
    // Start from the point farthest from an arbitrary one: a periphery point, the classic
    // deterministic choice.
    let start = farthest(points, &[first], &dist).map_or(first, |(p, _)| p);
    let mut centres = vec![start];
    while centres.len() < k {
        match farthest(points, &centres, &dist) {
            Some((p, d)) if d > 0.0 => centres.push(p),
            _ => break,
        }
    }
    Some(assign(points, &centres, &dist))
}

/// The point farthest from its nearest centre, and that distance.
fn farthest<T: Copy>(points: &[T], centres: &[T], dist: &impl Fn(&T, &T) -> f64) -> Option<(T, f64)> {
    points.iter().map(|p| (*p, nearest(p, centres, dist).map_or(0.0, |(_, d)| d))).fold(
        None,
        |best: Option<(T, f64)>, (p, d)| match best {
            Some((_, bd)) if bd >= d => best,
            _ => Some((p, d)),
        },
    )
}

fn nearest<T>(p: &T, centres: &[T], dist: &impl Fn(&T, &T) -> f64) -> Option<(usize, f64)> {
    centres.iter().map(|c| dist(p, c)).enumerate().fold(None, |best, (i, d)| match best {
        Some((_, bd)) if bd <= d => best,
        _ => Some((i, d)),
    })
}

fn assign<T: Copy>(points: &[T], centres: &[T], dist: &impl Fn(&T, &T) -> f64) -> Vec<(T, Vec<T>)> {
    let mut groups: Vec<(T, Vec<T>)> = centres.iter().map(|c| (*c, Vec::new())).collect();
    for p in points {
        if let Some((i, _)) = nearest(p, centres, dist)
            && let Some(g) = groups.get_mut(i)
        {
            g.1.push(*p);
        }
    }
    groups.retain(|g| !g.1.is_empty());
    groups
}

/// One Lloyd step: each group's centre moves to `centre(members)` (kept when None), then
/// every point joins its nearest new centre.
fn regroup<T: Copy>(
    groups: &[(T, Vec<T>)],
    centre: impl Fn(&[T]) -> Option<T>,
    dist: impl Fn(&T, &T) -> f64,
) -> Vec<(T, Vec<T>)> {
    let centres: Vec<T> = groups.iter().map(|(c, m)| centre(m).unwrap_or(*c)).collect();
    let points: Vec<T> = groups.iter().flat_map(|(_, m)| m.iter().copied()).collect();
    assign(&points, &centres, &dist)
}

/// The mean of points on the sphere (of their unit vectors, projected back); None when it is
/// undefined (points spread evenly around the globe).
fn spherical_mean(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let (x, y, z) = points.iter().fold((0.0, 0.0, 0.0), |(x, y, z), &(lat, lon)| {
        let (la, lo) = (f64::to_radians(lat), f64::to_radians(lon));
        (x + la.cos() * lo.cos(), y + la.cos() * lo.sin(), z + la.sin())
    });
    let norm = (x * x + y * y + z * z).sqrt();
    if norm <= 1e-9 * points.len() as f64 {
        return None;
    }
    let lat = (z / norm).clamp(-1.0, 1.0).asin().to_degrees();
    let lon = y.atan2(x).to_degrees();
    valid_location((lat, lon)).then_some((lat, lon))
}

/// The `k` entries with the least distance, ties broken by `tie` (e.g. a worker's id, so that
/// the order is the same everywhere), in that order. A partial selection: linear in the
/// number of entries, not a sort of all of them (the cluster picks a few nearest among
/// thousands of workers, for every worker, every epoch).
pub fn least_k<T>(mut v: Vec<(f64, T)>, k: usize, tie: impl Fn(&T, &T) -> std::cmp::Ordering) -> Vec<(f64, T)> {
    let cmp = |a: &(f64, T), b: &(f64, T)| a.0.total_cmp(&b.0).then_with(|| tie(&a.1, &b.1));
    if v.len() > k {
        v.select_nth_unstable_by(k, cmp);
        v.truncate(k);
    }
    v.sort_by(cmp);
    v
}

#[cfg(test)]
mod tests;
