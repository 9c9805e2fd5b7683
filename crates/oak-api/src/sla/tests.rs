use super::*;
use proptest::prelude::*;
use serde_json::json;
use std::path::PathBuf;

/// The original project's SLA descriptors, copied into `fixtures/sla`.
fn shared_sla_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/sla")
}

fn fixtures() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut dirs = vec![shared_sla_dir()];
    while let Some(d) = dirs.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("cannot read {}: {e}", d.display()));
        for e in entries {
            let p = e.unwrap_or_else(|e| panic!("{e}")).path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                out.push((p.file_name().unwrap_or_default().to_string_lossy().into_owned(), v));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// What each fixture must produce. A file not listed here is judged by its name: `flawed`
/// ones must be rejected, all others accepted.
const EXPECTED_REJECTIONS: &[(&str, &str)] = &[
    ("sla_flawed_1.json", "sla_version: required field is missing"),
    ("sla_flawed_2.json", "applications[0].microservices[0].microservice_name: must be a string, got a number"),
    ("sla_flawed_3.json", "sla_version: required field is missing"),
    (
        "sla_flawed_4.json",
        "applications[0].microservices[0].connectivity[0].con_constraints[0].type: required field is missing",
    ),
    (
        "sla_flawed_5.json",
        "applications[0].microservices[0].microservice_name: must match ^[a-zA-Z0-9]{1,30}$, got \"test.special.char\"",
    ),
    // The original's schema test accepts this file, but its network plugin then refuses the
    // service at deployment (rr_ip must be 10.30.x.y, oakestra-net.md §2). We refuse it up front.
    (
        "sla_correct_1.json",
        "applications[0].microservices[0].addresses.rr_ip: 192.168.178.4 is outside the service subnet 10.30.0.0/16",
    ),
];

#[test]
fn every_shared_fixture_is_judged() {
    let all = fixtures();
    assert!(all.len() >= 13, "expected the shared SLA fixtures, found {}", all.len());
    for (name, doc) in &all {
        let expected = EXPECTED_REJECTIONS.iter().find(|(n, _)| n == name).map(|(_, m)| *m);
        match (parse_sla(doc), expected) {
            (Ok(sla), None) => {
                assert!(!name.contains("flawed"), "{name} must be rejected");
                assert!(!sla.applications.is_empty(), "{name}");
            }
            (Ok(_), Some(msg)) => panic!("{name} was accepted, expected: {msg}"),
            (Err(e), None) => panic!("{name} was rejected: {e}"),
            (Err(e), Some(msg)) => {
                let all: Vec<String> = e.violations.iter().map(ToString::to_string).collect();
                assert!(all.iter().any(|v| v == msg), "{name}: expected {msg:?} among {all:?}");
            }
        }
    }
}

#[test]
fn unknown_fields_are_kept() {
    let doc = json!({
        "sla_version": "v2.0", "customerID": "Admin", "future": 1,
        "applications": [{
            "application_name": "a", "application_namespace": "b", "note": "x",
            "microservices": [{
                "microservice_name": "s", "microservice_namespace": "n",
                "virtualization": "container", "code": "busybox", "added_files": [], "state": ""
            }]
        }]
    });
    let sla = parse_sla(&doc).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sla.extra.get("future"), Some(&json!(1)));
    assert_eq!(sla.applications[0].extra.get("note"), Some(&json!("x")));
    assert_eq!(sla.applications[0].microservices[0].extra.get("state"), Some(&json!("")));
}

fn one_service(fields: Value) -> Value {
    let mut m = json!({
        "microservice_name": "s", "microservice_namespace": "n",
        "virtualization": "container", "code": "busybox"
    });
    if let (Some(m), Some(f)) = (m.as_object_mut(), fields.as_object()) {
        for (k, v) in f {
            m.insert(k.clone(), v.clone());
        }
    }
    json!({"sla_version": "v2.0", "customerID": "Admin",
           "applications": [{"application_name": "a", "application_namespace": "b", "microservices": [m]}]})
}

#[test]
fn field_rules() {
    let p = "applications[0].microservices[0]";
    let cases: Vec<(Value, Option<String>)> = vec![
        (json!({}), None),
        (json!({"port": "6080:80/tcp;9000/udp;70"}), None),
        (json!({"port": ""}), None),
        (json!({"port": "80:80;80:81"}), Some(format!("{p}.port: \"80:81\": host port 80 is mapped twice"))),
        (json!({"port": "70000"}), Some(format!("{p}.port: \"70000\": \"70000\" is not a port number (1-65535)"))),
        (json!({"port": "80/sctp"}), Some(format!("{p}.port: \"80/sctp\": protocol must be tcp or udp"))),
        (json!({"port": 80}), Some(format!("{p}.port: must be a string, got a number"))),
        (json!({"memory": -1}), Some(format!("{p}.memory: must be a non-negative integer, got -1"))),
        (json!({"memory": 1.5}), Some(format!("{p}.memory: must be a non-negative integer, got 1.5"))),
        (json!({"memory": 100.0, "vcpus": 0.5}), None),
        (json!({"vcpus": -2}), Some(format!("{p}.vcpus: must not be negative"))),
        (json!({"addresses": {"rr_ip": "10.30.1.2", "closest_ip": "10.30.1.3"}}), None),
        (
            json!({"addresses": {"rr_ip": "10.31.1.2"}}),
            Some(format!("{p}.addresses.rr_ip: 10.31.1.2 is outside the service subnet 10.30.0.0/16")),
        ),
        (
            json!({"addresses": {"rr_ip": "banana"}}),
            Some(format!("{p}.addresses.rr_ip: \"banana\" is not an IPv4 address")),
        ),
        (
            json!({"addresses": {"rr_ip": "10.30.1.2", "closest_ip": "10.30.1.2"}}),
            Some(format!("{p}.addresses.closest_ip: 10.30.1.2 is already used by {p}.addresses.rr_ip in this SLA")),
        ),
        (
            json!({"addresses": {"rr_ip_v6": "fdff:2000::1"}}),
            Some(format!("{p}.addresses.rr_ip_v6: fdff:2000::1 is not supported yet: the overlay carries IPv4 only")),
        ),
        (
            json!({"addresses": {"rr_ip_v6": "fe80::1"}}),
            Some(format!("{p}.addresses.rr_ip_v6: fe80::1 is outside the service subnet fdff::/16")),
        ),
        (json!({"constraints": [{"type": "direct", "cluster": "c1", "node": "w1;w2"}]}), None),
        (
            json!({"constraints": [{"type": "teleport"}]}),
            Some(format!(
                "{p}.constraints[0].type: unknown constraint type \"teleport\"; expected one of direct, latency, geo, addons, clusters"
            )),
        ),
        (
            json!({"constraints": [{"cluster": "x"}]}),
            Some(format!("{p}.constraints[0].type: required field is missing")),
        ),
        (json!({"constraints": [{"type": "geo", "location": "48.1,11.5", "threshold": 10}]}), None),
        (
            json!({"constraints": [{"type": "geo", "location": "148.1,11.5", "threshold": 10}]}),
            Some(format!("{p}.constraints[0].location: must be \"lat,long\" in degrees, got \"148.1,11.5\"")),
        ),
        (json!({"environment": ["A=1", "B"]}), Some(format!("{p}.environment[1]: must be KEY=VALUE, got \"B\""))),
        (json!({"cmd": ["sh", 1]}), Some(format!("{p}.cmd[1]: must be a string, got a number"))),
        (
            json!({"microserviceID": "abc"}),
            Some(format!("{p}.microserviceID: must be empty: the server assigns service ids")),
        ),
        (
            json!({"microservice_name": ""}),
            Some(format!("{p}.microservice_name: must match ^[a-zA-Z0-9]{{1,30}}$, got \"\"")),
        ),
        (
            json!({"microservice_name": "a234567890123456789012345678901"}),
            Some(format!(
                "{p}.microservice_name: must match ^[a-zA-Z0-9]{{1,30}}$, got \"a234567890123456789012345678901\""
            )),
        ),
        (
            json!({"virtualization": "con tainer"}),
            Some(format!(
                "{p}.virtualization: must be a runtime name such as \"container\" or \"unikernel\", got \"con tainer\""
            )),
        ),
        (json!({"one_shot": "yes"}), Some(format!("{p}.one_shot: must be true or false, got a string"))),
        (
            json!({"volumes": [{"volume_id": "v"}]}),
            Some(format!("{p}.volumes[0].csi_driver: required field is missing")),
        ),
    ];
    for (fields, expected) in cases {
        let doc = one_service(fields.clone());
        match (parse_sla(&doc), expected) {
            (Ok(_), None) => {}
            (Ok(_), Some(m)) => panic!("{fields} accepted, expected {m}"),
            (Err(e), None) => panic!("{fields} rejected: {e}"),
            (Err(e), Some(m)) => {
                let got: Vec<String> = e.violations.iter().map(ToString::to_string).collect();
                assert_eq!(got, vec![m], "{fields}");
            }
        }
    }
}

#[test]
fn top_level_rules() {
    let cases = vec![
        (json!([]), "the SLA must be a JSON object, got an array"),
        (
            json!({"sla_version": "v1.0", "customerID": "x", "applications": []}),
            "sla_version: unsupported version \"v1.0\"; only \"v2.0\" is accepted",
        ),
        (
            json!({"sla_version": "v2.0", "customerID": "x", "applications": []}),
            "applications: must contain at least one application",
        ),
        (
            json!({"sla_version": "v2.0", "applications": [{"application_name": "a", "application_namespace": "b", "microservices": []}]}),
            "customerID: required field is missing",
        ),
        (
            json!({"sla_version": "v2.0", "customerID": "x", "applications": [
            {"application_name": "a", "application_namespace": "b", "microservices": []},
            {"application_name": "a", "application_namespace": "b", "microservices": []}]}),
            "applications[1].application_name: application a/b appears twice in this SLA",
        ),
    ];
    for (doc, msg) in cases {
        let e = parse_sla(&doc).err().unwrap_or_else(|| panic!("{doc} accepted"));
        let got: Vec<String> = e.violations.iter().map(ToString::to_string).collect();
        assert!(got.iter().any(|g| g == msg), "{doc}: {got:?}");
    }
}

#[test]
fn addresses_must_be_unique_across_applications() {
    let svc = |n: &str, ip: &str| {
        json!({"microservice_name": n, "microservice_namespace": "n",
        "virtualization": "container", "code": "x", "addresses": {"rr_ip": ip}})
    };
    let doc = json!({"sla_version": "v2.0", "customerID": "x", "applications": [
        {"application_name": "a", "application_namespace": "b", "microservices": [svc("s1", "10.30.0.7")]},
        {"application_name": "c", "application_namespace": "b", "microservices": [svc("s2", "10.30.0.7")]}]});
    let e = parse_sla(&doc).err().unwrap_or_else(|| panic!("accepted"));
    assert_eq!(e.violations[0].field, "applications[1].microservices[0].addresses.rr_ip");
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "[a-z0-9.:;/ ]{0,12}".prop_map(Value::String),
        prop_oneof![Just("v2.0"), Just("10.30.1.1"), Just("80:80/tcp"), Just("direct"), Just("geo")]
            .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        let keys = prop_oneof![
            Just("sla_version"),
            Just("customerID"),
            Just("applications"),
            Just("microservices"),
            Just("application_name"),
            Just("application_namespace"),
            Just("microservice_name"),
            Just("microservice_namespace"),
            Just("virtualization"),
            Just("code"),
            Just("port"),
            Just("addresses"),
            Just("rr_ip"),
            Just("constraints"),
            Just("type"),
            Just("connectivity"),
            Just("con_constraints"),
            Just("memory"),
            Just("vcpus"),
            Just("environment"),
            Just("volumes"),
            Just("location"),
            Just("threshold"),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys.prop_map(str::to_owned), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_json_never_panics(doc in arb_json()) {
        let _ = parse_sla(&doc);
        let _ = parse_microservice(&doc, "m");
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(doc) = serde_json::from_slice::<Value>(&bytes) {
            let _ = parse_sla(&doc);
        }
    }

    #[test]
    fn ports_round_trip(maps in prop::collection::vec((prop::option::of(1u16..), 1u16.., any::<bool>()), 1..5)) {
        let mut seen = std::collections::BTreeSet::new();
        let maps: Vec<PortMapping> = maps.into_iter()
            .map(|(h, c, udp)| PortMapping { host: h, container: c, protocol: if udp { Protocol::Udp } else { Protocol::Tcp } })
            .filter(|m| m.host.is_none_or(|h| seen.insert((h, m.protocol))))
            .collect();
        let text: Vec<String> = maps.iter().map(ToString::to_string).collect();
        let parsed = parse_ports(&text.join(";"));
        prop_assert_eq!(parsed, Ok(maps));
    }

    #[test]
    fn port_parser_never_panics(s in ".{0,40}") {
        let _ = parse_ports(&s);
    }
}

/// The violations of a one-service SLA with `fields`.
fn violations(fields: Value) -> Vec<String> {
    match parse_sla(&one_service(fields.clone())) {
        Ok(_) => Vec::new(),
        Err(e) => e.violations.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn an_image_that_reads_as_an_option_is_refused() {
    let p = "applications[0].microservices[0]";
    for code in ["--skip-verify", "--http-dump", "-k"] {
        assert_eq!(violations(json!({ "code": code })), [format!("{p}.code: must not start with '-', got {code:?}")]);
    }
    assert_eq!(violations(json!({"code": "docker.io/library/nginx:1-alpine"})), Vec::<String>::new());
    // The same rule on the path of a service update.
    let svc = json!({"microservice_name": "s", "microservice_namespace": "n",
                     "virtualization": "container", "code": "--http-dump"});
    let e = parse_microservice(&svc, "svc").unwrap_err();
    assert_eq!(e.violations[0].field, "svc.code");
}

#[test]
fn text_fields_are_bounded() {
    let p = "applications[0].microservices[0]";
    let s = |n: usize| "x".repeat(n);
    let env = |n: usize| format!("K={}", "v".repeat(n - 2));
    let too_long = |field: &str, max: usize, got: usize| format!("{field}: must be at most {max} bytes, got {got}");
    let too_many = |field: &str, max: usize, got: usize| format!("{field}: must have at most {max} entries, got {got}");
    let cases: Vec<(Value, Vec<String>)> = vec![
        // At the bounds: accepted.
        (
            json!({"code": s(MAX_CODE_BYTES), "cmd": vec![s(MAX_CMD_ENTRY_BYTES); MAX_CMD_ENTRIES],
                   "environment": vec![env(MAX_ENV_ENTRY_BYTES); 8],
                   "arch": vec![s(MAX_ARCH_BYTES); MAX_ARCH_ENTRIES]}),
            vec![],
        ),
        (json!({"environment": vec!["A=1"; MAX_ENV_ENTRIES]}), vec![]),
        // Beyond them: one violation each, naming the field.
        (json!({"code": s(MAX_CODE_BYTES + 1)}), vec![too_long(&format!("{p}.code"), MAX_CODE_BYTES, 1025)]),
        (
            json!({"cmd": vec!["a"; MAX_CMD_ENTRIES + 1]}),
            vec![too_many(&format!("{p}.cmd"), MAX_CMD_ENTRIES, MAX_CMD_ENTRIES + 1)],
        ),
        (
            json!({"cmd": ["sh", s(MAX_CMD_ENTRY_BYTES + 1)]}),
            vec![too_long(&format!("{p}.cmd[1]"), MAX_CMD_ENTRY_BYTES, MAX_CMD_ENTRY_BYTES + 1)],
        ),
        (
            json!({"environment": vec!["A=1"; MAX_ENV_ENTRIES + 1]}),
            vec![too_many(&format!("{p}.environment"), MAX_ENV_ENTRIES, MAX_ENV_ENTRIES + 1)],
        ),
        (
            json!({"environment": ["A=1", env(MAX_ENV_ENTRY_BYTES + 1)]}),
            vec![too_long(&format!("{p}.environment[1]"), MAX_ENV_ENTRY_BYTES, MAX_ENV_ENTRY_BYTES + 1)],
        ),
        (
            json!({"environment": vec![env(MAX_ENV_ENTRY_BYTES); 9]}),
            vec![format!(
                "{p}.environment: must be at most {MAX_ENV_TOTAL_BYTES} bytes in all, got {}",
                9 * MAX_ENV_ENTRY_BYTES
            )],
        ),
        (
            json!({"arch": vec!["amd64"; MAX_ARCH_ENTRIES + 1]}),
            vec![too_many(&format!("{p}.arch"), MAX_ARCH_ENTRIES, MAX_ARCH_ENTRIES + 1)],
        ),
        (json!({"arch": ["amd64", s(65)]}), vec![too_long(&format!("{p}.arch[1]"), MAX_ARCH_BYTES, 65)]),
        (json!({"platform": s(65)}), vec![too_long(&format!("{p}.platform"), MAX_ARCH_BYTES, 65)]),
        (json!({"port": s(MAX_LIST_BYTES + 1)}), vec![too_long(&format!("{p}.port"), MAX_LIST_BYTES, 4097)]),
        (
            json!({"virtualization": s(MAX_TEXT_BYTES + 1)}),
            vec![too_long(&format!("{p}.virtualization"), MAX_TEXT_BYTES, 1025)],
        ),
        (
            json!({"constraints": [{"type": "direct", "node": s(MAX_LIST_BYTES + 1)}]}),
            vec![too_long(&format!("{p}.constraints[0].node"), MAX_LIST_BYTES, 4097)],
        ),
        (
            json!({"constraints": vec![json!({"type": "direct"}); MAX_LIST_ENTRIES + 1]}),
            vec![too_many(&format!("{p}.constraints"), MAX_LIST_ENTRIES, MAX_LIST_ENTRIES + 1)],
        ),
        (
            json!({"volumes": [{"volume_id": "v", "csi_driver": "d", "mount_path": s(MAX_LIST_BYTES + 1)}]}),
            vec![too_long(&format!("{p}.volumes[0].mount_path"), MAX_LIST_BYTES, 4097)],
        ),
        // Unknown fields are kept, but not without bound.
        (json!({"note": s(100)}), vec![]),
        (
            json!({"note": s(MAX_EXTRA_BYTES)}),
            vec![format!(
                "{p}.(unknown fields): must be at most {MAX_EXTRA_BYTES} bytes in all, got {}",
                4 + MAX_EXTRA_BYTES + 2
            )],
        ),
    ];
    for (fields, expected) in cases {
        let got = violations(fields.clone());
        let shown = fields.to_string();
        assert_eq!(got, expected, "{}", &shown[..shown.len().min(200)]);
    }
    // Outside the services.
    let doc = |app: Value, top: Value| {
        let mut d = json!({"sla_version": "v2.0", "customerID": "Admin", "applications": [app]});
        if let (Some(d), Some(t)) = (d.as_object_mut(), top.as_object()) {
            d.extend(t.clone());
        }
        d
    };
    let app = |desc: String| json!({"application_name": "a", "application_namespace": "b", "application_desc": desc, "microservices": []});
    assert!(parse_sla(&doc(app(s(MAX_DESC_BYTES)), json!({}))).is_ok());
    let cases = [
        (
            doc(app(s(MAX_DESC_BYTES + 1)), json!({})),
            too_long("applications[0].application_desc", MAX_DESC_BYTES, 4097),
        ),
        (doc(app(s(1)), json!({"customerID": s(MAX_TEXT_BYTES + 1)})), too_long("customerID", MAX_TEXT_BYTES, 1025)),
        (
            doc(app(s(1)), json!({"args": vec!["a"; MAX_LIST_ENTRIES + 1]})),
            too_many("args", MAX_LIST_ENTRIES, MAX_LIST_ENTRIES + 1),
        ),
        (
            doc(app(s(1)), json!({"future": s(MAX_EXTRA_BYTES)})),
            format!(
                "(unknown fields): must be at most {MAX_EXTRA_BYTES} bytes in all, got {}",
                6 + MAX_EXTRA_BYTES + 2
            ),
        ),
    ];
    for (d, msg) in cases {
        let e = parse_sla(&d).err().unwrap_or_else(|| panic!("accepted, expected {msg}"));
        let got: Vec<String> = e.violations.iter().map(ToString::to_string).collect();
        assert_eq!(got, [msg]);
    }
}

#[test]
fn bidi_and_line_separators_are_refused() {
    let p = "applications[0].microservices[0]";
    let msg = "must not contain control or bidi formatting characters";
    for c in ['\u{202E}', '\u{202A}', '\u{2066}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{2028}', '\u{2029}', '\u{7}'] {
        assert!(unsafe_char(c), "{c:?}");
        let bad = format!("a{c}b");
        assert_eq!(violations(json!({ "code": bad })), [format!("{p}.code: {msg}")], "{c:?}");
        assert_eq!(violations(json!({"cmd": ["sh", "-c", bad]})), [format!("{p}.cmd[2]: {msg}")], "{c:?}");
        assert_eq!(
            violations(json!({"environment": ["A=1", format!("B={bad}")]})),
            [format!("{p}.environment[1]: {msg}")],
            "{c:?}"
        );
    }
    // The index is the entry's own, past one that is not a string.
    assert_eq!(
        violations(json!({"cmd": ["sh", 1, "a\u{202E}"]})),
        [format!("{p}.cmd[1]: must be a string, got a number"), format!("{p}.cmd[2]: {msg}")]
    );
    // Other non-ASCII text is fine.
    for ok in ['é', 'ß', '日', '\u{1F600}', '\u{200D}'] {
        assert!(!unsafe_char(ok), "{ok:?}");
    }
    assert_eq!(
        violations(json!({"cmd": ["echo", "héllo 日本"], "environment": ["GREETING=grüß dich"]})),
        Vec::<String>::new()
    );
}

/// A field the original accepts that this system cannot honour is refused by name, never
/// accepted in silence; asking for nothing (0, false, empty) passes.
#[test]
fn fields_not_honoured_yet_are_refused_by_name() {
    let p = "applications[0].microservices[0]";
    let nothing = json!({"vgpus": 0, "vtpus": 0, "storage": 0, "bandwidth_in": 0, "bandwidth_out": 0,
        "privileged": false, "platform": "", "volumes": [], "added_files": [], "state": "",
        "addresses": {"instances": []}});
    assert_eq!(violations(nothing), Vec::<String>::new());
    for (fields, field) in [
        (json!({"vgpus": 1}), "vgpus"),
        (json!({"vtpus": 2}), "vtpus"),
        (json!({"storage": 1000}), "storage"),
        (json!({"bandwidth_in": 5}), "bandwidth_in"),
        (json!({"bandwidth_out": 5}), "bandwidth_out"),
        (json!({"privileged": true}), "privileged"),
        (json!({"platform": "linux/arm64"}), "platform"),
        (json!({"volumes": [{"volume_id": "v", "csi_driver": "d"}]}), "volumes"),
        (json!({"added_files": ["a.txt"]}), "added_files"),
        (json!({"virtualization": "unikernel"}), "virtualization"),
        (json!({"addresses": {"instances": [{"from": 1, "to": 2, "start": "10.30.0.1"}]}}), "addresses.instances"),
        (json!({"addresses": {"closest_ip_v6": "fdff::5"}}), "addresses.closest_ip_v6"),
    ] {
        let got = violations(fields.clone());
        assert_eq!(got.len(), 1, "{fields}: {got:?}");
        assert!(got[0].starts_with(&format!("{p}.{field}: ")), "{fields}: {got:?}");
        assert!(got[0].contains("not supported yet"), "{fields}: {got:?}");
    }
}

#[test]
fn ldp_constraints_are_validated_and_typed() {
    use crate::ldp::{Need, ViolationStrategy};
    let p = "applications[0].microservices[0]";
    let bad = [
        (
            json!({"constraints": [{"type": "latency", "threshold": 10}]}),
            "constraints[0].area: a latency constraint needs an area or users",
        ),
        (
            json!({"constraints": [{"type": "latency", "area": "x", "users": ["192.0.2.1"], "threshold": 10}]}),
            "constraints[0].users: give an area or users, not both",
        ),
        (
            json!({"constraints": [{"type": "latency", "users": ["nope"], "threshold": 10}]}),
            "constraints[0].users[0]: must be an IP address, got \"nope\"",
        ),
        (
            json!({"constraints": [{"type": "latency", "users": ["127.0.0.1"], "threshold": 10}]}),
            "constraints[0].users[0]: 127.0.0.1 cannot be measured: it is an unspecified, loopback, link-local, multicast or broadcast address",
        ),
        (
            json!({"constraints": [{"type": "latency", "users": [], "threshold": 10}]}),
            "constraints[0].users: must name at least one user address",
        ),
        (
            json!({"constraints": [{"type": "latency", "area": "x"}]}),
            "constraints[0].threshold: required field is missing",
        ),
        (
            json!({"constraints": [{"type": "latency", "area": "x", "threshold": -1}]}),
            "constraints[0].threshold: must be a positive number, got -1",
        ),
        (
            json!({"constraints": [{"type": "latency", "area": "x", "threshold": 5, "rigidness": 2}]}),
            "constraints[0].rigidness: must be between 0 and 1, got 2",
        ),
        (
            json!({"constraints": [{"type": "geo", "location": "48.1,11.5", "threshold": 0}]}),
            "constraints[0].threshold: must be a positive number, got 0",
        ),
        (
            json!({"constraints": [{"type": "clusters", "allowed": []}]}),
            "constraints[0].allowed: must name at least one cluster",
        ),
        (json!({"constraints": [{"type": "addons"}]}), "constraints[0].needs: required field is missing"),
        (
            json!({"connectivity": [{"target_microservice_id": "db", "con_constraints": [{"type": "bandwidth", "threshold": 1, "rigidness": 1, "convergence_time": 1}]}]}),
            "connectivity[0].con_constraints[0].type: must be \"latency\" or \"geo\", got \"bandwidth\"",
        ),
        (
            json!({"connectivity": [{"target_microservice_id": " ", "con_constraints": []}]}),
            "connectivity[0].target_microservice_id: must name a service of this application (by name) or a service id",
        ),
        (
            json!({"sla_violation_strategy": "panic"}),
            "sla_violation_strategy: must be \"report\" or \"migrate\", got \"panic\"",
        ),
    ];
    for (fields, msg) in bad {
        assert_eq!(violations(fields.clone()), vec![format!("{p}.{msg}")], "{fields}");
    }
    let doc = one_service(json!({
        "sla_violation_strategy": "migrate",
        "constraints": [
            {"type": "geo", "location": "48.1,11.5", "threshold": 30, "rigidness": 0.5},
            {"type": "latency", "users": ["192.0.2.1", "2001:db8::1"], "threshold": 20, "convergence_time": 60},
            {"type": "latency", "area": "munich", "threshold": 15},
            {"type": "clusters", "allowed": ["c1", "c2"]},
            {"type": "clusters", "allowed": ["c2", "c3"]},
            {"type": "addons", "needs": ["gpu-driver", "camera"]}
        ],
        "connectivity": [{"target_microservice_id": "db", "con_constraints": [
            {"type": "latency", "threshold": 10, "rigidness": 1, "convergence_time": 5},
            {"type": "geo", "threshold": 100, "rigidness": 0.2, "convergence_time": 5}
        ]}]
    }));
    let sla = parse_sla(&doc).unwrap();
    let spec = &sla.applications[0].microservices[0];
    let reqs = spec.requirements();
    assert_eq!(reqs.len(), 5);
    assert_eq!(reqs[0].need, Need::Geo { lat: 48.1, lon: 11.5, km: 30.0 });
    assert!(!reqs[0].is_hard());
    assert_eq!(
        reqs[1].need,
        Need::Users { users: vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()], ms: 20.0 }
    );
    assert_eq!((reqs[1].convergence_time, reqs[1].rigidness), (60.0, 1.0));
    assert_eq!(reqs[2].need, Need::Area { area: "munich".into(), ms: 15.0 });
    assert_eq!(reqs[2].convergence_time, crate::ldp::DEFAULT_CONVERGENCE_S);
    assert_eq!(reqs[3].need, Need::ServiceLatency { target: "db".into(), ms: 10.0 });
    assert_eq!(reqs[3].field, "connectivity[0].con_constraints[0]");
    assert_eq!(reqs[4].need, Need::ServiceGeo { target: "db".into(), km: 100.0 });
    assert_eq!(spec.allowed_clusters(), Some(vec!["c2".to_owned()]));
    assert_eq!(spec.addons_needed(), vec!["camera".to_owned(), "gpu-driver".to_owned()]);
    assert_eq!(spec.violation_strategy(), ViolationStrategy::Migrate);
    assert_eq!(parse_sla(&one_service(json!({}))).unwrap().applications[0].microservices[0].allowed_clusters(), None);
}
