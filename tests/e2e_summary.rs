//! The key summary under a flood, end to end (issue 22): two real Envoys (2 workers each)
//! running keygate.wasm in front of one real keystore (SQLite), random keys sent to both at
//! five times their combined miss budget while keys are created in the store.
//!
//! What holds, with the summary on:
//! - the store sees at most the keys created during the flood, the summary's false-positive
//!   share of the flood (`summary.max_false_positive_rate`: past it the filter refetches), and
//!   what each Envoy's budget lets through before its gate engages (half a burst; one more
//!   burst and a second of budget per Envoy allowed for a gate that opens once when the loaded
//!   machine stalls the flood);
//! - a key created during the flood is answered 200 on its first request, through either
//!   Envoy, once that Envoy has polled the feed past its creation (README's bound,
//!   `sync.interval_ms` + ~250 ms, and two polls sent after the creation: the first of them
//!   has then been answered).
//!
//! And with `summary.enabled: false`, nothing is refused by a summary: the flood takes each
//! Envoy's whole burst and keys created during it compete with it for tokens, as before issue
//! 22.
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use keygate_harness::{
    get, parse_envoy_stats_json, Client, Envoy, EnvoyOpts, Keystore, KeystoreOpts, Upstream,
};
use serde_json::{json, Value};

/// Each Envoy's miss budget.
const PER_SECOND: u64 = 20;
const BURST: u64 = 40;
const ENVOYS: u64 = 2;
const INTERVAL_MS: u64 = 250;
/// README's bound for a change in the store to reach every worker: the interval + ~250 ms.
const FEED_BOUND: Duration = Duration::from_millis(INTERVAL_MS + 250);
/// The filter refetches its summary past this estimated false-positive rate.
const MAX_FPR: f64 = 0.02;
/// Random keys per second over both Envoys: five times their combined budget.
const FLOOD_PER_SECOND: u64 = 5 * ENVOYS * PER_SECOND;
const FLOOD_THREADS: u64 = 4;
/// Keys in the store before the Envoys start: the summary is sized for them (with headroom), so
/// the keys created during the flood keep its false-positive rate near 1 %.
const PRELOADED: usize = 200;

fn cfg(summary: bool) -> Value {
    config_with(json!({
        "sync": {"interval_ms": INTERVAL_MS},
        "miss_budget": {"per_second": PER_SECOND, "burst": BURST},
        "summary": {
            "enabled": summary,
            "max_false_positive_rate": MAX_FPR,
            "refetch_min_interval_ms": 1000
        }
    }))
}

/// One keystore with [`PRELOADED`] keys, an upstream, Envoy A and B. Field order is drop order.
struct Fleet {
    a: Envoy,
    b: Envoy,
    _upstream: Upstream,
    keystore: Keystore,
}

impl Fleet {
    fn start(summary: bool) -> Fleet {
        let keystore = Keystore::start(KeystoreOpts::default()).unwrap();
        keystore.create_account("acme", "admin");
        std::thread::scope(|s| {
            for t in 0..4 {
                let keystore = &keystore;
                s.spawn(move || {
                    for i in (t..PRELOADED).step_by(4) {
                        keystore.create_user("acme", &format!("old{i}"), "member");
                    }
                });
            }
        });
        let upstream = Upstream::start().unwrap();
        let (a, b) = std::thread::scope(|s| {
            let start = |node: &'static str| {
                let opts = EnvoyOpts::new(node, cfg(summary), upstream.port(), keystore.port());
                s.spawn(move || Envoy::start(opts).unwrap())
            };
            let (a, b) = (start("keygate-a"), start("keygate-b"));
            (a.join().unwrap(), b.join().unwrap())
        });
        if summary {
            for envoy in [&a, &b] {
                within(
                    Duration::from_secs(20),
                    &format!("{} holds a summary of the store", envoy.node_id()),
                    || {
                        let keys = filtered_stats(envoy, "keygate_summary_keys")
                            .get("keygate_summary_keys")
                            .copied();
                        keys.is_some_and(|k| k >= PRELOADED as u64)
                    },
                );
            }
        }
        Fleet {
            a,
            b,
            _upstream: upstream,
            keystore,
        }
    }

    fn envoys(&self) -> [&Envoy; 2] {
        [&self.a, &self.b]
    }
}

/// The filter's stats whose names match `regex` (Envoy's `filter`), by their unprefixed names.
fn filtered_stats(envoy: &Envoy, regex: &str) -> HashMap<String, u64> {
    let url = format!("{}/stats?format=json&filter={regex}", envoy.admin_url());
    parse_envoy_stats_json(&get(&url, &[]).unwrap().body).unwrap()
}

/// Polls `envoy` has sent, and how many of them failed.
fn polls(envoy: &Envoy) -> (u64, u64) {
    let s = filtered_stats(envoy, "keygate_sync_(polls|errors)_total");
    let n = |name: &str| s.get(name).copied().unwrap_or(0);
    (
        n("keygate_sync_polls_total"),
        n("keygate_sync_errors_total"),
    )
}

/// What the random keys got.
#[derive(Debug, Default, Clone, Copy)]
struct FloodCounts {
    sent: u64,
    /// Looked up (or answered from a cached deny): 401.
    unknown: u64,
    /// 503 `unknown-key-during-flood`: refused by the summary, no lookup.
    refused_by_summary: u64,
    /// 503 `too-many-unknown-keys`: the budget was spent.
    throttled: u64,
    other: u64,
}

impl FloodCounts {
    fn add(&mut self, o: FloodCounts) {
        self.sent += o.sent;
        self.unknown += o.unknown;
        self.refused_by_summary += o.refused_by_summary;
        self.throttled += o.throttled;
        self.other += o.other;
    }
}

/// One flood thread: `rate` random keys per second, alternating between `urls`, until `stop`.
fn flood_thread(t: u64, urls: &[String; 2], rate: u64, stop: &AtomicBool) -> FloodCounts {
    let c = Client::keep_alive(Duration::from_secs(10));
    let mut counts = FloodCounts::default();
    let start = Instant::now();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = start + Duration::from_micros(i * 1_000_000 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait.min(Duration::from_millis(50)));
            continue;
        }
        let key = format!("{}_{t}", random_key(i as usize));
        let r = c.get(&urls[(i % 2) as usize], &[("x-api-key", &key)]);
        i += 1;
        counts.sent += 1;
        match r {
            Ok(r) if r.status == 401 => counts.unknown += 1,
            Ok(r) if r.status == 503 && r.body.contains("unknown-key-during-flood") => {
                counts.refused_by_summary += 1
            }
            Ok(r) if r.status == 503 && r.body.contains("too-many-unknown-keys") => {
                counts.throttled += 1
            }
            _ => counts.other += 1,
        }
    }
    counts
}

/// A key created during the flood, and what its first request got.
#[derive(Debug)]
struct FirstRequest {
    user: String,
    envoy: &'static str,
    status: u16,
    body: String,
    /// From the creation's answer to the first request's send.
    age: Duration,
    /// How long past [`FEED_BOUND`] the first request waited for the Envoy's polls.
    waited_for_polls: Duration,
}

/// Creates `n` keys in the store, one every `every`, while a flood runs against both Envoys;
/// sends each key's first request through one of them (alternately) once its creation is
/// [`FEED_BOUND`] old and that Envoy has sent two polls since; stops the flood after the last.
/// Returns the first requests, the flood's counts and the store lookups during the flood.
fn flood_while_creating(
    fleet: &Fleet,
    n: usize,
    every: Duration,
) -> (Vec<FirstRequest>, FloodCounts, u64) {
    let urls = [
        format!("{}/flood", fleet.a.url()),
        format!("{}/flood", fleet.b.url()),
    ];
    let stop = AtomicBool::new(false);
    let lookups_before = fleet.keystore.lookups();
    let (firsts, counts) = std::thread::scope(|s| {
        let flooders: Vec<_> = (0..FLOOD_THREADS)
            .map(|t| {
                let (urls, stop) = (&urls, &stop);
                s.spawn(move || flood_thread(t, urls, FLOOD_PER_SECOND / FLOOD_THREADS, stop))
            })
            .collect();
        let (tx, rx) = mpsc::channel::<(usize, String, String, Instant, (u64, u64))>();
        s.spawn(move || {
            // Let the flood engage both gates first.
            std::thread::sleep(Duration::from_millis(500));
            for i in 0..n {
                let user = format!("new{i}");
                let key = fleet.keystore.create_user("acme", &user, "member");
                let created = Instant::now();
                let envoy = fleet.envoys()[i % 2];
                tx.send((i, user, key, created, polls(envoy))).unwrap();
                std::thread::sleep(every);
            }
        });
        let firsts: Vec<FirstRequest> = rx
            .iter()
            .map(|(i, user, key, created, (polls0, errors0))| {
                let envoy = fleet.envoys()[i % 2];
                if let Some(wait) = (created + FEED_BOUND).checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let bound_at = Instant::now();
                within(
                    Duration::from_secs(15),
                    &format!("{} polled twice since {user} was created", envoy.node_id()),
                    || {
                        let (p, e) = polls(envoy);
                        (p - polls0).saturating_sub(e - errors0) >= 2
                    },
                );
                let waited_for_polls = bound_at.elapsed();
                let age = created.elapsed();
                let r = get_with_key(envoy, "/first", &key);
                FirstRequest {
                    user,
                    envoy: if i % 2 == 0 { "A" } else { "B" },
                    status: r.status,
                    body: r.body,
                    age,
                    waited_for_polls,
                }
            })
            .collect();
        stop.store(true, Ordering::Relaxed);
        let mut counts = FloodCounts::default();
        for f in flooders {
            counts.add(f.join().unwrap());
        }
        (firsts, counts)
    });
    let lookups = fleet.keystore.lookups() - lookups_before;
    (firsts, counts, lookups)
}

fn envoy_counter(envoy: &Envoy, name: &str) -> u64 {
    filtered_stats(envoy, name).get(name).copied().unwrap_or(0)
}

#[test]
fn a_flood_over_two_envoys_is_refused_by_the_summary_and_keys_created_during_it_pass_on_their_first_request(
) {
    let fleet = Fleet::start(true);
    let new_keys = 30;
    let started = Instant::now();
    let (firsts, flood, lookups) =
        flood_while_creating(&fleet, new_keys, Duration::from_millis(200));
    let secs = started.elapsed().as_secs_f64();
    let refusals: Vec<u64> = fleet
        .envoys()
        .iter()
        .map(|e| envoy_counter(e, "keygate_summary_refusals_total"))
        .collect();
    let fpr_ppm: Vec<u64> = fleet
        .envoys()
        .iter()
        .map(|e| envoy_counter(e, "keygate_summary_false_positive_rate_ppm"))
        .collect();
    // Keys created + the false-positive share + what each budget lets through before its gate
    // engages (half a burst), with one more burst and one second of budget per Envoy for a gate
    // that opens once when the loaded machine stalls the flood for a second.
    let fp_share = (MAX_FPR * flood.sent as f64).ceil() as u64;
    let bound = new_keys as u64 + fp_share + ENVOYS * (BURST + PER_SECOND);
    let max_poll_wait = firsts
        .iter()
        .map(|f| f.waited_for_polls)
        .max()
        .unwrap_or_default();
    let max_age = firsts.iter().map(|f| f.age).max().unwrap_or_default();
    eprintln!(
        "summary flood: {} random keys in {secs:.1} s ({:.0}/s; combined budget {}/s): {} x 401, \
         {} refused by the summary, {} throttled, {} other; refusals counted by A, B: {refusals:?}; \
         estimated FPR (ppm) A, B: {fpr_ppm:?}; {lookups} store lookups (bound {bound}: {new_keys} new keys \
         + {fp_share} false positives at {MAX_FPR} + {} budget); {} new keys' first requests: {} x 200, \
         sent at most {max_age:?} after the creation (waited for polls past the bound at most {max_poll_wait:?})",
        flood.sent,
        flood.sent as f64 / secs,
        ENVOYS * PER_SECOND,
        flood.unknown,
        flood.refused_by_summary,
        flood.throttled,
        flood.other,
        ENVOYS * (BURST + PER_SECOND),
        firsts.len(),
        firsts.iter().filter(|f| f.status == 200).count(),
    );
    let failed: Vec<String> = firsts
        .iter()
        .filter(|f| f.status != 200)
        .map(|f| {
            format!(
                "{} through {} after {:?}: {} {}",
                f.user, f.envoy, f.age, f.status, f.body
            )
        })
        .collect();
    assert_eq!(firsts.len(), new_keys);
    assert!(failed.is_empty(), "first requests refused: {failed:#?}");
    assert_eq!(flood.other, 0, "random keys get 401 or 503, nothing else");
    for (envoy, n) in ["A", "B"].iter().zip(&refusals) {
        assert!(*n > 0, "{envoy} refused no key by its summary");
    }
    assert!(
        flood.refused_by_summary > 0,
        "no answer said unknown-key-during-flood"
    );
    assert!(
        lookups <= bound,
        "{lookups} store lookups during the flood, over the bound {bound}"
    );
}

#[test]
fn with_the_summary_disabled_nothing_is_refused_by_it_and_the_flood_spends_each_whole_burst() {
    let fleet = Fleet::start(false);
    let new_keys = 10;
    let (firsts, flood, lookups) =
        flood_while_creating(&fleet, new_keys, Duration::from_millis(200));
    let statuses: Vec<u16> = firsts.iter().map(|f| f.status).collect();
    let answered = firsts.iter().filter(|f| f.status == 200).count() as u64;
    eprintln!(
        "summary off: {} random keys: {} x 401, {} throttled, {} other; {lookups} store lookups; \
         first requests of {new_keys} new keys (they compete with the flood for tokens): {statuses:?}",
        flood.sent, flood.unknown, flood.throttled, flood.other
    );
    for envoy in fleet.envoys() {
        assert_eq!(
            envoy_counter(envoy, "keygate_summary_refusals_total"),
            0,
            "{} refused by a summary it must not have",
            envoy.node_id()
        );
    }
    assert_eq!(flood.refused_by_summary, 0);
    assert_eq!(flood.other, 0, "random keys get 401 or 503, nothing else");
    assert!(flood.throttled > 0, "the flood outran the budget");
    // No gate: the flood takes each Envoy's whole burst (with a summary, the gate engages at
    // half of it and random keys then take almost no token).
    assert!(
        lookups - answered >= ENVOYS * BURST,
        "{lookups} lookups, {answered} of them for new keys: the flood did not spend both bursts"
    );
}
