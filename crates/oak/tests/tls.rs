//! TLS on the user API and on the root ↔ cluster link: by default with the root's own CA
//! (pinned by the hash in its K10 tokens), or with a certificate of the deployment's own CA;
//! clients trust exactly that CA; plain HTTP only behind `--insecure-plain-http`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{OAK, Proc, RootProcess, free_port};
use oak_client::RootClient;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ca(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(format!("{name}-ca.pem"))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_the_cluster_link_run_over_tls() {
    let tmp = common::tempdir();
    let dir = tmp.path();
    common::make_pki(dir, "good");
    common::make_pki(dir, "other");
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let _root = Proc(Some(
        Command::new(OAK)
            .args(["root", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir.join("root"))
            .arg("--tls-cert")
            .arg(dir.join("good-cert.pem"))
            .arg("--tls-key")
            .arg(dir.join("good-key.pem"))
            .env("RUST_LOG", common::log_level())
            .env_remove("OAK_ADMIN_PASSWORD")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let client = RootClient::with_ca(&url, &ca(dir, "good")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let login = loop {
        match client.login("Admin", "Admin").await {
            Ok(l) => break l,
            Err(e) => assert!(Instant::now() < deadline, "no HTTPS login: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let admin = RootClient::with_ca(&url, &ca(dir, "good")).unwrap().with_token(login.token);
    assert!(admin.applications().await.unwrap().is_empty());

    // A client that trusts another CA, or only the system's, refuses the root's certificate;
    // plain HTTP on the TLS port gets nowhere.
    let e = RootClient::with_ca(&url, &ca(dir, "other")).unwrap().login("Admin", "Admin").await.unwrap_err();
    assert!(matches!(e, oak_client::ClientError::Transport { .. }), "{e}");
    assert!(RootClient::new(&url).login("Admin", "Admin").await.is_err());
    assert!(RootClient::new(&format!("http://127.0.0.1:{port}")).login("Admin", "Admin").await.is_err());

    // The `oak` client with --ca.
    let out = Command::new(OAK)
        .args(["login", "--root", &url, "--ca"])
        .arg(dir.join("good-ca.pem"))
        .env("OAK_PASSWORD", "Admin")
        .env("XDG_CONFIG_HOME", dir.join("cfg"))
        .env("HOME", dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "oak login over TLS: {}", String::from_utf8_lossy(&out.stderr));

    // A cluster joins over wss:// with the root's CA; without it, it says why and never joins.
    let token = std::fs::read_to_string(dir.join("root/cluster-token")).unwrap();
    let spawn_cluster = |name: &str, with_ca: bool| {
        let mut cmd = Command::new(OAK);
        cmd.args(["cluster", "--root", &url, "--name", name])
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--mqtt-listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--data-dir")
            .arg(dir.join(name))
            // Without the CA file, the bare secret: a token that pins nothing.
            .env("OAK_CLUSTER_TOKEN", if with_ca { token.trim() } else { token.trim().rsplit("::").next().unwrap() })
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if with_ca {
            cmd.arg("--root-ca").arg(dir.join("good-ca.pem"));
        }
        cmd.spawn().unwrap()
    };
    let _ok = Proc(Some(spawn_cluster("secure", true)));
    let mut bad = spawn_cluster("nocert", false);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let names: Vec<String> = admin.clusters(false).await.unwrap().into_iter().map(|c| c.cluster_name).collect();
        if names.iter().any(|n| n == "secure") {
            assert!(!names.iter().any(|n| n == "nocert"), "a cluster without the CA joined: {names:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the cluster did not join over TLS: {names:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = bad.kill();
    let out = bad.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("--root-ca"), "the cluster does not say what is missing: {log}");
}

/// With no TLS flag at all the root serves HTTPS with a CA of its own, on any address; its
/// cluster token pins that CA. Plain HTTP needs the explicit flag.
#[tokio::test]
async fn tls_is_on_by_default_and_plain_http_needs_the_flag() {
    let root = RootProcess::start().await;
    assert!(root.url.starts_with("https://"), "{}", root.url);
    let token = std::fs::read_to_string(root.data_dir.join("cluster-token")).unwrap();
    assert!(token.starts_with("K10") && token.contains("::"), "{token}");
    // The pinned CA is the one in the data dir.
    let ca = std::fs::read(root.data_dir.join("ca.pem")).unwrap();
    assert_eq!(oak_tls::chain_pin(&ca).unwrap(), root.ca_hash);
    // A plain-HTTP request gets no answer; a client that trusts that CA file, or the hash, does.
    let plain = common::http().get(format!("http://{}/api/clusters", root.addr())).send().await;
    assert!(plain.is_err() || plain.is_ok_and(|r| !r.status().is_success()));
    assert!(oak_client::RootClient::with_ca(&root.url, &ca).unwrap().login("Admin", "Admin").await.is_ok());
    assert!(root.client().login("Admin", "Admin").await.is_ok());
    // A client with no CA is told why.
    let e = oak_client::RootClient::new(&root.url).login("Admin", "Admin").await.unwrap_err();
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");

    let tmp = common::tempdir();
    let refused = |extra: &[&str]| {
        let out = Command::new(OAK)
            .args(["root", "--listen", "127.0.0.1:1", "--data-dir"])
            .arg(tmp.path())
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(refused(&["--tls-cert", "/nonexistent.pem"]).contains("--tls-key"), "--tls-cert without --tls-key");
    let e = refused(&["--insecure-plain-http", "--tls-cert", "/x.pem", "--tls-key", "/y.pem"]);
    assert!(e.contains("contradict"), "{e}");
}

/// Starts `oak cluster NAME` towards `root_url` with `token`; its stderr is collected.
fn cluster_with_token(dir: &Path, name: &str, root_url: &str, token: &str, ports: (u16, u16)) -> std::process::Child {
    Command::new(OAK)
        .args(["cluster", "--root", root_url, "--name", name])
        .args(["--listen", &format!("127.0.0.1:{}", ports.0)])
        .args(["--mqtt-listen", &format!("127.0.0.1:{}", ports.1)])
        .arg("--data-dir")
        .arg(dir.join(name))
        .env("OAK_CLUSTER_TOKEN", token)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn cluster_names(root: &RootProcess) -> Vec<String> {
    root.admin().await.clusters(false).await.unwrap().into_iter().map(|c| c.cluster_name).collect()
}

/// The zero-configuration join: a K10 token is all a cluster needs to trust its root. A
/// wrong CA hash, or another server (a man in the middle with a CA of its own) holding a
/// copy of the token's address, is refused, and the cluster says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_k10_token_pins_the_root_and_nothing_else() {
    let tmp = common::tempdir();
    let root = RootProcess::start().await;
    let impostor = RootProcess::start().await;
    let token = std::fs::read_to_string(root.data_dir.join("cluster-token")).unwrap().trim().to_owned();
    let secret = token.rsplit("::").next().unwrap().to_owned();
    // The impostor takes the real root's secret, so only the certificate can tell them apart.
    let wrong_hash = format!("K10{}::{secret}", "00".repeat(32));

    // Six distinct ports: all held at once while chosen.
    let held: Vec<std::net::TcpListener> =
        (0..6).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let p: Vec<u16> = held.iter().map(|l| l.local_addr().unwrap().port()).collect();
    drop(held);
    let _good = Proc(Some(cluster_with_token(tmp.path(), "good", &root.url, &token, (p[0], p[1]))));
    let mut mitm = cluster_with_token(tmp.path(), "fooled", &impostor.url, &token, (p[2], p[3]));
    let mut wrong = cluster_with_token(tmp.path(), "wronghash", &root.url, &wrong_hash, (p[4], p[5]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cluster_names(&root).await.iter().any(|n| n == "good") {
        assert!(Instant::now() < deadline, "a cluster with the K10 token did not join");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Give the others time for several attempts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(cluster_names(&root).await, vec!["good".to_owned()], "only the right token joins");
    assert!(cluster_names(&impostor).await.is_empty(), "a cluster joined a root its token does not pin");
    for (child, what) in [(&mut mitm, "the impostor"), (&mut wrong, "a wrong hash")] {
        let _ = child.kill();
        let out = std::mem::replace(child, Command::new("true").spawn().unwrap());
        let log = String::from_utf8_lossy(&out.wait_with_output().unwrap().stderr).into_owned();
        assert!(log.to_lowercase().contains("certificate"), "{what}: the cluster does not say why: {log}");
    }
}
