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

/// Identifier of a worker node, kept in the worker's data dir.
pub type NodeId = String;

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

/// Static facts about a worker, sent at registration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub name: String,
    /// The id from an earlier registration, so a restarted worker is the same node.
    #[serde(default)]
    pub node_id: Option<NodeId>,
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
    /// A fresh random value per worker process; its last will carries it, so a stale will
    /// (from before a restart) is told apart.
    #[serde(default)]
    pub session: String,
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
