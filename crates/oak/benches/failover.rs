//! Failover: time from SIGKILL of the worker that runs an instance to RUNNING on another
//! worker (default timings), over several runs; and from losing a cluster to RUNNING in
//! another. Needs root and containerd.
//!
//! `cargo bench -p oak --bench failover` (env: OAK_BENCH_RUNS, default 10).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::Hierarchy;
use oak_api::Status;
use serde_json::json;
use std::time::{Duration, Instant};

fn summary(name: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.total_cmp(b));
    let med = v[(v.len() - 1) / 2];
    println!("| {name} | {} | {:.0} | {:.0} | {:.0} |", v.len(), v[0], med, v[v.len() - 1]);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !common::can_run_containers("failover bench") {
        return;
    }
    let runs: usize = std::env::var("OAK_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    // Default timings of `oak cluster`: reports every 2 s, heartbeat timeout 6 s.
    let mut h = Hierarchy::start_opts("fov", 2, 2000, 6000, &[]).await;
    let sla = json!({"sla_version": "v2.0", "customerID": "Admin", "applications": [{
        "application_name": "fo", "application_namespace": "b", "microservices": [{
            "microservice_name": "s", "microservice_namespace": "b", "virtualization": "container",
            "code": oak_runtime::testimage::IMAGE, "cmd": ["sleep", "3600"], "memory": 16, "vcpus": 0.1}]}]});
    let app =
        h.admin.create_applications(&sla).await.unwrap().into_iter().find(|a| a.application_name == "fo").unwrap();
    let svc = app.microservices[0].to_string();
    h.admin.request_instance(&svc).await.unwrap();
    let mut kill = Vec::new();
    for _ in 0..runs {
        let s = h.wait_for(&svc, 60, "RUNNING", |is| is.len() == 1 && is[0].status == Status::Running).await;
        let on = s.instance_list[0].worker_name.clone().unwrap();
        let idx = h.worker_names.iter().position(|n| *n == on).unwrap();
        // Both workers must be up before the next kill.
        let deadline = Instant::now() + Duration::from_secs(30);
        while h.admin.clusters(true).await.unwrap()[0].active_nodes < 2 {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let t = Instant::now();
        h.workers[idx].kill();
        h.wait_for(&svc, 60, "RUNNING elsewhere", |is| {
            is.len() == 1 && is[0].status == Status::Running && is[0].worker_name.as_deref() != Some(on.as_str())
        })
        .await;
        kill.push(t.elapsed().as_secs_f64() * 1000.0);
        let w = h.spawn_worker(idx);
        h.workers[idx] = w;
    }
    println!("| what | runs | min ms | median ms | max ms |");
    println!("|---|---|---|---|---|");
    summary("worker SIGKILL → RUNNING on another worker", kill);
}
