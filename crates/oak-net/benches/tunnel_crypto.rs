//! Sealing and opening 1400-byte segments on one core: the tunnel's crypto cost, without
//! system calls. Two tunnel ends in one process finish a handshake over loopback, then one
//! thread seals super-packets' worth of segments (40 per buffer, as the egress thread does) and
//! opens them (as the ingress thread does after a GRO read).
//! `cargo bench -p oak-net --bench tunnel_crypto [-- SEGMENT_BYTES]`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use oak_net::sys::GroBatch;
use oak_net::tunnel::{self, Sealed, Tunnel, TunnelKey};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn end(seed: u8) -> (Tunnel, UdpSocket, SocketAddrV4) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let SocketAddr::V4(addr) = sock.local_addr().unwrap() else { unreachable!() };
    let t = Tunnel::new(&TunnelKey::from_bytes([seed; 32]), sock.try_clone().unwrap(), Arc::default(), |_, _| {});
    (t, sock, addr)
}

/// Receives and opens what arrives until the socket is quiet.
fn pump(t: &Tunnel, sock: &UdpSocket) {
    let mut gro = GroBatch::new(8, 65535, 0);
    let mut out = vec![0; 65535 + tunnel::MIN_OUT];
    let mut ok = Vec::new();
    while gro.recv(sock).unwrap() > 0 {
        for i in 0..8 {
            let Some(from) = gro.source(i) else { break };
            let (buf, seg) = gro.datagram_mut(i).unwrap();
            t.open(from, buf, seg, &mut out, &mut ok);
        }
    }
}

fn main() {
    let size: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(1400);
    let (a, a_sock, a_addr) = end(1);
    let (b, b_sock, b_addr) = end(2);
    a.set_peers([(b_addr, b.public_key())]);
    b.set_peers([(a_addr, a.public_key())]);
    let mut pkt = vec![0x5a; size];
    pkt[0] = 0x45;
    pkt[2..4].copy_from_slice(&(size as u16).to_be_bytes());
    let mut scratch = vec![0; tunnel::MIN_OUT];
    assert!(a.send(b_addr, &pkt, &mut scratch));
    pump(&b, &b_sock);
    pump(&a, &a_sock);
    pump(&b, &b_sock);
    let peer = a.peer_for(b_addr).unwrap();
    const SEGMENTS: usize = 40;
    let wire_seg = size + tunnel::OVERHEAD;
    let mut wire = vec![0; SEGMENTS * wire_seg + tunnel::MIN_OUT];
    let mut out = vec![0; SEGMENTS * wire_seg + tunnel::MIN_OUT];
    let mut ok = Vec::new();
    let rounds = 20_000;
    let (mut sealing, mut opening) = (Duration::ZERO, Duration::ZERO);
    let mut opened = 0usize;
    for _ in 0..rounds {
        let t0 = Instant::now();
        for k in 0..SEGMENTS {
            match a.seal(&peer, &pkt, &mut wire[k * wire_seg..]) {
                Sealed::Data(n) => assert_eq!(n, wire_seg),
                other => panic!("no session: {other:?}"),
            }
        }
        let t1 = Instant::now();
        b.open(a_addr, &wire[..SEGMENTS * wire_seg], wire_seg, &mut out, &mut ok);
        opening += t1.elapsed();
        sealing += t1 - t0;
        opened += ok.iter().filter(|x| **x).count();
    }
    assert_eq!(opened, rounds * SEGMENTS, "every segment opens");
    let bytes = (rounds * SEGMENTS * size) as f64;
    let gbit = |d: Duration| bytes * 8.0 / d.as_secs_f64() / 1e9;
    println!("segment {size} B, {} segments", rounds * SEGMENTS);
    println!(
        "seal  {:6.2} Gbit/s  ({:.0} ns per segment)",
        gbit(sealing),
        sealing.as_nanos() as f64 / (rounds * SEGMENTS) as f64
    );
    println!(
        "open  {:6.2} Gbit/s  ({:.0} ns per segment)",
        gbit(opening),
        opening.as_nanos() as f64 / (rounds * SEGMENTS) as f64
    );
    println!("both  {:6.2} Gbit/s on one core", gbit(sealing + opening));
}
