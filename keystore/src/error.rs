//! Error responses as RFC 9457 problem details.
//!
//! Invariant: every 4xx and 5xx the keystore sends is `application/problem+json` with `type`
//! (one stable URI per [`Kind`], `https://keygate.dev/problems/<kind>`), `title` (fixed per
//! kind), `status` and `detail` (for people: never a key, never an internal error's text),
//! plus the extensions of the kind: `missing_capability` or `required_role` on a 403,
//! `retry_after` (seconds) on a 429. Every 401 carries `WWW-Authenticate`. Handlers answer
//! with [`ApiError`]; axum's own rejections (unknown route, 405, body limit) are rewritten
//! into the same shape by the router's error middleware with [`problem`].

use crate::authority::{Need, Refusal};
use crate::store::StoreError;
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

/// Body limit for admin requests.
pub const BODY_LIMIT: usize = 16 * 1024;

/// The media type of every error response (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Where the problem type URIs live: `type` is this followed by [`Kind::slug`]. An absolute
/// URI, as RFC 9457 recommends; clients compare it as a string (RFC 9457 §3.1.1: consumers
/// should not dereference it). keystore/README.md documents each kind.
pub const PROBLEM_BASE: &str = "https://keygate.dev/problems/";

/// The `WWW-Authenticate` challenge of every 401: a key as a Bearer token (the admin API also
/// takes it in `x-api-key`; the protocol endpoints take their token as Bearer only).
pub const CHALLENGE: &str = "Bearer realm=\"keygate\"";

/// A kind of error: one stable `type` URI, one title, one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    InvalidRequest,
    MalformedBody,
    UnsupportedMediaType,
    Unauthorized,
    Forbidden,
    NoSuchRoute,
    AccountNotFound,
    UserNotFound,
    KeyNotFound,
    MethodNotAllowed,
    AlreadyExists,
    TooManyKeys,
    PayloadTooLarge,
    RateLimited,
    Internal,
    Unavailable,
}

impl Kind {
    /// Every kind, for the documentation and its test.
    pub const ALL: [Kind; 16] = [
        Kind::InvalidRequest,
        Kind::MalformedBody,
        Kind::UnsupportedMediaType,
        Kind::Unauthorized,
        Kind::Forbidden,
        Kind::NoSuchRoute,
        Kind::AccountNotFound,
        Kind::UserNotFound,
        Kind::KeyNotFound,
        Kind::MethodNotAllowed,
        Kind::AlreadyExists,
        Kind::TooManyKeys,
        Kind::PayloadTooLarge,
        Kind::RateLimited,
        Kind::Internal,
        Kind::Unavailable,
    ];

    /// The last segment of the `type` URI.
    pub fn slug(self) -> &'static str {
        match self {
            Kind::InvalidRequest => "invalid-request",
            Kind::MalformedBody => "malformed-body",
            Kind::UnsupportedMediaType => "unsupported-media-type",
            Kind::Unauthorized => "unauthorized",
            Kind::Forbidden => "forbidden",
            Kind::NoSuchRoute => "no-such-route",
            Kind::AccountNotFound => "account-not-found",
            Kind::UserNotFound => "user-not-found",
            Kind::KeyNotFound => "key-not-found",
            Kind::MethodNotAllowed => "method-not-allowed",
            Kind::AlreadyExists => "already-exists",
            Kind::TooManyKeys => "too-many-keys",
            Kind::PayloadTooLarge => "payload-too-large",
            Kind::RateLimited => "rate-limited",
            Kind::Internal => "internal-error",
            Kind::Unavailable => "unavailable",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Kind::InvalidRequest => "Invalid request",
            Kind::MalformedBody => "Malformed request body",
            Kind::UnsupportedMediaType => "Unsupported media type",
            Kind::Unauthorized => "Unauthorized",
            Kind::Forbidden => "Forbidden",
            Kind::NoSuchRoute => "No such route",
            Kind::AccountNotFound => "Account not found",
            Kind::UserNotFound => "User not found",
            Kind::KeyNotFound => "Key not found",
            Kind::MethodNotAllowed => "Method not allowed",
            Kind::AlreadyExists => "Already exists",
            Kind::TooManyKeys => "Too many keys",
            Kind::PayloadTooLarge => "Payload too large",
            Kind::RateLimited => "Too many requests",
            Kind::Internal => "Internal error",
            Kind::Unavailable => "Database unavailable",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Kind::InvalidRequest | Kind::MalformedBody => StatusCode::BAD_REQUEST,
            Kind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::NoSuchRoute | Kind::AccountNotFound | Kind::UserNotFound | Kind::KeyNotFound => {
                StatusCode::NOT_FOUND
            }
            Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Kind::AlreadyExists | Kind::TooManyKeys => StatusCode::CONFLICT,
            Kind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `type` URI.
    pub fn uri(self) -> String {
        format!("{PROBLEM_BASE}{}", self.slug())
    }

    /// What a kind means, for keystore/README.md's table.
    pub fn meaning(self) -> &'static str {
        match self {
            Kind::InvalidRequest => "a path id, query parameter or field value is invalid",
            Kind::MalformedBody => "the body is not a JSON object of the expected fields",
            Kind::UnsupportedMediaType => "a body was sent with a content type other than JSON",
            Kind::Unauthorized => "no key, or an unknown, revoked, disabled or expired one",
            Kind::Forbidden => "the key lacks `missing_capability` or `required_role`",
            Kind::NoSuchRoute => "no endpoint has this path",
            Kind::AccountNotFound => "no such account",
            Kind::UserNotFound => "no such user in the account",
            Kind::KeyNotFound => "no such (active) key",
            Kind::MethodNotAllowed => "the path exists, not with this method (see `Allow`)",
            Kind::AlreadyExists => "the account, user or key value exists (or existed)",
            Kind::TooManyKeys => "the user holds the most live keys allowed",
            Kind::PayloadTooLarge => "the body (or a usage report) is over its limit",
            Kind::RateLimited => "too many new keys for this user; retry after `retry_after` s",
            Kind::Internal => "a bug or database error (details in the keystore's log)",
            Kind::Unavailable => "the database cannot be reached",
        }
    }

    /// The kind of an error status axum or a layer produced without saying more.
    pub fn of_status(status: StatusCode) -> Kind {
        match status.as_u16() {
            401 => Kind::Unauthorized,
            403 => Kind::Forbidden,
            404 => Kind::NoSuchRoute,
            405 => Kind::MethodNotAllowed,
            413 => Kind::PayloadTooLarge,
            415 => Kind::UnsupportedMediaType,
            429 => Kind::RateLimited,
            503 => Kind::Unavailable,
            s if s >= 500 => Kind::Internal,
            _ => Kind::InvalidRequest,
        }
    }
}

/// An error a handler answers.
#[derive(Debug)]
pub enum ApiError {
    /// A bad path id, query parameter or field value.
    BadRequest(String),
    /// A body that is not a JSON object of the expected fields.
    MalformedBody(String),
    UnsupportedMediaType(String),
    Unauthorized,
    Forbidden(String, Need),
    /// A 404 of the given kind.
    NotFound(Kind, String),
    /// A 409 of the given kind.
    Conflict(Kind, String),
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
    pub fn kind(&self) -> Kind {
        match self {
            ApiError::BadRequest(_) => Kind::InvalidRequest,
            ApiError::MalformedBody(_) => Kind::MalformedBody,
            ApiError::UnsupportedMediaType(_) => Kind::UnsupportedMediaType,
            ApiError::Unauthorized => Kind::Unauthorized,
            ApiError::Forbidden(..) => Kind::Forbidden,
            ApiError::NotFound(k, _) | ApiError::Conflict(k, _) => *k,
            ApiError::PayloadTooLarge | ApiError::TooLarge(_) => Kind::PayloadTooLarge,
            ApiError::TooManyRequests { .. } => Kind::RateLimited,
            ApiError::Unavailable(_) => Kind::Unavailable,
            ApiError::Internal(_) => Kind::Internal,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.kind().status()
    }

    fn public_message(&self) -> String {
        match self {
            ApiError::BadRequest(m)
            | ApiError::MalformedBody(m)
            | ApiError::UnsupportedMediaType(m)
            | ApiError::Forbidden(m, _)
            | ApiError::NotFound(_, m)
            | ApiError::Conflict(_, m)
            | ApiError::TooLarge(m)
            | ApiError::TooManyRequests { message: m, .. } => m.clone(),
            ApiError::Unauthorized => {
                "unauthorized: a valid key is required (x-api-key or Authorization: Bearer)".into()
            }
            ApiError::PayloadTooLarge => {
                format!("request body too large (at most {BODY_LIMIT} bytes)")
            }
            ApiError::Unavailable(_) => "database unavailable".into(),
            ApiError::Internal(_) => "internal error".into(),
        }
    }

    /// The kind's extension members.
    fn extensions(&self) -> Map<String, Value> {
        let mut ext = Map::new();
        match self {
            ApiError::Forbidden(_, Need::Capability(cap)) => {
                ext.insert("missing_capability".into(), cap.name().into());
            }
            ApiError::Forbidden(_, Need::Role(role)) => {
                ext.insert("required_role".into(), (*role).into());
            }
            ApiError::TooManyRequests { retry_after, .. } => {
                ext.insert("retry_after".into(), (*retry_after).into());
            }
            _ => {}
        }
        ext
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::AccountNotFound(_) => {
                ApiError::NotFound(Kind::AccountNotFound, e.to_string())
            }
            StoreError::UserNotFound { .. } => {
                ApiError::NotFound(Kind::UserNotFound, e.to_string())
            }
            StoreError::KeyNotFound { .. } => ApiError::NotFound(Kind::KeyNotFound, e.to_string()),
            StoreError::AccountExists(_)
            | StoreError::UserExists { .. }
            | StoreError::KeyExists => ApiError::Conflict(Kind::AlreadyExists, e.to_string()),
            StoreError::TooManyKeys { .. } => ApiError::Conflict(Kind::TooManyKeys, e.to_string()),
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
            Refusal::Forbidden(m, need) => ApiError::Forbidden(m, need),
            Refusal::Invalid(m) => ApiError::BadRequest(m),
        }
    }
}

/// A problem details response of `kind` with `detail` and extension members `ext`
/// (a 401 gets its challenge).
pub fn problem(kind: Kind, detail: &str, ext: Map<String, Value>) -> Response {
    let mut body = Map::new();
    body.insert("type".into(), kind.uri().into());
    body.insert("title".into(), kind.title().into());
    body.insert("status".into(), kind.status().as_u16().into());
    body.insert("detail".into(), detail.into());
    body.extend(ext);
    let text = Value::Object(body).to_string();
    let mut res = (
        kind.status(),
        [(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))],
        text,
    )
        .into_response();
    if kind == Kind::Unauthorized {
        res.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
    }
    res
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let detail = match &self {
            ApiError::Internal(m) | ApiError::Unavailable(m) => m.clone(),
            other => other.public_message(),
        };
        let mut res = problem(self.kind(), &self.public_message(), self.extensions());
        if let ApiError::TooManyRequests { retry_after, .. } = &self {
            if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
                res.headers_mut().insert(RETRY_AFTER, v);
            }
        }
        res.extensions_mut().insert(ErrorDetail(detail));
        res
    }
}
