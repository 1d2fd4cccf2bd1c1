//! Freshness, stale-if-error, store protection and bounded memory, end to end: real Envoy A
//! and B (2 workers each), the real keystore, changes made directly in the keystore (not
//! through Envoy), so only the changes feed can tell the filters.
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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use keygate_harness::{Client, Envoy, EnvoyOpts, Keystore, KeystoreOpts, TwoInstances, Upstream};
use keygate_protocol::routes::admin;
use serde_json::json;

/// Sync every second, positive TTL 5 minutes: only the feed can make a change visible in time.
fn long_ttl() -> serde_json::Value {
    config_with(
        json!({"cache": {"ttl_s": 300, "negative_ttl_s": 300}, "sync": {"interval_ms": 1000}}),
    )
}

const BOUND: Duration = Duration::from_millis(1000 + 500);

#[test]
fn a_revocation_in_the_store_reaches_both_instances_within_the_sync_bound() {
    let env = TwoInstances::start(long_ttl()).unwrap();
    env.keystore.create_account("acme", "alice");
    let key = env.keystore.create_user("acme", "bob", "member");
    for envoy in env.envoys() {
        assert!(all_get(envoy, &key, 6, 200));
    }
    env.keystore.revoke_user("acme", "bob");
    let took = within(Duration::from_secs(5), "revocation seen by A and B", || {
        env.envoys().iter().all(|e| all_get(e, &key, 4, 401))
    });
    println!(
        "revocation visible on A and B after {} ms",
        took.as_millis()
    );
    assert!(took <= BOUND, "revocation took {took:?}, bound {BOUND:?}");
}

#[test]
fn a_rotation_in_the_store_retires_the_old_key_within_the_bound() {
    let env = TwoInstances::start(long_ttl()).unwrap();
    env.keystore.create_account("acme", "alice");
    let old = env.keystore.create_user("acme", "bob", "member");
    for envoy in env.envoys() {
        assert!(all_get(envoy, &old, 4, 200));
    }
    let new = env.keystore.rotate("acme", "bob");
    let took = within(Duration::from_secs(5), "old key refused", || {
        env.envoys().iter().all(|e| all_get(e, &old, 4, 401))
    });
    assert!(took <= BOUND, "rotation took {took:?}");
    for envoy in env.envoys() {
        assert!(all_get(envoy, &new, 4, 200));
    }
}

#[test]
fn a_key_created_after_it_was_negatively_cached_is_accepted_within_the_bound() {
    let env = TwoInstances::start(long_ttl()).unwrap();
    env.keystore.create_account("acme", "alice");
    let key = "kg_imported_key_0123456789abcdefghijklmnopqrstuvwxyz";
    for envoy in env.envoys() {
        assert!(
            all_get(envoy, key, 4, 401),
            "unknown, then negatively cached for 300 s"
        );
    }
    let before = lookups(&env.keystore);
    assert!(all_get(&env.a, key, 4, 401));
    assert_eq!(
        lookups(&env.keystore),
        before,
        "served from the negative cache"
    );
    let r = env
        .keystore
        .admin(
            "POST",
            &admin::users("acme"),
            Some(&json!({"user_id": "imported", "role": "member", "user_key": key})),
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let took = within(
        Duration::from_secs(5),
        "new key accepted by A and B",
        || env.envoys().iter().all(|e| all_get(e, key, 4, 200)),
    );
    println!("creation visible on A and B after {} ms", took.as_millis());
    assert!(took <= BOUND, "creation took {took:?}");
}

#[test]
fn known_keys_are_served_stale_while_the_store_is_down_and_revoked_ones_never_are() {
    let cfg = config_with(
        json!({"cache": {"ttl_s": 1, "negative_ttl_s": 1, "stale_if_error_s": 300}, "sync": {"interval_ms": 500}}),
    );
    let mut env = TwoInstances::start(cfg).unwrap();
    env.keystore.create_account("acme", "alice");
    let good = env.keystore.create_user("acme", "bob", "member");
    let revoked = env.keystore.create_user("acme", "eve", "member");
    for envoy in env.envoys() {
        assert!(all_get(envoy, &good, 4, 200));
        assert!(all_get(envoy, &revoked, 4, 200));
    }
    env.keystore.revoke_user("acme", "eve");
    within(Duration::from_secs(3), "revocation seen", || {
        env.envoys().iter().all(|e| all_get(e, &revoked, 4, 401))
    });
    env.keystore.kill();
    std::thread::sleep(Duration::from_millis(1500)); // past the 1 s TTL
    for envoy in env.envoys() {
        let got: Vec<String> = (0..6)
            .map(|_| {
                let r = get_with_key(envoy, "/probe", &good);
                format!("{} {}", r.status, r.body)
            })
            .collect();
        assert!(
            got.iter().all(|s| s.starts_with("200")),
            "{}: a known key must keep working while the store is down: {got:?}\n{}",
            envoy.node_id(),
            envoy.log_text()
        );
        for _ in 0..6 {
            let s = get_with_key(envoy, "/x", &revoked).status;
            assert!(
                s == 401 || s == 503,
                "{}: a revoked key got {s}",
                envoy.node_id()
            );
        }
        let r = get_with_key(envoy, "/x", "kg_never_seen_key_during_outage_0001");
        assert_eq!(r.status, 503, "unknown key during the outage");
        assert!(envoy.stat("keygate_stale_served_total") >= 1);
    }
    env.keystore.restart().unwrap();
    within(
        Duration::from_secs(5),
        "recovered without an Envoy restart",
        || {
            env.envoys().iter().all(|e| {
                get_with_key(e, "/x", "kg_never_seen_key_during_outage_0001").status == 401
            })
        },
    );
    let fresh = env.keystore.create_user("acme", "carol", "member");
    for envoy in env.envoys() {
        assert!(all_get(envoy, &fresh, 2, 200));
        assert!(all_get(envoy, &revoked, 2, 401));
    }
}

#[test]
fn a_flood_of_random_keys_stays_within_the_miss_budget_and_known_keys_keep_working() {
    let env = TwoInstances::start(config_with(
        json!({"miss_budget": {"per_second": 100, "burst": 200}}),
    ))
    .unwrap();
    let good = env.keystore.create_account("acme", "alice");
    for envoy in env.envoys() {
        assert!(all_get(envoy, &good, 4, 200));
    }
    let before = lookups(&env.keystore);
    let start = Instant::now();
    let done = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let good_ok = AtomicU64::new(0);
    let good_bad = AtomicU64::new(0);
    let good_bad_seen = std::sync::Mutex::new(Vec::new());
    let urls = [
        format!("{}/flood", env.a.url()),
        format!("{}/flood", env.b.url()),
    ];
    std::thread::scope(|s| {
        s.spawn(|| {
            let c = Client::keep_alive(Duration::from_secs(10));
            let mut i = 0usize;
            while !done.load(Ordering::Relaxed) {
                let url = &urls[i % 2];
                i += 1;
                match c.get(url, &[("x-api-key", good.as_str())]) {
                    Ok(r) if r.status == 200 => {
                        good_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        good_bad.fetch_add(1, Ordering::Relaxed);
                        let what = other
                            .map(|r| format!("{} {}", r.status, r.body))
                            .unwrap_or_else(|e| e.to_string());
                        good_bad_seen.lock().unwrap().push(what);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let workers: Vec<_> = (0..8)
            .map(|t| {
                let (urls, sent) = (&urls, &sent);
                s.spawn(move || {
                    let c = Client::keep_alive(Duration::from_secs(10));
                    let mut statuses = [0u64; 3];
                    for i in 0..2500 {
                        let key = format!("{}_{t}_{i}", random_key(i));
                        let r = c
                            .get(&urls[i % 2], &[("x-api-key", &key)])
                            .map(|r| r.status)
                            .unwrap_or(0);
                        sent.fetch_add(1, Ordering::Relaxed);
                        match r {
                            401 => statuses[0] += 1,
                            503 => statuses[1] += 1,
                            _ => statuses[2] += 1,
                        }
                    }
                    statuses
                })
            })
            .collect();
        let mut totals = [0u64; 3];
        for w in workers {
            let st = w.join().unwrap();
            for (t, v) in totals.iter_mut().zip(st) {
                *t += v;
            }
        }
        done.store(true, Ordering::Relaxed);
        let secs = start.elapsed().as_secs_f64();
        let made = lookups(&env.keystore) - before;
        let allowed = 2.0 * (200.0 + 100.0 * secs.ceil());
        println!(
            "flood: {} random keys in {secs:.1} s ({:.0}/s): {} x 401, {} x 503, {} other; {made} store lookups (budget for 2 Envoys: {allowed:.0})",
            sent.load(Ordering::Relaxed),
            sent.load(Ordering::Relaxed) as f64 / secs,
            totals[0],
            totals[1],
            totals[2]
        );
        assert_eq!(sent.load(Ordering::Relaxed), 20_000);
        assert_eq!(totals[2], 0, "random keys get 401 or 503, nothing else");
        assert!(
            (made as f64) <= allowed,
            "{made} lookups over the budget {allowed}"
        );
        assert!(totals[1] > 0, "the budget was exercised");
    });
    let (ok, bad) = (
        good_ok.load(Ordering::Relaxed),
        good_bad.load(Ordering::Relaxed),
    );
    println!("valid key during the flood: {ok} x 200, {bad} other");
    assert!(ok > 50);
    assert_eq!(
        bad,
        0,
        "the valid cached key always answered 200: {:?}",
        good_bad_seen.lock().unwrap()
    );
}

/// 200,000 distinct keys through one Envoy, every one looked up and negatively cached (the
/// miss budget is lifted so nothing is refused before the cache): memory must stay bounded.
#[test]
fn memory_stays_bounded_under_200k_distinct_keys() {
    let keystore = Keystore::start(KeystoreOpts::default()).unwrap();
    let upstream = Upstream::start().unwrap();
    let cfg = config_with(
        json!({"miss_budget": {"per_second": 1000000, "burst": 1000000}, "cache": {"negative_ttl_s": 300}}),
    );
    let envoy = Envoy::start(EnvoyOpts::new(
        "keygate-mem",
        cfg,
        upstream.port(),
        keystore.port(),
    ))
    .unwrap();
    let pid = envoy.pid().unwrap();
    // Warm up: V8 compiles, pools fill.
    herd(&[&envoy], 64, "kg_warm_up_key_000000000000000001");
    let before = rss_kb(pid);
    let script = std::env::temp_dir().join(format!("keygate-keys-{}.lua", std::process::id()));
    // Distinct keys: a per-round salt, the thread's id (a global: `thread:set` sets globals)
    // and a counter.
    std::fs::write(
        &script,
        "local n = 0\nlocal salt = ''\nid = 0\n\
         setup = function(thread) id = id + 1; thread:set('id', id) end\n\
         init = function(args) n = 0; salt = args[1] or '' end\n\
         request = function()\n  n = n + 1\n  return wrk.format('GET', '/m', {['x-api-key'] = string.format('kg_mem_%s_%d_%d', salt, id, n)})\nend\n",
    )
    .unwrap();
    let lookups_before = keystore.lookups();
    // Until 200,000 distinct keys have reached the store (20 s rounds, 4 minutes at most).
    let mut requests = 0u64;
    let mut text = String::new();
    for round in 0..12 {
        if keystore.lookups() - lookups_before >= 200_000 {
            break;
        }
        let out = std::process::Command::new("wrk")
            .args(["-t2", "-c32", "-d20s", "-s"])
            .arg(&script)
            .arg(format!("{}/m", envoy.url()))
            .args(["--", &format!("r{round}")])
            .output()
            .expect("wrk (installed by scripts/setup.sh)");
        text = String::from_utf8_lossy(&out.stdout).into_owned();
        requests += text
            .lines()
            .find(|l| l.contains("requests in"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    let _ = std::fs::remove_file(&script);
    let looked_up = keystore.lookups() - lookups_before;
    let after = rss_kb(pid);
    let grew_mb = (after.saturating_sub(before)) as f64 / 1024.0;
    println!("memory: {requests} requests with distinct keys, {looked_up} store lookups; Envoy RSS {before} kB -> {after} kB (+{grew_mb:.1} MB)");
    assert!(
        looked_up >= 200_000,
        "only {looked_up} distinct keys reached the store in 4 minutes:\n{text}"
    );
    assert!(grew_mb < 64.0, "RSS grew by {grew_mb:.1} MB");
}
