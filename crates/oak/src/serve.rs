//! `oak cluster` and `oak worker`: argument parsing and wiring of the real adapters.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    /// URL of the root orchestrator.
    #[arg(long, env = "OAK_ROOT", global = true)]
    pub root: Option<String>,
    /// The root's cluster token.
    #[arg(long, env = "OAK_CLUSTER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Name of this cluster (a label; the root assigns the id).
    #[arg(long)]
    pub name: Option<String>,
    /// Worker registration address.
    #[arg(long, default_value = "0.0.0.0:10100")]
    pub listen: SocketAddr,
    /// Embedded MQTT broker address.
    #[arg(long, default_value = "0.0.0.0:10003")]
    pub mqtt_listen: SocketAddr,
    /// Use an external broker (`mqtt://[user:pass@]host:port`) instead of the embedded one.
    #[arg(long, env = "OAK_MQTT_URL", hide_env_values = true)]
    pub mqtt_url: Option<String>,
    #[arg(long, default_value = "/var/lib/oak/cluster")]
    pub data_dir: PathBuf,
    /// `lat,long` of the cluster's site.
    #[arg(long)]
    pub location: Option<String>,
    /// Token workers register with (default: generated into <data-dir>/worker-token).
    #[arg(long, env = "OAK_WORKER_TOKEN", hide_env_values = true)]
    pub worker_token: Option<String>,
    /// How often workers report, and the cluster reports to the root (ms).
    #[arg(long, default_value_t = 2000)]
    pub report_interval_ms: u64,
    /// A worker silent this long (ms) counts as gone.
    #[arg(long, default_value_t = 6000)]
    pub heartbeat_timeout_ms: u64,
    /// Longest wait (ms) between placements of a crash-looping instance (1 s, 2 s, 4 s … cap).
    #[arg(long, default_value_t = 60000)]
    pub backoff_cap_ms: u64,
    /// A worker not heard from this long (s), with nothing assigned, is forgotten (it can
    /// register again); the root frees its overlay subnet.
    #[arg(long, default_value_t = 86400)]
    pub forget_worker_after: u64,
    /// For an `https://` root whose token pins no CA (a bare secret, or an operator's own
    /// certificates): the CA certificate (PEM) its certificate must chain to. A `K10` token
    /// needs none.
    #[arg(long, env = "OAK_ROOT_CA")]
    pub root_ca: Option<PathBuf>,
    /// Serve worker registration over plain HTTP instead of HTTPS: the worker token then
    /// crosses the network in clear (for a trusted network only).
    #[arg(long)]
    pub insecure_plain_http: bool,
    /// Let workers speak plain MQTT instead of MQTT over TLS: their credentials then cross
    /// the network in clear (for a trusted network only).
    #[arg(long)]
    pub insecure_plain_mqtt: bool,
    /// Extra names (DNS or IP) for the cluster's own serving certificate.
    #[arg(long, value_delimiter = ',')]
    pub tls_san: Vec<String>,
    /// How workers are chosen among those that fit: `best-fit` packs them (keeps room for
    /// large requests), `spread` uses the one with the most free memory.
    #[arg(long, default_value = "best-fit", value_parser = ["best-fit", "spread"])]
    pub placement: String,
}

#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// URL of the cluster's worker registration endpoint (`https://HOST:10100`; a bare
    /// `HOST:PORT` means https).
    #[arg(long, env = "OAK_CLUSTER_URL")]
    pub cluster: String,
    /// The cluster's worker token: `K10<ca-hash>::<secret>` pins the cluster's CA, so no CA
    /// file is needed.
    #[arg(long, env = "OAK_WORKER_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The CA certificate (PEM) the cluster's certificate must chain to, for a token that
    /// pins none.
    #[arg(long, env = "OAK_CLUSTER_CA")]
    pub cluster_ca: Option<PathBuf>,
    /// Register over plain HTTP (an `http://` cluster URL): the worker token then crosses the
    /// network in clear (for a trusted network only).
    #[arg(long)]
    pub insecure_plain_http: bool,
    #[arg(long, default_value = "/var/lib/oak/worker")]
    pub data_dir: PathBuf,
    /// Name of this worker (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// `lat,long` of the worker.
    #[arg(long)]
    pub location: Option<String>,
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub containerd_socket: String,
    #[arg(long, default_value = "oak")]
    pub containerd_namespace: String,
    /// Seconds between SIGTERM and SIGKILL when an instance is stopped.
    #[arg(long, default_value_t = 5)]
    pub stop_grace: u64,
    /// Seconds an image pull may take before the instance fails (and is placed again later).
    #[arg(long, default_value_t = 600)]
    pub pull_timeout: u64,
    /// Run inside this network namespace (/run/netns/NAME), as if it were a separate host.
    #[arg(long)]
    pub netns: Option<String>,
    /// UDP port of the overlay tunnel (must be reachable from the other workers).
    #[arg(long, default_value_t = oak_api::net::TUNNEL_PORT)]
    pub tunnel_port: u16,
    /// Address other workers reach this one at (default: the one used towards the cluster).
    #[arg(long)]
    pub advertise_addr: Option<std::net::Ipv4Addr>,
    /// Run instances without the semantic overlay (they get loopback only).
    #[arg(long)]
    pub no_overlay: bool,
    /// Encrypt and authenticate the tunnel between workers (WireGuard, keys exchanged through
    /// the cluster). `off`: plaintext, for a trusted underlay only; every worker of a
    /// deployment must agree (an encrypted worker drops plaintext datagrams and the other
    /// way round).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub tunnel_encryption: String,
    /// Addons this worker offers, comma-separated (for services' `addons` constraints): at
    /// most 32, each 1-64 characters of A-Z a-z 0-9 . _ -
    #[arg(long, value_delimiter = ',')]
    pub addons: Vec<String>,
    /// UDP port of the latency probes between workers (must be reachable from the other
    /// workers, like the tunnel's); 0: any free port.
    #[arg(long, default_value_t = oak_worker::PROBE_PORT)]
    pub probe_port: u16,
    /// Milliseconds between two rounds of latency probes (at least 100).
    #[arg(long, default_value_t = oak_worker::PROBE_INTERVAL.as_millis() as u64)]
    pub probe_interval_ms: u64,
}

pub async fn cluster(args: ClusterArgs) -> anyhow::Result<()> {
    // Worker registration and the workers' MQTT connections each hold a file descriptor; the
    // registration server's connection bound follows the limit (oak_tls::serve).
    match oak_tls::serve::raise_file_limit() {
        Ok(limit) => tracing::info!(open_files = limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let need = |v: Option<String>, flag: &str| v.ok_or_else(|| anyhow::anyhow!("oak cluster needs {flag}"));
    let config = oak_cluster::ClusterConfig {
        root_url: crate::settings::normalize(&need(args.root, "--root URL (or OAK_ROOT)")?),
        root_token: need(args.token, "--token T (or OAK_CLUSTER_TOKEN): the root's cluster token")?,
        name: need(args.name, "--name NAME")?,
        location: args.location,
        listen: args.listen,
        mqtt_listen: args.mqtt_listen,
        mqtt_advertise_port: None,
        mqtt_url: args.mqtt_url,
        data_dir: args.data_dir,
        worker_token: args.worker_token,
        report_interval: Duration::from_millis(args.report_interval_ms.max(100)),
        root_ca: args.root_ca,
        insecure_plain_http: args.insecure_plain_http,
        insecure_plain_mqtt: args.insecure_plain_mqtt,
        tls_san: args.tls_san,
        policy: if args.placement == "spread" { oak_cluster::Policy::Spread } else { oak_cluster::Policy::BestFit },
        timing: oak_cluster::core::Timing {
            heartbeat_timeout: args.heartbeat_timeout_ms as f64 / 1000.0,
            backoff_cap: args.backoff_cap_ms.max(1000) as f64 / 1000.0,
            forget_after: args.forget_worker_after as f64,
            ..Default::default()
        },
    };
    if config.root_url.starts_with("http://")
        && oak_tls::pki::JoinToken::parse(&config.root_token).is_ok_and(|t| t.ca_hash.is_some())
    {
        anyhow::bail!(
            "the token pins the root's CA, but --root is http://: use https:// (a plain root gives tokens without a CA hash)"
        );
    }
    let cluster = oak_cluster::Cluster::open(config.clone())?;
    let listener = oak_cluster::bind(config.listen).await?;
    tracing::info!(
        listen = %listener.local_addr()?, mqtt = %config.mqtt_listen, root = %config.root_url,
        worker_token_file = %config.data_dir.join("worker-token").display(),
        "cluster orchestrator ready"
    );
    cluster.run(listener, crate::shutdown_signal()).await?;
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "worker".into())
}

pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    // A bad addon stops the worker before it touches anything.
    oak_worker::check_addons(&args.addons)?;
    // Before anything else: a data dir others can read (the node secret) stops the worker.
    oak_store::datadir::prepare(&args.data_dir)?;
    let runtime =
        oak_runtime::containerd::ContainerdRuntime::connect(&args.containerd_socket, &args.containerd_namespace)
            .await?
            .with_pull_timeout(Duration::from_secs(args.pull_timeout));
    let cluster_url = crate::settings::normalize(&args.cluster);
    let token = oak_tls::pki::JoinToken::parse(&args.token).map_err(|e| anyhow::anyhow!("--token: {e}"))?;
    let tls = oak_tls::pki::client_config_for(&token, args.cluster_ca.as_deref()).map_err(anyhow::Error::msg)?;
    if cluster_url.starts_with("http://") && !args.insecure_plain_http {
        anyhow::bail!(
            "refusing to register over plain HTTP ({cluster_url}): the worker token would cross the network in clear; \
             use https:// (the default), or pass --insecure-plain-http on a trusted network"
        );
    }
    if cluster_url.starts_with("https://") && tls.is_none() {
        anyhow::bail!(
            "the worker token pins no CA: use the cluster's K10 token (<cluster data dir>/worker-token), or give --cluster-ca FILE"
        );
    }
    let config = oak_worker::WorkerConfig {
        cluster_url,
        token: args.token,
        tls,
        data_dir: args.data_dir,
        name: args.name.unwrap_or_else(hostname),
        location: args.location,
        addons: args.addons,
        probe_port: args.probe_port,
        probe_interval: Duration::from_millis(args.probe_interval_ms.max(100)),
        stop_grace: Duration::from_secs(args.stop_grace),
        overlay: (!args.no_overlay).then_some(oak_worker::OverlaySettings {
            port: args.tunnel_port,
            advertise: args.advertise_addr,
            encryption: args.tunnel_encryption == "on",
        }),
    };
    let runtime = Arc::new(runtime);
    loop {
        let worker = oak_worker::Worker::register(config.clone(), runtime.clone()).await?;
        tracing::info!(node = %worker.id(), "worker ready");
        match worker.run(crate::shutdown_signal()).await {
            oak_worker::RunEnd::Stopped => return Ok(()),
            // Same id (kept in the data dir), new credentials; leftovers are removed.
            oak_worker::RunEnd::Refused => continue,
        }
    }
}
