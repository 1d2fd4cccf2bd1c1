//! The admin API and key lookups through the real router over a real database (SQLite, or
//! PostgreSQL with `KEYSTORE_TEST_DATABASE_URL`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use axum::http::StatusCode;
use common::{changed, contains, ids, Ks, ROOT_KEY};
use keygate_protocol::routes::admin;

/// Another root key (as strong as one the binary accepts).
const NEW_ROOT: &str = "root-test-key-2-Hw9Jd4Ks7Lq1Vm";
use keystore::keys::key_id;
use serde_json::json;

#[tokio::test]
async fn healthz_and_metrics() {
    let ks = Ks::new().await;
    let r = ks.call("GET", "/healthz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"status": "ok"}));

    let unknown = format!("/v1/keys/{}", "0".repeat(64));
    assert_eq!(
        ks.call("GET", &unknown, None, None).await.status,
        StatusCode::NOT_FOUND
    );
    let r = ks.call("GET", "/metrics", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    for (name, value) in [
        ("keystore_lookups", 1),
        ("keystore_lookups_found", 0),
        ("keystore_lookups_not_found", 1),
        ("keystore_changes_requests", 0),
        ("keystore_admin_requests", 0),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} counter\n{name}_total {value}\n")),
            "{text}"
        );
    }
    // Latency per route template (never the raw path) and status class; database latency.
    for line in [
        r#"keystore_request_duration_seconds_count{route="/v1/keys/{key_id}",method="GET",status="4xx"} 1"#,
        r#"keystore_request_duration_seconds_count{route="/healthz",method="GET",status="2xx"} 1"#,
        r#"keystore_db_duration_seconds_count{op="lookup",kind="read"} 1"#,
        "\nkeystore_build_info{version=",
        "\nprocess_cpu_seconds_total ",
        "\nprocess_resident_memory_bytes ",
        "\nprocess_open_fds ",
    ] {
        assert!(text.contains(line), "{line} missing in {text}");
    }
    // The connection pool's state, on PostgreSQL only (SQLite has no pool).
    for line in [
        "\nkeystore_db_pool_connections{state=\"idle\"} ",
        "\nkeystore_db_pool_connections{state=\"in_use\"} ",
        "\nkeystore_db_pool_max_connections ",
        "\nkeystore_db_pool_waiting 0\n",
    ] {
        assert_eq!(text.contains(line), ks.is_postgres(), "{line} in {text}");
    }
    assert!(!text.contains(&"0".repeat(64)), "{text}");
}

#[tokio::test]
async fn create_account_then_lookup_returns_identity() {
    let ks = Ks::new().await;
    let key = ks.create_account("acme", "alice").await;
    assert!(key.starts_with("kg_"), "{key}");
    assert_eq!(key.len(), 46, "{key}");

    ks.assert_active(&key, "acme", "alice", "admin").await;
    // The root key is a key like any other.
    ks.assert_active(ROOT_KEY, "_system", "root", "root").await;
    // Unknown key ids are 404 with the protocol's exact body.
    ks.assert_inactive("kg_not-a-key").await;

    // Lookups are counted.
    assert_eq!(ks.metric("keystore_lookups_total").await, 3);
    assert_eq!(ks.metric("keystore_lookups_found_total").await, 2);
    assert_eq!(ks.metric("keystore_lookups_not_found_total").await, 1);
    assert_eq!(ks.metric("keystore_admin_requests_total").await, 1);

    // The response carrying the key is not cacheable.
    let r = ks
        .call(
            "POST",
            admin::ACCOUNTS,
            Some(ROOT_KEY),
            Some(json!({"account_id": "other", "admin_user_id": "bob"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.headers["cache-control"], "no-store");
}

/// The admin key is read by the filter's rules: a header given twice is refused, even when
/// both hold the same valid key (the key store used to take the first), and `x-api-key`
/// decides over `Authorization` even when its key is malformed.
#[tokio::test]
async fn a_key_header_given_twice_is_refused_and_x_api_key_decides() {
    let ks = Ks::new().await;
    let admin = ks.create_account("acme", "alice").await;
    let bearer = format!("Bearer {admin}");
    let cases: [&[(&str, &str)]; 4] = [
        &[("x-api-key", &admin), ("x-api-key", &admin)],
        &[("x-api-key", &admin), ("x-api-key", "kg_other")],
        &[("authorization", &bearer), ("authorization", &bearer)],
        &[("x-api-key", "kg_a b"), ("authorization", &bearer)],
    ];
    for headers in cases {
        let mut req = axum::http::Request::builder()
            .method("GET")
            .uri(admin::users("acme"));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(axum::body::Body::empty()).unwrap();
        ks.send(req)
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let req = axum::http::Request::builder()
        .method("GET")
        .uri(admin::users("acme"))
        .header("x-api-key", format!(" {admin}\t"))
        .header("authorization", "Basic bm9ib2R5")
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(ks.send(req).await.status, StatusCode::OK);
}

#[tokio::test]
async fn bearer_and_x_api_key_both_authenticate() {
    let ks = Ks::new().await;
    let admin = ks.create_account("acme", "alice").await;
    let req = axum::http::Request::builder()
        .method("POST")
        .uri(admin::users("acme"))
        .header("authorization", format!("Bearer {admin}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(
            r#"{"user_id":"bob","role":"member"}"#,
        ))
        .unwrap();
    let r = ks.send(req).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let bob = r.json()["user_key"].as_str().unwrap().to_owned();
    ks.assert_active(&bob, "acme", "bob", "member").await;

    for (header, value) in [
        ("authorization", format!("Basic {admin}")),
        ("authorization", "Bearer ".to_owned()),
        ("authorization", format!("Bearer {admin}x")),
        ("x-api-key", String::new()),
        ("x-api-key", "kg_unknown".to_owned()),
    ] {
        let req = axum::http::Request::builder()
            .method("GET")
            .uri(admin::users("acme"))
            .header(header, value)
            .body(axum::body::Body::empty())
            .unwrap();
        ks.send(req)
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let r = ks.call("GET", &admin::users("acme"), None, None).await;
    let problem = r.assert_error(StatusCode::UNAUTHORIZED, "a valid key is required");
    assert_eq!(problem["type"], "https://keygate.dev/problems/unauthorized");
    assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"keygate\"");
}

#[tokio::test]
async fn account_admin_manages_users() {
    let ks = Ks::new().await;
    let admin = ks.create_account("acme", "alice").await;
    let bob = ks.create_user(&admin, "acme", "bob", "member").await;
    let carol = ks.create_user(&admin, "acme", "carol", "admin").await;
    ks.assert_active(&bob, "acme", "bob", "member").await;
    ks.assert_active(&carol, "acme", "carol", "admin").await;
    // Root may create users in any account.
    let dave = ks.create_user(ROOT_KEY, "acme", "dave", "reader").await;
    ks.assert_active(&dave, "acme", "dave", "reader").await;
    // A second admin has the same powers.
    let erin = ks.create_user(&carol, "acme", "erin", "member").await;
    ks.assert_active(&erin, "acme", "erin", "member").await;

    let r = ks
        .call("GET", &admin::users("acme"), Some(&admin), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["account_id"], "acme");
    let users: Vec<(String, String)> = v["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            assert!(
                u.get("user_key").is_none() && u.get("key_id").is_none(),
                "{u}"
            );
            (
                u["user_id"].as_str().unwrap().to_owned(),
                u["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("alice", "admin"),
        ("bob", "member"),
        ("carol", "admin"),
        ("dave", "reader"),
        ("erin", "member"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(users, expected);
    assert!(!r.body.windows(3).any(|w| w == b"kg_"));
}

#[tokio::test]
async fn forbidden_cases() {
    let ks = Ks::new().await;
    let acme_admin = ks.create_account("acme", "alice").await;
    let other_admin = ks.create_account("other", "oscar").await;
    let bob = ks.create_user(&acme_admin, "acme", "bob", "member").await;
    let olga = ks
        .create_user(&other_admin, "other", "olga", "member")
        .await;
    let before = ks.revision().await;

    let forbidden = [
        // Only root creates accounts.
        (
            "POST",
            admin::ACCOUNTS.to_owned(),
            &acme_admin,
            Some(json!({"account_id":"x","admin_user_id":"y"})),
        ),
        (
            "POST",
            admin::ACCOUNTS.to_owned(),
            &bob,
            Some(json!({"account_id":"x","admin_user_id":"y"})),
        ),
        // Admins act only in their own account; members not at all.
        (
            "POST",
            admin::users("other"),
            &acme_admin,
            Some(json!({"user_id":"z","role":"member"})),
        ),
        (
            "POST",
            admin::users("acme"),
            &bob,
            Some(json!({"user_id":"z","role":"member"})),
        ),
        ("GET", admin::users("other"), &acme_admin, None),
        ("GET", admin::users("acme"), &bob, None),
        (
            "PATCH",
            admin::user("other", "olga"),
            &acme_admin,
            Some(json!({"role":"admin"})),
        ),
        (
            "PATCH",
            admin::user("acme", "bob"),
            &bob,
            Some(json!({"role":"admin"})),
        ),
        ("DELETE", admin::user("other", "olga"), &acme_admin, None),
        ("DELETE", admin::user("acme", "alice"), &bob, None),
        // A user rotates only its own key.
        ("POST", admin::user_key("acme", "alice"), &bob, None),
        ("POST", admin::user_key("other", "olga"), &acme_admin, None),
        ("POST", admin::user_key("other", "olga"), &bob, None),
        // Only root revokes accounts.
        ("DELETE", admin::account("acme"), &acme_admin, None),
        ("DELETE", admin::account("other"), &acme_admin, None),
        // An admin of another account gets 403, not 404, for accounts that do not exist.
        (
            "POST",
            admin::users("nope"),
            &acme_admin,
            Some(json!({"user_id":"z","role":"member"})),
        ),
    ];
    for (method, uri, key, body) in forbidden {
        let r = ks.call(method, &uri, Some(key), body).await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{method} {uri}: {:?}",
            r.body
        );
        r.assert_error(StatusCode::FORBIDDEN, "forbidden");
    }
    // Nothing changed.
    assert_eq!(ks.revision().await, before);
    for (key, account, user, role) in [
        (&acme_admin, "acme", "alice", "admin"),
        (&other_admin, "other", "oscar", "admin"),
        (&bob, "acme", "bob", "member"),
        (&olga, "other", "olga", "member"),
    ] {
        ks.assert_active(key, account, user, role).await;
    }

    // The _system account is managed by configuration only, even for root.
    for (method, uri, body) in [
        (
            "POST",
            &admin::users("_system"),
            Some(json!({"user_id":"z","role":"admin"})),
        ),
        ("POST", &admin::user_key("_system", "root"), None),
        (
            "PATCH",
            &admin::user("_system", "root"),
            Some(json!({"role":"admin"})),
        ),
        ("DELETE", &admin::user("_system", "root"), None),
        ("DELETE", &admin::account("_system"), None),
    ] {
        ks.call(method, uri, Some(ROOT_KEY), body)
            .await
            .assert_error(StatusCode::FORBIDDEN, "_system");
    }
    ks.assert_active(ROOT_KEY, "_system", "root", "root").await;
}

#[tokio::test]
async fn rotate_revokes_old_key() {
    let ks = Ks::new().await;
    let admin = ks.create_account("acme", "alice").await;
    let bob1 = ks.create_user(&admin, "acme", "bob", "member").await;
    let rev0 = ks.revision().await;

    // The user itself.
    let bob2 = ks.rotate(&bob1, "acme", "bob").await;
    assert_ne!(bob1, bob2);
    ks.assert_inactive(&bob1).await;
    ks.assert_active(&bob2, "acme", "bob", "member").await;
    let feed = ks.changes(rev0).await;
    assert_eq!(changed(&feed), ids(&[&bob1, &bob2]));
    assert_eq!(feed["revision"].as_i64().unwrap(), rev0 + 2);
    // The old key no longer authenticates.
    ks.call("POST", &admin::user_key("acme", "bob"), Some(&bob1), None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");

    // The account admin, then root.
    let bob3 = ks.rotate(&admin, "acme", "bob").await;
    let bob4 = ks.rotate(ROOT_KEY, "acme", "bob").await;
    ks.assert_inactive(&bob2).await;
    ks.assert_inactive(&bob3).await;
    ks.assert_active(&bob4, "acme", "bob", "member").await;

    // An admin may rotate its own key.
    let admin2 = ks.rotate(&admin, "acme", "alice").await;
    ks.assert_inactive(&admin).await;
    ks.assert_active(&admin2, "acme", "alice", "admin").await;

    let feed = ks.changes(rev0).await;
    assert_eq!(
        changed(&feed),
        ids(&[&bob1, &bob2, &bob3, &bob4, &admin, &admin2])
    );

    // Unknown user / account.
    ks.call(
        "POST",
        &admin::user_key("acme", "nobody"),
        Some(ROOT_KEY),
        None,
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "nobody");
    ks.call(
        "POST",
        &admin::user_key("nope", "bob"),
        Some(ROOT_KEY),
        None,
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "nope");
}

#[tokio::test]
async fn role_change() {
    let ks = Ks::new().await;
    let admin = ks.create_account("acme", "alice").await;
    let bob = ks.create_user(&admin, "acme", "bob", "member").await;
    let rev0 = ks.revision().await;

    let r = ks
        .call(
            "PATCH",
            &admin::user("acme", "bob"),
            Some(&admin),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json(), json!({"user_id": "bob", "role": "admin"}));
    ks.assert_active(&bob, "acme", "bob", "admin").await;
    let feed = ks.changes(rev0).await;
    assert_eq!(changed(&feed), ids(&[&bob]));
    assert_eq!(feed["revision"].as_i64().unwrap(), rev0 + 1);

    // Bob is now an admin and may create users.
    ks.create_user(&bob, "acme", "carol", "member").await;

    // Setting the same role again changes nothing.
    let rev1 = ks.revision().await;
    let r = ks
        .call(
            "PATCH",
            &admin::user("acme", "bob"),
            Some(ROOT_KEY),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(ks.revision().await, rev1);

    // Demoting alice (by root) takes her admin powers away.
    let r = ks
        .call(
            "PATCH",
            &admin::user("acme", "alice"),
            Some(ROOT_KEY),
            Some(json!({"role": "member"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    ks.assert_active(&admin, "acme", "alice", "member").await;
    assert_eq!(changed(&ks.changes(rev1).await), ids(&[&admin]));
    ks.call(
        "POST",
        &admin::users("acme"),
        Some(&admin),
        Some(json!({"user_id": "dave", "role": "member"})),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "forbidden");

    // root can never be granted.
    ks.call(
        "PATCH",
        &admin::user("acme", "bob"),
        Some(ROOT_KEY),
        Some(json!({"role": "root"})),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "root");
    ks.call(
        "PATCH",
        &admin::user("acme", "nobody"),
        Some(ROOT_KEY),
        Some(json!({"role": "member"})),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "nobody");
}

#[tokio::test]
async fn revoke_user() {
    let ks = Ks::new().await;
    let admin = ks.create_account("acme", "alice").await;
    let bob = ks.create_user(&admin, "acme", "bob", "member").await;
    let carol = ks.create_user(&admin, "acme", "carol", "member").await;
    let rev0 = ks.revision().await;

    let r = ks
        .call("DELETE", &admin::user("acme", "bob"), Some(&admin), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json(), json!({"revoked": 1}));
    ks.assert_inactive(&bob).await;
    ks.assert_active(&carol, "acme", "carol", "member").await;
    assert_eq!(changed(&ks.changes(rev0).await), ids(&[&bob]));

    // Gone: a second delete, a rotation or a role change is 404; the id is not reused.
    ks.call("DELETE", &admin::user("acme", "bob"), Some(&admin), None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "bob");
    ks.call("POST", &admin::user_key("acme", "bob"), Some(&admin), None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "bob");
    ks.call(
        "POST",
        &admin::users("acme"),
        Some(&admin),
        Some(json!({"user_id": "bob", "role": "member"})),
    )
    .await
    .assert_error(StatusCode::CONFLICT, "bob");
    ks.assert_inactive(&bob).await;

    // Root may revoke users too.
    let r = ks
        .call(
            "DELETE",
            &admin::user("acme", "carol"),
            Some(ROOT_KEY),
            None,
        )
        .await;
    assert_eq!(r.json(), json!({"revoked": 1}));
    ks.assert_inactive(&carol).await;
}

#[tokio::test]
async fn revoke_account() {
    let ks = Ks::new().await;
    let admin = ks.create_account("acme", "alice").await;
    let bob = ks.create_user(&admin, "acme", "bob", "member").await;
    let carol = ks.create_user(&admin, "acme", "carol", "member").await;
    let other = ks.create_account("other", "oscar").await;
    let rev0 = ks.revision().await;

    let r = ks
        .call("DELETE", &admin::account("acme"), Some(ROOT_KEY), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json(), json!({"revoked": 3}));
    for key in [&admin, &bob, &carol] {
        ks.assert_inactive(key).await;
    }
    ks.assert_active(&other, "other", "oscar", "admin").await;
    let feed = ks.changes(rev0).await;
    assert_eq!(changed(&feed), ids(&[&admin, &bob, &carol]));
    assert_eq!(feed["revision"].as_i64().unwrap(), rev0 + 3);

    // The account's admin can no longer authenticate; the account is gone for root.
    ks.call("GET", &admin::users("acme"), Some(&admin), None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    for (method, uri, body) in [
        ("GET", &admin::users("acme"), None),
        ("DELETE", &admin::account("acme"), None),
        (
            "POST",
            &admin::users("acme"),
            Some(json!({"user_id":"z","role":"member"})),
        ),
        ("POST", &admin::user_key("acme", "bob"), None),
    ] {
        ks.call(method, uri, Some(ROOT_KEY), body)
            .await
            .assert_error(StatusCode::NOT_FOUND, "acme");
    }
    // Account ids are not reused.
    ks.call(
        "POST",
        admin::ACCOUNTS,
        Some(ROOT_KEY),
        Some(json!({"account_id": "acme", "admin_user_id": "alice"})),
    )
    .await
    .assert_error(StatusCode::CONFLICT, "acme");
}

#[tokio::test]
async fn keys_are_never_stored_in_plain_text() {
    let ks = Ks::new().await;
    let admin = ks.create_account("acme", "alice").await;
    let bob = ks.create_user(&admin, "acme", "bob", "member").await;
    let bob2 = ks.rotate(&bob, "acme", "bob").await;
    let all = ks.stored_bytes().await;
    // The scan sees the data: key ids and account ids are there...
    assert!(contains(&all, b"acme"));
    assert!(contains(&all, key_id(&bob2).as_bytes()));
    assert!(contains(&all, key_id(ROOT_KEY).as_bytes()));
    // ...but no raw key, nor the body of one.
    for raw in [ROOT_KEY, &admin, &bob, &bob2] {
        assert!(
            !contains(&all, raw.as_bytes()),
            "raw key found in the database"
        );
        assert!(
            !contains(&all, &raw.as_bytes()[3..]),
            "raw key found in the database"
        );
    }
}

#[tokio::test]
async fn data_and_root_key_persist_across_reopen() {
    let ks = Ks::new().await;
    let admin = ks.create_account("acme", "alice").await;
    let rev = ks.revision().await;

    // Reopen with a different root key: the new one replaces the old one.
    let ks = ks.reopen(|c| c.root_key = Some(NEW_ROOT.to_owned())).await;
    ks.assert_active(&admin, "acme", "alice", "admin").await;
    ks.assert_inactive(ROOT_KEY).await;
    ks.assert_active(NEW_ROOT, "_system", "root", "root").await;
    let feed = ks.changes(rev).await;
    assert_eq!(changed(&feed), ids(&[ROOT_KEY, NEW_ROOT]));
    ks.create_user(NEW_ROOT, "acme", "bob", "member").await;

    // Reopen without a root key: nothing else is lost, but the stored root key is revoked
    // (an operator who removes it means it), in the feed and in the audit trail.
    let rev = ks.revision().await;
    let ks = ks.reopen(|_| {}).await;
    ks.assert_inactive(NEW_ROOT).await;
    ks.assert_active(&admin, "acme", "alice", "admin").await;
    assert_eq!(changed(&ks.changes(rev).await), ids(&[NEW_ROOT]));
    let audit = ks
        .call(
            "GET",
            &admin::account_audit("_system"),
            Some(NEW_ROOT),
            None,
        )
        .await;
    audit.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn no_root_key_means_no_admin() {
    let ks = Ks::with(|c| c.root_key = None).await;
    ks.call(
        "POST",
        admin::ACCOUNTS,
        Some(ROOT_KEY),
        Some(json!({"account_id": "acme", "admin_user_id": "alice"})),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(ks.revision().await, 0);
}

#[tokio::test]
async fn lookup_delay_is_applied() {
    let ks = Ks::with(|c| c.lookup_delay = std::time::Duration::from_millis(150)).await;
    let start = std::time::Instant::now();
    ks.assert_active(ROOT_KEY, "_system", "root", "root").await;
    assert!(start.elapsed() >= std::time::Duration::from_millis(150));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_and_writes() {
    let ks = std::sync::Arc::new(Ks::new().await);
    let admin = ks.create_account("acme", "alice").await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let ks = std::sync::Arc::clone(&ks);
        let admin = admin.clone();
        tasks.push(tokio::spawn(async move {
            let user = format!("u{i}");
            let mut key = ks.create_user(&admin, "acme", &user, "member").await;
            for _ in 0..10 {
                ks.assert_active(&admin, "acme", "alice", "admin").await;
                let next = ks.rotate(&key, "acme", &user).await;
                ks.assert_inactive(&key).await;
                ks.assert_active(&next, "acme", &user, "member").await;
                key = next;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // 1 root + 1 account + 8 users + 8 * 10 rotations of 2 changes each.
    assert_eq!(ks.revision().await, 2 + 8 + 160);
    assert_eq!(ks.metric("keystore_lookups_not_found_total").await, 80);
}
