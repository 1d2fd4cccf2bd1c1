//! keystore: the reference key store for keygate.
//!
//! An HTTP service over an embedded SQLite database that answers the keygate filter's key
//! lookups (`GET /v1/keys/{key_id}`) and change feed (`GET /v1/changes?since=N`), and offers
//! an admin API to create accounts and users and to rotate and revoke their keys. Keys are
//! stored only as SHA-256 key ids; a new key is shown once, in the response that created it.

pub mod api;
pub mod error;
pub mod keys;
pub mod metrics;
pub mod store;

pub use api::{router, AppState};
pub use store::{Store, StoreError};

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpListener;

/// Default number of change-log rows kept.
pub const DEFAULT_CHANGES_RETENTION: u64 = 100_000;

/// Everything needed to open the store.
#[derive(Clone)]
pub struct Config {
    /// SQLite database file (created if missing).
    pub db_path: PathBuf,
    /// Raw root key; stored only as its key id.
    pub root_key: Option<String>,
    /// Sleep before answering each key lookup.
    pub lookup_delay: Duration,
    /// Change-log rows kept.
    pub changes_retention: u64,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("db_path", &self.db_path)
            .field("root_key", &self.root_key.as_ref().map(|_| "<redacted>"))
            .field("lookup_delay", &self.lookup_delay)
            .field("changes_retention", &self.changes_retention)
            .finish()
    }
}

impl Config {
    /// A configuration with defaults for everything but the database path.
    pub fn new(db_path: impl Into<PathBuf>) -> Config {
        Config {
            db_path: db_path.into(),
            root_key: None,
            lookup_delay: Duration::ZERO,
            changes_retention: DEFAULT_CHANGES_RETENTION,
        }
    }
}

/// Opens the database (on the blocking pool) and installs the root key, if any.
pub async fn open(config: &Config) -> Result<AppState, StoreError> {
    let path = config.db_path.clone();
    let retention = config.changes_retention;
    let store = tokio::task::spawn_blocking(move || Store::open(&path, retention))
        .await
        .map_err(|e| StoreError::Internal(format!("database task failed: {e}")))??;
    match config.root_key.as_deref() {
        Some(raw) => {
            let id = keys::key_id(raw);
            store.upsert_root_key(id.clone()).await?;
            tracing::info!(key = keys::log_prefix(&id), "root key installed");
        }
        None => {
            tracing::warn!(
                "no root key configured (--root-key-file or KEYSTORE_ROOT_KEY): \
                 the admin API only accepts keys already in the database"
            );
        }
    }
    Ok(AppState::new(store, config.lookup_delay))
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
