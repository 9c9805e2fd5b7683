//! Segmentation offload between the kernel and the data plane, so that a bulk TCP transfer
//! costs a few system calls per 64 KB instead of one per packet:
//!
//! - the TUN is opened with a `virtio_net_hdr` in front of every packet ([`VnetHdr`]) and TSO
//!   on: the kernel hands the proxy TCP "super-packets" of up to 64 KB;
//! - the proxy translates a super-packet once, cuts it into MTU-sized segments
//!   ([`segment_headers`]; payloads are sent from where they lie) with one UDP GSO call;
//! - the receiving worker gets them back in one UDP GRO read, translates each, glues
//!   consecutive segments of a flow back together ([`coalesce`]) and writes one
//!   super-packet to its TUN, which the kernel delivers as such to the container.
//!
//! Checksums: a packet from the kernel may carry only the pseudo-header sum in its TCP/UDP
//! checksum field (`NEEDS_CSUM`); segments leave with full checksums; coalesced packets go
//! to the kernel with the pseudo-header sum again, as the kernel expects of GSO packets.

use crate::packet::{self, TCP, UDP};

pub const VNET_HDR_LEN: usize = 10;
pub const F_NEEDS_CSUM: u8 = 1;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
/// The largest IPv4 packet.
pub const MAX_PACKET: usize = 65535;

const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;

/// `struct virtio_net_hdr` (little-endian, as on every host this runs on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn parse(b: &[u8]) -> Option<Self> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        })
    }

    pub fn write(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// One's-complement sum of `b` (as big-endian 16-bit words) plus `s`, not folded to 16 bits.
/// Adds 8 bytes at a time in native order with end-around carry; the sum does not depend
/// on byte order except for a final swap (RFC 1071 §2(B)).
fn sum(b: &[u8], s: u32) -> u32 {
    let mut acc: u64 = 0;
    let mut add = |v: u64| {
        let (x, carry) = acc.overflowing_add(v);
        acc = x + u64::from(carry);
    };
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        add(u64::from_ne_bytes(w));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        add(u64::from_ne_bytes(w));
    }
    let mut f = (acc & 0xffff_ffff) + (acc >> 32);
    f = (f & 0xffff_ffff) + (f >> 32);
    let mut h = (f & 0xffff) + (f >> 16);
    h = (h & 0xffff) + (h >> 16);
    let native = (h as u16).to_ne_bytes();
    u32::from(u16::from_be_bytes(native)) + (s & 0xffff) + (s >> 16)
}

fn pseudo(b: &[u8], proto: u8, l4len: usize) -> u32 {
    let mut s = 0u32;
    for i in (12..20).step_by(2) {
        s += u32::from(be16(b, i));
    }
    s + u32::from(proto) + l4len as u32
}

fn l4_field(proto: u8) -> usize {
    if proto == TCP { 16 } else { 6 }
}

fn ip_checksum(b: &mut [u8], ihl: usize) {
    b[10] = 0;
    b[11] = 0;
    let c = !fold(sum(&b[..ihl], 0));
    b[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Recomputes the whole TCP/UDP checksum of a packet `packet::parse` accepts (whatever the
/// field held, e.g. only the pseudo-header sum). False when it is not such a packet.
pub fn fill_checksum(b: &mut [u8]) -> bool {
    let Some(p) = packet::parse(b) else { return false };
    let total = usize::from(be16(b, 2));
    let at = p.l4 + l4_field(p.proto);
    b[at] = 0;
    b[at + 1] = 0;
    let mut c = !fold(sum(&b[p.l4..total], pseudo(b, p.proto, total - p.l4)));
    if p.proto == UDP && c == 0 {
        c = 0xffff;
    }
    b[at..at + 2].copy_from_slice(&c.to_be_bytes());
    true
}

/// Puts only the pseudo-header sum in the TCP/UDP checksum field (`CHECKSUM_PARTIAL`: the
/// kernel finishes it), for a packet written with `NEEDS_CSUM`.
pub fn partial_checksum(b: &mut [u8]) -> bool {
    let Some(p) = packet::parse(b) else { return false };
    let total = usize::from(be16(b, 2));
    let at = p.l4 + l4_field(p.proto);
    let s = fold(pseudo(b, p.proto, total - p.l4));
    b[at..at + 2].copy_from_slice(&s.to_be_bytes());
    true
}

/// Payload of segment `i` of a super-packet with headers of `hdr` bytes.
pub fn segment_payload(pkt: &[u8], hdr: usize, mss: usize, i: usize) -> &[u8] {
    let total = usize::from(be16(pkt, 2)).min(pkt.len());
    let payload = &pkt[hdr.min(total)..total];
    &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())]
}

/// The headers of the MTU-sized segments of a TCP super-packet, back to back in `hdrs`
/// (cleared first), with their checksums computed over the payloads where they lie in `pkt`: the
/// segments can then be sent from `pkt` without copying their payloads. Returns (header
/// length, number of segments).
pub fn segment_headers(pkt: &[u8], mss: usize, hdrs: &mut Vec<u8>) -> Option<(usize, usize)> {
    let p = packet::parse(pkt)?;
    if p.proto != TCP || mss == 0 {
        return None;
    }
    let total = usize::from(be16(pkt, 2));
    let hdr = p.l4 + usize::from(pkt[p.l4 + 12] >> 4) * 4;
    if hdr > total {
        return None;
    }
    let n = (total - hdr).div_ceil(mss).max(1);
    hdrs.clear();
    let seq0 = u32::from_be_bytes([pkt[p.l4 + 4], pkt[p.l4 + 5], pkt[p.l4 + 6], pkt[p.l4 + 7]]);
    let id0 = be16(pkt, 4);
    let flags = pkt[p.l4 + 13];
    for i in 0..n {
        let payload = segment_payload(pkt, hdr, mss, i);
        let start = hdrs.len();
        hdrs.extend_from_slice(&pkt[..hdr]);
        let h = &mut hdrs[start..];
        let len = hdr + payload.len();
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        h[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
        ip_checksum(h, p.l4);
        let seq = seq0.wrapping_add((i * mss) as u32);
        h[p.l4 + 4..p.l4 + 8].copy_from_slice(&seq.to_be_bytes());
        // FIN and PSH belong to the last segment only; CWR to the first only.
        let mut f = flags;
        if i + 1 < n {
            f &= !(packet::TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            f &= !0x80;
        }
        h[p.l4 + 13] = f;
        h[p.l4 + 16] = 0;
        h[p.l4 + 17] = 0;
        let c = !fold(sum(payload, sum(&h[p.l4..], pseudo(h, TCP, len - p.l4))));
        h[p.l4 + 16..p.l4 + 18].copy_from_slice(&c.to_be_bytes());
    }
    Some((hdr, n))
}

/// (header length, payload length, seq, flags) of a segment that may be coalesced: TCP
/// without IP options, only ACK (and PSH) set, some payload.
fn segment_info(pkt: &[u8]) -> Option<(usize, usize, u32, u8)> {
    let p = packet::parse(pkt)?;
    if p.proto != TCP || p.l4 != 20 {
        return None;
    }
    let total = usize::from(be16(pkt, 2));
    let hdr = 20 + usize::from(pkt[32] >> 4) * 4;
    let flags = pkt[33];
    if hdr >= total || flags & !TCP_PSH != TCP_ACK || total != pkt.len() {
        return None;
    }
    let seq = u32::from_be_bytes([pkt[24], pkt[25], pkt[26], pkt[27]]);
    Some((hdr, total - hdr, seq, flags))
}

/// True when `b` may follow `a` in one super-packet: same addresses and ports, same ack,
/// window and options, same TOS, TTL and DF.
fn same_flow(a: &[u8], b: &[u8], hdr: usize) -> bool {
    a[12..24] == b[12..24]
        && a[28..32] == b[28..32]
        && a[34..36] == b[34..36]
        && a[40..hdr] == b[40..hdr]
        && a[1] == b[1]
        && a[8] == b[8]
        && a[6] & 0x40 == b[6] & 0x40
}

/// Glues runs of consecutive TCP segments of one flow back into super-packets (the reverse
/// of [`segment_headers`]) without copying them: `buf` holds datagrams of `seg` bytes each (the
/// last may be shorter), as one UDP GRO read returns them, already translated; `ok[i]`
/// says whether datagram `i` is to be delivered. For each packet to write, `emit` gets its
/// parts: a [`VnetHdr`], the first segment (its header patched in place), and the payloads
/// of the segments glued to it, to be written with one `writev`.
pub fn coalesce(buf: &mut [u8], seg: usize, ok: &[bool], mut emit: impl FnMut(&[std::io::IoSlice<'_>])) {
    let seg = seg.max(1);
    let n = buf.len().div_ceil(seg);
    let mut vnet = [0u8; VNET_HDR_LEN];
    let mut i = 0;
    while i < n {
        if !ok.get(i).copied().unwrap_or(false) {
            i += 1;
            continue;
        }
        let len = buf.len();
        let at = |k: usize| (k * seg, ((k + 1) * seg).min(len));
        let (s0, e0) = at(i);
        let mut j = i + 1;
        let mut total = e0 - s0;
        if let Some((hdr, mss, seq0, flags0)) = segment_info(&buf[s0..e0]) {
            let mut next = seq0.wrapping_add(mss as u32);
            let mut closed = flags0 & TCP_PSH != 0;
            let mut psh = false;
            while j < n && !closed && ok.get(j).copied().unwrap_or(false) {
                let (s, e) = at(j);
                let Some((h, len, seq, flags)) = segment_info(&buf[s..e]) else { break };
                if h != hdr
                    || seq != next
                    || len > mss
                    || total + len > MAX_PACKET
                    || !same_flow(&buf[s0..e0], &buf[s..e], hdr)
                {
                    break;
                }
                total += len;
                next = seq.wrapping_add(len as u32);
                psh |= flags & TCP_PSH != 0;
                closed = psh || len < mss;
                j += 1;
            }
            if j - i > 1 {
                let first = &mut buf[s0..e0];
                first[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                if psh {
                    first[33] |= TCP_PSH;
                }
                ip_checksum(first, 20);
                let at16 = 20 + 16;
                let ps = fold(pseudo(first, TCP, total - 20));
                first[at16..at16 + 2].copy_from_slice(&ps.to_be_bytes());
                VnetHdr {
                    flags: F_NEEDS_CSUM,
                    gso_type: GSO_TCPV4,
                    hdr_len: hdr as u16,
                    gso_size: mss as u16,
                    csum_start: 20,
                    csum_offset: 16,
                }
                .write(&mut vnet);
                let mut parts = Vec::with_capacity(1 + j - i);
                parts.push(std::io::IoSlice::new(&vnet));
                parts.push(std::io::IoSlice::new(&buf[s0..e0]));
                for k in i + 1..j {
                    let (s, e) = at(k);
                    parts.push(std::io::IoSlice::new(&buf[s + hdr..e]));
                }
                emit(&parts);
                i = j;
                continue;
            }
        }
        VnetHdr::default().write(&mut vnet);
        emit(&[std::io::IoSlice::new(&vnet), std::io::IoSlice::new(&buf[s0..e0])]);
        i += 1;
    }
}

#[cfg(test)]
mod tests;
