//! The key ids (SHA-256) of raw keys seen recently, found again by a keyed fast hash, so that a
//! request whose key was seen before does not pay SHA-256 (about 0.5 µs of Envoy CPU per
//! request in wasm, measured: a third of what keygate adds to the wasm floor).
//!
//! The memo maps a *tag* of the raw key, SipHash-2-4 with a 128-bit output keyed by a per-VM
//! random secret (the glue draws it from WASI's `random_get`), to the key's id. It holds no raw
//! key, and a tag means nothing outside this VM. Two raw keys with one tag would share an id: for
//! a 128-bit pseudo-random function under a secret key, an attacker has no better way to make a
//! key of theirs collide with someone else's than guessing (2^-128 per try), and cannot even
//! observe a collision between two keys of their own.
//!
//! Invariant: every entry maps `tag(raw)` to `KeyId::of(raw)` for a raw key that was hashed; at
//! most `capacity` entries (the memo is emptied when full: a flood of new keys costs the keys
//! seen before one SHA-256 each, never a wrong id).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use siphasher::sip128::{Hasher128, SipHasher24};

use keygate_protocol::KeyId;

pub struct KeyIds {
    secret: [u64; 2],
    memo: HashMap<u128, KeyId, BuildHasherDefault<TagHasher>>,
    capacity: usize,
}

impl KeyIds {
    /// A memo of at most `capacity` ids (at least one), with tags keyed by `secret`.
    pub fn new(secret: [u64; 2], capacity: usize) -> KeyIds {
        KeyIds {
            secret,
            memo: HashMap::default(),
            capacity: capacity.max(1),
        }
    }

    /// The id of `raw`: from the memo, or computed (and remembered).
    pub fn id(&mut self, raw: &[u8]) -> KeyId {
        let tag = self.tag(raw);
        if let Some(id) = self.memo.get(&tag) {
            return *id;
        }
        let id = KeyId::of(raw);
        if self.memo.len() >= self.capacity {
            self.memo.clear();
        }
        self.memo.insert(tag, id);
        id
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.memo.len()
    }

    pub fn is_empty(&self) -> bool {
        self.memo.is_empty()
    }

    fn tag(&self, raw: &[u8]) -> u128 {
        let [k0, k1] = self.secret;
        let mut h = SipHasher24::new_with_keys(k0, k1);
        h.write(raw);
        h.finish128().as_u128()
    }
}

/// The memo's hasher: a tag is already the output of a keyed pseudo-random function, so its
/// low 64 bits serve as the hash as they are (hashing it again would only cost time).
#[derive(Default)]
pub struct TagHasher(u64);

impl Hasher for TagHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is used (the key type is u128); fold anything else in anyway.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u128(&mut self, tag: u128) {
        // Truncation intended: the low half of the tag.
        #[allow(clippy::cast_possible_truncation)]
        let low = tag as u64;
        self.0 = low;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;

    #[test]
    fn the_id_is_the_keys_sha256_whether_remembered_or_not() {
        let mut ids = KeyIds::new([1, 2], 8);
        let raw = b"kg_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";
        assert_eq!(ids.id(raw), KeyId::of(raw));
        assert_eq!(ids.len(), 1);
        assert_eq!(ids.id(raw), KeyId::of(raw), "from the memo");
        assert_eq!(ids.len(), 1);
        assert_ne!(ids.id(b"another"), KeyId::of(raw));
        assert_eq!(ids.len(), 2);
    }

    #[test]
    fn tags_depend_on_the_secret_and_on_every_byte() {
        let (a, b) = (KeyIds::new([1, 2], 8), KeyIds::new([1, 3], 8));
        assert_ne!(a.tag(b"key"), b.tag(b"key"));
        assert_ne!(a.tag(b"key"), a.tag(b"kez"));
        assert_ne!(a.tag(b"key"), a.tag(b"key\0"));
    }

    #[test]
    fn a_full_memo_is_emptied_and_ids_stay_right() {
        let mut ids = KeyIds::new([7, 7], 3);
        let keys: Vec<Vec<u8>> = (0u8..10).map(|i| vec![b'k', i]).collect();
        for k in &keys {
            assert_eq!(ids.id(k), KeyId::of(k));
            assert!(ids.len() <= 3);
        }
        for k in &keys {
            assert_eq!(ids.id(k), KeyId::of(k));
        }
    }
}
