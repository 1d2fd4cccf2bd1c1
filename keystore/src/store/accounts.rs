//! Account and user jobs: create, list, patch (role, expiry, enabled) and revoke accounts and
//! users, and rotate a user's keys. (Per-key jobs live in `lifecycle.rs`, the root key's in
//! `root_key.rs`.)
//!
//! Invariants: a refused call changes nothing (every permission check runs before the first
//! write); every write appends one audit row and a change-log row for each key it affects.

use super::admin;
use super::blocks::{
    apply_grant, insert_key, log_change, require_account, require_user, revoke_keys, shown,
    user_row, UserRow, KIND_EXPIRY, KIND_REVOKED, KIND_ROLE, KIND_ROTATED,
};
use super::engine::{exists, texts, Arg, Db, Job};
use super::error::StoreError;
use super::lifecycle::{self, key_ref, rfc3339, Actor, KeySpec};
use super::sql;
use crate::authority::{self, Grant, TargetUser};
use crate::keys::ROLE_ADMIN;
use serde::Serialize;
use std::sync::Arc;

/// A user as listed by the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UserInfo {
    pub user_id: String,
    pub role: String,
    /// When the user was created (RFC 3339).
    #[serde(serialize_with = "super::lifecycle::ser_time")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    /// `false` while the user is disabled (its keys are not looked up).
    pub enabled: bool,
    /// When the user (and so every key of it) expires (RFC 3339); absent: never.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "super::lifecycle::ser_opt_time"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<i64>,
}

pub(super) struct ListUsers {
    pub(super) account: String,
}

impl Job for ListUsers {
    type Out = Vec<UserInfo>;
    async fn run<D: Db>(self, db: &mut D, _at: i64) -> Result<Vec<UserInfo>, StoreError> {
        require_account(db, &self.account).await?;
        let mut users = db
            .rows(sql::LIST_ACTIVE_USERS, &[Arg::Text(&self.account)])
            .await?
            .iter()
            .map(|r| {
                Ok(UserInfo {
                    user_id: r.text(0)?,
                    role: r.text(1)?,
                    created_at: r.int(2)?,
                    enabled: r.opt_int(3)?.is_none(),
                    expires_at: r.opt_int(4)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // Byte order, the same on both engines whatever the database's collation.
        users.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok(users)
    }
}

pub(super) struct CreateAccount {
    pub(super) actor: Actor,
    pub(super) grant: Grant,
    pub(super) account: String,
    pub(super) admin_user: String,
    pub(super) key: KeySpec,
}

impl Job for CreateAccount {
    type Out = ();
    async fn run<D: Db>(mut self, db: &mut D, at: i64) -> Result<(), StoreError> {
        if exists(db, sql::ACCOUNT_EXISTS, &[Arg::Text(&self.account)]).await? {
            return Err(StoreError::AccountExists(self.account));
        }
        db.exec(
            sql::INSERT_ACCOUNT,
            &[Arg::Text(&self.account), Arg::Int(at)],
        )
        .await?;
        db.exec(
            sql::INSERT_USER,
            &[
                Arg::Text(&self.account),
                Arg::Text(&self.admin_user),
                Arg::Text(ROLE_ADMIN),
                Arg::Int(at),
                Arg::OptInt(None),
            ],
        )
        .await?;
        let (account, user) = (self.account.as_str(), self.admin_user.as_str());
        let admin = TargetUser {
            role: ROLE_ADMIN,
            expires_at: None,
        };
        apply_grant(&mut self.key, &self.grant, admin, None)?;
        insert_key(db, &self.key, account, user, Some(&self.actor), at).await?;
        let detail = serde_json::json!({ "admin_user_id": user, "key": key_ref(&self.key.key_id) });
        let entry = lifecycle::Audit::new(&self.actor, "account.create", account, account);
        entry.detail(detail).write(db, at).await
    }
}

pub(super) struct CreateUser {
    pub(super) actor: Actor,
    pub(super) grant: Grant,
    pub(super) account: String,
    pub(super) user: String,
    pub(super) role: String,
    /// The user's expiry (its keys are capped at it).
    pub(super) expires_at: Option<i64>,
    pub(super) key: KeySpec,
}

impl Job for CreateUser {
    type Out = KeySpec;
    async fn run<D: Db>(mut self, db: &mut D, at: i64) -> Result<KeySpec, StoreError> {
        require_account(db, &self.account).await?;
        let user_args = [Arg::Text(&self.account), Arg::Text(&self.user)];
        if exists(db, sql::USER_EXISTS, &user_args).await? {
            return Err(StoreError::UserExists {
                account: self.account,
                user: self.user,
            });
        }
        db.exec(
            sql::INSERT_USER,
            &[
                Arg::Text(&self.account),
                Arg::Text(&self.user),
                Arg::Text(&self.role),
                Arg::Int(at),
                Arg::OptInt(self.expires_at),
            ],
        )
        .await?;
        let (account, user) = (self.account.as_str(), self.user.as_str());
        let target = TargetUser {
            role: &self.role,
            expires_at: self.expires_at,
        };
        apply_grant(&mut self.key, &self.grant, target, None)?;
        insert_key(db, &self.key, account, user, Some(&self.actor), at).await?;
        let detail = serde_json::json!({
            "role": self.role, "key": key_ref(&self.key.key_id),
            "expires_at": self.expires_at.map(rfc3339)
        });
        let object = format!("{account}/{user}");
        let entry = lifecycle::Audit::new(&self.actor, "user.create", account, &object);
        entry.detail(detail).write(db, at).await?;
        Ok(shown(self.key, &self.role))
    }
}

pub(super) struct RotateKey {
    pub(super) actor: Actor,
    pub(super) grant: Grant,
    pub(super) account: String,
    pub(super) user: String,
    pub(super) key: KeySpec,
    pub(super) grace_s: i64,
}

impl Job for RotateKey {
    /// The keys revoked or put in their grace, and the new key as granted.
    type Out = (Vec<String>, KeySpec);
    async fn run<D: Db>(mut self, db: &mut D, at: i64) -> Result<Self::Out, StoreError> {
        let (account, user) = (self.account.as_str(), self.user.as_str());
        let row = user_row(db, account, user).await?;
        apply_grant(&mut self.key, &self.grant, row.target(), None)?;
        lifecycle::check_creation_rate(db, account, user, &self.grant, at).await?;
        let old = if self.grace_s == 0 {
            revoke_keys(db, account, Some(user), KIND_ROTATED, at).await?
        } else {
            let until = at.saturating_add(self.grace_s);
            let args = [Arg::Int(until), Arg::Text(account), Arg::Text(user)];
            let expiring = texts(db, sql::EXPIRE_USER_KEYS, &args).await?;
            for key_id in &expiring {
                log_change(db, key_id, KIND_EXPIRY, at).await?;
            }
            lifecycle::demote_to_grace(db, account, user).await?;
            expiring
        };
        lifecycle::check_room(db, account, user, at).await?;
        insert_key(db, &self.key, account, user, Some(&self.actor), at).await?;
        let old_refs: Vec<&str> = old.iter().map(|k| key_ref(k)).collect();
        let detail = serde_json::json!({
            "key": key_ref(&self.key.key_id), "old_keys": old_refs, "grace_s": self.grace_s,
            "expires_at": self.key.expires_at.map(lifecycle::rfc3339),
        });
        let object = format!("{account}/{user}");
        let entry = lifecycle::Audit::new(&self.actor, "user.rotate_key", account, &object);
        entry.detail(detail).write(db, at).await?;
        Ok((old, shown(self.key, &row.role)))
    }
}

/// A change of a user's role and/or expiry.
pub(super) struct PatchUser {
    pub(super) actor: Actor,
    pub(super) grant: Grant,
    pub(super) roles: Arc<authority::RoleRegistry>,
    pub(super) account: String,
    pub(super) user: String,
    /// Canonical, and one the caller may grant (checked by the handler).
    pub(super) role: Option<String>,
    /// `Some(None)`: no expiry (as late as the caller may give).
    pub(super) expires_at: Option<Option<i64>>,
    /// `Some(false)`: disable the user; `Some(true)`: enable it again.
    pub(super) enabled: Option<bool>,
}

/// A user after a [`Store::patch_user`]: its role, expiry and whether it is enabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchedUser {
    pub before: UserRow,
    pub after: UserRow,
    pub enabled: bool,
}

impl Job for PatchUser {
    /// Every permission check runs before the first write, so a refused call changes nothing;
    /// one audit entry holds before and after of every field asked for.
    type Out = PatchedUser;
    async fn run<D: Db>(self, db: &mut D, at: i64) -> Result<Self::Out, StoreError> {
        let (account, user) = (self.account.as_str(), self.user.as_str());
        let before = user_row(db, account, user).await?;
        self.roles
            .may_change(&self.grant, &before.role)
            .map_err(StoreError::Refused)?;
        let role = self.role.clone().unwrap_or_else(|| before.role.clone());
        let expires_at = match self.expires_at {
            None => before.expires_at,
            Some(asked) => {
                let own = self.actor.account_id == account && self.actor.user_id == user;
                authority::user_expiry(&self.grant, own, before.expires_at, asked)
                    .map_err(StoreError::Refused)?
            }
        };
        let was_enabled = admin::user_enabled(db, account, user).await?;
        let enabled = self.enabled.unwrap_or(was_enabled);
        let user_args = [Arg::Text(account), Arg::Text(user)];
        if role != before.role {
            let args = [Arg::Text(&role), Arg::Text(account), Arg::Text(user)];
            db.exec(sql::SET_ROLE, &args).await?;
            for key_id in texts(db, sql::ACTIVE_KEYS, &user_args).await? {
                log_change(db, &key_id, KIND_ROLE, at).await?;
            }
        }
        if expires_at != before.expires_at {
            let args = [Arg::OptInt(expires_at), Arg::Text(account), Arg::Text(user)];
            db.exec(sql::SET_USER_EXPIRY, &args).await?;
            for key_id in texts(db, sql::ACTIVE_KEYS, &user_args).await? {
                log_change(db, &key_id, KIND_EXPIRY, at).await?;
            }
        }
        admin::switch_user(db, [account, user], was_enabled, enabled, at).await?;
        let mut detail = serde_json::Map::new();
        if self.role.is_some() {
            detail.insert("role".into(), lifecycle::change(&before.role, &role));
        }
        if self.expires_at.is_some() {
            let change = lifecycle::change(before.expires_at.map(rfc3339), expires_at.map(rfc3339));
            detail.insert("expires_at".into(), change);
        }
        if self.enabled.is_some() {
            detail.insert("enabled".into(), lifecycle::change(was_enabled, enabled));
        }
        let object = format!("{account}/{user}");
        let entry = lifecycle::Audit::new(&self.actor, "user.update", account, &object);
        entry
            .detail(serde_json::Value::Object(detail))
            .write(db, at)
            .await?;
        let after = UserRow { role, expires_at };
        Ok(PatchedUser {
            before,
            after,
            enabled,
        })
    }
}

pub(super) struct RevokeUser {
    pub(super) actor: Actor,
    pub(super) account: String,
    pub(super) user: String,
}

impl Job for RevokeUser {
    type Out = usize;
    async fn run<D: Db>(self, db: &mut D, at: i64) -> Result<usize, StoreError> {
        require_user(db, &self.account, &self.user).await?;
        let revoked = revoke_keys(db, &self.account, Some(&self.user), KIND_REVOKED, at).await?;
        db.exec(
            sql::REVOKE_USER,
            &[
                Arg::Int(at),
                Arg::Text(&self.account),
                Arg::Text(&self.user),
            ],
        )
        .await?;
        let object = format!("{}/{}", self.account, self.user);
        let entry = lifecycle::Audit::new(&self.actor, "user.revoke", &self.account, &object);
        entry
            .detail(serde_json::json!({ "keys": revoked.len() }))
            .write(db, at)
            .await?;
        Ok(revoked.len())
    }
}

pub(super) struct RevokeAccount {
    pub(super) actor: Actor,
    pub(super) account: String,
}

impl Job for RevokeAccount {
    type Out = usize;
    async fn run<D: Db>(self, db: &mut D, at: i64) -> Result<usize, StoreError> {
        require_account(db, &self.account).await?;
        let revoked = revoke_keys(db, &self.account, None, KIND_REVOKED, at).await?;
        let args = [Arg::Int(at), Arg::Text(&self.account)];
        db.exec(sql::REVOKE_ACCOUNT_USERS, &args).await?;
        db.exec(sql::REVOKE_ACCOUNT, &args).await?;
        let account = self.account.as_str();
        let entry = lifecycle::Audit::new(&self.actor, "account.revoke", account, account);
        entry
            .detail(serde_json::json!({ "keys": revoked.len() }))
            .write(db, at)
            .await?;
        Ok(revoked.len())
    }
}
