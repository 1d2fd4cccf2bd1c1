//! The worker against the fake host: single-flight within and across workers, leases, TTLs,
//! stale-if-error, the miss budget, invalidation and the changes feed.

use std::rc::Rc;

use crate::config::Config;
use crate::fake_host::FakeHost;
use crate::host::{CallResponse, Gauge, Host, Method, Metric};
use crate::request::key::KeyId;
use crate::test_support::test;
use crate::verdict::{Decision, Identity, Outcome, Resolution, Source};
use crate::worker::{Worker, WriteDone, FAST_TICK_MS, MAX_ANSWERS_PER_CALLBACK};

const IDENTITY: &str = r#"{"account_id":"acme","user_id":"ann","role":"admin"}"#;

fn config(extra: &str) -> Rc<Config> {
    let cache = if extra.contains(r#""cache""#) {
        ""
    } else {
        r#","cache":{"shared_slots":256}"#
    };
    // Usage reports are off unless a test is about them (they add a callout to the ticks).
    let usage = if extra.contains(r#""usage""#) {
        ""
    } else {
        r#","usage":{"enabled":false}"#
    };
    let json =
        format!(r#"{{"store":{{"cluster":"keystore","timeout_ms":1000}}{cache}{usage}{extra}}}"#);
    Rc::new(Config::from_json(json.as_bytes()).unwrap())
}

fn key(n: u32) -> KeyId {
    KeyId::of(format!("key-{n}").as_bytes())
}

fn ann() -> Identity {
    Identity {
        account_id: "acme".into(),
        user_id: "ann".into(),
        role: "admin".into(),
        ..Identity::default()
    }
}

fn is_allow(o: &Outcome) -> bool {
    matches!(o, Outcome::Allow { stale: false, .. })
}

fn respond(
    host: &FakeHost,
    w: &mut Worker,
    token: u32,
    status: u16,
    body: &str,
) -> Vec<Resolution> {
    w.on_call_response(
        host,
        token,
        &CallResponse {
            status: Some(status),
            body: Some(body.as_bytes().to_vec()),
        },
    )
}

/// Takes the lookups dispatched since the last call (sync polls are answered "no changes",
/// usage reports "recorded").
fn lookups(host: &FakeHost, w: &mut Worker) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for (token, call) in host.take_calls() {
        if call.method == Method::Post {
            respond(host, w, token, 200, r#"{"recorded":1}"#);
        } else if call.path.starts_with("/v1/changes") {
            let since: u64 = call.path.rsplit('=').next().unwrap().parse().unwrap();
            let body = format!(r#"{{"revision":{},"changed":[]}}"#, since.max(1));
            respond(host, w, token, 200, &body);
        } else {
            out.push((token, call.path));
        }
    }
    out
}

/// A worker that has synced once with the feed (revision 1), on a fresh fake Envoy.
fn synced_worker(cfg: &Rc<Config>) -> (FakeHost, Worker) {
    let host = FakeHost::new();
    let mut w = Worker::new(&host, Rc::clone(cfg)).unwrap();
    w.on_tick(&host);
    assert!(lookups(&host, &mut w).is_empty());
    (host, w)
}

/// Another worker of the same Envoy as `host`.
fn sibling_worker(host: &FakeHost, cfg: &Rc<Config>) -> (FakeHost, Worker) {
    let h = host.sibling();
    let w = Worker::new(&h, Rc::clone(cfg)).unwrap();
    (h, w)
}

/// A cached allow for `k` on `w`.
fn cache_allow(host: &FakeHost, w: &mut Worker, k: KeyId) {
    assert_eq!(w.check(host, 900, k), Decision::Wait);
    w.on_tick(host);
    let calls = lookups(host, w);
    assert_eq!(calls.len(), 1);
    let r = respond(host, w, calls[0].0, 200, IDENTITY);
    assert!(is_allow(&r[0].outcome));
}

#[test]
fn a_miss_asks_the_store_once_then_answers_from_l1() {
    let cfg = config("");
    let (host, mut w) = synced_worker(&cfg);
    let k = key(1);
    assert_eq!(w.check(&host, 1, k), Decision::Wait);
    assert!(lookups(&host, &mut w).is_empty(), "check never dispatches");
    assert_eq!(
        host.tick_ms(),
        FAST_TICK_MS,
        "waiting requests make the root tick fast"
    );
    w.on_tick(&host);
    let calls = lookups(&host, &mut w);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].1, format!("/v1/keys/{}", k.hex()));
    let r = respond(&host, &mut w, calls[0].0, 200, IDENTITY);
    assert_eq!(
        r,
        vec![Resolution {
            context_id: 1,
            outcome: Outcome::Allow {
                identity: Rc::new(ann()),
                stale: false
            },
            source: Source::Lookup,
        }]
    );
    assert!(host.tick_ms() > FAST_TICK_MS, "idle again");
    assert_eq!(
        w.check(&host, 2, k),
        Decision::Answer(
            Outcome::Allow {
                identity: Rc::new(ann()),
                stale: false
            },
            Source::L1
        )
    );
    assert_eq!(host.metric(Metric::L1Hits), 1);
    assert_eq!(host.metric(Metric::LookupsStarted), 1);
    assert_eq!(w.waiters(), 0);
}

#[test]
fn concurrent_misses_on_one_worker_share_one_lookup() {
    let cfg = config("");
    let (host, mut w) = synced_worker(&cfg);
    let k = key(1);
    for ctx in 1..=200 {
        assert_eq!(w.check(&host, ctx, k), Decision::Wait);
    }
    w.on_tick(&host);
    w.on_tick(&host);
    let calls = lookups(&host, &mut w);
    assert_eq!(calls.len(), 1);
    // Answered in batches (see MAX_ANSWERS_PER_CALLBACK), the rest on the next ticks.
    let mut answered = respond(&host, &mut w, calls[0].0, 200, IDENTITY);
    assert_eq!(answered.len(), MAX_ANSWERS_PER_CALLBACK);
    assert_eq!(
        host.tick_ms(),
        FAST_TICK_MS,
        "more to answer: the tick stays fast"
    );
    while w.waiters() > 0 {
        let batch = w.on_tick(&host);
        assert!(!batch.is_empty() && batch.len() <= MAX_ANSWERS_PER_CALLBACK);
        answered.extend(batch);
    }
    assert_eq!(answered.len(), 200);
    let mut contexts: Vec<u32> = answered.iter().map(|r| r.context_id).collect();
    contexts.sort_unstable();
    contexts.dedup();
    assert_eq!(contexts.len(), 200, "each request answered once");
    assert!(answered.iter().all(|r| is_allow(&r.outcome)));
    assert_eq!(host.metric(Metric::LookupsCoalesced), 199);
    assert!(lookups(&host, &mut w).is_empty());
}

#[test]
fn a_new_flight_asks_for_a_wake_up_that_starts_its_lookup_without_a_tick() {
    let cfg = config("");
    let (host, mut w) = synced_worker(&cfg);
    host.take_wakes();
    assert_eq!(w.check(&host, 1, key(1)), Decision::Wait);
    assert_eq!(
        w.check(&host, 2, key(1)),
        Decision::Wait,
        "joins the flight"
    );
    assert_eq!(w.check(&host, 3, key(2)), Decision::Wait);
    assert_eq!(host.take_wakes(), 1, "one wake-up pending at a time");
    assert!(lookups(&host, &mut w).is_empty(), "check never dispatches");
    assert!(w.on_wake(&host).is_empty());
    assert_eq!(
        lookups(&host, &mut w).len(),
        2,
        "both lookups start in the wake-up"
    );
    assert_eq!(
        host.take_wakes(),
        0,
        "nothing left to hand out: no further wake-up"
    );
    assert_eq!(w.check(&host, 4, key(3)), Decision::Wait);
    assert_eq!(host.take_wakes(), 1, "the next flight asks again");
}

#[test]
fn answers_beyond_a_batch_go_out_in_wake_ups_and_the_last_batch_asks_for_none() {
    let cfg = config("");
    let (host, mut w) = synced_worker(&cfg);
    let n = 2 * MAX_ANSWERS_PER_CALLBACK + 10;
    for ctx in 1..=n {
        assert_eq!(w.check(&host, ctx as u32, key(1)), Decision::Wait);
    }
    w.on_wake(&host);
    let calls = lookups(&host, &mut w);
    assert_eq!(calls.len(), 1);
    host.take_wakes();
    let mut answered = respond(&host, &mut w, calls[0].0, 200, IDENTITY);
    assert_eq!(answered.len(), MAX_ANSWERS_PER_CALLBACK);
    assert_eq!(host.take_wakes(), 1, "more remain: wake me");
    answered.extend(w.on_wake(&host));
    assert_eq!(answered.len(), 2 * MAX_ANSWERS_PER_CALLBACK);
    assert_eq!(host.take_wakes(), 1, "more remain: wake me again");
    answered.extend(w.on_wake(&host));
    assert_eq!(answered.len(), n);
    assert_eq!(host.take_wakes(), 0, "the outbox is empty");
    assert_eq!(w.waiters(), 0);
    let mut contexts: Vec<u32> = answered.iter().map(|r| r.context_id).collect();
    contexts.sort_unstable();
    contexts.dedup();
    assert_eq!(contexts.len(), n, "each request answered once");
    assert!(answered.iter().all(|r| is_allow(&r.outcome)));
}

#[test]
fn without_wake_ups_the_tick_starts_lookups_and_hands_out_the_rest() {
    let cfg = config("");
    let (host, mut w) = synced_worker(&cfg);
    host.fail_wake(true);
    let n = MAX_ANSWERS_PER_CALLBACK + 5;
    for ctx in 1..=n {
        assert_eq!(w.check(&host, ctx as u32, key(1)), Decision::Wait);
    }
    assert_eq!(host.tick_ms(), FAST_TICK_MS);
    w.on_tick(&host);
    let calls = lookups(&host, &mut w);
    assert_eq!(calls.len(), 1);
    let mut answered = respond(&host, &mut w, calls[0].0, 200, IDENTITY);
    assert_eq!(answered.len(), MAX_ANSWERS_PER_CALLBACK);
    assert_eq!(host.tick_ms(), FAST_TICK_MS, "the tick is the fallback");
    // A wake-up that failed is asked for again once the queue works.
    host.fail_wake(false);
    answered.extend(w.on_tick(&host));
    assert_eq!(answered.len(), n);
    assert_eq!(host.take_wakes(), 0);
    assert_eq!(w.check(&host, 999, key(2)), Decision::Wait);
    assert_eq!(host.take_wakes(), 1);
}

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
fn a_client_gone_while_its_answer_waits_in_the_outbox_is_not_answered() {
    let cfg = config("");
    let (host, mut w) = synced_worker(&cfg);
    let k = key(52);
    for ctx in 1..=100 {
        w.check(&host, ctx, k);
    }
    w.on_tick(&host);
    let calls = lookups(&host, &mut w);
    let first = respond(&host, &mut w, calls[0].0, 200, IDENTITY);
    let waiting: u32 = (1..=100)
        .find(|c| !first.iter().any(|r| r.context_id == *c))
        .unwrap();
    w.forget(&host, waiting);
    let rest = w.on_tick(&host);
    assert_eq!(first.len() + rest.len(), 99);
    assert!(rest.iter().all(|r| r.context_id != waiting));
    assert_eq!(w.waiters(), 0);
}

#[test]
fn workers_of_one_envoy_share_one_lookup_through_the_lease() {
    let cfg = config("");
    let (a, mut wa) = synced_worker(&cfg);
    let (b, mut wb) = sibling_worker(&a, &cfg);
    let k = key(7);
    assert_eq!(wa.check(&a, 1, k), Decision::Wait);
    assert_eq!(wb.check(&b, 2, k), Decision::Wait);
    wa.on_tick(&a);
    wb.on_tick(&b);
    let calls_a = lookups(&a, &mut wa);
    assert_eq!(calls_a.len(), 1, "A took the lease");
    assert!(lookups(&b, &mut wb).is_empty(), "B follows A's lease");
    assert_eq!(b.metric(Metric::LookupsWaitedOnOtherWorker), 1);
    assert!(wb.on_tick(&b).is_empty(), "still waiting");
    let ra = respond(&a, &mut wa, calls_a[0].0, 200, IDENTITY);
    assert_eq!(ra.len(), 1);
    let rb = wb.on_tick(&b);
    assert_eq!(rb.len(), 1);
    assert!(is_allow(&rb[0].outcome));
    // A new request on B is answered at once from its L1 now; one on a third worker, from the
    // shared table.
    assert!(matches!(
        wb.check(&b, 3, k),
        Decision::Answer(Outcome::Allow { .. }, _)
    ));
    let c = a.sibling();
    let mut wc = Worker::new(&c, Rc::clone(&cfg)).unwrap();
    assert!(matches!(
        wc.check(&c, 4, k),
        Decision::Answer(Outcome::Allow { .. }, _)
    ));
    assert_eq!(c.metric(Metric::SharedHits), 1);
    assert!(lookups(&b, &mut wb).is_empty() && lookups(&c, &mut wc).is_empty());
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
fn waiters_on_another_worker_learn_of_the_failure_and_get_stale_from_the_shared_table() {
    let cfg = config("");
    let (a, mut wa) = synced_worker(&cfg);
    let (b, mut wb) = sibling_worker(&a, &cfg);
    let k = key(5);
    cache_allow(&a, &mut wa, k); // B never saw it: only the shared table has it
    a.advance(31_000);
    wa.check(&a, 1, k);
    wb.check(&b, 2, k);
    wa.on_tick(&a);
    wb.on_tick(&b);
    let calls = lookups(&a, &mut wa);
    assert_eq!(calls.len(), 1);
    respond(&a, &mut wa, calls[0].0, 500, "");
    let rb = wb.on_tick(&b);
    assert_eq!(
        rb[0].outcome,
        Outcome::Allow {
            identity: Rc::new(ann()),
            stale: true
        }
    );
    assert!(
        lookups(&b, &mut wb).is_empty(),
        "B did not ask the failing store again"
    );
}

#[test]
fn a_finished_lookup_wakes_the_other_workers_which_answer_without_a_tick() {
    let cfg = config("");
    let (a, mut wa) = synced_worker(&cfg);
    let (b, mut wb) = sibling_worker(&a, &cfg);
    let k = key(7);
    wa.check(&a, 1, k);
    wa.on_wake(&a);
    let calls = lookups(&a, &mut wa);
    assert_eq!(calls.len(), 1);
    wb.check(&b, 2, k);
    assert!(wb.on_wake(&b).is_empty(), "B follows A's lease");
    assert!(lookups(&b, &mut wb).is_empty());
    assert!(a.take_woken().is_empty());
    let ra = respond(&a, &mut wa, calls[0].0, 200, IDENTITY);
    assert!(is_allow(&ra[0].outcome));
    let woken = a.take_woken();
    assert!(woken.contains(&wb.wake_queue()), "B woken: {woken:?}");
    assert!(!woken.contains(&wa.wake_queue()), "A does not wake itself");
    let rb = wb.on_wake(&b);
    assert_eq!(rb.len(), 1);
    assert!(is_allow(&rb[0].outcome));
    assert_eq!(rb[0].source, Source::Shared);
}

#[test]
fn a_failed_lookup_wakes_the_other_workers_too() {
    let cfg = config("");
    let (a, mut wa) = synced_worker(&cfg);
    let (b, mut wb) = sibling_worker(&a, &cfg);
    let k = key(8);
    wa.check(&a, 1, k);
    wa.on_wake(&a);
    let calls = lookups(&a, &mut wa);
    wb.check(&b, 2, k);
    wb.on_wake(&b);
    respond(&a, &mut wa, calls[0].0, 500, "");
    assert!(a.take_woken().contains(&wb.wake_queue()));
    let rb = wb.on_wake(&b);
    assert_eq!(rb[0].outcome, Outcome::Unavailable);
}

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
fn a_dead_lease_holder_is_taken_over_and_nobody_waits_forever() {
    let cfg = config("");
    let (a, mut wa) = synced_worker(&cfg);
    let (b, mut wb) = sibling_worker(&a, &cfg);
    let k = key(6);
    wa.check(&a, 1, k);
    wa.on_tick(&a);
    assert_eq!(lookups(&a, &mut wa).len(), 1); // A's lookup will never answer: A "died"
    wb.check(&b, 2, k);
    wb.on_tick(&b);
    assert!(lookups(&b, &mut wb).is_empty());
    b.advance(1_000 + crate::shared::table::LEASE_GRACE_MS);
    wb.on_tick(&b);
    let calls = lookups(&b, &mut wb);
    assert_eq!(calls.len(), 1, "B took the expired lease over");
    assert_eq!(b.metric(Metric::LeaseTakeovers), 1);
    let r = respond(&b, &mut wb, calls[0].0, 200, IDENTITY);
    assert!(is_allow(&r[0].outcome));
}

#[test]
fn a_request_waiting_past_its_deadline_gets_503() {
    let cfg = config("");
    let (host, mut w) = synced_worker(&cfg);
    let k = key(8);
    w.check(&host, 1, k);
    w.on_tick(&host);
    assert_eq!(lookups(&host, &mut w).len(), 1);
    let mut answered = Vec::new();
    let mut waited = 0;
    while answered.is_empty() {
        host.advance(100);
        waited += 100;
        answered = w.on_tick(&host);
        let _ = lookups(&host, &mut w); // the retried lookup never answers either
        assert!(
            waited <= 2 * (1000 + crate::shared::table::LEASE_GRACE_MS) + 100,
            "waited {waited} ms"
        );
    }
    assert_eq!(
        answered,
        vec![Resolution {
            context_id: 1,
            outcome: Outcome::Unavailable,
            source: Source::NoVerdict,
        }]
    );
    assert_eq!(w.waiters(), 0);
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

/// A local admin write through `w` (context `ctx`): its response is held, the root polls the
/// feed at once; the poll answers `changed` (or fails, with `None`). Returns the writers the
/// worker released after the answer.
fn admin_write(host: &FakeHost, w: &mut Worker, ctx: u32, changed: Option<&[KeyId]>) -> Vec<u32> {
    assert_eq!(w.admin_write_done(host, ctx), WriteDone::Hold);
    assert_eq!(
        host.tick_ms(),
        FAST_TICK_MS,
        "a held writer makes the root tick fast"
    );
    assert!(w.take_released_writers(host).is_empty());
    w.on_tick(host);
    let calls = host.take_calls();
    let poll = calls
        .iter()
        .find(|(_, c)| c.path.starts_with("/v1/changes"))
        .expect("a poll at once");
    match changed {
        Some(keys) => feed_reports(host, w, poll.0, 100 + u64::from(ctx), keys),
        None => {
            respond(host, w, poll.0, 503, "");
        }
    }
    w.on_tick(host);
    assert!(
        w.take_released_writers(host).is_empty(),
        "never resumed in the millisecond its change was published"
    );
    host.advance(u64::from(FAST_TICK_MS));
    w.on_tick(host);
    w.take_released_writers(host)
}

/// Finding 2: a member rotating its own key through this Envoy must not empty the cache. The
/// writer's answer is held until the feed's page (polled at once) was published: then every
/// worker drops the changed key, and only it (stale copies of others are kept).
#[test]
fn a_local_admin_write_drops_exactly_what_changed_before_the_writer_sees_its_answer() {
    let cfg = config("");
    let (a, mut wa) = synced_worker(&cfg);
    let (b, mut wb) = sibling_worker(&a, &cfg);
    let (changed, other) = (key(9), key(19));
    cache_allow(&a, &mut wa, changed);
    cache_allow(&a, &mut wa, other);
    assert!(matches!(wb.check(&b, 1, changed), Decision::Answer(..)));
    let lookups_before = a.metric(Metric::LookupsStarted);
    for round in 0..20 {
        let released = admin_write(&b, &mut wb, 50 + round, Some(&[changed]));
        assert_eq!(released, vec![50 + round], "released once published");
        assert_eq!(wa.check(&a, 2, changed), Decision::Wait, "A dropped it");
        assert_eq!(
            wb.check(&b, 3, changed),
            Decision::Wait,
            "B and the table too"
        );
        wa.forget(&a, 2);
        wb.forget(&b, 3);
        for (h, w) in [(&a, &mut wa), (&b, &mut wb)] {
            assert!(
                matches!(
                    w.check(h, 4, other),
                    Decision::Answer(Outcome::Allow { .. }, _)
                ),
                "round {round}: an unrelated key stays cached"
            );
        }
    }
    assert_eq!(a.metric(Metric::LookupsStarted), lookups_before);
    assert_eq!(b.metric(Metric::LocalDropsEverything), 0);
}

/// The shared epoch is read at most once per millisecond per worker (the hit path's costliest
/// host call). A worker that read it in the millisecond a local write's change was published
/// may still answer from that read; the writer is therefore resumed only in a later
/// millisecond, when every worker reads the epoch again.
#[test]
fn a_writer_is_resumed_only_after_the_millisecond_other_workers_may_have_read_in() {
    let cfg = config("");
    let (a, mut wa) = synced_worker(&cfg);
    let (b, mut wb) = sibling_worker(&a, &cfg);
    let changed = key(14);
    cache_allow(&a, &mut wa, changed);
    a.advance(5);
    assert!(matches!(wa.check(&a, 1, changed), Decision::Answer(..)));
    let reads = a.shared_reads();
    assert!(matches!(wa.check(&a, 1, changed), Decision::Answer(..)));
    assert_eq!(
        a.shared_reads(),
        reads,
        "a second hit in the same ms reads nothing shared"
    );
    assert_eq!(wb.admin_write_done(&b, 40), WriteDone::Hold);
    wb.on_tick(&b);
    let poll = b.take_calls().remove(0);
    feed_reports(&b, &mut wb, poll.0, 200, &[changed]);
    wb.on_tick(&b);
    assert!(wb.take_released_writers(&b).is_empty(), "same ms: held");
    assert!(
        matches!(wa.check(&a, 2, changed), Decision::Answer(..)),
        "A still uses its read from this millisecond"
    );
    a.advance(1);
    wb.on_tick(&b);
    assert_eq!(wb.take_released_writers(&b), vec![40]);
    assert_eq!(
        wa.check(&a, 3, changed),
        Decision::Wait,
        "A read the epoch again"
    );
}

/// The counters of every hit may be kept in the worker (two host calls saved per request):
/// the worker flushes them at most once per millisecond from the hit path, and on every tick,
/// so they reach Envoy within the idle tick period once traffic stops.
#[test]
fn kept_counts_are_flushed_once_per_millisecond_and_on_every_tick() {
    let cfg = config("");
    let (host, mut w) = synced_worker(&cfg);
    let k = key(15);
    cache_allow(&host, &mut w, k);
    host.advance(1);
    let before = host.flushes();
    for ctx in 0..10 {
        assert!(matches!(w.check(&host, ctx, k), Decision::Answer(..)));
    }
    assert_eq!(host.flushes(), before + 1, "ten hits in one ms: one flush");
    host.advance(1);
    w.check(&host, 11, k);
    assert_eq!(host.flushes(), before + 2, "a new ms: another");
    w.on_tick(&host);
    assert_eq!(host.flushes(), before + 3, "and every tick");
    assert!(host.tick_ms() <= crate::worker::IDLE_TICK_MS);
}

/// Finding 2, fallback: when the feed fails, a local write drops everything, at most once a
/// second per Envoy (counted); a writer waits for that drop, never for less.
#[test]
fn a_local_write_whose_poll_fails_drops_everything_at_most_once_a_second() {
    let cfg = config("");
    let (a, mut wa) = synced_worker(&cfg);
    let (b, mut wb) = sibling_worker(&a, &cfg);
    let k = key(29);
    cache_allow(&a, &mut wa, k);
    assert_eq!(admin_write(&b, &mut wb, 60, None), vec![60]);
    assert_eq!(b.metric(Metric::LocalDropsEverything), 1);
    assert_eq!(wa.check(&a, 1, k), Decision::Wait, "everything dropped");
    wa.forget(&a, 1);
    cache_allow(&a, &mut wa, k);
    a.advance(10);
    assert!(
        admin_write(&a, &mut wa, 61, None).is_empty(),
        "rate-limited: held"
    );
    assert!(
        matches!(wa.check(&a, 2, k), Decision::Answer(..)),
        "nothing dropped yet"
    );
    a.advance(1_000);
    wa.on_tick(&a);
    a.advance(1);
    assert_eq!(wa.take_released_writers(&a), vec![61]);
    assert_eq!(a.metric(Metric::LocalDropsEverything), 1);
    assert_eq!(
        wa.check(&a, 3, k),
        Decision::Wait,
        "dropped before the writer's answer"
    );
}

/// Writes that complete while a poll is in flight wait for the next poll (the one in flight
/// may predate their change); writes that complete together share one poll.
#[test]
fn writes_during_a_poll_wait_for_the_next_one_and_concurrent_writes_share_it() {
    let cfg = config("");
    let (host, mut w) = synced_worker(&cfg);
    w.admin_write_done(&host, 70);
    w.on_tick(&host);
    let first = host.take_calls().remove(0);
    w.admin_write_done(&host, 71);
    w.admin_write_done(&host, 72);
    w.on_tick(&host);
    assert!(host.take_calls().is_empty(), "one forced poll at a time");
    feed_reports(&host, &mut w, first.0, 2, &[]);
    host.advance(1);
    assert_eq!(w.take_released_writers(&host), vec![70]);
    w.on_tick(&host);
    let second = host.take_calls();
    assert_eq!(second.len(), 1, "one poll for both");
    assert_eq!(second[0].1.path, "/v1/changes?since=2");
    feed_reports(&host, &mut w, second[0].0, 3, &[]);
    host.advance(1);
    assert_eq!(w.take_released_writers(&host), vec![71, 72]);
    assert_eq!(w.writers_held(), 0);
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

/// Answers a pending poll of `w` reporting `changed` (key ids) at `revision`.
fn feed_reports(host: &FakeHost, w: &mut Worker, token: u32, revision: u64, changed: &[KeyId]) {
    let ids: Vec<String> = changed.iter().map(|k| format!("\"{}\"", k.hex())).collect();
    let body = format!(r#"{{"revision":{revision},"changed":[{}]}}"#, ids.join(","));
    respond(host, w, token, 200, &body);
}

/// The next poll of `w` (due after `advance`), dispatched by a tick.
fn next_poll(host: &FakeHost, w: &mut Worker) -> u32 {
    host.advance(1_000);
    w.on_tick(host);
    let calls = host.take_calls();
    let poll = calls
        .iter()
        .find(|(_, c)| c.path.starts_with("/v1/changes"))
        .expect("a poll");
    poll.0
}

/// Finding 1a: a lookup dispatched before the feed reported its key answers afterwards. Its
/// answer may predate the revocation: nobody gets it, neither the request that started it nor
/// one that joined after the report; the key is looked up again and both get the new answer.
#[test]
fn an_answer_from_before_the_feed_reported_the_key_is_given_to_nobody() {
    let cfg = config(r#","sync":{"interval_ms":1000}"#);
    let (host, mut w) = synced_worker(&cfg);
    let k = key(11);
    w.check(&host, 1, k);
    w.on_tick(&host);
    let lookup = lookups(&host, &mut w).remove(0);
    let poll = next_poll(&host, &mut w);
    feed_reports(&host, &mut w, poll, 5, &[k]);
    assert_eq!(
        w.check(&host, 2, k),
        Decision::Wait,
        "arrived after the report"
    );
    let r = respond(&host, &mut w, lookup.0, 200, IDENTITY);
    assert!(r.is_empty(), "the old answer went to nobody: {r:?}");
    w.on_tick(&host);
    let again = lookups(&host, &mut w);
    assert_eq!(again.len(), 1, "looked up again");
    let r = respond(&host, &mut w, again[0].0, 404, "");
    assert_eq!(r.len(), 2);
    assert!(r.iter().all(|r| r.outcome == Outcome::Deny), "{r:?}");
    assert_eq!(
        w.check(&host, 3, k),
        Decision::Answer(Outcome::Deny, Source::L1)
    );
}

/// Finding 1b: worker B publishes a feed page reporting the key between worker A's read of the
/// epoch and its write of the lookup's answer into the slot. The write must not land.
#[test]
fn a_lookup_answer_is_not_written_to_the_slot_after_the_feed_reported_the_key() {
    let cfg = config(r#","sync":{"interval_ms":1000}"#);
    let (a, mut wa) = synced_worker(&cfg);
    let (b, wb) = sibling_worker(&a, &cfg);
    let b = Rc::new(std::cell::RefCell::new((b, wb)));
    let k = key(12);
    let poll = {
        let (bh, bw) = &mut *b.borrow_mut();
        next_poll(bh, bw)
    };
    wa.check(&a, 1, k);
    wa.on_tick(&a);
    let lookup = lookups(&a, &mut wa).remove(0);
    let b2 = Rc::clone(&b);
    a.before_next_set("slot.", move || {
        let (bh, bw) = &mut *b2.borrow_mut();
        feed_reports(bh, bw, poll, 5, &[k]);
    });
    let r = respond(&a, &mut wa, lookup.0, 200, IDENTITY);
    assert!(r.is_empty(), "the answer predates the report: {r:?}");
    let (bh, bw) = &mut *b.borrow_mut();
    assert_eq!(
        bw.check(bh, 2, k),
        Decision::Wait,
        "not in the shared table"
    );
    let (c, mut wc) = sibling_worker(&a, &cfg);
    assert_eq!(
        wc.check(&c, 3, k),
        Decision::Wait,
        "not in the shared table"
    );
}

/// Finding 1c: the slot of a key the feed reported could not be cleared (a host error): the
/// generation is bumped instead, so no worker answers from it.
#[test]
fn a_slot_the_feed_could_not_clear_is_never_answered_from() {
    let cfg = config(r#","sync":{"interval_ms":1000}"#);
    let (a, mut wa) = synced_worker(&cfg);
    let k = key(13);
    cache_allow(&a, &mut wa, k);
    let poll = next_poll(&a, &mut wa);
    a.fail_sets("slot.", 1);
    feed_reports(&a, &mut wa, poll, 5, &[k]);
    let (b, mut wb) = sibling_worker(&a, &cfg);
    assert_eq!(
        wb.check(&b, 1, k),
        Decision::Wait,
        "the slot's verdict is stale"
    );
    assert_eq!(wa.check(&a, 2, k), Decision::Wait);
}

#[test]
fn a_request_whose_client_left_is_forgotten() {
    let cfg = config("");
    let (host, mut w) = synced_worker(&cfg);
    let k = key(12);
    w.check(&host, 1, k);
    w.check(&host, 2, k);
    w.on_tick(&host);
    let calls = lookups(&host, &mut w);
    w.forget(&host, 1);
    let r = respond(&host, &mut w, calls[0].0, 200, IDENTITY);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].context_id, 2);
    // The lookup outlived the request that started it: its verdict is cached.
    w.check(&host, 3, key(13));
    w.forget(&host, 3);
    w.on_tick(&host);
    assert!(
        lookups(&host, &mut w).is_empty(),
        "nobody waits for key 13 any more"
    );
    assert_eq!(w.waiters(), 0);
}

#[test]
fn a_dispatch_failure_is_a_503() {
    let cfg = config("");
    let (host, mut w) = synced_worker(&cfg);
    host.fail_dispatch(true);
    w.check(&host, 1, key(14));
    let r = w.on_tick(&host);
    assert_eq!(
        r,
        vec![Resolution {
            context_id: 1,
            outcome: Outcome::Unavailable,
            source: Source::NoVerdict,
        }]
    );
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
fn shared_data_stays_bounded_whatever_the_number_of_keys() {
    let cfg = config(
        r#","cache":{"max_entries":1000,"shared_slots":256},"miss_budget":{"per_second":1000000,"burst":10000000}"#,
    );
    let (host, mut w) = synced_worker(&cfg);
    let before = host.shared_keys();
    for n in 0..20_000u32 {
        w.check(&host, n, key(n));
        w.on_tick(&host);
        for (token, _) in lookups(&host, &mut w) {
            if n % 2 == 0 {
                respond(&host, &mut w, token, 404, "");
            } else {
                respond(&host, &mut w, token, 200, IDENTITY);
            }
        }
    }
    assert_eq!(
        host.shared_keys(),
        before,
        "no new shared keys: slots are overwritten in place"
    );
    assert!(
        host.shared_bytes() < 256 * 400 + 64 * 1024,
        "{} bytes",
        host.shared_bytes()
    );
    assert!(host.metric(Metric::Evictions) > 0);
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

/// Found by fuzzing (worker_ops): a key revoked through this Envoy must not be served stale
/// when the store fails right after the admin write.
#[test]
fn after_a_local_admin_write_nothing_older_is_served_stale() {
    let cfg = config("");
    let (a, mut wa) = synced_worker(&cfg);
    let (b, mut wb) = sibling_worker(&a, &cfg);
    let k = key(40);
    cache_allow(&a, &mut wa, k); // in A's L1 and in the shared table
    assert_eq!(
        admin_write(&a, &mut wa, 99, None),
        vec![99],
        "the feed fails: drop all"
    );
    // A asks the store, which fails: not served stale from A's L1.
    assert_eq!(wa.check(&a, 1, k), Decision::Wait);
    wa.on_tick(&a);
    let calls = lookups(&a, &mut wa);
    assert_eq!(calls.len(), 1);
    let r = respond(&a, &mut wa, calls[0].0, 503, "");
    assert_eq!(
        r,
        vec![Resolution {
            context_id: 1,
            outcome: Outcome::Unavailable,
            source: Source::NoVerdict,
        }]
    );
    // B, later, with the store still failing: not served stale from the shared table either.
    a.advance(1);
    assert_eq!(wb.check(&b, 2, k), Decision::Wait);
    wb.on_tick(&b);
    let calls = lookups(&b, &mut wb);
    assert_eq!(
        calls.len(),
        1,
        "B asks the store itself (A's failure predates its request)"
    );
    let r = respond(&b, &mut wb, calls[0].0, 503, "");
    assert_eq!(
        r,
        vec![Resolution {
            context_id: 2,
            outcome: Outcome::Unavailable,
            source: Source::NoVerdict,
        }]
    );
}

/// Found by fuzzing (worker_ops): answers waiting in the outbox were handed out after the feed
/// reported their key. They become 503s instead.
#[test]
fn answers_still_in_the_outbox_are_withdrawn_when_the_feed_reports_their_key() {
    let cfg = config(r#","sync":{"interval_ms":1000}"#);
    let (host, mut w) = synced_worker(&cfg);
    let k = key(60);
    // A feed poll in flight...
    host.advance(1_000);
    w.on_tick(&host);
    let poll = host.take_calls().remove(0);
    assert!(poll.1.path.starts_with("/v1/changes"));
    // ...while a crowd waits on one lookup, answered 64 at a time.
    for ctx in 1..=100 {
        w.check(&host, ctx, k);
    }
    w.on_tick(&host);
    let calls = lookups(&host, &mut w);
    let first = respond(&host, &mut w, calls[0].0, 200, IDENTITY);
    assert_eq!(first.len(), MAX_ANSWERS_PER_CALLBACK);
    assert!(first.iter().all(|r| is_allow(&r.outcome)));
    // The feed reports k before the other 36 are handed out: they become 503s.
    let body = format!(r#"{{"revision":2,"changed":["{}"]}}"#, k.hex());
    let mut rest = respond(&host, &mut w, poll.0, 200, &body);
    while w.waiters() > 0 {
        rest.extend(w.on_tick(&host));
    }
    assert_eq!(rest.len(), 100 - MAX_ANSWERS_PER_CALLBACK);
    assert!(
        rest.iter().all(|r| r.outcome == Outcome::Unavailable),
        "{rest:?}"
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

/// Finding 1, for a new generation: a lookup sent before everything was dropped (a local
/// write whose poll failed) answers afterwards: nobody gets it, the key is looked up again.
#[test]
fn an_answer_from_before_everything_was_dropped_is_given_to_nobody() {
    let cfg = config("");
    let (host, mut w) = synced_worker(&cfg);
    let k = key(84);
    w.check(&host, 1, k);
    w.on_tick(&host);
    let lookup = lookups(&host, &mut w).remove(0);
    assert_eq!(admin_write(&host, &mut w, 90, None), vec![90]);
    let r = respond(&host, &mut w, lookup.0, 200, IDENTITY);
    assert!(r.is_empty(), "{r:?}");
    w.on_tick(&host);
    let again = lookups(&host, &mut w);
    assert_eq!(again.len(), 1, "looked up again");
    let r = respond(&host, &mut w, again[0].0, 200, IDENTITY);
    assert_eq!(r.len(), 1);
    assert!(is_allow(&r[0].outcome));
}

/// Before this Envoy ever synced, a poll from `since=0` would only tell the current revision:
/// a local write then drops everything rather than trust it.
#[test]
fn a_local_write_before_the_first_sync_drops_everything() {
    let cfg = config("");
    let host = FakeHost::new();
    let mut w = Worker::new(&host, Rc::clone(&cfg)).unwrap();
    assert_eq!(w.admin_write_done(&host, 5), WriteDone::Hold);
    w.on_tick(&host);
    assert!(w.take_released_writers(&host).is_empty());
    host.advance(1);
    assert_eq!(w.take_released_writers(&host), vec![5]);
    assert_eq!(host.metric(Metric::LocalDropsEverything), 1);
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

/// A creation reported during a lookup only outdates a "not found": an allow fetched meanwhile
/// is answered (a key used right after its creation costs one lookup, not two).
#[test]
fn a_creation_reported_during_a_lookup_does_not_outdate_its_allow() {
    let cfg = config(r#","sync":{"interval_ms":1000}"#);
    let (host, mut w) = synced_worker(&cfg);
    let k = key(85);
    w.check(&host, 1, k);
    w.on_tick(&host);
    let lookup = lookups(&host, &mut w).remove(0);
    let poll = next_poll(&host, &mut w);
    let body = format!(
        r#"{{"revision":5,"changed":["{k}"],"created":["{k}"]}}"#,
        k = k.hex()
    );
    respond(&host, &mut w, poll, 200, &body);
    let r = respond(&host, &mut w, lookup.0, 200, IDENTITY);
    assert_eq!(r.len(), 1);
    assert!(is_allow(&r[0].outcome));
    assert_eq!(host.metric(Metric::LookupsOutdated), 0);
}

/// A worker replaced by a reconfiguration releases its held writers after dropping everything
/// (their polls' answers would reach a worker that knows nothing of them).
#[test]
fn a_replaced_worker_drops_everything_and_releases_its_writers() {
    let cfg = config("");
    let (host, mut w) = synced_worker(&cfg);
    let k = key(86);
    cache_allow(&host, &mut w, k);
    w.admin_write_done(&host, 7);
    w.on_tick(&host); // its poll is in flight
    w.abandon_writers(&host);
    assert_eq!(w.take_released_writers(&host), vec![7]);
    let (b, mut wb) = sibling_worker(&host, &cfg);
    assert_eq!(
        wb.check(&b, 1, k),
        Decision::Wait,
        "everything dropped first"
    );
}

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

/// The usage reports `w` dispatched since the last call: (token, key ids, sorted). Polls are
/// answered "no changes"; a lookup fails the test.
fn reports(host: &FakeHost, w: &mut Worker) -> Vec<(u32, Vec<String>)> {
    let mut out = Vec::new();
    for (token, call) in host.take_calls() {
        if call.path.starts_with("/v1/changes") {
            respond(host, w, token, 200, r#"{"revision":1,"changed":[]}"#);
            continue;
        }
        assert_eq!(call.method, Method::Post, "only reports expected: {call:?}");
        assert_eq!(call.path, "/v1/usage");
        let v: serde_json::Value = serde_json::from_slice(&call.body.unwrap()).unwrap();
        let ids = v["key_ids"].as_array().unwrap().iter();
        let mut ids: Vec<String> = ids.map(|i| i.as_str().unwrap().to_string()).collect();
        ids.sort();
        out.push((token, ids));
    }
    out
}

/// Ticks both workers `ms` later; returns the reports they sent.
fn tick_both(
    (a, wa): (&FakeHost, &mut Worker),
    (b, wb): (&FakeHost, &mut Worker),
    ms: u64,
) -> Vec<(u32, Vec<String>)> {
    a.advance(ms);
    wa.on_tick(a);
    wb.on_tick(b);
    let mut sent = reports(a, wa);
    sent.extend(reports(b, wb));
    sent
}

#[test]
fn one_worker_per_envoy_reports_the_keys_admitted_at_most_once_per_interval() {
    let cfg = config(r#","usage":{"interval_s":10}"#);
    let (a, mut wa) = synced_worker(&cfg);
    let (b, mut wb) = sibling_worker(&a, &cfg);
    let (k1, k2) = (key(50), key(51));
    cache_allow(&a, &mut wa, k1);
    cache_allow(&b, &mut wb, k2);
    // The first report goes at once (nothing was sent yet) with what was merged by then.
    let first = tick_both((&a, &mut wa), (&b, &mut wb), 1_000);
    assert_eq!(first.len(), 1);
    for n in 0..100 {
        assert!(matches!(
            wa.check(&a, 10 + n, k1),
            Decision::Answer(_, Source::L1)
        ));
        assert!(matches!(
            wb.check(&b, 10 + n, k2),
            Decision::Answer(_, Source::L1)
        ));
    }
    // Within the interval: merged, not sent.
    for _ in 0..9 {
        assert!(tick_both((&a, &mut wa), (&b, &mut wb), 1_000).is_empty());
    }
    let sent = tick_both((&a, &mut wa), (&b, &mut wb), 1_000);
    assert_eq!(sent.len(), 1, "one report for the Envoy");
    let mut want = vec![k1.hex(), k2.hex()];
    want.sort();
    assert_eq!(sent[0].1, want, "each key once, from both workers");
}

#[test]
fn a_store_without_the_endpoint_is_left_alone_and_failures_retry_next_interval() {
    let cfg = config(r#","usage":{"interval_s":10}"#);
    let (host, mut w) = synced_worker(&cfg);
    let k = key(52);
    cache_allow(&host, &mut w, k);
    host.advance(1_000);
    w.on_tick(&host);
    let sent = reports(&host, &mut w);
    assert_eq!(sent.len(), 1);
    respond(&host, &mut w, sent[0].0, 503, "");
    host.advance(10_000);
    w.on_tick(&host);
    let sent = reports(&host, &mut w);
    assert_eq!(
        sent,
        vec![(sent[0].0, vec![k.hex()])],
        "put back after a 503"
    );
    respond(&host, &mut w, sent[0].0, 404, "");
    assert_eq!(host.metric(Metric::UsageErrors), 2);
    for n in 0..60 {
        host.advance(59_000);
        assert!(matches!(
            w.check(&host, 100 + n, key(60 + n)),
            Decision::Wait
        ));
        w.on_tick(&host);
        for (token, c) in host.take_calls() {
            assert_ne!(c.method, Method::Post, "no report within the hour");
            let body = if c.path.starts_with("/v1/changes") {
                r#"{"revision":1,"changed":[]}"#
            } else {
                IDENTITY
            };
            respond(&host, &mut w, token, 200, body);
        }
    }
    host.advance(60_000);
    w.on_tick(&host);
    assert_eq!(
        reports(&host, &mut w).len(),
        1,
        "reports resume after the back-off"
    );
}
#[test]
fn usage_reports_can_be_turned_off() {
    let cfg = config(r#","usage":{"enabled":false,"interval_s":1}"#);
    let (host, mut w) = synced_worker(&cfg);
    cache_allow(&host, &mut w, key(53));
    host.advance(5_000);
    w.on_tick(&host);
    assert!(host
        .take_calls()
        .iter()
        .all(|(_, c)| c.method == Method::Get));
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
