//! The SLA descriptor, version 2.0 (oakestra-core.md §3), and its validation.
//!
//! Validation walks the raw JSON first and collects *every* problem with the path of the field
//! (`applications[0].microservices[1].port`), so a user fixes a descriptor in one round trip.
//! Only a document without violations is turned into the typed [`Sla`]. Unknown fields are
//! kept (in `extra`) and returned verbatim, as the original does.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The only descriptor version accepted.
pub const SLA_VERSION: &str = "v2.0";

/// Service IPs (round-robin, closest) and Instance IPs live here (oakestra-net.md §2).
pub const SERVICE_SUBNET_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 30, 0, 0), 16);
/// The IPv6 semantic subnet.
pub const SERVICE_SUBNET_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfdff, 0, 0, 0, 0, 0, 0, 0), 16);

/// Constraint types a descriptor may name.
pub const CONSTRAINT_TYPES: [&str; 5] = ["direct", "latency", "geo", "addons", "clusters"];

/// Most instances one service may ask for, on every path (SLA, PUT, scaling).
pub const MAX_REPLICAS: u32 = 10_000;

// Bounds on the text of a descriptor. A service's spec goes to its cluster and its workers in
// every desired set, so no field may carry a payload near the body limit; none of these is
// near what a real descriptor needs. Lengths are in bytes (UTF-8).

/// `code`: an image reference (registries cap them near 255) or kernel URLs.
pub const MAX_CODE_BYTES: usize = 1024;
/// Entries of `cmd`, and bytes in one.
pub const MAX_CMD_ENTRIES: usize = 256;
pub const MAX_CMD_ENTRY_BYTES: usize = 4096;
/// Entries of `environment`, bytes in one, and bytes in all of them.
pub const MAX_ENV_ENTRIES: usize = 512;
pub const MAX_ENV_ENTRY_BYTES: usize = 32 * 1024;
pub const MAX_ENV_TOTAL_BYTES: usize = 256 * 1024;
/// `application_desc`.
pub const MAX_DESC_BYTES: usize = 4096;
/// Entries of `arch`, and bytes in one of them or in `platform`.
pub const MAX_ARCH_ENTRIES: usize = 16;
pub const MAX_ARCH_BYTES: usize = 64;
/// Any other single value: ids, versions, constraint types, areas, addresses.
pub const MAX_TEXT_BYTES: usize = 1024;
/// Values that hold a list or a path: `port`, the `direct` targets, volume fields.
pub const MAX_LIST_BYTES: usize = 4096;
/// Entries of any other array in a service or descriptor (`args`, `constraints`, ...).
pub const MAX_LIST_ENTRIES: usize = 256;
/// Unknown fields of one object (kept and returned verbatim), serialized as JSON.
pub const MAX_EXTRA_BYTES: usize = 16 * 1024;

/// One problem in a descriptor: which field, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Violation {
    /// JSON path of the field, e.g. `applications[0].microservices[1].port`.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.field, self.message) }
    }
}

/// A descriptor that failed validation. Never empty.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.violations))]
pub struct SlaError {
    pub violations: Vec<Violation>,
}

fn render(v: &[Violation]) -> String {
    let mut out = String::from("invalid SLA: ");
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        out.push_str(&x.to_string());
    }
    out
}

/// A whole descriptor: one or more applications, each with its services.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sla {
    pub sla_version: String,
    #[serde(rename = "customerID")]
    pub customer_id: String,
    pub applications: Vec<ApplicationSpec>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One application of a descriptor. `applicationID` is not part of the spec: it is assigned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApplicationSpec {
    pub application_name: String,
    pub application_namespace: String,
    #[serde(default)]
    pub application_desc: String,
    pub microservices: Vec<MicroserviceSpec>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One service ("microservice", "job") of an application. `microserviceID` is assigned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MicroserviceSpec {
    pub microservice_name: String,
    pub microservice_namespace: String,
    /// `container`, `unikernel`, or the name of a containerd runtime on the workers.
    pub virtualization: String,
    /// Image reference (containers) or kernel URLs (unikernels).
    pub code: String,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub environment: Vec<String>,
    /// MiB.
    #[serde(default, deserialize_with = "de_count")]
    pub memory: u64,
    /// CPU cores; fractions are allowed.
    #[serde(default)]
    pub vcpus: f64,
    #[serde(default, deserialize_with = "de_count")]
    pub vgpus: u64,
    #[serde(default, deserialize_with = "de_count")]
    pub vtpus: u64,
    #[serde(default, deserialize_with = "de_count")]
    pub bandwidth_in: u64,
    #[serde(default, deserialize_with = "de_count")]
    pub bandwidth_out: u64,
    /// MiB.
    #[serde(default, deserialize_with = "de_count")]
    pub storage: u64,
    /// `[host:]container[/tcp|udp]`, several joined by `;`. See [`parse_ports`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    #[serde(default)]
    pub one_shot: bool,
    /// Desired number of instances (an extension of the original, which ignores it). When
    /// set, the root keeps that many; each deploy call still adds one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Addresses>,
    #[serde(default)]
    pub constraints: Vec<Constraint>,
    #[serde(default)]
    pub connectivity: Vec<Connectivity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arch: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Which tier a `direct` constraint field addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectTier {
    /// `"cluster": "c1;c2"`, read by the root.
    Cluster,
    /// `"node": "w1;w2"`, read by a cluster.
    Node,
}

impl MicroserviceSpec {
    /// The names a `direct` constraint allows at `tier` (empty: any). Lists are split on `;`.
    pub fn direct_targets(&self, tier: DirectTier) -> Vec<String> {
        let field = match tier {
            DirectTier::Cluster => "cluster",
            DirectTier::Node => "node",
        };
        self.constraints
            .iter()
            .filter(|c| c.kind == "direct")
            .filter_map(|c| c.fields.get(field).and_then(Value::as_str))
            .flat_map(|s| s.split(';'))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The CPU asked for, in thousandths of a core.
    pub fn millicpu(&self) -> u64 {
        (self.vcpus * 1000.0).round() as u64
    }

    /// The port mappings; the descriptor was validated, so this cannot fail on a parsed spec.
    pub fn ports(&self) -> Vec<PortMapping> {
        self.port.as_deref().and_then(|p| parse_ports(p).ok()).unwrap_or_default()
    }
}

/// Semantic addresses asked for in the descriptor.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Addresses {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rr_ip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rr_ip_v6: Option<Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closest_ip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closest_ip_v6: Option<Ipv6Addr>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A placement constraint. Only the fields of its `type` are meaningful.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Constraint {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

/// A service-to-service requirement (kept for LDP; not scheduled on yet).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Connectivity {
    pub target_microservice_id: String,
    pub con_constraints: Vec<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A CSI volume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Volume {
    pub volume_id: String,
    pub csi_driver: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Transport of a port mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// One `[host:]container[/proto]` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    pub host: Option<u16>,
    pub container: u16,
    pub protocol: Protocol,
}

impl std::fmt::Display for PortMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(h) = self.host {
            write!(f, "{h}:")?;
        }
        let proto = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        write!(f, "{}/{proto}", self.container)
    }
}

/// Parses the SLA's `port` syntax: `[host:]container[/tcp|udp]` joined by `;`. An empty
/// string means no ports. A host port may be used once per protocol.
pub fn parse_ports(s: &str) -> Result<Vec<PortMapping>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let mut out: Vec<PortMapping> = Vec::new();
    for (i, entry) in s.split(';').enumerate() {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(format!("entry {} is empty; expected [host:]container[/tcp|udp]", i + 1));
        }
        let (ports, proto) = match entry.split_once('/') {
            Some((p, proto)) => {
                let proto = match proto.to_ascii_lowercase().as_str() {
                    "tcp" => Protocol::Tcp,
                    "udp" => Protocol::Udp,
                    _ => return Err(format!("\"{entry}\": protocol must be tcp or udp")),
                };
                (p, proto)
            }
            None => (entry, Protocol::Tcp),
        };
        let (host, container) = match ports.split_once(':') {
            Some((h, c)) => (Some(port_number(h, entry)?), port_number(c, entry)?),
            None => (None, port_number(ports, entry)?),
        };
        let m = PortMapping { host, container, protocol: proto };
        if let Some(h) = host
            && out.iter().any(|o| o.host == Some(h) && o.protocol == proto)
        {
            return Err(format!("\"{entry}\": host port {h} is mapped twice"));
        }
        out.push(m);
    }
    Ok(out)
}

fn port_number(s: &str, entry: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("\"{entry}\": \"{s}\" is not a port number (1-65535)")),
    }
}

/// True when `name` matches `^[a-zA-Z0-9]{1,30}$`, the rule for application and service
/// names and namespaces.
pub fn is_valid_name(name: &str) -> bool {
    (1..=30).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `addr` lies in the semantic IPv4 subnet 10.30.0.0/16.
pub fn in_service_subnet_v4(addr: Ipv4Addr) -> bool {
    let (net, len) = SERVICE_SUBNET_V4;
    u32::from(addr) >> (32 - len) == u32::from(net) >> (32 - len)
}

/// `addr` lies in the semantic IPv6 subnet fdff::/16.
pub fn in_service_subnet_v6(addr: Ipv6Addr) -> bool {
    let (net, len) = SERVICE_SUBNET_V6;
    u128::from(addr) >> (128 - len) == u128::from(net) >> (128 - len)
}

fn de_count<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    as_count(&n).ok_or_else(|| serde::de::Error::custom("expected a non-negative integer"))
}

fn as_count(n: &serde_json::Number) -> Option<u64> {
    if let Some(u) = n.as_u64() {
        return Some(u);
    }
    match n.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 9.0e15 => Some(f as u64),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Validation

/// Validates and parses a whole descriptor.
pub fn parse_sla(doc: &Value) -> Result<Sla, SlaError> {
    let mut v = Validator::default();
    v.sla(doc);
    v.finish()?;
    let mut doc = doc.clone();
    strip_assigned_ids(&mut doc);
    serde_json::from_value(doc)
        .map_err(|e| SlaError { violations: vec![Violation { field: String::new(), message: e.to_string() }] })
}

/// Validates and parses one service description, as taken by a service update. `path` prefixes
/// the field names in violations.
/// A service as the server returned it may be sent back as is: the fields the server adds
/// (its id among them) are ignored.
pub fn parse_microservice(doc: &Value, path: &str) -> Result<MicroserviceSpec, SlaError> {
    let mut doc = doc.clone();
    if let Some(m) = doc.as_object_mut() {
        strip_server_fields(m);
    }
    let mut v = Validator::default();
    v.microservice(&doc, path);
    v.finish()?;
    serde_json::from_value(doc)
        .map_err(|e| SlaError { violations: vec![Violation { field: path.to_owned(), message: e.to_string() }] })
}

/// Fields the server adds when it returns a service. A client that sends a returned service
/// back (as an update, or inside an SLA) must not have them kept as its own extra fields,
/// where they would clash with the server's.
pub const SERVER_FIELDS: &[&str] = &[
    "microserviceID",
    "applicationID",
    "job_name",
    "app_name",
    "app_ns",
    "service_name",
    "service_ns",
    "image",
    "RR_ip",
    "RR_ip_v6",
    "closest_ip",
    "instance_list",
    "next_instance_progressive_number",
    "userId",
    "status",
    "status_detail",
];

fn strip_server_fields(m: &mut Map<String, Value>) {
    for f in SERVER_FIELDS {
        m.remove(*f);
    }
}

/// Ids in a descriptor are ignored on create (the server assigns them); removing them keeps
/// them out of `extra`, where they would clash with the assigned ones.
fn strip_assigned_ids(doc: &mut Value) {
    let Some(apps) = doc.get_mut("applications").and_then(Value::as_array_mut) else {
        return;
    };
    for app in apps {
        if let Some(a) = app.as_object_mut() {
            a.remove("applicationID");
            a.remove("userId");
            if let Some(ms) = a.get_mut("microservices").and_then(Value::as_array_mut) {
                for m in ms {
                    if let Some(m) = m.as_object_mut() {
                        strip_server_fields(m);
                    }
                }
            }
        }
    }
}

#[derive(Default)]
struct Validator {
    violations: Vec<Violation>,
    /// Semantic addresses asked for so far: (address, field).
    addresses: Vec<(String, String)>,
}

/// Characters refused in `code`, `cmd` and `environment`: control characters, and the
/// Unicode format characters that make text display other than it is (bidi embeddings,
/// overrides, isolates and marks; line and paragraph separators; the byte-order mark).
pub fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// Fields the validator knows, per object: all others are `extra`, bounded in all.
const SLA_FIELDS: &[&str] = &["sla_version", "customerID", "args", "applications"];
const APPLICATION_FIELDS: &[&str] =
    &["application_name", "application_namespace", "application_desc", "applicationID", "userId", "microservices"];
const SERVICE_FIELDS: &[&str] = &[
    "microservice_name",
    "microservice_namespace",
    "virtualization",
    "code",
    "cmd",
    "environment",
    "memory",
    "vcpus",
    "vgpus",
    "vtpus",
    "bandwidth_in",
    "bandwidth_out",
    "storage",
    "port",
    "one_shot",
    "on_cluster_loss",
    "replicas",
    "privileged",
    "addresses",
    "constraints",
    "connectivity",
    "arch",
    "platform",
    "volumes",
    "sla_violation_strategy",
    "added_files",
];

fn join(path: &str, field: &str) -> String {
    if path.is_empty() { field.to_owned() } else { format!("{path}.{field}") }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Validator {
    fn finish(self) -> Result<(), SlaError> {
        if self.violations.is_empty() { Ok(()) } else { Err(SlaError { violations: self.violations }) }
    }

    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.violations.push(Violation { field: field.into(), message: message.into() });
    }

    fn required<'a>(&mut self, obj: &'a Map<String, Value>, path: &str, key: &str) -> Option<&'a Value> {
        let v = obj.get(key);
        if v.is_none() {
            self.push(join(path, key), "required field is missing");
        }
        v
    }

    fn string<'a>(&mut self, v: &'a Value, field: &str) -> Option<&'a str> {
        match v {
            Value::String(s) => Some(s),
            other => {
                self.push(field, format!("must be a string, got {}", type_name(other)));
                None
            }
        }
    }

    /// A string of at most `max` bytes (`None`, with a violation, otherwise).
    fn text<'a>(&mut self, v: &'a Value, field: &str, max: usize) -> Option<&'a str> {
        let s = self.string(v, field)?;
        if s.len() > max {
            self.push(field, format!("must be at most {max} bytes, got {}", s.len()));
            return None;
        }
        Some(s)
    }

    fn opt_string<'a>(&mut self, obj: &'a Map<String, Value>, path: &str, key: &str, max: usize) -> Option<&'a str> {
        obj.get(key).and_then(|v| self.text(v, &join(path, key), max))
    }

    /// The fields of `obj` not in `known` (nor added by the server) must be small in all.
    fn extra(&mut self, obj: &Map<String, Value>, path: &str, known: &[&str]) {
        let size: usize = obj
            .iter()
            .filter(|(k, _)| !known.contains(&k.as_str()) && !SERVER_FIELDS.contains(&k.as_str()))
            .map(|(k, v)| k.len() + serde_json::to_string(v).map_or(0, |s| s.len()))
            .sum();
        if size > MAX_EXTRA_BYTES {
            let field =
                if path.is_empty() { "(unknown fields)".to_owned() } else { format!("{path}.(unknown fields)") };
            self.push(field, format!("must be at most {MAX_EXTRA_BYTES} bytes in all, got {size}"));
        }
    }

    /// An array of at most `max` entries (`None`, with a violation, otherwise).
    fn list<'a>(&mut self, v: &'a Value, field: &str, max: usize) -> Option<&'a Vec<Value>> {
        let a = self.array(v, field)?;
        if a.len() > max {
            self.push(field, format!("must have at most {max} entries, got {}", a.len()));
            return None;
        }
        Some(a)
    }

    fn name(&mut self, obj: &Map<String, Value>, path: &str, key: &str) -> Option<String> {
        let field = join(path, key);
        let s = self.required(obj, path, key).and_then(|v| self.text(v, &field, MAX_TEXT_BYTES))?;
        if is_valid_name(s) {
            Some(s.to_owned())
        } else {
            self.push(field, format!("must match ^[a-zA-Z0-9]{{1,30}}$, got {s:?}"));
            None
        }
    }

    fn array<'a>(&mut self, v: &'a Value, field: &str) -> Option<&'a Vec<Value>> {
        match v {
            Value::Array(a) => Some(a),
            other => {
                self.push(field, format!("must be an array, got {}", type_name(other)));
                None
            }
        }
    }

    fn object<'a>(&mut self, v: &'a Value, field: &str) -> Option<&'a Map<String, Value>> {
        match v {
            Value::Object(o) => Some(o),
            other => {
                let what = if field.is_empty() { "the SLA" } else { "must be" };
                let msg = if field.is_empty() {
                    format!("{what} must be a JSON object, got {}", type_name(other))
                } else {
                    format!("{what} an object, got {}", type_name(other))
                };
                self.push(field, msg);
                None
            }
        }
    }

    /// At most `entries` strings of at most `bytes` each: the valid ones, with their index.
    fn string_array<'a>(
        &mut self,
        obj: &'a Map<String, Value>,
        path: &str,
        key: &str,
        entries: usize,
        bytes: usize,
    ) -> Option<Vec<(usize, &'a str)>> {
        let field = join(path, key);
        let arr = self.list(obj.get(key)?, &field, entries)?;
        let mut out = Vec::with_capacity(arr.len());
        for (i, item) in arr.iter().enumerate() {
            if let Some(s) = self.text(item, &format!("{field}[{i}]"), bytes) {
                out.push((i, s));
            }
        }
        Some(out)
    }

    fn count(&mut self, obj: &Map<String, Value>, path: &str, key: &str) {
        let Some(v) = obj.get(key) else { return };
        let ok = matches!(v, Value::Number(n) if as_count(n).is_some());
        if !ok {
            self.push(join(path, key), format!("must be a non-negative integer, got {v}"));
        }
    }

    fn number(&mut self, obj: &Map<String, Value>, path: &str, key: &str, required: bool) -> Option<f64> {
        let Some(v) = obj.get(key) else {
            if required {
                self.push(join(path, key), "required field is missing");
            }
            return None;
        };
        match v.as_f64() {
            Some(f) if f.is_finite() => Some(f),
            _ => {
                self.push(join(path, key), format!("must be a number, got {}", type_name(v)));
                None
            }
        }
    }

    fn boolean(&mut self, obj: &Map<String, Value>, path: &str, key: &str) {
        if let Some(v) = obj.get(key)
            && !v.is_boolean()
        {
            self.push(join(path, key), format!("must be true or false, got {}", type_name(v)));
        }
    }

    fn sla(&mut self, doc: &Value) {
        let Some(obj) = self.object(doc, "") else { return };
        if let Some(v) = self.required(obj, "", "sla_version")
            && let Some(s) = self.text(v, "sla_version", MAX_TEXT_BYTES)
            && s != SLA_VERSION
        {
            self.push("sla_version", format!("unsupported version {s:?}; only \"{SLA_VERSION}\" is accepted"));
        }
        if let Some(v) = self.required(obj, "", "customerID") {
            self.text(v, "customerID", MAX_TEXT_BYTES);
        }
        self.string_array(obj, "", "args", MAX_LIST_ENTRIES, MAX_CMD_ENTRY_BYTES);
        self.extra(obj, "", SLA_FIELDS);
        let Some(apps) = self.required(obj, "", "applications") else { return };
        let Some(apps) = self.array(apps, "applications") else { return };
        if apps.is_empty() {
            self.push("applications", "must contain at least one application");
        }
        let mut seen = BTreeSet::new();
        for (i, app) in apps.iter().enumerate() {
            let path = format!("applications[{i}]");
            if let Some(key) = self.application(app, &path)
                && !seen.insert(key.clone())
            {
                self.push(
                    join(&path, "application_name"),
                    format!("application {}/{} appears twice in this SLA", key.0, key.1),
                );
            }
        }
    }

    /// Returns (name, namespace) when both are valid.
    fn application(&mut self, app: &Value, path: &str) -> Option<(String, String)> {
        let obj = self.object(app, path)?;
        let name = self.name(obj, path, "application_name");
        let ns = self.name(obj, path, "application_namespace");
        self.opt_string(obj, path, "application_desc", MAX_DESC_BYTES);
        self.opt_string(obj, path, "applicationID", MAX_TEXT_BYTES);
        self.extra(obj, path, APPLICATION_FIELDS);
        if let Some(ms) = self.required(obj, path, "microservices") {
            let field = join(path, "microservices");
            if let Some(ms) = self.array(ms, &field) {
                let mut seen = BTreeSet::new();
                for (j, m) in ms.iter().enumerate() {
                    let mpath = format!("{field}[{j}]");
                    if let Some(key) = self.microservice(m, &mpath)
                        && !seen.insert(key.clone())
                    {
                        self.push(
                            join(&mpath, "microservice_name"),
                            format!("service {}/{} appears twice in this application", key.0, key.1),
                        );
                    }
                }
            }
        }
        Some((name?, ns?))
    }

    fn microservice(&mut self, m: &Value, path: &str) -> Option<(String, String)> {
        let obj = self.object(m, path)?;
        if let Some(id) = self.opt_string(obj, path, "microserviceID", MAX_TEXT_BYTES)
            && !id.is_empty()
        {
            self.push(join(path, "microserviceID"), "must be empty: the server assigns service ids");
        }
        self.extra(obj, path, SERVICE_FIELDS);
        let name = self.name(obj, path, "microservice_name");
        let ns = self.name(obj, path, "microservice_namespace");
        if let Some(v) = self.required(obj, path, "virtualization") {
            let field = join(path, "virtualization");
            if let Some(s) = self.text(v, &field, MAX_TEXT_BYTES) {
                let ok =
                    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                if !ok {
                    self.push(
                        field,
                        format!("must be a runtime name such as \"container\" or \"unikernel\", got {s:?}"),
                    );
                }
            }
        }
        if let Some(v) = self.required(obj, path, "code") {
            let field = join(path, "code");
            if let Some(s) = self.text(v, &field, MAX_CODE_BYTES) {
                if s.trim().is_empty() {
                    self.push(field, "must name an image or code location");
                } else if s.chars().any(unsafe_char) {
                    self.push(field, "must not contain control or bidi formatting characters");
                } else if s.starts_with('-') {
                    // The worker passes it to `ctr images pull`, where it would read as an option.
                    self.push(field, format!("must not start with '-', got {s:?}"));
                }
            }
        }
        if let Some(cmd) = self.string_array(obj, path, "cmd", MAX_CMD_ENTRIES, MAX_CMD_ENTRY_BYTES) {
            for (i, c) in cmd {
                if c.chars().any(unsafe_char) {
                    self.push(
                        format!("{}[{i}]", join(path, "cmd")),
                        "must not contain control or bidi formatting characters",
                    );
                }
            }
        }
        if let Some(env) = self.string_array(obj, path, "environment", MAX_ENV_ENTRIES, MAX_ENV_ENTRY_BYTES) {
            let total: usize = env.iter().map(|(_, e)| e.len()).sum();
            if total > MAX_ENV_TOTAL_BYTES {
                self.push(
                    join(path, "environment"),
                    format!("must be at most {MAX_ENV_TOTAL_BYTES} bytes in all, got {total}"),
                );
            }
            for (i, e) in env {
                match e.split_once('=') {
                    _ if e.chars().any(unsafe_char) => self.push(
                        format!("{}[{i}]", join(path, "environment")),
                        "must not contain control or bidi formatting characters",
                    ),
                    Some((k, _)) if !k.is_empty() => {}
                    _ => self
                        .push(format!("{}[{i}]", join(path, "environment")), format!("must be KEY=VALUE, got {e:?}")),
                }
            }
        }
        for key in ["memory", "vgpus", "vtpus", "bandwidth_in", "bandwidth_out", "storage", "replicas"] {
            self.count(obj, path, key);
        }
        self.unsupported_fields(obj, path);
        if let Some(Value::Number(n)) = obj.get("replicas")
            && as_count(n).is_some_and(|r| r > MAX_REPLICAS as u64)
        {
            self.push(join(path, "replicas"), format!("must be at most {MAX_REPLICAS}, got {n}"));
        }
        if let Some(c) = self.number(obj, path, "vcpus", false)
            && c < 0.0
        {
            self.push(join(path, "vcpus"), "must not be negative");
        }
        if let Some(p) = self.opt_string(obj, path, "port", MAX_LIST_BYTES)
            && let Err(e) = parse_ports(p)
        {
            self.push(join(path, "port"), e);
        }
        self.boolean(obj, path, "one_shot");
        if let Some(p) = self.opt_string(obj, path, "sla_violation_strategy", MAX_TEXT_BYTES)
            && !matches!(p, "report" | "migrate")
        {
            self.push(join(path, "sla_violation_strategy"), format!("must be \"report\" or \"migrate\", got {p:?}"));
        }
        if let Some(p) = self.opt_string(obj, path, "on_cluster_loss", MAX_TEXT_BYTES)
            && !matches!(p, "move" | "wait")
        {
            self.push(join(path, "on_cluster_loss"), format!("must be \"move\" or \"wait\", got {p:?}"));
        }
        self.boolean(obj, path, "privileged");
        if self.opt_string(obj, path, "platform", MAX_ARCH_BYTES).is_some_and(|p| !p.is_empty()) {
            self.push(
                join(path, "platform"),
                "is not supported yet: images are pulled for the worker's own platform; use arch",
            );
        }
        self.string_array(obj, path, "arch", MAX_ARCH_ENTRIES, MAX_ARCH_BYTES);
        if let Some(a) = obj.get("addresses") {
            self.addresses(a, &join(path, "addresses"));
        }
        if let Some(c) = obj.get("constraints") {
            let field = join(path, "constraints");
            if let Some(cs) = self.list(c, &field, MAX_LIST_ENTRIES) {
                for (i, c) in cs.iter().enumerate() {
                    self.constraint(c, &format!("{field}[{i}]"));
                }
            }
        }
        if let Some(c) = obj.get("connectivity") {
            let field = join(path, "connectivity");
            if let Some(cs) = self.list(c, &field, MAX_LIST_ENTRIES) {
                for (i, c) in cs.iter().enumerate() {
                    self.connectivity(c, &format!("{field}[{i}]"));
                }
            }
        }
        let before = self.violations.len();
        if let Some(vols) = obj.get("volumes") {
            let field = join(path, "volumes");
            if let Some(vols) = self.list(vols, &field, MAX_LIST_ENTRIES) {
                for (i, vol) in vols.iter().enumerate() {
                    let vpath = format!("{field}[{i}]");
                    if let Some(o) = self.object(vol, &vpath) {
                        for key in ["volume_id", "csi_driver"] {
                            if let Some(v) = self.required(o, &vpath, key) {
                                self.text(v, &join(&vpath, key), MAX_LIST_BYTES);
                            }
                        }
                        self.opt_string(o, &vpath, "mount_path", MAX_LIST_BYTES);
                    }
                }
                if !vols.is_empty() && self.violations.len() == before {
                    self.push(field, "is not supported yet: no CSI driver is available to instances");
                }
            }
        }
        Some((name?, ns?))
    }

    fn addresses(&mut self, a: &Value, path: &str) {
        let Some(obj) = self.object(a, path) else { return };
        for key in ["rr_ip", "closest_ip"] {
            let field = join(path, key);
            let Some(s) = self.opt_string(obj, path, key, MAX_TEXT_BYTES) else { continue };
            match s.parse::<Ipv4Addr>() {
                Ok(ip) if in_service_subnet_v4(ip) => self.address(ip.to_string(), field),
                Ok(ip) => self.push(field, format!("{ip} is outside the service subnet 10.30.0.0/16")),
                Err(_) => self.push(field, format!("{s:?} is not an IPv4 address")),
            }
        }
        for key in ["rr_ip_v6", "closest_ip_v6"] {
            let field = join(path, key);
            let Some(s) = self.opt_string(obj, path, key, MAX_TEXT_BYTES) else { continue };
            match s.parse::<Ipv6Addr>() {
                Ok(ip) if in_service_subnet_v6(ip) => {
                    self.push(field, format!("{ip} is not supported yet: the overlay carries IPv4 only"))
                }
                Ok(ip) => self.push(field, format!("{ip} is outside the service subnet fdff::/16")),
                Err(_) => self.push(field, format!("{s:?} is not an IPv6 address")),
            }
        }
    }

    fn address(&mut self, addr: String, field: String) {
        if let Some((_, other)) = self.addresses.iter().find(|(a, _)| *a == addr) {
            let msg = format!("{addr} is already used by {other} in this SLA");
            self.push(field, msg);
        } else {
            self.addresses.push((addr, field));
        }
    }

    /// A latency (ms) or distance (km) threshold: required, a positive number.
    fn threshold(&mut self, obj: &Map<String, Value>, path: &str) {
        if let Some(t) = self.number(obj, path, "threshold", true)
            && !(t > 0.0 && t <= 1e7)
        {
            self.push(join(path, "threshold"), format!("must be a positive number, got {t}"));
        }
    }

    /// `rigidness` in [0, 1] and `convergence_time` in seconds (at most a day).
    fn softness(&mut self, obj: &Map<String, Value>, path: &str, required: bool) {
        if let Some(r) = self.number(obj, path, "rigidness", required)
            && !(0.0..=1.0).contains(&r)
        {
            self.push(join(path, "rigidness"), format!("must be between 0 and 1, got {r}"));
        }
        if let Some(c) = self.number(obj, path, "convergence_time", required)
            && !(0.0..=86_400.0).contains(&c)
        {
            self.push(join(path, "convergence_time"), format!("must be between 0 and 86400 seconds, got {c}"));
        }
    }

    /// Fields the original accepts that this system does not honour yet: refused by name,
    /// never accepted in silence. A zero, `false` or empty value asks for nothing and passes.
    fn unsupported_fields(&mut self, obj: &Map<String, Value>, path: &str) {
        let not_yet = |what: &str| format!("is not supported yet: {what}");
        for (key, what) in [
            ("vgpus", "no worker offers GPUs to instances"),
            ("vtpus", "no worker offers TPUs to instances"),
            ("storage", "instances get no storage reservation"),
            ("bandwidth_in", "bandwidth is not reserved"),
            ("bandwidth_out", "bandwidth is not reserved"),
        ] {
            if let Some(Value::Number(n)) = obj.get(key)
                && as_count(n).is_some_and(|c| c > 0)
            {
                self.push(join(path, key), format!("{n} {}; omit it or give 0", not_yet(what)));
            }
        }
        if obj.get("privileged") == Some(&Value::Bool(true)) {
            self.push(join(path, "privileged"), not_yet("instances run unprivileged; omit it or give false"));
        }
        // (`platform` and `volumes`: where they are validated, once well-formed.)
        if obj.get("added_files").and_then(Value::as_array).is_some_and(|v| !v.is_empty()) {
            self.push(join(path, "added_files"), not_yet("files are not copied into instances"));
        }
        if let Some(Value::String(v)) = obj.get("virtualization")
            && matches!(v.as_str(), "unikernel" | "crosvm")
        {
            self.push(join(path, "virtualization"), not_yet(&format!("{v}: workers run containers")));
        }
        if let Some(Value::Object(a)) = obj.get("addresses") {
            let apath = join(path, "addresses");
            if a.get("instances").is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|l| !l.is_empty())) {
                self.push(join(&apath, "instances"), not_yet("Instance IPs are allocated by the root"));
            }
        }
    }

    fn constraint(&mut self, c: &Value, path: &str) {
        let Some(obj) = self.object(c, path) else { return };
        let Some(t) = self.required(obj, path, "type") else { return };
        let Some(t) = self.text(t, &join(path, "type"), MAX_TEXT_BYTES) else { return };
        match t {
            "direct" => {
                self.opt_string(obj, path, "cluster", MAX_LIST_BYTES);
                self.opt_string(obj, path, "node", MAX_LIST_BYTES);
            }
            "latency" => {
                let area = self.opt_string(obj, path, "area", MAX_TEXT_BYTES);
                let users = obj.get("users");
                match (area, users) {
                    (None, None) => self.push(join(path, "area"), "a latency constraint needs an area or users"),
                    (Some(_), Some(_)) => self.push(join(path, "users"), "give an area or users, not both"),
                    _ => {}
                }
                if let Some(users) = users {
                    let field = join(path, "users");
                    if let Some(list) = self.list(users, &field, crate::ldp::MAX_MEASURE_TARGETS) {
                        if list.is_empty() {
                            self.push(field.clone(), "must name at least one user address");
                        }
                        for (i, u) in list.iter().enumerate() {
                            let f = format!("{field}[{i}]");
                            if let Some(s) = self.text(u, &f, MAX_TEXT_BYTES) {
                                match s.parse::<std::net::IpAddr>() {
                                    Err(_) => self.push(f, format!("must be an IP address, got {s:?}")),
                                    Ok(a) if !crate::ldp::measurable(a) => self.push(
                                        f,
                                        format!(
                                            "{a} cannot be measured: it is an unspecified, loopback, link-local, \
                                             multicast or broadcast address"
                                        ),
                                    ),
                                    Ok(_) => {}
                                }
                            }
                        }
                    }
                }
                self.threshold(obj, path);
                self.softness(obj, path, false);
            }
            "geo" => {
                if let Some(v) = self.required(obj, path, "location") {
                    let field = join(path, "location");
                    if let Some(s) = self.text(v, &field, MAX_TEXT_BYTES)
                        && parse_location(s).is_none()
                    {
                        self.push(field, format!("must be \"lat,long\" in degrees, got {s:?}"));
                    }
                }
                self.threshold(obj, path);
                self.softness(obj, path, false);
            }
            "addons" => {
                if self.required(obj, path, "needs").is_some() {
                    self.string_array(obj, path, "needs", MAX_LIST_ENTRIES, MAX_TEXT_BYTES);
                }
            }
            "clusters" => {
                if let Some(a) = self.required(obj, path, "allowed").cloned()
                    && self.string_array(obj, path, "allowed", MAX_LIST_ENTRIES, MAX_TEXT_BYTES).is_some()
                    && a.as_array().is_some_and(Vec::is_empty)
                {
                    self.push(join(path, "allowed"), "must name at least one cluster");
                }
            }
            other => self.push(
                join(path, "type"),
                format!("unknown constraint type {other:?}; expected one of {}", CONSTRAINT_TYPES.join(", ")),
            ),
        }
    }

    fn connectivity(&mut self, c: &Value, path: &str) {
        let Some(obj) = self.object(c, path) else { return };
        if let Some(v) = self.required(obj, path, "target_microservice_id") {
            let field = join(path, "target_microservice_id");
            if let Some(s) = self.text(v, &field, MAX_TEXT_BYTES)
                && s.trim().is_empty()
            {
                self.push(field, "must name a service of this application (by name) or a service id");
            }
        }
        let Some(cs) = self.required(obj, path, "con_constraints") else { return };
        let field = join(path, "con_constraints");
        let Some(cs) = self.list(cs, &field, MAX_LIST_ENTRIES) else { return };
        for (i, c) in cs.iter().enumerate() {
            let cpath = format!("{field}[{i}]");
            let Some(o) = self.object(c, &cpath) else { continue };
            if let Some(t) = self.required(o, &cpath, "type")
                && let Some(t) = self.text(t, &join(&cpath, "type"), MAX_TEXT_BYTES)
                && !matches!(t, "latency" | "geo")
            {
                self.push(join(&cpath, "type"), format!("must be \"latency\" or \"geo\", got {t:?}"));
            }
            self.threshold(o, &cpath);
            self.softness(o, &cpath, true);
        }
    }
}

/// Parses `"lat,long"` in degrees.
pub fn parse_location(s: &str) -> Option<(f64, f64)> {
    let (lat, long) = s.split_once(',')?;
    let lat: f64 = lat.trim().parse().ok()?;
    let long: f64 = long.trim().parse().ok()?;
    ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&long)).then_some((lat, long))
}

#[cfg(test)]
mod tests;
