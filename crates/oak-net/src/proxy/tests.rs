use super::*;
use crate::packet::{UDP, build, checksums_valid, parse};
use oak_api::net::TableInstance;
use std::sync::mpsc;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

const A: &str = "192.168.50.1";
const B: &str = "192.168.50.2";
const RR: &str = "10.30.30.30";

struct World {
    a: Proxy,
    b: Proxy,
    misses: mpsc::Receiver<Ipv4Addr>,
}

fn proxy(host: &str, subnet: &str, tx: mpsc::Sender<Ipv4Addr>) -> Proxy {
    Proxy::new(SocketAddrV4::new(ip(host), 50103), None, (ip(subnet), 26), move |d| {
        let _ = tx.send(d);
    })
}

fn inst(n: u32, iip: &str, ns: &str, host: &str) -> TableInstance {
    TableInstance {
        instance_number: n,
        instance_ip: ip(iip),
        ns_ip: ip(ns),
        host_ip: host.into(),
        host_port: 50103,
        location: None,
        coord: None,
        host_key: None,
    }
}

/// Client (10.18.0.2, Instance IP 10.30.0.2) on A; three server replicas, two on B, one on A.
fn world() -> World {
    let (tx, misses) = mpsc::channel();
    let a = proxy(A, "10.18.0.0", tx.clone());
    let b = proxy(B, "10.18.0.64", tx);
    a.add_local(ip("10.18.0.2"), ip("10.30.0.2"));
    a.add_local(ip("10.18.0.3"), ip("10.30.0.13"));
    b.add_local(ip("10.18.0.66"), ip("10.30.0.11"));
    b.add_local(ip("10.18.0.67"), ip("10.30.0.12"));
    let tables = vec![
        ServiceTable {
            service_id: "client".into(),
            job_name: "c.c.c.c".into(),
            rr_ip: None,
            closest_ip: None,
            instances: vec![inst(0, "10.30.0.2", "10.18.0.2", A)],
        },
        ServiceTable {
            service_id: "server".into(),
            job_name: "s.s.s.s".into(),
            rr_ip: Some(ip(RR)),
            closest_ip: Some(ip("10.30.30.31")),
            instances: vec![
                inst(0, "10.30.0.11", "10.18.0.66", B),
                inst(1, "10.30.0.12", "10.18.0.67", B),
                inst(2, "10.30.0.13", "10.18.0.3", A),
            ],
        },
    ];
    assert!(a.set_tables(&tables).is_empty());
    assert!(b.set_tables(&tables).is_empty());
    World { a, b, misses }
}

fn now() -> Instant {
    Instant::now()
}

#[test]
fn a_request_and_its_reply_see_semantic_peers() {
    let w = world();
    let mut req = build(TCP, (ip("10.18.0.2"), 40000), (ip(RR), 80), b"GET /");
    let v = w.a.egress(&mut req, now());
    assert_eq!(v, Verdict::Send(SocketAddrV4::new(ip(B), 50103)), "first RR pick is replica 0 on B");
    let p = parse(&req).unwrap();
    assert_eq!((p.src, p.dst, p.sport, p.dport), (ip("10.30.0.2"), ip("10.18.0.66"), 40000, 80));
    assert!(checksums_valid(&req));
    // B delivers it unchanged: the server sees the client's Instance IP.
    assert!(w.b.ingress(&mut req));
    assert_eq!(parse(&req).unwrap().src, ip("10.30.0.2"));

    // The server replies to the client's Instance IP.
    let mut reply = build(TCP, (ip("10.18.0.66"), 80), (ip("10.30.0.2"), 40000), b"200 OK");
    assert_eq!(w.b.egress(&mut reply, now()), Verdict::Send(SocketAddrV4::new(ip(A), 50103)));
    let p = parse(&reply).unwrap();
    assert_eq!((p.src, p.dst), (ip("10.30.0.11"), ip("10.18.0.2")));
    // A turns the source back into the address the client dialled.
    assert!(w.a.ingress(&mut reply));
    let p = parse(&reply).unwrap();
    assert_eq!((p.src, p.dst, p.sport, p.dport), (ip(RR), ip("10.18.0.2"), 80, 40000));
    assert!(checksums_valid(&reply));
}

#[test]
fn round_robin_is_exact_and_flows_stick() {
    let w = world();
    let mut hits: HashMap<Ipv4Addr, u32> = HashMap::new();
    for port in 0..300u16 {
        for _ in 0..3 {
            // Every packet of a connection goes to the same replica.
            let mut pkt = build(TCP, (ip("10.18.0.2"), 20000 + port), (ip(RR), 80), b"x");
            w.a.egress(&mut pkt, now());
            if let Some(p) = parse(&pkt) {
                *hits.entry(p.dst).or_default() += 1;
            }
        }
    }
    assert_eq!(hits.len(), 3);
    assert!(hits.values().all(|n| *n == 300), "{hits:?}");
}

#[test]
fn instance_ip_always_reaches_its_instance_and_hairpins_locally() {
    let w = world();
    for port in 0..50u16 {
        let mut pkt = build(UDP, (ip("10.18.0.2"), 30000 + port), (ip("10.30.0.12"), 53), b"q");
        assert_eq!(w.a.egress(&mut pkt, now()), Verdict::Send(SocketAddrV4::new(ip(B), 50103)));
        assert_eq!(parse(&pkt).unwrap().dst, ip("10.18.0.67"));
    }
    let mut pkt = build(UDP, (ip("10.18.0.2"), 1), (ip("10.30.0.13"), 53), b"q");
    assert_eq!(w.a.egress(&mut pkt, now()), Verdict::Local);
    assert!(w.a.ingress(&mut pkt));
    assert_eq!(parse(&pkt).unwrap().dst, ip("10.18.0.3"));
}

#[test]
fn closest_prefers_this_worker() {
    let w = world();
    for port in 0..10u16 {
        let mut pkt = build(TCP, (ip("10.18.0.2"), 1000 + port), (ip("10.30.30.31"), 80), b"x");
        assert_eq!(w.a.egress(&mut pkt, now()), Verdict::Local);
    }
}

/// The closest instance is the one with the lowest RTT: measured when this worker measured
/// its worker, else predicted from coordinates; locations only without either.
#[test]
fn closest_goes_by_latency_then_by_distance() {
    use oak_api::ldp::Coord;
    let (tx, _misses) = mpsc::channel();
    let a = proxy(A, "10.18.0.0", tx);
    a.add_local(ip("10.18.0.2"), ip("10.30.0.2"));
    let (c, d, e) = ("192.168.50.3", "192.168.50.4", "192.168.50.5");
    let mut far = inst(0, "10.30.0.21", "10.18.0.130", c);
    far.coord = Some(Coord::new(50.0, 0.0, 1.0, 0.1));
    far.location = Some("48.1,11.5".into()); // next door, on the map
    let mut near = inst(1, "10.30.0.22", "10.18.0.194", d);
    near.coord = Some(Coord::new(5.0, 0.0, 1.0, 0.1));
    near.location = Some("52.5,13.4".into());
    let mut unknown = inst(2, "10.30.0.23", "10.18.1.2", e);
    unknown.location = Some("48.1,11.6".into());
    let table = |instances| {
        vec![ServiceTable {
            service_id: "s".into(),
            job_name: "s.s.s.s".into(),
            rr_ip: None,
            closest_ip: Some(ip("10.30.30.40")),
            instances,
        }]
    };
    let pick = |a: &Proxy, port: u16| {
        let mut pkt = build(TCP, (ip("10.18.0.2"), port), (ip("10.30.30.40"), 80), b"x");
        a.egress(&mut pkt, now())
    };
    let to = |h: &str| Verdict::Send(SocketAddrV4::new(ip(h), 50103));
    a.set_tables(&table(vec![far.clone(), near.clone(), unknown.clone()]));
    // Without a coordinate of its own, the worker goes by the map.
    let a = Proxy { my_location: parse_location("48.1,11.5"), ..a };
    assert_eq!(pick(&a, 1), to(c));
    // With one, by predicted RTT: `near` (6 ms away) beats `far` (51 ms) and `unknown`.
    a.set_latencies(Some(Coord::new(0.0, 0.0, 0.5, 0.1)), HashMap::new());
    for port in 2..12 {
        assert_eq!(pick(&a, port), to(d));
    }
    // A measured RTT beats a prediction.
    a.set_latencies(Some(Coord::new(0.0, 0.0, 0.5, 0.1)), HashMap::from([(ip(c), 2.0), (ip(d), 30.0)]));
    assert_eq!(pick(&a, 20), to(c));
}

#[test]
fn a_miss_waits_alone_and_is_released_by_the_table() {
    let w = world();
    let unknown = ip("10.30.99.1");
    for i in 0..40u16 {
        let mut pkt = build(UDP, (ip("10.18.0.2"), 5000 + i), (unknown, 9), b"x");
        let v = w.a.egress(&mut pkt, now());
        assert!(matches!(v, Verdict::Pending | Verdict::Drop(DropReason::QueueFull)));
    }
    // One notice for the whole burst; known destinations keep flowing meanwhile.
    assert_eq!(w.misses.try_iter().collect::<Vec<_>>(), vec![unknown]);
    let mut other = build(TCP, (ip("10.18.0.2"), 1), (ip(RR), 80), b"x");
    assert!(matches!(w.a.egress(&mut other, now()), Verdict::Send(_)));
    assert!(w.a.interests(now()).contains(&unknown));

    let table = ServiceTable {
        service_id: "late".into(),
        job_name: "l.l.l.l".into(),
        rr_ip: Some(unknown),
        closest_ip: None,
        instances: vec![inst(0, "10.30.0.50", "10.18.0.70", B)],
    };
    let released = w.a.set_tables(&[table]);
    assert_eq!(released.len(), MAX_WAITING);
    // The other tables were replaced: a's old flows to RR are gone with them.
    assert_eq!(w.a.flow_count(), 0);
}

#[test]
fn a_dead_replica_gets_no_new_flows_and_its_flows_move() {
    let w = world();
    let mut pkt = build(TCP, (ip("10.18.0.2"), 7), (ip(RR), 80), b"x");
    w.a.egress(&mut pkt, now());
    assert_eq!(parse(&pkt).unwrap().dst, ip("10.18.0.66"));
    let tables = vec![ServiceTable {
        service_id: "server".into(),
        job_name: "s.s.s.s".into(),
        rr_ip: Some(ip(RR)),
        closest_ip: None,
        instances: vec![inst(1, "10.30.0.12", "10.18.0.67", B)],
    }];
    w.a.set_tables(&tables);
    for port in [7u16, 8, 9] {
        let mut pkt = build(TCP, (ip("10.18.0.2"), port), (ip(RR), 80), b"x");
        w.a.egress(&mut pkt, now());
        assert_eq!(parse(&pkt).unwrap().dst, ip("10.18.0.67"));
    }
}

#[test]
fn the_tunnel_reaches_only_local_instances_from_semantic_sources() {
    let w = world();
    let mut elsewhere = build(TCP, (ip("10.30.0.2"), 1), (ip("10.18.0.130"), 80), b"x");
    assert!(!w.b.ingress(&mut elsewhere));
    let mut spoofed = build(TCP, (ip("192.168.1.1"), 1), (ip("10.18.0.66"), 80), b"x");
    assert!(!w.b.ingress(&mut spoofed));
    assert!(!w.b.ingress(&mut [0x45, 0, 0]));
    let mut not_mine = build(TCP, (ip("10.18.0.9"), 1), (ip(RR), 80), b"x");
    assert_eq!(w.a.egress(&mut not_mine, now()), Verdict::Drop(DropReason::UnknownSource));
}

#[test]
fn idle_and_closed_flows_expire() {
    let w = world();
    let t0 = now();
    let mut syn = build(TCP, (ip("10.18.0.2"), 1), (ip(RR), 80), b"");
    w.a.egress(&mut syn, t0);
    let mut fin = build(TCP, (ip("10.18.0.2"), 2), (ip(RR), 80), b"");
    fin[33] = TCP_FIN;
    let p = parse(&fin).unwrap();
    assert_eq!(p.tcp_flags & TCP_FIN, TCP_FIN);
    w.a.egress(&mut fin, t0);
    assert_eq!(w.a.flow_count(), 2);
    w.a.sweep(t0 + Duration::from_secs(11));
    assert_eq!(w.a.flow_count(), 1, "the closed flow went after 10 s");
    assert!(w.a.interests(t0 + Duration::from_secs(11)).is_empty(), "idle for 10 s: no interest");
    w.a.sweep(t0 + Duration::from_secs(601));
    assert_eq!(w.a.flow_count(), 0);
}

#[test]
fn a_reused_client_port_starts_a_new_balanced_flow() {
    let w = world();
    let send = |flags: u8| {
        let mut pkt = build(TCP, (ip("10.18.0.2"), 4242), (ip(RR), 80), b"");
        pkt[33] = flags;
        // Keep the checksum valid after changing the flags.
        pkt[36] = 0;
        pkt[37] = 0;
        let len = ((pkt.len() - 20) as u16).to_be_bytes();
        let pseudo = [10, 18, 0, 2, 10, 30, 30, 30, 0, TCP, len[0], len[1]];
        let c = crate::packet::checksum(&[&pseudo, &pkt[20..]]);
        pkt[36..38].copy_from_slice(&c.to_be_bytes());
        w.a.egress(&mut pkt, now());
        parse(&pkt).unwrap().dst
    };
    use crate::packet::{TCP_ACK, TCP_SYN};
    let first = send(TCP_SYN);
    assert_eq!(send(TCP_SYN), first, "a retransmitted SYN stays on its replica");
    assert_eq!(send(TCP_ACK), first);
    send(TCP_FIN | TCP_ACK);
    let second = send(TCP_SYN);
    assert_ne!(second, first, "the next connection on the same port is balanced again");
}
