//! Deploy latency and idle footprint of a real hierarchy: a root, a cluster and two workers
//! (each in its own network namespace) running containers through containerd. Needs root.
//!
//! `cargo bench -p oak --bench hierarchy` (env: OAK_BENCH_RUNS, default 20;
//! OAK_BENCH_IDLE_SECS, default 30).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::Hierarchy;
use oak_api::Status;
use serde_json::json;
use std::time::{Duration, Instant};

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn stats(name: &str, mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
    let (med, p99) = (q(0.5), q(0.99));
    println!("| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} |", v.len(), v[0], med, p99, v[v.len() - 1]);
    (med, p99)
}

/// RSS in KiB and CPU ticks (user+system) of a process.
fn usage(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<u64> = after.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // Fields after the comm: state(1) ppid(2) ... utime is field 14 of the line, index 11 here.
    let ticks = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
    (rss, ticks)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !common::can_run_containers("hierarchy bench") {
        return;
    }
    let runs = env_or("OAK_BENCH_RUNS", 20) as usize;
    let idle = env_or("OAK_BENCH_IDLE_SECS", 30);
    // Reports every 2 s, the default of `oak cluster`.
    let h = Hierarchy::start_with("bench", 2, 2000).await;
    let sla = |name: &str, extra: serde_json::Value| {
        let mut m = json!({"microservice_name": name, "microservice_namespace": "b", "virtualization": "container",
            "code": oak_runtime::testimage::IMAGE, "cmd": ["sleep", "3600"], "memory": 16, "vcpus": 0.1});
        for (k, v) in extra.as_object().unwrap() {
            m[k] = v.clone();
        }
        m
    };
    let doc = json!({"sla_version": "v2.0", "customerID": "Admin", "applications": [{"application_name": "bench",
    "application_namespace": "b", "microservices": [
        sla("scheduled", json!({})),
        sla("pinned", json!({"constraints": [{"type": "direct", "cluster": "cl-bench", "node": h.worker_names[1]}]})),
    ]}]});
    let app =
        h.admin.create_applications(&doc).await.unwrap().into_iter().find(|a| a.application_name == "bench").unwrap();
    let (scheduled, pinned) = (app.microservices[0].to_string(), app.microservices[1].to_string());

    println!("Deploy latency: POST /api/service/{{id}}/instance until the root reports RUNNING ({runs} runs each)\n");
    println!("| what | runs | min ms | median ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    let mut results = Vec::new();
    for (label, svc) in [
        ("oak, pinned (direct cluster+node)", &pinned),
        ("oak, scheduled (root picks cluster, cluster picks worker)", &scheduled),
    ] {
        let mut lat = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            let i = h.admin.request_instance(svc).await.unwrap();
            loop {
                let s = h.admin.service(svc).await.unwrap();
                let st = s.instance_list.iter().find(|x| x.instance_number == i.instance_number).map(|x| x.status);
                if st == Some(Status::Running) {
                    break;
                }
                assert!(t.elapsed() < Duration::from_secs(60), "no RUNNING: {st:?}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
            h.admin.remove_instance(svc, i.instance_number).await.unwrap();
            // Let the removal finish so runs do not overlap.
            let deadline = Instant::now() + Duration::from_secs(30);
            while !h.containers().is_empty() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        results.push(stats(label, lat));
    }
    let mut floor = Vec::new();
    for k in 0..runs {
        let t = Instant::now();
        let out = std::process::Command::new("ctr")
            .args(["-n", &h.ns, "run", "--rm", oak_runtime::testimage::IMAGE, &format!("floor-{k}"), "true"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        floor.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (floor_med, _) = stats("`ctr run --rm` of the same image (create, start, exit, remove)", floor);
    println!("\nscheduled median / ctr run median = {:.2}", results[1].0 / floor_med);
    println!("pinned median / ctr run median = {:.2}", results[0].0 / floor_med);
    h.admin.delete_application(app.id.as_str()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;

    println!("\nIdle footprint over {idle} s (no instances; workers report every 2 s)\n");
    let mut procs: Vec<(String, u32)> =
        vec![("oak root".into(), h.root.pid().unwrap()), ("oak cluster (2 workers)".into(), h.cluster.pid().unwrap())];
    for (i, w) in h.workers.iter().enumerate() {
        procs.push((format!("oak worker {i}"), w.pid().unwrap()));
    }
    let before: Vec<(u64, u64)> = procs.iter().map(|(_, p)| usage(*p)).collect();
    tokio::time::sleep(Duration::from_secs(idle)).await;
    let hz = 100.0;
    println!("| process | RSS MiB | CPU % of one core |");
    println!("|---|---|---|");
    for ((name, pid), (_, t0)) in procs.iter().zip(before) {
        let (rss, t1) = usage(*pid);
        println!("| {name} | {:.1} | {:.2} |", rss as f64 / 1024.0, (t1 - t0) as f64 / hz / idle as f64 * 100.0);
    }
}
