//! API keys and key ids: what a raw key may look like, and the only form of it that leaves
//! the request.
//!
//! Invariant: a key id is the lowercase hex SHA-256 of the raw key's bytes, and this module is
//! the one place that computes it ([`KeyId::of`], [`key_id`]); the filter, the key store, the
//! CLI, the test harness and the bench all ask here. A raw key is never stored or logged: the
//! key id is what the store is asked about and what shared data, databases and logs hold.

use std::fmt;

use sha2::{Digest, Sha256};

/// Longest key, in bytes: the filter refuses a longer one without a store call, and the key
/// store refuses to import one.
pub const MAX_KEY_LEN: usize = 512;
/// Length of a key id in hex characters (a SHA-256: 32 bytes).
pub const KEY_ID_LEN: usize = 64;
/// Leading key-id characters that identify a key in logs ([`KeyId::short`]).
pub const SHORT_LEN: usize = 12;

/// Why a raw key has the wrong form ([`check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFault {
    Empty,
    /// Longer than [`MAX_KEY_LEN`] bytes.
    TooLong,
    /// A byte outside visible ASCII (0x21..=0x7e): control characters, spaces, non-ASCII.
    NotVisible,
}

/// The form of a key, the same on both sides: 1 to [`MAX_KEY_LEN`] bytes of visible ASCII
/// (0x21..=0x7e), so it survives a header unchanged (a header value is trimmed).
pub fn check(key: &[u8]) -> Result<(), KeyFault> {
    if key.is_empty() {
        return Err(KeyFault::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyFault::TooLong);
    }
    if !key.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(KeyFault::NotVisible);
    }
    Ok(())
}

/// The key a header value holds, read the same way by the filter and the key store: after
/// `prefix` if the source has one (compared without case, as HTTP auth schemes are: `bearer `
/// is `Bearer `; a value with another scheme, such as `Basic`, holds no key), with optional
/// white space around it trimmed (RFC 9110 OWS: spaces and tabs, nothing else). The result
/// still has to pass [`check`].
pub fn in_header<'v>(value: &'v [u8], prefix: Option<&str>) -> Option<&'v [u8]> {
    let rest = match prefix {
        None => value,
        Some(p) => {
            let head = value.get(..p.len())?;
            if !head.eq_ignore_ascii_case(p.as_bytes()) {
                return None;
            }
            value.get(p.len()..)?
        }
    };
    Some(trim_ows(rest))
}

/// Trims optional white space (RFC 9110 OWS: spaces and tabs) around a header value.
fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// SHA-256 of an API key: the identity of a key everywhere outside the request.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 32]);

// Hex by hand rather than the `hex` crate: this crate is linked into the filter's wasm, where
// each dependency costs size, and the code is the twenty lines below.
const HEX: &[u8; 16] = b"0123456789abcdef";

impl KeyId {
    /// The key id of a raw key.
    pub fn of(key: &[u8]) -> KeyId {
        KeyId(Sha256::digest(key).into())
    }

    /// Parses [`KEY_ID_LEN`] lowercase hex characters (the only form a key id takes on the wire).
    pub fn from_hex(text: &str) -> Option<KeyId> {
        let bytes = text.as_bytes();
        if bytes.len() != KEY_ID_LEN {
            return None;
        }
        let mut out = [0u8; 32];
        for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            let (hi, lo) = match pair {
                [hi, lo] => (lower_hex(*hi)?, lower_hex(*lo)?),
                _ => return None,
            };
            *slot = (hi << 4) | lo;
        }
        Some(KeyId(out))
    }

    /// Lowercase hex, [`KEY_ID_LEN`] characters: the form used on the wire and in databases.
    pub fn hex(&self) -> String {
        let mut s = String::with_capacity(KEY_ID_LEN);
        for b in self.0 {
            for nibble in [b >> 4, b & 0x0f] {
                s.push(char::from(
                    HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'),
                ));
            }
        }
        s
    }

    /// The first [`SHORT_LEN`] hex characters: enough to tell keys apart in logs, useless to
    /// an attacker.
    pub fn short(&self) -> Short<'_> {
        Short(self)
    }

    /// A well-spread number taken from the key id's leading bytes (it is a SHA-256 already).
    pub fn spread(&self) -> u64 {
        let [a, b, c, d, e, f, g, h, ..] = self.0;
        u64::from_be_bytes([a, b, c, d, e, f, g, h])
    }
}

/// The key id of a raw key in its wire form: lowercase hex SHA-256 of its bytes.
pub fn key_id(raw_key: &str) -> String {
    KeyId::of(raw_key.as_bytes()).hex()
}

/// Whether `s` is a key id in its wire form: exactly [`KEY_ID_LEN`] lowercase hex characters.
pub fn is_key_id(s: &str) -> bool {
    KeyId::from_hex(s).is_some()
}

/// The part of a key id in its wire form that may appear in logs: its first [`SHORT_LEN`]
/// characters.
pub fn short(key_id: &str) -> &str {
    key_id.get(..SHORT_LEN).unwrap_or(key_id)
}

/// A lowercase hex digit (uppercase hex is not a key id).
fn lower_hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c.wrapping_sub(b'0')),
        b'a'..=b'f' => Some(c.wrapping_sub(b'a').wrapping_add(10)),
        _ => None,
    }
}

/// Display form of a key id for logs: [`SHORT_LEN`] hex characters.
pub struct Short<'a>(&'a KeyId);

impl fmt::Display for Short<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 .0.iter().take(SHORT_LEN / 2) {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_key_is_read_after_its_scheme_in_any_case_with_ows_trimmed() {
        assert_eq!(in_header(b" \tkg_a\t ", None), Some(&b"kg_a"[..]));
        assert_eq!(
            in_header(b"Bearer kg_a", Some("Bearer ")),
            Some(&b"kg_a"[..])
        );
        assert_eq!(
            in_header(b"bEARER  kg_a ", Some("Bearer ")),
            Some(&b"kg_a"[..])
        );
        assert_eq!(in_header(b"Basic a2dfYQ==", Some("Bearer ")), None);
        assert_eq!(in_header(b"Bearer", Some("Bearer ")), None);
        assert_eq!(in_header(b"Bearer ", Some("Bearer ")), Some(&b""[..]));
        // Only spaces and tabs are OWS: other white space stays, and check() refuses it.
        assert_eq!(in_header(b"kg_a\r", None), Some(&b"kg_a\r"[..]));
    }

    /// SHA-256("abc"), the FIPS 180-2 test vector.
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn a_key_id_is_the_lowercase_hex_sha256_of_the_raw_key() {
        let id = KeyId::of(b"abc");
        assert_eq!(id.hex(), ABC);
        assert_eq!(key_id("abc"), ABC);
        assert_eq!(KeyId::from_hex(ABC), Some(id));
        assert!(is_key_id(ABC));
    }

    #[test]
    fn a_key_id_is_shown_in_logs_by_its_first_twelve_characters() {
        let id = KeyId::of(b"abc");
        assert_eq!(id.short().to_string(), "ba7816bf8f01");
        assert_eq!(short(ABC), "ba7816bf8f01");
        assert_eq!(short("abc"), "abc");
        assert_eq!(format!("{id:?}"), "KeyId(ba7816bf8f01)");
    }

    #[test]
    fn a_key_id_in_uppercase_short_long_or_not_hex_is_not_a_key_id() {
        for bad in [
            ABC.to_uppercase(),
            ABC[..63].to_string(),
            format!("{ABC}0"),
            format!("{}g", &ABC[..63]),
            String::new(),
        ] {
            assert_eq!(KeyId::from_hex(&bad), None, "{bad}");
            assert!(!is_key_id(&bad), "{bad}");
        }
    }

    #[test]
    fn a_key_is_one_to_512_bytes_of_visible_ascii() {
        assert_eq!(check(b"k"), Ok(()));
        assert_eq!(check(&[b'~'; MAX_KEY_LEN]), Ok(()));
        assert_eq!(check(b""), Err(KeyFault::Empty));
        assert_eq!(check(&[b'a'; MAX_KEY_LEN + 1]), Err(KeyFault::TooLong));
        for bad in [
            &b"two words"[..],
            b"a\x01b",
            b"tab\t",
            "cl\u{e9}".as_bytes(),
            b"\x7f",
        ] {
            assert_eq!(check(bad), Err(KeyFault::NotVisible), "{bad:?}");
        }
    }
}
