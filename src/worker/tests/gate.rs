//! The summary gate on the worker: under a flood of keys the summary lacks, lookups stop once
//! the miss budget runs short; keys the summary may have, and keys valid recently, are still
//! looked up; after the flood every new key is looked up again.

use std::rc::Rc;

use keygate_protocol::KeyId;

use super::summary::install_summary;
use super::{
    cache_allow, config, feed_reports, is_allow, key, lookups, respond, sibling_worker,
    synced_worker, IDENTITY,
};
use crate::config::Config;
use crate::fake_host::FakeHost;
use crate::host::{Gauge, Metric};
use crate::test_support::test;
use crate::verdict::{Decision, Outcome, Source};
use crate::worker::{Worker, MAX_ANSWERS_PER_CALLBACK};

/// Budget 10/s, burst 20: the gate engages below 10 tokens, and stays engaged while a window
/// has 10 refusals.
fn budget() -> Rc<Config> {
    config(r#","miss_budget":{"per_second":10,"burst":20},"summary":{"enabled":true}"#)
}

/// The store's keys the summary holds: `key(0)`..`key(9)`.
fn known() -> Vec<KeyId> {
    (0..10).map(key).collect()
}

/// A worker with a summary of [`known`] installed.
fn worker_with_summary(cfg: &Rc<Config>) -> (FakeHost, Worker) {
    let (host, w) = synced_worker(cfg);
    install_summary(&host, &w, &known());
    (host, w)
}

/// What one request of a flood came to.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    refused: usize,
    looked_up: usize,
    throttled: usize,
}

/// Requests with the unknown keys `first..first + n`, one after the other, each with the
/// wake-up it asks for; every lookup is answered 404.
fn flood(host: &FakeHost, w: &mut Worker, first: u32, n: u32) -> Tally {
    let mut t = Tally::default();
    for k in first..first + n {
        match w.check(host, k, key(k)) {
            Decision::Answer(Outcome::UnknownKeyDuringFlood, Source::NoVerdict) => t.refused += 1,
            Decision::Answer(Outcome::Throttled, Source::NoVerdict) => t.throttled += 1,
            Decision::Wait => {
                w.on_wake(host);
                for (token, _) in lookups(host, w) {
                    t.looked_up += 1;
                    respond(host, w, token, 404, "");
                }
            }
            d => panic!("key {k}: {d:?}"),
        }
    }
    t
}

#[test]
fn under_a_flood_of_absent_keys_lookups_stop_once_the_budget_runs_short() {
    let (host, mut w) = worker_with_summary(&budget());
    let t = flood(&host, &mut w, 1_000, 100);
    // 20 tokens: 11 lookups leave 9, below half: the 12th miss engages the gate.
    assert_eq!(
        t,
        Tally {
            refused: 89,
            looked_up: 11,
            throttled: 0,
        }
    );
    assert_eq!(host.metric(Metric::SummaryRefusals), 89);
    assert_eq!(host.metric(Metric::LookupsStarted), 11);
    w.on_tick(&host);
    assert_eq!(host.gauge_value(Gauge::SummaryGateEngaged), Some(1));
    assert_eq!(host.gauge_value(Gauge::MissBudgetTokens), Some(9));
}

#[test]
fn while_the_budget_lasts_an_absent_key_is_looked_up_as_without_a_summary() {
    let (host, mut w) = worker_with_summary(&budget());
    let t = flood(&host, &mut w, 1_000, 11);
    assert_eq!(
        t,
        Tally {
            refused: 0,
            looked_up: 11,
            throttled: 0,
        }
    );
    w.on_tick(&host);
    assert_eq!(host.gauge_value(Gauge::SummaryGateEngaged), Some(0));
}

#[test]
fn during_the_flood_a_key_the_summary_may_have_still_gets_a_lookup() {
    let (host, mut w) = worker_with_summary(&budget());
    flood(&host, &mut w, 1_000, 50);
    assert_eq!(w.check(&host, 1, key(3)), Decision::Wait);
    w.on_wake(&host);
    let calls = lookups(&host, &mut w);
    assert_eq!(calls.len(), 1);
    let r = respond(&host, &mut w, calls[0].0, 200, IDENTITY);
    assert!(is_allow(&r[0].outcome));
}

#[test]
fn without_a_summary_the_flood_spends_the_budget_as_before() {
    let (host, mut w) = synced_worker(&budget());
    let t = flood(&host, &mut w, 1_000, 30);
    assert_eq!(
        t,
        Tally {
            refused: 0,
            looked_up: 20,
            throttled: 10,
        },
        "the whole burst, then the budget's refusal"
    );
    assert_eq!(host.metric(Metric::SummaryRefusals), 0);
}

/// Absent keys take no tokens, so the bucket refills during the flood: the gate stays engaged
/// on the refusals' rate, not on the bucket.
#[test]
fn a_sustained_flood_stays_refused_although_the_bucket_refills() {
    let (host, mut w) = worker_with_summary(&budget());
    flood(&host, &mut w, 1_000, 20);
    for second in 0..5 {
        let mut t = Tally::default();
        for step in 0..20 {
            host.advance(50);
            let s = flood(&host, &mut w, 10_000 + second * 100 + step, 1);
            t.refused += s.refused;
            t.looked_up += s.looked_up;
        }
        assert_eq!(t.looked_up, 0, "second {second}");
        assert_eq!(t.refused, 20, "second {second}");
    }
    w.on_tick(&host);
    assert_eq!(host.gauge_value(Gauge::MissBudgetTokens), Some(20));
    assert_eq!(host.gauge_value(Gauge::SummaryGateEngaged), Some(1));
}

#[test]
fn after_the_flood_a_new_key_is_looked_up_again() {
    let (host, mut w) = worker_with_summary(&budget());
    flood(&host, &mut w, 1_000, 100);
    host.advance(2_000); // the flood's window ends, then a quiet one
    w.on_tick(&host);
    lookups(&host, &mut w);
    assert_eq!(host.gauge_value(Gauge::SummaryGateEngaged), Some(0));
    // Created after the summary was fetched, not yet reported by the feed: absent from it.
    let new = key(7_777);
    assert_eq!(w.check(&host, 1, new), Decision::Wait);
    w.on_wake(&host);
    let calls = lookups(&host, &mut w);
    assert_eq!(calls.len(), 1);
    let r = respond(&host, &mut w, calls[0].0, 200, IDENTITY);
    assert!(is_allow(&r[0].outcome));
}

/// Misses queued before the gate engaged meet it when their lookup would start: the budget
/// is not spent on them either.
#[test]
fn queued_lookups_of_absent_keys_are_refused_once_the_gate_engages() {
    let (host, mut w) = worker_with_summary(&budget());
    for k in 0..30 {
        assert_eq!(w.check(&host, k, key(1_000 + k)), Decision::Wait);
    }
    let r = w.on_wake(&host);
    assert_eq!(lookups(&host, &mut w).len(), 11);
    assert_eq!(r.len(), 19);
    assert!(r
        .iter()
        .all(|r| r.outcome == Outcome::UnknownKeyDuringFlood && r.source == Source::NoVerdict));
    assert_eq!(host.metric(Metric::SummaryRefusals), 19);
}

/// The reserve for keys valid recently is untouched: such a key, even one the summary lacks
/// (created after it was fetched), is revalidated from the reserve while the flood is refused.
#[test]
fn a_key_valid_recently_keeps_the_reserve_while_the_gate_is_engaged() {
    let cfg = config(
        r#","cache":{"ttl_s":1,"stale_if_error_s":300,"shared_slots":256},"miss_budget":{"per_second":10,"burst":20,"reserve_per_second":5},"summary":{"enabled":true}"#,
    );
    let (host, mut w) = worker_with_summary(&cfg);
    let recent = key(5_555); // not in the summary
    cache_allow(&host, &mut w, recent);
    host.advance(1_500); // expired, within its stale window
    let t = flood(&host, &mut w, 1_000, 50);
    assert_eq!((t.looked_up, t.refused), (11, 39));
    assert_eq!(w.check(&host, 1, recent), Decision::Wait);
    w.on_wake(&host);
    let calls = lookups(&host, &mut w);
    assert_eq!(calls.len(), 1);
    let r = respond(&host, &mut w, calls[0].0, 200, IDENTITY);
    assert!(is_allow(&r[0].outcome), "a fresh answer, not a stale one");
    assert_eq!(host.metric(Metric::ReserveLookups), 1);
}

/// Found by the `summary` fuzz target: a refusal decided while the key was unknown to this
/// Envoy and still in the outbox (at most 64 answers go out per callback) when the feed reports
/// the key created is withdrawn (503 `store-unavailable`): the summary never refuses a key
/// after the page that reported it.
#[test]
fn a_refusal_still_in_the_outbox_when_the_feed_reports_the_key_is_withdrawn() {
    let cfg = budget();
    let (host, mut w) = worker_with_summary(&cfg);
    let (h2, mut w2) = sibling_worker(&host, &cfg);
    let new = key(4_242); // created after the summary was fetched
    for ctx in 0..70 {
        assert_eq!(
            w.check(&host, ctx, new),
            Decision::Wait,
            "the bucket is full"
        );
    }
    // Meanwhile another worker of this Envoy takes the budget below half.
    assert_eq!(flood(&h2, &mut w2, 1_000, 11).looked_up, 11);
    let first = w.on_wake(&host);
    assert_eq!(first.len(), MAX_ANSWERS_PER_CALLBACK);
    assert!(first
        .iter()
        .all(|r| r.outcome == Outcome::UnknownKeyDuringFlood));
    host.advance(1_000);
    w2.on_tick(&h2);
    let calls = h2.take_calls();
    let poll = calls
        .iter()
        .find(|(_, c)| c.path.starts_with("/v1/changes"))
        .expect("a poll");
    feed_reports(&h2, &mut w2, poll.0, 2, &[new]);
    let rest = w.on_wake(&host);
    assert_eq!(rest.len(), 70 - MAX_ANSWERS_PER_CALLBACK);
    assert!(
        rest.iter().all(|r| r.outcome == Outcome::Unavailable),
        "{rest:?}"
    );
}

/// With `summary.enabled` off there is no gate: misses cost what they did before it (no read
/// of its record) and it never reports engaged.
#[test]
fn with_the_summary_off_the_gate_never_engages() {
    let cfg = config(r#","miss_budget":{"per_second":10,"burst":20},"summary":{"enabled":false}"#);
    let (host, mut w) = synced_worker(&cfg);
    let t = flood(&host, &mut w, 1_000, 30);
    assert_eq!((t.looked_up, t.throttled, t.refused), (20, 10, 0));
    w.on_tick(&host);
    assert_eq!(host.gauge_value(Gauge::SummaryGateEngaged), Some(0));
    let gate =
        crate::shared::read::<FakeHost, crate::worker::budget::gate::Gate>(&host, &w.names().gate);
    assert_eq!(gate.0, Some(Default::default()), "never written");
}
