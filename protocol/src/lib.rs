//! The rules keygate's filter and its key store share, stated once: what the key store
//! accepts at write is exactly what the filter accepts in a lookup answer, so no value the
//! store holds can turn into a store error on every Envoy.
//!
//! The one home of the store protocol: keys and key ids ([`key`]: the 512-byte key, the
//! SHA-256 key id), claim names and values and their limits ([`claims`]) and the header value
//! rule they rest on ([`is_header_value`]), the message bodies ([`messages`]: lookup answer,
//! changes page, usage report), the key summary ([`summary`]: the Bloom filter of live key
//! ids and its wire form) and the routes ([`routes`]: protocol and admin API). The
//! filter, the key store, keygatectl, the test harness and the bench use these and spell none
//! of them themselves.
//!
//! Dependencies: `sha2` (the filter's SHA-256, without `std`) and `serde` (both sides speak
//! JSON through it). The filter builds this crate for wasm32-wasip1: keep it small.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]
pub mod claims;
pub mod key;
pub mod messages;
pub mod routes;
pub mod summary;

pub use key::KeyId;

/// A value the filter may write into an HTTP header as is: visible ASCII (0x21..=0x7e) and
/// inner spaces, no space at either end, and no comma. A comma is refused because a header
/// value is a comma-separated list to HTTP (RFC 9110, section 5.3: a recipient may join
/// field lines of one name with `, `), so `pro, free` reads as two values, and as the same
/// thing as two header lines; an upstream or a rate limiter could pick either element.
/// Empty is allowed here; length limits belong to the field (see [`claims::is_value`]).
pub fn is_header_value(s: &str) -> bool {
    let b = s.as_bytes();
    !matches!(b.first(), Some(b' '))
        && !matches!(b.last(), Some(b' '))
        && b.iter()
            .all(|c| *c == b' ' || ((0x21..=0x7e).contains(c) && *c != b','))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_value_is_visible_ascii_with_inner_spaces_and_no_comma() {
        for ok in ["pro", "acme corp", "a=b;c", "", "~!#"] {
            assert!(is_header_value(ok), "{ok:?}");
        }
        for bad in [
            "pro, free",
            ",",
            " pro",
            "pro ",
            "a\tb",
            "a\r\nx: y",
            "caf\u{e9}",
            "\u{7f}",
        ] {
            assert!(!is_header_value(bad), "{bad:?}");
        }
    }
}
