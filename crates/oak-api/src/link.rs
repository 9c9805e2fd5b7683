//! The root ↔ cluster link: a WebSocket the cluster opens to the root (NAT-friendly), carrying
//! JSON text frames.
//!
//! Level-triggered: after `Hello`, the root sends the full set of instances it wants on that
//! cluster ([`RootToCluster::Desired`]) whenever it changes, and the cluster sends its full
//! observed state ([`ClusterToRoot::Report`]) periodically and on change. Either side can
//! lose any message, or the connection, and the next full-state message repairs it.

use crate::ids::{ClusterId, ServiceId};
use crate::net::ServiceTable;
use crate::node::{LogsReply, LogsRequest};
use crate::sla::MicroserviceSpec;
use crate::status::Status;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Path of the link on the root's HTTP port.
pub const LINK_PATH: &str = "/api/cluster/link";

/// The largest message (and frame: neither side fragments) on the link, both ways. A full
/// report is about 280 bytes an instance and a desired set carries each instance's spec, so
/// the 16 MiB frame default of WebSocket libraries would cut off a cluster of some 50,000
/// instances. Only an authenticated peer gets this far.
pub const LINK_MAX_MESSAGE: usize = 256 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClusterToRoot {
    /// First message on every connection.
    Hello {
        name: String,
        #[serde(default)]
        location: Option<String>,
        /// The id the root gave this cluster before, if any.
        #[serde(default)]
        cluster_id: Option<ClusterId>,
        /// The secret the root issued with that id: proof that this is that cluster (every
        /// cluster holds the same cluster token).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cluster_secret: Option<String>,
    },
    /// The full state: the first report on every connection.
    Report(ClusterReport),
    /// What changed since the previous report on this connection.
    Delta(ReportDelta),
    Logs(LogsReply),
    /// Is this tunnel key a live worker's (of any cluster)? Asked for a worker that heard a
    /// handshake from a key it did not know.
    KeyQuery {
        key: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RootToCluster {
    Welcome {
        cluster_id: ClusterId,
        /// Issued when the cluster first joins (or first since secrets exist): kept in its
        /// store and shown in every later hello.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cluster_secret: Option<String>,
    },
    /// Every instance the root wants on this cluster; anything else must go. The first
    /// desired message of every connection.
    Desired {
        instances: Vec<DesiredInstance>,
    },
    /// What changed in the desired set since the previous desired message on this
    /// connection: instances added or changed, and instances no longer wanted.
    DesiredDelta {
        #[serde(default)]
        upsert: Vec<DesiredInstance>,
        #[serde(default)]
        remove: Vec<crate::node::InstanceRef>,
    },
    Logs(LogsRequest),
    /// The subnet of every worker the cluster reported (allocated and kept by the root).
    Subnets {
        subnets: BTreeMap<String, Ipv4Addr>,
    },
    /// The tables of every semantic address the cluster reported interest in.
    Tables {
        tables: Vec<ServiceTable>,
    },
    /// Landmark workers of the other clusters, for this cluster's workers to probe.
    Landmarks {
        peers: Vec<crate::ldp::ProbePeer>,
    },
    /// The answer to a [`ClusterToRoot::KeyQuery`].
    KeyAnswer(crate::node::KeyAnswer),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DesiredInstance {
    pub service_id: ServiceId,
    pub instance_number: u32,
    pub job_name: String,
    pub spec: MicroserviceSpec,
    /// The instance's semantic address (allocated by the root).
    #[serde(default)]
    pub instance_ip: Option<Ipv4Addr>,
    /// Where its S2S targets run and the areas it names, when its SLA has requirements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ldp: Option<crate::ldp::LdpContext>,
}

/// Free space of one kind in a cluster, for the root's scheduler: one entry per distinct
/// (architecture, runtimes, free resources) among its active workers, largest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FreeSlot {
    pub arch: String,
    pub runtimes: Vec<String>,
    pub millicpu: u64,
    pub memory_mb: u64,
    pub gpus: u32,
}

/// A number from a lower tier that may have gone wrong on the way (serde_json writes an
/// infinite or NaN float as `null`): read as 0, so one bad field costs that field, not the
/// whole message (and with it the cluster's heartbeat).
pub fn finite_or_zero<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = Option::<f64>::deserialize(d)?;
    Ok(v.filter(|v| v.is_finite()).unwrap_or(0.0))
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterAggregate {
    pub workers: u32,
    pub active_workers: u32,
    #[serde(deserialize_with = "finite_or_zero")]
    pub cpu_cores: f64,
    #[serde(deserialize_with = "finite_or_zero")]
    pub cpu_percent: f64,
    pub memory_mb: u64,
    pub memory_free_mb: u64,
    pub gpus: u32,
    pub runtimes: Vec<String>,
    pub slots: Vec<FreeSlot>,
    /// Where its active workers are, on the map and in the coordinate space.
    #[serde(default, skip_serializing_if = "crate::ldp::LdpSummary::is_empty")]
    pub ldp: crate::ldp::LdpSummary,
    /// A few of its workers that other clusters' workers probe, so that all clusters share
    /// one coordinate space.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub landmarks: Vec<crate::ldp::ProbePeer>,
    /// Addons offered by some active worker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addons: Vec<String>,
}

/// State of one instance, as the cluster sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceState {
    pub service_id: ServiceId,
    pub instance_number: u32,
    pub status: Status,
    pub status_detail: String,
    #[serde(default)]
    pub worker_id: Option<String>,
    #[serde(default)]
    pub worker_name: Option<String>,
    #[serde(default)]
    pub host_ip: Option<String>,
    #[serde(default)]
    pub cpu_percent: Option<f64>,
    #[serde(default)]
    pub memory_mb: Option<f64>,
    /// Overlay attachment: namespace address, tunnel port and location of its worker.
    #[serde(default)]
    pub ns_ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub host_port: Option<u16>,
    #[serde(default)]
    pub location: Option<String>,
    /// Its worker's network coordinate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coord: Option<crate::ldp::Coord>,
    /// Its worker's probe address (for SLA monitoring from other workers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<std::net::SocketAddrV4>,
    /// Its worker's tunnel public key (X25519, base64), when the tunnel is encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
}

/// A report relative to the previous one on the same connection: the aggregate, the
/// instances whose state changed (or whose usage changed, when usage is due), and the worker
/// ids and interests when they changed. A cluster of 20,000 instances sends 5 MB as a full
/// report; a status change as a delta is under 2 KB (with the aggregate's 16 free slots).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportDelta {
    pub aggregate: ClusterAggregate,
    #[serde(default)]
    pub instances: Vec<InstanceState>,
    #[serde(default)]
    pub workers: Option<Vec<String>>,
    #[serde(default)]
    pub interests: Option<Vec<Ipv4Addr>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterReport {
    pub aggregate: ClusterAggregate,
    pub instances: Vec<InstanceState>,
    /// Ids of every worker the cluster knows (each holds a subnet while it is known).
    #[serde(default)]
    pub workers: Vec<String>,
    /// Semantic addresses some worker of the cluster needs tables for.
    #[serde(default)]
    pub interests: Vec<Ipv4Addr>,
}

/// What changed from `prev` to `now`, as the root sends it on a connection after the first
/// full set: a cluster of 60,000 instances would otherwise get some 25 MB for each instance
/// deployed.
pub fn desired_delta(prev: &[DesiredInstance], now: &[DesiredInstance]) -> RootToCluster {
    use std::collections::{HashMap, HashSet};
    let key = |d: &DesiredInstance| (d.service_id.clone(), d.instance_number);
    let before: HashMap<_, &DesiredInstance> = prev.iter().map(|d| (key(d), d)).collect();
    let after: HashSet<_> = now.iter().map(key).collect();
    let upsert = now.iter().filter(|d| before.get(&key(d)).is_none_or(|p| *p != *d)).cloned().collect();
    let remove = prev
        .iter()
        .filter(|d| !after.contains(&key(d)))
        .map(|d| crate::node::InstanceRef { service_id: d.service_id.clone(), instance_number: d.instance_number })
        .collect();
    RootToCluster::DesiredDelta { upsert, remove }
}

impl ReportDelta {
    /// The full report this delta stands for: fields it leaves out are as the cluster last
    /// reported them (`workers`, `interests`).
    pub fn into_report(self, workers: &[String], interests: &[Ipv4Addr]) -> ClusterReport {
        ClusterReport {
            aggregate: self.aggregate,
            instances: self.instances,
            workers: self.workers.unwrap_or_else(|| workers.to_vec()),
            interests: self.interests.unwrap_or_else(|| interests.to_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_finite_aggregate_field_costs_that_field_only() {
        let agg = ClusterAggregate { cpu_cores: f64::INFINITY, workers: 2, ..Default::default() };
        let text = serde_json::to_string(&ClusterToRoot::Delta(ReportDelta { aggregate: agg, ..Default::default() }))
            .unwrap_or_default();
        assert!(text.contains("\"cpu_cores\":null"), "{text}");
        match serde_json::from_str::<ClusterToRoot>(&text) {
            Ok(ClusterToRoot::Delta(d)) => assert_eq!((d.aggregate.cpu_cores, d.aggregate.workers), (0.0, 2)),
            other => panic!("{other:?}"),
        }
    }
}
