//! Load benchmark of the root's user API: a real `oak root` process (release build) on
//! 127.0.0.1 with a temporary store, driven by a load generator in this process.
//!
//! `cargo bench -p oak --bench api_load` (env: OAK_BENCH_SECS, default 10 per phase;
//! OAK_BENCH_READERS, default 32; OAK_BENCH_WRITERS, default 4).
//!
//! Phase 1: authenticated `GET /api/services/{app}` (an app with 3 services).
//! Phase 2: `POST /api/application` (one service each), each followed by its DELETE so the
//! response, which lists all of the user's applications as in the original, stays small.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Stats {
    name: &'static str,
    lat_us: Vec<u64>,
    errors: u64,
    secs: f64,
}

impl Stats {
    fn print(&mut self) {
        self.lat_us.sort_unstable();
        let n = self.lat_us.len();
        let q = |p: f64| self.lat_us.get(((n as f64 * p) as usize).min(n.saturating_sub(1))).copied().unwrap_or(0);
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            self.name,
            n,
            n as f64 / self.secs,
            q(0.50) as f64 / 1000.0,
            q(0.99) as f64 / 1000.0,
            self.lat_us.last().copied().unwrap_or(0) as f64 / 1000.0,
            self.errors
        );
    }
}

fn sla(name: &str) -> serde_json::Value {
    serde_json::json!({
        "sla_version": "v2.0", "customerID": "Admin",
        "applications": [{"applicationID": "", "application_name": name, "application_namespace": "bench",
            "application_desc": "load", "microservices": [
                {"microserviceID": "", "microservice_name": "web", "microservice_namespace": "bench",
                 "virtualization": "container", "code": "docker.io/library/nginx:latest",
                 "memory": 100, "vcpus": 1, "port": "8080:80/tcp", "cmd": []}]}]
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs = env_or("OAK_BENCH_SECS", 10);
    let readers = env_or("OAK_BENCH_READERS", 32);
    let writers = env_or("OAK_BENCH_WRITERS", 4);
    let dir = {
        use std::os::unix::fs::PermissionsExt;
        tempfile::Builder::new().permissions(std::fs::Permissions::from_mode(0o700)).tempdir().unwrap()
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_oak"))
        .args(["root", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "error")
        .env_remove("OAK_ADMIN_PASSWORD")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let http = oak_tls::http_client_builder().pool_max_idle_per_host(256).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let token = loop {
        let r = http
            .post(format!("{url}/api/auth/login"))
            .json(&serde_json::json!({"username": "Admin", "password": "Admin"}))
            .send()
            .await;
        if let Ok(r) = r
            && r.status().is_success()
        {
            break r.json::<serde_json::Value>().await.unwrap()["token"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "root did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut three = sla("reads");
    let svc = three["applications"][0]["microservices"][0].clone();
    for name in ["api", "db"] {
        let mut s = svc.clone();
        s["microservice_name"] = serde_json::json!(name);
        three["applications"][0]["microservices"].as_array_mut().unwrap().push(s);
    }
    let apps: serde_json::Value = http
        .post(format!("{url}/api/application"))
        .bearer_auth(&token)
        .json(&three)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let app_id = apps[0]["applicationID"].as_str().unwrap().to_owned();

    println!(
        "oak root API load, {secs} s per phase, {readers} readers, {writers} writers, 2 cores shared with the load generator"
    );
    println!();
    println!("| request | count | req/s | p50 ms | p99 ms | max ms | errors |");
    println!("|---|---|---|---|---|---|---|");

    // Phase 1: reads.
    let stop = Instant::now() + Duration::from_secs(secs);
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..readers {
        let (http, url, token, app_id, errors) =
            (http.clone(), url.clone(), token.clone(), app_id.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            while Instant::now() < stop {
                let t = Instant::now();
                let ok = match http.get(format!("{url}/api/services/{app_id}")).bearer_auth(&token).send().await {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                    _ => false,
                };
                if ok {
                    lat.push(t.elapsed().as_micros() as u64);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    Stats {
        name: "GET /api/services/{app} (authenticated)",
        lat_us: lat,
        errors: errors.load(Ordering::Relaxed),
        secs: secs as f64,
    }
    .print();

    // Phase 2: creations (each followed by a delete).
    let stop = Instant::now() + Duration::from_secs(secs);
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (http, url, token, errors) = (http.clone(), url.clone(), token.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let (mut create, mut delete) = (Vec::new(), Vec::new());
            let mut i = 0u64;
            while Instant::now() < stop {
                i += 1;
                let t = Instant::now();
                let r = http.post(format!("{url}/api/application")).bearer_auth(&token).json(&sla(&format!("w{w}n{i}"))).send().await;
                let apps: Option<serde_json::Value> = match r {
                    Ok(r) if r.status().is_success() => r.json().await.ok(),
                    _ => None,
                };
                let Some(apps) = apps else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                create.push(t.elapsed().as_micros() as u64);
                let name = format!("w{w}n{i}");
                let id = apps.as_array().unwrap().iter().find(|a| a["application_name"] == name.as_str()).unwrap()["applicationID"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let t = Instant::now();
                match http.delete(format!("{url}/api/application/{id}")).bearer_auth(&token).send().await {
                    Ok(r) if r.status().is_success() => delete.push(t.elapsed().as_micros() as u64),
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            (create, delete)
        }));
    }
    let (mut create, mut delete) = (Vec::new(), Vec::new());
    for t in tasks {
        let (c, d) = t.await.unwrap();
        create.extend(c);
        delete.extend(d);
    }
    let e = errors.load(Ordering::Relaxed);
    Stats { name: "POST /api/application (1 service)", lat_us: create, errors: e, secs: secs as f64 }.print();
    Stats { name: "DELETE /api/application/{id}", lat_us: delete, errors: 0, secs: secs as f64 }.print();

    let _ = child.kill();
    let _ = child.wait();
}
