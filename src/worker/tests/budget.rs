//! The miss budget: it bounds store lookups, refuses new misses at once when spent, keeps a
//! reserve for keys that were valid recently, and is exported.

use std::rc::Rc;

use super::{cache_allow, config, is_allow, key, lookups, respond, synced_worker, IDENTITY};
use crate::fake_host::FakeHost;
use crate::host::{Gauge, Metric};
use crate::test_support::test;
use crate::verdict::{Decision, Outcome, Source};
use crate::worker::Worker;

#[test]
fn with_the_budget_spent_a_new_miss_is_refused_at_once_without_parking() {
    let cfg = config(r#","miss_budget":{"per_second":1,"burst":1}"#);
    let (host, mut w) = synced_worker(&cfg);
    cache_allow(&host, &mut w, key(50)); // spends the only token
    assert_eq!(
        w.check(&host, 1, key(51)),
        Decision::Answer(Outcome::Throttled, Source::NoVerdict)
    );
    assert_eq!(w.waiters(), 0);
    assert!(lookups(&host, &mut w).is_empty());
    host.advance(1_000);
    assert_eq!(
        w.check(&host, 2, key(51)),
        Decision::Wait,
        "a token again a second later"
    );
}

#[test]
fn the_miss_budget_bounds_store_lookups_and_cached_keys_are_unaffected() {
    let cfg = config(r#","miss_budget":{"per_second":10,"burst":5}"#);
    let (host, mut w) = synced_worker(&cfg);
    let good = key(0);
    cache_allow(&host, &mut w, good);
    let mut throttled = 0;
    for n in 1..=50 {
        assert_eq!(w.check(&host, n, key(n)), Decision::Wait);
    }
    let r = w.on_tick(&host);
    let calls = lookups(&host, &mut w);
    throttled += r.iter().filter(|r| r.outcome == Outcome::Throttled).count();
    assert_eq!(calls.len(), 4, "the burst of 5, one spent on the good key");
    assert_eq!(throttled, 46);
    assert!(matches!(
        w.check(&host, 999, good),
        Decision::Answer(Outcome::Allow { .. }, _)
    ));
    host.advance(1_000);
    for n in 100..150 {
        w.check(&host, n, key(n));
    }
    w.on_tick(&host);
    assert_eq!(
        lookups(&host, &mut w).len(),
        5,
        "refilled at 10/s, capped by the burst"
    );
}

/// Finding 3: a flood of new keys spends the main budget; a key that was valid moments ago
/// (expired, within its stale window) is still revalidated by a real lookup, from the reserve,
/// while a new key is refused.
#[test]
fn a_flood_of_new_keys_cannot_lock_out_a_key_that_was_valid_recently() {
    let cfg = config(
        r#","cache":{"ttl_s":1,"stale_if_error_s":300,"shared_slots":256},"miss_budget":{"per_second":1,"burst":1,"reserve_per_second":5}"#,
    );
    let (host, mut w) = synced_worker(&cfg);
    let known = key(80);
    cache_allow(&host, &mut w, known); // spends the main budget's only token
    host.advance(1_500); // expired, within its stale window
    for n in 0..50 {
        assert_eq!(w.check(&host, 1000 + n, key(1000 + n)), Decision::Wait);
    }
    let r = w.on_tick(&host);
    assert_eq!(
        lookups(&host, &mut w).len(),
        1,
        "the main budget's one token"
    );
    assert_eq!(r.len(), 49);
    assert!(r.iter().all(|r| r.outcome == Outcome::Throttled));
    assert_eq!(
        w.check(&host, 2000, key(2000)),
        Decision::Answer(Outcome::Throttled, Source::NoVerdict),
        "a new key shares the spent main budget"
    );
    assert_eq!(w.check(&host, 1, known), Decision::Wait, "revalidated");
    w.on_tick(&host);
    let calls = lookups(&host, &mut w);
    assert_eq!(calls.len(), 1);
    let r = respond(&host, &mut w, calls[0].0, 200, IDENTITY);
    assert!(is_allow(&r[0].outcome), "a fresh answer, not a stale one");
    assert_eq!(r[0].source, Source::Lookup);
    assert_eq!(host.metric(Metric::ReserveLookups), 1);
}

/// The miss budget's level is exported on the tick, so an alert can fire before new keys get
/// 503s.
#[test]
fn the_miss_budget_level_is_exported_on_the_tick() {
    let cfg = config(r#","miss_budget":{"per_second":1,"burst":3,"reserve_per_second":2}"#);
    let host = FakeHost::new();
    let mut w = Worker::new(&host, Rc::clone(&cfg)).unwrap();
    w.on_tick(&host);
    assert_eq!(host.gauge_value(Gauge::MissBudgetTokens), Some(3));
    assert_eq!(host.gauge_value(Gauge::MissReserveTokens), Some(4));
    for n in 0..2 {
        assert_eq!(w.check(&host, 10 + n, key(200 + n)), Decision::Wait);
    }
    w.on_tick(&host);
    assert_eq!(lookups(&host, &mut w).len(), 2);
    w.on_tick(&host);
    assert_eq!(host.gauge_value(Gauge::MissBudgetTokens), Some(1));
}
