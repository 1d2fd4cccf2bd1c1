//! keygate-openviking-demo: the two-instance scenario on real OpenViking 0.5.2, before and
//! after keygate (`make demo-openviking`), then the per-request latency of each, measured in
//! the same run.
//!
//! Starts (together) OpenViking A and B alone in `api_key` mode sharing one `viking/`, a third
//! `api_key` instance with key hashing on, and OpenViking A and B in `trusted` mode sharing
//! another `viking/`, each behind an Envoy with keygate (integrations/openviking/), plus the
//! keystore and `keygatectl openviking sync`. Everything it started is stopped on exit (and by
//! the kernel if it dies). Exits non-zero if a step did not give the expected answer.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use keygate_harness::process::Proc;
use keygate_harness::{
    free_port, keygatectl_path, openviking_envoy_template, openviking_keygate_config, AuthMode,
    Client, Envoy, EnvoyOpts, Keystore, KeystoreOpts, OpenViking, Response, Steps, TempDir,
    VikingStore,
};
use keygate_protocol::routes::admin;
use serde_json::{json, Value};

const OV_ROOT: &str = "ovroot_demo_5b1e9c3a7d2f4e6a8b0c1d3e5f7a9b2c";
/// Sequential requests per contender in the latency part (after 50 warm-up requests).
const SAMPLES: usize = 300;

fn main() -> ExitCode {
    match run() {
        Ok(0) => {
            println!("\ndemo done: every step gave the expected answer");
            ExitCode::SUCCESS
        }
        Ok(n) => {
            println!("\ndemo done: {n} step(s) did NOT give the expected answer (marked above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("\ndemo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn client() -> Client {
    Client::keep_alive(Duration::from_secs(10))
}

fn call(
    method: &str,
    url: &str,
    key: &str,
    body: Option<&Value>,
) -> keygate_harness::Result<Response> {
    let h = [("x-api-key", key)];
    match body {
        Some(b) => client().send_json(method, url, &h, b),
        None => client().request(method, url, &h, None),
    }
}

fn status(base: &str, key: &str) -> keygate_harness::Result<Response> {
    call("GET", &format!("{base}/api/v1/system/status"), key, None)
}

/// Polls until `base` answers `want` for `key`; the time it took, or None after `limit`.
fn until(
    base: &str,
    key: &str,
    want: u16,
    limit: Duration,
) -> keygate_harness::Result<Option<Duration>> {
    let start = Instant::now();
    while start.elapsed() <= limit {
        if status(base, key)?.status == want {
            return Ok(Some(start.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(None)
}

fn key_of(r: &Response, pointer: &str) -> String {
    r.json()
        .ok()
        .and_then(|v| {
            v.pointer(pointer)
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_default()
}

struct World {
    alone: [OpenViking; 2],
    hashed: OpenViking,
    trusted: [OpenViking; 2],
    envoys: [Envoy; 2],
    keystore: Keystore,
    _sync: Proc,
    _stores: [VikingStore; 3],
    _dir: TempDir,
}

fn start() -> keygate_harness::Result<World> {
    let stores = [
        VikingStore::new()?,
        VikingStore::new()?,
        VikingStore::new()?,
    ];
    let plain = AuthMode::ApiKey { hashing: false };
    let spawn = |name: &str, s: &VikingStore, m: AuthMode| {
        OpenViking::spawn(name, s, m, OV_ROOT, free_port())
    };
    // The second instance of a shared viking/ starts once the first has initialised it.
    let mut alone_a = spawn("ov-alone-a", &stores[0], plain.clone())?;
    let mut trusted_a = spawn("ov-trusted-a", &stores[1], AuthMode::Trusted)?;
    let mut hashed = spawn("ov-hashed", &stores[2], AuthMode::ApiKey { hashing: true })?;
    let keystore = Keystore::start(KeystoreOpts::default())?;
    let template = openviking_envoy_template(OV_ROOT)?;
    let envoy = |node: &str, port: u16| -> keygate_harness::Result<Envoy> {
        let mut o = EnvoyOpts::new(node, openviking_keygate_config()?, port, keystore.port());
        o.template = Some(template.clone());
        Envoy::start(o)
    };
    let ready = Duration::from_secs(180);
    alone_a.wait_ready(ready)?;
    let mut alone_b = spawn("ov-alone-b", &stores[0], plain)?;
    trusted_a.wait_ready(ready)?;
    let mut trusted_b = spawn("ov-trusted-b", &stores[1], AuthMode::Trusted)?;
    for ov in [&mut alone_b, &mut trusted_b, &mut hashed] {
        ov.wait_ready(ready)?;
    }
    let (alone, trusted) = ([alone_a, alone_b], [trusted_a, trusted_b]);
    let envoys = [
        envoy("keygate-a", trusted[0].port())?,
        envoy("keygate-b", trusted[1].port())?,
    ];
    let dir = TempDir::new("openviking-demo")?;
    let sync = start_sync(&keystore, &trusted[0], dir.path())?;
    Ok(World {
        alone,
        hashed,
        trusted,
        envoys,
        keystore,
        _sync: sync,
        _stores: stores,
        _dir: dir,
    })
}

fn start_sync(keystore: &Keystore, ov: &OpenViking, dir: &Path) -> keygate_harness::Result<Proc> {
    let key_file = dir.join("openviking-root.key");
    std::fs::write(&key_file, OV_ROOT)?;
    let mut cmd = Command::new(keygatectl_path());
    cmd.arg("--url")
        .arg(keystore.url())
        .args([
            "openviking",
            "sync",
            "--openviking",
            &ov.url(),
            "--openviking-root-key-file",
        ])
        .arg(&key_file)
        .arg("--state")
        .arg(dir.join("cursor"))
        .env("KEYGATE_KEY", keystore.root_key())
        .env_remove("KEYGATE_KEY_FILE");
    Proc::spawn("openviking-sync", cmd, &dir.join("sync.log"))
}

fn run() -> keygate_harness::Result<usize> {
    println!("starting OpenViking 0.5.2 x5 (alone A and B, alone with hashed keys, trusted A and B), the keystore, Envoy A and B with keygate ...");
    let t = Instant::now();
    let w = start()?;
    println!("everything up in {:.0} s\n", t.elapsed().as_secs_f64());
    let mut s = Steps::new(68);
    let table = before(&w, &mut s)?;
    let after_rows = after(&w, &mut s)?;
    println!("\n| | OpenViking alone | behind keygate |\n| --- | --- | --- |");
    for ((what, alone), (_, kg)) in table.iter().zip(after_rows.iter()) {
        println!("| {what} | {alone} | {kg} |");
    }
    latency(&w)?;
    Ok(s.mismatches())
}

type Rows = Vec<(&'static str, String)>;

fn before(w: &World, s: &mut Steps) -> keygate_harness::Result<Rows> {
    let (a, b) = (w.alone[0].url(), w.alone[1].url());
    println!("OpenViking alone (api_key mode), A and B sharing their viking/ directory:");
    let r = call(
        "POST",
        &format!("{a}/api/v1/admin/accounts"),
        OV_ROOT,
        Some(&json!({"account_id": "acme", "admin_user_id": "alice"})),
    )?;
    s.step("create account \"acme\" through A", r.status, 200);
    let key = key_of(&r, "/result/user_key");
    s.step(
        "its key through B (first try)",
        status(&b, &key)?.status,
        401,
    );
    std::thread::sleep(Duration::from_secs(3));
    s.step(
        "its key through B, 3 s later",
        status(&b, &key)?.status,
        401,
    );
    let r = call(
        "POST",
        &format!("{b}/api/v1/admin/accounts"),
        OV_ROOT,
        Some(&json!({"account_id": "old", "admin_user_id": "olga"})),
    )?;
    let old = key_of(&r, "/result/user_key");
    s.step(
        "account \"old\", created through B: its key through B",
        status(&b, &old)?.status,
        200,
    );
    let r = call(
        "DELETE",
        &format!("{a}/api/v1/admin/accounts/old"),
        OV_ROOT,
        None,
    )?;
    s.step("delete account \"old\" through A", r.status, 202);
    std::thread::sleep(Duration::from_secs(3));
    s.step(
        "its key through B, 3 s later",
        status(&b, &old)?.status,
        200,
    );
    Ok(vec![
        (
            "new key through B, first request",
            "401 (still 401 3 s later)".to_string(),
        ),
        (
            "deleted account's key through B",
            "200 (still 200 3 s later)".to_string(),
        ),
    ])
}

fn after(w: &World, s: &mut Steps) -> keygate_harness::Result<Rows> {
    let [ea, eb] = &w.envoys;
    let root = w.keystore.root_key().to_string();
    println!("\nbehind keygate (trusted mode), one admin call through Envoy A:");
    let r = call(
        "POST",
        &format!("{}/keygate{}", ea.url(), admin::ACCOUNTS),
        &root,
        Some(&json!({"account_id": "acme", "admin_user_id": "alice"})),
    )?;
    s.step(
        "create account \"acme\" through A (keystore admin API)",
        r.status,
        201,
    );
    let key = key_of(&r, "/user_key");
    let r = status(&eb.url(), &key)?;
    s.step("its key through B (first try)", r.status, 200);
    let user = r
        .json()
        .ok()
        .and_then(|v| v.pointer("/result/user").cloned())
        .unwrap_or_default();
    s.expect(
        user == "alice",
        &format!("OpenViking B acts as user {user}"),
    );
    let t = Instant::now();
    let mut home = 0;
    while t.elapsed() < Duration::from_secs(10) && home != 200 {
        home = call(
            "GET",
            &format!(
                "{}/api/v1/fs/ls?uri=viking://user/alice&simple=true",
                eb.url()
            ),
            &key,
            None,
        )?
        .status;
    }
    s.step(
        "alice's home space through B (keygatectl openviking sync)",
        home,
        200,
    );
    println!(
        "      served {} ms after the account was created",
        t.elapsed().as_millis()
    );
    let spoof = client().get(
        &format!("{}/api/v1/system/status", eb.url()),
        &[
            ("x-api-key", &key),
            ("X-OpenViking-User", "mallory"),
            ("X-OpenViking-Account", "victim"),
        ],
    )?;
    let user = spoof
        .json()
        .ok()
        .and_then(|v| v.pointer("/result/user").cloned())
        .unwrap_or_default();
    s.step(
        "her key with spoofed X-OpenViking-User: mallory",
        spoof.status,
        200,
    );
    s.expect(
        user == "alice",
        &format!("OpenViking B still acts as user {user}"),
    );
    let r = call(
        "POST",
        &format!("{}/keygate{}", ea.url(), admin::users("acme")),
        &root,
        Some(&json!({"user_id": "bob", "role": "member"})),
    )?;
    let bob = key_of(&r, "/user_key");
    s.step(
        "bob (member) on OpenViking's /api/v1/admin/accounts",
        call(
            "GET",
            &format!("{}/api/v1/admin/accounts", eb.url()),
            &bob,
            None,
        )?
        .status,
        403,
    );
    let r = call(
        "DELETE",
        &format!("{}/keygate{}", ea.url(), admin::account("acme")),
        &root,
        None,
    )?;
    s.step("revoke account \"acme\" through A", r.status, 200);
    let took = until(&eb.url(), &key, 401, Duration::from_secs(5))?;
    s.step(
        "alice's key through B",
        if took.is_some() { 401 } else { 200 },
        401,
    );
    let ms = took.map(|d| d.as_millis()).unwrap_or(u128::MAX);
    println!("      refused {ms} ms after the revocation (changes feed)");
    Ok(vec![
        ("new key through B, first request", "200".to_string()),
        (
            "deleted account's key through B",
            format!("401 after {ms} ms"),
        ),
    ])
}

/// A latency contender: its name, base URL and request headers.
type Contender = (&'static str, String, Vec<(&'static str, String)>);

/// Median, 90th and 99th percentile in ms of `SAMPLES` sequential requests, for each
/// contender, measured in interleaved rounds of 50 so that machine load falls on all alike.
fn latency(w: &World) -> keygate_harness::Result<()> {
    let make = |ov: &OpenViking, id: &str| -> keygate_harness::Result<String> {
        let r = call(
            "POST",
            &format!("{}/api/v1/admin/accounts", ov.url()),
            OV_ROOT,
            Some(&json!({"account_id": id, "admin_user_id": "lat"})),
        )?;
        Ok(key_of(&r, "/result/user_key"))
    };
    let plain = make(&w.alone[0], "lat")?;
    let hashed = make(&w.hashed, "lat")?;
    let root = w.keystore.root_key().to_string();
    let r = call(
        "POST",
        &format!("{}/keygate{}", w.envoys[0].url(), admin::ACCOUNTS),
        &root,
        Some(&json!({"account_id": "lat", "admin_user_id": "lat"})),
    )?;
    let kg = key_of(&r, "/user_key");
    let contenders: [Contender; 4] = [
        (
            "OpenViking alone, api_key mode, keys in plaintext",
            w.alone[0].url(),
            vec![("x-api-key", plain)],
        ),
        (
            "OpenViking alone, api_key mode, keys hashed (argon2id)",
            w.hashed.url(),
            vec![("x-api-key", hashed)],
        ),
        (
            "OpenViking trusted mode, direct (no keygate)",
            w.trusted[0].url(),
            vec![
                ("x-api-key", OV_ROOT.to_string()),
                ("x-openviking-account", "lat".into()),
                ("x-openviking-user", "lat".into()),
            ],
        ),
        (
            "OpenViking trusted mode behind Envoy + keygate",
            w.envoys[0].url(),
            vec![("x-api-key", kg)],
        ),
    ];
    let clients: Vec<Client> = contenders.iter().map(|_| client()).collect();
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
    for round in 0..(SAMPLES / 50 + 1) {
        for (i, (name, base, headers)) in contenders.iter().enumerate() {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            for _ in 0..50 {
                let t = Instant::now();
                let r = clients[i].get(&format!("{base}/api/v1/system/status"), &h)?;
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                if r.status != 200 {
                    return Err(keygate_harness::Error::msg(format!(
                        "{name}: {} {}",
                        r.status, r.body
                    )));
                }
                if round > 0 {
                    samples[i].push(ms);
                }
            }
        }
    }
    println!("\nper-request latency, GET /api/v1/system/status, {SAMPLES} sequential requests each (keep-alive), same run:");
    println!("| | p50 ms | p90 ms | p99 ms |\n| --- | --- | --- | --- |");
    for ((name, _, _), mut v) in contenders.iter().zip(samples) {
        v.sort_by(|a, b| a.total_cmp(b));
        let p = |q: f64| {
            v.get(((v.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} |",
            p(0.5),
            p(0.9),
            p(0.99)
        );
    }
    Ok(())
}
