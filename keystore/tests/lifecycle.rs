//! The key lifecycle through the real router over a real database (SQLite, or PostgreSQL with
//! `KEYSTORE_TEST_DATABASE_URL`): named keys, expiry, rotation with a grace period, usage
//! reports, claims and the audit trail, each with its authorisation and its bad input.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use axum::http::StatusCode;
use common::{changed, contains, ids, key_ref, now, world, Ks, ROOT_KEY};
use keygate_protocol::routes::admin;
use keystore::keys::key_id;
use keystore::store::rfc3339;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn keys_uri(account: &str, user: &str) -> String {
    admin::keys(account, user)
}

/// Creates a named key; returns the whole answer (with "user_key").
async fn create_key(ks: &Ks, by: &str, account: &str, user: &str, body: Value) -> Value {
    let r = ks
        .call("POST", &keys_uri(account, user), Some(by), Some(body))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.headers["cache-control"], "no-store");
    r.json()
}

async fn list_keys(ks: &Ks, by: &str, account: &str, user: &str) -> Vec<Value> {
    let r = ks
        .call(
            "GET",
            &format!("{}?limit=1000", keys_uri(account, user)),
            Some(by),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.json()["keys"].as_array().unwrap().clone()
}

/// Polls `f` every 100 ms until it holds, for at most 30 s.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_user_holds_several_named_keys_and_revoking_one_keeps_the_others() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    let rev0 = ks.revision().await;
    // Root, the account admin and the user themself may each add a key.
    let ci = create_key(&ks, &w.bob, "acme", "bob", json!({"name": "ci"})).await;
    let laptop = create_key(&ks, &w.alice, "acme", "bob", json!({"name": "laptop"})).await;
    let batch = create_key(&ks, ROOT_KEY, "acme", "bob", json!({"name": "batch"})).await;
    let (ci_key, laptop_key) = (
        ci["user_key"].as_str().unwrap(),
        laptop["user_key"].as_str().unwrap(),
    );
    let batch_key = batch["user_key"].as_str().unwrap();
    assert_eq!(ci["name"], "ci");
    assert_eq!(ci["key"], key_ref(ci_key));
    assert_eq!(ci["created_by"], "acme/bob");
    assert_eq!(laptop["created_by"], "acme/alice");
    assert_eq!(batch["created_by"], "_system/root");
    for key in [&w.bob, ci_key, laptop_key, batch_key] {
        ks.assert_active(key, "acme", "bob", "member").await;
    }
    assert_eq!(
        changed(&ks.changes(rev0).await),
        ids(&[ci_key, laptop_key, batch_key])
    );

    // The listing: every key with its metadata, never a key or a full key id.
    let r = ks
        .call("GET", &keys_uri("acme", "bob"), Some(&w.bob), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    for raw in [&w.bob, ci_key, laptop_key, batch_key] {
        assert!(!contains(&r.body, raw.as_bytes()), "a key is listed");
        assert!(
            !contains(&r.body, key_id(raw).as_bytes()),
            "a key id is listed"
        );
    }
    let keys = r.json()["keys"].as_array().unwrap().clone();
    let names: Vec<&str> = keys.iter().map(|k| k["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 4);
    for name in ["default", "ci", "laptop", "batch"] {
        assert!(names.contains(&name), "{names:?}");
    }
    let listed_ci = keys.iter().find(|k| k["name"] == "ci").unwrap();
    let hint = format!("kg_...{}", &ci_key[ci_key.len() - 4..]);
    assert_eq!(listed_ci["hint"], hint.as_str());
    assert_eq!(listed_ci["expires_at"], Value::Null);
    assert_eq!(listed_ci["last_used_at"], Value::Null);
    assert!(
        listed_ci["created_at"].as_str().unwrap().ends_with('Z'),
        "{listed_ci}"
    );
    assert_eq!(listed_ci["capabilities"], json!(["traffic", "own_keys"]));
    assert_eq!(
        listed_ci
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        [
            "capabilities",
            "claims",
            "created_at",
            "created_by",
            "enabled",
            "expires_at",
            "hint",
            "key",
            "last_used_at",
            "name"
        ]
    );

    // Revoking one key leaves the others working.
    let rev1 = ks.revision().await;
    let uri = format!("{}/{}", keys_uri("acme", "bob"), key_ref(ci_key));
    let r = ks.call("DELETE", &uri, Some(&w.bob), None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json(), json!({"revoked": 1}));
    ks.assert_inactive(ci_key).await;
    for key in [&w.bob, laptop_key, batch_key] {
        ks.assert_active(key, "acme", "bob", "member").await;
    }
    assert_eq!(changed(&ks.changes(rev1).await), ids(&[ci_key]));
    assert_eq!(list_keys(&ks, &w.alice, "acme", "bob").await.len(), 3);
    // Gone: a second revoke is 404.
    ks.call("DELETE", &uri, Some(&w.alice), None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not found");
    // The admin and root revoke too; revoking the user revokes the rest.
    let uri = format!("{}/{}", keys_uri("acme", "bob"), key_ref(laptop_key));
    assert_eq!(
        ks.call("DELETE", &uri, Some(&w.alice), None).await.status,
        StatusCode::OK
    );
    let uri = format!("{}/{}", keys_uri("acme", "bob"), key_ref(batch_key));
    assert_eq!(
        ks.call("DELETE", &uri, Some(ROOT_KEY), None).await.status,
        StatusCode::OK
    );
    ks.assert_active(&w.bob, "acme", "bob", "member").await;
    let r = ks
        .call("DELETE", &admin::user("acme", "bob"), Some(&w.alice), None)
        .await;
    assert_eq!(r.json(), json!({"revoked": 1}));
    ks.assert_inactive(&w.bob).await;
}

#[tokio::test]
async fn key_endpoints_authorisation() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    let carol = ks.create_user(&w.alice, "acme", "carol", "member").await;
    let bob_key = key_ref(&w.bob);
    let one = format!("{}/{bob_key}", keys_uri("acme", "bob"));
    let rotate = format!("{one}/rotate");
    let before = ks.revision().await;
    let bodies = |m: &str| match m {
        "POST" => Some(json!({"name": "x"})),
        "PATCH" => Some(json!({"name": "y"})),
        _ => None,
    };
    // A member of the account (not the user), an admin and a member of another account.
    for caller in [&carol, &w.oscar, &w.olga] {
        for (method, uri) in [
            ("GET", keys_uri("acme", "bob")),
            ("POST", keys_uri("acme", "bob")),
            ("PATCH", one.clone()),
            ("DELETE", one.clone()),
            ("POST", rotate.clone()),
        ] {
            let body = if uri == rotate { None } else { bodies(method) };
            let r = ks.call(method, &uri, Some(caller), body).await;
            r.assert_error(StatusCode::FORBIDDEN, "forbidden");
            assert_eq!(r.status, StatusCode::FORBIDDEN);
        }
    }
    // The user themself may not change a key's expiry or name (only admins may).
    ks.call("PATCH", &one, Some(&w.bob), Some(json!({"name": "y"})))
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    // Claims are root's alone: not the user's, not the account admin's.
    for caller in [&w.bob, &w.alice] {
        ks.call(
            "PATCH",
            &one,
            Some(caller),
            Some(json!({"claims": {"plan": "pro"}})),
        )
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
        ks.call(
            "POST",
            &keys_uri("acme", "bob"),
            Some(caller),
            Some(json!({"name": "x", "claims": {"plan": "pro"}})),
        )
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    }
    assert_eq!(
        ks.revision().await,
        before,
        "a refused call changed something"
    );
    // No key, no entry.
    ks.call("GET", &keys_uri("acme", "bob"), None, None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    // The root key is managed by configuration.
    let root_ref = key_ref(ROOT_KEY);
    ks.call(
        "DELETE",
        &format!("{}/{root_ref}", keys_uri("_system", "root")),
        Some(ROOT_KEY),
        None,
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "_system");
    // The admin and the user list; root lists anyone's.
    assert_eq!(list_keys(&ks, &w.alice, "acme", "bob").await.len(), 1);
    assert_eq!(list_keys(&ks, &w.bob, "acme", "bob").await.len(), 1);
    assert_eq!(list_keys(&ks, ROOT_KEY, "other", "olga").await.len(), 1);
}

#[tokio::test]
async fn key_endpoints_bad_input() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    let uri = keys_uri("acme", "bob");
    let one = format!("{uri}/{}", key_ref(&w.bob));
    let before = ks.revision().await;
    for (body, needle) in [
        (json!({}), "missing field `name`"),
        (json!({"name": ""}), "name must not be empty"),
        (json!({"name": "a b"}), "name may only contain"),
        (
            json!({"name": "x", "color": "red"}),
            "unknown field `color`",
        ),
        (
            json!({"name": "x", "expires_at": "tomorrow"}),
            "expires_at must be an RFC 3339 time",
        ),
        (
            json!({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at is not in the future",
        ),
        (
            json!({"name": "x", "expires_at": 1_900_000_000}),
            "invalid type",
        ),
        (
            json!({"name": "x", "user_key": "short"}),
            "user_key is too short",
        ),
    ] {
        ks.call("POST", &uri, Some(&w.alice), Some(body.clone()))
            .await
            .assert_error(StatusCode::BAD_REQUEST, needle);
    }
    for (body, needle) in [
        (json!({}), "nothing to change"),
        (
            json!({"expires_at": "2001-01-01T00:00:00Z"}),
            "not in the future",
        ),
        (json!({"expires_at": "2030-13-01T00:00:00Z"}), "RFC 3339"),
        (json!({"name": "../x"}), "name may only contain"),
        (json!({"key_id": "x"}), "unknown field `key_id`"),
    ] {
        ks.call("PATCH", &one, Some(&w.alice), Some(body.clone()))
            .await
            .assert_error(StatusCode::BAD_REQUEST, needle);
    }
    // A key reference is 16 lowercase hex characters; a full key id is not one.
    for bad in [
        "nothex0000000000",
        "ABCDEF0123456789",
        "0123",
        &key_id(&w.bob),
    ] {
        ks.call("DELETE", &format!("{uri}/{bad}"), Some(&w.alice), None)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "key reference");
    }
    // Unknown key, user and account.
    ks.call(
        "DELETE",
        &format!("{uri}/0123456789abcdef"),
        Some(&w.alice),
        None,
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "0123456789abcdef");
    ks.call("GET", &keys_uri("acme", "nobody"), Some(&w.alice), None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "nobody");
    ks.call("GET", &keys_uri("nope", "bob"), Some(ROOT_KEY), None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "nope");
    // A key of another user is not found through this user.
    let olga_one = format!("{uri}/{}", key_ref(&w.olga));
    ks.call("DELETE", &olga_one, Some(ROOT_KEY), None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not found");
    // Names are not unique: a second "default" is fine; an imported key in use is 409.
    create_key(&ks, &w.alice, "acme", "bob", json!({"name": "default"})).await;
    let before2 = ks.revision().await;
    ks.call(
        "POST",
        &uri,
        Some(&w.alice),
        Some(json!({"name": "x", "user_key": w.bob})),
    )
    .await
    .assert_error(StatusCode::CONFLICT, "never reused");
    assert_eq!(ks.revision().await, before2);
    assert!(before2 > before);
    ks.assert_active(&w.olga, "other", "olga", "member").await;
}

#[tokio::test]
async fn expiry_is_in_the_lookup_answer_and_refused_once_past() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    let in_an_hour = now() + 3600;
    let created = create_key(
        &ks,
        &w.alice,
        "acme",
        "bob",
        json!({"name": "temp", "expires_at": rfc3339(in_an_hour)}),
    )
    .await;
    let temp = created["user_key"].as_str().unwrap().to_owned();
    assert_eq!(created["expires_at"], rfc3339(in_an_hour).as_str());
    let r = ks.lookup(&temp).await;
    assert_eq!(
        r.json(),
        json!({"account_id": "acme", "user_id": "bob", "role": "member", "expires_at": in_an_hour})
    );
    // A key without expiry answers as before: no expires_at at all.
    ks.assert_active(&w.bob, "acme", "bob", "member").await;

    // Expiry at creation of a user and of an account, and at import.
    let r = ks
        .call(
            "POST",
            &admin::users("acme"),
            Some(&w.alice),
            Some(
                json!({"user_id": "carol", "role": "member", "expires_at": rfc3339(in_an_hour),
                        "user_key": "imported-key-0123456789abcdefghijklmnop"}),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(
        ks.lookup("imported-key-0123456789abcdefghijklmnop")
            .await
            .json()["expires_at"],
        in_an_hour
    );
    let listed = &list_keys(&ks, &w.alice, "acme", "carol").await[0];
    assert_eq!(listed["hint"], "...mnop");
    let r = ks
        .call(
            "POST",
            admin::ACCOUNTS,
            Some(ROOT_KEY),
            Some(json!({"account_id": "trial", "admin_user_id": "tom", "expires_at": rfc3339(in_an_hour)})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        ks.lookup(r.json()["user_key"].as_str().unwrap())
            .await
            .json()["expires_at"],
        in_an_hour
    );

    // A PATCH changes the expiry, and the feed says so (filters drop their cached verdict).
    let one = format!("{}/{}", keys_uri("acme", "bob"), key_ref(&temp));
    let rev = ks.revision().await;
    let later = in_an_hour + 60;
    let r = ks
        .call(
            "PATCH",
            &one,
            Some(&w.alice),
            Some(json!({"expires_at": rfc3339(later)})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["expires_at"], rfc3339(later).as_str());
    assert_eq!(ks.lookup(&temp).await.json()["expires_at"], later);
    assert_eq!(changed(&ks.changes(rev).await), ids(&[&temp]));
    // The same expiry again changes nothing; null removes it.
    let rev = ks.revision().await;
    ks.call(
        "PATCH",
        &one,
        Some(ROOT_KEY),
        Some(json!({"expires_at": rfc3339(later)})),
    )
    .await;
    assert_eq!(ks.revision().await, rev);
    let r = ks
        .call(
            "PATCH",
            &one,
            Some(&w.alice),
            Some(json!({"expires_at": null})),
        )
        .await;
    assert_eq!(r.json()["expires_at"], Value::Null);
    ks.assert_active(&temp, "acme", "bob", "member").await;
    assert_eq!(changed(&ks.changes(rev).await), ids(&[&temp]));

    // Once past its expiry, the key is refused: by the lookup and by the admin API.
    let soon = now() + 2;
    ks.call(
        "PATCH",
        &one,
        Some(&w.alice),
        Some(json!({"expires_at": rfc3339(soon)})),
    )
    .await;
    eventually("the key to expire", || async {
        ks.lookup(&temp).await.status == StatusCode::NOT_FOUND
    })
    .await;
    assert!(now() >= soon, "refused before its expiry");
    ks.assert_inactive(&temp).await;
    ks.call("GET", &keys_uri("acme", "bob"), Some(&temp), None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    // It is still listed (with its expiry) until revoked, and can be revived by a PATCH.
    let listed = list_keys(&ks, &w.alice, "acme", "bob").await;
    let entry = listed.iter().find(|k| k["name"] == "temp").unwrap();
    assert_eq!(entry["expires_at"], rfc3339(soon).as_str());
    ks.call(
        "PATCH",
        &one,
        Some(&w.alice),
        Some(json!({"expires_at": null})),
    )
    .await;
    ks.assert_active(&temp, "acme", "bob", "member").await;
}

#[tokio::test]
async fn rotation_keeps_the_old_key_valid_for_the_grace_period() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    let ci = create_key(&ks, &w.alice, "acme", "bob", json!({"name": "ci"})).await;
    let old = ci["user_key"].as_str().unwrap().to_owned();
    let rotate = format!("{}/{}/rotate", keys_uri("acme", "bob"), key_ref(&old));
    let rev = ks.revision().await;
    let t0 = now();
    let r = ks
        .call(
            "POST",
            &rotate,
            Some(&w.bob),
            Some(json!({"grace_s": 3600})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.headers["cache-control"], "no-store");
    let v = r.json();
    let new = v["user_key"].as_str().unwrap().to_owned();
    assert_eq!(v["name"], "ci", "the new key keeps the name");
    assert_eq!(v["key"], key_ref(&new));
    assert_eq!(v["replaces"]["key"], key_ref(&old));
    assert_eq!(v["replaces"]["grace_s"], 3600);
    // Both work during the grace; the old one now expires at the end of it.
    ks.assert_active(&new, "acme", "bob", "member").await;
    let old_answer = ks.lookup(&old).await.json();
    let until = old_answer["expires_at"].as_i64().unwrap();
    assert!((t0 + 3600..=now() + 3600).contains(&until), "{old_answer}");
    assert_eq!(v["replaces"]["valid_until"], rfc3339(until).as_str());
    assert_eq!(changed(&ks.changes(rev).await), ids(&[&old, &new]));
    // Other keys of the user are untouched.
    ks.assert_active(&w.bob, "acme", "bob", "member").await;
    assert!(ks.lookup(&w.bob).await.json().get("expires_at").is_none());

    // A grace never extends a key that expires sooner.
    let soon = now() + 600;
    let short = create_key(
        &ks,
        &w.alice,
        "acme",
        "bob",
        json!({"name": "short", "expires_at": rfc3339(soon)}),
    )
    .await;
    let short_key = short["user_key"].as_str().unwrap().to_owned();
    let rotate_short = format!("{}/{}/rotate", keys_uri("acme", "bob"), key_ref(&short_key));
    let rev = ks.revision().await;
    let r = ks
        .call(
            "POST",
            &rotate_short,
            Some(&w.alice),
            Some(json!({"grace_s": 3600})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let short_new = r.json()["user_key"].as_str().unwrap().to_owned();
    assert_eq!(ks.lookup(&short_key).await.json()["expires_at"], soon);
    assert_eq!(r.json()["replaces"]["valid_until"], rfc3339(soon).as_str());
    assert_eq!(changed(&ks.changes(rev).await), ids(&[&short_new]));
    let r = ks
        .call(
            "POST",
            &admin::user_key("acme", "bob"),
            Some(&w.alice),
            Some(json!({"grace_s": 3600})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(ks.lookup(&short_key).await.json()["expires_at"], soon);

    // grace 0 (the default): the replaced key is refused at once.
    let rotate_new = format!("{}/{}/rotate", keys_uri("acme", "bob"), key_ref(&new));
    let r = ks.call("POST", &rotate_new, Some(&w.alice), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let newest = r.json()["user_key"].as_str().unwrap().to_owned();
    ks.assert_inactive(&new).await;
    ks.assert_active(&newest, "acme", "bob", "member").await;

    // A short grace: the old key expires by itself.
    let rotate_newest = format!("{}/{}/rotate", keys_uri("acme", "bob"), key_ref(&newest));
    let r = ks
        .call(
            "POST",
            &rotate_newest,
            Some(ROOT_KEY),
            Some(json!({"grace_s": 1})),
        )
        .await;
    let last = r.json()["user_key"].as_str().unwrap().to_owned();
    eventually("the rotated key's grace to end", || async {
        ks.lookup(&newest).await.status == StatusCode::NOT_FOUND
    })
    .await;
    ks.assert_active(&last, "acme", "bob", "member").await;

    // Bad grace periods change nothing.
    let rev = ks.revision().await;
    let rotate_last = format!("{}/{}/rotate", keys_uri("acme", "bob"), key_ref(&last));
    for (body, needle) in [
        (json!({"grace_s": 604_801}), "grace_s must be 0 to 604800"),
        (json!({"grace_s": -1}), "grace_s must be 0 to 604800"),
        (json!({"grace_s": "60"}), "invalid type"),
        (json!({"grace": 60}), "unknown field `grace`"),
    ] {
        ks.call("POST", &rotate_last, Some(&w.alice), Some(body))
            .await
            .assert_error(StatusCode::BAD_REQUEST, needle);
    }
    assert_eq!(ks.revision().await, rev);
    ks.call(
        "POST",
        &rotate_last,
        Some(&w.oscar),
        Some(json!({"grace_s": 60})),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "forbidden");
    // The longest grace is accepted.
    let r = ks
        .call(
            "POST",
            &rotate_last,
            Some(&w.alice),
            Some(json!({"grace_s": 604_800})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

#[tokio::test]
async fn user_rotation_takes_a_grace_period_too() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    let rev = ks.revision().await;
    let uri = &admin::user_key("acme", "bob");
    let r = ks
        .call("POST", uri, Some(&w.bob), Some(json!({"grace_s": 600})))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let new = r.json()["user_key"].as_str().unwrap().to_owned();
    ks.assert_active(&new, "acme", "bob", "member").await;
    let old = ks.lookup(&w.bob).await;
    assert_eq!(
        old.status,
        StatusCode::OK,
        "the old key works during the grace"
    );
    assert!(old.json()["expires_at"].as_i64().unwrap() <= now() + 600);
    assert_eq!(changed(&ks.changes(rev).await), ids(&[&w.bob, &new]));
    // Without a grace, as before: every other key is revoked at once.
    let newest = ks.rotate(&w.alice, "acme", "bob").await;
    ks.assert_inactive(&w.bob).await;
    ks.assert_inactive(&new).await;
    ks.assert_active(&newest, "acme", "bob", "member").await;
    ks.call(
        "POST",
        uri,
        Some(&w.alice),
        Some(json!({"grace_s": 999_999})),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "grace_s");
}

#[tokio::test]
async fn usage_reports_set_last_used_at_once_a_minute() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    let report = |ids: Vec<String>| json!({ "key_ids": ids });
    let unknown = key_id("never-issued");
    let r = ks
        .call(
            "POST",
            "/v1/usage",
            None,
            Some(report(vec![key_id(&w.bob), unknown.clone()])),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json(), json!({"recorded": 1}), "unknown ids are ignored");
    let listed = &list_keys(&ks, &w.alice, "acme", "bob").await[0];
    let used = listed["last_used_at"].as_str().unwrap().to_owned();
    assert!(used.ends_with(":00Z"), "one-minute precision: {used}");
    // Within the same minute, a second report writes nothing (unless the minute just turned).
    let r = ks
        .call(
            "POST",
            "/v1/usage",
            None,
            Some(report(vec![key_id(&w.bob); 3])),
        )
        .await;
    let recorded = r.json()["recorded"].as_u64().unwrap();
    let still = list_keys(&ks, &w.alice, "acme", "bob").await[0]["last_used_at"].clone();
    if still == used.as_str() {
        assert_eq!(recorded, 0, "the same minute was written again");
    }
    // Keys not reported keep no last use; the change feed is not touched.
    let rev = ks.revision().await;
    assert_eq!(
        list_keys(&ks, &w.oscar, "other", "olga").await[0]["last_used_at"],
        Value::Null
    );
    ks.call(
        "POST",
        "/v1/usage",
        None,
        Some(report(vec![key_id(&w.olga)])),
    )
    .await;
    assert_eq!(ks.revision().await, rev);
    assert!(list_keys(&ks, &w.oscar, "other", "olga").await[0]["last_used_at"].is_string());

    // The largest report is accepted; one more id is 413.
    let many: Vec<String> = (0..10_000).map(|i| key_id(&format!("k{i}"))).collect();
    let r = ks
        .call("POST", "/v1/usage", None, Some(report(many.clone())))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let mut too_many = many;
    too_many.push(key_id(&w.bob));
    ks.call("POST", "/v1/usage", None, Some(report(too_many)))
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "at most 10000 key ids");
    let huge = format!("{{\"key_ids\": [\"{}\"]}}", "a".repeat(2 * 1024 * 1024));
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/v1/usage")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(huge))
        .unwrap();
    ks.send(req)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "at most 10000 key ids");
    // Bad input.
    for (body, needle) in [
        (json!({"key_ids": ["KG"]}), "key_ids[0] is not a key id"),
        (
            json!({"key_ids": [key_id("a"), key_id("b").to_uppercase()]}),
            "key_ids[1]",
        ),
        (json!({"key_ids": "x"}), "invalid type"),
        (json!({}), "missing field `key_ids`"),
        (json!({"key_ids": [], "more": 1}), "unknown field `more`"),
    ] {
        ks.call("POST", "/v1/usage", None, Some(body))
            .await
            .assert_error(StatusCode::BAD_REQUEST, needle);
    }
    ks.call("GET", "/v1/usage", None, None).await.assert_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "is not allowed on this route",
    );
    let r = ks
        .call("POST", "/v1/usage", None, Some(json!({"key_ids": []})))
        .await;
    assert_eq!(r.json(), json!({"recorded": 0}));
}

#[tokio::test]
async fn claims_of_accounts_and_keys_reach_the_lookup_answer() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    let rev = ks.revision().await;
    let r = ks
        .call(
            "PATCH",
            &admin::account("acme"),
            Some(ROOT_KEY),
            Some(json!({"claims": {"plan": "pro", "region": "eu"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let mut account = r.json();
    let created = account
        .as_object_mut()
        .unwrap()
        .remove("created_at")
        .unwrap();
    assert!(created.as_str().unwrap().ends_with('Z'), "{created}");
    assert_eq!(
        account,
        json!({"account_id": "acme", "claims": {"plan": "pro", "region": "eu"}, "enabled": true})
    );
    // Every active key of the account is in the feed: its answer changed.
    assert_eq!(changed(&ks.changes(rev).await), ids(&[&w.alice, &w.bob]));
    assert_eq!(
        ks.lookup(&w.bob).await.json(),
        json!({"account_id": "acme", "user_id": "bob", "role": "member",
               "claims": {"plan": "pro", "region": "eu"}})
    );
    ks.assert_active(&w.olga, "other", "olga", "member").await;

    // Key claims override the account's.
    let one = format!("{}/{}", keys_uri("acme", "bob"), key_ref(&w.bob));
    let rev = ks.revision().await;
    let r = ks
        .call(
            "PATCH",
            &one,
            Some(ROOT_KEY),
            Some(json!({"claims": {"plan": "enterprise"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["claims"], json!({"plan": "enterprise"}));
    assert_eq!(changed(&ks.changes(rev).await), ids(&[&w.bob]));
    assert_eq!(
        ks.lookup(&w.bob).await.json()["claims"],
        json!({"plan": "enterprise", "region": "eu"})
    );
    // A key created with claims (by root) carries them; a rotation keeps them.
    let k = create_key(
        &ks,
        ROOT_KEY,
        "other",
        "olga",
        json!({"name": "k", "claims": {"tier": "gold"}}),
    )
    .await;
    let k_raw = k["user_key"].as_str().unwrap().to_owned();
    assert_eq!(
        ks.lookup(&k_raw).await.json()["claims"],
        json!({"tier": "gold"})
    );
    let rotate = format!("{}/{}/rotate", keys_uri("other", "olga"), key_ref(&k_raw));
    let r = ks.call("POST", &rotate, Some(&w.olga), None).await;
    let rotated = r.json()["user_key"].as_str().unwrap().to_owned();
    assert_eq!(
        ks.lookup(&rotated).await.json()["claims"],
        json!({"tier": "gold"})
    );

    // Clearing: null (or {}) removes them; the same claims again change nothing.
    let rev = ks.revision().await;
    ks.call("PATCH", &one, Some(ROOT_KEY), Some(json!({"claims": null})))
        .await;
    assert_eq!(ks.lookup(&w.bob).await.json()["claims"]["plan"], "pro");
    let rev2 = ks.revision().await;
    assert!(rev2 > rev);
    ks.call(
        "PATCH",
        &admin::account("acme"),
        Some(ROOT_KEY),
        Some(json!({"claims": {"region": "eu", "plan": "pro"}})),
    )
    .await;
    assert_eq!(ks.revision().await, rev2);
    ks.call(
        "PATCH",
        &admin::account("acme"),
        Some(ROOT_KEY),
        Some(json!({"claims": {}})),
    )
    .await;
    ks.assert_active(&w.bob, "acme", "bob", "member").await;

    // Only root sets account claims.
    for caller in [&w.alice, &w.bob, &w.oscar, &w.olga] {
        ks.call(
            "PATCH",
            &admin::account("acme"),
            Some(caller),
            Some(json!({"claims": {"plan": "free"}})),
        )
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    }
    // Bad claims.
    let too_many: serde_json::Map<String, Value> =
        (0..17).map(|i| (format!("c{i}"), json!("v"))).collect();
    for (claims, needle) in [
        (Value::Object(too_many), "at most 16 claims"),
        (json!({"": "v"}), "claims: name \"\""),
        (json!({"a b": "v"}), "claims: name \"a b\""),
        (json!({"x".repeat(65): "v"}), "claims: name \"xxx"),
        (json!({"plan": ""}), "value of \"plan\""),
        (json!({"plan": " pro"}), "value of \"plan\""),
        (json!({"plan": "p\nro"}), "value of \"plan\""),
        (json!({"plan": "é"}), "value of \"plan\""),
        (json!({"plan": "x".repeat(257)}), "value of \"plan\""),
        (json!({"plan": 1}), "invalid type"),
        (json!(["plan"]), "invalid type"),
    ] {
        ks.call(
            "PATCH",
            &admin::account("acme"),
            Some(ROOT_KEY),
            Some(json!({"claims": claims.clone()})),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, needle);
        ks.call(
            "PATCH",
            &one,
            Some(ROOT_KEY),
            Some(json!({"claims": claims})),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, needle);
    }
    ks.call(
        "PATCH",
        &admin::account("nope"),
        Some(ROOT_KEY),
        Some(json!({"claims": {}})),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "nope");
    ks.call(
        "PATCH",
        &admin::account("_system"),
        Some(ROOT_KEY),
        Some(json!({"claims": {}})),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "_system");
    ks.call(
        "PATCH",
        &admin::account("acme"),
        Some(ROOT_KEY),
        Some(json!({"plan": "x"})),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "unknown field `plan`");
}

#[tokio::test]
async fn every_admin_write_is_in_the_audit_trail() {
    // Retention 1: the change log is pruned at every write; the audit trail is not.
    let ks = Ks::with(|c| c.changes_retention = 1).await;
    let w = world(&ks).await;
    let ci = create_key(&ks, &w.bob, "acme", "bob", json!({"name": "ci"})).await;
    let ci_raw = ci["user_key"].as_str().unwrap().to_owned();
    let one = format!("{}/{}", keys_uri("acme", "bob"), key_ref(&ci_raw));
    ks.call("PATCH", &one, Some(&w.alice), Some(json!({"name": "ci2"})))
        .await;
    ks.call(
        "POST",
        &format!("{one}/rotate"),
        Some(&w.bob),
        Some(json!({"grace_s": 60})),
    )
    .await;
    ks.call(
        "PATCH",
        &admin::user("acme", "bob"),
        Some(&w.alice),
        Some(json!({"role": "reader"})),
    )
    .await;
    ks.call(
        "PATCH",
        &admin::account("other"),
        Some(ROOT_KEY),
        Some(json!({"claims": {"plan": "pro"}})),
    )
    .await;
    ks.rotate(&w.olga, "other", "olga").await;
    ks.call(
        "DELETE",
        &admin::user("other", "olga"),
        Some(&w.oscar),
        None,
    )
    .await;
    // A refused write is recorded as refused, naming the caller and its key.
    ks.call("DELETE", &admin::account("acme"), Some(&w.alice), None)
        .await;

    let r = ks.call("GET", admin::AUDIT, Some(ROOT_KEY), None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    for raw in [
        &w.alice,
        &w.bob,
        &w.oscar,
        &w.olga,
        &ci_raw,
        &ROOT_KEY.to_owned(),
    ] {
        assert!(
            !contains(&r.body, raw.as_bytes()),
            "a key is in the audit trail"
        );
        assert!(
            !contains(&r.body, key_id(raw).as_bytes()),
            "a key id is in the audit trail"
        );
    }
    let page = r.json();
    assert_eq!(page["more"], false);
    let entries = page["entries"].as_array().unwrap();
    let actions: Vec<(&str, &str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["actor"]["account_id"].as_str().unwrap(),
                e["actor"]["user_id"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                e["object"].as_str().unwrap(),
            )
        })
        .collect();
    let ci_ref = key_ref(&ci_raw);
    let key_object = format!("acme/bob/keys/{ci_ref}");
    assert_eq!(
        actions,
        [
            (
                "_system",
                "(configuration)",
                "root_key.install",
                "_system/root"
            ),
            ("_system", "root", "account.create", "acme"),
            ("acme", "alice", "user.create", "acme/bob"),
            ("_system", "root", "account.create", "other"),
            ("other", "oscar", "user.create", "other/olga"),
            ("acme", "bob", "key.create", key_object.as_str()),
            ("acme", "alice", "key.update", key_object.as_str()),
            ("acme", "bob", "key.rotate", key_object.as_str()),
            ("acme", "alice", "user.update", "acme/bob"),
            ("_system", "root", "account.set_claims", "other"),
            ("other", "olga", "user.rotate_key", "other/olga"),
            ("other", "oscar", "user.revoke", "other/olga"),
            ("acme", "alice", "admin.refused", admin::ACCOUNT),
        ]
    );
    let first = &entries[1];
    assert!(first["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(first["account_id"], "acme");
    assert_eq!(entries[7]["detail"]["grace_s"], 60);
    assert_eq!(
        entries[8]["detail"],
        json!({"role": {"before": "member", "after": "reader"}})
    );
    // Every entry names the acting key by its reference (the configuration has none).
    let acting = [
        None,
        Some(ROOT_KEY.to_owned()),
        Some(w.alice.clone()),
        Some(ROOT_KEY.to_owned()),
        Some(w.oscar.clone()),
        Some(w.bob.clone()),
        Some(w.alice.clone()),
        Some(w.bob.clone()),
        Some(w.alice.clone()),
        Some(ROOT_KEY.to_owned()),
        Some(w.olga.clone()),
        Some(w.oscar.clone()),
        Some(w.alice.clone()),
    ];
    for (entry, key) in entries.iter().zip(&acting) {
        let want = key.as_ref().map(|k| key_ref(k));
        assert_eq!(entry["actor"]["key"].as_str(), want.as_deref(), "{entry}");
    }
    assert_eq!(
        entries[12]["detail"],
        json!({"method": "DELETE", "route": admin::ACCOUNT,
               "status": 403, "reason": "forbidden: only the root key may revoke accounts"})
    );

    // Paged: after + limit.
    let r = ks
        .call(
            "GET",
            &format!("{}?limit=4", admin::AUDIT),
            Some(ROOT_KEY),
            None,
        )
        .await;
    let p1 = r.json();
    assert_eq!(p1["entries"].as_array().unwrap().len(), 4);
    assert_eq!(p1["more"], true);
    let last = p1["entries"][3]["id"].as_i64().unwrap();
    let p2 = ks
        .call(
            "GET",
            &format!("{}?after={last}&limit=1000", admin::AUDIT),
            Some(ROOT_KEY),
            None,
        )
        .await
        .json();
    assert_eq!(p2["entries"].as_array().unwrap().len(), entries.len() - 4);
    assert_eq!(p2["entries"][0], entries[4]);
    assert_eq!(p2["more"], false);

    // An account's admins read their account's entries only; root reads any account's.
    let acme = ks
        .call("GET", &admin::account_audit("acme"), Some(&w.alice), None)
        .await;
    assert_eq!(acme.status, StatusCode::OK, "{:?}", acme.body);
    let acme = acme.json();
    let acme_entries = acme["entries"].as_array().unwrap();
    assert_eq!(acme_entries.len(), 7);
    assert!(acme_entries.iter().all(|e| e["account_id"] == "acme"));
    let other = ks
        .call(
            "GET",
            &format!("{}?limit=2", admin::account_audit("other")),
            Some(ROOT_KEY),
            None,
        )
        .await
        .json();
    assert_eq!(other["entries"].as_array().unwrap().len(), 2);
    assert_eq!(other["more"], true);

    // Everyone else: 403.
    let otto = ks.create_user(&w.oscar, "other", "otto", "member").await;
    for (caller, uri) in [
        (&w.alice, admin::AUDIT),
        (&w.alice, &admin::account_audit("other")),
        (&w.oscar, &admin::account_audit("acme")),
        (&w.bob, &admin::account_audit("acme")),
        (&w.bob, admin::AUDIT),
        (&otto, &admin::account_audit("acme")),
        (&otto, &admin::account_audit("other")),
    ] {
        let r = ks.call("GET", uri, Some(caller), None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{uri}");
        r.assert_error(StatusCode::FORBIDDEN, "forbidden");
    }
    ks.call("GET", admin::AUDIT, None, None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    // Bad paging.
    for (query, needle) in [
        ("limit=0", "limit must be an integer from 1 to 1000"),
        ("limit=1001", "limit must be"),
        ("limit=x", "limit must be"),
        ("after=-1", "after must be a non-negative integer"),
        ("after=1.5", "after must be"),
    ] {
        ks.call(
            "GET",
            &format!("{}?{query}", admin::AUDIT),
            Some(ROOT_KEY),
            None,
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, needle);
    }
    ks.call("GET", &admin::account_audit("a%20b"), Some(ROOT_KEY), None)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "account may only contain");
}

#[tokio::test]
async fn a_user_holds_at_most_100_live_keys() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    let mut last = String::new();
    // By root: the user's own creations are rate-bounded (lifecycle::MAX_KEY_CREATIONS).
    for i in 1..100 {
        let v = create_key(
            &ks,
            ROOT_KEY,
            "acme",
            "bob",
            json!({"name": format!("k{i}")}),
        )
        .await;
        last = v["user_key"].as_str().unwrap().to_owned();
    }
    let rev = ks.revision().await;
    let uri = keys_uri("acme", "bob");
    ks.call(
        "POST",
        &uri,
        Some(&w.alice),
        Some(json!({"name": "one-more"})),
    )
    .await
    .assert_error(StatusCode::CONFLICT, "already holds 100 unexpired keys");
    assert_eq!(ks.revision().await, rev);
    // An expired key no longer counts.
    let one = format!("{uri}/{}", key_ref(&last));
    let soon = rfc3339(now() + 1);
    let r = ks
        .call(
            "PATCH",
            &one,
            Some(&w.alice),
            Some(json!({"expires_at": soon})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    eventually("an expired key to stop counting", || async {
        let r = ks
            .call(
                "POST",
                &uri,
                Some(&w.alice),
                Some(json!({"name": "one-more"})),
            )
            .await;
        r.status == StatusCode::CREATED
    })
    .await;
    // Neither does a revoked one.
    let keys = list_keys(&ks, &w.alice, "acme", "bob").await;
    assert_eq!(keys.len(), 101, "the expired key is still listed");
    let victim = keys.iter().find(|k| k["name"] == "k1").unwrap()["key"].clone();
    let r = ks
        .call(
            "DELETE",
            &format!("{uri}/{}", victim.as_str().unwrap()),
            Some(&w.bob),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    create_key(&ks, &w.bob, "acme", "bob", json!({"name": "after-revoke"})).await;
}

#[tokio::test]
async fn new_endpoints_refuse_malformed_bodies_with_json_errors() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    let one = format!("{}/{}", keys_uri("acme", "bob"), key_ref(&w.bob));
    let rotate = format!("{one}/rotate");
    let before = ks.revision().await;
    let send = |method: &str, uri: &str, ct: Option<&str>, body: Vec<u8>| {
        let mut b = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header("x-api-key", ROOT_KEY);
        if let Some(ct) = ct {
            b = b.header("content-type", ct);
        }
        b.body(axum::body::Body::from(body)).unwrap()
    };
    let json = Some("application/json");
    let endpoints = [
        ("POST", keys_uri("acme", "bob")),
        ("PATCH", one.clone()),
        ("POST", rotate.clone()),
        ("PATCH", admin::account("acme")),
        ("POST", "/v1/usage".to_owned()),
    ];
    for (method, uri) in &endpoints {
        for (ct, body, status, needle) in [
            (json, b"{".to_vec(), StatusCode::BAD_REQUEST, "invalid JSON"),
            (
                json,
                b"[1]".to_vec(),
                StatusCode::BAD_REQUEST,
                "invalid JSON",
            ),
            (
                json,
                b"null".to_vec(),
                StatusCode::BAD_REQUEST,
                "invalid JSON",
            ),
            (
                Some("text/plain"),
                b"{}".to_vec(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "content-type",
            ),
        ] {
            ks.send(send(method, uri, ct, body))
                .await
                .assert_error(status, needle);
        }
        // Admin bodies are limited to 16 KiB; usage reports to 1 MiB.
        let size = if uri == "/v1/usage" {
            1_100_000
        } else {
            20 * 1024
        };
        ks.send(send(method, uri, json, vec![b' '; size]))
            .await
            .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "at most");
        if uri != &rotate {
            ks.send(send(method, uri, json, Vec::new()))
                .await
                .assert_error(StatusCode::BAD_REQUEST, "empty");
        }
    }
    for (method, uri) in [
        ("PUT", keys_uri("acme", "bob")),
        ("GET", rotate),
        ("POST", one),
        ("POST", admin::AUDIT.to_owned()),
    ] {
        let r = ks.call(method, &uri, Some(ROOT_KEY), None).await;
        r.assert_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "is not allowed on this route",
        );
        assert!(r.headers.contains_key("allow"), "{method} {uri}");
    }
    assert_eq!(ks.revision().await, before);
    ks.assert_active(&w.bob, "acme", "bob", "member").await;
}

#[tokio::test]
async fn a_claim_value_with_a_comma_is_refused_with_400_naming_the_claim_and_changes_nothing() {
    // The filter refuses a comma in a header value (it reads as a list), so the store refuses
    // it at write, with the same rule (keygate-protocol): for account claims, for the claims
    // of a new key and in a key's PATCH.
    let ks = Ks::new().await;
    let w = world(&ks).await;
    let r = ks
        .call(
            "PATCH",
            &admin::account("acme"),
            Some(ROOT_KEY),
            Some(json!({"claims": {"plan": "pro"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let before = ks.lookup(&w.bob).await.json();
    let revision = ks.revision().await;
    let needle = "claims: value of \"team\" must be";
    let bad = json!({"plan": "pro", "team": "ml, ops"});
    ks.call(
        "PATCH",
        &admin::account("acme"),
        Some(ROOT_KEY),
        Some(json!({ "claims": bad })),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, needle);
    ks.call(
        "POST",
        &keys_uri("acme", "bob"),
        Some(ROOT_KEY),
        Some(json!({"name": "ci", "claims": bad})),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, needle);
    let one = format!("{}/{}", keys_uri("acme", "bob"), key_ref(&w.bob));
    ks.call(
        "PATCH",
        &one,
        Some(ROOT_KEY),
        Some(json!({ "claims": bad })),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, needle);
    // Nothing changed: the same answer, no new key, nothing in the feed.
    assert_eq!(ks.lookup(&w.bob).await.json(), before);
    assert_eq!(list_keys(&ks, ROOT_KEY, "acme", "bob").await.len(), 1);
    assert_eq!(ks.revision().await, revision);
}
