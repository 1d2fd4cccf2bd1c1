//! The key lifecycle's endpoints: a user's named keys (list, create, update, revoke, rotate
//! with a grace period), account claims, the audit trail, and the protocol's usage report.
//!
//! Who may call what is [`crate::authority`]'s (checked before the body is read):
//! - list, create, revoke and rotate a user's keys: root, keys with `account_admin` in the
//!   account, the user's own keys with `own_keys`; importing a key value: not `own_keys`;
//! - change a key (`PATCH`): root and `account_admin`;
//! - claims (of an account, or of a key at creation or in a `PATCH`): root only, because
//!   claims carry entitlements such as a plan;
//! - the whole audit trail: root; an account's: root and `account_admin`.

use super::doc::{ChangeErrors, CreateErrors, ReadErrors, UsageErrors};
use super::{
    check_id, check_import, check_not_system, issue_key, parse_body, parse_optional_body, with_key,
    ApiError, AppState, Caller, Revoked,
};
use crate::authority::Operation;
use crate::keys::{is_key_id, log_prefix};
use crate::metrics::inc;
use crate::store::{
    parse_rfc3339, rfc3339, validate_claims, AccountInfo, AuditPage, Claims, KeyInfo, KeyPatch,
    Target, KEY_REF_LEN, MAX_AUDIT_PAGE,
};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Longest grace period of a rotation: 7 days.
pub const MAX_GRACE_S: i64 = 7 * 24 * 3600;
/// Most key ids in one usage report.
pub const MAX_USAGE_IDS: usize = 10_000;
/// Body limit of a usage report: room for [`MAX_USAGE_IDS`] ids (67 bytes each in JSON).
pub const USAGE_BODY_LIMIT: usize = 1024 * 1024;
/// Audit entries per page unless `limit` says otherwise.
const DEFAULT_AUDIT_PAGE: usize = 100;

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

fn check_claims(claims: &Claims) -> Result<(), ApiError> {
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

/// Checks the path's ids and that the caller may perform `op` on the user.
fn key_caller(caller: &Caller, account: &str, user: &str, op: Operation) -> Result<(), ApiError> {
    check_id("account", account)?;
    check_id("user", user)?;
    caller.require(op, account, Some(user))
}

/// `Some(None)` for an explicit `null`, `Some(Some(v))` for a value; absent stays `None`.
pub(super) fn double_option<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

// ---------------------------------------------------------------------------------------------
// A user's keys

/// List a user's keys
///
/// The unrevoked keys of a user (expired ones and those in a rotation's grace included),
/// oldest first, a page at a time; never a key's value. Root, the account's administrators,
/// and the user's own keys with `own_keys`.
#[utoipa::path(get, path = "/api/v1/admin/accounts/{account}/users/{user}/keys", tag = "admin",
    params(("account" = String, Path, description = "Account id"), ("user" = String, Path, description = "User id"), super::read::ListQuery), security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = KeyList), ReadErrors))]
pub(super) async fn list_keys(
    State(st): State<AppState>,
    Path((account, user)): Path<(String, String)>,
    caller: Caller,
    query: Result<Query<super::read::ListQuery>, QueryRejection>,
) -> Result<Json<KeyList>, ApiError> {
    key_caller(&caller, &account, &user, Operation::UserKeys)?;
    let bounds = super::read::Bounds::of(query)?;
    let keys = st.store.list_keys(account.clone(), user.clone()).await?;
    let (keys, next_cursor) = bounds.page_keys(keys)?;
    Ok(Json(KeyList {
        account_id: account,
        user_id: user,
        keys,
        next_cursor,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateKey {
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
struct NewKey {
    #[serde(flatten)]
    info: KeyInfo,
    user_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    replaces: Option<Replaces>,
}

/// The key a rotation replaced and until when it stays valid.
#[derive(Serialize, ToSchema)]
struct Replaces {
    key: String,
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

/// How many keys a usage report wrote.
#[derive(Serialize, ToSchema)]
pub(super) struct Recorded {
    recorded: u64,
}

/// Create a key
///
/// Adds a named key to a user (at most 100 live keys; at most 20 new keys in 10 minutes
/// unless root asks), minted or imported from `user_key`, shown once in the answer. Its
/// capabilities and expiry never exceed the calling key's; claims are root's to set. Root,
/// the account's administrators, and the user's own keys with `own_keys`.
#[utoipa::path(post, path = "/api/v1/admin/accounts/{account}/users/{user}/keys", tag = "admin",
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
struct UpdateKey {
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
    #[serde(default, deserialize_with = "super::present")]
    enabled: Option<bool>,
}

/// Change a key
///
/// Renames a key, changes its expiry (never later than the calling key may give), its
/// claims (root only) or its enabled state. Root and the account's administrators.
#[utoipa::path(patch, path = "/api/v1/admin/accounts/{account}/users/{user}/keys/{key}", tag = "admin",
    params(("account" = String, Path, description = "Account id"), ("user" = String, Path, description = "User id"), ("key" = String, Path, description = "Key reference: the first 16 hex characters of the key id, as listed")), request_body = UpdateKey, security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = KeyInfo), ChangeErrors))]
pub(super) async fn update_key(
    State(st): State<AppState>,
    Path((account, user, key)): Path<(String, String, String)>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<KeyInfo>, ApiError> {
    key_caller(&caller, &account, &user, Operation::AccountAdmin)?;
    check_not_system(&account)?;
    check_key_ref(&key)?;
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
    let target = Target { account, user, key };
    let info = st
        .store
        .update_key(caller.by(), target.clone(), patch)
        .await?;
    tracing::info!(account = %target.account, user = %target.user, key = %target.key, "key updated");
    Ok(Json(info))
}

/// Revoke a key
///
/// Revokes one key, for good. Root, the account's administrators, and the user's own keys
/// with `own_keys`.
#[utoipa::path(delete, path = "/api/v1/admin/accounts/{account}/users/{user}/keys/{key}", tag = "admin",
    params(("account" = String, Path, description = "Account id"), ("user" = String, Path, description = "User id"), ("key" = String, Path, description = "Key reference: the first 16 hex characters of the key id, as listed")), security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = Revoked), ReadErrors))]
pub(super) async fn revoke_key(
    State(st): State<AppState>,
    Path((account, user, key)): Path<(String, String, String)>,
    caller: Caller,
) -> Result<Json<Revoked>, ApiError> {
    key_caller(&caller, &account, &user, Operation::UserKeys)?;
    check_not_system(&account)?;
    check_key_ref(&key)?;
    let target = Target { account, user, key };
    let id = st.store.revoke_key(caller.actor(), target.clone()).await?;
    tracing::info!(account = %target.account, user = %target.user, key = log_prefix(&id), "key revoked");
    Ok(Json(Revoked { revoked: 1 }))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct RotateOne {
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
#[utoipa::path(post, path = "/api/v1/admin/accounts/{account}/users/{user}/keys/{key}/rotate", tag = "admin",
    params(("account" = String, Path, description = "Account id"), ("user" = String, Path, description = "User id"), ("key" = String, Path, description = "Key reference: the first 16 hex characters of the key id, as listed")), request_body(content = Option<RotateOne>, description = "Optional"), security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = NewKey), CreateErrors))]
pub(super) async fn rotate_one_key(
    State(st): State<AppState>,
    Path((account, user, key)): Path<(String, String, String)>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    key_caller(&caller, &account, &user, Operation::UserKeys)?;
    check_not_system(&account)?;
    check_key_ref(&key)?;
    let req: RotateOne = parse_optional_body(&headers, body)?;
    check_import(&caller, req.user_key.as_ref(), &account, &user)?;
    let grace_s = check_grace(req.grace_s)?;
    // The name is replaced by the old key's in the store.
    let caps = req.capabilities.as_deref();
    let (raw, spec, imported) = issue_key(req.user_key, "", req.expires_at.as_deref(), caps)?;
    let id = spec.key_id.clone();
    let target = Target { account, user, key };
    let (info, valid_until) = st
        .store
        .rotate_one_key(caller.by(), target.clone(), spec, grace_s)
        .await?;
    tracing::info!(account = %target.account, user = %target.user, old = %target.key,
        key = log_prefix(&id), imported, grace_s, "key rotated");
    let replaces = Replaces {
        key: target.key,
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

// ---------------------------------------------------------------------------------------------
// Account claims

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SetAccount {
    /// The account's claims (`null` clears them; absent: unchanged).
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<crate::store::ClaimsDoc>)]
    claims: Option<Option<Claims>>,
    /// `false` disables the account (none of its keys is looked up); `true` enables it again.
    #[serde(default, deserialize_with = "super::present")]
    enabled: Option<bool>,
}

/// Change an account
///
/// Sets or clears an account's claims (merged under each key's in the lookup answer) and
/// enables or disables it (a disabled account's keys are not looked up). Root only.
#[utoipa::path(patch, path = "/api/v1/admin/accounts/{account}", tag = "admin",
    params(("account" = String, Path, description = "Account id")), request_body = SetAccount, security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = AccountInfo), ChangeErrors))]
pub(super) async fn set_account(
    State(st): State<AppState>,
    Path(account): Path<String>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<AccountInfo>, ApiError> {
    check_id("account", &account)?;
    caller.require(Operation::RootOnly("set account claims"), &account, None)?;
    check_not_system(&account)?;
    let req: SetAccount = parse_body(&headers, body)?;
    if let Some(Some(claims)) = &req.claims {
        check_claims(claims)?;
    }
    if req.claims.is_none() && req.enabled.is_none() {
        return Err(ApiError::BadRequest(
            "nothing to change: give claims or enabled".into(),
        ));
    }
    if let Some(claims) = req.claims {
        st.store
            .set_account_claims(caller.actor(), account.clone(), claims)
            .await?;
        tracing::info!(%account, "account claims set");
    }
    if let Some(enabled) = req.enabled {
        st.store
            .set_account_enabled(caller.actor(), account.clone(), enabled)
            .await?;
        tracing::info!(%account, enabled, "account enabled state set");
    }
    Ok(Json(st.store.account(account).await?))
}

// ---------------------------------------------------------------------------------------------
// Audit trail

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditQuery {
    /// Entries with an id greater than this (default 0).
    #[param(value_type = Option<u64>, minimum = 0)]
    after: Option<String>,
    /// Entries per page, 1 to 1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

/// `after` (default 0) and `limit` (1 to [`MAX_AUDIT_PAGE`], default 100).
fn audit_range(query: Result<Query<AuditQuery>, QueryRejection>) -> Result<(i64, usize), ApiError> {
    let q = query
        .map_err(|e| ApiError::BadRequest(format!("invalid query string: {}", e.body_text())))?
        .0;
    let after = match q.after {
        None => 0,
        Some(a) => a.parse::<i64>().ok().filter(|a| *a >= 0).ok_or_else(|| {
            ApiError::BadRequest("after must be a non-negative integer (an entry id)".into())
        })?,
    };
    let limit = match q.limit {
        None => DEFAULT_AUDIT_PAGE,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_AUDIT_PAGE).contains(l))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "limit must be an integer from 1 to {MAX_AUDIT_PAGE}"
                ))
            })?,
    };
    Ok((after, limit))
}

/// Read the audit trail
///
/// A page of the whole audit trail (every admin write and refused admin call), oldest first:
/// the entries after id `after`; `more` when later ones exist. Root only.
#[utoipa::path(get, path = "/api/v1/admin/audit", tag = "admin",
    params(AuditQuery), security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = AuditPage), ReadErrors))]
pub(super) async fn audit_all(
    State(st): State<AppState>,
    caller: Caller,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    caller.require(Operation::RootOnly("read the whole audit trail"), "", None)?;
    let (after, limit) = audit_range(query)?;
    Ok(Json(st.store.audit(None, after, limit).await?))
}

/// Read an account's audit trail
///
/// A page of an account's audit entries, oldest first, after id `after`; `more` when later
/// ones exist. Root and the account's administrators.
#[utoipa::path(get, path = "/api/v1/admin/accounts/{account}/audit", tag = "admin",
    params(("account" = String, Path, description = "Account id"), AuditQuery), security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = AuditPage), ReadErrors))]
pub(super) async fn audit_of_account(
    State(st): State<AppState>,
    Path(account): Path<String>,
    caller: Caller,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    check_id("account", &account)?;
    caller.require(Operation::AccountAdmin, &account, None)?;
    let (after, limit) = audit_range(query)?;
    Ok(Json(st.store.audit(Some(account), after, limit).await?))
}

// ---------------------------------------------------------------------------------------------
// Usage reports (key-store protocol)

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Usage {
    key_ids: Vec<String>,
}

/// Report key usage
///
/// The key-store protocol's usage report, sent by the Envoy filter: these key ids were used
/// this minute (their `last_used_at`, written at most once a minute per key). At most 10 000
/// ids (1 MiB). Needs the protocol token when the keystore is started with one.
#[utoipa::path(post, path = "/v1/usage", tag = "protocol", request_body = Usage,
    security((), ("protocol_token" = [])),
    responses((status = 200, body = Recorded), UsageErrors))]
pub(super) async fn record_usage(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Recorded>, ApiError> {
    inc(&st.metrics.usage_reports);
    if body
        .as_ref()
        .err()
        .is_some_and(|e| e.status() == StatusCode::PAYLOAD_TOO_LARGE)
    {
        return Err(usage_too_large());
    }
    let req: Usage = parse_body(&headers, body)?;
    if req.key_ids.len() > MAX_USAGE_IDS {
        return Err(usage_too_large());
    }
    if let Some(bad) = req.key_ids.iter().position(|k| !is_key_id(k)) {
        return Err(ApiError::BadRequest(format!(
            "key_ids[{bad}] is not a key id (64 lowercase hex characters)"
        )));
    }
    let recorded = st.store.record_usage(req.key_ids).await?;
    Ok(Json(Recorded { recorded }))
}

fn usage_too_large() -> ApiError {
    ApiError::TooLarge(format!(
        "a usage report holds at most {MAX_USAGE_IDS} key ids ({USAGE_BODY_LIMIT} bytes)"
    ))
}
