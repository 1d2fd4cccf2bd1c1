//! The plugin configuration: parsed with serde (unknown fields refused), then validated into
//! [`Config`]. A bad configuration is refused whole, with one error naming the field, so that
//! Envoy rejects the filter instead of running it half-configured.

use std::fmt;

use serde::Deserialize;

/// The validated configuration. Durations are in milliseconds from here on.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub store: StoreConfig,
    pub cache: CacheConfig,
    pub sync: SyncConfig,
    pub miss_budget: MissBudget,
    pub identity_headers: IdentityHeaders,
    pub invalidate_paths: Vec<String>,
    pub key_sources: Vec<KeySource>,
    pub hide_credentials: bool,
    pub anonymous_paths: Vec<String>,
    pub required_roles: Vec<RoleRule>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub cluster: String,
    pub authority: String,
    pub lookup_path: String,
    pub changes_path: String,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    pub ttl_ms: u64,
    pub negative_ttl_ms: u64,
    pub stale_if_error_ms: u64,
    /// L1 capacity per worker, positive and negative entries together.
    pub max_entries: usize,
    /// The share of `max_entries` that negative entries may use (the rest is kept for keys
    /// that exist, so a flood of bad keys cannot evict good ones).
    pub negative_max_entries: usize,
    /// Slots in the shared table (a power of two).
    pub shared_slots: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SyncConfig {
    pub interval_ms: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MissBudget {
    pub per_second: u64,
    pub burst: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IdentityHeaders {
    pub account: String,
    pub user: String,
    pub role: String,
}

impl IdentityHeaders {
    pub fn names(&self) -> [&str; 3] {
        [&self.account, &self.user, &self.role]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A request header (lowercase name), optionally behind a scheme prefix such as `Bearer `.
    Header {
        name: String,
        prefix: Option<String>,
    },
    /// A query parameter.
    Query { name: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct RoleRule {
    pub prefix: String,
    pub roles: Vec<String>,
}

/// A configuration error: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

fn err(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        message: message.into(),
    }
}

// ---- the JSON form, as users write it ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    store: Option<RawStore>,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    sync: RawSync,
    #[serde(default)]
    miss_budget: RawMissBudget,
    #[serde(default)]
    identity_headers: RawIdentityHeaders,
    invalidate_paths: Option<Vec<String>>,
    key_sources: Option<Vec<RawKeySource>>,
    #[serde(default)]
    hide_credentials: bool,
    #[serde(default)]
    anonymous_paths: Vec<String>,
    #[serde(default)]
    required_roles: Vec<RawRoleRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    cluster: Option<String>,
    authority: Option<String>,
    lookup_path: Option<String>,
    changes_path: Option<String>,
    timeout_ms: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCache {
    ttl_s: Option<i64>,
    negative_ttl_s: Option<i64>,
    stale_if_error_s: Option<i64>,
    max_entries: Option<i64>,
    shared_slots: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSync {
    interval_ms: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMissBudget {
    per_second: Option<i64>,
    burst: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawIdentityHeaders {
    account: Option<String>,
    user: Option<String>,
    role: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeySource {
    header: Option<String>,
    prefix: Option<String>,
    query: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoleRule {
    prefix: String,
    roles: Vec<String>,
}

pub const DEFAULT_TTL_S: i64 = 30;
pub const DEFAULT_NEGATIVE_TTL_S: i64 = 5;
pub const DEFAULT_STALE_IF_ERROR_S: i64 = 300;
pub const DEFAULT_MAX_ENTRIES: i64 = 100_000;
pub const DEFAULT_SHARED_SLOTS: i64 = 8192;
const MAX_SHARED_SLOTS: i64 = 1 << 20;
const MAX_TTL_S: i64 = 86_400 * 365;

impl Config {
    /// Parses and validates the plugin configuration (the filter's `configuration` bytes).
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            err(&field, e.into_inner().to_string())
        })?;
        Config::try_from(raw)
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Config, ConfigError> {
        let store = raw
            .store
            .ok_or_else(|| err("store", "missing (store.cluster is required)"))?;
        let cluster = store
            .cluster
            .ok_or_else(|| err("store.cluster", "missing (required)"))?;
        if cluster.trim().is_empty() {
            return Err(err("store.cluster", "must not be empty"));
        }
        let authority = store.authority.unwrap_or_else(|| cluster.clone());
        if !is_header_value(&authority) || authority.is_empty() {
            return Err(err("store.authority", "must be a non-empty host name"));
        }
        let lookup_path = path_field("store.lookup_path", store.lookup_path, "/v1/keys/")?;
        let changes_path = path_field("store.changes_path", store.changes_path, "/v1/changes")?;
        let timeout_ms = ranged("store.timeout_ms", store.timeout_ms, 1000, 1, 60_000)?;

        let c = raw.cache;
        let ttl_s = ranged("cache.ttl_s", c.ttl_s, DEFAULT_TTL_S, 1, MAX_TTL_S)?;
        let negative_ttl_s = ranged(
            "cache.negative_ttl_s",
            c.negative_ttl_s,
            DEFAULT_NEGATIVE_TTL_S,
            1,
            MAX_TTL_S,
        )?;
        let stale_if_error_s = ranged(
            "cache.stale_if_error_s",
            c.stale_if_error_s,
            DEFAULT_STALE_IF_ERROR_S,
            0,
            MAX_TTL_S,
        )?;
        let max_entries = ranged(
            "cache.max_entries",
            c.max_entries,
            DEFAULT_MAX_ENTRIES,
            4,
            10_000_000,
        )?;
        let shared_slots = ranged(
            "cache.shared_slots",
            c.shared_slots,
            DEFAULT_SHARED_SLOTS,
            1,
            MAX_SHARED_SLOTS,
        )?;
        if !shared_slots.unsigned_abs().is_power_of_two() {
            return Err(err(
                "cache.shared_slots",
                format!("must be a power of two (got {shared_slots})"),
            ));
        }

        let interval_ms = ranged(
            "sync.interval_ms",
            raw.sync.interval_ms,
            1000,
            100,
            3_600_000,
        )?;
        let per_second = ranged(
            "miss_budget.per_second",
            raw.miss_budget.per_second,
            100,
            1,
            1_000_000,
        )?;
        let burst = ranged(
            "miss_budget.burst",
            raw.miss_budget.burst,
            200,
            1,
            10_000_000,
        )?;

        let h = raw.identity_headers;
        let identity_headers = IdentityHeaders {
            account: header_name("identity_headers.account", h.account, "x-account-id")?,
            user: header_name("identity_headers.user", h.user, "x-user-id")?,
            role: header_name("identity_headers.role", h.role, "x-role")?,
        };
        let names = identity_headers.names();
        if names
            .iter()
            .enumerate()
            .any(|(i, n)| names.iter().skip(i.saturating_add(1)).any(|m| m == n))
        {
            return Err(err(
                "identity_headers",
                "the three header names must differ",
            ));
        }

        let invalidate_paths = match raw.invalidate_paths {
            None => vec!["/api/v1/admin/".to_string()],
            Some(paths) => prefixes("invalidate_paths", paths)?,
        };

        let key_sources = match raw.key_sources {
            None => vec![
                KeySource::Header {
                    name: "x-api-key".into(),
                    prefix: None,
                },
                KeySource::Header {
                    name: "authorization".into(),
                    prefix: Some("Bearer ".into()),
                },
            ],
            Some(list) => {
                if list.is_empty() {
                    return Err(err("key_sources", "must list at least one source"));
                }
                list.into_iter()
                    .enumerate()
                    .map(|(i, s)| key_source(i, s))
                    .collect::<Result<_, _>>()?
            }
        };
        for source in &key_sources {
            if let KeySource::Header { name, .. } = source {
                if names.contains(&name.as_str()) {
                    return Err(err(
                        "key_sources",
                        format!("header {name} is also an identity header"),
                    ));
                }
            }
        }

        let anonymous_paths = prefixes("anonymous_paths", raw.anonymous_paths)?;
        let mut required_roles = Vec::with_capacity(raw.required_roles.len());
        for (i, rule) in raw.required_roles.into_iter().enumerate() {
            let field = format!("required_roles[{i}]");
            if !rule.prefix.starts_with('/') {
                return Err(err(&format!("{field}.prefix"), "must start with '/'"));
            }
            if rule.roles.is_empty() || rule.roles.iter().any(|r| r.is_empty()) {
                return Err(err(
                    &format!("{field}.roles"),
                    "must list at least one non-empty role",
                ));
            }
            required_roles.push(RoleRule {
                prefix: rule.prefix,
                roles: rule.roles,
            });
        }

        let max_entries =
            usize::try_from(max_entries).map_err(|_| err("cache.max_entries", "too large"))?;
        Ok(Config {
            store: StoreConfig {
                cluster,
                authority,
                lookup_path,
                changes_path,
                timeout_ms: timeout_ms.unsigned_abs(),
            },
            cache: CacheConfig {
                ttl_ms: seconds_to_ms(ttl_s),
                negative_ttl_ms: seconds_to_ms(negative_ttl_s),
                stale_if_error_ms: seconds_to_ms(stale_if_error_s),
                max_entries,
                negative_max_entries: (max_entries / 4).max(1),
                shared_slots: u32::try_from(shared_slots)
                    .map_err(|_| err("cache.shared_slots", "too large"))?,
            },
            sync: SyncConfig {
                interval_ms: interval_ms.unsigned_abs(),
            },
            miss_budget: MissBudget {
                per_second: per_second.unsigned_abs(),
                burst: burst.unsigned_abs(),
            },
            identity_headers,
            invalidate_paths,
            key_sources,
            hide_credentials: raw.hide_credentials,
            anonymous_paths,
            required_roles,
        })
    }
}

impl Config {
    /// The roles a path requires, if a `required_roles` rule matches it (the first that does).
    pub fn required_roles_for(&self, path: &str) -> Option<&[String]> {
        self.required_roles
            .iter()
            .find(|r| path.starts_with(&r.prefix))
            .map(|r| r.roles.as_slice())
    }

    pub fn is_anonymous(&self, path: &str) -> bool {
        self.anonymous_paths
            .iter()
            .any(|p| path.starts_with(p.as_str()))
    }

    /// Whether a request, answered 2xx upstream, is an admin write that must drop cached verdicts.
    pub fn is_invalidating(&self, method: &str, path: &str) -> bool {
        matches!(method, "POST" | "PUT" | "PATCH" | "DELETE")
            && self
                .invalidate_paths
                .iter()
                .any(|p| path.starts_with(p.as_str()))
    }
}

fn seconds_to_ms(s: i64) -> u64 {
    s.unsigned_abs().saturating_mul(1000)
}

fn ranged(
    field: &str,
    value: Option<i64>,
    default: i64,
    min: i64,
    max: i64,
) -> Result<i64, ConfigError> {
    let v = value.unwrap_or(default);
    if v < min || v > max {
        let what = if min > 0 {
            "a positive integer"
        } else {
            "an integer"
        };
        return Err(err(
            field,
            format!("must be {what} from {min} to {max} (got {v})"),
        ));
    }
    Ok(v)
}

fn path_field(field: &str, value: Option<String>, default: &str) -> Result<String, ConfigError> {
    let v = value.unwrap_or_else(|| default.to_string());
    if !v.starts_with('/') || !v.bytes().all(|b| (0x21..=0x7e).contains(&b)) || v.contains('?') {
        return Err(err(
            field,
            format!("must be a path starting with '/' without a query (got {v:?})"),
        ));
    }
    Ok(v)
}

fn prefixes(field: &str, paths: Vec<String>) -> Result<Vec<String>, ConfigError> {
    for (i, p) in paths.iter().enumerate() {
        if !p.starts_with('/') {
            return Err(err(
                &format!("{field}[{i}]"),
                format!("must start with '/' (got {p:?})"),
            ));
        }
    }
    Ok(paths)
}

fn header_name(field: &str, value: Option<String>, default: &str) -> Result<String, ConfigError> {
    let v = value
        .unwrap_or_else(|| default.to_string())
        .to_ascii_lowercase();
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if v.is_empty() || !v.bytes().all(token) {
        return Err(err(
            field,
            format!("must be an HTTP header name (got {v:?})"),
        ));
    }
    Ok(v)
}

fn key_source(i: usize, s: RawKeySource) -> Result<KeySource, ConfigError> {
    let field = format!("key_sources[{i}]");
    match (s.header, s.query, s.prefix) {
        (Some(h), None, prefix) => {
            let name = header_name(&format!("{field}.header"), Some(h), "")?;
            if let Some(p) = &prefix {
                if p.is_empty() || !is_header_value(p) {
                    return Err(err(
                        &format!("{field}.prefix"),
                        "must be non-empty visible ASCII, e.g. \"Bearer \"",
                    ));
                }
            }
            Ok(KeySource::Header { name, prefix })
        }
        (None, Some(q), None) => {
            if q.is_empty() || q.contains(['&', '=', '?', '#']) {
                return Err(err(
                    &format!("{field}.query"),
                    format!("must be a query parameter name (got {q:?})"),
                ));
            }
            Ok(KeySource::Query { name: q })
        }
        (None, Some(_), Some(_)) => Err(err(
            &format!("{field}.prefix"),
            "only applies to a header source",
        )),
        _ => Err(err(
            &field,
            "must have exactly one of \"header\" or \"query\"",
        )),
    }
}

fn is_header_value(s: &str) -> bool {
    s.bytes().all(|b| b == b' ' || (0x21..=0x7e).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;

    fn parse(json: &str) -> Result<Config, ConfigError> {
        Config::from_json(json.as_bytes())
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = parse(r#"{"store":{"cluster":"keystore"}}"#).unwrap();
        assert_eq!(c.store.authority, "keystore");
        assert_eq!(c.store.lookup_path, "/v1/keys/");
        assert_eq!(c.store.changes_path, "/v1/changes");
        assert_eq!(c.store.timeout_ms, 1000);
        assert_eq!(c.cache.ttl_ms, 30_000);
        assert_eq!(c.cache.negative_ttl_ms, 5_000);
        assert_eq!(c.cache.stale_if_error_ms, 300_000);
        assert_eq!(c.cache.max_entries, 100_000);
        assert_eq!(c.cache.negative_max_entries, 25_000);
        assert_eq!(c.cache.shared_slots, 8192);
        assert_eq!(c.sync.interval_ms, 1000);
        assert_eq!((c.miss_budget.per_second, c.miss_budget.burst), (100, 200));
        assert_eq!(
            c.identity_headers.names(),
            ["x-account-id", "x-user-id", "x-role"]
        );
        assert_eq!(c.invalidate_paths, vec!["/api/v1/admin/".to_string()]);
        assert_eq!(c.key_sources.len(), 2);
        assert!(!c.hide_credentials);
    }

    #[test]
    fn the_documented_full_example_parses() {
        let c = parse(
            r#"{
              "store": { "cluster": "keystore", "authority": "keystore", "lookup_path": "/v1/keys/",
                         "changes_path": "/v1/changes", "timeout_ms": 1000 },
              "cache": { "ttl_s": 30, "negative_ttl_s": 5, "max_entries": 100000 },
              "sync": { "interval_ms": 1000 },
              "identity_headers": { "account": "x-account-id", "user": "x-user-id", "role": "x-role" },
              "invalidate_paths": ["/api/v1/admin/"]
            }"#,
        )
        .unwrap();
        assert_eq!(c.cache.ttl_ms, 30_000);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("not json", ""),
            (r#"{}"#, "store"),
            (r#"{"store":{}}"#, "store.cluster"),
            (r#"{"store":{"cluster":""}}"#, "store.cluster"),
            (
                r#"{"store":{"cluster":"k"},"cache":{"ttl_s":0}}"#,
                "cache.ttl_s",
            ),
            (
                r#"{"store":{"cluster":"k"},"cache":{"ttl_s":-5}}"#,
                "cache.ttl_s",
            ),
            (
                r#"{"store":{"cluster":"k"},"cache":{"negative_ttl_s":0}}"#,
                "cache.negative_ttl_s",
            ),
            (
                r#"{"store":{"cluster":"k"},"cache":{"ttl_s":"30"}}"#,
                "cache.ttl_s",
            ),
            (
                r#"{"store":{"cluster":"k"},"cache":{"shared_slots":1000}}"#,
                "cache.shared_slots",
            ),
            (
                r#"{"store":{"cluster":"k","timeout_ms":0}}"#,
                "store.timeout_ms",
            ),
            (
                r#"{"store":{"cluster":"k","lookup_path":"v1/keys"}}"#,
                "store.lookup_path",
            ),
            (
                r#"{"store":{"cluster":"k"},"sync":{"interval_ms":5}}"#,
                "sync.interval_ms",
            ),
            (
                r#"{"store":{"cluster":"k"},"identity_headers":{"role":"x role"}}"#,
                "identity_headers.role",
            ),
            (
                r#"{"store":{"cluster":"k"},"identity_headers":{"role":"x-user-id"}}"#,
                "identity_headers",
            ),
            (
                r#"{"store":{"cluster":"k"},"invalidate_paths":["admin"]}"#,
                "invalidate_paths[0]",
            ),
            (
                r#"{"store":{"cluster":"k"},"key_sources":[]}"#,
                "key_sources",
            ),
            (
                r#"{"store":{"cluster":"k"},"key_sources":[{"header":"a","query":"b"}]}"#,
                "key_sources[0]",
            ),
            (
                r#"{"store":{"cluster":"k"},"key_sources":[{"header":"x-role"}]}"#,
                "key_sources",
            ),
            (
                r#"{"store":{"cluster":"k"},"required_roles":[{"prefix":"/a","roles":[]}]}"#,
                "required_roles[0].roles",
            ),
        ];
        for (json, field) in cases {
            let e = parse(json).expect_err(json);
            assert_eq!(e.field, field, "{json} -> {e}");
            assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn unknown_fields_are_refused_with_their_path() {
        let e = parse(r#"{"store":{"cluster":"k"},"cache":{"ttl":30}}"#).unwrap_err();
        assert_eq!(e.field, "cache.ttl");
        assert!(e.message.contains("unknown field"), "{e}");
        let e = parse(r#"{"store":{"cluster":"k"},"colour":1}"#).unwrap_err();
        assert_eq!(e.field, "colour");
    }

    #[test]
    fn options_parse_into_rules() {
        let c = parse(
            r#"{"store":{"cluster":"k"},
                "key_sources":[{"header":"X-Key"},{"header":"authorization","prefix":"Token "},{"query":"apikey"}],
                "hide_credentials": true,
                "anonymous_paths": ["/health"],
                "required_roles": [{"prefix":"/api/v1/admin/","roles":["root","admin"]}]}"#,
        )
        .unwrap();
        assert_eq!(
            c.key_sources,
            vec![
                KeySource::Header {
                    name: "x-key".into(),
                    prefix: None
                },
                KeySource::Header {
                    name: "authorization".into(),
                    prefix: Some("Token ".into())
                },
                KeySource::Query {
                    name: "apikey".into()
                },
            ]
        );
        assert!(c.is_anonymous("/health/live"));
        assert!(!c.is_anonymous("/api"));
        assert_eq!(
            c.required_roles_for("/api/v1/admin/x").map(|r| r.len()),
            Some(2)
        );
        assert_eq!(c.required_roles_for("/api/v1/other"), None);
        assert!(c.is_invalidating("DELETE", "/api/v1/admin/accounts/a"));
        assert!(!c.is_invalidating("GET", "/api/v1/admin/accounts/a"));
        assert!(!c.is_invalidating("POST", "/api/v1/other"));
    }
}
