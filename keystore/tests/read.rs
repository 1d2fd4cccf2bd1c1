//! Reading the admin API's objects: get and cursor-paged list of accounts, users and keys,
//! every time in RFC 3339. Through the real router over a real database (SQLite, or
//! PostgreSQL with `KEYSTORE_TEST_DATABASE_URL`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use axum::http::StatusCode;
use common::{key_ref, post, world, Ks, ROOT_KEY};
use keygate_protocol::routes::admin;
use serde_json::{json, Value};

/// The users of account `acme`.
fn acme_users() -> String {
    admin::users("acme")
}

/// Every item of the list at `uri`, page by page with `limit`: (items, pages).
async fn all_pages(ks: &Ks, by: &str, uri: &str, field: &str, limit: usize) -> (Vec<Value>, usize) {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for pages in 1..100 {
        let mut page_uri = format!("{uri}?limit={limit}");
        if let Some(c) = &cursor {
            page_uri.push_str(&format!("&cursor={c}"));
        }
        let r = ks.call("GET", &page_uri, Some(by), None).await;
        assert_eq!(r.status, StatusCode::OK, "{page_uri}: {:?}", r.body);
        let page = r.json();
        let got = page[field].as_array().unwrap();
        assert!(got.len() <= limit, "{page}");
        items.extend(got.iter().cloned());
        match page.get("next_cursor") {
            Some(c) => cursor = Some(c.as_str().unwrap().to_owned()),
            None => return (items, pages),
        }
    }
    panic!("no last page")
}

fn is_rfc3339(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|t| t.len() == 20 && t.ends_with('Z') && t.as_bytes()[10] == b'T')
}

#[tokio::test]
async fn users_are_listed_a_page_at_a_time_each_once_in_id_order() {
    let ks = Ks::new().await;
    let alice = ks.create_account("acme", "alice").await;
    for u in ["u1", "u2", "u3", "u4"] {
        ks.create_user(&alice, "acme", u, "member").await;
    }
    let (users, pages) = all_pages(&ks, &alice, &acme_users(), "users", 2).await;
    let ids: Vec<&str> = users
        .iter()
        .map(|u| u["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alice", "u1", "u2", "u3", "u4"]);
    assert_eq!(pages, 3);
    for u in &users {
        assert!(is_rfc3339(&u["created_at"]), "{u}");
    }
    // A user revoked between two pages neither shifts nor repeats the next page.
    let first = ks
        .call(
            "GET",
            &format!("{}?limit=2", acme_users()),
            Some(&alice),
            None,
        )
        .await
        .json();
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let r = ks
        .call("DELETE", &admin::user("acme", "u1"), Some(&alice), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let next = ks
        .call(
            "GET",
            &format!("{}?limit=2&cursor={cursor}", acme_users()),
            Some(&alice),
            None,
        )
        .await
        .json();
    let ids: Vec<&str> = next["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["u2", "u3"]);
    // The default page holds them all, with no cursor.
    let r = ks
        .call("GET", &acme_users(), Some(&alice), None)
        .await
        .json();
    assert_eq!(r["users"].as_array().unwrap().len(), 4);
    assert!(r.get("next_cursor").is_none(), "{r}");
}

#[tokio::test]
async fn limit_outside_1_to_1000_and_foreign_cursors_are_400() {
    let ks = Ks::new().await;
    let alice = ks.create_account("acme", "alice").await;
    let keys = &admin::keys("acme", "alice");
    for uri in [acme_users().as_str(), keys, admin::ACCOUNTS] {
        let by = if uri.ends_with("accounts") {
            ROOT_KEY
        } else {
            alice.as_str()
        };
        for q in ["limit=0", "limit=1001", "limit=-1", "limit=ten"] {
            let r = ks.call("GET", &format!("{uri}?{q}"), Some(by), None).await;
            r.assert_error(
                StatusCode::BAD_REQUEST,
                "limit must be an integer from 1 to 1000",
            );
            assert_eq!(r.problem_kind(), "invalid-request");
        }
        for q in ["limit=1", "limit=1000"] {
            let r = ks.call("GET", &format!("{uri}?{q}"), Some(by), None).await;
            assert_eq!(r.status, StatusCode::OK, "{uri}?{q}");
        }
        for cursor in ["%%%", "not-base64!", "", "MTIz"] {
            let r = ks
                .call("GET", &format!("{uri}?cursor={cursor}"), Some(by), None)
                .await;
            if uri == keys || cursor != "MTIz" {
                // MTIz is "123": a fine user or account id, a key cursor it is not.
                r.assert_error(StatusCode::BAD_REQUEST, "cursor");
            }
        }
    }
}

#[tokio::test]
async fn keys_are_listed_a_page_at_a_time_oldest_first_and_got_one_by_one() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    let keys_uri = &admin::keys("acme", "bob");
    let mut made = vec![key_ref(&w.bob)];
    for i in 0..4 {
        let r = post(&ks, keys_uri, &w.alice, json!({"name": format!("k{i}")})).await;
        assert_eq!(r.status, StatusCode::CREATED);
        made.push(key_ref(r.json()["user_key"].as_str().unwrap()));
    }
    let (keys, pages) = all_pages(&ks, &w.bob, keys_uri, "keys", 2).await;
    assert_eq!(pages, 3);
    let mut refs: Vec<String> = keys
        .iter()
        .map(|k| k["key"].as_str().unwrap().to_owned())
        .collect();
    let listed = refs.clone();
    refs.sort();
    made.sort();
    assert_eq!(refs, made, "every key exactly once");
    for k in &keys {
        assert!(is_rfc3339(&k["created_at"]), "{k}");
        // Each key read alone is what the list shows of it: by bob (own_keys) and alice.
        for by in [&w.bob, &w.alice] {
            let r = ks
                .call(
                    "GET",
                    &format!("{keys_uri}/{}", k["key"].as_str().unwrap()),
                    Some(by),
                    None,
                )
                .await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(&r.json(), k);
        }
    }
    let created: Vec<&str> = keys
        .iter()
        .map(|k| k["created_at"].as_str().unwrap())
        .collect();
    let mut sorted = created.clone();
    sorted.sort();
    assert_eq!(created, sorted, "oldest first: {listed:?}");
    let r = ks
        .call(
            "GET",
            &format!("{keys_uri}/{}", "0".repeat(16)),
            Some(&w.alice),
            None,
        )
        .await;
    r.assert_error(StatusCode::NOT_FOUND, "not found");
    assert_eq!(r.problem_kind(), "key-not-found");
    // Another account's admin: 403 naming account_admin.
    let r = ks
        .call(
            "GET",
            &format!("{keys_uri}/{}", made[0]),
            Some(&w.oscar),
            None,
        )
        .await;
    let problem = r.assert_error(StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(problem["missing_capability"], "account_admin");
}

#[tokio::test]
async fn a_user_is_got_by_its_admin_and_itself_with_times_in_rfc3339() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    let until = "2099-01-01T00:00:00Z";
    let r = ks
        .call(
            "PATCH",
            &admin::user("acme", "bob"),
            Some(&w.alice),
            Some(json!({"expires_at": until})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    for by in [&w.alice, &w.bob, &ROOT_KEY.to_owned()] {
        let r = ks
            .call("GET", &admin::user("acme", "bob"), Some(by), None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let user = r.json();
        assert_eq!(user["user_id"], "bob");
        assert_eq!(user["role"], "member");
        assert_eq!(user["enabled"], true);
        assert_eq!(user["expires_at"], until);
        assert!(is_rfc3339(&user["created_at"]), "{user}");
    }
    // The user list shows the same times.
    let list = ks
        .call("GET", &acme_users(), Some(&w.alice), None)
        .await
        .json();
    assert_eq!(list["users"][1]["expires_at"], until);
    assert!(is_rfc3339(&list["users"][1]["created_at"]), "{list}");
    // bob may not read alice; an unknown user is 404.
    let r = ks
        .call("GET", &admin::user("acme", "alice"), Some(&w.bob), None)
        .await;
    assert_eq!(
        r.assert_error(StatusCode::FORBIDDEN, "forbidden")["missing_capability"],
        "account_admin"
    );
    let r = ks
        .call("GET", &admin::user("acme", "nobody"), Some(&w.alice), None)
        .await;
    r.assert_error(StatusCode::NOT_FOUND, "nobody");
    assert_eq!(r.problem_kind(), "user-not-found");
}

#[tokio::test]
async fn accounts_are_listed_by_root_and_got_by_their_admins() {
    let ks = Ks::new().await;
    let w = world(&ks).await;
    for a in ["a1", "a2", "a3"] {
        ks.create_account(a, "boss").await;
    }
    let (accounts, _) = all_pages(&ks, ROOT_KEY, admin::ACCOUNTS, "accounts", 2).await;
    let ids: Vec<&str> = accounts
        .iter()
        .map(|a| a["account_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["_system", "a1", "a2", "a3", "acme", "other"]);
    for a in &accounts {
        assert!(is_rfc3339(&a["created_at"]), "{a}");
        assert_eq!(a["enabled"], true);
    }
    let r = ks.call("GET", admin::ACCOUNTS, Some(&w.alice), None).await;
    assert_eq!(
        r.assert_error(StatusCode::FORBIDDEN, "root")["required_role"],
        "root"
    );
    let r = ks
        .call("GET", &admin::account("acme"), Some(&w.alice), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let acme = r.json();
    assert_eq!(acme["account_id"], "acme");
    assert_eq!(acme["claims"], json!({}));
    assert!(is_rfc3339(&acme["created_at"]), "{acme}");
    let r = ks
        .call("GET", &admin::account("acme"), Some(&w.oscar), None)
        .await;
    assert_eq!(
        r.assert_error(StatusCode::FORBIDDEN, "acme")["missing_capability"],
        "account_admin"
    );
    let r = ks
        .call("GET", &admin::account("gone"), Some(ROOT_KEY), None)
        .await;
    r.assert_error(StatusCode::NOT_FOUND, "gone");
    assert_eq!(r.problem_kind(), "account-not-found");
}
