//! Key material, key ids and identifier rules.
//!
//! A raw API key is only ever held in memory long enough to hash it (or, for a freshly
//! created key, to return it once to the caller). Everything that is stored or logged uses
//! the key id: the lowercase hex SHA-256 of the raw key bytes, shortened to its first
//! [`LOG_PREFIX_LEN`] characters in logs. The key id, its syntax and the key's form are the
//! store protocol's ([`keygate_protocol::key`]), the filter's too: re-exported here.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use keygate_protocol::key::KeyFault;

/// Prefix of every key minted by the store.
pub const KEY_PREFIX: &str = "kg_";
/// Number of random bytes in a minted key.
pub const KEY_RANDOM_BYTES: usize = 32;
pub use keygate_protocol::key::{is_key_id, key_id, KEY_ID_LEN};
/// How many leading key-id characters appear in logs (the protocol's short form).
pub const LOG_PREFIX_LEN: usize = keygate_protocol::key::SHORT_LEN;
/// Length of a minted key: the prefix and 43 base64url characters.
pub const KEY_LEN: usize = 46;
/// Longest account id, user id or role.
pub const MAX_ID_LEN: usize = 128;
/// Shortest key an administrator may import (`user_key`), in bytes.
pub const MIN_IMPORTED_KEY_LEN: usize = 32;
/// Longest key an administrator may import (`user_key`), in bytes: the longest key the
/// filter accepts.
pub const MAX_IMPORTED_KEY_LEN: usize = keygate_protocol::key::MAX_KEY_LEN;
/// Fewest bits of estimated entropy ([`estimated_entropy_bits`]) in a root key, a protocol
/// token or an imported key.
pub const MIN_ENTROPY_BITS: f64 = 128.0;
/// With `d` distinct characters, a secret counts for at most `DISTINCT_FACTOR * d` characters.
const DISTINCT_FACTOR: usize = 8;

/// The account that holds the root user; managed by the store's configuration only.
pub const SYSTEM_ACCOUNT: &str = "_system";
/// The root user's id.
pub const ROOT_USER: &str = "root";
/// The role that may do everything.
pub const ROLE_ROOT: &str = "root";
/// The role that administers one account.
pub const ROLE_ADMIN: &str = "admin";

/// Mints a new key: `kg_` followed by 32 OS-random bytes in unpadded base64url (43 chars).
pub fn generate_key() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; KEY_RANDOM_BYTES];
    getrandom::fill(&mut bytes)?;
    let mut key = String::with_capacity(KEY_LEN);
    key.push_str(KEY_PREFIX);
    URL_SAFE_NO_PAD.encode_string(bytes, &mut key);
    Ok(key)
}

/// The part of a key id that may appear in logs.
pub fn log_prefix(key_id: &str) -> &str {
    keygate_protocol::key::short(key_id)
}

/// Checks an account id, user id or role: 1 to 128 characters of `[A-Za-z0-9._-]`, and not
/// `.` or `..` (which would not survive URL path normalisation). `what` names the field in
/// the error message.
pub fn validate_id(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(format!(
            "{what} is too long ({} characters, at most {MAX_ID_LEN})",
            value.chars().count()
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(format!(
            "{what} may only contain the characters A-Z, a-z, 0-9, '.', '_' and '-'"
        ));
    }
    if value == "." || value == ".." {
        return Err(format!("{what} must not be '.' or '..'"));
    }
    Ok(())
}

/// Checks a key provided by an administrator (the `user_key` field): 32 to 512 bytes of
/// visible ASCII without spaces (0x21 to 0x7e), so that it survives being sent in a header
/// (which is trimmed) unchanged, and at least [`MIN_ENTROPY_BITS`] of estimated entropy
/// ([`check_entropy`]). The error names the field and never echoes the key.
pub fn validate_imported_key(value: &str) -> Result<(), String> {
    if value.len() < MIN_IMPORTED_KEY_LEN {
        return Err(format!(
            "user_key is too short (at least {MIN_IMPORTED_KEY_LEN} bytes)"
        ));
    }
    // The form every key must have, the filter's rule: at most 512 bytes of visible ASCII.
    match keygate_protocol::key::check(value.as_bytes()) {
        Err(KeyFault::TooLong) => {
            return Err(format!(
                "user_key is too long (at most {MAX_IMPORTED_KEY_LEN} bytes)"
            ))
        }
        Err(KeyFault::NotVisible | KeyFault::Empty) => {
            return Err(
                "user_key may only contain visible ASCII characters (0x21 to 0x7e): \
                    no spaces, control characters or non-ASCII"
                    .into(),
            )
        }
        Ok(()) => {}
    }
    check_entropy("user_key", value)
}

/// A simple, documented estimate of a secret's entropy in bits, meant to refuse short,
/// small-alphabet and trivially repetitive secrets (not to prove a secret random):
///
/// 1. the *pool* is the sum of the sizes of the character classes present: lowercase 26,
///    uppercase 26, digits 10, anything else 32 (the other visible ASCII characters);
/// 2. runs of one repeated character count for at most 2 (`aaaa` counts as `aa`);
/// 3. the *effective length* is the smallest of: the number of characters left after 2, the
///    shortest period of that string (`abcabcabc` has period 3), and 8 × the number of
///    distinct characters;
/// 4. the estimate is effective length × log2(pool).
///
/// `kg_` + 32 random bytes (base64url) scores about 290 bits, 32 random hex digits about 160,
/// `"a" × 64` about 5, `"0123456789abcdef" × 4` about 83.
pub fn estimated_entropy_bits(secret: &str) -> f64 {
    let collapsed = shorten_runs(secret.as_bytes());
    let mut seen = [false; 256];
    let mut pool = [false; 4];
    for &b in &collapsed {
        if let Some(s) = seen.get_mut(usize::from(b)) {
            *s = true;
        }
        let class = if b.is_ascii_lowercase() {
            0
        } else if b.is_ascii_uppercase() {
            1
        } else if b.is_ascii_digit() {
            2
        } else {
            3
        };
        if let Some(p) = pool.get_mut(class) {
            *p = true;
        }
    }
    let distinct = seen.iter().filter(|s| **s).count();
    let pool_size: u32 = [26, 26, 10, 32]
        .iter()
        .zip(pool)
        .filter_map(|(size, present)| present.then_some(*size))
        .sum();
    let effective = collapsed
        .len()
        .min(shortest_period(&collapsed))
        .min(DISTINCT_FACTOR.saturating_mul(distinct));
    // Both factors are small (≤ 512, ≤ 94): the conversions are exact.
    f64::from(u32::try_from(effective).unwrap_or(u32::MAX)) * f64::from(pool_size.max(1)).log2()
}

/// `s` with every run of one repeated byte longer than 2 shortened to 2 (`aaaab` → `aab`):
/// runs add next to nothing, but pairs are common in random strings.
fn shorten_runs(s: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(s.len());
    for &b in s {
        if !out.ends_with(&[b, b]) {
            out.push(b);
        }
    }
    out
}

/// The shortest period `p` of `s` (`s[i] == s[i + p]` for every `i`): `s.len()` minus the
/// length of its longest proper border (prefix that is also a suffix), by the KMP prefix
/// function.
fn shortest_period(s: &[u8]) -> usize {
    let mut border = vec![0usize; s.len()];
    let mut k = 0usize;
    for (i, &c) in s.iter().enumerate().skip(1) {
        while k > 0 && s.get(k) != Some(&c) {
            k = border.get(k.saturating_sub(1)).copied().unwrap_or(0);
        }
        if s.get(k) == Some(&c) {
            k = k.saturating_add(1);
        }
        if let Some(b) = border.get_mut(i) {
            *b = k;
        }
    }
    s.len().saturating_sub(border.last().copied().unwrap_or(0))
}

/// Refuses a secret (root key, protocol token, imported key) with fewer than
/// [`MIN_ENTROPY_BITS`] of [`estimated_entropy_bits`]. `what` names the option or field; the
/// message never echoes the secret.
pub fn check_entropy(what: &str, secret: &str) -> Result<(), String> {
    let bits = estimated_entropy_bits(secret);
    if bits < MIN_ENTROPY_BITS {
        return Err(format!(
            "{what} is too weak: about {bits:.0} bits of estimated entropy, at least \
             {MIN_ENTROPY_BITS:.0} required (use a generated one, e.g. `openssl rand -hex 32`)"
        ));
    }
    Ok(())
}

/// Checks a secret that is sent in an HTTP header (root key, protocol token): 1 to 512 bytes
/// of visible ASCII (0x21 to 0x7e), and [`check_entropy`]. `what` names its source.
pub fn validate_secret(what: &str, secret: &str) -> Result<(), String> {
    if secret.len() > MAX_IMPORTED_KEY_LEN {
        return Err(format!(
            "{what} is too long (at most {MAX_IMPORTED_KEY_LEN} bytes)"
        ));
    }
    if !secret.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(format!(
            "{what} may only contain visible ASCII characters (0x21 to 0x7e)"
        ));
    }
    check_entropy(what, secret)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;

    #[test]
    fn key_id_is_lowercase_hex_sha256() {
        // SHA-256("abc"), FIPS 180-2 test vector.
        assert_eq!(
            key_id("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(is_key_id(&key_id("anything")));
    }

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        assert_ne!(a, b);
        for key in [&a, &b] {
            assert!(key.starts_with("kg_"), "{key}");
            assert_eq!(key.len(), KEY_LEN, "{key}");
            let body = &key[3..];
            assert!(body
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
            assert_eq!(URL_SAFE_NO_PAD.decode(body).unwrap().len(), 32);
        }
    }

    #[test]
    fn key_id_syntax() {
        assert!(is_key_id(&"a".repeat(64)));
        assert!(is_key_id(&"0123456789abcdef".repeat(4)));
        assert!(!is_key_id(&"A".repeat(64)));
        assert!(!is_key_id(&"a".repeat(63)));
        assert!(!is_key_id(&"a".repeat(65)));
        assert!(!is_key_id(&"g".repeat(64)));
        assert!(!is_key_id(""));
    }

    #[test]
    fn log_prefix_is_twelve_chars() {
        let id = key_id("k");
        assert_eq!(log_prefix(&id), &id[..12]);
        assert_eq!(log_prefix("short"), "short");
    }

    #[test]
    fn id_rules() {
        assert!(validate_id("user_id", "alice").is_ok());
        assert!(validate_id("user_id", "A.b_c-9").is_ok());
        assert!(validate_id("user_id", &"x".repeat(128)).is_ok());
        assert!(validate_id("user_id", &"x".repeat(129))
            .unwrap_err()
            .contains("too long"));
        assert!(validate_id("user_id", "").unwrap_err().contains("empty"));
        for bad in ["a b", "a/b", "é", "a:b", "a%2f", "a\n"] {
            assert!(validate_id("user_id", bad)
                .unwrap_err()
                .contains("may only contain"));
        }
        assert!(validate_id("user_id", "..").is_err());
        assert!(validate_id("user_id", ".").is_err());
    }

    /// 32 random-looking characters from three classes (lower, upper, digits): ~190 bits.
    const STRONG_32: &str = "Xq7vR2mK9pLw4ZtB8nYc3HsJ6dFg1Qe5";

    #[test]
    fn imported_key_rules() {
        assert!(validate_imported_key(STRONG_32).is_ok());
        let long: String = STRONG_32.repeat(16).chars().rev().collect();
        assert!(validate_imported_key(&format!("{long}x")[..512]).is_ok());
        let all_visible: String = (0x21u8..=0x7e).map(char::from).collect();
        assert!(validate_imported_key(&all_visible).is_ok());
        assert!(validate_imported_key(&generate_key().unwrap()).is_ok());
        for (bad, needle) in [
            (String::new(), "too short"),
            (STRONG_32[..31].to_owned(), "too short"),
            (STRONG_32.repeat(17), "too long"),
            (format!("{STRONG_32} "), "visible ASCII"),
            (format!("{STRONG_32}\t"), "visible ASCII"),
            (format!("{STRONG_32}\u{7f}"), "visible ASCII"),
            (format!("{STRONG_32}é"), "visible ASCII"),
            ("a".repeat(32), "too weak"),
            ("a".repeat(512), "too weak"),
        ] {
            let err = validate_imported_key(&bad).unwrap_err();
            assert!(err.contains("user_key") && err.contains(needle), "{err}");
            assert!(bad.is_empty() || !err.contains(&bad), "key echoed: {err}");
        }
    }

    #[test]
    fn generated_keys_pass_the_entropy_rule() {
        for _ in 0..1000 {
            let key = generate_key().unwrap();
            let bits = estimated_entropy_bits(&key);
            assert!(bits >= MIN_ENTROPY_BITS, "{bits} bits for a generated key");
        }
    }

    #[test]
    fn random_hex_of_128_bits_passes() {
        // 16 random bytes as 32 hex digits: exactly 128 bits of randomness.
        for _ in 0..1000 {
            let mut bytes = [0u8; 16];
            getrandom::fill(&mut bytes).unwrap();
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            assert!(check_entropy("k", &hex).is_ok(), "{hex}");
        }
    }

    #[test]
    fn weak_secrets_are_refused() {
        for weak in [
            "a".repeat(64),
            "ab".repeat(32),
            "abcd".repeat(16),
            "0123456789abcdef".repeat(4),
            "aabbccdd".repeat(8),
            format!("LEGACY3-{}", "z".repeat(32)),
            "a-new-root-key".to_owned(),
            // Long, but from two characters.
            "abbabaabbaababbabaababbaabbabaab".repeat(2),
            // 38 random decimal digits: about 126 bits of estimate (a decimal key needs ~45).
            "73829104658273910465827391046582739104".to_owned(),
        ] {
            let err = check_entropy("--root-key-file", &weak)
                .err()
                .unwrap_or_else(|| {
                    panic!("accepted: {weak} ({} bits)", estimated_entropy_bits(&weak))
                });
            assert!(
                err.contains("--root-key-file") && err.contains("too weak"),
                "{err}"
            );
            assert!(!err.contains(&weak), "secret echoed: {err}");
        }
    }

    #[test]
    fn entropy_estimate_figures() {
        let approx = |s: &str, want: f64| {
            let got = estimated_entropy_bits(s);
            assert!((got - want).abs() < 0.5, "{s}: {got}, want {want}");
        };
        // 2 effective characters (a run counts for 2, period 1) of a 26-character pool.
        approx(&"a".repeat(64), 26f64.log2());
        approx(&format!("b{}", "a".repeat(63)), 3.0 * 26f64.log2());
        // Period 16 of a 36-character pool.
        approx(&"0123456789abcdef".repeat(4), 16.0 * 36f64.log2());
        // 32 characters of a 62-character pool.
        approx(STRONG_32, 32.0 * 62f64.log2());
        assert_eq!(estimated_entropy_bits(""), 0.0);
    }

    #[test]
    fn runs_count_for_two() {
        assert_eq!(shorten_runs(b"aaaabccd"), b"aabccd");
        assert_eq!(shorten_runs(b""), b"");
    }

    #[test]
    fn shortest_periods() {
        assert_eq!(shortest_period(b""), 0);
        assert_eq!(shortest_period(b"a"), 1);
        assert_eq!(shortest_period(b"abcabcab"), 3);
        assert_eq!(shortest_period(b"abcd"), 4);
        assert_eq!(shortest_period(b"abab"), 2);
        assert_eq!(shortest_period(b"aabaa"), 3);
    }

    #[test]
    fn secrets_sent_in_headers() {
        assert!(validate_secret("KEYSTORE_PROTOCOL_TOKEN", STRONG_32).is_ok());
        let e = validate_secret("KEYSTORE_PROTOCOL_TOKEN", &format!("{STRONG_32} x")).unwrap_err();
        assert!(
            e.contains("KEYSTORE_PROTOCOL_TOKEN") && e.contains("visible ASCII"),
            "{e}"
        );
        let e = validate_secret("--protocol-token-file", &STRONG_32.repeat(17)).unwrap_err();
        assert!(e.contains("too long"), "{e}");
    }
}
