//! No way around the gate, end to end on real Envoy with its own path and header defences
//! turned off (what the filter must survive alone when an operator leaves them out): paths
//! that are not UTF-8 over HTTP/2, path confusion, identity headers in other spellings and in
//! request trailers, keys given twice, hidden credentials, anonymous paths with a key.
#![cfg(not(target_arch = "wasm32"))]
// Tests: panicking on a failed expectation is the point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use common::*;
use keygate_harness::h2::{self, H2Request};
use keygate_harness::{load_envoy_template, TwoInstances, TwoOpts};
use serde_json::{json, Value};

/// The shipped template without Envoy's own path and header defences (the lines marked
/// `# keygate:hardening`): the filter must be safe when an operator leaves them out.
fn undefended_template() -> String {
    let template = load_envoy_template().unwrap();
    let kept: Vec<&str> = template
        .lines()
        .filter(|l| !l.trim_end().ends_with("# keygate:hardening"))
        .collect();
    assert!(
        template.lines().count() - kept.len() >= 5,
        "the template's hardening lines are no longer marked"
    );
    kept.join("\n")
}

/// The protected upstream spoken to over HTTP/2 (so request trailers reach it).
fn with_http2_upstream(template: &str) -> String {
    let from = "  - name: upstream\n    type: STATIC\n";
    assert!(template.contains(from), "template has no upstream cluster");
    template.replacen(
        from,
        "  - name: upstream\n    type: STATIC\n    typed_extension_protocol_options:\n      \
         envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \
         \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        \
         explicit_http_config: { http2_protocol_options: {} }\n",
        1,
    )
}

fn gate_config() -> Value {
    config_with(json!({
        "anonymous_paths": ["/public"],
        "required_roles": [{"prefix": "/private/", "roles": ["admin"]}]
    }))
}

fn start(cfg: Value, template: String) -> TwoInstances {
    let mut opts = TwoOpts::new(cfg);
    opts.template = Some(template);
    TwoInstances::start_with(opts).unwrap()
}

fn echo(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or(Value::Null)
}

#[test]
fn a_path_that_is_not_utf8_is_refused_over_http2_never_read_as_another() {
    let env = start(gate_config(), undefended_template());
    env.keystore.create_account("acme", "alice");
    let member = env.keystore.create_user("acme", "mia", "member");
    let key_header = [("x-api-key", member.as_str())];
    // A path Envoy routes to the upstream, under the admin-only rule, with a byte that is not
    // UTF-8 in its query: the filter once read it as "/" and let the member through.
    let bad = H2Request::get(b"/private/users?x=\xff", &key_header);
    let r = h2::send(env.a.port(), &bad).unwrap();
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("/problems/invalid-path"), "{}", r.body);
    let r = h2::send(env.a.port(), &H2Request::get(b"/public/\xfe", &[])).unwrap();
    assert_eq!(r.status, 400, "not UTF-8 on an anonymous path: {r:?}");
    // The same member on a valid path: 403; on an open path: 200 over HTTP/2.
    let r = h2::send(
        env.a.port(),
        &H2Request::get(b"/private/users", &key_header),
    )
    .unwrap();
    assert_eq!(r.status, 403, "{r:?}");
    let r = h2::send(env.a.port(), &H2Request::get(b"/data", &key_header)).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(echo(&r.body)["headers"]["x-role"], "member");
    assert!(
        env.a
            .stat("keygate_requests_total{outcome=\"bad_request\"}")
            >= 2
    );
}

/// Paths an attacker tries against `/private/` (admin only) and `/public` (anonymous).
const CONFUSION: [&str; 26] = [
    "/public/../private/users",
    "/public/./../private/users",
    "/public/%2e%2e/private/users",
    "/public/%2E%2E/private/users",
    "/public/.%2e/private/users",
    "/public/..%2fprivate/users",
    "/public/..%2Fprivate/users",
    "/public/..%5cprivate/users",
    "/public/..\\private/users",
    "/public/%252e%252e/private/users",
    "/public/%25/%252e%252e/%252e%252e/private/users",
    "/public/x%2f..%2f..%2fprivate%2f%252e%252e%2f%252e%252e%2fpublic",
    "/public/..;/private/users",
    "/public;x=1/../private/users",
    "/private//../public",
    "//private/users",
    "/private//users",
    "/./private/users",
    "/private/./users",
    "/PRIVATE/users",
    "/private;jsessionid=1/users",
    "/private./users",
    "/%70rivate/users",
    "/private%2fusers",
    "/publicity",
    "/public/ok",
];

/// What the upstream got for a 200 (its path), or "-".
fn reached(status: u16, body: &str) -> String {
    if status == 200 {
        echo(body)["path"].as_str().unwrap_or("?").to_string()
    } else {
        "-".to_string()
    }
}

#[test]
fn path_confusion_never_reaches_a_protected_route() {
    let env = start(gate_config(), undefended_template());
    env.keystore.create_account("acme", "alice");
    let member = env.keystore.create_user("acme", "mia", "member");
    println!("| path | no key | member key | upstream received (member) |");
    println!("| --- | --- | --- | --- |");
    for path in CONFUSION {
        let (anon, anon_body) = raw_get(&env.a, path, &[]);
        let (mem, mem_body) = raw_get(&env.a, path, &[("x-api-key", &member)]);
        println!(
            "| `{path}` | {anon} | {mem} | {} |",
            reached(mem, &mem_body)
        );
        let safe_public = path == "/public/ok";
        if safe_public {
            assert_eq!(anon, 200, "{path}");
            assert_eq!(mem, 200, "{path}");
            continue;
        }
        assert_ne!(
            anon, 200,
            "{path} without a key reached the upstream: {anon_body}"
        );
        let p = reached(mem, &mem_body).to_ascii_lowercase();
        assert!(
            !(p.contains("private") && mem == 200),
            "{path}: a member reached {p}"
        );
    }
}

#[test]
fn identity_headers_in_other_spellings_never_reach_the_upstream() {
    let env = start(gate_config(), undefended_template());
    let key = env.keystore.create_account("acme", "alice");
    let forged = [
        ("x_account_id", "victim"),
        ("X_Role", "admin"),
        ("x-user_id", "mallory"),
        ("X-Account-Id", "victim"),
    ];
    let mut with_key = forged.to_vec();
    with_key.push(("x-api-key", &key));
    for (path, headers) in [("/data", &with_key), ("/public/x", &forged.to_vec())] {
        let (status, body) = raw_get(&env.a, path, headers);
        assert_eq!(status, 200, "{path}: {body}");
        let seen = echo(&body)["headers"].clone();
        let names: Vec<&String> = seen.as_object().unwrap().keys().collect();
        for spelling in ["x_account_id", "x_role", "x-user_id"] {
            assert!(
                !names.iter().any(|n| n.as_str() == spelling),
                "{path}: {spelling} in {names:?}"
            );
        }
        if path == "/data" {
            assert_eq!(seen["x-account-id"], "acme");
            assert_eq!(seen["x-role"], "admin");
        } else {
            assert!(seen.get("x-account-id").is_none(), "{seen}");
        }
    }
}

#[test]
fn identity_headers_in_request_trailers_never_reach_the_upstream() {
    let env = start(gate_config(), with_http2_upstream(&undefended_template()));
    let key = env.keystore.create_account("acme", "alice");
    let req = H2Request::get(b"/upload", &[("x-api-key", &key)]).with_body_and_trailers(
        b"payload",
        &[
            ("x-account-id", "victim"),
            ("x_role", "admin"),
            ("x-checksum", "abc"),
        ],
    );
    let r = h2::send(env.a.port(), &req).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let seen = echo(&r.body);
    assert_eq!(seen["version"], "HTTP/2.0");
    assert_eq!(seen["body"], "payload");
    assert_eq!(
        seen["trailers"]["x-checksum"], "abc",
        "other trailers pass: {seen}"
    );
    assert!(seen["trailers"].get("x-account-id").is_none(), "{seen}");
    assert!(seen["trailers"].get("x_role").is_none(), "{seen}");
    assert_eq!(seen["headers"]["x-account-id"], "acme");
}

#[test]
fn a_key_given_twice_is_refused_before_any_lookup() {
    let cfg = config_with(json!({
        "key_sources": [{"header": "x-api-key"}, {"query": "apikey"}],
        "hide_credentials": true
    }));
    let env = start(cfg, undefended_template());
    let key = env.keystore.create_account("acme", "alice");
    let before = env.keystore.lookups();
    let (s, body) = raw_get(&env.a, "/d", &[("x-api-key", &key), ("x-api-key", "other")]);
    assert_eq!(s, 401, "{body}");
    assert!(body.contains("/problems/duplicate-api-key"), "{body}");
    let (s, _) = raw_get(&env.a, "/d", &[("x-api-key", &key), ("x-api-key", &key)]);
    assert_eq!(s, 401);
    let (s, _) = raw_get(
        &env.a,
        &format!("/d?x-api-key=1&apikey={key}&apikey=B"),
        &[],
    );
    assert_eq!(s, 401);
    let (s, _) = raw_get(&env.a, &format!("/d?apikey={key}&api%6B%65%79={key}"), &[]);
    assert_eq!(s, 401, "names are compared decoded");
    assert_eq!(
        env.keystore.lookups(),
        before,
        "no lookup for a repeated key"
    );

    // A percent-encoded parameter name is the parameter; hidden everywhere the key appears.
    let (s, body) = raw_get(&env.a, &format!("/d?a=1&api%6B%65%79={key}"), &[]);
    assert_eq!(s, 200, "{body}");
    assert_eq!(echo(&body)["path"], "/d?a=1");
    let (s, body) = raw_get(
        &env.a,
        &format!("/d?apikey={key}&b=2"),
        &[("x-api-key", &key)],
    );
    assert_eq!(s, 200, "{body}");
    let seen = echo(&body);
    assert_eq!(seen["path"], "/d?b=2", "the query copy is removed too");
    assert!(seen["headers"].get("x-api-key").is_none(), "{seen}");
    assert!(!env.upstream.log_text().contains(&key));
}

#[test]
fn anonymous_paths_authenticate_when_they_can() {
    let mut env = start(gate_config(), undefended_template());
    let key = env.keystore.create_account("acme", "alice");
    let (s, body) = raw_get(&env.a, "/public/page", &[("x-api-key", &key)]);
    assert_eq!(s, 200);
    assert_eq!(
        echo(&body)["headers"]["x-account-id"],
        "acme",
        "a valid key adds identity"
    );
    for bad in ["kg_unknown_key_0123456789", "two words", ""] {
        let (s, body) = raw_get(&env.a, "/public/page", &[("x-api-key", bad)]);
        assert_eq!(s, 200, "{bad:?}: {body}");
        assert!(echo(&body)["headers"].get("x-account-id").is_none());
    }
    let (s, body) = raw_get(&env.a, "/public/page", &[]);
    assert_eq!(s, 200);
    assert!(echo(&body)["headers"].get("x-account-id").is_none());
    // The store cannot answer: never a 503 on an anonymous path.
    env.keystore.kill();
    let (s, body) = raw_get(
        &env.a,
        "/public/page",
        &[("x-api-key", "kg_never_seen_before_123")],
    );
    assert_eq!(s, 200, "{body}");
    assert!(env.a.stat("keygate_requests_total{outcome=\"anonymous\"}") >= 4);
}

/// Envoy's CORS filter in front of keygate, allowing one origin on every route.
fn with_cors_in_front(template: &str) -> String {
    let vhost = "            - name: api\n              domains: [\"*\"]\n";
    let filters = "          http_filters:\n";
    assert!(template.contains(vhost) && template.contains(filters));
    template
        .replacen(
            vhost,
            &format!(
                "{vhost}              typed_per_filter_config:\n                \
                 envoy.filters.http.cors:\n                  \
                 \"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy\n                  \
                 allow_origin_string_match: [{{ exact: \"https://app.example\" }}]\n                  \
                 allow_methods: \"GET, POST\"\n                  allow_headers: \"x-api-key\"\n"
            ),
            1,
        )
        .replacen(
            filters,
            &format!(
                "{filters}          - name: envoy.filters.http.cors\n            typed_config:\n              \
                 \"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors\n"
            ),
            1,
        )
}

fn preflight(envoy: &keygate_harness::Envoy, origin: &str) -> (u16, String) {
    let head = format!(
        "OPTIONS /private/items HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\
         origin: {origin}\r\naccess-control-request-method: POST\r\nx_role: admin\r\n\r\n"
    );
    raw_exchange(envoy, head.as_bytes())
}

#[test]
fn cors_preflights_pass_without_a_key_unless_run_on_preflight() {
    let template = with_cors_in_front(&undefended_template());
    let env = start(gate_config(), template.clone());
    // A known origin: Envoy's CORS filter answers the preflight itself.
    let (s, _) = preflight(&env.a, "https://app.example");
    assert_eq!(s, 200);
    // Another origin: forwarded; keygate lets the preflight through without identity.
    let (s, body) = preflight(&env.a, "https://other.example");
    assert_eq!(s, 200, "{body}");
    let seen = echo(&body);
    assert_eq!(seen["method"], "OPTIONS");
    assert!(seen["headers"].get("x_role").is_none(), "{seen}");
    // An OPTIONS request that is not a preflight needs a key.
    let (s, _) = raw_get(&env.a, "/private/items", &[]);
    assert_eq!(s, 401);
    drop(env);

    let strict = start(
        config_with(json!({ "run_on_preflight": true, "anonymous_paths": [] })),
        template,
    );
    let (s, _) = preflight(&strict.a, "https://other.example");
    assert_eq!(s, 401, "run_on_preflight authenticates preflights");
}
