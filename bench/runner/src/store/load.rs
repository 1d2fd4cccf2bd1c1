//! The bench's keys, and the one place that writes them straight into the keystore's tables.
//!
//! Key `i` is the string `kg_bench_{i}`; its key id, as the keystore stores it, is the lowercase
//! hex SHA-256 of those bytes. Misses are ids of `kg_miss_{i}`, never loaded. Keys are loaded
//! in bulk, directly into the database, in the schema the keystore created when it started
//! (it migrates at start-up, so the bench starts it once before loading): [`load`] is the only
//! function that writes that schema (version 2: the columns added by version 2 keep their
//! defaults: key name `default`, no expiry, no claims). When the schema changes, adjust [`load`]
//! and nothing else; [`LOOKUP`] and [`CHANGES`] are the keystore's own read statements,
//! copied from `keystore/src/store/sql.rs` for the driver floor.
//!
//! Invariant: after `load(db, a, b)` every key id of `a..b` is active (key, user and account
//! unrevoked), one user per key, 1000 users per account.

use keygate_harness::{Error, Result};
use keygate_protocol::key as protocol_key;

use crate::Db;

/// The keystore's key lookup (`keystore/src/store/sql.rs`, `LOOKUP`, schema version 2),
/// PostgreSQL parameters: `$1` the key id, `$2` now (Unix seconds, for expiry).
pub const LOOKUP: &str = "SELECT k.account_id, k.user_id, u.role, k.expires_at, \
       a.claims, k.claims FROM keys k \
     JOIN users u ON u.account_id = k.account_id AND u.user_id = k.user_id \
     JOIN accounts a ON a.account_id = k.account_id \
     WHERE k.key_id = $1 AND k.revoked_at IS NULL \
       AND (k.expires_at IS NULL OR k.expires_at > $2) \
       AND u.revoked_at IS NULL AND a.revoked_at IS NULL";

/// The keystore's changes-feed read (`ChangesSince` in keystore/src/store/protocol.rs): the
/// pruning mark, the page of change rows after `since`, the current revision (in one read
/// snapshot).
pub const CHANGES: [&str; 3] = [
    "SELECT value FROM meta WHERE name = 'pruned_through'",
    "SELECT revision, key_id, kind FROM changes WHERE revision > $1 ORDER BY revision LIMIT 1001",
    "SELECT COALESCE((SELECT MAX(revision) FROM changes), \
     (SELECT value FROM meta WHERE name = 'pruned_through'))",
];

/// Users per account in the bench's data.
const USERS_PER_ACCOUNT: usize = 1000;

/// The key id of loaded key `i`.
pub fn key_id(i: usize) -> String {
    protocol_key::key_id(&format!("kg_bench_{i}"))
}

/// A key id that is never loaded.
pub fn miss_id(i: usize) -> String {
    protocol_key::key_id(&format!("kg_miss_{i}"))
}

/// Loads keys `from..to` (see the module doc). SQLite: one transaction of prepared inserts.
/// PostgreSQL: three `INSERT ... SELECT` over `generate_series`, the key ids hashed by the
/// server (`sha256()`), then `ANALYZE`.
pub fn load(db: &Db, from: usize, to: usize) -> Result<()> {
    match db {
        Db::Sqlite(path) => load_sqlite(path, from, to)
            .map_err(|e| Error::msg(format!("loading keys into {}: {e}", path.display()))),
        Db::Postgres(url) => crate::floor::block_on(load_postgres(url, from, to)),
    }
}

fn load_sqlite(path: &std::path::Path, from: usize, to: usize) -> rusqlite::Result<()> {
    let mut conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    let tx = conn.transaction()?;
    {
        let mut acc = tx.prepare(
            "INSERT INTO accounts (account_id, created_at) VALUES (?1, 0) ON CONFLICT DO NOTHING",
        )?;
        let mut user = tx.prepare(
            "INSERT INTO users (account_id, user_id, role, created_at) VALUES (?1, ?2, 'member', 0)",
        )?;
        let mut key = tx.prepare(
            "INSERT INTO keys (key_id, account_id, user_id, created_at) VALUES (?1, ?2, ?3, 0)",
        )?;
        for i in from..to {
            let account = format!("bench-a{}", i / USERS_PER_ACCOUNT);
            let user_id = format!("u{i}");
            if i % USERS_PER_ACCOUNT == 0 || i == from {
                acc.execute([&account])?;
            }
            user.execute([&account, &user_id])?;
            key.execute(rusqlite::params![key_id(i), account, user_id])?;
        }
    }
    tx.commit()?;
    conn.execute_batch("ANALYZE")?;
    Ok(())
}

async fn load_postgres(url: &str, from: usize, to: usize) -> Result<()> {
    let client = crate::floor::pg_connect(url).await?;
    let (a, b) = (from as i64, to as i64 - 1);
    let per = USERS_PER_ACCOUNT as i64;
    let statements = [
        format!(
            "INSERT INTO accounts (account_id, created_at) \
             SELECT 'bench-a' || g, 0 FROM generate_series({}, {}) g ON CONFLICT DO NOTHING",
            a / per,
            b / per
        ),
        format!(
            "INSERT INTO users (account_id, user_id, role, created_at) \
             SELECT 'bench-a' || (g / {per}), 'u' || g, 'member', 0 FROM generate_series({a}, {b}) g"
        ),
        format!(
            "INSERT INTO keys (key_id, account_id, user_id, created_at) \
             SELECT encode(sha256(convert_to('kg_bench_' || g, 'UTF8')), 'hex'), \
                    'bench-a' || (g / {per}), 'u' || g, 0 FROM generate_series({a}, {b}) g"
        ),
        "ANALYZE".to_string(),
    ];
    for s in statements {
        client
            .batch_execute(&s)
            .await
            .map_err(|e| Error::msg(format!("loading keys into PostgreSQL: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_the_keystores() {
        // printf %s kg_bench_0 | sha256sum (PostgreSQL's loader computes the same in SQL)
        assert_eq!(
            key_id(0),
            "62bff19dee51fc869ec75ccda411e92e3e73fc2860b78306999244e3b6ecc855"
        );
        assert_ne!(key_id(1), miss_id(1));
    }
}
