//! Reading accounts, users and keys: one of each (`GET .../{id}`) and cursor-paged lists.
//!
//! Invariant: a list is in one total order (accounts and users by id in byte order, keys by
//! creation time then key reference), and a page holds the items strictly after its cursor
//! in that order, so paging with `next_cursor` visits every item that exists throughout
//! exactly once, whatever is created or revoked meanwhile. `limit` is 1 to [`MAX_PAGE`]
//! (default [`DEFAULT_PAGE`]); anything else, or a cursor this keystore did not hand out, is
//! a 400. The store reads the whole (bounded) list and the page is cut here: a user holds
//! at most a few hundred keys, and an account's users and the accounts are read the same way
//! (an SQL-level page would need a byte-order collation on both engines; not worth it at the
//! reference store's sizes).

use super::doc::ReadErrors;
use super::{check_id, ApiError, AppState, Caller};
use crate::authority::Operation;
use crate::error::Kind;
use crate::store::{AccountInfo, KeyInfo, UserInfo};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Most items in one page.
pub const MAX_PAGE: usize = 1000;
/// Items in a page unless `limit` says otherwise.
pub const DEFAULT_PAGE: usize = 100;

/// The query of a list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Items per page, 1 to 1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page (absent: the first page).
    cursor: Option<String>,
}

/// A list's page bounds: `limit` and the decoded cursor (as text).
pub(super) struct Bounds {
    limit: usize,
    after: Option<String>,
}

impl Bounds {
    pub(super) fn of(query: Result<Query<ListQuery>, QueryRejection>) -> Result<Bounds, ApiError> {
        let q = query
            .map_err(|e| ApiError::BadRequest(format!("invalid query string: {}", e.body_text())))?
            .0;
        let limit = match q.limit {
            None => DEFAULT_PAGE,
            Some(l) => l
                .parse::<usize>()
                .ok()
                .filter(|l| (1..=MAX_PAGE).contains(l))
                .ok_or_else(|| {
                    ApiError::BadRequest(format!("limit must be an integer from 1 to {MAX_PAGE}"))
                })?,
        };
        let after = q
            .cursor
            .map(|c| {
                URL_SAFE_NO_PAD
                    .decode(c.as_bytes())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .filter(|t| !t.is_empty())
                    .ok_or_else(bad_cursor)
            })
            .transpose()?;
        Ok(Bounds { limit, after })
    }

    /// The page of `items` (sorted by `key`) after the cursor, read by `parse`, and the cursor
    /// of the next page when there is one.
    pub(super) fn page<T, K: Ord>(
        &self,
        items: Vec<T>,
        key: impl Fn(&T) -> K,
        parse: impl Fn(&str) -> Option<K>,
        text: impl Fn(&K) -> String,
    ) -> Result<(Vec<T>, Option<String>), ApiError> {
        let after = self
            .after
            .as_deref()
            .map(|a| parse(a).ok_or_else(bad_cursor))
            .transpose()?;
        let mut rest = items
            .into_iter()
            .filter(|t| after.as_ref().is_none_or(|a| key(t) > *a));
        let page: Vec<T> = rest.by_ref().take(self.limit).collect();
        let next = match (rest.next(), page.last()) {
            (Some(_), Some(last)) => Some(URL_SAFE_NO_PAD.encode(text(&key(last)))),
            _ => None,
        };
        Ok((page, next))
    }

    /// A page of items sorted by an id.
    pub(super) fn page_by_id<T>(
        &self,
        items: Vec<T>,
        id: impl Fn(&T) -> &str,
    ) -> Result<(Vec<T>, Option<String>), ApiError> {
        self.page(
            items,
            |t| id(t).to_owned(),
            |a| Some(a.to_owned()),
            Clone::clone,
        )
    }

    /// A page of keys (sorted by creation time, then key reference).
    pub(super) fn page_keys(
        &self,
        keys: Vec<KeyInfo>,
    ) -> Result<(Vec<KeyInfo>, Option<String>), ApiError> {
        self.page(
            keys,
            |k| (k.created_at, k.key.clone()),
            |a| {
                let (at, key) = a.split_once(':')?;
                Some((at.parse().ok()?, key.to_owned()))
            },
            |(at, key)| format!("{at}:{key}"),
        )
    }
}

fn bad_cursor() -> ApiError {
    ApiError::BadRequest(
        "cursor is not a cursor of this list: pass the next_cursor of its previous page".into(),
    )
}

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
#[utoipa::path(get, path = "/api/v1/admin/accounts", tag = "admin",
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
#[utoipa::path(get, path = "/api/v1/admin/accounts/{account}", tag = "admin",
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

/// Get a user
///
/// An active user of an active account: role, creation time, expiry, whether it is enabled.
/// Root, the account's administrators, and the user's own keys with `own_keys`.
#[utoipa::path(get, path = "/api/v1/admin/accounts/{account}/users/{user}", tag = "admin",
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

/// Get a key
///
/// One unrevoked key of a user (expired ones included) by its key reference: what the key
/// list shows of it. Root, the account's administrators, and the user's own keys with
/// `own_keys`.
#[utoipa::path(get, path = "/api/v1/admin/accounts/{account}/users/{user}/keys/{key}", tag = "admin",
    params(("account" = String, Path, description = "Account id"), ("user" = String, Path, description = "User id"),
        ("key" = String, Path, description = "Key reference: the first 16 hex characters of the key id, as listed")),
    security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = KeyInfo), ReadErrors))]
pub(super) async fn get_key(
    State(st): State<AppState>,
    Path((account, user, key)): Path<(String, String, String)>,
    caller: Caller,
) -> Result<Json<KeyInfo>, ApiError> {
    check_id("account", &account)?;
    check_id("user", &user)?;
    caller.require(Operation::UserKeys, &account, Some(&user))?;
    super::lifecycle::check_key_ref(&key)?;
    let keys = st.store.list_keys(account.clone(), user.clone()).await?;
    let mut found = keys.into_iter().filter(|k| k.key == key);
    match (found.next(), found.next()) {
        (Some(info), None) => Ok(Json(info)),
        (Some(_), Some(_)) => Err(ApiError::BadRequest(format!(
            "two keys of user {user} share the key reference {key}: revoke one by value"
        ))),
        (None, _) => Err(ApiError::NotFound(
            Kind::KeyNotFound,
            format!("key {key} not found for user {user} in account {account}"),
        )),
    }
}
