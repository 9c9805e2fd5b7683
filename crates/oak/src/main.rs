//! `oak`: one binary for every role (root orchestrator, and later cluster and worker) and the
//! client. It parses arguments, wires the real adapters and waits for a signal; all behaviour
//! lives in the libraries.

mod client_cmd;
mod serve;
mod settings;
mod up;

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "oak", version, about = "Oakestra in Rust: a hierarchical orchestrator for the edge")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the root orchestrator (user API, auth, store).
    Root(RootArgs),
    /// Run a cluster orchestrator that joins a root (`oak cluster --root URL --token T --name N`),
    /// or list clusters (`oak cluster list`).
    Cluster(ClusterCmd),
    /// Run a worker node that joins a cluster.
    Worker(serve::WorkerArgs),
    /// Build the offline sample image (oak.local/busybox:latest, from busybox-static) and
    /// import it into containerd.
    LoadImage {
        #[arg(long, default_value = "oak")]
        namespace: String,
    },
    /// Run a whole hierarchy on this machine with a sample application, for a first try.
    Up(up::UpArgs),
    /// Log in to a root and keep the token for later commands.
    Login(client_cmd::LoginArgs),
    /// Applications.
    App {
        #[command(flatten)]
        global: client_cmd::Global,
        #[command(subcommand)]
        command: client_cmd::AppCommand,
    },
    /// Services.
    Service {
        #[command(flatten)]
        global: client_cmd::Global,
        #[command(subcommand)]
        command: client_cmd::ServiceCommand,
    },
    /// Instances of services.
    Instance {
        #[command(flatten)]
        global: client_cmd::Global,
        #[command(subcommand)]
        command: client_cmd::InstanceCommand,
    },
    /// Join tokens for clusters (Admin): create, list, revoke.
    Token {
        #[command(flatten)]
        global: client_cmd::Global,
        #[command(subcommand)]
        command: client_cmd::TokenCommand,
    },
    /// Users: quotas (`oak user quota NAME [--instances N …]`).
    User {
        #[command(flatten)]
        global: client_cmd::Global,
        #[command(subcommand)]
        command: client_cmd::UserCommand,
    },
    /// Show an instance's output (stdout and stderr), fetched from its worker.
    Logs(client_cmd::LogsArgs),
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct ClusterCmd {
    #[command(subcommand)]
    sub: Option<client_cmd::ClusterCommand>,
    #[command(flatten)]
    run: serve::ClusterArgs,
}

#[derive(clap::Args, Debug)]
struct RootArgs {
    /// Address of the user API.
    #[arg(long, default_value = "0.0.0.0:10000", env = "OAK_ROOT_LISTEN")]
    listen: SocketAddr,
    /// Where the root keeps its store (created if missing).
    #[arg(long, default_value = "/var/lib/oak/root", env = "OAK_ROOT_DATA_DIR")]
    data_dir: PathBuf,
    /// Lifetime of access tokens, in seconds.
    #[arg(long, default_value_t = 600)]
    access_token_ttl: u64,
    /// A cluster silent this long (ms) is lost: its instances move to other clusters.
    #[arg(long, env = "OAK_CLUSTER_TIMEOUT_MS", default_value_t = 10000)]
    cluster_timeout_ms: u64,
    /// Token clusters join with (default: generated into <data-dir>/cluster-token).
    #[arg(long, env = "OAK_CLUSTER_TOKEN", hide_env_values = true)]
    cluster_token: Option<String>,
    /// Named areas for `latency` constraints: a JSON object from area name to
    /// {"location": "LAT,LONG", "radius_km": KM} and/or {"users": ["ADDRESS", ...]}.
    #[arg(long, env = "OAK_AREAS")]
    areas: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key. Without it the root
    /// serves HTTPS with a certificate of its own CA (made on first start in the data dir);
    /// cluster tokens carry that CA's hash.
    #[arg(long, env = "OAK_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long, env = "OAK_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Extra names (DNS or IP) for the root's own serving certificate, for clients that check
    /// names with `--ca` (clusters joining with a K10 token check the CA only).
    #[arg(long, value_delimiter = ',')]
    tls_san: Vec<String>,
    /// Serve plain HTTP instead of HTTPS (behind a TLS-terminating proxy, or for the original
    /// oak-cli, which speaks plain HTTP). Passwords and tokens then cross the network in clear.
    #[arg(long)]
    insecure_plain_http: bool,
    /// Most connections open at once (default: the open-file limit less 128, at most 16384).
    #[arg(long, env = "OAK_MAX_CONNECTIONS", hide = true)]
    max_connections: Option<usize>,
    /// A request head must arrive within this many ms (default 10000).
    #[arg(long, env = "OAK_HEADER_TIMEOUT_MS", hide = true)]
    header_timeout_ms: Option<u64>,
    /// A connection that moves no byte for this many ms is closed (default 120000).
    #[arg(long, env = "OAK_IDLE_TIMEOUT_MS", hide = true)]
    idle_timeout_ms: Option<u64>,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=warn,rumqttd=warn,rumqttc=warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// Completes on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// The bootstrap Admin password: `OAK_ADMIN_PASSWORD`, or the original's default when unset.
pub(crate) fn admin_password_from_env() -> Option<String> {
    std::env::var("OAK_ADMIN_PASSWORD").ok().filter(|p| !p.is_empty())
}

async fn run_root(args: RootArgs) -> anyhow::Result<()> {
    let mut config = oak_root::RootConfig::new(args.listen, args.data_dir);
    config.admin_password = admin_password_from_env();
    config.access_token_ttl_secs = args.access_token_ttl;
    config.cluster_token = args.cluster_token;
    config.cluster_timeout_secs = args.cluster_timeout_ms.max(1000) as f64 / 1000.0;
    if let Some(path) = &args.areas {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read --areas {}: {e}", path.display()))?;
        config.areas =
            oak_root::registry::parse_areas(&text).map_err(|e| anyhow::anyhow!("--areas {}: {e}", path.display()))?;
        tracing::info!(areas = config.areas.len(), "named areas loaded");
    }
    if !args.tls_san.is_empty() && (args.insecure_plain_http || args.tls_cert.is_some()) {
        anyhow::bail!(
            "--tls-san names the root's own certificate: it has no effect with --tls-cert or --insecure-plain-http"
        );
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        _ if args.insecure_plain_http => {
            if args.tls_cert.is_some() {
                anyhow::bail!("--insecure-plain-http and --tls-cert contradict each other: choose one");
            }
            if config.listen.ip().is_loopback() {
                tracing::info!(listen = %config.listen, "serving plain HTTP on loopback (--insecure-plain-http)");
            } else {
                tracing::warn!(listen = %config.listen, "serving plain HTTP (--insecure-plain-http): passwords and tokens cross the network in clear");
            }
            None
        }
        (Some(cert), Some(key)) => {
            let chain =
                std::fs::read(cert).map_err(|e| anyhow::anyhow!("cannot read --tls-cert {}: {e}", cert.display()))?;
            config.tls_pin = oak_tls::chain_pin(&chain).map_err(anyhow::Error::msg)?;
            Some(oak_tls::server_config(cert, key).map_err(anyhow::Error::msg)?)
        }
        _ => {
            // Zero configuration: the root's own CA, kept in its data dir.
            oak_store::datadir::prepare(&config.data_dir)?;
            let ca =
                oak_tls::pki::Authority::load_or_create(&config.data_dir, "oak root").map_err(anyhow::Error::msg)?;
            config.tls_pin = Some(ca.hash());
            tracing::info!(
                ca = %config.data_dir.join(oak_tls::pki::CA_CERT_FILE).display(),
                ca_hash = %oak_tls::pki::hex(&ca.hash()),
                "serving HTTPS with the root's own CA"
            );
            Some(
                ca.server_config(&oak_tls::pki::default_names(config.listen, &args.tls_san))
                    .map_err(anyhow::Error::msg)?,
            )
        }
    };
    match oak_root::raise_file_limit() {
        Ok(limit) => tracing::info!(open_files = limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let mut limits = oak_root::ConnLimits { max_connections: args.max_connections, ..Default::default() };
    if let Some(ms) = args.header_timeout_ms {
        limits.header_timeout = std::time::Duration::from_millis(ms.max(1));
    }
    if let Some(ms) = args.idle_timeout_ms {
        limits.idle_timeout = std::time::Duration::from_millis(ms.max(1));
    }
    let root = oak_root::Root::open(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(listen = %listener.local_addr()?, scheme, data_dir = %config.data_dir.display(), "root orchestrator ready");
    root.serve_with(listener, tls, limits, shutdown_signal()).await?;
    tracing::info!("root orchestrator stopped");
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let is_server = matches!(
        cli.command,
        Command::Root(_) | Command::Up(_) | Command::Worker(_) | Command::Cluster(ClusterCmd { sub: None, .. })
    );
    if is_server {
        init_logging();
    }
    // A worker that plays a separate host enters its namespace before any thread exists, so
    // that every thread of the runtime (and every child process) lives in it.
    if let Command::Worker(serve::WorkerArgs { netns: Some(ns), .. }) = &cli.command
        && let Err(e) = oak_runtime::netns::enter(ns)
    {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Root(args) => run_root(args).await,
            Command::Up(args) => up::run(args).await,
            Command::LoadImage { namespace } => {
                oak_runtime::testimage::import(&namespace).map_err(anyhow::Error::msg)?;
                println!("imported {} into containerd namespace {namespace}", oak_runtime::testimage::IMAGE);
                Ok(())
            }
            Command::Cluster(ClusterCmd { sub: Some(client_cmd::ClusterCommand::List { active, output }), run }) => {
                let global = client_cmd::Global { root: run.root, output, ca: run.root_ca, ca_hash: None };
                client_cmd::cluster(global, active).await
            }
            Command::Cluster(ClusterCmd { sub: None, run }) => serve::cluster(run).await,
            Command::Worker(args) => serve::worker(args).await,
            Command::Instance { global, command } => client_cmd::instance(global, command).await,
            Command::Logs(args) => client_cmd::logs(args).await,
            Command::Token { global, command } => client_cmd::token(global, command).await,
            Command::User { global, command } => client_cmd::user(global, command).await,
            Command::Login(args) => client_cmd::login(args).await,
            Command::App { global, command } => client_cmd::app(global, command).await,
            Command::Service { global, command } => client_cmd::service(global, command).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
