use super::*;
use oak_api::sla::parse_microservice;
use serde_json::json;

fn worker(core: &mut Core, id: &str, mem: u64, now: f64) {
    let reg = RegisterRequest {
        name: format!("name-{id}"),
        ip: "10.0.0.1".into(),
        arch: "amd64".into(),
        runtimes: vec!["container".into()],
        cpu_cores: 4.0,
        memory_mb: mem,
        session: format!("s-{id}"),
        ..RegisterRequest::default()
    };
    core.workers.insert(id.into(), WorkerRec { last_seen: now, ..WorkerRec::new(id.into(), reg) });
}

fn desired(n: u32, extra: serde_json::Value) -> DesiredInstance {
    let mut spec = json!({"microservice_name": "s", "microservice_namespace": "n", "virtualization": "container",
                          "code": "img", "memory": 600, "vcpus": 1});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    DesiredInstance {
        service_id: ServiceId::from("svc"),
        instance_number: n,
        job_name: "a.b.s.n".into(),
        spec: parse_microservice(&spec, "").unwrap_or_else(|e| panic!("{e}")),
        instance_ip: None,
        ldp: None,
    }
}

/// A worker's report with no instances.
fn info() -> NodeInfo {
    NodeInfo {
        cpu_percent: 1.0,
        cpu_cores: 4.0,
        memory_mb: 4000,
        memory_available_mb: 3000,
        disk_free_mb: 1,
        arch: "amd64".into(),
        runtimes: vec!["container".into()],
        ..NodeInfo::default()
    }
}

/// A report entry for instance `n` of `service`, running.
fn usage(service: &str, n: u32, cpu_percent: f64, memory_mb: f64) -> node::InstanceUsage {
    node::InstanceUsage {
        service_id: ServiceId::from(service),
        instance_number: n,
        status: Status::Running,
        cpu_percent,
        memory_mb,
        ns_ip: None,
    }
}

fn topics(outs: &[Out]) -> Vec<String> {
    outs.iter().map(|o| o.topic.clone()).collect()
}

fn ev(n: u32, status: Status) -> InstanceEvent {
    InstanceEvent {
        service_id: ServiceId::from("svc"),
        instance_number: n,
        status,
        status_detail: "x".into(),
        exit_code: None,
        ns_ip: None,
    }
}

#[test]
fn requests_for_sixty_percent_never_share_a_worker() {
    let mut c = Core::default();
    for w in ["a", "b", "c"] {
        worker(&mut c, w, 1000, 0.0);
    }
    let outs = c.set_desired((0..3).map(|n| desired(n, json!({}))).collect(), 0.0);
    let mut t = topics(&outs);
    t.sort();
    assert_eq!(t, ["nodes/a/control/deploy", "nodes/b/control/deploy", "nodes/c/control/deploy"]);
    // A fourth does not fit anywhere and says why.
    let outs = c.set_desired((0..4).map(|n| desired(n, json!({}))).collect(), 1.0);
    assert!(outs.is_empty());
    let a = &c.assignments[&(ServiceId::from("svc"), 3)];
    assert_eq!(a.status, Status::NoWorkerCapacity);
    assert_eq!(a.detail, "no worker can take it: none of 3 candidates fits: 3 have less than 600 MiB memory free");
}

#[test]
fn no_worker_and_direct_constraints() {
    let mut c = Core::default();
    c.set_desired(vec![desired(0, json!({}))], 0.0);
    assert_eq!(
        c.assignments[&(ServiceId::from("svc"), 0)].detail,
        "no worker can take it: no active worker in this cluster"
    );
    for w in ["a", "b", "c"] {
        worker(&mut c, w, 4000, 0.5);
    }
    let outs =
        c.set_desired(vec![desired(0, json!({"constraints": [{"type": "direct", "node": "name-x;name-c"}]}))], 3.0);
    assert_eq!(topics(&outs), ["nodes/c/control/deploy"]);
}

#[test]
fn dead_instances_come_back_after_a_backoff_and_completed_ones_do_not() {
    let mut c = Core::default();
    worker(&mut c, "a", 4000, 0.0);
    c.set_desired(vec![desired(0, json!({})), desired(1, json!({"one_shot": true}))], 0.0);
    c.instance_event("a", ev(0, Status::Running), 0.5);
    c.instance_event("a", ev(1, Status::Completed), 0.5);
    let outs = c.instance_event("a", ev(0, Status::Dead), 1.0);
    assert!(outs.is_empty(), "backoff: not at once");
    let outs = c.reconcile(2.0);
    assert_eq!(topics(&outs), ["nodes/a/control/delete", "nodes/a/control/deploy"]);
    assert_eq!(c.assignments[&(ServiceId::from("svc"), 0)].attempts, 1);
    assert_eq!(c.assignments[&(ServiceId::from("svc"), 1)].status, Status::Completed);
    // Crashing again waits longer (2 s), then 4 s.
    c.instance_event("a", ev(0, Status::Dead), 3.0);
    assert!(c.reconcile(4.5).is_empty());
    assert_eq!(topics(&c.reconcile(5.0)), ["nodes/a/control/delete", "nodes/a/control/deploy"]);
}

#[test]
fn silent_workers_lose_their_instances_and_removed_ones_are_deleted() {
    let mut c = Core::default();
    worker(&mut c, "a", 4000, 0.0);
    worker(&mut c, "b", 1000, 0.0);
    c.set_desired(vec![desired(0, json!({}))], 0.0);
    assert_eq!(c.assignments[&(ServiceId::from("svc"), 0)].worker.as_deref(), Some("b"), "best fit");
    c.instance_event("b", ev(0, Status::Running), 0.5);
    if let Some(w) = c.workers.get_mut("a") {
        w.last_seen = 10.0;
    }
    // Silent past the timeout: placed elsewhere at once, and the old worker told to drop it.
    let outs = c.reconcile(10.0);
    assert_eq!(topics(&outs), ["nodes/b/control/delete", "nodes/a/control/deploy"]);
    assert_eq!(c.assignments[&(ServiceId::from("svc"), 0)].worker.as_deref(), Some("a"));
    // A stale last will (older session) is ignored; the current one marks the worker lost.
    c.instance_event("a", ev(0, Status::Running), 10.5);
    assert!(c.worker_lost("a", "s-old", 11.0).is_empty());
    assert_eq!(c.assignments[&(ServiceId::from("svc"), 0)].status, Status::Running);
    if let Some(w) = c.workers.get_mut("b") {
        w.last_seen = 11.0;
    }
    let outs = c.worker_lost("a", "s-a", 11.0);
    assert_eq!(topics(&outs), ["nodes/a/control/delete", "nodes/b/control/deploy"]);
    // The root no longer wants it: the worker is told to delete it.
    c.take_dirty();
    let outs = c.set_desired(vec![], 12.0);
    assert_eq!(topics(&outs), ["nodes/b/control/delete"]);
    assert!(c.assignments.is_empty());
    // The removal is among what the cluster must write to its store, and only it.
    assert_eq!(c.take_dirty().into_iter().collect::<Vec<_>>(), [(ServiceId::from("svc"), 0)]);
    assert!(c.reconcile(13.0).is_empty() && c.take_dirty().is_empty(), "a quiet tick writes nothing");
}

#[test]
fn workers_are_told_to_drop_what_is_not_theirs() {
    let mut c = Core::default();
    worker(&mut c, "a", 4000, 0.0);
    c.set_desired(vec![], 0.0);
    let info = NodeInfo { instances: vec![usage("old", 7, 0.0, 1.0)], ..info() };
    let outs = c.node_info("a", info, 1.0);
    assert_eq!(topics(&outs), ["nodes/a/control/delete"]);
}

#[test]
fn the_report_shows_free_slots_and_instances() {
    let mut c = Core::default();
    worker(&mut c, "a", 4000, 0.0);
    worker(&mut c, "b", 1000, 0.0);
    c.set_desired(vec![desired(0, json!({}))], 0.0);
    let r = c.report(0.0);
    assert_eq!((r.aggregate.workers, r.aggregate.active_workers, r.aggregate.memory_mb), (2, 2, 5000));
    assert_eq!(r.aggregate.slots.iter().map(|s| s.memory_mb).collect::<Vec<_>>(), [4000, 400]);
    assert_eq!(r.instances.len(), 1);
    assert_eq!(r.instances[0].status, Status::NodeScheduled);
    assert_eq!(r.instances[0].worker_name.as_deref(), Some("name-b"));
}

#[test]
fn subnets_and_tables_reach_the_workers_that_need_them() {
    let mut c = Core::default();
    worker(&mut c, "a", 4000, 0.0);
    worker(&mut c, "b", 4000, 0.0);
    let info =
        |subnet: Option<Ipv4Addr>, interests: Vec<Ipv4Addr>| NodeInfo { overlay: true, subnet, interests, ..info() };
    c.node_info("a", info(None, vec![]), 0.5);
    c.node_info("b", info(None, vec![]), 0.5);
    c.set_desired(vec![desired(0, json!({"memory": 10}))], 0.5);
    // Without a subnet, an overlay worker takes nothing.
    assert_eq!(c.assignments.get(&(ServiceId::from("svc"), 0)).map(|a| a.status), Some(Status::NoWorkerCapacity));
    let subnets = BTreeMap::from([("a".to_owned(), Ipv4Addr::new(10, 18, 0, 0))]);
    let outs = c.set_subnets(&subnets);
    assert_eq!(topics(&outs), ["nodes/a/control/network"]);
    // Sent again while the worker does not report it, not once it does.
    assert_eq!(topics(&c.node_info("a", info(None, vec![]), 1.0)), ["nodes/a/control/network"]);
    let rr = Ipv4Addr::new(10, 30, 30, 30);
    // (after the 2 s retry delay of an unplaceable instance)
    let outs = c.node_info("a", info(Some(Ipv4Addr::new(10, 18, 0, 0)), vec![rr]), 3.0);
    assert!(!topics(&outs).contains(&"nodes/a/control/network".to_owned()));
    assert!(topics(&outs).contains(&"nodes/a/control/deploy".to_owned()), "now it can take the instance");
    // Tables go to the worker that asked for them, once per change.
    let table = oak_api::net::ServiceTable {
        service_id: ServiceId::from("svc"),
        job_name: "a.b.s.n".into(),
        rr_ip: Some(rr),
        closest_ip: None,
        instances: vec![],
    };
    assert_eq!(topics(&c.set_tables(vec![table.clone()])), ["nodes/a/control/tables"]);
    assert!(c.set_tables(vec![table.clone()]).is_empty());
    // The worker reports it still holds no tables (the message was lost): they go again,
    // until it reports holding them.
    let a = Ipv4Addr::new(10, 18, 0, 0);
    let lost = NodeInfo { tables_digest: Some(oak_api::net::digest(&[])), ..info(Some(a), vec![rr]) };
    assert!(topics(&c.node_info("a", lost, 3.5)).contains(&"nodes/a/control/tables".to_owned()));
    let held = NodeInfo { tables_digest: Some(oak_api::net::digest(&[table])), ..info(Some(a), vec![rr]) };
    assert!(!topics(&c.node_info("a", held, 4.0)).contains(&"nodes/a/control/tables".to_owned()));
    assert_eq!(c.report(3.0).interests, vec![rr]);
    assert_eq!(c.report(3.0).workers, vec!["a".to_owned(), "b".to_owned()]);
}

/// The report goes up at once when something the root sees changed, and only then (usage
/// waits for the periodic report); a steady worker report changes nothing.
#[test]
fn the_report_is_due_on_changes_only() {
    let mut c = Core::default();
    worker(&mut c, "a", 4000, 0.0);
    c.node_info("a", info(), 0.1);
    c.set_desired(vec![desired(0, json!({}))], 0.2);
    assert!(c.take_report_due(), "placed");
    assert!(!c.take_report_due(), "taken");
    assert!(c.instance_event("a", ev(0, Status::Running), 0.3).is_empty());
    assert!(c.take_report_due(), "status change");
    let running = NodeInfo { instances: vec![usage("svc", 0, 3.0, 12.0)], ..info() };
    for t in [2.0, 4.0, 6.0] {
        assert!(c.node_info("a", running.clone(), t).is_empty());
        assert!(!c.take_report_due(), "a steady report at {t}");
    }
    // Interests are the root's business at once (it answers with tables).
    let wants = NodeInfo { interests: vec![Ipv4Addr::new(10, 30, 0, 1)], ..running.clone() };
    c.node_info("a", wants, 7.0);
    assert!(c.take_report_due());
    // A worker back from silence: its capacity counts again, and what waited is placed.
    worker(&mut c, "b", 4000, 0.0);
    c.set_desired(
        vec![desired(0, json!({})), desired(1, json!({"constraints": [{"type": "direct", "node": "name-b"}]}))],
        8.0,
    );
    assert_eq!(c.assignments()[&(ServiceId::from("svc"), 1)].status, Status::NoWorkerCapacity);
    c.take_report_due();
    let outs = c.node_info("b", info(), 10.5);
    assert_eq!(topics(&outs), ["nodes/b/control/deploy"]);
    assert!(c.take_report_due());
}

/// A change of the desired set acts like the whole new set.
#[test]
fn desired_changes_add_and_remove() {
    let mut c = Core::default();
    worker(&mut c, "a", 4000, 0.0);
    c.set_desired(vec![desired(0, json!({}))], 0.0);
    let outs = c.change_desired(vec![desired(1, json!({}))], vec![], 0.5);
    assert_eq!(topics(&outs), ["nodes/a/control/deploy"]);
    let gone = node::InstanceRef { service_id: ServiceId::from("svc"), instance_number: 0 };
    let outs = c.change_desired(vec![], vec![gone], 1.0);
    assert_eq!(topics(&outs), ["nodes/a/control/delete"]);
    assert_eq!(c.assignments().keys().map(|k| k.1).collect::<Vec<_>>(), [1]);
}

/// Workers silent past `forget_after` that hold nothing are forgotten; the report no longer
/// lists them (so the root frees their subnets). One still holding an assignment stays.
#[test]
fn silent_workers_are_forgotten() {
    let mut c = Core::default();
    c.timing.forget_after = 100.0;
    // (A heartbeat timeout this long keeps b's instance on b while b is silent.)
    c.timing.heartbeat_timeout = 1000.0;
    for id in ["a", "b"] {
        worker(&mut c, id, 4000, 0.0);
        let rec = c.workers[id].clone();
        c.add_worker(rec, 0.0);
    }
    // (Reported once: only such workers are listed to the root.)
    c.node_info("b", info(), 0.0);
    c.set_desired(vec![desired(0, json!({"constraints": [{"type": "direct", "node": "name-b"}]}))], 0.0);
    c.node_info("a", info(), 50.0);
    assert!(c.forget_silent(120.0).is_empty(), "a was heard at 50; b holds an instance");
    c.take_report_due();
    assert_eq!(c.forget_silent(151.0), ["a"]);
    assert!(c.take_report_due());
    assert_eq!(c.report(151.0).workers, ["b"]);
    // Once b's instance is gone, b goes too.
    c.set_desired(vec![], 152.0);
    assert_eq!(c.forget_silent(152.0), ["b"]);
    assert!(c.workers.is_empty());
}

/// A registration that never reports holds a subnet at the root for nothing: it is forgotten
/// after ten minutes, not a day (a holder of the worker token could register until the root's
/// subnets run out).
#[test]
fn registrations_that_never_report_are_forgotten_soon() {
    let mut c = Core::default();
    c.timing.forget_after = 86_400.0;
    c.add_worker(WorkerRec::new("ghost".into(), Default::default()), 0.0);
    worker(&mut c, "real", 4000, 0.0);
    assert!(c.forget_silent(599.0).is_empty());
    assert_eq!(c.forget_silent(601.0), ["ghost"]);
    assert!(c.workers.contains_key("real"), "a worker that reported keeps its day");
}

/// serde_json refuses a map whose keys are not strings: such a message is an error (logged,
/// not published), never an empty payload.
#[test]
fn a_message_that_cannot_be_encoded_is_not_published() {
    let bad: BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
    let Err(e) = out("nodes/w/control/deploy".into(), &bad) else { panic!("a map with tuple keys was encoded") };
    assert_eq!(e.topic, "nodes/w/control/deploy");
    assert!(logged(Err(e)).is_none());
    let ok = out("t".into(), &DeleteCommand { service_id: ServiceId::from("s"), instance_number: 1 });
    assert!(logged(ok).is_some_and(|o| !o.payload.is_empty()));
}

/// An assignment that cannot be encoded gets no store record (never empty bytes); the others
/// are written, and one that went is deleted.
#[test]
fn assignments_that_cannot_be_encoded_are_not_stored() {
    let k = |n: u32| (ServiceId::from("svc"), n);
    // A map with tuple keys encodes only when it is empty.
    let (good, bad): (BTreeMap<(u8, u8), u8>, _) = (BTreeMap::new(), [((1, 2), 3)].into());
    let assignments: BTreeMap<Key, BTreeMap<(u8, u8), u8>> = [(k(0), good), (k(1), bad)].into();
    let (records, errors) = encode_assignments(&assignments, [k(0), k(1), k(2)]);
    assert_eq!(records, [("svc/0".to_owned(), Some(b"{}".to_vec())), ("svc/2".to_owned(), None)]);
    assert_eq!(errors.iter().map(|(key, _)| key.as_str()).collect::<Vec<_>>(), ["svc/1"]);
}

/// A registration alone is not listed to the root (which gives every listed worker a subnet
/// from one pool): a worker is listed from its first report on, and stays listed across a
/// registration again and a restart of the cluster (the flag is stored).
#[test]
fn only_workers_that_reported_are_listed_to_the_root() {
    let mut c = Core::default();
    worker(&mut c, "a", 4000, 0.0);
    c.add_worker(WorkerRec::new("ghost".into(), Default::default()), 0.0);
    assert!(c.report(0.0).workers.is_empty(), "registered, never reported");
    c.take_report_due();
    c.node_info("a", info(), 0.5);
    assert!(c.take_report_due(), "its first report goes up at once");
    assert_eq!(c.report(0.5).workers, ["a"]);
    // Stored and read back (a restart of the cluster): still listed before it reports again.
    let stored = serde_json::to_vec(&c.workers["a"]).unwrap_or_default();
    let back: WorkerRec = serde_json::from_slice(&stored).unwrap_or_else(|e| panic!("{e}"));
    assert!(back.reported && back.info.is_none());
    let mut restarted = Core::default();
    restarted.add_worker(back, 1.0);
    assert_eq!(restarted.report(1.0).workers, ["a"]);
    // A record stored before the flag existed keeps its subnet.
    let mut legacy = serde_json::to_value(&c.workers["a"]).unwrap_or_default();
    legacy.as_object_mut().map(|o| o.remove("reported"));
    let legacy: WorkerRec = serde_json::from_value(legacy).unwrap_or_else(|e| panic!("{e}"));
    assert!(legacy.reported);
}
