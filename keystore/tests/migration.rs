//! The upgrade from schema version 1 (the schema main shipped before the key lifecycle, kept
//! verbatim in `tests/fixtures/`) to the current one, on SQLite or (with
//! `KEYSTORE_TEST_DATABASE_URL`) PostgreSQL: every account, user and key keeps working.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use axum::http::StatusCode;
use common::{
    changed, chosen_postgres_url, create_schema, ids, Connect as _, Ks, PgSchema, ROOT_KEY,
};
use keygate_protocol::routes::admin;
use keystore::keys::key_id;
use keystore::{Config, Database};
use serde_json::json;
use tempfile::TempDir;

const SQLITE_V1: &str = include_str!("fixtures/schema_v1_sqlite.sql");
const POSTGRES_V1: &str = include_str!("fixtures/schema_v1_postgres.sql");

const ALICE: &str = "kg_alice-key-from-version-1-0000000000000000";
const BOB: &str = "kg_bob-key-from-version-1-000000000000000000";
const BOB_OLD: &str = "kg_bob-rotated-away-in-version-1-00000000000";
const EVE: &str = "kg_eve-revoked-user-in-version-1-00000000000";
const GUS: &str = "kg_gus-revoked-account-in-version-1-00000000";

/// Rows as version 1 wrote them: a root key; account acme with admin alice, member bob (one
/// rotation behind him) and revoked member eve; revoked account gone; and the change log.
fn v1_rows() -> String {
    let [root, alice, bob, bob_old, eve, gus] =
        [ROOT_KEY, ALICE, BOB, BOB_OLD, EVE, GUS].map(key_id);
    format!(
        "INSERT INTO accounts VALUES ('_system', 1000, NULL), ('acme', 1000, NULL), \
             ('gone', 1000, 1500);
         INSERT INTO users VALUES ('_system', 'root', 'root', 1000, NULL), \
             ('acme', 'alice', 'admin', 1000, NULL), ('acme', 'bob', 'member', 1100, NULL), \
             ('acme', 'eve', 'member', 1100, 1200), ('gone', 'gus', 'admin', 1000, 1500);
         INSERT INTO keys VALUES ('{root}', '_system', 'root', 1000, NULL), \
             ('{alice}', 'acme', 'alice', 1000, NULL), ('{bob_old}', 'acme', 'bob', 1100, 1300), \
             ('{bob}', 'acme', 'bob', 1300, NULL), ('{eve}', 'acme', 'eve', 1100, 1200), \
             ('{gus}', 'gone', 'gus', 1000, 1500);
         INSERT INTO changes (key_id, kind, at) VALUES ('{root}', 'created', 1000), \
             ('{alice}', 'created', 1000), ('{bob_old}', 'created', 1100), \
             ('{eve}', 'created', 1100), ('{eve}', 'revoked', 1200), \
             ('{bob_old}', 'rotated', 1300), ('{bob}', 'created', 1300), \
             ('{gus}', 'revoked', 1500);"
    )
}

/// A database holding the version-1 schema and rows, and the config to open it.
async fn v1_database() -> (TempDir, Option<PgSchema>, Config) {
    let dir = tempfile::tempdir().unwrap();
    let (database, pg) = match chosen_postgres_url() {
        Some(base) => {
            let schema = create_schema(&base).await;
            let client = schema.connect().await;
            client.batch_execute(POSTGRES_V1).await.unwrap();
            client.batch_execute(&v1_rows()).await.unwrap();
            (Database::Postgres(schema.url()), Some(schema))
        }
        None => {
            let path = dir.path().join("keystore.db");
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(SQLITE_V1).unwrap();
            conn.execute_batch(&v1_rows()).unwrap();
            (Database::Sqlite(path), None)
        }
    };
    let mut config = Config::with_database(database);
    config.root_key = Some(ROOT_KEY.to_owned());
    (dir, pg, config)
}

/// The schema version recorded in the database.
async fn schema_version(ks: &Ks) -> i64 {
    match (&ks.pg, &ks.database) {
        (Some(schema), _) => schema
            .connect()
            .await
            .query_one("SELECT value FROM meta WHERE name = 'schema_version'", &[])
            .await
            .unwrap()
            .get(0),
        (None, Database::Sqlite(path)) => rusqlite::Connection::open(path)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap(),
        (None, Database::Postgres(_)) => unreachable!(),
    }
}

#[tokio::test]
async fn a_version_1_database_keeps_every_account_user_and_key() {
    let (dir, pg, config) = v1_database().await;
    let ks = Ks::open_at(dir, pg, &config).await;
    assert_eq!(schema_version(&ks).await, 4);

    // Every active key answers exactly as before (no expiry, no claims); the others do not.
    ks.assert_active(ROOT_KEY, "_system", "root", "root").await;
    ks.assert_active(ALICE, "acme", "alice", "admin").await;
    ks.assert_active(BOB, "acme", "bob", "member").await;
    for gone in [BOB_OLD, EVE, GUS] {
        ks.assert_inactive(gone).await;
    }
    // The change feed goes on from the same revision: opening changed nothing.
    assert_eq!(ks.changes(8).await, json!({"revision": 8, "changed": []}));
    assert_eq!(
        changed(&ks.changes(5).await),
        ids(&[BOB_OLD, BOB, GUS]),
        "old change rows are still served"
    );

    // Old keys are listed as "default", with no hint (it was never stored) or creator.
    let r = ks
        .call("GET", &admin::keys("acme", "bob"), Some(ALICE), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let bob_ref = &key_id(BOB)[..16];
    assert_eq!(
        r.json()["keys"],
        json!([{"key": bob_ref, "name": "default", "hint": null,
                "created_at": "1970-01-01T00:21:40Z", "created_by": null, "expires_at": null,
                "last_used_at": null, "claims": {}, "enabled": true,
                "capabilities": ["traffic", "own_keys"]}])
    );
    let r = ks
        .call("GET", &admin::users("acme"), Some(ALICE), None)
        .await;
    let users: Vec<String> = r.json()["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(users, ["alice", "bob"]);

    // The old keys work with the new features: rotation with grace, usage, claims, audit.
    let r = ks
        .call(
            "POST",
            &admin::key_rotate("acme", "bob", bob_ref),
            Some(BOB),
            Some(json!({"grace_s": 300})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let new_bob = r.json()["user_key"].as_str().unwrap().to_owned();
    ks.assert_active(&new_bob, "acme", "bob", "member").await;
    assert!(ks.lookup(BOB).await.json()["expires_at"].is_i64());
    assert_eq!(changed(&ks.changes(8).await), ids(&[BOB, &new_bob]));
    let r = ks
        .call(
            "POST",
            "/v1/usage",
            None,
            Some(json!({"key_ids": [key_id(ALICE)]})),
        )
        .await;
    assert_eq!(r.json(), json!({"recorded": 1}));
    let r = ks
        .call(
            "PATCH",
            &admin::account("acme"),
            Some(ROOT_KEY),
            Some(json!({"claims": {"plan": "pro"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        ks.lookup(ALICE).await.json()["claims"],
        json!({"plan": "pro"})
    );
    let audit = ks
        .call("GET", admin::AUDIT, Some(ROOT_KEY), None)
        .await
        .json();
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["key.rotate", "account.set_claims"]);
    // Version 4: entries name the acting key; keys, users and accounts can be disabled.
    assert_eq!(audit["entries"][0]["actor"]["key"], bob_ref);
    let r = ks
        .call(
            "PATCH",
            &admin::user("acme", "bob"),
            Some(ALICE),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    ks.assert_inactive(&new_bob).await;
    // Names (and ids) of revoked users and accounts are still never reused.
    ks.call(
        "POST",
        admin::ACCOUNTS,
        Some(ROOT_KEY),
        Some(json!({"account_id": "gone", "admin_user_id": "x"})),
    )
    .await
    .assert_error(StatusCode::CONFLICT, "gone");

    // Opening again is a no-op.
    let ks = ks.reopen(|c| c.root_key = Some(ROOT_KEY.to_owned())).await;
    assert_eq!(schema_version(&ks).await, 4);
    let alice = ks.lookup(ALICE).await.json();
    assert_eq!(
        (&alice["user_id"], &alice["claims"]),
        (&json!("alice"), &json!({"plan": "pro"}))
    );
    assert_eq!(
        ks.lookup(&new_bob).await.status,
        StatusCode::NOT_FOUND,
        "still disabled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_on_a_version_1_database_migrate_it_once() {
    let (dir, pg, config) = v1_database().await;
    let (a, b) = tokio::join!(keystore::open(&config), keystore::open(&config));
    let (a, b) = (a.unwrap(), b.unwrap());
    drop((a, b));
    let ks = Ks::open_at(dir, pg, &config).await;
    assert_eq!(schema_version(&ks).await, 4);
    ks.assert_active(BOB, "acme", "bob", "member").await;
    assert_eq!(ks.revision().await, 8);
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let ks = Ks::new().await;
    match (&ks.pg, &ks.database) {
        (Some(schema), _) => {
            schema
                .connect()
                .await
                .batch_execute("UPDATE meta SET value = 5 WHERE name = 'schema_version'")
                .await
                .unwrap();
        }
        (None, Database::Sqlite(path)) => {
            rusqlite::Connection::open(path)
                .unwrap()
                .pragma_update(None, "user_version", 5)
                .unwrap();
        }
        (None, Database::Postgres(_)) => unreachable!(),
    }
    let err = match keystore::open(&Config::with_database(ks.database.clone())).await {
        Ok(_) => panic!("opened a database of schema version 5"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("database schema version 5 is newer than this keystore supports (4)"),
        "{err}"
    );
}
