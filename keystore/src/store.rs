//! The SQLite-backed store.
//!
//! One writer connection behind a mutex and a few reader connections (WAL mode lets them read
//! while the writer writes). Every write runs in one `BEGIN IMMEDIATE` transaction that also
//! appends its change-log rows and prunes the change log, so nothing is ever half-written.
//! All SQLite calls run on tokio's blocking pool, never on the async workers.

use crate::keys::{ROLE_ADMIN, ROLE_ROOT, ROOT_USER, SYSTEM_ACCOUNT};
use rusqlite::{
    params, Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior,
};
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Most change-log rows returned by one [`Store::changes`] call.
pub const CHANGES_PAGE: usize = 1000;

const SCHEMA_VERSION: i64 = 1;
const READERS: usize = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE accounts (
    account_id TEXT PRIMARY KEY NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE TABLE users (
    account_id TEXT NOT NULL REFERENCES accounts(account_id),
    user_id    TEXT NOT NULL,
    role       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    PRIMARY KEY (account_id, user_id)
);
CREATE TABLE keys (
    key_id     TEXT PRIMARY KEY NOT NULL,
    account_id TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    FOREIGN KEY (account_id, user_id) REFERENCES users(account_id, user_id)
);
CREATE INDEX keys_by_user ON keys(account_id, user_id);
CREATE TABLE changes (
    revision INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id   TEXT NOT NULL,
    kind     TEXT NOT NULL,
    at       INTEGER NOT NULL
);
CREATE TABLE meta (
    name  TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
);
INSERT INTO meta (name, value) VALUES ('pruned_through', 0);
";

/// Change-log kinds.
const KIND_CREATED: &str = "created";
const KIND_REVOKED: &str = "revoked";
const KIND_ROTATED: &str = "rotated";
const KIND_ROLE: &str = "role_changed";

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("account {0} not found")]
    AccountNotFound(String),
    #[error("user {user} not found in account {account}")]
    UserNotFound { account: String, user: String },
    #[error("account {0} already exists")]
    AccountExists(String),
    #[error("user {user} already exists in account {account}")]
    UserExists { account: String, user: String },
    /// The key id is already in the store (active or revoked). The message never says whose.
    #[error("user_key is already in use or was used before; keys are never reused")]
    KeyExists,
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("{0}")]
    Internal(String),
}

/// Who an active key belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub account_id: String,
    pub user_id: String,
    pub role: String,
}

/// A user as listed by the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    pub user_id: String,
    pub role: String,
    pub created_at: i64,
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

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    retention: i64,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn lock(m: &Mutex<Connection>) -> Result<MutexGuard<'_, Connection>, StoreError> {
    m.lock()
        .map_err(|_| StoreError::Internal("database connection lock poisoned".into()))
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Internal(format!(
            "could not switch the database to WAL mode (journal_mode is {mode})"
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Internal(format!(
            "database schema version {version} is newer than this keystore supports ({SCHEMA_VERSION})"
        )));
    }
    if version < 1 {
        tx.execute_batch(SCHEMA)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()?;
    Ok(())
}

fn current_revision(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row(
        "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'changes'), 0)",
        [],
        |row| row.get(0),
    )?)
}

fn pruned_through(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row(
        "SELECT value FROM meta WHERE name = 'pruned_through'",
        [],
        |row| row.get(0),
    )?)
}

fn log_change(tx: &Transaction<'_>, key_id: &str, kind: &str, at: i64) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT INTO changes (key_id, kind, at) VALUES (?1, ?2, ?3)")?
        .execute(params![key_id, kind, at])?;
    Ok(())
}

/// Deletes change-log rows beyond the newest `retention`.
fn prune(conn: &Connection, retention: i64) -> Result<(), StoreError> {
    let cutoff = current_revision(conn)?.saturating_sub(retention);
    if cutoff > pruned_through(conn)? {
        conn.execute("DELETE FROM changes WHERE revision <= ?1", [cutoff])?;
        conn.execute(
            "UPDATE meta SET value = ?1 WHERE name = 'pruned_through'",
            [cutoff],
        )?;
    }
    Ok(())
}

fn account_active(tx: &Connection, account: &str) -> Result<bool, StoreError> {
    Ok(tx
        .prepare_cached("SELECT 1 FROM accounts WHERE account_id = ?1 AND revoked_at IS NULL")?
        .exists([account])?)
}

fn require_account(tx: &Connection, account: &str) -> Result<(), StoreError> {
    if account_active(tx, account)? {
        Ok(())
    } else {
        Err(StoreError::AccountNotFound(account.to_owned()))
    }
}

/// The role of an active user of an active account.
fn require_user(tx: &Connection, account: &str, user: &str) -> Result<String, StoreError> {
    require_account(tx, account)?;
    tx.prepare_cached(
        "SELECT role FROM users WHERE account_id = ?1 AND user_id = ?2 AND revoked_at IS NULL",
    )?
    .query_row([account, user], |row| row.get(0))
    .optional()?
    .ok_or_else(|| StoreError::UserNotFound {
        account: account.to_owned(),
        user: user.to_owned(),
    })
}

fn insert_key(
    tx: &Transaction<'_>,
    key_id: &str,
    account: &str,
    user: &str,
    at: i64,
) -> Result<(), StoreError> {
    // Only an imported key can collide; checked here so the whole transaction rolls back.
    let exists = tx
        .prepare_cached("SELECT 1 FROM keys WHERE key_id = ?1")?
        .exists([key_id])?;
    if exists {
        return Err(StoreError::KeyExists);
    }
    tx.prepare_cached(
        "INSERT INTO keys (key_id, account_id, user_id, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![key_id, account, user, at])?;
    log_change(tx, key_id, KIND_CREATED, at)
}

/// Revokes the active keys of one user (or, with `user = None`, of a whole account), logging
/// each with `kind`. Returns the revoked key ids.
fn revoke_keys(
    tx: &Transaction<'_>,
    account: &str,
    user: Option<&str>,
    kind: &str,
    at: i64,
) -> Result<Vec<String>, StoreError> {
    let revoked: Vec<String> = match user {
        Some(user) => tx
            .prepare_cached(
                "UPDATE keys SET revoked_at = ?1 \
                 WHERE account_id = ?2 AND user_id = ?3 AND revoked_at IS NULL RETURNING key_id",
            )?
            .query_map(params![at, account, user], |row| row.get(0))?
            .collect::<Result<_, _>>()?,
        None => tx
            .prepare_cached(
                "UPDATE keys SET revoked_at = ?1 \
                 WHERE account_id = ?2 AND revoked_at IS NULL RETURNING key_id",
            )?
            .query_map(params![at, account], |row| row.get(0))?
            .collect::<Result<_, _>>()?,
    };
    for key_id in &revoked {
        log_change(tx, key_id, kind, at)?;
    }
    Ok(revoked)
}

fn active_keys(tx: &Connection, account: &str, user: &str) -> Result<Vec<String>, StoreError> {
    Ok(tx
        .prepare_cached(
            "SELECT key_id FROM keys WHERE account_id = ?1 AND user_id = ?2 AND revoked_at IS NULL",
        )?
        .query_map([account, user], |row| row.get(0))?
        .collect::<Result<_, _>>()?)
}

impl Store {
    /// Opens (creating if needed) the database at `path`, keeping `changes_retention` rows of
    /// change log (at least 1).
    pub fn open(path: &Path, changes_retention: u64) -> Result<Store, StoreError> {
        let mut writer = Connection::open(path)?;
        configure(&writer)?;
        migrate(&mut writer)?;
        let retention = i64::try_from(changes_retention.max(1)).unwrap_or(i64::MAX);
        // Apply a lowered retention straight away.
        {
            let tx = writer.transaction_with_behavior(TransactionBehavior::Immediate)?;
            prune(&tx, retention)?;
            tx.commit()?;
        }
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | OpenFlags::SQLITE_OPEN_URI,
            )?;
            configure(&conn)?;
            conn.pragma_update(None, "query_only", "ON")?;
            readers.push(Mutex::new(conn));
        }
        Ok(Store {
            inner: Arc::new(Inner {
                writer: Mutex::new(writer),
                readers,
                next_reader: AtomicUsize::new(0),
                retention,
            }),
        })
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let n = inner.next_reader.fetch_add(1, Ordering::Relaxed);
            let slot = n
                .checked_rem(inner.readers.len())
                .and_then(|i| inner.readers.get(i))
                .ok_or_else(|| StoreError::Internal("no reader connection".into()))?;
            let mut conn = lock(slot)?;
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Internal(format!("database task failed: {e}")))?
    }

    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, i64) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut conn = lock(&inner.writer)?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx, now())?;
            prune(&tx, inner.retention)?;
            tx.commit()?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Internal(format!("database task failed: {e}")))?
    }

    /// The identity behind an active key id (key, user and account all unrevoked).
    pub async fn lookup(&self, key_id: String) -> Result<Option<Identity>, StoreError> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT k.account_id, k.user_id, u.role FROM keys k \
                     JOIN users u ON u.account_id = k.account_id AND u.user_id = k.user_id \
                     JOIN accounts a ON a.account_id = k.account_id \
                     WHERE k.key_id = ?1 AND k.revoked_at IS NULL \
                       AND u.revoked_at IS NULL AND a.revoked_at IS NULL",
                )?
                .query_row([&key_id], |row| {
                    Ok(Identity {
                        account_id: row.get(0)?,
                        user_id: row.get(1)?,
                        role: row.get(2)?,
                    })
                })
                .optional()?)
        })
        .await
    }

    /// The current revision of the change log (0 when nothing ever changed).
    pub async fn revision(&self) -> Result<i64, StoreError> {
        self.read(|conn| current_revision(conn)).await
    }

    /// The change feed after revision `since` (see [`Changes`]).
    pub async fn changes(&self, since: u64) -> Result<Changes, StoreError> {
        self.read(move |conn| {
            // One read transaction: the revision and the rows come from the same snapshot.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let revision = current_revision(&tx)?;
            if since == 0 {
                return Ok(Changes::Changed {
                    revision,
                    changed: Vec::new(),
                    created: Vec::new(),
                    more: false,
                });
            }
            let since = match i64::try_from(since) {
                Ok(s) if s <= revision && s >= pruned_through(&tx)? => s,
                _ => return Ok(Changes::Reset { revision }),
            };
            let limit = i64::try_from(CHANGES_PAGE)
                .unwrap_or(i64::MAX)
                .saturating_add(1);
            let rows: Vec<(i64, String, String)> = tx
                .prepare_cached(
                    "SELECT revision, key_id, kind FROM changes WHERE revision > ?1 \
                     ORDER BY revision LIMIT ?2",
                )?
                .query_map([since, limit], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })?
                .collect::<Result<_, _>>()?;
            let more = rows.len() > CHANGES_PAGE;
            let page = rows.get(..CHANGES_PAGE).unwrap_or(&rows);
            let revision = match (more, page.last()) {
                (true, Some((last, _, _))) => *last,
                _ => revision,
            };
            let mut seen = std::collections::HashSet::with_capacity(page.len());
            let changed: Vec<String> = page
                .iter()
                .filter(|(_, key_id, _)| seen.insert(key_id.as_str()))
                .map(|(_, key_id, _)| key_id.clone())
                .collect();
            let not_only_created: std::collections::HashSet<&str> = page
                .iter()
                .filter(|(_, _, kind)| kind != KIND_CREATED)
                .map(|(_, key_id, _)| key_id.as_str())
                .collect();
            let created = changed
                .iter()
                .filter(|k| !not_only_created.contains(k.as_str()))
                .cloned()
                .collect();
            Ok(Changes::Changed {
                revision,
                changed,
                created,
                more,
            })
        })
        .await
    }

    /// Makes `key_id` the one active key of user `root` (role `root`) in account `_system`,
    /// creating the account and user as needed and revoking any other root key.
    pub async fn upsert_root_key(&self, key_id: String) -> Result<(), StoreError> {
        self.write(move |tx, at| {
            let account_changed = tx.execute(
                "INSERT INTO accounts (account_id, created_at) VALUES (?1, ?2) \
                 ON CONFLICT (account_id) DO UPDATE SET revoked_at = NULL \
                 WHERE revoked_at IS NOT NULL",
                params![SYSTEM_ACCOUNT, at],
            )?;
            let user_changed = tx.execute(
                "INSERT INTO users (account_id, user_id, role, created_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (account_id, user_id) DO UPDATE SET role = ?3, revoked_at = NULL \
                 WHERE revoked_at IS NOT NULL OR role <> ?3",
                params![SYSTEM_ACCOUNT, ROOT_USER, ROLE_ROOT, at],
            )?;
            let existing: Option<(String, String, Option<i64>)> = tx
                .query_row(
                    "SELECT account_id, user_id, revoked_at FROM keys WHERE key_id = ?1",
                    [&key_id],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()?;
            match existing {
                None => insert_key(tx, &key_id, SYSTEM_ACCOUNT, ROOT_USER, at)?,
                Some((account, user, _)) if account != SYSTEM_ACCOUNT || user != ROOT_USER => {
                    return Err(StoreError::Internal(
                        "the configured root key is already issued to another user".into(),
                    ));
                }
                Some((_, _, Some(_))) => {
                    tx.execute(
                        "UPDATE keys SET revoked_at = NULL WHERE key_id = ?1",
                        [&key_id],
                    )?;
                    log_change(tx, &key_id, KIND_CREATED, at)?;
                }
                Some((_, _, None)) => {
                    if account_changed > 0 || user_changed > 0 {
                        log_change(tx, &key_id, KIND_CREATED, at)?;
                    }
                }
            }
            let others: Vec<String> = tx
                .prepare(
                    "UPDATE keys SET revoked_at = ?1 WHERE account_id = ?2 AND user_id = ?3 \
                     AND key_id <> ?4 AND revoked_at IS NULL RETURNING key_id",
                )?
                .query_map(params![at, SYSTEM_ACCOUNT, ROOT_USER, key_id], |row| {
                    row.get(0)
                })?
                .collect::<Result<_, _>>()?;
            for old in &others {
                log_change(tx, old, KIND_REVOKED, at)?;
            }
            Ok(())
        })
        .await
    }

    /// Creates an account and its admin user (role `admin`) holding key `key_id`.
    pub async fn create_account(
        &self,
        account: String,
        admin_user: String,
        key_id: String,
    ) -> Result<(), StoreError> {
        self.write(move |tx, at| {
            let exists = tx
                .prepare_cached("SELECT 1 FROM accounts WHERE account_id = ?1")?
                .exists([&account])?;
            if exists {
                return Err(StoreError::AccountExists(account));
            }
            tx.execute(
                "INSERT INTO accounts (account_id, created_at) VALUES (?1, ?2)",
                params![account, at],
            )?;
            tx.execute(
                "INSERT INTO users (account_id, user_id, role, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![account, admin_user, ROLE_ADMIN, at],
            )?;
            insert_key(tx, &key_id, &account, &admin_user, at)
        })
        .await
    }

    /// Creates a user with `role` holding key `key_id` in an active account. User ids are never
    /// reused, not even those of revoked users.
    pub async fn create_user(
        &self,
        account: String,
        user: String,
        role: String,
        key_id: String,
    ) -> Result<(), StoreError> {
        self.write(move |tx, at| {
            require_account(tx, &account)?;
            let exists = tx
                .prepare_cached("SELECT 1 FROM users WHERE account_id = ?1 AND user_id = ?2")?
                .exists([&account, &user])?;
            if exists {
                return Err(StoreError::UserExists { account, user });
            }
            tx.execute(
                "INSERT INTO users (account_id, user_id, role, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![account, user, role, at],
            )?;
            insert_key(tx, &key_id, &account, &user, at)
        })
        .await
    }

    /// Replaces the user's active key(s) with `new_key_id`. Returns the revoked key ids.
    pub async fn rotate_key(
        &self,
        account: String,
        user: String,
        new_key_id: String,
    ) -> Result<Vec<String>, StoreError> {
        self.write(move |tx, at| {
            require_user(tx, &account, &user)?;
            let revoked = revoke_keys(tx, &account, Some(&user), KIND_ROTATED, at)?;
            insert_key(tx, &new_key_id, &account, &user, at)?;
            Ok(revoked)
        })
        .await
    }

    /// Changes a user's role; each of its active keys is logged as changed. Returns the
    /// previous role.
    pub async fn set_role(
        &self,
        account: String,
        user: String,
        role: String,
    ) -> Result<String, StoreError> {
        self.write(move |tx, at| {
            let previous = require_user(tx, &account, &user)?;
            if previous != role {
                tx.execute(
                    "UPDATE users SET role = ?1 WHERE account_id = ?2 AND user_id = ?3",
                    params![role, account, user],
                )?;
                for key_id in active_keys(tx, &account, &user)? {
                    log_change(tx, &key_id, KIND_ROLE, at)?;
                }
            }
            Ok(previous)
        })
        .await
    }

    /// Revokes a user and its keys. Returns the number of keys revoked.
    pub async fn revoke_user(&self, account: String, user: String) -> Result<usize, StoreError> {
        self.write(move |tx, at| {
            require_user(tx, &account, &user)?;
            let revoked = revoke_keys(tx, &account, Some(&user), KIND_REVOKED, at)?;
            tx.execute(
                "UPDATE users SET revoked_at = ?1 WHERE account_id = ?2 AND user_id = ?3",
                params![at, account, user],
            )?;
            Ok(revoked.len())
        })
        .await
    }

    /// Revokes an account, its users and all their keys. Returns the number of keys revoked.
    pub async fn revoke_account(&self, account: String) -> Result<usize, StoreError> {
        self.write(move |tx, at| {
            require_account(tx, &account)?;
            let revoked = revoke_keys(tx, &account, None, KIND_REVOKED, at)?;
            tx.execute(
                "UPDATE users SET revoked_at = ?1 WHERE account_id = ?2 AND revoked_at IS NULL",
                params![at, account],
            )?;
            tx.execute(
                "UPDATE accounts SET revoked_at = ?1 WHERE account_id = ?2",
                params![at, account],
            )?;
            Ok(revoked.len())
        })
        .await
    }

    /// The active users of an active account, by user id.
    pub async fn list_users(&self, account: String) -> Result<Vec<UserInfo>, StoreError> {
        self.read(move |conn| {
            require_account(conn, &account)?;
            Ok(conn
                .prepare_cached(
                    "SELECT user_id, role, created_at FROM users \
                     WHERE account_id = ?1 AND revoked_at IS NULL ORDER BY user_id",
                )?
                .query_map([&account], |row| {
                    Ok(UserInfo {
                        user_id: row.get(0)?,
                        role: row.get(1)?,
                        created_at: row.get(2)?,
                    })
                })?
                .collect::<Result<_, _>>()?)
        })
        .await
    }
}
