//! The key store protocol: the requests the filter makes and what the answers mean. The
//! message bodies and routes are the protocol crate's ([`keygate_protocol::messages`],
//! [`keygate_protocol::routes`]), shared with the key store; this module decides what each
//! answer means to the filter.
//!
//! - `GET {lookup_path}{key_id}` → `200 {"account_id", "user_id", "role"[, "expires_at"]
//!   [, "claims"]}` (extra fields ignored) or `404`. Anything else is a store error, never a
//!   deny. `expires_at` is unix seconds; `claims` an object. Only the claims the configuration
//!   maps to headers (`identity_headers.claims`) are read: the others are neither kept nor
//!   checked, so a bad claim no header maps (a row written before the key store applied the
//!   shared rule) cannot take a key down. A mapped claim whose value breaks the rule the key
//!   store applies at write ([`keygate_protocol::claims::is_value`]: no comma, visible ASCII)
//!   makes the whole answer a store error (503 for that key), like a bad identity field, and
//!   is not dropped: the filter cannot tell whether the upstream reads a missing header as
//!   less or as more (a `sandbox` or `restricted` claim), so it never forwards a request
//!   without a header the operator mapped and the store set.
//! - `POST {usage_path}` `{"key_ids": [...]}` → any 2xx: recorded (the filter's usage report).
//! - `GET {changes_path}?since={revision}` → `200 {"revision": N, "changed": [key ids]}`, with
//!   `"more": true` when the store has more to send at once, or `{"revision": N, "reset": true}`
//!   when `since` is too old (or newer than the store: it was restored from a backup).
//!   `since=0` returns the current revision and no list (0 while nothing has changed); what
//!   such a page means to the feed: [`crate::worker::feed::poller::interpret`].
//!
//! Dependencies run one way: this module knows the protocol crate, the host's call answer and
//! the verdict types; shared data ([`crate::shared`]) and the worker (with its usage reports,
//! [`crate::worker::usage`]) use it, never the reverse.

use keygate_protocol::messages::{Found, Page, Report};
use keygate_protocol::{claims, routes, KeyId};

use crate::host::CallResponse;
use crate::verdict::Identity;

/// Largest lookup body read; a larger one is a store error.
pub const MAX_LOOKUP_BODY: usize = 16 * 1024;
/// Largest body of any callout's answer the glue reads (lookups, polls, usage reports); the
/// largest that is legitimate is a changes page, about 10,000 key ids. A lookup's body is
/// further held to [`MAX_LOOKUP_BODY`].
pub const MAX_CALLOUT_BODY: usize = 1024 * 1024;

/// What a lookup says about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupAnswer {
    Found(Identity),
    NotFound,
    /// Not an answer: the key's status is unknown. Never cached as a deny.
    Error(StoreError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// No response: timeout, connection failure, reset.
    NoResponse,
    Status(u16),
    /// Missing, too large or unparsable body, or fields that cannot go into a header.
    BadBody(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::NoResponse => write!(f, "no response (timeout or connection failure)"),
            StoreError::Status(s) => write!(f, "status {s}"),
            StoreError::BadBody(why) => write!(f, "bad body: {why}"),
        }
    }
}

/// The identity in a found answer, with the claims `mapped` names (claim name, header name); a
/// mapped claim that is not a string [`claims::is_value`] accepts is an error naming it.
fn into_identity(
    found: Found<serde_json::Value>,
    mapped: &[(String, String)],
) -> Result<Identity, String> {
    let mut kept = Vec::new();
    for (name, value) in found.claims.unwrap_or_default() {
        if !mapped.iter().any(|(claim, _)| *claim == name) {
            continue;
        }
        match value {
            serde_json::Value::String(v) if claims::is_value(&v) => kept.push((name, v)),
            _ => {
                return Err(format!(
                    "claim {name:?} (mapped to a header): not a string of 1 to {} bytes of \
                         visible ASCII or inner spaces without a comma",
                    claims::MAX_VALUE_LEN
                ))
            }
        }
    }
    Ok(Identity {
        account_id: found.account_id,
        user_id: found.user_id,
        role: found.role,
        expires_ms: found.expires_at.map(|s| s.saturating_mul(1000)),
        claims: kept,
    })
}

/// serde's derived struct parsers also accept a JSON array (fields by position); the protocol
/// is objects only.
fn is_json_object(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

pub fn lookup_path(lookup_prefix: &str, key: &KeyId) -> String {
    routes::lookup(lookup_prefix, &key.hex())
}

/// A lookup's answer; `mapped`: the configuration's `identity_headers.claims` (claim name,
/// header name), the only claims read (module doc).
pub fn parse_lookup(resp: &CallResponse, mapped: &[(String, String)]) -> LookupAnswer {
    match resp.status {
        None => LookupAnswer::Error(StoreError::NoResponse),
        Some(404) => LookupAnswer::NotFound,
        Some(200) => {
            let Some(body) = resp.body.as_ref().filter(|b| b.len() <= MAX_LOOKUP_BODY) else {
                return LookupAnswer::Error(StoreError::BadBody(
                    "missing or over the size limit".into(),
                ));
            };
            if !is_json_object(body) {
                return LookupAnswer::Error(StoreError::BadBody("not a JSON object".into()));
            }
            match serde_json::from_slice::<Found<serde_json::Value>>(body) {
                Err(e) => LookupAnswer::Error(StoreError::BadBody(e.to_string())),
                Ok(found) => match into_identity(found, mapped) {
                    Err(why) => LookupAnswer::Error(StoreError::BadBody(why)),
                    Ok(identity) if identity.is_header_safe() => LookupAnswer::Found(identity),
                    Ok(_) => LookupAnswer::Error(StoreError::BadBody(
                        "identity field empty, too long, not visible ASCII or with a comma".into(),
                    )),
                },
            }
        }
        Some(other) => LookupAnswer::Error(StoreError::Status(other)),
    }
}

/// A key id the changes feed reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub key: KeyId,
    /// Its only change is its creation: only a cached "unknown" verdict is wrong now; a cached
    /// identity (if any) stays valid and may still be served stale.
    pub created: bool,
}

impl Change {
    pub fn of(key: KeyId) -> Change {
        Change {
            key,
            created: false,
        }
    }
}

/// A page of the changes feed, as the filter reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    Changed {
        revision: u64,
        keys: Vec<Change>,
        more: bool,
        /// Entries that were not key ids, skipped.
        skipped: usize,
    },
    Reset {
        revision: u64,
    },
}

impl Changes {
    /// The revision the page brings the feed to.
    pub fn revision(&self) -> u64 {
        match self {
            Changes::Changed { revision, .. } | Changes::Reset { revision } => *revision,
        }
    }
}

pub fn changes_path(changes_prefix: &str, since: u64) -> String {
    routes::changes(changes_prefix, since)
}

/// Parses a changes page asked for with `since`. A revision that goes backwards without a
/// reset means the store lost history (restored, replaced): treated as a reset.
pub fn parse_changes(resp: &CallResponse, since: u64) -> Result<Changes, StoreError> {
    match resp.status {
        None => return Err(StoreError::NoResponse),
        Some(200) => {}
        Some(other) => return Err(StoreError::Status(other)),
    }
    let body = resp
        .body
        .as_deref()
        .ok_or_else(|| StoreError::BadBody("missing or over the size limit".into()))?;
    if !is_json_object(body) {
        return Err(StoreError::BadBody("not a JSON object".into()));
    }
    let raw: Page<serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| StoreError::BadBody(e.to_string()))?;
    let changed = raw.changed.unwrap_or_default();
    if raw.reset || raw.revision < since {
        return Ok(Changes::Reset {
            revision: raw.revision,
        });
    }
    // A malformed entry is skipped (and counted), not a reason to reject the page: rejecting it
    // would retry the same `since` forever and stall every later change. A string that is not a
    // key id names no key any filter could have cached, so skipping it loses nothing.
    // Hex in upper case still names a key: read it as such.
    let parse = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|s| KeyId::from_hex(&s.to_ascii_lowercase()))
    };
    let created: Vec<KeyId> = raw.created.iter().filter_map(parse).collect();
    let keys: Vec<Change> = changed
        .iter()
        .filter_map(parse)
        .map(|key| Change {
            key,
            created: created.contains(&key),
        })
        .collect();
    let skipped = changed.len().saturating_sub(keys.len());
    Ok(Changes::Changed {
        revision: raw.revision,
        keys,
        more: raw.more,
        skipped,
    })
}

/// The usage report's body.
pub fn usage_body(ids: &[KeyId]) -> Vec<u8> {
    let report = Report {
        key_ids: ids.iter().map(KeyId::hex).collect(),
    };
    serde_json::to_vec(&report).unwrap_or_default()
}

/// What the store's answer to a usage report means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageReply {
    Recorded,
    /// 404, 405, 501: the store has no such endpoint.
    NotSupported,
    /// Anything else: try again at the next interval.
    Failed,
}

pub fn usage_reply(resp: &CallResponse) -> UsageReply {
    match resp.status {
        Some(200..=299) => UsageReply::Recorded,
        Some(404 | 405 | 501) => UsageReply::NotSupported,
        _ => UsageReply::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The claims these tests map to headers: `plan` and `team`.
    fn mapped() -> Vec<(String, String)> {
        vec![
            ("plan".into(), "x-plan".into()),
            ("team".into(), "x-team".into()),
        ]
    }

    fn p(r: &CallResponse) -> LookupAnswer {
        parse_lookup(r, &mapped())
    }
    use crate::test_support::test;

    const IDENTITY_JSON: &[u8] = br#"{"account_id":"a","user_id":"u","role":"r"}"#;

    fn resp(status: u16, body: &str) -> CallResponse {
        CallResponse {
            status: Some(status),
            body: Some(body.as_bytes().to_vec()),
        }
    }

    #[test]
    fn lookup_200_is_an_identity_and_extra_fields_are_ignored() {
        let r = resp(
            200,
            r#"{"account_id":"acme","user_id":"ann","role":"admin","created":"x"}"#,
        );
        assert_eq!(
            p(&r),
            LookupAnswer::Found(Identity {
                account_id: "acme".into(),
                user_id: "ann".into(),
                role: "admin".into(),
                ..Identity::default()
            })
        );
    }

    #[test]
    fn a_bad_claim_no_header_maps_is_ignored_and_a_bad_mapped_claim_is_a_store_error_naming_it() {
        // Claims the configuration does not map are neither kept nor checked: a comma, a
        // number, an empty name or 40 of them do not take the key down.
        let many: Vec<String> = (0..40).map(|n| format!(r#""c{n}":"v""#)).collect();
        let body = format!(
            r#"{{"account_id":"a","user_id":"u","role":"r",
                "claims":{{"plan":"pro","note":"ml, ops","n":7,"":"x",{}}}}}"#,
            many.join(",")
        );
        let LookupAnswer::Found(i) = p(&resp(200, &body)) else {
            panic!("not found: {:?}", p(&resp(200, &body)))
        };
        assert_eq!(i.claims, vec![("plan".into(), "pro".into())]);
        // With nothing mapped, no claim is read at all.
        let LookupAnswer::Found(i) = parse_lookup(&resp(200, &body), &[]) else {
            panic!("not found")
        };
        assert!(i.claims.is_empty());
        // A mapped claim with a value the key store refuses at write (a comma) is a store
        // error naming the claim: never forwarded, never dropped.
        let body = r#"{"account_id":"a","user_id":"u","role":"r",
                       "claims":{"plan":"pro, free","note":"ok"}}"#;
        match p(&resp(200, body)) {
            LookupAnswer::Error(StoreError::BadBody(why)) => {
                assert!(why.contains("\"plan\""), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lookup_expiry_and_claims_are_read_and_bad_claims_are_store_errors() {
        let r = resp(
            200,
            r#"{"account_id":"a","user_id":"u","role":"r","expires_at":1830297599,
                "claims":{"team":"ml","plan":"pro plus"}}"#,
        );
        let LookupAnswer::Found(i) = p(&r) else {
            panic!("not found")
        };
        assert_eq!(i.expires_ms, Some(1_830_297_599_000));
        assert_eq!(
            i.claims,
            vec![
                ("plan".into(), "pro plus".into()),
                ("team".into(), "ml".into())
            ]
        );
        assert_eq!(i.claim("plan"), Some("pro plus"));
        let plain = p(&resp(200, std::str::from_utf8(IDENTITY_JSON).unwrap()));
        assert!(
            matches!(plain, LookupAnswer::Found(i) if i.expires_ms.is_none() && i.claims.is_empty())
        );
        for claims in [
            r#"{"plan":"a
x-role: root"}"#
                .to_string(),
            r#"{"plan":"pro, enterprise"}"#.to_string(),
            r#"{"plan":7}"#.to_string(),
            r#"{"team":""}"#.to_string(),
            format!(r#"{{"plan":"{}"}}"#, "x".repeat(257)),
        ] {
            let body =
                format!(r#"{{"account_id":"a","user_id":"u","role":"r","claims":{claims}}}"#);
            assert!(
                matches!(
                    p(&resp(200, &body)),
                    LookupAnswer::Error(StoreError::BadBody(_))
                ),
                "{claims}"
            );
        }
        for exp in ["-1", "1.5", "\"soon\""] {
            let body =
                format!(r#"{{"account_id":"a","user_id":"u","role":"r","expires_at":{exp}}}"#);
            assert!(
                matches!(
                    p(&resp(200, &body)),
                    LookupAnswer::Error(StoreError::BadBody(_))
                ),
                "{exp}"
            );
        }
    }

    #[test]
    fn lookup_404_is_not_found_and_everything_else_is_an_error() {
        assert_eq!(p(&resp(404, "")), LookupAnswer::NotFound);
        assert_eq!(
            p(&resp(500, "{}")),
            LookupAnswer::Error(StoreError::Status(500))
        );
        assert_eq!(
            p(&resp(401, "{}")),
            LookupAnswer::Error(StoreError::Status(401))
        );
        assert_eq!(
            p(&CallResponse {
                status: None,
                body: None
            }),
            LookupAnswer::Error(StoreError::NoResponse)
        );
        for bad in [
            "not json",
            "{}",
            r#"{"account_id":"a","user_id":"u"}"#,
            r#"{"account_id":1,"user_id":"u","role":"r"}"#,
            r#"{"account_id":"a\r\nx-role: root","user_id":"u","role":"r"}"#,
            r#"{"account_id":"","user_id":"u","role":"r"}"#,
            r#"{"account_id":"acme, victim","user_id":"u","role":"r"}"#,
            r#"{"account_id":"a","user_id":"u","role":"member,admin"}"#,
            "[]",
            r#"["acme","ann","admin"]"#,
        ] {
            assert!(
                matches!(
                    p(&resp(200, bad)),
                    LookupAnswer::Error(StoreError::BadBody(_))
                ),
                "{bad}"
            );
        }
        let too_big = CallResponse {
            status: Some(200),
            body: None,
        };
        assert!(matches!(
            p(&too_big),
            LookupAnswer::Error(StoreError::BadBody(_))
        ));
        let mut padded = IDENTITY_JSON.to_vec();
        padded.resize(MAX_LOOKUP_BODY + 1, b' ');
        let big = CallResponse {
            status: Some(200),
            body: Some(padded),
        };
        assert!(matches!(
            p(&big),
            LookupAnswer::Error(StoreError::BadBody(_))
        ));
    }

    #[test]
    fn changes_pages_resets_and_backwards_revisions() {
        let k = KeyId::of(b"k");
        let body = format!(r#"{{"revision":12,"changed":["{}"]}}"#, k.hex());
        assert_eq!(
            parse_changes(&resp(200, &body), 10),
            Ok(Changes::Changed {
                revision: 12,
                keys: vec![Change {
                    key: k,
                    created: false
                }],
                more: false,
                skipped: 0
            })
        );
        assert_eq!(
            parse_changes(
                &resp(200, r#"{"revision":12,"changed":[],"more":true}"#),
                10
            ),
            Ok(Changes::Changed {
                revision: 12,
                keys: vec![],
                more: true,
                skipped: 0
            })
        );
        let body = format!(
            r#"{{"revision":13,"changed":["{k}"],"created":["{k}"]}}"#,
            k = k.hex()
        );
        assert_eq!(
            parse_changes(&resp(200, &body), 10),
            Ok(Changes::Changed {
                revision: 13,
                keys: vec![Change {
                    key: k,
                    created: true
                }],
                more: false,
                skipped: 0
            })
        );
        assert_eq!(
            parse_changes(&resp(200, r#"{"revision":40,"reset":true}"#), 10),
            Ok(Changes::Reset { revision: 40 })
        );
        assert_eq!(
            parse_changes(&resp(200, r#"{"revision":3,"changed":[]}"#), 10),
            Ok(Changes::Reset { revision: 3 })
        );
        // Malformed entries are skipped and counted; the rest of the page applies.
        let body = format!(
            r#"{{"revision":12,"changed":["nope",7,null,"{}","{}"]}}"#,
            k.hex(),
            KeyId::of(b"j").hex().to_uppercase()
        );
        assert_eq!(
            parse_changes(&resp(200, &body), 10),
            Ok(Changes::Changed {
                revision: 12,
                keys: vec![Change::of(k), Change::of(KeyId::of(b"j"))],
                more: false,
                skipped: 3
            })
        );
        assert!(parse_changes(&resp(200, r#"{"revision":-1}"#), 0).is_err());
        assert!(
            parse_changes(&resp(200, "[20]"), 0).is_err(),
            "objects only"
        );
        assert_eq!(
            parse_changes(&resp(503, ""), 0),
            Err(StoreError::Status(503))
        );
    }

    #[test]
    fn paths_carry_only_the_key_id() {
        let k = KeyId::of(b"secret-key");
        let p = lookup_path("/v1/keys/", &k);
        assert_eq!(p, format!("/v1/keys/{}", k.hex()));
        assert!(!p.contains("secret"));
        assert_eq!(changes_path("/v1/changes", 7), "/v1/changes?since=7");
    }

    #[test]
    fn replies_and_body() {
        let r = |s| CallResponse {
            status: s,
            body: None,
        };
        assert_eq!(usage_reply(&r(Some(200))), UsageReply::Recorded);
        assert_eq!(usage_reply(&r(Some(204))), UsageReply::Recorded);
        for s in [404, 405, 501] {
            assert_eq!(usage_reply(&r(Some(s))), UsageReply::NotSupported);
        }
        assert_eq!(usage_reply(&r(Some(503))), UsageReply::Failed);
        assert_eq!(usage_reply(&r(None)), UsageReply::Failed);
        let v: serde_json::Value = serde_json::from_slice(&usage_body(&[KeyId::of(b"k")])).unwrap();
        assert_eq!(v["key_ids"][0], KeyId::of(b"k").hex());
    }
}
