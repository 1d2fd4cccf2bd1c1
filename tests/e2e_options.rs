//! Operator options and metrics, end to end on real Envoy: key sources, hide_credentials,
//! anonymous paths, required roles, and the keygate_* counters in Envoy's stats.
#![cfg(not(target_arch = "wasm32"))]
// Tests: panicking on a failed expectation is the point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use keygate_harness::{parse_prometheus, Envoy, TwoInstances};
use serde_json::json;

#[test]
fn keys_from_a_query_parameter_are_hidden_from_the_upstream() {
    let cfg = config_with(json!({
        "key_sources": [{"query": "apikey"}, {"header": "x-api-key"}],
        "hide_credentials": true
    }));
    let env = TwoInstances::start(cfg).unwrap();
    let key = env.keystore.create_account("acme", "alice");
    let r = client()
        .get(&format!("{}/items?a=1&apikey={key}&b=2", env.a.url()), &[])
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = r.json().unwrap();
    assert_eq!(
        seen["path"], "/items?a=1&b=2",
        "the key is removed from the query"
    );
    assert_eq!(seen["headers"]["x-account-id"], "acme");

    let r = get_with_key(&env.a, "/items", &key);
    assert_eq!(r.status, 200);
    assert!(
        upstream_headers(&r).get("x-api-key").is_none(),
        "the key header is removed"
    );
    assert!(!env.upstream.log_text().contains(&key));

    // A bearer token is not a configured source here.
    let r = client()
        .get(
            &format!("{}/items", env.a.url()),
            &[("authorization", &format!("Bearer {key}"))],
        )
        .unwrap();
    assert_eq!(r.status, 401);
}

#[test]
fn keys_reach_the_upstream_by_default() {
    let env = TwoInstances::start(config()).unwrap();
    let key = env.keystore.create_account("acme", "alice");
    let r = client()
        .get(
            &format!("{}/x", env.b.url()),
            &[("authorization", &format!("Bearer {key}"))],
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        upstream_headers(&r)["authorization"],
        format!("Bearer {key}")
    );
}

#[test]
fn anonymous_paths_pass_without_a_key_but_never_with_forged_identity() {
    let env = TwoInstances::start(config_with(json!({"anonymous_paths": ["/health"]}))).unwrap();
    let r = client()
        .get(
            &format!("{}/health/live", env.a.url()),
            &[("x-account-id", "victim"), ("x-role", "root")],
        )
        .unwrap();
    assert_eq!(r.status, 200);
    let h = upstream_headers(&r);
    assert!(
        h.get("x-account-id").is_none() && h.get("x-role").is_none(),
        "{h}"
    );
    assert_eq!(
        client()
            .get(&format!("{}/api", env.a.url()), &[])
            .unwrap()
            .status,
        401
    );
}

#[test]
fn required_roles_refuse_other_roles_with_403() {
    let cfg = config_with(
        json!({"required_roles": [{"prefix": "/reports/", "roles": ["admin", "auditor"]}]}),
    );
    // auditor: a role only root grants (the keystore's role registry, keystore/README.md).
    let mut opts = keygate_harness::TwoOpts::new(cfg);
    opts.keystore.extra_args = vec!["--operator-roles".into(), "auditor".into()];
    let env = TwoInstances::start_with(opts).unwrap();
    let admin = env.keystore.create_account("acme", "alice");
    let member = env.keystore.create_user("acme", "bob", "member");
    let auditor = env.keystore.create_user("acme", "carol", "auditor");
    let r = get_with_key(&env.a, "/reports/q3", &member);
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json().unwrap(),
        json!({
            "type": "https://keygate.dev/problems/forbidden",
            "title": "Forbidden",
            "status": 403,
            "detail": "The key's role is not allowed on this path."
        })
    );
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(get_with_key(&env.a, "/reports/q3", &admin).status, 200);
    assert_eq!(get_with_key(&env.b, "/reports/q3", &auditor).status, 200);
    assert_eq!(
        get_with_key(&env.b, "/other", &member).status,
        200,
        "rules apply only under their prefix"
    );
    // The rule applies on the paused path too: a first request for a fresh key is decided after
    // its lookup, on the root context.
    let fresh = env.keystore.create_user("acme", "dave", "member");
    assert_eq!(get_with_key(&env.b, "/reports/q4", &fresh).status, 403);
    assert!(
        env.a.stat("keygate_requests_total{outcome=\"forbidden\"}")
            + env.b.stat("keygate_requests_total{outcome=\"forbidden\"}")
            >= 2
    );
}

/// Issue 18, finding 9: a role rule under an anonymous prefix, and overlapping role rules
/// listed broadest first. The most specific prefix decides, whatever the order.
#[test]
fn the_most_specific_prefix_decides_whatever_the_order_of_the_rules() {
    let cfg = config_with(json!({
        "anonymous_paths": ["/docs"],
        "required_roles": [
            {"prefix": "/api", "roles": ["member", "admin"]},
            {"prefix": "/api/admin", "roles": ["admin"]},
            {"prefix": "/docs/internal", "roles": ["admin"]}
        ]
    }));
    let env = TwoInstances::start(cfg).unwrap();
    let admin = env.keystore.create_account("acme", "alice");
    let member = env.keystore.create_user("acme", "bob", "member");
    let (status, body) = raw_get(&env.a, "/docs/internal/secrets", &[]);
    assert_eq!(status, 401, "no key under the admin-only rule: {body}");
    let r = get_with_key(&env.a, "/docs/internal/secrets", &member);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        get_with_key(&env.b, "/docs/internal/secrets", &admin).status,
        200
    );
    assert_eq!(
        raw_get(&env.a, "/docs/intro", &[]).0,
        200,
        "the rest stays open"
    );
    let r = get_with_key(&env.a, "/api/admin/x", &member);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(get_with_key(&env.b, "/api/admin/x", &admin).status, 200);
    assert_eq!(get_with_key(&env.b, "/api/users", &member).status, 200);
}

/// An `OPTIONS` request through Envoy A, with `extra` header lines and `body`.
fn options(env: &TwoInstances, path: &str, extra: &str, body: &str) -> (u16, String) {
    let head = format!(
        "OPTIONS {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\
         origin: https://evil.example\r\naccess-control-request-method: POST\r\n{extra}\r\n{body}"
    );
    raw_exchange(&env.a, head.as_bytes())
}

fn upstream_requests(envoy: &Envoy) -> u64 {
    envoy
        .stats()
        .get("cluster.upstream.upstream_rq_total")
        .copied()
        .unwrap_or(0)
}

/// Issue 18, finding 10: a preflight-shaped request with a body or a credential is an
/// ordinary request; only a real preflight goes on without a key.
#[test]
fn only_a_real_preflight_reaches_the_upstream_without_a_key() {
    let env = TwoInstances::start(config()).unwrap();
    let before = upstream_requests(&env.a);
    let json = r#"{"confirm":true}"#;
    let with_body = format!(
        "content-type: application/json\r\ncontent-length: {}\r\n",
        json.len()
    );
    let (status, body) = options(&env, "/admin/delete-everything", &with_body, json);
    assert_eq!(status, 401, "{body}");
    assert_eq!(echo_of(&body), None, "the upstream answered: {body}");
    let chunked = "transfer-encoding: chunked\r\n";
    let (status, body) = options(
        &env,
        "/admin/delete-everything",
        chunked,
        "2\r\n{}\r\n0\r\n\r\n",
    );
    assert_eq!(status, 401, "{body}");
    let (status, body) = options(
        &env,
        "/admin/delete-everything",
        "cookie: session=s\r\n",
        "",
    );
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        upstream_requests(&env.a),
        before,
        "the upstream never sees them"
    );
    // A real preflight: no body, no credential.
    let (status, body) = options(&env, "/admin/delete-everything", "", "");
    assert_eq!(status, 200, "{body}");
    let seen = echo_of(&body).expect("the upstream answers a real preflight");
    assert_eq!(seen["method"], "OPTIONS");
    assert_eq!(seen["body"], "");
    assert_eq!(upstream_requests(&env.a), before + 1);
}

/// With `run_on_preflight`, a preflight is checked like any request, `hide_credentials`
/// included.
#[test]
fn a_checked_preflight_has_its_key_hidden() {
    let cfg = config_with(json!({"run_on_preflight": true, "hide_credentials": true}));
    let env = TwoInstances::start(cfg).unwrap();
    let key = env.keystore.create_account("acme", "alice");
    assert_eq!(options(&env, "/items", "", "").0, 401);
    let (status, body) = options(&env, "/items", &format!("x-api-key: {key}\r\n"), "");
    assert_eq!(status, 200, "{body}");
    let seen = echo_of(&body).unwrap();
    assert!(seen["headers"].get("x-api-key").is_none(), "{seen}");
    assert_eq!(seen["headers"]["x-account-id"], "acme");
}

/// The echo upstream's answer, if `body` is one.
fn echo_of(body: &str) -> Option<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .filter(|v| v.get("method").is_some())
}

fn deltas(envoy: &Envoy, before: &HashMap<String, u64>) -> HashMap<String, u64> {
    envoy
        .stats()
        .into_iter()
        .filter(|(k, _)| k.starts_with("keygate_"))
        .map(|(k, v)| {
            let d = v - before.get(&k).copied().unwrap_or(0);
            (k, d)
        })
        .collect()
}

/// [`deltas`] once `done` holds for them, or after 5 s (the asserts then say what is missing).
fn settled_deltas(
    envoy: &Envoy,
    before: &HashMap<String, u64>,
    done: impl Fn(&HashMap<String, u64>) -> bool,
) -> HashMap<String, u64> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let d = deltas(envoy, before);
        if done(&d) || std::time::Instant::now() > deadline {
            return d;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn metrics_move_as_requests_are_answered() {
    let mut env = TwoInstances::start(config_with(
        json!({"cache": {"ttl_s": 1, "stale_if_error_s": 300}}),
    ))
    .unwrap();
    let key = env.keystore.create_account("acme", "alice");
    let before = env.a.stats();
    assert_eq!(get_with_key(&env.a, "/m", &key).status, 200);
    for _ in 0..5 {
        assert_eq!(get_with_key(&env.a, "/m", &key).status, 200);
    }
    assert_eq!(
        get_with_key(&env.a, "/m", "kg_unknown_key_for_metrics_00000001").status,
        401
    );
    assert_eq!(
        get_with_key(&env.a, "/m", "bad key with spaces").status,
        401
    );
    // The counters of hits are kept in the worker and flushed at most once per millisecond
    // and on every tick (250 ms when idle): wait for the last ones.
    let d = settled_deltas(&env.a, &before, |d| {
        d["keygate_requests_total{outcome=\"allowed\"}"] >= 6
            && d["keygate_l1_hits_total"] + d["keygate_shared_hits_total"] >= 5
    });
    assert_eq!(d["keygate_requests_total{outcome=\"allowed\"}"], 6, "{d:?}");
    assert_eq!(d["keygate_requests_total{outcome=\"denied\"}"], 2, "{d:?}");
    assert_eq!(d["keygate_malformed_keys_total"], 1, "{d:?}");
    assert_eq!(d["keygate_store_lookups_total"], 2, "one per key: {d:?}");
    assert_eq!(d["keygate_misses_total"], 2, "{d:?}");
    assert_eq!(
        d["keygate_l1_hits_total"] + d["keygate_shared_hits_total"],
        5,
        "{d:?}"
    );

    // Store down, TTL over: stale served and a store error counted.
    let before = env.a.stats();
    env.keystore.kill();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(get_with_key(&env.a, "/m", &key).status, 200);
    assert_eq!(
        get_with_key(&env.a, "/m", "kg_unknown_key_for_metrics_00000002").status,
        503
    );
    let d = deltas(&env.a, &before);
    assert!(d["keygate_stale_served_total"] >= 1, "{d:?}");
    assert!(d["keygate_store_errors_total"] >= 2, "{d:?}");
    assert_eq!(
        d["keygate_requests_total{outcome=\"unavailable\"}"], 1,
        "{d:?}"
    );
    assert!(
        d["keygate_sync_errors_total"] >= 1,
        "polls fail while the store is down: {d:?}"
    );
}

#[test]
fn prometheus_reads_one_request_counter_with_an_outcome_label_and_total_on_every_counter() {
    let env = TwoInstances::start(config()).unwrap();
    let key = env.keystore.create_account("acme", "alice");
    for _ in 0..3 {
        assert_eq!(get_with_key(&env.a, "/p", &key).status, 200);
    }
    assert_eq!(
        get_with_key(&env.a, "/p", "kg_unknown_key_for_metrics_00000002").status,
        401
    );
    let allowed = "keygate_requests_total{outcome=\"allowed\"}";
    let denied = "keygate_requests_total{outcome=\"denied\"}";
    let url = format!("{}/stats/prometheus", env.a.admin_url());
    let mut prom = HashMap::new();
    let mut text = String::new();
    within(Duration::from_secs(5), "allowed requests flushed", || {
        text = client().get(&url, &[]).unwrap().body;
        prom = parse_prometheus(&text);
        prom.get(allowed).copied().unwrap_or(0.0) >= 3.0
    });
    // The tag extractor in the shipped template made `outcome` a label of one counter.
    assert_eq!(prom.get(allowed), Some(&3.0), "{text}");
    assert_eq!(prom.get(denied), Some(&1.0), "{text}");
    assert!(!text.contains("outcome_"), "a tag left in a name: {text}");
    // Prometheus's naming: every counter the filter exports ends in _total; the histogram keeps
    // its unit (Envoy's wasm histograms record integers: milliseconds, as Envoy's own `_ms`).
    let counters: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE keygate_")?.strip_suffix(" counter"))
        .collect();
    assert!(counters.len() >= 20, "{counters:?}");
    for c in &counters {
        assert!(
            c.ends_with("_total"),
            "keygate_{c} is a counter without _total"
        );
    }
    for name in [
        "keygate_store_lookups_total",
        "keygate_sync_polls_total",
        "keygate_store_lookup_ms_bucket",
    ] {
        assert!(text.contains(name), "{name} missing from /stats/prometheus");
    }
}
