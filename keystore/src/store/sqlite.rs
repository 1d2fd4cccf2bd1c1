//! The SQLite engine: one writer connection behind a mutex and a few reader connections (WAL
//! mode lets them read while the writer writes). Every write runs in one `BEGIN IMMEDIATE`
//! transaction. SQLite calls run on tokio's blocking pool, with one exception: a quick read
//! (`Job::QUICK`: a key lookup or the health check, one statement on a primary key) runs on
//! the async worker itself when a reader connection is free at once (`try_lock`), which saves
//! the hand-off to a pool thread and back (about a fifth of a lookup's CPU). An async worker
//! therefore never waits for a connection lock; it can wait only for the statement itself
//! (tens of microseconds; longer only if the database's pages are not in memory). WAL readers
//! do not wait for the writer.

use super::blocks::prune;
use super::engine::{now, steps_after, Arg, Backend, Cell, Db, Job, Noop, Row};
use super::error::StoreError;
use super::sql;
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{params_from_iter, Connection, OpenFlags, TransactionBehavior};
use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// The schema version this keystore writes, in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = super::engine::SCHEMA_VERSION;
const READERS: usize = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub(crate) struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    retention: i64,
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

/// Creates the schema (version 1, then every step) in a new database, or brings an older
/// one up to [`SCHEMA_VERSION`] step by step, all in one exclusive transaction.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Internal(format!(
            "database schema version {version} is newer than this keystore supports ({SCHEMA_VERSION})"
        )));
    }
    if version < 1 {
        tx.execute_batch(sql::SQLITE_SCHEMA)?;
    }
    for step in steps_after(version, &sql::SQLITE_MIGRATIONS) {
        tx.execute_batch(step)?;
    }
    if version != SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tracing::info!(
            from = version,
            to = SCHEMA_VERSION,
            "database schema migrated"
        );
    }
    tx.commit()?;
    Ok(())
}

/// Runs a future that never waits (a job over a [`SqliteDb`]: every statement completes in
/// the first poll) to completion on this thread.
fn run_now<F: Future>(fut: F) -> Result<F::Output, StoreError> {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => Ok(out),
        Poll::Pending => Err(StoreError::Internal(
            "a SQLite job tried to wait for something".into(),
        )),
    }
}

/// A connection (or transaction, which derefs to one) running the shared statements.
struct SqliteDb<'c> {
    conn: &'c Connection,
}

impl rusqlite::ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Arg::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Arg::Int(i) | Arg::OptInt(Some(i)) => ToSqlOutput::Owned(Value::Integer(*i)),
            Arg::OptText(Some(s)) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Arg::OptText(None) | Arg::OptInt(None) => ToSqlOutput::Owned(Value::Null),
        })
    }
}

impl Db for SqliteDb<'_> {
    async fn exec(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        let changed = self
            .conn
            .prepare_cached(&sql::to_sqlite(sql))?
            .execute(params_from_iter(args.iter()))?;
        Ok(u64::try_from(changed).unwrap_or(u64::MAX))
    }

    async fn rows(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&sql::to_sqlite(sql))?;
        let columns = stmt.column_count();
        let mut rows = stmt.query(params_from_iter(args.iter()))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut cells = Vec::with_capacity(columns);
            for i in 0..columns {
                cells.push(match row.get_ref(i)? {
                    ValueRef::Null => Cell::Null,
                    ValueRef::Integer(v) => Cell::Int(v),
                    ValueRef::Text(t) => {
                        Cell::Text(String::from_utf8(t.to_vec()).map_err(|_| {
                            StoreError::Internal(format!("column {i} is not UTF-8 text"))
                        })?)
                    }
                    ValueRef::Real(_) | ValueRef::Blob(_) => {
                        return Err(StoreError::Internal(format!(
                            "column {i} is neither text nor an integer"
                        )))
                    }
                });
            }
            out.push(Row(cells));
        }
        Ok(out)
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, applies the schema and prunes the
    /// change log to `retention` revisions. Blocking.
    pub(crate) fn open(path: &Path, retention: i64) -> Result<SqliteStore, StoreError> {
        let mut writer = Connection::open(path)?;
        configure(&writer)?;
        migrate(&mut writer)?;
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
        let inner = Inner {
            writer: Mutex::new(writer),
            readers,
            next_reader: AtomicUsize::new(0),
            retention,
        };
        // Apply a lowered retention straight away.
        inner.write_now(Noop)?;
        Ok(SqliteStore {
            inner: Arc::new(inner),
        })
    }
}

impl Inner {
    /// One `BEGIN IMMEDIATE` transaction: the job, then pruning, then commit. Blocking.
    fn write_now<J: Job>(&self, job: J) -> Result<J::Out, StoreError> {
        let mut conn = lock(&self.writer)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = {
            let mut db = SqliteDb { conn: &tx };
            let retention = self.retention;
            run_now(async {
                let out = job.run(&mut db, now()).await?;
                prune(&mut db, retention).await?;
                Ok::<_, StoreError>(out)
            })??
        };
        tx.commit()?;
        Ok(out)
    }

    /// The job on the first reader connection that is free now, if any (never waits for one).
    fn try_read_now<J: Job>(&self, job: J) -> Result<Result<J::Out, StoreError>, J> {
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        let n = self.readers.len();
        let free = (0..n)
            .filter_map(|i| start.wrapping_add(i).checked_rem(n))
            .filter_map(|i| self.readers.get(i))
            .find_map(|slot| slot.try_lock().ok());
        match free {
            Some(conn) => {
                Ok(run_now(job.run(&mut SqliteDb { conn: &conn }, now())).and_then(|out| out))
            }
            None => Err(job),
        }
    }

    /// The job on the next reader connection (in a read transaction if it needs a snapshot).
    fn read_now<J: Job>(&self, job: J) -> Result<J::Out, StoreError> {
        let n = self.next_reader.fetch_add(1, Ordering::Relaxed);
        let slot = n
            .checked_rem(self.readers.len())
            .and_then(|i| self.readers.get(i))
            .ok_or_else(|| StoreError::Internal("no reader connection".into()))?;
        let mut conn = lock(slot)?;
        if J::SNAPSHOT {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let out = run_now(job.run(&mut SqliteDb { conn: &tx }, now()))??;
            tx.commit()?;
            Ok(out)
        } else {
            run_now(job.run(&mut SqliteDb { conn: &conn }, now()))?
        }
    }
}

impl Backend for SqliteStore {
    async fn read<J: Job>(&self, job: J) -> Result<J::Out, StoreError> {
        let job = if J::QUICK && !J::SNAPSHOT {
            match self.inner.try_read_now(job) {
                Ok(out) => return out,
                Err(job) => job,
            }
        } else {
            job
        };
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.read_now(job))
            .await
            .map_err(|e| StoreError::Internal(format!("database task failed: {e}")))?
    }

    async fn write<J: Job>(&self, job: J) -> Result<J::Out, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.write_now(job))
            .await
            .map_err(|e| StoreError::Internal(format!("database task failed: {e}")))?
    }
}
