//! What crosses the underlay: an `AF_PACKET` socket in the root network namespace, where the
//! test hosts' veths meet, sees every datagram between them (no tcpdump needed).

use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, recv, setsockopt, socket, sockopt};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// The UDP payloads to or from `port` seen during `for_`, in the order they passed (each
/// datagram is seen twice: leaving one veth and entering the other).
pub fn udp_payloads(port: u16, for_: Duration) -> Vec<Vec<u8>> {
    let fd = socket(AddressFamily::Packet, SockType::Raw, SockFlag::empty(), SockProtocol::EthAll)
        .expect("an AF_PACKET socket (needs root)");
    setsockopt(&fd, sockopt::ReceiveTimeout, &nix::sys::time::TimeVal::new(0, 100_000)).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 70_000];
    let until = Instant::now() + for_;
    while Instant::now() < until {
        let Ok(n) = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) else { continue };
        let frame = &buf[..n];
        // Ethernet (14 bytes), IPv4, UDP.
        if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ip[0] >> 4 != 4 || ip[9] != 17 || ip.len() < ihl + 8 {
            continue;
        }
        let udp = &ip[ihl..];
        let (sport, dport) = (u16::from_be_bytes([udp[0], udp[1]]), u16::from_be_bytes([udp[2], udp[3]]));
        if sport == port || dport == port {
            out.push(udp[8..].to_vec());
        }
    }
    out
}

/// True when `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
