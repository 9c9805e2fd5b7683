//! The instance table's lifecycle on a fake runtime and paused time: deploys, crashes,
//! replacements, slow stops, and reports that keep their schedule meanwhile.

use super::*;
use oak_api::node::DeleteCommand;
use oak_runtime::{RuntimeError, Usage};
use std::collections::BTreeSet;
use std::sync::Mutex;

const NODE: &str = "00000000-0000-4000-8000-000000000001";
const IMAGE: &str = "oak.local/app:1";
const GRACE: Duration = Duration::from_secs(5);
const INTERVAL: Duration = Duration::from_secs(1);
/// What a container that ignores SIGTERM costs its removal at worst: the grace, then the
/// SIGKILL and the runtime's 5 s wait for the task to go.
const SLOW_STOP: Duration = Duration::from_secs(10);

/// A runtime in memory. Containers stop at once, unless made stubborn: those ignore SIGTERM
/// and do not die in time after SIGKILL either, so removing one takes [`SLOW_STOP`] and its
/// exit (lost) comes a second after the removal returned, as containerd's can.
#[derive(Default)]
struct FakeRuntime {
    state: Mutex<FakeState>,
}

#[derive(Default)]
struct FakeState {
    images: BTreeSet<String>,
    pull_time: Duration,
    /// Images whose pull fails.
    unpullable: BTreeSet<String>,
    /// Containers that exist (from start until their removal is complete).
    present: BTreeSet<String>,
    /// The exit senders of running containers.
    running: HashMap<String, oneshot::Sender<Exit>>,
    stubborn: BTreeSet<String>,
    started: Vec<String>,
    removed: Vec<String>,
}

impl FakeRuntime {
    fn with_image() -> Arc<Self> {
        let rt = Self::default();
        rt.state().images.insert(IMAGE.to_owned());
        Arc::new(rt)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    /// The container's process ends by itself.
    fn exit(&self, id: &str, code: u32) {
        let tx = self.state().running.remove(id).unwrap();
        tx.send(Exit::Code(code)).unwrap();
    }
}

impl Runtime for FakeRuntime {
    fn names(&self) -> Vec<String> {
        vec!["container".into()]
    }

    async fn has_image(&self, image: &str) -> bool {
        self.state().images.contains(image)
    }

    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        let pull = self.state().pull_time;
        tokio::time::sleep(pull).await;
        let mut s = self.state();
        if s.unpullable.contains(image) {
            return Err(RuntimeError::Image { image: image.to_owned(), reason: "not found".into() });
        }
        s.images.insert(image.to_owned());
        Ok(())
    }

    async fn start(&self, spec: &InstanceSpec) -> Result<oneshot::Receiver<Exit>, RuntimeError> {
        let mut s = self.state();
        if !s.images.contains(&spec.image) {
            return Err(RuntimeError::Image { image: spec.image.clone(), reason: "not present".into() });
        }
        // As containerd: the id is taken until the old container is deleted.
        if !s.present.insert(spec.id.clone()) {
            return Err(RuntimeError::Exists { id: spec.id.clone() });
        }
        s.started.push(spec.id.clone());
        let (tx, rx) = oneshot::channel();
        s.running.insert(spec.id.clone(), tx);
        Ok(rx)
    }

    async fn remove(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let (exit, stubborn) = {
            let mut s = self.state();
            (s.running.remove(id), s.stubborn.contains(id))
        };
        match exit {
            Some(exit) if stubborn => {
                tokio::time::sleep(grace + (SLOW_STOP - GRACE)).await;
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let _ = exit.send(Exit::Lost);
                });
            }
            Some(exit) => {
                let _ = exit.send(Exit::Code(143));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
        let mut s = self.state();
        s.present.remove(id);
        s.removed.push(id.to_owned());
        Ok(())
    }

    async fn list(&self, _labels: &BTreeMap<String, String>) -> Result<Vec<String>, RuntimeError> {
        Ok(self.state().present.iter().cloned().collect())
    }

    fn usage(&self, id: &str) -> Option<Usage> {
        self.state().running.contains_key(id).then_some(Usage { cpu_ns: 0, memory_bytes: 1 << 20 })
    }
}

fn container(svc: &str, n: u32) -> String {
    container_id(&(ServiceId::from(svc), n), NODE)
}

fn deploy(svc: &str, n: u32, one_shot: bool) -> Command {
    let spec = serde_json::json!({"microservice_name": "s", "microservice_namespace": "n",
        "virtualization": "container", "code": IMAGE, "one_shot": one_shot});
    Command::Deploy(Box::new(DeployCommand {
        service_id: ServiceId::from(svc),
        instance_number: n,
        job_name: "a.b.s.n".into(),
        spec: oak_api::sla::parse_microservice(&spec, "").unwrap(),
        instance_ip: None,
        ldp: None,
    }))
}

fn delete(svc: &str, n: u32) -> Command {
    Command::Delete(DeleteCommand { service_id: ServiceId::from(svc), instance_number: n })
}

/// A table on its own task, with its inputs and outputs in reach.
struct Harness {
    rt: Arc<FakeRuntime>,
    tx: mpsc::Sender<Command>,
    out: mpsc::Receiver<Outbound>,
    stop: Option<oneshot::Sender<()>>,
    run: JoinHandle<RunEnd>,
    dir: tempfile::TempDir,
}

impl Harness {
    fn new(rt: Arc<FakeRuntime>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = TableConfig {
            node: NODE.into(),
            data_dir: dir.path().to_owned(),
            location: None,
            stop_grace: GRACE,
            report_interval: INTERVAL,
            overlay: None,
            advertise: Ipv4Addr::LOCALHOST,
            ldp: None,
            tunnel_key: None,
        };
        let (out_tx, out) = mpsc::channel(1024);
        let (table, rx) = Table::new(config, rt.clone(), out_tx);
        let tx = table.sender();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let run = tokio::spawn(table.run(rx, async move {
            let _ = stop_rx.await;
        }));
        Self { rt, tx, out, stop: Some(stop_tx), run, dir }
    }

    async fn send(&self, cmd: Command) {
        self.tx.send(cmd).await.unwrap();
    }

    /// The next message, within `limit` of (virtual) time.
    async fn next(&mut self, limit: Duration) -> Option<Outbound> {
        tokio::time::timeout(limit, self.out.recv()).await.ok().flatten()
    }

    /// The next status change (reports in between are skipped).
    async fn event(&mut self) -> InstanceEvent {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match tokio::time::timeout_at(deadline, self.out.recv()).await {
                Ok(Some(Outbound::Event(ev))) => return ev,
                Ok(Some(_)) => {}
                Ok(None) => panic!("the table is gone"),
                Err(_) => panic!("no status change within 60 s"),
            }
        }
    }

    /// A report, asked for now.
    async fn report(&mut self) -> NodeInfo {
        self.send(Command::Miss).await;
        loop {
            match self.next(Duration::from_secs(60)).await {
                Some(Outbound::Report(info)) => return *info,
                Some(Outbound::Event(ev)) => panic!("unexpected {ev:?}"),
                Some(Outbound::Logs(_) | Outbound::Measured(_) | Outbound::KeyQuery(_)) => {}
                None => panic!("no report"),
            }
        }
    }
}

fn is(ev: &InstanceEvent, svc: &str, n: u32, status: Status, detail: &str) -> bool {
    ev.service_id == ServiceId::from(svc)
        && ev.instance_number == n
        && ev.status == status
        && ev.status_detail == detail
}

fn held(info: &NodeInfo) -> Vec<(String, u32, Status)> {
    info.instances.iter().map(|i| (i.service_id.to_string(), i.instance_number, i.status)).collect()
}

#[tokio::test(start_paused = true)]
async fn instances_run_and_their_exits_are_reported() {
    let mut h = Harness::new(FakeRuntime::with_image());
    h.send(deploy("s", 0, false)).await;
    let ev = h.event().await;
    assert!(is(&ev, "s", 0, Status::Creating, &format!("starting {IMAGE}")), "{ev:?}");
    let ev = h.event().await;
    assert!(is(&ev, "s", 0, Status::Running, "running"), "{ev:?}");
    // Deploying it again changes nothing: its state is told again.
    h.send(deploy("s", 0, false)).await;
    assert!(is(&h.event().await, "s", 0, Status::Running, "running"));
    assert_eq!(h.rt.state().started, [container("s", 0)]);

    // A crash.
    h.rt.exit(&container("s", 0), 2);
    let ev = h.event().await;
    assert!(is(&ev, "s", 0, Status::Dead, "exited with code 2") && ev.exit_code == Some(2), "{ev:?}");
    // A one-shot job that finishes.
    h.send(deploy("s", 1, true)).await;
    assert!(is(&h.event().await, "s", 1, Status::Creating, &format!("starting {IMAGE}")));
    assert!(is(&h.event().await, "s", 1, Status::Running, "running"));
    h.rt.exit(&container("s", 1), 0);
    let ev = h.event().await;
    assert!(is(&ev, "s", 1, Status::Completed, "exited with code 0") && ev.exit_code == Some(0), "{ev:?}");
    let info = h.report().await;
    assert_eq!(held(&info), [("s".into(), 0, Status::Dead), ("s".into(), 1, Status::Completed)]);

    // Placed here again after its crash: the dead copy goes, then a new one starts.
    h.send(deploy("s", 0, false)).await;
    assert!(is(&h.event().await, "s", 0, Status::Creating, "waiting for the previous copy to be removed"));
    assert!(is(&h.event().await, "s", 0, Status::Creating, &format!("starting {IMAGE}")));
    assert!(is(&h.event().await, "s", 0, Status::Running, "running"));
    assert_eq!(h.rt.state().removed, [container("s", 0)]);
    assert_eq!(h.rt.state().started, [container("s", 0), container("s", 1), container("s", 0)]);

    // Removed.
    h.send(delete("s", 1)).await;
    assert!(is(&h.event().await, "s", 1, Status::Undeployed, "removed"));
    assert_eq!(held(&h.report().await), [("s".into(), 0, Status::Running)]);
}

#[tokio::test(start_paused = true)]
async fn a_start_that_fails_is_reported_failed() {
    let mut h = Harness::new(Arc::new(FakeRuntime::default()));
    h.rt.state().pull_time = Duration::from_secs(1);
    h.rt.state().unpullable.insert(IMAGE.to_owned());
    h.send(deploy("s", 0, false)).await;
    assert!(is(&h.event().await, "s", 0, Status::Creating, &format!("starting {IMAGE}")));
    assert!(is(&h.event().await, "s", 0, Status::Creating, &format!("pulling {IMAGE}")));
    let ev = h.event().await;
    assert_eq!(ev.status, Status::Failed, "{ev:?}");
    assert!(ev.status_detail.contains(IMAGE) && ev.status_detail.contains("not found"), "{ev:?}");
    assert_eq!(held(&h.report().await), [("s".into(), 0, Status::Failed)]);
    assert!(h.rt.state().started.is_empty());
}

#[tokio::test(start_paused = true)]
async fn reports_keep_their_schedule_while_a_removal_is_slow() {
    let mut h = Harness::new(FakeRuntime::with_image());
    h.rt.state().stubborn.insert(container("slow", 0));
    h.send(Command::Subscribed).await;
    h.send(deploy("slow", 0, false)).await;
    assert!(is(&h.event().await, "slow", 0, Status::Creating, &format!("starting {IMAGE}")));
    assert!(is(&h.event().await, "slow", 0, Status::Running, "running"));

    let t0 = Instant::now();
    h.send(delete("slow", 0)).await;
    // Meanwhile another instance starts at once.
    h.send(deploy("fast", 0, false)).await;
    let mut reports = Vec::new();
    let mut events = Vec::new();
    let until = t0 + SLOW_STOP + Duration::from_secs(3);
    while let Ok(Some(msg)) = tokio::time::timeout_at(until, h.out.recv()).await {
        let at = t0.elapsed();
        match msg {
            Outbound::Report(info) => reports.push((at, held(&info))),
            Outbound::Event(ev) => events.push((at, ev.service_id.to_string(), ev.status, ev.status_detail)),
            Outbound::Logs(_) | Outbound::Measured(_) | Outbound::KeyQuery(_) => {}
        }
    }
    let running = events.iter().find(|e| e.1 == "fast" && e.2 == Status::Running).unwrap();
    assert!(running.0 < Duration::from_secs(1), "the other deploy waited for the removal: {events:?}");
    let removed = events.iter().find(|e| e.1 == "slow").unwrap();
    assert_eq!(removed.2, Status::Undeployed, "{events:?}");
    assert!(removed.0 >= SLOW_STOP, "removed before its stop was done: {events:?}");
    // A report every interval, all through the removal.
    let times: Vec<Duration> = reports.iter().map(|r| r.0).collect();
    assert!(times.len() >= 12, "{times:?}");
    assert!(times[0] <= INTERVAL, "{times:?}");
    for w in times.windows(2) {
        assert!(w[1] - w[0] <= INTERVAL, "a report came late: {times:?}");
    }
    // The instance being removed is no longer reported (the cluster let it go).
    assert!(reports.iter().all(|r| r.1.iter().all(|i| i.0 == "fast")), "{reports:?}");
    assert_eq!(h.rt.state().removed, [container("slow", 0)]);
}

#[tokio::test(start_paused = true)]
async fn a_deploy_during_its_removal_waits_for_it() {
    let mut h = Harness::new(FakeRuntime::with_image());
    h.rt.state().stubborn.insert(container("s", 0));
    h.send(deploy("s", 0, false)).await;
    h.event().await;
    assert!(is(&h.event().await, "s", 0, Status::Running, "running"));
    let t0 = Instant::now();
    h.send(delete("s", 0)).await;
    h.send(deploy("s", 0, false)).await;
    assert!(is(&h.event().await, "s", 0, Status::Creating, "waiting for the previous copy to be removed"));
    // Placed here: reported as being created, not lost.
    assert_eq!(held(&h.report().await), [("s".into(), 0, Status::Creating)]);
    // It starts once the old container is gone (the runtime would refuse the id before),
    // with no UNDEPLOYED in between.
    let ev = h.event().await;
    assert!(is(&ev, "s", 0, Status::Creating, &format!("starting {IMAGE}")), "{ev:?}");
    assert!(t0.elapsed() >= SLOW_STOP);
    assert!(is(&h.event().await, "s", 0, Status::Running, "running"));
    assert_eq!(h.rt.state().started, [container("s", 0), container("s", 0)]);
    // The old copy's exit, which comes after its removal, is not taken for the new one's.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(held(&h.report().await), [("s".into(), 0, Status::Running)]);
}

#[tokio::test(start_paused = true)]
async fn a_delete_calls_off_a_waiting_deploy() {
    let mut h = Harness::new(FakeRuntime::with_image());
    h.rt.state().stubborn.insert(container("s", 0));
    h.send(deploy("s", 0, false)).await;
    h.event().await;
    h.event().await;
    h.send(delete("s", 0)).await;
    h.send(deploy("s", 0, false)).await;
    assert!(is(&h.event().await, "s", 0, Status::Creating, "waiting for the previous copy to be removed"));
    h.send(delete("s", 0)).await;
    assert!(held(&h.report().await).is_empty());
    assert!(is(&h.event().await, "s", 0, Status::Undeployed, "removed"));
    assert!(h.next(Duration::from_secs(5)).await.is_none());
    assert_eq!(h.rt.state().started, [container("s", 0)]);
}

#[tokio::test(start_paused = true)]
async fn a_delete_during_the_pull_starts_nothing() {
    let mut h = Harness::new(Arc::new(FakeRuntime::default()));
    h.rt.state().pull_time = Duration::from_secs(60);
    h.send(deploy("s", 0, false)).await;
    h.event().await;
    assert!(is(&h.event().await, "s", 0, Status::Creating, &format!("pulling {IMAGE}")));
    let t0 = Instant::now();
    h.send(delete("s", 0)).await;
    assert!(is(&h.event().await, "s", 0, Status::Undeployed, "removed"));
    assert!(t0.elapsed() < Duration::from_secs(1), "the removal waited for the pull");
    // Long after the pull would have ended: nothing was started, nothing else said.
    assert!(h.next(Duration::from_secs(120)).await.is_none());
    assert!(h.rt.state().started.is_empty());
    assert!(h.rt.state().present.is_empty());
}

#[tokio::test(start_paused = true)]
async fn stopping_removes_everything_and_waits_for_removals_under_way() {
    let mut h = Harness::new(FakeRuntime::with_image());
    h.rt.state().stubborn.insert(container("slow", 0));
    for svc in ["slow", "other"] {
        h.send(deploy(svc, 0, false)).await;
        h.event().await;
        h.event().await;
    }
    h.send(delete("slow", 0)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t0 = Instant::now();
    let _ = h.stop.take().unwrap().send(());
    assert_eq!(h.run.await.unwrap(), RunEnd::Stopped);
    assert!(t0.elapsed() >= SLOW_STOP - Duration::from_secs(1), "stopped before the removal under way ended");
    assert!(h.rt.state().present.is_empty(), "{:?}", h.rt.state().present);
}

#[tokio::test(start_paused = true)]
async fn a_refused_login_ends_the_run_and_removes_the_instances() {
    let mut h = Harness::new(FakeRuntime::with_image());
    h.send(deploy("s", 0, false)).await;
    h.event().await;
    h.event().await;
    h.send(Command::Refused).await;
    assert_eq!(h.run.await.unwrap(), RunEnd::Refused);
    assert_eq!(h.rt.state().removed, [container("s", 0)]);
}

#[tokio::test(start_paused = true)]
async fn logs_are_read_by_range() {
    let mut h = Harness::new(FakeRuntime::with_image());
    h.send(deploy("s", 0, false)).await;
    h.event().await;
    h.event().await;
    let log = h.dir.path().join("logs").join(format!("{}.log", container("s", 0)));
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::fs::write(&log, "0123456789").unwrap();
    // (from, max) → (offset, next offset, text)
    let cases = [
        ((None, 4), (6, 10, "6789")),
        ((Some(2), 3), (2, 5, "234")),
        ((Some(20), 3), (10, 10, "")),
        ((None, 100), (0, 10, "0123456789")),
    ];
    for ((from_offset, max_bytes), (offset, next_offset, text)) in cases {
        let req = LogsRequest {
            request_id: "r".into(),
            service_id: ServiceId::from("s"),
            instance_number: 0,
            from_offset,
            max_bytes,
        };
        h.send(Command::Logs(req)).await;
        let Some(Outbound::Logs(r)) = h.next(Duration::from_secs(1)).await else { panic!("no logs reply") };
        assert_eq!((r.offset, r.next_offset, r.text.as_str(), r.error), (offset, next_offset, text, None));
    }
    let req = LogsRequest {
        request_id: "r".into(),
        service_id: ServiceId::from("s"),
        instance_number: 7,
        from_offset: None,
        max_bytes: 1,
    };
    h.send(Command::Logs(req)).await;
    let Some(Outbound::Logs(r)) = h.next(Duration::from_secs(1)).await else { panic!("no logs reply") };
    assert_eq!(r.error.as_deref(), Some("instance 7 of service s is not on this worker"));
}
