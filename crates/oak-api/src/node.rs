//! Messages between a cluster orchestrator and its workers: HTTP registration, then MQTT on
//! the original's topic layout (`nodes/<id>/...`) with QoS 1 and typed numbers.
//!
//! | topic | direction | payload |
//! |---|---|---|
//! | `nodes/<id>/information` | worker → cluster | [`NodeInfo`], every report interval |
//! | `nodes/<id>/job` | worker → cluster | [`InstanceEvent`], at once on every change |
//! | `nodes/<id>/logs` | worker → cluster | [`LogsReply`] |
//! | `nodes/<id>/lost` | broker → cluster | the worker's last will (its session) |
//! | `nodes/<id>/control/deploy` | cluster → worker | [`DeployCommand`] |
//! | `nodes/<id>/control/delete` | cluster → worker | [`DeleteCommand`] |
//! | `nodes/<id>/control/logs` | cluster → worker | [`LogsRequest`] |
//! | `nodes/<id>/control/network` | cluster → worker | [`crate::net::WorkerNetwork`] (its subnet) |
//! | `nodes/<id>/control/tables` | cluster → worker | [`crate::net::WorkerTables`] |

use crate::ids::ServiceId;
use crate::status::Status;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// Identifier of a worker node, kept in the worker's data dir. The cluster issues it (a
/// lowercase hyphenated UUID, [`valid_node_id`]); a worker never picks its own.
pub type NodeId = String;

/// True for a node id as a cluster issues it: a lowercase hyphenated UUID. Nothing else (in
/// particular none of the cluster's own MQTT names) can be a worker's id.
pub fn valid_node_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

/// Largest values a worker may report: beyond any machine, small enough that sums over a
/// cluster of 100,000 workers stay exact and finite.
pub const MAX_CPU_CORES: f64 = 4096.0;
pub const MAX_MEMORY_MB: u64 = 64 * 1024 * 1024;
pub const MAX_DISK_MB: u64 = 1 << 40;
pub const MAX_GPUS: u32 = 1024;
/// Percent of one core, for a whole host or an instance.
pub const MAX_CPU_PERCENT: f64 = 100.0 * MAX_CPU_CORES;
/// Most instances one worker may list in a report, and most semantic addresses it may ask for.
pub const MAX_REPORTED_INSTANCES: usize = 10_000;
pub const MAX_INTERESTS: usize = 65_536;

/// A field a worker sent that the cluster does not accept: its name and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> Result<(), FieldError> {
    Err(FieldError { field: field.into(), message: message.into() })
}

fn check_f64(field: &str, v: f64, max: f64) -> Result<(), FieldError> {
    if !v.is_finite() || !(0.0..=max).contains(&v) {
        return bad(field, format!("must be a finite number from 0 to {max} (got {v:?})"));
    }
    Ok(())
}

fn check_u64(field: &str, v: u64, max: u64) -> Result<(), FieldError> {
    if v > max {
        return bad(field, format!("must be at most {max} (got {v})"));
    }
    Ok(())
}

fn check_text(field: &str, v: &str, max: usize) -> Result<(), FieldError> {
    if v.len() > max {
        return bad(field, format!("must be at most {max} bytes (got {})", v.len()));
    }
    if v.chars().any(char::is_control) {
        return bad(field, "must not contain control characters");
    }
    Ok(())
}

/// Most addons one worker advertises.
pub const MAX_ADDONS: usize = 32;

fn check_words(field: &str, v: &[String], max_items: usize, max_len: usize) -> Result<(), FieldError> {
    if v.len() > max_items {
        return bad(field, format!("must list at most {max_items} entries (got {})", v.len()));
    }
    for (i, w) in v.iter().enumerate() {
        if w.is_empty() || w.len() > max_len || !w.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return bad(format!("{field}[{i}]"), format!("must be 1-{max_len} letters, digits, '-', '_' or '.'"));
        }
    }
    Ok(())
}

fn check_location(field: &str, v: Option<&str>) -> Result<(), FieldError> {
    let Some(v) = v else { return Ok(()) };
    let ok = v.len() <= 64
        && v.split_once(',').is_some_and(|(a, b)| {
            let (a, b) = (a.trim().parse::<f64>(), b.trim().parse::<f64>());
            matches!((a, b), (Ok(a), Ok(b)) if (-90.0..=90.0).contains(&a) && (-180.0..=180.0).contains(&b))
        });
    if !ok {
        return bad(field, format!("must be \"LAT,LONG\" in degrees (got {v:?})"));
    }
    Ok(())
}

/// The longest status detail a worker's event carries on (longer ones are cut, with a mark).
pub const MAX_STATUS_DETAIL: usize = 1024;

/// Cuts `detail` to [`MAX_STATUS_DETAIL`] bytes at a character boundary.
pub fn truncate_detail(detail: &mut String) {
    if detail.len() > MAX_STATUS_DETAIL {
        let mut end = MAX_STATUS_DETAIL - 3;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
        detail.push('…');
    }
}

impl RegisterRequest {
    /// Checks every field against the bounds above; the first bad one is named.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.name.is_empty() {
            return bad("name", "must not be empty");
        }
        check_text("name", &self.name, 64)?;
        if let Some(id) = &self.node_id
            && !valid_node_id(id)
        {
            return bad("node_id", "must be an id this cluster issued (a lowercase UUID)");
        }
        if let Some(s) = &self.node_secret
            && (s.is_empty() || s.len() > 128)
        {
            return bad("node_secret", "must be 1-128 bytes");
        }
        if self.ip.parse::<std::net::IpAddr>().is_err() {
            return bad(
                "ip",
                format!("must be an IP address (got {:?})", self.ip.chars().take(64).collect::<String>()),
            );
        }
        check_words("arch", std::slice::from_ref(&self.arch), 1, 16)?;
        check_words("runtimes", &self.runtimes, 8, 32)?;
        if self.cpu_cores <= 0.0 {
            return bad("cpu_cores", format!("must be more than 0 (got {})", self.cpu_cores));
        }
        check_f64("cpu_cores", self.cpu_cores, MAX_CPU_CORES)?;
        check_u64("memory_mb", self.memory_mb, MAX_MEMORY_MB)?;
        check_u64("gpus", u64::from(self.gpus), u64::from(MAX_GPUS))?;
        check_location("location", self.location.as_deref())?;
        check_words("addons", &self.addons, MAX_ADDONS, 64)?;
        if let Some(k) = &self.tunnel_key
            && !valid_tunnel_key(k)
        {
            return bad("tunnel_key", "must be an X25519 public key: 32 bytes in standard base64 (44 characters)");
        }
        check_text("session", &self.session, 128)
    }
}

impl NodeInfo {
    /// Checks every number and list a worker reports; the first bad field is named.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_f64("cpu_percent", self.cpu_percent, MAX_CPU_PERCENT)?;
        check_f64("cpu_cores", self.cpu_cores, MAX_CPU_CORES)?;
        check_u64("memory_mb", self.memory_mb, MAX_MEMORY_MB)?;
        check_u64("memory_available_mb", self.memory_available_mb, MAX_MEMORY_MB)?;
        check_u64("disk_free_mb", self.disk_free_mb, MAX_DISK_MB)?;
        check_words("arch", std::slice::from_ref(&self.arch), 1, 16)?;
        check_words("runtimes", &self.runtimes, 8, 32)?;
        check_u64("gpus", u64::from(self.gpus), u64::from(MAX_GPUS))?;
        check_location("location", self.location.as_deref())?;
        if self.instances.len() > MAX_REPORTED_INSTANCES {
            return bad("instances", format!("at most {MAX_REPORTED_INSTANCES} (got {})", self.instances.len()));
        }
        // Every report of every worker passes here: field names are made only for a bad one.
        let ok = |v: f64, max: f64| v.is_finite() && (0.0..=max).contains(&v);
        for (i, u) in self.instances.iter().enumerate() {
            if !ok(u.cpu_percent, MAX_CPU_PERCENT) {
                check_f64(&format!("instances[{i}].cpu_percent"), u.cpu_percent, MAX_CPU_PERCENT)?;
            }
            if !ok(u.memory_mb, MAX_MEMORY_MB as f64) {
                check_f64(&format!("instances[{i}].memory_mb"), u.memory_mb, MAX_MEMORY_MB as f64)?;
            }
        }
        if self.interests.len() > MAX_INTERESTS {
            return bad("interests", format!("at most {MAX_INTERESTS} (got {})", self.interests.len()));
        }
        if let Some(c) = &self.coord
            && !c.is_valid()
        {
            return bad(
                "coord",
                format!("must be finite, within {} ms, height and error not negative", crate::ldp::MAX_COORD_MS),
            );
        }
        if self.rtts.len() > crate::ldp::MAX_REPORTED_RTTS {
            return bad("rtts", format!("at most {} (got {})", crate::ldp::MAX_REPORTED_RTTS, self.rtts.len()));
        }
        for (i, r) in self.rtts.iter().enumerate() {
            if r.peer.is_empty() || r.peer.len() > 64 || r.peer.chars().any(char::is_control) {
                return bad(format!("rtts[{i}].peer"), "must be 1-64 printable bytes");
            }
            if !(r.ms.is_finite() && r.ms > 0.0 && r.ms <= crate::ldp::MAX_COORD_MS) {
                check_f64(&format!("rtts[{i}].ms"), r.ms, crate::ldp::MAX_COORD_MS)?;
                return bad(format!("rtts[{i}].ms"), "must be more than 0");
            }
        }
        Ok(())
    }
}

pub fn topic_information(node: &str) -> String {
    format!("nodes/{node}/information")
}
pub fn topic_job(node: &str) -> String {
    format!("nodes/{node}/job")
}
pub fn topic_logs(node: &str) -> String {
    format!("nodes/{node}/logs")
}
/// The worker's last will: the broker publishes it when the worker's connection dies without
/// a goodbye (crash, kill, network loss). Payload: the session of the registration.
pub fn topic_lost(node: &str) -> String {
    format!("nodes/{node}/lost")
}
pub fn topic_deploy(node: &str) -> String {
    format!("nodes/{node}/control/deploy")
}
pub fn topic_delete(node: &str) -> String {
    format!("nodes/{node}/control/delete")
}
pub fn topic_logs_request(node: &str) -> String {
    format!("nodes/{node}/control/logs")
}
pub fn topic_network(node: &str) -> String {
    format!("nodes/{node}/control/network")
}
pub fn topic_tables(node: &str) -> String {
    format!("nodes/{node}/control/tables")
}
/// Cluster → worker: the peers to probe ([`crate::ldp::ProbePeers`]).
pub fn topic_peers(node: &str) -> String {
    format!("nodes/{node}/control/peers")
}
/// Cluster → worker: addresses to measure ([`crate::ldp::MeasureRequest`]).
pub fn topic_measure(node: &str) -> String {
    format!("nodes/{node}/control/measure")
}
/// Worker → cluster: measurements ([`crate::ldp::MeasureReply`]).
pub fn topic_measured(node: &str) -> String {
    format!("nodes/{node}/measured")
}

/// Worker → cluster: is this tunnel key a live worker's? Asked when a handshake comes from a
/// key no table named ([`KeyQuery`]).
pub fn topic_keys(node: &str) -> String {
    format!("nodes/{node}/keys")
}
/// Cluster → worker: the answer ([`KeyAnswer`]).
pub fn topic_key_answer(node: &str) -> String {
    format!("nodes/{node}/control/keys")
}

/// A worker asks whether `key` (a tunnel public key) belongs to a live worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyQuery {
    pub key: String,
}

/// The cluster's answer: `known` when some live worker (of this cluster, or of another one
/// the root knows) registered `key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAnswer {
    pub key: String,
    pub known: bool,
}

/// Static facts about a worker, sent at registration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub name: String,
    /// The id from an earlier registration, so a restarted worker is the same node. A known
    /// id is given back only with its `node_secret`.
    #[serde(default)]
    pub node_id: Option<NodeId>,
    /// The secret the cluster issued with `node_id` (kept in the worker's data dir): proof
    /// that the caller is that worker, and not another holder of the shared worker token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_secret: Option<String>,
    /// Address other workers and the cluster see.
    pub ip: String,
    /// OCI architecture name (amd64, arm64).
    pub arch: String,
    pub runtimes: Vec<String>,
    pub cpu_cores: f64,
    pub memory_mb: u64,
    #[serde(default)]
    pub gpus: u32,
    /// `"lat,long"`, if known.
    #[serde(default)]
    pub location: Option<String>,
    /// Addons this worker offers (`oak worker --addons`), for `addons` constraints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addons: Vec<String>,
    /// A fresh random value per worker process; its last will carries it, so a stale will
    /// (from before a restart) is told apart.
    #[serde(default)]
    pub session: String,
    /// The worker's tunnel public key (X25519, 32 bytes, standard base64), when its tunnel is
    /// encrypted. Other workers get it with the tables, so no key is configured by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_key: Option<String>,
}

/// The cluster's answer: who the worker is and how to reach the broker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub id: NodeId,
    /// Broker host, when it is not the cluster's own address (an external broker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt_host: Option<String>,
    pub mqtt_port: u16,
    /// MQTT credentials for this worker only.
    pub mqtt_username: String,
    pub mqtt_password: String,
    pub report_interval_ms: u64,
    /// Issued with a new id: the worker keeps it (mode 0600) and presents it to register as
    /// the same node again. `None` when the worker proved an id it already holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_secret: Option<String>,
    /// Whether the broker port speaks MQTT over TLS (the cluster's guard), with the same CA
    /// as the registration.
    #[serde(default)]
    pub mqtt_tls: bool,
}

/// One instance as a worker sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceRef {
    pub service_id: ServiceId,
    pub instance_number: u32,
}

/// Usage and state of an instance a worker runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceUsage {
    pub service_id: ServiceId,
    pub instance_number: u32,
    pub status: Status,
    /// Percent of one core, averaged over the last interval.
    pub cpu_percent: f64,
    pub memory_mb: f64,
    /// Its address in the worker's subnet, once attached to the overlay.
    #[serde(default)]
    pub ns_ip: Option<Ipv4Addr>,
}

/// Periodic report (`nodes/<id>/information`); its arrival is the heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub cpu_percent: f64,
    pub cpu_cores: f64,
    pub memory_mb: u64,
    pub memory_available_mb: u64,
    pub disk_free_mb: u64,
    pub arch: String,
    pub runtimes: Vec<String>,
    pub gpus: u32,
    #[serde(default)]
    pub location: Option<String>,
    /// Every instance the worker holds, whatever its state.
    pub instances: Vec<InstanceUsage>,
    /// True when the worker runs the overlay: it takes instances only once it has a subnet.
    #[serde(default)]
    pub overlay: bool,
    #[serde(default)]
    pub subnet: Option<Ipv4Addr>,
    /// Where other workers send tunnel traffic for this one.
    #[serde(default)]
    pub tunnel: Option<std::net::SocketAddrV4>,
    /// Semantic addresses the worker needs tables for (level-triggered; see [`crate::net`]).
    #[serde(default)]
    pub interests: Vec<Ipv4Addr>,
    /// [`crate::net::digest`] of the tables the worker holds.
    #[serde(default)]
    pub tables_digest: Option<u64>,
    /// Where other workers send latency probes to this one (`crate::ldp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<std::net::SocketAddrV4>,
    /// The worker's network coordinate, once it has measured some peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coord: Option<crate::ldp::Coord>,
    /// Recent filtered RTTs to its peers (at most [`crate::ldp::MAX_REPORTED_RTTS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rtts: Vec<crate::ldp::PeerRtt>,
}

/// A state change of an instance (`nodes/<id>/job`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceEvent {
    pub service_id: ServiceId,
    pub instance_number: u32,
    pub status: Status,
    pub status_detail: String,
    #[serde(default)]
    pub exit_code: Option<u32>,
    #[serde(default)]
    pub ns_ip: Option<Ipv4Addr>,
}

/// Run an instance (`nodes/<id>/control/deploy`): the [`crate::link::DesiredInstance`] the
/// root sent, passed on as it is. Idempotent: a worker that already holds the instance
/// ignores it.
pub type DeployCommand = crate::link::DesiredInstance;

/// Stop and remove an instance (`nodes/<id>/control/delete`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeleteCommand {
    pub service_id: ServiceId,
    pub instance_number: u32,
}

/// Ask for an instance's log (`nodes/<id>/control/logs`, and root → cluster).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogsRequest {
    pub request_id: String,
    pub service_id: ServiceId,
    pub instance_number: u32,
    /// Return bytes from this offset on (for following); `None`: the last `max_bytes`.
    #[serde(default)]
    pub from_offset: Option<u64>,
    pub max_bytes: u64,
}

/// The answer to a [`LogsRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogsReply {
    pub request_id: String,
    /// Offset of the first byte of `text` in the log.
    pub offset: u64,
    /// Offset after the last byte (where to continue).
    pub next_offset: u64,
    pub text: String,
    #[serde(default)]
    pub error: Option<String>,
}

impl LogsReply {
    /// An answer that carries only why there is no log.
    pub fn failed(request_id: String, error: String) -> Self {
        Self { request_id, offset: 0, next_offset: 0, text: String::new(), error: Some(error) }
    }
}

/// True when `key` is 32 bytes in standard base64 with padding (44 characters), the form
/// WireGuard tools print.
pub fn valid_tunnel_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 44
        && b[43] == b'='
        && b[..43].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
        // 32 bytes leave 4 spare bits in the 43rd character: they must be zero.
        && b"AEIMQUYcgkosw048".contains(&b[42])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg() -> RegisterRequest {
        RegisterRequest {
            name: "w".into(),
            ip: "10.0.0.1".into(),
            arch: "amd64".into(),
            runtimes: vec!["container".into()],
            cpu_cores: 4.0,
            memory_mb: 8192,
            ..Default::default()
        }
    }

    #[test]
    fn worker_numbers_are_bounded_and_named() {
        assert_eq!(reg().validate(), Ok(()));
        for (r, field) in [
            (RegisterRequest { cpu_cores: 1.7e308, ..reg() }, "cpu_cores"),
            (RegisterRequest { cpu_cores: f64::NAN, ..reg() }, "cpu_cores"),
            (RegisterRequest { memory_mb: u64::MAX, ..reg() }, "memory_mb"),
            (RegisterRequest { node_id: Some("oak-cluster".into()), ..reg() }, "node_id"),
            (RegisterRequest { name: "a\nb".into(), ..reg() }, "name"),
            (RegisterRequest { location: Some("0,181".into()), ..reg() }, "location"),
            (RegisterRequest { tunnel_key: Some("short".into()), ..reg() }, "tunnel_key"),
            // 44 characters, but the last data character carries bits beyond 32 bytes.
            (RegisterRequest { tunnel_key: Some(format!("{}B=", "A".repeat(42))), ..reg() }, "tunnel_key"),
        ] {
            assert_eq!(r.validate().map_err(|e| e.field), Err(field.to_owned()));
        }
        let key = Some(format!("{}A=", "A".repeat(42)));
        assert_eq!(RegisterRequest { tunnel_key: key, ..reg() }.validate().map_err(|e| e.field), Ok(()));
        let info = NodeInfo { cpu_percent: f64::INFINITY, ..Default::default() };
        assert_eq!(info.validate().map_err(|e| e.field), Err("cpu_percent".to_owned()));
        let usage = |memory_mb| InstanceUsage {
            service_id: ServiceId::from("s"),
            instance_number: 0,
            status: Status::Running,
            cpu_percent: 1.0,
            memory_mb,
            ns_ip: None,
        };
        let info = NodeInfo { arch: "amd64".into(), instances: vec![usage(1.0), usage(-1.0)], ..Default::default() };
        assert_eq!(info.validate().map_err(|e| e.field), Err("instances[1].memory_mb".to_owned()));
        let mut d = "é".repeat(2000);
        truncate_detail(&mut d);
        assert!(d.len() <= MAX_STATUS_DETAIL && d.ends_with('…'));
    }

    #[test]
    fn node_ids_are_uuids_only() {
        assert!(valid_node_id("3002c3d0-e185-4f82-84f7-3b401604caf5"));
        for bad in ["oak-cluster", "3002C3D0-E185-4F82-84F7-3B401604CAF5", "3002c3d0e1854f8284f73b401604caf5", ""] {
            assert!(!valid_node_id(bad), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn validation_never_panics(cores in proptest::num::f64::ANY, mem in proptest::num::u64::ANY, s in ".{0,80}") {
            let r = RegisterRequest { cpu_cores: cores, memory_mb: mem, name: s.clone(), location: Some(s.clone()), ..reg() };
            let _ = r.validate();
            let mut d = s;
            truncate_detail(&mut d);
        }
    }
}
