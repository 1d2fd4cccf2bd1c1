//! Importing a key chosen by the administrator (`"user_key"` on create account, create user
//! and rotate), through the real router over a real database.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use axum::http::StatusCode;
use common::{changed, contains, ids, post, Ks, Resp, ROOT_KEY};
use keygate_protocol::routes::admin;
use keystore::keys::key_id;
use serde_json::json;

const ACCOUNTS: &str = admin::ACCOUNTS;
/// Keys as another system might have issued them (32+ bytes of visible ASCII, at least 128
/// bits of estimated entropy).
const LEGACY_1: &str = "legacy-0123456789abcdef0123456789abcdef";
const LEGACY_2: &str = "sk_live_!#$%&'()*+,-./:;<=>?@[\\]^_`{|}~9";
const LEGACY_3: &str = "LEGACY3-9f86d081884c7d659a2feaa0c55ad015";
/// Long enough, but too weak (estimated entropy under 128 bits): a run of one character, and a
/// repeated block.
const WEAK_1: &str = "LEGACY3-zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz";
const WEAK_2: &str = "abcd1234abcd1234abcd1234abcd1234";

/// Asserts a successful answer that returns exactly `key`, uncacheable.
fn assert_returns_key(r: &Resp, status: StatusCode, key: &str) {
    assert_eq!(r.status, status, "{:?}", r.body);
    assert_eq!(r.json()["user_key"], key);
    assert_eq!(r.headers["cache-control"], "no-store");
}

#[tokio::test]
async fn imported_keys_are_stored_and_looked_up_by_key_id() {
    let ks = Ks::new().await;
    let rev0 = ks.revision().await;

    // The end-to-end scenario: a key unknown at first (a proxy may have cached the 404)...
    ks.assert_inactive(LEGACY_1).await;
    // ...is accepted once it is created.
    let r = post(
        &ks,
        ACCOUNTS,
        ROOT_KEY,
        json!({"account_id": "acme", "admin_user_id": "alice", "user_key": LEGACY_1}),
    )
    .await;
    assert_returns_key(&r, StatusCode::CREATED, LEGACY_1);
    assert_eq!(
        r.json(),
        json!({"account_id": "acme", "user_id": "alice", "user_key": LEGACY_1})
    );
    let r = ks.lookup_id(&key_id(LEGACY_1)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"account_id": "acme", "user_id": "alice", "role": "admin"})
    );

    // The imported key authenticates the admin API, both ways, like a minted one.
    let r = post(
        &ks,
        &admin::users("acme"),
        LEGACY_1,
        json!({"user_id": "bob", "role": "member", "user_key": LEGACY_2}),
    )
    .await;
    assert_returns_key(&r, StatusCode::CREATED, LEGACY_2);
    assert_eq!(
        r.json(),
        json!({"user_id": "bob", "user_key": LEGACY_2, "capabilities": ["traffic", "own_keys"]})
    );
    ks.assert_active(LEGACY_2, "acme", "bob", "member").await;
    let r = ks
        .send(
            axum::http::Request::builder()
                .uri(admin::users("acme"))
                .header("authorization", format!("Bearer {LEGACY_1}"))
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    // Without user_key (or with null) a key is still minted.
    let carol = ks.create_user(LEGACY_1, "acme", "carol", "member").await;
    assert!(carol.starts_with("kg_"), "{carol}");
    let r = post(
        &ks,
        &admin::users("acme"),
        LEGACY_1,
        json!({"user_id": "dave", "role": "member", "user_key": null}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let dave = r.json()["user_key"].as_str().unwrap().to_owned();
    assert!(dave.starts_with("kg_"), "{dave}");

    // The change feed lists the imported key ids like any created key.
    let feed = ks.changes(rev0).await;
    assert_eq!(
        changed(&feed),
        ids(&[LEGACY_1, LEGACY_2, &carol, &dave]),
        "{feed}"
    );
    assert_eq!(feed["revision"].as_i64().unwrap(), rev0 + 4);

    // Only the key ids are stored.
    for raw in [LEGACY_1, LEGACY_2] {
        let stored = ks.stored_bytes().await;
        assert!(!contains(&stored, raw.as_bytes()));
        assert!(contains(&stored, key_id(raw).as_bytes()));
    }
}

#[tokio::test]
async fn length_boundaries_and_every_visible_character_are_accepted() {
    let ks = Ks::new().await;
    let admin = ks.create_account("acme", "alice").await;
    // Hex digits of SHA-256 digests: random-looking, 32 and 512 characters.
    let min = key_id("min")[..32].to_owned();
    let max: String = (0..8).map(|i| key_id(&format!("max{i}"))).collect();
    let visible: String = (0x21u8..=0x7e).map(char::from).collect();
    for (user, key) in [("u-min", &min), ("u-max", &max), ("u-all", &visible)] {
        let r = post(
            &ks,
            &admin::users("acme"),
            &admin,
            json!({"user_id": user, "role": "member", "user_key": key}),
        )
        .await;
        assert_returns_key(&r, StatusCode::CREATED, key);
        ks.assert_active(key, "acme", user, "member").await;
    }
}

#[tokio::test]
async fn invalid_keys_are_rejected_naming_user_key() {
    let ks = Ks::new().await;
    let admin = ks.create_account("acme", "alice").await;
    let bob = ks.create_user(&admin, "acme", "bob", "member").await;
    let rev = ks.revision().await;
    let pad = key_id("pad")[..32].to_owned();
    let bad: Vec<(String, &str)> = vec![
        (WEAK_1.to_owned(), "too weak"),
        (WEAK_2.to_owned(), "too weak"),
        ("k".repeat(32), "too weak"),
        ("k".repeat(512), "too weak"),
        (String::new(), "too short"),
        ("k".repeat(31), "too short"),
        ("kg_short".to_owned(), "too short"),
        ("k".repeat(513), "too long"),
        ("k".repeat(4096), "too long"),
        (format!("{pad} tail"), "visible ASCII"),
        (format!(" {pad}"), "visible ASCII"),
        (format!("{pad} "), "visible ASCII"),
        (format!("{pad}\t"), "visible ASCII"),
        (format!("{pad}\n"), "visible ASCII"),
        (format!("{pad}\r\nx-injected: 1"), "visible ASCII"),
        (format!("{pad}\u{0}"), "visible ASCII"),
        (format!("{pad}\u{1b}"), "visible ASCII"),
        (format!("{pad}\u{7f}"), "visible ASCII"),
        (format!("{pad}é"), "visible ASCII"),
        (format!("{pad}\u{a0}"), "visible ASCII"),
        (format!("{pad}🔑"), "visible ASCII"),
    ];
    for (key, needle) in &bad {
        let requests = [
            (
                ACCOUNTS.to_owned(),
                ROOT_KEY,
                json!({"account_id": "newco", "admin_user_id": "a", "user_key": key}),
            ),
            (
                admin::users("acme"),
                admin.as_str(),
                json!({"user_id": "carol", "role": "member", "user_key": key}),
            ),
            (
                admin::user_key("acme", "bob"),
                admin.as_str(),
                json!({"user_key": key}),
            ),
        ];
        for (uri, by, body) in requests {
            let r = post(&ks, &uri, by, body).await;
            r.assert_error(StatusCode::BAD_REQUEST, "user_key");
            r.assert_error(StatusCode::BAD_REQUEST, needle);
            if !key.is_empty() {
                assert!(
                    !contains(&r.body, key.as_bytes()),
                    "the error echoes the key: {:?}",
                    r.body
                );
            }
        }
    }
    // Wrong JSON types are 400 too.
    for value in [json!(12345), json!(["x"]), json!({"k": "v"}), json!(true)] {
        post(
            &ks,
            &admin::user_key("acme", "bob"),
            &admin,
            json!({ "user_key": value }),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid type");
    }
    // Nothing was written: no revision, no account, no user, bob's key unchanged.
    assert_eq!(ks.revision().await, rev);
    ks.assert_active(&bob, "acme", "bob", "member").await;
    ks.create_account("newco", "a").await;
    ks.create_user(&admin, "acme", "carol", "member").await;
}

#[tokio::test]
async fn duplicate_keys_conflict_without_saying_whose() {
    // A root key long enough to be importable, to show it is protected as well.
    let root = "root-key-long-enough-to-import-0123456789";
    let ks = Ks::with(|c| c.root_key = Some(root.to_owned())).await;
    let r = post(
        &ks,
        ACCOUNTS,
        root,
        json!({"account_id": "acme", "admin_user_id": "alice", "user_key": LEGACY_1}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = post(
        &ks,
        &admin::users("acme"),
        LEGACY_1,
        json!({"user_id": "bob", "role": "member", "user_key": LEGACY_2}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    // bob rotates away from LEGACY_2: it is revoked, but still may not be imported again.
    let bob = ks.rotate(LEGACY_2, "acme", "bob").await;
    ks.assert_inactive(LEGACY_2).await;
    let rev = ks.revision().await;

    for taken in [LEGACY_1, LEGACY_2, &bob, root] {
        let requests = [
            (
                ACCOUNTS.to_owned(),
                root,
                json!({"account_id": "other", "admin_user_id": "x", "user_key": taken}),
            ),
            (
                admin::users("acme"),
                LEGACY_1,
                json!({"user_id": "carol", "role": "member", "user_key": taken}),
            ),
            (
                admin::user_key("acme", "alice"),
                LEGACY_1,
                json!({"user_key": taken}),
            ),
            (
                admin::user_key("acme", "bob"),
                root,
                json!({"user_key": taken}),
            ),
        ];
        for (uri, by, body) in requests {
            let r = post(&ks, &uri, by, body).await;
            let problem = r.assert_error(StatusCode::CONFLICT, "user_key");
            let msg = problem["detail"].as_str().unwrap().to_owned();
            for secret in ["acme", "alice", "bob", "_system", "root", taken] {
                assert!(!msg.contains(secret), "{msg:?} reveals {secret:?}");
            }
        }
    }
    // The failed calls were rolled back entirely.
    assert_eq!(ks.revision().await, rev);
    ks.assert_active(LEGACY_1, "acme", "alice", "admin").await;
    ks.assert_active(&bob, "acme", "bob", "member").await;
    ks.assert_active(root, "_system", "root", "root").await;
    let r = post(
        &ks,
        ACCOUNTS,
        root,
        json!({"account_id": "other", "admin_user_id": "x", "user_key": LEGACY_3}),
    )
    .await;
    assert_returns_key(&r, StatusCode::CREATED, LEGACY_3);
    ks.create_user(LEGACY_1, "acme", "carol", "member").await;
}

#[tokio::test]
async fn rotate_with_a_provided_key_revokes_the_old_one() {
    let ks = Ks::new().await;
    let admin = ks.create_account("acme", "alice").await;
    let bob1 = ks.create_user(&admin, "acme", "bob", "member").await;
    let rev0 = ks.revision().await;

    let r = post(
        &ks,
        &admin::user_key("acme", "bob"),
        &admin,
        json!({"user_key": LEGACY_1}),
    )
    .await;
    assert_returns_key(&r, StatusCode::OK, LEGACY_1);
    assert_eq!(
        r.json(),
        json!({"user_id": "bob", "user_key": LEGACY_1, "capabilities": ["traffic", "own_keys"]})
    );
    ks.assert_inactive(&bob1).await;
    ks.assert_active(LEGACY_1, "acme", "bob", "member").await;
    let feed = ks.changes(rev0).await;
    assert_eq!(changed(&feed), ids(&[&bob1, LEGACY_1]));
    assert_eq!(feed["revision"].as_i64().unwrap(), rev0 + 2);

    // The user itself may not import a key value (finding 4: an oracle); its admin may.
    let rev1 = ks.revision().await;
    post(
        &ks,
        &admin::user_key("acme", "bob"),
        LEGACY_1,
        json!({"user_key": LEGACY_2}),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "account_admin");
    assert_eq!(ks.revision().await, rev1);
    ks.assert_active(LEGACY_1, "acme", "bob", "member").await;
    let r = post(
        &ks,
        &admin::user_key("acme", "bob"),
        &admin,
        json!({"user_key": LEGACY_2}),
    )
    .await;
    assert_returns_key(&r, StatusCode::OK, LEGACY_2);
    ks.assert_inactive(LEGACY_1).await;
    ks.assert_active(LEGACY_2, "acme", "bob", "member").await;

    // Rotating to the current key is a duplicate like any other.
    post(
        &ks,
        &admin::user_key("acme", "bob"),
        &admin,
        json!({"user_key": LEGACY_2}),
    )
    .await
    .assert_error(StatusCode::CONFLICT, "user_key");
    ks.assert_active(LEGACY_2, "acme", "bob", "member").await;

    // No body, an empty object, or null: a key is minted, as before.
    let minted = ks.rotate(LEGACY_2, "acme", "bob").await;
    assert!(minted.starts_with("kg_"));
    let mut last = minted;
    for body in [json!({}), json!({"user_key": null})] {
        let r = post(&ks, &admin::user_key("acme", "bob"), &last, body).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let next = r.json()["user_key"].as_str().unwrap().to_owned();
        assert!(next.starts_with("kg_"));
        ks.assert_inactive(&last).await;
        last = next;
    }
    ks.assert_active(&last, "acme", "bob", "member").await;

    // A rotate body is checked like the others.
    post(
        &ks,
        &admin::user_key("acme", "bob"),
        &admin,
        json!({"user_key": LEGACY_3, "role": "admin"}),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "unknown field `role`");
    let r = ks
        .send(
            axum::http::Request::builder()
                .method("POST")
                .uri(admin::user_key("acme", "bob"))
                .header("x-api-key", &admin)
                .header("content-type", "text/plain")
                .body(axum::body::Body::from(LEGACY_3))
                .unwrap(),
        )
        .await;
    r.assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "content-type");
    ks.assert_active(&last, "acme", "bob", "member").await;

    // Authorisation comes first: another member may not import a key for bob.
    let carol = ks.create_user(&admin, "acme", "carol", "member").await;
    post(
        &ks,
        &admin::user_key("acme", "bob"),
        &carol,
        json!({"user_key": LEGACY_3}),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "forbidden");
    ks.assert_inactive(LEGACY_3).await;
}
