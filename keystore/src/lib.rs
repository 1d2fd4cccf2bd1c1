//! keystore: the reference key store for keygate.
//!
//! An HTTP service over SQLite (embedded, the default) or PostgreSQL (several keystore
//! processes on one database) that answers the keygate filter's key lookups
//! (`GET /v1/keys/{key_id}`), change feed (`GET /v1/changes?since=N`), key summary
//! (`GET /v1/summary`) and usage reports (`POST /v1/usage`), and offers an admin API to
//! create accounts and users, to give users named keys (with expiry and claims), to rotate
//! them (with a grace period) and revoke them, and to read the audit trail. Keys are stored only as SHA-256 key ids; a new key is shown
//! once, in the response that created it.

pub mod api;
pub mod authority;
pub mod error;
pub mod keys;
pub mod metrics;
pub mod store;
pub mod tls;

pub use api::{router, AppState};
pub use store::{Store, StoreError};

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpListener;

/// Default number of change-log rows kept.
pub const DEFAULT_CHANGES_RETENTION: u64 = 100_000;

pub use store::DEFAULT_POOL_SIZE;

/// Where the data lives.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite database file (created if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL database: a `postgres://` URL or a libpq `key=value` string. The schema
    /// is created at start-up if it is not there yet.
    Postgres(String),
}

impl Database {
    /// How to name it in messages: the path, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Database::Sqlite(path) => path.display().to_string(),
            Database::Postgres(url) => redact_password(url),
        }
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Database::Postgres(_) => f.debug_tuple("Postgres").field(&self.describe()).finish(),
        }
    }
}

/// `url` with any password replaced by `***`: the one in `scheme://user:password@host`, and
/// `password=...` in a query string or a `key=value` connection string.
pub fn redact_password(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end.saturating_add(3);
        let rest = out.get(rest_start..).unwrap_or_default();
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = rest.get(..authority_end).unwrap_or_default();
        if let Some(at) = authority.rfind('@') {
            let userinfo = authority.get(..at).unwrap_or_default();
            if let Some(colon) = userinfo.find(':') {
                let from = rest_start.saturating_add(colon).saturating_add(1);
                let to = rest_start.saturating_add(at);
                out.replace_range(from..to, "***");
            }
        }
    }
    // password=... up to the next '&' or whitespace (query string or key=value form).
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find("password=") {
        let boundary = i == 0
            || rest
                .get(..i)
                .and_then(|s| s.chars().last())
                .is_some_and(|c| c == '&' || c == '?' || c.is_whitespace());
        let value_start = i.saturating_add("password=".len());
        result.push_str(rest.get(..value_start).unwrap_or_default());
        let tail = rest.get(value_start..).unwrap_or_default();
        if boundary {
            let end = tail
                .find(|c: char| c == '&' || c.is_whitespace())
                .unwrap_or(tail.len());
            result.push_str("***");
            rest = tail.get(end..).unwrap_or_default();
        } else {
            rest = tail;
        }
    }
    result.push_str(rest);
    result
}

/// Everything needed to open the store.
#[derive(Clone)]
pub struct Config {
    /// The database: SQLite file or PostgreSQL URL.
    pub database: Database,
    /// Raw root key; stored only as its key id.
    pub root_key: Option<String>,
    /// Bearer token the key-store protocol endpoints (`/v1/keys/`, `/v1/changes`) require;
    /// `None`: they are open. Kept only as its SHA-256 digest.
    pub protocol_token: Option<String>,
    /// Sleep before answering each key lookup.
    pub lookup_delay: Duration,
    /// Change-log rows kept.
    pub changes_retention: u64,
    /// PostgreSQL connections this process may open (ignored with SQLite).
    pub pool_size: usize,
    /// Which roles account admins may grant, and which only root may.
    pub roles: authority::RoleRegistry,
    /// How the key summary (`GET /v1/summary`) is sized and when it is rebuilt.
    pub summary: store::SummarySettings,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("database", &self.database)
            .field("root_key", &self.root_key.as_ref().map(|_| "<redacted>"))
            .field(
                "protocol_token",
                &self.protocol_token.as_ref().map(|_| "<redacted>"),
            )
            .field("lookup_delay", &self.lookup_delay)
            .field("changes_retention", &self.changes_retention)
            .field("pool_size", &self.pool_size)
            .field("roles", &self.roles)
            .field("summary", &self.summary)
            .finish()
    }
}

impl Config {
    /// A configuration with defaults for everything but the SQLite database path.
    pub fn new(db_path: impl Into<PathBuf>) -> Config {
        Config::with_database(Database::Sqlite(db_path.into()))
    }

    /// A configuration with defaults for everything but the PostgreSQL URL.
    pub fn postgres(url: impl Into<String>) -> Config {
        Config::with_database(Database::Postgres(url.into()))
    }

    /// A configuration with defaults for everything but the database.
    pub fn with_database(database: Database) -> Config {
        Config {
            database,
            root_key: None,
            protocol_token: None,
            lookup_delay: Duration::ZERO,
            changes_retention: DEFAULT_CHANGES_RETENTION,
            pool_size: DEFAULT_POOL_SIZE,
            roles: authority::RoleRegistry::default(),
            summary: store::SummarySettings::default(),
        }
    }
}

/// Opens the database (SQLite on the blocking pool; PostgreSQL: connects, creates the schema
/// if needed) and installs the root key, if any.
pub async fn open(config: &Config) -> Result<AppState, StoreError> {
    let retention = config.changes_retention;
    let store = match &config.database {
        Database::Sqlite(path) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || Store::open(&path, retention))
                .await
                .map_err(|e| StoreError::Internal(format!("database task failed: {e}")))??
        }
        Database::Postgres(url) => {
            Store::connect_postgres(url, retention, config.pool_size).await?
        }
    };
    tracing::info!(
        engine = store.engine(),
        database = %config.database.describe(),
        "database open"
    );
    match config.root_key.as_deref() {
        Some(raw) => {
            let id = keys::key_id(raw);
            store.upsert_root_key(id.clone()).await?;
            tracing::info!(key = keys::log_prefix(&id), "root key installed");
        }
        None => {
            let revoked = store.remove_root_key().await?;
            let refs: Vec<&str> = revoked.iter().map(|k| keys::log_prefix(k)).collect();
            tracing::warn!(
                revoked = ?refs,
                "no root key configured (--root-key-file or KEYSTORE_ROOT_KEY): \
                 the stored root key, if any, is revoked; the admin API only accepts \
                 account keys already in the database"
            );
        }
    }
    if config.protocol_token.is_none() {
        tracing::warn!(
            "no protocol token configured (--protocol-token-file or KEYSTORE_PROTOCOL_TOKEN): \
             anyone who reaches /v1/keys/, /v1/changes and /v1/summary can read key ids; set one in production"
        );
    }
    let mut state = AppState::new(store, config.lookup_delay);
    state.roles = std::sync::Arc::new(config.roles.clone());
    state.summaries = std::sync::Arc::new(store::Summaries::new(config.summary));
    state.protocol_token = config
        .protocol_token
        .as_deref()
        .map(api::ProtocolToken::new);
    Ok(state)
}

/// Serves `state` on `listener` until `shutdown` completes, then finishes in-flight requests.
/// Prints `keystore listening on <addr>` to stderr once the listener accepts connections.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    eprintln!("keystore listening on {addr}");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        for (url, want) in [
            (
                "postgres://ks:s3cret@db.example:5432/keystore",
                "postgres://ks:***@db.example:5432/keystore",
            ),
            (
                "postgresql://ks:p%40ss@db/keystore?sslmode=disable",
                "postgresql://ks:***@db/keystore?sslmode=disable",
            ),
            ("postgres://ks@db/keystore", "postgres://ks@db/keystore"),
            ("postgres://db/keystore", "postgres://db/keystore"),
            (
                "postgres://db/keystore?user=ks&password=s3cret&application_name=x",
                "postgres://db/keystore?user=ks&password=***&application_name=x",
            ),
            (
                "host=db user=ks password=s3cret dbname=keystore",
                "host=db user=ks password=*** dbname=keystore",
            ),
            ("password=s3cret", "password=***"),
            // Not a password field.
            ("host=db mypassword=x", "host=db mypassword=x"),
        ] {
            assert_eq!(redact_password(url), want, "{url}");
        }
        let db = Database::Postgres("postgres://ks:s3cret@db/keystore".into());
        assert!(!format!("{db:?}").contains("s3cret"));
        let config = Config::postgres("postgres://ks:s3cret@db/keystore");
        assert!(!format!("{config:?}").contains("s3cret"));
    }
}
