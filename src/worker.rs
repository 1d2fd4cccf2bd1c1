//! The worker: everything one Envoy worker VM knows and decides, over the [`Host`] trait.
//!
//! A request's key id is answered, in order, from: the L1 (this worker's cache), the shared
//! table (verdicts other workers fetched), or a store lookup. Requests for a key that is being
//! looked up wait (paused) and are answered together: within a worker they share the pending
//! lookup; across workers, the one that holds the slot's lease asks the store and the others
//! read its verdict from the shared table on their next tick.
//!
//! Callouts are dispatched only from the root context (`on_tick`, `on_http_call_response`), so
//! a lookup belongs to the worker, not to the request that triggered it: a client that goes
//! away does not take the lookup others wait on with it. [`Worker::check`] never dispatches.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use crate::bucket;
use crate::cache::{Entry, L1};
use crate::config::Config;
use crate::host::{CallResponse, Callout, DispatchError, Histogram, Host, Metric, SharedError};
use crate::key::KeyId;
use crate::shared::{self, Epoch, Names};
use crate::shared_table::{self, SlotVerdict, Table, View, LEASE_GRACE_MS};
use crate::store::{self, LookupAnswer};
use crate::sync::{self, Start};
use crate::verdict::{Decision, Identity, Outcome, Resolution, Verdict};

/// Tick period while requests wait (the latency of answering from another worker's verdict).
pub const FAST_TICK_MS: u32 = 1;
/// Longest tick period when idle; shorter when the sync interval is short.
pub const IDLE_TICK_MS: u32 = 250;
/// Most paused requests answered per root callback; the rest wait for the next tick (1 ms).
/// Envoy runs what a resumed request does next (the rest of its filter chain and, for a local
/// reply or a direct response, its response callbacks into this VM) after the VM call, and each
/// of those calls runs the next queued resume before returning: answering k requests at once
/// nests k levels deep. With ~500 at once V8 ran out of stack ("Maximum call stack size
/// exceeded") and trapped the VM; 64 keeps the nesting shallow.
pub const MAX_ANSWERS_PER_CALLBACK: usize = 64;

pub struct Worker {
    cfg: Rc<Config>,
    names: Rc<Names>,
    table: Table,
    owner: u64,
    l1: L1,
    /// The epoch this worker's L1 is caught up with.
    epoch: Epoch,
    pending: HashMap<KeyId, Pending>,
    /// Paused requests: context id → the key they wait for.
    parked: HashMap<u32, KeyId>,
    calls: HashMap<u32, Call>,
    /// Answers decided but not yet handed to the glue (see [`MAX_ANSWERS_PER_CALLBACK`]).
    outbox: VecDeque<(KeyId, Resolution)>,
    tick_ms: u32,
    next_sync_check_ms: u64,
}

struct Pending {
    waiters: Vec<Waiter>,
    phase: Phase,
    /// When the first waiter arrived: a lease failure older than this is not ours.
    since_ms: u64,
}

struct Waiter {
    context_id: u32,
    deadline_ms: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Decide on the next tick: read the slot, follow or take the lease.
    Queued,
    /// Another worker holds the lease: wait for its verdict in the slot.
    Following,
    /// This worker asked the store (`leased`: under the slot's lease); `calls` maps the
    /// callout's token back to the key.
    Fetching {
        started_ms: u64,
        deadline_ms: u64,
        generation: u64,
        change_seq: u64,
        leased: bool,
    },
}

#[derive(Clone, Copy)]
enum Call {
    Lookup(KeyId),
    Sync { since: u64, deadline_ms: u64 },
}

impl Worker {
    /// Sets up a worker: takes an owner id, creates the shared records once per Envoy.
    pub fn new<H: Host + ?Sized>(host: &H, cfg: Rc<Config>) -> Result<Worker, SharedError> {
        let namespace = format!(
            "{}|{}|{}|{}|{}",
            cfg.store.cluster,
            cfg.store.authority,
            cfg.store.lookup_path,
            cfg.store.changes_path,
            cfg.cache.shared_slots
        );
        let names = Rc::new(Names::new(&namespace));
        let table = Table::new(Rc::clone(&names), cfg.cache.shared_slots);
        table.create(host);
        bucket::create(host, &names.budget, cfg.miss_budget.burst);
        let owner = shared::new_owner(host, &names)?;
        let (epoch, _) = shared::read::<H, Epoch>(host, &names.epoch);
        let l1 = L1::with_budget(cfg.cache.max_entries, cfg.cache.negative_max_entries);
        let mut worker = Worker {
            cfg,
            names,
            table,
            owner,
            l1,
            epoch: epoch.unwrap_or_default(),
            pending: HashMap::new(),
            parked: HashMap::new(),
            calls: HashMap::new(),
            outbox: VecDeque::new(),
            tick_ms: 0,
            next_sync_check_ms: 0,
        };
        worker.adjust_tick(host);
        Ok(worker)
    }

    pub fn owner(&self) -> u64 {
        self.owner
    }

    pub fn config(&self) -> &Rc<Config> {
        &self.cfg
    }

    /// How many requests are paused on this worker.
    pub fn parked(&self) -> usize {
        self.parked.len().saturating_add(self.outbox.len())
    }

    /// Decides a request with key id `key` (context `context_id`). Never calls the store.
    pub fn check<H: Host + ?Sized>(&mut self, host: &H, context_id: u32, key: KeyId) -> Decision {
        let now = host.now_ms();
        self.catch_up(host);
        if let Some(v) = self.l1.fresh(&key, now, self.epoch.generation) {
            host.count(Metric::L1Hits, 1);
            return Decision::Answer(Outcome::from_verdict(v, false));
        }
        let deadline_ms = now.saturating_add(self.max_wait_ms());
        if let Some(p) = self.pending.get_mut(&key) {
            p.waiters.push(Waiter {
                context_id,
                deadline_ms,
            });
            self.parked.insert(context_id, key);
            host.count(Metric::LookupsCoalesced, 1);
            return Decision::Wait;
        }
        let (slot, _) = self.table.read(host, &key);
        match shared_table::inspect(&slot, &key, now, self.epoch.generation, now) {
            View::Fresh(v) => {
                host.count(Metric::SharedHits, 1);
                let entry = v.to_entry();
                let outcome = Outcome::from_verdict(&entry.verdict, false);
                self.remember(host, key, entry);
                return Decision::Answer(outcome);
            }
            // This worker would have to ask the store: with the budget spent, say so now
            // rather than park the request until the tick finds the same (a flood of
            // unknown keys then costs one shared read each, not a pause and a resume).
            View::Free { .. } | View::Busy if !self.budget_left(host) => {
                host.count(Metric::Misses, 1);
                return Decision::Answer(self.stale_or(host, &key, now, Outcome::Throttled));
            }
            _ => {}
        }
        host.count(Metric::Misses, 1);
        self.pending.insert(
            key,
            Pending {
                waiters: vec![Waiter {
                    context_id,
                    deadline_ms,
                }],
                phase: Phase::Queued,
                since_ms: now,
            },
        );
        self.parked.insert(context_id, key);
        self.adjust_tick(host);
        Decision::Wait
    }

    /// A paused request ended before its answer (client gone): forget it.
    pub fn forget<H: Host + ?Sized>(&mut self, host: &H, context_id: u32) {
        self.outbox.retain(|(_, r)| r.context_id != context_id);
        let Some(key) = self.parked.remove(&context_id) else {
            self.adjust_tick(host);
            return;
        };
        if let Some(p) = self.pending.get_mut(&key) {
            p.waiters.retain(|w| w.context_id != context_id);
            // A lookup in flight goes on: its verdict fills the caches for the next request.
            if p.waiters.is_empty() && !matches!(p.phase, Phase::Fetching { .. }) {
                self.pending.remove(&key);
            }
        }
        self.adjust_tick(host);
    }

    /// A local admin write succeeded: every verdict cached by any worker of this Envoy is stale.
    pub fn invalidate_local<H: Host + ?Sized>(&mut self, host: &H) {
        let written = shared::update(host, &self.names.epoch, |e: Option<Epoch>| {
            let mut e = e.unwrap_or_default();
            e.generation = e.generation.saturating_add(1);
            Some(e)
        });
        if written.is_err() {
            // Could not tell the other workers; at least this one must not answer stale.
            self.l1.clear();
        }
        host.count(Metric::LocalInvalidations, 1);
        self.catch_up(host);
    }

    /// The root context's tick: moves pending lookups on, times out waiters, polls the feed.
    pub fn on_tick<H: Host + ?Sized>(&mut self, host: &H) -> Vec<Resolution> {
        let now = host.now_ms();
        self.catch_up(host);
        let mut out = Vec::new();
        let keys: Vec<KeyId> = self.pending.keys().copied().collect();
        for key in keys {
            self.advance(host, key, now, &mut out);
        }
        self.expire_waiters(host, now, &mut out);
        self.expire_calls(now);
        self.maybe_sync(host, now);
        self.deliver(host, out)
    }

    /// Queues `decided` behind earlier answers and hands out at most
    /// [`MAX_ANSWERS_PER_CALLBACK`] of them; a non-empty outbox keeps the tick fast.
    fn deliver<H: Host + ?Sized>(
        &mut self,
        host: &H,
        decided: Vec<(KeyId, Resolution)>,
    ) -> Vec<Resolution> {
        self.outbox.extend(decided);
        let n = self.outbox.len().min(MAX_ANSWERS_PER_CALLBACK);
        let now: Vec<Resolution> = self.outbox.drain(..n).map(|(_, r)| r).collect();
        self.adjust_tick(host);
        now
    }

    /// A callout's answer (dispatched by this worker's root context).
    pub fn on_call_response<H: Host + ?Sized>(
        &mut self,
        host: &H,
        token: u32,
        response: &CallResponse,
    ) -> Vec<Resolution> {
        let mut out = Vec::new();
        match self.calls.remove(&token) {
            None => {} // given up on already (its deadline passed)
            Some(Call::Lookup(key)) => {
                if let Some(Phase::Fetching { started_ms, .. }) =
                    self.pending.get(&key).map(|p| p.phase)
                {
                    host.record(
                        Histogram::LookupMs,
                        host.now_ms().saturating_sub(started_ms),
                    );
                }
                let answer = store::parse_lookup(response);
                self.finish_lookup(host, key, answer, &mut out);
            }
            Some(Call::Sync { since, .. }) => {
                let page = match store::parse_changes(response, since) {
                    Ok(page) => Some(page),
                    Err(e) => {
                        host.count(Metric::SyncErrors, 1);
                        log::warn!(
                            "changes feed poll failed: {e}; retrying in {} ms",
                            self.cfg.sync.interval_ms
                        );
                        None
                    }
                };
                let applied = sync::finish(
                    host,
                    &self.names,
                    &self.table,
                    self.owner,
                    page.as_ref(),
                    self.cfg.sync.interval_ms,
                );
                if applied.reset {
                    log::info!("changes feed reset: every cached verdict dropped");
                }
                self.catch_up(host);
            }
        }
        self.deliver(host, out)
    }

    // ---- internals ----

    /// Longest a request waits for a verdict: our lookup, or another worker's lease running out
    /// and then our own lookup.
    fn max_wait_ms(&self) -> u64 {
        self.cfg
            .store
            .timeout_ms
            .saturating_add(LEASE_GRACE_MS)
            .saturating_mul(2)
            .saturating_add(50)
    }

    fn lease_ms(&self) -> u64 {
        self.cfg.store.timeout_ms.saturating_add(LEASE_GRACE_MS)
    }

    /// Applies what changed in the shared epoch since this worker last looked.
    fn catch_up<H: Host + ?Sized>(&mut self, host: &H) {
        let (epoch, _) = shared::read::<H, Epoch>(host, &self.names.epoch);
        let epoch = epoch.unwrap_or_default();
        if epoch == self.epoch {
            return;
        }
        if epoch.change_seq != self.epoch.change_seq {
            let (ring, _) = shared::read::<H, shared::ChangeRing>(host, &self.names.changes);
            let ring = ring.unwrap_or_default();
            match ring.since(self.epoch.change_seq) {
                shared::CatchUp::Nothing => {}
                shared::CatchUp::Keys(changes) => {
                    let mut dropped = 0u64;
                    Self::withdraw(&mut self.outbox, |key, outcome| {
                        changes
                            .iter()
                            .any(|c| c.key == *key && (!c.created || *outcome == Outcome::Deny))
                    });
                    for c in changes {
                        let removed = if c.created {
                            self.l1.remove_negative(&c.key)
                        } else {
                            self.l1.remove(&c.key)
                        };
                        if removed {
                            dropped = dropped.saturating_add(1);
                        }
                    }
                    host.count(Metric::KeysInvalidated, dropped);
                }
                shared::CatchUp::Everything => {
                    let (p, n) = self.l1.len();
                    host.count(
                        Metric::KeysInvalidated,
                        u64::try_from(p.saturating_add(n)).unwrap_or(u64::MAX),
                    );
                    self.l1.clear();
                    Self::withdraw(&mut self.outbox, |_, _| true);
                }
            }
        }
        if epoch.generation != self.epoch.generation {
            Self::withdraw(&mut self.outbox, |_, _| true);
        }
        self.epoch = epoch;
    }

    /// Answers decided but not yet handed out (see [`MAX_ANSWERS_PER_CALLBACK`]) from a verdict
    /// that the changes feed or a local admin write has since made doubtful become 503s: no
    /// request is answered from a verdict known to have changed, however briefly it waited.
    fn withdraw(
        outbox: &mut VecDeque<(KeyId, Resolution)>,
        changed: impl Fn(&KeyId, &Outcome) -> bool,
    ) {
        for (key, r) in outbox.iter_mut() {
            let from_verdict = matches!(r.outcome, Outcome::Allow { .. } | Outcome::Deny);
            if from_verdict && changed(key, &r.outcome) {
                r.outcome = Outcome::Unavailable;
            }
        }
    }

    fn remember<H: Host + ?Sized>(&mut self, host: &H, key: KeyId, entry: Entry) {
        let evicted = self.l1.insert(key, entry);
        if evicted > 0 {
            host.count(
                Metric::Evictions,
                u64::try_from(evicted).unwrap_or(u64::MAX),
            );
        }
    }

    fn entry_for(&self, verdict: Verdict, now: u64) -> Entry {
        let c = &self.cfg.cache;
        match verdict {
            Verdict::Allow(_) => {
                // Until this Envoy has synced with the feed once, it could miss a revocation that
                // happened before its first poll: keep positive verdicts no longer than a poll.
                let ttl = if self.epoch.revision == 0 {
                    c.ttl_ms.min(self.cfg.sync.interval_ms)
                } else {
                    c.ttl_ms
                };
                let expires_ms = now.saturating_add(ttl);
                Entry {
                    verdict,
                    generation: self.epoch.generation,
                    expires_ms,
                    stale_until_ms: expires_ms.saturating_add(c.stale_if_error_ms),
                }
            }
            Verdict::Deny => {
                let expires_ms = now.saturating_add(c.negative_ttl_ms);
                Entry {
                    verdict,
                    generation: self.epoch.generation,
                    expires_ms,
                    stale_until_ms: expires_ms,
                }
            }
        }
    }

    fn advance<H: Host + ?Sized>(
        &mut self,
        host: &H,
        key: KeyId,
        now: u64,
        out: &mut Vec<(KeyId, Resolution)>,
    ) {
        let Some(p) = self.pending.get(&key) else {
            return;
        };
        let (phase, since_ms) = (p.phase, p.since_ms);
        match phase {
            Phase::Fetching { .. } => {} // the answer, or `expire_calls`, moves it on
            Phase::Queued | Phase::Following => {
                let (slot, cas) = self.table.read(host, &key);
                match shared_table::inspect(&slot, &key, now, self.epoch.generation, since_ms) {
                    View::Fresh(v) => {
                        let entry = v.to_entry();
                        let outcome = Outcome::from_verdict(&entry.verdict, false);
                        self.remember(host, key, entry);
                        self.resolve(key, outcome, out);
                    }
                    View::Pending => {
                        if phase == Phase::Queued {
                            host.count(Metric::LookupsWaitedOnOtherWorker, 1);
                        }
                        self.set_phase(&key, Phase::Following);
                    }
                    View::Failed => {
                        let outcome = self.stale_or(host, &key, now, Outcome::Unavailable);
                        self.resolve(key, outcome, out);
                    }
                    View::Free { takeover } => {
                        let deadline = now.saturating_add(self.lease_ms());
                        match self.table.swap(
                            host,
                            &key,
                            &shared_table::take(&slot, key, self.owner, deadline),
                            cas,
                        ) {
                            Ok(()) => {
                                if takeover {
                                    host.count(Metric::LeaseTakeovers, 1);
                                    log::warn!(
                                        "lease for key {} expired; taken over by worker {}",
                                        key.short(),
                                        self.owner
                                    );
                                }
                                self.start_lookup(host, key, now, true, out);
                            }
                            Err(SharedError::CasMismatch) => {} // someone moved first: look again next tick
                            Err(SharedError::Host) => self.start_lookup(host, key, now, false, out),
                        }
                    }
                    View::Busy => self.start_lookup(host, key, now, false, out),
                }
            }
        }
    }

    fn set_phase(&mut self, key: &KeyId, phase: Phase) {
        if let Some(p) = self.pending.get_mut(key) {
            p.phase = phase;
        }
    }

    fn budget_left<H: Host + ?Sized>(&self, host: &H) -> bool {
        let b = &self.cfg.miss_budget;
        bucket::has_token(host, &self.names.budget, b.per_second, b.burst)
    }

    fn start_lookup<H: Host + ?Sized>(
        &mut self,
        host: &H,
        key: KeyId,
        now: u64,
        leased: bool,
        out: &mut Vec<(KeyId, Resolution)>,
    ) {
        let b = &self.cfg.miss_budget;
        if !bucket::take_token(host, &self.names.budget, b.per_second, b.burst) {
            if leased {
                let _ = self.table.update(host, &key, |s| {
                    Some(shared_table::fail(s, key, self.owner, now))
                });
            }
            let outcome = self.stale_or(host, &key, now, Outcome::Throttled);
            self.resolve(key, outcome, out);
            return;
        }
        let call = Callout {
            path: store::lookup_path(&self.cfg.store.lookup_path, &key),
            timeout_ms: self.cfg.store.timeout_ms,
        };
        match host.http_call(&call) {
            Ok(token) => {
                host.count(Metric::LookupsStarted, 1);
                self.calls.insert(token, Call::Lookup(key));
                let deadline_ms = now.saturating_add(self.lease_ms());
                let phase = Phase::Fetching {
                    started_ms: now,
                    deadline_ms,
                    generation: self.epoch.generation,
                    change_seq: self.epoch.change_seq,
                    leased,
                };
                self.set_phase(&key, phase);
            }
            Err(DispatchError) => {
                log::warn!(
                    "could not dispatch a lookup to cluster {}",
                    self.cfg.store.cluster
                );
                self.fail_lookup(host, key, leased, now, out);
            }
        }
    }

    fn finish_lookup<H: Host + ?Sized>(
        &mut self,
        host: &H,
        key: KeyId,
        answer: LookupAnswer,
        out: &mut Vec<(KeyId, Resolution)>,
    ) {
        let now = host.now_ms();
        let Some(Phase::Fetching {
            generation,
            change_seq,
            leased,
            ..
        }) = self.pending.get(&key).map(|p| p.phase)
        else {
            return;
        };
        self.catch_up(host);
        let verdict = match answer {
            LookupAnswer::Found(identity) => Verdict::Allow(Rc::new(identity)),
            LookupAnswer::NotFound => Verdict::Deny,
            LookupAnswer::Error(e) => {
                log::warn!("store lookup for key {} failed: {e}", key.short());
                self.fail_lookup(host, key, leased, now, out);
                return;
            }
        };
        // A verdict fetched while the key changed (or a local admin write happened) may predate
        // the change: answer the waiting requests with it, but do not cache it.
        let changed = self.epoch.generation != generation
            || (self.epoch.change_seq != change_seq && self.changed_since(host, &key, change_seq));
        let outcome = Outcome::from_verdict(&verdict, false);
        if changed {
            if leased {
                let _ = self
                    .table
                    .update(host, &key, |s| release(s, &key, self.owner));
            }
        } else {
            let entry = self.entry_for(verdict, now);
            let shared_verdict = SlotVerdict::from_entry(key, &entry);
            let _ = self.table.update(host, &key, |s| {
                Some(shared_table::complete(
                    s,
                    self.owner,
                    Some(shared_verdict.clone()),
                    now,
                ))
            });
            self.remember(host, key, entry);
        }
        self.resolve(key, outcome, out);
    }

    /// A lookup failed: waiters on other workers learn it through the lease; ours get a stale
    /// answer or 503. Nothing is cached: a store error is never a deny.
    fn fail_lookup<H: Host + ?Sized>(
        &mut self,
        host: &H,
        key: KeyId,
        leased: bool,
        now: u64,
        out: &mut Vec<(KeyId, Resolution)>,
    ) {
        host.count(Metric::LookupErrors, 1);
        if leased {
            let _ = self.table.update(host, &key, |s| {
                Some(shared_table::fail(s, key, self.owner, now))
            });
        }
        let outcome = self.stale_or(host, &key, now, Outcome::Unavailable);
        self.resolve(key, outcome, out);
    }

    fn changed_since<H: Host + ?Sized>(&self, host: &H, key: &KeyId, seq: u64) -> bool {
        let (ring, _) = shared::read::<H, shared::ChangeRing>(host, &self.names.changes);
        ring.unwrap_or_default().changed_since(key, seq)
    }

    /// Stale-if-error: an expired positive verdict still within its stale window (from the L1,
    /// else the shared table), or `fallback`. Keys the feed reported were removed from both, so
    /// they are never served stale.
    fn stale_or<H: Host + ?Sized>(
        &self,
        host: &H,
        key: &KeyId,
        now: u64,
        fallback: Outcome,
    ) -> Outcome {
        if self.cfg.cache.stale_if_error_ms == 0 {
            return fallback;
        }
        let generation = self.epoch.generation;
        let identity: Option<Rc<Identity>> = self.l1.stale(key, now, generation).or_else(|| {
            let (slot, _) = self.table.read(host, key);
            slot.verdict
                .filter(|v| v.key == *key && now < v.stale_until_ms && v.generation == generation)
                .and_then(|v| v.identity)
                .map(Rc::new)
        });
        match identity {
            Some(identity) => Outcome::Allow {
                identity,
                stale: true,
            },
            None => fallback,
        }
    }

    fn resolve(&mut self, key: KeyId, outcome: Outcome, out: &mut Vec<(KeyId, Resolution)>) {
        let Some(p) = self.pending.remove(&key) else {
            return;
        };
        for w in p.waiters {
            self.parked.remove(&w.context_id);
            out.push((
                key,
                Resolution {
                    context_id: w.context_id,
                    outcome: outcome.clone(),
                },
            ));
        }
    }

    fn expire_waiters<H: Host + ?Sized>(
        &mut self,
        host: &H,
        now: u64,
        out: &mut Vec<(KeyId, Resolution)>,
    ) {
        let mut expired: Vec<(KeyId, u32)> = Vec::new();
        for (key, p) in &self.pending {
            for w in &p.waiters {
                if now >= w.deadline_ms {
                    expired.push((*key, w.context_id));
                }
            }
        }
        for (key, context_id) in expired {
            let outcome = self.stale_or(host, &key, now, Outcome::Unavailable);
            self.parked.remove(&context_id);
            if let Some(p) = self.pending.get_mut(&key) {
                p.waiters.retain(|w| w.context_id != context_id);
                if p.waiters.is_empty() && !matches!(p.phase, Phase::Fetching { .. }) {
                    self.pending.remove(&key);
                }
            }
            log::warn!("request for key {} waited past its deadline", key.short());
            out.push((
                key,
                Resolution {
                    context_id,
                    outcome,
                },
            ));
        }
    }

    /// Lookups and polls whose answer never came (Envoy enforces the callout timeout, so this
    /// only happens when a callout is lost): give up on them so the work can be retried.
    fn expire_calls(&mut self, now: u64) {
        let lost_lookups: Vec<KeyId> = self
            .pending
            .iter()
            .filter_map(|(k, p)| match p.phase {
                Phase::Fetching { deadline_ms, .. } if now >= deadline_ms => Some(*k),
                _ => None,
            })
            .collect();
        for key in lost_lookups {
            self.calls
                .retain(|_, c| !matches!(c, Call::Lookup(k) if *k == key));
            if let Some(p) = self.pending.get_mut(&key) {
                // Back to the start: the lease is past its deadline too, so it will be retaken.
                p.phase = Phase::Queued;
                if p.waiters.is_empty() {
                    self.pending.remove(&key);
                }
            }
        }
        self.calls
            .retain(|_, c| !matches!(c, Call::Sync { deadline_ms, .. } if now >= *deadline_ms));
    }

    fn maybe_sync<H: Host + ?Sized>(&mut self, host: &H, now: u64) {
        if now < self.next_sync_check_ms
            || self.calls.values().any(|c| matches!(c, Call::Sync { .. }))
        {
            return;
        }
        match sync::try_start(host, &self.names, self.owner, self.lease_ms()) {
            Start::NotNow { next_check_ms } => self.next_sync_check_ms = next_check_ms,
            Start::Poll { since } => {
                host.count(Metric::SyncPolls, 1);
                let call = Callout {
                    path: store::changes_path(&self.cfg.store.changes_path, since),
                    timeout_ms: self.cfg.store.timeout_ms,
                };
                match host.http_call(&call) {
                    Ok(token) => {
                        self.calls.insert(
                            token,
                            Call::Sync {
                                since,
                                deadline_ms: now.saturating_add(self.lease_ms()),
                            },
                        );
                    }
                    Err(DispatchError) => {
                        host.count(Metric::SyncErrors, 1);
                        sync::finish(
                            host,
                            &self.names,
                            &self.table,
                            self.owner,
                            None,
                            self.cfg.sync.interval_ms,
                        );
                    }
                }
                self.next_sync_check_ms = now.saturating_add(self.cfg.sync.interval_ms);
            }
        }
    }

    fn idle_tick_ms(&self) -> u32 {
        let quarter = self.cfg.sync.interval_ms / 4;
        u32::try_from(quarter)
            .unwrap_or(IDLE_TICK_MS)
            .clamp(FAST_TICK_MS, IDLE_TICK_MS)
    }

    fn adjust_tick<H: Host + ?Sized>(&mut self, host: &H) {
        let want =
            if !self.outbox.is_empty() || self.pending.values().any(|p| !p.waiters.is_empty()) {
                FAST_TICK_MS
            } else {
                self.idle_tick_ms()
            };
        if want != self.tick_ms {
            self.tick_ms = want;
            host.set_tick_ms(want);
        }
    }
}

/// The slot with our lease on `key` released (no verdict written).
fn release(slot: &shared_table::Slot, key: &KeyId, owner: u64) -> Option<shared_table::Slot> {
    match &slot.lease {
        Some(shared_table::Lease {
            key: k,
            state: shared_table::LeaseState::Held { owner: o, .. },
        }) if k == key && *o == owner => Some(shared_table::Slot {
            verdict: slot.verdict.clone(),
            lease: None,
        }),
        _ => None,
    }
}
