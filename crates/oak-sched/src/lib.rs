//! Placement, shared by both tiers: the root picks a cluster, a cluster picks a worker.
//!
//! A [`Snapshot`] holds candidates (workers, or clusters described by a few free "slots") and
//! the resources already reserved on them. [`Snapshot::place`] filters (runtime, architecture,
//! `direct` names, CPU, memory, GPUs), scores and picks one candidate, or says precisely why
//! none fits. [`Snapshot::reserve`] and [`Snapshot::release`] keep the accounting, so
//! concurrent requests never over-commit a candidate: the original compares requests with
//! the last telemetry sample only.
//!
//! Pure: no I/O, no clock, no randomness, and no dependence on hash-map order; equal inputs
//! give equal placements. Candidates are indexed by their largest free memory, so a placement
//! looks at few candidates even among 100,000.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Resources in the units the scheduler counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Resources {
    /// CPU in thousandths of a core.
    pub millicpu: u64,
    pub memory_mb: u64,
    pub gpus: u32,
}

impl Resources {
    pub fn new(millicpu: u64, memory_mb: u64, gpus: u32) -> Self {
        Self { millicpu, memory_mb, gpus }
    }

    /// Whether `req` fits into `self`.
    pub fn fits(&self, req: &Resources) -> bool {
        req.millicpu <= self.millicpu && req.memory_mb <= self.memory_mb && req.gpus <= self.gpus
    }

    pub fn saturating_sub(&self, o: &Resources) -> Resources {
        Resources {
            millicpu: self.millicpu.saturating_sub(o.millicpu),
            memory_mb: self.memory_mb.saturating_sub(o.memory_mb),
            gpus: self.gpus.saturating_sub(o.gpus),
        }
    }

    pub fn saturating_add(&self, o: &Resources) -> Resources {
        Resources {
            millicpu: self.millicpu.saturating_add(o.millicpu),
            memory_mb: self.memory_mb.saturating_add(o.memory_mb),
            gpus: self.gpus.saturating_add(o.gpus),
        }
    }
}

/// One place an instance could go: a worker, or (at the root) one of a cluster's workers as
/// the cluster reports them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Slot {
    pub arch: String,
    pub runtimes: Vec<String>,
    /// Resources this slot has in all.
    pub capacity: Resources,
}

/// A worker (one slot) or a cluster (one slot per distinct kind of free space it reports).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub id: String,
    pub name: String,
    pub slots: Vec<Slot>,
}

/// What an instance needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Request {
    pub resources: Resources,
    /// Runtime name as the SLA says it (`container` and `docker` are the same).
    pub runtime: String,
    /// Allowed architectures; empty means any.
    pub arch: Vec<String>,
    /// `direct` constraint: allowed candidate names (or ids); empty means any.
    pub direct: Vec<String>,
    /// Candidates not to use (they refused this instance before).
    pub exclude: Vec<String>,
}

/// How to rank the candidates that fit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// The candidate with the least free memory that still fits: packs workers, keeps large
    /// holes for large requests (ROM, maximise utilisation).
    #[default]
    BestFit,
    /// The candidate with the most free memory: spreads load.
    Spread,
}

/// Why nothing fits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// There is no candidate at all.
    NoCandidates,
    /// Candidates exist; none passes every filter. `detail` says how many failed which filter.
    NoneFits { detail: String },
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::NoCandidates => f.write_str("no candidate is available"),
            Rejection::NoneFits { detail } => f.write_str(detail),
        }
    }
}

/// `container` and `docker` name the same runtime.
pub fn normalize_runtime(r: &str) -> &str {
    match r {
        "docker" => "container",
        other => other,
    }
}

/// Maps Rust's architecture names to the OCI/Go ones the SLA uses.
pub fn normalize_arch(a: &str) -> &str {
    match a {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[derive(Clone, Debug)]
struct Entry {
    cand: Candidate,
    reserved: Vec<Resources>,
    /// Largest free memory over the slots: the index key.
    key: u64,
}

impl Entry {
    fn free(&self, i: usize) -> Resources {
        self.cand.slots[i].capacity.saturating_sub(&self.reserved[i])
    }

    fn compute_key(&self) -> u64 {
        (0..self.cand.slots.len()).map(|i| self.free(i).memory_mb).max().unwrap_or(0)
    }
}

/// A placement: which candidate, and which of its slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub candidate: usize,
    pub slot: usize,
    pub id: String,
}

/// Candidates with their reservations, indexed for placement.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    entries: Vec<Entry>,
    /// (largest free memory, candidate index).
    index: BTreeSet<(u64, usize)>,
}

#[derive(Default)]
struct Misses {
    excluded: usize,
    direct: usize,
    runtime: usize,
    arch: usize,
    cpu: usize,
    memory: usize,
    gpus: usize,
}

impl Snapshot {
    pub fn new(candidates: Vec<Candidate>) -> Self {
        let mut s = Snapshot::default();
        for c in candidates {
            s.add(c);
        }
        s
    }

    /// Adds a candidate with nothing reserved; returns its index.
    pub fn add(&mut self, cand: Candidate) -> usize {
        let reserved = vec![Resources::default(); cand.slots.len()];
        let mut e = Entry { cand, reserved, key: 0 };
        e.key = e.compute_key();
        let idx = self.entries.len();
        self.index.insert((e.key, idx));
        self.entries.push(e);
        idx
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn candidate(&self, idx: usize) -> Option<&Candidate> {
        self.entries.get(idx).map(|e| &e.cand)
    }

    pub fn find(&self, id: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.cand.id == id)
    }

    /// Free resources of one slot.
    pub fn free(&self, idx: usize, slot: usize) -> Option<Resources> {
        let e = self.entries.get(idx)?;
        (slot < e.cand.slots.len()).then(|| e.free(slot))
    }

    fn rekey(&mut self, idx: usize) {
        let Some(e) = self.entries.get_mut(idx) else { return };
        self.index.remove(&(e.key, idx));
        e.key = e.compute_key();
        self.index.insert((e.key, idx));
    }

    /// Reserves `res` on a slot (an instance was placed there, or already runs there).
    /// Reservations may exceed capacity (e.g. after a worker shrank); the slot then fits nothing.
    pub fn reserve(&mut self, idx: usize, slot: usize, res: &Resources) {
        if let Some(r) = self.entries.get_mut(idx).and_then(|e| e.reserved.get_mut(slot)) {
            *r = r.saturating_add(res);
            self.rekey(idx);
        }
    }

    /// Gives back what [`reserve`](Self::reserve) took.
    pub fn release(&mut self, idx: usize, slot: usize, res: &Resources) {
        if let Some(r) = self.entries.get_mut(idx).and_then(|e| e.reserved.get_mut(slot)) {
            *r = r.saturating_sub(res);
            self.rekey(idx);
        }
    }

    /// The first slot of a candidate that passes every filter, if any.
    fn fitting_slot(&self, idx: usize, req: &Request, runtime: &str) -> Option<usize> {
        let e = &self.entries[idx];
        if !req.exclude.is_empty() && req.exclude.iter().any(|x| *x == e.cand.id || *x == e.cand.name) {
            return None;
        }
        if !req.direct.is_empty() && !req.direct.iter().any(|d| *d == e.cand.name || *d == e.cand.id) {
            return None;
        }
        (0..e.cand.slots.len()).find(|&i| {
            let s = &e.cand.slots[i];
            s.runtimes.iter().any(|r| normalize_runtime(r) == runtime)
                && (req.arch.is_empty() || req.arch.iter().any(|a| normalize_arch(a) == normalize_arch(&s.arch)))
                && e.free(i).fits(&req.resources)
        })
    }

    /// Picks a candidate for `req`, or says why none fits. Does not reserve.
    pub fn place(&self, req: &Request, policy: Policy) -> Result<Placement, Rejection> {
        if self.entries.is_empty() {
            return Err(Rejection::NoCandidates);
        }
        let runtime = normalize_runtime(&req.runtime);
        let lo = (req.resources.memory_mb, 0usize);
        let hit = match policy {
            Policy::BestFit => {
                self.index.range(lo..).find_map(|&(_, idx)| self.fitting_slot(idx, req, runtime).map(|s| (idx, s)))
            }
            Policy::Spread => self
                .index
                .range(lo..)
                .rev()
                .find_map(|&(_, idx)| self.fitting_slot(idx, req, runtime).map(|s| (idx, s))),
        };
        match hit {
            Some((idx, slot)) => Ok(Placement { candidate: idx, slot, id: self.entries[idx].cand.id.clone() }),
            None => Err(Rejection::NoneFits { detail: self.explain(req, runtime) }),
        }
    }

    /// Counts, for each filter, the candidates it ruled out (each candidate counted once, at
    /// the first filter it fails, in the order the message lists them).
    fn explain(&self, req: &Request, runtime: &str) -> String {
        let mut m = Misses::default();
        for e in &self.entries {
            if req.exclude.iter().any(|x| *x == e.cand.id || *x == e.cand.name) {
                m.excluded += 1;
                continue;
            }
            if !req.direct.is_empty() && !req.direct.iter().any(|d| *d == e.cand.name || *d == e.cand.id) {
                m.direct += 1;
                continue;
            }
            // The furthest filter any slot gets through decides the reason (no allocation).
            let mut stage = 0u8; // 0 runtime, 1 arch, 2 memory, 3 cpu, 4 gpus
            for (i, sl) in e.cand.slots.iter().enumerate() {
                if !sl.runtimes.iter().any(|r| normalize_runtime(r) == runtime) {
                    continue;
                }
                stage = stage.max(1);
                if !(req.arch.is_empty() || req.arch.iter().any(|a| normalize_arch(a) == normalize_arch(&sl.arch))) {
                    continue;
                }
                stage = stage.max(2);
                let f = e.free(i);
                if f.memory_mb < req.resources.memory_mb {
                    continue;
                }
                stage = stage.max(3);
                if f.millicpu < req.resources.millicpu {
                    continue;
                }
                stage = 4;
            }
            match stage {
                0 => m.runtime += 1,
                1 => m.arch += 1,
                2 => m.memory += 1,
                3 => m.cpu += 1,
                _ => m.gpus += 1,
            }
        }
        let r = &req.resources;
        let mut parts = Vec::new();
        let mut say = |n: usize, what: String| {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        };
        say(m.excluded, "refused it before".into());
        say(m.direct, format!("are not named by the direct constraint ({})", req.direct.join(";")));
        say(m.runtime, format!("lack runtime {runtime}"));
        say(m.arch, format!("have another architecture than {}", req.arch.join("/")));
        say(m.memory, format!("have less than {} MiB memory free", r.memory_mb));
        say(m.cpu, format!("have less than {:.2} vCPU free", r.millicpu as f64 / 1000.0));
        say(m.gpus, format!("have fewer than {} GPUs free", r.gpus));
        format!("none of {} candidates fits: {}", self.entries.len(), parts.join(", "))
    }
}

#[cfg(test)]
mod tests;
