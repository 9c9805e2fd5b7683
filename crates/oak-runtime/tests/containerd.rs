//! The containerd runtime against a real containerd (root and the socket needed; CI has both).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use oak_runtime::cgroup::{Cgroups, DEFAULT_ROOT, Layout};
use oak_runtime::containerd::ContainerdRuntime;
use oak_runtime::{Exit, InstanceSpec, Runtime, RuntimeError, testimage};
use std::collections::BTreeMap;
use std::time::Duration;

const SOCKET: &str = "/run/containerd/containerd.sock";

/// A runtime on a fresh namespace with the test image, or None (skip) outside CI.
async fn runtime(ns: &str) -> Option<ContainerdRuntime> {
    let ready = std::path::Path::new(SOCKET).exists() && nix::unistd::Uid::effective().is_root();
    if !ready {
        assert!(std::env::var("CI").map(|v| v != "true").unwrap_or(true), "CI needs root and containerd at {SOCKET}");
        eprintln!("skipping: needs root and containerd at {SOCKET}");
        return None;
    }
    testimage::import(ns).unwrap();
    Some(ContainerdRuntime::connect(SOCKET, ns).await.unwrap())
}

fn spec(id: &str, cmd: &[&str], dir: &std::path::Path) -> InstanceSpec {
    InstanceSpec {
        id: id.into(),
        image: testimage::IMAGE.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        env: vec!["GREETING=hello".into()],
        hostname: "instance-0".into(),
        memory_mb: 32,
        millicpu: 500,
        log_path: dir.join(format!("{id}.log")),
        netns: format!("oak-{id}"),
        labels: BTreeMap::from([("oak.node".to_owned(), "test-node".to_owned())]),
    }
}

fn nothing_left(id: &str, log: &std::path::Path) {
    assert!(!std::path::Path::new(&format!("/run/netns/oak-{id}")).exists(), "netns left");
    assert!(!log.exists(), "log left");
    assert!(!Cgroups::new(DEFAULT_ROOT).dir("memory", id).exists(), "cgroup left");
}

#[tokio::test]
async fn run_to_completion_with_output_and_exit_codes() {
    let Some(rt) = runtime("oak-test-rt1").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let s = spec("rt1-echo", &["sh", "-c", "echo $GREETING from $HOSTNAME; exit 3"], dir.path());
    let exit = rt.start(&s).await.unwrap();
    let code = tokio::time::timeout(Duration::from_secs(20), exit).await.unwrap().unwrap();
    assert_eq!(code, Exit::Code(3));
    let log = std::fs::read_to_string(&s.log_path).unwrap();
    assert_eq!(log.trim(), "hello from instance-0");
    assert_eq!(rt.list(&s.labels).await.unwrap(), ["rt1-echo"]);
    rt.remove(&s.id, Duration::from_secs(1)).await.unwrap();
    assert!(rt.list(&s.labels).await.unwrap().is_empty());
    nothing_left(&s.id, &s.log_path);
}

#[tokio::test]
async fn limits_apply_and_removal_stops_a_running_instance() {
    let Some(rt) = runtime("oak-test-rt2").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let s = spec("rt2-sleep", &["sleep", "1000"], dir.path());
    let exit = rt.start(&s).await.unwrap();
    let cg = Cgroups::new(DEFAULT_ROOT);
    let read = |controller: &str, file: &str| {
        std::fs::read_to_string(cg.dir(controller, "rt2-sleep").join(file)).unwrap().trim().to_owned()
    };
    match cg.layout() {
        Layout::V1 => {
            assert_eq!(read("memory", "memory.limit_in_bytes"), (32 * 1024 * 1024).to_string());
            assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
        }
        Layout::V2 => {
            assert_eq!(read("memory", "memory.max"), (32 * 1024 * 1024).to_string());
            assert_eq!(read("cpu", "cpu.max"), "50000 100000");
        }
    }
    // Read under whichever layout this host has: neither figure is 0 for a running instance.
    let usage = rt.usage(&s.id).unwrap();
    assert!(usage.memory_bytes > 0 && usage.cpu_ns > 0, "{usage:?}");
    // Its own network namespace, with loopback up.
    let out = std::process::Command::new("ip").args(["-n", "oak-rt2-sleep", "link", "show", "lo"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("UP"), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(matches!(rt.start(&s).await, Err(RuntimeError::Exists { .. })));

    let t = std::time::Instant::now();
    rt.remove(&s.id, Duration::from_secs(2)).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(matches!(exit.await, Ok(Exit::Code(_))));
    assert!(rt.list(&s.labels).await.unwrap().is_empty());
    nothing_left(&s.id, &s.log_path);
}

#[tokio::test]
async fn a_missing_image_is_named() {
    let Some(rt) = runtime("oak-test-rt3").await else { return };
    let e = rt.ensure_image("oak.local/does-not-exist:1").await.unwrap_err();
    assert!(e.to_string().contains("oak.local/does-not-exist:1"), "{e}");
    rt.ensure_image(testimage::IMAGE).await.unwrap();
    // Starting it anyway fails cleanly and leaves nothing.
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec("rt3-missing", &["true"], dir.path());
    s.image = "oak.local/does-not-exist:1".into();
    assert!(matches!(rt.start(&s).await, Err(RuntimeError::Image { .. })));
    assert!(rt.list(&s.labels).await.unwrap().is_empty());
    nothing_left(&s.id, &s.log_path);
}

/// A registry that takes the connection and never answers: the pull gives up after the
/// timeout, names the image, and leaves no `ctr` behind.
#[tokio::test]
async fn a_pull_that_hangs_times_out() {
    let Some(rt) = runtime("oak-test-rt4").await else { return };
    let rt = rt.with_pull_timeout(Duration::from_secs(2));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let image = format!("{}/hangs/forever:1", listener.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            conns.push(c);
        }
    });
    assert!(!rt.has_image(&image).await);
    let started = std::time::Instant::now();
    let e = rt.ensure_image(&image).await.unwrap_err();
    let took = started.elapsed();
    assert!(e.to_string().contains(&image) && e.to_string().contains("did not finish in 2 s"), "{e}");
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(10), "{took:?}");
    held.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ps = std::process::Command::new("pgrep").args(["-f", &image]).output().unwrap();
    assert!(ps.stdout.is_empty(), "ctr left running: {}", String::from_utf8_lossy(&ps.stdout));
}
