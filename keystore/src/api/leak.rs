//! The leak response: given a raw key (a secret-scanning report), find its owner and state,
//! or revoke it. The value travels in the body only (never in a URL), answers are never
//! cached, and both calls are audited.
//!
//! Who may call: root (any key) and account admins (their account's keys only: any other key
//! answers exactly like an unknown one, 404, so the call is no oracle). Members: 403.

use super::auth::Caller;
use super::body::parse_body;
use super::doc::LeakErrors;
use super::keys::with_key;
use super::AppState;
use crate::authority::Operation;
use crate::error::ApiError;
use crate::keys::{key_id, log_prefix};
use crate::store::KeyState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::ToSchema;

/// A leaked key's value.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct LeakedKey {
    /// The raw key, as found.
    user_key: String,
}

/// Finds (or revokes) the key, answering its state or 404 (never cached either way).
async fn answer(
    st: &AppState,
    caller: Caller,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    revoke: bool,
) -> Result<Response, ApiError> {
    // Root, or an account admin within its own account (the scope below).
    let own = caller.identity.account_id.clone();
    caller.require(Operation::AccountAdmin, &own, None)?;
    let req: LeakedKey = parse_body(headers, body)?;
    if req.user_key.trim().is_empty() {
        return Err(ApiError::BadRequest("user_key must not be empty".into()));
    }
    let id = key_id(&req.user_key);
    let scope = (!caller.is_root()).then(|| caller.identity.account_id.clone());
    let found = st
        .store
        .find_key(caller.actor(), id.clone(), scope, revoke)
        .await?;
    match found {
        Some(state) => {
            tracing::info!(account = %state.account_id, user = %state.user_id,
                key = log_prefix(&id), revoke, state = %state.state, "leak report answered");
            Ok(with_key(StatusCode::OK, state))
        }
        None => {
            let mut res = ApiError::NotFound(crate::error::Kind::KeyNotFound, "no such key".into())
                .into_response();
            res.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(res)
        }
    }
}

/// Find a key by its value
///
/// For a leaked key (a secret-scanning report): its owner, key reference, name and state,
/// given its value in the body (never in a URL). Audited; never cached. Root (any key) and
/// account admins (their account's keys; any other key answers 404 like an unknown one).
#[utoipa::path(post, path = keygate_protocol::routes::admin::KEYS_FIND, tag = "admin",
    request_body = LeakedKey, security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = KeyState), LeakErrors))]
pub(super) async fn find_key_by_value(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    answer(&st, caller, &headers, body, false).await
}

/// Revoke a key by its value
///
/// Revokes a leaked key given its value; answers as `find` does, with the state after
/// (`revoked`). Audited; never cached. Root and account admins (their account's keys).
#[utoipa::path(post, path = keygate_protocol::routes::admin::KEYS_REVOKE, tag = "admin",
    request_body = LeakedKey, security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = KeyState), LeakErrors))]
pub(super) async fn revoke_key_by_value(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    answer(&st, caller, &headers, body, true).await
}
