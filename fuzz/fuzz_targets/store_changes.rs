//! `store::parse_changes`: a page of the changes feed, asked for with `since`.
//!
//! Input (text): line 1 is `STATUS SINCE` (a status that is not a u16: no response; a missing
//! or bad `since`: 0); the rest is the body. Without a line break there is no body.
//!
//! Properties, checked against an independent reading of the body as a JSON value (by field
//! name, or by position from an array: serde's derive accepts a struct in both forms):
//! - no response and non-200 statuses are errors, never a page.
//! - `Reset { revision }`: the body says `"reset": true`, or its revision is below `since`.
//! - `Changed { revision, keys, more, skipped }`: no reset, `revision >= since`, `keys` are the
//!   `changed` entries that are key ids (64 hex, either case) in order, `skipped` counts the
//!   others, `created` set exactly for the ids listed as key ids in `created`, `more` as sent.
#![no_main]

use keygate::host::CallResponse;
use keygate::store::{self, Changes, StoreError};
use keygate_fuzz::{first_line, is_key_id_hex, json_field, json_value, status};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (line, body) = first_line(data);
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let status = words.next().and_then(|s| status(s.as_bytes()));
    let since: u64 = words.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let resp = CallResponse {
        status,
        body: body.map(<[u8]>::to_vec),
    };
    let got = store::parse_changes(&resp, since);
    match status {
        None => assert_eq!(got, Err(StoreError::NoResponse)),
        Some(200) => {}
        Some(s) => assert_eq!(got, Err(StoreError::Status(s))),
    }
    let page = match got {
        Ok(page) => page,
        Err(StoreError::BadBody(why)) => {
            assert_eq!(status, Some(200));
            assert!(!why.is_empty());
            return;
        }
        Err(e) => {
            assert_ne!(status, Some(200), "a 200 gave {e:?}");
            return;
        }
    };
    let body = resp.body.as_deref().expect("a page without a body");
    let Some(v) = json_value(body) else {
        return; // only ignored fields fail to read as a JSON value (see `json_value`)
    };
    // Fields by name, or by position from an array (serde's derive accepts both forms).
    let field = |name: &str, pos| json_field(&v, name, pos);
    let revision = field("revision", 0)
        .and_then(|r| r.as_u64())
        .expect("no u64 revision");
    let reset = field("reset", 3).is_some_and(|r| r.as_bool().expect("reset not a bool"));
    let more = field("more", 4).is_some_and(|m| m.as_bool().expect("more not a bool"));
    // (entries, the key ids among them in lower case)
    let ids = |name: &str, pos| -> (usize, Vec<String>) {
        match field(name, pos) {
            None => (0, Vec::new()),
            Some(a) => {
                let a = a.as_array().expect("not an array");
                let ids = a
                    .iter()
                    .filter_map(|s| s.as_str())
                    .map(str::to_ascii_lowercase)
                    .filter(|s| is_key_id_hex(s))
                    .collect();
                (a.len(), ids)
            }
        }
    };
    match page {
        Changes::Reset { revision: r } => {
            assert_eq!(r, revision);
            assert!(reset || revision < since, "reset without cause: {v}");
        }
        Changes::Changed {
            revision: r,
            keys,
            more: m,
            skipped,
        } => {
            assert_eq!(r, revision);
            assert!(!reset, "reset ignored");
            assert!(revision >= since, "revision went back without a reset");
            assert_eq!(more, m);
            let (entries, changed) = ids("changed", 1);
            let (_, created) = ids("created", 2);
            assert_eq!(keys.len(), changed.len());
            assert_eq!(skipped, entries - changed.len(), "skipped entries");
            for (k, s) in keys.iter().zip(&changed) {
                assert_eq!(&k.key.hex(), s);
                assert_eq!(k.created, created.contains(s), "created flag of {s}");
            }
        }
    }
});
