//! Admin routes of accounts (`/api/v1/admin/accounts[/{account}]`): list, get, create,
//! change (claims, enabled) and revoke.
//!
//! Invariant: creating, changing and revoking accounts, and listing them, are root's; an
//! account's administrators may read their own; the `_system` account is the keystore
//! configuration's and no call changes it.

use super::auth::{check_not_system, Caller};
use super::body::{check_claims, check_id, double_option, parse_body, present};
use super::doc::{ChangeErrors, CreateErrors, ReadErrors};
use super::keys::{issue_key, with_key};
use super::paging::{Bounds, ListQuery};
use super::users::Revoked;
use super::AppState;
use crate::authority::Operation;
use crate::error::ApiError;
use crate::keys::log_prefix;
use crate::store::{AccountInfo, Claims, DEFAULT_KEY_NAME};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A page of the active accounts, by account id.
#[derive(Serialize, ToSchema)]
pub(super) struct AccountList {
    accounts: Vec<AccountInfo>,
    /// The cursor of the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// List accounts
///
/// The active accounts (disabled ones included), by account id, a page at a time. Root only.
#[utoipa::path(get, path = keygate_protocol::routes::admin::ACCOUNTS, tag = "admin",
    params(ListQuery), security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = AccountList), ReadErrors))]
pub(super) async fn list_accounts(
    State(st): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<AccountList>, ApiError> {
    caller.require(Operation::RootOnly("list accounts"), "", None)?;
    let bounds = Bounds::of(query)?;
    let accounts = st.store.list_accounts().await?;
    let (accounts, next_cursor) = bounds.page_by_id(accounts, |a| &a.account_id)?;
    Ok(Json(AccountList {
        accounts,
        next_cursor,
    }))
}

/// Get an account
///
/// An active account: when it was created, its claims and whether it is enabled. Root, and
/// the account's administrators (`account_admin`).
#[utoipa::path(get, path = keygate_protocol::routes::admin::ACCOUNT, tag = "admin",
    params(("account" = String, Path, description = "Account id")), security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = AccountInfo), ReadErrors))]
pub(super) async fn get_account(
    State(st): State<AppState>,
    Path(account): Path<String>,
    caller: Caller,
) -> Result<Json<AccountInfo>, ApiError> {
    check_id("account", &account)?;
    caller.require(Operation::AccountAdmin, &account, None)?;
    Ok(Json(st.store.account(account).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateAccount {
    account_id: String,
    admin_user_id: String,
    /// A key to import instead of minting one.
    #[serde(default)]
    user_key: Option<String>,
    /// When the key expires (RFC 3339).
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct AccountCreated {
    account_id: String,
    user_id: String,
    user_key: String,
}

/// Create an account
///
/// Creates an account with its first user, an administrator, and that user's first key
/// (minted, or imported from `user_key`), shown once in the answer. Root only.
#[utoipa::path(post, path = keygate_protocol::routes::admin::ACCOUNTS, tag = "admin",
    request_body = CreateAccount, security(("api_key" = []), ("bearer" = [])),
    responses((status = 201, body = AccountCreated), CreateErrors))]
pub(super) async fn create_account(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Operation::RootOnly("create accounts"), "", None)?;
    let req: CreateAccount = parse_body(&headers, body)?;
    check_id("account_id", &req.account_id)?;
    check_id("admin_user_id", &req.admin_user_id)?;
    if req.account_id.starts_with('_') {
        return Err(ApiError::BadRequest(
            "account ids starting with '_' are reserved".into(),
        ));
    }
    let (raw, key, imported) = issue_key(
        req.user_key,
        DEFAULT_KEY_NAME,
        req.expires_at.as_deref(),
        None,
    )?;
    let id = key.key_id.clone();
    st.store
        .create_account(
            caller.by(),
            req.account_id.clone(),
            req.admin_user_id.clone(),
            key,
        )
        .await?;
    tracing::info!(
        account = %req.account_id,
        user = %req.admin_user_id,
        key = log_prefix(&id),
        imported,
        "account created"
    );
    Ok(with_key(
        StatusCode::CREATED,
        AccountCreated {
            account_id: req.account_id,
            user_id: req.admin_user_id,
            user_key: raw,
        },
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SetAccount {
    /// The account's claims (`null` clears them; absent: unchanged).
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<crate::store::ClaimsDoc>)]
    claims: Option<Option<Claims>>,
    /// `false` disables the account (none of its keys is looked up); `true` enables it again.
    #[serde(default, deserialize_with = "present")]
    enabled: Option<bool>,
}

/// Change an account
///
/// Sets or clears an account's claims (merged under each key's in the lookup answer) and
/// enables or disables it (a disabled account's keys are not looked up). Root only.
#[utoipa::path(patch, path = keygate_protocol::routes::admin::ACCOUNT, tag = "admin",
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

/// Revoke an account
///
/// Revokes an account, its users and every key of them, for good; answers how many keys
/// were revoked. Root only.
#[utoipa::path(delete, path = keygate_protocol::routes::admin::ACCOUNT, tag = "admin",
    params(("account" = String, Path, description = "Account id")), security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = Revoked), ReadErrors))]
pub(super) async fn revoke_account(
    State(st): State<AppState>,
    Path(account): Path<String>,
    caller: Caller,
) -> Result<Json<Revoked>, ApiError> {
    check_id("account", &account)?;
    caller.require(Operation::RootOnly("revoke accounts"), &account, None)?;
    check_not_system(&account)?;
    let revoked = st
        .store
        .revoke_account(caller.actor(), account.clone())
        .await?;
    tracing::info!(%account, revoked, "account revoked");
    Ok(Json(Revoked { revoked }))
}
