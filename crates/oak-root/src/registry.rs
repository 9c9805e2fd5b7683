//! The root's state: users, organizations, applications and services, kept in the [`Store`].
//!
//! Every mutation runs under one writer lock: it reads what it must check (names, addresses,
//! ownership), builds one [`Batch`] and commits it. So a request either happens entirely or
//! not at all, and a concurrent request never sees, or races with, half of another one.
//! Reads need no lock: the store gives consistent snapshots.
//!
//! Architecture invariant: an object of one user is never returned to, or changed for,
//! another user; such requests see `NotFound`, exactly as for an id that does not exist.

use crate::clock::Clock;
use oak_api::model::{
    self, Application, ApplicationUpdate, Instance, Member, Organization, OrganizationRequest, Service, ServiceCreated,
    ServiceOutcome, User, UserUpdate,
};
use oak_api::sla::{ApplicationSpec, MicroserviceSpec, Sla, Violation};
use oak_api::{ApplicationId, ClusterId, OrganizationId, ServiceId, Status, UserId};
use oak_store::{Batch, Store, StoreError, Table};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

pub(crate) const META: Table = "meta";
const USERS: Table = "users";
const USER_NAMES: Table = "user_names";
const ORGS: Table = "orgs";
const ORG_NAMES: Table = "org_names";
const APPS: Table = "apps";
const OWNER_APPS: Table = "owner_apps";
const SERVICES: Table = "services";
const ADDRESSES: Table = "addresses";
const CLUSTERS: Table = "clusters";
const JOIN_TOKENS: Table = "join_tokens";
/// user id → `QuotaLimits` set by an Admin.
const QUOTAS: Table = "quotas";

/// Every table the root uses; the store is opened with these.
pub const TABLES: &[Table] =
    &[META, USERS, USER_NAMES, ORGS, ORG_NAMES, APPS, OWNER_APPS, SERVICES, ADDRESSES, CLUSTERS, JOIN_TOKENS, QUOTAS];

/// Default: a cluster that has not reported for this long is lost (it reports every 2 s).
pub const DEFAULT_CLUSTER_TIMEOUT_SECS: f64 = 10.0;
/// A CLUSTER_SCHEDULED instance the cluster has not taken up within this long is placed again.
pub const CLUSTER_ACK_TIMEOUT_SECS: f64 = 15.0;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{}", render_violations(.0))]
    Invalid(Vec<Violation>),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored record {table}/{key} cannot be read: {reason}")]
    Corrupt { table: Table, key: String, reason: String },
}

fn render_violations(v: &[Violation]) -> String {
    v.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

fn not_found(kind: &'static str, id: impl ToString) -> RegistryError {
    RegistryError::NotFound { kind, id: id.to_string() }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> RegistryError {
    RegistryError::Invalid(vec![Violation { field: field.into(), message: message.into() }])
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// A stored user; the hash never leaves this module except to be verified.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: UserId,
    pub name: String,
    pub email: String,
    pub created_at: String,
    pub password_hash: String,
    /// Bumped when the password changes; tokens carry it, so older tokens stop working.
    pub generation: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct OrgRecord {
    id: OrganizationId,
    name: String,
    member: Vec<Member>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct AppRecord {
    id: ApplicationId,
    owner: UserId,
    owner_name: String,
    name: String,
    namespace: String,
    desc: String,
    services: Vec<ServiceId>,
    extra: Map<String, Value>,
}

/// The semantic IPv4 addresses a service holds, asked for in the SLA or allocated.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Semantic {
    rr_ip: Option<Ipv4Addr>,
    closest_ip: Option<Ipv4Addr>,
}

/// The key under which a user name is unique: names are ASCII (letters, digits, `._-@`), and
/// two that differ only in case are the same name.
pub fn normalize_user_name(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// Allocations made within one write (not yet committed), and the allocation cursor.
#[derive(Default)]
struct Alloc {
    taken: std::collections::BTreeSet<u32>,
    cursor: Option<u32>,
    /// The pool was found full in this write: later requests fail at once, without a scan.
    exhausted: bool,
}

impl Alloc {
    /// Keeps the addresses these descriptions ask for out of allocation in this write.
    fn reserve_requested<'a>(&mut self, specs: impl IntoIterator<Item = &'a MicroserviceSpec>) {
        for s in specs {
            if let Some(a) = &s.addresses {
                for ip in [a.rr_ip, a.closest_ip].into_iter().flatten() {
                    self.taken.insert(u32::from(ip));
                }
            }
        }
    }
}

/// Service and Instance IPs come from 10.30.0.0/16 (network and broadcast excluded).
const SERVICE_POOL: (u32, u32) = (0x0A1E_0001, 0x0A1E_FFFE);

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ServiceRecord {
    id: ServiceId,
    app: ApplicationId,
    owner: UserId,
    spec: MicroserviceSpec,
    next_instance: u32,
    status: Option<Status>,
    status_detail: Option<String>,
    instances: Vec<Instance>,
    /// Per instance number: clusters that refused it (they are not tried again for it).
    #[serde(default)]
    refused_by: BTreeMap<u32, Vec<ClusterId>>,
    /// Why fewer instances exist than desired (the address plan is full), until they do.
    #[serde(default)]
    waiting: Option<String>,
    /// Desired number of instances (`replicas` in the SLA, or set by scaling); `None`: each
    /// deploy call adds one and nothing else, as in the original.
    #[serde(default)]
    desired: Option<u32>,
    #[serde(default)]
    semantic: Semantic,
    /// Overlay attachment of running instances, by instance number.
    #[serde(default)]
    net: BTreeMap<u32, network::InstanceNet>,
}

impl ServiceRecord {
    /// Semantic addresses this service holds: (address, SLA field).
    fn addresses(&self) -> Vec<(String, &'static str)> {
        let mut out = self.requested_addresses();
        for (ip, field) in [(self.semantic.rr_ip, "rr_ip"), (self.semantic.closest_ip, "closest_ip")] {
            if let Some(ip) = ip.map(|i| i.to_string())
                && !out.iter().any(|(a, _)| *a == ip)
            {
                out.push((ip, field));
            }
        }
        out.extend(self.instances.iter().filter_map(|i| i.instance_ip.clone()).map(|ip| (ip, "instance_ip")));
        out
    }

    /// The addresses the SLA asks for.
    fn requested_addresses(&self) -> Vec<(String, &'static str)> {
        let Some(a) = &self.spec.addresses else { return Vec::new() };
        let mut out = Vec::new();
        if let Some(ip) = a.rr_ip {
            out.push((ip.to_string(), "rr_ip"));
        }
        if let Some(ip) = a.closest_ip {
            out.push((ip.to_string(), "closest_ip"));
        }
        if let Some(ip) = a.rr_ip_v6 {
            out.push((ip.to_string(), "rr_ip_v6"));
        }
        if let Some(ip) = a.closest_ip_v6 {
            out.push((ip.to_string(), "closest_ip_v6"));
        }
        out
    }
}

/// A cluster as the root keeps it: identity, and its last report's aggregate.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub id: ClusterId,
    pub name: String,
    pub location: String,
    pub last_seen: f64,
    #[serde(default)]
    pub aggregate: oak_api::link::ClusterAggregate,
    /// sha256 of the secret issued to the cluster when it first joined: a link that claims
    /// this cluster (by id or by name) must show it. `None`: joined before secrets existed;
    /// the next link that claims it gets one.
    #[serde(default)]
    pub secret_hash: Option<String>,
}

/// The root's registry of users, organizations, applications and services.
pub struct Registry {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    write: Mutex<()>,
    /// A cluster silent this long is lost: not scheduled on, and its instances move.
    cluster_timeout: f64,
    /// Range (inclusive) Service and Instance IPs are allocated from.
    pool: (u32, u32),
    /// Where new ids come from (random, but for a simulation that replays a seed).
    ids: Mutex<IdSource>,
    /// Named areas for `latency` constraints, from the operator (`oak root --areas FILE`).
    areas: BTreeMap<String, oak_api::ldp::AreaDef>,
}

/// A record as stored. One that does not serialize (a map with non-string keys, a failing
/// `Serialize`) refuses the whole write with an internal error: empty bytes are never stored.
fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| RegistryError::Corrupt {
        table: "(not written)",
        key: std::any::type_name::<T>().to_owned(),
        reason: format!("it cannot be encoded: {e}"),
    })
}

#[cfg(test)]
mod encode_tests {
    /// serde_json refuses a map whose keys are not strings: that is a refused write (500),
    /// not an empty record.
    #[test]
    fn a_record_that_cannot_be_encoded_refuses_the_write() {
        let bad: std::collections::BTreeMap<(u32, u32), u32> = [((1, 2), 3)].into();
        let Err(e) = super::encode(&bad) else { panic!("a map with tuple keys was encoded") };
        assert!(matches!(e, super::RegistryError::Corrupt { .. }), "{e:?}");
        assert!(e.to_string().contains("cannot be encoded"), "{e}");
        assert_eq!(crate::http::ApiError::from(e).code.http_status(), 500);
        assert!(super::encode(&std::collections::BTreeMap::from([(1u32, 2u32)])).is_ok_and(|b| !b.is_empty()));
    }
}

impl Registry {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            write: Mutex::new(()),
            cluster_timeout: DEFAULT_CLUSTER_TIMEOUT_SECS,
            pool: SERVICE_POOL,
            ids: Mutex::new(IdSource::random()),
            areas: BTreeMap::new(),
        }
    }

    /// Takes new ids from `ids` instead of random ones (a simulation replays its seed).
    pub fn with_id_source(self, ids: IdSource) -> Self {
        *self.ids.lock() = ids;
        self
    }

    /// A fresh id for a new object.
    fn new_id(&self) -> String {
        self.ids.lock().next_id().to_string()
    }

    /// Allocates Service and Instance IPs from `first..=last` only (tests use a small pool).
    pub fn with_address_pool(mut self, first: Ipv4Addr, last: Ipv4Addr) -> Self {
        self.pool = (u32::from(first), u32::from(last));
        self
    }

    /// Sets how long a cluster may be silent before it counts as lost.
    pub fn with_cluster_timeout(mut self, secs: f64) -> Self {
        self.cluster_timeout = secs;
        self
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn load<T: DeserializeOwned>(&self, table: Table, key: &str) -> Result<Option<T>> {
        match self.store.get(table, key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| RegistryError::Corrupt {
                table,
                key: key.to_owned(),
                reason: e.to_string(),
            }),
        }
    }

    fn index(&self, table: Table, key: &str) -> Result<Option<String>> {
        Ok(self.store.get(table, key)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    fn load_all<T: DeserializeOwned>(&self, table: Table, prefix: &str) -> Result<Vec<T>> {
        self.store
            .scan_prefix(table, prefix)?
            .into_iter()
            .map(|(k, v)| {
                serde_json::from_slice(&v).map_err(|e| RegistryError::Corrupt { table, key: k, reason: e.to_string() })
            })
            .collect()
    }

    // ---------------------------------------------------------------- meta

    /// The value of a meta key, creating it with `init` on first use.
    pub fn meta_or_init(&self, key: &str, init: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>> {
        let _w = self.write.lock();
        if let Some(v) = self.store.get(META, key)? {
            return Ok(v);
        }
        let v = init();
        let mut b = Batch::new();
        b.put(META, key, v.clone());
        self.store.commit(b)?;
        Ok(v)
    }

    // ---------------------------------------------------------------- users

    pub fn user(&self, id: &UserId) -> Result<Option<UserRecord>> {
        self.load(USERS, id.as_str())
    }

    /// The user named `name`, without regard to case (`admin` is `Admin`).
    pub fn user_by_name(&self, name: &str) -> Result<Option<UserRecord>> {
        match self.index(USER_NAMES, &normalize_user_name(name))? {
            Some(id) => self.user(&UserId(id)),
            None => Ok(None),
        }
    }

    fn user_by_name_or_404(&self, name: &str) -> Result<UserRecord> {
        self.user_by_name(name)?.ok_or_else(|| not_found("user", name))
    }

    pub fn org_by_name(&self, name: &str) -> Result<Option<OrganizationId>> {
        Ok(self.index(ORG_NAMES, name)?.map(OrganizationId))
    }

    fn org(&self, id: &OrganizationId) -> Result<Option<OrgRecord>> {
        self.load(ORGS, id.as_str())
    }

    /// The roles of `user` in `org` (empty when not a member).
    pub fn roles(&self, user: &UserId, org: &OrganizationId) -> Result<Vec<String>> {
        Ok(self
            .org(org)?
            .and_then(|o| o.member.into_iter().find(|m| m.user_id == *user))
            .map(|m| m.roles)
            .unwrap_or_default())
    }

    fn public_user(&self, u: &UserRecord, org: &OrganizationId) -> Result<User> {
        Ok(User {
            id: u.id.clone(),
            name: u.name.clone(),
            email: u.email.clone(),
            created_at: u.created_at.clone(),
            roles: self.roles(&u.id, org)?,
        })
    }

    /// Creates the `root` organization and the `Admin` user when missing. Returns true when
    /// the Admin user was created now.
    pub fn bootstrap(&self, admin_password_hash: impl FnOnce() -> String) -> Result<bool> {
        let _w = self.write.lock();
        let mut b = Batch::new();
        // Stores from before names were unique without regard to case are indexed by the
        // name as given: index them by the normalized name (the first of a clash keeps it).
        // The bootstrap Admin keeps its name whatever else clashes with it.
        let mut seen = std::collections::BTreeSet::new();
        let mut freed = std::collections::BTreeSet::new();
        let mut entries = self.store.scan_prefix(USER_NAMES, "")?;
        entries.sort_by_key(|(k, _)| k != model::ADMIN_ROLE);
        if entries.iter().any(|(k, _)| k == model::ADMIN_ROLE)
            && let Some(pos) = entries.iter().position(|(k, _)| k == "admin")
        {
            // A user who registered as "admin" before names were compared without case loses
            // the name to the bootstrap Admin (and can be renamed by an Admin).
            let (_, id) = entries.remove(pos);
            tracing::warn!(user_id = %String::from_utf8_lossy(&id), "user \"admin\" clashes with Admin: it can no longer log in by name");
            b.delete(USER_NAMES, "admin");
            freed.insert("admin".to_owned());
        }
        for (key, id) in entries {
            let norm = normalize_user_name(&key);
            if norm != key {
                b.delete(USER_NAMES, key.clone());
                if (freed.contains(&norm) || self.store.get(USER_NAMES, &norm)?.is_none()) && seen.insert(norm.clone())
                {
                    b.put(USER_NAMES, norm, id);
                } else {
                    tracing::warn!(user = %key, "a user whose name differs only in case from another's can no longer log in by name");
                }
            }
        }
        let mut org = match self.org_by_name(model::ROOT_ORGANIZATION)? {
            Some(id) => self.org(&id)?.ok_or_else(|| not_found("organization", &id))?,
            None => {
                let id = OrganizationId(self.new_id());
                b.put(ORG_NAMES, model::ROOT_ORGANIZATION, id.as_str().as_bytes().to_vec());
                OrgRecord { id, name: model::ROOT_ORGANIZATION.to_owned(), member: Vec::new() }
            }
        };
        let created = match self.user_by_name(model::ADMIN_ROLE)? {
            Some(_) => false,
            None => {
                let user = UserRecord {
                    id: UserId(self.new_id()),
                    name: model::ADMIN_ROLE.to_owned(),
                    email: String::new(),
                    created_at: self.clock.now_rfc3339(),
                    password_hash: admin_password_hash(),
                    generation: 0,
                };
                org.member.push(Member { user_id: user.id.clone(), roles: model::ROLES.map(str::to_owned).to_vec() });
                b.put(USER_NAMES, normalize_user_name(&user.name), user.id.as_str().as_bytes().to_vec());
                b.put(USERS, user.id.as_str(), encode(&user)?);
                true
            }
        };
        b.put(ORGS, org.id.as_str(), encode(&org)?);
        self.store.commit(b)?;
        Ok(created)
    }

    fn check_roles(roles: &[String], field: &str) -> Result<()> {
        for (i, r) in roles.iter().enumerate() {
            if !model::ROLES.contains(&r.as_str()) {
                return Err(invalid(
                    format!("{field}[{i}]"),
                    format!("unknown role {r:?}; expected one of {}", model::ROLES.join(", ")),
                ));
            }
        }
        Ok(())
    }

    fn check_email(email: &str) -> Result<()> {
        if email.len() > 254 || email.chars().any(char::is_control) {
            return Err(invalid("email", "must be at most 254 characters, without control characters"));
        }
        Ok(())
    }

    fn check_user_name(name: &str) -> Result<()> {
        let ok =
            (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
        if ok { Ok(()) } else { Err(invalid("name", format!("must be 1-64 letters, digits or ._-@, got {name:?}"))) }
    }

    /// Registers a user in `org` with `roles`. `password_hash` is already computed.
    pub fn create_user(
        &self,
        org: &OrganizationId,
        name: &str,
        email: &str,
        roles: Vec<String>,
        password_hash: String,
    ) -> Result<User> {
        Self::check_user_name(name)?;
        Self::check_email(email)?;
        Self::check_roles(&roles, "roles")?;
        let _w = self.write.lock();
        if self.user_by_name(name)?.is_some() {
            return Err(RegistryError::Conflict(format!("user {name} already exists")));
        }
        let mut o = self.org(org)?.ok_or_else(|| not_found("organization", org))?;
        let user = UserRecord {
            id: UserId(self.new_id()),
            name: name.to_owned(),
            email: email.to_owned(),
            created_at: self.clock.now_rfc3339(),
            password_hash,
            generation: 0,
        };
        o.member.push(Member { user_id: user.id.clone(), roles });
        let mut b = Batch::new();
        b.put(USER_NAMES, normalize_user_name(name), user.id.as_str().as_bytes().to_vec());
        b.put(USERS, user.id.as_str(), encode(&user)?);
        b.put(ORGS, o.id.as_str(), encode(&o)?);
        self.store.commit(b)?;
        self.public_user(&user, org)
    }

    pub fn get_user(&self, name: &str, org: &OrganizationId) -> Result<User> {
        let u = self.user_by_name_or_404(name)?;
        self.public_user(&u, org)
    }

    pub fn list_users(&self, org: &OrganizationId, only_members: bool) -> Result<Vec<User>> {
        let members: Option<Vec<UserId>> = if only_members {
            let o = self.org(org)?.ok_or_else(|| not_found("organization", org))?;
            Some(o.member.into_iter().map(|m| m.user_id).collect())
        } else {
            None
        };
        let mut out = Vec::new();
        for u in self.load_all::<UserRecord>(USERS, "")? {
            if members.as_ref().is_none_or(|m| m.contains(&u.id)) {
                out.push(self.public_user(&u, org)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Deletes a user who owns no applications, and strips them from every organization.
    pub fn delete_user(&self, name: &str, caller: &UserId) -> Result<()> {
        let _w = self.write.lock();
        let u = self.user_by_name_or_404(name)?;
        if u.id == *caller {
            return Err(RegistryError::Conflict(format!("user {name} cannot delete itself")));
        }
        let owned = self.store.scan_prefix(OWNER_APPS, &format!("{}/", u.id))?.len();
        if owned > 0 {
            return Err(RegistryError::Conflict(format!(
                "user {name} still owns {owned} application(s); delete them first"
            )));
        }
        let mut b = Batch::new();
        for mut o in self.load_all::<OrgRecord>(ORGS, "")? {
            let before = o.member.len();
            o.member.retain(|m| m.user_id != u.id);
            if o.member.len() != before {
                b.put(ORGS, o.id.as_str(), encode(&o)?);
            }
        }
        b.delete(USERS, u.id.as_str());
        b.delete(QUOTAS, u.id.as_str());
        b.delete(USER_NAMES, normalize_user_name(&u.name));
        self.store.commit(b)?;
        Ok(())
    }

    /// Admin update. `password_hash` is the hash of `update.password`, when given.
    pub fn update_user(
        &self,
        name: &str,
        org: &OrganizationId,
        update: &UserUpdate,
        password_hash: Option<String>,
    ) -> Result<User> {
        if let Some(roles) = &update.roles {
            Self::check_roles(roles, "roles")?;
        }
        let _w = self.write.lock();
        let mut u = self.user_by_name_or_404(name)?;
        let mut b = Batch::new();
        if let Some(email) = &update.email {
            Self::check_email(email)?;
            u.email = email.clone();
        }
        if let Some(h) = password_hash {
            u.password_hash = h;
            u.generation += 1;
        }
        if let Some(roles) = &update.roles {
            let mut o = self.org(org)?.ok_or_else(|| not_found("organization", org))?;
            match o.member.iter_mut().find(|m| m.user_id == u.id) {
                Some(m) => m.roles = roles.clone(),
                None => o.member.push(Member { user_id: u.id.clone(), roles: roles.clone() }),
            }
            b.put(ORGS, o.id.as_str(), encode(&o)?);
        }
        b.put(USERS, u.id.as_str(), encode(&u)?);
        self.store.commit(b)?;
        self.public_user(&u, org)
    }

    /// Replaces the password hash of `user` (checked by the caller) and revokes older tokens.
    pub fn set_password(&self, user: &UserId, password_hash: String) -> Result<()> {
        let _w = self.write.lock();
        let mut u = self.user(user)?.ok_or_else(|| not_found("user", user))?;
        u.password_hash = password_hash;
        u.generation += 1;
        let mut b = Batch::new();
        b.put(USERS, u.id.as_str(), encode(&u)?);
        self.store.commit(b)?;
        Ok(())
    }

    // ---------------------------------------------------------------- organizations

    fn public_org(o: OrgRecord) -> Organization {
        Organization { id: o.id, name: o.name, member: o.member }
    }

    pub fn list_orgs(&self) -> Result<Vec<Organization>> {
        let mut v: Vec<Organization> =
            self.load_all::<OrgRecord>(ORGS, "")?.into_iter().map(Self::public_org).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    fn check_org(&self, req: &OrganizationRequest) -> Result<()> {
        let ok = (1..=64).contains(&req.name.len())
            && req.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
        if !ok {
            return Err(invalid("name", format!("must be 1-64 letters, digits, _ or -, got {:?}", req.name)));
        }
        for (i, m) in req.member.iter().enumerate() {
            if self.user(&m.user_id)?.is_none() {
                return Err(invalid(format!("member[{i}].user_id"), format!("no user with id {}", m.user_id)));
            }
            Self::check_roles(&m.roles, &format!("member[{i}].roles"))?;
        }
        Ok(())
    }

    pub fn create_org(&self, req: &OrganizationRequest) -> Result<Organization> {
        self.check_org(req)?;
        let _w = self.write.lock();
        if self.org_by_name(&req.name)?.is_some() {
            return Err(RegistryError::Conflict(format!("organization {} already exists", req.name)));
        }
        let o = OrgRecord { id: OrganizationId(self.new_id()), name: req.name.clone(), member: req.member.clone() };
        let mut b = Batch::new();
        b.put(ORG_NAMES, &o.name, o.id.as_str().as_bytes().to_vec());
        b.put(ORGS, o.id.as_str(), encode(&o)?);
        self.store.commit(b)?;
        Ok(Self::public_org(o))
    }

    pub fn update_org(&self, id: &OrganizationId, req: &OrganizationRequest) -> Result<Organization> {
        self.check_org(req)?;
        let _w = self.write.lock();
        let mut o = self.org(id)?.ok_or_else(|| not_found("organization", id))?;
        let mut b = Batch::new();
        if o.name != req.name {
            if o.name == model::ROOT_ORGANIZATION {
                return Err(RegistryError::Conflict("organization root cannot be renamed".into()));
            }
            if self.org_by_name(&req.name)?.is_some() {
                return Err(RegistryError::Conflict(format!("organization {} already exists", req.name)));
            }
            b.delete(ORG_NAMES, &o.name);
            b.put(ORG_NAMES, &req.name, o.id.as_str().as_bytes().to_vec());
        }
        o.name = req.name.clone();
        o.member = req.member.clone();
        b.put(ORGS, o.id.as_str(), encode(&o)?);
        self.store.commit(b)?;
        Ok(Self::public_org(o))
    }

    pub fn delete_org(&self, id: &OrganizationId) -> Result<()> {
        let _w = self.write.lock();
        let o = self.org(id)?.ok_or_else(|| not_found("organization", id))?;
        if o.name == model::ROOT_ORGANIZATION {
            return Err(RegistryError::Conflict("organization root cannot be deleted".into()));
        }
        let mut b = Batch::new();
        b.delete(ORGS, id.as_str());
        b.delete(ORG_NAMES, &o.name);
        self.store.commit(b)?;
        Ok(())
    }

    // ---------------------------------------------------------------- applications

    fn public_app(a: &AppRecord) -> Application {
        Application {
            id: a.id.clone(),
            application_name: a.name.clone(),
            application_namespace: a.namespace.clone(),
            application_desc: a.desc.clone(),
            owner: a.owner_name.clone(),
            microservices: a.services.clone(),
            extra: a.extra.clone(),
        }
    }

    fn owned_app(&self, owner: &UserId, id: &ApplicationId) -> Result<AppRecord> {
        match self.load::<AppRecord>(APPS, id.as_str())? {
            Some(a) if a.owner == *owner => Ok(a),
            _ => Err(not_found("application", id)),
        }
    }

    fn owner_apps(&self, owner: &UserId) -> Result<Vec<AppRecord>> {
        let mut out = Vec::new();
        for (k, _) in self.store.scan_prefix(OWNER_APPS, &format!("{owner}/"))? {
            let id = k.rsplit('/').next().unwrap_or_default();
            if let Some(a) = self.load::<AppRecord>(APPS, id)? {
                out.push(a);
            }
        }
        out.sort_by(|a, b| (&a.name, &a.namespace).cmp(&(&b.name, &b.namespace)));
        Ok(out)
    }

    pub fn list_apps(&self, owner: &UserId) -> Result<Vec<Application>> {
        Ok(self.owner_apps(owner)?.iter().map(Self::public_app).collect())
    }

    pub fn get_app(&self, owner: &UserId, id: &ApplicationId) -> Result<Application> {
        Ok(Self::public_app(&self.owned_app(owner, id)?))
    }

    /// Creates every application of the descriptor with its services, or nothing.
    /// Returns the ids of the created applications.
    pub fn create_applications(&self, owner: &UserRecord, sla: Sla) -> Result<Vec<ApplicationId>> {
        let _w = self.write.lock();
        let asked = sla
            .applications
            .iter()
            .flat_map(|a| &a.microservices)
            .fold(quotas::Footprint::default(), |f, m| f.plus(quotas::Footprint::of(m, m.replicas.unwrap_or(0))));
        self.check_quota(&owner.id, quotas::Footprint::default(), asked)?;
        let existing = self.owner_apps(&owner.id)?;
        let mut b = Batch::new();
        let mut alloc = Alloc::default();
        alloc.reserve_requested(sla.applications.iter().flat_map(|a| &a.microservices));
        let mut ids = Vec::new();
        for (i, spec) in sla.applications.into_iter().enumerate() {
            if existing.iter().any(|a| a.name == spec.application_name && a.namespace == spec.application_namespace) {
                return Err(RegistryError::Conflict(format!(
                    "application {}/{} already exists (applications[{i}])",
                    spec.application_name, spec.application_namespace
                )));
            }
            let ApplicationSpec { application_name, application_namespace, application_desc, microservices, extra } =
                spec;
            let mut app = AppRecord {
                id: ApplicationId(self.new_id()),
                owner: owner.id.clone(),
                owner_name: owner.name.clone(),
                name: application_name,
                namespace: application_namespace,
                desc: application_desc,
                services: Vec::new(),
                extra,
            };
            self.add_services(
                &mut b,
                &mut alloc,
                &mut app,
                microservices,
                &format!("applications[{i}].microservices"),
            )?;
            b.put(OWNER_APPS, format!("{}/{}", owner.id, app.id), Vec::new());
            b.put(APPS, app.id.as_str(), encode(&app)?);
            ids.push(app.id);
        }
        self.store.commit(b)?;
        Ok(ids)
    }

    /// Allocates a free semantic address for `holder` (in `b`), or says the pool is exhausted.
    fn allocate_ip(&self, b: &mut Batch, alloc: &mut Alloc, holder: &str) -> Result<Ipv4Addr> {
        let (lo, hi) = self.pool;
        let full = || {
            RegistryError::Conflict(format!(
                "no free address left in the service subnet {}-{}: every address is held by a service or an instance",
                Ipv4Addr::from(lo),
                Ipv4Addr::from(hi)
            ))
        };
        if alloc.exhausted {
            return Err(full());
        }
        let mut cur = match alloc.cursor {
            Some(c) => c,
            None => self
                .store
                .get(META, "next_service_ip")?
                .and_then(|v| String::from_utf8_lossy(&v).parse::<u32>().ok())
                .filter(|c| (lo..=hi).contains(c))
                .unwrap_or(lo),
        };
        for _ in lo..=hi {
            let ip = Ipv4Addr::from(cur);
            cur = if cur >= hi { lo } else { cur + 1 };
            if alloc.taken.contains(&u32::from(ip)) || self.store.get(ADDRESSES, &ip.to_string())?.is_some() {
                continue;
            }
            alloc.taken.insert(u32::from(ip));
            alloc.cursor = Some(cur);
            b.put(ADDRESSES, ip.to_string(), holder.as_bytes().to_vec());
            b.put(META, "next_service_ip", cur.to_string().into_bytes());
            return Ok(ip);
        }
        alloc.exhausted = true;
        Err(full())
    }

    /// Gives a service the Service IPs its SLA does not fix (kept across updates).
    fn allocate_service_ips(&self, b: &mut Batch, alloc: &mut Alloc, svc: &mut ServiceRecord) -> Result<()> {
        let asked = svc.spec.addresses.clone().unwrap_or_default();
        svc.semantic.rr_ip = match (asked.rr_ip, svc.semantic.rr_ip) {
            (Some(ip), _) => Some(ip),
            (None, Some(kept)) => Some(kept),
            (None, None) => Some(self.allocate_ip(b, alloc, svc.id.as_str())?),
        };
        svc.semantic.closest_ip = match (asked.closest_ip, svc.semantic.closest_ip) {
            (Some(ip), _) => Some(ip),
            (None, Some(kept)) => Some(kept),
            (None, None) => Some(self.allocate_ip(b, alloc, svc.id.as_str())?),
        };
        Ok(())
    }

    /// Adds service records for `specs` to `app` (in `b`), checking names and addresses.
    fn add_services(
        &self,
        b: &mut Batch,
        alloc: &mut Alloc,
        app: &mut AppRecord,
        specs: Vec<MicroserviceSpec>,
        path: &str,
    ) -> Result<Vec<ServiceRecord>> {
        let mut names: Vec<(String, String)> = Vec::new();
        for id in &app.services {
            if let Some(s) = self.load::<ServiceRecord>(SERVICES, id.as_str())? {
                names.push((s.spec.microservice_name, s.spec.microservice_namespace));
            }
        }
        // S2S targets may name services created in this same request.
        let mut targets: Vec<(String, Option<ServiceId>)> = Vec::new();
        for id in &app.services {
            if let Some(s) = self.load::<ServiceRecord>(SERVICES, id.as_str())? {
                targets.push((s.spec.microservice_name, Some(id.clone())));
            }
        }
        targets.extend(specs.iter().map(|s| (s.microservice_name.clone(), None)));
        for (j, spec) in specs.iter().enumerate() {
            self.check_requirements(spec, &targets, &format!("{path}[{j}]"))?;
        }
        let mut out = Vec::new();
        for (j, spec) in specs.into_iter().enumerate() {
            let key = (spec.microservice_name.clone(), spec.microservice_namespace.clone());
            if names.contains(&key) {
                return Err(RegistryError::Conflict(format!(
                    "service {}/{} already exists in application {} ({path}[{j}])",
                    key.0, key.1, app.id
                )));
            }
            names.push(key);
            let desired = spec.replicas;
            let svc = ServiceRecord {
                id: ServiceId(self.new_id()),
                app: app.id.clone(),
                owner: app.owner.clone(),
                spec,
                next_instance: 0,
                status: None,
                status_detail: None,
                instances: Vec::new(),
                refused_by: BTreeMap::new(),
                waiting: None,
                desired,
                semantic: Semantic::default(),
                net: BTreeMap::new(),
            };
            let mut svc = svc;
            for (addr, field) in svc.requested_addresses() {
                // Whose it is stays private: the holder may be another user's service.
                if self.index(ADDRESSES, &addr)?.is_some() {
                    return Err(RegistryError::Conflict(format!(
                        "{path}[{j}].addresses.{field}: {addr} is already taken"
                    )));
                }
                b.put(ADDRESSES, addr, svc.id.as_str().as_bytes().to_vec());
            }
            self.allocate_service_ips(b, alloc, &mut svc)?;
            b.put(SERVICES, svc.id.as_str(), encode(&svc)?);
            app.services.push(svc.id.clone());
            out.push(svc);
        }
        Ok(out)
    }

    pub fn update_app(&self, owner: &UserId, id: &ApplicationId, up: &ApplicationUpdate) -> Result<Application> {
        for (field, v) in
            [("application_name", &up.application_name), ("application_namespace", &up.application_namespace)]
        {
            if !oak_api::sla::is_valid_name(v) {
                return Err(invalid(field, format!("must match ^[a-zA-Z0-9]{{1,30}}$, got {v:?}")));
            }
        }
        let _w = self.write.lock();
        let mut app = self.owned_app(owner, id)?;
        if let Some(ms) = &up.microservices {
            let mut a = ms.clone();
            let mut b = app.services.clone();
            a.sort();
            b.sort();
            if a != b {
                return Err(invalid(
                    "microservices",
                    "services are added with POST /api/service and removed with DELETE /api/service/{id}",
                ));
            }
        }
        let renamed = app.name != up.application_name || app.namespace != up.application_namespace;
        if renamed
            && self
                .owner_apps(owner)?
                .iter()
                .any(|a| a.id != app.id && a.name == up.application_name && a.namespace == up.application_namespace)
        {
            return Err(RegistryError::Conflict(format!(
                "application {}/{} already exists",
                up.application_name, up.application_namespace
            )));
        }
        app.name = up.application_name.clone();
        app.namespace = up.application_namespace.clone();
        if let Some(d) = &up.application_desc {
            app.desc = d.clone();
        }
        let mut b = Batch::new();
        b.put(APPS, app.id.as_str(), encode(&app)?);
        self.store.commit(b)?;
        Ok(Self::public_app(&app))
    }

    /// Deletes an application and all its services.
    pub fn delete_app(&self, owner: &UserId, id: &ApplicationId) -> Result<()> {
        let _w = self.write.lock();
        let app = self.owned_app(owner, id)?;
        let mut b = Batch::new();
        for sid in &app.services {
            if let Some(s) = self.load::<ServiceRecord>(SERVICES, sid.as_str())? {
                Self::remove_service(&mut b, &s);
            }
        }
        b.delete(APPS, id.as_str());
        b.delete(OWNER_APPS, format!("{owner}/{id}"));
        self.store.commit(b)?;
        Ok(())
    }

    // ---------------------------------------------------------------- services

    fn remove_service(b: &mut Batch, s: &ServiceRecord) {
        for (addr, _) in s.addresses() {
            b.delete(ADDRESSES, addr);
        }
        b.delete(SERVICES, s.id.as_str());
    }

    fn render_service(s: ServiceRecord, app: &AppRecord) -> Service {
        let job_name =
            format!("{}.{}.{}.{}", app.name, app.namespace, s.spec.microservice_name, s.spec.microservice_namespace);
        let addrs = s.spec.addresses.clone().unwrap_or_default();
        let (status, status_detail) = clusters::service_status(&s);
        Service {
            id: s.id,
            application_id: s.app,
            job_name,
            app_name: app.name.clone(),
            app_ns: app.namespace.clone(),
            service_name: s.spec.microservice_name.clone(),
            service_ns: s.spec.microservice_namespace.clone(),
            image: s.spec.code.clone(),
            rr_ip: s.semantic.rr_ip.or(addrs.rr_ip).map(|a| a.to_string()),
            closest_ip: s.semantic.closest_ip.or(addrs.closest_ip).map(|a| a.to_string()),
            rr_ip_v6: addrs.rr_ip_v6.map(|a| a.to_string()),
            status,
            status_detail,
            instance_list: s.instances,
            next_instance_progressive_number: s.next_instance,
            owner: app.owner_name.clone(),
            spec: s.spec,
        }
    }

    fn owned_service(&self, owner: &UserId, id: &ServiceId) -> Result<(ServiceRecord, AppRecord)> {
        let s = match self.load::<ServiceRecord>(SERVICES, id.as_str())? {
            Some(s) if s.owner == *owner => s,
            _ => return Err(not_found("service", id)),
        };
        let app = self.owned_app(owner, &s.app)?;
        Ok((s, app))
    }

    pub fn get_service(&self, owner: &UserId, id: &ServiceId) -> Result<Service> {
        let (s, app) = self.owned_service(owner, id)?;
        Ok(Self::render_service(s, &app))
    }

    fn services_of(&self, app: &AppRecord) -> Result<Vec<Service>> {
        let mut out = Vec::with_capacity(app.services.len());
        for sid in &app.services {
            if let Some(s) = self.load::<ServiceRecord>(SERVICES, sid.as_str())? {
                out.push(Self::render_service(s, app));
            }
        }
        Ok(out)
    }

    pub fn list_services(&self, owner: &UserId, app: &ApplicationId) -> Result<Vec<Service>> {
        self.services_of(&self.owned_app(owner, app)?)
    }

    pub fn list_all_services(&self, owner: &UserId) -> Result<Vec<Service>> {
        let mut out = Vec::new();
        for app in self.owner_apps(owner)? {
            out.extend(self.services_of(&app)?);
        }
        Ok(out)
    }

    /// Adds the services of `app_spec` to the existing application `app_id`.
    pub fn create_services(
        &self,
        owner: &UserId,
        app_id: &ApplicationId,
        specs: Vec<MicroserviceSpec>,
    ) -> Result<ServiceCreated> {
        let _w = self.write.lock();
        let mut app = self.owned_app(owner, app_id)?;
        let asked = specs
            .iter()
            .fold(quotas::Footprint::default(), |f, m| f.plus(quotas::Footprint::of(m, m.replicas.unwrap_or(0))));
        self.check_quota(owner, quotas::Footprint::default(), asked)?;
        let mut b = Batch::new();
        let mut alloc = Alloc::default();
        alloc.reserve_requested(&specs);
        let created = self.add_services(&mut b, &mut alloc, &mut app, specs, "applications[0].microservices")?;
        b.put(APPS, app.id.as_str(), encode(&app)?);
        self.store.commit(b)?;
        let Some(last) = created.last() else {
            return Err(invalid("applications[0].microservices", "must contain at least one service"));
        };
        Ok(ServiceCreated {
            job_id: last.id.clone(),
            deployed_services: created
                .iter()
                .map(|s| ServiceOutcome {
                    service_name: s.spec.microservice_name.clone(),
                    id: Some(s.id.clone()),
                    status: 200,
                    message: None,
                })
                .collect(),
            failed_services: Vec::new(),
        })
    }

    /// Replaces a service's description. Running instances keep their placement.
    pub fn update_service(&self, owner: &UserId, id: &ServiceId, spec: MicroserviceSpec) -> Result<Service> {
        let _w = self.write.lock();
        let (mut s, app) = self.owned_service(owner, id)?;
        let key = (&spec.microservice_name, &spec.microservice_namespace);
        for other in &app.services {
            if other == id {
                continue;
            }
            if let Some(o) = self.load::<ServiceRecord>(SERVICES, other.as_str())?
                && (&o.spec.microservice_name, &o.spec.microservice_namespace) == key
            {
                return Err(RegistryError::Conflict(format!(
                    "service {}/{} already exists in application {}",
                    key.0, key.1, app.id
                )));
            }
        }
        let mut targets: Vec<(String, Option<ServiceId>)> = Vec::new();
        for other in &app.services {
            if other == id {
                targets.push((spec.microservice_name.clone(), Some(id.clone())));
            } else if let Some(o) = self.load::<ServiceRecord>(SERVICES, other.as_str())? {
                targets.push((o.spec.microservice_name, Some(other.clone())));
            }
        }
        self.check_requirements(&spec, &targets, "applications[0].microservices[0]")?;
        let mut b = Batch::new();
        // Free the Service IPs (Instance IPs stay with their instances) and take what the new
        // description asks for; Service IPs it does not fix are kept, so clients keep working.
        for (addr, field) in s.addresses() {
            if field != "instance_ip" {
                b.delete(ADDRESSES, addr);
            }
        }
        let before = quotas::Footprint::of_record(&s);
        if let Some(r) = spec.replicas {
            s.desired = Some(r);
        }
        s.spec = spec;
        self.check_quota(owner, before, quotas::Footprint::of_record(&s))?;
        for (addr, field) in s.requested_addresses() {
            if let Some(holder) = self.index(ADDRESSES, &addr)?
                && holder != id.as_str()
                && !holder.starts_with(&format!("{id}/"))
            {
                return Err(RegistryError::Conflict(format!("addresses.{field}: {addr} is already taken")));
            }
            b.put(ADDRESSES, addr, id.as_str().as_bytes().to_vec());
        }
        let asked = s.spec.addresses.clone().unwrap_or_default();
        for (asked_ip, kept) in [(asked.rr_ip, &mut s.semantic.rr_ip), (asked.closest_ip, &mut s.semantic.closest_ip)] {
            match (asked_ip, *kept) {
                (Some(ip), _) => *kept = Some(ip),
                (None, Some(k)) => {
                    b.put(ADDRESSES, k.to_string(), id.as_str().as_bytes().to_vec());
                }
                (None, None) => {}
            }
        }
        let mut alloc = Alloc::default();
        alloc.reserve_requested([&s.spec]);
        self.allocate_service_ips(&mut b, &mut alloc, &mut s)?;
        b.put(SERVICES, id.as_str(), encode(&s)?);
        self.store.commit(b)?;
        Ok(Self::render_service(s, &app))
    }

    /// Deletes a service and its instances, and frees its addresses.
    pub fn delete_service(&self, owner: &UserId, id: &ServiceId) -> Result<()> {
        let _w = self.write.lock();
        let (s, mut app) = self.owned_service(owner, id)?;
        let mut b = Batch::new();
        Self::remove_service(&mut b, &s);
        app.services.retain(|x| x != id);
        b.put(APPS, app.id.as_str(), encode(&app)?);
        self.store.commit(b)?;
        Ok(())
    }

    /// Asks for one more instance. Without an active cluster the instance is recorded with a
    /// negative scheduling status that says so; it is placed when a cluster can take it.
    pub fn request_instance(&self, owner: &UserId, id: &ServiceId) -> Result<Instance> {
        let _w = self.write.lock();
        let (mut s, _) = self.owned_service(owner, id)?;
        let before = quotas::Footprint::of_record(&s);
        // Each deploy call adds one, as in the original; with a desired count, it grows by one.
        if let Some(d) = s.desired.as_mut() {
            *d += 1;
        }
        let after = quotas::Footprint::of(&s.spec, s.desired.unwrap_or(0).max(s.instances.len() as u32 + 1));
        self.check_quota(owner, before, after)?;
        if s.desired.unwrap_or(0).max(s.instances.len() as u32 + 1) > oak_api::sla::MAX_REPLICAS {
            return Err(invalid(
                "replicas",
                format!("service {id} has the most instances a service may have ({})", oak_api::sla::MAX_REPLICAS),
            ));
        }
        let mut b = Batch::new();
        let initial = self.initial_status()?;
        let instance = self.add_instance(&mut b, &mut Alloc::default(), &mut s, &initial)?;
        b.put(SERVICES, id.as_str(), encode(&s)?);
        self.store.commit(b)?;
        Ok(instance)
    }

    /// Sets a service's desired number of instances; the scheduler adds or removes instances
    /// to match (removing the newest first).
    pub fn set_replicas(&self, owner: &UserId, id: &ServiceId, replicas: u32) -> Result<Service> {
        if replicas > oak_api::sla::MAX_REPLICAS {
            return Err(invalid("replicas", format!("must be at most {}, got {replicas}", oak_api::sla::MAX_REPLICAS)));
        }
        let _w = self.write.lock();
        let (mut s, app) = self.owned_service(owner, id)?;
        let before = quotas::Footprint::of_record(&s);
        s.desired = Some(replicas);
        self.check_quota(owner, before, quotas::Footprint::of_record(&s))?;
        let mut b = Batch::new();
        b.put(SERVICES, id.as_str(), encode(&s)?);
        self.store.commit(b)?;
        Ok(Self::render_service(s, &app))
    }

    /// The status a new instance starts with: REQUESTED when some cluster is active, else a
    /// negative status that says why none can take it.
    fn initial_status(&self) -> Result<(Status, String)> {
        let now = self.clock.now_unix();
        let clusters = self.load_all::<ClusterRecord>(CLUSTERS, "")?;
        let active = clusters.iter().filter(|c| now - c.last_seen <= self.cluster_timeout).count();
        Ok(if active == 0 {
            (Status::NoActiveClusterWithCapacity, no_active_cluster(clusters.len(), self.cluster_timeout))
        } else {
            (Status::Requested, "Waiting for scheduling decision".to_owned())
        })
    }

    fn add_instance(
        &self,
        b: &mut Batch,
        alloc: &mut Alloc,
        s: &mut ServiceRecord,
        initial: &(Status, String),
    ) -> Result<Instance> {
        let now = self.clock.now_unix();
        let holder = format!("{}/{}", s.id, s.next_instance);
        let instance_ip = self.allocate_ip(b, alloc, &holder)?;
        let (status, detail) = initial.clone();
        let instance = Instance {
            instance_number: s.next_instance,
            status,
            status_detail: detail.clone(),
            cluster_id: None,
            cluster_location: None,
            worker_id: None,
            worker_name: None,
            instance_ip: Some(instance_ip.to_string()),
            host_ip: None,
            publicip: None,
            cpu_percent: None,
            memory_percent: None,
            memory_mb: None,
            logs: None,
            last_modified_timestamp: now,
        };
        s.next_instance += 1;
        s.instances.push(instance.clone());
        s.status = Some(status);
        s.status_detail = Some(detail);
        Ok(instance)
    }

    /// Adds or removes instances of services with a desired count. Returns true on a change.
    pub fn reconcile_replicas(&self) -> Result<bool> {
        let _w = self.write.lock();
        let mut b = Batch::new();
        let mut alloc = Alloc::default();
        let mut initial = None;
        for mut s in self.load_all::<ServiceRecord>(SERVICES, "")? {
            let Some(want) = s.desired else { continue };
            // A count stored before the cap existed is held to it.
            let want = want.min(oak_api::sla::MAX_REPLICAS);
            let have = s.instances.len() as u32;
            if have == want {
                continue;
            }
            if have < want && initial.is_none() {
                initial = Some(self.initial_status()?);
            }
            if let Some(init) = &initial {
                for _ in have..want {
                    // One service that cannot get what it asks for (the address pool is
                    // full) keeps what it has and says why; everyone else's go on.
                    if let Err(e) = self.add_instance(&mut b, &mut alloc, &mut s, init) {
                        let detail = format!("{} of {want} instances exist; the rest wait: {e}", s.instances.len());
                        if s.waiting.as_deref() != Some(detail.as_str()) {
                            s.waiting = Some(detail);
                            b.put(SERVICES, s.id.as_str(), encode(&s)?);
                        }
                        break;
                    }
                }
                if have < want && s.instances.len() as u32 == have {
                    continue;
                }
            }
            if have > want {
                s.instances.sort_by_key(|i| i.instance_number);
                for gone in s.instances.split_off(want as usize) {
                    s.refused_by.remove(&gone.instance_number);
                    if let Some(ip) = gone.instance_ip {
                        b.delete(ADDRESSES, ip);
                    }
                }
            }
            if s.instances.len() as u32 >= want {
                s.waiting = None;
            }
            b.put(SERVICES, s.id.as_str(), encode(&s)?);
        }
        let changed = !b.is_empty();
        if changed {
            self.store.commit(b)?;
        }
        Ok(changed)
    }

    /// Removes instance `number` of a service.
    pub fn remove_instance(&self, owner: &UserId, id: &ServiceId, number: u32) -> Result<()> {
        let _w = self.write.lock();
        let (mut s, _) = self.owned_service(owner, id)?;
        let Some(pos) = s.instances.iter().position(|i| i.instance_number == number) else {
            return Err(not_found("instance", format!("{number} of service {id}")));
        };
        let gone = s.instances.remove(pos);
        s.refused_by.remove(&number);
        if s.instances.is_empty() {
            s.status = None;
            s.status_detail = None;
        }
        let mut b = Batch::new();
        if let Some(ip) = gone.instance_ip {
            b.delete(ADDRESSES, ip);
        }
        b.put(SERVICES, id.as_str(), encode(&s)?);
        self.store.commit(b)?;
        Ok(())
    }

    // ---------------------------------------------------------------- clusters

    pub fn list_clusters(&self, active_only: bool) -> Result<Vec<model::Cluster>> {
        let now = self.clock.now_unix();
        let mut out: Vec<model::Cluster> = self
            .load_all::<ClusterRecord>(CLUSTERS, "")?
            .into_iter()
            .map(|c| model::Cluster {
                active: now - c.last_seen <= self.cluster_timeout,
                id: c.id,
                cluster_name: c.name,
                cluster_location: c.location,
                active_nodes: c.aggregate.active_workers,
                virtualization: c.aggregate.runtimes,
                aggregated_cpu_percent: c.aggregate.cpu_percent,
                memory_in_mb: c.aggregate.memory_mb,
                total_cpu_cores: c.aggregate.cpu_cores,
                total_gpu_cores: u64::from(c.aggregate.gpus),
                last_modified_timestamp: c.last_seen,
                workers: c.aggregate.workers,
                memory_free_mb: c.aggregate.memory_free_mb,
                area: c.aggregate.ldp.area,
                space: c.aggregate.ldp.space,
                addons: c.aggregate.addons,
            })
            .filter(|c| !active_only || c.active)
            .collect();
        out.sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
        Ok(out)
    }
}

mod clusters;
mod ids;
mod ldp;
pub use ldp::parse_areas;
mod network;
mod quotas;
mod tokens;
pub use clusters::{LogsTarget, ReportOutcome};
pub use ids::IdSource;
pub use tokens::{JoinToken, NewJoinToken};

/// Why an instance waits when no cluster is active; the same words whether the request or
/// the scheduler finds it.
pub(crate) fn no_active_cluster(known: usize, timeout: f64) -> String {
    if known == 0 {
        "no active cluster can take it: no cluster has joined this root yet".to_owned()
    } else {
        format!("no active cluster can take it: none of the {known} known clusters reported in the last {timeout} s")
    }
}

#[cfg(test)]
mod tests;
