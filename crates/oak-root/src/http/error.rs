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
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), violations: Vec::new() }
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
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
    pub fn invalid(violations: Vec<Violation>) -> Self {
        let message = violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        Self { code: ErrorCode::InvalidField, message, violations }
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
        Self { code: e.code, message: e.message, violations: e.violations }
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
        (status, Json(body)).into_response()
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
