//! The store protocol's message bodies, as both sides see them on the wire: the lookup's
//! answer ([`Found`]), the changes feed's page ([`Page`]) and the usage report ([`Report`]).
//!
//! Invariant: the key store serialises these very types and the filter deserialises them, so
//! a field cannot be renamed, retyped or made optional on one side only. Each side keeps its
//! own meaning of a body (the filter's `store.rs` decides what a page or an answer does to its
//! caches; the key store decides what to put in them); what is here is the form. Bodies are
//! JSON objects; fields a reader does not know are ignored, except in the usage report.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// The body of a lookup's `200`: who the key belongs to. `C` is a claim value: the key store
/// writes strings; the filter reads any JSON value, so a claim it does not forward cannot
/// make the answer unreadable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Found<C = String> {
    pub account_id: String,
    pub user_id: String,
    pub role: String,
    /// When the key expires (Unix seconds, after now: the store answers for active keys
    /// only); absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// The account's claims overridden by the key's; absent when there are none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<BTreeMap<String, C>>,
}

/// A page of the changes feed (`GET {changes}?since=N`): the key ids changed since `since`.
// `K` is a key id: the key store writes strings; the filter reads any JSON value, so one
// malformed entry costs one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema), schema(as = ChangesBody))]
pub struct Page<K = String> {
    /// The revision the page brings the reader to.
    pub revision: u64,
    /// The key ids changed after `since` up to `revision`; absent on a reset. When present,
    /// a list (`null` is not a list).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<Vec<String>>))]
    pub changed: Option<Vec<K>>,
    /// The subset of `changed` whose only change in this page is their creation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "utoipa", schema(value_type = Vec<String>))]
    pub created: Vec<K>,
    /// The store has more to send at once: ask again from `revision`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub more: bool,
    /// `since` is older than the store's history, or newer than the store: drop everything.
    #[serde(default, skip_serializing_if = "is_false")]
    pub reset: bool,
}

/// Most key ids in one usage report the key store takes.
pub const MAX_REPORT_KEY_IDS: usize = 10_000;

/// The usage report (`POST {usage}`): these key ids were admitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema), schema(as = Usage))]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub key_ids: Vec<String>,
}

/// A field that, when present, must hold a value (`Option` alone would read `null` as absent).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

// serde's `skip_serializing_if` takes a function of a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_found_answer_leaves_out_an_absent_expiry_and_absent_claims() {
        let found = Found::<String> {
            account_id: "acme".into(),
            user_id: "ann".into(),
            role: "admin".into(),
            expires_at: None,
            claims: None,
        };
        let text = serde_json::to_string(&found).unwrap();
        assert_eq!(
            text,
            r#"{"account_id":"acme","user_id":"ann","role":"admin"}"#
        );
        assert_eq!(serde_json::from_str::<Found>(&text).unwrap(), found);
        let with: Found = serde_json::from_str(
            r#"{"account_id":"a","user_id":"u","role":"r","expires_at":5,"claims":{"plan":"pro"},"x":1}"#,
        )
        .unwrap();
        assert_eq!(with.expires_at, Some(5));
        assert_eq!(with.claims.unwrap()["plan"], "pro");
    }

    #[test]
    fn a_page_is_written_with_only_the_fields_that_say_something() {
        let reset = Page::<String> {
            revision: 40,
            changed: None,
            created: vec![],
            more: false,
            reset: true,
        };
        assert_eq!(
            serde_json::to_string(&reset).unwrap(),
            r#"{"revision":40,"reset":true}"#
        );
        let empty = Page::<String> {
            revision: 0,
            changed: Some(vec![]),
            created: vec![],
            more: false,
            reset: false,
        };
        assert_eq!(
            serde_json::to_string(&empty).unwrap(),
            r#"{"revision":0,"changed":[]}"#
        );
        let full = Page {
            revision: 3,
            changed: Some(vec!["a".to_string(), "b".to_string()]),
            created: vec!["b".to_string()],
            more: true,
            reset: false,
        };
        let text = serde_json::to_string(&full).unwrap();
        assert_eq!(
            text,
            r#"{"revision":3,"changed":["a","b"],"created":["b"],"more":true}"#
        );
        assert_eq!(serde_json::from_str::<Page>(&text).unwrap(), full);
    }

    #[test]
    fn a_page_with_a_null_list_or_a_negative_revision_is_unreadable() {
        assert!(serde_json::from_str::<Page>(r#"{"revision":1,"changed":null}"#).is_err());
        assert!(serde_json::from_str::<Page>(r#"{"revision":-1}"#).is_err());
        let bare: Page = serde_json::from_str(r#"{"revision":1}"#).unwrap();
        assert_eq!(bare.changed, None);
    }

    #[test]
    fn a_usage_report_is_its_key_ids_and_nothing_else() {
        let report = Report {
            key_ids: vec!["ab".into()],
        };
        assert_eq!(
            serde_json::to_string(&report).unwrap(),
            r#"{"key_ids":["ab"]}"#
        );
        assert!(serde_json::from_str::<Report>(r#"{"key_ids":[],"x":1}"#).is_err());
    }
}
