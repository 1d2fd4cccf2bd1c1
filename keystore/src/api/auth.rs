//! Who calls the admin API: the [`Caller`] extractor (`FromRequestParts`), which counts the
//! request, reads the admin key, looks it up and refuses keys that may not call the admin API;
//! and the checks of what a caller may ask (roles, imports, the `_system` account).
//!
//! Invariant: the admin key is read by the filter's rules (`src/key.rs`, `extract` with the
//! default key sources), so the key store and the filter never disagree on which key a
//! request carries:
//! - the sources, in order: `x-api-key`, then `authorization` after the prefix `Bearer `
//!   (compared ignoring ASCII case, the one space included); an `authorization` of another
//!   scheme (`Basic ...`) holds no key;
//! - the first source present decides: an empty, malformed or repeated key there is refused
//!   (401) even when the next source holds a good one;
//! - a source given more than once (two `x-api-key` headers, two `Bearer` authorizations) is
//!   refused, never "the first one";
//! - spaces and tabs around the key are trimmed, nothing else; the key is 1 to
//!   [`MAX_KEY_LEN`](keygate_protocol::key::MAX_KEY_LEN) bytes of visible ASCII (0x21..=0x7e).

use super::body::check_id;
use super::{refusal, AppState};
use crate::authority::{Cap, Caps, Grant, Need, Operation, Principal, Subject};
use crate::error::ApiError;
use crate::keys::{key_id, ROLE_ROOT, SYSTEM_ACCOUNT};
use crate::metrics::inc;
use crate::store::{Actor, Identity};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use keygate_protocol::key::{check, in_header, KeyFault};

/// The authenticated caller of an admin request: the key (`x-api-key` or `Authorization:
/// Bearer`) and what it may do. Any active key authenticates, whatever its capabilities; the
/// handlers then ask [`crate::authority`] whether it may do what it asks.
pub struct Caller {
    /// The calling key's id (the audit's acting key).
    pub key_id: String,
    pub identity: Identity,
    /// Its capabilities (within what its role allows; every one for root).
    pub capabilities: Caps,
    /// min(its expiry, its user's).
    pub expires_at: Option<i64>,
}

impl Caller {
    pub(super) fn is_root(&self) -> bool {
        self.identity.role == ROLE_ROOT && self.identity.account_id == SYSTEM_ACCOUNT
    }

    /// What this key may hand on.
    pub fn grant(&self) -> Grant {
        Grant {
            caps: if self.is_root() {
                Caps::ALL
            } else {
                self.capabilities
            },
            expires_at: self.expires_at,
            root: self.is_root(),
        }
    }

    /// The caller as recorded in the audit trail.
    pub(super) fn actor(&self) -> Actor {
        Actor {
            account_id: self.identity.account_id.clone(),
            user_id: self.identity.user_id.clone(),
            key_ref: Some(crate::store::key_ref(&self.key_id).to_owned()),
        }
    }

    /// The actor and grant the store's jobs take.
    pub(super) fn by(&self) -> (Actor, Grant) {
        (self.actor(), self.grant())
    }

    /// Whether this key may perform `op` on `account` (and `user`): see [`Operation::require`].
    pub(super) fn require(
        &self,
        op: Operation,
        account: &str,
        user: Option<&str>,
    ) -> Result<(), ApiError> {
        let grant = self.grant();
        let principal = Principal {
            account: &self.identity.account_id,
            user: &self.identity.user_id,
            grant: &grant,
        };
        op.require(&principal, &Subject { account, user })
            .map_err(ApiError::from)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    /// Counts the admin request and authenticates it by `x-api-key` or `Authorization: Bearer`.
    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Caller, ApiError> {
        authenticate(st, &parts.headers).await
    }
}

/// Counts the admin request and authenticates it by the key [`presented_key`] reads.
/// What it learns (the caller, or why there is none) goes to [`refusal::note`], for the
/// record of a refused call.
async fn authenticate(st: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    inc(&st.metrics.admin_requests);
    let unauthorized = |reason: &'static str| {
        refusal::note(None, reason);
        ApiError::Unauthorized
    };
    let raw = presented_key(headers).map_err(|refused| unauthorized(refused.reason()))?;
    let key = match st.store.authenticate(key_id(raw)).await? {
        Some(key) => key,
        None => return Err(unauthorized("unknown, revoked, disabled or expired key")),
    };
    let caller = Caller {
        key_id: key.key_id,
        identity: key.identity,
        capabilities: key.capabilities,
        expires_at: key.expires_at,
    };
    refusal::note(Some(caller.actor()), "");
    if !caller.is_root()
        && !caller.capabilities.has(Cap::OwnKeys)
        && !caller.capabilities.has(Cap::AccountAdmin)
    {
        return Err(ApiError::Forbidden(
            "forbidden: this key may not call the admin API (it has neither own_keys nor \
             account_admin; a key in its rotation grace keeps traffic only)"
                .into(),
            Need::Capability(Cap::OwnKeys),
        ));
    }
    Ok(caller)
}

/// Where the admin key is read, in order: the filter's default key sources. A header with a
/// prefix holds a key only after it (compared ignoring ASCII case).
const KEY_SOURCES: [(&str, Option<&str>); 2] =
    [("x-api-key", None), ("authorization", Some("Bearer "))];

/// Why a request holds no admin key to look up (the filter's `KeyError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyRefusal {
    /// No source holds a key.
    Missing,
    /// The deciding source holds an empty key.
    Empty,
    /// Longer than [`MAX_KEY_LEN`](keygate_protocol::key::MAX_KEY_LEN).
    TooLong,
    /// A byte outside visible ASCII (0x21..=0x7e): inner spaces, control characters, non-ASCII.
    Invalid,
    /// The deciding source was given more than once.
    Duplicate,
}

impl KeyRefusal {
    /// The reason recorded with the refused call.
    fn reason(self) -> &'static str {
        match self {
            KeyRefusal::Missing => "no key",
            KeyRefusal::Empty => "empty key",
            KeyRefusal::TooLong => "key too long",
            KeyRefusal::Invalid => "key not visible ASCII",
            KeyRefusal::Duplicate => "key given more than once",
        }
    }
}

/// The admin key a request presents, read by the filter's rules (`src/request/key.rs`,
/// `extract` with the default sources; the header rule and the key's form are the
/// protocol's): the first source present decides, so a malformed or repeated key there is
/// refused even when the next source holds one.
fn presented_key(headers: &HeaderMap) -> Result<&str, KeyRefusal> {
    for (name, prefix) in KEY_SOURCES {
        let mut values = headers
            .get_all(name)
            .iter()
            .filter_map(|v| in_header(v.as_bytes(), prefix));
        let Some(first) = values.next() else { continue };
        if values.next().is_some() {
            return Err(KeyRefusal::Duplicate);
        }
        return validate(first);
    }
    Err(KeyRefusal::Missing)
}

/// A key's form, by the protocol's rule ([`check`]): not empty, at most [`MAX_KEY_LEN`](keygate_protocol::key::MAX_KEY_LEN) bytes,
/// visible ASCII only.
fn validate(key: &[u8]) -> Result<&str, KeyRefusal> {
    check(key).map_err(|fault| match fault {
        KeyFault::Empty => KeyRefusal::Empty,
        KeyFault::TooLong => KeyRefusal::TooLong,
        KeyFault::NotVisible => KeyRefusal::Invalid,
    })?;
    std::str::from_utf8(key).map_err(|_| KeyRefusal::Invalid)
}

/// The canonical form of a role `caller` asks to grant, if it may (see
/// [`RoleRegistry::grantable`]).
pub(super) fn check_role(st: &AppState, caller: &Caller, role: &str) -> Result<String, ApiError> {
    check_id("role", role)?;
    st.roles
        .grantable(&caller.grant(), role)
        .map_err(ApiError::from)
}

/// The `_system` account (home of the root key) is managed by the store's configuration.
pub(super) fn check_not_system(account: &str) -> Result<(), ApiError> {
    if account == SYSTEM_ACCOUNT {
        return Err(ApiError::Forbidden(
            format!("forbidden: account {SYSTEM_ACCOUNT} is managed by the keystore configuration"),
            Need::Nothing,
        ));
    }
    Ok(())
}

/// An import (`user_key` given) needs the import authority: root or an account admin.
pub(super) fn check_import(
    caller: &Caller,
    user_key: Option<&String>,
    account: &str,
    user: &str,
) -> Result<(), ApiError> {
    match user_key {
        Some(_) => caller.require(Operation::Import, account, Some(user)),
        None => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use keygate_protocol::key::MAX_KEY_LEN;

    /// Headers holding these (name, raw value) pairs, in order.
    fn headers(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_bytes(value).unwrap());
        }
        map
    }

    fn read(pairs: &[(&'static str, &[u8])]) -> Result<String, KeyRefusal> {
        presented_key(&headers(pairs)).map(str::to_owned)
    }

    #[test]
    fn x_api_key_is_read_as_it_is() {
        assert_eq!(read(&[("x-api-key", b"kg_abc")]), Ok("kg_abc".into()));
    }

    #[test]
    fn authorization_holds_a_key_after_bearer_in_any_case() {
        for value in [&b"Bearer kg_abc"[..], b"bearer kg_abc", b"BEARER kg_abc"] {
            assert_eq!(read(&[("authorization", value)]), Ok("kg_abc".into()));
        }
    }

    #[test]
    fn x_api_key_decides_when_both_are_present_even_when_it_is_bad() {
        let good = ("authorization", &b"Bearer kg_good"[..]);
        assert_eq!(read(&[("x-api-key", b"kg_abc"), good]), Ok("kg_abc".into()));
        assert_eq!(read(&[("x-api-key", b""), good]), Err(KeyRefusal::Empty));
        assert_eq!(
            read(&[("x-api-key", b"a b"), good]),
            Err(KeyRefusal::Invalid)
        );
    }

    #[test]
    fn another_scheme_or_a_scheme_without_its_space_holds_no_key() {
        for value in [
            &b"Basic kg_abc"[..],
            b"Bearer",
            b"Bearer\tkg_abc",
            b"Bearerkg_abc",
        ] {
            assert_eq!(read(&[("authorization", value)]), Err(KeyRefusal::Missing));
        }
    }

    #[test]
    fn no_source_is_a_missing_key() {
        assert_eq!(read(&[("x-other", b"kg_abc")]), Err(KeyRefusal::Missing));
        assert_eq!(KeyRefusal::Missing.reason(), "no key");
    }

    #[test]
    fn a_source_given_twice_is_refused_not_its_first_value_taken() {
        let twice = [("x-api-key", &b"kg_abc"[..]), ("x-api-key", b"kg_abc")];
        assert_eq!(read(&twice), Err(KeyRefusal::Duplicate));
        let bearers = [
            ("authorization", &b"Bearer kg_abc"[..]),
            ("authorization", b"Bearer kg_other"),
        ];
        assert_eq!(read(&bearers), Err(KeyRefusal::Duplicate));
    }

    #[test]
    fn an_authorization_of_another_scheme_beside_a_bearer_one_leaves_the_bearer_key() {
        let pairs = [
            ("authorization", &b"Basic dXNlcjpwdw=="[..]),
            ("authorization", b"Bearer kg_abc"),
        ];
        assert_eq!(read(&pairs), Ok("kg_abc".into()));
    }

    #[test]
    fn spaces_and_tabs_around_the_key_are_trimmed() {
        assert_eq!(read(&[("x-api-key", b" \tkg_abc\t ")]), Ok("kg_abc".into()));
        assert_eq!(
            read(&[("authorization", b"Bearer  \tkg_abc ")]),
            Ok("kg_abc".into())
        );
    }

    #[test]
    fn an_empty_key_is_refused() {
        assert_eq!(read(&[("x-api-key", b"")]), Err(KeyRefusal::Empty));
        assert_eq!(read(&[("x-api-key", b" \t ")]), Err(KeyRefusal::Empty));
        assert_eq!(
            read(&[("authorization", b"Bearer ")]),
            Err(KeyRefusal::Empty)
        );
        assert_eq!(
            read(&[("authorization", b"Bearer \t")]),
            Err(KeyRefusal::Empty)
        );
    }

    #[test]
    fn a_key_of_512_bytes_is_read_and_one_of_513_refused() {
        let longest = vec![b'k'; MAX_KEY_LEN];
        assert_eq!(read(&[("x-api-key", &longest)]).map(|k| k.len()), Ok(512));
        let longer = vec![b'k'; MAX_KEY_LEN + 1];
        assert_eq!(read(&[("x-api-key", &longer)]), Err(KeyRefusal::TooLong));
    }

    #[test]
    fn a_key_with_an_inner_space_a_tab_or_a_byte_outside_ascii_is_refused() {
        for value in [&b"kg_a b"[..], b"kg_a\tb", b"kg_\xc3\xa9", b"kg_\x80"] {
            assert_eq!(read(&[("x-api-key", value)]), Err(KeyRefusal::Invalid));
        }
    }
}
