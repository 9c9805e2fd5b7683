//! The worker process: registration with its cluster, the MQTT session, and the wiring of
//! the instance table (`table.rs`) to both.

use crate::host;
use crate::ldp::{Ldp, LdpConfig};
use crate::lock::{self, HostLock, LockError};
use crate::table::{Command, NODE_LABEL, Outbound, RunEnd, Table, TableConfig};
use oak_api::backoff::Backoff;
use oak_api::ldp::{MeasureRequest, ProbePeers};
use oak_api::node::{self, RegisterRequest, RegisterResponse};
use oak_runtime::Runtime;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Base URL of the cluster's registration endpoint, e.g. `http://10.0.0.1:10100`.
    pub cluster_url: String,
    /// The cluster's worker token (`K10<ca-hash>::<secret>` or a bare secret).
    pub token: String,
    /// How the worker trusts the cluster's registration and MQTT ports (the CA the token
    /// pins, or a CA file; see [`oak_tls::pki::client_config_for`]). `None`: plain only.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    pub data_dir: PathBuf,
    pub name: String,
    pub location: Option<String>,
    /// Addons this worker offers (`--addons`), for services' `addons` constraints; checked
    /// by [`check_addons`].
    pub addons: Vec<String>,
    /// UDP port of the latency probes (LDP); 0: any free one.
    pub probe_port: u16,
    /// Time between two rounds of latency probes.
    pub probe_interval: Duration,
    /// Grace between SIGTERM and SIGKILL when an instance is removed.
    pub stop_grace: Duration,
    /// The semantic overlay; `None` runs instances without it (loopback only).
    pub overlay: Option<OverlaySettings>,
}

/// Most addons a worker offers.
pub const MAX_ADDONS: usize = 32;
/// Longest addon name.
pub const MAX_ADDON_LEN: usize = 64;

/// Checks the addons a worker is given: at most [`MAX_ADDONS`], each 1-[`MAX_ADDON_LEN`]
/// characters of `A-Z a-z 0-9 . _ -`. The error names the first bad one.
pub fn check_addons(addons: &[String]) -> Result<(), WorkerError> {
    if addons.len() > MAX_ADDONS {
        return Err(WorkerError::Addons(format!("at most {MAX_ADDONS} addons, got {}", addons.len())));
    }
    for a in addons {
        let ok = !a.is_empty()
            && a.len() <= MAX_ADDON_LEN
            && a.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            let shown: String = a.chars().take(MAX_ADDON_LEN + 8).collect();
            return Err(WorkerError::Addons(format!(
                "bad addon {shown:?}: an addon is 1-{MAX_ADDON_LEN} characters of A-Z, a-z, 0-9, '.', '_', '-'"
            )));
        }
    }
    Ok(())
}

#[derive(Clone, Debug)]
pub struct OverlaySettings {
    /// UDP port of the tunnel.
    pub port: u16,
    /// Underlay address other workers reach this one at; default: the address this host
    /// uses towards its cluster.
    pub advertise: Option<std::net::Ipv4Addr>,
    /// Encrypt and authenticate the tunnel (WireGuard); off: plaintext, for a trusted
    /// underlay (`--tunnel-encryption off`).
    pub encryption: bool,
}

/// The worker's tunnel key in its data dir (base64, 0600), made on first use.
fn tunnel_key(dir: &std::path::Path) -> Result<oak_net::TunnelKey, WorkerError> {
    let path = dir.join("tunnel-key");
    let bad = |reason: String| WorkerError::DataDir { path: path.display().to_string(), reason };
    if let Ok(text) = std::fs::read_to_string(&path) {
        return oak_net::TunnelKey::from_base64(text.trim()).map_err(|e| bad(format!("not a tunnel key: {e}")));
    }
    let key = oak_net::TunnelKey::generate().map_err(|e| bad(e.to_string()))?;
    oak_store::datadir::write_private(&path, key.to_base64().as_bytes()).map_err(|e| bad(e.to_string()))?;
    Ok(key)
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot use data dir {path}: {reason}")]
    DataDir { path: String, reason: String },
    #[error("bad cluster URL {0}")]
    ClusterUrl(String),
    #[error("the cluster refused the registration: {0}")]
    Refused(String),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("--addons: {0}")]
    Addons(String),
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
    /// Held while this worker runs: its data dir, and (with the overlay on) the host's network.
    _host_lock: Option<HostLock>,
    /// The tunnel's static key, when it is encrypted.
    tunnel_key: Option<oak_net::TunnelKey>,
}

/// First and longest wait between attempts to register, and to reach the broker.
const RETRY_BASE: Duration = Duration::from_millis(200);
const RETRY_CAP: Duration = Duration::from_secs(5);

fn host_of(url: &str) -> Result<(String, u16), WorkerError> {
    let rest = url.split("://").nth(1).ok_or_else(|| WorkerError::ClusterUrl(url.to_owned()))?;
    let hostport = rest.split('/').next().unwrap_or_default();
    let (h, p) = hostport.rsplit_once(':').ok_or_else(|| WorkerError::ClusterUrl(url.to_owned()))?;
    let port = p.parse().map_err(|_| WorkerError::ClusterUrl(url.to_owned()))?;
    Ok((h.trim_matches(|c| c == '[' || c == ']').to_owned(), port))
}

impl<R: Runtime> Worker<R> {
    /// Registers with the cluster, retrying until it answers (or refuses: then it fails).
    /// It first takes the lock of its data dir and, with the overlay on, the host lock
    /// ([`crate::lock`]): a second worker on the same data dir or in the same network fails
    /// here, before it touches anything.
    pub async fn register(mut config: WorkerConfig, runtime: Arc<R>) -> Result<Self, WorkerError> {
        check_addons(&config.addons)?;
        let mut addons: Vec<String> = Vec::with_capacity(config.addons.len());
        for a in &config.addons {
            if !addons.contains(a) {
                addons.push(a.clone());
            }
        }
        config.addons = addons;
        let dd = |e: std::io::Error| WorkerError::DataDir {
            path: config.data_dir.display().to_string(),
            reason: e.to_string(),
        };
        // containerd opens the log files itself: paths must be absolute.
        config.data_dir = std::path::absolute(&config.data_dir).map_err(dd)?;
        // First of all, the data dir's lock (a second worker on it would remove this one's
        // containers as its own leftovers), and with the overlay the host network's. Without
        // the overlay a worker leaves the host's network alone.
        let host_lock = Some(lock::take(&config.data_dir, config.overlay.is_some())?);
        let dd = |e: std::io::Error| WorkerError::DataDir {
            path: config.data_dir.display().to_string(),
            reason: e.to_string(),
        };
        // The node secret proves this worker's identity: private to its user, like every data dir.
        let private = |e: oak_store::datadir::DataDirError| WorkerError::DataDir {
            path: config.data_dir.display().to_string(),
            reason: e.to_string(),
        };
        oak_store::datadir::prepare(&config.data_dir).map_err(private)?;
        oak_store::datadir::private_subdir(&config.data_dir.join("logs")).map_err(private)?;
        let id_file = config.data_dir.join("node-id");
        let secret_file = config.data_dir.join("node-secret");
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
        };
        let node_id = read(&id_file);
        let node_secret = read(&secret_file);
        let tunnel_key = match &config.overlay {
            Some(o) if o.encryption => Some(tunnel_key(&config.data_dir)?),
            _ => None,
        };
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
            node_secret,
            ip: host::source_ip_towards(&host, port).unwrap_or_else(|| "127.0.0.1".into()),
            arch: oak_runtime::image::host_arch().to_owned(),
            runtimes: runtime.names(),
            cpu_cores: host::cpu_cores(),
            memory_mb: mem,
            gpus: 0,
            location: config.location.clone(),
            addons: config.addons.clone(),
            session: format!(
                "{}-{}",
                std::process::id(),
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
            ),
            tunnel_key: tunnel_key.as_ref().map(|k| k.public_key().to_base64()),
        };
        let mut req = req;
        let session = req.session.clone();
        let http = match &config.tls {
            Some(tls) => oak_tls::http_client_trusting(tls)
                .build()
                .map_err(|e| WorkerError::Refused(format!("cannot build an HTTPS client: {e}")))?,
            None if config.cluster_url.starts_with("https://") => {
                return Err(WorkerError::Refused(
                    "the cluster URL is https and the token pins no CA: use the cluster's K10 worker token, or give --cluster-ca FILE".into(),
                ));
            }
            None => oak_tls::http_client(),
        };
        let secret = oak_tls::pki::JoinToken::parse(&config.token)
            .map_err(|e| WorkerError::Refused(format!("the worker token: {e}")))?
            .secret;
        let url = format!("{}/api/node/register", config.cluster_url.trim_end_matches('/'));
        let mut backoff = Backoff::new(RETRY_BASE, RETRY_CAP);
        // A worker that holds its node secret proves itself with it and leaves the shared
        // worker token out; it shows the token only to join as a new worker.
        let mut with_token = req.node_secret.is_none();
        let reg: RegisterResponse = loop {
            let post = http.post(&url).json(&req);
            let post = if with_token { post.bearer_auth(&secret) } else { post };
            match post.send().await {
                Ok(r) if r.status().is_success() => match r.json().await {
                    Ok(reg) => break reg,
                    Err(e) => tracing::warn!(error = %e, "bad registration answer; retrying"),
                },
                // The cluster knows this id under another secret (or none: a worker from
                // before node secrets): this worker cannot prove it is that node, so it joins
                // as a new one.
                Ok(r) if r.status() == reqwest::StatusCode::FORBIDDEN && req.node_id.is_some() => {
                    let body = r.text().await.unwrap_or_default();
                    tracing::warn!(node = ?req.node_id, answer = %body, "the cluster refused this node id; registering as a new worker");
                    req.node_id = None;
                    req.node_secret = None;
                    with_token = true;
                    continue;
                }
                // The cluster forgot this node entirely: it joins again with the token.
                Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED && !with_token => {
                    tracing::info!(node = ?req.node_id, "the cluster no longer knows this node; registering with the worker token");
                    with_token = true;
                    continue;
                }
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_else(|e| format!("(cannot read the answer: {e})"));
                    return Err(WorkerError::Refused(format!("{status}: {body}")));
                }
                Ok(r) => tracing::warn!(status = %r.status(), "registration failed; retrying"),
                Err(e) => tracing::info!(cluster = %url, error = %e, "cluster not reachable yet; retrying"),
            }
            tokio::time::sleep(backoff.next(rand::random())).await;
        };
        if reg.mqtt_tls && config.tls.is_none() {
            return Err(WorkerError::Refused(
                "the cluster's MQTT port speaks TLS, and this worker has no CA to check it with (a K10 token or --cluster-ca)".into(),
            ));
        }
        // The secret first: an id without its secret could not be proved again.
        if let Some(secret) = &reg.node_secret {
            oak_store::datadir::write_private(&secret_file, secret.as_bytes()).map_err(dd)?;
        }
        oak_store::datadir::write_private(&id_file, reg.id.as_bytes()).map_err(dd)?;
        tracing::info!(node = %reg.id, name = %config.name, "registered with the cluster");
        let mqtt_host = reg.mqtt_host.clone().unwrap_or(host);
        let reg_ip = req.ip.clone();
        Ok(Self { config, runtime, reg, mqtt_host, session, reg_ip, _host_lock: host_lock, tunnel_key })
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
        if self.reg.mqtt_tls {
            // Checked at registration: a TLS broker port comes with the registration's CA.
            if let Some(tls) = &self.config.tls {
                opts.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls.clone())));
            } else {
                tracing::error!("the cluster's MQTT port speaks TLS but this worker has no CA to check it with");
                return RunEnd::Refused;
            }
        }
        opts.set_last_will(rumqttc::LastWill::new(
            node::topic_lost(&id),
            self.session.clone(),
            QoS::AtLeastOnce,
            false,
        ));
        let (client, events) = AsyncClient::new(opts, 256);

        // Probes go where the tunnel goes: the same underlay address.
        let advertise = self
            .config
            .overlay
            .as_ref()
            .and_then(|o| o.advertise)
            .or_else(|| self.reg_ip.parse().ok())
            .unwrap_or(Ipv4Addr::LOCALHOST);
        let (out_tx, out_rx) = mpsc::channel(256);
        let ldp = Ldp::start(
            LdpConfig {
                node: id.clone(),
                bind: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, self.config.probe_port),
                advertise,
                interval: self.config.probe_interval,
            },
            out_tx.clone(),
        )
        .await;
        let config = TableConfig {
            node: id.clone(),
            data_dir: self.config.data_dir.clone(),
            location: self.config.location.clone(),
            stop_grace: self.config.stop_grace,
            report_interval: Duration::from_millis(self.reg.report_interval_ms.max(100)),
            overlay: self.config.overlay.clone(),
            tunnel_key: self.tunnel_key.clone(),
            advertise,
            ldp: Some(ldp.clone()),
        };
        let (table, commands) = Table::new(config, self.runtime.clone(), out_tx);
        let routes = Routes { table: table.sender(), ldp: ldp.clone() };
        let mqtt_task = tokio::spawn(receive(events, client.clone(), routes, format!("nodes/{id}/control/")));
        let publish_task = tokio::spawn(publish(out_rx, client.clone(), id));

        let end = table.run(commands, shutdown).await;
        // No more probes or measurements (the measurer's sender goes with it).
        ldp.stop().await;
        // The table is gone and with it the sender: the publisher queues what is left, then
        // ends (unless the broker is away and the client's queue full). A clean goodbye after
        // that: the broker does not publish the last will.
        let _ = tokio::time::timeout(Duration::from_secs(5), publish_task).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), client.disconnect()).await;
        mqtt_task.abort();
        end
    }
}

/// Where control messages go: the instance table, or the latency probes and measurements.
struct Routes {
    table: mpsc::Sender<Command>,
    ldp: Ldp,
}

/// Drives the MQTT connection: subscribes to the control topics on every connection and
/// passes their messages to the table (peers and measurement requests to LDP). Reconnects
/// with backoff; ends when the broker refuses the login.
async fn receive(mut events: rumqttc::EventLoop, client: AsyncClient, routes: Routes, control: String) {
    let table = &routes.table;
    let mut backoff = Backoff::new(RETRY_BASE, RETRY_CAP);
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                let _ = client.subscribe(format!("{control}#"), QoS::AtLeastOnce).await;
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                let _ = table.send(Command::Subscribed).await;
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                match control_command(p.topic.strip_prefix(&control), &p.payload) {
                    Ok(Control::Table(c)) => {
                        let _ = table.send(c).await;
                    }
                    Ok(Control::Peers(set)) => routes.ldp.set_peers(&set),
                    Ok(Control::Measure(req)) => routes.ldp.measure(req),
                    Err(e) => tracing::warn!(topic = %p.topic, error = %e, "ignoring a control message"),
                }
            }
            Ok(_) => {}
            Err(rumqttc::ConnectionError::ConnectionRefused(
                rumqttc::ConnectReturnCode::BadUserNamePassword | rumqttc::ConnectReturnCode::NotAuthorized,
            )) => {
                tracing::warn!("the cluster refused this worker's MQTT login; registering again");
                let _ = table.send(Command::Refused).await;
                break;
            }
            Err(e) => {
                let delay = backoff.next(rand::random());
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis(), "MQTT connection lost; reconnecting");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// What a control message asks for, by where it goes.
enum Control {
    Table(Command),
    Peers(ProbePeers),
    Measure(MeasureRequest),
}

/// The command a control message (`nodes/<id>/control/<what>`) carries.
fn control_command(what: Option<&str>, payload: &[u8]) -> Result<Control, String> {
    let bad = |e: serde_json::Error| format!("malformed: {e}");
    let table = |c: Result<Command, serde_json::Error>| c.map(Control::Table).map_err(bad);
    match what {
        Some("deploy") => table(serde_json::from_slice(payload).map(|d| Command::Deploy(Box::new(d)))),
        Some("delete") => table(serde_json::from_slice(payload).map(Command::Delete)),
        Some("logs") => table(serde_json::from_slice(payload).map(Command::Logs)),
        Some("network") => table(serde_json::from_slice(payload).map(Command::Network)),
        Some("tables") => table(serde_json::from_slice(payload).map(Command::Tables)),
        Some("keys") => table(serde_json::from_slice(payload).map(Command::KeyAnswer)),
        Some("peers") => serde_json::from_slice(payload).map(Control::Peers).map_err(bad),
        Some("measure") => serde_json::from_slice(payload).map(Control::Measure).map_err(bad),
        _ => Err("unknown topic".into()),
    }
}

/// The topic and JSON body of a message to the cluster.
fn encode(node: &str, msg: &Outbound) -> Result<(String, Vec<u8>), serde_json::Error> {
    Ok(match msg {
        Outbound::Event(ev) => (node::topic_job(node), serde_json::to_vec(ev)?),
        Outbound::Report(info) => (node::topic_information(node), serde_json::to_vec(info)?),
        Outbound::Logs(reply) => (node::topic_logs(node), serde_json::to_vec(reply)?),
        Outbound::Measured(reply) => (node::topic_measured(node), serde_json::to_vec(reply)?),
        Outbound::KeyQuery(q) => (node::topic_keys(node), serde_json::to_vec(q)?),
    })
}

/// Publishes what the table sends, in order, until the table is gone.
async fn publish(mut out: mpsc::Receiver<Outbound>, client: AsyncClient, node: String) {
    while let Some(msg) = out.recv().await {
        let (topic, bytes) = match encode(&node, &msg) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a message for the cluster; dropped");
                continue;
            }
        };
        if let Err(e) = client.publish(topic, QoS::AtLeastOnce, false, bytes).await {
            tracing::warn!(error = %e, "cannot queue an MQTT message");
        }
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

    #[test]
    fn control_messages_say_what_is_wrong_with_them() {
        use super::{Command, Control, control_command};
        let ok = control_command(Some("delete"), br#"{"service_id":"s","instance_number":2}"#);
        assert!(matches!(ok, Ok(Control::Table(Command::Delete(d))) if d.instance_number == 2));
        let Err(e) = control_command(Some("delete"), br#"{"service_id":"s"}"#) else { panic!("accepted") };
        assert!(e.starts_with("malformed: ") && e.contains("instance_number"), "{e}");
        let Err(e) = control_command(Some("reboot"), b"{}") else { panic!("accepted") };
        assert_eq!(e, "unknown topic");
    }

    #[test]
    fn peers_and_measurement_requests_go_to_ldp() {
        use super::{Control, control_command};
        let peers = br#"{"peers":[{"id":"w2","addr":"10.0.0.2:50104"}]}"#;
        let Ok(Control::Peers(set)) = control_command(Some("peers"), peers) else { panic!("not peers") };
        assert_eq!(set.peers[0].addr.port(), 50104);
        let req = br#"{"request_id":"r1","targets":["192.0.2.7","2001:db8::1"]}"#;
        let Ok(Control::Measure(m)) = control_command(Some("measure"), req) else { panic!("not a request") };
        assert_eq!((m.request_id.as_str(), m.targets.len()), ("r1", 2));
        let Err(e) = control_command(Some("measure"), br#"{"targets":[]}"#) else { panic!("accepted") };
        assert!(e.contains("request_id"), "{e}");
    }

    #[test]
    fn addons_are_bounded_and_a_bad_one_is_named() {
        use super::check_addons;
        let ok: Vec<String> = ["gpu-cuda", "tpu.v4", "x_1"].map(String::from).to_vec();
        assert!(check_addons(&ok).is_ok());
        assert!(check_addons(&[]).is_ok());
        for bad in ["", "has space", "ümlaut", "a/b", &"x".repeat(65)] {
            let e = check_addons(&["fine".into(), bad.into()]).unwrap_err().to_string();
            assert!(e.starts_with("--addons: bad addon ") && e.contains(&format!("{bad:?}")), "{e}");
        }
        assert!(check_addons(&["x".repeat(64)]).is_ok());
        let many: Vec<String> = (0..33).map(|i| format!("a{i}")).collect();
        assert!(check_addons(&many).unwrap_err().to_string().contains("at most 32"));
    }

    #[test]
    fn messages_go_to_their_topics() {
        use super::{Outbound, encode};
        let ev = oak_api::node::InstanceEvent {
            service_id: oak_api::ServiceId::from("s"),
            instance_number: 1,
            status: oak_api::Status::Running,
            status_detail: "running".into(),
            exit_code: None,
            ns_ip: None,
        };
        let (topic, bytes) = encode("n1", &Outbound::Event(ev.clone())).unwrap();
        assert_eq!(topic, "nodes/n1/job");
        assert_eq!(serde_json::from_slice::<oak_api::node::InstanceEvent>(&bytes).unwrap(), ev);
        let (topic, _) = encode("n1", &Outbound::Report(Box::default())).unwrap();
        assert_eq!(topic, "nodes/n1/information");
        let reply = oak_api::ldp::MeasureReply { request_id: "r".into(), results: vec![] };
        let (topic, _) = encode("n1", &Outbound::Measured(reply)).unwrap();
        assert_eq!(topic, "nodes/n1/measured");
    }
}
