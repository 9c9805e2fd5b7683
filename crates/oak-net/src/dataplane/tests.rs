//! The egress and ingress steps of the data plane between two tunnel ends over loopback UDP
//! (no TUN: what would be written to it is collected).

use super::*;
use crate::offload::VnetHdr;
use crate::tunnel::TunnelKey;
use std::net::{Ipv4Addr, SocketAddr};

struct End {
    tunnel: Arc<Tunnel>,
    sock: UdpSocket,
    addr: SocketAddrV4,
    proxy: Proxy,
}

fn end(seed: u8, subnet: Ipv4Addr) -> End {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(80))).unwrap();
    assert!(sys::enable_udp_gro(&sock));
    let SocketAddr::V4(addr) = sock.local_addr().unwrap() else { unreachable!() };
    let proxy = Proxy::new(addr, None, (subnet, 26), |_| {});
    let key = TunnelKey::from_bytes([seed; 32]);
    let tunnel = Arc::new(Tunnel::new(&key, sock.try_clone().unwrap(), proxy.stats.tunnel.clone(), |_, _| {}));
    End { tunnel, sock, addr, proxy }
}

/// Everything `to` receives until its socket is quiet, through the ingress step: the packets
/// it would write to its TUN, each as (virtio header, bytes).
fn ingress(to: &End, encrypted: bool) -> Vec<(VnetHdr, Vec<u8>)> {
    let mut gro = GroBatch::new(8, offload::MAX_PACKET, 0);
    let mut opened = vec![0u8; offload::MAX_PACKET + tunnel::MIN_OUT];
    let mut ok = Vec::new();
    let mut written = Vec::new();
    while gro.recv(&to.sock).unwrap() > 0 {
        for i in 0..8 {
            let Some(from) = gro.source(i) else { break };
            let (buf, seg) = gro.datagram_mut(i).unwrap();
            let t = encrypted.then_some(&*to.tunnel);
            ingress_datagram(&to.proxy, t, from, buf, seg, &mut opened, &mut ok, |parts| {
                let vh = VnetHdr::parse(&parts[0]).unwrap();
                written.push((vh, parts[1..].iter().flat_map(|p| p.iter().copied()).collect()));
            });
        }
    }
    written
}

/// A TCP super-packet from a semantic source to an instance of the subnet 10.18.0.64/26.
fn super_packet(payload: usize) -> Vec<u8> {
    crate::tunnel::tests::tcp_super_packet(payload, false)
}

#[test]
fn a_sealed_super_packet_reaches_the_tun_glued_back_together() {
    let a = end(1, Ipv4Addr::new(10, 18, 0, 0));
    let b = end(2, Ipv4Addr::new(10, 18, 0, 64));
    a.tunnel.set_peers([(b.addr, b.tunnel.public_key())]);
    b.tunnel.set_peers([(a.addr, a.tunnel.public_key())]);
    let mss = 1380;
    let pkt = super_packet(30 * mss);
    let mut headers = Vec::new();
    let mut bufs = SealBuffers::new();
    // Before the handshake the segments wait in the tunnel; then they follow it.
    send_super_packet_sealed(&a.sock, &a.tunnel, b.addr, &pkt, mss, &mut headers, &mut bufs);
    assert!(ingress(&b, true).is_empty(), "B answers the handshake");
    assert!(ingress(&a, true).is_empty(), "A sends what waited, one datagram each");
    let waited: usize = ingress(&b, true).iter().map(|(_, p)| p.len() - 40).sum();
    assert_eq!(waited, 30 * mss, "every segment that waited arrives");
    // With a session, one GSO send, one GRO read, one super-packet into the TUN.
    send_super_packet_sealed(&a.sock, &a.tunnel, b.addr, &pkt, mss, &mut headers, &mut bufs);
    let got = ingress(&b, true);
    assert_eq!(got.len(), 1, "glued into one packet");
    let (vh, bytes) = &got[0];
    assert_eq!((vh.gso_type, usize::from(vh.gso_size)), (offload::GSO_TCPV4, mss));
    assert_eq!(bytes.len(), pkt.len());
    assert_eq!(&bytes[2..4], &pkt[2..4], "the IP length of the whole");
    assert_eq!(&bytes[40..], &pkt[40..], "the payload, in order");
    assert_eq!(b.proxy.stats.ingress.load(Ordering::Relaxed), 60);
    assert_eq!(b.proxy.stats.tunnel.rejected_total(), 0);
}

#[test]
fn without_encryption_a_wireguard_message_is_dropped_and_counted() {
    let a = end(1, Ipv4Addr::new(10, 18, 0, 0));
    let b = end(2, Ipv4Addr::new(10, 18, 0, 64));
    a.tunnel.set_peers([(b.addr, b.tunnel.public_key())]);
    let mut scratch = vec![0; tunnel::MIN_OUT];
    assert!(a.tunnel.send(b.addr, &super_packet(100), &mut scratch), "a handshake initiation");
    a.sock.send_to(&super_packet(100), b.addr).unwrap();
    let got = ingress(&b, false);
    assert_eq!(got.len(), 1, "the plaintext packet passes, the handshake does not");
    assert_eq!(b.proxy.stats.tunnel.rejected(Reject::Encrypted), 1);
    // And the other way round: with encryption on, the plaintext packet is rejected.
    a.sock.send_to(&super_packet(100), b.addr).unwrap();
    assert!(ingress(&b, true).is_empty());
    assert_eq!(b.proxy.stats.tunnel.rejected(Reject::NotWireGuard), 1);
}
