//! The cluster's state and its level-triggered reconcile: the instances the root wants, the
//! workers that report, and the assignments between them.
//!
//! `Core` is owned by one task. Inputs are plain method calls; each returns the messages to
//! publish (`Vec<Out>`), so the logic is testable without a broker.
//!
//! Assignment lifecycle:
//! ```text
//! (desired) ─▶ NODE_SCHEDULED ─▶ CREATING ─▶ RUNNING ─▶ COMPLETED (one_shot, exit 0)
//!    │              │ (no ack in time: deploy sent again)
//!    │              └─▶ FAILED / DEAD ─▶ placed again after a backoff (1 s, 2 s, 4 s … 60 s)
//!    └─▶ NO_WORKER_CAPACITY (no worker fits; retried; the root may move it elsewhere)
//! (no longer desired) ─▶ delete sent to its worker, assignment dropped
//! ```

use oak_api::link::{ClusterAggregate, ClusterReport, DesiredInstance, FreeSlot, InstanceState};
use oak_api::net::{ServiceTable, WorkerNetwork, WorkerTables};
use oak_api::node::{self, DeleteCommand, InstanceEvent, NodeInfo, RegisterRequest};
use oak_api::{ServiceId, Status};
use oak_sched::{Candidate, Policy, Request, Resources, Slot, Snapshot};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;

pub type Key = (ServiceId, u32);

/// What the root holds of this cluster on the current link connection: the link's own delta
/// encoding (the full report once, then deltas), usable without a socket.
pub use crate::link::Sent;

/// A message to publish on the broker.
#[derive(Clone, Debug, PartialEq)]
pub struct Out {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// A message that cannot be encoded: it is not published (an empty payload never is).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode the message for {topic}: {source}")]
pub struct EncodeError {
    pub topic: String,
    pub source: serde_json::Error,
}

/// `msg` as JSON, to publish on `topic`.
fn out<T: Serialize>(topic: String, msg: &T) -> Result<Out, EncodeError> {
    match serde_json::to_vec(msg) {
        Ok(payload) => Ok(Out { topic, payload }),
        Err(source) => Err(EncodeError { topic, source }),
    }
}

/// The message, or (logged) nothing when it cannot be encoded.
fn logged(o: Result<Out, EncodeError>) -> Option<Out> {
    o.map_err(|e| tracing::error!(error = %e, "a message was not sent")).ok()
}

/// A changed assignment as the store should hold it, by `service/number`: its JSON, or `None`
/// when it went.
pub type Stored = (String, Option<Vec<u8>>);

/// The store records of the assignments `dirty`, and the errors of those that cannot be
/// encoded: they get no record (what is stored for them stays as it was, never empty bytes).
pub fn encode_assignments<A: Serialize>(
    assignments: &BTreeMap<Key, A>,
    dirty: impl IntoIterator<Item = Key>,
) -> (Vec<Stored>, Vec<(String, serde_json::Error)>) {
    let (mut records, mut errors) = (Vec::new(), Vec::new());
    for k in dirty {
        let key = format!("{}/{}", k.0, k.1);
        match assignments.get(&k).map(serde_json::to_vec) {
            Some(Ok(bytes)) => records.push((key, Some(bytes))),
            Some(Err(e)) => errors.push((key, e)),
            None => records.push((key, None)),
        }
    }
    (records, errors)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerRec {
    pub id: String,
    pub reg: RegisterRequest,
    pub mqtt_password_hash: String,
    /// sha256 of the secret issued with the id: a re-registration as this node must show it.
    #[serde(default)]
    pub node_secret_hash: Option<String>,
    #[serde(skip)]
    pub last_seen: f64,
    #[serde(skip)]
    pub info: Option<NodeInfo>,
    /// The worker's overlay subnet, as the root allocated it (the root keeps it; it is sent
    /// again on every connection, so it is not stored here).
    #[serde(skip)]
    pub subnet: Option<Ipv4Addr>,
    /// It has reported over MQTT at least once (kept across restarts of the cluster and of the
    /// worker). Only such workers are listed to the root, which gives each a subnet: a
    /// registration alone proves nothing. A record from before this field counts as reported.
    #[serde(default = "reported_before")]
    pub reported: bool,
}

/// A stored worker record without `reported` was written before it existed: it keeps its subnet.
fn reported_before() -> bool {
    true
}

impl WorkerRec {
    /// A worker as registered: not active until it reports, no broker login, no subnet yet.
    pub fn new(id: String, reg: RegisterRequest) -> Self {
        Self {
            id,
            reg,
            mqtt_password_hash: String::new(),
            node_secret_hash: None,
            last_seen: f64::MIN,
            info: None,
            subnet: None,
            reported: false,
        }
    }

    fn capacity(&self) -> Resources {
        Resources::new((self.reg.cpu_cores * 1000.0) as u64, self.reg.memory_mb, self.reg.gpus)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Assignment {
    pub worker: Option<String>,
    pub status: Status,
    pub detail: String,
    /// When the status last changed (Unix seconds).
    pub since: f64,
    /// Placements after failures, for the backoff.
    pub attempts: u32,
    pub next_try: f64,
    /// When the deploy command was last sent.
    pub sent: f64,
    /// Its address in its worker's subnet, once attached.
    #[serde(default)]
    pub ns_ip: Option<Ipv4Addr>,
}

/// Timing of the cluster's decisions.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// A worker silent this long is inactive.
    pub heartbeat_timeout: f64,
    /// A deploy not acknowledged this long is sent again.
    pub deploy_ack_timeout: f64,
    /// Longest wait between placements of a crash-looping instance.
    pub backoff_cap: f64,
    /// A run this long resets the backoff.
    pub healthy_run: f64,
    /// A worker not heard from this long, with nothing assigned, is forgotten: its record,
    /// its broker login and (at the root) its overlay subnet go. It can register again.
    pub forget_after: f64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            heartbeat_timeout: 6.0,
            deploy_ack_timeout: 3.0,
            backoff_cap: 60.0,
            healthy_run: 30.0,
            forget_after: 24.0 * 3600.0,
        }
    }
}

#[derive(Default)]
pub struct Core {
    pub workers: BTreeMap<String, WorkerRec>,
    pub desired: BTreeMap<Key, DesiredInstance>,
    /// False until the root sent its first desired set: nothing is removed before.
    pub desired_known: bool,
    /// Where each instance is (or why it is nowhere). Changed only through [`Core::set`],
    /// [`Core::slot`], [`Core::restore`] and the removal in [`Core::reconcile`], which keep
    /// `by_worker` true.
    assignments: BTreeMap<Key, Assignment>,
    /// The assignments of each worker: a worker's report is checked against its own
    /// instances, not against all of the cluster's.
    by_worker: HashMap<String, BTreeSet<Key>>,
    pub timing: Timing,
    pub policy: Policy,
    /// Assignments changed (or removed) since [`take_dirty`](Core::take_dirty): what the
    /// cluster must write to its store, without re-serializing every assignment per message.
    dirty: BTreeSet<Key>,
    /// Overlay tables from the root for the interests of this cluster's workers.
    pub tables: Vec<ServiceTable>,
    /// What each worker was last sent, and its digest, so only changes go out (and the
    /// tables are not serialized again at every report to compare digests).
    sent_tables: BTreeMap<String, (Vec<ServiceTable>, u64)>,
    /// Something the root sees changed (an assignment, a worker's schedulability, the
    /// interests): the report goes up at once instead of with the next periodic one.
    report_due: bool,
    /// When each worker was last heard from (registration or any message); unlike
    /// `last_seen`, never set back by a lost connection.
    heard: HashMap<String, f64>,
    /// Probing, users' coordinates, the summary for the root (`ldp.rs`).
    pub ldp: crate::ldp::Ldp,
    /// SLA monitoring and migrations of running instances (`core/monitor.rs`).
    pub monitor: monitor::Monitor,
}

/// What the placements of one reconcile pass share: the snapshot, built at the first
/// placement and reserved as instances are placed, and the requests already refused (within a
/// pass free space only shrinks, so a refusal stays true). Placing n instances on w workers
/// costs O(w + assignments) once plus O(log w) each, instead of a snapshot per instance.
#[derive(Default)]
struct Pass {
    snapshot: Option<Snapshot>,
    refused: HashMap<Request, oak_sched::Rejection>,
}

fn live(s: Status) -> bool {
    matches!(s, Status::NodeScheduled | Status::Creating | Status::Running)
}

fn resources_of(d: &DesiredInstance) -> Resources {
    Resources::new(d.spec.millicpu(), d.spec.memory, d.spec.vgpus as u32)
}

fn request_of(d: &DesiredInstance) -> Request {
    Request {
        resources: resources_of(d),
        runtime: d.spec.virtualization.clone(),
        arch: d.spec.arch.clone(),
        direct: d.spec.direct_targets(oak_api::sla::DirectTier::Node),
        exclude: vec![],
        addons: d.spec.addons_needed(),
        ..Default::default()
    }
}

/// A worker as a scheduling candidate: its one slot, its coordinate and location (a ball and
/// a disc of radius 0), its addons.
pub(crate) fn candidate_of(w: &WorkerRec) -> Candidate {
    use oak_api::ldp::{CoordCircle, GeoCircle};
    Candidate {
        id: w.id.clone(),
        name: w.reg.name.clone(),
        slots: vec![Slot { arch: w.reg.arch.clone(), runtimes: w.reg.runtimes.clone(), capacity: w.capacity() }],
        space: w
            .info
            .as_ref()
            .and_then(|i| i.coord)
            .map(|coord| CoordCircle { coord, radius_ms: 0.0 })
            .into_iter()
            .collect(),
        area: w
            .reg
            .location
            .as_deref()
            .and_then(oak_api::net::parse_location)
            .map(|(lat, lon)| GeoCircle { lat, lon, radius_km: 0.0 })
            .into_iter()
            .collect(),
        addons: w.reg.addons.clone(),
    }
}

/// What this cluster measured: where users are and the RTTs workers measured to them, and
/// the RTTs workers measured to other workers (from their reports).
impl oak_sched::objectives::Lookups for Core {
    fn user(&self, user: std::net::IpAddr) -> Option<(oak_api::ldp::Coord, Vec<(String, f64)>)> {
        self.ldp.user_with_measurements(user)
    }

    fn to_workers(&self, targets: &[&str]) -> Vec<(String, f64)> {
        self.workers
            .values()
            .filter_map(|w| {
                // A worker that hosts a target is 0 ms from it.
                if targets.contains(&w.id.as_str()) {
                    return Some((w.id.clone(), 0.0));
                }
                let rtts = &w.info.as_ref()?.rtts;
                let best = rtts.iter().filter(|r| targets.contains(&r.peer.as_str())).map(|r| r.ms).reduce(f64::min)?;
                Some((w.id.clone(), best))
            })
            .collect()
    }
}

/// What a placement predicts for the request's objectives, for the status detail:
/// `" (12.3 ms to service db)"`, or nothing without objectives.
fn predicted(c: &Candidate, req: &Request) -> String {
    let parts: Vec<String> = req
        .objectives
        .iter()
        .filter_map(|o| {
            let best = |f: &dyn Fn(&oak_sched::Point) -> Option<f64>| {
                o.points.iter().filter_map(f).fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))))
            };
            if o.max_ms.is_some() {
                best(&|p| oak_sched::predicted_ms(c, p)).map(|v| format!("{v:.1} ms to {}", o.label))
            } else {
                best(&|p| oak_sched::distance_km(c, p)).map(|v| format!("{v:.1} km from {}", o.label))
            }
        })
        .collect();
    if parts.is_empty() { String::new() } else { format!(" (predicted {})", parts.join(", ")) }
}

impl Core {
    /// An assignment to change; it will be written to the store.
    fn slot(&mut self, k: &Key) -> Option<&mut Assignment> {
        let a = self.assignments.get_mut(k)?;
        self.dirty.insert(k.clone());
        self.report_due = true;
        Some(a)
    }

    /// Every assignment, by instance.
    pub fn assignments(&self) -> &BTreeMap<Key, Assignment> {
        &self.assignments
    }

    /// Puts back an assignment read from the store (at start).
    pub fn restore(&mut self, k: Key, a: Assignment) {
        let new = a.worker.clone();
        let old = self.assignments.insert(k.clone(), a).and_then(|o| o.worker);
        self.reindex(&k, old.as_deref(), new.as_deref());
    }

    /// Moves `k` from `old`'s assignments to `new`'s in `by_worker`.
    fn reindex(&mut self, k: &Key, old: Option<&str>, new: Option<&str>) {
        if old == new {
            return;
        }
        self.unindex(k, old);
        if let Some(w) = new {
            self.by_worker.entry(w.to_owned()).or_default().insert(k.clone());
        }
    }

    fn unindex(&mut self, k: &Key, worker: Option<&str>) {
        if let Some(w) = worker
            && let Some(keys) = self.by_worker.get_mut(w)
        {
            keys.remove(k);
            if keys.is_empty() {
                self.by_worker.remove(w);
            }
        }
    }

    /// A worker registered (or registered again, or was read from the store at start).
    pub fn add_worker(&mut self, rec: WorkerRec, now: f64) {
        self.heard.insert(rec.id.clone(), now);
        self.workers.insert(rec.id.clone(), rec);
        self.report_due = true;
    }

    /// Forgets the workers not heard from in [`Timing::forget_after`] that hold nothing;
    /// returns their ids (the caller removes their records and broker logins). Without this a
    /// cluster whose machines come and go (reinstalled, replaced) would keep every worker it
    /// ever had, and the root a subnet for each.
    pub fn forget_silent(&mut self, now: f64) -> Vec<String> {
        self.forget_silent_records(now).into_iter().map(|w| w.id).collect()
    }

    /// [`forget_silent`](Self::forget_silent), returning the forgotten records (the cluster
    /// keeps a tombstone of each, so the worker can come back as the same node).
    pub fn forget_silent_records(&mut self, now: f64) -> Vec<WorkerRec> {
        const NEVER_REPORTED_FORGET: f64 = 600.0;
        let gone: Vec<String> = self
            .workers
            .keys()
            .filter(|id| {
                // A registration that never reported holds a subnet at the root for nothing:
                // it goes after ten minutes (a holder of the worker token could otherwise
                // register until the root's subnets run out).
                let never_reported = self.workers.get(*id).is_some_and(|w| w.info.is_none());
                let limit = if never_reported {
                    self.timing.forget_after.min(NEVER_REPORTED_FORGET)
                } else {
                    self.timing.forget_after
                };
                now - self.heard.get(*id).copied().unwrap_or(now) > limit && !self.by_worker.contains_key(*id)
            })
            .cloned()
            .collect();
        let mut recs = Vec::with_capacity(gone.len());
        for id in &gone {
            recs.extend(self.workers.remove(id));
            self.heard.remove(id);
            self.sent_tables.remove(id);
            self.ldp.forget(id);
            self.report_due = true;
        }
        recs
    }

    /// True once since something the root sees changed; the caller then sends a report.
    pub fn take_report_due(&mut self) -> bool {
        std::mem::take(&mut self.report_due)
    }

    /// The keys whose assignments changed or went away since the last call.
    pub fn take_dirty(&mut self) -> BTreeSet<Key> {
        std::mem::take(&mut self.dirty)
    }

    pub fn active(&self, w: &WorkerRec, now: f64) -> bool {
        now - w.last_seen <= self.timing.heartbeat_timeout
    }

    /// Active, and (when it runs the overlay) attached to it: it can take instances.
    fn schedulable(&self, w: &WorkerRec, now: f64) -> bool {
        self.active(w, now) && w.info.as_ref().is_none_or(|i| !i.overlay || i.subnet.is_some())
    }

    /// The schedulable workers with what their live instances reserve, indexed for placement.
    /// O(workers + assignments).
    fn snapshot(&self, now: f64) -> Snapshot {
        let used = self.reserved();
        let mut snap = Snapshot::default();
        for w in self.workers.values().filter(|w| self.schedulable(w, now)) {
            let idx = snap.add(candidate_of(w));
            if let Some(u) = used.get(w.id.as_str()) {
                snap.reserve(idx, 0, u);
            }
        }
        snap
    }

    fn set(&mut self, k: &Key, worker: Option<String>, status: Status, detail: String, now: f64) {
        self.dirty.insert(k.clone());
        self.report_due = true;
        let old = self.assignments.get(k).and_then(|a| a.worker.clone());
        self.reindex(k, old.as_deref(), worker.as_deref());
        let a = self.assignments.entry(k.clone()).or_insert(Assignment {
            worker: None,
            status,
            detail: String::new(),
            since: now,
            attempts: 0,
            next_try: now,
            sent: 0.0,
            ns_ip: None,
        });
        if a.status != status || a.worker != worker {
            a.since = now;
        }
        if a.worker != worker {
            a.ns_ip = None;
        }
        a.worker = worker;
        a.status = status;
        a.detail = detail;
    }

    fn deploy(&self, k: &Key, worker: &str) -> Option<Result<Out, EncodeError>> {
        Some(out(node::topic_deploy(worker), self.desired.get(k)?))
    }

    fn delete(k: &Key, worker: &str) -> Option<Out> {
        logged(out(node::topic_delete(worker), &DeleteCommand { service_id: k.0.clone(), instance_number: k.1 }))
    }

    /// `k`'s deploy command cannot be encoded: it is not sent (never as an empty payload); the
    /// instance fails, where the root sees why, and is placed again after a backoff.
    fn unencodable(&mut self, k: &Key, e: &EncodeError, now: f64) {
        tracing::error!(service = %k.0, instance = k.1, error = %e, "cannot encode a deploy command");
        let attempts = self.assignments.get(k).map(|a| a.attempts).unwrap_or(0);
        let delay = self.backoff(attempts);
        self.set(k, None, Status::Failed, format!("its deploy command cannot be encoded: {}", e.source), now);
        if let Some(a) = self.slot(k) {
            a.next_try = now + delay;
        }
    }

    /// Places `k` on a worker (or records why it cannot be).
    fn place(&mut self, k: &Key, now: f64, outs: &mut Vec<Out>, pass: &mut Pass) {
        let Some(d) = self.desired.get(k) else { return };
        let mut req = request_of(d);
        let mut reqs = d.spec.requirements();
        // Users no worker could measure: a soft requirement about them is relaxed; a hard one
        // is refused, so that the root tries another cluster.
        let unreachable: Vec<std::net::IpAddr> = reqs
            .iter()
            .flat_map(|q| monitor::users_of(q, d.ldp.as_ref()))
            .filter(|u| self.ldp.unreachable(*u, now))
            .collect();
        if !unreachable.is_empty() {
            let about = |q: &oak_api::ldp::Requirement| {
                monitor::users_of(q, d.ldp.as_ref()).iter().any(|u| unreachable.contains(u))
            };
            if let Some(q) = reqs.iter().find(|q| q.is_hard() && about(q)) {
                let list: Vec<String> = unreachable.iter().map(ToString::to_string).collect();
                let why = format!(
                    "no worker can take it: no worker of this cluster could measure the RTT to users {} \
                     (no answer to ICMP echo nor TCP 443/80 in {} s), so \"{}\" ({}) cannot be judged",
                    list.join(", "),
                    crate::ldp::UNREACHABLE_AFTER_S,
                    q.need,
                    q.field
                );
                self.set(k, None, Status::NoWorkerCapacity, why, now);
                if let Some(a) = self.slot(k) {
                    a.next_try = now + crate::ldp::UNREACHABLE_AFTER_S;
                }
                // Keep asking: should an answer come, the user counts again.
                let hb = self.timing.heartbeat_timeout;
                outs.extend(self.ldp.locate(
                    &unreachable,
                    self.workers.values().filter(|w| now - w.last_seen <= hb),
                    now,
                ));
                return;
            }
            reqs.retain(|q| !about(q));
            let hb = self.timing.heartbeat_timeout;
            outs.extend(self.ldp.locate(&unreachable, self.workers.values().filter(|w| now - w.last_seen <= hb), now));
        }
        if !reqs.is_empty() {
            let r = oak_sched::objectives::resolve(&reqs, d.ldp.as_ref(), Some(self));
            if !r.unknown_users.is_empty() {
                let hb = self.timing.heartbeat_timeout;
                let asks =
                    self.ldp.locate(&r.unknown_users, self.workers.values().filter(|w| now - w.last_seen <= hb), now);
                let n = asks.len();
                outs.extend(asks);
                let users: Vec<String> = r.unknown_users.iter().map(ToString::to_string).collect();
                let why = if n == 0 && !self.ldp.asked(&r.unknown_users) {
                    format!(
                        "no worker of this cluster has a network coordinate yet to locate users {}",
                        users.join(", ")
                    )
                } else {
                    format!("measuring the RTT to users {} from this cluster's workers", users.join(", "))
                };
                return self.wait(k, why, now);
            }
            if !r.waiting.is_empty() {
                return self.wait(k, format!("waiting: {}", r.waiting.join("; ")), now);
            }
            // The workers predicted nearest to each user measure it first.
            let users: BTreeSet<std::net::IpAddr> =
                reqs.iter().flat_map(|q| monitor::users_of(q, d.ldp.as_ref())).collect();
            if !users.is_empty() {
                let hb = self.timing.heartbeat_timeout;
                let mut wait = false;
                for u in &users {
                    let active = self.workers.values().filter(|w| now - w.last_seen <= hb);
                    let (asks, w) = self.ldp.refine(*u, active, now);
                    outs.extend(asks);
                    wait |= w;
                }
                if wait {
                    let list: Vec<String> = users.iter().map(ToString::to_string).collect();
                    let why =
                        format!("measuring the RTT to users {} from the workers nearest to them", list.join(", "));
                    return self.wait(k, why, now);
                }
                // Their answers changed what is known: resolve again.
                let Some(d) = self.desired.get(k) else { return };
                let r = oak_sched::objectives::resolve(&reqs, d.ldp.as_ref(), Some(self));
                req.objectives = r.objectives;
            } else {
                req.objectives = r.objectives;
            }
        }
        let req_for_detail = (!req.objectives.is_empty()).then(|| req.clone());
        let placed = match pass.refused.get(&req) {
            Some(e) => Err(e.clone()),
            None => {
                let snap = pass.snapshot.get_or_insert_with(|| self.snapshot(now));
                let placed = snap.place(&req, self.policy);
                match &placed {
                    Ok(p) => snap.reserve(p.candidate, p.slot, &req.resources),
                    Err(e) => {
                        pass.refused.insert(req, e.clone());
                    }
                }
                placed
            }
        };
        match placed {
            Ok(p) => {
                let worker = p.id;
                let name = self.workers.get(&worker).map(|w| w.reg.name.clone()).unwrap_or_default();
                let why = match (&req_for_detail, self.workers.get(&worker)) {
                    (Some(r), Some(w)) => predicted(&candidate_of(w), r),
                    _ => String::new(),
                };
                match self.deploy(k, &worker) {
                    Some(Ok(o)) => outs.push(o),
                    // (What the snapshot reserved for it stays reserved until this pass ends.)
                    Some(Err(e)) => return self.unencodable(k, &e, now),
                    None => return,
                }
                self.set(k, Some(worker), Status::NodeScheduled, format!("placed on worker {name}{why}"), now);
                if let Some(a) = self.slot(k) {
                    a.sent = now;
                }
            }
            Err(e) => {
                let (status, why) = match e {
                    oak_sched::Rejection::NoCandidates => {
                        (Status::NoWorkerCapacity, "no worker can take it: no active worker in this cluster".to_owned())
                    }
                    oak_sched::Rejection::NoneFits { detail } => {
                        (Status::NoWorkerCapacity, format!("no worker can take it: {detail}"))
                    }
                };
                self.set(k, None, status, why, now);
                if let Some(a) = self.slot(k) {
                    a.next_try = now + 2.0;
                }
            }
        }
    }

    /// `k` cannot be placed yet for a reason that passes (users being measured, an S2S
    /// target not running yet): it stays REQUESTED here, saying why, and is tried again
    /// soon. (The root reads only negative statuses as a refusal.)
    fn wait(&mut self, k: &Key, why: String, now: f64) {
        tracing::debug!(service = %k.0, instance = k.1, "waits: {why}");
        self.set(k, None, Status::Requested, why, now);
        if let Some(a) = self.slot(k) {
            a.next_try = now + 1.0;
        }
    }

    /// Whether [`reconcile`](Self::reconcile) has something to do for an instance now:
    /// exactly the cases its match acts on.
    fn needs_work(&self, a: Option<&Assignment>, active: &HashSet<&str>, now: f64) -> bool {
        let Some(a) = a else { return true };
        match a.status {
            Status::Completed => false,
            Status::Dead | Status::Failed => now >= a.next_try,
            s if s.is_negative_scheduling() => now >= a.next_try,
            s if live(s) && !a.worker.as_deref().is_some_and(|w| active.contains(w)) => true,
            Status::NodeScheduled => now - a.sent >= self.timing.deploy_ack_timeout,
            Status::Requested => now >= a.next_try,
            _ => false,
        }
    }

    /// The desired instances that need work now, and the assignments no longer desired: one
    /// merge of the two sorted maps, no lookups (a tick over 60,000 instances).
    fn triage(&self, now: f64) -> (Vec<Key>, Vec<Key>) {
        let active: HashSet<&str> =
            self.workers.values().filter(|w| self.active(w, now)).map(|w| w.id.as_str()).collect();
        let (mut todo, mut gone) = (Vec::new(), Vec::new());
        let mut assigned = self.assignments.iter().peekable();
        for k in self.desired.keys() {
            while let Some((ak, _)) = assigned.next_if(|(ak, _)| *ak < k) {
                gone.push(ak.clone());
            }
            let a = assigned.next_if(|(ak, _)| *ak == k).map(|(_, a)| a);
            if self.needs_work(a, &active, now) {
                todo.push(k.clone());
            }
        }
        gone.extend(assigned.map(|(k, _)| k.clone()));
        (todo, gone)
    }

    /// Drives the assignments toward the desired set.
    pub fn reconcile(&mut self, now: f64) -> Vec<Out> {
        let mut outs = Vec::new();
        let mut pass = Pass::default();
        // Most instances need nothing; only those that do are copied out and acted on. (What is
        // no longer desired stays so while placing: placements only add desired instances.)
        let (keys, gone) = self.triage(now);
        for k in &keys {
            let Some(a) = self.assignments.get(k).cloned() else {
                self.place(k, now, &mut outs, &mut pass);
                continue;
            };
            let worker_active =
                a.worker.as_ref().and_then(|w| self.workers.get(w)).is_some_and(|w| self.active(w, now));
            match a.status {
                Status::Completed => {}
                Status::Dead | Status::Failed if now >= a.next_try => {
                    if let Some(w) = &a.worker {
                        outs.extend(Self::delete(k, w));
                    }
                    let attempts = a.attempts + 1;
                    self.place(k, now, &mut outs, &mut pass);
                    if let Some(x) = self.slot(k) {
                        x.attempts = attempts;
                    }
                }
                Status::Dead | Status::Failed => {}
                s if s.is_negative_scheduling() && now >= a.next_try => self.place(k, now, &mut outs, &mut pass),
                Status::Requested if now >= a.next_try => self.place(k, now, &mut outs, &mut pass),
                // Its worker went while a migration was under way: the new copy takes over.
                s if live(s)
                    && !worker_active
                    && self
                        .monitor
                        .moving
                        .get(k)
                        .is_some_and(|m| self.workers.get(&m.to).is_some_and(|w| self.active(w, now))) =>
                {
                    if let Some(m) = self.monitor.moving.remove(k) {
                        let (from, to) = (
                            a.worker
                                .as_ref()
                                .and_then(|w| self.workers.get(w))
                                .map(|w| w.reg.name.clone())
                                .unwrap_or_default(),
                            self.workers.get(&m.to).map(|w| w.reg.name.clone()).unwrap_or_default(),
                        );
                        let why = format!(
                            "worker {from} stopped reporting during a migration; the copy on worker {to} takes over"
                        );
                        self.set(k, Some(m.to.clone()), Status::Creating, why, now);
                        if let Some(x) = self.slot(k) {
                            x.sent = now;
                        }
                        if let Some(w) = &a.worker {
                            outs.extend(Self::delete(k, w));
                        }
                    }
                }
                s if live(s) && !worker_active => {
                    let name = a
                        .worker
                        .as_ref()
                        .and_then(|w| self.workers.get(w))
                        .map(|w| w.reg.name.clone())
                        .unwrap_or_default();
                    self.fail(k, format!("worker {name} stopped reporting; placing it elsewhere"), now);
                    // Not the instance's fault: place it again at once, without backoff.
                    if let Some(x) = self.slot(k) {
                        x.next_try = now;
                    }
                    if let Some(x) = self.assignments.get(k).cloned() {
                        if let Some(w) = &x.worker {
                            outs.extend(Self::delete(k, w));
                        }
                        self.place(k, now, &mut outs, &mut pass);
                    }
                }
                Status::NodeScheduled if now - a.sent >= self.timing.deploy_ack_timeout => {
                    match a.worker.as_ref().and_then(|w| self.deploy(k, w)) {
                        Some(Ok(o)) => outs.push(o),
                        Some(Err(e)) => {
                            if let Some(w) = &a.worker {
                                outs.extend(Self::delete(k, w));
                            }
                            self.unencodable(k, &e, now);
                            continue;
                        }
                        None => {}
                    }
                    if let Some(x) = self.slot(k) {
                        x.sent = now;
                    }
                }
                _ => {}
            }
        }
        if self.desired_known {
            for k in gone {
                self.dirty.insert(k.clone());
                self.report_due = true;
                if let Some(a) = self.assignments.remove(&k)
                    && let Some(w) = a.worker
                {
                    self.unindex(&k, Some(&w));
                    outs.extend(Self::delete(&k, &w));
                }
            }
        }
        outs
    }

    /// The wait before placing again after `attempts` earlier failures: 1 s, 2 s, 4 s … cap.
    fn backoff(&self, attempts: u32) -> f64 {
        2f64.powi(attempts.min(16) as i32).min(self.timing.backoff_cap)
    }

    /// Marks an assignment failed; it is placed again after the backoff.
    fn fail(&mut self, k: &Key, detail: String, now: f64) {
        let delay = self.assignments.get(k).map(|a| self.backoff(a.attempts)).unwrap_or(1.0);
        if let Some(a) = self.slot(k) {
            a.status = Status::Failed;
            a.detail = detail;
            a.since = now;
            a.next_try = now + delay;
        }
    }

    /// A change of the desired set (the root sends the whole set once per connection, then
    /// changes).
    pub fn change_desired(
        &mut self,
        upsert: Vec<DesiredInstance>,
        remove: Vec<oak_api::node::InstanceRef>,
        now: f64,
    ) -> Vec<Out> {
        for r in remove {
            self.desired.remove(&(r.service_id, r.instance_number));
        }
        for d in upsert {
            self.desired.insert((d.service_id.clone(), d.instance_number), d);
        }
        self.reconcile(now)
    }

    pub fn set_desired(&mut self, instances: Vec<DesiredInstance>, now: f64) -> Vec<Out> {
        self.desired = instances.into_iter().map(|d| ((d.service_id.clone(), d.instance_number), d)).collect();
        self.desired_known = true;
        self.reconcile(now)
    }

    /// A worker's periodic report: heartbeat, resources, and what it holds. O(its own
    /// instances): a cluster takes thousands of these a second. A full reconcile runs only
    /// when the report changes what can be placed (the worker came back or lost instances);
    /// the rest waits for the tick.
    pub fn node_info(&mut self, node: &str, info: NodeInfo, now: f64) -> Vec<Out> {
        let mut outs = Vec::new();
        let held: BTreeSet<Key> = info.instances.iter().map(|i| (i.service_id.clone(), i.instance_number)).collect();
        let Some(w) = self.workers.get(node) else { return outs };
        let was_schedulable = self.schedulable(w, now);
        if w.info.as_ref().is_none_or(|old| old.interests != info.interests) {
            self.report_due = true;
        }
        let Some(w) = self.workers.get_mut(node) else { return outs };
        w.last_seen = now;
        if !w.reported {
            // From now on it is listed to the root, which answers with its subnet.
            w.reported = true;
            self.report_due = true;
        }
        self.heard.insert(node.to_owned(), now);
        let ns_ips: Vec<(Key, Option<Ipv4Addr>)> =
            info.instances.iter().map(|i| ((i.service_id.clone(), i.instance_number), i.ns_ip)).collect();
        w.info = Some(info);
        for (k, ip) in ns_ips {
            if self.assignments.get(&k).is_some_and(|a| a.worker.as_deref() == Some(node) && a.ns_ip != ip)
                && let Some(a) = self.slot(&k)
            {
                a.ns_ip = ip;
            }
        }
        outs.extend(self.network_for(node));
        outs.extend(self.tables_for(node));
        // Instances it holds that are not (or no longer) its own: remove them.
        for k in &held {
            let mine = self.assignments.get(k).is_some_and(|a| a.worker.as_deref() == Some(node))
                || self.monitor.holds(k, node);
            if !mine && self.desired_known {
                outs.extend(Self::delete(k, node));
            }
        }
        // Instances it should hold but lost (e.g. it restarted).
        let lost: Vec<Key> = self
            .by_worker
            .get(node)
            .into_iter()
            .flatten()
            .filter(|k| {
                !held.contains(*k)
                    && self.assignments.get(*k).is_some_and(|a| {
                        matches!(a.status, Status::Creating | Status::Running)
                            && now - a.since > self.timing.heartbeat_timeout
                    })
            })
            .cloned()
            .collect();
        for k in &lost {
            self.fail(k, format!("worker {node} no longer holds it"), now);
        }
        let schedulable = self.workers.get(node).is_some_and(|w| self.schedulable(w, now));
        if schedulable != was_schedulable {
            self.report_due = true;
        }
        if !lost.is_empty() || (schedulable && !was_schedulable) {
            outs.extend(self.reconcile(now));
        }
        outs
    }

    /// A worker's connection died (its last will). A will from an older session of the
    /// worker (before a restart) is ignored.
    pub fn worker_lost(&mut self, node: &str, session: &str, now: f64) -> Vec<Out> {
        let Some(w) = self.workers.get_mut(node) else { return Vec::new() };
        if w.reg.session != session {
            return Vec::new();
        }
        tracing::info!(node, name = %w.reg.name, "worker connection lost");
        w.last_seen = f64::MIN;
        self.reconcile(now)
    }

    /// A status change pushed by a worker.
    pub fn instance_event(&mut self, node: &str, ev: InstanceEvent, now: f64) -> Vec<Out> {
        let k = (ev.service_id.clone(), ev.instance_number);
        let was_schedulable = self.workers.get(node).is_some_and(|w| self.schedulable(w, now));
        if let Some(w) = self.workers.get_mut(node) {
            w.last_seen = now;
            self.heard.insert(node.to_owned(), now);
        }
        // Back from silence: what waits for capacity may fit now.
        let back = !was_schedulable && self.workers.get(node).is_some_and(|w| self.schedulable(w, now));
        if self.monitor.moving.get(&k).is_some_and(|m| m.to == node) {
            return self.migration_event(&k, node, &ev, now);
        }
        let mine = self.assignments.get(&k).is_some_and(|a| a.worker.as_deref() == Some(node));
        if !mine {
            if self.monitor.holds(&k, node) {
                return Vec::new();
            }
            if ev.status != Status::Undeployed && self.desired_known {
                return Self::delete(&k, node).into_iter().collect();
            }
            return Vec::new();
        }
        if ev.ns_ip.is_some()
            && self.assignments.get(&k).is_some_and(|a| a.ns_ip != ev.ns_ip)
            && let Some(a) = self.slot(&k)
        {
            a.ns_ip = ev.ns_ip;
        }
        match ev.status {
            Status::Undeployed => {}
            Status::Dead | Status::Failed => {
                let (prev_status, since, mut attempts) =
                    self.assignments.get(&k).map(|a| (a.status, a.since, a.attempts)).unwrap_or((ev.status, now, 0));
                // A run that lasted means the instance is not crash-looping: start the backoff over.
                if prev_status == Status::Running && now - since >= self.timing.healthy_run {
                    attempts = 0;
                }
                let delay = self.backoff(attempts);
                let detail = format!("{}; placed again in {delay:.0} s (attempt {})", ev.status_detail, attempts + 1);
                self.set(&k, Some(node.to_owned()), ev.status, detail, now);
                if let Some(a) = self.slot(&k) {
                    a.attempts = attempts;
                    a.next_try = now + delay;
                }
            }
            Status::Running => {
                self.set(&k, Some(node.to_owned()), Status::Running, ev.status_detail, now);
                // A run that lasted resets the backoff later; keep attempts for now.
            }
            s => self.set(&k, Some(node.to_owned()), s, ev.status_detail, now),
        }
        // Nothing else to place now: a failed instance waits for its backoff (the tick).
        if back { self.reconcile(now) } else { Vec::new() }
    }

    /// The subnet message for a worker that runs the overlay without the subnet it was given.
    fn network_for(&self, node: &str) -> Option<Out> {
        let w = self.workers.get(node)?;
        let info = w.info.as_ref()?;
        let subnet = w.subnet?;
        (info.overlay && info.subnet != Some(subnet))
            .then(|| logged(out(node::topic_network(node), &WorkerNetwork { subnet })))
            .flatten()
    }

    /// The tables a worker asked for, when they differ from what it was last sent.
    fn tables_for(&mut self, node: &str) -> Option<Out> {
        let info = self.workers.get(node)?.info.as_ref()?;
        let interests: BTreeSet<Ipv4Addr> = info.interests.iter().copied().collect();
        let held = info.tables_digest;
        let mine: Vec<ServiceTable> = self
            .tables
            .iter()
            .filter(|t| {
                t.rr_ip
                    .iter()
                    .chain(&t.closest_ip)
                    .chain(t.instances.iter().map(|i| &i.instance_ip))
                    .any(|ip| interests.contains(ip))
            })
            .cloned()
            .collect();
        // A worker starts with no tables: nothing to send until it asks for some. What was
        // sent but did not arrive (the worker reports a different digest) goes again.
        let (sent, sent_digest) = match self.sent_tables.get(node) {
            Some((t, d)) => (t.as_slice(), Some(*d)),
            None => (&[][..], oak_api::net::try_digest(&[]).ok()),
        };
        if sent == mine.as_slice() && held.is_none_or(|d| Some(d) == sent_digest) {
            return None;
        }
        // Tables that cannot be encoded are not sent (nor recorded as sent): logged, and tried
        // again at the worker's next report.
        let digest = match oak_api::net::try_digest(&mine) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(node, error = %e, "cannot encode a worker's overlay tables");
                return None;
            }
        };
        let o = logged(out(node::topic_tables(node), &WorkerTables { tables: mine.clone() }))?;
        self.sent_tables.insert(node.to_owned(), (mine, digest));
        Some(o)
    }

    /// The root's subnets for this cluster's workers.
    pub fn set_subnets(&mut self, subnets: &BTreeMap<String, Ipv4Addr>) -> Vec<Out> {
        let mut changed = Vec::new();
        for (id, w) in self.workers.iter_mut() {
            let s = subnets.get(id).copied();
            if w.subnet != s {
                w.subnet = s;
                changed.push(id.clone());
            }
        }
        changed.iter().filter_map(|id| self.network_for(id)).collect()
    }

    /// New tables from the root: each worker gets what changed for it.
    pub fn set_tables(&mut self, tables: Vec<ServiceTable>) -> Vec<Out> {
        self.tables = tables;
        let ids: Vec<String> = self.workers.keys().cloned().collect();
        ids.iter().filter_map(|id| self.tables_for(id)).collect()
    }

    /// A worker registered again (e.g. restarted): it has no tables.
    pub fn forget_sent(&mut self, node: &str) {
        self.sent_tables.remove(node);
    }

    /// The full observed state, for the root.
    /// What the live instances of each worker reserve: the scheduler's view of free space,
    /// without building its index (one merge of the desired and assigned maps).
    fn reserved(&self) -> HashMap<&str, Resources> {
        let mut used: HashMap<&str, Resources> = HashMap::new();
        let mut desired = self.desired.iter().peekable();
        for (k, a) in &self.assignments {
            while desired.next_if(|(dk, _)| *dk < k).is_some() {}
            let Some((_, d)) = desired.next_if(|(dk, _)| *dk == k) else { continue };
            if let (Some(w), true) = (&a.worker, live(a.status)) {
                let e = used.entry(w.as_str()).or_default();
                *e = e.saturating_add(&resources_of(d));
            }
            // The new copy of a migrating instance holds its place too.
            if let Some(m) = self.monitor.moving.get(k) {
                let e = used.entry(m.to.as_str()).or_default();
                *e = e.saturating_add(&resources_of(d));
            }
        }
        used
    }

    /// A worker's answer to a measurement request.
    pub fn measured(&mut self, node: &str, reply: oak_api::ldp::MeasureReply, now: f64) {
        let coord = self.workers.get(node).and_then(|w| w.info.as_ref()).and_then(|i| i.coord);
        self.ldp.on_measured(node, coord, &reply, now);
    }

    /// The landmarks of the other clusters, from the root.
    pub fn set_landmarks(&mut self, mut peers: Vec<oak_api::ldp::ProbePeer>) {
        peers.retain(|p| !self.workers.contains_key(&p.id));
        peers.truncate(4 * oak_api::ldp::MAX_PEERS);
        self.ldp.foreign = peers;
    }

    pub fn report(&self, now: f64) -> ClusterReport {
        let used = self.reserved();
        let mut free_of: Vec<(Resources, &WorkerRec)> = Vec::new();
        let mut runtimes: BTreeSet<String> = BTreeSet::new();
        let mut agg = ClusterAggregate { workers: self.workers.len() as u32, ..ClusterAggregate::default() };
        let mut cpu_sum = 0.0;
        for w in self.workers.values().filter(|w| self.schedulable(w, now)) {
            agg.active_workers += 1;
            agg.cpu_cores += w.reg.cpu_cores;
            agg.memory_mb += w.reg.memory_mb;
            agg.gpus += w.reg.gpus;
            cpu_sum += w.info.as_ref().map(|i| i.cpu_percent).unwrap_or(0.0);
            for r in &w.reg.runtimes {
                if !runtimes.contains(r) {
                    runtimes.insert(r.clone());
                }
            }
            let free = w.capacity().saturating_sub(&used.get(w.id.as_str()).copied().unwrap_or_default());
            agg.memory_free_mb += free.memory_mb;
            free_of.push((free, w));
        }
        if agg.active_workers > 0 {
            agg.cpu_percent = cpu_sum / f64::from(agg.active_workers);
        }
        // The 16 largest distinct free slots (sorted on references; only those 16 are copied).
        free_of.sort_by(|(a, wa), (b, wb)| {
            (b.memory_mb, b.millicpu, &wb.reg.arch).cmp(&(a.memory_mb, a.millicpu, &wa.reg.arch))
        });
        let mut slots: Vec<FreeSlot> = Vec::new();
        for (free, w) in free_of {
            if slots.len() == 16 {
                break;
            }
            let same = slots.last().is_some_and(|s: &FreeSlot| {
                (s.millicpu, s.memory_mb, s.gpus, &s.arch, &s.runtimes)
                    == (free.millicpu, free.memory_mb, free.gpus, &w.reg.arch, &w.reg.runtimes)
            });
            if !same {
                slots.push(FreeSlot {
                    arch: w.reg.arch.clone(),
                    runtimes: w.reg.runtimes.clone(),
                    millicpu: free.millicpu,
                    memory_mb: free.memory_mb,
                    gpus: free.gpus,
                });
            }
        }
        agg.slots = slots;
        agg.runtimes = runtimes.into_iter().collect();
        agg.ldp = self.ldp.summary().clone();
        let active = || self.workers.values().filter(|w| self.schedulable(w, now));
        agg.landmarks = crate::ldp::Ldp::landmarks(active());
        let addons: BTreeSet<&String> = active().flat_map(|w| &w.reg.addons).collect();
        agg.addons = addons.into_iter().take(oak_api::node::MAX_ADDONS * 4).cloned().collect();
        let instances = self
            .assignments
            .iter()
            .filter(|(k, _)| self.desired.contains_key(*k))
            .map(|(k, a)| {
                let w = a.worker.as_ref().and_then(|w| self.workers.get(w));
                let usage = w
                    .and_then(|w| w.info.as_ref())
                    .and_then(|i| i.instances.iter().find(|u| u.service_id == k.0 && u.instance_number == k.1));
                InstanceState {
                    service_id: k.0.clone(),
                    instance_number: k.1,
                    status: a.status,
                    status_detail: a.detail.clone(),
                    worker_id: a.worker.clone(),
                    worker_name: w.map(|w| w.reg.name.clone()),
                    host_ip: w.map(|w| {
                        w.info.as_ref().and_then(|i| i.tunnel).map(|t| t.ip().to_string()).unwrap_or(w.reg.ip.clone())
                    }),
                    cpu_percent: usage.map(|u| u.cpu_percent),
                    memory_mb: usage.map(|u| u.memory_mb),
                    ns_ip: a.ns_ip,
                    host_port: w.and_then(|w| w.info.as_ref()).and_then(|i| i.tunnel).map(|t| t.port()),
                    location: w.and_then(|w| w.reg.location.clone()),
                    coord: w.and_then(|w| w.info.as_ref()).and_then(|i| i.coord),
                    probe: w.and_then(|w| w.info.as_ref()).and_then(|i| i.probe),
                    host_key: w.and_then(|w| w.reg.tunnel_key.clone()),
                }
            })
            .collect();
        // Only workers that reported: the root gives each listed worker a subnet, and a
        // registration alone (anyone with the worker token) must not take them.
        let workers = self.workers.values().filter(|w| w.reported).map(|w| w.id.clone()).collect();
        let interests: BTreeSet<Ipv4Addr> = self
            .workers
            .values()
            .filter(|w| self.active(w, now))
            .filter_map(|w| w.info.as_ref())
            .flat_map(|i| i.interests.iter().copied())
            .collect();
        ClusterReport { aggregate: agg, instances, workers, interests: interests.into_iter().collect() }
    }
}

mod monitor;

#[cfg(test)]
mod tests;
