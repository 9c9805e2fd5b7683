//! Nothing acknowledged is lost when the root is killed (SIGKILL) and started again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{RootProcess, sla};
use reqwest::Method;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[tokio::test]
async fn everything_survives_a_kill_and_restart() {
    let root = RootProcess::start().await;
    let alice = root.user("alice").await;
    let admin = root.admin().await;
    let at = admin.token().unwrap().to_owned();
    let (s, org) = root
        .raw(Method::POST, "/api/organization", Some(&at), Some(serde_json::to_vec(&json!({"name": "edge"})).unwrap()))
        .await;
    assert_eq!(s, 200);
    let app = alice
        .create_applications(&sla("shop", "prod", &[("web", Some("10.30.3.3")), ("db", None)]))
        .await
        .unwrap()
        .remove(0);
    let web = app.microservices[0].to_string();
    alice.request_instance(&web).await.unwrap();
    alice.request_instance(&web).await.unwrap();
    alice.remove_instance(&web, 0).await.unwrap();
    let before_app = alice.application(app.id.as_str()).await.unwrap();
    let before_svcs = serde_json::to_value(alice.services(Some(app.id.as_str())).await.unwrap()).unwrap();
    let refresh = root.client().login("alice", "pw-alice").await.unwrap().refresh_token;

    // The last acknowledged write just before the kill.
    alice.delete_service(&app.microservices[1].to_string()).await.unwrap();
    let root = root.restart().await;

    // Tokens issued before the restart still work: the signing secret is in the store.
    let after_app = alice.application(app.id.as_str()).await.unwrap();
    assert_eq!(after_app.microservices, vec![app.microservices[0].clone()]);
    assert_eq!(after_app.application_name, before_app.application_name);
    let after_svcs = serde_json::to_value(alice.services(Some(app.id.as_str())).await.unwrap()).unwrap();
    assert_eq!(after_svcs, json!([before_svcs[0]]));
    let s = alice.service(&web).await.unwrap();
    assert_eq!(s.instance_list.iter().map(|i| i.instance_number).collect::<Vec<_>>(), [1]);
    assert_eq!(s.next_instance_progressive_number, 2);
    assert_eq!(alice.request_instance(&web).await.unwrap().instance_number, 2, "numbering continues");
    root.client().refresh(&refresh).await.unwrap();

    // Users, organizations, indexes and address reservations are all back.
    root.login("alice", "pw-alice").await;
    let (_, orgs) = root.raw(Method::GET, "/api/organization", Some(&at), None).await;
    assert!(orgs.as_array().unwrap().iter().any(|o| o["_id"] == org["_id"]), "{orgs}");
    let e = alice.create_applications(&sla("other", "x", &[("w", Some("10.30.3.3"))])).await.unwrap_err();
    assert_eq!(common::code(&e), "409 conflict");
    let e = alice.create_applications(&sla("shop", "prod", &[])).await.unwrap_err();
    assert_eq!(common::code(&e), "409 conflict");
}

#[tokio::test]
async fn writes_acknowledged_under_load_survive_a_kill() {
    // Acknowledgments to have before the kill: the check after the restart must have
    // something to check.
    const BEFORE_KILL: usize = 20;
    let root = RootProcess::start().await;
    let c = root.admin().await;
    // Writers create applications one after another until the root dies. The kill comes once
    // BEFORE_KILL creations were acknowledged, with every writer's next request in flight.
    let killed = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut writers = Vec::new();
    for w in 0..8 {
        let (c, tx, killed) = (c.clone(), tx.clone(), killed.clone());
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let name = format!("w{w}n{i}");
                match c.create_applications(&sla(&name, "ns", &[("s", None)])).await {
                    Ok(_) => {
                        let _ = tx.send(name);
                    }
                    // Refused or cut off by the kill: this writer is done.
                    Err(_) if killed.load(Ordering::SeqCst) => return Ok(()),
                    Err(e) => return Err(format!("{name} failed before the kill: {e}")),
                }
            }
            Ok(())
        }));
    }
    drop(tx);
    let mut acked = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked.len() < BEFORE_KILL {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(name)) => acked.push(name),
            Ok(None) => break,
            Err(_) => panic!("only {} creations acknowledged in 60 s", acked.len()),
        }
    }
    killed.store(true, Ordering::SeqCst);
    let mut root = root;
    root.kill();
    for w in writers {
        if let Err(e) = w.await.unwrap() {
            panic!("{e}");
        }
    }
    // Acknowledged between the count and the kill.
    while let Some(name) = rx.recv().await {
        acked.push(name);
    }
    assert!(acked.len() >= BEFORE_KILL, "only {} creations acknowledged before the kill", acked.len());

    let root = root.restart().await;
    let c = root.admin().await;
    let names: Vec<String> = c.applications().await.unwrap().into_iter().map(|a| a.application_name).collect();
    for a in &acked {
        assert!(names.contains(a), "acknowledged {a} was lost; have {names:?}");
    }
    // Every stored application is whole: its service exists.
    for app in c.applications().await.unwrap() {
        assert_eq!(c.services(Some(app.id.as_str())).await.unwrap().len(), 1, "{}", app.application_name);
    }
}
