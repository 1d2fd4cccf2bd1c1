//! `key::extract`, `key::validate`, `KeyId::from_hex` and `key::query_of` on a request as a
//! client can send it (what `hide_credentials` removes is a property of the `admission` target).
//!
//! Input (text, so seeds are plain requests):
//!   line 1: key sources, comma-separated: `name` (header), `name=Prefix ` (header behind a
//!           scheme prefix), `?name` (query parameter). Empty: the defaults (`x-api-key`,
//!           `authorization` with `Bearer `) then `?apikey`. Built through `Config::from_json`,
//!           so only configurations the filter accepts are used (a refused one: the defaults).
//!   line 2: `:path`, with its query.
//!   lines 3..: request headers, `name:value` (names lowercased, as Envoy hands them over).
//!
//! Properties:
//! - `extract` agrees with the documented rule, re-stated independently here: the first
//!   configured source that is present decides; present twice (two headers, two parameters
//!   whose names decode alike) it is refused as a duplicate; its key is trimmed (header) or
//!   percent-decoded (query), then must be 1..=512 bytes of visible ASCII.
//! - `validate` accepts exactly the documented keys and returns its input.
//! - `from_hex` accepts exactly 64 lowercase hex characters and round-trips with `hex`.
#![no_main]

use keygate::config::{Config, KeySource};
use keygate::request::key::{self, KeyError};
use keygate_protocol::KeyId;
use keygate_fuzz::{first_line, header_lines, is_key_id_hex, is_valid_key};
use libfuzzer_sys::fuzz_target;

/// The filter's default sources, and a query parameter.
fn default_sources() -> Vec<KeySource> {
    let mut sources = keygate::config::default_key_sources();
    sources.push(KeySource::Query {
        name: "apikey".into(),
    });
    sources
}

/// The key sources a `key_sources` line configures, validated by the real config parser.
fn sources(spec: &[u8]) -> Vec<KeySource> {
    let spec = String::from_utf8_lossy(spec);
    if spec.is_empty() {
        return default_sources();
    }
    let list: Vec<serde_json::Value> = spec
        .split(',')
        .map(|tok| {
            if let Some(q) = tok.strip_prefix('?') {
                serde_json::json!({ "query": q })
            } else if let Some((h, p)) = tok.split_once('=') {
                serde_json::json!({ "header": h, "prefix": p })
            } else {
                serde_json::json!({ "header": tok })
            }
        })
        .collect();
    let json = serde_json::json!({ "store": { "cluster": "keystore" }, "key_sources": list });
    match Config::from_json(json.to_string().as_bytes()) {
        Ok(c) => c.key_sources,
        Err(_) => default_sources(),
    }
}

fn classify(k: Vec<u8>) -> Result<Vec<u8>, KeyError> {
    if k.is_empty() {
        Err(KeyError::Empty)
    } else if k.len() > key::MAX_KEY_LEN {
        Err(KeyError::TooLong)
    } else if !k.iter().all(|b| (0x21..=0x7e).contains(b)) {
        Err(KeyError::Invalid)
    } else {
        Ok(k)
    }
}

/// The query of a path (RFC 3986): the fragment starts at the first `#`; the query is after
/// the first `?` before it.
fn query_of(path: &str) -> &str {
    let before_fragment = path.split('#').next().unwrap_or(path);
    match before_fragment.find('?') {
        Some(i) => &before_fragment[i + 1..],
        None => "",
    }
}

/// The values of every parameter whose form-decoded name is `name`.
fn params<'a>(query: &'a str, name: &str) -> Vec<&'a str> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = match pair.find('=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, ""),
            };
            (form_decode(k).as_deref() == Some(name.as_bytes())).then_some(v)
        })
        .collect()
}

fn unhex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// application/x-www-form-urlencoded: `%XX` (either case), `+` is a space; a bad escape: `None`.
fn form_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = unhex(*b.get(i + 1)?)?;
                let lo = unhex(*b.get(i + 2)?)?;
                out.push(hi * 16 + lo);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

fn trim(v: &[u8]) -> Vec<u8> {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t'));
    match start {
        None => Vec::new(),
        Some(s) => {
            let end = v.iter().rposition(|b| !matches!(b, b' ' | b'\t')).unwrap();
            v[s..=end].to_vec()
        }
    }
}

/// The keys a header source holds: every header of that name whose value has the prefix.
fn header_keys(headers: &[(String, Vec<u8>)], name: &str, prefix: Option<&str>) -> Vec<Vec<u8>> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .filter_map(|(_, v)| match prefix {
            None => Some(trim(v)),
            Some(p) => {
                let p = p.as_bytes();
                (v.len() >= p.len() && v[..p.len()].eq_ignore_ascii_case(p))
                    .then(|| trim(&v[p.len()..]))
            }
        })
        .collect()
}

fn expected(
    sources: &[KeySource],
    headers: &[(String, Vec<u8>)],
    path: &str,
) -> Result<Vec<u8>, KeyError> {
    for s in sources {
        let found: Vec<Option<Vec<u8>>> = match s {
            KeySource::Header { name, prefix } => header_keys(headers, name, prefix.as_deref())
                .into_iter()
                .map(Some)
                .collect(),
            KeySource::Query { name } => params(query_of(path), name)
                .into_iter()
                .map(form_decode)
                .collect(),
        };
        match found.as_slice() {
            [] => continue,
            [_, _, ..] => return Err(KeyError::Duplicate),
            [None] => return Err(KeyError::Invalid),
            [Some(k)] => return classify(k.clone()),
        }
    }
    Err(KeyError::Missing)
}

fn check_hex(s: &str) {
    let id = KeyId::from_hex(s);
    assert_eq!(id.is_some(), is_key_id_hex(s), "from_hex({s:?}) = {id:?}");
    if let Some(id) = id {
        assert_eq!(id.hex(), s);
    }
}

fuzz_target!(|data: &[u8]| {
    let (spec, rest) = first_line(data);
    let sources = sources(spec);
    let (path_line, rest) = first_line(rest.unwrap_or_default());
    let path = String::from_utf8_lossy(path_line).into_owned();
    let headers = header_lines(rest);

    // extract, against the documented rule.
    assert_eq!(key::query_of(&path), query_of(&path), "query of {path:?}");
    let fields = key::fields(&headers);
    let got = key::extract(&sources, &fields, key::query_of(&path)).map(|k| k.into_owned());
    let want = expected(&sources, &headers, &path);
    assert_eq!(got, want, "sources {sources:?}, path {path:?}");
    if let Ok(k) = &got {
        assert!(is_valid_key(k));
        let id = KeyId::of(k);
        assert!(is_key_id_hex(&id.hex()));
        assert_eq!(KeyId::from_hex(&id.hex()), Some(id));
    }

    // validate and from_hex on every header value and on the path.
    for v in headers
        .iter()
        .map(|(_, v)| v.as_slice())
        .chain([path.as_bytes()])
    {
        let r = key::validate(v);
        assert_eq!(r.is_ok(), is_valid_key(v), "validate({v:?}) = {r:?}");
        if let Ok(k) = r {
            assert_eq!(k, v);
        }
        if let Ok(s) = std::str::from_utf8(v) {
            check_hex(s);
        }
    }
});
