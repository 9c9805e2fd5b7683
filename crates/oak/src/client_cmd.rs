//! Client commands: tables for people, `--output json` for scripts.

use crate::settings::{self, Credentials};
use anyhow::Context;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use oak_api::ErrorCode;
use oak_api::model::{Application, Cluster, Service};
use oak_client::{ClientError, RootClient};
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct Global {
    /// Root orchestrator URL (or host:port).
    #[arg(long, env = "OAK_ROOT", global = true)]
    pub root: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    /// For an `https://` root: the CA certificate (PEM) its certificate must chain to.
    #[arg(long, env = "OAK_CA", global = true)]
    pub ca: Option<std::path::PathBuf>,
    /// For an `https://` root with its own CA: that CA's sha256 (64 hex digits, as the root
    /// logs it and its K10 tokens carry). Kept with the login.
    #[arg(long, env = "OAK_CA_HASH", global = true)]
    pub ca_hash: Option<String>,
}

/// How the client trusts a root: a CA file, or the hash of its CA.
#[derive(Clone, Debug, Default)]
struct Trust {
    ca: Option<std::path::PathBuf>,
    ca_hash: Option<String>,
}

impl Trust {
    fn of(global: &Global, creds: Option<&Credentials>) -> Self {
        if global.ca.is_some() || global.ca_hash.is_some() {
            return Self { ca: global.ca.clone(), ca_hash: global.ca_hash.clone() };
        }
        creds.map(|c| Self { ca: c.ca.clone(), ca_hash: c.ca_hash.clone() }).unwrap_or_default()
    }
}

/// A client for `root`, trusting what `trust` names.
fn root_client(root: &str, trust: &Trust) -> anyhow::Result<RootClient> {
    if let Some(path) = &trust.ca {
        let pem = std::fs::read(path).with_context(|| format!("cannot read the CA file {}", path.display()))?;
        return Ok(RootClient::with_ca(root, &pem)?);
    }
    if let Some(h) = &trust.ca_hash {
        let hash = oak_tls::pki::parse_hash(h.trim())
            .ok_or_else(|| anyhow::anyhow!("--ca-hash must be 64 hex digits (got {:?})", h))?;
        return Ok(RootClient::with_ca_hash(root, hash)?);
    }
    if root.starts_with("https://") {
        anyhow::bail!(
            "{root} serves HTTPS: say which CA to trust with --ca FILE (the root's <data dir>/ca.pem) or --ca-hash HASH \
             (the ca_hash the root logs at start)"
        );
    }
    Ok(RootClient::new(root))
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct LoginArgs {
    #[command(flatten)]
    global: Global,
    /// User name.
    #[arg(long, short = 'u', default_value = "Admin")]
    username: String,
    /// Password; read from OAK_PASSWORD, or asked for, when not given.
    #[arg(long, env = "OAK_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
pub enum AppCommand {
    /// Create the applications of an SLA file (with their services).
    Create {
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// List your applications.
    List,
    /// Delete an application with its services.
    Delete { id: String },
}

#[derive(clap::Subcommand, Debug)]
pub enum InstanceCommand {
    /// List instances: of one service, or of all your services.
    List { service: Option<String> },
}

#[derive(clap::Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a join token; its secret is shown once.
    Create {
        name: String,
        /// Seconds the token admits clusters (default: until revoked).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// List join tokens (without secrets).
    List,
    /// Revoke a join token: clusters that joined with it are disconnected.
    Revoke { id: String },
}

#[derive(clap::Subcommand, Debug)]
pub enum UserCommand {
    /// Show a user's quota and usage; with a limit given, change it (Admin).
    Quota {
        /// User name.
        name: String,
        /// Most services the user may hold.
        #[arg(long)]
        services: Option<u64>,
        /// Most instances (counting every replica asked for).
        #[arg(long)]
        instances: Option<u64>,
        /// Most vCPUs their instances may reserve.
        #[arg(long)]
        vcpus: Option<f64>,
        /// Most memory (MB) their instances may reserve.
        #[arg(long)]
        memory_mb: Option<u64>,
    },
}

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    #[command(flatten)]
    global: Global,
    /// Service id.
    service: String,
    /// Instance number (default: the first instance).
    #[arg(long, short = 'i')]
    instance: Option<u32>,
    /// Keep printing new output until interrupted.
    #[arg(long, short = 'f')]
    follow: bool,
    /// How much of the end of the log to show first, in bytes.
    #[arg(long, default_value_t = 16384)]
    tail: u64,
}

#[derive(clap::Subcommand, Debug)]
pub enum ServiceCommand {
    /// Set the desired number of instances; the system keeps that many.
    Scale { id: String, replicas: u32 },
    /// Ask for one more instance and follow it until it runs, or fails with a reason.
    Deploy {
        id: String,
        /// Give up waiting after this many seconds (the request stays).
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// List services, of one application or of all.
    List { app: Option<String> },
    /// Show one service with its instances.
    Show { id: String },
}

#[derive(clap::Subcommand, Debug)]
pub enum ClusterCommand {
    /// List clusters: aggregates, worker counts, last report.
    List {
        /// Only clusters that reported recently.
        #[arg(long)]
        active: bool,
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// A client for the resolved root, with the stored token when it belongs to that root.
struct Session {
    root: String,
    creds: Option<Credentials>,
    trust: Trust,
}

impl Session {
    fn open(global: &Global) -> anyhow::Result<Self> {
        let root = settings::resolve_root(global.root.as_deref())?;
        let stored = settings::read_credentials().filter(|c| c.root == root);
        // The trust kept with the login holds even when OAK_TOKEN replaces its token.
        let trust = Trust::of(global, stored.as_ref());
        let creds = std::env::var("OAK_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .map(|token| Credentials { root: root.clone(), token, ..Credentials::default() })
            .or(stored);
        Ok(Self { root, creds, trust })
    }

    fn client(&self) -> anyhow::Result<RootClient> {
        let c = root_client(&self.root, &self.trust)?;
        Ok(match &self.creds {
            Some(cr) => c.with_token(cr.token.clone()),
            None => c,
        })
    }

    /// Runs `op`; when the access token has expired, refreshes it once and retries.
    async fn call<T, F, Fut>(&mut self, op: F) -> anyhow::Result<T>
    where
        F: Fn(RootClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        match op(self.client()?).await {
            Err(e) if e.code() == Some(ErrorCode::Unauthenticated) => {
                let Some(cr) = self.creds.clone().filter(|c| !c.refresh_token.is_empty()) else {
                    return Err(anyhow::anyhow!("{e}; run `oak login --root {}`", self.root));
                };
                let fresh = root_client(&self.root, &self.trust)?
                    .refresh(&cr.refresh_token)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}; run `oak login --root {}`", self.root))?;
                let updated = Credentials { token: fresh.token, ..cr };
                settings::write_credentials(&updated)?;
                self.creds = Some(updated);
                Ok(op(self.client()?).await?)
            }
            other => Ok(other?),
        }
    }
}

fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn table(headers: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED).set_header(headers.to_vec());
    t
}

pub async fn login(args: LoginArgs) -> anyhow::Result<()> {
    let root = settings::resolve_root(args.global.root.as_deref())?;
    let password = match args.password {
        Some(p) => p,
        None => rpassword::prompt_password(format!("password for {} at {root}: ", args.username))
            .context("cannot read the password")?,
    };
    let trust = Trust::of(&args.global, None);
    let resp = root_client(&root, &trust)?.login(&args.username, &password).await?;
    settings::write_credentials(&Credentials {
        root: root.clone(),
        username: args.username.clone(),
        token: resp.token,
        refresh_token: resp.refresh_token,
        ca: trust.ca.map(|p| std::path::absolute(&p).unwrap_or(p)),
        ca_hash: trust.ca_hash,
    })?;
    if args.global.output == Output::Json {
        print_json(&serde_json::json!({"root": root, "username": args.username}))
    } else {
        println!("logged in to {root} as {}", args.username);
        Ok(())
    }
}

fn apps_table(apps: &[Application]) -> Table {
    let mut t = table(&["NAME", "NAMESPACE", "ID", "SERVICES", "DESCRIPTION"]);
    for a in apps {
        t.add_row(vec![
            a.application_name.clone(),
            a.application_namespace.clone(),
            a.id.to_string(),
            a.microservices.len().to_string(),
            a.application_desc.clone(),
        ]);
    }
    t
}

pub async fn app(global: Global, cmd: AppCommand) -> anyhow::Result<()> {
    let mut s = Session::open(&global)?;
    match cmd {
        AppCommand::Create { file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let sla: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
            let names: Vec<(String, String)> = sla
                .get("applications")
                .and_then(|a| a.as_array())
                .map(|apps| {
                    apps.iter()
                        .map(|a| {
                            let f = |k: &str| a.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
                            (f("application_name"), f("application_namespace"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let all = s
                .call(|c| {
                    let sla = sla.clone();
                    async move { c.create_applications(&sla).await }
                })
                .await?;
            let created: Vec<Application> = all
                .into_iter()
                .filter(|a| names.contains(&(a.application_name.clone(), a.application_namespace.clone())))
                .collect();
            match global.output {
                Output::Json => print_json(&created),
                Output::Table => {
                    println!("{}", apps_table(&created));
                    Ok(())
                }
            }
        }
        AppCommand::List => {
            let apps = s.call(|c| async move { c.applications().await }).await?;
            match global.output {
                Output::Json => print_json(&apps),
                Output::Table if apps.is_empty() => {
                    println!("no applications yet; create one with `oak app create -f SLA.json`");
                    Ok(())
                }
                Output::Table => {
                    println!("{}", apps_table(&apps));
                    Ok(())
                }
            }
        }
        AppCommand::Delete { id } => {
            let m = s
                .call(|c| {
                    let id = id.clone();
                    async move { c.delete_application(&id).await }
                })
                .await?;
            match global.output {
                Output::Json => print_json(&m),
                Output::Table => {
                    println!("deleted application {id}");
                    Ok(())
                }
            }
        }
    }
}

fn status_of(s: &Service) -> String {
    s.status.map(|x| x.to_string()).unwrap_or_else(|| "-".into())
}

pub async fn service(global: Global, cmd: ServiceCommand) -> anyhow::Result<()> {
    let mut s = Session::open(&global)?;
    match cmd {
        ServiceCommand::Deploy { id, timeout } => deploy(&mut s, &id, timeout, global.output).await,
        ServiceCommand::Scale { id, replicas } => {
            let v = s
                .call(|c| {
                    let id = id.clone();
                    async move { c.scale(&id, replicas).await }
                })
                .await?;
            match global.output {
                Output::Json => print_json(&v),
                Output::Table => {
                    println!(
                        "service {} will keep {replicas} instance(s); follow with `oak instance list {}`",
                        v.job_name, v.id
                    );
                    Ok(())
                }
            }
        }
        ServiceCommand::List { app } => {
            let svcs = s
                .call(|c| {
                    let app = app.clone();
                    async move { c.services(app.as_deref()).await }
                })
                .await?;
            match global.output {
                Output::Json => print_json(&svcs),
                Output::Table => {
                    let mut t = table(&["NAME", "ID", "APPLICATION", "IMAGE", "STATUS", "INSTANCES"]);
                    for v in &svcs {
                        t.add_row(vec![
                            format!("{}.{}", v.service_name, v.service_ns),
                            v.id.to_string(),
                            format!("{}.{}", v.app_name, v.app_ns),
                            v.image.clone(),
                            status_of(v),
                            v.instance_list.len().to_string(),
                        ]);
                    }
                    println!("{t}");
                    Ok(())
                }
            }
        }
        ServiceCommand::Show { id } => {
            let v = s
                .call(|c| {
                    let id = id.clone();
                    async move { c.service(&id).await }
                })
                .await?;
            match global.output {
                Output::Json => print_json(&v),
                Output::Table => {
                    let mut t = table(&["FIELD", "VALUE"]);
                    let ports: Vec<String> = v.spec.ports().iter().map(ToString::to_string).collect();
                    let rows: Vec<(&str, String)> = vec![
                        ("id", v.id.to_string()),
                        ("job name", v.job_name.clone()),
                        ("application", v.application_id.to_string()),
                        ("image", v.image.clone()),
                        ("runtime", v.spec.virtualization.clone()),
                        ("command", if v.spec.cmd.is_empty() { "-".into() } else { v.spec.cmd.join(" ") }),
                        ("memory (MiB)", v.spec.memory.to_string()),
                        ("vcpus", v.spec.vcpus.to_string()),
                        ("ports", if ports.is_empty() { "-".into() } else { ports.join(", ") }),
                        ("round-robin IP", v.rr_ip.clone().unwrap_or_else(|| "-".into())),
                        ("closest IP", v.closest_ip.clone().unwrap_or_else(|| "-".into())),
                        ("status", status_of(&v)),
                        ("detail", v.status_detail.clone().unwrap_or_else(|| "-".into())),
                    ];
                    for (k, val) in rows {
                        t.add_row(vec![k.to_owned(), val]);
                    }
                    println!("{t}");
                    if v.instance_list.is_empty() {
                        println!("no instances");
                    } else {
                        let mut it = table(&["INSTANCE", "INSTANCE IP", "STATUS", "CLUSTER", "WORKER", "DETAIL"]);
                        for i in &v.instance_list {
                            it.add_row(vec![
                                i.instance_number.to_string(),
                                i.instance_ip.clone().unwrap_or_else(|| "-".into()),
                                i.status.to_string(),
                                i.cluster_id.as_ref().map(ToString::to_string).unwrap_or_else(|| "-".into()),
                                i.worker_name.clone().or(i.worker_id.clone()).unwrap_or_else(|| "-".into()),
                                i.status_detail.clone(),
                            ]);
                        }
                        println!("{it}");
                    }
                    Ok(())
                }
            }
        }
    }
}

pub async fn cluster(global: Global, active: bool) -> anyhow::Result<()> {
    let mut s = Session::open(&global)?;
    let clusters: Vec<Cluster> = s.call(|c| async move { c.clusters(active).await }).await?;
    match global.output {
        Output::Json => print_json(&clusters),
        Output::Table if clusters.is_empty() => {
            println!("no clusters have joined this root");
            Ok(())
        }
        Output::Table => {
            let mut t = table(&[
                "NAME",
                "ID",
                "ACTIVE",
                "WORKERS",
                "CPUS",
                "CPU %",
                "MEMORY FREE/TOTAL (MiB)",
                "RUNTIMES",
                "LAST SEEN",
            ]);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            for c in &clusters {
                t.add_row(vec![
                    c.cluster_name.clone(),
                    c.id.to_string(),
                    if c.active { "yes".into() } else { "no".into() },
                    format!("{}/{}", c.active_nodes, c.workers),
                    format!("{:.0}", c.total_cpu_cores),
                    format!("{:.0}", c.aggregated_cpu_percent),
                    format!("{}/{}", c.memory_free_mb, c.memory_in_mb),
                    c.virtualization.join(","),
                    format!("{:.0} s ago", (now - c.last_modified_timestamp).max(0.0)),
                ]);
            }
            println!("{t}");
            Ok(())
        }
    }
}

/// Statuses an instance does not leave by itself.
fn settled(st: oak_api::Status) -> bool {
    use oak_api::Status::*;
    matches!(st, Running | Completed | Failed | Dead | Undeployed)
}

async fn deploy(s: &mut Session, id: &str, timeout: u64, output: Output) -> anyhow::Result<()> {
    let req = s.call(|c| async move { c.request_instance(id).await }).await?;
    let n = req.instance_number;
    let start = std::time::Instant::now();
    let mut last = (req.status, req.status_detail.clone());
    if output == Output::Table {
        println!("instance {n} of service {id} requested");
        println!("{:>6.1}s  {:<28} {}", 0.0, last.0.to_string(), last.1);
    }
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let svc = s.call(|c| async move { c.service(id).await }).await?;
        let Some(inst) = svc.instance_list.iter().find(|i| i.instance_number == n) else {
            anyhow::bail!("instance {n} of service {id} was removed while deploying");
        };
        let now = (inst.status, inst.status_detail.clone());
        if now != last {
            if output == Output::Table {
                println!("{:>6.1}s  {:<28} {}", start.elapsed().as_secs_f64(), now.0.to_string(), now.1);
            }
            last = now;
        }
        if settled(inst.status) {
            if output == Output::Json {
                print_json(inst)?;
            }
            return match inst.status {
                oak_api::Status::Running | oak_api::Status::Completed => Ok(()),
                st => Err(anyhow::anyhow!("instance {n} is {st}: {}", inst.status_detail)),
            };
        }
        if start.elapsed().as_secs() >= timeout {
            anyhow::bail!(
                "instance {n} is still {} after {timeout} s ({}); the request stays, follow it with `oak service show {id}`",
                inst.status,
                inst.status_detail
            );
        }
    }
}

pub async fn instance(global: Global, cmd: InstanceCommand) -> anyhow::Result<()> {
    let mut s = Session::open(&global)?;
    let InstanceCommand::List { service } = cmd;
    let services = match service {
        Some(id) => vec![
            s.call(|c| {
                let id = id.clone();
                async move { c.service(&id).await }
            })
            .await?,
        ],
        None => s.call(|c| async move { c.services(None).await }).await?,
    };
    match global.output {
        Output::Json => {
            let rows: Vec<serde_json::Value> = services
                .iter()
                .flat_map(|sv| {
                    sv.instance_list.iter().map(
                        move |i| serde_json::json!({"microserviceID": sv.id, "service": sv.job_name, "instance": i}),
                    )
                })
                .collect();
            print_json(&rows)
        }
        Output::Table => {
            let mut t =
                table(&["SERVICE", "INSTANCE", "STATUS", "CLUSTER", "WORKER", "ADDRESS", "CPU %", "MEM MiB", "DETAIL"]);
            for sv in &services {
                for i in &sv.instance_list {
                    t.add_row(vec![
                        format!("{}.{}", sv.service_name, sv.service_ns),
                        i.instance_number.to_string(),
                        i.status.to_string(),
                        i.cluster_id.as_ref().map(ToString::to_string).unwrap_or_else(|| "-".into()),
                        i.worker_name.clone().or(i.worker_id.clone()).unwrap_or_else(|| "-".into()),
                        i.host_ip.clone().unwrap_or_else(|| "-".into()),
                        i.cpu_percent.map(|c| format!("{c:.1}")).unwrap_or_else(|| "-".into()),
                        i.memory_mb.map(|m| format!("{m:.1}")).unwrap_or_else(|| "-".into()),
                        i.status_detail.clone(),
                    ]);
                }
            }
            println!("{t}");
            Ok(())
        }
    }
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let mut s = Session::open(&args.global)?;
    let svc = args.service.clone();
    let n = match args.instance {
        Some(n) => n,
        None => {
            let v = s
                .call(|c| {
                    let svc = svc.clone();
                    async move { c.service(&svc).await }
                })
                .await?;
            v.instance_list
                .first()
                .map(|i| i.instance_number)
                .ok_or_else(|| anyhow::anyhow!("service {svc} has no instances"))?
        }
    };
    let tail = args.tail;
    let first = s
        .call(|c| {
            let svc = svc.clone();
            async move { c.logs(&svc, n, None, tail).await }
        })
        .await?;
    use std::io::Write;
    print!("{}", first.text);
    std::io::stdout().flush()?;
    if !args.follow {
        return Ok(());
    }
    let mut next = first.next_offset;
    loop {
        tokio::select! {
            _ = crate::shutdown_signal() => return Ok(()),
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
        }
        let r = s
            .call(|c| {
                let svc = svc.clone();
                async move { c.logs(&svc, n, Some(next), 256 * 1024).await }
            })
            .await?;
        if r.next_offset < next {
            // The log was replaced (the instance was placed again): start over.
            next = 0;
            continue;
        }
        print!("{}", r.text);
        std::io::stdout().flush()?;
        next = r.next_offset;
    }
}

pub async fn token(global: Global, cmd: TokenCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    let mut s = Session::open(&global)?;
    let v: serde_json::Value = match &cmd {
        TokenCommand::Create { name, ttl } => {
            let body = serde_json::json!({ "name": name, "ttl_seconds": ttl });
            s.call(|c| {
                let body = body.clone();
                async move { c.request(Method::POST, "/api/tokens", Some(&body)).await }
            })
            .await?
        }
        TokenCommand::List => {
            s.call(|c| async move { c.request(Method::GET, "/api/tokens", None::<&serde_json::Value>).await }).await?
        }
        TokenCommand::Revoke { id } => {
            let path = format!("/api/tokens/{id}");
            s.call(|c| {
                let path = path.clone();
                async move { c.request(Method::DELETE, &path, None::<&serde_json::Value>).await }
            })
            .await?
        }
    };
    if global.output == Output::Json {
        return print_json(&v);
    }
    let rows: Vec<serde_json::Value> = match v.as_array() {
        Some(a) => a.clone(),
        None => vec![v.clone()],
    };
    let mut t = table(&["ID", "NAME", "CREATED", "REVOKED"]);
    for r in &rows {
        let f = |k: &str| {
            r.get(k).map(|x| x.as_str().map(str::to_owned).unwrap_or_else(|| x.to_string())).unwrap_or_default()
        };
        t.add_row(vec![f("id"), f("name"), f("created_at"), f("revoked")]);
    }
    println!("{t}");
    if let Some(secret) = v.get("secret").and_then(|x| x.as_str()) {
        println!("secret (shown only now): {secret}");
        println!("join with: oak cluster --root {} --token {secret} --name NAME", s.root);
    }
    Ok(())
}

pub async fn user(global: Global, cmd: UserCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    let mut s = Session::open(&global)?;
    let UserCommand::Quota { name, services, instances, vcpus, memory_mb } = cmd;
    let path = format!("/api/user/{name}/quota");
    let update = oak_api::model::QuotaUpdate { services, instances, vcpus, memory_mb };
    let q: oak_api::model::QuotaStatus = if update == oak_api::model::QuotaUpdate::default() {
        s.call(|c| {
            let path = path.clone();
            async move { c.request(Method::GET, &path, None::<&serde_json::Value>).await }
        })
        .await?
    } else {
        s.call(|c| {
            let (path, update) = (path.clone(), update.clone());
            async move { c.request(Method::PUT, &path, Some(&update)).await }
        })
        .await?
    };
    if global.output == Output::Json {
        return print_json(&q);
    }
    let mut t = table(&["QUOTA", "USED", "LIMIT"]);
    let limit = |f: &dyn Fn(&oak_api::model::QuotaLimits) -> String| q.limits.as_ref().map_or("none".to_owned(), f);
    t.add_row(vec!["services".to_owned(), q.used.services.to_string(), limit(&|l| l.services.to_string())]);
    t.add_row(vec!["instances".to_owned(), q.used.instances.to_string(), limit(&|l| l.instances.to_string())]);
    t.add_row(vec!["vcpus".to_owned(), q.used.vcpus.to_string(), limit(&|l| l.vcpus.to_string())]);
    t.add_row(vec!["memory_mb".to_owned(), q.used.memory_mb.to_string(), limit(&|l| l.memory_mb.to_string())]);
    println!("user {}", q.user);
    println!("{t}");
    Ok(())
}
