//! `admission::admit` on requests as a client can send them: the gate's rules as properties.
//!
//! Input (text, so seeds are plain requests):
//!   line 1: options: `h` turns `hide_credentials` on, `q` adds the query source `apikey`
//!           (after `x-api-key` and `authorization: Bearer`), `b` says a body follows the
//!           headers (they do not end the stream), `p` turns `run_on_preflight` on, `r` lists
//!           the path rules in reverse order;
//!   line 2: `:path`, raw bytes (missing when the line is `-`);
//!   line 3: `:method`;
//!   lines 4..: request headers, `name:value` (names lowercased, as Envoy hands them over).
//! The configuration ([`RULES`]): anonymous paths `/public` and `/private/open`; `/private/`
//! and `/public/internal` for role `admin` only, `/api` for `member` and `admin`,
//! `/api/admin` for `admin`; `invalidate_paths` `/api/v1/admin/`.
//!
//! Properties:
//! - a `:path` that is missing or not UTF-8 is refused with 400, never defaulted;
//! - no identity header, in any spelling a framework folds into the same name (case, `_` for
//!   `-`), survives the plan;
//! - the most specific rule decides: when the most specific rule (of either list) that the path
//!   lies under, as an independent lenient reader resolves it (everything percent-decoded,
//!   `\` as `/`, `;` parameters and trailing dots dropped, dot segments resolved), is a role
//!   rule, the path is not anonymous and no role that rule does not list passes;
//! - an anonymous path has no dot segment and no encoded separator in any reading, and its
//!   most specific rule is an anonymous prefix;
//! - the outcome does not depend on the order of the rules (the reversed configuration admits
//!   and refuses the same requests and roles);
//! - a request passes without a key on a path that is not anonymous only when it is a real CORS
//!   preflight (`OPTIONS`, `origin`, `access-control-request-method`, no body, no
//!   `content-length` but `0`, no `transfer-encoding`, no key, no `authorization`, no
//!   `cookie`) and `run_on_preflight` is off; every such preflight passes;
//! - the key id is the SHA-256 of the key `key::extract` reads; a key source given twice is
//!   refused (or, on an anonymous path, ignored) before any lookup;
//! - with `hide_credentials`, the key appears in no header value and no query parameter once
//!   the plan is carried out.
#![no_main]

use keygate::request::admission::{self, Admission, Plan};
use keygate::config::Config;
use keygate::request::fields;
use keygate::request::key::{self, KeyError};
use keygate_protocol::KeyId;
use keygate::request::act::{Recorder, Refusal};
use keygate_fuzz::{first_line, header_lines};
use libfuzzer_sys::fuzz_target;

const IDENTITY: [&str; 3] = ["x-account-id", "x-user-id", "x-role"];

/// The path rules: prefix, and `None` for an anonymous prefix or the roles that pass.
const RULES: [(&str, Option<&[&str]>); 6] = [
    ("/public", None),
    ("/private/open", None),
    ("/private", Some(&["admin"])),
    ("/public/internal", Some(&["admin"])),
    ("/api", Some(&["member", "admin"])),
    ("/api/admin", Some(&["admin"])),
];

const ROLES: [&str; 3] = ["member", "admin", "guest"];

/// The configuration for these options, parsed once per process.
fn config(opts: &[u8], reversed: bool) -> &'static Config {
    type Cache = std::collections::HashMap<[bool; 4], &'static Config>;
    static CACHE: std::sync::Mutex<Option<Cache>> = std::sync::Mutex::new(None);
    let flags = [b'q', b'h', b'p'].map(|o| opts.contains(&o));
    let id = [flags[0], flags[1], flags[2], reversed];
    let mut cache = CACHE.lock().unwrap();
    let cache = cache.get_or_insert_with(Cache::new);
    cache
        .entry(id)
        .or_insert_with(|| Box::leak(Box::new(parse_config(opts, reversed))))
}

fn parse_config(opts: &[u8], reversed: bool) -> Config {
    let mut sources = vec![
        serde_json::json!({"header": "x-api-key"}),
        serde_json::json!({"header": "authorization", "prefix": "Bearer "}),
    ];
    if opts.contains(&b'q') {
        sources.push(serde_json::json!({"query": "apikey"}));
    }
    let mut rules = RULES.to_vec();
    if reversed {
        rules.reverse();
    }
    let anonymous: Vec<&str> = rules.iter().filter(|r| r.1.is_none()).map(|r| r.0).collect();
    let roles: Vec<serde_json::Value> = rules
        .iter()
        .filter_map(|(p, r)| Some(serde_json::json!({"prefix": p, "roles": (*r)?})))
        .collect();
    let json = serde_json::json!({
        "store": {"cluster": "keystore"},
        "anonymous_paths": anonymous,
        "required_roles": roles,
        "invalidate_paths": ["/api/v1/admin/"],
        "key_sources": sources,
        "hide_credentials": opts.contains(&b'h'),
        "run_on_preflight": opts.contains(&b'p'),
    });
    Config::from_json(json.to_string().as_bytes()).expect("the fuzz configuration is valid")
}

/// The most specific rule a (lowercase) reading lies under: written from README.md's rule.
fn deciding_rule(reading: &str) -> Option<(&'static str, Option<&'static [&'static str]>)> {
    RULES
        .iter()
        .filter(|(p, _)| under(reading, p))
        .max_by_key(|(p, _)| p.len())
        .copied()
}

/// A real CORS preflight, written from README.md's definition.
fn real_preflight(method: &[u8], headers: &[(String, Vec<u8>)], body: bool, no_key: bool) -> bool {
    let has = |n: &str| headers.iter().any(|(h, _)| h == n);
    method == b"OPTIONS"
        && has("origin")
        && has("access-control-request-method")
        && !body
        && no_key
        && !has("transfer-encoding")
        && !has("authorization")
        && !has("cookie")
        && headers
            .iter()
            .all(|(h, v)| h != "content-length" || v.as_slice() == b"0")
}

fn fold(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

fn unhex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn decode_once(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|c| unhex(*c)),
                b.get(i + 2).and_then(|c| unhex(*c)),
            ) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The path as lenient upstreams resolve it after one, two and three percent-decodings,
/// lowercase, and whether any of them had a dot segment: written from README.md's rules.
fn lenient_readings(path: &str) -> (Vec<String>, bool) {
    let part = path.split(['?', '#']).next().unwrap_or(path);
    let mut b = part.as_bytes().to_vec();
    let mut readings = Vec::new();
    let mut had_dots = false;
    for _ in 0..3 {
        b = decode_once(&b);
        let (reading, dots) = resolve_leniently(&b);
        readings.push(reading);
        had_dots |= dots;
    }
    (readings, had_dots)
}

fn resolve_leniently(b: &[u8]) -> (String, bool) {
    let text = String::from_utf8_lossy(b)
        .replace('\\', "/")
        .to_ascii_lowercase();
    let mut out: Vec<String> = Vec::new();
    let mut had_dots = false;
    for seg in text.split('/') {
        let seg = seg.split(';').next().unwrap_or("");
        let seg = if seg == "." || seg == ".." {
            seg
        } else {
            seg.trim_end_matches(['.', ' '])
        };
        match seg {
            "" => {}
            "." => had_dots = true,
            ".." => {
                had_dots = true;
                out.pop();
            }
            s => out.push(s.to_string()),
        }
    }
    (format!("/{}", out.join("/")), had_dots)
}

fn under(path: &str, prefix: &str) -> bool {
    path == prefix || path.starts_with(&format!("{prefix}/"))
}

fn header_holds(value: &[u8], key: &[u8]) -> bool {
    let t = |v: &[u8]| -> Vec<u8> {
        let s = String::from_utf8_lossy(v);
        s.trim_matches([' ', '\t']).as_bytes().to_vec()
    };
    t(value) == key
        || (value.len() >= 7
            && value[..7].eq_ignore_ascii_case(b"Bearer ")
            && t(&value[7..]) == key)
}

fn check_plan(
    cfg: &Config,
    headers: &[(String, Vec<u8>)],
    path: &str,
    plan: &Plan,
    key: Option<&[u8]>,
) {
    let mut io = Recorder::default();
    plan.carry_out(&mut io);
    let kept: Vec<&(String, Vec<u8>)> = headers
        .iter()
        .filter(|(n, _)| !io.removed.contains(n))
        .collect();
    for (n, _) in &kept {
        assert!(
            !IDENTITY.contains(&fold(n).as_str()),
            "identity header {n:?} survives"
        );
    }
    let (readings, had_dots) = lenient_readings(path);
    for reading in &readings {
        if let Some((prefix, Some(listed))) = deciding_rule(reading) {
            for role in ROLES.iter().filter(|r| !listed.contains(r)) {
                assert!(
                    !cfg.role_allowed(&plan.route, role),
                    "{path:?} ({reading}) passes {role} under {prefix}"
                );
            }
            assert!(!plan.anonymous, "{path:?} anonymous but reads as {reading}");
        }
        if plan.anonymous {
            assert!(
                matches!(deciding_rule(reading), Some((_, None))),
                "{path:?} anonymous, reads as {reading}"
            );
        }
    }
    if plan.anonymous {
        assert!(!had_dots, "{path:?} anonymous with dot segments");
        let part = path.split(['?', '#']).next().unwrap_or(path);
        let lower = part.to_ascii_lowercase();
        assert!(!lower.contains("%2f") && !lower.contains("%5c") && !part.contains('\\'));
    }
    let (Some(key), true) = (key, cfg.hide_credentials) else {
        return;
    };
    for (n, v) in kept {
        if !n.starts_with(':') && n != "host" {
            assert!(!header_holds(v, key), "the key is still in {n}");
        }
    }
    let new_path = plan.path.as_deref().unwrap_or(path);
    for pair in key::query_of(new_path).split('&') {
        let v = pair.split_once('=').map_or("", |(_, v)| v);
        let form = decode_strict(&v.replace('+', " "));
        assert!(
            v.as_bytes() != key && form.as_deref() != Some(key),
            "key left in {new_path:?}"
        );
    }
}

/// `%XX` decoding that fails on a malformed escape.
fn decode_strict(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(unhex(*b.get(i + 1)?)? * 16 + unhex(*b.get(i + 2)?)?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let (opts, rest) = first_line(data);
    let cfg = config(opts, opts.contains(&b'r'));
    let body = opts.contains(&b'b');
    let (path_line, rest) = first_line(rest.unwrap_or_default());
    let (method, rest) = first_line(rest.unwrap_or_default());
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    if path_line != b"-" {
        headers.push((":path".into(), path_line.to_vec()));
    }
    headers.push((":method".into(), method.to_vec()));
    headers.extend(header_lines(rest));
    // Through the serialized header map, as the filter reads it from Envoy.
    let buf = fields::serialize(&key::fields(&headers));
    let parsed = fields::parse(&buf).expect("a serialized map parses");
    assert_eq!(parsed, key::fields(&headers));
    let admission = admission::admit(cfg, &parsed, !body);
    same_in_either_order(&admission, cfg, config(opts, !opts.contains(&b'r')), &parsed, body);
    let Ok(path) = std::str::from_utf8(path_line).map(str::to_string) else {
        assert_eq!(admission, Admission::Refuse(Refusal::BadRequest, None));
        return;
    };
    if path_line == b"-" {
        assert_eq!(admission, Admission::Refuse(Refusal::BadRequest, None));
        return;
    }
    let extracted =
        key::extract(&cfg.key_sources, &parsed, key::query_of(&path)).map(|k| k.into_owned());
    let no_key = extracted == Err(KeyError::Missing);
    let preflight = !cfg.run_on_preflight && real_preflight(method, &headers, body, no_key);
    match &admission {
        Admission::Refuse(Refusal::BadRequest, None) => {}
        Admission::Refuse(r, e) => {
            assert!(!preflight, "a real preflight refused");
            assert_eq!(Some(extracted.clone().unwrap_err()), *e);
            assert_eq!(*r == Refusal::DuplicateKey, *e == Some(KeyError::Duplicate));
        }
        Admission::Pass(plan) => {
            assert!(extracted.is_err());
            assert!(
                plan.anonymous || preflight,
                "passed without a key, not anonymous, not a real preflight"
            );
            check_plan(cfg, &headers, &path, plan, None);
        }
        Admission::Check(id, plan) => {
            assert!(!preflight, "a real preflight checked");
            let k = extracted.expect("a key was checked");
            assert_eq!(*id, KeyId::of(&k));
            check_plan(cfg, &headers, &path, plan, Some(&k));
        }
    }
});

/// The configuration with its rules in the other order decides the same.
fn same_in_either_order(
    admission: &Admission,
    cfg: &Config,
    other: &Config,
    parsed: &keygate::request::fields::Headers,
    body: bool,
) {
    let again = admission::admit(&other, parsed, !body);
    assert_eq!(*admission, again, "the order of the rules changed the admission");
    if let Admission::Check(_, plan) | Admission::Pass(plan) = admission {
        for role in ROLES {
            assert_eq!(
                other.role_allowed(&plan.route, role),
                cfg.role_allowed(&plan.route, role),
                "the order of the rules changed whether {role} passes"
            );
        }
    }
}
