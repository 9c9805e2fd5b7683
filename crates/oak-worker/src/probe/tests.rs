//! The probe codec (property-tested), the responder's limits, the pending pings, the peer
//! rotation, and two workers' probes on loopback.

use super::*;
use crate::ldp::{Ldp, LdpConfig};
use crate::table::Outbound;
use oak_api::ldp::MeasureRequest;
use proptest::prelude::*;
use tokio::sync::mpsc;

fn peer(id: &str, last: u8) -> ProbePeer {
    ProbePeer { id: id.into(), addr: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, last), PROBE_PORT) }
}

fn f32_coord() -> impl Strategy<Value = Coord> {
    let c = -60_000.0f32..60_000.0f32;
    let p = 0.0f32..60_000.0f32;
    (c.clone(), c, p.clone(), p).prop_map(|(x, y, h, e)| Coord::new(x.into(), y.into(), h.into(), e.into()))
}

// ------------------------------------------------------------------------------- codec

#[test]
fn pings_and_pongs_are_48_bytes_and_read_back() {
    let ping = Message::Ping { nonce: 7, sent_ns: 99 };
    let b = encode(&ping);
    assert_eq!(b.len(), 48);
    assert_eq!(&b[..6], b"OAKP\x01\x01");
    assert_eq!(decode(&b), Some(ping));
    let pong = Message::Pong { nonce: 7, sent_ns: 99, coord: Coord::new(1.5, -2.0, 0.25, 0.5) };
    let b = encode(&pong);
    assert_eq!(b[5], 2);
    assert_eq!(decode(&b), Some(pong));
}

#[test]
fn anything_not_exactly_well_formed_is_dropped() {
    let ping = encode(&Message::Ping { nonce: 1, sent_ns: 2 });
    let pong = encode(&Message::Pong { nonce: 1, sent_ns: 2, coord: Coord::new(1.0, 2.0, 3.0, 0.5) });
    // Shorter, longer.
    assert_eq!(decode(&ping[..47]), None);
    let mut long = ping.to_vec();
    long.push(0);
    assert_eq!(decode(&long), None);
    assert_eq!(decode(&[]), None);
    // Magic, version, kind, padding.
    for (at, v) in [(0, b'X'), (3, 0), (4, 2), (4, 0), (5, 0), (5, 3), (6, 1), (7, 1), (40, 1), (47, 0x80)] {
        let mut b = ping;
        b[at] = v;
        assert_eq!(decode(&b), None, "byte {at} = {v}");
        let mut b = pong;
        b[at] = v;
        assert_eq!(decode(&b), None, "pong byte {at} = {v}");
    }
    // A ping carries no coordinate.
    let mut b = ping;
    b[30] = 1;
    assert_eq!(decode(&b), None);
    // A pong's coordinate must be valid: finite, bounded, height and error not negative.
    for bad in [Coord::new(f64::NAN, 0.0, 0.0, 0.0), Coord::new(0.0, 0.0, -1.0, 0.0), Coord::new(1e6, 0.0, 0.0, 0.0)] {
        let mut b = pong;
        for (i, v) in [bad.x, bad.y, bad.h, bad.error].into_iter().enumerate() {
            b[24 + 4 * i..28 + 4 * i].copy_from_slice(&(v as f32).to_be_bytes());
        }
        assert_eq!(decode(&b), None, "{bad:?}");
    }
    let mut b = pong;
    b[24..28].copy_from_slice(&f32::INFINITY.to_be_bytes());
    assert_eq!(decode(&b), None);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = decode(&b);
    }

    #[test]
    fn arbitrary_bytes_after_the_header_never_panic(kind in 0u8..4, rest in proptest::collection::vec(any::<u8>(), 42)) {
        let mut b = b"OAKP\x01".to_vec();
        b.push(kind);
        b.extend(rest);
        if let Some(m) = decode(&b) {
            // Whatever is accepted encodes back to the same bytes.
            prop_assert_eq!(encode(&m).to_vec(), b);
        }
    }

    #[test]
    fn pings_round_trip(nonce: u64, sent_ns: u64) {
        let m = Message::Ping { nonce, sent_ns };
        prop_assert_eq!(decode(&encode(&m)), Some(m));
    }

    #[test]
    fn pongs_round_trip(nonce: u64, sent_ns: u64, coord in f32_coord()) {
        let m = Message::Pong { nonce, sent_ns, coord };
        prop_assert_eq!(decode(&encode(&m)), Some(m));
    }
}

// ----------------------------------------------------------------------- rate limiting

#[test]
fn one_source_gets_its_burst_then_its_rate() {
    let t0 = Instant::now();
    let src: IpAddr = "192.0.2.1".parse().unwrap();
    let mut l = Limiter::new(PONGS_PER_S, PONGS_PER_SOURCE_PER_S, MAX_SOURCES, t0);
    let burst = (0..100).filter(|_| l.allow(src, t0)).count();
    assert_eq!(burst, 20);
    // Another source is not held back by the first.
    assert!(l.allow("192.0.2.2".parse().unwrap(), t0));
    // A tenth of a second later: two more.
    let t = t0 + Duration::from_millis(100);
    assert_eq!((0..100).filter(|_| l.allow(src, t)).count(), 2);
    // Over ten seconds: 20 a second, whatever it asks.
    let mut sent = 0;
    for ms in (0..10_000).step_by(10) {
        let t = t0 + Duration::from_millis(200 + ms);
        sent += (0..10).filter(|_| l.allow(src, t)).count();
    }
    assert!((195..=221).contains(&sent), "{sent}");
}

#[test]
fn all_sources_together_get_at_most_the_overall_rate() {
    let t0 = Instant::now();
    let mut l = Limiter::new(PONGS_PER_S, PONGS_PER_SOURCE_PER_S, MAX_SOURCES, t0);
    let mut sent = 0;
    for ms in (0..5_000).step_by(5) {
        let t = t0 + Duration::from_millis(ms);
        for i in 0..20u32 {
            let src = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + ms as u32 * 20 + i));
            sent += usize::from(l.allow(src, t));
        }
    }
    // A second's burst, then 200 a second.
    assert!((1_000..=1_201).contains(&sent), "{sent}");
    assert!(l.sources() <= MAX_SOURCES);
}

#[test]
fn the_source_table_is_bounded_and_forgets_the_oldest() {
    let t0 = Instant::now();
    let mut l = Limiter::new(1e9, 1.0, 4, t0);
    let ip = |i: u8| IpAddr::V4(Ipv4Addr::new(192, 0, 2, i));
    for i in 0..4 {
        assert!(l.allow(ip(i), t0));
    }
    assert!(!l.allow(ip(0), t0), "spent");
    assert!(l.allow(ip(4), t0), "a fifth source pushes out the first");
    assert_eq!(l.sources(), 4);
    assert!(l.allow(ip(0), t0), "forgotten, so it starts afresh");
    assert!(!l.allow(ip(4), t0), "still known, still spent");
    for i in 10..200 {
        l.allow(ip(i), t0);
    }
    assert_eq!(l.sources(), 4);
}

// ------------------------------------------------------------------------ pending pings

#[test]
fn a_pong_answers_only_its_own_ping_within_the_timeout() {
    let t0 = Instant::now();
    let mut p = Pending::new(8, PROBE_TIMEOUT);
    assert!(p.insert(1, "a", 100, t0));
    assert!(!p.insert(1, "b", 100, t0), "a waiting nonce is not replaced");
    assert!(p.insert(2, "b", 200, t0));
    // Unknown nonce, wrong echo.
    assert_eq!(p.answer(3, 100, t0), None);
    assert_eq!(p.answer(1, 101, t0 + Duration::from_millis(5)), None);
    let (peer, rtt) = p.answer(1, 100, t0 + Duration::from_millis(5)).unwrap();
    assert_eq!((peer.as_str(), rtt), ("a", Duration::from_millis(5)));
    assert_eq!(p.answer(1, 100, t0 + Duration::from_millis(6)), None, "used up");
    // Too late.
    assert_eq!(p.answer(2, 200, t0 + PROBE_TIMEOUT + Duration::from_millis(1)), None);
    assert_eq!(p.len(), 0);
}

#[test]
fn pending_pings_expire_and_are_bounded() {
    let t0 = Instant::now();
    let mut p = Pending::new(4, PROBE_TIMEOUT);
    for n in 0..10u64 {
        p.insert(n, "x", n, t0 + Duration::from_millis(n * 100));
        assert!(p.len() <= 4);
    }
    // The oldest went first.
    assert_eq!(p.answer(5, 5, t0 + Duration::from_secs(1)), None);
    assert!(p.answer(9, 9, t0 + Duration::from_secs(1)).is_some());
    p.expire(t0 + Duration::from_millis(800) + PROBE_TIMEOUT + Duration::from_millis(1));
    assert_eq!(p.len(), 0);
    // Answered nonces do not grow the order past its bound.
    for n in 100..1_000u64 {
        p.insert(n, "x", n, t0);
        p.answer(n, n, t0);
    }
    assert!(p.order.len() <= 8, "{}", p.order.len());
}

// ------------------------------------------------------------------------------- peers

#[test]
fn the_peer_set_skips_this_worker_duplicates_and_unusable_addresses() {
    let mut set = ProbePeers { peers: vec![peer("c", 3), peer("me", 1), peer("a", 2), peer("a", 9)] };
    set.peers.push(ProbePeer { id: "zero-port".into(), addr: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 4), 0) });
    set.peers.push(ProbePeer { id: "any".into(), addr: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 1) });
    set.peers.push(ProbePeer { id: "mc".into(), addr: SocketAddrV4::new(Ipv4Addr::new(224, 0, 0, 1), 1) });
    set.peers.push(ProbePeer { id: "bc".into(), addr: SocketAddrV4::new(Ipv4Addr::BROADCAST, 1) });
    set.peers.push(peer("", 5));
    let got = select_peers("me", &set);
    assert_eq!(got, vec![peer("a", 2), peer("c", 3)]);
    let many = ProbePeers { peers: (0..100).map(|i| peer(&format!("p{i:03}"), 1)).collect() };
    let got = select_peers("me", &many);
    assert_eq!(got.len(), MAX_PEERS);
    assert!(got.windows(2).all(|w| w[0].id < w[1].id));
}

#[test]
fn rounds_probe_each_peer_about_every_cycle_within_the_rate_bound() {
    let two = Duration::from_secs(2);
    assert_eq!(per_round(0, two), 0);
    assert_eq!(per_round(1, two), 1);
    assert_eq!(per_round(7, two), 1);
    assert_eq!(per_round(8, two), 2);
    assert_eq!(per_round(32, two), 5);
    for n in 1..=MAX_PEERS {
        for ms in [100u64, 250, 500, 1_000, 2_000, 5_000, 30_000] {
            let interval = Duration::from_millis(ms);
            let k = per_round(n, interval);
            assert!((1..=n).contains(&k));
            let per_s = k as f64 / interval.as_secs_f64();
            assert!(per_s <= MAX_PROBES_PER_S || k == 1, "{n} peers every {ms} ms: {per_s}/s");
            // Each peer comes round within about a cycle (or every round, if rounds are slower).
            let period = (n as f64 / k as f64).ceil() * interval.as_secs_f64();
            assert!(period <= (CYCLE + interval).as_secs_f64() + 1e-9, "{n} peers every {ms} ms: {period} s");
        }
    }
    // The bytes: at most 16 pings and their pongs a second.
    assert!(MAX_PROBES_PER_S * 2.0 * PROBE_LEN as f64 <= 2_000.0);
}

#[test]
fn the_rotation_visits_every_peer_in_turn_across_new_sets() {
    let mut r = Rotation::default();
    assert!(r.next(3).is_empty());
    r.set((0..5).map(|i| peer(&format!("p{i}"), i)).collect());
    let ids = |v: Vec<ProbePeer>| v.into_iter().map(|p| p.id).collect::<Vec<_>>();
    assert_eq!(ids(r.next(2)), ["p0", "p1"]);
    assert_eq!(ids(r.next(2)), ["p2", "p3"]);
    assert_eq!(ids(r.next(2)), ["p4", "p0"]);
    assert_eq!(ids(r.next(9)), ["p1", "p2", "p3", "p4", "p0"], "each at most once a round");
    // The cluster resends the set, with p1 gone and p05 new: the turn goes on after p0.
    let mut s: Vec<ProbePeer> = ["p0", "p05", "p2", "p3", "p4"].iter().map(|id| peer(id, 1)).collect();
    s.sort();
    r.set(s);
    assert_eq!(ids(r.next(2)), ["p05", "p2"]);
    r.set(vec![peer("a", 1)]);
    assert_eq!(ids(r.next(2)), ["a"]);
    assert_eq!(ids(r.next(1)), ["a"]);
}

// ------------------------------------------------------------------------------- state

#[test]
fn a_coordinate_is_reported_after_three_samples_from_a_peer() {
    let mut s = State::new(1);
    let c = Coord::new(10.0, 0.0, 1.0, 0.2);
    s.observe("a", 12.0, c, 1.0);
    s.observe("a", 13.0, c, 1.2);
    s.observe("b", 12.0, c, 1.0);
    s.observe("a", 0.0, c, 1.5);
    s.observe("a", f64::NAN, c, 1.5);
    assert_eq!(s.coord(), None, "two usable samples from a, one from b");
    s.observe("a", 11.0, c, 2.0);
    assert!(s.coord().is_some_and(|c| c.is_valid()));
    let rtts = s.rtts(Instant::now());
    assert_eq!(rtts.iter().map(|r| r.peer.as_str()).collect::<Vec<_>>(), ["a", "b"]);
}

#[test]
fn reported_rtts_are_bounded_with_peers_first_and_recent_users_next() {
    let t0 = Instant::now();
    let mut s = State::new(1);
    for i in 0..40 {
        s.observe(&format!("p{i:02}"), 10.0, Coord::new(0.0, 0.0, 1.0, 1.0), 0.0);
    }
    for i in 0..100u8 {
        s.user_rtt(IpAddr::V4(Ipv4Addr::new(192, 0, 2, i)), f64::from(i), t0 + Duration::from_secs(u64::from(i)));
    }
    s.user_rtt(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 200)), f64::INFINITY, t0);
    assert_eq!(s.users.len(), MAX_USER_RTTS, "the oldest user RTTs went");
    let rtts = s.rtts(t0 + Duration::from_secs(100));
    assert_eq!(rtts.len(), MAX_REPORTED_RTTS);
    assert_eq!(rtts.iter().filter(|r| !r.peer.starts_with("user:")).count(), MAX_PEERS);
    let users: Vec<&str> = rtts.iter().filter_map(|r| r.peer.strip_prefix("user:")).collect();
    assert_eq!(users[0], "192.0.2.99", "newest first");
    // Old ones age out.
    let later = s.rtts(t0 + USER_RTT_TTL + Duration::from_secs(90));
    assert_eq!(later.iter().filter(|r| r.peer.starts_with("user:")).count(), 10);
}

// ---------------------------------------------------------------- two workers, loopback

async fn worker(node: &str, out: mpsc::Sender<Outbound>) -> Ldp {
    let config = LdpConfig {
        node: node.into(),
        bind: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
        advertise: Ipv4Addr::LOCALHOST,
        interval: Duration::from_millis(100),
    };
    Ldp::start_with(config, out, 1, Duration::from_millis(500)).await
}

#[tokio::test]
async fn two_workers_on_loopback_measure_each_other_and_get_coordinates() {
    let (out, mut out_rx) = mpsc::channel(16);
    let a = worker("a", out.clone()).await;
    let b = worker("b", out).await;
    let (Some(pa), _, _) = a.report() else { panic!("a has no probe address") };
    let (Some(pb), None, rtts) = b.report() else { panic!("b has no probe address, or a coordinate already") };
    assert!(rtts.is_empty());
    assert_eq!(*pa.ip(), Ipv4Addr::LOCALHOST);
    assert_ne!(pa.port(), 0);
    // Each is told of both; its own entry is skipped.
    let set =
        ProbePeers { peers: vec![ProbePeer { id: "a".into(), addr: pa }, ProbePeer { id: "b".into(), addr: pb }] };
    a.set_peers(&set);
    b.set_peers(&set);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ra, rb) = (a.report(), b.report());
        if ra.1.is_some() && rb.1.is_some() {
            assert_eq!(ra.2.iter().map(|r| r.peer.as_str()).collect::<Vec<_>>(), ["b"]);
            assert_eq!(rb.2.iter().map(|r| r.peer.as_str()).collect::<Vec<_>>(), ["a"]);
            assert!(ra.2[0].ms > 0.0 && ra.2[0].ms < 100.0, "{:?}", ra.2);
            break;
        }
        assert!(Instant::now() < deadline, "no coordinates after 10 s: {ra:?} {rb:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A measurement request: answered on the way out, and reported as a user RTT.
    a.measure(MeasureRequest { request_id: "r1".into(), targets: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)] });
    let msg = tokio::time::timeout(Duration::from_secs(10), out_rx.recv()).await.unwrap().unwrap();
    let Outbound::Measured(reply) = msg else { panic!("not a measurement") };
    assert_eq!(reply.request_id, "r1");
    assert!(reply.results[0].ms.is_some(), "{reply:?}");
    assert!(a.report().2.iter().any(|r| r.peer == "user:127.0.0.1"));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn the_responder_answers_well_formed_pings_only_and_within_its_rate() {
    let (out, _out_rx) = mpsc::channel(16);
    let w = worker("w", out).await;
    let (Some(addr), _, _) = w.report() else { panic!("no probe address") };
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = [0u8; 128];
    // Garbage and pongs get nothing back.
    sock.send_to(b"hello", addr).await.unwrap();
    sock.send_to(&encode(&Message::Pong { nonce: 1, sent_ns: 1, coord: Coord::default() }), addr).await.unwrap();
    let ping = encode(&Message::Ping { nonce: 42, sent_ns: 4242 });
    sock.send_to(&ping, addr).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!(n, PROBE_LEN, "a pong is as large as the ping");
    let Some(Message::Pong { nonce: 42, sent_ns: 4242, coord }) = decode(&buf[..n]) else { panic!("not our pong") };
    assert!(coord.is_valid());
    // A flood from one source: at most its burst is answered.
    for _ in 0..100 {
        sock.send_to(&ping, addr).await.unwrap();
    }
    let mut answered = 0;
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await {
        answered += 1;
    }
    assert!((15..=25).contains(&answered), "{answered} pongs to a flood of 100");
    w.stop().await;
    // The socket is closed: its port can be bound again at once.
    UdpSocket::bind(addr).await.unwrap();
}
