//! The key summary's life end to end on one Envoy: a model key store (keys created and
//! revoked, its change log and revision), two `Worker`s over `FakeHost` + `sibling()`, and an
//! arbitrary interleaving of store events, feed polls, summary fetches (answered at the store's
//! revision when the store answers, and delivered later: pages may be published in between),
//! requests and their lookups.
//!
//! Input: a config selector byte, then operations: an opcode byte and its argument bytes
//! (reading past the end gives zeros; an argument that is an ASCII digit stands for its value,
//! so seeds can be written as text: `c3` = the store creates key 3).
//!
//!   c K         the store creates key K (0-15), once
//!   v K         the store revokes key K, if live
//!   t W         the root tick of worker W (0-1): polls and fetches are sent from here
//!   a N         advance the clock: N ms (N < 128), (N - 127) * 50 ms, a digit d: d * 250 ms
//!   p W I A     answer worker W's I-th outstanding poll: A 0 every change since, 1 the first
//!               change only (`more`), 2 a reset, 3 status 500, 4 no response
//!   s W I B     the store answers worker W's I-th outstanding summary fetch now (built at its
//!               current revision with B: blocks 1 + B % 4, revoked keys kept if B & 4); the
//!               answer reaches the worker with `f`
//!   f W I A     deliver worker W's I-th summary fetch: A 0 the store's answer (built now if
//!               `s` did not), 1 status 500, 2 no response, 3 a truncated body
//!   r W K       a request with key K on worker W
//!   l W I       the store answers worker W's I-th outstanding lookup (200 if live, else 404)
//!   w W         the wake-up of worker W
//!   any other byte: the operation `byte % 10`, in the order above
//!
//! `KEYGATE_FUZZ_TRACE=1` prints every operation and what it caused.
//!
//! Property (issue 22): a key id in the store since before the last good poll is never
//! refused by the summary. After every operation, for every key live in the store and created
//! at or before the revision this Envoy's feed last published (the shared epoch's), the
//! summary never says `Absent`; and no request for such a key is answered
//! `UnknownKeyDuringFlood`. Nothing panics (debug assertions and overflow checks are on).
#![no_main]

use std::collections::BTreeMap;
use std::rc::Rc;

use keygate::config::Config;
use keygate::fake_host::FakeHost;
use keygate::host::{CallResponse, Callout};
use keygate::shared::{self, Epoch};
use keygate::store;
use keygate::summary::{self as filter_summary, Membership};
use keygate::verdict::{Decision, Outcome, Resolution};
use keygate::worker::Worker;
use keygate_fuzz::{trace, Cursor};
use keygate_protocol::summary::{hashes_for, Summary};
use keygate_protocol::KeyId;
use libfuzzer_sys::fuzz_target;

const KEYS: usize = 16;

/// A miss budget that runs short at once (the gate engages), a fast feed, usage reports off.
const CONFIGS: [&str; 2] = [
    r#"{"store":{"cluster":"keystore","timeout_ms":1000},"cache":{"shared_slots":16},
        "miss_budget":{"per_second":1,"burst":2},"sync":{"interval_ms":100},
        "usage":{"enabled":false},"summary":{"timeout_ms":500,"refetch_min_interval_ms":1000}}"#,
    // Refetch on drift early, and refuse summaries over 128 bytes (more than 2 blocks).
    r#"{"store":{"cluster":"keystore","timeout_ms":1000},"cache":{"shared_slots":4},
        "miss_budget":{"per_second":1,"burst":1},"sync":{"interval_ms":100},
        "usage":{"enabled":false},"summary":{"timeout_ms":300,"refetch_min_interval_ms":1000,
        "max_false_positive_rate":0.001,"max_bytes":128}}"#,
];

const ANN: &str = r#"{"account_id":"acme","user_id":"ann","role":"admin"}"#;

fn key(n: usize) -> KeyId {
    KeyId::of(format!("key-{n}").as_bytes())
}

/// An argument byte: an ASCII digit stands for its value.
fn arg(c: &mut Cursor) -> usize {
    let b = c.u8();
    usize::from(if b.is_ascii_digit() { b - b'0' } else { b })
}

fn response(status: Option<u16>, body: Option<Vec<u8>>) -> CallResponse {
    CallResponse { status, body }
}

/// The key store: its revision, change log and keys.
#[derive(Default)]
struct Store {
    revision: u64,
    /// (revision, key, created) per change, oldest first.
    log: Vec<(u64, usize, bool)>,
    created: [Option<u64>; KEYS],
    live: [bool; KEYS],
}

impl Store {
    fn create(&mut self, k: usize) {
        if self.created[k].is_none() {
            self.revision += 1;
            self.created[k] = Some(self.revision);
            self.live[k] = true;
            self.log.push((self.revision, k, true));
            trace!("  store: key {k} created at {}", self.revision);
        }
    }

    fn revoke(&mut self, k: usize) {
        if self.live[k] {
            self.revision += 1;
            self.live[k] = false;
            self.log.push((self.revision, k, false));
            trace!("  store: key {k} revoked at {}", self.revision);
        }
    }

    /// A changes page from `since`: every change after it, or only the first (`more`).
    fn page(&self, since: u64, first_only: bool) -> String {
        let after: Vec<&(u64, usize, bool)> = self.log.iter().filter(|e| e.0 > since).collect();
        let (entries, revision, more) = match after.first() {
            Some(first) if first_only && after.len() > 1 => (vec![*first], first.0, true),
            _ => (after, self.revision.max(since), false),
        };
        let hex = |e: &&(u64, usize, bool)| format!("\"{}\"", key(e.1).hex());
        let changed: Vec<String> = entries.iter().map(hex).collect();
        let created: Vec<String> = entries.iter().filter(|e| e.2).map(hex).collect();
        format!(
            r#"{{"revision":{revision},"changed":[{}],"created":[{}],"more":{more}}}"#,
            changed.join(","),
            created.join(",")
        )
    }

    /// The summary as the store serves it now: every live key (and the revoked ones if asked).
    fn summary(&self, blocks: u32, with_revoked: bool) -> Vec<u8> {
        let mut s = Summary::new(self.revision, blocks, hashes_for(10));
        for k in 0..KEYS {
            if self.live[k] || (with_revoked && self.created[k].is_some()) {
                s.insert(&key(k));
            }
        }
        s.encode()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Poll { since: u64 },
    Fetch,
    Lookup { key: usize },
}

struct Call {
    token: u32,
    kind: Kind,
    /// A summary fetch the store answered already: the body, on its way.
    answer: Option<Vec<u8>>,
}

struct Side {
    host: FakeHost,
    worker: Worker,
    next_context: u32,
    waiting: BTreeMap<u32, usize>,
    calls: Vec<Call>,
}

struct State {
    store: Store,
    sides: [Side; 2],
    lookup_prefix: String,
    changes_prefix: String,
    summary_path: String,
}

impl State {
    fn kind(&self, callout: &Callout) -> Option<Kind> {
        if callout.path == self.summary_path {
            return Some(Kind::Fetch);
        }
        if let Some(rest) = callout.path.strip_prefix(&self.changes_prefix) {
            let since = rest.rsplit('=').next()?.parse().ok()?;
            return Some(Kind::Poll { since });
        }
        let key = (0..KEYS).find(|&k| store::lookup_path(&self.lookup_prefix, &key(k)) == callout.path)?;
        Some(Kind::Lookup { key })
    }

    fn collect_calls(&mut self, w: usize) {
        for (token, callout) in self.sides[w].host.take_calls() {
            let kind = self.kind(&callout);
            trace!("    w{w} dispatched call {token}: {} {kind:?}", callout.path);
            let kind = kind.unwrap_or_else(|| panic!("unexpected callout {callout:?}"));
            self.sides[w].calls.push(Call {
                token,
                kind,
                answer: None,
            });
        }
    }

    /// Whether the store has had key `k` since before the last good poll this Envoy published.
    fn protected(&self, k: usize) -> bool {
        let side = &self.sides[0];
        let (epoch, _) = shared::read::<FakeHost, Epoch>(&side.host, &side.worker.names().epoch);
        let epoch = epoch.unwrap_or_default();
        epoch.synced_ms > 0
            && self.store.live[k]
            && self.store.created[k].is_some_and(|c| c <= epoch.revision)
    }

    fn check_property(&self) {
        if keygate_fuzz::tracing() {
            let side = &self.sides[0];
            let (epoch, _) =
                shared::read::<FakeHost, Epoch>(&side.host, &side.worker.names().epoch);
            let m: String = (0..KEYS)
                .map(|k| match filter_summary::membership(&side.host, side.worker.names(), &key(k)) {
                    Membership::NoSummary => '-',
                    Membership::Absent => 'A',
                    Membership::MayExist => 'M',
                })
                .collect();
            trace!("    summary {m}, epoch {epoch:?}");
        }
        for k in 0..KEYS {
            if !self.protected(k) {
                continue;
            }
            for (w, side) in self.sides.iter().enumerate() {
                let m = filter_summary::membership(&side.host, side.worker.names(), &key(k));
                assert_ne!(
                    m,
                    Membership::Absent,
                    "worker {w}: key {k} (created at {:?}) is in the store since before the \
                     last good poll but the summary says it is absent",
                    self.store.created[k]
                );
            }
        }
    }

    fn refused(&self, w: usize, k: usize, outcome: &Outcome) {
        if *outcome == Outcome::UnknownKeyDuringFlood {
            assert!(
                !self.protected(k),
                "worker {w}: key {k} (created at {:?}) refused by the summary",
                self.store.created[k]
            );
        }
    }

    fn resolved(&mut self, w: usize, resolutions: Vec<Resolution>) {
        for r in resolutions {
            trace!("    w{w} ctx {} resolved: {:?}", r.context_id, r.outcome);
            let k = self.sides[w]
                .waiting
                .remove(&r.context_id)
                .unwrap_or_else(|| panic!("worker {w}: context {} resolved twice", r.context_id));
            self.refused(w, k, &r.outcome);
        }
    }

    fn request(&mut self, w: usize, k: usize) {
        let side = &mut self.sides[w];
        side.next_context += 1;
        let context = side.next_context;
        let decision = side.worker.check(&side.host, context, key(k));
        trace!("  request w{w} key {k} -> ctx {context}: {decision:?}");
        match decision {
            Decision::Wait => {
                side.waiting.insert(context, k);
            }
            Decision::Answer(outcome, _) => self.refused(w, k, &outcome),
        }
    }

    fn tick(&mut self, w: usize) {
        trace!("  tick w{w}");
        let side = &mut self.sides[w];
        let r = side.worker.on_tick(&side.host);
        self.resolved(w, r);
    }

    fn wake(&mut self, w: usize) {
        trace!("  wake w{w}");
        let side = &mut self.sides[w];
        let r = side.worker.on_wake(&side.host);
        self.resolved(w, r);
    }

    /// Takes worker `w`'s `i`-th outstanding call of the kind `want` accepts.
    fn take_call(&mut self, w: usize, i: usize, want: fn(&Kind) -> bool) -> Option<Call> {
        let calls = &mut self.sides[w].calls;
        let of_kind: Vec<usize> = (0..calls.len()).filter(|&j| want(&calls[j].kind)).collect();
        let j = *of_kind.get(i % of_kind.len().max(1))?;
        Some(calls.remove(j))
    }

    fn deliver(&mut self, w: usize, token: u32, r: CallResponse) {
        let side = &mut self.sides[w];
        let out = side.worker.on_call_response(&side.host, token, &r);
        self.resolved(w, out);
    }

    fn answer_poll(&mut self, w: usize, i: usize, a: usize) {
        let Some(call) = self.take_call(w, i, |k| matches!(k, Kind::Poll { .. })) else {
            return;
        };
        let Kind::Poll { since } = call.kind else {
            return;
        };
        let r = match a % 5 {
            0 | 1 => {
                let body = self.store.page(since, a % 5 == 1);
                trace!("  w{w} poll {} since {since}: {body}", call.token);
                response(Some(200), Some(body.into_bytes()))
            }
            2 => {
                let body = format!(r#"{{"revision":{},"reset":true}}"#, self.store.revision);
                trace!("  w{w} poll {} since {since}: {body}", call.token);
                response(Some(200), Some(body.into_bytes()))
            }
            3 => response(Some(500), Some(b"oops".to_vec())),
            _ => response(None, None),
        };
        self.deliver(w, call.token, r);
    }

    /// The store answers a fetch now; the answer arrives with [`State::deliver_fetch`].
    fn answer_fetch(&mut self, w: usize, i: usize, b: usize) {
        let calls = &mut self.sides[w].calls;
        let fetches: Vec<usize> = (0..calls.len())
            .filter(|&j| calls[j].kind == Kind::Fetch && calls[j].answer.is_none())
            .collect();
        let Some(&j) = fetches.get(i % fetches.len().max(1)) else {
            return;
        };
        let blocks = 1 + u32::try_from(b % 4).unwrap_or(0);
        trace!(
            "  store answers w{w}'s fetch {} at revision {} ({blocks} blocks)",
            calls[j].token,
            self.store.revision
        );
        calls[j].answer = Some(self.store.summary(blocks, b & 4 != 0));
    }

    fn deliver_fetch(&mut self, w: usize, i: usize, a: usize) {
        let Some(call) = self.take_call(w, i, |k| *k == Kind::Fetch) else {
            return;
        };
        let body = call
            .answer
            .unwrap_or_else(|| self.store.summary(1, false));
        let r = match a % 4 {
            0 => response(Some(200), Some(body)),
            1 => response(Some(500), Some(b"oops".to_vec())),
            2 => response(None, None),
            _ => {
                let cut = body.len() / 2;
                response(Some(200), Some(body[..cut].to_vec()))
            }
        };
        trace!("  deliver w{w}'s fetch {}: {:?}", call.token, r.status);
        self.deliver(w, call.token, r);
    }

    fn answer_lookup(&mut self, w: usize, i: usize) {
        let Some(call) = self.take_call(w, i, |k| matches!(k, Kind::Lookup { .. })) else {
            return;
        };
        let Kind::Lookup { key } = call.kind else {
            return;
        };
        let r = if self.store.live[key] {
            response(Some(200), Some(ANN.as_bytes().to_vec()))
        } else {
            response(Some(404), Some(Vec::new()))
        };
        trace!("  w{w} lookup {} of key {key}: {:?}", call.token, r.status);
        self.deliver(w, call.token, r);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let cfg = Rc::new(Config::from_json(CONFIGS[usize::from(c.u8()) % CONFIGS.len()].as_bytes()).unwrap());
    let host = FakeHost::new();
    host.set_now(1_000_000);
    let other = host.sibling();
    let w0 = Worker::new(&host, Rc::clone(&cfg)).unwrap();
    let w1 = Worker::new(&other, Rc::clone(&cfg)).unwrap();
    let side = |host, worker| Side {
        host,
        worker,
        next_context: 0,
        waiting: BTreeMap::new(),
        calls: Vec::new(),
    };
    let mut s = State {
        store: Store::default(),
        sides: [side(host, w0), side(other, w1)],
        lookup_prefix: cfg.store.lookup_path.clone(),
        changes_prefix: cfg.store.changes_path.clone(),
        summary_path: cfg.summary.path.clone(),
    };
    s.collect_calls(0);
    s.collect_calls(1);

    let mut ops = 0;
    while !c.is_empty() && ops < 2000 {
        ops += 1;
        let op = match c.u8() {
            b'c' => 0,
            b'v' => 1,
            b't' => 2,
            b'a' => 3,
            b'p' => 4,
            b's' => 5,
            b'f' => 6,
            b'r' => 7,
            b'l' => 8,
            b'w' => 9,
            b => b % 10,
        };
        match op {
            0 => s.store.create(arg(&mut c) % KEYS),
            1 => s.store.revoke(arg(&mut c) % KEYS),
            2 => s.tick(arg(&mut c) & 1),
            3 => {
                let ms = c.step_ms();
                s.sides[0].host.advance(ms);
                trace!("  advance {ms} ms");
            }
            4 => {
                let (w, i, a) = (arg(&mut c) & 1, arg(&mut c), arg(&mut c));
                s.answer_poll(w, i, a);
            }
            5 => {
                let (w, i, b) = (arg(&mut c) & 1, arg(&mut c), arg(&mut c));
                s.answer_fetch(w, i, b);
            }
            6 => {
                let (w, i, a) = (arg(&mut c) & 1, arg(&mut c), arg(&mut c));
                s.deliver_fetch(w, i, a);
            }
            7 => {
                let (w, k) = (arg(&mut c) & 1, arg(&mut c) % KEYS);
                s.request(w, k);
            }
            8 => {
                let (w, i) = (arg(&mut c) & 1, arg(&mut c));
                s.answer_lookup(w, i);
            }
            _ => s.wake(arg(&mut c) & 1),
        }
        s.collect_calls(0);
        s.collect_calls(1);
        s.check_property();
    }
});
