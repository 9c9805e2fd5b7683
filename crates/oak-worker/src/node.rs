//! The worker process: registration, the MQTT session, and the instance table.
//!
//! One task owns the instance table and takes [`Command`]s (from MQTT, from exiting
//! instances, from the report timer), so there is no shared mutable state.
//!
//! Instance lifecycle on a worker:
//! ```text
//! deploy ─▶ CREATING ─▶ RUNNING ─▶ exit 0 and one_shot ─▶ COMPLETED
//!              │            └────▶ other exit ─▶ DEAD
//!              └─▶ FAILED (image missing, runtime error)
//! delete (any state) ─▶ removed (SIGTERM, grace, SIGKILL; nothing left)
//! ```

use crate::host;
use oak_api::net::{WorkerNetwork, WorkerTables};
use oak_api::node::{
    self, DeleteCommand, DeployCommand, InstanceEvent, InstanceUsage, LogsReply, LogsRequest, NodeInfo,
    RegisterRequest, RegisterResponse,
};
use oak_api::{ServiceId, Status};
use oak_net::{Overlay, OverlayConfig};
use oak_runtime::{Exit, InstanceSpec, Runtime};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Label on every container this worker owns.
pub const NODE_LABEL: &str = "oak.node";

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Base URL of the cluster's registration endpoint, e.g. `http://10.0.0.1:10100`.
    pub cluster_url: String,
    pub token: String,
    pub data_dir: PathBuf,
    pub name: String,
    pub location: Option<String>,
    /// Grace between SIGTERM and SIGKILL when an instance is removed.
    pub stop_grace: Duration,
    /// The semantic overlay; `None` runs instances without it (loopback only).
    pub overlay: Option<OverlaySettings>,
}

#[derive(Clone, Debug)]
pub struct OverlaySettings {
    /// UDP port of the tunnel.
    pub port: u16,
    /// Underlay address other workers reach this one at; default: the address this host
    /// uses towards its cluster.
    pub advertise: Option<std::net::Ipv4Addr>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot use data dir {path}: {reason}")]
    DataDir { path: String, reason: String },
    #[error("bad cluster URL {0}")]
    ClusterUrl(String),
    #[error("the cluster refused the registration: {0}")]
    Refused(String),
}

type Key = (ServiceId, u32);

struct Instance {
    container: String,
    ns_ip: Option<Ipv4Addr>,
    status: Status,
    detail: String,
    one_shot: bool,
    log: PathBuf,
    /// Last (cpu ns, when) sample, for the CPU rate.
    cpu: Option<(u64, Instant)>,
    cpu_percent: f64,
}

enum Command {
    Deploy(Box<DeployCommand>),
    Delete(DeleteCommand),
    Logs(LogsRequest),
    /// A step of starting an instance worth showing (e.g. its image is being pulled).
    Progress(Key, String),
    Started(Key, Result<(), String>),
    Exited(Key, Exit),
    Report,
    Network(WorkerNetwork),
    Tables(WorkerTables),
    /// The overlay came up (or failed to).
    OverlayReady(Result<Arc<Overlay>, String>),
    /// Packets wait for the table of a semantic address: report interests now.
    Miss,
    /// The broker refused this worker's login: the cluster no longer knows it.
    Refused,
}

/// How [`Worker::run`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// Asked to stop.
    Stopped,
    /// The cluster no longer accepts this worker's credentials (it forgot the worker, or
    /// lost its store): register again.
    Refused,
}

/// A registered worker, ready to run.
pub struct Worker<R: Runtime> {
    config: WorkerConfig,
    runtime: Arc<R>,
    reg: RegisterResponse,
    mqtt_host: String,
    session: String,
    /// The address this host uses towards its cluster.
    reg_ip: String,
}

fn host_of(url: &str) -> Result<(String, u16), WorkerError> {
    let rest = url.split("://").nth(1).ok_or_else(|| WorkerError::ClusterUrl(url.to_owned()))?;
    let hostport = rest.split('/').next().unwrap_or_default();
    let (h, p) = hostport.rsplit_once(':').ok_or_else(|| WorkerError::ClusterUrl(url.to_owned()))?;
    let port = p.parse().map_err(|_| WorkerError::ClusterUrl(url.to_owned()))?;
    Ok((h.trim_matches(|c| c == '[' || c == ']').to_owned(), port))
}

impl<R: Runtime> Worker<R> {
    /// Registers with the cluster, retrying until it answers (or refuses: then it fails).
    pub async fn register(mut config: WorkerConfig, runtime: Arc<R>) -> Result<Self, WorkerError> {
        let dd = |e: std::io::Error| WorkerError::DataDir {
            path: config.data_dir.display().to_string(),
            reason: e.to_string(),
        };
        // containerd opens the log files itself: paths must be absolute.
        config.data_dir = std::path::absolute(&config.data_dir).map_err(dd)?;
        let dd = |e: std::io::Error| WorkerError::DataDir {
            path: config.data_dir.display().to_string(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(config.data_dir.join("logs")).map_err(dd)?;
        let id_file = config.data_dir.join("node-id");
        let node_id = std::fs::read_to_string(&id_file).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        // Containers left by an earlier run of this node go first, before it can be given work.
        if let Some(id) = &node_id {
            let labels = BTreeMap::from([(NODE_LABEL.to_owned(), id.clone())]);
            match runtime.list(&labels).await {
                Ok(left) => {
                    for c in left {
                        tracing::info!(container = %c, "removing a container left from an earlier run");
                        let _ = runtime.remove(&c, Duration::from_secs(1)).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot list leftover containers"),
            }
        }
        let (host, port) = host_of(&config.cluster_url)?;
        let (mem, _) = host::memory_mb();
        let req = RegisterRequest {
            name: config.name.clone(),
            node_id,
            ip: host::source_ip_towards(&host, port).unwrap_or_else(|| "127.0.0.1".into()),
            arch: oak_runtime::image::host_arch().to_owned(),
            runtimes: runtime.names(),
            cpu_cores: host::cpu_cores(),
            memory_mb: mem,
            gpus: 0,
            location: config.location.clone(),
            session: format!(
                "{}-{}",
                std::process::id(),
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
            ),
        };
        let session = req.session.clone();
        let http = oak_tls::http_client();
        let url = format!("{}/api/node/register", config.cluster_url.trim_end_matches('/'));
        let mut delay = Duration::from_millis(200);
        let reg: RegisterResponse = loop {
            match http.post(&url).bearer_auth(&config.token).json(&req).send().await {
                Ok(r) if r.status().is_success() => match r.json().await {
                    Ok(reg) => break reg,
                    Err(e) => tracing::warn!(error = %e, "bad registration answer; retrying"),
                },
                Ok(r) if r.status().is_client_error() => {
                    let body = r.text().await.unwrap_or_default();
                    return Err(WorkerError::Refused(body));
                }
                Ok(r) => tracing::warn!(status = %r.status(), "registration failed; retrying"),
                Err(e) => tracing::info!(cluster = %url, error = %e, "cluster not reachable yet; retrying"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        };
        std::fs::write(&id_file, &reg.id).map_err(dd)?;
        tracing::info!(node = %reg.id, name = %config.name, "registered with the cluster");
        let mqtt_host = reg.mqtt_host.clone().unwrap_or(host);
        let reg_ip = req.ip.clone();
        Ok(Self { config, runtime, reg, mqtt_host, session, reg_ip })
    }

    pub fn id(&self) -> &str {
        &self.reg.id
    }

    /// Runs until `shutdown`, or until the broker refuses this worker's login (the caller then
    /// registers again); either way it then removes every instance it runs.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send) -> RunEnd {
        let id = self.reg.id.clone();

        let mut opts = MqttOptions::new(format!("{id}-ne"), self.mqtt_host.clone(), self.reg.mqtt_port);
        if !self.reg.mqtt_username.is_empty() {
            opts.set_credentials(self.reg.mqtt_username.clone(), self.reg.mqtt_password.clone());
        }
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
        opts.set_last_will(rumqttc::LastWill::new(
            node::topic_lost(&id),
            self.session.clone(),
            QoS::AtLeastOnce,
            false,
        ));
        let (client, mut events) = AsyncClient::new(opts, 256);
        let (tx, mut rx) = mpsc::channel::<Command>(256);

        let control = format!("nodes/{id}/control/");
        let sub_client = client.clone();
        let mqtt_tx = tx.clone();
        // Reports (which make the cluster count this worker as active) start only once the
        // control topics are subscribed, so no deploy is sent into the void.
        let (subscribed_tx, mut subscribed) = tokio::sync::watch::channel(false);
        let mqtt_task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = sub_client.subscribe(format!("{control}#"), QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.send(true);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let cmd = match p.topic.strip_prefix(&control) {
                            Some("deploy") => {
                                serde_json::from_slice(&p.payload).map(|d| Command::Deploy(Box::new(d))).ok()
                            }
                            Some("delete") => serde_json::from_slice(&p.payload).map(Command::Delete).ok(),
                            Some("logs") => serde_json::from_slice(&p.payload).map(Command::Logs).ok(),
                            Some("network") => serde_json::from_slice(&p.payload).map(Command::Network).ok(),
                            Some("tables") => serde_json::from_slice(&p.payload).map(Command::Tables).ok(),
                            _ => None,
                        };
                        match cmd {
                            Some(c) => {
                                let _ = mqtt_tx.send(c).await;
                            }
                            None => tracing::warn!(topic = %p.topic, "ignoring a malformed or unknown control message"),
                        }
                    }
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::ConnectionRefused(
                        rumqttc::ConnectReturnCode::BadUserNamePassword | rumqttc::ConnectReturnCode::NotAuthorized,
                    )) => {
                        tracing::warn!("the cluster refused this worker's MQTT login; registering again");
                        let _ = mqtt_tx.send(Command::Refused).await;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "MQTT connection lost; reconnecting");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        let tick_tx = tx.clone();
        let interval = Duration::from_millis(self.reg.report_interval_ms.max(100));
        let tick_task = tokio::spawn(async move {
            let _ = subscribed.wait_for(|s| *s).await;
            let mut t = tokio::time::interval(interval);
            loop {
                t.tick().await;
                if tick_tx.send(Command::Report).await.is_err() {
                    break;
                }
            }
        });

        let mut table = Table {
            id: id.clone(),
            client,
            runtime: self.runtime.clone(),
            instances: HashMap::new(),
            tx,
            config: self.config.clone(),
            last_cpu: host::cpu_times(),
            overlay: None,
            overlay_starting: false,
            tables_digest: oak_api::net::digest(&[]),
            advertise: self
                .config
                .overlay
                .as_ref()
                .and_then(|o| o.advertise)
                .or_else(|| self.reg_ip.parse().ok())
                .unwrap_or(Ipv4Addr::LOCALHOST),
        };
        tokio::pin!(shutdown);
        let end = loop {
            tokio::select! {
                _ = &mut shutdown => break RunEnd::Stopped,
                Some(cmd) = rx.recv() => {
                    if matches!(cmd, Command::Refused) {
                        break RunEnd::Refused;
                    }
                    table.handle(cmd).await;
                }
            }
        };
        tracing::info!("worker stopping: removing its instances");
        // All at once: each may wait out its grace period.
        let mut removals = tokio::task::JoinSet::new();
        for (_, inst) in table.instances.drain() {
            let rt = table.runtime.clone();
            let grace = table.config.stop_grace;
            removals.spawn(async move {
                if let Err(e) = rt.remove(&inst.container, grace).await {
                    tracing::warn!(container = %inst.container, error = %e, "cannot remove instance");
                }
            });
        }
        while removals.join_next().await.is_some() {}
        if let Some(ov) = table.overlay.take() {
            let _ = tokio::task::spawn_blocking(move || ov.shutdown()).await;
        }
        // A clean goodbye: the broker does not publish the last will.
        let _ = table.client.disconnect().await;
        mqtt_task.abort();
        tick_task.abort();
        end
    }
}

struct Table<R: Runtime> {
    id: String,
    client: AsyncClient,
    runtime: Arc<R>,
    instances: HashMap<Key, Instance>,
    tx: mpsc::Sender<Command>,
    config: WorkerConfig,
    last_cpu: (u64, u64),
    overlay: Option<Arc<Overlay>>,
    overlay_starting: bool,
    advertise: Ipv4Addr,
    /// Digest of the overlay tables last applied (of none, at first).
    tables_digest: u64,
}

/// `<service>-<instance>-<node>`: unique even when workers share one containerd (as the
/// simulated hosts of `oak up` do) and an instance moves between them.
fn container_id(k: &Key, node: &str) -> String {
    format!("{}-{}-{}", k.0, k.1, &node[..node.len().min(8)])
}

impl<R: Runtime> Table<R> {
    async fn publish<T: serde::Serialize>(&self, topic: String, msg: &T) {
        match serde_json::to_vec(msg) {
            Ok(bytes) => {
                if let Err(e) = self.client.publish(topic, QoS::AtLeastOnce, false, bytes).await {
                    tracing::warn!(error = %e, "cannot queue an MQTT message");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode a message"),
        }
    }

    async fn event(&mut self, k: &Key, status: Status, detail: String, exit_code: Option<u32>) {
        if let Some(i) = self.instances.get_mut(k) {
            i.status = status;
            i.detail = detail.clone();
        }
        let ev = InstanceEvent {
            service_id: k.0.clone(),
            instance_number: k.1,
            status,
            status_detail: detail,
            exit_code,
            ns_ip: self.instances.get(k).and_then(|i| i.ns_ip),
        };
        self.publish(node::topic_job(&self.id), &ev).await;
    }

    async fn remove(&mut self, k: &Key) {
        let Some(i) = self.instances.remove(k) else { return };
        if let Err(e) = self.runtime.remove(&i.container, self.config.stop_grace).await {
            tracing::warn!(container = %i.container, error = %e, "cannot remove instance");
        }
        if let Some(ov) = self.overlay.clone() {
            let _ = tokio::task::spawn_blocking(move || ov.detach(&i.container)).await;
        }
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Deploy(d) => self.deploy(*d).await,
            Command::Delete(d) => {
                let k = (d.service_id, d.instance_number);
                if self.instances.contains_key(&k) {
                    self.remove(&k).await;
                    let ev = InstanceEvent {
                        service_id: k.0.clone(),
                        instance_number: k.1,
                        status: Status::Undeployed,
                        status_detail: "removed".into(),
                        exit_code: None,
                        ns_ip: None,
                    };
                    self.publish(node::topic_job(&self.id), &ev).await;
                }
            }
            Command::Logs(req) => {
                let reply = self.logs(&req);
                self.publish(node::topic_logs(&self.id), &reply).await;
            }
            Command::Progress(k, detail) => {
                if self.instances.get(&k).is_some_and(|i| i.status == Status::Creating) {
                    self.event(&k, Status::Creating, detail, None).await;
                }
            }
            Command::Started(k, res) => match res {
                Ok(()) => {
                    if self.instances.get(&k).is_some_and(|i| i.status == Status::Creating) {
                        self.event(&k, Status::Running, "running".into(), None).await;
                    }
                }
                Err(e) => {
                    if self.instances.contains_key(&k) {
                        self.event(&k, Status::Failed, e, None).await;
                    }
                }
            },
            Command::Exited(k, exit) => {
                let Some(i) = self.instances.get(&k) else { return };
                let (status, detail, code) = match exit {
                    Exit::Code(0) if i.one_shot => (Status::Completed, "exited with code 0".to_owned(), Some(0)),
                    Exit::Code(c) => (Status::Dead, format!("exited with code {c}"), Some(c)),
                    Exit::Lost => (Status::Dead, "the runtime lost the task".to_owned(), None),
                };
                self.event(&k, status, detail, code).await;
            }
            Command::Report | Command::Miss => self.report().await,
            Command::Refused => {}
            Command::Network(n) => self.network(n),
            Command::OverlayReady(r) => {
                self.overlay_starting = false;
                match r {
                    Ok(ov) => {
                        self.overlay = Some(ov);
                        // Schedulable from this report on.
                        self.report().await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the overlay did not come up; retrying when the cluster resends")
                    }
                }
            }
            Command::Tables(t) => {
                tracing::debug!(
                    services = t.tables.len(),
                    instances = t.tables.iter().map(|s| s.instances.len()).sum::<usize>(),
                    "overlay tables from the cluster"
                );
                if let Some(ov) = &self.overlay {
                    ov.set_tables(&t.tables);
                    self.tables_digest = oak_api::net::digest(&t.tables);
                }
            }
        }
    }

    /// The cluster told this worker its subnet: set up the overlay (once).
    fn network(&mut self, n: WorkerNetwork) {
        let Some(settings) = self.config.overlay.clone() else { return };
        if let Some(ov) = &self.overlay {
            if ov.subnet() != n.subnet {
                tracing::error!(have = %ov.subnet(), told = %n.subnet, "the cluster sent a different subnet; keeping the one in use");
            }
            return;
        }
        if self.overlay_starting {
            return;
        }
        self.overlay_starting = true;
        let config =
            OverlayConfig { advertise: self.advertise, port: settings.port, location: self.config.location.clone() };
        let tx = self.tx.clone();
        let miss_tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let r = Overlay::start(config, n.subnet, move |_| {
                let _ = miss_tx.try_send(Command::Miss);
            })
            .map(Arc::new)
            .map_err(|e| e.to_string());
            let _ = tx.blocking_send(Command::OverlayReady(r));
        });
    }

    async fn deploy(&mut self, d: DeployCommand) {
        let k: Key = (d.service_id.clone(), d.instance_number);
        if let Some(i) = self.instances.get(&k) {
            if matches!(i.status, Status::Creating | Status::Running) {
                let (s, det) = (i.status, i.detail.clone());
                self.event(&k, s, det, None).await;
                return;
            }
            // A finished or failed copy is replaced.
            self.remove(&k).await;
        }
        let container = container_id(&k, &self.id);
        let log = self.config.data_dir.join("logs").join(format!("{container}.log"));
        // With the overlay on, an instance gets an address in this worker's subnet before it
        // starts; without a subnet yet it cannot run here (the cluster waits for one).
        let overlay = match (&self.config.overlay, &self.overlay) {
            (None, _) => None,
            (Some(_), Some(ov)) => match ov.reserve(&container) {
                Ok(ip) => Some((ov.clone(), ip)),
                Err(e) => {
                    self.refuse(&k, e.to_string()).await;
                    return;
                }
            },
            (Some(_), None) => {
                self.refuse(&k, "this worker has no overlay subnet yet".into()).await;
                return;
            }
        };
        let ports = d.spec.ports();
        let instance_ip = d.instance_ip;
        let spec = InstanceSpec {
            id: container.clone(),
            image: d.spec.code.clone(),
            cmd: d.spec.cmd.clone(),
            env: d.spec.environment.clone(),
            hostname: format!("instance-{}", d.instance_number),
            memory_mb: d.spec.memory,
            millicpu: d.spec.millicpu(),
            log_path: log.clone(),
            netns: format!("oak-{container}"),
            labels: BTreeMap::from([
                (NODE_LABEL.to_owned(), self.id.clone()),
                ("oak.service".to_owned(), d.service_id.to_string()),
                ("oak.instance".to_owned(), d.instance_number.to_string()),
                ("oak.job".to_owned(), d.job_name.clone()),
            ]),
        };
        self.instances.insert(
            k.clone(),
            Instance {
                container,
                ns_ip: overlay.as_ref().map(|o| o.1),
                status: Status::Creating,
                detail: String::new(),
                one_shot: d.spec.one_shot,
                log,
                cpu: None,
                cpu_percent: 0.0,
            },
        );
        self.event(&k, Status::Creating, format!("starting {}", d.spec.code), None).await;
        let rt = self.runtime.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let started = async {
                // One lookup when the image is there (the usual case on a deploy's path).
                if !rt.has_image(&spec.image).await {
                    let _ = tx.send(Command::Progress(k.clone(), format!("pulling {}", spec.image))).await;
                    rt.ensure_image(&spec.image).await.map_err(|e| e.to_string())?;
                }
                if let Some((ov, _)) = overlay {
                    let (netns, id) = (spec.netns.clone(), spec.id.clone());
                    tokio::task::spawn_blocking(move || {
                        oak_runtime::netns::create(&netns)?;
                        ov.attach(&id, &netns, instance_ip, &ports).map(|_| ()).map_err(|e| e.to_string())
                    })
                    .await
                    .map_err(|e| e.to_string())??;
                }
                rt.start(&spec).await.map_err(|e| e.to_string())
            }
            .await;
            match started {
                Ok(exit) => {
                    let _ = tx.send(Command::Started(k.clone(), Ok(()))).await;
                    let e = exit.await.unwrap_or(Exit::Lost);
                    let _ = tx.send(Command::Exited(k, e)).await;
                }
                Err(e) => {
                    let _ = tx.send(Command::Started(k, Err(e))).await;
                }
            }
        });
    }

    /// Reports an instance as FAILED without having started it.
    async fn refuse(&mut self, k: &Key, detail: String) {
        self.instances.remove(k);
        let ev = InstanceEvent {
            service_id: k.0.clone(),
            instance_number: k.1,
            status: Status::Failed,
            status_detail: detail,
            exit_code: None,
            ns_ip: None,
        };
        self.publish(node::topic_job(&self.id), &ev).await;
    }

    fn logs(&self, req: &LogsRequest) -> LogsReply {
        let k = (req.service_id.clone(), req.instance_number);
        let mut reply = LogsReply {
            request_id: req.request_id.clone(),
            offset: 0,
            next_offset: 0,
            text: String::new(),
            error: None,
        };
        let Some(i) = self.instances.get(&k) else {
            reply.error = Some(format!("instance {} of service {} is not on this worker", k.1, k.0));
            return reply;
        };
        match std::fs::read(&i.log) {
            Ok(bytes) => {
                let len = bytes.len() as u64;
                let max = req.max_bytes.clamp(1, 1024 * 1024);
                let start = match req.from_offset {
                    Some(o) => o.min(len),
                    None => len.saturating_sub(max),
                };
                let end = (start + max).min(len);
                reply.offset = start;
                reply.next_offset = end;
                reply.text = String::from_utf8_lossy(&bytes[start as usize..end as usize]).into_owned();
            }
            Err(e) => reply.error = Some(format!("cannot read the log: {e}")),
        }
        reply
    }

    async fn report(&mut self) {
        let now = Instant::now();
        let mut usage = Vec::with_capacity(self.instances.len());
        for (k, i) in self.instances.iter_mut() {
            let mut mem = 0.0;
            if let Some(u) = self.runtime.usage(&i.container) {
                if let Some((prev, at)) = i.cpu {
                    let dt = now.duration_since(at).as_nanos().max(1) as f64;
                    i.cpu_percent = (u.cpu_ns.saturating_sub(prev)) as f64 / dt * 100.0;
                }
                i.cpu = Some((u.cpu_ns, now));
                mem = u.memory_bytes as f64 / (1024.0 * 1024.0);
            }
            usage.push(InstanceUsage {
                service_id: k.0.clone(),
                instance_number: k.1,
                status: i.status,
                cpu_percent: i.cpu_percent,
                memory_mb: mem,
                ns_ip: i.ns_ip,
            });
        }
        usage.sort_by(|a, b| (&a.service_id, a.instance_number).cmp(&(&b.service_id, b.instance_number)));
        let (busy, total) = host::cpu_times();
        let (pb, pt) = self.last_cpu;
        self.last_cpu = (busy, total);
        let cpu_percent = if total > pt { (busy - pb) as f64 / (total - pt) as f64 * 100.0 } else { 0.0 };
        let (mem_total, mem_avail) = host::memory_mb();
        let info = NodeInfo {
            cpu_percent,
            cpu_cores: host::cpu_cores(),
            memory_mb: mem_total,
            memory_available_mb: mem_avail,
            disk_free_mb: host::disk_free_mb(&self.config.data_dir),
            arch: oak_runtime::image::host_arch().to_owned(),
            runtimes: self.runtime.names(),
            gpus: 0,
            location: self.config.location.clone(),
            instances: usage,
            overlay: self.config.overlay.is_some(),
            subnet: self.overlay.as_ref().map(|o| o.subnet()),
            tunnel: self.overlay.as_ref().map(|o| o.tunnel()),
            interests: self.overlay.as_ref().map(|o| o.interests()).unwrap_or_default(),
            tables_digest: self.overlay.as_ref().map(|_| self.tables_digest),
        };
        self.publish(node::topic_information(&self.id), &info).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_cluster_urls() {
        assert_eq!(super::host_of("http://10.0.0.1:10100").ok(), Some(("10.0.0.1".into(), 10100)));
        assert_eq!(super::host_of("http://[::1]:5/x").ok(), Some(("::1".into(), 5)));
        assert!(super::host_of("10.0.0.1").is_err());
    }
}
