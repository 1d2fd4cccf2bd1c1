//! The worker against the fake host, one module per topic: [`single_flight`] (within and
//! across workers, leases, wake-ups, deadlines), [`expiry`] (TTLs, stale-if-error, a key's own
//! expiry), [`budget`] (the miss budget), [`feed`] (the changes feed), [`coherence`] (no answer
//! outlives a change of its key; local admin writes), [`usage`] (usage reports), [`summary`] (the
//! key summary's life). The helpers
//! more than one topic uses are here; a topic's own helpers open its module.

use std::rc::Rc;

use keygate_protocol::KeyId;

use crate::config::Config;
use crate::fake_host::FakeHost;
use crate::host::{CallResponse, Method};
use crate::verdict::{Decision, Identity, Outcome, Resolution};
use crate::worker::Worker;

mod budget;
mod coherence;
mod expiry;
mod feed;
mod gate;
mod single_flight;
mod summary;
mod usage;

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
    // So is the key summary (a fetch at start).
    let summary = if extra.contains(r#""summary""#) {
        ""
    } else {
        r#","summary":{"enabled":false}"#
    };
    let json = format!(
        r#"{{"store":{{"cluster":"keystore","timeout_ms":1000}}{cache}{usage}{summary}{extra}}}"#
    );
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
/// usage reports "recorded", key summary fetches 404).
fn lookups(host: &FakeHost, w: &mut Worker) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for (token, call) in host.take_calls() {
        if call.method == Method::Post {
            respond(host, w, token, 200, r#"{"recorded":1}"#);
        } else if call.path.starts_with("/v1/changes") {
            let since: u64 = call.path.rsplit('=').next().unwrap().parse().unwrap();
            let body = format!(r#"{{"revision":{},"changed":[]}}"#, since.max(1));
            respond(host, w, token, 200, &body);
        } else if call.path == "/v1/summary" {
            respond(host, w, token, 404, "");
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
