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
//! With a [`Tunnel`], every datagram is a WireGuard message: egress seals each packet (each
//! segment of a super-packet, into one buffer sent with one GSO call) before it leaves;
//! ingress opens the datagrams of a GRO read into back-to-back slots before translation, and a
//! third thread runs the tunnel's timers. Without one, a datagram that looks like a WireGuard
//! message is dropped and counted, never read as a packet.
//!
//! Buffers are allocated once per thread; the per-packet path allocates nothing, except for
//! a packet that must wait for a table (it is copied into the wait queue) or for a tunnel
//! handshake (boringtun copies it into its queue).

use crate::offload::{self, F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, VNET_HDR_LEN, VnetHdr};
use crate::proxy::{Proxy, Verdict};
use crate::sys::{self, Batch, GroBatch, Tun};
use crate::tunnel::{self, Reject, Sealed, Tunnel};
use std::net::{SocketAddrV4, UdpSocket};
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
    tunnel: Option<Arc<Tunnel>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Dataplane {
    /// `tun` must be opened with offload (a `virtio_net_hdr` per packet). With `tunnel`, the
    /// traffic is encrypted (its socket must be a handle of `sock`).
    pub fn start(proxy: Arc<Proxy>, tun: Tun, sock: UdpSocket, tunnel: Option<Arc<Tunnel>>) -> std::io::Result<Self> {
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
            let tunnel = tunnel.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("oak-egress".into())
                    .spawn(move || egress_loop(&proxy, tunnel.as_deref(), &tun, &sock, &stop))?,
            );
        }
        {
            let (proxy, tun, sock, stop) = (proxy.clone(), tun.clone(), sock.clone(), stop.clone());
            let tunnel = tunnel.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("oak-ingress".into())
                    .spawn(move || ingress_loop(&proxy, tunnel.as_deref(), &tun, &sock, &stop))?,
            );
        }
        if let Some(t) = tunnel.clone() {
            let stop = stop.clone();
            threads.push(std::thread::Builder::new().name("oak-tunnel".into()).spawn(move || {
                let mut scratch = vec![0u8; tunnel::MIN_OUT * 4];
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(tunnel::TICK);
                    t.tick(&mut scratch);
                }
            })?);
        }
        Ok(Self { proxy, tun, sock, tunnel, stop, threads })
    }

    /// Sends packets that waited for a table (see [`Proxy::set_tables`]). They are plain
    /// packets with complete checksums.
    pub fn retry(&self, packets: Vec<Vec<u8>>) {
        let now = Instant::now();
        let mut scratch = vec![0u8; if self.tunnel.is_some() { tunnel::MIN_OUT } else { 0 }];
        for mut p in packets {
            match self.proxy.egress(&mut p, now) {
                Verdict::Send(to) => match &self.tunnel {
                    Some(t) => {
                        t.send(to, &p, &mut scratch);
                    }
                    None => {
                        let _ = self.sock.send_to(&p, to);
                    }
                },
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

fn egress_loop(proxy: &Proxy, tunnel: Option<&Tunnel>, tun: &Tun, sock: &UdpSocket, stop: &AtomicBool) {
    let mut buf = vec![0u8; BIG];
    let mut small = Batch::new(BATCH, SMALL + tunnel::OVERHEAD);
    let mut headers = Vec::with_capacity(64 * 120);
    let mut sealing = tunnel.map(|_| SealBuffers::new());
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
                    let mss = usize::from(vh.gso_size);
                    match (tunnel, sealing.as_mut()) {
                        (Some(t), Some(b)) => send_super_packet_sealed(sock, t, to, pkt, mss, &mut headers, b),
                        _ => send_super_packet(sock, to, pkt, mss, &mut headers),
                    }
                }
                Verdict::Send(to) => {
                    if small.is_full() {
                        small.send(sock);
                    }
                    // A packet larger than SMALL cannot pass the MTU: dropped.
                    let _ = match tunnel {
                        None if pkt.len() <= SMALL => small.push(pkt, to),
                        None => false,
                        Some(t) => seal_into(sock, t, to, pkt, &mut small),
                    };
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

/// Seals `pkt` for the worker at `host` straight into the batch's next buffer. False when
/// nothing was queued (no key for `host`, the handshake already under way, too large).
fn seal_into(sock: &UdpSocket, t: &Tunnel, host: SocketAddrV4, pkt: &[u8], small: &mut Batch) -> bool {
    let Some(peer) = t.peer_for(host) else { return false };
    let to = peer.endpoint();
    let queued = small.push_with(|out| match t.seal(&peer, pkt, out) {
        Sealed::Data(n) | Sealed::Handshake(n) => Some((n, to)),
        Sealed::Queued | Sealed::Refused => None,
    });
    if !queued && small.is_full() {
        // Cannot happen (the caller empties a full batch first), but never lose a handshake.
        small.send(sock);
    }
    queued
}

/// Per-thread buffers of the sealed super-packet path.
pub(crate) struct SealBuffers {
    /// One segment in plaintext, header and payload together (boringtun seals a slice).
    plain: Vec<u8>,
    /// Sealed segments back to back, one GSO call's worth.
    wire: Vec<u8>,
}

impl SealBuffers {
    pub(crate) fn new() -> Self {
        Self { plain: vec![0; tunnel::MAX_SEALED], wire: vec![0; GSO_BYTES + tunnel::MIN_OUT] }
    }
}

/// Most segments and bytes per UDP GSO call.
const GSO_SEGMENTS: usize = 64;
const GSO_BYTES: usize = 60_000;

/// [`send_super_packet`] through the tunnel: each segment (header and payload copied into one
/// slice) is sealed into `b.wire` right after the previous one. Full segments seal to equal
/// sizes (no padding), so the sealed ones go out with one GSO call per 64 segments or 60 KB;
/// before a session exists they are queued by boringtun and the handshake goes out alone.
pub(crate) fn send_super_packet_sealed(
    sock: &UdpSocket,
    t: &Tunnel,
    host: SocketAddrV4,
    pkt: &[u8],
    mss: usize,
    headers: &mut Vec<u8>,
    b: &mut SealBuffers,
) {
    let Some(peer) = t.peer_for(host) else { return };
    let Some((hdr, n)) = offload::segment_headers(pkt, mss, headers) else { return };
    let to = peer.endpoint();
    let (mut off, mut count, mut seg) = (0, 0, 0);
    let send = |wire: &[u8], seg: usize| {
        let part = [std::io::IoSlice::new(wire)];
        let _ = sys::send_gso(sock, to, &part, seg, &[(0, 1, wire.len())]);
    };
    for i in 0..n {
        let payload = offload::segment_payload(pkt, hdr, mss, i);
        let len = hdr + payload.len();
        let Some(plain) = b.plain.get_mut(..len) else { return };
        plain[..hdr].copy_from_slice(&headers[i * hdr..(i + 1) * hdr]);
        plain[hdr..].copy_from_slice(payload);
        if count == GSO_SEGMENTS || off + len + tunnel::OVERHEAD > GSO_BYTES {
            send(&b.wire[..off], seg);
            (off, count) = (0, 0);
        }
        match t.seal(&peer, plain, &mut b.wire[off..]) {
            Sealed::Data(m) => {
                if count == 0 {
                    seg = m;
                }
                off += m;
                count += 1;
            }
            Sealed::Handshake(m) => {
                let _ = sock.send_to(&b.wire[off..off + m], to);
            }
            Sealed::Queued | Sealed::Refused => {}
        }
    }
    if count > 0 {
        send(&b.wire[..off], seg);
    }
}

fn ingress_loop(proxy: &Proxy, tunnel: Option<&Tunnel>, tun: &Tun, sock: &UdpSocket, stop: &AtomicBool) {
    let mut gro = GroBatch::new(8, offload::MAX_PACKET, 0);
    let mut ok: Vec<bool> = Vec::with_capacity(128);
    let mut opened = vec![0u8; if tunnel.is_some() { offload::MAX_PACKET + tunnel::MIN_OUT } else { 0 }];
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
            let Some(from) = gro.source(i) else { continue };
            let Some((buf, seg)) = gro.datagram_mut(i) else { break };
            ingress_datagram(proxy, tunnel, from, buf, seg, &mut opened, &mut ok, |parts| {
                let _ = tun.write_parts(parts);
            });
        }
    }
}

/// One datagram of a GRO read (segments of `seg` bytes) from `from`: opened when the tunnel
/// is encrypted (into `opened`), each packet translated, consecutive segments glued; `write`
/// gets the parts of each packet for the TUN.
#[allow(clippy::too_many_arguments)]
pub(crate) fn ingress_datagram(
    proxy: &Proxy,
    tunnel: Option<&Tunnel>,
    from: SocketAddrV4,
    buf: &mut [u8],
    seg: usize,
    opened: &mut [u8],
    ok: &mut Vec<bool>,
    write: impl FnMut(&[std::io::IoSlice<'_>]),
) {
    let seg = seg.max(1);
    let (plain, seg) = match tunnel {
        Some(t) => {
            let (slot, total) = t.open(from, buf, seg, opened, ok);
            let plain = &mut opened[..total];
            for (pkt, ok) in plain.chunks_mut(slot.max(1)).zip(ok.iter_mut()) {
                *ok = *ok && proxy.ingress(pkt);
            }
            (plain, slot.max(1))
        }
        None => {
            ok.clear();
            ok.extend(buf.chunks_mut(seg).map(|pkt| {
                if tunnel::looks_encrypted(pkt) {
                    proxy.stats.tunnel.count(Reject::Encrypted);
                    return false;
                }
                proxy.ingress(pkt)
            }));
            (buf, seg)
        }
    };
    offload::coalesce(plain, seg, ok, write);
}

#[cfg(test)]
mod tests;
