//! The cluster orchestrator: joins the root over a link it opens itself (so it works from
//! behind NAT), registers workers over HTTP, runs the MQTT broker they talk to, and places
//! the instances the root sends on its workers.
//!
//! One task owns the state ([`core::Core`]); the HTTP handler, the MQTT client and the root
//! link talk to it over a channel. Workers and assignments are kept in the cluster's own
//! store, so a restarted cluster resumes from them.
//!
//! This crate must not import the other tiers; it meets root and workers only through
//! `oak-api` messages.

mod broker;
pub mod core;
mod guard;
pub mod ldp;
pub use oak_sched::Policy;
mod link;

use crate::core::{Core, Key, Out, Timing, WorkerRec};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use oak_api::link::DesiredInstance;
use oak_api::node::{InstanceEvent, LogsReply, LogsRequest, NodeInfo, RegisterRequest, RegisterResponse};
use oak_store::{Batch, RedbStore, Store};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};

const META: &str = "meta";
const WORKERS: &str = "workers";
const ASSIGNMENTS: &str = "assignments";
/// Tombstones of forgotten workers: node id -> sha256 of its node secret. A worker comes back
/// as the same node only by showing that secret; any other id the cluster does not know gets
/// a new one (ids are global at the root: a cluster gives back only ids it issued).
const FORGOTTEN: &str = "forgotten";
/// The largest registration body (a registration is a few hundred bytes).
const REGISTER_MAX_BODY: usize = 16 * 1024;
/// Most inputs handled together before one write, publish and report.
const BATCH: usize = 255;
const TABLES: &[&str] = &[META, WORKERS, ASSIGNMENTS, FORGOTTEN];
/// Most log requests waiting for their workers' answers; more are refused with an error reply.
const MAX_PENDING_LOGS: usize = 1024;

/// Log requests sent to workers and not answered yet: request id -> (the worker asked, who
/// waits for the answer).
type PendingLogs = HashMap<String, (String, oneshot::Sender<LogsReply>)>;

/// The waiter for `request_id` when `node` is the worker the request went to (it is taken
/// out); a reply from any other worker is refused and the request keeps waiting for its own.
/// The root's request ids are sequential: without this, any worker could answer another's.
fn claim_log_reply(
    pending: &mut PendingLogs,
    node: &str,
    request_id: &str,
) -> Result<oneshot::Sender<LogsReply>, &'static str> {
    match pending.get(request_id) {
        None => Err("no log request waits under this id"),
        Some((asked, _)) if asked != node => Err("the log request went to another worker"),
        Some(_) => pending.remove(request_id).map(|(_, tx)| tx).ok_or("no log request waits under this id"),
    }
}

#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The root's base URL, e.g. `http://10.0.0.1:10000`.
    pub root_url: String,
    /// The root's cluster token.
    pub root_token: String,
    pub name: String,
    pub location: Option<String>,
    /// Worker registration (HTTP).
    pub listen: SocketAddr,
    /// The embedded MQTT broker.
    pub mqtt_listen: SocketAddr,
    /// Port workers are told to use for MQTT (the broker's, unless behind a proxy).
    pub mqtt_advertise_port: Option<u16>,
    /// An external broker (`mqtt://[user:pass@]host:port`) instead of the embedded one. Its own
    /// authentication applies; workers get the credentials of this URL.
    pub mqtt_url: Option<String>,
    pub data_dir: PathBuf,
    /// Token workers must present; generated into the data dir when `None`.
    pub worker_token: Option<String>,
    pub report_interval: Duration,
    pub timing: Timing,
    /// How workers are ranked among those that fit.
    pub policy: oak_sched::Policy,
    /// For an `https://` root: the CA (PEM) its certificate must chain to. Not needed with a
    /// `K10` token, which pins the root's CA.
    pub root_ca: Option<PathBuf>,
    /// Serve worker registration over plain HTTP instead of HTTPS (`--insecure-plain-http`).
    pub insecure_plain_http: bool,
    /// Let workers speak plain MQTT instead of MQTT over TLS (`--insecure-plain-mqtt`).
    pub insecure_plain_mqtt: bool,
    /// Extra names for the cluster's serving certificate (`--tls-san`).
    pub tls_san: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot use data dir {path}: {reason}")]
    DataDir { path: String, reason: String },
    #[error(transparent)]
    Store(#[from] oak_store::StoreError),
    #[error("{0}")]
    Broker(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
}

/// Why a registration was refused.
#[derive(Debug)]
pub(crate) enum RegError {
    /// 422: a field out of bounds, named.
    Invalid(oak_api::node::FieldError),
    /// 403: a known node id without the proof that the caller is that node.
    Forbidden(String),
    /// 401: a new worker without the worker token.
    Unauthenticated(String),
    /// 500: the store failed; nothing was registered.
    Internal(String),
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

pub(crate) enum Cmd {
    /// A registration, and whether it showed the worker token (a known worker proves itself
    /// with its node secret instead).
    Register(RegisterRequest, bool, oneshot::Sender<Result<RegisterResponse, RegError>>),
    Desired(Vec<DesiredInstance>),
    DesiredDelta(Vec<DesiredInstance>, Vec<oak_api::node::InstanceRef>),
    Info(String, NodeInfo),
    Event(String, InstanceEvent),
    Logs(LogsRequest, oneshot::Sender<LogsReply>),
    /// A worker's answer to a log request: (the node whose topic it came on, the answer).
    LogsReply(String, LogsReply),
    /// The root's welcome: this cluster's id, and its secret when the root issued one now.
    ClusterId(String, Option<String>),
    /// A worker's last will: (node, session).
    Lost(String, String),
    Subnets(std::collections::BTreeMap<String, std::net::Ipv4Addr>),
    Tables(Vec<oak_api::net::ServiceTable>),
    /// A worker's RTT measurements: (node, answer).
    Measured(String, oak_api::ldp::MeasureReply),
    /// Landmark workers of the other clusters.
    Landmarks(Vec<oak_api::ldp::ProbePeer>),
    /// A worker asks whether a tunnel key is a live worker's: (node, question).
    KeyQuery(String, oak_api::node::KeyQuery),
    /// The root's answer to a key this cluster did not know.
    KeyAnswer(oak_api::node::KeyAnswer),
    Tick,
}

/// A cluster orchestrator with its store open.
pub struct Cluster {
    config: ClusterConfig,
    store: Arc<dyn Store>,
    core: Core,
    worker_token: String,
    cluster_id: Option<String>,
    external_mqtt: Option<MqttUrl>,
    /// The cluster's own CA, when registration or MQTT is served over TLS.
    ca: Option<Arc<oak_tls::pki::Authority>>,
    /// Tunnel keys asked about and not known here: the workers waiting for the root's answer,
    /// and since when (bounded: [`MAX_PENDING_KEYS`], [`KEY_QUERY_TIMEOUT_S`]).
    pending_keys: HashMap<String, (Vec<String>, f64)>,
    /// Questions for the root (the link sends them).
    key_queries: Option<mpsc::Sender<String>>,
}

/// Most tunnel keys waiting for the root's answer at once, and first asked by one worker.
const MAX_PENDING_KEYS: usize = 1024;
const MAX_PENDING_KEYS_PER_NODE: usize = 16;
/// A key question unanswered this long is dropped (the worker asks again at the next
/// handshake, which WireGuard retries every 5 s).
const KEY_QUERY_TIMEOUT_S: f64 = 10.0;

/// An external broker's address and credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
struct MqttUrl {
    host: String,
    port: u16,
    user: String,
    password: String,
}

fn parse_mqtt_url(u: &str) -> Option<MqttUrl> {
    let rest = u.strip_prefix("mqtt://").or_else(|| u.strip_prefix("tcp://"))?;
    let (creds, hostport) = match rest.rsplit_once('@') {
        Some((c, h)) => (Some(c), h),
        None => (None, rest),
    };
    let (host, port) = hostport.trim_end_matches('/').rsplit_once(':')?;
    let port = port.parse().ok()?;
    let (user, password) = match creds {
        Some(c) => {
            c.split_once(':').map(|(a, b)| (a.to_owned(), b.to_owned())).unwrap_or((c.to_owned(), String::new()))
        }
        None => (String::new(), String::new()),
    };
    (!host.is_empty()).then(|| MqttUrl { host: host.to_owned(), port, user, password })
}

impl Cluster {
    pub fn open(config: ClusterConfig) -> Result<Self, ClusterError> {
        let dd = |e: std::io::Error| ClusterError::DataDir {
            path: config.data_dir.display().to_string(),
            reason: e.to_string(),
        };
        oak_store::datadir::prepare(&config.data_dir).map_err(|e| ClusterError::DataDir {
            path: config.data_dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let ca = if config.insecure_plain_http && (config.insecure_plain_mqtt || config.mqtt_url.is_some()) {
            if !config.tls_san.is_empty() {
                return Err(ClusterError::Broker(
                    "--tls-san names the cluster's certificate: it has no effect when nothing is served over TLS"
                        .into(),
                ));
            }
            None
        } else {
            let ca = oak_tls::pki::Authority::load_or_create(&config.data_dir, &format!("oak cluster {}", config.name))
                .map_err(|reason| ClusterError::DataDir { path: config.data_dir.display().to_string(), reason })?;
            Some(Arc::new(ca))
        };
        let pin = ca.as_ref().map(|c| c.hash());
        let worker_token = match &config.worker_token {
            Some(t) => oak_tls::pki::JoinToken::parse(t)
                .map(|t| t.secret)
                .map_err(|reason| ClusterError::Broker(format!("--worker-token: {reason}")))?,
            None => {
                // The file holds the whole token (K10 form when the cluster serves TLS); its
                // secret is kept across restarts.
                oak_store::secret::token_file(&config.data_dir.join("worker-token"), |secret| {
                    oak_tls::pki::JoinToken { ca_hash: pin, secret: secret.to_owned() }.render()
                })
                .map_err(dd)?
            }
        };
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&config.data_dir.join("cluster.redb"), TABLES)?);
        let mut core = Core::default();
        core.timing = config.timing;
        core.policy = config.policy;
        for (id, bytes) in store.scan_prefix(WORKERS, "")? {
            match serde_json::from_slice::<WorkerRec>(&bytes) {
                Ok(mut w) => {
                    // Known workers get one heartbeat timeout to report after a restart of the
                    // cluster, before their instances are moved.
                    w.last_seen = now();
                    core.add_worker(w, now());
                }
                Err(e) => tracing::warn!(worker = %id, error = %e, "skipping an unreadable worker record"),
            }
        }
        for (key, bytes) in store.scan_prefix(ASSIGNMENTS, "")? {
            let parsed =
                key.rsplit_once('/').and_then(|(s, n)| n.parse::<u32>().ok().map(|n| (oak_api::ServiceId::from(s), n)));
            match (parsed, serde_json::from_slice(&bytes)) {
                (Some(k), Ok(a)) => {
                    core.restore(k, a);
                }
                _ => tracing::warn!(key = %key, "skipping an unreadable assignment"),
            }
        }
        let cluster_id = store.get(META, "cluster_id")?.map(|b| String::from_utf8_lossy(&b).into_owned());
        Ok(Self {
            config,
            store,
            core,
            worker_token,
            cluster_id,
            external_mqtt: None,
            ca,
            pending_keys: HashMap::new(),
            key_queries: None,
        })
    }

    /// The token workers register with: `K10<ca-hash>::<secret>` when the cluster serves TLS.
    pub fn worker_token(&self) -> String {
        oak_tls::pki::JoinToken { ca_hash: self.ca.as_ref().map(|c| c.hash()), secret: self.worker_token.clone() }
            .render()
    }

    /// A server configuration with a fresh certificate of the cluster's CA, for `listen`.
    fn tls_for(&self, listen: SocketAddr) -> Result<Option<Arc<oak_tls::ServerConfig>>, ClusterError> {
        self.ca
            .as_ref()
            .map(|ca| ca.server_config(&oak_tls::pki::default_names(listen, &self.config.tls_san)))
            .transpose()
            .map_err(ClusterError::Broker)
    }

    /// Runs until `shutdown`. `listener` serves worker registration.
    pub async fn run(
        mut self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ClusterError> {
        let creds = broker::Credentials::default();
        for w in self.core.workers.values() {
            creds.set(&w.id, w.mqtt_password_hash.clone());
        }
        let external = match &self.config.mqtt_url {
            Some(u) => Some(parse_mqtt_url(u).ok_or_else(|| {
                ClusterError::Broker(format!("bad --mqtt-url {u:?}: expected mqtt://[user:pass@]host:port"))
            })?),
            None => None,
        };
        let (internal_user, internal_pw) = match &external {
            Some(e) => (e.user.clone(), e.password.clone()),
            None => ("oak-cluster".to_owned(), oak_store::secret::random_hex(16)),
        };
        // The embedded broker listens on loopback only; workers reach it through the guard,
        // which keeps each of them under its own topics.
        let mut internal_broker = None;
        if external.is_none() {
            creds.set_direct(&internal_user, broker::hash(&internal_pw));
            let guard_listener = tokio::net::TcpListener::bind(self.config.mqtt_listen).await.map_err(|e| {
                ClusterError::Broker(format!("cannot listen for MQTT on {}: {e}", self.config.mqtt_listen))
            })?;
            let internal = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| ClusterError::Broker(format!("cannot find a loopback port for the broker: {e}")))?;
            broker::start(internal, creds.clone()).map_err(ClusterError::Broker)?;
            let tls = if self.config.insecure_plain_mqtt {
                tracing::warn!(listen = %self.config.mqtt_listen, "workers speak plain MQTT (--insecure-plain-mqtt): their credentials cross the network in clear");
                None
            } else {
                self.tls_for(self.config.mqtt_listen)?
            };
            tokio::spawn(guard::serve(guard_listener, internal, creds.clone(), tls));
            internal_broker = Some(internal);
        }
        if external.is_some() {
            tracing::warn!(
                "workers use the external broker of --mqtt-url as given (plain MQTT unless the broker itself is fronted by TLS), with its shared credentials"
            );
        }
        self.external_mqtt = external.clone();

        let (tx, mut rx) = mpsc::channel::<Cmd>(1024);
        let (report_tx, report_rx) = watch::channel(self.core.report(now()));

        // MQTT client of the cluster itself.
        let (mqtt_host, mqtt_port) = match (&external, internal_broker) {
            (Some(e), _) => (e.host.clone(), e.port),
            (None, Some(internal)) => (internal.ip().to_string(), internal.port()),
            (None, None) => ("127.0.0.1".to_owned(), self.config.mqtt_listen.port()),
        };
        let client_id = if external.is_some() {
            format!("oak-cluster-{}", oak_store::secret::random_hex(4))
        } else {
            internal_user.clone()
        };
        let mut opts = MqttOptions::new(client_id, mqtt_host, mqtt_port);
        if !internal_user.is_empty() {
            opts.set_credentials(internal_user, internal_pw);
        }
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
        let (mqtt, mut events) = AsyncClient::new(opts, 1024);
        let sub = mqtt.clone();
        let mtx = tx.clone();
        tokio::spawn(async move {
            let mut backoff = oak_api::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff.reset();
                        for t in [
                            "nodes/+/information",
                            "nodes/+/job",
                            "nodes/+/logs",
                            "nodes/+/lost",
                            "nodes/+/measured",
                            "nodes/+/keys",
                        ] {
                            let _ = sub.subscribe(t, QoS::AtLeastOnce).await;
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let mut parts = p.topic.splitn(3, '/');
                        let (_, node, kind) = (parts.next(), parts.next().unwrap_or_default().to_owned(), parts.next());
                        let cmd = match kind {
                            // Every number a worker sends is checked before it counts: one
                            // worker's +inf must not become the cluster's total.
                            Some("information") => match serde_json::from_slice::<NodeInfo>(&p.payload) {
                                Ok(i) => match i.validate() {
                                    Ok(()) => Some(Cmd::Info(node, i)),
                                    Err(e) => {
                                        tracing::warn!(node = %node, field = %e.field, error = %e.message, "refused a worker report");
                                        continue;
                                    }
                                },
                                Err(_) => None,
                            },
                            Some("job") => serde_json::from_slice::<InstanceEvent>(&p.payload)
                                .map(|mut e| {
                                    // The detail is stored at the root and shown to users: bounded.
                                    oak_api::node::truncate_detail(&mut e.status_detail);
                                    Cmd::Event(node, e)
                                })
                                .ok(),
                            Some("logs") => serde_json::from_slice(&p.payload).map(|r| Cmd::LogsReply(node, r)).ok(),
                            Some("lost") => Some(Cmd::Lost(node, String::from_utf8_lossy(&p.payload).into_owned())),
                            Some("measured") => serde_json::from_slice(&p.payload).map(|r| Cmd::Measured(node, r)).ok(),
                            Some("keys") => serde_json::from_slice(&p.payload).map(|q| Cmd::KeyQuery(node, q)).ok(),
                            _ => None,
                        };
                        match cmd {
                            Some(c) => {
                                let _ = mtx.send(c).await;
                            }
                            None => tracing::warn!(topic = %p.topic, "ignoring a malformed MQTT message"),
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "cluster MQTT client reconnecting");
                        tokio::time::sleep(backoff.next(rand::random())).await;
                    }
                }
            }
        });

        // Worker registration.
        let http_state = HttpState { tx: tx.clone(), token: Arc::new(self.worker_token.clone()) };
        let app = Router::new()
            .route("/api/node/register", post(register))
            .fallback(|uri: axum::http::Uri| async move {
                (
                    StatusCode::NOT_FOUND,
                    Json(serde_json::json!({"code": "not_found", "message": format!("no endpoint at {}", uri.path())})),
                )
            })
            .method_not_allowed_fallback(|m: axum::http::Method, uri: axum::http::Uri| async move {
                (
                    StatusCode::METHOD_NOT_ALLOWED,
                    Json(serde_json::json!({
                        "code": "method_not_allowed",
                        "message": format!("{m} is not allowed on {}", uri.path()),
                    })),
                )
            })
            .layer(axum::extract::DefaultBodyLimit::max(REGISTER_MAX_BODY))
            .with_state(http_state);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut http_stop = stop_rx.clone();
        // The port is open to the workers' networks: the root's connection limits
        // (oak_tls::serve), with a quarter of its bound. Registration is rare and short; the
        // rest of the file limit is for the workers' MQTT connections.
        let limits = oak_tls::serve::ConnLimits {
            max_connections: Some((oak_tls::serve::ConnLimits::default().max_connections() / 4).clamp(16, 1024)),
            ..Default::default()
        }
        .with_env();
        let registration_tls = if self.config.insecure_plain_http {
            tracing::warn!(listen = %self.config.listen, "worker registration over plain HTTP (--insecure-plain-http): the worker token crosses the network in clear");
            None
        } else {
            self.tls_for(self.config.listen)?
        };
        let http = tokio::spawn(async move {
            let stop = async move {
                let _ = http_stop.wait_for(|s| *s).await;
            };
            if let Err(e) = oak_tls::serve::serve(listener, app, registration_tls, limits, stop).await {
                tracing::warn!(error = %e, "the worker registration server failed");
            }
        });

        // The link to the root (it also carries the tunnel keys this cluster does not know).
        let (key_tx, key_rx) = mpsc::channel::<String>(256);
        self.key_queries = Some(key_tx);
        let link = tokio::spawn(link::run(
            link::LinkConfig {
                root_url: self.config.root_url.clone(),
                token: self.config.root_token.clone(),
                name: self.config.name.clone(),
                location: self.config.location.clone(),
                cluster_id: self.cluster_id.clone(),
                cluster_secret: self
                    .store
                    .get(META, "cluster_secret")
                    .ok()
                    .flatten()
                    .map(|b| String::from_utf8_lossy(&b).into_owned()),
                report_interval: self.config.report_interval,
                root_ca: self.config.root_ca.clone(),
                key_queries: Arc::new(tokio::sync::Mutex::new(key_rx)),
            },
            tx.clone(),
            report_rx,
            stop_rx.clone(),
        ));

        let tick_tx = tx.clone();
        let ticker = tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_millis(500));
            loop {
                t.tick().await;
                if tick_tx.send(Cmd::Tick).await.is_err() {
                    break;
                }
            }
        });

        let mut pending_logs = PendingLogs::new();
        let mut last_report = std::time::Instant::now();
        tokio::pin!(shutdown);
        loop {
            let cmd = tokio::select! {
                _ = &mut shutdown => break,
                c = rx.recv() => match c { Some(c) => c, None => break },
            };
            let mut outs = self.handle(cmd, now(), &creds, &mut pending_logs);
            // Under load (thousands of workers reporting), take what else is queued, then
            // write, publish and report once for all of it. Idle, a message is handled alone
            // and its effects go out at once.
            for _ in 0..BATCH {
                let Ok(cmd) = rx.try_recv() else { break };
                outs.extend(self.handle(cmd, now(), &creds, &mut pending_logs));
            }
            self.persist();
            for o in outs {
                if let Err(e) = mqtt.publish(o.topic.clone(), QoS::AtLeastOnce, false, o.payload).await {
                    tracing::warn!(topic = %o.topic, error = %e, "cannot queue an MQTT message");
                }
            }
            // A change the root sees goes up at once; resource usage with the periodic report.
            if self.core.take_report_due() || last_report.elapsed() >= self.config.report_interval {
                last_report = std::time::Instant::now();
                let report = self.core.report(now());
                report_tx.send_if_modified(|r| {
                    if *r != report {
                        *r = report;
                        true
                    } else {
                        false
                    }
                });
            }
        }
        let _ = stop_tx.send(true);
        ticker.abort();
        let _ = http.await;
        let _ = link.await;
        Ok(())
    }

    fn register_worker(
        &mut self,
        req: RegisterRequest,
        joined: bool,
        creds: &broker::Credentials,
    ) -> Result<RegisterResponse, RegError> {
        req.validate().map_err(RegError::Invalid)?;
        // A tunnel key names one worker: another worker's key is refused (else peers would
        // send that worker's traffic to whoever claimed it).
        if let Some(k) = &req.tunnel_key
            && self
                .core
                .workers
                .values()
                .any(|w| w.reg.tunnel_key.as_ref() == Some(k) && Some(&w.id) != req.node_id.as_ref())
        {
            return Err(RegError::Invalid(oak_api::node::FieldError {
                field: "tunnel_key".into(),
                message: "is already the key of another worker of this cluster".into(),
            }));
        }
        // Without the worker token only a known worker, proving itself with its own node
        // secret, registers (again): the shared token admits new workers, nothing else.
        let new_without_token = || {
            RegError::Unauthenticated(
                "missing or wrong worker token (only a known worker may register with its node secret alone)".into(),
            )
        };
        // Every worker holds the same worker token: it proves "may join this cluster", not
        // "is node X". A known id is given back only to the holder of the secret issued with
        // it; anything else is a new node with a new id.
        let (id, node_secret) = match &req.node_id {
            Some(id) => match self.core.workers.get(id) {
                Some(w) => {
                    let proved = match (&req.node_secret, &w.node_secret_hash) {
                        (Some(s), Some(h)) => {
                            oak_store::secret::constant_time_eq(broker::hash(s).as_bytes(), h.as_bytes())
                        }
                        _ => false,
                    };
                    if !proved {
                        tracing::warn!(node = %id, ip = %req.ip, "refused a registration as a known node without its secret");
                        return Err(RegError::Forbidden(format!(
                            "node_id {id} belongs to a registered worker and node_secret does not prove it; \
                             register without node_id to join as a new worker"
                        )));
                    }
                    (id.clone(), None)
                }
                // An id this cluster does not know: given back only to a worker this cluster
                // forgot, which proves it with the secret of its tombstone. Anything else (an
                // id of another cluster's worker, made up) is a new node with a new id: ids
                // are global at the root, which keys subnets by them.
                None => {
                    let tomb = self.store.get(FORGOTTEN, id).map_err(|e| RegError::Internal(e.to_string()))?;
                    let proved = match (&req.node_secret, &tomb) {
                        (Some(s), Some(h)) => oak_store::secret::constant_time_eq(broker::hash(s).as_bytes(), h),
                        _ => false,
                    };
                    if proved {
                        (id.clone(), None)
                    } else if !joined {
                        return Err(new_without_token());
                    } else {
                        tracing::warn!(node = %id, ip = %req.ip, "a registration named an id this cluster did not issue (or cannot prove); it gets a new one");
                        (uuid::Uuid::new_v4().to_string(), Some(oak_store::secret::random_hex(32)))
                    }
                }
            },
            None if !joined => return Err(new_without_token()),
            None => (uuid::Uuid::new_v4().to_string(), Some(oak_store::secret::random_hex(32))),
        };
        // A tombstone proved: it goes with this registration.
        let revived = !self.core.workers.contains_key(&id) && node_secret.is_none();
        let secret_hash = match (&node_secret, &req.node_secret) {
            (Some(s), _) | (None, Some(s)) => broker::hash(s),
            (None, None) => return Err(RegError::Internal("no node secret".into())),
        };
        let (username, password) = match &self.external_mqtt {
            Some(e) => (e.user.clone(), e.password.clone()),
            None => (id.clone(), oak_store::secret::random_hex(24)),
        };
        let mut reg = req;
        reg.node_secret = None;
        reg.node_id = Some(id.clone());
        // Active only from its first report over MQTT: then it is subscribed and can take work.
        let rec = WorkerRec {
            mqtt_password_hash: broker::hash(&password),
            node_secret_hash: Some(secret_hash),
            subnet: self.core.workers.get(&id).and_then(|w| w.subnet),
            reported: self.core.workers.get(&id).is_some_and(|w| w.reported),
            ..WorkerRec::new(id.clone(), reg)
        };
        let bytes = serde_json::to_vec(&rec).map_err(|e| RegError::Internal(e.to_string()))?;
        let mut b = Batch::new();
        b.put(WORKERS, id.clone(), bytes);
        if revived {
            b.delete(FORGOTTEN, id.clone());
        }
        self.store.commit(b).map_err(|e| RegError::Internal(e.to_string()))?;
        self.core.forget_sent(&id);
        creds.set(&id, rec.mqtt_password_hash.clone());
        tracing::info!(node = %id, name = %rec.reg.name, ip = %rec.reg.ip, "worker registered");
        self.core.add_worker(rec, now());
        Ok(RegisterResponse {
            id: id.clone(),
            mqtt_host: self.external_mqtt.as_ref().map(|e| e.host.clone()),
            mqtt_port: self
                .external_mqtt
                .as_ref()
                .map(|e| e.port)
                .or(self.config.mqtt_advertise_port)
                .unwrap_or(self.config.mqtt_listen.port()),
            mqtt_username: username,
            mqtt_password: password,
            report_interval_ms: self.config.report_interval.as_millis() as u64,
            node_secret,
            mqtt_tls: self.external_mqtt.is_none() && !self.config.insecure_plain_mqtt,
        })
    }

    /// A worker heard a handshake from `key`: answered at once when a worker of this cluster
    /// registered it, else asked of the root (which knows the keys of every cluster's
    /// workers that run instances). Only registered workers may ask.
    fn key_query(&mut self, node: String, key: String, t: f64) -> Vec<Out> {
        if !self.core.workers.contains_key(&node) || !oak_api::node::valid_tunnel_key(&key) {
            return Vec::new();
        }
        // Vouched for: a worker of this cluster that reports and is not lost, not a mere
        // registration (anyone with the worker token can register a key).
        if self
            .core
            .workers
            .values()
            .any(|w| w.reg.tunnel_key.as_deref() == Some(key.as_str()) && w.reported && self.core.active(w, t))
        {
            return key_answer(&node, &key, true).into_iter().collect();
        }
        self.pending_keys.retain(|_, (_, since)| t - *since < KEY_QUERY_TIMEOUT_S);
        if let Some((nodes, _)) = self.pending_keys.get_mut(&key) {
            if nodes.contains(&node) {
                return Vec::new();
            }
            if nodes.len() < 64 {
                nodes.push(node);
                return Vec::new();
            }
            return key_answer(&node, &key, false).into_iter().collect();
        }
        // One worker cannot hold everyone's questions.
        let mine = self.pending_keys.values().filter(|(nodes, _)| nodes.first() == Some(&node)).count();
        let asked = mine < MAX_PENDING_KEYS_PER_NODE
            && self.pending_keys.len() < MAX_PENDING_KEYS
            && self.key_queries.as_ref().is_some_and(|q| q.try_send(key.clone()).is_ok());
        if asked {
            self.pending_keys.insert(key, (vec![node], t));
            Vec::new()
        } else {
            // No root to ask (or too many questions at once): not known, for now.
            key_answer(&node, &key, false).into_iter().collect()
        }
    }

    /// One input of the event loop; returns the messages to publish.
    fn handle(&mut self, cmd: Cmd, t: f64, creds: &broker::Credentials, pending_logs: &mut PendingLogs) -> Vec<Out> {
        match cmd {
            Cmd::Register(req, joined, reply) => {
                let r = self.register_worker(req, joined, creds);
                let _ = reply.send(r);
                Vec::new()
            }
            Cmd::Desired(d) => self.core.set_desired(d, t),
            Cmd::DesiredDelta(upsert, remove) => self.core.change_desired(upsert, remove, t),
            Cmd::Info(node, info) => {
                let first = self.core.workers.get(&node).is_some_and(|w| !w.reported);
                let outs = self.core.node_info(&node, info, t);
                // Its first report: stored, so that a restarted cluster lists it to the root
                // (and keeps its subnet) before it reports again.
                if first && let Some(w) = self.core.workers.get(&node).filter(|w| w.reported) {
                    match serde_json::to_vec(w) {
                        Ok(bytes) => {
                            let mut b = Batch::new();
                            b.put(WORKERS, node.clone(), bytes);
                            if let Err(e) = self.store.commit(b) {
                                tracing::error!(node = %node, error = %e, "cannot store a worker's first report");
                            }
                        }
                        Err(e) => tracing::error!(node = %node, error = %e, "cannot encode a worker record"),
                    }
                }
                outs
            }
            Cmd::Event(node, ev) => self.core.instance_event(&node, ev, t),
            Cmd::Logs(req, reply) => {
                let k: Key = (req.service_id.clone(), req.instance_number);
                if pending_logs.len() >= MAX_PENDING_LOGS {
                    pending_logs.retain(|_, (_, tx)| !tx.is_closed());
                }
                if pending_logs.len() >= MAX_PENDING_LOGS {
                    tracing::warn!(request = %req.request_id, "refused a log request: {MAX_PENDING_LOGS} already wait");
                    let _ = reply.send(LogsReply::failed(
                        req.request_id,
                        format!("the cluster already waits for {MAX_PENDING_LOGS} log answers; try again later"),
                    ));
                    return Vec::new();
                }
                match self.core.assignments().get(&k).and_then(|a| a.worker.clone()) {
                    Some(w) => match serde_json::to_vec(&req) {
                        Ok(payload) => {
                            let topic = oak_api::node::topic_logs_request(&w);
                            pending_logs.insert(req.request_id.clone(), (w, reply));
                            vec![Out { topic, payload }]
                        }
                        // Refused, not sent empty: the root hears why at once.
                        Err(e) => {
                            tracing::error!(error = %e, "cannot encode a log request");
                            let _ = reply.send(LogsReply::failed(
                                req.request_id,
                                format!("the cluster cannot encode the log request: {e}"),
                            ));
                            Vec::new()
                        }
                    },
                    None => {
                        let _ = reply.send(LogsReply::failed(
                            req.request_id,
                            format!("instance {} of service {} runs on no worker of this cluster", k.1, k.0),
                        ));
                        Vec::new()
                    }
                }
            }
            Cmd::LogsReply(node, r) => {
                match claim_log_reply(pending_logs, &node, &r.request_id) {
                    Ok(tx) => {
                        let _ = tx.send(r);
                    }
                    Err(why) => tracing::warn!(node = %node, request = %r.request_id, "dropped a log reply: {why}"),
                }
                Vec::new()
            }
            Cmd::ClusterId(id, secret) => {
                if let Some(secret) = secret {
                    // Without it this cluster could not prove itself to the root again.
                    let mut b = Batch::new();
                    b.put(META, "cluster_secret", secret.into_bytes());
                    if let Err(e) = self.store.commit(b) {
                        tracing::error!(error = %e, "cannot store the cluster secret");
                    }
                }
                if self.cluster_id.as_deref() != Some(&id) {
                    let mut b = Batch::new();
                    b.put(META, "cluster_id", id.as_bytes().to_vec());
                    if let Err(e) = self.store.commit(b) {
                        tracing::error!(error = %e, "cannot store the cluster id");
                    }
                    tracing::info!(cluster_id = %id, "joined the root");
                    self.cluster_id = Some(id);
                }
                Vec::new()
            }
            Cmd::Lost(node, session) => self.core.worker_lost(&node, &session, t),
            Cmd::Subnets(s) => self.core.set_subnets(&s),
            Cmd::Tables(tables) => self.core.set_tables(tables),
            Cmd::Tick => {
                // Requests the root stopped waiting for.
                pending_logs.retain(|_, (_, tx)| !tx.is_closed());
                let gone = self.core.forget_silent_records(t);
                if !gone.is_empty() {
                    let mut b = Batch::new();
                    for w in &gone {
                        let id = &w.id;
                        b.delete(WORKERS, id.clone());
                        // A worker that reported may come back as the same node, by its
                        // secret; a registration that never reported joins as a new one.
                        if let (true, Some(h)) = (w.reported, &w.node_secret_hash) {
                            b.put(FORGOTTEN, id.clone(), h.clone().into_bytes());
                        }
                        creds.remove(id);
                        tracing::info!(node = %id, "worker forgotten: not heard from in {} s", self.core.timing.forget_after);
                    }
                    if let Err(e) = self.store.commit(b) {
                        tracing::error!(error = %e, "cannot remove forgotten workers");
                    }
                }
                let mut outs = self.core.reconcile(t);
                outs.extend(self.core.ldp_tick(t));
                outs
            }
            Cmd::KeyQuery(node, q) => self.key_query(node, q.key, t),
            Cmd::KeyAnswer(a) => match self.pending_keys.remove(&a.key) {
                Some((nodes, _)) => nodes.into_iter().filter_map(|n| key_answer(&n, &a.key, a.known)).collect(),
                None => Vec::new(),
            },
            Cmd::Measured(node, reply) => {
                tracing::debug!(node = %node, results = ?reply.results, "RTT measurements");
                self.core.measured(&node, reply, t);
                Vec::new()
            }
            Cmd::Landmarks(peers) => {
                self.core.set_landmarks(peers);
                Vec::new()
            }
        }
    }

    /// Writes the assignments that changed since the last call, in one batch. An assignment
    /// that cannot be encoded is not written (its stored record stays as it was, never
    /// empty); the error is logged and the others are written.
    fn persist(&mut self) {
        let dirty = self.core.take_dirty();
        if dirty.is_empty() {
            return;
        }
        let (records, errors) = crate::core::encode_assignments(self.core.assignments(), dirty);
        for (key, e) in errors {
            tracing::error!(assignment = %key, error = %e, "cannot encode an assignment; not persisted");
        }
        let mut b = Batch::new();
        for (key, bytes) in records {
            match bytes {
                Some(v) => b.put(ASSIGNMENTS, key, v),
                None => b.delete(ASSIGNMENTS, key),
            };
        }
        if b.is_empty() {
            return;
        }
        if let Err(e) = self.store.commit(b) {
            tracing::error!(error = %e, "cannot persist assignments");
        }
    }
}

#[cfg(test)]
mod tests;

#[derive(Clone)]
struct HttpState {
    tx: mpsc::Sender<Cmd>,
    token: Arc<String>,
}

fn token_ok(headers: &HeaderMap, expected: &str) -> bool {
    let got = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // A K10 token is checked by its secret (the CA hash is the worker's business).
    let got = oak_tls::pki::JoinToken::parse(got).map(|t| t.secret).unwrap_or_default();
    oak_store::secret::constant_time_eq(got.as_bytes(), expected.as_bytes())
}

async fn register(
    State(st): State<HttpState>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<RegisterResponse>, (StatusCode, Json<serde_json::Value>)> {
    let err = |s: StatusCode, code: &str, m: String| (s, Json(serde_json::json!({"code": code, "message": m})));
    let joined = token_ok(&headers, &st.token);
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => err(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("a registration is at most {REGISTER_MAX_BODY} bytes"),
        ),
        s => err(s, "bad_request", format!("cannot read the registration: {}", e.body_text())),
    })?;
    let req: RegisterRequest = oak_api::json::from_slice_strict(&body).map_err(|e| {
        (
            StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::BAD_REQUEST),
            Json(serde_json::to_value(&e).unwrap_or_default()),
        )
    })?;
    let (tx, rx) = oneshot::channel();
    st.tx
        .send(Cmd::Register(req, joined, tx))
        .await
        .map_err(|_| err(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the cluster is stopping".into()))?;
    match rx.await {
        Ok(Ok(r)) => Ok(Json(r)),
        Ok(Err(RegError::Invalid(f))) => Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(serde_json::json!({
                "code": "invalid_field",
                "message": f.to_string(),
                "violations": [{"field": f.field, "message": f.message}],
            })),
        )),
        Ok(Err(RegError::Forbidden(m))) => Err(err(StatusCode::FORBIDDEN, "forbidden", m)),
        Ok(Err(RegError::Unauthenticated(m))) => Err(err(StatusCode::UNAUTHORIZED, "unauthenticated", m)),
        Ok(Err(RegError::Internal(m))) => Err(err(StatusCode::INTERNAL_SERVER_ERROR, "internal", m)),
        Err(_) => Err(err(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the cluster is stopping".into())),
    }
}

/// Binds the registration listener, with a clear error.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ClusterError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ClusterError::Listen { addr: addr.to_string(), reason: e.to_string() })
}

/// The answer about `key` for `node`'s control topic.
fn key_answer(node: &str, key: &str, known: bool) -> Option<Out> {
    let payload = serde_json::to_vec(&oak_api::node::KeyAnswer { key: key.to_owned(), known }).ok()?;
    Some(Out { topic: oak_api::node::topic_key_answer(node), payload })
}
