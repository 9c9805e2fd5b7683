//! The root's end of the cluster link (`GET /api/cluster/link`, WebSocket, cluster token),
//! the hub of connected clusters, and the root scheduler loop.

use super::{ApiError, AppState};
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use oak_api::link::{ClusterToRoot, DesiredInstance, RootToCluster};
use oak_api::node::{LogsReply, LogsRequest};
use oak_api::{ClusterId, ErrorCode};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot, watch};

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<LogsReply>>>>;

struct Conn {
    serial: u64,
    tx: mpsc::Sender<RootToCluster>,
    pending: Pending,
    /// The join token the cluster used (`None`: the deployment's cluster token).
    token_id: Option<String>,
    close: watch::Sender<bool>,
}

/// Connected clusters, and the signals that drive pushes and scheduling.
pub struct Hub {
    /// Bumped whenever what some cluster should run may have changed.
    generation: watch::Sender<u64>,
    kick: Notify,
    conns: Mutex<HashMap<ClusterId, Conn>>,
    serial: AtomicU64,
    requests: AtomicU64,
    /// Tunnel keys of the workers that run instances, by cluster, as their reports show
    /// them: a cluster asks here for a key none of its own workers registered.
    keys: Mutex<Keys>,
}

/// Tunnel keys → the cluster that reported them, and how many each cluster holds.
#[derive(Default)]
struct Keys {
    owner: HashMap<String, ClusterId>,
    per_cluster: HashMap<ClusterId, usize>,
}

/// Most tunnel keys the root remembers (one per worker that ran an instance), in all and
/// from one cluster.
const MAX_KEYS: usize = 1 << 20;
const MAX_KEYS_PER_CLUSTER: usize = 1 << 16;

impl Default for Hub {
    fn default() -> Self {
        Self {
            generation: watch::channel(0).0,
            kick: Notify::new(),
            conns: Mutex::new(HashMap::new()),
            serial: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            keys: Mutex::new(Keys::default()),
        }
    }
}

impl Hub {
    /// Desired state may have changed: every connection recomputes and pushes if needed.
    pub fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Something may now be placeable: wake the scheduler.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Closes the links of clusters that joined with a (now revoked) join token.
    pub fn close_token(&self, token_id: &str) {
        for c in self.conns.lock().values() {
            if c.token_id.as_deref() == Some(token_id) {
                let _ = c.close.send(true);
            }
        }
    }

    /// Asks a cluster for an instance's log.
    pub async fn logs(&self, cluster: &ClusterId, mut req: LogsRequest) -> Result<LogsReply, ApiError> {
        req.request_id = format!("r{}", self.requests.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        let request_id = req.request_id.clone();
        let (sender, pending) = {
            let conns = self.conns.lock();
            let conn = conns.get(cluster).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Unavailable,
                    format!("cluster {cluster} is not connected; its logs cannot be read now"),
                )
            })?;
            conn.pending.lock().insert(request_id.clone(), tx);
            (conn.tx.clone(), conn.pending.clone())
        };
        if sender.send(RootToCluster::Logs(req)).await.is_err() {
            pending.lock().remove(&request_id);
            return Err(ApiError::new(ErrorCode::Unavailable, format!("cluster {cluster} disconnected")));
        }
        match tokio::time::timeout(Duration::from_secs(8), rx).await {
            Ok(Ok(r)) => Ok(r),
            _ => {
                // Do not keep waiting for an answer that will not come.
                pending.lock().remove(&request_id);
                Err(ApiError::new(ErrorCode::Unavailable, format!("cluster {cluster} did not answer in time")))
            }
        }
    }
}

/// Runs the root scheduler until the process ends: on every kick, and every 2 s.
pub async fn scheduler(state: AppState) {
    loop {
        tokio::select! {
            _ = state.hub.kick.notified() => {},
            _ = tokio::time::sleep(Duration::from_secs(2)) => {},
        }
        match state.blocking(|r| Ok(r.reconcile_replicas()? | r.schedule_pending()?)).await {
            Ok(true) => state.hub.bump(),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e.message, "root scheduler failed"),
        }
    }
}

/// `GET /api/cluster/link`: a cluster joins with the deployment's cluster token or a live
/// join token.
pub(super) async fn link(
    State(state): State<AppState>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let got = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    // A K10 token is checked by its secret (the CA hash is the client's business).
    let got = oak_tls::pki::JoinToken::parse(&got).map(|t| t.secret).unwrap_or_default();
    let token_id = if oak_store::secret::constant_time_eq(got.as_bytes(), state.cluster_token.as_bytes()) {
        None
    } else {
        match state.registry.join_token_id(&got) {
            Ok(Some(id)) if !got.is_empty() => Some(id),
            _ => {
                tracing::warn!("a cluster link with a missing, unknown or revoked token was refused");
                return ApiError::unauthenticated("missing, unknown or revoked cluster token").into_response();
            }
        }
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return ApiError::bad_request(format!("the cluster link is a WebSocket: {}", e.body_text()))
                .into_response();
        }
    };
    ws.max_message_size(oak_api::link::LINK_MAX_MESSAGE).max_frame_size(oak_api::link::LINK_MAX_MESSAGE).on_upgrade(
        move |socket| async move {
            if let Err(e) = session(state, socket, token_id).await {
                tracing::info!(reason = %e, "cluster link closed");
            }
        },
    )
}

fn text(m: &RootToCluster) -> Result<Message, String> {
    serde_json::to_string(m).map(|t| Message::Text(t.into())).map_err(|e| e.to_string())
}

async fn session(state: AppState, socket: WebSocket, token_id: Option<String>) -> Result<(), String> {
    let (mut sink, mut stream) = socket.split();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .map_err(|_| "no hello within 10 s".to_owned())?
        .ok_or("closed before hello")?
        .map_err(|e| e.to_string())?;
    let Message::Text(first) = first else { return Err("the first message must be a text hello".into()) };
    let Ok(ClusterToRoot::Hello { name, location, cluster_id, cluster_secret }) =
        serde_json::from_str::<ClusterToRoot>(&first)
    else {
        return Err("the first message must be hello".into());
    };
    let joined = state
        .blocking(move |r| {
            Ok(r.join_cluster_with_secret(&name, location.as_deref(), cluster_id.as_ref(), cluster_secret.as_deref())?)
        })
        .await;
    let (id, cluster_secret) = match joined {
        Ok(j) => j,
        Err(e) => {
            tracing::warn!(reason = %e.message, "refused a cluster link");
            let frame = axum::extract::ws::CloseFrame {
                code: 1008,
                reason: e.message.chars().take(120).collect::<String>().into(),
            };
            let _ = sink.send(Message::Close(Some(frame))).await;
            return Err(e.message);
        }
    };
    sink.send(text(&RootToCluster::Welcome { cluster_id: id.clone(), cluster_secret })?)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(cluster = %id, "cluster connected");

    let (tx, mut rx) = mpsc::channel::<RootToCluster>(64);
    let pending: Pending = Arc::default();
    let serial = state.hub.serial.fetch_add(1, Ordering::Relaxed);
    let (close, mut closed) = watch::channel(false);
    state.hub.conns.lock().insert(id.clone(), Conn { serial, tx, pending: pending.clone(), token_id, close });
    state.hub.kick();

    let mut generation = state.hub.generation.subscribe();
    let mut last: Option<Vec<DesiredInstance>> = None;
    let mut net = NetState::default();
    let mut resync = tokio::time::interval(Duration::from_secs(5));
    let result = loop {
        tokio::select! {
            _ = closed.changed() => break Err("its join token was revoked".into()),
            msg = stream.next() => {
                let msg = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => break Err(e.to_string()),
                    None => break Ok(()),
                };
                let Message::Text(t) = msg else {
                    if matches!(msg, Message::Close(_)) { break Ok(()); }
                    continue;
                };
                let report = match serde_json::from_str::<ClusterToRoot>(&t) {
                    Ok(ClusterToRoot::Report(report)) => Some(report),
                    // Fields the delta leaves out are as the cluster last reported them.
                    Ok(ClusterToRoot::Delta(d)) => Some(d.into_report(&net.workers, &net.interests)),
                    Ok(ClusterToRoot::Logs(reply)) => {
                        if let Some(tx) = pending.lock().remove(&reply.request_id) {
                            let _ = tx.send(reply);
                        }
                        None
                    }
                    Ok(ClusterToRoot::KeyQuery { key }) => {
                        let known = state.hub.keys.lock().owner.contains_key(&key);
                        let answer = RootToCluster::KeyAnswer(oak_api::node::KeyAnswer { key, known });
                        if let Err(e) = sink.send(text(&answer)?).await { break Err(e.to_string()); }
                        None
                    }
                    Ok(ClusterToRoot::Hello { .. }) => {
                        tracing::warn!(cluster = %id, "ignoring a second hello");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(cluster = %id, error = %e, "ignoring a malformed message from a cluster");
                        None
                    }
                };
                if let Some(report) = report {
                    // Keys of workers that run instances, taken once the report is applied;
                    // one cluster holds at most MAX_KEYS_PER_CLUSTER of them.
                    let reported_keys: Vec<String> = report
                        .instances
                        .iter()
                        .filter_map(|i| i.host_key.clone())
                        .filter(|k| oak_api::node::valid_tunnel_key(k))
                        .collect();
                    let cid = id.clone();
                    let (workers, interests) = (report.workers.clone(), report.interests.clone());
                    match state.blocking(move |r| Ok(r.apply_report(&cid, report)?)).await {
                        Ok(outcome) => {
                            if !reported_keys.is_empty() {
                                let mut keys = state.hub.keys.lock();
                                let Keys { owner, per_cluster } = &mut *keys;
                                let held = per_cluster.entry(id.clone()).or_insert(0);
                                for k in reported_keys {
                                    if owner.len() < MAX_KEYS && *held < MAX_KEYS_PER_CLUSTER && !owner.contains_key(&k) {
                                        owner.insert(k, id.clone());
                                        *held += 1;
                                    }
                                }
                            }
                            if outcome.rescheduled { state.hub.kick(); }
                            // Other clusters may hold flows to what changed here.
                            // (And instances waiting for an S2S target to run may go now.)
                            if outcome.net_changed { state.hub.bump(); state.hub.kick(); }
                        }
                        Err(e) => tracing::warn!(cluster = %id, error = %e.message, "cannot apply a cluster report"),
                    }
                    if !net.reported || workers != net.workers || interests != net.interests {
                        net.workers = workers;
                        net.reported = true;
                        net.interests = interests;
                        if let Err(e) = push_net(&state, &id, &mut net, &mut sink).await { break Err(e); }
                    }
                }
            }
            Some(m) = rx.recv() => {
                if let Err(e) = sink.send(text(&m)?).await { break Err(e.to_string()); }
            }
            _ = generation.changed() => {
                if let Err(e) = push(&state, &id, &mut last, &mut sink).await { break Err(e); }
                if let Err(e) = push_net(&state, &id, &mut net, &mut sink).await { break Err(e); }
            }
            _ = resync.tick() => {
                if let Err(e) = push(&state, &id, &mut last, &mut sink).await { break Err(e); }
                if let Err(e) = push_net(&state, &id, &mut net, &mut sink).await { break Err(e); }
            }
        }
    };
    let mut conns = state.hub.conns.lock();
    if conns.get(&id).is_some_and(|c| c.serial == serial) {
        conns.remove(&id);
    }
    tracing::info!(cluster = %id, "cluster disconnected");
    result
}

/// What a cluster asked of the overlay, and what it was last sent.
#[derive(Default)]
struct NetState {
    /// No subnet is computed (or freed) before the cluster said which workers it has.
    reported: bool,
    workers: Vec<String>,
    interests: Vec<std::net::Ipv4Addr>,
    subnets: Option<std::collections::BTreeMap<String, std::net::Ipv4Addr>>,
    tables: Option<Vec<oak_api::net::ServiceTable>>,
    landmarks: Option<Vec<oak_api::ldp::ProbePeer>>,
}

/// Sends the cluster its workers' subnets and the tables it asked for, when they changed.
async fn push_net(
    state: &AppState,
    id: &ClusterId,
    net: &mut NetState,
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
) -> Result<(), String> {
    if !net.reported {
        return Ok(());
    }
    let (cid, workers, interests) = (id.clone(), net.workers.clone(), net.interests.clone());
    // The subnets and the tables are computed and sent apart: one failing does not hold back
    // the other.
    let (subnets, tables, landmarks) = match state
        .blocking(move |r| {
            Ok((
                r.subnets_for(&cid, &workers).map_err(ApiError::from),
                r.tables_for(&interests).map_err(ApiError::from),
                r.landmarks_for(&cid).map_err(ApiError::from),
            ))
        })
        .await
    {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(cluster = %id, error = %e.message, "cannot compute the overlay state of a cluster");
            return Ok(());
        }
    };
    match subnets {
        Ok(subnets) if net.subnets.as_ref() != Some(&subnets) => {
            // Logged when what the cluster gets changes, not at every push.
            let without = net.workers.iter().filter(|w| !subnets.contains_key(*w)).count();
            if without > 0 {
                tracing::warn!(
                    cluster = %id,
                    workers = without,
                    "workers of this cluster get no overlay subnet: the pool is empty or the cluster holds the \
                     most one cluster may ({})",
                    crate::registry::Registry::MAX_SUBNETS_PER_CLUSTER
                );
            }
            sink.send(text(&RootToCluster::Subnets { subnets: subnets.clone() })?).await.map_err(|e| e.to_string())?;
            net.subnets = Some(subnets);
        }
        Ok(_) => {}
        Err(e) => {
            tracing::error!(cluster = %id, error = %e.message, "cannot compute the subnets of a cluster's workers")
        }
    }
    match landmarks {
        Ok(l) if net.landmarks.as_ref() != Some(&l) => {
            sink.send(text(&RootToCluster::Landmarks { peers: l.clone() })?).await.map_err(|e| e.to_string())?;
            net.landmarks = Some(l);
        }
        Ok(_) => {}
        Err(e) => tracing::error!(cluster = %id, error = %e.message, "cannot compute the landmarks for a cluster"),
    }
    let tables = match tables {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(cluster = %id, error = %e.message, "cannot compute the overlay tables of a cluster");
            return Ok(());
        }
    };
    if net.tables.as_ref() != Some(&tables) {
        tracing::debug!(cluster = %id, services = tables.len(), "overlay tables to the cluster");
        sink.send(text(&RootToCluster::Tables { tables: tables.clone() })?).await.map_err(|e| e.to_string())?;
        net.tables = Some(tables);
    }
    Ok(())
}

/// Sends the cluster its desired set when it differs from what it was last sent.
async fn push(
    state: &AppState,
    id: &ClusterId,
    last: &mut Option<Vec<DesiredInstance>>,
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
) -> Result<(), String> {
    let cid = id.clone();
    let desired = state.blocking(move |r| Ok(r.desired_for(&cid)?)).await.map_err(|e| e.message)?;
    let msg = match last.as_ref() {
        Some(prev) if *prev == desired => return Ok(()),
        Some(prev) => oak_api::link::desired_delta(prev, &desired),
        None => RootToCluster::Desired { instances: desired.clone() },
    };
    sink.send(text(&msg)?).await.map_err(|e| e.to_string())?;
    *last = Some(desired);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oak_api::node::InstanceRef;

    fn want(service: &str, n: u32, memory: u64) -> DesiredInstance {
        let spec = serde_json::json!({"microservice_name": "s", "microservice_namespace": "n",
            "virtualization": "container", "code": "img", "memory": memory});
        DesiredInstance {
            service_id: oak_api::ServiceId::from(service),
            instance_number: n,
            job_name: "a.b.s.n".into(),
            spec: oak_api::sla::parse_microservice(&spec, "").expect("spec"),
            instance_ip: None,
            ldp: None,
        }
    }

    /// Applying the delta to the previous set gives the new one, and only what changed is in it.
    #[test]
    fn desired_deltas_carry_what_changed() {
        let prev = vec![want("a", 0, 100), want("a", 1, 100), want("b", 0, 100)];
        let now = vec![want("a", 0, 100), want("a", 1, 200), want("c", 0, 100)];
        let RootToCluster::DesiredDelta { upsert, remove } = oak_api::link::desired_delta(&prev, &now) else {
            panic!("not a delta")
        };
        assert_eq!(upsert, [want("a", 1, 200), want("c", 0, 100)]);
        assert_eq!(remove, [InstanceRef { service_id: oak_api::ServiceId::from("b"), instance_number: 0 }]);
        let mut applied: std::collections::BTreeMap<_, _> =
            prev.into_iter().map(|d| ((d.service_id.clone(), d.instance_number), d)).collect();
        for r in remove {
            applied.remove(&(r.service_id, r.instance_number));
        }
        for d in upsert {
            applied.insert((d.service_id.clone(), d.instance_number), d);
        }
        assert_eq!(applied.into_values().collect::<Vec<_>>(), now);
    }
}
