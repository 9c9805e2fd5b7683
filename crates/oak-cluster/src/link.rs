//! The cluster's side of the root link: a WebSocket to the root that the cluster opens and
//! re-opens (with backoff) whenever it drops. On every connection: `Hello`, the full report
//! once welcomed, then what changed (a `Delta`) whenever something changes and at least every
//! report interval. A dropped connection loses nothing: the next one starts with the full
//! report again.

use crate::Cmd;
use futures_util::{SinkExt, StreamExt};
use oak_api::ServiceId;
use oak_api::link::{
    ClusterReport, ClusterToRoot, DesiredInstance, InstanceState, LINK_PATH, ReportDelta, RootToCluster,
};
use oak_api::node::InstanceRef;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub struct LinkConfig {
    pub root_url: String,
    pub token: String,
    pub name: String,
    pub location: Option<String>,
    pub cluster_id: Option<String>,
    /// The secret the root issued with `cluster_id`, shown in every hello.
    pub cluster_secret: Option<String>,
    pub report_interval: Duration,
    /// For an `https://` root: the CA (PEM) its certificate must chain to.
    pub root_ca: Option<std::path::PathBuf>,
    /// Tunnel keys to ask the root about (see `Cluster::key_query`); kept across sessions.
    pub key_queries: std::sync::Arc<tokio::sync::Mutex<mpsc::Receiver<String>>>,
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
    // Jittered, so that the clusters of a root that comes back do not all retry at once.
    let mut backoff = oak_api::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        if *stop.borrow() {
            return;
        }
        let began = Instant::now();
        match session(&mut cfg, &core, &mut reports, stop.clone()).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(root = %cfg.root_url, error = %e, "root link down; reconnecting"),
        }
        // A link that held for a while was a success: the next outage starts short again.
        if began.elapsed() >= Duration::from_secs(30) {
            backoff.reset();
        }
        let mut s = stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(backoff.next(rand::random())) => {},
            _ = async { let _ = s.wait_for(|v| *v).await; } => return,
        }
    }
}

async fn session(
    cfg: &mut LinkConfig,
    core: &mpsc::Sender<Cmd>,
    reports: &mut watch::Receiver<ClusterReport>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut req = ws_url(&cfg.root_url).into_client_request().map_err(|e| e.to_string())?;
    let token = oak_tls::pki::JoinToken::parse(&cfg.token).map_err(|e| format!("the cluster token: {e}"))?;
    let auth = format!("Bearer {}", token.secret)
        .parse()
        .map_err(|_| "the cluster token is not a valid header value".to_owned())?;
    req.headers_mut().insert("authorization", auth);
    let connector = match (req.uri().scheme_str(), oak_tls::pki::client_config_for(&token, cfg.root_ca.as_deref())?) {
        (Some("wss"), Some(tls)) => Some(tokio_tungstenite::Connector::Rustls(tls)),
        (Some("wss"), None) => {
            return Err(
                "the root is https and the token pins no CA: use the root's K10 token, or give --root-ca FILE".into()
            );
        }
        _ => None,
    };
    let limits = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(oak_api::link::LINK_MAX_MESSAGE))
        .max_frame_size(Some(oak_api::link::LINK_MAX_MESSAGE));
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(req, Some(limits), false, connector)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sink, mut stream) = ws.split();
    let send = |m: &ClusterToRoot| serde_json::to_string(m).map(|t| Message::Text(t.into())).map_err(|e| e.to_string());
    sink.send(send(&ClusterToRoot::Hello {
        name: cfg.name.clone(),
        location: cfg.location.clone(),
        cluster_id: cfg.cluster_id.clone().map(oak_api::ClusterId),
        cluster_secret: cfg.cluster_secret.clone(),
    })?)
    .await
    .map_err(|e| e.to_string())?;
    let (logs_tx, mut logs_rx) = mpsc::channel::<oak_api::node::LogsReply>(64);
    let mut tick = tokio::time::interval(cfg.report_interval);
    let mut welcomed = false;
    let mut sent = Sent::default();
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
                    Ok(RootToCluster::Welcome { cluster_id, cluster_secret }) => {
                        cfg.cluster_id = Some(cluster_id.to_string());
                        if cluster_secret.is_some() {
                            cfg.cluster_secret.clone_from(&cluster_secret);
                        }
                        welcomed = true;
                        let _ = core.send(Cmd::ClusterId(cluster_id.to_string(), cluster_secret)).await;
                        let r = reports.borrow_and_update().clone();
                        sent = Sent::full(&r, Instant::now());
                        sink.send(send(&ClusterToRoot::Report(r))?).await.map_err(|e| e.to_string())?;
                    }
                    Ok(RootToCluster::Desired { instances }) => {
                        sent.desired(&instances);
                        let _ = core.send(Cmd::Desired(instances)).await;
                    }
                    Ok(RootToCluster::DesiredDelta { upsert, remove }) => {
                        sent.desired_delta(&upsert, &remove);
                        let _ = core.send(Cmd::DesiredDelta(upsert, remove)).await;
                    }
                    Ok(RootToCluster::Subnets { subnets }) => {
                        let _ = core.send(Cmd::Subnets(subnets)).await;
                    }
                    Ok(RootToCluster::Tables { tables }) => {
                        let _ = core.send(Cmd::Tables(tables)).await;
                    }
                    Ok(RootToCluster::Landmarks { peers }) => {
                        let _ = core.send(Cmd::Landmarks(peers)).await;
                    }
                    Ok(RootToCluster::KeyAnswer(a)) => {
                        let _ = core.send(Cmd::KeyAnswer(a)).await;
                    }
                    Ok(RootToCluster::Logs(req)) => {
                        let (tx, rx) = oneshot::channel();
                        let _ = core.send(Cmd::Logs(req.clone(), tx)).await;
                        let out = logs_tx.clone();
                        tokio::spawn(async move {
                            let reply = match tokio::time::timeout(Duration::from_secs(5), rx).await {
                                Ok(Ok(r)) => r,
                                _ => oak_api::node::LogsReply::failed(
                                    req.request_id,
                                    "the worker did not answer in time".into(),
                                ),
                            };
                            let _ = out.send(reply).await;
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring a malformed message from the root"),
                }
            }
            Some(key) = async { cfg.key_queries.lock().await.recv().await }, if welcomed => {
                sink.send(send(&ClusterToRoot::KeyQuery { key })?).await.map_err(|e| e.to_string())?;
            }
            Some(reply) = logs_rx.recv() => {
                sink.send(send(&ClusterToRoot::Logs(reply))?).await.map_err(|e| e.to_string())?;
            }
            changed = reports.changed(), if welcomed => {
                if changed.is_err() {
                    return Ok(());
                }
                let d = sent.delta(&reports.borrow_and_update(), Instant::now());
                sink.send(send(&ClusterToRoot::Delta(d))?).await.map_err(|e| e.to_string())?;
            }
            // Also the root's sign of life of this cluster.
            _ = tick.tick(), if welcomed => {
                let d = sent.delta(&reports.borrow(), Instant::now());
                sink.send(send(&ClusterToRoot::Delta(d))?).await.map_err(|e| e.to_string())?;
            }
        }
    }
}

/// Resource usage of instances goes up at most this often (Kubernetes' metrics-server
/// samples every 15 s); state changes go at once.
const USAGE_EVERY: Duration = Duration::from_secs(10);

/// Every instance's state goes again this often, even unchanged: should the root have
/// failed to apply a delta, it is repaired within this time.
const FULL_EVERY: Duration = Duration::from_secs(60);

/// What the root holds of this cluster on the current connection, so that only changes go:
/// the link's delta encoding, without the socket (the simulation drives it too). Time is
/// passed in, so that a virtual clock drives it as well as the real one.
pub struct Sent {
    instances: HashMap<(ServiceId, u32), InstanceState>,
    workers: Vec<String>,
    interests: Vec<Ipv4Addr>,
    usage_at: Instant,
    full_at: Instant,
    /// The instances the root last wanted here (none yet on this connection: `None`).
    desired: Option<HashSet<(ServiceId, u32)>>,
}

impl Default for Sent {
    fn default() -> Self {
        Sent::full(&ClusterReport::default(), Instant::now())
    }
}

/// Equal but for resource usage. Written without `..`, so a new field must be placed here.
fn same_state(a: &InstanceState, b: &InstanceState) -> bool {
    let InstanceState {
        service_id,
        instance_number,
        status,
        status_detail,
        worker_id,
        worker_name,
        host_ip,
        cpu_percent: _,
        memory_mb: _,
        ns_ip,
        host_port,
        location,
        // Coordinates drift a little with every measurement: they go up with the usage.
        coord: _,
        probe,
        host_key,
    } = a;
    (service_id, instance_number, status, status_detail, worker_id, worker_name, host_ip, ns_ip, host_port, location)
        == (
            &b.service_id,
            &b.instance_number,
            &b.status,
            &b.status_detail,
            &b.worker_id,
            &b.worker_name,
            &b.host_ip,
            &b.ns_ip,
            &b.host_port,
            &b.location,
        )
        && probe == &b.probe
        && host_key == &b.host_key
}

impl Sent {
    /// The root got the whole report `r` (a [`ClusterToRoot::Report`], the first of a
    /// connection) at `now`.
    pub fn full(r: &ClusterReport, now: Instant) -> Self {
        Sent {
            instances: r.instances.iter().map(|i| ((i.service_id.clone(), i.instance_number), i.clone())).collect(),
            workers: r.workers.clone(),
            interests: r.interests.clone(),
            usage_at: now,
            full_at: now,
            desired: None,
        }
    }

    /// The root's desired set arrived. An instance newly wanted here was (re)placed by the
    /// root, which now shows it as waiting for this cluster: its state goes again even if
    /// the cluster's view of it did not change. (The first set of a connection follows the
    /// full report, which the root has applied.)
    pub fn desired(&mut self, instances: &[DesiredInstance]) {
        let now: HashSet<(ServiceId, u32)> =
            instances.iter().map(|d| (d.service_id.clone(), d.instance_number)).collect();
        if let Some(before) = &self.desired {
            for k in now.difference(before) {
                self.instances.remove(k);
            }
        }
        self.desired = Some(now);
    }

    /// The same for a change of the desired set.
    pub fn desired_delta(&mut self, upsert: &[DesiredInstance], remove: &[InstanceRef]) {
        let set = self.desired.get_or_insert_with(HashSet::new);
        for r in remove {
            set.remove(&(r.service_id.clone(), r.instance_number));
        }
        for d in upsert {
            let k = (d.service_id.clone(), d.instance_number);
            if set.insert(k.clone()) {
                self.instances.remove(&k);
            }
        }
    }

    /// What of `r` the root does not have yet at `now` (a [`ClusterToRoot::Delta`]);
    /// afterwards it has it.
    pub fn delta(&mut self, r: &ClusterReport, now: Instant) -> ReportDelta {
        if now.saturating_duration_since(self.full_at) >= FULL_EVERY {
            self.full_at = now;
            self.instances.clear();
        }
        let usage = now.saturating_duration_since(self.usage_at) >= USAGE_EVERY;
        if usage {
            self.usage_at = now;
        }
        self.delta_with(r, usage)
    }

    fn delta_with(&mut self, r: &ClusterReport, usage: bool) -> ReportDelta {
        let mut instances = Vec::new();
        for i in &r.instances {
            let k = (i.service_id.clone(), i.instance_number);
            let send = match self.instances.get(&k) {
                None => true,
                Some(old) => {
                    !same_state(old, i) || (usage && (old.cpu_percent, old.memory_mb) != (i.cpu_percent, i.memory_mb))
                }
            };
            if send {
                instances.push(i.clone());
                self.instances.insert(k, i.clone());
            }
        }
        if self.instances.len() > r.instances.len() {
            let now: HashSet<(&ServiceId, u32)> =
                r.instances.iter().map(|i| (&i.service_id, i.instance_number)).collect();
            self.instances.retain(|(s, n), _| now.contains(&(s, *n)));
        }
        let workers = (self.workers != r.workers).then(|| r.workers.clone());
        let interests = (self.interests != r.interests).then(|| r.interests.clone());
        if let Some(w) = &workers {
            self.workers = w.clone();
        }
        if let Some(i) = &interests {
            self.interests = i.clone();
        }
        ReportDelta { aggregate: r.aggregate.clone(), instances, workers, interests }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oak_api::Status;

    #[test]
    fn websocket_urls() {
        assert_eq!(super::ws_url("http://1.2.3.4:10000/"), "ws://1.2.3.4:10000/api/cluster/link");
        assert_eq!(super::ws_url("https://root.example"), "wss://root.example/api/cluster/link");
        assert_eq!(super::ws_url("1.2.3.4:10000"), "ws://1.2.3.4:10000/api/cluster/link");
    }

    fn inst(n: u32, status: Status, cpu: f64) -> InstanceState {
        InstanceState {
            service_id: ServiceId::from("svc"),
            instance_number: n,
            status,
            status_detail: String::new(),
            worker_id: Some("w".into()),
            worker_name: None,
            host_ip: None,
            cpu_percent: Some(cpu),
            memory_mb: Some(10.0),
            ns_ip: None,
            host_port: None,
            location: None,
            coord: None,
            probe: None,
            host_key: None,
        }
    }

    /// Applying every delta to the first full report gives what the cluster reported last,
    /// with usage at most one usage period old; unchanged state is not sent again.
    #[test]
    fn deltas_carry_changes_only() {
        let r0 = ClusterReport {
            instances: vec![inst(0, Status::Running, 1.0), inst(1, Status::Creating, 1.0)],
            workers: vec!["w".into()],
            ..ClusterReport::default()
        };
        let mut sent = Sent::full(&r0, Instant::now());
        let d = sent.delta_with(&r0, false);
        assert!(d.instances.is_empty() && d.workers.is_none() && d.interests.is_none());
        // A status change goes at once; a usage change only when usage is due.
        let r1 = ClusterReport {
            instances: vec![
                inst(0, Status::Running, 5.0),
                inst(1, Status::Running, 1.0),
                inst(2, Status::Creating, 0.0),
            ],
            workers: vec!["w".into(), "x".into()],
            ..r0.clone()
        };
        let d = sent.delta_with(&r1, false);
        assert_eq!(d.instances.iter().map(|i| i.instance_number).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(d.workers.as_deref(), Some(&["w".to_owned(), "x".to_owned()][..]));
        let d = sent.delta_with(&r1, true);
        assert_eq!(d.instances, [inst(0, Status::Running, 5.0)]);
        assert!(d.workers.is_none());
        assert!(sent.delta_with(&r1, true).instances.is_empty());
        // A removed instance that comes back is sent again.
        let r2 = ClusterReport { instances: vec![inst(1, Status::Running, 1.0)], ..r1.clone() };
        assert!(sent.delta_with(&r2, true).instances.is_empty());
        assert_eq!(sent.delta_with(&r1, false).instances.len(), 2);
        // An instance the root newly wants here goes again, unchanged or not.
        let want = |n: u32| DesiredInstance {
            service_id: ServiceId::from("svc"),
            instance_number: n,
            job_name: "a.b.c.d".into(),
            spec: oak_api::sla::parse_microservice(
                &serde_json::json!({"microservice_name": "s", "microservice_namespace": "n",
                    "virtualization": "container", "code": "img"}),
                "",
            )
            .expect("spec"),
            instance_ip: None,
            ldp: None,
        };
        sent.desired(&[want(0), want(1)]);
        assert!(sent.delta_with(&r1, false).instances.is_empty(), "the first set follows a full report");
        sent.desired(&[want(1)]);
        sent.desired(&[want(1), want(2)]);
        assert_eq!(sent.delta_with(&r1, false).instances, [inst(2, Status::Creating, 0.0)]);
        // Likewise through a change of the desired set.
        let two = InstanceRef { service_id: ServiceId::from("svc"), instance_number: 2 };
        sent.desired_delta(&[], &[two]);
        sent.desired_delta(&[want(1), want(2)], &[]);
        assert_eq!(sent.delta_with(&r1, false).instances, [inst(2, Status::Creating, 0.0)]);
    }

    /// Usage goes when due and every state once a minute, by the time passed in (a virtual
    /// clock replays exactly).
    #[test]
    fn deltas_follow_the_clock_passed_in() {
        let t0 = Instant::now();
        let r0 = ClusterReport { instances: vec![inst(0, Status::Running, 1.0)], ..ClusterReport::default() };
        let r1 = ClusterReport { instances: vec![inst(0, Status::Running, 2.0)], ..ClusterReport::default() };
        let mut sent = Sent::full(&r0, t0);
        assert!(sent.delta(&r1, t0 + Duration::from_secs(9)).instances.is_empty(), "usage is not due yet");
        assert_eq!(sent.delta(&r1, t0 + Duration::from_secs(10)).instances, r1.instances);
        assert!(sent.delta(&r1, t0 + Duration::from_secs(59)).instances.is_empty());
        assert_eq!(sent.delta(&r1, t0 + Duration::from_secs(60)).instances, r1.instances, "every state once a minute");
        assert!(sent.delta(&r1, t0 + Duration::from_secs(61)).instances.is_empty());
    }
}
