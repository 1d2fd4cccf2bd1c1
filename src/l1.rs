//! L1: the per-worker cache of verdicts, in the worker VM's own memory.
//!
//! Positive and negative verdicts live in two tables with their own capacity, so a flood of
//! unknown keys can only evict other unknown keys. Each table evicts first-in-first-out: with one
//! TTL per table, insertion order is expiry order, so the entry evicted is the one that would
//! have expired first. Expired positive entries are kept (until evicted or past the
//! stale-if-error window) so that they can be served while the store is down.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};

use keygate_protocol::KeyId;

use crate::freshness::Stamp;
use crate::store::Change;
use crate::verdict::{Identity, Verdict};
use std::rc::Rc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub verdict: Verdict,
    /// When and under which generation it was fetched, and how long it lives: whether it may
    /// answer or be served stale is [`Stamp`]'s to say.
    pub stamp: Stamp,
    /// Noted in this worker's usage log since its last merge (see
    /// [`crate::worker::usage::report`]).
    pub used: Cell<bool>,
}

#[derive(Debug)]
pub struct L1 {
    positive: Table,
    negative: Table,
}

impl L1 {
    pub fn new(positive_capacity: usize, negative_capacity: usize) -> L1 {
        L1 {
            positive: Table::new(positive_capacity),
            negative: Table::new(negative_capacity),
        }
    }

    /// Builds the L1 from the configured total and negative share.
    pub fn with_budget(max_entries: usize, negative_max_entries: usize) -> L1 {
        let negative = negative_max_entries
            .min(max_entries.saturating_sub(1))
            .max(1);
        L1::new(max_entries.saturating_sub(negative).max(1), negative)
    }

    /// A verdict that may be answered with now (see [`Stamp::may_answer`]).
    pub fn fresh(
        &self,
        key: &KeyId,
        now_ms: u64,
        generation: u64,
        allow_cutoff_ms: u64,
    ) -> Option<&Verdict> {
        self.fresh_entry(key, now_ms, generation, allow_cutoff_ms)
            .map(|e| &e.verdict)
    }

    /// [`L1::fresh`], with the entry (to flag its use).
    pub fn fresh_entry(
        &self,
        key: &KeyId,
        now_ms: u64,
        generation: u64,
        allow_cutoff_ms: u64,
    ) -> Option<&Entry> {
        let entry = self.positive.get(key).or_else(|| self.negative.get(key))?;
        entry
            .stamp
            .may_answer(
                entry.verdict.is_allow(),
                now_ms,
                generation,
                allow_cutoff_ms,
            )
            .then_some(entry)
    }

    /// The positive entry for `key`, fresh or not.
    pub fn positive(&self, key: &KeyId) -> Option<&Entry> {
        self.positive.get(key)
    }

    /// An identity that may still be served because the store failed (stale-if-error; see
    /// [`Stamp::may_serve_stale`]).
    pub fn stale(&self, key: &KeyId, now_ms: u64, generation: u64) -> Option<Rc<Identity>> {
        let entry = self.positive.get(key)?;
        match &entry.verdict {
            Verdict::Allow(identity) if entry.stamp.may_serve_stale(true, now_ms, generation) => {
                Some(Rc::clone(identity))
            }
            _ => None,
        }
    }

    /// Inserts or replaces the verdict for `key`; returns how many entries were evicted.
    pub fn insert(&mut self, key: KeyId, entry: Entry) -> usize {
        if entry.verdict.is_allow() {
            self.negative.remove(&key);
            self.positive.insert(key, entry)
        } else {
            self.positive.remove(&key);
            self.negative.insert(key, entry)
        }
    }

    /// Drops a key entirely, stale copy included (the changes feed reported it).
    pub fn remove(&mut self, key: &KeyId) -> bool {
        let p = self.positive.remove(key);
        let n = self.negative.remove(key);
        p || n
    }

    /// Drops the entries that the changes feed's `change` outdates ([`Change::outdates`]): all
    /// of the key's, stale copy included; for a creation, only a cached "unknown" verdict.
    pub fn drop_outdated(&mut self, change: &Change) -> bool {
        let key = &change.key;
        let p = change.outdates(key, true) && self.positive.remove(key);
        let n = change.outdates(key, false) && self.negative.remove(key);
        p || n
    }

    pub fn clear(&mut self) {
        self.positive.clear();
        self.negative.clear();
    }

    pub fn len(&self) -> (usize, usize) {
        (self.positive.map.len(), self.negative.map.len())
    }

    pub fn is_empty(&self) -> bool {
        self.positive.map.is_empty() && self.negative.map.is_empty()
    }
}

/// One bounded table: a map plus the insertion order, with lazy deletion (each map entry carries
/// the stamp of its newest place in the order; older places are skipped when reached).
#[derive(Debug)]
struct Table {
    map: HashMap<KeyId, (Entry, u64)>,
    order: VecDeque<(KeyId, u64)>,
    capacity: usize,
    next_stamp: u64,
}

impl Table {
    fn new(capacity: usize) -> Table {
        Table {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            next_stamp: 0,
        }
    }

    fn get(&self, key: &KeyId) -> Option<&Entry> {
        self.map.get(key).map(|(e, _)| e)
    }

    fn insert(&mut self, key: KeyId, entry: Entry) -> usize {
        let stamp = self.next_stamp;
        self.next_stamp = self.next_stamp.wrapping_add(1);
        let mut evicted = 0usize;
        if self.map.insert(key, (entry, stamp)).is_none() {
            while self.map.len() > self.capacity {
                match self.order.pop_front() {
                    Some((old, old_stamp)) => {
                        if self.map.get(&old).is_some_and(|(_, s)| *s == old_stamp) {
                            self.map.remove(&old);
                            evicted = evicted.saturating_add(1);
                        }
                    }
                    None => break,
                }
            }
        }
        self.order.push_back((key, stamp));
        // Re-inserted keys leave dead places behind; compact before they outnumber live ones.
        if self.order.len() > self.map.len().saturating_mul(2).saturating_add(64) {
            let map = &self.map;
            self.order
                .retain(|(k, s)| map.get(k).is_some_and(|(_, live)| live == s));
        }
        evicted
    }

    fn remove(&mut self, key: &KeyId) -> bool {
        self.map.remove(key).is_some()
    }

    fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;

    fn id(n: u32) -> KeyId {
        KeyId::of(&n.to_be_bytes())
    }

    fn allow(expires: u64) -> Entry {
        let identity = Identity {
            account_id: "a".into(),
            user_id: "u".into(),
            role: "r".into(),
            ..Identity::default()
        };
        Entry {
            verdict: Verdict::Allow(Rc::new(identity)),
            stamp: Stamp::issue(0, 0, expires, 100, u64::MAX),
            used: Cell::new(false),
        }
    }

    fn deny(expires: u64) -> Entry {
        Entry {
            verdict: Verdict::Deny,
            stamp: Stamp::issue(0, 0, expires, 0, u64::MAX),
            used: Cell::new(false),
        }
    }

    #[test]
    fn fresh_until_expiry_then_stale_until_window_ends() {
        let mut l1 = L1::new(10, 10);
        l1.insert(id(1), allow(1000));
        assert!(l1.fresh(&id(1), 999, 0, 0).is_some());
        assert!(l1.fresh(&id(1), 1000, 0, 0).is_none());
        assert!(l1.stale(&id(1), 1050, 0).is_some());
        assert!(l1.stale(&id(1), 1100, 0).is_none());
    }

    #[test]
    fn another_generation_is_neither_fresh_nor_stale_eligible() {
        let mut l1 = L1::new(10, 10);
        l1.insert(id(1), allow(1000));
        assert!(l1.fresh(&id(1), 10, 1, 0).is_none());
        assert!(
            l1.stale(&id(1), 10, 1).is_none(),
            "a local admin write may have revoked it"
        );
        assert!(l1.stale(&id(1), 10, 0).is_some());
    }

    #[test]
    fn an_allow_fetched_before_the_cutoff_is_not_fresh_a_deny_is() {
        let mut l1 = L1::new(10, 10);
        l1.insert(id(1), allow(1000));
        l1.insert(id(2), deny(1000));
        assert!(l1.fresh(&id(1), 10, 0, 1).is_none());
        assert!(l1.fresh(&id(2), 10, 0, 1).is_some());
        assert!(l1.stale(&id(1), 10, 0).is_some(), "still a stale candidate");
    }

    #[test]
    fn negative_entries_are_never_served_stale() {
        let mut l1 = L1::new(10, 10);
        l1.insert(id(1), deny(1000));
        assert_eq!(l1.fresh(&id(1), 10, 0, 0), Some(&Verdict::Deny));
        assert!(l1.stale(&id(1), 10, 0).is_none());
    }

    #[test]
    fn eviction_is_first_in_first_out_and_bounded() {
        let mut l1 = L1::new(3, 3);
        let mut evicted = 0;
        for n in 0..5 {
            evicted += l1.insert(id(n), allow(1000));
        }
        assert_eq!(evicted, 2);
        assert_eq!(l1.len(), (3, 0));
        assert!(l1.fresh(&id(0), 1, 0, 0).is_none());
        assert!(l1.fresh(&id(1), 1, 0, 0).is_none());
        assert!(l1.fresh(&id(4), 1, 0, 0).is_some());
    }

    #[test]
    fn reinserting_refreshes_position() {
        let mut l1 = L1::new(2, 2);
        l1.insert(id(1), allow(1000));
        l1.insert(id(2), allow(1000));
        l1.insert(id(1), allow(2000)); // id(1) now newest
        l1.insert(id(3), allow(2000)); // evicts id(2)
        assert!(l1.fresh(&id(1), 1, 0, 0).is_some());
        assert!(l1.fresh(&id(2), 1, 0, 0).is_none());
        assert!(l1.fresh(&id(3), 1, 0, 0).is_some());
    }

    #[test]
    fn a_flood_of_unknown_keys_does_not_evict_known_ones() {
        let mut l1 = L1::with_budget(100, 25);
        for n in 0..75 {
            l1.insert(id(n), allow(1000));
        }
        for n in 1000..101_000 {
            l1.insert(id(n), deny(1000));
        }
        assert_eq!(l1.len(), (75, 25));
        assert!((0..75).all(|n| l1.fresh(&id(n), 1, 0, 0).is_some()));
    }

    #[test]
    fn churn_keeps_the_order_queue_bounded() {
        let mut l1 = L1::new(10, 10);
        for round in 0..10_000u64 {
            l1.insert(id((round % 5) as u32), allow(round));
        }
        assert!(l1.positive.order.len() <= 5 * 2 + 64 + 1);
    }

    #[test]
    fn a_verdict_moves_between_tables_and_remove_drops_stale_copies() {
        let mut l1 = L1::new(10, 10);
        l1.insert(id(1), deny(1000));
        l1.insert(id(1), allow(1000));
        assert_eq!(l1.len(), (1, 0));
        assert!(l1.remove(&id(1)));
        assert!(l1.stale(&id(1), 1, 0).is_none());
        assert!(l1.is_empty());
        assert!(!l1.remove(&id(1)));
    }
}
