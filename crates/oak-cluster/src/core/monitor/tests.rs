//! LDP in the cluster's core: placement by measured coordinates, users located by the
//! workers, SLA monitoring, and migration (make before break).

use super::super::*;
use oak_api::ldp::{Coord, LdpContext, MeasureReply, Measured, PeerRtt, TargetPoint};
use oak_api::sla::parse_microservice;
use serde_json::json;

const T0: f64 = 1000.0;

/// Workers w0..wn at the given coordinates, reporting (so active, with probe addresses).
fn core_with(coords: &[Coord], now: f64) -> Core {
    let mut c = Core::default();
    for (i, coord) in coords.iter().enumerate() {
        let id = format!("w{i}");
        let reg = RegisterRequest {
            name: format!("name-w{i}"),
            ip: format!("10.0.0.{}", i + 1),
            arch: "amd64".into(),
            runtimes: vec!["container".into()],
            cpu_cores: 4.0,
            memory_mb: 4000,
            session: format!("s-{id}"),
            ..RegisterRequest::default()
        };
        c.workers.insert(id.clone(), WorkerRec::new(id.clone(), reg));
        report(&mut c, &id, *coord, vec![], now);
    }
    c
}

fn report(c: &mut Core, id: &str, coord: Coord, rtts: Vec<PeerRtt>, now: f64) -> Vec<Out> {
    let held = c
        .by_worker
        .get(id)
        .into_iter()
        .flatten()
        .chain(c.monitor.moving.iter().filter(|(_, m)| m.to == id).map(|(k, _)| k))
        .map(|k| node::InstanceUsage {
            service_id: k.0.clone(),
            instance_number: k.1,
            status: Status::Running,
            cpu_percent: 0.0,
            memory_mb: 0.0,
            ns_ip: None,
        })
        .collect();
    let n: usize = id[1..].parse().unwrap_or(0);
    let info = NodeInfo {
        cpu_cores: 4.0,
        memory_mb: 4000,
        memory_available_mb: 4000,
        arch: "amd64".into(),
        runtimes: vec!["container".into()],
        probe: Some(format!("10.0.0.{}:50104", n + 1).parse().unwrap_or_else(|e| panic!("{e}"))),
        coord: Some(coord),
        rtts,
        instances: held,
        ..NodeInfo::default()
    };
    c.node_info(id, info, now)
}

fn desired(svc: &str, extra: serde_json::Value, ctx: Option<LdpContext>) -> DesiredInstance {
    let mut spec = json!({"microservice_name": svc, "microservice_namespace": "n", "virtualization": "container",
                          "code": "img", "memory": 100, "vcpus": 0.1});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    DesiredInstance {
        service_id: ServiceId::from(svc),
        instance_number: 0,
        job_name: format!("a.b.{svc}.n"),
        spec: parse_microservice(&spec, "").unwrap_or_else(|e| panic!("{e}")),
        instance_ip: None,
        ldp: ctx,
    }
}

fn deploys(outs: &[Out]) -> Vec<String> {
    outs.iter().filter(|o| o.topic.ends_with("/control/deploy")).map(|o| o.topic.clone()).collect()
}

fn target(worker: &str, coord: Coord) -> LdpContext {
    let mut ctx = LdpContext::default();
    ctx.targets.insert(
        "db".into(),
        vec![TargetPoint { worker: worker.into(), coord: Some(coord), location: None, probe: None }],
    );
    ctx
}

fn s2s(ms: f64) -> serde_json::Value {
    json!({"connectivity": [{"target_microservice_id": "db", "con_constraints": [
        {"type": "latency", "threshold": ms, "rigidness": 1, "convergence_time": 4}]}]})
}

fn key(svc: &str) -> Key {
    (ServiceId::from(svc), 0)
}

#[test]
fn s2s_places_next_to_the_target_and_says_why_when_it_cannot() {
    let coords = [Coord::new(0.0, 0.0, 1.0, 0.1), Coord::new(30.0, 0.0, 1.0, 0.1), Coord::new(60.0, 0.0, 1.0, 0.1)];
    let mut c = core_with(&coords, T0);
    // db runs on a worker of another cluster at (28, 0): w1 is 4 ms from it.
    let ctx = target("x9", Coord::new(28.0, 0.0, 1.0, 0.1));
    let outs = c.set_desired(vec![desired("web", s2s(10.0), Some(ctx.clone()))], T0);
    assert_eq!(deploys(&outs), ["nodes/w1/control/deploy"]);
    let a = &c.assignments[&key("web")];
    assert!(a.detail.contains("placed on worker name-w1 (predicted 4.0 ms to service db)"), "{}", a.detail);
    // Nobody within 1 ms: refused, naming the constraint and the best value.
    let mut c = core_with(&coords, T0);
    c.set_desired(vec![desired("web", s2s(1.0), Some(ctx))], T0);
    let a = &c.assignments[&key("web")];
    assert_eq!(a.status, Status::NoWorkerCapacity);
    assert!(
        a.detail.contains("within 1 ms of service db") && a.detail.contains("best is name-w1 at 4.0 ms"),
        "{}",
        a.detail
    );
    // Without a running target, it waits (REQUESTED, not a refusal the root would act on).
    let mut c = core_with(&coords, T0);
    c.set_desired(vec![desired("web", s2s(10.0), None)], T0);
    let a = &c.assignments[&key("web")];
    assert_eq!(a.status, Status::Requested);
    assert!(a.detail.starts_with("waiting: service db has no running instance"), "{}", a.detail);
}

#[test]
fn users_are_measured_then_the_nearest_worker_is_chosen() {
    let coords = [
        Coord::new(0.0, 0.0, 1.0, 0.1),
        Coord::new(40.0, 0.0, 1.0, 0.1),
        Coord::new(0.0, 40.0, 1.0, 0.1),
        Coord::new(40.0, 40.0, 1.0, 0.1),
    ];
    let mut c = core_with(&coords, T0);
    let user: std::net::IpAddr = "192.0.2.50".parse().unwrap_or_else(|e| panic!("{e}"));
    let spec = json!({"constraints": [{"type": "latency", "users": [user.to_string()], "threshold": 10}]});
    let outs = c.set_desired(vec![desired("cam", spec, None)], T0);
    let asked: Vec<&Out> = outs.iter().filter(|o| o.topic.ends_with("/control/measure")).collect();
    assert_eq!(asked.len(), 4, "{:?}", topics(&outs));
    assert!(deploys(&outs).is_empty());
    let a = &c.assignments[&key("cam")];
    assert_eq!(a.status, Status::Requested);
    assert!(a.detail.contains("measuring the RTT to users 192.0.2.50"), "{}", a.detail);
    // The user sits near w3.
    let truth = Coord::new(38.0, 36.0, 2.0, 0.0);
    for (i, wc) in coords.iter().enumerate() {
        let w = format!("w{i}");
        let o = outs.iter().find(|o| o.topic == format!("nodes/{w}/control/measure")).unwrap_or_else(|| panic!("{w}"));
        let req: oak_api::ldp::MeasureRequest = serde_json::from_slice(&o.payload).unwrap_or_else(|e| panic!("{e}"));
        let r = MeasureReply {
            request_id: req.request_id,
            results: vec![Measured { addr: user, ms: Some(wc.rtt(&truth)), how: "icmp".into() }],
        };
        c.measured(&w, r, T0 + 0.5);
    }
    let outs = c.reconcile(T0 + 2.0);
    assert_eq!(deploys(&outs), ["nodes/w3/control/deploy"]);
}

fn topics(outs: &[Out]) -> Vec<String> {
    outs.iter().map(|o| o.topic.clone()).collect()
}

fn run(c: &mut Core, svc: &str, worker: &str, now: f64) -> Vec<Out> {
    c.instance_event(
        worker,
        InstanceEvent {
            service_id: ServiceId::from(svc),
            instance_number: 0,
            status: Status::Running,
            status_detail: "running".into(),
            exit_code: None,
            ns_ip: Some("10.18.0.2".parse().unwrap_or_else(|e| panic!("{e}"))),
        },
        now,
    )
}

/// A violation measured after placement is reported once it lasted `convergence_time`; with
/// `migrate`, a copy starts where the requirement holds, and the old one goes only once the
/// new one runs (and a little later).
#[test]
fn a_lasting_violation_migrates_make_before_break() {
    // db runs on x9 (another cluster) at the origin; w0 is 5 ms from it, w2 8 ms, w1 32 ms.
    let coords = [Coord::new(3.0, 0.0, 1.0, 0.1), Coord::new(30.0, 0.0, 1.0, 0.1), Coord::new(6.0, 0.0, 1.0, 0.1)];
    let mut c = core_with(&coords, T0);
    let mut ctx = target("x9", Coord::new(0.0, 0.0, 1.0, 0.1));
    if let Some(p) = ctx.targets.get_mut("db") {
        p[0].probe = Some("10.9.9.9:50104".parse().unwrap_or_else(|e| panic!("{e}")));
    }
    let mut spec = s2s(10.0);
    spec["sla_violation_strategy"] = json!("migrate");
    let outs = c.set_desired(vec![desired("web", spec, Some(ctx))], T0);
    assert_eq!(deploys(&outs), ["nodes/w0/control/deploy"]);
    run(&mut c, "web", "w0", T0 + 1.0);
    // web's worker is told to probe db's worker, so that the SLA is judged by a real RTT.
    let outs = c.ldp_tick(T0 + 1.0);
    let p: Vec<&Out> = outs.iter().filter(|o| o.topic == "nodes/w0/control/peers").collect();
    assert_eq!(p.len(), 1);
    assert!(String::from_utf8_lossy(&p[0].payload).contains("\"id\":\"x9\""));
    // The link to db degrades: w0 measures 25 ms (its coordinate still says 5).
    let mut t = T0 + 2.0;
    let mut moved = None;
    while t < T0 + 12.0 {
        report(&mut c, "w0", coords[0], vec![PeerRtt { peer: "x9".into(), ms: 25.0 }], t);
        report(&mut c, "w1", coords[1], vec![], t);
        report(&mut c, "w2", coords[2], vec![], t);
        let outs = c.ldp_tick(t);
        let d = deploys(&outs);
        if !d.is_empty() {
            moved = Some((t, d));
            break;
        }
        // Before the convergence time nothing moves, and nothing is deleted.
        assert!(outs.iter().all(|o| !o.topic.ends_with("/control/delete")));
        t += 1.0;
    }
    let (when, d) = moved.unwrap_or_else(|| panic!("no migration; detail: {}", c.assignments[&key("web")].detail));
    assert!(when - (T0 + 2.0) >= 4.0, "not before the convergence time: {when}");
    assert_eq!(d, ["nodes/w2/control/deploy"], "the only other worker within 10 ms of db");
    let a = &c.assignments[&key("web")];
    assert_eq!((a.worker.as_deref(), a.status), (Some("w0"), Status::Running), "the old copy keeps serving");
    assert!(a.detail.contains("SLA violated") && a.detail.contains("measured 25.0 ms"), "{}", a.detail);
    // The new copy's worker reports it: not deleted as a stranger.
    let outs = report(&mut c, "w2", coords[2], vec![], when + 0.5);
    assert!(outs.iter().all(|o| o.topic != "nodes/w2/control/delete"), "{:?}", topics(&outs));
    // It runs: it becomes the instance; the old copy is removed a little later.
    assert!(run(&mut c, "web", "w2", when + 1.0).is_empty());
    let a = &c.assignments[&key("web")];
    assert_eq!(a.worker.as_deref(), Some("w2"));
    assert!(a.detail.starts_with("migrated from worker name-w0 to worker name-w2"), "{}", a.detail);
    let outs = report(&mut c, "w0", coords[0], vec![], when + 1.5);
    assert!(outs.iter().all(|o| !o.topic.ends_with("/control/delete")), "not yet: {:?}", topics(&outs));
    let outs = c.ldp_tick(when + 1.0 + super::RETIRE_AFTER_S);
    assert!(topics(&outs).contains(&"nodes/w0/control/delete".to_owned()), "{:?}", topics(&outs));
}

/// Without `migrate`, a violation is only reported; when it ends, the detail says so.
#[test]
fn a_violation_is_reported_and_its_end_too() {
    let coords = [Coord::new(3.0, 0.0, 1.0, 0.1), Coord::new(6.0, 0.0, 1.0, 0.1)];
    let mut c = core_with(&coords, T0);
    c.set_desired(vec![desired("web", s2s(10.0), Some(target("x9", Coord::new(0.0, 0.0, 1.0, 0.1))))], T0);
    run(&mut c, "web", "w0", T0 + 1.0);
    for i in 0..8 {
        let t = T0 + 2.0 + f64::from(i);
        report(&mut c, "w0", coords[0], vec![PeerRtt { peer: "x9".into(), ms: 40.0 }], t);
        report(&mut c, "w1", coords[1], vec![], t);
        assert!(deploys(&c.ldp_tick(t)).is_empty(), "report only: nothing moves");
    }
    let a = &c.assignments[&key("web")];
    assert_eq!(a.worker.as_deref(), Some("w0"));
    assert!(a.detail.starts_with("SLA violated on worker name-w0"), "{}", a.detail);
    report(&mut c, "w0", coords[0], vec![PeerRtt { peer: "x9".into(), ms: 4.0 }], T0 + 11.0);
    c.ldp_tick(T0 + 11.0);
    assert_eq!(c.assignments[&key("web")].detail, "running on worker name-w0; its SLA holds again");
}

#[test]
fn the_summary_and_landmarks_go_up_with_the_report() {
    let coords = [Coord::new(0.0, 0.0, 1.0, 0.1), Coord::new(10.0, 0.0, 2.0, 0.1)];
    let mut c = core_with(&coords, T0);
    c.ldp_tick(T0);
    let r = c.report(T0);
    assert!(!r.aggregate.ldp.space.is_empty());
    for w in &coords {
        let b = oak_ldp::summary::best_rtt(&r.aggregate.ldp.space, w).unwrap_or(f64::INFINITY);
        assert!(b <= w.h * 2.0 + 1e-6, "every worker is covered: {b}");
    }
    assert_eq!(r.aggregate.landmarks.len(), 2);
}
