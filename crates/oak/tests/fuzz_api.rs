//! Arbitrary bytes and arbitrary JSON sent to the API never cause a 5xx or a crash.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::RootProcess;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use reqwest::Method;
use serde_json::Value;

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        "[a-zA-Z0-9.:/ ]{0,10}".prop_map(Value::String),
        Just(serde_json::json!("v2.0")),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        let key = prop_oneof![
            Just("sla_version"),
            Just("customerID"),
            Just("applications"),
            Just("application_name"),
            Just("application_namespace"),
            Just("microservices"),
            Just("microservice_name"),
            Just("microservice_namespace"),
            Just("virtualization"),
            Just("code"),
            Just("port"),
            Just("addresses"),
            Just("rr_ip"),
            Just("applicationID"),
            Just("username"),
            Just("password"),
            Just("name"),
            Just("roles"),
            Just("member"),
            Just("memory"),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key.prop_map(str::to_owned), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The user the fuzzed `PUT /api/user/{name}` bodies are applied to in full (password and
/// roles included): another user than the caller.
const OTHER: &str = "fuzzee";

const TARGETS: &[(&str, &str)] = &[
    ("POST", "/api/application"),
    ("POST", "/api/service"),
    ("POST", "/api/auth/login"),
    ("POST", "/api/auth/register"),
    ("POST", "/api/organization"),
    ("PUT", "/api/user/Admin"),
    ("PUT", "/api/user/fuzzee"),
    ("PUT", "/api/application/x"),
    ("PUT", "/api/service/x"),
];

/// What a case sends. The caller (Admin) must stay logged in as an Admin, or every later case
/// only exercises the 401 path: a body for the caller's own user loses what would change its
/// credentials (`password`, which revokes its token; `roles`, which may drop `Admin`). Bodies
/// for [`OTHER`] are sent whole.
fn body_for(path: &str, body: Vec<u8>) -> Vec<u8> {
    if path != "/api/user/Admin" {
        return body;
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(mut m)) => {
            m.remove("password");
            m.remove("roles");
            serde_json::to_vec(&Value::Object(m)).unwrap()
        }
        // serde reads a struct from an array too, in field order: `[email, password, roles]`.
        Ok(Value::Array(mut a)) => {
            a.truncate(1);
            serde_json::to_vec(&Value::Array(a)).unwrap()
        }
        // Anything else is refused before it reaches the user: it cannot change the caller.
        _ => body,
    }
}

/// `OAK_FUZZ_SEED` when set (to replay a failure), else a random one.
fn seed() -> u64 {
    match std::env::var("OAK_FUZZ_SEED") {
        Ok(s) => s.trim().parse().unwrap_or_else(|e| panic!("OAK_FUZZ_SEED={s:?}: {e}")),
        Err(_) => {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new().build_hasher().finish()
        }
    }
}

fn runner(seed: u64, cases: u32) -> TestRunner {
    let mut bytes = [0u8; 32];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes());
    }
    TestRunner::new_with_rng(Config { cases, ..Config::default() }, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
}

/// The cases of one seed: (target, body), the same for the same seed.
fn cases(seed: u64, n: usize) -> Vec<(usize, Vec<u8>)> {
    let mut runner = runner(seed, n as u32);
    let strat = (
        0..TARGETS.len(),
        prop_oneof![
            arb_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
            prop::collection::vec(any::<u8>(), 0..200),
        ],
    );
    (0..n).map(|_| strat.new_tree(&mut runner).unwrap().current()).collect()
}

/// Prints the seed if the test fails, however it fails.
struct SeedOnFailure(u64);

impl Drop for SeedOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("fuzz_api failed with seed {0}; replay it with OAK_FUZZ_SEED={0}", self.0);
        }
    }
}

#[test]
fn a_seed_gives_the_same_cases() {
    assert_eq!(cases(7, 50), cases(7, 50));
    assert_ne!(cases(7, 50), cases(8, 50));
}

#[test]
fn the_callers_own_credentials_are_never_fuzzed() {
    let body =
        serde_json::to_vec(&serde_json::json!({"password": "new-password", "roles": [], "email": "a@b"})).unwrap();
    let sent: Value = serde_json::from_slice(&body_for("/api/user/Admin", body.clone())).unwrap();
    assert_eq!(sent, serde_json::json!({"email": "a@b"}));
    let as_array = serde_json::to_vec(&serde_json::json!([null, "new-password", []])).unwrap();
    let sent: Value = serde_json::from_slice(&body_for("/api/user/Admin", as_array)).unwrap();
    assert_eq!(sent, serde_json::json!([null]));
    assert_eq!(body_for(&format!("/api/user/{OTHER}"), body.clone()), body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_bodies_never_cause_a_server_error() {
    const CASES: usize = 300;
    let seed = seed();
    let _report = SeedOnFailure(seed);
    eprintln!("fuzz_api seed {seed} (OAK_FUZZ_SEED={seed} replays it)");
    let root = RootProcess::start().await;
    let _ = root.user(OTHER).await;
    let token = root.admin().await.token().unwrap().to_owned();
    let (mut authenticated, mut refused) = (0, 0);
    for (k, (t, body)) in cases(seed, CASES).into_iter().enumerate() {
        let (m, p) = TARGETS[t];
        let body = body_for(p, body);
        let method = Method::from_bytes(m.as_bytes()).unwrap();
        let (s, b) = root.raw(method, p, Some(&token), Some(body.clone())).await;
        let case = format!("seed {seed}, case {k}: {m} {p} with {:?} gave {s}: {b}", String::from_utf8_lossy(&body));
        assert!(s < 500, "{case}");
        assert!(b["code"].is_string() || s == 200, "{case}: an error without a code");
        // A login with fuzzed credentials is rightly refused with 401; anywhere else a 401
        // means the caller's token no longer works.
        if p != "/api/auth/login" {
            if s == 401 {
                refused += 1;
            } else {
                authenticated += 1;
            }
        }
        // The caller is still a logged-in Admin, or this case is the one that changed it.
        let (ps, pb) = root.raw(Method::GET, "/api/users", Some(&token), None).await;
        assert_eq!(ps, 200, "{case}; after it the caller is no longer an authenticated Admin: {pb}");
    }
    assert_eq!(refused, 0, "seed {seed}: {refused} cases were refused as unauthenticated");
    assert!(authenticated >= CASES / 2, "seed {seed}: only {authenticated} of {CASES} cases ran authenticated");
    assert_eq!(root.raw(Method::GET, "/docs/openapi.json", None, None).await.0, 200);
}
