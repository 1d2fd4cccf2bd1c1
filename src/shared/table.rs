//! The shared table and its leases: how the workers of one Envoy share verdicts and agree on
//! which one of them asks the store about a key.
//!
//! The table is a fixed number of slots in shared data (`slot.<i>`), the index taken from the
//! key id's leading bytes. A slot holds at most one verdict (for one key id) and at most one
//! lease (for one key id, possibly another), and moves only by CAS. Fixed slots bound memory
//! although shared data cannot be deleted: a slot is a cache line, overwritten by newer keys.
//!
//! A lease is `Held { owner, deadline }` while its owner's lookup is in flight and `Failed { at }`
//! when that lookup failed, so that the workers waiting on it answer their requests instead of
//! each asking the store again. A `Held` lease past its deadline is taken over: nobody waits on
//! a dead or stuck owner for longer than one lookup timeout plus [`LEASE_GRACE_MS`].

use keygate_protocol::KeyId;

use crate::freshness::Stamp;
use crate::host::{Host, SharedError};
use crate::l1::Entry;
use crate::shared::{self, Names, Reader, Record, Writer};
use crate::store::Change;
use crate::verdict::{Identity, Verdict};
use std::rc::Rc;

/// How long past the lookup timeout a lease stays valid: the owner's callout has timed out by
/// then (Envoy enforces the timeout), so a lease still held is from a dead or stuck owner.
pub const LEASE_GRACE_MS: u64 = 250;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Slot {
    pub verdict: Option<SlotVerdict>,
    pub lease: Option<Lease>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotVerdict {
    pub key: KeyId,
    /// `None`: deny.
    pub identity: Option<Identity>,
    /// Whether it may answer or be served stale is [`Stamp`]'s to say.
    pub stamp: Stamp,
}

impl SlotVerdict {
    pub fn from_entry(key: KeyId, e: &Entry) -> SlotVerdict {
        let identity = match &e.verdict {
            Verdict::Allow(i) => Some(Identity::clone(i)),
            Verdict::Deny => None,
        };
        SlotVerdict {
            key,
            identity,
            stamp: e.stamp,
        }
    }

    pub fn to_entry(&self) -> Entry {
        let verdict = match &self.identity {
            Some(i) => Verdict::Allow(Rc::new(i.clone())),
            None => Verdict::Deny,
        };
        Entry {
            verdict,
            stamp: self.stamp,
            used: std::cell::Cell::new(false),
        }
    }

    fn is_allow(&self) -> bool {
        self.identity.is_some()
    }
}

impl Slot {
    /// The slot's verdict if it is about `key` (a slot is a cache line shared by many keys).
    pub fn verdict_for(&self, key: &KeyId) -> Option<&SlotVerdict> {
        self.verdict.as_ref().filter(|v| v.key == *key)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub key: KeyId,
    pub state: LeaseState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    Held { owner: u64, deadline_ms: u64 },
    Failed { at_ms: u64 },
}

/// What a slot says to a worker that needs a verdict for `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// A verdict that may be answered with.
    Fresh(SlotVerdict),
    /// Another worker holds a live lease for this key: wait for its verdict.
    Pending,
    /// The lookup this worker was waiting on failed.
    Failed,
    /// Nobody is asking the store about this key: take the lease. `takeover` when the lease
    /// being replaced was another owner's and expired.
    Free { takeover: bool },
    /// A live lease for another key occupies the slot (a collision): look up without a lease.
    Busy,
}

/// Reads a slot for `key`. `since_ms` is when the caller started waiting: a failure older than
/// that belongs to an earlier wave of requests and does not fail this one. The verdict answers
/// if [`Stamp::may_answer`] says so (an allow fetched before `allow_cutoff_ms` does not: it is
/// re-checked while the changes feed is down).
pub fn inspect(
    slot: &Slot,
    key: &KeyId,
    now_ms: u64,
    generation: u64,
    since_ms: u64,
    allow_cutoff_ms: u64,
) -> View {
    if let Some(v) = slot.verdict_for(key) {
        if v.stamp
            .may_answer(v.is_allow(), now_ms, generation, allow_cutoff_ms)
        {
            return View::Fresh(v.clone());
        }
    }
    match &slot.lease {
        None => View::Free { takeover: false },
        Some(lease) => match lease.state {
            LeaseState::Held { deadline_ms, .. } if now_ms < deadline_ms => {
                if lease.key == *key {
                    View::Pending
                } else {
                    View::Busy
                }
            }
            LeaseState::Held { .. } => View::Free { takeover: true },
            LeaseState::Failed { at_ms } if lease.key == *key && at_ms >= since_ms => View::Failed,
            LeaseState::Failed { .. } => View::Free { takeover: false },
        },
    }
}

/// The slot with `owner` holding the lease for `key` until `deadline_ms` (its verdict kept, so
/// waiters can still be served stale if the lookup fails).
pub fn take(slot: &Slot, key: KeyId, owner: u64, deadline_ms: u64) -> Slot {
    Slot {
        verdict: slot.verdict.clone(),
        lease: Some(Lease {
            key,
            state: LeaseState::Held { owner, deadline_ms },
        }),
    }
}

/// Whether `owner` holds the lease for `key` (a lease taken over is no longer the late owner's).
fn holds(slot: &Slot, key: &KeyId, owner: u64) -> bool {
    matches!(&slot.lease, Some(Lease { key: k, state: LeaseState::Held { owner: o, .. } }) if k == key && *o == owner)
}

/// The slot after `owner`'s lookup for `key` answered with `verdict`: the verdict stored (unless
/// it is a deny that would displace another key's allow still in its stale window
/// ([`Stamp::in_stale_window`]): unknown keys must not push known ones out), the lease released
/// if it is still ours.
pub fn complete(slot: &Slot, owner: u64, verdict: Option<SlotVerdict>, now_ms: u64) -> Slot {
    let mut next = slot.clone();
    if let Some(v) = verdict {
        let keep_other = match &slot.verdict {
            Some(old) => {
                old.key != v.key
                    && !v.is_allow()
                    && old.stamp.in_stale_window(old.is_allow(), now_ms)
            }
            None => false,
        };
        if !keep_other {
            next.verdict = Some(v.clone());
        }
        if holds(slot, &v.key, owner) {
            next.lease = None;
        }
    }
    next
}

/// The slot with `owner`'s lease on `key` released and no verdict written (its answer went to
/// nobody); `None` when the lease is not ours (any more).
pub fn release(slot: &Slot, key: &KeyId, owner: u64) -> Option<Slot> {
    holds(slot, key, owner).then(|| Slot {
        verdict: slot.verdict.clone(),
        lease: None,
    })
}

/// The slot after `owner`'s lookup for `key` failed: waiters on the lease learn it failed.
pub fn fail(slot: &Slot, key: KeyId, owner: u64, now_ms: u64) -> Slot {
    let mut next = slot.clone();
    if holds(slot, &key, owner) || slot.lease.is_none() {
        next.lease = Some(Lease {
            key,
            state: LeaseState::Failed { at_ms: now_ms },
        });
    }
    next
}

/// The slot without what the changes feed's `change` outdates ([`Change::outdates`]; for a key
/// reported only as created, only an "unknown" verdict is dropped), nor a failed lease on it.
pub fn drop_outdated(slot: &Slot, change: &Change) -> Option<Slot> {
    let key = &change.key;
    let mut next = slot.clone();
    if next
        .verdict
        .as_ref()
        .is_some_and(|v| change.outdates(&v.key, v.is_allow()))
    {
        next.verdict = None;
    }
    if next
        .lease
        .as_ref()
        .is_some_and(|l| l.key == *key && matches!(l.state, LeaseState::Failed { .. }))
    {
        next.lease = None;
    }
    (next != *slot).then_some(next)
}

impl Record for Slot {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        let flags = u8::from(self.verdict.is_some()) | (u8::from(self.lease.is_some()) << 1);
        w.u8(flags);
        if let Some(v) = &self.verdict {
            w.key(&v.key);
            w.u64(v.stamp.generation);
            w.u64(v.stamp.expires_ms);
            w.u64(v.stamp.stale_until_ms);
            w.u64(v.stamp.fetched_ms);
            match &v.identity {
                None => w.u8(0),
                Some(i) => {
                    w.u8(1);
                    w.str(&i.account_id);
                    w.str(&i.user_id);
                    w.str(&i.role);
                    w.u64(i.expires_ms.unwrap_or(u64::MAX));
                    w.u8(u8::try_from(i.claims.len()).unwrap_or(u8::MAX));
                    for (name, value) in i.claims.iter().take(usize::from(u8::MAX)) {
                        w.str(name);
                        w.str(value);
                    }
                }
            }
        }
        if let Some(l) = &self.lease {
            w.key(&l.key);
            match l.state {
                LeaseState::Held { owner, deadline_ms } => {
                    w.u8(0);
                    w.u64(owner);
                    w.u64(deadline_ms);
                }
                LeaseState::Failed { at_ms } => {
                    w.u8(1);
                    w.u64(0);
                    w.u64(at_ms);
                }
            }
        }
        w.finish()
    }

    fn decode(bytes: &[u8]) -> Option<Slot> {
        let mut r = Reader::new(bytes)?;
        let flags = r.u8()?;
        if flags > 3 {
            return None;
        }
        let verdict = if flags & 1 != 0 {
            Some(decode_verdict(&mut r)?)
        } else {
            None
        };
        let lease = if flags & 2 != 0 {
            let key = r.key()?;
            let kind = r.u8()?;
            let owner = r.u64()?;
            let at = r.u64()?;
            let state = match kind {
                0 => LeaseState::Held {
                    owner,
                    deadline_ms: at,
                },
                1 => LeaseState::Failed { at_ms: at },
                _ => return None,
            };
            Some(Lease { key, state })
        } else {
            None
        };
        r.end()?;
        Some(Slot { verdict, lease })
    }
}

fn decode_verdict(r: &mut Reader<'_>) -> Option<SlotVerdict> {
    let key = r.key()?;
    let stamp = Stamp {
        generation: r.u64()?,
        expires_ms: r.u64()?,
        stale_until_ms: r.u64()?,
        fetched_ms: r.u64()?,
    };
    let identity = match r.u8()? {
        0 => None,
        1 => Some(decode_identity(r)?),
        _ => return None,
    };
    Some(SlotVerdict {
        key,
        identity,
        stamp,
    })
}

/// An identity as [`Slot::encode`] wrote it: `u64::MAX` stands for "never expires".
fn decode_identity(r: &mut Reader<'_>) -> Option<Identity> {
    let account_id = r.str()?;
    let user_id = r.str()?;
    let role = r.str()?;
    let expires_ms = Some(r.u64()?).filter(|e| *e != u64::MAX);
    let count = r.u8()?;
    let claims = (0..count)
        .map(|_| Some((r.str()?, r.str()?)))
        .collect::<Option<Vec<_>>>()?;
    Some(Identity {
        account_id,
        user_id,
        role,
        expires_ms,
        claims,
    })
}

/// The shared table over a host.
#[derive(Debug, Clone)]
pub struct Table {
    names: Rc<Names>,
    mask: u32,
}

impl Table {
    pub fn new(names: Rc<Names>, slots: u32) -> Table {
        Table {
            names,
            mask: slots.saturating_sub(1),
        }
    }

    pub fn slot_name(&self, key: &KeyId) -> String {
        // The mask keeps the index within the table; truncation to 32 bits is intended.
        let index = (key.spread() >> 32) as u32 & self.mask;
        self.names.slot(index)
    }

    /// Creates every slot as empty, once per Envoy, so that slots only ever move by CAS (a
    /// missing key cannot be CAS-protected: two workers creating it would both win).
    pub fn create<H: Host + ?Sized>(&self, host: &H) {
        let slots = self.mask.saturating_add(1);
        let (ready, _) = shared::read::<H, shared::Number>(host, &self.names.table_ready);
        if ready == Some(shared::Number(u64::from(slots))) {
            return;
        }
        let empty = Slot::default().encode();
        for i in 0..slots {
            let name = self.names.slot(i);
            if host.get_shared(&name).0.is_none() {
                // Ignore failures: a slot that could not be created is created on first use.
                let _ = host.set_shared(&name, &empty, None);
            }
        }
        let _ = host.set_shared(
            &self.names.table_ready,
            &shared::Number(u64::from(slots)).encode(),
            None,
        );
    }

    /// Empties every slot (a changes-feed reset: nothing cached may be trusted).
    pub fn clear<H: Host + ?Sized>(&self, host: &H) {
        let empty = Slot::default().encode();
        for i in 0..=self.mask {
            let _ = host.set_shared(&self.names.slot(i), &empty, None);
        }
    }

    pub fn read<H: Host + ?Sized>(&self, host: &H, key: &KeyId) -> (Slot, Option<u32>) {
        let (slot, cas) = shared::read::<H, Slot>(host, &self.slot_name(key));
        (slot.unwrap_or_default(), cas)
    }

    /// Writes `next` only if the slot is still at `cas`.
    pub fn swap<H: Host + ?Sized>(
        &self,
        host: &H,
        key: &KeyId,
        next: &Slot,
        cas: Option<u32>,
    ) -> Result<(), SharedError> {
        host.set_shared(&self.slot_name(key), &next.encode(), cas)
    }

    /// CAS loop over the slot of `key`.
    pub fn update<H, F>(
        &self,
        host: &H,
        key: &KeyId,
        mut change: F,
    ) -> Result<Option<Slot>, SharedError>
    where
        H: Host + ?Sized,
        F: FnMut(&Slot) -> Option<Slot>,
    {
        shared::update(host, &self.slot_name(key), |s: Option<Slot>| {
            change(&s.unwrap_or_default())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_host::FakeHost;
    use crate::test_support::test;

    fn id(n: u32) -> KeyId {
        KeyId::of(&n.to_be_bytes())
    }

    fn allow(key: KeyId, expires: u64) -> SlotVerdict {
        let identity = Identity {
            account_id: "acme".into(),
            user_id: "ann".into(),
            role: "admin".into(),
            expires_ms: Some(expires.saturating_mul(10)),
            claims: vec![("plan".into(), "pro".into())],
        };
        SlotVerdict {
            key,
            identity: Some(identity),
            stamp: Stamp::issue(0, 0, expires, 1000, u64::MAX),
        }
    }

    fn deny(key: KeyId, expires: u64) -> SlotVerdict {
        SlotVerdict {
            key,
            identity: None,
            stamp: Stamp::issue(0, 0, expires, 0, u64::MAX),
        }
    }

    #[test]
    fn slot_round_trips_in_every_shape() {
        let shapes = [
            Slot::default(),
            Slot {
                verdict: Some(allow(id(1), 5)),
                lease: None,
            },
            Slot {
                verdict: Some(deny(id(1), 5)),
                lease: None,
            },
            take(
                &Slot {
                    verdict: Some(allow(id(1), 5)),
                    lease: None,
                },
                id(2),
                7,
                99,
            ),
            fail(&Slot::default(), id(3), 1, 42),
        ];
        for s in shapes {
            assert_eq!(Slot::decode(&s.encode()), Some(s.clone()));
            let bytes = s.encode();
            for cut in 0..bytes.len() {
                assert_eq!(Slot::decode(&bytes[..cut]), None);
            }
        }
        assert_eq!(Slot::decode(&[1, 4]), None);
    }

    #[test]
    fn inspect_follows_the_lease_life_cycle() {
        let k = id(1);
        let empty = Slot::default();
        assert_eq!(
            inspect(&empty, &k, 0, 0, 0, 0),
            View::Free { takeover: false }
        );
        let held = take(&empty, k, 1, 100);
        assert_eq!(inspect(&held, &k, 50, 0, 0, 0), View::Pending);
        assert_eq!(
            inspect(&held, &k, 100, 0, 0, 0),
            View::Free { takeover: true }
        );
        assert_eq!(inspect(&held, &id(2), 50, 0, 0, 0), View::Busy);
        let failed = fail(&held, k, 1, 60);
        assert_eq!(inspect(&failed, &k, 61, 0, 10, 0), View::Failed);
        assert_eq!(
            inspect(&failed, &k, 61, 0, 61, 0),
            View::Free { takeover: false },
            "an older failure"
        );
        assert_eq!(
            inspect(&failed, &id(2), 61, 0, 0, 0),
            View::Free { takeover: false }
        );
        let done = complete(&held, 1, Some(allow(k, 1000)), 70);
        assert_eq!(done.lease, None);
        assert!(matches!(inspect(&done, &k, 70, 0, 0, 0), View::Fresh(_)));
        assert_eq!(
            inspect(&done, &k, 70, 1, 0, 0),
            View::Free { takeover: false },
            "another generation"
        );
        assert_eq!(
            inspect(&done, &k, 1000, 0, 0, 0),
            View::Free { takeover: false },
            "expired"
        );
    }

    #[test]
    fn a_late_owner_does_not_release_the_lease_of_the_one_that_took_over() {
        let k = id(1);
        let taken_over = take(&take(&Slot::default(), k, 1, 100), k, 2, 300);
        let after = complete(&taken_over, 1, Some(allow(k, 1000)), 150);
        assert!(matches!(
            after.lease,
            Some(Lease {
                state: LeaseState::Held { owner: 2, .. },
                ..
            })
        ));
        assert!(after.verdict.is_some(), "the verdict is still shared");
        let failed = fail(&taken_over, k, 1, 150);
        assert_eq!(failed, taken_over);
    }

    #[test]
    fn a_deny_never_displaces_a_live_positive_of_another_key() {
        let good = Slot {
            verdict: Some(allow(id(1), 100)),
            lease: None,
        };
        let after = complete(&good, 9, Some(deny(id(2), 50)), 10);
        assert_eq!(after.verdict.as_ref().map(|v| v.key), Some(id(1)));
        // Once the positive is past its stale window, it may go.
        let after = complete(&good, 9, Some(deny(id(2), 5000)), 2000);
        assert_eq!(after.verdict.as_ref().map(|v| v.key), Some(id(2)));
        // A positive for another key replaces it.
        let after = complete(&good, 9, Some(allow(id(2), 50)), 10);
        assert_eq!(after.verdict.as_ref().map(|v| v.key), Some(id(2)));
    }

    #[test]
    fn a_change_drops_only_that_key() {
        let s = Slot {
            verdict: Some(allow(id(1), 100)),
            lease: Some(Lease {
                key: id(1),
                state: LeaseState::Failed { at_ms: 1 },
            }),
        };
        let f = drop_outdated(&s, &Change::of(id(1))).unwrap();
        assert_eq!(f, Slot::default());
        assert_eq!(drop_outdated(&s, &Change::of(id(2))), None);
        let held = take(&s, id(1), 1, 10);
        assert!(
            drop_outdated(&held, &Change::of(id(1)))
                .unwrap()
                .lease
                .is_some(),
            "a live lease stays"
        );
    }

    #[test]
    fn a_creation_drops_only_an_unknown_verdict() {
        let created = Change {
            key: id(1),
            created: true,
        };
        let known = Slot {
            verdict: Some(allow(id(1), 100)),
            lease: None,
        };
        assert_eq!(
            drop_outdated(&known, &created),
            None,
            "a cached identity stays"
        );
        let unknown = Slot {
            verdict: Some(deny(id(1), 100)),
            lease: None,
        };
        assert_eq!(drop_outdated(&unknown, &created), Some(Slot::default()));
    }

    /// Two workers read the same empty slot and both try to take the lease: exactly one wins.
    #[test]
    fn two_workers_racing_for_a_lease_one_wins() {
        let a = FakeHost::new();
        let b = a.sibling();
        let table = Table::new(Rc::new(Names::new("t")), 16);
        table.create(&a);
        let k = id(1);
        let (sa, ca) = table.read(&a, &k);
        let (sb, cb) = table.read(&b, &k);
        assert_eq!(ca, cb);
        let ra = table.swap(&a, &k, &take(&sa, k, 1, 100), ca);
        let rb = table.swap(&b, &k, &take(&sb, k, 2, 100), cb);
        assert_eq!(ra, Ok(()));
        assert_eq!(rb, Err(SharedError::CasMismatch));
        assert_eq!(
            inspect(&table.read(&b, &k).0, &k, 1, 0, 0, 0),
            View::Pending
        );
    }

    /// Without creating the table first, two workers that both see a missing slot both "create"
    /// it: Envoy's creation ignores the cas. This is why `Table::create` exists.
    #[test]
    fn racing_on_a_missing_slot_lets_both_win_which_is_why_slots_are_created_first() {
        let a = FakeHost::new();
        let b = a.sibling();
        let table = Table::new(Rc::new(Names::new("t")), 16);
        let k = id(1);
        let (sa, ca) = table.read(&a, &k);
        let (sb, cb) = table.read(&b, &k);
        assert_eq!((ca, cb), (None, None));
        assert_eq!(table.swap(&a, &k, &take(&sa, k, 1, 100), ca), Ok(()));
        assert_eq!(table.swap(&b, &k, &take(&sb, k, 2, 100), cb), Ok(()));
    }

    #[test]
    fn create_is_done_once_per_envoy() {
        let a = FakeHost::new();
        let table = Table::new(Rc::new(Names::new("t")), 64);
        table.create(&a);
        let writes = a.shared_writes();
        assert_eq!(writes, 65);
        table.create(&a.sibling());
        assert_eq!(a.shared_writes(), writes);
    }

    #[test]
    fn every_key_lands_in_a_slot_of_the_table() {
        let table = Table::new(Rc::new(Names::new("t")), 8);
        let mut used = std::collections::HashSet::new();
        for n in 0..200 {
            let name = table.slot_name(&id(n));
            let index: u32 = name.rsplit('.').next().unwrap().parse().unwrap();
            assert!(index < 8);
            used.insert(index);
        }
        assert_eq!(used.len(), 8);
    }
}
