//! The worker: everything one Envoy worker VM knows and decides, over the [`Host`] trait.
//!
//! A request's key id is answered, in order, from: the L1 (this worker's cache), the shared
//! table (verdicts other workers fetched), or a store lookup; [`Source`] says which. A request
//! that needs a lookup becomes a *waiter* ([`crate::worker::single_flight`]): within a worker the
//! waiters on a key share one lookup; across workers, the one that holds the slot's lease asks
//! the store and the others read its verdict from the shared table.
//!
//! When to act is decided here too: a new flight, an outbox still holding answers after a
//! batch, and a finished lookup (for the other workers) ask for a wake-up ([`Host::wake`],
//! [`Host::wake_worker`]: each worker's own shared queue), which runs [`Worker::on_wake`] on
//! the next event-loop iteration; the tick (fast while anything waits) is the fallback.
//!
//! Invariants:
//! - callouts are dispatched only from the root context (`on_tick`, `on_wake`,
//!   `on_http_call_response`), so a lookup belongs to the worker, not to the request that
//!   triggered it; [`Worker::check`] never dispatches;
//! - no answer outlives the changes that happened during its lookup: an answer for a key that
//!   the change ring reported after the lookup was sent (or fetched under an older generation)
//!   is given to nobody and cached nowhere; the key is looked up again;
//! - no request is answered from a verdict the change ring or the generation has since
//!   dropped, even one already decided and waiting in the outbox.
//!
//! This file is the orchestration; [`budget`] holds the miss budget and how the worker applies
//! the freshness rules of [`crate::freshness`], [`feed`] the changes-feed polls and the local
//! admin writes waiting on them,
//! [`usage`] the usage reports (the hit path only flips a flag in the L1 entry).

use std::cell::Cell;
use std::rc::Rc;

use keygate_protocol::KeyId;

use crate::config::Config;
use crate::host::{CallResponse, Callout, DispatchError, Histogram, Host, Metric, SharedError};
use crate::l1::{Entry, L1};
use crate::shared::table::{self as shared_table, SlotVerdict, Table, View, LEASE_GRACE_MS};
use crate::shared::{self, ChangeRing, Epoch, Names, Number};
use crate::store::{self, LookupAnswer};
use crate::verdict::{Decision, Outcome, Resolution, Source, Verdict};

pub mod budget;
pub mod feed;
pub mod single_flight;
pub(crate) mod summary;
pub mod usage;

#[cfg(test)]
mod tests;

use budget::bucket;
use budget::reserve_burst;
use feed::local_writes::Writers;
use single_flight::{Call, Flights, Lookup, Phase};
use usage::report::UsageLog;

/// Tick period while requests wait (the latency of answering from another worker's verdict).
pub const FAST_TICK_MS: u32 = 1;
/// Longest tick period when idle; shorter when the sync interval is short.
pub const IDLE_TICK_MS: u32 = 250;
/// Most waiters answered per root callback; the rest go out in the next one: a wake-up the
/// worker asks for at once ([`Host::wake`], on the next event-loop iteration), or the next tick
/// (1 ms) when it cannot have one.
/// Envoy runs what a resumed request does next (the rest of its filter chain and, for a local
/// reply or a direct response, its response callbacks into this VM) after the VM call, and each
/// of those calls runs the next queued resume before returning: answering k requests at once
/// nests k levels deep. With ~500 at once V8 ran out of stack ("Maximum call stack size
/// exceeded") and trapped the VM; 64 keeps the nesting shallow.
pub const MAX_ANSWERS_PER_CALLBACK: usize = 64;
/// How many of this Envoy's most recent workers (by owner id) a finished lookup wakes; more
/// workers than this see the verdict on their tick instead.
pub const WAKE_WORKERS_MAX: u64 = 16;
/// Polls failing for longer than this many sync intervals put the worker in "feed down" mode:
/// cached allows older than one interval are re-checked by lookup.
pub const FEED_DOWN_INTERVALS: u64 = 3;
/// Local admin writes whose poll failed drop every cached verdict, at most once per this.
pub const DROP_EVERYTHING_EVERY_MS: u64 = 1000;

/// What to do with the response to a local admin write. Always [`WriteDone::Hold`] today (a
/// write that needs no wait would be another variant); the glue matches on it, so that such a
/// variant cannot be added without deciding what the glue does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteDone {
    /// Hold it (pause); [`Worker::take_released_writers`] says when to resume it.
    Hold,
}

pub struct Worker {
    cfg: Rc<Config>,
    names: Rc<Names>,
    table: Table,
    owner: u64,
    l1: L1,
    /// The epoch this worker's L1 is caught up with.
    epoch: Epoch,
    /// The clock (ms) read just before the epoch was last read: requests within the same
    /// millisecond use that read (see [`Worker::check`]).
    epoch_read_ms: u64,
    flights: Flights,
    writers: Writers,
    tick_ms: u32,
    next_sync_check_ms: u64,
    started_ms: u64,
    /// Key ids admitted since the last merge into the Envoy's usage batch.
    usage: UsageLog,
    next_usage_ms: u64,
    /// A wake-up was asked for and has not come yet ([`Worker::on_wake`]).
    wake_pending: bool,
    /// When this worker next looks at the key summary (fetch due? gauges).
    next_summary_check_ms: u64,
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
        bucket::create(host, &names.reserve, reserve_burst(&cfg));
        budget::gate::create(host, &names.gate);
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
            epoch_read_ms: 0,
            flights: Flights::default(),
            writers: Writers::default(),
            tick_ms: 0,
            next_sync_check_ms: 0,
            started_ms: host.now_ms(),
            usage: UsageLog::default(),
            next_usage_ms: 0,
            wake_pending: false,
            next_summary_check_ms: 0,
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

    /// The names of this worker's shared records (the fuzz targets read them).
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The name of this worker's own shared queue, which the glue registers for its root
    /// context and enqueues to when the worker asks for a wake-up ([`Host::wake`]).
    pub fn wake_queue(&self) -> String {
        self.names.wake_queue(self.owner)
    }

    /// How many waiters (paused requests) this worker has.
    pub fn waiters(&self) -> usize {
        self.flights.waiters()
    }

    /// How many local admin writes have their response held.
    pub fn writers_held(&self) -> usize {
        self.writers.held()
    }

    /// Decides a request with key id `key` (context `context_id`). Never calls the store.
    pub fn check<H: Host + ?Sized>(&mut self, host: &H, context_id: u32, key: KeyId) -> Decision {
        let now = host.now_ms();
        // The shared epoch is read at most once per millisecond: held local writers are
        // resumed only in a later millisecond than the one their change was published in
        // (see `local_writes`), so no request after that can use an older read.
        if now != self.epoch_read_ms {
            self.catch_up(host, now);
            host.flush_counts();
        }
        let cutoff = self.allow_cutoff_ms(now);
        if let Some(e) = self
            .l1
            .fresh_entry(&key, now, self.epoch.generation, cutoff)
        {
            // Usage: one flag test per hit; the first hit since the last merge notes the key.
            if !e.used.get()
                && e.verdict.is_allow()
                && self.cfg.usage.enabled
                && self.usage.note(key)
            {
                e.used.set(true);
            }
            let outcome = Outcome::from_verdict(&e.verdict, false);
            tally(host, Source::L1);
            return Decision::Answer(outcome, Source::L1);
        }
        self.miss(host, context_id, key, now, cutoff)
    }

    /// Not in the L1: join a lookup, answer from the shared table, refuse (summary gate or
    /// budget), or wait.
    fn miss<H: Host + ?Sized>(
        &mut self,
        host: &H,
        context_id: u32,
        key: KeyId,
        now: u64,
        cutoff: u64,
    ) -> Decision {
        let deadline_ms = now.saturating_add(self.max_wait_ms());
        if self.flights.join(&key, context_id, deadline_ms) {
            return Decision::Wait;
        }
        let (slot, _) = self.table.read(host, &key);
        match shared_table::inspect(&slot, &key, now, self.epoch.generation, now, cutoff) {
            View::Fresh(v) => {
                let entry = v.to_entry();
                let outcome = Outcome::from_verdict(&entry.verdict, false);
                self.remember(host, key, entry);
                self.note_use(key);
                tally(host, Source::Shared);
                return Decision::Answer(outcome, Source::Shared);
            }
            // This worker would have to ask the store. While the budget runs short, a key
            // the key summary lacks is refused without a lookup or a token.
            View::Free { .. } | View::Busy if self.gate_refuses(host, &key, Some(&slot), now) => {
                host.count(Metric::Misses, 1);
                let outcome = Outcome::UnknownKeyDuringFlood;
                return Decision::Answer(outcome, Source::NoVerdict);
            }
            // With the budget spent, say so now rather than park the request until the tick
            // finds the same (a flood of unknown keys then costs one shared read each, not a
            // pause and a resume).
            View::Free { .. } | View::Busy if !self.budget_left(host, &key, &slot, now) => {
                host.count(Metric::Misses, 1);
                let (outcome, source) = self.stale_or(host, &key, now, Outcome::Throttled);
                return Decision::Answer(outcome, source);
            }
            _ => {}
        }
        host.count(Metric::Misses, 1);
        if cutoff > 0 && self.l1.fresh(&key, now, self.epoch.generation, 0).is_some() {
            host.count(Metric::FeedDownRechecks, 1);
        }
        self.flights.start(key, context_id, deadline_ms, now);
        self.adjust_tick(host);
        // Start the lookup from the root context as soon as the event loop is free, rather
        // than on the next tick (which a burst of arriving requests delays).
        self.ask_wake(host);
        Decision::Wait
    }

    /// A waiter ended before its answer (client gone), or a held writer did: forget it.
    pub fn forget<H: Host + ?Sized>(&mut self, host: &H, context_id: u32) {
        self.flights.forget(context_id);
        self.writers.forget(context_id);
        self.adjust_tick(host);
    }

    /// A local admin write was answered 2xx upstream: hold its response until what it changed
    /// is dropped by every worker of this Envoy. The root polls the changes feed at once (see
    /// [`feed::local_writes`]); when the feed fails, everything is dropped (at most once per
    /// [`DROP_EVERYTHING_EVERY_MS`]).
    pub fn admin_write_done<H: Host + ?Sized>(&mut self, host: &H, context_id: u32) -> WriteDone {
        host.count(Metric::LocalInvalidations, 1);
        self.writers.hold(context_id);
        self.adjust_tick(host);
        WriteDone::Hold
    }

    /// Held writers whose change every worker now knows: the glue resumes their responses.
    pub fn take_released_writers<H: Host + ?Sized>(&mut self, host: &H) -> Vec<u32> {
        let released = self.writers.take_released(host.now_ms());
        self.adjust_tick(host);
        released
    }

    /// The root context's tick: moves flights on, times out waiters, polls the feed.
    pub fn on_tick<H: Host + ?Sized>(&mut self, host: &H) -> Vec<Resolution> {
        let now = host.now_ms();
        self.catch_up(host, now);
        host.flush_counts();
        self.advance_flights(host, now);
        self.expire_waiters(host, now);
        self.expire_calls(now);
        self.maybe_sync(host, now);
        self.drive_writers(host, now);
        self.drive_usage(host, now);
        self.drive_summary(host, now);
        self.report_sync_lag(host, now);
        self.report_budget(host);
        self.deliver(host)
    }

    /// A callout's answer (dispatched by this worker's root context).
    pub fn on_call_response<H: Host + ?Sized>(
        &mut self,
        host: &H,
        token: u32,
        response: &CallResponse,
    ) -> Vec<Resolution> {
        match self.flights.take_call(token) {
            None => {} // given up on already (its deadline passed)
            Some(Call::Lookup(key)) => {
                if let Some(Phase::LookingUp(f)) = self.flights.phase(&key) {
                    let took = host.now_ms().saturating_sub(f.started_ms);
                    host.record(Histogram::LookupMs, took);
                }
                let answer = store::parse_lookup(response, &self.cfg.identity_headers.claims);
                self.finish_lookup(host, key, answer);
            }
            Some(Call::Poll { since, forced, .. }) => {
                self.finish_poll(host, since, forced, response);
            }
            Some(Call::Usage { ids, .. }) => self.finish_usage(host, ids, response),
            Some(Call::Summary { ticket, .. }) => self.finish_summary(host, ticket, response),
        }
        self.deliver(host)
    }

    /// The wake-up this worker asked for ([`Host::wake`]): new flights start their lookup,
    /// and the next batch of answers goes out.
    pub fn on_wake<H: Host + ?Sized>(&mut self, host: &H) -> Vec<Resolution> {
        self.wake_pending = false;
        let now = host.now_ms();
        self.catch_up(host, now);
        // A lookup started here may be a feed-down re-check: the lag that decided it is
        // reported before its answer, as the tick would have.
        self.report_sync_lag(host, now);
        self.advance_flights(host, now);
        self.deliver(host)
    }

    /// Asks for a wake-up unless one is pending.
    fn ask_wake<H: Host + ?Sized>(&mut self, host: &H) {
        if !self.wake_pending {
            self.wake_pending = host.wake();
        }
    }

    fn advance_flights<H: Host + ?Sized>(&mut self, host: &H, now: u64) {
        for (key, phase, since_ms) in self.flights.snapshot() {
            self.advance(host, key, phase, since_ms, now);
        }
    }

    /// Hands out at most [`MAX_ANSWERS_PER_CALLBACK`] answers from the outbox, counted by
    /// source. When more remain, asks for a wake-up to hand out the next batch (one pending
    /// at a time); a non-empty outbox also keeps the tick fast, the fallback.
    fn deliver<H: Host + ?Sized>(&mut self, host: &H) -> Vec<Resolution> {
        let mut out = self.flights.deliver(MAX_ANSWERS_PER_CALLBACK);
        if self.flights.outbox_len() == 0 {
            // A wake-up lost on the way must not block the next ones.
            self.wake_pending = false;
        } else {
            self.ask_wake(host);
        }
        let now = host.now_ms();
        for r in &mut out {
            // An allow that waited in the outbox past the key's expiry is not given.
            if matches!(&r.outcome, Outcome::Allow { identity, .. } if identity.expired(now)) {
                r.outcome = Outcome::Deny;
            }
            tally(host, r.source);
        }
        self.adjust_tick(host);
        out
    }

    // ---- lookups ----

    /// Moves a queued or following flight on: answer from the slot, follow, or look up.
    fn advance<H: Host + ?Sized>(
        &mut self,
        host: &H,
        key: KeyId,
        phase: Phase,
        since_ms: u64,
        now: u64,
    ) {
        if matches!(phase, Phase::LookingUp(_)) {
            return; // the answer, or `expire_calls`, moves it on
        }
        let cutoff = self.allow_cutoff_ms(now);
        let (slot, cas) = self.table.read(host, &key);
        let generation = self.epoch.generation;
        match shared_table::inspect(&slot, &key, now, generation, since_ms, cutoff) {
            View::Fresh(v) => {
                let entry = v.to_entry();
                let outcome = Outcome::from_verdict(&entry.verdict, false);
                self.remember(host, key, entry);
                self.note_use(key);
                self.flights.resolve(&key, &outcome, Source::Shared);
            }
            View::Pending => {
                if phase == Phase::Queued {
                    host.count(Metric::LookupsWaitedOnOtherWorker, 1);
                }
                self.flights.set_phase(&key, Phase::Following);
            }
            View::Failed => {
                let (outcome, source) = self.stale_or(host, &key, now, Outcome::Unavailable);
                self.flights.resolve(&key, &outcome, source);
            }
            View::Free { takeover } => {
                let deadline = now.saturating_add(self.lease_ms());
                let lease = shared_table::take(&slot, key, self.owner, deadline);
                match self.table.swap(host, &key, &lease, cas) {
                    Ok(()) => {
                        if takeover {
                            host.count(Metric::LeaseTakeovers, 1);
                            log::warn!(
                                "lease for key {} expired; taken over by worker {}",
                                key.short(),
                                self.owner
                            );
                        }
                        self.start_lookup(host, key, now, true);
                    }
                    Err(SharedError::CasMismatch) => {} // someone moved first: next tick
                    Err(SharedError::Host) => self.start_lookup(host, key, now, false),
                }
            }
            View::Busy => self.start_lookup(host, key, now, false),
        }
    }

    fn start_lookup<H: Host + ?Sized>(&mut self, host: &H, key: KeyId, now: u64, leased: bool) {
        if self.gate_refuses(host, &key, None, now) {
            // Released, not failed: another worker's waiters decide for themselves.
            if leased {
                let _ = self
                    .table
                    .update(host, &key, |s| shared_table::release(s, &key, self.owner));
            }
            let outcome = Outcome::UnknownKeyDuringFlood;
            self.flights.resolve(&key, &outcome, Source::NoVerdict);
            return;
        }
        let Some(reserve) = self.take_budget(host, &key, now) else {
            if leased {
                let _ = self.table.update(host, &key, |s| {
                    Some(shared_table::fail(s, key, self.owner, now))
                });
            }
            let (outcome, source) = self.stale_or(host, &key, now, Outcome::Throttled);
            self.flights.resolve(&key, &outcome, source);
            return;
        };
        let call = Callout::get(
            store::lookup_path(&self.cfg.store.lookup_path, &key),
            self.cfg.store.timeout_ms,
        );
        match host.http_call(&call) {
            Ok(token) => {
                host.count(Metric::LookupsStarted, 1);
                if reserve {
                    host.count(Metric::ReserveLookups, 1);
                }
                let lookup = Lookup {
                    started_ms: now,
                    deadline_ms: now.saturating_add(self.lease_ms()),
                    generation: self.epoch.generation,
                    change_seq: self.epoch.change_seq,
                    leased,
                    reserve,
                };
                self.flights.dispatched(key, token, lookup);
            }
            Err(DispatchError) => {
                log::warn!(
                    "could not dispatch a lookup to cluster {}",
                    self.cfg.store.cluster
                );
                self.fail_lookup(host, key, leased, now);
            }
        }
    }

    /// The store answered a lookup of ours. An answer from before a change of the key (or of
    /// the generation) is given to nobody: the key is looked up again.
    fn finish_lookup<H: Host + ?Sized>(&mut self, host: &H, key: KeyId, answer: LookupAnswer) {
        let Some(Phase::LookingUp(lookup)) = self.flights.phase(&key) else {
            return;
        };
        let now = host.now_ms();
        self.catch_up(host, now);
        let verdict = match answer {
            // Expired by our clock although the store still allowed it (clocks differ): the
            // expiry wins.
            LookupAnswer::Found(identity) if identity.expired(now) => Verdict::Deny,
            LookupAnswer::Found(identity) => Verdict::Allow(Rc::new(identity)),
            LookupAnswer::NotFound => Verdict::Deny,
            LookupAnswer::Error(e) => {
                log::warn!("store lookup for key {} failed: {e}", key.short());
                self.fail_lookup(host, key, lookup.leased, now);
                return;
            }
        };
        let entry = self.entry_for(verdict, now, lookup.generation);
        let allow = entry.verdict.is_allow();
        if self.outdated(host, &key, &lookup, allow)
            || !self.share_verdict(host, key, &entry, &lookup, now)
        {
            self.retry(host, key, &lookup);
            return;
        }
        let outcome = Outcome::from_verdict(&entry.verdict, false);
        self.remember(host, key, entry);
        self.note_use(key);
        self.flights.resolve(&key, &outcome, Source::Lookup);
        self.wake_followers(host);
    }

    /// The key's slot now holds a verdict (or a failed lease) that other workers of this Envoy
    /// may be waiting for: wake them, so that they answer now rather than on their next tick.
    /// Workers are known by owner id only, so this wakes the most recent ones (a stale id
    /// names a queue nobody registered, or one whose root finds nothing to do).
    fn wake_followers<H: Host + ?Sized>(&self, host: &H) {
        let (count, _) = shared::read::<H, Number>(host, &self.names.owners);
        let last = count.map_or(0, |c| c.0);
        let first = last.saturating_sub(WAKE_WORKERS_MAX - 1).max(1);
        for owner in (first..=last).filter(|o| *o != self.owner) {
            host.wake_worker(&self.names.wake_queue(owner));
        }
    }

    /// Whether the key (or everything) changed since `lookup` was sent, as far as this worker
    /// has caught up, so that its answer (`allow` or not) may predate the change.
    fn outdated<H: Host + ?Sized>(
        &self,
        host: &H,
        key: &KeyId,
        lookup: &Lookup,
        allow: bool,
    ) -> bool {
        self.epoch.generation != lookup.generation
            || (self.epoch.change_seq != lookup.change_seq
                && outdates(host, &self.names, key, lookup.change_seq, allow))
    }

    /// Writes the verdict into the key's slot, unless the change ring reported the key after
    /// the lookup was sent: that is checked inside the CAS loop, after reading the slot, so a
    /// feed page published meanwhile (which writes every reported key's slot after pushing it
    /// to the ring) makes the write fail and be re-decided. False when the key changed.
    fn share_verdict<H: Host + ?Sized>(
        &self,
        host: &H,
        key: KeyId,
        entry: &Entry,
        lookup: &Lookup,
        now: u64,
    ) -> bool {
        let changed = Cell::new(false);
        let allow = entry.verdict.is_allow();
        let seq = lookup.change_seq;
        let shared_verdict = SlotVerdict::from_entry(key, entry);
        let written = self.table.update(host, &key, |s| {
            changed.set(outdates(host, &self.names, &key, seq, allow));
            if changed.get() {
                return shared_table::release(s, &key, self.owner);
            }
            let v = Some(shared_verdict.clone());
            Some(shared_table::complete(s, self.owner, v, now))
        });
        if written.is_err() {
            // The slot could not be written: answer only if the ring is still silent.
            return !outdates(host, &self.names, &key, seq, allow);
        }
        !changed.get()
    }

    /// An answer went to nobody: release the lease and look the key up again; the waiters
    /// stay (within their deadline).
    fn retry<H: Host + ?Sized>(&mut self, host: &H, key: KeyId, lookup: &Lookup) {
        host.count(Metric::LookupsOutdated, 1);
        log::info!(
            "lookup for key {} answered after the key changed: looking it up again",
            key.short()
        );
        if lookup.leased {
            let _ = self
                .table
                .update(host, &key, |s| shared_table::release(s, &key, self.owner));
        }
        self.flights.requeue(&key);
        self.adjust_tick(host);
    }

    /// A lookup failed: waiters on other workers learn it through the lease; ours get a stale
    /// answer or 503. Nothing is cached: a store error is never a deny.
    fn fail_lookup<H: Host + ?Sized>(&mut self, host: &H, key: KeyId, leased: bool, now: u64) {
        host.count(Metric::LookupErrors, 1);
        if leased {
            let _ = self.table.update(host, &key, |s| {
                Some(shared_table::fail(s, key, self.owner, now))
            });
            self.wake_followers(host);
        }
        let (outcome, source) = self.stale_or(host, &key, now, Outcome::Unavailable);
        self.flights.resolve(&key, &outcome, source);
    }

    fn expire_waiters<H: Host + ?Sized>(&mut self, host: &H, now: u64) {
        for (key, context_id) in self.flights.take_expired(now) {
            let (outcome, source) = self.stale_or(host, &key, now, Outcome::Unavailable);
            log::warn!("request for key {} waited past its deadline", key.short());
            let r = Resolution {
                context_id,
                outcome,
                source,
            };
            self.flights.answer(key, r);
        }
    }

    /// Lookups and polls whose answer never came (Envoy enforces the callout timeout, so this
    /// only happens when a callout is lost): give up on them so the work can be retried.
    fn expire_calls(&mut self, now: u64) {
        for key in self.flights.lost_lookups(now) {
            // Back to the start: the lease is past its deadline too, so it will be retaken.
            self.flights.requeue(&key);
        }
        let forced_before = self.flights.polls_in_flight(true);
        self.flights.expire_polls(now);
        if forced_before && !self.flights.polls_in_flight(true) {
            self.writers.poll_finished(None);
        }
    }

    // ---- timing ----

    /// Longest a request waits for a verdict: our lookup, or another worker's lease running out
    /// and then our own lookup.
    fn max_wait_ms(&self) -> u64 {
        self.lease_ms().saturating_mul(2).saturating_add(50)
    }

    fn lease_ms(&self) -> u64 {
        self.cfg.store.timeout_ms.saturating_add(LEASE_GRACE_MS)
    }

    fn idle_tick_ms(&self) -> u32 {
        let quarter = self.cfg.sync.interval_ms / 4;
        u32::try_from(quarter)
            .unwrap_or(IDLE_TICK_MS)
            .clamp(FAST_TICK_MS, IDLE_TICK_MS)
    }

    fn adjust_tick<H: Host + ?Sized>(&mut self, host: &H) {
        let want = if self.flights.busy() || self.writers.busy() {
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

/// Counts an answer by where it came from: the one place these metrics are counted.
fn tally<H: Host + ?Sized>(host: &H, source: Source) {
    let metric = match source {
        Source::L1 => Metric::L1Hits,
        Source::Shared => Metric::SharedHits,
        Source::Coalesced => Metric::LookupsCoalesced,
        Source::Lookup | Source::Stale | Source::NoVerdict => return,
    };
    host.count(metric, 1);
}

/// Whether the change ring reported a change of `key` after sequence `seq` that a verdict
/// (`allow` or not) fetched before it may predate (see [`ChangeRing::outdates`]).
fn outdates<H: Host + ?Sized>(host: &H, names: &Names, key: &KeyId, seq: u64, allow: bool) -> bool {
    let (ring, _) = shared::read::<H, ChangeRing>(host, &names.changes);
    ring.unwrap_or_default().outdates(key, seq, allow)
}
