//! The PostgreSQL engine: a connection pool (deadpool-postgres over tokio-postgres), so any
//! number of keystore processes ("replicas") can serve one database.
//!
//! Consistency between replicas:
//! - Every statement reads the database's latest committed state, so a key created through one
//!   replica is found by a lookup on any other as soon as the creating call has answered.
//! - Revisions come from the `changes.revision` sequence, shared by every replica. A sequence
//!   hands out numbers when rows are inserted, not when their transactions commit: with two
//!   writers, revision 11 could become visible before revision 10, and a poller that has seen
//!   11 would never ask for 10. So every write transaction starts by locking one row
//!   (`SELECT ... FROM meta WHERE name = 'writer' FOR UPDATE`): writers, on every replica, take
//!   turns, each draws its revisions while it holds the lock and releases it only by committing
//!   (or rolling back). Revisions therefore become visible in order, and a poller that has seen
//!   revision N has seen every revision below N. Readers never wait for the lock.
//! - A feed page reads the revision and the rows in one `REPEATABLE READ` snapshot.

use super::blocks::prune;
use super::engine::{now, steps_after, Arg, Backend, Cell, Db, Job, Noop, Row};
use super::error::StoreError;
use super::sql;
use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime,
};
use std::time::Duration;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::IsolationLevel;

/// The schema version this keystore writes (the `meta` row `schema_version`).
const SCHEMA_VERSION: i64 = super::engine::SCHEMA_VERSION;
const SET_SCHEMA_VERSION: &str = "UPDATE meta SET value = $1 WHERE name = 'schema_version'";
/// Rows added to `meta` by the PostgreSQL schema, beside the shared `pruned_through`.
const POSTGRES_META: &str =
    "INSERT INTO meta (name, value) VALUES ('schema_version', 1), ('writer', 0)";
/// Taken by every write transaction before anything else (see the module doc).
const LOCK_WRITER: &str = "SELECT value FROM meta WHERE name = 'writer' FOR UPDATE";
/// Serialises the schema check of replicas that start at the same moment (a transaction-level
/// advisory lock; the key is "keystore" in ASCII).
const MIGRATION_LOCK: &str = "SELECT pg_advisory_xact_lock(7738725071487726181)";
/// How long to wait for a connection: from the pool, to the server, or a recycle check.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub(crate) struct PgStore {
    pool: Pool,
    retention: i64,
}

impl From<PoolError> for StoreError {
    fn from(e: PoolError) -> StoreError {
        match e {
            PoolError::Backend(e) => StoreError::Postgres(e),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

/// A pooled client or one of its transactions, running the shared statements.
struct PgDb<'a, C> {
    client: &'a C,
}

fn params<'a>(args: &'a [Arg<'_>]) -> Vec<&'a (dyn ToSql + Sync)> {
    args.iter()
        .map(|a| match a {
            Arg::Text(s) => s as &(dyn ToSql + Sync),
            Arg::Int(i) => i as &(dyn ToSql + Sync),
            Arg::OptText(s) => s as &(dyn ToSql + Sync),
            Arg::OptInt(i) => i as &(dyn ToSql + Sync),
        })
        .collect()
}

fn cell(row: &tokio_postgres::Row, i: usize) -> Result<Cell, StoreError> {
    let ty = row
        .columns()
        .get(i)
        .map(|c| c.type_().clone())
        .ok_or_else(|| StoreError::Internal(format!("result row has no column {i}")))?;
    let value = if ty == Type::INT8 {
        row.try_get::<_, Option<i64>>(i)?.map(Cell::Int)
    } else if ty == Type::INT4 {
        row.try_get::<_, Option<i32>>(i)?
            .map(|v| Cell::Int(i64::from(v)))
    } else if ty == Type::INT2 {
        row.try_get::<_, Option<i16>>(i)?
            .map(|v| Cell::Int(i64::from(v)))
    } else if ty == Type::TEXT || ty == Type::VARCHAR || ty == Type::NAME {
        row.try_get::<_, Option<String>>(i)?.map(Cell::Text)
    } else {
        return Err(StoreError::Internal(format!(
            "column {i} has the unexpected type {ty}"
        )));
    };
    Ok(value.unwrap_or(Cell::Null))
}

impl<C: GenericClient> Db for PgDb<'_, C> {
    async fn exec(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        let stmt = self.client.prepare_cached(sql).await?;
        Ok(self.client.execute(&stmt, &params(args)).await?)
    }

    async fn rows(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError> {
        let stmt = self.client.prepare_cached(sql).await?;
        let rows = self.client.query(&stmt, &params(args)).await?;
        rows.iter()
            .map(|row| (0..row.len()).map(|i| cell(row, i)).collect())
            .map(|cells: Result<Vec<Cell>, StoreError>| cells.map(Row))
            .collect()
    }
}

impl PgStore {
    /// Reads the pool's state for the metrics (`keystore_db_pool_*`).
    pub(crate) fn pool_probe(&self) -> crate::metrics::PoolProbe {
        let pool = self.pool.clone();
        Box::new(move || {
            let s = pool.status();
            crate::metrics::PoolStatus {
                max_size: s.max_size,
                size: s.size,
                idle: s.available,
                waiting: s.waiting,
            }
        })
    }

    /// Builds the pool, checks that the server answers, applies the schema if needed and
    /// prunes the change log.
    pub(crate) async fn connect(
        url: &str,
        retention: i64,
        pool_size: usize,
    ) -> Result<PgStore, StoreError> {
        let (url, tls) = super::pg_tls::split(url)?;
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Internal(format!("invalid database URL: {e}")))?;
        config.ssl_mode(tls.mode);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECTION_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("keystore");
        }
        let manager = Manager::from_config(
            config,
            tls.connector()?,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECTION_TIMEOUT))
            .create_timeout(Some(CONNECTION_TIMEOUT))
            .recycle_timeout(Some(CONNECTION_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Internal(format!("cannot build the connection pool: {e}")))?;
        let store = PgStore { pool, retention };
        store.migrate().await?;
        store.write(Noop).await?;
        Ok(store)
    }

    /// Creates the schema in an empty database (or schema: the first of the `search_path`),
    /// or checks the version of the one there and migrates it step by step, all in one
    /// transaction under an advisory lock (replicas starting together migrate once).
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let out = async {
            tx.batch_execute(MIGRATION_LOCK).await?;
            let has_meta: bool = tx
                .query_one("SELECT to_regclass('meta') IS NOT NULL", &[])
                .await?
                .try_get(0)?;
            let version = if has_meta {
                existing_version(&tx).await?
            } else {
                tx.batch_execute(sql::POSTGRES_SCHEMA).await?;
                tx.batch_execute(POSTGRES_META).await?;
                1
            };
            for step in steps_after(version, &sql::POSTGRES_MIGRATIONS) {
                tx.batch_execute(step).await?;
            }
            if version != SCHEMA_VERSION {
                tx.execute(SET_SCHEMA_VERSION, &[&SCHEMA_VERSION]).await?;
                if has_meta {
                    tracing::info!(
                        from = version,
                        to = SCHEMA_VERSION,
                        "database schema migrated"
                    );
                }
            }
            Ok(())
        }
        .await;
        finish(tx, out).await
    }
}

/// The schema version of an existing database: refused when newer than this keystore's, or
/// when `meta` is not the keystore's table.
async fn existing_version(tx: &deadpool_postgres::Transaction<'_>) -> Result<i64, StoreError> {
    let version: Option<i64> = tx
        .query_opt("SELECT value FROM meta WHERE name = 'schema_version'", &[])
        .await?
        .map(|row| row.try_get(0))
        .transpose()?;
    match version {
        Some(v) if v > SCHEMA_VERSION => Err(StoreError::Internal(format!(
            "database schema version {v} is newer than this keystore supports ({SCHEMA_VERSION})"
        ))),
        Some(v) => Ok(v),
        None => Err(StoreError::Internal(
            "the database has a table named meta that is not the keystore's: \
             give the keystore a database (or schema) of its own"
                .into(),
        )),
    }
}

impl Backend for PgStore {
    async fn read<J: Job>(&self, job: J) -> Result<J::Out, StoreError> {
        let mut client = self.pool.get().await?;
        if J::SNAPSHOT {
            let tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let out = job.run(&mut PgDb { client: &tx }, now()).await;
            finish(tx, out).await
        } else {
            job.run(&mut PgDb { client: &client }, now()).await
        }
    }

    async fn write<J: Job>(&self, job: J) -> Result<J::Out, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let out = async {
            let lock = tx.prepare_cached(LOCK_WRITER).await?;
            if tx.query(&lock, &[]).await?.len() != 1 {
                return Err(StoreError::Internal(
                    "the meta row 'writer' is missing: writes cannot be ordered".into(),
                ));
            }
            let mut db = PgDb { client: &tx };
            let out = job.run(&mut db, now()).await?;
            prune(&mut db, self.retention).await?;
            Ok(out)
        }
        .await;
        finish(tx, out).await
    }
}

/// Commits after success; rolls back, and waits for it, after a failure (so the connection
/// goes back to the pool outside any transaction, its locks released).
async fn finish<T>(
    tx: deadpool_postgres::Transaction<'_>,
    out: Result<T, StoreError>,
) -> Result<T, StoreError> {
    match out {
        Ok(out) => {
            tx.commit().await?;
            Ok(out)
        }
        Err(e) => {
            if let Err(rollback) = tx.rollback().await {
                tracing::warn!("rollback after a failed transaction failed: {rollback}");
            }
            Err(e)
        }
    }
}
