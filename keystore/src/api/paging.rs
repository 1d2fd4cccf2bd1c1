//! Cursor-paged lists of accounts, users and keys.
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

use crate::error::ApiError;
use crate::store::KeyInfo;
use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;
use utoipa::IntoParams;

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
            |k| (k.created_at, k.key_ref.clone()),
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
