//! Shared data: the records all workers of one Envoy see, their binary form, and the
//! compare-and-swap update loop.
//!
//! Proxy-wasm shared data has no delete and no expiry, so every record here has a fixed name
//! and a bounded size: the epoch, the change ring, the sync record, the miss budget, an owner
//! counter, and the fixed table of slots ([`table`]). Decoders never panic: a record that
//! does not decode is treated as absent and overwritten by CAS.

use keygate_protocol::KeyId;

use crate::host::{Host, SharedError};
use crate::store::Change;

pub mod table;

/// Bumped when a record's layout changes; records of another version decode as absent.
pub const RECORD_VERSION: u8 = 3;

/// How many times a CAS update re-reads and retries before giving up.
pub const MAX_CAS_RETRIES: usize = 16;

/// A record kept in shared data.
pub trait Record: Sized {
    fn encode(&self) -> Vec<u8>;
    fn decode(bytes: &[u8]) -> Option<Self>;
}

/// Read-modify-write of one record under CAS. `change` sees the current value (`None` when
/// absent or undecodable) and returns the new one, or `None` to leave the record as it is.
/// Returns the value written, `Ok(None)` when `change` declined.
///
/// A missing record is created unconditionally (Envoy creates whatever cas is passed), so two
/// workers creating the same record at once both succeed; callers create records up front
/// where that matters.
pub fn update<H, T, F>(host: &H, name: &str, mut change: F) -> Result<Option<T>, SharedError>
where
    H: Host + ?Sized,
    T: Record,
    F: FnMut(Option<T>) -> Option<T>,
{
    for _ in 0..MAX_CAS_RETRIES {
        let (bytes, cas) = host.get_shared(name);
        let current = bytes.as_deref().and_then(T::decode);
        let Some(next) = change(current) else {
            return Ok(None);
        };
        match host.set_shared(name, &next.encode(), cas) {
            Ok(()) => return Ok(Some(next)),
            Err(SharedError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(SharedError::CasMismatch)
}

/// Reads and decodes a record with its cas.
pub fn read<H: Host + ?Sized, T: Record>(host: &H, name: &str) -> (Option<T>, Option<u32>) {
    let (bytes, cas) = host.get_shared(name);
    (bytes.as_deref().and_then(T::decode), cas)
}

/// The names of this filter configuration's records. The prefix is derived from the store's
/// address and the table size, so two filter configurations sharing a `vm_id` cannot mix
/// verdicts from different stores or layouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
    pub epoch: String,
    pub changes: String,
    pub sync: String,
    pub budget: String,
    pub owners: String,
    pub table_ready: String,
    /// The miss budget's reserve for revalidating keys that were valid recently.
    pub reserve: String,
    /// When this Envoy last dropped every cached verdict for a local admin write.
    pub drops: String,
    /// The key ids admitted, waiting for the next usage report.
    pub usage: String,
    /// The summary gate ([`crate::worker::budget::gate`]).
    pub gate: String,
    /// The active key summary's meta ([`crate::summary::Meta`]), or none.
    pub summary: String,
    /// The key summary's install in progress ([`crate::summary::install::Staging`]).
    pub summary_staging: String,
}

impl Names {
    pub fn new(namespace: &str) -> Names {
        let prefix = format!("keygate.{}.", &KeyId::of(namespace.as_bytes()).short());
        Names {
            epoch: format!("{prefix}epoch"),
            changes: format!("{prefix}changes"),
            sync: format!("{prefix}sync"),
            budget: format!("{prefix}budget"),
            owners: format!("{prefix}owners"),
            table_ready: format!("{prefix}table"),
            reserve: format!("{prefix}reserve"),
            drops: format!("{prefix}drops"),
            usage: format!("{prefix}usage"),
            gate: format!("{prefix}gate"),
            summary: format!("{prefix}summary.active"),
            summary_staging: format!("{prefix}summary.staging"),
            prefix,
        }
    }

    /// The shared queue through which worker `owner` wakes its own root context: unique per
    /// worker of this Envoy and namespace (registering a taken name would steal its receiver).
    pub fn wake_queue(&self, owner: u64) -> String {
        format!("{}wake.{owner}", self.prefix)
    }

    pub fn slot(&self, index: u32) -> String {
        format!("{}slot.{index}", self.prefix)
    }

    /// Chunk `index` of the key summary in slot `slot` (0 or 1).
    pub fn summary_chunk(&self, slot: u8, index: u32) -> String {
        format!("{}summary/{slot}/{index}", self.prefix)
    }
}

/// What every worker checks before answering from its cache (one small read per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Epoch {
    /// Bumped by a local admin write and by a changes-feed reset: every older verdict is stale.
    pub generation: u64,
    /// Sequence number of the newest entry in the change ring.
    pub change_seq: u64,
    /// The store revision the change ring is synced to: 0 before the first poll, and also for
    /// a store that has never changed (`synced_ms` tells the two apart).
    pub revision: u64,
    /// When the last good poll was published (0: never).
    pub synced_ms: u64,
}

impl Record for Epoch {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.generation);
        w.u64(self.change_seq);
        w.u64(self.revision);
        w.u64(self.synced_ms);
        w.finish()
    }

    fn decode(bytes: &[u8]) -> Option<Epoch> {
        let mut r = Reader::new(bytes)?;
        let e = Epoch {
            generation: r.u64()?,
            change_seq: r.u64()?,
            revision: r.u64()?,
            synced_ms: r.u64()?,
        };
        r.end()?;
        Some(e)
    }
}

/// The key ids the changes feed reported, newest last, at most [`ChangeRing::CAPACITY`].
/// Entry `i` has sequence number `head_seq - len + 1 + i`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChangeRing {
    pub head_seq: u64,
    pub ids: Vec<Change>,
}

/// What a worker must drop from its L1 to catch up with the change ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatchUp<'a> {
    Nothing,
    Keys(&'a [Change]),
    /// The worker fell behind the ring's capacity (or the ring was reset): drop everything.
    Everything,
}

impl ChangeRing {
    pub const CAPACITY: usize = 1024;

    pub fn push(&mut self, ids: &[Change]) {
        for id in ids {
            self.ids.push(*id);
            self.head_seq = self.head_seq.saturating_add(1);
        }
        let excess = self.ids.len().saturating_sub(Self::CAPACITY);
        self.ids.drain(..excess);
    }

    /// Marks a reset: sequence jumps past the capacity so every worker drops everything.
    pub fn reset(&mut self) {
        self.ids.clear();
        self.head_seq = self
            .head_seq
            .saturating_add(Self::CAPACITY as u64)
            .saturating_add(1);
    }

    /// The entries newer than `seen`.
    pub fn since(&self, seen: u64) -> CatchUp<'_> {
        if seen >= self.head_seq {
            return CatchUp::Nothing;
        }
        let len = self.ids.len() as u64;
        let oldest = self.head_seq.saturating_sub(len).saturating_add(1);
        if seen.saturating_add(1) < oldest {
            return CatchUp::Everything;
        }
        let skip =
            usize::try_from(seen.saturating_add(1).saturating_sub(oldest)).unwrap_or(usize::MAX);
        self.ids.get(skip..).map_or(CatchUp::Nothing, CatchUp::Keys)
    }

    /// Whether `key` changed after sequence `seen` (true when that cannot be known).
    pub fn changed_since(&self, key: &KeyId, seen: u64) -> bool {
        match self.since(seen) {
            CatchUp::Nothing => false,
            CatchUp::Keys(ids) => ids.iter().any(|c| c.key == *key),
            CatchUp::Everything => true,
        }
    }

    /// Whether a verdict on `key` (`allow` or not) fetched at sequence `seen` may predate a
    /// change reported since that outdates it ([`Change::outdates`]; true when that cannot be
    /// known).
    pub fn outdates(&self, key: &KeyId, seen: u64, allow: bool) -> bool {
        match self.since(seen) {
            CatchUp::Nothing => false,
            CatchUp::Keys(ids) => ids.iter().any(|c| c.outdates(key, allow)),
            CatchUp::Everything => true,
        }
    }
}

impl Record for ChangeRing {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.head_seq);
        w.u32(u32::try_from(self.ids.len()).unwrap_or(0));
        for c in &self.ids {
            w.key(&c.key);
            w.u8(u8::from(c.created));
        }
        w.finish()
    }

    fn decode(bytes: &[u8]) -> Option<ChangeRing> {
        let mut r = Reader::new(bytes)?;
        let head_seq = r.u64()?;
        let n = usize::try_from(r.u32()?).ok()?;
        if n > Self::CAPACITY {
            return None;
        }
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let key = r.key()?;
            let created = match r.u8()? {
                0 => false,
                1 => true,
                _ => return None,
            };
            ids.push(Change { key, created });
        }
        r.end()?;
        Some(ChangeRing { head_seq, ids })
    }
}

/// A record of one number: the last owner id handed out (one per worker VM; a VM's root
/// contexts share one), the slot count the shared table was created with, or the time of the
/// last drop of everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Number(pub u64);

impl Record for Number {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.0);
        w.finish()
    }

    fn decode(bytes: &[u8]) -> Option<Number> {
        let mut r = Reader::new(bytes)?;
        let v = r.u64()?;
        r.end()?;
        Some(Number(v))
    }
}

/// Takes a fresh owner id (1, 2, ...): one more than the last one handed out.
pub fn new_owner<H: Host + ?Sized>(host: &H, names: &Names) -> Result<u64, SharedError> {
    let written = update(host, &names.owners, |c: Option<Number>| {
        Some(Number(c.map_or(0, |c| c.0).saturating_add(1)))
    })?;
    Ok(written.map_or(0, |c| c.0))
}

// ---- a small bounds-checked codec ----

pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Writer {
        let mut buf = Vec::with_capacity(64);
        buf.push(RECORD_VERSION);
        Writer { buf }
    }
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn key(&mut self, k: &KeyId) {
        self.buf.extend_from_slice(&k.0);
    }
    /// A string of at most 65535 bytes (longer ones are cut at a char boundary; callers bound
    /// their strings well below that).
    pub fn str(&mut self, s: &str) {
        let mut end = s.len().min(usize::from(u16::MAX));
        while !s.is_char_boundary(end) {
            end = end.saturating_sub(1);
        }
        let bytes = s.as_bytes().get(..end).unwrap_or_default();
        self.buf
            .extend_from_slice(&u16::try_from(bytes.len()).unwrap_or(0).to_le_bytes());
        self.buf.extend_from_slice(bytes);
    }
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

impl Default for Writer {
    fn default() -> Self {
        Writer::new()
    }
}

pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading a record; `None` when it is of another version.
    pub fn new(bytes: &'a [u8]) -> Option<Reader<'a>> {
        match bytes {
            [RECORD_VERSION, rest @ ..] => Some(Reader { rest }),
            _ => None,
        }
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }
    pub fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    pub fn key(&mut self) -> Option<KeyId> {
        Some(KeyId(self.take(32)?.try_into().ok()?))
    }
    pub fn str(&mut self) -> Option<String> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().ok()?);
        let bytes = self.take(usize::from(len))?;
        String::from_utf8(bytes.to_vec()).ok()
    }
    /// Succeeds only when every byte was read.
    pub fn end(&self) -> Option<()> {
        self.rest.is_empty().then_some(())
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

    #[test]
    fn epoch_round_trips_and_rejects_garbage() {
        let e = Epoch {
            generation: 3,
            change_seq: 9,
            revision: 77,
            synced_ms: 5,
        };
        assert_eq!(Epoch::decode(&e.encode()), Some(e));
        assert_eq!(Epoch::decode(&[]), None);
        assert_eq!(Epoch::decode(&[9, 0, 0]), None);
        let mut long = e.encode();
        long.push(0);
        assert_eq!(Epoch::decode(&long), None);
        let mut short = e.encode();
        short.pop();
        assert_eq!(Epoch::decode(&short), None);
    }

    #[test]
    fn change_ring_tells_each_worker_what_it_missed() {
        let mut ring = ChangeRing::default();
        ring.push(&[Change::of(id(1)), Change::of(id(2))]);
        ring.push(&[Change {
            key: id(3),
            created: true,
        }]);
        assert_eq!(ring.head_seq, 3);
        let all = [
            Change::of(id(1)),
            Change::of(id(2)),
            Change {
                key: id(3),
                created: true,
            },
        ];
        assert_eq!(ring.since(0), CatchUp::Keys(&all[..]));
        assert_eq!(ring.since(2), CatchUp::Keys(&all[2..]));
        assert_eq!(ring.since(3), CatchUp::Nothing);
        assert!(ring.changed_since(&id(3), 2));
        assert!(!ring.changed_since(&id(1), 2));
        assert!(
            ring.outdates(&id(3), 2, false),
            "a creation outdates a deny"
        );
        assert!(!ring.outdates(&id(3), 2, true), "but not an allow");
        assert!(ring.outdates(&id(2), 1, true));
        assert_eq!(ChangeRing::decode(&ring.encode()), Some(ring));
    }

    #[test]
    fn change_ring_is_bounded_and_a_laggard_drops_everything() {
        let mut ring = ChangeRing::default();
        let ids: Vec<Change> = (0..(ChangeRing::CAPACITY as u32 + 10))
            .map(|n| Change::of(id(n)))
            .collect();
        ring.push(&ids);
        assert_eq!(ring.ids.len(), ChangeRing::CAPACITY);
        assert_eq!(ring.since(0), CatchUp::Everything);
        assert_eq!(ring.since(10), CatchUp::Keys(&ids[10..]));
        let seq = ring.head_seq;
        ring.reset();
        assert_eq!(ring.since(seq), CatchUp::Everything);
        assert!(ring.changed_since(&id(99_999), seq));
    }

    #[test]
    fn change_ring_decode_rejects_a_count_over_capacity() {
        let mut w = Writer::new();
        w.u64(1);
        w.u32(ChangeRing::CAPACITY as u32 + 1);
        assert_eq!(ChangeRing::decode(&w.finish()), None);
    }

    #[test]
    fn strings_round_trip_and_truncated_input_fails() {
        let mut w = Writer::new();
        w.str("héllo");
        w.u8(7);
        let bytes = w.finish();
        let mut r = Reader::new(&bytes).unwrap();
        assert_eq!(r.str().as_deref(), Some("héllo"));
        assert_eq!(r.u8(), Some(7));
        assert_eq!(r.end(), Some(()));
        for cut in 1..bytes.len() {
            let mut r = Reader::new(&bytes[..cut]).unwrap();
            assert!(r.str().is_none() || r.u8().is_none(), "cut {cut}");
        }
    }

    #[test]
    fn update_retries_on_cas_mismatch_and_owner_ids_are_unique() {
        let host = FakeHost::new();
        let names = Names::new("ns");
        let a = new_owner(&host, &names).unwrap();
        let b = new_owner(&host, &names).unwrap();
        assert_eq!((a, b), (1, 2));
        // Another writer slips in between our read and our write once: the loop retries.
        host.interfere_once(&names.owners, Number(10).encode());
        assert_eq!(new_owner(&host, &names).unwrap(), 11);
    }

    #[test]
    fn names_differ_by_namespace() {
        assert_ne!(Names::new("a").epoch, Names::new("b").epoch);
        assert!(Names::new("a").slot(7).ends_with("slot.7"));
    }
}
