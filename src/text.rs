//! Byte classes for text that crosses the filter (keys, header names and values, paths), each
//! stated once here so that every check in the crate means the same thing.

/// Visible ASCII (0x21..=0x7e): no control characters, no space, nothing above 0x7e.
pub fn is_visible(b: u8) -> bool {
    (0x21..=0x7e).contains(&b)
}

/// Whether every byte of `s` is visible ASCII.
pub fn all_visible(s: &[u8]) -> bool {
    s.iter().all(|b| is_visible(*b))
}

/// A header value we are willing to write: visible ASCII and inner spaces, no leading or
/// trailing space, nothing that an upstream could read as a list (`,`). The rule the key store
/// applies to claim values at write: [`keygate_protocol::is_header_value`].
pub fn is_safe_header_value(s: &str) -> bool {
    keygate_protocol::is_header_value(s)
}

/// An HTTP header name token (RFC 9110 `tchar`).
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header name as frameworks read it: lowercase, `_` for `-` (CGI, WSGI, Rack and PHP map
/// both `X-Role` and `X_Role` to `HTTP_X_ROLE`).
pub fn fold_header_name(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'_' => '-',
            _ => char::from(b.to_ascii_lowercase()),
        })
        .collect()
}

/// The value of a hex digit (either case).
pub fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c.wrapping_sub(b'0')),
        b'a'..=b'f' => Some(c.wrapping_sub(b'a').wrapping_add(10)),
        b'A'..=b'F' => Some(c.wrapping_sub(b'A').wrapping_add(10)),
        _ => None,
    }
}

/// Decodes `%XX` escapes (and `+` as space when `plus_is_space`, as in query strings).
/// `None` for a malformed escape.
pub fn percent_decode(s: &[u8], plus_is_space: bool) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.iter().copied();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hi = hex_value(bytes.next()?)?;
                let lo = hex_value(bytes.next()?)?;
                out.push((hi << 4) | lo);
            }
            b'+' if plus_is_space => out.push(b' '),
            _ => out.push(b),
        }
    }
    Some(out)
}

/// Decodes every well-formed `%XX` escape and keeps a malformed one (`%`, `%4`, `%zz`) as it
/// is, the way lenient decoders do (Python's `urllib.parse.unquote`, on which Starlette and
/// most Python frameworks read paths). Never fails.
pub fn percent_decode_lenient(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        let escape = match (b, s.get(i.saturating_add(1)), s.get(i.saturating_add(2))) {
            (b'%', Some(&h), Some(&l)) => hex_value(h).zip(hex_value(l)),
            _ => None,
        };
        match escape {
            Some((hi, lo)) => {
                out.push((hi << 4) | lo);
                i = i.saturating_add(3);
            }
            None => {
                out.push(b);
                i = i.saturating_add(1);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;

    #[test]
    fn classes() {
        assert!(all_visible(b"kg_abc~!"));
        assert!(!all_visible(b"a b"));
        assert!(!all_visible("é".as_bytes()));
        assert!(!all_visible(b"a\x7f"));
        assert!(is_safe_header_value("acme corp"));
        assert!(!is_safe_header_value("acme, victim"));
        assert!(!is_safe_header_value(" acme"));
        assert!(!is_safe_header_value("acme\r\nx: y"));
        assert!(is_token("x-role"));
        assert!(!is_token(":path"));
        assert!(!is_token("x role"));
        assert_eq!(fold_header_name("X_Account-ID"), "x-account-id");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode(b"a%2Fb%2f+c", true),
            Some(b"a/b/ c".to_vec())
        );
        assert_eq!(percent_decode(b"a+c", false), Some(b"a+c".to_vec()));
        assert_eq!(percent_decode(b"%zz", false), None);
        assert_eq!(percent_decode(b"%2", false), None);
    }

    #[test]
    fn lenient_decoding_keeps_malformed_escapes_and_decodes_the_rest() {
        assert_eq!(percent_decode_lenient(b"%41%/%4%zz%2e"), b"A%/%4%zz.");
        assert_eq!(percent_decode_lenient(b"%"), b"%");
        assert_eq!(percent_decode_lenient(b"a%2"), b"a%2");
        assert_eq!(percent_decode_lenient(b"%252e"), b"%2e");
        assert_eq!(percent_decode_lenient(b""), b"");
    }
}
