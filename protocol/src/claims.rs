//! Claims: name/value pairs a key store keeps per account and per key and sends in a lookup
//! answer (a key's claims override its account's); the filter forwards the ones its
//! configuration maps to headers (`identity_headers.claims`).
//!
//! Invariant: a claim the key store accepts at write ([`check`]) is one the filter can
//! forward as a header ([`is_value`]): the key store refuses a bad claim with a 400 naming
//! it, and the filter never meets one from it. The filter still checks answers (a row written
//! before this rule, another store): see its README for what it does with a bad one.

use std::fmt;

/// Most claims on one account, or on one key.
pub const MAX_CLAIMS: usize = 16;
/// Most claims in one lookup answer: the account's and the key's, merged.
pub const MAX_ANSWER_CLAIMS: usize = 2 * MAX_CLAIMS;
/// Longest claim name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Longest claim value, in bytes.
pub const MAX_VALUE_LEN: usize = 256;

/// A claim name: 1 to [`MAX_NAME_LEN`] characters of `A-Z a-z 0-9 . _ -`.
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// A claim value: 1 to [`MAX_VALUE_LEN`] bytes that [`crate::is_header_value`] accepts
/// (visible ASCII and inner spaces, no comma).
pub fn is_value(value: &str) -> bool {
    !value.is_empty() && value.len() <= MAX_VALUE_LEN && crate::is_header_value(value)
}

/// Why a set of claims is refused; its text names the claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimError {
    /// More than [`MAX_CLAIMS`].
    TooMany(usize),
    /// A name [`is_name`] refuses (shown cut to [`MAX_NAME_LEN`] characters).
    Name(String),
    /// The value of this claim is one [`is_value`] refuses.
    Value(String),
}

impl fmt::Display for ClaimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClaimError::TooMany(n) => {
                write!(f, "claims: at most {MAX_CLAIMS} claims, not {n}")
            }
            ClaimError::Name(name) => write!(
                f,
                "claims: name {name:?} must be 1 to {MAX_NAME_LEN} characters of A-Z, a-z, \
                 0-9, '.', '_' and '-'"
            ),
            ClaimError::Value(name) => write!(
                f,
                "claims: value of {name:?} must be 1 to {MAX_VALUE_LEN} bytes of visible ASCII \
                 or inner spaces, without a comma (a header value with a comma reads as a list)"
            ),
        }
    }
}

/// The write rule, for the claims of one account or one key: at most [`MAX_CLAIMS`], each
/// name [`is_name`], each value [`is_value`]. The first bad claim is reported.
pub fn check<'a, I>(claims: I) -> Result<(), ClaimError>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut count: usize = 0;
    for (name, value) in claims {
        count = count.saturating_add(1);
        if !is_name(name) {
            return Err(ClaimError::Name(name.chars().take(MAX_NAME_LEN).collect()));
        }
        if !is_value(value) {
            return Err(ClaimError::Value(String::from(name)));
        }
    }
    if count > MAX_CLAIMS {
        return Err(ClaimError::TooMany(count));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comma_in_a_claim_value_is_refused_naming_the_claim() {
        let err = check([("plan", "pro"), ("team", "ml, ops")]).unwrap_err();
        assert_eq!(err, ClaimError::Value("team".into()));
        assert!(err.to_string().contains("\"team\""), "{err}");
        assert!(err.to_string().contains("comma"), "{err}");
    }

    #[test]
    fn claims_within_the_limits_are_accepted() {
        assert_eq!(check([("plan", "pro"), ("a.B_c-9", "x y")]), Ok(()));
        let long = ("n".repeat(MAX_NAME_LEN), "v".repeat(MAX_VALUE_LEN));
        assert_eq!(check([(long.0.as_str(), long.1.as_str())]), Ok(()));
        let max: Vec<_> = (0..MAX_CLAIMS).map(|i| (format!("c{i}"), "v")).collect();
        assert_eq!(check(max.iter().map(|(n, v)| (n.as_str(), *v))), Ok(()));
    }

    #[test]
    fn bad_names_values_and_counts_are_refused() {
        let too_many: Vec<_> = (0..=MAX_CLAIMS).map(|i| (format!("c{i}"), "v")).collect();
        assert_eq!(
            check(too_many.iter().map(|(n, v)| (n.as_str(), *v))),
            Err(ClaimError::TooMany(MAX_CLAIMS + 1))
        );
        let long_name = "n".repeat(MAX_NAME_LEN + 1);
        for name in ["", long_name.as_str(), "a:b", "a b", "plan,x"] {
            assert!(
                matches!(check([(name, "v")]), Err(ClaimError::Name(_))),
                "{name:?}"
            );
        }
        let long_value = "v".repeat(MAX_VALUE_LEN + 1);
        for value in [
            "",
            " pro",
            "pro ",
            "p\u{7f}",
            "\u{e9}",
            "a\tb",
            ",",
            long_value.as_str(),
        ] {
            assert_eq!(
                check([("plan", value)]),
                Err(ClaimError::Value("plan".into())),
                "{value:?}"
            );
        }
    }

    #[test]
    fn a_refused_name_is_shown_cut_to_the_name_limit() {
        let name = "!".repeat(1000);
        let Err(ClaimError::Name(shown)) = check([(name.as_str(), "v")]) else {
            panic!("not refused");
        };
        assert_eq!(shown.len(), MAX_NAME_LEN);
    }
}
