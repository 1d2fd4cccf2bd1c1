//! Verdict freshness: when a cached verdict may answer, when it may be served stale, and which
//! change the changes feed reports outdates it. The one home of these rules: the L1
//! ([`crate::l1`]), the shared table ([`crate::shared::table`]), the change ring
//! ([`crate::shared::ChangeRing`]) and the worker's outbox ask here and compare no timestamps,
//! generations or change kinds themselves.
//!
//! Invariants:
//! - a verdict answers only under the generation it was fetched under, before it expires, and
//!   (an allow) only if fetched at or after the caller's cutoff ([`Stamp::may_answer`]);
//! - only an allow is ever served stale, within its stale window, under its generation
//!   ([`Stamp::may_serve_stale`]);
//! - a change of a key outdates every verdict on it, except that a creation outdates only a
//!   deny: a cached identity stays valid ([`Change::outdates`]; a change is a word of the
//!   store protocol, [`crate::store`]).
//!
//! A verdict is about one key: whether the key asked about is the verdict's own is the storage's
//! business (the L1 is a map by key; a slot of the shared table and a change compare the key
//! they hold). This module knows nothing of them: it sits below the L1 and shared data.

use keygate_protocol::KeyId;

use crate::store::Change;

/// When, and under which generation, a verdict was fetched, and how long it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    /// The shared generation the verdict was fetched under; another one means stale.
    pub generation: u64,
    /// When the store gave it (an allow older than the caller's cutoff is re-checked while the
    /// changes feed is down).
    pub fetched_ms: u64,
    /// Until when it may answer.
    pub expires_ms: u64,
    /// Until when an allow may be served stale if the store fails (stale-if-error).
    pub stale_until_ms: u64,
}

impl Stamp {
    /// The stamp of a verdict the store gave at `fetched_ms` under `generation`: it answers for
    /// `ttl_ms`, may then be served stale for `stale_ms` more, and neither past `end_ms` (the
    /// key's own expiry: nothing allows a key past it, whatever the TTL and stale window say).
    pub fn issue(
        generation: u64,
        fetched_ms: u64,
        ttl_ms: u64,
        stale_ms: u64,
        end_ms: u64,
    ) -> Stamp {
        let expires_ms = fetched_ms.saturating_add(ttl_ms).min(end_ms);
        Stamp {
            generation,
            fetched_ms,
            expires_ms,
            stale_until_ms: expires_ms.saturating_add(stale_ms).min(end_ms),
        }
    }

    /// Whether the verdict (`allow` or a deny) may answer at `now_ms` a caller caught up with
    /// `generation`: fetched under that generation, not expired, and, for an allow, fetched no
    /// earlier than `allow_cutoff_ms` (0 while the changes feed works).
    pub fn may_answer(
        &self,
        allow: bool,
        now_ms: u64,
        generation: u64,
        allow_cutoff_ms: u64,
    ) -> bool {
        self.generation == generation
            && now_ms < self.expires_ms
            && (!allow || self.fetched_ms >= allow_cutoff_ms)
    }

    /// Whether the verdict may be served at `now_ms`, expired or not, because the store failed
    /// (stale-if-error): an allow within its stale window, fetched under `generation` (a local
    /// admin write, which may have been this key's revocation, leaves nothing to serve stale).
    pub fn may_serve_stale(&self, allow: bool, now_ms: u64, generation: u64) -> bool {
        self.generation == generation && self.in_stale_window(allow, now_ms)
    }

    /// Whether the verdict is an allow within its stale window at `now_ms`, under any
    /// generation: one a worker may still serve stale, which a deny of another key must not
    /// push out of the shared table (unknown keys must not push known ones out).
    pub fn in_stale_window(&self, allow: bool, now_ms: u64) -> bool {
        allow && now_ms < self.stale_until_ms
    }
}

/// What a key id the changes feed reported means for the verdicts cached on it.
impl Change {
    /// Whether a verdict on `key` (`allow` or a deny) fetched before this change is outdated
    /// by it: every verdict on the changed key, except that a creation (the key's only change)
    /// outdates only a deny; a cached identity stays valid and may still be served stale.
    pub fn outdates(&self, key: &KeyId, allow: bool) -> bool {
        self.key == *key && !(self.created && allow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;

    const ALLOW: bool = true;
    const DENY: bool = false;

    /// Fetched at 100 under generation 2; answers until 200, stale until 300.
    const STAMP: Stamp = Stamp {
        generation: 2,
        fetched_ms: 100,
        expires_ms: 200,
        stale_until_ms: 300,
    };

    #[test]
    fn may_answer_in_every_case() {
        // (row, allow, now, generation, cutoff, expected)
        let rows = [
            ("an allow before expiry", ALLOW, 150, 2, 0, true),
            ("a deny before expiry", DENY, 150, 2, 0, true),
            ("an allow at expiry", ALLOW, 200, 2, 0, false),
            ("a deny at expiry", DENY, 200, 2, 0, false),
            (
                "an allow past expiry, in its stale window",
                ALLOW,
                250,
                2,
                0,
                false,
            ),
            ("an allow of an older generation", ALLOW, 150, 3, 0, false),
            ("a deny of an older generation", DENY, 150, 3, 0, false),
            (
                "an allow of a generation the caller has not reached",
                ALLOW,
                150,
                1,
                0,
                false,
            ),
            ("an allow fetched at the cutoff", ALLOW, 150, 2, 100, true),
            (
                "an allow fetched before the cutoff",
                ALLOW,
                150,
                2,
                101,
                false,
            ),
            ("a deny fetched before the cutoff", DENY, 150, 2, 101, true),
        ];
        for (row, allow, now, generation, cutoff, expected) in rows {
            assert_eq!(
                STAMP.may_answer(allow, now, generation, cutoff),
                expected,
                "{row}"
            );
        }
    }

    #[test]
    fn may_serve_stale_in_every_case() {
        // (row, allow, now, generation, may serve stale, in the stale window)
        let rows = [
            ("an allow before expiry", ALLOW, 150, 2, true, true),
            (
                "an allow past expiry, in its stale window",
                ALLOW,
                250,
                2,
                true,
                true,
            ),
            (
                "an allow at the end of its stale window",
                ALLOW,
                300,
                2,
                false,
                false,
            ),
            (
                "an allow of an older generation",
                ALLOW,
                250,
                3,
                false,
                true,
            ),
            ("a deny before expiry", DENY, 150, 2, false, false),
            (
                "a deny in what would be a stale window",
                DENY,
                250,
                2,
                false,
                false,
            ),
        ];
        for (row, allow, now, generation, stale, window) in rows {
            assert_eq!(
                STAMP.may_serve_stale(allow, now, generation),
                stale,
                "{row}"
            );
            assert_eq!(STAMP.in_stale_window(allow, now), window, "{row} (window)");
        }
    }

    #[test]
    fn a_change_outdates_every_verdict_on_its_key_a_creation_only_a_deny() {
        let key = KeyId::of(b"k");
        let other = KeyId::of(b"other");
        let changed = Change::of(key);
        let created = Change { key, created: true };
        // (row, change, key of the verdict, allow, expected)
        let rows = [
            ("a change outdates an allow", changed, key, ALLOW, true),
            ("a change outdates a deny", changed, key, DENY, true),
            ("a creation outdates a deny", created, key, DENY, true),
            ("a creation leaves an allow", created, key, ALLOW, false),
            (
                "a change leaves another key's allow",
                changed,
                other,
                ALLOW,
                false,
            ),
            (
                "a change leaves another key's deny",
                changed,
                other,
                DENY,
                false,
            ),
            (
                "a creation leaves another key's deny",
                created,
                other,
                DENY,
                false,
            ),
        ];
        for (row, change, verdict_key, allow, expected) in rows {
            assert_eq!(change.outdates(&verdict_key, allow), expected, "{row}");
        }
    }

    #[test]
    fn issue_caps_the_ttl_and_the_stale_window_at_the_keys_expiry() {
        // (row, ttl, stale, end, expected expiry, expected stale end)
        let rows = [
            ("no key expiry", 100, 50, u64::MAX, 1100, 1150),
            ("a deny has no stale window", 100, 0, u64::MAX, 1100, 1100),
            (
                "the key expires in the stale window",
                100,
                50,
                1120,
                1100,
                1120,
            ),
            ("the key expires before the ttl", 100, 50, 1010, 1010, 1010),
            (
                "a ttl past the clock's end",
                u64::MAX,
                50,
                u64::MAX,
                u64::MAX,
                u64::MAX,
            ),
        ];
        for (row, ttl, stale, end, expires, stale_until) in rows {
            let s = Stamp::issue(7, 1000, ttl, stale, end);
            let want = Stamp {
                generation: 7,
                fetched_ms: 1000,
                expires_ms: expires,
                stale_until_ms: stale_until,
            };
            assert_eq!(s, want, "{row}");
        }
    }
}
