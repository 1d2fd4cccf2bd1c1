//! Admin routes of the audit trail: all of it (root) or one account's (root and the
//! account's administrators), a page at a time.
//!
//! Invariant: entries come oldest first, strictly after `after`, at most `limit`
//! (1 to [`MAX_AUDIT_PAGE`]) of them.

use super::auth::Caller;
use super::body::check_id;
use super::doc::ReadErrors;
use super::AppState;
use crate::authority::Operation;
use crate::error::ApiError;
use crate::store::{AuditPage, MAX_AUDIT_PAGE};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

/// Audit entries per page unless `limit` says otherwise.
const DEFAULT_AUDIT_PAGE: usize = 100;

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
#[utoipa::path(get, path = keygate_protocol::routes::admin::AUDIT, tag = "admin",
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
#[utoipa::path(get, path = keygate_protocol::routes::admin::ACCOUNT_AUDIT, tag = "admin",
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
