//! The root's part of the overlay's address plan and tables: worker subnets (allocated per
//! worker, kept across restarts, freed when the cluster forgets the worker) and the
//! [`ServiceTable`]s clusters ask for on behalf of their workers.

use super::*;
use oak_api::net::{ServiceTable, TableInstance, WORKER_NETS_FIRST, WORKER_NETS_LAST};
use std::collections::BTreeSet;

/// Where a running instance is attached to the overlay (the namespace IP stays internal).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct InstanceNet {
    pub ns_ip: Ipv4Addr,
    pub host_ip: String,
    pub host_port: u16,
    #[serde(default)]
    pub location: Option<String>,
    /// Its worker: id, network coordinate (stored again only when it moved, see
    /// `ldp::coord_moved`) and probe address, for S2S placement and monitoring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coord: Option<oak_api::ldp::Coord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<std::net::SocketAddrV4>,
    /// Its worker's tunnel public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SubnetRec {
    node: String,
    cluster: ClusterId,
}

const SUBNET_PREFIX: &str = "subnet/";
const STEP: u32 = 64;

impl Registry {
    /// The most worker subnets one cluster may hold (of the 12,288 in the pool): one cluster
    /// listing workers without end cannot take every other cluster's subnets.
    pub const MAX_SUBNETS_PER_CLUSTER: usize = 4096;

    /// The subnet of every worker in `workers` (all the workers `cluster` knows), allocating
    /// for new ones and freeing those of workers the cluster no longer has. A worker for which
    /// no subnet is left (the pool is empty, or the cluster holds
    /// [`MAX_SUBNETS_PER_CLUSTER`](Self::MAX_SUBNETS_PER_CLUSTER)) is left out of the answer;
    /// the others get theirs.
    pub fn subnets_for(&self, cluster: &ClusterId, workers: &[String]) -> Result<BTreeMap<String, Ipv4Addr>> {
        self.subnets_within(cluster, workers, (WORKER_NETS_FIRST, WORKER_NETS_LAST), Self::MAX_SUBNETS_PER_CLUSTER)
    }

    /// [`subnets_for`](Self::subnets_for) with the pool `first..=last` (/26 steps) and the
    /// per-cluster cap given (tests use small ones).
    pub(super) fn subnets_within(
        &self,
        cluster: &ClusterId,
        workers: &[String],
        (first, last): (Ipv4Addr, Ipv4Addr),
        cap: usize,
    ) -> Result<BTreeMap<String, Ipv4Addr>> {
        let _w = self.write.lock();
        let mut held: BTreeMap<String, (Ipv4Addr, SubnetRec)> = BTreeMap::new();
        let mut taken: BTreeSet<u32> = BTreeSet::new();
        for (key, bytes) in self.store.scan_prefix(ADDRESSES, SUBNET_PREFIX)? {
            let Some(ip) = key.strip_prefix(SUBNET_PREFIX).and_then(|s| s.parse::<Ipv4Addr>().ok()) else { continue };
            let Ok(rec) = serde_json::from_slice::<SubnetRec>(&bytes) else { continue };
            taken.insert(u32::from(ip));
            held.insert(rec.node.clone(), (ip, rec));
        }
        // Each worker once, whatever the list repeats.
        let wanted: BTreeSet<&String> = workers.iter().collect();
        let mut b = Batch::new();
        let mut out = BTreeMap::new();
        // Workers this cluster had and forgot: their subnets go back to the pool.
        for (node, (ip, rec)) in &held {
            if &rec.cluster == cluster && !wanted.contains(node) {
                b.delete(ADDRESSES, format!("{SUBNET_PREFIX}{ip}"));
            }
        }
        // What the cluster keeps counts against its cap before anything new is given.
        let mut mine = held.iter().filter(|(n, (_, rec))| &rec.cluster == cluster && wanted.contains(n)).count();
        let (lo, hi) = (u32::from(first), u32::from(last));
        let mut cursor = self
            .store
            .get(META, "next_subnet")?
            .and_then(|v| String::from_utf8_lossy(&v).parse::<u32>().ok())
            .filter(|c| (lo..=hi).contains(c) && (c - lo) % STEP == 0)
            .unwrap_or(lo);
        let (mut over_cap, mut exhausted) = (0usize, false);
        for node in wanted {
            if let Some((ip, rec)) = held.get(node) {
                if &rec.cluster == cluster {
                    out.insert(node.clone(), *ip);
                    continue;
                }
                if mine >= cap {
                    over_cap += 1;
                    continue;
                }
                // The worker joined another cluster: its subnet moves with it.
                let moved = SubnetRec { node: node.clone(), cluster: cluster.clone() };
                b.put(ADDRESSES, format!("{SUBNET_PREFIX}{ip}"), encode(&moved)?);
                mine += 1;
                out.insert(node.clone(), *ip);
                continue;
            }
            if mine >= cap {
                over_cap += 1;
                continue;
            }
            // Once the pool is found empty, the rest are not searched for again.
            let mut found = None;
            if !exhausted {
                for _ in 0..=(hi - lo) / STEP {
                    let c = cursor;
                    cursor = if cursor >= hi { lo } else { cursor + STEP };
                    if !taken.contains(&c) {
                        found = Some(c);
                        break;
                    }
                }
            }
            let Some(c) = found else {
                exhausted = true;
                continue;
            };
            taken.insert(c);
            mine += 1;
            let ip = Ipv4Addr::from(c);
            b.put(
                ADDRESSES,
                format!("{SUBNET_PREFIX}{ip}"),
                encode(&SubnetRec { node: node.clone(), cluster: cluster.clone() })?,
            );
            out.insert(node.clone(), ip);
        }
        if over_cap > 0 || exhausted {
            tracing::debug!(
                cluster = %cluster,
                over_cap,
                pool_empty = exhausted,
                "some workers of the cluster get no overlay subnet"
            );
        }
        if !b.is_empty() {
            b.put(META, "next_subnet", cursor.to_string().into_bytes());
            self.store.commit(b)?;
        }
        Ok(out)
    }

    /// The tables of the services that own `addresses` (Service or Instance IPs). Unknown
    /// addresses are left out.
    pub fn tables_for(&self, addresses: &[Ipv4Addr]) -> Result<Vec<ServiceTable>> {
        let mut ids: BTreeSet<String> = BTreeSet::new();
        for ip in addresses {
            if let Some(holder) = self.index(ADDRESSES, &ip.to_string())? {
                ids.insert(holder.split('/').next().unwrap_or_default().to_owned());
            }
        }
        let mut out = Vec::new();
        let mut apps: BTreeMap<ApplicationId, Option<AppRecord>> = BTreeMap::new();
        for id in ids {
            let Some(s) = self.load::<ServiceRecord>(SERVICES, &id)? else { continue };
            let app = match apps.get(&s.app) {
                Some(a) => a.clone(),
                None => {
                    let a = self.load::<AppRecord>(APPS, s.app.as_str())?;
                    apps.insert(s.app.clone(), a.clone());
                    a
                }
            };
            let instances = s
                .instances
                .iter()
                .filter(|i| i.status == Status::Running)
                .filter_map(|i| {
                    let net = s.net.get(&i.instance_number)?;
                    Some(TableInstance {
                        instance_number: i.instance_number,
                        instance_ip: i.instance_ip.as_deref()?.parse().ok()?,
                        ns_ip: net.ns_ip,
                        host_ip: net.host_ip.clone(),
                        host_port: net.host_port,
                        location: net.location.clone(),
                        coord: net.coord,
                        host_key: net.host_key.clone(),
                    })
                })
                .collect();
            out.push(ServiceTable {
                service_id: s.id.clone(),
                job_name: app.map(|a| clusters::job_name(&a, &s.spec)).unwrap_or_default(),
                rr_ip: s.semantic.rr_ip,
                closest_ip: s.semantic.closest_ip,
                instances,
            });
        }
        Ok(out)
    }
}
