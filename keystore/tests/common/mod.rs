//! Helpers for the in-process API tests: the real router over a real database, driven with
//! `tower::ServiceExt::oneshot`.
//!
//! The database is a SQLite file in a temp dir, unless `KEYSTORE_TEST_DATABASE_URL` is set (a
//! `postgres://` URL, e.g. from `scripts/postgres.sh start`): then every store gets a fresh
//! PostgreSQL schema of its own in that database, dropped when the store is. So the same
//! tests run on both engines.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    dead_code,
    unused_imports
)]

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt as _;
use keygate_protocol::routes::admin;
use keystore::{AppState, Config, Database};
use serde_json::{json, Value};
use std::path::Path;
use tempfile::TempDir;
use tokio_postgres::NoTls;
use tower::ServiceExt as _;

/// A schema of its own in the test database, created and dropped with `psql` (the harness's
/// type, shared with the end-to-end tests).
pub use keygate_harness::PgSchema;
/// The variable that selects PostgreSQL (the harness's: one name, one policy for both).
pub use keygate_harness::DATABASE_URL_VAR;
/// The CA certificate of the test PostgreSQL's TLS certificate (`scripts/postgres.sh ca`).
pub const PG_CA_CERT_VAR: &str = "KEYSTORE_TEST_PG_CA_CERT";
/// Set to 1 (by the Makefile's PostgreSQL step) to make a missing [`DATABASE_URL_VAR`] an error.
pub const REQUIRE_POSTGRES_VAR: &str = "KEYSTORE_REQUIRE_POSTGRES";

/// The one PostgreSQL test policy. The shared suite runs on the engine the environment
/// chooses: PostgreSQL when [`DATABASE_URL_VAR`] is set ([`chosen_postgres_url`]), else
/// SQLite, so a plain `cargo test -p keystore` needs no PostgreSQL. A PostgreSQL-only test is
/// `#[ignore = "..."]` (listed as ignored, never passed silently) and is asked for by
/// `make test-postgres` (`-- --include-ignored`); asked for without the variable, it fails
/// saying how to get a database ([`postgres_url`], the harness's).
pub use keygate_harness::postgres_url;

/// The PostgreSQL URL the shared suite runs on, if [`DATABASE_URL_VAR`] chooses one.
pub fn chosen_postgres_url() -> Option<String> {
    std::env::var(DATABASE_URL_VAR)
        .ok()
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
}

/// Whether PostgreSQL was required (`KEYSTORE_REQUIRE_POSTGRES=1`).
pub fn postgres_required() -> bool {
    std::env::var(REQUIRE_POSTGRES_VAR).is_ok_and(|v| v.trim() == "1")
}

/// Creates a [`PgSchema`] in the database at `base` (`psql` runs off the async workers).
pub async fn create_schema(base: &str) -> PgSchema {
    let base = base.to_owned();
    tokio::task::spawn_blocking(move || {
        PgSchema::create(&base).unwrap_or_else(|e| panic!("cannot create a schema: {e}"))
    })
    .await
    .unwrap()
}

/// A plain connection to a [`PgSchema`].
pub trait Connect {
    async fn connect(&self) -> tokio_postgres::Client;
}

impl Connect for PgSchema {
    async fn connect(&self) -> tokio_postgres::Client {
        pg_connect(&self.url()).await
    }
}

/// A connection whose connection task runs on the current runtime.
pub async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

pub const ROOT_KEY: &str = "root-test-key-Zq8Xv3Lp0Tn";

pub struct Ks {
    pub dir: TempDir,
    pub database: Database,
    pub state: AppState,
    pub app: Router,
    /// The PostgreSQL schema, when running on PostgreSQL (dropped after everything else).
    pub pg: Option<PgSchema>,
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

    /// Asserts an error response: `status`, an RFC 9457 problem (`application/problem+json`,
    /// `type`, `title`, `status` and a `detail` containing `needle`); returns the problem.
    pub fn assert_error(&self, status: StatusCode, needle: &str) -> Value {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        let body = self.assert_problem();
        let msg = body["detail"].as_str().unwrap();
        assert!(
            msg.contains(needle),
            "detail {msg:?} does not contain {needle:?}"
        );
        body
    }

    /// Asserts that this response is an RFC 9457 problem consistent with its status (a 401
    /// with `WWW-Authenticate`), and returns it.
    pub fn assert_problem(&self) -> Value {
        let ct = self
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let raw = String::from_utf8_lossy(&self.body);
        assert_eq!(ct, "application/problem+json", "{} {raw}", self.status);
        let body = self.json();
        let kind = body["type"]
            .as_str()
            .unwrap_or_else(|| panic!("no type: {raw}"));
        let slug = kind
            .strip_prefix("https://keygate.dev/problems/")
            .unwrap_or_else(|| panic!("type {kind} is not a keygate problem"));
        assert!(
            !slug.is_empty() && slug.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
            "{kind}"
        );
        assert!(
            body["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{raw}"
        );
        assert_eq!(body["status"], json!(self.status.as_u16()), "{raw}");
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{raw}"
        );
        for member in body.as_object().unwrap().keys() {
            assert!(
                [
                    "type",
                    "title",
                    "status",
                    "detail",
                    "missing_capability",
                    "required_role",
                    "retry_after"
                ]
                .contains(&member.as_str()),
                "unexpected member {member}: {raw}"
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            assert!(
                self.headers.get("www-authenticate").is_some(),
                "401 without WWW-Authenticate: {raw}"
            );
        }
        if self.status == StatusCode::FORBIDDEN {
            assert!(
                body.get("missing_capability").is_some()
                    || body.get("required_role").is_some()
                    || body["detail"].as_str().unwrap().contains("_system"),
                "403 that does not say what is missing: {raw}"
            );
        }
        body
    }

    /// The problem's kind: the last segment of its `type`.
    pub fn problem_kind(&self) -> String {
        let body = self.assert_problem();
        let kind = body["type"].as_str().unwrap();
        kind.rsplit('/').next().unwrap().to_owned()
    }
}

impl Ks {
    pub async fn new() -> Ks {
        Ks::with(|_| {}).await
    }

    /// A store with the root key configured, on SQLite or (with `KEYSTORE_TEST_DATABASE_URL`)
    /// on a fresh PostgreSQL schema; `f` may adjust the config.
    pub async fn with(f: impl FnOnce(&mut Config)) -> Ks {
        let dir = tempfile::tempdir().unwrap();
        let (database, pg) = match chosen_postgres_url() {
            Some(base) => {
                let schema = create_schema(&base).await;
                (Database::Postgres(schema.url()), Some(schema))
            }
            None => (Database::Sqlite(dir.path().join("keystore.db")), None),
        };
        let mut config = Config::with_database(database);
        config.root_key = Some(ROOT_KEY.to_owned());
        f(&mut config);
        Ks::open_at(dir, pg, &config).await
    }

    pub async fn open_at(dir: TempDir, pg: Option<PgSchema>, config: &Config) -> Ks {
        let state = keystore::open(config).await.unwrap();
        let app = keystore::router(state.clone());
        Ks {
            dir,
            database: config.database.clone(),
            state,
            app,
            pg,
        }
    }

    /// Whether this store runs on PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.pg.is_some()
    }

    /// Closes this store and opens the same database again with a fresh configuration (no
    /// root key, defaults) adjusted by `f`.
    pub async fn reopen(self, f: impl FnOnce(&mut Config)) -> Ks {
        let Ks {
            dir,
            database,
            state,
            app,
            pg,
        } = self;
        drop((state, app));
        let mut config = Config::with_database(database);
        f(&mut config);
        Ks::open_at(dir, pg, &config).await
    }

    /// Another store on the same database (a second replica), with the same root key. It
    /// does not own the database: the PostgreSQL schema goes when `self` goes.
    pub async fn replica(&self) -> Ks {
        let mut config = Config::with_database(self.database.clone());
        config.root_key = Some(ROOT_KEY.to_owned());
        Ks::open_at(tempfile::tempdir().unwrap(), None, &config).await
    }

    /// Everything the database holds: every file of the SQLite database (with its WAL), or
    /// the text of every row of every table of the PostgreSQL schema.
    pub async fn stored_bytes(&self) -> Vec<u8> {
        match &self.pg {
            None => all_bytes(self.dir.path()),
            Some(schema) => {
                let client = schema.connect().await;
                let tables: Vec<String> = client
                    .query(
                        "SELECT table_name::text FROM information_schema.tables \
                         WHERE table_schema = $1",
                        &[&schema.name()],
                    )
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                assert!(tables.len() >= 5, "tables: {tables:?}");
                let mut out = Vec::new();
                for table in tables {
                    for row in client
                        .query(&format!("SELECT t::text FROM {table} t"), &[])
                        .await
                        .unwrap()
                    {
                        let text: String = row.get(0);
                        out.extend_from_slice(text.as_bytes());
                        out.push(b'\n');
                    }
                }
                out
            }
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
                admin::ACCOUNTS,
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
                &admin::users(account),
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
            .call("POST", &admin::user_key(account, user), Some(by), None)
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
        assert_eq!(r.problem_kind(), "key-not-found");
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

/// `POST uri` with a JSON body, authenticated by `by`.
pub async fn post(ks: &Ks, uri: &str, by: &str, body: Value) -> Resp {
    ks.call("POST", uri, Some(by), Some(body)).await
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The key reference of a raw key (what listings and audit entries call "key").
pub fn key_ref(raw: &str) -> String {
    keystore::keys::key_id(raw)[..16].to_owned()
}

/// acme (admin alice, member bob) and other (admin oscar, member olga): their raw keys.
pub struct World {
    pub alice: String,
    pub bob: String,
    pub oscar: String,
    pub olga: String,
}

/// Creates the accounts and users of [`World`].
pub async fn world(ks: &Ks) -> World {
    let alice = ks.create_account("acme", "alice").await;
    let bob = ks.create_user(&alice, "acme", "bob", "member").await;
    let oscar = ks.create_account("other", "oscar").await;
    let olga = ks.create_user(&oscar, "other", "olga", "member").await;
    World {
        alice,
        bob,
        oscar,
        olga,
    }
}
