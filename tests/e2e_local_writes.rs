//! Local admin writes on a healthy feed, end to end (issue 21, finding 5): real Envoy A and B
//! (2 workers each) in front of a fake store that answers the documented store protocol and has
//! never changed (revision 0), the way a store that was just set up, or any store whose keys
//! were loaded before its change log began, answers.
//!
//! A store at revision 0 is synced: its feed says "nothing changed". A local admin write then
//! drops only what the feed reports (here nothing), never everything; when the store moves past
//! 0, a page from `since=0` cannot say what changed, and everything is dropped (a reset).
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
use keygate_harness::{Client, Envoy, EnvoyOpts, FakeStore, Upstream};
use keygate_protocol::routes::admin;
use serde_json::json;

/// Asks for every key of `keys` through `envoy` on 16 keep-alive connections (each stays on one
/// worker; all 16 on one worker has odds of 1 in 32,768), each asking for every key, so that
/// both workers' L1 hold them all.
fn every_key_on_every_worker(envoy: &Envoy, keys: &[String]) {
    let url = format!("{}/p", envoy.url());
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                let c = Client::keep_alive(Duration::from_secs(10));
                for k in keys {
                    let r = c.get(&url, &[("x-api-key", k)]).unwrap();
                    assert_eq!(r.status, 200, "{}", r.body);
                }
            });
        }
    });
}

/// The independent case: 100 keys cached through A, then (more than one sync interval later,
/// so that no verdict outlives a cap of one interval either) a `DELETE` and a `POST` through A
/// that the upstream answers 200 and the feed reports nothing of. Before the fix, A took the
/// store's revision 0 for "never synced": each write dropped every cached verdict (and every
/// verdict was kept at most one interval), so all 100 keys were looked up again.
#[test]
fn on_a_store_still_at_revision_0_a_local_write_keeps_every_other_key_cached_until_the_store_moves()
{
    let store = FakeStore::start(0).unwrap();
    let upstream = Upstream::start().unwrap();
    let cfg = config_with(json!({"cache": {"ttl_s": 300}}));
    let envoy = |node: &str| {
        Envoy::start(EnvoyOpts::new(
            node,
            cfg.clone(),
            upstream.port(),
            store.port(),
        ))
        .unwrap()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| envoy("keygate-a"));
        let b = s.spawn(|| envoy("keygate-b"));
        (a.join().unwrap(), b.join().unwrap())
    });
    let keys: Vec<String> = (0..100)
        .map(|i| format!("kg_fake_store_key_{i:03}"))
        .collect();
    // Both Envoys' first poll (a quarter interval after start) answered: nothing cached below
    // is from before it.
    std::thread::sleep(Duration::from_millis(1000));
    every_key_on_every_worker(&a, &keys);
    let cached = store.lookups();
    every_key_on_every_worker(&a, &keys);
    assert_eq!(
        store.lookups(),
        cached,
        "100 keys cached on both workers of A"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let before = store.lookups();
    let admin = format!("{}{}", a.url(), admin::user("acme", "u"));
    let c = client();
    for method in ["DELETE", "POST"] {
        let r = c
            .request(method, &admin, &[("x-api-key", &keys[0])], Some("{}"))
            .unwrap();
        assert_eq!(r.status, 200, "{method}: {}", r.body);
    }
    assert_eq!(store.writes(), 2);
    every_key_on_every_worker(&a, &keys);
    let drops = a.stat("keygate_local_drops_everything_total");
    println!(
        "after the writes: {} new lookups, drops everything {drops}, polls {}, sync errors {}",
        store.lookups() - before,
        a.stat("keygate_sync_polls_total"),
        a.stat("keygate_sync_errors_total")
    );
    assert_eq!(store.lookups(), before, "every key stayed cached");
    assert_eq!(
        drops, 0,
        "nothing dropped for a write the feed reports nothing of"
    );
    assert!(a.stat("keygate_local_invalidations_total") >= 2);

    // The store moves past 0 (a change its feed cannot list from `since=0`): the next write's
    // poll finds revision 1, and everything is dropped before the writer gets its 200.
    store.set_revision(1);
    let r = c
        .request("POST", &admin, &[("x-api-key", &keys[0])], Some("{}"))
        .unwrap();
    assert_eq!(r.status, 200);
    let before = store.lookups();
    every_key_on_every_worker(&a, &keys);
    assert_eq!(store.lookups() - before, 100, "every key looked up again");
    assert_eq!(b.stat("keygate_local_drops_everything_total"), 0);
}
