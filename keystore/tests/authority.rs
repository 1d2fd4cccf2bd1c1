//! Issue 18's control-plane findings 1, 2, 3, 4 and 7, each as the attacker's request against
//! the real router over a real database (SQLite, or PostgreSQL with
//! `KEYSTORE_TEST_DATABASE_URL`), and what it gets now; and capabilities on keys.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use axum::http::StatusCode;
use common::{changed, key_ref, now, post, Ks, Resp, ROOT_KEY};
use keygate_protocol::routes::admin;
use keystore::authority::RoleRegistry;
use keystore::store::rfc3339;
use serde_json::{json, Value};

fn keys_uri(user: &str) -> String {
    admin::keys("acme", user)
}

/// The raw key of a successful create or rotate answer.
fn new_key(r: &Resp) -> String {
    assert!(r.status.is_success(), "{}: {:?}", r.status, r.body);
    r.json()["user_key"].as_str().unwrap().to_owned()
}

/// `expires_at` of the lookup answer for `raw`.
async fn lookup_expiry(ks: &Ks, raw: &str) -> Option<i64> {
    let r = ks.lookup(raw).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.json()["expires_at"].as_i64()
}

#[tokio::test]
async fn a_key_in_its_rotation_grace_can_no_longer_call_the_admin_api() {
    let ks = Ks::new().await;
    let alice = ks.create_account("acme", "alice").await;
    let bob = ks.create_user(&alice, "acme", "bob", "member").await;
    // The documented leak response: bob rotates with a grace, so deployments keep working.
    let r = post(
        &ks,
        &admin::user_key("acme", "bob"),
        &bob,
        json!({"grace_s": 3600}),
    )
    .await;
    let bob2 = new_key(&r);
    // alice does the same on one of her keys.
    let rotate = format!("{}/{}/rotate", keys_uri("alice"), key_ref(&alice));
    let alice2 = new_key(&post(&ks, &rotate, &alice, json!({"grace_s": 3600})).await);
    let rev = ks.revision().await;

    // The attacker holding the old keys: a new key with no expiry, a rotation that leaves only
    // theirs, a backdoor admin user.
    let attacks = [
        (keys_uri("bob"), &bob, json!({"name": "mine"})),
        (admin::user_key("acme", "bob"), &bob, json!({})),
        (
            admin::users("acme"),
            &alice,
            json!({"user_id": "eve", "role": "admin"}),
        ),
        (admin::user_key("acme", "alice"), &alice, json!({})),
    ];
    for (uri, key, body) in attacks {
        post(&ks, &uri, key, body)
            .await
            .assert_error(StatusCode::FORBIDDEN, "rotation grace keeps traffic only");
    }
    let r = ks.call("GET", &keys_uri("bob"), Some(&bob), None).await;
    r.assert_error(StatusCode::FORBIDDEN, "neither own_keys nor account_admin");
    assert_eq!(ks.revision().await, rev, "nothing changed");
    // The old keys still pass the proxy until their grace ends; the new ones do everything.
    ks.assert_active_with_expiry(&bob).await;
    ks.assert_active_with_expiry(&alice).await;
    let listed = ks
        .call("GET", &keys_uri("bob"), Some(&bob2), None)
        .await
        .json();
    let caps_of = |raw: &str| {
        listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["key"] == key_ref(raw))
            .unwrap()["capabilities"]
            .clone()
    };
    assert_eq!(caps_of(&bob), json!(["traffic"]));
    assert_eq!(caps_of(&bob2), json!(["traffic", "own_keys"]));
    ks.create_user(&alice2, "acme", "carol", "member").await;
}

impl Ks {
    /// Asserts that the lookup answers `raw` with an expiry.
    async fn assert_active_with_expiry(&self, raw: &str) {
        assert!(lookup_expiry(self, raw).await.is_some());
    }
}

#[tokio::test]
async fn a_user_cannot_escape_the_expiry_their_admin_set() {
    let ks = Ks::new().await;
    let alice = ks.create_account("acme", "alice").await;
    let until = now() + 120;
    let r = post(
        &ks,
        &admin::users("acme"),
        &alice,
        json!({"user_id": "bob", "role": "member", "expires_at": rfc3339(until)}),
    )
    .await;
    assert_eq!(r.json()["expires_at"], rfc3339(until));
    let bob = new_key(&r);
    // A rotation with no body, and a key named "forever": both capped at the user's expiry.
    let bob2 = new_key(
        &ks.call("POST", &admin::user_key("acme", "bob"), Some(&bob), None)
            .await,
    );
    assert_eq!(lookup_expiry(&ks, &bob2).await, Some(until));
    let r = post(&ks, &keys_uri("bob"), &bob2, json!({"name": "forever"})).await;
    assert_eq!(
        r.json()["expires_at"],
        rfc3339(until),
        "the answer shows the cap"
    );
    let forever = new_key(&r);
    assert_eq!(lookup_expiry(&ks, &forever).await, Some(until));
    // Asking for later is refused, saying why.
    let later = rfc3339(until + 3600);
    post(
        &ks,
        &keys_uri("bob"),
        &bob2,
        json!({"name": "x", "expires_at": later}),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "never outlives");
    // Even a key root makes for bob answers with the user's expiry.
    let r = post(&ks, &keys_uri("bob"), ROOT_KEY, json!({"name": "ops"})).await;
    assert_eq!(lookup_expiry(&ks, &new_key(&r)).await, Some(until));
    // bob cannot lift it; alice can shorten it, and every key of bob follows (in the feed).
    let patch = |by: &str, body: Value| {
        let by = by.to_owned();
        let ks = &ks;
        async move {
            ks.call("PATCH", &admin::user("acme", "bob"), Some(&by), Some(body))
                .await
        }
    };
    patch(&bob2, json!({"expires_at": null}))
        .await
        .assert_error(StatusCode::FORBIDDEN, "account_admin");
    let rev = ks.revision().await;
    let sooner = until - 60;
    let r = patch(&alice, json!({"expires_at": rfc3339(sooner)})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(lookup_expiry(&ks, &forever).await, Some(sooner));
    assert_eq!(changed(&ks.changes(rev).await).len(), 3);
    let users = ks
        .call("GET", &admin::users("acme"), Some(&alice), None)
        .await
        .json();
    assert_eq!(users["users"][1]["expires_at"], rfc3339(sooner));
}

#[tokio::test]
async fn an_admin_cannot_extend_their_own_expiry() {
    let ks = Ks::new().await;
    let alice = ks.create_account("acme", "alice").await;
    let until = now() + 600;
    let r = post(
        &ks,
        &admin::users("acme"),
        ROOT_KEY,
        json!({"user_id": "ann", "role": "admin", "expires_at": rfc3339(until)}),
    )
    .await;
    let ann = new_key(&r);
    let rev = ks.revision().await;
    // No expiry asked: as late as ann's own key may give, which is where it already is.
    let r = ks
        .call(
            "PATCH",
            &admin::user("acme", "ann"),
            Some(&ann),
            Some(json!({"expires_at": null})),
        )
        .await;
    assert_eq!(r.json()["expires_at"], rfc3339(until));
    let later = json!({"expires_at": rfc3339(until + 60)});
    ks.call(
        "PATCH",
        &admin::user("acme", "ann"),
        Some(&ann),
        Some(later),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "never outlives");
    assert_eq!(ks.revision().await, rev);
    assert_eq!(lookup_expiry(&ks, &ann).await, Some(until));
    // Another admin without an expiry may lift it (root too).
    let r = ks
        .call(
            "PATCH",
            &admin::user("acme", "ann"),
            Some(&alice),
            Some(json!({"expires_at": null})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json(), json!({"user_id": "ann", "role": "admin"}));
    // Her key keeps the expiry it was given (capped at the user's when it was made).
    assert_eq!(lookup_expiry(&ks, &ann).await, Some(until));
}

#[tokio::test]
async fn an_account_admin_grants_only_the_roles_the_operator_allows() {
    let ks = Ks::with(|c| {
        c.roles = RoleRegistry::new(
            &["admin".into(), "member".into(), "reader".into()],
            &["staff".into()],
        )
        .unwrap();
    })
    .await;
    let alice = ks.create_account("acme", "alice").await;
    let bob = ks.create_user(&alice, "acme", "bob", "member").await;
    let rev = ks.revision().await;
    let create = |role: &str| json!({"user_id": "mallory", "role": role});
    post(&ks, &admin::users("acme"), &alice, create("staff"))
        .await
        .assert_error(
            StatusCode::FORBIDDEN,
            "operator role: only root may grant it",
        );
    for root in ["root", "ROOT", "Root"] {
        post(&ks, &admin::users("acme"), &alice, create(root))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "role root may not be granted");
    }
    post(&ks, &admin::users("acme"), &alice, create("ops"))
        .await
        .assert_error(
            StatusCode::BAD_REQUEST,
            "known: admin, member, reader, staff",
        );
    let patch = |user: &str, role: &str| {
        let (uri, body) = (admin::user("acme", user), json!({"role": role}));
        let (ks, alice) = (&ks, &alice);
        async move { ks.call("PATCH", &uri, Some(alice), Some(body)).await }
    };
    patch("bob", "staff")
        .await
        .assert_error(StatusCode::FORBIDDEN, "staff");
    patch("bob", "ROOT")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "root");
    assert_eq!(ks.revision().await, rev, "nothing changed");
    ks.assert_active(&bob, "acme", "bob", "member").await;
    // Roles are stored in one canonical form.
    let carol = new_key(
        &post(
            &ks,
            &admin::users("acme"),
            &alice,
            json!({"user_id": "carol", "role": "READER"}),
        )
        .await,
    );
    ks.assert_active(&carol, "acme", "carol", "reader").await;
    // Root grants the operator role; the account admin can neither change nor take it away.
    let dave = new_key(
        &post(
            &ks,
            &admin::users("acme"),
            ROOT_KEY,
            json!({"user_id": "dave", "role": "Staff"}),
        )
        .await,
    );
    ks.assert_active(&dave, "acme", "dave", "staff").await;
    patch("dave", "member")
        .await
        .assert_error(StatusCode::FORBIDDEN, "operator role staff");
    let uri = admin::user("acme", "dave");
    ks.call("PATCH", &uri, Some(&alice), Some(json!({"enabled": false})))
        .await
        .assert_error(StatusCode::FORBIDDEN, "operator role staff");
    ks.assert_active(&dave, "acme", "dave", "staff").await;
}

#[tokio::test]
async fn a_member_cannot_import_a_key_value() {
    let ks = Ks::new().await;
    let alice = ks.create_account("acme", "alice").await;
    let bob = ks.create_user(&alice, "acme", "bob", "member").await;
    let rev = ks.revision().await;
    // The oracle: "already in use" for any key in the store (here alice's).
    let rotate = format!("{}/{}/rotate", keys_uri("bob"), key_ref(&bob));
    for (uri, body) in [
        (keys_uri("bob"), json!({"name": "probe", "user_key": alice})),
        (admin::user_key("acme", "bob"), json!({"user_key": alice})),
        (rotate, json!({"user_key": alice})),
    ] {
        post(&ks, &uri, &bob, body)
            .await
            .assert_error(StatusCode::FORBIDDEN, "import a key value");
    }
    assert_eq!(ks.revision().await, rev);
    // The account admin may import (and meets the duplicate like anyone).
    post(
        &ks,
        &keys_uri("bob"),
        &alice,
        json!({"name": "x", "user_key": alice}),
    )
    .await
    .assert_error(StatusCode::CONFLICT, "already in use");
}

#[tokio::test]
async fn self_rotations_are_rate_bounded_with_retry_after() {
    let ks = Ks::new().await;
    let alice = ks.create_account("acme", "alice").await;
    let mut bob = ks.create_user(&alice, "acme", "bob", "member").await;
    let week = json!({"grace_s": 7 * 24 * 3600});
    // The user's first key was alice's creation: 19 more fit in the window.
    for _ in 0..19 {
        let r = post(&ks, &admin::user_key("acme", "bob"), &bob, week.clone()).await;
        bob = new_key(&r);
    }
    let rev = ks.revision().await;
    let r = post(&ks, &admin::user_key("acme", "bob"), &bob, week.clone()).await;
    r.assert_error(
        StatusCode::TOO_MANY_REQUESTS,
        "got 20 new keys in the last 600 seconds",
    );
    let retry: i64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=600).contains(&retry), "retry-after {retry}");
    let rotate = format!("{}/{}/rotate", keys_uri("bob"), key_ref(&bob));
    post(&ks, &rotate, &bob, week)
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "try again in");
    post(&ks, &keys_uri("bob"), &bob, json!({"name": "more"}))
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "try again in");
    assert_eq!(ks.revision().await, rev);
}

#[tokio::test]
async fn keys_in_their_grace_count_toward_the_live_key_bound() {
    let ks = Ks::new().await;
    let alice = ks.create_account("acme", "alice").await;
    ks.create_user(&alice, "acme", "bob", "member").await;
    let week = json!({"grace_s": 7 * 24 * 3600});
    // Root's rotations are not rate-bounded, but each with a grace leaves one more live key.
    for _ in 0..99 {
        let r = post(&ks, &admin::user_key("acme", "bob"), ROOT_KEY, week.clone()).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    let listed = ks
        .call("GET", &keys_uri("bob"), Some(ROOT_KEY), None)
        .await
        .json();
    assert_eq!(listed["keys"].as_array().unwrap().len(), 100);
    let rev = ks.revision().await;
    post(&ks, &admin::user_key("acme", "bob"), ROOT_KEY, week.clone())
        .await
        .assert_error(StatusCode::CONFLICT, "already holds 100 unexpired keys");
    let last = listed["keys"][99]["key"].as_str().unwrap().to_owned();
    let rotate = format!("{}/{last}/rotate", keys_uri("bob"));
    post(&ks, &rotate, ROOT_KEY, week)
        .await
        .assert_error(StatusCode::CONFLICT, "already holds 100");
    assert_eq!(ks.revision().await, rev);
    // Without a grace the old keys go: a rotation then always fits.
    let r = post(&ks, &admin::user_key("acme", "bob"), ROOT_KEY, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

#[tokio::test]
async fn a_key_hands_on_only_the_capabilities_it_has() {
    let ks = Ks::new().await;
    let alice = ks.create_account("acme", "alice").await;
    let bob = ks.create_user(&alice, "acme", "bob", "member").await;
    let caps = |c: Value| json!({"name": "k", "capabilities": c});
    // A traffic-only key passes the proxy and cannot call the admin API.
    let r = post(&ks, &keys_uri("bob"), &bob, caps(json!(["traffic"]))).await;
    assert_eq!(r.json()["capabilities"], json!(["traffic"]));
    let traffic = new_key(&r);
    ks.assert_active(&traffic, "acme", "bob", "member").await;
    ks.call("GET", &keys_uri("bob"), Some(&traffic), None)
        .await
        .assert_error(StatusCode::FORBIDDEN, "neither own_keys nor account_admin");
    // A management key calls the admin API and is not admitted by the proxy.
    let manage = new_key(&post(&ks, &keys_uri("bob"), &bob, caps(json!(["own_keys"]))).await);
    ks.assert_inactive(&manage).await;
    let r = post(
        &ks,
        &keys_uri("bob"),
        &manage,
        json!({"name": "from-manage"}),
    )
    .await;
    assert_eq!(
        r.json()["capabilities"],
        json!(["own_keys"]),
        "never more than the caller"
    );
    // Asking for more than the caller has is refused, naming what is missing.
    post(&ks, &keys_uri("bob"), &manage, caps(json!(["traffic"])))
        .await
        .assert_error(StatusCode::FORBIDDEN, "lacks the capability traffic");
    post(&ks, &keys_uri("bob"), &bob, caps(json!(["account_admin"])))
        .await
        .assert_error(StatusCode::FORBIDDEN, "lacks the capability account_admin");
    post(&ks, &keys_uri("bob"), &bob, caps(json!(["sudo"])))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "unknown capability");
    post(&ks, &keys_uri("bob"), &bob, caps(json!([])))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "must not be empty");
    // A rotation never adds capabilities to the key it replaces.
    let rotate = format!("{}/{}/rotate", keys_uri("bob"), key_ref(&traffic));
    post(
        &ks,
        &rotate,
        &bob,
        json!({"capabilities": ["traffic", "own_keys"]}),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "never adds capabilities");
    let r = post(&ks, &rotate, &bob, json!({})).await;
    assert_eq!(r.json()["capabilities"], json!(["traffic"]));
    // An admin's key without account_admin administers nothing.
    let narrow = new_key(
        &post(
            &ks,
            &keys_uri("alice"),
            &alice,
            caps(json!(["traffic", "own_keys"])),
        )
        .await,
    );
    post(
        &ks,
        &admin::users("acme"),
        &narrow,
        json!({"user_id": "x", "role": "member"}),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "lacks the capability account_admin");
    let listed = ks
        .call("GET", &keys_uri("bob"), Some(&alice), None)
        .await
        .json();
    let first = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key"] == key_ref(&bob))
        .unwrap();
    assert_eq!(
        first["capabilities"],
        json!(["traffic", "own_keys"]),
        "the user's first key: every capability its role allows"
    );
}
