//! The store's errors: one type for every job and both engines.
//!
//! Invariant: no message holds a raw key (a key is named by its key reference, at most);
//! `KeyExists` never says whose key it is.

use crate::authority;

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
    #[error("key {key_ref} not found for user {user} in account {account}")]
    KeyNotFound {
        account: String,
        user: String,
        key_ref: String,
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
