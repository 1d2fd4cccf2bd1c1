//! The key summary (`GET /v1/summary`) through the real router, on SQLite or PostgreSQL:
//! every live key id in it at the revision it states, extended from the change log, rebuilt
//! when it must be, one build for concurrent requests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use axum::http::StatusCode;
use common::{world, Ks, ROOT_KEY};
use keygate_protocol::routes::{self, admin};
use keygate_protocol::summary::{self, blocks_for, hashes_for, Summary};
use keygate_protocol::KeyId;
use keystore::store::SummarySettings;
use std::future::Future;
use std::time::Duration;

/// `GET /v1/summary`, decoded (asserting the status and the media type).
async fn fetch(ks: &Ks) -> Summary {
    let r = ks.call("GET", routes::SUMMARY, None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        summary::CONTENT_TYPE
    );
    Summary::decode(&r.body).unwrap()
}

fn holds(s: &Summary, raw_key: &str) -> bool {
    s.may_contain(&KeyId::of(raw_key.as_bytes()))
}

/// Builds for `reason` so far (0 before the first: the series is made by the first).
async fn builds(ks: &Ks, reason: &str) -> u64 {
    let r = ks.call("GET", "/metrics", None, None).await;
    let series = format!("keystore_summary_builds_total{{reason=\"{reason}\"}} ");
    String::from_utf8_lossy(&r.body)
        .lines()
        .find_map(|l| l.strip_prefix(&series).map(|v| v.parse().unwrap()))
        .unwrap_or(0)
}

/// A store whose summary settings are adjusted by `f`.
async fn with_summary(f: impl FnOnce(&mut SummarySettings)) -> Ks {
    Ks::with(|c| f(&mut c.summary)).await
}

async fn revoke_user(ks: &Ks, by: &str, account: &str, user: &str) {
    let r = ks
        .call("DELETE", &admin::user(account, user), Some(by), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

#[tokio::test]
async fn a_served_summary_holds_every_active_key_and_decodes_as_sized() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    let s = fetch(&ks).await;
    for key in [ROOT_KEY, &w.alice, &w.bob, &w.oscar, &w.olga] {
        assert!(holds(&s, key), "an active key is missing");
    }
    // The root key and the four users' keys, nothing else.
    assert_eq!(s.header.keys, 5);
    assert_eq!(s.header.revision, ks.revision().await as u64);
    assert_eq!(s.header.hashes, hashes_for(10));
    assert_eq!(s.header.blocks, blocks_for(5 * 5 / 4, 10));
    let decoded = summary::decode(&s.encode()).unwrap().0;
    assert_eq!(decoded, s.header);
    assert!(!holds(&s, "never-created-key-3f9a"), "an empty-ish summary");
    assert_eq!(ks.metric("keystore_summary_keys").await, 5);
    assert_eq!(
        ks.metric("keystore_summary_bytes").await,
        (summary::HEADER_BYTES + s.blocks().len()) as u64
    );
}

#[tokio::test]
async fn a_key_created_after_a_snapshot_is_in_the_next_answer_by_extension() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    let first = fetch(&ks).await;
    let carol = ks.create_user(&w.alice, "acme", "carol", "member").await;
    assert!(!holds(&first, &carol));
    let next = fetch(&ks).await;
    assert!(holds(&next, &carol), "the new key is missing");
    assert!(holds(&next, &w.bob), "an old key went missing");
    assert!(next.header.revision > first.header.revision);
    assert_eq!(next.header.revision, ks.revision().await as u64);
    assert_eq!(next.header.keys, first.header.keys + 1);
    assert_eq!(builds(&ks, "first").await, 1, "extended, not rebuilt");
    assert_eq!(ks.metric("keystore_summary_extensions_total").await, 1);
    // Nothing changed: the same snapshot, no new extension.
    assert_eq!(fetch(&ks).await, next);
    assert_eq!(ks.metric("keystore_summary_extensions_total").await, 1);
}

#[tokio::test]
async fn a_revoked_key_stays_in_an_extension() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    fetch(&ks).await;
    revoke_user(&ks, &w.alice, "acme", "bob").await;
    let s = fetch(&ks).await;
    assert!(holds(&s, &w.bob), "extensions only add");
    assert_eq!(ks.metric("keystore_summary_extensions_total").await, 1);
}

#[tokio::test]
async fn a_rebuild_when_the_snapshot_is_old_drops_a_revoked_key() {
    let ks = with_summary(|s| s.rebuild_after = Duration::ZERO).await;
    let w = world(&ks).await;
    assert!(holds(&fetch(&ks).await, &w.bob));
    revoke_user(&ks, &w.alice, "acme", "bob").await;
    let s = fetch(&ks).await;
    assert!(!holds(&s, &w.bob), "the revoked key is still there");
    assert!(holds(&s, &w.alice));
    assert_eq!(builds(&ks, "age").await, 1);
    assert_eq!(ks.metric("keystore_summary_extensions_total").await, 0);
}

#[tokio::test]
async fn a_rebuild_past_the_false_positive_limit_drops_a_revoked_key() {
    let ks = with_summary(|s| s.max_false_positive_rate = 1e-300).await;
    let w = world(&ks).await;
    assert!(holds(&fetch(&ks).await, &w.bob));
    revoke_user(&ks, &w.alice, "acme", "bob").await;
    let s = fetch(&ks).await;
    assert!(!holds(&s, &w.bob), "the revoked key is still there");
    assert!(holds(&s, &w.olga));
    assert_eq!(builds(&ks, "false_positive_rate").await, 1);
    assert_eq!(ks.metric("keystore_summary_extensions_total").await, 0);
}

#[tokio::test]
async fn a_summary_past_the_retained_log_is_rebuilt() {
    let ks = Ks::with(|c| c.changes_retention = 1).await;
    let w = world(&ks).await;
    fetch(&ks).await;
    let carol = ks.create_user(&w.alice, "acme", "carol", "member").await;
    ks.create_user(&w.alice, "acme", "dave", "member").await;
    let s = fetch(&ks).await;
    assert!(holds(&s, &carol));
    assert_eq!(builds(&ks, "pruned").await, 1);
}

#[tokio::test]
async fn a_summary_at_revision_zero_is_rebuilt_once_the_store_changes() {
    let ks = Ks::with(|c| c.root_key = None).await;
    let empty = fetch(&ks).await;
    assert_eq!((empty.header.revision, empty.header.keys), (0, 0));
    // The feed cannot extend from 0 (since=0 lists nothing): the first change rebuilds.
    let root_id = keystore::keys::key_id(ROOT_KEY);
    ks.state.store.upsert_root_key(root_id).await.unwrap();
    let s = fetch(&ks).await;
    assert!(holds(&s, ROOT_KEY), "the first key is missing");
    assert_eq!(s.header.revision, 1);
    assert_eq!(builds(&ks, "first").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_build() {
    let ks = std::sync::Arc::new(Ks::new().await);
    world(&ks).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let ks = ks.clone();
            tokio::spawn(async move { fetch(&ks).await })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(builds(&ks, "first").await, 1);
    assert_eq!(ks.metric("keystore_summary_requests_total").await, 8);
}

#[tokio::test]
async fn a_build_finishes_when_the_request_that_started_it_goes_away() {
    let ks = Ks::new().await;
    world(&ks).await;
    // Exactly one poll starts the work, then the request is dropped (a client's timeout).
    // Polled by hand: a zero timeout may let the build run before the timer fires.
    {
        let request = std::pin::pin!(ks.state.summaries.current(&ks.state.store));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(
            request.poll(&mut cx).is_pending(),
            "the build finished within its first poll"
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while builds(&ks, "first").await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the build was cancelled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fetch(&ks).await;
    assert_eq!(builds(&ks, "first").await, 1, "the next request rebuilt");
}

#[tokio::test]
async fn the_answer_revision_is_at_least_the_feeds() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    let feed = ks.revision().await as u64;
    assert!(fetch(&ks).await.header.revision >= feed);
    ks.create_user(&w.oscar, "other", "otto", "member").await;
    let feed = ks.revision().await as u64;
    let s = fetch(&ks).await;
    assert!(s.header.revision >= feed, "{} < {feed}", s.header.revision);
    assert_eq!(
        ks.metric("keystore_summary_revision").await,
        s.header.revision
    );
}
