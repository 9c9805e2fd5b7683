//! The one error shape of the REST API, and its stable codes. Clients branch on `code`,
//! never on `message`.

use serde::{Deserialize, Serialize};

/// Stable, machine-readable error codes. Each one always comes with the same HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the body is not JSON, or not the JSON object this endpoint takes.
    MalformedJson,
    /// 400: a request that is well-formed but makes no sense here.
    BadRequest,
    /// 401: no token, a bad or expired token, or wrong credentials.
    Unauthenticated,
    /// 403: authenticated, but the role does not allow it.
    Forbidden,
    /// 403: the request would take the user over a quota; `message` names it.
    QuotaExceeded,
    /// 404: no such object, or it belongs to someone else.
    NotFound,
    /// 405: the path exists, the method does not.
    MethodNotAllowed,
    /// 409: a name, namespace or address is already taken.
    Conflict,
    /// 413: the body is larger than the server accepts.
    PayloadTooLarge,
    /// 415: the body is not `application/json`.
    UnsupportedMediaType,
    /// 422: the SLA or a field in the body is invalid; `message` names the field.
    InvalidField,
    /// 429: too many attempts.
    TooManyRequests,
    /// 500: a bug or a storage failure; the request changed nothing.
    Internal,
    /// 501: not offered by this server.
    NotImplemented,
    /// 503: a dependency (the store) is unavailable.
    Unavailable,
}

impl ErrorCode {
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::MalformedJson | ErrorCode::BadRequest => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden | ErrorCode::QuotaExceeded => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::InvalidField => 422,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::Internal => 500,
            ErrorCode::NotImplemented => 501,
            ErrorCode::Unavailable => 503,
        }
    }
}

/// `{"code": "...", "message": "...", "violations": [...]}`: the body of every error response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// For `invalid_field`: every problem found, each naming its field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<crate::sla::Violation>,
}
