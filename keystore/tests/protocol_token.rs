//! The protocol token (`--protocol-token-file` / `KEYSTORE_PROTOCOL_TOKEN`): with one
//! configured, `GET /v1/keys/...`, `GET /v1/changes`, `GET /v1/summary` and `POST /v1/usage` need
//! `authorization: Bearer <token>`;
//! the admin API, `/healthz` and `/metrics` are unchanged. Through the real router over a real
//! database (SQLite, or PostgreSQL with `KEYSTORE_TEST_DATABASE_URL`).
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
use common::{Ks, Resp, ROOT_KEY};
use keygate_protocol::routes::{self, admin};
use keystore::keys::key_id;

const TOKEN: &str = "kgproto_5f3a9c2e7b1d48e6a0c4f2b9d7e1a3c5";

async fn with_token() -> Ks {
    Ks::with(|c| c.protocol_token = Some(TOKEN.to_owned())).await
}

/// `GET uri` with these `authorization` header values (none, one or several).
async fn get(ks: &Ks, uri: &str, authorization: &[&str]) -> Resp {
    let mut b = Request::builder().method("GET").uri(uri);
    for value in authorization {
        b = b.header("authorization", *value);
    }
    ks.send(b.body(Body::empty()).unwrap()).await
}

fn assert_refused(r: &Resp) {
    r.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"keygate\"");
}

#[tokio::test]
async fn protocol_endpoints_need_the_token() {
    let ks = with_token().await;
    let admin = ks.create_account("acme", "alice").await;
    let lookup = format!("/v1/keys/{}", key_id(&admin));
    let bearer = format!("Bearer {TOKEN}");
    for uri in [lookup.as_str(), "/v1/changes?since=0", routes::SUMMARY] {
        assert_refused(&get(&ks, uri, &[]).await);
        for wrong in [
            "Bearer kgproto_5f3a9c2e7b1d48e6a0c4f2b9d7e1a3c6".to_owned(),
            format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]),
            format!("Bearer {TOKEN}x"),
            format!("Basic {TOKEN}"),
            TOKEN.to_owned(),
            "Bearer".to_owned(),
            "Bearer ".to_owned(),
            format!("Bearer {ROOT_KEY}"),
        ] {
            assert_refused(&get(&ks, uri, &[&wrong]).await);
        }
        // The token twice, or with another value beside it: refused.
        assert_refused(&get(&ks, uri, &[&bearer, &bearer]).await);
        assert_refused(&get(&ks, uri, &[&bearer, "Bearer nope"]).await);
        // The right token, any case of the scheme.
        for ok in [
            bearer.clone(),
            format!("bearer {TOKEN}"),
            format!("BEARER  {TOKEN} "),
        ] {
            let r = get(&ks, uri, &[&ok]).await;
            assert_eq!(r.status, StatusCode::OK, "{ok:?}: {:?}", r.body);
        }
    }
    let r = get(&ks, &lookup, &[&bearer]).await;
    assert_eq!(r.json()["account_id"], "acme");
    // Refusals happen before the handlers: no lookup or changes request was counted.
    assert!(ks.metric("keystore_protocol_unauthorized_total").await >= 20);
    assert_eq!(ks.metric("keystore_lookups_total").await, 4);
}

#[tokio::test]
async fn usage_reports_need_the_token() {
    let ks = with_token().await;
    let admin = ks.create_account("acme", "alice").await;
    let body = serde_json::json!({ "key_ids": [key_id(&admin)] }).to_string();
    let post = |authorization: Option<String>| {
        let mut b = Request::builder()
            .method("POST")
            .uri("/v1/usage")
            .header("content-type", "application/json");
        if let Some(v) = authorization {
            b = b.header("authorization", v);
        }
        b.body(Body::from(body.clone())).unwrap()
    };
    assert_refused(&ks.send(post(None)).await);
    assert_refused(&ks.send(post(Some("Bearer wrong-token".into()))).await);
    let r = ks.send(post(Some(format!("Bearer {TOKEN}")))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

#[tokio::test]
async fn an_unknown_key_with_the_token_is_still_404_and_a_bad_id_400() {
    let ks = with_token().await;
    let bearer = format!("Bearer {TOKEN}");
    let r = get(&ks, &format!("/v1/keys/{}", key_id("nobody")), &[&bearer]).await;
    r.assert_error(StatusCode::NOT_FOUND, "no active key");
    let r = get(&ks, "/v1/keys/nothex", &[&bearer]).await;
    r.assert_error(StatusCode::BAD_REQUEST, "key_id");
    // Without the token, the same requests say nothing about the key or the id.
    assert_refused(&get(&ks, "/v1/keys/nothex", &[]).await);
}

#[tokio::test]
async fn admin_health_and_metrics_do_not_need_the_token() {
    let ks = with_token().await;
    // The admin API authenticates with its own keys, as before: x-api-key or Bearer.
    let admin = ks.create_account("acme", "alice").await;
    let r = get(&ks, &admin::users("acme"), &[&format!("Bearer {admin}")]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // The protocol token is not an admin key.
    let r = get(&ks, &admin::users("acme"), &[&format!("Bearer {TOKEN}")]).await;
    r.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(get(&ks, "/healthz", &[]).await.status, StatusCode::OK);
    assert_eq!(get(&ks, "/metrics", &[]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn without_a_token_the_protocol_is_open_as_before() {
    let ks = Ks::new().await;
    let admin = ks.create_account("acme", "alice").await;
    ks.assert_active(&admin, "acme", "alice", "admin").await;
    assert_eq!(ks.changes(0).await["changed"], serde_json::json!([]));
    // A client that sends a token anyway is not refused.
    let r = get(&ks, "/v1/changes?since=0", &[&format!("Bearer {TOKEN}")]).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn the_token_is_not_stored() {
    let ks = with_token().await;
    ks.create_account("acme", "alice").await;
    let stored = ks.stored_bytes().await;
    assert!(!common::contains(&stored, TOKEN.as_bytes()));
    assert!(!format!("{:?}", ks.state.protocol_token).contains(TOKEN));
}
