//! `oak up`: a root orchestrator on this machine with a sample application, for a first try.
//!
//! Clusters and workers join the hierarchy in later stages; until then `oak up` runs the root,
//! creates the sample application, asks for one instance of each service, and shows that the
//! instances wait for a cluster.

use crate::settings::{self, Credentials};
use oak_client::RootClient;
use std::net::SocketAddr;
use std::path::PathBuf;

const SAMPLE_SLA: &str = include_str!("../../../examples/sla/hello.json");

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Address of the root's user API.
    #[arg(long, default_value = "127.0.0.1:10000")]
    listen: SocketAddr,
    /// Data directory (default: a fresh temporary directory, removed on exit).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let temp;
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => {
            temp = std::env::temp_dir().join(format!("oak-up-{}", std::process::id()));
            temp
        }
    };
    let cleanup = !data_dir.exists();
    let mut config = oak_root::RootConfig::new(args.listen, data_dir.clone());
    config.admin_password = crate::admin_password_from_env();
    let password = config.admin_password.clone().unwrap_or_else(|| oak_root::DEFAULT_ADMIN_PASSWORD.to_owned());
    let root = oak_root::Root::open(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(root.serve(listener, async move {
        let _ = stop_rx.await;
    }));

    let result = demo(&url, &password).await;
    if let Err(e) = &result {
        eprintln!("error: {e:#}");
    } else {
        println!("\npress Ctrl-C to stop");
        crate::shutdown_signal().await;
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    if cleanup {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    println!("stopped");
    result
}

async fn demo(url: &str, password: &str) -> anyhow::Result<()> {
    let login = RootClient::new(url).login("Admin", password).await?;
    settings::write_credentials(&Credentials {
        root: url.to_owned(),
        username: "Admin".into(),
        token: login.token.clone(),
        refresh_token: login.refresh_token,
    })?;
    let client = RootClient::new(url).with_token(login.token);
    let sla: serde_json::Value = serde_json::from_str(SAMPLE_SLA)?;
    let apps = client.create_applications(&sla).await?;
    println!("root orchestrator: {url}  (API docs: {url}/api/docs)");
    println!("logged in as Admin; the token is stored for the oak commands below\n");
    for app in &apps {
        for sid in &app.microservices {
            client.request_instance(sid.as_str()).await?;
        }
        println!("sample application {}.{} ({})", app.application_name, app.application_namespace, app.id);
        for svc in client.services(Some(app.id.as_str())).await? {
            let st = svc.status.map(|s| s.to_string()).unwrap_or_default();
            println!("  service {:<8} {}  {st}: {}", svc.service_name, svc.id, svc.status_detail.unwrap_or_default());
        }
    }
    println!("\ntry:");
    println!("  oak app list");
    println!("  oak service list");
    println!("  oak service show <service id>");
    println!("  oak app create -f ../shared/sla/blank_app_without_services.json");
    Ok(())
}
