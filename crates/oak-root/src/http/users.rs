//! Authentication, users and organizations.

use super::extract::{Caller, JsonBody, Path, Peer, authenticate, bearer};
use super::{ApiError, AppState, route};
use crate::auth::{self, TokenKind};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use oak_api::model::{
    LoginRequest, LoginResponse, Message, Organization, OrganizationRequest, PasswordChange, Permissions,
    ROOT_ORGANIZATION, RefreshResponse, RegisterRequest, User, UserUpdate,
};
use oak_api::{ErrorBody, ErrorCode, OrganizationId};

pub(super) fn routes(r: Router<AppState>) -> Router<AppState> {
    let r = route(r, "/api/auth/login", post(login));
    let r = route(r, "/api/auth/refresh", post(refresh));
    let r = route(r, "/api/auth/register", post(register));
    let r = route(r, "/api/permission/{username}", get(permissions));
    let r = route(r, "/api/user/{username}", get(get_user).put(update_user).delete(delete_user).post(change_password));
    let r = route(r, "/api/user/{username}/quota", get(get_quota).put(set_quota));
    let r = route(r, "/api/user", post(reset_password).put(reset_password));
    let r = route(r, "/api/users", get(list_users));
    let r = route(r, "/api/users/{organization_id}", get(list_org_users));
    let r = route(r, "/api/organization", get(list_orgs).post(create_org));
    let r = route(r, "/api/organization/{id}", axum::routing::put(update_org).delete(delete_org));
    let r = route(r, "/api/tokens", get(list_tokens).post(create_token));
    route(r, "/api/tokens/{id}", axum::routing::delete(revoke_token))
}

fn now_secs(state: &AppState) -> u64 {
    state.clock.now_unix() as u64
}

/// Log in; returns an access token and a refresh token.
#[utoipa::path(post, path = "/api/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 401, body = ErrorBody), (status = 404, description = "unknown organization", body = ErrorBody)))]
pub(super) async fn login(
    State(state): State<AppState>,
    Peer(from): Peer,
    JsonBody(req): JsonBody<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    // Bounded before anything is looked up, counted or hashed.
    if req.username.is_empty() || req.username.len() > MAX_USER_NAME {
        return Err(invalid("username", format!("must be 1-{MAX_USER_NAME} characters")));
    }
    check_password("password", &req.password)?;
    let org_name =
        req.organization_name.clone().filter(|o| !o.is_empty()).unwrap_or_else(|| ROOT_ORGANIZATION.to_owned());
    if org_name.len() > MAX_USER_NAME {
        return Err(invalid("organization_name", format!("must be at most {MAX_USER_NAME} characters")));
    }
    let t = state.clock.now_unix();
    if let Err(left) = state.login_limiter.check(&req.username, from, t) {
        return Err(too_many_logins(&req.username, from, left));
    }
    let name = req.username.clone();
    let (org, user) = state
        .blocking(move |registry| {
            let org = registry
                .org_by_name(&org_name)?
                .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("organization {org_name} not found")))?;
            Ok((org, registry.user_by_name(&name)?))
        })
        .await?;
    let hash = user.as_ref().map_or(auth::dummy_hash(), |u| u.password_hash.as_str()).to_owned();
    // Counted as a failure before the check runs: concurrent guesses cannot all slip through.
    state.login_limiter.attempt(&req.username, from, t).map_err(|left| too_many_logins(&req.username, from, left))?;
    let ok = match state.hasher.verify(req.password.clone(), hash, auth::Priority::Login).await {
        Ok(ok) => ok,
        Err(busy) => {
            state.login_limiter.succeeded(&req.username, from);
            return Err(ApiError::too_many(busy.to_string(), busy.retry_after_secs));
        }
    };
    let user = match user {
        Some(u) if ok => u,
        _ => {
            tracing::info!(user = %req.username, from = %from, "failed login");
            return Err(ApiError::unauthenticated("invalid username or password"));
        }
    };
    state.login_limiter.succeeded(&req.username, from);
    let s = state.clone();
    state
        .blocking(move |registry| {
            let roles = registry.roles(&user.id, &org)?;
            let now = now_secs(&s);
            let subject = auth::Subject { user: user.id, name: user.name, roles, org, generation: user.generation };
            let issue = |kind| s.tokens.issue(kind, &subject, now).map_err(|e| ApiError::internal(e.to_string()));
            Ok(Json(LoginResponse { token: issue(TokenKind::Access)?, refresh_token: issue(TokenKind::Refresh)? }))
        })
        .await
}

fn too_many_logins(user: &str, from: std::net::IpAddr, left: f64) -> ApiError {
    ApiError::too_many(
        format!("too many failed logins for {user} from {from}; try again in {left:.0} s"),
        left.ceil() as u64,
    )
}

/// The longest user (and organization) name a login may carry.
const MAX_USER_NAME: usize = 64;

fn invalid(field: &str, message: String) -> ApiError {
    ApiError::invalid(vec![oak_api::sla::Violation { field: field.to_owned(), message }])
}

/// A refresh token, from `Authorization: Bearer` (as the original) or `{"refresh_token"}`.
pub(super) struct RefreshCaller(super::extract::Caller);

impl FromRequestParts<AppState> for RefreshCaller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        authenticate(state, bearer(parts)?, TokenKind::Refresh).map(RefreshCaller)
    }
}

/// Exchange a refresh token (sent as the bearer token) for a new access token.
#[utoipa::path(post, path = "/api/auth/refresh", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = RefreshResponse), (status = 401, body = ErrorBody)))]
pub(super) async fn refresh(
    State(state): State<AppState>,
    RefreshCaller(c): RefreshCaller,
) -> Result<Json<RefreshResponse>, ApiError> {
    let token = state
        .tokens
        .issue(
            TokenKind::Access,
            &auth::Subject {
                user: c.user.id,
                name: c.user.name,
                roles: c.roles,
                org: c.org,
                generation: c.user.generation,
            },
            now_secs(&state),
        )
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(RefreshResponse { token }))
}

fn check_password(field: &str, password: &str) -> Result<(), ApiError> {
    if password.is_empty() || password.len() > 1024 {
        return Err(ApiError::invalid(vec![oak_api::sla::Violation {
            field: field.to_owned(),
            message: "must be 1-1024 characters".into(),
        }]));
    }
    Ok(())
}

async fn hash(state: &AppState, password: String) -> Result<String, ApiError> {
    state.hasher.hash(password).await.map_err(|e| match e {
        auth::AuthError::Busy(b) => ApiError::too_many(b.to_string(), b.retry_after_secs),
        e => ApiError::internal(e.to_string()),
    })
}

/// Register a user in the caller's organization (Admin only).
#[utoipa::path(post, path = "/api/auth/register", tag = "users", security(("bearer" = [])), request_body = RegisterRequest,
    responses((status = 200, body = User), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn register(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<RegisterRequest>,
) -> Result<Json<User>, ApiError> {
    caller.require_admin()?;
    check_password("password", &req.password)?;
    let h = hash(&state, req.password.clone()).await?;
    let roles = req.roles.clone().unwrap_or_else(|| vec!["Application_Provider".to_owned()]);
    state.blocking(move |r| Ok(Json(r.create_user(&caller.org, &req.name, &req.email, roles, h)?))).await
}

/// User names are one name whatever their case.
fn same_name(a: &str, b: &str) -> bool {
    crate::registry::normalize_user_name(a) == crate::registry::normalize_user_name(b)
}

fn self_or_admin(caller: &Caller, username: &str) -> Result<(), ApiError> {
    if same_name(&caller.user.name, username) || caller.is_admin() {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!("user {} may not act on user {username}", caller.user.name)))
    }
}

/// Roles of a user in the caller's organization.
#[utoipa::path(get, path = "/api/permission/{username}", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = Permissions), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn permissions(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
) -> Result<Json<Permissions>, ApiError> {
    self_or_admin(&caller, &username)?;
    let u = state.registry.get_user(&username, &caller.org)?;
    Ok(Json(Permissions { roles: u.roles }))
}

/// A user (yourself, or anyone for an Admin).
#[utoipa::path(get, path = "/api/user/{username}", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = User), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
) -> Result<Json<User>, ApiError> {
    self_or_admin(&caller, &username)?;
    Ok(Json(state.registry.get_user(&username, &caller.org)?))
}

/// A user's quota: limits (`null` for none) and what they use (yourself, or anyone for an Admin).
#[utoipa::path(get, path = "/api/user/{username}/quota", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = oak_api::model::QuotaStatus), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_quota(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
) -> Result<Json<oak_api::model::QuotaStatus>, ApiError> {
    self_or_admin(&caller, &username)?;
    state.blocking(move |r| Ok(Json(r.quota(&username)?))).await
}

/// Change a user's quota (Admin only); limits not named stay as they are.
#[utoipa::path(put, path = "/api/user/{username}/quota", tag = "users", security(("bearer" = [])),
    request_body = oak_api::model::QuotaUpdate,
    responses((status = 200, body = oak_api::model::QuotaStatus), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn set_quota(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
    JsonBody(up): JsonBody<oak_api::model::QuotaUpdate>,
) -> Result<Json<oak_api::model::QuotaStatus>, ApiError> {
    caller.require_admin()?;
    state.blocking(move |r| Ok(Json(r.set_quota(&username, &up)?))).await
}

/// Update a user's email, password or roles (Admin only).
#[utoipa::path(put, path = "/api/user/{username}", tag = "users", security(("bearer" = [])), request_body = UserUpdate,
    responses((status = 200, body = User), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn update_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
    JsonBody(up): JsonBody<UserUpdate>,
) -> Result<Json<User>, ApiError> {
    caller.require_admin()?;
    let h = match &up.password {
        Some(p) => {
            check_password("password", p)?;
            Some(hash(&state, p.clone()).await?)
        }
        None => None,
    };
    state.blocking(move |r| Ok(Json(r.update_user(&username, &caller.org, &up, h)?))).await
}

/// Delete a user who owns no applications (Admin only). Returns the remaining users.
#[utoipa::path(delete, path = "/api/user/{username}", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = [User]), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn delete_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
) -> Result<Json<Vec<User>>, ApiError> {
    caller.require_admin()?;
    state
        .blocking(move |r| {
            r.delete_user(&username, &caller.user.id)?;
            Ok(Json(r.list_users(&caller.org, false)?))
        })
        .await
}

/// Change your own password; every token issued before stops working.
#[utoipa::path(post, path = "/api/user/{username}", tag = "users", security(("bearer" = [])), request_body = PasswordChange,
    responses((status = 200, body = Message), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn change_password(
    State(state): State<AppState>,
    Peer(from): Peer,
    caller: Caller,
    Path(username): Path<String>,
    JsonBody(req): JsonBody<PasswordChange>,
) -> Result<Json<Message>, ApiError> {
    if !same_name(&caller.user.name, &username) {
        return Err(ApiError::forbidden(format!("user {} may only change their own password", caller.user.name)));
    }
    check_password("oldPassword", &req.oldPassword)?;
    check_password("newPassword", &req.newPassword)?;
    // A stolen token must not make this a password oracle: failures count as failed logins.
    let t = state.clock.now_unix();
    state.login_limiter.attempt(&caller.user.name, from, t).map_err(|left| {
        ApiError::too_many(format!("too many wrong passwords; try again in {left:.0} s"), left.ceil() as u64)
    })?;
    let stored = caller.user.password_hash.clone();
    let old = req.oldPassword.clone();
    let matches = match state.hasher.verify(old, stored, auth::Priority::Authenticated).await {
        Ok(m) => m,
        Err(busy) => {
            state.login_limiter.succeeded(&caller.user.name, from);
            return Err(ApiError::too_many(busy.to_string(), busy.retry_after_secs));
        }
    };
    if !matches {
        return Err(ApiError::bad_request("oldPassword does not match the current password"));
    }
    state.login_limiter.succeeded(&caller.user.name, from);
    let h = hash(&state, req.newPassword).await?;
    let id = caller.user.id.clone();
    state.blocking(move |r| Ok(r.set_password(&id, h)?)).await?;
    Ok(Json(Message::new("password changed")))
}

/// Password reset by e-mail is not offered: an Admin sets a new password with `PUT /api/user/{username}`.
#[utoipa::path(post, path = "/api/user", tag = "users", responses((status = 501, body = ErrorBody)))]
pub(super) async fn reset_password() -> ApiError {
    ApiError::new(
        ErrorCode::NotImplemented,
        "password reset by e-mail is not offered; an Admin sets a new password with PUT /api/user/{username}",
    )
}

/// All users (Admin only).
#[utoipa::path(get, path = "/api/users", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = [User]), (status = 403, body = ErrorBody)))]
pub(super) async fn list_users(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<User>>, ApiError> {
    caller.require_admin()?;
    Ok(Json(state.registry.list_users(&caller.org, false)?))
}

/// Members of an organization (Admin only).
#[utoipa::path(get, path = "/api/users/{organization_id}", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = [User]), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn list_org_users(
    State(state): State<AppState>,
    caller: Caller,
    Path(org): Path<String>,
) -> Result<Json<Vec<User>>, ApiError> {
    caller.require_admin()?;
    Ok(Json(state.registry.list_users(&OrganizationId(org), true)?))
}

/// All organizations (Admin only).
#[utoipa::path(get, path = "/api/organization", tag = "organizations", security(("bearer" = [])),
    responses((status = 200, body = [Organization]), (status = 403, body = ErrorBody)))]
pub(super) async fn list_orgs(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<Organization>>, ApiError> {
    caller.require_admin()?;
    Ok(Json(state.registry.list_orgs()?))
}

/// Create an organization (Admin only).
#[utoipa::path(post, path = "/api/organization", tag = "organizations", security(("bearer" = [])), request_body = OrganizationRequest,
    responses((status = 200, body = Organization), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn create_org(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<OrganizationRequest>,
) -> Result<Json<Organization>, ApiError> {
    caller.require_admin()?;
    state.blocking(move |r| Ok(Json(r.create_org(&req)?))).await
}

/// Rename an organization or replace its members (Admin only).
#[utoipa::path(put, path = "/api/organization/{id}", tag = "organizations", security(("bearer" = [])), request_body = OrganizationRequest,
    responses((status = 200, body = Organization), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn update_org(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<OrganizationRequest>,
) -> Result<Json<Organization>, ApiError> {
    caller.require_admin()?;
    state.blocking(move |r| Ok(Json(r.update_org(&OrganizationId(id), &req)?))).await
}

/// Delete an organization (Admin only; `root` stays).
#[utoipa::path(delete, path = "/api/organization/{id}", tag = "organizations", security(("bearer" = [])),
    responses((status = 200, body = Message), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn delete_org(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Message>, ApiError> {
    caller.require_admin()?;
    state.blocking(move |r| Ok(r.delete_org(&OrganizationId(id))?)).await?;
    Ok(Json(Message::new("Organization deleted")))
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
pub(super) struct TokenRequest {
    /// A label for the token (e.g. the site it is for).
    name: String,
    /// The token admits clusters for this many seconds (default: until revoked).
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

/// Create a join token for clusters (Admin only). The secret is shown only in this answer.
#[utoipa::path(post, path = "/api/tokens", tag = "clusters", security(("bearer" = [])), request_body = TokenRequest,
    responses((status = 200, body = crate::registry::NewJoinToken), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<TokenRequest>,
) -> Result<Json<crate::registry::NewJoinToken>, ApiError> {
    caller.require_admin()?;
    let mut t = state.blocking(move |r| Ok(r.create_join_token(&req.name, req.ttl_seconds)?)).await?;
    t.secret = state.join_token(&t.secret);
    Ok(Json(t))
}

/// List join tokens, without their secrets (Admin only).
#[utoipa::path(get, path = "/api/tokens", tag = "clusters", security(("bearer" = [])),
    responses((status = 200, body = [crate::registry::JoinToken]), (status = 403, body = ErrorBody)))]
pub(super) async fn list_tokens(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<crate::registry::JoinToken>>, ApiError> {
    caller.require_admin()?;
    Ok(Json(state.registry.list_join_tokens()?))
}

/// Revoke a join token (Admin only): no cluster can join with it any more, and the links of
/// clusters that joined with it are closed.
#[utoipa::path(delete, path = "/api/tokens/{id}", tag = "clusters", security(("bearer" = [])),
    responses((status = 200, body = crate::registry::JoinToken), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<crate::registry::JoinToken>, ApiError> {
    caller.require_admin()?;
    let tid = id.clone();
    let t = state.blocking(move |r| Ok(r.revoke_join_token(&tid)?)).await?;
    state.hub.close_token(&id);
    Ok(Json(t))
}
