//! `store::parse_lookup`: the key store's answer to `GET {lookup_path}{key_id}`.
//!
//! Input (text): line 1 is the `:status` (anything that is not a u16: no response); the rest
//! is the body. Without a line break there is no body (as when it was over the read limit).
//!
//! Properties:
//! - 404 is `NotFound`; any status but 200 and 404, and no response, are store errors.
//! - `Found` only for a 200 whose body is JSON with the three fields (an object; serde also
//!   takes them by position from an array), and the identity it returns is exactly those fields and `is_header_safe()` by the documented rule
//!   (1-256 bytes, visible ASCII or inner spaces): the store cannot inject headers. Its
//!   `expires_ms` is the body's `expires_at` seconds × 1000 and its claims exactly the body's
//!   claims that the configuration maps (here `plan` and `team`), each value header-safe
//!   (`keygate_protocol::claims::is_value`); claims no header maps are never read.
//! - The same body bytes, cut at `\n` into account, user and role and sent as a well-formed
//!   JSON object: `Found` exactly when the three fields are header-safe (nothing good refused).
#![no_main]

use keygate::host::CallResponse;
use keygate::store::{self, LookupAnswer, StoreError};
use keygate_fuzz::{first_line, is_header_safe_field, json_field, json_value, status};
use libfuzzer_sys::fuzz_target;

/// The claims this target maps to headers.
fn mapped() -> Vec<(String, String)> {
    vec![
        ("plan".into(), "x-plan".into()),
        ("team".into(), "x-team".into()),
    ]
}

fuzz_target!(|data: &[u8]| {
    let mapped = mapped();
    let (line, body) = first_line(data);
    let resp = CallResponse {
        status: status(line),
        body: body.map(<[u8]>::to_vec),
    };
    let answer = store::parse_lookup(&resp, &mapped);
    match (&answer, resp.status) {
        (LookupAnswer::Error(StoreError::NoResponse), None) => {}
        (_, None) => panic!("no response gave {answer:?}"),
        (LookupAnswer::NotFound, Some(404)) => {}
        (_, Some(404)) => panic!("404 gave {answer:?}"),
        (LookupAnswer::Error(StoreError::Status(s)), Some(t)) if *s == t && t != 200 => {}
        (_, Some(s)) if s != 200 => panic!("status {s} gave {answer:?}"),
        (LookupAnswer::Found(identity), Some(200)) => {
            assert!(identity.is_header_safe());
            for f in [&identity.account_id, &identity.user_id, &identity.role] {
                assert!(is_header_safe_field(f), "{identity:?}");
            }
            let body = resp.body.as_deref().expect("Found without a body");
            assert!(body.len() <= store::MAX_LOOKUP_BODY);
            if let Some(v) = json_value(body) {
                let field = |name: &str, pos| json_field(&v, name, pos).and_then(|f| f.as_str());
                assert_eq!(field("account_id", 0), Some(identity.account_id.as_str()));
                assert_eq!(field("user_id", 1), Some(identity.user_id.as_str()));
                assert_eq!(field("role", 2), Some(identity.role.as_str()));
                let expires_at = v.get("expires_at").and_then(serde_json::Value::as_u64);
                assert_eq!(
                    identity.expires_ms,
                    expires_at.map(|s| s.saturating_mul(1000))
                );
                let claims = v.get("claims").and_then(serde_json::Value::as_object);
                let sent_mapped = claims.map_or(0, |c| {
                    c.keys().filter(|k| mapped.iter().any(|(m, _)| m == *k)).count()
                });
                assert_eq!(identity.claims.len(), sent_mapped, "{identity:?}");
                for (name, value) in &identity.claims {
                    assert!(is_header_safe_field(value), "{identity:?}");
                    assert!(keygate_protocol::claims::is_value(value), "{identity:?}");
                    assert!(mapped.iter().any(|(m, _)| m == name), "{identity:?}");
                    let sent = claims.and_then(|c| c.get(name)).and_then(|x| x.as_str());
                    assert_eq!(sent, Some(value.as_str()));
                }
            }
        }
        (LookupAnswer::Error(StoreError::BadBody(why)), Some(200)) => assert!(!why.is_empty()),
        _ => panic!("status {:?} gave {answer:?}", resp.status),
    }

    // The body's lines as the three fields of a well-formed answer.
    let text = String::from_utf8_lossy(body.unwrap_or(line));
    let mut fields = text.splitn(3, '\n');
    let (a, u, r) = (
        fields.next().unwrap_or(""),
        fields.next().unwrap_or(""),
        fields.next().unwrap_or(""),
    );
    let json = serde_json::json!({ "account_id": a, "user_id": u, "role": r, "extra": [1] });
    let resp = CallResponse {
        status: Some(200),
        body: Some(json.to_string().into_bytes()),
    };
    let safe = [a, u, r].iter().all(|f| is_header_safe_field(f));
    match store::parse_lookup(&resp, &mapped) {
        LookupAnswer::Found(i) => {
            assert!(safe, "unsafe identity accepted: {i:?}");
            assert_eq!(
                (i.account_id.as_str(), i.user_id.as_str(), i.role.as_str()),
                (a, u, r)
            );
        }
        other => assert!(!safe, "{a:?} {u:?} {r:?} refused: {other:?}"),
    }
});
