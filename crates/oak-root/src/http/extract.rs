//! Request extractors: JSON bodies with our error shape, and the authenticated caller.

use super::{ApiError, AppState};
use crate::auth::TokenKind;
use crate::registry::UserRecord;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use oak_api::ErrorCode;
use oak_api::OrganizationId;
use oak_api::model::ADMIN_ROLE;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A JSON body. Unparseable JSON is a 400 `malformed_json`; JSON of the wrong shape is a 422
/// `invalid_field` that names the field; a body over the limit is a 413.
pub struct JsonBody<T>(pub T);

/// Reads the raw body as JSON.
pub(crate) async fn json_value<S: Send + Sync>(req: Request, state: &S) -> Result<Value, ApiError> {
    let bytes = Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(ErrorCode::PayloadTooLarge, "request body is too large")
        } else {
            ApiError::bad_request(format!("cannot read request body: {e}"))
        }
    })?;
    if bytes.is_empty() {
        return Err(ApiError::new(ErrorCode::MalformedJson, "request body is empty; expected JSON"));
    }
    oak_api::json::value_strict(&bytes).map_err(ApiError::from)
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let value = json_value(req, state).await?;
        // Every body of this kind is one object: serde would read an array as the fields in
        // order (`[null, "pw"]` as a password change), which no client means.
        if !value.is_object() {
            return Err(ApiError::invalid(vec![oak_api::sla::Violation {
                field: "body".into(),
                message: "must be a JSON object".into(),
            }]));
        }
        oak_api::json::from_value_named(value).map(JsonBody).map_err(ApiError::from)
    }
}

/// A raw JSON body (the SLA endpoints validate it themselves, field by field).
pub struct JsonValue(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonValue {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        json_value(req, state).await.map(JsonValue)
    }
}

/// The authenticated user of a request, with roles read fresh from the store.
pub struct Caller {
    pub user: UserRecord,
    pub org: OrganizationId,
    pub roles: Vec<String>,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == ADMIN_ROLE)
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("user {} needs the Admin role for this", self.user.name)))
        }
    }
}

pub(crate) fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthenticated("missing Authorization: Bearer <token> header"))?;
    let value = header.to_str().map_err(|_| ApiError::unauthenticated("Authorization header is not text"))?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthenticated("Authorization header must be \"Bearer <token>\""))
}

/// Verifies a token of `kind` and loads its user; refuses tokens older than the user's
/// current credential generation.
pub(crate) fn authenticate(state: &AppState, token: &str, kind: TokenKind) -> Result<Caller, ApiError> {
    let claims = state.tokens.verify(token, kind).map_err(|e| ApiError::unauthenticated(e.to_string()))?;
    let user = state
        .registry
        .user(&claims.sub)?
        .ok_or_else(|| ApiError::unauthenticated("the token's user no longer exists"))?;
    if user.generation != claims.generation {
        return Err(ApiError::unauthenticated("the token was revoked by a password change; log in again"));
    }
    let roles = state.registry.roles(&user.id, &claims.organization)?;
    Ok(Caller { user, org: claims.organization, roles })
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        authenticate(state, bearer(parts)?, TokenKind::Access)
    }
}

/// A path parameter, with rejections in the API's error shape (a segment that is not UTF-8,
/// or not what the route takes, is a 400 that says so).
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(|e| ApiError::bad_request(format!("bad path {}: {}", parts.uri.path(), e.body_text())))
    }
}

/// A query string, with rejections in the API's error shape: a 422 naming the parameter.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.as_bytes()));
        serde_path_to_error::deserialize(de).map(Query).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." { "query".to_owned() } else { field };
            let message = e.into_inner().to_string();
            ApiError::invalid(vec![oak_api::sla::Violation { field, message }])
        })
    }
}

/// The address a request came from (as the connection saw it), or `0.0.0.0` when the server
/// runs without connection info (unit tests of the router).
pub struct Peer(pub std::net::IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        Ok(Peer(ip))
    }
}
