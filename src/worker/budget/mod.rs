//! The worker's side of freshness: catching up with the shared epoch and change ring, the
//! "feed down" cutoff for cached allows, stale-if-error, cache entries; and the miss budget with
//! its reserve for keys that were valid recently, and the summary gate in front of it
//! ([`gate`]: while the budget runs short, keys the key summary lacks are refused without a
//! lookup). The rules themselves (when a verdict may answer, be served stale, or is outdated by
//! a change) are [`crate::freshness`]'s: this module applies them and compares no stamps itself.

pub mod bucket;
pub mod gate;

use std::rc::Rc;

use super::{Worker, FEED_DOWN_INTERVALS};
use keygate_protocol::KeyId;

use crate::config::Config;
use crate::freshness::Stamp;
use crate::host::{Gauge, Host, Metric};
use crate::l1::Entry;
use crate::shared::table as shared_table;
use crate::shared::{self, ChangeRing, Epoch};
use crate::summary::Membership;
use crate::verdict::{Identity, Outcome, Source, Verdict};
use gate::{Action, Limits};

impl Worker {
    // ---- the miss budget ----

    /// Whether a lookup for `key` (whose slot reads `slot`) could take a token now (a read;
    /// nothing is taken).
    pub(super) fn budget_left<H: Host + ?Sized>(
        &self,
        host: &H,
        key: &KeyId,
        slot: &shared_table::Slot,
        now: u64,
    ) -> bool {
        let b = &self.cfg.miss_budget;
        bucket::has_token(host, &self.names.budget, b.per_second, b.burst)
            || (b.reserve_per_second > 0
                && self.stale_identity_in(key, slot, now).is_some()
                && bucket::has_token(
                    host,
                    &self.names.reserve,
                    b.reserve_per_second,
                    reserve_burst(&self.cfg),
                ))
    }

    /// Reports the time since the last good poll (`keygate_sync_lag_ms`).
    pub(super) fn report_sync_lag<H: Host + ?Sized>(&self, host: &H, now: u64) {
        host.gauge(Gauge::SyncLagMs, now.saturating_sub(self.synced_ms()));
    }

    /// Reports the miss budget's and the reserve's levels (on the tick: two shared reads).
    pub(super) fn report_budget<H: Host + ?Sized>(&self, host: &H) {
        let b = &self.cfg.miss_budget;
        let main = bucket::level(host, &self.names.budget, b.per_second, b.burst);
        host.gauge(Gauge::MissBudgetTokens, main);
        let reserve = match b.reserve_per_second {
            0 => 0,
            r => bucket::level(host, &self.names.reserve, r, reserve_burst(&self.cfg)),
        };
        host.gauge(Gauge::MissReserveTokens, reserve);
        let engaged = gate::engaged(host, &self.names.gate, b.per_second);
        host.gauge(Gauge::SummaryGateEngaged, u64::from(engaged));
    }

    /// The summary gate on a miss of `key` that needs a lookup (`slot`: its slot, when already
    /// read): true when it is refused without one (counted in
    /// `keygate_summary_refusals_total`). Asks the bucket only while the gate is open, and the
    /// summary only while it is engaged; with `summary.enabled` off, nothing (no gate).
    pub(super) fn gate_refuses<H: Host + ?Sized>(
        &self,
        host: &H,
        key: &KeyId,
        slot: Option<&shared_table::Slot>,
        now: u64,
    ) -> bool {
        if !self.cfg.summary.enabled {
            return false;
        }
        let b = &self.cfg.miss_budget;
        let limits = Limits {
            per_second: b.per_second,
            burst: b.burst,
        };
        let mut miss = GateMiss {
            worker: self,
            host,
            key,
            slot,
            now,
            recently_valid: None,
            membership: None,
        };
        let refused = gate::on_miss(host, &self.names.gate, limits, &mut miss) == Action::Refuse;
        if refused {
            host.count(Metric::SummaryRefusals, 1);
        }
        refused
    }

    /// Takes a token for a lookup of `key`: a key valid recently draws from the reserve first
    /// (a flood of new keys cannot lock it out), then, like any key, from the main bucket.
    /// `Some(true)`: taken from the reserve; `Some(false)`: from the main bucket; `None`: the
    /// budget is spent.
    pub(super) fn take_budget<H: Host + ?Sized>(
        &self,
        host: &H,
        key: &KeyId,
        now: u64,
    ) -> Option<bool> {
        let b = &self.cfg.miss_budget;
        let reserve = b.reserve_per_second > 0
            && self.recently_valid(host, key, now)
            && bucket::take_token(
                host,
                &self.names.reserve,
                b.reserve_per_second,
                reserve_burst(&self.cfg),
            );
        if reserve {
            return Some(true);
        }
        bucket::take_token(host, &self.names.budget, b.per_second, b.burst).then_some(false)
    }

    /// Whether `key` had an allow recently: an expired (or feed-down re-checked) identity still
    /// within its stale-if-error window, in the L1 or the shared table.
    pub(super) fn recently_valid<H: Host + ?Sized>(&self, host: &H, key: &KeyId, now: u64) -> bool {
        self.stale_identity(host, key, now).is_some()
    }

    // ---- freshness ----

    /// Applies what changed in the shared epoch since this worker last looked. `now` is the
    /// clock read before this call (it tags the read; see [`Worker::check`]).
    pub(super) fn catch_up<H: Host + ?Sized>(&mut self, host: &H, now: u64) {
        self.epoch_read_ms = now;
        let (epoch, _) = shared::read::<H, Epoch>(host, &self.names.epoch);
        let epoch = epoch.unwrap_or_default();
        if epoch == self.epoch {
            return;
        }
        if epoch.change_seq != self.epoch.change_seq {
            self.drop_changed(host);
        }
        if epoch.generation != self.epoch.generation {
            self.flights.withdraw(|_, _| true);
        }
        self.epoch = epoch;
    }

    /// Drops from the L1 (and withdraws from the outbox) what the change ring reported since
    /// this worker last looked.
    pub(super) fn drop_changed<H: Host + ?Sized>(&mut self, host: &H) {
        let (ring, _) = shared::read::<H, ChangeRing>(host, &self.names.changes);
        let ring = ring.unwrap_or_default();
        match ring.since(self.epoch.change_seq) {
            shared::CatchUp::Nothing => {}
            shared::CatchUp::Keys(changes) => {
                let mut dropped = 0u64;
                // Withdrawn: answers from a verdict (an allow, a deny) and the summary gate's
                // refusals (a created key is no longer unknown).
                self.flights.withdraw(|key, outcome| {
                    let allow = matches!(outcome, Outcome::Allow { .. });
                    changes.iter().any(|c| c.outdates(key, allow))
                });
                for c in changes {
                    let removed = self.l1.drop_outdated(c);
                    dropped = dropped.saturating_add(u64::from(removed));
                }
                host.count(Metric::KeysInvalidated, dropped);
            }
            shared::CatchUp::Everything => {
                let (p, n) = self.l1.len();
                let all = u64::try_from(p.saturating_add(n)).unwrap_or(u64::MAX);
                host.count(Metric::KeysInvalidated, all);
                self.l1.clear();
                self.flights.withdraw(|_, _| true);
            }
        }
    }

    /// When the feed was last polled successfully (this worker's start if never).
    pub(super) fn synced_ms(&self) -> u64 {
        self.epoch.synced_ms.max(self.started_ms)
    }

    /// While polls have failed for longer than [`FEED_DOWN_INTERVALS`] intervals, an allow
    /// fetched more than one interval ago is re-checked by lookup: revocation then stays within
    /// about one interval through lookups alone. 0 (no cutoff) while the feed works.
    pub(super) fn allow_cutoff_ms(&self, now: u64) -> u64 {
        let interval = self.cfg.sync.interval_ms;
        let lag = now.saturating_sub(self.synced_ms());
        if lag > interval.saturating_mul(FEED_DOWN_INTERVALS) {
            now.saturating_sub(interval)
        } else {
            0
        }
    }

    /// Stale-if-error: an expired positive verdict still within its stale window (from the L1,
    /// else the shared table), or `fallback`. Keys the feed reported were removed from both, so
    /// they are never served stale.
    pub(super) fn stale_or<H: Host + ?Sized>(
        &self,
        host: &H,
        key: &KeyId,
        now: u64,
        fallback: Outcome,
    ) -> (Outcome, Source) {
        if self.cfg.cache.stale_if_error_ms == 0 {
            return (fallback, Source::NoVerdict);
        }
        match self.stale_identity(host, key, now) {
            Some(identity) => (
                Outcome::Allow {
                    identity,
                    stale: true,
                },
                Source::Stale,
            ),
            None => (fallback, Source::NoVerdict),
        }
    }

    pub(super) fn stale_identity<H: Host + ?Sized>(
        &self,
        host: &H,
        key: &KeyId,
        now: u64,
    ) -> Option<Rc<Identity>> {
        let generation = self.epoch.generation;
        self.l1.stale(key, now, generation).or_else(|| {
            let (slot, _) = self.table.read(host, key);
            slot_stale_identity(&slot, key, now, generation)
        })
    }

    /// [`Worker::stale_identity`] with the slot already read.
    pub(super) fn stale_identity_in(
        &self,
        key: &KeyId,
        slot: &shared_table::Slot,
        now: u64,
    ) -> Option<Rc<Identity>> {
        let generation = self.epoch.generation;
        self.l1
            .stale(key, now, generation)
            .or_else(|| slot_stale_identity(slot, key, now, generation))
    }

    pub(super) fn remember<H: Host + ?Sized>(&mut self, host: &H, key: KeyId, entry: Entry) {
        let evicted = self.l1.insert(key, entry);
        if evicted > 0 {
            host.count(
                Metric::Evictions,
                u64::try_from(evicted).unwrap_or(u64::MAX),
            );
        }
    }

    /// The cache entry for a verdict the store gave at `now`, for a lookup sent under
    /// `generation` (an entry of an older generation is never answered with).
    pub(super) fn entry_for(&self, verdict: Verdict, now: u64, generation: u64) -> Entry {
        let c = &self.cfg.cache;
        let (ttl, stale_ms) = if verdict.is_allow() {
            (c.ttl_ms, c.stale_if_error_ms)
        } else {
            (c.negative_ttl_ms, 0)
        };
        // Until this Envoy has synced with the feed once, it could miss a change that happened
        // before its first poll (a first poll, `since=0`, only tells the current revision): a
        // revocation, or the creation of a key it just cached as unknown. Keep verdicts no
        // longer than a poll. Synced means a page was published (`synced_ms`), not a revision
        // past 0: a store that has never changed is at revision 0.
        let ttl = if self.epoch.synced_ms == 0 {
            ttl.min(self.cfg.sync.interval_ms)
        } else {
            ttl
        };
        // A key's own expiry caps both the TTL and the stale window: nothing allows it past
        // `expires_at`, whatever `cache.ttl_s` and stale-if-error say.
        let key_expiry = match &verdict {
            Verdict::Allow(identity) => identity.expires_ms.unwrap_or(u64::MAX),
            Verdict::Deny => u64::MAX,
        };
        Entry {
            verdict,
            stamp: Stamp::issue(generation, now, ttl, stale_ms, key_expiry),
            used: std::cell::Cell::new(false),
        }
    }
}

/// The identity of an allow for `key` in `slot` that may be served stale
/// ([`Stamp::may_serve_stale`]).
fn slot_stale_identity(
    slot: &shared_table::Slot,
    key: &KeyId,
    now: u64,
    generation: u64,
) -> Option<Rc<Identity>> {
    let v = slot.verdict_for(key)?;
    let identity = v.identity.as_ref()?;
    v.stamp
        .may_serve_stale(true, now, generation)
        .then(|| Rc::new(identity.clone()))
}

/// The reserve's bucket size: two seconds of its rate.
pub(super) fn reserve_burst(cfg: &Config) -> u64 {
    cfg.miss_budget.reserve_per_second.saturating_mul(2).max(1)
}

/// What the summary gate asks about one miss, read from the worker's caches and shared data;
/// the key's answers are kept across CAS retries.
struct GateMiss<'a, H: Host + ?Sized> {
    worker: &'a Worker,
    host: &'a H,
    key: &'a KeyId,
    slot: Option<&'a shared_table::Slot>,
    now: u64,
    recently_valid: Option<bool>,
    membership: Option<Membership>,
}

impl<H: Host + ?Sized> gate::Miss for GateMiss<'_, H> {
    fn main_tokens(&mut self) -> u64 {
        let b = &self.worker.cfg.miss_budget;
        bucket::level(self.host, &self.worker.names.budget, b.per_second, b.burst)
    }

    fn recently_valid(&mut self) -> bool {
        let (w, key, now) = (self.worker, self.key, self.now);
        *self.recently_valid.get_or_insert_with(|| match self.slot {
            Some(slot) => w.stale_identity_in(key, slot, now).is_some(),
            None => w.recently_valid(self.host, key, now),
        })
    }

    fn membership(&mut self) -> Membership {
        let (w, host, key) = (self.worker, self.host, self.key);
        *self
            .membership
            .get_or_insert_with(|| w.membership(host, key))
    }
}
