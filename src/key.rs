//! API keys: where they are read from, what a valid one looks like, and the key id.
//!
//! The key id (lowercase hex SHA-256 of the key) is the only form of a key that leaves the
//! request: it is what the store is asked about, what shared data and logs hold. A raw key is
//! never stored or logged.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::config::KeySource;

/// Longest key accepted, in bytes. Longer ones are refused without a store call.
pub const MAX_KEY_LEN: usize = 512;

/// SHA-256 of an API key: the identity of a key everywhere outside the request.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 32]);

const HEX: &[u8; 16] = b"0123456789abcdef";

impl KeyId {
    /// The key id of a raw key.
    pub fn of(key: &[u8]) -> KeyId {
        KeyId(Sha256::digest(key).into())
    }

    /// Parses 64 lowercase hex characters, as the store's changes feed sends them.
    pub fn from_hex(text: &str) -> Option<KeyId> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            let (hi, lo) = match pair {
                [hi, lo] => (hex_value(*hi)?, hex_value(*lo)?),
                _ => return None,
            };
            *slot = (hi << 4) | lo;
        }
        Some(KeyId(out))
    }

    /// Lowercase hex, 64 characters: the form used in store requests.
    pub fn hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            for nibble in [b >> 4, b & 0x0f] {
                s.push(char::from(
                    HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'),
                ));
            }
        }
        s
    }

    /// The first 12 hex characters: enough to tell keys apart in logs, useless to an attacker.
    pub fn short(&self) -> Short<'_> {
        Short(self)
    }

    /// A well-spread number taken from the key id's leading bytes (it is a SHA-256 already).
    pub fn spread(&self) -> u64 {
        let [a, b, c, d, e, f, g, h, ..] = self.0;
        u64::from_be_bytes([a, b, c, d, e, f, g, h])
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c.wrapping_sub(b'0')),
        b'a'..=b'f' => Some(c.wrapping_sub(b'a').wrapping_add(10)),
        _ => None,
    }
}

/// Display form of a key id for logs: 12 hex characters.
pub struct Short<'a>(&'a KeyId);

impl fmt::Display for Short<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 .0.iter().take(6) {
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

/// Why a request's key was refused before any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    Missing,
    Empty,
    TooLong,
    /// A byte outside visible ASCII (0x21..=0x7e): control characters, spaces, non-ASCII.
    Invalid,
}

impl KeyError {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyError::Missing => "missing",
            KeyError::Empty => "empty",
            KeyError::TooLong => "too long",
            KeyError::Invalid => "invalid characters",
        }
    }
}

/// Checks the form of a key: non-empty, at most [`MAX_KEY_LEN`] bytes, visible ASCII only.
pub fn validate(key: &[u8]) -> Result<&[u8], KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong);
    }
    if !key.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(KeyError::Invalid);
    }
    Ok(key)
}

/// Where a key was found, so that `hide_credentials` can remove it before the request goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Header(String),
    Query(String),
}

/// Finds the key in the first configured source that is present.
///
/// `header` returns a request header's value by lowercase name; `path` is `:path` with its query.
/// A source that is present decides: an empty or malformed key there is refused even when a
/// later source would have one, so a client cannot smuggle two keys past the filter.
pub fn extract<'a, H>(
    sources: &[KeySource],
    header: H,
    path: &'a str,
) -> Result<(Vec<u8>, Found), KeyError>
where
    H: Fn(&str) -> Option<&'a [u8]>,
{
    for source in sources {
        match source {
            KeySource::Header { name, prefix } => {
                let Some(value) = header(name) else { continue };
                let value = match prefix {
                    None => value,
                    Some(prefix) => match strip_prefix_ignore_case(value, prefix.as_bytes()) {
                        Some(rest) => rest,
                        // Another scheme (Basic, ...) in this header: not an API key source.
                        None => continue,
                    },
                };
                let key = validate(trim_ows(value))?;
                return Ok((key.to_vec(), Found::Header(name.clone())));
            }
            KeySource::Query { name } => {
                let Some(raw) = query_param(path, name) else {
                    continue;
                };
                let decoded = percent_decode(raw).ok_or(KeyError::Invalid)?;
                let key = validate(&decoded)?;
                return Ok((key.to_vec(), Found::Query(name.clone())));
            }
        }
    }
    Err(KeyError::Missing)
}

fn strip_prefix_ignore_case<'a>(value: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = value.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        value.get(prefix.len()..)
    } else {
        None
    }
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

/// The raw (still percent-encoded) value of the first query parameter `name` in `path`.
pub fn query_param<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    // A fragment starts at the first '#'; a '?' after it is not a query.
    let before_fragment = path.split('#').next().unwrap_or(path);
    let (_, query) = before_fragment.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// `path` without any query parameter called `name` (for `hide_credentials`).
pub fn remove_query_param(path: &str, name: &str) -> String {
    // As in `query_param`: the fragment starts at the first '#' and is kept as it was; the
    // query is between the first '?' before it and it.
    let (before_fragment, fragment) = match path.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (path, None),
    };
    let Some((base, query)) = before_fragment.split_once('?') else {
        return path.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) != name)
        .collect();
    let mut out = base.to_string();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hi = hex_digit(bytes.next()?)?;
                let lo = hex_digit(bytes.next()?)?;
                out.push((hi << 4) | lo);
            }
            b'+' => out.push(b' '),
            _ => out.push(b),
        }
    }
    Some(out)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'F' => Some(c.wrapping_sub(b'A').wrapping_add(10)),
        _ => hex_value(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeySource;
    use crate::test_support::test;

    fn default_sources() -> Vec<KeySource> {
        vec![
            KeySource::Header {
                name: "x-api-key".into(),
                prefix: None,
            },
            KeySource::Header {
                name: "authorization".into(),
                prefix: Some("Bearer ".into()),
            },
        ]
    }

    fn extract_from<'a>(
        headers: &'a [(&'a str, &'a [u8])],
        path: &'a str,
    ) -> Result<(Vec<u8>, Found), KeyError> {
        extract(
            &default_sources(),
            |n| headers.iter().find(|(k, _)| *k == n).map(|(_, v)| *v),
            path,
        )
    }

    #[test]
    fn key_id_is_lowercase_sha256_hex() {
        // SHA-256("abc"), FIPS 180-2 test vector.
        let id = KeyId::of(b"abc");
        assert_eq!(
            id.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(id.short().to_string(), "ba7816bf8f01");
        assert_eq!(KeyId::from_hex(&id.hex()), Some(id));
        assert_eq!(format!("{id:?}"), "KeyId(ba7816bf8f01)");
    }

    #[test]
    fn from_hex_rejects_uppercase_short_and_non_hex() {
        let good = KeyId::of(b"k").hex();
        assert!(KeyId::from_hex(&good.to_uppercase()).is_none());
        assert!(KeyId::from_hex(&good[..63]).is_none());
        assert!(KeyId::from_hex(&format!("{}g", &good[..63])).is_none());
        assert!(KeyId::from_hex("").is_none());
    }

    #[test]
    fn x_api_key_wins_over_bearer() {
        let h: [(&str, &[u8]); 2] = [("x-api-key", b"first"), ("authorization", b"Bearer second")];
        assert_eq!(extract_from(&h, "/").map(|(k, _)| k), Ok(b"first".to_vec()));
    }

    #[test]
    fn bearer_is_used_when_no_x_api_key_and_scheme_is_case_insensitive() {
        let h: [(&str, &[u8]); 1] = [("authorization", b"bearer  tok-1 ")];
        let (key, found) = extract_from(&h, "/").unwrap();
        assert_eq!(key, b"tok-1");
        assert_eq!(found, Found::Header("authorization".into()));
    }

    #[test]
    fn basic_auth_is_not_a_key() {
        let h: [(&str, &[u8]); 1] = [("authorization", b"Basic dXNlcjpwYXNz")];
        assert_eq!(extract_from(&h, "/"), Err(KeyError::Missing));
    }

    #[test]
    fn missing_empty_long_and_binary_keys_are_refused() {
        assert_eq!(extract_from(&[], "/"), Err(KeyError::Missing));
        assert_eq!(
            extract_from(&[("x-api-key", b"")], "/"),
            Err(KeyError::Empty)
        );
        assert_eq!(
            extract_from(&[("x-api-key", b"   ")], "/"),
            Err(KeyError::Empty)
        );
        let long = vec![b'a'; MAX_KEY_LEN + 1];
        assert_eq!(
            extract_from(&[("x-api-key", &long)], "/"),
            Err(KeyError::TooLong)
        );
        let max = vec![b'a'; MAX_KEY_LEN];
        assert!(extract_from(&[("x-api-key", &max)], "/").is_ok());
        assert_eq!(
            extract_from(&[("x-api-key", b"a\x01b")], "/"),
            Err(KeyError::Invalid)
        );
        assert_eq!(
            extract_from(&[("x-api-key", "cl\u{e9}".as_bytes())], "/"),
            Err(KeyError::Invalid)
        );
        assert_eq!(
            extract_from(&[("x-api-key", b"two words")], "/"),
            Err(KeyError::Invalid)
        );
    }

    #[test]
    fn present_but_empty_source_does_not_fall_through() {
        let h: [(&str, &[u8]); 2] = [("x-api-key", b""), ("authorization", b"Bearer good")];
        assert_eq!(extract_from(&h, "/"), Err(KeyError::Empty));
    }

    #[test]
    fn query_source_decodes_and_can_be_removed() {
        let sources = vec![KeySource::Query {
            name: "apikey".into(),
        }];
        let got = extract(&sources, |_| None, "/x?a=1&apikey=k%2Dy&b=2").unwrap();
        assert_eq!(got, (b"k-y".to_vec(), Found::Query("apikey".into())));
        assert_eq!(
            remove_query_param("/x?a=1&apikey=k&b=2", "apikey"),
            "/x?a=1&b=2"
        );
        assert_eq!(remove_query_param("/x?apikey=k", "apikey"), "/x");
        assert_eq!(remove_query_param("/x", "apikey"), "/x");
        // Found by fuzzing: a parameter before a fragment.
        let stripped = remove_query_param("/?apikey=SECRET&apikey#", "apikey");
        assert_eq!(stripped, "/#");
        assert_eq!(query_param(&stripped, "apikey"), None);
        assert_eq!(
            remove_query_param("/p?a=1&apikey=k#frag", "apikey"),
            "/p?a=1#frag"
        );
        let odd = "/x?ey=j#apike?ey=j#apikey=z";
        assert_eq!(remove_query_param(odd, "ey"), "/x#apike?ey=j#apikey=z");
        assert_eq!(query_param(&remove_query_param(odd, "ey"), "ey"), None);
        assert_eq!(
            query_param("/x#f?apikey=k", "apikey"),
            None,
            "a '?' inside the fragment"
        );
        assert_eq!(
            extract(&sources, |_| None, "/x?apikey=%zz"),
            Err(KeyError::Invalid)
        );
        assert_eq!(
            extract(&sources, |_| None, "/x?other=1"),
            Err(KeyError::Missing)
        );
    }
}
