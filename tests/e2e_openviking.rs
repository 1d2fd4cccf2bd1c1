//! keygate in front of real OpenViking 0.5.2 (trusted mode), against OpenViking alone
//! (api_key mode): the multi-instance key bug (OpenViking #2351) side by side.
//!
//! One world for every test, started once, concurrently: a keystore; OpenViking instances A
//! and B in `api_key` mode sharing one `viking/` directory (OpenViking alone); OpenViking A and
//! B in `trusted` mode sharing another, each behind its own Envoy running keygate with
//! `integrations/openviking/` (the shipped template and filter configuration); and one more
//! Envoy from the same template in front of the echo upstream, to see exactly which headers an
//! upstream receives. Needs `scripts/setup.sh openviking`; run by `make test-openviking`.
#![cfg(not(target_arch = "wasm32"))]
// Tests: panicking on a failed expectation is the point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use keygate_harness::{
    openviking_envoy_template, openviking_keygate_config, AuthMode, Envoy, EnvoyOpts, Keystore,
    KeystoreOpts, OpenViking, Response, Upstream, VikingStore,
};
use serde_json::{json, Value};

/// OpenViking's `server.root_api_key` in every instance (a test value: clients never see it).
const OV_ROOT: &str = "ovroot_7f3c9a1e5b2d4f6a8c0e1b3d5f7a9c2e";
/// The feed bound of the shipped configuration: `sync.interval_ms` 1000 + ~250 ms, with slack
/// for this loaded 2-core machine.
const FEED_BOUND: Duration = Duration::from_millis(2500);

struct World {
    keystore: Keystore,
    /// OpenViking alone (api_key mode), A and B sharing one `viking/`.
    alone: [OpenViking; 2],
    /// Trusted-mode OpenViking A and B, sharing another `viking/`.
    trusted: [OpenViking; 2],
    /// Envoy A and B with keygate, in front of `trusted[0]` and `trusted[1]`.
    envoys: [Envoy; 2],
    /// The same configuration in front of the echo upstream.
    echo_envoy: Envoy,
    _upstream: Upstream,
    _stores: [VikingStore; 2],
}

/// The world, started on a thread that outlives every test (children die with the thread that
/// started them: PR_SET_PDEATHSIG).
fn world() -> &'static World {
    static WORLD: OnceLock<&'static World> = OnceLock::new();
    static START: Mutex<()> = Mutex::new(());
    let _once = START.lock().unwrap_or_else(|p| p.into_inner());
    WORLD.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let w: &'static World = Box::leak(Box::new(start_world()));
            tx.send(w).unwrap();
            loop {
                std::thread::park();
            }
        });
        rx.recv()
            .expect("the world did not start (see the panic above)")
    })
}

fn start_world() -> World {
    let started = Instant::now();
    let stores = [VikingStore::new().unwrap(), VikingStore::new().unwrap()];
    let ports = [25520, 25521, 25522, 25523];
    let api_key = AuthMode::ApiKey { hashing: false };
    let spawn = |name: &str, store: &VikingStore, mode: AuthMode, port: u16| {
        OpenViking::spawn(name, store, mode, OV_ROOT, port).unwrap()
    };
    let mut alone = [
        spawn("ov-alone-a", &stores[0], api_key.clone(), ports[0]),
        spawn("ov-alone-b", &stores[0], api_key, ports[1]),
    ];
    let mut trusted = [
        spawn("ov-trusted-a", &stores[1], AuthMode::Trusted, ports[2]),
        spawn("ov-trusted-b", &stores[1], AuthMode::Trusted, ports[3]),
    ];
    // While OpenViking imports itself (tens of seconds), start the rest.
    let keystore = Keystore::start(KeystoreOpts::default()).unwrap();
    let upstream = Upstream::start().unwrap();
    let template = openviking_envoy_template(OV_ROOT).unwrap();
    let envoy = |node: &str, upstream_port: u16| {
        let mut o = EnvoyOpts::new(
            node,
            openviking_keygate_config().unwrap(),
            upstream_port,
            keystore.port(),
        );
        o.template = Some(template.clone());
        Envoy::start(o).unwrap()
    };
    let envoys = [
        envoy("keygate-a", trusted[0].port()),
        envoy("keygate-b", trusted[1].port()),
    ];
    let echo_envoy = envoy("keygate-echo", upstream.port());
    for ov in alone.iter_mut().chain(trusted.iter_mut()) {
        ov.wait_ready(Duration::from_secs(150)).unwrap();
    }
    eprintln!(
        "[e2e_openviking] world up in {:.1} s (4 OpenViking, 3 Envoy, keystore)",
        started.elapsed().as_secs_f64()
    );
    World {
        keystore,
        alone,
        trusted,
        envoys,
        echo_envoy,
        _upstream: upstream,
        _stores: stores,
    }
}

fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&Value>) -> Response {
    match body {
        Some(b) => client().send_json(method, url, headers, b),
        None => client().request(method, url, headers, None),
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// A call to the keystore's admin API through `envoy` (its `/keygate/` prefix), as keygate root.
fn keygate_admin(envoy: &Envoy, method: &str, path: &str, body: Option<&Value>) -> Response {
    let root = world().keystore.root_key().to_string();
    send(
        method,
        &format!("{}/keygate/api/v1/admin{path}", envoy.url()),
        &[("x-api-key", &root)],
        body,
    )
}

/// `GET /api/v1/system/status` (OpenViking's cheap authenticated endpoint) with `key`.
fn status_with(base: &str, key: &str) -> Response {
    send(
        "GET",
        &format!("{base}/api/v1/system/status"),
        &[("x-api-key", key)],
        None,
    )
}

/// Polls until `status_with(base, key)` answers `want`; how long it took, or None after `limit`.
fn time_until(base: &str, key: &str, want: u16, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() <= limit {
        if status_with(base, key).status == want {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn openviking_alone_b_refuses_a_key_created_through_a_and_serves_a_deleted_accounts_key() {
    let w = world();
    let (a, b) = (w.alone[0].url(), w.alone[1].url());
    let created = send(
        "POST",
        &format!("{a}/api/v1/admin/accounts"),
        &[("x-api-key", OV_ROOT)],
        Some(&json!({"account_id": "alone1", "admin_user_id": "alice"})),
    );
    assert_eq!(created.status, 200, "{}", created.body);
    let key = created.json().unwrap()["result"]["user_key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(status_with(&a, &key).status, 200, "the key works on A");
    // The bug: B loaded its keys at start-up.
    assert_eq!(status_with(&b, &key).status, 401, "first try through B");
    std::thread::sleep(FEED_BOUND);
    assert_eq!(
        status_with(&b, &key).status,
        401,
        "still refused by B after {FEED_BOUND:?}"
    );

    // The other half: a deleted account's key goes on working on an instance that knew it.
    let other = send(
        "POST",
        &format!("{b}/api/v1/admin/accounts"),
        &[("x-api-key", OV_ROOT)],
        Some(&json!({"account_id": "alone2", "admin_user_id": "bob"})),
    );
    let key2 = other.json().unwrap()["result"]["user_key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(status_with(&b, &key2).status, 200);
    let deleted = send(
        "DELETE",
        &format!("{a}/api/v1/admin/accounts/alone2"),
        &[("x-api-key", OV_ROOT)],
        None,
    );
    assert_eq!(deleted.status, 202, "{}", deleted.body);
    std::thread::sleep(FEED_BOUND);
    assert_eq!(
        status_with(&b, &key2).status,
        200,
        "B still serves the deleted account's key after {FEED_BOUND:?}"
    );
}

#[test]
fn behind_keygate_b_accepts_a_key_created_through_a_at_once_and_refuses_it_within_the_feed_bound_after_revocation(
) {
    let w = world();
    let [ea, eb] = &w.envoys;
    let created = keygate_admin(
        ea,
        "POST",
        "/accounts",
        Some(&json!({"account_id": "kg1", "admin_user_id": "alice"})),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let key = created.json().unwrap()["user_key"]
        .as_str()
        .unwrap()
        .to_string();
    let first = status_with(&eb.url(), &key);
    assert_eq!(first.status, 200, "first try through B: {}", first.body);
    assert_eq!(
        first.json().unwrap()["result"]["user"],
        "alice",
        "OpenViking B acts as the key's user"
    );
    assert_eq!(status_with(&ea.url(), &key).status, 200);

    let revoked = keygate_admin(ea, "DELETE", "/accounts/kg1", None);
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert_eq!(
        status_with(&ea.url(), &key).status,
        401,
        "A, right after the write"
    );
    let took = time_until(&eb.url(), &key, 401, FEED_BOUND);
    assert!(
        took.is_some(),
        "B still accepts the revoked key after {FEED_BOUND:?}"
    );
    eprintln!(
        "[e2e_openviking] revoked key refused by B after {:?}",
        took.unwrap()
    );
}

#[test]
fn spoofed_openviking_headers_and_api_keys_never_reach_the_upstream() {
    let w = world();
    let key = w.keystore.create_account("spoof", "alice");
    let e = &w.echo_envoy;
    let forged: [(&str, &str); 7] = [
        ("x-api-key", key.as_str()),
        ("X-OpenViking-Account", "victim"),
        ("x-openviking-user", "mallory"),
        ("X-OPENVIKING-ROLE", "admin"),
        ("x-openviking-groups", "admins"),
        ("x-openviking-actor-peer", "victim-peer"),
        ("authorization", "Bearer kg_not_the_one_checked"),
    ];
    let r = send("GET", &format!("{}/api/v1/fs/ls", e.url()), &forged, None);
    assert_eq!(r.status, 200, "{}", r.body);
    let h = upstream_headers(&r);
    assert_eq!(h["x-openviking-account"], "spoof");
    assert_eq!(h["x-openviking-user"], "alice");
    assert_eq!(h["x-openviking-role"], "admin", "store role admin -> admin");
    assert_eq!(
        h["x-api-key"], OV_ROOT,
        "the client's key replaced by the root key"
    );
    for gone in [
        "x-openviking-groups",
        "x-openviking-actor-peer",
        "authorization",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream: {h}");
    }
    // Underscore spellings never arrive either.
    let r = send(
        "GET",
        &format!("{}/x", e.url()),
        &[("x-api-key", &key), ("x_openviking_account", "victim")],
        None,
    );
    assert!(!r.body.contains("victim"), "{}", r.body);

    // OpenViking's own root key from a client is just an unknown key to keygate.
    for (name, value) in [
        ("x-api-key", OV_ROOT.to_string()),
        ("authorization", format!("Bearer {OV_ROOT}")),
    ] {
        let r = send(
            "GET",
            &format!("{}/api/v1/system/status", w.envoys[0].url()),
            &[(name, value.as_str())],
            None,
        );
        assert_eq!(r.status, 401, "{name}: {}", r.body);
    }
    // And on real OpenViking, forged identity headers change nothing.
    let r = send(
        "GET",
        &format!("{}/api/v1/system/status", w.envoys[1].url()),
        &forged,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json().unwrap()["result"]["user"], "alice");
}

#[test]
fn store_roles_other_than_admin_reach_openviking_as_user() {
    let w = world();
    w.keystore.create_account("roles", "alice");
    let member = w.keystore.create_user("roles", "bob", "member");
    let r = get_with_key(&w.echo_envoy, "/anything", &member);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(upstream_headers(&r)["x-openviking-role"], "user");
    // OpenViking accepts it (it refuses any role but user and admin with 400).
    assert_eq!(status_with(&w.envoys[0].url(), &member).status, 200);
}

#[test]
fn only_keygate_root_reaches_openvikings_admin_api_and_health_needs_no_key() {
    let w = world();
    let admin = w.keystore.create_account("adm", "alice");
    let member = w.keystore.create_user("adm", "bob", "member");
    let url = format!("{}/api/v1/admin/accounts", w.envoys[0].url());
    for (who, key) in [("account admin", &admin), ("member", &member)] {
        let r = send("GET", &url, &[("x-api-key", key)], None);
        assert_eq!(r.status, 403, "{who}: {}", r.body);
    }
    let r = send("GET", &url, &[], None);
    assert_eq!(r.status, 401, "no key: {}", r.body);
    let root = w.keystore.root_key().to_string();
    let r = send("GET", &url, &[("x-api-key", &root)], None);
    assert_eq!(r.status, 200, "keygate root: {}", r.body);

    let r = send("GET", &format!("{}/health", w.envoys[1].url()), &[], None);
    assert_eq!(r.status, 200, "{}", r.body);
    // On the echo: /health goes without the root key, and without the client's key.
    let r = send(
        "GET",
        &format!("{}/health", w.echo_envoy.url()),
        &[("x-api-key", &member)],
        None,
    );
    let h = upstream_headers(&r);
    assert!(h.get("x-api-key").is_none(), "{h}");
}
