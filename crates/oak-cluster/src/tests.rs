use super::*;
use crate::core::Assignment;
use oak_api::node::RegisterRequest;

#[test]
fn mqtt_urls() {
    let u = super::parse_mqtt_url("mqtt://u:p@broker.example:1883").unwrap_or_else(|| panic!("parse"));
    assert_eq!((u.host.as_str(), u.port, u.user.as_str(), u.password.as_str()), ("broker.example", 1883, "u", "p"));
    let u = super::parse_mqtt_url("tcp://10.0.0.1:10003").unwrap_or_else(|| panic!("parse"));
    assert_eq!((u.host.as_str(), u.port, u.user.as_str()), ("10.0.0.1", 10003, ""));
    assert!(super::parse_mqtt_url("http://x:1").is_none());
    assert!(super::parse_mqtt_url("mqtt://x").is_none());
}

/// A cluster with its store in `dir` (not running: its handlers are called directly).
fn cluster(dir: &std::path::Path) -> Cluster {
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    Cluster::open(ClusterConfig {
        root_url: "http://127.0.0.1:1".into(),
        root_token: "t".into(),
        name: "c".into(),
        location: None,
        listen: any,
        mqtt_listen: any,
        mqtt_advertise_port: None,
        mqtt_url: None,
        data_dir: dir.join("data"),
        worker_token: Some("w".into()),
        report_interval: Duration::from_secs(1),
        timing: Timing::default(),
        policy: Policy::default(),
        root_ca: None,
        insecure_plain_http: false,
        insecure_plain_mqtt: false,
        tls_san: Vec::new(),
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn registration(node_id: Option<&str>, node_secret: Option<&str>) -> RegisterRequest {
    RegisterRequest {
        name: "w".into(),
        node_id: node_id.map(str::to_owned),
        node_secret: node_secret.map(str::to_owned),
        ip: "10.0.0.1".into(),
        arch: "amd64".into(),
        runtimes: vec!["container".into()],
        cpu_cores: 2.0,
        memory_mb: 1000,
        session: "s".into(),
        ..RegisterRequest::default()
    }
}

fn reported() -> NodeInfo {
    NodeInfo {
        cpu_cores: 2.0,
        memory_mb: 1000,
        arch: "amd64".into(),
        runtimes: vec!["container".into()],
        ..NodeInfo::default()
    }
}

/// Ids are global at the root (subnets are keyed by them): a cluster gives back only ids it
/// issued. An id it never issued (another cluster's worker's, made up) gets a new id and
/// secret; a forgotten worker comes back as itself only with the secret of its tombstone.
#[test]
fn an_id_the_cluster_did_not_issue_gets_a_new_one() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut c = cluster(dir.path());
    let creds = broker::Credentials::default();
    let mut pending = PendingLogs::new();
    let foreign = "0b2c6f0e-3c4d-4e5f-8a9b-0c1d2e3f4a5b";
    for secret in [None, Some("chosen-by-the-caller")] {
        let r =
            c.register_worker(registration(Some(foreign), secret), true, &creds).unwrap_or_else(|e| panic!("{e:?}"));
        assert_ne!(r.id, foreign, "an id this cluster never issued is not given back");
        assert!(oak_api::node::valid_node_id(&r.id));
        assert!(r.node_secret.is_some(), "a new id comes with a new secret");
        assert!(!c.core.workers.contains_key(foreign));
    }
    // A worker that reported, then fell silent and was forgotten, keeps its id with its secret.
    let first = c.register_worker(registration(None, None), true, &creds).unwrap_or_else(|e| panic!("{e:?}"));
    let (id, secret) = (first.id.clone(), first.node_secret.clone().unwrap_or_default());
    c.handle(Cmd::Info(id.clone(), reported()), 1.0, &creds, &mut pending);
    let later = 1.0 + c.core.timing.forget_after + 1.0;
    c.handle(Cmd::Tick, later, &creds, &mut pending);
    assert!(!c.core.workers.contains_key(&id), "forgotten");
    // Its id without the secret (or with another) proves nothing.
    let r = c.register_worker(registration(Some(&id), Some("wrong")), true, &creds).unwrap_or_else(|e| panic!("{e:?}"));
    assert_ne!(r.id, id);
    let back =
        c.register_worker(registration(Some(&id), Some(&secret)), true, &creds).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!((back.id.as_str(), back.node_secret.as_deref()), (id.as_str(), None), "the same node, same secret");
    assert!(c.store.get(FORGOTTEN, &id).unwrap_or_default().is_none(), "the tombstone went with it");
    // A registration that never reported leaves no tombstone: it comes back as a new node.
    let ghost = c.register_worker(registration(None, None), true, &creds).unwrap_or_else(|e| panic!("{e:?}"));
    c.handle(Cmd::Tick, now() + 601.0, &creds, &mut pending);
    assert!(!c.core.workers.contains_key(&ghost.id));
    let again = c
        .register_worker(registration(Some(&ghost.id), ghost.node_secret.as_deref()), true, &creds)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_ne!(again.id, ghost.id);
}

/// After its first registration a worker proves itself with its own node secret: it needs
/// the shared worker token no more, and the token alone never makes it.
#[test]
fn a_known_worker_registers_again_without_the_worker_token() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let creds = broker::Credentials::default();
    let mut c = cluster(dir.path());
    let unauthenticated = |r: Result<RegisterResponse, RegError>| matches!(r, Err(RegError::Unauthenticated(_)));
    // Nobody new joins without the token.
    assert!(unauthenticated(c.register_worker(registration(None, None), false, &creds)));
    let first = c.register_worker(registration(None, None), true, &creds).unwrap_or_else(|e| panic!("{e:?}"));
    let secret = first.node_secret.clone().unwrap_or_default();
    // Its own secret is enough.
    let back = c
        .register_worker(registration(Some(&first.id), Some(&secret)), false, &creds)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(back.id, first.id);
    // A wrong secret is refused with or without the token.
    assert!(matches!(
        c.register_worker(registration(Some(&first.id), Some("guess")), false, &creds),
        Err(RegError::Forbidden(_))
    ));
    // An id this cluster never issued, without the token: refused, not a new node.
    let made_up = "0b0e0f00-0000-4000-8000-000000000001";
    assert!(unauthenticated(c.register_worker(registration(Some(made_up), Some("x")), false, &creds)));
}

/// A tunnel key names one worker: a second worker cannot claim it (peers would send the first
/// one's traffic to it); the worker that holds it keeps it when it registers again.
#[test]
fn a_tunnel_key_belongs_to_one_worker() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let creds = broker::Credentials::default();
    let mut c = cluster(dir.path());
    let key = Some(format!("{}A=", "B".repeat(42)));
    let with_key = |id: Option<&str>, secret: Option<&str>| RegisterRequest {
        tunnel_key: key.clone(),
        ..registration(id, secret)
    };
    let first = c.register_worker(with_key(None, None), true, &creds).unwrap_or_else(|e| panic!("{e:?}"));
    match c.register_worker(with_key(None, None), true, &creds) {
        Err(RegError::Invalid(f)) => assert_eq!(f.field, "tunnel_key"),
        other => panic!("a second worker got the key: {other:?}"),
    }
    let secret = first.node_secret.clone().unwrap_or_default();
    let again = c.register_worker(with_key(Some(&first.id), Some(&secret)), true, &creds);
    assert_eq!(again.map(|r| r.id).ok(), Some(first.id));
}

/// A worker's first report is stored: a restarted cluster lists it to the root (which keeps
/// its subnet) before it reports again.
#[test]
fn the_first_report_is_stored() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let creds = broker::Credentials::default();
    let mut pending = PendingLogs::new();
    let id = {
        let mut c = cluster(dir.path());
        let r = c.register_worker(registration(None, None), true, &creds).unwrap_or_else(|e| panic!("{e:?}"));
        c.register_worker(registration(None, None), true, &creds).unwrap_or_else(|e| panic!("{e:?}"));
        c.handle(Cmd::Info(r.id.clone(), reported()), 1.0, &creds, &mut pending);
        assert_eq!(c.core.report(1.0).workers, std::slice::from_ref(&r.id), "the one that reported");
        r.id
    };
    let c = cluster(dir.path());
    assert_eq!(c.core.workers.len(), 2);
    assert_eq!(c.core.report(2.0).workers, [id]);
}

/// Instance 0 of `svc` runs on `worker`.
fn running_on(c: &mut Cluster, svc: &oak_api::ServiceId, worker: &str) {
    c.core.restore(
        (svc.clone(), 0),
        Assignment {
            worker: Some(worker.into()),
            status: oak_api::Status::Running,
            detail: String::new(),
            since: 0.0,
            attempts: 0,
            next_try: 0.0,
            sent: 0.0,
            ns_ip: None,
        },
    );
}

/// A log reply is handed to the waiting request only when it comes from the worker the
/// request went to; another worker's (forged) reply is dropped and the request keeps waiting.
#[test]
fn log_replies_count_only_from_the_worker_asked() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut c = cluster(dir.path());
    let creds = broker::Credentials::default();
    let mut pending = PendingLogs::new();
    let svc = oak_api::ServiceId::from("svc");
    running_on(&mut c, &svc, "asked");
    let request = |id: &str| LogsRequest {
        request_id: id.into(),
        service_id: svc.clone(),
        instance_number: 0,
        from_offset: None,
        max_bytes: 10,
    };
    let reply = |id: &str, text: &str| LogsReply {
        request_id: id.into(),
        offset: 0,
        next_offset: text.len() as u64,
        text: text.into(),
        error: None,
    };
    let (tx, mut rx) = oneshot::channel();
    let outs = c.handle(Cmd::Logs(request("r1"), tx), 0.0, &creds, &mut pending);
    assert_eq!(outs.iter().map(|o| o.topic.as_str()).collect::<Vec<_>>(), ["nodes/asked/control/logs"]);
    c.handle(Cmd::LogsReply("other".into(), reply("r1", "forged")), 0.0, &creds, &mut pending);
    assert!(rx.try_recv().is_err(), "another worker's reply is not handed on");
    c.handle(Cmd::LogsReply("asked".into(), reply("r1", "real")), 0.0, &creds, &mut pending);
    assert_eq!(rx.try_recv().map(|r| r.text).unwrap_or_default(), "real");
    assert!(pending.is_empty());
    // The pure check.
    let (tx, _rx) = oneshot::channel();
    pending.insert("r2".into(), ("asked".into(), tx));
    assert!(claim_log_reply(&mut pending, "other", "r2").is_err());
    assert!(claim_log_reply(&mut pending, "asked", "r3").is_err());
    assert!(claim_log_reply(&mut pending, "asked", "r2").is_ok());
    assert!(pending.is_empty());
}

/// At most MAX_PENDING_LOGS requests wait; more are refused with an error reply at once.
#[test]
fn pending_log_requests_are_bounded() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut c = cluster(dir.path());
    let creds = broker::Credentials::default();
    let mut pending = PendingLogs::new();
    let svc = oak_api::ServiceId::from("svc");
    running_on(&mut c, &svc, "w");
    let mut waiting = Vec::new();
    for i in 0..MAX_PENDING_LOGS {
        let (tx, rx) = oneshot::channel();
        let req = LogsRequest {
            request_id: format!("r{i}"),
            service_id: svc.clone(),
            instance_number: 0,
            from_offset: None,
            max_bytes: 10,
        };
        assert_eq!(c.handle(Cmd::Logs(req, tx), 0.0, &creds, &mut pending).len(), 1);
        waiting.push(rx);
    }
    let (tx, mut rx) = oneshot::channel();
    let req = LogsRequest {
        request_id: "over".into(),
        service_id: svc,
        instance_number: 0,
        from_offset: None,
        max_bytes: 10,
    };
    assert!(c.handle(Cmd::Logs(req, tx), 0.0, &creds, &mut pending).is_empty());
    assert!(rx.try_recv().is_ok_and(|r| r.error.is_some_and(|e| e.contains("log answers"))));
    assert_eq!(pending.len(), MAX_PENDING_LOGS);
}
