//! PostgreSQL for tests of keystore replicas: the database named by `KEYSTORE_TEST_DATABASE_URL`
//! (e.g. from `scripts/postgres.sh start`), and a fresh schema in it per test, through `psql`.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{fail, Error, Result};

/// The variable naming the test database.
pub const DATABASE_URL_VAR: &str = "KEYSTORE_TEST_DATABASE_URL";

/// The test database's URL. Panics, saying how to get one, when `KEYSTORE_TEST_DATABASE_URL`
/// is not set: tests that need PostgreSQL fail, never skip.
pub fn postgres_url() -> String {
    match std::env::var(DATABASE_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => url.trim().to_string(),
        _ => fail(Error::msg(format!(
            "{DATABASE_URL_VAR} is not set: this test needs PostgreSQL; run \
             `export {DATABASE_URL_VAR}=$(scripts/postgres.sh start)` (and \
             `scripts/postgres.sh stop` afterwards), or the Makefile target that does"
        ))),
    }
}

/// A schema of its own in a PostgreSQL database, created with `psql` and dropped (with
/// everything in it) on drop.
#[derive(Debug)]
pub struct PgSchema {
    base: String,
    name: String,
}

impl PgSchema {
    /// Creates `keygate_test_<pid>_<n>_<nanos>` in the database at `base`.
    pub fn create(base: &str) -> Result<PgSchema> {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "keygate_test_{}_{}_{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        psql(base, &format!("CREATE SCHEMA {name}"))?;
        Ok(PgSchema {
            base: base.to_string(),
            name,
        })
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The database URL with this schema as the only one on the search path (what to give
    /// `keystore serve --database-url`).
    pub fn url(&self) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-c%20search_path%3D{}", self.base, self.name)
    }

    /// Runs `sql` in the schema with `psql`; its output (unaligned, tuples only).
    pub fn query(&self, sql: &str) -> Result<String> {
        psql(&self.url(), sql)
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let sql = format!(
            "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {} CASCADE",
            self.name
        );
        if let Err(e) = psql(&self.base, &sql) {
            eprintln!("keygate-harness: dropping schema {}: {e}", self.name);
        }
    }
}

/// `psql -X -v ON_ERROR_STOP=1 -qtA URL -c SQL`.
fn psql(url: &str, sql: &str) -> Result<String> {
    let out = Command::new("psql")
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-q", "-t", "-A"])
        .arg(url)
        .arg("-c")
        .arg(sql)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .map_err(|e| {
            Error::msg(format!(
                "cannot run psql ({e}): install PostgreSQL's client (scripts/postgres.sh start does)"
            ))
        })?;
    if !out.status.success() {
        return Err(Error::msg(format!(
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
