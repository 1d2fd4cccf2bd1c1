//! Every error of every route is an RFC 9457 problem (`application/problem+json` with `type`,
//! `title`, `status`, `detail`; `WWW-Authenticate` on a 401; a 403 naming the missing
//! capability or role). The routes are taken from the served OpenAPI document, which lists
//! every route of the router (tests/openapi.rs), so a new route cannot be missed. Through the
//! real router over a real database (SQLite, or PostgreSQL with `KEYSTORE_TEST_DATABASE_URL`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{key_ref, world, Ks, Resp, ROOT_KEY};
use keygate_protocol::routes::admin;
use serde_json::{json, Value};

const TOKEN: &str = "kgproto_5f3a9c2e7b1d48e6a0c4f2b9d7e1a3c5";
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Every documented operation: (method, path template, operation).
async fn operations(ks: &Ks) -> Vec<(String, String, Value)> {
    let doc = ks.call("GET", "/openapi.json", None, None).await.json();
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if let Some(op) = item.get(m) {
                ops.push((m.to_ascii_uppercase(), path.clone(), op.clone()));
            }
        }
    }
    assert!(ops.len() > 20, "{ops:?}");
    ops
}

/// The template with acme's member bob and one of his keys filled in.
fn uri(template: &str, bob_key: &str) -> String {
    template
        .replace("{account}", "acme")
        .replace("{user}", "bob")
        .replace("{key}", &key_ref(bob_key))
        .replace("{key_id}", &"0".repeat(64))
}

fn is_admin(op: &Value) -> bool {
    op["tags"][0] == "admin"
}

fn is_protocol(op: &Value) -> bool {
    op["tags"][0] == "protocol"
}

/// `method uri` with `key` (x-api-key), a body and its content type.
async fn send(ks: &Ks, method: &str, uri: &str, key: &str, ct: &str, body: Vec<u8>) -> Resp {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("x-api-key", key)
        .header("content-type", ct)
        .body(Body::from(body))
        .unwrap();
    ks.send(req).await
}

fn assert_kind(r: &Resp, what: &str, status: StatusCode, kind: &str) -> Value {
    assert_eq!(
        r.status,
        status,
        "{what}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.problem_kind(), kind, "{what}");
    r.assert_problem()
}

#[tokio::test]
async fn every_route_answers_a_wrong_method_and_an_unknown_route_with_a_problem() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    for (method, template, _) in operations(&ks).await {
        // No route of the keystore takes PUT.
        let what = format!("PUT (not {method}) {template}");
        let r = ks
            .call("PUT", &uri(&template, &w.bob), Some(ROOT_KEY), None)
            .await;
        assert_kind(
            &r,
            &what,
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
        );
        assert!(r.headers.contains_key("allow"), "{what}");
    }
    let r = ks.call("GET", "/v2/nothing", None, None).await;
    assert_kind(&r, "unknown route", StatusCode::NOT_FOUND, "no-such-route");
}

#[tokio::test]
async fn every_admin_route_answers_401_with_a_challenge_and_403_naming_what_is_missing() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    let mut admin_ops = 0;
    for (method, template, op) in operations(&ks).await {
        if !is_admin(&op) {
            continue;
        }
        admin_ops += 1;
        let target = uri(&template, &w.bob);
        let body = op.get("requestBody").map(|_| json!({}));
        let r = ks.call(&method, &target, None, body.clone()).await;
        let what = format!("{method} {template} without a key");
        assert_kind(&r, &what, StatusCode::UNAUTHORIZED, "unauthorized");
        assert_eq!(
            r.headers["www-authenticate"], "Bearer realm=\"keygate\"",
            "{what}"
        );
        // olga: a member of another account (traffic and own_keys only).
        let r = ks.call(&method, &target, Some(&w.olga), body).await;
        let what = format!("{method} {template} by another account's member");
        let problem = assert_kind(&r, &what, StatusCode::FORBIDDEN, "forbidden");
        let named = match (&problem["missing_capability"], &problem["required_role"]) {
            (Value::String(cap), Value::Null) => cap == "account_admin",
            (Value::Null, Value::String(role)) => role == "root",
            _ => false,
        };
        assert!(named, "{what}: {problem}");
    }
    assert!(admin_ops > 15, "{admin_ops}");
}

#[tokio::test]
async fn every_route_with_a_body_answers_bad_json_wrong_type_and_too_large_with_problems() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    let mut with_body = 0;
    for (method, template, op) in operations(&ks).await {
        if op.get("requestBody").is_none() {
            continue;
        }
        with_body += 1;
        let target = uri(&template, &w.bob);
        let what = format!("{method} {template}");
        let r = send(
            &ks,
            &method,
            &target,
            ROOT_KEY,
            "application/json",
            b"{\"a\":".to_vec(),
        )
        .await;
        assert_kind(&r, &what, StatusCode::BAD_REQUEST, "malformed-body");
        let r = send(
            &ks,
            &method,
            &target,
            ROOT_KEY,
            "text/plain",
            b"{}".to_vec(),
        )
        .await;
        assert_kind(
            &r,
            &what,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
        );
        // Over the usage report's limit (1 MiB), and so over every other body's (16 KiB).
        let big = format!("{{\"x\":\"{}\"}}", "a".repeat(1024 * 1024 + 1));
        let r = send(
            &ks,
            &method,
            &target,
            ROOT_KEY,
            "application/json",
            big.into_bytes(),
        )
        .await;
        assert_kind(
            &r,
            &what,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
        );
    }
    assert!(with_body >= 10, "{with_body}");
}

#[tokio::test]
async fn every_protocol_route_answers_401_with_a_challenge_without_its_token() {
    let ks = Ks::with(|c| c.protocol_token = Some(TOKEN.to_owned())).await;
    let mut protocol = 0;
    for (method, template, op) in operations(&ks).await {
        if !is_protocol(&op) {
            continue;
        }
        protocol += 1;
        let target = uri(&template, "any").replace("{", "").replace("}", "");
        let body = op.get("requestBody").map(|_| json!({"key_ids": []}));
        let r = ks.call(&method, &target, None, body).await;
        let what = format!("{method} {template} without the protocol token");
        assert_kind(&r, &what, StatusCode::UNAUTHORIZED, "unauthorized");
        assert_eq!(
            r.headers["www-authenticate"], "Bearer realm=\"keygate\"",
            "{what}"
        );
    }
    assert_eq!(protocol, 4, "lookup, changes, summary, usage");
}

#[tokio::test]
async fn a_refused_key_creation_says_when_to_retry() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    let path = &admin::keys("acme", "bob");
    let mut last = None;
    for i in 0..200 {
        let r = ks
            .call(
                "POST",
                path,
                Some(&w.alice),
                Some(json!({"name": format!("k{i}")})),
            )
            .await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            last = Some(r);
            break;
        }
        if r.status == StatusCode::CREATED {
            let key = r.json()["user_key"].as_str().unwrap().to_owned();
            let revoke = format!("{path}/{}", key_ref(&key));
            assert_eq!(
                ks.call("DELETE", &revoke, Some(&w.alice), None)
                    .await
                    .status,
                200
            );
        }
    }
    let r = last.expect("no 429 after 200 key creations");
    let problem = assert_kind(&r, "429", StatusCode::TOO_MANY_REQUESTS, "rate-limited");
    let retry = problem["retry_after"].as_i64().unwrap();
    assert!(retry > 0, "{problem}");
    assert_eq!(r.headers["retry-after"], retry.to_string().as_str());
}
