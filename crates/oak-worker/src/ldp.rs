//! Latency and distance-aware placement on the worker: the latency prober and responder
//! ([`crate::probe`]) and the measurer of user addresses ([`crate::measure`]), and what they
//! add to the worker's report (probe address, network coordinate, RTTs).
//!
//! The cluster names the peers to probe (`nodes/<id>/control/peers`) and the addresses to
//! measure (`nodes/<id>/control/measure`); answers go to `nodes/<id>/measured`. Measurement
//! requests are handled one at a time, at most [`QUEUED_REQUESTS`] wait; more are dropped.

use crate::measure;
use crate::probe::{self, ProberConfig, State};
use crate::table::Outbound;
use oak_api::ldp::{Coord, MeasureRequest, PeerRtt, ProbePeer, ProbePeers};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Measurement requests waiting while one is measured.
pub(crate) const QUEUED_REQUESTS: usize = 4;

/// Where and how often to probe.
#[derive(Clone, Debug)]
pub(crate) struct LdpConfig {
    /// This worker's node id.
    pub node: String,
    /// The probe socket's address (`0.0.0.0:50104`; port 0: any).
    pub bind: SocketAddrV4,
    /// The underlay address other workers reach this one at (the tunnel's).
    pub advertise: Ipv4Addr,
    pub interval: Duration,
}

/// A handle on the worker's LDP tasks; they stop with [`Ldp::stop`], or when the last handle
/// goes.
#[derive(Clone)]
pub(crate) struct Ldp {
    inner: Arc<Inner>,
}

struct Inner {
    node: String,
    state: Arc<Mutex<State>>,
    /// Where other workers probe this one; `None` when the probe socket could not be bound.
    probe: Option<SocketAddrV4>,
    peers: Option<watch::Sender<Vec<ProbePeer>>>,
    measure: mpsc::Sender<MeasureRequest>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        for t in tasks.iter() {
            t.abort();
        }
    }
}

impl std::fmt::Debug for Ldp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ldp").field("node", &self.inner.node).field("probe", &self.inner.probe).finish()
    }
}

impl Ldp {
    /// Binds the probe socket and starts the prober, the responder and the measurer, which
    /// sends its answers to `out`. A probe socket that cannot be bound leaves this worker
    /// without probes (an error in the log), not without work.
    pub(crate) async fn start(config: LdpConfig, out: mpsc::Sender<Outbound>) -> Self {
        Self::start_with(config, out, measure::TRIES, measure::TRY_TIMEOUT).await
    }

    pub(crate) async fn start_with(
        config: LdpConfig,
        out: mpsc::Sender<Outbound>,
        tries: usize,
        timeout: Duration,
    ) -> Self {
        let state = Arc::new(Mutex::new(State::new(rand::random())));
        let mut tasks = Vec::new();
        let prober_config = ProberConfig { bind: config.bind, interval: config.interval };
        let (probe, peers) = match probe::start(prober_config, state.clone()).await {
            Ok(p) => {
                tasks.push(p.task);
                tracing::info!(probe = %p.local, "latency probes ready");
                (Some(SocketAddrV4::new(config.advertise, p.local.port())), Some(p.peers))
            }
            Err(e) => {
                tracing::error!(bind = %config.bind, error = %e, "cannot open the probe socket; this worker has no network coordinate");
                (None, None)
            }
        };
        let (measure, requests) = mpsc::channel(QUEUED_REQUESTS);
        tasks.push(tokio::spawn(measurer(requests, out, state.clone(), tries, timeout)));
        let tasks = Mutex::new(tasks);
        Self { inner: Arc::new(Inner { node: config.node, state, probe, peers, measure, tasks }) }
    }

    /// The peers to probe from now on (this worker and unusable entries left out).
    pub(crate) fn set_peers(&self, set: &ProbePeers) {
        let peers = probe::select_peers(&self.inner.node, set);
        tracing::debug!(peers = peers.len(), "probe peers from the cluster");
        if let Some(tx) = &self.inner.peers {
            tx.send_replace(peers);
        }
    }

    /// Queues a measurement request; one that finds the queue full is dropped.
    pub(crate) fn measure(&self, req: MeasureRequest) {
        if let Err(mpsc::error::TrySendError::Full(req)) = self.inner.measure.try_send(req) {
            tracing::warn!(request = %req.request_id, "too many measurement requests; dropping one");
        }
    }

    /// The probe address, the coordinate (once known) and the recent RTTs, for a report.
    pub(crate) fn report(&self) -> (Option<SocketAddrV4>, Option<Coord>, Vec<PeerRtt>) {
        let mut s = probe::lock(&self.inner.state);
        (self.inner.probe, s.coord(), s.rtts(Instant::now()))
    }

    /// This worker's coordinate and the RTTs it measured to its current peers, by their
    /// underlay address: what the overlay's closest policy picks by.
    pub(crate) fn latencies(&self) -> (Option<Coord>, std::collections::HashMap<std::net::Ipv4Addr, f64>) {
        let (coord, rtts) = {
            let mut s = probe::lock(&self.inner.state);
            (s.coord(), s.rtts(Instant::now()))
        };
        let mut by_ip = std::collections::HashMap::new();
        if let Some(tx) = &self.inner.peers {
            let peers = tx.borrow();
            for r in rtts {
                if let Some(p) = peers.iter().find(|p| p.id == r.peer) {
                    by_ip.insert(*p.addr.ip(), r.ms);
                }
            }
        }
        (coord, by_ip)
    }

    /// Stops probing, answering and measuring, and waits until the probe socket is closed
    /// (a worker that registers again binds it anew).
    pub(crate) async fn stop(&self) {
        let tasks = std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Measures the requests one after the other and sends the answers; keeps the RTTs for the
/// reports.
async fn measurer(
    mut requests: mpsc::Receiver<MeasureRequest>,
    out: mpsc::Sender<Outbound>,
    state: Arc<Mutex<State>>,
    tries: usize,
    timeout: Duration,
) {
    while let Some(req) = requests.recv().await {
        let id = req.request_id.clone();
        let reply = measure::answer(req, tries, timeout).await;
        tracing::debug!(request = %id, targets = reply.results.len(), "measured user addresses");
        {
            let now = Instant::now();
            let mut s = probe::lock(&state);
            for m in &reply.results {
                if let Some(ms) = m.ms {
                    s.user_rtt(m.addr, ms, now);
                }
            }
        }
        if out.send(Outbound::Measured(reply)).await.is_err() {
            break;
        }
    }
}
