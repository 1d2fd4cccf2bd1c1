//! What a request carries: its JSON body (parsed after authentication and authorisation)
//! and the ids and fields in it and in its path.
//!
//! Invariant: a body is one JSON object of a JSON content type with only the documented
//! fields (`deny_unknown_fields`); anything else, and any id or field out of its bounds, is
//! a 4xx problem naming the field, before anything is changed.

use crate::authority::Caps;
use crate::error::ApiError;
use crate::keys::validate_id;
use crate::store::{parse_rfc3339, validate_claims, Claims, KEY_REF_LEN};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// Longest grace period of a rotation: 7 days.
pub const MAX_GRACE_S: i64 = 7 * 24 * 3600;

/// Parses a JSON request body (checked after authentication and authorisation).
pub(super) fn parse_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::MalformedBody(format!(
                "could not read the request body: {}",
                e.body_text()
            ))
        }
    })?;
    if let Some(ct) = headers.get(CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default();
        let essence = ct.split(';').next().unwrap_or_default().trim();
        let is_json = essence.eq_ignore_ascii_case("application/json")
            || essence.to_ascii_lowercase().ends_with("+json");
        if !is_json {
            return Err(ApiError::UnsupportedMediaType(format!(
                "content-type must be application/json, not {ct:?}"
            )));
        }
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::MalformedBody(
            "request body is empty; expected a JSON object".into(),
        ));
    }
    // serde would also build a struct from a JSON array (its fields in order): refuse that.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::MalformedBody(
            "invalid JSON body: expected a JSON object".into(),
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::MalformedBody(format!("invalid JSON body: {e}")))
}

/// Like [`parse_body`], but an empty body (no bytes, or only whitespace) is `T::default()`.
pub(super) fn parse_optional_body<T: DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    match body {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(T::default()),
        other => parse_body(headers, other),
    }
}

/// An optional field that, when present, must hold a value (`null` is refused).
pub(super) fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// `Some(None)` for an explicit `null`, `Some(Some(v))` for a value; absent stays `None`.
pub(super) fn double_option<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

pub(super) fn check_id(what: &str, value: &str) -> Result<(), ApiError> {
    validate_id(what, value).map_err(ApiError::BadRequest)
}

/// A `capabilities` field: known names, not empty.
pub(super) fn check_caps(caps: Option<&[String]>) -> Result<Option<Caps>, ApiError> {
    caps.map(Caps::parse)
        .transpose()
        .map_err(ApiError::BadRequest)
}

/// Unix seconds now.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// An `expires_at` field: RFC 3339, in the future.
pub(super) fn future_time(text: &str) -> Result<i64, ApiError> {
    let at = parse_rfc3339("expires_at", text).map_err(ApiError::BadRequest)?;
    if at <= now() {
        return Err(ApiError::BadRequest(format!(
            "expires_at is not in the future ({text}); to end a key now, revoke it"
        )));
    }
    Ok(at)
}

/// A `grace_s` field: 0 (the default) to [`MAX_GRACE_S`].
pub(super) fn check_grace(grace_s: Option<i64>) -> Result<i64, ApiError> {
    match grace_s.unwrap_or(0) {
        g @ 0..=MAX_GRACE_S => Ok(g),
        g => Err(ApiError::BadRequest(format!(
            "grace_s must be 0 to {MAX_GRACE_S} seconds (7 days), not {g}"
        ))),
    }
}

pub(super) fn check_claims(claims: &Claims) -> Result<(), ApiError> {
    validate_claims(claims).map_err(ApiError::BadRequest)
}

/// A key reference in a path: [`KEY_REF_LEN`] lowercase hex characters.
pub(super) fn check_key_ref(key: &str) -> Result<(), ApiError> {
    let ok = key.len() == KEY_REF_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "key must be a key reference: the {KEY_REF_LEN} lowercase hex characters listed as \"key\""
        )))
    }
}
