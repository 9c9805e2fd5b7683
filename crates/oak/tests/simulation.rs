//! Deterministic simulation: the real root registry and scheduler and the real cluster
//! reconcile, with fake workers, an in-memory store and a virtual clock. Thousands of workers
//! across several clusters; random worker crashes and restarts, instance crashes, and cluster
//! partitions. After every step it checks that nothing is over-committed and that no replica
//! runs twice where the system can see it; after a quiet period, that every desired instance
//! runs or says why not. A failure prints its seed; CI runs a fixed set of seeds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use oak_api::link::DesiredInstance;
use oak_api::node::{DeleteCommand, DeployCommand, InstanceEvent, InstanceUsage, NodeInfo, RegisterRequest};
use oak_api::{ClusterId, ServiceId, Status};
use oak_cluster::core::{Core, Out, WorkerRec};
use oak_root::clock::Clock;
use oak_root::registry::Registry;
use oak_store::MemStore;
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

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

type Key = (ServiceId, u32);

struct FakeWorker {
    id: String,
    alive: bool,
    down_until: f64,
    session: u32,
    held: BTreeMap<Key, Status>,
}

struct SimCluster {
    id: ClusterId,
    core: Core,
    workers: Vec<FakeWorker>,
    partitioned_until: f64,
}

const STEP: f64 = 0.5;

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

/// Delivers the cluster's messages to its fake workers; returns the events they answer with.
fn deliver(c: &mut SimCluster, outs: Vec<Out>) -> Vec<(String, InstanceEvent)> {
    let mut events = Vec::new();
    for o in outs {
        let (node, kind) = node_of(&o.topic);
        let Some(w) = c.workers.iter_mut().find(|w| w.id == node) else { continue };
        if !w.alive {
            continue;
        }
        match kind {
            "control/deploy" => {
                let d: DeployCommand = serde_json::from_slice(&o.payload).unwrap();
                let k = (d.service_id.clone(), d.instance_number);
                if !matches!(w.held.get(&k), Some(Status::Running)) {
                    w.held.insert(k, Status::Running);
                }
                events.push((w.id.clone(), ev(&d.service_id, d.instance_number, Status::Running, "running")));
            }
            "control/delete" => {
                let d: DeleteCommand = serde_json::from_slice(&o.payload).unwrap();
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
fn settle(c: &mut SimCluster, mut outs: Vec<Out>, now: f64) {
    for _ in 0..50 {
        if outs.is_empty() {
            return;
        }
        let events = deliver(c, std::mem::take(&mut outs));
        for (node, e) in events {
            outs.extend(c.core.instance_event(&node, e, now));
        }
    }
}

/// `crash_ppm`: chance per worker per step (in millionths) that its host dies.
fn run(seed: u64, clusters: usize, workers_per_cluster: usize, services: usize, replicas: u32, crash_ppm: u64) {
    let fail = |msg: String| -> ! { panic!("simulation seed {seed}: {msg}") };
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let clock = Arc::new(SimClock(Mutex::new(1_000_000.0)));
    let store = Arc::new(MemStore::new(oak_root::registry::TABLES));
    let reg = Registry::new(store, clock.clone());
    reg.bootstrap(|| "x".into()).unwrap();
    let admin = reg.user_by_name("Admin").unwrap().unwrap();
    let now = || *clock.0.lock();

    let mut sim: Vec<SimCluster> = (0..clusters)
        .map(|c| {
            let id = reg.join_cluster(&format!("c{c}"), None, None).unwrap();
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
            SimCluster { id, core, workers, partitioned_until: 0.0 }
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

        // Root ↔ clusters (unless partitioned).
        reg.schedule_pending().unwrap();
        for c in sim.iter_mut() {
            if t < c.partitioned_until {
                continue;
            }
            let desired: Vec<DesiredInstance> = reg.desired_for(&c.id).unwrap();
            let outs = c.core.set_desired(desired, t);
            settle(c, outs, t);
        }

        // Disturbances.
        for c in sim.iter_mut() {
            if disturb && rng.chance(4_000) && t >= c.partitioned_until {
                c.partitioned_until = t + 5.0 + rng.below(20) as f64;
                partitions += 1;
            }
            for i in 0..c.workers.len() {
                let w = &mut c.workers[i];
                if !w.alive && t >= w.down_until {
                    w.alive = true;
                    w.session += 1;
                    w.held.clear();
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
                    let session = w.session.to_string();
                    let id = w.id.clone();
                    let outs = c.core.worker_lost(&id, &session, t);
                    settle(c, outs, t);
                    continue;
                }
                let w = &mut c.workers[i];
                if disturb && w.alive && !w.held.is_empty() && rng.chance(crash_ppm * 6) {
                    let k = w.held.keys().nth(rng.below(w.held.len() as u64) as usize).unwrap().clone();
                    w.held.insert(k.clone(), Status::Dead);
                    instance_crashes += 1;
                    let id = w.id.clone();
                    let outs = c.core.instance_event(&id, ev(&k.0, k.1, Status::Dead, "exited with code 1"), t);
                    settle(c, outs, t);
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
                        (w.id.clone(), info)
                    })
                    .collect();
                for (id, info) in infos {
                    let outs = c.core.node_info(&id, info, t);
                    settle(c, outs, t);
                }
            }
            let outs = c.core.reconcile(t);
            settle(c, outs, t);
            if t >= c.partitioned_until {
                reg.apply_report(&c.id, c.core.report(t)).unwrap();
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
        "seed {seed}: {} workers, {} instances ({running} running at the end); {partitions} cluster partitions, {host_crashes} worker crashes, {instance_crashes} instance crashes",
        clusters * workers_per_cluster,
        services * replicas as usize
    );
    assert!(host_crashes > 0 && instance_crashes > 0, "seed {seed}: the run was not disturbed");
}

#[test]
fn simulation_fixed_seeds() {
    for seed in [1, 42] {
        run(seed, 3, 700, 120, 4, 300);
    }
}

#[test]
fn simulation_tight_capacity() {
    // Few workers, many replicas: placement failures must say why, never over-commit.
    for seed in [3, 11] {
        run(seed, 2, 6, 40, 3, 20_000);
    }
}
