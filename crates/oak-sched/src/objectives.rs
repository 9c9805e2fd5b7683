//! From a service's SLA requirements ([`oak_api::ldp::Requirement`]) to the [`Objective`]s a
//! placement scores, with what each tier knows: the S2S targets' workers and the named areas
//! (an [`LdpContext`], from the root), and where users are in the coordinate space (measured
//! by a cluster's workers; the root does not know it, and leaves user requirements to the
//! clusters).

use crate::{Objective, Point};
use oak_api::ldp::{Coord, LdpContext, Need, Requirement};
use oak_api::net::parse_location;
use std::net::IpAddr;

/// The objectives of a request, and what keeps some of them from being judged yet.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resolved {
    pub objectives: Vec<Objective>,
    /// Hard requirements that cannot be judged yet, said for the status ("service db has no
    /// running instance yet"). The instance waits while any is left.
    pub waiting: Vec<String>,
    /// User addresses whose place in the coordinate space is not known yet.
    pub unknown_users: Vec<IpAddr>,
}

fn point(coord: Option<Coord>, location: Option<(f64, f64)>) -> Point {
    Point { coord, location }
}

/// What a cluster knows from its workers' measurements.
pub trait Lookups {
    /// A user's coordinate, once located, and the RTTs workers measured to it (worker id, ms).
    fn user(&self, user: IpAddr) -> Option<(Coord, Vec<(String, f64)>)>;
    /// The RTTs workers measured to any of these workers (worker id, the lowest ms).
    fn to_workers(&self, workers: &[&str]) -> Vec<(String, f64)>;
}

/// Resolves `reqs`. `lookups` is what a cluster measured; `None` for the root, which then
/// skips user requirements (a cluster that cannot meet one refuses the instance, and the root
/// tries another). Measured RTTs stand instead of predictions for the workers that measured.
pub fn resolve(reqs: &[Requirement], ctx: Option<&LdpContext>, lookups: Option<&dyn Lookups>) -> Resolved {
    let mut r = Resolved::default();
    let empty = LdpContext::default();
    let ctx = ctx.unwrap_or(&empty);
    for q in reqs {
        let hard = q.is_hard();
        let objective = |label: String, points: Vec<Point>, max_ms: Option<f64>, max_km: Option<f64>| Objective {
            label,
            points,
            max_ms,
            max_km,
            rigidness: q.rigidness,
            measured: Vec::new(),
        };
        let users = |r: &mut Resolved, list: &[IpAddr], ms: f64, label: &dyn Fn(IpAddr) -> String| {
            let Some(l) = lookups else { return };
            for &u in list {
                match l.user(u) {
                    Some((c, measured)) => r.objectives.push(Objective {
                        label: label(u),
                        points: vec![point(Some(c), None)],
                        max_ms: Some(ms),
                        max_km: None,
                        rigidness: q.rigidness,
                        measured,
                    }),
                    None => {
                        if !r.unknown_users.contains(&u) {
                            r.unknown_users.push(u);
                        }
                    }
                }
            }
        };
        match &q.need {
            Need::Geo { lat, lon, km } => {
                let o = objective(format!("{lat},{lon}"), vec![point(None, Some((*lat, *lon)))], None, Some(*km));
                r.objectives.push(o);
            }
            Need::Users { users: list, ms } => users(&mut r, list, *ms, &|u| format!("user {u}")),
            Need::Area { area, ms } => match ctx.areas.get(area) {
                Some(def) if !def.users.is_empty() => {
                    users(&mut r, &def.users, *ms, &|u| format!("area {area} (user {u})"));
                }
                Some(def) => {
                    // An area known only on the map: its latency cannot be measured, so the
                    // instance runs inside it.
                    if let (Some(c), Some(radius)) = (def.location.as_deref().and_then(parse_location), def.radius_km) {
                        r.objectives.push(objective(
                            format!("area {area}"),
                            vec![point(None, Some(c))],
                            None,
                            Some(radius),
                        ));
                    }
                }
                None if hard => r.waiting.push(format!("area {area} is not defined at the root")),
                None => {}
            },
            Need::ServiceLatency { target, ms } | Need::ServiceGeo { target, km: ms } => {
                let geo = matches!(q.need, Need::ServiceGeo { .. });
                let points: Vec<Point> = ctx
                    .targets
                    .get(target)
                    .into_iter()
                    .flatten()
                    .map(|t| point(t.coord, t.location.as_deref().and_then(parse_location)))
                    .filter(|p| if geo { p.location.is_some() } else { p.coord.is_some() })
                    .collect();
                if points.is_empty() {
                    if hard {
                        let what = if geo { "a location" } else { "a network coordinate" };
                        r.waiting.push(format!("service {target} has no running instance with {what} yet"));
                    }
                    continue;
                }
                let (max_ms, max_km) = if geo { (None, Some(*ms)) } else { (Some(*ms), None) };
                let mut o = objective(format!("service {target}"), points, max_ms, max_km);
                if let (false, Some(l)) = (geo, lookups) {
                    let workers: Vec<&str> =
                        ctx.targets.get(target).into_iter().flatten().map(|t| t.worker.as_str()).collect();
                    o.measured = l.to_workers(&workers);
                }
                r.objectives.push(o);
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use oak_api::ldp::{AreaDef, TargetPoint};

    fn req(need: Need, rigidness: f64) -> Requirement {
        Requirement { need, rigidness, convergence_time: 30.0, field: "constraints[0]".into() }
    }

    #[test]
    fn targets_without_instances_make_hard_requirements_wait() {
        let reqs = [
            req(Need::ServiceLatency { target: "db".into(), ms: 20.0 }, 1.0),
            req(Need::ServiceLatency { target: "cache".into(), ms: 20.0 }, 0.5),
        ];
        let r = resolve(&reqs, None, None);
        assert!(r.objectives.is_empty());
        assert_eq!(r.waiting, vec!["service db has no running instance with a network coordinate yet".to_owned()]);
        let mut ctx = LdpContext::default();
        ctx.targets.insert(
            "db".into(),
            vec![TargetPoint {
                worker: "w1".into(),
                coord: Some(Coord::new(1.0, 2.0, 0.5, 0.1)),
                location: None,
                probe: None,
            }],
        );
        let r = resolve(&reqs, Some(&ctx), None);
        assert!(r.waiting.is_empty());
        assert_eq!(r.objectives.len(), 1);
        assert_eq!((r.objectives[0].label.as_str(), r.objectives[0].max_ms), ("service db", Some(20.0)));
    }

    #[test]
    fn users_are_left_to_whoever_can_locate_them() {
        let u: IpAddr = "192.0.2.7".parse().unwrap();
        let reqs = [req(Need::Users { users: vec![u], ms: 15.0 }, 1.0)];
        assert_eq!(resolve(&reqs, None, None), Resolved::default());
        struct L(Option<(Coord, Vec<(String, f64)>)>);
        impl Lookups for L {
            fn user(&self, _: IpAddr) -> Option<(Coord, Vec<(String, f64)>)> {
                self.0.clone()
            }
            fn to_workers(&self, _: &[&str]) -> Vec<(String, f64)> {
                Vec::new()
            }
        }
        assert_eq!(resolve(&reqs, None, Some(&L(None))).unknown_users, vec![u]);
        let known = L(Some((Coord::new(3.0, 4.0, 1.0, 0.2), vec![("w1".to_owned(), 2.5)])));
        let r = resolve(&reqs, None, Some(&known));
        assert_eq!(r.objectives.len(), 1);
        assert_eq!(r.objectives[0].measured, vec![("w1".to_owned(), 2.5)], "measurements stand for predictions");
        assert_eq!(r.objectives[0].label, "user 192.0.2.7");
    }

    #[test]
    fn areas_resolve_to_their_users_or_their_disc() {
        let mut ctx = LdpContext::default();
        ctx.areas.insert(
            "munich".into(),
            AreaDef { location: Some("48.14,11.58".into()), radius_km: Some(30.0), users: vec![] },
        );
        let reqs = [req(Need::Area { area: "munich".into(), ms: 10.0 }, 1.0)];
        let r = resolve(&reqs, Some(&ctx), None);
        assert_eq!(r.objectives[0].max_km, Some(30.0));
        assert_eq!(r.objectives[0].points[0].location, Some((48.14, 11.58)));
        let r = resolve(&[req(Need::Area { area: "nowhere".into(), ms: 10.0 }, 1.0)], Some(&ctx), None);
        assert_eq!(r.waiting, vec!["area nowhere is not defined at the root".to_owned()]);
    }
}
