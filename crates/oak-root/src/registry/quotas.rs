//! Per-user quotas: how many services and instances a user may hold, and how much CPU and
//! memory their instances may reserve. One user's requests can never take the whole address
//! plan (or a cluster) from everyone else.
//!
//! Usage is counted from the user's services, not kept as a counter that could drift: a
//! service counts `max(desired, existing)` instances, each reserving its SLA's `vcpus` and
//! `memory`. A request is checked, under the writer lock, against what its success would
//! leave; one over a limit is refused with `quota_exceeded` naming the limit.

use super::{QUOTAS, Registry, RegistryError, Result, ServiceRecord, encode};
use oak_api::UserId;
use oak_api::model::{ADMIN_ROLE, QuotaLimits, QuotaStatus, QuotaUpdate};
use oak_api::sla::MicroserviceSpec;
use oak_store::Batch;

/// What a user gets unless an Admin sets otherwise: more than a small deployment uses, a
/// small share of the 10.30.0.0/16 address plan (65,000 addresses).
pub const DEFAULT_QUOTA: QuotaLimits =
    QuotaLimits { services: 500, instances: 2_000, vcpus: 2_000.0, memory_mb: 4 * 1024 * 1024 };

/// What a set of services holds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Footprint {
    pub services: u64,
    pub instances: u64,
    pub millicpu: u64,
    pub memory_mb: u64,
}

impl Footprint {
    /// One service with `instances` instances of `spec`.
    pub fn of(spec: &MicroserviceSpec, instances: u32) -> Self {
        let n = u64::from(instances);
        Footprint {
            services: 1,
            instances: n,
            millicpu: ((spec.vcpus.max(0.0) * 1000.0) as u64).saturating_mul(n),
            memory_mb: spec.memory.saturating_mul(n),
        }
    }

    pub fn of_record(s: &ServiceRecord) -> Self {
        Self::of(&s.spec, s.desired.unwrap_or(0).max(s.instances.len() as u32))
    }

    pub fn plus(self, o: Footprint) -> Self {
        Footprint {
            services: self.services.saturating_add(o.services),
            instances: self.instances.saturating_add(o.instances),
            millicpu: self.millicpu.saturating_add(o.millicpu),
            memory_mb: self.memory_mb.saturating_add(o.memory_mb),
        }
    }

    fn minus(self, o: Footprint) -> Self {
        Footprint {
            services: self.services.saturating_sub(o.services),
            instances: self.instances.saturating_sub(o.instances),
            millicpu: self.millicpu.saturating_sub(o.millicpu),
            memory_mb: self.memory_mb.saturating_sub(o.memory_mb),
        }
    }

    fn limits(self) -> QuotaLimits {
        QuotaLimits {
            services: self.services,
            instances: self.instances,
            vcpus: self.millicpu as f64 / 1000.0,
            memory_mb: self.memory_mb,
        }
    }
}

impl Registry {
    /// The limits of `user`: set by an Admin, else the defaults. The bootstrap `Admin` has
    /// none unless one is set.
    pub(super) fn quota_of(&self, user: &UserId) -> Result<Option<QuotaLimits>> {
        if let Some(q) = self.load::<QuotaLimits>(QUOTAS, user.as_str())? {
            return Ok(Some(q));
        }
        let is_bootstrap_admin = self.user(user)?.is_some_and(|u| u.name == ADMIN_ROLE);
        Ok((!is_bootstrap_admin).then_some(DEFAULT_QUOTA))
    }

    /// What `user`'s services hold now.
    pub(super) fn usage_of(&self, user: &UserId) -> Result<Footprint> {
        let mut total = Footprint::default();
        for app in self.owner_apps(user)? {
            for id in &app.services {
                if let Some(s) = self.load::<ServiceRecord>(super::SERVICES, id.as_str())? {
                    total = total.plus(Footprint::of_record(&s));
                }
            }
        }
        Ok(total)
    }

    /// Refuses a change that would leave `user` over a limit: `replaced` is what the change
    /// takes away (a service being resized), `added` what it brings.
    pub(super) fn check_quota(&self, user: &UserId, replaced: Footprint, added: Footprint) -> Result<()> {
        let Some(q) = self.quota_of(user)? else { return Ok(()) };
        let now = self.usage_of(user)?;
        let after = now.minus(replaced).plus(added);
        let over = |what: &str, limit: String, used: String, after: String| {
            RegistryError::QuotaExceeded(format!(
                "quota {what} exceeded: the limit is {limit}, {used} in use, {after} after this request; \
                 an Admin can raise it (PUT /api/user/{{username}}/quota, or `oak user quota`)"
            ))
        };
        if after.services > q.services && after.services > now.services {
            return Err(over("services", q.services.to_string(), now.services.to_string(), after.services.to_string()));
        }
        if after.instances > q.instances && after.instances > now.instances {
            return Err(over(
                "instances",
                q.instances.to_string(),
                now.instances.to_string(),
                after.instances.to_string(),
            ));
        }
        let cpu = |m: u64| format!("{} vcpus", m as f64 / 1000.0);
        if after.millicpu > (q.vcpus * 1000.0) as u64 && after.millicpu > now.millicpu {
            return Err(over("vcpus", format!("{} vcpus", q.vcpus), cpu(now.millicpu), cpu(after.millicpu)));
        }
        if after.memory_mb > q.memory_mb && after.memory_mb > now.memory_mb {
            return Err(over(
                "memory_mb",
                format!("{} MB", q.memory_mb),
                format!("{} MB", now.memory_mb),
                format!("{} MB", after.memory_mb),
            ));
        }
        Ok(())
    }

    /// The limits and usage of the user `name`.
    pub fn quota(&self, name: &str) -> Result<QuotaStatus> {
        let u = self.user_by_name(name)?.ok_or_else(|| super::not_found("user", name))?;
        Ok(QuotaStatus { user: u.name, limits: self.quota_of(&u.id)?, used: self.usage_of(&u.id)?.limits() })
    }

    /// Sets (some of) the limits of the user `name` (Admin only: checked by the caller).
    /// Lowering a limit below the usage refuses new requests; it removes nothing.
    pub fn set_quota(&self, name: &str, up: &QuotaUpdate) -> Result<QuotaStatus> {
        if let Some(v) = up.vcpus
            && !(v.is_finite() && v >= 0.0)
        {
            return Err(super::invalid("vcpus", "must be a finite number, at least 0"));
        }
        let _w = self.write.lock();
        let u = self.user_by_name(name)?.ok_or_else(|| super::not_found("user", name))?;
        let mut q = self.quota_of(&u.id)?.unwrap_or(DEFAULT_QUOTA);
        if let Some(v) = up.services {
            q.services = v;
        }
        if let Some(v) = up.instances {
            q.instances = v;
        }
        if let Some(v) = up.vcpus {
            q.vcpus = v;
        }
        if let Some(v) = up.memory_mb {
            q.memory_mb = v;
        }
        let mut b = Batch::new();
        b.put(QUOTAS, u.id.as_str(), encode(&q)?);
        self.store.commit(b)?;
        Ok(QuotaStatus { user: u.name, limits: Some(q), used: self.usage_of(&u.id)?.limits() })
    }
}
