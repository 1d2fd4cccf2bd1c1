//! Which path rule decides: `anonymous_paths` and `required_roles` as one ordered list.
//!
//! Invariants (unit tests below, fuzz properties in `fuzz/fuzz_targets/admission.rs`):
//! - **the most specific prefix decides**, whatever the order of the configuration: for a path,
//!   the longest matching prefix of either list wins. Two rules with the same prefix (compared
//!   without case, across both lists) are refused at load, so there is never a tie;
//! - a path is **anonymous** only when every reading of it is the same ([`Route::surely_under`]),
//!   it lies under an anonymous prefix, and no `required_roles` prefix matching it is more
//!   specific: `/docs` anonymous with `/docs/internal → [admin]` leaves `/docs/internal/x` to
//!   keys with role `admin`;
//! - on a path that is not anonymous, anonymous prefixes count for nothing; for each reading
//!   of the path ([`Route::readings`]), the most specific role rule the reading lies under
//!   decides, and a role passes only if every reading's rule lists it (when readings disagree,
//!   the stricter outcome wins). A reading under no rule needs only a valid key;
//! - on an anonymous path no role rule applies (a key that authenticates adds its identity,
//!   whatever its role);
//! - the outcome does not depend on the order of the rules: they are sorted once, at load,
//!   most specific first, so a request costs one walk that stops at the first match.

use crate::config::RoleRule;
use crate::request::path::{self, Prefix, Route};

/// The configured path rules, most specific first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PathRules {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    prefix: Prefix,
    /// `None`: an anonymous prefix; otherwise the roles that pass.
    roles: Option<Vec<String>>,
}

impl PathRules {
    /// Orders the rules by specificity. The caller has refused identical prefixes (see
    /// [`crate::config`]), so the order between rules of equal length never matters: two
    /// different prefixes of the same length never both match one reading.
    pub fn new(anonymous: &[Prefix], required_roles: &[RoleRule]) -> PathRules {
        let mut rules: Vec<Rule> = anonymous
            .iter()
            .map(|p| Rule {
                prefix: p.clone(),
                roles: None,
            })
            .chain(required_roles.iter().map(|r| Rule {
                prefix: r.prefix.clone(),
                roles: Some(r.roles.clone()),
            }))
            .collect();
        rules.sort_by(|a, b| {
            let (a, b) = (a.prefix.as_str(), b.prefix.as_str());
            b.len().cmp(&a.len()).then_with(|| a.cmp(b))
        });
        PathRules { rules }
    }

    /// Whether `route` needs no key: its most specific matching rule is an anonymous prefix
    /// that every reading of it lies under.
    pub fn is_anonymous(&self, route: &Route) -> bool {
        if route.is_ambiguous() {
            return false;
        }
        for rule in &self.rules {
            match &rule.roles {
                None if route.surely_under(&rule.prefix) => return true,
                Some(_) if route.maybe_under(&rule.prefix) => return false,
                _ => {}
            }
        }
        false
    }

    /// Whether a key with `role` may pass on `route` (the key itself valid).
    pub fn role_allowed(&self, route: &Route, role: &str) -> bool {
        self.is_anonymous(route)
            || route.readings().all(|reading| {
                self.rules
                    .iter()
                    .filter_map(|r| Some((&r.prefix, r.roles.as_deref()?)))
                    .find(|(prefix, _)| path::lies_under(reading, prefix))
                    .is_none_or(|(_, roles)| roles.iter().any(|x| x == role))
            })
    }

    /// The whole rule: whether a request on `route` passes with a valid key of role `role`,
    /// or with no valid key at all (`None`).
    pub fn admits(&self, route: &Route, role: Option<&str>) -> bool {
        match role {
            None => self.is_anonymous(route),
            Some(role) => self.role_allowed(route, role),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::test_support::test;

    fn rules(anonymous: &[&str], roles: &[(&str, &[&str])]) -> PathRules {
        let json = serde_json::json!({
            "store": {"cluster": "k"},
            "anonymous_paths": anonymous,
            "required_roles": roles
                .iter()
                .map(|(p, r)| serde_json::json!({"prefix": p, "roles": r}))
                .collect::<Vec<_>>(),
        });
        Config::from_json(json.to_string().as_bytes())
            .unwrap()
            .path_rules
    }

    fn route(p: &str) -> Route<'_> {
        Route::parse(p.as_bytes()).unwrap()
    }

    #[test]
    fn a_role_rule_under_an_anonymous_prefix_is_enforced() {
        let r = rules(&["/docs"], &[("/docs/internal", &["admin"])]);
        let secret = route("/docs/internal/secrets");
        assert!(!r.admits(&secret, None), "no key");
        assert!(!r.admits(&secret, Some("member")), "a member key");
        assert!(r.admits(&secret, Some("admin")));
        assert!(r.admits(&route("/docs/intro"), None), "the rest stays open");
        assert!(
            r.admits(&route("/docs/internals"), None),
            "segment boundary"
        );
        for p in [
            "/docs/Internal/x",
            "/docs/internal;a/x",
            "/docs/x/../internal/y",
        ] {
            assert!(!r.admits(&route(p), None), "{p}");
            assert!(!r.admits(&route(p), Some("member")), "{p}");
        }
    }

    #[test]
    fn an_anonymous_prefix_under_a_role_rule_opens_only_itself() {
        let r = rules(&["/api/status"], &[("/api", &["admin"])]);
        assert!(r.admits(&route("/api/status/live"), None));
        assert!(r.admits(&route("/api/status"), Some("member")));
        assert!(!r.admits(&route("/api/other"), Some("member")));
        // Read another way, the path is not surely under the open prefix: the role rule holds.
        for p in ["/API/STATUS", "/api/status/..%2fother", "/api/status;x"] {
            assert!(!r.admits(&route(p), None), "{p}");
            assert!(!r.admits(&route(p), Some("member")), "{p}");
            assert!(r.admits(&route(p), Some("admin")), "{p}");
        }
    }

    #[test]
    fn overlapping_role_rules_are_decided_by_the_most_specific_in_either_order() {
        let broad: (&str, &[&str]) = ("/api", &["member", "admin"]);
        let narrow: (&str, &[&str]) = ("/api/admin", &["admin"]);
        for r in [rules(&[], &[broad, narrow]), rules(&[], &[narrow, broad])] {
            assert!(!r.admits(&route("/api/admin/x"), Some("member")));
            assert!(!r.admits(&route("/API//Admin/x"), Some("member")));
            assert!(r.admits(&route("/api/admin/x"), Some("admin")));
            assert!(r.admits(&route("/api/users"), Some("member")));
            assert!(!r.admits(&route("/api/users"), Some("guest")));
            assert!(r.admits(&route("/other"), Some("guest")));
            assert!(!r.admits(&route("/other"), None));
        }
        // A narrower rule may also be wider: it decides under its prefix.
        let r = rules(
            &[],
            &[("/api", &["admin"]), ("/api/me", &["member", "admin"])],
        );
        assert!(r.admits(&route("/api/me/profile"), Some("member")));
        assert!(!r.admits(&route("/api/x"), Some("member")));
    }

    #[test]
    fn readings_that_disagree_take_the_strictest_rule() {
        let r = rules(
            &[],
            &[("/api", &["member", "admin"]), ("/api/admin", &["admin"])],
        );
        // One reading is /api/x (member passes), another /api/admin/x (admin only).
        for p in ["/api/x/..%2fadmin/y", "/api/admin%2f..%2fx"] {
            assert!(!r.admits(&route(p), Some("member")), "{p}");
            assert!(r.admits(&route(p), Some("admin")), "{p}");
        }
    }
}
