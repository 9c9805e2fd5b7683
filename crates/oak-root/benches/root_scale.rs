//! The root's work per cluster message with many instances: building a cluster's desired set,
//! applying a one-instance delta and a full report, and a scheduler pass with nothing to do.
//! The real registry on a real store file (redb, fsync per commit).
//! `cargo bench -p oak-root --bench root_scale [-- SERVICES ...]`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use oak_api::link::{ClusterAggregate, ClusterReport, FreeSlot, InstanceState};
use oak_api::{ServiceId, Status};
use oak_root::clock::SystemClock;
use oak_root::registry::{Registry, TABLES};
use oak_store::RedbStore;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn aggregate() -> ClusterAggregate {
    ClusterAggregate {
        workers: 10_000,
        active_workers: 10_000,
        cpu_cores: 160_000.0,
        memory_mb: 1 << 30,
        memory_free_mb: 1 << 30,
        runtimes: vec!["container".into()],
        slots: vec![FreeSlot {
            arch: std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
            runtimes: vec!["container".into()],
            millicpu: 1 << 40,
            memory_mb: 1 << 40,
            gpus: 0,
        }],
        ..ClusterAggregate::default()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let mut sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    if sizes.is_empty() {
        sizes = vec![1_000, 10_000];
    }
    println!(
        "| services | instances | desired set (ms) | apply a 1-instance delta (ms) | apply a full report (ms) | scheduler pass, nothing to place (ms) |"
    );
    println!("|---|---|---|---|---|---|");
    for services in sizes {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(&dir.path().join("root.redb"), TABLES).unwrap());
        let reg = Registry::new(store, Arc::new(SystemClock));
        reg.bootstrap(|| "x".into()).unwrap();
        let admin = reg.user_by_name("Admin").unwrap().unwrap();
        let cluster = reg.join_cluster("c", None, None).unwrap();
        let report = ClusterReport { aggregate: aggregate(), ..ClusterReport::default() };
        reg.apply_report(&cluster, report).unwrap();

        // Applications of 10 services, 2 instances each, all placed on the cluster.
        let mut svcs: Vec<ServiceId> = Vec::new();
        for a in 0..services / 10 {
            let micro: Vec<serde_json::Value> = (0..10)
                .map(|s| {
                    serde_json::json!({"microservice_name": format!("s{s}"), "microservice_namespace": "n",
                        "virtualization": "container", "code": "img", "memory": 64, "vcpus": 0.1})
                })
                .collect();
            let doc = serde_json::json!({"sla_version": "v2.0", "customerID": "x", "applications": [{
                "application_name": format!("a{a}"), "application_namespace": "bench", "microservices": micro}]});
            let ids = reg.create_applications(&admin, oak_api::sla::parse_sla(&doc).unwrap()).unwrap();
            svcs.extend(reg.get_app(&admin.id, &ids[0]).unwrap().microservices);
        }
        for s in &svcs {
            for _ in 0..2 {
                reg.request_instance(&admin.id, s).unwrap();
            }
        }
        reg.schedule_pending().unwrap();

        let t = Instant::now();
        let desired = reg.desired_for(&cluster).unwrap();
        let desired_ms = ms(t.elapsed());
        assert_eq!(desired.len(), services * 2, "every instance placed on the cluster");

        let state = |d: &oak_api::link::DesiredInstance, status: Status| InstanceState {
            service_id: d.service_id.clone(),
            instance_number: d.instance_number,
            status,
            status_detail: "running".into(),
            worker_id: Some("w".into()),
            worker_name: Some("w".into()),
            host_ip: Some("10.0.0.1".into()),
            cpu_percent: Some(1.0),
            memory_mb: Some(10.0),
            ns_ip: None,
            host_port: None,
            location: None,
            coord: None,
            probe: None,
            host_key: None,
        };
        let full = ClusterReport {
            aggregate: aggregate(),
            instances: desired.iter().map(|d| state(d, Status::Running)).collect(),
            ..ClusterReport::default()
        };
        let t = Instant::now();
        reg.apply_report(&cluster, full.clone()).unwrap();
        let full_ms = ms(t.elapsed());

        let one = ClusterReport {
            aggregate: aggregate(),
            instances: vec![state(&desired[desired.len() / 2], Status::Failed)],
            ..ClusterReport::default()
        };
        let t = Instant::now();
        reg.apply_report(&cluster, one).unwrap();
        let delta_ms = ms(t.elapsed());

        let t = Instant::now();
        reg.schedule_pending().unwrap();
        let sched_ms = ms(t.elapsed());
        println!("| {services} | {} | {desired_ms:.1} | {delta_ms:.1} | {full_ms:.1} | {sched_ms:.1} |", services * 2);
    }
}
