//! The instance table: one task owns it and takes [`Command`]s (from the cluster, from its
//! own tasks) and sends [`Outbound`] messages; `node.rs` connects both ends to MQTT, and the
//! tests to a fake runtime and a channel.
//!
//! Nothing slow runs on the table's loop: starting and removing an instance are tasks that
//! report back with a command, so reports go out on time while a container takes its grace
//! period (and a SIGKILL) to stop.
//!
//! Instance lifecycle on a worker:
//! ```text
//! deploy ─▶ CREATING ─▶ RUNNING ─▶ exit 0 and one_shot ─▶ COMPLETED
//!              │            └────▶ other exit ─▶ DEAD
//!              └─▶ FAILED (image missing, runtime error)
//! delete (any state) ─▶ removing (SIGTERM, grace, SIGKILL; off the loop) ─▶ UNDEPLOYED
//! ```
//! An instance key's place in the table (`Slot`):
//! ```text
//!         deploy                 delete, or deploy over a finished copy
//! (none) ───────▶ Live ──────────────────────────────────────────────▶ Removing { next }
//!   ▲                ▲                         removal done, next = None  │
//!   └────────────────┼────────────────────────────────────────────────────┤
//!                    └──────────── removal done, next = Some(deploy) ─────┘
//! ```
//! A deploy that arrives while its key is being removed waits in `next` (reported CREATING)
//! and starts when the old container is gone; a delete then cancels it.

use crate::OverlaySettings;
use crate::host;
use crate::ldp::Ldp;
use oak_api::ldp::MeasureReply;
use oak_api::net::{WorkerNetwork, WorkerTables};
use oak_api::node::{DeleteCommand, DeployCommand, InstanceEvent, InstanceUsage, LogsReply, LogsRequest, NodeInfo};
use oak_api::{ServiceId, Status};
use oak_net::{Overlay, OverlayConfig};
use oak_runtime::{Exit, InstanceSpec, Runtime};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

/// Label on every container this worker owns.
pub const NODE_LABEL: &str = "oak.node";

pub(crate) type Key = (ServiceId, u32);

/// What the table needs to know about its worker.
#[derive(Clone, Debug)]
pub(crate) struct TableConfig {
    /// The worker's node id.
    pub node: String,
    pub data_dir: PathBuf,
    pub location: Option<String>,
    /// Grace between SIGTERM and SIGKILL when an instance is removed.
    pub stop_grace: Duration,
    pub report_interval: Duration,
    pub overlay: Option<OverlaySettings>,
    /// The underlay address of this worker's tunnel.
    pub advertise: Ipv4Addr,
    /// Latency probes and measurements (LDP), for the reports; `None`: none.
    pub ldp: Option<Ldp>,
    /// The tunnel's key, when it is encrypted.
    pub tunnel_key: Option<oak_net::TunnelKey>,
}

pub(crate) enum Command {
    // From the cluster.
    Deploy(Box<DeployCommand>),
    Delete(DeleteCommand),
    Logs(LogsRequest),
    Network(WorkerNetwork),
    Tables(WorkerTables),
    /// The control topics are subscribed: reports start (the cluster counts this worker as
    /// active from its first one, so no deploy is sent into the void).
    Subscribed,
    /// The broker refused this worker's login: the cluster no longer knows it.
    Refused,
    // From the table's own tasks; a generation tells a copy of an instance from the next.
    /// A step of starting an instance worth showing (e.g. its image is being pulled).
    Progress(Key, u64, String),
    Started(Key, u64, Result<(), String>),
    Exited(Key, u64, Exit),
    /// The container of a removed instance is gone.
    Removed(Key),
    /// The overlay came up (or failed to).
    OverlayReady(Result<Arc<Overlay>, String>),
    /// Packets wait for the table of a semantic address: report interests now.
    Miss,
    /// A tunnel handshake from a key no table named: (key, where it came from).
    UnknownPeer(String, std::net::SocketAddrV4),
    /// The cluster's answer about such a key.
    KeyAnswer(oak_api::node::KeyAnswer),
}

/// Most unknown tunnel keys asked about at once, and how long a question waits.
const MAX_UNKNOWN_PEERS: usize = 64;
const UNKNOWN_PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the table sends to its cluster.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A status change (`nodes/<id>/job`).
    Event(InstanceEvent),
    /// The periodic report (`nodes/<id>/information`).
    Report(Box<NodeInfo>),
    /// An answer to a logs request (`nodes/<id>/logs`).
    Logs(LogsReply),
    /// An answer to a measurement request (`nodes/<id>/measured`).
    Measured(MeasureReply),
    /// Is this tunnel key a live worker's? (`nodes/<id>/keys`)
    KeyQuery(oak_api::node::KeyQuery),
}

/// How [`crate::Worker::run`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// Asked to stop.
    Stopped,
    /// The cluster no longer accepts this worker's credentials (it forgot the worker, or
    /// lost its store): register again.
    Refused,
}

struct Instance {
    generation: u64,
    container: String,
    ns_ip: Option<Ipv4Addr>,
    status: Status,
    detail: String,
    one_shot: bool,
    log: PathBuf,
    /// Last (cpu ns, when) sample, for the CPU rate.
    cpu: Option<(u64, Instant)>,
    cpu_percent: f64,
    start: Starting,
}

/// The start of an instance, as its removal sees it.
struct Starting {
    /// Dropped to cancel while the image is being fetched: the pull stops, nothing is created.
    cancel: oneshot::Sender<()>,
    /// Closes once the start task is past the runtime (or gave up): after that, removing the
    /// container removes everything the start made.
    settled: oneshot::Receiver<()>,
}

struct Removal {
    task: JoinHandle<()>,
    /// A deploy of the same key that waits for the removal.
    next: Option<Box<DeployCommand>>,
}

enum Slot {
    Live(Instance),
    Removing(Removal),
}

/// `<service>-<instance>-<node>`: unique even when workers share one containerd (as the
/// simulated hosts of `oak up` do) and an instance moves between them.
fn container_id(k: &Key, node: &str) -> String {
    format!("{}-{}-{}", k.0, k.1, &node[..node.len().min(8)])
}

pub(crate) struct Table<R: Runtime> {
    config: TableConfig,
    runtime: Arc<R>,
    slots: HashMap<Key, Slot>,
    /// For the table's own tasks.
    tx: mpsc::Sender<Command>,
    out: mpsc::Sender<Outbound>,
    generation: u64,
    reporting: bool,
    last_cpu: (u64, u64),
    overlay: Option<Arc<Overlay>>,
    overlay_starting: bool,
    /// Digest of the overlay tables last applied (of none, at first).
    tables_digest: u64,
    /// Tunnel keys asked about, with the address their handshake came from and when.
    unknown_peers: HashMap<String, (std::net::SocketAddrV4, std::time::Instant)>,
}

impl<R: Runtime> Table<R> {
    /// A table sending to `out`; commands go to the returned receiver's sender
    /// ([`Table::sender`]).
    pub(crate) fn new(
        config: TableConfig,
        runtime: Arc<R>,
        out: mpsc::Sender<Outbound>,
    ) -> (Self, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(256);
        let table = Self {
            config,
            runtime,
            slots: HashMap::new(),
            tx,
            out,
            generation: 0,
            reporting: false,
            last_cpu: host::cpu_times(),
            overlay: None,
            overlay_starting: false,
            tables_digest: oak_api::net::digest(&[]),
            unknown_peers: HashMap::new(),
        };
        (table, rx)
    }

    pub(crate) fn sender(&self) -> mpsc::Sender<Command> {
        self.tx.clone()
    }

    /// Handles commands and reports every interval (once subscribed) until `shutdown` or a
    /// refused login; then removes every instance (waiting for removals under way) and the
    /// overlay.
    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> RunEnd {
        let mut ticker = tokio::time::interval(self.config.report_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        let end = loop {
            tokio::select! {
                _ = &mut shutdown => break RunEnd::Stopped,
                cmd = rx.recv() => match cmd {
                    Some(Command::Refused) => break RunEnd::Refused,
                    Some(Command::Subscribed) => {
                        if !self.reporting {
                            self.reporting = true;
                            ticker.reset_immediately();
                        }
                    }
                    Some(cmd) => self.handle(cmd).await,
                    None => break RunEnd::Stopped,
                },
                _ = ticker.tick(), if self.reporting => self.report().await,
            }
        };
        // The tasks still running find the channel closed instead of waiting on it.
        drop(rx);
        self.stop().await;
        end
    }

    async fn stop(&mut self) {
        tracing::info!("worker stopping: removing its instances");
        // All at once: each may wait out its grace period.
        let mut removals = tokio::task::JoinSet::new();
        for (_, slot) in self.slots.drain() {
            match slot {
                Slot::Live(i) => {
                    removals.spawn(remove(self.runtime.clone(), i, self.config.stop_grace, None));
                }
                Slot::Removing(r) => {
                    removals.spawn(async move {
                        let _ = r.task.await;
                    });
                }
            }
        }
        while removals.join_next().await.is_some() {}
        if let Some(ov) = self.overlay.take() {
            let _ = tokio::task::spawn_blocking(move || ov.shutdown()).await;
        }
    }

    async fn send(&self, msg: Outbound) {
        // Closed only when the worker is going away.
        let _ = self.out.send(msg).await;
    }

    fn live(&self, k: &Key, generation: u64) -> Option<&Instance> {
        match self.slots.get(k) {
            Some(Slot::Live(i)) if i.generation == generation => Some(i),
            _ => None,
        }
    }

    async fn event(&mut self, k: &Key, status: Status, detail: String, exit_code: Option<u32>) {
        let mut ns_ip = None;
        if let Some(Slot::Live(i)) = self.slots.get_mut(k) {
            i.status = status;
            i.detail = detail.clone();
            ns_ip = i.ns_ip;
        }
        let ev = InstanceEvent {
            service_id: k.0.clone(),
            instance_number: k.1,
            status,
            status_detail: detail,
            exit_code,
            ns_ip,
        };
        self.send(Outbound::Event(ev)).await;
    }

    /// Moves a live instance to removal (off the loop); `next` starts when it is done.
    fn start_removal(&mut self, k: &Key, next: Option<Box<DeployCommand>>) {
        let Some(Slot::Live(i)) = self.slots.remove(k) else { return };
        let (rt, grace, overlay, tx, key) =
            (self.runtime.clone(), self.config.stop_grace, self.overlay.clone(), self.tx.clone(), k.clone());
        let task = tokio::spawn(async move {
            remove(rt, i, grace, overlay).await;
            let _ = tx.send(Command::Removed(key)).await;
        });
        self.slots.insert(k.clone(), Slot::Removing(Removal { task, next }));
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Deploy(d) => self.deploy(d).await,
            Command::Delete(d) => {
                let k = (d.service_id, d.instance_number);
                match self.slots.get_mut(&k) {
                    Some(Slot::Live(_)) => self.start_removal(&k, None),
                    // Already going; a deploy that waited for it is called off.
                    Some(Slot::Removing(r)) => r.next = None,
                    None => {}
                }
            }
            Command::Removed(k) => {
                if !matches!(self.slots.get(&k), Some(Slot::Removing(_))) {
                    return;
                }
                let Some(Slot::Removing(r)) = self.slots.remove(&k) else { return };
                match r.next {
                    Some(d) => self.deploy(d).await,
                    None => self.event(&k, Status::Undeployed, "removed".into(), None).await,
                }
            }
            Command::Logs(req) => {
                let reply = self.logs(&req);
                self.send(Outbound::Logs(reply)).await;
            }
            Command::Progress(k, g, detail) => {
                if self.live(&k, g).is_some_and(|i| i.status == Status::Creating) {
                    self.event(&k, Status::Creating, detail, None).await;
                }
            }
            Command::Started(k, g, res) => match res {
                Ok(()) => {
                    if self.live(&k, g).is_some_and(|i| i.status == Status::Creating) {
                        self.event(&k, Status::Running, "running".into(), None).await;
                    }
                }
                Err(e) => {
                    if self.live(&k, g).is_some() {
                        self.event(&k, Status::Failed, e, None).await;
                    }
                }
            },
            Command::Exited(k, g, exit) => {
                let Some(i) = self.live(&k, g) else { return };
                let (status, detail, code) = match exit {
                    Exit::Code(0) if i.one_shot => (Status::Completed, "exited with code 0".to_owned(), Some(0)),
                    Exit::Code(c) => (Status::Dead, format!("exited with code {c}"), Some(c)),
                    Exit::Lost => (Status::Dead, "the runtime lost the task".to_owned(), None),
                };
                self.event(&k, status, detail, code).await;
            }
            Command::Miss => self.report().await,
            Command::UnknownPeer(key, from) => {
                // An unanswered question expires (the peer's handshake, retried every 5 s,
                // asks again).
                let now = std::time::Instant::now();
                self.unknown_peers.retain(|_, (_, at)| now.duration_since(*at) < UNKNOWN_PEER_TIMEOUT);
                if self.unknown_peers.len() >= MAX_UNKNOWN_PEERS && !self.unknown_peers.contains_key(&key) {
                    return;
                }
                self.unknown_peers.insert(key.clone(), (from, now));
                let _ = self.out.send(Outbound::KeyQuery(oak_api::node::KeyQuery { key })).await;
            }
            Command::KeyAnswer(a) => {
                let Some((from, _)) = self.unknown_peers.remove(&a.key) else { return };
                match (&self.overlay, a.known) {
                    (Some(ov), true) => {
                        if let Err(e) = ov.trust_peer(&a.key, from) {
                            tracing::warn!(key = %a.key, error = %e, "cannot admit a tunnel peer");
                        }
                    }
                    _ => {
                        tracing::warn!(key = %a.key, from = %from, "a tunnel handshake from a key no live worker has: dropped")
                    }
                }
            }
            Command::Subscribed | Command::Refused => {}
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
        let config = OverlayConfig {
            advertise: self.config.advertise,
            port: settings.port,
            location: self.config.location.clone(),
        };
        let tx = self.tx.clone();
        let miss_tx = self.tx.clone();
        let peer_tx = self.tx.clone();
        let tunnel = self.config.tunnel_key.clone().map(|key| oak_net::TunnelConfig {
            key,
            unknown_peer: Box::new(move |k: &str, from| {
                let _ = peer_tx.try_send(Command::UnknownPeer(k.to_owned(), from));
            }),
        });
        tokio::task::spawn_blocking(move || {
            let r = Overlay::start_with_tunnel(config, n.subnet, tunnel, move |_| {
                let _ = miss_tx.try_send(Command::Miss);
            })
            .map(Arc::new)
            .map_err(|e| e.to_string());
            let _ = tx.blocking_send(Command::OverlayReady(r));
        });
    }

    async fn deploy(&mut self, d: Box<DeployCommand>) {
        let k: Key = (d.service_id.clone(), d.instance_number);
        match self.slots.get_mut(&k) {
            Some(Slot::Live(i)) if matches!(i.status, Status::Creating | Status::Running) => {
                let (s, det) = (i.status, i.detail.clone());
                self.event(&k, s, det, None).await;
                return;
            }
            // A finished or failed copy is replaced, once it is gone.
            Some(Slot::Live(_)) => self.start_removal(&k, Some(d)),
            Some(Slot::Removing(r)) => r.next = Some(d),
            None => return self.start(*d).await,
        }
        self.event(&k, Status::Creating, "waiting for the previous copy to be removed".into(), None).await;
    }

    async fn start(&mut self, d: DeployCommand) {
        let k: Key = (d.service_id.clone(), d.instance_number);
        let container = container_id(&k, &self.config.node);
        let log = self.config.data_dir.join("logs").join(format!("{container}.log"));
        // With the overlay on, an instance gets an address in this worker's subnet before it
        // starts; without a subnet yet it cannot run here (the cluster waits for one).
        let overlay = match (&self.config.overlay, &self.overlay) {
            (None, _) => None,
            (Some(_), Some(ov)) => match ov.reserve(&container) {
                Ok(ip) => Some((ov.clone(), ip)),
                Err(e) => return self.refuse(&k, e.to_string()).await,
            },
            (Some(_), None) => return self.refuse(&k, "this worker has no overlay subnet yet".into()).await,
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
                (NODE_LABEL.to_owned(), self.config.node.clone()),
                ("oak.service".to_owned(), d.service_id.to_string()),
                ("oak.instance".to_owned(), d.instance_number.to_string()),
                ("oak.job".to_owned(), d.job_name.clone()),
            ]),
        };
        self.generation += 1;
        let generation = self.generation;
        let (cancel_tx, mut cancel) = oneshot::channel::<()>();
        let (settled_tx, settled) = oneshot::channel::<()>();
        self.slots.insert(
            k.clone(),
            Slot::Live(Instance {
                generation,
                container,
                ns_ip: overlay.as_ref().map(|o| o.1),
                status: Status::Creating,
                detail: String::new(),
                one_shot: d.spec.one_shot,
                log,
                cpu: None,
                cpu_percent: 0.0,
                start: Starting { cancel: cancel_tx, settled },
            }),
        );
        self.event(&k, Status::Creating, format!("starting {}", d.spec.code), None).await;
        let rt = self.runtime.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let image = async {
                // One lookup when the image is there (the usual case on a deploy's path).
                if !rt.has_image(&spec.image).await {
                    let _ = tx.send(Command::Progress(k.clone(), generation, format!("pulling {}", spec.image))).await;
                    rt.ensure_image(&spec.image).await.map_err(|e| e.to_string())?;
                }
                Ok::<(), String>(())
            };
            // Only the image step gives way to a removal: past it, the start goes through and
            // the removal (which waits for `settled`) undoes it.
            let image = tokio::select! {
                biased;
                _ = &mut cancel => return,
                r = image => r,
            };
            if !matches!(cancel.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
                return;
            }
            let started = async {
                image?;
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
            drop(settled_tx);
            match started {
                Ok(exit) => {
                    let _ = tx.send(Command::Started(k.clone(), generation, Ok(()))).await;
                    let e = exit.await.unwrap_or(Exit::Lost);
                    let _ = tx.send(Command::Exited(k, generation, e)).await;
                }
                Err(e) => {
                    let _ = tx.send(Command::Started(k, generation, Err(e))).await;
                }
            }
        });
    }

    /// Reports an instance as FAILED without having started it.
    async fn refuse(&mut self, k: &Key, detail: String) {
        self.slots.remove(k);
        self.event(k, Status::Failed, detail, None).await;
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
        let Some(Slot::Live(i)) = self.slots.get(&k) else {
            reply.error = Some(format!("instance {} of service {} is not on this worker", k.1, k.0));
            return reply;
        };
        match read_range(&i.log, req.from_offset, req.max_bytes.clamp(1, 1024 * 1024)) {
            Ok((start, bytes)) => {
                reply.offset = start;
                reply.next_offset = start + bytes.len() as u64;
                reply.text = String::from_utf8_lossy(&bytes).into_owned();
            }
            Err(e) => reply.error = Some(format!("cannot read the log: {e}")),
        }
        reply
    }

    async fn report(&mut self) {
        let now = Instant::now();
        let mut usage = Vec::with_capacity(self.slots.len());
        for (k, slot) in self.slots.iter_mut() {
            let mut entry = InstanceUsage {
                service_id: k.0.clone(),
                instance_number: k.1,
                status: Status::Creating,
                cpu_percent: 0.0,
                memory_mb: 0.0,
                ns_ip: None,
            };
            match slot {
                Slot::Live(i) => {
                    if let Some(u) = self.runtime.usage(&i.container) {
                        if let Some((prev, at)) = i.cpu {
                            let dt = now.duration_since(at).as_nanos().max(1) as f64;
                            i.cpu_percent = (u.cpu_ns.saturating_sub(prev)) as f64 / dt * 100.0;
                        }
                        i.cpu = Some((u.cpu_ns, now));
                        entry.memory_mb = u.memory_bytes as f64 / (1024.0 * 1024.0);
                    }
                    entry.status = i.status;
                    entry.cpu_percent = i.cpu_percent;
                    entry.ns_ip = i.ns_ip;
                }
                // Its next copy, waiting: the cluster placed it here.
                Slot::Removing(Removal { next: Some(_), .. }) => {}
                // The cluster let it go already.
                Slot::Removing(Removal { next: None, .. }) => continue,
            }
            usage.push(entry);
        }
        usage.sort_by(|a, b| (&a.service_id, a.instance_number).cmp(&(&b.service_id, b.instance_number)));
        let (busy, total) = host::cpu_times();
        let (pb, pt) = self.last_cpu;
        self.last_cpu = (busy, total);
        let cpu_percent = if total > pt { (busy - pb) as f64 / (total - pt) as f64 * 100.0 } else { 0.0 };
        let (mem_total, mem_avail) = host::memory_mb();
        let (probe, coord, rtts) = self.config.ldp.as_ref().map(Ldp::report).unwrap_or_default();
        // The closest policy picks by what this worker measured (and its coordinate).
        if let (Some(o), Some(l)) = (&self.overlay, &self.config.ldp) {
            let (c, measured) = l.latencies();
            o.set_latencies(c, measured);
        }
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
            probe,
            coord,
            rtts,
        };
        self.send(Outbound::Report(Box::new(info))).await;
    }
}

/// At most `max` bytes of a file from `from` (default: its last `max` bytes), and where they
/// start. Only those bytes are read: a log may be large, and this runs on the table's loop.
fn read_range(path: &std::path::Path, from: Option<u64>, max: u64) -> std::io::Result<(u64, Vec<u8>)> {
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let start = match from {
        Some(o) => o.min(len),
        None => len.saturating_sub(max),
    };
    f.seek(std::io::SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    f.take(max.min(len - start)).read_to_end(&mut bytes)?;
    Ok((start, bytes))
}

/// Stops and removes an instance's container (after its start, if one is under way, has
/// settled) and gives back its overlay address.
async fn remove<R: Runtime>(rt: Arc<R>, i: Instance, grace: Duration, overlay: Option<Arc<Overlay>>) {
    drop(i.start.cancel);
    let _ = i.start.settled.await;
    if let Err(e) = rt.remove(&i.container, grace).await {
        tracing::warn!(container = %i.container, error = %e, "cannot remove instance");
    }
    if let Some(ov) = overlay {
        let _ = tokio::task::spawn_blocking(move || ov.detach(&i.container)).await;
    }
}

#[cfg(test)]
mod tests;
