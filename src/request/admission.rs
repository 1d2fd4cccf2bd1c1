//! Request admission: everything the filter decides from a request's headers before any
//! lookup, as one pure function. The glue hands over the header snapshot and carries out the
//! returned plan; it decides nothing itself.
//!
//! Invariants, each with a unit test and a fuzz property (`fuzz/fuzz_targets/admission.rs`):
//! - no request goes on with a client-sent identity header, in any spelling a framework folds
//!   into the same name (case, `_` for `-`): every such header is in [`Plan::remove`];
//! - a `:path` that is missing or not valid UTF-8 is refused (400), never defaulted;
//! - rules match the path as the upstream will read it ([`crate::request::path`]): a rule that
//!   matches any reading of the path is never skipped, and a path is anonymous only when every
//!   reading is;
//! - which of `anonymous_paths` and `required_roles` applies is [`crate::request::rules`]' one rule
//!   (the most specific prefix decides, whatever the order);
//! - a key source given more than once is refused (401) before any lookup;
//! - with `hide_credentials`, the key leaves the request wherever its value appears;
//! - with `run_on_preflight` off, only a real CORS preflight ([`is_preflight`]) goes on without
//!   a key: `OPTIONS` with `origin` and `access-control-request-method`, no body (its headers
//!   end the stream, no `content-length` but `0`, no `transfer-encoding`) and no credential (no
//!   key in any key source, no `authorization`, no `cookie`). Anything else is an ordinary
//!   request: key required, `required_roles` applied, `hide_credentials` too.

use keygate_protocol::KeyId;

use crate::config::Config;
use crate::request::act::{Refusal, RequestIo};

use crate::request::fields::Headers;
use crate::request::key::{self, KeyError};
use crate::request::path::{PathError, Route};

/// What to do to a request before it goes on, whatever its key turns out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<'a> {
    /// Header names to remove: identity headers in every spelling, and with
    /// `hide_credentials` every header holding the key.
    pub remove: Vec<String>,
    /// The new `:path` when `hide_credentials` removed a query parameter.
    pub path: Option<String>,
    /// The path as the rules read it.
    pub route: Route<'a>,
    /// On an anonymous path: a key that does not authenticate lets the request pass without
    /// identity instead of refusing it.
    pub anonymous: bool,
    /// A 2xx answer to this request is an admin write (see `invalidate_paths`).
    pub invalidates: bool,
}

impl Plan<'_> {
    /// Removes and rewrites what the plan says.
    pub fn carry_out(&self, io: &mut dyn RequestIo) {
        for name in &self.remove {
            io.remove_header(name);
        }
        if let Some(path) = &self.path {
            io.set_header(":path", path);
        }
    }
}

/// What a paused request still needs when its verdict arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferred {
    pub route: Route<'static>,
    pub anonymous: bool,
}

impl Deferred {
    pub fn of(plan: Plan<'_>) -> Deferred {
        Deferred {
            route: plan.route.into_owned(),
            anonymous: plan.anonymous,
        }
    }
}

/// The admission decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission<'a> {
    /// Answer now; the key error, if the refusal is about a key.
    Refuse(Refusal, Option<KeyError>),
    /// An anonymous path without a key, or a CORS preflight: go on without identity.
    Pass(Plan<'a>),
    /// Look the key up, then go on or refuse.
    Check(KeyId, Plan<'a>),
}

impl Admission<'_> {
    /// Whether this is a refusal for a key that was present but malformed (a metric).
    pub fn is_malformed_key(&self) -> bool {
        matches!(self, Admission::Refuse(_, Some(e)) if *e != KeyError::Missing)
    }
}

/// Decides what to do with a request from its headers (Envoy's snapshot, pseudo-headers
/// included) and whether they end the stream (no body follows). Never calls the store.
pub fn admit<'a>(cfg: &Config, headers: &'a Headers<'a>, end_of_stream: bool) -> Admission<'a> {
    admit_with(cfg, headers, end_of_stream, &mut KeyId::of)
}

/// [`admit`], with the key id of a raw key given by `key_id` (the filter's
/// [`crate::request::key_ids::KeyIds`], which remembers the ids of keys seen recently).
pub fn admit_with<'a>(
    cfg: &Config,
    headers: &'a Headers<'a>,
    end_of_stream: bool,
    key_id: &mut dyn FnMut(&[u8]) -> KeyId,
) -> Admission<'a> {
    let raw_path = header(headers, ":path").ok_or(PathError::Missing);
    let route = match raw_path.and_then(Route::parse) {
        Ok(r) => r,
        Err(_) => return Admission::Refuse(Refusal::BadRequest, None),
    };
    // `Route::parse` accepted it, so it is UTF-8.
    let path = raw_path
        .ok()
        .and_then(|p| std::str::from_utf8(p).ok())
        .unwrap_or("/");
    let method = header(headers, ":method").unwrap_or_default();
    let mut plan = Plan {
        remove: forged_identity(cfg, headers),
        path: None,
        invalidates: cfg.is_invalidating(method, &route),
        anonymous: cfg.is_anonymous(&route),
        route,
    };
    let found = key::extract(&cfg.key_sources, headers, key::query_of(path));
    let no_key = matches!(found, Err(KeyError::Missing));
    if !cfg.run_on_preflight && no_key && is_preflight(method, headers, end_of_stream) {
        return Admission::Pass(plan);
    }
    match found {
        Ok(raw_key) => {
            if cfg.hide_credentials {
                let (names, new_path) = key::hiding(&cfg.key_sources, headers, path, &raw_key);
                for name in names {
                    if !plan.remove.contains(&name) {
                        plan.remove.push(name);
                    }
                }
                plan.path = new_path;
            }
            Admission::Check(key_id(&raw_key), plan)
        }
        Err(_) if plan.anonymous => Admission::Pass(plan),
        Err(e) => {
            let refusal = match e {
                KeyError::Duplicate => Refusal::DuplicateKey,
                _ => Refusal::Unauthorized,
            };
            Admission::Refuse(refusal, Some(e))
        }
    }
}

/// A real CORS preflight as browsers send it (Fetch standard): `OPTIONS` with `origin` and
/// `access-control-request-method`, no body and no credential. The caller has checked that no
/// key source holds anything; this checks the rest.
pub fn is_preflight(method: &[u8], headers: &Headers<'_>, end_of_stream: bool) -> bool {
    let (mut origin, mut request_method) = (false, false);
    for (name, value) in headers {
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("origin") {
            origin = true;
        } else if is("access-control-request-method") {
            request_method = true;
        } else if (is("content-length") && *value != b"0")
            || is("transfer-encoding")
            || is("authorization")
            || is("cookie")
        {
            return false;
        }
    }
    method == b"OPTIONS" && end_of_stream && origin && request_method
}

/// The names of the client-sent headers (or trailers) that spell an identity or claim header,
/// in any case and with `_` for `-`.
pub fn forged_identity(cfg: &Config, fields: &Headers<'_>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (name, _) in fields {
        let folded = cfg.identity_headers.all().any(|n| same_folded(name, n));
        if folded && !out.iter().any(|o| o == name) {
            out.push((*name).to_string());
        }
    }
    out
}

/// `a` and `b` are the same header name for a framework that folds case and `_`/`-`
/// (compared without allocating: this runs for every header of every request).
fn same_folded(a: &str, b: &str) -> bool {
    let fold = |c: u8| {
        if c == b'_' {
            b'-'
        } else {
            c.to_ascii_lowercase()
        }
    };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| fold(x) == fold(y))
}

fn header<'h>(headers: &Headers<'h>, name: &str) -> Option<&'h [u8]> {
    headers.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::act::Recorder;
    use crate::test_support::test;

    fn cfg(extra: &str) -> Config {
        Config::from_json(
            format!(
                r#"{{"store":{{"cluster":"k"}},
                   "anonymous_paths":["/public"],
                   "required_roles":[{{"prefix":"/api/v1/admin/","roles":["admin"]}}]
                   {extra}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    fn req<'h>(path: &'h [u8], h: &[(&'h str, &'h [u8])]) -> Vec<(&'h str, &'h [u8])> {
        let mut v = vec![(":method", &b"GET"[..]), (":path", path)];
        v.extend_from_slice(h);
        v
    }

    /// A request whose headers end the stream, as most in these tests.
    fn admit<'a>(c: &Config, h: &'a Headers<'a>) -> Admission<'a> {
        super::admit(c, h, true)
    }

    fn plan<'a>(a: &'a Admission<'a>) -> &'a Plan<'a> {
        match a {
            Admission::Check(_, p) | Admission::Pass(p) => p,
            Admission::Refuse(r, _) => panic!("refused: {r:?}"),
        }
    }

    #[test]
    fn a_path_that_is_missing_or_not_utf8_is_refused_never_defaulted() {
        let c = cfg("");
        let bad = req(b"/api/v1/admin/users?x=\xff", &[("x-api-key", b"k")]);
        assert_eq!(
            admit(&c, &bad),
            Admission::Refuse(Refusal::BadRequest, None)
        );
        let mut none = req(b"/", &[("x-api-key", b"k")]);
        none.retain(|(k, _)| *k != ":path");
        assert_eq!(
            admit(&c, &none),
            Admission::Refuse(Refusal::BadRequest, None)
        );
        let odd = req(b"/a%zz", &[("x-api-key", b"k")]);
        assert_eq!(
            admit(&c, &odd),
            Admission::Refuse(Refusal::BadRequest, None)
        );
    }

    #[test]
    fn identity_headers_are_removed_in_every_spelling() {
        let c = cfg("");
        let h = req(
            b"/data",
            &[
                ("x-api-key", b"k"),
                ("x-account-id", b"victim"),
                ("x_account_id", b"victim"),
                ("x_role", b"admin"),
                ("x-user_id", b"u"),
                ("x-unrelated", b"v"),
            ],
        );
        let a = admit(&c, &h);
        assert_eq!(
            plan(&a).remove,
            vec!["x-account-id", "x_account_id", "x_role", "x-user_id"]
        );
        // On refusal nothing goes upstream; on an anonymous pass they are removed too.
        let anon = req(b"/public/x", &[("X_ROLE", b"admin")]);
        assert!(matches!(admit(&c, &anon), Admission::Pass(p) if p.remove == ["X_ROLE"]));
    }

    #[test]
    fn forged_claim_headers_are_removed_like_identity_headers() {
        let c = cfg(r#","identity_headers":{"claims":{"plan":"x-plan"}}"#);
        let h = req(b"/d", &[("x-api-key", b"k"), ("X_Plan", b"enterprise")]);
        assert_eq!(plan(&admit(&c, &h)).remove, vec!["X_Plan"]);
    }

    #[test]
    fn forged_identity_in_trailers_is_found_too() {
        let c = cfg("");
        let trailers = [("x-account-id", &b"victim"[..]), ("grpc-status", b"0")];
        assert_eq!(forged_identity(&c, &trailers), vec!["x-account-id"]);
    }

    #[test]
    fn rules_match_the_normalised_path() {
        let c = cfg("");
        for p in [
            &b"/public/../api/v1/admin/users"[..],
            b"/public/..%2Fapi/v1/admin/users",
            b"/public/%2e%2e/api/v1/admin/users",
        ] {
            let no_key = req(p, &[]);
            assert_eq!(
                admit(&c, &no_key),
                Admission::Refuse(Refusal::Unauthorized, Some(KeyError::Missing)),
                "{}",
                String::from_utf8_lossy(p)
            );
        }
        assert!(matches!(
            admit(&c, &req(b"/publicity", &[])),
            Admission::Refuse(..)
        ));
        assert!(matches!(
            admit(&c, &req(b"/public", &[])),
            Admission::Pass(_)
        ));
        let h = req(b"/api/v1//admin/users", &[("x-api-key", b"k")]);
        let a = admit(&c, &h);
        assert!(!c.role_allowed(&plan(&a).route, "member"));
        assert!(c.role_allowed(&plan(&a).route, "admin"));
    }

    #[test]
    fn a_repeated_key_source_is_refused_before_any_lookup() {
        let c = cfg("");
        let h = req(b"/d", &[("x-api-key", b"A"), ("x-api-key", b"B")]);
        assert_eq!(
            admit(&c, &h),
            Admission::Refuse(Refusal::DuplicateKey, Some(KeyError::Duplicate))
        );
        let cq = cfg(r#","key_sources":[{"query":"apikey"}]"#);
        let q = req(b"/d?apikey=A&api%6B%65%79=B", &[]);
        assert!(admit(&cq, &q).is_malformed_key());
    }

    #[test]
    fn hidden_credentials_leave_the_request_wherever_they_appear() {
        let c = cfg(
            r#","hide_credentials":true,"key_sources":[{"header":"x-api-key"},{"query":"apikey"}]"#,
        );
        let h = req(b"/d?apikey=K&a=1", &[("x-api-key", b"K")]);
        let a = admit(&c, &h);
        let p = plan(&a);
        assert_eq!(p.remove, vec!["x-api-key"]);
        assert_eq!(p.path.as_deref(), Some("/d?a=1"));
        let mut io = Recorder::default();
        p.carry_out(&mut io);
        assert_eq!(io.removed, vec!["x-api-key"]);
        assert_eq!(io.set, vec![(":path".to_string(), "/d?a=1".to_string())]);
    }

    #[test]
    fn anonymous_paths_authenticate_when_they_can() {
        let c = cfg("");
        let h = req(b"/public/x", &[("x-api-key", b"k")]);
        let a = admit(&c, &h);
        assert!(matches!(&a, Admission::Check(id, p) if *id == KeyId::of(b"k") && p.anonymous));
        let malformed = req(b"/public/x", &[("x-api-key", b"a b")]);
        assert!(matches!(admit(&c, &malformed), Admission::Pass(_)));
        let duplicate = req(b"/public/x", &[("x-api-key", b"a"), ("x-api-key", b"b")]);
        assert!(matches!(admit(&c, &duplicate), Admission::Pass(_)));
    }

    #[test]
    fn admin_writes_are_recognised_on_any_reading() {
        let c = cfg("");
        let mut h = req(b"/api/v1//admin/users", &[("x-api-key", b"k")]);
        h[0].1 = b"post";
        assert!(plan(&admit(&c, &h)).invalidates);
        h[0].1 = b"GET";
        assert!(!plan(&admit(&c, &h)).invalidates);
    }

    /// A browser's preflight for `POST /private/x`, plus `extra` headers.
    fn preflight<'h>(extra: &[(&'h str, &'h [u8])]) -> Vec<(&'h str, &'h [u8])> {
        let mut h = req(
            b"/private/x",
            &[
                ("origin", b"https://app.example"),
                ("access-control-request-method", b"POST"),
                ("x_role", b"admin"),
            ],
        );
        h[0].1 = b"OPTIONS";
        h.extend_from_slice(extra);
        h
    }

    #[test]
    fn a_real_preflight_passes_without_a_key_unless_run_on_preflight() {
        let passes = |c: &Config, h: &[(&str, &[u8])]| matches!(super::admit(c, h, true), Admission::Pass(p) if p.remove == ["x_role"]);
        assert!(passes(&cfg(""), &preflight(&[])));
        assert!(passes(&cfg(""), &preflight(&[("content-length", b"0")])));
        assert!(!passes(
            &cfg(r#","run_on_preflight":true"#),
            &preflight(&[])
        ));
    }

    #[test]
    fn a_preflight_shape_with_a_body_or_a_credential_is_an_ordinary_request() {
        let c = cfg(r#","key_sources":[{"header":"x-api-key"},{"query":"apikey"}]"#);
        let refused = |h: &[(&str, &[u8])], end_of_stream: bool| {
            super::admit(&c, h, end_of_stream)
                == Admission::Refuse(Refusal::Unauthorized, Some(KeyError::Missing))
        };
        assert!(
            refused(&preflight(&[]), false),
            "a body follows the headers"
        );
        for shape in [
            ("content-length", &b"27"[..]),
            ("transfer-encoding", b"chunked"),
            ("authorization", b"Basic YTpi"),
            ("cookie", b"session=s"),
            ("Cookie", b"session=s"),
        ] {
            assert!(refused(&preflight(&[shape]), true), "{shape:?}");
        }
        let mut no_origin = preflight(&[]);
        no_origin.retain(|(n, _)| *n != "origin");
        assert!(refused(&no_origin, true), "no origin");
        let mut no_method = preflight(&[]);
        no_method.retain(|(n, _)| *n != "access-control-request-method");
        assert!(
            refused(&no_method, true),
            "no access-control-request-method"
        );
        let mut get = preflight(&[]);
        get[0].1 = b"GET";
        assert!(refused(&get, true), "not OPTIONS");
        // A key in a key source: checked like any request, so required_roles apply.
        let keyed = preflight(&[("x-api-key", b"k")]);
        assert!(matches!(
            super::admit(&c, &keyed, true),
            Admission::Check(..)
        ));
        let mut queried = preflight(&[]);
        queried[1].1 = b"/private/x?apikey=k";
        assert!(matches!(
            super::admit(&c, &queried, true),
            Admission::Check(..)
        ));
        let malformed = preflight(&[("x-api-key", b"a b")]);
        assert!(matches!(
            super::admit(&c, &malformed, true),
            Admission::Refuse(Refusal::Unauthorized, Some(KeyError::Invalid))
        ));
    }

    #[test]
    fn a_preflight_checked_with_run_on_preflight_has_its_key_hidden() {
        let c = cfg(r#","run_on_preflight":true,"hide_credentials":true"#);
        let h = preflight(&[("x-api-key", b"k")]);
        let a = super::admit(&c, &h, true);
        assert!(matches!(&a, Admission::Check(id, _) if *id == KeyId::of(b"k")));
        assert_eq!(plan(&a).remove, vec!["x_role", "x-api-key"]);
    }

    #[test]
    fn folding_compares_case_and_underscores() {
        assert!(same_folded("X_Role", "x-role"));
        assert!(!same_folded("x-roles", "x-role"));
        assert_eq!(crate::text::fold_header_name("X_Role"), "x-role");
    }
}
