//! LDP at run time: peers for every worker, the users its instances must stay near, the
//! summary for the root, and the SLA monitor.
//!
//! Every [`CHECK_EVERY_S`], each running instance with latency or distance requirements is
//! judged from its worker: the RTT its worker *measured* to the target's worker (or to the
//! user) when there is one, else the RTT its coordinates predict. A requirement that stays
//! violated for its `convergence_time` is reported in the instance's status detail (which
//! the root shows); with `"sla_violation_strategy": "migrate"` the instance is also placed
//! again where the requirement holds: make before break, the new instance runs before the
//! old one is removed ([`RETIRE_AFTER_S`] later, once the overlay tables have moved).

use super::*;
use oak_api::ldp::{Need, ProbePeer, Requirement, ViolationStrategy};
use std::net::IpAddr;

/// How often running instances are judged.
pub const CHECK_EVERY_S: f64 = 2.0;
/// How often the worker of an instance with user requirements measures its users.
const WATCH_USERS_EVERY_S: f64 = 10.0;
/// Peer sets computed per tick, at most (each costs O(workers)).
const PEERS_PER_TICK: usize = 64;
/// A migration whose new instance does not run within this long is given up.
const MOVE_TIMEOUT_S: f64 = 120.0;
/// The old instance of a migration is removed this long after the new one runs, so that the
/// overlay tables point at the new one first: no request finds nothing.
pub const RETIRE_AFTER_S: f64 = 3.0;

#[derive(Clone, Debug)]
struct Violation {
    /// Since when each broken requirement (by its field) has been broken.
    since: BTreeMap<String, f64>,
    reported: bool,
}

/// A migration under way: the new worker, since when, and why.
#[derive(Clone, Debug)]
pub struct Move {
    pub to: String,
    pub since: f64,
    pub why: String,
}

#[derive(Debug, Default)]
pub struct Monitor {
    violating: HashMap<Key, Violation>,
    pub(super) moving: HashMap<Key, Move>,
    /// Migrations given up, per instance: how many, and when the next may start (a back-off:
    /// 30 s, 60 s, … 10 min), with the worker where the copy failed (not tried again then).
    failed_moves: HashMap<Key, (u32, f64, String)>,
    /// Old instances of finished migrations: removed from their worker at the time given.
    pub(super) retiring: Vec<(Key, String, f64)>,
    last_check: f64,
    last_watch: f64,
    /// Workers whose peers were computed, in turn.
    peer_cursor: Option<String>,
}

impl Monitor {
    /// Whether `node` may hold `k` although it is not `k`'s worker: it is the target of a
    /// migration, or the source of one that just finished.
    pub(super) fn holds(&self, k: &Key, node: &str) -> bool {
        self.moving.get(k).is_some_and(|m| m.to == node) || self.retiring.iter().any(|(rk, w, _)| rk == k && w == node)
    }
}

/// The value of one requirement for an instance on worker `w`, and whether it was measured:
/// ms for latency, km for distance. `None`: cannot be judged (no coordinate, no location).
fn value(core: &Core, w: &WorkerRec, q: &Requirement, ctx: Option<&oak_api::ldp::LdpContext>) -> Option<(f64, bool)> {
    let info = w.info.as_ref();
    let my_coord = info.and_then(|i| i.coord);
    let my_loc = w.reg.location.as_deref().and_then(oak_api::net::parse_location);
    let measured = |peer: &str| info.and_then(|i| i.rtts.iter().find(|r| r.peer == peer)).map(|r| r.ms);
    let min = |it: &mut dyn Iterator<Item = (f64, bool)>| it.min_by(|a, b| a.0.total_cmp(&b.0));
    let max = |it: &mut dyn Iterator<Item = Option<(f64, bool)>>| -> Option<(f64, bool)> {
        let mut best: Option<(f64, bool)> = None;
        for v in it {
            let v = v?;
            if best.is_none_or(|b| v.0 > b.0) {
                best = Some(v);
            }
        }
        best
    };
    let user_rtt = |u: &IpAddr| -> Option<(f64, bool)> {
        if let Some(ms) = measured(&format!("user:{u}")).or_else(|| core.ldp.measured(*u, &w.id)) {
            return Some((ms, true));
        }
        Some((my_coord?.rtt(&core.ldp.user_coord(*u)?), false))
    };
    let geo = |lat: f64, lon: f64| Some((oak_api::net::distance_km(my_loc?, (lat, lon)), true));
    match &q.need {
        Need::Geo { lat, lon, .. } => geo(*lat, *lon),
        Need::Users { users, .. } => max(&mut users.iter().map(user_rtt)),
        Need::Area { area, .. } => {
            let def = ctx?.areas.get(area)?;
            if def.users.is_empty() {
                let (lat, lon) = def.location.as_deref().and_then(oak_api::net::parse_location)?;
                geo(lat, lon)
            } else {
                max(&mut def.users.iter().map(user_rtt))
            }
        }
        Need::ServiceLatency { target, .. } => {
            let points = ctx?.targets.get(target)?;
            min(&mut points.iter().filter_map(|p| {
                if p.worker == w.id {
                    return Some((0.0, true));
                }
                measured(&p.worker).map(|ms| (ms, true)).or_else(|| Some((my_coord?.rtt(&p.coord?), false)))
            }))
        }
        Need::ServiceGeo { target, .. } => {
            let points = ctx?.targets.get(target)?;
            min(&mut points.iter().filter_map(|p| {
                let l = p.location.as_deref().and_then(oak_api::net::parse_location)?;
                Some((oak_api::net::distance_km(my_loc?, l), true))
            }))
        }
    }
}

/// The user addresses a requirement is about.
pub(super) fn users_of(q: &Requirement, ctx: Option<&oak_api::ldp::LdpContext>) -> Vec<IpAddr> {
    match &q.need {
        Need::Users { users, .. } => users.clone(),
        Need::Area { area, .. } => ctx.and_then(|c| c.areas.get(area)).map(|a| a.users.clone()).unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn threshold(q: &Requirement) -> f64 {
    match &q.need {
        Need::Geo { km, .. } | Need::ServiceGeo { km, .. } => *km,
        Need::Area { ms, .. } | Need::Users { ms, .. } | Need::ServiceLatency { ms, .. } => *ms,
    }
}

fn unit(q: &Requirement, ctx: Option<&oak_api::ldp::LdpContext>) -> &'static str {
    match &q.need {
        Need::Geo { .. } | Need::ServiceGeo { .. } => "km",
        Need::Area { area, .. } if ctx.and_then(|c| c.areas.get(area)).is_some_and(|d| d.users.is_empty()) => "km",
        _ => "ms",
    }
}

impl Core {
    /// The periodic LDP work, on the cluster's tick: peer sets (a bounded number per tick),
    /// the summary for the root, users' RTTs measured by the workers of the instances that
    /// must stay near them, the SLA check, migrations and the removal of migrated instances.
    pub fn ldp_tick(&mut self, now: f64) -> Vec<Out> {
        let mut outs = Vec::new();
        let hb = self.timing.heartbeat_timeout;
        let active = move |w: &&WorkerRec| now - w.last_seen <= hb;
        // Peers, in turn from where the last tick stopped.
        let start = self.monitor.peer_cursor.clone().unwrap_or_default();
        let due: Vec<String> = self
            .workers
            .range::<String, _>((std::ops::Bound::Excluded(start), std::ops::Bound::Unbounded))
            .map(|(id, _)| id.clone())
            .take(PEERS_PER_TICK)
            .collect();
        self.monitor.peer_cursor = if due.len() < PEERS_PER_TICK { None } else { due.last().cloned() };
        for node in due {
            let Some(w) = self.workers.get(&node) else { continue };
            if !active(&w) || w.info.as_ref().is_none_or(|i| i.probe.is_none()) {
                continue;
            }
            let watch = self.watched_by(&node);
            let workers = self.workers.values().filter(active);
            outs.extend(self.ldp.peers_for(&node, workers, &watch, now));
        }
        self.ldp.refresh_summary(self.workers.values().filter(active), now);
        if now - self.monitor.last_watch >= WATCH_USERS_EVERY_S || now < self.monitor.last_watch {
            self.monitor.last_watch = now;
            outs.extend(self.watch_users());
        }
        if now - self.monitor.last_check >= CHECK_EVERY_S || now < self.monitor.last_check {
            self.monitor.last_check = now;
            outs.extend(self.check_slas(now));
        }
        let (due, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.monitor.retiring).into_iter().partition(|r| now >= r.2);
        self.monitor.retiring = later;
        for (k, w, _) in due {
            outs.extend(Self::delete(&k, &w));
        }
        outs
    }

    /// Probe addresses of the S2S targets' workers of the instances on `node`: it measures
    /// them, so their SLA is judged by a real RTT.
    fn watched_by(&self, node: &str) -> Vec<ProbePeer> {
        let mut out: Vec<ProbePeer> = Vec::new();
        for k in self.by_worker.get(node).into_iter().flatten() {
            let Some(ctx) = self.desired.get(k).and_then(|d| d.ldp.as_ref()) else { continue };
            for p in ctx.targets.values().flatten() {
                if let Some(addr) = p.probe
                    && p.worker != node
                    && !out.iter().any(|o| o.id == p.worker)
                {
                    out.push(ProbePeer { id: p.worker.clone(), addr });
                }
            }
        }
        out.truncate(oak_api::ldp::MAX_PEERS / 2);
        out
    }

    /// Asks the worker of every running instance with user requirements to measure them.
    fn watch_users(&mut self) -> Vec<Out> {
        let mut per_worker: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for (k, a) in &self.assignments {
            let (Some(w), Status::Running) = (&a.worker, a.status) else { continue };
            let Some(d) = self.desired.get(k) else { continue };
            for q in d.spec.requirements() {
                let users = users_of(&q, d.ldp.as_ref());
                if users.is_empty() {
                    continue;
                }
                let e = per_worker.entry(w.clone()).or_default();
                for u in users {
                    if !e.contains(&u) && e.len() < oak_api::ldp::MAX_MEASURE_TARGETS {
                        e.push(u);
                    }
                }
            }
        }
        per_worker.into_iter().filter_map(|(w, users)| self.ldp.measure_request(&w, users)).collect()
    }

    /// Judges every running instance that has requirements; reports lasting violations and
    /// starts migrations.
    fn check_slas(&mut self, now: f64) -> Vec<Out> {
        let mut outs = Vec::new();
        let mut seen: HashSet<Key> = HashSet::new();
        let mut relocate: Vec<IpAddr> = Vec::new();
        let keys: Vec<Key> = self
            .assignments
            .iter()
            .filter(|(k, a)| {
                a.status == Status::Running && self.desired.get(*k).is_some_and(|d| has_requirements(&d.spec))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            seen.insert(k.clone());
            let (Some(d), Some(a)) = (self.desired.get(&k), self.assignments.get(&k)) else { continue };
            let Some(w) = a.worker.as_ref().and_then(|w| self.workers.get(w)) else { continue };
            let ctx = d.ldp.as_ref();
            let mut broken: Vec<(String, f64, String)> = Vec::new();
            for q in d.spec.requirements() {
                let Some((v, measured)) = value(self, w, &q, ctx) else { continue };
                let t = threshold(&q);
                if v > t {
                    // Where the users are may have changed: locate them again, so that a
                    // migration goes by where they are now.
                    if !self.monitor.violating.contains_key(&k) {
                        relocate.extend(users_of(&q, ctx));
                    }
                    let how = if measured { "measured" } else { "predicted" };
                    let u = unit(&q, ctx);
                    broken.push((
                        format!("{how} {v:.1} {u} for \"{}\" ({}; threshold {t} {u})", q.need, q.field),
                        q.convergence_time,
                        q.field.clone(),
                    ));
                }
            }
            if broken.is_empty() {
                if self.monitor.violating.remove(&k).is_some_and(|v| v.reported) {
                    let name = w.reg.name.clone();
                    if let Some(a) = self.slot(&k) {
                        a.detail = format!("running on worker {name}; its SLA holds again");
                    }
                }
                continue;
            }
            // Each requirement converges on its own: one that broke a moment ago does not ride
            // on another's long violation.
            let v = self
                .monitor
                .violating
                .entry(k.clone())
                .or_insert(Violation { since: BTreeMap::new(), reported: false });
            v.since.retain(|f, _| broken.iter().any(|b| b.2 == *f));
            for b in &broken {
                v.since.entry(b.2.clone()).or_insert(now);
            }
            let lasting: Vec<(String, f64)> = broken
                .into_iter()
                .filter_map(|(what, wait, field)| {
                    let lasted = now - v.since.get(&field).copied().unwrap_or(now);
                    (lasted >= wait).then_some((what, lasted))
                })
                .collect();
            if lasting.is_empty() {
                continue;
            }
            let lasted = lasting.iter().map(|l| l.1).fold(0.0, f64::max);
            let what: Vec<String> = lasting.into_iter().map(|l| l.0).collect();
            let first = !v.reported;
            v.reported = true;
            let strategy = d.spec.violation_strategy();
            let name = w.reg.name.clone();
            let detail = format!("SLA violated on worker {name} for {lasted:.0} s: {}", what.join("; "));
            if first {
                tracing::warn!(service = %k.0, instance = k.1, worker = %name, "{detail}");
            }
            let backed_off = self.monitor.failed_moves.get(&k).is_some_and(|f| now < f.1);
            if strategy == ViolationStrategy::Migrate && !self.monitor.moving.contains_key(&k) && !backed_off {
                match self.migrate(&k, &detail, now, &mut outs) {
                    Ok(()) => continue,
                    Err(why) => {
                        if let Some(a) = self.slot(&k) {
                            a.detail = format!("{detail}; cannot migrate: {why}");
                        }
                        continue;
                    }
                }
            }
            if !self.monitor.moving.contains_key(&k)
                && let Some(a) = self.slot(&k)
                && a.detail != detail
                && first
            {
                a.detail = detail;
            }
        }
        self.monitor.violating.retain(|k, _| seen.contains(k));
        self.monitor.failed_moves.retain(|k, _| self.desired.contains_key(k));
        if !relocate.is_empty() {
            relocate.sort();
            relocate.dedup();
            self.ldp.refresh(&relocate);
            let hb = self.timing.heartbeat_timeout;
            outs.extend(self.ldp.locate(&relocate, self.workers.values().filter(|w| now - w.last_seen <= hb), now));
        }
        // Migrations that went wrong or took too long.
        let stale: Vec<Key> = self
            .monitor
            .moving
            .iter()
            .filter(|(k, m)| {
                now - m.since > MOVE_TIMEOUT_S
                    || self.assignments.get(*k).is_none_or(|a| a.status != Status::Running)
                    || !self.workers.get(&m.to).is_some_and(|w| now - w.last_seen <= self.timing.heartbeat_timeout)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            outs.extend(self.abort_move(&k, "it did not start in time".into(), now));
        }
        outs
    }

    /// Places a second copy of running instance `k` where its requirements hold; the old one
    /// is removed once the new one runs ([`Core::migration_event`]).
    fn migrate(&mut self, k: &Key, detail: &str, now: f64, outs: &mut Vec<Out>) -> Result<(), String> {
        let d = self.desired.get(k).ok_or("it is no longer desired")?;
        let from = self.assignments.get(k).and_then(|a| a.worker.clone()).ok_or("it has no worker")?;
        let mut req = request_of(d);
        let reqs = d.spec.requirements();
        let users: Vec<IpAddr> = reqs.iter().flat_map(|q| users_of(q, d.ldp.as_ref())).collect();
        if self.ldp.relocating(&users, now) {
            return Err("its users are being located again".into());
        }
        let r = oak_sched::objectives::resolve(&reqs, d.ldp.as_ref(), Some(self));
        if !r.waiting.is_empty() || !r.unknown_users.is_empty() {
            return Err("its requirements cannot be judged elsewhere yet".into());
        }
        req.objectives = r.objectives;
        req.exclude = vec![from.clone()];
        if let Some((_, _, failed_on)) = self.monitor.failed_moves.get(k) {
            req.exclude.push(failed_on.clone());
        }
        // Every objective must hold at the new place: a move must make things better.
        for o in &mut req.objectives {
            o.rigidness = 1.0;
        }
        let snap = self.snapshot(now);
        let p = snap.place(&req, self.policy).map_err(|e| e.to_string())?;
        let to = p.id;
        let deploy = match self.deploy(k, &to) {
            Some(Ok(o)) => o,
            _ => return Err("its deploy command cannot be encoded".into()),
        };
        outs.push(deploy);
        let to_name = self.workers.get(&to).map(|w| w.reg.name.clone()).unwrap_or_default();
        let why = format!("{detail}; moving to worker {to_name}");
        tracing::info!(service = %k.0, instance = k.1, from = %from, to = %to, "migrating: {detail}");
        self.monitor.moving.insert(k.clone(), Move { to, since: now, why: why.clone() });
        if let Some(a) = self.slot(k) {
            a.detail = why;
        }
        Ok(())
    }

    /// Gives a migration up: the new copy goes, the instance stays where it runs.
    fn abort_move(&mut self, k: &Key, why: String, now: f64) -> Vec<Out> {
        let Some(m) = self.monitor.moving.remove(k) else { return Vec::new() };
        // The copy became the instance (its old worker went): nothing to give up.
        if self.assignments.get(k).and_then(|a| a.worker.as_deref()) == Some(m.to.as_str()) {
            return Vec::new();
        }
        let name = self.workers.get(&m.to).map(|w| w.reg.name.clone()).unwrap_or_default();
        tracing::warn!(service = %k.0, instance = k.1, to = %name, "migration given up: {why}");
        let f = self.monitor.failed_moves.entry(k.clone()).or_insert((0, 0.0, String::new()));
        f.0 += 1;
        f.1 = now + (30.0 * 2f64.powi(f.0.min(5) as i32 - 1)).min(600.0);
        f.2 = m.to.clone();
        if let Some(a) = self.slot(k)
            && a.status == Status::Running
        {
            a.detail = format!("migration to worker {name} given up: {why}; it keeps running where it is");
        }
        Self::delete(k, &m.to).into_iter().collect()
    }

    /// A status change of the new copy of a migrating instance (from worker `node`): once it
    /// runs, it becomes the instance and the old copy is retired.
    pub(super) fn migration_event(&mut self, k: &Key, node: &str, ev: &InstanceEvent, now: f64) -> Vec<Out> {
        match ev.status {
            Status::Running => {
                let Some(m) = self.monitor.moving.remove(k) else { return Vec::new() };
                let old = self.assignments.get(k).and_then(|a| a.worker.clone());
                let (from, to) = (
                    old.as_ref().and_then(|o| self.workers.get(o)).map(|w| w.reg.name.clone()).unwrap_or_default(),
                    self.workers.get(node).map(|w| w.reg.name.clone()).unwrap_or_default(),
                );
                self.set(
                    k,
                    Some(node.to_owned()),
                    Status::Running,
                    format!("migrated from worker {from} to worker {to}: {}", m.why),
                    now,
                );
                self.monitor.violating.remove(k);
                if let Some(a) = self.slot(k) {
                    a.ns_ip = ev.ns_ip;
                }
                if let Some(o) = old.filter(|o| o != node) {
                    self.monitor.retiring.push((k.clone(), o, now + RETIRE_AFTER_S));
                }
                Vec::new()
            }
            Status::Dead | Status::Failed => {
                self.abort_move(k, format!("the new copy failed: {}", ev.status_detail), now)
            }
            _ => Vec::new(),
        }
    }
}

/// Whether a service has latency or distance requirements to watch.
fn has_requirements(spec: &oak_api::sla::MicroserviceSpec) -> bool {
    spec.constraints.iter().any(|c| matches!(c.kind.as_str(), "geo" | "latency"))
        || spec.connectivity.iter().any(|c| !c.con_constraints.is_empty())
}

#[cfg(test)]
mod tests;
