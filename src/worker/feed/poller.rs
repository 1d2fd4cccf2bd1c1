//! The changes-feed poller: how revocations and creations made anywhere reach every worker of
//! every Envoy within one sync interval, whatever the TTL.
//!
//! One worker per Envoy polls at a time, under a lease in the shared sync record. What it learns
//! is published in this order: key ids into the change ring, their slots cleared in the shared
//! table, then the epoch bumped. Every worker reads the epoch before answering from its L1 and
//! drops the listed key ids (or everything, on a reset) first; so once the epoch moved, no
//! worker answers from a verdict the feed reported changed.

use crate::host::Host;
use crate::shared::table::{self as shared_table, Slot, Table};
use crate::shared::{self, ChangeRing, Epoch, Names, Reader, Record, Writer};
use crate::store::{Change, Changes};

/// The shared feed record: where the feed is, and who is polling it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FeedRecord {
    pub revision: u64,
    /// 0: nobody polls now.
    pub owner: u64,
    pub deadline_ms: u64,
    pub next_poll_ms: u64,
}

impl Record for FeedRecord {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.revision);
        w.u64(self.owner);
        w.u64(self.deadline_ms);
        w.u64(self.next_poll_ms);
        w.finish()
    }

    fn decode(bytes: &[u8]) -> Option<FeedRecord> {
        let mut r = Reader::new(bytes)?;
        let s = FeedRecord {
            revision: r.u64()?,
            owner: r.u64()?,
            deadline_ms: r.u64()?,
            next_poll_ms: r.u64()?,
        };
        r.end()?;
        Some(s)
    }
}

/// What a worker's attempt to start a poll found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// This worker holds the poll lease: poll from `since`.
    Poll { since: u64 },
    /// Not due yet, or another worker is polling: look again at `next_check_ms`.
    NotNow { next_check_ms: u64 },
}

/// Takes the poll lease if a poll is due and nobody holds it (or its holder's lease expired).
pub fn try_start<H: Host + ?Sized>(host: &H, names: &Names, owner: u64, lease_ms: u64) -> Start {
    let now = host.now_ms();
    let mut found = FeedRecord::default();
    let written = shared::update(host, &names.sync, |rec: Option<FeedRecord>| {
        let rec = rec.unwrap_or_default();
        found = rec;
        let busy = rec.owner != 0 && now < rec.deadline_ms;
        if now < rec.next_poll_ms || busy {
            return None;
        }
        Some(FeedRecord {
            owner,
            deadline_ms: now.saturating_add(lease_ms),
            ..rec
        })
    });
    match written {
        Ok(Some(rec)) => Start::Poll {
            since: rec.revision,
        },
        _ => {
            let busy_until = if found.owner != 0 {
                found.deadline_ms
            } else {
                0
            };
            Start::NotNow {
                next_check_ms: found
                    .next_poll_ms
                    .max(busy_until)
                    .max(now.saturating_add(1)),
            }
        }
    }
}

/// What applying a page did, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    pub keys: usize,
    pub reset: bool,
    /// Malformed entries of the page, skipped.
    pub skipped: usize,
}

/// Publishes a page of the feed to every worker of this Envoy, then releases the poll lease.
/// A failed poll (`None`) changes nothing but the time of the next try.
pub fn finish<H: Host + ?Sized>(
    host: &H,
    names: &Names,
    table: &Table,
    owner: u64,
    page: Option<&Changes>,
    interval_ms: u64,
) -> Applied {
    let now = host.now_ms();
    let applied = page
        .map(|p| apply(host, names, table, p))
        .unwrap_or_default();
    let again_now = matches!(page, Some(Changes::Changed { more: true, .. }));
    let next_poll_ms = if again_now {
        now
    } else {
        now.saturating_add(interval_ms)
    };
    let _ = shared::update(host, &names.sync, |rec: Option<FeedRecord>| {
        let rec = rec.unwrap_or_default();
        // A late poller whose lease was taken over leaves the record to the one that took it.
        if rec.owner != owner && rec.owner != 0 {
            return None;
        }
        Some(FeedRecord {
            revision: page.map_or(rec.revision, Changes::revision),
            owner: 0,
            deadline_ms: 0,
            next_poll_ms,
        })
    });
    applied
}

/// Whether this Envoy has published a page of the feed (from any poll): its revision, 0
/// included, is then one the store answered, not the default.
pub fn synced<H: Host + ?Sized>(host: &H, names: &Names) -> bool {
    shared::read::<H, Epoch>(host, &names.epoch)
        .0
        .is_some_and(|e| e.synced_ms != 0)
}

/// What a page polled from `since` means to this Envoy. From `since=0` the store lists
/// nothing, only its revision. Before the first sync that is the cold start (verdicts cached
/// until then live at most one interval). After it (the store was then at revision 0, where
/// nothing has changed), a page at revision 0 says that still nothing changed, and one past 0
/// cannot say what changed since: it is a reset.
pub fn interpret<H: Host + ?Sized>(host: &H, names: &Names, since: u64, page: Changes) -> Changes {
    match page {
        Changes::Changed { revision, .. } if since == 0 && revision > 0 && synced(host, names) => {
            Changes::Reset { revision }
        }
        page => page,
    }
}

/// The revision the next poll starts from.
pub fn revision<H: Host + ?Sized>(host: &H, names: &Names) -> u64 {
    shared::read::<H, FeedRecord>(host, &names.sync)
        .0
        .unwrap_or_default()
        .revision
}

/// Publishes a page polled outside the poll lease (for local admin writes). The sync record's
/// revision moves on only when nobody holds the lease; its schedule is left alone. Publishing
/// a page twice (the lease holder may fetch the same changes) is harmless.
pub fn finish_forced<H: Host + ?Sized>(
    host: &H,
    names: &Names,
    table: &Table,
    page: &Changes,
) -> Applied {
    let applied = apply(host, names, table, page);
    let _ = shared::update(host, &names.sync, |rec: Option<FeedRecord>| {
        let rec = rec.unwrap_or_default();
        (rec.owner == 0).then_some(FeedRecord {
            revision: page.revision(),
            ..rec
        })
    });
    applied
}

/// Publishes a page: key ids into the change ring, their slots cleared, then the epoch moved.
fn apply<H: Host + ?Sized>(host: &H, names: &Names, table: &Table, page: &Changes) -> Applied {
    let now = host.now_ms();
    match page {
        Changes::Changed {
            revision,
            keys,
            skipped,
            ..
        } => {
            // An empty page still moves the epoch: `synced_ms` says the feed works.
            let head = (!keys.is_empty()).then(|| update_ring(host, names, |ring| ring.push(keys)));
            // A slot that could not be cleared may hold a verdict the feed just reported: then
            // nothing fetched before this page may be answered with (a new generation).
            let failed = keys
                .iter()
                .filter(|c| !drop_from_slot(host, table, c))
                .count();
            let all_forgotten = failed == 0;
            bump_epoch(host, names, |e| {
                if let Some(head) = head {
                    e.change_seq = head;
                }
                e.revision = *revision;
                e.synced_ms = now;
                if !all_forgotten {
                    e.generation = e.generation.saturating_add(1);
                }
            });
            Applied {
                keys: keys.len(),
                reset: false,
                skipped: *skipped,
            }
        }
        Changes::Reset { revision } => {
            let head = update_ring(host, names, ChangeRing::reset);
            table.clear(host);
            bump_epoch(host, names, |e| {
                e.generation = e.generation.saturating_add(1);
                e.change_seq = head;
                e.revision = *revision;
                e.synced_ms = now;
            });
            Applied {
                keys: 0,
                reset: true,
                skipped: 0,
            }
        }
    }
}

/// Changes the shared change ring by `change` (the first step of publishing a page); the
/// ring's new head sequence.
fn update_ring<H: Host + ?Sized>(host: &H, names: &Names, change: impl Fn(&mut ChangeRing)) -> u64 {
    let written = shared::update(host, &names.changes, |ring: Option<ChangeRing>| {
        let mut ring = ring.unwrap_or_default();
        change(&mut ring);
        Some(ring)
    });
    match written {
        Ok(Some(ring)) => ring.head_seq,
        // Could not update the ring: force every worker to drop everything rather than miss a
        // change.
        _ => u64::MAX / 2,
    }
}

fn bump_epoch<H: Host + ?Sized>(host: &H, names: &Names, change: impl Fn(&mut Epoch)) {
    let _ = shared::update(host, &names.epoch, |e: Option<Epoch>| {
        let mut e = e.unwrap_or_default();
        change(&mut e);
        Some(e)
    });
}

/// Clears what the slot of a reported key holds about it, and writes the slot even when there
/// is nothing to clear: the write moves its cas, so a lookup answer read before the report
/// (whose owner checks the change ring inside its CAS loop) cannot land after it. False when
/// the slot could not be written.
fn drop_from_slot<H: Host + ?Sized>(host: &H, table: &Table, change: &Change) -> bool {
    table
        .update(host, &change.key, |slot: &Slot| {
            Some(shared_table::drop_outdated(slot, change).unwrap_or_else(|| slot.clone()))
        })
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_host::FakeHost;
    use crate::freshness::Stamp;
    use crate::shared::table::SlotVerdict;
    use crate::test_support::test;
    use crate::verdict::Identity;
    use keygate_protocol::KeyId;
    use std::rc::Rc;

    fn setup() -> (FakeHost, Rc<Names>, Table) {
        let host = FakeHost::new();
        let names = Rc::new(Names::new("sync"));
        let table = Table::new(Rc::clone(&names), 16);
        table.create(&host);
        (host, names, table)
    }

    #[test]
    fn one_poller_at_a_time_and_a_dead_pollers_lease_expires() {
        let (a, names, _) = setup();
        let b = a.sibling();
        a.set_now(1000);
        assert_eq!(try_start(&a, &names, 1, 500), Start::Poll { since: 0 });
        assert_eq!(
            try_start(&b, &names, 2, 500),
            Start::NotNow {
                next_check_ms: 1500
            }
        );
        a.advance(500);
        assert_eq!(
            try_start(&b, &names, 2, 500),
            Start::Poll { since: 0 },
            "taken over after the lease"
        );
    }

    #[test]
    fn a_page_is_published_then_the_next_poll_waits_an_interval() {
        let (host, names, table) = setup();
        host.set_now(1000);
        let k = KeyId::of(b"revoked");
        let identity = Identity {
            account_id: "a".into(),
            user_id: "u".into(),
            role: "r".into(),
            ..Identity::default()
        };
        let slot = Slot {
            verdict: Some(SlotVerdict {
                key: k,
                identity: Some(identity),
                stamp: Stamp::issue(0, 0, 99_999, 0, u64::MAX),
            }),
            lease: None,
        };
        table.update(&host, &k, |_| Some(slot.clone())).unwrap();

        assert_eq!(try_start(&host, &names, 1, 500), Start::Poll { since: 0 });
        let page = Changes::Changed {
            revision: 7,
            keys: vec![Change::of(k)],
            more: false,
            skipped: 0,
        };
        assert_eq!(
            finish(&host, &names, &table, 1, Some(&page), 1000),
            Applied {
                keys: 1,
                reset: false,
                skipped: 0
            }
        );

        let ring = shared::read::<FakeHost, ChangeRing>(&host, &names.changes)
            .0
            .unwrap();
        assert_eq!(ring.ids, vec![Change::of(k)]);
        let epoch = shared::read::<FakeHost, Epoch>(&host, &names.epoch)
            .0
            .unwrap();
        assert_eq!(
            epoch,
            Epoch {
                generation: 0,
                change_seq: 1,
                revision: 7,
                synced_ms: 1000,
            }
        );
        assert_eq!(
            table.read(&host, &k).0.verdict,
            None,
            "the slot forgot the key"
        );
        let rec = shared::read::<FakeHost, FeedRecord>(&host, &names.sync)
            .0
            .unwrap();
        assert_eq!(
            rec,
            FeedRecord {
                revision: 7,
                owner: 0,
                deadline_ms: 0,
                next_poll_ms: 2000
            }
        );
        assert_eq!(
            try_start(&host, &names, 1, 500),
            Start::NotNow {
                next_check_ms: 2000
            }
        );
        host.advance(1000);
        assert_eq!(try_start(&host, &names, 1, 500), Start::Poll { since: 7 });
    }

    #[test]
    fn more_means_poll_again_at_once_and_failure_keeps_the_revision() {
        let (host, names, table) = setup();
        host.set_now(50);
        try_start(&host, &names, 1, 500);
        finish(
            &host,
            &names,
            &table,
            1,
            Some(&Changes::Changed {
                revision: 3,
                keys: vec![],
                more: true,
                skipped: 0,
            }),
            1000,
        );
        assert_eq!(try_start(&host, &names, 1, 500), Start::Poll { since: 3 });
        finish(&host, &names, &table, 1, None, 1000);
        let rec = shared::read::<FakeHost, FeedRecord>(&host, &names.sync)
            .0
            .unwrap();
        assert_eq!((rec.revision, rec.owner, rec.next_poll_ms), (3, 0, 1050));
    }

    #[test]
    fn a_reset_bumps_the_generation_and_clears_the_table() {
        let (host, names, table) = setup();
        let k = KeyId::of(b"x");
        let slot = Slot {
            verdict: Some(SlotVerdict {
                key: k,
                identity: None,
                stamp: Stamp::issue(0, 0, 9, 0, u64::MAX),
            }),
            lease: None,
        };
        table.update(&host, &k, |_| Some(slot.clone())).unwrap();
        try_start(&host, &names, 1, 500);
        let applied = finish(
            &host,
            &names,
            &table,
            1,
            Some(&Changes::Reset { revision: 40 }),
            1000,
        );
        assert!(applied.reset);
        let epoch = shared::read::<FakeHost, Epoch>(&host, &names.epoch)
            .0
            .unwrap();
        assert_eq!(epoch.generation, 1);
        assert_eq!(epoch.revision, 40);
        assert_eq!(table.read(&host, &k).0, Slot::default());
        let ring = shared::read::<FakeHost, ChangeRing>(&host, &names.changes)
            .0
            .unwrap();
        assert_eq!(ring.since(0), shared::CatchUp::Everything);
    }

    #[test]
    fn a_page_from_0_past_revision_0_is_a_reset_once_synced_at_revision_0() {
        let (host, names, table) = setup();
        host.set_now(10);
        let page = |revision| Changes::Changed {
            revision,
            keys: vec![],
            more: false,
            skipped: 0,
        };
        assert!(!synced(&host, &names));
        assert_eq!(
            interpret(&host, &names, 0, page(4)),
            page(4),
            "a cold start: the revision only"
        );
        assert_eq!(try_start(&host, &names, 1, 500), Start::Poll { since: 0 });
        finish(&host, &names, &table, 1, Some(&page(0)), 1000);
        assert!(synced(&host, &names), "at revision 0: nothing has changed");
        assert_eq!(revision(&host, &names), 0);
        assert_eq!(interpret(&host, &names, 0, page(0)), page(0));
        assert_eq!(
            interpret(&host, &names, 0, page(4)),
            Changes::Reset { revision: 4 },
            "the store moved: what changed is unknown"
        );
        assert_eq!(interpret(&host, &names, 3, page(4)), page(4));
    }

    #[test]
    fn a_late_poller_does_not_release_the_lease_of_its_successor() {
        let (a, names, table) = setup();
        let b = a.sibling();
        a.set_now(0);
        try_start(&a, &names, 1, 100);
        a.advance(100);
        assert_eq!(try_start(&b, &names, 2, 100), Start::Poll { since: 0 });
        finish(
            &a,
            &names,
            &table,
            1,
            Some(&Changes::Changed {
                revision: 5,
                keys: vec![],
                more: false,
                skipped: 0,
            }),
            1000,
        );
        let rec = shared::read::<FakeHost, FeedRecord>(&a, &names.sync)
            .0
            .unwrap();
        assert_eq!(rec.owner, 2);
    }
}
