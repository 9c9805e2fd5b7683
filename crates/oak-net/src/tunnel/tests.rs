//! Two (or three) tunnel ends over loopback UDP sockets in one process, driven through the
//! same calls the data plane makes: `seal`/`send` out, `GroBatch` + `open` in.

use super::*;
use crate::sys::GroBatch;
use std::net::SocketAddr;

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => unreachable!(),
    }
}

/// One worker's end: its tunnel, a receive handle of its socket, what its callback heard.
struct End {
    tunnel: Tunnel,
    sock: UdpSocket,
    addr: SocketAddrV4,
    key: PublicKey,
    unknown: Arc<Mutex<Vec<(String, SocketAddrV4)>>>,
    gro: GroBatch,
    out: Vec<u8>,
    ok: Vec<bool>,
}

impl End {
    fn new(seed: u8) -> Self {
        let key = TunnelKey::from_bytes([seed; 32]);
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(80))).unwrap();
        assert!(crate::sys::enable_udp_gro(&sock));
        let addr = v4(sock.local_addr().unwrap());
        let unknown: Arc<Mutex<Vec<(String, SocketAddrV4)>>> = Arc::default();
        let heard = unknown.clone();
        let tunnel = Tunnel::new(&key, sock.try_clone().unwrap(), Arc::default(), move |k: &str, from| {
            heard.lock().push((k.to_owned(), from));
        });
        Self {
            tunnel,
            sock,
            addr,
            key: key.public_key(),
            unknown,
            gro: GroBatch::new(8, 65535, 0),
            out: vec![0; 65535 + MIN_OUT],
            ok: Vec::new(),
        }
    }

    fn knows(&self, other: &End) {
        self.tunnel.set_peers([(other.addr, other.key)]);
    }

    /// Seals and sends one packet to `other`, as the data plane's slow path does.
    fn send(&self, other: &End, pkt: &[u8]) -> bool {
        let mut scratch = vec![0; MIN_OUT];
        self.tunnel.send(other.addr, pkt, &mut scratch)
    }

    /// A data message for `other`, sealed but not sent (a session must exist).
    fn sealed(&self, other: &End, pkt: &[u8]) -> Vec<u8> {
        let peer = self.tunnel.peer_for(other.addr).unwrap();
        let mut out = vec![0; MIN_OUT];
        match self.tunnel.seal(&peer, pkt, &mut out) {
            Sealed::Data(n) => out[..n].to_vec(),
            other => panic!("no session: {other:?}"),
        }
    }

    /// Receives until the socket stays quiet; the packets that were opened.
    fn receive(&mut self) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        loop {
            let n = self.gro.recv(&self.sock).unwrap();
            if n == 0 {
                return got;
            }
            for i in 0..n {
                let from = self.gro.source(i).unwrap();
                let (buf, seg) = self.gro.datagram_mut(i).unwrap();
                let (slot, total) = self.tunnel.open(from, buf, seg, &mut self.out, &mut self.ok);
                for (k, ok) in self.ok.iter().enumerate() {
                    if *ok {
                        let pkt = &self.out[k * slot..((k + 1) * slot).min(total)];
                        got.push(pkt.to_vec());
                    }
                }
            }
        }
    }

    fn rejected(&self, r: Reject) -> u64 {
        self.tunnel.stats().rejected(r)
    }
}

fn hex32(s: &str) -> [u8; 32] {
    let v: Vec<u8> = (0..64).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect();
    v.try_into().unwrap()
}

#[test]
fn keys_round_trip_in_the_form_wg_prints_and_never_show_the_secret() {
    // RFC 7748 §6.1: Alice's key pair.
    let secret = hex32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
    let public = hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
    let key = TunnelKey::from_bytes(secret);
    assert_eq!(key.public_key(), PublicKey::from_bytes(public));
    assert_eq!(key.to_bytes(), secret);
    let b64 = key.to_base64();
    assert!(oak_api::node::valid_tunnel_key(&b64));
    assert_eq!(TunnelKey::from_base64(&b64).unwrap().to_bytes(), secret);
    let pb64 = key.public_key().to_base64();
    assert_eq!(pb64.parse::<PublicKey>().unwrap(), key.public_key());
    assert!(!format!("{key:?}").contains(&b64), "Debug shows the public half only");
    assert!(format!("{key:?}").contains(&pb64));
    for bad in ["", "short", &pb64[..43], &format!("{}B=", &pb64[..42]), &format!("{pb64}=")] {
        assert!(PublicKey::from_base64(bad).is_err(), "{bad:?}");
        assert!(TunnelKey::from_base64(bad).is_err(), "{bad:?}");
    }
    assert!(!TunnelKey::from_base64("short").unwrap_err().to_string().contains("short"), "a secret is never echoed");
    let g = TunnelKey::generate().unwrap();
    assert_ne!(g.to_bytes(), TunnelKey::generate().unwrap().to_bytes());
    assert_eq!((g.to_bytes()[0] & 7, g.to_bytes()[31] & 0xc0), (0, 0x40), "clamped as wg genkey does");
}

/// An IPv4/UDP packet of `len` bytes whose payload is `tag`.
fn ipv4(len: usize, tag: u8) -> Vec<u8> {
    let mut p = vec![tag; len];
    p[..20].copy_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 30, 0, 1, 10, 18, 0, 66]);
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p
}

/// A and B know each other, and A's first packet has arrived: the handshake is complete.
fn connected() -> (End, End) {
    let (mut a, mut b) = (End::new(1), End::new(2));
    a.knows(&b);
    b.knows(&a);
    let first = ipv4(100, 1);
    assert!(a.send(&b, &first));
    assert!(b.receive().is_empty(), "B answers the handshake; no data yet");
    assert!(a.receive().is_empty(), "A completes it and sends what waited");
    assert_eq!(b.receive(), vec![first], "the packet sent before the handshake is not lost");
    (a, b)
}

#[test]
fn a_handshake_carries_data_both_ways_and_the_first_packet() {
    let (mut a, mut b) = connected();
    let (to_a, to_b) = (ipv4(1400, 2), ipv4(60, 3));
    assert!(b.send(&a, &to_a));
    assert_eq!(a.receive(), vec![to_a.clone()]);
    assert!(a.send(&b, &to_b));
    assert_eq!(b.receive(), vec![to_b.clone()]);
    for r in Reject::ALL {
        assert_eq!((a.rejected(r), b.rejected(r)), (0, 0), "{} in a clean exchange", r.name());
    }
    let pa = a.tunnel.peers();
    assert_eq!(pa.len(), 1);
    let p = &pa[0];
    assert_eq!((p.key.as_str(), p.endpoint, p.in_tables), (b.key.to_base64().as_str(), b.addr, true));
    assert!(p.last_handshake.is_some_and(|d| d < Duration::from_secs(5)));
    assert_eq!((p.tx_packets, p.tx_bytes), (2, 100 + 60), "A sent two packets");
    assert_eq!((p.rx_packets, p.rx_bytes), (1, 1400));
    assert!(a.tunnel.stats().handshakes.load(Ordering::Relaxed) >= 1);
}

#[test]
fn tampered_and_replayed_datagrams_are_dropped_and_counted() {
    let (a, mut b) = connected();
    let pkt = ipv4(200, 4);
    let good = a.sealed(&b, &pkt);
    for at in [20, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 1;
        a.sock.send_to(&bad, b.addr).unwrap();
    }
    assert!(b.receive().is_empty(), "a flipped bit in the payload or the tag fails");
    assert_eq!(b.rejected(Reject::BadAuth), 2);
    a.sock.send_to(&good, b.addr).unwrap();
    assert_eq!(b.receive(), vec![pkt], "the genuine datagram still passes");
    a.sock.send_to(&good, b.addr).unwrap();
    assert!(b.receive().is_empty(), "the same datagram again is a replay");
    assert_eq!(b.rejected(Reject::Replay), 1);
}

#[test]
fn garbage_and_plaintext_are_dropped_and_counted() {
    let (a, mut b) = connected();
    a.sock.send_to(&ipv4(100, 5), b.addr).unwrap();
    a.sock.send_to(&[4, 0, 0, 0, 1, 2], b.addr).unwrap();
    a.sock.send_to(&[9; 148], b.addr).unwrap();
    assert!(b.receive().is_empty());
    assert_eq!(b.rejected(Reject::NotWireGuard), 3, "a plaintext packet, a truncated message, garbage");
    assert!(looks_encrypted(&a.sealed(&b, &ipv4(40, 6))));
    assert!(!looks_encrypted(&ipv4(40, 6)), "no IPv4 packet looks like a WireGuard message");
}

#[test]
fn a_third_party_with_another_key_cannot_inject() {
    let (a, mut b) = connected();
    let mut c = End::new(3);
    c.knows(&b);
    // C's handshake is kept, not answered: B does not know C's key.
    assert!(c.send(&b, &ipv4(100, 7)));
    assert!(b.receive().is_empty());
    assert!(c.receive().is_empty(), "no answer reaches C");
    assert_eq!(b.rejected(Reject::Untrusted), 1);
    assert_eq!(b.unknown.lock().clone(), vec![(c.key.to_base64(), c.addr)], "the worker is asked");
    // A data message forged by C for A's session (index and counter copied) fails its tag.
    let mut forged = a.sealed(&b, &ipv4(100, 8));
    forged[8] = forged[8].wrapping_add(1);
    for x in &mut forged[16..] {
        *x = 0x5a;
    }
    c.sock.send_to(&forged, b.addr).unwrap();
    assert!(b.receive().is_empty());
    assert_eq!(b.rejected(Reject::BadAuth), 1);
    assert_eq!(b.tunnel.peers().iter().map(|p| p.endpoint).collect::<Vec<_>>(), vec![a.addr], "A did not roam to C");
}

#[test]
fn an_unknown_initiator_is_reported_and_connects_at_once_when_trusted() {
    let (mut a, mut b) = (End::new(1), End::new(2));
    a.knows(&b); // B has no tables naming A
    let first = ipv4(84, 9);
    assert!(a.send(&b, &first));
    assert!(b.receive().is_empty());
    assert_eq!(b.unknown.lock().clone(), vec![(a.key.to_base64(), a.addr)]);
    assert!(a.receive().is_empty(), "not answered blindly");
    let trusted = Instant::now();
    b.tunnel.trust(a.key, a.addr);
    assert!(a.receive().is_empty(), "B answered the kept handshake; A sends what waited");
    assert_eq!(b.receive(), vec![first]);
    assert!(trusted.elapsed() < Duration::from_secs(2), "no wait for the initiator's 5 s retry");
    let p = b.tunnel.peers();
    assert_eq!((p.len(), p[0].in_tables), (1, false));
}

#[test]
fn a_revoked_peer_is_dropped_at_once_and_not_relearned_from_tables() {
    let (mut a, mut b) = connected();
    b.tunnel.revoke(a.key);
    assert!(a.send(&b, &ipv4(100, 10)), "A still has its session");
    assert!(b.receive().is_empty());
    assert_eq!(b.rejected(Reject::UnknownSession), 1);
    b.knows(&a);
    assert!(b.tunnel.peers().is_empty(), "tables that still name A do not admit it");
    assert!(!b.send(&a, &ipv4(100, 11)), "nothing is sealed for A");
    // A starts over: its handshake is dropped as revoked, and B's worker is not asked.
    a.tunnel.revoke(b.key);
    a.tunnel.trust(b.key, b.addr);
    assert!(a.send(&b, &ipv4(100, 12)));
    assert!(b.receive().is_empty());
    assert_eq!(b.rejected(Reject::Revoked), 1);
    assert!(b.unknown.lock().is_empty());
    // Trusted again, A's next handshake goes through.
    b.tunnel.trust(a.key, a.addr);
    a.tunnel.revoke(b.key);
    a.tunnel.trust(b.key, b.addr);
    let pkt = ipv4(100, 13);
    assert!(a.send(&b, &pkt));
    assert!(b.receive().is_empty());
    assert!(a.receive().is_empty());
    assert_eq!(b.receive(), vec![pkt]);
}

#[test]
fn an_authenticated_packet_from_a_new_address_moves_the_endpoint() {
    let (a, mut b) = connected();
    let moved = UdpSocket::bind("127.0.0.1:0").unwrap();
    let pkt = ipv4(100, 14);
    moved.send_to(&a.sealed(&b, &pkt), b.addr).unwrap();
    assert_eq!(b.receive(), vec![pkt]);
    assert_eq!(b.tunnel.peers()[0].endpoint, v4(moved.local_addr().unwrap()));
}

/// A TCP super-packet (ACK, and PSH when `push`) from the semantic source 10.30.0.1 to
/// 10.18.0.66: 20-byte IP and TCP headers, `payload` bytes of data. Shared with the data
/// plane's tests.
pub(crate) fn tcp_super_packet(payload: usize, push: bool) -> Vec<u8> {
    let len = 40 + payload;
    let mut p: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    p[..20].copy_from_slice(&[0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 30, 0, 1, 10, 18, 0, 66]);
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    let flags = if push { 0x18 } else { 0x10 };
    p[20..40].copy_from_slice(&[0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 1, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    p
}

fn super_packet(payload: usize) -> Vec<u8> {
    tcp_super_packet(payload, true)
}

#[test]
fn a_super_packet_seals_into_equal_datagrams_that_open_into_its_segments() {
    let (a, mut b) = connected();
    let mss = 1380;
    let pkt = super_packet(20 * mss + 123);
    let mut headers = Vec::new();
    let (hdr, n) = crate::offload::segment_headers(&pkt, mss, &mut headers).unwrap();
    assert_eq!(n, 21);
    let want: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let mut s = headers[i * hdr..(i + 1) * hdr].to_vec();
            s.extend_from_slice(crate::offload::segment_payload(&pkt, hdr, mss, i));
            s
        })
        .collect();
    let mut bufs = crate::dataplane::SealBuffers::new();
    crate::dataplane::send_super_packet_sealed(&a.sock, &a.tunnel, b.addr, &pkt, mss, &mut Vec::new(), &mut bufs);
    // Read the raw datagrams as the kernel coalesced them, then open them.
    let mut got = Vec::new();
    let mut sizes = Vec::new();
    loop {
        let n = b.gro.recv(&b.sock).unwrap();
        if n == 0 {
            break;
        }
        for i in 0..n {
            let from = b.gro.source(i).unwrap();
            let (buf, seg) = b.gro.datagram_mut(i).unwrap();
            sizes.extend(buf.chunks(seg).map(<[u8]>::len));
            let (slot, total) = b.tunnel.open(from, buf, seg, &mut b.out, &mut b.ok);
            assert!(b.ok.iter().all(|ok| *ok), "every segment opens");
            got.extend(b.out[..total].chunks(slot).map(<[u8]>::to_vec));
        }
    }
    let full = hdr + mss + OVERHEAD;
    assert_eq!(sizes.len(), n);
    assert!(sizes[..n - 1].iter().all(|s| *s == full), "full segments seal to {full} bytes: {sizes:?}");
    assert_eq!(sizes[n - 1], hdr + 123 + OVERHEAD);
    assert_eq!(got, want, "the same segments, in order");
    assert_eq!(a.tunnel.peers()[0].tx_packets, 1 + n as u64);
}

#[test]
fn before_a_session_the_segments_of_a_super_packet_wait_for_the_handshake() {
    let (mut a, mut b) = (End::new(1), End::new(2));
    a.knows(&b);
    b.knows(&a);
    let mss = 1000;
    let pkt = super_packet(3 * mss);
    let mut bufs = crate::dataplane::SealBuffers::new();
    crate::dataplane::send_super_packet_sealed(&a.sock, &a.tunnel, b.addr, &pkt, mss, &mut Vec::new(), &mut bufs);
    assert!(b.receive().is_empty(), "only the handshake went out");
    assert!(a.receive().is_empty());
    let got = b.receive();
    assert_eq!(got.len(), 3, "the three segments follow the handshake");
    assert!(got.iter().all(|s| s.len() == 40 + mss));
}

#[test]
fn pending_handshakes_are_bounded_and_reported_once_per_key() {
    let mut b = End::new(2);
    let others: Vec<End> = (10..10 + PENDING_MAX as u8 + 6).map(End::new).collect();
    for o in &others {
        o.knows(&b);
        assert!(o.send(&b, &ipv4(40, 1)));
    }
    b.receive();
    // A retry from a key still kept replaces its handshake and is not reported again (the
    // oldest keys were pushed out: theirs would be).
    let last = &others[others.len() - 1];
    let mut scratch = vec![0; MIN_OUT];
    let p = last.tunnel.peer_for(b.addr).unwrap();
    let n = match p.tunn.lock().format_handshake_initiation(&mut scratch, true) {
        TunnResult::WriteToNetwork(m) => m.len(),
        _ => 0,
    };
    last.sock.send_to(&scratch[..n], b.addr).unwrap();
    b.receive();
    assert_eq!(b.unknown.lock().len(), others.len(), "one report per key");
    assert_eq!(b.tunnel.pending.lock().len(), PENDING_MAX);
}

proptest::proptest! {
    /// Whatever arrives, opening it never panics, and nothing but genuine messages opens.
    #[test]
    fn opening_arbitrary_bytes_never_panics(
        bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..3000),
        seg in 0usize..1600,
        kind in 0u8..5,
    ) {
        let mut b = End::new(2);
        let mut msg = bytes;
        if kind > 0 && msg.len() >= 4 {
            // Past the type check, into each parser.
            msg[..4].copy_from_slice(&[kind, 0, 0, 0]);
        }
        let from = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9);
        let (_, total) = b.tunnel.open(from, &msg, seg, &mut b.out, &mut b.ok);
        proptest::prop_assert!(b.ok.iter().all(|ok| !ok));
        proptest::prop_assert!(total <= msg.len());
        proptest::prop_assert!(b.rejected(Reject::NotWireGuard) + b.rejected(Reject::UnknownSession) + b.rejected(Reject::BadAuth) > 0 || msg.is_empty());
    }

    /// A genuine data message with any bytes changed or cut off is rejected: never opened,
    /// never a panic.
    #[test]
    fn a_mutated_data_message_never_opens(
        edits in proptest::collection::vec((0usize..200, 1u8..=255), 1..4),
        cut in proptest::option::of(0usize..200),
    ) {
        static PAIR: std::sync::OnceLock<Mutex<(End, End)>> = std::sync::OnceLock::new();
        let mut pair = PAIR.get_or_init(|| Mutex::new(connected())).lock();
        let (a, b) = &mut *pair;
        let genuine = a.sealed(b, &ipv4(120, 15));
        let mut msg = genuine.clone();
        for (at, x) in edits {
            let i = at % msg.len();
            msg[i] ^= x;
        }
        if let Some(c) = cut {
            msg.truncate(c);
        }
        proptest::prop_assume!(msg != genuine);
        let seg = msg.len();
        b.tunnel.open(a.addr, &msg, seg, &mut b.out, &mut b.ok);
        proptest::prop_assert!(b.ok.iter().all(|ok| !ok));
    }
}
