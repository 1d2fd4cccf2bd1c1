//! Single flight: one lookup per key within a worker (waiters, wake-ups, the outbox) and across
//! the workers of one Envoy (the slot's lease, takeovers, deadlines).

use std::rc::Rc;

use super::{
    ann, cache_allow, config, is_allow, key, lookups, respond, sibling_worker, synced_worker,
    IDENTITY,
};
use crate::host::Metric;
use crate::test_support::test;
use crate::verdict::{Decision, Outcome, Resolution, Source};
use crate::worker::{Worker, FAST_TICK_MS, MAX_ANSWERS_PER_CALLBACK};

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
