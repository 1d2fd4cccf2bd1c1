//! Two `Worker`s of one Envoy (`FakeHost::sibling`) driven through an arbitrary sequence of
//! requests, ticks, clock moves, store answers, clients going away and local invalidations.
//!
//! Input: a config selector byte, then operations. Each operation is an opcode byte and its
//! argument bytes; reading past the end gives zeros. An argument that is an ASCII digit stands
//! for its value, so seeds can be written as text (`c05` = check key 5 on worker 0).
//!
//!   c W K       check: a new request with key K (0-7) on worker W (0-1)
//!   t W         the root tick of worker W
//!   a N         advance the clock: N ms (N < 128), (N - 127) * 50 ms, a digit d: d * 250 ms
//!   r W I A     answer worker W's outstanding callout I with answer A (see `lookup_answer`,
//!               `changes_answer`; answer 7 reads a status byte and a length-prefixed body)
//!   f W I       the client of worker W's I-th waiting request goes away
//!   i W         a local admin write on worker W, answered 2xx (`admin_write_done`)
//!   d W         toggle callout dispatch failures on worker W
//!   any other byte: the operation `byte % 7`, in the order above
//!
//! `KEYGATE_FUZZ_TRACE=1` prints every operation and what it caused (to read a reproducer:
//! `KEYGATE_FUZZ_TRACE=1 fuzz/target/*/release/worker_ops FILE`).
//!
//! Properties:
//! - nothing panics (debug assertions and overflow checks are on);
//! - every request answered `Wait` is resolved at most once, only while it waits (never after
//!   its client went away), and `waiters()` is always the number of such requests;
//! - every held admin write is released at most once, and `writers_held()` counts them;
//! - after 10 s and one tick per worker with no callout answered, nothing waits and every
//!   waiting request and held write has been answered: nobody waits forever;
//! - an allowed identity is always header-safe and never past its `expires_at`;
//! - freshness: once the changes feed reported a key (or a reset) and the page was applied, no
//!   worker answers for that key from a cache (allow or deny; deny only, for a key reported as
//!   created) nor serves it stale, until a lookup sent after the report brought a new verdict:
//!   the worker that applied the page at once, the other from the next millisecond on (each
//!   reads the shared epoch at most once per millisecond);
//! - no answer from a lookup dispatched before the feed reported its key: after the report, no
//!   waiter (early or late) gets an allow (a deny, for any report) until a lookup sent after
//!   the report answered.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use keygate::config::Config;
use keygate::fake_host::FakeHost;
use keygate::host::{CallResponse, Callout, Host, Method};
use keygate_protocol::KeyId;
use keygate::shared::table::LEASE_GRACE_MS;
use keygate::store::{self, Changes, LookupAnswer};
use keygate::verdict::{Decision, Outcome, Resolution};
use keygate::worker::Worker;
use keygate_fuzz::{trace, Cursor};
use libfuzzer_sys::fuzz_target;

const KEYS: usize = 8;

// The key summary is off: its fetches are the `summary` target's.
const CONFIGS: [&str; 4] = [
    r#"{"summary":{"enabled":false},"store":{"cluster":"keystore","timeout_ms":1000},"cache":{"shared_slots":256}}"#,
    // Every key in one slot (collisions, Busy), no stale-if-error.
    r#"{"summary":{"enabled":false},"store":{"cluster":"keystore","timeout_ms":1000},"cache":{"shared_slots":1,"stale_if_error_s":0}}"#,
    // A miss budget that runs out, a fast feed.
    r#"{"summary":{"enabled":false},"store":{"cluster":"keystore","timeout_ms":500},"cache":{"shared_slots":4},
        "miss_budget":{"per_second":1,"burst":2},"sync":{"interval_ms":100}}"#,
    // Short TTLs, a tiny L1 (evictions), short timeouts.
    r#"{"summary":{"enabled":false},"store":{"cluster":"keystore","timeout_ms":100},
        "cache":{"ttl_s":1,"negative_ttl_s":1,"stale_if_error_s":1,"shared_slots":2,"max_entries":4}}"#,
];

const ANN: &str = r#"{"account_id":"acme","user_id":"ann","role":"admin"}"#;
const BOB: &str = r#"{"account_id":"acme","user_id":"bob","role":"member","extra":1}"#;
/// Expiring 2 s and 30 s into the run (the fake clock starts at 1,000 s), with claims.
const ANN_2S: &str = r#"{"account_id":"acme","user_id":"ann","role":"admin","expires_at":1002,"claims":{"plan":"pro"}}"#;
const ANN_30S: &str = r#"{"account_id":"acme","user_id":"ann","role":"admin","expires_at":1030}"#;

fn key(n: usize) -> KeyId {
    KeyId::of(format!("key-{n}").as_bytes())
}

fn key_index(k: &KeyId) -> Option<usize> {
    (0..KEYS).find(|&n| key(n) == *k)
}

/// An argument byte: an ASCII digit stands for its value.
fn arg(c: &mut Cursor) -> usize {
    let b = c.u8();
    usize::from(if b.is_ascii_digit() { b - b'0' } else { b })
}

fn response(status: Option<u16>, body: Option<&[u8]>) -> CallResponse {
    CallResponse {
        status,
        body: body.map(<[u8]>::to_vec),
    }
}

fn raw_answer(c: &mut Cursor) -> CallResponse {
    let status = match arg(c) % 6 {
        0 => Some(200),
        1 => Some(404),
        2 => Some(503),
        3 => None,
        4 => Some(c.u16()),
        _ => Some(429),
    };
    let body = c.short_bytes();
    response(status, Some(body))
}

fn lookup_answer(c: &mut Cursor) -> CallResponse {
    match arg(c) % 10 {
        0 => response(Some(200), Some(ANN.as_bytes())),
        8 => response(Some(200), Some(ANN_2S.as_bytes())),
        9 => response(Some(200), Some(ANN_30S.as_bytes())),
        1 => response(Some(404), Some(b"")),
        2 => response(Some(500), Some(b"oops")),
        3 => response(None, None),
        4 => response(Some(200), Some(b"{}")),
        5 => response(Some(200), Some(BOB.as_bytes())),
        6 => response(Some(200), None),
        _ => raw_answer(c),
    }
}

fn changes_answer(c: &mut Cursor, since: u64) -> CallResponse {
    let next = since.saturating_add(1);
    let body = match arg(c) % 8 {
        0 => format!(r#"{{"revision":{next},"changed":[]}}"#),
        1 => format!(
            r#"{{"revision":{next},"changed":["{}"]}}"#,
            key(arg(c) % KEYS).hex()
        ),
        2 => format!(r#"{{"revision":{next},"reset":true}}"#),
        3 => return response(None, None),
        4 => {
            let (a, b) = (key(arg(c) % KEYS).hex(), key(arg(c) % KEYS).hex());
            format!(r#"{{"revision":{next},"changed":["{a}","{b}"],"more":true}}"#)
        }
        5 => {
            let k = key(arg(c) % KEYS).hex();
            format!(r#"{{"revision":{next},"changed":["{k}"],"created":["{k}"]}}"#)
        }
        6 => format!(r#"{{"revision":{},"changed":[]}}"#, since.saturating_sub(1)),
        _ => return raw_answer(c),
    };
    response(Some(200), Some(body.as_bytes()))
}

struct Call {
    token: u32,
    callout: Callout,
    dispatched_ms: u64,
    /// `State::events` when it was dispatched.
    dispatched_event: u64,
}

struct Side {
    host: FakeHost,
    worker: Worker,
    next_context: u32,
    /// Requests answered `Wait` and not resolved or gone yet, with their key.
    waiting: BTreeMap<u32, usize>,
    /// Admin writes whose response is held.
    writers: BTreeSet<u32>,
    gone: BTreeSet<u32>,
    calls: Vec<Call>,
    last_tick_ms: u64,
    dispatch_fails: bool,
}

/// What the changes feed told the workers about a key, and what the store said since.
#[derive(Clone, Copy)]
struct Freshness {
    /// The event of the last report of this key (0: never reported).
    reported: u64,
    /// The event of the last report that was more than its creation (0: never).
    reported_changed: u64,
    /// A cached allow may be answered with (no report, or a lookup after it found the key).
    allow_ok: bool,
    /// A cached deny may be answered with.
    deny_ok: bool,
    /// The earliest `expires_at` (ms) of the identities found by lookups sent since the last
    /// report: from then on, a deny is the right answer too.
    expires_ms: Option<u64>,
    /// When the last report was published (ms) and by which worker: a worker reads the shared
    /// epoch at most once per millisecond, so the *other* worker may still answer from its
    /// cache within that millisecond (README, "Freshness guarantees"); from the next one on, it
    /// may not.
    reported_ms: u64,
    reported_by: usize,
}

impl Freshness {
    fn deny_ok_at(&self, now_ms: u64) -> bool {
        self.deny_ok || self.expires_ms.is_some_and(|e| now_ms >= e)
    }

    /// Worker `w`, answering from its cache at `now_ms`, may not have read the last report yet.
    fn unseen_by(&self, w: usize, now_ms: u64) -> bool {
        self.reported > 0 && w != self.reported_by && now_ms == self.reported_ms
    }
}

struct State {
    sides: [Side; 2],
    keys: [Freshness; KEYS],
    events: u64,
    lease_ms: u64,
    lookup_prefix: String,
}

impl State {
    fn collect_calls(&mut self, w: usize) {
        let now = self.sides[w].host.now_ms();
        let event = self.events;
        for (token, callout) in self.sides[w].host.take_calls() {
            trace!("    w{w} dispatched call {token}: {}", callout.path);
            self.sides[w].calls.push(Call {
                token,
                callout,
                dispatched_ms: now,
                dispatched_event: event,
            });
        }
    }

    fn resolved(&mut self, w: usize, resolutions: Vec<Resolution>) {
        for r in resolutions {
            trace!("    w{w} ctx {} resolved: {:?}", r.context_id, r.outcome);
            let side = &mut self.sides[w];
            assert!(
                !side.gone.contains(&r.context_id),
                "worker {w}: context {} resolved after its client went away",
                r.context_id
            );
            let Some(k) = side.waiting.remove(&r.context_id) else {
                panic!(
                    "worker {w}: context {} resolved but not waiting (twice, or never paused)",
                    r.context_id
                );
            };
            match &r.outcome {
                Outcome::Allow { identity, stale } => {
                    assert!(identity.is_header_safe(), "{identity:?}");
                    let now = self.sides[w].host.now_ms();
                    assert!(
                        !identity.expired(now),
                        "worker {w}: expired key allowed at {now}"
                    );
                    assert!(
                        self.keys[k].allow_ok,
                        "worker {w}: key {k} allowed (stale: {stale}, {:?}) from a lookup sent \
                         before the feed reported it",
                        r.source
                    );
                }
                Outcome::Deny => assert!(
                    self.keys[k].deny_ok_at(self.sides[w].host.now_ms()),
                    "worker {w}: key {k} denied from a lookup sent before the feed reported it"
                ),
                Outcome::Unavailable | Outcome::Throttled | Outcome::UnknownKeyDuringFlood => {}
            }
        }
    }

    fn check(&mut self, w: usize, k: usize) {
        let side = &mut self.sides[w];
        side.next_context += 1;
        let context = side.next_context;
        let decision = side.worker.check(&side.host, context, key(k));
        trace!("  check w{w} key {k} -> ctx {context}: {decision:?}");
        match decision {
            Decision::Wait => {
                side.waiting.insert(context, k);
            }
            Decision::Answer(outcome, _) => match outcome {
                // With the miss budget spent, check refuses a miss at once: Throttled, or the
                // stale identity when one is in its window (same rules as any stale answer);
                // while it runs short, the summary gate may refuse a key the summary lacks.
                Outcome::Throttled | Outcome::UnknownKeyDuringFlood => {}
                Outcome::Allow { identity, .. } => {
                    assert!(identity.is_header_safe(), "{identity:?}");
                    let now = self.sides[w].host.now_ms();
                    assert!(
                        !identity.expired(now),
                        "worker {w}: expired key allowed at {now}"
                    );
                    assert!(
                        self.keys[k].allow_ok || self.keys[k].unseen_by(w, now),
                        "worker {w}: key {k} allowed from a cache after the feed reported it"
                    );
                }
                Outcome::Deny => {
                    let now = side.host.now_ms();
                    assert!(
                        self.keys[k].deny_ok_at(now) || self.keys[k].unseen_by(w, now),
                        "worker {w}: key {k} denied from a cache after the feed reported it"
                    );
                }
                other => panic!("check answered {other:?} without a lookup"),
            },
        }
    }

    /// The changes feed reported key `k` (`created`: only its creation) and it was published.
    fn reported(&mut self, k: usize, created: bool, by: usize) {
        self.events += 1;
        let now = self.sides[by].host.now_ms();
        let f = &mut self.keys[k];
        f.reported = self.events;
        f.reported_ms = now;
        f.reported_by = by;
        f.deny_ok = false;
        f.expires_ms = None;
        if !created {
            f.reported_changed = self.events;
            f.allow_ok = false;
        }
    }

    fn answer(&mut self, w: usize, c: &mut Cursor) {
        let i = arg(c);
        let n = self.sides[w].calls.len();
        let index = if n == 0 { return } else { i % n };
        let call = self.sides[w].calls.remove(index);
        let path = call.callout.path.clone();
        trace!("  answer w{w} call {} {path}", call.token);
        if call.callout.method == Method::Post {
            // A usage report: recorded, not supported, failed or lost.
            let resp = match arg(c) % 4 {
                0 => response(Some(200), Some(b"{}")),
                1 => response(Some(404), Some(b"")),
                2 => response(Some(503), Some(b"")),
                _ => response(None, None),
            };
            trace!("    usage report answered {:?}", resp.status);
            let side = &mut self.sides[w];
            let out = side.worker.on_call_response(&side.host, call.token, &resp);
            self.resolved(w, out);
        } else if let Some(hex) = path.strip_prefix(&self.lookup_prefix) {
            let resp = lookup_answer(c);
            trace!(
                "    with {:?} {:?}",
                resp.status,
                resp.body.as_deref().map(String::from_utf8_lossy)
            );
            let k = KeyId::from_hex(hex).and_then(|id| key_index(&id));
            let answer = store::parse_lookup(&resp, &self.sides[w].worker.config().identity_headers.claims);
            let side = &mut self.sides[w];
            let out = side.worker.on_call_response(&side.host, call.token, &resp);
            if let Some(k) = k {
                let f = &mut self.keys[k];
                // A creation reported after the lookup was sent outdates a "not found", not an
                // identity.
                if let LookupAnswer::Found(i) = &answer {
                    if let (Some(e), true) = (i.expires_ms, call.dispatched_event >= f.reported) {
                        f.expires_ms = Some(f.expires_ms.map_or(e, |old| old.min(e)));
                    }
                }
                match answer {
                    LookupAnswer::Found(_) if call.dispatched_event >= f.reported_changed => {
                        f.allow_ok = true;
                    }
                    LookupAnswer::NotFound if call.dispatched_event >= f.reported => {
                        f.deny_ok = true;
                    }
                    _ => {}
                }
            }
            self.resolved(w, out);
        } else {
            let since: u64 = path
                .rsplit_once("since=")
                .and_then(|(_, s)| s.parse().ok())
                .expect("a changes poll without since");
            let resp = changes_answer(c, since);
            trace!(
                "    with {:?} {:?}",
                resp.status,
                resp.body.as_deref().map(String::from_utf8_lossy)
            );
            // The poll is still registered unless a tick past its deadline gave up on it.
            let live = self.sides[w].last_tick_ms < call.dispatched_ms + self.lease_ms;
            let side = &mut self.sides[w];
            let out = side.worker.on_call_response(&side.host, call.token, &resp);
            self.resolved(w, out);
            if !live {
                trace!("    (the poll had been given up on)");
                return;
            }
            let mut reported = Vec::new();
            match store::parse_changes(&resp, since) {
                Ok(Changes::Changed { keys, .. }) => {
                    for change in keys {
                        if let Some(k) = key_index(&change.key) {
                            reported.push((k, change.created));
                        }
                    }
                }
                Ok(Changes::Reset { .. }) => reported.extend((0..KEYS).map(|k| (k, false))),
                Err(_) => {}
            }
            for &(k, created) in &reported {
                trace!("    feed reported key {k} (created only: {created})");
                self.reported(k, created, w);
            }
            // Every worker must now refuse to answer those keys from its caches: the one that
            // applied the page at once, the other from the next millisecond on.
            for &(k, _) in &reported {
                for w in 0..2 {
                    self.check(w, k);
                }
            }
            if !reported.is_empty() {
                self.sides[w].host.advance(1);
                for &(k, _) in &reported {
                    self.check(1 - w, k);
                }
            }
        }
    }

    fn tick(&mut self, w: usize) {
        let side = &mut self.sides[w];
        side.last_tick_ms = side.host.now_ms();
        trace!("  tick w{w} at {}", side.last_tick_ms);
        let out = side.worker.on_tick(&side.host);
        self.resolved(w, out);
    }

    fn forget(&mut self, w: usize, i: usize) {
        let side = &mut self.sides[w];
        let Some(&context) = side.waiting.keys().nth(i % side.waiting.len().max(1)) else {
            return;
        };
        trace!("  forget w{w} ctx {context}");
        side.waiting.remove(&context);
        side.gone.insert(context);
        side.worker.forget(&side.host, context);
    }

    fn assert_parked(&self) {
        for (w, side) in self.sides.iter().enumerate() {
            assert_eq!(
                side.worker.waiters(),
                side.waiting.len(),
                "worker {w}: waiters() disagrees with the requests waiting"
            );
            assert_eq!(
                side.worker.writers_held(),
                side.writers.len(),
                "worker {w}: writers_held() disagrees with the writes held"
            );
        }
    }

    fn admin_write(&mut self, w: usize) {
        let side = &mut self.sides[w];
        side.next_context += 1;
        let context = side.next_context;
        trace!("  admin write w{w} ctx {context}");
        side.worker.admin_write_done(&side.host, context);
        side.writers.insert(context);
    }

    fn released_writers(&mut self, w: usize) {
        let side = &mut self.sides[w];
        for context in side.worker.take_released_writers(&side.host) {
            trace!("    w{w} writer {context} released");
            assert!(
                side.writers.remove(&context),
                "worker {w}: writer {context} released twice, or never held"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let cfg = CONFIGS[arg(&mut c) % CONFIGS.len()];
    trace!("config {cfg}");
    let cfg = Rc::new(Config::from_json(cfg.as_bytes()).expect("a fuzz config is refused"));
    let host = FakeHost::new();
    let sibling = host.sibling();
    let side = |host: FakeHost| {
        let worker = Worker::new(&host, Rc::clone(&cfg)).expect("Worker::new");
        Side {
            host,
            worker,
            next_context: 0,
            waiting: BTreeMap::new(),
            writers: BTreeSet::new(),
            gone: BTreeSet::new(),
            calls: Vec::new(),
            last_tick_ms: 0,
            dispatch_fails: false,
        }
    };
    let mut s = State {
        sides: [side(host), side(sibling)],
        keys: [Freshness {
            reported: 0,
            reported_changed: 0,
            allow_ok: true,
            reported_ms: 0,
            reported_by: 0,
            deny_ok: true,
            expires_ms: None,
        }; KEYS],
        events: 0,
        lease_ms: cfg.store.timeout_ms + LEASE_GRACE_MS,
        lookup_prefix: cfg.store.lookup_path.clone(),
    };

    let mut ops = 0;
    while !c.is_empty() && ops < 2000 {
        ops += 1;
        let op = match c.u8() {
            b'c' => 0,
            b't' => 1,
            b'a' => 2,
            b'r' => 3,
            b'f' => 4,
            b'i' => 5,
            b'd' => 6,
            b => b % 7,
        };
        match op {
            0 => {
                let w = arg(&mut c) & 1;
                let k = arg(&mut c) % KEYS;
                s.check(w, k);
            }
            1 => s.tick(arg(&mut c) & 1),
            2 => {
                let ms = c.step_ms();
                s.sides[0].host.advance(ms);
                trace!("  advance {ms} ms");
            }
            3 => {
                let w = arg(&mut c) & 1;
                s.answer(w, &mut c);
            }
            4 => {
                let w = arg(&mut c) & 1;
                let i = arg(&mut c);
                s.forget(w, i);
            }
            5 => {
                let w = arg(&mut c) & 1;
                s.admin_write(w);
            }
            _ => {
                let side = &mut s.sides[arg(&mut c) & 1];
                side.dispatch_fails = !side.dispatch_fails;
                side.host.fail_dispatch(side.dispatch_fails);
                trace!("  dispatch failures: {}", side.dispatch_fails);
            }
        }
        s.collect_calls(0);
        s.collect_calls(1);
        s.released_writers(0);
        s.released_writers(1);
        s.assert_parked();
    }

    // Nobody waits forever: well past every deadline, with no callout answered, the ticks
    // answer everyone (at most MAX_ANSWERS_PER_CALLBACK per tick, so a few ticks for a crowd).
    trace!("  advance 10 s, tick both until answered");
    s.sides[0].host.advance(10_000);
    for w in 0..2 {
        let rounds = s.sides[w].worker.waiters() / keygate::worker::MAX_ANSWERS_PER_CALLBACK + 2;
        for _ in 0..rounds {
            s.tick(w);
        }
        // A held write's poll was lost (never answered): the fallback releases it within a
        // second; the fallback's rate limit may need one more second.
        for _ in 0..3 {
            s.sides[0].host.advance(1_000);
            s.tick(w);
            s.released_writers(w);
        }
    }
    for (w, side) in s.sides.iter().enumerate() {
        assert_eq!(
            side.worker.waiters(),
            0,
            "worker {w}: requests still waiting after 10 s"
        );
        assert!(
            side.writers.is_empty(),
            "worker {w}: writes still held: {:?}",
            side.writers
        );
        assert!(
            side.waiting.is_empty(),
            "worker {w}: requests never resolved: {:?}",
            side.waiting
        );
    }
});
