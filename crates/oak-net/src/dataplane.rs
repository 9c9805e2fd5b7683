//! The two packet pipelines of a worker, each on its own thread, with segmentation offload
//! (see [`crate::offload`]):
//!
//! - egress: TUN (a `virtio_net_hdr` in front of each packet, TCP super-packets up to 64 KB)
//!   → [`Proxy::egress`] once per packet → a super-packet is cut into MTU-sized segments and
//!   sent with one UDP GSO call; small packets are batched into one `sendmmsg`. Hairpin
//!   traffic goes straight back into the TUN, super-packets whole.
//! - ingress: `recvmmsg` with UDP GRO (up to 8 × 64 KB per call) → [`Proxy::ingress`] per
//!   packet → consecutive segments of a flow glued back into one super-packet → TUN.
//!
//! Buffers are allocated once per thread; the per-packet path allocates nothing, except for
//! a packet that must wait for a table (it is copied into the wait queue).

use crate::offload::{self, F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, VNET_HDR_LEN, VnetHdr};
use crate::proxy::{Proxy, Verdict};
use crate::sys::{self, Batch, GroBatch, Tun};
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const BATCH: usize = 64;
/// Larger than any packet the MTU lets through.
const SMALL: usize = 2048;
const BIG: usize = VNET_HDR_LEN + offload::MAX_PACKET;
/// Tunnel socket buffers: room for a few hundred 64 KB bursts.
const SOCKET_BUFFER: usize = 16 << 20;

pub struct Dataplane {
    proxy: Arc<Proxy>,
    tun: Arc<Tun>,
    sock: Arc<UdpSocket>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Dataplane {
    /// `tun` must be opened with offload (a `virtio_net_hdr` per packet).
    pub fn start(proxy: Arc<Proxy>, tun: Tun, sock: UdpSocket) -> std::io::Result<Self> {
        if !tun.offload() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "the TUN must carry virtio headers"));
        }
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        if !sys::set_buffers(&sock, SOCKET_BUFFER) {
            tracing::warn!("cannot enlarge the tunnel socket's buffers; bursts may be dropped");
        }
        if !sys::enable_udp_gro(&sock) {
            tracing::warn!("this kernel cannot coalesce tunnel datagrams (UDP GRO); the overlay runs slower");
        }
        let (tun, sock) = (Arc::new(tun), Arc::new(sock));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let (proxy, tun, sock, stop) = (proxy.clone(), tun.clone(), sock.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("oak-egress".into())
                    .spawn(move || egress_loop(&proxy, &tun, &sock, &stop))?,
            );
        }
        {
            let (proxy, tun, sock, stop) = (proxy.clone(), tun.clone(), sock.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("oak-ingress".into())
                    .spawn(move || ingress_loop(&proxy, &tun, &sock, &stop))?,
            );
        }
        Ok(Self { proxy, tun, sock, stop, threads })
    }

    /// Sends packets that waited for a table (see [`Proxy::set_tables`]). They are plain
    /// packets with complete checksums.
    pub fn retry(&self, packets: Vec<Vec<u8>>) {
        let now = Instant::now();
        for mut p in packets {
            match self.proxy.egress(&mut p, now) {
                Verdict::Send(to) => {
                    let _ = self.sock.send_to(&p, to);
                }
                Verdict::Local => {
                    if self.proxy.ingress(&mut p) {
                        let mut out = vec![0u8; VNET_HDR_LEN];
                        out.extend_from_slice(&p);
                        let _ = self.tun.write(&out);
                    }
                }
                Verdict::Pending | Verdict::Drop(_) => {}
            }
        }
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn egress_loop(proxy: &Proxy, tun: &Tun, sock: &UdpSocket, stop: &AtomicBool) {
    let mut buf = vec![0u8; BIG];
    let mut small = Batch::new(BATCH, SMALL);
    let mut headers = Vec::with_capacity(64 * 120);
    while !stop.load(Ordering::Relaxed) {
        if !tun.wait_readable(200) {
            continue;
        }
        let now = Instant::now();
        for _ in 0..BATCH {
            let len = match tun.read(&mut buf) {
                Ok(len) => len,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the TUN device; the overlay stops sending");
                    return;
                }
            };
            let Some(vh) = VnetHdr::parse(&buf[..len.min(VNET_HDR_LEN)]) else { continue };
            let gso = vh.gso_type != GSO_NONE;
            if gso && vh.gso_type != GSO_TCPV4 {
                continue;
            }
            let pkt = &mut buf[VNET_HDR_LEN..len];
            if !gso && vh.flags & F_NEEDS_CSUM != 0 {
                // Complete it now: translation then updates a valid checksum incrementally.
                offload::fill_checksum(pkt);
            }
            match proxy.egress(pkt, now) {
                Verdict::Send(to) if gso => {
                    // Keep a flow's order: what was batched before goes first.
                    small.send(sock);
                    send_super_packet(sock, to, pkt, usize::from(vh.gso_size), &mut headers);
                }
                Verdict::Send(to) => {
                    if small.is_full() {
                        small.send(sock);
                    }
                    // A packet larger than SMALL cannot pass the MTU: dropped.
                    let _ = small.push(pkt, to);
                }
                Verdict::Local => {
                    if proxy.ingress(pkt) {
                        if gso {
                            offload::partial_checksum(pkt);
                        } else {
                            VnetHdr::default().write(&mut buf[..VNET_HDR_LEN]);
                        }
                        let _ = tun.write(&buf[..len]);
                    }
                }
                Verdict::Pending | Verdict::Drop(_) => {}
            }
        }
        if !small.is_empty() {
            small.send(sock);
        }
    }
}

/// Sends a translated TCP super-packet as MTU-sized segments: headers built apart, payloads
/// sent from where they lie, one UDP GSO call per 64 segments or 60 KB.
fn send_super_packet(sock: &UdpSocket, to: std::net::SocketAddrV4, pkt: &[u8], mss: usize, headers: &mut Vec<u8>) {
    let Some((hdr, n)) = offload::segment_headers(pkt, mss, headers) else { return };
    let mut parts = Vec::with_capacity(2 * n);
    let mut calls = Vec::with_capacity(2);
    let (mut from, mut bytes, mut count) = (0, 0, 0);
    for i in 0..n {
        let payload = offload::segment_payload(pkt, hdr, mss, i);
        let len = hdr + payload.len();
        if count == 64 || bytes + len > 60_000 {
            calls.push((from, parts.len(), bytes));
            (from, bytes, count) = (parts.len(), 0, 0);
        }
        parts.push(std::io::IoSlice::new(&headers[i * hdr..(i + 1) * hdr]));
        parts.push(std::io::IoSlice::new(payload));
        bytes += len;
        count += 1;
    }
    calls.push((from, parts.len(), bytes));
    let _ = sys::send_gso(sock, to, &parts, hdr + mss.min(pkt.len().saturating_sub(hdr)), &calls);
}

fn ingress_loop(proxy: &Proxy, tun: &Tun, sock: &UdpSocket, stop: &AtomicBool) {
    let mut gro = GroBatch::new(8, offload::MAX_PACKET, 0);
    let mut ok: Vec<bool> = Vec::with_capacity(128);
    while !stop.load(Ordering::Relaxed) {
        let n = match gro.recv(sock) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "tunnel receive failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        for i in 0..n {
            let Some((buf, seg)) = gro.datagram_mut(i) else { break };
            let seg = seg.max(1);
            ok.clear();
            ok.extend(buf.chunks_mut(seg).map(|pkt| proxy.ingress(pkt)));
            offload::coalesce(buf, seg, &ok, |parts| {
                let _ = tun.write_parts(parts);
            });
        }
    }
}
