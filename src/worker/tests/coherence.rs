//! Coherence: no answer outlives a change of its key (answers from before a change are given to
//! nobody, the slot write racing a feed page), and local admin writes held until their
//! change is published everywhere (or everything was dropped).

use std::rc::Rc;

use super::{
    cache_allow, config, feed_reports, is_allow, key, lookups, next_poll, respond, sibling_worker,
    synced_worker, IDENTITY,
};
use keygate_protocol::KeyId;

use crate::fake_host::FakeHost;
use crate::host::Metric;
use crate::test_support::test;
use crate::verdict::{Decision, Outcome, Resolution, Source};
use crate::worker::{Worker, WriteDone, FAST_TICK_MS, MAX_ANSWERS_PER_CALLBACK};

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
