//! The store: accounts, users, keys and the change log, on SQLite or PostgreSQL.
//!
//! Both engines sit behind one interface: a backend runs a [`Job`] either as a read or as a
//! write transaction, and every job is written once, against the [`engine::Db`] trait (run a
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
//! whatever version the database holds (see [`engine::SCHEMA_VERSION`] and
//! [`engine::steps_after`]).
//!
//! Where things are: this file holds the handle ([`Store`]: one method per job, timing each
//! call into the metrics); [`error`] its error type; [`engine`] the engine abstraction ([`Job`],
//! [`engine::Db`], [`engine::Backend`], rows and migration steps) with [`sqlite`], [`postgres`]
//! (and [`pg_tls`]) implementing it over the statements of [`sql`]; [`protocol`] the jobs of
//! the key-store protocol (lookup, change feed, usage report); [`summary`] the key summary
//! (its build job and the snapshot it keeps); [`accounts`], [`root_key`],
//! [`lifecycle`] and [`admin`] the admin jobs; [`blocks`] the building blocks they share
//! (change-log rows, active account and user checks, inserting and revoking keys).

mod accounts;
mod admin;
mod blocks;
mod engine;
mod error;
mod lifecycle;
mod pg_tls;
mod postgres;
mod protocol;
mod root_key;
mod sql;
mod sqlite;
mod summary;

pub use accounts::{PatchedUser, UserInfo};
pub use admin::{AccountInfo, KeyState, Refusal, MAX_REFUSALS_KEPT, REFUSED};
pub use blocks::UserRow;
pub use error::StoreError;
pub use lifecycle::{
    hint, key_ref, parse_rfc3339, rfc3339, validate_claims, Actor, AuditEntry, AuditPage, Claims,
    ClaimsDoc, KeyInfo, KeyPatch, KeySpec, Target, DEFAULT_KEY_NAME, KEY_REF_LEN, MAX_AUDIT_PAGE,
};
pub use protocol::{Authenticated, Changes, Identity, CHANGES_PAGE};
pub use summary::{
    BuildReason, Snapshot, Summaries, SummarySettings, DEFAULT_BITS_PER_KEY,
    DEFAULT_MAX_FALSE_POSITIVE_RATE, DEFAULT_REBUILD_AFTER,
};

use crate::authority::{self, Grant};
use crate::metrics::Metrics;
use engine::{job_name, Backend, Job, Noop, Ping};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Default size of the PostgreSQL connection pool of one keystore process.
pub const DEFAULT_POOL_SIZE: usize = 8;

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
            .read(protocol::Lookup { key_id })
            .await?
            .filter(|k| k.capabilities.has(authority::Cap::Traffic))
            .map(|k| k.identity))
    }

    /// The active key behind an admin call, whatever its capabilities.
    pub async fn authenticate(&self, key_id: String) -> Result<Option<Authenticated>, StoreError> {
        self.read(protocol::Lookup { key_id }).await
    }

    /// The current revision of the change log (0 when nothing ever changed).
    pub async fn revision(&self) -> Result<i64, StoreError> {
        self.read(protocol::Revision).await
    }

    /// The change feed after revision `since` (see [`Changes`]).
    pub async fn changes(&self, since: u64) -> Result<Changes, StoreError> {
        self.read(protocol::ChangesSince { since }).await
    }

    /// The summary of every key id live now, at the current revision, sized for
    /// `bits_per_key` (see [`Summaries`], which keeps it and extends it).
    pub async fn build_summary(
        &self,
        bits_per_key: u32,
    ) -> Result<keygate_protocol::summary::Summary, StoreError> {
        self.read(summary::BuildSummary {
            bits_per_key,
            page: summary::BUILD_PAGE,
        })
        .await
    }

    /// Makes `key_id` the one active key of user `root` (role `root`) in account `_system`,
    /// creating the account and user as needed and revoking any other root key.
    pub async fn upsert_root_key(&self, key_id: String) -> Result<(), StoreError> {
        self.write(root_key::UpsertRootKey { key_id }).await
    }

    /// Revokes the stored root key(s), for a keystore started without one. Returns their
    /// key ids (none when there was none).
    pub async fn remove_root_key(&self) -> Result<Vec<String>, StoreError> {
        self.write(root_key::RemoveRootKey).await
    }

    /// Creates an account and its admin user (role `admin`) holding `key`.
    pub async fn create_account(
        &self,
        (actor, grant): (Actor, Grant),
        account: String,
        admin_user: String,
        key: KeySpec,
    ) -> Result<(), StoreError> {
        self.write(accounts::CreateAccount {
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
        self.write(accounts::CreateUser {
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
        self.write(accounts::RotateKey {
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
        self.write(accounts::PatchUser {
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
        self.write(accounts::RevokeUser {
            actor,
            account,
            user,
        })
        .await
    }

    /// Revokes an account, its users and all their keys. Returns the number of keys revoked.
    pub async fn revoke_account(&self, actor: Actor, account: String) -> Result<usize, StoreError> {
        self.write(accounts::RevokeAccount { actor, account }).await
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
        self.write(protocol::RecordUsage { key_ids }).await
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
        self.read(accounts::ListUsers { account }).await
    }
}

/// The retention as the engines use it: at least 1.
fn retention(changes_retention: u64) -> i64 {
    i64::try_from(changes_retention.max(1)).unwrap_or(i64::MAX)
}
