//! The root's part of latency and distance-aware placement: the operator's named areas, the
//! checks of a service's requirements when it is created or changed (an unknown area or S2S
//! target is a 422 naming the field), the context each desired instance carries (where its S2S
//! targets run, the areas it names), the objectives by which the root chooses a cluster (from
//! the clusters' summaries), and the landmarks each cluster's workers probe.

use super::*;
use oak_api::ldp::{AreaDef, Coord, LdpContext, Need, ProbePeer, TargetPoint};
use std::collections::HashMap;

/// Landmarks of other clusters one cluster is sent, at most.
pub const MAX_FOREIGN_LANDMARKS: usize = 64;

/// A stored coordinate is replaced only when the new one is this far (ms) from it, or
/// [`COORD_MOVE_SHARE`] of its height plus norm: coordinates drift a little with every
/// sample, and each change would send every cluster new tables.
const COORD_MOVE_MS: f64 = 2.0;
const COORD_MOVE_SHARE: f64 = 0.1;

/// Whether `new` moved far enough from `old` to be stored.
pub(super) fn coord_moved(old: Option<&Coord>, new: Option<&Coord>) -> bool {
    match (old, new) {
        (None, None) => false,
        (Some(_), None) | (None, Some(_)) => true,
        (Some(a), Some(b)) => {
            let d = ((a.x - b.x).powi(2) + (a.y - b.y).powi(2)).sqrt() + (a.h - b.h).abs();
            let scale = (a.x.powi(2) + a.y.powi(2)).sqrt() + a.h;
            d > COORD_MOVE_MS.max(COORD_MOVE_SHARE * scale)
        }
    }
}

/// Reads an areas file: a JSON object from area name to [`AreaDef`]; every problem is named.
pub fn parse_areas(text: &str) -> std::result::Result<BTreeMap<String, AreaDef>, String> {
    let areas: BTreeMap<String, AreaDef> = serde_json::from_str(text).map_err(|e| format!("not an areas file: {e}"))?;
    for (name, def) in &areas {
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(format!("area {name:?}: a name must be 1-64 printable characters"));
        }
        if let Some(p) = def.problem() {
            return Err(format!("area {name}: {p}"));
        }
    }
    Ok(areas)
}

/// The services an S2S target names: by name within the application, or by id (of the same
/// application only: another user's id reveals nothing).
pub(super) fn target_of(
    target: &str,
    app: &ApplicationId,
    by_name: &ByName,
    by_id: &HashMap<ServiceId, ApplicationId>,
) -> Vec<ServiceId> {
    if let Some(ids) = by_name.get(&(app.clone(), target.to_owned())) {
        return ids.clone();
    }
    let id = ServiceId(target.to_owned());
    if by_id.get(&id) == Some(app) { vec![id] } else { Vec::new() }
}

/// A cluster's report of where its workers are, bounded before it is stored: at most
/// [`oak_api::ldp::MAX_SUMMARY_CIRCLES`] valid circles of each kind, a few valid landmarks,
/// a bounded list of addons. A cluster is authenticated, but one bad report must not steer
/// every placement (a huge radius would make it "near" everything).
pub(super) fn sanitize(agg: &mut oak_api::link::ClusterAggregate) {
    use oak_api::ldp::{MAX_COORD_MS, MAX_SUMMARY_CIRCLES};
    agg.ldp
        .space
        .retain(|c| c.coord.is_valid() && c.radius_ms.is_finite() && (0.0..=MAX_COORD_MS).contains(&c.radius_ms));
    agg.ldp.space.truncate(MAX_SUMMARY_CIRCLES);
    agg.ldp.area.retain(|c| {
        (-90.0..=90.0).contains(&c.lat) && (-180.0..=180.0).contains(&c.lon) && (0.0..=20_040.0).contains(&c.radius_km)
    });
    agg.ldp.area.truncate(MAX_SUMMARY_CIRCLES);
    agg.landmarks.retain(|p| probe_ok(&p.addr) && !p.id.is_empty() && p.id.len() <= 64);
    agg.landmarks.truncate(16);
    agg.addons.retain(|a| !a.is_empty() && a.len() <= 64 && !a.chars().any(char::is_control));
    agg.addons.truncate(4 * oak_api::node::MAX_ADDONS);
}

/// A probe address other workers may be sent to: not unspecified, multicast or broadcast,
/// and not port 0.
pub(super) fn probe_ok(a: &std::net::SocketAddrV4) -> bool {
    let ip = a.ip();
    a.port() != 0 && !(ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast())
}

impl Registry {
    /// Named areas for `latency` constraints (`oak root --areas FILE`).
    pub fn with_areas(mut self, areas: BTreeMap<String, AreaDef>) -> Self {
        self.areas = areas;
        self
    }

    /// Checks the requirements of `spec` (at `path`) against what the root knows: its areas
    /// exist, and each S2S target names exactly one other service of the application `names`
    /// (the services it has and will have after this request: name, service id) or an id
    /// in it.
    pub(super) fn check_requirements(
        &self,
        spec: &MicroserviceSpec,
        names: &[(String, Option<ServiceId>)],
        path: &str,
    ) -> Result<()> {
        let mut v = Vec::new();
        for q in spec.requirements() {
            match &q.need {
                Need::Area { area, .. } if !self.areas.contains_key(area) => {
                    let known: Vec<&str> = self.areas.keys().map(String::as_str).collect();
                    let hint = if known.is_empty() {
                        "this root defines no areas (oak root --areas FILE)".to_owned()
                    } else {
                        format!("this root defines {}", known.join(", "))
                    };
                    v.push(Violation {
                        field: format!("{path}.{}.area", q.field),
                        message: format!("unknown area {area:?}; {hint}"),
                    });
                }
                _ => {}
            }
        }
        for (i, c) in spec.connectivity.iter().enumerate() {
            let t = &c.target_microservice_id;
            let field = format!("{path}.connectivity[{i}].target_microservice_id");
            let by_name = names.iter().filter(|(n, _)| n == t).count();
            let by_id = names.iter().any(|(_, id)| id.as_ref().is_some_and(|id| id.as_str() == t));
            let itself = *t == spec.microservice_name
                || names
                    .iter()
                    .any(|(n, id)| *n == spec.microservice_name && id.as_ref().is_some_and(|id| id.as_str() == t));
            if itself {
                v.push(Violation { field, message: format!("{t:?} is this service itself") });
            } else if by_name > 1 {
                v.push(Violation {
                    field,
                    message: format!("{t:?} names {by_name} services of this application (in different namespaces); give the service id"),
                });
            } else if by_name == 0 && !by_id {
                v.push(Violation {
                    field,
                    message: format!("no service named {t:?} (nor with that id) in this application"),
                });
            }
        }
        if v.is_empty() { Ok(()) } else { Err(RegistryError::Invalid(v)) }
    }

    /// Landmarks of the active clusters other than `cluster`, a bounded and stable choice.
    pub fn landmarks_for(&self, cluster: &ClusterId) -> Result<Vec<ProbePeer>> {
        let now = self.clock.now_unix();
        let mut out: Vec<ProbePeer> = Vec::new();
        let clusters = self.clusters()?;
        let others: Vec<&ClusterRecord> =
            clusters.iter().filter(|c| &c.id != cluster && now - c.last_seen <= self.cluster_timeout).collect();
        // Round-robin over clusters, so that many clusters each get some landmarks.
        let mut round = 0;
        while out.len() < MAX_FOREIGN_LANDMARKS {
            let mut any = false;
            for c in &others {
                if let Some(p) = c.aggregate.landmarks.get(round) {
                    any = true;
                    if out.len() < MAX_FOREIGN_LANDMARKS {
                        out.push(p.clone());
                    }
                }
            }
            if !any {
                break;
            }
            round += 1;
        }
        Ok(out)
    }
}

/// Services by (application, name).
pub(super) type ByName = HashMap<(ApplicationId, String), Vec<ServiceId>>;

/// The services by (application, name) and their applications by id, over `services`.
pub(super) fn index(services: &[ServiceRecord]) -> (ByName, HashMap<ServiceId, ApplicationId>) {
    let mut by_name: ByName = HashMap::new();
    let mut by_id = HashMap::new();
    for s in services {
        by_name.entry((s.app.clone(), s.spec.microservice_name.clone())).or_default().push(s.id.clone());
        by_id.insert(s.id.clone(), s.app.clone());
    }
    (by_name, by_id)
}

/// Where the running instances of each service are: (worker, coordinate, location, probe).
pub(super) fn points(services: &[ServiceRecord]) -> HashMap<ServiceId, Vec<TargetPoint>> {
    services
        .iter()
        .map(|s| {
            let pts = s
                .net
                .values()
                .filter_map(|n| {
                    Some(TargetPoint {
                        worker: n.worker.clone()?,
                        coord: n.coord,
                        location: n.location.clone(),
                        probe: n.probe,
                    })
                })
                .collect();
            (s.id.clone(), pts)
        })
        .collect()
}

impl Registry {
    /// The context an instance of `s` carries: where its S2S targets run, and the areas it
    /// names. `None` when it has no such requirement.
    pub(super) fn context(
        &self,
        s: &ServiceRecord,
        by_name: &ByName,
        by_id: &HashMap<ServiceId, ApplicationId>,
        points: &HashMap<ServiceId, Vec<TargetPoint>>,
    ) -> Option<LdpContext> {
        let reqs = s.spec.requirements();
        if reqs.is_empty() {
            return None;
        }
        let mut ctx = LdpContext::default();
        for q in &reqs {
            match &q.need {
                Need::Area { area, .. } => {
                    if let Some(def) = self.areas.get(area) {
                        ctx.areas.insert(area.clone(), def.clone());
                    }
                }
                Need::ServiceLatency { target, .. } | Need::ServiceGeo { target, .. } => {
                    let pts: Vec<TargetPoint> = target_of(target, &s.app, by_name, by_id)
                        .iter()
                        .flat_map(|id| points.get(id).cloned().unwrap_or_default())
                        .collect();
                    ctx.targets.insert(target.clone(), pts);
                }
                _ => {}
            }
        }
        Some(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn areas_files_are_checked_by_name() {
        let ok =
            parse_areas(r#"{"munich": {"location": "48.14,11.58", "radius_km": 30}, "lab": {"users": ["192.0.2.1"]}}"#)
                .unwrap();
        assert_eq!(ok.len(), 2);
        let e = parse_areas(r#"{"x": {"location": "48.14,11.58"}}"#).unwrap_err();
        assert!(e.contains("area x") && e.contains("radius_km"), "{e}");
        let e = parse_areas(r#"{"x": {"where": 1}}"#).unwrap_err();
        assert!(e.contains("where"), "{e}");
    }

    #[test]
    fn coordinates_are_stored_again_only_when_they_moved() {
        let a = Coord::new(10.0, 10.0, 1.0, 0.2);
        assert!(!coord_moved(Some(&a), Some(&Coord::new(10.5, 10.0, 1.2, 0.1))));
        assert!(coord_moved(Some(&a), Some(&Coord::new(14.0, 10.0, 1.0, 0.1))));
        assert!(coord_moved(None, Some(&a)));
        assert!(!coord_moved(None, None));
    }
}

#[cfg(test)]
mod registry_tests {
    //! LDP at the root, on the real registry over an in-memory store.
    use super::super::*;
    use super::parse_areas;
    use crate::clock::Clock;
    use oak_api::ldp::{Coord, CoordCircle, GeoCircle, LdpSummary, ProbePeer};
    use oak_api::link::{ClusterAggregate, ClusterReport, FreeSlot, InstanceState};
    use serde_json::json;

    struct Fixed;
    impl Clock for Fixed {
        fn now_unix(&self) -> f64 {
            1000.0
        }
    }

    fn registry(areas: &str) -> (Registry, UserRecord) {
        let r = Registry::new(Arc::new(oak_store::MemStore::new(TABLES)), Arc::new(Fixed))
            .with_areas(parse_areas(areas).unwrap());
        r.bootstrap(|| "hash".into()).unwrap();
        let admin = r.user_by_name("Admin").unwrap().unwrap();
        (r, admin)
    }

    fn sla(services: Value) -> Sla {
        oak_api::sla::parse_sla(&json!({"sla_version": "v2.0", "customerID": "x", "applications": [
            {"application_name": "app", "application_namespace": "ns", "microservices": services}]}))
        .unwrap()
    }

    fn svc(name: &str, extra: Value) -> Value {
        let mut m = json!({"microservice_name": name, "microservice_namespace": "n",
            "virtualization": "container", "code": "x", "memory": 10, "vcpus": 0.1});
        for (k, v) in extra.as_object().unwrap() {
            m[k] = v.clone();
        }
        m
    }

    fn invalid(e: RegistryError) -> Vec<String> {
        match e {
            RegistryError::Invalid(v) => v.iter().map(|v| format!("{}: {}", v.field, v.message)).collect(),
            other => panic!("expected a 422, got {other}"),
        }
    }

    #[test]
    fn unknown_areas_and_targets_are_refused_by_field() {
        let (r, admin) = registry(r#"{"munich": {"location": "48.14,11.58", "radius_km": 30}}"#);
        let e = r
            .create_applications(
                &admin,
                sla(json!([svc(
                    "a",
                    json!({"constraints": [{"type": "latency", "area": "berlin", "threshold": 10}]})
                )])),
            )
            .unwrap_err();
        assert_eq!(
            invalid(e),
            ["applications[0].microservices[0].constraints[0].area: unknown area \"berlin\"; this root defines munich"]
        );
        let e = r
            .create_applications(
                &admin,
                sla(json!([svc(
                    "a",
                    json!({"connectivity": [{"target_microservice_id": "db", "con_constraints": []}]})
                )])),
            )
            .unwrap_err();
        assert_eq!(
            invalid(e),
            [
                "applications[0].microservices[0].connectivity[0].target_microservice_id: no service named \"db\" (nor with that id) in this application"
            ]
        );
        // A target created in the same request, named before it exists, is fine.
        let ids = r
            .create_applications(
                &admin,
                sla(json!([
                    svc(
                        "a",
                        json!({"connectivity": [{"target_microservice_id": "db", "con_constraints": [
                        {"type": "latency", "threshold": 10, "rigidness": 1, "convergence_time": 5}]}]})
                    ),
                    svc("db", json!({"constraints": [{"type": "latency", "area": "munich", "threshold": 10}]}))
                ])),
            )
            .unwrap();
        assert_eq!(ids.len(), 1);
        assert!(r.store.scan_prefix(SERVICES, "").unwrap().len() == 2);
    }

    fn report(c: &str, coord: Option<Coord>, loc: Option<(f64, f64)>, instances: Vec<InstanceState>) -> ClusterReport {
        ClusterReport {
            aggregate: ClusterAggregate {
                active_workers: 1,
                slots: vec![FreeSlot {
                    arch: "amd64".into(),
                    runtimes: vec!["container".into()],
                    millicpu: 4000,
                    memory_mb: 4000,
                    gpus: 0,
                }],
                ldp: LdpSummary {
                    space: coord.map(|coord| CoordCircle { coord, radius_ms: 0.0 }).into_iter().collect(),
                    area: loc.map(|(lat, lon)| GeoCircle { lat, lon, radius_km: 1.0 }).into_iter().collect(),
                },
                landmarks: vec![ProbePeer { id: format!("{c}-w"), addr: "10.0.0.1:50104".parse().unwrap() }],
                ..Default::default()
            },
            instances,
            workers: vec![],
            interests: vec![],
        }
    }

    fn running(s: &ServiceId, worker: &str, coord: Coord) -> InstanceState {
        InstanceState {
            service_id: s.clone(),
            instance_number: 0,
            status: Status::Running,
            status_detail: "running".into(),
            worker_id: Some(worker.into()),
            worker_name: Some(worker.into()),
            host_ip: Some("10.0.0.9".into()),
            cpu_percent: None,
            memory_mb: None,
            ns_ip: Some("10.18.0.2".parse().unwrap()),
            host_port: Some(50103),
            location: None,
            coord: Some(coord),
            probe: Some("10.0.0.9:50104".parse().unwrap()),
            host_key: None,
        }
    }

    /// S2S: the dependent waits for its target to run, then goes to the cluster near it;
    /// the desired instance carries where the target runs; `clusters` narrows the choice; a
    /// geo constraint picks by the clusters' areas; landmarks go to the others.
    #[test]
    fn the_root_chooses_clusters_by_latency_distance_and_name() {
        let (r, admin) = registry("{}");
        let ids = r
            .create_applications(
                &admin,
                sla(json!([
                    svc(
                        "web",
                        json!({"connectivity": [{"target_microservice_id": "db", "con_constraints": [
                        {"type": "latency", "threshold": 10, "rigidness": 1, "convergence_time": 5}]}]})
                    ),
                    svc("db", json!({"constraints": [{"type": "clusters", "allowed": ["far"]}]})),
                    svc("geo", json!({"constraints": [{"type": "geo", "location": "48.14,11.58", "threshold": 50}]})),
                ])),
            )
            .unwrap();
        let app = r.get_app(&admin.id, &ids[0]).unwrap();
        let (web, db, geo) = (app.microservices[0].clone(), app.microservices[1].clone(), app.microservices[2].clone());
        let near = r.join_cluster("near", None, None).unwrap();
        let far = r.join_cluster("far", None, None).unwrap();
        let (c_near, c_far) = (Coord::new(0.0, 0.0, 1.0, 0.1), Coord::new(100.0, 0.0, 1.0, 0.1));
        r.apply_report(&near, report("near", Some(c_near), Some((48.1, 11.6)), vec![])).unwrap();
        r.apply_report(&far, report("far", Some(c_far), Some((52.5, 13.4)), vec![])).unwrap();
        for s in [&web, &db, &geo] {
            r.request_instance(&admin.id, s).unwrap();
        }
        r.schedule_pending().unwrap();
        let inst = |s: &ServiceId| r.get_service(&admin.id, s).unwrap().instance_list[0].clone();
        assert_eq!(inst(&db).cluster_id.as_ref(), Some(&far), "clusters.allowed");
        assert_eq!(inst(&geo).cluster_id.as_ref(), Some(&near), "geo: the cluster whose area is within 50 km");
        let w = inst(&web);
        assert_eq!(w.status, Status::Requested);
        assert!(w.status_detail.contains("waiting: service db has no running instance"), "{}", w.status_detail);
        // db runs in `far`, next to that cluster's coordinate: web goes there too.
        r.apply_report(&far, report("far", Some(c_far), Some((52.5, 13.4)), vec![running(&db, "fw1", c_far)])).unwrap();
        r.schedule_pending().unwrap();
        assert_eq!(inst(&web).cluster_id.as_ref(), Some(&far), "S2S latency: next to db");
        let desired = r.desired_for(&far).unwrap();
        let d = desired.iter().find(|d| d.service_id == web).unwrap();
        let ctx = d.ldp.as_ref().unwrap();
        assert_eq!(ctx.targets["db"][0].worker, "fw1");
        assert_eq!(ctx.targets["db"][0].probe, Some("10.0.0.9:50104".parse().unwrap()));
        assert_eq!(
            r.landmarks_for(&near).unwrap(),
            vec![ProbePeer { id: "far-w".into(), addr: "10.0.0.1:50104".parse().unwrap() }]
        );
    }

    /// A cluster that holds an instance and waits (REQUESTED, e.g. while it measures the
    /// RTTs to users) keeps it in its desired set: it is not dropped, nor placed elsewhere.
    #[test]
    fn an_instance_its_cluster_waits_on_stays_with_it() {
        let (r, admin) = registry("{}");
        let ids = r.create_applications(&admin, sla(json!([svc("a", json!({}))]))).unwrap();
        let s = r.get_app(&admin.id, &ids[0]).unwrap().microservices[0].clone();
        let c = r.join_cluster("c", None, None).unwrap();
        r.apply_report(&c, report("c", None, None, vec![])).unwrap();
        r.request_instance(&admin.id, &s).unwrap();
        r.schedule_pending().unwrap();
        let mut waiting = running(&s, "w", Coord::default());
        (waiting.status, waiting.status_detail) = (Status::Requested, "measuring the RTT to users".into());
        r.apply_report(&c, report("c", None, None, vec![waiting])).unwrap();
        r.schedule_pending().unwrap();
        let i = r.get_service(&admin.id, &s).unwrap().instance_list[0].clone();
        assert_eq!((i.status, i.cluster_id.as_ref()), (Status::Requested, Some(&c)));
        assert_eq!(r.desired_for(&c).unwrap().len(), 1);
    }

    /// `direct` by name and `clusters` by id name the same cluster: it qualifies. A service
    /// may not name itself by id; a cluster's summary is bounded before it is stored.
    #[test]
    fn names_and_ids_of_clusters_and_services_mean_the_same() {
        let (r, admin) = registry("{}");
        let c = r.join_cluster("edge", None, None).unwrap();
        let ids = r
            .create_applications(
                &admin,
                sla(json!([svc(
                    "a",
                    json!({"constraints": [
                    {"type": "direct", "cluster": "edge"}, {"type": "clusters", "allowed": [c.to_string()]}]})
                )])),
            )
            .unwrap();
        let s = r.get_app(&admin.id, &ids[0]).unwrap().microservices[0].clone();
        let mut rep = report("edge", None, None, vec![]);
        rep.aggregate.ldp.space = vec![CoordCircle { coord: Coord::new(0.0, 0.0, 1.0, 0.1), radius_ms: f64::MAX }; 40];
        rep.aggregate.addons = (0..1000).map(|i| format!("a{i}")).collect();
        r.apply_report(&c, rep).unwrap();
        let stored = r.clusters().unwrap()[0].aggregate.clone();
        assert!(stored.ldp.space.is_empty(), "an impossible radius is dropped");
        assert!(stored.addons.len() <= 4 * oak_api::node::MAX_ADDONS);
        r.request_instance(&admin.id, &s).unwrap();
        r.schedule_pending().unwrap();
        assert_eq!(r.get_service(&admin.id, &s).unwrap().instance_list[0].cluster_id.as_ref(), Some(&c));
        let spec = r.get_service(&admin.id, &s).unwrap();
        let body = json!({"microservice_name": "a", "microservice_namespace": "n", "virtualization": "container",
            "code": "x", "connectivity": [{"target_microservice_id": spec.id.to_string(), "con_constraints": []}]});
        let e =
            r.update_service(&admin.id, &spec.id, oak_api::sla::parse_microservice(&body, "").unwrap()).unwrap_err();
        assert!(invalid(e)[0].ends_with("is this service itself"));
    }

    #[test]
    fn nothing_is_placed_where_no_cluster_meets_a_hard_requirement() {
        let (r, admin) = registry("{}");
        let ids = r
            .create_applications(
                &admin,
                sla(json!([svc(
                    "geo",
                    json!({"constraints": [{"type": "geo", "location": "40.4,-3.7", "threshold": 50}]})
                )])),
            )
            .unwrap();
        let s = r.get_app(&admin.id, &ids[0]).unwrap().microservices[0].clone();
        let c = r.join_cluster("munich", None, None).unwrap();
        r.apply_report(&c, report("munich", None, Some((48.1, 11.6)), vec![])).unwrap();
        r.request_instance(&admin.id, &s).unwrap();
        r.schedule_pending().unwrap();
        let i = r.get_service(&admin.id, &s).unwrap().instance_list[0].clone();
        assert_eq!(i.status, Status::NoActiveClusterWithCapacity);
        assert!(i.status_detail.contains("40.4,-3.7") && i.status_detail.contains("munich"), "{}", i.status_detail);
    }
}
