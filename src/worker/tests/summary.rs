//! The key summary's life: the fetch at start, keys added from the feed, a reset, refetch on
//! drift, the size bound, refused bodies, the install race, one fetch per Envoy, and the old
//! slot emptied after a swap.

use std::rc::Rc;

use keygate_protocol::summary::{blocks_for, hashes_for, Summary, HEADER_BYTES};
use keygate_protocol::KeyId;

use super::{config, key, respond, sibling_worker, synced_worker};
use crate::config::Config;
use crate::fake_host::FakeHost;
use crate::host::{CallResponse, Gauge, Host, Metric};
use crate::shared;
use crate::store::MAX_CALLOUT_BODY;
use crate::summary::install::{self, Install, Staging};
use crate::summary::Membership;
use crate::test_support::test;
use crate::worker::Worker;

fn on(extra: &str) -> Rc<Config> {
    config(&format!(r#","summary":{{"enabled":true{extra}}}"#))
}

/// A summary as the store serves it: `keys` at `revision`, sized for 10,000 keys (4 chunks).
fn store_summary(revision: u64, keys: &[KeyId]) -> Vec<u8> {
    let mut s = Summary::new(revision, blocks_for(10_000, 10), hashes_for(10));
    keys.iter().for_each(|k| {
        s.insert(k);
    });
    s.encode()
}

fn answer(host: &FakeHost, w: &mut Worker, token: u32, status: u16, body: Option<Vec<u8>>) {
    let r = w.on_call_response(
        host,
        token,
        &CallResponse {
            status: Some(status),
            body,
        },
    );
    assert!(r.is_empty());
}

/// Ticks `w` after `ms`: the summary fetches it sent (feed polls answered "no change";
/// `changed` reported by the first one).
fn tick(host: &FakeHost, w: &mut Worker, ms: u64, changed: &[KeyId]) -> Vec<u32> {
    host.advance(ms);
    w.on_tick(host);
    let mut fetches = Vec::new();
    for (token, call) in host.take_calls() {
        if call.path == "/v1/summary" {
            fetches.push(token);
        } else {
            let since: u64 = call.path.rsplit('=').next().unwrap().parse().unwrap();
            let ids: Vec<String> = changed.iter().map(|k| format!("\"{}\"", k.hex())).collect();
            let body = format!(
                r#"{{"revision":{},"changed":[{}]}}"#,
                since.max(1),
                ids.join(",")
            );
            respond(host, w, token, 200, &body);
        }
    }
    fetches
}

/// A worker whose Envoy installed the summary `body`.
fn installed(cfg: &Rc<Config>, body: Vec<u8>) -> (FakeHost, Worker) {
    let (host, mut w) = synced_worker(cfg);
    let fetches = tick(&host, &mut w, 250, &[]);
    assert_eq!(fetches.len(), 1);
    answer(&host, &mut w, fetches[0], 200, Some(body));
    (host, w)
}

/// Installs a summary of `keys` in `w`'s Envoy through the install protocol, as a fetch
/// answered with it would (for the gate's tests).
pub(super) fn install_summary(host: &FakeHost, w: &Worker, keys: &[KeyId]) {
    let mut s = Summary::new(1, blocks_for(10_000, 10), hashes_for(10));
    keys.iter().for_each(|k| {
        s.insert(k);
    });
    let ticket = install::try_start(host, &w.names, host.now_ms(), 1000).unwrap();
    install::install(host, &w.names, ticket, &s.header, s.blocks(), 1000).unwrap();
}

/// The summary's chunk records (slot, index) holding anything.
fn chunks(host: &FakeHost, w: &Worker) -> Vec<(u8, u32)> {
    let mut out = Vec::new();
    for slot in 0..2u8 {
        for index in 0..64u32 {
            let (v, _) = host.get_shared(&w.names.summary_chunk(slot, index));
            if v.is_some_and(|v| !v.is_empty()) {
                out.push((slot, index));
            }
        }
    }
    out
}

#[test]
fn a_fetch_at_start_installs_the_summary_and_membership_answers() {
    let cfg = on("");
    let (host, mut w) = synced_worker(&cfg);
    assert_eq!(w.membership(&host, &key(1)), Membership::NoSummary);
    let fetches = tick(&host, &mut w, 250, &[]);
    assert_eq!(fetches.len(), 1, "fetched once the feed has synced");
    assert_eq!(w.body_limit(fetches[0]), 16 * 1024 * 1024 + HEADER_BYTES);
    answer(
        &host,
        &mut w,
        fetches[0],
        200,
        Some(store_summary(1, &[key(1), key(2)])),
    );
    assert_eq!(w.membership(&host, &key(1)), Membership::MayExist);
    assert_eq!(w.membership(&host, &key(2)), Membership::MayExist);
    assert_eq!(w.membership(&host, &key(3)), Membership::Absent);
    assert_eq!(
        w.body_limit(fetches[0]),
        MAX_CALLOUT_BODY,
        "answered: no longer a fetch"
    );
    assert_eq!(host.metric(Metric::SummaryFetches), 1);
    assert_eq!(host.gauge_value(Gauge::SummaryKeys), Some(2));
    assert_eq!(host.gauge_value(Gauge::SummaryBytes), Some(196 * 64));
    assert!(
        tick(&host, &mut w, 60_000, &[]).is_empty(),
        "no refetch without drift"
    );
    assert_eq!(host.gauge_value(Gauge::SummaryAgeMs), Some(60_000));
}

#[test]
fn no_fetch_starts_before_the_feed_has_synced() {
    let cfg = on("");
    let host = FakeHost::new();
    let mut w = Worker::new(&host, Rc::clone(&cfg)).unwrap();
    host.fail_dispatch(true);
    for _ in 0..8 {
        host.advance(250);
        w.on_tick(&host);
    }
    assert_eq!(host.metric(Metric::SummaryFetches), 0);
}

#[test]
fn keys_from_feed_pages_become_may_exist() {
    let (host, mut w) = installed(&on(""), store_summary(1, &[key(1)]));
    assert_eq!(w.membership(&host, &key(5)), Membership::Absent);
    assert!(tick(&host, &mut w, 1000, &[key(5), key(6)]).is_empty());
    assert_eq!(w.membership(&host, &key(5)), Membership::MayExist);
    assert_eq!(w.membership(&host, &key(6)), Membership::MayExist);
    w.next_summary_check_ms = 0;
    tick(&host, &mut w, 0, &[]);
    assert_eq!(host.gauge_value(Gauge::SummaryKeys), Some(3));
}

#[test]
fn a_reset_makes_no_summary_at_once_and_fetches_it_again() {
    let (host, mut w) = installed(&on(""), store_summary(1, &[key(1)]));
    host.advance(1000);
    w.on_tick(&host);
    let poll = host.take_calls().remove(0);
    answer(
        &host,
        &mut w,
        poll.0,
        200,
        Some(br#"{"revision":9,"reset":true}"#.to_vec()),
    );
    assert_eq!(w.membership(&host, &key(1)), Membership::NoSummary);
    assert_eq!(w.membership(&host, &key(3)), Membership::NoSummary);
    assert_eq!(host.gauge_value(Gauge::SummaryBytes), Some(0));
    let fetches = tick(&host, &mut w, 1, &[]);
    assert_eq!(fetches.len(), 1, "fetched again at once");
    answer(
        &host,
        &mut w,
        fetches[0],
        200,
        Some(store_summary(9, &[key(3)])),
    );
    assert_eq!(w.membership(&host, &key(3)), Membership::MayExist);
    assert_eq!(w.membership(&host, &key(1)), Membership::Absent);
}

/// A summary of one block: a hundred keys from the feed fill it past any sane rate.
fn one_block() -> Vec<u8> {
    Summary::new(1, 1, 7).encode()
}

#[test]
fn drift_past_the_false_positive_limit_refetches_at_most_once_per_min_interval() {
    let cfg = on(r#","max_false_positive_rate":0.01,"refetch_min_interval_ms":5000"#);
    let (host, mut w) = installed(&cfg, one_block());
    let many: Vec<KeyId> = (100..200).map(key).collect();
    assert!(tick(&host, &mut w, 1000, &many).is_empty());
    assert!(
        tick(&host, &mut w, 3749, &[]).is_empty(),
        "4999 ms after the fetch"
    );
    assert!(
        host.gauge_value(Gauge::SummaryFalsePositiveRatePpm)
            .unwrap()
            > 10_000
    );
    let fetches = tick(&host, &mut w, 251, &[]);
    assert_eq!(fetches.len(), 1, "5 s after the fetch");
    // The store's summary is as full: the next refetch waits another interval.
    let full = {
        let mut s = Summary::new(2, 1, 7);
        many.iter().for_each(|k| {
            s.insert(k);
        });
        s.encode()
    };
    answer(&host, &mut w, fetches[0], 200, Some(full));
    assert!(tick(&host, &mut w, 4999, &[]).is_empty());
    assert_eq!(tick(&host, &mut w, 250, &[]).len(), 1);
    assert_eq!(host.metric(Metric::SummaryFetches), 3);
}

#[test]
fn a_body_over_max_bytes_is_refused_and_leaves_no_summary() {
    let cfg = on(r#","max_bytes":1024"#);
    let (host, mut w) = synced_worker(&cfg);
    let fetches = tick(&host, &mut w, 250, &[]);
    assert_eq!(w.body_limit(fetches[0]), 1024 + HEADER_BYTES);
    answer(
        &host,
        &mut w,
        fetches[0],
        200,
        Some(store_summary(1, &[key(1)])),
    );
    assert_eq!(w.membership(&host, &key(1)), Membership::NoSummary);
    assert_eq!(w.membership(&host, &key(2)), Membership::NoSummary);
    assert!(chunks(&host, &w).is_empty(), "nothing of it in shared data");
    // Over the glue's limit: no body at all.
    let fetches = tick(&host, &mut w, 1000, &[]);
    answer(&host, &mut w, fetches[0], 200, None);
    assert_eq!(w.membership(&host, &key(2)), Membership::NoSummary);
    assert_eq!(host.metric(Metric::SummaryFetchErrors), 2);
    let fetches = tick(&host, &mut w, 2000, &[]);
    answer(
        &host,
        &mut w,
        fetches[0],
        200,
        Some(Summary::new(1, 16, 7).encode()),
    );
    assert_eq!(
        w.membership(&host, &key(2)),
        Membership::Absent,
        "16 blocks fit"
    );
}

#[test]
fn a_malformed_body_is_refused() {
    let (host, mut w) = synced_worker(&on(""));
    let fetches = tick(&host, &mut w, 250, &[]);
    answer(
        &host,
        &mut w,
        fetches[0],
        200,
        Some(b"{\"not\":\"a summary\"}".to_vec()),
    );
    assert_eq!(w.membership(&host, &key(1)), Membership::NoSummary);
    let mut short = store_summary(1, &[]);
    short.pop();
    let fetches = tick(&host, &mut w, 1000, &[]);
    answer(&host, &mut w, fetches[0], 200, Some(short));
    assert_eq!(w.membership(&host, &key(1)), Membership::NoSummary);
    assert_eq!(host.metric(Metric::SummaryFetchErrors), 2);
    assert!(chunks(&host, &w).is_empty());
}

#[test]
fn a_404_means_no_summary_and_a_retry_later_with_a_backoff() {
    let (host, mut w) = synced_worker(&on(""));
    let fetches = tick(&host, &mut w, 250, &[]);
    answer(&host, &mut w, fetches[0], 404, Some(b"{}".to_vec()));
    assert_eq!(w.membership(&host, &key(1)), Membership::NoSummary);
    assert!(tick(&host, &mut w, 750, &[]).is_empty());
    let fetches = tick(&host, &mut w, 250, &[]);
    assert_eq!(fetches.len(), 1, "1 s after the first failure");
    answer(&host, &mut w, fetches[0], 404, None);
    assert!(tick(&host, &mut w, 1750, &[]).is_empty());
    assert_eq!(
        tick(&host, &mut w, 250, &[]).len(),
        1,
        "2 s after the second"
    );
}

#[test]
fn a_page_published_while_the_fetch_is_in_flight_is_not_absent() {
    let (host, mut w) = synced_worker(&on(""));
    let fetches = tick(&host, &mut w, 250, &[]);
    // The store answered the fetch at revision 1; key 7 was created after it.
    assert!(tick(&host, &mut w, 1000, &[key(7)]).is_empty());
    answer(
        &host,
        &mut w,
        fetches[0],
        200,
        Some(store_summary(1, &[key(1)])),
    );
    assert_eq!(w.membership(&host, &key(7)), Membership::MayExist);
    assert_eq!(w.membership(&host, &key(1)), Membership::MayExist);
}

#[test]
fn pages_published_between_the_answer_and_the_swap_are_not_absent() {
    let (host, mut w) = synced_worker(&on(""));
    let fetches = tick(&host, &mut w, 250, &[]);
    let names = Rc::clone(&w.names);
    let other = host.sibling();
    // Another worker publishes key 8 just before the install takes the pending key ids...
    let (h, n) = (other.sibling(), Rc::clone(&names));
    let staging = names.summary_staging.clone();
    host.before_next_set(&staging, move || {
        install::add(&h, &n, &[key(8)]);
        // ...and key 9 just before the install makes the summary active.
        let (h2, n2) = (h.sibling(), Rc::clone(&n));
        h.before_next_set(&n.summary, move || install::add(&h2, &n2, &[key(9)]));
    });
    answer(
        &host,
        &mut w,
        fetches[0],
        200,
        Some(store_summary(1, &[key(1)])),
    );
    assert_eq!(w.membership(&host, &key(8)), Membership::MayExist);
    assert_eq!(w.membership(&host, &key(9)), Membership::MayExist);
    assert_eq!(w.membership(&host, &key(1)), Membership::MayExist);
    assert_eq!(w.membership(&host, &key(3)), Membership::Absent);
}

#[test]
fn one_worker_per_envoy_fetches_and_the_others_read_its_summary() {
    let cfg = on("");
    let (a, mut wa) = synced_worker(&cfg);
    let (b, mut wb) = sibling_worker(&a, &cfg);
    let mut fetches = Vec::new();
    for _ in 0..4 {
        fetches.extend(tick(&a, &mut wa, 125, &[]).into_iter().map(|t| (true, t)));
        fetches.extend(tick(&b, &mut wb, 125, &[]).into_iter().map(|t| (false, t)));
    }
    assert_eq!(fetches.len(), 1, "{fetches:?}");
    let (on_a, token) = fetches[0];
    let (h, w) = if on_a { (&a, &mut wa) } else { (&b, &mut wb) };
    answer(h, w, token, 200, Some(store_summary(1, &[key(1)])));
    assert_eq!(wa.membership(&a, &key(1)), Membership::MayExist);
    assert_eq!(wb.membership(&b, &key(1)), Membership::MayExist);
    assert_eq!(wb.membership(&b, &key(2)), Membership::Absent);
}

#[test]
fn the_old_slots_chunks_are_emptied_after_a_swap() {
    let (host, mut w) = installed(&on(""), store_summary(1, &[key(1)]));
    let first = chunks(&host, &w);
    assert_eq!(first.len(), 4);
    let old_slot = first[0].0;
    for round in 0..3u64 {
        host.advance(1000);
        w.on_tick(&host);
        let poll = host.take_calls().remove(0);
        let reset = format!(r#"{{"revision":{},"reset":true}}"#, 10 + round);
        answer(&host, &mut w, poll.0, 200, Some(reset.into_bytes()));
        let fetches = tick(&host, &mut w, 1, &[]);
        answer(
            &host,
            &mut w,
            fetches[0],
            200,
            Some(store_summary(10, &[key(2)])),
        );
        let now = chunks(&host, &w);
        assert_eq!(now.len(), 4, "one slot's chunks only: {now:?}");
        let slot = now[0].0;
        assert!(now.iter().all(|(s, _)| *s == slot));
        assert_eq!(slot, old_slot ^ u8::from(round % 2 == 0));
        assert_eq!(w.membership(&host, &key(2)), Membership::MayExist);
    }
    let names: Vec<String> = (0..2u8)
        .flat_map(|s| (0..64u32).map(move |i| (s, i)))
        .map(|(s, i)| w.names.summary_chunk(s, i))
        .filter(|n| host.get_shared(n).0.is_some())
        .collect();
    assert_eq!(names.len(), 8, "two slots' chunk names, reused");
}

#[test]
fn more_pending_key_ids_than_the_bound_abandon_the_fetch_and_it_is_retried() {
    let (host, mut w) = synced_worker(&on(""));
    let fetches = tick(&host, &mut w, 250, &[]);
    let many: Vec<KeyId> = (0..=install::MAX_PENDING as u32).map(key).collect();
    assert!(tick(&host, &mut w, 1000, &many).is_empty());
    let (staging, _) = shared::read::<FakeHost, Staging>(&host, &w.names.summary_staging);
    let staging = staging.expect("a staging record");
    assert_eq!((staging.install, staging.failures), (Install::Idle, 1));
    answer(&host, &mut w, fetches[0], 200, Some(store_summary(1, &[])));
    assert_eq!(w.membership(&host, &key(1)), Membership::NoSummary);
    let fetches = tick(&host, &mut w, 1000, &[]);
    assert_eq!(fetches.len(), 1, "retried after the backoff");
    answer(
        &host,
        &mut w,
        fetches[0],
        200,
        Some(store_summary(2, &many)),
    );
    assert_eq!(w.membership(&host, &key(1)), Membership::MayExist);
}

#[test]
fn a_worker_with_the_summary_off_still_adds_pages_to_the_envoys_summary() {
    let (host, mut on_worker) = installed(&on(""), store_summary(1, &[key(1)]));
    let off = config(r#","summary":{"enabled":false}"#);
    let (h, mut w) = sibling_worker(&host, &off);
    assert_eq!(
        w.membership(&h, &key(1)),
        Membership::NoSummary,
        "off: not read"
    );
    // The worker with the summary off holds the poll lease and publishes key 5.
    host.advance(1000);
    w.on_tick(&h);
    let poll = h.take_calls().remove(0);
    let body = format!(r#"{{"revision":2,"changed":["{}"]}}"#, key(5).hex());
    respond(&h, &mut w, poll.0, 200, &body);
    assert_eq!(on_worker.membership(&host, &key(5)), Membership::MayExist);
    assert!(tick(&host, &mut on_worker, 1, &[]).is_empty());
}
