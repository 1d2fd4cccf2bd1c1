//! `GET /openapi.json`: the document is valid OpenAPI (checked by `openapi-spec-validator`
//! from PyPI, installed into `.tools/venv` by `scripts/setup.sh test`), every operation it
//! lists reaches a handler of the real router, and every route of the router goes through
//! `routes!` (which documents it), so the two cannot drift apart.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use axum::http::StatusCode;
use common::Ks;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

async fn document(ks: &Ks) -> Value {
    let r = ks.call("GET", "/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    r.json()
}

/// Every (method, path) the document lists.
fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if item.get(m).is_some() {
                ops.push((m.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    ops
}

#[tokio::test]
async fn every_documented_operation_reaches_a_handler() {
    let ks = Ks::new().await;
    let doc = document(&ks).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let ops = operations(&doc);
    // 26 routes of the keystore's router (keystore/README.md) plus this document.
    assert_eq!(ops.len(), 27, "{ops:?}");
    for (method, template) in &ops {
        let uri = template
            .replace("{key_id}", &"0".repeat(64))
            .replace("{key}", "0123456789abcdef")
            .replace(['{', '}'], "");
        let r = ks.call(method, &uri, None, None).await;
        let body = String::from_utf8_lossy(&r.body);
        assert_ne!(
            r.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri}: {body}"
        );
        assert!(!body.contains("no such endpoint"), "{method} {uri}: {body}");
    }
}

/// The router is built only from `routes!(...)` (documented handlers): a `.route(...)`,
/// `.route_service(...)` or `.nest(...)` next to them would serve an undocumented route.
#[test]
fn the_router_has_no_route_outside_routes_macro() {
    for file in [
        "src/api.rs",
        "src/api/lifecycle.rs",
        "src/api/doc.rs",
        "src/lib.rs",
    ] {
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
        for bypass in [".route(", ".route_service(", ".nest(", ".nest_service("] {
            assert!(
                !text.contains(bypass),
                "{file} adds a route with {bypass}...), which the OpenAPI document would not \
                 list: register it with .routes(routes!(handler)) and a #[utoipa::path]"
            );
        }
    }
}

/// `keystore openapi` prints the document the server serves.
#[tokio::test]
async fn the_binary_prints_the_served_document() {
    let out = Command::new(env!("CARGO_BIN_EXE_keystore"))
        .arg("openapi")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ks = Ks::new().await;
    assert_eq!(printed, document(&ks).await);
}

#[tokio::test]
async fn the_document_is_valid_openapi() {
    let validator = repo_root().join(".tools/venv/bin/openapi-spec-validator");
    if !validator.is_file() {
        let msg = format!(
            "{} is missing: run scripts/setup.sh test",
            validator.display()
        );
        assert!(std::env::var_os("KEYGATE_REQUIRE_TOOLS").is_none(), "{msg}");
        eprintln!("openapi validation not run: {msg}");
        return;
    }
    let ks = Ks::new().await;
    let doc = document(&ks).await;
    let file = ks.dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let out = Command::new(&validator).arg(&file).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openapi-spec-validator: {text}");
    assert!(text.contains("OK"), "{text}");
}
