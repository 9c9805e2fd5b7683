//! Services, their instances, and the cluster list.

use super::extract::{Caller, JsonValue, Path, Query};
use super::{ApiError, AppState, route};
use axum::extract::State;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use oak_api::model::{Cluster, InstanceRequested, Message, Service, ServiceCreated};
use oak_api::sla::{MicroserviceSpec, Violation};
use oak_api::{ApplicationId, ErrorBody, ServiceId};
use serde_json::Value;

pub(super) fn routes(r: Router<AppState>) -> Router<AppState> {
    let r = route(r, "/api/service", post(create));
    let r = route(r, "/api/service/{id}", get(get_one).put(update).delete(remove));
    let r = route(r, "/api/services", get(list_all));
    let r = route(r, "/api/services/{app_id}", get(list_of_app));
    let r = route(r, "/api/service/{id}/instance", post(deploy_instance));
    let r = route(r, "/api/service/{id}/instance/{number}", delete(undeploy_instance));
    let r = route(r, "/api/service/{id}/instance/{number}/logs", get(instance_logs));
    let r = route(r, "/api/service/{id}/replicas", axum::routing::put(scale));
    let r = route(r, "/api/clusters", get(clusters));
    route(r, "/api/clusters/active", get(active_clusters))
}

fn violation(field: &str, message: &str) -> ApiError {
    ApiError::invalid(vec![Violation { field: field.to_owned(), message: message.to_owned() }])
}

/// Add the services of `applications[0]` to the existing application `applications[0].applicationID`.
#[utoipa::path(post, path = "/api/service", tag = "services", security(("bearer" = [])),
    request_body(content = Object, description = "an SLA v2.0 descriptor whose applications[0].applicationID names an existing application"),
    responses((status = 200, body = ServiceCreated), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonValue(doc): JsonValue,
) -> Result<Json<ServiceCreated>, ApiError> {
    let sla = oak_api::sla::parse_sla(&doc)?;
    let app_id = doc
        .pointer("/applications/0/applicationID")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            violation("applications[0].applicationID", "required: the id of the application to add services to")
        })?
        .to_owned();
    if sla.applications.len() != 1 {
        return Err(violation("applications", "must contain exactly one application when adding services"));
    }
    let specs = sla.applications.into_iter().flat_map(|a| a.microservices).collect::<Vec<_>>();
    state.blocking(move |r| Ok(Json(r.create_services(&caller.user.id, &ApplicationId(app_id), specs)?))).await
}

/// One service of the caller, with its instances.
#[utoipa::path(get, path = "/api/service/{id}", tag = "services", security(("bearer" = [])),
    responses((status = 200, body = Service), (status = 404, body = ErrorBody)))]
pub(super) async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Service>, ApiError> {
    Ok(Json(state.registry.get_service(&caller.user.id, &ServiceId(id))?))
}

fn spec_from_update(doc: &Value) -> Result<MicroserviceSpec, ApiError> {
    if doc.get("sla_version").is_none() {
        return Ok(oak_api::sla::parse_microservice(doc, "")?);
    }
    let sla = oak_api::sla::parse_sla(doc)?;
    let mut services: Vec<MicroserviceSpec> = sla.applications.into_iter().flat_map(|a| a.microservices).collect();
    if services.len() != 1 {
        return Err(violation(
            "applications[0].microservices",
            "must contain exactly one service when updating a service",
        ));
    }
    Ok(services.remove(0))
}

/// Replace a service's description (the original answers 501). The body is one microservice
/// object, or an SLA holding exactly one. Running instances keep their placement.
#[utoipa::path(put, path = "/api/service/{id}", tag = "services", security(("bearer" = [])),
    request_body(content = Object, description = "a microservice description"),
    responses((status = 200, body = Service), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonValue(doc): JsonValue,
) -> Result<Json<Service>, ApiError> {
    let spec = spec_from_update(&doc)?;
    state.blocking(move |r| Ok(Json(r.update_service(&caller.user.id, &ServiceId(id), spec)?))).await
}

/// Delete a service with its instances, and free its addresses.
#[utoipa::path(delete, path = "/api/service/{id}", tag = "services", security(("bearer" = [])),
    responses((status = 200, body = Message), (status = 404, body = ErrorBody)))]
pub(super) async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Message>, ApiError> {
    state.blocking(move |r| Ok(r.delete_service(&caller.user.id, &ServiceId(id))?)).await?;
    state.hub.bump();
    Ok(Json(Message::new("Job deleted")))
}

/// All services of the caller.
#[utoipa::path(get, path = "/api/services", tag = "services", security(("bearer" = [])),
    responses((status = 200, body = [Service])))]
pub(super) async fn list_all(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<Service>>, ApiError> {
    Ok(Json(state.registry.list_all_services(&caller.user.id)?))
}

/// The services of one of the caller's applications.
#[utoipa::path(get, path = "/api/services/{app_id}", tag = "services", security(("bearer" = [])),
    responses((status = 200, body = [Service]), (status = 404, body = ErrorBody)))]
pub(super) async fn list_of_app(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
) -> Result<Json<Vec<Service>>, ApiError> {
    Ok(Json(state.registry.list_services(&caller.user.id, &ApplicationId(app))?))
}

/// Ask for one more instance of a service. Without an active cluster the instance waits
/// with status `NoActiveClusterWithCapacity`; that is a state, not an error.
#[utoipa::path(post, path = "/api/service/{id}/instance", tag = "instances", security(("bearer" = [])),
    responses((status = 200, body = InstanceRequested), (status = 404, body = ErrorBody)))]
pub(super) async fn deploy_instance(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<InstanceRequested>, ApiError> {
    let i = state.blocking(move |r| Ok(r.request_instance(&caller.user.id, &ServiceId(id))?)).await?;
    state.hub.kick();
    Ok(Json(InstanceRequested {
        message: "ok".into(),
        instance_number: i.instance_number,
        status: i.status,
        status_detail: i.status_detail,
    }))
}

/// Remove instance `number` of a service.
#[utoipa::path(delete, path = "/api/service/{id}/instance/{number}", tag = "instances", security(("bearer" = [])),
    responses((status = 200, body = Message), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn undeploy_instance(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, number)): Path<(String, String)>,
) -> Result<Json<Message>, ApiError> {
    let n: u32 = number.parse().map_err(|_| {
        ApiError::bad_request(format!("instance number must be a non-negative integer, got {number:?}"))
    })?;
    state.blocking(move |r| Ok(r.remove_instance(&caller.user.id, &ServiceId(id), n)?)).await?;
    state.hub.bump();
    Ok(Json(Message::new("ok")))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
pub(super) struct LogsQuery {
    /// Return the log from this byte offset on (to follow it); default: the last `max` bytes.
    from: Option<u64>,
    /// At most this many bytes (default 64 KiB, at most 1 MiB).
    max: Option<u64>,
}

/// The log (stdout and stderr) of an instance, fetched from its worker through its cluster.
#[utoipa::path(get, path = "/api/service/{id}/instance/{number}/logs", tag = "instances", security(("bearer" = [])),
    params(LogsQuery),
    responses((status = 200, body = oak_api::node::LogsReply), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn instance_logs(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, number)): Path<(String, String)>,
    Query(q): Query<LogsQuery>,
) -> Result<Json<oak_api::node::LogsReply>, ApiError> {
    let n: u32 = number.parse().map_err(|_| {
        ApiError::bad_request(format!("instance number must be a non-negative integer, got {number:?}"))
    })?;
    let sid = ServiceId(id);
    let target = state.registry.logs_target(&caller.user.id, &sid, n)?;
    let req = oak_api::node::LogsRequest {
        request_id: String::new(),
        service_id: sid,
        instance_number: n,
        from_offset: q.from,
        max_bytes: q.max.unwrap_or(64 * 1024).min(1024 * 1024),
    };
    let reply = state.hub.logs(&target.cluster, req).await?;
    match reply.error {
        Some(e) => Err(ApiError::new(oak_api::ErrorCode::Unavailable, e)),
        None => Ok(Json(reply)),
    }
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
pub(super) struct Scale {
    /// Desired number of instances.
    replicas: u32,
}

/// Set the desired number of instances of a service; the root adds or removes instances
/// (newest first) to match, and keeps that number from then on.
#[utoipa::path(put, path = "/api/service/{id}/replicas", tag = "instances", security(("bearer" = [])), request_body = Scale,
    responses((status = 200, body = Service), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn scale(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    super::extract::JsonBody(req): super::extract::JsonBody<Scale>,
) -> Result<Json<Service>, ApiError> {
    let svc = state.blocking(move |r| Ok(r.set_replicas(&caller.user.id, &ServiceId(id), req.replicas)?)).await?;
    state.hub.kick();
    Ok(Json(svc))
}

/// Every cluster known to the root.
#[utoipa::path(get, path = "/api/clusters", tag = "clusters", security(("bearer" = [])),
    responses((status = 200, body = [Cluster])))]
pub(super) async fn clusters(State(state): State<AppState>, _caller: Caller) -> Result<Json<Vec<Cluster>>, ApiError> {
    Ok(Json(state.registry.list_clusters(false)?))
}

/// Clusters that reported within the activity window (30 s).
#[utoipa::path(get, path = "/api/clusters/active", tag = "clusters", security(("bearer" = [])),
    responses((status = 200, body = [Cluster])))]
pub(super) async fn active_clusters(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<Vec<Cluster>>, ApiError> {
    Ok(Json(state.registry.list_clusters(true)?))
}
