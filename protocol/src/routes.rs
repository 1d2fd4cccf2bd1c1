//! The key store's HTTP routes: the store protocol the filter speaks (lookup, changes feed,
//! usage report) and the admin API (keygatectl, the harness, tests).
//!
//! Invariant: each route is spelled once, here, as an axum/OpenAPI pattern whose `{name}`
//! segments are parameters; the key store registers the patterns and every client builds its
//! paths from the same patterns ([`fill`] and the functions of [`admin`]), so a route cannot
//! move on one side only.

/// The lookup: `GET {LOOKUP}{key_id}` (the filter's default `store.lookup_path`).
pub const LOOKUP: &str = "/v1/keys/";
/// The lookup's pattern, as the key store registers it.
pub const LOOKUP_PATTERN: &str = "/v1/keys/{key_id}";
/// The changes feed: `GET {CHANGES}?since={revision}` (default `store.changes_path`).
pub const CHANGES: &str = "/v1/changes";
/// The usage report: `POST {USAGE}` (default `store.usage_path`).
pub const USAGE: &str = "/v1/usage";
/// The key summary: `GET {SUMMARY}` answers the Bloom filter of live key ids in the wire
/// form of [`crate::summary`] (default `summary.path`).
pub const SUMMARY: &str = "/v1/summary";

/// The path of a key's lookup under `lookup_prefix` (the filter's `store.lookup_path`).
pub fn lookup(lookup_prefix: &str, key_id: &str) -> String {
    format!("{lookup_prefix}{key_id}")
}

/// The path of the changes page after `since` under `changes_path` (`store.changes_path`).
pub fn changes(changes_path: &str, since: u64) -> String {
    format!("{changes_path}?since={since}")
}

/// `pattern` with its `{name}` parameters replaced, in order, by `segments`, inserted as given
/// (a caller whose segments may hold `/`, `?`, `%` or `#` percent-encodes them first). A
/// parameter without a segment is left as it is.
pub fn fill(pattern: &str, segments: &[&str]) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    let mut segments = segments.iter();
    while let Some((before, after)) = rest.split_once('{') {
        out.push_str(before);
        let Some((name, after)) = after.split_once('}') else {
            out.push('{');
            rest = after;
            continue;
        };
        match segments.next() {
            Some(segment) => out.push_str(segment),
            None => {
                out.push('{');
                out.push_str(name);
                out.push('}');
            }
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// The admin API: accounts, users, keys, audit trail, leak reports.
pub mod admin {
    use super::fill;

    /// Every admin route starts with this (the filter's default `invalidate_paths`).
    pub const PREFIX: &str = "/api/v1/admin/";
    /// `GET` lists accounts, `POST` creates one.
    pub const ACCOUNTS: &str = "/api/v1/admin/accounts";
    /// `GET`, `PATCH`, `DELETE` one account.
    pub const ACCOUNT: &str = "/api/v1/admin/accounts/{account}";
    /// `GET` lists an account's users, `POST` creates one.
    pub const USERS: &str = "/api/v1/admin/accounts/{account}/users";
    /// `GET`, `PATCH`, `DELETE` one user.
    pub const USER: &str = "/api/v1/admin/accounts/{account}/users/{user}";
    /// `POST` rotates a user's default key.
    pub const USER_KEY: &str = "/api/v1/admin/accounts/{account}/users/{user}/key";
    /// `GET` lists a user's keys, `POST` creates a named key.
    pub const KEYS: &str = "/api/v1/admin/accounts/{account}/users/{user}/keys";
    /// `GET`, `PATCH`, `DELETE` one key (by its reference).
    pub const KEY: &str = "/api/v1/admin/accounts/{account}/users/{user}/keys/{key}";
    /// `POST` rotates one key.
    pub const KEY_ROTATE: &str = "/api/v1/admin/accounts/{account}/users/{user}/keys/{key}/rotate";
    /// `GET` the whole audit trail.
    pub const AUDIT: &str = "/api/v1/admin/audit";
    /// `GET` one account's audit trail.
    pub const ACCOUNT_AUDIT: &str = "/api/v1/admin/accounts/{account}/audit";
    /// `POST` a leaked key's value: which key it is.
    pub const KEYS_FIND: &str = "/api/v1/admin/keys/find";
    /// `POST` a leaked key's value: revoke it.
    pub const KEYS_REVOKE: &str = "/api/v1/admin/keys/revoke";

    /// [`ACCOUNT`] of `account`.
    pub fn account(account: &str) -> String {
        fill(ACCOUNT, &[account])
    }
    /// [`USERS`] of `account`.
    pub fn users(account: &str) -> String {
        fill(USERS, &[account])
    }
    /// [`USER`] of `account`, `user`.
    pub fn user(account: &str, user: &str) -> String {
        fill(USER, &[account, user])
    }
    /// [`USER_KEY`] of `account`, `user`.
    pub fn user_key(account: &str, user: &str) -> String {
        fill(USER_KEY, &[account, user])
    }
    /// [`KEYS`] of `account`, `user`.
    pub fn keys(account: &str, user: &str) -> String {
        fill(KEYS, &[account, user])
    }
    /// [`KEY`] of `account`, `user`, `key`.
    pub fn key(account: &str, user: &str, key: &str) -> String {
        fill(KEY, &[account, user, key])
    }
    /// [`KEY_ROTATE`] of `account`, `user`, `key`.
    pub fn key_rotate(account: &str, user: &str, key: &str) -> String {
        fill(KEY_ROTATE, &[account, user, key])
    }
    /// [`ACCOUNT_AUDIT`] of `account`.
    pub fn account_audit(account: &str) -> String {
        fill(ACCOUNT_AUDIT, &[account])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_pattern_is_filled_with_its_segments_in_order() {
        assert_eq!(
            admin::key("acme", "ann", "k1"),
            "/api/v1/admin/accounts/acme/users/ann/keys/k1"
        );
        assert_eq!(
            admin::key_rotate("a", "u", "k"),
            "/api/v1/admin/accounts/a/users/u/keys/k/rotate"
        );
        assert_eq!(
            admin::user_key("a", "u"),
            "/api/v1/admin/accounts/a/users/u/key"
        );
        assert_eq!(admin::account_audit("a"), "/api/v1/admin/accounts/a/audit");
        assert_eq!(fill(LOOKUP_PATTERN, &["ab12"]), "/v1/keys/ab12");
    }

    #[test]
    fn a_segment_is_inserted_as_given_and_a_missing_one_leaves_its_parameter() {
        assert_eq!(admin::account("b%2Eo"), "/api/v1/admin/accounts/b%2Eo");
        assert_eq!(
            fill(admin::USER, &["a"]),
            "/api/v1/admin/accounts/a/users/{user}"
        );
        assert_eq!(fill("/x/{y", &["z"]), "/x/{y");
    }

    #[test]
    fn every_admin_route_is_under_the_admin_prefix() {
        for route in [
            admin::ACCOUNTS,
            admin::ACCOUNT,
            admin::USERS,
            admin::USER,
            admin::USER_KEY,
            admin::KEYS,
            admin::KEY,
            admin::KEY_ROTATE,
            admin::AUDIT,
            admin::ACCOUNT_AUDIT,
            admin::KEYS_FIND,
            admin::KEYS_REVOKE,
        ] {
            assert!(route.starts_with(admin::PREFIX), "{route}");
        }
    }

    #[test]
    fn protocol_paths_carry_only_the_key_id_and_the_revision() {
        assert_eq!(lookup(LOOKUP, "ab12"), "/v1/keys/ab12");
        assert_eq!(changes(CHANGES, 7), "/v1/changes?since=7");
    }
}
