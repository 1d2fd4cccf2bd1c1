//! Usage reports: one per Envoy per interval, back-off for a store without the endpoint, and off.

use super::{cache_allow, config, key, respond, sibling_worker, synced_worker, IDENTITY};
use crate::fake_host::FakeHost;
use crate::host::{Method, Metric};
use crate::test_support::test;
use crate::verdict::{Decision, Source};
use crate::worker::Worker;

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
