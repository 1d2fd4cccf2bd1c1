//! The key summary in shared data: one copy per Envoy of the store's summary of live key ids
//! ([`keygate_protocol::summary`], every layout rule is there), kept current from the changes
//! feed and read on a miss.
//!
//! Invariant: a key id that the store held at a revision this Envoy's feed has published is
//! never [`Membership::Absent`]. The active summary was built at a revision at least the
//! feed's when its fetch was sent, and every page published after that is inserted into it
//! ([`install`] says how, without a gap); a summary that could not take a page is dropped
//! (none, then fetched again). `Absent` is only ever read from a chunk tagged with the active
//! summary's install id: a chunk being emptied, overwritten by another install, or missing
//! reads as [`Membership::NoSummary`], never as `Absent`.
//!
//! Shared data (names in [`crate::shared::Names`]): the record `summary` holds the active
//! summary's [`Meta`] or none; its blocks live in chunks of [`CHUNK_BLOCKS`] blocks (4 KiB)
//! named `summary/<slot>/<index>`, each the install id (u64, little-endian) then its blocks.
//! Two slots alternate, so at most two copies exist (during an install) and names are reused:
//! the number of records is bounded by `2 × summary.max_bytes / 4 KiB`, whatever the store
//! sends. The staging record of an install in progress is [`install::Staging`].

pub mod install;

use std::collections::BTreeMap;

use keygate_protocol::summary::{probe, Header, Probe, BLOCK_BYTES};
use keygate_protocol::KeyId;

use crate::host::{Host, SharedError};
use crate::shared::{self, Names, Reader, Record, Writer, MAX_CAS_RETRIES};

/// Blocks per chunk: 64 blocks of 64 bytes, 4 KiB.
pub const CHUNK_BLOCKS: u32 = 64;
/// Bytes of a chunk's tag (the install id) before its blocks.
const TAG_BYTES: usize = 8;

/// What the summary says about a key id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// No usable summary (none installed, or its chunk is being replaced): as without one.
    NoSummary,
    /// Not in the store at the summary's revision, nor reported by the feed since.
    Absent,
    /// In the summary (or a false positive).
    MayExist,
}

/// The active summary (or one being installed): where its chunks are and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// The install that wrote its chunks (unique per Envoy, growing).
    pub id: u64,
    /// 0 or 1: the chunks' names.
    pub slot: u8,
    /// The store's revision it was built at.
    pub revision: u64,
    pub blocks: u32,
    pub hashes: u8,
    /// Key ids inserted: the store's count, then the feed's.
    pub keys: u64,
    pub bits_set: u64,
    /// When it was fetched (wall clock, ms).
    pub fetched_ms: u64,
}

impl Meta {
    /// The meta of a summary fetched with `header`, installed as `id` into `slot`.
    pub fn of(header: &Header, id: u64, slot: u8, fetched_ms: u64) -> Meta {
        Meta {
            id,
            slot,
            revision: header.revision,
            blocks: header.blocks,
            hashes: header.hashes,
            keys: header.keys,
            bits_set: header.bits_set,
            fetched_ms,
        }
    }

    pub fn header(&self) -> Header {
        Header {
            revision: self.revision,
            keys: self.keys,
            bits_set: self.bits_set,
            blocks: self.blocks,
            hashes: self.hashes,
        }
    }

    /// Bytes of its blocks.
    pub fn bytes(&self) -> usize {
        self.header().body_bytes()
    }

    /// Number of chunks.
    pub fn chunks(&self) -> u32 {
        self.blocks.div_ceil(CHUNK_BLOCKS)
    }

    /// Its estimated false-positive rate, from the share of bits set.
    pub fn false_positive_rate(&self) -> f64 {
        self.header().estimated_false_positive_rate()
    }

    fn write(&self, w: &mut Writer) {
        w.u64(self.id);
        w.u8(self.slot);
        w.u64(self.revision);
        w.u32(self.blocks);
        w.u8(self.hashes);
        w.u64(self.keys);
        w.u64(self.bits_set);
        w.u64(self.fetched_ms);
    }

    fn read(r: &mut Reader<'_>) -> Option<Meta> {
        Some(Meta {
            id: r.u64()?,
            slot: r.u8().filter(|s| *s <= 1)?,
            revision: r.u64()?,
            blocks: r.u32().filter(|b| *b > 0)?,
            hashes: r.u8().filter(|h| *h > 0)?,
            keys: r.u64()?,
            bits_set: r.u64()?,
            fetched_ms: r.u64()?,
        })
    }
}

/// The record `summary`: the active summary's meta, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Active(pub Option<Meta>);

impl Record for Active {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match &self.0 {
            None => w.u8(0),
            Some(m) => {
                w.u8(1);
                m.write(&mut w);
            }
        }
        w.finish()
    }

    fn decode(bytes: &[u8]) -> Option<Active> {
        let mut r = Reader::new(bytes)?;
        let active = match r.u8()? {
            0 => Active(None),
            1 => Active(Some(Meta::read(&mut r)?)),
            _ => return None,
        };
        r.end()?;
        Some(active)
    }
}

/// The active summary's meta (none when absent or unreadable).
pub fn active<H: Host + ?Sized>(host: &H, names: &Names) -> Option<Meta> {
    shared::read::<H, Active>(host, &names.summary)
        .0
        .and_then(|a| a.0)
}

/// Makes the active summary none (it may miss keys): misses are then as without a summary.
pub fn drop_active<H: Host + ?Sized>(host: &H, names: &Names) -> Result<(), SharedError> {
    host.set_shared(&names.summary, &Active(None).encode(), None)
}

/// What the summary says about `key`: one read of the meta, one of a chunk.
pub fn membership<H: Host + ?Sized>(host: &H, names: &Names, key: &KeyId) -> Membership {
    let Some(meta) = active(host, names) else {
        return Membership::NoSummary;
    };
    let p = probe(key, meta.blocks, meta.hashes);
    let (index, at) = locate(p.block);
    let (bytes, _) = host.get_shared(&names.summary_chunk(meta.slot, index));
    let Some(blocks) = bytes.as_deref().and_then(|b| tagged(b, meta.id)) else {
        return Membership::NoSummary;
    };
    match blocks.get(at..at.saturating_add(BLOCK_BYTES)) {
        Some(block) if p.found_in(block) => Membership::MayExist,
        Some(_) => Membership::Absent,
        None => Membership::NoSummary,
    }
}

/// The chunk of block `block`, and the block's offset in the chunk's blocks.
fn locate(block: u32) -> (u32, usize) {
    let index = block / CHUNK_BLOCKS;
    let within = usize::try_from(block % CHUNK_BLOCKS).unwrap_or(0);
    (index, within.saturating_mul(BLOCK_BYTES))
}

/// A chunk's value: the install id, then its blocks.
pub fn chunk_value(id: u64, blocks: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(TAG_BYTES.saturating_add(blocks.len()));
    v.extend_from_slice(&id.to_le_bytes());
    v.extend_from_slice(blocks);
    v
}

/// The install id a chunk's value is tagged with (none: empty or not a chunk).
fn tag(value: &[u8]) -> Option<u64> {
    let head: [u8; TAG_BYTES] = value.get(..TAG_BYTES)?.try_into().ok()?;
    Some(u64::from_le_bytes(head))
}

/// The blocks of a chunk's value if it is tagged `id`.
fn tagged(value: &[u8], id: u64) -> Option<&[u8]> {
    (tag(value)? == id).then(|| value.get(TAG_BYTES..).unwrap_or_default())
}

/// A chunk could not be written: the summary it belongs to misses a key id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lost;

/// Sets the bits of `keys` in the chunks of the summary `meta` (one CAS loop per chunk);
/// the bits newly set. A chunk not tagged with `meta`'s install (being replaced or emptied)
/// is left alone: membership never answers `Absent` from it.
pub fn insert<H: Host + ?Sized>(
    host: &H,
    names: &Names,
    meta: &Meta,
    keys: &[KeyId],
) -> Result<u64, Lost> {
    let mut by_chunk: BTreeMap<u32, Vec<(usize, Probe)>> = BTreeMap::new();
    for key in keys {
        let p = probe(key, meta.blocks, meta.hashes);
        let (index, at) = locate(p.block);
        by_chunk.entry(index).or_default().push((at, p));
    }
    let mut new_bits = 0u64;
    for (index, probes) in by_chunk {
        let name = names.summary_chunk(meta.slot, index);
        new_bits = new_bits.saturating_add(set_bits(host, &name, meta.id, &probes)?);
    }
    Ok(new_bits)
}

/// Sets `probes` in chunk `name` if it is tagged `id`, under CAS; the bits newly set.
fn set_bits<H: Host + ?Sized>(
    host: &H,
    name: &str,
    id: u64,
    probes: &[(usize, Probe)],
) -> Result<u64, Lost> {
    for _ in 0..MAX_CAS_RETRIES {
        let (bytes, cas) = host.get_shared(name);
        let Some(mut value) = bytes.filter(|v| tag(v) == Some(id)) else {
            return Ok(0);
        };
        let mut new_bits = 0u64;
        let blocks = value.get_mut(TAG_BYTES..).unwrap_or_default();
        for (at, p) in probes {
            if let Some(block) = blocks.get_mut(*at..at.saturating_add(BLOCK_BYTES)) {
                new_bits = new_bits.saturating_add(u64::from(p.set_in(block)));
            }
        }
        if new_bits == 0 {
            return Ok(0);
        }
        match host.set_shared(name, &value, cas) {
            Ok(()) => return Ok(new_bits),
            Err(SharedError::CasMismatch) => continue,
            Err(SharedError::Host) => return Err(Lost),
        }
    }
    Err(Lost)
}

/// Adds key ids reported by the feed to the active summary: bits, then the counts in its
/// meta. A summary that could not take them is dropped (it would miss them).
pub fn add_to_active<H: Host + ?Sized>(host: &H, names: &Names, keys: &[KeyId]) {
    let Some(meta) = active(host, names) else {
        return;
    };
    let Ok(new_bits) = insert(host, names, &meta, keys) else {
        log::warn!("could not add key ids to the key summary: dropped, fetched again");
        let _ = drop_active(host, names);
        return;
    };
    let added = u64::try_from(keys.len()).unwrap_or(u64::MAX);
    let _ = shared::update(host, &names.summary, |a: Option<Active>| {
        let mut m = a?.0.filter(|m| m.id == meta.id)?;
        m.keys = m.keys.saturating_add(added);
        m.bits_set = m.bits_set.saturating_add(new_bits);
        Some(Active(Some(m)))
    });
}

#[cfg(test)]
mod tests;
