//! Building blocks of the jobs: change-log rows and pruning, the active account and user
//! checks, granting and inserting a key, revoking keys.
//!
//! Invariant: every key whose lookup answer changes gets a change-log row (one of the
//! `KIND_*` kinds) in the same transaction as the change, so filters drop their verdict.

use super::engine::{exists, first, single_int, texts, Arg, Db};
use super::error::StoreError;
use super::lifecycle::{self, Actor, KeySpec};
use super::sql;
use crate::authority::{self, Ask, Caps, Grant, TargetUser};

/// Change-log kinds.
pub(super) const KIND_CREATED: &str = "created";
pub(super) const KIND_REVOKED: &str = "revoked";
pub(super) const KIND_ROTATED: &str = "rotated";
pub(super) const KIND_ROLE: &str = "role_changed";
pub(super) const KIND_EXPIRY: &str = "expiry_changed";
pub(super) const KIND_CLAIMS: &str = "claims_changed";
pub(super) const KIND_DISABLED: &str = "disabled";
/// A re-enabled key: like a creation, it was unknown to the lookup until now.
pub(super) const KIND_ENABLED: &str = "enabled";

pub(super) async fn current_revision<D: Db>(db: &mut D) -> Result<i64, StoreError> {
    single_int(db, sql::CURRENT_REVISION).await
}

pub(super) async fn pruned_through<D: Db>(db: &mut D) -> Result<i64, StoreError> {
    single_int(db, sql::PRUNED_THROUGH).await
}

pub(super) async fn log_change<D: Db>(
    db: &mut D,
    key_id: &str,
    kind: &str,
    at: i64,
) -> Result<(), StoreError> {
    db.exec(
        sql::INSERT_CHANGE,
        &[Arg::Text(key_id), Arg::Text(kind), Arg::Int(at)],
    )
    .await?;
    Ok(())
}

/// Deletes change-log rows older than the newest `retention` revisions.
pub(crate) async fn prune<D: Db>(db: &mut D, retention: i64) -> Result<(), StoreError> {
    let cutoff = current_revision(db).await?.saturating_sub(retention);
    if cutoff > pruned_through(db).await? {
        db.exec(sql::DELETE_CHANGES_THROUGH, &[Arg::Int(cutoff)])
            .await?;
        db.exec(sql::SET_PRUNED_THROUGH, &[Arg::Int(cutoff)])
            .await?;
    }
    Ok(())
}

pub(super) async fn require_account<D: Db>(db: &mut D, account: &str) -> Result<(), StoreError> {
    if exists(db, sql::ACCOUNT_ACTIVE, &[Arg::Text(account)]).await? {
        Ok(())
    } else {
        Err(StoreError::AccountNotFound(account.to_owned()))
    }
}

/// The role of an active user of an active account.
pub(super) async fn require_user<D: Db>(
    db: &mut D,
    account: &str,
    user: &str,
) -> Result<String, StoreError> {
    Ok(user_row(db, account, user).await?.role)
}

/// A user's role and expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub role: String,
    pub expires_at: Option<i64>,
}

impl UserRow {
    pub(crate) fn target(&self) -> TargetUser<'_> {
        TargetUser {
            role: &self.role,
            expires_at: self.expires_at,
        }
    }
}

/// An active user of an active account: its role and expiry.
pub(super) async fn user_row<D: Db>(
    db: &mut D,
    account: &str,
    user: &str,
) -> Result<UserRow, StoreError> {
    require_account(db, account).await?;
    match first(
        db,
        sql::ACTIVE_USER_ROLE,
        &[Arg::Text(account), Arg::Text(user)],
    )
    .await?
    {
        Some(row) => Ok(UserRow {
            role: row.text(0)?,
            expires_at: row.opt_int(1)?,
        }),
        None => Err(StoreError::UserNotFound {
            account: account.to_owned(),
            user: user.to_owned(),
        }),
    }
}

/// Gives `key` (holding what the call asks) the grant [`authority::derive`] allows `caller`
/// for `user`.
pub(crate) fn apply_grant(
    key: &mut KeySpec,
    caller: &Grant,
    user: TargetUser<'_>,
    replaced: Option<&authority::Replaced>,
) -> Result<(), StoreError> {
    let ask = Ask {
        caps: key.capabilities,
        expires_at: key.expires_at,
        claims: key.claims.take(),
    };
    let grant = authority::derive(caller, user, replaced, &ask).map_err(StoreError::Refused)?;
    key.capabilities = Some(grant.caps);
    key.expires_at = grant.expires_at;
    key.claims = grant.claims;
    Ok(())
}

/// The capabilities a key granted `granted` has for a user of `role` (the answer shows these).
pub(crate) fn shown(mut key: KeySpec, role: &str) -> KeySpec {
    key.capabilities = Some(authority::effective(
        key.capabilities.map(Caps::to_text).as_deref(),
        role,
    ));
    key
}

/// Inserts a key of (account, user) created by `by` (`None`: the keystore's configuration).
pub(super) async fn insert_key<D: Db>(
    db: &mut D,
    key: &KeySpec,
    account: &str,
    user: &str,
    by: Option<&Actor>,
    at: i64,
) -> Result<(), StoreError> {
    // Only an imported key can collide; checked here so the whole transaction rolls back.
    if exists(db, sql::KEY_EXISTS, &[Arg::Text(&key.key_id)]).await? {
        return Err(StoreError::KeyExists);
    }
    let created_by = by.map(Actor::name);
    let claims = lifecycle::claims_text(key.claims.as_ref())?;
    let caps = key.capabilities.map(Caps::to_text);
    db.exec(
        sql::INSERT_KEY,
        &[
            Arg::Text(&key.key_id),
            Arg::Text(account),
            Arg::Text(user),
            Arg::Int(at),
            Arg::Text(&key.name),
            Arg::OptText(key.hint.as_deref()),
            Arg::OptText(created_by.as_deref()),
            Arg::OptInt(key.expires_at),
            Arg::OptText(claims.as_deref()),
            Arg::OptText(caps.as_deref()),
        ],
    )
    .await?;
    log_change(db, &key.key_id, KIND_CREATED, at).await
}

/// Revokes the active keys of one user (or, with `user = None`, of a whole account), logging
/// each with `kind`. Returns the revoked key ids.
pub(super) async fn revoke_keys<D: Db>(
    db: &mut D,
    account: &str,
    user: Option<&str>,
    kind: &str,
    at: i64,
) -> Result<Vec<String>, StoreError> {
    let revoked = match user {
        Some(user) => {
            texts(
                db,
                sql::REVOKE_USER_KEYS,
                &[Arg::Int(at), Arg::Text(account), Arg::Text(user)],
            )
            .await?
        }
        None => {
            texts(
                db,
                sql::REVOKE_ACCOUNT_KEYS,
                &[Arg::Int(at), Arg::Text(account)],
            )
            .await?
        }
    };
    for key_id in &revoked {
        log_change(db, key_id, kind, at).await?;
    }
    Ok(revoked)
}
