//! The change feed (`GET /v1/changes?since=N`) through the real router.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use axum::http::StatusCode;
use common::{changed, ids, Ks, ROOT_KEY};
use keygate_protocol::routes::admin;
use keystore::keys::key_id;
use serde_json::json;

#[tokio::test]
async fn since_zero_returns_current_revision_and_no_changes() {
    let ks = Ks::with(|c| c.root_key = None).await;
    assert_eq!(ks.changes(0).await, json!({"revision": 0, "changed": []}));

    let ks = Ks::new().await;
    // Installing the root key is the first change.
    assert_eq!(ks.changes(0).await, json!({"revision": 1, "changed": []}));
    assert_eq!(
        ks.changes(1).await,
        json!({"revision": 1, "changed": []}),
        "nothing after the current revision"
    );
    ks.create_account("acme", "alice").await;
    assert_eq!(ks.changes(0).await, json!({"revision": 2, "changed": []}));
    assert_eq!(ks.metric("keystore_changes_requests_total").await, 3);
}

#[tokio::test]
async fn feed_lists_changed_key_ids_with_monotonic_revisions() {
    let ks = Ks::new().await;
    let mut last = ks.revision().await;
    assert_eq!(last, 1, "installing the root key is revision 1");

    let admin = ks.create_account("acme", "alice").await;
    let feed = ks.changes(last).await;
    assert_eq!(changed(&feed), ids(&[&admin]));
    let rev = feed["revision"].as_i64().unwrap();
    assert!(rev > last);
    last = rev;

    let bob = ks.create_user(&admin, "acme", "bob", "member").await;
    let feed = ks.changes(last).await;
    assert_eq!(changed(&feed), ids(&[&bob]));
    assert!(feed["revision"].as_i64().unwrap() > last);
    assert!(
        feed.get("more").is_none() && feed.get("reset").is_none(),
        "{feed}"
    );
    last = feed["revision"].as_i64().unwrap();

    // A key changed several times is listed once.
    for role in ["reader", "admin", "member"] {
        let r = ks
            .call(
                "PATCH",
                &admin::user("acme", "bob"),
                Some(&admin),
                Some(json!({"role": role})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let feed = ks.changes(last).await;
    assert_eq!(feed["changed"], json!([key_id(&bob)]));
    assert_eq!(feed["revision"].as_i64().unwrap(), last + 3);

    // Failed writes do not advance the revision.
    let rev = ks.revision().await;
    ks.call(
        "POST",
        admin::ACCOUNTS,
        Some(ROOT_KEY),
        Some(json!({"account_id": "acme", "admin_user_id": "x"})),
    )
    .await
    .assert_error(StatusCode::CONFLICT, "acme");
    ks.call(
        "POST",
        &admin::users("acme"),
        Some(&admin),
        Some(json!({"user_id": "bob", "role": "member"})),
    )
    .await
    .assert_error(StatusCode::CONFLICT, "bob");
    assert_eq!(ks.revision().await, rev);

    // Each intermediate revision shows only what happened after it.
    let everything = ks.changes(1).await;
    assert_eq!(changed(&everything), ids(&[&admin, &bob]));
    let after_admin = ks.changes(2).await;
    assert_eq!(changed(&after_admin), ids(&[&bob]));
}

#[tokio::test]
async fn more_pages_over_a_thousand_changes() {
    let ks = Ks::new().await;
    let admin = ks.create_account("acme", "alice").await;
    let start = ks.revision().await;
    let mut keys = vec![ks.create_user(&admin, "acme", "bob", "member").await];
    // Each rotation logs two changes: 1 + 2 * 550 = 1101 changes.
    for _ in 0..550 {
        // By root: a user's own rotations are rate-bounded (lifecycle::MAX_KEY_CREATIONS).
        keys.push(ks.rotate(ROOT_KEY, "acme", "bob").await);
    }
    let end = ks.revision().await;
    assert_eq!(end, start + 1101);

    let page1 = ks.changes(start).await;
    assert_eq!(page1["more"], json!(true), "{}", page1["revision"]);
    assert_eq!(page1["revision"].as_i64().unwrap(), start + 1000);
    let first = page1["changed"].as_array().unwrap().len();
    // 1000 rows: bob's first key, then (revoked, created) pairs; each key listed once:
    // keys 0..=499 (row 1000 revokes key 499; its successor is on the next page).
    assert_eq!(first, 500);

    let page2 = ks.changes(start + 1000).await;
    assert!(page2.get("more").is_none(), "{page2}");
    assert_eq!(page2["revision"].as_i64().unwrap(), end);

    let mut all: Vec<String> = changed(&page1);
    all.extend(changed(&page2));
    all.sort();
    all.dedup();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    assert_eq!(all, ids(&refs));

    // Exactly 1000 pending changes fit in one page.
    let page = ks.changes(end - 1000).await;
    assert!(page.get("more").is_none());
    assert_eq!(page["revision"].as_i64().unwrap(), end);
}

#[tokio::test]
async fn reset_after_pruning() {
    let ks = Ks::with(|c| c.changes_retention = 5).await;
    let admin = ks.create_account("acme", "alice").await; // revision 2
    let mut users = Vec::new();
    for i in 0..6 {
        users.push(
            ks.create_user(&admin, "acme", &format!("u{i}"), "member")
                .await,
        );
    }
    let rev = ks.revision().await;
    assert_eq!(rev, 8);
    // Revisions 4..=8 are kept: since 3 still works, since 2 and older must reset.
    assert_eq!(
        changed(&ks.changes(3).await),
        ids(&users[1..].iter().map(String::as_str).collect::<Vec<_>>())
    );
    for since in [1, 2] {
        assert_eq!(
            ks.changes(since).await,
            json!({"revision": rev, "reset": true}),
            "since={since}"
        );
    }
    // since=0 is a cold start, never a reset.
    assert_eq!(ks.changes(0).await, json!({"revision": rev, "changed": []}));

    // Lowering the retention at restart prunes straight away.
    let ks = ks
        .reopen(|c| {
            c.changes_retention = 2;
            c.root_key = Some(ROOT_KEY.to_owned());
        })
        .await;
    assert_eq!(ks.changes(5).await, json!({"revision": 8, "reset": true}));
    assert_eq!(changed(&ks.changes(6).await).len(), 2);
}

#[tokio::test]
async fn reset_when_since_is_ahead_of_the_store() {
    let ks = Ks::new().await;
    ks.create_account("acme", "alice").await;
    let rev = ks.revision().await;
    for since in [rev + 1, rev + 1000, i64::MAX] {
        assert_eq!(
            ks.changes(since).await,
            json!({"revision": rev, "reset": true})
        );
    }
    let r = ks
        .call("GET", "/v1/changes?since=18446744073709551615", None, None)
        .await;
    assert_eq!(r.json(), json!({"revision": rev, "reset": true}));
}

#[tokio::test]
async fn invalid_since_is_rejected() {
    let ks = Ks::new().await;
    for (uri, needle) in [
        ("/v1/changes", "since"),
        ("/v1/changes?other=1", "since"),
        ("/v1/changes?since=", "since"),
        ("/v1/changes?since=abc", "since"),
        ("/v1/changes?since=-1", "since"),
        ("/v1/changes?since=1.5", "since"),
        ("/v1/changes?since=18446744073709551616", "since"),
    ] {
        ks.call("GET", uri, None, None)
            .await
            .assert_error(StatusCode::BAD_REQUEST, needle);
    }
}

#[tokio::test]
async fn created_lists_keys_whose_only_change_is_their_creation() {
    let ks = Ks::new().await;
    let start = ks.revision().await;
    let admin = ks.create_account("acme", "alice").await;
    let bob = ks.create_user(&admin, "acme", "bob", "member").await;
    let feed = ks.changes(start).await;
    assert_eq!(changed(&feed), ids(&[&admin, &bob]));
    assert_eq!(feed["created"], json!([key_id(&admin), key_id(&bob)]));

    let after_create = ks.revision().await;
    let r = ks
        .call("DELETE", &admin::user("acme", "bob"), Some(&admin), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let feed = ks.changes(after_create).await;
    assert_eq!(changed(&feed), ids(&[&bob]));
    assert!(
        feed.get("created").is_none(),
        "a revocation is not a creation: {feed}"
    );

    // Created then revoked within one page: only in `changed`.
    let feed = ks.changes(start).await;
    assert_eq!(changed(&feed), ids(&[&admin, &bob]));
    assert_eq!(feed["created"], json!([key_id(&admin)]));
}
