//! Latency and distance-aware placement end to end: real workers in network namespaces that
//! probe each other over UDP, latencies made by the NFQUEUE emulator (`common/latency.rs`;
//! this kernel has no netem), real containers. Needs root, containerd and iptables (CI has
//! them).
//!
//! The emulated world has two sites, A = {w0, w1} and B = {w2, w3}, 30 ms apart (round
//! trip), 2 ms within a site; a user host `u` sits in site B, next to w3 (1 ms) and 8 ms from
//! w2. Nothing is told where anything is: placements follow from the workers' measured
//! coordinates.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::latency::{LatencyEmulator, can_emulate};
use common::{Hierarchy, app, fetch_from};
use oak_api::Status;
use oak_api::ldp::CoordCircle;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Workers probe every 200 ms (the default is 2 s) so that coordinates settle in seconds.
fn fast_probes(n: usize, extra: &[&[&str]]) -> Vec<Vec<String>> {
    (0..n)
        .map(|i| {
            let mut a = vec!["--probe-interval-ms".to_owned(), "200".to_owned()];
            if let Some(e) = extra.get(i) {
                a.extend(e.iter().map(|s| s.to_string()));
            }
            a
        })
        .collect()
}

/// Host index of the user in the emulator (after the four workers).
const USER: usize = 4;

/// One-way delay (ms) between emulated hosts 0..=4 (4 is the user).
fn two_sites(a: usize, b: usize) -> f64 {
    let site = |i: usize| if i < 2 { 0 } else { 1 };
    match (a.min(b), a.max(b)) {
        (3, USER) => 0.5,
        (2, USER) => 4.0,
        _ if site(a) == site(b) => 1.0,
        _ => 15.0,
    }
}

/// A host that is not a worker: a user the workers can ping. Removed on drop.
struct UserHost {
    netns: String,
    veth: String,
    ip: std::net::Ipv4Addr,
}

impl UserHost {
    fn new(h: &Hierarchy, i: usize) -> Self {
        let (netns, veth) = h.host(i);
        let b = h.host_ip(0).octets()[1];
        let host = oak_runtime::netns::create_host(&netns, &veth, b, (i + 1) as u8).unwrap();
        Self { netns, veth, ip: host.ip.parse().unwrap() }
    }
}

impl Drop for UserHost {
    fn drop(&mut self) {
        oak_runtime::netns::remove_host(&self.netns, &self.veth);
    }
}

/// Starts four workers, a user host and the emulator; waits until the cluster's coordinate
/// summary shows the two sites (within 60 s).
async fn world(tag: &str, extra: &[&[&str]]) -> (Hierarchy, UserHost, LatencyEmulator) {
    let h = Hierarchy::start_with_workers(tag, fast_probes(4, extra), 500).await;
    let user = UserHost::new(&h, USER);
    let mut hosts: Vec<(String, std::net::Ipv4Addr)> = (0..4).map(|i| (h.host(i).0, h.host_ip(i))).collect();
    hosts.push((user.netns.clone(), user.ip));
    let lat = LatencyEmulator::start(&hosts, two_sites).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = h.admin.clusters(true).await.unwrap();
        let space: Vec<CoordCircle> = c.iter().flat_map(|c| c.space.clone()).collect();
        if settled(&space) {
            break;
        }
        assert!(Instant::now() < deadline, "coordinates did not settle in 60 s: {space:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    (h, user, lat)
}

/// Four worker coordinates whose predicted RTTs show two pairs close together (≤ 8 ms) and
/// the four cross pairs far apart (≥ 20 ms): what the emulator makes (2 and 30 ms).
fn settled(space: &[CoordCircle]) -> bool {
    if space.len() != 4 {
        return false;
    }
    let mut d: Vec<f64> = Vec::new();
    for i in 0..4 {
        for j in i + 1..4 {
            d.push(space[i].coord.rtt(&space[j].coord));
        }
    }
    d.sort_by(f64::total_cmp);
    d[0] <= 8.0 && d[1] <= 8.0 && d[2] >= 20.0
}

fn worker_of(i: &oak_api::model::Instance) -> String {
    i.worker_name.clone().unwrap_or_default()
}

fn running(n: usize) -> impl Fn(&[oak_api::model::Instance]) -> bool {
    move |is| is.len() == n && is.iter().all(|i| i.status == Status::Running)
}

fn svc(name: &str, extra: Value) -> Value {
    common::service(name, "sleep 3600", 16, 0.1, extra)
}

async fn create(h: &Hierarchy, name: &str, services: Vec<Value>) -> Vec<String> {
    let created = h.admin.create_applications(&app(name, services)).await.unwrap();
    let a = created.into_iter().find(|a| a.application_name == name).unwrap();
    a.microservices.iter().map(ToString::to_string).collect()
}

/// S2S: replicas of a service that must stay within 10 ms of its database all land in the
/// database's site. S2U: a service that must stay within 5 ms of a user address lands on the
/// one worker next to that user, located by multilateration from the workers' pings.
#[tokio::test]
async fn s2s_and_s2u_follow_measured_latency() {
    if !common::can_run_containers("ldp") || !can_emulate("ldp") {
        return;
    }
    let (h, user, _lat) = world("ldaa", &[]).await;
    let tag = "ldaa";
    let ids = create(
        &h,
        "sites",
        vec![
            svc("db", json!({"constraints": [{"type": "direct", "node": format!("{tag}-w0")}]})),
            svc(
                "web",
                json!({"replicas": 2, "connectivity": [{"target_microservice_id": "db", "con_constraints": [
                    {"type": "latency", "threshold": 10, "rigidness": 1, "convergence_time": 30}]}]}),
            ),
            svc("cam", json!({"constraints": [{"type": "latency", "users": [user.ip.to_string()], "threshold": 5}]})),
        ],
    )
    .await;
    let (db, web, cam) = (&ids[0], &ids[1], &ids[2]);
    h.admin.request_instance(db).await.unwrap();
    h.admin.request_instance(cam).await.unwrap();
    let web_s = h.wait_for(web, 90, "web's replicas RUNNING (after db)", running(2)).await;
    let db_s = h.wait_for(db, 30, "db RUNNING", running(1)).await;
    assert_eq!(worker_of(&db_s.instance_list[0]), format!("{tag}-w0"));
    for i in &web_s.instance_list {
        let w = worker_of(i);
        assert!(w == format!("{tag}-w0") || w == format!("{tag}-w1"), "web in db's site: {w}; {}", i.status_detail);
    }
    let cam_s = h.wait_for(cam, 60, "cam RUNNING", running(1)).await;
    assert_eq!(worker_of(&cam_s.instance_list[0]), format!("{tag}-w3"), "next to the user: {:?}", cam_s.instance_list);
    // Nothing within 0.1 ms of the user: refused, saying the best there is.
    let far = create(
        &h,
        "tight",
        vec![svc("x", json!({"constraints": [{"type": "latency", "users": [user.ip.to_string()], "threshold": 0.1}]}))],
    )
    .await;
    h.admin.request_instance(&far[0]).await.unwrap();
    let s = h
        .wait_for(&far[0], 60, "refused", |is| {
            is.len() == 1 && is[0].status.is_negative_scheduling() && is[0].status_detail.contains("best is")
        })
        .await;
    let d = &s.instance_list[0].status_detail;
    assert!(d.contains(&format!("within 0.1 ms of user {}", user.ip)), "{d}");
}

/// Geo and addons need no measurement: a worker's `--location` and `--addons`.
#[tokio::test]
async fn geo_and_addons_constraints() {
    if !common::can_run_containers("ldp") {
        return;
    }
    let h = Hierarchy::start_with_workers(
        "ldab",
        vec![
            vec!["--location".into(), "48.14,11.58".into()],
            vec!["--location".into(), "52.52,13.40".into(), "--addons".into(), "camera,gpu-driver".into()],
        ],
        500,
    )
    .await;
    let ids = create(
        &h,
        "geo",
        vec![
            svc("munich", json!({"constraints": [{"type": "geo", "location": "48.2,11.6", "threshold": 50}]})),
            svc("berlin", json!({"constraints": [{"type": "geo", "location": "52.4,13.1", "threshold": 50}]})),
            svc("cam", json!({"constraints": [{"type": "addons", "needs": ["camera"]}]})),
            svc("madrid", json!({"constraints": [{"type": "geo", "location": "40.4,-3.7", "threshold": 100}]})),
        ],
    )
    .await;
    for id in &ids {
        h.admin.request_instance(id).await.unwrap();
    }
    let m = h.wait_for(&ids[0], 60, "munich RUNNING", running(1)).await;
    assert_eq!(worker_of(&m.instance_list[0]), "ldab-w0");
    let b = h.wait_for(&ids[1], 60, "berlin RUNNING", running(1)).await;
    assert_eq!(worker_of(&b.instance_list[0]), "ldab-w1");
    let c = h.wait_for(&ids[2], 60, "cam RUNNING", running(1)).await;
    assert_eq!(worker_of(&c.instance_list[0]), "ldab-w1");
    let s =
        h.wait_for(&ids[3], 30, "madrid refused", |is| is.len() == 1 && is[0].status.is_negative_scheduling()).await;
    let d = &s.instance_list[0].status_detail;
    assert!(d.contains("within 100 km of 40.4,-3.7"), "{d}");
}

/// What a worker on this machine reports as its memory.
fn host_memory_mb() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024
}

const SERVER: &str = "mkdir -p /www && echo from-$HOSTNAME > /www/index.html && exec httpd -f -p 80 -h /www";

/// The closest Service IP sends every request to the replica with the lowest RTT from the
/// client's worker, with no `--location` anywhere. Then a latency that rises after
/// placement breaks a user SLA; with `migrate` the instance moves next to the user, and a
/// client fetching all along never finds nothing.
#[tokio::test]
async fn closest_by_latency_and_migration_without_a_gap() {
    if !common::can_run_containers("ldp") || !can_emulate("ldp") {
        return;
    }
    let tag = "ldac";
    let (h, user, lat) = world(tag, &[]).await;
    let on = |w: &str| json!({"constraints": [{"type": "direct", "node": format!("{tag}-{w}")}]});
    let ids = create(
        &h,
        "near",
        vec![
            // Replicas on w1 (site A) and w3 (site B), one each (each reserves more than half
            // of a worker's memory); the client on w2 (site B).
            common::service(
                "srv",
                SERVER,
                host_memory_mb() * 6 / 10,
                0.1,
                json!({"replicas": 2, "addresses": {"closest_ip": "10.30.77.1", "rr_ip": "10.30.77.2"},
                       "constraints": [{"type": "direct", "node": format!("{tag}-w1;{tag}-w3")}]}),
            ),
            svc("client", on("w2")),
        ],
    )
    .await;
    let (srv, client) = (&ids[0], &ids[1]);
    h.admin.request_instance(client).await.unwrap();
    let s = h.wait_for(srv, 90, "two replicas RUNNING", running(2)).await;
    let mut where_: Vec<String> = s.instance_list.iter().map(worker_of).collect();
    where_.sort();
    if where_ != [format!("{tag}-w1"), format!("{tag}-w3")] {
        // Both replicas landed on one of the two named workers: the test needs one on each.
        panic!("replicas on {where_:?}; expected one on w1 and one on w3");
    }
    let near_n = s.instance_list.iter().find(|i| worker_of(i) == format!("{tag}-w3")).unwrap().instance_number;
    h.wait_for(client, 60, "client RUNNING", running(1)).await;
    let c = h.containers().into_iter().find(|c| c.starts_with(&format!("{client}-0-"))).unwrap();
    let mut answers = std::collections::BTreeMap::<String, u32>::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while answers.values().sum::<u32>() < 20 {
        match fetch_from(&c, "http://10.30.77.1/") {
            Ok(a) => *answers.entry(a).or_default() += 1,
            Err(e) => assert!(Instant::now() < deadline, "closest IP unreachable: {e}"),
        }
    }
    assert_eq!(answers.len(), 1, "every request to the same replica: {answers:?}");
    let host = answers.keys().next().unwrap().clone();
    assert_eq!(host, format!("from-instance-{near_n}"), "the replica 2 ms away, not the one 30 ms away");

    // Migration: `cam` must stay within 5 ms of the user; it runs next to it, on w3.
    let ids = create(
        &h,
        "mig",
        vec![common::service(
            "cam",
            SERVER,
            16,
            0.1,
            json!({"addresses": {"rr_ip": "10.30.78.1"}, "sla_violation_strategy": "migrate",
                   "constraints": [{"type": "latency", "users": [user.ip.to_string()], "threshold": 5,
                                    "convergence_time": 3}]}),
        )],
    )
    .await;
    let cam = &ids[0];
    h.admin.request_instance(cam).await.unwrap();
    let s = h.wait_for(cam, 90, "cam RUNNING", running(1)).await;
    assert_eq!(worker_of(&s.instance_list[0]), format!("{tag}-w3"));
    // A client keeps fetching cam's page through its Service IP while the user's link to
    // w3 degrades (to 40 ms) and w2's improves (to 1 ms).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (stop2, c2) = (stop.clone(), c.clone());
    let fetcher = std::thread::spawn(move || {
        let (mut ok, mut failed) = (0u32, Vec::new());
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            match fetch_from(&c2, "http://10.30.78.1/") {
                Ok(_) => ok += 1,
                Err(e) => failed.push(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (ok, failed)
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (a, b, ms) in [(3, USER, 20.0), (USER, 3, 20.0), (2, USER, 0.5), (USER, 2, 0.5)] {
        lat.set(a, b, ms);
    }
    let s = h
        .wait_for(cam, 120, "cam migrated to w2", |is| {
            is.len() == 1 && is[0].status == Status::Running && worker_of(&is[0]) == format!("{tag}-w2")
        })
        .await;
    assert!(s.instance_list[0].status_detail.contains("migrated from worker"), "{}", s.instance_list[0].status_detail);
    // Keep fetching until the old copy is gone.
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = fetcher.join().unwrap();
    assert!(ok > 20, "the client fetched ({ok})");
    assert!(failed.is_empty(), "no request found nothing during the migration: {failed:?}");
    let mine: Vec<String> = h.containers().into_iter().filter(|c| c.starts_with(&format!("{cam}-0-"))).collect();
    assert_eq!(mine.len(), 1, "the old copy was removed: {mine:?}");
}

/// One-way delay (ms) between six workers in three sites: 1 ms within a site, and between
/// sites 5 (A–B), 20 (A–C) and 12 (B–C); host 4 has a slow access link (+3 ms).
fn three_sites(a: usize, b: usize) -> f64 {
    let site = |i: usize| i / 2;
    let access = |i: usize| if i == 4 { 3.0 } else { 0.0 };
    let between = match (site(a).min(site(b)), site(a).max(site(b))) {
        (x, y) if x == y => 1.0,
        (0, 1) => 5.0,
        (0, 2) => 20.0,
        _ => 12.0,
    };
    between + access(a) + access(b)
}

/// The coordinates the workers keep predict the RTTs between them: on a real hierarchy with
/// emulated latencies, the median relative error of predicted against emulated RTT (under
/// the best matching of the cluster's six coordinates to the six workers, which the summary
/// does not name) stays small. Prints the figure (`docs/benchmarks.md`).
#[tokio::test]
async fn coordinates_predict_the_emulated_rtts() {
    if !common::can_run_containers("ldp") || !can_emulate("ldp") {
        return;
    }
    let h = Hierarchy::start_with_workers("ldad", fast_probes(6, &[]), 500).await;
    let hosts: Vec<(String, std::net::Ipv4Addr)> = (0..6).map(|i| (h.host(i).0, h.host_ip(i))).collect();
    let _lat = LatencyEmulator::start(&hosts, three_sites).unwrap();
    let truth = |a: usize, b: usize| three_sites(a, b) + three_sites(b, a);
    let best_error = |space: &[CoordCircle]| -> f64 {
        // Every assignment of the six coordinates to the six workers; the best one.
        let mut perm: Vec<usize> = (0..6).collect();
        let mut best = f64::INFINITY;
        let mut c = [0usize; 6];
        let mut errs = Vec::with_capacity(15);
        let mut score = |p: &[usize]| {
            errs.clear();
            for a in 0..6 {
                for b in a + 1..6 {
                    let t = truth(a, b);
                    errs.push((space[p[a]].coord.rtt(&space[p[b]].coord) - t).abs() / t);
                }
            }
            errs.sort_by(f64::total_cmp);
            best = best.min(errs[errs.len() / 2]);
        };
        score(&perm);
        let mut i = 0;
        while i < 6 {
            if c[i] < i {
                if i % 2 == 0 {
                    perm.swap(0, i)
                } else {
                    perm.swap(c[i], i)
                }
                score(&perm);
                c[i] += 1;
                i = 0;
            } else {
                c[i] = 0;
                i += 1;
            }
        }
        best
    };
    let start = Instant::now();
    let mut last = f64::INFINITY;
    while start.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let c = h.admin.clusters(true).await.unwrap();
        let space: Vec<CoordCircle> = c.iter().flat_map(|c| c.space.clone()).collect();
        if space.len() == 6 {
            last = best_error(&space);
            if last <= 0.15 && start.elapsed() > Duration::from_secs(20) {
                break;
            }
        }
    }
    println!(
        "coordinates on a real hierarchy: median relative error {:.1} % after {:.0} s",
        last * 100.0,
        start.elapsed().as_secs_f64()
    );
    assert!(last <= 0.25, "median relative error {:.1} %", last * 100.0);
}

/// One coordinate space across clusters: cluster A has w0 (site X) and w1 (site Z); cluster B
/// has w2 (site X) and w3 (site Z). A service that must stay within 10 ms of a database on
/// w0, and may run only in cluster B, lands on w2: its workers probe A's landmarks, so their
/// coordinates and A's are comparable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2s_across_clusters_in_one_coordinate_space() {
    if !common::can_run_containers("ldp") || !can_emulate("ldp") {
        return;
    }
    let tag = "ldae";
    let mut h = Hierarchy::start_with_workers(tag, fast_probes(2, &[]), 500).await;
    let (port, mqtt) = (common::free_port(), common::free_port());
    let (_b, token) = h.spawn_cluster("cl-ldae-b", port, mqtt, 500).await;
    h.worker_args.extend(fast_probes(2, &[]));
    for i in 2..4 {
        let w = h.spawn_worker_to(i, port, &token);
        h.workers.push(w);
        h.worker_names.push(format!("{tag}-w{i}"));
    }
    let hosts: Vec<(String, std::net::Ipv4Addr)> = (0..4).map(|i| (h.host(i).0, h.host_ip(i))).collect();
    // Sites: X = {w0, w2}, Z = {w1, w3}; 1 ms within a site, 15 ms across (one way).
    let _lat = LatencyEmulator::start(&hosts, |a, b| if a % 2 == b % 2 { 1.0 } else { 15.0 }).unwrap();
    // Both clusters report coordinates that put the sites 30 ms apart.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let cs = h.admin.clusters(true).await.unwrap();
        let ready = cs.len() == 2 && cs.iter().all(|c| c.active_nodes == 2 && c.space.len() == 2);
        if ready {
            let all: Vec<CoordCircle> = cs.iter().flat_map(|c| c.space.clone()).collect();
            let mut d: Vec<f64> = Vec::new();
            for i in 0..4 {
                for j in i + 1..4 {
                    d.push(all[i].coord.rtt(&all[j].coord));
                }
            }
            d.sort_by(f64::total_cmp);
            // Two pairs near (one per site, across clusters), four far.
            if d[1] <= 8.0 && d[2] >= 20.0 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "one coordinate space did not form in 90 s: {cs:#?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ids = create(
        &h,
        "across",
        vec![
            svc("db", json!({"constraints": [{"type": "direct", "cluster": format!("cl-{tag}"), "node": format!("{tag}-w0")}]})),
            svc(
                "web",
                json!({"constraints": [{"type": "clusters", "allowed": ["cl-ldae-b"]}],
                       "connectivity": [{"target_microservice_id": "db", "con_constraints": [
                    {"type": "latency", "threshold": 10, "rigidness": 1, "convergence_time": 30}]}]}),
            ),
        ],
    )
    .await;
    h.admin.request_instance(&ids[0]).await.unwrap();
    h.admin.request_instance(&ids[1]).await.unwrap();
    let db = h.wait_for(&ids[0], 60, "db RUNNING", running(1)).await;
    assert_eq!(worker_of(&db.instance_list[0]), format!("{tag}-w0"));
    let web = h.wait_for(&ids[1], 90, "web RUNNING", running(1)).await;
    assert_eq!(worker_of(&web.instance_list[0]), format!("{tag}-w2"), "{:?}", web.instance_list);
}
