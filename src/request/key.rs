//! API keys in a request: where they are read from and what a valid one looks like.
//!
//! The key id (`keygate_protocol::KeyId`, the lowercase hex SHA-256 of the key) is the only
//! form of a key that leaves the request: it is what the store is asked about, what shared
//! data and logs hold. A raw key is never stored or logged.

use std::borrow::Cow;

use keygate_protocol::key::{self as protocol_key, KeyFault};

use crate::config::KeySource;
use crate::request::fields::Headers;
use crate::text;

/// Longest key accepted, in bytes (the protocol's): longer ones are refused without a store call.
pub use keygate_protocol::key::MAX_KEY_LEN;

/// Why a request's key was refused before any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    Missing,
    Empty,
    TooLong,
    /// A byte outside visible ASCII (0x21..=0x7e): control characters, spaces, non-ASCII.
    Invalid,
    /// The deciding source was given more than once (two `x-api-key` headers, `?apikey=A&apikey=B`).
    Duplicate,
}

impl KeyError {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyError::Missing => "missing",
            KeyError::Empty => "empty",
            KeyError::TooLong => "too long",
            KeyError::Invalid => "invalid characters",
            KeyError::Duplicate => "given more than once",
        }
    }
}

impl From<KeyFault> for KeyError {
    fn from(fault: KeyFault) -> KeyError {
        match fault {
            KeyFault::Empty => KeyError::Empty,
            KeyFault::TooLong => KeyError::TooLong,
            KeyFault::NotVisible => KeyError::Invalid,
        }
    }
}

/// Checks the form of a key by the protocol's rule ([`protocol_key::check`]): non-empty, at
/// most [`MAX_KEY_LEN`] bytes, visible ASCII only.
pub fn validate(key: &[u8]) -> Result<&[u8], KeyError> {
    protocol_key::check(key)?;
    Ok(key)
}

/// Borrows owned header fields as [`Headers`] (tests, fuzzing, tools).
pub fn fields(owned: &[(String, Vec<u8>)]) -> Vec<(&str, &[u8])> {
    owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect()
}

/// Finds the key in the first configured source that is present.
///
/// A source that is present decides: an empty, malformed or repeated key there is refused even
/// when a later source would have one, so a client cannot smuggle two keys past the filter
/// (an application that reads the last of two values would see another key than the one
/// checked). `query` is the query string of `:path` (without `?` and fragment).
pub fn extract<'h>(
    sources: &[KeySource],
    headers: &'h Headers<'h>,
    query: &'h str,
) -> Result<Cow<'h, [u8]>, KeyError> {
    for source in sources {
        let mut values = source_values(source, headers, query);
        let Some(first) = values.next() else { continue };
        if values.next().is_some() {
            return Err(KeyError::Duplicate);
        }
        let first = first?;
        validate(&first)?;
        return Ok(first);
    }
    Err(KeyError::Missing)
}

/// The candidate keys a source holds, in order: each header of that name (after its scheme
/// prefix, OWS trimmed), or each query parameter of that (decoded) name (value decoded).
fn source_values<'s, 'h>(
    source: &'s KeySource,
    headers: &'h Headers<'h>,
    query: &'h str,
) -> impl Iterator<Item = Result<Cow<'h, [u8]>, KeyError>> + use<'s, 'h> {
    let (header, param) = match source {
        KeySource::Header { name, prefix } => (Some((name, prefix)), None),
        KeySource::Query { name } => (None, Some(name)),
    };
    let from_headers = header.into_iter().flat_map(move |(name, prefix)| {
        headers
            .iter()
            .filter(move |(k, _)| k == name)
            .filter_map(move |(_, v)| protocol_key::in_header(v, prefix.as_deref()))
            .map(|v| Ok(Cow::Borrowed(v)))
    });
    let from_query = param.into_iter().flat_map(move |name| {
        query_pairs(query)
            .filter(move |(k, _)| decode_query(k).as_deref() == Some(name.as_bytes()))
            .map(|(_, v)| decode_query(v).map(Cow::Owned).ok_or(KeyError::Invalid))
    });
    from_headers.chain(from_query)
}

/// What `hide_credentials` removes: every header (but pseudo-headers and `host`) and every
/// query parameter that holds `key`, whichever source it was read from. Returns the header
/// names, and the new `:path` if a query parameter went.
pub fn hiding(
    sources: &[KeySource],
    headers: &Headers<'_>,
    path: &str,
    key: &[u8],
) -> (Vec<String>, Option<String>) {
    let prefixes: Vec<Option<&str>> = std::iter::once(None)
        .chain(sources.iter().filter_map(|s| match s {
            KeySource::Header { prefix, .. } => prefix.as_deref().map(Some),
            KeySource::Query { .. } => None,
        }))
        .collect();
    let mut names: Vec<String> = Vec::new();
    for (name, value) in headers {
        let holds = prefixes
            .iter()
            .any(|p| protocol_key::in_header(value, *p) == Some(key));
        if holds && !name.starts_with(':') && *name != "host" && !names.iter().any(|n| n == name) {
            names.push((*name).to_string());
        }
    }
    let holds = |v: &str| v.as_bytes() == key || decode_query(v).as_deref() == Some(key);
    let new_path = rewrite_query(path, |_, v| holds(v));
    (names, new_path)
}

/// The query string of a `:path`: after the first `?`, before the fragment (the first `#`;
/// a `?` after it is not a query).
pub fn query_of(path: &str) -> &str {
    let before_fragment = path.split('#').next().unwrap_or(path);
    before_fragment.split_once('?').map_or("", |(_, q)| q)
}

/// The `name=value` pairs of a query string, still encoded (a pair without `=` has an empty value).
fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// A query component decoded as forms encode it (`%XX`, `+` for space); `None` if malformed.
fn decode_query(s: &str) -> Option<Vec<u8>> {
    text::percent_decode(s.as_bytes(), true)
}

/// `path` without the query parameters `drop` selects (by raw name and value), fragment kept;
/// `None` when nothing is dropped.
fn rewrite_query(path: &str, drop: impl Fn(&str, &str) -> bool) -> Option<String> {
    let (before_fragment, fragment) = match path.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (path, None),
    };
    let (base, query) = before_fragment.split_once('?')?;
    let all: Vec<&str> = query.split('&').collect();
    let kept: Vec<&str> = all
        .iter()
        .copied()
        .filter(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            !drop(k, v)
        })
        .collect();
    if kept.len() == all.len() {
        return None;
    }
    let mut out = base.to_string();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeySource;
    use crate::test_support::test;

    fn default_sources() -> Vec<KeySource> {
        crate::config::default_key_sources()
    }

    fn query_source() -> Vec<KeySource> {
        vec![KeySource::Query {
            name: "apikey".into(),
        }]
    }

    fn extract_from(h: &[(&str, &[u8])], query: &str) -> Result<Vec<u8>, KeyError> {
        extract(&default_sources(), h, query).map(Cow::into_owned)
    }

    #[test]
    fn x_api_key_wins_over_bearer() {
        let h: [(&str, &[u8]); 2] = [("x-api-key", b"first"), ("authorization", b"Bearer second")];
        assert_eq!(extract_from(&h, ""), Ok(b"first".to_vec()));
    }

    #[test]
    fn bearer_is_used_when_no_x_api_key_and_scheme_is_case_insensitive() {
        let h: [(&str, &[u8]); 1] = [("authorization", b"bearer  tok-1 ")];
        assert_eq!(extract_from(&h, ""), Ok(b"tok-1".to_vec()));
    }

    #[test]
    fn basic_auth_is_not_a_key() {
        let h: [(&str, &[u8]); 1] = [("authorization", b"Basic dXNlcjpwYXNz")];
        assert_eq!(extract_from(&h, ""), Err(KeyError::Missing));
    }

    #[test]
    fn missing_empty_long_and_binary_keys_are_refused() {
        assert_eq!(extract_from(&[], ""), Err(KeyError::Missing));
        assert_eq!(
            extract_from(&[("x-api-key", b"")], ""),
            Err(KeyError::Empty)
        );
        assert_eq!(
            extract_from(&[("x-api-key", b"   ")], ""),
            Err(KeyError::Empty)
        );
        let long = vec![b'a'; MAX_KEY_LEN + 1];
        assert_eq!(
            extract_from(&[("x-api-key", &long)], ""),
            Err(KeyError::TooLong)
        );
        let max = vec![b'a'; MAX_KEY_LEN];
        assert!(extract_from(&[("x-api-key", &max)], "").is_ok());
        assert_eq!(
            extract_from(&[("x-api-key", b"a\x01b")], ""),
            Err(KeyError::Invalid)
        );
        assert_eq!(
            extract_from(&[("x-api-key", "cl\u{e9}".as_bytes())], ""),
            Err(KeyError::Invalid)
        );
        assert_eq!(
            extract_from(&[("x-api-key", b"two words")], ""),
            Err(KeyError::Invalid)
        );
    }

    #[test]
    fn present_but_empty_source_does_not_fall_through() {
        let h: [(&str, &[u8]); 2] = [("x-api-key", b""), ("authorization", b"Bearer good")];
        assert_eq!(extract_from(&h, ""), Err(KeyError::Empty));
    }

    #[test]
    fn a_key_source_given_twice_is_refused_whatever_the_values() {
        let twice: [(&str, &[u8]); 2] = [("x-api-key", b"A"), ("x-api-key", b"B")];
        assert_eq!(extract_from(&twice, ""), Err(KeyError::Duplicate));
        let same: [(&str, &[u8]); 2] = [("x-api-key", b"A"), ("x-api-key", b"A")];
        assert_eq!(extract_from(&same, ""), Err(KeyError::Duplicate));
        let q = query_source();
        assert_eq!(
            extract(&q, &[], "apikey=A&apikey=B"),
            Err(KeyError::Duplicate)
        );
        assert_eq!(
            extract(&q, &[], "apikey=A&api%6B%65%79=A"),
            Err(KeyError::Duplicate)
        );
        // Another scheme in a second authorization header is not a second key.
        let h: [(&str, &[u8]); 2] = [
            ("authorization", b"Bearer k"),
            ("authorization", b"Basic x"),
        ];
        assert_eq!(extract_from(&h, ""), Ok(b"k".to_vec()));
    }

    #[test]
    fn query_parameter_names_are_decoded_like_values() {
        let q = query_source();
        assert_eq!(
            extract(&q, &[], "a=1&api%6B%65%79=k%2Dy&b=2").map(Cow::into_owned),
            Ok(b"k-y".to_vec())
        );
        assert_eq!(extract(&q, &[], "apikey=%zz"), Err(KeyError::Invalid));
        assert_eq!(extract(&q, &[], "other=1"), Err(KeyError::Missing));
        assert_eq!(extract(&q, &[], ""), Err(KeyError::Missing));
    }

    #[test]
    fn the_query_is_before_the_fragment() {
        assert_eq!(query_of("/x?a=1#f?apikey=k"), "a=1");
        assert_eq!(query_of("/x#f?apikey=k"), "");
        assert_eq!(query_of("/x"), "");
    }

    #[test]
    fn hiding_removes_the_key_wherever_it_appears() {
        let sources = [default_sources(), query_source()].concat();
        let h: [(&str, &[u8]); 5] = [
            (":path", b"/x?apikey=K&a=1&copy=K#frag"),
            ("x-api-key", b"K"),
            ("authorization", b"Bearer K"),
            ("x-other", b"not the key"),
            ("host", b"K"),
        ];
        let (names, path) = hiding(&sources, &h, "/x?apikey=K&a=1&copy=K#frag", b"K");
        assert_eq!(
            names,
            vec!["x-api-key".to_string(), "authorization".to_string()]
        );
        assert_eq!(path.as_deref(), Some("/x?a=1#frag"));
        let (names, path) = hiding(&sources, &h, "/x?apikey=%4B", b"K");
        assert_eq!(path.as_deref(), Some("/x"), "values compared decoded");
        assert_eq!(names.len(), 2);
        let (_, path) = hiding(&sources, &h, "/x?a=1", b"K");
        assert_eq!(path, None);
    }

    #[test]
    fn rewriting_the_query_keeps_the_rest() {
        let drop_apikey = |k: &str, _: &str| k == "apikey";
        assert_eq!(
            rewrite_query("/x?a=1&apikey=k&b=2", drop_apikey).as_deref(),
            Some("/x?a=1&b=2")
        );
        assert_eq!(
            rewrite_query("/x?apikey=k", drop_apikey).as_deref(),
            Some("/x")
        );
        assert_eq!(rewrite_query("/x", drop_apikey), None);
        // Found by fuzzing: a parameter before a fragment.
        assert_eq!(
            rewrite_query("/?apikey=SECRET&apikey#", drop_apikey).as_deref(),
            Some("/#")
        );
        assert_eq!(
            rewrite_query("/p?a=1&apikey=k#frag", drop_apikey).as_deref(),
            Some("/p?a=1#frag")
        );
        let odd = "/x?ey=j#apike?ey=j#apikey=z";
        let drop_ey = |k: &str, _: &str| k == "ey";
        assert_eq!(
            rewrite_query(odd, drop_ey).as_deref(),
            Some("/x#apike?ey=j#apikey=z")
        );
    }
}
