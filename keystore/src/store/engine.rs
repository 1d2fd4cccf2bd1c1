//! The engine abstraction: what a backend offers the jobs (statements and rows, [`Db`]), the
//! unit of work ([`Job`]) and the storage engine ([`Backend`]) that runs it, plus the schema
//! version and migration steps both engines share.
//!
//! Invariant: a job is written once against [`Db`] and run by either engine; a write job runs
//! in one transaction that also prunes the change log, so nothing is ever half-written.

use super::error::StoreError;
use super::sql;
use std::time::{SystemTime, UNIX_EPOCH};

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
    pub(super) fn cell(&self, i: usize) -> Result<&Cell, StoreError> {
        self.0
            .get(i)
            .ok_or_else(|| StoreError::Internal(format!("result row has no column {i}")))
    }

    pub(super) fn text(&self, i: usize) -> Result<String, StoreError> {
        match self.cell(i)? {
            Cell::Text(s) => Ok(s.clone()),
            other => Err(StoreError::Internal(format!(
                "column {i}: expected text, got {other:?}"
            ))),
        }
    }

    pub(super) fn int(&self, i: usize) -> Result<i64, StoreError> {
        match self.opt_int(i)? {
            Some(v) => Ok(v),
            None => Err(StoreError::Internal(format!(
                "column {i}: expected an integer, got NULL"
            ))),
        }
    }

    pub(super) fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.cell(i)? {
            Cell::Text(s) => Ok(Some(s.clone())),
            Cell::Null => Ok(None),
            other @ Cell::Int(_) => Err(StoreError::Internal(format!(
                "column {i}: expected text, got {other:?}"
            ))),
        }
    }

    pub(super) fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
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

pub(super) async fn first<D: Db>(
    db: &mut D,
    sql: &'static str,
    args: &[Arg<'_>],
) -> Result<Option<Row>, StoreError> {
    Ok(db.rows(sql, args).await?.into_iter().next())
}

pub(super) async fn exists<D: Db>(
    db: &mut D,
    sql: &'static str,
    args: &[Arg<'_>],
) -> Result<bool, StoreError> {
    Ok(first(db, sql, args).await?.is_some())
}

pub(super) async fn single_int<D: Db>(db: &mut D, sql: &'static str) -> Result<i64, StoreError> {
    match first(db, sql, &[]).await? {
        Some(row) => row.int(0),
        None => Err(StoreError::Internal(format!("no row from {sql}"))),
    }
}

pub(super) async fn texts<D: Db>(
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
pub(super) fn job_name<J>() -> &'static str {
    let full = std::any::type_name::<J>();
    full.rsplit("::").next().unwrap_or(full)
}

/// Unix seconds now.
pub(super) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Does nothing; a write of it only prunes the change log.
pub(super) struct Noop;

impl Job for Noop {
    type Out = ();
    async fn run<D: Db>(self, _db: &mut D, _at: i64) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Answers a trivial query: the database is reachable.
pub(super) struct Ping;

impl Job for Ping {
    type Out = ();
    const QUICK: bool = true;
    async fn run<D: Db>(self, db: &mut D, _at: i64) -> Result<(), StoreError> {
        single_int(db, sql::PING).await.map(|_| ())
    }
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
