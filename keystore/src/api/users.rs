//! Admin routes of users (`/api/v1/admin/accounts/{account}/users[/{user}]`): list, get,
//! create (with a first key), change (role, expiry, enabled), revoke, and rotate all of a
//! user's keys.
//!
//! Invariant: root and the account's administrators manage users (an operator role only
//! root grants); a user's own keys with `own_keys` may read it and rotate its keys; a new
//! key is shown once, never cached.

use super::auth::{check_import, check_not_system, check_role, Caller};
use super::body::{
    check_grace, check_id, double_option, future_time, parse_body, parse_optional_body, present,
};
use super::doc::{ChangeErrors, CreateErrors, ReadErrors};
use super::keys::{issue_key, with_key};
use super::paging::{Bounds, ListQuery};
use super::AppState;
use crate::authority::{Caps, Operation};
use crate::error::{ApiError, Kind};
use crate::keys::log_prefix;
use crate::store::{KeySpec, UserInfo, DEFAULT_KEY_NAME};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How many keys a revocation ended.
#[derive(Serialize, ToSchema)]
pub struct Revoked {
    pub revoked: usize,
}

/// A page of an account's active users, by user id.
#[derive(Serialize, ToSchema)]
pub struct UserList {
    pub account_id: String,
    pub users: Vec<crate::store::UserInfo>,
    /// The cursor of the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// List users
///
/// The active users of an account (disabled ones included), by user id, a page at a time.
/// Root and the account's administrators.
#[utoipa::path(get, path = keygate_protocol::routes::admin::USERS, tag = "admin",
    params(("account" = String, Path, description = "Account id"), ListQuery), security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = UserList), ReadErrors))]
pub(super) async fn list_users(
    State(st): State<AppState>,
    Path(account): Path<String>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<UserList>, ApiError> {
    check_id("account", &account)?;
    caller.require(Operation::AccountAdmin, &account, None)?;
    let bounds = Bounds::of(query)?;
    let users = st.store.list_users(account.clone()).await?;
    let (users, next_cursor) = bounds.page_by_id(users, |u| &u.user_id)?;
    Ok(Json(UserList {
        account_id: account,
        users,
        next_cursor,
    }))
}

/// Get a user
///
/// An active user of an active account: role, creation time, expiry, whether it is enabled.
/// Root, the account's administrators, and the user's own keys with `own_keys`.
#[utoipa::path(get, path = keygate_protocol::routes::admin::USER, tag = "admin",
    params(("account" = String, Path, description = "Account id"), ("user" = String, Path, description = "User id")), security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = UserInfo), ReadErrors))]
pub(super) async fn get_user(
    State(st): State<AppState>,
    Path((account, user)): Path<(String, String)>,
    caller: Caller,
) -> Result<Json<UserInfo>, ApiError> {
    check_id("account", &account)?;
    check_id("user", &user)?;
    caller.require(Operation::UserKeys, &account, Some(&user))?;
    let users = st.store.list_users(account.clone()).await?;
    match users.into_iter().find(|u| u.user_id == user) {
        Some(found) => Ok(Json(found)),
        None => Err(ApiError::NotFound(
            Kind::UserNotFound,
            format!("user {user} not found in account {account}"),
        )),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateUser {
    user_id: String,
    /// A role of the registry (`--account-roles`, or `--operator-roles` for root); compared
    /// and stored in ASCII lowercase.
    role: String,
    /// A key to import instead of minting one (root and account admins only).
    #[serde(default)]
    user_key: Option<String>,
    /// When the user, and so every key of it, expires (RFC 3339).
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<String>,
    /// The first key's capabilities (default: all the role and the calling key allow).
    #[serde(default)]
    #[schema(value_type = Option<Vec<crate::api::CapabilityName>>)]
    capabilities: Option<Vec<String>>,
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RotateKey {
    /// A key to import instead of minting one (root and account admins only).
    #[serde(default)]
    user_key: Option<String>,
    /// When the new key expires (RFC 3339; at most the calling key's and the user's expiry).
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<String>,
    /// How long the old keys stay valid, in seconds (default 0: revoked at once). During
    /// the grace they keep only the capability `traffic`.
    #[serde(default)]
    grace_s: Option<i64>,
    /// The new key's capabilities (default: all the role and the calling key allow).
    #[serde(default)]
    #[schema(value_type = Option<Vec<crate::api::CapabilityName>>)]
    capabilities: Option<Vec<String>>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct UserKey {
    user_id: String,
    user_key: String,
    /// When the key expires (RFC 3339), when it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<String>,
    #[schema(value_type = Vec<crate::api::CapabilityName>)]
    capabilities: Vec<&'static str>,
}

impl UserKey {
    fn new(user_id: String, user_key: String, granted: &KeySpec) -> UserKey {
        UserKey {
            user_id,
            user_key,
            expires_at: granted.expires_at.map(crate::store::rfc3339),
            capabilities: granted.capabilities.unwrap_or(Caps::ALL).names(),
        }
    }
}

/// Create a user
///
/// Adds a user with a role of the registry and its first key (minted, or imported from
/// `user_key` by root and account admins), shown once in the answer. Root and the account's
/// administrators; an operator role only by root.
#[utoipa::path(post, path = keygate_protocol::routes::admin::USERS, tag = "admin",
    params(("account" = String, Path, description = "Account id")), request_body = CreateUser, security(("api_key" = []), ("bearer" = [])),
    responses((status = 201, body = UserKey), CreateErrors))]
pub(super) async fn create_user(
    State(st): State<AppState>,
    Path(account): Path<String>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_id("account", &account)?;
    caller.require(Operation::AccountAdmin, &account, None)?;
    check_not_system(&account)?;
    let req: CreateUser = parse_body(&headers, body)?;
    check_id("user_id", &req.user_id)?;
    check_import(&caller, req.user_key.as_ref(), &account, &req.user_id)?;
    let role = check_role(&st, &caller, &req.role)?;
    let caps = req.capabilities.as_deref();
    let (raw, key, imported) = issue_key(
        req.user_key,
        DEFAULT_KEY_NAME,
        req.expires_at.as_deref(),
        caps,
    )?;
    let user_expires = key.expires_at;
    let id = key.key_id.clone();
    let granted = st
        .store
        .create_user(
            caller.by(),
            (account.clone(), req.user_id.clone()),
            role.clone(),
            user_expires,
            key,
        )
        .await?;
    tracing::info!(
        %account,
        user = %req.user_id,
        %role,
        key = log_prefix(&id),
        imported,
        "user created"
    );
    Ok(with_key(
        StatusCode::CREATED,
        UserKey::new(req.user_id, raw, &granted),
    ))
}

/// Rotate a user's keys
///
/// Gives the user a new key (shown once) and revokes all its other keys, at once or after
/// `grace_s` seconds during which they keep the capability `traffic` only. Root, the
/// account's administrators, and the user's own keys with `own_keys`.
#[utoipa::path(post, path = keygate_protocol::routes::admin::USER_KEY, tag = "admin",
    params(("account" = String, Path, description = "Account id"), ("user" = String, Path, description = "User id")), request_body(content = Option<RotateKey>, description = "Optional"),
    security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = UserKey), CreateErrors))]
pub(super) async fn rotate_key(
    State(st): State<AppState>,
    Path((account, user)): Path<(String, String)>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_id("account", &account)?;
    check_id("user", &user)?;
    caller.require(Operation::UserKeys, &account, Some(&user))?;
    check_not_system(&account)?;
    let req: RotateKey = parse_optional_body(&headers, body)?;
    check_import(&caller, req.user_key.as_ref(), &account, &user)?;
    let grace_s = check_grace(req.grace_s)?;
    let caps = req.capabilities.as_deref();
    let (raw, key, imported) = issue_key(
        req.user_key,
        DEFAULT_KEY_NAME,
        req.expires_at.as_deref(),
        caps,
    )?;
    let id = key.key_id.clone();
    let (replaced, granted) = st
        .store
        .rotate_key(caller.by(), account.clone(), user.clone(), key, grace_s)
        .await?;
    let old: Vec<&str> = replaced.iter().map(|k| log_prefix(k)).collect();
    tracing::info!(
        %account,
        %user,
        key = log_prefix(&id),
        imported,
        grace_s,
        replaced = ?old,
        "key rotated"
    );
    Ok(with_key(StatusCode::OK, UserKey::new(user, raw, &granted)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateUser {
    /// The new role (see `role` of a new user).
    #[serde(default, deserialize_with = "present")]
    role: Option<String>,
    /// `false` disables the user (its keys are not looked up and cannot call the admin API);
    /// `true` enables it again.
    #[serde(default, deserialize_with = "present")]
    enabled: Option<bool>,
    /// The user's new expiry (RFC 3339), capping every key of the user; `null`: none (as
    /// late as the calling key may give). Nobody but root extends their own.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<Option<String>>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct UserRole {
    user_id: String,
    role: String,
    /// Present when the call changed it: whether the user is enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    enabled: Option<bool>,
    /// The user's expiry (RFC 3339) after the call; absent: never.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<String>,
}

/// Change a user
///
/// Changes a user's role, expiry or enabled state, all the fields given or none (one
/// transaction, one audit entry). A disabled user's keys are not looked up. Root and the
/// account's administrators; nobody but root extends their own expiry.
#[utoipa::path(patch, path = keygate_protocol::routes::admin::USER, tag = "admin",
    params(("account" = String, Path, description = "Account id"), ("user" = String, Path, description = "User id")), request_body = UpdateUser, security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = UserRole), ChangeErrors))]
pub(super) async fn patch_user(
    State(st): State<AppState>,
    Path((account, user)): Path<(String, String)>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<UserRole>, ApiError> {
    check_id("account", &account)?;
    check_id("user", &user)?;
    caller.require(Operation::AccountAdmin, &account, Some(&user))?;
    check_not_system(&account)?;
    let req: UpdateUser = parse_body(&headers, body)?;
    let role = req
        .role
        .as_deref()
        .map(|r| check_role(&st, &caller, r))
        .transpose()?;
    let expires_at = match req.expires_at {
        Some(Some(t)) => Some(Some(future_time(&t)?)),
        Some(None) => Some(None),
        None => None,
    };
    if role.is_none() && expires_at.is_none() && req.enabled.is_none() {
        return Err(ApiError::BadRequest(
            "nothing to change: give role, expires_at or enabled".into(),
        ));
    }
    let enabled = req.enabled;
    let patched = st
        .store
        .patch_user(
            caller.by(),
            st.roles.clone(),
            (account.clone(), user.clone()),
            role,
            expires_at,
            enabled,
        )
        .await?;
    let (before, after) = (patched.before, patched.after);
    tracing::info!(%account, %user, from = %before.role, to = %after.role,
        expiry_changed = before.expires_at != after.expires_at, ?enabled, "user changed");
    Ok(Json(UserRole {
        user_id: user,
        role: after.role,
        enabled: enabled.map(|_| patched.enabled),
        expires_at: after.expires_at.map(crate::store::rfc3339),
    }))
}

/// Revoke a user
///
/// Revokes a user and every key of it, for good; answers how many keys were revoked. Root
/// and the account's administrators.
#[utoipa::path(delete, path = keygate_protocol::routes::admin::USER, tag = "admin",
    params(("account" = String, Path, description = "Account id"), ("user" = String, Path, description = "User id")), security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = Revoked), ReadErrors))]
pub(super) async fn revoke_user(
    State(st): State<AppState>,
    Path((account, user)): Path<(String, String)>,
    caller: Caller,
) -> Result<Json<Revoked>, ApiError> {
    check_id("account", &account)?;
    check_id("user", &user)?;
    caller.require(Operation::AccountAdmin, &account, Some(&user))?;
    check_not_system(&account)?;
    let revoked = st
        .store
        .revoke_user(caller.actor(), account.clone(), user.clone())
        .await?;
    tracing::info!(%account, %user, revoked, "user revoked");
    Ok(Json(Revoked { revoked }))
}
