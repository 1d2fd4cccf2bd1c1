//! What the HTTP context does with a request, apart from talking to Envoy: which refusal to
//! send, which identity headers to set, whether a role may pass.

use crate::config::Config;
use crate::verdict::{Identity, Outcome};

/// A response the filter sends itself instead of forwarding the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no key, a malformed key, or a key the store does not know.
    Unauthorized,
    /// 403: a known key whose role a `required_roles` rule does not list.
    Forbidden,
    /// 503: the store failed and nothing cached can answer.
    Unavailable,
    /// 503: the miss budget is spent.
    Throttled,
}

impl Refusal {
    pub fn status(self) -> u32 {
        match self {
            Refusal::Unauthorized => 401,
            Refusal::Forbidden => 403,
            Refusal::Unavailable | Refusal::Throttled => 503,
        }
    }

    pub fn body(self) -> &'static str {
        match self {
            Refusal::Unauthorized => r#"{"error":"unauthorized"}"#,
            Refusal::Forbidden => r#"{"error":"forbidden"}"#,
            Refusal::Unavailable => r#"{"error":"key store unavailable"}"#,
            Refusal::Throttled => r#"{"error":"too many unknown keys, retry later"}"#,
        }
    }

    pub fn headers(self) -> Vec<(&'static str, &'static str)> {
        let mut h = vec![
            ("content-type", "application/json"),
            ("cache-control", "no-store"),
        ];
        match self {
            Refusal::Unauthorized => h.push(("www-authenticate", "ApiKey")),
            Refusal::Unavailable | Refusal::Throttled => h.push(("retry-after", "1")),
            Refusal::Forbidden => {}
        }
        h
    }
}

/// What to do with a request whose key was decided: forward it with these identity headers,
/// or refuse it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<'a> {
    Forward { headers: [(&'a str, &'a str); 3] },
    Refuse(Refusal),
}

/// Turns a decided outcome into an action, applying `required_roles` for `path`.
pub fn act<'a>(cfg: &'a Config, outcome: &'a Outcome, path: &str) -> Action<'a> {
    match outcome {
        Outcome::Allow { identity, .. } => {
            if !role_allowed(cfg, path, identity) {
                return Action::Refuse(Refusal::Forbidden);
            }
            let h = &cfg.identity_headers;
            Action::Forward {
                headers: [
                    (h.account.as_str(), identity.account_id.as_str()),
                    (h.user.as_str(), identity.user_id.as_str()),
                    (h.role.as_str(), identity.role.as_str()),
                ],
            }
        }
        Outcome::Deny => Action::Refuse(Refusal::Unauthorized),
        Outcome::Unavailable => Action::Refuse(Refusal::Unavailable),
        Outcome::Throttled => Action::Refuse(Refusal::Throttled),
    }
}

pub fn role_allowed(cfg: &Config, path: &str, identity: &Identity) -> bool {
    match cfg.required_roles_for(path) {
        None => true,
        Some(roles) => roles.contains(&identity.role),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;
    use std::rc::Rc;

    fn cfg() -> Config {
        Config::from_json(
            br#"{"store":{"cluster":"k"},"required_roles":[{"prefix":"/admin/","roles":["root","admin"]}],
                 "identity_headers":{"account":"x-acct"}}"#,
        )
        .unwrap()
    }

    fn allow(role: &str) -> Outcome {
        let identity = Identity {
            account_id: "acme".into(),
            user_id: "ann".into(),
            role: role.into(),
        };
        Outcome::Allow {
            identity: Rc::new(identity),
            stale: false,
        }
    }

    #[test]
    fn allowed_requests_carry_the_configured_identity_headers() {
        let c = cfg();
        let o = allow("member");
        assert_eq!(
            act(&c, &o, "/data"),
            Action::Forward {
                headers: [
                    ("x-acct", "acme"),
                    ("x-user-id", "ann"),
                    ("x-role", "member")
                ]
            }
        );
    }

    #[test]
    fn required_roles_refuse_other_roles_with_403() {
        let c = cfg();
        assert_eq!(
            act(&c, &allow("member"), "/admin/x"),
            Action::Refuse(Refusal::Forbidden)
        );
        assert!(matches!(
            act(&c, &allow("admin"), "/admin/x"),
            Action::Forward { .. }
        ));
    }

    #[test]
    fn refusals_are_json_with_the_right_headers() {
        let c = cfg();
        assert_eq!(
            act(&c, &Outcome::Deny, "/"),
            Action::Refuse(Refusal::Unauthorized)
        );
        assert_eq!(
            act(&c, &Outcome::Unavailable, "/"),
            Action::Refuse(Refusal::Unavailable)
        );
        assert_eq!(
            act(&c, &Outcome::Throttled, "/"),
            Action::Refuse(Refusal::Throttled)
        );
        for r in [
            Refusal::Unauthorized,
            Refusal::Forbidden,
            Refusal::Unavailable,
            Refusal::Throttled,
        ] {
            assert!(
                serde_json::from_str::<serde_json::Value>(r.body()).unwrap()["error"].is_string()
            );
            assert!(r.headers().contains(&("content-type", "application/json")));
        }
        assert!(Refusal::Unauthorized
            .headers()
            .contains(&("www-authenticate", "ApiKey")));
        assert!(Refusal::Unavailable
            .headers()
            .contains(&("retry-after", "1")));
        assert_eq!(Refusal::Unavailable.status(), 503);
    }
}
