//! The plugin configuration: parsed with serde (unknown fields refused), then validated into
//! [`Config`]. A bad configuration is refused whole, with one error naming the field, so that
//! Envoy rejects the filter instead of running it half-configured.

use std::fmt;

use keygate_protocol::routes;
use serde::Deserialize;

use crate::request::path::{Prefix, Route};
use crate::request::rules::PathRules;
use crate::text;

/// The validated configuration. Durations are in milliseconds from here on.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub store: StoreConfig,
    pub cache: CacheConfig,
    pub sync: SyncConfig,
    pub usage: UsageConfig,
    pub summary: SummaryConfig,
    pub miss_budget: MissBudget,
    pub identity_headers: IdentityHeaders,
    pub invalidate_paths: Vec<Prefix>,
    pub key_sources: Vec<KeySource>,
    pub hide_credentials: bool,
    /// As configured (in order); [`Config::path_rules`] is what requests meet.
    pub anonymous_paths: Vec<Prefix>,
    /// As configured (in order); [`Config::path_rules`] is what requests meet.
    pub required_roles: Vec<RoleRule>,
    /// `anonymous_paths` and `required_roles` as one list, most specific first
    /// ([`crate::request::rules`]).
    pub path_rules: PathRules,
    /// Authenticate CORS preflights too (Kong's `run_on_preflight`); off: a real preflight
    /// (see [`crate::request::admission`]) passes without a key, identity headers still removed.
    pub run_on_preflight: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub cluster: String,
    pub authority: String,
    pub lookup_path: String,
    pub changes_path: String,
    /// Where usage reports go (`POST`).
    pub usage_path: String,
    pub timeout_ms: u64,
    /// Sent as `authorization: Bearer <token>` on every call to the store, when set.
    pub token: Option<String>,
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

/// Usage reports ("last used"): the key ids each Envoy admitted, sent to the store at most
/// once per interval.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageConfig {
    /// Off: nothing is collected or sent.
    pub enabled: bool,
    pub interval_ms: u64,
}

pub const DEFAULT_USAGE_INTERVAL_S: i64 = 60;

/// The key summary ([`crate::summary`]): fetched from the store, kept in shared data, read
/// on a miss while the miss budget runs short.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryConfig {
    /// Off: never fetched, every miss as without it.
    pub enabled: bool,
    /// The store's summary route (`GET`).
    pub path: String,
    /// Most bytes of blocks a summary may have (a larger one is refused): the shared data it
    /// takes per Envoy is at most twice this (two slots, during an install).
    pub max_bytes: usize,
    pub timeout_ms: u64,
    /// Refetch when the estimated false-positive rate passes this...
    pub max_false_positive_rate: f64,
    /// ...at most once per this.
    pub refetch_min_interval_ms: u64,
}

/// 16 MiB: about 10^7 keys at 10 bits per key.
pub const DEFAULT_SUMMARY_MAX_BYTES: i64 = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct MissBudget {
    pub per_second: u64,
    pub burst: u64,
    /// Lookups per second kept for revalidating keys that were valid recently (within
    /// `cache.stale_if_error_s` of their verdict), in a bucket of twice that; 0: no reserve.
    pub reserve_per_second: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IdentityHeaders {
    pub account: String,
    pub user: String,
    pub role: String,
    /// Claims forwarded as headers: (claim name in the store's answer, header name), sorted
    /// by claim name.
    pub claims: Vec<(String, String)>,
    /// What the role header says for each store role (`identity_headers.role_map`).
    pub role_map: RoleMap,
}

/// The value of the role header for a store role: the upstream's name for it, when the
/// upstream spells roles its own way (OpenViking knows only `user` and `admin`). Only the
/// header changes: `required_roles` always meets the store's role.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoleMap {
    /// (store role, header value), sorted by store role; compared with case.
    pub roles: Vec<(String, String)>,
    /// The value for every role not in `roles` (the `"*"` entry); none: the role as it is.
    pub other: Option<String>,
}

/// Most entries of `identity_headers.role_map`.
pub const MAX_ROLE_MAP: usize = 64;

impl RoleMap {
    /// The role header's value for the store role `role`.
    pub fn value<'a>(&'a self, role: &'a str) -> &'a str {
        match self.roles.iter().find(|(r, _)| r == role) {
            Some((_, v)) => v,
            None => self.other.as_deref().unwrap_or(role),
        }
    }
}

/// Most claims the configuration may map to headers.
pub const MAX_CLAIM_HEADERS: usize = 16;

impl IdentityHeaders {
    pub fn names(&self) -> [&str; 3] {
        [&self.account, &self.user, &self.role]
    }

    /// Every header the filter sets, identity and claims: the names clients may never send.
    pub fn all(&self) -> impl Iterator<Item = &str> {
        self.names()
            .into_iter()
            .chain(self.claims.iter().map(|(_, h)| h.as_str()))
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
    pub prefix: Prefix,
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
    usage: RawUsage,
    #[serde(default)]
    summary: RawSummary,
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
    #[serde(default)]
    run_on_preflight: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    cluster: Option<String>,
    authority: Option<String>,
    lookup_path: Option<String>,
    changes_path: Option<String>,
    usage_path: Option<String>,
    timeout_ms: Option<i64>,
    token: Option<String>,
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
struct RawUsage {
    enabled: Option<bool>,
    interval_s: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSummary {
    enabled: Option<bool>,
    path: Option<String>,
    max_bytes: Option<i64>,
    timeout_ms: Option<i64>,
    max_false_positive_rate: Option<f64>,
    refetch_min_interval_ms: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMissBudget {
    per_second: Option<i64>,
    burst: Option<i64>,
    reserve_per_second: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawIdentityHeaders {
    account: Option<String>,
    user: Option<String>,
    role: Option<String>,
    claims: Option<std::collections::BTreeMap<String, String>>,
    role_map: Option<std::collections::BTreeMap<String, String>>,
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
        let store = store_config(raw.store)?;
        let cache = cache_config(raw.cache)?;
        let sync = SyncConfig {
            interval_ms: ranged(
                "sync.interval_ms",
                raw.sync.interval_ms,
                1000,
                100,
                3_600_000,
            )?
            .unsigned_abs(),
        };
        let usage = UsageConfig {
            enabled: raw.usage.enabled.unwrap_or(true),
            interval_ms: ranged(
                "usage.interval_s",
                raw.usage.interval_s,
                DEFAULT_USAGE_INTERVAL_S,
                1,
                3600,
            )?
            .unsigned_abs()
            .saturating_mul(1000),
        };
        let summary = summary_config(raw.summary)?;
        let miss_budget = miss_budget(raw.miss_budget)?;
        let key_sources = key_sources(raw.key_sources)?;
        let identity_headers = identity_headers(raw.identity_headers, &key_sources)?;
        let invalidate_paths = match raw.invalidate_paths {
            None => vec![routes::admin::PREFIX.to_string()],
            Some(paths) => paths,
        };
        let anonymous_paths = prefixes("anonymous_paths", raw.anonymous_paths)?;
        let required_roles = role_rules(raw.required_roles)?;
        let path_rules = path_rules(&anonymous_paths, &required_roles)?;
        Ok(Config {
            store,
            cache,
            sync,
            usage,
            summary,
            miss_budget,
            identity_headers,
            invalidate_paths: prefixes("invalidate_paths", invalidate_paths)?,
            key_sources,
            hide_credentials: raw.hide_credentials,
            anonymous_paths,
            required_roles,
            path_rules,
            run_on_preflight: raw.run_on_preflight,
        })
    }
}

fn store_config(store: Option<RawStore>) -> Result<StoreConfig, ConfigError> {
    let store = store.ok_or_else(|| err("store", "missing (store.cluster is required)"))?;
    let cluster = store
        .cluster
        .ok_or_else(|| err("store.cluster", "missing (required)"))?;
    if cluster.trim().is_empty() {
        return Err(err("store.cluster", "must not be empty"));
    }
    let authority = store.authority.unwrap_or_else(|| cluster.clone());
    if authority.is_empty() || !text::all_visible(authority.as_bytes()) {
        return Err(err("store.authority", "must be a non-empty host name"));
    }
    let token = match store.token {
        Some(t) if !(16..=512).contains(&t.len()) || !text::all_visible(t.as_bytes()) => {
            return Err(err(
                "store.token",
                "must be 16 to 512 visible ASCII characters (no spaces)",
            ))
        }
        t => t,
    };
    Ok(StoreConfig {
        cluster,
        authority,
        lookup_path: path_field("store.lookup_path", store.lookup_path, routes::LOOKUP)?,
        changes_path: path_field("store.changes_path", store.changes_path, routes::CHANGES)?,
        usage_path: path_field("store.usage_path", store.usage_path, routes::USAGE)?,
        timeout_ms: ranged("store.timeout_ms", store.timeout_ms, 1000, 1, 60_000)?.unsigned_abs(),
        token,
    })
}

fn cache_config(c: RawCache) -> Result<CacheConfig, ConfigError> {
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
    let max_entries =
        usize::try_from(max_entries).map_err(|_| err("cache.max_entries", "too large"))?;
    Ok(CacheConfig {
        ttl_ms: seconds_to_ms(ttl_s),
        negative_ttl_ms: seconds_to_ms(negative_ttl_s),
        stale_if_error_ms: seconds_to_ms(stale_if_error_s),
        max_entries,
        negative_max_entries: (max_entries / 4).max(1),
        shared_slots: u32::try_from(shared_slots)
            .map_err(|_| err("cache.shared_slots", "too large"))?,
    })
}

fn summary_config(s: RawSummary) -> Result<SummaryConfig, ConfigError> {
    let rate = s.max_false_positive_rate.unwrap_or(0.02);
    if !(rate > 0.0 && rate <= 1.0) {
        return Err(err(
            "summary.max_false_positive_rate",
            format!("must be a number above 0 and at most 1 (got {rate})"),
        ));
    }
    let max_bytes = ranged(
        "summary.max_bytes",
        s.max_bytes,
        DEFAULT_SUMMARY_MAX_BYTES,
        64,
        256 * 1024 * 1024,
    )?;
    Ok(SummaryConfig {
        enabled: s.enabled.unwrap_or(true),
        path: path_field("summary.path", s.path, routes::SUMMARY)?,
        max_bytes: usize::try_from(max_bytes).map_err(|_| err("summary.max_bytes", "too large"))?,
        timeout_ms: ranged("summary.timeout_ms", s.timeout_ms, 10_000, 1, 600_000)?.unsigned_abs(),
        max_false_positive_rate: rate,
        refetch_min_interval_ms: ranged(
            "summary.refetch_min_interval_ms",
            s.refetch_min_interval_ms,
            60_000,
            1000,
            86_400_000,
        )?
        .unsigned_abs(),
    })
}

fn miss_budget(b: RawMissBudget) -> Result<MissBudget, ConfigError> {
    Ok(MissBudget {
        per_second: ranged("miss_budget.per_second", b.per_second, 100, 1, 1_000_000)?
            .unsigned_abs(),
        burst: ranged("miss_budget.burst", b.burst, 200, 1, 10_000_000)?.unsigned_abs(),
        reserve_per_second: ranged(
            "miss_budget.reserve_per_second",
            b.reserve_per_second,
            100,
            0,
            1_000_000,
        )?
        .unsigned_abs(),
    })
}

/// The key sources when `key_sources` is absent: `x-api-key`, then `authorization: Bearer`.
pub fn default_key_sources() -> Vec<KeySource> {
    vec![
        KeySource::Header {
            name: "x-api-key".into(),
            prefix: None,
        },
        KeySource::Header {
            name: "authorization".into(),
            prefix: Some("Bearer ".into()),
        },
    ]
}

fn key_sources(raw: Option<Vec<RawKeySource>>) -> Result<Vec<KeySource>, ConfigError> {
    let Some(list) = raw else {
        return Ok(default_key_sources());
    };
    if list.is_empty() {
        return Err(err("key_sources", "must list at least one source"));
    }
    list.into_iter()
        .enumerate()
        .map(|(i, s)| key_source(i, s))
        .collect()
}

/// Headers the filter must never be asked to set: the client's or Envoy's framing, routing and
/// credentials, which an identity value must not be able to replace.
const RESERVED_HEADERS: [&str; 15] = [
    "host",
    "authorization",
    "proxy-authorization",
    "cookie",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "proxy-authenticate",
];

fn identity_headers(
    h: RawIdentityHeaders,
    sources: &[KeySource],
) -> Result<IdentityHeaders, ConfigError> {
    let headers = IdentityHeaders {
        account: identity_header(
            "identity_headers.account",
            h.account,
            "x-account-id",
            sources,
        )?,
        user: identity_header("identity_headers.user", h.user, "x-user-id", sources)?,
        role: identity_header("identity_headers.role", h.role, "x-role", sources)?,
        claims: claim_headers(h.claims.unwrap_or_default(), sources)?,
        role_map: role_map(h.role_map.unwrap_or_default())?,
    };
    let folded: Vec<String> = headers.all().map(text::fold_header_name).collect();
    if folded
        .iter()
        .enumerate()
        .any(|(i, n)| folded.iter().skip(i.saturating_add(1)).any(|m| m == n))
    {
        return Err(err(
            "identity_headers",
            "the header names must all differ (also with '_' read as '-')",
        ));
    }
    Ok(headers)
}

fn claim_headers(
    claims: std::collections::BTreeMap<String, String>,
    sources: &[KeySource],
) -> Result<Vec<(String, String)>, ConfigError> {
    if claims.len() > MAX_CLAIM_HEADERS {
        return Err(err(
            "identity_headers.claims",
            format!("at most {MAX_CLAIM_HEADERS} claims"),
        ));
    }
    claims
        .into_iter()
        .map(|(claim, header)| {
            let field = format!("identity_headers.claims.{claim}");
            if claim.is_empty() || claim.len() > 64 || !text::is_token(&claim) {
                return Err(err(&field, "a claim name is 1 to 64 token characters"));
            }
            let header = identity_header(&field, Some(header), "", sources)?;
            Ok((claim, header))
        })
        .collect()
}

/// `identity_headers.role_map`: store role (or `"*"`, every other role) → header value. Store
/// roles follow the key store's rule (1 to 128 of `[A-Za-z0-9._-]`, not `.` or `..`), so a
/// key that could never match is refused rather than silently ignored; values are what the
/// filter may write into a header (1 to 128 bytes, [`text::is_safe_header_value`]).
fn role_map(map: std::collections::BTreeMap<String, String>) -> Result<RoleMap, ConfigError> {
    if map.len() > MAX_ROLE_MAP {
        return Err(err(
            "identity_headers.role_map",
            format!("at most {MAX_ROLE_MAP} entries"),
        ));
    }
    let mut out = RoleMap::default();
    for (role, value) in map {
        let field = format!("identity_headers.role_map.{role}");
        if value.is_empty() || value.len() > 128 || !text::is_safe_header_value(&value) {
            return Err(err(
                &field,
                "a role header value is 1 to 128 bytes of visible ASCII and inner spaces, no comma",
            ));
        }
        if role == "*" {
            out.other = Some(value);
        } else if is_store_role(&role) {
            out.roles.push((role, value));
        } else {
            return Err(err(
                &field,
                "a role is 1 to 128 characters of [A-Za-z0-9._-], not . or .. (or \"*\" for every other role)",
            ));
        }
    }
    Ok(out)
}

/// A role name the key store accepts.
fn is_store_role(role: &str) -> bool {
    (1..=128).contains(&role.len())
        && role != "."
        && role != ".."
        && role
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

fn identity_header(
    field: &str,
    value: Option<String>,
    default: &str,
    sources: &[KeySource],
) -> Result<String, ConfigError> {
    let name = header_name(field, value, default)?;
    let folded = text::fold_header_name(&name);
    if RESERVED_HEADERS.contains(&folded.as_str()) {
        return Err(err(
            field,
            format!("{name} is a framing, routing or credential header"),
        ));
    }
    let is_source = |s: &KeySource| matches!(s, KeySource::Header { name: n, .. } if text::fold_header_name(n) == folded);
    if sources.iter().any(is_source) {
        return Err(err(field, format!("{name} is also a key source")));
    }
    Ok(name)
}

fn role_rules(rules: Vec<RawRoleRule>) -> Result<Vec<RoleRule>, ConfigError> {
    let mut out = Vec::with_capacity(rules.len());
    for (i, rule) in rules.into_iter().enumerate() {
        let field = format!("required_roles[{i}]");
        let prefix = prefix(&format!("{field}.prefix"), &rule.prefix)?;
        if rule.roles.is_empty() || rule.roles.iter().any(|r| r.is_empty()) {
            return Err(err(
                &format!("{field}.roles"),
                "must list at least one non-empty role",
            ));
        }
        out.push(RoleRule {
            prefix,
            roles: rule.roles,
        });
    }
    Ok(out)
}

/// Refuses a prefix listed twice (in one list or in both, compared without case, as role rules
/// match), naming both fields; then orders the rules ([`crate::request::rules`]).
fn path_rules(anonymous: &[Prefix], roles: &[RoleRule]) -> Result<PathRules, ConfigError> {
    let named = anonymous
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("anonymous_paths[{i}]"), p))
        .chain(
            roles
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("required_roles[{i}].prefix"), &r.prefix)),
        );
    let mut seen: Vec<(String, &Prefix)> =
        Vec::with_capacity(anonymous.len().saturating_add(roles.len()));
    for (field, prefix) in named {
        let same = |(_, p): &&(String, &Prefix)| p.as_str().eq_ignore_ascii_case(prefix.as_str());
        if let Some((first, _)) = seen.iter().find(same) {
            return Err(err(
                &field,
                format!(
                    "the same prefix as {first} ({:?}): one rule per prefix",
                    display_prefix(prefix)
                ),
            ));
        }
        seen.push((field, prefix));
    }
    Ok(PathRules::new(anonymous, roles))
}

fn display_prefix(p: &Prefix) -> &str {
    if p.as_str().is_empty() {
        "/"
    } else {
        p.as_str()
    }
}

impl Config {
    /// Whether `route` needs no key ([`PathRules::is_anonymous`]).
    pub fn is_anonymous(&self, route: &Route) -> bool {
        self.path_rules.is_anonymous(route)
    }

    /// Whether a valid key with `role` may pass on `route` ([`PathRules::role_allowed`]).
    pub fn role_allowed(&self, route: &Route, role: &str) -> bool {
        self.path_rules.role_allowed(route, role)
    }

    /// Whether a request, answered 2xx upstream, is an admin write that must drop cached
    /// verdicts (any reading of its path under an `invalidate_paths` prefix).
    pub fn is_invalidating(&self, method: &[u8], route: &Route) -> bool {
        ["POST", "PUT", "PATCH", "DELETE"]
            .iter()
            .any(|m| method.eq_ignore_ascii_case(m.as_bytes()))
            && self.invalidate_paths.iter().any(|p| route.maybe_under(p))
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
    if !v.starts_with('/') || !text::all_visible(v.as_bytes()) || v.contains('?') {
        return Err(err(
            field,
            format!("must be a path starting with '/' without a query (got {v:?})"),
        ));
    }
    Ok(v)
}

fn prefix(field: &str, p: &str) -> Result<Prefix, ConfigError> {
    Prefix::parse(p).ok_or_else(|| {
        err(
            field,
            format!("must be a path starting with '/', without query or fragment (got {p:?})"),
        )
    })
}

fn prefixes(field: &str, paths: Vec<String>) -> Result<Vec<Prefix>, ConfigError> {
    paths
        .iter()
        .enumerate()
        .map(|(i, p)| prefix(&format!("{field}[{i}]"), p))
        .collect()
}

fn header_name(field: &str, value: Option<String>, default: &str) -> Result<String, ConfigError> {
    let v = value
        .unwrap_or_else(|| default.to_string())
        .to_ascii_lowercase();
    if !text::is_token(&v) {
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
                if p.is_empty() || !p.bytes().all(|b| b == b' ' || text::is_visible(b)) {
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
        assert_eq!(c.store.usage_path, "/v1/usage");
        assert!(c.usage.enabled);
        assert_eq!(c.usage.interval_ms, 60_000);
        assert_eq!(
            c.summary,
            SummaryConfig {
                enabled: true,
                path: "/v1/summary".into(),
                max_bytes: 16 * 1024 * 1024,
                timeout_ms: 10_000,
                max_false_positive_rate: 0.02,
                refetch_min_interval_ms: 60_000,
            }
        );
        assert_eq!((c.miss_budget.per_second, c.miss_budget.burst), (100, 200));
        assert_eq!(c.miss_budget.reserve_per_second, 100);
        assert_eq!(
            c.identity_headers.names(),
            ["x-account-id", "x-user-id", "x-role"]
        );
        assert!(c.identity_headers.claims.is_empty());
        assert_eq!(
            c.invalidate_paths,
            vec![Prefix::parse("/api/v1/admin").unwrap()]
        );
        assert_eq!(c.store.token, None);
        assert_eq!(c.key_sources.len(), 2);
        assert!(!c.hide_credentials);
    }

    #[test]
    fn a_role_map_entry_that_could_never_apply_or_could_not_be_sent_is_refused_naming_it() {
        let cases = [
            (r#"{"x y":"user"}"#, "identity_headers.role_map.x y"),
            (r#"{"..":"user"}"#, "identity_headers.role_map..."),
            (r#"{"":"user"}"#, "identity_headers.role_map."),
            (r#"{"admin":""}"#, "identity_headers.role_map.admin"),
            (r#"{"admin":"a,b"}"#, "identity_headers.role_map.admin"),
            (r#"{"*":"us\ner"}"#, "identity_headers.role_map.*"),
            (r#"{"admin":7}"#, "identity_headers.role_map.admin"),
        ];
        for (map, field) in cases {
            let json =
                format!(r#"{{"store":{{"cluster":"k"}},"identity_headers":{{"role_map":{map}}}}}"#);
            let e = Config::from_json(json.as_bytes()).unwrap_err();
            assert_eq!(e.field, field, "{map}: {e}");
        }
        let many: Vec<String> = (0..=MAX_ROLE_MAP)
            .map(|i| format!(r#""r{i}":"x""#))
            .collect();
        let json = format!(
            r#"{{"store":{{"cluster":"k"}},"identity_headers":{{"role_map":{{{}}}}}}}"#,
            many.join(",")
        );
        let e = Config::from_json(json.as_bytes()).unwrap_err();
        assert_eq!(e.field, "identity_headers.role_map");
    }

    #[test]
    fn a_role_map_is_parsed_into_named_roles_and_a_catch_all() {
        let c = parse(
            r#"{"store":{"cluster":"k"},"identity_headers":{"role_map":{"admin":"admin","*":"user"}}}"#,
        )
        .unwrap();
        let m = &c.identity_headers.role_map;
        assert_eq!(m.roles, vec![("admin".to_string(), "admin".to_string())]);
        assert_eq!(m.other.as_deref(), Some("user"));
        assert_eq!(
            parse(r#"{"store":{"cluster":"k"}}"#)
                .unwrap()
                .identity_headers
                .role_map,
            RoleMap::default(),
            "no map: roles go up as they are"
        );
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
                r#"{"store":{"cluster":"k"},"usage":{"interval_s":0}}"#,
                "usage.interval_s",
            ),
            (
                r#"{"store":{"cluster":"k"},"usage":{"interval_s":3601}}"#,
                "usage.interval_s",
            ),
            (
                r#"{"store":{"cluster":"k"},"usage":{"enabled":"no"}}"#,
                "usage.enabled",
            ),
            (
                r#"{"store":{"cluster":"k","usage_path":"usage"}}"#,
                "store.usage_path",
            ),
            (
                r#"{"store":{"cluster":"k"},"summary":{"max_false_positive_rate":0}}"#,
                "summary.max_false_positive_rate",
            ),
            (
                r#"{"store":{"cluster":"k"},"summary":{"max_false_positive_rate":1.5}}"#,
                "summary.max_false_positive_rate",
            ),
            (
                r#"{"store":{"cluster":"k"},"summary":{"max_bytes":63}}"#,
                "summary.max_bytes",
            ),
            (
                r#"{"store":{"cluster":"k"},"summary":{"path":"summary"}}"#,
                "summary.path",
            ),
            (
                r#"{"store":{"cluster":"k"},"summary":{"timeout_ms":0}}"#,
                "summary.timeout_ms",
            ),
            (
                r#"{"store":{"cluster":"k"},"summary":{"refetch_min_interval_ms":999}}"#,
                "summary.refetch_min_interval_ms",
            ),
            (
                r#"{"store":{"cluster":"k"},"summary":{"enabled":1}}"#,
                "summary.enabled",
            ),
            (
                r#"{"store":{"cluster":"k"},"summary":{"bits":1}}"#,
                "summary.bits",
            ),
            (
                r#"{"store":{"cluster":"k"},"miss_budget":{"reserve_per_second":-1}}"#,
                "miss_budget.reserve_per_second",
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
                "identity_headers.role",
            ),
            (
                r#"{"store":{"cluster":"k"},"required_roles":[{"prefix":"/a","roles":[]}]}"#,
                "required_roles[0].roles",
            ),
            (
                r#"{"store":{"cluster":"k"},"required_roles":[{"prefix":"/a?b","roles":["x"]}]}"#,
                "required_roles[0].prefix",
            ),
            (
                r#"{"store":{"cluster":"k"},"anonymous_paths":["/a%zz"]}"#,
                "anonymous_paths[0]",
            ),
            (
                r#"{"store":{"cluster":"k"},"identity_headers":{"role":"x_account-id"}}"#,
                "identity_headers",
            ),
            (
                r#"{"store":{"cluster":"k","token":"short"}}"#,
                "store.token",
            ),
            (
                r#"{"store":{"cluster":"k","token":"has a space in it, 32 chars long"}}"#,
                "store.token",
            ),
        ];
        for (json, field) in cases {
            let e = parse(json).expect_err(json);
            assert_eq!(e.field, field, "{json} -> {e}");
            assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn a_prefix_listed_twice_is_refused_naming_both_fields() {
        for (rules, field, other) in [
            (
                r#""anonymous_paths":["/docs"],"required_roles":[{"prefix":"/x","roles":["a"]},{"prefix":"/docs/","roles":["admin"]}]"#,
                "required_roles[1].prefix",
                "anonymous_paths[0]",
            ),
            (
                r#""required_roles":[{"prefix":"/api","roles":["a"]},{"prefix":"/API//","roles":["b"]}]"#,
                "required_roles[1].prefix",
                "required_roles[0].prefix",
            ),
            (
                r#""anonymous_paths":["/health","/x","/health/"]"#,
                "anonymous_paths[2]",
                "anonymous_paths[0]",
            ),
        ] {
            let json = format!(r#"{{"store":{{"cluster":"k"}},{rules}}}"#);
            let e = parse(&json).expect_err(&json);
            assert_eq!(e.field, field, "{json} -> {e}");
            assert!(e.message.contains(other), "{e}");
        }
        // Nested prefixes are not duplicates: the most specific decides (crate::request::rules).
        parse(r#"{"store":{"cluster":"k"},"anonymous_paths":["/docs"],"required_roles":[{"prefix":"/docs/internal","roles":["admin"]}]}"#)
            .unwrap();
    }

    #[test]
    fn identity_headers_cannot_be_framing_routing_credential_or_key_headers() {
        for (name, field) in [
            ("host", "account"),
            ("Authorization", "user"),
            ("content-length", "role"),
            ("transfer-encoding", "role"),
            ("connection", "role"),
            ("te", "role"),
            (":authority", "role"),
            ("x-api-key", "account"),
            ("X_API_KEY", "account"),
        ] {
            let json = format!(
                r#"{{"store":{{"cluster":"k"}},"identity_headers":{{"{field}":"{name}"}}}}"#
            );
            let e = parse(&json).expect_err(&json);
            assert_eq!(
                e.field,
                format!("identity_headers.{field}"),
                "{json} -> {e}"
            );
        }
    }

    #[test]
    fn claims_map_to_headers_with_the_identity_rules() {
        let c = parse(r#"{"store":{"cluster":"k"},"identity_headers":{"claims":{"plan":"X-Plan","tier":"x-tier"}}}"#)
            .unwrap();
        assert_eq!(
            c.identity_headers.claims,
            vec![
                ("plan".into(), "x-plan".into()),
                ("tier".into(), "x-tier".into())
            ]
        );
        assert_eq!(c.identity_headers.all().count(), 5);
        for (claims, field) in [
            (r#"{"plan":"x_role"}"#, "identity_headers"),
            (r#"{"plan":"host"}"#, "identity_headers.claims.plan"),
            (r#"{"plan":"x-api-key"}"#, "identity_headers.claims.plan"),
            (r#"{"a b":"x-plan"}"#, "identity_headers.claims.a b"),
            (r#"{"plan":"x-p","tier":"X_P"}"#, "identity_headers"),
        ] {
            let json = format!(
                r#"{{"store":{{"cluster":"k"}},"identity_headers":{{"claims":{claims}}}}}"#
            );
            let e = parse(&json).expect_err(&json);
            assert_eq!(e.field, field, "{json} -> {e}");
        }
    }

    #[test]
    fn the_store_token_is_kept() {
        let c = parse(r#"{"store":{"cluster":"k","token":"0123456789abcdef0123"}}"#).unwrap();
        assert_eq!(c.store.token.as_deref(), Some("0123456789abcdef0123"));
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
        let r = |p: &'static str| Route::parse(p.as_bytes()).unwrap();
        assert!(c.is_anonymous(&r("/health/live")));
        assert!(c.is_anonymous(&r("/health")));
        assert!(!c.is_anonymous(&r("/healthz")));
        assert!(!c.is_anonymous(&r("/api")));
        assert!(!c.role_allowed(&r("/api/v1/admin/x"), "member"));
        assert!(c.role_allowed(&r("/api/v1/admin/x"), "admin"));
        assert!(c.role_allowed(&r("/api/v1/other"), "member"));
        assert!(c.is_invalidating(b"DELETE", &r("/api/v1/admin/accounts/a")));
        assert!(!c.is_invalidating(b"GET", &r("/api/v1/admin/accounts/a")));
        assert!(!c.is_invalidating(b"POST", &r("/api/v1/other")));
    }
}
