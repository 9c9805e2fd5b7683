//! The semantic overlay end to end: real containers in instance namespaces on workers that
//! are separate network namespaces, a TUN proxy and UDP tunnel per worker. Needs root and
//! containerd (CI has both).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Hierarchy, app, fetch_from};
use oak_api::Status;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

/// An HTTP server answering its host name on port 80, and on port 81 a line server that
/// answers every line with its host name (for a long-lived connection).
const SERVER: &str = "mkdir -p /www && echo from-$HOSTNAME > /www/index.html \
    && printf '#!/bin/sh\\nwhile read l; do echo from-$HOSTNAME; done\\n' > /lines && chmod +x /lines \
    && (nc -ll -p 81 -e /lines &) && exec httpd -f -vv -p 80 -h /www";

fn service(name: &str, cmd: &str, extra: Value) -> Value {
    common::service(name, cmd, 32, 0.2, extra)
}

fn on(worker: &str) -> Value {
    json!({"constraints": [{"type": "direct", "node": worker}]})
}

fn running(n: usize) -> impl Fn(&[oak_api::model::Instance]) -> bool {
    move |is| is.len() == n && is.iter().all(|i| i.status == Status::Running)
}

fn container_of(h: &Hierarchy, service: &str, n: u32) -> String {
    h.containers().into_iter().find(|c| c.starts_with(&format!("{service}-{n}-"))).unwrap()
}

async fn log_of(h: &Hierarchy, service: &str, n: u32) -> String {
    h.admin.logs(service, n, None, 1 << 20).await.map(|l| l.text).unwrap_or_default()
}

/// Deletes an application and waits (30 s at most) until its containers are gone and then
/// (5 s more at most; a container leaves containerd a moment before its worker has removed
/// its namespace, veth and port rules) no instance veth or port rule is left on a host.
/// A client and a server, deployed as application `name` with one instance each, both
/// RUNNING.
struct Pair {
    app: String,
    client: String,
    server: String,
    c: oak_api::model::Service,
    s: oak_api::model::Service,
}

async fn deploy_pair(h: &Hierarchy, name: &str, client: Value, server: Value) -> Pair {
    let created = h.admin.create_applications(&app(name, vec![client, server])).await.unwrap();
    let a = created.into_iter().find(|a| a.application_name == name).unwrap();
    let (client, server) = (a.microservices[0].to_string(), a.microservices[1].to_string());
    h.admin.request_instance(&server).await.unwrap();
    h.admin.request_instance(&client).await.unwrap();
    let s = h.wait_for(&server, 60, "server RUNNING", running(1)).await;
    let c = h.wait_for(&client, 60, "client RUNNING", running(1)).await;
    Pair { app: a.id.to_string(), client, server, c, s }
}

async fn undeploy_cleanly(h: &Hierarchy, app: &str) {
    h.admin.delete_application(app).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !h.containers().is_empty() {
        assert!(Instant::now() < deadline, "containers left: {:?}", h.containers());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..h.workers.len() {
        instance_leftovers_go(&h.host(i).0).await;
    }
}

/// Waits (5 s at most) until no instance veth or port rule is left in a host namespace.
async fn instance_leftovers_go(netns: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<String> =
            leftovers(netns).into_iter().filter(|l| l.contains("oakv") || l.contains("DNAT")).collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "instance veths or port rules left on {netns}: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The underlay address of a host namespace (its eth0).
fn host_ip(netns: &str) -> String {
    let out = Command::new("ip").args(["-n", netns, "-4", "-o", "addr", "show", "eth0"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace().skip_while(|w| *w != "inet").nth(1).unwrap().split('/').next().unwrap().to_owned()
}

/// What of ours is left in a host namespace: links, routes, netfilter rules.
fn leftovers(netns: &str) -> Vec<String> {
    let run = |args: &[&str]| {
        let out = Command::new("ip").args(["netns", "exec", netns]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut left: Vec<String> = run(&["ip", "-o", "link", "show"])
        .lines()
        .filter(|l| l.contains("oak"))
        .map(|l| format!("link: {l}"))
        .collect();
    left.extend(run(&["ip", "route", "show"]).lines().filter(|l| l.contains("oak")).map(|l| format!("route: {l}")));
    for t in ["nat", "filter"] {
        left.extend(
            run(&["iptables", "-t", t, "-S"]).lines().filter(|l| l.contains("OAK")).map(|l| format!("{t}: {l}")),
        );
    }
    left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_server_across_workers() {
    if !common::can_run_containers("overlay") {
        return;
    }
    let h = Hierarchy::start("ovl", 2).await;
    let (w0, w1) = ("ovl-w0", "ovl-w1");
    let mut server = service("server", SERVER, on(w1));
    server["addresses"] = json!({"rr_ip": "10.30.30.30"});
    server["port"] = json!("8080:80/tcp");
    let client = service("client", "while true; do wget -q -O - http://10.30.30.30/ && echo; sleep 0.3; done", on(w0));
    let Pair { app: app_id, client, server, c, s } = deploy_pair(&h, "clientsrvr", client, server).await;
    assert_eq!(s.instance_list[0].worker_name.as_deref(), Some(w1));
    assert_eq!(c.instance_list[0].worker_name.as_deref(), Some(w0));
    let client_ip = c.instance_list[0].instance_ip.clone().unwrap();

    // The client container, looping on wget, receives the page from the other worker.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = log_of(&h, &client, 0).await;
        if log.contains("from-instance-0") {
            break;
        }
        if Instant::now() > deadline {
            common::pause_if_asked("the client never got the page").await;
        }
        assert!(Instant::now() < deadline, "the client never got the page; its log:\n{log}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The server saw the client's Instance IP as its peer.
    let log = log_of(&h, &server, 0).await;
    assert!(log.contains(&format!("[::ffff:{client_ip}]:")), "server log does not name {client_ip}:\n{log}");

    // The port mapping: the worker's own address, port 8080, reaches the server (from outside
    // the overlay: here, the root namespace).
    let worker_ip = host_ip(&h.host(1).0);
    let out = Command::new("timeout")
        .args(["5", "busybox", "wget", "-q", "-O", "-", &format!("http://{worker_ip}:8080/")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "from-instance-0", "port 8080 on {worker_ip}");

    // Undeploy leaves nothing of the instances on either worker: only the worker's own
    // bridge, TUN and chains remain while it runs.
    undeploy_cleanly(&h, &app_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancing_instance_ips_recovery_and_cleanup() {
    if !common::can_run_containers("overlay") {
        return;
    }
    let mut h = Hierarchy::start_opts("ovb", 2, 500, 3000, &["--placement", "spread"]).await;
    let (w0, w1) = ("ovb-w0", "ovb-w1");
    // Three replicas over two workers: two on w1, one on w0 (with the client).
    let mut server = service("server", SERVER, json!({"replicas": 3}));
    server["addresses"] = json!({"rr_ip": "10.30.40.40"});
    let client = service("client", "exec sleep 100000", on(w0));
    let created = h.admin.create_applications(&app("balance", vec![client, server])).await.unwrap();
    let a = created.into_iter().find(|a| a.application_name == "balance").unwrap();
    let (client, server) = (a.microservices[0].to_string(), a.microservices[1].to_string());
    h.admin.request_instance(&client).await.unwrap();
    let s = h.wait_for(&server, 60, "3 replicas RUNNING", running(3)).await;
    h.wait_for(&client, 60, "client RUNNING", running(1)).await;
    let placed: BTreeMap<u32, String> =
        s.instance_list.iter().map(|i| (i.instance_number, i.worker_name.clone().unwrap())).collect();
    assert!(placed.values().any(|w| w == w0) && placed.values().any(|w| w == w1), "not spread: {placed:?}");
    let cont = container_of(&h, &client, 0);

    // 300 new connections to the round-robin IP: exactly 100 per replica.
    let mut hits: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..300 {
        let page = fetch_from(&cont, "http://10.30.40.40/").unwrap();
        *hits.entry(page).or_default() += 1;
    }
    assert_eq!(hits.len(), 3, "{hits:?}");
    assert!(hits.values().all(|n| *n == 100), "not an even split: {hits:?}");

    // The Instance IP of replica 2 always lands on replica 2.
    let iip2 = s.instance_list.iter().find(|i| i.instance_number == 2).unwrap().instance_ip.clone().unwrap();
    for _ in 0..20 {
        assert_eq!(fetch_from(&cont, &format!("http://{iip2}/")).unwrap(), "from-instance-2");
    }

    // A long-lived connection stays on its replica: one TCP connection, many requests.
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("oak-{cont}"), "sh", "-c"])
        .arg("(for i in 1 2 3 4 5 6; do echo hi; sleep 0.2; done) | timeout 3 busybox nc 10.30.40.40 81")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let answers: Vec<&str> = text.lines().filter(|l| l.starts_with("from-instance-")).collect();
    assert!(answers.len() >= 5, "too few answers on a kept connection: {text}");
    assert!(answers.iter().all(|a| *a == answers[0]), "a kept connection switched replicas: {answers:?}");

    // Recovery: kill the worker of a replica; new connections stop going there.
    let victim_worker = placed.values().find(|w| *w == w1).unwrap().clone();
    let victim_idx = 1;
    assert_eq!(victim_worker, h.worker_names[victim_idx]);
    h.workers[victim_idx].kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = h.admin.service(&server).await.unwrap();
        let on_w1 = s.instance_list.iter().filter(|i| i.worker_name.as_deref() == Some(w1)).count();
        if on_w1 == 0 && s.instance_list.iter().all(|i| i.status == Status::Running) {
            break;
        }
        assert!(Instant::now() < deadline, "replicas did not move off the dead worker: {:#?}", s.instance_list);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut hits: BTreeMap<String, u32> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while hits.values().sum::<u32>() < 30 {
        match fetch_from(&cont, "http://10.30.40.40/") {
            Ok(page) => *hits.entry(page).or_default() += 1,
            Err(e) => {
                if Instant::now() > deadline {
                    common::pause_if_asked(&format!("unreachable from {cont}")).await;
                }
                assert!(Instant::now() < deadline, "the service stayed unreachable: {e}")
            }
        }
    }
    assert_eq!(hits.len(), 3, "all three replicas (now on w0) answer: {hits:?}");

    // Scale down: the removed replica gets no new connection, and its Instance IP leads
    // nowhere any more (the root released it).
    let s = h.admin.service(&server).await.unwrap();
    let gone_ip = s.instance_list.iter().find(|i| i.instance_number == 2).unwrap().instance_ip.clone().unwrap();
    let scaled = Instant::now();
    h.admin.scale(&server, 2).await.unwrap();
    h.wait_for(&server, 30, "2 replicas", running(2)).await;
    // Within the root's reconcile interval (2 s) and the push down, new connections stop reaching it.
    // Six answers in a row, none from replica 2: the round robin no longer includes it (a
    // failed fetch may be one routed to replica 2 while it stops, so it does not count).
    loop {
        let recent: Vec<Result<String, String>> = (0..6).map(|_| fetch_from(&cont, "http://10.30.40.40/")).collect();
        if recent.iter().all(|r| r.as_ref().is_ok_and(|p| p != "from-instance-2")) {
            break;
        }
        assert!(scaled.elapsed() < Duration::from_secs(6), "replica 2 still reached: {recent:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut hits: BTreeMap<String, u32> = BTreeMap::new();
    while hits.values().sum::<u32>() < 20 {
        match fetch_from(&cont, "http://10.30.40.40/") {
            Ok(page) => *hits.entry(page).or_default() += 1,
            Err(e) => assert!(Instant::now() < deadline, "the service became unreachable: {e}"),
        }
    }
    assert!(!hits.contains_key("from-instance-2"), "the removed replica still answers: {hits:?}");
    assert!(fetch_from(&cont, &format!("http://{gone_ip}/")).is_err(), "{gone_ip} still leads somewhere");

    // Cleanup. The killed worker comes back: it removes what it ran before and sets its
    // network up afresh. Then undeploy: no instance veth or port rule remains anywhere, and
    // once the workers stop, nothing of ours at all.
    h.workers[victim_idx] = h.spawn_worker(victim_idx);
    undeploy_cleanly(&h, &a.id.to_string()).await;
    for i in 0..2 {
        let (netns, _) = h.host(i);
        h.workers[i].stop();
        let left = leftovers(&netns);
        assert!(left.is_empty(), "left on {netns} after its worker stopped: {left:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reaches_a_service_in_another_cluster() {
    if !common::can_run_containers("overlay") {
        return;
    }
    let mut h = Hierarchy::start("ovc", 1).await;
    let (port, mqtt) = (common::free_port(), common::free_port());
    let (_b, token) = h.spawn_cluster("cl-ovc-b", port, mqtt, 500).await;
    let w = h.spawn_worker_to(1, port, &token);
    h.workers.push(w);
    let deadline = Instant::now() + Duration::from_secs(30);
    while h.admin.clusters(true).await.unwrap().iter().map(|c| c.active_nodes).sum::<u32>() < 2 {
        assert!(Instant::now() < deadline, "the second cluster did not join");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut server = service("server", SERVER, json!({"constraints": [{"type": "direct", "cluster": "cl-ovc-b"}]}));
    server["addresses"] = json!({"rr_ip": "10.30.50.50"});
    let client =
        service("client", "exec sleep 100000", json!({"constraints": [{"type": "direct", "cluster": "cl-ovc"}]}));
    let Pair { client, server, c, s, .. } = deploy_pair(&h, "multi", client, server).await;
    assert_ne!(s.instance_list[0].cluster_id, c.instance_list[0].cluster_id, "the two run in different clusters");
    let cont = container_of(&h, &client, 0);
    assert_eq!(fetch_from(&cont, "http://10.30.50.50/").unwrap(), "from-instance-0");
    let log = log_of(&h, &server, 0).await;
    let client_ip = c.instance_list[0].instance_ip.clone().unwrap();
    assert!(log.contains(&format!("[::ffff:{client_ip}]:")), "server log does not name {client_ip}:\n{log}");
}

/// A client on one worker asks the server on the other for a marked path, over and over,
/// while the root namespace (the underlay between the two hosts) is watched. Returns the
/// tunnel datagrams seen and whether any of them held the marker.
async fn watch_the_underlay(tag: &str, worker_args: &[&str]) -> (Vec<Vec<u8>>, bool) {
    const MARKER: &str = "oak-marker-4f1c9e-never-in-clear";
    let args: Vec<String> = worker_args.iter().map(|s| s.to_string()).collect();
    let h = Hierarchy::start_with_workers(tag, vec![args.clone(), args], 2000).await;
    let (w0, w1) = (format!("{tag}-w0"), format!("{tag}-w1"));
    let mut server = service("server", SERVER, on(&w1));
    server["addresses"] = json!({"rr_ip": "10.30.31.31"});
    let fetch = format!(
        "while true; do wget -q -O - http://10.30.31.31/{MARKER}; wget -q -O - http://10.30.31.31/ && echo; sleep 0.2; done"
    );
    let client = service("client", &fetch, on(&w0));
    let Pair { app, client, .. } = deploy_pair(&h, "underlay", client, server).await;
    // Traffic flows (the page arrives) before the watch starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log_of(&h, &client, 0).await.contains("from-instance-0") {
        assert!(Instant::now() < deadline, "the client never got the page");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let seen = tokio::task::spawn_blocking(|| {
        common::capture::udp_payloads(oak_api::net::TUNNEL_PORT, Duration::from_secs(3))
    })
    .await
    .unwrap();
    let clear = seen.iter().any(|p| common::capture::contains(p, MARKER.as_bytes()));
    undeploy_cleanly(&h, &app).await;
    (seen, clear)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_crosses_the_underlay_in_clear() {
    if !common::can_run_containers("overlay") {
        return;
    }
    // Encrypted (the default): WireGuard data messages (type 4), never the marker.
    let (seen, clear) = watch_the_underlay("enc", &[]).await;
    assert!(seen.len() >= 10, "only {} tunnel datagrams in 3 s", seen.len());
    assert!(!clear, "the marker crossed the underlay in clear");
    let data = seen.iter().filter(|p| p.len() >= 32 && p[..4] == [4, 0, 0, 0]).count();
    assert!(data * 2 >= seen.len(), "{data} of {} datagrams are WireGuard data messages", seen.len());
    // The same with the tunnel in plaintext: the watch does see the marker, so the check
    // above could fail.
    let (seen, clear) = watch_the_underlay("pln", &["--tunnel-encryption", "off"]).await;
    assert!(!seen.is_empty() && clear, "with --tunnel-encryption off the marker should be visible");
}
