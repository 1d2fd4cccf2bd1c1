//! Single-flight bookkeeping of one worker: the lookups in flight (one per key), the waiters
//! (paused requests) on each, the callout tokens and the outbox of decided answers.
//!
//! Invariant, kept by every operation here: a waiter is in exactly one place, either in the
//! flight of its key or in the outbox, and [`Flights::waiters`] counts both; a flight without
//! waiters exists only while its lookup is in flight (its verdict still fills the caches);
//! every callout token maps to one flight or one other call (a poll, a usage report, a
//! summary fetch). The worker decides *what* to answer;
//! this module only keeps track of *who* waits for what.

use std::collections::{HashMap, VecDeque};

use keygate_protocol::KeyId;

use crate::verdict::{Outcome, Resolution, Source};

/// A waiting request: its context, when it gives up, and how it joined.
#[derive(Debug, Clone, Copy)]
struct Waiter {
    context_id: u32,
    deadline_ms: u64,
    /// Joined a flight another request started (reported as [`Source::Coalesced`]).
    coalesced: bool,
}

/// Where a flight stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Decide on the next wake-up or tick: read the slot, follow or take the lease.
    Queued,
    /// Another worker holds the lease: wait for its verdict in the slot.
    Following,
    /// This worker asked the store (`leased`: under the slot's lease).
    LookingUp(Lookup),
}

/// A lookup this worker sent: when, under which lease, and what the caches knew then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lookup {
    pub started_ms: u64,
    pub deadline_ms: u64,
    /// The shared generation when the lookup was sent.
    pub generation: u64,
    /// The change ring's sequence when the lookup was sent: a report of the key after it
    /// makes the answer worthless (it may predate the change).
    pub change_seq: u64,
    pub leased: bool,
    /// Drawn from the revalidation reserve of the miss budget.
    pub reserve: bool,
}

#[derive(Debug)]
struct Flight {
    waiters: Vec<Waiter>,
    phase: Phase,
    /// When the first waiter arrived: a lease failure older than this is not ours.
    since_ms: u64,
}

/// What a callout token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Lookup(KeyId),
    /// A usage report of these key ids (see [`crate::worker::usage::report`]).
    Usage {
        ids: Vec<KeyId>,
        deadline_ms: u64,
    },
    /// A key summary fetch for an install (see [`crate::summary::install`]).
    Summary {
        ticket: crate::summary::install::Ticket,
        deadline_ms: u64,
    },
    /// A changes-feed poll from `since`; `forced` when sent for local admin writes.
    Poll {
        since: u64,
        deadline_ms: u64,
        forced: bool,
    },
}

#[derive(Debug, Default)]
pub struct Flights {
    flights: HashMap<KeyId, Flight>,
    /// Waiter context id → its key (while in a flight).
    index: HashMap<u32, KeyId>,
    calls: HashMap<u32, Call>,
    /// Answers decided but not yet handed to the glue, with their key.
    outbox: VecDeque<(KeyId, Resolution)>,
}

impl Flights {
    /// Waiting requests, in flights and in the outbox.
    pub fn waiters(&self) -> usize {
        self.index.len().saturating_add(self.outbox.len())
    }

    /// Answers decided and not handed out yet.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Whether anything waits (the root must tick fast).
    pub fn busy(&self) -> bool {
        !self.outbox.is_empty() || !self.index.is_empty()
    }

    /// Adds a waiter to the flight of `key` if there is one; false when there is none.
    pub fn join(&mut self, key: &KeyId, context_id: u32, deadline_ms: u64) -> bool {
        let Some(f) = self.flights.get_mut(key) else {
            return false;
        };
        f.waiters.push(Waiter {
            context_id,
            deadline_ms,
            coalesced: true,
        });
        self.index.insert(context_id, *key);
        true
    }

    /// Starts a flight for `key` with its first waiter (queued for the next wake-up or tick).
    pub fn start(&mut self, key: KeyId, context_id: u32, deadline_ms: u64, now_ms: u64) {
        let waiter = Waiter {
            context_id,
            deadline_ms,
            coalesced: false,
        };
        self.flights.insert(
            key,
            Flight {
                waiters: vec![waiter],
                phase: Phase::Queued,
                since_ms: now_ms,
            },
        );
        self.index.insert(context_id, key);
    }

    /// The keys with a flight, and each one's phase and start.
    pub fn snapshot(&self) -> Vec<(KeyId, Phase, u64)> {
        self.flights
            .iter()
            .map(|(k, f)| (*k, f.phase, f.since_ms))
            .collect()
    }

    pub fn phase(&self, key: &KeyId) -> Option<Phase> {
        self.flights.get(key).map(|f| f.phase)
    }

    pub fn set_phase(&mut self, key: &KeyId, phase: Phase) {
        if let Some(f) = self.flights.get_mut(key) {
            f.phase = phase;
        }
    }

    /// A lookup for `key` was sent as callout `token`.
    pub fn dispatched(&mut self, key: KeyId, token: u32, lookup: Lookup) {
        self.calls.insert(token, Call::Lookup(key));
        self.set_phase(&key, Phase::LookingUp(lookup));
    }

    /// A poll was sent as callout `token`.
    pub fn polling(&mut self, token: u32, call: Call) {
        self.calls.insert(token, call);
    }

    pub fn polls_in_flight(&self, forced: bool) -> bool {
        self.calls
            .values()
            .any(|c| matches!(c, Call::Poll { forced: f, .. } if *f == forced))
    }

    /// Whether a key summary fetch is in flight.
    pub fn summary_in_flight(&self) -> bool {
        self.calls
            .values()
            .any(|c| matches!(c, Call::Summary { .. }))
    }

    /// What a token stands for.
    pub fn call(&self, token: u32) -> Option<&Call> {
        self.calls.get(&token)
    }

    /// The call a token stood for, forgotten.
    pub fn take_call(&mut self, token: u32) -> Option<Call> {
        self.calls.remove(&token)
    }

    /// Back to the start (the answer was lost or is worthless): the waiters stay and the key
    /// is looked at again on the next tick; a flight nobody waits for any more ends.
    pub fn requeue(&mut self, key: &KeyId) {
        self.calls
            .retain(|_, c| !matches!(c, Call::Lookup(k) if k == key));
        if let Some(f) = self.flights.get_mut(key) {
            f.phase = Phase::Queued;
            if f.waiters.is_empty() {
                self.flights.remove(key);
            }
        }
    }

    /// Ends the flight of `key`: every waiter gets `outcome`, from `source` (joiners: coalesced).
    pub fn resolve(&mut self, key: &KeyId, outcome: &Outcome, source: Source) {
        let Some(f) = self.flights.remove(key) else {
            return;
        };
        for w in f.waiters {
            self.index.remove(&w.context_id);
            let source = if w.coalesced && source == Source::Lookup {
                Source::Coalesced
            } else {
                source
            };
            self.outbox.push_back((
                *key,
                Resolution {
                    context_id: w.context_id,
                    outcome: outcome.clone(),
                    source,
                },
            ));
        }
    }

    /// Waiters past their deadline, taken out of their flights (a flight left without waiters
    /// ends unless its lookup is in flight).
    pub fn take_expired(&mut self, now_ms: u64) -> Vec<(KeyId, u32)> {
        let mut expired = Vec::new();
        for (key, f) in self.flights.iter_mut() {
            f.waiters.retain(|w| {
                let late = now_ms >= w.deadline_ms;
                if late {
                    expired.push((*key, w.context_id));
                }
                !late
            });
        }
        for (_, context_id) in &expired {
            self.index.remove(context_id);
        }
        self.flights
            .retain(|_, f| !f.waiters.is_empty() || matches!(f.phase, Phase::LookingUp(_)));
        expired
    }

    /// Queues one answer for a waiter already taken out of its flight.
    pub fn answer(&mut self, key: KeyId, resolution: Resolution) {
        self.outbox.push_back((key, resolution));
    }

    /// Lookups whose answer never came by their deadline.
    pub fn lost_lookups(&self, now_ms: u64) -> Vec<KeyId> {
        self.flights
            .iter()
            .filter_map(|(k, f)| match f.phase {
                Phase::LookingUp(x) if now_ms >= x.deadline_ms => Some(*k),
                _ => None,
            })
            .collect()
    }

    /// Polls, usage reports and summary fetches whose answer never came by their deadline are
    /// given up.
    pub fn expire_polls(&mut self, now_ms: u64) {
        self.calls.retain(|_, c| match c {
            Call::Poll { deadline_ms, .. }
            | Call::Usage { deadline_ms, .. }
            | Call::Summary { deadline_ms, .. } => now_ms < *deadline_ms,
            Call::Lookup(_) => true,
        });
    }

    /// A waiter whose client went away: out of its flight and the outbox. Its flight ends
    /// without waiters unless its lookup is in flight (its verdict fills the caches).
    pub fn forget(&mut self, context_id: u32) {
        self.outbox.retain(|(_, r)| r.context_id != context_id);
        let Some(key) = self.index.remove(&context_id) else {
            return;
        };
        if let Some(f) = self.flights.get_mut(&key) {
            f.waiters.retain(|w| w.context_id != context_id);
            if f.waiters.is_empty() && !matches!(f.phase, Phase::LookingUp(_)) {
                self.flights.remove(&key);
            }
        }
    }

    /// Answers in the outbox from a verdict that has since changed become 503s: no request is
    /// answered from a verdict known to have changed, however briefly it waited. The summary
    /// gate's refusal counts as a verdict (the key unknown to this Envoy): a key the feed has
    /// since reported is not refused by the summary after the page.
    pub fn withdraw(&mut self, changed: impl Fn(&KeyId, &Outcome) -> bool) {
        for (key, r) in self.outbox.iter_mut() {
            let from_verdict = matches!(
                r.outcome,
                Outcome::Allow { .. } | Outcome::Deny | Outcome::UnknownKeyDuringFlood
            );
            if from_verdict && changed(key, &r.outcome) {
                r.outcome = Outcome::Unavailable;
                r.source = Source::NoVerdict;
            }
        }
    }

    /// Hands out at most `max` answers, oldest first.
    pub fn deliver(&mut self, max: usize) -> Vec<Resolution> {
        let n = self.outbox.len().min(max);
        self.outbox.drain(..n).map(|(_, r)| r).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;

    fn lookup() -> Lookup {
        Lookup {
            started_ms: 0,
            deadline_ms: 100,
            generation: 0,
            change_seq: 0,
            leased: true,
            reserve: false,
        }
    }

    #[test]
    fn every_waiter_is_answered_once_and_counted_until_handed_out() {
        let mut f = Flights::default();
        let k = KeyId::of(b"k");
        assert!(!f.join(&k, 1, 10));
        f.start(k, 1, 10, 0);
        assert!(f.join(&k, 2, 10));
        f.dispatched(k, 77, lookup());
        assert_eq!(f.waiters(), 2);
        assert_eq!(f.take_call(77), Some(Call::Lookup(k)));
        f.resolve(&k, &Outcome::Deny, Source::Lookup);
        assert_eq!(f.waiters(), 2, "in the outbox");
        let out = f.deliver(1);
        assert_eq!(out[0].source, Source::Lookup);
        let out = f.deliver(5);
        assert_eq!(out[0].source, Source::Coalesced);
        assert_eq!(f.waiters(), 0);
        assert!(!f.busy());
    }

    #[test]
    fn a_flight_outlives_its_waiters_only_while_its_lookup_is_in_flight() {
        let mut f = Flights::default();
        let (a, b) = (KeyId::of(b"a"), KeyId::of(b"b"));
        f.start(a, 1, 10, 0);
        f.start(b, 2, 10, 0);
        f.dispatched(a, 5, lookup());
        f.forget(1);
        f.forget(2);
        assert!(f.phase(&a).is_some(), "its verdict will fill the caches");
        assert!(f.phase(&b).is_none());
        assert_eq!(f.lost_lookups(100), vec![a]);
        f.requeue(&a);
        assert!(f.phase(&a).is_none());
        assert_eq!(f.take_call(5), None);
    }

    #[test]
    fn expired_waiters_leave_and_withdrawn_answers_become_503s() {
        let mut f = Flights::default();
        let k = KeyId::of(b"k");
        f.start(k, 1, 10, 0);
        f.join(&k, 2, 20);
        assert_eq!(f.take_expired(15), vec![(k, 1)]);
        assert_eq!(f.waiters(), 1);
        f.resolve(&k, &Outcome::Deny, Source::Lookup);
        f.withdraw(|_, _| true);
        let out = f.deliver(5);
        assert_eq!(out[0].outcome, Outcome::Unavailable);
    }

    /// Found by the `summary` fuzz target: a refusal decided while the key was unknown to this
    /// Envoy, still in the outbox when the feed reported the key's creation, was given after
    /// the page.
    #[test]
    fn a_summary_refusal_in_the_outbox_is_withdrawn_when_its_key_is_reported() {
        let mut f = Flights::default();
        let (k, other) = (KeyId::of(b"k"), KeyId::of(b"other"));
        f.start(k, 1, 10, 0);
        f.start(other, 2, 10, 0);
        f.resolve(&k, &Outcome::UnknownKeyDuringFlood, Source::NoVerdict);
        f.resolve(&other, &Outcome::UnknownKeyDuringFlood, Source::NoVerdict);
        f.withdraw(|key, outcome| *key == k && !matches!(outcome, Outcome::Allow { .. }));
        let out = f.deliver(5);
        assert_eq!(out[0].outcome, Outcome::Unavailable);
        assert_eq!(
            out[1].outcome,
            Outcome::UnknownKeyDuringFlood,
            "not reported"
        );
    }
}
