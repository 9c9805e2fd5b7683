//! `oak`: one binary for every role (root orchestrator, and later cluster and worker) and the
//! client. It parses arguments, wires the real adapters and waits for a signal; all behaviour
//! lives in the libraries.

mod client_cmd;
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
    /// Run a root on this machine with a sample application, for a first try.
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
    /// Clusters known to the root.
    Cluster {
        #[command(flatten)]
        global: client_cmd::Global,
        #[command(subcommand)]
        command: client_cmd::ClusterCommand,
    },
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
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=warn"));
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
    let root = oak_root::Root::open(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    tracing::info!(listen = %listener.local_addr()?, data_dir = %config.data_dir.display(), "root orchestrator ready");
    root.serve(listener, shutdown_signal()).await?;
    tracing::info!("root orchestrator stopped");
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let is_server = matches!(cli.command, Command::Root(_) | Command::Up(_));
    if is_server {
        init_logging();
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
            Command::Login(args) => client_cmd::login(args).await,
            Command::App { global, command } => client_cmd::app(global, command).await,
            Command::Service { global, command } => client_cmd::service(global, command).await,
            Command::Cluster { global, command } => client_cmd::cluster(global, command).await,
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
