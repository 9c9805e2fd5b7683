//! The one mapping from domain errors to HTTP status and stable code.

use crate::registry::RegistryError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use oak_api::sla::Violation;
use oak_api::{ErrorBody, ErrorCode};

/// An error response: `{"code", "message", "violations"?}` with the code's status.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub violations: Vec<Violation>,
    /// For 429 and 503: when to come back (the `Retry-After` header, in seconds).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), violations: Vec::new(), retry_after: None }
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    /// 429 with `Retry-After`.
    pub fn too_many(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self { retry_after: Some(retry_after_secs), ..Self::new(ErrorCode::TooManyRequests, message) }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
    pub fn invalid(violations: Vec<Violation>) -> Self {
        let message = violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        Self { code: ErrorCode::InvalidField, message, violations, retry_after: None }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound { .. } => ApiError::new(ErrorCode::NotFound, e.to_string()),
            RegistryError::Conflict(m) => ApiError::new(ErrorCode::Conflict, m),
            RegistryError::Invalid(v) => ApiError::invalid(v),
            RegistryError::BadRequest(m) => ApiError::bad_request(m),
            RegistryError::Forbidden(m) => ApiError::forbidden(m),
            RegistryError::QuotaExceeded(m) => ApiError::new(ErrorCode::QuotaExceeded, m),
            RegistryError::Unauthenticated(m) => ApiError::unauthenticated(m),
            RegistryError::Store(s) => {
                tracing::error!(error = %s, "store failure");
                ApiError::new(ErrorCode::Unavailable, format!("state store unavailable: {s}"))
            }
            RegistryError::Corrupt { .. } => {
                tracing::error!(error = %e, "corrupt record");
                ApiError::internal(e.to_string())
            }
        }
    }
}

impl From<ErrorBody> for ApiError {
    fn from(e: ErrorBody) -> Self {
        Self { code: e.code, message: e.message, violations: e.violations, retry_after: None }
    }
}

impl From<oak_api::sla::SlaError> for ApiError {
    fn from(e: oak_api::sla::SlaError) -> Self {
        ApiError::invalid(e.violations)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody { code: self.code, message: self.message, violations: self.violations };
        let mut r = (status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(secs.max(1)));
        }
        r
    }
}

pub(crate) async fn not_found_fallback(uri: axum::http::Uri) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no endpoint at {}", uri.path()))
}

pub(crate) async fn method_not_allowed_fallback(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(ErrorCode::MethodNotAllowed, format!("{method} is not allowed on {}", uri.path()))
}

pub(crate) fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::internal("internal error").into_response()
}
