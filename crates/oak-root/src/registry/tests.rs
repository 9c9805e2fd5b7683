use super::*;
use crate::clock::Clock;
use oak_api::model::QuotaUpdate;
use oak_store::MemStore;
use parking_lot::Mutex as PlMutex;
use serde_json::json;
use std::net::Ipv4Addr;

/// A clock the test sets.
struct FakeClock(PlMutex<f64>);

impl Clock for FakeClock {
    fn now_unix(&self) -> f64 {
        *self.0.lock()
    }
}

/// A store whose commits fail on demand, to check that failed requests leave nothing.
struct FlakyStore {
    inner: MemStore,
    fail: PlMutex<bool>,
}

impl Store for FlakyStore {
    fn get(&self, t: Table, k: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(t, k)
    }
    fn scan_prefix(&self, t: Table, p: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.scan_prefix(t, p)
    }
    fn commit(&self, b: Batch) -> Result<(), StoreError> {
        if *self.fail.lock() {
            return Err(StoreError::Backend("disk full".into()));
        }
        self.inner.commit(b)
    }
}

fn setup() -> (Arc<FlakyStore>, Arc<FakeClock>, Registry, UserRecord) {
    let store = Arc::new(FlakyStore { inner: MemStore::new(TABLES), fail: PlMutex::new(false) });
    let clock = Arc::new(FakeClock(PlMutex::new(1000.0)));
    let r = Registry::new(store.clone(), clock.clone());
    r.bootstrap(|| "hash".into()).unwrap_or_else(|e| panic!("{e}"));
    let admin = r.user_by_name("Admin").ok().flatten().unwrap_or_else(|| panic!("no admin"));
    (store, clock, r, admin)
}

fn sla(names: &[&str]) -> Sla {
    let apps: Vec<Value> = names
        .iter()
        .map(|n| {
            json!({"application_name": n, "application_namespace": "ns", "microservices": [
            {"microservice_name": "s", "microservice_namespace": "n", "virtualization": "container", "code": "x",
             "addresses": {"rr_ip": format!("10.30.0.{}", n.len())}}]})
        })
        .collect();
    oak_api::sla::parse_sla(&json!({"sla_version": "v2.0", "customerID": "x", "applications": apps}))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn dump(store: &FlakyStore) -> Vec<(Table, String)> {
    let mut out = Vec::new();
    // META holds the allocation cursor, which moves on and is not owned by any object.
    for t in TABLES.iter().filter(|t| **t != META) {
        for (k, _) in store.scan_prefix(t, "").unwrap_or_default() {
            out.push((*t, k));
        }
    }
    out
}

#[test]
fn bootstrap_is_idempotent() {
    let (store, _, r, admin) = setup();
    let before = dump(&store);
    assert!(!r.bootstrap(|| panic!("must not hash again")).unwrap_or(true));
    assert_eq!(dump(&store), before);
    let org = r.org_by_name("root").ok().flatten().unwrap_or_else(|| panic!("no root org"));
    assert_eq!(r.roles(&admin.id, &org).unwrap_or_default().len(), 4);
}

#[test]
fn a_failed_commit_leaves_nothing_behind() {
    let (store, _, r, admin) = setup();
    let before = dump(&store);
    *store.fail.lock() = true;
    assert!(matches!(r.create_applications(&admin, sla(&["a", "bb"])), Err(RegistryError::Store(_))));
    assert_eq!(dump(&store), before);
    *store.fail.lock() = false;
    let ids = r.create_applications(&admin, sla(&["a", "bb"])).unwrap_or_default();
    assert_eq!(ids.len(), 2);
    let with_apps = dump(&store);
    *store.fail.lock() = true;
    assert!(r.delete_app(&admin.id, &ids[0]).is_err());
    assert!(
        r.request_instance(
            &admin.id,
            &r.get_app(&admin.id, &ids[0]).map(|a| a.microservices[0].clone()).unwrap_or_else(|e| panic!("{e}"))
        )
        .is_err()
    );
    assert_eq!(dump(&store), with_apps);
}

#[test]
fn deleting_an_application_removes_every_record_it_owns() {
    let (store, _, r, admin) = setup();
    let before = dump(&store);
    let ids = r.create_applications(&admin, sla(&["a"])).unwrap_or_default();
    assert!(dump(&store).iter().any(|(t, _)| *t == ADDRESSES));
    r.delete_app(&admin.id, &ids[0]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dump(&store), before, "no service, index or address left");
}

#[test]
fn instance_status_says_why_no_cluster_takes_it() {
    let (store, clock, r, admin) = setup();
    let ids = r.create_applications(&admin, sla(&["a"])).unwrap_or_default();
    let svc = r.get_app(&admin.id, &ids[0]).map(|a| a.microservices[0].clone()).unwrap_or_else(|e| panic!("{e}"));
    let i = r.request_instance(&admin.id, &svc).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(i.status, Status::NoActiveClusterWithCapacity);
    assert!(i.status_detail.contains("no cluster has joined"), "{}", i.status_detail);

    // A cluster that reported 31 s ago is not active.
    let c = ClusterRecord {
        id: ClusterId::from("c1"),
        name: "edge".into(),
        location: String::new(),
        last_seen: 969.0,
        aggregate: Default::default(),
        secret_hash: None,
    };
    let mut b = Batch::new();
    b.put(CLUSTERS, "c1", encode(&c).unwrap_or_else(|e| panic!("{e}")));
    store.commit(b).unwrap_or_else(|e| panic!("{e}"));
    let i = r.request_instance(&admin.id, &svc).unwrap_or_else(|e| panic!("{e}"));
    assert!(i.status_detail.contains("none of the 1 known clusters reported"), "{}", i.status_detail);
    assert_eq!(r.list_clusters(true).unwrap_or_default().len(), 0);
    *clock.0.lock() = 975.0;
    assert_eq!(r.list_clusters(true).unwrap_or_default().len(), 1);
    let i = r.request_instance(&admin.id, &svc).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((i.status, i.instance_number), (Status::Requested, 2));
}

fn report_with_slot(mem: u64) -> oak_api::link::ClusterReport {
    oak_api::link::ClusterReport {
        aggregate: oak_api::link::ClusterAggregate {
            workers: 1,
            active_workers: 1,
            slots: vec![oak_api::link::FreeSlot {
                arch: "amd64".into(),
                runtimes: vec!["container".into()],
                millicpu: 2000,
                memory_mb: mem,
                gpus: 0,
            }],
            ..Default::default()
        },
        instances: vec![],
        workers: vec![],
        interests: vec![],
    }
}

/// Instance 0 of `svc` as a cluster reports it, on no worker.
fn state(svc: &ServiceId, status: Status) -> oak_api::link::InstanceState {
    oak_api::link::InstanceState {
        service_id: svc.clone(),
        instance_number: 0,
        status,
        status_detail: status.to_string(),
        worker_id: None,
        worker_name: None,
        host_ip: None,
        cpu_percent: None,
        memory_mb: None,
        ns_ip: None,
        host_port: None,
        location: None,
        coord: None,
        probe: None,
        host_key: None,
    }
}

#[test]
fn the_root_places_instances_in_clusters_that_fit_and_moves_refused_ones() {
    let (_store, _clock, r, admin) = setup();
    let ids = r.create_applications(&admin, sla(&["a"])).unwrap_or_default();
    let svc = r.get_app(&admin.id, &ids[0]).map(|a| a.microservices[0].clone()).unwrap_or_else(|e| panic!("{e}"));
    let small = r.join_cluster("small", None, None).unwrap_or_else(|e| panic!("{e}"));
    let big = r.join_cluster("big", None, None).unwrap_or_else(|e| panic!("{e}"));
    r.apply_report(&small, report_with_slot(100)).unwrap_or_else(|e| panic!("{e}"));
    r.apply_report(&big, report_with_slot(8000)).unwrap_or_else(|e| panic!("{e}"));
    r.request_instance(&admin.id, &svc).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.schedule_pending().unwrap_or(false));
    let s = r.get_service(&admin.id, &svc).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.instance_list[0].status, Status::ClusterScheduled);
    assert_eq!(s.instance_list[0].cluster_id.as_ref(), Some(&big), "spread: the cluster with the most room");
    assert_eq!(r.desired_for(&big).unwrap_or_default().len(), 1);
    assert!(r.desired_for(&small).unwrap_or_default().is_empty());

    // The big cluster refuses it: it moves to the small one, which can hold it (the service
    // asks for no memory).
    let mut report = report_with_slot(8000);
    report.instances.push(state(&svc, Status::NoWorkerCapacity));
    assert!(r.apply_report(&big, report).unwrap_or_default().rescheduled, "a refusal asks for rescheduling");
    assert!(r.schedule_pending().unwrap_or(false));
    let s = r.get_service(&admin.id, &svc).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.instance_list[0].cluster_id.as_ref(), Some(&small));
    assert_eq!(s.instance_list[0].status, Status::ClusterScheduled);
}

fn bare(names: &[&str]) -> Sla {
    let apps: Vec<Value> = names
        .iter()
        .map(|n| {
            json!({"application_name": n, "application_namespace": "ns", "microservices": [
            {"microservice_name": "s", "microservice_namespace": "n", "virtualization": "container", "code": "x"}]})
        })
        .collect();
    oak_api::sla::parse_sla(&json!({"sla_version": "v2.0", "customerID": "x", "applications": apps}))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_address_plan_allocates_reclaims_and_runs_out_clearly() {
    let store = Arc::new(FlakyStore { inner: MemStore::new(TABLES), fail: PlMutex::new(false) });
    let clock = Arc::new(FakeClock(PlMutex::new(1000.0)));
    let first = Ipv4Addr::new(10, 30, 9, 1);
    let r = Registry::new(store.clone(), clock).with_address_pool(first, Ipv4Addr::new(10, 30, 9, 4));
    r.bootstrap(|| "hash".into()).unwrap_or_else(|e| panic!("{e}"));
    let admin = r.user_by_name("Admin").ok().flatten().unwrap_or_else(|| panic!("no admin"));

    // A service without addresses in its SLA gets a round-robin and a closest Service IP.
    let ids = r.create_applications(&admin, bare(&["a"])).unwrap_or_default();
    let svc = r.get_app(&admin.id, &ids[0]).map(|a| a.microservices[0].clone()).unwrap_or_else(|e| panic!("{e}"));
    let s = r.get_service(&admin.id, &svc).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((s.rr_ip.as_deref(), s.closest_ip.as_deref()), (Some("10.30.9.1"), Some("10.30.9.2")));
    // Each instance gets its own Instance IP.
    let i0 = r.request_instance(&admin.id, &svc).unwrap_or_else(|e| panic!("{e}"));
    let i1 = r.request_instance(&admin.id, &svc).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((i0.instance_ip.as_deref(), i1.instance_ip.as_deref()), (Some("10.30.9.3"), Some("10.30.9.4")));
    // The pool is empty now: a clear error, and nothing changes.
    let e = r.request_instance(&admin.id, &svc).err().unwrap_or_else(|| panic!("allocated from an empty pool"));
    assert!(e.to_string().starts_with("no free address left in the service subnet 10.30.9.1-10.30.9.4"), "{e}");
    assert_eq!(r.get_service(&admin.id, &svc).map(|s| s.instance_list.len()).unwrap_or(0), 2);
    // Removing an instance frees its address for the next one.
    r.remove_instance(&admin.id, &svc, 0).unwrap_or_else(|e| panic!("{e}"));
    let i2 = r.request_instance(&admin.id, &svc).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(i2.instance_ip.as_deref(), Some("10.30.9.3"));
    // An update keeps the Service IPs it does not fix.
    let spec = oak_api::sla::parse_microservice(
        &json!({"microservice_name": "s", "microservice_namespace": "n", "virtualization": "container", "code": "y"}),
        "",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let s = r.update_service(&admin.id, &svc, spec).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((s.rr_ip.as_deref(), s.closest_ip.as_deref()), (Some("10.30.9.1"), Some("10.30.9.2")));
    // Deleting the application gives every address back.
    r.delete_app(&admin.id, &ids[0]).unwrap_or_else(|e| panic!("{e}"));
    assert!(store.scan_prefix(ADDRESSES, "").unwrap_or_default().is_empty());
    let ids = r.create_applications(&admin, bare(&["b"])).unwrap_or_default();
    assert_eq!(ids.len(), 1);
}

#[test]
fn worker_subnets_are_kept_moved_and_freed() {
    let (_store, _clock, r, _admin) = setup();
    let a = r.join_cluster("a", None, None).unwrap_or_else(|e| panic!("{e}"));
    let b = r.join_cluster("b", None, None).unwrap_or_else(|e| panic!("{e}"));
    let ws = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let first = r.subnets_for(&a, &ws(&["w1", "w2"])).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first["w1"], Ipv4Addr::new(10, 18, 0, 0));
    assert_eq!(first["w2"], Ipv4Addr::new(10, 18, 0, 64));
    // Asked again: the same subnets; another cluster's worker gets a fresh one.
    assert_eq!(r.subnets_for(&a, &ws(&["w1", "w2"])).unwrap_or_default(), first);
    assert_eq!(r.subnets_for(&b, &ws(&["w3"])).unwrap_or_default()["w3"], Ipv4Addr::new(10, 18, 0, 128));
    // Cluster a forgets w2: its subnet is free again (after the cursor wraps).
    let now = r.subnets_for(&a, &ws(&["w1"])).unwrap_or_default();
    assert_eq!(now.len(), 1);
    // w1 joins cluster b: it keeps its subnet; cluster a no longer frees it.
    let moved = r.subnets_for(&b, &ws(&["w3", "w1"])).unwrap_or_default();
    assert_eq!(moved["w1"], first["w1"]);
    assert!(r.subnets_for(&a, &[]).unwrap_or_default().is_empty());
    assert_eq!(r.subnets_for(&b, &ws(&["w3", "w1"])).unwrap_or_default(), moved);
}

#[test]
fn tables_name_running_attached_instances_of_the_asked_addresses() {
    let (_store, _clock, r, admin) = setup();
    let (svc, c) = placed(&r, &admin);
    let s = r.get_service(&admin.id, &svc).unwrap_or_else(|e| panic!("{e}"));
    let rr: Ipv4Addr = s.rr_ip.clone().unwrap_or_default().parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
    let iip: Ipv4Addr =
        s.instance_list[0].instance_ip.clone().unwrap_or_default().parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
    // Placed but not running: the table has no instance yet.
    let t = r.tables_for(&[rr]).unwrap_or_default();
    assert_eq!(t.len(), 1);
    assert!(t[0].instances.is_empty());
    let mut report = report_with_slot(8000);
    report.instances.push(oak_api::link::InstanceState {
        worker_id: Some("w".into()),
        worker_name: Some("w".into()),
        host_ip: Some("192.168.50.2".into()),
        ns_ip: Some(Ipv4Addr::new(10, 18, 0, 66)),
        host_port: Some(50103),
        ..state(&svc, Status::Running)
    });
    let outcome = r.apply_report(&c, report.clone()).unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.net_changed);
    assert!(!r.apply_report(&c, report).unwrap_or_default().net_changed, "the same report changes nothing");
    // By Service IP or by Instance IP: the same table.
    for key in [rr, iip] {
        let t = r.tables_for(&[key, Ipv4Addr::new(10, 30, 250, 250)]).unwrap_or_default();
        assert_eq!(t.len(), 1, "unknown addresses are left out");
        assert_eq!(t[0].instances.len(), 1);
        assert_eq!(t[0].instances[0].instance_ip, iip);
        assert_eq!(t[0].instances[0].ns_ip, Ipv4Addr::new(10, 18, 0, 66));
        assert_eq!((t[0].instances[0].host_ip.as_str(), t[0].instances[0].host_port), ("192.168.50.2", 50103));
    }
}

/// A service of app "a" with one instance, placed in cluster "c" (which has room).
fn placed(r: &Registry, admin: &UserRecord) -> (ServiceId, ClusterId) {
    let ids = r.create_applications(admin, sla(&["a"])).unwrap_or_default();
    let svc = r.get_app(&admin.id, &ids[0]).map(|a| a.microservices[0].clone()).unwrap_or_else(|e| panic!("{e}"));
    let c = r.join_cluster("c", None, None).unwrap_or_else(|e| panic!("{e}"));
    r.apply_report(&c, report_with_slot(8000)).unwrap_or_else(|e| panic!("{e}"));
    r.request_instance(&admin.id, &svc).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.schedule_pending().unwrap_or(false));
    (svc, c)
}

fn with_replicas(name: &str, replicas: u32) -> Sla {
    oak_api::sla::parse_sla(&json!({"sla_version": "v2.0", "customerID": "x", "applications": [
        {"application_name": name, "application_namespace": "ns", "microservices": [
        {"microservice_name": "s", "microservice_namespace": "n", "virtualization": "container", "code": "x",
         "memory": 100, "vcpus": 0.5, "replicas": replicas}]}]}))
    .unwrap_or_else(|e| panic!("{e}"))
}

/// One service asking for more than the address plan holds takes what there is and says why;
/// the replica pass goes on for everyone else (it used to fail as a whole, every time).
#[test]
fn an_impossible_service_never_blocks_the_others() {
    let store = Arc::new(FlakyStore { inner: MemStore::new(TABLES), fail: PlMutex::new(false) });
    let clock = Arc::new(FakeClock(PlMutex::new(1000.0)));
    let r = Registry::new(store, clock).with_address_pool(Ipv4Addr::new(10, 30, 9, 1), Ipv4Addr::new(10, 30, 9, 12));
    r.bootstrap(|| "hash".into()).unwrap_or_else(|e| panic!("{e}"));
    let admin = r.user_by_name("Admin").ok().flatten().unwrap_or_else(|| panic!("no admin"));
    // Two Service IPs each; `small` first in the table order, `huge` wants 10,000.
    let small = r.create_applications(&admin, with_replicas("a", 2)).unwrap_or_else(|e| panic!("{e}"));
    let huge = r.create_applications(&admin, with_replicas("b", 10_000)).unwrap_or_else(|e| panic!("{e}"));
    let svc = |app: &ApplicationId| r.get_app(&admin.id, app).map(|a| a.microservices[0].clone());
    let (small, huge) =
        (svc(&small[0]).unwrap_or_else(|e| panic!("{e}")), svc(&huge[0]).unwrap_or_else(|e| panic!("{e}")));
    assert!(r.reconcile_replicas().is_ok(), "the pass fails as a whole");
    let count = |s: &ServiceId| r.get_service(&admin.id, s).map(|s| s.instance_list.len()).unwrap_or(0);
    assert_eq!(count(&small) + count(&huge), 8, "every free address is used");
    // Whichever came second in the pass waits, and says why.
    let detail = |s: &ServiceId| r.get_service(&admin.id, s).ok().and_then(|s| s.status_detail).unwrap_or_default();
    let (d_small, d_huge) = (detail(&small), detail(&huge));
    let waits = |d: &str, want: u32| d.contains(&format!("of {want} instances exist")) && d.contains("no free address");
    assert!(waits(&d_small, 2) || waits(&d_huge, 10_000), "{d_small} / {d_huge}");
    // Scaling `small` down still happens, and the freed address goes to the waiting one.
    r.set_replicas(&admin.id, &small, 0).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.reconcile_replicas().is_ok());
    assert_eq!(count(&small), 0);
    assert!(r.reconcile_replicas().is_ok());
    assert_eq!(count(&huge), 8);
}

#[test]
fn quotas_bound_what_a_user_asks_for_and_an_admin_changes_them() {
    let (_, _, r, admin) = setup();
    let org = r.org_by_name(model::ROOT_ORGANIZATION).ok().flatten().unwrap_or_else(|| panic!("no org"));
    r.create_user(&org, "bob", "", vec!["Application_Provider".into()], "h".into()).unwrap_or_else(|e| panic!("{e}"));
    let bob = r.user_by_name("bob").ok().flatten().unwrap_or_else(|| panic!("no bob"));
    // The defaults apply to bob, none to the bootstrap Admin.
    assert_eq!(r.quota("bob").map(|q| q.limits).ok().flatten(), Some(quotas::DEFAULT_QUOTA));
    assert_eq!(r.quota("Admin").map(|q| q.limits).ok().flatten(), None);
    let up = QuotaUpdate { instances: Some(3), ..Default::default() };
    r.set_quota("bob", &up).unwrap_or_else(|e| panic!("{e}"));
    let ids = r.create_applications(&bob, with_replicas("a", 2)).unwrap_or_else(|e| panic!("{e}"));
    let e = r.create_applications(&bob, with_replicas("b", 2)).err().unwrap_or_else(|| panic!("over quota"));
    assert!(matches!(e, RegistryError::QuotaExceeded(_)) && e.to_string().contains("quota instances"), "{e}");
    assert_eq!(r.list_apps(&bob.id).map(|a| a.len()).unwrap_or(0), 1, "nothing half-created");
    let svc = r.get_app(&bob.id, &ids[0]).map(|a| a.microservices[0].clone()).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.set_replicas(&bob.id, &svc, 3).is_ok());
    assert!(matches!(r.set_replicas(&bob.id, &svc, 4), Err(RegistryError::QuotaExceeded(_))));
    assert!(matches!(r.request_instance(&bob.id, &svc), Err(RegistryError::QuotaExceeded(_))));
    // Memory and CPU count per instance.
    r.set_quota("bob", &QuotaUpdate { instances: Some(100), memory_mb: Some(500), ..Default::default() })
        .unwrap_or_else(|e| panic!("{e}"));
    let e = r.set_replicas(&bob.id, &svc, 6).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("quota memory_mb"), "{e}");
    assert_eq!(r.quota("bob").map(|q| q.used.memory_mb).unwrap_or(0), 300);
    // Admin's requests are not bounded by bob's quota.
    assert!(r.create_applications(&admin, with_replicas("big", 50)).is_ok());
}

/// Every cluster holds the same cluster token: a link claiming a known cluster (by id or by
/// name) must show the secret issued to it, or it would receive that cluster's instances.
#[test]
fn a_cluster_link_must_prove_the_cluster_it_claims() {
    let (_, _, r, _) = setup();
    let (id, secret) = r.join_cluster_with_secret("edge", None, None, None).unwrap_or_else(|e| panic!("{e}"));
    let secret = secret.unwrap_or_else(|| panic!("no secret issued"));
    for (claim, shown) in [(Some(&id), None), (Some(&id), Some("guess")), (None, None), (None, Some("guess"))] {
        let e = r.join_cluster_with_secret("edge", None, claim, shown).err();
        assert!(matches!(e, Some(RegistryError::Forbidden(_))), "{claim:?} {shown:?}: {e:?}");
    }
    let again = r.join_cluster_with_secret("edge", None, Some(&id), Some(&secret)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again, (id.clone(), None), "the same cluster, no new secret");
    // Another name is another cluster.
    let (other, s2) = r.join_cluster_with_secret("edge2", None, None, None).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(other, id);
    assert!(s2.is_some());
    // A cluster that joined before secrets existed gets one at its next hello.
    let legacy = r.join_cluster("old", None, None).unwrap_or_else(|e| panic!("{e}"));
    let (same, issued) = r.join_cluster_with_secret("old", None, Some(&legacy), None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(same, legacy);
    assert!(issued.is_some());
    assert!(r.join_cluster_with_secret("old", None, Some(&legacy), None).is_err(), "now it must prove it");
}

/// A store from before names were compared without case, with a tenant "admin" next to the
/// bootstrap "Admin": after the upgrade "Admin" (any case) is the bootstrap Admin, never the
/// tenant, and nothing else is lost.
#[test]
fn the_bootstrap_admin_keeps_its_name_when_an_old_store_has_admin_too() {
    let (store, clock, r, admin) = setup();
    let org = r.org_by_name(model::ROOT_ORGANIZATION).ok().flatten().unwrap_or_else(|| panic!("no org"));
    r.create_user(&org, "carol", "", vec![], "h".into()).unwrap_or_else(|e| panic!("{e}"));
    let carol = r.user_by_name("carol").ok().flatten().unwrap_or_else(|| panic!("no carol"));
    // As an old store held them: "Admin", a tenant "admin", and "Carol" under its own case.
    let mut b = Batch::new();
    b.delete(USER_NAMES, "admin");
    b.delete(USER_NAMES, "carol");
    b.put(USER_NAMES, "Admin", admin.id.as_str().as_bytes().to_vec());
    b.put(USER_NAMES, "admin", carol.id.as_str().as_bytes().to_vec());
    b.put(USER_NAMES, "Carol", carol.id.as_str().as_bytes().to_vec());
    store.commit(b).unwrap_or_else(|e| panic!("{e}"));
    let r = Registry::new(store, clock);
    assert!(!r.bootstrap(|| "other".into()).unwrap_or_else(|e| panic!("{e}")), "a second Admin was created");
    for name in ["Admin", "admin", "ADMIN"] {
        assert_eq!(r.user_by_name(name).ok().flatten().map(|u| u.id), Some(admin.id.clone()), "{name}");
    }
    assert_eq!(r.user_by_name("CAROL").ok().flatten().map(|u| u.id), Some(carol.id));
}

/// The subnet pool running out does not stop the others: a worker for which no subnet is left
/// gets none, the rest keep or get theirs. And one cluster holds at most its cap, so it cannot
/// take the subnets of every other cluster.
#[test]
fn worker_subnets_are_given_while_they_last_and_capped_per_cluster() {
    let (_store, _clock, r, _admin) = setup();
    let a = r.join_cluster("a", None, None).unwrap_or_else(|e| panic!("{e}"));
    let b = r.join_cluster("b", None, None).unwrap_or_else(|e| panic!("{e}"));
    let ws = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // A pool of four /26 subnets, at most three to one cluster.
    let pool = (Ipv4Addr::new(10, 18, 0, 0), Ipv4Addr::new(10, 18, 0, 192));
    let got = r.subnets_within(&a, &ws(&["a1", "a2", "a3", "a4", "a5"]), pool, 3).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.keys().collect::<Vec<_>>(), ["a1", "a2", "a3"], "capped at three");
    // Cluster b gets the one left; its second worker gets none, and the call still answers.
    let got_b = r.subnets_within(&b, &ws(&["b1", "b2"]), pool, 3).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got_b.keys().collect::<Vec<_>>(), ["b1"]);
    assert_eq!(got_b["b1"], Ipv4Addr::new(10, 18, 0, 192));
    // What a cluster holds stays its own, asked again.
    assert_eq!(r.subnets_within(&a, &ws(&["a1", "a2", "a3", "a4", "a5"]), pool, 3).unwrap_or_default(), got);
    // Cluster a forgets a1: b2 takes its subnet.
    r.subnets_within(&a, &ws(&["a2", "a3"]), pool, 3).unwrap_or_else(|e| panic!("{e}"));
    let got_b = r.subnets_within(&b, &ws(&["b1", "b2"]), pool, 3).unwrap_or_default();
    assert_eq!(got_b.get("b2"), got.get("a1"));
    // The real cap leaves most of the real pool (12,288 /26 subnets) to other clusters.
    const { assert!(Registry::MAX_SUBNETS_PER_CLUSTER <= 12_288 / 3) };
}

/// What a cluster reports about an instance is shown to its owner: a huge detail is cut and
/// impossible usage figures are dropped, and the rest of the report still applies.
#[test]
fn a_clusters_instance_report_is_bounded() {
    let (_store, _clock, r, admin) = setup();
    let (svc, c) = placed(&r, &admin);
    let mut report = report_with_slot(8000);
    report.instances.push(oak_api::link::InstanceState {
        status_detail: "x".repeat(1 << 20),
        cpu_percent: Some(-5.0),
        memory_mb: Some(f64::INFINITY),
        ..state(&svc, Status::Running)
    });
    r.apply_report(&c, report).unwrap_or_else(|e| panic!("{e}"));
    let i = r.get_service(&admin.id, &svc).map(|s| s.instance_list[0].clone()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(i.status, Status::Running);
    assert!(i.status_detail.len() <= oak_api::node::MAX_STATUS_DETAIL, "{}", i.status_detail.len());
    assert_eq!((i.cpu_percent, i.memory_mb), (None, None));
}

/// A join token with a lifetime admits clusters until it ends; without one, until revoked.
#[test]
fn join_tokens_expire_and_are_revoked() {
    let (_store, clock, r, _admin) = setup();
    let short = r.create_join_token("site-a", Some(60)).unwrap_or_else(|e| panic!("{e}"));
    let forever = r.create_join_token("site-b", None).unwrap_or_else(|e| panic!("{e}"));
    assert!(short.token.expires_at.is_some() && forever.token.expires_at.is_none());
    let id = |s: &str| r.join_token_id(s).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(id(&short.secret), Some(short.token.id.clone()));
    *clock.0.lock() += 61.0;
    assert_eq!(id(&short.secret), None, "an expired token admits nobody");
    assert_eq!(id(&forever.secret), Some(forever.token.id.clone()));
    r.revoke_join_token(&forever.token.id).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(id(&forever.secret), None, "a revoked token admits nobody");
    // A lifetime out of bounds is refused by name.
    for ttl in [0, super::tokens::MAX_TOKEN_TTL_S + 1] {
        match r.create_join_token("x", Some(ttl)) {
            Err(e) => assert!(e.to_string().contains("ttl_seconds"), "{e}"),
            Ok(_) => panic!("ttl {ttl} accepted"),
        }
    }
}
