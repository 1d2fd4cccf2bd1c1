//! The SQL text, shared by SQLite and PostgreSQL wherever the two engines agree.
//!
//! Every statement is written once, with PostgreSQL's `$1`-style parameters; the SQLite backend
//! rewrites them to SQLite's equivalent `?1` (see [`to_sqlite`]). Only these differ by engine:
//! the column type of `changes.revision` and `audit.id` (SQLite `INTEGER PRIMARY KEY
//! AUTOINCREMENT`, PostgreSQL `BIGSERIAL`), where the schema version is kept, and how a write
//! transaction starts (see the backends).
//!
//! The schema is version 1 ([`SQLITE_SCHEMA`], as first released, never edited) followed by
//! the numbered migration steps ([`SQLITE_MIGRATIONS`]); a new database runs them all, an
//! older one the steps after its version.
//!
//! Rules that keep the answers identical on both engines:
//! - no `ORDER BY` on text (collations differ: SQLite compares bytes, PostgreSQL uses the
//!   database's locale); rows are sorted in Rust where the order matters;
//! - in `ON CONFLICT ... DO UPDATE`, columns of the existing row are qualified with the table
//!   name (PostgreSQL would find `excluded.col` ambiguous otherwise);
//! - integers are `BIGINT` (`i64`), text is `TEXT`.

/// The schema (version 1), with the engine's type for `changes.revision`.
macro_rules! schema {
    ($revision:literal) => {
        concat!(
            "
CREATE TABLE accounts (
    account_id TEXT PRIMARY KEY NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE TABLE users (
    account_id TEXT NOT NULL REFERENCES accounts(account_id),
    user_id    TEXT NOT NULL,
    role       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    PRIMARY KEY (account_id, user_id)
);
CREATE TABLE keys (
    key_id     TEXT PRIMARY KEY NOT NULL,
    account_id TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    FOREIGN KEY (account_id, user_id) REFERENCES users(account_id, user_id)
);
CREATE INDEX keys_by_user ON keys(account_id, user_id);
CREATE TABLE changes (
    revision ",
            $revision,
            ",
    key_id   TEXT NOT NULL,
    kind     TEXT NOT NULL,
    at       BIGINT NOT NULL
);
CREATE TABLE meta (
    name  TEXT PRIMARY KEY NOT NULL,
    value BIGINT NOT NULL
);
INSERT INTO meta (name, value) VALUES ('pruned_through', 0);
"
        )
    };
}

/// Schema version 1 on SQLite (kept in `PRAGMA user_version`).
pub const SQLITE_SCHEMA: &str = schema!("INTEGER PRIMARY KEY AUTOINCREMENT");
/// Schema version 1 on PostgreSQL (the version is the `meta` row `schema_version`).
pub const POSTGRES_SCHEMA: &str = schema!("BIGSERIAL PRIMARY KEY");

/// The migration steps after version 1, with the engine's type for `audit.id`: step `i`
/// (from 0) moves the schema from version `i + 1` to `i + 2`. Version 2: key names, expiry,
/// last use, hints, creators and claims; account claims; the audit trail. Version 3: each
/// key's capabilities (NULL for older keys: what the role allows, see `authority`) and each
/// user's expiry. Version 4: accounts, users and keys can be disabled (`disabled_at`,
/// NULL = enabled); audit entries name the acting key (`actor_key`, a key reference).
macro_rules! migrations {
    ($serial:literal) => {
        [
            concat!(
                "
ALTER TABLE accounts ADD COLUMN claims TEXT;
ALTER TABLE keys ADD COLUMN name TEXT NOT NULL DEFAULT 'default';
ALTER TABLE keys ADD COLUMN hint TEXT;
ALTER TABLE keys ADD COLUMN created_by TEXT;
ALTER TABLE keys ADD COLUMN expires_at BIGINT;
ALTER TABLE keys ADD COLUMN last_used_at BIGINT;
ALTER TABLE keys ADD COLUMN claims TEXT;
CREATE TABLE audit (
    id            ",
                $serial,
                ",
    at            BIGINT NOT NULL,
    actor_account TEXT NOT NULL,
    actor_user    TEXT NOT NULL,
    action        TEXT NOT NULL,
    account_id    TEXT NOT NULL,
    object        TEXT NOT NULL,
    detail        TEXT
);
CREATE INDEX audit_by_account ON audit(account_id, id);
"
            ),
            "
ALTER TABLE keys ADD COLUMN capabilities TEXT;
ALTER TABLE users ADD COLUMN expires_at BIGINT;
",
            "
ALTER TABLE accounts ADD COLUMN disabled_at BIGINT;
ALTER TABLE users ADD COLUMN disabled_at BIGINT;
ALTER TABLE keys ADD COLUMN disabled_at BIGINT;
ALTER TABLE audit ADD COLUMN actor_key TEXT;
CREATE INDEX audit_by_action ON audit(action, id);
",
        ]
    };
}

/// The migration steps on SQLite.
pub const SQLITE_MIGRATIONS: [&str; 3] = migrations!("INTEGER PRIMARY KEY AUTOINCREMENT");
/// The migration steps on PostgreSQL.
pub const POSTGRES_MIGRATIONS: [&str; 3] = migrations!("BIGSERIAL PRIMARY KEY");

/// The current revision: the newest change row (pruning always keeps at least one), or
/// `pruned_through` when there is none.
pub const CURRENT_REVISION: &str = "SELECT COALESCE((SELECT MAX(revision) FROM changes), \
     (SELECT value FROM meta WHERE name = 'pruned_through'))";
pub const PRUNED_THROUGH: &str = "SELECT value FROM meta WHERE name = 'pruned_through'";
pub const SET_PRUNED_THROUGH: &str = "UPDATE meta SET value = $1 WHERE name = 'pruned_through'";
pub const DELETE_CHANGES_THROUGH: &str = "DELETE FROM changes WHERE revision <= $1";
pub const INSERT_CHANGE: &str = "INSERT INTO changes (key_id, kind, at) VALUES ($1, $2, $3)";
pub const CHANGES_AFTER: &str =
    "SELECT revision, key_id, kind FROM changes WHERE revision > $1 ORDER BY revision LIMIT $2";

/// An active key: unrevoked and enabled key, user and account, and neither key nor user
/// expired at `$2`; with its capabilities and its user's expiry.
pub const LOOKUP: &str = "SELECT k.account_id, k.user_id, u.role, k.expires_at, \
       a.claims, k.claims, k.capabilities, u.expires_at FROM keys k \
     JOIN users u ON u.account_id = k.account_id AND u.user_id = k.user_id \
     JOIN accounts a ON a.account_id = k.account_id \
     WHERE k.key_id = $1 AND k.revoked_at IS NULL \
       AND (k.expires_at IS NULL OR k.expires_at > $2) \
       AND (u.expires_at IS NULL OR u.expires_at > $2) \
       AND u.revoked_at IS NULL AND a.revoked_at IS NULL \
       AND k.disabled_at IS NULL AND u.disabled_at IS NULL AND a.disabled_at IS NULL";

/// The key ids of the keys themselves unrevoked, enabled and unexpired at `$2`, after `$1`
/// in key-id order, at most `$3` of them: a page of a summary build. A superset of what the
/// lookup answers (see [`LOOKUP`]): keys of disabled or expired users and of disabled
/// accounts are included (revoking a user or an account revokes its keys), which only costs
/// lookups, and saves the two joins: at 10^6 keys on one core a build took 5.6 s (SQLite)
/// and 14.5 s (PostgreSQL) with them, 2.8 s and 3.7 s without (`make bench-store`). Text order
/// differs between the engines, but each agrees with itself, which is all paging needs.
pub const LIVE_KEY_IDS_AFTER: &str = "SELECT key_id FROM keys \
     WHERE key_id > $1 AND revoked_at IS NULL AND disabled_at IS NULL \
       AND (expires_at IS NULL OR expires_at > $2) \
     ORDER BY key_id LIMIT $3";

pub const ACCOUNT_EXISTS: &str = "SELECT 1 FROM accounts WHERE account_id = $1";
pub const ACCOUNT_ACTIVE: &str =
    "SELECT 1 FROM accounts WHERE account_id = $1 AND revoked_at IS NULL";
pub const INSERT_ACCOUNT: &str = "INSERT INTO accounts (account_id, created_at) VALUES ($1, $2)";
pub const UPSERT_ACCOUNT: &str = "INSERT INTO accounts (account_id, created_at) VALUES ($1, $2) \
     ON CONFLICT (account_id) DO UPDATE SET revoked_at = NULL \
     WHERE accounts.revoked_at IS NOT NULL";
pub const REVOKE_ACCOUNT: &str = "UPDATE accounts SET revoked_at = $1 WHERE account_id = $2";

pub const USER_EXISTS: &str = "SELECT 1 FROM users WHERE account_id = $1 AND user_id = $2";
pub const ACTIVE_USER_ROLE: &str = "SELECT role, expires_at FROM users \
     WHERE account_id = $1 AND user_id = $2 AND revoked_at IS NULL";
pub const INSERT_USER: &str =
    "INSERT INTO users (account_id, user_id, role, created_at, expires_at) \
     VALUES ($1, $2, $3, $4, $5)";
pub const UPSERT_USER: &str =
    "INSERT INTO users (account_id, user_id, role, created_at) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (account_id, user_id) DO UPDATE SET role = $3, revoked_at = NULL \
     WHERE users.revoked_at IS NOT NULL OR users.role <> $3";
pub const SET_ROLE: &str = "UPDATE users SET role = $1 WHERE account_id = $2 AND user_id = $3";
pub const SET_USER_EXPIRY: &str =
    "UPDATE users SET expires_at = $1 WHERE account_id = $2 AND user_id = $3";
pub const REVOKE_USER: &str =
    "UPDATE users SET revoked_at = $1 WHERE account_id = $2 AND user_id = $3";
pub const REVOKE_ACCOUNT_USERS: &str =
    "UPDATE users SET revoked_at = $1 WHERE account_id = $2 AND revoked_at IS NULL";
/// Unordered: sorted by user id in Rust (byte order on both engines).
pub const LIST_ACTIVE_USERS: &str = "SELECT user_id, role, created_at, disabled_at, expires_at \
     FROM users \
     WHERE account_id = $1 AND revoked_at IS NULL";

pub const KEY_EXISTS: &str = "SELECT 1 FROM keys WHERE key_id = $1";
pub const KEY_OWNER: &str = "SELECT account_id, user_id, revoked_at FROM keys WHERE key_id = $1";
pub const INSERT_KEY: &str = "INSERT INTO keys \
     (key_id, account_id, user_id, created_at, name, hint, created_by, expires_at, claims, \
      capabilities) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
pub const UNREVOKE_KEY: &str = "UPDATE keys SET revoked_at = NULL WHERE key_id = $1";
pub const ACTIVE_KEYS: &str =
    "SELECT key_id FROM keys WHERE account_id = $1 AND user_id = $2 AND revoked_at IS NULL";
/// The unrevoked keys of a user with their capabilities.
pub const ACTIVE_KEY_CAPS: &str = "SELECT key_id, capabilities FROM keys \
     WHERE account_id = $1 AND user_id = $2 AND revoked_at IS NULL";
pub const SET_KEY_CAPS: &str = "UPDATE keys SET capabilities = $1 WHERE key_id = $2";
/// How many keys of a user were created after `$3` by anyone but `$4` (root) and the
/// configuration, and the oldest of them.
pub const RECENT_KEYS: &str = "SELECT COUNT(*), MIN(created_at) FROM keys \
     WHERE account_id = $1 AND user_id = $2 AND created_at > $3 \
       AND created_by IS NOT NULL AND created_by <> $4";
pub const REVOKE_USER_KEYS: &str = "UPDATE keys SET revoked_at = $1 \
     WHERE account_id = $2 AND user_id = $3 AND revoked_at IS NULL RETURNING key_id";
pub const REVOKE_ACCOUNT_KEYS: &str = "UPDATE keys SET revoked_at = $1 \
     WHERE account_id = $2 AND revoked_at IS NULL RETURNING key_id";
pub const REVOKE_OTHER_KEYS: &str = "UPDATE keys SET revoked_at = $1 \
     WHERE account_id = $2 AND user_id = $3 AND key_id <> $4 AND revoked_at IS NULL \
     RETURNING key_id";

/// The unrevoked keys of a user (expired ones included), unordered.
pub const LIST_KEYS: &str = "SELECT key_id, name, hint, created_at, created_by, expires_at, \
       last_used_at, claims, disabled_at, capabilities FROM keys \
     WHERE account_id = $1 AND user_id = $2 AND revoked_at IS NULL";
/// How many unrevoked keys of a user are not expired at `$3`.
pub const COUNT_LIVE_KEYS: &str = "SELECT COUNT(*) FROM keys \
     WHERE account_id = $1 AND user_id = $2 AND revoked_at IS NULL \
       AND (expires_at IS NULL OR expires_at > $3)";
/// The unrevoked keys of a user whose key id starts with `$3` (a key reference).
pub const KEYS_BY_REF: &str = "SELECT key_id, name, expires_at, claims, disabled_at, \
       capabilities FROM keys \
     WHERE account_id = $1 AND user_id = $2 AND revoked_at IS NULL \
       AND substr(key_id, 1, 16) = $3";
pub const REVOKE_KEY: &str = "UPDATE keys SET revoked_at = $1 WHERE key_id = $2";
/// Sets (or with NULL, clears) a key's expiry.
pub const SET_KEY_EXPIRY: &str = "UPDATE keys SET expires_at = $1 WHERE key_id = $2";
pub const SET_KEY_NAME: &str = "UPDATE keys SET name = $1 WHERE key_id = $2";
pub const SET_KEY_CLAIMS: &str = "UPDATE keys SET claims = $1 WHERE key_id = $2";
/// Brings the expiry of the user's unrevoked keys forward to `$1` (a rotation's grace).
pub const EXPIRE_USER_KEYS: &str = "UPDATE keys SET expires_at = $1 \
     WHERE account_id = $2 AND user_id = $3 AND revoked_at IS NULL \
       AND (expires_at IS NULL OR expires_at > $1) RETURNING key_id";
/// An active account: (account_id, created_at, disabled_at, claims).
pub const ACCOUNT_ROW: &str = "SELECT account_id, created_at, disabled_at, claims FROM accounts \
     WHERE account_id = $1 AND revoked_at IS NULL";
/// Every active account, unordered: the columns of [`ACCOUNT_ROW`].
pub const LIST_ACTIVE_ACCOUNTS: &str =
    "SELECT account_id, created_at, disabled_at, claims FROM accounts WHERE revoked_at IS NULL";
pub const ACCOUNT_CLAIMS: &str =
    "SELECT claims FROM accounts WHERE account_id = $1 AND revoked_at IS NULL";
pub const SET_ACCOUNT_CLAIMS: &str = "UPDATE accounts SET claims = $1 WHERE account_id = $2";
pub const ACCOUNT_ACTIVE_KEYS: &str =
    "SELECT key_id FROM keys WHERE account_id = $1 AND revoked_at IS NULL";
/// Records a use at minute `$1` unless one at that minute or later is recorded already, and
/// only for a key that is unrevoked and enabled, of an unrevoked, enabled user and account.
pub const TOUCH_KEY: &str = "UPDATE keys SET last_used_at = $1 \
     WHERE key_id = $2 AND (last_used_at IS NULL OR last_used_at < $1) \
       AND revoked_at IS NULL AND disabled_at IS NULL \
       AND EXISTS (SELECT 1 FROM users u JOIN accounts a ON a.account_id = u.account_id \
         WHERE u.account_id = keys.account_id AND u.user_id = keys.user_id \
           AND u.revoked_at IS NULL AND u.disabled_at IS NULL \
           AND a.revoked_at IS NULL AND a.disabled_at IS NULL)";

pub const INSERT_AUDIT: &str = "INSERT INTO audit \
     (at, actor_account, actor_user, action, account_id, object, detail, actor_key) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
/// One page of the audit trail (`$1`: after id, `$2`: limit).
pub const AUDIT_AFTER: &str = "SELECT id, at, actor_account, actor_user, action, account_id, \
       object, detail, actor_key FROM audit WHERE id > $1 ORDER BY id LIMIT $2";
/// One page of the audit trail of account `$3`.
pub const AUDIT_OF_ACCOUNT_AFTER: &str = "SELECT id, at, actor_account, actor_user, action, \
       account_id, object, detail, actor_key FROM audit WHERE id > $1 AND account_id = $3 \
     ORDER BY id LIMIT $2";
/// Deletes the entries of action `$1` older than the newest `$2` of them.
pub const PRUNE_AUDIT_ACTION: &str = "DELETE FROM audit WHERE action = $1 AND id <= \
     (SELECT id FROM audit WHERE action = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)";

/// Enabling and disabling (`$1`: the time, or NULL to enable).
pub const SET_ACCOUNT_DISABLED: &str = "UPDATE accounts SET disabled_at = $1 WHERE account_id = $2";
pub const SET_USER_DISABLED: &str =
    "UPDATE users SET disabled_at = $1 WHERE account_id = $2 AND user_id = $3";
pub const SET_KEY_DISABLED: &str = "UPDATE keys SET disabled_at = $1 WHERE key_id = $2";
pub const ACCOUNT_DISABLED_AT: &str =
    "SELECT disabled_at FROM accounts WHERE account_id = $1 AND revoked_at IS NULL";
pub const USER_DISABLED_AT: &str = "SELECT disabled_at FROM users \
     WHERE account_id = $1 AND user_id = $2 AND revoked_at IS NULL";

/// Everything a leak report needs about one key id, whatever its state.
pub const KEY_STATE: &str = "SELECT k.account_id, k.user_id, k.name, k.revoked_at, \
       k.disabled_at, k.expires_at, u.revoked_at, u.disabled_at, a.revoked_at, a.disabled_at, \
       u.expires_at \
     FROM keys k \
     JOIN users u ON u.account_id = k.account_id AND u.user_id = k.user_id \
     JOIN accounts a ON a.account_id = k.account_id \
     WHERE k.key_id = $1";

/// A trivial query, for health checks.
pub const PING: &str = "SELECT 1";

/// `sql` with PostgreSQL's `$N` parameters written as SQLite's `?N` (same meaning: the N-th
/// bound value). The shared statements hold no string literal with a `$` in it.
pub fn to_sqlite(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_rewritten_for_sqlite() {
        assert_eq!(
            to_sqlite("UPDATE t SET a = $1 WHERE b = $12 AND c = '$' AND d = $3"),
            "UPDATE t SET a = ?1 WHERE b = ?12 AND c = '$' AND d = ?3"
        );
        assert_eq!(to_sqlite(PING), PING);
    }

    #[test]
    fn the_schemas_differ_only_in_the_serial_columns() {
        assert_eq!(
            SQLITE_SCHEMA.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "@"),
            POSTGRES_SCHEMA.replace("BIGSERIAL PRIMARY KEY", "@")
        );
        for (sqlite, postgres) in SQLITE_MIGRATIONS.iter().zip(POSTGRES_MIGRATIONS) {
            assert_eq!(
                sqlite.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "@"),
                postgres.replace("BIGSERIAL PRIMARY KEY", "@")
            );
        }
    }
}
