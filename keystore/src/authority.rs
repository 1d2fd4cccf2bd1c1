//! Authority: what a key may do, and what it may hand on. Pure (no I/O): the admin API's
//! handlers and the store's jobs ask this module; they compare nothing themselves.
//!
//! Invariant: **a key never yields a key with more than it has.** Every key carries a
//! [`Grant`]: its [`Caps`] (capabilities), its expiry and (set by root only) its claims. A key
//! made by a call (create, rotate, import, a user's first key) gets, by [`derive`]:
//! - capabilities = asked (default: all) ∩ the calling key's ∩ the replaced key's (on a
//!   rotation); asking for more, or for what the target user's role does not allow
//!   ([`role_allows`]), is refused naming what is missing. The role is applied again whenever
//!   the key is used ([`effective`]): a demotion takes `account_admin` away at once, and a
//!   promotion gives it only to keys that were given it by a key that had it;
//! - expiry = min(asked, the calling key's expiry (unless root), the target user's expiry);
//!   without an asked expiry the cap applies silently; an explicit later one is refused;
//! - claims: only root sets them; a rotation carries the replaced key's unchanged; nothing
//!   else gets any.
//!
//! A key kept alive by a rotation's grace keeps only [`Cap::Traffic`] ([`in_grace`]).
//!
//! Which capability each admin operation needs is [`Operation::require`]; which roles a caller
//! may grant is [`RoleRegistry::grantable`].
//!
//! Scoped keys (a key limited to some paths or scopes, as Unkey's permissions) fit as one
//! more field of [`Grant`] and [`Ask`] with the same subset rule in [`derive`] (asked ∩ the
//! caller's ∩ the replaced key's), and one more column next to `keys.capabilities`.

use crate::keys::ROLE_ROOT;
use crate::store::Claims;
use std::fmt;

/// One capability of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// The key-store lookup answers it: the proxy admits it.
    Traffic,
    /// List, create, rotate and revoke its own user's keys.
    OwnKeys,
    /// Administer its account (users, roles, any user's keys, the audit); only for users whose
    /// role is `admin`.
    AccountAdmin,
}

impl Cap {
    /// Every capability, in the order they are listed.
    pub const ALL: [Cap; 3] = [Cap::Traffic, Cap::OwnKeys, Cap::AccountAdmin];

    /// The name used in the API and in the database.
    pub fn name(self) -> &'static str {
        match self {
            Cap::Traffic => "traffic",
            Cap::OwnKeys => "own_keys",
            Cap::AccountAdmin => "account_admin",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Cap::Traffic => 1,
            Cap::OwnKeys => 2,
            Cap::AccountAdmin => 4,
        }
    }
}

/// A set of capabilities.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Caps(u8);

impl Caps {
    pub const NONE: Caps = Caps(0);
    pub const ALL: Caps = Caps(7);

    pub fn of(caps: &[Cap]) -> Caps {
        Caps(caps.iter().fold(0, |acc, c| acc | c.bit()))
    }

    pub fn has(self, cap: Cap) -> bool {
        self.0 & cap.bit() != 0
    }

    pub fn and(self, other: Caps) -> Caps {
        Caps(self.0 & other.0)
    }

    pub fn is_subset_of(self, other: Caps) -> bool {
        self.0 & !other.0 == 0
    }

    /// The first capability of `self` that `other` lacks.
    pub fn first_missing_in(self, other: Caps) -> Option<Cap> {
        Cap::ALL
            .into_iter()
            .find(|c| self.has(*c) && !other.has(*c))
    }

    /// The names, in [`Cap::ALL`] order.
    pub fn names(self) -> Vec<&'static str> {
        Cap::ALL
            .into_iter()
            .filter(|c| self.has(*c))
            .map(Cap::name)
            .collect()
    }

    /// Parses capability names (unknown or empty: an error naming the known ones).
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Caps, String> {
        let mut caps = Caps::NONE;
        for name in names {
            let name = name.as_ref();
            let cap = Cap::ALL
                .into_iter()
                .find(|c| c.name() == name)
                .ok_or_else(|| {
                    format!(
                        "capabilities: unknown capability {name:?} (known: {})",
                        Caps::ALL.names().join(", ")
                    )
                })?;
            caps = Caps(caps.0 | cap.bit());
        }
        if caps == Caps::NONE {
            return Err(format!(
                "capabilities must not be empty (known: {})",
                Caps::ALL.names().join(", ")
            ));
        }
        Ok(caps)
    }

    /// As stored in `keys.capabilities`: the names joined by commas.
    pub fn to_text(self) -> String {
        self.names().join(",")
    }

    /// A stored `keys.capabilities` value; `None` (a key from an older schema) is everything,
    /// so that with [`role_allows`] it means "what the role allows". Unknown names are
    /// dropped (a newer keystore's capability gives nothing here).
    pub fn from_stored(text: Option<&str>) -> Caps {
        match text {
            None => Caps::ALL,
            Some(t) => Caps::of(
                &t.split(',')
                    .filter_map(|n| Cap::ALL.into_iter().find(|c| c.name() == n))
                    .collect::<Vec<_>>(),
            ),
        }
    }
}

impl fmt::Debug for Caps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Caps[{}]", self.to_text())
    }
}

/// What a role allows a key to carry: root and admin everything; any other role traffic and
/// its own keys.
pub fn role_allows(role: &str) -> Caps {
    if role == ROLE_ROOT || role == crate::keys::ROLE_ADMIN {
        Caps::ALL
    } else {
        Caps::of(&[Cap::Traffic, Cap::OwnKeys])
    }
}

/// The capabilities a stored key really has: its own, within what its user's role allows.
pub fn effective(stored: Option<&str>, role: &str) -> Caps {
    Caps::from_stored(stored).and(role_allows(role))
}

/// What a key kept alive by a rotation's grace keeps: traffic only (if it had it).
pub fn in_grace(caps: Caps) -> Caps {
    caps.and(Caps::of(&[Cap::Traffic]))
}

/// The authority of the key making a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub caps: Caps,
    /// The key's expiry (capped at its user's): what it can hand on at most.
    pub expires_at: Option<i64>,
    /// The root key: every power, no expiry cap, may set claims.
    pub root: bool,
}

/// A refusal: a 403 (a capability or role is missing) or a 400 (the request asks for what
/// cannot be given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 403: the message and what the key lacks.
    Forbidden(String, Need),
    Invalid(String),
}

/// What a refused key lacks: a 403 names it (`missing_capability` or `required_role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A capability (in the account called upon).
    Capability(Cap),
    /// A role: `root` for what only the root key may do.
    Role(&'static str),
    /// Nothing any key could have (the `_system` account is the configuration's).
    Nothing,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Forbidden(m, _) | Refusal::Invalid(m) => f.write_str(m),
        }
    }
}

fn missing(cap: Cap, why: &str) -> Refusal {
    Refusal::Forbidden(
        format!(
            "forbidden: this key lacks the capability {} ({why})",
            cap.name()
        ),
        Need::Capability(cap),
    )
}

fn root_only(what: &str) -> Refusal {
    Refusal::Forbidden(
        format!("forbidden: only the root key may {what}"),
        Need::Role(ROLE_ROOT),
    )
}

/// An admin operation, as far as authority goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Create or revoke an account, set account claims, read the whole audit: root only.
    RootOnly(&'static str),
    /// Administer an account: users, roles, `PATCH` of any key, the account's audit.
    AccountAdmin,
    /// List, create, rotate or revoke a user's keys: its own (`own_keys`) or, in its account,
    /// anyone's (`account_admin`).
    UserKeys,
    /// Import a key value (`user_key`): root and account admins only.
    Import,
}

/// Who is called upon: the account (and user) in the path.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub account: &'a str,
    pub user: Option<&'a str>,
}

/// The caller's identity as authority needs it.
#[derive(Debug, Clone, Copy)]
pub struct Principal<'a> {
    pub account: &'a str,
    pub user: &'a str,
    pub grant: &'a Grant,
}

impl Operation {
    /// Whether `caller` may perform this operation on `subject`.
    pub fn require(self, caller: &Principal<'_>, subject: &Subject<'_>) -> Result<(), Refusal> {
        if caller.grant.root {
            return Ok(());
        }
        let caps = caller.grant.caps;
        let same_account = caller.account == subject.account;
        let admin = same_account && caps.has(Cap::AccountAdmin);
        match self {
            Operation::RootOnly(what) => Err(root_only(what)),
            Operation::AccountAdmin | Operation::Import if admin => Ok(()),
            Operation::AccountAdmin => Err(if same_account {
                missing(Cap::AccountAdmin, "administering the account")
            } else {
                Refusal::Forbidden(
                    format!(
                        "forbidden: this key is not an administrator of account {} (it needs \
                         the capability account_admin in that account; its own is {})",
                        subject.account, caller.account
                    ),
                    Need::Capability(Cap::AccountAdmin),
                )
            }),
            Operation::Import => Err(Refusal::Forbidden(
                "forbidden: only root and account admins (capability account_admin) may \
                 import a key value (user_key)"
                    .into(),
                Need::Capability(Cap::AccountAdmin),
            )),
            Operation::UserKeys if admin => Ok(()),
            Operation::UserKeys => {
                let own = same_account && subject.user == Some(caller.user);
                match (own, caps.has(Cap::OwnKeys)) {
                    (true, true) => Ok(()),
                    (true, false) => Err(missing(Cap::OwnKeys, "managing its own keys")),
                    (false, _) => Err(Refusal::Forbidden(
                        "forbidden: only this user's own keys (own_keys) or an administrator \
                         of the account (account_admin) may do that"
                            .into(),
                        Need::Capability(Cap::AccountAdmin),
                    )),
                }
            }
        }
    }
}

/// What a call asks for the new key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ask {
    /// `None`: as much as may be given.
    pub caps: Option<Caps>,
    /// `None`: as late as may be given (no expiry, unless capped).
    pub expires_at: Option<i64>,
    pub claims: Option<Claims>,
}

/// The user the new key is for.
#[derive(Debug, Clone, Copy)]
pub struct TargetUser<'a> {
    pub role: &'a str,
    pub expires_at: Option<i64>,
}

/// The key a rotation replaces.
#[derive(Debug, Clone)]
pub struct Replaced {
    pub caps: Caps,
    pub claims: Option<Claims>,
}

/// The new key's grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGrant {
    pub caps: Caps,
    pub expires_at: Option<i64>,
    pub claims: Option<Claims>,
}

/// The grant of a key made by `caller` for `user` (replacing `replaced`, on a rotation), as
/// `ask` asks; see the module doc for the rule.
pub fn derive(
    caller: &Grant,
    user: TargetUser<'_>,
    replaced: Option<&Replaced>,
    ask: &Ask,
) -> Result<NewGrant, Refusal> {
    let caps = derive_caps(caller, user.role, replaced.map(|r| r.caps), ask.caps)?;
    let expires_at = cap_expiry(caller, user.expires_at, Some(ask.expires_at))?;
    let claims = match (replaced, &ask.claims) {
        (Some(_), Some(_)) => {
            return Err(Refusal::Invalid(
                "claims: a rotation carries the replaced key's claims; change them with PATCH"
                    .into(),
            ))
        }
        (Some(r), None) => r.claims.clone(),
        (None, Some(_)) if !caller.root => return Err(root_only("set claims")),
        (None, asked) => asked.clone(),
    };
    Ok(NewGrant {
        caps,
        expires_at,
        claims,
    })
}

fn derive_caps(
    caller: &Grant,
    role: &str,
    replaced: Option<Caps>,
    asked: Option<Caps>,
) -> Result<Caps, Refusal> {
    let caller_caps = if caller.root { Caps::ALL } else { caller.caps };
    let allowed = role_allows(role);
    let ceiling = replaced.unwrap_or(Caps::ALL);
    match asked {
        None => Ok(caller_caps.and(ceiling)),
        Some(asked) => {
            if let Some(cap) = asked.first_missing_in(caller_caps) {
                return Err(missing(cap, "a key can only hand on what it has"));
            }
            if let Some(cap) = asked.first_missing_in(allowed) {
                return Err(Refusal::Invalid(format!(
                    "capabilities: role {role} does not allow {} (only admins administer the account)",
                    cap.name()
                )));
            }
            if let Some(cap) = asked.first_missing_in(ceiling) {
                return Err(Refusal::Forbidden(
                    format!(
                        "forbidden: the key being replaced lacks the capability {}; a rotation \
                         never adds capabilities",
                        cap.name()
                    ),
                    Need::Capability(cap),
                ));
            }
            Ok(asked)
        }
    }
}

/// The latest expiry `caller` may give a key of a user expiring at `user_expiry`.
pub fn expiry_cap(caller: &Grant, user_expiry: Option<i64>) -> Option<i64> {
    let caller_cap = if caller.root { None } else { caller.expires_at };
    match (caller_cap, user_expiry) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The expiry given for `asked` (`None`: not asked; `Some(None)`: no expiry asked, as in a
/// `PATCH` with `null`): min(asked, [`expiry_cap`]); an explicit later time is refused.
pub fn cap_expiry(
    caller: &Grant,
    user_expiry: Option<i64>,
    asked: Option<Option<i64>>,
) -> Result<Option<i64>, Refusal> {
    let cap = expiry_cap(caller, user_expiry);
    match (asked.flatten(), cap) {
        (Some(at), Some(cap)) if at > cap => Err(Refusal::Invalid(format!(
            "expires_at is later than this key may give ({}): a key never outlives the key \
             that made it or its user; leave expires_at out to get the latest allowed",
            crate::store::rfc3339(cap)
        ))),
        (Some(at), _) => Ok(Some(at)),
        (None, cap) => Ok(cap),
    }
}

/// A user's new expiry set by `caller` (`own`: the caller's own user) when it was `current`:
/// capped like a key's ([`cap_expiry`]), and never later than `current` for one's own user.
pub fn user_expiry(
    caller: &Grant,
    own: bool,
    current: Option<i64>,
    asked: Option<i64>,
) -> Result<Option<i64>, Refusal> {
    let new = cap_expiry(caller, None, Some(asked))?;
    let later = match (new, current) {
        (None, Some(_)) => true,
        (Some(n), Some(c)) => n > c,
        (_, None) => false,
    };
    if own && later && !caller.root {
        return Err(Refusal::Forbidden(
            "forbidden: a user can never extend their own expiry (only root may)".into(),
            Need::Role(ROLE_ROOT),
        ));
    }
    Ok(new)
}

/// The operator's role registry: the roles an account admin may grant, and those only root
/// may grant. Names are canonical (ASCII lowercase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleRegistry {
    account: Vec<String>,
    operator: Vec<String>,
}

/// The roles an account admin may grant unless configured otherwise.
pub const DEFAULT_ACCOUNT_ROLES: [&str; 3] = ["admin", "member", "reader"];

impl Default for RoleRegistry {
    fn default() -> RoleRegistry {
        RoleRegistry {
            account: DEFAULT_ACCOUNT_ROLES.map(str::to_owned).to_vec(),
            operator: Vec::new(),
        }
    }
}

/// A role name in canonical form: ASCII lowercase.
pub fn canonical_role(role: &str) -> String {
    role.to_ascii_lowercase()
}

impl RoleRegistry {
    /// A registry from the two lists (canonicalised); refused when a role is malformed, is
    /// `root`, or is in both lists. `what` names the options in errors.
    pub fn new(account: &[String], operator: &[String]) -> Result<RoleRegistry, String> {
        let canon = |list: &[String], option: &str| -> Result<Vec<String>, String> {
            let mut out: Vec<String> = Vec::new();
            for role in list {
                let role = canonical_role(role.trim());
                crate::keys::validate_id(option, &role)?;
                if role == ROLE_ROOT {
                    return Err(format!("{option}: root can never be granted"));
                }
                if !out.contains(&role) {
                    out.push(role);
                }
            }
            Ok(out)
        };
        let account = canon(account, "--account-roles")?;
        let operator = canon(operator, "--operator-roles")?;
        if let Some(both) = account.iter().find(|r| operator.contains(r)) {
            return Err(format!(
                "role {both} is in both --account-roles and --operator-roles"
            ));
        }
        Ok(RoleRegistry { account, operator })
    }

    pub fn is_operator_role(&self, role: &str) -> bool {
        self.operator.iter().any(|r| *r == canonical_role(role))
    }

    /// The canonical role `caller` may grant for `role`, or why not.
    pub fn grantable(&self, caller: &Grant, role: &str) -> Result<String, Refusal> {
        let role = canonical_role(role);
        if role == ROLE_ROOT {
            return Err(Refusal::Invalid("role root may not be granted".into()));
        }
        if self.account.contains(&role) {
            return Ok(role);
        }
        if self.operator.contains(&role) {
            return if caller.root {
                Ok(role)
            } else {
                Err(Refusal::Forbidden(
                    format!("forbidden: role {role} is an operator role: only root may grant it"),
                    Need::Role(ROLE_ROOT),
                ))
            };
        }
        let mut known = self.account.clone();
        known.extend(self.operator.iter().cloned());
        Err(Refusal::Invalid(format!(
            "role {role} is not a known role (known: {})",
            known.join(", ")
        )))
    }

    /// Whether `caller` may change the role of (or otherwise re-grant) a user now holding
    /// `current`: an operator role is root's to change.
    pub fn may_change(&self, caller: &Grant, current: &str) -> Result<(), Refusal> {
        if caller.root || !self.is_operator_role(current) {
            Ok(())
        } else {
            Err(Refusal::Forbidden(
                format!(
                    "forbidden: the user holds the operator role {}: only root may change it",
                    canonical_role(current)
                ),
                Need::Role(ROLE_ROOT),
            ))
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::type_complexity
)]
mod tests {
    use super::*;

    const T: Cap = Cap::Traffic;
    const O: Cap = Cap::OwnKeys;
    const A: Cap = Cap::AccountAdmin;

    fn grant(caps: &[Cap], expires_at: Option<i64>) -> Grant {
        Grant {
            caps: Caps::of(caps),
            expires_at,
            root: false,
        }
    }

    fn root() -> Grant {
        Grant {
            caps: Caps::ALL,
            expires_at: None,
            root: true,
        }
    }

    fn user(role: &str, expires_at: Option<i64>) -> TargetUser<'_> {
        TargetUser { role, expires_at }
    }

    #[test]
    fn new_capabilities_are_the_intersection_of_asked_caller_role_and_replaced_key() {
        // (caller caps, target role, replaced caps, asked) → expected caps or refusal kind
        let cases: [(
            &[Cap],
            &str,
            Option<&[Cap]>,
            Option<&[Cap]>,
            Result<&[Cap], &str>,
        ); 9] = [
            (&[T, O, A], "admin", None, None, Ok(&[T, O, A])),
            (&[T, O, A], "member", None, None, Ok(&[T, O, A])),
            (&[T, O], "admin", None, None, Ok(&[T, O])),
            (&[T, O], "member", Some(&[T]), None, Ok(&[T])),
            (&[T, O], "member", None, Some(&[T]), Ok(&[T])),
            (&[T, O], "admin", None, Some(&[A]), Err("forbidden")),
            (&[T, O, A], "member", None, Some(&[A]), Err("invalid")),
            (&[T, O], "member", Some(&[T]), Some(&[O]), Err("forbidden")),
            (&[O], "member", None, Some(&[T]), Err("forbidden")),
        ];
        for (caller, role, replaced, asked, want) in cases {
            let got = derive_caps(
                &grant(caller, None),
                role,
                replaced.map(Caps::of),
                asked.map(Caps::of),
            );
            match (got, want) {
                (Ok(c), Ok(w)) => assert_eq!(c, Caps::of(w), "{caller:?} {role} {asked:?}"),
                (Err(Refusal::Forbidden(m, _)), Err("forbidden")) => {
                    assert!(m.contains("forbidden"))
                }
                (Err(Refusal::Invalid(_)), Err("invalid")) => {}
                (got, want) => {
                    panic!("{caller:?} {role} {replaced:?} {asked:?}: {got:?} != {want:?}")
                }
            }
        }
        assert_eq!(derive_caps(&root(), "member", None, None), Ok(Caps::ALL));
        // What the role allows is applied on use.
        assert_eq!(
            effective(Some("traffic,own_keys,account_admin"), "member"),
            Caps::of(&[T, O])
        );
    }

    #[test]
    fn a_refusal_names_the_missing_capability() {
        let err = derive_caps(&grant(&[T], None), "admin", None, Some(Caps::of(&[T, O])));
        assert_eq!(
            err,
            Err(Refusal::Forbidden(
                "forbidden: this key lacks the capability own_keys (a key can only hand on \
                 what it has)"
                    .into(),
                Need::Capability(O)
            ))
        );
    }

    #[test]
    fn expiry_is_capped_at_the_caller_and_the_user() {
        // (caller expiry, root, user expiry, asked) → result (None: refused)
        let cases: [(
            Option<i64>,
            bool,
            Option<i64>,
            Option<i64>,
            Option<Option<i64>>,
        ); 8] = [
            (None, false, None, None, Some(None)),
            (Some(100), false, None, None, Some(Some(100))),
            (Some(100), false, None, Some(50), Some(Some(50))),
            (Some(100), false, None, Some(150), None),
            (Some(100), false, Some(80), None, Some(Some(80))),
            (None, false, Some(80), Some(90), None),
            (Some(100), true, None, Some(150), Some(Some(150))),
            (Some(100), true, Some(120), None, Some(Some(120))),
        ];
        for (caller_exp, is_root, user_exp, asked, want) in cases {
            let mut g = grant(&[T, O], caller_exp);
            g.root = is_root;
            let got = cap_expiry(&g, user_exp, Some(asked)).ok();
            assert_eq!(got, want, "{caller_exp:?} {is_root} {user_exp:?} {asked:?}");
        }
    }

    #[test]
    fn only_root_sets_claims_and_a_rotation_carries_the_old_ones() {
        let claims: Claims = [("plan".into(), "pro".into())].into();
        let ask = Ask {
            claims: Some(claims.clone()),
            ..Ask::default()
        };
        let member = grant(&[T, O], None);
        assert!(matches!(
            derive(&member, user("member", None), None, &ask),
            Err(Refusal::Forbidden(..))
        ));
        assert_eq!(
            derive(&root(), user("member", None), None, &ask)
                .unwrap()
                .claims,
            Some(claims.clone())
        );
        let replaced = Replaced {
            caps: Caps::ALL,
            claims: Some(claims.clone()),
        };
        let got = derive(
            &member,
            user("member", None),
            Some(&replaced),
            &Ask::default(),
        );
        assert_eq!(got.unwrap().claims, Some(claims));
        assert!(derive(&root(), user("member", None), Some(&replaced), &ask).is_err());
        assert_eq!(
            derive(&member, user("member", None), None, &Ask::default())
                .unwrap()
                .claims,
            None
        );
    }

    #[test]
    fn operations_need_their_capability() {
        let admin = grant(&[T, O, A], None);
        let member = grant(&[T, O], None);
        let traffic_only = grant(&[T], None);
        let p = |g| Principal {
            account: "acme",
            user: "bob",
            grant: g,
        };
        let own = Subject {
            account: "acme",
            user: Some("bob"),
        };
        let other = Subject {
            account: "acme",
            user: Some("carol"),
        };
        let foreign = Subject {
            account: "else",
            user: Some("bob"),
        };
        // (grant, operation, subject, allowed)
        let cases = [
            (&member, Operation::UserKeys, own, true),
            (&member, Operation::UserKeys, other, false),
            (&traffic_only, Operation::UserKeys, own, false),
            (&admin, Operation::UserKeys, other, true),
            (&admin, Operation::UserKeys, foreign, false),
            (&member, Operation::Import, own, false),
            (&admin, Operation::Import, own, true),
            (&member, Operation::AccountAdmin, own, false),
            (&admin, Operation::AccountAdmin, own, true),
            (&admin, Operation::AccountAdmin, foreign, false),
            (&admin, Operation::RootOnly("x"), own, false),
            (&root(), Operation::RootOnly("x"), foreign, true),
        ];
        for (g, op, subject, allowed) in cases {
            assert_eq!(
                op.require(&p(g), &subject).is_ok(),
                allowed,
                "{g:?} {op:?} {subject:?}"
            );
        }
    }

    #[test]
    fn grace_keeps_traffic_only() {
        assert_eq!(in_grace(Caps::ALL), Caps::of(&[T]));
        assert_eq!(in_grace(Caps::of(&[O])), Caps::NONE);
    }

    #[test]
    fn stored_capabilities_round_trip_and_null_means_what_the_role_allows() {
        assert_eq!(Caps::from_stored(Some(&Caps::ALL.to_text())), Caps::ALL);
        assert_eq!(Caps::from_stored(Some("traffic")), Caps::of(&[T]));
        assert_eq!(Caps::from_stored(Some("")), Caps::NONE);
        assert_eq!(effective(None, "member"), Caps::of(&[T, O]));
        assert_eq!(effective(None, "admin"), Caps::ALL);
        assert_eq!(
            effective(Some("traffic,account_admin"), "member"),
            Caps::of(&[T])
        );
        assert!(Caps::parse(&["traffic", "nope"]).is_err());
        assert!(Caps::parse::<&str>(&[]).is_err());
        assert_eq!(Caps::parse(&["own_keys", "traffic"]), Ok(Caps::of(&[T, O])));
    }

    #[test]
    fn roles_are_canonical_root_is_never_granted_and_operator_roles_are_roots() {
        let reg = RoleRegistry::new(
            &["Admin".into(), "member".into(), "reader".into()],
            &["STAFF".into()],
        )
        .unwrap();
        let admin = grant(&[T, O, A], None);
        for root_spelling in ["root", "ROOT", "Root", "rOoT"] {
            assert!(matches!(
                reg.grantable(&root(), root_spelling),
                Err(Refusal::Invalid(_))
            ));
        }
        assert_eq!(reg.grantable(&admin, "MEMBER"), Ok("member".into()));
        assert!(matches!(
            reg.grantable(&admin, "staff"),
            Err(Refusal::Forbidden(m, _)) if m.contains("staff")
        ));
        assert_eq!(reg.grantable(&root(), "Staff"), Ok("staff".into()));
        assert!(matches!(
            reg.grantable(&admin, "ops"),
            Err(Refusal::Invalid(m)) if m.contains("admin, member, reader, staff")
        ));
        assert!(reg.may_change(&admin, "staff").is_err());
        assert!(reg.may_change(&admin, "member").is_ok());
        assert!(reg.may_change(&root(), "staff").is_ok());
        assert!(RoleRegistry::new(&["ROOT".into()], &[]).is_err());
        assert!(RoleRegistry::new(&["a".into()], &["A".into()]).is_err());
    }
}
