//! Harness for the end-to-end tests: real `oak` processes on 127.0.0.1 with temporary data.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use oak_client::RootClient;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const OAK: &str = env!("CARGO_BIN_EXE_oak");

/// The shared SLA fixtures (`../shared/sla` from the project root).
pub fn shared_sla(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/sla").join(rel)
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `oak root` process. Killed when dropped.
pub struct RootProcess {
    child: Option<Child>,
    pub url: String,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    admin_password: Option<String>,
}

impl RootProcess {
    /// A root with a fresh data dir and the default Admin password.
    pub async fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut r = Self::start_in(&dir, None).await;
        r._tmp = Some(tmp);
        r
    }

    /// A root over `dir` (kept by the caller), with an optional OAK_ADMIN_PASSWORD.
    pub async fn start_in(dir: &Path, admin_password: Option<&str>) -> Self {
        Self::start_on(dir, admin_password, None).await
    }

    /// A root over `dir` on a fixed port.
    pub async fn start_on_port(dir: &Path, port: u16) -> Self {
        Self::start_on(dir, None, Some(port)).await
    }

    /// Like [`start_in`], on a given port (a restart keeps its address).
    async fn start_on(dir: &Path, admin_password: Option<&str>, port: Option<u16>) -> Self {
        for _ in 0..5 {
            let port = port.unwrap_or_else(free_port);
            let mut cmd = Command::new(OAK);
            cmd.args(["root", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
                .arg(dir)
                .env("RUST_LOG", "warn")
                .env_remove("OAK_ADMIN_PASSWORD")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            if let Some(p) = admin_password {
                cmd.env("OAK_ADMIN_PASSWORD", p);
            }
            let child = cmd.spawn().unwrap();
            let mut r = RootProcess {
                child: Some(child),
                url: format!("http://127.0.0.1:{port}"),
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
        let http = reqwest::Client::new();
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

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the process and starts a new one over the same data dir.
    pub async fn restart(mut self) -> Self {
        self.kill();
        let tmp = self._tmp.take();
        let port = self.url.rsplit(':').next().and_then(|p| p.parse().ok());
        let mut r = Self::start_on(&self.data_dir.clone(), self.admin_password.as_deref(), port).await;
        r._tmp = tmp;
        r
    }

    pub fn client(&self) -> RootClient {
        RootClient::new(&self.url)
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
        let mut req = reqwest::Client::new().request(method, format!("{}{path}", self.url));
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
