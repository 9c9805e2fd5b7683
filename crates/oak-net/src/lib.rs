//! The semantic overlay network of a worker (oakestra-net, improved): instances reach each
//! other through semantic addresses (a Service IP per balancing policy, an Instance IP per
//! instance) in 10.30.0.0/16. Packets to them are read from a TUN device, translated by the
//! [`proxy::Proxy`] and tunnelled over UDP to the worker that hosts the chosen instance.
//!
//! - [`packet`]: parsing and incremental-checksum rewriting of IPv4 TCP/UDP packets;
//! - [`proxy`]: tables, balancing policies, the flow table, packets waiting for a table;
//! - [`dataplane`]: the egress and ingress threads (batched `sendmmsg`/`recvmmsg`);
//! - [`host`]: bridge, veths, routes and netfilter rules, and their cleanup;
//! - [`sys`]: the system calls std lacks, behind safe interfaces. It is the only module of
//!   the workspace allowed `unsafe` code: every other crate forbids it (workspace lints), and
//!   this one denies it everywhere but in `sys` (`tests/architecture.rs` in `oak` checks both).
//!
//! [`Overlay`] puts them together for the worker process.

#![deny(unsafe_code)]

pub mod dataplane;
pub mod host;
pub mod offload;
pub mod packet;
pub mod proxy;
#[allow(unsafe_code)]
pub mod sys;

use crate::host::Subnet;
use oak_api::net::ServiceTable;
use oak_api::sla::PortMapping;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot set up the overlay: {0}")]
    Setup(String),
    #[error("no free address left in this worker's subnet {0}/26 (61 instances at most)")]
    Exhausted(Ipv4Addr),
    #[error("cannot attach instance {container} to the overlay: {reason}")]
    Attach { container: String, reason: String },
}

#[derive(Clone, Debug)]
pub struct OverlayConfig {
    /// This worker's underlay address, as other workers reach it.
    pub advertise: Ipv4Addr,
    /// UDP port of the tunnel (50103).
    pub port: u16,
    /// `LAT,LONG`, for the closest policy.
    pub location: Option<String>,
}

struct Attached {
    ns_ip: Ipv4Addr,
}

/// A running overlay: host setup done, data plane threads running.
pub struct Overlay {
    config: OverlayConfig,
    subnet: Subnet,
    proxy: Arc<Proxy>,
    dataplane: Mutex<Option<dataplane::Dataplane>>,
    /// Free namespace addresses, longest free first: an address just released is reused
    /// last, so a peer's stale table does not lead to a new instance.
    free: Mutex<VecDeque<Ipv4Addr>>,
    attached: Mutex<HashMap<String, Attached>>,
    dropped_logged: std::sync::atomic::AtomicU64,
}

pub use proxy::Proxy;

impl Overlay {
    /// Sets up this worker's network for `subnet` (removing leftovers of an earlier run
    /// first) and starts the data plane. `misses` hears of each semantic address that
    /// packets wait for, so the worker can ask for its table at once.
    pub fn start(
        config: OverlayConfig,
        subnet: Ipv4Addr,
        misses: impl Fn(Ipv4Addr) + Send + Sync + 'static,
    ) -> Result<Self, NetError> {
        let subnet = Subnet { base: subnet };
        host::teardown();
        let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, config.port))
            .map_err(|e| NetError::Setup(format!("cannot bind the tunnel port udp/{}: {e}", config.port)))?;
        let tun =
            sys::Tun::open(host::TUN, true).map_err(|e| NetError::Setup(format!("cannot open a TUN device: {e}")))?;
        if let Err(e) = host::setup(subnet, tun.name()) {
            host::teardown();
            return Err(NetError::Setup(e));
        }
        let proxy = Arc::new(Proxy::new(
            SocketAddrV4::new(config.advertise, config.port),
            config.location.as_deref(),
            (subnet.base, Subnet::PREFIX),
            misses,
        ));
        let dp = dataplane::Dataplane::start(proxy.clone(), tun, sock).map_err(|e| {
            host::teardown();
            NetError::Setup(format!("cannot start the data plane: {e}"))
        })?;
        tracing::info!(subnet = %subnet.base, advertise = %config.advertise, port = config.port, "overlay up");
        Ok(Self {
            config,
            subnet,
            proxy,
            dataplane: Mutex::new(Some(dp)),
            free: Mutex::new(subnet.hosts().collect()),
            attached: Mutex::default(),
            dropped_logged: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn subnet(&self) -> Ipv4Addr {
        self.subnet.base
    }

    /// Where other workers send this worker's tunnel traffic.
    pub fn tunnel(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.config.advertise, self.config.port)
    }

    /// Reserves an address for `container` (before its namespace exists).
    pub fn reserve(&self, container: &str) -> Result<Ipv4Addr, NetError> {
        let mut att = self.attached.lock();
        if let Some(a) = att.get(container) {
            return Ok(a.ns_ip);
        }
        let ip = self.free.lock().pop_front().ok_or(NetError::Exhausted(self.subnet.base))?;
        att.insert(container.to_owned(), Attached { ns_ip: ip });
        Ok(ip)
    }

    /// Connects the namespace `netns` of `container` (address from [`reserve`](Self::reserve)),
    /// maps its ports, and makes its traffic leave with `instance_ip`. Blocking (runs `ip`).
    pub fn attach(
        &self,
        container: &str,
        netns: &str,
        instance_ip: Option<Ipv4Addr>,
        ports: &[PortMapping],
    ) -> Result<Ipv4Addr, NetError> {
        let ns_ip = self.reserve(container)?;
        let err = |reason: String| NetError::Attach { container: container.to_owned(), reason };
        host::attach(netns, self.subnet, ns_ip).map_err(err)?;
        if let Err(e) = host::add_ports(container, self.config.advertise, ns_ip, ports) {
            host::detach(ns_ip);
            return Err(err(e));
        }
        if let Some(iip) = instance_ip {
            self.proxy.add_local(ns_ip, iip);
        }
        Ok(ns_ip)
    }

    /// Undoes [`attach`](Self::attach) (or a bare reservation). Blocking.
    pub fn detach(&self, container: &str) {
        let Some(a) = self.attached.lock().remove(container) else { return };
        self.proxy.remove_local(a.ns_ip);
        host::remove_ports(container);
        host::detach(a.ns_ip);
        self.free.lock().push_back(a.ns_ip);
    }

    /// New tables from the cluster; packets that waited for them go out now.
    pub fn set_tables(&self, tables: &[ServiceTable]) {
        let ready = self.proxy.set_tables(tables);
        if !ready.is_empty()
            && let Some(dp) = self.dataplane.lock().as_ref()
        {
            dp.retry(ready);
        }
    }

    /// Addresses this worker needs tables for; also expires idle flows, and logs how many
    /// packets were dropped since the last call (malformed, not for this worker, or waiting
    /// too long): one line per report, never one per packet.
    /// This worker's network coordinate and its measured RTTs to other workers (by underlay
    /// address): the closest policy picks by them.
    pub fn set_latencies(
        &self,
        coord: Option<oak_api::ldp::Coord>,
        measured: std::collections::HashMap<Ipv4Addr, f64>,
    ) {
        self.proxy.set_latencies(coord, measured);
    }

    pub fn interests(&self) -> Vec<Ipv4Addr> {
        let now = Instant::now();
        self.proxy.sweep(now);
        let dropped = self.proxy.stats.dropped.load(std::sync::atomic::Ordering::Relaxed);
        let before = self.dropped_logged.swap(dropped, std::sync::atomic::Ordering::Relaxed);
        if dropped > before {
            tracing::info!(
                dropped = dropped - before,
                "overlay packets dropped (malformed, not for an instance here, or no table in time)"
            );
        }
        self.proxy.interests(now)
    }

    /// Stops the data plane and removes everything from the host.
    pub fn shutdown(&self) {
        if let Some(dp) = self.dataplane.lock().take() {
            dp.stop();
        }
        host::teardown();
        tracing::info!("overlay removed");
    }
}
