//! Applications: created from an SLA, with their services.

use super::extract::{Caller, JsonBody, JsonValue, Path};
use super::{ApiError, AppState, route};
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use oak_api::model::{Application, ApplicationUpdate, Message};
use oak_api::{ApplicationId, ErrorBody, ErrorCode};

pub(super) fn routes(r: Router<AppState>) -> Router<AppState> {
    let r = route(r, "/api/application", post(create));
    let r = route(r, "/api/application/{id}", get(get_one).put(update).delete(delete));
    let r = route(r, "/api/applications", get(list));
    route(r, "/api/applications/{user_id}", get(list_of_user))
}

/// Create every application of an SLA with its services (registered, not deployed).
/// All or nothing. Returns all of the caller's applications, as the original does.
#[utoipa::path(post, path = "/api/application", tag = "applications", security(("bearer" = [])),
    request_body(content = Object, description = "an SLA v2.0 descriptor"),
    responses((status = 200, body = [Application]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 409, description = "name/namespace or address taken", body = ErrorBody),
              (status = 422, description = "invalid SLA; the message names the field", body = ErrorBody)))]
pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonValue(doc): JsonValue,
) -> Result<Json<Vec<Application>>, ApiError> {
    let sla = oak_api::sla::parse_sla(&doc)?;
    state
        .blocking(move |r| {
            r.create_applications(&caller.user, sla)?;
            Ok(Json(r.list_apps(&caller.user.id)?))
        })
        .await
}

/// The caller's applications.
#[utoipa::path(get, path = "/api/applications", tag = "applications", security(("bearer" = [])),
    responses((status = 200, body = [Application]), (status = 401, body = ErrorBody)))]
pub(super) async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<Application>>, ApiError> {
    Ok(Json(state.registry.list_apps(&caller.user.id)?))
}

/// The caller's applications, addressed by the caller's own user id (original path).
#[utoipa::path(get, path = "/api/applications/{user_id}", tag = "applications", security(("bearer" = [])),
    responses((status = 200, body = [Application]), (status = 404, body = ErrorBody)))]
pub(super) async fn list_of_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
) -> Result<Json<Vec<Application>>, ApiError> {
    if user != caller.user.id.as_str() && user != caller.user.name {
        return Err(ApiError::new(ErrorCode::NotFound, format!("user {user} not found")));
    }
    Ok(Json(state.registry.list_apps(&caller.user.id)?))
}

/// One application of the caller.
#[utoipa::path(get, path = "/api/application/{id}", tag = "applications", security(("bearer" = [])),
    responses((status = 200, body = Application), (status = 404, body = ErrorBody)))]
pub(super) async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Application>, ApiError> {
    Ok(Json(state.registry.get_app(&caller.user.id, &ApplicationId(id))?))
}

/// Rename an application or change its description.
#[utoipa::path(put, path = "/api/application/{id}", tag = "applications", security(("bearer" = [])), request_body = ApplicationUpdate,
    responses((status = 200, body = Application), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(up): JsonBody<ApplicationUpdate>,
) -> Result<Json<Application>, ApiError> {
    state.blocking(move |r| Ok(Json(r.update_app(&caller.user.id, &ApplicationId(id), &up)?))).await
}

/// Delete an application with all its services and their instances.
#[utoipa::path(delete, path = "/api/application/{id}", tag = "applications", security(("bearer" = [])),
    responses((status = 200, body = Message), (status = 404, body = ErrorBody)))]
pub(super) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Message>, ApiError> {
    state.blocking(move |r| Ok(r.delete_app(&caller.user.id, &ApplicationId(id))?)).await?;
    state.hub.bump();
    Ok(Json(Message::new("Application Deleted")))
}
