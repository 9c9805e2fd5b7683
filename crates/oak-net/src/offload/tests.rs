use super::*;
use crate::packet::{build, checksums_valid, parse};
use proptest::prelude::*;
use std::net::Ipv4Addr;

/// The segments as one buffer (what the GSO send puts on the wire): cuts a TCP super-packet into segments of at most `mss` payload bytes, each a complete
/// packet with valid checksums, back to back in `out` (cleared first). Returns the length
/// of a full segment (every segment but the last has it; the last may be shorter), or
/// `None` if `pkt` is not a TCP packet `packet::parse` accepts.
fn split_tcp(pkt: &[u8], mss: usize, out: &mut Vec<u8>) -> Option<usize> {
    let mut hdrs = Vec::new();
    let (hdr, n) = segment_headers(pkt, mss, &mut hdrs)?;
    out.clear();
    for (i, h) in hdrs.chunks(hdr).enumerate().take(n) {
        out.extend_from_slice(h);
        out.extend_from_slice(segment_payload(pkt, hdr, mss, i));
    }
    Some(hdr + mss.min(pkt.len().saturating_sub(hdr)))
}

fn super_packet(payload: &[u8], psh: bool) -> Vec<u8> {
    let mut p = build(TCP, (Ipv4Addr::new(10, 30, 0, 2), 40000), (Ipv4Addr::new(10, 18, 0, 66), 80), payload);
    p[24..28].copy_from_slice(&1_000_000u32.to_be_bytes());
    p[33] = if psh { TCP_ACK | TCP_PSH } else { TCP_ACK };
    assert!(fill_checksum(&mut p));
    p
}

fn segments(buf: &[u8], seg: usize) -> Vec<&[u8]> {
    buf.chunks(seg).collect()
}

proptest! {
    #[test]
    fn the_fast_sum_matches_the_reference(b in proptest::collection::vec(any::<u8>(), 0..3000), init in any::<u32>()) {
        let init = init & 0x00ff_ffff;
        let fast = !fold(sum(&b, init));
        // Reference: RFC 1071 word by word, with the same initial value.
        let mut r: u64 = u64::from(init);
        for c in b.chunks(2) {
            r += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while r > 0xffff {
            r = (r & 0xffff) + (r >> 16);
        }
        prop_assert_eq!(fast, !(r as u16));
    }

    #[test]
    fn split_then_coalesce_round_trips(payload in proptest::collection::vec(any::<u8>(), 1..20000), mss in 500usize..1410, psh in any::<bool>()) {
        let big = super_packet(&payload, psh);
        let mut out = Vec::new();
        let seg = split_tcp(&big, mss, &mut out).unwrap();
        let parts = segments(&out, seg);
        prop_assert_eq!(parts.len(), payload.len().div_ceil(mss));
        let mut got = Vec::new();
        for (i, s) in parts.iter().enumerate() {
            prop_assert!(checksums_valid(s), "segment {} has a bad checksum", i);
            prop_assert!(s.len() <= 40 + mss);
            got.extend_from_slice(&s[40..]);
            let seq = u32::from_be_bytes([s[24], s[25], s[26], s[27]]);
            prop_assert_eq!(seq, 1_000_000 + (i * mss) as u32);
            if i + 1 < parts.len() {
                prop_assert_eq!(s[33] & TCP_PSH, 0);
            }
        }
        prop_assert_eq!(&got, &payload);

        let n = parts.len();
        let outs = glue(&mut out, seg, &vec![true; n]);
        prop_assert_eq!(outs.len(), 1, "one run, one packet");
        let whole = &outs[0];
        let v = VnetHdr::parse(whole).unwrap();
        let pkt = &whole[VNET_HDR_LEN..];
        prop_assert_eq!(&pkt[40..], &payload[..]);
        prop_assert_eq!(usize::from(u16::from_be_bytes([pkt[2], pkt[3]])), pkt.len());
        if n > 1 {
            prop_assert_eq!((v.gso_type, v.gso_size, v.hdr_len, v.flags), (GSO_TCPV4, mss as u16, 40, F_NEEDS_CSUM));
            // The kernel finishes a partial checksum: completing it must give a valid packet.
            let mut done = pkt.to_vec();
            fill_checksum(&mut done);
            prop_assert!(checksums_valid(&done));
            prop_assert_eq!(&done[..16], &pkt[..16]);
            prop_assert_eq!(pkt[33] & TCP_PSH != 0, psh);
        } else {
            prop_assert_eq!(v, VnetHdr::default());
            prop_assert!(checksums_valid(pkt));
        }
    }

    #[test]
    fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200), mss in 0usize..2000) {
        let mut out = Vec::new();
        let _ = split_tcp(&b, mss, &mut out);
        let mut g = b.clone();
        let _ = glue(&mut g, mss, &[true, false, true]);
        let mut x = b.clone();
        let _ = fill_checksum(&mut x);
        let _ = partial_checksum(&mut x);
        let _ = VnetHdr::parse(&b);
    }
}

#[test]
fn other_flows_gaps_and_drops_are_not_glued() {
    let a = super_packet(&[1; 100], false);
    let mut b = a.clone();
    b[24..28].copy_from_slice(&1_000_100u32.to_be_bytes());
    fill_checksum(&mut b);
    let mut other = b.clone();
    other[21] ^= 1; // another source port
    fill_checksum(&mut other);
    // a, then a again (a retransmission: not contiguous), then b (follows the second a),
    // then another flow, then a dropped one.
    let mut buf = [a.clone(), a.clone(), b.clone(), other.clone(), b.clone()].concat();
    let outs = glue(&mut buf, a.len(), &[true, true, true, true, false]);
    let sizes: Vec<usize> = outs.iter().map(|o| o.len() - VNET_HDR_LEN).collect();
    assert_eq!(sizes, vec![a.len(), a.len() + 100, other.len()]);
    // A UDP packet goes alone, with an empty header.
    let u = build(UDP, (Ipv4Addr::new(10, 30, 0, 2), 1), (Ipv4Addr::new(10, 18, 0, 66), 2), b"x");
    let mut buf = [u.clone(), u.clone()].concat();
    let outs = glue(&mut buf, u.len(), &[true, true]);
    assert_eq!(outs.len(), 2);
    assert_eq!(VnetHdr::parse(&outs[0]), Some(VnetHdr::default()));
    assert_eq!(parse(&outs[0][VNET_HDR_LEN..]).map(|p| p.proto), Some(UDP));
}

/// What `coalesce` would write, one buffer per packet.
fn glue(buf: &mut [u8], seg: usize, ok: &[bool]) -> Vec<Vec<u8>> {
    let mut outs = Vec::new();
    coalesce(buf, seg, ok, |parts| outs.push(parts.iter().flat_map(|p| p.iter().copied()).collect()));
    outs
}

#[test]
fn vnet_header_round_trips() {
    let h = VnetHdr { flags: 1, gso_type: 1, hdr_len: 52, gso_size: 1398, csum_start: 20, csum_offset: 16 };
    let mut b = [0u8; VNET_HDR_LEN];
    h.write(&mut b);
    assert_eq!(VnetHdr::parse(&b), Some(h));
}
