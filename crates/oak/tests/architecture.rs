//! Rules of the workspace (ARCHITECTURE.md): tiers never import each other, the wire-contract
//! and pure crates stay free of I/O runtimes, and `unsafe` code lives in one module only,
//! `oak-net`'s `sys`, which every lint setting keeps that way.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::path::{Path, PathBuf};
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

/// The normal dependencies of `krate`. A crate the rules name must exist: one that was
/// renamed or removed fails here, by name, instead of passing every rule unchecked.
fn deps(meta: &Value, krate: &str) -> Vec<String> {
    let Some(p) = meta["packages"].as_array().unwrap().iter().find(|p| p["name"] == krate) else {
        panic!("crate {krate} is not in the workspace: renamed or removed? Update tests/architecture.rs")
    };
    p["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"].is_null())
        .map(|d| d["name"].as_str().unwrap().to_owned())
        .collect()
}

const TIERS: [&str; 3] = ["oak-root", "oak-cluster", "oak-worker"];
const PURE: [&str; 3] = ["oak-api", "oak-sched", "oak-ldp"];
/// Every crate the dependency rules name.
const RULED: [&str; 8] =
    ["oak-root", "oak-cluster", "oak-worker", "oak-api", "oak-sched", "oak-ldp", "oak-store", "oak-client"];

fn check_dependency_rules(meta: &Value) {
    for tier in TIERS {
        let d = deps(meta, tier);
        for other in TIERS.iter().filter(|t| **t != tier) {
            assert!(!d.iter().any(|x| x == other), "{tier} must not depend on {other}");
        }
    }
    let forbidden_io = ["tokio", "axum", "reqwest", "redb"];
    for pure in PURE {
        let d = deps(meta, pure);
        for f in forbidden_io {
            assert!(!d.iter().any(|x| x == f), "{pure} must not depend on {f}");
        }
    }
    let store = deps(meta, "oak-store");
    for f in ["axum", "oak-sched", "oak-api"] {
        assert!(!store.iter().any(|x| x == f), "oak-store must not depend on {f}");
    }
    let client = deps(meta, "oak-client");
    for s in TIERS.iter().chain(&["oak-store"]) {
        assert!(!client.iter().any(|x| x == s), "oak-client must not depend on {s}");
    }
}

#[test]
fn dependency_rules_hold() {
    check_dependency_rules(&metadata());
}

#[test]
fn a_crate_the_rules_name_that_is_missing_fails_them_by_name() {
    let meta = metadata();
    for krate in RULED {
        let mut renamed = meta.clone();
        for p in renamed["packages"].as_array_mut().unwrap() {
            if p["name"] == krate {
                p["name"] = Value::String(format!("{krate}-renamed"));
            }
        }
        let err = std::panic::catch_unwind(|| check_dependency_rules(&renamed))
            .expect_err(&format!("the rules passed with {krate} renamed"));
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains(&format!("crate {krate} ")), "the failure names {krate}: {msg:?}");
    }
}

// ------------------------------------------------------------------------------- unsafe code

/// The keyword, spelled so that this file does not contain it.
const KEYWORD: &str = concat!("un", "safe");
/// The lint, likewise.
const LINT: &str = concat!("un", "safe_code");
/// The one file allowed to hold `unsafe` code, relative to the workspace root.
const UNSAFE_HOME: &str = "crates/oak-net/src/sys.rs";

fn workspace_root(meta: &Value) -> PathBuf {
    PathBuf::from(meta["workspace_root"].as_str().unwrap())
}

/// Every `.rs` file under `dir`, skipping build output and hidden directories.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let e = e.unwrap();
        let (path, kind) = (e.path(), e.file_type().unwrap());
        let name = e.file_name().to_string_lossy().into_owned();
        if kind.is_dir() && name != "target" && !name.starts_with('.') {
            rust_files(&path, out);
        } else if kind.is_file() && name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// Lines of `text` that are not comments (`//`, `///`, `//!`), numbered from 1.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, l)| (i + 1, l)).filter(|(_, l)| !l.trim_start().starts_with("//"))
}

/// True when `word` occurs in `line` as a whole token (not inside a longer identifier).
fn has_token(line: &str, word: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    line.match_indices(word).any(|(at, _)| {
        !line[..at].chars().next_back().is_some_and(ident) && !line[at + word.len()..].chars().next().is_some_and(ident)
    })
}

/// Every workspace source file, with its path relative to the root and its text.
fn sources() -> Vec<(String, String)> {
    let root = workspace_root(&metadata());
    let mut files = Vec::new();
    rust_files(&root.join("crates"), &mut files);
    for extra in ["examples", "scripts", "fixtures", "docs"] {
        if root.join(extra).is_dir() {
            rust_files(&root.join(extra), &mut files);
        }
    }
    files.sort();
    let sources: Vec<(String, String)> = files
        .iter()
        .map(|f| {
            let rel = f.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
            (rel, std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display())))
        })
        .collect();
    assert!(sources.iter().any(|(rel, _)| rel == UNSAFE_HOME), "{UNSAFE_HOME} is missing");
    assert!(sources.len() > 50, "the walk found only {} source files", sources.len());
    sources
}

fn unsafe_outside_sys(sources: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (rel, text) in sources.iter().filter(|(rel, _)| rel != UNSAFE_HOME) {
        for (n, line) in code_lines(text).filter(|(_, l)| has_token(l, KEYWORD)) {
            found.push(format!("{rel}:{n}: {}", line.trim()));
        }
    }
    found
}

#[test]
fn unsafe_code_appears_only_in_oak_net_sys() {
    let found = unsafe_outside_sys(&sources());
    assert!(found.is_empty(), "`{KEYWORD}` outside {UNSAFE_HOME}:\n{}", found.join("\n"));
}

#[test]
fn the_unsafe_scan_sees_blocks_impls_and_fns_but_not_comments_or_longer_names() {
    let file = |text: String| vec![("crates/x/src/lib.rs".to_owned(), text)];
    for code in [
        format!("    let p = {KEYWORD} {{ f() }};"),
        format!("{KEYWORD} impl Send for X {{}}"),
        format!("pub {KEYWORD} fn f() {{}}"),
        format!("fn g() {{ {KEYWORD}{{ h() }} }}"),
    ] {
        assert_eq!(unsafe_outside_sys(&file(code.clone())).len(), 1, "{code}");
    }
    for clean in [format!("// {KEYWORD} {{ }}"), format!("  /// the {KEYWORD} code"), format!("#![deny({LINT})]")] {
        assert!(unsafe_outside_sys(&file(clean.clone())).is_empty(), "{clean}");
    }
    assert!(unsafe_outside_sys(&[(UNSAFE_HOME.to_owned(), format!("{KEYWORD} {{ f() }}"))]).is_empty());
}

/// In source, the lint is named exactly twice: denied for all of `oak-net`, allowed on `mod
/// sys` alone. Any other `allow`, `expect` or `cfg_attr` of it, anywhere, fails.
#[test]
fn only_oak_net_sys_lifts_the_unsafe_code_lint() {
    let lib = "crates/oak-net/src/lib.rs";
    let mut mentions = Vec::new();
    for (rel, text) in sources() {
        let lines: Vec<(usize, &str)> = code_lines(&text).collect();
        for (k, (n, line)) in lines.iter().enumerate().filter(|(_, (_, l))| has_token(l, LINT)) {
            let next = lines.get(k + 1).map_or("", |(_, l)| l.trim());
            mentions.push((rel.clone(), line.trim().to_owned(), next.to_owned(), *n));
        }
    }
    let shape: Vec<(&str, &str, &str)> =
        mentions.iter().map(|(rel, line, next, _)| (rel.as_str(), line.as_str(), next.as_str())).collect();
    let (deny, allow) = (format!("#![deny({LINT})]"), format!("#[allow({LINT})]"));
    assert_eq!(shape.len(), 2, "the {LINT} lint in source: {mentions:#?}");
    assert_eq!((shape[0].0, shape[0].1), (lib, deny.as_str()), "{mentions:#?}");
    assert_eq!(shape[1], (lib, allow.as_str(), "pub mod sys;"), "{mentions:#?}");
}

fn manifest(path: &Path) -> toml::Table {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The workspace forbids `unsafe` code; every crate inherits that but `oak-net`, whose own
/// lint list is the workspace's with `unsafe_code` lowered to "deny" (so that `mod sys`, and
/// nothing else, can allow it) and no other difference.
#[test]
fn every_crate_but_oak_net_forbids_unsafe_code() {
    let meta = metadata();
    let root = workspace_root(&meta);
    let ws = manifest(&root.join("Cargo.toml"));
    let ws_lints = ws["workspace"]["lints"].as_table().expect("[workspace.lints]").clone();
    assert_eq!(ws_lints["rust"][LINT].as_str(), Some("forbid"), "[workspace.lints.rust]");
    let mut net_lints = ws_lints.clone();
    net_lints["rust"].as_table_mut().unwrap().insert(LINT.into(), "deny".into());
    let inherit: toml::Table = toml::from_str("workspace = true").unwrap();
    let packages = meta["packages"].as_array().unwrap();
    assert!(packages.iter().any(|p| p["name"] == "oak-net"), "crate oak-net is not in the workspace");
    for p in packages {
        let (name, path) = (p["name"].as_str().unwrap(), p["manifest_path"].as_str().unwrap());
        let lints = manifest(Path::new(path)).get("lints").and_then(|l| l.as_table()).cloned();
        let want = if name == "oak-net" { &net_lints } else { &inherit };
        assert_eq!(lints.as_ref(), Some(want), "[lints] of {name} ({path})");
    }
    // No build configuration lifts the lint either.
    for config in [".cargo/config.toml", ".cargo/config"] {
        if let Ok(text) = std::fs::read_to_string(root.join(config)) {
            assert!(!text.contains(LINT), "{config} names {LINT}");
        }
    }
}
