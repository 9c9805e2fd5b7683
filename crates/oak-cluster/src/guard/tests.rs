use super::*;
use proptest::prelude::*;

fn s(x: &str) -> Vec<u8> {
    let mut v = (x.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(x.as_bytes());
    v
}

fn connect_body(user: &str, will: Option<&str>) -> Vec<u8> {
    let mut b = s("MQTT");
    b.push(4);
    b.push(0x80 | 0x40 | if will.is_some() { 0x04 | 0x08 } else { 0 });
    b.extend_from_slice(&5u16.to_be_bytes());
    b.extend(s(&format!("{user}-ne")));
    if let Some(w) = will {
        b.extend(s(w));
        b.extend(s("session"));
    }
    b.extend(s(user));
    b.extend(s("password"));
    b
}

fn user_of(body: &[u8]) -> Result<String, String> {
    parse_connect(body).map(|c| c.user)
}

fn subscribe(filters: &[&str]) -> Vec<u8> {
    let mut b = vec![0, 7];
    for f in filters {
        b.extend(s(f));
        b.push(1);
    }
    b
}

#[test]
fn a_worker_stays_under_its_own_topics() {
    assert_eq!(
        user_of(&connect_body(
            "11111111-1111-4111-8111-111111111111",
            Some("nodes/11111111-1111-4111-8111-111111111111/lost")
        )),
        Ok("11111111-1111-4111-8111-111111111111".into())
    );
    assert!(
        user_of(&connect_body(
            "11111111-1111-4111-8111-111111111111",
            Some("nodes/22222222-2222-4222-8222-222222222222/lost")
        ))
        .is_err(),
        "a will on another's topic"
    );
    assert!(
        user_of(&connect_body(
            "11111111-1111-4111-8111-111111111111",
            Some("nodes/11111111-1111-4111-8111-111111111111x/lost")
        ))
        .is_err(),
        "a prefix is not the node"
    );
    assert_eq!(
        check(
            "11111111-1111-4111-8111-111111111111",
            0x82,
            &subscribe(&["nodes/11111111-1111-4111-8111-111111111111/control/#"])
        ),
        Verdict::Forward
    );
    assert_eq!(
        check(
            "11111111-1111-4111-8111-111111111111",
            0x82,
            &subscribe(&[
                "nodes/11111111-1111-4111-8111-111111111111/control/#",
                "nodes/+/information",
                "#",
                "nodes/22222222-2222-4222-8222-222222222222/job"
            ])
        ),
        Verdict::Refuse(vec![0x90, 6, 0, 7, 1, 0x80, 0x80, 0x80])
    );
    assert_eq!(
        check(
            "11111111-1111-4111-8111-111111111111",
            0x32,
            &[s("nodes/11111111-1111-4111-8111-111111111111/information"), vec![0, 1]].concat()
        ),
        Verdict::Forward
    );
    assert!(matches!(
        check("11111111-1111-4111-8111-111111111111", 0x32, &s("nodes/22222222-2222-4222-8222-222222222222/job")),
        Verdict::Close(_)
    ));
    assert!(matches!(
        check("11111111-1111-4111-8111-111111111111", 0x30, &s("jobs/x/updates_available")),
        Verdict::Close(_)
    ));
    assert!(
        matches!(
            check(
                "11111111-1111-4111-8111-111111111111",
                0x10,
                &connect_body("11111111-1111-4111-8111-111111111111", None)
            ),
            Verdict::Close(_)
        ),
        "a second CONNECT"
    );
    assert_eq!(check("11111111-1111-4111-8111-111111111111", 0xc0, &[]), Verdict::Forward, "PINGREQ");
}

#[test]
fn a_refusal_of_many_filters_is_a_well_formed_suback() {
    let filters: Vec<String> = (2..202).map(|i| format!("nodes/n{i}/x")).collect();
    let refs: Vec<&str> = filters.iter().map(String::as_str).collect();
    let Verdict::Refuse(ack) = check("11111111-1111-4111-8111-111111111111", 0x82, &subscribe(&refs)) else {
        panic!("not refused")
    };
    // Fixed header (type, two length bytes), packet id, one code per filter.
    assert_eq!(frame(&ack, MAX_PACKET), Ok(Some((3, 202))));
    assert_eq!(ack.len(), 3 + 202);
    assert!(ack[5..].iter().all(|c| *c == 0x80));
}

#[test]
fn lengths_are_framed_and_bounded() {
    assert_eq!(frame(&[0x30], MAX_PACKET), Ok(None));
    assert_eq!(frame(&[0x30, 5], MAX_PACKET), Ok(Some((2, 5))));
    assert_eq!(frame(&[0x30, 0x80, 0x01], MAX_PACKET), Ok(Some((3, 128))));
    assert!(frame(&[0x30, 0xff, 0xff, 0xff, 0x7f], MAX_PACKET).is_err(), "over the limit");
    assert!(frame(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], MAX_PACKET).is_err(), "five length bytes");
}

proptest! {
    #[test]
    fn garbage_is_refused_without_panic(b in proptest::collection::vec(any::<u8>(), 0..300), first in any::<u8>()) {
        let _ = frame(&b, MAX_PACKET);
        let _ = user_of(&b);
        let _ = check("11111111-1111-4111-8111-111111111111", first, &b);
    }
}

#[test]
fn only_a_worker_id_logs_in_never_the_clusters_own_client() {
    for user in
        ["oak-cluster", "", "11111111-1111-4111-8111-11111111111", "../x", "11111111-1111-4111-8111-11111111111G"]
    {
        assert!(user_of(&connect_body(user, None)).is_err(), "{user:?} accepted");
    }
}

/// A guard in front of a "broker" that accepts and never answers.
async fn silent_guard() -> std::net::SocketAddr {
    silent_guard_with(crate::broker::Credentials::default()).await
}

async fn silent_guard_with(creds: crate::broker::Credentials) -> std::net::SocketAddr {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let up = upstream.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = upstream.accept().await {
            held.push(s);
        }
    });
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(serve(l, up, creds, None));
    addr
}

/// Reads until the guard closes; how long that took.
async fn closed_after(mut c: TcpStream) -> std::time::Duration {
    let t = std::time::Instant::now();
    let mut b = [0u8; 64];
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(20), c.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return t.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("still open after 20 s"),
        }
    }
}

#[tokio::test]
async fn a_stranger_cannot_announce_a_big_connect_nor_wait_without_logging_in() {
    let creds = crate::broker::Credentials::default();
    creds.set("11111111-1111-4111-8111-111111111111", crate::broker::hash("password"));
    let addr = silent_guard_with(creds).await;
    // A CONNECT announcing 4 MiB: refused from its header, before any byte of it is kept.
    let mut c = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
    c.write_all(&[0x10, 0xff, 0xff, 0xff, 0x01]).await.unwrap_or_else(|e| panic!("{e}"));
    let _ = c.write_all(&vec![0u8; 64 * 1024]).await;
    assert!(closed_after(c).await < std::time::Duration::from_secs(2));
    // A connection that sends nothing, and one whose login the broker never accepts.
    let idle = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
    let mut pending = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
    let body = connect_body("11111111-1111-4111-8111-111111111111", None);
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    pending.write_all(&packet).await.unwrap_or_else(|e| panic!("{e}"));
    let (a, b) = tokio::join!(closed_after(idle), closed_after(pending));
    for t in [a, b] {
        assert!(t >= LOGIN_TIMEOUT - std::time::Duration::from_millis(500) && t < LOGIN_TIMEOUT * 2, "{t:?}");
    }
}

#[tokio::test]
async fn one_address_cannot_hold_every_pending_login() {
    let addr = silent_guard().await;
    let mut held = Vec::new();
    for _ in 0..MAX_PENDING_PER_SOURCE {
        held.push(TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{e}")));
    }
    // Let the guard count them before the next one comes.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let extra = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(closed_after(extra).await < std::time::Duration::from_secs(1), "the 65th pending login was kept");
    // Another address is not affected (127.0.0.2 reaches a guard on 127.0.0.1).
    let other = tokio::net::TcpSocket::new_v4().unwrap_or_else(|e| panic!("{e}"));
    other.bind("127.0.0.2:0".parse().unwrap_or_else(|e| panic!("{e}"))).unwrap_or_else(|e| panic!("{e}"));
    let mut other = other.connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(std::time::Duration::from_millis(500), other.read(&mut b)).await;
    assert!(r.is_err(), "a connection from elsewhere was closed at once: {r:?}");
    drop(held);
}

/// The broker never sees a worker's own password: the guard checks it and logs in with the
/// relay password; a wrong one is refused by the guard itself, at once.
#[tokio::test]
async fn the_guard_checks_the_password_and_relays_its_own() {
    let n1 = "11111111-1111-4111-8111-111111111111";
    let body = connect_body(n1, Some(&format!("nodes/{n1}/lost")));
    let c = parse_connect(&body).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((c.client_id.as_str(), c.password.as_str()), (format!("{n1}-ne").as_str(), "password"));
    let creds = crate::broker::Credentials::default();
    let packet = with_password(&body, &c, &creds.relay_password(n1));
    let (head, len) = frame(&packet, MAX_CONNECT).ok().flatten().unwrap_or_else(|| panic!("unframed"));
    let relayed = parse_connect(&packet[head..head + len]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((relayed.user.as_str(), relayed.client_id.as_str()), (n1, c.client_id.as_str()));
    assert_eq!(relayed.password, creds.relay_password(n1));
    assert_eq!(&packet[head..head + c.user_at], &body[..c.user_at], "everything before the user name is kept");

    // A wrong password: the guard answers "bad user name or password" and closes.
    creds.set(n1, crate::broker::hash("the real one"));
    let addr = silent_guard_with(creds).await;
    let mut conn = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
    // (Framed by the same encoder, with the worker's wrong password.)
    conn.write_all(&with_password(&body, &c, "password")).await.unwrap_or_else(|e| panic!("{e}"));
    let mut ack = [0u8; 4];
    tokio::time::timeout(std::time::Duration::from_secs(2), conn.read_exact(&mut ack))
        .await
        .unwrap_or_else(|_| panic!("no answer"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ack, REFUSED_LOGIN);
}
