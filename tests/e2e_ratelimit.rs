//! Per-account rate limits with Envoy's own local rate limiter, end to end on real Envoy
//! (2 workers): `envoy/ratelimit/envoy.yaml.tmpl`, where `local_ratelimit` runs after keygate
//! and keeps one token bucket per `x-account-id` (60 requests a minute; 600 for exactly
//! `x-plan: pro`, which keygate sets from the store's `plan` claim; any other plan, or none,
//! meets the 60 bucket). The key store's admin API is not counted.
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
use keygate_harness::{repo_root, Client, Envoy, EnvoyOpts, Keystore, KeystoreOpts, Upstream};
use keygate_protocol::routes::admin;
use serde_json::json;

/// The account bucket and the pro bucket of the shipped configuration.
const FREE: usize = 60;
const PRO: usize = 600;

struct Limited {
    envoy: Envoy,
    _upstream: Upstream,
    keystore: Keystore,
}

fn shipped_template() -> String {
    std::fs::read_to_string(repo_root().join("envoy/ratelimit/envoy.yaml.tmpl")).unwrap()
}

fn start(template: String, keygate_config: serde_json::Value) -> Limited {
    let keystore = Keystore::start(KeystoreOpts::default()).unwrap();
    let upstream = Upstream::start().unwrap();
    let mut opts = EnvoyOpts::new(
        "keygate-a",
        keygate_config,
        upstream.port(),
        keystore.port(),
    );
    opts.template = Some(template);
    Limited {
        envoy: Envoy::start(opts).unwrap(),
        _upstream: upstream,
        keystore,
    }
}

/// Sends GETs with `key` (and `extra` headers; `{i}` in a value becomes the request's number)
/// until one is answered 429, at most `cap`; returns how many 200s came before it, or `None`
/// if no 429 came. Any status other than 200 and 429 fails the test.
fn count_until_429(envoy: &Envoy, key: &str, extra: &[(&str, &str)], cap: usize) -> Option<usize> {
    let c = Client::keep_alive(Duration::from_secs(10));
    let url = format!("{}/orders", envoy.url());
    for i in 0..cap {
        let values: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.replace("{i}", &i.to_string())))
            .collect();
        let mut headers: Vec<(&str, &str)> = vec![("x-api-key", key)];
        headers.extend(values.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let r = c.get(&url, &headers).unwrap();
        match r.status {
            200 => {}
            429 => {
                assert_refusal_headers(&r);
                return Some(i);
            }
            s => panic!("request {i}: {s} {}", r.body),
        }
    }
    None
}

/// A 429 of the account limiter says so, and when to come back: `retry-after` (1 s: the
/// buckets refill continuously, a token a second at 60 a minute) and Envoy's `x-ratelimit-*`
/// headers (the bucket's size, nothing left, seconds to the refill).
fn assert_refusal_headers(r: &keygate_harness::Response) {
    assert_eq!(r.header("x-ratelimit-scope"), Some("account"), "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("1"), "{:?}", r.headers);
    let limit: usize = r
        .header("x-ratelimit-limit")
        .unwrap_or("")
        .parse()
        .unwrap_or(0);
    assert!(
        [FREE, PRO].contains(&limit),
        "x-ratelimit-limit {:?}",
        r.headers
    );
    assert_eq!(
        r.header("x-ratelimit-remaining"),
        Some("0"),
        "{:?}",
        r.headers
    );
    let reset: u64 = r
        .header("x-ratelimit-reset")
        .unwrap_or("")
        .parse()
        .unwrap_or(999);
    assert!(reset <= 60, "x-ratelimit-reset {:?}", r.headers);
}

/// The number of 200s before the first 429 for a bucket of `size` (refilled once a minute):
/// at least `size`; at most `2 * size` (a refill may fall inside the run).
fn assert_bucket(what: &str, got: Option<usize>, size: usize) {
    let n = got.unwrap_or_else(|| panic!("{what}: no 429 within {} requests", 2 * size + 2));
    assert!(
        (size..=2 * size).contains(&n),
        "{what}: {n} requests passed, bucket {size}"
    );
}

#[test]
fn one_account_gets_429_while_another_on_the_same_envoy_keeps_getting_200() {
    let l = start(shipped_template(), config());
    let acme = l.keystore.create_account("acme", "alice");
    let acme_bob = l.keystore.create_user("acme", "bob", "member");
    let globex = l.keystore.create_account("globex", "gina");

    assert_bucket(
        "acme",
        count_until_429(&l.envoy, &acme, &[], 2 * FREE + 2),
        FREE,
    );
    // Another account on the same Envoy: its own bucket, all 200.
    let c = Client::keep_alive(Duration::from_secs(10));
    for i in 0..FREE {
        let r = c
            .get(
                &format!("{}/orders", l.envoy.url()),
                &[("x-api-key", &globex)],
            )
            .unwrap();
        assert_eq!(r.status, 200, "globex request {i}: {}", r.body);
        assert_eq!(upstream_headers(&r)["x-account-id"], "globex");
    }
    // The bucket is the account's, not the key's: another key of acme is limited too (within
    // one more bucket, in case the minute turned meanwhile).
    let n = count_until_429(&l.envoy, &acme_bob, &[], FREE + 2);
    assert!(n.is_some_and(|n| n <= FREE), "bob of acme: {n:?}");
    // A client cannot pick another bucket: keygate replaces a forged x-account-id (a new
    // value on every request would never be limited) before the limiter reads it.
    let n = count_until_429(&l.envoy, &acme, &[("x-account-id", "forged-{i}")], FREE + 2);
    assert!(n.is_some_and(|n| n <= FREE), "forged x-account-id: {n:?}");
    assert!(
        l.envoy
            .stat("keygate_accounts.http_local_rate_limit.rate_limited")
            >= 3
    );
}

#[test]
fn x_plan_pro_raises_the_limit_but_a_client_cannot_claim_it() {
    // The shipped configuration removes a client-sent x-plan: pro does not help.
    let l = start(shipped_template(), config());
    let acme = l.keystore.create_account("acme", "alice");
    let n = count_until_429(&l.envoy, &acme, &[("x-plan", "pro")], 2 * FREE + 2);
    assert_bucket("client-sent x-plan: pro", n, FREE);
    drop(l);

    // keygate sets x-plan from the store's `plan` claim (and strips client-sent copies itself):
    // even without the template's header_mutation filter, only the store picks the plan.
    let template = shipped_template();
    let from = template
        .find("          - name: envoy.filters.http.header_mutation")
        .unwrap();
    let to = template
        .find("          - name: envoy.filters.http.wasm")
        .unwrap();
    let claims = config_with(json!({"identity_headers": {"claims": {"plan": "x-plan"}}}));
    for template in [
        template.clone(),
        format!("{}{}", &template[..from], &template[to..]),
    ] {
        let l = start(template, claims.clone());
        let acme = l.keystore.create_account("acme", "alice");
        l.keystore
            .set_account_claims("acme", &json!({"plan": "pro"}));
        let globex = l.keystore.create_account("globex", "gina");
        let n = count_until_429(&l.envoy, &acme, &[], 2 * PRO + 2);
        assert_bucket("acme on plan pro", n, PRO);
        let n = count_until_429(&l.envoy, &globex, &[("x-plan", "pro")], 2 * FREE + 2);
        assert_bucket("globex without a plan, sending x-plan: pro", n, FREE);
    }
}

#[test]
fn a_plan_the_template_does_not_know_meets_the_default_account_bucket() {
    // The store's plan claim goes to x-plan. Only the exact value "pro" selects the pro
    // bucket; a plan the template has no bucket for (a new one, a typo, another spelling) or
    // none at all meets the default account bucket, never only the filter-wide one.
    let claims = config_with(json!({"identity_headers": {"claims": {"plan": "x-plan"}}}));
    let l = start(shipped_template(), claims);
    for (account, plan) in [
        ("ent", Some("enterprise")),
        ("caps", Some("Pro")),
        ("none", None),
    ] {
        let key = l.keystore.create_account(account, "admin");
        if let Some(plan) = plan {
            l.keystore
                .set_account_claims(account, &json!({ "plan": plan }));
        }
        let n = count_until_429(&l.envoy, &key, &[], 2 * FREE + 2);
        assert_bucket(&format!("plan {plan:?}"), n, FREE);
    }
}

#[test]
fn an_account_admin_can_revoke_a_key_through_envoy_after_the_account_bucket_is_empty() {
    let l = start(shipped_template(), config());
    let admin = l.keystore.create_account("acme", "alice");
    let leaked = l.keystore.create_user("acme", "bob", "member");
    // The leaked key empties the account's bucket: the admin's own data calls get 429 too.
    let n = count_until_429(&l.envoy, &leaked, &[], 2 * FREE + 2);
    assert_bucket("acme", n, FREE);
    // (Within the few tokens the bucket may have got back since: it refills continuously.)
    let n = count_until_429(&l.envoy, &admin, &[], FREE + 2);
    assert!(n.is_some_and(|n| n < FREE), "the admin's data calls: {n:?}");
    // The key store's admin API is not counted in that bucket: the admin lists the account's
    // users and revokes the leaked key's user through the gateway.
    let c = Client::keep_alive(Duration::from_secs(10));
    let users = format!("{}{}", l.envoy.url(), admin::users("acme"));
    let r = c.get(&users, &[("x-api-key", &admin)]).unwrap();
    assert_eq!(r.status, 200, "listing: {}", r.body);
    assert_eq!(r.header("x-ratelimit-limit"), None, "{:?}", r.headers);
    let bob = format!("{users}/bob");
    let r = keygate_harness::request("DELETE", &bob, &[("x-api-key", &admin)], None).unwrap();
    assert_eq!(r.status, 200, "revoking bob: {}", r.body);
    // The leaked key is refused by keygate now, before the limiter.
    within(Duration::from_secs(5), "bob's key refused", || {
        get_with_key(&l.envoy, "/orders", &leaked).status == 401
    });
}
