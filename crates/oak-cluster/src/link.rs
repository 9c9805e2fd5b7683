//! The cluster's side of the root link: a WebSocket to the root that the cluster opens and
//! re-opens (with backoff) whenever it drops. On every connection: `Hello`, then the full
//! report whenever it changes and at least every report interval.

use crate::Cmd;
use futures_util::{SinkExt, StreamExt};
use oak_api::link::{ClusterReport, ClusterToRoot, LINK_PATH, RootToCluster};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub struct LinkConfig {
    pub root_url: String,
    pub token: String,
    pub name: String,
    pub location: Option<String>,
    pub cluster_id: Option<String>,
    pub report_interval: Duration,
    /// For an `https://` root: the CA (PEM) its certificate must chain to.
    pub root_ca: Option<std::path::PathBuf>,
}

fn ws_url(root: &str) -> String {
    let base = root.trim_end_matches('/');
    let base = base.strip_prefix("https://").map(|r| format!("wss://{r}")).unwrap_or_else(|| {
        base.strip_prefix("http://").map(|r| format!("ws://{r}")).unwrap_or_else(|| format!("ws://{base}"))
    });
    format!("{base}{LINK_PATH}")
}

pub async fn run(
    mut cfg: LinkConfig,
    core: mpsc::Sender<Cmd>,
    mut reports: watch::Receiver<ClusterReport>,
    stop: watch::Receiver<bool>,
) {
    let mut delay = Duration::from_millis(200);
    loop {
        if *stop.borrow() {
            return;
        }
        match session(&mut cfg, &core, &mut reports, stop.clone()).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(root = %cfg.root_url, error = %e, "root link down; reconnecting"),
        }
        let mut s = stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {},
            _ = async { let _ = s.wait_for(|v| *v).await; } => return,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn session(
    cfg: &mut LinkConfig,
    core: &mpsc::Sender<Cmd>,
    reports: &mut watch::Receiver<ClusterReport>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut req = ws_url(&cfg.root_url).into_client_request().map_err(|e| e.to_string())?;
    let auth = format!("Bearer {}", cfg.token)
        .parse()
        .map_err(|_| "the cluster token is not a valid header value".to_owned())?;
    req.headers_mut().insert("authorization", auth);
    let connector = match (req.uri().scheme_str(), &cfg.root_ca) {
        (Some("wss"), Some(ca)) => Some(tokio_tungstenite::Connector::Rustls(oak_tls::client_config_file(ca)?)),
        (Some("wss"), None) => return Err("the root is https: give --root-ca FILE (the CA of its certificate)".into()),
        _ => None,
    };
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(req, None, false, connector)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sink, mut stream) = ws.split();
    let send = |m: &ClusterToRoot| serde_json::to_string(m).map(|t| Message::Text(t.into())).map_err(|e| e.to_string());
    sink.send(send(&ClusterToRoot::Hello {
        name: cfg.name.clone(),
        location: cfg.location.clone(),
        cluster_id: cfg.cluster_id.clone().map(oak_api::ClusterId),
    })?)
    .await
    .map_err(|e| e.to_string())?;
    let (logs_tx, mut logs_rx) = mpsc::channel::<oak_api::node::LogsReply>(64);
    let mut tick = tokio::time::interval(cfg.report_interval);
    let mut welcomed = false;
    loop {
        tokio::select! {
            _ = async { let _ = stop.wait_for(|v| *v).await; } => {
                let _ = sink.send(Message::Close(None)).await;
                return Ok(());
            }
            msg = stream.next() => {
                let msg = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("the root closed the link".into()),
                };
                let text = match msg {
                    Message::Text(t) => t,
                    Message::Close(f) => return Err(format!("the root closed the link: {}", f.map(|f| f.reason.to_string()).unwrap_or_default())),
                    _ => continue,
                };
                match serde_json::from_str::<RootToCluster>(&text) {
                    Ok(RootToCluster::Welcome { cluster_id }) => {
                        cfg.cluster_id = Some(cluster_id.to_string());
                        welcomed = true;
                        let _ = core.send(Cmd::ClusterId(cluster_id.to_string())).await;
                        let r = reports.borrow_and_update().clone();
                        sink.send(send(&ClusterToRoot::Report(r))?).await.map_err(|e| e.to_string())?;
                    }
                    Ok(RootToCluster::Desired { instances }) => {
                        let _ = core.send(Cmd::Desired(instances)).await;
                    }
                    Ok(RootToCluster::Subnets { subnets }) => {
                        let _ = core.send(Cmd::Subnets(subnets)).await;
                    }
                    Ok(RootToCluster::Tables { tables }) => {
                        let _ = core.send(Cmd::Tables(tables)).await;
                    }
                    Ok(RootToCluster::Logs(req)) => {
                        let (tx, rx) = oneshot::channel();
                        let _ = core.send(Cmd::Logs(req.clone(), tx)).await;
                        let out = logs_tx.clone();
                        tokio::spawn(async move {
                            let reply = match tokio::time::timeout(Duration::from_secs(5), rx).await {
                                Ok(Ok(r)) => r,
                                _ => oak_api::node::LogsReply {
                                    request_id: req.request_id,
                                    offset: 0,
                                    next_offset: 0,
                                    text: String::new(),
                                    error: Some("the worker did not answer in time".into()),
                                },
                            };
                            let _ = out.send(reply).await;
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring a malformed message from the root"),
                }
            }
            Some(reply) = logs_rx.recv() => {
                sink.send(send(&ClusterToRoot::Logs(reply))?).await.map_err(|e| e.to_string())?;
            }
            changed = reports.changed(), if welcomed => {
                if changed.is_err() {
                    return Ok(());
                }
                let r = reports.borrow_and_update().clone();
                sink.send(send(&ClusterToRoot::Report(r))?).await.map_err(|e| e.to_string())?;
            }
            _ = tick.tick(), if welcomed => {
                let r = reports.borrow().clone();
                sink.send(send(&ClusterToRoot::Report(r))?).await.map_err(|e| e.to_string())?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn websocket_urls() {
        assert_eq!(super::ws_url("http://1.2.3.4:10000/"), "ws://1.2.3.4:10000/api/cluster/link");
        assert_eq!(super::ws_url("https://root.example"), "wss://root.example/api/cluster/link");
        assert_eq!(super::ws_url("1.2.3.4:10000"), "ws://1.2.3.4:10000/api/cluster/link");
    }
}
