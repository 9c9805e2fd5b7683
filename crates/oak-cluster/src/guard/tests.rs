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
    assert_eq!(connect(&connect_body("n1", Some("nodes/n1/lost"))), Ok("n1".into()));
    assert!(connect(&connect_body("n1", Some("nodes/n2/lost"))).is_err(), "a will on another's topic");
    assert!(connect(&connect_body("n1", Some("nodes/n1x/lost"))).is_err(), "a prefix is not the node");
    assert_eq!(check("n1", 0x82, &subscribe(&["nodes/n1/control/#"])), Verdict::Forward);
    assert_eq!(
        check("n1", 0x82, &subscribe(&["nodes/n1/control/#", "nodes/+/information", "#", "nodes/n2/job"])),
        Verdict::Refuse(vec![0x90, 6, 0, 7, 1, 0x80, 0x80, 0x80])
    );
    assert_eq!(check("n1", 0x32, &[s("nodes/n1/information"), vec![0, 1]].concat()), Verdict::Forward);
    assert!(matches!(check("n1", 0x32, &s("nodes/n2/job")), Verdict::Close(_)));
    assert!(matches!(check("n1", 0x30, &s("jobs/x/updates_available")), Verdict::Close(_)));
    assert!(matches!(check("n1", 0x10, &connect_body("n1", None)), Verdict::Close(_)), "a second CONNECT");
    assert_eq!(check("n1", 0xc0, &[]), Verdict::Forward, "PINGREQ");
}

#[test]
fn a_refusal_of_many_filters_is_a_well_formed_suback() {
    let filters: Vec<String> = (2..202).map(|i| format!("nodes/n{i}/x")).collect();
    let refs: Vec<&str> = filters.iter().map(String::as_str).collect();
    let Verdict::Refuse(ack) = check("n1", 0x82, &subscribe(&refs)) else { panic!("not refused") };
    // Fixed header (type, two length bytes), packet id, one code per filter.
    assert_eq!(frame(&ack), Ok(Some((3, 202))));
    assert_eq!(ack.len(), 3 + 202);
    assert!(ack[5..].iter().all(|c| *c == 0x80));
}

#[test]
fn lengths_are_framed_and_bounded() {
    assert_eq!(frame(&[0x30]), Ok(None));
    assert_eq!(frame(&[0x30, 5]), Ok(Some((2, 5))));
    assert_eq!(frame(&[0x30, 0x80, 0x01]), Ok(Some((3, 128))));
    assert!(frame(&[0x30, 0xff, 0xff, 0xff, 0x7f]).is_err(), "over the limit");
    assert!(frame(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err(), "five length bytes");
}

proptest! {
    #[test]
    fn garbage_is_refused_without_panic(b in proptest::collection::vec(any::<u8>(), 0..300), first in any::<u8>()) {
        let _ = frame(&b);
        let _ = connect(&b);
        let _ = check("n1", first, &b);
    }
}
