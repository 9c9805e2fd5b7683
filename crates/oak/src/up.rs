//! `oak up`: a whole hierarchy on this machine — a root, M clusters, N workers per cluster —
//! with a sample application that needs no internet (its image is built from the host's
//! busybox-static). Run as root, each worker lives in its own network namespace with its own
//! address, as a separate host would. Ctrl-C tears everything down.

use crate::settings::{self, Credentials};
use anyhow::Context;
use oak_client::RootClient;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SAMPLE_SLA: &str = include_str!("../../../examples/sla/hello.json");

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Number of clusters.
    #[arg(long, default_value_t = 1)]
    clusters: u8,
    /// Workers per cluster.
    #[arg(long, default_value_t = 2)]
    workers: u8,
    /// Address of the root's user API.
    #[arg(long, default_value = "127.0.0.1:10000")]
    listen: SocketAddr,
    /// Where the processes keep their data and logs (default: a temporary directory, removed on exit).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Do not deploy the sample application.
    #[arg(long)]
    no_sample: bool,
}

/// Everything `oak up` started; dropping it stops and removes it all.
struct Hierarchy {
    children: Vec<(String, Child)>,
    hosts: Vec<(String, String)>,
    dir: PathBuf,
    remove_dir: bool,
}

impl Hierarchy {
    /// Starts `oak <args>`; secrets go in `env`, never on the command line (where `ps` shows them).
    fn spawn(&mut self, name: &str, args: &[String], env: &[(&str, &str)]) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("cannot find the oak executable")?;
        // Logs may name secrets' paths and users: private like the data dirs beside them.
        let log = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(self.dir.join(format!("{name}.log")))?
        };
        let child = Command::new(exe)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,rumqttd=warn,rumqttc=warn,tower_http=warn".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        self.children.push((name.to_owned(), child));
        Ok(())
    }

    fn stop(&mut self) {
        // Workers first (they remove their instances), then clusters, then the root.
        for (_, c) in self.children.iter().rev() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for (name, c) in self.children.iter_mut().rev() {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    _ if Instant::now() > deadline => {
                        eprintln!("{name} did not stop in time; killing it");
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        self.children.clear();
        for (ns, veth) in self.hosts.drain(..) {
            oak_runtime::netns::remove_host(&ns, &veth);
        }
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Hierarchy {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn wait_ready(url: &str, ca_hash: [u8; 32]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = RootClient::with_ca_hash(url, ca_hash)?;
    while Instant::now() < deadline {
        if client.request::<serde_json::Value>(reqwest::Method::GET, "/docs/openapi.json", None::<&()>).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the root at {url} did not come up; see its log")
}

/// A K10 token once its file holds one (the secret is written first, then the whole token).
fn read_pinned_token(path: &Path) -> anyhow::Result<(String, [u8; 32])> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let token = read_secret(path)?;
        if let Some(h) = oak_tls::pki::JoinToken::parse(&token).ok().and_then(|t| t.ca_hash) {
            return Ok((token, h));
        }
        if Instant::now() > deadline {
            anyhow::bail!("{} holds no K10 token", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_secret(path: &Path) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.trim().is_empty()
        {
            return Ok(s.trim().to_owned());
        }
        if Instant::now() > deadline {
            anyhow::bail!("{} did not appear", path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let is_root = nix::unistd::Uid::effective().is_root();
    let (dir, remove_dir) = match &args.data_dir {
        Some(d) => (d.clone(), false),
        None => (std::env::temp_dir().join(format!("oak-up-{}", std::process::id())), true),
    };
    oak_store::datadir::prepare(&dir)?;
    let mut h = Hierarchy { children: Vec::new(), hosts: Vec::new(), dir: dir.clone(), remove_dir };
    let password = crate::admin_password_from_env().unwrap_or_else(|| oak_root::DEFAULT_ADMIN_PASSWORD.to_owned());
    let url = format!("https://{}", args.listen);

    println!(
        "starting a root, {} cluster(s) and {} worker(s) per cluster (logs in {})",
        args.clusters,
        args.workers,
        dir.display()
    );
    h.spawn(
        "root",
        &[
            "root".into(),
            "--listen".into(),
            args.listen.to_string(),
            "--data-dir".into(),
            dir.join("root").display().to_string(),
        ],
        &[],
    )?;
    // The root writes its token (K10<ca-hash>::<secret>) before it serves: the hash is how
    // everything here trusts it, with no CA file passed around.
    let (cluster_token, ca_hash) = read_pinned_token(&dir.join("root").join("cluster-token"))?;
    wait_ready(&url, ca_hash).await?;
    if is_root {
        oak_runtime::testimage::import("oak").map_err(anyhow::Error::msg).context("cannot load the sample image")?;
    } else {
        eprintln!("note: not running as root: workers share this host's network and cannot start containers");
    }
    for c in 1..=args.clusters {
        let port = 10100 + u16::from(c - 1) * 10;
        let mqtt = 10003 + u16::from(c - 1) * 10;
        let cdir = dir.join(format!("cluster-{c}"));
        h.spawn(
            &format!("cluster-{c}"),
            &[
                "cluster".into(),
                "--root".into(),
                url.clone(),
                "--name".into(),
                format!("cluster-{c}"),
                "--listen".into(),
                format!("0.0.0.0:{port}"),
                "--mqtt-listen".into(),
                format!("0.0.0.0:{mqtt}"),
                "--data-dir".into(),
                cdir.display().to_string(),
                // The sample's client and server land on different workers, so its traffic
                // crosses the overlay's tunnel.
                "--placement".into(),
                "spread".into(),
            ],
            &[("OAK_CLUSTER_TOKEN", &cluster_token)],
        )?;
        let (worker_token, _) = read_pinned_token(&cdir.join("worker-token"))?;
        for w in 1..=args.workers {
            let name = format!("c{c}-w{w}");
            let mut wargs: Vec<String> = vec![
                "worker".into(),
                "--name".into(),
                name.clone(),
                "--data-dir".into(),
                dir.join(&name).display().to_string(),
                "--stop-grace".into(),
                "2".into(),
            ];
            if is_root {
                let (ns, veth) = (format!("oak-up-{name}"), format!("oakup{c}x{w}"));
                let host = oak_runtime::netns::create_host(&ns, &veth, 213, c * 16 + w).map_err(anyhow::Error::msg)?;
                h.hosts.push((ns.clone(), veth));
                wargs.extend(["--netns".into(), ns, "--cluster".into(), format!("https://{}:{port}", host.gateway)]);
            } else {
                // One network for all: each worker's latency probes on a port of its own.
                wargs.extend([
                    "--cluster".into(),
                    format!("https://127.0.0.1:{port}"),
                    "--probe-port".into(),
                    "0".into(),
                ]);
            }
            h.spawn(&name, &wargs, &[("OAK_WORKER_TOKEN", &worker_token)])?;
        }
    }

    let result = demo(&url, ca_hash, &password, &args).await;
    match &result {
        Ok(()) => {
            println!("\npress Ctrl-C to stop and remove everything");
            crate::shutdown_signal().await;
        }
        Err(e) => eprintln!("error: {e:#}"),
    }
    println!("stopping…");
    h.stop();
    println!("stopped");
    result
}

async fn demo(url: &str, ca_hash: [u8; 32], password: &str, args: &UpArgs) -> anyhow::Result<()> {
    let login = RootClient::with_ca_hash(url, ca_hash)?.login("Admin", password).await?;
    settings::write_credentials(&Credentials {
        root: url.to_owned(),
        username: "Admin".into(),
        token: login.token.clone(),
        refresh_token: login.refresh_token,
        ca: None,
        ca_hash: Some(oak_tls::pki::hex(&ca_hash)),
    })?;
    let client = RootClient::with_ca_hash(url, ca_hash)?.with_token(login.token);
    // Wait for the clusters and their workers to join.
    let want = u32::from(args.workers) * u32::from(args.clusters);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let clusters = client.clusters(true).await?;
        let workers: u32 = clusters.iter().map(|c| c.active_nodes).sum();
        if clusters.len() == usize::from(args.clusters) && workers >= want {
            println!("{} cluster(s) with {workers} worker(s) joined", clusters.len());
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "only {} cluster(s) and {workers} worker(s) joined within 30 s; see the logs",
                clusters.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("root orchestrator: {url}  (API docs: {url}/api/docs); logged in as Admin");
    if args.no_sample {
        return Ok(());
    }
    let sla: serde_json::Value = serde_json::from_str(SAMPLE_SLA)?;
    let apps = client.create_applications(&sla).await?;
    let start = Instant::now();
    for app in &apps {
        println!("\nsample application {}.{} ({})", app.application_name, app.application_namespace, app.id);
        for sid in &app.microservices {
            client.request_instance(sid.as_str()).await?;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let svcs = client.services(Some(app.id.as_str())).await?;
            let running = svcs.iter().all(|s| s.instance_list.iter().all(|i| i.status == oak_api::Status::Running));
            if running || Instant::now() > deadline {
                for s in &svcs {
                    for i in &s.instance_list {
                        println!(
                            "  {:<8} instance {}  {:<10} on {:<8} {}",
                            s.service_name,
                            i.instance_number,
                            i.status.to_string(),
                            i.worker_name.clone().unwrap_or_else(|| "-".into()),
                            s.id
                        );
                    }
                }
                if running {
                    println!("  all running after {:.1} s", start.elapsed().as_secs_f64());
                    show_overlay(&client, &svcs).await;
                } else {
                    println!("  not all running after 60 s; see `oak instance list`");
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    println!("\ntry:");
    println!("  oak service show <service id>      (semantic addresses, where each instance runs)");
    println!("  oak cluster list");
    println!("  oak instance list");
    println!("  oak logs <service id> --follow");
    println!("  oak app create -f fixtures/sla/blank_app_without_services.json");
    Ok(())
}

/// Waits for the sample's client to fetch the server's page through the round-robin IP and
/// shows the path it took: client worker → Service IP → server worker, and the peer address
/// the server saw (the client's Instance IP, never its real one).
async fn show_overlay(client: &RootClient, svcs: &[oak_api::model::Service]) {
    let (Some(c), Some(s)) =
        (svcs.iter().find(|s| s.service_name == "client"), svcs.iter().find(|s| s.service_name == "server"))
    else {
        return;
    };
    let (Some(ci), Some(si)) = (c.instance_list.first(), s.instance_list.first()) else { return };
    let where_ = |i: &oak_api::model::Instance| i.worker_name.clone().unwrap_or_else(|| "-".into());
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let got = client.logs(c.id.as_str(), ci.instance_number, None, 4096).await.map(|l| l.text).unwrap_or_default();
        if let Some(line) = got.lines().rev().find(|l| !l.trim().is_empty()) {
            println!(
                "  overlay: client on {} fetched http://{}/ from the server on {}: {:?}",
                where_(ci),
                s.rr_ip.clone().unwrap_or_default(),
                where_(si),
                line.trim()
            );
            let seen =
                client.logs(s.id.as_str(), si.instance_number, None, 4096).await.map(|l| l.text).unwrap_or_default();
            if let Some(peer) = seen.lines().rev().find(|l| l.contains("url:")).and_then(|l| l.split("]:").next()) {
                println!(
                    "  the server saw the client as {} (its Instance IP {})",
                    peer.trim_start_matches("[::ffff:"),
                    ci.instance_ip.clone().unwrap_or_default()
                );
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!("  overlay: the client has fetched nothing within 20 s; see `oak logs {}`", c.id);
}
