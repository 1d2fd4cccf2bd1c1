//! The key lifecycle through real Envoy (A and B, 2 workers each) and the real keystore:
//! expiry while cached, rotation with a grace period, last used, and claims as headers.
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

use std::time::{Duration, Instant};

use common::*;
use keygate_harness::{rfc3339, unix_now, Client, Envoy, TwoInstances};
use serde_json::{json, Value};

/// Waits until the wall clock reaches `unix_secs` (plus `extra`).
fn sleep_until(unix_secs: u64, extra: Duration) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let target = Duration::from_secs(unix_secs) + extra;
    if target > now {
        std::thread::sleep(target - now);
    }
}

/// Each Envoy answers `n` requests with `key` (new connections: both workers) with `status`.
fn both_answer(envs: &[&Envoy], key: &str, n: usize, status: u16) {
    for e in envs {
        let got = statuses(e, key, n);
        assert!(got.iter().all(|s| *s == status), "{}: {got:?}", e.node_id());
    }
}

#[test]
fn a_key_expiring_while_cached_is_refused_through_a_and_b_within_a_second() {
    let t = TwoInstances::start(config_with(json!({"cache": {"ttl_s": 300}}))).unwrap();
    t.keystore.create_account("acme", "alice");
    let expires_at = unix_now() + 8;
    let created = t.keystore.create_key(
        "acme",
        "alice",
        &json!({"name": "ci", "expires_at": rfc3339(expires_at)}),
    );
    let key = created["user_key"].as_str().unwrap().to_string();
    both_answer(&[&t.a, &t.b], &key, 6, 200);
    let lookups = t.keystore.lookups();
    both_answer(&[&t.a, &t.b], &key, 6, 200);
    assert_eq!(t.keystore.lookups(), lookups, "served from the caches");
    // One second after its expiry, with a 300 s TTL and no feed event: refused everywhere.
    sleep_until(expires_at, Duration::from_secs(1));
    both_answer(&[&t.a, &t.b], &key, 8, 401);
}

#[test]
fn rotation_with_a_grace_period_has_no_outage_and_ends_on_time() {
    let t = TwoInstances::start(config_with(json!({"cache": {"ttl_s": 300}}))).unwrap();
    t.keystore.create_account("acme", "alice");
    let bob = t.keystore.create_user("acme", "bob", "member");
    both_answer(&[&t.a, &t.b], &bob, 4, 200);
    let start = Instant::now();
    let new = t.keystore.rotate_with_grace("acme", "bob", 5);
    let rotated_at = unix_now();
    // A deployed client switching keys in the middle of the grace: no request fails.
    let switching = std::thread::scope(|s| {
        let client = s.spawn(|| {
            let c = Client::keep_alive(Duration::from_secs(10));
            let mut failures = Vec::new();
            let mut sent = 0;
            while start.elapsed() < Duration::from_secs(8) {
                let key = if start.elapsed() < Duration::from_secs(2) {
                    &bob
                } else {
                    &new
                };
                let envoy = if sent % 2 == 0 { &t.a } else { &t.b };
                let r = c.get(&format!("{}/client", envoy.url()), &[("x-api-key", key)]);
                match r {
                    Ok(r) if r.status == 200 => {}
                    other => failures.push(format!("{:?}", other.map(|r| r.status))),
                }
                sent += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (sent, failures)
        });
        // Within the grace (the store rounds to seconds: at least 4 s of it are left here),
        // old and new both pass on both Envoys.
        if start.elapsed() < Duration::from_secs(3) {
            both_answer(&[&t.a, &t.b], &bob, 2, 200);
        }
        both_answer(&[&t.a, &t.b], &new, 2, 200);
        client.join().unwrap()
    });
    assert!(switching.0 > 50, "the client sent {} requests", switching.0);
    assert!(switching.1.is_empty(), "failures: {:?}", switching.1);
    // The grace ends at most rotated_at + 5 s: one second later the old key is refused.
    sleep_until(rotated_at + 5, Duration::from_secs(1));
    both_answer(&[&t.a, &t.b], &bob, 6, 401);
    both_answer(&[&t.a, &t.b], &new, 4, 200);
}

#[test]
fn last_used_shows_in_the_listing_within_the_usage_interval() {
    let cfg = config_with(json!({"usage": {"interval_s": 2}}));
    let t = TwoInstances::start(cfg).unwrap();
    t.keystore.create_account("acme", "alice");
    let created = t
        .keystore
        .create_key("acme", "alice", &json!({"name": "ci"}));
    let key = created["user_key"].as_str().unwrap().to_string();
    let last_used = || {
        let keys = t.keystore.list_keys("acme", "alice");
        let ci = keys.iter().find(|k| k["name"] == "ci").cloned();
        ci.and_then(|k| k.get("last_used_at").cloned())
            .filter(|v| !v.is_null())
    };
    assert_eq!(last_used(), None, "never used yet");
    assert_eq!(get_with_key(&t.b, "/used", &key).status, 200);
    let took = within(Duration::from_secs(2 + 15), "last_used_at set", || {
        last_used().is_some()
    });
    eprintln!("last used visible {took:?} after the request through B");
    assert!(t.b.stat("keygate_usage_ids_reported_total") >= 1);
    assert_eq!(t.b.stat("keygate_usage_report_errors_total"), 0);
}

#[test]
fn claims_reach_the_upstream_and_forged_copies_do_not() {
    let cfg =
        config_with(json!({"identity_headers": {"claims": {"plan": "x-plan", "team": "x-team"}}}));
    let t = TwoInstances::start(cfg).unwrap();
    t.keystore.create_account("acme", "alice");
    t.keystore
        .set_account_claims("acme", &json!({"plan": "pro"}));
    let created = t
        .keystore
        .create_key("acme", "alice", &json!({"name": "ml"}));
    let acme_key = created["user_key"].as_str().unwrap().to_string();
    let key_ref = created["key"].as_str().unwrap().to_string();
    t.keystore
        .set_key_claims("acme", "alice", &key_ref, &json!({"team": "ml"}));
    let globex = t.keystore.create_account("globex", "gina");
    let c = client();
    for envoy in [&t.a, &t.b] {
        for _ in 0..3 {
            let forged = [
                ("x-api-key", acme_key.as_str()),
                ("x-plan", "enterprise"),
                ("X-Team", "root"),
            ];
            let r = c.get(&format!("{}/claims", envoy.url()), &forged).unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
            let h = upstream_headers(&r);
            assert_eq!(h["x-plan"], "pro", "{h}");
            assert_eq!(h["x-team"], "ml", "{h}");
            let forged = [("x-api-key", globex.as_str()), ("x-plan", "pro")];
            let r = c.get(&format!("{}/claims", envoy.url()), &forged).unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
            let h = upstream_headers(&r);
            assert_eq!(
                h.get("x-plan"),
                None::<&Value>,
                "a key without the claim: {h}"
            );
        }
    }
}
