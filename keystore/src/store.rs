//! The store: accounts, users, keys and the change log, on SQLite or PostgreSQL.
//!
//! Both engines sit behind one interface: a backend runs a [`Job`] either as a read or as a
//! write transaction, and every job is written once, against the [`Db`] trait (run a
//! statement, fetch rows), with the SQL text of [`sql`] shared by both engines. So the rules
//! (who may be created, what is logged as changed, how the feed is paged) cannot drift apart.
//!
//! - [`sqlite`]: one writer connection behind a mutex and a few reader connections (WAL mode);
//!   every write is one `BEGIN IMMEDIATE` transaction; all calls run on tokio's blocking pool.
//! - [`postgres`]: a connection pool; any number of keystore processes may share one
//!   database. Every write transaction first locks one row (`meta.writer`), so writers take
//!   turns and change-log revisions (a `BIGSERIAL`) become visible in the order they were
//!   drawn: a poller that has seen revision N has seen every revision below N.
//!
//! Each write also appends its change-log rows and prunes the change log, in the same
//! transaction, so nothing is ever half-written; each admin write appends its audit row in
//! that transaction too (see [`lifecycle`]: named keys, expiry, rotation with a grace period,
//! last use, claims, the audit trail). The schema is migrated at start-up, step by step, from
//! whatever version the database holds (see [`SCHEMA_VERSION`] and [`steps_after`]).

mod admin;
mod lifecycle;
mod pg_tls;
mod postgres;
mod sql;
mod sqlite;

pub(crate) use admin::enabled_kind;
pub use admin::{AccountInfo, KeyState, Refusal, MAX_REFUSALS_KEPT, REFUSED};
pub use lifecycle::{
    hint, key_ref, parse_rfc3339, rfc3339, validate_claims, Actor, AuditEntry, AuditPage, Claims,
    ClaimsDoc, KeyInfo, KeyPatch, KeySpec, Target, DEFAULT_KEY_NAME, KEY_REF_LEN, MAX_AUDIT_PAGE,
};

use crate::authority::{self, Ask, Caps, Grant, TargetUser};
use crate::keys::{ROLE_ADMIN, ROLE_ROOT, ROOT_USER, SYSTEM_ACCOUNT};
use crate::metrics::Metrics;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Most change-log rows returned by one [`Store::changes`] call.
pub const CHANGES_PAGE: usize = 1000;

/// The schema version this keystore writes: version 1 plus one per migration step.
pub(crate) const SCHEMA_VERSION: i64 = 4;
const _: () = assert!(SCHEMA_VERSION == 1 + sql::SQLITE_MIGRATIONS.len() as i64);
const _: () = assert!(SCHEMA_VERSION == 1 + sql::POSTGRES_MIGRATIONS.len() as i64);

/// The migration steps a database at `version` still needs (all of them for a new one).
pub(crate) fn steps_after(
    version: i64,
    steps: &'static [&'static str],
) -> impl Iterator<Item = &'static str> {
    let done = usize::try_from(version.saturating_sub(1)).unwrap_or(0);
    steps.iter().skip(done).copied()
}

/// Default size of the PostgreSQL connection pool of one keystore process.
pub const DEFAULT_POOL_SIZE: usize = 8;

/// Change-log kinds.
const KIND_CREATED: &str = "created";
const KIND_REVOKED: &str = "revoked";
const KIND_ROTATED: &str = "rotated";
const KIND_ROLE: &str = "role_changed";
const KIND_EXPIRY: &str = "expiry_changed";
const KIND_CLAIMS: &str = "claims_changed";
const KIND_DISABLED: &str = "disabled";
/// A re-enabled key: like a creation, it was unknown to the lookup until now.
const KIND_ENABLED: &str = "enabled";

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
    /// The user already holds the most live keys allowed (keys in a rotation's grace count).
    #[error("user {user} already holds {max} unexpired keys (keys in a rotation's grace count); revoke one first")]
    TooManyKeys { user: String, max: usize },
    /// The user's keys were created too often (see `lifecycle::MAX_KEY_CREATIONS`).
    #[error("user {user} got {max} new keys in the last {window_s} seconds; try again in {retry_after} seconds")]
    TooManyCreations {
        user: String,
        max: usize,
        window_s: i64,
        retry_after: i64,
    },
    /// Authority refused the call (see [`authority`]).
    #[error("{0}")]
    Refused(authority::Refusal),
    /// No unrevoked key of this user has this key reference.
    #[error("key {key} not found for user {user} in account {account}")]
    KeyNotFound {
        account: String,
        user: String,
        key: String,
    },
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("database error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No PostgreSQL connection could be had (pool exhausted, or the server unreachable).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

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

/// A user as listed by the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UserInfo {
    pub user_id: String,
    pub role: String,
    /// When the user was created (RFC 3339).
    #[serde(serialize_with = "lifecycle::ser_time")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    /// `false` while the user is disabled (its keys are not looked up).
    pub enabled: bool,
    /// When the user (and so every key of it) expires (RFC 3339); absent: never.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "lifecycle::ser_opt_time"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<i64>,
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

// ---------------------------------------------------------------------------------------------
// What a backend offers the jobs: statements and rows.

/// A bound parameter.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Text(&'a str),
    Int(i64),
    OptText(Option<&'a str>),
    OptInt(Option<i64>),
}

/// One column value of a result row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cell {
    Null,
    Int(i64),
    Text(String),
}

/// A result row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row(pub(crate) Vec<Cell>);

impl Row {
    fn cell(&self, i: usize) -> Result<&Cell, StoreError> {
        self.0
            .get(i)
            .ok_or_else(|| StoreError::Internal(format!("result row has no column {i}")))
    }

    fn text(&self, i: usize) -> Result<String, StoreError> {
        match self.cell(i)? {
            Cell::Text(s) => Ok(s.clone()),
            other => Err(StoreError::Internal(format!(
                "column {i}: expected text, got {other:?}"
            ))),
        }
    }

    fn int(&self, i: usize) -> Result<i64, StoreError> {
        match self.opt_int(i)? {
            Some(v) => Ok(v),
            None => Err(StoreError::Internal(format!(
                "column {i}: expected an integer, got NULL"
            ))),
        }
    }

    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.cell(i)? {
            Cell::Text(s) => Ok(Some(s.clone())),
            Cell::Null => Ok(None),
            other @ Cell::Int(_) => Err(StoreError::Internal(format!(
                "column {i}: expected text, got {other:?}"
            ))),
        }
    }

    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.cell(i)? {
            Cell::Int(v) => Ok(Some(*v)),
            Cell::Null => Ok(None),
            other @ Cell::Text(_) => Err(StoreError::Internal(format!(
                "column {i}: expected an integer, got {other:?}"
            ))),
        }
    }
}

/// A connection or transaction of either engine. Statements are the constants of [`sql`].
pub(crate) trait Db {
    /// Runs a statement; the number of rows it changed.
    async fn exec(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<u64, StoreError>;
    /// Runs a query (or a statement with `RETURNING`); all its rows.
    async fn rows(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError>;
}

async fn first<D: Db>(
    db: &mut D,
    sql: &'static str,
    args: &[Arg<'_>],
) -> Result<Option<Row>, StoreError> {
    Ok(db.rows(sql, args).await?.into_iter().next())
}

async fn exists<D: Db>(
    db: &mut D,
    sql: &'static str,
    args: &[Arg<'_>],
) -> Result<bool, StoreError> {
    Ok(first(db, sql, args).await?.is_some())
}

async fn single_int<D: Db>(db: &mut D, sql: &'static str) -> Result<i64, StoreError> {
    match first(db, sql, &[]).await? {
        Some(row) => row.int(0),
        None => Err(StoreError::Internal(format!("no row from {sql}"))),
    }
}

async fn texts<D: Db>(
    db: &mut D,
    sql: &'static str,
    args: &[Arg<'_>],
) -> Result<Vec<String>, StoreError> {
    db.rows(sql, args)
        .await?
        .iter()
        .map(|r| r.text(0))
        .collect()
}

/// A unit of work run by a backend, in one transaction for writes (see [`Backend`]).
pub(crate) trait Job: Send + 'static {
    type Out: Send + 'static;
    /// Reads that must all come from one snapshot (a read transaction).
    const SNAPSHOT: bool = false;
    /// One statement on a primary key, no snapshot: short enough for SQLite to run it on the
    /// async worker itself when a reader connection is free (see `store/sqlite.rs`).
    const QUICK: bool = false;
    /// Runs the job; `at` is the time of a write (Unix seconds).
    async fn run<D: Db>(self, db: &mut D, at: i64) -> Result<Self::Out, StoreError>;
}

/// A storage engine.
pub(crate) trait Backend {
    /// Runs a read-only job (in a read transaction when `J::SNAPSHOT`).
    async fn read<J: Job>(&self, job: J) -> Result<J::Out, StoreError>;
    /// Runs a job in one write transaction, pruning the change log before it commits.
    async fn write<J: Job>(&self, job: J) -> Result<J::Out, StoreError>;
}

/// A job's type name without its module path (`Lookup`): a bounded metric label.
fn job_name<J>() -> &'static str {
    let full = std::any::type_name::<J>();
    full.rsplit("::").next().unwrap_or(full)
}

/// Unix seconds now.
fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Building blocks of the jobs.

async fn current_revision<D: Db>(db: &mut D) -> Result<i64, StoreError> {
    single_int(db, sql::CURRENT_REVISION).await
}

async fn pruned_through<D: Db>(db: &mut D) -> Result<i64, StoreError> {
    single_int(db, sql::PRUNED_THROUGH).await
}

async fn log_change<D: Db>(
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

async fn require_account<D: Db>(db: &mut D, account: &str) -> Result<(), StoreError> {
    if exists(db, sql::ACCOUNT_ACTIVE, &[Arg::Text(account)]).await? {
        Ok(())
    } else {
        Err(StoreError::AccountNotFound(account.to_owned()))
    }
}

/// The role of an active user of an active account.
async fn require_user<D: Db>(db: &mut D, account: &str, user: &str) -> Result<String, StoreError> {
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
async fn user_row<D: Db>(db: &mut D, account: &str, user: &str) -> Result<UserRow, StoreError> {
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
async fn insert_key<D: Db>(
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
async fn revoke_keys<D: Db>(
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

// ---------------------------------------------------------------------------------------------
// The jobs.

/// Does nothing; a write of it only prunes the change log.
struct Noop;

impl Job for Noop {
    type Out = ();
    async fn run<D: Db>(self, _db: &mut D, _at: i64) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Answers a trivial query: the database is reachable.
struct Ping;

impl Job for Ping {
    type Out = ();
    const QUICK: bool = true;
    async fn run<D: Db>(self, db: &mut D, _at: i64) -> Result<(), StoreError> {
        single_int(db, sql::PING).await.map(|_| ())
    }
}

/// The key behind a key id, for the lookup (which answers only keys with the capability
/// `traffic`) or for an admin call (any active key).
struct Lookup {
    key_id: String,
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

struct Revision;

impl Job for Revision {
    type Out = i64;
    async fn run<D: Db>(self, db: &mut D, _at: i64) -> Result<i64, StoreError> {
        current_revision(db).await
    }
}

struct ChangesSince {
    since: u64,
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
fn page(revision: i64, rows: &[(i64, String, String)]) -> Changes {
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

struct ListUsers {
    account: String,
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

struct UpsertRootKey {
    key_id: String,
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
const ROOT_OBJECT: &str = "_system/root";

/// Makes `key_id` an active key of the root user; what that was (`root_key.install` for a new
/// key, `root_key.revive` for a revoked one), or `None` if it was active already.
async fn install_root_key<D: Db>(
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
struct RemoveRootKey;

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

struct CreateAccount {
    actor: Actor,
    grant: Grant,
    account: String,
    admin_user: String,
    key: KeySpec,
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

struct CreateUser {
    actor: Actor,
    grant: Grant,
    account: String,
    user: String,
    role: String,
    /// The user's expiry (its keys are capped at it).
    expires_at: Option<i64>,
    key: KeySpec,
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

struct RotateKey {
    actor: Actor,
    grant: Grant,
    account: String,
    user: String,
    key: KeySpec,
    grace_s: i64,
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
struct PatchUser {
    actor: Actor,
    grant: Grant,
    roles: Arc<authority::RoleRegistry>,
    account: String,
    user: String,
    /// Canonical, and one the caller may grant (checked by the handler).
    role: Option<String>,
    /// `Some(None)`: no expiry (as late as the caller may give).
    expires_at: Option<Option<i64>>,
    /// `Some(false)`: disable the user; `Some(true)`: enable it again.
    enabled: Option<bool>,
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

struct RevokeUser {
    actor: Actor,
    account: String,
    user: String,
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

struct RevokeAccount {
    actor: Actor,
    account: String,
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

// ---------------------------------------------------------------------------------------------
// The handle.

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    engine: Engine,
    /// Where database call latencies go (shared with the API's [`crate::api::AppState`]).
    metrics: Arc<Metrics>,
}

#[derive(Clone)]
enum Engine {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.engine {
            Engine::Sqlite(_) => "Store(sqlite)",
            Engine::Postgres(_) => "Store(postgres)",
        })
    }
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path`, keeping `changes_retention`
    /// revisions of change log (at least 1). Blocking: call it off the async workers.
    pub fn open(path: &Path, changes_retention: u64) -> Result<Store, StoreError> {
        Ok(Store {
            engine: Engine::Sqlite(sqlite::SqliteStore::open(
                path,
                retention(changes_retention),
            )?),
            metrics: Arc::default(),
        })
    }

    /// Connects to PostgreSQL at `url` (a `postgres://` URL or a libpq key=value string) with a
    /// pool of at most `pool_size` connections, creates the schema if it is not there yet and
    /// prunes the change log to `changes_retention` revisions (at least 1).
    pub async fn connect_postgres(
        url: &str,
        changes_retention: u64,
        pool_size: usize,
    ) -> Result<Store, StoreError> {
        let store =
            postgres::PgStore::connect(url, retention(changes_retention), pool_size).await?;
        let metrics = Arc::new(Metrics::new(Some(store.pool_probe())));
        Ok(Store {
            engine: Engine::Postgres(store),
            metrics,
        })
    }

    /// Which engine: `"sqlite"` or `"postgres"`.
    pub fn engine(&self) -> &'static str {
        match self.engine {
            Engine::Sqlite(_) => "sqlite",
            Engine::Postgres(_) => "postgres",
        }
    }

    /// The process's metrics, which this store feeds with its database latencies.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    async fn read<J: Job>(&self, job: J) -> Result<J::Out, StoreError> {
        let started = Instant::now();
        let out = match &self.engine {
            Engine::Sqlite(s) => s.read(job).await,
            Engine::Postgres(p) => p.read(job).await,
        };
        self.metrics
            .observe_db(job_name::<J>(), "read", started.elapsed());
        out
    }

    async fn write<J: Job>(&self, job: J) -> Result<J::Out, StoreError> {
        let started = Instant::now();
        let out = match &self.engine {
            Engine::Sqlite(s) => s.write(job).await,
            Engine::Postgres(p) => p.write(job).await,
        };
        self.metrics
            .observe_db(job_name::<J>(), "write", started.elapsed());
        out
    }

    /// Checks that the database answers a trivial query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read(Ping).await
    }

    /// Prunes the change log to the configured retention.
    pub async fn prune(&self) -> Result<(), StoreError> {
        self.write(Noop).await
    }

    /// The identity behind an active key id (key, user and account all unrevoked, neither key
    /// nor user expired) that may be used for traffic (capability `traffic`).
    pub async fn lookup(&self, key_id: String) -> Result<Option<Identity>, StoreError> {
        Ok(self
            .read(Lookup { key_id })
            .await?
            .filter(|k| k.capabilities.has(authority::Cap::Traffic))
            .map(|k| k.identity))
    }

    /// The active key behind an admin call, whatever its capabilities.
    pub async fn authenticate(&self, key_id: String) -> Result<Option<Authenticated>, StoreError> {
        self.read(Lookup { key_id }).await
    }

    /// The current revision of the change log (0 when nothing ever changed).
    pub async fn revision(&self) -> Result<i64, StoreError> {
        self.read(Revision).await
    }

    /// The change feed after revision `since` (see [`Changes`]).
    pub async fn changes(&self, since: u64) -> Result<Changes, StoreError> {
        self.read(ChangesSince { since }).await
    }

    /// Makes `key_id` the one active key of user `root` (role `root`) in account `_system`,
    /// creating the account and user as needed and revoking any other root key.
    pub async fn upsert_root_key(&self, key_id: String) -> Result<(), StoreError> {
        self.write(UpsertRootKey { key_id }).await
    }

    /// Revokes the stored root key(s), for a keystore started without one. Returns their
    /// key ids (none when there was none).
    pub async fn remove_root_key(&self) -> Result<Vec<String>, StoreError> {
        self.write(RemoveRootKey).await
    }

    /// Creates an account and its admin user (role `admin`) holding `key`.
    pub async fn create_account(
        &self,
        (actor, grant): (Actor, Grant),
        account: String,
        admin_user: String,
        key: KeySpec,
    ) -> Result<(), StoreError> {
        self.write(CreateAccount {
            actor,
            grant,
            account,
            admin_user,
            key,
        })
        .await
    }

    /// Creates a user with `role` (and expiry `expires_at`) holding `key` (as asked; returned
    /// as granted, see [`authority::derive`]) in an active account. User ids are never
    /// reused, not even those of revoked users.
    pub async fn create_user(
        &self,
        (actor, grant): (Actor, Grant),
        (account, user): (String, String),
        role: String,
        expires_at: Option<i64>,
        key: KeySpec,
    ) -> Result<KeySpec, StoreError> {
        self.write(CreateUser {
            actor,
            grant,
            account,
            user,
            role,
            expires_at,
            key,
        })
        .await
    }

    /// Gives the user the new key `key`. With `grace_s` 0 the user's other keys are revoked;
    /// otherwise they expire `grace_s` seconds from now (or earlier, if they already expire
    /// earlier). Returns the key ids revoked or given the grace expiry.
    pub async fn rotate_key(
        &self,
        (actor, grant): (Actor, Grant),
        account: String,
        user: String,
        key: KeySpec,
        grace_s: i64,
    ) -> Result<(Vec<String>, KeySpec), StoreError> {
        self.write(RotateKey {
            actor,
            grant,
            account,
            user,
            key,
            grace_s,
        })
        .await
    }

    /// Changes a user's role, expiry and/or enabled state in one transaction (each of its
    /// active keys is logged as changed); a refusal changes nothing.
    #[allow(clippy::too_many_arguments)]
    pub async fn patch_user(
        &self,
        (actor, grant): (Actor, Grant),
        roles: Arc<authority::RoleRegistry>,
        (account, user): (String, String),
        role: Option<String>,
        expires_at: Option<Option<i64>>,
        enabled: Option<bool>,
    ) -> Result<PatchedUser, StoreError> {
        self.write(PatchUser {
            actor,
            grant,
            roles,
            account,
            user,
            role,
            expires_at,
            enabled,
        })
        .await
    }

    /// Revokes a user and its keys. Returns the number of keys revoked.
    pub async fn revoke_user(
        &self,
        actor: Actor,
        account: String,
        user: String,
    ) -> Result<usize, StoreError> {
        self.write(RevokeUser {
            actor,
            account,
            user,
        })
        .await
    }

    /// Revokes an account, its users and all their keys. Returns the number of keys revoked.
    pub async fn revoke_account(&self, actor: Actor, account: String) -> Result<usize, StoreError> {
        self.write(RevokeAccount { actor, account }).await
    }

    /// The unrevoked keys of an active user (expired ones included), oldest first.
    pub async fn list_keys(
        &self,
        account: String,
        user: String,
    ) -> Result<Vec<KeyInfo>, StoreError> {
        self.read(lifecycle::ListKeys { account, user }).await
    }

    /// Adds `key` (as asked; granted by [`authority::derive`]) to an active user.
    pub async fn create_key(
        &self,
        (actor, grant): (Actor, Grant),
        account: String,
        user: String,
        key: KeySpec,
    ) -> Result<KeyInfo, StoreError> {
        self.write(lifecycle::CreateKey {
            actor,
            grant,
            account,
            user,
            key,
        })
        .await
    }

    /// Changes a key's name, expiry or claims (expiry and claims changes are logged).
    pub async fn update_key(
        &self,
        (actor, grant): (Actor, Grant),
        target: Target,
        patch: KeyPatch,
    ) -> Result<KeyInfo, StoreError> {
        self.write(lifecycle::UpdateKey {
            actor,
            grant,
            target,
            patch,
        })
        .await
    }

    /// Revokes one key; returns its key id.
    pub async fn revoke_key(&self, actor: Actor, target: Target) -> Result<String, StoreError> {
        self.write(lifecycle::RevokeKey { actor, target }).await
    }

    /// Replaces one key by `key` (which takes its name and claims); the old one is revoked
    /// (`grace_s` 0) or expires `grace_s` seconds from now (or sooner, if it already did).
    /// Returns the new key and the end of the old one's validity (Unix seconds).
    pub async fn rotate_one_key(
        &self,
        (actor, grant): (Actor, Grant),
        target: Target,
        key: KeySpec,
        grace_s: i64,
    ) -> Result<(KeyInfo, i64), StoreError> {
        self.write(lifecycle::RotateOne {
            actor,
            grant,
            target,
            key,
            grace_s,
        })
        .await
    }

    /// Sets (or with `None`, clears) an account's claims; its active keys are logged.
    pub async fn set_account_claims(
        &self,
        actor: Actor,
        account: String,
        claims: Option<Claims>,
    ) -> Result<(), StoreError> {
        self.write(lifecycle::SetAccountClaims {
            actor,
            account,
            claims,
        })
        .await
    }

    /// Records that these key ids were used this minute; returns the rows written.
    pub async fn record_usage(&self, key_ids: Vec<String>) -> Result<u64, StoreError> {
        self.write(lifecycle::RecordUsage { key_ids }).await
    }

    /// A page of the audit trail after entry `after`: all of it, or one account's.
    pub async fn audit(
        &self,
        account: Option<String>,
        after: i64,
        limit: usize,
    ) -> Result<AuditPage, StoreError> {
        self.read(lifecycle::ReadAudit {
            account,
            after,
            limit,
        })
        .await
    }

    /// Enables or disables an account.
    pub async fn set_account_enabled(
        &self,
        actor: Actor,
        account: String,
        enabled: bool,
    ) -> Result<(), StoreError> {
        self.write(admin::SetAccountEnabled {
            actor,
            account,
            enabled,
        })
        .await
    }

    /// An active account: its claims and whether it is enabled.
    pub async fn account(&self, account: String) -> Result<AccountInfo, StoreError> {
        self.read(admin::ReadAccount { account }).await
    }

    /// Every active account, by account id.
    pub async fn list_accounts(&self) -> Result<Vec<AccountInfo>, StoreError> {
        self.read(admin::ListAccounts).await
    }

    /// The key with this key id, if it is in `scope` (`None`: any account); with `revoke`,
    /// revoked. Audited either way; `None` when unknown or out of scope.
    pub async fn find_key(
        &self,
        actor: Actor,
        key_id: String,
        scope: Option<String>,
        revoke: bool,
    ) -> Result<Option<KeyState>, StoreError> {
        self.write(admin::FindKey {
            actor,
            key_id,
            scope,
            revoke,
        })
        .await
    }

    /// Appends a refused admin call to the audit trail (pruning the oldest refusals).
    /// `kept`: how many refusal entries to keep.
    pub async fn record_refusal(&self, refusal: Refusal, kept: i64) -> Result<(), StoreError> {
        self.write(admin::RecordRefusal { refusal, kept }).await
    }

    /// The active users of an active account, by user id.
    pub async fn list_users(&self, account: String) -> Result<Vec<UserInfo>, StoreError> {
        self.read(ListUsers { account }).await
    }
}

/// The retention as the engines use it: at least 1.
fn retention(changes_retention: u64) -> i64 {
    i64::try_from(changes_retention.max(1)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod migration_tests {
    use super::*;

    #[test]
    fn a_database_runs_the_steps_after_its_version() {
        static STEPS: [&str; 2] = ["to 2", "to 3"];
        let after = |v| steps_after(v, &STEPS).collect::<Vec<_>>();
        assert_eq!(after(0), ["to 2", "to 3"], "a new database");
        assert_eq!(after(1), ["to 2", "to 3"]);
        assert_eq!(after(2), ["to 3"]);
        assert!(after(3).is_empty());
        assert!(after(4).is_empty());
    }
}
