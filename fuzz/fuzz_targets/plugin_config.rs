//! `Config::from_json`: the plugin configuration, as an operator (or a typo) writes it.
//!
//! Input: the configuration bytes.
//!
//! Properties:
//! - Deterministic, never panics; an error always has a message.
//! - An accepted configuration satisfies every rule of README.md's configuration table
//!   (re-stated here): ranges, `ttl_ms > 0`, `shared_slots` a power of two, header names that are
//!   lowercase tokens and all different, paths that start with '/', key sources that are not
//!   identity headers, a negative share of at most a quarter of `max_entries`, ...
//! - An accepted configuration is a fixed point: written back as JSON and parsed again, it
//!   gives the same `Config` (normalisation such as lowercasing is stable; defaults are real
//!   values).
#![no_main]

use keygate::config::{Config, KeySource};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        })
}

fn is_header_value(s: &str) -> bool {
    s.bytes().all(|b| b == b' ' || (0x21..=0x7e).contains(&b))
}

fn check_invariants(c: &Config) {
    let s = &c.store;
    assert!(!s.cluster.trim().is_empty(), "cluster {:?}", s.cluster);
    assert!(!s.authority.is_empty() && is_header_value(&s.authority));
    for p in [&s.lookup_path, &s.changes_path, &s.usage_path] {
        assert!(p.starts_with('/'), "{p:?}");
        assert!(
            p.bytes().all(|b| (0x21..=0x7e).contains(&b)) && !p.contains('?'),
            "{p:?}"
        );
    }
    assert!((1..=60_000).contains(&s.timeout_ms));

    let k = &c.cache;
    const YEAR_MS: u64 = 86_400 * 365 * 1000;
    assert!(
        k.ttl_ms > 0 && k.ttl_ms <= YEAR_MS && k.ttl_ms.is_multiple_of(1000),
        "ttl_ms {}",
        k.ttl_ms
    );
    assert!(
        k.negative_ttl_ms > 0
            && k.negative_ttl_ms <= YEAR_MS
            && k.negative_ttl_ms.is_multiple_of(1000)
    );
    assert!(k.stale_if_error_ms <= YEAR_MS && k.stale_if_error_ms.is_multiple_of(1000));
    assert!((4..=10_000_000).contains(&k.max_entries));
    assert!(k.negative_max_entries >= 1 && k.negative_max_entries <= k.max_entries / 4);
    assert!(
        k.shared_slots.is_power_of_two() && k.shared_slots <= 1 << 20,
        "{}",
        k.shared_slots
    );

    assert!((100..=3_600_000).contains(&c.sync.interval_ms));
    assert!(
        (1000..=3_600_000).contains(&c.usage.interval_ms) && c.usage.interval_ms % 1000 == 0,
        "usage interval {}",
        c.usage.interval_ms
    );
    assert!((1..=1_000_000).contains(&c.miss_budget.per_second));
    assert!((1..=10_000_000).contains(&c.miss_budget.burst));

    let names = c.identity_headers.names();
    for (i, n) in names.iter().enumerate() {
        assert!(is_token(n), "identity header {n:?}");
        assert!(
            !names[..i].contains(n),
            "identity headers not distinct: {names:?}"
        );
    }
    for p in c.invalidate_paths.iter().chain(&c.anonymous_paths) {
        let p = p.as_str();
        assert!(
            p.is_empty() || (p.starts_with('/') && !p.ends_with('/')),
            "{p:?}"
        );
    }
    let folded: Vec<String> = names.iter().map(|n| n.replace('_', "-")).collect();
    for (i, n) in folded.iter().enumerate() {
        assert!(
            !folded[..i].contains(n),
            "identity headers fold alike: {names:?}"
        );
        assert!(![
            "host",
            "authorization",
            "content-length",
            "transfer-encoding"
        ]
        .contains(&n.as_str()));
    }
    // identity_headers.role_map: store roles by the key store's rule, "*" kept apart, values
    // that may go into a header; every store role maps to exactly one value.
    let m = &c.identity_headers.role_map;
    assert!(m.roles.len() + usize::from(m.other.is_some()) <= keygate::config::MAX_ROLE_MAP);
    for (i, (role, value)) in m.roles.iter().enumerate() {
        assert!(
            (1..=128).contains(&role.len())
                && role != "."
                && role != ".."
                && role
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "role_map role {role:?}"
        );
        assert!(
            !m.roles[..i].iter().any(|(r, _)| r == role),
            "{role:?} twice"
        );
        assert_eq!(m.value(role), value.as_str());
    }
    for v in m.roles.iter().map(|(_, v)| v).chain(m.other.as_ref()) {
        assert!(
            (1..=128).contains(&v.len())
                && is_header_value(v)
                && !v.contains(',')
                && !v.starts_with(' ')
                && !v.ends_with(' '),
            "role_map value {v:?}"
        );
    }
    if let Some(t) = &c.store.token {
        assert!((16..=512).contains(&t.len()) && t.bytes().all(|b| (0x21..=0x7e).contains(&b)));
    }
    assert!(!c.key_sources.is_empty());
    for s in &c.key_sources {
        match s {
            KeySource::Header { name, prefix } => {
                assert!(is_token(name), "key header {name:?}");
                assert!(
                    !names.contains(&name.as_str()),
                    "{name} is an identity header"
                );
                if let Some(p) = prefix {
                    assert!(!p.is_empty() && is_header_value(p), "prefix {p:?}");
                }
            }
            KeySource::Query { name } => {
                assert!(
                    !name.is_empty() && !name.contains(['&', '=', '?', '#']),
                    "{name:?}"
                );
            }
        }
    }
    for r in &c.required_roles {
        assert!(r.prefix.as_str().is_empty() || r.prefix.as_str().starts_with('/'));
        assert!(!r.roles.is_empty() && r.roles.iter().all(|r| !r.is_empty()));
    }
    // One rule per prefix across anonymous_paths and required_roles (compared without case).
    let rule_prefixes: Vec<String> = c
        .anonymous_paths
        .iter()
        .chain(c.required_roles.iter().map(|r| &r.prefix))
        .map(|p| p.as_str().to_ascii_lowercase())
        .collect();
    for (i, p) in rule_prefixes.iter().enumerate() {
        assert!(!rule_prefixes[..i].contains(p), "prefix {p:?} listed twice");
    }
}

/// A normalised prefix as configuration text (the root is `""` inside, `/` outside).
fn prefix_text(p: &keygate::request::path::Prefix) -> String {
    if p.as_str().is_empty() {
        "/".to_string()
    } else {
        p.as_str().to_string()
    }
}

/// The configuration written back in the documented JSON form, every field explicit.
fn to_json(c: &Config) -> serde_json::Value {
    let sources: Vec<_> = c
        .key_sources
        .iter()
        .map(|s| match s {
            KeySource::Header { name, prefix: None } => json!({ "header": name }),
            KeySource::Header {
                name,
                prefix: Some(p),
            } => json!({ "header": name, "prefix": p }),
            KeySource::Query { name } => json!({ "query": name }),
        })
        .collect();
    let roles: Vec<_> = c
        .required_roles
        .iter()
        .map(|r| json!({ "prefix": prefix_text(&r.prefix), "roles": r.roles }))
        .collect();
    json!({
        "store": {
            "cluster": c.store.cluster,
            "authority": c.store.authority,
            "lookup_path": c.store.lookup_path,
            "changes_path": c.store.changes_path,
            "usage_path": c.store.usage_path,
            "timeout_ms": c.store.timeout_ms,
            "token": c.store.token,
        },
        "cache": {
            "ttl_s": c.cache.ttl_ms / 1000,
            "negative_ttl_s": c.cache.negative_ttl_ms / 1000,
            "stale_if_error_s": c.cache.stale_if_error_ms / 1000,
            "max_entries": c.cache.max_entries,
            "shared_slots": c.cache.shared_slots,
        },
        "sync": { "interval_ms": c.sync.interval_ms },
        "usage": { "enabled": c.usage.enabled, "interval_s": c.usage.interval_ms / 1000 },
        "miss_budget": { "per_second": c.miss_budget.per_second, "burst": c.miss_budget.burst },
        "identity_headers": {
            "account": c.identity_headers.account,
            "user": c.identity_headers.user,
            "role": c.identity_headers.role,
            "claims": c
                .identity_headers
                .claims
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect::<serde_json::Map<_, _>>(),
            "role_map": c
                .identity_headers
                .role_map
                .roles
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .chain(c.identity_headers.role_map.other.iter().map(|v| ("*".to_string(), json!(v))))
                .collect::<serde_json::Map<_, _>>(),
        },
        "invalidate_paths": c.invalidate_paths.iter().map(prefix_text).collect::<Vec<_>>(),
        "key_sources": sources,
        "hide_credentials": c.hide_credentials,
        "anonymous_paths": c.anonymous_paths.iter().map(prefix_text).collect::<Vec<_>>(),
        "required_roles": roles,
        "run_on_preflight": c.run_on_preflight,
    })
}

fuzz_target!(|data: &[u8]| {
    let parsed = Config::from_json(data);
    assert_eq!(parsed, Config::from_json(data), "not deterministic");
    match parsed {
        Err(e) => {
            assert!(!e.message.is_empty(), "an error without a message: {e:?}");
            assert!(!e.to_string().is_empty());
        }
        Ok(c) => {
            check_invariants(&c);
            let again = Config::from_json(to_json(&c).to_string().as_bytes());
            assert_eq!(again.as_ref(), Ok(&c), "not a fixed point");
        }
    }
});
