//! `key::extract`, `key::validate`, `KeyId::from_hex`, `key::query_param` and
//! `key::remove_query_param` on a request as a client can send it.
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
//!   configured source that is present decides; its key is trimmed (header) or percent-decoded
//!   (query), then must be 1..=512 bytes of visible ASCII.
//! - `validate` accepts exactly the documented keys and returns its input.
//! - `from_hex` accepts exactly 64 lowercase hex characters and round-trips with `hex`.
//! - `remove_query_param(path, name)` leaves no parameter `name` that `query_param` (the filter's
//!   own reading of the query) would find, keeps the path and every other parameter, and is
//!   idempotent.
#![no_main]

use keygate::config::{Config, KeySource};
use keygate::key::{self, Found, KeyError, KeyId};
use keygate_fuzz::{first_line, is_key_id_hex, is_valid_key};
use libfuzzer_sys::fuzz_target;

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
        KeySource::Query {
            name: "apikey".into(),
        },
    ]
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
fn query_of(path: &str) -> Option<&str> {
    let before_fragment = path.split('#').next().unwrap_or(path);
    Some(&before_fragment[before_fragment.find('?')? + 1..])
}

fn first_param<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    query_of(path)?
        .split('&')
        .find_map(|pair| match pair.find('=') {
            Some(i) if &pair[..i] == name => Some(&pair[i + 1..]),
            None if pair == name => Some(""),
            _ => None,
        })
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

fn expected(
    sources: &[KeySource],
    headers: &[(String, &[u8])],
    path: &str,
) -> Result<(Vec<u8>, Found), KeyError> {
    for s in sources {
        match s {
            KeySource::Header { name, prefix } => {
                let Some((_, v)) = headers.iter().find(|(n, _)| n == name) else {
                    continue;
                };
                let mut v: &[u8] = v;
                if let Some(p) = prefix {
                    let p = p.as_bytes();
                    if v.len() < p.len() || !v[..p.len()].eq_ignore_ascii_case(p) {
                        continue;
                    }
                    v = &v[p.len()..];
                }
                let start = v.iter().position(|b| !matches!(b, b' ' | b'\t'));
                let k = match start {
                    None => Vec::new(),
                    Some(s) => {
                        let end = v.iter().rposition(|b| !matches!(b, b' ' | b'\t')).unwrap();
                        v[s..=end].to_vec()
                    }
                };
                return classify(k).map(|k| (k, Found::Header(name.clone())));
            }
            KeySource::Query { name } => {
                let Some(raw) = first_param(path, name) else {
                    continue;
                };
                let k = form_decode(raw).ok_or(KeyError::Invalid)?;
                return classify(k).map(|k| (k, Found::Query(name.clone())));
            }
        }
    }
    Err(KeyError::Missing)
}

fn is_query_name(n: &str) -> bool {
    !n.is_empty() && !n.contains(['&', '=', '?', '#'])
}

fn check_remove(path: &str, name: &str) {
    let out = key::remove_query_param(path, name);
    let before_fragment = path.split('#').next().unwrap_or(path);
    let Some(q) = before_fragment.find('?') else {
        assert_eq!(out, path, "a path without a query is left alone");
        return;
    };
    let base = &path[..q];
    assert!(
        out.starts_with(base),
        "{path:?} -> {out:?}: the path itself changed"
    );
    assert_eq!(
        key::query_param(&out, name),
        None,
        "remove_query_param({path:?}, {name:?}) = {out:?} still has the parameter"
    );
    // The query ends at the first '#'; the fragment after it is kept as it was.
    let split = |p: &str| -> (Vec<String>, Option<String>) {
        let (before, fragment) = match p.split_once('#') {
            Some((b, f)) => (b, Some(f.to_string())),
            None => (p, None),
        };
        let Some(i) = before.find('?') else { return (Vec::new(), fragment) };
        let query = &before[i + 1..];
        let params = query
            .split('&')
            .filter(|pair| pair.split('=').next() != Some(name))
            .map(str::to_string)
            .collect();
        (params, fragment)
    };
    let (before, before_fragment) = split(path);
    let (after, after_fragment) = split(&out);
    let before: Vec<String> = before.into_iter().filter(|p| !p.is_empty()).collect();
    let after: Vec<String> = after.into_iter().filter(|p| !p.is_empty()).collect();
    assert_eq!(before, after, "{path:?} -> {out:?}: other parameters lost");
    assert_eq!(before_fragment, after_fragment, "{path:?} -> {out:?}: fragment changed");
    assert_eq!(key::remove_query_param(&out, name), out, "not idempotent");
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
    let mut headers: Vec<(String, &[u8])> = Vec::new();
    let mut rest = rest;
    while let Some(r) = rest {
        let (line, next) = first_line(r);
        rest = next;
        // `name:value`; a leading ':' belongs to the name (pseudo-headers).
        let split = line.iter().skip(1).position(|&b| b == b':').map(|i| i + 1);
        let (name, value) = match split {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &[][..]),
        };
        headers.push((String::from_utf8_lossy(name).to_ascii_lowercase(), value));
    }

    // extract, against the documented rule.
    let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
    let got = key::extract(&sources, header, &path);
    let want = expected(&sources, &headers, &path);
    assert_eq!(got, want, "sources {sources:?}, path {path:?}");
    if let Ok((k, found)) = &got {
        assert!(is_valid_key(k));
        let id = KeyId::of(k);
        assert!(is_key_id_hex(&id.hex()));
        assert_eq!(KeyId::from_hex(&id.hex()), Some(id));
        if let Found::Query(name) = found {
            check_remove(&path, name);
        }
    }

    // validate and from_hex on every header value and on the path.
    for v in headers.iter().map(|(_, v)| *v).chain([path.as_bytes()]) {
        let r = key::validate(v);
        assert_eq!(r.is_ok(), is_valid_key(v), "validate({v:?}) = {r:?}");
        if let Ok(k) = r {
            assert_eq!(k, v);
        }
        if let Ok(s) = std::str::from_utf8(v) {
            check_hex(s);
        }
    }

    // remove_query_param for every configured query source and every name in the path.
    for s in &sources {
        if let KeySource::Query { name } = s {
            check_remove(&path, name);
        }
    }
    if let Some(q) = path.find('?') {
        for pair in path[q + 1..].split('&').take(8) {
            let name = pair.split('=').next().unwrap_or(pair);
            if is_query_name(name) {
                check_remove(&path, name);
            }
        }
    }
});
