//! The overlay's control messages: what a worker needs to translate packets for a service.
//!
//! Level-triggered like the rest: a worker reports the semantic addresses it is interested in
//! (in every [`crate::node::NodeInfo`]); its cluster passes the union on to the root (in its
//! report); the root answers with the [`ServiceTable`] of every service those addresses
//! belong to, and pushes a new one whenever an instance starts, moves or dies. The cluster
//! forwards to each worker the tables it asked for ([`WorkerTables`]). Any lost message is
//! repaired by the next full set.

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// The whole semantic subnet: Service IPs and Instance IPs.
pub const SERVICE_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 30, 0, 0), 16);
/// Worker subnets (/26 each) are allocated from 10.18.0.0 up to 10.29.255.192.
pub const WORKER_NETS_FIRST: Ipv4Addr = Ipv4Addr::new(10, 18, 0, 0);
pub const WORKER_NETS_LAST: Ipv4Addr = Ipv4Addr::new(10, 29, 255, 192);
pub const WORKER_NET_PREFIX: u8 = 26;
/// The tunnel's UDP port.
pub const TUNNEL_PORT: u16 = 50103;

/// True when `ip` is a semantic address (inside 10.30.0.0/16).
pub fn is_semantic(ip: Ipv4Addr) -> bool {
    u32::from(ip) >> 16 == u32::from(SERVICE_NET.0) >> 16
}

/// Everything a worker needs to reach the instances of one service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceTable {
    pub service_id: crate::ServiceId,
    pub job_name: String,
    #[serde(default)]
    pub rr_ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub closest_ip: Option<Ipv4Addr>,
    /// Running instances only, by instance number.
    pub instances: Vec<TableInstance>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableInstance {
    pub instance_number: u32,
    pub instance_ip: Ipv4Addr,
    /// The instance's real address inside its worker's subnet.
    pub ns_ip: Ipv4Addr,
    /// Underlay address and tunnel port of its worker.
    pub host_ip: String,
    pub host_port: u16,
    /// `LAT,LONG` of its worker, for the closest policy when no coordinates are known.
    #[serde(default)]
    pub location: Option<String>,
    /// Its worker's network coordinate, for the closest policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coord: Option<crate::ldp::Coord>,
    /// Its worker's tunnel public key (X25519, base64), when the tunnel is encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
}

/// Cluster → worker (`nodes/<id>/control/tables`): the tables of every address the worker
/// reported interest in. Replaces what the worker had.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerTables {
    pub tables: Vec<ServiceTable>,
}

/// Cluster → worker (`nodes/<id>/control/network`): the worker's subnet, allocated by the root.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerNetwork {
    /// Network address of the worker's /26, e.g. `10.18.0.64`.
    pub subnet: Ipv4Addr,
}

/// A digest of a set of tables (FNV-1a over their JSON): a worker reports the digest of the
/// tables it holds, so its cluster notices one that went missing and sends it again. The JSON
/// is hashed as it is written, never held whole.
pub fn try_digest(tables: &[ServiceTable]) -> Result<u64, serde_json::Error> {
    fnv_json(tables)
}

/// [`try_digest`], for a holder of tables it decoded from JSON (which therefore encode
/// again). Should they not, the digest is [`UNENCODABLE`]: never a hash of empty bytes,
/// and a cluster (which uses [`try_digest`]) then sends the tables again.
pub fn digest(tables: &[ServiceTable]) -> u64 {
    try_digest(tables).unwrap_or(UNENCODABLE)
}

/// The digest of tables that cannot be encoded (see [`digest`]).
pub const UNENCODABLE: u64 = 0;

/// FNV-1a of the JSON of `v`, without building the JSON.
fn fnv_json<T: Serialize + ?Sized>(v: &T) -> Result<u64, serde_json::Error> {
    struct Fnv(u64);
    impl std::io::Write for Fnv {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = buf.iter().fold(self.0, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3));
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    serde_json::to_writer(&mut h, v)?;
    Ok(h.0)
}

/// Parses `LAT,LONG` into degrees.
pub fn parse_location(s: &str) -> Option<(f64, f64)> {
    let (a, b) = s.split_once(',')?;
    let (lat, long) = (a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?);
    ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&long)).then_some((lat, long))
}

/// Great-circle distance in kilometres.
pub fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (la1, lo1, la2, lo2) = (a.0.to_radians(), a.1.to_radians(), b.0.to_radians(), b.1.to_radians());
    let h = ((la2 - la1) / 2.0).sin().powi(2) + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semantic_subnet_and_locations() {
        assert!(is_semantic(Ipv4Addr::new(10, 30, 30, 30)));
        assert!(!is_semantic(Ipv4Addr::new(10, 31, 0, 1)));
        assert!(!is_semantic(Ipv4Addr::new(10, 18, 0, 2)));
        assert_eq!(parse_location("48.1, 11.6"), Some((48.1, 11.6)));
        assert_eq!(parse_location("91,0"), None);
        assert_eq!(parse_location("x"), None);
        let munich_berlin = distance_km((48.14, 11.58), (52.52, 13.40));
        assert!((munich_berlin - 504.0).abs() < 10.0, "{munich_berlin}");
    }

    /// The digest is FNV-1a over the tables' JSON (workers and clusters of different versions
    /// must agree on it); a value that does not encode is an error, not the hash of nothing.
    #[test]
    fn digests_hash_the_json_and_refuse_what_does_not_encode() {
        let t = ServiceTable {
            service_id: crate::ServiceId::from("s"),
            job_name: "a.b.c.d".into(),
            rr_ip: Some(Ipv4Addr::new(10, 30, 0, 1)),
            closest_ip: None,
            instances: vec![TableInstance {
                instance_number: 0,
                instance_ip: Ipv4Addr::new(10, 30, 0, 2),
                ns_ip: Ipv4Addr::new(10, 18, 0, 2),
                host_ip: "192.168.0.1".into(),
                host_port: TUNNEL_PORT,
                location: None,
                coord: None,
                host_key: None,
            }],
        };
        let fnv = |bytes: &[u8]| {
            bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
        };
        let tables = [t];
        let json = serde_json::to_vec(&tables).map_err(|e| e.to_string());
        assert_eq!(try_digest(&tables).map_err(|e| e.to_string()), json.map(|j| fnv(&j)));
        assert_eq!(digest(&[]), fnv(b"[]"));
        assert_ne!(digest(&tables), digest(&[]));
        let bad: std::collections::BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        assert!(fnv_json(&bad).is_err());
    }
}
