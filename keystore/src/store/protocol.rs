//! The key-store protocol's jobs: the lookup (and the admin caller's authentication, the
//! same query), the change feed and the usage report.
//!
//! Invariants:
//! - a lookup answers only an active key (key, user and account unrevoked and enabled, neither
//!   key nor user expired); its expiry is the earlier of the key's and the user's;
//! - a feed page reads its revision and its rows from one snapshot; `since` older than the
//!   retained log or newer than the current revision answers [`Changes::Reset`]; a key id is
//!   reported as `created` only when its every event in the page is a creation (or enabling).

use super::blocks::{current_revision, pruned_through, KIND_CREATED, KIND_ENABLED};
use super::engine::{first, Arg, Db, Job};
use super::error::StoreError;
use super::lifecycle::{self, Claims};
use super::sql;
use crate::authority::{self, Caps};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};

/// Most change-log rows returned by one [`Store::changes`] call.
pub const CHANGES_PAGE: usize = 1000;

// Sent in the protocol's form (`keygate_protocol::messages::Found`, the filter reads the same
// type); this type is the store's and documents the answer in the OpenAPI document.
/// Who an active key belongs to: the answer of the key-store protocol's lookup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Identity {
    pub account_id: String,
    pub user_id: String,
    pub role: String,
    /// When the key expires (Unix seconds); absent: never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// The account's claims overridden by the key's; absent when there are none.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = crate::store::ClaimsDoc)]
    pub claims: Claims,
}

/// The key behind an admin call: who it is and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub key_id: String,
    pub identity: Identity,
    /// Its capabilities within what its role allows.
    pub capabilities: Caps,
    /// min(the key's expiry, its user's).
    pub expires_at: Option<i64>,
}

/// The answer to a change-feed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// The caller must drop everything it cached: `since` is older than the retained log or
    /// newer than the store's current revision.
    Reset { revision: i64 },
    /// The distinct key ids changed after `since`, up to `revision`; `more` when the page was
    /// cut at [`CHANGES_PAGE`] rows.
    Changed {
        revision: i64,
        changed: Vec<String>,
        /// The subset of `changed` whose only events in this page are creations: a cache
        /// need only forget that they were unknown (their cached identities, if any, stay
        /// valid and may still be served stale).
        created: Vec<String>,
        more: bool,
    },
}

/// The key behind a key id, for the lookup (which answers only keys with the capability
/// `traffic`) or for an admin call (any active key).
pub(super) struct Lookup {
    pub(super) key_id: String,
}

impl Job for Lookup {
    type Out = Option<Authenticated>;
    const QUICK: bool = true;
    async fn run<D: Db>(self, db: &mut D, at: i64) -> Result<Option<Authenticated>, StoreError> {
        let args = [Arg::Text(&self.key_id), Arg::Int(at)];
        let Some(row) = first(db, sql::LOOKUP, &args).await? else {
            return Ok(None);
        };
        let mut claims = lifecycle::parse_claims(row.opt_text(4)?)?;
        claims.extend(lifecycle::parse_claims(row.opt_text(5)?)?);
        let role = row.text(2)?;
        let capabilities = authority::effective(row.opt_text(6)?.as_deref(), &role);
        let expires_at = match (row.opt_int(3)?, row.opt_int(7)?) {
            (Some(k), Some(u)) => Some(k.min(u)),
            (k, u) => k.or(u),
        };
        Ok(Some(Authenticated {
            key_id: self.key_id,
            identity: Identity {
                account_id: row.text(0)?,
                user_id: row.text(1)?,
                role,
                expires_at,
                claims,
            },
            capabilities,
            expires_at,
        }))
    }
}

pub(super) struct Revision;

impl Job for Revision {
    type Out = i64;
    async fn run<D: Db>(self, db: &mut D, _at: i64) -> Result<i64, StoreError> {
        current_revision(db).await
    }
}

pub(super) struct ChangesSince {
    pub(super) since: u64,
}

impl Job for ChangesSince {
    type Out = Changes;
    // The revision and the rows must come from the same snapshot.
    const SNAPSHOT: bool = true;

    async fn run<D: Db>(self, db: &mut D, _at: i64) -> Result<Changes, StoreError> {
        let revision = current_revision(db).await?;
        if self.since == 0 {
            return Ok(Changes::Changed {
                revision,
                changed: Vec::new(),
                created: Vec::new(),
                more: false,
            });
        }
        let since = match i64::try_from(self.since) {
            Ok(s) if s <= revision && s >= pruned_through(db).await? => s,
            _ => return Ok(Changes::Reset { revision }),
        };
        let limit = i64::try_from(CHANGES_PAGE)
            .unwrap_or(i64::MAX)
            .saturating_add(1);
        let rows: Vec<(i64, String, String)> = db
            .rows(sql::CHANGES_AFTER, &[Arg::Int(since), Arg::Int(limit)])
            .await?
            .iter()
            .map(|r| Ok((r.int(0)?, r.text(1)?, r.text(2)?)))
            .collect::<Result<_, StoreError>>()?;
        Ok(page(revision, &rows))
    }
}

/// One page of the feed from `rows` (ordered by revision, at most [`CHANGES_PAGE`] + 1 of
/// them: one more than fits says that there is more).
pub(super) fn page(revision: i64, rows: &[(i64, String, String)]) -> Changes {
    let more = rows.len() > CHANGES_PAGE;
    let page = rows.get(..CHANGES_PAGE).unwrap_or(rows);
    let revision = match (more, page.last()) {
        (true, Some((last, _, _))) => *last,
        _ => revision,
    };
    let mut seen = HashSet::with_capacity(page.len());
    let changed: Vec<String> = page
        .iter()
        .filter(|(_, key_id, _)| seen.insert(key_id.as_str()))
        .map(|(_, key_id, _)| key_id.clone())
        .collect();
    let not_only_created: HashSet<&str> = page
        .iter()
        .filter(|(_, _, kind)| kind != KIND_CREATED && kind != KIND_ENABLED)
        .map(|(_, key_id, _)| key_id.as_str())
        .collect();
    let created = changed
        .iter()
        .filter(|k| !not_only_created.contains(k.as_str()))
        .cloned()
        .collect();
    Changes::Changed {
        revision,
        changed,
        created,
        more,
    }
}

/// Records that keys were used now, at one-minute precision: a key's `last_used_at` is written
/// only when it is older than the current minute, so each key costs at most one write a minute.
pub(super) struct RecordUsage {
    pub(super) key_ids: Vec<String>,
}

impl Job for RecordUsage {
    type Out = u64;
    async fn run<D: Db>(self, db: &mut D, at: i64) -> Result<u64, StoreError> {
        let minute = at.saturating_sub(at.rem_euclid(60));
        let mut updated = 0u64;
        for key_id in &self.key_ids {
            let n = db
                .exec(sql::TOUCH_KEY, &[Arg::Int(minute), Arg::Text(key_id)])
                .await?;
            updated = updated.saturating_add(n);
        }
        Ok(updated)
    }
}
