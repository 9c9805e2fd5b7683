//! IPv4 TCP/UDP packets: parsing just enough to translate them, and rewriting addresses with
//! incremental checksum updates (RFC 1624), so a translation costs a few arithmetic
//! operations instead of a full re-checksum of the payload.
//!
//! Everything here works on untrusted bytes (from a container or from the tunnel): every
//! length is checked, and anything that is not a well-formed, unfragmented IPv4 TCP or UDP
//! packet is refused with `None`.

use std::net::Ipv4Addr;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

/// Where the parts of a packet are, and its flow identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    /// Offset of the TCP/UDP header.
    pub l4: usize,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Parses an IPv4 TCP or UDP packet. Refuses: other versions and protocols, bad header
/// lengths, a total length beyond the buffer, fragments, and truncated L4 headers.
pub fn parse(b: &[u8]) -> Option<Packet> {
    if b.len() < 20 || b[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(b[0] & 0x0f) * 4;
    let total = usize::from(be16(b, 2));
    if ihl < 20 || total < ihl || total > b.len() {
        return None;
    }
    // More-fragments set, or a non-zero offset: ports are not (all) there.
    if be16(b, 6) & 0x3fff != 0 {
        return None;
    }
    let proto = b[9];
    let l4len = match proto {
        TCP => 20,
        UDP => 8,
        _ => return None,
    };
    if total < ihl + l4len {
        return None;
    }
    if proto == TCP && usize::from(b[ihl + 12] >> 4) * 4 < 20 {
        return None;
    }
    Some(Packet {
        proto,
        src: Ipv4Addr::new(b[12], b[13], b[14], b[15]),
        dst: Ipv4Addr::new(b[16], b[17], b[18], b[19]),
        sport: be16(b, ihl),
        dport: be16(b, ihl + 2),
        l4: ihl,
        tcp_flags: if proto == TCP { b[ihl + 13] } else { 0 },
    })
}

/// One's-complement sum update: the checksum `old_sum` after 16-bit words `from` became `to`.
fn update(old_sum: u16, from: [u16; 2], to: [u16; 2]) -> u16 {
    // RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')
    let mut s = u32::from(!old_sum);
    for (f, t) in from.iter().zip(to.iter()) {
        s += u32::from(!*f) + u32::from(*t);
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn words(a: Ipv4Addr) -> [u16; 2] {
    let o = a.octets();
    [u16::from_be_bytes([o[0], o[1]]), u16::from_be_bytes([o[2], o[3]])]
}

/// Rewrites source and destination addresses of a packet `parse` accepted, fixing the IP
/// header checksum and the TCP/UDP checksum (whose pseudo-header holds both addresses).
/// A UDP checksum of zero means "none" and stays zero.
pub fn rewrite(b: &mut [u8], p: &Packet, src: Ipv4Addr, dst: Ipv4Addr) {
    let (os, od, ns, nd) = (words(p.src), words(p.dst), words(src), words(dst));
    let fix = |b: &mut [u8], at: usize, zero_means_none: bool| {
        let old = be16(b, at);
        if zero_means_none && old == 0 {
            return;
        }
        let mut new = update(update(old, os, ns), od, nd);
        if zero_means_none && new == 0 {
            new = 0xffff;
        }
        b[at..at + 2].copy_from_slice(&new.to_be_bytes());
    };
    fix(b, 10, false);
    match p.proto {
        TCP => fix(b, p.l4 + 16, false),
        UDP => fix(b, p.l4 + 6, true),
        _ => {}
    }
    b[12..16].copy_from_slice(&src.octets());
    b[16..20].copy_from_slice(&dst.octets());
}

/// The Internet checksum of `data`, word by word (the reference the tests check against).
#[cfg(test)]
pub fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut s: u32 = 0;
    for c in chunks {
        let mut i = 0;
        while i + 1 < c.len() {
            s += u32::from(be16(c, i));
            i += 2;
        }
        if i < c.len() {
            s += u32::from(c[i]) << 8;
        }
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// True when the IP header and the TCP/UDP checksums of `b` are valid.
#[cfg(test)]
pub fn checksums_valid(b: &[u8]) -> bool {
    let Some(p) = parse(b) else { return false };
    let total = usize::from(be16(b, 2));
    if checksum(&[&b[..p.l4]]) != 0 {
        return false;
    }
    let seg = &b[p.l4..total];
    if p.proto == UDP && be16(b, p.l4 + 6) == 0 {
        return true;
    }
    let len = (seg.len() as u16).to_be_bytes();
    let pseudo = [b[12], b[13], b[14], b[15], b[16], b[17], b[18], b[19], 0, p.proto, len[0], len[1]];
    checksum(&[&pseudo, seg]) == 0
}

/// Builds a valid packet.
#[cfg(test)]
pub fn build(proto: u8, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    let l4len = if proto == TCP { 20 } else { 8 };
    let total = 20 + l4len + payload.len();
    let mut b = vec![0u8; total];
    b[0] = 0x45;
    b[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    b[6] = 0x40; // DF
    b[8] = 64;
    b[9] = proto;
    b[12..16].copy_from_slice(&src.0.octets());
    b[16..20].copy_from_slice(&dst.0.octets());
    let c = checksum(&[&b[..20]]);
    b[10..12].copy_from_slice(&c.to_be_bytes());
    b[20..22].copy_from_slice(&src.1.to_be_bytes());
    b[22..24].copy_from_slice(&dst.1.to_be_bytes());
    if proto == TCP {
        b[32] = 5 << 4;
        b[33] = 0x18; // PSH ACK
        b[34..36].copy_from_slice(&64240u16.to_be_bytes());
    } else {
        b[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    }
    b[20 + l4len..].copy_from_slice(payload);
    let len = ((l4len + payload.len()) as u16).to_be_bytes();
    let pseudo = [b[12], b[13], b[14], b[15], b[16], b[17], b[18], b[19], 0, proto, len[0], len[1]];
    let mut c = checksum(&[&pseudo, &b[20..]]);
    if proto == UDP && c == 0 {
        c = 0xffff;
    }
    let at = if proto == TCP { 36 } else { 26 };
    b[at..at + 2].copy_from_slice(&c.to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip() -> impl Strategy<Value = Ipv4Addr> {
        any::<u32>().prop_map(Ipv4Addr::from)
    }

    proptest! {
        #[test]
        fn rewrite_keeps_checksums_valid_and_round_trips(
            tcp in any::<bool>(), s in ip(), d in ip(), sp in any::<u16>(), dp in any::<u16>(),
            ns in ip(), nd in ip(), payload in proptest::collection::vec(any::<u8>(), 0..1400),
        ) {
            let proto = if tcp { TCP } else { UDP };
            let orig = build(proto, (s, sp), (d, dp), &payload);
            prop_assert!(checksums_valid(&orig));
            let mut b = orig.clone();
            let p = parse(&b).unwrap();
            prop_assert_eq!((p.src, p.dst, p.sport, p.dport, p.proto), (s, d, sp, dp, proto));
            rewrite(&mut b, &p, ns, nd);
            prop_assert!(checksums_valid(&b), "checksum broken after rewrite");
            let q = parse(&b).unwrap();
            prop_assert_eq!((q.src, q.dst, q.sport, q.dport), (ns, nd, sp, dp));
            rewrite(&mut b, &q, s, d);
            // Back to the original addresses: only a checksum may differ, in its other
            // one's-complement representation of zero (0x0000 vs 0xffff).
            prop_assert!(checksums_valid(&b));
            prop_assert_eq!(&b[12..20], &orig[12..20]);
            prop_assert_eq!(&b[p.l4 + 8..], &orig[p.l4 + 8..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Some(p) = parse(&b) {
                let mut c = b.clone();
                rewrite(&mut c, &p, Ipv4Addr::LOCALHOST, Ipv4Addr::BROADCAST);
                prop_assert!(p.l4 + 8 <= c.len());
            }
        }

        #[test]
        fn mangled_headers_are_refused_or_parsed_in_bounds(
            payload in proptest::collection::vec(any::<u8>(), 0..64), at in 0usize..40, v in any::<u8>(),
        ) {
            let mut b = build(TCP, (Ipv4Addr::LOCALHOST, 1), (Ipv4Addr::LOCALHOST, 2), &payload);
            let at = at % b.len();
            b[at] = v;
            if let Some(p) = parse(&b) {
                prop_assert!(p.l4 + 20 <= b.len());
            }
        }
    }

    #[test]
    fn zero_udp_checksum_stays_zero() {
        let mut b = build(UDP, (Ipv4Addr::new(10, 18, 0, 2), 5), (Ipv4Addr::new(10, 30, 0, 1), 53), b"q");
        b[26] = 0;
        b[27] = 0;
        let p = parse(&b).unwrap();
        rewrite(&mut b, &p, Ipv4Addr::new(10, 30, 0, 9), Ipv4Addr::new(10, 18, 0, 66));
        assert_eq!(&b[26..28], &[0, 0]);
        assert!(checksums_valid(&b));
    }

    #[test]
    fn fragments_other_protocols_and_truncation_are_refused() {
        let good = build(TCP, (Ipv4Addr::LOCALHOST, 1), (Ipv4Addr::LOCALHOST, 2), b"x");
        assert!(parse(&good).is_some());
        let mut frag = good.clone();
        frag[6] = 0x20; // more fragments
        assert!(parse(&frag).is_none());
        let mut icmp = good.clone();
        icmp[9] = 1;
        assert!(parse(&icmp).is_none());
        assert!(parse(&good[..30]).is_none());
        let mut v6 = good;
        v6[0] = 0x60;
        assert!(parse(&v6).is_none());
    }
}
