//! Enabling and disabling accounts, users and keys; the leak response (find or revoke a key
//! by its value); the bounded record of refused admin calls. Jobs written once against [`Db`].
//!
//! Invariants:
//! - a disabled account, user or key is never looked up (`sql::LOOKUP`), so it cannot
//!   authenticate either; disabling and enabling append a change-log row for every
//!   unrevoked key it affects (`disabled`, or `enabled`, which the feed reports like a
//!   creation: the key was unknown until now);
//! - a leak report names a key only to a caller allowed to see it: out of scope answers exactly
//!   like an unknown key;
//! - refusal entries (`admin.refused`) are the only audit rows ever deleted: at most
//!   [`MAX_REFUSALS_KEPT`] of them are kept, the oldest go first.

use super::blocks::{log_change, require_account, KIND_DISABLED, KIND_ENABLED, KIND_REVOKED};
use super::engine::{first, texts, Arg, Db, Job, Row};
use super::error::StoreError;
use super::lifecycle::{change, Audit};
use super::lifecycle::{key_ref, Actor, Claims};
use super::sql;
use serde::Serialize;

/// Most refusal entries kept in the audit trail (older ones are deleted as new ones come).
pub const MAX_REFUSALS_KEPT: i64 = 10_000;
/// The audit action of a refused admin call.
pub const REFUSED: &str = "admin.refused";

/// The change-log kind of enabling (`true`) or disabling (`false`).
pub(crate) fn enabled_kind(enabled: bool) -> &'static str {
    if enabled {
        KIND_ENABLED
    } else {
        KIND_DISABLED
    }
}

/// Sets `disabled_at` with `statement` when the state changes, and logs `keys` if it did.
async fn switch<D: Db>(
    db: &mut D,
    was_enabled: bool,
    enabled: bool,
    statement: &'static str,
    ids: [&str; 2],
    keys: &'static str,
    at: i64,
) -> Result<(), StoreError> {
    if was_enabled == enabled {
        return Ok(());
    }
    let disabled_at = (!enabled).then_some(at);
    let [account, user] = ids;
    let (args, key_args): (Vec<Arg<'_>>, Vec<Arg<'_>>) = if user.is_empty() {
        (
            vec![Arg::OptInt(disabled_at), Arg::Text(account)],
            vec![Arg::Text(account)],
        )
    } else {
        (
            vec![
                Arg::OptInt(disabled_at),
                Arg::Text(account),
                Arg::Text(user),
            ],
            vec![Arg::Text(account), Arg::Text(user)],
        )
    };
    db.exec(statement, &args).await?;
    for key_id in texts(db, keys, &key_args).await? {
        log_change(db, &key_id, enabled_kind(enabled), at).await?;
    }
    Ok(())
}

/// Whether a user (known to exist) is enabled.
pub(crate) async fn user_enabled<D: Db>(
    db: &mut D,
    account: &str,
    user: &str,
) -> Result<bool, StoreError> {
    let args = [Arg::Text(account), Arg::Text(user)];
    Ok(match first(db, sql::USER_DISABLED_AT, &args).await? {
        Some(row) => row.opt_int(0)?.is_none(),
        None => true,
    })
}

/// Enables or disables a user (known to exist) that is now `was` enabled, logging its
/// active keys when the state changes. Writes no audit entry (its caller's job does).
pub(crate) async fn switch_user<D: Db>(
    db: &mut D,
    [account, user]: [&str; 2],
    was: bool,
    enabled: bool,
    at: i64,
) -> Result<(), StoreError> {
    let (set, keys) = (sql::SET_USER_DISABLED, sql::ACTIVE_KEYS);
    switch(db, was, enabled, set, [account, user], keys, at).await
}

/// Enables or disables an account.
pub(crate) struct SetAccountEnabled {
    pub actor: Actor,
    pub account: String,
    pub enabled: bool,
}

impl Job for SetAccountEnabled {
    type Out = ();
    async fn run<D: Db>(self, db: &mut D, at: i64) -> Result<(), StoreError> {
        let account = self.account.as_str();
        require_account(db, account).await?;
        let was = match first(db, sql::ACCOUNT_DISABLED_AT, &[Arg::Text(account)]).await? {
            Some(row) => row.opt_int(0)?.is_none(),
            None => true,
        };
        let ids = [account, ""];
        let (set, keys) = (sql::SET_ACCOUNT_DISABLED, sql::ACCOUNT_ACTIVE_KEYS);
        switch(db, was, self.enabled, set, ids, keys, at).await?;
        let detail = serde_json::json!({ "enabled": change(was, self.enabled) });
        let entry = Audit::new(&self.actor, "account.update", account, account);
        entry.detail(detail).write(db, at).await
    }
}

/// An account as shown by the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AccountInfo {
    pub account_id: String,
    /// When the account was created (RFC 3339).
    #[serde(serialize_with = "super::lifecycle::ser_time")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[schema(value_type = super::lifecycle::ClaimsDoc)]
    pub claims: Claims,
    /// `false` while the account is disabled (none of its keys is looked up).
    pub enabled: bool,
}

/// An account of a row of [`sql::ACCOUNT_ROW`] or [`sql::LIST_ACTIVE_ACCOUNTS`].
fn account_info(row: &Row) -> Result<AccountInfo, StoreError> {
    Ok(AccountInfo {
        account_id: row.text(0)?,
        created_at: row.int(1)?,
        enabled: row.opt_int(2)?.is_none(),
        claims: super::lifecycle::parse_claims(row.opt_text(3)?)?,
    })
}

pub(crate) struct ReadAccount {
    pub account: String,
}

impl Job for ReadAccount {
    type Out = AccountInfo;
    const SNAPSHOT: bool = true;
    async fn run<D: Db>(self, db: &mut D, _at: i64) -> Result<AccountInfo, StoreError> {
        match first(db, sql::ACCOUNT_ROW, &[Arg::Text(&self.account)]).await? {
            Some(row) => account_info(&row),
            None => Err(StoreError::AccountNotFound(self.account)),
        }
    }
}

/// Every active account, by account id (byte order, the same on both engines).
pub(crate) struct ListAccounts;

impl Job for ListAccounts {
    type Out = Vec<AccountInfo>;
    const SNAPSHOT: bool = true;
    async fn run<D: Db>(self, db: &mut D, _at: i64) -> Result<Vec<AccountInfo>, StoreError> {
        let rows = db.rows(sql::LIST_ACTIVE_ACCOUNTS, &[]).await?;
        let mut accounts = rows
            .iter()
            .map(account_info)
            .collect::<Result<Vec<_>, _>>()?;
        accounts.sort_by(|a, b| a.account_id.cmp(&b.account_id));
        Ok(accounts)
    }
}

/// What a leak report learns about a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct KeyState {
    pub account_id: String,
    pub user_id: String,
    /// The key reference (the first 16 hex characters of the key id).
    #[serde(rename = "key")]
    pub key_ref: String,
    pub name: String,
    /// `active`, `disabled` (the key, its user or its account), `expired` (the key or its
    /// user) or `revoked` (the key, its user or its account).
    pub state: String,
}

/// Finds (and with `revoke`, revokes) a key by key id, for a leak report. `scope`: the one
/// account the caller may see (`None`: every account, root).
pub(crate) struct FindKey {
    pub actor: Actor,
    pub key_id: String,
    pub scope: Option<String>,
    pub revoke: bool,
}

/// A key's state from a `sql::KEY_STATE` row at time `at`.
fn state_of(row: &Row, at: i64) -> Result<&'static str, StoreError> {
    let revoked = [3, 6, 8]
        .into_iter()
        .map(|i| row.opt_int(i))
        .collect::<Result<Vec<_>, _>>()?;
    let disabled = [4, 7, 9]
        .into_iter()
        .map(|i| row.opt_int(i))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(if revoked.iter().any(Option::is_some) {
        "revoked"
    } else if disabled.iter().any(Option::is_some) {
        "disabled"
    } else if [row.opt_int(5)?, row.opt_int(10)?]
        .iter()
        .flatten()
        .any(|t| *t <= at)
    {
        // The key's expiry, or its user's.
        "expired"
    } else {
        "active"
    })
}

impl Job for FindKey {
    type Out = Option<KeyState>;
    async fn run<D: Db>(self, db: &mut D, at: i64) -> Result<Option<KeyState>, StoreError> {
        let action = if self.revoke {
            "key.revoke_by_value"
        } else {
            "key.find"
        };
        let row = first(db, sql::KEY_STATE, &[Arg::Text(&self.key_id)]).await?;
        let owner = row.as_ref().map(|r| r.text(0)).transpose()?;
        let in_scope = match (&owner, &self.scope) {
            (Some(owner), Some(scope)) => owner == scope,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let row = match row {
            Some(row) if in_scope => row,
            _ => {
                // Unknown, or out of the caller's scope: recorded in the caller's own trail.
                let account = self.actor.account_id.as_str();
                let entry = Audit::new(&self.actor, action, account, "keys/find");
                let detail = serde_json::json!({ "found": false });
                entry.detail(detail).write(db, at).await?;
                return Ok(None);
            }
        };
        let before = state_of(&row, at)?;
        let (account, user) = (row.text(0)?, row.text(1)?);
        let reference = key_ref(&self.key_id).to_owned();
        let mut state = before;
        if self.revoke && row.opt_int(3)?.is_none() {
            db.exec(sql::REVOKE_KEY, &[Arg::Int(at), Arg::Text(&self.key_id)])
                .await?;
            log_change(db, &self.key_id, KIND_REVOKED, at).await?;
            state = "revoked";
        }
        let object = format!("{account}/{user}/keys/{reference}");
        let detail = serde_json::json!({ "found": true, "state": change(before, state) });
        let entry = Audit::new(&self.actor, action, &account, &object);
        entry.detail(detail).write(db, at).await?;
        Ok(Some(KeyState {
            account_id: account,
            user_id: user,
            key_ref: reference,
            name: row.text(2)?,
            state: state.to_owned(),
        }))
    }
}

/// A refused admin call (401 or 403), as recorded.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The caller, when its key was known; else empty ids and no key.
    pub actor: Actor,
    pub method: String,
    /// The route template (never the raw path).
    pub route: String,
    pub status: u16,
    pub reason: String,
}

pub(crate) struct RecordRefusal {
    pub refusal: Refusal,
    /// Refusal entries to keep (the newest).
    pub kept: i64,
}

impl Job for RecordRefusal {
    type Out = ();
    async fn run<D: Db>(self, db: &mut D, at: i64) -> Result<(), StoreError> {
        let r = &self.refusal;
        let account = if r.actor.account_id.is_empty() {
            crate::keys::SYSTEM_ACCOUNT
        } else {
            r.actor.account_id.as_str()
        };
        let detail = serde_json::json!({
            "method": r.method, "route": r.route, "status": r.status, "reason": r.reason
        });
        let entry = Audit::new(&r.actor, REFUSED, account, &r.route);
        entry.detail(detail).write(db, at).await?;
        let args = [Arg::Text(REFUSED), Arg::Int(self.kept.max(0))];
        db.exec(sql::PRUNE_AUDIT_ACTION, &args).await?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::super::engine::{Cell, Row};
    use super::state_of;

    /// A `KEY_STATE` row: the revocation and disabling times of key, user and account (all
    /// NULL), the key's and the user's expiry.
    fn row(key_expires: Option<i64>, user_expires: Option<i64>) -> Row {
        let int = |v: Option<i64>| v.map_or(Cell::Null, Cell::Int);
        let text = |s: &str| Cell::Text(s.to_owned());
        Row(vec![
            text("acme"),
            text("bob"),
            text("default"),
            Cell::Null,
            Cell::Null,
            int(key_expires),
            Cell::Null,
            Cell::Null,
            Cell::Null,
            Cell::Null,
            int(user_expires),
        ])
    }

    #[test]
    fn a_key_is_expired_when_it_or_its_user_expired() {
        assert_eq!(state_of(&row(None, None), 100).unwrap(), "active");
        assert_eq!(state_of(&row(Some(101), Some(101)), 100).unwrap(), "active");
        assert_eq!(state_of(&row(Some(100), None), 100).unwrap(), "expired");
        assert_eq!(state_of(&row(None, Some(100)), 100).unwrap(), "expired");
        let mut disabled = row(None, Some(100));
        disabled.0[7] = Cell::Int(50);
        assert_eq!(state_of(&disabled, 100).unwrap(), "disabled");
        disabled.0[8] = Cell::Int(60);
        assert_eq!(state_of(&disabled, 100).unwrap(), "revoked");
    }
}
