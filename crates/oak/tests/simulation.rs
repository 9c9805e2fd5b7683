//! Deterministic simulation: the real root registry and scheduler and the real cluster
//! reconcile, with fake workers, an in-memory store and a virtual clock. Thousands of workers
//! across several clusters; random worker crashes and restarts, instance crashes, and cluster
//! partitions. After every step it checks that nothing is over-committed and that no replica
//! runs twice where the system can see it; after a quiet period, that every desired instance
//! runs or says why not.
//!
//! Root and clusters talk as over the real link: JSON messages, the cluster's full report once
//! per connection and then the link's own deltas ([`Sent`]), the root's full desired set once
//! per connection and then changes of it. A partition drops the connection; the next one
//! starts over, as a real reconnect does.
//!
//! A seed fixes everything, ids included (the registry takes them from a seeded
//! [`IdSource`]): a failure prints its seed, and `OAK_SIM_SEED=<seed>` replays it exactly.
//! CI runs a fixed set of seeds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use oak_api::link::{ClusterToRoot, DesiredInstance, RootToCluster};
use oak_api::node::{DeleteCommand, DeployCommand, InstanceEvent, InstanceUsage, NodeInfo, RegisterRequest};
use oak_api::{ClusterId, ServiceId, Status};
use oak_cluster::core::{Core, Out, Sent, WorkerRec};
use oak_root::clock::Clock;
use oak_root::registry::{IdSource, Registry};
use oak_store::MemStore;
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct SimClock(Mutex<f64>);
impl Clock for SimClock {
    fn now_unix(&self) -> f64 {
        *self.0.lock()
    }
}

/// xorshift64*: deterministic, seedable, no global state.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, per_million: u64) -> bool {
        self.below(1_000_000) < per_million
    }
}

/// The seeds to run: `OAK_SIM_SEED` (one seed, or several separated by commas) replays the
/// given ones instead of the defaults.
fn seeds(defaults: &[u64]) -> Vec<u64> {
    match std::env::var("OAK_SIM_SEED") {
        Ok(v) if !v.trim().is_empty() => v
            .split(',')
            .map(|s| s.trim().parse().unwrap_or_else(|_| panic!("OAK_SIM_SEED: {s:?} is not a number")))
            .collect(),
        _ => defaults.to_vec(),
    }
}

/// Says, when a run fails in any way (an invariant, or a panic deeper down), how to replay it.
struct SeedOnFailure(u64);
impl Drop for SeedOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "simulation failed with seed {0}; replay it with OAK_SIM_SEED={0} cargo nextest run -p oak --test simulation",
                self.0
            );
        }
    }
}

type Key = (ServiceId, u32);

struct FakeWorker {
    id: String,
    alive: bool,
    down_until: f64,
    session: u32,
    held: BTreeMap<Key, Status>,
}

/// One connection of the root link, both ends.
struct Conn {
    /// The cluster's end: what the root holds of its report.
    sent: Sent,
    /// The root's end: the desired set it last sent, and the workers and interests the
    /// cluster last reported (a delta without them means unchanged).
    last_desired: Option<Vec<DesiredInstance>>,
    workers: Vec<String>,
    interests: Vec<std::net::Ipv4Addr>,
}

struct SimCluster {
    name: String,
    id: ClusterId,
    core: Core,
    workers: Vec<FakeWorker>,
    partitioned_until: f64,
    /// `None` while partitioned.
    link: Option<Conn>,
}

const STEP: f64 = 0.5;
const START: f64 = 1_000_000.0;

/// What a run did, in order: every message across the tiers and every disturbance. Equal
/// seeds must give equal traces.
#[derive(Default)]
struct Trace(Vec<String>);
impl Trace {
    fn push(&mut self, step: usize, what: impl Into<String>) {
        self.0.push(format!("{step}: {}", what.into()));
    }
}

fn register(core: &mut Core, w: &FakeWorker, now: f64) {
    let reg = RegisterRequest {
        name: w.id.clone(),
        node_id: Some(w.id.clone()),
        ip: "10.0.0.1".into(),
        arch: "amd64".into(),
        runtimes: vec!["container".into()],
        cpu_cores: 4.0,
        memory_mb: 4096,
        session: w.session.to_string(),
        ..RegisterRequest::default()
    };
    core.add_worker(WorkerRec { last_seen: now, ..WorkerRec::new(w.id.clone(), reg) }, now);
}

fn node_of(topic: &str) -> (&str, &str) {
    let mut p = topic.splitn(3, '/');
    let _ = p.next();
    (p.next().unwrap_or_default(), p.next().unwrap_or_default())
}

/// A message through JSON, as the link carries it.
fn wire<T: serde::Serialize + serde::de::DeserializeOwned>(m: &T) -> T {
    serde_json::from_str(&serde_json::to_string(m).unwrap()).unwrap()
}

/// The root's desired set for a cluster, as the root's link sends it: the whole set first
/// on a connection, then what changed (`oak_api::link::desired_delta`, the root's own).
fn root_push(reg: &Registry, c: &mut SimCluster) -> Option<RootToCluster> {
    let conn = c.link.as_mut()?;
    let desired = reg.desired_for(&c.id).unwrap();
    let msg = match conn.last_desired.as_ref() {
        Some(prev) if *prev == desired => return None,
        Some(prev) => oak_api::link::desired_delta(prev, &desired),
        None => RootToCluster::Desired { instances: desired.clone() },
    };
    conn.last_desired = Some(desired);
    Some(wire(&msg))
}

/// The cluster's end of a root message, as its link and event loop handle it.
fn cluster_takes(c: &mut SimCluster, msg: RootToCluster, now: f64) -> Vec<Out> {
    let Some(conn) = c.link.as_mut() else { return Vec::new() };
    match msg {
        RootToCluster::Desired { instances } => {
            conn.sent.desired(&instances);
            c.core.set_desired(instances, now)
        }
        RootToCluster::DesiredDelta { upsert, remove } => {
            conn.sent.desired_delta(&upsert, &remove);
            c.core.change_desired(upsert, remove, now)
        }
        other => panic!("unexpected root message {other:?}"),
    }
}

/// The root's end of a cluster message, as its link handles it.
fn root_takes(reg: &Registry, c: &mut SimCluster, msg: ClusterToRoot) {
    let Some(conn) = c.link.as_mut() else { return };
    let report = match msg {
        ClusterToRoot::Report(r) => r,
        // Fields the delta leaves out are as the cluster last reported them.
        ClusterToRoot::Delta(d) => d.into_report(&conn.workers, &conn.interests),
        other => panic!("unexpected cluster message {other:?}"),
    };
    conn.workers = report.workers.clone();
    conn.interests = report.interests.clone();
    reg.apply_report(&c.id, report).unwrap();
}

/// A (re)connection: hello, welcome, the full report; the root then sends its whole set.
fn connect(reg: &Registry, c: &mut SimCluster, now: f64, at: Instant) {
    let id = reg.join_cluster(&c.name, None, Some(&c.id)).unwrap();
    assert_eq!(id, c.id, "a cluster that says who it is keeps its id");
    let report = c.core.report(now);
    c.link =
        Some(Conn { sent: Sent::full(&report, at), last_desired: None, workers: Vec::new(), interests: Vec::new() });
    root_takes(reg, c, wire(&ClusterToRoot::Report(report)));
}

/// Delivers the cluster's messages to its fake workers; returns the events they answer with.
fn deliver(c: &mut SimCluster, outs: Vec<Out>, trace: &mut Trace, step: usize) -> Vec<(String, InstanceEvent)> {
    let mut events = Vec::new();
    for o in outs {
        assert!(!o.payload.is_empty(), "an empty payload on {}", o.topic);
        let (node, kind) = node_of(&o.topic);
        let Some(w) = c.workers.iter_mut().find(|w| w.id == node) else { continue };
        if !w.alive {
            continue;
        }
        match kind {
            "control/deploy" => {
                let d: DeployCommand = serde_json::from_slice(&o.payload).unwrap();
                trace.push(step, format!("deploy {}/{} on {}", d.service_id, d.instance_number, w.id));
                let k = (d.service_id.clone(), d.instance_number);
                if !matches!(w.held.get(&k), Some(Status::Running)) {
                    w.held.insert(k, Status::Running);
                }
                events.push((w.id.clone(), ev(&d.service_id, d.instance_number, Status::Running, "running")));
            }
            "control/delete" => {
                let d: DeleteCommand = serde_json::from_slice(&o.payload).unwrap();
                trace.push(step, format!("delete {}/{} on {}", d.service_id, d.instance_number, w.id));
                if w.held.remove(&(d.service_id.clone(), d.instance_number)).is_some() {
                    events.push((w.id.clone(), ev(&d.service_id, d.instance_number, Status::Undeployed, "removed")));
                }
            }
            other => panic!("unexpected topic kind {other}"),
        }
    }
    events
}

fn ev(s: &ServiceId, n: u32, status: Status, detail: &str) -> InstanceEvent {
    InstanceEvent {
        service_id: s.clone(),
        instance_number: n,
        status,
        status_detail: detail.into(),
        exit_code: None,
        ns_ip: None,
    }
}

/// Runs the cluster side until no more messages flow.
fn settle(c: &mut SimCluster, mut outs: Vec<Out>, now: f64, trace: &mut Trace, step: usize) {
    for _ in 0..50 {
        if outs.is_empty() {
            return;
        }
        let events = deliver(c, std::mem::take(&mut outs), trace, step);
        for (node, e) in events {
            outs.extend(c.core.instance_event(&node, e, now));
        }
    }
}

/// `crash_ppm`: chance per worker per step (in millionths) that its host dies. Returns the
/// trace of the run.
fn run(
    seed: u64,
    clusters: usize,
    workers_per_cluster: usize,
    services: usize,
    replicas: u32,
    crash_ppm: u64,
) -> Trace {
    let _guard = SeedOnFailure(seed);
    let fail = |msg: String| -> ! { panic!("simulation seed {seed}: {msg}") };
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut trace = Trace::default();
    let clock = Arc::new(SimClock(Mutex::new(START)));
    // The link's timers run on the virtual clock too.
    let base = Instant::now();
    let at = |t: f64| base + Duration::from_secs_f64(t - START);
    let store = Arc::new(MemStore::new(oak_root::registry::TABLES));
    let reg = Registry::new(store, clock.clone()).with_id_source(IdSource::seeded(seed));
    reg.bootstrap(|| "x".into()).unwrap();
    let admin = reg.user_by_name("Admin").unwrap().unwrap();
    let now = || *clock.0.lock();

    let mut sim: Vec<SimCluster> = (0..clusters)
        .map(|c| {
            let name = format!("c{c}");
            let id = reg.join_cluster(&name, None, None).unwrap();
            let mut core = Core::default();
            let workers: Vec<FakeWorker> = (0..workers_per_cluster)
                .map(|w| FakeWorker {
                    id: format!("c{c}w{w}"),
                    alive: true,
                    down_until: 0.0,
                    session: 0,
                    held: BTreeMap::new(),
                })
                .collect();
            for w in &workers {
                register(&mut core, w, now());
            }
            SimCluster { name, id, core, workers, partitioned_until: 0.0, link: None }
        })
        .collect();

    // Services of various sizes, each with `replicas` instances.
    let mut apps = Vec::new();
    for s in 0..services {
        let mem = 128 * (1 + rng.below(8));
        let doc = serde_json::json!({"sla_version": "v2.0", "customerID": "x", "applications": [{
            "application_name": format!("a{s}"), "application_namespace": "sim", "microservices": [{
                "microservice_name": "s", "microservice_namespace": "sim", "virtualization": "container",
                "code": "img", "memory": mem, "vcpus": 0.5}]}]});
        let ids = reg.create_applications(&admin, oak_api::sla::parse_sla(&doc).unwrap()).unwrap();
        let svc = reg.get_app(&admin.id, &ids[0]).unwrap().microservices[0].clone();
        for _ in 0..replicas {
            reg.request_instance(&admin.id, &svc).unwrap();
        }
        apps.push(svc);
    }

    let (mut partitions, mut host_crashes, mut instance_crashes) = (0, 0, 0);
    let disturbed_steps = 160;
    let quiet_steps = 60;
    for step in 0..(disturbed_steps + quiet_steps) {
        *clock.0.lock() += STEP;
        let t = now();
        let disturb = step < disturbed_steps;

        // Root ↔ clusters (unless partitioned): a connection first, then what changed.
        if reg.schedule_pending().unwrap() {
            trace.push(step, "root scheduled");
        }
        for c in sim.iter_mut() {
            if t < c.partitioned_until {
                continue;
            }
            if c.link.is_none() {
                trace.push(step, format!("{} connects", c.name));
                connect(&reg, c, t, at(t));
            }
            if let Some(msg) = root_push(&reg, c) {
                trace.push(step, format!("to {}: {}", c.name, describe(&msg)));
                let outs = cluster_takes(c, msg, t);
                settle(c, outs, t, &mut trace, step);
            }
        }

        // Disturbances.
        for c in sim.iter_mut() {
            if disturb && rng.chance(4_000) && t >= c.partitioned_until {
                c.partitioned_until = t + 5.0 + rng.below(20) as f64;
                c.link = None;
                partitions += 1;
                trace.push(step, format!("{} partitioned until {}", c.name, c.partitioned_until - START));
            }
            for i in 0..c.workers.len() {
                let w = &mut c.workers[i];
                if !w.alive && t >= w.down_until {
                    w.alive = true;
                    w.session += 1;
                    w.held.clear();
                    trace.push(step, format!("{} back", w.id));
                    let snapshot = FakeWorker {
                        id: w.id.clone(),
                        alive: true,
                        down_until: 0.0,
                        session: w.session,
                        held: BTreeMap::new(),
                    };
                    register(&mut c.core, &snapshot, t);
                } else if disturb && w.alive && rng.chance(crash_ppm) {
                    // The host dies: its instances die with it; the broker fires its last will.
                    w.alive = false;
                    host_crashes += 1;
                    w.down_until = t + 2.0 + rng.below(30) as f64;
                    w.held.clear();
                    trace.push(step, format!("{} crashed", w.id));
                    let session = w.session.to_string();
                    let id = w.id.clone();
                    let outs = c.core.worker_lost(&id, &session, t);
                    settle(c, outs, t, &mut trace, step);
                    continue;
                }
                let w = &mut c.workers[i];
                if disturb && w.alive && !w.held.is_empty() && rng.chance(crash_ppm * 6) {
                    let k = w.held.keys().nth(rng.below(w.held.len() as u64) as usize).unwrap().clone();
                    w.held.insert(k.clone(), Status::Dead);
                    instance_crashes += 1;
                    trace.push(step, format!("{}/{} died on {}", k.0, k.1, w.id));
                    let id = w.id.clone();
                    let outs = c.core.instance_event(&id, ev(&k.0, k.1, Status::Dead, "exited with code 1"), t);
                    settle(c, outs, t, &mut trace, step);
                }
            }
            // Reports every 2 s from live workers.
            if step % 4 == 0 {
                let infos: Vec<(String, NodeInfo)> = c
                    .workers
                    .iter()
                    .filter(|w| w.alive)
                    .map(|w| {
                        let instances = w
                            .held
                            .iter()
                            .map(|(k, s)| InstanceUsage {
                                service_id: k.0.clone(),
                                instance_number: k.1,
                                status: *s,
                                cpu_percent: 0.0,
                                memory_mb: 1.0,
                                ns_ip: None,
                            })
                            .collect();
                        let info = NodeInfo {
                            cpu_percent: 1.0,
                            cpu_cores: 4.0,
                            memory_mb: 4096,
                            memory_available_mb: 4000,
                            disk_free_mb: 1000,
                            arch: "amd64".into(),
                            runtimes: vec!["container".into()],
                            instances,
                            ..NodeInfo::default()
                        };
                        (w.id.clone(), wire(&info))
                    })
                    .collect();
                for (id, info) in infos {
                    let outs = c.core.node_info(&id, info, t);
                    settle(c, outs, t, &mut trace, step);
                }
            }
            let outs = c.core.reconcile(t);
            settle(c, outs, t, &mut trace, step);
            // What changed goes up, as a delta on the current connection.
            if let Some(conn) = c.link.as_mut() {
                let d = conn.sent.delta(&c.core.report(t), at(t));
                trace.push(
                    step,
                    format!(
                        "from {}: {} instances, {} active workers",
                        c.name,
                        d.instances.len(),
                        d.aggregate.active_workers
                    ),
                );
                root_takes(&reg, c, wire(&ClusterToRoot::Delta(d)));
            }
        }

        // Invariants.
        let mut held_by: BTreeMap<Key, Vec<String>> = BTreeMap::new();
        for c in &sim {
            // No worker is over-committed by what the cluster placed on it.
            let mut used: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
            for (k, a) in c.core.assignments() {
                if let (Some(w), true) =
                    (&a.worker, matches!(a.status, Status::NodeScheduled | Status::Creating | Status::Running))
                {
                    let d = c.core.desired.get(k);
                    let (cpu, mem) = d.map(|d| (d.spec.millicpu(), d.spec.memory)).unwrap_or((0, 0));
                    let e = used.entry(w.as_str()).or_default();
                    e.0 += cpu;
                    e.1 += mem;
                }
            }
            for (w, (cpu, mem)) in used {
                if cpu > 4000 || mem > 4096 {
                    fail(format!("step {step}: worker {w} over-committed: {cpu} millicpu, {mem} MiB"));
                }
            }
            // Within a cluster the root can reach, no instance runs on two live workers.
            if t >= c.partitioned_until {
                for w in c.workers.iter().filter(|w| w.alive) {
                    for (k, s) in &w.held {
                        if *s == Status::Running {
                            held_by.entry(k.clone()).or_default().push(w.id.clone());
                        }
                    }
                }
            }
        }
        for (k, ws) in &held_by {
            let same_cluster = ws.iter().map(|w| w.split('w').next().unwrap_or_default()).collect::<BTreeSet<_>>();
            if same_cluster.len() < ws.len() {
                fail(format!("step {step}: instance {}/{} runs on several workers of one cluster: {ws:?}", k.0, k.1));
            }
        }
    }

    // After the quiet period, every desired instance runs, or says why not; and every running
    // copy is the one the root knows.
    let mut running = 0;
    for svc in &apps {
        let s = reg.get_service(&admin.id, svc).unwrap();
        for i in &s.instance_list {
            match i.status {
                Status::Running => running += 1,
                st if st.is_negative_scheduling() && !i.status_detail.is_empty() => {}
                st => fail(format!("instance {}/{} ended {st}: {}", svc, i.instance_number, i.status_detail)),
            }
            trace.push(disturbed_steps + quiet_steps, format!("{svc}/{} ends {}", i.instance_number, i.status));
            let holders: Vec<&str> = sim
                .iter()
                .flat_map(|c| {
                    c.workers
                        .iter()
                        .filter(|w| w.alive && w.held.get(&(svc.clone(), i.instance_number)) == Some(&Status::Running))
                        .map(|w| w.id.as_str())
                })
                .collect();
            if i.status == Status::Running && holders.len() != 1 {
                fail(format!(
                    "instance {svc}/{} runs {} times after the quiet period: {holders:?}",
                    i.instance_number,
                    holders.len()
                ));
            }
        }
    }
    assert!(running > 0, "seed {seed}: nothing runs");
    eprintln!(
        "seed {seed}: {} workers, {} instances ({running} running at the end); {partitions} cluster partitions, {host_crashes} worker crashes, {instance_crashes} instance crashes; {} trace entries",
        clusters * workers_per_cluster,
        services * replicas as usize,
        trace.0.len()
    );
    assert!(host_crashes > 0 && instance_crashes > 0, "seed {seed}: the run was not disturbed");
    trace
}

/// A root message, briefly, for the trace.
fn describe(m: &RootToCluster) -> String {
    let wanted =
        |v: &[DesiredInstance]| v.iter().map(|d| format!("{}/{}", d.service_id, d.instance_number)).collect::<Vec<_>>();
    match m {
        RootToCluster::Desired { instances } => format!("desired {:?}", wanted(instances)),
        RootToCluster::DesiredDelta { upsert, remove } => {
            let gone: Vec<String> = remove.iter().map(|r| format!("{}/{}", r.service_id, r.instance_number)).collect();
            format!("desired +{:?} -{gone:?}", wanted(upsert))
        }
        other => format!("{other:?}"),
    }
}

#[test]
fn simulation_fixed_seeds() {
    for seed in seeds(&[1, 42]) {
        run(seed, 3, 700, 120, 4, 300);
    }
}

#[test]
fn simulation_tight_capacity() {
    // Few workers, many replicas: placement failures must say why, never over-commit.
    for seed in seeds(&[3, 11]) {
        run(seed, 2, 6, 40, 3, 20_000);
    }
}

/// A seed replays exactly: the same seed twice gives the same trace (every message between
/// the tiers, every disturbance, every final state), another seed another one.
#[test]
fn a_seed_replays_exactly() {
    for seed in seeds(&[5]) {
        let small = |seed| run(seed, 2, 20, 30, 3, 6_000).0;
        let (a, b) = (small(seed), small(seed));
        if let Some(i) = (0..a.len().max(b.len())).find(|i| a.get(*i) != b.get(*i)) {
            panic!("seed {seed} diverged at trace entry {i}: {:?} vs {:?}", a.get(i), b.get(i));
        }
        assert!(a.iter().any(|l| l.contains(" deploy ")), "the trace shows placements");
        assert_ne!(a, small(seed.wrapping_add(1)), "another seed, another run");
    }
}
