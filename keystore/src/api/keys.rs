//! Admin routes of a user's keys (`/api/v1/admin/accounts/{account}/users/{user}/keys...`):
//! list, get, create, change, revoke and rotate one key; and the issuing of a new key that
//! accounts and users share.
//!
//! Who may call what is [`crate::authority`]'s (checked before the body is read):
//! - list, get, create, revoke and rotate a user's keys: root, keys with `account_admin` in
//!   the account, the user's own keys with `own_keys`; importing a key value: not `own_keys`;
//! - change a key (`PATCH`): root and `account_admin`;
//! - claims (of a key at creation or in a `PATCH`): root only, because claims carry
//!   entitlements such as a plan.
//!
//! Invariant: a key's value is shown once, in the answer that made it (never cached:
//! `cache-control: no-store`); every other answer names a key by its key reference.

use super::auth::{check_import, check_not_system, Caller};
use super::body::{
    check_caps, check_claims, check_grace, check_id, check_key_ref, double_option, future_time,
    parse_body, parse_optional_body, present,
};
use super::doc::{ChangeErrors, CreateErrors, ReadErrors};
use super::paging::{Bounds, ListQuery};
use super::users::Revoked;
use super::AppState;
use crate::authority::Operation;
use crate::error::{ApiError, Kind};
use crate::keys::{generate_key, key_id, log_prefix, validate_imported_key};
use crate::store::{rfc3339, Claims, KeyInfo, KeyPatch, KeySpec, Target};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A key for a create or rotate call: the administrator's `user_key` when one was provided
/// (validated), otherwise a freshly minted one, named `name`, expiring at `expires_at` (RFC
/// 3339, in the future). Returns the raw key, what to store and whether it was imported.
/// The key holds what the call asks (`capabilities`, `expires_at`): the store's job grants
/// what [`crate::authority::derive`] allows.
pub(super) fn issue_key(
    provided: Option<String>,
    name: &str,
    expires_at: Option<&str>,
    capabilities: Option<&[String]>,
) -> Result<(String, KeySpec, bool), ApiError> {
    let expires_at = expires_at.map(future_time).transpose()?;
    let capabilities = check_caps(capabilities)?;
    let (raw, id, imported) = issue_raw_key(provided)?;
    let mut spec = KeySpec::named(id, name);
    spec.hint = Some(crate::store::hint(&raw));
    spec.expires_at = expires_at;
    spec.capabilities = capabilities;
    Ok((raw, spec, imported))
}

/// The raw key (imported or minted), its key id and whether it was imported.
fn issue_raw_key(provided: Option<String>) -> Result<(String, String, bool), ApiError> {
    let (raw, imported) = match provided {
        Some(raw) => {
            validate_imported_key(&raw).map_err(ApiError::BadRequest)?;
            (raw, true)
        }
        None => {
            let raw = generate_key().map_err(|e| {
                ApiError::Internal(format!("OS random number generator failed: {e}"))
            })?;
            (raw, false)
        }
    };
    let id = key_id(&raw);
    Ok((raw, id, imported))
}

/// A response carrying a new key: never cached.
pub(super) fn with_key<T: Serialize>(status: StatusCode, body: T) -> Response {
    (
        status,
        [(CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(body),
    )
        .into_response()
}

/// Checks the path's ids and that the caller may perform `op` on the user.
fn key_caller(caller: &Caller, account: &str, user: &str, op: Operation) -> Result<(), ApiError> {
    check_id("account", account)?;
    check_id("user", user)?;
    caller.require(op, account, Some(user))
}

/// List a user's keys
///
/// The unrevoked keys of a user (expired ones and those in a rotation's grace included),
/// oldest first, a page at a time; never a key's value. Root, the account's administrators,
/// and the user's own keys with `own_keys`.
#[utoipa::path(get, path = keygate_protocol::routes::admin::KEYS, tag = "admin",
    params(("account" = String, Path, description = "Account id"), ("user" = String, Path, description = "User id"), ListQuery), security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = KeyList), ReadErrors))]
pub(super) async fn list_keys(
    State(st): State<AppState>,
    Path((account, user)): Path<(String, String)>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<KeyList>, ApiError> {
    key_caller(&caller, &account, &user, Operation::UserKeys)?;
    let bounds = Bounds::of(query)?;
    let keys = st.store.list_keys(account.clone(), user.clone()).await?;
    let (keys, next_cursor) = bounds.page_keys(keys)?;
    Ok(Json(KeyList {
        account_id: account,
        user_id: user,
        keys,
        next_cursor,
    }))
}

/// Get a key
///
/// One unrevoked key of a user (expired ones included) by its key reference: what the key
/// list shows of it. Root, the account's administrators, and the user's own keys with
/// `own_keys`.
#[utoipa::path(get, path = keygate_protocol::routes::admin::KEY, tag = "admin",
    params(("account" = String, Path, description = "Account id"), ("user" = String, Path, description = "User id"),
        ("key" = String, Path, description = "Key reference: the first 16 hex characters of the key id, as listed")),
    security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = KeyInfo), ReadErrors))]
pub(super) async fn get_key(
    State(st): State<AppState>,
    Path((account, user, key_ref)): Path<(String, String, String)>,
    caller: Caller,
) -> Result<Json<KeyInfo>, ApiError> {
    check_id("account", &account)?;
    check_id("user", &user)?;
    caller.require(Operation::UserKeys, &account, Some(&user))?;
    check_key_ref(&key_ref)?;
    let keys = st.store.list_keys(account.clone(), user.clone()).await?;
    let mut found = keys.into_iter().filter(|k| k.key_ref == key_ref);
    match (found.next(), found.next()) {
        (Some(info), None) => Ok(Json(info)),
        (Some(_), Some(_)) => Err(ApiError::BadRequest(format!(
            "two keys of user {user} share the key reference {key_ref}: revoke one by value"
        ))),
        (None, _) => Err(ApiError::NotFound(
            Kind::KeyNotFound,
            format!("key {key_ref} not found for user {user} in account {account}"),
        )),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateKey {
    name: String,
    /// RFC 3339; at most the calling key's and the user's expiry (the default).
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<String>,
    /// A key value to import (root and account admins only).
    #[serde(default)]
    user_key: Option<String>,
    /// Root only.
    #[serde(default)]
    #[schema(value_type = Option<crate::store::ClaimsDoc>)]
    claims: Option<Claims>,
    /// `traffic`, `own_keys`, `account_admin` (default: all the role and the calling key
    /// allow); never more than the calling key has.
    #[serde(default)]
    #[schema(value_type = Option<Vec<crate::api::CapabilityName>>)]
    capabilities: Option<Vec<String>>,
}

/// A key with its raw value: the answer of a create or rotate call, shown once.
#[derive(Serialize, ToSchema)]
pub(super) struct NewKey {
    #[serde(flatten)]
    info: KeyInfo,
    user_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    replaces: Option<Replaces>,
}

/// The key a rotation replaced and until when it stays valid.
#[derive(Serialize, ToSchema)]
pub(super) struct Replaces {
    #[serde(rename = "key")]
    key_ref: String,
    grace_s: i64,
    /// RFC 3339
    #[schema(format = DateTime)]
    valid_until: String,
}

/// A page of a user's unrevoked keys, oldest first.
#[derive(Serialize, ToSchema)]
pub(super) struct KeyList {
    account_id: String,
    user_id: String,
    keys: Vec<KeyInfo>,
    /// The cursor of the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// Create a key
///
/// Adds a named key to a user (at most 100 live keys; at most 20 new keys in 10 minutes
/// unless root asks), minted or imported from `user_key`, shown once in the answer. Its
/// capabilities and expiry never exceed the calling key's; claims are root's to set. Root,
/// the account's administrators, and the user's own keys with `own_keys`.
#[utoipa::path(post, path = keygate_protocol::routes::admin::KEYS, tag = "admin",
    params(("account" = String, Path, description = "Account id"), ("user" = String, Path, description = "User id")), request_body = CreateKey, security(("api_key" = []), ("bearer" = [])),
    responses((status = 201, body = NewKey), CreateErrors))]
pub(super) async fn create_key(
    State(st): State<AppState>,
    Path((account, user)): Path<(String, String)>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    key_caller(&caller, &account, &user, Operation::UserKeys)?;
    check_not_system(&account)?;
    let req: CreateKey = parse_body(&headers, body)?;
    check_id("name", &req.name)?;
    check_import(&caller, req.user_key.as_ref(), &account, &user)?;
    if let Some(claims) = &req.claims {
        caller.require(Operation::RootOnly("set claims"), &account, Some(&user))?;
        check_claims(claims)?;
    }
    let caps = req.capabilities.as_deref();
    let (raw, mut key, imported) =
        issue_key(req.user_key, &req.name, req.expires_at.as_deref(), caps)?;
    key.claims = req.claims;
    let id = key.key_id.clone();
    let info = st
        .store
        .create_key(caller.by(), account.clone(), user.clone(), key)
        .await?;
    tracing::info!(%account, %user, key = log_prefix(&id), imported, "key created");
    Ok(with_key(
        StatusCode::CREATED,
        NewKey {
            info,
            user_key: raw,
            replaces: None,
        },
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateKey {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<crate::store::ClaimsDoc>)]
    claims: Option<Option<Claims>>,
    /// `false` disables the key (the lookup answers 404, it cannot call the admin API);
    /// `true` enables it again.
    #[serde(default, deserialize_with = "present")]
    enabled: Option<bool>,
}

/// Change a key
///
/// Renames a key, changes its expiry (never later than the calling key may give), its
/// claims (root only) or its enabled state. Root and the account's administrators.
#[utoipa::path(patch, path = keygate_protocol::routes::admin::KEY, tag = "admin",
    params(("account" = String, Path, description = "Account id"), ("user" = String, Path, description = "User id"), ("key" = String, Path, description = "Key reference: the first 16 hex characters of the key id, as listed")), request_body = UpdateKey, security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = KeyInfo), ChangeErrors))]
pub(super) async fn update_key(
    State(st): State<AppState>,
    Path((account, user, key_ref)): Path<(String, String, String)>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<KeyInfo>, ApiError> {
    key_caller(&caller, &account, &user, Operation::AccountAdmin)?;
    check_not_system(&account)?;
    check_key_ref(&key_ref)?;
    let req: UpdateKey = parse_body(&headers, body)?;
    if let Some(name) = &req.name {
        check_id("name", name)?;
    }
    if let Some(claims) = &req.claims {
        caller.require(Operation::RootOnly("set claims"), &account, Some(&user))?;
        claims.as_ref().map(check_claims).transpose()?;
    }
    let expires_at = match req.expires_at {
        Some(Some(t)) => Some(Some(future_time(&t)?)),
        Some(None) => Some(None),
        None => None,
    };
    if req.name.is_none() && expires_at.is_none() && req.claims.is_none() && req.enabled.is_none() {
        return Err(ApiError::BadRequest(
            "nothing to change: give name, expires_at, claims or enabled".into(),
        ));
    }
    let patch = KeyPatch {
        name: req.name,
        expires_at,
        claims: req.claims,
        enabled: req.enabled,
    };
    let target = Target {
        account,
        user,
        key_ref,
    };
    let info = st
        .store
        .update_key(caller.by(), target.clone(), patch)
        .await?;
    tracing::info!(account = %target.account, user = %target.user, key = %target.key_ref, "key updated");
    Ok(Json(info))
}

/// Revoke a key
///
/// Revokes one key, for good. Root, the account's administrators, and the user's own keys
/// with `own_keys`.
#[utoipa::path(delete, path = keygate_protocol::routes::admin::KEY, tag = "admin",
    params(("account" = String, Path, description = "Account id"), ("user" = String, Path, description = "User id"), ("key" = String, Path, description = "Key reference: the first 16 hex characters of the key id, as listed")), security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = Revoked), ReadErrors))]
pub(super) async fn revoke_key(
    State(st): State<AppState>,
    Path((account, user, key_ref)): Path<(String, String, String)>,
    caller: Caller,
) -> Result<Json<Revoked>, ApiError> {
    key_caller(&caller, &account, &user, Operation::UserKeys)?;
    check_not_system(&account)?;
    check_key_ref(&key_ref)?;
    let target = Target {
        account,
        user,
        key_ref,
    };
    let id = st.store.revoke_key(caller.actor(), target.clone()).await?;
    tracing::info!(account = %target.account, user = %target.user, key = log_prefix(&id), "key revoked");
    Ok(Json(Revoked { revoked: 1 }))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RotateOne {
    /// Seconds the old key stays valid, with the capability `traffic` only (default 0).
    #[serde(default)]
    grace_s: Option<i64>,
    /// RFC 3339; at most the calling key's and the user's expiry (the default).
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<String>,
    /// A key value to import (root and account admins only).
    #[serde(default)]
    user_key: Option<String>,
    /// Default: the old key's (within the calling key's); never more.
    #[serde(default)]
    #[schema(value_type = Option<Vec<crate::api::CapabilityName>>)]
    capabilities: Option<Vec<String>>,
}

/// Rotate a key
///
/// Replaces one key by a new one with its name, claims and (at most) its capabilities,
/// shown once; the old key is revoked at once or after `grace_s` seconds during which it
/// keeps the capability `traffic` only (`replaces.valid_until`). Root, the account's
/// administrators, and the user's own keys with `own_keys`.
#[utoipa::path(post, path = keygate_protocol::routes::admin::KEY_ROTATE, tag = "admin",
    params(("account" = String, Path, description = "Account id"), ("user" = String, Path, description = "User id"), ("key" = String, Path, description = "Key reference: the first 16 hex characters of the key id, as listed")), request_body(content = Option<RotateOne>, description = "Optional"), security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = NewKey), CreateErrors))]
pub(super) async fn rotate_one_key(
    State(st): State<AppState>,
    Path((account, user, key_ref)): Path<(String, String, String)>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    key_caller(&caller, &account, &user, Operation::UserKeys)?;
    check_not_system(&account)?;
    check_key_ref(&key_ref)?;
    let req: RotateOne = parse_optional_body(&headers, body)?;
    check_import(&caller, req.user_key.as_ref(), &account, &user)?;
    let grace_s = check_grace(req.grace_s)?;
    // The name is replaced by the old key's in the store.
    let caps = req.capabilities.as_deref();
    let (raw, spec, imported) = issue_key(req.user_key, "", req.expires_at.as_deref(), caps)?;
    let id = spec.key_id.clone();
    let target = Target {
        account,
        user,
        key_ref,
    };
    let (info, valid_until) = st
        .store
        .rotate_one_key(caller.by(), target.clone(), spec, grace_s)
        .await?;
    tracing::info!(account = %target.account, user = %target.user, old = %target.key_ref,
        key = log_prefix(&id), imported, grace_s, "key rotated");
    let replaces = Replaces {
        key_ref: target.key_ref,
        grace_s,
        valid_until: rfc3339(valid_until),
    };
    Ok(with_key(
        StatusCode::OK,
        NewKey {
            info,
            user_key: raw,
            replaces: Some(replaces),
        },
    ))
}
