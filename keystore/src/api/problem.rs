//! Error glue: every error answer is an RFC 9457 problem details object, with one log line.
//!
//! Invariant: whatever answers an error (a handler, an extractor's rejection, axum's own 404,
//! 405 or 413), the client gets `application/problem+json` of the status's kind, and the log
//! names the route template, never the raw path.

use crate::error::{problem, ApiError, ErrorDetail, Kind, BODY_LIMIT, PROBLEM_JSON};
use axum::extract::{MatchedPath, Request};
use axum::http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;

pub(super) async fn no_route() -> ApiError {
    ApiError::NotFound(
        Kind::NoSuchRoute,
        "no such endpoint (the routes are listed in /openapi.json)".into(),
    )
}

/// Makes every error response a problem details object (axum's own rejections, 405s and
/// body-limit errors are plain text or empty: rewritten by [`as_problem`]) and logs one line
/// per error response. Logs name the route template, never the raw path, so no key id or key
/// material gets into them.
pub(super) async fn problem_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "(no route)".to_owned());
    let res = next.run(req).await;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_problem = res
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROBLEM_JSON));
    let (res, message) = if is_problem {
        let message = res
            .extensions()
            .get::<ErrorDetail>()
            .map(|d| d.0.clone())
            .unwrap_or_default();
        (res, message)
    } else {
        as_problem(&method, res).await
    };
    if status.is_server_error() {
        tracing::error!(%method, %route, status = status.as_u16(), "request failed: {message}");
    } else if !(status == StatusCode::NOT_FOUND
        && route == keygate_protocol::routes::LOOKUP_PATTERN)
    {
        // An unknown key is an ordinary answer of the lookup endpoint, not an error.
        tracing::info!(%method, %route, status = status.as_u16(), "request rejected: {message}");
    }
    res
}

/// An error response that is not a problem (axum's rejections: plain text or empty) as one of
/// the kind of its status, keeping its headers (such as `Allow` on a 405); and its detail.
async fn as_problem(method: &axum::http::Method, res: Response) -> (Response, String) {
    let status = res.status();
    let (parts, body) = res.into_parts();
    let bytes = axum::body::to_bytes(body, BODY_LIMIT)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_owned();
    let kind = Kind::of_status(status);
    let detail = match kind {
        Kind::MethodNotAllowed => {
            let allow = parts
                .headers
                .get(ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if allow.is_empty() {
                format!("method {method} is not allowed on this route")
            } else {
                format!("method {method} is not allowed on this route (allowed: {allow})")
            }
        }
        Kind::PayloadTooLarge => format!("request body too large (at most {BODY_LIMIT} bytes)"),
        _ if text.is_empty() => status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase(),
        _ => text,
    };
    let mut new = problem(kind, &detail, serde_json::Map::new());
    for (name, value) in &parts.headers {
        if name != CONTENT_TYPE && name != CONTENT_LENGTH {
            new.headers_mut().insert(name.clone(), value.clone());
        }
    }
    (new, detail)
}
