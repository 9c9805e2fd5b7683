//! End to end, as a user sees it: a root, a cluster and workers (each in its own network
//! namespace) running real containers through containerd. Needs root and containerd (CI has
//! both); elsewhere the tests say why they skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Hierarchy, app, service};
use oak_api::Status;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

fn all(status: Status) -> impl Fn(&[oak_api::model::Instance]) -> bool {
    move |is| !is.is_empty() && is.iter().all(|i| i.status == status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_two_services_then_delete_leaves_nothing() {
    if !common::can_run_containers("deploy") {
        return;
    }
    let h = Hierarchy::start("dep", 2).await;
    let created = h
        .admin
        .create_applications(&app(
            "web",
            vec![
                service(
                    "server",
                    "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 80 -h /www",
                    48,
                    0.5,
                    json!({}),
                ),
                service("client", "while true; do echo tick from $HOSTNAME; sleep 1; done", 16, 0.2, json!({})),
            ],
        ))
        .await
        .unwrap();
    let app = created.into_iter().find(|a| a.application_name == "web").unwrap();
    let (server, client) = (app.microservices[0].to_string(), app.microservices[1].to_string());
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(common::OAK)
            .args(args)
            .env("OAK_ROOT", &h.root.url)
            .env("OAK_TOKEN", h.admin.token().unwrap())
            .env("OAK_CA_HASH", oak_tls::pki::hex(&h.root.ca_hash.unwrap()))
            .env("XDG_CONFIG_HOME", h.worker_dir(0))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "oak {args:?}: {}\n{text}", String::from_utf8_lossy(&out.stderr));
        text
    };
    // `oak service deploy` follows the instance until it runs.
    let progress = cli(&["service", "deploy", &server]);
    assert!(progress.contains("RUNNING"), "{progress}");
    h.admin.request_instance(&client).await.unwrap();
    for s in [&server, &client] {
        h.wait_for(s, 60, "both services RUNNING at the root", all(Status::Running)).await;
    }
    let placed = h.admin.service(&server).await.unwrap().instance_list[0].clone();
    assert!(h.worker_names.contains(placed.worker_name.as_ref().unwrap()), "{placed:?}");
    assert!(placed.host_ip.as_deref().unwrap().starts_with("10."), "the worker's own address: {placed:?}");

    // The containers exist with the SLA's limits.
    let mut containers = h.containers();
    containers.sort();
    // Container ids are `<service>-<instance>-<node id prefix>`.
    let cid = |svc: &str, worker: &Option<String>| format!("{svc}-0-{}", &worker.as_deref().unwrap()[..8]);
    let client_placed = h.admin.service(&client).await.unwrap().instance_list[0].clone();
    let (server_c, client_c) = (cid(&server, &placed.worker_id), cid(&client, &client_placed.worker_id));
    let mut expected = vec![server_c.clone(), client_c.clone()];
    expected.sort();
    assert_eq!(containers, expected);
    let cg = |ctrl: &str, id: &str, file: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{ctrl}/oak/{id}/{file}")).unwrap().trim().to_owned()
    };
    assert_eq!(cg("memory", &server_c, "memory.limit_in_bytes"), (48u64 << 20).to_string());
    assert_eq!(cg("cpu", &server_c, "cpu.cfs_quota_us"), "50000");
    assert_eq!(cg("memory", &client_c, "memory.limit_in_bytes"), (16u64 << 20).to_string());
    assert_eq!(cg("cpu", &client_c, "cpu.cfs_quota_us"), "20000");

    // Logs travel worker → cluster → root.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let l = h.admin.logs(&client, 0, None, 4096).await.unwrap();
        if l.text.contains("tick from instance-0") {
            break;
        }
        assert!(Instant::now() < deadline, "no output in the log: {l:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let logs = cli(&["logs", &client]);
    assert!(logs.contains("tick from instance-0"), "{logs}");
    let list = cli(&["instance", "list"]);
    assert!(list.contains("server.e2e") && list.contains("client.e2e") && list.contains("RUNNING"), "{list}");

    // Deleting the application removes every container, snapshot, namespace and log.
    h.admin.delete_application(app.id.as_str()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let netns_left: Vec<String> = [&server_c, &client_c]
            .iter()
            .map(|c| format!("/run/netns/oak-{c}"))
            .filter(|p| Path::new(p).exists())
            .collect();
        let logs_left: Vec<String> = (0..2)
            .flat_map(|i| std::fs::read_dir(h.worker_dir(i).join("logs")).into_iter().flatten().flatten())
            .map(|e| e.path().display().to_string())
            .collect();
        let (c, s) = (h.containers(), h.instance_snapshots());
        if c.is_empty() && s.is_empty() && netns_left.is_empty() && logs_left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: containers {c:?}, snapshots {s:?}, netns {netns_left:?}, logs {logs_left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_rules_exits_and_bad_images() {
    if !common::can_run_containers("scheduling") {
        return;
    }
    let h = Hierarchy::start("sch", 2).await;
    let mem_total: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap()
        / 1024;
    let sixty = mem_total * 6 / 10;
    let target = h.worker_names[1].clone();
    let created = h
        .admin
        .create_applications(&app(
            "rules",
            vec![
                service(
                    "pinned",
                    "sleep 3600",
                    16,
                    0.1,
                    json!({"constraints": [{"type": "direct", "node": format!("nothere;{target}")}]}),
                ),
                service("big", "sleep 3600", sixty, 0.1, json!({})),
                service("once", "echo done", 16, 0.1, json!({"one_shot": true})),
                service("crash", "echo crashing; exit 1", 16, 0.1, json!({})),
                json!({"microservice_name": "missing", "microservice_namespace": "e2e", "virtualization": "container",
                   "code": "oak.local/nope:1", "cmd": ["true"], "memory": 16, "vcpus": 0.1}),
            ],
        ))
        .await
        .unwrap();
    let app = created.into_iter().find(|a| a.application_name == "rules").unwrap();
    let id = |i: usize| app.microservices[i].to_string();
    let (pinned, big, once, crash, missing) = (id(0), id(1), id(2), id(3), id(4));
    for s in [&pinned, &once, &crash, &missing] {
        h.admin.request_instance(s).await.unwrap();
    }
    for _ in 0..3 {
        h.admin.request_instance(&big).await.unwrap();
    }

    // A direct node constraint lands on that worker.
    let s = h.wait_for(&pinned, 60, "pinned RUNNING", all(Status::Running)).await;
    assert_eq!(s.instance_list[0].worker_name.as_deref(), Some(target.as_str()));

    // Three requests for 60 % of a worker's memory never share a worker: two run, on
    // different workers; the third waits with a reason.
    let s = h
        .wait_for(&big, 60, "two big instances RUNNING and one refused", |is| {
            is.iter().filter(|i| i.status == Status::Running).count() == 2
                && is.iter().filter(|i| i.status.is_negative_scheduling()).count() == 1
        })
        .await;
    let workers: std::collections::BTreeSet<_> =
        s.instance_list.iter().filter(|i| i.status == Status::Running).map(|i| i.worker_name.clone()).collect();
    assert_eq!(workers.len(), 2, "{:#?}", s.instance_list);
    let refused = s.instance_list.iter().find(|i| i.status.is_negative_scheduling()).unwrap();
    assert!(refused.status_detail.contains(&format!("less than {sixty} MiB memory free")), "{}", refused.status_detail);

    // one_shot exit 0: COMPLETED, and it stays so.
    h.wait_for(&once, 60, "one_shot COMPLETED", all(Status::Completed)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    h.wait_for(&once, 1, "one_shot still COMPLETED", all(Status::Completed)).await;

    // Exit 1: DEAD, then placed again.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen_dead = false;
    loop {
        let st = h.admin.service(&crash).await.unwrap().instance_list[0].clone();
        if st.status == Status::Dead {
            assert!(st.status_detail.starts_with("exited with code 1; placed again in"), "{}", st.status_detail);
            seen_dead = true;
        } else if seen_dead && matches!(st.status, Status::NodeScheduled | Status::Creating | Status::Running) {
            break;
        }
        assert!(Instant::now() < deadline, "crash: seen DEAD {seen_dead}, now {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // An image that does not exist: FAILED, and the detail names the image.
    let s = h.wait_for(&missing, 60, "missing image FAILED", all(Status::Failed)).await;
    assert!(s.instance_list[0].status_detail.contains("oak.local/nope:1"), "{}", s.instance_list[0].status_detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_is_the_same_node_and_cleans_up() {
    if !common::can_run_containers("restart") {
        return;
    }
    let mut h = Hierarchy::start("rst", 1).await;
    let created =
        h.admin.create_applications(&app("keep", vec![service("s", "sleep 3600", 16, 0.1, json!({}))])).await.unwrap();
    let svc = created.into_iter().find(|a| a.application_name == "keep").unwrap().microservices[0].to_string();
    h.admin.request_instance(&svc).await.unwrap();
    let before = h.wait_for(&svc, 60, "RUNNING", all(Status::Running)).await.instance_list[0].clone();
    let node_id = std::fs::read_to_string(h.worker_dir(0).join("node-id")).unwrap();

    let task_pid = |h: &Hierarchy| -> Option<String> {
        let out = std::process::Command::new("ctr").args(["-n", &h.ns, "tasks", "ls"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with(&format!("{svc}-0")) && l.contains("RUNNING"))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
    };
    let old_pid = task_pid(&h).expect("a running task");

    // SIGKILL: the worker gets no chance to clean up; its container stays behind.
    h.workers[0].kill();
    assert_eq!(h.containers().len(), 1);
    let w = h.spawn_worker(0);
    h.workers[0] = w;
    // Same node, and eventually the instance runs again (its old container was removed).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = h.admin.service(&svc).await.unwrap();
        let clusters = h.admin.clusters(false).await.unwrap();
        let i = &s.instance_list[0];
        let pid = task_pid(&h);
        let replaced = pid.as_ref().is_some_and(|p| *p != old_pid);
        if replaced
            && i.status == Status::Running
            && clusters[0].workers == 1
            && h.containers().len() == 1
            && i.worker_id == before.worker_id
        {
            break;
        }
        assert!(Instant::now() < deadline, "after restart: {i:?}, workers {}", clusters[0].workers);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(std::fs::read_to_string(h.worker_dir(0).join("node-id")).unwrap(), node_id);
}

/// Connects to the broker and returns how the connection attempt ended.
async fn mqtt_connect(port: u16, pin: [u8; 32], client_id: &str, creds: Option<(&str, &str)>) -> Result<(), String> {
    let mut opts = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
    let tls = oak_tls::pki::pinned_client_config(pin).unwrap();
    opts.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls)));
    if let Some((u, p)) = creds {
        opts.set_credentials(u, p);
    }
    let (_c, mut ev) = rumqttc::AsyncClient::new(opts, 10);
    match tokio::time::timeout(Duration::from_secs(5), ev.poll()).await {
        Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a))))
            if a.code == rumqttc::ConnectReturnCode::Success =>
        {
            Ok(())
        }
        Ok(other) => Err(format!("{other:?}")),
        Err(_) => Err("timeout".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_refuses_anonymous_and_foreign_clients() {
    if !common::can_run_containers("broker") {
        return;
    }
    let h = Hierarchy::start("mqt", 1).await;
    assert!(mqtt_connect(h.mqtt_port, h.cluster_pin(), "anon", None).await.is_err(), "anonymous");
    assert!(mqtt_connect(h.mqtt_port, h.cluster_pin(), "x-ne", Some(("x", "guess"))).await.is_err(), "unknown user");
    // A worker's own credentials work only with its own client id.
    let token = std::fs::read_to_string(h.worker_dir(0).join("node-id")).unwrap();
    assert!(
        mqtt_connect(h.mqtt_port, h.cluster_pin(), &format!("{token}-ne"), Some((&token, "wrong"))).await.is_err(),
        "wrong password"
    );
    // Registration needs the worker token.
    let register = |token: String| {
        common::pinned_http(h.cluster_pin())
            .post(format!("https://127.0.0.1:{}/api/node/register", h.cluster_port()))
            .bearer_auth(token)
            .json(&json!({"name": "nosy", "ip": "1.2.3.4", "arch": "amd64", "runtimes": [], "cpu_cores": 1.0, "memory_mb": 1, "session": "s"}))
            .send()
    };
    assert_eq!(register("not-the-token".into()).await.unwrap().status(), 401);

    // A registered worker (with the worker token) gets its own MQTT credentials; with them it
    // can subscribe and publish only under its own nodes/<id>/ (the cluster's guard).
    let reg: serde_json::Value = register(h.worker_token().to_owned()).await.unwrap().json().await.unwrap();
    let (id, pw) = (reg["id"].as_str().unwrap().to_owned(), reg["mqtt_password"].as_str().unwrap().to_owned());
    assert_eq!(reg["mqtt_tls"], true, "{reg}");
    let mut opts = rumqttc::MqttOptions::new(format!("{id}-ne"), "127.0.0.1", h.mqtt_port);
    opts.set_credentials(id.clone(), pw);
    let tls = oak_tls::pki::pinned_client_config(h.cluster_pin()).unwrap();
    opts.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls)));
    let (c, mut ev) = rumqttc::AsyncClient::new(opts, 10);
    let other = token.trim().to_owned();
    c.subscribe(format!("nodes/{id}/control/#"), rumqttc::QoS::AtLeastOnce).await.unwrap();
    c.subscribe(format!("nodes/{other}/control/#"), rumqttc::QoS::AtLeastOnce).await.unwrap();
    c.subscribe("nodes/+/information", rumqttc::QoS::AtLeastOnce).await.unwrap();
    let mut acks = Vec::new();
    while acks.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(5), ev.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(a)))) => acks.push(a.return_codes),
            Ok(Ok(_)) => {}
            other => panic!("no SUBACK: {other:?}"),
        }
    }
    use rumqttc::SubscribeReasonCode::{Failure, Success};
    assert!(matches!(acks[0][..], [Success(_)]), "its own topics: {acks:?}");
    assert_eq!(acks[1], vec![Failure], "another worker's topics");
    assert_eq!(acks[2], vec![Failure], "everyone's reports");
    // Publishing as another worker ends the connection.
    c.publish(format!("nodes/{other}/job"), rumqttc::QoS::AtLeastOnce, false, b"{}".to_vec()).await.unwrap();
    let closed = async {
        loop {
            if ev.poll().await.is_err() {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the guard closes a connection that publishes as another worker");
}
