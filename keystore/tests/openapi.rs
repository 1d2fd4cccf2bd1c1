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
use serde_json::{json, Value};
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
    // 27 routes of the keystore's router (keystore/README.md) plus this document.
    assert_eq!(ops.len(), 28, "{ops:?}");
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
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("src/api.rs"), root.join("src/lib.rs")];
    for entry in std::fs::read_dir(root.join("src/api")).unwrap() {
        files.push(entry.unwrap().path());
    }
    assert!(files.len() > 10, "src/api/ holds the routes: {files:?}");
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let file = path.display();
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

/// Every (method, path, operation) of the document.
fn operation_items(doc: &Value) -> Vec<(String, String, Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if let Some(op) = item.get(m) {
                ops.push((m.to_ascii_uppercase(), path.clone(), op.clone()));
            }
        }
    }
    ops
}

#[tokio::test]
async fn every_operation_has_a_summary_and_a_description() {
    let ks = Ks::new().await;
    let doc = document(&ks).await;
    for (method, path, op) in operation_items(&doc) {
        let summary = op["summary"].as_str().unwrap_or_default();
        let description = op["description"].as_str().unwrap_or_default();
        assert!(
            (3..=60).contains(&summary.len()) && !summary.ends_with('.'),
            "{method} {path}: summary {summary:?}"
        );
        assert!(
            description.len() > summary.len() && !description.contains("[`"),
            "{method} {path}: description {description:?}"
        );
    }
    let info = doc["info"]["description"].as_str().unwrap();
    assert!(
        info.contains("protocol_token") && !info.contains("unauthenticated"),
        "{info}"
    );
}

#[tokio::test]
async fn no_component_is_named_after_a_rust_type() {
    let ks = Ks::new().await;
    let doc = document(&ks).await;
    let names: Vec<&String> = doc["components"]["schemas"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    for name in &names {
        let rusty = [
            "BTreeMap", "HashMap", "Vec", "Option", "Box", "Arc", "Value", "String",
        ]
        .iter()
        .any(|t| name.starts_with(t))
            || name.contains(['<', ':', '_']);
        assert!(
            !rusty,
            "component {name} is named after a Rust type: {names:?}"
        );
    }
    assert!(names.iter().any(|n| *n == "Claims") && names.iter().any(|n| *n == "Problem"));
    // Rustdoc links ([`Name`]) mean nothing to a generated client's documentation.
    let text = doc.to_string();
    assert!(!text.contains("[`"), "a rustdoc link in the document");
}

/// Every property named `*_at` or `valid_until` is a `date-time`, except the lookup answer's
/// `expires_at` (Unix seconds: the protocol the filter reads).
#[tokio::test]
async fn every_time_is_a_date_time_and_every_limit_is_bounded() {
    let ks = Ks::new().await;
    let doc = document(&ks).await;
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        let Some(props) = schema["properties"].as_object() else {
            continue;
        };
        for (prop, s) in props {
            if !(prop.ends_with("_at") || prop == "valid_until") || name == "Identity" {
                continue;
            }
            let format = s["format"]
                .as_str()
                .or_else(|| s["oneOf"][1]["format"].as_str());
            assert_eq!(format, Some("date-time"), "{name}.{prop}: {s}");
        }
    }
    let mut limits = 0;
    for (method, path, op) in operation_items(&doc) {
        for p in op["parameters"].as_array().into_iter().flatten() {
            if p["name"] == "limit" {
                limits += 1;
                let s = &p["schema"];
                assert_eq!(
                    (&s["minimum"], &s["maximum"]),
                    (&json!(1), &json!(1000)),
                    "{method} {path}"
                );
            }
        }
    }
    assert_eq!(limits, 5, "audit (2), accounts, users and keys lists");
}

/// Each operation lists the errors it can answer: 409, 413 and 415 only on writes that take
/// a body, 500 and 503 on everything that reads the database, 401 and 403 on the admin API;
/// every error is a `Problem` as `application/problem+json`.
#[tokio::test]
async fn error_responses_fit_each_method_and_are_problems() {
    let ks = Ks::new().await;
    let doc = document(&ks).await;
    for (method, path, op) in operation_items(&doc) {
        let responses = op["responses"].as_object().unwrap();
        let has = |s: &str| responses.contains_key(s);
        let what = format!("{method} {path}");
        if method == "GET" || method == "DELETE" {
            for s in ["409", "413", "415"] {
                assert!(!has(s), "{what} lists {s}");
            }
        } else {
            assert!(has("413") && has("415") && has("400"), "{what}");
        }
        if !["/metrics", "/openapi.json"].contains(&path.as_str()) {
            assert!(has("503"), "{what}");
        }
        if path.starts_with("/v1/") || path.starts_with("/api/") {
            assert!(has("500") && has("401"), "{what}");
        }
        if path.starts_with("/api/") {
            assert!(has("403"), "{what}");
        }
        for (status, r) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    r["content"]["application/problem+json"]["schema"]["$ref"],
                    "#/components/schemas/Problem",
                    "{what} {status}"
                );
            }
        }
    }
}

/// A `keystore serve` process on a fresh SQLite file and a free port, killed on drop.
struct Served {
    child: std::process::Child,
    url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path) -> Served {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_keystore"))
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(dir.join("ks.db"))
        .env_remove("KEYSTORE_DATABASE_URL")
        .env_remove("KEYSTORE_PROTOCOL_TOKEN")
        .env("KEYSTORE_ROOT_KEY", common::ROOT_KEY)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Drain stderr for the whole life of the process, reporting the ready line.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("keystore listening on ") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("keystore serve printed no ready line");
    Served {
        child,
        url: format!("http://{addr}"),
    }
}

/// A client generated from the served `/openapi.json` by a real generator
/// (`openapi-python-client` from PyPI, pinned in scripts/setup.sh) drives a whole lifecycle
/// against the real keystore binary: tests/openapi_client.py. The generator must not skip
/// anything but the metrics' text body.
#[test]
fn a_generated_python_client_drives_a_whole_lifecycle() {
    let venv = repo_root().join(".tools/venv/bin");
    let generator = venv.join("openapi-python-client");
    if !generator.is_file() {
        let msg = format!(
            "{} is missing: run scripts/setup.sh test",
            generator.display()
        );
        assert!(std::env::var_os("KEYGATE_REQUIRE_TOOLS").is_none(), "{msg}");
        eprintln!("generated client not tested: {msg}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let served = serve(dir.path());
    let config = dir.path().join("generator.yml");
    // The metrics are OpenMetrics text and the key summary a binary body: the generator knows
    // text/plain and application/octet-stream, not these media types.
    std::fs::write(
        &config,
        "content_type_overrides:\n  application/openmetrics-text: text/plain\n  \
         application/vnd.keygate.summary: application/octet-stream\n",
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        venv.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(&generator)
        .args(["generate", "--meta", "none", "--url"])
        .arg(format!("{}/openapi.json", served.url))
        .arg("--output-path")
        .arg(dir.path().join("keygate_client"))
        .arg("--config")
        .arg(&config)
        .env("PATH", &path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openapi-python-client: {text}");
    for warning in [
        "Cannot parse",
        "will be omitted",
        "Skipping",
        "not in PATH",
        "Error",
    ] {
        assert!(
            !text.contains(warning),
            "openapi-python-client warned: {text}"
        );
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openapi_client.py");
    let out = Command::new(venv.join("python"))
        .arg(&script)
        .args([served.url.as_str(), common::ROOT_KEY])
        .env("PYTHONPATH", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.ends_with("generated client: lifecycle ok\n"),
        "{stdout}"
    );
}
