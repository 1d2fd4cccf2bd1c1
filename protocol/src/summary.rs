//! The key summary: a blocked Bloom filter of the live key ids, which the key store builds and
//! serves (`GET /v1/summary`) and every Envoy keeps, so that under a flood of random keys a
//! miss whose key id is *not* in it can be refused without asking the store.
//!
//! Invariants:
//! - no false negatives: a key id inserted is found by [`Summary::may_contain`] and by
//!   [`Probe::found_in`] on its block, whatever else is inserted, in any order; the wire form
//!   ([`Summary::encode`], [`decode`]) keeps every bit;
//! - one key id touches one block of [`BLOCK_BYTES`] bytes ([`probe`]): a reader holding the
//!   summary in pieces (the filter keeps it in shared-data chunks) reads one piece per test;
//! - the block and the bits are taken from the key id's own bytes (a SHA-256, uniformly
//!   random): no hash function, no seed, nothing a reader could disagree on.
//!
//! Written here rather than taken from a Bloom-filter crate: the wire form must be the same
//! in the key store and in the filter across versions (crates hash with their own seeded
//! hashers and change their layout), and the input is already a uniform hash, so the whole
//! structure is a block choice and a few bit positions.
//!
//! Wire form (little-endian): [`MAGIC`], revision u64, keys u64, bits set u64, blocks u32,
//! hashes u8, three zero bytes ([`HEADER_BYTES`] in all), then `blocks` × [`BLOCK_BYTES`]
//! bytes, each block 8 u64 words.

use crate::KeyId;

/// Bytes in a block: 512 bits, one cache line.
pub const BLOCK_BYTES: usize = 64;
/// Bits in a block.
pub const BLOCK_BITS: u64 = 512;
/// The wire form's first bytes (its version).
pub const MAGIC: [u8; 8] = *b"KGSUMv1\0";
/// Bytes before the first block.
pub const HEADER_BYTES: usize = 40;
/// Most bit positions per key id.
pub const MAX_HASHES: u8 = 16;
/// The media type of the wire form.
pub const CONTENT_TYPE: &str = "application/vnd.keygate.summary";

/// What a summary says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The store's revision it is built at: every key id live at this revision is in it.
    pub revision: u64,
    /// Key ids inserted (duplicates included).
    pub keys: u64,
    /// Bits set, over all blocks.
    pub bits_set: u64,
    /// Number of blocks (at least 1).
    pub blocks: u32,
    /// Bit positions per key id (1..=[`MAX_HASHES`]).
    pub hashes: u8,
}

impl Header {
    /// The estimated false-positive rate from the share of bits set: (bits set / bits)^hashes.
    /// It slightly underestimates a blocked filter's (blocks fill unevenly);
    /// [`Summary::false_positive_rate`] is exact for a whole summary.
    pub fn estimated_false_positive_rate(&self) -> f64 {
        let bits = f64::from(self.blocks) * BLOCK_BITS as f64;
        let fill = (self.bits_set as f64 / bits).clamp(0.0, 1.0);
        fill.powi(i32::from(self.hashes))
    }

    /// Bytes of the blocks.
    pub fn body_bytes(&self) -> usize {
        usize::try_from(self.blocks)
            .unwrap_or(usize::MAX)
            .saturating_mul(BLOCK_BYTES)
    }
}

/// Where a key id lives in a summary: its block and the bits it sets there (8 words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub block: u32,
    pub mask: [u64; 8],
}

/// The block and bits of `key` in a summary of `blocks` blocks and `hashes` positions.
pub fn probe(key: &KeyId, blocks: u32, hashes: u8) -> Probe {
    let word = |i: usize| {
        let mut b = [0u8; 8];
        if let Some(s) = key.0.get(i..i.saturating_add(8)) {
            b.copy_from_slice(s);
        }
        u64::from_le_bytes(b)
    };
    // Multiply-shift: a uniform block index without a division's bias.
    let wide = u128::from(word(0)).wrapping_mul(u128::from(blocks.max(1)));
    let block = u32::try_from(wide.wrapping_shr(64)).unwrap_or(0);
    let (h1, h2) = (word(8), word(16) | 1);
    let mut mask = [0u64; 8];
    for i in 0..u64::from(hashes.clamp(1, MAX_HASHES)) {
        let pos = h1.wrapping_add(i.wrapping_mul(h2)) % BLOCK_BITS;
        let w = usize::try_from(pos / 64).unwrap_or(0);
        if let Some(m) = mask.get_mut(w) {
            *m |= 1u64.wrapping_shl(u32::try_from(pos % 64).unwrap_or(0));
        }
    }
    Probe { block, mask }
}

impl Probe {
    /// Whether every bit of the probe is set in `block` ([`BLOCK_BYTES`] bytes; a shorter
    /// slice reads as zeros, so as "absent").
    pub fn found_in(&self, block: &[u8]) -> bool {
        self.mask
            .iter()
            .enumerate()
            .all(|(i, m)| read_word(block, i) & m == *m)
    }

    /// Sets the probe's bits in `block`; how many were not set before.
    pub fn set_in(&self, block: &mut [u8]) -> u32 {
        let mut new = 0u32;
        for (i, m) in self.mask.iter().enumerate() {
            let old = read_word(block, i);
            new = new.saturating_add((m & !old).count_ones());
            write_word(block, i, old | m);
        }
        new
    }
}

fn read_word(block: &[u8], i: usize) -> u64 {
    let start = i.saturating_mul(8);
    let mut b = [0u8; 8];
    if let Some(s) = block.get(start..start.saturating_add(8)) {
        b.copy_from_slice(s);
    }
    u64::from_le_bytes(b)
}

fn write_word(block: &mut [u8], i: usize, value: u64) {
    let start = i.saturating_mul(8);
    if let Some(s) = block.get_mut(start..start.saturating_add(8)) {
        s.copy_from_slice(&value.to_le_bytes());
    }
}

/// Blocks for `keys` key ids at `bits_per_key` bits each (at least one).
pub fn blocks_for(keys: u64, bits_per_key: u32) -> u32 {
    let bits = keys.saturating_mul(u64::from(bits_per_key));
    u32::try_from(bits.div_ceil(BLOCK_BITS).max(1)).unwrap_or(u32::MAX)
}

/// The number of bit positions that minimises the false-positive rate at `bits_per_key`
/// (bits per key × ln 2, rounded, within 1..=[`MAX_HASHES`]).
pub fn hashes_for(bits_per_key: u32) -> u8 {
    let k = (f64::from(bits_per_key) * std::f64::consts::LN_2).round();
    (k as u8).clamp(1, MAX_HASHES)
}

/// A whole summary: its header and its blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub header: Header,
    bits: Vec<u8>,
}

impl Summary {
    /// An empty summary of `blocks` blocks (at least 1) and `hashes` positions, at `revision`.
    pub fn new(revision: u64, blocks: u32, hashes: u8) -> Summary {
        let header = Header {
            revision,
            keys: 0,
            bits_set: 0,
            blocks: blocks.max(1),
            hashes: hashes.clamp(1, MAX_HASHES),
        };
        let bits = vec![0u8; header.body_bytes()];
        Summary { header, bits }
    }

    /// Adds a key id; how many bits it newly set.
    pub fn insert(&mut self, key: &KeyId) -> u32 {
        let p = probe(key, self.header.blocks, self.header.hashes);
        let new = self.block_mut(p.block).map_or(0, |b| p.set_in(b));
        self.header.keys = self.header.keys.saturating_add(1);
        self.header.bits_set = self.header.bits_set.saturating_add(u64::from(new));
        new
    }

    /// False: `key` was never inserted. True: it may have been.
    pub fn may_contain(&self, key: &KeyId) -> bool {
        let p = probe(key, self.header.blocks, self.header.hashes);
        self.block(p.block).is_some_and(|b| p.found_in(b))
    }

    /// The bytes of block `i`.
    pub fn block(&self, i: u32) -> Option<&[u8]> {
        let start = usize::try_from(i).ok()?.checked_mul(BLOCK_BYTES)?;
        self.bits.get(start..start.checked_add(BLOCK_BYTES)?)
    }

    fn block_mut(&mut self, i: u32) -> Option<&mut [u8]> {
        let start = usize::try_from(i).ok()?.checked_mul(BLOCK_BYTES)?;
        self.bits.get_mut(start..start.checked_add(BLOCK_BYTES)?)
    }

    /// The blocks' bytes, in order.
    pub fn blocks(&self) -> &[u8] {
        &self.bits
    }

    /// The exact false-positive rate for a key id never inserted: the mean over blocks of
    /// (bits set in the block / 512)^hashes.
    pub fn false_positive_rate(&self) -> f64 {
        let k = i32::from(self.header.hashes);
        let sum: f64 = self
            .bits
            .chunks(BLOCK_BYTES)
            .map(|b| {
                let set: u32 = b.iter().map(|x| x.count_ones()).sum();
                (f64::from(set) / BLOCK_BITS as f64).powi(k)
            })
            .sum();
        sum / f64::from(self.header.blocks)
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES.saturating_add(self.bits.len()));
        let h = &self.header;
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&h.revision.to_le_bytes());
        out.extend_from_slice(&h.keys.to_le_bytes());
        out.extend_from_slice(&h.bits_set.to_le_bytes());
        out.extend_from_slice(&h.blocks.to_le_bytes());
        out.push(h.hashes);
        out.extend_from_slice(&[0, 0, 0]);
        out.extend_from_slice(&self.bits);
        out
    }

    /// Reads the wire form (see [`decode`], which does not copy the blocks).
    pub fn decode(bytes: &[u8]) -> Result<Summary, SummaryError> {
        let (header, blocks) = decode(bytes)?;
        Ok(Summary {
            header,
            bits: blocks.to_vec(),
        })
    }
}

/// Why bytes are not a summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryError {
    /// Shorter than the header, or not starting with [`MAGIC`] (another version).
    NotASummary,
    /// The header's fields are out of range (no block, hashes not in 1..=16, more bits set
    /// than there are).
    BadHeader,
    /// The blocks' bytes are not `blocks` × [`BLOCK_BYTES`].
    WrongLength,
}

impl std::fmt::Display for SummaryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SummaryError::NotASummary => "not a key summary (or another version of it)",
            SummaryError::BadHeader => "key summary header out of range",
            SummaryError::WrongLength => "key summary length does not match its header",
        })
    }
}

impl std::error::Error for SummaryError {}

/// Reads the header of a summary's wire form; the blocks' bytes, borrowed.
pub fn decode(bytes: &[u8]) -> Result<(Header, &[u8]), SummaryError> {
    let head = bytes.get(..HEADER_BYTES).ok_or(SummaryError::NotASummary)?;
    if head.get(..8) != Some(&MAGIC[..]) {
        return Err(SummaryError::NotASummary);
    }
    let u64_at = |at: usize| read_word(head, at / 8);
    let mut blocks = [0u8; 4];
    blocks.copy_from_slice(head.get(32..36).ok_or(SummaryError::NotASummary)?);
    let header = Header {
        revision: u64_at(8),
        keys: u64_at(16),
        bits_set: u64_at(24),
        blocks: u32::from_le_bytes(blocks),
        hashes: head.get(36).copied().unwrap_or(0),
    };
    let total_bits = u64::from(header.blocks).saturating_mul(BLOCK_BITS);
    if header.blocks == 0
        || !(1..=MAX_HASHES).contains(&header.hashes)
        || header.bits_set > total_bits
    {
        return Err(SummaryError::BadHeader);
    }
    let body = bytes.get(HEADER_BYTES..).unwrap_or_default();
    if body.len() != header.body_bytes() {
        return Err(SummaryError::WrongLength);
    }
    Ok((header, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> KeyId {
        KeyId::of(format!("key-{n}").as_bytes())
    }

    #[test]
    fn every_inserted_key_id_is_found_and_survives_the_wire() {
        let mut s = Summary::new(7, blocks_for(2_000, 10), hashes_for(10));
        for n in 0..2_000 {
            s.insert(&id(n));
        }
        let back = Summary::decode(&s.encode()).unwrap();
        assert_eq!(back, s);
        for n in 0..2_000 {
            assert!(back.may_contain(&id(n)), "key {n}");
            let p = probe(&id(n), back.header.blocks, back.header.hashes);
            assert!(p.found_in(back.block(p.block).unwrap()));
        }
        assert_eq!(back.header.revision, 7);
        assert_eq!(back.header.keys, 2_000);
    }

    #[test]
    fn at_ten_bits_per_key_about_one_key_in_a_hundred_is_a_false_positive() {
        let n = 20_000;
        let mut s = Summary::new(0, blocks_for(n, 10), hashes_for(10));
        for i in 0..n {
            s.insert(&id(i));
        }
        let tried = 100_000u64;
        let positives = (n..n + tried).filter(|i| s.may_contain(&id(*i))).count();
        let measured = positives as f64 / tried as f64;
        let exact = s.false_positive_rate();
        let estimate = s.header.estimated_false_positive_rate();
        assert!((0.005..0.02).contains(&measured), "measured {measured}");
        assert!((measured - exact).abs() < 0.003, "{measured} vs {exact}");
        assert!(estimate <= exact && estimate > exact / 2.0, "{estimate}");
        assert_eq!(hashes_for(10), 7);
    }

    #[test]
    fn bits_set_counts_only_new_bits() {
        let mut s = Summary::new(0, 1, 7);
        let first = s.insert(&id(1));
        assert!((1..=7).contains(&first));
        assert_eq!(s.insert(&id(1)), 0, "inserting again sets nothing new");
        let ones: u32 = s.blocks().iter().map(|b| b.count_ones()).sum();
        assert_eq!(s.header.bits_set, u64::from(ones));
        assert_eq!(s.header.keys, 2);
    }

    #[test]
    fn an_empty_summary_contains_nothing() {
        let s = Summary::new(0, 4, 7);
        assert!((0..1000).all(|n| !s.may_contain(&id(n))));
        assert_eq!(s.false_positive_rate(), 0.0);
    }

    #[test]
    fn malformed_wire_forms_are_refused_not_misread() {
        let good = Summary::new(3, 2, 7).encode();
        assert!(decode(&good).is_ok());
        assert_eq!(decode(&good[..10]), Err(SummaryError::NotASummary));
        let mut other = good.clone();
        other[6] = b'2';
        assert_eq!(decode(&other), Err(SummaryError::NotASummary));
        assert_eq!(
            decode(&good[..good.len() - 1]),
            Err(SummaryError::WrongLength)
        );
        let mut zero_hashes = good.clone();
        zero_hashes[36] = 0;
        assert_eq!(decode(&zero_hashes), Err(SummaryError::BadHeader));
        let mut no_blocks = good.clone();
        no_blocks[32..36].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(decode(&no_blocks), Err(SummaryError::BadHeader));
        let mut too_many_bits = good;
        too_many_bits[24..32].copy_from_slice(&2000u64.to_le_bytes());
        assert_eq!(decode(&too_many_bits), Err(SummaryError::BadHeader));
    }

    #[test]
    fn a_short_block_reads_as_absent_and_is_not_written_past() {
        let p = probe(&id(5), 1, 7);
        assert!(!p.found_in(&[0xff; 8]));
        let mut short = [0u8; 8];
        assert!(p.set_in(&mut short) <= 7);
    }

    #[test]
    fn blocks_and_hashes_are_sized_from_keys_and_bits() {
        assert_eq!(blocks_for(0, 10), 1);
        assert_eq!(blocks_for(1_000_000, 10), 19_532);
        assert_eq!(hashes_for(1), 1);
        assert_eq!(hashes_for(100), MAX_HASHES);
    }
}
