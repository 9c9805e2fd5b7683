//! TLS on the user API and on the root ↔ cluster link: a root serving HTTPS with a
//! certificate of the deployment's own CA; clients trust exactly that CA; plain HTTP is
//! refused on a non-loopback address.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{OAK, Proc, free_port};
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
            .env("OAK_CLUSTER_TOKEN", token.trim())
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

#[test]
fn plain_http_is_for_loopback_only() {
    let tmp = common::tempdir();
    let out = Command::new(OAK)
        .args(["root", "--listen", &format!("0.0.0.0:{}", free_port()), "--data-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "a root served plain HTTP on 0.0.0.0");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-cert") && err.contains("--insecure-plain-http"), "{err}");
    let out = Command::new(OAK)
        .args(["root", "--listen", "127.0.0.1:1", "--data-dir"])
        .arg(tmp.path())
        .arg("--tls-cert")
        .arg("/nonexistent.pem")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key"), "--tls-cert without --tls-key is refused");
}
