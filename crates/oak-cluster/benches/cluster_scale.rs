//! A whole cluster's decisions at scale: thousands of workers reporting every 2 s, thousands of
//! instances placed, running and reported to the root. Drives the cluster's core (the state
//! machine its event loop runs, one message at a time) without MQTT or containers, so what it
//! measures is the cluster's own work per message.
//! `cargo bench -p oak-cluster --bench cluster_scale`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use oak_api::ServiceId;
use oak_api::link::DesiredInstance;
use oak_api::node::{InstanceEvent, InstanceUsage, NodeInfo, RegisterRequest};
use oak_api::status::Status;
use oak_cluster::core::{Core, WorkerRec};
use std::time::Instant;

fn register(core: &mut Core, i: usize, now: f64) -> String {
    let id = format!("{i:08x}-0000-4000-8000-000000000000");
    let reg = RegisterRequest {
        name: format!("worker-{i}"),
        ip: "10.0.0.1".into(),
        arch: if i.is_multiple_of(4) { "arm64".into() } else { "amd64".into() },
        runtimes: vec!["container".into()],
        cpu_cores: 4.0,
        memory_mb: 1024 * (1 + (i as u64 * 7919) % 16),
        session: format!("s{i}"),
        ..RegisterRequest::default()
    };
    core.add_worker(WorkerRec { last_seen: now, ..WorkerRec::new(id.clone(), reg) }, now);
    id
}

fn info(instances: Vec<InstanceUsage>) -> NodeInfo {
    NodeInfo {
        cpu_percent: 3.0,
        cpu_cores: 4.0,
        memory_mb: 8192,
        memory_available_mb: 6000,
        disk_free_mb: 10_000,
        arch: "amd64".into(),
        runtimes: vec!["container".into()],
        instances,
        ..NodeInfo::default()
    }
}

fn desired(services: usize, per_service: u32) -> Vec<DesiredInstance> {
    let spec = serde_json::json!({"microservice_name": "s", "microservice_namespace": "n",
        "virtualization": "container", "code": "img", "memory": 256, "vcpus": 0.25});
    let spec = oak_api::sla::parse_microservice(&spec, "").expect("spec");
    (0..services)
        .flat_map(|s| {
            let spec = spec.clone();
            (0..per_service).map(move |n| DesiredInstance {
                service_id: ServiceId::from(format!("svc{s:06}").as_str()),
                instance_number: n,
                job_name: format!("a.b.s{s}.n"),
                spec: spec.clone(),
                instance_ip: None,
                ldp: None,
            })
        })
        .collect()
}

fn per(total: std::time::Duration, n: usize) -> f64 {
    total.as_secs_f64() * 1e6 / n.max(1) as f64
}

fn main() {
    println!(
        "| workers | instances | place all (ms) | RUNNING event (µs) | worker report (µs) | reports/s the core can take | report to root: build ms, full KB, one change as delta KB | tick (ms) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    // Sizes from the command line (`-- 100 1000`), else the full set.
    let mut sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    if sizes.is_empty() {
        sizes = vec![100, 1_000, 10_000, 30_000];
    }
    for workers in sizes {
        let instances = workers * 2;
        let mut core = Core::default();
        let now = 1_000.0;
        let ids: Vec<String> = (0..workers).map(|i| register(&mut core, i, now)).collect();
        for id in &ids {
            core.node_info(id, info(vec![]), now);
        }

        // Place every instance: the root's desired set arrives in one message.
        let want = desired(instances / 10, 10);
        let t = Instant::now();
        let outs = core.set_desired(want, now);
        let place = t.elapsed();
        assert_eq!(outs.len(), instances, "every instance placed");

        // Each worker acknowledges its instances: a RUNNING event each.
        let placed: Vec<(ServiceId, u32, String)> =
            core.assignments().iter().map(|((s, n), a)| (s.clone(), *n, a.worker.clone().expect("placed"))).collect();
        let t = Instant::now();
        for (s, n, w) in &placed {
            let ev = InstanceEvent {
                service_id: s.clone(),
                instance_number: *n,
                status: Status::Running,
                status_detail: String::new(),
                exit_code: None,
                ns_ip: None,
            };
            core.instance_event(w, ev, now);
        }
        let event = t.elapsed();

        // Steady state: every worker reports what it runs.
        let mut held: std::collections::HashMap<&str, Vec<InstanceUsage>> = Default::default();
        for (s, n, w) in &placed {
            held.entry(w.as_str()).or_default().push(InstanceUsage {
                service_id: s.clone(),
                instance_number: *n,
                status: Status::Running,
                cpu_percent: 1.0,
                memory_mb: 20.0,
                ns_ip: None,
            });
        }
        let reports: Vec<(String, NodeInfo)> =
            ids.iter().map(|id| (id.clone(), info(held.remove(id.as_str()).unwrap_or_default()))).collect();
        let t = Instant::now();
        for (id, info) in reports {
            let outs = core.node_info(&id, info, now + 1.0);
            assert!(outs.is_empty(), "a steady report changes nothing");
        }
        let report_each = t.elapsed();

        let t = Instant::now();
        let rounds = 5;
        for _ in 0..rounds {
            std::hint::black_box(core.report(now + 1.0));
        }
        let to_root = t.elapsed() / rounds;
        let full = core.report(now + 1.0);
        let json = serde_json::to_vec(&full).expect("json");
        // What one status change costs on the link as a delta (see link.rs).
        let delta = oak_api::link::ReportDelta {
            aggregate: full.aggregate.clone(),
            instances: full.instances[..1].to_vec(),
            workers: None,
            interests: None,
        };
        let delta = serde_json::to_vec(&oak_api::link::ClusterToRoot::Delta(delta)).expect("json");
        let t = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(core.reconcile(now + 1.0));
        }
        let tick = t.elapsed() / rounds;

        let report_us = per(report_each, workers);
        println!(
            "| {workers} | {instances} | {:.1} | {:.2} | {:.2} | {:.0} | {:.2}, {}, {:.1} | {:.2} |",
            place.as_secs_f64() * 1e3,
            per(event, placed.len()),
            report_us,
            1e6 / report_us,
            to_root.as_secs_f64() * 1e3,
            json.len() / 1024,
            delta.len() as f64 / 1024.0,
            tick.as_secs_f64() * 1e3,
        );
    }
}
