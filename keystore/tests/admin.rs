//! Enabling and disabling keys, users and accounts; the leak response (find or revoke a key by
//! its value); usage reports of revoked and disabled keys; what the audit trail records (the
//! acting key, before and after values, root key events, refused calls). Through the real
//! router on SQLite or (with `KEYSTORE_TEST_DATABASE_URL`) PostgreSQL.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use axum::http::StatusCode;
use common::{changed, contains, ids, key_ref, world, Ks, ROOT_KEY};
use keygate_protocol::routes::admin;
use keystore::api::RefusalBound;
use keystore::authority::RoleRegistry;
use keystore::keys::key_id;
use serde_json::{json, Value};

fn key_uri(account: &str, user: &str, raw: &str) -> String {
    admin::key(account, user, &key_ref(raw))
}

async fn patch(ks: &Ks, by: &str, uri: &str, body: Value) -> Value {
    let r = ks.call("PATCH", uri, Some(by), Some(body)).await;
    assert_eq!(r.status, StatusCode::OK, "{uri}: {:?}", r.body);
    r.json()
}

/// The whole audit trail, as root reads it.
async fn audit(ks: &Ks) -> Vec<Value> {
    let r = ks
        .call(
            "GET",
            &format!("{}?limit=1000", admin::AUDIT),
            Some(ROOT_KEY),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.json()["entries"].as_array().unwrap().clone()
}

async fn last_entry(ks: &Ks, action: &str) -> Value {
    audit(ks)
        .await
        .into_iter()
        .rev()
        .find(|e| e["action"] == action)
        .unwrap_or_else(|| panic!("no {action} entry"))
}

#[tokio::test]
async fn a_disabled_key_is_not_looked_up_until_it_is_enabled_again() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    let uri = key_uri("acme", "bob", &w.bob);
    let rev = ks.revision().await;
    let key = patch(&ks, &w.alice, &uri, json!({"enabled": false})).await;
    assert_eq!(key["enabled"], false);
    ks.assert_inactive(&w.bob).await;
    // The feed reports it; it cannot call the admin API either.
    assert_eq!(changed(&ks.changes(rev).await), ids(&[&w.bob]));
    let own = &admin::keys("acme", "bob");
    ks.call("GET", own, Some(&w.bob), None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    // The listing shows it disabled; disabling again changes nothing in the feed.
    let listed = ks.call("GET", own, Some(&w.alice), None).await.json();
    assert_eq!(listed["keys"][0]["enabled"], false);
    let rev = ks.revision().await;
    patch(&ks, &w.alice, &uri, json!({"enabled": false})).await;
    assert_eq!(ks.revision().await, rev);

    // Enabled again: looked up as before; the feed lists it as created (it was unknown).
    let key = patch(&ks, &w.alice, &uri, json!({"enabled": true})).await;
    assert_eq!(key["enabled"], true);
    ks.assert_active(&w.bob, "acme", "bob", "member").await;
    let feed = ks.changes(rev).await;
    assert_eq!(changed(&feed), ids(&[&w.bob]));
    assert_eq!(feed["created"], json!([key_id(&w.bob)]));

    // Members may not, nor admins of another account; null and non-booleans are refused.
    for (by, status) in [
        (&w.bob, StatusCode::FORBIDDEN),
        (&w.oscar, StatusCode::FORBIDDEN),
    ] {
        let r = ks
            .call("PATCH", &uri, Some(by), Some(json!({"enabled": false})))
            .await;
        assert_eq!(r.status, status);
    }
    for bad in [json!({"enabled": null}), json!({"enabled": "no"})] {
        ks.call("PATCH", &uri, Some(&w.alice), Some(bad))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid type");
    }
    ks.assert_active(&w.bob, "acme", "bob", "member").await;
}

#[tokio::test]
async fn a_disabled_user_or_account_takes_its_keys_out_until_enabled() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    let user = &admin::user("acme", "bob");
    let rev = ks.revision().await;
    let r = patch(&ks, &w.alice, user, json!({"enabled": false})).await;
    assert_eq!(
        r,
        json!({"user_id": "bob", "role": "member", "enabled": false})
    );
    ks.assert_inactive(&w.bob).await;
    assert_eq!(changed(&ks.changes(rev).await), ids(&[&w.bob]));
    let users = ks
        .call("GET", &admin::users("acme"), Some(&w.alice), None)
        .await
        .json();
    assert_eq!(users["users"][1]["enabled"], false);
    assert_eq!(users["users"][0]["enabled"], true);
    let rev = ks.revision().await;
    patch(&ks, &w.alice, user, json!({"enabled": true})).await;
    ks.assert_active(&w.bob, "acme", "bob", "member").await;
    assert_eq!(ks.changes(rev).await["created"], json!([key_id(&w.bob)]));

    // An account: root only; every key of it goes, the other account's stay.
    let account = &admin::account("acme");
    ks.call(
        "PATCH",
        account,
        Some(&w.alice),
        Some(json!({"enabled": false})),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "forbidden");
    let rev = ks.revision().await;
    let mut r = patch(&ks, ROOT_KEY, account, json!({"enabled": false})).await;
    r.as_object_mut().unwrap().remove("created_at").unwrap();
    assert_eq!(
        r,
        json!({"account_id": "acme", "claims": {}, "enabled": false})
    );
    ks.assert_inactive(&w.alice).await;
    ks.assert_inactive(&w.bob).await;
    ks.assert_active(&w.olga, "other", "olga", "member").await;
    assert_eq!(changed(&ks.changes(rev).await), ids(&[&w.alice, &w.bob]));
    // The account's claims are untouched by a PATCH that does not name them.
    let r = patch(&ks, ROOT_KEY, account, json!({"claims": {"plan": "pro"}})).await;
    assert_eq!(r["enabled"], false);
    let mut r = patch(&ks, ROOT_KEY, account, json!({"enabled": true})).await;
    r.as_object_mut().unwrap().remove("created_at").unwrap();
    assert_eq!(
        r,
        json!({"account_id": "acme", "claims": {"plan": "pro"}, "enabled": true})
    );
    assert_eq!(
        ks.lookup(&w.bob).await.json()["claims"],
        json!({"plan": "pro"})
    );
    ks.call("PATCH", account, Some(ROOT_KEY), Some(json!({})))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "nothing to change");
    ks.call("PATCH", user, Some(&w.alice), Some(json!({})))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "nothing to change");
}

/// The audit entries about one user (`user.*`, on `account/user`).
async fn user_entries(ks: &Ks, object: &str) -> Vec<Value> {
    let entries = audit(ks).await.into_iter();
    let about =
        |e: &Value| e["object"] == object && e["action"].as_str().unwrap().starts_with("user.");
    entries.filter(about).collect()
}

#[tokio::test]
async fn a_refused_patch_of_role_and_enabled_changes_nothing_and_is_not_audited_as_a_change() {
    let ks = Ks::with(|c| {
        c.roles = RoleRegistry::new(&["admin".into(), "member".into()], &["staff".into()]).unwrap();
    })
    .await;
    let alice = ks.create_account("acme", "alice").await;
    let dave = ks.create_user(ROOT_KEY, "acme", "dave", "staff").await;
    let before = user_entries(&ks, "acme/dave").await.len();
    let rev = ks.revision().await;
    let uri = &admin::user("acme", "dave");
    let body = json!({"role": "member", "enabled": false});
    ks.call("PATCH", uri, Some(&alice), Some(body))
        .await
        .assert_error(StatusCode::FORBIDDEN, "operator role staff");
    ks.assert_active(&dave, "acme", "dave", "staff").await;
    assert_eq!(ks.revision().await, rev, "nothing changed");
    assert_eq!(user_entries(&ks, "acme/dave").await.len(), before);
}

#[tokio::test]
async fn a_patch_of_role_and_enabled_is_one_change_with_one_audit_entry() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    let uri = &admin::user("acme", "bob");
    let before = user_entries(&ks, "acme/bob").await.len();
    let rev = ks.revision().await;
    let body = json!({"role": "admin", "enabled": false});
    let r = patch(&ks, &w.alice, uri, body).await;
    assert_eq!(
        r,
        json!({"user_id": "bob", "role": "admin", "enabled": false})
    );
    ks.assert_inactive(&w.bob).await;
    assert_eq!(changed(&ks.changes(rev).await), ids(&[&w.bob]));
    let entries = user_entries(&ks, "acme/bob").await;
    assert_eq!(entries.len(), before + 1, "{entries:?}");
    let entry = entries.last().unwrap();
    assert_eq!(entry["action"], "user.update");
    assert_eq!(
        entry["detail"],
        json!({
            "role": {"before": "member", "after": "admin"},
            "enabled": {"before": true, "after": false}
        })
    );
    assert_eq!(entry["actor"]["key"], key_ref(&w.alice));
    // Enabled again, bob's key holds the new role.
    patch(&ks, &w.alice, uri, json!({"enabled": true})).await;
    ks.assert_active(&w.bob, "acme", "bob", "admin").await;
}

#[tokio::test]
async fn usage_of_revoked_disabled_and_unknown_keys_is_not_recorded() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    let revoked = ks.rotate(&w.alice, "acme", "bob").await; // bob's first key is revoked
    let (old_bob, bob) = (w.bob.clone(), revoked);
    patch(
        &ks,
        &w.oscar,
        &key_uri("other", "olga", &w.olga),
        json!({"enabled": false}),
    )
    .await;
    let report = json!({"key_ids": [key_id(&old_bob), key_id(&w.olga), key_id("never-issued")]});
    let r = ks.call("POST", "/v1/usage", None, Some(report)).await;
    assert_eq!(r.json(), json!({"recorded": 0}));
    let listed = ks
        .call("GET", &admin::keys("other", "olga"), Some(&w.oscar), None)
        .await
        .json();
    assert_eq!(listed["keys"][0]["last_used_at"], Value::Null);
    // A key of a disabled user is not recorded either; an active key is.
    patch(
        &ks,
        &w.alice,
        &admin::user("acme", "alice"),
        json!({"enabled": false}),
    )
    .await;
    let report = json!({"key_ids": [key_id(&w.alice), key_id(&bob)]});
    let r = ks.call("POST", "/v1/usage", None, Some(report)).await;
    assert_eq!(r.json(), json!({"recorded": 1}));
}

/// `POST route {"user_key": value}` by `by` (`route`: a leak report's, find or revoke).
async fn leak(ks: &Ks, route: &str, by: &str, value: &str) -> common::Resp {
    ks.call("POST", route, Some(by), Some(json!({"user_key": value})))
        .await
}

#[tokio::test]
async fn a_leaked_key_is_found_and_revoked_by_root_or_its_accounts_admin_only() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    let r = leak(&ks, admin::KEYS_FIND, ROOT_KEY, &w.bob).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.headers["cache-control"], "no-store");
    let found = json!({"account_id": "acme", "user_id": "bob", "key": key_ref(&w.bob),
                       "name": "default", "state": "active"});
    assert_eq!(r.json(), found);
    assert_eq!(
        leak(&ks, admin::KEYS_FIND, &w.alice, &w.bob).await.json(),
        found
    );
    // Another account's admin: exactly an unknown key's answer. Members: 403.
    let unknown = leak(
        &ks,
        admin::KEYS_FIND,
        &w.oscar,
        "kg_never-issued-0000000000000000000000",
    )
    .await;
    let other = leak(&ks, admin::KEYS_FIND, &w.oscar, &w.bob).await;
    other.assert_error(StatusCode::NOT_FOUND, "no such key");
    assert_eq!((other.status, &other.body), (unknown.status, &unknown.body));
    assert_eq!(other.headers["cache-control"], "no-store");
    for path in [admin::KEYS_FIND, admin::KEYS_REVOKE] {
        leak(&ks, path, &w.olga, &w.olga)
            .await
            .assert_error(StatusCode::FORBIDDEN, "forbidden");
        leak(&ks, path, &w.bob, &w.bob)
            .await
            .assert_error(StatusCode::FORBIDDEN, "forbidden");
    }
    leak(&ks, admin::KEYS_REVOKE, &w.oscar, &w.bob)
        .await
        .assert_error(StatusCode::NOT_FOUND, "no such key");
    ks.assert_active(&w.bob, "acme", "bob", "member").await;

    // States: disabled, then revoked (by the account's admin), then found as revoked.
    patch(
        &ks,
        &w.alice,
        &key_uri("acme", "bob", &w.bob),
        json!({"enabled": false}),
    )
    .await;
    assert_eq!(
        leak(&ks, admin::KEYS_FIND, ROOT_KEY, &w.bob).await.json()["state"],
        "disabled"
    );
    let rev = ks.revision().await;
    let r = leak(&ks, admin::KEYS_REVOKE, &w.alice, &w.bob).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["state"], "revoked");
    assert_eq!(changed(&ks.changes(rev).await), ids(&[&w.bob]));
    assert_eq!(
        leak(&ks, admin::KEYS_FIND, &w.alice, &w.bob).await.json()["state"],
        "revoked"
    );
    // Root revokes any key, its own included.
    assert_eq!(
        leak(&ks, admin::KEYS_REVOKE, ROOT_KEY, &w.olga)
            .await
            .json()["state"],
        "revoked"
    );
    ks.assert_inactive(&w.olga).await;

    // Audited, by key reference only; never the value.
    let trail = audit(&ks).await;
    let leaks: Vec<(&str, &str)> = trail
        .iter()
        .filter(|e| e["action"].as_str().unwrap().starts_with("key."))
        .filter(|e| e["action"] != "key.update")
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["actor"]["user_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        leaks,
        [
            ("key.find", "root"),
            ("key.find", "alice"),
            ("key.find", "oscar"),
            ("key.find", "oscar"),
            ("key.revoke_by_value", "oscar"),
            ("key.find", "root"),
            ("key.revoke_by_value", "alice"),
            ("key.find", "alice"),
            ("key.revoke_by_value", "root"),
        ]
    );
    let oscar_miss = trail
        .iter()
        .find(|e| e["actor"]["user_id"] == "oscar" && e["action"] == "key.find")
        .unwrap();
    assert_eq!(oscar_miss["account_id"], "other", "{oscar_miss}");
    assert_eq!(oscar_miss["detail"], json!({"found": false}));
    let body = serde_json::to_vec(&trail).unwrap();
    assert!(!contains(&body, w.bob.as_bytes()));
    assert!(!contains(&body, key_id(&w.bob).as_bytes()));

    // Bad input: no value, an empty one, a value in the URL is no route.
    for (body, needle) in [
        (json!({}), "missing field `user_key`"),
        (json!({"user_key": ""}), "must not be empty"),
        (json!({"user_key": 1}), "invalid type"),
        (json!({"user_key": "x", "more": 1}), "unknown field"),
    ] {
        ks.call("POST", admin::KEYS_FIND, Some(ROOT_KEY), Some(body))
            .await
            .assert_error(StatusCode::BAD_REQUEST, needle);
    }
}

#[tokio::test]
async fn a_patch_that_removes_an_expiry_is_audited_apart_from_one_that_changes_nothing() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    let uri = key_uri("acme", "bob", &w.bob);
    let at = "2099-01-01T00:00:00Z";
    patch(&ks, &w.alice, &uri, json!({"expires_at": at})).await;
    let set = last_entry(&ks, "key.update").await;
    assert_eq!(
        set["detail"],
        json!({"expires_at": {"before": null, "after": at}})
    );
    patch(&ks, &w.alice, &uri, json!({"expires_at": null})).await;
    let removed = last_entry(&ks, "key.update").await;
    assert_eq!(
        removed["detail"],
        json!({"expires_at": {"before": at, "after": null}})
    );
    patch(&ks, &w.alice, &uri, json!({"expires_at": null})).await;
    let nothing = last_entry(&ks, "key.update").await;
    assert_eq!(
        nothing["detail"],
        json!({"expires_at": {"before": null, "after": null}})
    );
    // Times in details are RFC 3339, creations included.
    let r = ks
        .call(
            "POST",
            &admin::users("acme"),
            Some(&w.alice),
            Some(json!({"user_id": "carol", "role": "member", "expires_at": at})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let created = last_entry(&ks, "user.create").await;
    assert_eq!(created["detail"]["expires_at"], at, "{created}");
    // Every entry names the acting key by reference.
    assert_eq!(removed["actor"]["key"], key_ref(&w.alice));
    assert_eq!(created["actor"]["key"], key_ref(&w.alice));
    // Account claims and names, too.
    patch(
        &ks,
        ROOT_KEY,
        &admin::account("acme"),
        json!({"claims": {"plan": "pro"}}),
    )
    .await;
    assert_eq!(
        last_entry(&ks, "account.set_claims").await["detail"],
        json!({"claims": {"before": {}, "after": {"plan": "pro"}}})
    );
    patch(&ks, &w.alice, &uri, json!({"name": "laptop"})).await;
    assert_eq!(
        last_entry(&ks, "key.update").await["detail"],
        json!({"name": {"before": "default", "after": "laptop"}})
    );
}

#[tokio::test]
async fn root_key_install_replacement_and_revival_are_audited() {
    let ks = Ks::new().await;
    let root_ref = key_ref(ROOT_KEY);
    let install = last_entry(&ks, "root_key.install").await;
    assert_eq!(
        install["actor"],
        json!({"account_id": "_system", "user_id": "(configuration)", "key": null})
    );
    assert_eq!(install["detail"], json!({"key": root_ref, "revoked": []}));
    const NEW_ROOT: &str = "second-root-key-Hk29Xq7Lw";
    let ks = ks.reopen(|c| c.root_key = Some(NEW_ROOT.to_owned())).await;
    let r = ks
        .call("GET", admin::AUDIT, Some(NEW_ROOT), None)
        .await
        .json();
    let replace = r["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "root_key.replace")
        .unwrap()
        .clone();
    assert_eq!(
        replace["detail"],
        json!({"key": key_ref(NEW_ROOT), "revoked": [root_ref]})
    );
    // The same key again writes nothing; the first one back is a revival.
    let ks = ks.reopen(|c| c.root_key = Some(NEW_ROOT.to_owned())).await;
    let ks = ks.reopen(|c| c.root_key = Some(ROOT_KEY.to_owned())).await;
    let actions: Vec<String> = audit(&ks)
        .await
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        actions,
        ["root_key.install", "root_key.replace", "root_key.revive"]
    );
}

#[tokio::test]
async fn refused_admin_calls_are_audited_without_the_presented_value_and_bounded() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    let wrong = "kg_a-guessed-key-that-is-not-in-the-store-00";
    ks.call("GET", &admin::users("acme"), Some(wrong), None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    ks.call("DELETE", &admin::account("acme"), Some(&w.bob), None)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    let trail = audit(&ks).await;
    let refused: Vec<&Value> = trail
        .iter()
        .filter(|e| e["action"] == "admin.refused")
        .collect();
    assert_eq!(refused.len(), 2, "{trail:?}");
    assert_eq!(
        (
            &refused[0]["actor"],
            &refused[0]["account_id"],
            &refused[0]["detail"]
        ),
        (
            &json!({"account_id": "", "user_id": "", "key": null}),
            &json!("_system"),
            &json!({"method": "GET", "route": admin::USERS,
                    "status": 401, "reason": "unknown, revoked, disabled or expired key"})
        )
    );
    assert_eq!(
        refused[1]["actor"],
        json!({"account_id": "acme", "user_id": "bob", "key": key_ref(&w.bob)})
    );
    assert_eq!(refused[1]["account_id"], "acme");
    assert_eq!(refused[1]["detail"]["status"], 403);
    let body = serde_json::to_vec(&trail).unwrap();
    assert!(!contains(&body, wrong.as_bytes()));
    assert!(!contains(&body, key_id(wrong).as_bytes()));

    // A flood: every refusal is counted, at most the bucket's tokens are written, and only
    // the newest `kept` entries stay. (The default bound is 60 a minute, 10,000 kept; here a
    // bucket of 5 that never refills and 4 kept, so nothing depends on time.)
    *ks.state.refusals.lock().unwrap() = RefusalBound::new(5, 0, 4);
    for _ in 0..100 {
        ks.call("GET", admin::AUDIT, None, None).await;
    }
    let kept: Vec<Value> = audit(&ks)
        .await
        .into_iter()
        .filter(|e| e["action"] == "admin.refused")
        .collect();
    assert_eq!(kept.len(), 4, "{kept:?}");
    assert!(kept.iter().all(|e| e["detail"]["route"] == admin::AUDIT));
    assert_eq!(kept[0]["detail"]["reason"], "no key");
    assert_eq!(ks.metric("keystore_admin_refusals_total").await, 102);
    assert_eq!(ks.metric("keystore_audit_refusals_dropped_total").await, 95);
}

#[tokio::test]
async fn a_refused_import_is_in_the_audit_trail() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    let uri = &admin::keys("acme", "bob");
    let body = json!({"name": "probe", "user_key": w.alice});
    let r = ks.call("POST", uri, Some(&w.bob), Some(body)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    let refused = last_entry(&ks, "admin.refused").await;
    assert_eq!(
        refused["actor"],
        json!({"account_id": "acme", "user_id": "bob", "key": key_ref(&w.bob)})
    );
    assert_eq!(refused["account_id"], "acme");
    let detail = &refused["detail"];
    assert_eq!(
        (&detail["method"], &detail["route"], &detail["status"]),
        (&json!("POST"), &json!(admin::KEYS), &json!(403))
    );
    assert!(
        detail["reason"].as_str().unwrap().contains("import"),
        "{detail}"
    );
    // The presented value (alice's key) is not recorded.
    let body = serde_json::to_vec(&audit(&ks).await).unwrap();
    assert!(!contains(&body, w.alice.as_bytes()));
    assert!(!contains(&body, key_id(&w.alice).as_bytes()));
}
