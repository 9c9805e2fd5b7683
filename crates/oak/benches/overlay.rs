//! The overlay's data plane, with the plaintext and with the encrypted (WireGuard) tunnel,
//! against a direct veth between the same two instance namespaces, in the same run: TCP
//! throughput (iperf3), UDP and TCP request/response latency (64 B,
//! p50/p99), and HTTP request time to a service with 1 and with 9 replicas (paper Fig. 8).
//! Two workers, each its own network namespace; client and server on different workers.
//! Needs root, containerd and iperf3.
//!
//! `cargo bench -p oak --bench overlay` (env: OAK_BENCH_SECS, iperf3 seconds, default 5).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::Hierarchy;
use oak_api::Status;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

const DIRECT_CLIENT: &str = "192.168.213.1";
const DIRECT_SERVER: &str = "192.168.213.2";

fn service(name: &str, cmd: &str, extra: Value) -> Value {
    let mut m = json!({
        "microserviceID": "", "microservice_name": name, "microservice_namespace": "bench",
        "virtualization": "container", "code": oak_runtime::testimage::IMAGE,
        "cmd": ["sh", "-c", cmd], "memory": 16, "vcpus": 0.1
    });
    for (k, v) in extra.as_object().unwrap() {
        m[k] = v.clone();
    }
    m
}

fn netns_of(h: &Hierarchy, service: &str, n: u32) -> String {
    let c = h.containers().into_iter().find(|c| c.starts_with(&format!("{service}-{n}-"))).unwrap();
    format!("oak-{c}")
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Gbit/s received by an iperf3 client in `client_ns` against `target`.
fn iperf(server_ns: &str, client_ns: &str, target: &str, secs: u32) -> f64 {
    sh(&["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-D", "-p", "5201"]);
    std::thread::sleep(Duration::from_millis(300));
    let out =
        sh(&["ip", "netns", "exec", client_ns, "iperf3", "-c", target, "-p", "5201", "-t", &secs.to_string(), "-J"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap() / 1e9
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        oak_runtime::netns::enter(&ns).unwrap();
        f()
    })
}

/// Echo servers (UDP and TCP, port 9007) in `ns`, for `secs`.
fn echo_servers(ns: &str) {
    in_ns(ns, || {
        let u = UdpSocket::bind("0.0.0.0:9007").unwrap();
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = u.recv_from(&mut buf) {
            let _ = u.send_to(&buf[..n], from);
        }
    });
    in_ns(ns, || {
        let l = TcpListener::bind("0.0.0.0:9007").unwrap();
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                s.set_nodelay(true).unwrap();
                let mut buf = [0u8; 64];
                while s.read_exact(&mut buf).is_ok() {
                    if s.write_all(&buf).is_err() {
                        break;
                    }
                }
            });
        }
    });
    std::thread::sleep(Duration::from_millis(200));
}

/// (UDP p50, p99, TCP p50, p99) in µs of 64-byte request/response to `target`.
fn latency(client_ns: &str, target: &str, probes: usize) -> (f64, f64, f64, f64) {
    let addr: SocketAddr = format!("{target}:9007").parse().unwrap();
    in_ns(client_ns, move || {
        let u = UdpSocket::bind("0.0.0.0:0").unwrap();
        u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        u.connect(addr).unwrap();
        let mut buf = [0u8; 64];
        let mut udp = Vec::with_capacity(probes);
        for i in 0..probes + 200 {
            let t = Instant::now();
            u.send(&buf).unwrap();
            if u.recv(&mut buf).is_err() {
                continue;
            }
            if i >= 200 {
                udp.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        s.set_nodelay(true).unwrap();
        let mut tcp = Vec::with_capacity(probes);
        for i in 0..probes + 200 {
            let t = Instant::now();
            s.write_all(&buf).unwrap();
            s.read_exact(&mut buf).unwrap();
            if i >= 200 {
                tcp.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        (percentile(&mut udp, 0.5), percentile(&mut udp, 0.99), percentile(&mut tcp, 0.5), percentile(&mut tcp, 0.99))
    })
    .join()
    .unwrap()
}

/// Per-request times (ms) of `n` HTTP/1.0 GETs, a new connection each, to `target` (port 80
/// unless it names one).
fn http_times(client_ns: &str, target: &str, n: usize) -> Vec<f64> {
    let with_port = if target.contains(':') { target.to_owned() } else { format!("{target}:80") };
    let addr: SocketAddr = with_port.parse().unwrap();
    in_ns(client_ns, move || {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
            let mut body = Vec::new();
            s.read_to_end(&mut body).unwrap();
            assert!(body.starts_with(b"HTTP/1."), "{}", String::from_utf8_lossy(&body));
            v.push(t.elapsed().as_secs_f64() * 1e3);
        }
        v
    })
    .join()
    .unwrap()
}

/// Client and server instances on two workers, and a direct veth between their namespaces.
struct Paths {
    h: Hierarchy,
    app: String,
    cns: String,
    sns: String,
}

struct Measured {
    overlay: f64,
    direct: f64,
    overlay_lat: (f64, f64, f64, f64),
    direct_lat: (f64, f64, f64, f64),
}

impl Paths {
    async fn start(tag: &str, worker_args: &[&str]) -> Self {
        let args: Vec<String> = worker_args.iter().map(|s| s.to_string()).collect();
        let h =
            Hierarchy::start_with_workers_opts(tag, vec![args.clone(), args], 500, &["--placement", "spread"]).await;
        let server_cmd = "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 80 -h /www";
        let on = |w: &str| json!({"constraints": [{"type": "direct", "node": w}]});
        let (w0, w1) = (format!("{tag}-w0"), format!("{tag}-w1"));
        let mut srv = service("srv", "exec sleep 100000", on(&w1));
        srv["addresses"] = json!({"rr_ip": "10.30.60.60"});
        let mut one =
            service("one", server_cmd, json!({"replicas": 1, "constraints": [{"type": "direct", "node": w1}]}));
        one["addresses"] = json!({"rr_ip": "10.30.60.61"});
        let mut nine = service("nine", server_cmd, json!({"replicas": 9}));
        nine["addresses"] = json!({"rr_ip": "10.30.60.69"});
        let cli = service("cli", "exec sleep 100000", on(&w0));
        let sla = json!({"sla_version": "v2.0", "customerID": "Admin", "applications": [{
            "application_name": "perf", "application_namespace": "bench", "application_desc": "",
            "microservices": [cli, srv, one, nine]}]});
        let app = h
            .admin
            .create_applications(&sla)
            .await
            .unwrap()
            .into_iter()
            .find(|a| a.application_name == "perf")
            .unwrap();
        let ids: Vec<String> = app.microservices.iter().map(ToString::to_string).collect();
        h.admin.request_instance(&ids[0]).await.unwrap();
        h.admin.request_instance(&ids[1]).await.unwrap();
        for (id, n) in [(&ids[0], 1), (&ids[1], 1), (&ids[2], 1), (&ids[3], 9)] {
            h.wait_for(id, 120, "RUNNING", |is| is.len() == n && is.iter().all(|i| i.status == Status::Running)).await;
        }
        let (cns, sns) = (netns_of(&h, &ids[0], 0), netns_of(&h, &ids[1], 0));
        // The direct path: a veth straight between the two instance namespaces.
        sh(&["ip", "link", "add", "oakbd0", "netns", &cns, "type", "veth", "peer", "name", "oakbd1", "netns", &sns]);
        sh(&["ip", "-n", &cns, "addr", "add", &format!("{DIRECT_CLIENT}/30"), "dev", "oakbd0"]);
        sh(&["ip", "-n", &sns, "addr", "add", &format!("{DIRECT_SERVER}/30"), "dev", "oakbd1"]);
        sh(&["ip", "-n", &cns, "link", "set", "oakbd0", "up"]);
        sh(&["ip", "-n", &sns, "link", "set", "oakbd1", "up"]);
        echo_servers(&sns);
        Paths { h, app: app.id.to_string(), cns, sns }
    }

    fn measure(&self, secs: u32) -> Measured {
        // Warm the overlay's tables (and the tunnel's handshake) first.
        let _ = latency(&self.cns, "10.30.60.60", 10);
        let (mut ov, mut dir) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            ov.push(iperf(&self.sns, &self.cns, "10.30.60.60", secs));
            dir.push(iperf(&self.sns, &self.cns, DIRECT_SERVER, secs));
        }
        let probes = 5000;
        Measured {
            overlay: percentile(&mut ov, 0.5),
            direct: percentile(&mut dir, 0.5),
            overlay_lat: latency(&self.cns, "10.30.60.60", probes),
            direct_lat: latency(&self.cns, DIRECT_SERVER, probes),
        }
    }

    async fn stop(self) {
        let _ = self.h.admin.delete_application(&self.app).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !self.h.containers().is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !common::can_run_containers("overlay bench") {
        return;
    }
    let secs: u32 = std::env::var("OAK_BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let date = sh(&["date", "-u", "+%Y-%m-%d"]);
    println!("overlay bench, {} (2 workers, client and server on different workers)\n", date.trim());
    // The same run, side by side: the plaintext tunnel first (its hierarchy is then gone),
    // then the encrypted one (the default), each against its own direct veth.
    let plain = {
        let p = Paths::start("ovq", &["--tunnel-encryption", "off"]).await;
        let r = p.measure(secs);
        p.stop().await;
        r
    };
    let p = Paths::start("ovp", &[]).await;
    let enc = p.measure(secs);
    let (cns, sns) = (p.cns.clone(), p.sns.clone());
    println!("| TCP throughput (iperf3 -t {secs}, median of 3) | Gbit/s | of the veth |");
    println!("|---|---|---|");
    println!("| direct veth (plaintext run) | {:.2} | |", plain.direct);
    println!(
        "| overlay, plaintext tunnel (`--tunnel-encryption off`) | {:.2} | {:.0} % |",
        plain.overlay,
        plain.overlay / plain.direct * 100.0
    );
    println!("| direct veth (encrypted run) | {:.2} | |", enc.direct);
    println!(
        "| overlay, encrypted tunnel (WireGuard, default) | {:.2} | {:.0} % |",
        enc.overlay,
        enc.overlay / enc.direct * 100.0
    );
    println!("| encrypted / plaintext tunnel | {:.0} % | |\n", enc.overlay / plain.overlay * 100.0);
    println!("| 64 B request/response | UDP p50 µs | UDP p99 µs | TCP p50 µs | TCP p99 µs |");
    println!("|---|---|---|---|---|");
    for (name, l) in [
        ("direct veth (plaintext run)", plain.direct_lat),
        ("overlay, plaintext tunnel", plain.overlay_lat),
        ("direct veth (encrypted run)", enc.direct_lat),
        ("overlay, encrypted tunnel", enc.overlay_lat),
    ] {
        println!("| {name} | {:.1} | {:.1} | {:.1} | {:.1} |", l.0, l.1, l.2, l.3);
    }
    let (e, q) = (enc.overlay_lat, plain.overlay_lat);
    println!(
        "| added by encryption | {:+.1} | {:+.1} | {:+.1} | {:+.1} |\n",
        e.0 - q.0,
        e.1 - q.1,
        e.2 - q.2,
        e.3 - q.3
    );

    let n = 1000;
    // The same busybox httpd, run in the server instance's namespace, reached over the direct
    // veth and over the overlay: the data plane's share of the HTTP figures.
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "ok\n").unwrap();
    let mut httpd = std::process::Command::new("ip")
        .args(["netns", "exec", &sns, "busybox", "httpd", "-f", "-p", "8080", "-h"])
        .arg(www.path())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let direct_http = format!("{DIRECT_SERVER}:8080");
    let _ = http_times(&cns, &direct_http, 20);
    let _ = http_times(&cns, "10.30.60.60:8080", 20);
    let _ = http_times(&cns, "10.30.60.61", 20);
    let _ = http_times(&cns, "10.30.60.69", 20);
    let mut td = http_times(&cns, &direct_http, n);
    let mut to = http_times(&cns, "10.30.60.60:8080", n);
    let mut t1 = http_times(&cns, "10.30.60.61", n);
    let mut t9 = http_times(&cns, "10.30.60.69", n);
    let _ = httpd.kill();
    let _ = httpd.wait();
    println!("| HTTP GET, new connection each ({n} sequential) | p50 ms | p99 ms |");
    println!("|---|---|---|");
    println!("| one httpd, direct veth | {:.3} | {:.3} |", percentile(&mut td, 0.5), percentile(&mut td, 0.99));
    println!(
        "| the same httpd, overlay (RR IP) | {:.3} | {:.3} |",
        percentile(&mut to, 0.5),
        percentile(&mut to, 0.99)
    );
    println!("| 1 replica (RR IP) | {:.3} | {:.3} |", percentile(&mut t1, 0.5), percentile(&mut t1, 0.99));
    println!("| 9 replicas (RR IP) | {:.3} | {:.3} |", percentile(&mut t9, 0.5), percentile(&mut t9, 0.99));
}
