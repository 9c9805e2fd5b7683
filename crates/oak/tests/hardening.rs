//! What a local user or a worker holding the shared worker token must not be able to do:
//! read the tiers' secrets, take the cluster's own MQTT session, take another worker's
//! identity, or make the cluster count numbers no machine has.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{OAK, Proc, RootProcess, free_port};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// Runs `oak <args>` expecting it to refuse to start; returns what it printed.
fn refused(args: &[&str], dir: &Path) -> String {
    let out = Command::new(OAK)
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("OAK_CLUSTER_TOKEN", "t")
        .env("OAK_WORKER_TOKEN", "t")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success(), "oak {args:?} started over a loose data dir");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dirs_are_private_and_loose_ones_are_refused() {
    let tmp = common::tempdir();
    // Created by the root itself, missing parents included.
    let dir = tmp.path().join("new/root");
    let mut root = RootProcess::start_in(&dir, None).await;
    root.kill();
    assert_eq!(mode(&dir), 0o700);
    for f in ["root.redb", "cluster-token"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let root_args = ["root", "--listen", listen.as_str()];

    chmod(&dir, 0o755);
    let e = refused(&root_args, &dir);
    assert!(e.contains(&dir.display().to_string()) && e.contains("0755") && e.contains("chmod 700"), "{e}");
    chmod(&dir, 0o700);
    chmod(&dir.join("root.redb"), 0o644);
    let e = refused(&root_args, &dir);
    assert!(e.contains("root.redb") && e.contains("0644") && e.contains("chmod 600"), "{e}");
    chmod(&dir.join("root.redb"), 0o600);

    // The cluster's and the worker's stores alike.
    let cdir = tmp.path().join("cluster");
    std::fs::create_dir(&cdir).unwrap();
    chmod(&cdir, 0o750);
    let e = refused(&["cluster", "--root", "http://127.0.0.1:1", "--name", "c", "--listen", &listen], &cdir);
    assert!(e.contains(&cdir.display().to_string()) && e.contains("0750"), "{e}");
    let wdir = tmp.path().join("worker");
    std::fs::create_dir(&wdir).unwrap();
    chmod(&wdir, 0o700);
    std::fs::write(wdir.join("node-secret"), "s").unwrap();
    chmod(&wdir.join("node-secret"), 0o644);
    let e = refused(&["worker", "--cluster", "http://127.0.0.1:1", "--no-overlay"], &wdir);
    assert!(e.contains("node-secret") && e.contains("0644"), "{e}");
}

/// A root and a cluster (no workers); the cluster's registration URL, MQTT port and token.
async fn root_and_cluster(tmp: &Path) -> (RootProcess, Proc, String, u16, String) {
    let root = RootProcess::start_in(&tmp.join("root"), None).await;
    let token = std::fs::read_to_string(root.data_dir.join("cluster-token")).unwrap();
    let (port, mqtt) = (free_port(), free_port());
    let dir = tmp.join("cluster");
    let p = Proc(Some(
        Command::new(OAK)
            .args(["cluster", "--root", &root.url, "--name", "c1"])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--mqtt-listen", &format!("127.0.0.1:{mqtt}")])
            .arg("--data-dir")
            .arg(&dir)
            .env("OAK_CLUSTER_TOKEN", token.trim())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let url = format!("https://127.0.0.1:{port}/api/node/register");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "the cluster did not start");
        if let Ok(t) = std::fs::read_to_string(dir.join("worker-token"))
            && t.starts_with("K10")
            && common::pinned_http(common::token_pin(&t)).post(&url).send().await.is_ok()
        {
            return (root, p, url, mqtt, t.trim().to_owned());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn registration(extra: serde_json::Value) -> serde_json::Value {
    let mut r = serde_json::json!({
        "name": "w", "ip": "127.0.0.1", "arch": "amd64", "runtimes": ["container"],
        "cpu_cores": 2.0, "memory_mb": 2048, "session": "s1",
    });
    for (k, v) in extra.as_object().unwrap() {
        r[k] = v.clone();
    }
    r
}

async fn register(url: &str, token: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let r =
        common::pinned_http(common::token_pin(token)).post(url).bearer_auth(token).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

/// An MQTT 3.1.1 CONNECT as `user`; what the guard answers (empty: it closed).
async fn mqtt_login(port: u16, pin: [u8; 32], client_id: &str, user: &str, password: &str) -> Vec<u8> {
    let s = |x: &str| [(x.len() as u16).to_be_bytes().to_vec(), x.as_bytes().to_vec()].concat();
    let mut body = s("MQTT");
    body.extend([4, 0xc2, 0, 5]);
    body.extend(s(client_id));
    body.extend(s(user));
    body.extend(s(password));
    let mut c = common::tls_connect(port, pin).await;
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let b = (len % 128) as u8;
        len /= 128;
        packet.push(if len > 0 { b | 0x80 } else { b });
        if len == 0 {
            break;
        }
    }
    packet.extend(body);
    c.write_all(&packet).await.unwrap();
    let mut out = vec![0u8; 4];
    match tokio::time::timeout(Duration::from_secs(8), c.read_exact(&mut out)).await {
        Ok(Ok(_)) => out,
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_token_does_not_make_a_worker_the_cluster_or_another_worker() {
    let tmp = common::tempdir();
    let (_root, _cluster, url, mqtt, token) = root_and_cluster(tmp.path()).await;

    // The cluster's own MQTT name, or anything but an id the cluster issued.
    for id in ["oak-cluster", "my-worker", "../x"] {
        let (status, body) = register(&url, &token, registration(serde_json::json!({"node_id": id}))).await;
        assert_eq!(status, 422, "{id}: {body}");
        assert_eq!(body["violations"][0]["field"], "node_id", "{body}");
    }

    // A new worker gets an id and a secret.
    let (status, victim) = register(&url, &token, registration(serde_json::json!({}))).await;
    assert_eq!(status, 200, "{victim}");
    let id = victim["id"].as_str().unwrap().to_owned();
    let secret = victim["node_secret"].as_str().unwrap().to_owned();
    assert!(oak_api::node::valid_node_id(&id), "{id}");

    // Another holder of the worker token cannot become it.
    for proof in [serde_json::json!({"node_id": id}), serde_json::json!({"node_id": id, "node_secret": "guess"})] {
        let (status, body) = register(&url, &token, registration(proof)).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["code"], "forbidden");
    }
    // The victim's credentials still log in; the cluster's own name never does.
    let ok = mqtt_login(
        mqtt,
        common::token_pin(&token),
        &format!("{id}-ne"),
        &id,
        victim["mqtt_password"].as_str().unwrap(),
    )
    .await;
    assert_eq!(ok, [0x20, 2, 0, 0], "the victim's login");
    let refused = mqtt_login(mqtt, common::token_pin(&token), "oak-cluster", "oak-cluster", "anything").await;
    assert_ne!(refused.get(3), Some(&0), "logged in as the cluster: {refused:?}");

    // The worker itself, with its secret, is the same node again (and keeps its secret).
    let (status, again) =
        register(&url, &token, registration(serde_json::json!({"node_id": id, "node_secret": secret}))).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["id"], id.as_str());
    assert!(again.get("node_secret").is_none(), "{again}");

    // An id this cluster never issued (another cluster's worker's, which tenants can see) is
    // not given back, with or without a secret of the caller's choosing: a new id and secret.
    let foreign = "0b2c6f0e-3c4d-4e5f-8a9b-0c1d2e3f4a5b";
    for claim in
        [serde_json::json!({"node_id": foreign}), serde_json::json!({"node_id": foreign, "node_secret": "mine"})]
    {
        let (status, body) = register(&url, &token, registration(claim)).await;
        assert_eq!(status, 200, "{body}");
        let new = body["id"].as_str().unwrap();
        assert!(new != foreign && new != id && oak_api::node::valid_node_id(new), "{body}");
        assert!(body["node_secret"].as_str().is_some_and(|s| s != "mine"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_with_impossible_numbers_or_duplicate_keys_are_refused_by_field() {
    let tmp = common::tempdir();
    let (_root, _cluster, url, _mqtt, token) = root_and_cluster(tmp.path()).await;
    for (extra, field) in [
        (serde_json::json!({"cpu_cores": 1.7e308}), "cpu_cores"),
        (serde_json::json!({"cpu_cores": 0}), "cpu_cores"),
        (serde_json::json!({"memory_mb": u64::MAX}), "memory_mb"),
        (serde_json::json!({"gpus": 4_000_000}), "gpus"),
        (serde_json::json!({"name": "a\u{7}b"}), "name"),
        (serde_json::json!({"location": "91,0"}), "location"),
        (serde_json::json!({"ip": "not an address"}), "ip"),
        (serde_json::json!({"cpu_cores": "many"}), "cpu_cores"),
    ] {
        let (status, body) = register(&url, &token, registration(extra.clone())).await;
        assert_eq!(status, 422, "{extra}: {body}");
        assert_eq!(body["violations"][0]["field"], field, "{extra}: {body}");
    }
    let dup = r#"{"name":"w","name":"x","ip":"127.0.0.1","arch":"amd64","runtimes":[],"cpu_cores":1,"memory_mb":1}"#;
    let r = common::pinned_http(common::token_pin(&token))
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(dup)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["violations"][0]["field"], "name", "{body}");
    // Too big: the error shape, not plain text.
    let r = common::pinned_http(common::token_pin(&token))
        .post(&url)
        .bearer_auth(&token)
        .body(vec![b' '; 32 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "payload_too_large");
}

fn body(v: &serde_json::Value) -> Option<Vec<u8>> {
    Some(serde_json::to_vec(v).unwrap())
}

/// A login from `from` (any 127.0.0.0/8 address reaches a root on 127.0.0.1).
async fn login_from(root: &RootProcess, from: [u8; 4], user: &str, password: &str) -> u16 {
    let tls = oak_tls::pki::pinned_client_config(root.ca_hash.unwrap()).unwrap();
    let c = oak_tls::http_client_trusting(&tls).local_address(std::net::IpAddr::from(from)).build().unwrap();
    let r = c
        .post(format!("{}/api/auth/login", root.url))
        .json(&serde_json::json!({"username": user, "password": password}))
        .send()
        .await
        .unwrap();
    r.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_bounded_and_an_attacker_elsewhere_cannot_lock_out_admin() {
    let root = RootProcess::start().await;
    // Names and passwords are bounded before anything is stored or hashed.
    let r = root
        .raw(
            reqwest::Method::POST,
            "/api/auth/login",
            None,
            body(&serde_json::json!({"username": "a".repeat(1 << 20), "password": "x"})),
        )
        .await;
    assert_eq!((r.0, r.1["code"].as_str()), (413, Some("payload_too_large")), "{}", r.1);
    let huge = "a".repeat(100_000);
    let r = root
        .raw(
            reqwest::Method::POST,
            "/api/auth/login",
            None,
            body(&serde_json::json!({"username": huge, "password": "x"})),
        )
        .await;
    assert_eq!((r.0, r.1["violations"][0]["field"].as_str()), (422, Some("username")), "{}", r.1);
    let r = root
        .raw(
            reqwest::Method::POST,
            "/api/auth/login",
            None,
            body(&serde_json::json!({"username": "Admin", "password": "p".repeat(4096)})),
        )
        .await;
    assert_eq!((r.0, r.1["violations"][0]["field"].as_str()), (422, Some("password")), "{}", r.1);

    // Five wrong passwords from one address lock out that address only.
    for _ in 0..5 {
        assert_eq!(login_from(&root, [127, 0, 0, 2], "Admin", "wrong").await, 401);
    }
    assert_eq!(login_from(&root, [127, 0, 0, 2], "Admin", "Admin").await, 429);
    assert_eq!(login_from(&root, [127, 0, 0, 1], "Admin", "Admin").await, 200, "the owner, elsewhere");
    let tls = oak_tls::pki::pinned_client_config(root.ca_hash.unwrap()).unwrap();
    let r = oak_tls::http_client_trusting(&tls)
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap()
        .post(format!("{}/api/auth/login", root.url))
        .json(&serde_json::json!({"username": "admin", "password": "Admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429, "the name counts without regard to case");
    assert!(r.headers().get("retry-after").is_some(), "429 without Retry-After");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_with_duplicate_keys_and_names_differing_in_case_are_refused() {
    let root = RootProcess::start().await;
    // The last key would win: a login as Admin with "nobody"'s name first.
    let dup = br#"{"username":"nobody","username":"Admin","password":"Admin"}"#.to_vec();
    let (s, b) = root.raw(reqwest::Method::POST, "/api/auth/login", None, Some(dup)).await;
    assert_eq!(
        (s, b["code"].as_str(), b["violations"][0]["field"].as_str()),
        (400, Some("malformed_json"), Some("username"))
    );
    let t = root.admin().await.token().unwrap().to_owned();
    let nested = br#"{"sla_version":"v2.0","customerID":"Admin","applications":[{"applicationID":"","application_name":"a","application_name":"b","application_namespace":"n","application_desc":"","microservices":[]}]}"#;
    let (s, b) = root.raw(reqwest::Method::POST, "/api/application", Some(&t), Some(nested.to_vec())).await;
    assert_eq!((s, b["violations"][0]["field"].as_str()), (400, Some("applications[0].application_name")), "{b}");

    // An array is not an object, even when its elements line up with the fields.
    let (s, b) = root
        .raw(reqwest::Method::PUT, "/api/user/Admin", Some(&t), body(&serde_json::json!([null, "pw-1234567"])))
        .await;
    assert_eq!((s, b["violations"][0]["field"].as_str()), (422, Some("body")), "{b}");

    // ADMIN is Admin.
    let reg = |name: &str| serde_json::json!({"name": name, "email": "", "password": "pw-12345", "roles": ["Application_Provider"]});
    let (s, b) = root.raw(reqwest::Method::POST, "/api/auth/register", Some(&t), body(&reg("ADMIN"))).await;
    assert_eq!((s, b["code"].as_str()), (409, Some("conflict")), "{b}");
    let (s, _) = root.raw(reqwest::Method::POST, "/api/auth/register", Some(&t), body(&reg("Carol"))).await;
    assert_eq!(s, 200);
    let (s, _) = root.raw(reqwest::Method::POST, "/api/auth/register", Some(&t), body(&reg("carol"))).await;
    assert_eq!(s, 409);
    // Control characters in names, images, commands and environment values.
    let (s, b) = root.raw(reqwest::Method::POST, "/api/auth/register", Some(&t), body(&reg("eve\n"))).await;
    assert_eq!((s, b["violations"][0]["field"].as_str()), (422, Some("name")), "{b}");
    for (field, value) in [
        ("code", serde_json::json!("docker.io/library/busybox:latest\u{1b}[2J")),
        ("cmd", serde_json::json!(["sh", "-c", "echo\u{0}"])),
        ("environment", serde_json::json!(["A=b\u{7}"])),
    ] {
        let mut s = common::sla("ctl", "n", &[("x", None)]);
        s["applications"][0]["microservices"][0][field] = value;
        let (st, b) = root.raw(reqwest::Method::POST, "/api/application", Some(&t), body(&s)).await;
        assert_eq!(st, 422, "{field}: {b}");
        assert!(b["violations"][0]["field"].as_str().unwrap().contains(field), "{b}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_has_the_json_shape_and_names_its_field() {
    let root = RootProcess::start().await;
    let t = root.admin().await.token().unwrap().to_owned();
    let mut s = common::sla("shape", "n", &[("x", None)]);
    // More replicas than any service may have, on every path.
    s["applications"][0]["microservices"][0]["replicas"] = serde_json::json!(1_000_000_000u64);
    let (st, b) = root.raw(reqwest::Method::POST, "/api/application", Some(&t), body(&s)).await;
    assert_eq!(st, 422, "{b}");
    assert!(b["violations"][0]["field"].as_str().unwrap().ends_with("replicas"), "{b}");
    s["applications"][0]["microservices"][0]["replicas"] = serde_json::json!(1);
    let (st, b) = root.raw(reqwest::Method::POST, "/api/application", Some(&t), body(&s)).await;
    assert_eq!(st, 200, "{b}");
    let (_, svcs) = root.raw(reqwest::Method::GET, "/api/services", Some(&t), None).await;
    let id = svcs[0]["microserviceID"].as_str().unwrap().to_owned();
    let replicas = format!("/api/service/{id}/replicas");
    for (v, want) in [(serde_json::json!({"replicas": 1.5}), 422), (serde_json::json!({"replicas": 20_000}), 422)] {
        let (st, b) = root.raw(reqwest::Method::PUT, &replicas, Some(&t), body(&v)).await;
        assert_eq!((st, b["violations"][0]["field"].as_str()), (want, Some("replicas")), "{v}: {b}");
    }
    // A bad query string, a path that is not UTF-8, the cluster link without an upgrade.
    let (st, b) =
        root.raw(reqwest::Method::GET, &format!("/api/service/{id}/instance/0/logs?max=lots"), Some(&t), None).await;
    assert_eq!(
        (st, b["code"].as_str(), b["violations"][0]["field"].as_str()),
        (422, Some("invalid_field"), Some("max")),
        "{b}"
    );
    let (st, b) = root.raw(reqwest::Method::GET, "/api/user/%FF%FE", Some(&t), None).await;
    assert!(st == 400 && b["code"] == "bad_request", "{st} {b}");
    let token = std::fs::read_to_string(root.data_dir.join("cluster-token")).unwrap();
    let (st, b) = root.raw(reqwest::Method::GET, "/api/cluster/link", Some(token.trim()), None).await;
    assert!(st == 400 && b["code"] == "bad_request", "{st} {b}");
    let (st, b) = root.raw(reqwest::Method::GET, "/api/cluster/link", None, None).await;
    assert!(st == 401 && b["code"] == "unauthenticated", "{st} {b}");
}
