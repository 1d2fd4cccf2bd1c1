//! Deploying safely, end to end on real Envoy: the settings the shipped template turns on
//! (path normalisation, merged slashes, encoded slashes refused, underscore headers dropped;
//! README "Deploying safely") seen from a client and from the upstream.
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

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use keygate_harness::{random_secret, Envoy, EnvoyOpts, Keystore, KeystoreOpts, Upstream};
use keygate_protocol::routes::admin;
use serde_json::{json, Value};

/// A keystore, an upstream and one Envoy (2 workers) rendered from the shipped template.
struct One {
    envoy: Envoy,
    _upstream: Upstream,
    keystore: Keystore,
}

fn start(cfg: Value) -> One {
    let keystore = Keystore::start(KeystoreOpts::default()).unwrap();
    let upstream = Upstream::start().unwrap();
    let opts = EnvoyOpts::new("keygate-a", cfg, upstream.port(), keystore.port());
    One {
        envoy: Envoy::start(opts).unwrap(),
        _upstream: upstream,
        keystore,
    }
}

/// One raw HTTP/1.1 GET of `target` (sent byte for byte, no client-side normalisation) with
/// `headers`; returns the status and the body parsed as JSON (`Null` if it is not JSON).
fn raw_get(envoy: &Envoy, target: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", envoy.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = format!("GET {target} HTTP/1.1\r\nhost: api\r\nconnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn paths_reach_the_filter_and_the_upstream_normalised() {
    let one = start(config_with(json!({"anonymous_paths": ["/public/"]})));
    let key = one.keystore.create_account("acme", "alice");
    // A dot segment out of an anonymous prefix is the protected path for the filter too:
    // without a key, 401; with one, the upstream gets the normalised path.
    let (status, _) = raw_get(&one.envoy, "/public/../api/x", &[]);
    assert_eq!(status, 401, "/public/../api/x passed as anonymous");
    for (sent, seen) in [
        ("/public/../api/x", "/api/x"),
        ("/public/./../api//x", "/api/x"),
        ("/api//v1///x", "/api/v1/x"),
        ("/%61pi/x", "/api/x"),
        ("/api/x/..", "/api/"),
        ("/public/%2e%2e/api/x", "/api/x"),
    ] {
        let (status, echo) = raw_get(&one.envoy, sent, &[("x-api-key", &key)]);
        assert_eq!(status, 200, "{sent}: {echo}");
        assert_eq!(echo["path"], seen, "{sent}");
        assert_eq!(echo["headers"]["x-account-id"], "acme", "{sent}");
    }
    // The anonymous prefix itself still passes without a key.
    let (status, echo) = raw_get(&one.envoy, "/public//page", &[]);
    assert_eq!((status, echo["path"].as_str()), (200, Some("/public/page")));
}

#[test]
fn encoded_slashes_and_backslashes_are_refused_by_envoy() {
    let one = start(config_with(json!({"anonymous_paths": ["/public/"]})));
    let key = one.keystore.create_account("acme", "alice");
    for target in [
        "/public/..%2Fapi/x",
        "/public%2F..%2Fapi",
        "/public/..%5Capi/x",
        "/api%2fx",
    ] {
        for headers in [vec![], vec![("x-api-key", key.as_str())]] {
            let (status, echo) = raw_get(&one.envoy, target, &headers);
            assert_eq!(
                status,
                400,
                "{target} with {} headers: {echo}",
                headers.len()
            );
        }
    }
}

#[test]
fn identity_headers_spelled_with_underscores_never_reach_the_upstream() {
    let one = start(config());
    let key = one.keystore.create_account("acme", "alice");
    let forged = [
        ("x_account_id", "victim"),
        ("x_role", "root"),
        ("X_User_Id", "mallory"),
        ("x-account_id", "victim"),
    ];
    let mut headers = vec![("x-api-key", key.as_str())];
    headers.extend(forged);
    let (status, echo) = raw_get(&one.envoy, "/orders", &headers);
    assert_eq!(status, 200, "{echo}");
    let seen = echo["headers"].as_object().unwrap();
    for (name, _) in forged {
        assert!(
            !seen.contains_key(&name.to_ascii_lowercase()),
            "{name} reached the upstream: {echo}"
        );
    }
    assert_eq!(seen["x-account-id"], "acme");
    assert_eq!(seen["x-user-id"], "alice");
    assert_eq!(seen["x-role"], "admin");
    assert_eq!(one.envoy.stat("http1.dropped_headers_with_underscores"), 4);
}

/// A keystore requiring `keystore_token` and an Envoy whose filter sends `filter_token`.
fn start_with_tokens(keystore_token: &str, filter_token: Option<&str>) -> One {
    let keystore = Keystore::start(KeystoreOpts {
        protocol_token: Some(keystore_token.to_string()),
        ..KeystoreOpts::default()
    })
    .unwrap();
    let upstream = Upstream::start().unwrap();
    let cfg = match filter_token {
        Some(t) => config_with(json!({"store": {"token": t}})),
        None => config(),
    };
    let opts = EnvoyOpts::new("keygate-a", cfg, upstream.port(), keystore.port());
    One {
        envoy: Envoy::start(opts).unwrap(),
        _upstream: upstream,
        keystore,
    }
}

#[test]
fn the_filter_reads_a_token_protected_store_with_store_token() {
    let token = random_secret("kgproto_").unwrap();
    let one = start_with_tokens(&token, Some(&token));
    let key = one.keystore.create_account("acme", "alice");
    let r = get_with_key(&one.envoy, "/orders", &key);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(upstream_headers(&r)["x-account-id"], "acme");
    // The changes feed answers too: a revocation made in the store reaches the filter.
    assert!(all_get(&one.envoy, &key, 4, 200));
    one.keystore.revoke_account("acme");
    within(
        Duration::from_secs(5),
        "revocation through the feed",
        || all_get(&one.envoy, &key, 4, 401),
    );
    assert!(one.envoy.stat("keygate_sync_polls_total") > 0);
    assert_eq!(one.envoy.stat("keygate_sync_errors_total"), 0);
    assert_eq!(
        one.keystore.metric("keystore_protocol_unauthorized_total"),
        0.0
    );
}

#[test]
fn a_filter_without_the_token_gets_503_from_a_protected_store_never_200() {
    let token = random_secret("kgproto_").unwrap();
    let wrong = random_secret("kgproto_").unwrap();
    for filter_token in [None, Some(wrong.as_str())] {
        let one = start_with_tokens(&token, filter_token);
        let key = one.keystore.create_account("acme", "alice");
        let statuses = statuses(&one.envoy, &key, 6);
        assert!(
            statuses.iter().all(|s| *s == 503),
            "token {:?}: {statuses:?}",
            filter_token.map(|_| "wrong")
        );
        let r = get_with_key(&one.envoy, "/orders", &key);
        assert_eq!(r.status, 503);
        assert!(r.body.contains("/problems/store-unavailable"), "{}", r.body);
        assert!(one.keystore.metric("keystore_protocol_unauthorized_total") >= 1.0);
        assert_eq!(one.keystore.lookups(), 0);
    }
}

/// The template's commented `transport_socket` of the `keystore` cluster, uncommented, trusting
/// `ca` and expecting the name `localhost` (the harness's test certificate).
fn keystore_over_tls_template(ca: &str) -> String {
    let block = [
        "    # transport_socket:",
        "    #   name: envoy.transport_sockets.tls",
        "    #   typed_config:",
        "    #     \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "    #     sni: keystore.internal",
        "    #     common_tls_context:",
        "    #       validation_context:",
        "    #         trusted_ca: { filename: /etc/envoy/keystore-ca.pem }",
        "    #         match_typed_subject_alt_names:",
        "    #         - san_type: DNS",
        "    #           matcher: { exact: keystore.internal }",
    ]
    .join("\n");
    let live = block
        .replace("    # ", "    ")
        .replace("keystore.internal", "localhost")
        .replace("/etc/envoy/keystore-ca.pem", ca);
    keygate_harness::template_variant(&[(&block, &live)]).unwrap()
}

#[test]
fn the_filter_reaches_a_keystore_serving_https_through_the_templates_tls_block() {
    let ca = keygate_harness::TestCa::new("e2e keystore CA").unwrap();
    let keystore = Keystore::start(KeystoreOpts {
        extra_args: vec![
            "--tls-cert".into(),
            ca.server_cert.to_str().unwrap().into(),
            "--tls-key".into(),
            ca.server_key.to_str().unwrap().into(),
        ],
        ..KeystoreOpts::default()
    })
    .unwrap();
    let upstream = Upstream::start().unwrap();
    let mut opts = EnvoyOpts::new("keygate-a", config(), upstream.port(), keystore.port());
    opts.template = Some(keystore_over_tls_template(ca.ca_cert.to_str().unwrap()));
    let envoy = Envoy::start(opts).unwrap();
    // The admin route through Envoy to the HTTPS keystore.
    let created = keygate_harness::send_json(
        "POST",
        &format!("{}{}", envoy.url(), admin::ACCOUNTS),
        &[("x-api-key", keystore.root_key())],
        &json!({"account_id": "acme", "admin_user_id": "alice"}),
    )
    .unwrap();
    assert_eq!(created.status, 201, "{}", created.body);
    let body: Value = serde_json::from_str(&created.body).unwrap();
    let key = body["user_key"].as_str().unwrap();
    // The filter's lookup over TLS admits the key; the feed polls over TLS without errors.
    let r = get_with_key(&envoy, "/orders", key);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(upstream_headers(&r)["x-account-id"], "acme");
    within(Duration::from_secs(5), "a feed poll", || {
        envoy.stat("keygate_sync_polls_total") > 0
    });
    assert_eq!(envoy.stat("keygate_sync_errors_total"), 0);
    assert!(envoy.stat("cluster.keystore.ssl.handshake") >= 1);
}
