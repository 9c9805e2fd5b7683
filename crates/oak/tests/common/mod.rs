//! Harness for the end-to-end tests: real `oak` processes on 127.0.0.1 with temporary data.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod capture;
pub mod conns;
pub mod latency;

use oak_client::RootClient;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const OAK: &str = env!("CARGO_BIN_EXE_oak");

/// The original project's SLA descriptors (`fixtures/sla`, copied from `../shared/sla`).
pub fn shared_sla(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/sla").join(rel)
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A temporary directory private to this user (`0700`), as the tiers require of a data dir
/// (`tempfile::tempdir` makes it `0755`).
pub fn tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new().permissions(std::fs::Permissions::from_mode(0o700)).tempdir().unwrap()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `oak root` process. Killed when dropped. It serves HTTPS with its own CA (as
/// by default), trusted here through the hash its cluster token carries; or plain HTTP when
/// started with [`RootProcess::start_plain_on_port`].
pub struct RootProcess {
    child: Option<Child>,
    /// The root's CA hash (from its K10 cluster token); `None` for a plain-HTTP root.
    pub ca_hash: Option<[u8; 32]>,
    plain: bool,
    pub url: String,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    admin_password: Option<String>,
}

impl RootProcess {
    /// A root with a fresh data dir and the default Admin password.
    pub async fn start() -> Self {
        let tmp = tempdir();
        let dir = tmp.path().to_path_buf();
        let mut r = Self::start_in(&dir, None).await;
        r._tmp = Some(tmp);
        r
    }

    /// A root over `dir` (kept by the caller), with an optional OAK_ADMIN_PASSWORD.
    pub async fn start_in(dir: &Path, admin_password: Option<&str>) -> Self {
        Self::start_on(dir, admin_password, None, &[]).await
    }

    /// A plain-HTTP root (`--insecure-plain-http`) with a fresh data dir and extra environment:
    /// for tests of the HTTP server's own limits with raw requests (the TLS accept path has
    /// its tests in tls.rs and connections.rs).
    pub async fn start_plain_env(env: &[(&str, &str)]) -> Self {
        let tmp = tempdir();
        let dir = tmp.path().to_path_buf();
        let mut r = Self::start_opts(&dir, None, None, env, true).await;
        r._tmp = Some(tmp);
        r
    }

    /// A root with a fresh data dir and extra environment (e.g. OAK_CLUSTER_TIMEOUT_MS).
    pub async fn start_env(env: &[(&str, &str)]) -> Self {
        let tmp = tempdir();
        let dir = tmp.path().to_path_buf();
        let mut r = Self::start_on(&dir, None, None, env).await;
        r._tmp = Some(tmp);
        r
    }

    /// A root over `dir` on a fixed port.
    pub async fn start_on_port(dir: &Path, port: u16) -> Self {
        Self::start_on(dir, None, Some(port), &[]).await
    }

    /// A root serving plain HTTP (`--insecure-plain-http`), as the original oak-cli needs.
    pub async fn start_plain_on_port(dir: &Path, port: u16) -> Self {
        Self::start_opts(dir, None, Some(port), &[], true).await
    }

    /// Like [`start_in`], on a given port (a restart keeps its address).
    async fn start_on(dir: &Path, admin_password: Option<&str>, port: Option<u16>, env: &[(&str, &str)]) -> Self {
        Self::start_opts(dir, admin_password, port, env, false).await
    }

    async fn start_opts(
        dir: &Path,
        admin_password: Option<&str>,
        port: Option<u16>,
        env: &[(&str, &str)],
        plain: bool,
    ) -> Self {
        for _ in 0..5 {
            let port = port.unwrap_or_else(free_port);
            let mut cmd = Command::new(OAK);
            cmd.args(["root", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
                .arg(dir)
                .args(plain.then_some("--insecure-plain-http"))
                .env("RUST_LOG", log_level())
                .env_remove("OAK_ADMIN_PASSWORD")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            if let Some(p) = admin_password {
                cmd.env("OAK_ADMIN_PASSWORD", p);
            }
            for (k, v) in env {
                cmd.env(k, v);
            }
            let child = cmd.spawn().unwrap();
            let mut r = RootProcess {
                child: Some(child),
                ca_hash: None,
                plain,
                url: format!("{}://127.0.0.1:{port}", if plain { "http" } else { "https" }),
                data_dir: dir.to_path_buf(),
                _tmp: None,
                admin_password: admin_password.map(str::to_owned),
            };
            if r.wait_ready().await {
                return r;
            }
            r.kill();
        }
        panic!("oak root did not start");
    }

    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        // The root writes its K10 cluster token before it serves.
        while !self.plain && self.ca_hash.is_none() && Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                return false;
            }
            self.ca_hash = std::fs::read_to_string(self.data_dir.join("cluster-token"))
                .ok()
                .and_then(|t| oak_tls::pki::JoinToken::parse(&t).ok())
                .and_then(|t| t.ca_hash);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let http = self.http();
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                return false;
            }
            if let Ok(r) = http.get(format!("{}/docs/openapi.json", self.url)).send().await
                && r.status().is_success()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the process (SIGKILL) and starts a new one on the same port and data dir.
    pub async fn restart_in_place(&mut self) {
        self.kill();
        let port = self.url.rsplit(':').next().and_then(|p| p.parse().ok());
        let mut fresh =
            Self::start_opts(&self.data_dir.clone(), self.admin_password.as_deref(), port, &[], self.plain).await;
        self.child = fresh.child.take();
    }

    /// Kills the process and starts a new one over the same data dir.
    pub async fn restart(mut self) -> Self {
        self.kill();
        let tmp = self._tmp.take();
        let port = self.url.rsplit(':').next().and_then(|p| p.parse().ok());
        let mut r =
            Self::start_opts(&self.data_dir.clone(), self.admin_password.as_deref(), port, &[], self.plain).await;
        r._tmp = tmp;
        r
    }

    pub fn client(&self) -> RootClient {
        match self.ca_hash {
            Some(h) => RootClient::with_ca_hash(&self.url, h).unwrap(),
            None => RootClient::new(&self.url),
        }
    }

    /// An HTTP client that trusts this root (its CA by hash), and only it.
    pub fn http(&self) -> reqwest::Client {
        match self.ca_hash {
            Some(h) => pinned_http(h),
            None => http(),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.url.rsplit("://").next().unwrap_or_default().to_owned()
    }

    /// Logs in and returns a client holding the access token.
    pub async fn login(&self, user: &str, password: &str) -> RootClient {
        let t = self.client().login(user, password).await.unwrap_or_else(|e| panic!("login {user}: {e}"));
        self.client().with_token(t.token)
    }

    pub async fn admin(&self) -> RootClient {
        self.login("Admin", self.admin_password.as_deref().unwrap_or("Admin")).await
    }

    /// Registers `name` (as Admin) and returns a client logged in as that user.
    pub async fn user(&self, name: &str) -> RootClient {
        let admin = self.admin().await;
        let _: serde_json::Value = admin
            .request(
                reqwest::Method::POST,
                "/api/auth/register",
                Some(&serde_json::json!({"name": name, "password": format!("pw-{name}"), "email": format!("{name}@example.org")})),
            )
            .await
            .unwrap_or_else(|e| panic!("register {name}: {e}"));
        self.login(name, &format!("pw-{name}")).await
    }

    /// A raw request: returns status and JSON body (Null when the body is not JSON).
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (u16, serde_json::Value) {
        let mut req = self.http().request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }
}

impl Drop for RootProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal valid SLA with one application and the given services (name, rr_ip).
pub fn sla(app: &str, ns: &str, services: &[(&str, Option<&str>)]) -> serde_json::Value {
    let ms: Vec<serde_json::Value> = services
        .iter()
        .map(|(name, ip)| {
            let mut m = serde_json::json!({
                "microserviceID": "", "microservice_name": name, "microservice_namespace": "test",
                "virtualization": "container", "code": "docker.io/library/busybox:latest",
                "memory": 64, "vcpus": 1, "port": "8080:80/tcp", "cmd": ["sleep", "3600"]
            });
            if let Some(ip) = ip {
                m["addresses"] = serde_json::json!({"rr_ip": ip});
            }
            m
        })
        .collect();
    serde_json::json!({
        "sla_version": "v2.0", "customerID": "Admin",
        "applications": [{"applicationID": "", "application_name": app, "application_namespace": ns,
                          "application_desc": "test app", "microservices": ms}]
    })
}

/// The stable error code of a failed client call.
pub fn code(e: &oak_client::ClientError) -> String {
    match e {
        oak_client::ClientError::Api { status, code, .. } => {
            format!("{status} {}", serde_json::to_value(code).unwrap().as_str().unwrap())
        }
        other => format!("{other}"),
    }
}

/// Whether this machine can run the real hierarchy (root, containerd). With CI=true a missing
/// prerequisite is a failure; elsewhere the test says why it skips.
pub fn can_run_containers(test: &str) -> bool {
    let ok = nix::unistd::Uid::effective().is_root() && Path::new("/run/containerd/containerd.sock").exists();
    if !ok {
        assert!(
            std::env::var("CI").map(|v| v != "true").unwrap_or(true),
            "{test}: CI must run as root with containerd at /run/containerd/containerd.sock"
        );
        eprintln!("skipping {test}: needs root and containerd");
    }
    ok
}

/// A child process that is killed when dropped.
pub struct Proc(pub Option<Child>);

impl Proc {
    pub fn pid(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    /// SIGTERM, and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A root, one cluster and `n` workers, each worker in its own network namespace (a separate
/// host), all on a containerd namespace of their own with the offline test image.
pub struct Hierarchy {
    pub root: RootProcess,
    pub admin: RootClient,
    pub cluster: Proc,
    pub workers: Vec<Proc>,
    pub worker_names: Vec<String>,
    pub ns: String,
    prefix: String,
    dir: tempfile::TempDir,
    cluster_port: u16,
    pub mqtt_port: u16,
    worker_token: String,
    cluster_opts: ClusterOpts,
    /// Extra `oak worker` arguments, by host index.
    pub worker_args: Vec<Vec<String>>,
}

/// How the test clusters run.
#[derive(Clone)]
pub struct ClusterOpts {
    pub report_ms: u64,
    pub heartbeat_ms: u64,
    pub extra: Vec<String>,
}

/// Starts `oak cluster` for `root` over `dir`; returns it and its worker token.
async fn spawn_cluster_proc(
    root: &RootProcess,
    dir: &Path,
    name: &str,
    port: u16,
    mqtt_port: u16,
    o: &ClusterOpts,
) -> (Proc, String) {
    let token = std::fs::read_to_string(root.data_dir.join("cluster-token")).unwrap();
    let p = Proc(Some(
        Command::new(OAK)
            .args(["cluster", "--root", &root.url, "--name", name])
            .args(["--listen", &format!("0.0.0.0:{port}"), "--mqtt-listen", &format!("0.0.0.0:{mqtt_port}")])
            .args([
                "--report-interval-ms",
                &o.report_ms.to_string(),
                "--heartbeat-timeout-ms",
                &o.heartbeat_ms.to_string(),
            ])
            .args(&o.extra)
            .arg("--data-dir")
            .arg(dir)
            .env("OAK_CLUSTER_TOKEN", token.trim())
            .env("RUST_LOG", log_level())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let token_file = dir.join("worker-token");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !token_file.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (p, std::fs::read_to_string(&token_file).unwrap().trim().to_owned())
}

impl Hierarchy {
    /// `tag` (a few letters) keeps this test's namespaces and links apart from others'.
    pub async fn start(tag: &str, workers: usize) -> Self {
        Self::start_with(tag, workers, 500).await
    }

    /// Like [`start`](Self::start), with the report interval of workers and cluster (ms).
    pub async fn start_with(tag: &str, workers: usize, report_ms: u64) -> Self {
        Self::start_opts(tag, workers, report_ms, report_ms * 6, &[]).await
    }

    /// Full control: report interval, heartbeat timeout (ms) and extra `oak cluster` flags.
    pub async fn start_opts(
        tag: &str,
        workers: usize,
        report_ms: u64,
        heartbeat_ms: u64,
        cluster_args: &[&str],
    ) -> Self {
        Self::start_full(tag, workers, report_ms, heartbeat_ms, cluster_args, RootProcess::start().await).await
    }

    /// Like [`start_opts`](Self::start_opts), over a root the caller started.
    pub async fn start_full(
        tag: &str,
        workers: usize,
        report_ms: u64,
        heartbeat_ms: u64,
        cluster_args: &[&str],
        root: RootProcess,
    ) -> Self {
        let ns = format!("oak-e2e-{tag}");
        oak_runtime::testimage::import(&ns).unwrap();
        // Leftovers of an earlier, interrupted run.
        {
            use oak_runtime::Runtime;
            let rt = oak_runtime::containerd::ContainerdRuntime::connect("/run/containerd/containerd.sock", &ns)
                .await
                .unwrap();
            for c in rt.list(&Default::default()).await.unwrap() {
                rt.remove(&c, Duration::from_millis(100)).await.unwrap();
            }
        }
        let admin = root.admin().await;
        let dir = tempdir();
        let cluster_port = free_port();
        let mqtt_port = free_port();
        let cluster_opts =
            ClusterOpts { report_ms, heartbeat_ms, extra: cluster_args.iter().map(|a| a.to_string()).collect() };
        let (cluster, worker_token) = spawn_cluster_proc(
            &root,
            &dir.path().join("cluster"),
            &format!("cl-{tag}"),
            cluster_port,
            mqtt_port,
            &cluster_opts,
        )
        .await;
        let mut h = Hierarchy {
            root,
            admin,
            cluster,
            workers: Vec::new(),
            worker_names: Vec::new(),
            ns,
            prefix: tag.to_owned(),
            dir,
            cluster_port,
            mqtt_port,
            worker_token,
            cluster_opts,
            worker_args: Vec::new(),
        };
        for i in 0..workers {
            let p = h.spawn_worker(i);
            h.workers.push(p);
            h.worker_names.push(format!("{tag}-w{i}"));
        }
        // Wait until every worker reports.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let active: u32 = h.admin.clusters(true).await.unwrap().iter().map(|c| c.active_nodes).sum();
            if active as usize == workers {
                break;
            }
            assert!(Instant::now() < deadline, "only {active} of {workers} workers joined");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        h
    }

    /// A hierarchy whose worker `i` runs with the extra arguments `worker_args[i]`.
    pub async fn start_with_workers(tag: &str, worker_args: Vec<Vec<String>>, report_ms: u64) -> Self {
        Self::start_with_workers_opts(tag, worker_args, report_ms, &[]).await
    }

    /// [`start_with_workers`](Self::start_with_workers) with extra `oak cluster` flags.
    pub async fn start_with_workers_opts(
        tag: &str,
        worker_args: Vec<Vec<String>>,
        report_ms: u64,
        cluster_args: &[&str],
    ) -> Self {
        let mut h = Self::start_full(tag, 0, report_ms, report_ms * 6, cluster_args, RootProcess::start().await).await;
        h.worker_args = worker_args;
        for i in 0..h.worker_args.len() {
            let p = h.spawn_worker(i);
            h.workers.push(p);
            h.worker_names.push(format!("{tag}-w{i}"));
        }
        let n = h.workers.len();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let active: u32 = h.admin.clusters(true).await.unwrap().iter().map(|c| c.active_nodes).sum();
            if active as usize == n {
                break;
            }
            assert!(Instant::now() < deadline, "only {active} of {n} workers joined");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        h
    }

    pub fn host(&self, i: usize) -> (String, String) {
        (format!("oak-e2e-{}-h{i}", self.prefix), format!("oe{}{i}", &self.prefix[..self.prefix.len().min(8)]))
    }

    /// Address of host `i` inside its namespace (as `spawn_worker_to` makes it).
    pub fn host_ip(&self, i: usize) -> std::net::Ipv4Addr {
        let b = 200 + (self.prefix.bytes().map(u32::from).sum::<u32>() % 50) as u8;
        std::net::Ipv4Addr::new(10, b, (i + 1) as u8, 2)
    }

    /// Starts worker `i` of the first cluster in its host namespace (created if needed).
    pub fn spawn_worker(&self, i: usize) -> Proc {
        self.spawn_worker_to(i, self.cluster_port, &self.worker_token)
    }

    /// Starts worker `i` (host index) for the cluster registering on `port` with `token`.
    pub fn spawn_worker_to(&self, i: usize, port: u16, token: &str) -> Proc {
        let (netns, veth) = self.host(i);
        let b = 200 + (self.prefix.bytes().map(u32::from).sum::<u32>() % 50) as u8;
        let gateway = if Path::new(&format!("/run/netns/{netns}")).exists() {
            format!("10.{b}.{}.1", i + 1)
        } else {
            oak_runtime::netns::create_host(&netns, &veth, b, (i + 1) as u8).unwrap().gateway
        };
        Proc(Some(
            Command::new(OAK)
                .args(["worker", "--netns", &netns, "--cluster", &format!("https://{gateway}:{port}")])
                .args(["--token", token, "--name", &format!("{}-w{i}", self.prefix)])
                .args(["--containerd-namespace", &self.ns, "--stop-grace", "1"])
                .args(self.worker_args.get(i).into_iter().flatten())
                .arg("--data-dir")
                .arg(self.dir.path().join(format!("w{i}")))
                .env("RUST_LOG", log_level())
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        ))
    }

    /// Starts (or restarts, same data dir) another cluster `name` with its own ports.
    pub async fn spawn_cluster(&self, name: &str, port: u16, mqtt_port: u16, report_ms: u64) -> (Proc, String) {
        let o = ClusterOpts { report_ms, heartbeat_ms: report_ms * 3, extra: Vec::new() };
        spawn_cluster_proc(&self.root, &self.dir.path().join(format!("cluster-{name}")), name, port, mqtt_port, &o)
            .await
    }

    /// Restarts the first cluster (same ports, options and data dir).
    pub async fn spawn_cluster_first(&self) -> (Proc, String) {
        let dir = self.dir.path().join("cluster");
        spawn_cluster_proc(
            &self.root,
            &dir,
            &format!("cl-{}", self.prefix),
            self.cluster_port,
            self.mqtt_port,
            &self.cluster_opts,
        )
        .await
    }

    pub fn cluster_port(&self) -> u16 {
        self.cluster_port
    }

    /// The hash of the cluster's CA, which its K10 worker token pins.
    pub fn cluster_pin(&self) -> [u8; 32] {
        token_pin(&self.worker_token)
    }

    /// The token workers register with at the first cluster.
    pub fn worker_token(&self) -> &str {
        &self.worker_token
    }

    pub fn worker_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("w{i}"))
    }

    /// Polls a service until `pred` holds for its instances (or panics after `secs`).
    pub async fn wait_for(
        &self,
        service: &str,
        secs: u64,
        what: &str,
        pred: impl Fn(&[oak_api::model::Instance]) -> bool,
    ) -> oak_api::model::Service {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.admin.service(service).await.unwrap();
            if pred(&s.instance_list) {
                return s;
            }
            assert!(Instant::now() < deadline, "{what}: not within {secs} s; instances: {:#?}", s.instance_list);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Containers in this test's containerd namespace.
    pub fn containers(&self) -> Vec<String> {
        let out = Command::new("ctr").args(["-n", &self.ns, "containers", "ls", "-q"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).filter(|l| !l.is_empty()).collect()
    }

    /// Snapshots in this test's namespace other than image layers.
    pub fn instance_snapshots(&self) -> Vec<String> {
        let out = Command::new("ctr").args(["-n", &self.ns, "snapshots", "ls"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("Active")).map(str::to_owned).collect()
    }
}

impl Drop for Hierarchy {
    fn drop(&mut self) {
        for w in &mut self.workers {
            w.stop();
        }
        self.cluster.kill();
        for i in 0..self.workers.len() {
            let (netns, veth) = self.host(i);
            oak_runtime::netns::remove_host(&netns, &veth);
        }
    }
}

/// Log filter for the processes a test starts: `OAK_E2E_LOG` (e.g. `info`) when debugging.
pub fn log_level() -> String {
    std::env::var("OAK_E2E_LOG").unwrap_or_else(|_| "warn".into())
}

/// With `OAK_E2E_PAUSE` set, a failing test stops here for ten minutes with its processes,
/// namespaces and containers up, so they can be inspected (`ip netns exec …`).
#[allow(dead_code)]
pub async fn pause_if_asked(why: &str) {
    if std::env::var("OAK_E2E_PAUSE").is_ok() {
        eprintln!("PAUSED ({why}); inspect now, the test goes on in 10 minutes");
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
}

/// A microservice of the offline test image running `sh -c cmd`, with `extra` fields merged in.
pub fn service(name: &str, cmd: &str, memory: u64, vcpus: f64, extra: serde_json::Value) -> serde_json::Value {
    let mut m = serde_json::json!({
        "microserviceID": "", "microservice_name": name, "microservice_namespace": "e2e",
        "virtualization": "container", "code": oak_runtime::testimage::IMAGE,
        "cmd": ["sh", "-c", cmd], "memory": memory, "vcpus": vcpus
    });
    if let (Some(o), Some(e)) = (m.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    m
}

/// An SLA with one application `name` (namespace `e2e`) of these microservices.
pub fn app(name: &str, services: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({"sla_version": "v2.0", "customerID": "Admin",
           "applications": [{"application_name": name, "application_namespace": "e2e", "application_desc": "", "microservices": services}]})
}

/// `wget` run inside an instance's network namespace (with the host's busybox): what a
/// client in that instance gets.
pub fn fetch_from(container: &str, url: &str) -> Result<String, String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("oak-{container}"), "timeout", "5", "busybox", "wget", "-q", "-O", "-", url])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// An HTTP client (TLS through the ring provider).
/// A client for plain HTTP (or a server whose certificate nothing here trusts: it fails).
pub fn http() -> reqwest::Client {
    oak_tls::http_client()
}

/// A client that trusts only a server proving itself with the CA whose hash is `ca_hash`.
pub fn pinned_http(ca_hash: [u8; 32]) -> reqwest::Client {
    let tls = oak_tls::pki::pinned_client_config(ca_hash).unwrap();
    oak_tls::http_client_trusting(&tls).build().unwrap()
}

/// A TLS connection to `127.0.0.1:port`, trusting only the CA whose hash is `ca_hash`.
pub async fn tls_connect(port: u16, ca_hash: [u8; 32]) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tls = oak_tls::pki::pinned_client_config(ca_hash).unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.unwrap()
}

/// The CA hash a K10 token pins.
pub fn token_pin(token: &str) -> [u8; 32] {
    oak_tls::pki::JoinToken::parse(token).unwrap().ca_hash.expect("a K10 token")
}

pub fn openssl(dir: &Path, args: &[&str]) {
    let out =
        Command::new("openssl").args(args).current_dir(dir).output().expect("openssl (scripts/setup installs it)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA (`<name>-ca.pem`) and a certificate for 127.0.0.1 it signed (`<name>-cert.pem`,
/// `<name>-key.pem`).
pub fn make_pki(dir: &Path, name: &str) {
    let (ca_key, ca) = (format!("{name}-ca-key.pem"), format!("{name}-ca.pem"));
    let (key, csr, cert) = (format!("{name}-key.pem"), format!("{name}.csr"), format!("{name}-cert.pem"));
    openssl(dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &ca_key]);
    openssl(
        dir,
        &["req", "-x509", "-new", "-key", &ca_key, "-subj", &format!("/CN={name} CA"), "-days", "2", "-out", &ca],
    );
    openssl(dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &key]);
    openssl(dir, &["req", "-new", "-key", &key, "-subj", "/CN=oak root", "-out", &csr]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            &cert,
        ],
    );
}
