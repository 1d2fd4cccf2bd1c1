//! The configured root key: installed (or revived) as the one active key of user `root` in
//! account `_system`, or revoked when the keystore starts without one.
//!
//! Invariant: at most one root key is active; installing one revokes any other, and each
//! change is audited as the configuration's act.

use super::blocks::{insert_key, log_change, revoke_keys, KIND_CREATED, KIND_REVOKED};
use super::engine::{first, texts, Arg, Db, Job};
use super::error::StoreError;
use super::lifecycle::{self, key_ref, Actor, KeySpec};
use super::sql;
use crate::keys::{ROLE_ROOT, ROOT_USER, SYSTEM_ACCOUNT};

pub(super) struct UpsertRootKey {
    pub(super) key_id: String,
}

impl Job for UpsertRootKey {
    type Out = ();
    async fn run<D: Db>(self, db: &mut D, at: i64) -> Result<(), StoreError> {
        let key_id = self.key_id.as_str();
        let installed = install_root_key(db, key_id, at).await?;
        let others = texts(
            db,
            sql::REVOKE_OTHER_KEYS,
            &[
                Arg::Int(at),
                Arg::Text(SYSTEM_ACCOUNT),
                Arg::Text(ROOT_USER),
                Arg::Text(key_id),
            ],
        )
        .await?;
        for old in &others {
            log_change(db, old, KIND_REVOKED, at).await?;
        }
        let action = match installed {
            // A revoked key coming back is a revival, whatever it replaces.
            Some("root_key.install") if !others.is_empty() => "root_key.replace",
            Some(action) => action,
            None => return Ok(()),
        };
        let revoked: Vec<&str> = others.iter().map(|k| key_ref(k)).collect();
        let detail = serde_json::json!({ "key": key_ref(key_id), "revoked": revoked });
        let actor = Actor::configuration();
        let entry = lifecycle::Audit::new(&actor, action, SYSTEM_ACCOUNT, ROOT_OBJECT);
        entry.detail(detail).write(db, at).await
    }
}

/// The audit object of the root key's user.
pub(super) const ROOT_OBJECT: &str = "_system/root";

/// Makes `key_id` an active key of the root user; what that was (`root_key.install` for a new
/// key, `root_key.revive` for a revoked one), or `None` if it was active already.
pub(super) async fn install_root_key<D: Db>(
    db: &mut D,
    key_id: &str,
    at: i64,
) -> Result<Option<&'static str>, StoreError> {
    let account_args = [Arg::Text(SYSTEM_ACCOUNT), Arg::Int(at)];
    let account_changed = db.exec(sql::UPSERT_ACCOUNT, &account_args).await?;
    let user_args = [
        Arg::Text(SYSTEM_ACCOUNT),
        Arg::Text(ROOT_USER),
        Arg::Text(ROLE_ROOT),
        Arg::Int(at),
    ];
    let user_changed = db.exec(sql::UPSERT_USER, &user_args).await?;
    let existing = match first(db, sql::KEY_OWNER, &[Arg::Text(key_id)]).await? {
        Some(row) => Some((row.text(0)?, row.text(1)?, row.opt_int(2)?)),
        None => None,
    };
    match existing {
        None => {
            let key = KeySpec::named(key_id.to_owned(), lifecycle::DEFAULT_KEY_NAME);
            insert_key(db, &key, SYSTEM_ACCOUNT, ROOT_USER, None, at).await?;
            Ok(Some("root_key.install"))
        }
        Some((account, user, _)) if account != SYSTEM_ACCOUNT || user != ROOT_USER => {
            Err(StoreError::Internal(
                "the configured root key is already issued to another user".into(),
            ))
        }
        Some((_, _, Some(_))) => {
            db.exec(sql::UNREVOKE_KEY, &[Arg::Text(key_id)]).await?;
            log_change(db, key_id, KIND_CREATED, at).await?;
            Ok(Some("root_key.revive"))
        }
        Some((_, _, None)) => {
            if account_changed > 0 || user_changed > 0 {
                log_change(db, key_id, KIND_CREATED, at).await?;
            }
            Ok(None)
        }
    }
}

/// Revokes the root user's keys: a keystore started without a root key honours none.
pub(super) struct RemoveRootKey;

impl Job for RemoveRootKey {
    type Out = Vec<String>;
    async fn run<D: Db>(self, db: &mut D, at: i64) -> Result<Vec<String>, StoreError> {
        let revoked = revoke_keys(db, SYSTEM_ACCOUNT, Some(ROOT_USER), KIND_REVOKED, at).await?;
        if !revoked.is_empty() {
            let refs: Vec<&str> = revoked.iter().map(|k| key_ref(k)).collect();
            let detail = serde_json::json!({ "revoked": refs });
            let actor = Actor::configuration();
            let entry =
                lifecycle::Audit::new(&actor, "root_key.remove", SYSTEM_ACCOUNT, ROOT_OBJECT);
            entry.detail(detail).write(db, at).await?;
        }
        Ok(revoked)
    }
}
