//! Usage reports ("last used"): which key ids this Envoy admitted, sent to the store in
//! batches (`POST {store.usage_path}`; the report's body and what its answer means:
//! [`crate::store::usage_body`], [`crate::store::usage_reply`]), off the hit path.
//!
//! - The hit path only flips a flag in the L1 entry and, the first time, pushes the key id onto
//!   this worker's [`UsageLog`] (bounded; no allocation once it has grown).
//! - Each worker's tick merges its log into the Envoy-wide [`Batch`] in shared data (bounded
//!   to [`MAX_BATCH`] distinct ids; more are dropped until the next send).
//! - The batch carries `next_send_ms`: the worker whose CAS empties the batch at or after it
//!   sends the report, and sets the next time one interval later. That CAS is the lease: one
//!   report per Envoy per interval, whichever worker wins.
//! - A store without the endpoint (404, 405, 501) puts the batch to sleep for
//!   [`NOT_SUPPORTED_BACKOFF_MS`] with one log line; other failures put the ids back for the
//!   next interval.

use keygate_protocol::KeyId;

use crate::shared::{Reader, Record, Writer};

/// Most key ids in one report (and in the shared batch).
pub const MAX_BATCH: usize = 5000;
/// How long a store that does not implement the report endpoint is left alone.
pub const NOT_SUPPORTED_BACKOFF_MS: u64 = 3_600_000;

/// The key ids one worker admitted since its last merge, each once (the L1 flag dedupes).
#[derive(Debug, Default)]
pub struct UsageLog {
    ids: Vec<KeyId>,
}

impl UsageLog {
    /// Notes a use; false when the log is full (the caller leaves the entry unflagged so the
    /// key is noted again after the next merge).
    pub fn note(&mut self, key: KeyId) -> bool {
        if self.ids.len() >= MAX_BATCH {
            return false;
        }
        self.ids.push(key);
        true
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The ids noted so far; the log is empty afterwards (its capacity kept).
    pub fn drain(&mut self) -> std::vec::Drain<'_, KeyId> {
        self.ids.drain(..)
    }
}

/// The Envoy-wide batch in shared data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    /// No report before this (unix ms).
    pub next_send_ms: u64,
    pub ids: Vec<KeyId>,
}

impl Batch {
    /// The batch with `ids` added (distinct, at most [`MAX_BATCH`]).
    pub fn merged(mut self, ids: impl IntoIterator<Item = KeyId>) -> Batch {
        let mut seen: std::collections::HashSet<KeyId> = self.ids.iter().copied().collect();
        for id in ids {
            if self.ids.len() >= MAX_BATCH {
                break;
            }
            if seen.insert(id) {
                self.ids.push(id);
            }
        }
        self
    }
}

impl Record for Batch {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.next_send_ms);
        w.u32(u32::try_from(self.ids.len()).unwrap_or(0));
        for id in &self.ids {
            w.key(id);
        }
        w.finish()
    }

    fn decode(bytes: &[u8]) -> Option<Batch> {
        let mut r = Reader::new(bytes)?;
        let next_send_ms = r.u64()?;
        let n = usize::try_from(r.u32()?).ok()?;
        if n > MAX_BATCH {
            return None;
        }
        let ids = (0..n).map(|_| r.key()).collect::<Option<Vec<_>>>()?;
        r.end()?;
        Some(Batch { next_send_ms, ids })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;

    fn id(n: u32) -> KeyId {
        KeyId::of(&n.to_be_bytes())
    }

    #[test]
    fn the_batch_is_distinct_bounded_and_round_trips() {
        let b = Batch::default().merged([id(1), id(2), id(1)]);
        assert_eq!(b.ids, vec![id(1), id(2)]);
        let big = b.merged((0..10_000).map(id));
        assert_eq!(big.ids.len(), MAX_BATCH);
        let back = Batch::decode(&big.encode()).unwrap();
        assert_eq!(back, big);
        let mut bytes = big.encode();
        bytes.pop();
        assert_eq!(Batch::decode(&bytes), None);
    }

    #[test]
    fn the_log_is_bounded_and_drains() {
        let mut log = UsageLog::default();
        assert!((0..MAX_BATCH as u32).all(|n| log.note(id(n))));
        assert!(!log.note(id(u32::MAX)));
        assert_eq!(log.drain().count(), MAX_BATCH);
        assert!(log.is_empty());
    }
}
