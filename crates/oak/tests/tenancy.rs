//! One user never sees or changes another user's applications, services or instances.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{RootProcess, code, sla};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn a_second_user_can_neither_read_change_nor_delete() {
    let root = RootProcess::start().await;
    let alice = root.user("alice").await;
    let bob = root.user("bob").await;
    let app = alice.create_applications(&sla("shop", "prod", &[("web", Some("10.30.7.7"))])).await.unwrap().remove(0);
    let svc = app.microservices[0].to_string();
    alice.request_instance(&svc).await.unwrap();
    let bt = bob.token().unwrap().to_owned();

    // Reads: exactly like ids that do not exist.
    assert!(bob.applications().await.unwrap().is_empty());
    assert!(bob.services(None).await.unwrap().is_empty());
    assert_eq!(code(&bob.application(app.id.as_str()).await.unwrap_err()), "404 not_found");
    assert_eq!(code(&bob.services(Some(app.id.as_str())).await.unwrap_err()), "404 not_found");
    assert_eq!(code(&bob.service(&svc).await.unwrap_err()), "404 not_found");
    let alice_id = root.raw(Method::GET, "/api/user/alice", Some(alice.token().unwrap()), None).await.1["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(root.raw(Method::GET, &format!("/api/applications/{alice_id}"), Some(&bt), None).await.0, 404);
    assert_eq!(root.raw(Method::GET, "/api/user/alice", Some(&bt), None).await.0, 403);

    // Changes.
    let up = json!({"application_name": "mine", "application_namespace": "prod"});
    assert_eq!(
        root.raw(
            Method::PUT,
            &format!("/api/application/{}", app.id),
            Some(&bt),
            Some(serde_json::to_vec(&up).unwrap())
        )
        .await
        .0,
        404
    );
    let mut add = sla("shop", "prod", &[("evil", None)]);
    add["applications"][0]["applicationID"] = json!(app.id);
    assert_eq!(code(&bob.create_services(&add).await.unwrap_err()), "404 not_found");
    let spec = json!({"microservice_name": "web", "microservice_namespace": "test", "virtualization": "container", "code": "evil:latest"});
    assert_eq!(code(&bob.update_service(&svc, &spec).await.unwrap_err()), "404 not_found");
    assert_eq!(code(&bob.request_instance(&svc).await.unwrap_err()), "404 not_found");
    assert_eq!(code(&bob.remove_instance(&svc, 0).await.unwrap_err()), "404 not_found");

    // Deletes.
    assert_eq!(code(&bob.delete_service(&svc).await.unwrap_err()), "404 not_found");
    assert_eq!(code(&bob.delete_application(app.id.as_str()).await.unwrap_err()), "404 not_found");

    // Alice's objects are untouched.
    let a = alice.application(app.id.as_str()).await.unwrap();
    assert_eq!((a.application_name.as_str(), a.microservices.len()), ("shop", 1));
    let s = alice.service(&svc).await.unwrap();
    assert_eq!((s.image.as_str(), s.instance_list.len()), ("docker.io/library/busybox:latest", 1));

    // Names are per user: bob may use the same name and namespace. Addresses are global.
    bob.create_applications(&sla("shop", "prod", &[("web", None)])).await.unwrap();
    assert_eq!(
        code(&bob.create_applications(&sla("other", "prod", &[("web", Some("10.30.7.7"))])).await.unwrap_err()),
        "409 conflict"
    );
    assert_eq!(alice.applications().await.unwrap().len(), 1);
    assert_eq!(bob.applications().await.unwrap().len(), 1);

    // The Admin role does not open other users' applications either.
    let admin = root.admin().await;
    assert_eq!(code(&admin.application(app.id.as_str()).await.unwrap_err()), "404 not_found");
    assert!(admin.applications().await.unwrap().is_empty());
}
