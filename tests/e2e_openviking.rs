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

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use keygate_harness::process::Proc;
use keygate_harness::{
    keygatectl_path, openviking_envoy_template, openviking_keygate_config, AuthMode, Envoy,
    EnvoyOpts, Keystore, KeystoreOpts, OpenViking, Response, TempDir, Upstream, VikingStore,
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
    /// OpenViking alone with its keys stored as argon2id hashes (its own `viking/`).
    hashed: OpenViking,
    /// The way `keygatectl openviking sync` reaches OpenViking (trusted A): a switch.
    switch: Switch,
    /// `keygatectl openviking sync`'s metrics textfile.
    sync_metrics: PathBuf,
    _sync: Proc,
    _upstream: Upstream,
    _stores: [VikingStore; 3],
    dir: TempDir,
}

/// The port `keygatectl openviking sync` calls OpenViking on.
const SWITCH_PORT: u16 = 25524;

/// A TCP forwarder on a fixed port to another: "up" forwards, "down" closes the port and cuts
/// open connections, as a stopped OpenViking would (connection refused).
struct Switch {
    target: u16,
    running: Mutex<Option<Forwarding>>,
}

/// A running forwarder: its stop flag, its open connections (both sides), its accept loop.
type Forwarding = (Arc<AtomicBool>, Arc<Mutex<Vec<TcpStream>>>, JoinHandle<()>);

impl Switch {
    fn new(target: u16) -> Switch {
        let s = Switch {
            target,
            running: Mutex::new(None),
        };
        s.up();
        s
    }

    fn up(&self) {
        let mut running = self.running.lock().unwrap();
        if running.is_some() {
            return;
        }
        let listener = TcpListener::bind(("127.0.0.1", SWITCH_PORT)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (stop2, conns2, target) = (Arc::clone(&stop), Arc::clone(&conns), self.target);
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                            continue;
                        };
                        let mut c = conns2.lock().unwrap();
                        c.push(client.try_clone().unwrap());
                        c.push(server.try_clone().unwrap());
                        pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                        pipe(server, client);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        *running = Some((stop, conns, thread));
    }

    fn down(&self) {
        if let Some((stop, conns, thread)) = self.running.lock().unwrap().take() {
            stop.store(true, Ordering::SeqCst);
            thread.join().unwrap();
            for c in conns.lock().unwrap().drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
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
    let stores = [
        VikingStore::new().unwrap(),
        VikingStore::new().unwrap(),
        VikingStore::new().unwrap(),
    ];
    let ports = [25520, 25521, 25522, 25523, 25525];
    let api_key = AuthMode::ApiKey { hashing: false };
    let spawn = |name: &str, store: &VikingStore, mode: AuthMode, port: u16| {
        OpenViking::spawn(name, store, mode, OV_ROOT, port).unwrap()
    };
    // The first instance of each shared viking/ initialises it; a second one starting at the
    // same moment may fail (ResourceBusyError on the system assets), so it starts once the
    // first is ready (see keygate_harness::VikingStore).
    let mut alone_a = spawn("ov-alone-a", &stores[0], api_key.clone(), ports[0]);
    let mut trusted_a = spawn("ov-trusted-a", &stores[1], AuthMode::Trusted, ports[2]);
    let mut hashed = spawn(
        "ov-hashed",
        &stores[2],
        AuthMode::ApiKey { hashing: true },
        ports[4],
    );
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
    let envoys = [envoy("keygate-a", ports[2]), envoy("keygate-b", ports[3])];
    let echo_envoy = envoy("keygate-echo", upstream.port());
    let dir = TempDir::new("openviking-sync").unwrap();
    let switch = Switch::new(ports[2]);
    let (sync, sync_metrics) = start_sync(&keystore, &dir);
    let ready = Duration::from_secs(150);
    alone_a.wait_ready(ready).unwrap();
    let mut alone_b = spawn("ov-alone-b", &stores[0], api_key, ports[1]);
    trusted_a.wait_ready(ready).unwrap();
    let mut trusted_b = spawn("ov-trusted-b", &stores[1], AuthMode::Trusted, ports[3]);
    for ov in [&mut alone_b, &mut trusted_b, &mut hashed] {
        ov.wait_ready(ready).unwrap();
    }
    let (alone, trusted) = ([alone_a, alone_b], [trusted_a, trusted_b]);
    eprintln!(
        "[e2e_openviking] world up in {:.1} s (5 OpenViking, 3 Envoy, keystore, sync)",
        started.elapsed().as_secs_f64()
    );
    World {
        keystore,
        alone,
        trusted,
        envoys,
        echo_envoy,
        hashed,
        switch,
        sync_metrics,
        _sync: sync,
        _upstream: upstream,
        _stores: stores,
        dir,
    }
}

/// Writes OpenViking's root key to a file in `dir`; its path.
fn ov_root_key_file(dir: &TempDir) -> PathBuf {
    let path = dir.path().join("openviking-root.key");
    std::fs::write(&path, OV_ROOT).unwrap();
    path
}

/// `keygatectl openviking sync` against the keystore, calling OpenViking through the switch.
fn start_sync(keystore: &Keystore, dir: &TempDir) -> (Proc, PathBuf) {
    let metrics = dir.path().join("sync.prom");
    let mut cmd = Command::new(keygatectl_path());
    cmd.arg("--url")
        .arg(keystore.url())
        .args(["openviking", "sync", "--interval-ms", "200", "--openviking"])
        .arg(format!("http://127.0.0.1:{SWITCH_PORT}"))
        .arg("--openviking-root-key-file")
        .arg(ov_root_key_file(dir))
        .arg("--state")
        .arg(dir.path().join("sync.cursor"))
        .arg("--metrics-file")
        .arg(&metrics)
        .env("KEYGATE_KEY", keystore.root_key())
        .env_remove("KEYGATE_KEY_FILE");
    let proc = Proc::spawn("openviking-sync", cmd, &dir.path().join("sync.log")).unwrap();
    (proc, metrics)
}

/// A metric of the sync's textfile (0 before it is written).
fn sync_metric(name: &str) -> u64 {
    let text = std::fs::read_to_string(&world().sync_metrics).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .next()
        .unwrap_or(0)
}

/// The user ids OpenViking (trusted A, directly, as root) lists for `account`, with their
/// status; None when the account is not there.
fn ov_users(account: &str) -> Option<Vec<String>> {
    let r = send(
        "GET",
        &format!(
            "{}/api/v1/admin/accounts/{account}/users",
            world().trusted[1].url()
        ),
        &[("x-api-key", OV_ROOT)],
        None,
    );
    if r.status != 200 {
        return None;
    }
    let users = r.json().unwrap()["result"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Some(
        users
            .iter()
            .filter(|u| u.get("status").and_then(Value::as_str).unwrap_or("active") == "active")
            .filter_map(|u| u["user_id"].as_str().map(str::to_string))
            .collect(),
    )
}

/// `ls` of the user's home space through `envoy` with `key`: 200 once OpenViking knows the
/// user, 404 before.
fn home(envoy: &Envoy, user: &str, key: &str) -> u16 {
    send(
        "GET",
        &format!(
            "{}/api/v1/fs/ls?uri=viking://user/{user}&simple=true",
            envoy.url()
        ),
        &[("x-api-key", key)],
        None,
    )
    .status
}

/// Polls `check` every 50 ms; how long until it held, or None after `limit`.
fn until(limit: Duration, check: impl FnMut() -> bool) -> Option<Duration> {
    until_every(Duration::from_millis(50), limit, check)
}

/// Polls `check` every `period`; how long until it held, or None after `limit`.
fn until_every(
    period: Duration,
    limit: Duration,
    mut check: impl FnMut() -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() <= limit {
        if check() {
            return Some(start.elapsed());
        }
        std::thread::sleep(period);
    }
    None
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

/// Polls (every 20 ms) until `status_with(base, key)` answers `want`; how long it took, or
/// None after `limit`.
fn time_until(base: &str, key: &str, want: u16, limit: Duration) -> Option<Duration> {
    until_every(Duration::from_millis(20), limit, || {
        status_with(base, key).status == want
    })
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

/// How long the sync may take to apply a change (poll 200 ms + one OpenViking call, on this
/// loaded machine).
const SYNC_BOUND: Duration = Duration::from_secs(5);

#[test]
fn one_keygate_call_provisions_a_user_on_every_instance_and_revoking_it_removes_it_everywhere() {
    let w = world();
    let [ea, eb] = &w.envoys;
    let created = keygate_admin(
        ea,
        "POST",
        "/accounts",
        Some(&json!({"account_id": "prov", "admin_user_id": "alice"})),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let user = keygate_admin(
        eb,
        "POST",
        "/accounts/prov/users",
        Some(&json!({"user_id": "bob", "role": "member"})),
    );
    assert_eq!(user.status, 201, "{}", user.body);
    let bob = user.json().unwrap()["user_key"]
        .as_str()
        .unwrap()
        .to_string();
    // Without the sync OpenViking answers 404 on bob's home space (it never heard of him).
    let took = until(SYNC_BOUND, || home(eb, "bob", &bob) == 200);
    assert!(
        took.is_some(),
        "bob's home space through B: {}",
        home(eb, "bob", &bob)
    );
    assert_eq!(home(ea, "bob", &bob), 200, "and through A");
    eprintln!(
        "[e2e_openviking] bob's home space served {:?} after his creation",
        took.unwrap()
    );
    assert!(ov_users("prov").unwrap().contains(&"bob".to_string()));

    let revoked = keygate_admin(ea, "DELETE", "/accounts/prov/users/bob", None);
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert!(
        time_until(&eb.url(), &bob, 401, FEED_BOUND).is_some(),
        "bob refused by B"
    );
    assert_eq!(status_with(&ea.url(), &bob).status, 401);
    let gone = until(SYNC_BOUND, || {
        !ov_users("prov").unwrap().contains(&"bob".to_string())
    });
    assert!(
        gone.is_some(),
        "bob still in OpenViking's registry: {:?}",
        ov_users("prov")
    );
}

#[test]
fn a_provisioning_call_made_while_openviking_is_down_is_retried_and_applied_when_it_is_back() {
    let w = world();
    let failures = sync_metric("keygate_openviking_sync_failures_total");
    w.switch.down();
    let created = keygate_admin(
        &w.envoys[0],
        "POST",
        "/accounts",
        Some(&json!({"account_id": "late", "admin_user_id": "carol"})),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let carol = created.json().unwrap()["user_key"]
        .as_str()
        .unwrap()
        .to_string();
    let seen = until(SYNC_BOUND, || {
        sync_metric("keygate_openviking_sync_failures_total") > failures
            && sync_metric("keygate_openviking_sync_retrying") == 1
    });
    w.switch.up();
    assert!(
        seen.is_some(),
        "the sync's metrics never showed the failed call"
    );
    assert_eq!(
        ov_users("late"),
        None,
        "not in OpenViking while it was down"
    );
    // The key works at once (keygate needs no OpenViking registry); the home space follows.
    assert_eq!(status_with(&w.envoys[1].url(), &carol).status, 200);
    let took = until(Duration::from_secs(10), || {
        home(&w.envoys[1], "carol", &carol) == 200
    });
    assert!(
        took.is_some(),
        "carol never provisioned after OpenViking came back"
    );
    assert_eq!(ov_users("late").unwrap(), vec!["carol".to_string()]);
    let cleared = until(SYNC_BOUND, || {
        sync_metric("keygate_openviking_sync_retrying") == 0
    });
    assert!(cleared.is_some(), "the sync still reports an entry waiting");
}

/// `keygatectl openviking import` against OpenViking `ov`, as keygate root.
fn import(ov: &OpenViking, extra: &[&str]) -> std::process::Output {
    let w = world();
    Command::new(keygatectl_path())
        .arg("--url")
        .arg(w.keystore.url())
        .args(["openviking", "import", "--openviking", &ov.url()])
        .arg("--openviking-root-key-file")
        .arg(ov_root_key_file(&w.dir))
        .args(extra)
        .env("KEYGATE_KEY", w.keystore.root_key())
        .env_remove("KEYGATE_KEY_FILE")
        .output()
        .unwrap()
}

fn create_ov_account(ov: &OpenViking, account: &str, admin: &str) -> String {
    let r = send(
        "POST",
        &format!("{}/api/v1/admin/accounts", ov.url()),
        &[("x-api-key", OV_ROOT)],
        Some(&json!({"account_id": account, "admin_user_id": admin})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json().unwrap()["result"]["user_key"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn imported_openviking_keys_keep_working_behind_keygate_with_their_account_user_and_role() {
    let w = world();
    let ov = &w.alone[0];
    let alice = create_ov_account(ov, "legacy", "alice");
    let r = send(
        "POST",
        &format!("{}/api/v1/admin/accounts/legacy/users", ov.url()),
        &[("x-api-key", OV_ROOT)],
        Some(&json!({"user_id": "bob", "role": "user"})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let bob = r.json().unwrap()["result"]["user_key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        status_with(&w.envoys[1].url(), &bob).status,
        401,
        "unknown to keygate"
    );

    let out = import(ov, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("legacy/bob (member): imported"), "{text}");
    for (key, user, role) in [(&alice, "alice", "admin"), (&bob, "bob", "user")] {
        let r = get_with_key(&w.echo_envoy, "/x", key);
        assert_eq!(r.status, 200, "{user}: {}", r.body);
        let h = upstream_headers(&r);
        assert_eq!(
            (
                h["x-openviking-account"].as_str(),
                h["x-openviking-user"].as_str()
            ),
            (Some("legacy"), Some(user))
        );
        assert_eq!(h["x-openviking-role"], role);
        // B cached bob as unknown a moment ago: the feed reports his creation.
        assert!(
            time_until(&w.envoys[1].url(), key, 200, FEED_BOUND).is_some(),
            "{user} through B"
        );
        let r = status_with(&w.envoys[1].url(), key);
        assert_eq!(r.json().unwrap()["result"]["user"], user);
    }
    let again = import(ov, &[]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("already in the keystore"));
}

#[test]
fn hashed_openviking_keys_are_not_imported_and_rotate_gives_those_users_new_keys() {
    let w = world();
    let old = create_ov_account(&w.hashed, "hashed", "dave");
    assert_eq!(
        status_with(&w.hashed.url(), &old).status,
        200,
        "the key works on OpenViking"
    );

    let out = import(&w.hashed, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("hashed/dave: key stored hashed (argon2id)"),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rotate"));
    assert_eq!(status_with(&w.envoys[0].url(), &old).status, 401);

    let out = import(&w.hashed, &["--rotate"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let new = text
        .split("NEW KEY (shown once): ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .unwrap_or_else(|| panic!("no new key in {text}"))
        .to_string();
    let r = status_with(&w.envoys[0].url(), &new);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json().unwrap()["result"]["user"], "dave");
}
