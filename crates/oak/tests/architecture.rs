//! Dependency rules of the workspace (STYLE.md): tiers never import each other, and the
//! wire-contract and pure crates stay free of I/O runtimes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::process::Command;

fn metadata() -> Value {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn deps(meta: &Value, krate: &str) -> Option<Vec<String>> {
    meta["packages"].as_array().unwrap().iter().find(|p| p["name"] == krate).map(|p| {
        p["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"].is_null())
            .map(|d| d["name"].as_str().unwrap().to_owned())
            .collect()
    })
}

#[test]
fn dependency_rules_hold() {
    let meta = metadata();
    let tiers = ["oak-root", "oak-cluster", "oak-worker"];
    for tier in tiers {
        let Some(d) = deps(&meta, tier) else { continue };
        for other in tiers.iter().filter(|t| **t != tier) {
            assert!(!d.iter().any(|x| x == other), "{tier} must not depend on {other}");
        }
    }
    let forbidden_io = ["tokio", "axum", "reqwest", "redb"];
    for pure in ["oak-api", "oak-sched"] {
        let Some(d) = deps(&meta, pure) else { continue };
        for f in forbidden_io {
            assert!(!d.iter().any(|x| x == f), "{pure} must not depend on {f}");
        }
    }
    let store = deps(&meta, "oak-store").unwrap();
    for f in ["axum", "oak-sched", "oak-api"] {
        assert!(!store.iter().any(|x| x == f), "oak-store must not depend on {f}");
    }
    let client = deps(&meta, "oak-client").unwrap();
    for s in tiers.iter().chain(&["oak-store"]) {
        assert!(!client.iter().any(|x| x == s), "oak-client must not depend on {s}");
    }
}
