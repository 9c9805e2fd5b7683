//! Latency and distance-aware placement (LDP): the wire types, and the SLA's placement
//! requirements in typed form.
//!
//! Workers keep **network coordinates** ([`Coord`]): a point in a 2-D Euclidean space plus a
//! height (the access link), in milliseconds, such that the distance between two workers'
//! coordinates predicts their round-trip time (Vivaldi, with the "Network Coordinates in the
//! Wild" filters; `oak-ldp`). There is one space for the whole system: workers also probe a
//! few workers of other clusters. Clusters summarise their workers' coordinates and
//! locations ([`LdpSummary`]) so that the root can choose clusters.
//!
//! A service's SLA states [`Requirement`]s: within KM km of a point (S2U geo), within MS ms
//! of an operator-defined area or of user addresses (S2U latency), within MS ms or KM km of a
//! running instance of another service (S2S, `connectivity`). [`Requirement::rigidness`]
//! 1 makes one a hard filter; below 1 it is a preference weighted by its rigidness.

use crate::net::parse_location;
use crate::sla::MicroserviceSpec;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddrV4};

/// Largest coordinate component and height accepted from a worker, in ms: a minute.
pub const MAX_COORD_MS: f64 = 60_000.0;
/// Most RTT samples one worker report carries.
pub const MAX_REPORTED_RTTS: usize = 64;
/// Most peers a worker is told to probe.
pub const MAX_PEERS: usize = 32;
/// Most user addresses one measurement request names.
pub const MAX_MEASURE_TARGETS: usize = 16;
/// Most circles in a cluster's summary (of each kind).
pub const MAX_SUMMARY_CIRCLES: usize = 16;
/// Default `convergence_time`, in seconds, when the SLA gives none.
pub const DEFAULT_CONVERGENCE_S: f64 = 30.0;

/// A network coordinate: Euclidean part `(x, y)`, height `h` (the access link, ≥ 0) and the
/// node's own error estimate `error` (relative, 0 = certain, 1.5 = knows nothing). Units: ms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Coord {
    pub x: f64,
    pub y: f64,
    pub h: f64,
    #[serde(default)]
    pub error: f64,
}

impl Coord {
    pub const fn new(x: f64, y: f64, h: f64, error: f64) -> Self {
        Self { x, y, h, error }
    }

    /// Predicted round-trip time to `o`, in ms: the Euclidean distance plus both heights.
    pub fn rtt(&self, o: &Coord) -> f64 {
        ((self.x - o.x).powi(2) + (self.y - o.y).powi(2)).sqrt() + self.h + o.h
    }

    /// Finite, within [`MAX_COORD_MS`], height and error not negative.
    pub fn is_valid(&self) -> bool {
        [self.x, self.y, self.h, self.error].iter().all(|v| v.is_finite() && v.abs() <= MAX_COORD_MS)
            && self.h >= 0.0
            && self.error >= 0.0
    }
}

/// A recent RTT measurement a worker reports: to a peer worker (its node id) or to a user
/// address (`user:ADDR`). `ms` is the filtered value (a low percentile of recent samples).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerRtt {
    pub peer: String,
    pub ms: f64,
}

/// One worker to probe: its node id and probe address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProbePeer {
    pub id: String,
    pub addr: SocketAddrV4,
}

/// Cluster → worker (`nodes/<id>/control/peers`): the peers to probe; replaces the last set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbePeers {
    pub peers: Vec<ProbePeer>,
}

/// Cluster → worker (`nodes/<id>/control/measure`): measure the RTT to these addresses
/// (ICMP echo, else a TCP connect) and answer on `nodes/<id>/measured`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeasureRequest {
    pub request_id: String,
    pub targets: Vec<IpAddr>,
}

/// Worker → cluster (`nodes/<id>/measured`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeasureReply {
    pub request_id: String,
    pub results: Vec<Measured>,
}

/// The RTT to one address (`None`: no answer), and how it was measured (`icmp`, `tcp`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub addr: IpAddr,
    pub ms: Option<f64>,
    #[serde(default)]
    pub how: String,
}

/// A disc on the Earth: centre and radius.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GeoCircle {
    pub lat: f64,
    pub lon: f64,
    pub radius_km: f64,
}

/// A ball in the coordinate space: every worker it stands for is within `radius_ms` of
/// `coord` (heights included in `coord.h`, the smallest height of those workers).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CoordCircle {
    pub coord: Coord,
    pub radius_ms: f64,
}

/// What a cluster tells the root about where its active workers are: a few discs covering
/// their locations, and a few balls covering their coordinates. Empty when unknown.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LdpSummary {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub area: Vec<GeoCircle>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub space: Vec<CoordCircle>,
}

/// Whether a worker can be asked to measure `addr`: not unspecified, loopback (it would
/// measure itself), link-local, multicast or broadcast. Private ranges are fine: edge users
/// often are on private networks.
pub fn measurable(addr: IpAddr) -> bool {
    match addr.to_canonical() {
        IpAddr::V4(a) => {
            !(a.is_unspecified() || a.is_loopback() || a.is_link_local() || a.is_multicast() || a.is_broadcast())
        }
        IpAddr::V6(a) => {
            !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || (a.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

impl LdpSummary {
    pub fn is_empty(&self) -> bool {
        self.area.is_empty() && self.space.is_empty()
    }
}

/// A named area, as the root's operator defines it (`oak root --areas FILE`): a disc on the
/// map, user addresses that stand for it, or both.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AreaDef {
    /// `"lat,long"` of its centre.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub radius_km: Option<f64>,
    /// Addresses of users in the area: latency to the area is latency to them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<IpAddr>,
}

impl AreaDef {
    /// What is wrong with it, if anything.
    pub fn problem(&self) -> Option<String> {
        if self.location.is_none() && self.users.is_empty() {
            return Some("needs a location (with radius_km) or users".into());
        }
        if let Some(l) = &self.location
            && parse_location(l).is_none()
        {
            return Some(format!("location must be \"lat,long\" in degrees, got {l:?}"));
        }
        match self.radius_km {
            Some(r) if !(r.is_finite() && r >= 0.0) => Some(format!("radius_km must be a distance, got {r}")),
            None if self.location.is_some() => Some("a location needs radius_km".into()),
            _ if self.users.len() > MAX_MEASURE_TARGETS => {
                Some(format!("at most {MAX_MEASURE_TARGETS} users, got {}", self.users.len()))
            }
            _ => None,
        }
    }
}

/// Where a running instance of an S2S target is: its worker, that worker's coordinate and
/// location.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetPoint {
    pub worker: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coord: Option<Coord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Its worker's probe address: the worker of a dependent instance measures it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<SocketAddrV4>,
}

/// What the root adds to a desired instance whose SLA has requirements: where the S2S targets
/// run (by target name as the SLA gives it) and the named areas it uses.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LdpContext {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub targets: BTreeMap<String, Vec<TargetPoint>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub areas: BTreeMap<String, AreaDef>,
}

impl LdpContext {
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty() && self.areas.is_empty()
    }
}

/// What a requirement asks for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Need {
    /// S2U geo: within `km` of a point.
    Geo { lat: f64, lon: f64, km: f64 },
    /// S2U latency to a named area.
    Area { area: String, ms: f64 },
    /// S2U latency to user addresses (each of them).
    Users { users: Vec<IpAddr>, ms: f64 },
    /// S2S latency to some running instance of `target` (a service name in the same
    /// application, or a service id).
    ServiceLatency { target: String, ms: f64 },
    /// S2S distance to some running instance of `target`.
    ServiceGeo { target: String, km: f64 },
}

/// A placement requirement of a service, from its `constraints` and `connectivity`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Requirement {
    pub need: Need,
    /// 1 (the default): a hard filter. Below 1: a preference of that weight, kept when some
    /// candidate can meet it, relaxed otherwise.
    pub rigidness: f64,
    /// Seconds a violation must last before it is reported (and, with the `migrate`
    /// strategy, before the instance moves).
    pub convergence_time: f64,
    /// JSON path of the constraint in the service, for messages (`constraints[1]`).
    pub field: String,
}

impl Requirement {
    pub fn is_hard(&self) -> bool {
        self.rigidness >= 1.0
    }

    /// The S2S target this requirement names, if any.
    pub fn target(&self) -> Option<&str> {
        match &self.need {
            Need::ServiceLatency { target, .. } | Need::ServiceGeo { target, .. } => Some(target),
            _ => None,
        }
    }
}

impl std::fmt::Display for Need {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Need::Geo { lat, lon, km } => write!(f, "within {km} km of {lat},{lon}"),
            Need::Area { area, ms } => write!(f, "within {ms} ms of area {area}"),
            Need::Users { users, ms } => {
                let u: Vec<String> = users.iter().map(ToString::to_string).collect();
                write!(f, "within {ms} ms of users {}", u.join(", "))
            }
            Need::ServiceLatency { target, ms } => write!(f, "within {ms} ms of service {target}"),
            Need::ServiceGeo { target, km } => write!(f, "within {km} km of service {target}"),
        }
    }
}

fn num(o: &serde_json::Map<String, Value>, k: &str) -> Option<f64> {
    o.get(k).and_then(Value::as_f64)
}

fn soft(o: &serde_json::Map<String, Value>) -> (f64, f64) {
    let rigidness = num(o, "rigidness").map(|r| r.clamp(0.0, 1.0)).unwrap_or(1.0);
    let convergence = num(o, "convergence_time").filter(|c| *c >= 0.0).unwrap_or(DEFAULT_CONVERGENCE_S);
    (rigidness, convergence)
}

/// How a service reacts to a violation that lasted its `convergence_time`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationStrategy {
    /// Report it (the instance's status detail and an event), nothing moves.
    #[default]
    Report,
    /// Place the instance again where the requirement holds; the new one runs before the old
    /// one is removed.
    Migrate,
}

impl MicroserviceSpec {
    /// The latency and distance requirements of this service, in SLA order (constraints,
    /// then connectivity). The descriptor was validated, so malformed entries cannot occur;
    /// any that do are skipped.
    pub fn requirements(&self) -> Vec<Requirement> {
        let mut out = Vec::new();
        for (i, c) in self.constraints.iter().enumerate() {
            let f = &c.fields;
            let (rigidness, convergence_time) = soft(f);
            let field = format!("constraints[{i}]");
            let need = match c.kind.as_str() {
                "geo" => {
                    let Some((lat, lon)) = f.get("location").and_then(Value::as_str).and_then(parse_location) else {
                        continue;
                    };
                    Need::Geo { lat, lon, km: num(f, "threshold").unwrap_or(0.0) }
                }
                "latency" => {
                    let ms = num(f, "threshold").unwrap_or(0.0);
                    if let Some(users) = f.get("users").and_then(Value::as_array) {
                        let users = users
                            .iter()
                            .filter_map(|u| u.as_str()?.parse::<IpAddr>().ok())
                            .map(|u| u.to_canonical())
                            .collect();
                        Need::Users { users, ms }
                    } else if let Some(area) = f.get("area").and_then(Value::as_str) {
                        Need::Area { area: area.to_owned(), ms }
                    } else {
                        continue;
                    }
                }
                _ => continue,
            };
            out.push(Requirement { need, rigidness, convergence_time, field });
        }
        for (i, c) in self.connectivity.iter().enumerate() {
            for (j, cc) in c.con_constraints.iter().enumerate() {
                let Some(o) = cc.as_object() else { continue };
                let (rigidness, convergence_time) = soft(o);
                let field = format!("connectivity[{i}].con_constraints[{j}]");
                let target = c.target_microservice_id.clone();
                let threshold = num(o, "threshold").unwrap_or(0.0);
                let need = match o.get("type").and_then(Value::as_str) {
                    Some("latency") => Need::ServiceLatency { target, ms: threshold },
                    Some("geo") => Need::ServiceGeo { target, km: threshold },
                    _ => continue,
                };
                out.push(Requirement { need, rigidness, convergence_time, field });
            }
        }
        out
    }

    /// Clusters a `clusters` constraint allows (by name or id); empty: any. Several
    /// `clusters` constraints must all hold, so their intersection counts.
    pub fn allowed_clusters(&self) -> Option<Vec<String>> {
        let mut allowed: Option<Vec<String>> = None;
        for c in self.constraints.iter().filter(|c| c.kind == "clusters") {
            let list: Vec<String> = c
                .fields
                .get("allowed")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            allowed = Some(match allowed {
                None => list,
                Some(prev) => prev.into_iter().filter(|p| list.contains(p)).collect(),
            });
        }
        allowed
    }

    /// Addons a worker must advertise (`--addons`), from every `addons` constraint.
    pub fn addons_needed(&self) -> Vec<String> {
        let mut needs: Vec<String> = self
            .constraints
            .iter()
            .filter(|c| c.kind == "addons")
            .filter_map(|c| c.fields.get("needs").and_then(Value::as_array))
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        needs.sort();
        needs.dedup();
        needs
    }

    /// `sla_violation_strategy` (`report`, the default, or `migrate`).
    pub fn violation_strategy(&self) -> ViolationStrategy {
        match self.extra.get("sla_violation_strategy").and_then(Value::as_str) {
            Some("migrate") => ViolationStrategy::Migrate,
            _ => ViolationStrategy::Report,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinates_predict_rtt_with_heights() {
        let a = Coord::new(0.0, 0.0, 1.0, 0.1);
        let b = Coord::new(3.0, 4.0, 2.0, 0.1);
        assert_eq!(a.rtt(&b), 8.0);
        assert!(a.is_valid());
        assert!(!Coord::new(f64::NAN, 0.0, 0.0, 0.0).is_valid());
        assert!(!Coord::new(0.0, 0.0, -1.0, 0.0).is_valid());
        assert!(!Coord::new(1e9, 0.0, 0.0, 0.0).is_valid());
    }

    #[test]
    fn areas_say_what_is_missing() {
        assert!(AreaDef::default().problem().is_some());
        let a = AreaDef { location: Some("48.1,11.5".into()), radius_km: Some(30.0), users: vec![] };
        assert_eq!(a.problem(), None);
        let a = AreaDef { location: Some("48.1,11.5".into()), radius_km: None, users: vec![] };
        assert!(a.problem().unwrap().contains("radius_km"));
        let a = AreaDef { users: vec!["192.0.2.1".parse().unwrap()], ..Default::default() };
        assert_eq!(a.problem(), None);
    }
}
