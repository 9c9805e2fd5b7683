//! The root's side of clusters: joining, reports, the root scheduler (pick a cluster for each
//! unplaced instance), and the desired set each cluster is sent.

use super::*;
use oak_api::link::{ClusterReport, DesiredInstance};
use oak_sched::{Candidate, Policy, Request, Resources, Slot, Snapshot};

/// What a cluster report changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportOutcome {
    pub rescheduled: bool,
    pub net_changed: bool,
}

/// Where an instance's log can be asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogsTarget {
    pub cluster: ClusterId,
}

/// Statuses a cluster still drives (the instance holds resources there).
fn placed(s: Status) -> bool {
    matches!(
        s,
        Status::ClusterScheduled
            | Status::NodeScheduled
            | Status::Creating
            | Status::Created
            | Status::Running
            | Status::Completed
    ) || matches!(s, Status::Dead | Status::Failed)
}

/// The status of a service, derived from its instances: the least advanced or worst one,
/// RUNNING only when all run. Without instances, the stored (original-style) status.
pub(super) fn service_status(s: &ServiceRecord) -> (Option<Status>, Option<String>) {
    if s.instances.is_empty() {
        return (s.status, s.waiting.clone().or_else(|| s.status_detail.clone()));
    }
    let rank = |st: Status| -> u8 {
        match st {
            x if x.is_negative_scheduling() => 0,
            Status::Failed | Status::Dead => 1,
            Status::Requested => 2,
            Status::ClusterScheduled => 3,
            Status::NodeScheduled => 4,
            Status::Creating | Status::Created => 5,
            Status::Running => 6,
            Status::Completed => 7,
            Status::Undeployed => 8,
            _ => 9,
        }
    };
    let worst = s.instances.iter().min_by_key(|i| (rank(i.status), i.instance_number));
    // Instances that could not even be created say why first.
    let detail = match &s.waiting {
        Some(w) => Some(w.clone()),
        None => worst.map(|i| i.status_detail.clone()),
    };
    (worst.map(|i| i.status), detail)
}

fn request_of(spec: &MicroserviceSpec, exclude: &[ClusterId], canon: &dyn Fn(&str) -> String) -> Request {
    let mut direct = spec.direct_targets(oak_api::sla::DirectTier::Cluster);
    // A `clusters` constraint narrows the clusters a `direct` one names, or names them; either
    // may name a cluster by name or by id.
    if let Some(allowed) = spec.allowed_clusters() {
        let allowed: Vec<String> = allowed.iter().map(|a| canon(a)).collect();
        direct = if direct.is_empty() {
            allowed
        } else {
            direct.into_iter().map(|d| canon(&d)).filter(|d| allowed.contains(d)).collect()
        };
        if direct.is_empty() {
            // Nothing is both named and allowed: no cluster may take it.
            direct = vec![String::new()];
        }
    }
    Request {
        resources: Resources::new(spec.millicpu(), spec.memory, spec.vgpus as u32),
        runtime: spec.virtualization.clone(),
        arch: spec.arch.clone(),
        direct,
        exclude: exclude.iter().map(ToString::to_string).collect(),
        addons: spec.addons_needed(),
        ..Default::default()
    }
}

/// A cluster as a scheduling candidate: its free slots, and its summary (where its workers
/// are, on the map and in the coordinate space) and addons.
fn candidate_of(c: &ClusterRecord) -> Candidate {
    Candidate {
        id: c.id.to_string(),
        name: c.name.clone(),
        slots: c
            .aggregate
            .slots
            .iter()
            .map(|s| Slot {
                arch: s.arch.clone(),
                runtimes: s.runtimes.clone(),
                capacity: Resources::new(s.millicpu, s.memory_mb, s.gpus),
            })
            .collect(),
        space: c.aggregate.ldp.space.clone(),
        area: c.aggregate.ldp.area.clone(),
        addons: c.aggregate.addons.clone(),
    }
}

pub(super) fn job_name(app: &AppRecord, spec: &MicroserviceSpec) -> String {
    format!("{}.{}.{}.{}", app.name, app.namespace, spec.microservice_name, spec.microservice_namespace)
}

impl Registry {
    pub(super) fn clusters(&self) -> Result<Vec<ClusterRecord>> {
        self.load_all(CLUSTERS, "")
    }

    /// Joins a cluster for an in-process caller that is that cluster (tests, benchmarks): as
    /// [`join_cluster_with_secret`](Self::join_cluster_with_secret), without the proof.
    pub fn join_cluster(&self, name: &str, location: Option<&str>, claimed: Option<&ClusterId>) -> Result<ClusterId> {
        self.join(name, location, claimed, None, false).map(|(id, _)| id)
    }

    /// A cluster's link says hello: the cluster it claims to be (by id, else by name) if it
    /// shows that cluster's secret, or a new cluster. Returns its id and, when one is issued
    /// now (a new cluster, or one from before secrets), the secret it must keep and show next
    /// time. Every cluster holds the same cluster token, so the token alone never gives one
    /// cluster another's instances.
    pub fn join_cluster_with_secret(
        &self,
        name: &str,
        location: Option<&str>,
        claimed: Option<&ClusterId>,
        secret: Option<&str>,
    ) -> Result<(ClusterId, Option<String>)> {
        self.join(name, location, claimed, secret, true)
    }

    fn join(
        &self,
        name: &str,
        location: Option<&str>,
        claimed: Option<&ClusterId>,
        secret: Option<&str>,
        verify: bool,
    ) -> Result<(ClusterId, Option<String>)> {
        let ok =
            (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err(invalid("name", format!("cluster name must be 1-64 letters, digits or ._-, got {name:?}")));
        }
        let _w = self.write.lock();
        let all = self.clusters()?;
        let existing = claimed
            .and_then(|id| all.iter().find(|c| c.id == *id))
            .or_else(|| all.iter().find(|c| c.name == name))
            .cloned();
        let proves = |c: &ClusterRecord| match (&c.secret_hash, secret) {
            (None, _) => true,
            (Some(h), Some(s)) => {
                oak_store::secret::constant_time_eq(h.as_bytes(), oak_store::secret::sha256_hex(s).as_bytes())
            }
            (Some(_), None) => false,
        };
        let now = self.clock.now_unix();
        let mut issued = None;
        let rec = match existing {
            Some(c) if verify && !proves(&c) => {
                return Err(RegistryError::Forbidden(format!(
                    "cluster {} ({}) has joined before and this link does not show its secret; a cluster that \
                     lost its data dir joins under another --name",
                    c.name, c.id
                )));
            }
            Some(mut c) => {
                c.name = name.to_owned();
                c.location = location.unwrap_or_default().to_owned();
                c.last_seen = now;
                if verify && c.secret_hash.is_none() {
                    let s = oak_store::secret::random_hex(32);
                    c.secret_hash = Some(oak_store::secret::sha256_hex(&s));
                    issued = Some(s);
                }
                c
            }
            None => {
                let s = oak_store::secret::random_hex(32);
                let rec = ClusterRecord {
                    id: ClusterId(self.new_id()),
                    name: name.to_owned(),
                    location: location.unwrap_or_default().to_owned(),
                    last_seen: now,
                    aggregate: Default::default(),
                    secret_hash: verify.then(|| oak_store::secret::sha256_hex(&s)),
                };
                issued = verify.then_some(s);
                rec
            }
        };
        let mut b = Batch::new();
        b.put(CLUSTERS, rec.id.as_str(), encode(&rec)?);
        self.store.commit(b)?;
        Ok((rec.id, issued))
    }

    /// A cluster's full report: whether the scheduler should run, and whether overlay tables
    /// changed (clusters interested in them must be told).
    pub fn apply_report(&self, cluster: &ClusterId, report: ClusterReport) -> Result<ReportOutcome> {
        let _w = self.write.lock();
        let now = self.clock.now_unix();
        let Some(mut rec) = self.load::<ClusterRecord>(CLUSTERS, cluster.as_str())? else {
            return Err(not_found("cluster", cluster));
        };
        rec.last_seen = now;
        rec.aggregate = report.aggregate;
        ldp::sanitize(&mut rec.aggregate);
        let mut b = Batch::new();
        b.put(CLUSTERS, cluster.as_str(), encode(&rec)?);
        let mut rescheduled = false;
        let mut net_changed = false;
        let mut by_service: BTreeMap<ServiceId, Vec<oak_api::link::InstanceState>> = BTreeMap::new();
        for mut i in report.instances {
            // What a cluster says about an instance is shown to its owner: bounded, and no
            // usage figure below zero or beyond reason.
            oak_api::node::truncate_detail(&mut i.status_detail);
            let sane = |v: Option<f64>, max: f64| v.filter(|v| v.is_finite() && (0.0..=max).contains(v));
            i.cpu_percent = sane(i.cpu_percent, oak_api::node::MAX_CPU_PERCENT);
            i.memory_mb = sane(i.memory_mb, oak_api::node::MAX_MEMORY_MB as f64);
            by_service.entry(i.service_id.clone()).or_default().push(i);
        }
        for (sid, states) in by_service {
            let Some(mut s) = self.load::<ServiceRecord>(SERVICES, sid.as_str())? else { continue };
            let mut changed = false;
            for st in states {
                let Some(inst) = s.instances.iter_mut().find(|i| i.instance_number == st.instance_number) else {
                    continue;
                };
                if inst.cluster_id.as_ref() != Some(cluster) {
                    continue;
                }
                if st.status.is_negative_scheduling() {
                    // The cluster cannot hold it: let the scheduler try the others.
                    let refused = s.refused_by.entry(st.instance_number).or_default();
                    if !refused.contains(cluster) {
                        refused.push(cluster.clone());
                        rescheduled = true;
                    }
                }
                let new = (st.status, st.status_detail.clone(), st.worker_id.clone(), st.host_ip.clone());
                let old = (inst.status, inst.status_detail.clone(), inst.worker_id.clone(), inst.host_ip.clone());
                let old_coord = s.net.get(&st.instance_number).and_then(|n| n.coord);
                let coord = st.coord.filter(oak_api::ldp::Coord::is_valid);
                let net = match (st.ns_ip, &st.host_ip, st.host_port) {
                    (Some(ns_ip), Some(host_ip), Some(host_port)) if st.status == Status::Running => {
                        Some(network::InstanceNet {
                            ns_ip,
                            host_ip: host_ip.clone(),
                            host_port,
                            location: st.location.clone(),
                            worker: st.worker_id.clone(),
                            // Drift below the threshold keeps the stored coordinate: tables
                            // go to every cluster when it changes.
                            coord: if ldp::coord_moved(old_coord.as_ref(), coord.as_ref()) { coord } else { old_coord },
                            probe: st.probe.filter(ldp::probe_ok),
                            host_key: st.host_key.clone().filter(|k| oak_api::node::valid_tunnel_key(k)),
                        })
                    }
                    _ => None,
                };
                if s.net.get(&st.instance_number) != net.as_ref()
                    || (inst.status == Status::Running) != (st.status == Status::Running)
                {
                    match net {
                        Some(n) => s.net.insert(st.instance_number, n),
                        None => s.net.remove(&st.instance_number),
                    };
                    net_changed = true;
                    changed = true;
                }
                if new != old || inst.cpu_percent != st.cpu_percent || inst.memory_mb != st.memory_mb {
                    inst.status = st.status;
                    inst.status_detail = st.status_detail;
                    inst.worker_id = st.worker_id;
                    inst.worker_name = st.worker_name;
                    inst.publicip = st.host_ip.clone();
                    inst.host_ip = st.host_ip;
                    inst.cpu_percent = st.cpu_percent;
                    inst.memory_mb = st.memory_mb;
                    inst.last_modified_timestamp = now;
                    changed = true;
                }
            }
            if changed {
                b.put(SERVICES, sid.as_str(), encode(&s)?);
            }
        }
        self.store.commit(b)?;
        Ok(ReportOutcome { rescheduled, net_changed })
    }

    /// Picks a cluster for every instance that has none, or whose cluster refused it and
    /// another may take it. Returns true when anything was placed.
    pub fn schedule_pending(&self) -> Result<bool> {
        let _w = self.write.lock();
        let now = self.clock.now_unix();
        let all = self.clusters()?;
        let names: BTreeMap<ClusterId, String> = all.iter().map(|c| (c.id.clone(), c.name.clone())).collect();
        let clusters: Vec<ClusterRecord> =
            all.into_iter().filter(|c| now - c.last_seen <= self.cluster_timeout).collect();
        let active: std::collections::BTreeSet<ClusterId> = clusters.iter().map(|c| c.id.clone()).collect();
        let mut snap = Snapshot::new(clusters.iter().map(candidate_of).collect());
        // A cluster named by name or by id: its id.
        let by_name: BTreeMap<&str, &ClusterId> = names.iter().map(|(id, n)| (n.as_str(), id)).collect();
        let canon = |x: &str| by_name.get(x).map_or_else(|| x.to_owned(), |id| id.to_string());
        let services: Vec<ServiceRecord> = self.load_all(SERVICES, "")?;
        let (by_name, by_id) = ldp::index(&services);
        let points = ldp::points(&services);
        // Instances a cluster has not yet acknowledged still take room in its report: reserve
        // them on the slot they would take there (the first one, if none fits any more).
        for s in &services {
            let req = request_of(&s.spec, &[], &canon);
            for i in s.instances.iter().filter(|i| i.status == Status::ClusterScheduled) {
                let Some(c) = &i.cluster_id else { continue };
                let Some(idx) = snap.find(c.as_str()) else { continue };
                let here = Request { direct: vec![c.to_string()], ..req.clone() };
                let (cand, slot) =
                    snap.place(&here, Policy::BestFit).map(|p| (p.candidate, p.slot)).unwrap_or((idx, 0));
                snap.reserve(cand, slot, &req.resources);
            }
        }
        let mut b = Batch::new();
        let mut any = false;
        for mut s in services {
            let mut changed = false;
            for n in 0..s.instances.len() {
                // A lost cluster's instances move (unless the service says to wait for it), and an
                // instance its cluster never took up is placed again: nothing waits forever.
                let moves = !matches!(s.spec.extra.get("on_cluster_loss").and_then(|v| v.as_str()), Some("wait"));
                let inst = &s.instances[n];
                let stale = inst.status == Status::ClusterScheduled
                    && now - inst.last_modified_timestamp > CLUSTER_ACK_TIMEOUT_SECS;
                let lost = inst.cluster_id.as_ref().is_some_and(|c| !active.contains(c))
                    && inst.status != Status::Completed
                    && moves;
                if let (Some(c), true) = (inst.cluster_id.clone(), lost || stale) {
                    let why = if lost {
                        format!(
                            "cluster {} lost; placing it elsewhere",
                            names.get(&c).cloned().unwrap_or_else(|| c.to_string())
                        )
                    } else {
                        format!(
                            "cluster {} did not take it up in {CLUSTER_ACK_TIMEOUT_SECS} s; placing it elsewhere",
                            names.get(&c).cloned().unwrap_or_else(|| c.to_string())
                        )
                    };
                    let number = inst.instance_number;
                    s.refused_by.entry(number).or_default().push(c);
                    let inst = &mut s.instances[n];
                    inst.cluster_id = None;
                    inst.status = Status::Requested;
                    inst.status_detail = why;
                    inst.worker_id = None;
                    inst.worker_name = None;
                    inst.last_modified_timestamp = now;
                    changed = true;
                }
                let inst = &s.instances[n];
                let number = inst.instance_number;
                let refused = s.refused_by.get(&number).cloned().unwrap_or_default();
                let unplaced = inst.cluster_id.is_none();
                let refused_here = inst.cluster_id.as_ref().is_some_and(|c| refused.contains(c))
                    && inst.status.is_negative_scheduling();
                if !unplaced && !refused_here {
                    continue;
                }
                let mut req = request_of(&s.spec, &refused, &canon);
                let ctx = self.context(&s, &by_name, &by_id, &points);
                if ctx.is_some() {
                    let r = oak_sched::objectives::resolve(&s.spec.requirements(), ctx.as_ref(), None);
                    if !r.waiting.is_empty() {
                        let detail = format!("waiting: {}", r.waiting.join("; "));
                        let inst = &mut s.instances[n];
                        if unplaced && (inst.status != Status::Requested || inst.status_detail != detail) {
                            inst.status = Status::Requested;
                            inst.status_detail = detail;
                            inst.last_modified_timestamp = now;
                            changed = true;
                        }
                        continue;
                    }
                    req.objectives = r.objectives;
                }
                match snap.place(&req, Policy::Spread) {
                    Ok(p) => {
                        snap.reserve(p.candidate, p.slot, &req.resources);
                        let cname = snap.candidate(p.candidate).map(|c| c.name.clone()).unwrap_or_default();
                        let inst = &mut s.instances[n];
                        inst.cluster_id = Some(ClusterId(p.id));
                        inst.status = Status::ClusterScheduled;
                        inst.status_detail = format!("placed in cluster {cname}");
                        inst.worker_id = None;
                        inst.worker_name = None;
                        inst.last_modified_timestamp = now;
                        changed = true;
                    }
                    Err(e) if unplaced => {
                        let (status, detail) = match e {
                            oak_sched::Rejection::NoCandidates => (
                                Status::NoActiveClusterWithCapacity,
                                if clusters.is_empty() {
                                    super::no_active_cluster(names.len(), self.cluster_timeout)
                                } else {
                                    "no active cluster can take it: no cluster reports free workers".to_owned()
                                },
                            ),
                            oak_sched::Rejection::NoneFits { detail } => (
                                Status::NoActiveClusterWithCapacity,
                                format!("no active cluster can take it: {detail}"),
                            ),
                        };
                        let inst = &mut s.instances[n];
                        if inst.status != status || inst.status_detail != detail {
                            inst.status = status;
                            inst.status_detail = detail;
                            inst.last_modified_timestamp = now;
                            changed = true;
                        }
                        // Let the clusters that refused try again when capacity may have changed.
                        s.refused_by.remove(&number);
                    }
                    Err(_) => {
                        // Refused where it is and nowhere else fits: it stays, and that cluster
                        // keeps trying; its status says why.
                    }
                }
            }
            if changed {
                b.put(SERVICES, s.id.as_str(), encode(&s)?);
                any = true;
            }
        }
        if !b.is_empty() {
            self.store.commit(b)?;
        }
        Ok(any)
    }

    /// Every instance the root wants on `cluster`.
    pub fn desired_for(&self, cluster: &ClusterId) -> Result<Vec<DesiredInstance>> {
        let mut out = Vec::new();
        let mut apps: BTreeMap<ApplicationId, Option<AppRecord>> = BTreeMap::new();
        let services = self.load_all::<ServiceRecord>(SERVICES, "")?;
        let (by_name, by_id) = ldp::index(&services);
        let points = ldp::points(&services);
        for s in &services {
            let ctx = self.context(s, &by_name, &by_id, &points);
            let here = |i: &&Instance| {
                // (REQUESTED with a cluster: that cluster holds it and waits, e.g. for the RTTs
                // to its users.)
                i.cluster_id.as_ref() == Some(cluster)
                    && (placed(i.status) || i.status.is_negative_scheduling() || i.status == Status::Requested)
            };
            for i in s.instances.iter().filter(here) {
                let app = match apps.get(&s.app) {
                    Some(a) => a.clone(),
                    None => {
                        let a = self.load::<AppRecord>(APPS, s.app.as_str())?;
                        apps.insert(s.app.clone(), a.clone());
                        a
                    }
                };
                let Some(app) = app else { continue };
                out.push(DesiredInstance {
                    service_id: s.id.clone(),
                    instance_number: i.instance_number,
                    job_name: job_name(&app, &s.spec),
                    spec: s.spec.clone(),
                    instance_ip: i.instance_ip.as_deref().and_then(|ip| ip.parse().ok()),
                    ldp: ctx.clone(),
                });
            }
        }
        out.sort_by(|a, b| (&a.service_id, a.instance_number).cmp(&(&b.service_id, b.instance_number)));
        Ok(out)
    }

    /// Where to ask for the log of an instance the caller owns.
    pub fn logs_target(&self, owner: &UserId, id: &ServiceId, number: u32) -> Result<LogsTarget> {
        let (s, _) = self.owned_service(owner, id)?;
        let inst = s
            .instances
            .iter()
            .find(|i| i.instance_number == number)
            .ok_or_else(|| not_found("instance", format!("{number} of service {id}")))?;
        match &inst.cluster_id {
            Some(c) => Ok(LogsTarget { cluster: c.clone() }),
            None => Err(RegistryError::Conflict(format!(
                "instance {number} of service {id} is not placed yet ({}), so it has no log",
                inst.status
            ))),
        }
    }
}
