//! Measuring the RTT to user addresses on the cluster's request (LDP, S2U latency): ICMP echo
//! first (an unprivileged ping socket, else a raw one), else the time a TCP connection to
//! port 443, then 80, takes to be accepted or refused. Each way takes the least of
//! [`TRIES`] tries of at most [`TRY_TIMEOUT`].

use oak_api::ldp::{MAX_MEASURE_TARGETS, MeasureReply, MeasureRequest, Measured};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::net::{TcpStream, UdpSocket};

/// Tries per way of measuring; the least counts.
pub(crate) const TRIES: usize = 3;
/// How long one try waits for its answer.
pub(crate) const TRY_TIMEOUT: Duration = Duration::from_secs(1);
/// TCP ports tried, in order, when ICMP gets no answer.
pub(crate) const TCP_PORTS: [u16; 2] = [443, 80];
/// The longest request id echoed back.
const MAX_REQUEST_ID: usize = 128;

const ICMP_ECHO: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP6_ECHO: u8 = 128;
const ICMP6_ECHO_REPLY: u8 = 129;
/// Echo header (8 bytes) and a random token of ours.
const ECHO_LEN: usize = 16;

/// An address worth measuring: not one that stands for no host or for many.
fn measurable(ip: IpAddr) -> bool {
    !ip.is_unspecified()
        && !ip.is_multicast()
        && match ip {
            IpAddr::V4(v4) => !v4.is_broadcast(),
            IpAddr::V6(_) => true,
        }
}

/// The answer to `req`: each target (each once, at most [`MAX_MEASURE_TARGETS`]) measured
/// at the same time.
pub(crate) async fn answer(req: MeasureRequest, tries: usize, timeout: Duration) -> MeasureReply {
    let mut targets: Vec<IpAddr> = Vec::new();
    for t in req.targets {
        let t = t.to_canonical();
        if !targets.contains(&t) && targets.len() < MAX_MEASURE_TARGETS {
            targets.push(t);
        }
    }
    let mut set = tokio::task::JoinSet::new();
    for (i, t) in targets.iter().enumerate() {
        let t = *t;
        set.spawn(async move { (i, measure(t, tries, timeout).await) });
    }
    let mut results: Vec<Option<Measured>> = vec![None; targets.len()];
    while let Some(r) = set.join_next().await {
        if let Ok((i, m)) = r
            && let Some(slot) = results.get_mut(i)
        {
            *slot = Some(m);
        }
    }
    let results = targets
        .iter()
        .zip(results)
        .map(|(t, m)| m.unwrap_or(Measured { addr: *t, ms: None, how: String::new() }))
        .collect();
    let mut request_id = req.request_id;
    if request_id.len() > MAX_REQUEST_ID {
        let mut end = MAX_REQUEST_ID;
        while !request_id.is_char_boundary(end) {
            end -= 1;
        }
        request_id.truncate(end);
    }
    MeasureReply { request_id, results }
}

/// The RTT to `addr`: ICMP echo, else TCP connect to 443, else to 80.
pub(crate) async fn measure(addr: IpAddr, tries: usize, timeout: Duration) -> Measured {
    let none = |how: &str| Measured { addr, ms: None, how: how.to_owned() };
    if !measurable(addr) {
        return none("");
    }
    match icmp_rtt(addr, tries, timeout).await {
        Ok(Some(rtt)) => return Measured { addr, ms: Some(ms(rtt)), how: "icmp".into() },
        Ok(None) => {}
        Err(e) => tracing::debug!(%addr, error = %e, "no ICMP echo; measuring with TCP"),
    }
    for port in TCP_PORTS {
        if let Some(rtt) = tcp_rtt(SocketAddr::new(addr, port), tries, timeout).await {
            return Measured { addr, ms: Some(ms(rtt)), how: "tcp".into() };
        }
    }
    none("")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The least time of `tries` TCP connections to `to` to be accepted or refused (a RST is an
/// answer too); `None` when none got either.
pub(crate) async fn tcp_rtt(to: SocketAddr, tries: usize, timeout: Duration) -> Option<Duration> {
    let mut best: Option<Duration> = None;
    for _ in 0..tries {
        let t0 = Instant::now();
        let answered = match tokio::time::timeout(timeout, TcpStream::connect(to)).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
            Err(_) => false,
        };
        let rtt = t0.elapsed();
        if answered {
            best = Some(best.map_or(rtt, |b| b.min(rtt)));
        } else if best.is_none() {
            // Nothing answered (filtered, unreachable): another try would fare no better.
            return None;
        }
    }
    best
}

/// An ICMP echo socket towards `to`: an unprivileged ping socket where the system allows it
/// (`net.ipv4.ping_group_range`), else a raw one (root, or CAP_NET_RAW). True when raw.
fn icmp_socket(to: IpAddr) -> std::io::Result<(UdpSocket, bool)> {
    let (domain, proto) = match to {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    let (sock, raw) = match Socket::new(domain, Type::DGRAM, Some(proto)) {
        Ok(s) => (s, false),
        Err(_) => (Socket::new(domain, Type::RAW, Some(proto))?, true),
    };
    sock.set_nonblocking(true)?;
    // Connected: only packets from `to` arrive.
    sock.connect(&SocketAddr::new(to, 0).into())?;
    Ok((UdpSocket::from_std(std::net::UdpSocket::from(sock))?, raw))
}

/// The Internet checksum of `b`.
pub(crate) fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        let w = u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]);
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo request: type, code, checksum, identifier, sequence, then the token.
pub(crate) fn echo_request(v6: bool, id: u16, seq: u16, token: u64) -> [u8; ECHO_LEN] {
    let mut p = [0u8; ECHO_LEN];
    p[0] = if v6 { ICMP6_ECHO } else { ICMP_ECHO };
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(&token.to_be_bytes());
    if !v6 {
        // ICMPv6's checksum covers a pseudo-header: the kernel computes it.
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
    }
    p
}

/// True when `pkt` (as a socket of that kind reads it) is the reply to our request: echo
/// reply, our sequence number and token, and (on a raw socket, where the identifier is ours
/// to choose) our identifier.
pub(crate) fn is_reply(pkt: &[u8], v6: bool, raw: bool, id: u16, seq: u16, token: u64) -> bool {
    // A raw IPv4 socket reads the IP header too.
    let icmp = if raw && !v6 {
        let Some(&first) = pkt.first() else { return false };
        if first >> 4 != 4 {
            return false;
        }
        match pkt.get(usize::from(first & 0x0f) * 4..) {
            Some(rest) => rest,
            None => return false,
        }
    } else {
        pkt
    };
    let Some(h) = icmp.get(..ECHO_LEN) else { return false };
    let want = if v6 { ICMP6_ECHO_REPLY } else { ICMP_ECHO_REPLY };
    h[0] == want
        && h[1] == 0
        && (!raw || h[4..6] == id.to_be_bytes())
        && h[6..8] == seq.to_be_bytes()
        && h[8..16] == token.to_be_bytes()
}

/// The least RTT of `tries` ICMP echoes to `to`; `Ok(None)` when none was answered, an error
/// when this worker cannot send any.
pub(crate) async fn icmp_rtt(to: IpAddr, tries: usize, timeout: Duration) -> std::io::Result<Option<Duration>> {
    let (sock, raw) = icmp_socket(to)?;
    let v6 = to.is_ipv6();
    let id: u16 = rand::random();
    let token: u64 = rand::random();
    let mut best: Option<Duration> = None;
    let mut buf = [0u8; 1500];
    for seq in 1..=tries.min(usize::from(u16::MAX)) as u16 {
        let req = echo_request(v6, id, seq, token);
        let t0 = Instant::now();
        sock.send(&req).await?;
        let deadline = tokio::time::Instant::from_std(t0 + timeout);
        // Until the reply, the deadline, or an error (an ICMP unreachable, say: no answer).
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            if is_reply(buf.get(..n).unwrap_or_default(), v6, raw, id, seq, token) {
                let rtt = t0.elapsed();
                best = Some(best.map_or(rtt, |b| b.min(rtt)));
                break;
            }
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const FAST: Duration = Duration::from_millis(500);

    #[tokio::test]
    async fn a_tcp_connect_times_an_accepting_listener() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            for _ in 0..3 {
                let _ = l.accept().await;
            }
        });
        let rtt = tcp_rtt(addr, 3, FAST).await.expect("an answer from the listener");
        assert!(rtt < FAST, "{rtt:?}");
        accept.await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_answer_too() {
        // A port nothing listens on: the kernel answers with a RST.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let to = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        let rtt = tcp_rtt(to, 3, FAST).await.expect("a refusal");
        assert!(rtt < FAST, "{rtt:?}");
    }

    #[tokio::test]
    async fn icmp_echo_to_loopback_is_answered_where_this_process_may_send_it() {
        for to in [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)] {
            match icmp_rtt(to, 2, FAST).await {
                Ok(rtt) => assert!(rtt.is_some_and(|r| r < FAST), "{to}: {rtt:?}"),
                // Neither a ping socket (net.ipv4.ping_group_range) nor a raw one (root), or
                // no IPv6 here: nothing to check.
                Err(e) => eprintln!("note: no ICMP echo to {to} from this process: {e}"),
            }
        }
    }

    #[tokio::test]
    async fn echo_or_connect_to_loopback_gives_a_time_and_says_how() {
        // Loopback only: ICMP where this process may send it, else TCP (443 or 80 on
        // loopback are refused when nothing listens: still an answer).
        let m = measure(IpAddr::V4(Ipv4Addr::LOCALHOST), 2, FAST).await;
        assert!(m.ms.is_some_and(|ms| (0.0..500.0).contains(&ms)), "{m:?}");
        assert!(m.how == "icmp" || m.how == "tcp", "{m:?}");
    }

    #[tokio::test]
    async fn requests_are_bounded_deduplicated_and_answer_every_target() {
        let mut targets: Vec<IpAddr> = vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED); 3];
        targets.push(IpAddr::V4(Ipv4Addr::BROADCAST));
        targets.push("224.0.0.1".parse().unwrap());
        // Loopback only (127.0.0.0/8 is this host's).
        for i in 0..40u8 {
            targets.push(IpAddr::V4(Ipv4Addr::new(127, 0, 1, i)));
        }
        let req = MeasureRequest { request_id: "r".repeat(300), targets };
        let reply = answer(req, 1, FAST).await;
        assert_eq!(reply.request_id.len(), MAX_REQUEST_ID);
        assert_eq!(reply.results.len(), MAX_MEASURE_TARGETS);
        let first: Vec<IpAddr> = reply.results.iter().take(3).map(|m| m.addr).collect();
        assert_eq!(first, ["0.0.0.0", "255.255.255.255", "224.0.0.1"].map(|a| a.parse::<IpAddr>().unwrap()));
        // Addresses that stand for no host, or for many, are not measured.
        assert!(reply.results[..3].iter().all(|m| m.ms.is_none()));
    }

    #[test]
    fn echo_requests_carry_a_valid_checksum_and_replies_are_matched() {
        let req = echo_request(false, 0x1234, 7, 0xdead_beef);
        assert_eq!(checksum(&req), 0, "a packet with its checksum sums to zero");
        let mut reply = req;
        reply[0] = ICMP_ECHO_REPLY;
        assert!(is_reply(&reply, false, false, 0, 7, 0xdead_beef), "a ping socket's id is the kernel's");
        assert!(!is_reply(&req, false, false, 0x1234, 7, 0xdead_beef), "our own request is not a reply");
        assert!(!is_reply(&reply, false, false, 0x1234, 8, 0xdead_beef));
        assert!(!is_reply(&reply, false, false, 0x1234, 7, 1));
        assert!(!is_reply(&reply[..10], false, false, 0x1234, 7, 0xdead_beef));
        // A raw IPv4 socket reads the IP header first.
        let mut ip = vec![0x45u8; 1];
        ip.extend_from_slice(&[0; 19]);
        ip.extend_from_slice(&reply);
        assert!(is_reply(&ip, false, true, 0x1234, 7, 0xdead_beef));
        assert!(!is_reply(&ip, false, true, 0x4321, 7, 0xdead_beef), "a raw socket's id is ours");
        assert!(!is_reply(&ip[..22], false, true, 0x1234, 7, 0xdead_beef));
        assert!(!is_reply(&[0x4f], false, true, 0x1234, 7, 0xdead_beef));
        let mut r6 = echo_request(true, 1, 2, 3);
        r6[0] = ICMP6_ECHO_REPLY;
        assert!(is_reply(&r6, true, true, 1, 2, 3));
    }

    proptest::proptest! {
        #[test]
        fn reply_matching_never_panics(pkt in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
                                       v6: bool, raw: bool) {
            let _ = is_reply(&pkt, v6, raw, 1, 1, 1);
        }
    }
}
