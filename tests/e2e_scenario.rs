//! The two-instance scenario end to end: real Envoy A and B (2 workers each) running
//! keygate.wasm, the real keystore binary over SQLite, and an echo upstream.
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

use std::time::Duration;

use common::*;
use keygate_harness::{Envoy, EnvoyOpts, TwoInstances};
use keygate_protocol::routes::admin;
use serde_json::json;

#[test]
fn a_key_created_through_a_is_accepted_by_b_on_the_first_try() {
    let env = TwoInstances::start(config()).unwrap();
    let root = env.keystore.root_key().to_string();
    let created = client()
        .send_json(
            "POST",
            &format!("{}{}", env.a.url(), admin::ACCOUNTS),
            &[("x-api-key", &root)],
            &json!({"account_id": "acme", "admin_user_id": "alice"}),
        )
        .unwrap();
    assert_eq!(created.status, 201, "{}", created.body);
    let key = created.json().unwrap()["user_key"]
        .as_str()
        .unwrap()
        .to_string();

    let r = get_with_key(&env.b, "/orders", &key);
    assert_eq!(r.status, 200, "first try through B: {}", r.body);
    let h = upstream_headers(&r);
    assert_eq!(h["x-account-id"], "acme");
    assert_eq!(h["x-user-id"], "alice");
    assert_eq!(h["x-role"], "admin");
}

#[test]
fn identity_headers_from_clients_are_replaced_and_never_reach_upstream_unauthenticated() {
    let env = TwoInstances::start(config()).unwrap();
    let key = env.keystore.create_account("acme", "alice");
    let spoofed = [
        ("x-api-key", key.as_str()),
        ("x-account-id", "victim"),
        ("x-user-id", "mallory"),
        ("x-role", "root"),
    ];
    for envoy in env.envoys() {
        let r = client()
            .get(&format!("{}/x", envoy.url()), &spoofed)
            .unwrap();
        assert_eq!(r.status, 200);
        let h = upstream_headers(&r);
        assert_eq!(
            (
                h["x-account-id"].as_str(),
                h["x-user-id"].as_str(),
                h["x-role"].as_str()
            ),
            (Some("acme"), Some("alice"), Some("admin"))
        );
    }
    // Without a key the request is refused; the spoofed headers never reach the upstream.
    let r = client()
        .get(&format!("{}/x", env.a.url()), &spoofed[1..])
        .unwrap();
    assert_eq!(r.status, 401);
    assert!(!env.upstream.log_text().contains("mallory"));
}

#[test]
fn a_herd_of_first_requests_with_a_fresh_key_makes_at_most_one_lookup_per_envoy() {
    let env = TwoInstances::start(config()).unwrap();
    env.keystore.create_account("acme", "alice");
    let key = env.keystore.create_user("acme", "bob", "member");
    let before = lookups(&env.keystore);
    let statuses = herd(&[&env.a, &env.b], 200, &key);
    let made = lookups(&env.keystore) - before;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(ok, 200, "statuses: {statuses:?}");
    assert!(
        made <= 2,
        "{made} store lookups for 200 concurrent first requests across A and B"
    );
    for envoy in env.envoys() {
        assert!(
            envoy.stat("keygate_store_lookups_total") <= 1,
            "{}: {} lookups",
            envoy.node_id(),
            envoy.stat("keygate_store_lookups_total")
        );
    }
}

#[test]
fn unknown_keys_get_401_and_are_negatively_cached() {
    let env = TwoInstances::start(config()).unwrap();
    let before = lookups(&env.keystore);
    let r = get_with_key(&env.a, "/x", "kg_no_such_key_anywhere_0001");
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json().unwrap(),
        json!({
            "type": "https://keygate.dev/problems/unauthorized",
            "title": "Unauthorized",
            "status": 401,
            "detail": "A valid API key is required."
        })
    );
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.header("www-authenticate"), Some("ApiKey"));
    assert_eq!(lookups(&env.keystore) - before, 1);
    for _ in 0..20 {
        assert_eq!(
            get_with_key(&env.a, "/x", "kg_no_such_key_anywhere_0001").status,
            401
        );
    }
    assert_eq!(
        lookups(&env.keystore) - before,
        1,
        "the deny was cached (per Envoy, across workers)"
    );
    let r = client().get(&format!("{}/x", env.a.url()), &[]).unwrap();
    assert_eq!(r.status, 401, "no key at all");
}

#[test]
fn malformed_keys_are_refused_without_a_store_call() {
    let env = TwoInstances::start(config()).unwrap();
    let before = lookups(&env.keystore);
    let long = "k".repeat(513);
    assert_eq!(get_with_key(&env.a, "/x", &long).status, 401);
    assert_eq!(
        client()
            .get(&format!("{}/x", env.a.url()), &[("x-api-key", "")])
            .unwrap()
            .status,
        401
    );
    assert_eq!(
        client()
            .get(
                &format!("{}/x", env.a.url()),
                &[("authorization", "Bearer ")]
            )
            .unwrap()
            .status,
        401
    );
    // Bytes no client library sends: non-ASCII and control characters in the key.
    let binary = raw_status(
        &env.a,
        b"GET /x HTTP/1.1\r\nhost: a\r\nx-api-key: k\xff\xfe\x80key\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(binary, 401, "non-ASCII key");
    let control = raw_status(
        &env.a,
        b"GET /x HTTP/1.1\r\nhost: a\r\nx-api-key: k\x01ey\r\nconnection: close\r\n\r\n",
    );
    assert!(
        control == 401 || control == 400,
        "control character: {control} (Envoy's codec may refuse it first)"
    );
    assert_eq!(
        lookups(&env.keystore) - before,
        0,
        "no store call for malformed keys"
    );
    assert!(env.a.stat("keygate_malformed_keys_total") >= 3);
}

#[test]
fn when_the_store_is_down_cached_keys_still_pass_and_unknown_keys_get_503() {
    let mut env = TwoInstances::start(config()).unwrap();
    let key = env.keystore.create_account("acme", "alice");
    assert!(all_get(&env.a, &key, 4, 200));
    env.keystore.kill();
    assert!(
        all_get(&env.a, &key, 10, 200),
        "cached key while the store is down"
    );
    let r = get_with_key(&env.a, "/x", "kg_unknown_while_down_000000000001");
    assert_eq!(r.status, 503, "{}", r.body);
    let problem = r.json().unwrap();
    assert_eq!(
        problem["type"],
        "https://keygate.dev/problems/store-unavailable"
    );
    assert_eq!(problem["status"], 503);
    assert!(r.header("retry-after").is_some());
    // Not cached as a deny: once the store is back, the same unknown key is a 401 and new keys work.
    env.keystore.restart().unwrap();
    within(Duration::from_secs(5), "store back", || {
        get_with_key(&env.a, "/x", "kg_unknown_while_down_000000000001").status == 401
    });
    let fresh = env.keystore.create_user("acme", "carol", "member");
    assert_eq!(get_with_key(&env.a, "/x", &fresh).status, 200);
}

#[test]
fn a_revocation_through_a_is_seen_by_a_at_once() {
    let env = TwoInstances::start(config_with(json!({"sync": {"interval_ms": 60000}}))).unwrap();
    let root = env.keystore.root_key().to_string();
    env.keystore.create_account("acme", "alice");
    let key = env.keystore.create_user("acme", "bob", "member");
    assert!(all_get(&env.a, &key, 6, 200), "cached on A's workers");
    let r = client()
        .request(
            "DELETE",
            &format!("{}{}", env.a.url(), admin::user("acme", "bob")),
            &[("x-api-key", &root)],
            None,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        all_get(&env.a, &key, 6, 401),
        "A refuses the revoked key at once, on every worker"
    );
    assert!(env.a.stat("keygate_local_invalidations_total") >= 1);
}

#[test]
fn a_bad_configuration_is_refused_at_start_up_naming_the_field() {
    let env = TwoInstances::start(config()).unwrap();
    let cases = [
        (
            json!({"store": {"cluster": "keystore"}, "cache": {"ttl_s": 0}}).to_string(),
            "cache.ttl_s",
        ),
        (
            json!({"store": {"cluster": "keystore"}, "cache": {"negative_ttl_s": -1}}).to_string(),
            "cache.negative_ttl_s",
        ),
        (json!({"store": {}}).to_string(), "store.cluster"),
        (
            json!({"store": {"cluster": "keystore"}, "cach": {}}).to_string(),
            "cach",
        ),
        ("{not json".to_string(), "invalid configuration"),
    ];
    for (raw, field) in cases {
        let mut opts = EnvoyOpts::new(
            "keygate-bad",
            json!({}),
            env.upstream.port(),
            env.keystore.port(),
        );
        opts.keygate_config_raw = Some(raw.clone());
        opts.log_level = "info".into();
        opts.ready_timeout = Duration::from_secs(10);
        let log = Envoy::start_expect_failure(opts).unwrap();
        let line = log
            .lines()
            .find(|l| l.contains("invalid configuration"))
            .unwrap_or_else(|| panic!("{raw}: no error line in:\n{log}"));
        assert!(line.contains(field), "{raw}: {line}");
    }
}

/// Found by the bench: answering ~500 paused requests at once from the root context trapped the
/// VM (Envoy nests each resumed request's local reply inside the previous one's). Local replies
/// (401) for a herd on an unknown key are the synchronous case.
#[test]
fn a_herd_of_1000_on_one_unknown_key_gets_1000_answers_and_traps_nothing() {
    // A slow store, so that the whole herd is paused on the one lookup.
    let mut opts = keygate_harness::TwoOpts::new(config());
    opts.keystore.lookup_delay_ms = Some(300);
    let env = TwoInstances::start_with(opts).unwrap();
    let before = lookups(&env.keystore);
    let statuses = herd(
        &[&env.a, &env.b],
        1000,
        "kg_unknown_herd_key_0123456789abcdef",
    );
    let denied = statuses.iter().filter(|s| **s == 401).count();
    let others: Vec<&u16> = statuses.iter().filter(|s| **s != 401).collect();
    println!(
        "herd of 1000 unknown: {denied} x 401, others {others:?}, {} store lookups",
        lookups(&env.keystore) - before
    );
    assert_eq!(denied, 1000, "others: {others:?}");
    assert!(lookups(&env.keystore) - before <= 2);
    for envoy in env.envoys() {
        let log = envoy.log_text();
        assert!(
            !log.contains("Maximum call stack") && !log.contains("wasm trap"),
            "{log}"
        );
    }
}
