//! The semantic overlay network of a worker (oakestra-net, improved): instances reach each
//! other through semantic addresses (a Service IP per balancing policy, an Instance IP per
//! instance) in 10.30.0.0/16. Packets to them are read from a TUN device, translated by the
//! [`proxy::Proxy`] and tunnelled over UDP to the worker that hosts the chosen instance.
//!
//! - [`packet`]: parsing and incremental-checksum rewriting of IPv4 TCP/UDP packets;
//! - [`proxy`]: tables, balancing policies, the flow table, packets waiting for a table;
//! - [`dataplane`]: the egress and ingress threads (batched `sendmmsg`/`recvmmsg`);
//! - [`tunnel`]: the encrypted, authenticated worker-to-worker tunnel (WireGuard, boringtun);
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
pub mod tunnel;

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
    #[error(transparent)]
    Tunnel(#[from] tunnel::TunnelError),
    #[error("the overlay's tunnel is not encrypted (no tunnel key)")]
    NotEncrypted,
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

/// Encryption of the worker-to-worker tunnel (see [`tunnel`]). Without it
/// (`--tunnel-encryption off`) the tunnel carries plaintext packets, as before.
pub struct TunnelConfig {
    /// This worker's static key; its public half goes into the registration.
    pub key: TunnelKey,
    /// Hears of a handshake from a key that neither the tables nor [`Overlay::trust_peer`]
    /// admitted: `(key in base64, source address)`, once per key while its handshake is kept
    /// (5 s). It runs on the receive thread and must not block: hand the key to a task that
    /// asks the cluster whether it belongs to a live worker, then call
    /// [`Overlay::trust_peer`].
    pub unknown_peer: tunnel::UnknownPeer,
}

impl std::fmt::Debug for TunnelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelConfig").field("key", &self.key).finish_non_exhaustive()
    }
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
    rejected_logged: std::sync::atomic::AtomicU64,
    tunnel: Option<Arc<Tunnel>>,
    mtu: u16,
}

pub use proxy::Proxy;
use tunnel::Tunnel;
pub use tunnel::{PeerStatus, PublicKey, Reject, TunnelKey};

impl Overlay {
    /// Sets up this worker's network for `subnet` (removing leftovers of an earlier run
    /// first) and starts the data plane. `misses` hears of each semantic address that
    /// packets wait for, so the worker can ask for its table at once.
    /// The tunnel carries plaintext packets: [`start_with_tunnel`](Self::start_with_tunnel)
    /// without a [`TunnelConfig`].
    pub fn start(
        config: OverlayConfig,
        subnet: Ipv4Addr,
        misses: impl Fn(Ipv4Addr) + Send + Sync + 'static,
    ) -> Result<Self, NetError> {
        Self::start_with_tunnel(config, subnet, None, misses)
    }

    /// As [`start`](Self::start); with `tunnel`, every datagram between workers is a WireGuard
    /// message (see [`tunnel`]) and the overlay's MTU is [`host::MTU_ENCRYPTED`].
    pub fn start_with_tunnel(
        config: OverlayConfig,
        subnet: Ipv4Addr,
        tunnel: Option<TunnelConfig>,
        misses: impl Fn(Ipv4Addr) + Send + Sync + 'static,
    ) -> Result<Self, NetError> {
        let subnet = Subnet { base: subnet };
        host::teardown();
        let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, config.port))
            .map_err(|e| NetError::Setup(format!("cannot bind the tunnel port udp/{}: {e}", config.port)))?;
        let tun =
            sys::Tun::open(host::TUN, true).map_err(|e| NetError::Setup(format!("cannot open a TUN device: {e}")))?;
        let mtu = if tunnel.is_some() { host::MTU_ENCRYPTED } else { host::MTU };
        if let Err(e) = host::setup(subnet, tun.name(), mtu) {
            host::teardown();
            return Err(NetError::Setup(e));
        }
        let proxy = Arc::new(Proxy::new(
            SocketAddrV4::new(config.advertise, config.port),
            config.location.as_deref(),
            (subnet.base, Subnet::PREFIX),
            misses,
        ));
        let tunnel = match tunnel {
            None => None,
            Some(tc) => {
                let handle = sock.try_clone().map_err(|e| {
                    host::teardown();
                    NetError::Setup(format!("cannot share the tunnel socket: {e}"))
                })?;
                Some(Arc::new(Tunnel::new(&tc.key, handle, proxy.stats.tunnel.clone(), tc.unknown_peer)))
            }
        };
        let dp = dataplane::Dataplane::start(proxy.clone(), tun, sock, tunnel.clone()).map_err(|e| {
            host::teardown();
            NetError::Setup(format!("cannot start the data plane: {e}"))
        })?;
        tracing::info!(
            subnet = %subnet.base,
            advertise = %config.advertise,
            port = config.port,
            encrypted = tunnel.is_some(),
            "overlay up"
        );
        Ok(Self {
            config,
            subnet,
            proxy,
            dataplane: Mutex::new(Some(dp)),
            free: Mutex::new(subnet.hosts().collect()),
            attached: Mutex::default(),
            dropped_logged: std::sync::atomic::AtomicU64::new(0),
            rejected_logged: std::sync::atomic::AtomicU64::new(0),
            tunnel,
            mtu,
        })
    }

    /// This worker's tunnel public key (base64, as `wg` prints it); `None` when the tunnel is
    /// not encrypted.
    pub fn public_key(&self) -> Option<String> {
        self.tunnel.as_ref().map(|t| t.public_key().to_base64())
    }

    /// Admits the worker with tunnel key `key` (base64), reachable at `endpoint` (its
    /// `host_ip:host_port`), e.g. after the cluster confirmed a key reported by
    /// `unknown_peer`. A handshake it sent in the last 5 s is answered at once. Lifts a
    /// revocation.
    pub fn trust_peer(&self, key: &str, endpoint: SocketAddrV4) -> Result<(), NetError> {
        let t = self.tunnel.as_ref().ok_or(NetError::NotEncrypted)?;
        t.trust(PublicKey::from_base64(key)?, endpoint);
        Ok(())
    }

    /// Drops the sessions of the worker with tunnel key `key` at once: its packets are then
    /// rejected. The key is admitted again only by [`trust_peer`](Self::trust_peer), not by
    /// tables that still name it, and its handshakes are not reported as unknown.
    pub fn revoke_peer(&self, key: &str) -> Result<(), NetError> {
        let t = self.tunnel.as_ref().ok_or(NetError::NotEncrypted)?;
        t.revoke(PublicKey::from_base64(key)?);
        Ok(())
    }

    /// The tunnel's peers (endpoint, age of the session, traffic), ordered by key; empty when
    /// the tunnel is not encrypted.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.tunnel.as_ref().map(|t| t.peers()).unwrap_or_default()
    }

    /// Tunnel datagrams rejected so far, by reason ([`Reject::name`]), and handshakes.
    pub fn tunnel_stats(&self) -> &tunnel::TunnelStats {
        &self.proxy.stats.tunnel
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
        host::attach(netns, self.subnet, ns_ip, self.mtu).map_err(err)?;
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
    /// With encryption, the tables also name the peers: every instance's host and key.
    pub fn set_tables(&self, tables: &[ServiceTable]) {
        if let Some(t) = &self.tunnel {
            t.set_peers(tables.iter().flat_map(|s| &s.instances).filter_map(|i| {
                let host = SocketAddrV4::new(i.host_ip.parse().ok()?, i.host_port);
                Some((host, PublicKey::from_base64(i.host_key.as_deref()?).ok()?))
            }));
        }
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
        let stats = &self.proxy.stats.tunnel;
        let rejected = stats.rejected_total();
        let before = self.rejected_logged.swap(rejected, std::sync::atomic::Ordering::Relaxed);
        if rejected > before {
            let by: Vec<String> = Reject::ALL
                .iter()
                .filter(|r| stats.rejected(**r) > 0)
                .map(|r| format!("{}={}", r.name(), stats.rejected(*r)))
                .collect();
            tracing::info!(
                rejected = rejected - before,
                totals = by.join(" "),
                "tunnel datagrams rejected (unauthenticated, replayed, unknown or untrusted peer)"
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
