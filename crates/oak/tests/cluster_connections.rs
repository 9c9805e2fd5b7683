//! The cluster's worker registration port under a hostile or careless crowd, as the root's
//! API (tests/connections.rs): more silent connections than the cluster may hold do not lock
//! out a registration, and a trickled request head or a silent connection is cut after the
//! header timeout. The clusters run with a low open-file limit and short timeouts so that
//! this is quick.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::conns::{closed_by_server, until_closed};
use common::{OAK, Proc, RootProcess, free_port};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// The cluster's open-file limit in [`crowded_cluster`]: its registration bound is then a
/// quarter of 128.
const FILE_LIMIT: u32 = 256;
/// The registration server's connection bound under [`FILE_LIMIT`].
const BOUND: usize = 32;
/// Silent connections opened against it: more than the cluster has file descriptors.
const CROWD: usize = 300;

/// A cluster of a fresh root, its log collected; with `ulimit`, under `ulimit -n ulimit`
/// (soft and hard, so that raising the soft limit gains nothing). Returns once it answers
/// on its registration port.
struct Cluster {
    _root: RootProcess,
    proc: Proc,
    port: u16,
    log: Arc<parking_lot::Mutex<String>>,
}

async fn start_cluster(tmp: &Path, ulimit: Option<u32>, env: &[(&str, &str)]) -> Cluster {
    let root = RootProcess::start_in(&tmp.join("root"), None).await;
    let token = std::fs::read_to_string(root.data_dir.join("cluster-token")).unwrap();
    let (port, mqtt) = (free_port(), free_port());
    let dir = tmp.join("cluster");
    let mut cmd = Command::new("sh");
    let limit = ulimit.map(|n| format!("ulimit -n {n} && ")).unwrap_or_default();
    cmd.arg("-c")
        .arg(format!("{limit}exec \"$0\" \"$@\""))
        .arg(OAK)
        .args(["cluster", "--root", &root.url, "--name", "c1"])
        // The registration server's own bounds, with raw HTTP; the TLS accept path is the
        // same loop (oak_tls::serve), tested over TLS in connections.rs.
        .arg("--insecure-plain-http")
        .args(["--listen", &format!("127.0.0.1:{port}"), "--mqtt-listen", &format!("127.0.0.1:{mqtt}")])
        .arg("--data-dir")
        .arg(&dir)
        .env("OAK_CLUSTER_TOKEN", token.trim())
        .env("RUST_LOG", "info,tower_http=warn,rumqttd=warn,rumqttc=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let log = common::conns::collect_log(&mut child);
    let cluster = Cluster { _root: root, proc: Proc(Some(child)), port, log };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "the cluster did not start");
        if dir.join("worker-token").exists() && register(port, "not-the-token").await.is_some() {
            return cluster;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn register(port: u16, token: &str) -> Option<u16> {
    let http = common::http();
    let body = serde_json::json!({
        "name": "w", "ip": "127.0.0.1", "arch": "amd64", "runtimes": ["container"],
        "cpu_cores": 2.0, "memory_mb": 2048, "session": "s1",
    });
    let send = http.post(format!("http://127.0.0.1:{port}/api/node/register")).bearer_auth(token).json(&body).send();
    match tokio::time::timeout(Duration::from_secs(5), send).await {
        Ok(Ok(r)) => Some(r.status().as_u16()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_beyond_the_bound_do_not_lock_out_a_registration() {
    let tmp = common::tempdir();
    // Only the bound may close the crowd here.
    let mut cluster = start_cluster(
        tmp.path(),
        Some(FILE_LIMIT),
        &[("OAK_HEADER_TIMEOUT_MS", "60000"), ("OAK_IDLE_TIMEOUT_MS", "60000")],
    )
    .await;
    {
        let log = cluster.log.lock();
        assert!(log.contains(&format!("open_files={FILE_LIMIT}")), "the file limit is not logged: {log}");
        assert!(log.contains(&format!("max_connections={BOUND}")), "the bound does not follow the file limit: {log}");
    }
    // The test process holds the crowd itself.
    oak_tls::serve::raise_file_limit().unwrap();
    let mut crowd = Vec::new();
    for _ in 0..CROWD {
        crowd.push(TcpStream::connect(("127.0.0.1", cluster.port)).await.unwrap());
    }
    // One attempt, on a new connection: a wrong token is refused, which is an answer.
    let started = Instant::now();
    let status = register(cluster.port, "not-the-token").await;
    assert_eq!(status, Some(401), "no answer to a registration past {CROWD} silent connections");
    eprintln!("registration past the crowd took {:?}", started.elapsed());
    // The cluster made room by closing the oldest silent ones: at most BOUND are open (less
    // the registration's, if it is still kept alive).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let closed = closed_by_server(&crowd);
        if closed > CROWD - BOUND {
            break;
        }
        assert!(Instant::now() < deadline, "only {closed} of {CROWD} silent connections were closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    {
        let log = cluster.log.lock();
        assert!(log.contains("connection bound reached"), "the bound is not logged: {log}");
        assert!(!log.contains("Too many open files"), "{log}");
    }
    // Silent connections do not hold up a shutdown.
    let started = Instant::now();
    cluster.proc.stop();
    assert!(started.elapsed() < Duration::from_secs(5), "the cluster took {:?} to stop", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_heads_and_silent_connections_are_cut_after_the_header_timeout() {
    let tmp = common::tempdir();
    // The idle timeout is far off: only the header timeout (2 s) can end these.
    let cluster =
        start_cluster(tmp.path(), None, &[("OAK_HEADER_TIMEOUT_MS", "2000"), ("OAK_IDLE_TIMEOUT_MS", "60000")]).await;
    let port = cluster.port;

    let trickle = tokio::spawn(async move {
        let addr = format!("127.0.0.1:{port}");
        common::conns::trickled_head_closed_after(&addr, b"POST /api/node/register HTTP/1.1\r\nHost: x\r\n").await
    });
    let silent = tokio::spawn(async move {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        until_closed(&mut conn, Duration::from_secs(10)).await
    });
    for (what, task) in [("a trickled head", trickle), ("a silent connection", silent)] {
        let took = task.await.unwrap();
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
            "{what} was closed after {took:?}"
        );
    }
    // The cluster still answers.
    assert_eq!(register(port, "not-the-token").await, Some(401));
}
