//! Every kind of bad input gets the right 4xx status and an RFC 9457 problem body.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{Ks, ROOT_KEY};
use keygate_protocol::routes::admin;
use serde_json::json;

const ACCOUNTS: &str = admin::ACCOUNTS;

/// A request with the root key, a content type and a raw body.
fn raw(
    method: &str,
    uri: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header("x-api-key", ROOT_KEY);
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    b.body(body.into()).unwrap()
}

#[tokio::test]
async fn malformed_bodies() {
    let ks = Ks::new().await;
    ks.create_account("acme", "alice").await;
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            raw("POST", ACCOUNTS, Some("application/json"), "{"),
            StatusCode::BAD_REQUEST,
            "invalid JSON",
        ),
        (
            raw("POST", ACCOUNTS, Some("application/json"), "not json"),
            StatusCode::BAD_REQUEST,
            "invalid JSON",
        ),
        (
            raw("POST", ACCOUNTS, Some("application/json"), "[1,2]"),
            StatusCode::BAD_REQUEST,
            "invalid JSON",
        ),
        (
            raw("POST", ACCOUNTS, Some("application/json"), ""),
            StatusCode::BAD_REQUEST,
            "empty",
        ),
        (
            raw("POST", ACCOUNTS, None, ""),
            StatusCode::BAD_REQUEST,
            "empty",
        ),
        (
            raw(
                "POST",
                ACCOUNTS,
                Some("application/json"),
                r#"{"account_id":"x"}"#,
            ),
            StatusCode::BAD_REQUEST,
            "missing field `admin_user_id`",
        ),
        (
            raw(
                "POST",
                ACCOUNTS,
                Some("application/json"),
                r#"{"account_id":"x","admin_user_id":"y","plan":"pro"}"#,
            ),
            StatusCode::BAD_REQUEST,
            "unknown field `plan`",
        ),
        (
            raw(
                "POST",
                ACCOUNTS,
                Some("application/json"),
                r#"{"account_id":7,"admin_user_id":"y"}"#,
            ),
            StatusCode::BAD_REQUEST,
            "invalid type",
        ),
        (
            raw(
                "POST",
                ACCOUNTS,
                Some("text/plain"),
                r#"{"account_id":"x","admin_user_id":"y"}"#,
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type must be application/json",
        ),
        (
            raw(
                "POST",
                ACCOUNTS,
                Some("application/x-www-form-urlencoded"),
                "account_id=x",
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type must be application/json",
        ),
        (
            raw(
                "POST",
                ACCOUNTS,
                Some("application/json"),
                vec![b' '; 20 * 1024],
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too large",
        ),
        (
            raw(
                "POST",
                &admin::users("acme"),
                Some("application/json"),
                r#"{"user_id":"bob"}"#,
            ),
            StatusCode::BAD_REQUEST,
            "missing field `role`",
        ),
        (
            raw(
                "POST",
                &admin::users("acme"),
                Some("application/json"),
                r#"{"user_id":"bob","role":"member","key":"kg_x"}"#,
            ),
            StatusCode::BAD_REQUEST,
            "unknown field `key`",
        ),
        (
            raw(
                "PATCH",
                &admin::user("acme", "alice"),
                Some("application/json"),
                r#"{"role":"member","user_id":"x"}"#,
            ),
            StatusCode::BAD_REQUEST,
            "unknown field `user_id`",
        ),
        (
            raw(
                "PATCH",
                &admin::user("acme", "alice"),
                Some("application/json"),
                r#"{"role":5}"#,
            ),
            StatusCode::BAD_REQUEST,
            "invalid type",
        ),
    ];
    for (req, status, needle) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let r = ks.send(req).await;
        assert_eq!(r.status, status, "{what}: {:?}", r.body);
        r.assert_error(status, needle);
    }
    // The content type may carry parameters.
    let r = ks
        .send(raw(
            "POST",
            ACCOUNTS,
            Some("application/json; charset=utf-8"),
            r#"{"account_id":"ok","admin_user_id":"y"}"#,
        ))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    // Nothing else was created.
    assert_eq!(ks.revision().await, 3);
}

#[tokio::test]
async fn bad_ids() {
    let ks = Ks::new().await;
    let admin = ks.create_account("acme", "alice").await;
    let long = "x".repeat(129);
    let max = "y".repeat(128);
    let bad_values = ["", "a b", "a/b", "é", "a:b", "..", long.as_str()];
    for bad in bad_values {
        ks.call(
            "POST",
            ACCOUNTS,
            Some(ROOT_KEY),
            Some(json!({"account_id": bad, "admin_user_id": "a"})),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "account_id");
        ks.call(
            "POST",
            ACCOUNTS,
            Some(ROOT_KEY),
            Some(json!({"account_id": "fine", "admin_user_id": bad})),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "admin_user_id");
        ks.call(
            "POST",
            &admin::users("acme"),
            Some(&admin),
            Some(json!({"user_id": bad, "role": "member"})),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "user_id");
        ks.call(
            "POST",
            &admin::users("acme"),
            Some(&admin),
            Some(json!({"user_id": "fine", "role": bad})),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "role");
        ks.call(
            "PATCH",
            &admin::user("acme", "alice"),
            Some(&admin),
            Some(json!({"role": bad})),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "role");
    }
    // Ids in the path follow the same rules.
    for uri in [
        admin::users(&long),
        admin::users("a%20b"),
        admin::users("a%2Fb"),
    ] {
        ks.call("GET", &uri, Some(ROOT_KEY), None)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "account");
    }
    ks.call("DELETE", &admin::user("acme", &long), Some(ROOT_KEY), None)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "user");
    // Ids that do not decode as UTF-8 are rejected by the router, still as JSON.
    ks.call("GET", &admin::users("%FF"), Some(ROOT_KEY), None)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "");

    // Reserved names and roles.
    ks.call(
        "POST",
        ACCOUNTS,
        Some(ROOT_KEY),
        Some(json!({"account_id": "_mine", "admin_user_id": "a"})),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "reserved");
    ks.call(
        "POST",
        &admin::users("acme"),
        Some(&admin),
        Some(json!({"user_id": "eve", "role": "root"})),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "root may not be granted");
    // Nothing was created by any of these.
    assert_eq!(ks.revision().await, 2);

    // 128 characters is fine.
    let key = ks.create_account(&max, &max).await;
    ks.assert_active(&key, &max, &max, "admin").await;
}

#[tokio::test]
async fn unknown_and_duplicate() {
    let ks = Ks::new().await;
    let _admin = ks.create_account("acme", "alice").await;
    ks.call(
        "POST",
        ACCOUNTS,
        Some(ROOT_KEY),
        Some(json!({"account_id": "acme", "admin_user_id": "z"})),
    )
    .await
    .assert_error(StatusCode::CONFLICT, "already exists");
    ks.call(
        "POST",
        &admin::users("acme"),
        Some(ROOT_KEY),
        Some(json!({"user_id": "alice", "role": "member"})),
    )
    .await
    .assert_error(StatusCode::CONFLICT, "already exists");
    for (method, uri, body) in [
        (
            "POST",
            &admin::users("nope"),
            Some(json!({"user_id": "z", "role": "member"})),
        ),
        ("GET", &admin::users("nope"), None),
        ("DELETE", &admin::account("nope"), None),
        ("DELETE", &admin::user("nope", "alice"), None),
        (
            "PATCH",
            &admin::user("nope", "alice"),
            Some(json!({"role": "member"})),
        ),
        ("POST", &admin::user_key("nope", "alice"), None),
    ] {
        ks.call(method, uri, Some(ROOT_KEY), body)
            .await
            .assert_error(StatusCode::NOT_FOUND, "account nope not found");
    }
    for (method, uri, body) in [
        ("DELETE", &admin::user("acme", "zed"), None),
        (
            "PATCH",
            &admin::user("acme", "zed"),
            Some(json!({"role": "member"})),
        ),
        ("POST", &admin::user_key("acme", "zed"), None),
    ] {
        ks.call(method, uri, Some(ROOT_KEY), body)
            .await
            .assert_error(StatusCode::NOT_FOUND, "user zed not found");
    }
}

#[tokio::test]
async fn bad_key_ids() {
    let ks = Ks::new().await;
    let upper = "A".repeat(64);
    let short = "a".repeat(63);
    let long = "a".repeat(65);
    let nonhex = "g".repeat(64);
    for id in [upper.as_str(), &short, &long, &nonhex, "kg_rawkey", "%20"] {
        ks.lookup_id(id)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "64 lowercase hex");
    }
    // Malformed key ids are not counted as lookups.
    assert_eq!(ks.metric("keystore_lookups_total").await, 0);
    // A well-formed unknown id is a plain 404.
    let r = ks.lookup_id(&"0".repeat(64)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.problem_kind(), "key-not-found");
}

#[tokio::test]
async fn router_rejections_are_json() {
    let ks = Ks::new().await;
    for (method, uri, status) in [
        ("GET", "/", StatusCode::NOT_FOUND),
        ("GET", "/v1/keys", StatusCode::NOT_FOUND),
        ("GET", "/v1/keys/", StatusCode::NOT_FOUND),
        ("GET", "/api/v1/admin/nothing", StatusCode::NOT_FOUND),
        ("POST", "/healthz", StatusCode::METHOD_NOT_ALLOWED),
        (
            "DELETE",
            "/v1/keys/0000000000000000000000000000000000000000000000000000000000000000",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        ("PUT", admin::ACCOUNTS, StatusCode::METHOD_NOT_ALLOWED),
        (
            "GET",
            &admin::user_key("acme", "bob"),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "POST",
            "/v1/changes?since=0",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ] {
        let r = ks.call(method, uri, Some(ROOT_KEY), None).await;
        assert_eq!(r.status, status, "{method} {uri}");
        let needle = if status == StatusCode::NOT_FOUND {
            "no such endpoint"
        } else {
            "is not allowed on this route"
        };
        r.assert_error(status, needle);
    }
    // 405 keeps the Allow header.
    let r = ks.call("POST", "/healthz", None, None).await;
    assert!(r.headers.get("allow").is_some());
}
