//! Failures, end to end: a killed worker, a partitioned worker, a crash loop. Real processes,
//! workers in their own network namespaces, real containers. Needs root and containerd.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Hierarchy;
use oak_api::Status;
use serde_json::json;
use std::time::{Duration, Instant};

fn one_service(name: &str, cmd: &str) -> serde_json::Value {
    json!({"sla_version": "v2.0", "customerID": "Admin", "applications": [{
        "application_name": name, "application_namespace": "f", "microservices": [{
            "microservice_name": "s", "microservice_namespace": "f", "virtualization": "container",
            "code": oak_runtime::testimage::IMAGE, "cmd": ["sh", "-c", cmd], "memory": 16, "vcpus": 0.1}]}]})
}

async fn deploy(h: &Hierarchy, name: &str, cmd: &str) -> String {
    let apps = h.admin.create_applications(&one_service(name, cmd)).await.unwrap();
    let svc = apps.into_iter().find(|a| a.application_name == name).unwrap().microservices[0].to_string();
    h.admin.request_instance(&svc).await.unwrap();
    svc
}

fn worker_index(h: &Hierarchy, name: &str) -> usize {
    h.worker_names.iter().position(|n| n == name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_instance_runs_elsewhere_within_ten_seconds() {
    if !common::can_run_containers("kill a worker") {
        return;
    }
    // Default timings: reports every 2 s, a worker is gone after 6 s of silence.
    let mut h = Hierarchy::start_opts("kil", 2, 2000, 6000, &[]).await;
    let svc = deploy(&h, "victim", "exec sleep 3600").await;
    let s =
        h.wait_for(&svc, 60, "RUNNING", |is| is.iter().all(|i| i.status == Status::Running) && !is.is_empty()).await;
    let first = s.instance_list[0].worker_name.clone().unwrap();
    let idx = worker_index(&h, &first);

    let t = Instant::now();
    h.workers[idx].kill();
    let s = h
        .wait_for(&svc, 30, "RUNNING on the other worker", |is| {
            is.iter().all(|i| i.status == Status::Running && i.worker_name.as_deref() != Some(first.as_str()))
        })
        .await;
    let took = t.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(s.instance_list.len(), 1);
    eprintln!("worker kill → RUNNING elsewhere in {took:?}");

    // The killed worker comes back: it removes what it left, and no duplicate remains.
    let w = h.spawn_worker(idx);
    h.workers[idx] = w;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = h.containers();
        let clusters = h.admin.clusters(true).await.unwrap();
        if c.len() == 1 && clusters[0].active_nodes == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "containers {c:?}, active workers {}", clusters[0].active_nodes);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_worker_heals_without_duplicates() {
    if !common::can_run_containers("partition a worker") {
        return;
    }
    let h = Hierarchy::start_opts("par", 2, 1000, 3000, &[]).await;
    let svc = deploy(&h, "cut", "exec sleep 3600").await;
    let s =
        h.wait_for(&svc, 60, "RUNNING", |is| is.iter().all(|i| i.status == Status::Running) && !is.is_empty()).await;
    let first = s.instance_list[0].worker_name.clone().unwrap();
    let (_, veth) = h.host(worker_index(&h, &first));
    let ip = |args: &[&str]| assert!(std::process::Command::new("ip").args(args).status().unwrap().success());

    ip(&["link", "set", &veth, "down"]);
    h.wait_for(&svc, 30, "RUNNING on the other worker", |is| {
        is.iter().all(|i| i.status == Status::Running && i.worker_name.as_deref() != Some(first.as_str()))
    })
    .await;
    // During the partition both copies exist: the cut-off worker cannot be told yet.
    ip(&["link", "set", &veth, "up"]);
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let c = h.containers();
        let s = h.admin.service(&svc).await.unwrap();
        let active = h.admin.clusters(true).await.unwrap()[0].active_nodes;
        if c.len() == 1 && active == 2 && s.instance_list.len() == 1 && s.instance_list[0].status == Status::Running {
            break;
        }
        assert!(Instant::now() < deadline, "after healing: containers {c:?}, active {active}, {:?}", s.instance_list);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_backoff_grows_to_the_cap() {
    if !common::can_run_containers("crash loop") {
        return;
    }
    let h = Hierarchy::start_opts("crl", 1, 500, 3000, &["--backoff-cap-ms", "4000"]).await;
    let svc = deploy(&h, "loop", "echo boom; exit 2").await;
    // Times at which the instance died, as the root saw them.
    let mut deaths: Vec<Instant> = Vec::new();
    let mut details = Vec::new();
    let mut was_dead = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while deaths.len() < 6 {
        let i = h.admin.service(&svc).await.unwrap().instance_list[0].clone();
        let dead = i.status == Status::Dead;
        if dead && !was_dead {
            deaths.push(Instant::now());
            details.push(i.status_detail.clone());
        }
        was_dead = dead;
        assert!(Instant::now() < deadline, "only {} deaths: {details:?}", deaths.len());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let gaps: Vec<f64> = deaths.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
    eprintln!("gaps between deaths: {gaps:?}\n{details:#?}");
    // Expected waits 1, 2, 4, 4, 4 s (plus the time to start and exit each time).
    for (g, want) in gaps.iter().zip([1.0, 2.0, 4.0, 4.0, 4.0]) {
        assert!(*g >= want - 0.3 && *g < want + 2.0, "gap {g:.2} s, expected about {want} s: {gaps:?}");
    }
    assert!(details[0].contains("exited with code 2; placed again in 1 s (attempt 1)"), "{details:?}");
    assert!(details[4].contains("placed again in 4 s (attempt 5)"), "{details:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_clusters_instances_move_and_come_back_once() {
    if !common::can_run_containers("lose a cluster") {
        return;
    }
    // The root declares a cluster lost after 3 s of silence (default 10 s).
    let root = common::RootProcess::start_env(&[("OAK_CLUSTER_TIMEOUT_MS", "3000")]).await;
    let mut h = Hierarchy::start_full("los", 1, 500, 3000, &[], root).await;
    let (port, mqtt) = (free_port(), free_port());
    let (mut second, token) = h.spawn_cluster("cl-los-b", port, mqtt, 500).await;
    let w = h.spawn_worker_to(1, port, &token);
    h.workers.push(w);
    h.worker_names.push("los-w1".into());
    let deadline = Instant::now() + Duration::from_secs(30);
    while h.admin.clusters(true).await.unwrap().iter().map(|c| c.active_nodes).sum::<u32>() < 2 {
        assert!(Instant::now() < deadline, "the second cluster did not join");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Pin the instance to the second cluster first, then let it float.
    let sla = json!({"sla_version": "v2.0", "customerID": "Admin", "applications": [{
        "application_name": "roam", "application_namespace": "f", "microservices": [{
            "microservice_name": "s", "microservice_namespace": "f", "virtualization": "container",
            "code": oak_runtime::testimage::IMAGE, "cmd": ["sleep", "3600"], "memory": 16, "vcpus": 0.1,
            "constraints": [{"type": "direct", "cluster": "cl-los-b;cl-los"}]}]}]});
    let app =
        h.admin.create_applications(&sla).await.unwrap().into_iter().find(|a| a.application_name == "roam").unwrap();
    let svc = app.microservices[0].to_string();
    h.admin.request_instance(&svc).await.unwrap();
    let s =
        h.wait_for(&svc, 60, "RUNNING", |is| is.iter().all(|i| i.status == Status::Running) && !is.is_empty()).await;
    let first_cluster = s.instance_list[0].cluster_id.clone().unwrap();
    let clusters = h.admin.clusters(false).await.unwrap();
    let first_name = clusters.iter().find(|c| c.id == first_cluster).unwrap().cluster_name.clone();

    // Kill the cluster that runs it (its worker and container stay up, cut off).
    let t = Instant::now();
    if first_name == "cl-los-b" {
        second.kill();
    } else {
        h.cluster.kill();
    }
    h.wait_for(&svc, 30, "RUNNING in the other cluster", |is| {
        is.len() == 1 && is[0].status == Status::Running && is[0].cluster_id.as_ref() != Some(&first_cluster)
    })
    .await;
    eprintln!("cluster loss → RUNNING in the other cluster in {:?}", t.elapsed());

    // The lost cluster returns: its copy is stopped, exactly one runs.
    if first_name == "cl-los-b" {
        second = h.spawn_cluster("cl-los-b", port, mqtt, 500).await.0;
    } else {
        let (p, _) = h.spawn_cluster_first().await;
        h.cluster = p;
    }
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let c = h.containers();
        let active = h.admin.clusters(true).await.unwrap().len();
        if c.len() == 1 && active == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "after the cluster returned: containers {c:?}, active clusters {active}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(second);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_of_root_cluster_and_worker_lose_nothing() {
    if !common::can_run_containers("restarts") {
        return;
    }
    let mut h = Hierarchy::start_opts("rsr", 2, 500, 3000, &[]).await;
    let sla = json!({"sla_version": "v2.0", "customerID": "Admin", "applications": [{
        "application_name": "keep", "application_namespace": "f", "microservices": [{
            "microservice_name": "s", "microservice_namespace": "f", "virtualization": "container",
            "code": oak_runtime::testimage::IMAGE, "cmd": ["sleep", "3600"], "memory": 16, "vcpus": 0.1,
            "replicas": 3}]}]});
    let app =
        h.admin.create_applications(&sla).await.unwrap().into_iter().find(|a| a.application_name == "keep").unwrap();
    let svc = app.microservices[0].to_string();
    // The root restarts in the middle of the deployment; the deployment completes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.root.restart_in_place().await;
    let all_running = |is: &[oak_api::model::Instance]| is.len() == 3 && is.iter().all(|i| i.status == Status::Running);
    h.wait_for(&svc, 60, "3 RUNNING after a root restart", all_running).await;

    // The cluster restarts: it rebuilds from its store, its workers and the root.
    h.cluster.kill();
    let (p, _) = h.spawn_cluster_first().await;
    h.cluster = p;
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.wait_for(&svc, 60, "3 RUNNING after a cluster restart", all_running).await;

    // A worker restarts (gracefully): its instances are placed again; nothing is lost or doubled.
    h.workers[0].stop();
    let w = h.spawn_worker(0);
    h.workers[0] = w;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = h.admin.service(&svc).await.unwrap();
        let c = h.containers();
        if all_running(&s.instance_list) && c.len() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "after the worker restart: containers {c:?}, {:#?}", s.instance_list);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let numbers: Vec<u32> =
        h.admin.service(&svc).await.unwrap().instance_list.iter().map(|i| i.instance_number).collect();
    assert_eq!(numbers, [0, 1, 2]);
}

/// A worker silent for longer than its cluster keeps workers is forgotten (its record, its
/// broker login; the root frees its subnet). When it comes back, the broker refuses its old
/// login and it registers again, as the same node, and takes work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_worker_registers_again() {
    if !common::can_run_containers("forget a worker") {
        return;
    }
    let h = Hierarchy::start_opts("fgt", 1, 300, 1500, &["--forget-worker-after", "3"]).await;
    let node_id = std::fs::read_to_string(h.worker_dir(0).join("node-id")).unwrap();
    let pid = nix::unistd::Pid::from_raw(h.workers[0].pid().unwrap() as i32);
    let workers = || async {
        let c = h.admin.clusters(false).await.unwrap();
        (c[0].workers, c[0].active_nodes)
    };
    // Frozen long enough to be forgotten and for the broker to drop its connection
    // (keep-alive 5 s): a forgotten worker must not be able to talk on an old connection.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while workers().await != (0, 0) {
        assert!(Instant::now() < deadline, "not forgotten: {:?}", workers().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while workers().await != (1, 1) {
        assert!(Instant::now() < deadline, "did not come back: {:?}", workers().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(std::fs::read_to_string(h.worker_dir(0).join("node-id")).unwrap(), node_id, "the same node");
    let svc = deploy(&h, "again", "exec sleep 3600").await;
    h.wait_for(&svc, 60, "RUNNING", |is| is.iter().all(|i| i.status == Status::Running) && !is.is_empty()).await;
}
