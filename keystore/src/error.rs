//! JSON error responses.

use crate::authority::Refusal;
use crate::store::StoreError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// Body limit for admin requests.
pub const BODY_LIMIT: usize = 16 * 1024;

/// An error answered as `{"error": "..."}` with the matching status.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized,
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    PayloadTooLarge,
    /// 413 with its own message (a limit other than the body size).
    TooLarge(String),
    /// 429 with `retry-after` (seconds).
    TooManyRequests {
        message: String,
        retry_after: i64,
    },
    /// The database cannot be reached (the detail is logged, never sent).
    Unavailable(String),
    Internal(String),
}

/// The message of an error response, kept in the response's extensions so the logging
/// middleware can log it (internal details are logged but never sent).
#[derive(Debug, Clone)]
pub struct ErrorDetail(pub String);

impl ApiError {
    pub fn forbidden() -> ApiError {
        ApiError::Forbidden("forbidden".into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge | ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn public_message(&self) -> String {
        match self {
            ApiError::BadRequest(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::TooLarge(m)
            | ApiError::TooManyRequests { message: m, .. } => m.clone(),
            ApiError::Unauthorized => "unauthorized".into(),
            ApiError::PayloadTooLarge => {
                format!("request body too large (at most {BODY_LIMIT} bytes)")
            }
            ApiError::Unavailable(_) => "database unavailable".into(),
            ApiError::Internal(_) => "internal error".into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::AccountNotFound(_)
            | StoreError::UserNotFound { .. }
            | StoreError::KeyNotFound { .. } => ApiError::NotFound(e.to_string()),
            StoreError::AccountExists(_)
            | StoreError::UserExists { .. }
            | StoreError::KeyExists
            | StoreError::TooManyKeys { .. } => ApiError::Conflict(e.to_string()),
            StoreError::Unavailable(_) => ApiError::Unavailable(e.to_string()),
            StoreError::TooManyCreations { retry_after, .. } => ApiError::TooManyRequests {
                message: e.to_string(),
                retry_after,
            },
            StoreError::Refused(r) => ApiError::from(r),
            StoreError::Db(_) | StoreError::Postgres(_) | StoreError::Internal(_) => {
                ApiError::Internal(e.to_string())
            }
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        match r {
            Refusal::Forbidden(m) => ApiError::Forbidden(m),
            Refusal::Invalid(m) => ApiError::BadRequest(m),
        }
    }
}

/// A JSON error response with `status` and `message`.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let detail = match &self {
            ApiError::Internal(m) | ApiError::Unavailable(m) => m.clone(),
            other => other.public_message(),
        };
        let mut res = json_error(self.status(), &self.public_message());
        if let ApiError::TooManyRequests { retry_after, .. } = &self {
            if let Ok(v) = axum::http::HeaderValue::from_str(&retry_after.to_string()) {
                res.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
            }
        }
        res.extensions_mut().insert(ErrorDetail(detail));
        res
    }
}
