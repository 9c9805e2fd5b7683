//! The latency emulator of the test harness (`common/latency.rs`): the round trips it makes
//! between bare hosts (network namespaces on one bridge) match its delays, follow changes at
//! run time, and vanish with every rule when it is dropped. Needs root (CI runs as root).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::latency::{
    LatencyEmulator, TcpSink, TestHosts, UdpEcho, can_emulate, median, ms, tcp_connect_rtts, tcp_send, udp_rtts,
};
use std::net::SocketAddrV4;
use std::process::Command;
use std::time::Duration;

const ECHO: u16 = 7007;
const SINK: u16 = 7008;
/// How much later than the emulated delay a median round trip may be.
const SLACK_MS: f64 = 5.0;

/// The median UDP round trip from host `a` to host `b`'s echo, in ms.
fn udp_rtt(h: &TestHosts, a: usize, b: usize) -> f64 {
    let rtts = udp_rtts(h.netns(a), SocketAddrV4::new(h.ip(b), ECHO), 15).unwrap();
    ms(median(&rtts))
}

fn assert_rtt(what: &str, measured: f64, expected: f64) {
    eprintln!("{what}: median {measured:.2} ms, expected {expected:.1} ms");
    assert!(
        (expected..=expected + SLACK_MS).contains(&measured),
        "{what}: median round trip {measured:.2} ms, expected {expected} to {} ms",
        expected + SLACK_MS
    );
}

/// Our rules in any table of a host namespace.
fn our_rules(netns: &str, chain: &str) -> Vec<String> {
    let mut found = Vec::new();
    for table in ["filter", "mangle", "nat", "raw"] {
        let out =
            Command::new("ip").args(["netns", "exec", netns, "iptables", "-w", "-t", table, "-S"]).output().unwrap();
        assert!(out.status.success(), "iptables -S in {netns}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        found.extend(
            text.lines().filter(|l| l.contains(chain) || l.contains("NFQUEUE")).map(|l| format!("{table}: {l}")),
        );
    }
    found
}

#[test]
fn round_trips_follow_the_delays_of_each_direction() {
    if !can_emulate("round_trips_follow_the_delays_of_each_direction") {
        return;
    }
    let h = TestHosts::new(3).unwrap();
    let _echo: Vec<UdpEcho> = (0..3).map(|i| UdpEcho::start(h.netns(i), ECHO).unwrap()).collect();
    let _sink = TcpSink::start(h.netns(2), SINK).unwrap();
    let base = udp_rtt(&h, 0, 1);
    eprintln!("without the emulator: a-b {base:.3} ms");
    assert!(base < 2.0, "a-b round trip {base} ms before any delay");

    // a-b 10 ms each way, a-c 40 ms each way, b→c 5 ms but c→b 25 ms.
    let d = [[0.0, 10.0, 40.0], [10.0, 0.0, 5.0], [40.0, 25.0, 0.0]];
    let lat = LatencyEmulator::start(&h.hosts, |a, b| d[a][b]).unwrap();
    assert_rtt("udp a-b", udp_rtt(&h, 0, 1), 20.0);
    assert_rtt("udp b-a", udp_rtt(&h, 1, 0), 20.0);
    assert_rtt("udp a-c", udp_rtt(&h, 0, 2), 80.0);
    assert_rtt("udp b-c", udp_rtt(&h, 1, 2), 30.0);
    assert_rtt("udp c-b", udp_rtt(&h, 2, 1), 30.0);
    let tcp = tcp_connect_rtts(h.netns(0), SocketAddrV4::new(h.ip(2), SINK), 7).unwrap();
    assert_rtt("tcp connect a-c", ms(median(&tcp)), 80.0);

    // A host's own address and loopback are not delayed.
    let own = ms(median(&udp_rtts(h.netns(0), SocketAddrV4::new(h.ip(0), ECHO), 9).unwrap()));
    let lo = ms(median(&udp_rtts(h.netns(0), SocketAddrV4::new([127, 0, 0, 1].into(), ECHO), 9).unwrap()));
    eprintln!("own address {own:.3} ms, loopback {lo:.3} ms");
    assert!(own < 2.0 && lo < 2.0, "own address {own} ms, loopback {lo} ms: not to be delayed");

    let c = lat.counters().unwrap();
    eprintln!("counters: {c:?}");
    assert!(c.iter().all(|c| c.dropped == 0 && c.errors == 0 && c.bypassed() == 0 && c.delayed > 0), "{c:?}");
}

#[test]
fn set_changes_a_delay_while_running() {
    if !can_emulate("set_changes_a_delay_while_running") {
        return;
    }
    let h = TestHosts::new(2).unwrap();
    let _echo = UdpEcho::start(h.netns(1), ECHO).unwrap();
    let lat = LatencyEmulator::start(&h.hosts, |_, _| 5.0).unwrap();
    assert_rtt("5+5 ms", udp_rtt(&h, 0, 1), 10.0);
    lat.set(0, 1, 30.0);
    assert_rtt("30+5 ms", udp_rtt(&h, 0, 1), 35.0);
    lat.set(1, 0, 30.0);
    assert_eq!(lat.get(1, 0), 30.0);
    assert_rtt("30+30 ms", udp_rtt(&h, 0, 1), 60.0);
    lat.set(0, 1, 0.0);
    lat.set(1, 0, 0.0);
    let zero = udp_rtt(&h, 0, 1);
    eprintln!("0+0 ms: median {zero:.3} ms");
    assert!(zero < 2.0, "round trip {zero} ms with no delay left");
}

#[test]
fn dropping_removes_every_rule_and_the_delay() {
    if !can_emulate("dropping_removes_every_rule_and_the_delay") {
        return;
    }
    let h = TestHosts::new(2).unwrap();
    let _echo = UdpEcho::start(h.netns(1), ECHO).unwrap();
    let lat = LatencyEmulator::start(&h.hosts, |_, _| 20.0).unwrap();
    let chain = lat.chain().to_owned();
    for i in 0..2 {
        let rules = our_rules(h.netns(i), &chain);
        assert_eq!(rules.len(), 3, "chain, its rule and the jump in {}: {rules:?}", h.netns(i));
    }
    assert_rtt("20+20 ms", udp_rtt(&h, 0, 1), 40.0);
    drop(lat);
    for i in 0..2 {
        assert_eq!(our_rules(h.netns(i), &chain), Vec::<String>::new(), "left in {}", h.netns(i));
    }
    let after = udp_rtt(&h, 0, 1);
    eprintln!("after drop: median {after:.3} ms");
    assert!(after < 2.0, "round trip {after} ms after the emulator was dropped");

    // A panic while it runs removes its rules as well.
    eprintln!("a deliberate panic follows");
    let hosts = h.hosts.clone();
    let chain = std::panic::catch_unwind(move || {
        let lat = LatencyEmulator::start(&hosts, |_, _| 20.0).unwrap();
        let chain = lat.chain().to_owned();
        std::panic::panic_any(chain);
    })
    .unwrap_err()
    .downcast::<String>()
    .unwrap();
    for i in 0..2 {
        assert_eq!(our_rules(h.netns(i), &chain), Vec::<String>::new(), "left in {} after a panic", h.netns(i));
    }
}

#[test]
fn a_bulk_transfer_passes_delayed_without_loss() {
    if !can_emulate("a_bulk_transfer_passes_delayed_without_loss") {
        return;
    }
    let h = TestHosts::new(2).unwrap();
    let sink = TcpSink::start(h.netns(1), SINK).unwrap();
    let lat = LatencyEmulator::start(&h.hosts, |_, _| 10.0).unwrap();
    const BYTES: usize = 8 << 20;
    let took = tcp_send(h.netns(0), SocketAddrV4::new(h.ip(1), SINK), BYTES).map_err(|e| format!("{e:#}")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sink.bytes() < BYTES as u64 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(sink.bytes(), BYTES as u64);
    eprintln!("8 MiB over 10+10 ms in {:.0} ms ({:.1} MB/s)", ms(took), BYTES as f64 / took.as_secs_f64() / 1e6);
    // Handshake, data and the close: at least a few round trips.
    assert!(took >= Duration::from_millis(40), "8 MiB in {took:?}: not delayed?");

    // A burst of UDP datagrams, as fast as the sender may.
    let burst = common::latency::in_netns(h.netns(0), {
        let to = SocketAddrV4::new(h.ip(1), 9);
        move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
            for _ in 0..5000 {
                s.send_to(&[0u8; 1200], to)?;
            }
            Ok(())
        }
    });
    burst.join().unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let c = lat.counters().unwrap();
    eprintln!("counters: {c:?}");
    assert!(c.iter().all(|c| c.dropped == 0 && c.errors == 0 && c.bypassed() == 0), "{c:?}");
    // Delayed where they arrive: at b.
    assert!(c[1].delayed >= 5000, "{c:?}");
}
