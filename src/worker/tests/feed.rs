//! The changes feed: what a page drops, who polls, malformed entries and resets, and the
//! "feed down" re-checks.

use std::rc::Rc;

use super::{
    ann, cache_allow, config, feed_reports, key, lookups, next_poll, respond, sibling_worker,
    synced_worker,
};
use crate::fake_host::FakeHost;
use crate::host::{Gauge, Metric};
use crate::test_support::test;
use crate::verdict::{Decision, Outcome};
use crate::worker::{Worker, WriteDone};

#[test]
fn a_wake_up_reports_the_sync_lag_before_the_lookup_it_starts() {
    let cfg = config("");
    let (host, mut w) = synced_worker(&cfg);
    host.advance(2_500);
    assert_eq!(w.check(&host, 1, key(9)), Decision::Wait);
    w.on_wake(&host);
    assert_eq!(lookups(&host, &mut w).len(), 1);
    assert_eq!(host.gauge_value(Gauge::SyncLagMs), Some(2_500));
}

#[test]
fn the_changes_feed_drops_reported_keys_everywhere_and_they_are_never_served_stale() {
    let cfg = config(r#","sync":{"interval_ms":1000}"#);
    let (a, mut wa) = synced_worker(&cfg);
    let (b, mut wb) = sibling_worker(&a, &cfg);
    let k = key(10);
    cache_allow(&a, &mut wa, k);
    assert!(matches!(wb.check(&b, 1, k), Decision::Answer(..)));
    // The next poll reports k.
    a.advance(1_000);
    wa.on_tick(&a);
    let polls = a.take_calls();
    assert_eq!(polls.len(), 1);
    assert_eq!(polls[0].1.path, "/v1/changes?since=1");
    respond(
        &a,
        &mut wa,
        polls[0].0,
        200,
        &format!(r#"{{"revision":2,"changed":["{}"]}}"#, k.hex()),
    );
    assert_eq!(a.metric(Metric::SyncPolls), 2);
    // Both workers ask the store again; the store is down: 503, not a stale allow.
    for (h, w, ctx) in [(&a, &mut wa, 2), (&b, &mut wb, 3)] {
        assert_eq!(w.check(h, ctx, k), Decision::Wait);
        w.on_tick(h);
        let calls = lookups(h, w);
        for (token, _) in calls {
            let r = respond(h, w, token, 503, "");
            assert_eq!(r[0].outcome, Outcome::Unavailable);
        }
    }
    assert_eq!(b.metric(Metric::KeysInvalidated), 1);
}

#[test]
fn only_one_worker_polls_the_feed_per_interval() {
    let cfg = config(r#","sync":{"interval_ms":1000}"#);
    let a = FakeHost::new();
    let workers: Vec<(FakeHost, Worker)> = (0..3)
        .map(|_| {
            let h = a.sibling();
            let w = Worker::new(&h, Rc::clone(&cfg)).unwrap();
            (h, w)
        })
        .collect();
    let mut polls = 0;
    let mut workers = workers;
    for _ in 0..40 {
        a.advance(250);
        for (h, w) in workers.iter_mut() {
            w.on_tick(h);
            polls += lookups(h, w).len();
        }
    }
    let total: u64 = workers
        .iter()
        .map(|(h, _)| h.metric(Metric::SyncPolls))
        .sum();
    assert_eq!(polls, 0, "ticks alone make no lookups");
    assert!(
        (9..=11).contains(&total),
        "10 s at one poll per second: {total} polls"
    );
}

#[test]
fn stale_is_served_after_an_unrelated_key_was_reported_by_the_feed() {
    let cfg = config(
        r#","cache":{"ttl_s":1,"negative_ttl_s":1,"stale_if_error_s":300,"shared_slots":256},"sync":{"interval_ms":500}"#,
    );
    let (host, mut w) = synced_worker(&cfg);
    let good = key(20);
    cache_allow(&host, &mut w, good);
    host.advance(500);
    w.on_tick(&host);
    let poll = host.take_calls().remove(0);
    respond(
        &host,
        &mut w,
        poll.0,
        200,
        &format!(r#"{{"revision":9,"changed":["{}"]}}"#, key(21).hex()),
    );
    host.advance(1_500);
    assert_eq!(w.check(&host, 5, good), Decision::Wait);
    w.on_tick(&host);
    let calls = lookups(&host, &mut w);
    let r = respond(&host, &mut w, calls.last().unwrap().0, 503, "");
    assert_eq!(
        r[0].outcome,
        Outcome::Allow {
            identity: Rc::new(ann()),
            stale: true
        }
    );
}

#[test]
fn a_creation_reported_by_the_feed_drops_a_negative_verdict_but_keeps_a_known_identity() {
    let cfg = config(
        r#","cache":{"ttl_s":1,"negative_ttl_s":300,"stale_if_error_s":300,"shared_slots":256},"sync":{"interval_ms":500}"#,
    );
    let (host, mut w) = synced_worker(&cfg);
    let known = key(30);
    let unknown = key(31);
    cache_allow(&host, &mut w, known);
    w.check(&host, 1, unknown);
    w.on_tick(&host);
    let calls = lookups(&host, &mut w);
    assert_eq!(
        respond(&host, &mut w, calls[0].0, 404, "")[0].outcome,
        Outcome::Deny
    );
    host.advance(500);
    w.on_tick(&host);
    let poll = host.take_calls().remove(0);
    let body = format!(
        r#"{{"revision":9,"changed":["{k}","{u}"],"created":["{k}","{u}"]}}"#,
        k = known.hex(),
        u = unknown.hex()
    );
    respond(&host, &mut w, poll.0, 200, &body);
    assert_eq!(
        w.check(&host, 2, unknown),
        Decision::Wait,
        "the unknown verdict was dropped"
    );
    assert!(
        matches!(
            w.check(&host, 3, known),
            Decision::Answer(Outcome::Allow { .. }, _)
        ),
        "the identity was kept"
    );
    // And it can still be served stale when the store fails after its TTL.
    host.advance(1_000);
    w.on_tick(&host);
    let _ = lookups(&host, &mut w);
    assert_eq!(w.check(&host, 4, known), Decision::Wait);
    w.on_tick(&host);
    let calls = lookups(&host, &mut w);
    let r = respond(&host, &mut w, calls.last().unwrap().0, 503, "");
    assert!(
        r.iter().any(|r| r.context_id == 4
            && r.outcome
                == Outcome::Allow {
                    identity: Rc::new(ann()),
                    stale: true
                }),
        "{r:?}"
    );
}

/// Finding 4a: one malformed key id in a page does not block the feed: it is skipped and
/// counted, the rest applies and the next poll starts after the page.
#[test]
fn a_page_with_a_malformed_entry_is_applied_without_it() {
    let cfg = config(r#","sync":{"interval_ms":1000}"#);
    let (host, mut w) = synced_worker(&cfg);
    let k = key(81);
    cache_allow(&host, &mut w, k);
    let poll = next_poll(&host, &mut w);
    let body = format!(
        r#"{{"revision":7,"changed":["not-a-key-id","{}"]}}"#,
        k.hex()
    );
    respond(&host, &mut w, poll, 200, &body);
    assert_eq!(host.metric(Metric::SyncSkippedEntries), 1);
    assert_eq!(
        w.check(&host, 1, k),
        Decision::Wait,
        "the valid entry applied"
    );
    w.forget(&host, 1);
    host.advance(1_000);
    w.on_tick(&host);
    let calls = host.take_calls();
    assert!(
        calls.iter().any(|(_, c)| c.path == "/v1/changes?since=7"),
        "the feed moved on: {calls:?}"
    );
}

/// Finding 4b: with the feed failing for longer than 3 intervals while lookups work, a cached
/// allow is re-checked by lookup at least every interval (a silent revocation is refused within
/// about 3 intervals + 1), and the lag is exported.
#[test]
fn while_the_feed_fails_cached_allows_are_rechecked_every_interval() {
    let cfg = config(r#","cache":{"ttl_s":300,"shared_slots":256},"sync":{"interval_ms":1000}"#);
    let (host, mut w) = synced_worker(&cfg);
    let k = key(82);
    cache_allow(&host, &mut w, k);
    let mut answered_from_cache = 0;
    for _ in 0..4 {
        let poll = next_poll(&host, &mut w); // +1 s
        respond(&host, &mut w, poll, 503, "");
        if matches!(w.check(&host, 5, k), Decision::Answer(..)) {
            answered_from_cache += 1;
        } else {
            break;
        }
    }
    assert_eq!(
        answered_from_cache, 3,
        "cached for 3 intervals of failed polls, then re-checked"
    );
    assert_eq!(host.gauge_value(Gauge::SyncLagMs), Some(4_000));
    w.on_tick(&host);
    let calls = lookups(&host, &mut w);
    assert_eq!(calls.len(), 1);
    let r = respond(&host, &mut w, calls[0].0, 404, ""); // revoked silently
    assert_eq!(r[0].outcome, Outcome::Deny);
    assert_eq!(host.metric(Metric::FeedDownRechecks), 1);
    // A key re-checked less than an interval ago is answered from the cache.
    let k2 = key(83);
    cache_allow(&host, &mut w, k2);
    host.advance(500);
    assert!(matches!(w.check(&host, 6, k2), Decision::Answer(..)));
    host.advance(600);
    assert_eq!(w.check(&host, 7, k2), Decision::Wait);
}

/// A store that has never changed is at revision 0, and its feed answers every poll from
/// `since=0` with revision 0: that is "synced, nothing changed", not "never synced". A local
/// write there polls from 0 and drops nothing when the store is still at 0 (the write changed
/// nothing the feed reports); verdicts keep their TTL. Once the store moves past 0, a page from
/// `since=0` cannot say what changed: it is a reset.
#[test]
fn a_store_still_at_revision_0_is_synced_and_a_page_from_0_past_it_is_a_reset() {
    let cfg = config(r#","cache":{"ttl_s":300},"sync":{"interval_ms":1000}"#);
    let host = FakeHost::new();
    let mut w = Worker::new(&host, Rc::clone(&cfg)).unwrap();
    let (b, mut wb) = sibling_worker(&host, &cfg);
    w.on_tick(&host);
    let first = host.take_calls();
    assert_eq!(first[0].1.path, "/v1/changes?since=0");
    feed_reports(&host, &mut w, first[0].0, 0, &[]);
    let (changed, other) = (key(88), key(89));
    cache_allow(&b, &mut wb, changed);
    cache_allow(&b, &mut wb, other);
    // Past one interval: the verdicts are not capped to it.
    host.advance(5_000);
    // Each write's poll (from 0) answered at `revision`; the writer released a ms later.
    let write = |w: &mut Worker, ctx: u32, revision: u64| {
        assert_eq!(w.admin_write_done(&host, ctx), WriteDone::Hold);
        w.on_tick(&host);
        let polls = host.take_calls();
        assert!(!polls.is_empty(), "the writer's poll, at once");
        for (token, call) in polls {
            assert_eq!(call.path, "/v1/changes?since=0");
            feed_reports(&host, w, token, revision, &[]);
        }
        host.advance(1);
        w.take_released_writers(&host)
    };
    for ctx in [60, 61] {
        assert_eq!(write(&mut w, ctx, 0), vec![ctx], "released");
    }
    for k in [changed, other] {
        assert!(matches!(wb.check(&b, 9, k), Decision::Answer(..)), "kept");
    }
    assert_eq!(host.metric(Metric::LocalDropsEverything), 0);
    // The store moves to revision 3 (a change of `changed` its feed cannot list from 0).
    assert_eq!(write(&mut w, 70, 3), vec![70], "released");
    assert_eq!(
        wb.check(&b, 10, changed),
        Decision::Wait,
        "everything dropped"
    );
    assert_eq!(host.metric(Metric::LocalDropsEverything), 0);
}
