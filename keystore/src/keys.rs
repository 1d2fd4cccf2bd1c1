//! Key material, key ids and identifier rules.
//!
//! A raw API key is only ever held in memory long enough to hash it (or, for a freshly
//! created key, to return it once to the caller). Everything that is stored or logged uses
//! the key id: the lowercase hex SHA-256 of the raw key bytes, shortened to its first
//! [`LOG_PREFIX_LEN`] characters in logs.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// Prefix of every key minted by the store.
pub const KEY_PREFIX: &str = "kg_";
/// Number of random bytes in a minted key.
pub const KEY_RANDOM_BYTES: usize = 32;
/// Length of a key id (hex SHA-256).
pub const KEY_ID_LEN: usize = 64;
/// How many leading key-id characters appear in logs.
pub const LOG_PREFIX_LEN: usize = 12;
/// Length of a minted key: the prefix and 43 base64url characters.
pub const KEY_LEN: usize = 46;
/// Longest account id, user id or role.
pub const MAX_ID_LEN: usize = 128;
/// Shortest key an administrator may import (`user_key`), in bytes.
pub const MIN_IMPORTED_KEY_LEN: usize = 32;
/// Longest key an administrator may import (`user_key`), in bytes.
pub const MAX_IMPORTED_KEY_LEN: usize = 512;

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

/// The key id of a raw key: lowercase hex SHA-256 of its bytes.
pub fn key_id(raw_key: &str) -> String {
    let digest = Sha256::digest(raw_key.as_bytes());
    let mut out = String::with_capacity(KEY_ID_LEN);
    for byte in digest {
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// Whether `s` is a well-formed key id: exactly 64 lowercase hex characters.
pub fn is_key_id(s: &str) -> bool {
    s.len() == KEY_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The part of a key id that may appear in logs.
pub fn log_prefix(key_id: &str) -> &str {
    key_id.get(..LOG_PREFIX_LEN).unwrap_or(key_id)
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
/// (which is trimmed) unchanged. The error names the field and never echoes the key.
pub fn validate_imported_key(value: &str) -> Result<(), String> {
    if value.len() < MIN_IMPORTED_KEY_LEN {
        return Err(format!(
            "user_key is too short (at least {MIN_IMPORTED_KEY_LEN} bytes)"
        ));
    }
    if value.len() > MAX_IMPORTED_KEY_LEN {
        return Err(format!(
            "user_key is too long (at most {MAX_IMPORTED_KEY_LEN} bytes)"
        ));
    }
    if !value.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(
            "user_key may only contain visible ASCII characters (0x21 to 0x7e): \
                    no spaces, control characters or non-ASCII"
                .into(),
        );
    }
    Ok(())
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

    #[test]
    fn imported_key_rules() {
        assert!(validate_imported_key(&"a".repeat(32)).is_ok());
        assert!(validate_imported_key(&"a".repeat(512)).is_ok());
        let all_visible: String = (0x21u8..=0x7e).map(char::from).collect();
        assert!(validate_imported_key(&all_visible).is_ok());
        assert!(validate_imported_key(&generate_key().unwrap()).is_ok());
        for (bad, needle) in [
            (String::new(), "too short"),
            ("a".repeat(31), "too short"),
            ("a".repeat(513), "too long"),
            (format!("{} ", "a".repeat(32)), "visible ASCII"),
            (format!("{}\t", "a".repeat(32)), "visible ASCII"),
            (format!("{}\u{7f}", "a".repeat(32)), "visible ASCII"),
            (format!("{}é", "a".repeat(32)), "visible ASCII"),
        ] {
            let err = validate_imported_key(&bad).unwrap_err();
            assert!(err.contains("user_key") && err.contains(needle), "{err}");
            assert!(bad.is_empty() || !err.contains(&bad), "key echoed: {err}");
        }
    }
}
