//! The root's connections under a hostile or careless crowd: more silent connections than it
//! may hold do not lock out a real client (plain and over TLS), a trickled request head and a
//! silent kept-alive connection are cut after the header timeout, and the idle timeout ends a
//! silent cluster link but not one with traffic. The roots run with a low open-file limit
//! and short timeouts so that this is quick.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::conns::{closed_by_server, until_closed};
use common::{OAK, Proc, RootProcess, free_port};
use oak_client::RootClient;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The root's open-file limit in [`crowded_root`]: the connection bound is then 128.
const FILE_LIMIT: u32 = 256;
/// Silent connections opened against it.
const CROWD: usize = 300;

/// An `oak root` under `ulimit -n FILE_LIMIT` (soft and hard, so that raising the soft limit
/// gains nothing), its log collected. `tls`: the directory with `root-cert.pem` and
/// `root-key.pem`.
fn crowded_root(dir: &Path, port: u16, tls: Option<&Path>) -> (Proc, Arc<parking_lot::Mutex<String>>) {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -n {FILE_LIMIT} && exec \"$0\" \"$@\""))
        .arg(OAK)
        .args(["root", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.join("root"))
        // Only the bound may close the crowd here.
        .env("OAK_HEADER_TIMEOUT_MS", "60000")
        .env("RUST_LOG", "info,tower_http=warn")
        .env_remove("OAK_ADMIN_PASSWORD")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match tls {
        Some(pki) => {
            cmd.arg("--tls-cert").arg(pki.join("root-cert.pem")).arg("--tls-key").arg(pki.join("root-key.pem"));
        }
        None => {
            cmd.arg("--insecure-plain-http");
        }
    }
    let mut child = cmd.spawn().unwrap();
    let log = common::conns::collect_log(&mut child);
    (Proc(Some(child)), log)
}

async fn login_within(client: &RootClient, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), client.login("Admin", "Admin")).await {
            Ok(Ok(_)) => return,
            Ok(Err(e)) => assert!(Instant::now() < deadline, "no login: {e}"),
            Err(_) => assert!(Instant::now() < deadline, "no login: timed out"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Opens [`CROWD`] connections that send nothing; asserts that a login on a new connection
/// still succeeds at once, that the root holds no more connections than its bound, and that
/// it stops at once on SIGTERM with them open.
async fn crowd_does_not_lock_out(
    mut root: Proc,
    port: u16,
    client: impl Fn() -> RootClient,
    log: &parking_lot::Mutex<String>,
) {
    // The test process holds the crowd itself.
    oak_root::raise_file_limit().unwrap();
    login_within(&client(), Duration::from_secs(20)).await;
    {
        let log = log.lock();
        assert!(log.contains(&format!("open_files={FILE_LIMIT}")), "the file limit is not logged: {log}");
        assert!(log.contains("max_connections=128"), "the bound does not follow the file limit: {log}");
    }
    let mut crowd = Vec::new();
    for _ in 0..CROWD {
        crowd.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    // One attempt, on a new connection.
    let started = Instant::now();
    match tokio::time::timeout(Duration::from_secs(5), client().login("Admin", "Admin")).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("no login past {CROWD} silent connections: {e}"),
        Err(_) => panic!("no login past {CROWD} silent connections within 5 s"),
    }
    eprintln!("login past the crowd took {:?}", started.elapsed());
    // The root made room by closing the oldest silent ones: at most 128 are open (less the
    // login's, if it is still kept alive).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let closed = closed_by_server(&crowd);
        if closed > CROWD - 128 {
            break;
        }
        assert!(Instant::now() < deadline, "only {closed} of {CROWD} silent connections were closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    {
        let log = log.lock();
        assert!(log.contains("connection bound reached"), "the bound is not logged: {log}");
        assert!(!log.contains("Too many open files"), "{log}");
    }
    // Silent connections do not hold up a shutdown.
    let started = Instant::now();
    root.stop();
    assert!(started.elapsed() < Duration::from_secs(5), "the root took {:?} to stop", started.elapsed());
    assert!(log.lock().contains("root orchestrator stopped"), "the root did not stop cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_beyond_the_bound_do_not_lock_out_a_login() {
    let tmp = common::tempdir();
    let port = free_port();
    let (root, log) = crowded_root(tmp.path(), port, None);
    let url = format!("http://127.0.0.1:{port}");
    crowd_does_not_lock_out(root, port, || RootClient::new(&url), &log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_do_not_lock_out_a_login_over_tls() {
    let tmp = common::tempdir();
    common::make_pki(tmp.path(), "root");
    let port = free_port();
    let (root, log) = crowded_root(tmp.path(), port, Some(tmp.path()));
    let ca = std::fs::read(tmp.path().join("root-ca.pem")).unwrap();
    let url = format!("https://127.0.0.1:{port}");
    // The crowd never starts its TLS handshake.
    crowd_does_not_lock_out(root, port, || RootClient::with_ca(&url, &ca).unwrap(), &log).await;
}

/// Reads one response head (and whatever follows it in the same reads) and returns it.
async fn read_head(conn: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed before a response: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_heads_and_silent_connections_are_cut_after_the_header_timeout() {
    // The idle timeout is far off: only the header timeout (2 s) can end these.
    let root =
        RootProcess::start_plain_env(&[("OAK_HEADER_TIMEOUT_MS", "2000"), ("OAK_IDLE_TIMEOUT_MS", "60000")]).await;
    let addr = root.url.trim_start_matches("http://").to_owned();

    let trickle = {
        let addr = addr.clone();
        tokio::spawn(async move {
            common::conns::trickled_head_closed_after(&addr, b"GET /docs/openapi.json HTTP/1.1\r\nHost: x\r\n").await
        })
    };
    let silent = {
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut conn = TcpStream::connect(&addr).await.unwrap();
            until_closed(&mut conn, Duration::from_secs(10)).await
        })
    };
    let kept_alive = tokio::spawn(async move {
        let mut conn = TcpStream::connect(&addr).await.unwrap();
        conn.write_all(b"GET /api/auth/nothing-here HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let head = read_head(&mut conn).await;
        assert!(head.starts_with("HTTP/1.1 "), "{head}");
        assert!(!head.to_ascii_lowercase().contains("connection: close"), "{head}");
        until_closed(&mut conn, Duration::from_secs(10)).await
    });
    for (what, task) in
        [("a trickled head", trickle), ("a silent connection", silent), ("a kept-alive one", kept_alive)]
    {
        let took = task.await.unwrap();
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
            "{what} was closed after {took:?}"
        );
    }
    // The root still serves.
    root.admin().await;
}

/// A client WebSocket frame (masked, as RFC 6455 requires of clients).
fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x5a, 0x17, 0xc3, 0x01];
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Opens the cluster link (the WebSocket upgrade) by hand.
async fn open_link(addr: &str, token: &str) -> TcpStream {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {token}\r\n\r\n",
        oak_api::link::LINK_PATH
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut conn).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_ends_a_silent_cluster_link_but_not_one_with_traffic() {
    let token = "connections-test-token";
    let root = RootProcess::start_plain_env(&[("OAK_CLUSTER_TOKEN", token), ("OAK_IDLE_TIMEOUT_MS", "2000")]).await;
    let addr = root.url.trim_start_matches("http://").to_owned();

    // Silent after the upgrade: closed by the idle timeout (2 s), long before the link's own
    // wait for a hello (10 s).
    let silent = {
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut conn = open_link(&addr, token).await;
            until_closed(&mut conn, Duration::from_secs(8)).await
        })
    };

    // A link that says hello and then pings every 500 ms stays open.
    let mut conn = open_link(&addr, token).await;
    // A new cluster's hello, as on the wire (oak_api::link::ClusterToRoot::Hello).
    conn.write_all(&ws_frame(0x1, br#"{"type":"hello","name":"chatty"}"#)).await.unwrap();
    let (mut rd, mut wr) = conn.into_split();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        wr.write_all(&ws_frame(0x9, b"")).await.expect("the active link was closed");
        assert!(!reader.is_finished(), "the active link was closed after {:?}", started.elapsed());
    }

    let took = silent.await.unwrap();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "the silent link was closed after {took:?}"
    );
    reader.abort();
}
