//! Helpers for the in-process API tests: the real router over a real SQLite file in a temp dir,
//! driven with `tower::ServiceExt::oneshot`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    dead_code
)]

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt as _;
use keystore::{AppState, Config};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tempfile::TempDir;
use tower::ServiceExt as _;

pub const ROOT_KEY: &str = "root-test-key-Zq8Xv3Lp0Tn";

pub struct Ks {
    pub dir: TempDir,
    pub db: PathBuf,
    pub state: AppState,
    pub app: Router,
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response ({}) is not JSON: {e}: {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts an error response: `status`, JSON content type, and an "error" string
    /// containing `needle`.
    pub fn assert_error(&self, status: StatusCode, needle: &str) {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        let ct = self
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        assert!(ct.starts_with("application/json"), "content-type {ct:?}");
        let body = self.json();
        let msg = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error string in {body}"));
        assert!(
            msg.contains(needle),
            "error {msg:?} does not contain {needle:?}"
        );
        assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    }
}

impl Ks {
    pub async fn new() -> Ks {
        Ks::with(|_| {}).await
    }

    /// A store with the root key configured; `f` may adjust the config.
    pub async fn with(f: impl FnOnce(&mut Config)) -> Ks {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("keystore.db");
        let mut config = Config::new(&db);
        config.root_key = Some(ROOT_KEY.to_owned());
        f(&mut config);
        Ks::open_at(dir, db, &config).await
    }

    pub async fn open_at(dir: TempDir, db: PathBuf, config: &Config) -> Ks {
        let state = keystore::open(config).await.unwrap();
        let app = keystore::router(state.clone());
        Ks {
            dir,
            db,
            state,
            app,
        }
    }

    pub async fn send(&self, req: Request<Body>) -> Resp {
        let res = self.app.clone().oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// A request with an optional `x-api-key` and an optional JSON body.
    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(key) = key {
            b = b.header("x-api-key", key);
        }
        let req = match body {
            Some(v) => b
                .header("content-type", "application/json")
                .body(Body::from(v.to_string()))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        self.send(req).await
    }

    pub async fn create_account(&self, account: &str, admin: &str) -> String {
        let r = self
            .call(
                "POST",
                "/api/v1/admin/accounts",
                Some(ROOT_KEY),
                Some(json!({"account_id": account, "admin_user_id": admin})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        let v = r.json();
        assert_eq!(v["account_id"], account);
        assert_eq!(v["user_id"], admin);
        v["user_key"].as_str().unwrap().to_owned()
    }

    pub async fn create_user(&self, by: &str, account: &str, user: &str, role: &str) -> String {
        let r = self
            .call(
                "POST",
                &format!("/api/v1/admin/accounts/{account}/users"),
                Some(by),
                Some(json!({"user_id": user, "role": role})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        let v = r.json();
        assert_eq!(v["user_id"], user);
        v["user_key"].as_str().unwrap().to_owned()
    }

    pub async fn rotate(&self, by: &str, account: &str, user: &str) -> String {
        let r = self
            .call(
                "POST",
                &format!("/api/v1/admin/accounts/{account}/users/{user}/key"),
                Some(by),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let v = r.json();
        assert_eq!(v["user_id"], user);
        v["user_key"].as_str().unwrap().to_owned()
    }

    /// `GET /v1/keys/{key_id}` for a raw key.
    pub async fn lookup(&self, raw_key: &str) -> Resp {
        self.lookup_id(&keystore::keys::key_id(raw_key)).await
    }

    pub async fn lookup_id(&self, key_id: &str) -> Resp {
        self.call("GET", &format!("/v1/keys/{key_id}"), None, None)
            .await
    }

    /// Asserts that `raw_key` is active for (account, user, role).
    pub async fn assert_active(&self, raw_key: &str, account: &str, user: &str, role: &str) {
        let r = self.lookup(raw_key).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(
            r.json(),
            json!({"account_id": account, "user_id": user, "role": role})
        );
    }

    pub async fn assert_inactive(&self, raw_key: &str) {
        let r = self.lookup(raw_key).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.json(), json!({"error": "not found"}));
    }

    pub async fn changes(&self, since: i64) -> Value {
        let r = self
            .call("GET", &format!("/v1/changes?since={since}"), None, None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        r.json()
    }

    pub async fn revision(&self) -> i64 {
        self.changes(0).await["revision"].as_i64().unwrap()
    }

    /// The value of one counter from `GET /metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let r = self.call("GET", "/metrics", None, None).await;
        assert_eq!(r.status, StatusCode::OK);
        let text = String::from_utf8(r.body.to_vec()).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no metric {name} in {text}"))
            .parse()
            .unwrap()
    }
}

/// Key ids of raw keys, sorted.
pub fn ids(raw_keys: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = raw_keys.iter().map(|k| keystore::keys::key_id(k)).collect();
    v.sort();
    v
}

/// The "changed" list of a change-feed answer, sorted.
pub fn changed(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v["changed"]
        .as_array()
        .unwrap_or_else(|| panic!("no changed list in {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

/// Every byte of every file in `dir` (database, WAL, shared memory).
pub fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            out.extend(std::fs::read(&path).unwrap());
        }
    }
    out
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
