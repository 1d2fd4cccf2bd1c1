//! How long a verdict lives: TTLs, negative TTLs, stale-if-error, a key's own expiry, and
//! verdicts fetched before the first poll of the feed.

use std::rc::Rc;

use super::{
    ann, cache_allow, config, is_allow, key, lookups, respond, sibling_worker, synced_worker,
    IDENTITY,
};
use crate::fake_host::FakeHost;
use crate::host::{CallResponse, Host, Metric};
use crate::test_support::test;
use crate::verdict::{Decision, Outcome, Source};
use crate::worker::{Worker, MAX_ANSWERS_PER_CALLBACK};

/// An answer for `ann` with `"expires_at": expires_s` (unix seconds).
fn expiring_identity(expires_s: u64) -> String {
    format!(r#"{{"account_id":"acme","user_id":"ann","role":"admin","expires_at":{expires_s}}}"#)
}

/// Moves the clock to `to_ms` a poll interval at a time, the feed answering "no changes".
fn pass_time(host: &FakeHost, w: &mut Worker, to_ms: u64) {
    while host.now_ms() < to_ms {
        host.set_now((host.now_ms() + 1000).min(to_ms));
        w.on_tick(host);
        assert!(lookups(host, w).is_empty());
    }
}

#[test]
fn an_unknown_key_is_denied_and_negatively_cached_for_negative_ttl() {
    let cfg = config(r#","cache":{"negative_ttl_s":5,"shared_slots":256}"#);
    let (host, mut w) = synced_worker(&cfg);
    let k = key(2);
    w.check(&host, 1, k);
    w.on_tick(&host);
    let calls = lookups(&host, &mut w);
    let r = respond(&host, &mut w, calls[0].0, 404, r#"{"error":"not found"}"#);
    assert_eq!(r[0].outcome, Outcome::Deny);
    assert_eq!(
        w.check(&host, 2, k),
        Decision::Answer(Outcome::Deny, Source::L1)
    );
    host.advance(5_000);
    assert_eq!(
        w.check(&host, 3, k),
        Decision::Wait,
        "negative TTL over: ask again"
    );
    w.on_tick(&host);
    let calls = lookups(&host, &mut w);
    assert_eq!(calls.len(), 1);
    let r = respond(&host, &mut w, calls[0].0, 200, IDENTITY);
    assert!(
        is_allow(&r[0].outcome),
        "a key created after it was negatively cached"
    );
}

#[test]
fn a_store_error_is_a_503_and_is_never_cached_as_a_deny() {
    let cfg = config("");
    let (host, mut w) = synced_worker(&cfg);
    let k = key(3);
    for (status, body) in [
        (500, "{}"),
        (200, "not json"),
        (200, r#"{"account_id":"a"}"#),
        (403, ""),
    ] {
        assert_eq!(w.check(&host, 1, k), Decision::Wait, "{status} {body}");
        w.on_tick(&host);
        let calls = lookups(&host, &mut w);
        assert_eq!(calls.len(), 1);
        let r = respond(&host, &mut w, calls[0].0, status, body);
        assert_eq!(r[0].outcome, Outcome::Unavailable);
        host.advance(1); // a later wave of requests
    }
    let r = w.on_call_response(
        &host,
        999,
        &CallResponse {
            status: None,
            body: None,
        },
    );
    assert!(r.is_empty(), "an unknown token is ignored");
    assert_eq!(host.metric(Metric::LookupErrors), 4);
}

#[test]
fn known_keys_are_served_stale_while_the_store_fails() {
    let cfg = config(r#","cache":{"ttl_s":30,"stale_if_error_s":300,"shared_slots":256}"#);
    let (host, mut w) = synced_worker(&cfg);
    let k = key(4);
    cache_allow(&host, &mut w, k);
    host.advance(31_000);
    assert_eq!(w.check(&host, 1, k), Decision::Wait, "expired: revalidate");
    w.on_tick(&host);
    let calls = lookups(&host, &mut w);
    let r = w.on_call_response(
        &host,
        calls[0].0,
        &CallResponse {
            status: None,
            body: None,
        },
    );
    assert_eq!(
        r[0].outcome,
        Outcome::Allow {
            identity: Rc::new(ann()),
            stale: true
        }
    );
    assert_eq!(
        host.metric(Metric::StaleServed),
        0,
        "the glue counts answers; the worker marks them stale"
    );
    // Past the stale window: 503.
    host.advance(300_000);
    w.check(&host, 2, k);
    w.on_tick(&host);
    let calls = lookups(&host, &mut w);
    let r = respond(&host, &mut w, calls[0].0, 502, "");
    assert_eq!(r[0].outcome, Outcome::Unavailable);
}

#[test]
fn before_the_first_sync_positive_verdicts_live_no_longer_than_a_poll() {
    let cfg = config(r#","cache":{"ttl_s":300,"shared_slots":256},"sync":{"interval_ms":1000}"#);
    let host = FakeHost::new();
    let mut w = Worker::new(&host, Rc::clone(&cfg)).unwrap();
    let k = key(15);
    w.check(&host, 1, k);
    w.on_tick(&host);
    for (token, call) in host.take_calls() {
        if call.path.starts_with("/v1/keys/") {
            respond(&host, &mut w, token, 200, IDENTITY);
        } // the poll never answers
    }
    host.advance(1_001);
    assert_eq!(w.check(&host, 2, k), Decision::Wait);
}

#[test]
fn before_the_first_sync_negative_verdicts_live_no_longer_than_a_poll() {
    // The key may be created before the first poll, which (from `since=0`) would not report it.
    let cfg =
        config(r#","cache":{"negative_ttl_s":300,"shared_slots":256},"sync":{"interval_ms":1000}"#);
    let host = FakeHost::new();
    let mut w = Worker::new(&host, Rc::clone(&cfg)).unwrap();
    let k = key(16);
    w.check(&host, 1, k);
    w.on_wake(&host);
    for (token, call) in host.take_calls() {
        if call.path.starts_with("/v1/keys/") {
            let r = respond(&host, &mut w, token, 404, "");
            assert_eq!(r[0].outcome, Outcome::Deny);
        }
    }
    assert!(matches!(
        w.check(&host, 2, k),
        Decision::Answer(Outcome::Deny, _)
    ));
    host.advance(1_001);
    assert_eq!(w.check(&host, 3, k), Decision::Wait, "looked up again");
}

#[test]
fn a_key_expiring_while_cached_is_refused_on_every_worker_and_never_served_stale() {
    let cfg = config(r#","cache":{"ttl_s":300,"stale_if_error_s":300,"shared_slots":256}"#);
    let (a, mut wa) = synced_worker(&cfg);
    let (b, mut wb) = sibling_worker(&a, &cfg);
    pass_time(&a, &mut wa, 1_000_000);
    let k = key(40);
    assert_eq!(wa.check(&a, 1, k), Decision::Wait);
    wa.on_tick(&a);
    let calls = lookups(&a, &mut wa);
    let r = respond(&a, &mut wa, calls[0].0, 200, &expiring_identity(1_010));
    assert!(is_allow(&r[0].outcome));
    // B takes the verdict from the shared table: it carries the expiry.
    assert!(matches!(wb.check(&b, 2, k), Decision::Answer(ref o, Source::Shared) if is_allow(o)));
    pass_time(&a, &mut wa, 1_009_999);
    assert!(matches!(wa.check(&a, 3, k), Decision::Answer(ref o, Source::L1) if is_allow(o)));
    assert!(matches!(wb.check(&b, 4, k), Decision::Answer(ref o, Source::L1) if is_allow(o)));
    pass_time(&a, &mut wa, 1_010_000);
    assert_eq!(
        wa.check(&a, 5, k),
        Decision::Wait,
        "expired: not from A's L1"
    );
    assert_eq!(
        wb.check(&b, 6, k),
        Decision::Wait,
        "expired: not from B's L1"
    );
    wa.on_tick(&a);
    wb.on_tick(&b);
    let calls = lookups(&a, &mut wa);
    assert_eq!(calls.len(), 1);
    // The store fails: an expired key is not served stale, on either worker.
    let r = respond(&a, &mut wa, calls[0].0, 503, "");
    assert_eq!(r[0].outcome, Outcome::Unavailable);
    let rb = wb.on_tick(&b);
    assert_eq!(rb[0].outcome, Outcome::Unavailable);
}

#[test]
fn an_answer_already_expired_by_our_clock_is_a_deny() {
    let cfg = config("");
    let (host, mut w) = synced_worker(&cfg);
    pass_time(&host, &mut w, 2_000_000);
    let k = key(41);
    w.check(&host, 1, k);
    w.on_tick(&host);
    let calls = lookups(&host, &mut w);
    let r = respond(&host, &mut w, calls[0].0, 200, &expiring_identity(2_000));
    assert_eq!(r[0].outcome, Outcome::Deny);
}

#[test]
fn an_allow_still_in_the_outbox_at_the_keys_expiry_is_not_given() {
    let cfg = config("");
    let (host, mut w) = synced_worker(&cfg);
    pass_time(&host, &mut w, 1_999_000);
    let k = key(42);
    let n = MAX_ANSWERS_PER_CALLBACK as u32 + 6;
    for ctx in 0..n {
        assert_eq!(w.check(&host, ctx, k), Decision::Wait);
    }
    w.on_tick(&host);
    let calls = lookups(&host, &mut w);
    let first = respond(&host, &mut w, calls[0].0, 200, &expiring_identity(2_000));
    assert!(first.iter().all(|r| is_allow(&r.outcome)));
    assert_eq!(first.len(), MAX_ANSWERS_PER_CALLBACK);
    host.set_now(2_000_000);
    let rest = w.on_tick(&host);
    assert_eq!(rest.len(), 6);
    assert!(rest.iter().all(|r| r.outcome == Outcome::Deny), "{rest:?}");
}
