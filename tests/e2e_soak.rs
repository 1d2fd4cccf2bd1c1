//! Soak: steady load through Envoy A and B with a mix of valid, revoked, unknown and random
//! keys, while keys are created, rotated and revoked in the keystore every second.
//! `KEYGATE_SOAK_SECS` sets the length (60 in `make test`, 600 in `make soak`).
//!
//! The bookkeeping cannot misclassify: a key leaves the set of active keys before the store is
//! asked to rotate or revoke it, so a key still active when its answer arrives was valid in the
//! store when the filter looked at it. Every key's history is kept; a valid key refused is
//! reported with its key id (short form, as in Envoy's log), the status, the body and that
//! history.
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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use keygate_harness::{Client, TwoInstances};
use keygate_protocol::KeyId;
use serde_json::json;

/// Freshness bound: sync interval (1 s) + 500 ms.
const BOUND: Duration = Duration::from_millis(1500);

struct Keys {
    /// user → its current key
    active: HashMap<String, String>,
    /// key → when it was revoked (or rotated away)
    revoked: Vec<(String, Instant)>,
    /// key → what happened to it, in order (seconds since `start`)
    history: HashMap<String, Vec<(f64, &'static str)>>,
    start: Instant,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            active: HashMap::new(),
            revoked: Vec::new(),
            history: HashMap::new(),
            start: Instant::now(),
        }
    }

    fn note(&mut self, key: &str, event: &'static str) {
        let at = self.start.elapsed().as_secs_f64();
        self.history
            .entry(key.to_string())
            .or_default()
            .push((at, event));
    }

    /// A new key, valid in the store: active from now on.
    fn activate(&mut self, user: String, key: String, event: &'static str) {
        self.note(&key, event);
        self.active.insert(user, key);
    }

    /// The user's key leaves the active set, before the store is asked to change it.
    fn retire(&mut self, user: &str, event: &'static str) -> Option<String> {
        let key = self.active.remove(user)?;
        self.note(&key, event);
        Some(key)
    }

    fn is_active(&self, key: &str) -> bool {
        self.active.values().any(|v| v == key)
    }

    /// What to print about a valid key refused: which key, which status, its history.
    fn report(&self, key: &str, status: u16, body: &str, url: &str, sent_s: f64) -> String {
        let at = self.start.elapsed().as_secs_f64();
        let history: Vec<String> = self
            .history
            .get(key)
            .into_iter()
            .flatten()
            .map(|(t, e)| format!("{t:.3} s {e}"))
            .collect();
        let body: String = body.chars().take(200).collect();
        format!(
            "key {} got {status} from {url} (sent {sent_s:.3} s, answered {at:.3} s): {body}; its history: {}",
            KeyId::of(key.as_bytes()).short(),
            history.join(", ")
        )
    }
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    valid_ok: AtomicU64,
    valid_5xx: AtomicU64,
    valid_other: AtomicU64,
    revoked_refused: AtomicU64,
    revoked_accepted_after_bound: AtomicU64,
    revoked_within_bound: AtomicU64,
    unknown_401: AtomicU64,
    random_refused: AtomicU64,
    unanswered: AtomicU64,
    unexpected: AtomicU64,
}

#[test]
fn soak_under_churn() {
    let secs: u64 = std::env::var("KEYGATE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    // The miss budget is lifted: every revoked key is negatively cached for 5 s, so misses grow
    // with the pool of revoked keys (~250/s after 10 minutes, over the default 100/s), and this
    // test is about correctness under churn, not the budget (tests/e2e_freshness.rs is).
    let cfg = config_with(json!({
        "cache": {"ttl_s": 300, "negative_ttl_s": 5},
        "sync": {"interval_ms": 1000},
        "miss_budget": {"per_second": 5000, "burst": 10000}
    }));
    let env = TwoInstances::start(cfg).unwrap();
    env.keystore.create_account("acme", "admin");
    let keys = Mutex::new(Keys::new());
    for i in 0..20 {
        let user = format!("u{i}");
        let key = env.keystore.create_user("acme", &user, "member");
        keys.lock()
            .unwrap()
            .activate(user, key, "created in the store");
    }
    // Warm up both Envoys, then take the memory baseline.
    let warm: Vec<String> = keys.lock().unwrap().active.values().cloned().collect();
    for k in &warm {
        for e in env.envoys() {
            get_with_key(e, "/warm", k);
        }
    }
    let pids = [env.a.pid().unwrap(), env.b.pid().unwrap()];
    let rss_before: Vec<u64> = pids.iter().map(|p| rss_kb(*p)).collect();

    let counts = Counts::default();
    let unexpected_seen = Mutex::new(Vec::<String>::new());
    let refusals = Mutex::new(Vec::<String>::new());
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let urls = [
        format!("{}/soak", env.a.url()),
        format!("{}/soak", env.b.url()),
    ];
    let mutations = AtomicU64::new(0);
    std::thread::scope(|s| {
        // The churn: every second, one create, one rotation, one revocation.
        s.spawn(|| {
            let mut n = 1000u64;
            while Instant::now() < deadline {
                n += 1;
                let user = format!("u{n}");
                let key = env.keystore.create_user("acme", &user, "member");
                keys.lock()
                    .unwrap()
                    .activate(user, key, "created in the store");
                // Each key leaves the active set before the store changes it.
                let victim = keys.lock().unwrap().active.keys().next().cloned();
                if let Some(v) = victim {
                    let old = keys.lock().unwrap().retire(&v, "rotation asked").unwrap();
                    let new = env.keystore.rotate("acme", &v);
                    let mut k = keys.lock().unwrap();
                    k.note(&old, "rotated away in the store");
                    k.activate(v, new, "created by a rotation");
                    k.revoked.push((old, Instant::now()));
                }
                let doomed = keys.lock().unwrap().active.keys().nth(1).cloned();
                if let Some(d) = doomed {
                    let old = keys.lock().unwrap().retire(&d, "revocation asked").unwrap();
                    env.keystore.revoke_user("acme", &d);
                    let mut k = keys.lock().unwrap();
                    k.note(&old, "revoked in the store");
                    k.revoked.push((old, Instant::now()));
                }
                mutations.fetch_add(3, Ordering::Relaxed);
                std::thread::sleep(Duration::from_secs(1));
            }
            stop.store(true, Ordering::Relaxed);
        });
        for t in 0..4usize {
            let (keys, counts, stop, urls, unexpected_seen, refusals) =
                (&keys, &counts, &stop, &urls, &unexpected_seen, &refusals);
            s.spawn(move || {
                let c = Client::keep_alive(Duration::from_secs(10));
                let t0 = keys.lock().unwrap().start;
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let url = &urls[(i + t) % 2];
                    let pick = i % 10;
                    let sent_at = Instant::now();
                    let (class, key, revoked_at) = {
                        let k = keys.lock().unwrap();
                        match pick {
                            0..=5 => {
                                let n = k.active.len().max(1);
                                (
                                    "valid",
                                    k.active
                                        .values()
                                        .nth((i * 7 + t) % n)
                                        .cloned()
                                        .unwrap_or_default(),
                                    None,
                                )
                            }
                            6 | 7 if !k.revoked.is_empty() => {
                                let (key, at) = &k.revoked[(i * 13 + t) % k.revoked.len()];
                                ("revoked", key.clone(), Some(*at))
                            }
                            8 => (
                                "unknown",
                                "kg_soak_unknown_key_000000000000000000001".to_string(),
                                None,
                            ),
                            _ => (
                                "random",
                                format!(
                                    "kg_soak_random_{t}_{i}_{:x}",
                                    sent_at.elapsed().as_nanos()
                                ),
                                None,
                            ),
                        }
                    };
                    counts.requests.fetch_add(1, Ordering::Relaxed);
                    let sent_s = t0.elapsed().as_secs_f64();
                    let (status, body) = match c.get(url, &[("x-api-key", &key)]) {
                        Ok(r) => (r.status, r.body),
                        Err(_) => {
                            counts.unanswered.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    };
                    match (class, status) {
                        ("valid", 200) => counts.valid_ok.fetch_add(1, Ordering::Relaxed),
                        ("valid", s) => {
                            // Out of the active set since it was picked: the store may have
                            // changed it while the request was in flight. Still in it: the
                            // store was not asked to change it before this answer came.
                            let k = keys.lock().unwrap();
                            if !k.is_active(&key) {
                                counts.revoked_within_bound.fetch_add(1, Ordering::Relaxed)
                            } else {
                                let report = k.report(&key, s, &body, url, sent_s);
                                drop(k);
                                println!("valid key refused: {report}");
                                refusals.lock().unwrap().push(report);
                                if s >= 500 {
                                    counts.valid_5xx.fetch_add(1, Ordering::Relaxed)
                                } else {
                                    counts.valid_other.fetch_add(1, Ordering::Relaxed)
                                }
                            }
                        }
                        ("revoked", 401) => counts.revoked_refused.fetch_add(1, Ordering::Relaxed),
                        ("revoked", 200) => {
                            let age = revoked_at
                                .map(|at| sent_at.saturating_duration_since(at))
                                .unwrap_or_default();
                            if age > BOUND {
                                counts
                                    .revoked_accepted_after_bound
                                    .fetch_add(1, Ordering::Relaxed)
                            } else {
                                counts.revoked_within_bound.fetch_add(1, Ordering::Relaxed)
                            }
                        }
                        ("unknown", 401) => counts.unknown_401.fetch_add(1, Ordering::Relaxed),
                        ("random", 401 | 503) => {
                            counts.random_refused.fetch_add(1, Ordering::Relaxed)
                        }
                        (class, status) => {
                            let mut seen = unexpected_seen.lock().unwrap();
                            if seen.len() < 20 {
                                seen.push(format!("{class}: {status}"));
                            }
                            counts.unexpected.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    std::thread::sleep(Duration::from_millis(3));
                }
            });
        }
    });
    let rss_after: Vec<u64> = pids.iter().map(|p| rss_kb(*p)).collect();
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "soak {elapsed:.0} s: {} requests ({:.0}/s), {} key changes in the store; valid: {} x 200, {} x 5xx, {} other; \
         revoked: {} refused, {} accepted within the {} ms bound, {} accepted after it; unknown: {} x 401; random: {} refused; \
         unanswered: {}; unexpected: {}; Envoy RSS A {} -> {} kB, B {} -> {} kB",
        g(&counts.requests),
        g(&counts.requests) as f64 / elapsed,
        g(&mutations),
        g(&counts.valid_ok),
        g(&counts.valid_5xx),
        g(&counts.valid_other),
        g(&counts.revoked_refused),
        g(&counts.revoked_within_bound),
        BOUND.as_millis(),
        g(&counts.revoked_accepted_after_bound),
        g(&counts.unknown_401),
        g(&counts.random_refused),
        g(&counts.unanswered),
        g(&counts.unexpected),
        rss_before[0],
        rss_after[0],
        rss_before[1],
        rss_after[1],
    );
    assert_eq!(
        g(&counts.revoked_accepted_after_bound),
        0,
        "revoked keys accepted after the freshness bound"
    );
    let refusals = refusals.lock().unwrap();
    assert_eq!(
        g(&counts.valid_5xx),
        0,
        "5xx for valid keys while the store is healthy: {refusals:#?}"
    );
    assert_eq!(
        g(&counts.valid_other),
        0,
        "valid keys refused: {refusals:#?}"
    );
    assert_eq!(g(&counts.unanswered), 0, "requests without an answer");
    assert_eq!(
        g(&counts.unexpected),
        0,
        "unexpected statuses: {:?}",
        unexpected_seen.lock().unwrap()
    );
    assert!(g(&counts.revoked_refused) > 0 && g(&counts.valid_ok) > 0);
    for (before, after) in rss_before.iter().zip(&rss_after) {
        let grew_mb = after.saturating_sub(*before) as f64 / 1024.0;
        assert!(grew_mb < 64.0, "Envoy RSS grew by {grew_mb:.1} MB");
    }
    for envoy in env.envoys() {
        let log = envoy.log_text();
        assert!(
            !log.contains("panicked") && !log.contains("wasm trap"),
            "{}",
            envoy.node_id()
        );
    }
}
