//! PostgreSQL only: several keystore replicas on one database. (The rest of the suite runs on
//! PostgreSQL too when `KEYSTORE_TEST_DATABASE_URL` is set; these tests need it and say so on
//! stderr when it is not, and fail when `KEYSTORE_REQUIRE_POSTGRES=1`.)
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
    chosen_postgres_url, pg_connect, postgres_required, postgres_url, Connect as _, Ks,
    DATABASE_URL_VAR, REQUIRE_POSTGRES_VAR, ROOT_KEY,
};
use keygate_protocol::routes::admin;
use keystore::keys::key_id;
use keystore::{Config, Database};
use serde_json::json;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn postgres_is_configured_when_required() {
    if postgres_required() {
        assert!(
            chosen_postgres_url().is_some(),
            "{REQUIRE_POSTGRES_VAR}=1 but {DATABASE_URL_VAR} is not set: the PostgreSQL tests \
             would not run (export {DATABASE_URL_VAR}=$(scripts/postgres.sh start))"
        );
    }
}

#[tokio::test]
#[ignore = "PostgreSQL only: make test-postgres runs it"]
async fn the_suite_runs_on_postgres_when_asked_to() {
    let _ = postgres_url();
    let ks = Ks::new().await;
    assert!(ks.is_postgres());
    assert_eq!(ks.state.store.engine(), "postgres");
    assert!(matches!(ks.database, Database::Postgres(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "PostgreSQL only: make test-postgres runs it"]
async fn a_key_created_through_one_replica_is_found_through_another_at_once() {
    let _ = postgres_url();
    let r1 = Ks::new().await;
    let r2 = r1.replica().await;
    for i in 0..20 {
        let account = format!("acct{i}");
        let key = r1.create_account(&account, "admin").await;
        // No delay, no retry: the very next request, on the other replica.
        r2.assert_active(&key, &account, "admin", "admin").await;
        let user = r2.create_user(&key, &account, "bob", "member").await;
        r1.assert_active(&user, &account, "bob", "member").await;
        // Revoked on one, refused by the other at once.
        let r = r2
            .call("DELETE", &admin::user(&account, "bob"), Some(&key), None)
            .await;
        assert_eq!(r.status, StatusCode::OK);
        r1.assert_inactive(&user).await;
    }
    // One change log: both replicas answer the same feed.
    assert_eq!(r1.changes(1).await, r2.changes(1).await);
    assert_eq!(r1.revision().await, 1 + 20 * 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "PostgreSQL only: make test-postgres runs it"]
async fn a_poller_alternating_between_replicas_never_misses_a_change_of_concurrent_writers() {
    let _ = postgres_url();
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 30;
    let r1 = Arc::new(Ks::new().await);
    let r2 = Arc::new(r1.replica().await);
    let admin = r1.create_account("acme", "alice").await;
    let start = r1.revision().await;
    let done = Arc::new(AtomicBool::new(false));
    let polls = Arc::new(AtomicU64::new(0));

    let poller = tokio::spawn({
        let (r1, r2, done, polls) = (r1.clone(), r2.clone(), done.clone(), polls.clone());
        async move {
            let mut since = start;
            let mut seen: HashSet<String> = HashSet::new();
            loop {
                // Read before polling: the poll after the last write finished sees all of them.
                let finished = done.load(Ordering::SeqCst);
                let n = polls.fetch_add(1, Ordering::Relaxed);
                let replica = if n % 2 == 0 { &r1 } else { &r2 };
                let page = replica.changes(since).await;
                assert!(page.get("reset").is_none(), "{page}");
                let revision = page["revision"].as_i64().unwrap();
                assert!(revision >= since, "revision went back: {since} -> {page}");
                for id in page["changed"].as_array().unwrap() {
                    seen.insert(id.as_str().unwrap().to_owned());
                }
                since = revision;
                if page.get("more").is_none() && finished {
                    return (seen, since);
                }
            }
        }
    });

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let replica = if w % 2 == 0 { r1.clone() } else { r2.clone() };
            let admin = admin.clone();
            tokio::spawn(async move {
                let mut keys = Vec::with_capacity(PER_WRITER);
                for i in 0..PER_WRITER {
                    let user = format!("w{w}-u{i}");
                    keys.push(replica.create_user(&admin, "acme", &user, "member").await);
                }
                keys
            })
        })
        .collect();
    let mut created = Vec::new();
    for w in writers {
        created.extend(w.await.unwrap());
    }
    done.store(true, Ordering::SeqCst);
    let (seen, last) = poller.await.unwrap();

    let missed: Vec<&String> = created
        .iter()
        .filter(|k| !seen.contains(&key_id(k)))
        .collect();
    assert!(
        missed.is_empty(),
        "{} of {} created keys never appeared in the feed",
        missed.len(),
        created.len()
    );
    assert_eq!(last, r1.revision().await);
    assert_eq!(last, start + (WRITERS * PER_WRITER) as i64);
    eprintln!(
        "{} writes by {WRITERS} writers on 2 replicas, {} polls alternating between them: none missed",
        created.len(),
        polls.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "PostgreSQL only: make test-postgres runs it"]
async fn a_write_waits_for_an_in_flight_write_of_another_replica_and_reads_do_not() {
    let _ = postgres_url();
    let r1 = Ks::new().await;
    let r2 = Arc::new(r1.replica().await);
    let admin = r1.create_account("acme", "alice").await;
    let before = r1.revision().await;

    // A third replica's write in flight: it holds the writer lock and has drawn a revision
    // that is not committed yet.
    let raw = r1.pg.as_ref().unwrap().connect().await;
    raw.batch_execute("BEGIN").await.unwrap();
    let locked = raw
        .query(
            "SELECT value FROM meta WHERE name = 'writer' FOR UPDATE",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(locked.len(), 1);
    let in_flight = key_id("a key whose creation is in flight");
    let revision: i64 = raw
        .query_one(
            "INSERT INTO changes (key_id, kind, at) VALUES ($1, 'created', 0) RETURNING revision",
            &[&in_flight],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(revision, before + 1);

    // Replica 2's write waits for it...
    let write = tokio::spawn({
        let (r2, admin) = (r2.clone(), admin.clone());
        async move { r2.create_user(&admin, "acme", "bob", "member").await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !write.is_finished(),
        "a write did not wait for the writer lock"
    );

    // ...while reads go on, and the uncommitted revision is not served.
    let page = tokio::time::timeout(Duration::from_secs(2), r1.changes(before))
        .await
        .expect("a feed poll waited for a writer");
    assert_eq!(page, json!({"revision": before, "changed": []}));
    let page = tokio::time::timeout(Duration::from_secs(2), r2.changes(0))
        .await
        .expect("a feed poll waited for a writer");
    assert_eq!(page["revision"], before);
    tokio::time::timeout(
        Duration::from_secs(2),
        r2.assert_active(&admin, "acme", "alice", "admin"),
    )
    .await
    .expect("a lookup waited for a writer");

    raw.batch_execute("COMMIT").await.unwrap();
    let bob = tokio::time::timeout(Duration::from_secs(10), write)
        .await
        .expect("the write did not resume after the lock was released")
        .unwrap();
    // Both, in revision order: the one in flight first.
    let page = r1.changes(before).await;
    assert_eq!(page["changed"], json!([in_flight, key_id(&bob)]), "{page}");
    assert_eq!(page["revision"], before + 2);
}

#[tokio::test]
#[ignore = "PostgreSQL only: make test-postgres runs it"]
async fn a_newer_schema_or_a_foreign_meta_table_is_refused() {
    let _ = postgres_url();
    let ks = Ks::new().await;
    let schema = ks.pg.as_ref().unwrap();
    let raw = schema.connect().await;
    raw.batch_execute("UPDATE meta SET value = 5 WHERE name = 'schema_version'")
        .await
        .unwrap();
    let err = match keystore::open(&Config::with_database(ks.database.clone())).await {
        Ok(_) => panic!("opened"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("newer than this keystore supports"), "{err}");
    raw.batch_execute("DELETE FROM meta WHERE name = 'schema_version'")
        .await
        .unwrap();
    let err = match keystore::open(&Config::with_database(ks.database.clone())).await {
        Ok(_) => panic!("opened"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("not the keystore's"), "{err}");
}

/// A login role and a schema it owns, removed on drop.
struct OwnRole {
    base: String,
    role: String,
}

impl Drop for OwnRole {
    fn drop(&mut self) {
        let base = self.base.clone();
        let role = self.role.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let client = pg_connect(&base).await;
                let _ = client
                    .batch_execute(&format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'; \
                         DROP SCHEMA IF EXISTS {role} CASCADE; DROP ROLE IF EXISTS {role}"
                    ))
                    .await;
            });
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "PostgreSQL only: make test-postgres runs it"]
async fn healthz_is_503_while_the_database_cannot_be_reached() {
    let base = postgres_url();
    let admin = pg_connect(&base).await;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let guard = OwnRole {
        base: base.clone(),
        role: format!("ks_role_{}_{nanos}", std::process::id()),
    };
    let role = guard.role.clone();
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; CREATE SCHEMA {role} AUTHORIZATION {role}"
        ))
        .await
        .unwrap();
    let cfg: tokio_postgres::Config = base.parse().unwrap();
    let host = match &cfg.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        other => panic!("{other:?}"),
    };
    let url = format!(
        "host={host} port={} user={role} dbname={} options='-c search_path={role}'",
        cfg.get_ports()[0],
        cfg.get_dbname().unwrap()
    );
    let mut config = Config::postgres(url);
    config.root_key = Some(ROOT_KEY.to_owned());
    let ks = Ks::open_at(tempfile::tempdir().unwrap(), None, &config).await;
    assert_eq!(
        ks.call("GET", "/healthz", None, None).await.status,
        StatusCode::OK
    );

    // The database goes away for this replica: its connections are cut, new ones refused.
    admin
        .batch_execute(&format!(
            "ALTER ROLE {role} NOLOGIN; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
        ))
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let r = ks.call("GET", "/healthz", None, None).await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "database unavailable");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still {}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Lookups fail as store errors (never as "not found").
    let r = ks.lookup(ROOT_KEY).await;
    assert!(r.status.is_server_error(), "{}", r.status);

    // Back: the pool reconnects on its own.
    admin
        .batch_execute(&format!("ALTER ROLE {role} LOGIN"))
        .await
        .unwrap();
    let start = Instant::now();
    while ks.call("GET", "/healthz", None, None).await.status != StatusCode::OK {
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ks.assert_active(ROOT_KEY, "_system", "root", "root").await;
    drop(ks);
    drop(guard);
}

/// With a pool of 1 and of 4 connections (the store bench's size for one core), many more
/// concurrent lookups and writes than connections all answer, and every key written is found
/// at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "PostgreSQL only: make test-postgres runs it"]
async fn concurrent_lookups_and_writes_all_answer_with_small_pools() {
    for pool_size in [1, 4] {
        let _ = postgres_url();
        let ks = Arc::new(Ks::with(|c| c.pool_size = pool_size).await);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..8 {
            let ks = Arc::clone(&ks);
            tasks.spawn(async move {
                let account = format!("acct{i}");
                let key = ks.create_account(&account, "admin").await;
                Some((key, account))
            });
        }
        for i in 0..64 {
            let ks = Arc::clone(&ks);
            tasks.spawn(async move {
                let r = if i % 2 == 0 {
                    ks.lookup(ROOT_KEY).await
                } else {
                    ks.lookup(&format!("never-issued-{i}")).await
                };
                let want = if i % 2 == 0 {
                    StatusCode::OK
                } else {
                    StatusCode::NOT_FOUND
                };
                assert_eq!(r.status, want, "pool {pool_size}: {:?}", r.body);
                None
            });
        }
        let mut created = Vec::new();
        while let Some(done) = tasks.join_next().await {
            created.extend(done.unwrap());
        }
        assert_eq!(created.len(), 8, "pool {pool_size}");
        for (key, account) in &created {
            ks.assert_active(key, account, "admin", "admin").await;
        }
    }
}
