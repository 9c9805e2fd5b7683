//! The user REST API over real HTTP against a real `oak root`: success and failure paths of
//! every endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{RootProcess, code, sla};
use reqwest::Method;
use serde_json::{Value, json};

fn body(v: &Value) -> Option<Vec<u8>> {
    Some(serde_json::to_vec(v).unwrap())
}

#[tokio::test]
async fn login_refresh_and_token_checks() {
    let root = RootProcess::start().await;
    let c = root.client();
    let t = c.login("Admin", "Admin").await.unwrap();
    assert!(!t.token.is_empty() && !t.refresh_token.is_empty());

    let e = c.login("Admin", "wrong").await.unwrap_err();
    assert_eq!(code(&e), "401 unauthenticated");
    let e = c.login("nobody", "x").await.unwrap_err();
    assert_eq!(code(&e), "401 unauthenticated");
    let (s, b) = root
        .raw(
            Method::POST,
            "/api/auth/login",
            None,
            body(&json!({"username": "Admin", "password": "Admin", "organization_name": "nope"})),
        )
        .await;
    assert_eq!((s, b["code"].as_str()), (404, Some("not_found")), "{b}");
    assert!(b["message"].as_str().unwrap().contains("nope"));

    // The refresh token buys a new access token; an access token is not a refresh token.
    let fresh = c.refresh(&t.refresh_token).await.unwrap();
    let apps = root.client().with_token(fresh.token).applications().await.unwrap();
    assert!(apps.is_empty());
    assert_eq!(code(&c.refresh(&t.token).await.unwrap_err()), "401 unauthenticated");
    // A refresh token is not an access token either.
    let e = root.client().with_token(t.refresh_token.clone()).applications().await.unwrap_err();
    assert_eq!(code(&e), "401 unauthenticated");

    for token in [None, Some("garbage"), Some("a.b.c")] {
        let (s, b) = root.raw(Method::GET, "/api/applications", token, None).await;
        assert_eq!((s, b["code"].as_str()), (401, Some("unauthenticated")), "{token:?} {b}");
    }
}

#[tokio::test]
async fn every_state_change_requires_authentication() {
    let root = RootProcess::start().await;
    let x = "00000000-0000-0000-0000-000000000000";
    let cases = [
        (Method::POST, "/api/application".to_owned()),
        (Method::PUT, format!("/api/application/{x}")),
        (Method::DELETE, format!("/api/application/{x}")),
        (Method::POST, "/api/service".to_owned()),
        (Method::PUT, format!("/api/service/{x}")),
        (Method::DELETE, format!("/api/service/{x}")),
        (Method::POST, format!("/api/service/{x}/instance")),
        (Method::DELETE, format!("/api/service/{x}/instance/0")),
        (Method::POST, "/api/auth/register".to_owned()),
        (Method::PUT, "/api/user/Admin".to_owned()),
        (Method::DELETE, "/api/user/Admin".to_owned()),
        (Method::POST, "/api/user/Admin".to_owned()),
        (Method::POST, "/api/organization".to_owned()),
        (Method::PUT, format!("/api/organization/{x}")),
        (Method::DELETE, format!("/api/organization/{x}")),
        (Method::GET, "/api/clusters".to_owned()),
        (Method::GET, "/api/clusters/active".to_owned()),
        (Method::GET, "/api/users".to_owned()),
    ];
    for (m, p) in cases {
        let (s, b) = root.raw(m.clone(), &p, None, body(&json!({}))).await;
        assert_eq!(s, 401, "{m} {p}: {b}");
        assert_eq!(b["code"], "unauthenticated", "{m} {p}");
    }
}

#[tokio::test]
async fn admin_password_comes_from_the_environment() {
    let dir = common::tempdir();
    let root = RootProcess::start_in(dir.path(), Some("s3cret-admin")).await;
    assert_eq!(code(&root.client().login("Admin", "Admin").await.unwrap_err()), "401 unauthenticated");
    root.client().login("Admin", "s3cret-admin").await.unwrap();
}

#[tokio::test]
async fn users_roles_and_passwords() {
    let root = RootProcess::start().await;
    let admin = root.admin().await;
    let at = admin.token().unwrap().to_owned();
    let reg = |name: &str, roles: Value| json!({"name": name, "password": "pw", "email": "e@x", "roles": roles});

    let (s, b) = root
        .raw(Method::POST, "/api/auth/register", Some(&at), body(&reg("bob", json!(["Application_Provider"]))))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["name"], "bob");
    assert!(b.get("password").is_none() && b.get("password_hash").is_none(), "{b}");
    let (s, b) = root.raw(Method::POST, "/api/auth/register", Some(&at), body(&reg("bob", json!([])))).await;
    assert_eq!((s, b["code"].as_str()), (409, Some("conflict")), "{b}");
    let (s, b) = root.raw(Method::POST, "/api/auth/register", Some(&at), body(&reg("carl", json!(["Emperor"])))).await;
    assert_eq!(s, 422, "{b}");
    assert!(b["message"].as_str().unwrap().contains("roles[0]"), "{b}");
    let (s, _) = root.raw(Method::POST, "/api/auth/register", Some(&at), body(&json!({"name": "dora"}))).await;
    assert_eq!(s, 422, "missing password");

    let bob = root.login("bob", "pw").await;
    let bt = bob.token().unwrap().to_owned();
    // Admin-only endpoints answer 403 to everyone else.
    for (m, p, b) in [
        (Method::POST, "/api/auth/register", reg("eve", json!([]))),
        (Method::GET, "/api/users", json!(null)),
        (Method::GET, "/api/organization", json!(null)),
        (Method::POST, "/api/organization", json!({"name": "o", "member": []})),
        (Method::PUT, "/api/user/Admin", json!({"email": "x"})),
        (Method::DELETE, "/api/user/Admin", json!(null)),
    ] {
        let (s, r) = root.raw(m.clone(), p, Some(&bt), if b.is_null() { None } else { body(&b) }).await;
        assert_eq!((s, r["code"].as_str()), (403, Some("forbidden")), "{m} {p}: {r}");
    }
    // Users see themselves, not others.
    assert_eq!(root.raw(Method::GET, "/api/user/bob", Some(&bt), None).await.0, 200);
    assert_eq!(root.raw(Method::GET, "/api/user/Admin", Some(&bt), None).await.0, 403);
    let (s, b) = root.raw(Method::GET, "/api/permission/bob", Some(&bt), None).await;
    assert_eq!((s, b["roles"].clone()), (200, json!(["Application_Provider"])));
    let (s, b) = root.raw(Method::GET, "/api/user/ghost", Some(&at), None).await;
    assert_eq!((s, b["code"].as_str()), (404, Some("not_found")));
    let (s, b) = root.raw(Method::GET, "/api/users", Some(&at), None).await;
    assert_eq!(s, 200);
    assert_eq!(b.as_array().unwrap().len(), 2);

    // Admin changes roles; the change applies to tokens already issued.
    let (s, b) = root.raw(Method::PUT, "/api/user/bob", Some(&at), body(&json!({"roles": ["Admin"]}))).await;
    assert_eq!((s, b["roles"].clone()), (200, json!(["Admin"])), "{b}");
    assert_eq!(root.raw(Method::GET, "/api/users", Some(&bt), None).await.0, 200);
    root.raw(Method::PUT, "/api/user/bob", Some(&at), body(&json!({"roles": []}))).await;
    assert_eq!(root.raw(Method::GET, "/api/users", Some(&bt), None).await.0, 403);

    // Password change: the old password must match; afterwards old tokens are revoked.
    let (s, b) = root
        .raw(Method::POST, "/api/user/bob", Some(&bt), body(&json!({"oldPassword": "nope", "newPassword": "pw2"})))
        .await;
    assert_eq!((s, b["code"].as_str()), (400, Some("bad_request")), "{b}");
    let (s, _) = root
        .raw(Method::POST, "/api/user/Admin", Some(&bt), body(&json!({"oldPassword": "pw", "newPassword": "pw2"})))
        .await;
    assert_eq!(s, 403);
    let (s, b) = root
        .raw(Method::POST, "/api/user/bob", Some(&bt), body(&json!({"oldPassword": "pw", "newPassword": "pw2"})))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(root.raw(Method::GET, "/api/applications", Some(&bt), None).await.0, 401);
    assert_eq!(code(&root.client().login("bob", "pw").await.unwrap_err()), "401 unauthenticated");
    let bob = root.login("bob", "pw2").await;

    // A user who owns applications cannot be deleted; one who does not, can.
    let apps = bob.create_applications(&sla("bobsapp", "x", &[])).await.unwrap();
    let (s, b) = root.raw(Method::DELETE, "/api/user/bob", Some(&at), None).await;
    assert_eq!((s, b["code"].as_str()), (409, Some("conflict")), "{b}");
    bob.delete_application(apps[0].id.as_str()).await.unwrap();
    let (s, b) = root.raw(Method::DELETE, "/api/user/bob", Some(&at), None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b.as_array().unwrap().len(), 1, "only Admin remains: {b}");
    assert_eq!(root.raw(Method::GET, "/api/applications", Some(bob.token().unwrap()), None).await.0, 401);
    let (s, _) = root.raw(Method::DELETE, "/api/user/Admin", Some(&at), None).await;
    assert_eq!(s, 409, "Admin cannot delete itself");

    // Admin sets a password; password reset by mail is not offered.
    let (s, b) = root.raw(Method::POST, "/api/user", None, body(&json!({"username": "x", "domain": "y"}))).await;
    assert_eq!((s, b["code"].as_str()), (501, Some("not_implemented")));
}

#[tokio::test]
async fn organizations() {
    let root = RootProcess::start().await;
    let admin = root.admin().await;
    let at = admin.token().unwrap().to_owned();
    let (s, b) = root.raw(Method::GET, "/api/organization", Some(&at), None).await;
    assert_eq!(s, 200);
    assert_eq!(b[0]["name"], "root");
    let admin_id = b[0]["member"][0]["user_id"].clone();

    let (s, b) = root
        .raw(
            Method::POST,
            "/api/organization",
            Some(&at),
            body(&json!({"name": "edge", "member": [{"user_id": admin_id, "roles": ["Organization_Admin"]}]})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let id = b["_id"].as_str().unwrap().to_owned();
    assert_eq!(root.raw(Method::POST, "/api/organization", Some(&at), body(&json!({"name": "edge"}))).await.0, 409);
    let (s, b) = root
        .raw(
            Method::POST,
            "/api/organization",
            Some(&at),
            body(&json!({"name": "x", "member": [{"user_id": "ghost", "roles": []}]})),
        )
        .await;
    assert_eq!(s, 422);
    assert!(b["message"].as_str().unwrap().contains("member[0].user_id"), "{b}");
    assert_eq!(
        root.raw(Method::POST, "/api/organization", Some(&at), body(&json!({"name": "bad name!"}))).await.0,
        422
    );

    // Logging into the new organization gives that organization's roles.
    let (s, b) = root
        .raw(
            Method::POST,
            "/api/auth/login",
            None,
            body(&json!({"username": "Admin", "password": "Admin", "organization_name": "edge"})),
        )
        .await;
    assert_eq!(s, 200);
    let edge_token = b["token"].as_str().unwrap().to_owned();
    let (_, p) = root.raw(Method::GET, "/api/permission/Admin", Some(&edge_token), None).await;
    assert_eq!(p["roles"], json!(["Organization_Admin"]));
    assert_eq!(root.raw(Method::GET, "/api/users", Some(&edge_token), None).await.0, 403, "not Admin in edge");

    let (s, b) = root
        .raw(Method::PUT, &format!("/api/organization/{id}"), Some(&at), body(&json!({"name": "edge2", "member": []})))
        .await;
    assert_eq!((s, b["name"].as_str()), (200, Some("edge2")), "{b}");
    let (s, b) = root.raw(Method::GET, &format!("/api/users/{id}"), Some(&at), None).await;
    assert_eq!((s, b.as_array().map(Vec::len)), (200, Some(0)));
    let root_id = root
        .raw(Method::GET, "/api/organization", Some(&at), None)
        .await
        .1
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "root")
        .unwrap()["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(root.raw(Method::DELETE, &format!("/api/organization/{root_id}"), Some(&at), None).await.0, 409);
    assert_eq!(root.raw(Method::DELETE, &format!("/api/organization/{id}"), Some(&at), None).await.0, 200);
    assert_eq!(root.raw(Method::DELETE, &format!("/api/organization/{id}"), Some(&at), None).await.0, 404);
}

#[tokio::test]
async fn applications_lifecycle() {
    let root = RootProcess::start().await;
    let c = root.admin().await;
    let t = c.token().unwrap().to_owned();

    // Several applications in one SLA.
    let mut two = sla("shop", "prod", &[("web", Some("10.30.1.1")), ("db", None)]);
    let second = sla("blog", "prod", &[("web", Some("10.30.1.2"))])["applications"][0].clone();
    two["applications"].as_array_mut().unwrap().push(second);
    let apps = c.create_applications(&two).await.unwrap();
    assert_eq!(apps.len(), 2);
    let shop = apps.iter().find(|a| a.application_name == "shop").unwrap().clone();
    assert_eq!(shop.microservices.len(), 2);
    assert_eq!(shop.owner, "Admin");

    // Get returns the application (the original returns null).
    let (s, b) = root.raw(Method::GET, &format!("/api/application/{}", shop.id), Some(&t), None).await;
    assert_eq!(s, 200);
    assert_eq!(b["applicationID"], shop.id.as_str());
    assert_eq!(b["application_name"], "shop");
    assert_eq!(code(&c.application("nope").await.unwrap_err()), "404 not_found");

    // Same name and namespace: 409, and nothing of the request is created.
    let mut dup = sla("fresh", "prod", &[("a", None)]);
    dup["applications"].as_array_mut().unwrap().push(sla("shop", "prod", &[])["applications"][0].clone());
    let e = c.create_applications(&dup).await.unwrap_err();
    assert_eq!(code(&e), "409 conflict");
    assert!(e.to_string().contains("shop/prod"), "{e}");
    assert_eq!(c.applications().await.unwrap().len(), 2, "no half-created application");
    // A taken address: 409 naming the field, never the holder (it may be another user's);
    // nothing created.
    let e = c.create_applications(&sla("other", "prod", &[("x", Some("10.30.1.1"))])).await.unwrap_err();
    assert_eq!(code(&e), "409 conflict");
    assert!(e.to_string().contains("addresses.rr_ip: 10.30.1.1 is already taken"), "{e}");
    assert!(!e.to_string().contains("service "), "{e}");
    assert_eq!(c.applications().await.unwrap().len(), 2);

    // Update.
    let up = |name: &str| json!({"application_name": name, "application_namespace": "prod", "application_desc": "new", "microservices": shop.microservices});
    let (s, b) = root.raw(Method::PUT, &format!("/api/application/{}", shop.id), Some(&t), body(&up("store"))).await;
    assert_eq!(
        (s, b["application_name"].as_str(), b["application_desc"].as_str()),
        (200, Some("store"), Some("new")),
        "{b}"
    );
    let svc = c.service(shop.microservices[0].as_str()).await.unwrap();
    assert_eq!(svc.job_name, "store.prod.web.test", "services follow the rename");
    assert_eq!(
        root.raw(Method::PUT, &format!("/api/application/{}", shop.id), Some(&t), body(&up("blog"))).await.0,
        409
    );
    let (s, b) = root.raw(Method::PUT, &format!("/api/application/{}", shop.id), Some(&t), body(&up("bad.name"))).await;
    assert_eq!(s, 422);
    assert!(b["message"].as_str().unwrap().starts_with("application_name"), "{b}");
    let (s, _) = root
        .raw(
            Method::PUT,
            &format!("/api/application/{}", shop.id),
            Some(&t),
            body(&json!({"application_name": "a", "application_namespace": "b", "microservices": ["foreign"]})),
        )
        .await;
    assert_eq!(s, 422);
    assert_eq!(root.raw(Method::PUT, "/api/application/nope", Some(&t), body(&up("x"))).await.0, 404);

    // Delete removes the services and frees their addresses.
    c.delete_application(shop.id.as_str()).await.unwrap();
    assert_eq!(code(&c.service(shop.microservices[0].as_str()).await.unwrap_err()), "404 not_found");
    assert_eq!(code(&c.delete_application(shop.id.as_str()).await.unwrap_err()), "404 not_found");
    c.create_applications(&sla("again", "prod", &[("web", Some("10.30.1.1"))])).await.unwrap();
    let (s, b) = root.raw(Method::GET, "/api/applications/", Some(&t), None).await;
    assert_eq!((s, b.as_array().map(Vec::len)), (200, Some(2)), "trailing slash works too");
}

#[tokio::test]
async fn services_and_instances() {
    let root = RootProcess::start().await;
    let c = root.admin().await;
    let t = c.token().unwrap().to_owned();
    let app = c.create_applications(&sla("app", "ns", &[("first", None)])).await.unwrap().remove(0);

    // Add services to an existing application.
    let mut add = sla("app", "ns", &[("second", Some("10.30.5.5")), ("third", None)]);
    add["applications"][0]["applicationID"] = json!(app.id);
    let created = c.create_services(&add).await.unwrap();
    assert_eq!(created.deployed_services.len(), 2);
    assert!(created.failed_services.is_empty());
    let svcs = c.services(Some(app.id.as_str())).await.unwrap();
    assert_eq!(svcs.iter().map(|s| s.service_name.as_str()).collect::<Vec<_>>(), ["first", "second", "third"]);
    assert_eq!(c.application(app.id.as_str()).await.unwrap().microservices.len(), 3);
    assert_eq!(c.services(None).await.unwrap().len(), 3);
    let (s, b) = root.raw(Method::GET, &format!("/api/services/{}/", app.id), Some(&t), None).await;
    assert_eq!((s, b.as_array().map(Vec::len)), (200, Some(3)));
    assert_eq!(code(&c.services(Some("nope")).await.unwrap_err()), "404 not_found");

    // Failures of service creation.
    let mut unknown = sla("app", "ns", &[("x", None)]);
    unknown["applications"][0]["applicationID"] = json!("does-not-exist");
    assert_eq!(code(&c.create_services(&unknown).await.unwrap_err()), "404 not_found");
    let e = c.create_services(&sla("app", "ns", &[("x", None)])).await.unwrap_err();
    assert_eq!(code(&e), "422 invalid_field");
    assert!(e.to_string().contains("applications[0].applicationID"), "{e}");
    let mut dup = sla("app", "ns", &[("first", None)]);
    dup["applications"][0]["applicationID"] = json!(app.id);
    assert_eq!(code(&c.create_services(&dup).await.unwrap_err()), "409 conflict");
    let mut bad = sla("app", "ns", &[("bad!", None)]);
    bad["applications"][0]["applicationID"] = json!(app.id);
    let e = c.create_services(&bad).await.unwrap_err();
    assert_eq!(code(&e), "422 invalid_field");
    assert!(e.to_string().contains("microservice_name"), "{e}");
    let mut taken = sla("app", "ns", &[("fourth", None), ("fifth", Some("10.30.5.5"))]);
    taken["applications"][0]["applicationID"] = json!(app.id);
    assert_eq!(code(&c.create_services(&taken).await.unwrap_err()), "409 conflict");
    assert_eq!(c.services(Some(app.id.as_str())).await.unwrap().len(), 3, "all or nothing");

    // Get, with the fields clients read.
    let second = svcs.iter().find(|s| s.service_name == "second").unwrap();
    let (s, b) = root.raw(Method::GET, &format!("/api/service/{}", second.id), Some(&t), None).await;
    assert_eq!(s, 200);
    for field in [
        "microserviceID",
        "applicationID",
        "job_name",
        "app_name",
        "image",
        "instance_list",
        "microservice_name",
        "cmd",
        "memory",
        "port",
        "RR_ip",
    ] {
        assert!(b.get(field).is_some(), "service lacks {field}: {b}");
    }
    assert_eq!(b["RR_ip"], "10.30.5.5");
    assert_eq!(b["job_name"], "app.ns.second.test");

    // Update (the original answers 501): the service as returned, changed and sent back; the
    // fields the server adds are ignored.
    let mut spec = b.clone();
    spec["memory"] = json!(256);
    spec["addresses"] = json!({"rr_ip": "10.30.5.6"});
    let updated = c.update_service(second.id.as_str(), &spec).await.unwrap();
    assert_eq!((updated.spec.memory, updated.rr_ip.as_deref()), (256, Some("10.30.5.6")));
    // The old address is free again, the new one taken.
    let mut reuse = sla("app", "ns", &[("sixth", Some("10.30.5.5"))]);
    reuse["applications"][0]["applicationID"] = json!(app.id);
    c.create_services(&reuse).await.unwrap();
    spec["memory"] = json!(-5);
    let e = c.update_service(second.id.as_str(), &spec).await.unwrap_err();
    assert_eq!(code(&e), "422 invalid_field");
    assert!(e.to_string().contains("memory"), "{e}");
    spec["memory"] = json!(5);
    spec["microservice_name"] = json!("first");
    assert_eq!(code(&c.update_service(second.id.as_str(), &spec).await.unwrap_err()), "409 conflict");
    assert_eq!(code(&c.update_service("nope", &spec).await.unwrap_err()), "404 not_found");

    // Instances: without a cluster, the request waits with a visible negative status.
    let first = svcs.iter().find(|s| s.service_name == "first").unwrap();
    let i0 = c.request_instance(first.id.as_str()).await.unwrap();
    let i1 = c.request_instance(first.id.as_str()).await.unwrap();
    assert_eq!((i0.instance_number, i1.instance_number), (0, 1));
    assert_eq!(i0.status, oak_api::Status::NoActiveClusterWithCapacity);
    assert!(i0.status_detail.contains("no active cluster"), "{}", i0.status_detail);
    let s = c.service(first.id.as_str()).await.unwrap();
    assert_eq!(s.status, Some(oak_api::Status::NoActiveClusterWithCapacity));
    assert_eq!(s.instance_list.len(), 2);
    assert_eq!(s.instance_list[0].status, oak_api::Status::NoActiveClusterWithCapacity);
    c.remove_instance(first.id.as_str(), 0).await.unwrap();
    assert_eq!(code(&c.remove_instance(first.id.as_str(), 0).await.unwrap_err()), "404 not_found");
    let (st, b) = root.raw(Method::DELETE, &format!("/api/service/{}/instance/abc", first.id), Some(&t), None).await;
    assert_eq!((st, b["code"].as_str()), (400, Some("bad_request")));
    assert_eq!(c.service(first.id.as_str()).await.unwrap().instance_list.len(), 1);
    let i2 = c.request_instance(first.id.as_str()).await.unwrap();
    assert_eq!(i2.instance_number, 2, "instance numbers are never reused");
    assert_eq!(code(&c.request_instance("nope").await.unwrap_err()), "404 not_found");

    // Delete a service: it leaves the application, with its instances.
    c.delete_service(first.id.as_str()).await.unwrap();
    assert_eq!(code(&c.service(first.id.as_str()).await.unwrap_err()), "404 not_found");
    assert_eq!(code(&c.delete_service(first.id.as_str()).await.unwrap_err()), "404 not_found");
    assert!(!c.application(app.id.as_str()).await.unwrap().microservices.contains(&first.id));

    // Clusters: none yet.
    assert!(c.clusters(false).await.unwrap().is_empty());
    assert!(c.clusters(true).await.unwrap().is_empty());
    let (s, b) = root.raw(Method::GET, "/api/clusters/", Some(&t), None).await;
    assert_eq!((s, b), (200, json!([])));
}

#[tokio::test]
async fn bad_requests_get_clear_4xx_answers() {
    let root = RootProcess::start().await;
    let t = root.admin().await.token().unwrap().to_owned();
    let cases: Vec<(Method, &str, Vec<u8>, u16, &str)> = vec![
        (Method::POST, "/api/application", b"{not json".to_vec(), 400, "malformed_json"),
        (Method::POST, "/api/application", Vec::new(), 400, "malformed_json"),
        (Method::POST, "/api/application", b"[1,2]".to_vec(), 422, "invalid_field"),
        (Method::POST, "/api/application", b"\"a string\"".to_vec(), 422, "invalid_field"),
        (Method::POST, "/api/auth/login", b"{\"username\": 5, \"password\": []}".to_vec(), 422, "invalid_field"),
        (Method::POST, "/api/auth/login", b"{}".to_vec(), 422, "invalid_field"),
        (Method::GET, "/api/nothing-here", Vec::new(), 404, "not_found"),
        (Method::PATCH, "/api/applications", Vec::new(), 405, "method_not_allowed"),
    ];
    for (m, p, b, status, code) in cases {
        let (s, r) = root.raw(m.clone(), p, Some(&t), if b.is_empty() { None } else { Some(b.clone()) }).await;
        assert_eq!((s, r["code"].as_str()), (status, Some(code)), "{m} {p} ({} bytes): {r}", b.len());
        assert!(r["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // An oversized body is refused from its Content-Length, before it is read. The server may
    // close the connection before the client finishes sending, so speak raw HTTP.
    let addr = root.addr();
    let port = addr.rsplit(':').next().unwrap().parse().unwrap();
    let mut stream = common::tls_connect(port, root.ca_hash.unwrap()).await;
    let size = 2 * 1024 * 1024;
    let head = format!(
        "POST /api/application HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {t}\r\nContent-Type: application/json\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(head.as_bytes()).await.unwrap();
    let _ = stream.write_all(&vec![b' '; size]).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"code\":\"payload_too_large\""), "{answer}");

    // Still alive and well.
    assert_eq!(root.raw(Method::GET, "/api/applications", Some(&t), None).await.0, 200);
}

#[tokio::test]
async fn concurrent_requests_never_share_a_name_or_an_address() {
    let root = RootProcess::start().await;
    let c = root.admin().await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.create_applications(&sla(&format!("racer{i}"), "ns", &[("s", Some("10.30.9.9"))])).await.is_ok()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap());
    }
    assert_eq!(ok, 1, "exactly one request may take 10.30.9.9");
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move { c.create_applications(&sla("same", "ns", &[])).await.is_ok() }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap());
    }
    assert_eq!(ok, 1, "exactly one request may take same/ns");
    assert_eq!(c.applications().await.unwrap().len(), 2);
}

#[tokio::test]
async fn openapi_and_swagger_ui_are_served() {
    let root = RootProcess::start().await;
    let (s, doc) = root.raw(Method::GET, "/docs/openapi.json", None, None).await;
    assert_eq!(s, 200);
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/auth/login",
        "/api/application",
        "/api/application/{id}",
        "/api/service/{id}/instance",
        "/api/services/{app_id}",
        "/api/clusters",
    ] {
        assert!(paths.contains_key(p), "openapi lacks {p}");
    }
    let html = root.http().get(format!("{}/api/docs/", root.url)).send().await.unwrap();
    assert_eq!(html.status(), 200);
    let text = html.text().await.unwrap();
    assert!(text.contains("swagger-ui"), "{text}");
    assert!(!text.contains("https://"), "Swagger UI must work offline");
    let js = root.http().get(format!("{}/api/docs/swagger-ui-bundle.js", root.url)).send().await.unwrap();
    assert_eq!(js.status(), 200);
}

#[tokio::test]
async fn shared_sla_fixtures_over_http() {
    let root = RootProcess::start().await;
    let c = root.admin().await;
    let t = c.token().unwrap().to_owned();
    // (file, expected status, text the message must contain)
    let cases = [
        ("blank_app_without_services.json", 200, ""),
        ("clientsrvr.json", 200, ""),
        ("default_app_with_services.json", 200, ""),
        ("edge_gaming.json", 200, ""),
        ("oakestra-tests/sla_correct_2.json", 200, ""),
        ("oakestra-tests/sla_correct_3.json", 200, ""),
        ("oakestra-tests/sla_correct_4.json", 200, ""),
        (
            "oakestra-tests/sla_correct_1.json",
            422,
            "applications[0].microservices[0].addresses.rr_ip: 192.168.178.4 is outside",
        ),
        ("oakestra-tests/sla_flawed_1.json", 422, "sla_version: required field is missing"),
        (
            "oakestra-tests/sla_flawed_2.json",
            422,
            "applications[0].microservices[0].microservice_name: must be a string",
        ),
        ("oakestra-tests/sla_flawed_3.json", 422, "sla_version: required field is missing"),
        ("oakestra-tests/sla_flawed_4.json", 422, "con_constraints[0].type: required field is missing"),
        ("oakestra-tests/sla_flawed_5.json", 422, "microservice_name: must match"),
    ];
    for (file, status, msg) in cases {
        let doc = common::read_json(&common::shared_sla(file));
        let (s, b) = root.raw(Method::POST, "/api/application", Some(&t), body(&doc)).await;
        assert_eq!(s, status, "{file}: {b}");
        if status == 200 {
            for app in b.as_array().unwrap() {
                let id = app["applicationID"].as_str().unwrap();
                c.delete_application(id).await.unwrap();
            }
        } else {
            assert_eq!(b["code"], "invalid_field", "{file}");
            assert!(b["message"].as_str().unwrap().contains(msg), "{file}: {b}");
        }
    }
    assert!(c.applications().await.unwrap().is_empty());
}

#[tokio::test]
async fn replicas_are_kept_and_scaled() {
    let root = RootProcess::start().await;
    let c = root.admin().await;
    let mut doc = sla("rep", "ns", &[("web", None)]);
    doc["applications"][0]["microservices"][0]["replicas"] = json!(3);
    let app = c.create_applications(&doc).await.unwrap().remove(0);
    let svc = app.microservices[0].to_string();
    let count = |n: usize| {
        let c = c.clone();
        let svc = svc.clone();
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let s = c.service(&svc).await.unwrap();
                if s.instance_list.len() == n {
                    return s;
                }
                assert!(std::time::Instant::now() < deadline, "expected {n} instances, have {:?}", s.instance_list);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    // Without a cluster they wait, each saying why.
    let s = count(3).await;
    assert!(s.instance_list.iter().all(|i| i.status == oak_api::Status::NoActiveClusterWithCapacity));
    c.scale(&svc, 1).await.unwrap();
    let s = count(1).await;
    assert_eq!(s.instance_list[0].instance_number, 0, "the newest go first");
    // A deploy call adds one, and the count keeps it.
    c.request_instance(&svc).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    count(2).await;
    let e = c.scale(&svc, 20_000).await.unwrap_err();
    assert_eq!(code(&e), "422 invalid_field");
    let mut bad = sla("rep2", "ns", &[("web", None)]);
    bad["applications"][0]["microservices"][0]["replicas"] = json!(-1);
    assert_eq!(code(&c.create_applications(&bad).await.unwrap_err()), "422 invalid_field");
}

#[tokio::test]
async fn repeated_failed_logins_are_throttled() {
    let root = RootProcess::start().await;
    let c = root.client();
    for _ in 0..5 {
        assert_eq!(code(&c.login("Admin", "guess").await.unwrap_err()), "401 unauthenticated");
    }
    // Blocked now, even with the right password; other users are not.
    let e = c.login("Admin", "Admin").await.unwrap_err();
    assert_eq!(code(&e), "429 too_many_requests");
    assert!(e.to_string().contains("too many failed logins for Admin"), "{e}");
    assert_eq!(code(&c.login("nobody", "x").await.unwrap_err()), "401 unauthenticated");
}

/// Opens the cluster link by hand: 101 when the token is accepted, 401 when not.
async fn link_status(root: &RootProcess, token: &str) -> u16 {
    root.http()
        .get(format!("{}/api/cluster/link", root.url))
        .header("authorization", format!("Bearer {token}"))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn join_tokens_can_be_created_listed_and_revoked() {
    let root = RootProcess::start().await;
    let admin = root.admin().await;
    let t = admin.token().unwrap().to_owned();
    let cluster_token = std::fs::read_to_string(root.data_dir.join("cluster-token")).unwrap();
    assert_eq!(link_status(&root, cluster_token.trim()).await, 101);
    assert_eq!(link_status(&root, "not-a-token").await, 401);
    assert_eq!(link_status(&root, "").await, 401);

    let (s, created) = root.raw(Method::POST, "/api/tokens", Some(&t), body(&json!({"name": "site-a"}))).await;
    assert_eq!(s, 200, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(link_status(&root, &secret).await, 101);
    let (_, list) = root.raw(Method::GET, "/api/tokens", Some(&t), None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains(&secret), "secrets are never listed");

    let (s, revoked) = root.raw(Method::DELETE, &format!("/api/tokens/{id}"), Some(&t), None).await;
    assert_eq!((s, revoked["revoked"].as_bool()), (200, Some(true)));
    assert_eq!(link_status(&root, &secret).await, 401, "a revoked token is refused");
    assert_eq!(root.raw(Method::DELETE, "/api/tokens/nope", Some(&t), None).await.0, 404);

    // Only an Admin manages tokens.
    let bob = root.user("bob").await;
    let bt = bob.token().unwrap().to_owned();
    assert_eq!(root.raw(Method::GET, "/api/tokens", Some(&bt), None).await.0, 403);
    assert_eq!(root.raw(Method::POST, "/api/tokens", Some(&bt), body(&json!({"name": "x"}))).await.0, 403);
}
